//! Operator identities: named tokens with roles (viewer reads, operator runs the fleet, admin
//! also manages tokens and relays issuer admin commands), listed and revoked over the API, and
//! an audit log of every state-changing request (who, what, the answer, when, from where),
//! read over the API and on the dashboard. On SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::{self, StatusCode};
use common::{Env, Server, imei};
use serde_json::{Value, json};

async fn call(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let url = format!("{}/api/v1{path}", s.url);
    let c = http::Client::new();
    let req = match method {
        "GET" => c.get(url),
        "DELETE" => c.delete(url),
        _ => c.post(url),
    }
    .bearer_auth(token);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let r = req.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A GET without following redirects: the whole answer as text.
fn raw_get(s: &Server, path: &str, cookie: Option<&str>) -> String {
    use std::io::{Read as _, Write as _};
    let addr = s.running.local_addr();
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{cookie}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

async fn token(s: &Server, name: &str, role: &str) -> (i64, String) {
    let (status, v) = call(
        s,
        &s.token,
        "POST",
        "/tokens",
        Some(json!({"name": name, "role": role})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["role"], role);
    (
        v["id"].as_i64().unwrap(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn roles_and_audit(env: Env) {
    let s = env.start().await;
    let (viewer_id, viewer) = token(&s, "night shift", "viewer").await;
    let (_, operator) = token(&s, "campaign desk", "operator").await;
    let device = |n: u32| json!({"imei": imei(n), "username": format!("u{n}"), "password": "p", "server_password": "sp"});

    // The viewer reads, and nothing more.
    assert_eq!(
        call(&s, &viewer, "GET", "/devices", None).await.0,
        StatusCode::OK
    );
    let (status, v) = call(&s, &viewer, "POST", "/devices", Some(device(1))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        v["error"].as_str().unwrap().contains("needs operator"),
        "{v}"
    );
    for path in ["/audit", "/tokens"] {
        assert_eq!(
            call(&s, &viewer, "GET", path, None).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    // The operator runs the fleet and reads the audit log, but manages no tokens and relays no
    // issuer command.
    assert_eq!(
        call(&s, &operator, "POST", "/devices", Some(device(2)))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&s, &operator, "GET", "/audit", None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            &s,
            &operator,
            "POST",
            "/tokens",
            Some(json!({"name": "x", "role": "admin"}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &s,
            &operator,
            "POST",
            "/cards/8949000000000000000/admin",
            Some(json!({"command": "AA=="}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // A request without a valid token.
    assert_eq!(
        call(&s, "sft_forged", "POST", "/devices", Some(device(3)))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // The admin lists and revokes; a revoked token opens nothing.
    let (_, list) = call(&s, &s.token, "GET", "/tokens", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["initial", "night shift", "campaign desk"]);
    assert!(
        !list.to_string().contains(&viewer),
        "never the token itself"
    );
    assert_eq!(list[0]["role"], "admin");
    assert_eq!(
        call(
            &s,
            &s.token,
            "DELETE",
            &format!("/tokens/{viewer_id}"),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, &viewer, "GET", "/devices", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The last admin token stays.
    let (_, list) = call(&s, &s.token, "GET", "/tokens", None).await;
    let admin_id = list[0]["id"].as_i64().unwrap();
    let (status, v) = call(&s, &s.token, "DELETE", &format!("/tokens/{admin_id}"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");

    // The audit log: who did what, the answer, from where, newest first; reads are not in it.
    let (status, log) = call(&s, &s.token, "GET", "/audit?limit=20", None).await;
    assert_eq!(status, StatusCode::OK);
    let entries: Vec<(String, String, String, i64, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["token_name"].as_str().unwrap().to_owned(),
                e["role"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
                e["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has = |who: &str, role: &str, action: &str, status: i64| {
        entries.iter().any(|e| {
            e.0 == who && e.1 == role && e.2 == action && e.3 == status && e.4 == "127.0.0.1"
        })
    };
    assert!(
        has("initial", "admin", "POST /api/v1/tokens", 201),
        "{entries:#?}"
    );
    assert!(
        has("night shift", "viewer", "POST /api/v1/devices", 403),
        "{entries:#?}"
    );
    assert!(
        has("campaign desk", "operator", "POST /api/v1/devices", 201),
        "{entries:#?}"
    );
    assert!(has(
        "campaign desk",
        "operator",
        "POST /api/v1/cards/8949000000000000000/admin",
        403
    ));
    assert!(has("-", "-", "POST /api/v1/devices", 401), "{entries:#?}");
    assert!(has(
        "initial",
        "admin",
        &format!("DELETE /api/v1/tokens/{viewer_id}"),
        204
    ));
    assert!(has(
        "initial",
        "admin",
        &format!("DELETE /api/v1/tokens/{admin_id}"),
        409
    ));
    assert!(
        !entries.iter().any(|e| e.2.starts_with("GET ")),
        "reads are not audited"
    );
    let ids: Vec<i64> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // The next page.
    let (_, older) = call(
        &s,
        &s.token,
        "GET",
        &format!("/audit?limit=2&before={}", ids[1]),
        None,
    )
    .await;
    assert_eq!(older.as_array().unwrap()[0]["id"].as_i64().unwrap(), ids[2]);

    // On the dashboard too, with the sign-in recorded.
    let (_, link) = call(
        &s,
        &operator,
        "POST",
        "/ui/links",
        Some(json!({"next": "/ui/audit"})),
    )
    .await;
    let path = link["url"]
        .as_str()
        .unwrap()
        .trim_start_matches(&s.url)
        .to_owned();
    let answer = raw_get(&s, &path, None);
    let cookie = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = raw_get(&s, "/ui/audit", Some(&cookie));
    assert!(
        page.contains("Audit log") && page.contains("campaign desk"),
        "{page}"
    );
    assert!(page.contains("POST /api/v1/devices"), "{page}");
    let (_, log) = call(&s, &s.token, "GET", "/audit?limit=1", None).await;
    assert_eq!(log[0]["action"], "dashboard sign-in (link)");
    assert_eq!(log[0]["token_name"], "campaign desk");
    s.stop().await;
}
both!(
    roles_limit_tokens_and_the_audit_log_records_them,
    super::roles_and_audit
);
