//! The agent with the card in a PC/SC reader: the applet of a state file is served into the
//! system's pcscd as a virtual card (vsmartcard vpcd) and the agent reaches it by reader name,
//! as it would a SIM in a real reader. Needs `SIMFOTA_PCSCD=1` (pcscd running with vpcd).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::dm::{DmServer, Offer};
use common::{TestServer, content};
use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::{StopHandle, VpcdServer};
use simfota_cardlink::{FileCard, InProcessChannel, LinkError};
use simfota_device::agent::Agent;
use simfota_device::config::{CardChannel, DeviceConfig, Limits};
use simfota_device::download::Downloader;
use simfota_device::fumo::{Job, JobStore, Stage};
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_device::update::{ModelFilter, UpdateError, Updater, open_card_session};
use simfota_syncml::Encoding;
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{
    DeliveryToken, Iccid, Imei, IntegrityMode, Nonce, Policy, PublicKey, Receipt, Rights, ServerId,
    UnauthorizedRule, UpdateId,
};

const VPCD: &str = "127.0.0.1:35963";
const READER: &str = "Virtual PCD 00 00";
const ICCID: &str = "89882110000000000010";
const IMEI: &str = "490154203237518";
const SERVER: &str = "dm.operator.example";

static SLOT: Mutex<()> = Mutex::new(());

fn pcscd_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var("SIMFOTA_PCSCD").as_deref() != Ok("1") {
        if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
            panic!("{test}: pcscd with vsmartcard-vpcd is required (SIMFOTA_PCSCD=1 not set)");
        }
        println!(
            "skipped: {test}: pcscd with vsmartcard-vpcd missing (set SIMFOTA_PCSCD=1 when it runs; skipped under SIMFOTA_SKIP_EXTERNAL=1)"
        );
        return None;
    }
    Some(SLOT.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The card of a state file, inserted into vpcd's first reader until pulled.
struct Inserted {
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Inserted {
    fn insert(state: &Path) -> Inserted {
        let mut card = FileCard::open(state).unwrap();
        let server = VpcdServer::connect(VPCD).expect("vpcd listens");
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || {
            let _ = server.serve(&mut card, &mut |_| {});
        });
        wait_for(|r| r.is_ok());
        Inserted {
            stop,
            thread: Some(thread),
        }
    }

    fn pull(mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        wait_for(|r| matches!(r, Err(LinkError::NoCard { .. })));
    }
}

impl Drop for Inserted {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.stop();
            let _ = t.join();
            wait_for(|r| matches!(r, Err(LinkError::NoCard { .. })));
        }
    }
}

fn wait_for(done: impl Fn(&Result<PcscChannel, LinkError>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if done(&PcscChannel::connect(Some(READER))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect() -> PcscChannel {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match PcscChannel::connect(Some(READER)) {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot connect to {READER}: {e}"),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Keys {
    issuer: SigningKey,
    server: SigningKey,
    originator: SigningKey,
}

/// Personalizes a card in `state` (in process) and returns its key.
fn personalize(state: &Path, keys: &Keys) -> PublicKey {
    let card = FileCard::open(state).unwrap();
    let mut client = CardClient::new(InProcessChannel::new(card, "perso"));
    client
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
        .unwrap()
}

fn keys() -> Keys {
    let mut rng = rand_core::OsRng;
    Keys {
        issuer: SigningKey::random(&mut rng),
        server: SigningKey::random(&mut rng),
        originator: SigningKey::random(&mut rng),
    }
}

/// Hosts firmware 2.0 and answers (envelope, token maker).
fn publish(
    keys: &Keys,
    pkgs: &TestServer,
) -> (Vec<u8>, impl Fn(&[u8]) -> Vec<u8> + Send + 'static) {
    let v2 = content(30_000, 2);
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
        &keys.originator,
    )
    .unwrap();
    let env = suit::sever(&env, &simfota_wire::Limits::default()).unwrap();
    pkgs.put("/packages/1/envelope", &env, Some("\"e\""));
    pkgs.put("/packages/1/payload", &v2, Some("\"p\""));
    let digest = suit::Envelope::decode(&env, &simfota_wire::Limits::default())
        .unwrap()
        .stated_manifest_digest();
    let key = keys.server.clone();
    let make = move |nonce: &[u8]| {
        DeliveryToken {
            iss: ServerId::new(SERVER).unwrap(),
            iat: now(),
            exp: now() + 3600,
            cti: UpdateId::new(b"update-7").unwrap(),
            nonce: Nonce(nonce.try_into().unwrap()),
            iccid: Iccid::parse(ICCID).unwrap(),
            imei: Imei::parse(IMEI).unwrap(),
            manifest_digest: digest,
            nbf: None,
            charging_ref: None,
        }
        .to_vec(&key)
        .unwrap()
    };
    (env, make)
}

#[test]
fn pcsc_check_update_with_the_card_in_a_reader() {
    let Some(_slot) = pcscd_or_skip("pcsc_check_update_with_the_card_in_a_reader") else {
        return;
    };
    check_update_through_pcscd("");
}

/// `[card] channel = "logical"`: the whole update runs on a logical channel the agent opened
/// (MANAGE CHANNEL), as on a phone whose modem keeps the basic channel.
#[test]
fn pcsc_check_update_on_a_logical_channel() {
    let Some(_slot) = pcscd_or_skip("pcsc_check_update_on_a_logical_channel") else {
        return;
    };
    check_update_through_pcscd("channel = \"logical\"\n");
}

/// One complete update by the agent, its card in the vpcd reader; `card_extra` goes into the
/// configuration's `[card]` table.
fn check_update_through_pcscd(card_extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let state = dir.path().join("CARD.state");
    let card_key = personalize(&state, &keys);
    let _inserted = Inserted::insert(&state);
    let pkgs = TestServer::start();
    let (_, make) = publish(&keys, &pkgs);
    let dm = DmServer::start(
        SERVER,
        ("dev-1", "client-secret"),
        "server-secret",
        Encoding::Wbxml,
    );
    dm.offer(Offer {
        envelope_url: pkgs.url("/packages/1/envelope"),
        correlator: "c-7".into(),
        make_token: Box::new(make),
    });
    let text = format!(
        "server_url = \"{}\"\nserver_id = \"{SERVER}\"\nencoding = \"wbxml\"\nimei = \"{IMEI}\"\ndata_dir = \"{}\"\n\
         [credentials]\nusername = \"dev-1\"\npassword = \"client-secret\"\nserver_password = \"server-secret\"\n\
         [card]\nreader = \"{READER}\"\n{card_extra}",
        dm.url,
        dir.path().join("data").display()
    );
    let cfg = DeviceConfig::parse(&text).unwrap();
    std::fs::write(dir.path().join("v1.bin"), content(20_000, 1)).unwrap();
    SlotStore::init(cfg.data().slots(), &dir.path().join("v1.bin"), "1.0").unwrap();
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let mut agent = Agent {
        cfg: cfg.clone(),
        card: Arc::new(Mutex::new(
            CardClient::new(connect()).with_channel_mode(cfg.card.channel.mode()),
        )),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| sink.lock().unwrap().push(s.to_owned())),
    };
    let outcome = agent.check_update().unwrap();
    // The agent's card client worked on the channel the configuration asked for.
    let on = agent.card.lock().unwrap().channel_number();
    match cfg.card.channel {
        CardChannel::Basic => assert_eq!(on, 0),
        CardChannel::Logical => assert!((1..=19).contains(&on), "channel {on}"),
    }
    let said = said.lock().unwrap().clone();
    assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
    let results = dm.results();
    let (_, code, receipt) = &results[0];
    assert_eq!(*code, 200);
    let r = Receipt::verify(
        receipt.as_ref().unwrap(),
        &card_key,
        &simfota_wire::Limits::default(),
    )
    .unwrap();
    assert_eq!(r.get().update_id.as_bytes(), b"update-7");
    assert_eq!(
        SlotStore::open(cfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap(),
        "2.0"
    );
}

/// The card is pulled after the authorization: the update ends with 503 and nothing is
/// installed; the result waits in the job file and reaches the card once it is back.
#[test]
fn pcsc_card_removed_mid_update_reports_503_when_it_is_back() {
    let Some(_slot) = pcscd_or_skip("pcsc_card_removed_mid_update_reports_503_when_it_is_back")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = keys();
    let state = dir.path().join("CARD.state");
    let card_key = personalize(&state, &keys);
    std::fs::write(dir.path().join("v1.bin"), content(20_000, 1)).unwrap();
    let slots = dir.path().join("slots");
    SlotStore::init(&slots, &dir.path().join("v1.bin"), "1.0").unwrap();
    let pkgs = TestServer::start();
    let (env, make) = publish(&keys, &pkgs);
    let jobs = JobStore::new(&dir.path().join("fumo.json"));
    let imei = Imei::parse(IMEI).unwrap();

    let run = |card: &mut CardClient<PcscChannel>, job: Job, stop_after: usize| {
        let mut left = stop_after;
        let mut keep_going = |_: &Job| {
            left = left.saturating_sub(1);
            left > 0
        };
        let mut said = Vec::new();
        let mut say = |s: &str| said.push(s.to_owned());
        let mut prompter = StandardPrompter::unattended(PromptChoice::default());
        let res = Updater {
            card,
            imei,
            downloader: Downloader::new(dir.path().join("download")),
            slots: slots.clone(),
            jobs: jobs.clone(),
            prompter: &mut prompter,
            boot_check: &StandardBootCheck,
            limits: Limits::default(),
            model: ModelFilter::default(),
            progress: false,
            say: &mut say,
            keep_going: &mut keep_going,
        }
        .run(job);
        (res, said)
    };

    let inserted = Inserted::insert(&state);
    let mut card = CardClient::new(connect());
    open_card_session(&mut card, &imei).unwrap();
    let nonce = card.get_nonce().unwrap();
    let token = make(&nonce.0);
    let job = Job::new(
        SERVER,
        Some("c-8"),
        &pkgs.url("/packages/1/envelope"),
        &token,
    );
    jobs.save(&job).unwrap();
    // Authorized, then the agent stops.
    let (res, _) = run(&mut card, job, 1);
    assert!(matches!(res, Err(UpdateError::Stopped)));
    // The card goes; the agent carries on.
    inserted.pull();
    let job = jobs.load().unwrap().unwrap();
    let (res, said) = run(&mut card, job, usize::MAX);
    assert!(
        matches!(res, Err(UpdateError::CardUnavailable { result: 503, .. })),
        "{res:?} {said:?}"
    );
    assert!(
        said.iter().any(|s| s.contains("card is unavailable")),
        "{said:?}"
    );
    assert_eq!(
        SlotStore::open(&slots).unwrap().active_version().unwrap(),
        "1.0"
    );
    let job = jobs.load().unwrap().unwrap();
    assert!(
        matches!(
            job.stage,
            Stage::Finished {
                result: 503,
                report_to_card: true,
                ..
            }
        ),
        "{:?}",
        job.stage
    );
    // The card is back: the result reaches it, once.
    let _inserted = Inserted::insert(&state);
    let mut card = CardClient::new(connect());
    open_card_session(&mut card, &imei).unwrap();
    let (res, said) = run(&mut card, job, usize::MAX);
    let job = res.unwrap();
    match job.stage {
        Stage::Reported {
            result: 503,
            receipt: Some(r),
            ..
        } => {
            let r = Receipt::verify(&r, &card_key, &simfota_wire::Limits::default()).unwrap();
            assert_eq!(r.get().result.0, 503);
        }
        other => panic!("{other:?} {said:?}"),
    }
    let _ = env;
}
