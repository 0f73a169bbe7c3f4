//! Dashboard sign-in: the token goes in a form body once, never in a URL or a cookie; the
//! session cookie is random, HttpOnly, SameSite=Strict, scoped to `/ui`, expiring, kept only
//! as a digest, ended by sign-out or by revoking its token; cross-site posts are refused;
//! `next` stays on the dashboard; one-time links open one session; every page carries the
//! security headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read as _, Write as _};

use common::{Env, Server};

/// One raw HTTP/1.1 exchange (no redirect followed): status, headers (lower-case names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn raw(s: &Server, method: &str, path: &str, extra: &[(&str, String)], body: &str) -> Raw {
    let addr = s.running.local_addr();
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    conn.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn form(s: &Server, path: &str, body: &str, origin: Option<String>, cookie: Option<&str>) -> Raw {
    let mut extra = vec![(
        "Content-Type",
        "application/x-www-form-urlencoded".to_owned(),
    )];
    if let Some(o) = origin {
        extra.push(("Origin", o));
    }
    if let Some(c) = cookie {
        extra.push(("Cookie", c.to_owned()));
    }
    raw(s, "POST", path, &extra, body)
}

fn get(s: &Server, path: &str, cookie: Option<&str>) -> Raw {
    let extra: Vec<(&str, String)> = cookie
        .map(|c| ("Cookie", c.to_owned()))
        .into_iter()
        .collect();
    raw(s, "GET", path, &extra, "")
}

/// `simfota_session=...` from a Set-Cookie header, with the attributes.
fn session_cookie(r: &Raw) -> (String, String) {
    let set = r.header("set-cookie").expect("a session cookie");
    let pair = set.split(';').next().unwrap().trim().to_owned();
    (pair, set.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_through_the_form_and_out_again() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let s = env.start().await;
    let own = format!("http://{}", s.running.local_addr());

    // Signed out: a page sends the browser to the form, which carries the security headers.
    let r = get(&s, "/ui/devices/490154203237518", None);
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some("/ui/login?next=/ui/devices/490154203237518")
    );
    let r = get(&s, "/ui/login", None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("type=\"password\""), "{}", r.body);
    let csp = r.header("content-security-policy").unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // The token in a URL opens nothing.
    let r = get(&s, &format!("/ui/login?token={}", s.token), None);
    assert_eq!(r.status, 400);
    assert!(r.header("set-cookie").is_none());

    // From another site, or with no origin at all: refused.
    let body = format!("token={}&next=/ui", s.token);
    for origin in [
        Some("https://evil.example".to_owned()),
        Some("null".into()),
        None,
    ] {
        let r = form(&s, "/ui/login", &body, origin.clone(), None);
        assert_eq!(r.status, 403, "{origin:?}");
        assert!(r.header("set-cookie").is_none());
    }
    // A wrong token: the form again.
    let r = form(
        &s,
        "/ui/login",
        "token=simfota_wrong",
        Some(own.clone()),
        None,
    );
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());

    // The right one: a session cookie that is not the token, for the dashboard only; `next`
    // stays on the dashboard.
    let r = form(
        &s,
        "/ui/login",
        &format!("token={}&next=/ui/../../evil", s.token),
        Some(own.clone()),
        None,
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui"));
    let (cookie, set) = session_cookie(&r);
    assert!(!set.contains(&s.token));
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=28800"] {
        assert!(set.contains(attr), "{attr}: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP");
    let id = cookie.trim_start_matches("simfota_session=").to_owned();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ui_sessions WHERE id_hash = $1")
        .bind(id.as_bytes().to_vec())
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "only the id's digest is kept");
    let r = get(&s, "/ui", Some(&cookie));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Fleet overview"));

    // Sign-out (from the dashboard itself) ends it.
    let r = form(
        &s,
        "/ui/logout",
        "",
        Some("https://evil.example".into()),
        Some(&cookie),
    );
    assert_eq!(r.status, 403);
    assert_eq!(get(&s, "/ui", Some(&cookie)).status, 200, "still signed in");
    let r = form(&s, "/ui/logout", "", Some(own.clone()), Some(&cookie));
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(&s, "/ui", Some(&cookie)).status, 303, "signed out");

    // Revoking the token ends its sessions.
    let r = form(
        &s,
        "/ui/login",
        &format!("token={}", s.token),
        Some(own.clone()),
        None,
    );
    let (cookie, _) = session_cookie(&r);
    assert_eq!(get(&s, "/ui", Some(&cookie)).status, 200);
    sqlx::query("UPDATE api_tokens SET revoked = 1")
        .execute(s.running.state().db.pool())
        .await
        .unwrap();
    assert_eq!(get(&s, "/ui", Some(&cookie)).status, 303);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_link_opens_one_session_once() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let s = env.start().await;
    let r = s
        .post("/api/v1/ui/links")
        .json(&serde_json::json!({"next": "/ui/campaigns/1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["expires_in_secs"], 60);
    let url = v["url"].as_str().unwrap().to_owned();
    let path = url.trim_start_matches(&s.url).to_owned();
    assert!(
        path.starts_with("/ui/login/") && !path.contains(&s.token),
        "{path}"
    );
    let r = get(&s, &path, None);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui/campaigns/1"));
    let (cookie, _) = session_cookie(&r);
    assert_eq!(get(&s, "/ui", Some(&cookie)).status, 200);
    // Used: it opens nothing again.
    let r = get(&s, &path, None);
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    // Without a token, no link.
    let r = common::http::Client::new()
        .post(format!("{}/api/v1/ui/links", s.url))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cookie_is_secure_behind_an_https_url() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let mut cfg = env.config("data");
    cfg.public_url = Some("https://dm.example".into());
    let s = Server::start(cfg).await;
    let own = format!("http://{}", s.running.local_addr());
    let r = form(
        &s,
        "/ui/login",
        &format!("token={}", s.token),
        Some(own),
        None,
    );
    assert_eq!(r.status, 303);
    assert!(session_cookie(&r).1.contains("; Secure"));
    s.stop().await;
}
