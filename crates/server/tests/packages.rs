//! Package upload and hosting over real HTTP: originator check, digest check, and resumable
//! downloads (Range, ETag, If-Range, 206, 416).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::http::{self, StatusCode};
use common::http::{Form, Part};
use common::{Env, Server};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{BuildParams, ImageSource, build};

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn envelope(key: &SigningKey, img: &[u8], seq: u64, integrate: bool) -> Vec<u8> {
    build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: seq,
            image: ImageSource::Bytes(img),
            name: Some("firmware"),
            version: Some("2.0"),
            uri: if integrate { None } else { Some("payload") },
            integrate,
            precursor_digest: None,
        },
        key,
    )
    .unwrap()
}

async fn upload(s: &Server, env: Vec<u8>, payload: Option<Vec<u8>>) -> http::Response {
    let mut form = Form::new().part("envelope", Part::bytes(env));
    if let Some(p) = payload {
        form = form.part("payload", Part::bytes(p));
    }
    s.post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn upload_and_serve(env: Env) {
    let s = env.start().await;
    let img = image(100_000);
    let r = upload(
        &s,
        envelope(&env.originator, &img, 3, false),
        Some(img.clone()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["originator"], "oem");
    assert_eq!(p["sequence"], 3);
    assert_eq!(p["version"], "2.0");
    assert_eq!(p["image_size"], 100_000);
    let id = p["id"].as_i64().unwrap();

    // The same package again is a conflict, not a second copy.
    let r = upload(
        &s,
        envelope(&env.originator, &img, 3, false),
        Some(img.clone()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let payload_url = format!("{}/packages/{id}/payload", s.url);
    let http = http::Client::new();
    let full = http.get(&payload_url).send().await.unwrap();
    assert_eq!(full.status(), StatusCode::OK);
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    let etag = full.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("\"sha256-"), "{etag}");
    assert_eq!(full.bytes().await.unwrap().as_slice(), &img[..]);

    // Resume: the first 40 000 bytes were received, ask for the rest with If-Range.
    let r = http
        .get(&payload_url)
        .header("range", "bytes=40000-")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 40000-99999/100000");
    let rest = r.bytes().await.unwrap();
    let mut joined = img[..40_000].to_vec();
    joined.extend_from_slice(&rest);
    assert_eq!(joined, img);

    // A closed range and a suffix range.
    let r = http
        .get(&payload_url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_slice(), &img[10..20]);
    let r = http
        .get(&payload_url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_slice(), &img[99_995..]);

    // Past the end: 416 with the length.
    let r = http
        .get(&payload_url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */100000");

    // If-Range with another validator: the representation changed, send it whole.
    let r = http
        .get(&payload_url)
        .header("range", "bytes=40000-")
        .header("if-range", "\"sha256-00\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);

    // If-None-Match with the current tag: 304.
    let r = http
        .get(&payload_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    // The envelope devices get is the signed one (no payload inside).
    let e = http
        .get(format!("{}/packages/{id}/envelope", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(e.status(), StatusCode::OK);
    let e = e.bytes().await.unwrap();
    assert!(e.len() < 1024, "severed envelope is small: {}", e.len());
    assert_eq!(
        e.as_slice(),
        envelope(&env.originator, &img, 3, false).as_slice()
    );
    s.stop().await;
}
both!(upload_and_serve_with_ranges, super::upload_and_serve);

async fn integrated_payload_is_severed(env: Env) {
    let s = env.start().await;
    let img = image(3000);
    let r = upload(&s, envelope(&env.originator, &img, 1, true), None).await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let id = s.json("/api/v1/packages").await[0]["id"].as_i64().unwrap();
    let http = http::Client::new();
    let env_bytes = http
        .get(format!("{}/packages/{id}/envelope", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(
        env_bytes.len() < 1000,
        "integrated payload removed: {}",
        env_bytes.len()
    );
    let payload = http
        .get(format!("{}/packages/{id}/payload", s.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(payload.as_slice(), &img[..]);
    s.stop().await;
}
both!(
    integrated_payload_is_severed_and_served,
    super::integrated_payload_is_severed
);

async fn refused_uploads(env: Env) {
    let s = env.start().await;
    let img = image(5000);
    // Signed by a key that is not a configured originator.
    let stranger = SigningKey::random(&mut rand_core::OsRng);
    let r = upload(&s, envelope(&stranger, &img, 1, false), Some(img.clone())).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("originator"), "{msg}");

    // A payload one byte off the signed digest.
    let mut bad = img.clone();
    bad[17] ^= 1;
    let r = upload(&s, envelope(&env.originator, &img, 1, false), Some(bad)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("does not match the signed image")
    );

    // Truncated payload.
    let r = upload(
        &s,
        envelope(&env.originator, &img, 1, false),
        Some(img[..4000].to_vec()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Garbage envelope.
    let r = upload(&s, b"not cbor at all".to_vec(), Some(img.clone())).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("SUIT"));

    // Without a token.
    let form = Form::new().part(
        "envelope",
        Part::bytes(envelope(&env.originator, &img, 1, false)),
    );
    let r = http::Client::new()
        .post(format!("{}/api/v1/packages", s.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Nothing was stored, no payload file left behind; failures were counted.
    assert_eq!(
        s.json("/api/v1/packages").await.as_array().unwrap().len(),
        0
    );
    let leftovers = std::fs::read_dir(env.path("data").join("packages"))
        .unwrap()
        .count();
    assert_eq!(leftovers, 0);
    let metrics = http::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("simfota_verification_failures_total{kind=\"package\"} 3"),
        "{metrics}"
    );
    s.stop().await;
}
both!(refused_uploads_store_nothing, super::refused_uploads);

async fn oversized_upload(env: Env) {
    let mut cfg = env.config("data");
    cfg.max_package_bytes = 64 * 1024;
    let s = Server::start(cfg).await;
    // Over the payload limit and the room the body has beside it (an envelope, the framing).
    let img = image(64 * 1024 + 2 * 1024 * 1024);
    let form = Form::new()
        .part(
            "envelope",
            Part::bytes(envelope(&env.originator, &img, 1, false)),
        )
        .part("payload", Part::bytes(img));
    let (content_type, body) = form.encode();
    // Refused on its declared length, before the body is read (and before authentication):
    // the answer comes while the client is still sending.
    let status =
        http::post_oversized(&format!("{}/api/v1/packages", s.url), &content_type, body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        s.json("/api/v1/packages").await.as_array().unwrap().len(),
        0
    );
    s.stop().await;
}
both!(oversized_upload_is_refused, super::oversized_upload);

async fn delta_package(env: Env) {
    use sha2::Digest as _;
    let s = env.start().await;
    let base = image(50_000);
    let mut new = base.clone();
    new[100..200].fill(9);
    // The transported payload of a delta package is not the image: any bytes whose digest and
    // size the manifest signs (the device rebuilds the image from them and its running one).
    let delta = b"a delta that turns the base image into the new one".repeat(20);
    let env_bytes = simfota_wire::suit::build_delta(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 4,
            image: ImageSource::Bytes(&new),
            name: Some("firmware"),
            version: Some("2.1"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: Some(simfota_wire::Digest(sha2::Sha256::digest(&base).into())),
        },
        &delta,
        &env.originator,
    )
    .unwrap();
    // The full image is not what this package transports: refused.
    let r = upload(&s, env_bytes.clone(), Some(new.clone())).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(
        r.text().await.unwrap().contains("delta payload"),
        "the refusal names the delta"
    );
    let r = upload(&s, env_bytes, Some(delta.clone())).await;
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let p: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The package describes the image it produces; the download is the delta, tagged by its
    // own signed digest.
    assert_eq!(p["image_digest"], hex::encode(sha2::Sha256::digest(&new)));
    assert!(p["precursor_digest"].is_string());
    let r = s
        .http
        .get(format!("{}/packages/{}/payload", s.url, p["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"sha256-{}\"", hex::encode(sha2::Sha256::digest(&delta)))
    );
    assert_eq!(r.bytes().await.unwrap().as_slice(), delta.as_slice());
    s.stop().await;
}
both!(
    delta_package_is_checked_against_its_signed_payload,
    super::delta_package
);

/// `payload_access = delivered`: package files only through URLs the server signed (a
/// delivery's, or the operator API's), within their validity; the payload's relative URI
/// resolves inside the signed URL; a manifest naming its payload by an absolute path is
/// refused at upload.
async fn delivered_access(env: Env) {
    let mut cfg = env.config("data");
    cfg.payload_access = simfota_server::config::PayloadAccess::Delivered;
    let s = Server::start(cfg).await;
    let img = image(50_000);
    let r = upload(
        &s,
        envelope(&env.originator, &img, 1, false),
        Some(img.clone()),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();

    // The plain URLs are closed.
    for part in ["envelope", "payload"] {
        let r = http::get(format!("{}/packages/{id}/{part}", s.url))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{part}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("payload_access"),
            "{v}"
        );
    }
    // The operator's URLs are signed; the payload's sits beside the envelope's, as the
    // manifest's relative URI resolves.
    let detail = s.json(&format!("/api/v1/packages/{id}")).await;
    let (envelope_url, payload_url) = (
        detail["urls"]["envelope"].as_str().unwrap().to_owned(),
        detail["urls"]["payload"].as_str().unwrap().to_owned(),
    );
    assert!(envelope_url.contains("/d/"), "{envelope_url}");
    assert_eq!(
        envelope_url.trim_end_matches("envelope"),
        payload_url.trim_end_matches("payload")
    );
    let r = http::get(&envelope_url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http::Client::new()
        .get(&payload_url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().to_vec(), img[100..200].to_vec());

    // Tampered, expired, or for another package: refused.
    let urls = &s.running.state().keys.urls;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = urls.token(id, now + 60, 7);
    assert!(urls.check(id, &token, now), "a delivery's token for job 7");
    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in [
        tampered,
        urls.token(id, now - 1, 7),
        urls.token(id + 1, now + 60, 7),
        format!("{}.8.{}", now + 60, token.rsplit('.').next().unwrap()),
        "garbage".to_owned(),
    ] {
        let r = http::get(format!("{}/packages/{id}/d/{bad}/payload", s.url))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{bad}");
    }

    // A payload named by an absolute path could not be reached inside a signed URL.
    let absolute = build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 2,
            image: ImageSource::Bytes(&img),
            name: Some("firmware"),
            version: Some("2.1"),
            uri: Some("/elsewhere/payload"),
            integrate: false,
            precursor_digest: None,
        },
        &env.originator,
    )
    .unwrap();
    let r = upload(&s, absolute, Some(img)).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("relative URI"));
    s.stop().await;
}
both!(delivered_payload_access, super::delivered_access);
