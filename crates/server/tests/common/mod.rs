//! Shared test harness: every server test runs on SQLite and on PostgreSQL.
//!
//! PostgreSQL comes from `SIMFOTA_POSTGRES_URL` (default postgres://postgres@127.0.0.1:5432/test);
//! each test gets a fresh database, dropped afterwards, so tests run in parallel. When
//! PostgreSQL is unreachable the PostgreSQL variant fails, or prints a skip line when
//! `SIMFOTA_SKIP_EXTERNAL=1`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod http;

use std::future::Future;
use std::path::PathBuf;

use simfota_server::{RunningServer, ServerConfig};
use simfota_wire::PublicKey;
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::pem;
use sqlx::Connection as _;

/// Which engine a test variant runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// One test's world: a temp folder with keys, and a database.
pub struct Env {
    pub engine: Engine,
    pub dir: tempfile::TempDir,
    pub database: Option<String>,
    pub originator: SigningKey,
    pub issuer: SigningKey,
    pg: Option<PgDb>,
}

struct PgDb {
    admin_url: String,
    name: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop needs async; a short-lived runtime on its own thread avoids nesting in the test's.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn postgres_url() -> String {
    std::env::var("SIMFOTA_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn require_external() -> bool {
    std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1")
}

/// Replaces the database name at the end of a postgres URL.
pub fn with_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let cut = base.rfind('/').map_or(base.len(), |i| i);
    let mut out = format!("{}/{}", &base[..cut], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl Env {
    pub async fn new(engine: Engine) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (database, pg) = match engine {
            Engine::Sqlite => (None, None),
            Engine::Postgres => {
                let admin_url = postgres_url();
                let mut conn = match sqlx::PgConnection::connect(&admin_url).await {
                    Ok(c) => c,
                    Err(e) => {
                        if require_external() {
                            panic!("PostgreSQL unreachable at {admin_url}: {e}");
                        }
                        eprintln!("skipped: PostgreSQL missing ({admin_url}: {e})");
                        return None;
                    }
                };
                let name = format!("simfota_t_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let url = with_db_name(&admin_url, &name);
                (Some(url), Some(PgDb { admin_url, name }))
            }
        };
        let originator = SigningKey::random(&mut rand_core::OsRng);
        let issuer = SigningKey::random(&mut rand_core::OsRng);
        let env = Self {
            engine,
            dir,
            database,
            originator,
            issuer,
            pg,
        };
        std::fs::write(
            env.path("originator.pub.pem"),
            pem::public_key_to_pem(&PublicKey::from(&env.originator)).unwrap(),
        )
        .unwrap();
        std::fs::write(
            env.path("issuer.pub.pem"),
            pem::public_key_to_pem(&PublicKey::from(&env.issuer)).unwrap(),
        )
        .unwrap();
        Some(env)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A configuration on port 0 with this env's database and keys.
    pub fn config(&self, data: &str) -> ServerConfig {
        let mut c = ServerConfig::with_data_dir(self.path(data));
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.database = self.database.clone();
        c.originators = vec![simfota_server::config::OriginatorConfig {
            id: "oem".into(),
            key: self.path("originator.pub.pem"),
        }];
        c.issuer_keys = vec![self.path("issuer.pub.pem")];
        c
    }

    pub async fn start(&self) -> Server {
        Server::start(self.config("data")).await
    }
}

/// A running server with an HTTP client holding an API token.
pub struct Server {
    pub running: RunningServer,
    pub url: String,
    pub token: String,
    pub http: http::Client,
}

impl Server {
    pub async fn start(config: ServerConfig) -> Self {
        let data = config.data_dir.clone();
        let running = simfota_server::start(config).await.unwrap();
        let token = std::fs::read_to_string(data.join("api-token"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let url = running.base_url().to_owned();
        Self {
            running,
            url,
            token,
            http: http::Client::new(),
        }
    }

    pub fn get(&self, path: &str) -> http::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str) -> http::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub fn put(&self, path: &str) -> http::RequestBuilder {
        self.http
            .put(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn stop(self) {
        self.running.shutdown().await.unwrap();
    }
}

/// Runs `body` on SQLite.
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    body(Env::new(Engine::Sqlite).await.unwrap()).await;
}

/// Runs `body` on a fresh PostgreSQL database (or skips, see the module docs).
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(env) = Env::new(Engine::Postgres).await {
        body(env).await;
    }
}

/// Declares a test that runs on both engines: `both!(name, async_fn)`.
#[macro_export]
macro_rules! both {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::common::on_sqlite($body).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::common::on_postgres($body).await;
            }
        }
    };
}

/// Test IMEIs with valid Luhn check digits.
pub fn imei(n: u32) -> String {
    let body = format!("35{:012}", n);
    let digits: Vec<u32> = body.chars().map(|c| c.to_digit(10).unwrap()).collect();
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = *d;
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// Headless Chromium (Debian `chromium`) on `url` with `args`; `None` when it is missing and
/// SIMFOTA_SKIP_EXTERNAL=1 allows skipping (else it panics).
pub fn chromium(args: &[&str], url: &str) -> Option<std::process::Output> {
    let bin = ["chromium", "chromium-browser"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(bin) = bin else {
        if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
            panic!(
                "chromium is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead) but not installed"
            );
        }
        eprintln!("skipped: chromium missing");
        return None;
    };
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    Some(out)
}
