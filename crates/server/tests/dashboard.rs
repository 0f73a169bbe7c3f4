//! The dashboard's pages on both engines: list pages with search, filters and pagination over
//! thousands of devices; times relative and absolute; the campaign page's pictures, failures
//! in words and actions (an operator's buttons, a viewer's none, the origin check, the audit
//! log); the device page's history and proof download; the card page's dated log, admin
//! queue and evidence export. One test drives headless Chromium over every page and keeps
//! screenshots in `target/dashboard/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read as _, Write as _};

use common::http::{self, StatusCode};
use common::{Env, Server, chromium, imei};
use simfota_server::db::now_ms;

// ---- Plain HTTP with a dashboard session ----

/// One raw HTTP/1.1 exchange (no redirect followed).
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
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
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

/// A signed-in dashboard session of one token.
struct Session<'a> {
    s: &'a Server,
    cookie: String,
}

impl<'a> Session<'a> {
    /// Signs in through a one-time link asked for with `token`.
    async fn open(s: &'a Server, token: &str) -> Self {
        let url = sign_in_link(s, token, "/ui").await;
        let path = url.trim_start_matches(&s.url).to_owned();
        let r = raw(s, "GET", &path, &[], "");
        assert_eq!(r.status, 303, "{}", r.body);
        let cookie = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        Self { s, cookie }
    }

    fn get(&self, path: &str) -> Raw {
        raw(self.s, "GET", path, &[("Cookie", self.cookie.clone())], "")
    }

    /// A page that must answer 200; its body.
    fn page(&self, path: &str) -> String {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.body
    }

    /// A dashboard form post, from the dashboard's own origin unless `origin` says otherwise.
    fn post(&self, path: &str, body: &str, origin: Option<String>) -> Raw {
        let mut extra = vec![
            ("Cookie", self.cookie.clone()),
            (
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            ),
        ];
        if let Some(o) = origin {
            extra.push(("Origin", o));
        }
        raw(self.s, "POST", path, &extra, body)
    }

    fn own_origin(&self) -> Option<String> {
        Some(format!("http://{}", self.s.running.local_addr()))
    }
}

async fn sign_in_link(s: &Server, token: &str, next: &str) -> String {
    let r = s
        .http
        .post(format!("{}/api/v1/ui/links", s.url))
        .bearer_auth(token)
        .json(&serde_json::json!({ "next": next }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<serde_json::Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A new token with `role`.
async fn token(s: &Server, name: &str, role: &str) -> String {
    let r = s
        .post("/api/v1/tokens")
        .json(&serde_json::json!({ "name": name, "role": role }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The href of the link `rel` (`next`, `prev`) of a page's pager, decoded from HTML.
fn link(page: &str, rel: &str) -> Option<String> {
    let at = page.find(&format!("rel=\"{rel}\""))?;
    let start = page[..at].rfind("href=\"")? + 6;
    let end = start + page[start..].find('"')?;
    Some(page[start..end].replace("&amp;", "&").replace("&#38;", "&"))
}

/// The IMEIs a device list page links to, in order.
fn imeis(page: &str) -> Vec<String> {
    page.match_indices("<td><a href=\"/ui/devices/")
        .map(|(i, m)| page[i + m.len()..i + m.len() + 15].to_owned())
        .collect()
}

/// The `<tr>` of `page` with a cell holding exactly `cell`.
fn row_with<'p>(page: &'p str, cell: &str) -> &'p str {
    let at = page
        .find(&format!(">{cell}</"))
        .unwrap_or_else(|| panic!("no cell {cell}: {page}"));
    let start = page[..at].rfind("<tr").unwrap();
    let end = at + page[at..].find("</tr>").unwrap();
    &page[start..end]
}

/// The fact (a `<div>` of the facts grid) labelled `label`.
fn fact<'p>(page: &'p str, label: &str) -> &'p str {
    let at = page
        .find(&format!(">{label}</span>"))
        .unwrap_or_else(|| panic!("no fact {label}: {page}"));
    &page[at..at + page[at..].find("</div>").unwrap()]
}

// ---- The fleet ----

/// Registers `n` devices in bulk (`imei(base + i)`): models alternate `Alpha` / `Beta`, the
/// firmware is `1.0` but every tenth is `0.9`.
async fn register(s: &Server, base: u32, n: u32) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let devices: Vec<serde_json::Value> = chunk
            .iter()
            .map(|i| {
                let k = base + i;
                serde_json::json!({
                    "imei": imei(k),
                    "username": format!("dev{k}"),
                    "password": "pw",
                    "server_password": "spw",
                    "model": if i % 2 == 0 { "Alpha" } else { "Beta" },
                    "fw_version": if i % 10 == 0 { "0.9" } else { "1.0" },
                })
            })
            .collect();
        let r = s
            .post("/api/v1/devices/bulk")
            .json(&serde_json::json!({ "devices": devices }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
}

fn envelope(env: &Env, img: &[u8], sequence: u64) -> Vec<u8> {
    simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence,
            image: simfota_wire::suit::ImageSource::Bytes(img),
            name: Some("fw"),
            version: Some("2.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        &env.originator,
    )
    .unwrap()
}

async fn upload(env: &Env, s: &Server) -> i64 {
    let img = vec![7u8; 2048];
    let form = http::Form::new()
        .part("envelope", http::Part::bytes(envelope(env, &img, 9)))
        .part("payload", http::Part::bytes(img));
    let r = s
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

async fn campaign(s: &Server, spec: serde_json::Value) -> i64 {
    let r = s
        .post("/api/v1/campaigns")
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

/// The ids of a campaign's pending jobs, by device IMEI.
async fn pending_jobs(s: &Server, campaign: i64) -> Vec<(i64, String)> {
    let jobs = s.json(&format!("/api/v1/jobs?campaign={campaign}")).await;
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "pending")
        .map(|j| {
            (
                j["id"].as_i64().unwrap(),
                j["imei"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Delivers job `job` (update id `uid`) and records FUMO result `code` through the engine.
async fn result(s: &Server, job: i64, uid: &[u8], code: u16, receipt: &str) {
    let db = &s.running.state().db;
    let mut tx = db.begin_write().await.unwrap();
    simfota_server::campaign::mark_delivered(&mut tx, job, uid, b"token")
        .await
        .unwrap();
    simfota_server::campaign::record_result(&mut tx, job, code, None, receipt, None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

/// A value bound to a statement of the tests' own.
enum B {
    I(i64),
    T(&'static str),
    S(String),
    Y(Vec<u8>),
    NoI,
}

async fn exec(s: &Server, sql: &str, binds: Vec<B>) {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = match b {
            B::I(i) => q.bind(i),
            B::T(t) => q.bind(t),
            B::S(t) => q.bind(t),
            B::Y(y) => q.bind(y),
            B::NoI => q.bind(None::<i64>),
        };
    }
    q.execute(s.running.state().db.pool()).await.unwrap();
}

const ICCID: &str = "8949440000001234564";
/// 2026-12-05 10:00:00 UTC, in seconds: the card's trusted time of the entries below.
const CARD_TIME: i64 = 1_796_464_800;

/// A card whose log the server holds: entries 0-2 with their card times, one admin command
/// applied, its PIN counter (2 tries of 3) stored ten minutes ago; bound to the device
/// `imei`, last seen three minutes ago.
async fn card_with_log(s: &Server, imei: &str) {
    let now = now_ms();
    exec(
        s,
        "INSERT INTO cards (iccid, imsi, cert_status, log_status, log_head_seq, acked_seq, \
         pin_tries_left, pin_max_tries, pin_reported_ms, created_ms, updated_ms) \
         VALUES ($1, '001010123456789', 'verified', 'ok', 2, 2, 2, 3, $2, $3, $3)",
        vec![B::T(ICCID), B::I(now - 600_000), B::I(now)],
    )
    .await;
    exec(
        s,
        "INSERT INTO log_exports (card_id, raw, verdict, first_seq, last_seq, received_ms) \
         SELECT id, $1, 'verified', 0, 2, $2 FROM cards WHERE iccid = $3",
        vec![B::Y(b"export".to_vec()), B::I(now), B::T(ICCID)],
    )
    .await;
    for (seq, event, deny) in [
        (0i64, "authorized", None),
        (1, "denied", Some(0x10i64)),
        (2, "installed", None),
    ] {
        exec(
            s,
            "INSERT INTO card_log_entries (card_id, seq, raw, entry_hash, prev_hash, event, \
             deny_code, server_id, release_name, release_version, imei, trusted_time, \
             device_time, export_id, stored_ms) SELECT c.id, $1, $2, $3, $4, $5, $6, 'simfota', \
             'fw', '2.0', $7, $8, $9, x.id, $10 FROM cards c JOIN log_exports x ON x.card_id = c.id \
             WHERE c.iccid = $11",
            vec![
                B::I(seq),
                B::Y(format!("record {seq}").into_bytes()),
                B::Y(vec![seq as u8; 32]),
                B::Y(vec![0; 32]),
                B::T(event),
                deny.map_or(B::NoI, B::I),
                B::S(imei.to_owned()),
                B::I(CARD_TIME + seq * 60),
                B::I(CARD_TIME + seq * 60 + 5),
                B::I(now),
                B::T(ICCID),
            ],
        )
        .await;
    }
    exec(
        s,
        "INSERT INTO admin_queue (card_id, command, note, state, result, created_ms, sent_ms, \
         done_ms) SELECT id, $1, 'add the backup server', 'applied', $2, $3, $3, $3 FROM cards \
         WHERE iccid = $4",
        vec![
            B::Y(b"cmd".to_vec()),
            B::Y(b"9000".to_vec()),
            B::I(now - 7_200_000),
            B::T(ICCID),
        ],
    )
    .await;
    exec(
        s,
        "UPDATE devices SET iccid = $1, last_seen_ms = $2 WHERE imei = $3",
        vec![B::T(ICCID), B::I(now - 180_000), B::S(imei.to_owned())],
    )
    .await;
}

// ---- The tests ----

async fn lists(env: Env) {
    let s = env.start().await;
    register(&s, 1, 2500).await;
    let ui = Session::open(&s, &s.token).await;

    // The overview: the fleet by firmware version, as a picture.
    let overview = ui.page("/ui");
    assert!(
        overview.contains("aria-label=\"devices by firmware version\""),
        "{overview}"
    );
    assert!(
        overview.contains("<title>firmware 0.9: 250</title>"),
        "{overview}"
    );
    assert!(
        overview.contains("<title>firmware 1.0: 2250</title>"),
        "{overview}"
    );

    // Page 1: 50 devices by IMEI, the fleet's size, a Next link and no Previous.
    let p1 = ui.page("/ui/devices");
    assert!(p1.contains("2500 registered"), "{p1}");
    let first = imeis(&p1);
    assert_eq!(first.len(), 50);
    assert_eq!(first[0], imei(1));
    assert!(link(&p1, "prev").is_none());
    assert!(p1.contains(">never<"), "devices never seen say so");
    assert!(
        p1.contains(" UTC</span>") && p1.contains("just now</time>"),
        "{p1}"
    );
    // Following Next: the following 50, then back again.
    let next = link(&p1, "next").unwrap();
    assert!(next.starts_with("/ui/devices?after="), "{next}");
    let p2 = ui.page(&next);
    let second = imeis(&p2);
    assert_eq!(second.len(), 50);
    assert!(second[0] > first[49], "{second:?}");
    let back = ui.page(&link(&p2, "prev").unwrap());
    assert_eq!(imeis(&back), first);
    // Every device is reached once, page after page.
    let mut seen = first.clone();
    let mut at = next;
    loop {
        let p = ui.page(&at);
        seen.extend(imeis(&p));
        match link(&p, "next") {
            Some(n) => at = n,
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (2500, 2500));

    // Search by IMEI prefix: devices 1200-1299 share their first 12 digits.
    let prefix = &imei(1200)[..12];
    let found = ui.page(&format!("/ui/devices?q={prefix}"));
    let hits = imeis(&found);
    assert_eq!(hits.len(), 50);
    assert!(hits.iter().all(|i| i.starts_with(prefix)), "{hits:?}");
    let more = ui.page(&link(&found, "next").unwrap());
    assert!(
        link(&found, "next")
            .unwrap()
            .contains(&format!("q={prefix}"))
    );
    assert_eq!(imeis(&more).len(), 50);
    assert!(
        link(&more, "next").is_none(),
        "exactly 100 match: {:?}",
        link(&more, "next")
    );
    let one = ui.page(&format!("/ui/devices?q={}", imei(77)));
    assert_eq!(imeis(&one), [imei(77)]);
    let bad = ui.page("/ui/devices?q=12ab");
    assert!(
        bad.contains("Search by IMEI") && imeis(&bad).is_empty(),
        "{bad}"
    );

    // Filters: a model, a firmware version (index-backed, registration order), both.
    let beta = ui.page("/ui/devices?model=Beta");
    assert_eq!(imeis(&beta).len(), 50);
    assert_eq!(beta.matches("<td>Beta</td>").count(), 50);
    assert!(!beta.contains("<td>Alpha</td>"));
    let old = ui.page("/ui/devices?version=0.9");
    assert_eq!(old.matches("<td>0.9</td>").count(), 50, "{old}");
    let mut count = imeis(&old).len();
    let mut at = link(&old, "next");
    while let Some(n) = at {
        assert!(n.contains("version=0.9"), "{n}");
        let p = ui.page(&n);
        assert!(!p.contains("<td>1.0</td>"));
        count += imeis(&p).len();
        at = link(&p, "next");
    }
    assert_eq!(count, 250, "every tenth device runs 0.9");
    let both = ui.page("/ui/devices?model=Alpha&version=0.9");
    assert!(!both.contains("<td>Beta</td>") && !both.contains("<td>1.0</td>"));
    assert_eq!(imeis(&both).len(), 50);
    // Seen and card filters.
    exec(
        &s,
        "UPDATE devices SET last_seen_ms = $1 WHERE imei = $2",
        vec![B::I(now_ms()), B::S(imei(5))],
    )
    .await;
    let today = ui.page("/ui/devices?seen=day");
    assert_eq!(imeis(&today), [imei(5)]);
    assert!(today.contains("just now</time>"), "{today}");
    assert_eq!(imeis(&ui.page("/ui/devices?card=with")).len(), 0);

    // The other lists: packages, campaigns, cards.
    let pkg = upload(&env, &s).await;
    let c = campaign(
        &s,
        serde_json::json!({"name": "Autumn <fix>", "package_id": pkg, "target_model": "Alpha"}),
    )
    .await;
    let packages = ui.page("/ui/packages");
    assert!(packages.contains("<strong>fw 2.0</strong>"), "{packages}");
    assert!(
        ui.page("/ui/packages?q=nothing-like-it")
            .contains("No package matches")
    );
    let campaigns = ui.page("/ui/campaigns");
    assert!(campaigns.contains(&format!("href=\"/ui/campaigns/{c}\">Autumn ")));
    assert!(
        !campaigns.contains("<fix>") && campaigns.contains("fix&#62;"),
        "names are escaped"
    );
    assert!(ui.page("/ui/campaigns?state=running").contains("Autumn "));
    assert!(!ui.page("/ui/campaigns?state=completed").contains("Autumn"));
    assert!(ui.page("/ui/campaigns?q=autumn").contains("Autumn "));
    card_with_log(&s, &imei(3)).await;
    let cards = ui.page("/ui/cards");
    assert!(row_with(&cards, ICCID).contains(">verified<"), "{cards}");
    assert!(
        ui.page(&format!("/ui/cards?q={}", &ICCID[..6]))
            .contains(ICCID)
    );
    assert!(!ui.page("/ui/cards?q=1111").contains(ICCID));
    assert!(!ui.page("/ui/cards?status=problem").contains(ICCID));
    // A cursor that is not one is refused in words.
    let r = ui.get("/ui/packages?after=x");
    assert_eq!(r.status, 400, "{}", r.body);
    s.stop().await;
}
both!(lists_paginate_search_and_filter, super::lists);

async fn campaign_page(env: Env) {
    let s = env.start().await;
    register(&s, 100, 30).await;
    let pkg = upload(&env, &s).await;
    let id = campaign(
        &s,
        serde_json::json!({"name": "Spring", "package_id": pkg, "waves": [50, 100],
            "success_threshold": 100, "error_threshold": 90}),
    )
    .await;
    // Wave 1 (15 devices): 5 succeed, 3 fail with 405, one is refused by its card.
    let jobs = pending_jobs(&s, id).await;
    assert_eq!(jobs.len(), 15);
    for (i, (job, _)) in jobs.iter().take(9).enumerate() {
        let code = if i < 5 { 200 } else { 405 };
        result(&s, *job, &[i as u8 + 1; 8], code, "absent").await;
    }
    {
        let mut tx = s.running.state().db.begin_write().await.unwrap();
        simfota_server::campaign::card_refused(&mut tx, &[9u8; 8], "rollback")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let operator = token(&s, "campaign desk", "operator").await;
    let viewer = token(&s, "wall screen", "viewer").await;
    let ui = Session::open(&s, &operator).await;
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    // Progress in words and pictures: overall, per wave, over time.
    assert!(page.contains("5 of 30 updated · 4 failed"), "{page}");
    assert!(
        page.contains("aria-label=\"5 succeeded, 4 failed, 6 pending, 15 waiting\""),
        "{page}"
    );
    assert!(page.contains("Wave 1 · to 50%") && page.contains("15 waiting · not released yet"));
    assert_eq!(
        at_the_end(&page),
        "5 succeeded, 4 failed, 0 in progress, 6 pending"
    );
    // Failures by reason, in words, most frequent first, each a filter of the jobs.
    assert!(
        page.contains("device reported 405: package not acceptable"),
        "{page}"
    );
    assert!(page.contains("card refused: rollback"), "{page}");
    let reasons = page.find("Failures by reason").unwrap();
    let r405 = page[reasons..].find("device reported 405").unwrap();
    let rcard = page[reasons..].find("card refused: rollback").unwrap();
    assert!(r405 < rcard, "the most frequent reason comes first");
    let failed = ui.page(&format!(
        "/ui/campaigns/{id}?state=failed&reason=card%20refused%3A%20rollback"
    ));
    let jobs_at = failed.find("id=\"jobs\"").unwrap();
    assert_eq!(
        failed[jobs_at..]
            .matches("<span class=\"bad\">card refused: rollback</span>")
            .count(),
        1
    );
    assert!(!failed[jobs_at..].contains("<span class=\"bad\">device reported"));
    // Times, both ways.
    assert!(page.contains("just now</time>") && page.contains(" UTC</span>"));
    // The operator's buttons: pause, retry, cancel; no resume while running.
    assert!(page.contains(&format!("action=\"/ui/campaigns/{id}/pause\"")));
    assert!(page.contains(&format!("action=\"/ui/campaigns/{id}/retry\"")));
    assert!(page.contains(&format!("href=\"/ui/campaigns/{id}/cancel\"")));
    assert!(!page.contains(&format!("action=\"/ui/campaigns/{id}/resume\"")));
    // A viewer sees the same campaign without a single button, and cannot act.
    let wall = Session::open(&s, &viewer).await;
    let seen = wall.page(&format!("/ui/campaigns/{id}"));
    assert!(seen.contains("5 of 30 updated"));
    for verb in ["pause", "resume", "retry", "cancel"] {
        assert!(
            !seen.contains(&format!("/ui/campaigns/{id}/{verb}")),
            "{verb}: {seen}"
        );
    }
    let r = wall.post(&format!("/ui/campaigns/{id}/pause"), "", wall.own_origin());
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("viewer role reads only"), "{}", r.body);
    // Another site's form is refused before anything happens.
    let r = ui.post(
        &format!("/ui/campaigns/{id}/pause"),
        "",
        Some("https://evil.example".into()),
    );
    assert_eq!(r.status, 403);
    let r = ui.post(&format!("/ui/campaigns/{id}/pause"), "", None);
    assert_eq!(r.status, 403);
    assert_eq!(
        s.json(&format!("/api/v1/campaigns/{id}")).await["state"],
        "running"
    );
    // The operator pauses: back to the page, paused, with Resume.
    let r = ui.post(&format!("/ui/campaigns/{id}/pause"), "", ui.own_origin());
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("/ui/campaigns/{id}").as_str())
    );
    assert_eq!(
        s.json(&format!("/api/v1/campaigns/{id}")).await["state"],
        "paused"
    );
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert!(page.contains("state big st-paused"));
    assert!(page.contains(&format!("action=\"/ui/campaigns/{id}/resume\"")));
    // Pausing twice is a conflict, in words.
    let r = ui.post(&format!("/ui/campaigns/{id}/pause"), "", ui.own_origin());
    assert_eq!(r.status, 409);
    assert!(r.body.contains("cannot pause"), "{}", r.body);
    // Retry of one reason: the card's refusal goes back to pending, the 405s stay.
    let r = ui.post(
        &format!("/ui/campaigns/{id}/retry"),
        "reason=card+refused%3A+rollback",
        ui.own_origin(),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert!(page.contains("5 of 30 updated · 3 failed"), "{page}");
    // Every attempt is in the audit log: done and refused.
    let audit = ui.page("/ui/audit");
    assert!(
        audit.contains(&format!("dashboard: pause campaign {id}")),
        "{audit}"
    );
    assert!(audit.contains(&format!(
        "dashboard: retry the failed jobs of campaign {id} (reason "
    )));
    let log = s.json("/api/v1/audit?limit=100").await;
    let statuses: Vec<(String, i64)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == format!("dashboard: pause campaign {id}"))
        .map(|e| {
            (
                e["token_name"].as_str().unwrap().to_owned(),
                e["status"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(
        statuses.contains(&("wall screen".into(), 403)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("campaign desk".into(), 303)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("campaign desk".into(), 409)),
        "{statuses:?}"
    );
    // A viewer does not read the audit log (as in the API).
    assert_eq!(wall.get("/ui/audit").status, 403);
    // Cancel takes a second step that says what it does.
    let confirm = ui.page(&format!("/ui/campaigns/{id}/cancel"));
    assert!(
        confirm.contains("not delivered yet will be cancelled"),
        "{confirm}"
    );
    let r = ui.post(&format!("/ui/campaigns/{id}/cancel"), "", ui.own_origin());
    assert_eq!(r.status, 303);
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert!(page.contains("state big st-cancelled"));
    assert!(
        !page.contains(&format!("action=\"/ui/campaigns/{id}/")),
        "no action is left"
    );
    // The overview shows it among the finished ones, the operator's actions at the bottom.
    let overview = ui.page("/ui");
    assert!(overview.contains("Recently finished") && overview.contains(">Spring</a>"));
    assert!(overview.contains(&format!("dashboard: cancel campaign {id}")));
    s.stop().await;
}
both!(
    campaign_page_shows_progress_reasons_and_actions,
    super::campaign_page
);

/// What the progress over time counts at its right edge (from the picture's label).
fn at_the_end(page: &str) -> &str {
    let at = page
        .find("aria-label=\"jobs over time, stacked, from ")
        .unwrap_or_else(|| panic!("no progress over time: {page}"));
    let label = &page[at..];
    let start = label.find("at the end: ").unwrap() + "at the end: ".len();
    let end = start + label[start..].find('"').unwrap();
    &label[start..end]
}

/// A layer of the progress over time: its count at the right edge and its most.
fn layer(page: &str, state: &str) -> (i64, i64) {
    let svg = &page[page.find("aria-label=\"jobs over time").unwrap()..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    let title = format!("<title>{state}: ");
    let at = svg
        .find(&title)
        .unwrap_or_else(|| panic!("no {state} layer: {svg}"))
        + title.len();
    let words = &svg[at..at + svg[at..].find("</title>").unwrap()];
    let (now, most) = words
        .strip_suffix(" at most")
        .and_then(|w| w.split_once(" at the end, "))
        .unwrap_or_else(|| panic!("{state}: {words}"));
    (now.parse().unwrap(), most.parse().unwrap())
}

/// A job's recorded release, delivery and last change.
async fn job_times(s: &Server, job: i64) -> (Option<i64>, Option<i64>, i64) {
    use sqlx::Row as _;
    let r = sqlx::query("SELECT released_ms, delivered_ms, updated_ms FROM jobs WHERE id = $1")
        .bind(job)
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap();
    (
        r.try_get("released_ms").unwrap(),
        r.try_get("delivered_ms").unwrap(),
        r.try_get("updated_ms").unwrap(),
    )
}

/// Delivers job `job` (update id `uid`), no result yet.
async fn deliver(s: &Server, job: i64, uid: &[u8]) {
    let mut tx = s.running.state().db.begin_write().await.unwrap();
    simfota_server::campaign::mark_delivered(&mut tx, job, uid, b"token")
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn progress_over_time(env: Env) {
    let s = env.start().await;
    register(&s, 700, 4).await;
    let pkg = upload(&env, &s).await;
    let id = campaign(
        &s,
        serde_json::json!({"name": "Steps", "package_id": pkg, "waves": [50, 100],
            "success_threshold": 50, "error_threshold": 90}),
    )
    .await;
    // Wave 1: A succeeds (which releases wave 2), B fails. Wave 2: C is delivered, D waits
    // for its device.
    let first = pending_jobs(&s, id).await;
    assert_eq!(first.len(), 2);
    let (a, b) = (first[0].0, first[1].0);
    let before = now_ms();
    result(&s, a, &[1; 8], 200, "absent").await;
    let second: Vec<i64> = pending_jobs(&s, id)
        .await
        .into_iter()
        .map(|(j, _)| j)
        .filter(|j| *j != b)
        .collect();
    assert_eq!(second.len(), 2, "wave 2 released");
    let (c, d) = (second[0], second[1]);
    result(&s, b, &[2; 8], 405, "absent").await;
    deliver(&s, c, &[3; 8]).await;
    let after = now_ms();
    // The release and the deliveries are recorded by the statements that made them.
    let within = |t: Option<i64>| t.is_some_and(|t| (before..=after).contains(&t));
    for job in [a, b] {
        let (released, delivered, _) = job_times(&s, job).await;
        assert!(released.is_none() && within(delivered), "job {job}");
    }
    let (released, delivered, updated) = job_times(&s, c).await;
    assert!(within(released) && delivered == Some(updated), "job {c}");
    let (released, delivered, _) = job_times(&s, d).await;
    assert!(within(released) && delivered.is_none(), "job {d}");

    let ui = Session::open(&s, &s.token).await;
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert!(page.contains("<h2>Progress over time</h2>"), "{page}");
    assert_eq!(
        at_the_end(&page),
        "1 succeeded, 1 failed, 1 in progress, 1 pending"
    );
    // Its legend: the states in the colours of the bars above, with those counts.
    let section = &page[page.find("<h2>Progress over time</h2>").unwrap()..];
    let section = &section[..section.find("<h2>Failures by reason</h2>").unwrap()];
    for (state, colour) in [
        ("succeeded", "#2f7d46"),
        ("failed", "#c0392b"),
        ("in progress", "#e0a526"),
        ("pending", "#5b8fd1"),
    ] {
        assert!(
            section.contains(&format!(
                "fill=\"{colour}\"/></svg> {state} <strong>1</strong></li>"
            )),
            "{state}: {section}"
        );
    }
    assert!(!page.contains("Partial history"), "{page}");

    // The same steps spread over the last ten minutes: the campaign starts at t0; A is
    // delivered at +100 s and succeeds at +150 s; wave 2 is released at +160 s; B is
    // delivered at +200 s and fails at +300 s; C is delivered at +240 s.
    let t0 = now_ms() - 600_000;
    let at = |secs: i64| t0 + secs * 1000;
    exec(
        &s,
        "UPDATE campaigns SET created_ms = $1 WHERE id = $2",
        vec![B::I(t0), B::I(id)],
    )
    .await;
    exec(
        &s,
        "UPDATE jobs SET created_ms = $1 WHERE campaign_id = $2",
        vec![B::I(t0), B::I(id)],
    )
    .await;
    for (job, released, delivered, updated) in [
        (a, None, Some(100), 150),
        (b, None, Some(200), 300),
        (c, Some(160), Some(240), 240),
        (d, Some(160), None, 160),
    ] {
        exec(
            &s,
            "UPDATE jobs SET released_ms = $1, delivered_ms = $2, updated_ms = $3 WHERE id = $4",
            vec![
                released.map_or(B::NoI, |t| B::I(at(t))),
                delivered.map_or(B::NoI, |t| B::I(at(t))),
                B::I(at(updated)),
                B::I(job),
            ],
        )
        .await;
    }
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert_eq!(
        at_the_end(&page),
        "1 succeeded, 1 failed, 1 in progress, 1 pending"
    );
    // A and B pending from the start; then A delivered; C and D offered with wave 2 (3
    // pending); B and C delivered while A's result is in (2 in progress).
    assert_eq!(layer(&page, "pending"), (1, 3));
    assert_eq!(layer(&page, "in progress"), (1, 2));
    assert_eq!(layer(&page, "succeeded"), (1, 1));
    assert_eq!(layer(&page, "failed"), (1, 1));

    // Jobs changed before releases and deliveries were recorded: the counts at the right
    // edge stay exact, the picture shows what is known, and the page says the history is
    // partial.
    exec(
        &s,
        "UPDATE jobs SET released_ms = NULL, delivered_ms = NULL WHERE campaign_id = $1",
        vec![B::I(id)],
    )
    .await;
    let page = ui.page(&format!("/ui/campaigns/{id}"));
    assert_eq!(
        at_the_end(&page),
        "1 succeeded, 1 failed, 1 in progress, 1 pending"
    );
    // A and B pending until their results; D from its release (its last change); C from its
    // delivery (its last change), never pending.
    assert_eq!(layer(&page, "pending"), (1, 2));
    assert_eq!(layer(&page, "in progress"), (1, 1));
    assert!(
        page.contains(
            "Partial history: 3 jobs were released or delivered before those times were \
             recorded."
        ),
        "{page}"
    );
    s.stop().await;
}
both!(
    campaign_progress_over_time_from_recorded_times,
    super::progress_over_time
);

async fn device_and_card(env: Env) {
    let s = env.start().await;
    register(&s, 200, 3).await;
    let device = imei(200);
    card_with_log(&s, &device).await;
    let pkg = upload(&env, &s).await;
    let c = campaign(&s, serde_json::json!({"name": "Winter", "package_id": pkg})).await;
    let jobs = pending_jobs(&s, c).await;
    let (job, _) = jobs.iter().find(|(_, i)| *i == device).unwrap().clone();
    result(&s, job, &[0xAB; 8], 200, "verified").await;
    let ui = Session::open(&s, &s.token).await;

    // The device: running firmware, last seen, its jobs and campaigns, a proof download.
    let page = ui.page(&format!("/ui/devices/{device}"));
    assert!(page.contains("<strong>0.9</strong>"), "{page}");
    assert!(page.contains("active A/B slot"));
    assert!(page.contains("3 min ago</time>"), "{page}");
    let row = row_with(&page, "Winter");
    assert!(
        row.contains(">Winter</a>") && row.contains("fw 2.0"),
        "{row}"
    );
    assert!(
        row.contains("st-succeeded") && row.contains(">verified<"),
        "{row}"
    );
    assert!(
        row.contains(&format!("href=\"/ui/updates/{}/proof\"", "ab".repeat(8))),
        "{row}"
    );
    assert!(page.contains("No update waiting for this device."));
    // Its card's log, with the card's dates.
    assert!(page.contains("2026-12-05 10:00:00 UTC"), "{page}");
    assert!(page.contains("device said 2026-12-05 10:00:05"), "{page}");
    // The proof of an update whose receipt the server could not assemble: refused in words.
    let r = ui.get(&format!("/ui/updates/{}/proof", "ab".repeat(8)));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("<h1>Conflict</h1>"), "{}", r.body);
    assert_eq!(ui.get("/ui/updates/zz/proof").status, 400);

    // The card: log entries with their dates, newest first; PIN; admin queue; evidence.
    let page = ui.page(&format!("/ui/cards/{ICCID}"));
    let newest = page.find("2026-12-05 10:02:00 UTC").unwrap();
    let oldest = page.find("2026-12-05 10:00:00 UTC").unwrap();
    assert!(newest < oldest, "newest first");
    assert!(
        row_with(&page, "denied").contains("refused: user_declined"),
        "{page}"
    );
    // The PIN counter as the newest export stated it, with when the server stored it.
    let pin = fact(&page, "PIN tries left");
    assert!(pin.contains("<strong>2 of 3</strong> as of <time"), "{pin}");
    assert!(pin.contains("10 min ago</time>"), "{pin}");
    assert!(pin.contains("0 consents confirmed with the PIN"), "{pin}");
    let admin = row_with(&page, "add the backup server");
    assert!(
        admin.contains("st-applied") && admin.contains("<code>9000</code>"),
        "{admin}"
    );
    assert!(admin.contains("2 h ago</time>"), "{admin}");
    assert!(page.contains(&format!("href=\"/ui/devices/{device}\"")));
    let r = ui.get(&format!("/ui/cards/{ICCID}/evidence"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition"),
        Some(format!("attachment; filename=\"card-{ICCID}-evidence.json\"").as_str())
    );
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["format"], "simfota-card-evidence-1");
    assert_eq!(doc["entries"].as_array().unwrap().len(), 3);
    assert_eq!(doc["entries"][1]["deny_code"], 0x10);
    assert_eq!(doc["entries"][2]["trusted_time"], CARD_TIME + 120);
    assert_eq!(doc["exports"].as_array().unwrap().len(), 1);
    assert_eq!(doc["admin_commands"][0]["state"], "applied");
    assert_eq!(ui.get("/ui/cards/8949440000009999999/evidence").status, 404);
    // A blocked PIN in the warning colour; a card no export stated it for: not reported yet.
    exec(
        &s,
        "UPDATE cards SET pin_tries_left = 0 WHERE iccid = $1",
        vec![B::T(ICCID)],
    )
    .await;
    let page = ui.page(&format!("/ui/cards/{ICCID}"));
    let pin = fact(&page, "PIN tries left");
    assert!(
        pin.contains("<strong class=\"bad\">blocked</strong> as of"),
        "{pin}"
    );
    exec(
        &s,
        "UPDATE cards SET pin_tries_left = NULL, pin_max_tries = NULL, pin_reported_ms = NULL \
         WHERE iccid = $1",
        vec![B::T(ICCID)],
    )
    .await;
    let page = ui.page(&format!("/ui/cards/{ICCID}"));
    let pin = fact(&page, "PIN tries left");
    assert!(
        pin.contains("not reported yet") && !pin.contains("<time"),
        "{pin}"
    );
    // Unknown pages and things answer 404 as a page.
    assert_eq!(ui.get(&format!("/ui/devices/{}", imei(999))).status, 404);
    assert_eq!(ui.get("/ui/campaigns/999").status, 404);
    s.stop().await;
}
both!(
    device_and_card_pages_show_history_dates_and_downloads,
    super::device_and_card
);

async fn screenshots(env: Env) {
    let s = env.start().await;
    register(&s, 300, 120).await;
    let pkg = upload(&env, &s).await;
    let id = campaign(
        &s,
        serde_json::json!({"name": "Spring rollout", "package_id": pkg, "waves": [10, 50, 100],
            "success_threshold": 80, "error_threshold": 50}),
    )
    .await;
    // The first wave all answered; the second partly: some jobs delivered with no result
    // yet, some still waiting for their device.
    for round in 0..2u8 {
        for (i, (job, _)) in pending_jobs(&s, id).await.into_iter().enumerate() {
            let uid = [round, i as u8, 1, 2];
            let code = match i % 9 {
                0 => 405,
                1 if round == 1 => 410,
                7 if round == 1 => continue,
                8 if round == 1 => {
                    deliver(&s, job, &uid).await;
                    continue;
                }
                _ => 200,
            };
            result(&s, job, &uid, code, "verified").await;
        }
    }
    spread_over_two_hours(&s, id).await;
    card_with_log(&s, &imei(301)).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let pages = [
        ("overview", "/ui".to_owned(), "Fleet overview"),
        ("devices", "/ui/devices".to_owned(), "120 registered"),
        ("campaigns", "/ui/campaigns".to_owned(), "Spring rollout"),
        (
            "campaign",
            format!("/ui/campaigns/{id}"),
            "Failures by reason",
        ),
        (
            "device",
            format!("/ui/devices/{}", imei(301)),
            "Jobs and campaigns",
        ),
        (
            "card",
            format!("/ui/cards/{ICCID}"),
            "Issuer admin commands",
        ),
        ("packages", "/ui/packages".to_owned(), "fw 2.0"),
        ("cards", "/ui/cards".to_owned(), ICCID),
    ];
    for (name, path, expect) in pages {
        // Each run is a fresh browser: it signs in through a link of its own.
        let Some(out) = chromium(&["--dump-dom"], &sign_in_link(&s, &s.token, &path).await) else {
            s.stop().await;
            return;
        };
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(dom.contains(expect), "{name}: {dom}");
        let shot = shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&shot);
        let arg = format!("--screenshot={}", shot.display());
        chromium(
            &[arg.as_str(), "--window-size=1400,1100"],
            &sign_in_link(&s, &s.token, &path).await,
        );
        assert!(shot.exists(), "{name}: screenshot written");
    }
    // Signed out: the sign-in form, nothing of the fleet.
    let out = chromium(&["--dump-dom"], &format!("{}/ui/devices", s.url)).unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("Sign in") && !dom.contains(&imei(301)),
        "{dom}"
    );
    s.stop().await;
}

/// Moves the recorded times of campaign `id` (two waves released) so that its steps spread
/// over the last two hours, as a rollout's do: the first wave's deliveries from +3 min, each
/// answered 12 min later; the second wave released at +50 min, its deliveries from +52 min,
/// answered 8 min later.
async fn spread_over_two_hours(s: &Server, id: i64) {
    let t0 = now_ms() - 2 * 3_600_000;
    let min = |m: i64| t0 + m * 60_000;
    exec(
        s,
        "UPDATE campaigns SET created_ms = $1 WHERE id = $2",
        vec![B::I(t0), B::I(id)],
    )
    .await;
    let jobs = s
        .json(&format!("/api/v1/jobs?campaign={id}&limit=1000"))
        .await;
    let mut in_wave = [0i64; 2];
    for j in jobs.as_array().unwrap() {
        let wave = j["wave"].as_i64().unwrap();
        let Some(i) = usize::try_from(wave).ok().and_then(|w| in_wave.get_mut(w)) else {
            continue;
        };
        let (released, delivered) = if wave == 0 {
            (None, min(3) + *i * 180_000)
        } else {
            (Some(min(50)), min(52) + *i * 75_000)
        };
        *i += 1;
        let (delivered, updated) = match j["state"].as_str().unwrap() {
            "pending" => (None, released.unwrap_or(t0)),
            "delivered" => (Some(delivered), delivered),
            _ if wave == 0 => (Some(delivered), delivered + 12 * 60_000),
            _ => (Some(delivered), delivered + 8 * 60_000),
        };
        exec(
            s,
            "UPDATE jobs SET created_ms = $1, released_ms = $2, delivered_ms = $3, \
             updated_ms = $4 WHERE id = $5",
            vec![
                B::I(t0),
                released.map_or(B::NoI, B::I),
                delivered.map_or(B::NoI, B::I),
                B::I(updated),
                B::I(j["id"].as_i64().unwrap()),
            ],
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_in_chromium_with_screenshots() {
    common::on_sqlite(screenshots).await;
}
