//! Authentication and integrity (OMA DM Security 1.2 §5).
//!
//! * `syncml:auth-basic`: `B64(name:password)` (§5.3.1).
//! * `syncml:auth-md5`: `B64(H(B64(H(name:password)):nonce))`, H = MD5 (§5.3.2).
//! * `syncml:auth-MAC` (HMAC integrity, §5.5): the transport header
//!   `x-syncml-hmac: algorithm=MD5, username="name", mac=B64(H(B64(H(name:password)):nonce:B64(H(body))))`
//!   over the exact body bytes.
//!
//! Nonces are raw octets; on the wire (`NextNonce`) they travel base64-encoded.

use crate::model::{Chal, Cred, Meta};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Auth type string of basic authentication.
pub const AUTH_BASIC: &str = "syncml:auth-basic";
/// Auth type string of MD5 digest authentication.
pub const AUTH_MD5: &str = "syncml:auth-md5";
/// Auth type string of HMAC integrity.
pub const AUTH_HMAC: &str = "syncml:auth-MAC";
/// The HTTP header that carries the HMAC.
pub const HMAC_HEADER: &str = "x-syncml-hmac";

/// The authentication schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthScheme {
    /// `syncml:auth-basic`.
    Basic,
    /// `syncml:auth-md5`.
    Md5,
    /// `syncml:auth-MAC`: no Cred element, an HMAC header on every message.
    Hmac,
}

impl AuthScheme {
    /// The `Type` string.
    pub fn type_str(self) -> &'static str {
        match self {
            AuthScheme::Basic => AUTH_BASIC,
            AuthScheme::Md5 => AUTH_MD5,
            AuthScheme::Hmac => AUTH_HMAC,
        }
    }

    /// Parses a `Type` string.
    pub fn from_type(s: &str) -> Option<AuthScheme> {
        match s {
            AUTH_BASIC => Some(AuthScheme::Basic),
            AUTH_MD5 => Some(AuthScheme::Md5),
            AUTH_HMAC => Some(AuthScheme::Hmac),
            _ => None,
        }
    }
}

/// A name and password (a DMAcc `AAuthName`/`AAuthSecret` pair), or a name and the digest
/// of the pair, which is all MD5 and HMAC authentication need (a server keeps that, not the
/// password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The name.
    pub name: String,
    /// The secret (empty when only [`Credentials::digest`] is known).
    pub password: String,
    /// `B64(H(name:password))` in place of the password: MD5 and HMAC digests start from it
    /// (DM Security 1.2 §5.3.2, §5.5); basic authentication needs the password itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Credentials {
    /// A credentials pair.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            name: name.into(),
            password: password.into(),
            digest: None,
        }
    }

    /// Credentials known by `B64(H(name:password))` only ([`Credentials::secret_digest`]).
    pub fn from_digest(name: impl Into<String>, digest: impl Into<String>) -> Credentials {
        Credentials {
            name: name.into(),
            password: String::new(),
            digest: Some(digest.into()),
        }
    }

    /// `B64(H(name:password))`: the part of the MD5 and HMAC digests that does not depend on
    /// the nonce, and what a server stores instead of the password.
    pub fn secret_digest(&self) -> String {
        match &self.digest {
            Some(d) => d.clone(),
            None => B64.encode(md5(&[self.name.as_bytes(), b":", self.password.as_bytes()])),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials {{ name: {:?}, password: <hidden> }}",
            self.name
        )
    }
}

/// A nonce (raw octets).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonce(pub Vec<u8>);

impl Nonce {
    /// The base64 form used in `NextNonce`.
    pub fn to_b64(&self) -> String {
        B64.encode(&self.0)
    }

    /// Parses the base64 form of `NextNonce`.
    pub fn from_b64(text: &str) -> Result<Nonce, AuthError> {
        B64.decode(text.trim())
            .map(Nonce)
            .map_err(|_| AuthError::BadNonce)
    }
}

/// Why authentication failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No credentials where they are required (status 407).
    #[error("credentials are missing")]
    Missing,
    /// The credentials do not verify (status 401).
    #[error("credentials do not verify")]
    Invalid,
    /// The auth type is not the one agreed.
    #[error("unexpected authentication type {0:?}")]
    WrongScheme(String),
    /// A base64 field does not decode.
    #[error("a nonce or credential is not valid base64")]
    BadNonce,
    /// The HMAC header does not parse.
    #[error("malformed x-syncml-hmac header: {0}")]
    MalformedHmacHeader(&'static str),
    /// The HMAC header uses an algorithm other than MD5.
    #[error("unsupported HMAC algorithm {0:?}")]
    UnsupportedAlgorithm(String),
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn secret_digest(creds: &Credentials) -> String {
    creds.secret_digest()
}

/// The MD5 digest of DM Security §5.3.2: `H(B64(H(name:password)):nonce)` (raw, 16 bytes).
pub fn md5_digest(creds: &Credentials, nonce: &Nonce) -> [u8; 16] {
    md5(&[secret_digest(creds).as_bytes(), b":", &nonce.0])
}

/// The `Cred/Data` of MD5 authentication: base64 of [`md5_digest`].
pub fn md5_credential(creds: &Credentials, nonce: &Nonce) -> String {
    B64.encode(md5_digest(creds, nonce))
}

/// The `Cred/Data` of basic authentication: `B64(name:password)`.
pub fn basic_credential(creds: &Credentials) -> String {
    B64.encode(format!("{}:{}", creds.name, creds.password))
}

/// Builds the `Cred` element for `scheme` (`None` for HMAC, which uses the header instead).
pub fn make_cred(scheme: AuthScheme, creds: &Credentials, nonce: &Nonce) -> Option<Cred> {
    let data = match scheme {
        AuthScheme::Basic => basic_credential(creds),
        AuthScheme::Md5 => md5_credential(creds, nonce),
        AuthScheme::Hmac => return None,
    };
    Some(Cred {
        meta: Meta {
            format: Some("b64".into()),
            mime_type: Some(scheme.type_str().into()),
            ..Meta::default()
        },
        data,
    })
}

/// Verifies a received `Cred` against the expected credentials (constant-time compare).
/// A Cred without `Type` is taken as basic, the RepPro default.
pub fn verify_cred(
    cred: Option<&Cred>,
    scheme: AuthScheme,
    expected: &Credentials,
    nonce: &Nonce,
) -> Result<(), AuthError> {
    let cred = cred.ok_or(AuthError::Missing)?;
    let got_type = cred.meta.mime_type.as_deref().unwrap_or(AUTH_BASIC);
    if AuthScheme::from_type(got_type) != Some(scheme) || scheme == AuthScheme::Hmac {
        return Err(AuthError::WrongScheme(got_type.chars().take(64).collect()));
    }
    let want = match scheme {
        AuthScheme::Basic => basic_credential(expected),
        _ => md5_credential(expected, nonce),
    };
    if bool::from(want.as_bytes().ct_eq(cred.data.trim().as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

/// Builds a `Chal` asking for `scheme` with `nonce` for the next attempt (§5.4).
pub fn make_chal(scheme: AuthScheme, nonce: &Nonce) -> Chal {
    Chal {
        meta: Meta {
            format: Some("b64".into()),
            mime_type: Some(scheme.type_str().into()),
            next_nonce: (scheme != AuthScheme::Basic).then(|| nonce.to_b64()),
            ..Meta::default()
        },
    }
}

/// `B64(MD5(body))`, the body digest of the MAC below; also names a message's exact bytes.
pub fn body_digest(body: &[u8]) -> String {
    B64.encode(md5(&[body]))
}

/// The MAC of §5.5: `H(B64(H(name:password)):nonce:B64(H(body)))`, raw.
pub fn hmac_mac(creds: &Credentials, nonce: &Nonce, body: &[u8]) -> [u8; 16] {
    let digest = body_digest(body);
    md5(&[
        secret_digest(creds).as_bytes(),
        b":",
        &nonce.0,
        b":",
        digest.as_bytes(),
    ])
}

/// The value of the `x-syncml-hmac` header for `body`.
pub fn hmac_header(creds: &Credentials, nonce: &Nonce, body: &[u8]) -> String {
    format!(
        "algorithm=MD5, username=\"{}\", mac={}",
        creds.name,
        B64.encode(hmac_mac(creds, nonce, body))
    )
}

/// A parsed `x-syncml-hmac` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HmacHeader {
    /// `algorithm` (MD5 when absent, §5.5.2).
    pub algorithm: String,
    /// `username`.
    pub username: String,
    /// `mac` (base64).
    pub mac: String,
}

impl HmacHeader {
    /// Parses `algorithm=MD5, username="name", mac=...` (quotes optional, any order).
    pub fn parse(value: &str) -> Result<HmacHeader, AuthError> {
        let mut algorithm = None;
        let mut username = None;
        let mut mac = None;
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (key, val) = part
                .split_once('=')
                .ok_or(AuthError::MalformedHmacHeader("a field lacks '='"))?;
            let val = val.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "algorithm" => algorithm = Some(val),
                "username" => username = Some(val),
                "mac" => mac = Some(val),
                _ => return Err(AuthError::MalformedHmacHeader("unknown field")),
            }
        }
        Ok(HmacHeader {
            algorithm: algorithm.unwrap_or_else(|| "MD5".into()),
            username: username.ok_or(AuthError::MalformedHmacHeader("username missing"))?,
            mac: mac.ok_or(AuthError::MalformedHmacHeader("mac missing"))?,
        })
    }
}

/// Verifies the HMAC header of a received body.
pub fn verify_hmac(
    header: Option<&str>,
    expected: &Credentials,
    nonce: &Nonce,
    body: &[u8],
) -> Result<(), AuthError> {
    let h = HmacHeader::parse(header.ok_or(AuthError::Missing)?)?;
    if !h.algorithm.eq_ignore_ascii_case("MD5") {
        return Err(AuthError::UnsupportedAlgorithm(
            h.algorithm.chars().take(32).collect(),
        ));
    }
    let want = B64.encode(hmac_mac(expected, nonce, body));
    let name_ok = h.username.as_bytes().ct_eq(expected.name.as_bytes());
    let mac_ok = want.as_bytes().ct_eq(h.mac.as_bytes());
    if bool::from(name_ok & mac_ok) {
        Ok(())
    } else {
        Err(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vector_from_the_issue() {
        let creds = Credentials::new("funambol", "funambol");
        assert_eq!(
            md5_credential(&creds, &Nonce::default()),
            "hCYC0/A/ecptbtSXn8MS0Q=="
        );
    }

    /// A server that keeps only `B64(H(name:password))` computes and checks the same MD5
    /// credentials and HMACs as one holding the password.
    #[test]
    fn the_digest_stands_in_for_the_password() {
        let full = Credentials::new("dev-1", "s3cret");
        let kept = Credentials::from_digest("dev-1", full.secret_digest());
        assert!(!format!("{kept:?}").contains(&full.secret_digest()));
        let nonce = Nonce(b"n-1".to_vec());
        assert_eq!(md5_credential(&kept, &nonce), md5_credential(&full, &nonce));
        assert_eq!(
            hmac_header(&kept, &nonce, b"body"),
            hmac_header(&full, &nonce, b"body")
        );
        let cred = make_cred(AuthScheme::Md5, &full, &nonce);
        assert_eq!(
            verify_cred(cred.as_ref(), AuthScheme::Md5, &kept, &nonce),
            Ok(())
        );
        let wrong =
            Credentials::from_digest("dev-1", Credentials::new("dev-1", "x").secret_digest());
        assert_eq!(
            verify_cred(cred.as_ref(), AuthScheme::Md5, &wrong, &nonce),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn md5_formula_written_out() {
        // Independent spelling of B64(MD5(B64(MD5(name:pwd)):nonce)).
        let inner = Md5::digest(b"user:secret");
        let mut outer = B64.encode(inner).into_bytes();
        outer.extend_from_slice(b":");
        outer.extend_from_slice(&[1, 2, 3]);
        let want = B64.encode(Md5::digest(&outer));
        assert_eq!(
            md5_credential(&Credentials::new("user", "secret"), &Nonce(vec![1, 2, 3])),
            want
        );
    }

    #[test]
    fn verify_accepts_right_and_refuses_wrong() {
        let creds = Credentials::new("dev", "pw");
        let nonce = Nonce(b"abc".to_vec());
        for scheme in [AuthScheme::Basic, AuthScheme::Md5] {
            let cred = make_cred(scheme, &creds, &nonce).unwrap();
            assert_eq!(verify_cred(Some(&cred), scheme, &creds, &nonce), Ok(()));
            let wrong = Credentials::new("dev", "PW");
            assert_eq!(
                verify_cred(Some(&cred), scheme, &wrong, &nonce),
                Err(AuthError::Invalid)
            );
        }
        let md5cred = make_cred(AuthScheme::Md5, &creds, &nonce).unwrap();
        assert_eq!(
            verify_cred(
                Some(&md5cred),
                AuthScheme::Md5,
                &creds,
                &Nonce(b"abd".to_vec())
            ),
            Err(AuthError::Invalid)
        );
        assert!(matches!(
            verify_cred(Some(&md5cred), AuthScheme::Basic, &creds, &nonce),
            Err(AuthError::WrongScheme(_))
        ));
        assert_eq!(
            verify_cred(None, AuthScheme::Md5, &creds, &nonce),
            Err(AuthError::Missing)
        );
        assert_eq!(
            basic_credential(&Credentials::new("Aladdin", "open sesame")),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn hmac_header_over_exact_bytes() {
        let creds = Credentials::new("srv", "s3cret");
        let nonce = Nonce(b"n1".to_vec());
        let body = b"<SyncML>...</SyncML>";
        let header = hmac_header(&creds, &nonce, body);
        assert!(header.starts_with("algorithm=MD5, username=\"srv\", mac="));
        assert_eq!(verify_hmac(Some(&header), &creds, &nonce, body), Ok(()));
        assert_eq!(
            verify_hmac(Some(&header), &creds, &nonce, b"<SyncML>... </SyncML>"),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify_hmac(None, &creds, &nonce, body),
            Err(AuthError::Missing)
        );
        // Independent spelling of the formula.
        let b64 = |d: &[u8]| B64.encode(d);
        let mut m = b64(&Md5::digest(b"srv:s3cret")).into_bytes();
        m.extend_from_slice(b":n1:");
        m.extend_from_slice(b64(&Md5::digest(body)).as_bytes());
        assert!(header.ends_with(&format!("mac={}", b64(&Md5::digest(&m)))));
        assert!(matches!(
            verify_hmac(
                Some("algorithm=SHA1, username=srv, mac=x"),
                &creds,
                &nonce,
                body
            ),
            Err(AuthError::UnsupportedAlgorithm(_))
        ));
    }
}
