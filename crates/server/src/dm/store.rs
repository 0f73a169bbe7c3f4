//! Where a DM session lives between messages: the protocol session and the [`Flow`], as one
//! JSON row of `dm_sessions`, written with a compare-and-set on its version so that a message
//! handled twice (a device's retry reaching another replica) is applied once.

use serde::{Deserialize, Serialize};
use simfota_syncml::session::ServerSession;
use sqlx::AnyConnection;

use super::flow::Flow;
use crate::db::{Db, now_ms};
use crate::error::{Result, ServerError};

/// A session abandoned by its device is dropped this long after its last message.
pub const STALE_AFTER_MS: i64 = 24 * 3600 * 1000;

/// A session whose device has not authenticated is dropped this long after its last message
/// (a device keeps one such session at most: see [`save`]).
pub const UNAUTHENTICATED_KEPT_MS: i64 = 10 * 60 * 1000;

/// An ended session's row is kept this long (then swept): a copy of the message that ended it
/// gets the reply already given, a device retrying a reply it lost does so within seconds.
pub const ENDED_KEPT_MS: i64 = 5 * 60 * 1000;

/// One session's stored state.
#[derive(Serialize, Deserialize)]
pub struct Stored {
    /// The protocol session.
    pub session: ServerSession,
    /// The server's flow in it.
    pub flow: Flow,
    /// The reply to the session's last message: a byte-identical repeat of that message is
    /// answered with it and runs nothing again (`SessionError::Repeated`; a device whose
    /// reply was lost on the way sends its message again).
    #[serde(default)]
    pub last_reply: Option<LastReply>,
    /// What the session did so far, for its log line when it ends.
    #[serde(default)]
    pub notes: Notes,
}

/// What a session did, logged in one line when it ends (`dm::log_session_end`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notes {
    /// Messages of the session handled.
    pub messages: u32,
    /// Whether a message of it authenticated.
    pub authenticated: bool,
    /// The job delivered (Exec accepted by the device).
    pub delivered: Option<i64>,
    /// Why the session delivered no update although the device had one to take.
    pub not_delivered: Option<String>,
    /// A FUMO result recorded: the job and the result code.
    pub result: Option<(i64, u16)>,
    /// Card-log export pages accepted.
    pub log_pages: u32,
}

/// A reply as sent: body (base64 in the row's JSON) and `x-syncml-hmac` header.
#[derive(Serialize, Deserialize)]
pub struct LastReply {
    /// The body, base64.
    pub body: String,
    /// The HMAC header, when the device uses HMAC.
    pub hmac: Option<String>,
}

/// A stored session as read from its row (`state`). A row that no longer decodes (written by
/// another version of the flow) is the server's problem: the message fails and the device
/// starts a new session.
pub fn decode(state: &[u8]) -> Result<Stored> {
    serde_json::from_slice(state).map_err(|e| ServerError::internal("stored DM session", e))
}

/// Writes the session as advanced by one message, in the transaction holding the message's
/// other writes: `version` is what [`load`] returned (`None` for a session this message
/// started). Another replica that advanced the session meanwhile makes this fail with
/// `Contended`, and the caller's transaction rolls everything back.
pub async fn save(
    conn: &mut AnyConnection,
    device_id: i64,
    session_id: &str,
    stored: &Stored,
    version: Option<i64>,
) -> Result<()> {
    let now = now_ms();
    let done = match (stored.session.is_over(), version) {
        // Started and ended by one message: nothing was stored.
        (true, None) => return Ok(()),
        // Ended: the row stays for [`ENDED_KEPT_MS`], marked, with the last reply.
        (true, Some(v)) => {
            let bytes = encode(stored)?;
            sqlx::query(
                "UPDATE dm_sessions SET state = $1, version = $2, updated_ms = $3, ended_ms = $3 \
                 WHERE device_id = $4 AND session_id = $5 AND version = $6",
            )
            .bind(bytes)
            .bind(v + 1)
            .bind(now)
            .bind(device_id)
            .bind(session_id.to_owned())
            .bind(v)
            .execute(&mut *conn)
            .await?
        }
        // Open (a new package 1 may reuse an ended session's row: open again).
        (false, Some(v)) => {
            let bytes = encode(stored)?;
            sqlx::query(
                "UPDATE dm_sessions SET state = $1, version = $2, updated_ms = $3, ended_ms = NULL, \
                 authenticated = $7 WHERE device_id = $4 AND session_id = $5 AND version = $6",
            )
            .bind(bytes)
            .bind(v + 1)
            .bind(now)
            .bind(device_id)
            .bind(session_id.to_owned())
            .bind(v)
            .bind(i64::from(stored.session.is_authenticated()))
            .execute(&mut *conn)
            .await?
        }
        (false, None) => {
            let authenticated = stored.session.is_authenticated();
            if !authenticated {
                // A client failing to authenticate under new SessionIDs replaces its session
                // each time: a device holds one unauthenticated session at most.
                sqlx::query(
                    "DELETE FROM dm_sessions WHERE device_id = $1 AND authenticated = 0 \
                     AND ended_ms IS NULL",
                )
                .bind(device_id)
                .execute(&mut *conn)
                .await?;
            }
            let bytes = encode(stored)?;
            sqlx::query(
                "INSERT INTO dm_sessions \
                 (device_id, session_id, next_msg_id, version, state, updated_ms, authenticated) \
                 VALUES ($1, $2, 0, 1, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(device_id)
            .bind(session_id.to_owned())
            .bind(bytes)
            .bind(now)
            .bind(i64::from(authenticated))
            .execute(&mut *conn)
            .await?
        }
    };
    if done.rows_affected() != 1 {
        return Err(ServerError::Contended {
            what: format!("DM session {session_id}"),
        });
    }
    Ok(())
}

fn encode(stored: &Stored) -> Result<Vec<u8>> {
    serde_json::to_vec(stored).map_err(|e| ServerError::internal("DM session", e))
}

/// Drops the sessions whose device went silent more than [`STALE_AFTER_MS`] ago, the ended
/// ones kept more than [`ENDED_KEPT_MS`] and the unauthenticated ones more than
/// [`UNAUTHENTICATED_KEPT_MS`]; answers how many. Run periodically by the server, not per
/// message.
pub async fn sweep_stale(db: &Db) -> Result<u64> {
    let now = now_ms();
    let done = sqlx::query(
        "DELETE FROM dm_sessions WHERE updated_ms < $1 OR ended_ms < $2 \
         OR (authenticated = 0 AND updated_ms < $3)",
    )
    .bind(now - STALE_AFTER_MS)
    .bind(now - ENDED_KEPT_MS)
    .bind(now - UNAUTHENTICATED_KEPT_MS)
    .execute(db.pool())
    .await?;
    Ok(done.rows_affected())
}
