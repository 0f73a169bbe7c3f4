//! The OMA DM endpoint (`POST /dm`): device sessions over crate `simfota-syncml`.
//!
//! Each HTTP request carries one SyncML message (XML or WBXML, by `Content-Type`; the reply
//! uses the same). The server keeps NO session state in memory: the `ServerSession` of the
//! protocol crate and this module's [`Flow`] are loaded from `dm_sessions`, advanced by the
//! message, and stored back with a compare-and-set on a version number, so consecutive
//! messages of one session may land on different replicas sharing one PostgreSQL.
//!
//! Device authentication (OMA DM Security 1.2 §5.3): `syncml:auth-md5`, or HMAC
//! (`x-syncml-hmac`) per device; wrong credentials get status 401 with a challenge carrying a
//! fresh nonce, which is persisted with the device (`devices.device_nonce`). Unknown devices
//! follow the enrolment rule ([`crate::config::Enrolment`]).
//!
//! What a session does, once the device is authenticated (issue 6 item 7):
//! 1. Get `./DevDetail/FwV` (firmware version) and `./SIMFOTA/Card/Info` (ICCID, certificate:
//!    the card is registered when its certificate verifies under an issuer key);
//! 2. with a pending job: Get `./SIMFOTA/Card/Nonce`; on the answer, issue the CWT delivery
//!    token (server key; bound to card nonce, ICCID, IMEI, manifest digest), Replace
//!    `./FUMO/fw/Ext/DeliveryToken` and `./FUMO/fw/DownloadAndUpdate/PkgURL`, Exec
//!    `./FUMO/fw/DownloadAndUpdate` with the job's Correlator; `202` marks the job delivered;
//! 3. a Generic Alert 1226 with a known Correlator records the FUMO result code and the card
//!    receipt (verified with the card key: update id, ICCID and result must match).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use simfota_syncml::auth::{AuthScheme, Credentials, HMAC_HEADER, Nonce as DmNonce};
use simfota_syncml::model::Item;
use simfota_syncml::session::{
    CommandHandle, ServerConfig as DmConfig, ServerEvent, ServerSession,
};
use simfota_syncml::tree::NodeValue;
use simfota_syncml::{
    AlertCode, Encoding, FumoResult as DmFumoResult, Limits as DmLimits, NodeUri,
    StatusCode as DmStatus,
};
use simfota_wire::{
    DeliveryToken, Digest, Iccid, Imei, Limits, Nonce, PublicKey, Receipt, ServerId, UpdateId,
};

use crate::AppState;
use crate::campaign;
use crate::db::{RowExt, now_ms};
use crate::error::{Result, ServerError};

/// FUMO node of the DownloadAndUpdate result (FUMO 1.0 §5.3, DM-CONTRACT.md).
const DOWNLOAD_AND_UPDATE: &str = "./FUMO/fw/DownloadAndUpdate";
/// Lifetime of a delivery token: long enough for a slow download before authorization.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// This module's per-session progress, stored next to the protocol session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Flow {
    /// The first authenticated message was handled (session counted, Gets queued).
    started: bool,
    fwv: Option<CommandHandle>,
    card_info: Option<CommandHandle>,
    nonce: Option<CommandHandle>,
    exec: Option<CommandHandle>,
    /// The job being delivered in this session.
    job: Option<i64>,
    /// Update id and token issued in this session for `job`.
    update_id: Option<Vec<u8>>,
    token: Option<Vec<u8>>,
    /// Card log: the Get of LogResponse, the nonce Get for the acknowledgement, the Replace
    /// of LogAck and the sequence number it acknowledges.
    log_response: Option<CommandHandle>,
    ack_nonce: Option<CommandHandle>,
    ack: Option<CommandHandle>,
    ack_up_to: Option<u32>,
    /// Issuer admin relay: the queued command sent and the Get of its result.
    admin: Option<i64>,
    admin_result: Option<CommandHandle>,
    /// The card's authorized-server list, policy and originator list.
    servers: Option<CommandHandle>,
    policy: Option<CommandHandle>,
    originators: Option<CommandHandle>,
    /// Card log paging: export pages accepted in this session, whether the card holds more
    /// that this session still reads, and the nonce Get that serves the next page's request.
    log_pages: u32,
    log_more: bool,
    page_nonce: Option<CommandHandle>,
}

#[derive(Serialize, Deserialize)]
struct Stored {
    session: ServerSession,
    flow: Flow,
}

/// A registered device's DM account.
struct Account {
    id: i64,
    imei: String,
    username: String,
    password: String,
    server_password: String,
    auth: AuthScheme,
    device_nonce: Option<Vec<u8>>,
    server_nonce: Option<Vec<u8>>,
    iccid: Option<String>,
}

fn fresh_nonce() -> DmNonce {
    let mut n = vec![0u8; 16];
    OsRng.fill_bytes(&mut n);
    DmNonce(n)
}

fn dm_limits() -> DmLimits {
    DmLimits::default()
}

fn uri(s: &str) -> Result<NodeUri> {
    NodeUri::parse(s).map_err(|e| ServerError::internal("node URI", format!("{s}: {e}")))
}

fn reply(out: simfota_syncml::session::Outgoing) -> Response {
    let mut resp = (StatusCode::OK, out.body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(out.content_type),
    );
    if let Some(h) = out.hmac
        && let Ok(v) = HeaderValue::from_str(&h)
    {
        resp.headers_mut().insert(HMAC_HEADER, v);
    }
    resp
}

fn session_err(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        format!("SyncML message refused: {e}\n"),
    )
        .into_response()
}

/// `POST /dm`.
pub async fn handle(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match handle_inner(&state, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle_inner(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response> {
    state.metrics.dm_messages.inc();
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(encoding) = Encoding::from_content_type(ct) else {
        return Ok((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/vnd.syncml.dm+xml or application/vnd.syncml.dm+wbxml\n",
        )
            .into_response());
    };
    let hmac = headers
        .get(HMAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limits = dm_limits();
    let hdr = match encoding.decode_header(body, &limits) {
        Ok(h) => h,
        // Without a readable SyncHdr there is nothing a SyncML Status could refer to.
        Err(e) => return Ok(session_err(e)),
    };
    let dev_id = hdr.source.uri.clone();
    let session_id = hdr.session_id.clone();
    let account = match lookup(state, &dev_id).await? {
        Some(a) => a,
        None => match enrol_candidate(state, &dev_id, hdr.source.name.as_deref()).await? {
            Some(a) => a,
            None => return refuse_unknown(state, encoding, &dev_id, body, hmac.as_deref()),
        },
    };

    let row = if account.id > 0 {
        sqlx::query(
            "SELECT state, version FROM dm_sessions WHERE device_id = $1 AND session_id = $2",
        )
        .bind(account.id)
        .bind(session_id.clone())
        .fetch_optional(state.db.pool())
        .await?
    } else {
        None
    };
    let (mut stored, version) = match &row {
        Some(r) => {
            let s: Stored = serde_json::from_slice(&r.bytes("state")?)
                .map_err(|e| ServerError::internal("stored DM session", e))?;
            (s, Some(r.i64("version")?))
        }
        None => (
            Stored {
                session: ServerSession::new(
                    dm_config(state, &account, encoding),
                    account
                        .device_nonce
                        .clone()
                        .map_or_else(fresh_nonce, DmNonce),
                    DmNonce(account.server_nonce.clone().unwrap_or_default()),
                ),
                flow: Flow::default(),
            },
            None,
        ),
    };
    let events = match stored.session.receive(body, hmac.as_deref(), fresh_nonce()) {
        Ok(ev) => ev,
        Err(e) => return Ok(session_err(e)),
    };
    let mut account = account;
    for ev in events {
        on_event(state, &mut account, &mut stored, ev).await?;
    }
    learn_server_nonce(state, &mut account, &stored.session).await?;
    let out = match stored.session.reply() {
        Ok(o) => o,
        Err(e) => return Ok(session_err(e)),
    };
    if account.id > 0 {
        save(state, account.id, &session_id, &stored, version).await?;
    }
    Ok(reply(out))
}

/// Persists the nonce the device expects our credentials with once its challenge changed it
/// (DM Security 1.2 §5.4): the next session starts with it, and package 0's digest uses it
/// (DM Notification 1.2 §6.3).
async fn learn_server_nonce(
    state: &AppState,
    account: &mut Account,
    session: &ServerSession,
) -> Result<()> {
    let now = &session.server_nonce().0;
    if account.id <= 0 || account.server_nonce.as_deref().unwrap_or_default() == now.as_slice() {
        return Ok(());
    }
    sqlx::query("UPDATE devices SET server_nonce = $1 WHERE id = $2")
        .bind(now.clone())
        .bind(account.id)
        .execute(state.db.pool())
        .await?;
    account.server_nonce = Some(now.clone());
    Ok(())
}

fn dm_config(state: &AppState, a: &Account, encoding: Encoding) -> DmConfig {
    DmConfig {
        server_id: state.config.server_id.clone(),
        server_uri: format!("{}/dm", state.base_url),
        resp_uri: None,
        client_credentials: Credentials::new(a.username.clone(), a.password.clone()),
        server_credentials: Credentials::new(
            state.config.server_id.clone(),
            a.server_password.clone(),
        ),
        auth: a.auth,
        encoding,
        limits: dm_limits(),
    }
}

/// The IMEI in a DevId `IMEI:<15 digits>` (DM StdObj 1.2 §5.3.1).
fn imei_of(dev_id: &str) -> Option<&str> {
    dev_id
        .strip_prefix("IMEI:")
        .filter(|i| Imei::parse(i).is_ok())
}

/// The scheme a device account is stored with (`devices.auth_scheme`, written by the registry
/// as `md5` or `hmac`); `None` for anything else.
fn auth_scheme(stored: &str) -> Option<AuthScheme> {
    match stored {
        "md5" => Some(AuthScheme::Md5),
        "hmac" => Some(AuthScheme::Hmac),
        _ => None,
    }
}

async fn lookup(state: &AppState, dev_id: &str) -> Result<Option<Account>> {
    let Some(imei) = imei_of(dev_id) else {
        return Ok(None);
    };
    let row = sqlx::query(
        "SELECT id, imei, dm_username, dm_password, server_password, auth_scheme, device_nonce, \
         server_nonce, iccid FROM devices WHERE imei = $1",
    )
    .bind(imei.to_owned())
    .fetch_optional(state.db.pool())
    .await?;
    let Some(r) = row else { return Ok(None) };
    let stored = r.text("auth_scheme")?;
    let Some(auth) = auth_scheme(&stored) else {
        // Guessing a scheme would authenticate the device some other way than the operator
        // registered it; the account is unusable until its scheme is fixed.
        tracing::error!(%imei, scheme = %stored, "stored auth scheme is neither md5 nor hmac: DM session refused");
        return Err(ServerError::internal(
            "stored auth scheme",
            format!("device {imei}: {stored:?} is neither md5 nor hmac; session refused"),
        ));
    };
    Ok(Some(Account {
        id: r.i64("id")?,
        imei: r.text("imei")?,
        username: r.text("dm_username")?,
        password: r.text("dm_password")?,
        server_password: r.text("server_password")?,
        auth,
        device_nonce: r.opt_bytes("device_nonce")?,
        server_nonce: r.opt_bytes("server_nonce")?,
        iccid: r.opt_text("iccid")?,
    }))
}

/// How long the nonce a not yet enrolled device was challenged with stays valid.
const ENROLMENT_NONCE_MS: i64 = 3600 * 1000;

/// Under `shared-secret` enrolment, an unknown device with a valid IMEI DevId may authenticate
/// with the enrolment password (user name: its `Source/LocName`, else the DevId); it is stored
/// only once that authentication succeeded (id 0 until then). The nonce it was challenged
/// with lives in `enrolment_nonces` meanwhile (DM Security 1.2 §5.4: the retry's digest uses
/// it, and the retry may reach another replica).
async fn enrol_candidate(
    state: &AppState,
    dev_id: &str,
    loc_name: Option<&str>,
) -> Result<Option<Account>> {
    if state.config.enrolment != crate::config::Enrolment::SharedSecret {
        return Ok(None);
    }
    let (Some(imei), Some(pw)) = (imei_of(dev_id), state.config.enrolment_password.clone()) else {
        return Ok(None);
    };
    let nonce =
        sqlx::query("SELECT nonce FROM enrolment_nonces WHERE dev_id = $1 AND created_ms > $2")
            .bind(dev_id.to_owned())
            .bind(now_ms() - ENROLMENT_NONCE_MS)
            .fetch_optional(state.db.pool())
            .await?
            .map(|r| r.bytes("nonce"))
            .transpose()?;
    Ok(Some(Account {
        id: 0,
        imei: imei.to_owned(),
        username: loc_name.unwrap_or(dev_id).to_owned(),
        password: pw.clone(),
        server_password: pw,
        auth: AuthScheme::Md5,
        device_nonce: nonce,
        server_nonce: None,
        iccid: None,
    }))
}

/// An unknown device under `preregistered`: the protocol session runs with credentials no
/// device can know, so the device gets 401 with a challenge; the attempt is recorded.
fn refuse_unknown(
    state: &AppState,
    encoding: Encoding,
    dev_id: &str,
    body: &[u8],
    hmac: Option<&str>,
) -> Result<Response> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let config = DmConfig {
        server_id: state.config.server_id.clone(),
        server_uri: format!("{}/dm", state.base_url),
        resp_uri: None,
        client_credentials: Credentials::new(dev_id.to_owned(), hex::encode(secret)),
        server_credentials: Credentials::new(state.config.server_id.clone(), hex::encode(secret)),
        auth: AuthScheme::Md5,
        encoding,
        limits: dm_limits(),
    };
    let mut s = ServerSession::new(config, fresh_nonce(), fresh_nonce());
    if let Err(e) = s.receive(body, hmac, fresh_nonce()) {
        return Ok(session_err(e));
    }
    state
        .metrics
        .verification_failures
        .with_label_values(&["device_auth"])
        .inc();
    let db = state.db.clone();
    let detail = format!(
        "unknown device {}",
        dev_id.chars().take(64).collect::<String>()
    );
    tokio::spawn(async move {
        let _ = record_event(&db, "unknown_device", None, &detail).await;
    });
    match s.reply() {
        Ok(out) => Ok(reply(out)),
        Err(e) => Ok(session_err(e)),
    }
}

/// Appends a security event (refused device, forged export, bad receipt, ...).
pub async fn record_event(
    db: &crate::db::Db,
    kind: &str,
    device_id: Option<i64>,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO security_events (kind, device_id, detail, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(kind.to_owned())
    .bind(device_id)
    .bind(detail.to_owned())
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(())
}

async fn save(
    state: &AppState,
    device_id: i64,
    session_id: &str,
    s: &Stored,
    version: Option<i64>,
) -> Result<()> {
    let now = now_ms();
    if s.session.is_over() {
        sqlx::query("DELETE FROM dm_sessions WHERE device_id = $1 AND session_id = $2")
            .bind(device_id)
            .bind(session_id.to_owned())
            .execute(state.db.pool())
            .await?;
        return Ok(());
    }
    let bytes = serde_json::to_vec(s).map_err(|e| ServerError::internal("DM session", e))?;
    let done = match version {
        Some(v) => sqlx::query(
            "UPDATE dm_sessions SET state = $1, version = $2, updated_ms = $3 \
             WHERE device_id = $4 AND session_id = $5 AND version = $6",
        )
        .bind(bytes)
        .bind(v + 1)
        .bind(now)
        .bind(device_id)
        .bind(session_id.to_owned())
        .bind(v)
        .execute(state.db.pool())
        .await?
        .rows_affected(),
        None => sqlx::query(
            "INSERT INTO dm_sessions (device_id, session_id, next_msg_id, version, state, updated_ms) \
             VALUES ($1, $2, 0, 1, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(device_id)
        .bind(session_id.to_owned())
        .bind(bytes)
        .bind(now)
        .execute(state.db.pool())
        .await?
        .rows_affected(),
    };
    if done != 1 {
        // Another replica advanced this session meanwhile (a duplicated request): ours loses.
        return Err(ServerError::Contended {
            what: format!("DM session {session_id}"),
        });
    }
    // Sessions abandoned by their device are dropped after a day.
    sqlx::query("DELETE FROM dm_sessions WHERE updated_ms < $1")
        .bind(now - 24 * 3600 * 1000)
        .execute(state.db.pool())
        .await?;
    Ok(())
}

/// The bytes of an item's data: base64 for `b64` (and for text that decodes as such when no
/// format is given), raw otherwise.
fn item_bytes(item: &Item) -> Option<Vec<u8>> {
    let data = item.data.as_ref()?;
    let format = item.meta.as_ref().and_then(|m| m.format.as_deref());
    match format {
        Some("bin") => Some(data.0.clone()),
        _ => {
            let text: String = String::from_utf8_lossy(&data.0)
                .split_whitespace()
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .or_else(|| {
                    if format == Some("b64") {
                        None
                    } else {
                        Some(data.0.clone())
                    }
                })
        }
    }
}

fn b64_value(bytes: &[u8]) -> NodeValue {
    NodeValue {
        format: "b64".into(),
        mime_type: Some("application/cose".into()),
        data: base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into_bytes(),
    }
}

fn item_text(item: &Item) -> Option<String> {
    item.data
        .as_ref()
        .and_then(|d| std::str::from_utf8(&d.0).ok())
        .map(|s| s.trim().to_owned())
}

fn item_uri(item: &Item) -> &str {
    item.source
        .as_ref()
        .or(item.target.as_ref())
        .map_or("", |l| l.uri.as_str())
}

async fn on_event(
    state: &AppState,
    account: &mut Account,
    stored: &mut Stored,
    ev: ServerEvent,
) -> Result<()> {
    match ev {
        ServerEvent::Authenticated { .. } => {
            if account.id == 0 {
                let created = crate::registry::create_device(
                    &state.db,
                    &crate::registry::NewDevice {
                        imei: account.imei.clone(),
                        username: account.username.clone(),
                        password: account.password.clone(),
                        server_password: account.server_password.clone(),
                        auth: "md5".into(),
                        model: None,
                        manufacturer: None,
                        fw_version: None,
                        notify_addr: None,
                        groups: Vec::new(),
                    },
                    "enrolment",
                )
                .await?;
                account.id = created.id;
                let dev_id = format!("IMEI:{}", account.imei);
                sqlx::query("UPDATE devices SET device_nonce = $1 WHERE id = $2")
                    .bind(account.device_nonce.clone())
                    .bind(account.id)
                    .execute(state.db.pool())
                    .await?;
                sqlx::query("DELETE FROM enrolment_nonces WHERE dev_id = $1")
                    .bind(dev_id)
                    .execute(state.db.pool())
                    .await?;
                tracing::info!(imei = %account.imei, "device enrolled");
            }
            sqlx::query("UPDATE devices SET last_seen_ms = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(account.id)
                .execute(state.db.pool())
                .await?;
            if !stored.flow.started {
                stored.flow.started = true;
                state.metrics.dm_sessions.inc();
                let s = &mut stored.session;
                stored.flow.fwv = Some(s.get(&uri("./DevDetail/FwV")?));
                stored.flow.card_info = Some(s.get(&uri("./SIMFOTA/Card/Info")?));
                stored.flow.servers = Some(s.get(&uri("./SIMFOTA/Card/Servers")?));
                stored.flow.policy = Some(s.get(&uri("./SIMFOTA/Card/Policy")?));
                stored.flow.originators = Some(s.get(&uri("./SIMFOTA/Card/Originators")?));
                // One card nonce per session: it serves the delivery token when a job is
                // pending, else the log-read request (the card keeps one nonce at a time).
                if let Some(job) = campaign::next_job_for_device(&state.db, account.id).await? {
                    stored.flow.job = Some(job.id);
                }
                stored.flow.nonce = Some(s.get(&uri("./SIMFOTA/Card/Nonce")?));
                // Issuer admin relay: the next queued command for the card in this device.
                if let Some(iccid) = account.iccid.clone()
                    && let Some((id, cmd)) = crate::admin::next_for_card(state, &iccid).await?
                {
                    let s = &mut stored.session;
                    s.replace(&uri("./SIMFOTA/Card/Admin")?, &b64_value(&cmd));
                    stored.flow.admin = Some(id);
                    stored.flow.admin_result = Some(s.get(&uri("./SIMFOTA/Card/AdminResult")?));
                }
            }
        }
        ServerEvent::AuthenticationRejected(code) => {
            state
                .metrics
                .verification_failures
                .with_label_values(&["device_auth"])
                .inc();
            let id = (account.id > 0).then_some(account.id);
            record_event(
                &state.db,
                "device_auth",
                id,
                &format!("credentials refused ({})", code.value()),
            )
            .await?;
        }
        ServerEvent::NextClientNonce(n) => {
            account.device_nonce = Some(n.0.clone());
            if account.id > 0 {
                sqlx::query("UPDATE devices SET device_nonce = $1 WHERE id = $2")
                    .bind(n.0)
                    .bind(account.id)
                    .execute(state.db.pool())
                    .await?;
            } else {
                // A device not enrolled yet: keep the challenge for its retry; stale ones go.
                let now = now_ms();
                sqlx::query("DELETE FROM enrolment_nonces WHERE created_ms < $1")
                    .bind(now - ENROLMENT_NONCE_MS)
                    .execute(state.db.pool())
                    .await?;
                sqlx::query(
                    "INSERT INTO enrolment_nonces (dev_id, nonce, created_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (dev_id) DO UPDATE SET nonce = $2, created_ms = $3",
                )
                .bind(format!("IMEI:{}", account.imei))
                .bind(n.0)
                .bind(now)
                .execute(state.db.pool())
                .await?;
            }
        }
        ServerEvent::DeviceData(items) => {
            for item in &items {
                let text = item_text(item);
                let col = match item_uri(item) {
                    "./DevInfo/Mod" => "model",
                    "./DevInfo/Man" => "manufacturer",
                    _ => continue,
                };
                if account.id > 0
                    && let Some(t) = text
                {
                    let sql = if col == "model" {
                        "UPDATE devices SET model = $1 WHERE id = $2"
                    } else {
                        "UPDATE devices SET manufacturer = $1 WHERE id = $2"
                    };
                    sqlx::query(sql)
                        .bind(t)
                        .bind(account.id)
                        .execute(state.db.pool())
                        .await?;
                }
            }
        }
        ServerEvent::Results {
            handle: Some(h),
            items,
        } => {
            let Some(item) = items.first() else {
                return Ok(());
            };
            if Some(h) == stored.flow.servers
                || Some(h) == stored.flow.policy
                || Some(h) == stored.flow.originators
            {
                if let (Some(bytes), Some(iccid)) = (item_bytes(item), account.iccid.clone()) {
                    let what = if Some(h) == stored.flow.servers {
                        crate::cardinfo::Relayed::Servers
                    } else if Some(h) == stored.flow.policy {
                        crate::cardinfo::Relayed::Policy
                    } else {
                        crate::cardinfo::Relayed::Originators
                    };
                    crate::cardinfo::store(state, &iccid, what, &bytes).await?;
                }
            } else if Some(h) == stored.flow.admin_result {
                if let (Some(id), Some(answer)) = (stored.flow.admin, item_text(item)) {
                    crate::admin::record(state, id, &answer).await?;
                }
            } else if Some(h) == stored.flow.fwv {
                if let Some(fw) = item_text(item) {
                    sqlx::query("UPDATE devices SET fw_version = $1 WHERE id = $2")
                        .bind(fw)
                        .bind(account.id)
                        .execute(state.db.pool())
                        .await?;
                }
            } else if Some(h) == stored.flow.card_info {
                if let Some(bytes) = item_bytes(item) {
                    on_card_info(state, account, &bytes).await?;
                }
            } else if Some(h) == stored.flow.nonce
                || Some(h) == stored.flow.ack_nonce
                || Some(h) == stored.flow.page_nonce
            {
                let Some(n) =
                    item_bytes(item).and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
                else {
                    tracing::warn!(imei = %account.imei, "card nonce missing or not 16 bytes");
                    return Ok(());
                };
                if Some(h) == stored.flow.ack_nonce {
                    if let Some(up_to) = stored.flow.ack_up_to {
                        let ack = crate::cardlog::ack(state, Nonce(n), up_to)?;
                        stored.flow.ack = Some(
                            stored
                                .session
                                .replace(&uri("./SIMFOTA/Card/LogAck")?, &b64_value(&ack)),
                        );
                        if stored.flow.log_more {
                            // The next page needs its own nonce; Got after the acknowledgement
                            // in the same package (the device runs commands in order, SyncML
                            // RepPro 1.2 §6.1.11), so the ack consumes the previous one first.
                            stored.flow.page_nonce =
                                Some(stored.session.get(&uri("./SIMFOTA/Card/Nonce")?));
                        }
                    }
                } else if Some(h) == stored.flow.nonce && stored.flow.job.is_some() {
                    deliver(state, account, stored, Nonce(n)).await?;
                } else {
                    request_log_page(state, account, stored, Nonce(n)).await?;
                }
            } else if Some(h) == stored.flow.log_response {
                let (Some(bytes), Some(iccid)) = (item_bytes(item), account.iccid.clone()) else {
                    return Ok(());
                };
                stored.flow.log_more = false;
                if let crate::cardlog::Outcome::Accepted {
                    up_to: Some(up_to),
                    more,
                    ..
                } = crate::cardlog::on_export(state, &iccid, account.id, &bytes).await?
                {
                    stored.flow.log_pages += 1;
                    stored.flow.log_more =
                        more && stored.flow.log_pages < crate::cardlog::MAX_PAGES_PER_SESSION;
                    if more && !stored.flow.log_more {
                        tracing::info!(
                            %iccid,
                            pages = stored.flow.log_pages,
                            "card log: page bound of this session reached; the rest is read next session"
                        );
                    }
                    stored.flow.ack_up_to = Some(up_to);
                    stored.flow.ack_nonce = Some(stored.session.get(&uri("./SIMFOTA/Card/Nonce")?));
                }
            }
        }
        ServerEvent::Status { handle, code, .. } => {
            if Some(handle) == stored.flow.ack
                && code == DmStatus::OK
                && let (Some(iccid), Some(up_to)) = (account.iccid.clone(), stored.flow.ack_up_to)
            {
                crate::cardlog::acked(state, &iccid, up_to).await?;
            }
            if Some(handle) == stored.flow.exec
                && let (Some(job), Some(uid), Some(token)) =
                    (stored.flow.job, &stored.flow.update_id, &stored.flow.token)
            {
                // DM Protocol 1.2 §10: 202 accepted (the FUMO operation runs and reports later by
                // Generic Alert), or 200 when the device finished it synchronously.
                if code == DmStatus::ACCEPTED_FOR_PROCESSING || code == DmStatus::OK {
                    match campaign::mark_delivered(&state.db, job, uid, token).await {
                        Ok(()) => tracing::info!(job, imei = %account.imei, "update delivered"),
                        Err(ServerError::Conflict(m)) => {
                            tracing::warn!(job, %m, "delivery not recorded")
                        }
                        Err(e) => return Err(e),
                    }
                } else {
                    tracing::warn!(job, code = code.value(), "device refused the FUMO Exec");
                }
            }
        }
        ServerEvent::ClientAlert(alert) if alert.code == AlertCode::GENERIC_ALERT => {
            on_generic_alert(state, account, &alert).await?;
        }
        _ => {}
    }
    Ok(())
}

/// Card Info (docs/dm-tree.md "Card answers"): `{1: ICCID, 2: IMSI, 3: card key, 4: certificate, ...}`.
async fn on_card_info(state: &AppState, account: &mut Account, bytes: &[u8]) -> Result<()> {
    let mut cert: Option<Vec<u8>> = None;
    let mut iccid: Option<String> = None;
    let mut d = minicbor::Decoder::new(bytes);
    let parsed: std::result::Result<(), minicbor::decode::Error> = (|| {
        let n = d.map()?.unwrap_or(0);
        for _ in 0..n.min(32) {
            match d.u32()? {
                1 => iccid = Some(d.str()?.to_owned()),
                4 => cert = Some(d.bytes()?.to_vec()),
                _ => d.skip()?,
            }
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        tracing::warn!(imei = %account.imei, error = %e, "card info not decodable");
        return Ok(());
    }
    // The ICCID the server binds tokens to is the one in a certificate that verified under an
    // issuer key in this session. A bare ICCID is only the device's word: it binds nothing
    // (else a device could take over another device's verified card, and tokens for that card)
    // and is recorded as an unverified claim; the device keeps whatever binding it had.
    let Some(cert) = cert else {
        if let Some(claimed) = iccid {
            // Device-chosen text: shown only once it parses as an ICCID.
            let claimed = Iccid::parse(&claimed).map_or_else(
                |_| "(not a valid ICCID)".to_owned(),
                |i| i.as_str().to_owned(),
            );
            tracing::warn!(imei = %account.imei, iccid = %claimed, "card info claims an ICCID without a certificate; not bound");
            record_event(
                &state.db,
                "card_claim",
                Some(account.id),
                &format!("ICCID {claimed} claimed without a card certificate; not bound"),
            )
            .await?;
        }
        return Ok(());
    };
    let card = match crate::registry::register_card(&state.db, &state.keys.issuers, &cert).await {
        Ok(card) => card,
        Err(ServerError::Verification(m)) => {
            state
                .metrics
                .verification_failures
                .with_label_values(&["certificate"])
                .inc();
            record_event(&state.db, "card_certificate", Some(account.id), &m).await?;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if iccid.as_ref().is_some_and(|i| *i != card.iccid) {
        tracing::warn!(imei = %account.imei, "card info ICCID differs from its certificate; the certificate's is bound");
    }
    sqlx::query("UPDATE devices SET iccid = $1 WHERE id = $2")
        .bind(card.iccid.clone())
        .bind(account.id)
        .execute(state.db.pool())
        .await?;
    account.iccid = Some(card.iccid);
    Ok(())
}

/// Card subtree: Replace LogRequest (signed, answering `nonce`) then Get LogResponse in one
/// package (the device processes them in order, docs/dm-tree.md).
async fn request_log_page(
    state: &AppState,
    account: &Account,
    stored: &mut Stored,
    nonce: Nonce,
) -> Result<()> {
    let Some(iccid) = account.iccid.clone() else {
        return Ok(());
    };
    let Some(req) = crate::cardlog::request(state, &iccid, account.id, nonce).await? else {
        return Ok(());
    };
    stored
        .session
        .replace(&uri("./SIMFOTA/Card/LogRequest")?, &b64_value(&req));
    stored.flow.log_response = Some(stored.session.get(&uri("./SIMFOTA/Card/LogResponse")?));
    Ok(())
}

/// Issues the delivery token for the session's job and queues the FUMO commands.
async fn deliver(
    state: &AppState,
    account: &Account,
    stored: &mut Stored,
    nonce: Nonce,
) -> Result<()> {
    let Some(job_id) = stored.flow.job else {
        return Ok(());
    };
    let Some(iccid) = account.iccid.clone() else {
        tracing::warn!(imei = %account.imei, job = job_id, "no verified card for this device: update not sent");
        return Ok(());
    };
    let job = campaign::job(&state.db, job_id).await?;
    let c = campaign::get(&state.db, job.campaign_id).await?;
    let pkg = sqlx::query("SELECT manifest_digest FROM packages WHERE id = $1")
        .bind(c.package_id)
        .fetch_one(state.db.pool())
        .await?;
    let md: [u8; 32] = pkg
        .bytes("manifest_digest")?
        .try_into()
        .map_err(|d: Vec<u8>| {
            ServerError::internal(
                "stored manifest digest",
                format!("{} bytes, not 32", d.len()),
            )
        })?;
    let mut cti = [0u8; 16];
    OsRng.fill_bytes(&mut cti);
    let iat = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let bad = ServerError::signing("delivery token");
    let token = DeliveryToken {
        iss: ServerId::new(&state.config.server_id).map_err(bad)?,
        iat,
        exp: iat + TOKEN_LIFETIME_SECS,
        cti: UpdateId::new(&cti).map_err(bad)?,
        nonce,
        iccid: Iccid::parse(&iccid).map_err(bad)?,
        imei: Imei::parse(&account.imei).map_err(bad)?,
        manifest_digest: Digest(md),
        nbf: None,
        charging_ref: None,
    };
    let bytes = token.to_vec(&state.keys.server).map_err(bad)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let s = &mut stored.session;
    s.replace(
        &uri("./FUMO/fw/Ext/DeliveryToken")?,
        &NodeValue {
            format: "b64".into(),
            mime_type: Some("application/cwt".into()),
            data: b64.into_bytes(),
        },
    );
    let url = format!("{}/packages/{}/envelope", state.base_url, c.package_id);
    s.replace(
        &uri("./FUMO/fw/DownloadAndUpdate/PkgURL")?,
        &NodeValue::chr(url),
    );
    stored.flow.exec = Some(s.exec(&uri(DOWNLOAD_AND_UPDATE)?, Some(&job.correlator), None));
    stored.flow.update_id = Some(cti.to_vec());
    stored.flow.token = Some(bytes);
    Ok(())
}

/// Generic Alert 1226 (DM Protocol 1.2 §8.7, FUMO 1.0 §8): result code and card receipt.
async fn on_generic_alert(
    state: &AppState,
    account: &Account,
    alert: &simfota_syncml::model::Alert,
) -> Result<()> {
    let Some(correlator) = alert.correlator.as_deref() else {
        return Ok(());
    };
    let row = sqlx::query(
        "SELECT id, state, update_id FROM jobs WHERE correlator = $1 AND device_id = $2",
    )
    .bind(correlator.to_owned())
    .bind(account.id)
    .fetch_optional(state.db.pool())
    .await?;
    let Some(row) = row else {
        record_event(
            &state.db,
            "unknown_correlator",
            Some(account.id),
            correlator,
        )
        .await?;
        return Ok(());
    };
    let job_id = row.i64("id")?;
    if row.text("state")? != "delivered" {
        // Reported again (the device repeats the alert until it sees our 200): already recorded.
        return Ok(());
    }
    let mut code: Option<u16> = None;
    let mut receipt: Option<Vec<u8>> = None;
    for item in &alert.items {
        let u = item_uri(item);
        if u == DOWNLOAD_AND_UPDATE {
            code = item_text(item).and_then(|t| t.parse().ok());
        } else if u == "./FUMO/fw/Ext/Receipt" {
            receipt = item_bytes(item);
        }
    }
    let Some(code) = code else {
        tracing::warn!(job = job_id, "1226 alert without a result code");
        return Ok(());
    };
    let update_id = row.opt_bytes("update_id")?.unwrap_or_default();
    let status = match &receipt {
        None => "absent".to_owned(),
        Some(r) => match check_receipt(state, account, r, &update_id, code).await? {
            Ok(()) => "verified".to_owned(),
            Err(m) => {
                state
                    .metrics
                    .verification_failures
                    .with_label_values(&["receipt"])
                    .inc();
                record_event(&state.db, "receipt", Some(account.id), &m).await?;
                format!("invalid: {m}")
            }
        },
    };
    // A success claim for a device whose card the server knows must come with the card's
    // receipt (the card signs one for every result it is told, design §4 step 7): without a
    // verified one it is not believed, and the job fails rather than count for the campaign.
    let confirmed =
        !DmFumoResult(code).is_success() || status == "verified" || account.iccid.is_none();
    let recorded = if confirmed {
        crate::notify::record_result(state, job_id, code, receipt.as_deref(), &status, None).await
    } else {
        if receipt.is_none() {
            state
                .metrics
                .verification_failures
                .with_label_values(&["receipt"])
                .inc();
            record_event(
                &state.db,
                "receipt",
                Some(account.id),
                &format!("result {code} reported without the card's receipt"),
            )
            .await?;
        }
        let detail = format!("result {code} not confirmed: card receipt {status}");
        crate::notify::record_unconfirmed_result(
            state,
            job_id,
            code,
            receipt.as_deref(),
            &status,
            Some(&detail),
        )
        .await
    };
    match recorded {
        Ok(_) | Err(ServerError::Conflict(_)) => {}
        Err(e) => return Err(e),
    }
    tracing::info!(job = job_id, result = code, receipt = %status, confirmed, "update result recorded");
    Ok(())
}

async fn check_receipt(
    state: &AppState,
    account: &Account,
    bytes: &[u8],
    update_id: &[u8],
    code: u16,
) -> Result<std::result::Result<(), String>> {
    let Some(iccid) = account.iccid.clone() else {
        return Ok(Err("no verified card known for this device".into()));
    };
    // A database failure is the server's problem, not the receipt's: it fails the request (the
    // device repeats the alert) instead of being recorded as the receipt's verdict.
    let card = match crate::registry::get_card(&state.db, &iccid).await {
        Ok(card) => card,
        Err(e @ ServerError::NotFound(_)) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    };
    Ok(verify_receipt(card, &iccid, bytes, update_id, code))
}

/// The receipt checks of [`check_receipt`] once the card is known; `Err` says what failed.
fn verify_receipt(
    card: crate::registry::Card,
    iccid: &str,
    bytes: &[u8],
    update_id: &[u8],
    code: u16,
) -> std::result::Result<(), String> {
    let key_hex = card.card_pub.ok_or("card has no key")?;
    let key_bytes = hex::decode(key_hex).map_err(|e| e.to_string())?;
    let key = PublicKey::from_sec1(&key_bytes).map_err(|e| e.to_string())?;
    let v = Receipt::verify(bytes, &key, &Limits::DEFAULT)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_registry_spellings_are_auth_schemes() {
        assert_eq!(auth_scheme("md5"), Some(AuthScheme::Md5));
        assert_eq!(auth_scheme("hmac"), Some(AuthScheme::Hmac));
        for unknown in ["", "MD5", "sha256", "basic", "hmac "] {
            assert_eq!(auth_scheme(unknown), None, "{unknown:?}");
        }
    }
}
