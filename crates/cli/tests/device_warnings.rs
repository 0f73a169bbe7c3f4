//! `simfota device run` and `check-update` start on a risky configuration, but say so first:
//! one line on stderr per risk, naming the setting and what to do; a careful configuration
//! starts without a word, and a refused start says only why it was refused.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

/// `simfota device ARGS` in `dir`.
fn device(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simfota"))
        .arg("device")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn config(server_url: &str, auth: &str) -> String {
    format!(
        "server_url = \"{server_url}\"\nserver_id = \"simfota-demo\"\n\
         imei = \"490154203237518\"\ndata_dir = \"data\"\n\
         [credentials]\nauth = \"{auth}\"\nusername = \"dev-1\"\npassword = \"p\"\n\
         server_password = \"s\"\n[card]\nstate = \"CARD.state\"\n"
    )
}

/// Writes `name` in `dir` with `text` and `mode`, whatever the umask.
fn write(dir: &Path, name: &str, text: &str, mode: u32) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

const RUNNING: &str = "agent running (SIGTERM or Ctrl-C stops it after the step in progress)\n";

/// `device run --sessions 0`: the agent starts (card opened, data folder made) and stops
/// before its first session, so that only what it says at start is on stderr.
fn start(dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["run", "--sessions", "0", "--config", "DEVICE.toml"];
    args.extend_from_slice(extra);
    let out = device(dir, &args);
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn each_risky_setting_is_one_line_naming_it_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "DEVICE.toml",
        &config("http://dm.example.net:8080", "md5"),
        0o644,
    );
    write(d, "pin.txt", "1234\n", 0o660);
    let (code, err) = start(d, &["--pin-file", "pin.txt"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        err,
        format!(
            "simfota: warning: server_url http://dm.example.net:8080 is plain HTTP to another \
             machine (dm.example.net): DM messages would cross the network in clear, open to \
             reading and to change on the way (use an https:// URL)\n\
             simfota: warning: credentials.auth = \"md5\": its digest proves the credentials \
             but not the message, so a DM message can be changed on its way unnoticed (set \
             auth = \"hmac\", with the device registered for HMAC on the server)\n\
             simfota: warning: the device configuration DEVICE.toml holds the DM passwords and \
             other users can read it (mode 0644): chmod 600 DEVICE.toml\n\
             simfota: warning: the PIN file pin.txt holds the card PIN and other users can \
             read and change it (mode 0660): chmod 600 pin.txt\n\
             {RUNNING}"
        )
    );

    // check-update warns the same way before its session (which then fails: nothing listens
    // on port 9, a separate matter). HMAC towards this machine: only the files are named.
    write(
        d,
        "DEVICE.toml",
        &config("https://127.0.0.1:9", "hmac"),
        0o622,
    );
    let out = device(
        d,
        &[
            "check-update",
            "--config",
            "DEVICE.toml",
            "--pin-file",
            "pin.txt",
        ],
    );
    let err = String::from_utf8(out.stderr).unwrap();
    let mut lines = err.lines();
    assert_eq!(
        lines.next(),
        Some(
            "simfota: warning: the device configuration DEVICE.toml holds the DM passwords and \
             other users can change it (mode 0622): chmod 600 DEVICE.toml"
        ),
        "{err}"
    );
    assert_eq!(
        lines.next(),
        Some(
            "simfota: warning: the PIN file pin.txt holds the card PIN and other users can \
             read and change it (mode 0660): chmod 600 pin.txt"
        ),
        "{err}"
    );
    assert!(!lines.any(|l| l.contains("warning")), "{err}");
}

#[test]
fn a_careful_configuration_starts_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "DEVICE.toml",
        &config("https://dm.example.net", "hmac"),
        0o600,
    );
    write(d, "pin.txt", "1234\n", 0o400);
    assert_eq!(
        start(d, &["--pin-file", "pin.txt"]),
        (Some(0), RUNNING.to_owned())
    );
    // A DM server on this machine (a lab, a test, a local tunnel) with MD5 over plain HTTP.
    for local in [
        "http://127.0.0.1:8443",
        "http://localhost:8443",
        "http://[::1]:8443",
    ] {
        write(d, "DEVICE.toml", &config(local, "md5"), 0o600);
        assert_eq!(start(d, &[]), (Some(0), RUNNING.to_owned()), "{local}");
    }
}

#[test]
fn a_refused_start_says_only_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "DEVICE.toml",
        &config("http://dm.example.net", "md5"),
        0o644,
    );
    let (code, err) = start(d, &["--ca", "missing.pem"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "simfota: the CA file missing.pem cannot be used: cannot read it: No such file or \
         directory (os error 2)\n"
    );
    assert!(!d.join("data").exists(), "nothing made");
}
