//! `simfota fleet` as a script runs it: small fleets on the server processes it starts, on
//! SQLite (XML + MD5, WBXML + HMAC with the payload downloaded) and on PostgreSQL with two
//! replicas behind its relay; every started device completes, the JSON carries the figures,
//! and the server's campaign count agrees, also when its servers are killed during the run
//! (`--kills`). Also its refusals of bad input.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};

use serde_json::Value;

mod pg;

use pg::{DropDb, pg, with_db_name};

/// `simfota fleet ARGS`: exit code, stdout, stderr.
fn fleet(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .arg("fleet")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a fleet with `--json` and checks what every successful run must show.
fn complete_run(devices: u64, args: &[&str]) -> Value {
    let n = devices.to_string();
    let mut all = vec!["--devices", &n, "--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = fleet(&all);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["devices"], devices, "{r}");
    assert_eq!(r["started"], devices, "{r}");
    assert_eq!(r["complete_updates"], devices, "{r}");
    assert_eq!(r["failed_updates"], 0, "{r}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["updates_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // Two sessions per update: delivery and result.
    assert_eq!(r["session_latency"]["count"], devices * 2, "{r}");
    assert_eq!(r["update_latency"]["count"], devices, "{r}");
    let s = &r["session_latency"];
    assert!(
        s["p50_ms"].as_f64().unwrap() <= s["p99_ms"].as_f64().unwrap(),
        "{r}"
    );
    assert!(r["cpu"]["server_ms_per_update"].as_f64().is_some(), "{r}");
    assert!(r["cpu"]["simulator_ms"].as_f64().is_some(), "{r}");
    assert!(r["setup"]["setup_s"].as_f64().is_some(), "{r}");
    // The server's own count of the campaign.
    let v = &r["verification"];
    assert_eq!(v["matches"], true, "{r}");
    assert_eq!(v["server_succeeded"], devices, "{r}");
    assert_eq!(v["server_failed"], 0, "{r}");
    assert_eq!(v["jobs_unsettled"], 0, "{r}");
    assert_eq!(v["counters_match_recount"], true, "{r}");
    // Every device's card log on the server: each entry the card wrote, once, up to its head.
    assert_eq!(v["card_logs_checked"], devices, "{r}");
    assert_eq!(v["card_logs_exact"], devices, "{r}");
    assert_eq!(v["card_log_problem"], Value::Null, "{r}");
    assert_eq!(r["stopped_early"], false, "{r}");
    assert_eq!(r["kills"], 0, "{r}");
    // Progress went to stderr, never into the JSON.
    assert!(stderr.contains("fleet: registering"), "{stderr}");
    r
}

#[test]
fn fleet_on_sqlite_completes_every_device_and_the_server_agrees() {
    let r = complete_run(12, &["--concurrency", "4"]);
    assert_eq!(r["setup"]["database"], "sqlite", "{r}");
    assert_eq!(r["setup"]["replicas"], 1, "{r}");
    assert_eq!(r["setup"]["encoding"], "xml", "{r}");
    assert_eq!(r["setup"]["auth"], "md5", "{r}");
}

/// Devices that never connect make the campaign larger than the fleet driven through it; the
/// server's statements are counted by kind, and their number per complete update stays where
/// the write path put it (a regression guard: a statement more per update shows here).
#[test]
fn fleet_inside_a_larger_campaign_counts_the_servers_statements() {
    let r = complete_run(
        6,
        &[
            "--concurrency",
            "3",
            "--idle-devices",
            "60",
            "--count-statements",
        ],
    );
    assert_eq!(r["setup"]["idle_devices"], 60, "{r}");
    let sql = &r["sql"];
    let by: &Vec<Value> = sql["by_statement"].as_array().unwrap();
    let sum: u64 = by.iter().map(|c| c["count"].as_u64().unwrap()).sum();
    assert_eq!(sql["statements"].as_u64(), Some(sum), "{r}");
    // One account lookup per DM message: an update is five messages (delivery session two,
    // result session three: the log page's acknowledgement rides on the page's own nonce).
    let lookup = by
        .iter()
        .find(|c| {
            c["summary"]
                .as_str()
                .unwrap()
                .starts_with("SELECT d.id, d.imei")
        })
        .unwrap_or_else(|| panic!("no account lookup counted: {r}"));
    assert_eq!(lookup["per_update"].as_f64(), Some(5.0), "{r}");
    // A connection the pool opens during the run sets itself up (PRAGMA …): that depends on
    // when the pool grows, not on the updates, and is left out of the per-update count.
    let per: f64 = by
        .iter()
        .filter(|c| !c["summary"].as_str().unwrap().starts_with("PRAGMA"))
        .map(|c| c["per_update"].as_f64().unwrap())
        .sum();
    assert!(
        (22.0..25.5).contains(&per),
        "{per} statements per update: {r}"
    );
    // The outstanding log-read request lives with the DM session, not in a table.
    assert!(
        by.iter()
            .all(|c| !c["summary"].as_str().unwrap().contains("log_requests")),
        "log_requests touched: {r}"
    );
}

#[test]
fn fleet_with_wbxml_hmac_and_downloads() {
    let r = complete_run(
        6,
        &[
            "--concurrency",
            "3",
            "--encoding",
            "wbxml",
            "--auth",
            "hmac",
            "--download",
            "--payload-size",
            "20000",
        ],
    );
    assert_eq!(r["setup"]["encoding"], "wbxml", "{r}");
    assert_eq!(r["setup"]["auth"], "hmac", "{r}");
    assert_eq!(r["setup"]["download"], true, "{r}");
}

/// Runs a fleet whose servers are killed `kills` times during the measured phase and checks
/// that every device still converged: all complete, no job left delivered or pending, the
/// campaign's counters equal the recount of its jobs, every card-log entry stored exactly
/// once, and the only errors are retried steps.
fn run_with_kills(devices: u64, kills: u64, args: &[&str]) -> Value {
    let n = devices.to_string();
    let k = kills.to_string();
    let mut all = vec!["--devices", &n, "--kills", &k, "--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = fleet(&all);
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let r: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["kills"], kills, "{r}");
    assert_eq!(r["started"], devices, "{r}");
    assert_eq!(r["complete_updates"], devices, "{r}");
    assert_eq!(r["failed_updates"], 0, "{r}");
    for kind in r["errors"].as_object().unwrap().keys() {
        assert!(kind.ends_with("_retried"), "{kind}: {r}");
    }
    let v = &r["verification"];
    assert_eq!(v["matches"], true, "{r}");
    assert_eq!(v["server_succeeded"], devices, "{r}");
    assert_eq!(v["jobs_unsettled"], 0, "{r}");
    assert_eq!(v["counters_match_recount"], true, "{r}");
    // Kills or not, every card-log entry is stored exactly once.
    assert_eq!(v["card_logs_exact"], devices, "{r}");
    assert_eq!(
        stderr.matches("(SIGKILL) and restarted it").count() as u64,
        kills,
        "{stderr}"
    );
    r
}

#[test]
fn fleet_on_sqlite_converges_through_server_kills() {
    let r = run_with_kills(40, 2, &["--concurrency", "4"]);
    assert_eq!(r["setup"]["database"], "sqlite", "{r}");
}

#[test]
fn fleet_on_postgres_with_two_replicas_behind_the_relay() {
    let admin = std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if !pg(&admin, "SELECT 1") {
        return;
    }
    let name = format!("simfota_fleet_{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDb {
        admin: admin.clone(),
        name: name.clone(),
    };
    let url = with_db_name(&admin, &name);
    let r = complete_run(
        10,
        &["--concurrency", "4", "--database", &url, "--replicas", "2"],
    );
    assert_eq!(r["setup"]["database"], "postgres", "{r}");
    assert_eq!(r["setup"]["replicas"], 2, "{r}");
    // PostgreSQL runs on this machine in the suite: its CPU is measured too.
    assert!(
        r["cpu"]["database_ms_per_update"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{r}"
    );
}

#[test]
fn fleet_on_postgres_converges_while_replicas_are_killed_in_turn() {
    let admin = std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if !pg(&admin, "SELECT 1") {
        return;
    }
    let name = format!("simfota_fleet_{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDb {
        admin: admin.clone(),
        name: name.clone(),
    };
    let url = with_db_name(&admin, &name);
    let r = run_with_kills(
        30,
        2,
        &["--concurrency", "4", "--database", &url, "--replicas", "2"],
    );
    assert_eq!(r["setup"]["replicas"], 2, "{r}");
}

#[test]
fn fleet_refuses_bad_input_in_one_line() {
    for (args, says) in [
        (&["--devices", "0"][..], "--devices"),
        (&["--concurrency", "0"][..], "--concurrency"),
        (&["--encoding", "json"][..], "--encoding"),
        (&["--replicas", "2"][..], "needs --database"),
        (&["--database", "sqlite://x.db"][..], "PostgreSQL URL"),
        (&["--target", "http://127.0.0.1:9"][..], "--token-file"),
    ] {
        let (code, stdout, stderr) = fleet(args);
        assert_ne!(code, Some(0), "{args:?}: {stdout}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("simfota: "), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn fleet_names_an_unreachable_target() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "simfota_x\n").unwrap();
    let key = dir.path().join("k.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["keys", "gen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_simfota"))
        .args(["keys", "pub"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pubkey = dir.path().join("k.pub.pem");
    std::fs::write(&pubkey, &out.stdout).unwrap();
    let k = key.to_str().unwrap();
    let (code, _, stderr) = fleet(&[
        "--target",
        "http://127.0.0.1:9",
        "--token-file",
        token.to_str().unwrap(),
        "--server-id",
        "s",
        "--server-key",
        pubkey.to_str().unwrap(),
        "--issuer-key",
        k,
        "--originator-key",
        k,
        "--devices",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot use the server at http://127.0.0.1:9"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
