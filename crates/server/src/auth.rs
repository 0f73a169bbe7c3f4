//! Operator API tokens: bearer tokens whose SHA-256 is stored, never the token itself, each
//! with a [`Role`]; and the audit log of what operators did ([`record`]).
//!
//! [`authenticate`] runs in front of every `/api/v1` route: it finds the token once, checks
//! its role against the route ([`required_role`]), hands the [`Operator`] to the handler, and
//! records every state-changing request (who, what, the answer, when, from where).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};

/// The prefix of every token, so that a leaked one is recognisable in a secret scanner.
const PREFIX: &str = "sft_";

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What a token may do. Each role may do what the ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything (the API's GETs, the dashboard).
    Viewer,
    /// Runs the fleet: devices, groups, cards, packages, campaigns.
    Operator,
    /// Also manages API tokens and relays issuer admin commands to cards.
    Admin,
}

impl Role {
    /// The role's name as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// A stored or typed name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(ServerError::BadRequest(format!(
                "role must be viewer, operator or admin, not {other:?}"
            ))),
        }
    }
}

/// The role a request to `/api/v1{path}` needs.
pub fn required_role(method: &Method, path: &str) -> Role {
    let admin_only = path == "/tokens"
        || path.starts_with("/tokens/")
        || (method == Method::POST && path.starts_with("/cards/") && path.ends_with("/admin"));
    if admin_only {
        Role::Admin
    } else if path == "/audit" {
        Role::Operator
    } else if matches!(*method, Method::GET | Method::HEAD) || path == "/ui/links" {
        Role::Viewer
    } else {
        Role::Operator
    }
}

/// Creates a new token named `name` with `role`, stores its hash and returns the token (shown
/// once).
pub async fn create_token(db: &Db, name: &str, role: Role) -> Result<String> {
    create_token_with_id(db, name, role).await.map(|(_, t)| t)
}

/// [`create_token`], answering the new token's id beside it.
pub async fn create_token_with_id(db: &Db, name: &str, role: Role) -> Result<(i64, String)> {
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(ServerError::BadRequest(
            "token name: 1 to 100 bytes, no control characters".into(),
        ));
    }
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let token = format!("{PREFIX}{}", hex::encode(raw));
    let row = sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, revoked, created_ms, role) \
         VALUES ($1, $2, 0, $3, $4) RETURNING id",
    )
    .bind(name.to_owned())
    .bind(hash(&token))
    .bind(now_ms())
    .bind(role.name())
    .fetch_one(db.pool())
    .await?;
    Ok((row.i64("id")?, token))
}

/// An API token as listed (never the token itself).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Created (Unix ms).
    pub created_ms: i64,
    /// Revoked: it opens nothing any more.
    pub revoked: bool,
}

/// Every token, oldest first.
pub async fn list_tokens(db: &Db) -> Result<Vec<TokenInfo>> {
    let rows =
        sqlx::query("SELECT id, name, role, created_ms, revoked FROM api_tokens ORDER BY id")
            .fetch_all(db.pool())
            .await?;
    rows.iter().map(token_from_row).collect()
}

fn token_from_row(r: &sqlx::any::AnyRow) -> Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.i64("id")?,
        name: r.text("name")?,
        role: Role::parse(&r.text("role")?)?,
        created_ms: r.i64("created_ms")?,
        revoked: r.i64("revoked")? != 0,
    })
}

/// The orders of the token list besides `id`.
pub static TOKEN_SORTS: [crate::listing::SortField; 1] = [crate::listing::SortField {
    name: "name",
    expr: "t.name",
    text: true,
}];

/// A page of tokens.
pub async fn page_tokens(
    db: &Db,
    keys: &crate::listing::Keyset,
) -> Result<crate::listing::Page<TokenInfo>> {
    let rows = crate::listing::Filters::default()
        .fetch(
            &mut *db.conn().await?,
            keys,
            "SELECT t.id, t.name, t.role, t.created_ms, t.revoked FROM api_tokens t",
            "t.id",
        )
        .await?;
    keys.page(rows, token_from_row)
}

/// A page of the audit log (newest first by default), of entries older than id `before`
/// when given (the paging of earlier releases, kept beside the cursor).
pub async fn page_audit(
    db: &Db,
    keys: &crate::listing::Keyset,
    before: Option<i64>,
) -> Result<crate::listing::Page<AuditEntry>> {
    let mut f = crate::listing::Filters::default();
    f.opt("a.id < ?", before.map(crate::listing::Arg::Int));
    let rows = f
        .fetch(
            &mut *db.conn().await?,
            keys,
            "SELECT a.id, a.created_ms, a.token_id, a.token_name, a.role, a.action, a.status, \
             a.source FROM audit_log a",
            "a.id",
        )
        .await?;
    keys.page(rows, audit_from_row)
}

/// Revokes the live token with id `id_or_name` or, when it is not a number, the live tokens
/// of that name; the last live admin token cannot go (nobody could manage tokens any more).
/// Answers how many were revoked.
pub async fn revoke(db: &Db, id_or_name: &str) -> Result<u64> {
    let tokens = list_tokens(db).await?;
    let chosen: Vec<&TokenInfo> = tokens
        .iter()
        .filter(|t| !t.revoked)
        .filter(|t| match id_or_name.parse::<i64>() {
            Ok(id) => t.id == id,
            Err(_) => t.name == id_or_name,
        })
        .collect();
    if chosen.is_empty() {
        return Err(ServerError::NotFound(format!("live token {id_or_name}")));
    }
    let admins_left = tokens
        .iter()
        .filter(|t| !t.revoked && t.role == Role::Admin && !chosen.iter().any(|c| c.id == t.id))
        .count();
    if admins_left == 0 {
        return Err(ServerError::Conflict(
            "that would revoke the last admin token; create another admin token first".into(),
        ));
    }
    for t in &chosen {
        sqlx::query("UPDATE api_tokens SET revoked = 1 WHERE id = $1")
            .bind(t.id)
            .execute(db.pool())
            .await?;
    }
    Ok(chosen.len() as u64)
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Id (grows with time).
    pub id: i64,
    /// When (Unix ms).
    pub created_ms: i64,
    /// The token that acted (`None` for a request without a valid token).
    pub token_id: Option<i64>,
    /// Its name (`-` for a request without a valid token).
    pub token_name: String,
    /// Its role then.
    pub role: String,
    /// What: `METHOD /path`, or a dashboard action.
    pub action: String,
    /// The HTTP status it was answered with.
    pub status: i64,
    /// From where: the peer address.
    pub source: String,
}

/// Records an action of `who` (`None`: no valid token) answered `status`.
pub async fn record(
    db: &Db,
    who: Option<&Operator>,
    action: &str,
    status: u16,
    source: Option<std::net::SocketAddr>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (created_ms, token_id, token_name, role, action, status, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(who.map(|o| o.token_id))
    .bind(who.map_or("-".to_owned(), |o| o.token_name.clone()))
    .bind(who.map_or("-", |o| o.role.name()))
    .bind(action.chars().take(300).collect::<String>())
    .bind(i64::from(status))
    .bind(source.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string()))
    .execute(db.pool())
    .await?;
    Ok(())
}

/// Records a dashboard action (sign-in, sign-out) of the token `token_id`.
pub async fn record_dashboard(
    state: &AppState,
    token_id: i64,
    action: &str,
    status: u16,
    peer: Option<std::net::SocketAddr>,
) {
    let who = sqlx::query("SELECT name, role FROM api_tokens WHERE id = $1")
        .bind(token_id)
        .fetch_optional(state.db.pool())
        .await
        .ok()
        .flatten()
        .and_then(|r| {
            Some(Operator {
                token_id,
                token_name: r.text("name").ok()?,
                role: Role::parse(&r.text("role").ok()?).ok()?,
            })
        });
    audit_quietly(state, who.as_ref(), action, status, peer).await;
}

/// [`record`], a failure logged (the action itself is done and answered).
pub async fn audit_quietly(
    state: &AppState,
    who: Option<&Operator>,
    action: &str,
    status: u16,
    peer: Option<std::net::SocketAddr>,
) {
    if let Err(e) = record(&state.db, who, action, status, peer).await {
        tracing::warn!(error = %e, %action, "audit entry not recorded");
    }
}

/// The newest `limit` entries (1 to 1000) before id `before` (all when `None`), newest first.
pub async fn audit(db: &Db, limit: i64, before: Option<i64>) -> Result<Vec<AuditEntry>> {
    let rows = sqlx::query(
        "SELECT id, created_ms, token_id, token_name, role, action, status, source FROM audit_log \
         WHERE id < $1 ORDER BY id DESC LIMIT $2",
    )
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit.clamp(1, 1000))
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(audit_from_row).collect()
}

fn audit_from_row(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.i64("id")?,
        created_ms: r.i64("created_ms")?,
        token_id: r.opt_i64("token_id")?,
        token_name: r.text("token_name")?,
        role: r.text("role")?,
        action: r.text("action")?,
        status: r.i64("status")?,
        source: r.text("source")?,
    })
}

/// Whether any token exists (first run creates one).
pub async fn any_token(db: &Db) -> Result<bool> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens")
        .fetch_one(db.pool())
        .await?;
    Ok(row.i64("n")? > 0)
}

/// On first run, creates a token named `initial` and writes it to `DATA/api-token` (mode 0600):
/// the operator (or the demo) reads it from there. The token itself is never logged.
pub async fn ensure_initial_token(db: &Db, data_dir: &std::path::Path) -> Result<()> {
    if any_token(db).await? {
        return Ok(());
    }
    let token = create_token(db, "initial", Role::Admin).await?;
    let path = data_dir.join("api-token");
    write_private(&path, format!("{token}\n").as_bytes())?;
    tracing::info!(path = %path.display(), "created the first operator API token");
    Ok(())
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| ServerError::io("cannot write", path, e))?;
    f.write_all(bytes)
        .map_err(|e| ServerError::io("cannot write", path, e))
}

/// Checks an operator token; answers its name.
pub async fn check_token(db: &Db, token: &str) -> Result<String> {
    token_id(db, token).await.map(|(_, name)| name)
}

/// The id and name of a valid (not revoked) operator token.
pub async fn token_id(db: &Db, token: &str) -> Result<(i64, String)> {
    if !token.starts_with(PREFIX) || token.len() > 128 {
        return Err(ServerError::Unauthorized);
    }
    let row = sqlx::query("SELECT id, name FROM api_tokens WHERE token_hash = $1 AND revoked = 0")
        .bind(hash(token))
        .fetch_optional(db.pool())
        .await?
        .ok_or(ServerError::Unauthorized)?;
    Ok((row.i64("id")?, row.text("name")?))
}

/// An authenticated operator (extractor): present on every `/api/v1` handler but the OpenAPI
/// document, put there by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Operator {
    /// The token's id.
    pub token_id: i64,
    /// The token's name.
    pub token_name: String,
    /// The token's role.
    pub role: Role,
}

/// The operator a request's bearer token names.
async fn bearer(state: &AppState, headers: &HeaderMap) -> Result<Operator> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ServerError::Unauthorized)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or(ServerError::Unauthorized)?
        .trim();
    if !token.starts_with(PREFIX) || token.len() > 128 {
        return Err(ServerError::Unauthorized);
    }
    // The lookup is by hash, so the comparison never runs over the secret itself.
    let row =
        sqlx::query("SELECT id, name, role FROM api_tokens WHERE token_hash = $1 AND revoked = 0")
            .bind(hash(token))
            .fetch_optional(state.db.pool())
            .await?
            .ok_or(ServerError::Unauthorized)?;
    Ok(Operator {
        token_id: row.i64("id")?,
        token_name: row.text("name")?,
        role: Role::parse(&row.text("role")?)?,
    })
}

/// In front of every `/api/v1` route but the OpenAPI document: the token, its role against the
/// route, and an audit entry for every request that changes state (refused ones included).
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/openapi.json" {
        return next.run(req).await;
    }
    let method = req.method().clone();
    // A method the route does not serve is answered 405 by the router, token or not.
    let served = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().trim_start_matches("/api/v1").to_owned())
        .is_some_and(|m| {
            crate::api::document()
                .paths
                .paths
                .get(&m)
                .is_some_and(|item| operation_of(item, &method))
        });
    if !served {
        return next.run(req).await;
    }
    let changes = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let peer = req
        .extensions()
        .get::<crate::http::serve::Peer>()
        .map(|p| p.0);
    let action = format!("{method} /api/v1{path}");
    let op = match bearer(&state, req.headers()).await {
        Ok(op) => op,
        Err(e) => {
            let resp = e.into_response();
            if changes {
                audit_quietly(&state, None, &action, resp.status().as_u16(), peer).await;
            }
            return resp;
        }
    };
    let need = required_role(&method, &path);
    let resp = if op.role < need {
        ServerError::Forbidden(format!(
            "token {:?} is {}; {action} needs {}",
            op.token_name,
            op.role.name(),
            need.name()
        ))
        .into_response()
    } else {
        req.extensions_mut().insert(op.clone());
        next.run(req).await
    };
    if changes {
        audit_quietly(&state, Some(&op), &action, resp.status().as_u16(), peer).await;
    }
    resp
}

/// Whether the document's path item has an operation for `method`.
fn operation_of(item: &utoipa::openapi::PathItem, method: &Method) -> bool {
    match *method {
        Method::GET | Method::HEAD => item.get.is_some(),
        Method::POST => item.post.is_some(),
        Method::PUT => item.put.is_some(),
        Method::DELETE => item.delete.is_some(),
        Method::PATCH => item.patch.is_some(),
        _ => false,
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self> {
        parts
            .extensions
            .get::<Operator>()
            .cloned()
            .ok_or(ServerError::Unauthorized)
    }
}
