//! The FUMO DownloadAndUpdate executor against the real applet (in process, over its state
//! file) and a real HTTP server on loopback: design §4 steps 4-8 and the attacks of §5 that the
//! device side sees.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic, clippy::too_many_arguments)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{SelfTestBootCheck, TestServer, UNBOOTABLE, content};
use simfota_cardlink::channel::Capabilities;
use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::{
    Channel, FileCard, InProcessChannel, LinkError, ResetKind, Response, Transmit,
};
use simfota_device::config::Limits;
use simfota_device::download::Downloader;
use simfota_device::fumo::{Job, JobStore, Stage};
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::SlotStore;
use simfota_device::update::{ModelFilter, UpdateError, Updater, open_card_session};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{
    DeliveryToken, Iccid, Imei, IntegrityMode, Policy, PublicKey, Receipt, Rights, ServerId,
    UnauthorizedRule, UpdateId,
};

const ICCID: &str = "89882110000000000010";
const IMEI: &str = "490154203237518";
const OTHER_IMEI: &str = "356938035643809";
const PIN: &str = "1234";
const SERVER: &str = "dm.operator.example";
const ROGUE: &str = "dm.rogue.example";
const VENDOR: [u8; 16] = [1; 16];
const CLASS: [u8; 16] = [2; 16];

type Card = CardClient<Faulty>;

/// How the card's pending-update record (GET DATA `0106`) fails to be read.
#[derive(Clone, Copy, Debug)]
enum PendingFault {
    /// The link breaks on that command.
    Link,
    /// The card answers `6F00` (no precise diagnosis).
    Status,
}

/// The in-process card, whose pending-update record the test can make unreadable.
struct Faulty {
    inner: InProcessChannel<FileCard>,
    pending: Arc<Mutex<Option<PendingFault>>>,
}

/// The transmit side of [`Faulty`]: the GET DATA `0106` command meets the fault.
struct FaultyTransmit<'t> {
    inner: &'t mut dyn Transmit,
    fault: Option<PendingFault>,
}

impl Transmit for FaultyTransmit<'_> {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, LinkError> {
        let reads_pending = apdu.get(1..4) == Some(&[0xCA, 0x01, 0x06][..]);
        match self.fault.filter(|_| reads_pending) {
            Some(PendingFault::Link) => Err(LinkError::CardRemoved {
                reader: "test slot".into(),
            }),
            Some(PendingFault::Status) => Ok(vec![0x6F, 0x00]),
            None => self.inner.transmit(apdu),
        }
    }
}

impl Channel for Faulty {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        let fault = *self.pending.lock().unwrap();
        self.inner
            .exchange(&mut |t: &mut dyn Transmit| f(&mut FaultyTransmit { inner: t, fault }))
    }

    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        self.inner.reset(kind)
    }

    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        self.inner.reconnect()
    }

    fn atr(&self) -> &[u8] {
        self.inner.atr()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> &str {
        self.inner.name()
    }
}

struct World {
    issuer: SigningKey,
    server: SigningKey,
    rogue: SigningKey,
    originator: SigningKey,
    other_originator: SigningKey,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl World {
    fn new() -> Self {
        let mut rng = rand_core::OsRng;
        World {
            issuer: SigningKey::random(&mut rng),
            server: SigningKey::random(&mut rng),
            rogue: SigningKey::random(&mut rng),
            originator: SigningKey::random(&mut rng),
            other_originator: SigningKey::random(&mut rng),
        }
    }

    /// A severed envelope; `precursor` makes it a delta package.
    fn envelope(
        &self,
        key: &SigningKey,
        payload: &[u8],
        sequence: u64,
        version: &str,
        uri: &str,
        precursor: Option<[u8; 32]>,
        class: [u8; 16],
    ) -> Vec<u8> {
        let env = suit::build(
            &BuildParams {
                vendor_id: VENDOR,
                class_id: class,
                sequence,
                image: ImageSource::Bytes(payload),
                name: Some("firmware"),
                version: Some(version),
                uri: Some(uri),
                integrate: false,
                precursor_digest: precursor.map(simfota_wire::Digest),
            },
            key,
        )
        .unwrap();
        suit::sever(&env, &simfota_wire::Limits::default()).unwrap()
    }

    fn token(
        &self,
        key: &SigningKey,
        iss: &str,
        card: &mut Card,
        envelope: &[u8],
        cti: &str,
        imei: &str,
    ) -> Vec<u8> {
        let nonce = card.get_nonce().unwrap();
        let digest = suit::Envelope::decode(envelope, &simfota_wire::Limits::default())
            .unwrap()
            .stated_manifest_digest();
        DeliveryToken {
            iss: ServerId::new(iss).unwrap(),
            iat: now(),
            exp: now() + 3600,
            cti: UpdateId::new(cti.as_bytes()).unwrap(),
            nonce,
            iccid: Iccid::parse(ICCID).unwrap(),
            imei: Imei::parse(imei).unwrap(),
            manifest_digest: digest,
            nbf: None,
            charging_ref: None,
        }
        .to_vec(key)
        .unwrap()
    }
}

struct Device {
    dir: tempfile::TempDir,
    card: Card,
    /// Makes the card's pending-update record unreadable while set.
    pending_fault: Arc<Mutex<Option<PendingFault>>>,
    card_key: PublicKey,
    v1: Vec<u8>,
}

impl Device {
    fn new(w: &World, policy: Policy) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let card = FileCard::open(&dir.path().join("CARD.state")).unwrap();
        let pending_fault = Arc::new(Mutex::new(None));
        let mut card = CardClient::new(Faulty {
            inner: InProcessChannel::new(card, "in-process"),
            pending: pending_fault.clone(),
        });
        let perso = Personalization {
            issuer_name: "operator.example".into(),
            iccid: Iccid::parse(ICCID).unwrap(),
            imsi: "001010123456789".into(),
            pin: (PIN.into(), 3),
            puk: ("12345678".into(), 10),
            servers: vec![(SERVER.into(), PublicKey::from(&w.server), Rights::ALL)],
            originators: vec![("oem.example".into(), PublicKey::from(&w.originator))],
            policy,
        };
        let card_key = card.personalize(&w.issuer, &perso).unwrap();
        open_card_session(&mut card, &Imei::parse(IMEI).unwrap()).unwrap();
        let v1 = content(64_000, 1);
        std::fs::write(dir.path().join("v1.bin"), &v1).unwrap();
        SlotStore::init(&dir.path().join("slots"), &dir.path().join("v1.bin"), "1.0").unwrap();
        Device {
            dir,
            card,
            pending_fault,
            card_key,
            v1,
        }
    }

    fn slots(&self) -> PathBuf {
        self.dir.path().join("slots")
    }

    fn jobs(&self) -> JobStore {
        JobStore::new(&self.dir.path().join("fumo.json"))
    }

    fn running(&self) -> String {
        SlotStore::open(&self.slots())
            .unwrap()
            .active_version()
            .unwrap()
            .to_owned()
    }

    /// Simulates a reboot of the device: the card loses its RAM (nonce, binding, PIN status)
    /// and the session is opened again.
    fn reboot(&mut self) {
        self.card.reset(ResetKind::Cold).unwrap();
        open_card_session(&mut self.card, &Imei::parse(IMEI).unwrap()).unwrap();
    }

    fn log_next(&mut self) -> u32 {
        self.card.card_info().unwrap().log_next
    }

    fn run(
        &mut self,
        job: Job,
        choice: PromptChoice,
        model: ModelFilter,
    ) -> (Result<Job, UpdateError>, Vec<String>) {
        self.run_until(job, choice, model, usize::MAX)
    }

    fn run_until(
        &mut self,
        job: Job,
        choice: PromptChoice,
        model: ModelFilter,
        stages: usize,
    ) -> (Result<Job, UpdateError>, Vec<String>) {
        let mut said = Vec::new();
        let mut say = |s: &str| said.push(s.to_owned());
        let mut left = stages;
        let mut keep_going = |_: &Job| {
            left = left.saturating_sub(1);
            left > 0
        };
        let mut prompter = StandardPrompter::unattended(choice);
        let jobs = self.jobs();
        jobs.save(&job).unwrap();
        let mut up = Updater {
            card: &mut self.card,
            imei: Imei::parse(IMEI).unwrap(),
            downloader: Downloader::new(self.dir.path().join("download")),
            slots: self.dir.path().join("slots"),
            jobs,
            prompter: &mut prompter,
            boot_check: &SelfTestBootCheck,
            limits: Limits::default(),
            model,
            progress: false,
            say: &mut say,
            keep_going: &mut keep_going,
        };
        let res = up.run(job);
        (res, said)
    }
}

fn result_of(job: &Job) -> (u16, Option<Vec<u8>>) {
    match &job.stage {
        Stage::Reported {
            result, receipt, ..
        } => (*result, receipt.clone()),
        other => panic!("not reported: {other:?}"),
    }
}

/// The result code and the message the user and the server are told.
fn message_of(job: &Job) -> (u16, String) {
    match &job.stage {
        Stage::Reported {
            result, message, ..
        } => (*result, message.clone()),
        other => panic!("not reported: {other:?}"),
    }
}

fn receipt_result(dev: &Device, receipt: &[u8]) -> u16 {
    Receipt::verify(receipt, &dev.card_key, &simfota_wire::Limits::default())
        .unwrap()
        .get()
        .result
        .0
}

fn device_digest() -> Policy {
    Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest)
}

/// Publishes a full package for `image` and returns its job.
fn offer(
    w: &World,
    dev: &mut Device,
    srv: &TestServer,
    image: &[u8],
    seq: u64,
    version: &str,
    cti: &str,
) -> Job {
    let env = w.envelope(
        &w.originator,
        image,
        seq,
        version,
        "/p/payload",
        None,
        CLASS,
    );
    srv.put("/p/envelope", &env, Some("\"e\""));
    srv.put("/p/payload", image, Some("\"p\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &env, cti, IMEI);
    Job::new(SERVER, Some("corr-1"), &srv.url("/p/envelope"), &token)
}

#[test]
fn an_authorized_update_installs_and_the_card_signs_the_receipt() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(80_000, 2);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let job = res.unwrap();
    let (result, receipt) = result_of(&job);
    assert_eq!(result, 200, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 200);
    assert_eq!(dev.running(), "2.0");
    assert_eq!(dev.card.card_info().unwrap().installed_sequence, 2);
    assert!(
        said.iter().any(|s| s.contains("the card authorized")),
        "{said:?}"
    );
    // The payload is not kept (FUMO state 100: no data).
    assert!(!dev.dir.path().join("download/payload").exists());
}

#[test]
fn card_digest_mode_streams_the_payload_to_the_card() {
    let w = World::new();
    let mut dev = Device::new(
        &w,
        Policy::new(
            UnauthorizedRule::Refuse,
            IntegrityMode::CardDigest { max_size: 1 << 20 },
        ),
    );
    let srv = TestServer::start();
    let v2 = content(20_000, 3);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    assert!(
        said.iter()
            .any(|s| s.contains("streaming the image to the card")),
        "{said:?}"
    );
    assert_eq!(dev.running(), "2.0");
}

#[test]
fn a_tampered_payload_is_refused_by_the_card_with_402_and_nothing_installs() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(30_000, 4);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    let mut tampered = v2.clone();
    tampered[12_345] ^= 1;
    srv.put("/p/payload", &tampered, Some("\"p\""));
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 402, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 402);
    assert_eq!(dev.running(), "1.0");
    assert_eq!(dev.card.card_info().unwrap().installed_sequence, 0);
}

#[test]
fn a_truncated_payload_is_a_network_failure_503() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(30_000, 5);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    srv.with(|s| s.cut_after = Some((1000, 1000)));
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 503, "{said:?}");
    assert!(said.iter().any(|s| s.contains("unavailable")), "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 503);
    assert_eq!(dev.running(), "1.0");
}

#[test]
fn a_replayed_token_is_refused_405() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(10_000, 6);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    let replay = job.clone();
    let (res, _) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200);
    let log_before = dev.log_next();
    let (res, said) = dev.run(replay, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 405, "{said:?}");
    assert!(
        receipt.is_none(),
        "a refusal before authorization has no receipt"
    );
    assert!(dev.log_next() > log_before, "the card logged the refusal");
}

#[test]
fn a_package_for_another_model_is_refused_403_before_the_download() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(10_000, 7);
    let env = w.envelope(&w.originator, &v2, 2, "2.0", "/p/payload", None, [9; 16]);
    srv.put("/p/envelope", &env, Some("\"e\""));
    srv.put("/p/payload", &v2, Some("\"p\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &env, "upd-1", IMEI);
    let job = Job::new(SERVER, None, &srv.url("/p/envelope"), &token);
    let model = ModelFilter {
        vendor_id: Some(VENDOR),
        class_id: Some(CLASS),
    };
    let (res, said) = dev.run(job, PromptChoice::default(), model);
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 403, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 403);
    assert!(
        srv.seen().iter().all(|s| s.path != "/p/payload"),
        "nothing was downloaded"
    );
}

#[test]
fn a_token_for_another_device_is_refused_403() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(10_000, 8);
    let env = w.envelope(&w.originator, &v2, 2, "2.0", "/p/payload", None, CLASS);
    srv.put("/p/envelope", &env, Some("\"e\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &env, "upd-1", OTHER_IMEI);
    let job = Job::new(SERVER, None, &srv.url("/p/envelope"), &token);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 403, "{said:?}");
}

#[test]
fn a_manifest_from_an_unknown_originator_is_refused_404() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(10_000, 9);
    let env = w.envelope(
        &w.other_originator,
        &v2,
        2,
        "2.0",
        "/p/payload",
        None,
        CLASS,
    );
    srv.put("/p/envelope", &env, Some("\"e\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &env, "upd-1", IMEI);
    let job = Job::new(SERVER, None, &srv.url("/p/envelope"), &token);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 404, "{said:?}");
}

#[test]
fn a_rollback_to_a_lower_sequence_is_refused_405() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let job = offer(&w, &mut dev, &srv, &content(10_000, 10), 5, "5.0", "upd-1");
    assert_eq!(
        result_of(
            &dev.run(job, PromptChoice::default(), ModelFilter::default())
                .0
                .unwrap()
        )
        .0,
        200
    );
    let job = offer(&w, &mut dev, &srv, &content(10_000, 11), 3, "3.0", "upd-2");
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 405, "{said:?}");
    assert_eq!(dev.running(), "5.0");
}

#[test]
fn an_image_that_does_not_boot_is_rolled_back_and_reported_410() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let mut bad = UNBOOTABLE.to_vec();
    bad.extend(content(5000, 12));
    let job = offer(&w, &mut dev, &srv, &bad, 2, "2.0", "upd-1");
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 410, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 410);
    assert_eq!(dev.running(), "1.0");
    // The anti-rollback counter moves only on success.
    assert_eq!(dev.card.card_info().unwrap().installed_sequence, 0);
}

/// The card's pending-update record fails to be read once the image is downloaded: the
/// integrity step must not take that for "nothing verified yet" (nor the report for "nothing
/// pending"). The update ends with `code`, and its result reaches the card once the record
/// reads again.
fn an_unreadable_pending_record_ends_the_update(fault: PendingFault, code: u16) {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let job = offer(&w, &mut dev, &srv, &content(10_000, 14), 2, "2.0", "upd-1");
    // Accepted -> Authorized -> Downloaded, then stop.
    let (res, said) = dev.run_until(job, PromptChoice::default(), ModelFilter::default(), 2);
    assert!(matches!(res, Err(UpdateError::Stopped)), "{res:?} {said:?}");
    let job = dev.jobs().load().unwrap().unwrap();
    assert!(
        matches!(job.stage, Stage::Downloaded { .. }),
        "{:?}",
        job.stage
    );

    *dev.pending_fault.lock().unwrap() = Some(fault);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let all = said.join("\n");
    assert!(all.contains("pending-update record"), "{said:?}");
    match (fault, res) {
        (PendingFault::Link, Err(UpdateError::CardUnavailable { result, .. }))
        | (PendingFault::Status, Err(UpdateError::CardUnreadable { result, .. })) => {
            assert_eq!(result, code, "{said:?}")
        }
        (_, other) => panic!("{other:?} {said:?}"),
    }
    assert_eq!(dev.running(), "1.0");
    let job = dev.jobs().load().unwrap().unwrap();
    assert!(
        matches!(job.stage, Stage::Finished { result, .. } if result == code),
        "{:?}",
        job.stage
    );

    // The record reads again: the card records the failure and signs its receipt.
    *dev.pending_fault.lock().unwrap() = None;
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, code, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), code);
    assert_eq!(dev.running(), "1.0");
}

#[test]
fn a_link_failure_reading_the_pending_record_ends_the_update_503() {
    an_unreadable_pending_record_ends_the_update(PendingFault::Link, 503);
}

#[test]
fn a_card_that_refuses_to_read_its_pending_record_ends_the_update_405() {
    an_unreadable_pending_record_ends_the_update(PendingFault::Status, 405);
}

fn rogue_offer(w: &World, dev: &mut Device, srv: &TestServer) -> Job {
    let v2 = content(10_000, 13);
    let env = w.envelope(&w.originator, &v2, 2, "2.0", "/p/payload", None, CLASS);
    srv.put("/p/envelope", &env, Some("\"e\""));
    srv.put("/p/payload", &v2, Some("\"p\""));
    let token = w.token(&w.rogue, ROGUE, &mut dev.card, &env, "upd-r", IMEI);
    Job::new(ROGUE, None, &srv.url("/p/envelope"), &token)
}

#[test]
fn an_unlisted_server_under_a_refusing_policy_gets_405() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let job = rogue_offer(&w, &mut dev, &srv);
    let yes = PromptChoice {
        yes: true,
        ..Default::default()
    };
    let (res, said) = dev.run(job, yes, ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 405, "{said:?}");
    assert_eq!(dev.running(), "1.0");
}

#[test]
fn an_unlisted_server_needs_the_users_confirmation() {
    let w = World::new();
    let policy = Policy::new(UnauthorizedRule::WarnConfirm, IntegrityMode::DeviceDigest);
    // --no: declined, 401, logged by the card.
    let mut dev = Device::new(&w, policy);
    let srv = TestServer::start();
    let job = rogue_offer(&w, &mut dev, &srv);
    let before = dev.log_next();
    let no = PromptChoice {
        no: true,
        ..Default::default()
    };
    let (res, said) = dev.run(job, no, ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 401, "{said:?}");
    assert!(dev.log_next() > before, "the refusal is on the card");
    assert_eq!(dev.running(), "1.0");
    // --yes: confirmed, installed.
    let mut dev = Device::new(&w, policy);
    let job = rogue_offer(&w, &mut dev, &srv);
    let yes = PromptChoice {
        yes: true,
        ..Default::default()
    };
    let (res, said) = dev.run(job, yes, ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    assert_eq!(dev.running(), "2.0");
}

#[test]
fn confirm_with_pin_takes_the_pin_from_the_file_once() {
    let w = World::new();
    let policy = Policy::new(
        UnauthorizedRule::ConfirmWithPin,
        IntegrityMode::DeviceDigest,
    );
    let srv = TestServer::start();
    let pin_file = |dir: &Path, pin: &str| {
        let p = dir.join("pin");
        std::fs::write(&p, format!("{pin}\n")).unwrap();
        p
    };
    // Right PIN.
    let mut dev = Device::new(&w, policy);
    let job = rogue_offer(&w, &mut dev, &srv);
    let choice = PromptChoice {
        yes: true,
        no: false,
        pin_file: Some(pin_file(dev.dir.path(), PIN)),
    };
    let (res, said) = dev.run(job, choice, ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    // Wrong PIN: one card try is spent, not retried from the file, declined.
    let mut dev = Device::new(&w, policy);
    let job = rogue_offer(&w, &mut dev, &srv);
    let choice = PromptChoice {
        yes: true,
        no: false,
        pin_file: Some(pin_file(dev.dir.path(), "9999")),
    };
    let (res, said) = dev.run(job, choice, ModelFilter::default());
    let (code, message) = message_of(&res.unwrap());
    assert_eq!(code, 401, "{said:?}");
    // A wrong PIN is told as what it is, not as a "no".
    assert_eq!(
        message,
        format!(
            "the update offered by server `{}` was not confirmed: the card PIN was wrong (2 \
             tries left)",
            ROGUE
        ),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|l| l == "the card PIN is wrong (2 tries left)"),
        "{said:?}"
    );
    assert_eq!(
        dev.card.pin_status().unwrap(),
        simfota_cardlink::client::PinStatus::TriesLeft(2)
    );
    // A plain "no" stays a refusal by the user.
    let mut dev = Device::new(&w, policy);
    let job = rogue_offer(&w, &mut dev, &srv);
    let choice = PromptChoice {
        yes: false,
        no: true,
        pin_file: None,
    };
    let (res, said) = dev.run(job, choice, ModelFilter::default());
    let (code, message) = message_of(&res.unwrap());
    assert_eq!(code, 401, "{said:?}");
    assert_eq!(
        message,
        format!("you declined the update offered by server `{ROGUE}`"),
        "{said:?}"
    );
}

/// Stops the agent after each saved stage in turn, reboots the device (card RAM lost), and
/// runs again from the job file: the update completes exactly once.
#[test]
fn a_stop_after_any_stage_resumes_and_reports_once() {
    let w = World::new();
    // The reference: one uninterrupted run.
    let mut reference = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(50_000, 14);
    let job = offer(&w, &mut reference, &srv, &v2, 2, "2.0", "upd-1");
    let log0 = reference.log_next();
    let (res, _) = reference.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200);
    let entries = reference.log_next() - log0;

    for stop_after in 1..8 {
        let mut dev = Device::new(&w, device_digest());
        let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
        let log0 = dev.log_next();
        let (res, _) = dev.run_until(
            job,
            PromptChoice::default(),
            ModelFilter::default(),
            stop_after,
        );
        let job = match res {
            Err(UpdateError::Stopped) => dev.jobs().load().unwrap().unwrap(),
            Ok(job) => job,
            Err(e) => panic!("stop {stop_after}: {e}"),
        };
        dev.reboot();
        let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
        let (result, receipt) = result_of(&res.unwrap());
        assert_eq!(result, 200, "stop after {stop_after}: {said:?}");
        assert_eq!(dev.running(), "2.0", "stop after {stop_after}");
        assert_eq!(
            dev.log_next() - log0,
            entries,
            "stop after {stop_after}: log entries"
        );
        if let Some(r) = receipt {
            assert_eq!(receipt_result(&dev, &r), 200);
        }
    }
}

/// Killed inside the authorization step: the card authorized, the job file still says
/// "accepted". The next run recognises the card's pending update instead of asking again.
#[test]
fn a_kill_between_card_authorization_and_saving_is_recognised() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(20_000, 15);
    let mut job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    let env = Downloader::new(dev.dir.path().join("download"))
        .fetch_bytes(&job.envelope_url, 16_384)
        .unwrap();
    job.envelope = Some(env.clone());
    job.update_id = Some(b"upd-1".to_vec());
    dev.card.authorize(&job.token, &env).unwrap();
    dev.reboot();
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    assert!(
        said.iter().any(|s| s.contains("already authorized")),
        "{said:?}"
    );
    assert_eq!(dev.running(), "2.0");
}

/// Killed after the card took the result but before the job file recorded it: the result is
/// not reported a second time.
#[test]
fn a_kill_after_the_card_took_the_result_does_not_report_twice() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = content(20_000, 16);
    let job = offer(&w, &mut dev, &srv, &v2, 2, "2.0", "upd-1");
    // Stop right after "finished" is saved (5th saved stage).
    let (res, _) = dev.run_until(job, PromptChoice::default(), ModelFilter::default(), 5);
    assert!(matches!(res, Err(UpdateError::Stopped)));
    let job = dev.jobs().load().unwrap().unwrap();
    assert!(
        matches!(job.stage, Stage::Finished { result: 200, .. }),
        "{:?}",
        job.stage
    );
    // The report reaches the card, then the power goes.
    let lost = dev.card.report_result(b"upd-1", 200, None).unwrap();
    let log_after_report = dev.log_next();
    dev.reboot();
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 200, "{said:?}");
    // No second report: the card signs the receipt that went with the power cut again.
    assert_eq!(receipt, Some(lost), "{said:?}");
    assert_eq!(
        dev.log_next(),
        log_after_report,
        "no second result entry on the card"
    );
}

/// How a delta package carries its delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carry {
    /// Fetched from the manifest's URI.
    ByUri,
    /// Integrated in the envelope the device fetches (`"#delta"`).
    Integrated,
    /// Integrated when signed, but the hosting server severed it and serves it as `payload`
    /// next to the envelope.
    SeveredByServer,
}

/// A delta package (signed with `suit::build_delta`: precursor, image, and the delta's own
/// digest and size) turning `precursor` into `v2`, published at `/p/envelope`.
fn delta_offer(
    w: &World,
    dev: &mut Device,
    srv: &TestServer,
    v2: &[u8],
    precursor: [u8; 32],
    delta: &[u8],
    carry: Carry,
) -> Job {
    let integrate = carry != Carry::ByUri;
    let env = suit::build_delta(
        &BuildParams {
            vendor_id: VENDOR,
            class_id: CLASS,
            sequence: 2,
            image: ImageSource::Digest {
                digest: simfota_wire::sha256(v2),
                size: v2.len() as u64,
            },
            name: Some("firmware"),
            version: Some("2.1"),
            uri: (!integrate).then_some("/p/payload"),
            integrate,
            precursor_digest: Some(simfota_wire::Digest(precursor)),
        },
        delta,
        &w.originator,
    )
    .unwrap();
    let served = match carry {
        Carry::Integrated => env,
        Carry::ByUri | Carry::SeveredByServer => {
            srv.put("/p/payload", delta, Some("\"d\""));
            suit::sever(&env, &simfota_wire::Limits::default()).unwrap()
        }
    };
    srv.put("/p/envelope", &served, Some("\"e\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &served, "upd-1", IMEI);
    Job::new(SERVER, None, &srv.url("/p/envelope"), &token)
}

/// Firmware 2.1: the running 1.0 with a few bytes changed and a tail added.
fn v21(dev: &Device) -> Vec<u8> {
    let mut v2 = dev.v1.clone();
    v2[100..200].copy_from_slice(&[0xAB; 100]);
    v2[5000..5100].copy_from_slice(&[0x5A; 100]);
    v2.extend_from_slice(b"2.1 tail");
    v2
}

fn payload_requested(srv: &TestServer) -> bool {
    srv.seen().iter().any(|s| s.path == "/p/payload")
}

fn assert_installed(dev: &Device, image: &[u8]) {
    assert_eq!(dev.running(), "2.1");
    let store = SlotStore::open(&dev.slots()).unwrap();
    assert_eq!(
        std::fs::read(store.slot_path(store.active())).unwrap(),
        image
    );
}

#[test]
fn a_delta_by_uri_is_checked_against_its_signed_digest_and_applied_to_the_running_image() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::ByUri);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 200, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 200);
    assert!(payload_requested(&srv));
    assert!(
        said.iter()
            .any(|s| s.contains(&format!("({} bytes, a delta)", delta.len()))),
        "{said:?}"
    );
    assert!(said.iter().any(|s| s.contains("rebuilding")), "{said:?}");
    assert_installed(&dev, &v2);
}

#[test]
fn an_integrated_delta_travels_in_the_envelope_and_the_card_gets_it_severed() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    // Large enough that the envelope with its delta exceeds what the card takes (2 KiB):
    // the card must be given the severed form.
    let mut v2 = v21(&dev);
    let mut fresh = vec![0u8; 3000];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut fresh);
    v2.extend(fresh);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    assert!(delta.len() > 2048, "{}", delta.len());
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::Integrated);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    assert!(!payload_requested(&srv), "nothing but the envelope fetched");
    assert!(
        said.iter()
            .any(|s| s.contains("carries its payload") && s.contains("as signed")),
        "{said:?}"
    );
    assert_installed(&dev, &v2);
}

#[test]
fn an_integrated_delta_severed_by_the_server_is_fetched_next_to_the_envelope() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::SeveredByServer);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    assert_eq!(result_of(&res.unwrap()).0, 200, "{said:?}");
    assert!(payload_requested(&srv));
    assert_installed(&dev, &v2);
}

#[test]
fn a_delta_for_another_base_image_is_refused_403_before_the_download() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let other_base = content(64_000, 77);
    let v2 = content(64_000, 78);
    let delta = simfota_delta::diff(&other_base, &v2).unwrap();
    let job = delta_offer(
        &w,
        &mut dev,
        &srv,
        &v2,
        simfota_wire::sha256(&other_base).0,
        &delta,
        Carry::ByUri,
    );
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 403, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 403);
    assert!(
        said.iter()
            .any(|s| s.contains("another image than the running 1.0")),
        "{said:?}"
    );
    assert!(!payload_requested(&srv), "nothing was downloaded");
    assert_eq!(dev.running(), "1.0");
}

#[test]
fn a_tampered_delta_by_uri_is_refused_402_before_it_is_applied() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::ByUri);
    // One byte of the hosted delta changes after signing (a compromised mirror).
    let mut tampered = delta.clone();
    tampered[60] ^= 0x01;
    srv.put("/p/payload", &tampered, Some("\"d\""));
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 402, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 402);
    assert!(
        said.iter()
            .any(|s| s.contains("corrupt") && s.contains("SHA-256")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|s| s.contains("rebuilding")),
        "refused before it was applied: {said:?}"
    );
    assert!(!dev.dir.path().join("download/payload").exists());
    assert_eq!(dev.running(), "1.0");
}

#[test]
fn a_tampered_integrated_delta_is_refused_402_before_it_is_applied() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::Integrated);
    // The delta is the envelope's last member: flip its last byte. The manifest (and the
    // token's binding to it) is untouched.
    let mut env = srv.state.lock().unwrap().files["/p/envelope"].body.clone();
    let last = env.len() - 1;
    env[last] ^= 0x80;
    srv.put("/p/envelope", &env, Some("\"e2\""));
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 402, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 402);
    assert!(
        said.iter()
            .any(|s| s.contains("carried in the package") && s.contains("not the signed one")),
        "{said:?}"
    );
    assert!(!said.iter().any(|s| s.contains("rebuilding")), "{said:?}");
    assert_eq!(dev.running(), "1.0");
}

/// The originator signed a delta and its digest, but the delta rebuilds another image than
/// the signed one: refused after the rebuild, before the card or a slot sees it.
#[test]
fn a_signed_delta_that_rebuilds_another_image_is_refused_402() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let mut v3 = v2.clone();
    v3[30_000] ^= 0xFF;
    let delta_to_v3 = simfota_delta::diff(&dev.v1, &v3).unwrap();
    let pre = simfota_wire::sha256(&dev.v1).0;
    let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta_to_v3, Carry::ByUri);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 402, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 402);
    assert!(
        said.iter().any(|s| s.contains("is not the signed image")),
        "{said:?}"
    );
    assert_eq!(dev.running(), "1.0");
    assert!(SlotStore::open(&dev.slots()).unwrap().record().b.is_none());
}

/// A delta package that signs its precursor but not the delta (the layout of older builds,
/// the delta carried unsigned) is not half-checked: refused as failing validation.
#[test]
fn a_delta_package_without_a_signed_delta_digest_is_refused_404() {
    let w = World::new();
    let mut dev = Device::new(&w, device_digest());
    let srv = TestServer::start();
    let v2 = v21(&dev);
    let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
    let env = suit::build(
        &BuildParams {
            vendor_id: VENDOR,
            class_id: CLASS,
            sequence: 2,
            image: ImageSource::Digest {
                digest: simfota_wire::sha256(&v2),
                size: v2.len() as u64,
            },
            name: Some("firmware"),
            version: Some("2.1"),
            uri: Some("/p/payload"),
            integrate: false,
            precursor_digest: Some(simfota_wire::sha256(&dev.v1)),
        },
        &w.originator,
    )
    .unwrap();
    srv.put("/p/envelope", &env, Some("\"e\""));
    srv.put("/p/payload", &delta, Some("\"d\""));
    let token = w.token(&w.server, SERVER, &mut dev.card, &env, "upd-1", IMEI);
    let job = Job::new(SERVER, None, &srv.url("/p/envelope"), &token);
    let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
    let (result, receipt) = result_of(&res.unwrap());
    assert_eq!(result, 404, "{said:?}");
    assert_eq!(receipt_result(&dev, &receipt.unwrap()), 404);
    assert!(said.iter().any(|s| s.contains("-258")), "{said:?}");
    assert!(!payload_requested(&srv));
    assert_eq!(dev.running(), "1.0");
}

/// The delta path stopped after each saved stage, the device rebooted, and run again: the
/// image staged in the inactive slot's temp file is installed once, after its digest is
/// checked again, and the update completes exactly once.
#[test]
fn a_delta_update_stopped_after_any_stage_resumes_and_installs_once() {
    let w = World::new();
    let srv = TestServer::start();
    for stop_after in 1..8 {
        let mut dev = Device::new(&w, device_digest());
        let v2 = v21(&dev);
        let delta = simfota_delta::diff(&dev.v1, &v2).unwrap();
        let pre = simfota_wire::sha256(&dev.v1).0;
        let job = delta_offer(&w, &mut dev, &srv, &v2, pre, &delta, Carry::ByUri);
        let (res, _) = dev.run_until(
            job,
            PromptChoice::default(),
            ModelFilter::default(),
            stop_after,
        );
        let job = match res {
            Err(UpdateError::Stopped) => dev.jobs().load().unwrap().unwrap(),
            Ok(job) => job,
            Err(e) => panic!("stop {stop_after}: {e}"),
        };
        dev.reboot();
        let (res, said) = dev.run(job, PromptChoice::default(), ModelFilter::default());
        assert_eq!(
            result_of(&res.unwrap()).0,
            200,
            "stop after {stop_after}: {said:?}"
        );
        assert_installed(&dev, &v2);
        let left: Vec<String> = std::fs::read_dir(dev.slots())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "stop after {stop_after}: {left:?} left");
    }
}
