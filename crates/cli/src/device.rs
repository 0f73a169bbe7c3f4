//! `simfota device`: the device agent (crates/device) on this machine.
//!
//! `init` lays out the A/B slots with a factory image; `run` polls the DM server and answers
//! package 0 notifications until SIGTERM or SIGINT, which let the session in progress finish;
//! `check-update` asks the server for an update once; `status` shows the running firmware, the
//! slots and the update in progress. The card is the in-process applet of a state file
//! (`--state`) or a card in a PC/SC reader (`--reader`). `run` and `check-update` warn on
//! stderr of settings that weaken the agent before they start (plain HTTP or MD5 towards
//! another machine, a configuration or PIN file others may read).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Subcommand;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::{Channel, FileCard, InProcessChannel};
use simfota_device::agent::{Agent, SessionOutcome};
use simfota_device::config::{CardSource, DeviceConfig, secret_file_risk};
use simfota_device::fumo::Stage;
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};

/// `simfota device ...`
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the configuration and the card are.
#[derive(Debug, clap::Args)]
struct Common {
    /// The device configuration (see docs/dm-tree.md and the crate docs for the keys).
    #[arg(long, value_name = "DEVICE.toml")]
    config: PathBuf,
    /// The in-process card of this state file (overrides [card] in the configuration).
    #[arg(long, value_name = "CARD.state", conflicts_with = "reader")]
    state: Option<PathBuf>,
    /// The card in this PC/SC reader (overrides [card] in the configuration).
    #[arg(long, value_name = "NAME")]
    reader: Option<String>,
    /// A PEM file of CA certificates trusted for https:// besides the system's (overrides
    /// ca_file in the configuration).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// How to answer the card's questions about an unauthorized server.
#[derive(Debug, clap::Args)]
struct Answers {
    /// Confirm updates from servers the card does not authorize, without asking.
    #[arg(long, conflicts_with = "no")]
    yes: bool,
    /// Decline updates from servers the card does not authorize, without asking.
    #[arg(long)]
    no: bool,
    /// The card PIN, for unattended confirmation when the card's policy wants the PIN.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Lay out the A/B slots with a factory image (slot A, active).
    Init {
        #[command(flatten)]
        common: ConfigOnly,
        /// The factory firmware image.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// Its version (DevDetail/FwV).
        #[arg(long)]
        version: String,
    },
    /// Run the agent: poll the DM server and answer package 0 notifications.
    Run {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        answers: Answers,
        /// Stop after this many DM sessions (default: run until stopped).
        #[arg(long, value_name = "N")]
        sessions: Option<u32>,
    },
    /// Ask the DM server for an update now (client-initiated session with the FUMO user request).
    CheckUpdate {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        answers: Answers,
    },
    /// Show the running firmware, the A/B slots and the update in progress.
    Status {
        #[command(flatten)]
        common: ConfigOnly,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ConfigOnly {
    /// The device configuration.
    #[arg(long, value_name = "DEVICE.toml")]
    config: PathBuf,
}

/// Runs `simfota device`.
pub fn run(args: Args) -> Result<ExitCode> {
    match args.command {
        Cmd::Init {
            common,
            image,
            version,
        } => init(&common.config, &image, &version),
        Cmd::Status { common, json } => status(&common.config, json),
        Cmd::Run {
            common,
            answers,
            sessions,
        } => with_card(&common, answers, |agent| {
            let stop = Arc::new(AtomicBool::new(false));
            let caught = Arc::new(Mutex::new(None));
            stop_on_signals(stop.clone(), caught.clone())?;
            errln!("agent running (SIGTERM or Ctrl-C stops it after the step in progress)");
            agent.run(&stop, sessions)?;
            if let Some(name) = *caught.lock().unwrap_or_else(|e| e.into_inner()) {
                // The agent persists its state after every step (fumo.json, slots, dm.json),
                // so a stop between steps leaves nothing to save here.
                errln!("stopped on {name}: the step in progress finished, state saved");
            }
            Ok(ExitCode::SUCCESS)
        }),
        Cmd::CheckUpdate { common, answers } => with_card(&common, answers, |agent| {
            let outcome = agent.check_update()?;
            Ok(report(&outcome))
        }),
    }
}

/// Sets `stop` when SIGTERM (what service managers send) or SIGINT (Ctrl-C) arrives, and notes
/// which in `caught`. The handlers are in place when this returns, so a signal sent after the
/// "agent running" line can no longer kill the process mid-step.
pub(crate) fn stop_on_signals(
    stop: Arc<AtomicBool>,
    caught: Arc<Mutex<Option<&'static str>>>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal listener")?;
    let (mut term, mut int) = {
        let _in_runtime = rt.enter();
        (
            signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        )
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let name = rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            });
            *caught.lock().unwrap_or_else(|e| e.into_inner()) = Some(name);
            stop.store(true, Ordering::Relaxed);
        })
        .context("starting the signal listener")?;
    Ok(())
}

fn load(config: &Path) -> Result<DeviceConfig> {
    Ok(DeviceConfig::load(config)?)
}

fn init(config: &Path, image: &Path, version: &str) -> Result<ExitCode> {
    let cfg = load(config)?;
    // Checked before the data folder is made: a refused start leaves nothing behind.
    std::fs::File::open(image)
        .with_context(|| format!("cannot read the factory image {}", image.display()))?;
    cfg.data()
        .create()
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let store = SlotStore::init(cfg.data().slots(), image, version)?;
    outln!(
        "slots ready in {}: slot {} runs {} ({} bytes)",
        cfg.data().slots().display(),
        store.active(),
        version,
        store.active_info()?.size
    );
    Ok(ExitCode::SUCCESS)
}

fn status(config: &Path, json: bool) -> Result<ExitCode> {
    use simfota_device::slots::Slot;
    let cfg = load(config)?;
    let store = SlotStore::open(cfg.data().slots())?;
    let rec = store.record();
    let jobs = simfota_device::fumo::JobStore::new(&cfg.data().fumo_state());
    let job = jobs.load()?;
    let version = store.active_version()?;
    if json {
        let slot = |slot: Slot| {
            rec.info(slot).map(
                |i| serde_json::json!({"version": i.version, "size": i.size, "sha256": i.sha256}),
            )
        };
        let doc = serde_json::json!({
            "device": cfg.dev_id(),
            "manufacturer": cfg.info.manufacturer,
            "model": cfg.info.model,
            "server": {"id": cfg.server_id, "url": cfg.dm_url()},
            "firmware": {"version": version, "slot": store.active().to_string()},
            "slots": {"A": slot(Slot::A), "B": slot(Slot::B)},
            "pending": rec.pending.as_ref().map(|p| serde_json::json!({
                "slot": p.slot.to_string(),
                "tries_left": p.tries_left,
            })),
            "last_boot": rec.last_boot.as_ref().map(boot_json),
            "update": job.as_ref().map(job_json),
        });
        outln!("{doc}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "device     {} ({} {})",
        cfg.dev_id(),
        cfg.info.manufacturer,
        cfg.info.model
    );
    outln!("server     {} at {}", cfg.server_id, cfg.dm_url());
    outln!("firmware   {} (slot {})", version, store.active());
    for slot in [Slot::A, Slot::B] {
        match rec.info(slot) {
            Some(i) => outln!(
                "slot {slot}     {} ({} bytes, sha256 {})",
                i.version,
                i.size,
                i.sha256.get(..16).unwrap_or(&i.sha256)
            ),
            None => outln!("slot {slot}     empty"),
        }
    }
    if let Some(p) = &rec.pending {
        outln!(
            "pending    slot {} waits for its boot check ({} tries left)",
            p.slot,
            p.tries_left
        );
    }
    if let Some(b) = &rec.last_boot {
        outln!("last boot  {b}");
    }
    match &job {
        None => outln!("update     none (FUMO state 10, idle)"),
        Some(job) => outln!(
            "update     {} (FUMO state {}, from {})",
            stage_text(&job.stage),
            job.fumo_state().value(),
            job.server_id
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The stage of an update in words.
fn stage_text(stage: &Stage) -> String {
    match stage {
        Stage::Accepted => "accepted, waiting for the card's authorization".to_owned(),
        Stage::Authorized { package } => {
            format!("authorized: {} {}", package.name, package.version)
        }
        Stage::Downloaded { package, .. } => {
            format!("downloaded {} {}", package.name, package.version)
        }
        Stage::Verified { package, .. } => {
            format!("verified by the card: {} {}", package.name, package.version)
        }
        Stage::Installed { package } => {
            format!("installed {}, boot check pending", package.version)
        }
        Stage::Finished {
            result, message, ..
        } => format!("result {result} for the card: {message}"),
        Stage::Reported {
            result, message, ..
        } => format!("result {result} for the server: {message}"),
    }
}

/// The last boot as `device status --json` shows it: an `outcome` and its facts.
fn boot_json(b: &simfota_device::slots::BootOutcome) -> serde_json::Value {
    use simfota_device::slots::BootOutcome;
    match b {
        BootOutcome::Unchanged => serde_json::json!({"outcome": "unchanged"}),
        BootOutcome::Switched { from, to, version } => serde_json::json!({
            "outcome": "switched",
            "from": from.to_string(),
            "to": to.to_string(),
            "version": version,
        }),
        BootOutcome::Retrying { tries_left, reason } => serde_json::json!({
            "outcome": "retrying",
            "tries_left": tries_left,
            "reason": reason,
        }),
        BootOutcome::RolledBack { failed, reason } => serde_json::json!({
            "outcome": "rolled_back",
            "failed": failed.to_string(),
            "reason": reason,
        }),
    }
}

/// The update in progress as `device status --json` shows it.
fn job_json(job: &simfota_device::fumo::Job) -> serde_json::Value {
    let (stage, package, result, message) = match &job.stage {
        Stage::Accepted => ("accepted", None, None, None),
        Stage::Authorized { package } => ("authorized", Some(package), None, None),
        Stage::Downloaded { package, .. } => ("downloaded", Some(package), None, None),
        Stage::Verified { package, .. } => ("verified", Some(package), None, None),
        Stage::Installed { package } => ("installed", Some(package), None, None),
        Stage::Finished {
            result, message, ..
        } => ("finished", None, Some(*result), Some(message)),
        Stage::Reported {
            result, message, ..
        } => ("reported", None, Some(*result), Some(message)),
    };
    serde_json::json!({
        "stage": stage,
        "description": stage_text(&job.stage),
        "fumo_state": job.fumo_state().value(),
        "server": job.server_id,
        "package": package.map(|p| serde_json::json!({
            "name": p.name,
            "version": p.version,
            "sequence": p.sequence,
            "image_size": p.image_size,
            "delta": p.precursor_sha256.is_some(),
        })),
        "result": result,
        "message": message,
    })
}

fn report(outcome: &SessionOutcome) -> ExitCode {
    for text in &outcome.displayed {
        outln!("server says: {text}");
    }
    match (&outcome.update, outcome.reported) {
        (Some(job), reported) => {
            if let Stage::Reported {
                result, message, ..
            } = &job.stage
            {
                outln!("update result {result}: {message}");
                match reported {
                    Some((_, true)) => outln!("the server has the result"),
                    _ => outln!("the result is sent to the server in the next session"),
                }
                if (200..300).contains(result) {
                    return ExitCode::SUCCESS;
                }
                return ExitCode::from(3);
            }
            outln!("the update is not finished; it continues on the next run");
            ExitCode::from(3)
        }
        (None, Some((result, taken))) => {
            outln!(
                "reported the earlier update result {result}{}",
                if taken {
                    ""
                } else {
                    " (not yet taken by the server)"
                }
            );
            ExitCode::SUCCESS
        }
        (None, None) => {
            outln!("no update offered");
            ExitCode::SUCCESS
        }
    }
}

fn with_card(
    common: &Common,
    answers: Answers,
    f: impl FnOnce(&mut dyn AgentOps) -> Result<ExitCode>,
) -> Result<ExitCode> {
    let mut cfg = load(&common.config)?;
    if let Some(ca) = &common.ca {
        // Relative to the working folder, as any path typed on the command line.
        cfg.ca_file = Some(ca.clone());
        cfg.tls_trust()?;
    }
    // The start is accepted from here on: what it risks is said once, before the card and
    // the network are touched (a refused start says only why it was refused).
    warn_of_risks(&cfg, &common.config, answers.pin_file.as_deref());
    cfg.data()
        .create()
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let choice = PromptChoice {
        yes: answers.yes,
        no: answers.no,
        pin_file: answers.pin_file,
    };
    match cfg.card_source(common.state.as_deref(), common.reader.as_deref())? {
        CardSource::State(path) => {
            let card = FileCard::open(&path)?;
            let mut agent = agent(cfg, InProcessChannel::new(card, "in-process card"), choice);
            f(&mut agent)
        }
        CardSource::Reader(name) => {
            let channel = simfota_cardlink::pcsc::PcscChannel::connect(Some(&name))
                .with_context(|| format!("connecting to the card in reader `{name}`"))?;
            let mut agent = agent(cfg, channel, choice);
            f(&mut agent)
        }
        CardSource::Modem(port) => {
            let channel =
                simfota_cardlink::modem::ModemChannel::open(&port, cfg.card.modem_options())
                    .with_context(|| {
                        format!("reaching the card in the modem on {}", port.display())
                    })?;
            let mut agent = agent(cfg, channel, choice);
            f(&mut agent)
        }
    }
}

/// One line on stderr for each setting that weakens the agent (see
/// [`DeviceConfig::risks`]), and for each file of secrets that other users may read or change.
fn warn_of_risks(cfg: &DeviceConfig, config: &Path, pin_file: Option<&Path>) {
    let mut risks = cfg.risks();
    risks.extend(secret_file_risk(
        config,
        "the device configuration",
        "the DM passwords",
    ));
    if let Some(pin) = pin_file {
        risks.extend(secret_file_risk(pin, "the PIN file", "the card PIN"));
    }
    for risk in risks {
        errln!("simfota: warning: {risk}");
    }
}

fn agent<C: Channel + Send + 'static>(
    cfg: DeviceConfig,
    channel: C,
    choice: PromptChoice,
) -> Agent<C> {
    let mode = cfg.card.mode();
    Agent {
        cfg,
        card: Arc::new(Mutex::new(CardClient::new(channel).with_channel_mode(mode))),
        prompter: Box::new(StandardPrompter::new(choice)),
        boot_check: Box::new(StandardBootCheck),
        progress: true,
        say: Box::new(|s: &str| errln!("{s}")),
    }
}

/// The agent operations the commands use, whatever the card channel.
trait AgentOps {
    fn run(&mut self, stop: &AtomicBool, sessions: Option<u32>) -> Result<()>;
    fn check_update(&mut self) -> Result<SessionOutcome>;
}

impl<C: Channel + Send + 'static> AgentOps for Agent<C> {
    fn run(&mut self, stop: &AtomicBool, sessions: Option<u32>) -> Result<()> {
        Agent::run(self, stop, sessions)?;
        Ok(())
    }

    fn check_update(&mut self) -> Result<SessionOutcome> {
        Ok(Agent::check_update(self)?)
    }
}
