//! The keys the server holds or trusts, loaded once at start.
//!
//! - The server key (P-256, PKCS#8 PEM) signs delivery tokens, log-read requests and log
//!   acknowledgements, and opens log exports addressed to this server. It is read from
//!   `--server-key` or, by default, `server-key.pem` in the data folder, created on first run
//!   (mode 0600) together with `server-pub.pem` for the card issuer to list on cards.
//! - Originator public keys: an uploaded package must verify under one of them.
//! - Issuer public keys: a card certificate must verify under one of them.
//!
//! The private key never appears in a log, an API answer or an error message.

use std::path::Path;

use simfota_wire::PublicKey;
use simfota_wire::p256::ecdsa::SigningKey;
use simfota_wire::pem;

use crate::config::ServerConfig;
use crate::error::{Result, ServerError};

/// Loaded keys.
pub struct Keys {
    /// The server signing key.
    pub server: SigningKey,
    /// Its public half.
    pub server_pub: PublicKey,
    /// The same key held by ring: what the server signs with (tokens, log requests and
    /// acknowledgements), several times faster than the no_std code.
    pub server_signer: simfota_wire::RingSigningKey,
    /// Trusted originators: id and key.
    pub originators: Vec<(String, PublicKey)>,
    /// Card issuer keys.
    pub issuers: Vec<PublicKey>,
    /// Signs and checks package URLs (`payload_access = delivered`).
    pub urls: UrlSigner,
}

/// Signs package URLs: `/packages/{id}/d/{exp}.{job}.{mac}/{part}`, where `mac` is the first
/// 16 bytes of HMAC-SHA256 over `{id}.{exp}.{job}` (base64url), under a key derived from the
/// server key, so that every replica (they share the server key) signs and checks alike.
pub struct UrlSigner {
    key: ring::hmac::Key,
}

impl UrlSigner {
    fn new(server: &SigningKey) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"simfota package URL key v1\0");
        h.update(server.to_bytes());
        UrlSigner {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &h.finalize()),
        }
    }

    fn mac(&self, package: i64, exp: u64, job: i64) -> String {
        use base64::Engine as _;
        let tag = ring::hmac::sign(&self.key, format!("{package}.{exp}.{job}").as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
    }

    /// The token of a URL to `package` valid until `exp` (Unix seconds), issued for `job`
    /// (0: an operator).
    pub fn token(&self, package: i64, exp: u64, job: i64) -> String {
        format!("{exp}.{job}.{}", self.mac(package, exp, job))
    }

    /// Whether `token` opens `package` at `now` (Unix seconds).
    pub fn check(&self, package: i64, token: &str, now: u64) -> bool {
        use subtle::ConstantTimeEq as _;
        let mut parts = token.splitn(3, '.');
        let (Some(exp), Some(job), Some(mac)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        let (Ok(exp), Ok(job)) = (exp.parse::<u64>(), job.parse::<i64>()) else {
            return false;
        };
        exp > now && bool::from(self.mac(package, exp, job).as_bytes().ct_eq(mac.as_bytes()))
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("server", &"<private>")
            .field(
                "originators",
                &self
                    .originators
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
            )
            .field("issuers", &self.issuers.len())
            .finish()
    }
}

fn read(path: &Path, what: &'static str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| ServerError::io(what, path, e))
}

fn key_err(path: &Path, e: simfota_wire::Error) -> ServerError {
    ServerError::Config(format!("{}: {e}", path.display()))
}

/// A server key made on first run, not written yet: [`NewServerKey::write`] stores it once
/// the server knows it can start (nothing is written for a start that fails).
pub struct NewServerKey {
    path: std::path::PathBuf,
    pem: String,
    pub_path: std::path::PathBuf,
    pub_pem: String,
}

impl NewServerKey {
    /// Writes the key (mode 0600) and its public half next to it.
    pub fn write(self) -> Result<()> {
        crate::auth::write_private(&self.path, self.pem.as_bytes())?;
        std::fs::write(&self.pub_path, self.pub_pem)
            .map_err(|e| ServerError::io("cannot write", &self.pub_path, e))?;
        tracing::info!(path = %self.path.display(), "created the server signing key");
        Ok(())
    }
}

impl Keys {
    /// Loads the keys named by the configuration; on first run (no server key yet) makes one,
    /// returned unwritten beside them.
    pub fn load(config: &ServerConfig) -> Result<(Self, Option<NewServerKey>)> {
        let server_path = config
            .server_key
            .clone()
            .unwrap_or_else(|| config.data_dir.join("server-key.pem"));
        let mut new_key = None;
        let server = if config.server_key.is_none() && !server_path.exists() {
            let key = SigningKey::random(&mut rand_core::OsRng);
            let pem = pem::signing_key_to_pem(&key).map_err(|e| key_err(&server_path, e))?;
            let pub_pem = pem::public_key_to_pem(&PublicKey::from(&key))
                .map_err(|e| key_err(&server_path, e))?;
            new_key = Some(NewServerKey {
                path: server_path.clone(),
                pem: pem.to_string(),
                pub_path: config.data_dir.join("server-pub.pem"),
                pub_pem: pub_pem.to_string(),
            });
            key
        } else {
            pem::signing_key_from_pem(&read(&server_path, "cannot read the server key")?)
                .map_err(|e| key_err(&server_path, e))?
        };
        let mut originators = Vec::new();
        for o in &config.originators {
            let k = pem::public_key_from_pem(&read(&o.key, "cannot read an originator key")?)
                .map_err(|e| key_err(&o.key, e))?;
            originators.push((o.id.clone(), k));
        }
        let mut issuers = Vec::new();
        for p in &config.issuer_keys {
            let k = pem::public_key_from_pem(&read(p, "cannot read an issuer key")?)
                .map_err(|e| key_err(p, e))?;
            issuers.push(k);
        }
        let server_pub = PublicKey::from(&server);
        let server_signer = simfota_wire::RingSigningKey::new(&server)
            .map_err(|e| ServerError::Config(format!("server key: {e}")))?;
        let urls = UrlSigner::new(&server);
        let keys = Self {
            server,
            server_pub,
            server_signer,
            originators,
            issuers,
            urls,
        };
        Ok((keys, new_key))
    }
}
