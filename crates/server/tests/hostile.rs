//! One hostile corpus, run on SQLite and on PostgreSQL: NUL and other control characters, bytes
//! that are not UTF-8, over-long values and malformed bodies in paths, query strings, JSON and
//! CSV bodies and DM messages. Every answer is a 4xx naming what was refused (JSON
//! `{"error"}` on the API), never a 5xx, never a database message, and nothing is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::StatusCode;
use common::{Env, Server, imei};
use serde_json::{Value, json};
use simfota_syncml::model::{
    Alert, CmdId, Command, Location, Message, MsgId, SyncHdr, VER_DTD, VER_PROTO,
};
use simfota_syncml::{AlertCode, Encoding};

/// What no answer may carry: the database's own words.
const LEAKS: [&str; 6] = [
    "sqlx",
    "database error",
    "invalid byte sequence",
    "error returned from database",
    "SQLSTATE",
    "0x00",
];

fn check(what: &str, status: StatusCode, body: &[u8], want: &[u16]) {
    let text = String::from_utf8_lossy(body);
    assert!(
        want.contains(&status.as_u16()),
        "{what}: HTTP {status}, wanted {want:?}: {text}"
    );
    for leak in LEAKS {
        assert!(
            !text.contains(leak),
            "{what}: the answer leaks {leak:?}: {text}"
        );
    }
}

async fn send(
    s: &Server,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Vec<u8>) {
    let url = format!("{}{path}", s.url);
    let req = match method {
        "GET" => s.http.get(url),
        "PUT" => s.http.put(url),
        _ => s.http.post(url),
    };
    let mut req = req.bearer_auth(&s.token);
    if let Some((ct, b)) = body {
        req = req.header("content-type", ct).body(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    (status, r.bytes().await.unwrap().to_vec())
}

async fn corpus(env: Env) {
    let s = env.start().await;
    let devices = || async { s.json("/api/v1/devices").await.as_array().unwrap().len() };
    let ok = json!({"imei": imei(1), "username": "u1", "password": "p", "server_password": "sp"});
    let r = s.post("/api/v1/devices").json(&ok).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Paths and query strings.
    let long = "a".repeat(3000);
    for (method, path) in [
        ("GET", "/api/v1/devices/a%00b".to_owned()),
        ("GET", "/api/v1/devices/a%01b".to_owned()),
        ("GET", "/api/v1/devices/%ff%fe".to_owned()),
        ("GET", "/api/v1/devices/%zz".to_owned()),
        ("GET", format!("/api/v1/devices/{long}")),
        ("GET", "/api/v1/cards/a%00b".to_owned()),
        ("GET", "/api/v1/cards/a%00b/log".to_owned()),
        ("GET", "/api/v1/cards/a%00b/admin".to_owned()),
        ("PUT", format!("/api/v1/groups/a%00b/devices/{}", imei(1))),
        ("GET", "/api/v1/jobs?campaign=1%00".to_owned()),
        ("GET", "/ui/devices/a%00b".to_owned()),
        ("GET", "/ui/cards/a%7fb".to_owned()),
    ] {
        let (status, body) = send(&s, method, &path, None).await;
        check(&path, status, &body, &[400, 404]);
    }

    // JSON bodies: a control character anywhere, malformed JSON, the wrong media type.
    let mut with_nul = ok.clone();
    with_nul["imei"] = json!(imei(2));
    with_nul["model"] = json!("EX\u{0}1");
    let mut too_long = ok.clone();
    too_long["imei"] = json!(imei(3));
    too_long["manufacturer"] = json!("m".repeat(5000));
    let mut fw_ctl = ok.clone();
    fw_ctl["imei"] = json!(imei(4));
    fw_ctl["fw_version"] = json!("1.\u{1b}[31m0");
    let json_ct = "application/json";
    for (path, ct, body, want) in [
        ("/api/v1/devices", json_ct, with_nul.to_string(), &[400][..]),
        ("/api/v1/devices", json_ct, too_long.to_string(), &[400]),
        ("/api/v1/devices", json_ct, fw_ctl.to_string(), &[400]),
        ("/api/v1/devices", json_ct, "{\"imei\": ".into(), &[400]),
        ("/api/v1/devices", json_ct, "[1, 2]".into(), &[400]),
        ("/api/v1/devices", "text/plain", ok.to_string(), &[415]),
        (
            "/api/v1/devices/bulk",
            json_ct,
            json!({"devices": [with_nul]}).to_string(),
            &[400],
        ),
        (
            "/api/v1/devices/bulk",
            "text/csv",
            format!(
                "imei,username,password,server_password,model\n{},u5,p,sp,a\u{0}b\n",
                imei(5)
            ),
            &[400],
        ),
        (
            "/api/v1/groups",
            json_ct,
            json!({"name": "g\u{0}"}).to_string(),
            &[400],
        ),
        (
            "/api/v1/campaigns",
            json_ct,
            json!({"name": "c\u{0}", "package_id": 1}).to_string(),
            &[400],
        ),
        (
            "/api/v1/campaigns",
            json_ct,
            json!({"name": "c", "package_id": 1, "target_model": "m\u{0}"}).to_string(),
            &[400],
        ),
        (
            "/api/v1/campaigns",
            json_ct,
            json!({"name": "c", "package_id": 1, "target_group": "g".repeat(300)}).to_string(),
            &[400],
        ),
        (
            "/api/v1/cards",
            json_ct,
            json!({"certificate": "\u{0}"}).to_string(),
            &[400],
        ),
    ] {
        let (status, reply) = send(&s, "POST", path, Some((ct, body.into_bytes()))).await;
        check(path, status, &reply, want);
        let v: Value = serde_json::from_slice(&reply)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&reply)));
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    assert_eq!(devices().await, 1, "nothing of a refused body is stored");

    // DM: a SessionID with a control character, before anything is looked up.
    let hdr = SyncHdr {
        ver_dtd: VER_DTD.into(),
        ver_proto: VER_PROTO.into(),
        session_id: "a\u{1}b".into(),
        msg_id: MsgId(1),
        target: Location::new(format!("{}/dm", s.url)),
        source: Location::new(format!("IMEI:{}", imei(1))),
        resp_uri: None,
        no_resp: false,
        cred: None,
        meta: None,
    };
    let msg = Message {
        header: hdr,
        body: vec![Command::Alert(Alert {
            cmd_id: CmdId(1),
            no_resp: false,
            cred: None,
            code: AlertCode::CLIENT_INITIATED_MGMT,
            correlator: None,
            items: Vec::new(),
        })],
        is_final: true,
    };
    let wbxml = Encoding::Wbxml.encode(&msg).unwrap();
    let (status, body) = send(
        &s,
        "POST",
        "/dm",
        Some(("application/vnd.syncml.dm+wbxml", wbxml)),
    )
    .await;
    check("/dm SessionID", status, &body, &[400]);
    // A raw NUL inside the XML SessionID.
    let xml = String::from_utf8(
        Encoding::Xml
            .encode(&Message {
                header: SyncHdr {
                    session_id: "1".into(),
                    ..msg.header.clone()
                },
                ..msg.clone()
            })
            .unwrap(),
    )
    .unwrap()
    .replace("<SessionID>1</SessionID>", "<SessionID>1\u{0}2</SessionID>");
    let (status, body) = send(
        &s,
        "POST",
        "/dm",
        Some(("application/vnd.syncml.dm+xml", xml.into_bytes())),
    )
    .await;
    check("/dm SessionID (XML)", status, &body, &[400]);
    let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dm_sessions")
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap();
    assert_eq!(sessions, 0);
    // The framework's own refusals are JSON too: a path parameter of the wrong type, an
    // unknown route, a method the route does not take.
    for (method, path, want) in [
        ("GET", "/api/v1/campaigns/abc", 400),
        ("GET", "/api/v1/no-such-route", 404),
        ("PUT", "/api/v1/devices", 405),
    ] {
        let (status, body) = send(&s, method, path, None).await;
        check(path, status, &body, &[want]);
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&body)));
        assert!(v["error"].is_string(), "{path}: {v}");
    }
    // An unknown card's admin queue is 404, as its other routes.
    let (status, body) = send(&s, "GET", "/api/v1/cards/8949000000000000001/admin", None).await;
    check("unknown card admin", status, &body, &[404]);
    s.stop().await;
}
both!(a_hostile_corpus_gets_4xx_on_both_engines, super::corpus);
