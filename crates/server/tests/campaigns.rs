//! Safe campaigns: devices already at or above the package are skipped, failures are
//! counted by reason in words and retried, a wave over its failure limit pauses the
//! campaign, deadlines end what was not delivered, and offers wait for the maintenance
//! window. Each on SQLite and PostgreSQL, against the real server and database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::{self, StatusCode};
use common::{Env, Server, imei};
use serde_json::{Value, json};
use simfota_server::campaign::{self, Offer};

/// Registers device `n` on firmware `fw` (none when empty).
async fn register(s: &Server, n: u32, fw: &str) -> String {
    let imei = imei(n);
    let mut d = json!({"imei": imei, "username": format!("u{n}"), "password": "p",
                       "server_password": "sp", "model": "EX-1"});
    if !fw.is_empty() {
        d["fw_version"] = json!(fw);
    }
    let r = s.post("/api/v1/devices").json(&d).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    imei
}

/// Uploads a package of `version` and anti-rollback `sequence`.
async fn package(s: &Server, env: &Env, version: &str, sequence: u64) -> i64 {
    let img = vec![sequence as u8; 1000];
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: None,
            version: Some(version),
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
    let r = s
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

async fn create(s: &Server, spec: Value) -> Value {
    let r = s
        .post("/api/v1/campaigns")
        .json(&spec)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn jobs(s: &Server, c: i64) -> Vec<Value> {
    s.json(&format!("/api/v1/jobs?campaign={c}&limit=1000"))
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// The device side of a job: delivered, then FUMO result `code`.
async fn finish(s: &Server, job: &Value, code: u16) {
    let id = job["id"].as_i64().unwrap();
    let mut conn = s.running.state().db.conn().await.unwrap();
    campaign::mark_delivered(&mut conn, id, &id.to_be_bytes(), b"token")
        .await
        .unwrap();
    campaign::record_result(&mut conn, id, code, None, "absent", None)
        .await
        .unwrap();
}

/// The campaign's counters, wave counts and failure breakdown agree with its jobs.
async fn assert_consistent(s: &Server, c: i64) -> Value {
    let audit = s.json(&format!("/api/v1/campaigns/{c}/audit")).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    let served = s.json(&format!("/api/v1/campaigns/{c}")).await;
    let js = jobs(s, c).await;
    let count = |wave: Option<i64>, state: &str| {
        js.iter()
            .filter(|j| wave.is_none_or(|w| j["wave"] == w) && j["state"] == state)
            .count() as i64
    };
    for w in served["wave_progress"].as_array().unwrap() {
        let n = w["wave"].as_i64();
        for st in [
            "delivered",
            "succeeded",
            "failed",
            "skipped",
            "cancelled",
            "waiting",
        ] {
            assert_eq!(
                w[st].as_i64(),
                Some(count(n, st)),
                "wave {n:?} {st}: {served}"
            );
        }
        assert_eq!(
            w["pending"].as_i64(),
            Some(count(n, "pending") + count(n, "waiting")),
            "{served}"
        );
    }
    assert_eq!(served["skipped"].as_i64(), Some(count(None, "skipped")));
    let mut by_reason = std::collections::BTreeMap::<String, i64>::new();
    for j in js.iter().filter(|j| j["state"] == "failed") {
        *by_reason
            .entry(j["reason"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let served_failures: std::collections::BTreeMap<String, i64> = served["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["reason"].as_str().unwrap().to_owned(),
                f["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(served_failures, by_reason, "{served}");
    served
}

async fn skipped(env: Env) {
    let s = env.start().await;
    let at = register(&s, 1, "2.0").await;
    let above = register(&s, 2, "2.10").await;
    let below = register(&s, 3, "1.9").await;
    let unknown = register(&s, 4, "").await;
    let p = package(&s, &env, "2.0", 1).await;
    let c = create(
        &s,
        json!({"name": "r2", "package_id": p, "waves": [50, 100]}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    assert_eq!(c["skipped"], 2, "{c}");
    let js = jobs(&s, id).await;
    let state = |imei: &str| {
        js.iter()
            .find(|j| j["imei"] == imei)
            .map(|j| (j["state"].clone(), j["reason"].clone()))
            .unwrap()
    };
    assert_eq!(state(&at).0, "skipped");
    assert!(
        state(&at)
            .1
            .as_str()
            .unwrap()
            .contains("already at version 2.0")
    );
    assert_eq!(state(&above).0, "skipped");
    // The two others split the waves; a skipped job is no failure.
    assert_eq!(state(&below).0, "pending");
    assert_eq!(state(&unknown).0, "waiting");
    assert_eq!(c["progress"]["failed"], 0);
    assert_consistent(&s, id).await;

    // The first wave's one offered job succeeds: the skipped ones do not hold back the next.
    let first = js.iter().find(|j| j["imei"] == below).unwrap();
    finish(&s, first, 200).await;
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["current_wave"], 1, "{c}");

    // At offer time, a device that reports the version by now is skipped, not offered.
    let job = jobs(&s, id)
        .await
        .into_iter()
        .find(|j| j["imei"] == unknown)
        .unwrap();
    assert_eq!(job["state"], "pending");
    let mut conn = s.running.state().db.conn().await.unwrap();
    let o = campaign::offer(&mut conn, job["id"].as_i64().unwrap(), Some("v2.0.0"))
        .await
        .unwrap();
    assert!(
        matches!(&o, Offer::Ended { why, .. } if why.contains("already at version")),
        "{o:?}"
    );
    drop(conn);
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["state"], "completed", "{c}");
    assert_eq!(c["skipped"], 3);

    // A device that took sequence 1 is skipped by a package of sequence 1, whatever its
    // version says (its card would refuse it as a rollback).
    let p2 = package(&s, &env, "2.0-hotfix", 1).await;
    let c2 = create(&s, json!({"name": "again", "package_id": p2})).await;
    let id2 = c2["id"].as_i64().unwrap();
    let j = jobs(&s, id2)
        .await
        .into_iter()
        .find(|j| j["imei"] == below)
        .unwrap();
    assert_eq!(j["state"], "skipped", "{j}");
    assert!(j["reason"].as_str().unwrap().contains("sequence 1"), "{j}");
    assert_consistent(&s, id2).await;
    s.stop().await;
}
both!(devices_at_or_above_the_package_are_skipped, super::skipped);

async fn failures_and_retry(env: Env) {
    let s = env.start().await;
    for n in 0..5 {
        register(&s, n, "1.0").await;
    }
    let p = package(&s, &env, "2.0", 1).await;
    let c = create(
        &s,
        json!({"name": "f", "package_id": p, "error_threshold": 100}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    let js = jobs(&s, id).await;
    finish(&s, &js[0], 405).await;
    finish(&s, &js[1], 405).await;
    finish(&s, &js[2], 402).await;
    finish(&s, &js[3], 200).await;
    let c = assert_consistent(&s, id).await;
    assert_eq!(
        c["failures"],
        json!([
            {"reason": "device reported 405: package not acceptable", "count": 2},
            {"reason": "device reported 402: corrupted firmware update package", "count": 1}
        ]),
        "{c}"
    );
    // The card's log names the refusal of the update: the reason becomes the card's.
    let job1 = s.json(&format!("/api/v1/jobs/{}", js[1]["id"])).await;
    let uid = hex::decode(job1["update_id"].as_str().unwrap()).unwrap();
    let mut conn = s.running.state().db.conn().await.unwrap();
    campaign::card_refused(&mut conn, &uid, "rollback")
        .await
        .unwrap();
    drop(conn);
    let c = assert_consistent(&s, id).await;
    assert!(
        c["failures"]
            .as_array()
            .unwrap()
            .contains(&json!({"reason": "card refused: rollback", "count": 1})),
        "{c}"
    );
    // Jobs listed by reason.
    let by = s
        .json("/api/v1/jobs?reason=card%20refused%3A%20rollback")
        .await;
    assert_eq!(by.as_array().unwrap().len(), 1, "{by}");

    // Retry one reason: only those jobs are pending again, released anew (the campaign
    // page's progress over time draws them from the retry on).
    let before_retry = simfota_server::db::now_ms();
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/retry"))
        .json(&json!({"reasons": ["device reported 405: package not acceptable"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["progress"]["failed"], 2, "{c}");
    let pending = |js: &[Value]| js.iter().filter(|j| j["state"] == "pending").count();
    assert_eq!(pending(&jobs(&s, id).await), 2);
    let mut conn = s.running.state().db.conn().await.unwrap();
    let times: Vec<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT released_ms, delivered_ms FROM jobs WHERE campaign_id = $1 AND state = 'pending' \
         AND deliveries = 0 AND detail LIKE 'offered again (retry)%'",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    drop(conn);
    assert_eq!(times.len(), 1, "the one job retried");
    for (released, delivered) in times {
        assert!(released.is_some_and(|t| t >= before_retry), "{released:?}");
        assert_eq!(delivered, None, "the earlier delivery is cleared");
    }
    // Malformed bodies are refused, and nothing moves.
    for body in [
        json!({"reasons": []}),
        json!({"reasons": "x"}),
        json!({"other": 1}),
    ] {
        let r = s
            .post(&format!("/api/v1/campaigns/{id}/retry"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    // Retry all (no body).
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["progress"]["failed"], 0);
    assert_eq!(c["failures"], json!([]));
    assert_eq!(pending(&jobs(&s, id).await), 4);
    // A retried job is delivered and ends like any other.
    let again = jobs(&s, id).await;
    let j = again.iter().find(|j| j["state"] == "pending").unwrap();
    finish(&s, j, 200).await;
    assert_consistent(&s, id).await;
    // Nothing is retried in a cancelled campaign.
    s.post(&format!("/api/v1/campaigns/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_consistent(&s, id).await;
    s.stop().await;
}
both!(failures_by_reason_and_retry, super::failures_and_retry);

async fn wave_failure_limit(env: Env) {
    let s = env.start().await;
    for n in 0..10 {
        register(&s, n, "1.0").await;
    }
    let p = package(&s, &env, "2.0", 1).await;
    let c = create(
        &s,
        json!({"name": "w", "package_id": p, "waves": [50, 100], "error_threshold": 100,
               "success_threshold": 100, "max_failure_pct": 20}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    assert_eq!(c["max_failure_pct"], 20);
    let js: Vec<Value> = jobs(&s, id)
        .await
        .into_iter()
        .filter(|j| j["wave"] == 0)
        .collect();
    assert_eq!(js.len(), 5);
    // 1 of 5 is 20 %: not over the limit.
    finish(&s, &js[0], 410).await;
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["state"], "running", "{c}");
    // 2 of 5 is: the campaign pauses itself, and says why.
    finish(&s, &js[1], 410).await;
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["state"], "paused", "{c}");
    let why = c["paused_reason"].as_str().unwrap();
    assert!(why.contains("wave 0") && why.contains("2 of 5"), "{why}");
    // A paused campaign offers nothing: its pending jobs are not the device's job.
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/resume"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["state"], "running");
    assert_eq!(c["paused_reason"], Value::Null);
    s.stop().await;
}
both!(
    a_wave_over_its_failure_limit_pauses,
    super::wave_failure_limit
);

async fn deadline_and_window(env: Env) {
    let s = env.start().await;
    for n in 0..3 {
        register(&s, n, "1.0").await;
    }
    let p = package(&s, &env, "2.0", 1).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Refused specs, each naming its field.
    for (spec, field) in [
        (json!({"deadline_ms": now - 1}), "deadline_ms"),
        (
            json!({"window": {"start": "25:00", "end": "04:00"}}),
            "window.start",
        ),
        (
            json!({"window": {"start": "22:00", "end": "4:00"}}),
            "window.end",
        ),
        (
            json!({"window": {"start": "22:00", "end": "22:00"}}),
            "window",
        ),
        (json!({"max_failure_pct": 100}), "max_failure_pct"),
    ] {
        let mut body = json!({"name": "x", "package_id": p});
        for (k, v) in spec.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = s
            .post("/api/v1/campaigns")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(r.text().await.unwrap().contains(field), "{field}");
    }

    // A window that excludes the present minute: the offer waits; the job stays pending.
    let minute = (now / 60_000).rem_euclid(1440);
    let hhmm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
    let c = create(
        &s,
        json!({"name": "night", "package_id": p, "target_model": "none-such",
               "window": {"start": hhmm(minute + 60), "end": hhmm(minute + 120)}}),
    )
    .await;
    assert_eq!(
        c["window"],
        json!({"start": hhmm(minute + 60), "end": hhmm(minute + 120)})
    );
    let c = create(
        &s,
        json!({"name": "later", "package_id": p,
               "window": {"start": hhmm(minute + 60), "end": hhmm(minute + 120)}}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    let js = jobs(&s, id).await;
    let mut conn = s.running.state().db.conn().await.unwrap();
    let o = campaign::offer(&mut conn, js[0]["id"].as_i64().unwrap(), Some("1.0"))
        .await
        .unwrap();
    assert!(
        matches!(&o, Offer::NotNow(why) if why.contains("maintenance window")),
        "{o:?}"
    );
    drop(conn);
    let j = s.json(&format!("/api/v1/jobs/{}", js[0]["id"])).await;
    assert_eq!(j["state"], "pending");
    s.post(&format!("/api/v1/campaigns/{id}/cancel"))
        .send()
        .await
        .unwrap();
    // A window around the present minute (wrapping midnight when it must): offered.
    let c = create(
        &s,
        json!({"name": "now", "package_id": p,
               "window": {"start": hhmm(minute - 2), "end": hhmm(minute + 3)}}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    let js = jobs(&s, id).await;
    let mut conn = s.running.state().db.conn().await.unwrap();
    let o = campaign::offer(&mut conn, js[0]["id"].as_i64().unwrap(), Some("1.0"))
        .await
        .unwrap();
    assert_eq!(o, Offer::Deliver);
    drop(conn);
    s.post(&format!("/api/v1/campaigns/{id}/cancel"))
        .send()
        .await
        .unwrap();

    // A deadline: once passed, an offer fails the job, and the sweep ends the rest.
    let c = create(
        &s,
        json!({"name": "soon", "package_id": p, "waves": [34, 100], "deadline_ms": now + 1500}),
    )
    .await;
    let id = c["id"].as_i64().unwrap();
    assert_eq!(c["deadline_ms"], now + 1500);
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let js = jobs(&s, id).await;
    let first = js.iter().find(|j| j["state"] == "pending").unwrap();
    let mut conn = s.running.state().db.conn().await.unwrap();
    let o = campaign::offer(&mut conn, first["id"].as_i64().unwrap(), Some("1.0"))
        .await
        .unwrap();
    assert!(
        matches!(&o, Offer::Ended { why, .. } if why == "deadline passed"),
        "{o:?}"
    );
    drop(conn);
    let ended = campaign::sweep_deadlines(&s.running.state().db)
        .await
        .unwrap();
    assert_eq!(ended, 2);
    let c = assert_consistent(&s, id).await;
    assert_eq!(c["state"], "completed", "{c}");
    assert_eq!(
        c["failures"],
        json!([{"reason": "deadline passed", "count": 3}])
    );
    // Nothing is retried past the deadline; a second sweep finds nothing.
    let r = s
        .post(&format!("/api/v1/campaigns/{id}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(
        campaign::sweep_deadlines(&s.running.state().db)
            .await
            .unwrap(),
        0
    );
    s.stop().await;
}
both!(
    deadlines_and_maintenance_windows,
    super::deadline_and_window
);

#[test]
fn versions_compare_as_dotted_numbers() {
    use campaign::version_at_least as at;
    assert!(at("2.0", "2.0"));
    assert!(at("2.10", "2.9"));
    assert!(at("v2.0.0", "2.0"));
    assert!(!at("1.9", "2.0"));
    assert!(!at("2.0-rc1", "2.0"));
    assert!(at("build-7", "build-7"));
    assert!(!at("build-8", "build-7"));
}

#[test]
fn windows_wrap_midnight() {
    use campaign::in_window;
    assert!(in_window(23 * 60, 22 * 60, 4 * 60));
    assert!(in_window(60, 22 * 60, 4 * 60));
    assert!(!in_window(4 * 60, 22 * 60, 4 * 60));
    assert!(!in_window(12 * 60, 22 * 60, 4 * 60));
    assert!(in_window(9 * 60, 9 * 60, 17 * 60));
    assert!(!in_window(17 * 60, 9 * 60, 17 * 60));
}

#[test]
fn result_codes_in_words() {
    assert_eq!(
        campaign::fumo_words(405),
        "device reported 405: package not acceptable"
    );
    assert_eq!(campaign::fumo_words(499), "device reported 499");
}

/// A package deleted while a campaign is created on it: whichever locks the package's row
/// first wins, and the other sees its effect (no campaign is left on a deleted package).
/// The first is played by a transaction of the test holding the row; the second is the
/// server's own request, which must wait for it.
async fn package_delete_races_campaign_create(env: Env) {
    let s = env.start().await;
    register(&s, 1, "1.0").await;
    let db = s.running.state().db.clone();
    let package_of = |c: &Value| c["package_id"].as_i64().unwrap();
    let live = |p: i64| {
        let db = db.clone();
        async move {
            let mut conn = db.conn().await.unwrap();
            let deleted: Option<i64> =
                sqlx::query_scalar("SELECT deleted_ms FROM packages WHERE id = $1")
                    .bind(p)
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
            deleted.is_none()
        }
    };

    // A campaign being created holds the row: the deletion waits, then sees the campaign.
    let p = package(&s, &env, "2.0", 1).await;
    let mut creating = db.begin_write().await.unwrap();
    sqlx::query("UPDATE packages SET created_ms = created_ms WHERE id = $1")
        .bind(p)
        .execute(&mut *creating)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO campaigns (name, package_id, waves, success_threshold, error_threshold, \
         state, current_wave, created_ms, updated_ms) \
         VALUES ('racing', $1, '[]', 100, 10, 'running', 0, 0, 0)",
    )
    .bind(p)
    .execute(&mut *creating)
    .await
    .unwrap();
    let delete = {
        let (http, url, token) = (s.http.clone(), s.url.clone(), s.token.clone());
        tokio::spawn(async move {
            http.delete(format!("{url}/api/v1/packages/{p}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !delete.is_finished(),
        "the deletion waits for the campaign's transaction"
    );
    creating.commit().await.unwrap();
    assert_eq!(delete.await.unwrap(), StatusCode::CONFLICT);
    assert!(live(p).await, "a package a campaign uses stays");

    // A deletion holds the row: the campaign's creation waits, then finds the package gone.
    let p = package(&s, &env, "3.0", 2).await;
    let mut deleting = db.begin_write().await.unwrap();
    sqlx::query("UPDATE packages SET deleted_ms = 1 WHERE id = $1")
        .bind(p)
        .execute(&mut *deleting)
        .await
        .unwrap();
    let create = {
        let (http, url, token) = (s.http.clone(), s.url.clone(), s.token.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{url}/api/v1/campaigns"))
                .bearer_auth(token)
                .json(&json!({"name": "late", "package_id": p}))
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !create.is_finished(),
        "the creation waits for the deletion's transaction"
    );
    deleting.commit().await.unwrap();
    let (status, body) = create.await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let all = s.json("/api/v1/campaigns?limit=100").await;
    assert!(
        all.as_array().unwrap().iter().all(|c| package_of(c) != p),
        "no campaign on the deleted package: {all}"
    );
    s.stop().await;
}
both!(
    package_deletion_and_campaign_creation_exclude_each_other,
    super::package_delete_races_campaign_create
);
