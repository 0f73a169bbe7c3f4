//! What a fleet run measured: counts, rates, latency percentiles, CPU, errors by kind, and the
//! server's own count of the campaign; printed for a person or as one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// The step at which a device's update stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The card did not answer as a personalized card should.
    Card,
    /// The delivery session failed (transport, authentication, protocol).
    DeliverySession,
    /// The delivery session ended without a token and an Exec.
    NoUpdate,
    /// The envelope could not be fetched or read.
    Envelope,
    /// The card refused the authorization.
    Authorize,
    /// The payload could not be fetched, or is not the signed one.
    Download,
    /// The card refused the integrity verdict.
    Integrity,
    /// The card refused the result report.
    Report,
    /// The result session failed (transport, authentication, protocol).
    ResultSession,
    /// The server did not accept the result alert.
    ResultRefused,
    /// A worker thread ended abnormally.
    Internal,
    /// A step found the server unreachable (down, or restarting after `--kills`) and was
    /// tried again after a backoff: counted, not a failure.
    ServerUnreachableRetried,
    /// A delivery session offered no update after a lost one (the server re-offers the job
    /// only once the device reports FUMO state idle): tried again, not a failure.
    NoUpdateRetried,
}

impl ErrorKind {
    /// The name used in the output (the JSON key).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Card => "card",
            ErrorKind::DeliverySession => "delivery_session",
            ErrorKind::NoUpdate => "no_update",
            ErrorKind::Envelope => "envelope",
            ErrorKind::Authorize => "authorize",
            ErrorKind::Download => "download",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Report => "report",
            ErrorKind::ResultSession => "result_session",
            ErrorKind::ResultRefused => "result_refused",
            ErrorKind::Internal => "internal",
            ErrorKind::ServerUnreachableRetried => "server_unreachable_retried",
            ErrorKind::NoUpdateRetried => "no_update_retried",
        }
    }

    /// Whether errors of this kind were retried steps rather than failed updates.
    pub fn is_retry(self) -> bool {
        matches!(
            self,
            ErrorKind::ServerUnreachableRetried | ErrorKind::NoUpdateRetried
        )
    }
}

/// Errors of one kind: how many, and the first message.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorGroup {
    /// How many devices stopped there.
    pub count: u64,
    /// The first device's message.
    pub example: String,
}

/// p50 and p99 of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(values: &mut [Duration]) -> Percentiles {
        values.sort_unstable();
        let at = |p: f64| -> f64 {
            if values.is_empty() {
                return 0.0;
            }
            let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
            round2(values[rank - 1].as_secs_f64() * 1000.0)
        };
        Percentiles {
            count: values.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }
}

/// Two decimals.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// CPU time spent during the measured phase.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    /// The server processes' user + system CPU, when the simulator started them.
    pub server_ms: Option<f64>,
    /// The server's CPU per complete update.
    pub server_ms_per_update: Option<f64>,
    /// This process's user + system CPU (devices, cards, relay, progress).
    pub simulator_ms: f64,
    /// The simulator's CPU per complete update.
    pub simulator_ms_per_update: Option<f64>,
    /// The PostgreSQL processes' CPU on this machine, when the run uses PostgreSQL and
    /// started the servers.
    pub database_ms: Option<f64>,
    /// The database's CPU per complete update.
    pub database_ms_per_update: Option<f64>,
}

/// The server's count of the campaign, read after the run.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The campaign.
    pub campaign_id: i64,
    /// Jobs the server counts as succeeded.
    pub server_succeeded: i64,
    /// Jobs the server counts as failed.
    pub server_failed: i64,
    /// Whether the server's succeeded count equals the simulator's complete updates.
    pub matches: bool,
    /// Jobs of the campaign the server still counts as delivered, pending or waiting,
    /// besides the idle devices' pending ones.
    pub jobs_unsettled: i64,
    /// Whether the campaign's progress counters equal the server's recount of its jobs
    /// (`GET /api/v1/campaigns/{id}/audit`).
    pub counters_match_recount: bool,
    /// Completed devices whose card log the server's copy was checked against.
    pub card_logs_checked: usize,
    /// Of those, the ones the server holds exactly: every entry the card wrote, once, the
    /// last one's hash the card's chain head.
    pub card_logs_exact: usize,
    /// The first card log that was not exact, and why.
    pub card_log_problem: Option<String>,
}

/// The SQL statements the servers ran during the measured phase (`--count-statements`).
#[derive(Debug, Clone, Serialize)]
pub struct Sql {
    /// Statements in all.
    pub statements: u64,
    /// Statements per complete update.
    pub statements_per_update: Option<f64>,
    /// Each statement (sqlx's summary: its first words) with its count, most frequent first.
    pub by_statement: Vec<StatementCount>,
}

/// One statement's count.
#[derive(Debug, Clone, Serialize)]
pub struct StatementCount {
    /// sqlx's summary of the statement.
    pub summary: String,
    /// How many times it ran.
    pub count: u64,
    /// Per complete update.
    pub per_update: Option<f64>,
}

impl Sql {
    /// The statements counted between two snapshots, over `complete` updates.
    pub fn between(
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
        complete: u64,
    ) -> Sql {
        let per = |n: u64| (complete > 0).then(|| round2(n as f64 / complete as f64));
        let mut by_statement: Vec<StatementCount> = after
            .iter()
            .map(|(summary, &n)| {
                let count = n - before.get(summary).copied().unwrap_or(0).min(n);
                StatementCount {
                    summary: summary.clone(),
                    count,
                    per_update: per(count),
                }
            })
            .filter(|c| c.count > 0)
            .collect();
        by_statement.sort_by(|a, b| b.count.cmp(&a.count).then(a.summary.cmp(&b.summary)));
        let statements = by_statement.iter().map(|c| c.count).sum();
        Sql {
            statements,
            statements_per_update: per(statements),
            by_statement,
        }
    }
}

/// How the run was set up.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// `sqlite`, `postgres`, or `target` (an existing server).
    pub database: &'static str,
    /// Server processes started (0 with `--target`).
    pub replicas: usize,
    /// `xml` or `wbxml`.
    pub encoding: &'static str,
    /// `md5` or `hmac`.
    pub auth: &'static str,
    /// The simulated cards' crypto back-end: `host` or `software`.
    pub card_crypto: &'static str,
    /// Devices in the campaign that never connected (`--idle-devices`).
    pub idle_devices: usize,
    /// Worker threads.
    pub concurrency: usize,
    /// Payload bytes.
    pub payload_size: usize,
    /// Whether devices fetched the payload.
    pub download: bool,
    /// Server start, registration, personalization, package upload and campaign, in seconds.
    pub setup_s: f64,
}

/// Everything the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether every started device completed and the server agrees.
    pub ok: bool,
    /// Devices registered and personalized.
    pub devices: usize,
    /// Devices whose update was started.
    pub started: usize,
    /// Complete updates.
    pub complete_updates: u64,
    /// Updates that stopped with an error.
    pub failed_updates: u64,
    /// The measured phase, in seconds.
    pub elapsed_s: f64,
    /// Complete updates per second of the measured phase.
    pub updates_per_s: f64,
    /// Each DM session (delivery and result).
    pub session_latency: Percentiles,
    /// Each complete update, first message to last answer.
    pub update_latency: Percentiles,
    /// CPU time during the measured phase.
    pub cpu: Cpu,
    /// SQL statements during the measured phase, when counted.
    pub sql: Option<Sql>,
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, ErrorGroup>,
    /// The server's own count.
    pub verification: Option<Verification>,
    /// Whether the run was stopped early (`--duration` or a signal).
    pub stopped_early: bool,
    /// Server processes killed (SIGKILL) and restarted during the measured phase (`--kills`).
    pub kills: u32,
    /// Settings.
    pub setup: Setup,
}

/// Statements listed in the printed report (the JSON lists them all).
const SQL_SHOWN: usize = 15;

/// Prints the report for a person (stdout).
pub fn print(r: &Report) {
    let s = &r.setup;
    outln!(
        "fleet: {} devices ({} started), {} on {} ({} server process{}), {} + {}, concurrency {}, \
         payload {} bytes{}, {} card crypto",
        r.devices,
        r.started,
        if s.database == "target" {
            "an existing server"
        } else {
            "own servers"
        },
        s.database,
        s.replicas,
        if s.replicas == 1 { "" } else { "es" },
        s.encoding,
        s.auth,
        s.concurrency,
        s.payload_size,
        if s.download { ", downloaded" } else { "" },
        s.card_crypto,
    );
    outln!(
        "  setup              {:.2} s (servers, registration, cards, package, campaign)",
        s.setup_s
    );
    if s.idle_devices > 0 {
        outln!(
            "  idle devices       {} more in the campaign, never connected",
            s.idle_devices
        );
    }
    outln!("  complete updates   {}", r.complete_updates);
    outln!("  elapsed            {:.2} s", r.elapsed_s);
    outln!("  updates/s          {:.1}", r.updates_per_s);
    outln!(
        "  session latency    p50 {:.1} ms, p99 {:.1} ms ({} sessions)",
        r.session_latency.p50_ms,
        r.session_latency.p99_ms,
        r.session_latency.count
    );
    outln!(
        "  update latency     p50 {:.1} ms, p99 {:.1} ms",
        r.update_latency.p50_ms,
        r.update_latency.p99_ms
    );
    match (r.cpu.server_ms, r.cpu.server_ms_per_update) {
        (Some(total), Some(per)) => outln!(
            "  server CPU         {per:.2} ms per update ({:.2} s in all)",
            total / 1000.0
        ),
        (Some(total), None) => outln!("  server CPU         {:.2} s, no update", total / 1000.0),
        _ => outln!("  server CPU         not measured (an existing server)"),
    }
    if let Some(per) = r.cpu.database_ms_per_update {
        outln!("  PostgreSQL CPU     {per:.2} ms per update (its processes on this machine)");
    }
    match r.cpu.simulator_ms_per_update {
        Some(per) => outln!(
            "  simulator CPU      {per:.2} ms per update ({:.2} s in all)",
            r.cpu.simulator_ms / 1000.0
        ),
        None => outln!("  simulator CPU      {:.2} s", r.cpu.simulator_ms / 1000.0),
    }
    if let Some(sql) = &r.sql {
        match sql.statements_per_update {
            Some(per) => outln!(
                "  SQL statements     {per:.2} per update ({} in all; the most frequent below)",
                sql.statements
            ),
            None => outln!("  SQL statements     {}", sql.statements),
        }
        for c in sql.by_statement.iter().take(SQL_SHOWN) {
            outln!(
                "    {:>8} {}",
                c.per_update
                    .map_or_else(|| c.count.to_string(), |p| format!("{p:.2}")),
                c.summary
            );
        }
    }
    if r.kills > 0 {
        outln!("  servers killed     {} (SIGKILL, restarted)", r.kills);
    }
    if r.errors.is_empty() {
        outln!("  errors             none");
    } else {
        outln!("  errors             {} failed updates", r.failed_updates);
        for (kind, g) in &r.errors {
            outln!("    {kind}: {} (first: {})", g.count, g.example);
        }
    }
    match &r.verification {
        Some(v) if v.matches && v.jobs_unsettled == 0 && v.counters_match_recount => outln!(
            "  server agrees      campaign {}: {} succeeded, no job left delivered or pending{}, \
             counters equal the recount",
            v.campaign_id,
            v.server_succeeded,
            if s.idle_devices > 0 {
                " (but the idle devices')"
            } else {
                ""
            }
        ),
        Some(v) if v.matches => outln!(
            "  SERVER UNSETTLED   campaign {}: {} jobs left delivered or pending, counters {} \
             the recount",
            v.campaign_id,
            v.jobs_unsettled,
            if v.counters_match_recount {
                "equal"
            } else {
                "DIFFER FROM"
            }
        ),
        Some(v) => outln!(
            "  SERVER DISAGREES   campaign {}: {} succeeded, {} failed; the simulator counted {}",
            v.campaign_id,
            v.server_succeeded,
            v.server_failed,
            r.complete_updates
        ),
        None => outln!("  server count       not read"),
    }
    if let Some(v) = &r.verification {
        match &v.card_log_problem {
            None => outln!(
                "  card logs          {} of {} stored exactly (every entry once, chain head matched)",
                v.card_logs_exact,
                v.card_logs_checked
            ),
            Some(why) => outln!(
                "  CARD LOGS          {} of {} stored exactly; first problem: {why}",
                v.card_logs_exact,
                v.card_logs_checked
            ),
        }
    }
    if r.stopped_early {
        outln!("  stopped early: devices not started were left as they are");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.count, p.p50_ms, p.p99_ms), (100, 50.0, 99.0));
        let mut one = vec![Duration::from_millis(7)];
        let p = Percentiles::of(&mut one);
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert_eq!(Percentiles::of(&mut []).count, 0);
    }
}
