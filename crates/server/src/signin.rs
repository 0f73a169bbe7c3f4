//! Dashboard sign-in: the API token never goes into a URL or a cookie.
//!
//! - `GET /ui/login` shows a form; `POST /ui/login` (the token in the form body) opens a
//!   session: a random id in an HttpOnly, SameSite=Strict cookie scoped to `/ui` (`Secure`
//!   under TLS or an https public URL), expiring after [`SESSION_TTL_MS`]. The database keeps
//!   only the id's SHA-256, tied to the token, so revoking the token ends its sessions.
//! - `POST /ui/logout` ends the session and clears the cookie.
//! - One-time sign-in links for tools: `POST /api/v1/ui/links` (bearer token) answers a URL
//!   `/ui/login/{code}` that opens a session once, within [`LINK_TTL_MS`]; a used or late link
//!   opens nothing. A code in a log is worth nothing after its minute.
//! - Cross-site requests: every POST under `/ui` must come from the dashboard's own origin
//!   (the `Origin` header, else `Referer`, names this host; OWASP's "verifying origin with
//!   standard headers"), on top of the SameSite=Strict cookie.
//! - `next` (where to go after signing in) is a dashboard path or nothing: no `..` segment, no
//!   `//`, no backslash, no scheme.

use axum::http::{HeaderMap, HeaderValue, header};
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "simfota_session";
/// How long a dashboard session lasts.
pub const SESSION_TTL_MS: i64 = 8 * 3600 * 1000;
/// How long a sign-in link may wait for its one use.
pub const LINK_TTL_MS: i64 = 60 * 1000;

fn random_id() -> String {
    use base64::Engine as _;
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

/// Opens a session for the token `token_id`; answers the cookie's value.
pub async fn open(db: &Db, token_id: i64) -> Result<String> {
    let id = random_id();
    let now = now_ms();
    // Expired sessions go when a new one opens: the table holds what is live.
    sqlx::query("DELETE FROM ui_sessions WHERE expires_ms < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query(
        "INSERT INTO ui_sessions (id_hash, token_id, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(digest(&id))
    .bind(token_id)
    .bind(now)
    .bind(now + SESSION_TTL_MS)
    .execute(db.pool())
    .await?;
    Ok(id)
}

/// Whether `id` is a live session whose token is not revoked.
pub async fn check(db: &Db, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 {
        return Err(ServerError::Unauthorized);
    }
    sqlx::query(
        "SELECT 1 AS ok FROM ui_sessions s JOIN api_tokens t ON t.id = s.token_id \
         WHERE s.id_hash = $1 AND s.expires_ms > $2 AND t.revoked = 0",
    )
    .bind(digest(id))
    .bind(now_ms())
    .fetch_optional(db.pool())
    .await?
    .map(|_| ())
    .ok_or(ServerError::Unauthorized)
}

/// Ends session `id` (nothing if it is not one).
pub async fn close(db: &Db, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM ui_sessions WHERE id_hash = $1")
        .bind(digest(id))
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Makes a one-time sign-in link for token `token_id`, landing on `next`; answers its code.
pub async fn create_link(db: &Db, token_id: i64, next: &str) -> Result<String> {
    let code = random_id();
    let now = now_ms();
    sqlx::query("DELETE FROM ui_links WHERE expires_ms < $1")
        .bind(now)
        .execute(db.pool())
        .await?;
    sqlx::query(
        "INSERT INTO ui_links (code_hash, token_id, next, expires_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(digest(&code))
    .bind(token_id)
    .bind(normalize_next(Some(next)).to_owned())
    .bind(now + LINK_TTL_MS)
    .execute(db.pool())
    .await?;
    Ok(code)
}

/// Uses the link `code` (once: it is gone afterwards); answers its token and landing page.
pub async fn use_link(db: &Db, code: &str) -> Result<(i64, String)> {
    if code.is_empty() || code.len() > 64 {
        return Err(ServerError::Unauthorized);
    }
    let row = sqlx::query(
        "DELETE FROM ui_links WHERE code_hash = $1 AND expires_ms > $2 RETURNING token_id, next",
    )
    .bind(digest(code))
    .bind(now_ms())
    .fetch_optional(db.pool())
    .await?
    .ok_or(ServerError::Unauthorized)?;
    Ok((row.i64("token_id")?, row.text("next")?))
}

/// `next` when it is a dashboard path, else `/ui`.
pub fn normalize_next(next: Option<&str>) -> &str {
    let Some(n) = next else { return "/ui" };
    let ok = n.len() <= 200
        && (n == "/ui" || n.starts_with("/ui/"))
        && !n.contains("//")
        && !n.split('/').any(|seg| seg == ".." || seg == ".")
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if ok { n } else { "/ui" }
}

/// The session id the request's cookie carries, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(SESSION_COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
}

/// `Set-Cookie` for session `id` (empty and expired: clears it).
pub fn set_cookie(state: &AppState, id: Option<&str>) -> HeaderValue {
    let secure = state.config.tls.is_some()
        || state
            .config
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
    let (value, age) = match id {
        Some(id) => (id, SESSION_TTL_MS / 1000),
        None => ("", 0),
    };
    let text = format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("simfota_session="))
}

/// Whether a state-changing request comes from the dashboard's own origin: its `Origin`
/// header (else its `Referer`) names the host the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok());
    let Some(from) = from else { return false };
    let Some(rest) = from
        .strip_prefix("https://")
        .or_else(|| from.strip_prefix("http://"))
    else {
        return false;
    };
    rest.split('/').next() == Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_dashboard() {
        for good in ["/ui", "/ui/devices/490154203237518", "/ui/campaigns/3"] {
            assert_eq!(normalize_next(Some(good)), good);
        }
        for bad in [
            "/ui/../../evil",
            "/ui/./x",
            "//evil.example/ui",
            "/ui//evil",
            "https://evil.example/ui",
            "/uix",
            "/evil",
            "/ui/\\evil",
            "/ui/a?b=c",
            "",
        ] {
            assert_eq!(normalize_next(Some(bad)), "/ui", "{bad}");
        }
        assert_eq!(normalize_next(None), "/ui");
    }

    #[test]
    fn only_the_own_origin_may_post() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        assert!(same_origin(&h(&[
            ("host", "dm:8443"),
            ("origin", "https://dm:8443")
        ])));
        assert!(same_origin(&h(&[
            ("host", "dm:8443"),
            ("referer", "http://dm:8443/ui/login")
        ])));
        assert!(!same_origin(&h(&[
            ("host", "dm:8443"),
            ("origin", "https://evil")
        ])));
        assert!(!same_origin(&h(&[("host", "dm:8443"), ("origin", "null")])));
        assert!(!same_origin(&h(&[("host", "dm:8443")])));
        assert!(!same_origin(&h(&[
            ("host", "dm"),
            ("origin", "https://dm.evil")
        ])));
    }
}
