//! The OMA DM endpoint (`POST /dm`): device sessions over crate `simfota-syncml`.
//!
//! Each HTTP request carries one SyncML message (XML or WBXML, by `Content-Type`; the reply
//! uses the same). The server keeps NO session state in memory: the `ServerSession` of the
//! protocol crate and this module's [`Flow`](flow::Flow) are loaded from `dm_sessions`,
//! advanced by the message, and stored back with a compare-and-set on a version number, so
//! consecutive messages of one session may land on different replicas sharing one PostgreSQL.
//!
//! One message, one transaction: everything a message causes (delivery marked, log entries
//! stored, card bound, result recorded) is written in the transaction that ends with the
//! session's compare-and-set. A request that loses the race writes nothing and is handled
//! again from the session as the winner left it ([`handle`]). What must not run before
//! the commit (notifying devices of a released wave) is queued as [`AfterCommit`].
//!
//! Device authentication (OMA DM Security 1.2 §5.3): `syncml:auth-md5`, or HMAC
//! (`x-syncml-hmac`) per device; wrong credentials get status 401 with a challenge carrying a
//! fresh nonce, which is persisted with the device (`devices.device_nonce`); the message's
//! commands get the same 401/407 and challenge (DM Protocol 1.2 §9.1). Unknown devices
//! follow the enrolment rule ([`crate::config::Enrolment`]).
//!
//! Message order (RepPro 1.2 §5.1 MsgID): a repeat of a session's last message is answered
//! with the stored reply and runs nothing; a new package 1 reusing the SessionID starts a new
//! session in the row; any other message out of order is refused (HTTP 400).
//!
//! What a session does, once the device is authenticated (`answers`):
//! 1. Get `./DevDetail/FwV` (firmware version), the card's info (ICCID, certificate: the card
//!    is registered when its certificate verifies under an issuer key) and its lists;
//! 2. Get a card nonce: with a pending job it serves the CWT delivery token (server key; bound
//!    to card nonce, ICCID, IMEI, manifest digest): Replace `./FUMO/fw/Ext/DeliveryToken` and
//!    `./FUMO/fw/DownloadAndUpdate/PkgURL`, Exec `./FUMO/fw/DownloadAndUpdate` with the job's
//!    Correlator; `202` marks the job delivered. Without a job it serves a log-read request;
//!    each accepted page is acknowledged: in the reply to it, bound to the page's own nonce,
//!    when the card's applet takes that (1.1 on), else with the next nonce;
//! 3. a Generic Alert 1226 with a known Correlator records the FUMO result code and the card
//!    receipt (verified with the card key: update id, ICCID and result must match; `alert`).

mod account;
mod alert;
mod answers;
mod events;
mod flow;
mod store;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use simfota_syncml::Encoding;
use simfota_syncml::auth::{HMAC_HEADER, Nonce as DmNonce};
use simfota_syncml::session::{Outgoing, ServerSession, SessionError};
use sqlx::AnyConnection;

use self::account::{Account, DevicePatch};
use self::answers::Offered;
use self::flow::Flow;
use self::store::Stored;
use crate::AppState;
use crate::db::now_ms;
use crate::error::Result;

pub use self::alert::NOT_CARD_ATTESTED;
pub use self::events::{EventSources, record_aggregated, sweep as sweep_aggregated_events};
pub use self::store::{STALE_AFTER_MS, sweep_stale as sweep_stale_sessions};

/// What a message leaves to do once its transaction committed.
enum AfterCommit {
    /// A recorded result released later waves of this campaign: notify their devices (the
    /// wave the campaign was at before).
    NotifyReleased { campaign: i64, before_wave: i64 },
    /// A card certificate verified and its card registered: later sessions skip both.
    RememberCard { certificate: Vec<u8>, iccid: String },
}

/// Card lists relayed in one message: which list, and the card's answer.
type CardLists = Vec<(crate::cardinfo::Relayed, Vec<u8>)>;

/// One message being handled: the account, the session and its flow, and the transaction
/// every write of the message goes into.
struct Step<'a> {
    state: &'a AppState,
    tx: &'a mut AnyConnection,
    account: &'a mut Account,
    session: &'a mut ServerSession,
    flow: &'a mut Flow,
    /// What the message changes in the device's row (written once, before the session).
    device: DevicePatch,
    /// The card lists the message relayed, with the card they came from (written once).
    card_lists: Option<(String, CardLists)>,
    /// What the device offered in package 1, so the session need not Get it.
    offered: Offered,
    /// What the session did, for its log line.
    notes: &'a mut store::Notes,
    /// Where the message came from (the source of events recorded before authentication).
    peer: Option<std::net::SocketAddr>,
    after: Vec<AfterCommit>,
}

fn reply(out: Outgoing) -> Response {
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

/// How often a message whose session another request changed first is handled again.
const CONTENDED_ATTEMPTS: usize = 3;

/// `POST /dm`.
///
/// Concurrent messages of one session: the first to commit wins; the others lose the
/// session's compare-and-set, keep nothing, and are handled again from the session as the
/// winner left it. A copy of the winner's message then gets the winner's reply, any other
/// message the answer its place in the session calls for (RepPro 1.2 §5.1 MsgID: out of order,
/// 400). Only a session changed under it [`CONTENDED_ATTEMPTS`] times in a row answers 503.
pub async fn handle(
    State(state): State<AppState>,
    peer: Option<axum::Extension<crate::http::serve::Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.metrics.dm_messages.inc();
    let peer = peer.map(|p| p.0.0);
    let mut attempt = 1;
    let mut resp = loop {
        match handle_inner(&state, peer, &headers, &body).await {
            Ok(r) => break r,
            Err(crate::error::ServerError::Contended { what }) if attempt < CONTENDED_ATTEMPTS => {
                tracing::debug!(%what, attempt, "DM message lost its session to a concurrent one; handled again");
                attempt += 1;
            }
            Err(e) => break e.into_response(),
        }
    };
    answer_in_kind(&headers, &mut resp);
    resp
}

/// A client that sent a DS-style MIME type (`application/vnd.syncml+xml`, `+wbxml`: SyncML
/// RepPro 1.2 §4 names both families; older DM clients use the DS one) gets its reply under
/// the same type, the one it is known to parse; the body is the same DM message.
fn answer_in_kind(request: &HeaderMap, resp: &mut Response) {
    use simfota_syncml::{wbxml, xml};
    let base = |v: Option<&HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .map(|b| b.trim().to_ascii_lowercase())
    };
    let ds = match base(request.get(header::CONTENT_TYPE)).as_deref() {
        Some(xml::DS_XML_MIME) => (xml::DM_XML_MIME, xml::DS_XML_MIME),
        Some(wbxml::DS_WBXML_MIME) => (wbxml::DM_WBXML_MIME, wbxml::DS_WBXML_MIME),
        _ => return,
    };
    if base(resp.headers().get(header::CONTENT_TYPE)).as_deref() == Some(ds.0) {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ds.1));
    }
}

async fn handle_inner(
    state: &AppState,
    peer: Option<std::net::SocketAddr>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
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
    let hdr = match encoding.decode_header(body, &account::dm_limits()) {
        Ok(h) => h,
        // Without a readable SyncHdr there is nothing a SyncML Status could refer to.
        Err(e) => return Ok(session_err(e)),
    };
    let dev_id = hdr.source.uri.clone();
    let session_id = hdr.session_id.clone();
    // Both go into queries: text both engines store alike, bounded (http::valid).
    for (what, text, max) in [
        ("SessionID", &session_id, 64),
        ("Source LocURI", &dev_id, 256),
    ] {
        if let Some(p) = crate::http::valid::text_problem(text, max) {
            return Ok(session_err(format_args!("{what} holds {p}")));
        }
    }
    let (mut account, loaded) = match account::lookup(state, &dev_id, &session_id).await? {
        Some(known) => known,
        None => match account::enrol_candidate(state, &dev_id, hdr.source.name.as_deref()).await? {
            Some(a) => (a, None),
            None => {
                return Ok(account::refuse_unknown(
                    state,
                    encoding,
                    &dev_id,
                    peer,
                    body,
                    hmac.as_deref(),
                ));
            }
        },
    };
    let (mut stored, version) = match loaded {
        Some((mut s, v)) => {
            // A session stored before the client authenticated checks it against the nonce
            // the account holds now (DM Security 1.2 §5.4): another session may have moved it.
            if let Some(n) = account.device_nonce.clone() {
                s.session.refresh_client_nonce(DmNonce(n));
            }
            (s, Some(v))
        }
        // No open session: only a package 1 (MsgID 1, DM Protocol 1.2 §8.3) starts one. A later
        // message of a session that ended (a copy that lost a race to the session's last
        // message, or a replay) is refused: run as a new session, it would be challenged and
        // move the device's nonce. (An enrolment candidate has no row to keep a session in:
        // its retry is checked against the nonce kept in `enrolment_nonces`.)
        None if hdr.msg_id.0 != 1 && account.id > 0 => {
            return Ok(session_err(format_args!(
                "message {} of session {session_id:?}, which is not open (it ended, or never started); a session starts with package 1, MsgID 1",
                hdr.msg_id.0
            )));
        }
        None => (new_session(state, &account, encoding), None),
    };
    let events = match stored
        .session
        .receive(body, hmac.as_deref(), account::fresh_nonce())
    {
        Ok(ev) => ev,
        // The same message again (its reply was lost on the way): the reply already given,
        // nothing run again, nothing written (RepPro 1.2 §5.1 MsgID).
        Err(SessionError::Repeated(_)) => return Ok(repeated(&stored, encoding)),
        // A package 1 reusing the SessionID starts a new session in the stored one's row
        // (DM Protocol 1.2 §8.3): its commands and MsgIDs start afresh.
        Err(SessionError::NewSession) => {
            stored = new_session(state, &account, encoding);
            match stored
                .session
                .receive(body, hmac.as_deref(), account::fresh_nonce())
            {
                Ok(ev) => ev,
                Err(e) => return Ok(session_err(e)),
            }
        }
        Err(e) => return Ok(session_err(e)),
    };

    let offered = Offered::from_events(&events);
    let mut tx = state.db.begin_write().await?;
    let mut step = Step {
        state,
        tx: &mut tx,
        account: &mut account,
        session: &mut stored.session,
        flow: &mut stored.flow,
        device: DevicePatch::default(),
        card_lists: None,
        offered,
        notes: &mut stored.notes,
        peer,
        after: Vec::new(),
    };
    step.notes.messages += 1;
    for ev in events {
        step.on_event(ev).await?;
    }
    step.learn_server_nonce();
    let device = std::mem::take(&mut step.device);
    let card_lists = step.card_lists.take();
    let after = std::mem::take(&mut step.after);
    let out = match stored.session.reply() {
        Ok(o) => o,
        // Nothing of this message is kept: the transaction rolls back when dropped.
        Err(e) => return Ok(session_err(e)),
    };
    stored.last_reply = Some(store::LastReply {
        body: B64.encode(&out.body),
        hmac: out.hmac.clone(),
    });
    if stored.session.is_over() {
        // An ended session's row answers only copies of its last message: the flow goes.
        stored.flow = Flow::default();
    }
    if account.id > 0 {
        device.write(&mut tx, account.id).await?;
        if let Some((iccid, lists)) = card_lists {
            crate::cardinfo::store_lists(&mut tx, &iccid, &lists).await?;
        }
        store::save(&mut tx, account.id, &session_id, &stored, version).await?;
    }
    tx.commit().await?;
    if stored.session.is_over() {
        log_session_end(&account.imei, &session_id, &stored.notes);
    }
    for task in after {
        run_after_commit(state, task).await;
    }
    Ok(reply(out))
}

/// One line per ended session: the device, how many messages, and what it came to (an update
/// delivered, or why not; a result recorded; card-log pages read). Never a secret.
fn log_session_end(imei: &str, session_id: &str, n: &store::Notes) {
    if !n.authenticated {
        tracing::warn!(
            %imei,
            session = %session_id,
            messages = n.messages,
            "DM session ended without the device authenticating"
        );
        return;
    }
    tracing::info!(
        %imei,
        session = %session_id,
        messages = n.messages,
        delivered_job = n.delivered,
        not_delivered = n.not_delivered.as_deref(),
        result_job = n.result.map(|(job, _)| job),
        result_code = n.result.map(|(_, code)| code),
        log_pages = n.log_pages,
        "DM session ended"
    );
}

/// A session for a message that starts one: the account's nonces (DM Security 1.2 §5.4), a
/// fresh one when the device has none yet (its first message is then challenged).
fn new_session(state: &AppState, account: &Account, encoding: Encoding) -> Stored {
    Stored {
        session: ServerSession::new(
            account::dm_config(state, account, encoding),
            account
                .device_nonce
                .clone()
                .map_or_else(account::fresh_nonce, DmNonce),
            DmNonce(account.server_nonce.clone().unwrap_or_default()),
        ),
        flow: Flow::default(),
        last_reply: None,
        notes: store::Notes::default(),
    }
}

/// The stored reply to a message received again. A row without one (stored before replies
/// were kept) cannot answer it: 409, and nothing runs.
fn repeated(stored: &Stored, encoding: Encoding) -> Response {
    let body = stored
        .last_reply
        .as_ref()
        .and_then(|r| B64.decode(&r.body).ok().map(|b| (b, r.hmac.clone())));
    match body {
        Some((body, hmac)) => reply(Outgoing {
            body,
            content_type: encoding.content_type(),
            hmac,
            uri: String::new(),
        }),
        None => (
            StatusCode::CONFLICT,
            "SyncML message already handled; its reply is not kept\n",
        )
            .into_response(),
    }
}

async fn run_after_commit(state: &AppState, task: AfterCommit) {
    match task {
        AfterCommit::NotifyReleased {
            campaign,
            before_wave,
        } => {
            // Best effort, as at campaign creation: a device not reached now is reached by its
            // next session or notification.
            if let Err(e) = crate::notify::released_since(state, campaign, before_wave).await {
                tracing::warn!(campaign, error = %e, "released wave not notified");
            }
        }
        AfterCommit::RememberCard { certificate, iccid } => {
            state.verified_cards.insert(&certificate, &iccid);
        }
    }
}

impl Step<'_> {
    /// Persists the nonce the device expects our credentials with once its challenge changed
    /// it (DM Security 1.2 §5.4): the next session starts with it, and package 0's digest uses
    /// it (DM Notification 1.2 §6.3).
    fn learn_server_nonce(&mut self) {
        let now = &self.session.server_nonce().0;
        let account = &mut *self.account;
        if account.id <= 0 || account.server_nonce.as_deref().unwrap_or_default() == now.as_slice()
        {
            return;
        }
        self.device.bytes("server_nonce", now.clone());
        account.server_nonce = Some(now.clone());
    }
}

/// Appends a security event (refused device, forged export, bad receipt, ...).
pub async fn record_event(
    conn: &mut AnyConnection,
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
    .execute(&mut *conn)
    .await?;
    Ok(())
}
