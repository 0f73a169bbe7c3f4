//! The agent against the real DM server (`simfota-server`, SQLite in a temporary folder) on
//! loopback with the card in a PC/SC reader: the applet of a state file is served into the
//! system's pcscd as a virtual card (vsmartcard vpcd), and the agent reaches it by reader name.
//! A device registered through the REST API, a package uploaded, a campaign; the agent's
//! check-update runs the update, and the server records the result with the card's receipt
//! verified. Needs `SIMFOTA_PCSCD=1` (pcscd running with vpcd).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::VpcdServer;
use simfota_cardlink::{FileCard, InProcessChannel, LinkError};
use simfota_device::agent::Agent;
use simfota_device::config::DeviceConfig;
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{Iccid, IntegrityMode, Policy, PublicKey, Rights, UnauthorizedRule};

const IMEI: &str = "490154203237518";
const ICCID: &str = "89882110000000000010";
const VPCD: &str = "127.0.0.1:35963";
const READER: &str = "Virtual PCD 00 00";

fn pcscd_or_skip(test: &str) -> bool {
    if std::env::var("SIMFOTA_PCSCD").as_deref() != Ok("1") {
        if std::env::var("SIMFOTA_REQUIRE_EXTERNAL").as_deref() == Ok("1") {
            panic!("{test}: pcscd with vsmartcard-vpcd is required (SIMFOTA_PCSCD=1 not set)");
        }
        println!(
            "skipped: {test}: pcscd with vsmartcard-vpcd missing (set SIMFOTA_PCSCD=1 when it runs)"
        );
        return false;
    }
    true
}

/// Polls the reader until `done` holds for what a connection attempt answers (pcscd notices a
/// vpcd card arriving or leaving only on its next poll).
fn wait_for(done: impl Fn(&Result<PcscChannel, LinkError>) -> bool) -> Option<PcscChannel> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let r = PcscChannel::connect(Some(READER));
        if done(&r) {
            return r.ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{READER}: the card did not reach the expected state in time");
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn pem(key: &SigningKey) -> String {
    key.verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

#[test]
fn pcsc_check_update_against_the_real_dm_server() {
    if !pcscd_or_skip("pcsc_check_update_against_the_real_dm_server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut rng = rand_core::OsRng;
    let issuer = SigningKey::random(&mut rng);
    let oem = SigningKey::random(&mut rng);
    std::fs::write(d.join("issuer.pub.pem"), pem(&issuer)).unwrap();
    std::fs::write(d.join("oem.pub.pem"), pem(&oem)).unwrap();

    // The server, in this process, on a free port.
    let mut cfg = simfota_server::ServerConfig::with_data_dir(d.join("srv"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server_id = "simfota-demo".into();
    cfg.issuer_keys = vec![d.join("issuer.pub.pem")];
    cfg.originators = vec![simfota_server::config::OriginatorConfig {
        id: "oem".into(),
        key: d.join("oem.pub.pem"),
    }];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(simfota_server::start(cfg)).unwrap();
    let base = server.base_url().to_owned();
    let token = std::fs::read_to_string(d.join("srv/api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let server_pub = std::fs::read_to_string(d.join("srv/server-pub.pem")).unwrap();
    let server_pub = simfota_wire::p256::PublicKey::from_public_key_pem(&server_pub).unwrap();
    let server_pub = PublicKey::from_sec1(server_pub.to_sec1_bytes().as_ref()).unwrap();

    // The card: the server authorized, the originator trusted.
    let card = FileCard::open(&d.join("CARD.state")).unwrap();
    let mut client = CardClient::new(InProcessChannel::new(card, "in-process"));
    client
        .personalize(
            &issuer,
            &Personalization {
                issuer_name: "operator.example".into(),
                iccid: Iccid::parse(ICCID).unwrap(),
                imsi: "001010123456789".into(),
                pin: ("1234".into(), 3),
                puk: ("12345678".into(), 10),
                servers: vec![("simfota-demo".into(), server_pub, Rights::ALL)],
                originators: vec![("oem".into(), PublicKey::from(&oem))],
                policy: Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest),
            },
        )
        .unwrap();
    // Personalized in process; from here on the card lives behind pcscd.
    drop(client);
    let mut card = FileCard::open(&d.join("CARD.state")).unwrap();
    let vpcd = VpcdServer::connect(VPCD).expect("vpcd listens (pcscd with vsmartcard-vpcd)");
    let pull = vpcd.stop_handle();
    let reader = std::thread::spawn(move || {
        let _ = vpcd.serve(&mut card, &mut |_| {});
    });
    let channel = wait_for(|r| r.is_ok()).unwrap();
    let client = CardClient::new(channel);

    // The operator: device, package (payload by relative URI), campaign.
    let http = simfota_device::download::http_agent();
    let api = |path: &str| format!("{base}/api/v1/{path}");
    let auth = format!("Bearer {token}");
    let mut r = http
        .post(&api("devices"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .send(format!(
            r#"{{"imei":"{IMEI}","username":"dev-1","password":"client-secret","server_password":"server-secret","model":"EX-1"}}"#
        ))
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    let v2 = content(200_000, 2);
    let env = suit::build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 2,
            image: ImageSource::Bytes(&v2),
            name: Some("firmware"),
            version: Some("2.0"),
            uri: Some("payload"),
            integrate: false,
            precursor_digest: None,
        },
        &oem,
    )
    .unwrap();
    let boundary = "simfota-boundary-7";
    let mut body = Vec::new();
    for (name, bytes) in [("envelope", &env), ("payload", &v2)] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut r = http
        .post(&api("packages"))
        .header("Authorization", &auth)
        .header(
            "Content-Type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .send(&body[..])
        .unwrap();
    let pkg = r.body_mut().read_to_string().unwrap();
    let pkg: serde_json::Value = serde_json::from_str(&pkg).unwrap_or_else(|_| panic!("{pkg}"));
    let pkg_id = pkg["id"].as_i64().unwrap();
    let mut r = http
        .post(&api("campaigns"))
        .header("Authorization", &auth)
        .header("Content-Type", "application/json")
        .send(format!(
            r#"{{"name":"c1","package_id":{pkg_id},"waves":[100],"success_threshold":90,"error_threshold":10}}"#
        ))
        .unwrap();
    assert!(
        r.status().is_success(),
        "{}",
        r.body_mut().read_to_string().unwrap()
    );

    // The device.
    let text = format!(
        "server_url = \"{base}\"\nserver_id = \"simfota-demo\"\nimei = \"{IMEI}\"\ndata_dir = \"{}\"\n\
         [credentials]\nusername = \"dev-1\"\npassword = \"client-secret\"\nserver_password = \"server-secret\"\n\
         [card]\nreader = \"{READER}\"\n[info]\nmodel = \"EX-1\"\n",
        d.join("dev").display(),
    );
    let dcfg = DeviceConfig::parse(&text).unwrap();
    std::fs::write(d.join("v1.bin"), content(150_000, 1)).unwrap();
    SlotStore::init(dcfg.data().slots(), &d.join("v1.bin"), "1.0").unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let mut agent = Agent {
        cfg: dcfg.clone(),
        card: Arc::new(Mutex::new(client)),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| sink.lock().unwrap().push(s.to_owned())),
    };
    let outcome = agent.check_update().unwrap();
    let said = said.lock().unwrap().clone();
    assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
    assert_eq!(
        SlotStore::open(dcfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap(),
        "2.0"
    );

    // What the server recorded.
    let mut r = http
        .get(&api(&format!("devices/{IMEI}")))
        .header("Authorization", &auth)
        .call()
        .unwrap();
    let dev: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let job = &dev["jobs"][0];
    assert_eq!(job["state"], "succeeded", "{dev}");
    assert_eq!(job["result_code"], 200, "{dev}");
    assert_eq!(job["receipt_status"], "verified", "{dev}");
    assert_eq!(dev["device"]["iccid"], ICCID, "{dev}");
    assert_eq!(dev["device"]["fw_version"], "2.0", "{dev}");
    rt.block_on(server.shutdown()).unwrap();
    drop(agent);
    pull.stop();
    reader.join().unwrap();
    wait_for(|r| matches!(r, Err(LinkError::NoCard { .. })));
}
