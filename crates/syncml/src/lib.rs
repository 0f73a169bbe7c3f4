//! OMA DM 1.2 protocol core for simfota, shared by the device agent and the DM server.
//!
//! It holds the SyncML DM 1.2 message model ([`model`]), the XML and WBXML codecs ([`xml`],
//! [`wbxml`], [`codec`]), DM Security 1.2 authentication and HMAC integrity ([`auth`]),
//! DM Notification 1.2 package 0 ([`notification`]), the client and server session state
//! machines ([`session`]), and the client-side DM tree with ACLs, the standard objects and
//! the FUMO 1.0 object ([`tree`], [`fumo`]).
//!
//! The crate is sans-IO: it never opens a socket, speaks HTTP or touches a file. Sessions take
//! received bytes and give bytes to send plus events; the server session is `serde`-serializable
//! so that a stateless server can store it between HTTP requests. It does not generate nonces
//! (callers pass fresh random nonces in), does not implement DS synchronisation (`Sync`, `Map`
//! and friends are answered with 406), and does not speak OBEX or WSP transports.

//!
//! A device and a server, one round (the server stores its session between requests):
//!
//! ```
//! use simfota_syncml::auth::{AuthScheme, Credentials, Nonce};
//! use simfota_syncml::session::{ClientConfig, ClientSession, ServerConfig, ServerSession};
//! use simfota_syncml::tree::{DevDetail, DevInfo, DmTree};
//! use simfota_syncml::{AlertCode, Encoding, Limits, NodeUri};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (dev, srv) = (Credentials::new("dev1", "pw"), Credentials::new("srv", "spw"));
//! let info = DevInfo { dev_id: "IMEI:1".into(), manufacturer: "Acme".into(), model: "P1".into(), lang: "en".into() };
//! let detail = DevDetail { dev_type: "phone".into(), oem: "Acme".into(), fw_version: "1.0".into(), sw_version: "1.0".into(), hw_version: "A".into() };
//! let mut tree = DmTree::with_standard_objects(&info, &detail)?;
//! let mut client = ClientSession::new(
//!     ClientConfig {
//!         client_id: "IMEI:1".into(), server_id: "srv".into(), server_uri: "https://dm.example/".into(),
//!         client_credentials: dev.clone(), server_credentials: srv.clone(), auth: AuthScheme::Md5,
//!         require_server_auth: true, encoding: Encoding::Wbxml, limits: Limits::default(),
//!     },
//!     1, Nonce(b"c".to_vec()), Nonce(b"s".to_vec()),
//! );
//! let server = ServerSession::new(
//!     ServerConfig {
//!         server_id: "srv".into(), server_uri: "https://dm.example/".into(), resp_uri: None,
//!         client_credentials: dev, server_credentials: srv, auth: AuthScheme::Md5,
//!         encoding: Encoding::Wbxml, limits: Limits::default(),
//!     },
//!     Nonce(b"c".to_vec()), Nonce(b"s".to_vec()),
//! );
//! let mut stored = serde_json::to_string(&server)?; // e.g. a database row
//!
//! let package1 = client.start(AlertCode::CLIENT_INITIATED_MGMT, &mut tree)?;
//! let mut server: ServerSession = serde_json::from_str(&stored)?;
//! let _events = server.receive(&package1.body, package1.hmac.as_deref(), Nonce(b"fresh".to_vec()))?;
//! let fw = server.get(&NodeUri::parse("./DevDetail/FwV")?);
//! let package2 = server.reply()?;
//! stored = serde_json::to_string(&server)?;
//!
//! let step = client.receive(&package2.body, package2.hmac.as_deref(), &mut tree)?;
//! let package3 = step.reply.expect("the client answers the Get");
//! let mut server: ServerSession = serde_json::from_str(&stored)?;
//! let events = server.receive(&package3.body, None, Nonce(b"fresh2".to_vec()))?;
//! assert!(events.iter().any(|e| matches!(e,
//!     simfota_syncml::session::ServerEvent::Results { handle, .. } if *handle == Some(fw))));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod auth;
pub mod codec;
pub mod codes;
pub mod element;
pub mod error;
pub mod fumo;
pub mod limits;
pub mod model;
pub mod notification;
pub mod session;
pub mod tree;
pub mod uri;
pub mod wbxml;
pub mod xml;

pub use codec::Encoding;
pub use codes::{AlertCode, FumoResult, FumoState, StatusCode};
pub use error::{DecodeError, EncodeError};
pub use limits::Limits;
pub use model::{Command, Message};
pub use uri::NodeUri;
