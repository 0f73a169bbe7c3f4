//! `simfota bench` runs end to end on small inputs (figures are printed, never asserted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn bench_delta_runs_and_reports() {
    for content in ["random", "code"] {
        let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
            .args(["bench", "delta", "--size-mib", "1", "--changed-pct", "5"])
            .args(["--content", content])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        for field in ["target image", "zstd -9", "delta", "diff", "apply"] {
            assert!(text.contains(field), "{content}: {text}");
        }
    }
}

#[test]
fn bench_hash_runs_against_sha256sum() {
    // The comparison needs coreutils' sha256sum on PATH.
    let have = Command::new("sha256sum").arg("--version").output().is_ok();
    if !have {
        assert!(
            std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() == Ok("1"),
            "sha256sum missing"
        );
        println!("skipped: sha256sum missing");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["bench", "hash", "--size-mib", "2", "--runs", "1", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for field in ["sha256sum (coreutils)", "pack build", "pack verify"] {
        assert!(text.contains(field), "{text}");
    }
    // The temporary image is removed afterwards.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bench_refuses_bad_parameters() {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["bench", "delta", "--changed-pct", "150"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--changed-pct"), "{err}");
}
