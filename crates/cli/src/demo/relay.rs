//! The network attacker of the replay step: an HTTP relay on loopback between the device and
//! the authorized DM server.
//!
//! The device's DM endpoint is the relay, which forwards every message to the real server
//! and every answer back, and keeps a copy of each delivery token it sees in the server's
//! `Replace` of `./FUMO/fw/Ext/DeliveryToken` (a passive eavesdropper). Once armed with a
//! captured token, it swaps the next token the server sends for that one. With
//! `syncml:auth-md5` (OMA DM Security 1.2 §5.3.1) the server's credential covers its name,
//! secret and nonce, not the message body, so the device cannot see the swap: only the card
//! can, because the token's one-time nonce was consumed when the card accepted it the first
//! time (design §4 step 5, R10).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use simfota_syncml::model::Command;
use simfota_syncml::{Encoding, Limits};
use tokio::sync::watch;

/// The FUMO node the server puts the delivery token in (docs/dm-tree.md).
pub const TOKEN_NODE: &str = "./FUMO/fw/Ext/DeliveryToken";

/// What the relay saw and did.
#[derive(Debug, Default)]
struct Tape {
    /// Every token seen, as it travelled (base64 text), in order.
    captured: Vec<Vec<u8>>,
    /// The token to put into the next answer that carries one.
    armed: Option<Vec<u8>>,
    /// Tokens swapped: (the server's, the one the device got instead).
    swaps: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone)]
struct Shared {
    upstream: String,
    tape: Arc<Mutex<Tape>>,
}

/// A running relay.
pub struct Relay {
    addr: SocketAddr,
    tape: Arc<Mutex<Tape>>,
    stop: watch::Sender<bool>,
}

impl Relay {
    /// Starts the relay on a free loopback port, forwarding to `upstream` (a base URL).
    pub async fn start(upstream: &str) -> Result<Relay> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot open the relay's port on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("cannot read the relay's address")?;
        let tape = Arc::new(Mutex::new(Tape::default()));
        let shared = Shared {
            upstream: format!("{}/dm", upstream.trim_end_matches('/')),
            tape: tape.clone(),
        };
        let app = Router::new()
            .route("/dm", axum::routing::post(forward))
            .with_state(shared);
        let (stop, mut stopped) = watch::channel(false);
        tokio::spawn(async move {
            // A failing relay shows as failed DM sessions in the step that uses it.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(Relay { addr, tape, stop })
    }

    /// The base URL the device is given.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn tape(&self) -> std::sync::MutexGuard<'_, Tape> {
        self.tape.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many tokens were captured so far.
    pub fn captured_count(&self) -> usize {
        self.tape().captured.len()
    }

    /// The token captured at position `i`.
    pub fn captured(&self, i: usize) -> Option<Vec<u8>> {
        self.tape().captured.get(i).cloned()
    }

    /// Puts `token` into the next answer that carries a token.
    pub fn arm(&self, token: Vec<u8>) {
        self.tape().armed = Some(token);
    }

    /// Disarms (if nothing was swapped) and answers how many swaps happened so far.
    pub fn disarm(&self) -> usize {
        let mut t = self.tape();
        t.armed = None;
        t.swaps.len()
    }

    /// Stops serving.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// `POST /dm`: forward, look at the answer, maybe swap the token, answer the device.
async fn forward(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let upstream = s.upstream.clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let hmac = headers
        .get(simfota_syncml::auth::HMAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sent = tokio::task::spawn_blocking(move || {
        let mut req = simfota_device::download::http_agent()
            .post(&upstream)
            .header("Content-Type", &content_type);
        if let Some(h) = &hmac {
            req = req.header(simfota_syncml::auth::HMAC_HEADER, h);
        }
        let mut r = req.send(&body[..]).map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = r.body_mut().read_to_vec().map_err(|e| e.to_string())?;
        Ok::<_, String>((status, ct, bytes))
    })
    .await;
    let (status, ct, bytes) = match sent {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return (StatusCode::BAD_GATEWAY, format!("relay: {e}\n")).into_response(),
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("relay: {e}\n")).into_response(),
    };
    let bytes = if status == 200 {
        tamper(&s.tape, &ct, bytes)
    } else {
        bytes
    };
    let mut resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        bytes,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// Captures the token in a server message and, when armed, replaces it. A message the
/// codec cannot read, or without a token, passes unchanged.
fn tamper(tape: &Mutex<Tape>, content_type: &str, bytes: Vec<u8>) -> Vec<u8> {
    let Some(encoding) = Encoding::from_content_type(content_type) else {
        return bytes;
    };
    let Ok(mut message) = encoding.decode(&bytes, &Limits::default()) else {
        return bytes;
    };
    let mut tape = tape.lock().unwrap_or_else(PoisonError::into_inner);
    let mut changed = false;
    visit(&mut message.body, &mut |data: &mut Vec<u8>| {
        tape.captured.push(data.clone());
        if let Some(replay) = tape.armed.take() {
            let original = std::mem::replace(data, replay.clone());
            tape.swaps.push((original, replay));
            changed = true;
        }
    });
    if !changed {
        return bytes;
    }
    // Re-encoding a message the codec decoded cannot fail for lack of a field; if it did,
    // the original goes through and the step reports that no swap happened.
    match encoding.encode(&message) {
        Ok(out) => out,
        Err(_) => {
            if let Some((_, replay)) = tape.swaps.pop() {
                tape.armed = Some(replay);
            }
            bytes
        }
    }
}

/// Calls `f` on the data of every `Replace` item targeting [`TOKEN_NODE`], also inside
/// `Atomic` and `Sequence` (SyncML RepPro 1.2 §6.6.1, §6.6.13).
fn visit(commands: &mut [Command], f: &mut dyn FnMut(&mut Vec<u8>)) {
    for c in commands {
        match c {
            Command::Replace(r) => {
                for item in &mut r.items {
                    let is_token = item.target.as_ref().is_some_and(|t| t.uri == TOKEN_NODE);
                    if let (true, Some(data)) = (is_token, item.data.as_mut()) {
                        f(&mut data.0);
                    }
                }
            }
            Command::Atomic(inner) | Command::Sequence(inner) => visit(&mut inner.commands, f),
            _ => {}
        }
    }
}
