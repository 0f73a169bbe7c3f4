//! The operator dashboard: server-rendered HTML (askama) with htmx for live campaign progress
//! (a vendored `htmx.min.js`, no JavaScript build step).
//!
//! Sign-in (`crate::signin`): a form posts the API token once and opens a session whose
//! cookie holds a random id, never the token; one-time links serve tools. Every page checks
//! the session; every answer carries the security headers ([`security_headers`]).

use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::AppState;
use crate::campaign::{self, Campaign, Job};
use crate::cardlog::StoredEntry;
use crate::error::ServerError;
use crate::packages::Package;
use crate::registry::{self, Card, Device};

const HTMX: &[u8] = include_bytes!("../static/htmx.min.js");

/// The dashboard routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/login/{code}", get(login_link))
        .route("/ui/logout", post(logout))
        .route("/ui/audit", get(audit_page))
        .route("/ui/devices/{imei}", get(device))
        .route("/ui/cards/{iccid}", get(card_page))
        .route("/ui/campaigns/{id}", get(campaign_page))
        .route("/ui/campaigns/{id}/progress", get(progress))
        .route("/static/htmx.min.js", get(htmx))
        .layer(axum::middleware::from_fn(security_headers))
}

/// On every dashboard answer: a content security policy that allows the dashboard's own
/// script and styles only, no framing, no MIME sniffing, no referrer, no caching.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn htmx() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        HTMX,
    )
}

/// A page failure shown as HTML.
struct PageError(ServerError);

impl From<ServerError> for PageError {
    fn from(e: ServerError) -> Self {
        Self(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::warn!(error = %self.0, "page failed");
        }
        let body = if status == StatusCode::UNAUTHORIZED {
            "<p>Sign in with an operator API token: <a href=\"/ui/login\">Sign in</a></p>"
                .to_owned()
        } else {
            format!("<p>{}</p>", escape(&self.0.public_message()))
        };
        (status, Html(body)).into_response()
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn render(t: &impl Template) -> Result<Html<String>, PageError> {
    t.render()
        .map(Html)
        .map_err(|e| PageError(ServerError::Template(e)))
}

/// An operator signed in: a live session cookie. Without one, a page sends the browser to the
/// sign-in form, to come back afterwards.
struct UiOperator;

impl FromRequestParts<AppState> for UiOperator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let signed_in = match crate::signin::cookie(&parts.headers) {
            Some(id) => crate::signin::check(&state.db, &id).await,
            None => Err(ServerError::Unauthorized),
        };
        match signed_in {
            Ok(()) => Ok(Self),
            Err(ServerError::Unauthorized) => {
                let next = crate::signin::normalize_next(Some(parts.uri.path()));
                Err(Redirect::to(&format!("/ui/login?next={next}")).into_response())
            }
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    /// Where to go after signing in (a dashboard path; anything else goes to `/ui`).
    #[serde(default)]
    next: Option<String>,
    /// Refused: a token does not go in a URL.
    #[serde(default)]
    token: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    problem: Option<&'a str>,
}

/// `GET /ui/login`: the sign-in form.
async fn login_form(Query(q): Query<LoginQuery>) -> Result<Response, PageError> {
    let next = crate::signin::normalize_next(q.next.as_deref());
    if q.token.is_some() {
        let page = render(&LoginPage {
            next,
            problem: Some("An API token does not go in a URL: enter it here instead."),
        })?;
        return Ok((StatusCode::BAD_REQUEST, page).into_response());
    }
    Ok(render(&LoginPage {
        next,
        problem: None,
    })?
    .into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// `POST /ui/login`: the token from the form opens a session.
async fn login(
    State(s): State<AppState>,
    peer: Option<axum::Extension<crate::http::serve::Peer>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, PageError> {
    let peer = peer.map(|p| p.0.0);
    if !crate::signin::same_origin(&headers) {
        return Err(PageError(ServerError::Forbidden(
            "sign-in from another site refused".into(),
        )));
    }
    let next = crate::signin::normalize_next(f.next.as_deref());
    let Ok((token_id, _)) = crate::auth::token_id(&s.db, f.token.trim()).await else {
        let page = render(&LoginPage {
            next,
            problem: Some("That token is not a valid operator API token."),
        })?;
        crate::auth::audit_quietly(&s, None, "dashboard sign-in", 401, peer).await;
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    };
    crate::auth::record_dashboard(&s, token_id, "dashboard sign-in", 303, peer).await;
    signed_in(&s, token_id, next).await
}

/// `GET /ui/login/{code}`: a one-time sign-in link.
async fn login_link(
    State(s): State<AppState>,
    peer: Option<axum::Extension<crate::http::serve::Peer>>,
    Path(code): Path<String>,
) -> Result<Response, PageError> {
    let (token_id, next) = crate::signin::use_link(&s.db, &code).await?;
    let peer = peer.map(|p| p.0.0);
    crate::auth::record_dashboard(&s, token_id, "dashboard sign-in (link)", 303, peer).await;
    signed_in(&s, token_id, &next).await
}

async fn signed_in(s: &AppState, token_id: i64, next: &str) -> Result<Response, PageError> {
    let id = crate::signin::open(&s.db, token_id).await?;
    let mut resp = Redirect::to(crate::signin::normalize_next(Some(next))).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, crate::signin::set_cookie(s, Some(&id)));
    Ok(resp)
}

/// `POST /ui/logout`: ends the session.
async fn logout(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, PageError> {
    if !crate::signin::same_origin(&headers) {
        return Err(PageError(ServerError::Forbidden(
            "sign-out from another site refused".into(),
        )));
    }
    if let Some(id) = crate::signin::cookie(&headers) {
        crate::signin::close(&s.db, &id).await?;
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, crate::signin::set_cookie(&s, None));
    Ok(resp)
}

/// A card as a row of the overview.
struct CardRow {
    iccid: String,
    cert_status: String,
    /// `id (rights)` per authorized server; `None` until the card's list was read.
    servers: Option<String>,
    /// The unauthorized-server rule of the card's policy.
    policy: Option<String>,
    log_status: String,
}

impl CardRow {
    fn of(c: Card) -> Self {
        let servers = c.servers.as_ref().and_then(|v| v.as_array()).map(|a| {
            a.iter()
                .map(|e| {
                    let rights: Vec<String> = e["rights"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter_map(|x| x.as_str())
                                .map(|x| x.replace('_', " "))
                                .collect()
                        })
                        .unwrap_or_default();
                    format!(
                        "{} ({})",
                        e["id"].as_str().unwrap_or("?"),
                        rights.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let policy = c.policy.as_ref().map(|p| {
            format!(
                "unauthorized servers: {}",
                p["unauthorized"].as_str().unwrap_or("?").replace('_', " ")
            )
        });
        Self {
            iccid: c.iccid,
            cert_status: c.cert_status,
            servers,
            policy,
            log_status: c.log_status,
        }
    }
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    devices: Vec<Device>,
    cards: Vec<CardRow>,
    packages: Vec<Package>,
    campaigns: Vec<Campaign>,
}

async fn overview(_: UiOperator, State(s): State<AppState>) -> Result<Html<String>, PageError> {
    render(&Overview {
        devices: registry::list_devices(&s.db).await?,
        cards: registry::list_cards(&s.db)
            .await?
            .into_iter()
            .map(CardRow::of)
            .collect(),
        packages: crate::packages::list(&s.db).await?,
        campaigns: campaign::list(&s.db).await?,
    })
}

/// One card log entry as a table row.
struct LogRow {
    seq: i64,
    event: String,
    /// The refusal by name, the free-device or consent flag, other event details.
    details: String,
    release: String,
    server: String,
    imei: String,
    result: String,
}

impl LogRow {
    fn of(e: StoredEntry) -> Self {
        let details = match (&e.deny_reason, e.consent_pin_verified) {
            (Some(r), _) => format!("refused: {r}"),
            (None, Some(true)) => "user confirmed with PIN".to_owned(),
            (None, Some(false)) => "user confirmed".to_owned(),
            (None, None) if e.free_device => {
                "free device: server not authorized, policy allows".to_owned()
            }
            (None, None) => e.detail.unwrap_or_default(),
        };
        let claimed = |field: &str| {
            e.unverified_fields
                .as_ref()
                .is_some_and(|f| f.iter().any(|x| x == field))
        };
        // A claim the card did not verify is shown as such, never as a fact.
        let mark = |v: Option<String>, field: &str| match v {
            Some(v) if claimed(field) => format!("{v} (claimed, unverified)"),
            v => v.unwrap_or_default(),
        };
        let server = mark(e.server_id.clone(), "server_id");
        let imei = mark(e.imei.clone(), "imei");
        let details = if e.refusal_counts.is_empty() {
            details
        } else {
            format!(
                "refusals counted: {}",
                e.refusal_counts
                    .iter()
                    .map(|c| format!("{} × {}", c.count, c.reason))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let release = [e.release_name, e.release_version]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            seq: e.seq,
            event: e.event,
            details,
            release,
            server,
            imei,
            result: e.fumo_result.map(|r| r.to_string()).unwrap_or_default(),
        }
    }
}

#[derive(Template)]
#[template(path = "device.html")]
struct DevicePage {
    device: Device,
    entries: Vec<LogRow>,
}

async fn device(
    _: UiOperator,
    State(s): State<AppState>,
    Path(imei): Path<String>,
) -> Result<Html<String>, PageError> {
    let device = registry::get_device(&mut *s.db.conn().await?, &imei).await?;
    let entries = match &device.iccid {
        Some(i) => crate::cardlog::entries(&s, i).await?,
        None => Vec::new(),
    };
    render(&DevicePage {
        device,
        entries: entries.into_iter().map(LogRow::of).collect(),
    })
}

/// An authorized server as the card lists it.
struct ServerRow {
    id: String,
    rights: String,
    key: String,
}

/// A trusted originator as the card lists it.
struct OriginatorRow {
    id: String,
    key: String,
}

/// The first bytes of a key (hex) for display: enough to tell keys apart.
fn key_prefix(v: &serde_json::Value) -> String {
    let k = v["key"].as_str().unwrap_or_default();
    // SEC1 uncompressed keys start with 04; the X coordinate's head tells them apart.
    format!("{}…", k.get(..18).unwrap_or(k))
}

#[derive(Template)]
#[template(path = "card.html")]
struct CardPage {
    card: Card,
    servers: Option<Vec<ServerRow>>,
    originators: Option<Vec<OriginatorRow>>,
    /// Policy lines: (what, value).
    policy: Option<Vec<(String, String)>>,
    devices: Vec<Device>,
    entries: Vec<LogRow>,
}

fn policy_lines(p: &serde_json::Value) -> Vec<(String, String)> {
    let text = |k: &str| p[k].as_str().unwrap_or("?").replace('_', " ");
    let mut lines = vec![
        ("Unauthorized servers".to_owned(), text("unauthorized")),
        ("Integrity check".to_owned(), text("integrity")),
    ];
    if let Some(max) = p["card_digest_max_bytes"].as_u64() {
        lines.push((
            "Card hashes payloads up to".to_owned(),
            format!("{max} bytes"),
        ));
    }
    let classes: Vec<String> = p["allowed_classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    format!(
                        "vendor {} / class {}",
                        c["vendor_id"].as_str().unwrap_or("?"),
                        c["class_id"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    lines.push((
        "Allowed device classes".to_owned(),
        if classes.is_empty() {
            "any".to_owned()
        } else {
            classes.join("; ")
        },
    ));
    lines
}

async fn card_page(
    _: UiOperator,
    State(s): State<AppState>,
    Path(iccid): Path<String>,
) -> Result<Html<String>, PageError> {
    let card = registry::get_card(&mut *s.db.conn().await?, &iccid).await?;
    let servers = card.servers.as_ref().and_then(|v| v.as_array()).map(|a| {
        a.iter()
            .map(|e| ServerRow {
                id: e["id"].as_str().unwrap_or("?").to_owned(),
                rights: e["rights"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_str())
                            .map(|x| x.replace('_', " "))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
                key: key_prefix(e),
            })
            .collect()
    });
    let originators = card
        .originators
        .as_ref()
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|e| OriginatorRow {
                    id: e["id"].as_str().unwrap_or("?").to_owned(),
                    key: key_prefix(e),
                })
                .collect()
        });
    let policy = card.policy.as_ref().map(policy_lines);
    let devices = registry::list_devices(&s.db)
        .await?
        .into_iter()
        .filter(|d| d.iccid.as_deref() == Some(iccid.as_str()))
        .collect();
    let entries = crate::cardlog::entries(&s, &iccid)
        .await?
        .into_iter()
        .map(LogRow::of)
        .collect();
    render(&CardPage {
        card,
        servers,
        originators,
        policy,
        devices,
        entries,
    })
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    c: Campaign,
    jobs: Vec<Job>,
    waves: String,
    percent: i64,
}

#[derive(Template)]
#[template(path = "progress.html")]
struct ProgressFragment {
    c: Campaign,
    jobs: Vec<Job>,
    percent: i64,
}

async fn load(s: &AppState, id: i64) -> Result<(Campaign, Vec<Job>, i64), PageError> {
    let c = campaign::get(&mut *s.db.conn().await?, id).await?;
    let jobs = campaign::jobs(&s.db, Some(id)).await?;
    let percent = if c.progress.total > 0 {
        c.progress.succeeded * 100 / c.progress.total
    } else {
        0
    };
    Ok((c, jobs, percent))
}

async fn campaign_page(
    _: UiOperator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let (c, jobs, percent) = load(&s, id).await?;
    let waves = c
        .waves
        .iter()
        .map(|w| format!("{w}%"))
        .collect::<Vec<_>>()
        .join(" → ");
    render(&CampaignPage {
        c,
        jobs,
        waves,
        percent,
    })
}

async fn progress(
    _: UiOperator,
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let (c, jobs, percent) = load(&s, id).await?;
    render(&ProgressFragment { c, jobs, percent })
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_428_800_123), "2026-12-05 00:00:00");
        assert_eq!(
            super::utc(1_796_428_800_000 + 86_399_000),
            "2026-12-05 23:59:59"
        );
    }

    use super::*;

    #[tokio::test]
    async fn a_page_shows_no_internal_detail() {
        let e = PageError(ServerError::internal(
            "stored DM session",
            "column state: bad JSON",
        ));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(
            body,
            "<p>internal server error; the server log has the details</p>"
        );
    }
}

/// `ms` (Unix milliseconds) as `YYYY-MM-DD hh:mm:ss` UTC.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An audit entry as the page shows it.
struct AuditRow {
    when: String,
    e: crate::auth::AuditEntry,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    rows: Vec<AuditRow>,
}

/// `GET /ui/audit`: the newest 200 audit entries.
async fn audit_page(_: UiOperator, State(s): State<AppState>) -> Result<Html<String>, PageError> {
    let rows = crate::auth::audit(&s.db, 200, None)
        .await?
        .into_iter()
        .map(|e| AuditRow {
            when: utc(e.created_ms),
            e,
        })
        .collect();
    render(&AuditPage { rows })
}
