//! The simfota DM server: the operator's side of card-controlled firmware updates.
//!
//! It hosts SUIT packages (originator signature checked on upload; payloads served with HTTP
//! ranges so devices resume), runs campaigns (targeting, waves, success and error thresholds,
//! per-device jobs that follow FUMO states and result codes), answers the REST API under
//! `/api/v1` for operators, and exposes Prometheus metrics. Storage is sqlx over SQLite (a
//! file in the data folder, the default) or PostgreSQL (several stateless replicas): see
//! [`db`].
//!
//! Layers: [`config`] (flags, file, environment), [`db`] (pool, migrations), [`packages`]
//! (upload, hosting), [`campaign`] (targeting and waves), [`dm`] (the OMA DM endpoint: device
//! auth, sessions in the database, FUMO delivery with delivery tokens), [`cardlog`] (log-read
//! requests, export verification, acknowledgements, page after page), [`cardinfo`] (the card's
//! server list, policy and originators as the device relays them), [`admin`] (issuer admin relay),
//! [`notify`] (package 0), [`proof`] (proof bundles), [`api`] (JSON surface), [`dashboard`]
//! (HTML), [`tls`]. See docs/server.md.
//!
//! What it does not do: trust the device. Everything the device relays from the card is
//! checked against keys the server holds (card certificates against the issuer key, exports and
//! receipts against the card key).

pub mod admin;
pub mod api;
pub mod auth;
pub mod campaign;
pub mod cardinfo;
pub mod cardlog;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod dm;
pub mod error;
mod http;
pub mod keys;
pub mod listing;
pub mod metrics;
pub mod notify;
pub mod packages;
pub mod proof;
pub mod provisioning;
pub mod registry;
pub mod signin;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Enrolment, FileConfig, LogFormat, ServerConfig, Settings};
pub use error::{Result, ServerError};
pub use http::serve::ConnLimits;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: db::Db,
    /// The configuration.
    pub config: Arc<ServerConfig>,
    /// Base URL devices are given (package URLs).
    pub base_url: Arc<str>,
    /// Prometheus counters.
    pub metrics: Arc<metrics::Metrics>,
    /// Server key, trusted originator and issuer keys.
    pub keys: Arc<keys::Keys>,
    /// Card certificates verified by this process.
    pub verified_cards: Arc<registry::VerifiedCards>,
    /// The sources of aggregated security events admitted this hour ([`dm::EventSources`]).
    pub event_sources: Arc<dm::EventSources>,
}

/// A server started with [`start`]: its address, and a handle to stop it.
pub struct RunningServer {
    local_addr: SocketAddr,
    base_url: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    state: AppState,
}

impl RunningServer {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL devices and clients use.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The shared state (database, configuration), for in-process tools and tests.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets requests in flight finish, closes the database pool.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`RunningServer::shutdown`] or a fatal error).
    pub async fn wait(self) -> Result<()> {
        let res = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Config(format!("server task failed: {e}"))),
        };
        self.state.db.close().await;
        res
    }
}

/// Prepares the data folder and the database (first run creates and migrates), binds the
/// listener and starts serving in the background.
pub async fn start(config: ServerConfig) -> Result<RunningServer> {
    config.validate()?;
    // TLS files first: a bad certificate or key refuses the start before anything is created.
    let tls_config = match &config.tls {
        Some(files) => Some(tls::server_config(&files.cert, &files.key)?),
        None => None,
    };
    // Then everything that can refuse the start without writing anything: the keys read (a
    // first run's server key made in memory), the port bound.
    let (keys, new_server_key) = keys::Keys::load(&config)?;
    for risk in config.risks(&keys) {
        tracing::warn!("{risk}");
    }
    let tcp = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    // The database, then the data folder (owner only; SQLite's file lives in it, so there it
    // comes first). A PostgreSQL server that does not answer stops the start before any file
    // or folder exists.
    if config.database.is_none() {
        db::create_private_dir(&config.data_dir)?;
    }
    let db = db::Db::open(
        config.database.as_deref(),
        &config.data_dir,
        config.db_acquire_timeout,
        config.sqlite_synchronous,
    )
    .await?;
    for dir in [config.data_dir.clone(), config.package_dir()] {
        db::create_private_dir(&dir)?;
    }
    let protected = registry::protect_stored_passwords(&db, &config.server_id).await?;
    if protected > 0 {
        tracing::info!(
            devices = protected,
            "DM passwords kept in clear replaced by their digests"
        );
    }
    if let Some(key) = new_server_key {
        key.write()?;
    }
    auth::ensure_initial_token(&db, &config.data_dir).await?;

    let local_addr = tcp.local_addr().map_err(|source| ServerError::Listen {
        addr: config.listen,
        source,
    })?;
    let base_url = config.base_url(local_addr);
    let state = AppState {
        db,
        base_url: base_url.clone().into(),
        metrics: Arc::new(metrics::Metrics::new()?),
        keys: Arc::new(keys),
        config: Arc::new(config),
        verified_cards: Arc::default(),
        event_sources: Arc::default(),
    };
    let app = http::router(state.clone());
    let (stop, mut stopped) = watch::channel(false);
    spawn_sweeps(state.clone(), stop.subscribe());
    let shutdown = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let limits = state.config.conn_limits;
    let task = match tls_config {
        Some(tls_config) => {
            let listener = tls::TlsListener::new(tcp, tls_config)?;
            tokio::spawn(async move {
                http::serve::serve(listener, app, limits, shutdown).await;
                Ok(())
            })
        }
        None => tokio::spawn(async move {
            http::serve::serve(tcp, app, limits, shutdown).await;
            Ok(())
        }),
    };
    tracing::info!(
        %local_addr,
        tls = state.config.tls.is_some(),
        backend = ?state.db.backend(),
        server_id = %state.config.server_id,
        "simfota server listening"
    );
    Ok(RunningServer {
        local_addr,
        base_url,
        stop,
        task,
        state,
    })
}

/// How often abandoned DM sessions and timed-out deliveries are swept.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Every [`SWEEP_EVERY`] until the server stops: drops abandoned DM sessions, and fails the
/// deliveries that went without a result for `delivery_timeout` (every replica sweeps; each
/// change is a compare-and-set, so replicas never apply one twice).
fn spawn_sweeps(state: AppState, mut stopped: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    match dm::sweep_stale_sessions(&state.db).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(sessions = n, "abandoned DM sessions dropped"),
                        Err(e) => tracing::warn!(error = %e, "DM session sweep failed"),
                    }
                    if let Err(e) = dm::sweep_aggregated_events(&state.db).await {
                        tracing::warn!(error = %e, "security event sweep failed");
                    }
                    if let Some(timeout) = state.config.delivery_timeout {
                        time_out_deliveries(&state, timeout).await;
                    }
                    match campaign::sweep_deadlines(&state.db).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(jobs = n, "jobs ended at their campaign's deadline"),
                        Err(e) => tracing::warn!(error = %e, "campaign deadline sweep failed"),
                    }
                },
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        return;
                    }
                }
            }
        }
    });
}

/// One sweep of timed-out deliveries, then the devices of any wave it released notified.
async fn time_out_deliveries(state: &AppState, timeout: std::time::Duration) {
    match campaign::time_out_deliveries(&state.db, timeout).await {
        Ok(released) => {
            for (campaign, before) in released {
                if let Err(e) = notify::released_since(state, campaign, before).await {
                    tracing::warn!(campaign, error = %e, "released wave not notified");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "delivery timeout sweep failed"),
    }
}

/// Runs until `shutdown` completes (Ctrl-C / SIGTERM in the CLI), then stops gracefully.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let server = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down: finishing requests in flight");
    server.shutdown().await?;
    tracing::info!("simfota server stopped");
    Ok(())
}

/// Opens the configured database (creating and migrating it if needed) for a token command.
async fn token_db(config: &ServerConfig) -> Result<db::Db> {
    db::create_private_dir(&config.data_dir)?;
    db::Db::open(
        config.database.as_deref(),
        &config.data_dir,
        config.db_acquire_timeout,
        config.sqlite_synchronous,
    )
    .await
}

/// Creates one more operator API token named `name` with `role` in the configured database;
/// returns the token (shown once, stored hashed). The action is in the audit log.
pub async fn new_api_token(config: &ServerConfig, name: &str, role: auth::Role) -> Result<String> {
    let db = token_db(config).await?;
    let token = auth::create_token(&db, name, role).await;
    if token.is_ok() {
        let action = format!(
            "create token {name:?} ({}) from the command line",
            role.name()
        );
        if let Err(e) = auth::record(&db, None, &action, 201, None).await {
            tracing::warn!(error = %e, "audit entry not recorded");
        }
    }
    db.close().await;
    token
}

/// The configured database's API tokens (never the tokens themselves).
pub async fn list_api_tokens(config: &ServerConfig) -> Result<Vec<auth::TokenInfo>> {
    let db = token_db(config).await?;
    let tokens = auth::list_tokens(&db).await;
    db.close().await;
    tokens
}

/// Revokes the live token with this id, or the live tokens with this name; answers how many.
pub async fn revoke_api_token(config: &ServerConfig, id_or_name: &str) -> Result<u64> {
    let db = token_db(config).await?;
    let done = auth::revoke(&db, id_or_name).await;
    if done.is_ok() {
        let action = format!("revoke token {id_or_name:?} from the command line");
        if let Err(e) = auth::record(&db, None, &action, 204, None).await {
            tracing::warn!(error = %e, "audit entry not recorded");
        }
    }
    db.close().await;
    done
}
