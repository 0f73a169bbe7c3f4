//! A DM server on loopback for the agent's tests, built on the protocol crate's server session:
//! real HTTP, real SyncML (XML or WBXML), real authentication. It plays the operator's script:
//! when an update is offered, it reads the card nonce, has a delivery token made for it,
//! replaces the token and the package URL, and Execs DownloadAndUpdate; it records the alerts
//! the device sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use base64::Engine as _;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::model::{Alert, Data};
use simfota_syncml::session::{CommandHandle, ServerConfig, ServerEvent, ServerSession};
use simfota_syncml::tree::NodeValue;
use simfota_syncml::uri::NodeUri;
use simfota_syncml::{AlertCode, Encoding, Limits};

pub type TokenMaker = Box<dyn Fn(&[u8]) -> Vec<u8> + Send>;

/// An update the operator offers in the next session.
pub struct Offer {
    pub envelope_url: String,
    pub correlator: String,
    pub make_token: TokenMaker,
}

#[derive(Default)]
pub struct Seen {
    /// Every alert the device sent (session alerts and Generic Alerts).
    pub alerts: Vec<Alert>,
    /// Codes of the statuses the device gave to our commands, by command name.
    pub statuses: Vec<(String, u16)>,
    /// Session ids seen, in order.
    pub sessions: Vec<String>,
    pub authenticated: u32,
}

pub struct DmState {
    pub offer: Option<Offer>,
    /// Offer the same update again in every session (a server that answers every result with
    /// another Exec).
    pub keep_offering: bool,
    /// Builds a signed log-read request for the card nonce; the next session relays it.
    pub log_read: Option<TokenMaker>,
    /// The card's answer to the log-read request (LogResponse), once received.
    pub log_response: Option<Vec<u8>>,
    log_handle: Option<CommandHandle>,
    /// Exec this FUMO node instead of DownloadAndUpdate (e.g. `Download`).
    pub exec_node: Option<String>,
    /// Commands for the next session: Replace (b64 value) or Get (None), in order.
    pub commands: Vec<(String, Option<Vec<u8>>)>,
    /// Results and statuses of those commands, by URI: (status, data as text).
    pub answers: Vec<(String, u16, Option<String>)>,
    handles: Vec<(CommandHandle, String)>,
    pub seen: Seen,
    session: Option<ServerSession>,
    nonce_handle: Option<CommandHandle>,
    client_nonce: Nonce,
    server_nonce: Nonce,
    config: ServerConfig,
}

pub struct DmServer {
    pub url: String,
    pub state: Arc<Mutex<DmState>>,
}

impl DmServer {
    pub fn start(
        server_id: &str,
        client: (&str, &str),
        server_password: &str,
        encoding: Encoding,
    ) -> DmServer {
        Self::start_with(
            server_id,
            client,
            server_password,
            encoding,
            AuthScheme::Md5,
        )
    }

    pub fn start_with(
        server_id: &str,
        client: (&str, &str),
        server_password: &str,
        encoding: Encoding,
        auth: AuthScheme,
    ) -> DmServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = ServerConfig {
            server_id: server_id.into(),
            server_uri: format!("{url}/dm"),
            resp_uri: None,
            client_credentials: Credentials::new(client.0, client.1),
            server_credentials: Credentials::new(server_id, server_password),
            auth,
            encoding,
            limits: Limits::default(),
        };
        let state = Arc::new(Mutex::new(DmState {
            offer: None,
            keep_offering: false,
            log_read: None,
            log_response: None,
            log_handle: None,
            exec_node: None,
            commands: Vec::new(),
            answers: Vec::new(),
            handles: Vec::new(),
            seen: Seen::default(),
            session: None,
            nonce_handle: None,
            client_nonce: Nonce(Vec::new()),
            server_nonce: Nonce(Vec::new()),
            config,
        }));
        let st = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                thread::spawn(move || serve(stream, &st));
            }
        });
        DmServer { url, state }
    }

    pub fn offer(&self, offer: Offer) {
        self.state.lock().unwrap().offer = Some(offer);
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut DmState) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    /// The FUMO results of the Generic Alerts received, with their receipt (if any).
    pub fn results(&self) -> Vec<(Option<String>, u16, Option<Vec<u8>>)> {
        self.with(|s| {
            s.seen
                .alerts
                .iter()
                .filter(|a| a.code == AlertCode::GENERIC_ALERT)
                .filter(|a| {
                    a.items
                        .first()
                        .and_then(|i| i.meta.as_ref())
                        .and_then(|m| m.mime_type.as_deref())
                        .is_some_and(|t| {
                            t.starts_with("org.openmobilealliance.dm.firmwareupdate.")
                                && !t.ends_with("userrequest")
                        })
                })
                .map(|a| {
                    let code = a.items[0]
                        .data
                        .as_ref()
                        .and_then(|d| d.as_text())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let receipt = a.items.get(1).and_then(|i| i.data.as_ref()).map(|d| {
                        base64::engine::general_purpose::STANDARD
                            .decode(d.as_text().unwrap())
                            .unwrap()
                    });
                    (a.correlator.clone(), code, receipt)
                })
                .collect()
        })
    }
}

fn fresh() -> Nonce {
    use rand_core::RngCore as _;
    let mut n = vec![0u8; 16];
    rand_core::OsRng.fill_bytes(&mut n);
    Nonce(n)
}

fn handle(
    state: &mut DmState,
    body: &[u8],
    hmac: Option<&str>,
) -> (Vec<u8>, &'static str, Option<String>) {
    let new_session = state.session.as_ref().is_none_or(|s| s.is_over());
    if new_session {
        state.session = Some(ServerSession::new(
            state.config.clone(),
            state.client_nonce.clone(),
            state.server_nonce.clone(),
        ));
        state.nonce_handle = None;
    }
    let session = state.session.as_mut().unwrap();
    let events = session.receive(body, hmac, fresh()).unwrap();
    if new_session {
        state
            .seen
            .sessions
            .push(session.session_id().unwrap_or("").to_owned());
    }
    let mut nonce: Option<Vec<u8>> = None;
    for e in events {
        match e {
            ServerEvent::Authenticated { .. } => state.seen.authenticated += 1,
            ServerEvent::NextClientNonce(n) => state.client_nonce = n,
            ServerEvent::ClientAlert(a) => state.seen.alerts.push(a),
            ServerEvent::Status {
                handle, cmd, code, ..
            } => {
                if let Some((_, uri)) = state.handles.iter().find(|(h, _)| *h == handle) {
                    state.answers.push((uri.clone(), code.0, None));
                }
                state.seen.statuses.push((cmd, code.0))
            }
            ServerEvent::Results {
                handle: Some(h),
                items,
            } if state.handles.iter().any(|(x, _)| *x == h) => {
                let uri = state
                    .handles
                    .iter()
                    .find(|(x, _)| *x == h)
                    .unwrap()
                    .1
                    .clone();
                let text = items[0]
                    .data
                    .as_ref()
                    .and_then(|d| d.as_text())
                    .map(str::to_owned);
                state.answers.push((uri, 200, text));
            }
            ServerEvent::Results {
                handle: Some(h),
                items,
            } if Some(h) == state.nonce_handle => {
                let d = items[0].data.as_ref().unwrap();
                let text = d.as_text().unwrap();
                nonce = Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .unwrap(),
                );
            }
            ServerEvent::Results {
                handle: Some(h),
                items,
            } if Some(h) == state.log_handle => {
                let text = items[0]
                    .data
                    .as_ref()
                    .unwrap()
                    .as_text()
                    .unwrap()
                    .to_owned();
                state.log_response = Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(text.trim())
                        .unwrap(),
                );
            }
            _ => {}
        }
    }
    let session = state.session.as_mut().unwrap();
    if session.is_authenticated() && !state.commands.is_empty() {
        for (uri, value) in std::mem::take(&mut state.commands) {
            let u = NodeUri::parse(&uri).unwrap();
            let h = match value {
                Some(v) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&v);
                    session.replace(
                        &u,
                        &NodeValue {
                            format: "b64".into(),
                            mime_type: None,
                            data: b64.into_bytes(),
                        },
                    )
                }
                None => session.get(&u),
            };
            state.handles.push((h, uri));
        }
    }
    if session.is_authenticated()
        && state.nonce_handle.is_none()
        && (state.offer.is_some() || state.log_read.is_some())
    {
        state.nonce_handle = Some(session.get(&NodeUri::parse("./SIMFOTA/Card/Nonce").unwrap()));
    }
    if let Some(nonce) = nonce.as_ref()
        && let Some(make) = state.log_read.take()
    {
        let request = make(nonce);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&request);
        let v = NodeValue {
            format: "b64".into(),
            mime_type: None,
            data: b64.into_bytes(),
        };
        session.replace(&NodeUri::parse("./SIMFOTA/Card/LogRequest").unwrap(), &v);
        state.log_handle =
            Some(session.get(&NodeUri::parse("./SIMFOTA/Card/LogResponse").unwrap()));
    }
    if let Some(nonce) = nonce
        && let Some(offer) = state.offer.as_ref()
    {
        let token = (offer.make_token)(&nonce);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&token);
        let v = NodeValue {
            format: "b64".into(),
            mime_type: None,
            data: b64.into_bytes(),
        };
        session.replace(&NodeUri::parse("./FUMO/fw/Ext/DeliveryToken").unwrap(), &v);
        session.replace(
            &NodeUri::parse("./FUMO/fw/DownloadAndUpdate/PkgURL").unwrap(),
            &NodeValue::chr(&offer.envelope_url),
        );
        let node = state
            .exec_node
            .clone()
            .unwrap_or_else(|| "DownloadAndUpdate".into());
        session.exec(
            &NodeUri::parse(&format!("./FUMO/fw/{node}")).unwrap(),
            Some(&offer.correlator),
            Some(Data::text("")),
        );
        if !state.keep_offering {
            state.offer = None;
        }
    }
    let out = session.reply().unwrap();
    (out.body, out.content_type, out.hmac)
}

fn serve(stream: TcpStream, state: &Mutex<DmState>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut hmac = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-syncml-hmac" => hmac = Some(v.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (reply, ctype, hmac_out) = {
            let mut st = state.lock().unwrap();
            handle(&mut st, &body, hmac.as_deref())
        };
        let mut out = stream.try_clone().unwrap();
        let extra = hmac_out
            .map(|h| format!("x-syncml-hmac: {h}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
            reply.len()
        );
        if out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(&reply))
            .is_err()
        {
            return;
        }
    }
}
