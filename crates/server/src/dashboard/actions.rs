//! What an operator does from the dashboard (pause, resume, cancel a campaign) and the
//! downloads (a proof bundle, a card's evidence).
//!
//! An action is a POST form. It is refused unless it comes from the dashboard's own origin
//! (`signin::same_origin`, on top of the SameSite=Strict session cookie) and from a token
//! with the operator role at least; every attempt by a signed-in token, done or refused, is
//! written to the audit log like the API's state-changing requests.

use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::read::{self, Val};
use super::{PageError, Ui, render};
use crate::AppState;
use crate::campaign::{self, Action};
use crate::db::{RowExt, now_ms};
use crate::error::ServerError;
use crate::http::serve::Peer;

/// What an operator asks of a campaign from its page.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// One of the engine's state changes.
    State(Action),
    /// Offer the failed jobs again: all, or those failed for one reason.
    Retry(Option<String>),
}

impl Ask {
    fn verb(&self) -> &'static str {
        match self {
            Self::State(Action::Pause) => "pause",
            Self::State(Action::Resume) => "resume",
            Self::State(Action::Cancel) => "cancel",
            Self::Retry(_) => "retry the failed jobs of",
        }
    }
}

/// Longest failure reason a retry form may name (reasons are short sentences).
const REASON_MAX: usize = 300;

/// Runs `ask` on campaign `id` for `who`, after the origin and role checks; records it.
async fn act(
    s: &AppState,
    who: &Ui,
    peer: Option<axum::Extension<Peer>>,
    headers: &HeaderMap,
    id: i64,
    ask: Ask,
) -> Result<Response, PageError> {
    let verb = ask.verb();
    let what = match &ask {
        Ask::Retry(Some(r)) => format!("dashboard: {verb} campaign {id} (reason {r:?})"),
        _ => format!("dashboard: {verb} campaign {id}"),
    };
    let peer = peer.map(|p| p.0.0);
    let refused = if !crate::signin::same_origin(headers) {
        Some(ServerError::Forbidden(format!(
            "a request to {verb} campaign {id} from another site was refused"
        )))
    } else if !who.may_act() {
        Some(ServerError::Forbidden(format!(
            "the {} role reads only: to {verb} a campaign, sign in with an operator token",
            who.role.name()
        )))
    } else if matches!(&ask, Ask::Retry(Some(r)) if r.len() > REASON_MAX || r.chars().any(char::is_control))
    {
        Some(ServerError::BadRequest(format!(
            "reason: at most {REASON_MAX} bytes, no control characters"
        )))
    } else {
        None
    };
    if let Some(e) = refused {
        crate::auth::record_dashboard(s, who.token_id, &what, e.status().as_u16(), peer).await;
        return Err(PageError(e));
    }
    let before = campaign::get(&mut *s.db.conn().await?, id)
        .await?
        .current_wave;
    let done = match &ask {
        Ask::State(a) => campaign::act(&s.db, id, *a).await,
        Ask::Retry(reason) => {
            let reasons = reason.as_ref().map(|r| vec![r.clone()]);
            campaign::retry(&s.db, id, reasons.as_deref()).await
        }
    };
    match done {
        Ok(_) => {
            crate::auth::record_dashboard(s, who.token_id, &what, 303, peer).await;
            // Devices hear of what became pending (best effort, as the API does: they also
            // poll): a resume can release waves, a retry makes failed jobs pending again.
            let woken = match &ask {
                Ask::State(Action::Resume) => crate::notify::released_since(s, id, before)
                    .await
                    .map(|_| ()),
                Ask::Retry(_) => crate::notify::pending_devices(s, id).await.map(|_| ()),
                Ask::State(_) => Ok(()),
            };
            if let Err(e) = woken {
                tracing::warn!(campaign = id, error = %e, "devices not notified");
            }
            Ok(Redirect::to(&format!("/ui/campaigns/{id}")).into_response())
        }
        Err(e) => {
            crate::auth::record_dashboard(s, who.token_id, &what, e.status().as_u16(), peer).await;
            Err(PageError(e))
        }
    }
}

/// `POST /ui/campaigns/{id}/pause`.
pub async fn pause(
    who: Ui,
    State(s): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    act(&s, &who, peer, &headers, id, Ask::State(Action::Pause)).await
}

/// `POST /ui/campaigns/{id}/resume`.
pub async fn resume(
    who: Ui,
    State(s): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    act(&s, &who, peer, &headers, id, Ask::State(Action::Resume)).await
}

/// `POST /ui/campaigns/{id}/cancel`.
pub async fn cancel(
    who: Ui,
    State(s): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, PageError> {
    act(&s, &who, peer, &headers, id, Ask::State(Action::Cancel)).await
}

/// The retry form: a reason, or none for every failed job.
#[derive(Debug, Default, Deserialize)]
pub struct RetryForm {
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /ui/campaigns/{id}/retry`.
pub async fn retry(
    who: Ui,
    State(s): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<RetryForm>,
) -> Result<Response, PageError> {
    let reason = f.reason.filter(|r| !r.trim().is_empty());
    act(&s, &who, peer, &headers, id, Ask::Retry(reason)).await
}

#[derive(Template)]
#[template(path = "cancel.html")]
struct CancelPage {
    who: Ui,
    section: &'static str,
    id: i64,
    name: String,
    undelivered: i64,
    delivered: i64,
}

/// `GET /ui/campaigns/{id}/cancel`: what cancelling would do, and the button that does it
/// (cancelling cannot be undone, so it takes a second step; no script needed).
pub async fn confirm_cancel(
    who: Ui,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let c = campaign::get(&mut *s.db.conn().await?, id).await?;
    let p = c.progress;
    let delivered = p.delivered;
    let undelivered = (p.total - p.succeeded - p.failed - p.cancelled - p.delivered).max(0);
    render(&CancelPage {
        who,
        section: "campaigns",
        id,
        name: c.name,
        undelivered,
        delivered,
    })
}

fn download(name: &str, body: Vec<u8>) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    resp
}

/// `GET /ui/updates/{update_id}/proof`: the update's proof bundle (as `GET
/// /api/v1/updates/{id}/proof` gives it), as a file to keep or to check with `simfota proof
/// verify`.
pub async fn proof(
    _: Ui,
    State(s): State<AppState>,
    Path(update_id): Path<String>,
) -> Result<Response, PageError> {
    if update_id.is_empty()
        || update_id.len() > 128
        || !update_id.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(PageError(ServerError::BadRequest(
            "an update id is hexadecimal".into(),
        )));
    }
    let bundle = crate::proof::bundle(&s, &update_id).await?;
    let body = serde_json::to_vec_pretty(&bundle)
        .map_err(|e| ServerError::internal("proof bundle", e.to_string()))?;
    Ok(download(&format!("proof-{update_id}.json"), body))
}

/// `GET /ui/cards/{iccid}/evidence`: everything the server holds that the card signed or that
/// vouches for it, in one file: the certificate, every verified log record with its hash and
/// dates, the signed exports they came in, the issuer admin commands relayed. Objects are
/// base64, as the card wrote them, for checking without this server.
pub async fn evidence(
    _: Ui,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<Response, PageError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let card = read::fetch(
        &s.db,
        "SELECT id, iccid, imsi, card_pub, certificate, cert_status, log_status, log_head_seq, \
         log_head_hash, acked_seq FROM cards WHERE iccid = ?",
        &[Val::T(iccid.clone())],
    )
    .await?;
    let c = card
        .first()
        .ok_or_else(|| ServerError::NotFound(format!("card {iccid}")))?;
    let id = c.i64("id")?;
    let mut entries = Vec::new();
    for e in read::fetch(
        &s.db,
        "SELECT * FROM card_log_entries WHERE card_id = ? ORDER BY seq",
        &[Val::I(id)],
    )
    .await?
    {
        entries.push(json!({
            "seq": e.i64("seq")?,
            "event": e.text("event")?,
            "detail": e.opt_text("detail")?,
            "deny_code": e.opt_i64("deny_code")?,
            "update_id": e.opt_bytes("update_id")?.map(hex::encode),
            "server_id": e.opt_text("server_id")?,
            "originator": e.opt_text("originator")?,
            "release_name": e.opt_text("release_name")?,
            "release_version": e.opt_text("release_version")?,
            "imei": e.opt_text("imei")?,
            "fumo_result": e.opt_i64("fumo_result")?,
            "trusted_time": e.opt_i64("trusted_time")?,
            "device_time": e.opt_i64("device_time")?,
            "stored_ms": e.i64("stored_ms")?,
            "export_id": e.i64("export_id")?,
            "entry_hash": hex::encode(e.bytes("entry_hash")?),
            "prev_hash": hex::encode(e.bytes("prev_hash")?),
            "record": b64(&e.bytes("raw")?),
        }));
    }
    let mut exports = Vec::new();
    for x in read::fetch(
        &s.db,
        "SELECT id, raw, verdict, reason, first_seq, last_seq, received_ms FROM log_exports \
         WHERE card_id = ? ORDER BY id",
        &[Val::I(id)],
    )
    .await?
    {
        exports.push(json!({
            "id": x.i64("id")?,
            "received_ms": x.i64("received_ms")?,
            "verdict": x.text("verdict")?,
            "reason": x.opt_text("reason")?,
            "first_seq": x.opt_i64("first_seq")?,
            "last_seq": x.opt_i64("last_seq")?,
            "export": b64(&x.bytes("raw")?),
        }));
    }
    let mut admin = Vec::new();
    for a in read::fetch(
        &s.db,
        "SELECT id, command, note, state, result, created_ms, sent_ms, done_ms FROM admin_queue \
         WHERE card_id = ? ORDER BY id",
        &[Val::I(id)],
    )
    .await?
    {
        admin.push(json!({
            "id": a.i64("id")?,
            "state": a.text("state")?,
            "note": a.opt_text("note")?,
            "result": a.opt_bytes("result")?.map(|b| String::from_utf8_lossy(&b).into_owned()),
            "queued_ms": a.i64("created_ms")?,
            "sent_ms": a.opt_i64("sent_ms")?,
            "done_ms": a.opt_i64("done_ms")?,
            "command": b64(&a.bytes("command")?),
        }));
    }
    let doc = json!({
        "format": "simfota-card-evidence-1",
        "exported_ms": now_ms(),
        "iccid": c.text("iccid")?,
        "imsi": c.opt_text("imsi")?,
        "cert_status": c.text("cert_status")?,
        "card_certificate": c.opt_bytes("certificate")?.map(|b| b64(&b)),
        "card_public_key": c.opt_bytes("card_pub")?.map(hex::encode),
        "log_status": c.text("log_status")?,
        "log_head_seq": c.opt_i64("log_head_seq")?,
        "log_head_hash": c.opt_bytes("log_head_hash")?.map(hex::encode),
        "acked_seq": c.opt_i64("acked_seq")?,
        "entries": entries,
        "exports": exports,
        "admin_commands": admin,
    });
    let body = serde_json::to_vec_pretty(&doc)
        .map_err(|e| ServerError::internal("card evidence", e.to_string()))?;
    let name: String = iccid.chars().filter(char::is_ascii_digit).collect();
    Ok(download(&format!("card-{name}-evidence.json"), body))
}
