//! The operator API against its own OpenAPI document, by schemathesis (PyPI, an independent
//! property-based API tester): it derives requests from the document, valid and invalid, and
//! checks every answer: no 5xx, every status code, content type, header and body as the
//! document says, invalid input refused. On a live server, SQLite and PostgreSQL, with data in
//! it (devices, a group, a package, a campaign) so that reads find something.
//!
//! One check is left out: `positive_data_acceptance` (every schema-valid request accepted),
//! since the document cannot express every rule the server checks (an IMEI's Luhn digit, a
//! package id that exists, a certificate that verifies under an issuer key).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Env, imei};
use serde_json::json;

/// The `st` command of the Python environment the test command prepared (`SIMFOTA_PYTHON`'s
/// folder), or `None` (after saying why) when outside tools may be skipped.
fn schemathesis() -> Option<PathBuf> {
    let st = std::env::var_os("SIMFOTA_PYTHON")
        .map(PathBuf::from)
        .and_then(|py| py.parent().map(|d| d.join("st")))
        .filter(|st| {
            Command::new(st)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if st.is_none() {
        if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
            panic!(
                "schemathesis (st, next to SIMFOTA_PYTHON) is required (scripts/test installs it; \
                 set SIMFOTA_SKIP_EXTERNAL=1 to skip instead)"
            );
        }
        eprintln!("skipped: schemathesis missing");
    }
    st
}

async fn against_the_document(env: Env) {
    let Some(st) = schemathesis() else { return };
    let s = env.start().await;
    for n in 1..=3 {
        let r = s
            .post("/api/v1/devices")
            .json(
                &json!({"imei": imei(n), "username": format!("u{n}"), "password": "p",
                          "server_password": "sp", "model": "EX-1", "groups": ["lab"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let url = format!("{}/api/v1/openapi.json", s.url);
    let token = s.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        // Its working files (a cache of found examples) go to a folder of their own.
        let scratch = tempfile::tempdir().unwrap();
        Command::new(st)
            .current_dir(scratch.path())
            .args(["run", &url, "--checks", "all"])
            .args(["--exclude-checks", "positive_data_acceptance"])
            .args(["--max-examples", "25", "--seed", "20261205"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--no-color"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found answers that contradict the document:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    s.stop().await;
}
both!(
    the_api_answers_as_its_document_says,
    super::against_the_document
);
