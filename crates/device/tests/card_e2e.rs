//! The card's side of two crash windows, end to end: the agent (a child process, killed) and
//! the real DM server (`simfota-server`, SQLite, in this process) on loopback, with the card
//! in process (its state file survives the agent; its RAM state does not).
//!
//! - Killed right after the card recorded the result and signed the receipt, before the job
//!   file kept it: the next run must not report to the card again (the card refuses a second
//!   report) and its Generic Alert 1226 must still carry a receipt the server verifies — the
//!   card signs it again (GET RECEIPT).
//! - Card-digest policy: the payload goes to the card chunk by chunk as it downloads. Killed
//!   in the middle of the download (the package URL runs through a proxy that stalls there),
//!   the next run resumes with a Range request and streams the bytes already on disk to the
//!   card first (the card's hash died with the old session), then the rest as it arrives;
//!   the card's verdict then needs no second pass over the file.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::{FileCard, InProcessChannel};
use simfota_device::agent::{Agent, SessionOutcome};
use simfota_device::config::DeviceConfig;
use simfota_device::fumo::{JobStore, Stage};
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use simfota_wire::suit::{self, BuildParams, ImageSource};
use simfota_wire::{Iccid, IntegrityMode, Policy, PublicKey, Rights, UnauthorizedRule};

const IMEI: &str = "490154203237518";
const ICCID: &str = "89882110000000000010";
const SERVER_ID: &str = "simfota-card-e2e";
/// Exit status of a child that "dies" at its crash point.
const CRASHED: i32 = 9;

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

/// What the proxy saw: each request's path and Range header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A loopback HTTP/1.1 proxy in front of the server's package URLs (the server's
/// `public_url`): one request per connection, both ways told `Connection: close`; it records
/// each request's path and Range, and can stall a payload response after some body bytes.
struct Proxy {
    url: String,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    /// Stall payload bodies after this many bytes (0 = never).
    stall_after: Arc<AtomicU64>,
    /// Set while a response is held at the stall point.
    stalled: Arc<AtomicBool>,
    seen: Seen,
}

impl Proxy {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let p = Proxy {
            url,
            upstream: Arc::default(),
            stall_after: Arc::default(),
            stalled: Arc::default(),
            seen: Arc::default(),
        };
        let (up, stall, stalled, seen) = (
            p.upstream.clone(),
            p.stall_after.clone(),
            p.stalled.clone(),
            p.seen.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Some(upstream) = *up.lock().unwrap() else {
                    continue;
                };
                let (stall, stalled, seen) = (stall.clone(), stalled.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = relay(client, upstream, &stall, &stalled, &seen);
                });
            }
        });
        p
    }

    fn payload_requests(&self) -> Vec<Option<String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _)| path.ends_with("/payload"))
            .map(|(_, range)| range.clone())
            .collect()
    }
}

/// Reads an HTTP head (through the blank line); returns it and any bytes read past it.
fn read_head(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The head with its Connection header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out: String = head
        .trim_end()
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    stall_after: &AtomicU64,
    stalled: &AtomicBool,
    seen: &Mutex<Vec<(String, Option<String>)>>,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut client)?;
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    seen.lock()
        .unwrap()
        .push((path.clone(), header(&head, "range")));
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(closing(&head).as_bytes())?;
    server.write_all(&body)?;
    let (answer, mut first) = read_head(&mut server)?;
    client.write_all(closing(&answer).as_bytes())?;
    let limit = match stall_after.load(Ordering::SeqCst) {
        0 => u64::MAX,
        n if path.ends_with("/payload") => n,
        _ => u64::MAX,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let piece = if first.is_empty() {
            let n = server.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf[..n].to_vec()
        } else {
            std::mem::take(&mut first)
        };
        let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
        let now = piece.len().min(room);
        client.write_all(&piece[..now])?;
        sent += now as u64;
        if now < piece.len() {
            // Hold the rest back until the test lets go (the agent is killed meanwhile).
            stalled.store(true, Ordering::SeqCst);
            while stall_after.load(Ordering::SeqCst) != 0 {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Ok(());
        }
    }
}

/// The server, its operator's keys and the proxy in front of its package URLs.
struct World {
    rt: tokio::runtime::Runtime,
    server: simfota_server::RunningServer,
    base: String,
    auth: String,
    issuer: SigningKey,
    oem: SigningKey,
    server_pub: PublicKey,
    proxy: Proxy,
    dir: PathBuf,
}

impl World {
    fn start(dir: &Path) -> Self {
        let mut rng = rand_core::OsRng;
        let issuer = SigningKey::random(&mut rng);
        let oem = SigningKey::random(&mut rng);
        std::fs::write(dir.join("issuer.pub.pem"), pem(&issuer)).unwrap();
        std::fs::write(dir.join("oem.pub.pem"), pem(&oem)).unwrap();
        let proxy = Proxy::start();
        let mut cfg = simfota_server::ServerConfig::with_data_dir(dir.join("srv"));
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server_id = SERVER_ID.into();
        cfg.public_url = Some(proxy.url.clone());
        cfg.issuer_keys = vec![dir.join("issuer.pub.pem")];
        cfg.originators = vec![simfota_server::config::OriginatorConfig {
            id: "oem".into(),
            key: dir.join("oem.pub.pem"),
        }];
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(simfota_server::start(cfg)).unwrap();
        // The server itself; `base_url` is the public one (the proxy).
        let addr = server.local_addr();
        let base = format!("http://{addr}");
        *proxy.upstream.lock().unwrap() = Some(addr);
        let token = std::fs::read_to_string(dir.join("srv/api-token")).unwrap();
        let server_pub = std::fs::read_to_string(dir.join("srv/server-pub.pem")).unwrap();
        let server_pub = simfota_wire::p256::PublicKey::from_public_key_pem(&server_pub).unwrap();
        let server_pub = PublicKey::from_sec1(server_pub.to_sec1_bytes().as_ref()).unwrap();
        World {
            rt,
            server,
            base,
            auth: format!("Bearer {}", token.trim()),
            issuer,
            oem,
            server_pub,
            proxy,
            dir: dir.to_owned(),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.base)
    }

    fn state(&self) -> PathBuf {
        self.dir.join("CARD.state")
    }

    /// The card: this server authorized, the originator trusted, `integrity` as the policy.
    fn personalize_card(&self, integrity: IntegrityMode) {
        let card = FileCard::open(&self.state()).unwrap();
        CardClient::new(InProcessChannel::new(card, "in-process"))
            .personalize(
                &self.issuer,
                &Personalization {
                    issuer_name: "operator.example".into(),
                    iccid: Iccid::parse(ICCID).unwrap(),
                    imsi: "001010123456789".into(),
                    pin: ("1234".into(), 3),
                    puk: ("12345678".into(), 10),
                    servers: vec![(SERVER_ID.into(), self.server_pub, Rights::ALL)],
                    originators: vec![("oem".into(), PublicKey::from(&self.oem))],
                    policy: Policy::new(UnauthorizedRule::Refuse, integrity),
                },
            )
            .unwrap();
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> serde_json::Value {
        let mut r = simfota_device::download::http_agent()
            .post(&self.api(path))
            .header("Authorization", &self.auth)
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let text = r.body_mut().read_to_string().unwrap();
        assert!(r.status().is_success(), "{path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"))
    }

    /// Registers the device, uploads firmware 2.0 of `size` bytes and starts a campaign.
    fn publish_update(&self, size: usize) {
        self.post(
            "devices",
            "application/json",
            format!(
                r#"{{"imei":"{IMEI}","username":"dev-1","password":"client-secret","server_password":"server-secret","model":"EX-1"}}"#
            )
            .as_bytes(),
        );
        let v2 = content(size, 2);
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
            &self.oem,
        )
        .unwrap();
        let boundary = "simfota-boundary-9";
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
        let pkg = self.post(
            "packages",
            &format!("multipart/form-data; boundary={boundary}"),
            &body,
        );
        let pkg_id = pkg["id"].as_i64().unwrap();
        self.post(
            "campaigns",
            "application/json",
            format!(
                r#"{{"name":"c1","package_id":{pkg_id},"waves":[100],"success_threshold":90,"error_threshold":10}}"#
            )
            .as_bytes(),
        );
    }

    /// Writes DEVICE.toml (card in process from CARD.state) and firmware 1.0 in slot A.
    fn device_config(&self) -> PathBuf {
        let d = &self.dir;
        let text = format!(
            "server_url = \"{}\"\nserver_id = \"{SERVER_ID}\"\nimei = \"{IMEI}\"\ndata_dir = \"{}\"\n\
             [credentials]\nusername = \"dev-1\"\npassword = \"client-secret\"\nserver_password = \"server-secret\"\n\
             [card]\nstate = \"{}\"\n[info]\nmodel = \"EX-1\"\n",
            self.base,
            d.join("dev").display(),
            self.state().display(),
        );
        let path = d.join("DEVICE.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = DeviceConfig::parse(&text).unwrap();
        std::fs::write(d.join("v1.bin"), content(150_000, 1)).unwrap();
        SlotStore::init(cfg.data().slots(), &d.join("v1.bin"), "1.0").unwrap();
        path
    }

    /// The device as the server's REST API shows it.
    fn device(&self) -> serde_json::Value {
        let mut r = simfota_device::download::http_agent()
            .get(&self.api(&format!("devices/{IMEI}")))
            .header("Authorization", &self.auth)
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// The card's counters, read in process (the agent is not running).
    fn card_info(&self) -> simfota_cardlink::client::CardInfo {
        let card = FileCard::open(&self.state()).unwrap();
        let mut c = CardClient::new(InProcessChannel::new(card, "in-process"));
        c.select().unwrap();
        c.card_info().unwrap()
    }

    fn shutdown(self) {
        self.rt.block_on(self.server.shutdown()).unwrap();
    }
}

/// One agent check-update with the card of the configuration's state file; `crash_at`: a
/// line of the agent at which the process dies on the spot (exit status [`CRASHED`]).
fn check_update(config: &Path, crash_at: Option<String>) -> (SessionOutcome, Vec<String>) {
    let cfg = DeviceConfig::load(config).unwrap();
    let state = config.with_file_name("CARD.state");
    let client = CardClient::new(InProcessChannel::new(
        FileCard::open(&state).unwrap(),
        "in-process",
    ));
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let mut agent = Agent {
        cfg,
        card: Arc::new(Mutex::new(client)),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| {
            println!("{s}");
            sink.lock().unwrap().push(s.to_owned());
            if crash_at.as_deref().is_some_and(|c| s.contains(c)) {
                // Dies here, as a power cut would: nothing after this line is saved.
                std::process::exit(CRASHED);
            }
        }),
    };
    let outcome = agent.check_update().unwrap();
    let said = said.lock().unwrap().clone();
    (outcome, said)
}

/// The agent process: this test binary running only [`agent_child`].
fn agent(config: &Path, crash_at: Option<&str>) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "agent_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("SIMFOTA_CHILD_CONFIG", config)
    .env("SIMFOTA_CHILD_CRASH_AT", crash_at.unwrap_or(""));
    c
}

/// The agent's side, run in a child process by the tests below.
#[test]
#[ignore = "child process of the tests in this file"]
fn agent_child() {
    let config = PathBuf::from(std::env::var("SIMFOTA_CHILD_CONFIG").unwrap());
    let crash_at = std::env::var("SIMFOTA_CHILD_CRASH_AT")
        .ok()
        .filter(|c| !c.is_empty());
    let (outcome, _) = check_update(&config, crash_at);
    println!("reported {:?}", outcome.reported);
}

fn job_stage(config: &Path) -> Option<Stage> {
    let cfg = DeviceConfig::load(config).unwrap();
    JobStore::new(&cfg.data().fumo_state())
        .load()
        .unwrap()
        .map(|j| j.stage)
}

/// The server took result 200 once, with a receipt it verified, and the card holds one
/// result: three entries (authorized, integrity ok, installed), nothing pending.
fn assert_recorded_once(w: &World) {
    let dev = w.device();
    let jobs = dev["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{dev}");
    assert_eq!(jobs[0]["state"], "succeeded", "{dev}");
    assert_eq!(jobs[0]["result_code"], 200, "{dev}");
    assert_eq!(jobs[0]["receipt_status"], "verified", "{dev}");
    assert_eq!(dev["device"]["fw_version"], "2.0", "{dev}");
    let info = w.card_info();
    assert_eq!(
        (info.log_next, info.installed_sequence, info.update_pending),
        (3, 2, false)
    );
}

#[test]
fn killed_right_after_the_card_recorded_the_result_the_1226_still_carries_its_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::start(dir.path());
    w.personalize_card(IntegrityMode::DeviceDigest);
    w.publish_update(120_000);
    let config = w.device_config();

    // First run: the update goes through; the process dies the moment the card has recorded
    // the result and answered its receipt, before the job file keeps the receipt.
    let out = agent(&config, Some("the card recorded result"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(CRASHED), "{text}");
    assert!(
        matches!(
            job_stage(&config),
            Some(Stage::Finished {
                result: 200,
                report_to_card: true,
                ..
            })
        ),
        "{:?}",
        job_stage(&config)
    );
    // The card has the result; the server has none yet.
    let info = w.card_info();
    assert_eq!((info.log_next, info.update_pending), (3, false));
    assert_eq!(w.device()["jobs"][0]["state"], "delivered");

    // Next run: no second report to the card (it would refuse), the receipt comes again.
    let (outcome, said) = check_update(&config, None);
    assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
    assert!(
        said.iter().any(|s| s.contains("signed the receipt again")),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|s| s.contains("did not take the result")),
        "{said:?}"
    );
    assert_recorded_once(&w);
    // And a later session has nothing more to report.
    let (outcome, _) = check_update(&config, None);
    assert_eq!(outcome.reported, None);
    assert!(job_stage(&config).is_none());
    assert_recorded_once(&w);
    w.shutdown();
}

#[test]
fn card_digest_streams_during_the_download_and_after_a_kill_restreams_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let w = World::start(dir.path());
    w.personalize_card(IntegrityMode::CardDigest { max_size: 1 << 20 });
    const SIZE: usize = 300_000;
    const STALL: u64 = 100_000;
    w.publish_update(SIZE);
    let config = w.device_config();

    // First run: the payload stops coming after STALL bytes; the agent is killed there.
    w.proxy.stall_after.store(STALL, Ordering::SeqCst);
    let mut child = agent(&config, None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let part = dir.path().join("dev/download/payload.part");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(w.proxy.stalled.load(Ordering::SeqCst)
        && std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) >= STALL)
    {
        assert!(
            Instant::now() < deadline,
            "the download did not reach the stall point"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    w.proxy.stall_after.store(0, Ordering::SeqCst);
    assert!(matches!(job_stage(&config), Some(Stage::Authorized { .. })));
    assert_eq!(std::fs::metadata(&part).unwrap().len(), STALL);

    // Next run: resumes the download; the card hashes what was on disk, then the rest.
    let (outcome, said) = check_update(&config, None);
    assert_eq!(outcome.reported, Some((200, true)), "{said:?}");
    assert!(
        said.iter()
            .any(|s| s.contains("to the card, which hashes it, as it downloads")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|s| s.contains("the card hashed the image during the download")),
        "{said:?}"
    );
    assert!(
        !said
            .iter()
            .any(|s| s.contains("streaming the image from disk to the card")),
        "the image went to the card a second time: {said:?}"
    );
    let ranges = w.proxy.payload_requests();
    assert_eq!(
        ranges,
        vec![None, Some(format!("bytes={STALL}-"))],
        "one full request, then the rest only"
    );
    assert_recorded_once(&w);
    w.shutdown();
}
