//! `simfota bench delta --compare` and `--pair` end to end on small inputs: the peers that are
//! installed run on the same pair and appear in the table, the others are named as skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

/// The peer rows `--compare` may print, by tool name.
const PEERS: [&str; 6] = [
    "bsdiff 4 (bzip2)",
    "xdelta3 -9",
    "zstd -3 --patch-from",
    "zstd -19 --patch-from",
    "detools (bsdiff, lzma)",
    "detools (hdiffpatch, lzma)",
];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The first number after `label` on the line that starts with it.
fn figure(text: &str, label: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().next()?.parse().ok()
}

/// The table row of `tool`: its delta size in bytes, if the tool ran.
fn row_size(text: &str, tool: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(tool))?;
    let rest = line[tool.len()..].split_whitespace().next()?;
    rest.parse().ok()
}

#[test]
fn compare_runs_every_installed_peer_on_the_same_pair() {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["bench", "delta", "--size-mib", "1", "--content", "code"])
        .args(["--changed-pct", "5", "--compare", "--runs", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("peers on the same pair"), "{text}");
    let ours = row_size(&text, "simfota (apply streamed, files)").expect("our row");
    assert_eq!(row_size(&text, "simfota (apply in memory)"), Some(ours));
    assert_eq!(figure(&text, "delta "), Some(ours), "{text}");
    for peer in PEERS {
        match row_size(&text, peer) {
            Some(size) => assert!(size > 0, "{peer}: {text}"),
            None => assert!(
                text.contains(&format!("{peer:<28} not installed, skipped")),
                "{peer} neither ran nor was skipped: {text}"
            ),
        }
    }
    // A peer that is installed must have run (and rebuilt the image: a mismatch is reported
    // as a failure instead of a row).
    if on_path("bsdiff") && on_path("bspatch") {
        assert!(row_size(&text, "bsdiff 4 (bzip2)").is_some(), "{text}");
    }
    assert!(!text.contains("failed:"), "{text}");
}

#[test]
fn pair_measures_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let old: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[50_000..50_100].fill(9);
    new.splice(1000..1000, *b"a few inserted bytes");
    std::fs::write(dir.path().join("old"), &old).unwrap();
    std::fs::write(dir.path().join("new"), &new).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["bench", "delta", "--runs", "1", "--pair"])
        .arg(dir.path().join("old"))
        .arg(dir.path().join("new"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        figure(&text, "target image"),
        Some(new.len() as u64),
        "{text}"
    );
    assert!(text.contains("format version 2"), "{text}");
    assert!(!text.contains("peers on the same pair"), "{text}");

    // A missing file is named.
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["bench", "delta", "--pair"])
        .arg(dir.path().join("old"))
        .arg(dir.path().join("absent"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("absent"), "{err}");
}
