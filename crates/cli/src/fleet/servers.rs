//! The servers a fleet run starts: `simfota server` child processes of this same binary, on
//! SQLite in the run's temporary folder or on one PostgreSQL, and, for several replicas, a
//! round-robin TCP relay in this process in front of them. Also the CPU clocks of
//! `/proc/<pid>/stat` the run reads before and after its measured phase.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How long a server may take to say it listens (migrations on a fresh database included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines of a server kept to explain a failure.
const KEPT_LINES: usize = 20;

/// The `simfota server` settings that must not leak in from the caller's environment.
const SERVER_VARS: &[&str] = &[
    "SIMFOTA_CONFIG",
    "SIMFOTA_DATA",
    "SIMFOTA_LISTEN",
    "SIMFOTA_DATABASE_URL",
    "SIMFOTA_PUBLIC_URL",
    "SIMFOTA_TLS_CERT",
    "SIMFOTA_TLS_KEY",
    "SIMFOTA_SERVER_ID",
    "SIMFOTA_SERVER_KEY",
    "SIMFOTA_ISSUER_KEYS",
    "SIMFOTA_ORIGINATORS",
    "SIMFOTA_ENROLMENT",
    "SIMFOTA_ENROLMENT_PASSWORD",
    "SIMFOTA_LOG_FORMAT",
];

/// How to start the servers.
pub struct Plan<'a> {
    /// The shared data folder (server key, first API token, package payloads).
    pub data: &'a Path,
    /// PostgreSQL URL; `None`: SQLite in `data`.
    pub database: Option<&'a str>,
    /// How many server processes.
    pub replicas: usize,
    /// ServerID.
    pub server_id: &'a str,
    /// The card issuer's public key.
    pub issuer_pub: &'a Path,
    /// The originator's id and public key.
    pub originator: (&'a str, &'a Path),
    /// Counts the SQL statements the servers run, from their statement log.
    pub statements: Option<Arc<StatementLog>>,
}

/// One `simfota server` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

/// The running servers, stopped when dropped.
pub struct Servers {
    servers: Vec<Server>,
    relay: Option<Relay>,
    url: String,
    /// How to start one again (after [`Servers::kill_and_restart`]).
    restart: Restart,
    /// CPU of the processes killed so far, in milliseconds (read just before each kill).
    killed_cpu_ms: f64,
}

/// What [`start_one`] needs to start a server again: the plan, owned.
struct Restart {
    exe: PathBuf,
    data: PathBuf,
    database: Option<String>,
    server_id: String,
    issuer_pub: PathBuf,
    originator: (String, PathBuf),
    public_url: Option<String>,
    statements: Option<Arc<StatementLog>>,
}

impl Restart {
    fn plan(&self) -> Plan<'_> {
        Plan {
            data: &self.data,
            database: self.database.as_deref(),
            replicas: 1,
            server_id: &self.server_id,
            issuer_pub: &self.issuer_pub,
            originator: (&self.originator.0, &self.originator.1),
            statements: self.statements.clone(),
        }
    }
}

impl Servers {
    /// Starts the servers of `plan` (the first alone: it creates the server key, the first API
    /// token and the database), and the relay in front of several.
    pub fn start(plan: &Plan<'_>) -> Result<Servers> {
        let exe = std::env::current_exe().context("cannot find this program to start servers")?;
        let mut out = Servers {
            servers: Vec::new(),
            relay: None,
            url: String::new(),
            restart: Restart {
                exe: exe.clone(),
                data: plan.data.to_owned(),
                database: plan.database.map(str::to_owned),
                server_id: plan.server_id.to_owned(),
                issuer_pub: plan.issuer_pub.to_owned(),
                originator: (plan.originator.0.to_owned(), plan.originator.1.to_owned()),
                public_url: None,
                statements: plan.statements.clone(),
            },
            killed_cpu_ms: 0.0,
        };
        // Several replicas are reached through the relay: the URLs they hand out (PkgURL,
        // RespURI) must name it, so it is bound first.
        let listener = if plan.replicas > 1 {
            Some(TcpListener::bind("127.0.0.1:0").context("cannot open the relay's port")?)
        } else {
            None
        };
        let public_url = match &listener {
            Some(l) => Some(format!(
                "http://{}",
                l.local_addr().context("cannot read the relay's port")?
            )),
            None => None,
        };
        out.restart.public_url.clone_from(&public_url);
        for n in 0..plan.replicas {
            let server = start_one(&exe, plan, public_url.as_deref(), None)
                .with_context(|| format!("starting server process {}", n + 1))?;
            out.servers.push(server);
        }
        match (listener, public_url) {
            (Some(listener), Some(url)) => {
                let upstream = out.servers.iter().map(|s| s.addr).collect();
                out.relay = Some(Relay::start(listener, upstream)?);
                out.url = url;
            }
            _ => {
                let addr = out
                    .servers
                    .first()
                    .map(|s| s.addr)
                    .ok_or_else(|| anyhow!("no server started"))?;
                out.url = format!("http://{addr}");
            }
        }
        Ok(out)
    }

    /// A new operator API token from the plan's database (`simfota server --new-api-token`,
    /// which creates and migrates the database first). A database that already holds tokens
    /// gets no `DATA/api-token` file from the server's first start, so the fleet asks for its
    /// own token every time.
    pub fn new_api_token(plan: &Plan<'_>, name: &str) -> Result<String> {
        let exe = std::env::current_exe().context("cannot find this program to start servers")?;
        let mut cmd = Command::new(exe);
        for v in SERVER_VARS {
            cmd.env_remove(v);
        }
        cmd.arg("server").arg("--data").arg(plan.data);
        if let Some(db) = plan.database {
            cmd.args(["--database", db]);
        }
        let out = cmd
            .args(["--new-api-token", name])
            .stdin(Stdio::null())
            .output()
            .context("cannot run `simfota server --new-api-token`")?;
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || token.is_empty() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("no message").trim();
            bail!(
                "cannot open the server's database: {}",
                last.strip_prefix("simfota: ").unwrap_or(last)
            );
        }
        Ok(token)
    }

    /// The URL devices and the operator use.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process ids of the servers.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.child.id()).collect()
    }

    /// How many server processes run.
    pub fn count(&self) -> usize {
        self.servers.len()
    }

    /// User + system CPU of the servers so far, in milliseconds: the running ones and the
    /// ones killed; `None` where `/proc` cannot tell.
    pub fn cpu_ms(&self) -> Option<f64> {
        let running: Option<f64> = self.pids().iter().map(|p| cpu_ms(Some(*p))).sum();
        running.map(|r| r + self.killed_cpu_ms)
    }

    /// Kills server `n` with SIGKILL (no chance to finish a request or close its database)
    /// and starts it again on the same data folder, database and address; returns once it
    /// listens again.
    pub fn kill_and_restart(&mut self, n: usize) -> Result<()> {
        let Some(old) = self.servers.get_mut(n) else {
            bail!("no server process {n}");
        };
        let addr = old.addr;
        // A killed process keeps its `/proc` entry until it is waited for: its CPU is read
        // last thing before the kill.
        self.killed_cpu_ms += cpu_ms(Some(old.child.id())).unwrap_or(0.0);
        old.child
            .kill()
            .with_context(|| format!("cannot kill server process {}", n + 1))?;
        let _ = old.child.wait();
        let plan = self.restart.plan();
        // The port is free once the process is gone (the server binds with SO_REUSEADDR, so
        // connections in TIME_WAIT do not hold it); a few tries cover a slow release.
        let mut tries = 0;
        let server = loop {
            match start_one(
                &self.restart.exe,
                &plan,
                self.restart.public_url.as_deref(),
                Some(addr),
            ) {
                Ok(s) => break s,
                Err(_) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e.context(format!("restarting server process {}", n + 1)));
                }
            }
        };
        if let Some(slot) = self.servers.get_mut(n) {
            *slot = server;
        }
        Ok(())
    }

    /// The SQL statements counted so far, by summary (`None` unless the plan asked).
    pub fn statements(&self) -> Option<BTreeMap<String, u64>> {
        self.restart.statements.as_ref().map(|s| s.snapshot())
    }

    /// A server that exited, with its last log lines.
    pub fn exited(&mut self) -> Option<String> {
        for s in &mut self.servers {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Some(format!(
                    "a server process exited ({status}): {}",
                    last_lines(&s.log)
                ));
            }
        }
        None
    }

    /// Stops the relay and the servers (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]).
    pub fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop();
        }
        for s in &mut self.servers {
            if matches!(s.child.try_wait(), Ok(None)) {
                // SIGTERM lets the server finish what is in flight and close its database;
                // `kill(1)` sends it without `unsafe` in this crate.
                let _ = Command::new("kill")
                    .args(["-TERM", &s.child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for s in &mut self.servers {
            loop {
                match s.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = s.child.kill();
                        let _ = s.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.servers.clear();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn last_lines(log: &Mutex<VecDeque<String>>) -> String {
    let lines = log.lock().unwrap_or_else(PoisonError::into_inner);
    if lines.is_empty() {
        return "it logged nothing".into();
    }
    lines.iter().cloned().collect::<Vec<_>>().join(" | ")
}

/// Starts one server and waits for its "listening" log line (JSON logs: the address is a
/// field of it).
/// A server started again listens on `listen`, its old address; a new one on a free port.
fn start_one(
    exe: &Path,
    plan: &Plan<'_>,
    public_url: Option<&str>,
    listen: Option<SocketAddr>,
) -> Result<Server> {
    let listen = listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut cmd = Command::new(exe);
    for v in SERVER_VARS {
        cmd.env_remove(v);
    }
    cmd.arg("server")
        .arg("--data")
        .arg(plan.data)
        .args(["--listen", &listen, "--log-format", "json"])
        .args(["--server-id", plan.server_id])
        .arg("--issuer-key")
        .arg(plan.issuer_pub)
        .arg("--originator")
        .arg(originator_arg(plan.originator.0, plan.originator.1));
    if let Some(db) = plan.database {
        cmd.args(["--database", db]);
    }
    if let Some(url) = public_url {
        cmd.args(["--public-url", url]);
    }
    // sqlx logs every statement it ran at debug, under its `sqlx::query` target.
    let statements = plan.statements.clone();
    if statements.is_some() {
        cmd.env(
            "RUST_LOG",
            "info,sqlx=warn,sqlx::query=debug,tower_http=warn",
        );
    }
    // Its own process group: a Ctrl-C at the terminal reaches the simulator alone, which
    // then stops the servers itself once the updates in flight are done.
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", exe.display()))?;
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, rx) = mpsc::channel();
    let Some(pipe) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the server's log is not readable");
    };
    let sink = log.clone();
    // Drains the log for the server's whole life (a full pipe would stall it).
    std::thread::Builder::new()
        .name("server-log".into())
        .spawn(move || {
            let mut sent = false;
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(addr) = listening_addr(&line) {
                    let _ = tx.send(addr);
                    sent = true;
                }
                if let Some(counts) = &statements
                    && counts.record(&line)
                {
                    continue;
                }
                let mut kept = sink.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        })
        .context("cannot start the server log reader")?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(addr) => return Ok(Server { child, addr, log }),
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    // Give the reader a moment to take the last lines.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("the server exited ({status}): {}", last_lines(&log));
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the server did not start listening within {} s: {}",
                    START_TIMEOUT.as_secs(),
                    last_lines(&log)
                );
            }
        }
    }
}

/// The SQL statements the servers ran, counted by their summary (sqlx's first words of the
/// statement) from the `sqlx::query` lines of their JSON logs.
#[derive(Default)]
pub struct StatementLog {
    by_summary: Mutex<BTreeMap<String, u64>>,
}

impl StatementLog {
    /// Counts `line` when it is a statement line; answers whether it was one.
    fn record(&self, line: &str) -> bool {
        if !line.contains(r#""target":"sqlx::query""#) {
            return false;
        }
        let summary = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["fields"]["summary"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "(unreadable log line)".to_owned());
        *self
            .by_summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(summary)
            .or_default() += 1;
        true
    }

    /// The counts so far, by summary.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn originator_arg(id: &str, key: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(format!("{id}="));
    s.push(key.as_os_str());
    s
}

/// The address in the server's JSON "listening" line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("simfota server listening") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v["fields"]["local_addr"].as_str()?.parse().ok()
}

/// A TCP relay: each accepted connection goes to the next upstream address in turn.
struct Relay {
    rt: tokio::runtime::Runtime,
}

impl Relay {
    fn start(listener: TcpListener, upstream: Vec<SocketAddr>) -> Result<Relay> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay")
            .enable_io()
            .build()
            .context("cannot start the relay")?;
        listener
            .set_nonblocking(true)
            .context("cannot start the relay")?;
        let listener = {
            let _in = rt.enter();
            tokio::net::TcpListener::from_std(listener).context("cannot start the relay")?
        };
        let upstream = Arc::new(upstream);
        let next = Arc::new(AtomicUsize::new(0));
        rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let n = next.fetch_add(1, Ordering::Relaxed) % upstream.len().max(1);
                let Some(&to) = upstream.get(n) else { continue };
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Relay { rt })
    }

    fn stop(self) {
        self.rt.shutdown_background();
    }
}

/// User + system CPU of a process from `/proc/<pid>/stat` (or `/proc/self/stat`), in
/// milliseconds; `None` where there is no such file.
pub fn cpu_ms(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/stat")),
        None => PathBuf::from("/proc/self/stat"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat_cpu_ms(&text)
}

/// CPU of the PostgreSQL processes on this machine, in milliseconds: each `postgres`
/// process's user + system time and that of its children that ended (the backends of closed
/// connections, reaped by the postmaster). `None` when none runs here (a remote database).
pub fn postgres_cpu_ms() -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if !text.contains("(postgres)") {
            continue;
        }
        if let Some(ms) = parse_stat_cpu_ms_with_children(&text) {
            *total.get_or_insert(0.0) += ms;
        }
    }
    total
}

/// [`parse_stat_cpu_ms`] plus fields 16 (cutime) and 17 (cstime): the CPU of ended children.
fn parse_stat_cpu_ms_with_children(text: &str) -> Option<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0u64;
    for field in 14..=17 {
        ticks += fields.get(field - 3)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 * 1000.0 / TICKS_PER_SECOND)
}

/// Fields 14 (utime) and 15 (stime) of proc(5)'s `stat`, counted after the command name,
/// which may hold spaces and parentheses (so the text after the last `)`). They are in clock
/// ticks of `USER_HZ`, 100 per second on Linux.
fn parse_stat_cpu_ms(text: &str) -> Option<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime + stime) as f64 * 1000.0 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_fields_are_read_after_the_command_name() {
        let line = "4242 (simfota (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 \
                    9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ms(line), Some(3000.0));
        assert_eq!(parse_stat_cpu_ms("garbage"), None);
        assert!(cpu_ms(None).is_some());
    }

    #[test]
    fn ended_children_count_for_the_database() {
        // utime 250, stime 50, cutime 30, cstime 20 ticks.
        let line = "77 (postgres) S 1 77 77 0 -1 4194560 1234 0 0 0 250 50 30 20 20 0 \
                    9 0 100 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ms_with_children(line), Some(3500.0));
        assert_eq!(parse_stat_cpu_ms_with_children("77 (postgres) S 1"), None);
    }

    #[test]
    fn the_listening_line_gives_the_address() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"simfota server listening","local_addr":"127.0.0.1:4711","tls":false},"target":"simfota_server"}"#;
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:4711".parse().unwrap())
        );
        assert_eq!(listening_addr(r#"{"fields":{"message":"other"}}"#), None);
    }
}
