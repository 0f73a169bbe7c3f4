//! `simfota ctl` as an operator runs it: the real binary against a real `simfota server`
//! (SQLite, and PostgreSQL for the device lists), configured once through `ctl config`, the
//! tables and the JSON parsed, a device driven through a whole card-gated update while
//! `campaigns watch` follows, and the exit status of every class of failure.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod pg;

use pg::{DropDb, pg, require_external, with_db_name};

/// Variables of the server and of `ctl`: none may leak in from the test's environment.
const VARS: &[&str] = &[
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
    "SIMFOTA_SERVER",
    "SIMFOTA_TOKEN_FILE",
    "SIMFOTA_CA_FILE",
    "SIMFOTA_CTL_CONFIG",
    "XDG_CONFIG_HOME",
    "RUST_LOG",
];

const VENDOR: &str = "6a1bd3e5-0b37-4b7e-9b2f-1f0c8d5e2a10";
const CLASS: &str = "0f5cc7d2-11aa-4c3e-8e55-3a9d27c0b001";

fn simfota() -> Command {
    simfota_env(Command::new(env!("CARGO_BIN_EXE_simfota")))
}

/// What a finished command left.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{}", self.text());
        self
    }

    /// Asserts the exit status and that stderr (the one error line) holds `needle`.
    #[track_caller]
    fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "{}", self.text());
        assert!(
            self.stderr.contains(needle),
            "{needle:?} in:\n{}",
            self.text()
        );
        let last = self.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("simfota: "), "{}", self.text());
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.text()))
    }
}

fn finish(out: std::process::Output) -> Out {
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `simfota ARGS` with its own (empty) `ctl` configuration file.
fn run(config: &Path, args: &[&str]) -> Out {
    finish(
        simfota()
            .env("SIMFOTA_CTL_CONFIG", config)
            .args(args)
            .output()
            .unwrap(),
    )
}

/// A valid IMEI: 14 digits and their Luhn check digit.
fn imei(n: u64) -> String {
    let body = format!("49015420{n:06}");
    format!("{body}{}", luhn(&body))
}

/// A valid ICCID: 19 digits and their Luhn check digit.
fn iccid(n: u64) -> String {
    let body = format!("8988211000000{n:06}");
    format!("{body}{}", luhn(&body))
}

fn luhn(digits: &str) -> u32 {
    let sum: u32 = digits
        .chars()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = c.to_digit(10).unwrap();
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// A `simfota server` child process.
struct Server {
    child: Child,
    url: String,
    data: PathBuf,
    token_file: PathBuf,
    stderr: Arc<Mutex<String>>,
    _db: Option<DropDb>,
}

impl Server {
    /// Starts a server on a free port with `extra` arguments; `https` when TLS is configured.
    fn start(data: &Path, extra: &[&str], db: Option<(String, DropDb)>, https: bool) -> Self {
        let mut cmd = simfota();
        cmd.args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn,simfota_server=info");
        let mut drop_db = None;
        if let Some((url, d)) = db {
            cmd.args(["--database", &url]);
            drop_db = Some(d);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if line.contains("simfota server listening") {
                    let _ = tx.send(line.clone());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let Ok(listening) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server did not start: {}", stderr.lock().unwrap());
        };
        let at = listening.find("local_addr=").unwrap() + "local_addr=".len();
        let addr = listening[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let scheme = if https { "https" } else { "http" };
        Server {
            child,
            url: format!("{scheme}://{addr}"),
            data: data.to_owned(),
            token_file: data.join("api-token"),
            stderr,
            _db: drop_db,
        }
    }

    /// `simfota ctl --server URL --token-file TOKEN ARGS`.
    fn ctl(&self, config: &Path, args: &[&str]) -> Out {
        let mut all = vec![
            "ctl",
            "--server",
            &self.url,
            "--token-file",
            self.token_file.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run(config, &all)
    }

    /// [`Server::ctl`] with `--json`, succeeding, its stdout parsed.
    #[track_caller]
    fn ctl_json(&self, config: &Path, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.ctl(config, &all).ok().json()
    }

    /// `simfota ctl ...` as a child process (stdout and stderr piped).
    fn spawn_ctl(&self, config: &Path, args: &[&str]) -> Child {
        simfota()
            .env("SIMFOTA_CTL_CONFIG", config)
            .args(["ctl", "--server", &self.url, "--token-file"])
            .arg(&self.token_file)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Server {
    /// What the server logged so far (for failure messages).
    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child `ctl` to end by itself (at most `secs`).
fn wait_for(mut child: Child, secs: u64, what: &str) -> Out {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if child.try_wait().unwrap().is_some() {
            return finish(child.wait_with_output().unwrap());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = finish(child.wait_with_output().unwrap());
            panic!("{what} did not end in {secs}s:\n{}", out.text());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A fresh PostgreSQL database for a server (it creates it; dropped at the end), or `None`
/// when PostgreSQL is missing and SIMFOTA_SKIP_EXTERNAL=1 allows skipping.
fn postgres(test: &str) -> Option<(String, DropDb)> {
    let admin = std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if !pg(&admin, "SELECT 1") {
        return None;
    }
    let name = format!(
        "simfota_ctl_{test}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let url = with_db_name(&admin, &name);
    Some((url, DropDb { admin, name }))
}

/// A CSV provisioning file for `n` devices: models EX-1 and EX-2 in turn, the even ones in
/// group `lab`.
fn device_csv(dir: &Path, first: u64, n: u64) -> PathBuf {
    let mut csv = String::from("imei,username,password,server_password,model,groups\n");
    for i in first..first + n {
        let model = if i % 2 == 0 { "EX-1" } else { "EX-2" };
        let groups = if i % 2 == 0 { "lab;north" } else { "" };
        csv.push_str(&format!(
            "{},dev-{i},pw-{i},spw-{i},{model},{groups}\n",
            imei(i)
        ));
    }
    let path = dir.join(format!("devices-{first}.csv"));
    std::fs::write(&path, csv).unwrap();
    path
}

fn imeis(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["imei"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// `config set` once, then every command finds the server and the token; `config show` says
/// where each setting comes from; SIMFOTA_SERVER overrides the file, a flag overrides both.
#[test]
fn configured_once_then_used_and_overridden_by_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], None, false);
    let config = dir.path().join("conf").join("ctl.toml");
    let c = config.as_path();

    // Nothing configured: a usage error that says how to configure.
    run(c, &["ctl", "devices", "list"]).fails(2, "no server: give --server URL");

    run(
        c,
        &["ctl", "config", "set", "server", &format!("{}/", s.url)],
    )
    .ok();
    // A relative token path is made absolute when set.
    let out = finish(
        simfota()
            .env("SIMFOTA_CTL_CONFIG", c)
            .current_dir(&s.data)
            .args(["ctl", "config", "set", "token-file", "api-token"])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}", out.text());
    let text = std::fs::read_to_string(c).unwrap();
    assert!(text.contains(&format!("server = \"{}\"", s.url)), "{text}");
    assert!(
        text.contains(&format!("token_file = \"{}\"", s.token_file.display())),
        "{text}"
    );

    // Configured: no flag needed.
    let out = run(c, &["ctl", "devices", "list"]).ok();
    assert!(out.stderr.contains("no devices"), "{}", out.text());
    let show = run(c, &["ctl", "config", "show"]).ok();
    assert!(
        show.stdout
            .contains(&format!("{}  (from file {})", s.url, c.display())),
        "{}",
        show.text()
    );
    assert!(show.stdout.contains("CA file"), "{}", show.text());

    // The environment overrides the file; the flag overrides the environment.
    let out = finish(
        simfota()
            .env("SIMFOTA_CTL_CONFIG", c)
            .env("SIMFOTA_SERVER", "http://127.0.0.1:9")
            .args(["ctl", "config", "show", "--json"])
            .output()
            .unwrap(),
    );
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["server"]["value"], "http://127.0.0.1:9");
    assert_eq!(v["server"]["source"], "env SIMFOTA_SERVER");
    assert_eq!(v["token_file"]["source"], "file");
    assert_eq!(v["file_exists"], true);
    let out = finish(
        simfota()
            .env("SIMFOTA_CTL_CONFIG", c)
            .env("SIMFOTA_SERVER", "http://127.0.0.1:9")
            .args(["ctl", "devices", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        out.code,
        5,
        "the environment's (closed) server is used: {}",
        out.text()
    );
    let out = finish(
        simfota()
            .env("SIMFOTA_CTL_CONFIG", c)
            .env("SIMFOTA_SERVER", "http://127.0.0.1:9")
            .args(["ctl", "devices", "list", "--server", &s.url])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "the flag wins: {}", out.text());

    // Unset: back to nothing.
    run(c, &["ctl", "config", "unset", "server"]).ok();
    run(c, &["ctl", "devices", "list"]).fails(2, "no server");
    let text = std::fs::read_to_string(c).unwrap();
    assert!(!text.contains("server ="), "{text}");
    // A URL that is no URL is refused at `set`.
    run(c, &["ctl", "config", "set", "server", "dm.example"])
        .fails(2, "'dm.example' is not an http:// or https:// URL");
}

/// A configuration file that is not what `ctl` reads is refused, naming the file, the line
/// and the problem; nothing is sent anywhere.
#[test]
fn malformed_configuration_file_is_refused_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    let c = config.as_path();
    let file = c.display().to_string();

    std::fs::write(c, "server = \"http://127.0.0.1:9\"\nsever = \"x\"\n").unwrap();
    let out = run(c, &["ctl", "devices", "list"]);
    out.fails(
        1,
        &format!("the configuration file {file} line 2 is refused"),
    );
    out.fails(1, "unknown field `sever`");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.text());

    std::fs::write(c, "server = \"dm.example:8443\"\n").unwrap();
    run(c, &["ctl", "config", "show"]).fails(
        1,
        &format!("the configuration file {file} is refused: server: 'dm.example:8443' is not an http:// or https:// URL"),
    );

    std::fs::write(c, "server = http://x\n").unwrap();
    run(c, &["ctl", "devices", "list"]).fails(1, &format!("{file} line 1 is refused"));

    std::fs::write(c, "token_file = 3\n").unwrap();
    run(c, &["ctl", "devices", "list"]).fails(1, "line 1 is refused");

    // `config set` does not overwrite a file it cannot read.
    std::fs::write(c, "sever = \"x\"\n").unwrap();
    run(c, &["ctl", "config", "set", "server", "http://127.0.0.1:9"]).fails(1, "unknown field");
    assert_eq!(std::fs::read_to_string(c).unwrap(), "sever = \"x\"\n");
}

// ---------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------

/// CSV import, the table and the JSON of the list, show, and the refusals of a bad file.
fn devices_import_list_show(s: &Server, c: &Path, dir: &Path) {
    let csv = device_csv(dir, 10, 7);
    let out = s.ctl(c, &["devices", "import", csv.to_str().unwrap()]).ok();
    assert!(
        out.stdout
            .contains(&format!("imported 7 devices from {}", csv.display())),
        "{}",
        out.text()
    );
    // The table: a header, one row per device, aligned.
    let out = s.ctl(c, &["devices", "list"]).ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("IMEI "), "{}", out.text());
    assert!(lines[0].contains("LAST SEEN"), "{}", out.text());
    assert_eq!(lines.len(), 8, "{}", out.text());
    let row = lines.iter().find(|l| l.starts_with(&imei(10))).unwrap();
    assert!(row.contains("EX-1") && row.contains("lab, north") && row.ends_with("never"));
    // The JSON: the API's objects.
    let all = s.ctl_json(c, &["devices", "list"]);
    assert_eq!(imeis(&all).len(), 7);
    assert_eq!(all[0]["imei"], imei(10));
    // Show, table and JSON.
    let out = s.ctl(c, &["devices", "show", &imei(11)]).ok();
    assert!(out.stdout.contains("model"), "{}", out.text());
    assert!(out.stdout.contains("EX-2"), "{}", out.text());
    assert!(
        out.stdout.contains("last seen       never"),
        "{}",
        out.text()
    );
    assert!(out.stderr.contains("no jobs"), "{}", out.text());
    let v = s.ctl_json(c, &["devices", "show", &imei(11)]);
    assert_eq!(v["device"]["imei"], imei(11));
    assert_eq!(v["jobs"], serde_json::json!([]));

    // A file the server refuses: all or none, the line named, exit 1.
    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "imei,username,password,server_password\n{},dev-x,a,b\n12345,dev-y,a,b\n",
            imei(90)
        ),
    )
    .unwrap();
    let out = s.ctl(c, &["devices", "import", bad.to_str().unwrap()]);
    out.fails(
        1,
        &format!(
            "import devices from {}: {} answered 400",
            bad.display(),
            s.url
        ),
    );
    out.fails(1, "line 3");
    let out = s.ctl(c, &["devices", "import", "/nonexistent/devices.csv"]);
    out.fails(1, "cannot read the device file /nonexistent/devices.csv");
    assert_eq!(imeis(&s.ctl_json(c, &["devices", "list"])).len(), 7);
}

/// Filters, pages and `--all`, and delete (the API's extension: run once it is served).
fn devices_filters_pages_delete(s: &Server, c: &Path) {
    // Filters combine.
    let ex1 = s.ctl_json(c, &["devices", "list", "--model", "EX-1"]);
    assert_eq!(imeis(&ex1), [10, 12, 14, 16].map(imei));
    let lab = s.ctl_json(c, &["devices", "list", "--group", "lab", "--model", "EX-1"]);
    assert_eq!(imeis(&lab).len(), 4);
    let prefix = imei(13)[..14].to_owned();
    let one = s.ctl_json(c, &["devices", "list", "--imei-prefix", &prefix]);
    assert_eq!(imeis(&one), [imei(13)]);
    let none = s.ctl(c, &["devices", "list", "--model", "nope"]).ok();
    assert!(none.stdout.is_empty() && none.stderr.contains("no devices"));

    // One page: three devices, and the way to the next on stderr.
    let out = s
        .ctl(c, &["devices", "list", "--limit", "3", "--json"])
        .ok();
    assert_eq!(imeis(&out.json()), [10, 11, 12].map(imei));
    let cursor = out
        .stderr
        .split("--cursor ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no cursor: {}", out.text()))
        .to_owned();
    let next = s.ctl_json(c, &["devices", "list", "--limit", "3", "--cursor", &cursor]);
    assert_eq!(imeis(&next), [13, 14, 15].map(imei));
    // Sorted by the server, descending, across pages.
    let desc = s.ctl_json(
        c,
        &[
            "devices", "list", "--sort", "-imei", "--limit", "2", "--all",
        ],
    );
    assert_eq!(imeis(&desc), (10..17).rev().map(imei).collect::<Vec<_>>());
    // Every page: all seven, in order, through three pages of three.
    let out = s
        .ctl(c, &["devices", "list", "--limit", "3", "--all", "--json"])
        .ok();
    assert_eq!(imeis(&out.json()), (10..17).map(imei).collect::<Vec<_>>());
    assert!(!out.stderr.contains("more follow"), "{}", out.text());
    // With a filter across pages.
    let ex2 = s.ctl_json(
        c,
        &[
            "devices", "list", "--model", "EX-2", "--limit", "1", "--all",
        ],
    );
    assert_eq!(imeis(&ex2), [11, 13, 15].map(imei));

    // Delete: one, then several with one unknown (each tried, the unknown one named).
    let out = s.ctl(c, &["devices", "delete", &imei(16)]).ok();
    assert!(out.stdout.contains(&format!("deleted device {}", imei(16))));
    let out = s.ctl(c, &["devices", "delete", &imei(15), &imei(99), "--json"]);
    assert_eq!(out.code, 3, "{}", out.text());
    assert_eq!(out.json()["deleted"], serde_json::json!([imei(15)]));
    assert!(
        out.stderr.contains(&format!("delete device {}", imei(99))),
        "{}",
        out.text()
    );
    s.ctl(c, &["devices", "show", &imei(16)]).fails(
        3,
        &format!("show device {}: {} answered 404 Not Found", imei(16), s.url),
    );
    assert_eq!(
        imeis(&s.ctl_json(c, &["devices", "list", "--all"])).len(),
        5
    );
}

#[test]
fn devices_import_list_show_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], None, false);
    let c = dir.path().join("ctl.toml");
    devices_import_list_show(&s, &c, dir.path());
}

#[test]
fn devices_filters_pages_and_delete_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], None, false);
    let c = dir.path().join("ctl.toml");
    devices_import_list_show(&s, &c, dir.path());
    devices_filters_pages_delete(&s, &c);
}

#[test]
fn devices_import_list_filters_pages_and_delete_on_postgres() {
    let Some(db) = postgres("devices") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], Some(db), false);
    let c = dir.path().join("ctl.toml");
    devices_import_list_show(&s, &c, dir.path());
    devices_filters_pages_delete(&s, &c);
}

// ---------------------------------------------------------------------------------------
// Packages, campaigns, a device through a whole update, cards and proofs
// ---------------------------------------------------------------------------------------

/// `simfota ARGS` (not `ctl`) to a successful end.
#[track_caller]
fn sim(args: &[&str]) -> Out {
    finish(simfota().args(args).output().unwrap()).ok()
}

/// A key pair made with `simfota keys`: (private, public).
fn key(dir: &Path, name: &str) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    sim(&["keys", "gen", "--out", private.to_str().unwrap()]);
    let out = sim(&["keys", "pub", private.to_str().unwrap()]);
    std::fs::write(&public, out.stdout).unwrap();
    (private.display().to_string(), public.display().to_string())
}

/// The operator's keys, a server that trusts them, and files in `dir`.
struct Lab {
    dir: PathBuf,
    issuer: (String, String),
    oem: (String, String),
    server_key: (String, String),
    server: Server,
    config: PathBuf,
}

impl Lab {
    fn new(dir: &Path) -> Lab {
        let issuer = key(dir, "issuer");
        let oem = key(dir, "oem");
        let server_key = key(dir, "server-key");
        let server = Server::start(
            &dir.join("data"),
            &[
                "--server-key",
                &server_key.0,
                "--issuer-key",
                &issuer.1,
                "--originator",
                &format!("oem={}", oem.1),
            ],
            None,
            false,
        );
        Lab {
            dir: dir.to_owned(),
            issuer,
            oem,
            server_key,
            server,
            config: dir.join("ctl.toml"),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn ctl(&self, args: &[&str]) -> Out {
        self.server.ctl(&self.config, args)
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        self.server.ctl_json(&self.config, args)
    }

    /// A package of `size` pseudo-random bytes, payload by URI: (envelope, payload).
    fn package(&self, name: &str, version: &str, sequence: u64, size: usize) -> (String, String) {
        let image = self.path(&format!("{name}.bin"));
        let mut x: u32 = 0x9e37_79b9 ^ sequence as u32;
        let bytes: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        std::fs::write(&image, bytes).unwrap();
        let envelope = self.path(&format!("{name}.suit"));
        sim(&[
            "pack",
            "build",
            "--image",
            &image,
            "--key",
            &self.oem.0,
            "--vendor-id",
            VENDOR,
            "--class-id",
            CLASS,
            "--version",
            version,
            "--name",
            "firmware",
            "--sequence",
            &sequence.to_string(),
            "--uri",
            "payload",
            "--out",
            &envelope,
        ]);
        (envelope, image)
    }

    /// A personalized card state file, signed by `issuer` (private key), listing this server.
    fn card(&self, name: &str, iccid: &str, issuer: &str) -> String {
        let state = self.path(&format!("{name}.state"));
        sim(&[
            "card",
            "personalize",
            "--state",
            &state,
            "--issuer-key",
            issuer,
            "--iccid",
            iccid,
            "--imsi",
            "001010123456789",
            "--pin",
            "1234",
            "--puk",
            "12345678",
            "--originator",
            &format!("oem={}", self.oem.1),
            "--policy",
            "refuse",
            "--server",
            &format!("simfota={}", self.server_key.1),
        ]);
        state
    }

    /// A device's configuration with firmware 1.0 in slot A; its DM account is device `n` of
    /// [`device_csv`].
    fn device(&self, n: u64) -> String {
        let config = self.path(&format!("device-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                "server_url = \"{}\"\nserver_id = \"simfota\"\nimei = \"{}\"\n\
                 data_dir = \"{}\"\nslot_dir = \"{}\"\npoll_interval_secs = 3600\n\
                 [credentials]\nusername = \"dev-{n}\"\npassword = \"pw-{n}\"\n\
                 server_password = \"spw-{n}\"\n[info]\nmanufacturer = \"Example\"\n\
                 model = \"EX-1\"\nvendor_id = \"{VENDOR}\"\nclass_id = \"{CLASS}\"\n",
                self.server.url,
                imei(n),
                self.path(&format!("device-{n}-data")),
                self.path(&format!("device-{n}-slots")),
            ),
        )
        .unwrap();
        let v1 = self.path(&format!("device-{n}-v1.bin"));
        std::fs::write(&v1, vec![7u8; 4096]).unwrap();
        sim(&[
            "device",
            "init",
            "--config",
            &config,
            "--image",
            &v1,
            "--version",
            "1.0",
        ]);
        config
    }
}

/// Upload with progress lines (not a terminal) and without them (`--json`), list, show, the
/// refusal of a package the server does not trust.
#[test]
fn packages_upload_with_progress_list_show() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 3 * 1024 * 1024 + 17);
    let out = lab
        .ctl(&["packages", "upload", &envelope, "--payload", &payload])
        .ok();
    assert!(
        out.stdout
            .starts_with("uploaded package 1: firmware 2.0 (sequence 2)"),
        "{}",
        out.text()
    );
    // Not a terminal: plain lines, the last at 100%, with the rate.
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.len() >= 2, "{}", out.text());
    assert!(
        lines.iter().all(|l| l.starts_with("uploading fw-2.bin: ")),
        "{}",
        out.text()
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("of 3.0 MiB (100%)") && last.contains("/s"),
        "{}",
        out.text()
    );
    assert!(!out.stderr.contains('\r'), "{}", out.text());

    let (envelope3, payload3) = lab.package("fw-3", "3.0", 3, 1000);
    let out = lab
        .ctl(&[
            "packages",
            "upload",
            &envelope3,
            "--payload",
            &payload3,
            "--json",
        ])
        .ok();
    assert!(
        out.stderr.is_empty(),
        "nothing but JSON with --json: {}",
        out.text()
    );
    let p = out.json();
    assert_eq!(
        (p["id"].as_i64(), p["sequence"].as_i64()),
        (Some(2), Some(3))
    );
    assert_eq!(p["image_size"], 1000);

    let list = lab.ctl_json(&["packages", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let named = lab.ctl_json(&[
        "packages",
        "list",
        "--name-prefix",
        "firm",
        "--limit",
        "1",
        "--all",
    ]);
    assert_eq!(named.as_array().unwrap().len(), 2, "{named}");
    let out = lab.ctl(&["packages", "list", "--name-prefix", "zzz"]).ok();
    assert!(out.stderr.contains("no packages"), "{}", out.text());
    let out = lab.ctl(&["packages", "list"]).ok();
    assert!(
        out.stdout.lines().next().unwrap().starts_with("ID  NAME"),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains("3.0 MiB") && out.stdout.contains("full"),
        "{}",
        out.text()
    );
    let out = lab.ctl(&["packages", "show", "1"]).ok();
    assert!(out.stdout.contains("payload URL"), "{}", out.text());
    assert!(out.stdout.contains("sequence    2"), "{}", out.text());
    let v = lab.ctl_json(&["packages", "show", "2"]);
    assert_eq!(v["package"]["version"], "3.0");

    // Signed by a key the server does not trust: refused, the server's reason shown.
    let (rogue, _) = key(dir.path(), "rogue-oem");
    let image = lab.path("fw-3.bin");
    let forged = lab.path("forged.suit");
    sim(&[
        "pack",
        "build",
        "--image",
        &image,
        "--key",
        &rogue,
        "--vendor-id",
        VENDOR,
        "--class-id",
        CLASS,
        "--version",
        "9.9",
        "--sequence",
        "9",
        "--uri",
        "payload",
        "--out",
        &forged,
    ]);
    let out = lab.ctl(&["packages", "upload", &forged, "--payload", &image]);
    out.fails(
        1,
        &format!(
            "upload package {forged}: {} answered 400 Bad Request: ",
            lab.server.url
        ),
    );
    lab.ctl(&["packages", "upload", "/nonexistent.suit"])
        .fails(1, "cannot read the envelope /nonexistent.suit");
    lab.ctl(&["packages", "show", "77"])
        .fails(3, "answered 404 Not Found");
}

/// The largest resident set a child reached (`VmHWM`), read until it exits; its output.
fn peak_rss_kib(mut child: Child) -> (u64, Out) {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (peak, finish(child.wait_with_output().unwrap()))
}

/// A 96 MiB payload goes up without being held in memory: the client's resident set stays far
/// below the payload's size (the server reads it all, then refuses it: it is not the image
/// the envelope signs).
#[test]
fn packages_upload_streams_a_large_payload() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, _) = lab.package("fw-2", "2.0", 2, 1000);
    let big = dir.path().join("big.bin");
    // Sparse: no disk used on this side.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(96 * 1024 * 1024)
        .unwrap();
    let child = lab.server.spawn_ctl(
        &lab.config,
        &[
            "packages",
            "upload",
            &envelope,
            "--payload",
            big.to_str().unwrap(),
        ],
    );
    let (peak, out) = peak_rss_kib(child);
    assert_eq!(out.code, 1, "{}", out.text());
    assert!(out.stderr.contains("of 96.0 MiB (100%)"), "{}", out.text());
    assert!(
        out.stderr.contains("answered 400 Bad Request"),
        "{}",
        out.text()
    );
    assert!(peak > 0, "no reading of the client's memory");
    assert!(
        peak < 48 * 1024,
        "the client held {peak} KiB at its peak for a 96 MiB upload"
    );
}

/// `simfota ctl ARGS` on a pseudo-terminal (util-linux `script`): what the terminal got, and
/// the exit status; `None` when `script` is missing and SIMFOTA_SKIP_EXTERNAL=1 allows it.
fn at_terminal(lab: &Lab, args: &[&str]) -> Option<(i32, String)> {
    let mut line = format!(
        "{} ctl --server {} --token-file {}",
        env!("CARGO_BIN_EXE_simfota"),
        lab.server.url,
        lab.server.token_file.display()
    );
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = simfota_env(Command::new("script"))
        .env("SIMFOTA_CTL_CONFIG", &lab.config)
        .args(["-qec", &line, "/dev/null"])
        .output();
    match out {
        Ok(o) => Some((
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )),
        Err(e) => {
            if require_external() {
                panic!(
                    "util-linux `script` is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead): {e}"
                );
            }
            println!("skipped: `script` missing ({e})");
            None
        }
    }
}

/// `cmd` without the variables of the server and of `ctl` from the test's environment.
fn simfota_env(mut cmd: Command) -> Command {
    for v in VARS {
        cmd.env_remove(v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// At a terminal, the upload's progress and a watch are one line each, rewritten in place.
#[test]
fn at_a_terminal_progress_and_watch_rewrite_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 2 * 1024 * 1024);
    let Some((code, screen)) = at_terminal(
        &lab,
        &["packages", "upload", &envelope, "--payload", &payload],
    ) else {
        return;
    };
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("\r\x1b[2Kuploading fw-2.bin: "),
        "{screen:?}"
    );
    assert!(screen.contains("of 2.0 MiB (100%)"), "{screen:?}");
    assert!(
        screen.contains("uploaded package 1: firmware 2.0 (sequence 2)"),
        "{screen:?}"
    );
    assert!(!screen.contains("(100%)\r\n\r\x1b"), "{screen:?}");

    let csv = device_csv(dir.path(), 40, 1);
    lab.ctl(&["devices", "import", csv.to_str().unwrap()]).ok();
    lab.ctl(&["campaigns", "create", "--name", "t", "--package", "1"])
        .ok();
    lab.ctl(&["campaigns", "cancel", "1"]).ok();
    let (code, screen) = at_terminal(&lab, &["campaigns", "watch", "1"]).unwrap();
    assert_eq!(code, 7, "{screen}");
    assert!(
        screen.contains("\r\x1b[2Kcancelled wave 1/1: 0/1 succeeded"),
        "{screen:?}"
    );
    assert!(screen.contains("campaign 1 is cancelled"), "{screen:?}");
}

/// Delete a package: refused while a running campaign uses it, done once it is cancelled.
#[test]
fn packages_delete_refused_while_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 1000);
    lab.ctl(&["packages", "upload", &envelope, "--payload", &payload])
        .ok();
    let csv = device_csv(dir.path(), 1, 1);
    lab.ctl(&["devices", "import", csv.to_str().unwrap()]).ok();
    lab.ctl(&["campaigns", "create", "--name", "r1", "--package", "1"])
        .ok();
    lab.ctl(&["packages", "delete", "1"])
        .fails(6, "answered 409 Conflict");
    lab.ctl(&["campaigns", "cancel", "1"]).ok();
    let out = lab.ctl(&["packages", "delete", "1"]).ok();
    assert_eq!(out.stdout.trim(), "deleted package 1");
    lab.ctl(&["packages", "show", "1"]).fails(3, "404");
    assert_eq!(lab.ctl_json(&["packages", "list"]), serde_json::json!([]));
}

/// A campaign created from a file while `campaigns watch` follows; a device with a card the
/// server trusts updates, one whose card it does not trust fails; watch ends when the
/// campaign completes. Then the jobs, the card, its log with dates, the proof bundle
/// (verified offline), and the device's job history.
#[test]
fn campaign_from_file_watched_to_completion_with_card_log_and_proof() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 20_000);
    lab.ctl(&["packages", "upload", &envelope, "--payload", &payload])
        .ok();
    let csv = device_csv(dir.path(), 2, 2);
    lab.ctl(&["devices", "import", csv.to_str().unwrap()]).ok();
    let good = lab.card("good", &iccid(1), &lab.issuer.0);
    let (rogue_issuer, _) = key(dir.path(), "rogue-issuer");
    let untrusted = lab.card("untrusted", &iccid(2), &rogue_issuer);
    let dev_good = lab.device(2);
    let dev_bad = lab.device(3);

    let spec = lab.path("campaign.json");
    std::fs::write(
        &spec,
        r#"{"name": "spring rollout", "package_id": 1, "waves": [100],
            "success_threshold": 10, "error_threshold": 100}"#,
    )
    .unwrap();
    let out = lab.ctl(&["campaigns", "create", "--file", &spec]).ok();
    assert!(
        out.stdout.starts_with(
            "created campaign 1: 'spring rollout' of package 1 to 2 devices (running)"
        ),
        "{}",
        out.text()
    );
    let watch = lab
        .server
        .spawn_ctl(&lab.config, &["campaigns", "watch", "1", "--interval", "1"]);

    let out = finish(
        simfota()
            .args([
                "device",
                "check-update",
                "--config",
                &dev_good,
                "--state",
                &good,
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(out.code, 0, "{}\n{}", out.text(), lab.server.log());
    assert!(out.stdout.contains("update result 200"), "{}", out.text());
    let _ = finish(
        simfota()
            .args([
                "device",
                "check-update",
                "--config",
                &dev_bad,
                "--state",
                &untrusted,
            ])
            .output()
            .unwrap(),
    );

    let out = wait_for(watch, 60, "campaigns watch");
    assert_eq!(out.code, 0, "{}\n{}", out.text(), lab.server.log());
    assert!(out.stdout.contains("running wave 1/1"), "{}", out.text());
    assert!(
        out.stdout
            .contains("completed wave 1/1: 1/2 succeeded, 1 failed"),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains("state       completed"),
        "{}",
        out.text()
    );

    let c = lab.ctl_json(&["campaigns", "show", "1"]);
    assert_eq!(c["state"], "completed");
    assert_eq!(c["progress"]["succeeded"], 1);
    assert_eq!(c["progress"]["failed"], 1);
    let out = lab.ctl(&["campaigns", "list"]).ok();
    assert!(
        out.stdout.contains("spring rollout") && out.stdout.contains("1/2"),
        "{}",
        out.text()
    );
    let jobs = lab.ctl_json(&["campaigns", "jobs", "1"]);
    let failed: Vec<&Value> = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["state"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{jobs}");
    assert_eq!(failed[0]["imei"], imei(3));
    let out = lab.ctl(&["campaigns", "jobs", "1"]).ok();
    assert!(
        out.stdout.contains("verified card"),
        "the failure's detail: {}",
        out.text()
    );

    // The device that updated: its job in its history.
    let d = lab.ctl_json(&["devices", "show", &imei(2)]);
    assert_eq!(d["device"]["fw_version"], "2.0");
    assert_eq!(d["jobs"][0]["state"], "succeeded");
    let out = lab.ctl(&["devices", "show", &imei(2)]).ok();
    assert!(
        out.stdout.contains("succeeded") && out.stdout.contains("verified"),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains(" UTC (just now)") || out.stdout.contains(" ago)"),
        "relative times: {}",
        out.text()
    );

    // The card, its log (entries with their dates), the proof verified offline.
    let cards = lab.ctl_json(&["cards", "list", "--iccid-prefix", &iccid(1)[..15]]);
    assert!(
        cards
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["iccid"] == iccid(1)),
        "{cards}"
    );
    let out = lab.ctl(&["cards", "show", &iccid(1)]).ok();
    assert!(
        out.stdout.contains("certificate  verified"),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains("simfota"),
        "the card's authorized server: {}",
        out.text()
    );
    // The PIN counter the card's signed log pages stated, with when.
    assert!(
        out.stdout.contains("pin tries    3 of 3 left, as of ") && out.stdout.contains(" UTC ("),
        "{}",
        out.text()
    );
    let card = lab.ctl_json(&["cards", "show", &iccid(1)]);
    assert_eq!(card["pin"]["tries_left"], 3, "{card}");
    assert_eq!(card["pin"]["blocked"], false, "{card}");
    let log = lab.ctl_json(&["cards", "log", &iccid(1)]);
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["update_id"].is_string()), "{log}");
    let out = lab.ctl(&["cards", "log", &iccid(1)]).ok();
    assert!(out.stdout.starts_with("SEQ  DATE"), "{}", out.text());
    assert!(out.stdout.contains("authorized"), "{}", out.text());
    let proof = lab.path("proof.json");
    let out = lab
        .ctl(&["cards", "proof", &iccid(1), "--out", &proof])
        .ok();
    assert!(
        out.stdout.contains("wrote the proof of update"),
        "{}",
        out.text()
    );
    let out = sim(&["proof", "verify", &proof, "--issuer-pub", &lab.issuer.1]);
    assert!(out.stdout.contains(&imei(2)), "{}", out.text());
    // Not over an existing file without --force.
    lab.ctl(&["cards", "proof", &iccid(1), "--out", &proof])
        .fails(1, "already exists");
    lab.ctl(&["cards", "log", &iccid(9)]).fails(3, "404");

    // The same package again to the device that runs it: skipped, counted as such.
    let c = lab.ctl_json(&[
        "campaigns",
        "create",
        "--name",
        "again",
        "--package",
        "1",
        "--group",
        "lab",
    ]);
    let id = c["id"].as_i64().unwrap().to_string();
    let _ = finish(
        simfota()
            .args([
                "device",
                "check-update",
                "--config",
                &dev_good,
                "--state",
                &good,
            ])
            .output()
            .unwrap(),
    );
    let c = lab.ctl_json(&["campaigns", "show", &id]);
    assert_eq!(c["skipped"], 1, "{c}");
    let out = lab.ctl(&["campaigns", "show", &id]).ok();
    assert!(out.stdout.contains("1 skipped"), "{}", out.text());
}

/// Pause ends a watch (exit 7), resume, cancel, a second cancel is a conflict (exit 6);
/// a campaign created from flags with the contract's options shows them back.
#[test]
fn campaign_from_flags_pause_resume_cancel_and_watch_stops_short() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 1000);
    lab.ctl(&["packages", "upload", &envelope, "--payload", &payload])
        .ok();
    let csv = device_csv(dir.path(), 20, 4);
    lab.ctl(&["devices", "import", csv.to_str().unwrap()]).ok();

    let c = lab.ctl_json(&[
        "campaigns",
        "create",
        "--name",
        "night",
        "--package",
        "1",
        "--model",
        "EX-1",
        "--waves",
        "50,100",
        "--error-threshold",
        "25",
    ]);
    assert_eq!(c["id"], 1);
    assert_eq!(c["target_model"], "EX-1");
    assert_eq!(c["waves"], serde_json::json!([50, 100]));
    assert_eq!(c["progress"]["total"], 2);
    let out = lab.ctl(&["campaigns", "show", "1"]).ok();
    assert!(
        out.stdout.contains("targets     model EX-1"),
        "{}",
        out.text()
    );
    assert!(out.stdout.contains("halt at 25% failed"), "{}", out.text());
    assert!(
        out.stdout.contains("running wave 1/2: 0/2 succeeded"),
        "{}",
        out.text()
    );

    let watch = lab.server.spawn_ctl(
        &lab.config,
        &["campaigns", "watch", "1", "--interval", "1", "--json"],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = lab.ctl(&["campaigns", "pause", "1"]).ok();
    assert!(
        out.stdout.starts_with("campaign 1 paused: paused wave 1/2"),
        "{}",
        out.text()
    );
    let out = wait_for(watch, 30, "campaigns watch");
    assert_eq!(out.code, 7, "{}", out.text());
    assert!(
        out.stderr.contains("campaign 1 is paused"),
        "{}",
        out.text()
    );
    assert!(
        out.stderr.contains("simfota ctl campaigns resume 1"),
        "{}",
        out.text()
    );
    // --json: one campaign per line, the last one paused.
    let last: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "paused");

    lab.ctl(&["campaigns", "pause", "1"])
        .fails(6, "answered 409 Conflict");
    let c = lab.ctl_json(&["campaigns", "resume", "1"]);
    assert_eq!(c["state"], "running");
    let out = lab.ctl(&["campaigns", "cancel", "1"]).ok();
    assert!(
        out.stdout.starts_with("campaign 1 cancelled"),
        "{}",
        out.text()
    );
    lab.ctl(&["campaigns", "cancel", "1"]).fails(6, "409");
    let cancelled = lab.ctl_json(&["campaigns", "list", "--state", "cancelled"]);
    assert_eq!(cancelled.as_array().unwrap().len(), 1, "{cancelled}");
    assert_eq!(
        lab.ctl_json(&["campaigns", "list", "--state", "running"]),
        serde_json::json!([])
    );
    let out = lab.ctl(&["campaigns", "show", "1", "--watch"]);
    out.fails(7, "campaign 1 is cancelled");
    lab.ctl(&["campaigns", "pause", "42"]).fails(3, "404");

    // Refused before anything is sent.
    lab.ctl(&["campaigns", "create", "--package", "1"])
        .fails(2, "a campaign needs name: give --name, or name in --file");
    lab.ctl(&[
        "campaigns",
        "create",
        "--name",
        "x",
        "--package",
        "1",
        "--window",
        "25:00-01:00",
    ])
    .fails(2, "--window: '25:00-01:00' is not a daily window");
    lab.ctl(&[
        "campaigns",
        "create",
        "--name",
        "x",
        "--package",
        "1",
        "--deadline",
        "soon",
    ])
    .fails(2, "--deadline: 'soon' is neither");
    let bad = lab.path("bad.json");
    std::fs::write(&bad, "[1, 2]").unwrap();
    lab.ctl(&["campaigns", "create", "--file", &bad])
        .fails(1, "must hold one object");
    // The server's own refusals, its message shown.
    lab.ctl(&["campaigns", "create", "--name", "x", "--package", "9"])
        .fails(3, "create campaign 'x': ");
    lab.ctl(&[
        "campaigns",
        "create",
        "--name",
        "x",
        "--package",
        "1",
        "--waves",
        "50,40",
    ])
    .fails(1, "answered 400 Bad Request: ");
}

/// The contract's campaign options: deadline, window, failure percentage, from flags and from
/// a TOML file with a flag overriding it; retry of failed jobs.
#[test]
fn campaign_safety_options_and_retry() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new(dir.path());
    let (envelope, payload) = lab.package("fw-2", "2.0", 2, 1000);
    lab.ctl(&["packages", "upload", &envelope, "--payload", &payload])
        .ok();
    let csv = device_csv(dir.path(), 30, 2);
    lab.ctl(&["devices", "import", csv.to_str().unwrap()]).ok();
    let c = lab.ctl_json(&[
        "campaigns",
        "create",
        "--name",
        "guarded",
        "--package",
        "1",
        "--deadline",
        "2099-01-01T00:00Z",
        "--window",
        "22:00-04:00",
        "--max-failure-pct",
        "20",
    ]);
    assert_eq!(c["deadline_ms"], 4_070_908_800_000_i64);
    assert_eq!(
        c["window"],
        serde_json::json!({"start": "22:00", "end": "04:00"})
    );
    assert_eq!(c["max_failure_pct"], 20);
    let out = lab.ctl(&["campaigns", "show", "1"]).ok();
    assert!(
        out.stdout.contains("22:00-04:00 UTC daily"),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains("2099-01-01 00:00:00 UTC"),
        "{}",
        out.text()
    );
    lab.ctl(&["campaigns", "cancel", "1"]).ok();

    let spec = lab.path("campaign.toml");
    std::fs::write(
        &spec,
        "name = \"from toml\"\npackage_id = 1\nwaves = [50, 100]\nmax_failure_pct = 5\n",
    )
    .unwrap();
    let c = lab.ctl_json(&["campaigns", "create", "-f", &spec, "--name", "overridden"]);
    assert_eq!(c["name"], "overridden");
    assert_eq!(c["waves"], serde_json::json!([50, 100]));
    assert_eq!(c["max_failure_pct"], 5);

    // A device deleted mid-campaign: its job fails ("device deleted"), which counts towards
    // the error threshold (here 10 %: the campaign halts); a retry never offers it again.
    lab.ctl(&["devices", "delete", &imei(30)]).ok();
    let c = lab.ctl_json(&["campaigns", "show", "2"]);
    assert_eq!(c["progress"]["failed"], 1, "{c}");
    assert_eq!(c["state"], "halted", "{c}");
    let failures = c["failures"].as_array().unwrap();
    assert_eq!(failures[0]["reason"], "device deleted", "{c}");
    let out = lab.ctl(&["campaigns", "show", "2"]).ok();
    assert!(out.stdout.contains("device deleted"), "{}", out.text());
    let failed = lab.ctl_json(&["campaigns", "jobs", "2", "--state", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    let c = lab.ctl_json(&["campaigns", "retry", "2", "--reason", "device deleted"]);
    assert_eq!(c["progress"]["failed"], 1, "{c}");
    let failed = lab.ctl_json(&["campaigns", "jobs", "2", "--state", "failed"]);
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
}

// ---------------------------------------------------------------------------------------
// Tokens, audit, exit codes, TLS
// ---------------------------------------------------------------------------------------

/// Issue (to stdout and to a file), list, revoke by name and by id; a viewer token reads but
/// may not write (exit 4); a revoked one is refused (exit 4); every change is in the audit
/// log, which pages.
#[test]
fn tokens_issue_list_revoke_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], None, false);
    let c = dir.path().join("ctl.toml");
    let c = c.as_path();

    let out = s
        .ctl(c, &["tokens", "issue", "night shift", "--role", "viewer"])
        .ok();
    let viewer = out.stdout.trim().to_owned();
    assert!(viewer.starts_with("sft_"), "{}", out.text());
    assert!(
        out.stderr.contains("role viewer; it is shown this once"),
        "{}",
        out.text()
    );
    let file = dir.path().join("ci.token");
    let out = s
        .ctl(
            c,
            &["tokens", "issue", "ci", "--out", file.to_str().unwrap()],
        )
        .ok();
    assert!(
        out.stdout.contains("with role operator, written to"),
        "{}",
        out.text()
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let v = s.ctl_json(c, &["tokens", "issue", "robot", "--role", "admin"]);
    assert!(v["token"].as_str().unwrap().starts_with("sft_"));
    let robot = v["id"].as_i64().unwrap();

    let list = s.ctl_json(c, &["tokens", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"night shift") && names.contains(&"ci"),
        "{list}"
    );
    assert!(
        !list.to_string().contains(&viewer),
        "a token is never listed"
    );
    let out = s.ctl(c, &["tokens", "list"]).ok();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("night shift") && l.contains("viewer") && l.ends_with("live"))
    );

    // A viewer reads, and may not write.
    let vfile = dir.path().join("viewer.token");
    std::fs::write(&vfile, format!("{viewer}\n")).unwrap();
    let as_viewer = |args: &[&str]| {
        let mut all = vec![
            "ctl",
            "--server",
            &s.url,
            "--token-file",
            vfile.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run(c, &all)
    };
    let out = as_viewer(&["devices", "list"]).ok();
    assert!(
        out.stderr.contains(&format!(
            "simfota: warning: the token file {} can be read by other users",
            vfile.display()
        )),
        "{}",
        out.text()
    );
    as_viewer(&["tokens", "issue", "x"]).fails(4, "answered 403 Forbidden");

    // Revoke by name, then by id.
    let out = s.ctl(c, &["tokens", "revoke", "night shift"]).ok();
    assert!(out.stdout.starts_with("revoked token "), "{}", out.text());
    as_viewer(&["devices", "list"]).fails(4, "answered 401 Unauthorized");
    as_viewer(&["devices", "list"]).fails(
        4,
        &format!("the token in {} is not accepted", vfile.display()),
    );
    s.ctl(c, &["tokens", "revoke", &robot.to_string()]).ok();
    s.ctl(c, &["tokens", "revoke", "night shift"])
        .fails(3, "no live token has that name");

    // A dashboard sign-in link for the token (never the token in it).
    let out = s.ctl(c, &["dashboard", "/ui/campaigns/1"]).ok();
    assert!(
        out.stdout.starts_with(&format!("{}/ui/login/", s.url)),
        "{}",
        out.text()
    );
    assert!(
        out.stderr
            .contains("a one-time sign-in link, valid for 60s"),
        "{}",
        out.text()
    );

    // The audit log: newest first, who did what.
    let audit = s.ctl_json(c, &["audit"]);
    let entries = audit.as_array().unwrap();
    assert!(
        entries[0]["action"] == "POST /api/v1/ui/links"
            && entries[1]["action"]
                .as_str()
                .unwrap()
                .starts_with("DELETE /api/v1/tokens/"),
        "{audit}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "POST /api/v1/tokens" && e["status"] == 403),
        "{audit}"
    );
    let out = s.ctl(c, &["audit"]).ok();
    assert!(out.stdout.starts_with("ID  WHEN"), "{}", out.text());
    assert!(out.stdout.contains("POST /api/v1/tokens"), "{}", out.text());
    // Pages: two at a time, all of them with --all.
    let two = s.ctl_json(c, &["audit", "--limit", "2"]);
    assert_eq!(two.as_array().unwrap().len(), 2);
    let every = s.ctl_json(c, &["audit", "--limit", "2", "--all"]);
    assert_eq!(every.as_array().unwrap().len(), entries.len(), "{every}");
}

/// The exit status of each class of failure, with one line naming the server, the status and
/// the server's message.
#[test]
fn exit_status_by_class_of_failure() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[], None, false);
    let c = dir.path().join("ctl.toml");
    let c = c.as_path();
    // Not found: 3.
    let out = s.ctl(c, &["devices", "show", &imei(5)]);
    out.fails(
        3,
        &format!(
            "simfota: show device {}: {} answered 404 Not Found: ",
            imei(5),
            s.url
        ),
    );
    assert_eq!(out.stderr.lines().count(), 1);
    // Unauthorized: 4 (a wrong token; no token file).
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "sft_not-a-token\n").unwrap();
    let url = s.url.clone();
    run(
        c,
        &[
            "ctl",
            "--server",
            &url,
            "--token-file",
            wrong.to_str().unwrap(),
            "devices",
            "list",
        ],
    )
    .fails(4, &format!("list devices: {url} answered 401 Unauthorized"));
    run(
        c,
        &[
            "ctl",
            "--server",
            &url,
            "--token-file",
            "/nonexistent/token",
            "devices",
            "list",
        ],
    )
    .fails(4, "no API token: cannot read /nonexistent/token");
    run(c, &["ctl", "--server", &url, "devices", "list"])
        .fails(4, "no API token: give --token-file");
    // Unreachable: 5.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let token = s.token_file.to_str().unwrap();
    let out = run(
        c,
        &[
            "ctl",
            "--server",
            &format!("http://127.0.0.1:{closed}"),
            "--token-file",
            token,
            "devices",
            "list",
        ],
    );
    out.fails(
        5,
        &format!("list devices: cannot reach the server at http://127.0.0.1:{closed}"),
    );
    // Usage: 2.
    s.ctl(c, &["devices", "list", "--limit", "0"])
        .fails(2, "--limit");
    s.ctl(c, &["devices", "list", "--all", "--cursor", "x"])
        .fails(2, "cannot be used with");
    s.ctl(c, &["packages", "show", "one"])
        .fails(2, "invalid value 'one'");
    // Conflict: 6 (the last admin token).
    s.ctl(c, &["tokens", "revoke", "1"])
        .fails(6, "answered 409 Conflict");
    // Help exits 0 and documents the statuses.
    let out = run(c, &["ctl", "--help"]).ok();
    assert!(out.stdout.contains("3 not found"), "{}", out.text());
}

/// A test CA and a certificate for 127.0.0.1 it signed, made with `openssl`: `(ca, cert,
/// key)`, or `None` when openssl is missing and SIMFOTA_SKIP_EXTERNAL=1 allows skipping.
fn test_pki(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n).display().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let steps = [
        format!(
            "req -x509 {ec} -days 1 -subj /CN=simfota-test-CA -keyout {} -out {}",
            p("ca.key"),
            p("ca.crt")
        ),
        format!(
            "req {ec} -subj /CN=127.0.0.1 -keyout {} -out {}",
            p("tls.key"),
            p("tls.csr")
        ),
        format!(
            "x509 -req -days 1 -CAcreateserial -in {} -CA {} -CAkey {} -extfile {} -out {}",
            p("tls.csr"),
            p("ca.crt"),
            p("ca.key"),
            p("ext.cnf"),
            p("tls.crt")
        ),
    ];
    for step in steps {
        let ok = Command::new("openssl")
            .args(step.split_whitespace())
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            if require_external() {
                panic!(
                    "openssl is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead): `openssl {step}` failed"
                );
            }
            println!("skipped: openssl missing or failing");
            return None;
        }
    }
    Some((dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key")))
}

/// An https:// server under a private CA: refused without the CA (exit 5, the reason named),
/// served with it from the configuration file.
#[test]
fn https_server_with_the_ca_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, tls_key)) = test_pki(dir.path()) else {
        return;
    };
    let s = Server::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            tls_key.to_str().unwrap(),
        ],
        None,
        true,
    );
    let c = dir.path().join("ctl.toml");
    let c = c.as_path();
    let out = s.ctl(c, &["devices", "list"]);
    out.fails(
        5,
        &format!("list devices: cannot reach {} securely: ", s.url),
    );
    out.fails(5, "the server's certificate is not signed by a trusted CA");
    out.fails(5, "--ca FILE");
    run(
        c,
        &["ctl", "config", "set", "ca-file", ca.to_str().unwrap()],
    )
    .ok();
    let out = s.ctl(c, &["devices", "list"]).ok();
    assert!(out.stderr.contains("no devices"), "{}", out.text());
    // A CA file that holds no certificate is refused before any connection.
    let not_ca = dir.path().join("not-ca.pem");
    std::fs::write(&not_ca, "hello\n").unwrap();
    s.ctl(c, &["--ca", not_ca.to_str().unwrap(), "devices", "list"])
        .fails(
            1,
            &format!("the CA file {} cannot be used", not_ca.display()),
        );
}
