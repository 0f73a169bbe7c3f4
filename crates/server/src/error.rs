//! The server's error type and how each error shows on the HTTP surface.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can stop the server from starting or a request from being served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A configuration value or file was refused.
    #[error("configuration: {0}")]
    Config(String),
    /// A file or folder the server needs could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the server was doing.
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address from `--listen`.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS certificate or key refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The database cannot be reached right now (connection refused, pool timed out, ...).
    /// Requests answer 503 and the server keeps trying: this is not fatal.
    #[error("the database is unavailable: {0}")]
    DbUnavailable(String),
    /// The database answered with an error that is not about reachability.
    #[error("database error: {0}")]
    Db(String),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// The request is malformed or names something that is not acceptable.
    #[error("{0}")]
    BadRequest(String),
    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state (duplicate, wrong state for the action).
    #[error("{0}")]
    Conflict(String),
    /// No valid operator API token.
    #[error("a valid API token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    /// A signature, certificate or chain check failed.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The body is larger than the configured limit.
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
}

impl ServerError {
    /// Wraps an I/O error with what was being done and on which path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::DbUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) | Self::Verification(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Config(_)
            | Self::Io { .. }
            | Self::Listen { .. }
            | Self::Tls(_)
            | Self::Db(_)
            | Self::Migrate(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for ServerError {
    fn from(e: sqlx::Error) -> Self {
        // Reachability problems are transient: they map to 503 so clients retry, and the pool
        // reconnects by itself when the database is back.
        match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::DbUnavailable(e.to_string()),
            sqlx::Error::Database(db) => {
                // PostgreSQL class 08 (connection exception) and 57P0x (admin/crash shutdown).
                let code = db.code().unwrap_or_default();
                // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6) and their extended codes, after
                // the busy timeout ran out: another process holds the lock; try again later.
                let sqlite_busy =
                    code.len() < 5 && code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
                if code.starts_with("08") || code.starts_with("57P0") || sqlite_busy {
                    Self::DbUnavailable(e.to_string())
                } else {
                    Self::Db(e.to_string())
                }
            }
            _ => Self::Db(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for ServerError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => match Self::from(inner) {
                Self::DbUnavailable(m) => Self::DbUnavailable(m),
                other => Self::Migrate(other.to_string()),
            },
            other => Self::Migrate(other.to_string()),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let body = serde_json::json!({ "error": self.to_string() });
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("2"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"simfota\""),
            );
        }
        resp
    }
}

/// Result alias for the server.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
