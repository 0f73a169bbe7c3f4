//! The DM side of the agent: the device's DM tree, and client sessions over HTTP
//! (OMA DM Protocol 1.2 §8; the session state machine is `simfota-syncml`'s).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use simfota_cardlink::Channel;
use simfota_cardlink::wire::contract::Node;
use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
use simfota_syncml::fumo::Fumo;
use simfota_syncml::model::{Alert, CmdId, Data, Item, Location, Meta};
use simfota_syncml::session::{ClientConfig, ClientEvent, ClientSession, SessionError};
use simfota_syncml::tree::{DevDetail, DevInfo, DmAccount, DmTree, TreeError};
use simfota_syncml::uri::NodeUri;
use simfota_syncml::{AlertCode, Encoding, StatusCode};

use crate::cardnodes::{CARD_ROOT, CardNodes, SharedCard};
use crate::config::{self, DeviceConfig};
use crate::fsutil::{self, Faults};
use crate::fumo::{Job, Stage};

/// Where the FUMO object is mounted (`<x>` = `fw`, DM contract).
pub const FUMO_ROOT: &str = Node::FUMO_ROOT;
/// The Generic Alert type of a user-requested update check (OMA-TS-DM-FUMO-V1_0 §8.2,
/// client-initiated firmware update request).
pub const USER_REQUEST_ALERT_TYPE: &str = "org.openmobilealliance.dm.firmwareupdate.userrequest";
/// The MIME type of the receipt item in the Generic Alert.
pub const RECEIPT_TYPE: &str = match Node::FumoReceipt.mime_type() {
    Some(t) => t,
    None => "",
};

/// Why a DM session failed.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the DM server at {url}: {message}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport's explanation.
        message: String,
    },
    /// The TLS connection to the server was refused (its certificate, or the handshake).
    #[error("cannot reach the DM server at {url} securely: {problem}")]
    Tls {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: crate::download::TlsProblem,
    },
    /// The server answered with an HTTP error.
    #[error("the DM server at {url} answered HTTP {status}")]
    Http {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The server's message was too large.
    #[error("the DM server sent a message larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The DM session failed (authentication, malformed message, ...).
    #[error("DM session: {0}")]
    Session(#[from] SessionError),
    /// The DM tree could not be built.
    #[error("DM tree: {0}")]
    Tree(#[from] TreeError),
    /// The session state file could not be written.
    #[error("DM state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// DM authentication state kept between sessions (`<data>/dm.json`): the nonce for our next
/// credentials, the nonce we expect in the server's (also the package 0 digest nonce).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmState {
    /// Nonce for the device's credentials (b64).
    pub client_nonce: String,
    /// Nonce the server's credentials use (b64).
    pub server_nonce: String,
    /// Session counter for client-initiated sessions.
    pub next_session: u16,
}

impl DmState {
    /// Reads the state (default when absent or unreadable: the server challenges).
    pub fn load(path: &Path) -> DmState {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Saves the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), DmError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| DmError::State {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        fsutil::write_atomic(path, &bytes, &Faults::default()).map_err(|source| DmError::State {
            path: path.to_owned(),
            source,
        })
    }

    fn nonce(text: &str) -> Nonce {
        Nonce::from_b64(text).unwrap_or(Nonce(Vec::new()))
    }

    /// The server nonce as the protocol crate takes it.
    pub fn server_nonce(&self) -> Nonce {
        Self::nonce(&self.server_nonce)
    }
}

/// The credentials of both directions, as the protocol crate takes them.
pub fn credentials(cfg: &DeviceConfig) -> (Credentials, Credentials) {
    (
        Credentials::new(&cfg.credentials.username, &cfg.credentials.password),
        Credentials::new(&cfg.server_id, &cfg.credentials.server_password),
    )
}

fn scheme(cfg: &DeviceConfig) -> AuthScheme {
    match cfg.credentials.auth {
        config::AuthScheme::Md5 => AuthScheme::Md5,
        config::AuthScheme::Hmac => AuthScheme::Hmac,
    }
}

/// Builds the device's DM tree (docs/dm-tree.md): DevInfo, DevDetail with `fw_version`,
/// DMAcc, the FUMO object (showing `job`'s state and its receipt) and the card subtree.
pub fn build_tree<C: Channel + Send + 'static>(
    cfg: &DeviceConfig,
    fw_version: &str,
    job: Option<&Job>,
    card: SharedCard<C>,
) -> Result<DmTree, DmError> {
    let info = DevInfo {
        dev_id: cfg.dev_id(),
        manufacturer: cfg.info.manufacturer.clone(),
        model: cfg.info.model.clone(),
        lang: cfg.info.lang.clone(),
    };
    let detail = DevDetail {
        dev_type: cfg.info.dev_type.clone(),
        oem: cfg.info.oem.clone(),
        fw_version: fw_version.to_owned(),
        sw_version: cfg.info.sw_version.clone(),
        hw_version: cfg.info.hw_version.clone(),
    };
    let mut tree = DmTree::with_standard_objects(&info, &detail)?;
    let (cli, srv) = credentials(cfg);
    tree.add_account(&DmAccount {
        node: account_node(&cfg.server_id),
        server_id: cfg.server_id.clone(),
        name: cfg.server_id.clone(),
        addr: cfg.dm_url(),
        auth_pref: match cfg.credentials.auth {
            config::AuthScheme::Md5 => "DIGEST".into(),
            config::AuthScheme::Hmac => "HMAC".into(),
        },
        server_credentials: srv,
        client_credentials: cli,
    })?;
    let root = NodeUri::parse(FUMO_ROOT).map_err(TreeError::from)?;
    let mut fumo = Fumo::new(root);
    fumo.ext.insert("DeliveryToken".into(), Vec::new());
    let receipt = match job.map(|j| &j.stage) {
        Some(Stage::Reported {
            receipt: Some(r), ..
        }) => B64.encode(r).into_bytes(),
        _ => Vec::new(),
    };
    fumo.ext.insert("Receipt".into(), receipt);
    if let Some(job) = job {
        fumo.set_state(simfota_syncml::FumoState(job.fumo_state().value()));
    }
    let sid = &cfg.server_id;
    tree.put_interior("./FUMO", "Get=*")?;
    // One update at a time (docs/dm-tree.md): while the job file holds an unfinished job
    // (or a result the server has not taken yet) the FUMO node does not grant Exec, so a new
    // Exec is answered 425 Permission denied (SyncML RepPro 1.2 §10) and the running job,
    // its Correlator and its result stay as they are. The server delivers again later.
    let exec = if job.is_some() {
        String::new()
    } else {
        format!("&Exec={sid}")
    };
    tree.mount_fumo(
        FUMO_ROOT,
        &format!("Get={sid}&Replace={sid}&Add={sid}{exec}"),
        fumo,
    )?;
    tree.put_interior("./SIMFOTA", "Get=*")?;
    let nodes = CardNodes::new(card).map_err(TreeError::from)?;
    tree.mount(
        CARD_ROOT,
        &format!("Get={sid}&Replace={sid}"),
        Box::new(nodes),
    )?;
    Ok(tree)
}

/// The DMAcc node name for a server id (a URI segment: no `/`).
fn account_node(server_id: &str) -> String {
    server_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The Generic Alert type for the result of an Exec on `node` (OMA-TS-DM-FUMO-V1_0 §8.2).
fn alert_type(node: &str) -> &'static str {
    use simfota_syncml::codes::fumo_alert_type;
    match node {
        "Download" => fumo_alert_type::DOWNLOAD,
        "Update" => fumo_alert_type::UPDATE,
        _ => fumo_alert_type::DOWNLOAD_AND_UPDATE,
    }
}

/// The Generic Alert 1226 for a finished job (docs/dm-tree.md; DM Protocol 1.2 §8.7).
pub fn result_alert(job: &Job) -> Option<Alert> {
    let Stage::Reported {
        result, receipt, ..
    } = &job.stage
    else {
        return None;
    };
    let mut items = vec![Item {
        source: Some(Location::new(format!(
            "{FUMO_ROOT}/{}",
            job.operation_node()
        ))),
        meta: Some(Meta {
            format: Some("int".into()),
            mime_type: Some(alert_type(job.operation_node()).into()),
            mark: Some(
                if (200..300).contains(result) {
                    "informational"
                } else {
                    "critical"
                }
                .into(),
            ),
            ..Meta::default()
        }),
        data: Some(Data::text(result.to_string())),
        ..Item::default()
    }];
    if let Some(r) = receipt {
        items.push(Item {
            source: Some(Location::new(Node::FumoReceipt.uri())),
            meta: Some(Meta {
                format: Some(Node::FumoReceipt.format().as_str().into()),
                mime_type: Some(RECEIPT_TYPE.into()),
                ..Meta::default()
            }),
            data: Some(Data::text(B64.encode(r))),
            ..Item::default()
        });
    }
    Some(Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code: AlertCode::GENERIC_ALERT,
        correlator: job.correlator.clone(),
        items,
    })
}

/// The Generic Alert asking the server for an update (`simfota device check-update`).
pub fn user_request_alert() -> Alert {
    Alert {
        cmd_id: CmdId(0),
        no_resp: false,
        cred: None,
        code: AlertCode::GENERIC_ALERT,
        correlator: None,
        items: vec![Item {
            source: Some(Location::new(FUMO_ROOT)),
            meta: Some(Meta {
                format: Some("chr".into()),
                mime_type: Some(USER_REQUEST_ALERT_TYPE.into()),
                ..Meta::default()
            }),
            data: Some(Data::text("user request")),
            ..Item::default()
        }],
    }
}

/// What one session brought.
#[derive(Debug, Default)]
pub struct SessionSummary {
    /// Statuses of our Alerts (the session alert and any Generic Alert), in order.
    pub alert_statuses: Vec<StatusCode>,
    /// The server accepted our credentials.
    pub authenticated: bool,
    /// Texts the server asked to display.
    pub displayed: Vec<String>,
    /// An Exec accepted with 202 on a FUMO node (the node and its Correlator).
    pub exec: Option<(String, Option<String>)>,
    /// How many messages the server sent.
    pub messages: u32,
}

/// What package 1 offers besides `./DevInfo` (docs/dm-tree.md "Package 1"): the firmware
/// version, the card's info, a fresh card nonce and the FUMO state. A server that reads them
/// there skips its Gets: a delivery takes two round trips instead of three. A node that
/// cannot be read (no card) is left out, and the server Gets what it lacks.
fn offered_nodes() -> Vec<NodeUri> {
    [
        Node::DevDetailFwV,
        Node::CardInfo,
        Node::CardNonce,
        Node::FumoState,
    ]
    .into_iter()
    .filter_map(|n| NodeUri::parse(n.uri()).ok())
    .collect()
}

/// Runs one DM session with the configured server over HTTP(S), through `http` (the
/// device's client: [`DeviceConfig::http_agent`]).
pub fn run_session(
    cfg: &DeviceConfig,
    http: &ureq::Agent,
    tree: &mut DmTree,
    reason: AlertCode,
    session_id: Option<u16>,
    alerts: Vec<Alert>,
) -> Result<SessionSummary, DmError> {
    let state_path = cfg.data().dm_state();
    let mut state = DmState::load(&state_path);
    // Before any session: the nonce provisioned with the account, if any.
    if state.client_nonce.is_empty()
        && let Some(n) = &cfg.credentials.nonce
    {
        state.client_nonce.clone_from(n);
    }
    drive_session(
        cfg,
        http,
        tree,
        reason,
        session_id,
        alerts,
        &mut state,
        Some(&state_path),
    )
}

/// [`run_session`] with the DM authentication state held by the caller instead of
/// `<data>/dm.json`: nothing is written to disk. For a simulator that runs many devices in one
/// process (`simfota fleet`); a real device keeps the state on disk, so that a restart finds
/// the nonces again.
pub fn run_session_in_memory(
    cfg: &DeviceConfig,
    http: &ureq::Agent,
    tree: &mut DmTree,
    reason: AlertCode,
    session_id: Option<u16>,
    alerts: Vec<Alert>,
    state: &mut DmState,
) -> Result<SessionSummary, DmError> {
    drive_session(cfg, http, tree, reason, session_id, alerts, state, None)
}

/// One session, its state saved to `persist` after every message when given.
#[allow(clippy::too_many_arguments)]
fn drive_session(
    cfg: &DeviceConfig,
    http: &ureq::Agent,
    tree: &mut DmTree,
    reason: AlertCode,
    session_id: Option<u16>,
    alerts: Vec<Alert>,
    state: &mut DmState,
    persist: Option<&Path>,
) -> Result<SessionSummary, DmError> {
    let sid = session_id.unwrap_or_else(|| {
        state.next_session = state.next_session.wrapping_add(1).max(1);
        state.next_session
    });
    let (cli, srv) = credentials(cfg);
    let mut limits = simfota_syncml::Limits::default();
    limits.max_message_bytes =
        usize::try_from(cfg.limits.max_message_bytes).unwrap_or(limits.max_message_bytes);
    let client_cfg = ClientConfig {
        client_id: cfg.dev_id(),
        server_id: cfg.server_id.clone(),
        server_uri: cfg.dm_url(),
        client_credentials: cli,
        server_credentials: srv,
        auth: scheme(cfg),
        require_server_auth: true,
        encoding: match cfg.encoding {
            config::Encoding::Xml => Encoding::Xml,
            config::Encoding::Wbxml => Encoding::Wbxml,
        },
        limits,
    };
    let mut session = ClientSession::new(
        client_cfg,
        sid,
        DmState::nonce(&state.client_nonce),
        DmState::nonce(&state.server_nonce),
    );
    let fresh = fresh_nonce();
    session.set_fresh_nonce(Nonce(fresh.clone()));
    for a in alerts {
        session.queue_alert(a);
    }
    let mut out = session.start_offering(reason, tree, &offered_nodes())?;
    let mut summary = SessionSummary::default();
    loop {
        let mut req = http.post(&out.uri).header("Content-Type", out.content_type);
        if let Some(h) = &out.hmac {
            req = req.header("x-syncml-hmac", h);
        }
        let mut resp =
            req.send(&out.body[..])
                .map_err(|e| match crate::download::TlsProblem::of(&e) {
                    Some(problem) => DmError::Tls {
                        url: out.uri.clone(),
                        problem,
                    },
                    None => DmError::Unreachable {
                        url: out.uri.clone(),
                        message: e.to_string(),
                    },
                })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(DmError::Http {
                url: out.uri.clone(),
                status,
            });
        }
        let hmac = resp
            .headers()
            .get("x-syncml-hmac")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = cfg.limits.max_message_bytes;
        let mut body = Vec::new();
        use std::io::Read as _;
        resp.body_mut()
            .as_reader()
            .take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| DmError::Unreachable {
                url: out.uri.clone(),
                message: e.to_string(),
            })?;
        if body.len() as u64 > limit {
            return Err(DmError::TooLarge { limit });
        }
        summary.messages += 1;
        let step = session.receive(&body, hmac.as_deref(), tree)?;
        for event in step.events {
            match event {
                ClientEvent::NextNonce(n) => state.client_nonce = n.to_b64(),
                ClientEvent::ServerRejected(_) => state.server_nonce = B64.encode(&fresh),
                ClientEvent::Authenticated => summary.authenticated = true,
                ClientEvent::Status { cmd, code, .. } if cmd == "Alert" => {
                    summary.alert_statuses.push(code)
                }
                ClientEvent::ExecAccepted { uri, correlator } => {
                    summary.exec = Some((uri.as_str().to_owned(), correlator))
                }
                ClientEvent::Display(text) => summary.displayed.push(text),
                _ => {}
            }
        }
        if let Some(path) = persist {
            state.save(path)?;
        }
        match step.reply {
            Some(next) => out = next,
            None => break,
        }
    }
    Ok(summary)
}

/// 16 random bytes for the next challenge we give the server.
fn fresh_nonce() -> Vec<u8> {
    use rand_core::RngCore as _;
    let mut n = vec![0u8; 16];
    rand_core::OsRng.fill_bytes(&mut n);
    n
}
