//! The operator API: tokens, registry, campaigns (waves, thresholds, pause/resume/cancel),
//! OpenAPI document, metrics, first run and restart, database outage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::{self, StatusCode};
use common::{Env, Server, imei};
use serde_json::{Value, json};
use simfota_server::campaign;

async fn register(s: &Server, n: u32, model: &str, fw: &str) -> String {
    let imei = imei(n);
    let r = s
        .post("/api/v1/devices")
        .json(&json!({"imei": imei, "username": format!("u{n}"), "password": "p", "server_password": "sp",
                      "model": model, "fw_version": fw}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    imei
}

async fn package(s: &Server, env: &Env) -> i64 {
    let img = vec![5u8; 1000];
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 1,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: None,
            version: Some("2.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        &env.originator,
    )
    .unwrap();
    let form = http::Form::new()
        .part("envelope", http::Part::bytes(envelope))
        .part("payload", http::Part::bytes(img));
    let p: Value = s
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    p["id"].as_i64().unwrap()
}

/// The campaign's progress as served (counters kept with each job change) equals a recount
/// of its jobs.
async fn assert_counted(s: &Server, campaign_id: i64) {
    let served = s.json(&format!("/api/v1/campaigns/{campaign_id}")).await;
    let c = &served["progress"];
    let mut conn = s.running.state().db.conn().await.unwrap();
    let wave = served["current_wave"].as_i64().unwrap();
    let r = campaign::recount(&mut conn, campaign_id, wave)
        .await
        .unwrap();
    assert_eq!(
        (
            c["total"].as_i64(),
            c["released"].as_i64(),
            c["delivered"].as_i64()
        ),
        (Some(r.total), Some(r.released), Some(r.delivered)),
        "{served}"
    );
    assert_eq!(
        (
            c["succeeded"].as_i64(),
            c["failed"].as_i64(),
            c["cancelled"].as_i64()
        ),
        (Some(r.succeeded), Some(r.failed), Some(r.cancelled)),
        "{served}"
    );
    // The audit endpoint serves the same two sides, and the jobs not yet ended by state.
    let audit = s
        .json(&format!("/api/v1/campaigns/{campaign_id}/audit"))
        .await;
    assert_eq!(audit["counters"], served["progress"], "{audit}");
    assert_eq!(
        audit["recount"],
        serde_json::to_value(r).unwrap(),
        "{audit}"
    );
    assert_eq!(audit["consistent"], true, "{audit}");
    let js = jobs(s, campaign_id).await;
    let in_state = |st: &str| js.iter().filter(|j| j["state"] == st).count() as i64;
    assert_eq!(
        audit["pending"].as_i64(),
        Some(in_state("pending")),
        "{audit}"
    );
    assert_eq!(
        audit["waiting"].as_i64(),
        Some(in_state("waiting")),
        "{audit}"
    );
}

/// Plays the device side of a job: delivered, then the given FUMO result.
async fn finish(s: &Server, job: &Value, code: u16) {
    let db = &s.running.state().db;
    let id = job["id"].as_i64().unwrap();
    let mut conn = db.conn().await.unwrap();
    campaign::mark_delivered(&mut conn, id, &id.to_be_bytes(), b"token")
        .await
        .unwrap();
    campaign::record_result(&mut conn, id, code, None, "absent", None)
        .await
        .unwrap();
    assert_counted(s, job["campaign_id"].as_i64().unwrap()).await;
}

async fn jobs(s: &Server, c: i64) -> Vec<Value> {
    s.json(&format!("/api/v1/jobs?campaign={c}"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

async fn auth_and_registry(env: Env) {
    let s = env.start().await;
    // No token, a wrong token: 401 with a Bearer challenge.
    let r = http::get(format!("{}/api/v1/devices", s.url))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = http::Client::new()
        .get(format!("{}/api/v1/devices", s.url))
        .bearer_auth("sft_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let a = register(&s, 1, "EX-1", "1.0").await;
    // Duplicate IMEI, bad IMEI (Luhn), unknown field.
    let r = s
        .post("/api/v1/devices")
        .json(&json!({"imei": a, "username": "other", "password": "p", "server_password": "sp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = s
        .post("/api/v1/devices")
        .json(&json!({"imei": "350000000000001", "username": "x", "password": "p", "server_password": "sp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .post("/api/v1/groups")
        .json(&json!({"name": "lab", "color": 1}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());

    let r = s
        .post("/api/v1/groups")
        .json(&json!({"name": "lab"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = s
        .put(&format!("/api/v1/groups/lab/devices/{a}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let d = s.json(&format!("/api/v1/devices/{a}")).await;
    assert_eq!(d["device"]["groups"], json!(["lab"]));
    // Credentials never leave the server.
    let text = s
        .get("/api/v1/devices")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("\"password\"") && !text.contains("sp\""),
        "{text}"
    );

    // A second token works; the first run wrote the first one.
    let t2 = simfota_server::new_api_token(
        &env.config("data"),
        "ci",
        simfota_server::auth::Role::Operator,
    )
    .await
    .unwrap();
    let r = http::Client::new()
        .get(format!("{}/api/v1/groups", s.url))
        .bearer_auth(&t2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The OpenAPI document lists exactly the routes that answer (the router and the document
    // are built from one list; the unit tests in api.rs check the document's structure).
    let doc: Value = http::get(format!("{}/api/v1/openapi.json", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc,
        serde_json::to_value(simfota_server::api::document()).unwrap()
    );
    let mut n = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{imei}", &a)
            .replace("{name}", "lab")
            .replace("{iccid}", "1")
            .replace("{id}", "1");
        for method in ["get", "put", "post", "delete", "patch"] {
            // An empty body of known length: the server answers without reading a body, and a
            // chunked one left unread would close the pooled connection under the next request.
            let req = s
                .http
                .request(
                    method.to_uppercase().parse().unwrap(),
                    format!("{}/api/v1{concrete}", s.url),
                )
                .body(Vec::new());
            let r = req.send().await.unwrap();
            // Unauthenticated: every listed operation exists and asks for a token, unless the
            // document waives it (`security: [{}]`, the document itself); no other method of
            // the path is served.
            let expected = match item.get(method) {
                None => StatusCode::METHOD_NOT_ALLOWED,
                Some(op) if op["security"] == json!([{}]) => StatusCode::OK,
                Some(_) => StatusCode::UNAUTHORIZED,
            };
            assert_eq!(r.status(), expected, "{method} {path}");
            n += usize::from(item.get(method).is_some());
        }
    }
    assert!(n > 20, "{n} operations");
    s.stop().await;
}
both!(tokens_registry_and_openapi, super::auth_and_registry);

async fn waves_and_thresholds(env: Env) {
    let s = env.start().await;
    for n in 1..=10 {
        register(&s, n, "EX-1", "1.0").await;
    }
    register(&s, 11, "EX-2", "1.0").await;
    register(&s, 12, "EX-1", "0.9").await;
    let pkg = package(&s, &env).await;

    // Bad specs.
    let r = s
        .post("/api/v1/campaigns")
        .json(&json!({"name": "x", "package_id": pkg, "waves": [50, 40, 100]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .post("/api/v1/campaigns")
        .json(&json!({"name": "x", "package_id": 999}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let c: Value = s
        .post("/api/v1/campaigns")
        .json(
            &json!({"name": "2.0", "package_id": pkg, "target_model": "EX-1", "target_fw": "1.0",
                      "waves": [20, 100], "success_threshold": 100, "error_threshold": 50}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = c["id"].as_i64().unwrap();
    assert_eq!(c["progress"]["total"], 10, "model and firmware filters");
    assert_eq!(c["progress"]["released"], 2);
    let js = jobs(&s, id).await;
    let pending: Vec<_> = js.iter().filter(|j| j["state"] == "pending").collect();
    assert_eq!(pending.len(), 2);

    // Pause: nothing is delivered to a paused campaign's devices.
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let dev = pending[0]["device_id"].as_i64().unwrap();
    assert!(
        campaign::next_job_for_device(&mut s.running.state().db.conn().await.unwrap(), dev)
            .await
            .unwrap()
            .is_none()
    );
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/pause"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    s.post(&format!("/api/v1/campaigns/{id}/resume"))
        .send()
        .await
        .unwrap();
    assert!(
        campaign::next_job_for_device(&mut s.running.state().db.conn().await.unwrap(), dev)
            .await
            .unwrap()
            .is_some()
    );

    // First wave all succeeds -> second wave released.
    finish(&s, pending[0], 200).await;
    let c = s.json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(c["current_wave"], 0, "one of two is not 100 %");
    finish(&s, pending[1], 200).await;
    let c = s.json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(c["current_wave"], 1);
    assert_eq!(c["progress"]["released"], 10);

    // Failures in wave 2 reach the error threshold (50 % of released) -> halted.
    let js = jobs(&s, id).await;
    let wave2: Vec<_> = js
        .iter()
        .filter(|j| j["state"] == "pending")
        .cloned()
        .collect();
    assert_eq!(wave2.len(), 8);
    for j in &wave2[..5] {
        finish(&s, j, 402).await;
    }
    let c = s.json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(c["state"], "halted", "{c}");
    assert!(
        c["halt_reason"].as_str().unwrap().contains("5 of 10"),
        "{c}"
    );
    // A halted campaign delivers nothing.
    let dev = wave2[6]["device_id"].as_i64().unwrap();
    assert!(
        campaign::next_job_for_device(&mut s.running.state().db.conn().await.unwrap(), dev)
            .await
            .unwrap()
            .is_none()
    );
    // A result is recorded once.
    let db = &s.running.state().db;
    let again = campaign::record_result(
        &mut db.conn().await.unwrap(),
        wave2[0]["id"].as_i64().unwrap(),
        200,
        None,
        "absent",
        None,
    )
    .await;
    assert!(again.is_err());

    // Cancel: pending jobs are cancelled.
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let js = jobs(&s, id).await;
    assert_eq!(js.iter().filter(|j| j["state"] == "cancelled").count(), 3);
    assert!(js.iter().all(|j| j["state"] != "pending"));
    assert_counted(&s, id).await;
    // A counter that drifted from the jobs is what the audit is for.
    sqlx::query("UPDATE campaigns SET jobs_succeeded = jobs_succeeded + 1 WHERE id = $1")
        .bind(id)
        .execute(s.running.state().db.pool())
        .await
        .unwrap();
    let audit = s.json(&format!("/api/v1/campaigns/{id}/audit")).await;
    assert_eq!(audit["consistent"], false, "{audit}");
    assert_eq!(
        audit["counters"]["succeeded"].as_i64(),
        audit["recount"]["succeeded"].as_i64().map(|n| n + 1),
        "{audit}"
    );
    assert_eq!(
        s.get("/api/v1/campaigns/999999/audit")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    let m = http::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("simfota_jobs{state=\"failed\"} 5"), "{m}");
    assert!(m.contains("simfota_jobs{state=\"succeeded\"} 2"), "{m}");
    s.stop().await;
}
both!(
    campaign_waves_thresholds_and_actions,
    super::waves_and_thresholds
);

/// A delivered update whose device never reports fails after the delivery timeout, with the
/// reason recorded, the campaign's counters moved in the same transaction and the campaign
/// re-evaluated (here: its last job decided, it completes); a recent delivery waits.
async fn job(s: &Server, j: &Value) -> Value {
    s.json(&format!("/api/v1/jobs/{}", j["id"])).await
}

async fn delivery_timeout(env: Env) {
    let s = env.start().await;
    for n in 1..=3 {
        register(&s, n, "EX-T", "1.0").await;
    }
    let pkg = package(&s, &env).await;
    let c: Value = s
        .post("/api/v1/campaigns")
        .json(
            &json!({"name": "t", "package_id": pkg, "target_model": "EX-T",
                      "error_threshold": 100}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = c["id"].as_i64().unwrap();
    let js = jobs(&s, id).await;
    let db = s.running.state().db.clone();
    let mut conn = db.conn().await.unwrap();
    for j in &js {
        let jid = j["id"].as_i64().unwrap();
        campaign::mark_delivered(&mut conn, jid, &jid.to_be_bytes(), b"token")
            .await
            .unwrap();
    }
    let (old, recent, done) = (&js[0], &js[1], &js[2]);
    campaign::record_result(
        &mut conn,
        done["id"].as_i64().unwrap(),
        200,
        None,
        "absent",
        None,
    )
    .await
    .unwrap();
    // Delivered two hours ago.
    sqlx::query("UPDATE jobs SET updated_ms = updated_ms - 7200000 WHERE id = $1")
        .bind(old["id"].as_i64().unwrap())
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let hour = std::time::Duration::from_secs(3600);
    campaign::time_out_deliveries(&db, hour).await.unwrap();
    let timed_out = job(&s, old).await;
    assert_eq!(timed_out["state"], "failed", "{timed_out}");
    let detail = timed_out["detail"].as_str().unwrap();
    assert!(
        detail.contains("no result within 1 hour") && detail.contains("timed out"),
        "{detail}"
    );
    assert_eq!(job(&s, recent).await["state"], "delivered");
    assert_counted(&s, id).await;
    // Again: nothing more to do.
    campaign::time_out_deliveries(&db, hour).await.unwrap();
    assert_eq!(job(&s, recent).await["state"], "delivered");
    assert_counted(&s, id).await;
    // The last delivery times out too: every job decided, the campaign completes.
    campaign::time_out_deliveries(&db, std::time::Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(job(&s, recent).await["state"], "failed");
    let c = s.json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(c["state"], "completed", "{c}");
    assert_counted(&s, id).await;
    s.stop().await;
}
both!(
    a_delivery_without_a_result_times_out,
    super::delivery_timeout
);

async fn restart_keeps_data(env: Env) {
    let s = env.start().await;
    let token = s.token.clone();
    register(&s, 1, "EX-1", "1.0").await;
    s.stop().await;
    // Second start: migrations are already applied, the token and the device are still there,
    // no second initial token is written.
    let s = env.start().await;
    assert_eq!(s.token, token);
    assert_eq!(s.json("/api/v1/devices").await.as_array().unwrap().len(), 1);
    let health = http::get(format!("{}/healthz", s.url)).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    s.stop().await;
}
both!(restart_keeps_data_and_migrations, super::restart_keeps_data);

/// A TCP relay to PostgreSQL that the test can cut and restore: while cut, nothing listens on
/// its port (connections are refused, as when the database host is down) and the open
/// connections are gone.
struct Relay {
    addr: std::net::SocketAddr,
    target: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Self {
            addr,
            target,
            tasks: Default::default(),
        };
        r.serve(listener);
        r
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (target, tasks) = (self.target.clone(), self.tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                tasks.lock().unwrap().push(h);
            }
        });
        self.tasks.lock().unwrap().push(accept);
    }

    fn cut(&self) {
        for h in self.tasks.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    async fn restore(&self) {
        // The aborted accept task dropped the listener; bind the same port again.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

/// What a client is told while the database is unreachable, whatever the driver said.
const OUTAGE_BODY: &str = r#"{"error":"the database is unavailable; retry later"}"#;

async fn outage(env: Env) {
    let mut cfg = env.config("data");
    cfg.db_acquire_timeout = std::time::Duration::from_millis(1500);
    match env.engine {
        common::Engine::Postgres => {
            let url = env.database.clone().unwrap();
            let host = url
                .split('@')
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            let relay = Relay::start(host.clone()).await;
            cfg.database = Some(url.replace(&host, &relay.addr.to_string()));
            let s = Server::start(cfg).await;
            assert_eq!(
                s.get("/api/v1/devices").send().await.unwrap().status(),
                StatusCode::OK
            );
            relay.cut();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let r = s.get("/api/v1/devices").send().await.unwrap();
            let status = r.status();
            let retry = r.headers().get("retry-after").cloned();
            let body = r.text().await.unwrap();
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(retry.unwrap(), "2");
            // The database driver's message (addresses, pool state) stays in the log.
            assert_eq!(body, OUTAGE_BODY);
            let h = http::get(format!("{}/healthz", s.url)).await.unwrap();
            assert_eq!(
                h.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                h.text().await.unwrap()
            );
            relay.restore().await;
            // Recovery without a restart.
            let r = s.get("/api/v1/devices").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            s.stop().await;
        }
        common::Engine::Sqlite => {
            // Another process holds the write lock longer than the busy timeout.
            let s = Server::start(cfg).await;
            let file = env.path("data").join("simfota.db");
            let mut other = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
                "sqlite://{}",
                file.display()
            ))
            .await
            .unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut other)
                .await
                .unwrap();
            let r = s
                .post("/api/v1/groups")
                .json(&json!({"name": "g"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(r.text().await.unwrap(), OUTAGE_BODY);
            sqlx::query("COMMIT").execute(&mut other).await.unwrap();
            let r = s
                .post("/api/v1/groups")
                .json(&json!({"name": "g"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            s.stop().await;
        }
    }
}
both!(database_outage_answers_503_then_recovers, super::outage);

async fn package0(env: Env) {
    let s = env.start().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let imei = imei(42);
    let r = s
        .post("/api/v1/devices")
        .json(
            &json!({"imei": imei, "username": "n", "password": "p", "server_password": "srv-pw",
                      "model": "EX-9", "notify_addr": sock.local_addr().unwrap().to_string()}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r: Value = s
        .post(&format!("/api/v1/devices/{imei}/notify"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let got = simfota_syncml::notification::UnverifiedNotification::parse(&buf[..n])
        .unwrap()
        .verify(
            "simfota",
            "srv-pw",
            &simfota_syncml::auth::Nonce(Vec::new()),
        )
        .unwrap();
    assert_eq!(i64::from(got.session_id), r["session_id"].as_i64().unwrap());
    // A wrong password does not verify (the digest covers the server's credentials).
    assert!(
        simfota_syncml::notification::UnverifiedNotification::parse(&buf[..n])
            .unwrap()
            .verify("simfota", "other", &simfota_syncml::auth::Nonce(Vec::new()))
            .is_err()
    );
    // Creating a campaign notifies the targeted devices.
    let pkg = package(&s, &env).await;
    let r = s
        .post("/api/v1/campaigns")
        .json(&json!({"name": "n", "package_id": pkg, "target_model": "EX-9"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(simfota_syncml::notification::UnverifiedNotification::parse(&buf[..n]).is_ok());
    // No address: 409.
    let other = register(&s, 43, "EX-1", "1.0").await;
    let r = s
        .post(&format!("/api/v1/devices/{other}/notify"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    s.stop().await;
}
both!(package0_over_udp, super::package0);

async fn later_wave_package0(env: Env) {
    let s = env.start().await;
    let mut socks = Vec::new();
    for n in [60u32, 61] {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let r = s
            .post("/api/v1/devices")
            .json(
                &json!({"imei": imei(n), "username": format!("w{n}"), "password": "p",
                          "server_password": "srv-pw", "model": "EX-W",
                          "notify_addr": sock.local_addr().unwrap().to_string()}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        socks.push(sock);
    }
    let pkg = package(&s, &env).await;
    let c: Value = s
        .post("/api/v1/campaigns")
        .json(
            &json!({"name": "w", "package_id": pkg, "target_model": "EX-W",
                      "waves": [50, 100], "success_threshold": 100, "error_threshold": 100}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cid = c["id"].as_i64().unwrap();
    let js = jobs(&s, cid).await;
    let first = js.iter().find(|j| j["state"] == "pending").unwrap().clone();
    let later = js.iter().find(|j| j["state"] == "waiting").unwrap().clone();
    let sock_of = |j: &Value| {
        let i = if j["imei"] == imei(60).as_str() { 0 } else { 1 };
        &socks[i]
    };
    let mut buf = [0u8; 512];
    let wait = std::time::Duration::from_secs(5);
    // Creation woke the first wave only.
    tokio::time::timeout(wait, sock_of(&first).recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let quiet = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(quiet, sock_of(&later).recv_from(&mut buf))
            .await
            .is_err()
    );
    // The first device succeeds: the engine releases the second wave and its device is woken.
    let state = s.running.state();
    let id = first["id"].as_i64().unwrap();
    campaign::mark_delivered(
        &mut state.db.conn().await.unwrap(),
        id,
        &id.to_be_bytes(),
        b"token",
    )
    .await
    .unwrap();
    simfota_server::notify::record_result(state, id, 200, None, "absent", None)
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(wait, sock_of(&later).recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    simfota_syncml::notification::UnverifiedNotification::parse(&buf[..n])
        .unwrap()
        .verify(
            "simfota",
            "srv-pw",
            &simfota_syncml::auth::Nonce(Vec::new()),
        )
        .unwrap();
    assert_eq!(
        jobs(&s, cid)
            .await
            .iter()
            .filter(|j| j["state"] == "pending")
            .count(),
        1
    );
    s.stop().await;
}
both!(later_wave_is_notified, super::later_wave_package0);

/// A test CA and a server certificate for 127.0.0.1 it signed, made with the `openssl`
/// command: `(ca, cert, key)`, or None when openssl is missing.
fn test_pki(
    dir: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let p = |n: &str| dir.join(n);
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509"][..],
            &ec[..],
            &["-days", "1", "-subj", "/CN=simfota test CA", "-keyout"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .chain([
            p("ca.key").display().to_string(),
            "-out".into(),
            p("ca.crt").display().to_string(),
        ])
        .collect(),
        [
            &["req"][..],
            &ec[..],
            &["-subj", "/CN=127.0.0.1", "-keyout"],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .chain([
            p("tls.key").display().to_string(),
            "-out".into(),
            p("tls.csr").display().to_string(),
        ])
        .collect(),
        ["x509", "-req", "-days", "1", "-CAcreateserial", "-in"]
            .iter()
            .map(|s| s.to_string())
            .chain([
                p("tls.csr").display().to_string(),
                "-CA".into(),
                p("ca.crt").display().to_string(),
                "-CAkey".into(),
                p("ca.key").display().to_string(),
                "-extfile".into(),
                p("ext.cnf").display().to_string(),
                "-out".into(),
                p("tls.crt").display().to_string(),
            ])
            .collect(),
    ];
    for args in steps {
        let ok = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
                panic!(
                    "openssl is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead): `openssl {}` failed",
                    args.join(" ")
                );
            }
            eprintln!("skipped: openssl missing or failing");
            return None;
        }
    }
    Some((p("ca.crt"), p("tls.crt"), p("tls.key")))
}

async fn tls(env: Env) {
    let Some((ca, cert, key)) = test_pki(env.dir.path()) else {
        return;
    };
    let mut cfg = env.config("data");
    cfg.tls = Some(simfota_server::config::TlsFiles { cert, key });
    let s = Server::start(cfg).await;
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let https = http::Client::trusting(&std::fs::read(&ca).unwrap());
    let r = https
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = https
        .get(format!("{}/api/v1/devices", s.url))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A client that does not trust the certificate is refused at the handshake.
    assert!(
        http::Client::new()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .is_err()
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = s.url.replace("https://", "http://");
    assert!(http::get(format!("{plain}/healthz")).await.is_err());
    s.stop().await;
}
both!(tls_listener_serves_https, super::tls);

/// A device's jobs are selected by device: more than 1,000 newer jobs of other devices (the
/// fleet-wide job listing's bound) do not hide this device's older job.
async fn device_jobs_survive_a_busy_fleet(env: Env) {
    let s = env.start().await;
    let a = register(&s, 1, "EX-1", "1.0").await;
    let pkg = package(&s, &env).await;
    let c: Value = s
        .post("/api/v1/campaigns")
        .json(&json!({"name": "2.0", "package_id": pkg, "target_model": "EX-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cid = c["id"].as_i64().unwrap();
    assert_eq!(jobs(&s, cid).await.len(), 1);

    // 1,001 other devices, each with a newer job in the same campaign.
    let db = s.running.state().db.pool();
    let others = 1001;
    let devices: Vec<String> = (0..others)
        .map(|n| {
            format!(
                "('{}', 'bulk{n}', 'p', 'sp', 'md5', 'test', 0)",
                imei(1000 + n)
            )
        })
        .collect();
    sqlx::query(&format!(
        "INSERT INTO devices (imei, dm_username, dm_password, server_password, auth_scheme, \
         enrolled_by, created_ms) VALUES {}",
        devices.join(", ")
    ))
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (campaign_id, device_id, wave, state, correlator, created_ms, updated_ms) \
         SELECT $1, id, 0, 'pending', 'bulk-' || dm_username, 0, 0 FROM devices \
         WHERE dm_username LIKE 'bulk%' ORDER BY id",
    )
    .bind(cid)
    .execute(db)
    .await
    .unwrap();
    let all = s.json("/api/v1/jobs?sort=-id&limit=1000").await;
    assert_eq!(
        all.as_array().unwrap().len(),
        1000,
        "the fleet listing is bounded"
    );
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|j| j["imei"] != a.as_str()),
        "the device's job is older than the newest 1,000"
    );

    let d = s.json(&format!("/api/v1/devices/{a}")).await;
    let js = d["jobs"].as_array().unwrap();
    assert_eq!(js.len(), 1, "{d}");
    assert_eq!(js[0]["campaign_id"], cid);
    assert_eq!(js[0]["device_id"], d["device"]["id"]);
}
both!(
    device_jobs_survive_a_busy_fleet,
    super::device_jobs_survive_a_busy_fleet
);

/// A fleet's provisioning: many devices in one request, all or none.
async fn bulk_registration(env: Env) {
    let s = env.start().await;
    let device = |n: u32| {
        json!({"imei": imei(n), "username": format!("bulk{n}"), "password": "p",
               "server_password": "sp", "model": "EX-9", "groups": ["fleet"]})
    };
    let post = |devices: Vec<Value>| {
        s.post("/api/v1/devices/bulk")
            .json(&json!({ "devices": devices }))
            .send()
    };
    // Every page of the device list.
    let count = || async {
        let (mut n, mut url) = (0, "/api/v1/devices?limit=1000".to_owned());
        loop {
            let r = s.get(&url).send().await.unwrap();
            let next = r
                .headers()
                .get("x-next-cursor")
                .map(|c| c.to_str().unwrap().to_owned());
            n += r.json::<Value>().await.unwrap().as_array().unwrap().len();
            match next {
                Some(c) => url = format!("/api/v1/devices?limit=1000&cursor={c}"),
                None => return n,
            }
        }
    };
    // More rows than one INSERT statement carries.
    let r = post((0..1200).map(device).collect()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"created": 1200}));
    assert_eq!(count().await, 1200);
    let d = s.json(&format!("/api/v1/devices/{}", imei(1199))).await;
    assert_eq!(d["device"]["groups"], json!(["fleet"]));
    assert_eq!(d["device"]["model"], "EX-9");

    // One existing IMEI in the last statement's rows refuses the batch: the rows of the
    // statements before it are not kept either.
    let mut batch: Vec<Value> = (5000..5600).map(device).collect();
    batch.push(device(3));
    let r = post(batch).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(count().await, 1200, "nothing of a refused batch is kept");
    // A repeat within the batch, the same.
    let r = post(vec![device(7000), device(7000)]).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // An invalid entry is named; nothing is registered.
    let mut bad = device(7001);
    bad["imei"] = json!("350000000000001");
    let r = post(vec![device(7002), bad]).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("devices[1]"));
    // Over the bound.
    let r = post((0..10_001).map(device).collect()).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(count().await, 1200);
    s.stop().await;
}
both!(bulk_registration_is_all_or_none, super::bulk_registration);

/// A provisioning file: the same bulk registration from CSV, the provisioned nonce stored as
/// the device's, a bad line named by its number with nothing kept, other media types 415.
async fn bulk_registration_from_csv(env: Env) {
    let s = env.start().await;
    let post = |content_type: &'static str, body: String| {
        s.post("/api/v1/devices/bulk")
            .header("content-type", content_type)
            .body(body.into_bytes())
            .send()
    };
    let count = || async { s.json("/api/v1/devices").await.as_array().unwrap().len() };
    let file = format!(
        "imei,username,password,server_password,auth,model,groups,nonce\r\n\
         {},csv-1,\"p,1\",sp,hmac,EX-9,\"north;south\",AAECAwQFBgc=\r\n\
         {},csv-2,p2,sp,,,,\r\n",
        imei(1),
        imei(2)
    );
    let r = post("text/csv; charset=utf-8", file).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"created": 2}));
    let d = s.json(&format!("/api/v1/devices/{}", imei(1))).await;
    assert_eq!(d["device"]["groups"], json!(["north", "south"]));
    assert_eq!(d["device"]["auth"], "hmac");
    assert_eq!(d["device"]["model"], "EX-9");
    let nonce = |imei: String| {
        let pool = s.running.state().db.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<Vec<u8>>>(
                "SELECT device_nonce FROM devices WHERE imei = $1",
            )
            .bind(imei)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(nonce(imei(1)).await, Some((0u8..8).collect::<Vec<u8>>()));
    assert_eq!(
        nonce(imei(2)).await,
        None,
        "no nonce: the first message is challenged"
    );
    let d = s.json(&format!("/api/v1/devices/{}", imei(2))).await;
    assert_eq!(d["device"]["auth"], "md5");

    // Line 3 is bad: nothing of the file is kept, and the line is named.
    let file = format!(
        "imei,username,password,server_password\n{},csv-3,p,sp\n{},csv-4,p,sp,extra\n",
        imei(3),
        imei(4)
    );
    let r = post("text/csv", file).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let error = r.json::<Value>().await.unwrap()["error"].clone();
    assert_eq!(
        error, "CSV line 3: 5 fields where the header has 4",
        "{error}"
    );
    assert_eq!(count().await, 2);
    // An IMEI registered already: 409, none kept.
    let file = format!(
        "imei,username,password,server_password\n{},csv-5,p,sp\n{},csv-6,p,sp\n",
        imei(5),
        imei(1)
    );
    assert_eq!(
        post("text/csv", file).await.unwrap().status(),
        StatusCode::CONFLICT
    );
    assert_eq!(count().await, 2);
    // Neither JSON nor CSV.
    let r = post("application/xml", "<devices/>".into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("text/csv")
    );
    s.stop().await;
}
both!(
    bulk_registration_from_a_csv_file,
    super::bulk_registration_from_csv
);
