//! `simfota server` as an operator runs it: the real binary with a data folder (the first run
//! creates and migrates, the second reuses), a TOML file, environment variables and flags in
//! their order of precedence, PostgreSQL by URL, TLS, SIGTERM, one-line refusals of bad flags
//! and bad configuration, and logs that never carry a secret.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server's environment variables: none may leak in from the test's own environment.
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
    "RUST_LOG",
];

mod pg;

use pg::{DropDb, pg, require_external, with_db_name};

fn simfota() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_simfota"));
    for v in SERVER_VARS {
        c.env_remove(v);
    }
    c.stdin(Stdio::null());
    c
}

/// A `simfota server` child process, its stderr collected as it comes.
struct Running {
    child: Child,
    /// The "listening" log line.
    listening: String,
    /// `host:port` it serves on.
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    /// Starts `cmd` (a `simfota server ...` command) and waits for its "listening" line.
    fn start(mut cmd: Command) -> Self {
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
            panic!(
                "the server did not start: {}",
                stderr.lock().unwrap().as_str()
            );
        };
        let addr = field(&listening, "local_addr");
        Self {
            child,
            listening,
            addr,
            stderr,
        }
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and everything logged.
    fn terminate(mut self) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let code = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not stop on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread sees the pipe close right after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let text = self.stderr.lock().unwrap().clone();
        (code, text)
    }

    fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
        http(&self.addr, method, path, token, body)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `name=value` from a text log line.
fn field(line: &str, name: &str) -> String {
    let key = format!("{name}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    line[at + key.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

struct Reply {
    status: u16,
    body: String,
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    exchange(addr, head, body)
}

/// `POST /ui/login` as the dashboard's form sends it.
fn sign_in(addr: &str, token: &str) -> Reply {
    let head = format!(
        "POST /ui/login HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n"
    );
    exchange(addr, head, &format!("token={token}&next=/ui"))
}

/// Sends the request `head` (its lines, each ending in CRLF) with `body`; the answer.
fn exchange(addr: &str, mut head: String, body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Reply { status, body }
}

fn server(data: &Path) -> Command {
    let mut c = simfota();
    c.args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data);
    c
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_run_creates_and_migrates_the_second_reuses_and_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Running::start(server(&data));
    assert!(s.listening.contains("backend=Sqlite"), "{}", s.listening);
    for f in [
        "simfota.db",
        "api-token",
        "server-key.pem",
        "server-pub.pem",
        "packages",
    ] {
        assert!(data.join(f).exists(), "{f} missing after the first run");
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join("api-token")), 0o600);
        assert_eq!(mode(&data.join("server-key.pem")), 0o600);
    }
    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(s.http("GET", "/healthz", None, None).status, 200);
    let r = s.http(
        "POST",
        "/api/v1/devices",
        Some(&token),
        Some(
            r#"{"imei":"490154203237518","username":"dev-1","password":"a","server_password":"b"}"#,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.lines().last().unwrap_or_default().contains("stopped"),
        "{log}"
    );

    // Second run: same database (the device is there), same token and server key.
    let key_before = std::fs::read(data.join("server-key.pem")).unwrap();
    let s = Running::start(server(&data));
    assert_eq!(
        std::fs::read_to_string(data.join("api-token"))
            .unwrap()
            .trim(),
        token
    );
    assert_eq!(
        std::fs::read(data.join("server-key.pem")).unwrap(),
        key_before
    );
    let r = s.http("GET", "/api/v1/devices", Some(&token), None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("490154203237518"), "{}", r.body);
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[test]
fn secrets_never_reach_the_logs_even_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let enrol = "enrol-secret-5f1c";
    let mut cmd = server(&data);
    cmd.env("RUST_LOG", "debug")
        .env("SIMFOTA_ENROLMENT", "shared-secret")
        .env("SIMFOTA_ENROLMENT_PASSWORD", enrol);
    let s = Running::start(cmd);
    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let (dm_pw, srv_pw) = ("dm-secret-8a2e", "srv-secret-77b0");
    let r = s.http(
        "POST",
        "/api/v1/devices",
        Some(&token),
        Some(&format!(
            r#"{{"imei":"490154203237518","username":"dev-1","password":"{dm_pw}","server_password":"{srv_pw}"}}"#
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // The dashboard sign-in: the token in the form body, once.
    let r = sign_in(&s.addr, &token);
    assert_eq!(r.status, 303, "{}", r.body);
    // A token in a URL is refused (and must not reach the log either).
    let r = s.http("GET", &format!("/ui/login?token={token}"), None, None);
    assert_eq!(r.status, 400);
    // A refused token, too.
    let r = s.http("GET", "/api/v1/devices", Some("wrong-token-c0ffee"), None);
    assert_eq!(r.status, 401);
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("DEBUG"), "debug logging is on: {log}");
    let key = std::fs::read_to_string(data.join("server-key.pem")).unwrap();
    let key_body: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .collect();
    assert!(!key_body.is_empty());
    for secret in [token.as_str(), dm_pw, srv_pw, enrol, "wrong-token-c0ffee"]
        .into_iter()
        .chain(key_body)
    {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn file_then_environment_then_flags_take_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let file = conf.join("server.toml");
    // Relative paths in the file are relative to the file.
    std::fs::write(
        &file,
        "data_dir = \"data\"\nlisten = \"127.0.0.1:0\"\nserver_id = \"from-file\"\nlog_format = \"text\"\n",
    )
    .unwrap();

    // The file alone (its path from SIMFOTA_CONFIG).
    let mut cmd = simfota();
    cmd.arg("server").env("SIMFOTA_CONFIG", &file);
    let s = Running::start(cmd);
    assert_eq!(field(&s.listening, "server_id"), "from-file");
    assert!(conf.join("data/simfota.db").exists());
    assert_eq!(s.terminate().0, Some(0));

    // The environment wins over the file.
    let mut cmd = simfota();
    cmd.args(["server", "--config"])
        .arg(&file)
        .env("SIMFOTA_SERVER_ID", "from-env");
    let s = Running::start(cmd);
    assert_eq!(field(&s.listening, "server_id"), "from-env");
    assert_eq!(s.terminate().0, Some(0));

    // A flag wins over both; the data folder flag over the file's.
    let other = dir.path().join("other-data");
    let mut cmd = simfota();
    cmd.args(["server", "--server-id", "from-flag", "--config"])
        .arg(&file)
        .arg("--data")
        .arg(&other)
        .env("SIMFOTA_SERVER_ID", "from-env");
    let s = Running::start(cmd);
    assert_eq!(field(&s.listening, "server_id"), "from-flag");
    assert!(other.join("simfota.db").exists());
    assert_eq!(s.terminate().0, Some(0));
}

/// Runs a bad `simfota server` command; returns (exit code, stderr).
fn refused(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = simfota();
    cmd.arg("server").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(err: &str, contains: &str) {
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("simfota: "), "{err}");
    assert!(lines[0].contains(contains), "{contains:?} not in {err}");
}

#[test]
fn bad_flags_and_bad_configuration_are_one_line_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // Usage errors: exit 2.
    let (code, err) = refused(&["--data", d, "--listen", "not-an-address"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "--listen");
    let (code, err) = refused(&["--data", d, "--enrolment", "anyone"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "preregistered");
    let (code, err) = refused(&["--data", d, "--no-such-flag"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert_one_line(&err, "--no-such-flag");

    // Configuration refused: exit 1.
    let (code, err) = refused(&[], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "--data");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "data_dir = \"d\"\nlisten_address = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, err) = refused(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "listen_address");
    std::fs::write(&file, "data_dir = [\n").unwrap();
    let (code, err) = refused(&["--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "bad.toml");
    let (code, err) = refused(&["--data", d, "--tls-cert", "c.pem"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "--tls-key");
    let (code, err) = refused(
        &["--data", d, "--listen", "127.0.0.1:0"],
        &[("SIMFOTA_DATABASE_URL", "mysql://dba:hunter2secret@db/x")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "postgres://");
    assert!(!err.contains("hunter2secret"), "{err}");
    let missing = dir.path().join("missing.pem");
    let (code, err) = refused(
        &[
            "--data",
            d,
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "missing.pem");
    // Refused before anything was created in the data folder.
    assert!(!dir.path().join("server-key.pem").exists());
    assert!(!dir.path().join("api-token").exists());
    let (code, err) = refused(
        &["--data", d, "--listen", "127.0.0.1:0"],
        &[("SIMFOTA_ENROLMENT", "shared-secret")],
    );
    assert_eq!(code, Some(1), "{err}");
    assert_one_line(&err, "enrolment password");
}

#[test]
fn postgres_by_url_first_run_creates_the_database() {
    let admin = std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if !pg(&admin, "SELECT 1") {
        return;
    }
    let name = format!("simfota_cli_{}", uuid::Uuid::new_v4().simple());
    let _cleanup = DropDb {
        admin: admin.clone(),
        name: name.clone(),
    };
    let url = with_db_name(&admin, &name);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = server(&data);
    cmd.args(["--database", &url]);
    let s = Running::start(cmd);
    assert!(s.listening.contains("backend=Postgres"), "{}", s.listening);
    // The database lives in PostgreSQL, not in the data folder.
    assert!(!data.join("simfota.db").exists());
    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_owned();
    let r = s.http(
        "POST",
        "/api/v1/groups",
        Some(&token),
        Some(r#"{"name":"lab"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("created the PostgreSQL database"), "{log}");

    // Second run (URL from the environment): migrated already, the data is there.
    let mut cmd = server(&data);
    cmd.env("SIMFOTA_DATABASE_URL", &url);
    let s = Running::start(cmd);
    let r = s.http("GET", "/api/v1/groups", Some(&token), None);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("\"lab\""), "{}", r.body);
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("created the PostgreSQL database"), "{log}");
}

/// A test CA and a certificate for 127.0.0.1 it signed, made with `openssl`: `(ca, cert,
/// key)`, or `None` when openssl is missing.
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
            eprintln!("skipped: openssl missing or failing");
            return None;
        }
    }
    Some((dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key")))
}

#[test]
fn tls_certificate_and_key_serve_https() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ca, cert, key)) = test_pki(dir.path()) else {
        return;
    };
    let data = dir.path().join("data");
    let mut cmd = server(&data);
    cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
    let s = Running::start(cmd);
    assert!(s.listening.contains("tls=true"), "{}", s.listening);
    // A TLS client that checks the chain against the test CA and the name 127.0.0.1.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error", "-verify_ip"])
        .arg("127.0.0.1")
        .arg("-CAfile")
        .arg(&ca)
        .arg("-connect")
        .arg(&s.addr)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP on the TLS port gets no answer.
    let mut plain = TcpStream::connect(&s.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = plain.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 200"));
    let (code, log) = s.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// Tokens from the command line: made with a role, listed (never the token), revoked by name;
/// the last admin token stays.
#[test]
fn api_tokens_are_made_listed_and_revoked_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = simfota()
            .args(["server", "--data", data])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, admin, _) = run(&["--new-api-token", "root", "--role", "admin"]);
    assert_eq!(code, Some(0));
    let (code, viewer, _) = run(&["--new-api-token", "night shift", "--role", "viewer"]);
    assert_eq!(code, Some(0));
    assert!(viewer.trim().starts_with("sft_"));
    let (code, list, _) = run(&["--list-api-tokens"]);
    assert_eq!(code, Some(0));
    assert!(list.contains("root") && list.contains("admin"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.contains("night shift") && l.contains("viewer") && l.ends_with("live")),
        "{list}"
    );
    assert!(!list.contains(admin.trim()) && !list.contains(viewer.trim()));
    let (code, out, _) = run(&["--revoke-api-token", "night shift"]);
    assert_eq!((code, out.trim()), (Some(0), "revoked 1 token"));
    let (_, list, _) = run(&["--list-api-tokens"]);
    assert!(
        list.lines()
            .any(|l| l.contains("night shift") && l.ends_with("revoked")),
        "{list}"
    );
    let (code, _, err) = run(&["--revoke-api-token", "root"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("last admin token"), "{err}");
    let (code, _, err) = run(&["--new-api-token", "x", "--role", "root"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("viewer, operator or admin"), "{err}");
}
