//! The pieces of one flow, each the real `simfota` binary: servers (`simfota server` child
//! processes on loopback, SQLite in their data folder or a fresh PostgreSQL database), keys
//! (`simfota keys`), cards (`simfota card personalize`, and `simfota card serve` into pcscd's
//! vpcd for the PC/SC path), packages (`simfota pack build`) and devices (`simfota device
//! init / check-update / run / status`). The operator's side goes through the REST API.

use std::ffi::{OsStr, OsString};
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection as _;

/// Where the server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite in the server's data folder.
    Sqlite,
    /// A fresh PostgreSQL database per server.
    Postgres,
}

/// How the device and the tools reach the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardPath {
    /// The applet of a state file, in the device process (`--state`).
    InProcess,
    /// The applet served into pcscd (`simfota card serve`), reached by reader name.
    Pcscd,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub storage: Storage,
    pub card: CardPath,
}

/// SQLite with the in-process card.
pub const SQLITE_INPROCESS: Cell = Cell {
    storage: Storage::Sqlite,
    card: CardPath::InProcess,
};
/// PostgreSQL with the card through pcscd.
pub const POSTGRES_PCSCD: Cell = Cell {
    storage: Storage::Postgres,
    card: CardPath::Pcscd,
};

/// The vpcd port of reader "Virtual PCD 00 00".
pub const VPCD: &str = "127.0.0.1:35963";
/// The reader pcscd shows for [`VPCD`].
pub const READER: &str = "Virtual PCD 00 00";

pub const IMEI: &str = "490154203237518";
/// A second, valid IMEI (another device).
pub const OTHER_IMEI: &str = "356938035643809";
pub const ICCID: &str = "89882110000000000010";
pub const SERVER_ID: &str = "simfota";
pub const ROGUE_ID: &str = "rogue";
pub const PIN: &str = "1234";
pub const VENDOR: &str = "6a1bd3e5-0b37-4b7e-9b2f-1f0c8d5e2a10";
pub const CLASS: &str = "0f5cc7d2-11aa-4c3e-8e55-3a9d27c0b001";

fn require_external() -> bool {
    std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1")
}

fn skip(test: &str, why: &str) -> bool {
    if require_external() {
        panic!("{test}: {why} (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead)");
    }
    println!("skipped: {test}: {why}");
    false
}

/// The command `simfota`.
pub fn simfota() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simfota"));
    c.stdin(Stdio::null());
    c
}

/// What a finished command left.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout and stderr together, for messages.
    pub fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Asserts exit status 0.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{}", self.text());
        self
    }

    /// Asserts the exit status and that stdout or stderr has `needle`.
    #[track_caller]
    pub fn says(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "{}", self.text());
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "expected {needle:?} in the output:\n{}",
            self.text()
        );
        self
    }
}

/// Runs `simfota ARGS` to its end.
pub fn run<I, S>(args: I) -> Out
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = simfota().args(args).output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Collects the output of a child started with piped stdout/stderr.
pub fn finish(child: Child) -> Out {
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `f` until it answers `Some`, at most `secs` seconds.
#[track_caller]
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback TCP port (bound then released: the server binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Pseudo-random firmware bytes (a multiplicative hash of the index, so every seed differs
/// everywhere and a delta between two seeds would be useless; [`edited`] makes near copies).
pub fn firmware(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

/// `base` with a few changed bytes and a short insertion: what a delta is made for.
pub fn edited(base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for i in (0..v.len()).step_by(997) {
        v[i] ^= 0x5a;
    }
    let mid = v.len() / 3;
    v.splice(mid..mid, b"release 2.1 notes".iter().copied());
    v
}

/// A fresh PostgreSQL database, dropped with this value.
pub struct PgDb {
    admin_url: String,
    name: String,
    pub url: String,
}

fn postgres_admin_url() -> String {
    std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn with_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..cut], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

impl PgDb {
    fn create() -> Result<PgDb, String> {
        let admin_url = postgres_admin_url();
        let name = format!("simfota_flow_{}", uuid::Uuid::new_v4().simple());
        block_on(async {
            let mut c = sqlx::PgConnection::connect(&admin_url)
                .await
                .map_err(|e| format!("PostgreSQL unreachable at {admin_url}: {e}"))?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .map_err(|e| format!("CREATE DATABASE: {e}"))?;
            Ok::<_, String>(())
        })?;
        let url = with_db_name(&admin_url, &name);
        Ok(PgDb {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            })
        })
        .join();
    }
}

/// One test's world: a temporary folder, the matrix cell, the operator's keys.
pub struct World {
    pub cell: Cell,
    pub dir: tempfile::TempDir,
    /// Issuer key pair (private, public PEM).
    pub issuer: (PathBuf, PathBuf),
    /// The trusted originator's key pair.
    pub oem: (PathBuf, PathBuf),
    probe: Option<PgDb>,
    databases: Vec<PgDb>,
}

impl World {
    /// The world of `test` in `cell`, or `None` (after a "skipped:" line) when the cell's
    /// outside pieces are missing and `SIMFOTA_SKIP_EXTERNAL=1` allows skipping (else it panics).
    pub fn new(test: &str, cell: Cell) -> Option<World> {
        if cell.card == CardPath::Pcscd && std::env::var("SIMFOTA_PCSCD").as_deref() != Ok("1") {
            skip(
                test,
                "pcscd with vsmartcard-vpcd missing (set SIMFOTA_PCSCD=1 when it runs)",
            );
            return None;
        }
        let mut probe = None;
        if cell.storage == Storage::Postgres {
            // Probe once: a missing PostgreSQL fails the test (or skips it, see `skip`).
            match PgDb::create() {
                Ok(db) => probe = Some(db),
                Err(e) => {
                    skip(test, &format!("PostgreSQL missing ({e})"));
                    return None;
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut w = World {
            cell,
            dir,
            issuer: (PathBuf::new(), PathBuf::new()),
            oem: (PathBuf::new(), PathBuf::new()),
            probe,
            databases: Vec::new(),
        };
        w.issuer = w.key("issuer");
        w.oem = w.key("oem");
        Some(w)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `simfota keys gen` + `simfota keys pub`: (private, public) PEM paths.
    pub fn key(&self, name: &str) -> (PathBuf, PathBuf) {
        let private = self.path(&format!("{name}.pem"));
        let public = self.path(&format!("{name}.pub.pem"));
        run([
            OsStr::new("keys"),
            OsStr::new("gen"),
            OsStr::new("--out"),
            private.as_os_str(),
        ])
        .ok();
        let out = run([OsStr::new("keys"), OsStr::new("pub"), private.as_os_str()]).ok();
        std::fs::write(&public, out.stdout).unwrap();
        (private, public)
    }

    fn database(&mut self) -> Option<String> {
        match self.cell.storage {
            Storage::Sqlite => None,
            Storage::Postgres => {
                // The probe's database serves the first server; later servers get their own.
                let db = match self.probe.take() {
                    Some(db) => db,
                    None => PgDb::create().unwrap(),
                };
                let url = db.url.clone();
                self.databases.push(db);
                Some(url)
            }
        }
    }

    /// Starts a DM server with this id and its own key pair (`NAME-key.pem`), trusting the
    /// world's issuer and originator.
    pub fn server(&mut self, name: &str, server_id: &str) -> Server {
        let key = self.key(&format!("{name}-key"));
        let database = self.database();
        let data = self.path(name);
        // A port picked free may be taken by another test's server before this one binds it;
        // that server would answer the health check and refuse this one's token: try another.
        for _ in 0..5 {
            let port = free_port();
            let mut args: Vec<OsString> = vec![
                "server".into(),
                "--data".into(),
                data.clone().into(),
                "--listen".into(),
                format!("127.0.0.1:{port}").into(),
                "--server-id".into(),
                server_id.into(),
                "--server-key".into(),
                key.0.clone().into(),
                "--issuer-key".into(),
                self.issuer.1.clone().into(),
                "--originator".into(),
                format!("oem={}", self.oem.1.display()).into(),
            ];
            if let Some(url) = &database {
                args.push("--database".into());
                args.push(url.into());
            }
            let mut s = Server {
                name: name.into(),
                id: server_id.into(),
                args,
                child: None,
                log: self.path(&format!("{name}.log")),
                data: data.clone(),
                url: format!("http://127.0.0.1:{port}"),
                token: String::new(),
                key: key.clone(),
                http: simfota_device::download::http_agent(),
            };
            s.spawn();
            s.token = std::fs::read_to_string(s.data.join("api-token"))
                .unwrap()
                .trim()
                .to_owned();
            if s.answers_as_itself() {
                return s;
            }
            s.kill9();
        }
        panic!("no free port served this test's server in five tries");
    }

    /// A second process of `of`'s server, as a replica behind a load balancer: the same key,
    /// server id and database, its own data folder and port, and `of`'s package folder (a
    /// package uploaded through one replica is served by all).
    pub fn replica(&self, of: &Server, name: &str) -> Server {
        let data = self.path(name);
        std::fs::create_dir_all(&data).unwrap();
        std::os::unix::fs::symlink(of.data.join("packages"), data.join("packages")).unwrap();
        let port = free_port();
        let mut args = of.args.clone();
        for i in 1..args.len() {
            if args[i - 1] == "--data" {
                args[i] = data.clone().into();
            } else if args[i - 1] == "--listen" {
                args[i] = format!("127.0.0.1:{port}").into();
            }
        }
        let mut s = Server {
            name: name.into(),
            id: of.id.clone(),
            args,
            child: None,
            log: self.path(&format!("{name}.log")),
            data,
            url: format!("http://127.0.0.1:{port}"),
            // Operator API tokens live in the shared database: the first replica's serves all.
            token: of.token.clone(),
            key: of.key.clone(),
            http: simfota_device::download::http_agent(),
        };
        s.spawn();
        s
    }

    /// A blank card for this world (personalize it with [`Card::personalize`]).
    pub fn card(&self, name: &str, iccid: &str) -> Card {
        Card {
            state: self.path(&format!("{name}.state")),
            iccid: iccid.into(),
            path: self.cell.card,
            serving: None,
            issuer: self.issuer.0.clone(),
        }
    }

    /// Builds a package with `simfota pack build`, payload by the relative URI `payload`
    /// (so the device fetches it next to the envelope). `base`: a delta against that image,
    /// hosted at `payload_uri` instead. Answers (envelope, payload file to host).
    pub fn package(&self, p: &PackageSpec<'_>) -> (PathBuf, PathBuf) {
        let image = self.path(&format!("{}.bin", p.name));
        std::fs::write(&image, p.image).unwrap();
        let out = self.path(&format!("{}.suit", p.name));
        let key = p.key.unwrap_or(&self.oem.0);
        let mut args: Vec<OsString> = vec![
            "pack".into(),
            "build".into(),
            "--image".into(),
            image.clone().into(),
            "--key".into(),
            key.into(),
            "--vendor-id".into(),
            VENDOR.into(),
            "--class-id".into(),
            CLASS.into(),
            "--version".into(),
            p.version.into(),
            "--name".into(),
            "firmware".into(),
            "--sequence".into(),
            p.sequence.to_string().into(),
            "--uri".into(),
            p.uri.unwrap_or("payload").into(),
            "--out".into(),
            out.clone().into(),
        ];
        let payload = match p.base {
            Some(base) => {
                let base_file = self.path(&format!("{}.base.bin", p.name));
                std::fs::write(&base_file, base).unwrap();
                let delta = self.path(&format!("{}.delta", p.name));
                args.extend([
                    "--base".into(),
                    base_file.into(),
                    "--payload-out".into(),
                    delta.clone().into(),
                ]);
                delta
            }
            None => image,
        };
        run(&args).ok();
        (out, payload)
    }

    /// A device of `server` with this IMEI, registered through the REST API, its
    /// configuration written and firmware 1.0 (`v1`) in slot A. `name` names its files;
    /// `slots` lets two configurations (one per server) share the same A/B slots.
    pub fn device(&self, d: &DeviceSpec<'_>) -> Device {
        let config = self.path(&format!("{}.toml", d.name));
        let data = self.path(&format!("{}-data", d.name));
        let slots = d
            .slots
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.path(&format!("{}-slots", d.name)));
        let mut text = format!(
            "server_url = \"{}\"\nserver_id = \"{}\"\nimei = \"{}\"\ndata_dir = \"{}\"\n\
             slot_dir = \"{}\"\npoll_interval_secs = {}\n",
            d.server_url,
            d.server_id,
            d.imei,
            data.display(),
            slots.display(),
            d.poll_secs,
        );
        if let Some(port) = d.notify_port {
            text.push_str(&format!("notification_port = {port}\n"));
        }
        text.push_str(&format!(
            "[credentials]\nusername = \"dev-{}\"\npassword = \"client-secret\"\n\
             server_password = \"server-secret\"\n[info]\nmanufacturer = \"Example\"\n\
             model = \"EX-1\"\nvendor_id = \"{VENDOR}\"\nclass_id = \"{CLASS}\"\n",
            d.imei
        ));
        std::fs::write(&config, text).unwrap();
        // Credentials inside: owner only, as a deployment keeps it (else the agent warns).
        #[cfg(unix)]
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        if d.slots.is_none() {
            let v1 = self.path(&format!("{}-v1.bin", d.name));
            std::fs::write(&v1, d.v1).unwrap();
            run([
                OsStr::new("device"),
                OsStr::new("init"),
                OsStr::new("--config"),
                config.as_os_str(),
                OsStr::new("--image"),
                v1.as_os_str(),
                OsStr::new("--version"),
                OsStr::new("1.0"),
            ])
            .ok();
        }
        Device {
            config,
            data,
            slots,
            imei: d.imei.into(),
        }
    }
}

/// What [`World::package`] builds.
pub struct PackageSpec<'a> {
    pub name: &'a str,
    pub image: &'a [u8],
    pub version: &'a str,
    pub sequence: u64,
    pub base: Option<&'a [u8]>,
    /// The payload URI in the manifest (default `payload`, next to the envelope).
    pub uri: Option<&'a str>,
    /// The signing key (default: the trusted originator).
    pub key: Option<&'a Path>,
}

impl<'a> PackageSpec<'a> {
    pub fn full(name: &'a str, image: &'a [u8], version: &'a str, sequence: u64) -> Self {
        PackageSpec {
            name,
            image,
            version,
            sequence,
            base: None,
            uri: None,
            key: None,
        }
    }
}

/// What [`World::device`] makes.
pub struct DeviceSpec<'a> {
    pub name: &'a str,
    pub server_url: &'a str,
    pub server_id: &'a str,
    pub imei: &'a str,
    pub v1: &'a [u8],
    pub slots: Option<&'a Path>,
    pub notify_port: Option<u16>,
    pub poll_secs: u64,
}

/// A `simfota server` child process.
pub struct Server {
    pub name: String,
    pub id: String,
    args: Vec<OsString>,
    child: Option<Child>,
    log: PathBuf,
    pub data: PathBuf,
    pub url: String,
    pub token: String,
    /// The server's key pair (private, public PEM).
    pub key: (PathBuf, PathBuf),
    http: ureq::Agent,
}

impl Server {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = simfota()
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("{}/healthz", self.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(&url).call()
                && r.status() == 200
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "simfota server exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "simfota server did not answer: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, for a hard kill from elsewhere.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// SIGKILL: a crash, nothing flushed or closed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the server at this URL is this process: still running, and taking its token.
    fn answers_as_itself(&mut self) -> bool {
        let alive = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        alive
            && self
                .http
                .get(&self.api("campaigns"))
                .header("Authorization", &format!("Bearer {}", self.token))
                .call()
                .is_ok_and(|r| r.status() == 200)
    }

    /// Starts the same server again (same data, database and port).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the same server again with `extra` command-line arguments added.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(OsString::from));
        self.restart();
    }

    /// The HTTP status of a plain GET of `path` (no credentials).
    pub fn status_of(&self, path: &str) -> u16 {
        match self.http.get(&format!("{}{path}", self.url)).call() {
            Ok(r) => r.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1/{path}", self.url)
    }

    /// GET on the REST API, JSON answer (asserts 2xx).
    #[track_caller]
    pub fn get(&self, path: &str) -> Value {
        let mut r = self
            .http
            .get(&self.api(path))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        let body = r.body_mut().read_to_string().unwrap();
        assert!(
            r.status().is_success(),
            "GET {path}: {}: {body}",
            r.status()
        );
        serde_json::from_str(&body).unwrap()
    }

    /// POST JSON on the REST API: (status, JSON answer).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut r = self
            .http
            .post(&self.api(path))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST that must succeed.
    #[track_caller]
    pub fn post_ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert!((200..300).contains(&status), "POST {path}: {status}: {v}");
        v
    }

    /// Registers a device (md5 DM credentials as [`World::device`] writes them).
    pub fn register(&self, imei: &str, notify_addr: Option<&str>) {
        let mut body = json!({
            "imei": imei,
            "username": format!("dev-{imei}"),
            "password": "client-secret",
            "server_password": "server-secret",
            "model": "EX-1",
        });
        if let Some(a) = notify_addr {
            body["notify_addr"] = json!(a);
        }
        self.post_ok("devices", &body);
    }

    /// Uploads a package (multipart: envelope, payload); answers its id.
    #[track_caller]
    pub fn upload(&self, envelope: &Path, payload: &Path) -> i64 {
        let (status, v) = self.upload_raw(envelope, payload);
        assert_eq!(status, 201, "package upload: {v}");
        v["id"].as_i64().unwrap()
    }

    /// Uploads a package: (status, answer).
    pub fn upload_raw(&self, envelope: &Path, payload: &Path) -> (u16, Value) {
        let boundary = "simfota-flow-boundary";
        let mut body = Vec::new();
        for (name, file) in [("envelope", envelope), ("payload", payload)] {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; \
                     filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(&std::fs::read(file).unwrap());
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut r = self
            .http
            .post(&self.api("packages"))
            .header("Authorization", &format!("Bearer {}", self.token))
            .header(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            )
            .send(&body[..])
            .unwrap();
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Starts a one-wave campaign for the package; answers its id.
    #[track_caller]
    pub fn campaign(&self, package: i64) -> i64 {
        self.post_ok(
            "campaigns",
            &json!({
                "name": format!("campaign-{package}-{}", uuid::Uuid::new_v4().simple()),
                "package_id": package,
                "waves": [100],
                "success_threshold": 90,
                "error_threshold": 100,
                // The flows show what the cards decide: the server offers every package, even
                // to a device already at or above it (a rollback the card must refuse).
                "include_up_to_date": true,
            }),
        )["id"]
            .as_i64()
            .unwrap()
    }

    /// The job of `imei` in campaign `campaign`.
    #[track_caller]
    pub fn job(&self, campaign: i64, imei: &str) -> Value {
        let jobs = self.get(&format!("jobs?campaign={campaign}"));
        let list = jobs
            .as_array()
            .cloned()
            .or_else(|| jobs["jobs"].as_array().cloned())
            .unwrap();
        list.into_iter()
            .find(|j| j["imei"] == imei)
            .unwrap_or_else(|| panic!("no job for {imei} in campaign {campaign}: {jobs}"))
    }

    /// Asserts a job's state, FUMO result code and receipt status.
    #[track_caller]
    pub fn assert_job(&self, campaign: i64, imei: &str, state: &str, code: i64, receipt: &str) {
        let job = self.job(campaign, imei);
        assert_eq!(job["state"], state, "{job}");
        assert_eq!(job["result_code"], code, "{job}");
        let status = job["receipt_status"].as_str().unwrap_or("absent");
        assert!(status.starts_with(receipt), "receipt {receipt:?}: {job}");
    }

    /// The card's log as this server stored it (entries decoded from their raw records).
    pub fn card_log(&self, iccid: &str) -> Vec<Logged> {
        let http = &self.http;
        let mut r = http
            .get(&self.api(&format!("cards/{iccid}/log")))
            .header("Authorization", &format!("Bearer {}", self.token))
            .call()
            .unwrap();
        if r.status() == 404 {
            return Vec::new();
        }
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let raw = hex::decode(e["raw"].as_str().unwrap()).unwrap();
                Logged {
                    seq: e["seq"].as_i64().unwrap(),
                    entry: simfota_wire::LogEntry::decode(&raw).unwrap(),
                    verified: e["verified"] == true,
                    json: e.clone(),
                }
            })
            .collect()
    }

    /// The card resource (`GET /cards/{iccid}`).
    pub fn card(&self, iccid: &str) -> Value {
        self.get(&format!("cards/{iccid}"))
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        let mut r = self
            .http
            .get(&format!("{}/metrics", self.url))
            .call()
            .unwrap();
        r.body_mut().read_to_string().unwrap()
    }

    /// One counter of `/metrics` (0 when absent).
    pub fn metric(&self, line_start: &str) -> f64 {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// POSTs raw bytes to `/dm`: (HTTP status, body).
    pub fn post_dm(&self, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut r = self
            .http
            .post(&format!("{}/dm", self.url))
            .header("Content-Type", content_type)
            .send(body)
            .unwrap();
        let status = r.status().as_u16();
        let mut buf = Vec::new();
        r.body_mut().as_reader().read_to_end(&mut buf).unwrap();
        (status, buf)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A log entry as a server stored it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub seq: i64,
    pub entry: simfota_wire::LogEntry,
    pub verified: bool,
    pub json: Value,
}

/// A card: its state file, and the `simfota card serve` process on the PC/SC path.
pub struct Card {
    pub state: PathBuf,
    pub iccid: String,
    pub path: CardPath,
    serving: Option<Child>,
    issuer: PathBuf,
}

/// How a card is personalized.
pub struct Perso<'a> {
    /// (id, public key PEM, rights) of each authorized server.
    pub servers: Vec<(&'a str, &'a Path, &'a str)>,
    /// The policy (`simfota card personalize --policy`).
    pub policy: &'a str,
    pub pin_tries: u8,
}

impl Card {
    /// `simfota card personalize` on the state file, then (PC/SC path) serves it into pcscd.
    pub fn personalize(&mut self, oem: &Path, p: &Perso<'_>) {
        let mut args: Vec<OsString> = vec![
            "card".into(),
            "personalize".into(),
            "--state".into(),
            self.state.clone().into(),
            "--issuer-key".into(),
            self.issuer.clone().into(),
            "--iccid".into(),
            self.iccid.clone().into(),
            "--imsi".into(),
            "001010123456789".into(),
            "--pin".into(),
            PIN.into(),
            "--puk".into(),
            "12345678".into(),
            "--pin-tries".into(),
            p.pin_tries.to_string().into(),
            "--originator".into(),
            format!("oem={}", oem.display()).into(),
            "--policy".into(),
            p.policy.into(),
        ];
        for (id, key, rights) in &p.servers {
            args.push("--server".into());
            args.push(format!("{id}={}:{rights}", key.display()).into());
        }
        run(&args).ok();
        self.insert();
    }

    /// PC/SC path: serves the state file into vpcd and waits until pcscd shows the card.
    pub fn insert(&mut self) {
        if self.path != CardPath::Pcscd || self.serving.is_some() {
            return;
        }
        let child = simfota()
            .args(["card", "serve", "--vpcd", VPCD, "--state"])
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.serving = Some(child);
        wait_until(20, "the served card in the reader", || {
            (run(["card", "info", "--reader", READER]).code == 0).then_some(())
        });
    }

    /// PC/SC path: stops serving and waits until pcscd sees the card gone.
    pub fn remove(&mut self) {
        if let Some(mut c) = self.serving.take() {
            let _ = c.kill();
            let _ = c.wait();
            wait_until(20, "the reader to be empty", || {
                (run(["card", "info", "--reader", READER]).code != 0).then_some(())
            });
        }
    }

    /// The arguments that name this card to `simfota device` / `simfota card`.
    pub fn args(&self) -> Vec<OsString> {
        match self.path {
            CardPath::InProcess => vec!["--state".into(), self.state.clone().into()],
            CardPath::Pcscd => vec!["--reader".into(), READER.into()],
        }
    }

    /// `simfota card info` through this card's path.
    pub fn info(&self) -> String {
        let mut args: Vec<OsString> = vec!["card".into(), "info".into()];
        args.extend(self.args());
        run(&args).ok().stdout
    }

    /// One `key: value` line of `simfota card info`.
    pub fn info_field(&self, key: &str) -> String {
        let info = self.info();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key:?} in card info:\n{info}"))
            .to_owned()
    }

    /// Runs `f` on the card in this process (the PC/SC path takes the card out of the reader
    /// for that time): the test's own hands on the card, for set-up only.
    pub fn in_hand<T>(
        &mut self,
        f: impl FnOnce(
            &mut simfota_cardlink::client::CardClient<
                simfota_cardlink::InProcessChannel<simfota_cardlink::FileCard>,
            >,
        ) -> T,
    ) -> T {
        let served = self.serving.is_some();
        self.remove();
        let card = simfota_cardlink::FileCard::open(&self.state).unwrap();
        let mut client = simfota_cardlink::client::CardClient::new(
            simfota_cardlink::InProcessChannel::new(card, "test"),
        );
        let out = f(&mut client);
        drop(client);
        if served {
            self.insert();
        }
        out
    }
}

impl Drop for Card {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A device: its configuration, data and slot folders.
pub struct Device {
    pub config: PathBuf,
    pub data: PathBuf,
    pub slots: PathBuf,
    pub imei: String,
}

impl Device {
    fn command(&self, sub: &str, card: &Card, extra: &[&OsStr]) -> Command {
        let mut c = simfota();
        c.args(["device", sub, "--config"])
            .arg(&self.config)
            .args(card.args())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// `simfota device check-update` with the card and extra arguments.
    pub fn check_update(&self, card: &Card, extra: &[&str]) -> Out {
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        finish(self.command("check-update", card, &extra).spawn().unwrap())
    }

    /// `simfota device run` as a child process.
    pub fn spawn_run(&self, card: &Card, extra: &[&str]) -> Child {
        let extra: Vec<&OsStr> = extra.iter().map(OsStr::new).collect();
        self.command("run", card, &extra).spawn().unwrap()
    }

    /// `simfota device status`.
    pub fn status(&self) -> String {
        run([
            OsStr::new("device"),
            OsStr::new("status"),
            OsStr::new("--config"),
            self.config.as_os_str(),
        ])
        .ok()
        .stdout
    }

    /// The running firmware version (`device status`).
    pub fn firmware(&self) -> String {
        let status = self.status();
        status
            .lines()
            .find_map(|l| l.strip_prefix("firmware"))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no firmware line: {status}"))
    }

    /// The stage of the FUMO job file (`fumo.json`), if any.
    pub fn job_stage(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.data.join("fumo.json")).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        match &v["stage"] {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => m.get("stage").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        }
    }
}
