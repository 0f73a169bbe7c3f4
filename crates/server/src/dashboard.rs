//! The operator dashboard: server-rendered HTML (askama) with htmx for live campaign progress
//! (a vendored `htmx.min.js`, no JavaScript build step).
//!
//! Sign-in: `GET /ui/login?token=<API token>` checks the token and stores it in an HttpOnly,
//! SameSite=Strict cookie scoped to `/ui`; every page checks that cookie like the API checks
//! its bearer token.

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::AppState;
use crate::campaign::{self, Campaign, Job};
use crate::cardlog::StoredEntry;
use crate::error::ServerError;
use crate::packages::Package;
use crate::registry::{self, Card, Device};

const COOKIE: &str = "simfota_token";
const HTMX: &[u8] = include_bytes!("../static/htmx.min.js");

/// The dashboard routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/login", get(login))
        .route("/ui/devices/{imei}", get(device))
        .route("/ui/cards/{iccid}", get(card_page))
        .route("/ui/campaigns/{id}", get(campaign_page))
        .route("/ui/campaigns/{id}/progress", get(progress))
        .route("/static/htmx.min.js", get(htmx))
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
            "<p>Sign in with an operator API token: <code>/ui/login?token=&lt;token&gt;</code></p>"
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

/// An operator signed in through the cookie.
struct UiOperator;

impl FromRequestParts<AppState> for UiOperator {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PageError> {
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("simfota_token=").map(str::to_owned))
            .ok_or(PageError(ServerError::Unauthorized))?;
        crate::auth::check_token(&state.db, &token).await?;
        Ok(Self)
    }
}

#[derive(Deserialize)]
struct Login {
    token: String,
    /// Where to go after signing in (a dashboard path; anything else goes to `/ui`).
    #[serde(default)]
    next: Option<String>,
}

async fn login(State(s): State<AppState>, Query(q): Query<Login>) -> Result<Response, PageError> {
    crate::auth::check_token(&s.db, &q.token).await?;
    let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", q.token);
    // Only dashboard paths: never an open redirect to another site.
    let next = q
        .next
        .as_deref()
        .filter(|n| n.starts_with("/ui/") && !n.contains("//") && !n.contains(['\\', '\r', '\n']))
        .unwrap_or("/ui");
    let mut resp = Redirect::to(next).into_response();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
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
