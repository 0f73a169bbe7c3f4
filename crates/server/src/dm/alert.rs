//! Generic Alert 1226 (DM Protocol 1.2 §8.7, FUMO 1.0 §8): a job's result code and the card's
//! receipt for it.

use simfota_syncml::FumoResult as DmFumoResult;
use simfota_syncml::model::Alert;
use simfota_wire::{Limits, PublicKey, Receipt};

use simfota_wire::contract::Node;

use super::answers::{item_text, item_uri, item_value};
use super::{AfterCommit, Step};
use crate::db::RowExt;
use crate::error::{Result, ServerError};

/// What the card's receipt for a result proved.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReceiptCheck {
    /// No receipt came with the result.
    Absent,
    /// Signed by the device's verified card, for this update and this result.
    Verified,
    /// Present but not proof of this result; says why.
    Invalid(String),
    /// The update went as plain FUMO, without the card (campaign `card: optional`): there is
    /// no card to attest the result, which is recorded as the device reports it.
    NotCardAttested,
}

impl ReceiptCheck {
    /// The job's `receipt_status` text.
    fn status(&self) -> String {
        match self {
            Self::Absent => "absent".into(),
            Self::Verified => "verified".into(),
            Self::Invalid(m) => format!("invalid: {m}"),
            Self::NotCardAttested => NOT_CARD_ATTESTED.into(),
        }
    }
}

/// The `receipt_status` of a result delivered without the card.
pub const NOT_CARD_ATTESTED: &str = "not card-attested";

impl Step<'_> {
    /// Records the result a device reports for one of its delivered jobs.
    pub(super) async fn on_generic_alert(&mut self, alert: &Alert) -> Result<()> {
        let Some(correlator) = alert.correlator.as_deref() else {
            return Ok(());
        };
        // The delivered job read with the account, when the alert is for it (the usual case:
        // a device has one delivered job); else the job the Correlator names. Recording
        // checks the job is still delivered in any case (`campaign::record`).
        let known = match &self.account.delivered {
            Some(d) if d.correlator == correlator => self.account.delivered.take(),
            _ => None,
        };
        let (job_id, update_id, token) = match known {
            Some(d) => (d.id, d.update_id, d.token),
            None => {
                let row = sqlx::query(
                    "SELECT id, state, update_id, token FROM jobs \
                     WHERE correlator = $1 AND device_id = $2",
                )
                .bind(correlator.to_owned())
                .bind(self.account.id)
                .fetch_optional(&mut *self.tx)
                .await?;
                let Some(row) = row else {
                    return super::record_event(
                        &mut *self.tx,
                        "unknown_correlator",
                        Some(self.account.id),
                        correlator,
                    )
                    .await;
                };
                if row.text("state")? != "delivered" {
                    // Reported again (the device repeats the alert until it sees our 200):
                    // already recorded.
                    return Ok(());
                }
                (
                    row.i64("id")?,
                    row.opt_bytes("update_id")?,
                    row.opt_bytes("token")?,
                )
            }
        };
        let mut code: Option<u16> = None;
        let mut receipt: Option<Vec<u8>> = None;
        for item in &alert.items {
            match Node::from_uri(item_uri(item)) {
                Some(Node::FumoDownloadAndUpdate) => {
                    // The result code, as the alert's data (FUMO 1.0 §8: Format int).
                    code = item_text(item).and_then(|t| t.parse().ok());
                }
                Some(Node::FumoReceipt) => receipt = item_value(Node::FumoReceipt, item),
                _ => {}
            }
        }
        let Some(code) = code else {
            tracing::warn!(job = job_id, "1226 alert without a result code");
            return Ok(());
        };
        let update_id = update_id.unwrap_or_default();
        // Delivered without a token: plain FUMO to a device without a usable card.
        let plain = token.is_none_or(|t| t.is_empty());
        let check = match &receipt {
            _ if plain => ReceiptCheck::NotCardAttested,
            None => ReceiptCheck::Absent,
            Some(r) => self.check_receipt(r, &update_id, code).await?,
        };
        if let ReceiptCheck::Invalid(m) = &check {
            self.receipt_refused(m).await?;
        }
        // A success claim for a device whose card the server knows must come with the card's
        // receipt (the card signs one for every result it is told, design §4 step 7): without
        // a verified one it is not believed, and the job fails rather than count for the
        // campaign.
        let success = DmFumoResult(code).is_success();
        let confirmed = !success
            || check == ReceiptCheck::Verified
            || check == ReceiptCheck::NotCardAttested
            || self.account.iccid.is_none();
        let status = check.status();
        let detail = if confirmed {
            None
        } else {
            if check == ReceiptCheck::Absent {
                self.receipt_refused(&format!(
                    "result {code} reported without the card's receipt"
                ))
                .await?;
            }
            Some(format!(
                "result {code} not confirmed: card receipt {status}"
            ))
        };
        match crate::campaign::record(
            &mut *self.tx,
            job_id,
            (code, confirmed && success),
            receipt.as_deref(),
            &status,
            detail.as_deref(),
        )
        .await
        {
            Ok((job, Some(before_wave))) => self.after.push(AfterCommit::NotifyReleased {
                campaign: job.campaign_id,
                before_wave,
            }),
            Ok((_, None)) => {}
            // No longer delivered: its result was recorded, or it ended, meanwhile.
            Err(ServerError::Conflict(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
        tracing::info!(job = job_id, result = code, receipt = %status, confirmed, "update result recorded");
        self.notes.result = Some((job_id, code));
        Ok(())
    }

    async fn receipt_refused(&mut self, why: &str) -> Result<()> {
        self.state
            .metrics
            .verification_failures
            .with_label_values(&["receipt"])
            .inc();
        super::record_event(&mut *self.tx, "receipt", Some(self.account.id), why).await
    }

    async fn check_receipt(
        &mut self,
        bytes: &[u8],
        update_id: &[u8],
        code: u16,
    ) -> Result<ReceiptCheck> {
        // The card as read with the account (or read now, for a card bound in this message):
        // only a card whose certificate verified has a key a receipt can be checked with.
        self.know_card().await?;
        let (Some(iccid), Some(Some(card))) = (self.account.iccid.as_deref(), &self.account.card)
        else {
            return Ok(ReceiptCheck::Invalid(
                "no verified card known for this device".into(),
            ));
        };
        Ok(
            match verify_receipt(card.key(), iccid, bytes, update_id, code) {
                Ok(()) => ReceiptCheck::Verified,
                Err(m) => ReceiptCheck::Invalid(m),
            },
        )
    }
}

/// The receipt checks once the card is known; `Err` says what failed.
fn verify_receipt(
    key: &PublicKey,
    iccid: &str,
    bytes: &[u8],
    update_id: &[u8],
    code: u16,
) -> std::result::Result<(), String> {
    let v = Receipt::verify(bytes, key, &Limits::DEFAULT)
        .map_err(|e| format!("receipt signature: {e}"))?;
    let r = v.get();
    if r.update_id.as_bytes() != update_id {
        return Err("receipt names another update".into());
    }
    if r.iccid.as_str() != iccid {
        return Err("receipt from another card".into());
    }
    if r.result.0 != code {
        return Err(format!(
            "receipt says result {}, alert says {code}",
            r.result.0
        ));
    }
    Ok(())
}
