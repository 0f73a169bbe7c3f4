//! `simfota fleet`: a fleet of simulated devices, each with its own real card applet in this
//! process, updated through a DM server; measures complete card-gated updates per second.
//!
//! Without `--target` it starts its own server processes (this binary's `simfota server`):
//! one on SQLite in a temporary folder, or `--replicas K` on one PostgreSQL (`--database`)
//! behind a round-robin TCP relay. With `--target URL` it drives an existing server with the
//! operator token and keys it is given. Either way it then:
//!
//! 1. registers the devices through `POST /api/v1/devices/bulk` (at most 10 000 a request),
//!    personalizes one card per device (issuer key, the server with the firmware and log
//!    rights, the originator key, device-digest policy), uploads a package signed by the
//!    originator and starts a campaign for the run's model: the setup, timed apart;
//! 2. runs `--concurrency` worker threads, each taking the next device through one complete
//!    update ([`device::SimDevice::update`]) until every device is done or `--duration` is
//!    over (then no new device starts): the measured phase;
//! 3. reads the campaign back from the server and checks that the server counts as many
//!    succeeded jobs as the simulator counted complete updates.
//!
//! The figures (rate, latencies, CPU of the servers and of the simulator, errors by kind) are
//! printed, or written as one JSON object with `--json`. The exit status is 0 only when every
//! started update completed and the server agrees.

mod device;
mod report;
mod servers;

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use p256::ecdsa::{SigningKey, VerifyingKey};
use simfota_device::config::{AuthScheme, Encoding};
use simfota_wire::{IntegrityMode, Policy, PublicKey, Rights, UnauthorizedRule};

use crate::keys;
use crate::setup::{self, firmware, operator::Operator};
use device::{Behaviour, Identity, Protocol, SimDevice, Timings};
use report::{ErrorGroup, ErrorKind, Percentiles, Report};
use simfota_cardlink::Crypto;

/// The fleet's manufacturer (DevInfo/Man).
const MANUFACTURER: &str = "simfota fleet";
/// ServerID of the servers the fleet starts.
const OWN_SERVER_ID: &str = "simfota-fleet";
/// The originator's id on the cards and the servers the fleet starts.
const OWN_ORIGINATOR_ID: &str = "oem";
/// The firmware version every device runs before its update.
const FROM_VERSION: &str = "1.0";
/// The release the campaign delivers.
const TO_VERSION: &str = "2.0";
/// Devices per bulk registration request (the API's bound).
const BULK_MAX: usize = 10_000;
/// Most devices of one run, driven and idle (the identities' serial has 7 digits).
const RUN_DEVICES_MAX: u64 = 10_000_000;
/// Stack of the worker threads: a card's RAM store (two images of its persistent memory)
/// passes through the stack when it is created.
const WORKER_STACK: usize = 4 << 20;

/// Options of `simfota fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices to register and update (each holds a card in memory, about 45 KB).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    devices: u32,
    /// Also register this many devices of the run's model that never connect: they are in
    /// the campaign (their jobs stay pending), so the run measures updates inside a campaign
    /// of `--devices` + N devices. They get no card and cost the simulator nothing.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=9_000_000))]
    idle_devices: u32,
    /// Count the SQL statements the servers run during the measured phase, by statement,
    /// from their statement log (which costs CPU: the run's CPU figures include it).
    #[arg(long, conflicts_with = "target")]
    count_statements: bool,
    /// Worker threads, each driving one device at a time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Stop starting new devices after this many seconds (the ones running finish).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: Option<u64>,
    /// SyncML encoding of the DM messages.
    #[arg(long, default_value = "xml", value_parser = ["xml", "wbxml"])]
    encoding: String,
    /// DM authentication: MD5 digest or HMAC (syncml:auth-MAC).
    #[arg(long, default_value = "md5", value_parser = ["md5", "hmac"])]
    auth: String,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    payload_size: u32,
    /// Devices also fetch the payload (by default they fetch the envelope only).
    #[arg(long)]
    download: bool,
    /// Print one JSON object with the figures on stdout (progress stays on stderr).
    #[arg(long)]
    json: bool,
    /// PostgreSQL URL for the servers the fleet starts [default: SQLite in a temporary folder].
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    database: Option<String>,
    /// Server processes on the one PostgreSQL database, behind a round-robin relay.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16), conflicts_with = "target")]
    replicas: u32,
    /// Kill a server process with SIGKILL this many times during the measured phase, spread
    /// over it (after each 1/(N+1) of the devices completed), and restart it on the same data
    /// folder and port; replicas are killed in turn. Devices retry while it is down.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1000), conflicts_with = "target")]
    kills: u32,
    /// Drive an existing server at this URL instead of starting one.
    #[arg(long, value_name = "URL", requires_all = ["token_file", "server_id", "server_key", "issuer_key", "originator_key"])]
    target: Option<String>,
    /// With --target: a file holding an operator API token.
    #[arg(long, value_name = "FILE", requires = "target")]
    token_file: Option<PathBuf>,
    /// With --target: the server's ServerID (the `iss` of its delivery tokens).
    #[arg(long, value_name = "ID", requires = "target")]
    server_id: Option<String>,
    /// With --target: the server's public key (its DATA/server-pub.pem).
    #[arg(long, value_name = "PEM", requires = "target")]
    server_key: Option<PathBuf>,
    /// With --target: a card issuer's private key whose public key the server trusts.
    #[arg(long, value_name = "PEM", requires = "target")]
    issuer_key: Option<PathBuf>,
    /// With --target: a software originator's private key the server trusts.
    #[arg(long, value_name = "PEM", requires = "target")]
    originator_key: Option<PathBuf>,
    /// With --target: that originator's id on the server.
    #[arg(long, value_name = "ID", default_value = OWN_ORIGINATOR_ID)]
    originator_id: String,
    /// Crypto back-end of the simulated cards: `host` (ring) or `software` (the card crate's
    /// no_std code, as on a microcontroller). The cards answer the same either way.
    #[arg(long, default_value = "host", value_parser = ["host", "software"])]
    card_crypto: String,
}

/// Runs `simfota fleet`.
pub fn run(args: Args) -> Result<ExitCode> {
    if args.replicas > 1 && args.database.is_none() {
        bail!(
            "--replicas {} needs --database postgres://...: replicas share one PostgreSQL \
             database (SQLite serves one process)",
            args.replicas
        );
    }
    if let Some(db) = &args.database
        && !(db.starts_with("postgres://") || db.starts_with("postgresql://"))
    {
        bail!("--database takes a PostgreSQL URL (postgres://user@host/db); SQLite is the default");
    }
    if let Some(t) = &args.target
        && !(t.starts_with("http://") || t.starts_with("https://"))
    {
        bail!("--target takes the server's base URL (http://host:port or https://...)");
    }
    if u64::from(args.devices) + u64::from(args.idle_devices) > RUN_DEVICES_MAX {
        bail!("--devices and --idle-devices add up to more than {RUN_DEVICES_MAX}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    crate::device::stop_on_signals(stop.clone(), Arc::new(Mutex::new(None)))?;
    let progress = Progress::new();
    let setup_started = Instant::now();
    let world = World::set_up(&args, &progress, &stop)?;
    let setup_s = setup_started.elapsed().as_secs_f64();
    // The servers stop and the temporary folder goes when `drive` is done with them.
    let report = world.drive(&args, &progress, &stop, setup_s)?;
    if args.json {
        let text = serde_json::to_string(&report).context("cannot encode the report")?;
        outln!("{text}");
    } else {
        report::print(&report);
    }
    if stop.load(Ordering::Relaxed) {
        errln!(
            "fleet: stopped by a signal; the servers are stopped and the temporary folder removed"
        );
        return Ok(ExitCode::from(130));
    }
    if report.ok {
        return Ok(ExitCode::SUCCESS);
    }
    match &report.verification {
        Some(v) if !v.matches => bail!(
            "the server counts {} succeeded updates in campaign {}, the simulator {}",
            v.server_succeeded,
            v.campaign_id,
            report.complete_updates
        ),
        Some(v) if v.card_logs_exact != v.card_logs_checked => bail!(
            "{} of {} card logs are not stored exactly: {}",
            v.card_logs_checked - v.card_logs_exact,
            v.card_logs_checked,
            v.card_log_problem.as_deref().unwrap_or("(no detail)")
        ),
        Some(v) if v.jobs_unsettled != 0 || !v.counters_match_recount => bail!(
            "campaign {}: {} jobs left delivered or pending; its counters {} the recount of its jobs",
            v.campaign_id,
            v.jobs_unsettled,
            if v.counters_match_recount {
                "equal"
            } else {
                "differ from"
            }
        ),
        None => bail!("the server's count of the campaign could not be read"),
        _ => bail!(
            "{} of {} started updates did not complete (errors above)",
            report.failed_updates,
            report.started
        ),
    }
}

/// Progress on stderr: one line rewritten in place at a terminal, a line every few seconds
/// otherwise.
#[derive(Clone, Copy)]
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn say(&self, line: &str) {
        errln!("fleet: {line}");
    }

    fn every(&self) -> Duration {
        if self.terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(5)
        }
    }

    fn tick(&self, line: &str) {
        if self.terminal {
            crate::output::stderr(format_args!("\r\x1b[2Kfleet: {line}"));
        } else {
            errln!("fleet: {line}");
        }
    }

    fn done(&self) {
        if self.terminal {
            crate::output::stderr(format_args!("\r\x1b[2K"));
        }
    }
}

/// Everything set up before the measured phase.
struct World {
    // Dropped in this order: the servers stop before their folder goes.
    servers: Option<servers::Servers>,
    _temp: Option<tempfile::TempDir>,
    operator: Operator,
    devices: Vec<SimDevice>,
    /// Devices in the campaign that never connect (`--idle-devices`).
    idle: usize,
    campaign_id: i64,
    behaviour: Behaviour,
    database: &'static str,
    replicas: usize,
}

/// Keys and identity of the server the devices talk to.
struct ServerSide {
    url: String,
    server_id: String,
    server_key: PublicKey,
    operator: Operator,
    issuer: SigningKey,
    originator: SigningKey,
    originator_id: String,
}

impl World {
    fn set_up(args: &Args, progress: &Progress, stop: &AtomicBool) -> Result<World> {
        let (side, servers, temp) = match &args.target {
            Some(url) => (target_side(args, url)?, None, None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("simfota-fleet-")
                    .tempdir()
                    .context("cannot create a temporary folder")?;
                let (side, servers) = own_servers(args, temp.path(), progress)?;
                (side, Some(servers), Some(temp))
            }
        };
        let database = match (&args.target, &args.database) {
            (Some(_), _) => "target",
            (None, Some(_)) => "postgres",
            (None, None) => "sqlite",
        };
        let protocol = Protocol {
            encoding: if args.encoding == "wbxml" {
                Encoding::Wbxml
            } else {
                Encoding::Xml
            },
            auth: if args.auth == "hmac" {
                AuthScheme::Hmac
            } else {
                AuthScheme::Md5
            },
            card_crypto: Crypto::from_name(&args.card_crypto).unwrap_or(Crypto::Host),
        };
        // A run's own block of IMEIs, ICCIDs and its own model: runs against one database
        // never collide, and the campaign targets this run's devices only.
        let run_tag = random_digits(RUN_TAG_DIGITS);
        let model = format!("FLEET-{run_tag}");
        let n = args.devices as usize;
        let idle = args.idle_devices as usize;
        let ids: Vec<Identity> = (0..n).map(|i| identity(&run_tag, i)).collect();

        progress.say(&format!(
            "registering {} devices (model {model}{})",
            n + idle,
            if idle > 0 {
                format!(", {idle} of them idle")
            } else {
                String::new()
            }
        ));
        let entry = |d: &Identity| {
            serde_json::json!({
                "imei": d.imei,
                "username": d.username,
                "password": d.password,
                "server_password": d.server_password,
                "auth": args.auth,
                "model": model,
                "manufacturer": MANUFACTURER,
                "fw_version": FROM_VERSION,
                "nonce": d.nonce,
            })
        };
        let mut registered = 0;
        let mut last_said = Instant::now();
        let idle_ids = (n..n + idle).map(|i| identity(&run_tag, i));
        let mut all = ids.iter().map(entry).chain(idle_ids.map(|d| entry(&d)));
        loop {
            let chunk: Vec<serde_json::Value> = all.by_ref().take(BULK_MAX).collect();
            if chunk.is_empty() {
                break;
            }
            if stop.load(Ordering::Relaxed) {
                bail!("stopped by a signal during the setup");
            }
            let created = side.operator.register_bulk(&chunk)?;
            if created != chunk.len() as u64 {
                bail!(
                    "the server created {created} of the {} devices sent",
                    chunk.len()
                );
            }
            registered += chunk.len();
            if last_said.elapsed() >= progress.every() {
                last_said = Instant::now();
                progress.tick(&format!("registered {registered}/{}", n + idle));
            }
        }
        progress.done();

        progress.say(&format!("personalizing {n} cards"));
        let devices = personalize_all(&side, &ids, &model, protocol, args.concurrency, stop)?;

        progress.say(&format!(
            "uploading a package ({} bytes) and starting the campaign",
            args.payload_size
        ));
        let payload = firmware::image_of_len(
            TO_VERSION,
            run_tag.parse().unwrap_or(0),
            args.payload_size as usize,
        );
        let envelope = firmware::full_envelope(&payload, TO_VERSION, 2, &side.originator)?;
        let package_id = side
            .operator
            .upload_parts(TO_VERSION, &envelope, &payload)?;
        let campaign_id =
            side.operator
                .campaign_for(&format!("fleet {model}"), package_id, Some(&model))?;
        Ok(World {
            servers,
            _temp: temp,
            operator: side.operator,
            devices,
            idle,
            campaign_id,
            behaviour: Behaviour {
                download: args.download,
                payload: Arc::new(payload),
            },
            database,
            replicas: if args.target.is_some() {
                0
            } else {
                args.replicas as usize
            },
        })
    }

    /// The measured phase, then the server's count.
    fn drive(
        mut self,
        args: &Args,
        progress: &Progress,
        stop: &AtomicBool,
        setup_s: f64,
    ) -> Result<Report> {
        let total = self.devices.len();
        let queue = Mutex::new(std::mem::take(&mut self.devices).into_iter());
        let deadline = args
            .duration
            .map(|s| Instant::now() + Duration::from_secs(s));
        let server_cpu = |servers: &Option<servers::Servers>| -> Option<f64> {
            servers.as_ref().and_then(servers::Servers::cpu_ms)
        };
        let started_count = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let failed = AtomicU64::new(0);
        let finished = AtomicBool::new(false);
        let results: Mutex<Collected> = Mutex::new(Collected::default());
        let server_before = server_cpu(&self.servers);
        let statements_before = self.servers.as_ref().and_then(servers::Servers::statements);
        let own_postgres = self.database == "postgres";
        let database_before = own_postgres.then(servers::postgres_cpu_ms).flatten();
        let self_before = servers::cpu_ms(None).unwrap_or(0.0);
        let started = Instant::now();
        let behaviour = &self.behaviour;
        let mut stopped_early = false;
        let kills = AtomicU32::new(0);
        let kill_failure: Mutex<Option<String>> = Mutex::new(None);
        let own = self.servers.as_mut();
        std::thread::scope(|scope| -> Result<()> {
            let mut workers = Vec::new();
            for w in 0..args.concurrency {
                let worker = std::thread::Builder::new()
                    .name(format!("device-{w}"))
                    .stack_size(WORKER_STACK)
                    .spawn_scoped(scope, || {
                        let http = simfota_device::download::http_agent();
                        let mut mine = Collected::default();
                        loop {
                            if stop.load(Ordering::Relaxed)
                                || deadline.is_some_and(|d| Instant::now() >= d)
                            {
                                break;
                            }
                            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                            let Some(mut dev) = next else { break };
                            started_count.fetch_add(1, Ordering::Relaxed);
                            let mut t = Timings::default();
                            match dev.update(&http, behaviour, &mut t) {
                                Ok(()) => {
                                    done.fetch_add(1, Ordering::Relaxed);
                                    mine.updates.push(t.update);
                                    match dev.card_log() {
                                        Ok((next, head)) => mine.card_logs.push(CardLog {
                                            iccid: dev.iccid.clone(),
                                            next,
                                            head,
                                        }),
                                        Err(f) => mine.error(
                                            f.kind,
                                            &format!("{}: {}", dev.cfg.imei, f.message),
                                        ),
                                    }
                                }
                                Err(f) => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    mine.error(f.kind, &format!("{}: {}", dev.cfg.imei, f.message));
                                }
                            }
                            mine.sessions.extend(t.sessions);
                            for (kind, why) in t.retries {
                                mine.error(kind, &format!("{}: {why}", dev.cfg.imei));
                            }
                        }
                        results
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .merge(mine);
                    })
                    .context("cannot start a worker thread")?;
                workers.push(worker);
            }
            // The kills: the k-th of N once k/(N+1) of the devices completed, so that each
            // falls while updates are in flight, whatever the rate.
            let killer = own.filter(|_| args.kills > 0).map(|servers| {
                let (kills, kill_failure, done, finished) =
                    (&kills, &kill_failure, &done, &finished);
                scope.spawn(move || {
                    let n = u64::from(args.kills);
                    while !finished.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(5));
                        let k = u64::from(kills.load(Ordering::Relaxed));
                        if k >= n || done.load(Ordering::Relaxed) < total as u64 * (k + 1) / (n + 1)
                        {
                            continue;
                        }
                        let which = (k as usize) % servers.count().max(1);
                        match servers.kill_and_restart(which) {
                            Ok(()) => {
                                kills.fetch_add(1, Ordering::Relaxed);
                                progress.say(&format!(
                                    "killed server process {} (SIGKILL) and restarted it",
                                    which + 1
                                ));
                            }
                            Err(e) => {
                                *kill_failure.lock().unwrap_or_else(PoisonError::into_inner) =
                                    Some(format!("{e:#}"));
                                break;
                            }
                        }
                    }
                })
            });
            // Progress until the workers are done.
            let ticker = scope.spawn(|| {
                let mut last = Instant::now();
                while !finished.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    if last.elapsed() < progress.every() {
                        continue;
                    }
                    last = Instant::now();
                    let secs = started.elapsed().as_secs_f64();
                    let d = done.load(Ordering::Relaxed);
                    progress.tick(&format!(
                        "{d}/{total} updates, {:.1}/s, {} errors, {:.0} s",
                        d as f64 / secs.max(1e-9),
                        failed.load(Ordering::Relaxed),
                        secs
                    ));
                }
            });
            for w in workers {
                if w.join().is_err() {
                    let mut r = results.lock().unwrap_or_else(PoisonError::into_inner);
                    r.error(ErrorKind::Internal, "a worker thread ended abnormally");
                }
            }
            finished.store(true, Ordering::Relaxed);
            let _ = ticker.join();
            if let Some(k) = killer
                && k.join().is_err()
            {
                let mut r = results.lock().unwrap_or_else(PoisonError::into_inner);
                r.error(
                    ErrorKind::Internal,
                    "the thread killing servers ended abnormally",
                );
            }
            Ok(())
        })?;
        progress.done();
        let elapsed = started.elapsed().as_secs_f64();
        let self_after = servers::cpu_ms(None).unwrap_or(0.0);
        let server_after = server_cpu(&self.servers);
        let statements_after = self.servers.as_ref().and_then(servers::Servers::statements);
        let database_after = own_postgres.then(servers::postgres_cpu_ms).flatten();
        let started_n = started_count.load(Ordering::Relaxed);
        if started_n < total {
            stopped_early = true;
        }
        let mut collected = results.into_inner().unwrap_or_else(PoisonError::into_inner);
        let complete = done.load(Ordering::Relaxed);
        let failed_n = failed.load(Ordering::Relaxed)
            + collected
                .errors
                .get(&ErrorKind::Internal)
                .map_or(0, |g| g.count);
        if let Some(why) = self.servers.as_mut().and_then(servers::Servers::exited) {
            collected.error(ErrorKind::Internal, &why);
        }
        if let Some(why) = kill_failure
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
        {
            collected.error(ErrorKind::Internal, &why);
        }
        let card_logs = std::mem::take(&mut collected.card_logs);
        let verification = match self.verify(complete, &card_logs, args.concurrency) {
            Ok(v) => Some(v),
            Err(e) => {
                progress.say(&format!("cannot read the campaign back: {e:#}"));
                None
            }
        };
        let per = |ms: f64| (complete > 0).then(|| report::round2(ms / complete as f64));
        let server_ms = match (server_before, server_after) {
            (Some(b), Some(a)) => Some(report::round2(a - b)),
            _ => None,
        };
        let simulator_ms = report::round2(self_after - self_before);
        let database_ms = match (database_before, database_after) {
            (Some(b), Some(a)) => Some(report::round2(a - b)),
            _ => None,
        };
        let sql = match (statements_before, statements_after) {
            (Some(before), Some(after)) => Some(report::Sql::between(&before, &after, complete)),
            _ => None,
        };
        let errors: BTreeMap<&'static str, ErrorGroup> = collected
            .errors
            .iter()
            .map(|(k, g)| (k.name(), g.clone()))
            .collect();
        // Retried steps are counted in `errors` but are no failure: the run is good when every
        // started update completed and the server agrees and settled.
        let ok = collected.errors.keys().all(|k| k.is_retry())
            && verification.as_ref().is_some_and(|v| {
                v.matches
                    && v.jobs_unsettled == 0
                    && v.counters_match_recount
                    && v.card_logs_exact == v.card_logs_checked
            });
        Ok(Report {
            ok,
            devices: total,
            started: started_n,
            complete_updates: complete,
            failed_updates: failed_n,
            elapsed_s: report::round2(elapsed),
            updates_per_s: report::round2(complete as f64 / elapsed.max(1e-9)),
            session_latency: Percentiles::of(&mut collected.sessions),
            update_latency: Percentiles::of(&mut collected.updates),
            cpu: report::Cpu {
                server_ms,
                server_ms_per_update: server_ms.and_then(per),
                simulator_ms,
                simulator_ms_per_update: per(simulator_ms),
                database_ms,
                database_ms_per_update: database_ms.and_then(per),
            },
            sql,
            errors,
            verification,
            stopped_early,
            kills: kills.load(Ordering::Relaxed),
            setup: report::Setup {
                database: self.database,
                replicas: self.replicas,
                encoding: if args.encoding == "wbxml" {
                    "wbxml"
                } else {
                    "xml"
                },
                auth: if args.auth == "hmac" { "hmac" } else { "md5" },
                card_crypto: Crypto::from_name(&args.card_crypto)
                    .unwrap_or(Crypto::Host)
                    .name(),
                idle_devices: self.idle,
                concurrency: args.concurrency as usize,
                payload_size: args.payload_size as usize,
                download: args.download,
                setup_s: report::round2(setup_s),
            },
        })
    }
}

impl World {
    /// The server's view of the campaign after the run (`GET /campaigns/{id}/audit`): its
    /// succeeded count against the simulator's `complete` updates, no job left delivered or
    /// pending but the idle devices' (every device that lost an update to a kill got it
    /// again), and its progress counters equal to the server's recount of the jobs.
    fn verify(
        &self,
        complete: u64,
        card_logs: &[CardLog],
        threads: u32,
    ) -> Result<report::Verification> {
        let (card_logs_exact, card_log_problem) = self.check_card_logs(card_logs, threads);
        let v = self.operator.campaign_audit(self.campaign_id)?;
        let a: Audit = serde_json::from_value(v.clone()).map_err(|e| {
            anyhow!("the campaign's audit is not what the API documents ({e}): {v}")
        })?;
        let idle = i64::try_from(self.idle).unwrap_or(i64::MAX);
        Ok(report::Verification {
            campaign_id: self.campaign_id,
            server_succeeded: a.counters.succeeded,
            server_failed: a.counters.failed,
            matches: u64::try_from(a.counters.succeeded).ok() == Some(complete),
            jobs_unsettled: a.recount.delivered + a.pending + a.waiting - idle,
            counters_match_recount: a.consistent && a.counters == a.recount,
            card_logs_checked: card_logs.len(),
            card_logs_exact,
            card_log_problem,
        })
    }

    /// Every completed device's card log as the server stored it (`GET /cards/{iccid}/log`)
    /// against the card: entries 0 to the card's next sequence number, each once, the last
    /// one's hash the card's chain head. Answers how many were exact, and the first problem.
    fn check_card_logs(&self, logs: &[CardLog], threads: u32) -> (usize, Option<String>) {
        let threads = (threads as usize).clamp(1, 8);
        let per = logs.len().div_ceil(threads).max(1);
        let results: Vec<(usize, Option<String>)> = std::thread::scope(|scope| {
            let parts: Vec<_> = logs
                .chunks(per)
                .map(|chunk| {
                    scope.spawn(move || {
                        let mut exact = 0;
                        let mut problem = None;
                        for log in chunk {
                            match self.card_log_problem(log) {
                                None => exact += 1,
                                Some(p) => {
                                    problem.get_or_insert(p);
                                }
                            }
                        }
                        (exact, problem)
                    })
                })
                .collect();
            parts
                .into_iter()
                .map(|p| {
                    p.join().unwrap_or_else(|_| {
                        (
                            0,
                            Some("a card-log checking thread ended abnormally".into()),
                        )
                    })
                })
                .collect()
        });
        let exact = results.iter().map(|r| r.0).sum();
        let problem = results.into_iter().find_map(|r| r.1);
        (exact, problem)
    }

    /// What is wrong with the server's copy of `log`, if anything.
    fn card_log_problem(&self, log: &CardLog) -> Option<String> {
        let v = match self.operator.card_log(&log.iccid) {
            Ok(v) => v,
            Err(e) => return Some(format!("card {}: {e:#}", log.iccid)),
        };
        let Some(entries) = v["entries"].as_array() else {
            return Some(format!(
                "card {}: the answer lists no entries: {v}",
                log.iccid
            ));
        };
        let seqs: Vec<i64> = entries.iter().filter_map(|e| e["seq"].as_i64()).collect();
        let expected: Vec<i64> = (0..i64::from(log.next)).collect();
        if seqs != expected {
            return Some(format!(
                "card {}: the server holds entries {seqs:?}, the card's log runs 0..{}",
                log.iccid, log.next
            ));
        }
        let last = entries.last().and_then(|e| e["entry_hash"].as_str());
        if log.next > 0 && last != Some(hex::encode(log.head).as_str()) {
            return Some(format!(
                "card {}: the last stored entry's hash {last:?} is not the card's chain head {}",
                log.iccid,
                hex::encode(log.head)
            ));
        }
        None
    }
}

/// A completed device's card log as its card holds it.
struct CardLog {
    iccid: String,
    /// The card's next sequence number (entries 0 to next - 1 exist).
    next: u32,
    /// The card's chain head: the hash of its newest entry.
    head: [u8; 32],
}

/// `GET /campaigns/{id}/audit`.
#[derive(serde::Deserialize)]
struct Audit {
    counters: Counts,
    recount: Counts,
    pending: i64,
    waiting: i64,
    consistent: bool,
}

/// A campaign's progress counts.
#[derive(serde::Deserialize, PartialEq, Eq)]
struct Counts {
    total: i64,
    released: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    delivered: i64,
}

/// What the workers measured.
#[derive(Default)]
struct Collected {
    sessions: Vec<Duration>,
    updates: Vec<Duration>,
    card_logs: Vec<CardLog>,
    errors: BTreeMap<ErrorKind, ErrorGroup>,
}

impl Collected {
    fn error(&mut self, kind: ErrorKind, message: &str) {
        self.errors
            .entry(kind)
            .and_modify(|g| g.count += 1)
            .or_insert_with(|| ErrorGroup {
                count: 1,
                example: message.to_owned(),
            });
    }

    fn merge(&mut self, other: Collected) {
        self.sessions.extend(other.sessions);
        self.updates.extend(other.updates);
        self.card_logs.extend(other.card_logs);
        for (k, g) in other.errors {
            self.errors
                .entry(k)
                .and_modify(|mine| mine.count += g.count)
                .or_insert(g);
        }
    }
}

/// Starts the fleet's own servers in `dir`, with new issuer and originator keys.
fn own_servers(
    args: &Args,
    dir: &std::path::Path,
    progress: &Progress,
) -> Result<(ServerSide, servers::Servers)> {
    let issuer = setup::new_key_files(dir, "issuer")?;
    let originator = setup::new_key_files(dir, "oem")?;
    let data = dir.join("server");
    progress.say(&format!(
        "starting {} server process{} ({})",
        args.replicas,
        if args.replicas == 1 { "" } else { "es" },
        if args.database.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    ));
    let issuer_pub = dir.join("issuer.pub.pem");
    let originator_pub = dir.join("oem.pub.pem");
    let plan = servers::Plan {
        data: &data,
        database: args.database.as_deref(),
        replicas: args.replicas as usize,
        server_id: OWN_SERVER_ID,
        issuer_pub: &issuer_pub,
        originator: (OWN_ORIGINATOR_ID, &originator_pub),
        statements: args
            .count_statements
            .then(|| Arc::new(servers::StatementLog::default())),
    };
    let token = servers::Servers::new_api_token(&plan, "simfota-fleet")?;
    let servers = servers::Servers::start(&plan)?;
    let url = servers.url().to_owned();
    let operator = Operator::with_token(&url, &token);
    let key = keys::load_public(&data.join("server-pub.pem"))?;
    Ok((
        ServerSide {
            url,
            server_id: OWN_SERVER_ID.to_owned(),
            server_key: PublicKey::from(VerifyingKey::from(key)),
            operator,
            issuer,
            originator,
            originator_id: OWN_ORIGINATOR_ID.to_owned(),
        },
        servers,
    ))
}

/// The server at `--target`, with the keys and token given.
fn target_side(args: &Args, url: &str) -> Result<ServerSide> {
    let need =
        |v: &Option<PathBuf>, flag: &str| v.clone().ok_or_else(|| anyhow!("--target needs {flag}"));
    let token_file = need(&args.token_file, "--token-file")?;
    let token = crate::files::read_text(&token_file, "the API token")?;
    let server_id = args
        .server_id
        .clone()
        .ok_or_else(|| anyhow!("--target needs --server-id"))?;
    let server_key = keys::load_public(&need(&args.server_key, "--server-key")?)?;
    let issuer = SigningKey::from(keys::load_private(&need(
        &args.issuer_key,
        "--issuer-key",
    )?)?);
    let originator = SigningKey::from(keys::load_private(&need(
        &args.originator_key,
        "--originator-key",
    )?)?);
    let operator = Operator::with_token(url, &token);
    // Reachable, and the token accepted, before anything is created.
    operator
        .campaigns()
        .with_context(|| format!("cannot use the server at {url}"))?;
    Ok(ServerSide {
        url: url.trim_end_matches('/').to_owned(),
        server_id,
        server_key: PublicKey::from(VerifyingKey::from(server_key)),
        operator,
        issuer,
        originator,
        originator_id: args.originator_id.clone(),
    })
}

/// One device per identity, each card personalized, spread over `threads` threads.
fn personalize_all(
    side: &ServerSide,
    ids: &[Identity],
    model: &str,
    protocol: Protocol,
    threads: u32,
    stop: &AtomicBool,
) -> Result<Vec<SimDevice>> {
    let threads = (threads as usize).clamp(1, 8).min(ids.len().max(1));
    let per = ids.len().div_ceil(threads);
    let policy = Policy::new(UnauthorizedRule::Refuse, IntegrityMode::DeviceDigest);
    let rights = Rights::FIRMWARE_UPDATE | Rights::LOG_READ | Rights::LOG_ACK;
    std::thread::scope(|scope| {
        let mut parts = Vec::new();
        for chunk in ids.chunks(per.max(1)) {
            let part = std::thread::Builder::new()
                .name("personalize".into())
                .stack_size(WORKER_STACK)
                .spawn_scoped(scope, move || -> Result<Vec<SimDevice>> {
                    let mut out = Vec::with_capacity(chunk.len());
                    for id in chunk {
                        if stop.load(Ordering::Relaxed) {
                            bail!("stopped by a signal during the setup");
                        }
                        let dev = SimDevice::new(
                            id,
                            &side.url,
                            &side.server_id,
                            model,
                            protocol,
                            FROM_VERSION,
                        );
                        {
                            let mut card =
                                dev.card().lock().unwrap_or_else(PoisonError::into_inner);
                            setup::personalize(
                                &mut card,
                                &side.issuer,
                                &setup::CardSpec {
                                    issuer_name: "operator.example",
                                    iccid: &id.iccid,
                                    imsi: "001010000000001",
                                    pin: "1234",
                                    puk: "12345678",
                                    server: (&side.server_id, side.server_key, rights),
                                    originator: (&side.originator_id, &side.originator),
                                    policy,
                                },
                            )
                            .with_context(|| format!("card {}", id.iccid))?;
                        }
                        out.push(dev);
                    }
                    Ok(out)
                })
                .context("cannot start a personalization thread")?;
            parts.push(part);
        }
        let mut all = Vec::with_capacity(ids.len());
        for p in parts {
            let devices = p
                .join()
                .map_err(|_| anyhow!("a personalization thread ended abnormally"))??;
            all.extend(devices);
        }
        Ok(all)
    })
}

/// Digits of a run's tag in its devices' IMEIs and ICCIDs.
const RUN_TAG_DIGITS: usize = 5;

/// The identity of device `i` of the run `tag` ([`RUN_TAG_DIGITS`] digits): IMEI `35` + tag +
/// 7-digit serial + Luhn digit; ICCID `89882` + tag + 8-digit serial + Luhn digit.
fn identity(tag: &str, i: usize) -> Identity {
    let imei = with_luhn(&format!("35{tag}{i:07}"));
    let iccid = with_luhn(&format!("89882{tag}{i:08}"));
    Identity {
        username: format!("fleet-{imei}"),
        password: uuid::Uuid::new_v4().simple().to_string(),
        server_password: uuid::Uuid::new_v4().simple().to_string(),
        nonce: base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes()),
        imei,
        iccid,
    }
}

/// `digits` followed by its Luhn check digit (ISO/IEC 7812-1 Annex B).
fn with_luhn(digits: &str) -> String {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// `n` random decimal digits.
fn random_digits(n: usize) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(n)
        .map(|b| char::from(b'0' + b % 10))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_valid_and_distinct() {
        let a = identity("12345", 0);
        let b = identity("12345", 9_999_999);
        assert!(simfota_wire::Imei::parse(&a.imei).is_ok(), "{}", a.imei);
        assert!(simfota_wire::Imei::parse(&b.imei).is_ok(), "{}", b.imei);
        assert!(simfota_wire::Iccid::parse(&a.iccid).is_ok(), "{}", a.iccid);
        assert!(simfota_wire::Iccid::parse(&b.iccid).is_ok(), "{}", b.iccid);
        assert_ne!(a.imei, b.imei);
        assert_eq!(with_luhn("49015420323751"), "490154203237518");
    }
}
