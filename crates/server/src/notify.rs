//! Package 0 (OMA-TS-DM_Notification-V1_2 §6): tells a device to open a DM session.
//!
//! The notification is built by the protocol crate and sent as one UDP datagram to the
//! device's registered notification address (`devices.notify_addr`), the stand-in for an SMS
//! or WAP-push gateway. Its digest (§6.3) uses the server's credentials towards the device and
//! the nonce the device expects from the server (`devices.server_nonce`; empty until the device
//! gave one). Devices also poll, so a lost datagram only delays the session.

use rand_core::{OsRng, RngCore};
use simfota_syncml::auth::Nonce as DmNonce;
use simfota_syncml::notification::{Notification, UiMode};

use crate::AppState;
use crate::db::RowExt;
use crate::error::{Result, ServerError};

/// Sends package 0 to the device; returns the session id it announces.
pub async fn send(state: &AppState, imei: &str) -> Result<u16> {
    let row =
        sqlx::query("SELECT notify_addr, server_secret, server_nonce FROM devices WHERE imei = $1")
            .bind(imei.to_owned())
            .fetch_optional(state.db.pool())
            .await?
            .ok_or_else(|| ServerError::NotFound(format!("device {imei}")))?;
    let addr: std::net::SocketAddr = row
        .opt_text("notify_addr")?
        .ok_or_else(|| ServerError::Conflict(format!("device {imei} has no notification address")))?
        .parse()
        .map_err(|e| ServerError::internal("stored notification address", e))?;
    let mut id = [0u8; 2];
    OsRng.fill_bytes(&mut id);
    let session_id = u16::from_be_bytes(id);
    let n = Notification::new(
        session_id,
        state.config.server_id.clone(),
        UiMode::Background,
    );
    let nonce = DmNonce(row.opt_bytes("server_nonce")?.unwrap_or_default());
    let bytes = n
        .encode_with_secret(&row.text("server_secret")?, &nonce)
        .map_err(|e| ServerError::Config(format!("package 0: {e}")))?;
    let bind: std::net::SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| ServerError::io("cannot open a UDP socket", "", e))?;
    sock.send_to(&bytes, addr)
        .await
        .map_err(|e| ServerError::io("cannot send package 0", addr.to_string(), e))?;
    tracing::info!(%imei, %addr, session_id, "package 0 sent");
    Ok(session_id)
}

/// Notifies every device with a pending job of a running campaign that has an address
/// (best effort: failures are logged; devices poll anyway). Returns how many were sent.
pub async fn pending_devices(state: &AppState, campaign_id: i64) -> Result<usize> {
    // Every wave: waves are numbered from 0.
    released_since(state, campaign_id, i64::MIN).await
}

/// Records a job's result through the campaign engine and, when that released later waves,
/// sends package 0 to their devices that have an address (best effort, as at creation).
pub async fn record_result(
    state: &AppState,
    job_id: i64,
    result_code: u16,
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<crate::campaign::Job> {
    record(
        state,
        job_id,
        (result_code, true),
        receipt,
        receipt_status,
        detail,
    )
    .await
}

/// [`record_result`] for a success the card's receipt does not confirm: the job fails (see
/// [`crate::campaign::record_unconfirmed_result`]).
pub async fn record_unconfirmed_result(
    state: &AppState,
    job_id: i64,
    result_code: u16,
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<crate::campaign::Job> {
    record(
        state,
        job_id,
        (result_code, false),
        receipt,
        receipt_status,
        detail,
    )
    .await
}

async fn record(
    state: &AppState,
    job_id: i64,
    (result_code, confirmed): (u16, bool),
    receipt: Option<&[u8]>,
    receipt_status: &str,
    detail: Option<&str>,
) -> Result<crate::campaign::Job> {
    let mut conn = state.db.conn().await?;
    let succeeded = confirmed && simfota_syncml::FumoResult(result_code).is_success();
    let (job, released_after) = crate::campaign::record(
        &mut conn,
        job_id,
        (result_code, succeeded),
        receipt,
        receipt_status,
        detail,
    )
    .await?;
    if let Some(before) = released_after {
        released_since(state, job.campaign_id, before).await?;
    }
    Ok(job)
}

/// Notifies the pending devices of the waves released after `wave` (none if no wave moved).
pub(crate) async fn released_since(state: &AppState, campaign_id: i64, wave: i64) -> Result<usize> {
    let rows = sqlx::query(
        "SELECT d.imei FROM jobs j JOIN devices d ON d.id = j.device_id JOIN campaigns c ON c.id = j.campaign_id \
         WHERE j.campaign_id = $1 AND j.wave > $2 AND j.state = 'pending' AND c.state = 'running' \
         AND d.notify_addr IS NOT NULL",
    )
    .bind(campaign_id)
    .bind(wave)
    .fetch_all(state.db.pool())
    .await?;
    let mut sent = 0;
    for r in rows {
        let imei = r.text("imei")?;
        match send(state, &imei).await {
            Ok(_) => sent += 1,
            Err(e) => tracing::warn!(%imei, error = %e, "package 0 not sent"),
        }
    }
    Ok(sent)
}
