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
    DbUnavailable(sqlx::Error),
    /// The database could not be reached when the server started: its address (password
    /// hidden) and the cause, from one direct connection attempt.
    #[error("cannot reach the database at {url}: {cause}")]
    DbUnreachable {
        /// The database URL, its password redacted.
        url: String,
        /// What the connection attempt ran into.
        cause: String,
    },
    /// The database answered with an error that is not about reachability.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// Another request changed the same row first (optimistic concurrency lost, e.g. a device
    /// that repeated a DM message). Answers 503 so the client retries.
    #[error("{what} changed concurrently; retry")]
    Contended {
        /// What changed (e.g. `DM session 7`).
        what: String,
    },
    /// A signed object (delivery token, card log-read request) could not be built.
    #[error("cannot build the {what}: {source}")]
    Signing {
        /// The object being built.
        what: &'static str,
        /// The cause.
        source: simfota_wire::Error,
    },
    /// A dashboard page could not be rendered.
    #[error("dashboard template: {0}")]
    Template(#[from] askama::Error),
    /// Any other failure inside the server (stored data that does not decode, a response that
    /// cannot be built, ...): a bug or damaged data, never the client's fault.
    #[error("{what}: {source}")]
    Internal {
        /// What the server was doing or reading.
        what: &'static str,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(String),
    /// The request is malformed or names something that is not acceptable.
    #[error("{0}")]
    BadRequest(String),
    /// The request is understood and refused (a package URL the server did not sign).
    #[error("{0}")]
    Forbidden(String),
    /// The request's body is of a media type the route does not take.
    #[error("{0}")]
    UnsupportedMedia(String),
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

    /// Wraps any other failure inside the server with what was being done; `source` may be an
    /// error or a message.
    pub fn internal(
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            what,
            source: source.into(),
        }
    }

    /// Wraps a failure to build a signed object.
    pub fn signing(what: &'static str) -> impl Fn(simfota_wire::Error) -> Self + Copy {
        move |source| Self::Signing { what, source }
    }

    /// What an HTTP client is told. Client errors (4xx) say what was refused; server errors say
    /// only what kind of failure it was: database messages, file paths and internal details go
    /// to the log ([`IntoResponse`] writes them there), never into a response body.
    pub fn public_message(&self) -> String {
        match self {
            Self::DbUnavailable(_) | Self::DbUnreachable { .. } => {
                "the database is unavailable; retry later".into()
            }
            Self::Contended { .. } => self.to_string(),
            _ if self.status().is_server_error() => {
                "internal server error; the server log has the details".into()
            }
            _ => self.to_string(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::DbUnavailable(_) | Self::DbUnreachable { .. } | Self::Contended { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::BadRequest(_) | Self::Verification(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMedia(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Config(_)
            | Self::Io { .. }
            | Self::Listen { .. }
            | Self::Tls(_)
            | Self::Db(_)
            | Self::Migrate(_)
            | Self::Signing { .. }
            | Self::Template(_)
            | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
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
            | sqlx::Error::WorkerCrashed => Self::DbUnavailable(e),
            sqlx::Error::Database(db) => {
                // PostgreSQL class 08 (connection exception) and 57P0x (admin/crash shutdown).
                let code = db.code().unwrap_or_default();
                // SQLite: SQLITE_BUSY (5) / SQLITE_LOCKED (6) and their extended codes, after
                // the busy timeout ran out: another process holds the lock; try again later.
                let sqlite_busy =
                    code.len() < 5 && code.parse::<u32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6));
                if code.starts_with("08") || code.starts_with("57P0") || sqlite_busy {
                    Self::DbUnavailable(e)
                } else {
                    Self::Db(e)
                }
            }
            _ => Self::Db(e),
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
        let body = serde_json::json!({ "error": self.public_message() });
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ServerError) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = e.into_response();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        (
            status,
            headers,
            v["error"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[tokio::test]
    async fn an_internal_error_answers_500_with_a_generic_body() {
        let e = ServerError::internal("stored card key", "secret detail at /var/lib/simfota");
        let (status, _, body) = answer(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            body,
            "internal server error; the server log has the details"
        );
    }

    #[tokio::test]
    async fn a_database_error_is_logged_not_answered() {
        let e = ServerError::from(sqlx::Error::ColumnNotFound("card_pub".into()));
        assert!(matches!(e, ServerError::Db(sqlx::Error::ColumnNotFound(_))));
        let (status, _, body) = answer(e).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !body.contains("card_pub") && !body.contains("database"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_database_outage_answers_503_retry_after_without_its_message() {
        let e = ServerError::from(sqlx::Error::PoolTimedOut);
        assert!(matches!(
            e,
            ServerError::DbUnavailable(sqlx::Error::PoolTimedOut)
        ));
        let (status, headers, body) = answer(e).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[axum::http::header::RETRY_AFTER], "2");
        assert_eq!(body, "the database is unavailable; retry later");
    }

    #[tokio::test]
    async fn a_lost_concurrent_update_answers_503_and_says_so() {
        let e = ServerError::Contended {
            what: "DM session 7".into(),
        };
        let (status, headers, body) = answer(e).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key(axum::http::header::RETRY_AFTER));
        assert_eq!(body, "DM session 7 changed concurrently; retry");
    }

    #[tokio::test]
    async fn a_signing_failure_is_internal() {
        let e = ServerError::signing("delivery token")(simfota_wire::Error::InvalidField("iss"));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            e.to_string()
                .starts_with("cannot build the delivery token: ")
        );
        let (_, _, body) = answer(e).await;
        assert!(!body.contains("delivery token"), "{body}");
    }

    #[tokio::test]
    async fn client_errors_still_say_what_was_refused() {
        let (status, _, body) =
            answer(ServerError::BadRequest("imei: bad check digit".into())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "imei: bad check digit");
    }
}
