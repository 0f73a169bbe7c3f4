//! Serving connections with limits: no client holds a connection, a task or memory longer than
//! the limits allow, whatever it sends or fails to send.
//!
//! - **Header read** ([`ConnLimits::header_read`]): a request's headers must arrive within it.
//!   The same clock runs while a kept-alive connection waits for its next request, so it is
//!   also the idle timeout (HTTP/1.1, RFC 9112 §9.8 lets a server close an idle connection).
//! - **Body** ([`ConnLimits::body_idle`]): a request body that stops for longer than this
//!   fails its request (the connection then closes). It is a time between chunks, not a total,
//!   so a large upload over a slow but live link goes through.
//! - **Declared length**: a `Content-Length` over the route's body limit is answered 413
//!   before any handler runs. A body of at most [`DRAIN_MAX`] is read and dropped first (a
//!   client that sends before it reads then sees the answer, not a reset); further over, the
//!   answer comes at once, unread, and the connection closes.
//! - **Connections** ([`ConnLimits::max_connections`]): at the cap the server stops accepting
//!   until one closes; new clients wait in the listen backlog.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};

/// The address a request's connection comes from (a request extension): the source of what
/// the server records about clients that did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// The connection limits ([`crate::ServerConfig`]: `header_read_timeout_secs`,
/// `body_idle_timeout_secs`, `max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Time for a request's headers, and for the next request on a kept-alive connection.
    pub header_read: Duration,
    /// Longest pause inside a request body.
    pub body_idle: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_read: Duration::from_secs(10),
            body_idle: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// The largest body a request to `path` may declare: the package upload and the bulk
/// registration take more than the DM and API requests (the routes' own limits say the same).
pub fn body_limit(path: &str, max_body: usize, max_package: usize) -> usize {
    if path == "/api/v1/packages" {
        crate::packages::upload_body_limit(max_package)
    } else if path == "/api/v1/devices/bulk" {
        crate::api::BULK_BODY_MAX
    } else {
        max_body
    }
}

/// The largest refused body still read (and dropped, at most this much memory) before the
/// 413: a larger one is answered at once and its connection closed.
const DRAIN_MAX: usize = 1024 * 1024;

/// Refuses a declared body over the route's limit before handling it (and, far over, before
/// reading it), and puts a pause limit on the body of every request.
pub async fn limit_bodies(
    axum::extract::State((max_body, max_package, body_idle)): axum::extract::State<(
        usize,
        usize,
        Duration,
    )>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = body_limit(req.uri().path(), max_body, max_package);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let req = req.map(|b| Body::new(tower_http::timeout::TimeoutBody::new(body_idle, b)));
    if let Some(n) = declared
        && n > limit as u64
    {
        let body = serde_json::json!({
            "error": format!("request body of {n} bytes declared; this route takes at most {limit}")
        });
        let mut resp = (StatusCode::PAYLOAD_TOO_LARGE, axum::Json(body)).into_response();
        if n <= DRAIN_MAX as u64 {
            // A small body: read and dropped (the pause limit still holds), so that a client
            // that sends its body before reading the answer sees the 413, not a reset.
            let _ = axum::body::to_bytes(req.into_body(), DRAIN_MAX).await;
        } else {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return resp;
    }
    next.run(req).await
}

/// Accepts connections from `listener` and serves `app` on each within `limits`, until
/// `shutdown` completes; then stops accepting, lets each connection finish the request it is
/// in, and returns once all are closed.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send,
) where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (io, peer) = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                tower::ServiceExt::oneshot(app.clone(), req)
            },
        ));
        let builder = builder.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            // Only that the server stops matters: the Ref the wait gives is not held across
            // an await (it is not Send).
            let stopping = async move { stop.wait_for(|s| *s).await.is_ok() };
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                // A client that timed out, reset or sent garbage: its problem, not the server's.
                tracing::debug!(error = %e, "connection ended");
            }
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it closes.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}
