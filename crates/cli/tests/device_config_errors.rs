//! `simfota device` refuses an unusable configuration in one line that says each cause once:
//! a missing DEVICE.toml, a missing or non-PEM CA file (`ca_file`, `--ca`).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

/// Runs `simfota device check-update` in `dir` with `args`; exit code and stderr.
fn check_update(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["device", "check-update"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

const CONFIG: &str = r#"server_url = "https://127.0.0.1:9"
server_id = "simfota-demo"
imei = "490154203237518"
data_dir = "data"

[credentials]
username = "dev-1"
password = "p"
server_password = "s"

[card]
state = "CARD.state"
"#;

#[test]
fn a_missing_configuration_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check_update(dir.path(), &["--config", "nothere.toml"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "simfota: cannot read the device configuration nothere.toml: No such file or directory \
         (os error 2)\n"
    );
}

#[test]
fn an_unusable_ca_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("DEVICE.toml"), CONFIG).unwrap();
    std::fs::write(
        d.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();

    let (code, err) = check_update(d, &["--config", "DEVICE.toml", "--ca", "missing.pem"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "simfota: the CA file missing.pem cannot be used: cannot read it: No such file or \
         directory (os error 2)\n"
    );

    let (code, err) = check_update(d, &["--config", "DEVICE.toml", "--ca", "key.pem"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "simfota: the CA file key.pem cannot be used: it holds no PEM certificate (a block \
         starting -----BEGIN CERTIFICATE-----)\n"
    );

    // The same file through the configuration, relative to it.
    std::fs::write(
        d.join("DEVICE.toml"),
        format!("ca_file = \"key.pem\"\n{CONFIG}"),
    )
    .unwrap();
    let config = d.join("DEVICE.toml");
    let (code, err) = check_update(d, &["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!(
            "simfota: the CA file {} cannot be used: it holds no PEM certificate (a block \
             starting -----BEGIN CERTIFICATE-----)\n",
            d.join("key.pem").display()
        )
    );
}
