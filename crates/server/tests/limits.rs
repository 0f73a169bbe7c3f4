//! Connection limits against slow and stalled clients (`simfota_server::ConnLimits`): they are
//! closed once their time is up, an over-long declared body is refused before it is read, the
//! connection cap holds, and normal requests are served all the while.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Env, Server};
use simfota_server::ConnLimits;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn start(env: &Env, limits: ConnLimits) -> Server {
    let mut config = env.config("data");
    config.conn_limits = limits;
    Server::start(config).await
}

fn addr(s: &Server) -> std::net::SocketAddr {
    s.running.local_addr()
}

/// Reads until the server closes the connection (or resets it); the bytes it sent.
async fn until_closed(mut conn: TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A plain request on a fresh connection, as a load balancer's health check would.
async fn healthz(s: &Server) -> u16 {
    common::http::get(format!("{}/healthz", s.url))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_closed_on_time_while_others_are_served() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let limits = ConnLimits {
        header_read: Duration::from_secs(1),
        body_idle: Duration::from_secs(1),
        max_connections: 256,
    };
    let s = start(&env, limits).await;
    let started = Instant::now();
    let mut held = Vec::new();
    // Idle: connected, nothing sent.
    for _ in 0..40 {
        held.push(("idle", TcpStream::connect(addr(&s)).await.unwrap()));
    }
    // Headers started, never finished.
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"POST /dm HTTP/1.1\r\nHost: x\r\nContent-Type: app")
            .await
            .unwrap();
        held.push(("partial headers", c));
    }
    // A body declared and never sent.
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(
            b"POST /dm HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.syncml.dm+xml\r\n\
              Content-Length: 4000\r\n\r\n<SyncML>",
        )
        .await
        .unwrap();
        held.push(("stalled body", c));
    }
    // A kept-alive connection after one answered request.
    for _ in 0..40 {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(("kept alive", c));
    }
    // Meanwhile, normal requests are served at once.
    for _ in 0..5 {
        assert_eq!(healthz(&s).await, 200);
    }
    assert!(
        started.elapsed() < limits.header_read,
        "served while 160 slow connections are held"
    );
    // Every slow connection is closed by the server, none long after its limit.
    let waits = held
        .into_iter()
        .map(|(kind, c)| async move { (kind, until_closed(c, Duration::from_secs(10)).await) });
    for (kind, closed) in futures_join_all(waits).await {
        let got = closed.unwrap_or_else(|| panic!("a {kind} connection was not closed"));
        if kind == "kept alive" {
            assert!(got.starts_with(b"HTTP/1.1 200"), "{kind}");
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "closed after {took:?}, limits of 1 s"
    );
    assert_eq!(healthz(&s).await, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_is_refused_before_the_body() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let s = start(&env, ConnLimits::default()).await;
    for (path, ct) in [
        ("/dm", "application/vnd.syncml.dm+xml"),
        ("/api/v1/devices", "application/json"),
        ("/api/v1/packages", "multipart/form-data; boundary=x"),
    ] {
        let mut c = TcpStream::connect(addr(&s)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: {ct}\r\nContent-Length: 1073741824\r\n\r\n",
            s.token
        );
        c.write_all(head.as_bytes()).await.unwrap();
        // Nothing of the gigabyte is sent: the answer must not wait for it.
        let got = until_closed(c, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("{path}: no answer without the body"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 413"), "{path}: {text}");
        assert!(text.contains("\"error\""), "{path}: {text}");
        assert!(text.contains("1073741824"), "{path}: {text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_clients_back_until_a_connection_closes() {
    let Some(env) = Env::new(common::Engine::Sqlite).await else {
        return;
    };
    let limits = ConnLimits {
        header_read: Duration::from_secs(2),
        body_idle: Duration::from_secs(2),
        max_connections: 4,
    };
    let s = start(&env, limits).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr(&s)).await.unwrap());
    }
    // The fifth connection is not served while four are held ...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = TcpStream::connect(addr(&s)).await.unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut [0u8; 64])).await;
    assert!(early.is_err(), "answered beyond the cap: {early:?}");
    // ... and is, once the held ones are closed (by their timeout).
    let got = until_closed(fifth, Duration::from_secs(10)).await.unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    drop(idle);
    s.stop().await;
}

/// Awaits every future (the tests run a few hundred at once).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}
