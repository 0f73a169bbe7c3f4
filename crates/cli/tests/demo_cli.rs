//! `simfota demo` as a user or a script runs it: the real binary, real servers, agent and
//! card in its process. One full run with `--json` is checked against what each step must
//! show; the folder and option refusals are checked without running the demo.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn simfota(args: &[&str], dir: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simfota"));
    c.args(args);
    if let Some(d) = dir {
        c.arg("--dir").arg(d);
    }
    c.env_remove("NO_COLOR").output().unwrap()
}

/// The entries of the card log the step wrote, as the summary lists them.
fn step_entries<'a>(summary: &'a Value, update: &Value) -> Vec<&'a Value> {
    let entries = summary["card_log"]["entries"].as_array().unwrap();
    update["card_log_seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            entries
                .iter()
                .find(|e| e["seq"] == *s)
                .unwrap_or_else(|| panic!("entry {s} of {update} is not in the log"))
        })
        .collect()
}

#[test]
fn demo_runs_every_step_and_prints_one_json_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = simfota(&["demo", "--json"], Some(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    // stdout is the JSON document and nothing else; the progress went to stderr.
    let s: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}); stderr:\n{stderr}"));
    assert_eq!(s["schema"], "simfota-demo/1");
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["failures"], serde_json::json!([]));
    assert!(stderr.contains("[11/11]"), "{stderr}");
    // The human summary went to stderr too.
    assert!(
        stderr.contains("Every step behaved as expected"),
        "{stderr}"
    );
    // The user of step 8 saw the agent's warning, naming the server.
    assert!(
        stderr.contains("NOT authorized by your SIM card"),
        "{stderr}"
    );
    assert!(stderr.contains("\"unlisted-dm\""), "{stderr}");
    // No colour codes when stderr is not a terminal.
    assert!(!stderr.contains('\x1b'));

    let updates = s["updates"].as_array().unwrap();
    let steps: Vec<&str> = updates
        .iter()
        .map(|u| u["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["full", "delta", "unauthorized", "replay", "rollback"]
    );
    let [full, delta, unauthorized, replay, rollback] = [0, 1, 2, 3, 4].map(|i| &updates[i]);

    for (u, package) in [(full, "full"), (delta, "delta"), (unauthorized, "full")] {
        assert_eq!(u["state"], "succeeded", "{u}");
        assert_eq!(u["fumo_result"], 200, "{u}");
        assert_eq!(u["receipt"], "verified", "{u}");
        assert_eq!(u["package"], package, "{u}");
        assert_eq!(u["ok"], true, "{u}");
        let installed = step_entries(&s, u)
            .into_iter()
            .any(|e| e["event"] == "installed" && e["fumo_result"] == 200);
        assert!(installed, "{u}");
    }
    assert_eq!(full["release"], "2.0");
    assert_eq!(delta["release"], "2.1");
    assert_eq!(full["authorized_server"], true);
    assert_eq!(unauthorized["authorized_server"], false);
    assert_eq!(unauthorized["server_id"], "unlisted-dm");
    let consent: Vec<_> = step_entries(&s, unauthorized)
        .into_iter()
        .filter(|e| e["event"] == "consent")
        .collect();
    assert_eq!(consent.len(), 1, "{unauthorized}");
    assert_eq!(consent[0]["pin_verified"], true);
    assert_eq!(consent[0]["server_id"], "unlisted-dm");

    // The replayed token: refused by the card (its nonce is spent), FUMO 405 (docs/dm-tree.md,
    // policy / replay / rollback). A replay is a request nothing authenticates, so the card
    // counts it in a refusal tally that names nothing from the token; the rollback of a
    // listed server's fresh token is an entry of its own.
    for (u, event, reasons) in [
        (
            replay,
            "refusals",
            &["nonce_mismatch", "nonce_unavailable"][..],
        ),
        (rollback, "denied", &["rollback"][..]),
    ] {
        assert_eq!(u["expected"], "refused", "{u}");
        assert_eq!(u["state"], "failed", "{u}");
        assert_eq!(u["fumo_result"], 405, "{u}");
        assert_eq!(u["ok"], true, "{u}");
        let refused: Vec<_> = step_entries(&s, u)
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect();
        assert_eq!(refused.len(), 1, "{u}");
        let reason = if event == "denied" {
            refused[0]["reason"].as_str().unwrap().to_owned()
        } else {
            assert_eq!(refused[0]["update_id"], serde_json::Value::Null, "{u}");
            assert_eq!(refused[0]["server_id"], serde_json::Value::Null, "{u}");
            refused[0]["counted"][0][0].as_str().unwrap().to_owned()
        };
        assert!(reasons.contains(&reason.as_str()), "{reason} for {u}");
        // Nothing was installed.
        assert!(
            !step_entries(&s, u)
                .iter()
                .any(|e| e["event"] == "installed"),
            "{u}"
        );
    }

    // The card log: every entry the card holds, read, verified and acknowledged.
    let log = &s["card_log"];
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 12, "{log}");
    assert_eq!(log["card_entries"], entries.len());
    assert_eq!(log["card_acknowledged"], entries.len());
    assert_eq!(log["chain_head_matches"], true);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i, "{e}");
        assert_eq!(e["verified"], true, "{e}");
    }

    // The firmware the device runs at the end, as the device and the server see it.
    assert_eq!(s["device"]["running_version"], "2.2");
    assert_eq!(s["device"]["fw_version"], "2.2");

    // The files a user looks at afterwards.
    for f in [
        "issuer.pem",
        "oem.pem",
        "server/server-key.pem",
        "server/api-token",
        "card.state",
        "firmware/fw-2.1.delta",
        "device/authorized.toml",
        "summary.json",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(saved, s);
}

#[test]
fn demo_refuses_a_folder_it_did_not_make() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"keep me").unwrap();
    let out = simfota(&["demo"], Some(&dir));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("simfota: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is not a folder made by `simfota demo`"),
        "{stderr}"
    );
    // Nothing was touched or added.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["notes.txt"]);
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"keep me");
}

#[test]
fn demo_refuses_a_bad_option() {
    let out = simfota(&["demo", "--colour"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("simfota: "), "{stderr}");
    assert!(stderr.contains("--colour"), "{stderr}");
    assert!(stderr.contains("simfota demo --help"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
}
