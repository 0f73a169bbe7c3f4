//! The DM server under load: full DM sessions per second with N concurrent simulated devices
//! (a session with nothing to do, and a session that reads one card-log page from a real card),
//! `/dm` message latency (p50, p99), and package payload download throughput in 1 MiB ranges;
//! on SQLite and on PostgreSQL.
//!
//! Each simulated device is the protocol crate's client session (sans-IO) over HTTP on
//! loopback, with the device agent's card subtree over the applet in process. Everything runs
//! in this process, on the same cores as the server: the figures are what one machine serves
//! while also playing its devices.
//!
//! Run: `cargo bench -p simfota-server --bench server` (prints Markdown tables; the figures in
//! docs/performance.md, section "DM server", come from it). Knobs: `SIMFOTA_BENCH_DEVICES`
//! (concurrent devices, default 16), `SIMFOTA_BENCH_SESSIONS` (sessions per device and kind,
//! default 8), `SIMFOTA_POSTGRES_URL` (PostgreSQL; the PostgreSQL rows are skipped when it is
//! unreachable).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::{AppletCard, InProcessChannel};
use simfota_device::cardnodes::CardNodes;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce as DmNonce};
use simfota_syncml::session::{ClientConfig, ClientSession};
use simfota_syncml::tree::{DevDetail, DevInfo, DmTree};
use simfota_syncml::{AlertCode, Encoding, Limits};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::{
    DeliveryToken, Digest, Iccid, Imei, IntegrityMode, Policy, PublicKey, Rights, ServerId,
    UnauthorizedRule, UpdateId,
};
use sqlx::Connection as _;

// The tests' HTTP client (ureq on the blocking pool, see its module docs).
#[path = "../tests/common/http.rs"]
mod http;

type Card =
    Arc<Mutex<CardClient<InProcessChannel<AppletCard<simfota_cardlink::card::CardMemory>>>>>;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A valid IMEI (Luhn) for device `n`.
fn imei(n: u32) -> String {
    let body = format!("35{n:012}");
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut v = c.to_digit(10).unwrap();
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// A valid ICCID (Luhn) for card `n`.
fn iccid(n: u32) -> String {
    let body = format!("894944{n:012}");
    let mut sum = 0;
    for (i, c) in body.chars().rev().enumerate() {
        let mut v = c.to_digit(10).unwrap();
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

struct Sim {
    imei: String,
    tree: DmTree,
    nonce: DmNonce,
    card: Option<Card>,
    /// Four delivery tokens from a server the card does not list, for new log entries.
    rogue_tokens: Vec<Vec<u8>>,
}

impl Sim {
    fn new(n: u32, card: Option<Card>) -> Self {
        let imei = imei(n);
        let mut tree = DmTree::with_standard_objects(
            &DevInfo {
                dev_id: format!("IMEI:{imei}"),
                manufacturer: "Acme".into(),
                model: "EX-1".into(),
                lang: "en".into(),
            },
            &DevDetail {
                dev_type: "phone".into(),
                oem: "Acme".into(),
                fw_version: "1.0".into(),
                sw_version: "1.0".into(),
                hw_version: "A".into(),
            },
        )
        .unwrap();
        if let Some(c) = &card {
            tree.put_interior("./SIMFOTA", "Get=*").unwrap();
            tree.mount(
                "./SIMFOTA/Card",
                "Get=*&Replace=*",
                Box::new(CardNodes::new(c.clone()).unwrap()),
            )
            .unwrap();
        }
        Self {
            imei,
            tree,
            nonce: DmNonce(b"initial".to_vec()),
            card,
            rogue_tokens: Vec::new(),
        }
    }

    /// One full DM session; returns the round-trip time of each `/dm` message.
    async fn session(&mut self, http: &http::Client, base: &str, id: u16) -> Vec<Duration> {
        let mut client = ClientSession::new(
            ClientConfig {
                client_id: format!("IMEI:{}", self.imei),
                server_id: "simfota".into(),
                server_uri: format!("{base}/dm"),
                client_credentials: Credentials::new(format!("dev-{}", self.imei), "dev-secret"),
                server_credentials: Credentials::new("simfota", "srv-secret"),
                auth: AuthScheme::Md5,
                require_server_auth: true,
                encoding: Encoding::Wbxml,
                limits: Limits::default(),
            },
            id,
            self.nonce.clone(),
            DmNonce(Vec::new()),
        );
        let mut out = client
            .start(AlertCode::CLIENT_INITIATED_MGMT, &mut self.tree)
            .unwrap();
        let mut rtts = Vec::new();
        loop {
            let t = Instant::now();
            let resp = http
                .post(format!("{base}/dm"))
                .header("content-type", out.content_type)
                .body(out.body.clone())
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            let body = resp.bytes().await.unwrap();
            rtts.push(t.elapsed());
            let step = client.receive(&body, None, &mut self.tree).unwrap();
            for e in &step.events {
                if let simfota_syncml::session::ClientEvent::NextNonce(n) = e {
                    self.nonce = n.clone();
                }
            }
            match step.reply {
                Some(next) => out = next,
                None => return rtts,
            }
        }
    }
}

/// A card personalized for the bench server, bound to the device's IMEI.
fn card(n: u32, issuer: &SigningKey, oem: &SigningKey, server: PublicKey, imei: &str) -> Card {
    let mut c = CardClient::new(InProcessChannel::new(
        AppletCard::new(simfota_cardlink::card::CardMemory::new()),
        "in-process",
    ));
    c.personalize(
        issuer,
        &Personalization {
            issuer_name: "bench-issuer".into(),
            iccid: Iccid::parse(&iccid(n)).unwrap(),
            imsi: "001010123456789".into(),
            pin: ("1234".into(), 3),
            puk: ("12345678".into(), 10),
            servers: vec![("simfota".into(), server, Rights::ALL)],
            originators: vec![("oem".into(), PublicKey::from(oem))],
            policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
        },
    )
    .unwrap();
    c.reopen(Some(&Imei::parse(imei).unwrap())).unwrap();
    Arc::new(Mutex::new(c))
}

/// Four delivery tokens from a server the card does not list. The card refuses them at its
/// first check (the issuer is not on its list, policy Refuse), before any nonce or signature
/// check, so one set serves every session.
fn rogue_tokens(imei: &str, iccid_s: &str, rogue: &SigningKey) -> Vec<Vec<u8>> {
    (0..4u8)
        .map(|i| {
            DeliveryToken {
                iss: ServerId::new("rogue").unwrap(),
                iat: 1_700_000_000,
                exp: 1_800_000_000,
                cti: UpdateId::new(&[i; 8]).unwrap(),
                nonce: simfota_wire::Nonce([0; 16]),
                iccid: Iccid::parse(iccid_s).unwrap(),
                imei: Imei::parse(imei).unwrap(),
                manifest_digest: Digest([0; 32]),
                nbf: None,
                charging_ref: None,
            }
            .to_vec(rogue)
            .unwrap()
        })
        .collect()
}

/// Four refused attempts: one export page of new log entries.
fn four_entries(card: &Card, tokens: &[Vec<u8>], envelope: &[u8]) {
    let mut c = card.lock().unwrap();
    for t in tokens {
        assert!(c.authorize(t, envelope).is_err());
    }
}

struct Row {
    engine: &'static str,
    kind: &'static str,
    sessions: usize,
    secs: f64,
    messages: Vec<Duration>,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn run_engine(
    engine: &'static str,
    database: Option<String>,
    devices: usize,
    per: usize,
) -> (Vec<Row>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = SigningKey::random(&mut rand_core::OsRng);
    let oem = SigningKey::random(&mut rand_core::OsRng);
    let pem = |k: &SigningKey| simfota_wire::pem::public_key_to_pem(&PublicKey::from(k)).unwrap();
    std::fs::write(dir.path().join("issuer.pem"), pem(&issuer)).unwrap();
    std::fs::write(dir.path().join("oem.pem"), pem(&oem)).unwrap();
    let mut cfg = simfota_server::ServerConfig::with_data_dir(dir.path().join("data"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.database = database;
    cfg.issuer_keys = vec![dir.path().join("issuer.pem")];
    cfg.originators = vec![simfota_server::config::OriginatorConfig {
        id: "oem".into(),
        key: dir.path().join("oem.pem"),
    }];
    let server = simfota_server::start(cfg).await.unwrap();
    let base = server.base_url().to_owned();
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let server_pub = simfota_wire::pem::public_key_from_pem(
        &std::fs::read_to_string(dir.path().join("data/server-pub.pem")).unwrap(),
    )
    .unwrap();
    let http = http::Client::new();
    let rogue = SigningKey::random(&mut rand_core::OsRng);
    let envelope = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 3,
            image: simfota_wire::suit::ImageSource::Bytes(&[5u8; 100]),
            name: Some("fw"),
            version: Some("2.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        &oem,
    )
    .unwrap();

    // Devices: the no-op kind has no card subtree; the log-read kind has a real card each.
    let mut noop = Vec::new();
    let mut logread = Vec::new();
    for i in 0..devices as u32 {
        for (n, with_card) in [(1000 + i, false), (2000 + i, true)] {
            let imei = imei(n);
            let r = http
                .post(format!("{base}/api/v1/devices"))
                .bearer_auth(token.trim())
                .json(
                    &serde_json::json!({"imei": imei, "username": format!("dev-{imei}"),
                    "password": "dev-secret", "server_password": "srv-secret"}),
                )
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            let c = with_card.then(|| card(n, &issuer, &oem, server_pub, &imei));
            let mut sim = Sim::new(n, c);
            if with_card {
                sim.rogue_tokens = rogue_tokens(&imei, &iccid(n), &rogue);
            }
            // Warm-up: the first session runs the nonce challenge and registers the card.
            sim.session(&http, &base, 1).await;
            if with_card {
                logread.push(sim);
            } else {
                noop.push(sim);
            }
        }
    }

    let mut rows = Vec::new();
    for (kind, sims) in [
        ("no-op session", &mut noop),
        ("session reading 1 log page (4 entries)", &mut logread),
    ] {
        let taken: Vec<Sim> = std::mem::take(sims);
        let started = Instant::now();
        let mut tasks = Vec::new();
        let mut total = 0;
        for mut sim in taken {
            let http = http.clone();
            let base = base.clone();
            let envelope = envelope.clone();
            total += per;
            tasks.push(tokio::spawn(async move {
                let mut rtts = Vec::new();
                for k in 0..per {
                    if let Some(c) = &sim.card {
                        // Four new entries (a few APDUs to the in-process card, microseconds).
                        four_entries(c, &sim.rogue_tokens, &envelope);
                    }
                    rtts.extend(sim.session(&http, &base, 2 + k as u16).await);
                }
                rtts
            }));
        }
        let mut messages = Vec::new();
        for t in tasks {
            messages.extend(t.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        messages.sort();
        rows.push(Row {
            engine,
            kind,
            sessions: total,
            secs,
            messages,
        });
    }

    // Package payload: 32 MiB, fetched in 1 MiB ranges by `devices` clients at once.
    let img: Vec<u8> = (0..32u32 * 1024 * 1024)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let env = simfota_wire::suit::build(
        &simfota_wire::suit::BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 4,
            image: simfota_wire::suit::ImageSource::Bytes(&img),
            name: Some("fw"),
            version: Some("3.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        &oem,
    )
    .unwrap();
    let form = http::Form::new()
        .part("envelope", http::Part::bytes(env))
        .part("payload", http::Part::bytes(img.clone()));
    let p: serde_json::Value = http
        .post(format!("{base}/api/v1/packages"))
        .bearer_auth(token.trim())
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}/packages/{}/payload", p["id"]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let clients = devices.min(4);
    for _ in 0..clients {
        let http = http.clone();
        let url = url.clone();
        let len = img.len();
        tasks.push(tokio::spawn(async move {
            let mut got = 0usize;
            let mut at = 0usize;
            while at < len {
                let end = (at + (1 << 20)).min(len) - 1;
                let r = http
                    .get(&url)
                    .header("range", format!("bytes={at}-{end}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 206);
                got += r.bytes().await.unwrap().len();
                at = end + 1;
            }
            got
        }));
    }
    let mut bytes = 0usize;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    let mib_s = bytes as f64 / (1024.0 * 1024.0) / started.elapsed().as_secs_f64();
    server.shutdown().await.unwrap();
    (rows, mib_s)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported by this harness.
    let devices = knob("SIMFOTA_BENCH_DEVICES", 16);
    let per = knob("SIMFOTA_BENCH_SESSIONS", 8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut downloads = Vec::new();
    rt.block_on(async {
        let (r, d) = run_engine("SQLite", None, devices, per).await;
        rows.extend(r);
        downloads.push(("SQLite", d));
        let admin = std::env::var("SIMFOTA_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        match sqlx::PgConnection::connect(&admin).await {
            Ok(mut conn) => {
                let name = format!("simfota_bench_{}", uuid::Uuid::new_v4().simple());
                let (base, _) = admin.rsplit_once('/').unwrap();
                let url = format!("{base}/{name}");
                let (r, d) = run_engine("PostgreSQL", Some(url), devices, per).await;
                rows.extend(r);
                downloads.push(("PostgreSQL", d));
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
            Err(e) => eprintln!("PostgreSQL rows skipped ({admin}: {e})"),
        }
    });
    println!("\n{devices} concurrent devices, {per} sessions each per kind, WBXML, MD5 auth\n");
    println!(
        "| database | session | sessions | sessions/s | /dm messages per session | /dm p50 | /dm p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} ms | {:.2} ms |",
            r.engine,
            r.kind,
            r.sessions,
            r.sessions as f64 / r.secs,
            r.messages.len() as f64 / r.sessions as f64,
            pct(&r.messages, 0.5),
            pct(&r.messages, 0.99)
        );
    }
    println!(
        "\n| database | payload download, 1 MiB ranges, {} clients | throughput |",
        devices.min(4)
    );
    println!("|---|---|---|");
    for (e, d) in downloads {
        println!("| {e} | 4 × 32 MiB | {d:.0} MiB/s |");
    }
}
