//! The whole agent over DM: a DM server on loopback (the protocol crate's server session over
//! real HTTP) starts a FUMO DownloadAndUpdate; the agent relays the card nonce, runs the update
//! against the in-process card and reports the Generic Alert with the card's receipt.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::dm::{DmServer, Offer};
use common::{TestServer, content};
use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::{FileCard, InProcessChannel};
use simfota_device::agent::{Agent, MAX_FOLLOW_UP_SESSIONS};
use simfota_device::config::DeviceConfig;
use simfota_device::fumo::JobStore;
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_syncml::notification::{Notification, UiMode};
use simfota_syncml::{AlertCode, Encoding};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{
    DeliveryToken, Iccid, Imei, IntegrityMode, Nonce, Policy, PublicKey, Receipt, Rights, ServerId,
    UnauthorizedRule, UpdateId,
};

const ICCID: &str = "89882110000000000010";
const IMEI: &str = "490154203237518";
const SERVER: &str = "dm.operator.example";

type Chan = InProcessChannel<FileCard>;

struct Keys {
    issuer: SigningKey,
    server: SigningKey,
    originator: SigningKey,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn config(dir: &std::path::Path, dm_url: &str, encoding: &str, port: Option<u16>) -> DeviceConfig {
    let port = port
        .map(|p| format!("notification_port = {p}\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
server_url = "{dm_url}"
server_id = "{SERVER}"
encoding = "{encoding}"
imei = "{IMEI}"
data_dir = "{data}"
poll_interval_secs = 3600
{port}
[credentials]
username = "dev-1"
password = "client-secret"
server_password = "server-secret"

[card]
state = "{card}"
"#,
        data = dir.join("data").display(),
        card = dir.join("CARD.state").display(),
    );
    DeviceConfig::parse(&text).unwrap()
}

struct Rig {
    _dir: tempfile::TempDir,
    keys: Keys,
    agent: Agent<Chan>,
    card_key: PublicKey,
    said: Arc<Mutex<Vec<String>>>,
    dm: DmServer,
    pkgs: TestServer,
    cfg: DeviceConfig,
}

fn rig(encoding: Encoding, port: Option<u16>) -> Rig {
    rig_with(encoding, port, false)
}

fn rig_with(encoding: Encoding, port: Option<u16>, hmac: bool) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand_core::OsRng;
    let keys = Keys {
        issuer: SigningKey::random(&mut rng),
        server: SigningKey::random(&mut rng),
        originator: SigningKey::random(&mut rng),
    };
    let card = FileCard::open(&dir.path().join("CARD.state")).unwrap();
    let mut client = CardClient::new(InProcessChannel::new(card, "in-process"));
    let card_key = client
        .personalize(
            &keys.issuer,
            &Personalization {
                issuer_name: "operator.example".into(),
                iccid: Iccid::parse(ICCID).unwrap(),
                imsi: "001010123456789".into(),
                pin: ("1234".into(), 3),
                puk: ("12345678".into(), 10),
                servers: vec![(SERVER.into(), PublicKey::from(&keys.server), Rights::ALL)],
                originators: vec![("oem.example".into(), PublicKey::from(&keys.originator))],
                policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
            },
        )
        .unwrap();
    let v1 = content(40_000, 1);
    std::fs::write(dir.path().join("v1.bin"), &v1).unwrap();
    let (enc, enc_name) = match encoding {
        Encoding::Xml => (Encoding::Xml, "xml"),
        Encoding::Wbxml => (Encoding::Wbxml, "wbxml"),
    };
    let auth = if hmac {
        simfota_syncml::auth::AuthScheme::Hmac
    } else {
        simfota_syncml::auth::AuthScheme::Md5
    };
    let dm = DmServer::start_with(
        SERVER,
        ("dev-1", "client-secret"),
        "server-secret",
        enc,
        auth,
    );
    let mut cfg = config(dir.path(), &dm.url, enc_name, port);
    if hmac {
        cfg.credentials.auth = simfota_device::config::AuthScheme::Hmac;
    }
    SlotStore::init(cfg.data().slots(), &dir.path().join("v1.bin"), "1.0").unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let agent = Agent {
        cfg: cfg.clone(),
        card: Arc::new(Mutex::new(client)),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| sink.lock().unwrap().push(s.to_owned())),
    };
    Rig {
        _dir: dir,
        keys,
        agent,
        card_key,
        said,
        dm,
        pkgs: TestServer::start(),
        cfg,
    }
}

/// Publishes firmware 2.0 and has the DM server offer it in its next session.
fn offer_v2(r: &Rig) -> Vec<u8> {
    let v2 = content(60_000, 2);
    let env = suit::build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 2,
            image: ImageSource::Bytes(&v2),
            name: Some("firmware"),
            version: Some("2.0"),
            uri: Some("/packages/1/payload"),
            integrate: false,
            precursor_digest: None,
        },
        &r.keys.originator,
    )
    .unwrap();
    let env = suit::sever(&env, &simfota_wire::Limits::default()).unwrap();
    r.pkgs.put("/packages/1/envelope", &env, Some("\"e1\""));
    r.pkgs.put("/packages/1/payload", &v2, Some("\"p1\""));
    let server_key = r.keys.server.clone();
    let digest = suit::Envelope::decode(&env, &simfota_wire::Limits::default())
        .unwrap()
        .stated_manifest_digest();
    r.dm.offer(Offer {
        envelope_url: r.pkgs.url("/packages/1/envelope"),
        correlator: "job-42".into(),
        make_token: Box::new(move |nonce: &[u8]| {
            DeliveryToken {
                iss: ServerId::new(SERVER).unwrap(),
                iat: now(),
                exp: now() + 3600,
                cti: UpdateId::new(b"update-42").unwrap(),
                nonce: Nonce(nonce.try_into().unwrap()),
                iccid: Iccid::parse(ICCID).unwrap(),
                imei: Imei::parse(IMEI).unwrap(),
                manifest_digest: digest,
                nbf: None,
                charging_ref: None,
            }
            .to_vec(&server_key)
            .unwrap()
        }),
    });
    v2
}

fn check_update_installs(encoding: Encoding) {
    check_update_installs_with(encoding, false);
}

fn check_update_installs_with(encoding: Encoding, hmac: bool) {
    let mut r = rig_with(encoding, None, hmac);
    offer_v2(&r);
    let outcome = r.agent.check_update().unwrap();
    let said = r.said.lock().unwrap().clone();
    assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
    // The session that asked carried the FUMO user-request alert.
    let first_alerts: Vec<_> =
        r.dm.with(|s| s.seen.alerts.iter().map(|a| a.code).collect());
    assert!(first_alerts.contains(&AlertCode::CLIENT_INITIATED_MGMT));
    assert!(r.dm.with(|s| s.seen.alerts.iter().any(|a| {
        a.items.iter().any(|i| {
            i.meta.as_ref().and_then(|m| m.mime_type.as_deref())
                == Some("org.openmobilealliance.dm.firmwareupdate.userrequest")
        })
    })));
    // The Exec and the token replace were accepted.
    let statuses = r.dm.with(|s| s.seen.statuses.clone());
    assert!(statuses.contains(&("Exec".into(), 202)), "{statuses:?}");
    // The Generic Alert: correlator, result 200, the card's receipt.
    let results = r.dm.results();
    assert_eq!(results.len(), 1, "{results:?}");
    let (corr, code, receipt) = &results[0];
    assert_eq!(corr.as_deref(), Some("job-42"));
    assert_eq!(*code, 200);
    let receipt = Receipt::verify(
        receipt.as_ref().unwrap(),
        &r.card_key,
        &simfota_wire::Limits::default(),
    )
    .unwrap();
    assert_eq!(receipt.get().result.0, 200);
    assert_eq!(receipt.get().update_id.as_bytes(), b"update-42");
    // Running 2.0, nothing pending.
    assert_eq!(
        SlotStore::open(r.cfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap(),
        "2.0"
    );
    assert_eq!(
        JobStore::new(&r.cfg.data().fumo_state()).load().unwrap(),
        None
    );
    // A later session reports nothing again, and the server reads the new FwV.
    r.dm.with(|s| s.commands = vec![("./DevDetail/FwV".into(), None)]);
    let again = r.agent.check_update().unwrap();
    assert_eq!(again.reported, None);
    assert_eq!(r.dm.results().len(), 1);
    let fwv = r.dm.with(|s| {
        s.answers
            .iter()
            .find_map(|(u, _, d)| (u == "./DevDetail/FwV").then(|| d.clone()).flatten())
    });
    assert_eq!(fwv.as_deref(), Some("2.0"));
}

#[test]
fn check_update_with_hmac_integrity_installs_and_reports() {
    check_update_installs_with(Encoding::Xml, true);
}

#[test]
fn check_update_over_xml_installs_and_reports_with_the_receipt() {
    check_update_installs(Encoding::Xml);
}

#[test]
fn check_update_over_wbxml_installs_and_reports_with_the_receipt() {
    check_update_installs(Encoding::Wbxml);
}

#[test]
fn a_dm_server_that_is_gone_is_a_clear_error() {
    let mut r = rig(Encoding::Xml, None);
    offer_v2(&r);
    r.agent.check_update().unwrap();
    // Point the agent at a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    r.agent.cfg.server_url = format!("http://127.0.0.1:{port}");
    let err = r.agent.check_update().unwrap_err().to_string();
    assert!(err.contains("cannot reach the DM server"), "{err}");
}

#[test]
fn package_0_is_acted_on_only_with_the_right_digest() {
    let r = rig(Encoding::Xml, None);
    let good = Notification::new(77, SERVER, UiMode::NotSpecified)
        .encode("server-secret", &simfota_syncml::auth::Nonce(Vec::new()))
        .unwrap();
    assert_eq!(r.agent.verify_notification(&good).unwrap(), 77);
    let forged = Notification::new(78, SERVER, UiMode::NotSpecified)
        .encode("guessed", &simfota_syncml::auth::Nonce(Vec::new()))
        .unwrap();
    assert!(r.agent.verify_notification(&forged).is_err());
    let other = Notification::new(79, "dm.other.example", UiMode::NotSpecified)
        .encode("server-secret", &simfota_syncml::auth::Nonce(Vec::new()))
        .unwrap();
    let err = r.agent.verify_notification(&other).unwrap_err();
    assert!(err.contains("not ours"), "{err}");
}

#[test]
fn run_answers_a_notification_with_a_server_initiated_session() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut r = rig(Encoding::Xml, Some(port));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let sender = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let n = Notification::new(4242, SERVER, UiMode::NotSpecified)
            .encode("server-secret", &simfota_syncml::auth::Nonce(Vec::new()))
            .unwrap();
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(&n, ("127.0.0.1", port)).unwrap();
    });
    // Session 1: the first poll; session 2: the notification's.
    r.agent.run(&stop, Some(2)).unwrap();
    sender.join().unwrap();
    let (sessions, codes) = r.dm.with(|s| {
        (
            s.seen.sessions.clone(),
            s.seen.alerts.iter().map(|a| a.code).collect::<Vec<_>>(),
        )
    });
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[1], "4242");
    assert!(
        codes.contains(&AlertCode::SERVER_INITIATED_MGMT),
        "{codes:?}"
    );
}

/// R4: the server reads the card log through the device: Replace LogRequest (signed, with the
/// card nonce) then Get LogResponse in one package; only the server can open the export.
#[test]
fn the_server_reads_the_card_log_through_the_device() {
    use simfota_wire::{LogEntry, LogReadRequest, open_export};
    let mut r = rig(Encoding::Xml, None);
    offer_v2(&r);
    r.agent.check_update().unwrap();
    let server_key = r.keys.server.clone();
    r.dm.with(|s| {
        s.log_read = Some(Box::new(move |nonce: &[u8]| {
            let mut buf = vec![0u8; 1024];
            let n = LogReadRequest {
                server: ServerId::new(SERVER).unwrap(),
                nonce: Nonce(nonce.try_into().unwrap()),
                first_seq: 0,
                max_count: 64,
            }
            .sign(&server_key, &mut buf)
            .unwrap();
            buf.truncate(n);
            buf
        }))
    });
    r.agent.check_update().unwrap();
    let export =
        r.dm.with(|s| s.log_response.clone())
            .expect("the device relayed the log");
    let secret = simfota_wire::p256::SecretKey::from(r.keys.server.as_nonzero_scalar());
    let contents = open_export(
        &export,
        &r.card_key,
        &secret,
        &simfota_wire::Limits::default(),
    )
    .unwrap();
    let contents = contents.get();
    assert_eq!(contents.iccid.as_str(), ICCID);
    assert!(
        contents.records.len() >= 3,
        "authorized, integrity, installed: {}",
        contents.records.len()
    );
    let last = LogEntry::decode(contents.records.last().unwrap()).unwrap();
    assert_eq!(
        last.update_id.map(|u| u.as_bytes().to_vec()),
        Some(b"update-42".to_vec())
    );
}

/// The card subtree as a relay: public reads decode, an issuer-signed admin command applies
/// once (AdminResult 9000) and its replay is refused by the card (403, AdminResult 66xx).
#[test]
fn the_card_nodes_relay_reads_and_admin_commands() {
    use base64::Engine as _;
    use simfota_wire::{AdminChange, AdminCommand, OriginatorId};
    let mut r = rig(Encoding::Wbxml, None);
    let new_oem = SigningKey::random(&mut rand_core::OsRng);
    let mut buf = vec![0u8; 2048];
    let n = AdminCommand {
        target: Iccid::parse(ICCID).unwrap(),
        counter: 1,
        change: AdminChange::PutOriginator {
            id: OriginatorId::new("oem2.example").unwrap(),
            key: PublicKey::from(&new_oem),
        },
    }
    .sign(&r.keys.issuer, &mut buf)
    .unwrap();
    let admin = buf[..n].to_vec();
    let card = "./SIMFOTA/Card";
    r.dm.with(|s| {
        s.commands = vec![
            (format!("{card}/Info"), None),
            (format!("{card}/Servers"), None),
            (format!("{card}/Policy"), None),
            (format!("{card}/Admin"), Some(admin.clone())),
            (format!("{card}/AdminResult"), None),
            (format!("{card}/Originators"), None),
            (format!("{card}/Admin"), Some(admin.clone())),
            (format!("{card}/AdminResult"), None),
            (format!("{card}/LogResponse"), None),
        ]
    });
    r.agent.check_update().unwrap();
    let answers = r.dm.with(|s| s.answers.clone());
    let data = |uri: &str, nth: usize| -> Option<String> {
        answers
            .iter()
            .filter(|(u, _, d)| u.ends_with(uri) && d.is_some())
            .nth(nth)
            .and_then(|a| a.2.clone())
    };
    let status = |uri: &str, nth: usize| -> u16 {
        answers
            .iter()
            .filter(|(u, _, d)| u.ends_with(uri) && d.is_none())
            .nth(nth)
            .map(|a| a.1)
            .unwrap()
    };
    let b64 = |t: String| base64::engine::general_purpose::STANDARD.decode(t).unwrap();
    let info = b64(data("/Info", 0).unwrap());
    // The card's own answer, in the contract module's layout.
    let lim = simfota_wire::Limits::default();
    let ci = simfota_wire::contract::CardInfo::decode(&info, &lim).unwrap();
    assert_eq!(ci.iccid, ICCID);
    assert!(!ci.certificate.is_empty());
    let servers = b64(data("/Servers", 0).unwrap());
    let servers = simfota_wire::contract::ServerEntry::decode_vec(&servers, &lim).unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].id, SERVER);
    let policy = b64(data("/Policy", 0).unwrap());
    assert_eq!(
        Policy::decode(&policy, &simfota_wire::Limits::default()).unwrap(),
        Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest)
    );
    assert_eq!(status("/Admin", 0), 200);
    assert_eq!(data("/AdminResult", 0).as_deref(), Some("9000"));
    let originators = b64(data("/Originators", 0).unwrap());
    assert!(originators.windows(12).any(|w| w == b"oem2.example"));
    // The replay: refused by the card.
    assert_eq!(status("/Admin", 1), 403);
    assert!(data("/AdminResult", 1).unwrap().starts_with("66"));
    // No log request in this session: nothing to answer.
    assert_eq!(status("/LogResponse", 0), 404);
}

/// Only DownloadAndUpdate is implemented: an Exec of `Download` is answered 202 (the protocol
/// layer accepts it) and then reported with FUMO result 408, naming the node it came from.
#[test]
fn an_exec_of_download_alone_is_reported_as_not_implemented() {
    let mut r = rig(Encoding::Xml, None);
    offer_v2(&r);
    r.dm.with(|s| s.exec_node = Some("Download".into()));
    let outcome = r.agent.check_update().unwrap();
    assert_eq!(outcome.reported, Some((408, true)));
    let alert = r.dm.with(|s| {
        s.seen
            .alerts
            .iter()
            .rev()
            .find(|a| a.code == AlertCode::GENERIC_ALERT)
            .unwrap()
            .clone()
    });
    let item = &alert.items[0];
    assert_eq!(item.source.as_ref().unwrap().uri, "./FUMO/fw/Download");
    assert_eq!(
        item.meta.as_ref().unwrap().mime_type.as_deref(),
        Some("org.openmobilealliance.dm.firmwareupdate.download")
    );
    assert_eq!(alert.correlator.as_deref(), Some("job-42"));
    assert_eq!(
        SlotStore::open(r.cfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap(),
        "1.0"
    );
}

/// A server that answers every result with another Exec of an update that fails at once (its
/// package is not there): one `check-update` ends after a bounded number of sessions, says why,
/// and the result still waiting goes out in the next session.
#[test]
fn a_server_that_keeps_starting_failing_updates_gets_a_bounded_number_of_sessions() {
    let mut r = rig(Encoding::Xml, None);
    let missing = r.pkgs.url("/packages/9/envelope");
    r.dm.offer(Offer {
        envelope_url: missing,
        correlator: "job-9".into(),
        make_token: Box::new(|_: &[u8]| b"not a token".to_vec()),
    });
    r.dm.with(|s| s.keep_offering = true);
    let outcome = r.agent.check_update().unwrap();
    let said = r.said.lock().unwrap().clone();
    assert!(outcome.follow_ups_exhausted, "{said:?}");
    assert!(
        said.iter().any(|s| s.contains(&format!(
            "after {MAX_FOLLOW_UP_SESSIONS} follow-up sessions"
        ))),
        "{said:?}"
    );
    let sessions = r.dm.with(|s| s.seen.sessions.len());
    assert_eq!(sessions, 1 + MAX_FOLLOW_UP_SESSIONS as usize, "{said:?}");
    // Every update the server started failed on its missing package (411).
    let results = r.dm.results();
    assert!(!results.is_empty(), "{said:?}");
    assert!(
        results.iter().all(|(_, code, _)| *code == 411),
        "{results:?}"
    );
    // The next session carries on where the bound stopped, and is bounded again.
    r.dm.with(|s| s.keep_offering = false);
    let outcome = r.agent.check_update().unwrap();
    assert!(!outcome.follow_ups_exhausted);
    assert_eq!(outcome.reported.map(|(code, _)| code), Some(411));
}
