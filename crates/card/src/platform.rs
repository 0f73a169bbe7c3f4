//! What the applet asks of the card it runs on: random bytes, SHA-256 and the P-256
//! operations (ECDSA sign and verify, ephemeral ECDH, key generation). On a secure element
//! these are the crypto co-processor's; each method maps to one Java Card API
//! (docs/card.md, "Crypto platform").
//!
//! The applet never calls a crypto library itself: it goes through [`Platform`], and gives
//! the wire crate's verifiers and signers its platform through the adapters of
//! `crate::crypto`. [`RngPlatform`] is the software back-end (RustCrypto `p256` and `sha2`,
//! `no_std`, for microcontrollers and the reference behaviour); a host may bring a faster
//! one (the card-link crate's `HostPlatform`). Both must give the same answers, signatures
//! aside where a back-end signs with random nonces.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::Digest as _;

/// A P-256 key pair as the card's persistent store keeps it: the private scalar (big-endian)
/// and the public key (SEC1 uncompressed). The applet reads it for each signature; a Java
/// Card port keeps it in an `ECPrivateKey` object instead and never exports the scalar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyPair {
    /// The private scalar.
    pub secret: [u8; 32],
    /// The public key, `04 ‖ x ‖ y`.
    pub public: [u8; 65],
}

impl core::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The outcome of an ephemeral-static ECDH: the fresh public key (SEC1 uncompressed) and the
/// shared secret's x coordinate. The ephemeral private key is gone once this exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Ephemeral {
    /// The ephemeral public key, `04 ‖ x ‖ y`.
    pub public: [u8; 65],
    /// The x coordinate of the shared point (RFC 9053 §6.3.1, the ECDH-ES input to HKDF).
    pub shared_x: [u8; 32],
}

impl core::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ephemeral")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The crypto engine refused a key or failed (Java Card: a `CryptoException`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoError;

/// An incremental SHA-256 (Java Card: a `MessageDigest` object, `update` then `doFinal`).
pub trait Sha256Context {
    /// Feeds more bytes.
    fn update(&mut self, data: &[u8]);
    /// The digest of everything fed.
    fn finish(self) -> [u8; 32];
}

/// What the applet needs from its platform. Keys cross this interface as the card stores
/// them: public keys SEC1 uncompressed (65 bytes, Java Card `ECPublicKey.setW`), the card's
/// own key pair as a [`KeyPair`]. Messages to sign, verify or hash come as pieces to be fed in
/// order (`update` per piece, the last with `doFinal`/`sign`/`verify`), so the applet never
/// assembles one in a buffer.
pub trait Platform {
    /// The random generator type.
    type Rng: CryptoRngCore;
    /// The incremental SHA-256 type (the payload digest of card-digest mode).
    type Sha256: Sha256Context;

    /// The cryptographically secure random generator: nonces, and whatever the crypto
    /// methods below draw (Java Card: `RandomData.ALG_TRNG`).
    fn rng(&mut self) -> &mut Self::Rng;

    /// SHA-256 of the concatenation of `parts` (Java Card: `MessageDigest.ALG_SHA_256`).
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32];

    /// A fresh incremental SHA-256.
    fn sha256_start(&self) -> Self::Sha256;

    /// Whether `signature` (r ‖ s) is `key`'s ECDSA P-256 signature with SHA-256 over the
    /// concatenation of `message` (Java Card: `Signature.ALG_ECDSA_SHA_256`, `MODE_VERIFY`,
    /// the r ‖ s form converted to DER or taken as is by `SIG_CIPHER_ECDSA` with
    /// `PAD_NULL`). A key that is not a point of the curve verifies nothing.
    fn ecdsa_verify(&self, key: &[u8; 65], message: &[&[u8]], signature: &[u8; 64]) -> bool;

    /// The ECDSA P-256 signature with SHA-256 (r ‖ s) of `key` over the concatenation of
    /// `message` (Java Card: `Signature.ALG_ECDSA_SHA_256`, `MODE_SIGN`).
    fn ecdsa_sign(&self, key: &KeyPair, message: &[&[u8]]) -> Result<[u8; 64], CryptoError>;

    /// A new P-256 key pair (Java Card: `KeyPair.genKeyPair` on `ALG_EC_FP`, 256 bits).
    fn generate_key_pair(&mut self) -> Result<KeyPair, CryptoError>;

    /// ECDH with a fresh ephemeral key and `peer`'s public key (Java Card: `genKeyPair`, then
    /// `KeyAgreement.ALG_EC_SVDP_DH_PLAIN`, which yields the x coordinate).
    fn ecdh_ephemeral(&mut self, peer: &[u8; 65]) -> Result<Ephemeral, CryptoError>;
}

/// The software platform: RustCrypto `p256` and `sha2` (`no_std`, no heap), with randomness
/// from `R`. Signatures are deterministic (RFC 6979), so the same facts always give the same
/// bytes; key generation and ephemeral keys draw from `R` alone, so a seeded generator makes
/// every answer reproducible.
pub struct RngPlatform<R>(pub R);

/// The software back-end's incremental SHA-256.
#[derive(Clone, Default)]
pub struct SoftwareSha256(sha2::Sha256);

impl Sha256Context for SoftwareSha256 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// SHA-256 of the concatenation of `parts`, by `sha2`.
fn software_sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update(part);
    }
    h.finalize().into()
}

/// The SEC1 uncompressed encoding of a public key.
fn sec1(key: &p256::PublicKey) -> [u8; 65] {
    let point = key.to_encoded_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(point.as_bytes());
    out
}

impl<R: CryptoRngCore> Platform for RngPlatform<R> {
    type Rng = R;
    type Sha256 = SoftwareSha256;

    fn rng(&mut self) -> &mut R {
        &mut self.0
    }

    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        software_sha256(parts)
    }

    fn sha256_start(&self) -> SoftwareSha256 {
        SoftwareSha256::default()
    }

    fn ecdsa_verify(&self, key: &[u8; 65], message: &[&[u8]], signature: &[u8; 64]) -> bool {
        let (Ok(key), Ok(sig)) = (
            VerifyingKey::from_sec1_bytes(key),
            Signature::from_slice(signature),
        ) else {
            return false;
        };
        key.verify_prehash(&software_sha256(message), &sig).is_ok()
    }

    fn ecdsa_sign(&self, key: &KeyPair, message: &[&[u8]]) -> Result<[u8; 64], CryptoError> {
        let sk = SigningKey::from_slice(&key.secret).map_err(|_| CryptoError)?;
        let sig: Signature = sk
            .sign_prehash(&software_sha256(message))
            .map_err(|_| CryptoError)?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }

    fn generate_key_pair(&mut self) -> Result<KeyPair, CryptoError> {
        let sk = p256::SecretKey::random(&mut self.0);
        Ok(KeyPair {
            secret: sk.to_bytes().into(),
            public: sec1(&sk.public_key()),
        })
    }

    fn ecdh_ephemeral(&mut self, peer: &[u8; 65]) -> Result<Ephemeral, CryptoError> {
        let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| CryptoError)?;
        let eph = p256::NonZeroScalar::random(&mut self.0);
        let public = sec1(&p256::PublicKey::from_secret_scalar(&eph));
        let shared = p256::ecdh::diffie_hellman(eph, peer.as_affine());
        let mut shared_x = [0u8; 32];
        shared_x.copy_from_slice(shared.raw_secret_bytes());
        Ok(Ephemeral { public, shared_x })
    }
}
