//! Server configuration: command-line flags, a TOML file and environment variables.
//!
//! Precedence, highest first: a flag on the command line, its environment variable (the CLI
//! reads both), the TOML file given with `--config`, then the defaults below. The CLI builds a
//! [`Settings`] from flags and environment, loads the optional [`FileConfig`], and
//! [`ServerConfig::resolve`] merges the two.
//!
//! Example file:
//!
//! ```toml
//! data_dir = "/var/lib/simfota"
//! listen = "0.0.0.0:8443"
//! database = "postgres://simfota@db.example/simfota"   # absent: SQLite in data_dir
//! public_url = "https://dm.example.net"                  # what devices are told to fetch from
//! server_id = "operator-dm"
//! enrolment = "preregistered"
//! tls_cert = "/etc/simfota/tls.crt"
//! tls_key = "/etc/simfota/tls.key"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Result, ServerError};

/// The default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
/// The default ServerID (SyncML RepPro 1.2 §6.1.6: the `Source/LocURI` of server messages).
pub const DEFAULT_SERVER_ID: &str = "simfota";
/// The default limit for a request body other than a package upload (DM messages, JSON).
pub const DEFAULT_MAX_BODY: usize = 256 * 1024;
/// The default limit for an uploaded package (envelope + payload).
pub const DEFAULT_MAX_PACKAGE: usize = 512 * 1024 * 1024;
/// The default age after which a session reads a card's lists again: they change only by the
/// issuer's hand, and an admin command relayed by this server makes them due at once.
pub const DEFAULT_CARD_LISTS_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// The default time a delivered update may go without a result: a week leaves room for a
/// user who postpones the installation and a device that is off for days.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who may fetch package files (`payload_access`, docs/server.md "Packages").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadAccess {
    /// Anyone who reaches the server, at `/packages/{id}/{envelope,payload}`: packages are
    /// signed by their originator and checked by the card, so their integrity does not rest on
    /// who can read them; and a manifest may name its payload by an absolute path.
    #[default]
    Public,
    /// Only through URLs the server hands out: a device's delivery (valid as long as the
    /// delivery may go without a result) and the operator API (an hour). Packages must name
    /// their payload by a relative URI, which resolves inside the signed URL.
    Delivered,
}

/// What the server does with a device it has never seen (documented in docs/server.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enrolment {
    /// Only devices registered through the API (with their DM credentials) may open a session;
    /// an unknown device gets 401 with a challenge and the attempt is recorded.
    #[default]
    Preregistered,
    /// An unknown device that authenticates with the configured enrolment password is registered
    /// on first contact with that password as its own credential (labs and demos).
    SharedSecret,
}

impl std::str::FromStr for PayloadAccess {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "public" => Ok(Self::Public),
            "delivered" => Ok(Self::Delivered),
            other => Err(ServerError::Config(format!(
                "payload access must be public or delivered, not {other:?}"
            ))),
        }
    }
}

impl std::str::FromStr for Enrolment {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "preregistered" => Ok(Self::Preregistered),
            "shared-secret" => Ok(Self::SharedSecret),
            other => Err(ServerError::Config(format!(
                "enrolment `{other}` is not one of: preregistered, shared-secret"
            ))),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The optional TOML file. Every field may be absent; unknown fields are refused so that a typo
/// does not silently leave a default in force.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data folder.
    pub data_dir: Option<PathBuf>,
    /// Listening address.
    pub listen: Option<SocketAddr>,
    /// PostgreSQL URL (or an explicit `sqlite://` URL).
    pub database: Option<String>,
    /// Base URL devices use to reach this server.
    pub public_url: Option<String>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// ServerID.
    pub server_id: Option<String>,
    /// Server signing key (PEM, P-256).
    pub server_key: Option<PathBuf>,
    /// Card issuer public keys (PEM).
    pub issuer_keys: Option<Vec<PathBuf>>,
    /// Trusted software originators.
    pub originators: Option<Vec<OriginatorConfig>>,
    /// Enrolment rule.
    pub enrolment: Option<Enrolment>,
    /// Enrolment password for [`Enrolment::SharedSecret`].
    pub enrolment_password: Option<String>,
    /// Body limit for DM and API requests.
    pub max_body_bytes: Option<usize>,
    /// Body limit for package uploads.
    pub max_package_bytes: Option<usize>,
    /// How long a request waits for a database connection before answering 503.
    pub db_acquire_timeout_ms: Option<u64>,
    /// SQLite durability: `normal` (default) or `full` ([`crate::db::SqliteSync`]).
    pub sqlite_synchronous: Option<crate::db::SqliteSync>,
    /// How often a session reads a card's lists again, in seconds (0: in every session).
    pub card_lists_refresh_secs: Option<u64>,
    /// How long a delivered update may go without a result before its job fails, in seconds
    /// (0: never).
    pub delivery_timeout_secs: Option<u64>,
    /// Seconds a client has for a request's headers, and a kept-alive connection between
    /// requests (default 10).
    pub header_read_timeout_secs: Option<u64>,
    /// Longest pause inside a request body, in seconds (default 30).
    pub body_idle_timeout_secs: Option<u64>,
    /// Connections served at once (default 4096); more wait in the listen backlog.
    pub max_connections: Option<usize>,
    /// Who may fetch package files: `public` (default) or `delivered`.
    pub payload_access: Option<PayloadAccess>,
    /// Log format.
    pub log_format: Option<LogFormat>,
}

/// A trusted software originator: its id (as the card knows it) and public key file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginatorConfig {
    /// The originator id.
    pub id: String,
    /// Its public key (PEM, P-256).
    pub key: PathBuf,
}

/// Values from the command line and the environment (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--data DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen ADDR`.
    pub listen: Option<SocketAddr>,
    /// `--database URL`.
    pub database: Option<String>,
    /// `--public-url URL`.
    pub public_url: Option<String>,
    /// `--tls-cert FILE`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key FILE`.
    pub tls_key: Option<PathBuf>,
    /// `--server-id ID`.
    pub server_id: Option<String>,
    /// `--server-key FILE`.
    pub server_key: Option<PathBuf>,
    /// `--issuer-key FILE` (repeatable).
    pub issuer_keys: Vec<PathBuf>,
    /// `--originator ID=FILE` (repeatable).
    pub originators: Vec<OriginatorConfig>,
    /// `--enrolment RULE`.
    pub enrolment: Option<Enrolment>,
    /// `--enrolment-password` (environment only in practice).
    pub enrolment_password: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--payload-access`.
    pub payload_access: Option<PayloadAccess>,
}

/// The TLS certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The resolved configuration the server runs with.
#[derive(Clone)]
pub struct ServerConfig {
    /// The data folder: database (SQLite), package payloads, generated API token.
    pub data_dir: PathBuf,
    /// Listening address (port 0 picks a free port; see [`crate::RunningServer::local_addr`]).
    pub listen: SocketAddr,
    /// Database URL; `None` = SQLite file `simfota.db` in the data folder.
    pub database: Option<String>,
    /// Base URL devices use (package URLs in FUMO nodes); `None` = derived from the listening
    /// address and the scheme.
    pub public_url: Option<String>,
    /// TLS files; `None` = plain HTTP (behind a TLS-terminating proxy, or on loopback).
    pub tls: Option<TlsFiles>,
    /// ServerID: the DM server identity, `iss` of delivery tokens.
    pub server_id: String,
    /// Server signing key file (P-256 PEM); `None` = `server-key.pem` in the data folder.
    pub server_key: Option<PathBuf>,
    /// Card issuer public keys: card certificates must verify under one of them.
    pub issuer_keys: Vec<PathBuf>,
    /// Trusted software originators: uploaded packages must verify under one of them.
    pub originators: Vec<OriginatorConfig>,
    /// What happens to unknown devices.
    pub enrolment: Enrolment,
    /// Enrolment password for [`Enrolment::SharedSecret`].
    pub enrolment_password: Option<String>,
    /// Body limit for DM and API requests.
    pub max_body_bytes: usize,
    /// Body limit for package uploads.
    pub max_package_bytes: usize,
    /// How long a request waits for a database connection before it answers 503.
    pub db_acquire_timeout: Duration,
    /// SQLite durability ([`crate::db::SqliteSync`]).
    pub sqlite_synchronous: crate::db::SqliteSync,
    /// How old the server's copy of a card's lists may be before a session reads them again
    /// (they are also read again after an issuer admin command was applied to the card).
    pub card_lists_refresh: Duration,
    /// How long a delivered update may go without a result before its job fails with that
    /// reason (`None`: it waits for ever).
    pub delivery_timeout: Option<Duration>,
    /// Header, body and connection limits (`crate::http::serve`).
    pub conn_limits: crate::ConnLimits,
    /// Who may fetch package files.
    pub payload_access: PayloadAccess,
    /// Log format.
    pub log_format: LogFormat,
}

impl std::fmt::Debug for ServerConfig {
    // Hand-written so that the database password and the enrolment password never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("database", &self.database.as_deref().map(redact_url))
            .field("public_url", &self.public_url)
            .field("tls", &self.tls)
            .field("server_id", &self.server_id)
            .field("server_key", &self.server_key)
            .field("issuer_keys", &self.issuer_keys)
            .field("originators", &self.originators)
            .field("enrolment", &self.enrolment)
            .field(
                "enrolment_password",
                &self.enrolment_password.as_ref().map(|_| "<redacted>"),
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_package_bytes", &self.max_package_bytes)
            .field("db_acquire_timeout", &self.db_acquire_timeout)
            .field("sqlite_synchronous", &self.sqlite_synchronous)
            .field("card_lists_refresh", &self.card_lists_refresh)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// Replaces the password of a `scheme://user:password@host/...` URL with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let pw = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{pw}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

impl FileConfig {
    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::io("cannot read the configuration file", path, e))?;
        toml::from_str(&text)
            .map_err(|e| ServerError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

impl ServerConfig {
    /// A configuration with every default and the given data folder (what tests and the demo
    /// start from).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            database: None,
            public_url: None,
            tls: None,
            server_id: DEFAULT_SERVER_ID.to_owned(),
            server_key: None,
            issuer_keys: Vec::new(),
            originators: Vec::new(),
            enrolment: Enrolment::default(),
            enrolment_password: None,
            max_body_bytes: DEFAULT_MAX_BODY,
            max_package_bytes: DEFAULT_MAX_PACKAGE,
            db_acquire_timeout: Duration::from_secs(3),
            sqlite_synchronous: crate::db::SqliteSync::default(),
            card_lists_refresh: DEFAULT_CARD_LISTS_REFRESH,
            delivery_timeout: Some(DEFAULT_DELIVERY_TIMEOUT),
            conn_limits: crate::ConnLimits::default(),
            payload_access: PayloadAccess::default(),
            log_format: LogFormat::default(),
        }
    }

    /// Merges flags/environment over the file over the defaults, and checks the result.
    pub fn resolve(settings: Settings) -> Result<Self> {
        let file = match &settings.config_file {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        // Relative paths in the file are relative to the file, so a config can travel with its keys.
        let base = settings
            .config_file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let data_dir = settings
            .data_dir
            .or_else(|| file.data_dir.map(rel))
            .ok_or_else(|| {
                ServerError::Config(
                    "no data folder: give --data DIR (or data_dir in the file)".into(),
                )
            })?;
        let mut cfg = Self::with_data_dir(data_dir);
        if let Some(l) = settings.listen.or(file.listen) {
            cfg.listen = l;
        }
        cfg.database = settings.database.or(file.database);
        cfg.public_url = settings.public_url.or(file.public_url);
        let cert = settings.tls_cert.or_else(|| file.tls_cert.map(rel));
        let key = settings.tls_key.or_else(|| file.tls_key.map(rel));
        cfg.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "TLS needs both --tls-cert and --tls-key".into(),
                ));
            }
        };
        if let Some(id) = settings.server_id.or(file.server_id) {
            cfg.server_id = id;
        }
        cfg.server_key = settings.server_key.or_else(|| file.server_key.map(rel));
        cfg.issuer_keys = if settings.issuer_keys.is_empty() {
            file.issuer_keys
                .unwrap_or_default()
                .into_iter()
                .map(rel)
                .collect()
        } else {
            settings.issuer_keys
        };
        cfg.originators = if settings.originators.is_empty() {
            file.originators
                .unwrap_or_default()
                .into_iter()
                .map(|o| OriginatorConfig {
                    id: o.id,
                    key: rel(o.key),
                })
                .collect()
        } else {
            settings.originators
        };
        if let Some(e) = settings.enrolment.or(file.enrolment) {
            cfg.enrolment = e;
        }
        cfg.enrolment_password = settings.enrolment_password.or(file.enrolment_password);
        if let Some(n) = file.max_body_bytes {
            cfg.max_body_bytes = n;
        }
        if let Some(n) = file.max_package_bytes {
            cfg.max_package_bytes = n;
        }
        if let Some(ms) = file.db_acquire_timeout_ms {
            cfg.db_acquire_timeout = Duration::from_millis(ms);
        }
        if let Some(s) = file.sqlite_synchronous {
            cfg.sqlite_synchronous = s;
        }
        if let Some(secs) = file.card_lists_refresh_secs {
            cfg.card_lists_refresh = Duration::from_secs(secs);
        }
        if let Some(secs) = file.delivery_timeout_secs {
            cfg.delivery_timeout = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(secs) = file.header_read_timeout_secs {
            cfg.conn_limits.header_read = Duration::from_secs(secs);
        }
        if let Some(secs) = file.body_idle_timeout_secs {
            cfg.conn_limits.body_idle = Duration::from_secs(secs);
        }
        if let Some(n) = file.max_connections {
            cfg.conn_limits.max_connections = n;
        }
        if let Some(a) = settings.payload_access.or(file.payload_access) {
            cfg.payload_access = a;
        }
        if let Some(f) = settings.log_format.or(file.log_format) {
            cfg.log_format = f;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings that start a working server but that an operator most likely did not mean:
    /// one sentence each, logged as warnings at start ([`crate::start`]). `keys` are the keys
    /// the server loaded (a key file may name no key).
    pub fn risks(&self, keys: &crate::keys::Keys) -> Vec<String> {
        let mut risks = Vec::new();
        if keys.issuers.is_empty() {
            risks.push(
                "no card issuer key (--issuer-key): no card certificate can verify, so no card \
                 is registered and no update can be delivered"
                    .to_owned(),
            );
        }
        if keys.originators.is_empty() {
            risks.push(
                "no trusted originator (--originator): every package upload will be refused"
                    .to_owned(),
            );
        }
        if self.enrolment == Enrolment::SharedSecret {
            risks.push(
                "enrolment = shared-secret: any device that knows the enrolment password is \
                 registered on first contact (meant for labs and demos)"
                    .to_owned(),
            );
        }
        let exposed = !self.listen.ip().is_loopback();
        let public_https = self
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        if exposed && self.tls.is_none() && !public_https {
            risks.push(format!(
                "listening on {} without TLS and no https public URL: API tokens and dashboard \
                 sessions would cross the network in clear (set --tls-cert/--tls-key, or \
                 --public-url https://... behind a TLS proxy)",
                self.listen
            ));
        }
        risks
    }

    /// Checks values that cannot be right.
    pub fn validate(&self) -> Result<()> {
        if self.server_id.is_empty() || self.server_id.len() > 64 {
            return Err(ServerError::Config(
                "server_id must be 1 to 64 bytes".into(),
            ));
        }
        if self.enrolment == Enrolment::SharedSecret
            && self.enrolment_password.as_deref().is_none_or(str::is_empty)
        {
            return Err(ServerError::Config(
                "enrolment = shared-secret needs an enrolment password (SIMFOTA_ENROLMENT_PASSWORD)"
                    .into(),
            ));
        }
        if let Some(db) = &self.database
            && !(db.starts_with("postgres://")
                || db.starts_with("postgresql://")
                || db.starts_with("sqlite:"))
        {
            return Err(ServerError::Config(format!(
                "database URL must start with postgres://, postgresql:// or sqlite: (got {})",
                redact_url(db)
            )));
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(ServerError::Config(format!(
                "public_url must be an http(s) URL: {u}"
            )));
        }
        if self.max_body_bytes < 1024 {
            return Err(ServerError::Config(
                "max_body_bytes must be at least 1024".into(),
            ));
        }
        let limits = &self.conn_limits;
        if limits.header_read.is_zero() || limits.body_idle.is_zero() {
            return Err(ServerError::Config(
                "header_read_timeout_secs and body_idle_timeout_secs must be at least 1".into(),
            ));
        }
        if limits.max_connections == 0 || limits.max_connections > 1 << 20 {
            return Err(ServerError::Config(
                "max_connections must be 1 to 1048576".into(),
            ));
        }
        Ok(())
    }

    /// The base URL devices are given, without a trailing slash.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{bound}")
            }
        }
    }

    /// The folder holding package payloads.
    pub fn package_dir(&self) -> PathBuf {
        self.data_dir.join("packages")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risky_settings_are_named_and_a_careful_one_has_none() {
        use simfota_wire::p256::ecdsa::SigningKey;
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::with_data_dir(dir.path());
        cfg.listen = "0.0.0.0:8443".parse().unwrap();
        cfg.enrolment = Enrolment::SharedSecret;
        let (keys, _) = crate::keys::Keys::load(&cfg).unwrap();
        let risks = cfg.risks(&keys);
        assert_eq!(risks.len(), 4, "{risks:#?}");
        for (risk, says) in risks.iter().zip([
            "no card issuer key (--issuer-key)",
            "no trusted originator (--originator)",
            "enrolment = shared-secret",
            "listening on 0.0.0.0:8443 without TLS",
        ]) {
            assert!(risk.starts_with(says), "{risk}");
        }

        let key = dir.path().join("k.pub.pem");
        let public = simfota_wire::PublicKey::from(&SigningKey::random(&mut rand_core::OsRng));
        std::fs::write(&key, simfota_wire::pem::public_key_to_pem(&public).unwrap()).unwrap();
        cfg.issuer_keys = vec![key.clone()];
        cfg.originators = vec![OriginatorConfig {
            id: "acme".into(),
            key,
        }];
        cfg.enrolment = Enrolment::Preregistered;
        cfg.public_url = Some("https://fota.example.net".into());
        let (keys, _) = crate::keys::Keys::load(&cfg).unwrap();
        assert_eq!(cfg.risks(&keys), Vec::<String>::new());
        // Loopback without TLS (behind a proxy on the same host) is not a risk either.
        cfg.public_url = None;
        cfg.listen = "127.0.0.1:8443".parse().unwrap();
        assert_eq!(cfg.risks(&keys), Vec::<String>::new());
    }

    #[test]
    fn redacts_database_password() {
        assert_eq!(
            redact_url("postgres://simfota:s3cret@db:5432/x?sslmode=require"),
            "postgres://simfota:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@h/x"), "postgres://u@h/x");
        let mut cfg = ServerConfig::with_data_dir("/d");
        cfg.database = Some("postgres://a:topsecret@h/db".into());
        cfg.enrolment_password = Some("hunter2".into());
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("topsecret") && !dbg.contains("hunter2"),
            "{dbg}"
        );
    }

    #[test]
    fn flags_win_over_file_and_file_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "data_dir = \"data\"\nlisten = \"127.0.0.1:9000\"\nserver_id = \"from-file\"\n\
             tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        let cfg = ServerConfig::resolve(Settings {
            config_file: Some(file.clone()),
            server_id: Some("from-flag".into()),
            ..Settings::default()
        })
        .unwrap();
        assert_eq!(cfg.server_id, "from-flag");
        assert_eq!(cfg.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.tls.unwrap().cert, dir.path().join("c.pem"));
    }

    #[test]
    fn refuses_unknown_fields_and_half_tls() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(&file, "data_dir = \"d\"\nlisten_addr = \"x\"\n").unwrap();
        let err = ServerConfig::resolve(Settings {
            config_file: Some(file),
            ..Settings::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
        let err = ServerConfig::resolve(Settings {
            data_dir: Some("d".into()),
            tls_cert: Some("c".into()),
            ..Settings::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("both"), "{err}");
        let err = ServerConfig::resolve(Settings::default()).unwrap_err();
        assert!(err.to_string().contains("--data"), "{err}");
    }
}
