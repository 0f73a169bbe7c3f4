//! `simfota keys` through the real binary, in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};

fn simfota(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A refusal is a non-zero exit and exactly one line on stderr, naming the command.
fn assert_refused(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "stderr not one line: {err:?}");
    assert!(lines[0].starts_with("simfota: "), "{err:?}");
    assert!(lines[0].contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err:?}");
}

#[test]
fn gen_then_pub_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let out = simfota(&["keys", "gen", "--out", "k.pem"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let path = dir.path().join("k.pem");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();

    let out = simfota(&["keys", "pub", "k.pem"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let pub_pem = String::from_utf8(out.stdout).unwrap();
    assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    let public = p256::PublicKey::from_public_key_pem(&pub_pem).unwrap();
    assert_eq!(public, secret.public_key());
}

#[test]
fn two_keys_differ() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        simfota(&["keys", "gen", "--out", "a.pem"], dir.path())
            .status
            .success()
    );
    assert!(
        simfota(&["keys", "gen", "--out", "b.pem"], dir.path())
            .status
            .success()
    );
    let a = std::fs::read(dir.path().join("a.pem")).unwrap();
    let b = std::fs::read(dir.path().join("b.pem")).unwrap();
    assert_ne!(a, b);
}

#[test]
fn gen_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        simfota(&["keys", "gen", "--out", "k.pem"], dir.path())
            .status
            .success()
    );
    let before = std::fs::read(dir.path().join("k.pem")).unwrap();
    let out = simfota(&["keys", "gen", "--out", "k.pem"], dir.path());
    assert_refused(&out, "already exists");
    assert_eq!(std::fs::read(dir.path().join("k.pem")).unwrap(), before);

    let out = simfota(&["keys", "gen", "--out", "k.pem", "--force"], dir.path());
    assert!(out.status.success(), "{out:?}");
    let after = std::fs::read(dir.path().join("k.pem")).unwrap();
    assert_ne!(after, before);
    let mode = std::fs::metadata(dir.path().join("k.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn gen_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        simfota(&["keys", "gen", "--out", "k.pem"], dir.path())
            .status
            .success()
    );
    let _ = simfota(&["keys", "gen", "--out", "k.pem"], dir.path());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("k.pem")]);
}

#[test]
fn pub_refuses_missing_and_wrong_files() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &simfota(&["keys", "pub", "nope.pem"], dir.path()),
        "nope.pem",
    );

    std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
    assert_refused(
        &simfota(&["keys", "pub", "junk.pem"], dir.path()),
        "no PEM block",
    );

    // A public key where a private key is needed.
    let out = simfota(&["keys", "gen", "--out", "k.pem"], dir.path());
    assert!(out.status.success());
    let public = simfota(&["keys", "pub", "k.pem"], dir.path()).stdout;
    std::fs::write(dir.path().join("pub.pem"), public).unwrap();
    assert_refused(
        &simfota(&["keys", "pub", "pub.pem"], dir.path()),
        "holds a public key",
    );
}

#[test]
fn usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = simfota(&["keys", "gen"], dir.path());
    assert_refused(&out, "--out");
    assert_eq!(out.status.code(), Some(2));
    assert_refused(&simfota(&["keys", "frobnicate"], dir.path()), "frobnicate");
}
