//! Package 0: the server-initiated session notification (OMA DM Notification 1.2 §6).
//!
//! Layout (§6.2, bit lengths in brackets):
//!
//! ```text
//! digest[128] | version[10] ui-mode[2] initiator[1] future-use[27] session-id[16]
//!             | server-id-length[8] server-id[8*len] | vendor-specific[*]
//! ```
//!
//! `digest = H(B64(H(server-id:password)):nonce:B64(H(notification)))` with H = MD5, where
//! `notification` is every byte after the digest (§6.3). The password and nonce are the
//! server's credentials as the client knows them (DMAcc `SRVCRED`).
//!
//! A received package 0 is an [`UnverifiedNotification`] until
//! [`UnverifiedNotification::verify`] checks its digest; only then does the client learn the
//! session id to use.

use crate::auth::{Credentials, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// The version field of DM 1.2 (version × 10, §6.2.2).
pub const VERSION_1_2: u16 = 12;
const DIGEST_LEN: usize = 16;
const FIXED_HEADER_LEN: usize = 8;

/// The `ui-mode` field (§6.2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UiMode {
    /// 00: not specified.
    NotSpecified = 0,
    /// 01: background, no user interaction.
    Background = 1,
    /// 10: informative: tell the user.
    Informative = 2,
    /// 11: ask the user first.
    UserInteraction = 3,
}

/// The `initiator` field (§6.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Initiator {
    /// 0: the user asked for the session.
    User = 0,
    /// 1: the server initiated it.
    Server = 1,
}

/// Why a package 0 was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NotificationError {
    /// Shorter than its fixed fields.
    #[error("notification of {0} bytes is too short")]
    TooShort(usize),
    /// The server id length runs past the end.
    #[error("the server identifier length runs past the end of the notification")]
    BadServerIdLength,
    /// The server id is not UTF-8.
    #[error("the server identifier is not UTF-8")]
    ServerIdNotUtf8,
    /// The server id is longer than 255 bytes and cannot be encoded.
    #[error("the server identifier is longer than 255 bytes")]
    ServerIdTooLong,
    /// Not version 1.2.
    #[error("unsupported notification version {0} (only 1.2 is supported)")]
    UnsupportedVersion(u16),
    /// The digest does not verify: unknown server, wrong password or nonce, or tampering.
    #[error("the notification digest does not verify")]
    BadDigest,
    /// The server id is not the one expected.
    #[error("the notification names server {0:?}, which is not the expected server")]
    UnknownServer(String),
}

/// The fields of a package 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Protocol version × 10 (12 for DM 1.2).
    pub version: u16,
    /// The UI mode.
    pub ui_mode: UiMode,
    /// Who initiated.
    pub initiator: Initiator,
    /// The session id the client must use.
    pub session_id: u16,
    /// The server identifier (DMAcc `ServerID`).
    pub server_id: String,
    /// The vendor-specific part.
    pub vendor: Vec<u8>,
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The digest of §6.3 over `notification` (the bytes after the digest).
pub fn digest(server_id: &str, password: &str, nonce: &Nonce, notification: &[u8]) -> [u8; 16] {
    let secret = B64.encode(md5(&[server_id.as_bytes(), b":", password.as_bytes()]));
    digest_with_secret(&secret, nonce, notification)
}

/// [`digest`] from `B64(H(server-id:password))`, what a server keeps instead of the password.
pub fn digest_with_secret(secret: &str, nonce: &Nonce, notification: &[u8]) -> [u8; 16] {
    let body = B64.encode(md5(&[notification]));
    md5(&[secret.as_bytes(), b":", &nonce.0, b":", body.as_bytes()])
}

impl Notification {
    /// A DM 1.2 notification from the server.
    pub fn new(session_id: u16, server_id: impl Into<String>, ui_mode: UiMode) -> Notification {
        Notification {
            version: VERSION_1_2,
            ui_mode,
            initiator: Initiator::Server,
            session_id,
            server_id: server_id.into(),
            vendor: Vec::new(),
        }
    }

    fn body(&self) -> Result<Vec<u8>, NotificationError> {
        let id = self.server_id.as_bytes();
        let id_len = u8::try_from(id.len()).map_err(|_| NotificationError::ServerIdTooLong)?;
        let v = self.version & 0x3FF;
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + id.len() + self.vendor.len());
        // version[10] ui-mode[2] initiator[1] future-use[27]: 40 bits.
        out.push((v >> 2) as u8);
        out.push(
            (((v & 0x3) as u8) << 6) | ((self.ui_mode as u8) << 4) | ((self.initiator as u8) << 3),
        );
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.session_id.to_be_bytes());
        out.push(id_len);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.vendor);
        Ok(out)
    }

    /// Encodes and signs the notification with the server's password and the client's nonce.
    pub fn encode(&self, password: &str, nonce: &Nonce) -> Result<Vec<u8>, NotificationError> {
        let secret = B64.encode(md5(&[self.server_id.as_bytes(), b":", password.as_bytes()]));
        self.encode_with_secret(&secret, nonce)
    }

    /// [`Notification::encode`] from `B64(H(server-id:password))` instead of the password.
    pub fn encode_with_secret(
        &self,
        secret: &str,
        nonce: &Nonce,
    ) -> Result<Vec<u8>, NotificationError> {
        let body = self.body()?;
        let d = digest_with_secret(secret, nonce, &body);
        let mut out = d.to_vec();
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// A package 0 whose fields are parsed but whose digest is not yet checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnverifiedNotification {
    digest: [u8; 16],
    body: Vec<u8>,
    fields: Notification,
}

impl UnverifiedNotification {
    /// Parses a package 0.
    pub fn parse(bytes: &[u8]) -> Result<UnverifiedNotification, NotificationError> {
        if bytes.len() < DIGEST_LEN + FIXED_HEADER_LEN {
            return Err(NotificationError::TooShort(bytes.len()));
        }
        let (d, body) = bytes.split_at(DIGEST_LEN);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(d);
        let version = (u16::from(body[0]) << 2) | u16::from(body[1] >> 6);
        let ui_mode = match (body[1] >> 4) & 0x3 {
            0 => UiMode::NotSpecified,
            1 => UiMode::Background,
            2 => UiMode::Informative,
            _ => UiMode::UserInteraction,
        };
        let initiator = if body[1] & 0x08 != 0 {
            Initiator::Server
        } else {
            Initiator::User
        };
        let session_id = u16::from_be_bytes([body[5], body[6]]);
        let id_len = usize::from(body[7]);
        let id = body
            .get(FIXED_HEADER_LEN..FIXED_HEADER_LEN + id_len)
            .ok_or(NotificationError::BadServerIdLength)?;
        let server_id = std::str::from_utf8(id)
            .map_err(|_| NotificationError::ServerIdNotUtf8)?
            .to_owned();
        let vendor = body[FIXED_HEADER_LEN + id_len..].to_vec();
        Ok(UnverifiedNotification {
            digest,
            body: body.to_vec(),
            fields: Notification {
                version,
                ui_mode,
                initiator,
                session_id,
                server_id,
                vendor,
            },
        })
    }

    /// The server id the notification claims, to look its credentials up.
    pub fn claimed_server_id(&self) -> &str {
        &self.fields.server_id
    }

    /// Checks the version, the server id and the digest (§6.3), giving the fields.
    pub fn verify(
        self,
        server_id: &str,
        password: &str,
        nonce: &Nonce,
    ) -> Result<Notification, NotificationError> {
        if self.fields.version != VERSION_1_2 {
            return Err(NotificationError::UnsupportedVersion(self.fields.version));
        }
        if self.fields.server_id != server_id {
            return Err(NotificationError::UnknownServer(
                self.fields.server_id.chars().take(64).collect(),
            ));
        }
        let want = digest(server_id, password, nonce, &self.body);
        if bool::from(want.ct_eq(&self.digest)) {
            Ok(self.fields)
        } else {
            Err(NotificationError::BadDigest)
        }
    }

    /// Verifies with a [`Credentials`] pair whose name is the server id.
    pub fn verify_with(
        self,
        server: &Credentials,
        nonce: &Nonce,
    ) -> Result<Notification, NotificationError> {
        self.verify(&server.name, &server.password, nonce)
    }
}
