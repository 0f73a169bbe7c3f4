//! Proof bundles for charging disputes (R12, issue 6 item 9).
//!
//! A bundle is a JSON document holding everything a third party needs to check, offline and
//! with nothing but the card issuer's public key, that an update happened on a given
//! subscription and device:
//!
//! 1. the card certificate, verified with the issuer key, gives the card key and ICCID;
//! 2. the receipt, verified with the card key, names the update id, the FUMO result, the log
//!    sequence number N of the install entry and the chain head (hash of entry N);
//! 3. the card log records up to N: their hashes chain from record to record and the last one
//!    hashes to the receipt's chain head, so every record is what the card stored (the card
//!    signed the head that commits to them); they show the authorization, any user consent,
//!    the integrity check and the install of this update, with IMEI and times;
//! 4. the delivery token (signed by the server, whose public key is included) binds the update
//!    id to the card nonce, ICCID, IMEI and manifest digest.
//!
//! The bundle also carries the records decoded (`entries`: event with the refusal's name, the
//! free-device and consent flags, release, server, IMEI) for a reader's convenience; they are
//! not trusted: [`verify`] decodes the records itself and refuses a bundle whose decoded
//! entries say anything else.
//!
//! [`verify`] is what `simfota proof verify` runs.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use simfota_wire::{
    CardCertificate, DeliveryToken, Digest, Event, Limits, LogEntry, PublicKey, Receipt,
};

use crate::AppState;
use crate::db::RowExt;
use crate::error::{Result, ServerError};

/// The bundle's format name.
pub const FORMAT: &str = "simfota-proof-1";

/// A proof bundle.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = ProofBundle)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// Update id (the token's `cti`), hex.
    pub update_id: String,
    /// Card certificate (COSE_Sign1 by the issuer), base64.
    pub card_certificate: String,
    /// Card receipt (COSE_Sign1 by the card), base64.
    pub receipt: String,
    /// Delivery token (CWT by the server), base64.
    pub delivery_token: String,
    /// The server's public key (SEC1, hex) the token verifies with.
    pub server_public_key: String,
    /// Card log records from the oldest stored one up to the receipt's entry, base64 each.
    pub log_records: Vec<String>,
    /// The same records decoded, for reading (checked against `log_records` by [`verify`]).
    #[serde(default)]
    pub entries: Vec<EntrySummary>,
}

/// One card log record, decoded for reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntrySummary {
    /// Sequence number.
    pub seq: u32,
    /// The event with its argument: `authorized`, `authorized(free_device)`,
    /// `denied(<reason name>)`, `consent(pin_verified=...)`, `installed(<FUMO result>)`, ...
    pub event: String,
    /// For a refusal: the reason's name from the card's table.
    pub deny_reason: Option<String>,
    /// An authorization through an unauthorized server under the free-device policy.
    pub free_device: bool,
    /// For a consent: whether the PIN was verified with it.
    pub consent_pin_verified: Option<bool>,
    /// Update id, hex.
    pub update_id: Option<String>,
    /// Server id the card logged.
    pub server: Option<String>,
    /// Software originator.
    pub originator: Option<String>,
    /// Release name.
    pub release: Option<String>,
    /// Release version.
    pub version: Option<String>,
    /// Device IMEI.
    pub imei: Option<String>,
    /// FUMO result of an install.
    pub fumo_result: Option<u16>,
    /// Fields the card marked as claims it did not verify (`server_id`, `update_id`, `imei`);
    /// absent for records written before cards marked them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_fields: Option<Vec<String>>,
}

impl EntrySummary {
    /// Decodes the summary of an entry.
    pub fn of(e: &LogEntry) -> Self {
        Self {
            seq: e.seq,
            event: crate::cardlog::event_text(e),
            deny_reason: match e.event {
                Event::Denied(r) => Some(crate::cardlog::deny_reason_name(r).to_owned()),
                _ => None,
            },
            free_device: e.free_device,
            consent_pin_verified: match e.event {
                Event::Consent { pin_verified } => Some(pin_verified),
                _ => None,
            },
            update_id: e.update_id.map(|u| hex::encode(u.as_bytes())),
            server: e.server.map(|s| s.as_str().to_owned()),
            originator: e.originator.map(|s| s.as_str().to_owned()),
            release: e.release.map(|s| s.as_str().to_owned()),
            version: e.version.map(|s| s.as_str().to_owned()),
            imei: e.imei.map(|i| i.as_str().to_owned()),
            fumo_result: match e.event {
                Event::Installed(f) => Some(f.0),
                _ => None,
            },
            unverified_fields: crate::cardlog::unverified_fields(e)
                .map(|f| f.into_iter().map(str::to_owned).collect()),
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Assembles the bundle of update `update_id_hex` from the database.
pub async fn bundle(state: &AppState, update_id_hex: &str) -> Result<Bundle> {
    let uid = hex::decode(update_id_hex)
        .map_err(|_| ServerError::BadRequest("update id must be hex".into()))?;
    let job = sqlx::query(
        "SELECT j.token, j.receipt, j.receipt_status, COALESCE(j.iccid, d.iccid) AS iccid \
         FROM jobs j LEFT JOIN devices d ON d.id = j.device_id WHERE j.update_id = $1",
    )
    .bind(uid.clone())
    .fetch_optional(state.db.pool())
    .await?
    .ok_or_else(|| ServerError::NotFound(format!("update {update_id_hex}")))?;
    if job.opt_text("receipt_status")?.as_deref() == Some(crate::dm::NOT_CARD_ATTESTED) {
        return Err(ServerError::Conflict(
            "this update went as plain FUMO without the card (campaign card: optional): its \
             result is not card-attested, so there is no proof to give"
                .into(),
        ));
    }
    let receipt = job.opt_bytes("receipt")?.ok_or_else(|| {
        ServerError::Conflict("no card receipt was recorded for this update".into())
    })?;
    if job.opt_text("receipt_status")?.as_deref() != Some("verified") {
        return Err(ServerError::Conflict(
            "the receipt of this update did not verify".into(),
        ));
    }
    let token = job.opt_bytes("token")?.unwrap_or_default();
    let iccid = job
        .opt_text("iccid")?
        .ok_or_else(|| ServerError::Conflict("no verified card for this device".into()))?;
    let card = sqlx::query("SELECT id, certificate, card_pub FROM cards WHERE iccid = $1")
        .bind(iccid.clone())
        .fetch_one(state.db.pool())
        .await?;
    let key = PublicKey::from_sec1(&card.bytes("card_pub")?)
        .map_err(|e| ServerError::internal("stored card key", e.to_string()))?;
    let r = Receipt::verify(&receipt, &key, &Limits::DEFAULT)
        .map_err(|e| ServerError::Verification(format!("stored receipt: {e}")))?;
    let n = i64::from(r.get().log_seq);
    let rows = sqlx::query(
        "SELECT seq, raw FROM card_log_entries WHERE card_id = $1 AND seq <= $2 ORDER BY seq",
    )
    .bind(card.i64("id")?)
    .bind(n)
    .fetch_all(state.db.pool())
    .await?;
    if rows.last().map(|r| r.i64("seq")).transpose()? != Some(n) {
        return Err(ServerError::Conflict(format!(
            "the card log is not yet read up to entry {n}; it is read in the device's next DM session"
        )));
    }
    let mut log_records = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        let raw = r.bytes("raw")?;
        let rec: [u8; LogEntry::RECORD_LEN] = raw.as_slice().try_into().map_err(|_| {
            ServerError::internal(
                "stored log record",
                format!("{} bytes, not {}", raw.len(), LogEntry::RECORD_LEN),
            )
        })?;
        let e =
            LogEntry::decode(&rec).map_err(|e| ServerError::internal("stored log record", e))?;
        entries.push(EntrySummary::of(&e));
        log_records.push(b64(&raw));
    }
    Ok(Bundle {
        format: FORMAT.into(),
        update_id: hex::encode(&uid),
        card_certificate: b64(&card.bytes("certificate")?),
        receipt: b64(&receipt),
        delivery_token: b64(&token),
        server_public_key: hex::encode(state.keys.server_pub.to_sec1()),
        log_records,
        entries,
    })
}

/// Why a bundle does not prove what it claims.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Not a bundle of this format.
    #[error("not a {FORMAT} bundle: {0}")]
    Format(String),
    /// A signed object did not verify.
    #[error("{what} does not verify: {why}")]
    Signature {
        /// Which object.
        what: &'static str,
        /// The check that failed.
        why: String,
    },
    /// The objects do not agree with each other.
    #[error("{0}")]
    Mismatch(String),
}

/// What a verified bundle proves.
#[derive(Debug, Clone, Serialize)]
pub struct Proven {
    /// The subscription (ICCID).
    pub iccid: String,
    /// Update id, hex.
    pub update_id: String,
    /// FUMO result code the card recorded.
    pub fumo_result: u16,
    /// Device IMEI bound in the token.
    pub imei: String,
    /// Manifest digest bound in the token, hex.
    pub manifest_digest: String,
    /// Events of this update in the card log, in order (authorized, consent, integrity_ok,
    /// installed ...), with their flags (`authorized(free_device)`, `denied(<reason>)`,
    /// `consent(pin_verified=true)`).
    pub events: Vec<String>,
    /// The same entries decoded (release, server, IMEI, flags).
    pub entries: Vec<EntrySummary>,
    /// The update went through an unauthorized server under the card's free-device policy.
    pub free_device: bool,
    /// The user consented to this update through an unauthorized server: `Some(pin_verified)`.
    pub consent: Option<bool>,
    /// Log sequence number of the receipt's entry.
    pub log_seq: u32,
}

fn unb64(what: &str, s: &str) -> std::result::Result<Vec<u8>, ProofError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| ProofError::Format(format!("{what}: {e}")))
}

/// Checks a bundle against the issuer key (offline).
pub fn verify(bundle: &Bundle, issuer: &PublicKey) -> std::result::Result<Proven, ProofError> {
    if bundle.format != FORMAT {
        return Err(ProofError::Format(format!("format is {:?}", bundle.format)));
    }
    let limits = Limits::DEFAULT;
    let sig = |what: &'static str| {
        move |e: simfota_wire::Error| ProofError::Signature {
            what,
            why: e.to_string(),
        }
    };
    let cert = CardCertificate::verify(
        &unb64("card_certificate", &bundle.card_certificate)?,
        issuer,
        &limits,
    )
    .map_err(sig("card certificate (issuer key)"))?
    .into_inner();
    let receipt = Receipt::verify(&unb64("receipt", &bundle.receipt)?, &cert.card_key, &limits)
        .map_err(sig("receipt (card key)"))?
        .into_inner();
    if receipt.iccid != cert.iccid {
        return Err(ProofError::Mismatch(
            "receipt and certificate name different cards".into(),
        ));
    }
    if hex::encode(receipt.update_id.as_bytes()) != bundle.update_id {
        return Err(ProofError::Mismatch("receipt is for another update".into()));
    }
    let server_key = hex::decode(&bundle.server_public_key)
        .ok()
        .and_then(|b| PublicKey::from_sec1(&b).ok())
        .ok_or_else(|| ProofError::Format("server_public_key".into()))?;
    let token = DeliveryToken::verify(
        &unb64("delivery_token", &bundle.delivery_token)?,
        &server_key,
        &limits,
    )
    .map_err(sig("delivery token (server key)"))?
    .into_inner();
    if token.cti.as_bytes() != receipt.update_id.as_bytes() || token.iccid != cert.iccid {
        return Err(ProofError::Mismatch(
            "token and receipt disagree (update id or ICCID)".into(),
        ));
    }
    // The records chain to each other and end at the chain head the card signed.
    let mut last: Option<(u32, Digest)> = None;
    let mut events = Vec::new();
    let mut entries = Vec::new();
    let mut decoded = Vec::with_capacity(bundle.log_records.len());
    for (i, s) in bundle.log_records.iter().enumerate() {
        let raw = unb64("log record", s)?;
        let rec: [u8; LogEntry::RECORD_LEN] = raw
            .as_slice()
            .try_into()
            .map_err(|_| ProofError::Format(format!("log record {i} has the wrong length")))?;
        let e = LogEntry::decode(&rec)
            .map_err(|e| ProofError::Format(format!("log record {i}: {e}")))?;
        if let Some((seq, h)) = last
            && (e.seq != seq + 1 || e.prev_hash != h)
        {
            return Err(ProofError::Mismatch(format!(
                "log record {} does not chain to {seq}",
                e.seq
            )));
        }
        let h = LogEntry::record_hash(&rec);
        last = Some((e.seq, h));
        // This update's entries, and user consents (R7) in the range.
        if e.update_id
            .is_some_and(|u| u.as_bytes() == receipt.update_id.as_bytes())
            || matches!(e.event, Event::Consent { .. })
        {
            events.push(crate::cardlog::event_text(&e));
            entries.push(EntrySummary::of(&e));
        }
        decoded.push(EntrySummary::of(&e));
    }
    if !bundle.entries.is_empty() && bundle.entries != decoded {
        return Err(ProofError::Mismatch(
            "the bundle's decoded entries differ from its log records".into(),
        ));
    }
    match last {
        Some((seq, h)) if seq == receipt.log_seq && h == receipt.chain_head => {}
        _ => {
            return Err(ProofError::Mismatch(
                "the log records do not end at the chain head the card signed in the receipt"
                    .into(),
            ));
        }
    }
    Ok(Proven {
        iccid: cert.iccid.as_str().to_owned(),
        update_id: bundle.update_id.clone(),
        fumo_result: receipt.result.0,
        imei: token.imei.as_str().to_owned(),
        manifest_digest: hex::encode(token.manifest_digest.0),
        free_device: entries.iter().any(|e| e.free_device),
        consent: entries
            .iter()
            .filter(|e| e.update_id.as_deref() == Some(bundle.update_id.as_str()))
            .find_map(|e| e.consent_pin_verified),
        events,
        entries,
        log_seq: receipt.log_seq,
    })
}
