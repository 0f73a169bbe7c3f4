//! `simfota demo`: the whole system in one process, over loopback, with nothing to set up.
//!
//! Everything is the real thing: the DM server (`simfota_server::start`, SQLite in the demo
//! folder), the device agent (`simfota_device::agent::Agent`, SyncML over HTTP, A/B slots),
//! and the card applet over a state file (`FileCard` through `InProcessChannel`, the virtual
//! card). The demo plays the operator (REST API), the software originator (signs packages),
//! the card issuer (personalizes the card), the device's user (answers the consent prompt)
//! and an attacker (a relay on the network path, [`relay`]). It runs, in order:
//!
//! 1. a full update 1.0 → 2.0 and 2. a delta update 2.0 → 2.1 through the authorized server;
//! 3. an update 2.1 → 2.2 offered by a second server that is not on the card: the card's
//!    policy asks for confirmation with the PIN, the demo's user gives it, the card logs the
//!    consent (design R6, R7);
//! 4. a replayed delivery token: the relay puts the token the card accepted in step 2 into
//!    the server's next delivery; the card refuses it (its one-time nonce is spent, R10);
//! 5. a rollback: the originator signs 1.0 again with a lower sequence number; the card
//!    refuses it;
//!
//! then lets the authorized server read the whole card log, verify and acknowledge it, and
//! prints a summary built from what the servers recorded ([`summary`]). The exit status is 0
//! only if every step behaved as expected.

mod folder;
mod out;
mod relay;
mod summary;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use p256::ecdsa::{SigningKey, VerifyingKey};
use simfota_cardlink::client::CardClient;
use simfota_cardlink::{FileCard, InProcessChannel};
use simfota_device::agent::Agent;
use simfota_device::cardnodes::SharedCard;
use simfota_device::config::{
    AuthScheme, CardConfig, Credentials, DeviceConfig, DeviceInfo, Encoding, Limits,
};
use simfota_device::prompt::{Answer, ConsentRequest, PromptError, Prompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_server::RunningServer;
use simfota_server::config::OriginatorConfig;
use simfota_wire::{IntegrityMode, Policy, PublicKey, Rights, UnauthorizedRule};
use zeroize::Zeroizing;

use crate::files::{self, Overwrite};
use crate::keys;
use crate::setup::operator::{Account, Operator};
use crate::setup::{
    self,
    firmware::{self, Package},
};
use out::Out;
use relay::Relay;
use summary::{Expected, Kind, StepRun, Summary};

/// The device's IMEI (15 digits, Luhn check digit).
const IMEI: &str = "490154203237518";
/// The card's ICCID.
const ICCID: &str = "89882110000000000010";
/// The card's IMSI.
const IMSI: &str = "001010123456789";
/// The card PIN the demo's user knows.
const PIN: &str = "1234";
/// The PUK.
const PUK: &str = "12345678";
/// The device model (DevInfo/Mod).
const MODEL: &str = "EX-1";
/// ServerID of the operator's server, the one on the card.
const AUTHORIZED_ID: &str = "simfota-demo";
/// ServerID of the second server, not on the card.
const UNLISTED_ID: &str = "unlisted-dm";
/// The originator's id on the card and the servers.
const ORIGINATOR_ID: &str = "oem";

/// Options of `simfota demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder for keys, card, servers, firmware and device [default: a new
    /// ./simfota-demo-<UTC time>]. Must be new, empty, or an earlier demo folder (cleared).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// After the summary, keep the authorized server (dashboard, API) running until Ctrl-C.
    #[arg(long)]
    serve: bool,
    /// Print the summary as one JSON document on stdout; progress goes to stderr.
    #[arg(long)]
    json: bool,
}

/// The card as the agent reaches it in this process.
type Card = InProcessChannel<FileCard>;

/// Runs `simfota demo`.
pub fn run(args: Args) -> Result<ExitCode> {
    let started = Instant::now();
    let out = Out::new(args.json);
    let dir = args.dir.clone().unwrap_or_else(folder::default_dir);
    // Held until the demo ends: a second run cannot clear this folder meanwhile.
    let claimed = folder::prepare(&dir).context("cannot use the demo folder")?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut world = World::new(&rt, &out, &dir);
    out.line(&format!(
        "simfota demo in {} ({})",
        dir.display(),
        match claimed.prepared {
            folder::Prepared::Created => "new folder",
            folder::Prepared::Empty => "empty folder",
            folder::Prepared::Reused => "an earlier demo's files were removed",
        }
    ));
    let result = world.run_all(started);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            world.shutdown();
            return Err(e);
        }
    };
    files::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)
            .context("cannot encode the summary")?
            .as_bytes(),
        0o644,
        Overwrite::Allow,
    )?;
    if args.json {
        let text = serde_json::to_string(&summary).context("cannot encode the summary")?;
        outln!("{text}");
    }
    summary::print(&out, &summary);
    if args.serve {
        world.serve(&summary)?;
    }
    world.shutdown();
    if let Some(first) = summary.failures.first() {
        let more = match summary.failures.len() {
            1 => String::new(),
            n => format!(" (and {} more, see the summary)", n - 1),
        };
        bail!(
            "demo step \"{}\" did not behave as expected: {}{more}",
            first.step,
            first.message
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The consent prompt as the demo's user answers it: the warning is shown in the demo's
/// output exactly as the agent words it, and the answer is yes with the card PIN.
struct DemoUser {
    out: Out,
    shown: Rc<Cell<bool>>,
}

impl Prompter for DemoUser {
    fn ask(&mut self, request: &ConsentRequest) -> Result<Answer, PromptError> {
        self.out.detail("the device asks its user:");
        self.out.quote(&request.warning());
        self.shown.set(true);
        if request.pin_tries_left.is_some() {
            // The card refused the PIN: typing it again would only use up the tries.
            self.out.detail("the user declines (the PIN was refused)");
            return Ok(Answer::Declined);
        }
        if request.needs_pin {
            self.out.detail(&format!(
                "the user answers yes and types the card PIN ({})",
                "*".repeat(PIN.len())
            ));
            Ok(Answer::AcceptedWithPin(Zeroizing::new(PIN.to_owned())))
        } else {
            self.out.detail("the user answers yes");
            Ok(Answer::Accepted)
        }
    }
}

/// One server of the demo, running in this process.
struct Server {
    running: Option<RunningServer>,
    id: &'static str,
    url: String,
    data: PathBuf,
    op: Operator,
    public_key: PublicKey,
}

/// Everything the demo set up, step by step.
struct World<'a> {
    rt: &'a tokio::runtime::Runtime,
    out: &'a Out,
    dir: &'a Path,
    oem: Option<SigningKey>,
    authorized: Option<Server>,
    unlisted: Option<Server>,
    relay: Option<Relay>,
    card: Option<SharedCard<Card>>,
    via_relay: Option<DeviceConfig>,
    to_unlisted: Option<DeviceConfig>,
    packages: Vec<Package>,
    runs: Vec<StepRun>,
}

impl<'a> World<'a> {
    fn new(rt: &'a tokio::runtime::Runtime, out: &'a Out, dir: &'a Path) -> Self {
        World {
            rt,
            out,
            dir,
            oem: None,
            authorized: None,
            unlisted: None,
            relay: None,
            card: None,
            via_relay: None,
            to_unlisted: None,
            packages: Vec::new(),
            runs: Vec::new(),
        }
    }

    fn run_all(&mut self, started: Instant) -> Result<Summary> {
        let (issuer, oem) = self.keys().context("step 1 (keys)")?;
        self.servers().context("step 2 (servers)")?;
        self.personalize(&issuer, &oem)
            .context("step 3 (card personalization)")?;
        self.oem = Some(oem);
        self.firmware().context("step 4 (firmware packages)")?;
        self.device().context("step 5 (device)")?;

        self.update(6, Kind::Full, 0)
            .context("step 6 (full update)")?;
        self.update(7, Kind::Delta, 1)
            .context("step 7 (delta update)")?;
        self.update(8, Kind::Unauthorized, 2)
            .context("step 8 (unauthorized server)")?;
        self.update(9, Kind::Replay, 3)
            .context("step 9 (replayed token)")?;
        self.update(10, Kind::Rollback, 4)
            .context("step 10 (rollback)")?;
        self.final_read().context("step 11 (card log read)")?;
        self.summary(started).context("reading back the results")
    }

    fn authorized(&self) -> Result<&Server> {
        self.authorized
            .as_ref()
            .ok_or_else(|| anyhow!("the authorized server is not running"))
    }

    fn unlisted(&self) -> Result<&Server> {
        self.unlisted
            .as_ref()
            .ok_or_else(|| anyhow!("the unlisted server is not running"))
    }

    fn card(&self) -> Result<SharedCard<Card>> {
        self.card
            .clone()
            .ok_or_else(|| anyhow!("the card is not open"))
    }

    /// Step 1: the issuer's and the originator's keys, as PEM files the user can look at.
    fn keys(&mut self) -> Result<(SigningKey, SigningKey)> {
        self.out
            .step(1, "keys: card issuer and software originator (P-256)");
        let issuer = setup::new_key_files(self.dir, "issuer")?;
        let oem = setup::new_key_files(self.dir, "oem")?;
        self.out.detail(&format!(
            "issuer.pem (signs card certificates and admin commands), oem.pem (signs \
             packages), with their .pub.pem, in {}",
            self.dir.display()
        ));
        Ok((issuer, oem))
    }

    fn start_server(&self, id: &'static str, folder: &str) -> Result<Server> {
        let data = self.dir.join(folder);
        let mut cfg = simfota_server::ServerConfig::with_data_dir(&data);
        cfg.listen = ([127, 0, 0, 1], 0).into();
        cfg.server_id = id.to_owned();
        cfg.issuer_keys = vec![self.dir.join("issuer.pub.pem")];
        cfg.originators = vec![OriginatorConfig {
            id: ORIGINATOR_ID.to_owned(),
            key: self.dir.join("oem.pub.pem"),
        }];
        let running = self
            .rt
            .block_on(simfota_server::start(cfg))
            .with_context(|| format!("cannot start server {id}"))?;
        let url = running.base_url().to_owned();
        let op = Operator::new(&url, &data)?;
        let key = keys::load_public(&data.join("server-pub.pem"))?;
        let public_key = PublicKey::from(VerifyingKey::from(key));
        Ok(Server {
            running: Some(running),
            id,
            url,
            data,
            op,
            public_key,
        })
    }

    /// Step 2: the operator's server and a second one the card does not list.
    fn servers(&mut self) -> Result<()> {
        self.out.step(
            2,
            "DM servers: the operator's, and one the card does not list",
        );
        let a = self.start_server(AUTHORIZED_ID, "server")?;
        self.out.detail(&format!(
            "\"{AUTHORIZED_ID}\" at {} (SQLite and server key in {})",
            a.url,
            a.data.display()
        ));
        let b = self.start_server(UNLISTED_ID, "unlisted-server")?;
        self.out.detail(&format!(
            "\"{UNLISTED_ID}\" at {} (its own key and database in {})",
            b.url,
            b.data.display()
        ));
        self.authorized = Some(a);
        self.unlisted = Some(b);
        Ok(())
    }

    /// Step 3: the virtual card, personalized by the issuer.
    fn personalize(&mut self, issuer: &SigningKey, oem: &SigningKey) -> Result<()> {
        self.out.step(3, "card: personalized by the issuer");
        let state = self.dir.join("card.state");
        let card = FileCard::open(&state).context("cannot open the card state")?;
        let mut client = CardClient::new(InProcessChannel::new(card, "in-process"));
        let server = self.authorized()?;
        setup::personalize(
            &mut client,
            issuer,
            &setup::CardSpec {
                issuer_name: "operator.example",
                iccid: ICCID,
                imsi: IMSI,
                pin: PIN,
                puk: PUK,
                server: (server.id, server.public_key, Rights::ALL),
                originator: (ORIGINATOR_ID, oem),
                policy: Policy::new(
                    UnauthorizedRule::ConfirmWithPin,
                    IntegrityMode::DeviceDigest,
                ),
            },
        )?;
        self.out.detail(&format!(
            "ICCID {ICCID}, card key certified by the issuer; authorized server \
             \"{AUTHORIZED_ID}\" (all rights); originator \"{ORIGINATOR_ID}\"; other servers: \
             confirm with PIN (PIN {PIN}); state in {}",
            state.display()
        ));
        self.card = Some(Arc::new(Mutex::new(client)));
        Ok(())
    }

    /// Step 4: images and signed packages.
    fn firmware(&mut self) -> Result<()> {
        self.out
            .step(4, "firmware: images and packages signed by the originator");
        let oem = self
            .oem
            .as_ref()
            .ok_or_else(|| anyhow!("no originator key"))?;
        let dir = self.dir.join("firmware");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let v10 = firmware::image("1.0", 0x10);
        let v20 = firmware::image("2.0", 0x20);
        let v21 = firmware::patched(&v20, "2.1");
        let v22 = firmware::image("2.2", 0x22);
        let v23 = firmware::image("2.3", 0x23);
        files::write_atomic(&dir.join("fw-1.0.bin"), &v10, 0o644, Overwrite::Allow)?;
        // Sequence numbers: 1.0 was 1; each release counts up. The rollback package is 1.0
        // signed again with its old number.
        self.packages = vec![
            firmware::full(&dir, "2.0", &v20, "2.0", 2, oem)?,
            firmware::delta(&dir, &v20, &v21, "2.1", 3, oem)?,
            firmware::full(&dir, "2.2", &v22, "2.2", 4, oem)?,
            firmware::full(&dir, "2.3", &v23, "2.3", 5, oem)?,
            firmware::full(&dir, "1.0-rollback", &v10, "1.0", 1, oem)?,
        ];
        for p in &self.packages {
            let what = if p.delta {
                format!(
                    "delta of {} bytes for a {}-byte image",
                    p.payload.len(),
                    p.image_len
                )
            } else {
                format!("full image, {} bytes", p.image_len)
            };
            self.out.detail(&format!(
                "{} (sequence {}): {what}: {}",
                p.version,
                p.sequence,
                p.file.display()
            ));
        }
        Ok(())
    }

    fn device_config(&self, server_url: &str, server_id: &str, data: &str) -> DeviceConfig {
        let device = self.dir.join("device");
        DeviceConfig {
            server_url: server_url.to_owned(),
            server_id: server_id.to_owned(),
            encoding: Encoding::Xml,
            imei: IMEI.to_owned(),
            credentials: Credentials {
                nonce: None,
                // MD5 digest authentication (OMA DM Security 1.2 §5.3.1): it covers the
                // credentials, not the message body, which is what lets the relay of step 9
                // change a message unnoticed by the device.
                auth: AuthScheme::Md5,
                username: format!("dev-{IMEI}"),
                password: uuid::Uuid::new_v4().simple().to_string(),
                server_password: uuid::Uuid::new_v4().simple().to_string(),
            },
            card: CardConfig {
                state: Some(self.dir.join("card.state")),
                reader: None,
                channel: simfota_device::config::CardChannel::Basic,
                ..CardConfig::default()
            },
            data_dir: device.join(data),
            slot_dir: Some(device.join("slots")),
            notification_port: None,
            poll_interval_secs: 300,
            ca_file: None,
            info: DeviceInfo {
                model: MODEL.to_owned(),
                vendor_id: Some(hex::encode(firmware::VENDOR_ID)),
                class_id: Some(hex::encode(firmware::CLASS_ID)),
                ..DeviceInfo::default()
            },
            limits: Limits::default(),
        }
    }

    /// Step 5: the device: slots with 1.0, DM accounts on both servers, the relay.
    fn device(&mut self) -> Result<()> {
        self.out.step(
            5,
            "device: firmware 1.0 in slot A, DM accounts on both servers",
        );
        let device = self.dir.join("device");
        std::fs::create_dir_all(&device)
            .with_context(|| format!("cannot create {}", device.display()))?;
        let a = self.authorized()?;
        let b = self.unlisted()?;
        let direct = self.device_config(&a.url, a.id, "authorized");
        let unlisted = self.device_config(&b.url, b.id, "unlisted");
        for (cfg, file) in [(&direct, "authorized.toml"), (&unlisted, "unlisted.toml")] {
            cfg.validate()?;
            cfg.data()
                .create()
                .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
            files::write_atomic(
                &device.join(file),
                cfg.to_toml()?.as_bytes(),
                0o600,
                Overwrite::Allow,
            )?;
            a_or_b(cfg, a, b)?.op.register_device(&Account {
                imei: IMEI,
                username: &cfg.credentials.username,
                password: &cfg.credentials.password,
                server_password: &cfg.credentials.server_password,
                model: MODEL,
            })?;
        }
        let slots = device.join("slots");
        SlotStore::init(&slots, &self.dir.join("firmware/fw-1.0.bin"), "1.0")
            .map_err(|e| anyhow!("cannot set up the device's slots: {e}"))?;
        self.out.detail(&format!(
            "IMEI {IMEI}, model {MODEL}; slots in {}; configurations {} and {}",
            slots.display(),
            device.join("authorized.toml").display(),
            device.join("unlisted.toml").display()
        ));
        let relay = self.rt.block_on(Relay::start(&a.url))?;
        self.out.detail(&format!(
            "the device reaches \"{AUTHORIZED_ID}\" through {} (a relay on the network path: \
             the attacker of step 9; until then it only passes messages on)",
            relay.url()
        ));
        let mut via_relay = direct;
        via_relay.server_url = relay.url();
        self.via_relay = Some(via_relay);
        self.to_unlisted = Some(unlisted);
        self.relay = Some(relay);
        Ok(())
    }

    fn relay(&self) -> Result<&Relay> {
        self.relay
            .as_ref()
            .ok_or_else(|| anyhow!("the relay is not running"))
    }

    /// The card's log counters (next sequence number, acknowledged below).
    fn card_log(&self) -> Result<(u32, u32, [u8; 32])> {
        let card = self.card()?;
        let mut c = card.lock().unwrap_or_else(PoisonError::into_inner);
        let s = c
            .log_status()
            .map_err(|e| anyhow!("cannot read the card's log status: {e}"))?;
        Ok((s.next, s.acked, s.head))
    }

    /// One check-update session of the agent (and the report session it opens), with its
    /// lines printed and kept.
    fn session(
        &self,
        cfg: &DeviceConfig,
        prompter: Box<dyn Prompter>,
    ) -> Result<(simfota_device::agent::SessionOutcome, Vec<String>)> {
        let lines = Rc::new(RefCell::new(Vec::new()));
        let sink = lines.clone();
        let out = *self.out;
        let mut agent = Agent {
            cfg: cfg.clone(),
            card: self.card()?,
            prompter,
            boot_check: Box::new(StandardBootCheck),
            progress: false,
            say: Box::new(move |s: &str| {
                out.device(s);
                sink.borrow_mut().push(s.to_owned());
            }),
        };
        let outcome = agent
            .check_update()
            .map_err(|e| anyhow!("the device's DM session failed: {e}"))?;
        drop(agent);
        let lines = lines.take();
        Ok((outcome, lines))
    }

    /// Steps 6-10: one campaign and the device's session with the server that runs it.
    fn update(&mut self, n: usize, kind: Kind, package: usize) -> Result<()> {
        let p = self
            .packages
            .get(package)
            .ok_or_else(|| anyhow!("no package {package}"))?;
        let (title, authorized, expected) = match kind {
            Kind::Full => (
                "full update 1.0 -> 2.0".to_owned(),
                true,
                Expected::Succeeded,
            ),
            Kind::Delta => (
                "delta update 2.0 -> 2.1".to_owned(),
                true,
                Expected::Succeeded,
            ),
            Kind::Unauthorized => (
                "unlisted server, PIN consent: 2.2".to_owned(),
                false,
                Expected::Succeeded,
            ),
            Kind::Replay => (
                "replayed delivery token (2.3)".to_owned(),
                true,
                Expected::Refused {
                    fumo: 405,
                    reasons: &["nonce_mismatch", "nonce_unavailable"],
                },
            ),
            Kind::Rollback => (
                "rollback to 1.0 (sequence 1)".to_owned(),
                true,
                Expected::Refused {
                    fumo: 405,
                    reasons: &["rollback"],
                },
            ),
        };
        self.out.step(
            n,
            &match kind {
                Kind::Unauthorized => format!(
                    "update 2.1 -> 2.2 offered by \"{UNLISTED_ID}\", a server the card does not list"
                ),
                Kind::Replay => "replayed delivery token: an attacker on the network path".into(),
                Kind::Rollback => "rollback: 1.0 signed again with its old sequence number".into(),
                Kind::Full | Kind::Delta => title.clone(),
            },
        );
        let server = if authorized {
            self.authorized()?
        } else {
            self.unlisted()?
        };
        let package_id = server.op.upload(p)?;
        let campaign_id = server
            .op
            .campaign(&format!("demo {}", p.version), package_id)?;
        self.out.detail(&format!(
            "operator of \"{}\": package {} uploaded ({} payload), campaign {campaign_id} started",
            server.id,
            p.version,
            if p.delta { "delta" } else { "full" }
        ));
        let relay = self.relay()?;
        let captured_before = relay.captured_count();
        let swaps_before = relay.disarm();
        if kind == Kind::Replay {
            let token = self
                .runs
                .iter()
                .find(|r| r.kind == Kind::Delta)
                .and_then(|r| r.token_index)
                .and_then(|i| relay.captured(i))
                .ok_or_else(|| anyhow!("the relay captured no token in step 7 to replay"))?;
            self.out.detail(
                "attacker: the relay will replace the server's next delivery token with the \
                 one it captured in step 7, which the card accepted then",
            );
            relay.arm(token);
        }
        let cfg = if authorized {
            self.via_relay.clone()
        } else {
            self.to_unlisted.clone()
        }
        .ok_or_else(|| anyhow!("the device is not configured"))?;
        let shown = Rc::new(Cell::new(false));
        let user = DemoUser {
            out: *self.out,
            shown: shown.clone(),
        };
        let (log_before, _, _) = self.card_log()?;
        let (outcome, lines) = self.session(&cfg, Box::new(user))?;
        let (log_after, _, _) = self.card_log()?;
        let relay = self.relay()?;
        let swapped = relay.disarm() > swaps_before;
        let captured_after = relay.captured_count();
        let token_index = (captured_after > captured_before).then(|| captured_after - 1);
        let server = if authorized {
            self.authorized()?
        } else {
            self.unlisted()?
        };
        let device = server.op.device(IMEI)?;
        let job = summary::job_of(&device, campaign_id);
        let state = job.and_then(|j| j["state"].as_str()).unwrap_or("no job");
        let code = job
            .and_then(|j| j["result_code"].as_i64())
            .map_or_else(String::new, |c| format!(", FUMO {c}"));
        let receipt = job
            .and_then(|j| j["receipt_status"].as_str())
            .map_or_else(String::new, |r| format!(", receipt {r}"));
        let entries = match log_after.saturating_sub(log_before) {
            0 => "no card log entry".to_owned(),
            1 => format!("card log entry {log_before}"),
            _ => format!("card log entries {log_before}-{}", log_after - 1),
        };
        let line = format!(
            "\"{}\" recorded: {state}{code}{receipt}; {entries}",
            server.id
        );
        let as_expected = match expected {
            Expected::Succeeded => state == "succeeded",
            Expected::Refused { .. } => state == "failed",
        };
        if as_expected && outcome.reported.is_some_and(|(_, taken)| taken) {
            self.out.ok(&line);
        } else {
            self.out.fail(&line);
        }
        self.runs.push(StepRun {
            kind,
            title,
            server_id: server.id.to_owned(),
            authorized_server: authorized,
            release: p.version.clone(),
            sequence: p.sequence,
            delta: p.delta,
            campaign_id,
            log_range: (log_before, log_after),
            device_lines: lines,
            warning_shown: shown.get(),
            token_swapped: swapped,
            token_index,
            expected,
        });
        Ok(())
    }

    /// Step 11: sessions with the authorized server until it has read, verified and
    /// acknowledged every entry the card holds (it reads a page per session).
    fn final_read(&mut self) -> Result<()> {
        self.out.step(
            11,
            "card log: the authorized server reads, verifies and acknowledges it",
        );
        let cfg = self
            .via_relay
            .clone()
            .ok_or_else(|| anyhow!("the device is not configured"))?;
        for _ in 0..6 {
            let (next, acked, _) = self.card_log()?;
            if acked == next {
                self.out.ok(&format!(
                    "the card holds {next} entries; all read by \"{AUTHORIZED_ID}\", verified \
                     and acknowledged"
                ));
                return Ok(());
            }
            self.out.detail(&format!(
                "{} of {next} entries acknowledged: one more DM session",
                acked
            ));
            let shown = Rc::new(Cell::new(false));
            self.session(
                &cfg,
                Box::new(DemoUser {
                    out: *self.out,
                    shown,
                }),
            )?;
        }
        let (next, acked, _) = self.card_log()?;
        if acked != next {
            self.out.fail(&format!(
                "after six sessions the card still counts {acked} of {next} entries acknowledged"
            ));
        }
        Ok(())
    }

    /// Reads everything back from the servers and checks it.
    fn summary(&self, started: Instant) -> Result<Summary> {
        let a = self.authorized()?;
        let b = self.unlisted()?;
        let device_a = a.op.device(IMEI)?;
        let device_b = b.op.device(IMEI)?;
        let log = a.op.card_log(ICCID)?;
        let rows: Vec<summary::LogRow> = log["entries"]
            .as_array()
            .map(|v| v.iter().map(summary::log_row).collect())
            .unwrap_or_default();
        let (next, acked, head) = self.card_log()?;
        let newest_hash = log["entries"]
            .as_array()
            .and_then(|v| v.last())
            .and_then(|e| e["entry_hash"].as_str())
            .map(str::to_owned);
        let card_log = summary::CardLog {
            read_by: AUTHORIZED_ID.to_owned(),
            entries: rows,
            card_entries: next,
            card_acknowledged: acked,
            chain_head_matches: newest_hash.as_deref() == Some(hex::encode(head).as_str()),
        };
        let mut failures = Vec::new();
        let mut updates = Vec::new();
        for run in &self.runs {
            let device = if run.authorized_server {
                &device_a
            } else {
                &device_b
            };
            let (u, bad) = summary::check_step(
                run,
                summary::job_of(device, run.campaign_id),
                &card_log.entries,
            );
            failures.extend(bad.into_iter().map(|m| summary::Failure {
                step: run.title.clone(),
                message: m,
            }));
            updates.push(u);
        }
        failures.extend(
            summary::check_log(&card_log)
                .into_iter()
                .map(|m| summary::Failure {
                    step: "card log".into(),
                    message: m,
                }),
        );
        let slots = self.dir.join("device/slots");
        let running = SlotStore::open(&slots)
            .and_then(|s| s.active_version().map(str::to_owned))
            .map_err(|e| anyhow!("cannot read the device's slots: {e}"))?;
        let fw_version = device_a["device"]["fw_version"].as_str().map(str::to_owned);
        if running != "2.2" || fw_version.as_deref() != Some("2.2") {
            failures.push(summary::Failure {
                step: "firmware".into(),
                message: format!(
                    "expected 2.2 running and recorded; the device runs {running}, the server \
                     records {}",
                    fw_version.as_deref().unwrap_or("nothing")
                ),
            });
        }
        Ok(Summary {
            schema: summary::SCHEMA,
            ok: failures.is_empty(),
            dir: self.dir.display().to_string(),
            seconds: (started.elapsed().as_millis() as f64 / 100.0).round() / 10.0,
            server: summary::ServerInfo {
                server_id: AUTHORIZED_ID.to_owned(),
                url: a.url.clone(),
                dashboard: format!("{}/ui", a.url),
                api_token_file: a.data.join("api-token").display().to_string(),
            },
            device: summary::DeviceInfo {
                imei: IMEI.to_owned(),
                iccid: ICCID.to_owned(),
                fw_version,
                running_version: running,
            },
            updates,
            card_log,
            failures,
        })
    }

    /// `--serve`: the card is closed (so `simfota device` can use it), the other server and
    /// the relay stop, the authorized server serves until Ctrl-C.
    fn serve(&mut self, summary: &Summary) -> Result<()> {
        self.card = None;
        if let Some(r) = self.relay.take() {
            r.stop();
        }
        if let Some(mut b) = self.unlisted.take()
            && let Some(s) = b.running.take()
        {
            self.rt
                .block_on(s.shutdown())
                .map_err(|e| anyhow!("stopping {UNLISTED_ID}: {e}"))?;
        }
        self.out
            .heading("The authorized server keeps running (Ctrl-C stops it)");
        self.out
            .line(&format!("  dashboard  {}", summary.server.dashboard));
        self.out.line(&format!(
            "  sign in    {}/ui/login with the token in {}",
            summary.server.url, summary.server.api_token_file
        ));
        self.out.line(&format!(
            "  REST API   {}/api/v1 (Authorization: Bearer <that token>)",
            summary.server.url
        ));
        self.out.line(&format!(
            "  device     simfota device check-update --config {}",
            self.dir.join("device/authorized.toml").display()
        ));
        self.rt
            .block_on(tokio::signal::ctrl_c())
            .context("cannot wait for Ctrl-C")?;
        self.out.line("stopping the server");
        Ok(())
    }

    /// Stops what still runs, gracefully.
    fn shutdown(&mut self) {
        self.card = None;
        if let Some(r) = self.relay.take() {
            r.stop();
        }
        for server in [self.authorized.take(), self.unlisted.take()]
            .into_iter()
            .flatten()
        {
            if let Some(s) = server.running
                && let Err(e) = self.rt.block_on(s.shutdown())
            {
                self.out
                    .line(&format!("simfota: stopping server {}: {e}", server.id));
            }
        }
    }
}

fn a_or_b<'s>(cfg: &DeviceConfig, a: &'s Server, b: &'s Server) -> Result<&'s Server> {
    if cfg.server_id == a.id {
        Ok(a)
    } else if cfg.server_id == b.id {
        Ok(b)
    } else {
        bail!("no server {}", cfg.server_id)
    }
}
