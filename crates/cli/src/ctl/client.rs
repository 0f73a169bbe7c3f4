//! The one HTTP client of `ctl`: the bearer token on every request, the server's answers read
//! as JSON, list pages followed by their cursor, and every failure turned into one line that
//! names what was asked, the server, the HTTP status and the server's `{"error"}` message,
//! with its [`Class`].
//!
//! It is the device agent's HTTP stack (`ureq` on rustls with ring, the system's CA
//! certificates plus the CA file's, `simfota_device::download`), so TLS problems are named
//! the same way: an unknown issuer, a certificate for another host, an expired one.

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;
use simfota_device::download::{TlsProblem, TlsTrust, http_agent_with};
use ureq::http::Response;

use super::config::Settings;
use super::{Class, Failure, Paging, Result};

/// What `ctl` calls itself (the HTTP stack is the device agent's, which names the device).
const USER_AGENT: &str = concat!("simfota-ctl/", env!("CARGO_PKG_VERSION"));

/// The largest answer read (a page of 1000 devices, a card log, a proof bundle).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// A client for one server.
pub struct Client {
    base: String,
    token: String,
    token_file: PathBuf,
    agent: ureq::Agent,
}

/// One page of a list, or every page with `--all`.
pub struct Listed {
    /// The items, in the server's order.
    pub items: Vec<Value>,
    /// The cursor of the page after these, when more follow.
    pub next: Option<String>,
}

/// Percent-encodes a path segment or query value (RFC 3986 §2.3: unreserved characters stay).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (and `+` as a space) of a query value.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| (b as char).to_digit(16);
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `cursor` of the `rel="next"` target of a `Link` header (RFC 8288).
fn next_from_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        if !is_next {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let (_, query) = target.split_once('?')?;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("cursor="))
            .map(decode)
    })
}

impl Client {
    /// A client for the configured server, with the token read from its file and the CA file's
    /// certificates trusted.
    pub fn new(s: &Settings) -> Result<Client> {
        let base = s.server.as_ref().map(|x| x.value.clone()).ok_or_else(|| {
            Failure::usage(
                "no server: give --server URL, SIMFOTA_SERVER, or set it once with \
                 'simfota ctl config set server URL'",
            )
        })?;
        let token_file = s
            .token_file
            .as_ref()
            .map(|x| x.value.clone())
            .ok_or_else(|| {
                Failure::new(
                    Class::NotAllowed,
                    "no API token: give --token-file FILE, SIMFOTA_TOKEN_FILE, or set it once with \
                 'simfota ctl config set token-file FILE'",
                )
            })?;
        let token = std::fs::read_to_string(&token_file).map_err(|e| {
            Failure::new(
                Class::NotAllowed,
                format!("no API token: cannot read {}: {e}", token_file.display()),
            )
        })?;
        warn_if_others_read(&token_file);
        let token = token.trim().to_owned();
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Failure::new(
                Class::NotAllowed,
                format!(
                    "no API token: {} does not hold one token on one line",
                    token_file.display()
                ),
            ));
        }
        let trust = match &s.ca_file {
            Some(ca) => {
                TlsTrust::with_ca_file(&ca.value).map_err(|e| Failure::local(e.to_string()))?
            }
            None => TlsTrust::system(),
        };
        Ok(Client {
            base,
            token,
            token_file,
            agent: http_agent_with(&trust),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// `GET path` answered with JSON.
    pub fn get(&self, what: &str, path: &str) -> Result<Value> {
        let (_, body) = self.get_raw(what, path)?;
        parse(what, &body)
    }

    /// `GET path`: the answer's headers and text.
    pub fn get_raw(&self, what: &str, path: &str) -> Result<(ureq::http::HeaderMap, String)> {
        let r = self
            .agent
            .get(self.url(path))
            .header("Authorization", self.auth())
            .header("User-Agent", USER_AGENT)
            .header("Accept", "application/json")
            .call();
        self.finish(what, r)
    }

    /// A list: `limit`, `sort`, the filters given, one page from `--cursor`, or every page with
    /// `--all`.
    pub fn list(
        &self,
        what: &str,
        path: &str,
        filters: &[(&str, Option<String>)],
        paging: &Paging,
    ) -> Result<Listed> {
        let mut query: Vec<(String, String)> = filters
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| ((*k).to_owned(), v.clone())))
            .collect();
        if let Some(l) = paging.limit {
            query.push(("limit".into(), l.to_string()));
        }
        if let Some(s) = &paging.sort {
            query.push(("sort".into(), s.clone()));
        }
        let mut cursor = paging.cursor.clone();
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut q = query.clone();
            if let Some(c) = &cursor {
                q.push(("cursor".into(), c.clone()));
            }
            let qs: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            let full = if qs.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", qs.join("&"))
            };
            let (headers, body) = self.get_raw(what, &full)?;
            match parse(what, &body)? {
                Value::Array(page) => items.extend(page),
                _ => {
                    return Err(Failure::local(format!(
                        "{what}: {} answered something other than a list",
                        self.base
                    )));
                }
            }
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let next = header("x-next-cursor")
                .filter(|c| !c.is_empty())
                .or_else(|| header("link").and_then(|l| next_from_link(&l)));
            match next {
                Some(n) if paging.all => {
                    // A server that hands out a cursor twice would loop for ever.
                    if !seen.insert(n.clone()) {
                        return Err(Failure::local(format!(
                            "{what}: {} gave the same page cursor twice; stopped",
                            self.base
                        )));
                    }
                    cursor = Some(n);
                }
                next => return Ok(Listed { items, next }),
            }
        }
    }

    /// `POST path` with a JSON body, answered with JSON (`null` for an empty answer).
    pub fn post(&self, what: &str, path: &str, body: &Value) -> Result<Value> {
        let bytes = body.to_string().into_bytes();
        let r = self
            .agent
            .post(self.url(path))
            .header("Authorization", self.auth())
            .header("User-Agent", USER_AGENT)
            .header("Content-Type", "application/json")
            .send(&bytes[..]);
        let (_, text) = self.finish(what, r)?;
        parse(what, &text)
    }

    /// `POST path` with `len` bytes of `content_type` read from `body` as they are sent.
    pub fn post_stream(
        &self,
        what: &str,
        path: &str,
        content_type: &str,
        len: u64,
        body: &mut dyn Read,
    ) -> Result<Value> {
        let r = self
            .agent
            .post(self.url(path))
            .header("Authorization", self.auth())
            .header("User-Agent", USER_AGENT)
            .header("Content-Type", content_type)
            // A declared length: the server refuses an oversized upload before it is sent.
            .header("Content-Length", len.to_string())
            .send(ureq::SendBody::from_reader(body));
        let (_, text) = self.finish(what, r)?;
        parse(what, &text)
    }

    /// `DELETE path`.
    pub fn delete(&self, what: &str, path: &str) -> Result<()> {
        let r = self
            .agent
            .delete(self.url(path))
            .header("Authorization", self.auth())
            .header("User-Agent", USER_AGENT)
            .call();
        self.finish(what, r).map(drop)
    }

    /// Reads the answer; anything but 2xx becomes a [`Failure`] of its class.
    fn finish(
        &self,
        what: &str,
        r: std::result::Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<(ureq::http::HeaderMap, String)> {
        let mut resp = r.map_err(|e| self.unreachable(what, &e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| self.unreachable(what, &e))?;
        if (200..300).contains(&status) {
            return Ok((resp.headers().clone(), body));
        }
        Err(self.refused(what, status, &body))
    }

    fn unreachable(&self, what: &str, e: &ureq::Error) -> Failure {
        let message = match TlsProblem::of(e) {
            // The device's wording of this one names the device's configuration: say it for
            // `ctl`, whose own remedy follows.
            Some(TlsProblem::UnknownIssuer) => format!(
                "{what}: cannot reach {} securely: the server's certificate is not signed by a \
                 trusted CA (trust the server's CA with --ca FILE or 'simfota ctl config set \
                 ca-file FILE')",
                self.base
            ),
            Some(problem) => format!(
                "{what}: cannot reach {} securely: {problem} (trust the server's CA with --ca \
                 FILE or 'simfota ctl config set ca-file FILE')",
                self.base
            ),
            None => format!("{what}: cannot reach the server at {}: {e}", self.base),
        };
        Failure::new(Class::Unreachable, message)
    }

    fn refused(&self, what: &str, status: u16, body: &str) -> Failure {
        let reason = ureq::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let said = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        let said = super::render::clean(said.trim());
        let class = match status {
            404 => Class::NotFound,
            401 | 403 => Class::NotAllowed,
            409 => Class::Conflict,
            502..=504 => Class::Unreachable,
            _ => Class::Failed,
        };
        let hint = match status {
            401 => format!(
                " (the token in {} is not accepted: revoked or mistyped; an admin issues a new \
                 one with 'simfota ctl tokens issue')",
                self.token_file.display()
            ),
            503 => " (the server cannot serve now, e.g. its database is unreachable; try again)"
                .to_owned(),
            _ => String::new(),
        };
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        Failure::new(
            class,
            format!(
                "{what}: {} answered {status} {reason}{said}{hint}",
                self.base
            ),
        )
    }
}

/// A token file others can read hands them the operator's rights: say so (as ssh refuses such
/// a key; here the request still goes, the file may be on a share that shows wrong modes).
fn warn_if_others_read(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o044 != 0
    {
        errln!(
            "simfota: warning: the token file {} can be read by other users (chmod 600 {})",
            path.display(),
            path.display()
        );
    }
}

/// The JSON of an answer (`null` when it is empty, as after 204).
fn parse(what: &str, body: &str) -> Result<Value> {
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(body)
        .map_err(|e| Failure::local(format!("{what}: the answer is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_come_from_the_link_header() {
        assert_eq!(
            next_from_link(r#"</api/v1/devices?limit=2&cursor=abc%3D%3D>; rel="next""#).as_deref(),
            Some("abc==")
        );
        assert_eq!(next_from_link(r#"</x?cursor=a>; rel="prev""#), None);
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(decode("a%20b%2F%C3%A9"), "a b/é");
        assert_eq!(decode("100%"), "100%");
    }
}
