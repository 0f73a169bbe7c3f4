//! Key files for hosts: P-256 private keys as PKCS#8 PEM, public keys as SPKI PEM.

use std::string::String;

use p256::ecdsa::SigningKey;
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};

use crate::cose::PublicKey;
use crate::error::{Error, Result};

/// Parses a PKCS#8 PEM (`BEGIN PRIVATE KEY`) P-256 key; a SEC1 `BEGIN EC PRIVATE KEY` is accepted too.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey> {
    if let Ok(k) = SigningKey::from_pkcs8_pem(pem) {
        return Ok(k);
    }
    p256::SecretKey::from_sec1_pem(pem)
        .map(SigningKey::from)
        .map_err(|_| Error::KeyFile("not a P-256 PKCS#8 or SEC1 private key PEM"))
}

/// Parses a P-256 secret key (for ECDH: opening exports) from PKCS#8 or SEC1 PEM.
pub fn secret_key_from_pem(pem: &str) -> Result<p256::SecretKey> {
    signing_key_from_pem(pem).map(|k| p256::SecretKey::from(k.as_nonzero_scalar()))
}

/// Parses an SPKI PEM (`BEGIN PUBLIC KEY`) P-256 public key; a private key PEM yields its public key.
pub fn public_key_from_pem(pem: &str) -> Result<PublicKey> {
    if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
        return PublicKey::from_sec1(k.to_sec1_bytes().as_ref());
    }
    signing_key_from_pem(pem)
        .map(|k| PublicKey::from(&k))
        .map_err(|_| Error::KeyFile("not a P-256 public key PEM"))
}

/// PKCS#8 PEM of a private key.
pub fn signing_key_to_pem(key: &SigningKey) -> Result<String> {
    key.to_pkcs8_pem(LineEnding::LF)
        .map(|z| String::from(z.as_str()))
        .map_err(|_| Error::KeyFile("cannot encode private key"))
}

/// SPKI PEM of a public key.
pub fn public_key_to_pem(key: &PublicKey) -> Result<String> {
    let pk = p256::PublicKey::from_sec1_bytes(&key.to_sec1()).map_err(|_| Error::BadKey)?;
    pk.to_public_key_pem(LineEnding::LF)
        .map_err(|_| Error::KeyFile("cannot encode public key"))
}
