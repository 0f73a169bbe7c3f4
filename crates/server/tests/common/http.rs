//! The tests' HTTP client: ureq, the project's one HTTP client, behind the small async surface
//! the tests use (a request builder, `send().await`, a buffered response).
//!
//! ureq blocks, so each exchange runs on tokio's blocking pool (`spawn_blocking`) and the test's
//! runtime keeps serving the server under test. Status codes are answers here, never errors:
//! only transport failures (refused connection, TLS handshake, malformed reply) are `Err`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;
pub use ureq::http::{HeaderMap, Method, StatusCode};

/// Largest response body a test reads (package downloads are well below it).
const BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// A transport failure; HTTP statuses are not errors (see the module docs).
pub type Error = ureq::Error;

/// An HTTP client; cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with ureq's default trust roots (none of the tests' certificates).
    pub fn new() -> Self {
        Self::with_tls(ureq::tls::TlsConfig::default())
    }

    /// A client that trusts only the CA certificates in `ca_pem`.
    pub fn trusting(ca_pem: &[u8]) -> Self {
        let roots: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
            .filter_map(|item| match item.unwrap() {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        assert!(!roots.is_empty(), "no certificate in the CA file");
        Self::with_tls(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build(),
        )
    }

    fn with_tls(tls: ureq::tls::TlsConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Only loopback servers are reached: never through a proxy from the environment.
            .proxy(None)
            .tls_config(tls)
            .build()
            .new_agent();
        Self { agent }
    }

    pub fn request(&self, method: Method, url: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            agent: self.agent.clone(),
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn get(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    pub fn post(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    pub fn put(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    pub fn delete(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }
}

/// `GET url` with a fresh client.
pub async fn get(url: impl Into<String>) -> Result<Response, Error> {
    Client::new().get(url).send().await
}

/// One request being put together.
pub struct RequestBuilder {
    agent: ureq::Agent,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl RequestBuilder {
    pub fn header(mut self, name: impl Display, value: impl Display) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn bearer_auth(self, token: impl Display) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn json(self, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap();
        self.header("content-type", "application/json").body(body)
    }

    pub fn multipart(self, form: Form) -> Self {
        let (content_type, body) = form.encode();
        self.header("content-type", content_type).body(body)
    }

    /// Sends the request and reads the whole answer.
    pub async fn send(self) -> Result<Response, Error> {
        tokio::task::spawn_blocking(move || self.send_blocking())
            .await
            .expect("the HTTP exchange panicked")
    }

    fn send_blocking(self) -> Result<Response, Error> {
        let mut builder = ureq::http::Request::builder()
            .method(self.method.clone())
            .uri(&self.url);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        // A method that carries a body gets an explicit one even when empty: sent chunked, a
        // body the server does not read (it answers 401 or 405 first) would poison the next
        // request on the kept-alive connection.
        let answer = match (self.body, &self.method) {
            (Some(body), _) => self.agent.run(builder.body(body)?),
            (None, &Method::POST | &Method::PUT | &Method::PATCH) => {
                self.agent.run(builder.body(Vec::<u8>::new())?)
            }
            (None, _) => self.agent.run(builder.body(())?),
        }?;
        let (parts, mut body) = answer.into_parts();
        let body = body.with_config().limit(BODY_LIMIT).read_to_vec()?;
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A response with its body already read.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub async fn bytes(self) -> Result<Vec<u8>, Error> {
        Ok(self.body)
    }

    pub async fn text(self) -> Result<String, std::string::FromUtf8Error> {
        String::from_utf8(self.body)
    }

    pub async fn json<T: DeserializeOwned>(self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A `multipart/form-data` body (RFC 7578): named parts of raw bytes, as the package upload
/// takes them.
#[derive(Default)]
pub struct Form {
    parts: Vec<(String, Part)>,
}

/// One part of a [`Form`].
pub struct Part {
    bytes: Vec<u8>,
    file_name: Option<String>,
}

impl Part {
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            bytes: bytes.into(),
            file_name: None,
        }
    }

    pub fn file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }
}

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn part(mut self, name: impl Into<String>, part: Part) -> Self {
        self.parts.push((name.into(), part));
        self
    }

    /// The content type (with its boundary) and the encoded body.
    pub fn encode(self) -> (String, Vec<u8>) {
        // The boundary must not occur in any part (RFC 2046 §5.1.1): lengthen it until it does not.
        let mut boundary = String::from("simfota-test-boundary");
        while self.parts.iter().any(|(_, p)| {
            p.bytes
                .windows(boundary.len())
                .any(|w| w == boundary.as_bytes())
        }) {
            boundary.push('x');
        }
        let mut body = Vec::new();
        for (name, part) in &self.parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            let disposition = match &part.file_name {
                Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
                None => format!("form-data; name=\"{name}\""),
            };
            body.extend_from_slice(
                format!("content-disposition: {disposition}\r\n\r\n").as_bytes(),
            );
            body.extend_from_slice(&part.bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={boundary}"), body)
    }
}

/// POSTs an oversized `body` the way a streaming client does: the body is written on one
/// thread while the answer is read on another, so a server that refuses the request before
/// reading it all (413) is heard even though it stops reading. Plain HTTP only.
pub async fn post_oversized(url: &str, content_type: &str, body: Vec<u8>) -> StatusCode {
    use std::io::{Read, Write};
    let url = url.to_owned();
    let content_type = content_type.to_owned();
    tokio::task::spawn_blocking(move || {
        let rest = url.strip_prefix("http://").expect("a plain http URL");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        let head = format!(
            "POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let mut writer = stream.try_clone().unwrap();
        let sending = std::thread::spawn(move || {
            // The server may close before the end: a write error is its refusal, not ours.
            let _ = writer
                .write_all(head.as_bytes())
                .and_then(|()| writer.write_all(&body));
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let _ = sending.join();
        let line = String::from_utf8_lossy(&answer);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {line:?}"));
        StatusCode::from_u16(code).unwrap()
    })
    .await
    .unwrap()
}
