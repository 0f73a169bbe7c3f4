//! Security events a client can cause without authenticating, or over and over once
//! authenticated (wrong credentials, unknown devices, card claims): aggregated, so that no
//! client decides how many rows the server writes. One row per kind, source and hour counts
//! the attempts (`count`, first `created_ms`, `last_ms`, the latest `detail`); a source is the
//! device for a registered one and the peer address otherwise, and each process admits at
//! most [`SOURCES_PER_HOUR`] sources an hour, folding any more into the source `*`.
//!
//! Bound: per hour, at most `kinds × (SOURCES_PER_HOUR + 1)` rows per replica, whatever the
//! traffic; the sweep drops aggregated rows after [`KEPT_MS`].

use std::collections::HashSet;
use std::sync::Mutex;

use sqlx::AnyConnection;

use crate::db::now_ms;
use crate::error::Result;

/// The aggregation period.
pub const BUCKET_MS: i64 = 3600 * 1000;
/// Distinct sources one process records under their own name in an hour.
pub const SOURCES_PER_HOUR: usize = 1000;
/// How long aggregated rows are kept (90 days).
pub const KEPT_MS: i64 = 90 * 24 * 3600 * 1000;

/// The sources admitted in the current hour, in this process.
#[derive(Default)]
pub struct EventSources {
    admitted: Mutex<(i64, HashSet<String>)>,
}

impl EventSources {
    /// `source` while this hour has room for it (or it was admitted already), else `*`.
    pub fn admit(&self, kind: &str, source: String, now: i64) -> String {
        let bucket = now - now.rem_euclid(BUCKET_MS);
        let Ok(mut admitted) = self.admitted.lock() else {
            return "*".into();
        };
        if admitted.0 != bucket {
            *admitted = (bucket, HashSet::new());
        }
        let key = format!("{kind} {source}");
        if admitted.1.contains(&key) {
            return source;
        }
        if admitted.1.len() >= SOURCES_PER_HOUR {
            return "*".into();
        }
        admitted.1.insert(key);
        source
    }
}

/// The source of an event from a client known only by its address.
pub fn peer_source(peer: Option<std::net::SocketAddr>) -> String {
    match peer {
        Some(p) => format!("ip {}", p.ip()),
        None => "ip unknown".into(),
    }
}

/// Counts one event of `kind` from `source` in its hour's row (created on the first).
pub async fn record_aggregated(
    conn: &mut AnyConnection,
    sources: &EventSources,
    kind: &str,
    source: String,
    device_id: Option<i64>,
    detail: &str,
) -> Result<()> {
    let now = now_ms();
    let source = sources.admit(kind, source, now);
    sqlx::query(
        "INSERT INTO security_events \
         (kind, device_id, detail, created_ms, source, bucket_ms, count, last_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $4) \
         ON CONFLICT (kind, source, bucket_ms) WHERE source IS NOT NULL \
         DO UPDATE SET count = security_events.count + 1, last_ms = excluded.last_ms, \
         detail = excluded.detail",
    )
    .bind(kind.to_owned())
    .bind(device_id)
    .bind(detail.chars().take(200).collect::<String>())
    .bind(now)
    .bind(source)
    .bind(now - now.rem_euclid(BUCKET_MS))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Drops aggregated rows older than [`KEPT_MS`]; answers how many.
pub async fn sweep(db: &crate::db::Db) -> Result<u64> {
    let done = sqlx::query("DELETE FROM security_events WHERE source IS NOT NULL AND last_ms < $1")
        .bind(now_ms() - KEPT_MS)
        .execute(db.pool())
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_beyond_the_hours_budget_fold_into_one() {
        let s = EventSources::default();
        let hour = 5 * BUCKET_MS;
        for i in 0..SOURCES_PER_HOUR {
            assert_eq!(s.admit("k", format!("ip {i}"), hour + 1), format!("ip {i}"));
        }
        assert_eq!(s.admit("k", "ip new".into(), hour + 2), "*");
        assert_eq!(
            s.admit("k", "ip 7".into(), hour + 3),
            "ip 7",
            "admitted already"
        );
        // The next hour starts afresh.
        assert_eq!(s.admit("k", "ip new".into(), hour + BUCKET_MS), "ip new");
    }
}
