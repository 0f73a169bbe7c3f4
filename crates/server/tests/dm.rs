//! The `/dm` endpoint driven by the protocol crate's real client session: authentication with
//! challenge, session state in the database (messages alternate between two server
//! processes on one database), the FUMO delivery (card nonce -> token -> Replace + Exec) and
//! the 1226 result with a card-signed receipt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::http::{self, StatusCode};
use common::{Env, Server, chromium, imei};
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce as DmNonce};
use simfota_syncml::codes::{FumoResult as DmFumoResult, FumoState as DmFumoState};
use simfota_syncml::fumo::Fumo;
use simfota_syncml::model::{Data, Item, Location, Meta};
use simfota_syncml::session::{ClientConfig, ClientEvent, ClientSession};
use simfota_syncml::tree::{DevDetail, DevInfo, DmTree, NodeValue, SubtreeHandler};
use simfota_syncml::{AlertCode, Encoding, Limits, NodeUri};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::{
    CardCertificate, DeliveryToken, Digest, FumoResult, Iccid, IssuerId, PublicKey, Receipt,
    UpdateId,
};
use simfota_wire::{Event, ExportHeader, LogEntry, build_export};

const ICCID: &str = "8949440000001234564";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

struct Device {
    imei: String,
    tree: DmTree,
    card: SigningKey,
    nonce: DmNonce,
    encoding: Encoding,
    password: String,
    /// The nonce this device expects the server's credentials with.
    server_nonce: DmNonce,
    /// `syncml:auth-md5` or HMAC (`x-syncml-hmac`).
    auth: AuthScheme,
    /// Offers FwV, the card's Info and Nonce and the FUMO state in package 1.
    offer: bool,
    /// HTTP exchanges of the last session.
    exchanges: usize,
}

fn card_info(env: &Env, card: &SigningKey) -> Vec<u8> {
    card_info_by(&env.issuer, card)
}

/// Card Info with a certificate signed by `issuer`.
fn card_info_by(issuer: &SigningKey, card: &SigningKey) -> Vec<u8> {
    let cert = CardCertificate {
        issuer: IssuerId::new("test-issuer").unwrap(),
        iccid: Iccid::parse(ICCID).unwrap(),
        card_key: PublicKey::from(card),
        imsi: None,
    };
    let mut buf = [0u8; 512];
    let n = cert.sign(issuer, &mut buf).unwrap();
    // {1: ICCID, 4: certificate} (docs/dm-tree.md "Card answers")
    let mut out = vec![0xa2, 0x01, 0x60 + ICCID.len() as u8];
    out.extend_from_slice(ICCID.as_bytes());
    out.push(0x04);
    out.push(0x59);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&buf[..n]);
    out
}

impl Device {
    fn new(env: &Env, n: u32, encoding: Encoding) -> Self {
        Self::build(env, n, encoding, None)
    }

    fn build(
        env: &Env,
        n: u32,
        encoding: Encoding,
        card_handler: Option<Box<dyn SubtreeHandler>>,
    ) -> Self {
        let imei = imei(n);
        let info = DevInfo {
            dev_id: format!("IMEI:{imei}"),
            manufacturer: "Acme".into(),
            model: "EX-1".into(),
            lang: "en".into(),
        };
        let detail = DevDetail {
            dev_type: "phone".into(),
            oem: "Acme".into(),
            fw_version: "1.0".into(),
            sw_version: "1.0".into(),
            hw_version: "A".into(),
        };
        let mut tree = DmTree::with_standard_objects(&info, &detail).unwrap();
        let card = CARD_KEY
            .with(|k| k.borrow().clone())
            .unwrap_or_else(|| SigningKey::random(&mut rand_core::OsRng));
        tree.put_interior("./SIMFOTA", "Get=*").unwrap();
        match card_handler {
            Some(h) => tree.mount("./SIMFOTA/Card", "Get=*&Replace=*", h).unwrap(),
            None => {
                tree.put_interior("./SIMFOTA/Card", "Get=*").unwrap();
                let b = |v: Vec<u8>| NodeValue {
                    format: "b64".into(),
                    mime_type: None,
                    data: b64(&v).into_bytes(),
                };
                tree.put_leaf("./SIMFOTA/Card/Info", "Get=*", b(card_info(env, &card)))
                    .unwrap();
                tree.put_leaf("./SIMFOTA/Card/Nonce", "Get=*", b(vec![7u8; 16]))
                    .unwrap();
            }
        }
        tree.put_interior("./FUMO", "Get=*").unwrap();
        // As on the device (docs/dm-tree.md), Ext/DeliveryToken exists and is Replaced.
        let mut fumo = Fumo::new(NodeUri::parse("./FUMO/fw").unwrap());
        fumo.ext.insert("DeliveryToken".into(), Vec::new());
        tree.mount_fumo("./FUMO/fw", "Get=*&Replace=*&Exec=*&Add=*", fumo)
            .unwrap();
        Self {
            imei,
            tree,
            card,
            nonce: DmNonce(b"initial".to_vec()),
            encoding,
            password: "dev-secret".into(),
            server_nonce: DmNonce(Vec::new()),
            auth: AuthScheme::Md5,
            offer: false,
            exchanges: 0,
        }
    }

    async fn register(&self, s: &Server) {
        let r = s
            .post("/api/v1/devices")
            .json(&serde_json::json!({
                "imei": self.imei, "username": format!("dev-{}", self.imei),
                "password": self.password, "server_password": "srv-secret", "model": "EX-1",
                "auth": if self.auth == AuthScheme::Hmac { "hmac" } else { "md5" },
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    /// Runs one session, sending message k to `urls[k % urls.len()]`. Returns the events.
    async fn session(&mut self, urls: &[&str], id: u16) -> Vec<ClientEvent> {
        self.session_with(urls, id, None).await
    }

    /// The device's client side of session `id`, addressed to `url`.
    fn client(&self, url: &str, id: u16) -> ClientSession {
        ClientSession::new(
            ClientConfig {
                client_id: format!("IMEI:{}", self.imei),
                server_id: "simfota".into(),
                server_uri: format!("{url}/dm"),
                client_credentials: Credentials::new(
                    format!("dev-{}", self.imei),
                    self.password.clone(),
                ),
                server_credentials: Credentials::new("simfota", "srv-secret"),
                auth: self.auth,
                require_server_auth: true,
                encoding: self.encoding,
                limits: Limits::default(),
            },
            id,
            self.nonce.clone(),
            self.server_nonce.clone(),
        )
    }

    async fn session_with(
        &mut self,
        urls: &[&str],
        id: u16,
        alert: Option<simfota_syncml::model::Alert>,
    ) -> Vec<ClientEvent> {
        let mut client = self.client(urls[0], id);
        if let Some(a) = alert {
            client.queue_alert(a);
        }
        let offered: Vec<NodeUri> = [
            "./DevDetail/FwV",
            "./SIMFOTA/Card/Info",
            "./SIMFOTA/Card/Nonce",
            "./FUMO/fw/State",
        ]
        .into_iter()
        .filter(|_| self.offer)
        .map(|u| NodeUri::parse(u).unwrap())
        .collect();
        let mut out = client
            .start_offering(AlertCode::CLIENT_INITIATED_MGMT, &mut self.tree, &offered)
            .unwrap();
        let http = http::Client::new();
        let mut events = Vec::new();
        // A session reading a whole card log takes about 3 messages per export page.
        for k in 0..120 {
            let url = format!("{}/dm", urls[k % urls.len()]);
            let mut req = http
                .post(url)
                .header("content-type", out.content_type)
                .body(out.body.clone());
            if let Some(h) = &out.hmac {
                req = req.header("x-syncml-hmac", h);
            }
            let resp = req.send().await.unwrap();
            self.exchanges = k + 1;
            if resp.status() != StatusCode::OK {
                // Refused at the HTTP level (a message of a session the server ended): the
                // session is over for the client too. Tests that expect more see it here.
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                events.push(ClientEvent::Display(format!(
                    "HTTP {status} to message {k}: {text}"
                )));
                return events;
            }
            let hmac = resp
                .headers()
                .get("x-syncml-hmac")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.bytes().await.unwrap();
            let step = match client.receive(&body, hmac.as_deref(), &mut self.tree) {
                Ok(step) => step,
                // The client gives up after repeated 401s: that is the refusal under test.
                Err(e) => {
                    events.push(ClientEvent::Display(format!("client error: {e:?}")));
                    return events;
                }
            };
            for e in &step.events {
                if let ClientEvent::NextNonce(n) = e {
                    self.nonce = n.clone();
                }
            }
            events.extend(step.events);
            match step.reply {
                Some(next) => out = next,
                None => return events,
            }
        }
        panic!("session did not end");
    }
}

/// Uploads a package and starts a campaign for model EX-1; answers both as the API shows them.
async fn package_and_campaign(env: &Env, a: &Server) -> (serde_json::Value, serde_json::Value) {
    package_and_campaign_with(env, a, serde_json::json!({})).await
}

/// [`package_and_campaign`] with more campaign fields (`extra`, an object).
async fn package_and_campaign_with(
    env: &Env,
    a: &Server,
    extra: serde_json::Value,
) -> (serde_json::Value, serde_json::Value) {
    let img: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 2,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: Some("fw"),
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
    let p: serde_json::Value = a
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut spec =
        serde_json::json!({"name": "to 2.0", "package_id": p["id"], "target_model": "EX-1"});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let c: serde_json::Value = a
        .post("/api/v1/campaigns")
        .json(&spec)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (p, c)
}

async fn replicas_share_sessions_and_deliver(env: Env) {
    // Two server processes on one database (SQLite: one file in WAL mode; PostgreSQL: one DB).
    let a = env.start().await;
    let mut cfg_b = env.config("data");
    cfg_b.server_key = Some(env.path("data").join("server-key.pem"));
    let b = Server::start(cfg_b).await;
    let mut dev = Device::new(&env, 1, Encoding::Wbxml);
    dev.register(&a).await;

    // First session: the stored nonce is unknown to the device, so it is challenged (401 +
    // NextNonce) and authenticates on the retry; FwV and the card get registered.
    let ev = dev.session(&[&a.url, &b.url], 1).await;
    assert!(ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let d = a.json(&format!("/api/v1/devices/{}", dev.imei)).await;
    assert_eq!(d["device"]["fw_version"], "1.0");
    assert_eq!(d["device"]["iccid"], ICCID);
    let card = a.json(&format!("/api/v1/cards/{ICCID}")).await;
    assert_eq!(card["cert_status"], "verified");

    // A package and a campaign for this model.
    let (p, c) = package_and_campaign(&env, &a).await;
    assert_eq!(c["progress"]["total"], 1);

    // Second session, again alternating replicas: nonce Get, token + PkgURL Replace, Exec 202.
    let ev = dev.session(&[&b.url, &a.url], 2).await;
    let correlator = ev
        .iter()
        .find_map(|e| match e {
            ClientEvent::ExecAccepted { correlator, .. } => correlator.clone(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Exec accepted: {ev:?}"));
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let f = dev.tree.fumo(&fumo).unwrap();
    assert_eq!(
        f.download_and_update_url,
        format!("{}/packages/{}/envelope", a.url, p["id"])
    );
    let token_b64 = f.ext.get("DeliveryToken").expect("token replaced");
    // The node holds the decoded bytes (format b64 is a transfer encoding).
    let token_bytes = token_b64.clone();
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let token =
        DeliveryToken::verify(&token_bytes, &server_pub, &simfota_wire::Limits::DEFAULT).unwrap();
    let t = token.get();
    assert_eq!(t.nonce.0, [7u8; 16]);
    assert_eq!(t.iccid.as_str(), ICCID);
    assert_eq!(t.imei.as_str(), dev.imei);
    assert_eq!(
        hex::encode(t.manifest_digest.0),
        p["manifest_digest"].as_str().unwrap()
    );
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    assert_eq!(jobs[0]["state"], "delivered");
    assert_eq!(jobs[0]["correlator"], correlator.as_str());

    // The device installs, the card signs a receipt, the device reports 1226 in a new session.
    let receipt = Receipt {
        iccid: Iccid::parse(ICCID).unwrap(),
        update_id: UpdateId::new(t.cti.as_bytes()).unwrap(),
        result: FumoResult(200),
        log_seq: 3,
        chain_head: Digest([9; 32]),
    };
    let mut buf = [0u8; 512];
    let n = receipt.sign(&dev.card, &mut buf).unwrap();
    let mut alert = dev
        .tree
        .fumo_mut(&fumo)
        .unwrap()
        .finish(DmFumoResult(200))
        .unwrap();
    alert.items.push(Item {
        source: Some(Location::new("./FUMO/fw/Ext/Receipt")),
        meta: Some(Meta {
            format: Some("b64".into()),
            mime_type: Some("application/vnd.simfota.receipt+cbor".into()),
            ..Meta::default()
        }),
        data: Some(Data::text(b64(&buf[..n]))),
        ..Item::default()
    });
    dev.tree
        .set_value(
            &NodeUri::parse("./DevDetail/FwV").unwrap(),
            NodeValue::chr("2.0"),
        )
        .unwrap();
    let ev = dev.session_with(&[&a.url, &b.url], 3, Some(alert)).await;
    assert!(
        ev.iter().any(
            |e| matches!(e, ClientEvent::Status { correlator: Some(c), code, .. }
        if *c == correlator && code.value() == 200)
        ),
        "{ev:?}"
    );
    let job = a.json(&format!("/api/v1/jobs/{}", jobs[0]["id"])).await;
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["result_code"], 200);
    assert_eq!(job["receipt_status"], "verified");
    let c = a.json(&format!("/api/v1/campaigns/{}", c["id"])).await;
    assert_eq!(c["state"], "completed");
    let d = a.json(&format!("/api/v1/devices/{}", dev.imei)).await;
    assert_eq!(d["device"]["fw_version"], "2.0");
    b.stop().await;
    a.stop().await;
}
both!(
    replicas_share_sessions_and_deliver_an_update,
    super::replicas_share_sessions_and_deliver
);

/// The correlator of the Exec the device accepted in a session, if any.
fn exec_accepted(ev: &[ClientEvent]) -> Option<String> {
    ev.iter().find_map(|e| match e {
        ClientEvent::ExecAccepted { correlator, .. } => correlator.clone(),
        _ => None,
    })
}

/// A device that accepted the Exec and then lost the update (it reports FUMO state idle and no
/// result) has the job offered again in that same session; while it works on it (any other
/// state) nothing is sent; after `MAX_DELIVERIES` deliveries the job fails, with the reason.
async fn lost_delivery(env: Env) {
    let a = env.start().await;
    let mut dev = Device::new(&env, 5, Encoding::Xml);
    dev.register(&a).await;
    let ev = dev.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let (_, c) = package_and_campaign(&env, &a).await;
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let job = || async { a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await[0].clone() };

    let ev = dev.session(&[&a.url], 2).await;
    let first = exec_accepted(&ev).unwrap_or_else(|| panic!("no Exec: {ev:?}"));
    let j = job().await;
    assert_eq!(
        (j["state"].as_str(), j["deliveries"].as_i64()),
        (Some("delivered"), Some(1))
    );
    let first_update = j["update_id"].clone();

    // Still at work (the Exec left FUMO state at download progressing): nothing new is sent.
    let ev = dev.session(&[&a.url], 3).await;
    assert_eq!(exec_accepted(&ev), None, "{ev:?}");
    assert_eq!(job().await["deliveries"], 1);

    // The device loses the update (reset, storage wiped): no job, FUMO state idle.
    let forget = |dev: &mut Device| {
        let f = dev.tree.fumo_mut(&fumo).unwrap();
        let _unsent = f.finish(DmFumoResult(500));
        f.set_state(DmFumoState::IDLE);
    };
    for (session, deliveries) in [(4u16, 2i64), (5, 3)] {
        forget(&mut dev);
        let ev = dev.session(&[&a.url], session).await;
        assert_eq!(
            exec_accepted(&ev).as_deref(),
            Some(first.as_str()),
            "{ev:?}"
        );
        let j = job().await;
        assert_eq!(j["state"], "delivered");
        assert_eq!(j["deliveries"], deliveries);
        assert_ne!(
            j["update_id"], first_update,
            "each delivery has its own token"
        );
        assert!(
            j["detail"].as_str().unwrap().contains("offered again"),
            "{j}"
        );
    }
    forget(&mut dev);
    let ev = dev.session(&[&a.url], 6).await;
    assert_eq!(exec_accepted(&ev), None, "{ev:?}");
    let j = job().await;
    assert_eq!(j["state"], "failed");
    assert!(
        j["detail"]
            .as_str()
            .unwrap()
            .contains("failed after 3 deliveries"),
        "{j}"
    );
    let c = a.json(&format!("/api/v1/campaigns/{}", c["id"])).await;
    assert_eq!(c["progress"]["failed"], 1, "{c}");
    assert_eq!(c["progress"]["delivered"], 0, "{c}");
    a.stop().await;
}
both!(
    a_lost_delivery_is_offered_again_then_failed,
    super::lost_delivery
);

/// A card's certificate is verified and its card row written in the first session only: the
/// server remembers the certificate once the session's transaction committed.
async fn certificate_once(env: Env) {
    let a = env.start().await;
    let mut dev = Device::new(&env, 6, Encoding::Xml);
    dev.register(&a).await;
    let state = a.running.state();
    assert!(state.verified_cards.is_empty());
    let ev = dev.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert_eq!(state.verified_cards.len(), 1);
    let pool = state.db.pool().clone();
    let written = || async {
        sqlx::query_scalar::<_, i64>("SELECT updated_ms FROM cards WHERE iccid = $1")
            .bind(ICCID)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let first = written().await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let ev = dev.session(&[&a.url], 2).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert_eq!(written().await, first, "the card row is not rewritten");
    let d = a.json(&format!("/api/v1/devices/{}", dev.imei)).await;
    assert_eq!(d["device"]["iccid"], ICCID);
    a.stop().await;
}
both!(a_card_certificate_is_verified_once, super::certificate_once);

/// A device that offers FwV, the card's Info and Nonce and its FUMO state in package 1
/// (docs/dm-tree.md "Package 1") gets its update in two exchanges instead of three, with the
/// same token checks; the server still Gets what a device does not offer.
async fn offered_values(env: Env) {
    let a = env.start().await;
    let mut old = Device::new(&env, 8, Encoding::Xml);
    let mut new = Device::new(&env, 9, Encoding::Wbxml);
    new.offer = true;
    for d in [&old, &new] {
        d.register(&a).await;
    }
    // Settles each device's nonce and card.
    for (d, id) in [(&mut old, 1), (&mut new, 1)] {
        let ev = d.session(&[&a.url], id).await;
        assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    }
    let d = a.json(&format!("/api/v1/devices/{}", new.imei)).await;
    assert_eq!(
        d["device"]["iccid"], ICCID,
        "the offered card info binds the card: {d}"
    );
    assert_eq!(d["device"]["fw_version"], "1.0");
    let (_, c) = package_and_campaign(&env, &a).await;
    assert_eq!(c["progress"]["total"], 2);
    let ev = old.session(&[&a.url], 2).await;
    assert!(exec_accepted(&ev).is_some(), "{ev:?}");
    assert_eq!(old.exchanges, 3);
    let ev = new.session(&[&a.url], 2).await;
    assert!(exec_accepted(&ev).is_some(), "{ev:?}");
    assert_eq!(
        new.exchanges, 2,
        "the delivery rides on the reply to package 1"
    );
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let token = new.tree.fumo(&fumo).unwrap().ext["DeliveryToken"].clone();
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let t = DeliveryToken::verify(&token, &server_pub, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(
        t.get().nonce.0,
        [7u8; 16],
        "bound to the offered card nonce"
    );
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "delivered"),
        "{jobs}"
    );
    a.stop().await;
}
both!(offered_values_save_a_round_trip, super::offered_values);

/// A card subtree that answers nothing: a device whose SIMFOTA card is missing.
struct NoCard;

impl SubtreeHandler for NoCard {
    fn get(&mut self, _: &NodeUri) -> Result<NodeValue, simfota_syncml::codes::StatusCode> {
        Err(simfota_syncml::codes::StatusCode::NOT_FOUND)
    }
}

/// A device whose card's certificate comes from an issuer the server does not trust.
fn untrusted_card_device(env: &Env, n: u32, encoding: Encoding) -> Device {
    let mut dev = Device::new(env, n, encoding);
    let stranger = SigningKey::random(&mut rand_core::OsRng);
    let info = card_info_by(&stranger, &dev.card);
    dev.tree
        .set_value(
            &NodeUri::parse("./SIMFOTA/Card/Info").unwrap(),
            NodeValue {
                format: "b64".into(),
                mime_type: None,
                data: b64(&info).into_bytes(),
            },
        )
        .unwrap();
    dev
}

/// Devices that cannot take a card-gated update do not hold a campaign back: a device without
/// the SIMFOTA card subtree (Get ./SIMFOTA/Card/Nonce answered 404), and one whose card never
/// showed a certificate that verifies, each end their job `failed` with the reason, counted
/// against the error threshold, and the campaign goes on: a card-gated device of the same
/// campaign still gets its update.
async fn legacy_devices(env: Env) {
    let a = env.start().await;
    let mut no_card = Device::build(&env, 15, Encoding::Xml, Some(Box::new(NoCard)));
    let mut unverified = untrusted_card_device(&env, 16, Encoding::Wbxml);
    let mut good = Device::new(&env, 17, Encoding::Xml);
    for d in [&no_card, &unverified, &good] {
        d.register(&a).await;
    }
    // Failures count against the error threshold: at the default 10 % the first would halt
    // this three-device campaign before the others are tried.
    let (_, c) =
        package_and_campaign_with(&env, &a, serde_json::json!({"error_threshold": 100})).await;
    assert_eq!(c["progress"]["total"], 3, "{c}");
    for (d, id) in [(&mut no_card, 1), (&mut unverified, 1)] {
        let ev = d.session(&[&a.url], id).await;
        assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
        assert_eq!(exec_accepted(&ev), None, "{ev:?}");
    }
    let ev = good.session(&[&a.url], 1).await;
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    assert!(exec_accepted(&ev).is_some(), "{ev:?}\n{jobs}");
    let of = |imei: &str| {
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["imei"] == imei)
            .unwrap_or_else(|| panic!("no job for {imei}: {jobs}"))
            .clone()
    };
    let j = of(&no_card.imei);
    assert_eq!(j["state"], "failed", "{j}");
    assert_eq!(
        j["detail"], "device has no SIMFOTA card (Get ./SIMFOTA/Card/Nonce answered 404)",
        "{j}"
    );
    let j = of(&unverified.imei);
    assert_eq!(j["state"], "failed", "{j}");
    assert!(
        j["detail"].as_str().unwrap().contains("no verified card"),
        "{j}"
    );
    assert_eq!(of(&good.imei)["state"], "delivered");
    let c = a.json(&format!("/api/v1/campaigns/{}", c["id"])).await;
    assert_eq!(c["progress"]["failed"], 2, "{c}");
    assert_eq!(c["state"], "running", "{c}");
    a.stop().await;
}
both!(
    devices_without_a_usable_card_fail_their_job_with_the_reason,
    super::legacy_devices
);

/// A mixed fleet in one campaign with `card: optional`: the device with a verified card gets
/// the card-gated delivery (token, envelope URL); the devices without a usable card get plain
/// FUMO (the payload's URL, no token), their result is recorded as reported and marked
/// "not card-attested", and no proof bundle is given for it.
async fn card_optional(env: Env) {
    let a = env.start().await;
    let mut no_card = Device::build(&env, 20, Encoding::Xml, Some(Box::new(NoCard)));
    let mut unverified = untrusted_card_device(&env, 21, Encoding::Wbxml);
    let mut good = Device::new(&env, 22, Encoding::Xml);
    for d in [&no_card, &unverified, &good] {
        d.register(&a).await;
    }
    let (p, c) = package_and_campaign_with(&env, &a, serde_json::json!({"card": "optional"})).await;
    assert_eq!(c["card"], "optional", "{c}");
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let payload_url = format!("{}/packages/{}/payload", a.url, p["id"]);
    for (d, card_gated) in [
        (&mut good, true),
        (&mut no_card, false),
        (&mut unverified, false),
    ] {
        let ev = d.session(&[&a.url], 1).await;
        assert!(exec_accepted(&ev).is_some(), "{}: {ev:?}", d.imei);
        let f = d.tree.fumo(&fumo).unwrap();
        let token = f.ext.get("DeliveryToken").cloned().unwrap_or_default();
        if card_gated {
            assert!(
                f.download_and_update_url.ends_with("/envelope"),
                "{}",
                f.download_and_update_url
            );
            assert!(!token.is_empty());
        } else {
            assert_eq!(f.download_and_update_url, payload_url);
            assert!(token.is_empty(), "a plain delivery carries no token");
        }
    }
    // The device without a card reports success: recorded, not card-attested.
    let alert = no_card
        .tree
        .fumo_mut(&fumo)
        .unwrap()
        .finish(DmFumoResult(200))
        .unwrap();
    let ev = no_card.session_with(&[&a.url], 2, Some(alert)).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    let j = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["imei"] == no_card.imei.as_str())
        .unwrap()
        .clone();
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(j["receipt_status"], "not card-attested", "{j}");
    let r = a
        .get(&format!(
            "/api/v1/updates/{}/proof",
            j["update_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let why = r.text().await.unwrap();
    assert!(why.contains("not card-attested"), "{why}");
    // No security event: a plain result is not a missing receipt.
    let receipt_events =
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM security_events WHERE kind = 'receipt'")
            .fetch_one(a.running.state().db.pool())
            .await
            .unwrap();
    assert_eq!(receipt_events, 0);
    a.stop().await;
}
both!(
    a_card_optional_campaign_gives_plain_fumo_to_devices_without_a_card,
    super::card_optional
);

/// The log lines of this test process, as JSON (one subscriber for the whole process: the
/// server's tasks run on the runtime's threads).
fn capture_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .init();
    buf
}

/// Every DM session ends in one info line (the device, its messages, what was delivered or
/// why not, the result recorded, card-log pages read); a failed authentication is a warning
/// with its reason; no password or digest reaches the log.
async fn session_log(env: Env) {
    let logs = capture_logs();
    let a = env.start().await;
    let mut dev = Device::new(&env, 18, Encoding::Xml);
    let mut no_card = Device::build(&env, 19, Encoding::Xml, Some(Box::new(NoCard)));
    for d in [&dev, &no_card] {
        d.register(&a).await;
    }
    let (_, c) =
        package_and_campaign_with(&env, &a, serde_json::json!({"error_threshold": 100})).await;
    let ev = dev.session(&[&a.url], 1).await;
    assert!(exec_accepted(&ev).is_some(), "{ev:?}");
    no_card.session(&[&a.url], 1).await;
    let job = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    let delivered = job
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["imei"] == dev.imei.as_str())
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ended = |imei: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["message"] == "DM session ended" && l["fields"]["imei"] == imei)
            .collect()
    };
    let mine = ended(&dev.imei);
    assert_eq!(mine.len(), 1, "{text}");
    let f = &mine[0]["fields"];
    assert_eq!(mine[0]["level"], "INFO");
    // Plain values in the log line, never Rust debug text (`Some(…)`).
    assert_eq!(f["delivered_job"], delivered, "{f}");
    assert!(f.get("result_job").is_none(), "{f}");
    assert_eq!(f["messages"], dev.exchanges as u64, "{f}");
    let theirs = ended(&no_card.imei);
    assert_eq!(theirs.len(), 1, "{text}");
    assert_eq!(
        theirs[0]["fields"]["not_delivered"],
        "device has no SIMFOTA card (Get ./SIMFOTA/Card/Nonce answered 404)"
    );
    // The first message of each device is challenged (no provisioned nonce): a warning with
    // the reason.
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "DM authentication failed")
        .collect();
    assert!(!failed.is_empty(), "{text}");
    assert!(
        failed
            .iter()
            .all(|l| l["level"] == "WARN" && l["fields"]["reason"].is_string())
    );
    assert!(
        !text.contains(&dev.password) && !text.contains("srv-secret"),
        "{text}"
    );
    a.stop().await;
}
both!(a_session_ends_in_one_log_line, super::session_log);

/// A device registered with the nonce its account was provisioned with (DM Security 1.2
/// §5.4) authenticates with its first message: no challenge, no security event, one exchange
/// less than a device whose first message is challenged. Nonces that are not base64 or not
/// 1 to 64 bytes are refused at registration.
async fn provisioned_nonce(env: Env) {
    let a = env.start().await;
    let mut challenged = Device::new(&env, 12, Encoding::Xml);
    challenged.register(&a).await;
    let mut provisioned = Device::new(&env, 13, Encoding::Xml);
    let r = a
        .post("/api/v1/devices")
        .json(&serde_json::json!({
            "imei": provisioned.imei, "username": format!("dev-{}", provisioned.imei),
            "password": provisioned.password, "server_password": "srv-secret",
            "nonce": b64(&provisioned.nonce.0),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let ev = challenged.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let ev = provisioned.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert_eq!(
        provisioned.exchanges + 1,
        challenged.exchanges,
        "the provisioned nonce saves the challenge's round trip"
    );
    let events = |imei: String| {
        let pool = a.running.state().db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(e.count), 0) AS BIGINT) FROM security_events e \
                 JOIN devices d ON d.id = e.device_id WHERE d.imei = $1 AND e.kind = 'device_auth'",
            )
            .bind(imei)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(events(challenged.imei.clone()).await, 1);
    assert_eq!(events(provisioned.imei.clone()).await, 0);
    for (nonce, why) in [
        ("not base64!", "nonce: not base64"),
        ("", "nonce: 1 to 64 bytes"),
        (&*b64(&[1u8; 65]), "nonce: 1 to 64 bytes"),
    ] {
        let r = a
            .post("/api/v1/devices/bulk")
            .json(&serde_json::json!({"devices": [{
                "imei": imei(14), "username": "dev-14", "password": "p",
                "server_password": "s", "nonce": nonce,
            }]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{nonce:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains(why) && body.contains("devices[0]"), "{body}");
    }
    a.stop().await;
}
both!(
    a_provisioned_nonce_needs_no_challenge,
    super::provisioned_nonce
);

/// Sends one client message to `url`; answers the status and the body.
async fn send(url: &str, out: &simfota_syncml::session::Outgoing) -> (StatusCode, Vec<u8>) {
    let mut req = http::Client::new()
        .post(format!("{url}/dm"))
        .header("content-type", out.content_type)
        .body(out.body.clone());
    if let Some(h) = &out.hmac {
        req = req.header("x-syncml-hmac", h);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// One message reaches two replicas at once (a device retrying through a load balancer).
/// The session's row is held locked until both have done the message's work and wait to
/// store the session: one wins, and of the loser's work nothing is kept (it answers with the
/// winner's reply). The work here is a security event each handling records (a card that claims an
/// ICCID without a certificate): it is recorded once.
async fn losing_replica_writes_nothing(env: Env) {
    let a = env.start().await;
    let mut cfg_b = env.config("data");
    cfg_b.server_key = Some(env.path("data").join("server-key.pem"));
    let b = Server::start(cfg_b).await;
    let mut dev = Device::new(&env, 7, Encoding::Xml);
    // {1: ICCID} and no certificate.
    let mut claim = vec![0xa1, 0x01, 0x60 + ICCID.len() as u8];
    claim.extend_from_slice(ICCID.as_bytes());
    dev.tree
        .set_value(
            &NodeUri::parse("./SIMFOTA/Card/Info").unwrap(),
            NodeValue {
                format: "b64".into(),
                mime_type: None,
                data: b64(&claim).into_bytes(),
            },
        )
        .unwrap();
    dev.register(&a).await;
    // A first session settles the device's nonce, so the next one authenticates at once.
    let ev = dev.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");

    let pool = a.running.state().db.pool().clone();
    let device_id: i64 = sqlx::query_scalar("SELECT id FROM devices WHERE imei = $1")
        .bind(dev.imei.clone())
        .fetch_one(&pool)
        .await
        .unwrap();
    let claims = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM security_events \
             WHERE kind = 'card_claim' AND device_id = $1",
        )
        .bind(device_id)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = claims().await;

    // Package 1 to replica a: authenticated, the Gets are queued and the session stored.
    let mut client = dev.client(&a.url, 2);
    let out = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut dev.tree)
        .unwrap();
    let (status, body) = send(&a.url, &out).await;
    assert_eq!(status, StatusCode::OK);
    let step = client.receive(&body, None, &mut dev.tree).unwrap();
    let answers = step.reply.expect("the device answers the Gets");

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT version FROM dm_sessions WHERE device_id = $1 FOR UPDATE")
        .bind(device_id)
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    let to_a = tokio::spawn({
        let (url, out) = (a.url.clone(), answers.clone());
        async move { send(&url, &out).await }
    });
    let to_b = tokio::spawn({
        let (url, out) = (b.url.clone(), answers.clone());
        async move { send(&url, &out).await }
    });
    // Both handlings did their work and wait for the session row.
    let mut waiting = 0;
    for _ in 0..200 {
        waiting = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND datname = current_database()",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(
        waiting, 2,
        "both replicas reach the session's compare-and-set"
    );
    assert_eq!(claims().await, before, "nothing is visible before a commit");
    lock.commit().await.unwrap();
    let (from_a, from_b) = (to_a.await.unwrap(), to_b.await.unwrap());
    // One replica wins; the other keeps nothing of its first handling, handles the message
    // again from the session as the winner left it, finds it a repeat, and answers with the
    // winner's reply.
    assert_eq!((from_a.0, from_b.0), (StatusCode::OK, StatusCode::OK));
    assert_eq!(from_a.1, from_b.1, "one reply");
    assert_eq!(claims().await, before + 1, "the loser's event is not kept");
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_losing_replica_writes_nothing() {
    common::on_postgres(losing_replica_writes_nothing).await;
}

async fn bad_input(env: Env) {
    let s = env.start().await;
    let http = http::Client::new();
    let url = format!("{}/dm", s.url);
    // Not XML at all: no header to answer to.
    let r = http
        .post(&url)
        .header("content-type", "application/vnd.syncml.dm+xml")
        .body("<<<")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Wrong media type.
    let r = http
        .post(&url)
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Oversized.
    let status = http::post_oversized(
        &url,
        "application/vnd.syncml.dm+xml",
        vec![b' '; 2 * 1024 * 1024],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Unknown device (preregistered rule) and wrong password: SyncML 401 with a challenge.
    let mut stranger = Device::new(&env, 2, Encoding::Xml);
    let ev = stranger.session(&[&s.url], 1).await;
    assert!(!ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    assert!(format!("{ev:?}").contains("AuthenticationFailed"), "{ev:?}");
    let mut dev = Device::new(&env, 3, Encoding::Xml);
    dev.register(&s).await;
    dev.password = "wrong".into();
    let ev = dev.session(&[&s.url], 1).await;
    assert!(!ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    let m = http::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("simfota_verification_failures_total{kind=\"device_auth\"}"),
        "{m}"
    );
    s.stop().await;
}
both!(bad_input_gets_refusals_not_panics, super::bad_input);

async fn server_nonce(env: Env) {
    let s = env.start().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut dev = Device::new(&env, 5, Encoding::Xml);
    dev.server_nonce = DmNonce(b"device-expects".to_vec());
    let r = s
        .post("/api/v1/devices")
        .json(&serde_json::json!({
            "imei": dev.imei, "username": format!("dev-{}", dev.imei),
            "password": dev.password, "server_password": "srv-secret", "model": "EX-1",
            "notify_addr": sock.local_addr().unwrap().to_string(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The server starts with the stored (empty) nonce; the device refuses its credentials and
    // challenges with the nonce it expects, which the server then uses.
    let ev = dev.session(&[&s.url], 1).await;
    assert!(
        ev.iter()
            .any(|e| matches!(e, ClientEvent::ServerRejected(_))),
        "{ev:?}"
    );
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");

    // Package 0 is digested with the nonce the device expects, not the empty default.
    let r = s
        .post(&format!("/api/v1/devices/{}/notify", dev.imei))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let parse = || simfota_syncml::notification::UnverifiedNotification::parse(&buf[..n]).unwrap();
    assert!(
        parse()
            .verify("simfota", "srv-secret", &dev.server_nonce)
            .is_ok()
    );
    assert!(
        parse()
            .verify("simfota", "srv-secret", &DmNonce(Vec::new()))
            .is_err()
    );

    // The next session starts with the learned nonce: no refusal this time.
    let ev = dev.session(&[&s.url], 2).await;
    assert!(
        !ev.iter()
            .any(|e| matches!(e, ClientEvent::ServerRejected(_))),
        "{ev:?}"
    );
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    s.stop().await;
}
both!(
    server_nonce_is_learned_for_sessions_and_package0,
    super::server_nonce
);

thread_local! {
    /// The card key the next `Device::build` uses (None: a fresh one).
    static CARD_KEY: std::cell::RefCell<Option<SigningKey>> = const { std::cell::RefCell::new(None) };
}

/// What the test card holds; shared with the test so it can change the log between sessions.
struct CardState {
    key: SigningKey,
    info: Vec<u8>,
    server_pub: PublicKey,
    nonce: Option<[u8; 16]>,
    request: Option<simfota_wire::LogReadRequest>,
    records: Vec<[u8; LogEntry::RECORD_LEN]>,
    acked: Option<u32>,
    /// When set, LogResponse answers with these bytes (a replayed export).
    replay: Option<Vec<u8>>,
    last_export: Option<Vec<u8>>,
    /// Admin commands: the issuer key, the highest counter applied, the last answer.
    issuer_pub: Option<PublicKey>,
    admin_counter: u64,
    admin_result: Option<String>,
}

impl CardState {
    /// A card with key `key`, answering `info`, its log `records`, nothing outstanding, and
    /// the issuer of `env` for admin commands.
    fn new(
        env: &Env,
        key: &SigningKey,
        info: Vec<u8>,
        server_pub: PublicKey,
        records: Vec<[u8; LogEntry::RECORD_LEN]>,
    ) -> Self {
        CardState {
            key: key.clone(),
            info,
            server_pub,
            nonce: None,
            request: None,
            records,
            acked: None,
            replay: None,
            last_export: None,
            issuer_pub: Some(PublicKey::from(&env.issuer)),
            admin_counter: 0,
            admin_result: None,
        }
    }
}

/// `card`, shared with the device that relays it, its key the one receipts are signed with.
fn shared_card(key: &SigningKey, card: CardState) -> std::sync::Arc<std::sync::Mutex<CardState>> {
    CARD_KEY.with(|k| *k.borrow_mut() = Some(key.clone()));
    std::sync::Arc::new(std::sync::Mutex::new(card))
}

struct TestCard(std::sync::Arc<std::sync::Mutex<CardState>>);

fn raw_or_b64(v: &NodeValue) -> Vec<u8> {
    std::str::from_utf8(&v.data)
        .ok()
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
        .unwrap_or_else(|| v.data.clone())
}

impl SubtreeHandler for TestCard {
    fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, simfota_syncml::codes::StatusCode> {
        let mut c = self.0.lock().unwrap();
        let out = match uri.as_str() {
            "./SIMFOTA/Card/Info" => c.info.clone(),
            "./SIMFOTA/Card/Nonce" => {
                let mut n = [0u8; 16];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut n);
                c.nonce = Some(n);
                n.to_vec()
            }
            "./SIMFOTA/Card/Servers" => {
                // [["simfota", key, 7]]: this server with update, log read and log ack rights.
                let key = c.server_pub.to_sec1();
                let mut v = vec![0x81, 0x83, 0x67];
                v.extend_from_slice(b"simfota");
                v.extend_from_slice(&[0x58, key.len() as u8]);
                v.extend_from_slice(&key);
                v.push(0x07);
                v
            }
            "./SIMFOTA/Card/AdminResult" => {
                let r = c
                    .admin_result
                    .clone()
                    .ok_or(simfota_syncml::codes::StatusCode::NOT_FOUND)?;
                return Ok(NodeValue::chr(r));
            }
            "./SIMFOTA/Card/LogResponse" => {
                if let Some(r) = c.replay.clone() {
                    r
                } else {
                    let req = c
                        .request
                        .take()
                        .ok_or(simfota_syncml::codes::StatusCode::NOT_FOUND)?;
                    let end = c.records.len() as u32;
                    let first = req.first_seq.min(end);
                    let count = (end - first).min(req.max_count);
                    let head = c
                        .records
                        .last()
                        .map(LogEntry::record_hash)
                        .unwrap_or(Digest([0; 32]));
                    let header = ExportHeader {
                        iccid: Iccid::parse(ICCID).unwrap(),
                        nonce: req.nonce,
                        first_seq: first,
                        count,
                        chain_head: head,
                        log_end: end,
                        // A card built before exports stated the PIN counter.
                        pin: None,
                    };
                    let mut out = vec![0u8; 300 * (count as usize + 2)];
                    let records = c.records.clone();
                    let n = build_export(
                        &mut out,
                        &header,
                        &c.server_pub,
                        b"srv",
                        &c.key,
                        &mut rand_core::OsRng,
                        |seq, slot| {
                            *slot = records[seq as usize];
                            true
                        },
                    )
                    .unwrap();
                    out.truncate(n);
                    c.last_export = Some(out.clone());
                    out
                }
            }
            _ => return Err(simfota_syncml::codes::StatusCode::NOT_FOUND),
        };
        Ok(NodeValue {
            format: "b64".into(),
            mime_type: None,
            data: b64(&out).into_bytes(),
        })
    }

    fn replace(
        &mut self,
        uri: &NodeUri,
        value: NodeValue,
    ) -> Result<(), simfota_syncml::codes::StatusCode> {
        let mut c = self.0.lock().unwrap();
        let bytes = raw_or_b64(&value);
        let refused = simfota_syncml::codes::StatusCode::FORBIDDEN;
        let limits = simfota_wire::Limits::DEFAULT;
        match uri.as_str() {
            "./SIMFOTA/Card/LogRequest" => {
                let r = simfota_wire::LogReadRequest::verify(&bytes, &c.server_pub, &limits)
                    .map_err(|_| refused)?;
                if Some(r.get().nonce.0) != c.nonce.take() {
                    return Err(refused);
                }
                c.request = Some(*r.get());
                Ok(())
            }
            "./SIMFOTA/Card/Admin" => {
                let issuer = c.issuer_pub.ok_or(refused)?;
                let cmd = simfota_wire::AdminCommand::verify(&bytes, &issuer, &limits)
                    .map_err(|_| refused)?
                    .into_inner();
                // The card's rules: its own ICCID, a growing counter ("6602": replayed).
                c.admin_result = Some(if cmd.target.as_str() != ICCID {
                    "6601".into()
                } else if cmd.counter <= c.admin_counter {
                    "6602".into()
                } else {
                    c.admin_counter = cmd.counter;
                    "9000".into()
                });
                Ok(())
            }
            "./SIMFOTA/Card/LogAck" => {
                let a = simfota_wire::LogAck::verify(&bytes, &c.server_pub, &limits)
                    .map_err(|_| refused)?;
                if Some(a.get().nonce.0) != c.nonce.take() {
                    return Err(refused);
                }
                c.acked = Some(a.get().up_to_seq);
                Ok(())
            }
            _ => Err(simfota_syncml::codes::StatusCode::NOT_FOUND),
        }
    }
}

fn chain(records: &mut Vec<[u8; LogEntry::RECORD_LEN]>, events: &[Event]) {
    for ev in events {
        let seq = records.len() as u32;
        let prev = records
            .last()
            .map(LogEntry::record_hash)
            .unwrap_or(Digest([0; 32]));
        let mut e = LogEntry::new(seq, prev, *ev);
        e.imei = Some(simfota_wire::Imei::parse(&imei(9)).unwrap());
        records.push(e.encode().unwrap());
    }
}

async fn card_log(env: Env) {
    let s = env.start().await;
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let mut records = Vec::new();
    chain(
        &mut records,
        &[
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult(200)),
        ],
    );
    let state = shared_card(
        &key,
        CardState::new(&env, &key, card_info(&env, &key), server_pub, records),
    );
    let mut dev = Device::build(
        &env,
        9,
        Encoding::Xml,
        Some(Box::new(TestCard(state.clone()))),
    );
    dev.register(&s).await;
    let log_url = format!("/api/v1/cards/{ICCID}/log");

    // Session 1: request, verified export, three entries stored, acknowledged up to 2. This
    // card's info states no applet version: its acknowledgement waits for a fresh nonce (the
    // flow of applets before 1.1), one round trip more than the real card's.
    dev.session(&[&s.url], 1).await;
    assert_eq!(
        dev.exchanges,
        1 + 5,
        "package 1 is challenged once, then five exchanges"
    );
    let log = s.json(&log_url).await;
    let events: Vec<_> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["authorized", "integrity_ok", "installed"]);
    assert_eq!(log["entries"][2]["fumo_result"], 200);
    assert_eq!(log["card"]["acked_seq"], 2);
    assert_eq!(log["card"]["servers"][0]["id"], "simfota");
    assert_eq!(
        log["card"]["servers"][0]["rights"],
        serde_json::json!(["firmware_update", "log_read", "log_ack"])
    );
    assert_eq!(state.lock().unwrap().acked, Some(2));
    let first_export = state.lock().unwrap().last_export.clone().unwrap();

    // Session 2: two more entries; only they are new (each entry stored exactly once).
    chain(
        &mut state.lock().unwrap().records,
        &[
            Event::Authorized,
            Event::Denied(simfota_wire::DenyReason(3)),
        ],
    );
    dev.session(&[&s.url], 2).await;
    let log = s.json(&log_url).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 5);
    assert_eq!(log["card"]["log_head_seq"], 4);
    assert_eq!(log["card"]["log_status"], "ok");

    // Session 3: the device replays the first export: refused, recorded, nothing stored.
    state.lock().unwrap().replay = Some(first_export);
    dev.session(&[&s.url], 3).await;
    assert_eq!(
        s.json(&log_url).await["entries"].as_array().unwrap().len(),
        5
    );
    // Session 3b: a forged export (one byte of the card's signature changed): refused too.
    let mut forged = state.lock().unwrap().last_export.clone().unwrap();
    let at = forged.len() - 10;
    forged[at] ^= 0x01;
    state.lock().unwrap().replay = Some(forged);
    dev.session(&[&s.url], 30).await;
    assert_eq!(
        s.json(&log_url).await["entries"].as_array().unwrap().len(),
        5
    );
    state.lock().unwrap().replay = None;

    // Session 4: the card's history was rewritten from entry 3 on (a fork): refused and flagged.
    {
        let mut c = state.lock().unwrap();
        c.records.truncate(3);
        chain(
            &mut c.records,
            &[
                Event::IntegrityFailed,
                Event::Authorized,
                Event::IntegrityOk,
            ],
        );
    }
    dev.session(&[&s.url], 4).await;
    let log = s.json(&log_url).await;
    assert_eq!(
        log["entries"].as_array().unwrap().len(),
        5,
        "nothing of the fork stored"
    );
    assert_eq!(log["card"]["log_status"], "fork");
    let m = http::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("simfota_verification_failures_total{kind=\"export\"} 3"),
        "{m}"
    );
    assert!(m.contains("simfota_card_log_entries_stored_total 5"), "{m}");
    // Each refusal is recorded: the export with its reason, and a security event.
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) FROM security_events WHERE kind = 'card_export'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) FROM log_exports WHERE verdict = 'rejected' AND reason LIKE 'export refused%'"
        )
        .await,
        1
    );
    s.stop().await;
}
both!(
    card_log_is_verified_stored_once_and_acknowledged,
    super::card_log
);

async fn proof_bundle(env: Env) {
    let s = env.start().await;
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let mut records = Vec::new();
    chain(&mut records, &[Event::Acknowledged(0)]);
    let state = shared_card(
        &key,
        CardState::new(&env, &key, card_info(&env, &key), server_pub, records),
    );
    let mut dev = Device::build(
        &env,
        7,
        Encoding::Wbxml,
        Some(Box::new(TestCard(state.clone()))),
    );
    dev.register(&s).await;
    dev.session(&[&s.url], 1).await;

    // A campaign; the next session delivers the token.
    let img = vec![3u8; 2000];
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 5,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: Some("fw"),
            version: Some("3.0"),
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
    let p: serde_json::Value = s
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = s
        .post("/api/v1/campaigns")
        .json(&serde_json::json!({"name": "3.0", "package_id": p["id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    dev.session(&[&s.url], 2).await;
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let token = dev
        .tree
        .fumo(&fumo)
        .unwrap()
        .ext
        .get("DeliveryToken")
        .cloned()
        .unwrap();
    let t = DeliveryToken::verify(
        &token,
        &state.lock().unwrap().server_pub,
        &simfota_wire::Limits::DEFAULT,
    )
    .unwrap()
    .into_inner();

    // The card logs authorization, integrity and install of this update and signs a receipt.
    let receipt = {
        let mut c = state.lock().unwrap();
        for ev in [
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult(200)),
        ] {
            let seq = c.records.len() as u32;
            let prev = LogEntry::record_hash(c.records.last().unwrap());
            let mut e = LogEntry::new(seq, prev, ev);
            e.update_id = Some(t.cti);
            e.imei = Some(t.imei);
            c.records.push(e.encode().unwrap());
        }
        let r = Receipt {
            iccid: Iccid::parse(ICCID).unwrap(),
            update_id: t.cti,
            result: FumoResult(200),
            log_seq: c.records.len() as u32 - 1,
            chain_head: LogEntry::record_hash(c.records.last().unwrap()),
        };
        let mut buf = [0u8; 512];
        let n = r.sign(&c.key, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    let mut alert = dev
        .tree
        .fumo_mut(&fumo)
        .unwrap()
        .finish(DmFumoResult(200))
        .unwrap();
    alert.items.push(Item {
        source: Some(Location::new("./FUMO/fw/Ext/Receipt")),
        meta: Some(Meta {
            format: Some("b64".into()),
            ..Meta::default()
        }),
        data: Some(Data::text(b64(&receipt))),
        ..Item::default()
    });
    let uid = hex::encode(t.cti.as_bytes());
    // Before the result and receipt arrive there is no proof.
    let r = s
        .get(&format!("/api/v1/updates/{uid}/proof"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // The session reporting the result also reads the card log (no job left to deliver).
    dev.session_with(&[&s.url], 3, Some(alert)).await;
    let r = s
        .get(&format!("/api/v1/updates/{uid}/proof"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bundle: simfota_server::proof::Bundle = r.json().await.unwrap();

    let issuer = PublicKey::from(&env.issuer);
    let proven = simfota_server::proof::verify(&bundle, &issuer).unwrap();
    assert_eq!(proven.iccid, ICCID);
    assert_eq!(proven.fumo_result, 200);
    assert_eq!(proven.imei, dev.imei);
    assert_eq!(
        proven.events,
        ["authorized", "integrity_ok", "installed(200)"]
    );

    // Another issuer, a tampered record, a dropped record: refused.
    let other = PublicKey::from(&SigningKey::random(&mut rand_core::OsRng));
    assert!(simfota_server::proof::verify(&bundle, &other).is_err());
    let mut forged = bundle.clone();
    let mut rec = base64::engine::general_purpose::STANDARD
        .decode(&forged.log_records[2])
        .unwrap();
    rec[40] ^= 1;
    forged.log_records[2] = b64(&rec);
    assert!(simfota_server::proof::verify(&forged, &issuer).is_err());
    let mut cut = bundle.clone();
    cut.log_records.pop();
    assert!(simfota_server::proof::verify(&cut, &issuer).is_err());
    s.stop().await;
}
both!(
    proof_bundle_verifies_offline_and_refuses_tampering,
    super::proof_bundle
);

async fn admin_relay(env: Env) {
    let s = env.start().await;
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let state = shared_card(
        &key,
        CardState::new(&env, &key, card_info(&env, &key), server_pub, Vec::new()),
    );
    let mut dev = Device::build(
        &env,
        11,
        Encoding::Xml,
        Some(Box::new(TestCard(state.clone()))),
    );
    dev.register(&s).await;
    dev.session(&[&s.url], 1).await; // the card becomes known
    let lists_read = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT lists_read_ms FROM cards WHERE iccid = $1")
            .bind(ICCID)
            .fetch_one(s.running.state().db.pool())
            .await
            .unwrap()
    };
    // The card's lists are read in its first session, then not again before they are due.
    let first = lists_read()
        .await
        .expect("lists read in the card's first session");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    dev.session(&[&s.url], 4).await;
    assert_eq!(
        lists_read().await,
        Some(first),
        "read again before they were due"
    );
    // Older than the refresh period (one day by default): read again.
    sqlx::query("UPDATE cards SET lists_read_ms = lists_read_ms - 86400001 WHERE iccid = $1")
        .bind(ICCID)
        .execute(s.running.state().db.pool())
        .await
        .unwrap();
    dev.session(&[&s.url], 5).await;
    let refreshed = lists_read().await.unwrap();
    assert!(
        refreshed >= first,
        "{refreshed} < {first}: stale lists not read again"
    );

    let command = |target: &str, counter: u64, signer: &SigningKey| {
        let cmd = simfota_wire::AdminCommand {
            target: Iccid::parse(target).unwrap(),
            counter,
            change: simfota_wire::AdminChange::RemoveServer {
                id: simfota_wire::ServerId::new("old-dm").unwrap(),
            },
        };
        let mut buf = [0u8; 512];
        let n = cmd.sign(signer, &mut buf).unwrap();
        b64(&buf[..n])
    };
    let url = format!("/api/v1/cards/{ICCID}/admin");
    let cmd1 = command(ICCID, 1, &env.issuer);
    let r = s
        .post(&url)
        .json(&serde_json::json!({"command": cmd1, "note": "drop old-dm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Not signed by the issuer, or for another card: refused at the door.
    let stranger = SigningKey::random(&mut rand_core::OsRng);
    let r = s
        .post(&url)
        .json(&serde_json::json!({"command": command(ICCID, 2, &stranger)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = s
        .post(&url)
        .json(&serde_json::json!({"command": command("8949440000001234572", 2, &env.issuer)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    dev.session(&[&s.url], 2).await;
    let q = s.json(&url).await;
    assert_eq!(q[0]["state"], "applied", "{q}");
    assert_eq!(q[0]["result"], "9000");
    // An applied admin command may have changed the lists: due in the next session.
    assert_eq!(
        lists_read().await,
        None,
        "lists not due after an admin command"
    );
    // The same command again: relayed, the card refuses the replay, the refusal is recorded.
    s.post(&url)
        .json(&serde_json::json!({"command": cmd1}))
        .send()
        .await
        .unwrap();
    dev.session(&[&s.url], 3).await;
    let q = s.json(&url).await;
    assert_eq!(q[1]["state"], "refused", "{q}");
    assert_eq!(q[1]["result"], "6602");
    assert!(
        lists_read().await.is_some(),
        "lists read again after the admin command"
    );
    s.stop().await;
}
both!(admin_commands_are_relayed_and_answered, super::admin_relay);

/// A card the operator registered and queued an admin command for before any device showed it:
/// the first session of a device offering that card binds it and relays the command (the
/// statement registering the card says whether its queue holds one).
async fn admin_relay_on_first_contact(env: Env) {
    let s = env.start().await;
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap();
    let key = SigningKey::random(&mut rand_core::OsRng);
    let info = card_info(&env, &key);
    let state = shared_card(
        &key,
        CardState::new(&env, &key, info.clone(), server_pub, Vec::new()),
    );
    let mut dev = Device::build(
        &env,
        12,
        Encoding::Xml,
        Some(Box::new(TestCard(state.clone()))),
    );
    dev.offer = true;
    dev.register(&s).await;
    // The certificate inside the Card Info: after {1: ICCID, 4: bstr16 header}.
    let certificate = &info[7 + ICCID.len()..];
    let r = s
        .post("/api/v1/cards")
        .json(&serde_json::json!({"certificate": b64(certificate)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let url = format!("/api/v1/cards/{ICCID}/admin");
    let cmd = simfota_wire::AdminCommand {
        target: Iccid::parse(ICCID).unwrap(),
        counter: 1,
        change: simfota_wire::AdminChange::RemoveServer {
            id: simfota_wire::ServerId::new("old-dm").unwrap(),
        },
    };
    let mut buf = [0u8; 512];
    let n = cmd.sign(&env.issuer, &mut buf).unwrap();
    let r = s
        .post(&url)
        .json(&serde_json::json!({"command": b64(&buf[..n])}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let q = s.json(&url).await;
    assert_eq!(q[0]["state"], "queued", "{q}");

    dev.session(&[&s.url], 1).await;
    let d = s.json(&format!("/api/v1/devices/{}", dev.imei)).await;
    assert_eq!(d["device"]["iccid"], ICCID, "card bound: {d}");
    let q = s.json(&url).await;
    assert_eq!(q[0]["state"], "applied", "{q}");
    assert_eq!(q[0]["result"], "9000");
    s.stop().await;
}
both!(
    an_admin_command_queued_before_first_contact_is_relayed_then,
    super::admin_relay_on_first_contact
);

/// A one-time dashboard sign-in link landing on `next` (each chromium run is a fresh browser:
/// it signs in through a link of its own).
async fn sign_in(s: &Server, next: &str) -> String {
    let r = s
        .post("/api/v1/ui/links")
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

/// The `<tr>` of `dom` with a cell (`td` or `th`) holding exactly `cell`.
fn row_with<'a>(dom: &'a str, cell: &str) -> &'a str {
    let at = dom
        .find(&format!(">{cell}</t"))
        .unwrap_or_else(|| panic!("no cell {cell}: {dom}"));
    let start = dom[..at].rfind("<tr").unwrap();
    let end = at + dom[at..].find("</tr>").unwrap();
    &dom[start..end]
}

async fn dashboard(env: Env) {
    let s = env.start().await;
    let imei = imei(21);
    let card = real_card(&env, &imei);
    let mut dev = device_with_card(&env, 21, Encoding::Xml, &card);
    dev.register(&s).await;
    // One refused attempt through a server the card does not list.
    unlisted_server_attempts(&env, &card, &imei, 1);
    dev.session(&[&s.url], 1).await;

    // A campaign, delivered in a DM session; the card authorizes, checks integrity, logs the
    // install and signs the receipt; the device reports 1226 and the log is read.
    let img = vec![1u8; 1500];
    let envelope = test_envelope(&env, &img, 9);
    let form = http::Form::new()
        .part("envelope", http::Part::bytes(envelope.clone()))
        .part("payload", http::Part::bytes(img.clone()));
    let p: serde_json::Value = s
        .post("/api/v1/packages")
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c: serde_json::Value = s
        .post("/api/v1/campaigns")
        .json(&serde_json::json!({"name": "Spring rollout", "package_id": p["id"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    dev.session(&[&s.url], 2).await;
    let fumo = NodeUri::parse("./FUMO/fw").unwrap();
    let token = dev.tree.fumo(&fumo).unwrap().ext["DeliveryToken"].clone();
    let t = DeliveryToken::verify(&token, &server_pub(&env), &simfota_wire::Limits::DEFAULT)
        .unwrap()
        .into_inner();
    let receipt = {
        use sha2::Digest as _;
        let mut c = card.lock().unwrap();
        c.authorize(&token, &envelope).unwrap();
        let digest = Digest(sha2::Sha256::digest(&img).into());
        c.payload_digest(&digest, img.len() as u64).unwrap();
        c.report_result(t.cti.as_bytes(), 200, None).unwrap()
    };
    let mut alert = dev
        .tree
        .fumo_mut(&fumo)
        .unwrap()
        .finish(DmFumoResult(200))
        .unwrap();
    alert.items.push(Item {
        source: Some(Location::new("./FUMO/fw/Ext/Receipt")),
        meta: Some(Meta {
            format: Some("b64".into()),
            ..Meta::default()
        }),
        data: Some(Data::text(b64(&receipt))),
        ..Item::default()
    });
    dev.session_with(&[&s.url], 3, Some(alert)).await;
    let job = &s.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await[0];
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["receipt_status"], "verified");

    // What the card wrote, as the API gives it: the install entry names release and server.
    let log = s.json(&format!("/api/v1/cards/{ICCID}/log")).await;
    let events: Vec<_> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        events,
        ["refusals", "authorized", "integrity_ok", "installed"]
    );
    // The unlisted server's attempt is counted, naming nothing the card did not verify.
    let refusals = &log["entries"][0];
    assert_eq!(refusals["server_id"], serde_json::Value::Null);
    assert_eq!(
        refusals["refusal_counts"][0]["reason"],
        "server_not_authorized"
    );
    assert_eq!(refusals["refusal_counts"][0]["count"], 1);
    assert_eq!(
        log["entries"][1]["unverified_fields"],
        serde_json::json!([])
    );
    let installed = &log["entries"][3];
    assert_eq!(installed["release_name"], "fw");
    assert_eq!(installed["release_version"], "2.0");
    assert_eq!(installed["server_id"], "simfota");
    assert_eq!(installed["originator"], "oem");
    assert_eq!(installed["fumo_result"], 200);
    assert_eq!(installed["free_device"], false);

    // The proof bundle of this update, from the real card's records.
    let uid = hex::encode(t.cti.as_bytes());
    let bundle: simfota_server::proof::Bundle = s
        .get(&format!("/api/v1/updates/{uid}/proof"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle.entries[0].event, "refusals(server_not_authorized=1)");
    let proven = simfota_server::proof::verify(&bundle, &PublicKey::from(&env.issuer)).unwrap();
    assert_eq!(
        proven.events,
        ["authorized", "integrity_ok", "installed(200)"]
    );
    assert!(!proven.free_device && proven.consent.is_none());
    assert_eq!(proven.entries[2].release.as_deref(), Some("fw"));
    // A bundle whose decoded entries do not match its records is refused.
    let mut lying = bundle.clone();
    lying.entries[0].event = "refusals(user_declined=1)".into();
    assert!(simfota_server::proof::verify(&lying, &PublicKey::from(&env.issuer)).is_err());

    // What the dashboard shows of it, in a browser (screenshots of every page:
    // tests/dashboard.rs). Overview: what a person sees after signing in.
    let url = sign_in(&s, "/ui").await;
    let Some(out) = chromium(&["--dump-dom"], &url) else {
        s.stop().await;
        return;
    };
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("Fleet overview"), "{dom}");
    assert!(
        dom.contains("Spring rollout") && dom.contains("completed"),
        "{dom}"
    );
    assert!(dom.contains("<strong>1</strong> devices"), "{dom}");

    // The device page: its card log as the server verified it.
    let device_page = format!("/ui/devices/{}", dev.imei);
    let url = sign_in(&s, &device_page).await;
    let dom =
        String::from_utf8_lossy(&chromium(&["--dump-dom"], &url).unwrap().stdout).into_owned();
    assert!(dom.contains("Card log (verified by the server)"), "{dom}");
    let row = row_with(&dom, "installed");
    assert!(
        row.contains(">fw 2.0<") && row.contains(">simfota<") && row.contains(">200<"),
        "{row}"
    );
    let row = row_with(&dom, "refusals");
    assert!(
        row.contains(">refusals counted: 1 × server_not_authorized<") && !row.contains("rogue"),
        "{row}"
    );
    assert_eq!(dom.matches("class=\"ok\">verified<").count(), 4, "{dom}");
    // The update's job, its campaign and its proof, to download.
    let job_row = row_with(&dom, "fw 2.0");
    assert!(
        job_row.contains(&format!("href=\"/ui/updates/{uid}/proof\"")),
        "{job_row}"
    );

    // The card page: authorized servers, policy, originators, log.
    let card_page = format!("/ui/cards/{ICCID}");
    let url = sign_in(&s, &card_page).await;
    let dom =
        String::from_utf8_lossy(&chromium(&["--dump-dom"], &url).unwrap().stdout).into_owned();
    let lists = &dom[dom.find("<h2>Authorized servers</h2>").unwrap()..];
    let row = row_with(lists, "simfota");
    assert!(
        row.contains("firmware update, log read, log ack, dm other"),
        "{row}"
    );
    assert!(
        row_with(&dom, "Unauthorized servers").contains(">refuse<"),
        "{dom}"
    );
    assert!(
        row_with(&dom, "Integrity check").contains(">device digest<"),
        "{dom}"
    );
    assert!(row_with(lists, "oem").contains("<code>04"), "{dom}");
    assert!(row_with(&dom, "installed").contains(">fw 2.0<"), "{dom}");
    // Each entry with the card's date.
    let installed = row_with(&dom, "installed");
    assert!(
        installed.contains(" UTC</span>") && !installed.contains("no trusted time"),
        "{installed}"
    );

    // The campaign page with its live (htmx) progress.
    let campaign_page = format!("/ui/campaigns/{}", c["id"]);
    let url = sign_in(&s, &campaign_page).await;
    let dom =
        String::from_utf8_lossy(&chromium(&["--dump-dom"], &url).unwrap().stdout).into_owned();
    assert!(
        dom.contains("1 of 1 updated") && dom.contains("succeeded"),
        "{dom}"
    );

    // Without the token: a sign-in hint, no data.
    let out = chromium(&["--dump-dom"], &format!("{}/ui", s.url)).unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains("Sign in") && !dom.contains(&dev.imei), "{dom}");
    s.stop().await;
}
both!(dashboard_shows_a_finished_campaign, super::dashboard);

// ---- The real card: the applet in process, reached through the device's card subtree ----

type InProc = simfota_cardlink::InProcessChannel<
    simfota_cardlink::AppletCard<simfota_cardlink::card::CardMemory>,
>;
type RealCard = simfota_device::cardnodes::SharedCard<InProc>;

fn server_pub(env: &Env) -> PublicKey {
    simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(env.path("data").join("server-pub.pem")).unwrap(),
    )
    .unwrap()
}

/// A blank card personalized by the test issuer for this server (every right), trusting the
/// test originator, refusing unlisted servers; opened and bound to `imei` as the agent does.
fn real_card(env: &Env, imei: &str) -> RealCard {
    use simfota_cardlink::client::{CardClient, Personalization};
    use simfota_wire::{IntegrityMode, Policy, Rights, UnauthorizedRule};
    let mut c = CardClient::new(simfota_cardlink::InProcessChannel::new(
        simfota_cardlink::AppletCard::new(simfota_cardlink::card::CardMemory::new()),
        "in-process",
    ));
    c.personalize(
        &env.issuer,
        &Personalization {
            issuer_name: "test-issuer".into(),
            iccid: Iccid::parse(ICCID).unwrap(),
            imsi: "001010123456789".into(),
            pin: ("1234".into(), 3),
            puk: ("12345678".into(), 10),
            servers: vec![("simfota".into(), server_pub(env), Rights::ALL)],
            originators: vec![("oem".into(), PublicKey::from(&env.originator))],
            policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
        },
    )
    .unwrap();
    c.reopen(Some(&simfota_wire::Imei::parse(imei).unwrap()))
        .unwrap();
    std::sync::Arc::new(std::sync::Mutex::new(c))
}

/// A device whose `./SIMFOTA/Card` is the agent's own card subtree over `card`.
fn device_with_card(env: &Env, n: u32, encoding: Encoding, card: &RealCard) -> Device {
    let nodes = simfota_device::cardnodes::CardNodes::new(card.clone()).unwrap();
    Device::build(env, n, encoding, Some(Box::new(nodes)))
}

fn test_envelope(env: &Env, img: &[u8], sequence: u64) -> Vec<u8> {
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

/// `n` update attempts through a server the card does not list: each one is refused by the
/// card (policy Refuse) and counted in the card's open refusal tally.
fn unlisted_server_attempts(env: &Env, card: &RealCard, imei: &str, n: u8) {
    let rogue = SigningKey::random(&mut rand_core::OsRng);
    let envelope = test_envelope(env, &[5u8; 100], 3);
    let mut c = card.lock().unwrap();
    for i in 0..n {
        let nonce = c.get_nonce().unwrap();
        let token = DeliveryToken {
            iss: simfota_wire::ServerId::new("rogue").unwrap(),
            iat: 1_700_000_000,
            exp: 1_800_000_000,
            cti: UpdateId::new(&[i; 8]).unwrap(),
            nonce,
            iccid: Iccid::parse(ICCID).unwrap(),
            imei: simfota_wire::Imei::parse(imei).unwrap(),
            manifest_digest: Digest([0; 32]),
            nbf: None,
            charging_ref: None,
        }
        .to_vec(&rogue)
        .unwrap();
        let err = c.authorize(&token, &envelope).unwrap_err();
        assert_eq!(
            err.reason(),
            Some(simfota_cardlink::card::Reason::ServerNotAuthorized)
        );
    }
}

/// `n` refusals of the server's own fresh tokens naming another card: each one a log entry
/// of its own (a listed server's fresh token is what the card logs one by one).
fn wrong_card_attempts(s: &Server, card: &RealCard, imei: &str, n: u8) {
    let key = s.running.state().keys.server.clone();
    let mut c = card.lock().unwrap();
    for i in 0..n {
        let nonce = c.get_nonce().unwrap();
        let token = DeliveryToken {
            iss: simfota_wire::ServerId::new("simfota").unwrap(),
            iat: 1_700_000_000,
            exp: 1_800_000_000,
            cti: UpdateId::new(&[0xAA, i]).unwrap(),
            nonce,
            iccid: (0..10)
                .map(|d| format!("8988211000000000002{d}"))
                .find_map(|s| Iccid::parse(&s).ok())
                .unwrap(),
            imei: simfota_wire::Imei::parse(imei).unwrap(),
            manifest_digest: Digest([0; 32]),
            nbf: None,
            charging_ref: None,
        }
        .to_vec(&key)
        .unwrap();
        let err = c.authorize(&token, b"-").unwrap_err();
        assert_eq!(
            err.reason(),
            Some(simfota_cardlink::card::Reason::WrongCard)
        );
    }
}

async fn count(s: &Server, sql: &str) -> i64 {
    use sqlx::Row as _;
    sqlx::query(sql)
        .fetch_one(s.running.state().db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>(0)
        .unwrap()
}

async fn card_log_pages(env: Env) {
    let s = env.start().await;
    let imei = imei(31);
    let card = real_card(&env, &imei);
    let mut dev = device_with_card(&env, 31, Encoding::Wbxml, &card);
    dev.register(&s).await;
    // 45 entries: 12 pages of the applet's 4 records.
    wrong_card_attempts(&s, &card, &imei, 45);

    // One session reads the whole log, page after page, each page acknowledged.
    let ev = dev.session(&[&s.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    // Two exchanges a page (the request with its nonce, then the acknowledgement on the page's
    // own nonce with the next page's nonce), after package 1 (challenged once: the device's
    // first session) and the Gets; the last acknowledgement's Status ends the session.
    assert_eq!(dev.exchanges, 1 + 2 + 12 * 2, "{ev:?}");
    let log = s.json(&format!("/api/v1/cards/{ICCID}/log")).await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 45);
    let mut prev = hex::encode([0u8; 32]);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as i64);
        assert_eq!(e["event"], "denied");
        assert_eq!(e["deny_reason"], "wrong_card");
        assert_eq!(e["deny_code"], 5);
        assert_eq!(e["server_id"], "simfota");
        assert_eq!(e["imei"], imei.as_str());
        // The server's signed token named these (the IMEI: refused before the card compared
        // it, so it stays the device's word).
        assert_eq!(e["unverified_fields"], serde_json::json!(["imei"]));
        // The chain runs unbroken across page boundaries.
        let raw: [u8; LogEntry::RECORD_LEN] = hex::decode(e["raw"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let decoded = LogEntry::decode(&raw).unwrap();
        assert_eq!(hex::encode(decoded.prev_hash.0), prev, "entry {i}");
        prev = e["entry_hash"].as_str().unwrap().to_owned();
        assert_eq!(prev, hex::encode(LogEntry::record_hash(&raw).0));
    }
    assert_eq!(log["card"]["log_status"], "ok");
    assert_eq!(log["card"]["log_head_seq"], 44);
    assert_eq!(log["card"]["acked_seq"], 44);
    // The pages stated the PIN counter: untouched since personalization.
    assert_eq!(log["card"]["pin"]["tries_left"], 3, "{}", log["card"]);
    assert_eq!(log["card"]["pin"]["max_tries"], 3);
    assert_eq!(log["card"]["pin"]["blocked"], false);
    assert_eq!(card.lock().unwrap().card_info().unwrap().log_acked, 45);
    assert_eq!(
        count(
            &s,
            "SELECT COUNT(*) FROM log_exports WHERE verdict = 'accepted'"
        )
        .await,
        12
    );
    // The card's own configuration came along in the same session.
    assert_eq!(log["card"]["policy"]["unauthorized"], "refuse");
    assert_eq!(log["card"]["policy"]["integrity"], "device_digest");
    assert_eq!(log["card"]["originators"][0]["id"], "oem");
    assert_eq!(
        log["card"]["originators"][0]["key"],
        hex::encode(PublicKey::from(&env.originator).to_sec1())
    );
    assert_eq!(log["card"]["servers"][0]["id"], "simfota");

    // Later entries continue the stored chain in the next session; nothing is stored twice.
    wrong_card_attempts(&s, &card, &imei, 6);
    dev.session(&[&s.url], 2).await;
    let log = s.json(&format!("/api/v1/cards/{ICCID}/log")).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), 51);
    assert_eq!(log["card"]["log_status"], "ok");
    assert_eq!(log["card"]["acked_seq"], 50);
    let m = http::get(format!("{}/metrics", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("simfota_card_log_entries_stored_total 51"),
        "{m}"
    );
    s.stop().await;
}
both!(
    real_card_log_is_read_across_pages_in_one_session,
    super::card_log_pages
);

/// A dashboard page as an operator's browser gets it after following a sign-in link (the
/// link's session cookie), without a browser.
async fn ui_page(s: &Server, path: &str) -> String {
    let link = sign_in(s, path).await;
    let page = format!("{}{path}", s.url);
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let r = agent.get(&link).call().unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let mut r = agent.get(&page).header("cookie", &cookie).call().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.body_mut().read_to_string().unwrap()
    })
    .await
    .unwrap()
}

/// The "PIN tries left" fact of a card page.
fn pin_fact(page: &str) -> &str {
    let at = page
        .find(">PIN tries left<")
        .unwrap_or_else(|| panic!("no PIN fact: {page}"));
    &page[at..at + page[at..].find("</div>").unwrap()]
}

/// The card's PIN counter reaches the operator from the pages the card signs: a wrong PIN
/// entered on the device (which the card does not log) shows as one try fewer after the next
/// session, dated when the server stored it; a session that finds the same counter writes
/// nothing; a blocked PIN shows in the warning colour.
async fn pin_tries(env: Env) {
    let s = env.start().await;
    let imei = imei(35);
    let card = real_card(&env, &imei);
    let mut dev = device_with_card(&env, 35, Encoding::Xml, &card);
    dev.register(&s).await;
    let card_url = format!("/api/v1/cards/{ICCID}");
    let ev = dev.session(&[&s.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let c = s.json(&card_url).await;
    assert_eq!(c["pin"]["tries_left"], 3, "{c}");
    assert_eq!(c["pin"]["max_tries"], 3, "{c}");
    let head = c["log_head_seq"].clone();

    // The user types a wrong PIN on the device: the counter drops, the card logs nothing.
    card.lock().unwrap().verify_pin("9999").unwrap_err();
    let before = simfota_server::db::now_ms();
    let ev = dev.session(&[&s.url], 2).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let c = s.json(&card_url).await;
    assert_eq!(c["pin"]["tries_left"], 2, "{c}");
    assert_eq!(c["pin"]["max_tries"], 3);
    assert_eq!(c["pin"]["blocked"], false);
    let reported = c["pin"]["reported_ms"].as_i64().unwrap();
    assert!(reported >= before, "{c}");
    assert_eq!(c["log_head_seq"], head, "no new log entry");
    let page = ui_page(&s, &format!("/ui/cards/{ICCID}")).await;
    let fact = pin_fact(&page);
    assert!(
        fact.contains("<strong>2 of 3</strong> as of <time datetime=\""),
        "{fact}"
    );
    assert!(
        fact.contains("just now</time><span class=\"abs\">20") && fact.contains(" UTC</span>"),
        "{fact}"
    );

    // The same counter again: the row keeps the report it has.
    dev.session(&[&s.url], 3).await;
    let c = s.json(&card_url).await;
    assert_eq!(c["pin"]["reported_ms"], reported, "{c}");

    // Two more wrong PINs block it.
    for _ in 0..2 {
        card.lock().unwrap().verify_pin("9999").unwrap_err();
    }
    dev.session(&[&s.url], 4).await;
    let c = s.json(&card_url).await;
    assert_eq!(c["pin"]["tries_left"], 0, "{c}");
    assert_eq!(c["pin"]["blocked"], true);
    let page = ui_page(&s, &format!("/ui/cards/{ICCID}")).await;
    let fact = pin_fact(&page);
    assert!(
        fact.contains("<strong class=\"bad\">blocked</strong> as of"),
        "{fact}"
    );
    s.stop().await;
}
both!(pin_tries_reach_the_card_page, super::pin_tries);

async fn page_bound(env: Env) {
    // A card whose pages are large (16 records, the server's request size) and whose log is
    // longer than one session's bound: the session stops at the bound, the next one goes on.
    let s = env.start().await;
    let key = SigningKey::random(&mut rand_core::OsRng);
    let per_session =
        (simfota_server::cardlog::MAX_PAGES_PER_SESSION * simfota_server::cardlog::PAGE) as usize;
    let mut records = Vec::new();
    chain(&mut records, &vec![Event::IntegrityOk; per_session + 5]);
    let state = shared_card(
        &key,
        CardState {
            issuer_pub: None,
            ..CardState::new(&env, &key, card_info(&env, &key), server_pub(&env), records)
        },
    );
    let mut dev = Device::build(
        &env,
        33,
        Encoding::Xml,
        Some(Box::new(TestCard(state.clone()))),
    );
    dev.register(&s).await;
    let url = format!("/api/v1/cards/{ICCID}/log");
    dev.session(&[&s.url], 1).await;
    let log = s.json(&url).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), per_session);
    assert_eq!(state.lock().unwrap().acked, Some(per_session as u32 - 1));
    dev.session(&[&s.url], 2).await;
    let log = s.json(&url).await;
    assert_eq!(log["entries"].as_array().unwrap().len(), per_session + 5);
    assert_eq!(log["card"]["log_status"], "ok");
    assert_eq!(state.lock().unwrap().acked, Some(per_session as u32 + 4));
    s.stop().await;
}
both!(
    log_read_stops_at_the_page_bound_and_resumes,
    super::page_bound
);

async fn hmac_and_enrolment(env: Env) {
    let mut cfg = env.config("data");
    cfg.enrolment = simfota_server::Enrolment::SharedSecret;
    cfg.enrolment_password = Some("enrol-pw".into());
    let s = Server::start(cfg).await;

    // A registered device on HMAC (DM Security 1.2 §5.4): both sides prove themselves in the
    // x-syncml-hmac header.
    let mut dev = Device::new(&env, 41, Encoding::Xml);
    dev.auth = AuthScheme::Hmac;
    dev.register(&s).await;
    let ev = dev.session(&[&s.url], 1).await;
    assert!(ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    let d = s.json(&format!("/api/v1/devices/{}", dev.imei)).await;
    assert_eq!(d["device"]["auth"], "hmac");
    assert_eq!(d["device"]["fw_version"], "1.0");

    // Shared-secret enrolment: an unknown device with the enrolment password is registered.
    let mut newcomer = Device::new(&env, 42, Encoding::Wbxml);
    newcomer.password = "enrol-pw".into();
    let ev = newcomer.session(&[&s.url], 1).await;
    assert!(ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    let d = s.json(&format!("/api/v1/devices/{}", newcomer.imei)).await;
    assert_eq!(d["device"]["enrolled_by"], "enrolment");
    assert_eq!(d["device"]["username"], format!("dev-{}", newcomer.imei));
    // It keeps working with its credentials in the next session.
    let ev = newcomer.session(&[&s.url], 2).await;
    assert!(ev.contains(&ClientEvent::Authenticated), "{ev:?}");

    // An unknown device with another password is refused and not registered.
    let mut stranger = Device::new(&env, 43, Encoding::Xml);
    stranger.password = "guess".into();
    let ev = stranger.session(&[&s.url], 1).await;
    assert!(!ev.contains(&ClientEvent::Authenticated), "{ev:?}");
    let r = s
        .get(&format!("/api/v1/devices/{}", stranger.imei))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}
both!(
    hmac_devices_and_shared_secret_enrolment,
    super::hmac_and_enrolment
);

/// Card Info that claims an ICCID without a certificate (threat: a device takes over another
/// device's verified card): the device is not bound to that card and the claim is recorded.
async fn claimed_iccid(env: Env) {
    let s = env.start().await;
    let info_node = NodeUri::parse("./SIMFOTA/Card/Info").unwrap();
    let b64_value = |v: Vec<u8>| NodeValue {
        format: "b64".into(),
        mime_type: None,
        data: b64(&v).into_bytes(),
    };
    // The card's own device: its certificate verifies, the card is known and verified.
    let mut owner = Device::new(&env, 31, Encoding::Xml);
    owner.register(&s).await;
    owner.session(&[&s.url], 1).await;
    let d = s.json(&format!("/api/v1/devices/{}", owner.imei)).await;
    assert_eq!(d["device"]["iccid"], ICCID);

    // Another device claims that ICCID: {1: ICCID}, no certificate.
    let mut other = Device::new(&env, 32, Encoding::Xml);
    let mut claim = vec![0xa1, 0x01, 0x60 + ICCID.len() as u8];
    claim.extend_from_slice(ICCID.as_bytes());
    other.tree.set_value(&info_node, b64_value(claim)).unwrap();
    other.register(&s).await;
    other.session(&[&s.url], 1).await;
    let d = s.json(&format!("/api/v1/devices/{}", other.imei)).await;
    assert_eq!(d["device"]["iccid"], serde_json::Value::Null, "{d}");
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM security_events WHERE kind = 'card_claim' AND device_id = $1",
    )
    .bind(d["device"]["id"].as_i64().unwrap())
    .fetch_one(s.running.state().db.pool())
    .await
    .unwrap();
    assert!(detail.contains(ICCID), "{detail}");

    // The same claim with a certificate from another issuer: not bound either.
    let forger = SigningKey::random(&mut rand_core::OsRng);
    let cert = CardCertificate {
        issuer: IssuerId::new("test-issuer").unwrap(),
        iccid: Iccid::parse(ICCID).unwrap(),
        card_key: PublicKey::from(&other.card),
        imsi: None,
    };
    let mut buf = [0u8; 512];
    let n = cert.sign(&forger, &mut buf).unwrap();
    let mut forged = vec![0xa2, 0x01, 0x60 + ICCID.len() as u8];
    forged.extend_from_slice(ICCID.as_bytes());
    forged.extend_from_slice(&[0x04, 0x59]);
    forged.extend_from_slice(&(n as u16).to_be_bytes());
    forged.extend_from_slice(&buf[..n]);
    other.tree.set_value(&info_node, b64_value(forged)).unwrap();
    other.session(&[&s.url], 2).await;
    let d = s.json(&format!("/api/v1/devices/{}", other.imei)).await;
    assert_eq!(d["device"]["iccid"], serde_json::Value::Null, "{d}");
    // The owner keeps its card.
    let d = s.json(&format!("/api/v1/devices/{}", owner.imei)).await;
    assert_eq!(d["device"]["iccid"], ICCID);
    s.stop().await;
}
both!(
    claimed_iccid_without_certificate_binds_nothing,
    super::claimed_iccid
);

/// A device account whose stored auth scheme is neither md5 nor hmac (a hand-edited or
/// future row): the session is refused with the reason, not run as md5.
async fn unknown_auth_scheme(env: Env) {
    let s = env.start().await;
    let mut dev = Device::new(&env, 41, Encoding::Xml);
    dev.register(&s).await;
    sqlx::query("UPDATE devices SET auth_scheme = 'sha256' WHERE imei = $1")
        .bind(dev.imei.clone())
        .execute(s.running.state().db.pool())
        .await
        .unwrap();
    let mut client = ClientSession::new(
        ClientConfig {
            client_id: format!("IMEI:{}", dev.imei),
            server_id: "simfota".into(),
            server_uri: format!("{}/dm", s.url),
            client_credentials: Credentials::new(format!("dev-{}", dev.imei), dev.password.clone()),
            server_credentials: Credentials::new("simfota", "srv-secret"),
            auth: AuthScheme::Md5,
            require_server_auth: true,
            encoding: Encoding::Xml,
            limits: Limits::default(),
        },
        1,
        dev.nonce.clone(),
        dev.server_nonce.clone(),
    );
    let out = client
        .start(AlertCode::CLIENT_INITIATED_MGMT, &mut dev.tree)
        .unwrap();
    let r = http::Client::new()
        .post(format!("{}/dm", s.url))
        .header("content-type", out.content_type)
        .body(out.body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // The refusal is logged with the stored scheme; the (not yet authenticated) caller learns
    // nothing about the account.
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("sha256") && !body.contains("scheme"),
        "{body}"
    );
    s.stop().await;
}
both!(
    unknown_stored_auth_scheme_refuses_the_session,
    super::unknown_auth_scheme
);

/// DM passwords are stored as the digests MD5 and HMAC need (`B64(H(user:password))`,
/// `B64(H(server-id:password))`), never in clear; a database from before (passwords in clear)
/// is converted at the next start, and its devices still authenticate, both ways.
async fn passwords_become_digests(env: Env) {
    let s = env.start().await;
    let mut dev = Device::new(&env, 41, Encoding::Xml);
    dev.register(&s).await;
    let server_id = s.running.state().config.server_id.clone();
    let stored = |pool: sqlx::AnyPool, imei: String| async move {
        sqlx::query_as::<_, (String, String, Option<String>, Option<String>)>(
            "SELECT dm_password, server_password, dm_secret, server_secret FROM devices \
             WHERE imei = $1",
        )
        .bind(imei)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let want = (
        String::new(),
        String::new(),
        Some(
            simfota_syncml::auth::Credentials::new(
                format!("dev-{}", dev.imei),
                dev.password.as_str(),
            )
            .secret_digest(),
        ),
        Some(
            simfota_syncml::auth::Credentials::new(server_id.as_str(), "srv-secret")
                .secret_digest(),
        ),
    );
    let pool = s.running.state().db.pool().clone();
    assert_eq!(stored(pool.clone(), dev.imei.clone()).await, want);
    // As an older server stored it: in clear, no digests.
    sqlx::query(
        "UPDATE devices SET dm_password = $1, server_password = 'srv-secret', \
         dm_secret = NULL, server_secret = NULL WHERE imei = $2",
    )
    .bind(dev.password.clone())
    .bind(dev.imei.clone())
    .execute(&pool)
    .await
    .unwrap();
    s.stop().await;
    let s = env.start().await;
    let pool = s.running.state().db.pool().clone();
    assert_eq!(
        stored(pool, dev.imei.clone()).await,
        want,
        "converted at start"
    );
    let ev = dev.session(&[&s.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert!(
        !ev.iter()
            .any(|e| matches!(e, ClientEvent::ServerRejected(_))),
        "the server's credentials still verify: {ev:?}"
    );
    s.stop().await;
}
both!(
    dm_passwords_are_stored_as_digests,
    super::passwords_become_digests
);

/// Safe campaigns in real DM sessions: a device whose DevDetail/FwV already shows the
/// package's version is not offered it (its job ends skipped, no Exec), and outside the
/// campaign's maintenance window a device is offered nothing while its job stays pending.
async fn safe_offers(env: Env) {
    let a = env.start().await;
    let mut current = Device::new(&env, 40, Encoding::Xml);
    let mut outside = Device::new(&env, 41, Encoding::Wbxml);
    current
        .tree
        .set_value(
            &NodeUri::parse("./DevDetail/FwV").unwrap(),
            NodeValue {
                format: "chr".into(),
                mime_type: None,
                data: b"2.0".to_vec(),
            },
        )
        .unwrap();
    current.register(&a).await;
    let (p, c) = package_and_campaign(&env, &a).await;
    let ev = current.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert_eq!(exec_accepted(&ev), None, "{ev:?}");
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    assert_eq!(jobs[0]["state"], "skipped", "{jobs}");
    assert!(
        jobs[0]["reason"]
            .as_str()
            .unwrap()
            .contains("already at version 2.0"),
        "{jobs}"
    );
    let c = a.json(&format!("/api/v1/campaigns/{}", c["id"])).await;
    assert_eq!(
        (c["skipped"].as_i64(), c["state"].as_str()),
        (Some(1), Some("completed")),
        "{c}"
    );

    outside.register(&a).await;
    let minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 60)
        .rem_euclid(1440);
    let hhmm = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
    let c: serde_json::Value = a
        .post("/api/v1/campaigns")
        .json(
            &serde_json::json!({"name": "at night", "package_id": p["id"],
            "window": {"start": hhmm(minute + 60), "end": hhmm(minute + 120)}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ev = outside.session(&[&a.url], 1).await;
    assert!(ev.contains(&ClientEvent::Finished), "{ev:?}");
    assert_eq!(exec_accepted(&ev), None, "{ev:?}");
    let jobs = a.json(&format!("/api/v1/jobs?campaign={}", c["id"])).await;
    let mine = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["imei"] == outside.imei.as_str())
        .unwrap();
    assert_eq!(mine["state"], "pending", "{jobs}");
    a.stop().await;
}
both!(safe_campaigns_in_dm_sessions, super::safe_offers);
