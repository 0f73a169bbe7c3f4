//! Operator API tokens: bearer tokens whose SHA-256 is stored, never the token itself.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use rand_core::{OsRng, RngCore};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::db::{Db, RowExt, now_ms};
use crate::error::{Result, ServerError};

/// The prefix of every token, so that a leaked one is recognisable in a secret scanner.
const PREFIX: &str = "sft_";

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a new token named `name`, stores its hash and returns the token (shown once).
pub async fn create_token(db: &Db, name: &str) -> Result<String> {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let token = format!("{PREFIX}{}", hex::encode(raw));
    sqlx::query(
        "INSERT INTO api_tokens (name, token_hash, revoked, created_ms) VALUES ($1, $2, 0, $3)",
    )
    .bind(name.to_owned())
    .bind(hash(&token))
    .bind(now_ms())
    .execute(db.pool())
    .await?;
    Ok(token)
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
    let token = create_token(db, "initial").await?;
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
/// document.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The token's id.
    pub token_id: i64,
    /// The token's name.
    pub token_name: String,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ServerError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let header = parts
            .headers
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
            sqlx::query("SELECT id, name FROM api_tokens WHERE token_hash = $1 AND revoked = 0")
                .bind(hash(token))
                .fetch_optional(state.db.pool())
                .await?
                .ok_or(ServerError::Unauthorized)?;
        Ok(Self {
            token_id: row.i64("id")?,
            token_name: row.text("name")?,
        })
    }
}
