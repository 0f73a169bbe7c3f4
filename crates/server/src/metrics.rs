//! Prometheus metrics (`GET /metrics`).
//!
//! Counters count what this process did (sessions, messages, stored log entries, verification
//! failures); a Prometheus server sums them over replicas. Job states are gauges read from the
//! database at scrape time, so every replica reports the same fleet-wide numbers.

use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::{Db, RowExt};
use crate::error::{Result, ServerError};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// DM sessions started.
    pub dm_sessions: IntCounter,
    /// DM messages received.
    pub dm_messages: IntCounter,
    /// Card log entries stored.
    pub log_entries_stored: IntCounter,
    /// Failed verifications, by kind (export, receipt, certificate, package, device_auth).
    pub verification_failures: IntCounterVec,
    /// HTTP requests answered, by status class.
    pub http_responses: IntCounterVec,
    jobs: IntGaugeVec,
}

fn reg_err(e: prometheus::Error) -> ServerError {
    ServerError::Config(format!("metrics registry: {e}"))
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new_custom(Some("simfota".into()), None).map_err(reg_err)?;
        let dm_sessions =
            IntCounter::new("dm_sessions_total", "DM sessions started").map_err(reg_err)?;
        let dm_messages =
            IntCounter::new("dm_messages_total", "DM messages received").map_err(reg_err)?;
        let log_entries_stored = IntCounter::new(
            "card_log_entries_stored_total",
            "card log entries stored (new)",
        )
        .map_err(reg_err)?;
        let verification_failures = IntCounterVec::new(
            Opts::new(
                "verification_failures_total",
                "failed verifications by kind",
            ),
            &["kind"],
        )
        .map_err(reg_err)?;
        let http_responses = IntCounterVec::new(
            Opts::new("http_responses_total", "HTTP responses by status class"),
            &["class"],
        )
        .map_err(reg_err)?;
        let jobs = IntGaugeVec::new(
            Opts::new("jobs", "update jobs by state (fleet-wide)"),
            &["state"],
        )
        .map_err(reg_err)?;
        for c in [&dm_sessions, &dm_messages, &log_entries_stored] {
            registry.register(Box::new(c.clone())).map_err(reg_err)?;
        }
        registry
            .register(Box::new(verification_failures.clone()))
            .map_err(reg_err)?;
        registry
            .register(Box::new(http_responses.clone()))
            .map_err(reg_err)?;
        registry.register(Box::new(jobs.clone())).map_err(reg_err)?;
        Ok(Self {
            registry,
            dm_sessions,
            dm_messages,
            log_entries_stored,
            verification_failures,
            http_responses,
            jobs,
        })
    }

    /// Refreshes the database-backed gauges and renders the text exposition format.
    pub async fn render(&self, db: &Db) -> Result<String> {
        self.jobs.reset();
        for state in crate::campaign::JobState::ALL {
            self.jobs.with_label_values(&[state.as_str()]).set(0);
        }
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(db.pool())
            .await?;
        for r in rows {
            self.jobs
                .with_label_values(&[r.text("state")?.as_str()])
                .set(r.i64("n")?);
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(reg_err)?;
        String::from_utf8(buf).map_err(|e| ServerError::internal("metrics text", e))
    }
}
