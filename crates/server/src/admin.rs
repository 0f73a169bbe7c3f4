//! The issuer admin relay (issue 6 item 10): issuer-signed admin commands queued per card and
//! delivered in the card's next DM session.
//!
//! The server cannot make or alter a command (it holds no issuer key): it checks on queueing
//! that the command verifies under a configured issuer key and targets this card, relays it as
//! `Replace ./SIMFOTA/Card/Admin`, reads `./SIMFOTA/Card/AdminResult` in the same package, and
//! records the card's answer (`9000` applied, `66RR` refused with reason RR). The card itself
//! enforces the growing counter, so a replayed command is refused there and recorded here.

use serde::Serialize;
use simfota_wire::{AdminCommand, Limits};

use crate::AppState;
use sqlx::AnyConnection;

use crate::db::{RowExt, now_ms};
use crate::error::{Result, ServerError};

/// A queued command as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = AdminCommand)]
pub struct Queued {
    /// Id.
    pub id: i64,
    /// ICCID.
    pub iccid: String,
    /// The command's counter.
    pub counter: u64,
    /// `queued`, `sent`, `applied` or `refused`.
    pub state: String,
    /// The card's answer (status word text), when known.
    pub result: Option<String>,
    /// Operator note.
    pub note: Option<String>,
}

/// Verifies and queues a command for the card.
pub async fn queue(
    state: &AppState,
    iccid: &str,
    command: &[u8],
    note: Option<&str>,
) -> Result<Queued> {
    let card = crate::registry::get_card(&mut *state.db.conn().await?, iccid).await?;
    let mut verified = None;
    for k in &state.keys.issuers {
        if let Ok(v) = AdminCommand::verify(command, k, &Limits::DEFAULT) {
            verified = Some(v.into_inner());
            break;
        }
    }
    let cmd = verified.ok_or_else(|| {
        ServerError::Verification("the admin command does not verify under any issuer key".into())
    })?;
    if cmd.target.as_str() != iccid {
        return Err(ServerError::Verification(format!(
            "the admin command targets card {}, not {iccid}",
            cmd.target.as_str()
        )));
    }
    let id = sqlx::query(
        "INSERT INTO admin_queue (card_id, command, note, state, created_ms) VALUES ($1, $2, $3, 'queued', $4) \
         RETURNING id",
    )
    .bind(card.id)
    .bind(command.to_vec())
    .bind(note.map(str::to_owned))
    .bind(now_ms())
    .fetch_one(state.db.pool())
    .await?
    .i64("id")?;
    Ok(Queued {
        id,
        iccid: iccid.to_owned(),
        counter: cmd.counter,
        state: "queued".into(),
        result: None,
        note: note.map(str::to_owned),
    })
}

/// Lists a card's commands, oldest first.
pub async fn list(state: &AppState, iccid: &str) -> Result<Vec<Queued>> {
    let rows = sqlx::query(
        "SELECT a.id, a.command, a.note, a.state, a.result FROM admin_queue a JOIN cards c ON c.id = a.card_id \
         WHERE c.iccid = $1 ORDER BY a.id",
    )
    .bind(iccid.to_owned())
    .fetch_all(state.db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let bytes = r.bytes("command")?;
            // Stored only after verification; the decode cannot fail unless the row was edited.
            let counter = AdminCommand::decode(&bytes, &Limits::DEFAULT)
                .map(|s| s.dangerous_unverified().counter)
                .unwrap_or(0);
            Ok(Queued {
                id: r.i64("id")?,
                iccid: iccid.to_owned(),
                counter,
                state: r.text("state")?,
                result: r
                    .opt_bytes("result")?
                    .map(|b| String::from_utf8_lossy(&b).into_owned()),
                note: r.opt_text("note")?,
            })
        })
        .collect()
}

/// The oldest queued command of the card, marked sent.
pub async fn next_for_card(
    conn: &mut AnyConnection,
    iccid: &str,
) -> Result<Option<(i64, Vec<u8>)>> {
    let row = sqlx::query(
        "SELECT a.id, a.command FROM admin_queue a JOIN cards c ON c.id = a.card_id \
         WHERE c.iccid = $1 AND a.state = 'queued' ORDER BY a.id LIMIT 1",
    )
    .bind(iccid.to_owned())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let id = r.i64("id")?;
    let done = sqlx::query(
        "UPDATE admin_queue SET state = 'sent', sent_ms = $1 WHERE id = $2 AND state = 'queued'",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    Ok(Some((id, r.bytes("command")?)))
}

/// Records the card's answer: `9000` applied, anything else refused.
pub async fn record(conn: &mut AnyConnection, id: i64, answer: &str) -> Result<()> {
    let st = if answer == "9000" {
        "applied"
    } else {
        "refused"
    };
    let done = sqlx::query("UPDATE admin_queue SET state = $1, result = $2, done_ms = $3 WHERE id = $4 AND state = 'sent'")
        .bind(st)
        .bind(answer.as_bytes().to_vec())
        .bind(now_ms())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if st == "applied" && done.rows_affected() == 1 {
        // The command may have changed the card's lists: the next session reads them again.
        sqlx::query(
            "UPDATE cards SET lists_read_ms = NULL \
             WHERE id = (SELECT card_id FROM admin_queue WHERE id = $1)",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
    }
    tracing::info!(admin = id, %answer, "admin command result recorded");
    Ok(())
}
