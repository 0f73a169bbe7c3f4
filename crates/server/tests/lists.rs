//! The API's lists (limit, cursor, sort and filters, keyset pagination), DELETE of devices
//! and packages (evidence kept), and the package upload limit counting the payload. Each on
//! SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::{self, StatusCode};
use common::{Env, Server, imei};
use serde_json::{Value, json};

/// Reads every page of `path` (which has a query already) with `limit`, following
/// `X-Next-Cursor` and checking `Link` names the same cursor.
async fn all_pages(s: &Server, path: &str, limit: u32) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut pages = 0;
    let mut url = format!("{path}&limit={limit}");
    loop {
        let r = s.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        pages += 1;
        let next = r
            .headers()
            .get("x-next-cursor")
            .map(|v| v.to_str().unwrap().to_owned());
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Vec<Value> = r.json().await.unwrap();
        assert!(page.len() <= limit as usize);
        items.extend(page);
        match next {
            Some(c) => {
                let link = link.expect("a Link beside X-Next-Cursor");
                assert!(
                    link.ends_with(&format!("cursor={c}>; rel=\"next\"")),
                    "{link}"
                );
                assert!(link.starts_with("</api/v1/"), "{link}");
                url = format!("{path}&limit={limit}&cursor={c}");
            }
            None => {
                assert!(link.is_none());
                return (items, pages);
            }
        }
    }
}

fn field<'a>(items: &'a [Value], name: &str) -> Vec<&'a Value> {
    items.iter().map(|i| &i[name]).collect()
}

async fn refused(s: &Server, path: &str, word: &str) {
    let r = s.get(path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains(word),
        "{path}: {body}"
    );
}

async fn pages_and_filters(env: Env) {
    let s = env.start().await;
    // 25 devices: models A and B, versions 1.0 and 2.0, every third in group "east";
    // registered out of IMEI order.
    let devices: Vec<Value> = (0..25u32)
        .map(|i| {
            let n = (i * 7) % 25;
            let mut d = json!({"imei": imei(n), "username": format!("d{n}"), "password": "p",
                   "server_password": "sp", "model": if n % 2 == 0 { "A" } else { "B" },
                   "fw_version": if n < 10 { "1.0" } else { "2.0" }});
            if n % 3 == 0 {
                d["groups"] = json!(["east"]);
            }
            d
        })
        .collect();
    let r = s
        .post("/api/v1/devices/bulk")
        .json(&json!({ "devices": devices }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Default: id ascending, every device once, in pages.
    let (all, pages) = all_pages(&s, "/api/v1/devices?", 10).await;
    assert_eq!(all.len(), 25);
    assert_eq!(pages, 3);
    let ids: Vec<i64> = all.iter().map(|d| d["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // By IMEI, descending.
    let (by_imei, _) = all_pages(&s, "/api/v1/devices?sort=-imei", 7).await;
    let imeis: Vec<&str> = by_imei
        .iter()
        .map(|d| d["imei"].as_str().unwrap())
        .collect();
    let mut sorted = imeis.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(imeis, sorted);
    assert_eq!(imeis.len(), 25);
    // Filters, alone and together, across pages.
    let (a, _) = all_pages(&s, "/api/v1/devices?model=A", 4).await;
    assert_eq!(a.len(), 13);
    assert!(field(&a, "model").iter().all(|m| **m == "A"));
    let (a1, _) = all_pages(&s, "/api/v1/devices?model=A&version=1.0", 2).await;
    assert_eq!(a1.len(), 5);
    let (east, _) = all_pages(&s, "/api/v1/devices?group=east&sort=imei", 3).await;
    assert_eq!(east.len(), 9);
    assert!(
        east.iter().all(|d| d["groups"] == json!(["east"])),
        "{east:?}"
    );
    // An IMEI prefix: imei(n) is "35" and twelve digits of n, and a check digit.
    let prefix = &imei(20)[..13];
    let (q, _) = all_pages(&s, &format!("/api/v1/devices?q={prefix}&sort=imei"), 2).await;
    assert_eq!(
        field(&q, "imei"),
        vec![
            &json!(imei(20)),
            &json!(imei(21)),
            &json!(imei(22)),
            &json!(imei(23)),
            &json!(imei(24))
        ]
    );
    let (none, _) = all_pages(&s, "/api/v1/devices?q=99", 5).await;
    assert!(none.is_empty());
    // A short page at the end carries no next cursor.
    let r = s.get("/api/v1/devices?limit=1000").send().await.unwrap();
    assert!(r.headers().get("x-next-cursor").is_none());
    assert!(r.headers().get("link").is_none());

    // Refusals, each naming the parameter.
    refused(&s, "/api/v1/devices?limit=0", "limit").await;
    refused(&s, "/api/v1/devices?limit=1001", "limit").await;
    refused(&s, "/api/v1/devices?sort=password", "sort").await;
    refused(&s, "/api/v1/devices?cursor=not-a-cursor", "cursor").await;
    refused(&s, "/api/v1/devices?q=35a", "q").await;
    let r = s.get("/api/v1/devices?limit=3").send().await.unwrap();
    let c = r.headers()["x-next-cursor"].to_str().unwrap().to_owned();
    // A cursor of another list, or of another order.
    refused(&s, &format!("/api/v1/cards?cursor={c}"), "cursor").await;
    refused(
        &s,
        &format!("/api/v1/devices?sort=imei&cursor={c}"),
        "cursor",
    )
    .await;
    // Tampered: one character changed.
    let mut t = c.clone().into_bytes();
    t[3] = if t[3] == b'A' { b'B' } else { b'A' };
    let t = String::from_utf8(t).unwrap();
    let r = s
        .get(&format!("/api/v1/devices?cursor={t}"))
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == StatusCode::BAD_REQUEST || r.status() == StatusCode::OK,
        "{}",
        r.status()
    );

    // The other lists page the same way.
    let (tokens, _) = all_pages(&s, "/api/v1/tokens?", 1).await;
    assert_eq!(tokens.len(), 1);
    for name in ["b", "a", "c"] {
        let r = s
            .post("/api/v1/tokens")
            .json(&json!({"name": name, "role": "viewer"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let (tokens, pages) = all_pages(&s, "/api/v1/tokens?sort=name", 2).await;
    assert_eq!(pages, 2);
    let names: Vec<&str> = tokens.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..3], &["a", "b", "c"]);
    // The audit log: newest first by default; the older `before` paging still answers.
    let (audit, _) = all_pages(&s, "/api/v1/audit?", 2).await;
    let ids: Vec<i64> = audit.iter().map(|a| a["id"].as_i64().unwrap()).collect();
    assert!(
        ids.len() >= 4 && ids.windows(2).all(|w| w[0] > w[1]),
        "{ids:?}"
    );
    let older: Vec<Value> = s
        .json(&format!("/api/v1/audit?before={}", ids[1]))
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(older[0]["id"].as_i64(), Some(ids[2]));
    let (campaigns, _) = all_pages(&s, "/api/v1/campaigns?state=running", 5).await;
    assert!(campaigns.is_empty());
    refused(&s, "/api/v1/campaigns?state=sleeping", "state").await;
    refused(&s, "/api/v1/jobs?state=lost", "state").await;
    s.stop().await;
}
both!(lists_page_sort_and_filter, super::pages_and_filters);

async fn upload(s: &Server, env: &Env, size: usize, version: &str) -> http::Response {
    let img = vec![9u8; size];
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 1,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: Some("fw"),
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
    s.post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn deletes(env: Env) {
    let s = env.start().await;
    let mut created = Vec::new();
    for n in 0..3u32 {
        let r = s
            .post("/api/v1/devices")
            .json(
                &json!({"imei": imei(n), "username": format!("u{n}"), "password": "p",
                          "server_password": "sp", "fw_version": "1.0", "groups": ["g"]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        created.push(imei(n));
    }
    let r = upload(&s, &env, 1000, "2.0").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let p = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let c: Value = s
        .post("/api/v1/campaigns")
        .json(&json!({"name": "c", "package_id": p, "error_threshold": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cid = c["id"].as_i64().unwrap();
    // One job delivered, one pending: deleting their devices fails both, counted.
    let jobs = s.json(&format!("/api/v1/jobs?campaign={cid}")).await;
    let j0 = jobs.as_array().unwrap()[0].clone();
    {
        let mut conn = s.running.state().db.conn().await.unwrap();
        let id = j0["id"].as_i64().unwrap();
        simfota_server::campaign::mark_delivered(&mut conn, id, &[7; 16], b"t")
            .await
            .unwrap();
    }
    for imei in &created[..2] {
        let r = s
            .http
            .delete(format!("{}/api/v1/devices/{imei}", s.url))
            .bearer_auth(&s.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = s
            .get(&format!("/api/v1/devices/{imei}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let r = s
        .http
        .delete(format!("{}/api/v1/devices/{}", s.url, created[0]))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let c = s.json(&format!("/api/v1/campaigns/{cid}")).await;
    assert_eq!(
        c["failures"],
        json!([{"reason": "device deleted", "count": 2}]),
        "{c}"
    );
    assert_eq!(c["progress"]["delivered"], 0, "{c}");
    let audit = s.json(&format!("/api/v1/campaigns/{cid}/audit")).await;
    assert_eq!(audit["consistent"], true, "{audit}");
    // A retry never offers a deleted device's job again.
    let r = s
        .post(&format!("/api/v1/campaigns/{cid}/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let c: Value = r.json().await.unwrap();
    assert_eq!(
        c["failures"],
        json!([{"reason": "device deleted", "count": 2}]),
        "{c}"
    );
    // The jobs stay, under the device's IMEI; the group lists the device no more.
    let kept = s.json(&format!("/api/v1/jobs?device={}", created[0])).await;
    assert_eq!(kept.as_array().unwrap().len(), 1);
    assert_eq!(kept[0]["state"], "failed");
    assert_eq!(kept[0]["reason"], "device deleted");
    assert_eq!(kept[0]["update_id"], hex::encode([7u8; 16]));
    let groups = s.json("/api/v1/groups").await;
    assert_eq!(groups[0]["devices"], json!([created[2]]));
    let devices = s.json("/api/v1/devices?").await;
    assert_eq!(devices.as_array().unwrap().len(), 1);
    // The IMEI can be registered again.
    let r = s
        .post("/api/v1/devices")
        .json(
            &json!({"imei": created[0], "username": "again", "password": "p",
                      "server_password": "sp"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A package in use by a running campaign stays.
    let del = |id: i64| {
        s.http
            .delete(format!("{}/api/v1/packages/{id}", s.url))
            .bearer_auth(&s.token)
            .send()
    };
    let r = del(p).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains(&format!("campaign {cid}")));
    s.post(&format!("/api/v1/campaigns/{cid}/cancel"))
        .send()
        .await
        .unwrap();
    let payload = format!("{}/packages/{p}/payload", s.url);
    assert_eq!(http::get(&payload).await.unwrap().status(), StatusCode::OK);
    let r = del(p).await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(del(p).await.unwrap().status(), StatusCode::NOT_FOUND);
    let r = s
        .get(&format!("/api/v1/packages/{p}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        http::get(&payload).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.json("/api/v1/packages?").await, json!([]));
    // The campaign still names it; the same package uploaded again is served again.
    let c = s.json(&format!("/api/v1/campaigns/{cid}")).await;
    assert_eq!(c["package_id"], p);
    let r = upload(&s, &env, 1000, "2.0").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], p);
    assert_eq!(http::get(&payload).await.unwrap().status(), StatusCode::OK);
    // A name prefix.
    assert_eq!(
        upload(&s, &env, 10, "3.0").await.status(),
        StatusCode::CREATED
    );
    let found = s.json("/api/v1/packages?q=f").await;
    assert_eq!(found.as_array().unwrap().len(), 2);
    assert_eq!(s.json("/api/v1/packages?q=g").await, json!([]));
    s.stop().await;
}
both!(deleting_keeps_the_evidence, super::deletes);

/// `max_package_bytes` bounds the payload: a payload of exactly that size is taken, though
/// the whole multipart body is larger; one byte more is refused.
async fn upload_limit(env: Env) {
    let mut config = env.config("data");
    config.max_package_bytes = 64 * 1024;
    let s = Server::start(config).await;
    let r = upload(&s, &env, 64 * 1024, "1.0").await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let r = upload(&s, &env, 64 * 1024 + 1, "1.1").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("65536"), "{body}");
    s.stop().await;
}
both!(the_package_limit_counts_the_payload, super::upload_limit);
