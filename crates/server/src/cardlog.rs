//! Card log retrieval (issue 6 item 8, design §4 step 9): signed log-read request, export
//! verification, storage of each entry exactly once, acknowledgement.
//!
//! The export is trusted only after every check: the card signature under the card key from
//! the issuer-verified certificate, decryption with the server key (ECDH-ES, RFC 9053 §6.3),
//! the ICCID, the nonce of the request this server sent (a replayed export answers an older
//! nonce and is refused), the first sequence number asked for, the hash chain inside the page,
//! and continuity with what is stored: the first entry must chain to the stored entry before it
//! (else `fork`), must not leave a hole after the stored head (else `gap`), and an entry stored
//! before must come back byte-identical (else `fork`). Refused exports are stored with their
//! reason in `log_exports` and counted; nothing of them reaches `card_log_entries`.
//!
//! A verified page also states the card's PIN retry counter (docs/formats.md §7, member 7).
//! The server keeps it on the card's row with the time it stored the page, in the statement
//! that moves the log head; a page that stores no new entry writes the counter only when it
//! differs from the stored one (a wrong PIN is not a log entry), so an idle session writes
//! nothing more.
//!
//! A card answers at most one page per request (the real applet: 4 records, what fits its I/O
//! buffer), each request needs a fresh card nonce, and the export says where the card's log
//! ends. The DM session ([`crate::dm`]) therefore reads page after page in one session,
//! acknowledging each, up to [`MAX_PAGES_PER_SESSION`]. With a card that takes it (applet 1.1
//! on: one acknowledgement bound to the page it last answered, from the server the page was
//! encrypted to, docs/apdu.md) the acknowledgement carries that page's own nonce and goes in
//! the reply to the page, with the Get of the next page's nonce.

use serde::Serialize;
use simfota_wire::{
    DenyReason, Digest, Event, Limits, LogAck, LogEntry, LogReadRequest, Nonce, PinTries,
    PublicKey, RefusalTally, ServerId, Unverified, open_export,
};

use crate::AppState;
use sqlx::AnyConnection;

use crate::db::{RowExt, now_ms};
use crate::error::{Result, ServerError};

/// Entries asked for per page (a card answers with fewer when its page is smaller).
pub const PAGE: u32 = 16;

/// Most export pages read in one DM session. Each page costs the card one ECDSA verification,
/// one ECDH and one signature, and the session two round trips (request + export,
/// acknowledgement + next nonce; three with a card that needs a fresh nonce for the
/// acknowledgement), so the bound keeps one session's card work and length finite.
/// 16 pages cover a whole card log (64 entries at the applet's 4 per page) in one session; a
/// card with more unread entries is read on in its next session.
pub const MAX_PAGES_PER_SESSION: u32 = 16;

/// The name of a card refusal code, from the wire crate's `DenyReason` table (`unknown` for a
/// code this build does not know: a newer card may log it).
pub fn deny_reason_name(r: DenyReason) -> &'static str {
    r.name().unwrap_or("unknown")
}

/// An entry's event as one short text: `authorized`, `authorized(free_device)`,
/// `denied(user_declined)`, `consent(pin_verified=true)`, `installed(200)`, ... (proof
/// bundles and `simfota proof verify` print these).
pub fn event_text(e: &LogEntry) -> String {
    match e.event {
        Event::Authorized if e.free_device => "authorized(free_device)".to_owned(),
        Event::Authorized => "authorized".to_owned(),
        Event::Denied(r) => format!("denied({})", deny_reason_name(r)),
        Event::Consent { pin_verified } => format!("consent(pin_verified={pin_verified})"),
        Event::IntegrityOk => "integrity_ok".to_owned(),
        Event::IntegrityFailed => "integrity_failed".to_owned(),
        Event::Installed(f) => format!("installed({})", f.0),
        Event::Acknowledged(n) => format!("acknowledged({n})"),
        Event::AdminApplied(c) => format!("admin_applied({c})"),
        Event::Refusals(t) => format!("refusals({})", refusal_counts_text(&t, "=", ",")),
    }
}

/// A tally's counts as `name{eq}count` joined by `sep` (`token_signature=80,malformed=5`).
pub fn refusal_counts_text(t: &RefusalTally, eq: &str, sep: &str) -> String {
    t.counts()
        .iter()
        .map(|(r, n)| format!("{}{eq}{n}", deny_reason_name(*r)))
        .collect::<Vec<_>>()
        .join(sep)
}

/// The names of the fields a record marks as claims the card did not verify (`server_id`,
/// `update_id`, `imei`), in that order; `None` for a record written before the marks.
pub fn unverified_fields(e: &LogEntry) -> Option<Vec<&'static str>> {
    let u = e.unverified?;
    let fields = [
        (Unverified::SERVER, "server_id"),
        (Unverified::UPDATE_ID, "update_id"),
        (Unverified::IMEI, "imei"),
    ];
    Some(
        fields
            .into_iter()
            .filter(|(bit, _)| u.contains(*bit))
            .map(|(_, name)| name)
            .collect(),
    )
}

/// What the log flow needs of a card whose certificate verified: its row id, its key, the
/// head of its stored log and the PIN counter stored last. The DM endpoint reads it with the
/// device's account ([`CardRow::from_row`]) and keeps both current as pages are stored.
#[derive(Debug, Clone)]
pub struct CardRow {
    /// `cards.id`.
    pub id: i64,
    key: PublicKey,
    /// The newest stored entry's sequence number.
    pub head_seq: Option<i64>,
    /// Its record hash.
    pub head_hash: Option<Vec<u8>>,
    /// The PIN counter stored last (`cards.pin_tries_left`, `pin_max_tries`).
    pub pin: Option<PinTries>,
}

impl CardRow {
    /// The card in a row holding `card_id`, `cert_status`, `card_pub`, `log_head_seq`,
    /// `log_head_hash`, `pin_tries_left` and `pin_max_tries` (all nullable: an outer join);
    /// `None` unless its certificate verified.
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Option<Self>> {
        let (Some(id), Some(status), Some(pk)) = (
            r.opt_i64("card_id")?,
            r.opt_text("cert_status")?,
            r.opt_bytes("card_pub")?,
        ) else {
            return Ok(None);
        };
        if status != "verified" {
            return Ok(None);
        }
        let key = PublicKey::from_sec1(&pk)
            .map_err(|e| ServerError::internal("stored card key", e.to_string()))?;
        Ok(Some(Self {
            id,
            key,
            head_seq: r.opt_i64("log_head_seq")?,
            head_hash: r.opt_bytes("log_head_hash")?,
            pin: crate::cardinfo::stored_pin(
                r.opt_i64("pin_tries_left")?,
                r.opt_i64("pin_max_tries")?,
            ),
        }))
    }

    /// The card's public key (from its verified certificate).
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The card with this ICCID, read from `cards`.
    pub async fn load(conn: &mut AnyConnection, iccid: &str) -> Result<Option<Self>> {
        let row = sqlx::query(
            "SELECT id AS card_id, cert_status, card_pub, log_head_seq, log_head_hash, \
             pin_tries_left, pin_max_tries FROM cards WHERE iccid = $1",
        )
        .bind(iccid.to_owned())
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            Some(r) => Self::from_row(&r),
            None => Ok(None),
        }
    }
}

/// A log-read request sent to a card and not answered yet: what its export page must answer.
/// The DM session that sent it keeps it with its flow (the page comes back in that session),
/// so it costs no statement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentRequest {
    /// The card nonce the request answered, which the page must carry.
    pub nonce: Vec<u8>,
    /// The first sequence number asked for.
    pub first_seq: i64,
}

/// Builds a signed log-read request for the card, answering `nonce`: its bytes and what the
/// page answering it is checked against.
pub fn request(state: &AppState, card: &CardRow, nonce: Nonce) -> Result<(Vec<u8>, SentRequest)> {
    let first_seq = card.head_seq.map_or(0, |s| s + 1);
    let req = LogReadRequest {
        server: ServerId::new(&state.config.server_id)
            .map_err(ServerError::signing("card log-read request"))?,
        nonce,
        first_seq: u32::try_from(first_seq)
            .map_err(|e| ServerError::internal("card log sequence", e))?,
        max_count: PAGE,
    };
    let mut buf = [0u8; 512];
    let n = req
        .sign(&state.keys.server_signer, &mut buf)
        .map_err(ServerError::signing("card log-read request"))?;
    let sent = SentRequest {
        nonce: nonce.0.to_vec(),
        first_seq,
    };
    Ok((buf[..n].to_vec(), sent))
}

/// The newest unanswered request kept in `log_requests`, where requests were recorded before
/// sessions kept them (a session stored then, awaiting its page): the request and its row id.
async fn recorded_request(
    conn: &mut AnyConnection,
    card_id: i64,
) -> Result<Option<(SentRequest, i64)>> {
    let row = sqlx::query(
        "SELECT id, card_nonce, first_seq FROM log_requests WHERE card_id = $1 AND state = 'sent' \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(card_id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok((
            SentRequest {
                nonce: r.bytes("card_nonce")?,
                first_seq: r.i64("first_seq")?,
            },
            r.i64("id")?,
        ))
    })
    .transpose()
}

/// What became of an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Verified and stored: `new` entries were not stored before; `up_to` is the newest
    /// stored sequence number (to acknowledge, with the page's `nonce`); `more` when the card
    /// holds further entries.
    Accepted {
        /// Newly stored entries.
        new: u64,
        /// The card nonce the page answered (that of this server's request).
        nonce: Nonce,
        /// Highest stored sequence number, if any entry exists.
        up_to: Option<u32>,
        /// The card has entries past this page.
        more: bool,
    },
    /// Refused, with the reason (recorded).
    Rejected(ExportRefusal),
}

/// Why an export was refused. The kind, not the wording, decides what the refusal does to the
/// card's log status ([`ExportRefusal::log_status`]); the text is what `log_exports.reason`
/// and the security event record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportRefusal {
    /// The ICCID names no card whose certificate verified.
    #[error("no verified card")]
    NoVerifiedCard,
    /// No request of this server is waiting for an answer.
    #[error("no log-read request is outstanding for this card (replayed export?)")]
    NoRequest,
    /// Signature, decryption or encoding refused (the wire crate's reason).
    #[error("export refused: {0}")]
    Unopened(String),
    /// Signed by this card's key but naming another ICCID.
    #[error("export from another card")]
    OtherCard,
    /// Answers an older request's nonce.
    #[error("export answers another request nonce (replayed export)")]
    OtherNonce,
    /// Starts after the first entry asked for, but not because entries are gone.
    #[error("export starts at {first} but {asked} was asked for")]
    WrongStart {
        /// The export's first sequence number.
        first: u32,
        /// The one asked for.
        asked: i64,
    },
    /// Entries the server never stored are missing (the card reused their slots, or the
    /// export skips past the stored head).
    #[error("gap: {0}")]
    Gap(String),
    /// The card's history contradicts itself or what is stored.
    #[error("fork: {0}")]
    Fork(String),
}

/// `cards.log_status` besides `ok`: what a refused export says about the card's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStatus {
    /// Entries are missing: the stored log has a hole.
    Gap,
    /// The card's log and the stored one disagree.
    Fork,
}

impl LogStatus {
    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gap => "gap",
            Self::Fork => "fork",
        }
    }
}

impl ExportRefusal {
    /// The log status this refusal sets on the card; `None` leaves it as it is (a replayed or
    /// forged export says nothing about the card's own log).
    pub fn log_status(&self) -> Option<LogStatus> {
        match self {
            Self::Gap(_) => Some(LogStatus::Gap),
            Self::Fork(_) => Some(LogStatus::Fork),
            Self::NoVerifiedCard
            | Self::NoRequest
            | Self::Unopened(_)
            | Self::OtherCard
            | Self::OtherNonce
            | Self::WrongStart { .. } => None,
        }
    }
}

/// Verifies and stores an export relayed by the device for `card` (`None`: the device's ICCID
/// names no verified card), answering `sent`, the request the session sent (`None`: a session
/// stored before sessions kept their request; the one recorded in `log_requests` is used).
/// An accepted page moves `card`'s head to its last entry.
pub async fn on_export(
    state: &AppState,
    conn: &mut AnyConnection,
    card: Option<&mut CardRow>,
    iccid: &str,
    device_id: i64,
    sent: Option<SentRequest>,
    bytes: &[u8],
) -> Result<Outcome> {
    let Some(card) = card else {
        return Ok(Outcome::Rejected(ExportRefusal::NoVerifiedCard));
    };
    let (req, recorded) = match sent {
        Some(r) => (Some(r), None),
        None => match recorded_request(conn, card.id).await? {
            Some((r, id)) => (Some(r), Some(id)),
            None => (None, None),
        },
    };
    let verdict = check(state, conn, card, iccid, req.as_ref(), bytes).await?;
    let (verdict_text, reason, first, last) = match &verdict {
        Ok(page) => (
            "accepted",
            None,
            Some(i64::from(page.first_seq)),
            page.entries.last().map(|(e, _)| i64::from(e.seq)),
        ),
        Err(r) => ("rejected", Some(r.to_string()), None, None),
    };
    let export_id = sqlx::query(
        "INSERT INTO log_exports (card_id, device_id, request_id, raw, verdict, reason, first_seq, last_seq, received_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(card.id)
    .bind(device_id)
    .bind(recorded)
    .bind(bytes.to_vec())
    .bind(verdict_text)
    .bind(reason.clone())
    .bind(first)
    .bind(last)
    .bind(now_ms())
    .fetch_one(&mut *conn)
    .await?
    .i64("id")?;
    let page = match verdict {
        Ok(v) => v,
        Err(refusal) => {
            state
                .metrics
                .verification_failures
                .with_label_values(&["export"])
                .inc();
            let m = refusal.to_string();
            crate::dm::record_event(&mut *conn, "card_export", Some(device_id), &m).await?;
            if let Some(status) = refusal.log_status() {
                sqlx::query("UPDATE cards SET log_status = $1, updated_ms = $2 WHERE id = $3")
                    .bind(status.as_str())
                    .bind(now_ms())
                    .bind(card.id)
                    .execute(&mut *conn)
                    .await?;
            }
            tracing::warn!(%iccid, reason = %m, "card log export rejected");
            return Ok(Outcome::Rejected(refusal));
        }
    };
    if let Some(id) = recorded {
        sqlx::query("UPDATE log_requests SET state = 'answered' WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    let new = insert_entries(conn, card.id, export_id, &page.entries).await?;
    state.metrics.log_entries_stored.inc_by(new);
    let up_to = page
        .entries
        .last()
        .map(|(e, _)| e.seq)
        .or_else(|| card.head_seq.and_then(|s| u32::try_from(s).ok()));
    let head = match page.entries.last() {
        Some((e, raw)) if card.head_seq.is_none_or(|h| i64::from(e.seq) > h) => {
            Some((i64::from(e.seq), LogEntry::record_hash(raw).0.to_vec()))
        }
        _ => None,
    };
    // With the head moving the counter costs nothing more; without, only a changed counter
    // is worth a statement.
    let pin = page.pin.filter(|p| head.is_some() || card.pin != Some(*p));
    if head.is_some() || pin.is_some() {
        store_head_and_pin(conn, card, iccid, head, pin).await?;
    }
    let more = u64::from(page.first_seq) + (page.entries.len() as u64) < u64::from(page.log_end);
    let pin_tries_left = page.pin.map(|p| p.left());
    tracing::info!(%iccid, new, up_to, pin_tries_left, "card log export verified");
    Ok(Outcome::Accepted {
        new,
        nonce: page.nonce,
        up_to,
        more,
    })
}

/// The card row's one update for an accepted page: the log head moves to `head` (`None`: it
/// stays) and the PIN counter the page stated is recorded with the time (`None`: the stored
/// one stays), as a compare-and-set on the head as `card` holds it.
async fn store_head_and_pin(
    conn: &mut AnyConnection,
    card: &mut CardRow,
    iccid: &str,
    head: Option<(i64, Vec<u8>)>,
    pin: Option<PinTries>,
) -> Result<()> {
    const HEAD: &str = "UPDATE cards SET log_head_seq = $1, log_head_hash = $2, updated_ms = $3 \
                        WHERE id = $4 AND log_head_seq IS NOT DISTINCT FROM $5";
    const HEAD_AND_PIN: &str = "UPDATE cards SET log_head_seq = $1, log_head_hash = $2, \
                                updated_ms = $3, pin_tries_left = $6, pin_max_tries = $7, \
                                pin_reported_ms = $3 \
                                WHERE id = $4 AND log_head_seq IS NOT DISTINCT FROM $5";
    let (seq, hash) = match head {
        Some((seq, hash)) => (Some(seq), Some(hash)),
        None => (card.head_seq, card.head_hash.clone()),
    };
    // The checks before relied on the head as `card` holds it (read with the account, before
    // this transaction): the row changes only from that value. Another export stored
    // meanwhile makes this message contended, and it is handled again from what is stored now.
    let q = sqlx::query(if pin.is_some() { HEAD_AND_PIN } else { HEAD })
        .bind(seq)
        .bind(hash.clone())
        .bind(now_ms())
        .bind(card.id)
        .bind(card.head_seq);
    let q = match pin {
        Some(p) => q.bind(i64::from(p.left())).bind(p.max().map(i64::from)),
        None => q,
    };
    if q.execute(&mut *conn).await?.rows_affected() != 1 {
        return Err(ServerError::Contended {
            what: format!("card log of {iccid}"),
        });
    }
    card.head_seq = seq;
    card.head_hash = hash;
    if pin.is_some() {
        card.pin = pin;
    }
    Ok(())
}

/// A verified page: its first sequence number, its entries with their records, where the
/// card's log ends and the PIN counter the page states.
struct Page {
    nonce: Nonce,
    first_seq: u32,
    entries: Vec<(LogEntry, [u8; LogEntry::RECORD_LEN])>,
    log_end: u32,
    pin: Option<PinTries>,
}

/// Columns of a `card_log_entries` row as [`insert_entries`] binds them.
const ENTRY_COLUMNS: usize = 22;

/// Stores a page's entries in one statement (a page holds at most [`PAGE`] entries: well
/// under both engines' limits on bound parameters); entries stored before are kept as they
/// are. Answers how many were new.
async fn insert_entries(
    conn: &mut AnyConnection,
    card_id: i64,
    export_id: i64,
    entries: &[(LogEntry, [u8; LogEntry::RECORD_LEN])],
) -> Result<u64> {
    if entries.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO card_log_entries (card_id, seq, raw, entry_hash, prev_hash, event, detail, \
         update_id, server_id, originator, release_name, release_version, manifest_digest, imei, \
         trusted_time, device_time, fumo_result, export_id, stored_ms, deny_code, free_device, \
         consent_pin) VALUES {} ON CONFLICT (card_id, seq) DO NOTHING",
        crate::db::values_list(entries.len(), ENTRY_COLUMNS)
    );
    let now = now_ms();
    let mut q = sqlx::query(&sql);
    for (e, raw) in entries {
        let d = describe(e);
        q = q
            .bind(card_id)
            .bind(i64::from(e.seq))
            .bind(raw.to_vec())
            .bind(LogEntry::record_hash(raw).0.to_vec())
            .bind(e.prev_hash.0.to_vec())
            .bind(d.event)
            .bind(d.detail)
            .bind(e.update_id.map(|u| u.as_bytes().to_vec()))
            .bind(e.server.map(|s| s.as_str().to_owned()))
            .bind(e.originator.map(|s| s.as_str().to_owned()))
            .bind(e.release.map(|s| s.as_str().to_owned()))
            .bind(e.version.map(|s| s.as_str().to_owned()))
            .bind(e.manifest_digest.map(|m| m.0.to_vec()))
            .bind(e.imei.map(|i| i.as_str().to_owned()))
            .bind(e.trusted_time.and_then(|t| i64::try_from(t).ok()))
            .bind(e.device_time.and_then(|t| i64::try_from(t).ok()))
            .bind(d.fumo_result)
            .bind(export_id)
            .bind(now)
            .bind(d.deny_code)
            .bind(i64::from(e.free_device))
            .bind(d.consent_pin);
    }
    let new = q.execute(&mut *conn).await?.rows_affected();
    // A refusal names the update it refused: its job's failure takes the card's reason.
    for (e, _) in entries {
        let d = describe(e);
        if let (Some(uid), "denied", Some(name)) = (e.update_id, d.event, d.detail.as_deref()) {
            crate::campaign::card_refused(&mut *conn, uid.as_bytes(), name).await?;
        }
    }
    Ok(new)
}

async fn check(
    state: &AppState,
    conn: &mut AnyConnection,
    card: &CardRow,
    iccid: &str,
    req: Option<&SentRequest>,
    bytes: &[u8],
) -> Result<std::result::Result<Page, ExportRefusal>> {
    let Some(req) = req else {
        return Ok(Err(ExportRefusal::NoRequest));
    };
    let secret = simfota_wire::p256::SecretKey::from(state.keys.server.as_nonzero_scalar());
    let v = match open_export(bytes, &card.key, &secret, &Limits::DEFAULT) {
        Ok(v) => v,
        Err(e) => return Ok(Err(ExportRefusal::Unopened(e.to_string()))),
    };
    let c = v.get();
    if c.iccid.as_str() != iccid {
        return Ok(Err(ExportRefusal::OtherCard));
    }
    if c.nonce.0.as_slice() != req.nonce.as_slice() {
        return Ok(Err(ExportRefusal::OtherNonce));
    }
    let asked = req.first_seq;
    if i64::from(c.first_seq) > asked {
        // The card no longer holds the entries asked for (another server acknowledged them and
        // the slots were reused): entries this server never stored are gone.
        return Ok(Err(ExportRefusal::Gap(format!(
            "the card's export starts at {} but {asked} was asked for (entries {asked}..{} are no longer on the card)",
            c.first_seq, c.first_seq
        ))));
    }
    if i64::from(c.first_seq) != asked {
        return Ok(Err(ExportRefusal::WrongStart {
            first: c.first_seq,
            asked,
        }));
    }
    let entries = match c.entries() {
        Ok(e) => e,
        Err(e) => {
            return Ok(Err(ExportRefusal::Fork(format!(
                "chain inside the export is broken ({e})"
            ))));
        }
    };
    // Continuity with what is stored (the stored head is entry first_seq - 1).
    if let (Some(first), Some(head_seq), Some(head_hash)) =
        (entries.first(), card.head_seq, &card.head_hash)
    {
        if i64::from(first.seq) > head_seq + 1 {
            return Ok(Err(ExportRefusal::Gap(format!(
                "entries {}..{} missing",
                head_seq + 1,
                first.seq
            ))));
        }
        if i64::from(first.seq) == head_seq + 1
            && first.prev_hash.0.as_slice() != head_hash.as_slice()
        {
            return Ok(Err(ExportRefusal::Fork(format!(
                "entry {} does not chain to the stored entry {head_seq}",
                first.seq
            ))));
        }
    } else if let Some(first) = entries.first()
        && card.head_seq.is_none()
        && first.seq == 0
        && first.prev_hash != Digest([0; 32])
    {
        return Ok(Err(ExportRefusal::Fork(
            "entry 0 has a previous hash".into(),
        )));
    }
    // Entries stored before must come back identical (one read for the page's range). The
    // stored head is the newest stored entry: a page past it holds no stored entry to compare.
    let past_head = |seq: u32| card.head_seq.is_none_or(|h| i64::from(seq) > h);
    if let (Some(first), Some(last)) = (entries.first(), entries.last())
        && !past_head(first.seq)
    {
        let rows = sqlx::query(
            "SELECT seq, entry_hash FROM card_log_entries WHERE card_id = $1 AND seq >= $2 \
             AND seq <= $3",
        )
        .bind(card.id)
        .bind(i64::from(first.seq))
        .bind(i64::from(last.seq))
        .fetch_all(&mut *conn)
        .await?;
        let mut stored = std::collections::HashMap::with_capacity(rows.len());
        for r in &rows {
            stored.insert(r.i64("seq")?, r.bytes("entry_hash")?);
        }
        for (e, raw) in entries.iter().zip(&c.records) {
            if let Some(hash) = stored.get(&i64::from(e.seq))
                && hash.as_slice() != LogEntry::record_hash(raw).0.as_slice()
            {
                return Ok(Err(ExportRefusal::Fork(format!(
                    "entry {} differs from the stored one",
                    e.seq
                ))));
            }
        }
    }
    let pairs = entries.into_iter().zip(c.records.iter().copied()).collect();
    Ok(Ok(Page {
        nonce: c.nonce,
        first_seq: c.first_seq,
        entries: pairs,
        log_end: c.log_end,
        pin: c.pin,
    }))
}

/// Signs a log acknowledgement "stored everything up to `up_to`" for `nonce`: the nonce of the
/// page it answers, or a fresh one (a card that takes no acknowledgement bound to a page).
pub fn ack(state: &AppState, nonce: Nonce, up_to: u32) -> Result<Vec<u8>> {
    let a = LogAck {
        server: ServerId::new(&state.config.server_id)
            .map_err(ServerError::signing("card log acknowledgement"))?,
        nonce,
        up_to_seq: up_to,
    };
    let mut buf = [0u8; 256];
    let n = a
        .sign(&state.keys.server_signer, &mut buf)
        .map_err(ServerError::signing("card log acknowledgement"))?;
    Ok(buf[..n].to_vec())
}

/// Records that the card accepted the acknowledgement.
pub async fn acked(conn: &mut AnyConnection, iccid: &str, up_to: u32) -> Result<()> {
    sqlx::query("UPDATE cards SET acked_seq = $1, updated_ms = $2 WHERE iccid = $3")
        .bind(i64::from(up_to))
        .bind(now_ms())
        .bind(iccid.to_owned())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

struct Described {
    event: &'static str,
    detail: Option<String>,
    fumo_result: Option<i64>,
    deny_code: Option<i64>,
    consent_pin: Option<i64>,
}

fn describe(e: &LogEntry) -> Described {
    let mut d = Described {
        event: "",
        detail: None,
        fumo_result: None,
        deny_code: None,
        consent_pin: None,
    };
    d.event = match e.event {
        Event::Authorized => {
            if e.free_device {
                d.detail = Some("free device: server not authorized, policy allows".into());
            }
            "authorized"
        }
        Event::Denied(r) => {
            d.detail = Some(deny_reason_name(r).to_owned());
            d.deny_code = Some(i64::from(r.0));
            "denied"
        }
        Event::Consent { pin_verified } => {
            d.detail = Some(if pin_verified {
                "user confirmed with PIN".into()
            } else {
                "user confirmed".into()
            });
            d.consent_pin = Some(i64::from(pin_verified));
            "consent"
        }
        Event::IntegrityOk => "integrity_ok",
        Event::IntegrityFailed => "integrity_failed",
        Event::Installed(f) => {
            d.fumo_result = Some(i64::from(f.0));
            "installed"
        }
        Event::Acknowledged(n) => {
            d.detail = Some(format!("up to {n}"));
            "acknowledged"
        }
        Event::AdminApplied(c) => {
            d.detail = Some(format!("counter {c}"));
            "admin_applied"
        }
        Event::Refusals(t) => {
            d.detail = Some(refusal_counts_text(&t, " × ", ", "));
            "refusals"
        }
    };
    d
}

/// A reason counted in a refusal tally, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefusalCount {
    /// The refusal's name from the card's reason table.
    pub reason: String,
    /// The code as the card logged it.
    pub code: i64,
    /// How many such refusals the record counts.
    pub count: i64,
}

/// A stored entry as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = CardLogEntry)]
pub struct StoredEntry {
    /// Sequence number.
    pub seq: i64,
    /// Event name.
    pub event: String,
    /// Event detail (the refusal's name, the consent, ...).
    pub detail: Option<String>,
    /// For `denied`: the refusal's name from the card's reason table (`user_declined`, ...).
    pub deny_reason: Option<String>,
    /// For `denied`: the refusal code as the card logged it.
    pub deny_code: Option<i64>,
    /// For `authorized`: the server was not authorized and the card's free-device policy let
    /// the update through.
    pub free_device: bool,
    /// For `consent`: whether the user's confirmation came with a verified PIN.
    pub consent_pin_verified: Option<bool>,
    /// Update id (hex).
    pub update_id: Option<String>,
    /// Server id.
    pub server_id: Option<String>,
    /// Originator.
    pub originator: Option<String>,
    /// Release name.
    pub release_name: Option<String>,
    /// Release version.
    pub release_version: Option<String>,
    /// IMEI.
    pub imei: Option<String>,
    /// FUMO result for `installed`.
    pub fumo_result: Option<i64>,
    /// Card trusted time (s).
    pub trusted_time: Option<i64>,
    /// Time the device reported (s), not trusted.
    pub device_time: Option<i64>,
    /// Entry hash (hex).
    pub entry_hash: String,
    /// Raw record (hex): what the card signed, for third-party checks.
    pub raw: String,
    /// Entries only reach this table after verification.
    pub verified: bool,
    /// Fields the card took from the request without verifying them (claims, not facts):
    /// `server_id`, `update_id`, `imei`. `None` for a record written before cards marked them.
    pub unverified_fields: Option<Vec<String>>,
    /// For `refusals`: the refusals the record counts, by reason.
    pub refusal_counts: Vec<RefusalCount>,
    /// For `refusals`: the card's trusted time at the first refusal counted (s).
    pub first_trusted_time: Option<i64>,
    /// For `refusals`: the device-reported time of the first refusal counted (s), not trusted.
    pub first_device_time: Option<i64>,
}

/// The stored log of a card, oldest first.
pub async fn entries(state: &AppState, iccid: &str) -> Result<Vec<StoredEntry>> {
    let rows = sqlx::query(
        "SELECT e.* FROM card_log_entries e JOIN cards c ON c.id = e.card_id WHERE c.iccid = $1 ORDER BY e.seq",
    )
    .bind(iccid.to_owned())
    .fetch_all(state.db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            // The marks and tallies are read from the record the card chained.
            let raw = r.bytes("raw")?;
            let decoded = LogEntry::decode(&raw).ok();
            let tally = match decoded.as_ref().map(|e| e.event) {
                Some(Event::Refusals(t)) => Some(t),
                _ => None,
            };
            let as_i64 = |v: Option<u64>| v.and_then(|v| i64::try_from(v).ok());
            Ok(StoredEntry {
                seq: r.i64("seq")?,
                event: r.text("event")?,
                detail: r.opt_text("detail")?,
                deny_reason: r
                    .opt_i64("deny_code")?
                    .and_then(|c| u16::try_from(c).ok())
                    .map(|c| deny_reason_name(DenyReason(c)).to_owned()),
                deny_code: r.opt_i64("deny_code")?,
                free_device: r.i64("free_device")? != 0,
                consent_pin_verified: r.opt_i64("consent_pin")?.map(|p| p != 0),
                update_id: r.opt_bytes("update_id")?.map(hex::encode),
                server_id: r.opt_text("server_id")?,
                originator: r.opt_text("originator")?,
                release_name: r.opt_text("release_name")?,
                release_version: r.opt_text("release_version")?,
                imei: r.opt_text("imei")?,
                fumo_result: r.opt_i64("fumo_result")?,
                trusted_time: r.opt_i64("trusted_time")?,
                device_time: r.opt_i64("device_time")?,
                entry_hash: hex::encode(r.bytes("entry_hash")?),
                raw: hex::encode(&raw),
                verified: true,
                unverified_fields: decoded
                    .as_ref()
                    .and_then(unverified_fields)
                    .map(|f| f.into_iter().map(str::to_owned).collect()),
                refusal_counts: tally
                    .iter()
                    .flat_map(|t| t.counts().iter().copied())
                    .map(|(r, n)| RefusalCount {
                        reason: deny_reason_name(r).to_owned(),
                        code: i64::from(r.0),
                        count: i64::from(n),
                    })
                    .collect(),
                first_trusted_time: as_i64(tally.and_then(|t| t.first_trusted_time)),
                first_device_time: as_i64(tally.and_then(|t| t.first_device_time)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gaps_and_forks_change_the_log_status() {
        // The kind decides, not the wording: a wire-crate reason that mentions a gap is no gap.
        assert_eq!(
            ExportRefusal::Gap("entries 3..5 missing".into()).log_status(),
            Some(LogStatus::Gap)
        );
        assert_eq!(
            ExportRefusal::Fork("entry 0 has a previous hash".into()).log_status(),
            Some(LogStatus::Fork)
        );
        for r in [
            ExportRefusal::NoVerifiedCard,
            ExportRefusal::NoRequest,
            ExportRefusal::Unopened("gap in the ciphertext".into()),
            ExportRefusal::OtherCard,
            ExportRefusal::OtherNonce,
            ExportRefusal::WrongStart { first: 4, asked: 2 },
        ] {
            assert_eq!(r.log_status(), None, "{r}");
        }
        // The recorded reasons read as before the kinds existed.
        assert_eq!(
            ExportRefusal::Gap("entries 3..5 missing".into()).to_string(),
            "gap: entries 3..5 missing"
        );
        assert_eq!(
            ExportRefusal::Unopened("bad signature".into()).to_string(),
            "export refused: bad signature"
        );
        assert_eq!(LogStatus::Fork.as_str(), "fork");
    }

    #[test]
    fn every_refusal_code_has_its_own_name() {
        let names: Vec<&str> = DenyReason::ALL
            .iter()
            .map(|r| deny_reason_name(*r))
            .collect();
        assert!(names.iter().all(|n| *n != "unknown"), "{names:?}");
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert_eq!(deny_reason_name(DenyReason(0x16)), "unknown");
    }

    #[test]
    fn events_read_with_their_flags() {
        let mut e = LogEntry::new(0, Digest::default(), Event::Authorized);
        assert_eq!(event_text(&e), "authorized");
        e.free_device = true;
        assert_eq!(event_text(&e), "authorized(free_device)");
        assert!(
            describe(&e)
                .detail
                .is_some_and(|d| d.contains("free device"))
        );
        let e = LogEntry::new(
            1,
            Digest::default(),
            Event::Denied(DenyReason::USER_DECLINED),
        );
        assert_eq!(event_text(&e), "denied(user_declined)");
        let d = describe(&e);
        assert_eq!((d.event, d.deny_code), ("denied", Some(0x10)));
        let e = LogEntry::new(2, Digest::default(), Event::Consent { pin_verified: true });
        assert_eq!(event_text(&e), "consent(pin_verified=true)");
        assert_eq!(describe(&e).consent_pin, Some(1));
    }

    #[test]
    fn tallies_and_claims_read_as_such() {
        let mut t = RefusalTally::new(None, Some(5));
        for _ in 0..80 {
            t.add(DenyReason::TOKEN_SIGNATURE);
        }
        t.add(DenyReason::MALFORMED);
        let e = LogEntry::new(3, Digest::default(), Event::Refusals(t));
        assert_eq!(event_text(&e), "refusals(token_signature=80,malformed=1)");
        let d = describe(&e);
        assert_eq!(d.event, "refusals");
        assert_eq!(
            d.detail.as_deref(),
            Some("token_signature × 80, malformed × 1")
        );
        assert_eq!(unverified_fields(&e), Some(vec![]));
        let mut e = LogEntry::new(4, Digest::default(), Event::Authorized);
        e.unverified = Some(Unverified::SERVER.with(Unverified::IMEI));
        assert_eq!(unverified_fields(&e), Some(vec!["server_id", "imei"]));
        e.unverified = None;
        assert_eq!(unverified_fields(&e), None);
    }
}
