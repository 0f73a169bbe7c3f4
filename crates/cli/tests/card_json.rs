//! `simfota card ... --json`: one JSON document on one line, from a real run on a card state
//! file (the applet in process).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn card_commands_answer_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keys = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["keys", "gen", "--out", "issuer.pem"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(keys.status.success());
    let perso = json(
        d,
        &[
            "card",
            "personalize",
            "--state",
            "CARD.state",
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
            "--policy",
            "confirm-with-pin",
            "--json",
        ],
    );
    assert_eq!(perso["iccid"], "89882110000000000010");
    let key = perso["card_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 130, "{key}");

    let info = json(d, &["card", "info", "--state", "CARD.state", "--json"]);
    assert_eq!(info["iccid"], "89882110000000000010");
    assert_eq!(info["imsi"], "001010123456789");
    assert_eq!(info["lifecycle"], "operational");
    assert_eq!(info["card_key"], key.as_str());
    assert_eq!(info["admin_counter"], 0);
    assert_eq!(info["update_pending"], false);
    assert!(info["log"]["capacity"].as_u64().unwrap() > 0);

    let policy = json(d, &["card", "policy", "--state", "CARD.state", "--json"]);
    assert_eq!(
        policy,
        serde_json::json!({
            "unauthorized": "confirm-with-pin",
            "integrity": "device-digest",
            "card_digest_max_bytes": null,
            "allowed": [],
        })
    );
    assert_eq!(
        json(d, &["card", "servers", "--state", "CARD.state", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        json(
            d,
            &["card", "originators", "--state", "CARD.state", "--json"]
        ),
        serde_json::json!([])
    );
}
