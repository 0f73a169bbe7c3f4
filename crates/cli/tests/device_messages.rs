//! What `simfota device` says to a person, from real runs: each cause once, no Rust debug
//! values, `status` as a table and as JSON, progress as plain lines when stderr is a pipe.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn simfota(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

const CONFIG: &str = r#"server_url = "http://127.0.0.1:9"
server_id = "simfota-demo"
imei = "490154203237518"
data_dir = "data"

[credentials]
username = "dev-1"
password = "p"
server_password = "s"

[card]
state = "CARD.state"

[info]
manufacturer = "Example"
model = "EX-1"
"#;

fn device_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("DEVICE.toml"), CONFIG).unwrap();
    dir
}

/// A missing image is named once, and nothing is made before the start succeeds.
#[test]
fn init_names_a_missing_image_once_and_makes_nothing() {
    let dir = device_folder();
    let d = dir.path();
    let out = simfota(
        d,
        &[
            "device",
            "init",
            "--config",
            "DEVICE.toml",
            "--image",
            "missing.bin",
            "--version",
            "1.0",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "simfota: cannot read the factory image missing.bin: No such file or directory (os \
         error 2)\n"
    );
    assert!(!d.join("data").exists());
}

/// An error whose text already names its cause, printed through the chain: said once.
#[test]
fn an_unreadable_boot_record_is_said_once() {
    let dir = device_folder();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data/slots/boot.json")).unwrap();
    let out = simfota(d, &["device", "status", "--config", "DEVICE.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "simfota: slot file data/slots/boot.json: Is a directory (os error 21)\n"
    );
}

/// `status` as a table (no Rust debug values) and as one JSON document.
#[test]
fn status_as_a_table_and_as_json() {
    let dir = device_folder();
    let d = dir.path();
    std::fs::write(d.join("fw.bin"), vec![7u8; 4096]).unwrap();
    let out = simfota(
        d,
        &[
            "device",
            "init",
            "--config",
            "DEVICE.toml",
            "--image",
            "fw.bin",
            "--version",
            "1.0",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A finished update as the slot installer records it: B booted and is running 2.0.
    let boot = d.join("data/slots/boot.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&boot).unwrap()).unwrap();
    record["b"] = record["a"].clone();
    record["b"]["version"] = "2.0".into();
    record["active"] = "b".into();
    record["last_boot"] = serde_json::json!({
        "outcome": "switched", "from": "a", "to": "b", "version": "2.0"
    });
    std::fs::write(&boot, serde_json::to_vec(&record).unwrap()).unwrap();
    let sha = record["a"]["sha256"].as_str().unwrap().to_owned();

    let out = simfota(d, &["device", "status", "--config", "DEVICE.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "device     IMEI:490154203237518 (Example EX-1)\n\
             server     simfota-demo at http://127.0.0.1:9/dm\n\
             firmware   2.0 (slot B)\n\
             slot A     1.0 (4096 bytes, sha256 {short})\n\
             slot B     2.0 (4096 bytes, sha256 {short})\n\
             last boot  switched from slot A to slot B, now running 2.0\n\
             update     none (FUMO state 10, idle)\n",
            short = &sha[..16]
        )
    );

    let out = simfota(
        d,
        &["device", "status", "--config", "DEVICE.toml", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "device": "IMEI:490154203237518",
            "manufacturer": "Example",
            "model": "EX-1",
            "server": {"id": "simfota-demo", "url": "http://127.0.0.1:9/dm"},
            "firmware": {"version": "2.0", "slot": "B"},
            "slots": {
                "A": {"version": "1.0", "size": 4096, "sha256": sha},
                "B": {"version": "2.0", "size": 4096, "sha256": sha},
            },
            "pending": null,
            "last_boot": {"outcome": "switched", "from": "A", "to": "B", "version": "2.0"},
            "update": null,
        })
    );
    assert!(!stdout.contains("Some("), "{stdout}");
}
