//! The operator dashboard: server-rendered HTML (askama), pictures as inline SVG drawn here,
//! htmx (vendored, no JavaScript build step) only to refresh a running campaign's progress.
//!
//! Pages: the overview (`/ui`), one list per kind with search, filters and keyset pagination
//! (`/ui/devices`, `/ui/campaigns`, `/ui/packages`, `/ui/cards`: [`read`]), and one page per
//! device, campaign and card; downloads of a proof bundle and of a card's evidence; the audit
//! log. Every time reads both ways, relative and in UTC ([`time`]).
//!
//! Sign-in (`crate::signin`): a form posts the API token once and opens a session whose
//! cookie holds a random id, never the token; one-time links serve tools. Every page checks
//! the session and knows the token's role: a viewer reads, an operator also acts (pause,
//! resume, cancel, retry), through POST forms that must come from the dashboard's own origin
//! and land in the audit log. Every answer carries the security headers
//! ([`security_headers`]): the dashboard's own script and stylesheet only, no inline script
//! or style.

mod actions;
mod chart;
mod pages;
mod read;
mod time;

use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::auth::Role;
use crate::db::RowExt;
use crate::error::ServerError;

pub use time::utc;

const HTMX: &[u8] = include_bytes!("../../static/htmx.min.js");
const CSS: &[u8] = include_bytes!("../../static/dashboard.css");

/// The dashboard routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/login/{code}", get(login_link))
        .route("/ui/logout", post(logout))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/devices", get(pages::devices))
        .route("/ui/devices/{imei}", get(pages::device))
        .route("/ui/cards", get(pages::cards))
        .route("/ui/cards/{iccid}", get(pages::card))
        .route("/ui/cards/{iccid}/evidence", get(actions::evidence))
        .route("/ui/packages", get(pages::packages))
        .route("/ui/campaigns", get(pages::campaigns))
        .route("/ui/campaigns/{id}", get(pages::campaign))
        .route("/ui/campaigns/{id}/progress", get(pages::progress))
        .route("/ui/campaigns/{id}/pause", post(actions::pause))
        .route("/ui/campaigns/{id}/resume", post(actions::resume))
        .route("/ui/campaigns/{id}/retry", post(actions::retry))
        .route(
            "/ui/campaigns/{id}/cancel",
            get(actions::confirm_cancel).post(actions::cancel),
        )
        .route("/ui/updates/{update_id}/proof", get(actions::proof))
        .route("/static/htmx.min.js", get(htmx))
        .route("/static/dashboard.css", get(css))
        .layer(axum::middleware::from_fn(security_headers))
}

/// On every dashboard answer: a content security policy that allows the dashboard's own
/// script and stylesheet only (no inline script, no inline style: the pictures are SVG with
/// presentation attributes), no framing, no MIME sniffing, no referrer, no caching.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
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

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

/// A page failure shown as HTML: what was refused and why, never an internal detail.
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
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · simfota\
             </title><link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body>\
             <main><h1>{}</h1>{body}<p><a href=\"/ui\">Back to the overview</a></p></main>\
             </body></html>",
            status.as_u16(),
            escape(status.canonical_reason().unwrap_or("Refused")),
        );
        (status, Html(page)).into_response()
    }
}

/// `s` with the characters HTML gives a meaning to replaced by entities (text and attribute
/// values alike).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` percent-encoded for a query string value (RFC 3986 unreserved characters kept).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn render(t: &impl Template) -> Result<Html<String>, PageError> {
    t.render()
        .map(Html)
        .map_err(|e| PageError(ServerError::Template(e)))
}

/// Who is signed in: the token the session was opened with, its name and role. Without a live
/// session a page sends the browser to the sign-in form, to come back afterwards.
#[derive(Debug, Clone)]
pub(crate) struct Ui {
    /// The API token's id.
    pub token_id: i64,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Ui {
    /// Whether this operator may act (pause, resume, cancel, retry).
    pub fn may_act(&self) -> bool {
        self.role >= Role::Operator
    }
}

impl FromRequestParts<AppState> for Ui {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let signed_in = match crate::signin::cookie(&parts.headers) {
            Some(id) => match crate::signin::check(&state.db, &id).await {
                Ok(()) => who(state, &id).await,
                Err(e) => Err(e),
            },
            None => Err(ServerError::Unauthorized),
        };
        match signed_in {
            Ok(ui) => Ok(ui),
            Err(ServerError::Unauthorized) => {
                let next = crate::signin::normalize_next(Some(parts.uri.path()));
                Err(Redirect::to(&format!("/ui/login?next={next}")).into_response())
            }
            Err(e) => Err(PageError(e).into_response()),
        }
    }
}

/// The token behind the live session `id` (checked by `signin::check` just before).
async fn who(state: &AppState, id: &str) -> Result<Ui, ServerError> {
    let row = sqlx::query(
        "SELECT t.id, t.name, t.role FROM ui_sessions s JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.id_hash = $1",
    )
    .bind(Sha256::digest(id.as_bytes()).to_vec())
    .fetch_optional(state.db.pool())
    .await?
    .ok_or(ServerError::Unauthorized)?;
    Ok(Ui {
        token_id: row.i64("id")?,
        name: row.text("name")?,
        role: Role::parse(&row.text("role")?)?,
    })
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
        assert!(
            body.contains("<p>internal server error; the server log has the details</p>"),
            "{body}"
        );
        assert!(!body.contains("bad JSON"), "{body}");
    }

    #[test]
    fn text_is_escaped_for_html_and_urls() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_encode("fw 2.0&x=/é"), "fw%202.0%26x%3D%2F%C3%A9");
    }
}
