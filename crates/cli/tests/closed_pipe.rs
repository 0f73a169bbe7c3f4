//! Output to a pipe whose reader has gone (`simfota card info | head -1`): the real binary, its
//! stdout a pipe whose read end is closed before it writes, ends quietly with status 141 (as a
//! tool SIGPIPE ended), no panic text; see docs/cli.md, "Output to a closed pipe".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

const VENDOR: &str = "fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe";
const CLASS: &str = "1492af14-2569-5e48-bf42-9b2d51f2ab45";

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simfota {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A pipe whose read end is already closed: every write to the other end fails with EPIPE
/// (closing it only after the program started would race with its first write, which the
/// pipe's buffer would take).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

/// Runs `simfota ARGS` with stdout a pipe whose reader has gone.
fn into_closed_pipe(dir: &Path, args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "simfota {args:?}: {stderr}");
    assert_eq!(stderr, "", "simfota {args:?} said something");
    assert_eq!(status.code(), Some(141), "simfota {args:?}: {status:?}");
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for k in ["issuer", "server", "orig"] {
        ok(d, &["keys", "gen", "--out", &format!("{k}.pem")]);
        let public = ok(d, &["keys", "pub", &format!("{k}.pem")]);
        std::fs::write(d.join(format!("{k}.pub.pem")), public).unwrap();
    }
    ok(
        d,
        &[
            "card",
            "personalize",
            "--state",
            "card.state",
            "--issuer-key",
            "issuer.pem",
            "--iccid",
            "89882110000000000010",
            "--imsi",
            "001010123456789",
            "--pin",
            "1234",
            "--puk",
            "12345678",
            "--server",
            "dm1=server.pub.pem:all",
            "--originator",
            "oem=orig.pub.pem",
            "--policy",
            "refuse",
        ],
    );
    std::fs::write(d.join("new.bin"), vec![0x5A; 4096]).unwrap();
    ok(
        d,
        &[
            "pack",
            "build",
            "--image",
            "new.bin",
            "--key",
            "orig.pem",
            "--vendor-id",
            VENDOR,
            "--class-id",
            CLASS,
            "--version",
            "2.0.0",
            "--sequence",
            "7",
            "--out",
            "full.suit",
        ],
    );
    dir
}

#[test]
fn commands_writing_to_a_closed_pipe_end_quietly_with_status_141() {
    let dir = setup();
    let d = dir.path();
    into_closed_pipe(d, &["card", "info", "--state", "card.state"]);
    into_closed_pipe(d, &["card", "servers", "--state", "card.state"]);
    into_closed_pipe(d, &["keys", "pub", "orig.pem"]);
    into_closed_pipe(
        d,
        &["pack", "inspect", "full.suit", "--key", "orig.pub.pem"],
    );
    into_closed_pipe(
        d,
        &[
            "pack",
            "inspect",
            "full.suit",
            "--key",
            "orig.pub.pem",
            "--json",
        ],
    );
}

#[test]
fn help_to_a_closed_pipe_ends_quietly_with_status_141() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .arg("--help")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141));
}
