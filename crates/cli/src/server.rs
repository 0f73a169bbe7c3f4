//! `simfota server`: the operator's DM server (crate `simfota-server`).
//!
//! Settings come from flags, their `SIMFOTA_*` environment variables, and an optional TOML
//! file (`--config`), in that order of precedence. The first run creates the database and the
//! data folder; `--new-api-token NAME` prints one more operator API token and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use simfota_server::config::OriginatorConfig;
use simfota_server::{Enrolment, LogFormat, ServerConfig, Settings};

/// Options of `simfota server`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file (flags and environment variables win over it).
    #[arg(long, env = "SIMFOTA_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder: SQLite database, package payloads, server key, first API token.
    #[arg(long, env = "SIMFOTA_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8443].
    #[arg(long, env = "SIMFOTA_LISTEN")]
    listen: Option<SocketAddr>,
    /// PostgreSQL URL (postgres://user@host/db); absent: SQLite in the data folder.
    #[arg(long, env = "SIMFOTA_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// Base URL devices use to reach this server (behind a proxy or load balancer).
    #[arg(long, env = "SIMFOTA_PUBLIC_URL")]
    public_url: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "SIMFOTA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SIMFOTA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// ServerID: this server's DM identity and the `iss` of its delivery tokens.
    #[arg(long, env = "SIMFOTA_SERVER_ID")]
    server_id: Option<String>,
    /// Server signing key (P-256 PEM) [default: DATA/server-key.pem, created on first run].
    #[arg(long, env = "SIMFOTA_SERVER_KEY")]
    server_key: Option<PathBuf>,
    /// Card issuer public key (PEM); repeat for several issuers.
    #[arg(
        long = "issuer-key",
        env = "SIMFOTA_ISSUER_KEYS",
        value_delimiter = ','
    )]
    issuer_keys: Vec<PathBuf>,
    /// Trusted software originator as ID=PUBLIC_KEY.pem; repeatable.
    #[arg(long = "originator", env = "SIMFOTA_ORIGINATORS", value_delimiter = ',', value_parser = parse_originator)]
    originators: Vec<OriginatorConfig>,
    /// Unknown devices: `preregistered` (refused until registered) or `shared-secret`.
    #[arg(long, env = "SIMFOTA_ENROLMENT", value_parser = parse_enrolment)]
    enrolment: Option<Enrolment>,
    /// Password unknown devices enrol with under `--enrolment shared-secret`.
    #[arg(long, env = "SIMFOTA_ENROLMENT_PASSWORD", hide_env_values = true)]
    enrolment_password: Option<String>,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "SIMFOTA_LOG_FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,
    /// Who may fetch package files: `public` (anyone) or `delivered` (signed URLs only).
    #[arg(long, env = "SIMFOTA_PAYLOAD_ACCESS", value_parser = parse_payload_access)]
    payload_access: Option<simfota_server::config::PayloadAccess>,
    /// Print a new operator API token with this name and exit.
    #[arg(long, value_name = "NAME")]
    new_api_token: Option<String>,
    /// The role of the token `--new-api-token` makes: viewer, operator or admin.
    #[arg(long, value_name = "ROLE", default_value = "operator", requires = "new_api_token", value_parser = parse_role)]
    role: simfota_server::auth::Role,
    /// List the API tokens (id, name, role, created, revoked) and exit.
    #[arg(long, conflicts_with_all = ["new_api_token", "revoke_api_token"])]
    list_api_tokens: bool,
    /// Revoke the live API token with this id, or the live tokens with this name, and exit.
    #[arg(long, value_name = "ID|NAME", conflicts_with = "new_api_token")]
    revoke_api_token: Option<String>,
}

fn parse_originator(s: &str) -> Result<OriginatorConfig, String> {
    let (id, key) = s.split_once('=').ok_or("expected ID=PUBLIC_KEY.pem")?;
    if id.is_empty() || key.is_empty() {
        return Err("expected ID=PUBLIC_KEY.pem".into());
    }
    Ok(OriginatorConfig {
        id: id.to_owned(),
        key: PathBuf::from(key),
    })
}

fn parse_enrolment(s: &str) -> Result<Enrolment, String> {
    s.parse()
        .map_err(|e: simfota_server::ServerError| e.to_string())
}

fn parse_role(s: &str) -> Result<simfota_server::auth::Role, String> {
    simfota_server::auth::Role::parse(s).map_err(|e| e.to_string())
}

fn parse_payload_access(s: &str) -> Result<simfota_server::config::PayloadAccess, String> {
    s.parse()
        .map_err(|e: simfota_server::ServerError| e.to_string())
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// Runs `simfota server`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let new_token = args.new_api_token.clone();
    let (role, list_tokens, revoke) = (
        args.role,
        args.list_api_tokens,
        args.revoke_api_token.clone(),
    );
    let config = ServerConfig::resolve(Settings {
        config_file: args.config,
        data_dir: args.data,
        listen: args.listen,
        database: args.database,
        public_url: args.public_url,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        server_id: args.server_id,
        server_key: args.server_key,
        issuer_keys: args.issuer_keys,
        originators: args.originators,
        enrolment: args.enrolment,
        enrolment_password: args.enrolment_password,
        log_format: args.log_format,
        payload_access: args.payload_access,
    })?;
    init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        if let Some(name) = new_token {
            let token = simfota_server::new_api_token(&config, &name, role).await?;
            outln!("{token}");
            return Ok(ExitCode::SUCCESS);
        }
        if list_tokens {
            outln!(
                "{:>4}  {:<24} {:<9} {:<13} state",
                "id",
                "name",
                "role",
                "created (ms)"
            );
            for t in simfota_server::list_api_tokens(&config).await? {
                outln!(
                    "{:>4}  {:<24} {:<9} {:<13} {}",
                    t.id,
                    t.name,
                    t.role.name(),
                    t.created_ms,
                    if t.revoked { "revoked" } else { "live" }
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(which) = revoke {
            let n = simfota_server::revoke_api_token(&config, &which).await?;
            outln!("revoked {n} token{}", if n == 1 { "" } else { "s" });
            return Ok(ExitCode::SUCCESS);
        }
        let stop = shutdown_signal()?;
        simfota_server::run(config, stop).await?;
        Ok(ExitCode::SUCCESS)
    })
}

fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    // Colour only for a person at a terminal: a journal or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (never happens in the binary) is not worth failing for.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM (what service managers send). The handlers are
/// installed here, before the server says it listens, so a signal that follows that line
/// stops the server gracefully instead of killing it; call it inside the runtime.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
