//! The one validation layer for text that enters through HTTP: whatever a client sends, the
//! answer is a 4xx with `{"error": ...}` naming what was refused, never a 500, and nothing the
//! two database engines would store differently (PostgreSQL refuses NUL in text, SQLite keeps
//! it) reaches a query.
//!
//! - Paths and query strings ([`refuse_hostile_uri`]): once percent-decoded, UTF-8 without
//!   control characters (U+0000-U+001F, U+007F), at most [`MAX_PATH_TEXT`] bytes.
//! - JSON bodies ([`ValidJson`]): `application/json`, well-formed, every string free of control
//!   characters and at most [`MAX_JSON_STRING`] bytes, then the handler's type (unknown
//!   fields, missing ones and wrong types refused by name).
//! - DM values (`crate::dm`): [`dm_text`] for what a device reports.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ServerError;

/// Longest decoded path or query string.
pub const MAX_PATH_TEXT: usize = 2048;
/// Longest string inside a JSON body.
pub const MAX_JSON_STRING: usize = 4096;

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Why a text is refused, if it is.
pub fn text_problem(text: &str, max: usize) -> Option<String> {
    if text.len() > max {
        return Some(format!("longer than {max} bytes"));
    }
    text.chars()
        .find(|c| c.is_control())
        .map(|c| format!("control character U+{:04X}", u32::from(c)))
}

/// Percent-decodes `raw` (a path or query string) to UTF-8.
fn decoded(raw: &str) -> Result<String, String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| "a malformed percent escape".to_owned())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "bytes that are not UTF-8".to_owned())
}

/// Refuses a request whose path or query string holds control characters, bytes that are not
/// UTF-8 or malformed escapes, once decoded (400, before any handler runs).
pub async fn refuse_hostile_uri(req: Request, next: Next) -> Response {
    let uri = req.uri();
    for (what, raw) in [("path", Some(uri.path())), ("query string", uri.query())] {
        let Some(raw) = raw else { continue };
        let problem = match decoded(raw) {
            Ok(text) => text_problem(&text, MAX_PATH_TEXT),
            Err(e) => Some(e),
        };
        if let Some(p) = problem {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the request's {what} holds {p}"),
            );
        }
    }
    next.run(req).await
}

/// Any refusal the framework answers as plain text (a path parameter of the wrong type, an
/// unknown route or method) becomes `{"error": ...}`, as every other API error is.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let plain = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("refused")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = error(status, message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// The first string in `v` (keys included) that [`text_problem`] refuses, with its JSON path.
fn json_problem(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) => text_problem(s, MAX_JSON_STRING).map(|p| format!("{path}: {p}")),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = json_problem(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            if let Some(p) = text_problem(k, MAX_JSON_STRING) {
                return Some(format!("{path}: a key with {p}"));
            }
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k);
            let found = json_problem(item, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// A JSON body through the validation layer: well-formed, strings checked, then read as `T`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ServerError> {
    let refused = |m: String| ServerError::BadRequest(format!("JSON body: {m}"));
    let value: Value = serde_json::from_slice(body).map_err(|e| refused(e.to_string()))?;
    if let Some(p) = json_problem(&value, &mut String::new()) {
        return Err(refused(p));
    }
    serde_json::from_value(value).map_err(|e| refused(e.to_string()))
}

/// A JSON body checked by the validation layer, then read as `T`.
pub struct ValidJson<T>(pub T);

/// Why a JSON body was refused: its status and message, answered as `{"error": ...}`.
pub struct BodyRefused(StatusCode, String);

impl From<ServerError> for BodyRefused {
    fn from(e: ServerError) -> Self {
        BodyRefused(e.status(), e.public_message())
    }
}

impl IntoResponse for BodyRefused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ValidJson<T> {
    type Rejection = BodyRefused;

    async fn from_request(req: Request, state: &S) -> Result<Self, BodyRefused> {
        let media = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        // The body is read (within the route's limit) even when refused: the connection then
        // stays usable for the client's next request.
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|e| BodyRefused(e.status(), format!("request body: {}", e.body_text())))?;
        if media != "application/json" {
            return Err(ServerError::UnsupportedMedia(format!(
                "Content-Type {media:?}: this route takes application/json"
            ))
            .into());
        }
        Ok(ValidJson(parse_json(&body)?))
    }
}

/// A value a device reports (DevInfo, DevDetail), as stored: `None` when it holds control
/// characters or runs over `max` bytes (the device's report is then ignored, with a warning).
pub fn dm_text(field: &str, value: &str, max: usize) -> Option<String> {
    match text_problem(value, max) {
        None => Some(value.to_owned()),
        Some(p) => {
            tracing::warn!(field, problem = %p, "device value not stored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_refuses_what_no_engine_stores_alike() {
        assert_eq!(decoded("/devices/a%20b").unwrap(), "/devices/a b");
        assert!(text_problem(&decoded("/devices/a%00b").unwrap(), 99).is_some());
        assert!(decoded("/devices/%ff").is_err());
        assert!(decoded("/devices/%zz").is_err());
        assert!(decoded("/devices/%4").is_err());
        assert_eq!(
            text_problem("ok\u{7f}", 99).unwrap(),
            "control character U+007F"
        );
        assert_eq!(text_problem("abcd", 3).unwrap(), "longer than 3 bytes");
        assert_eq!(text_problem("é ok", 99), None);
    }

    #[test]
    fn json_problems_are_named_by_their_path() {
        let v: Value = serde_json::json!({"a": [{"b": "x"}, {"b": "y\u{0}"}]});
        assert_eq!(
            json_problem(&v, &mut String::new()).unwrap(),
            "a[1].b: control character U+0000"
        );
        let v: Value = serde_json::json!({"k\u{1}": 1});
        assert!(
            json_problem(&v, &mut String::new())
                .unwrap()
                .contains("a key")
        );
        let v: Value = serde_json::json!({"fine": ["a", 1, true, null]});
        assert_eq!(json_problem(&v, &mut String::new()), None);
    }
}
