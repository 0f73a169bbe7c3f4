//! The card's crypto on a host: [`HostPlatform`], the applet's [`Platform`] on ring, for
//! simulators and tests that run many cards in one process; and [`LocalPlatform`], an
//! in-process card's platform with the back-end chosen at run time ([`Crypto`]).
//!
//! ring is the TLS crypto back-end already in the build. It verifies, signs, hashes and does
//! ephemeral-key ECDH; its ECDSA signatures are randomized (its own nonce generator), where
//! the software back-end ([`RngPlatform`]) signs deterministically (RFC 6979): the same facts
//! give other signature bytes, equally valid. Key generation (personalization, once per
//! card) stays on the software code, drawing from the platform's generator, so a seeded
//! generator gives the same card key on both back-ends. ECDH runs only with ephemeral keys
//! (the log export's ECDH-ES), which is what ring offers.

use std::sync::Mutex;

use rand_core::CryptoRngCore;
use ring::agreement::{self, ECDH_P256, EphemeralPrivateKey};
use ring::digest::{Context, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use simfota_card::platform::{
    CryptoError, Ephemeral, KeyPair, Platform, RngPlatform, Sha256Context, SoftwareSha256,
};

/// Which crypto back-end an in-process card runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Crypto {
    /// The card crate's software code (RustCrypto `p256` and `sha2`), as on a microcontroller.
    #[default]
    Software,
    /// ring ([`HostPlatform`]): several times faster on a host.
    Host,
}

impl Crypto {
    /// Both back-ends, software first.
    pub const ALL: [Crypto; 2] = [Crypto::Software, Crypto::Host];

    /// Its name, as [`Crypto::from_name`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Crypto::Software => "software",
            Crypto::Host => "host",
        }
    }

    /// The back-end called `name` (`software` or `host`).
    pub fn from_name(name: &str) -> Option<Crypto> {
        Crypto::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The back-end the environment variable [`Crypto::ENV`] names, else [`Crypto::Software`]
    /// (how the card crate's test suites are run on either back-end).
    ///
    /// # Panics
    /// When the variable names no back-end: a test run must not fall back silently.
    #[allow(clippy::panic)]
    pub fn from_env() -> Crypto {
        match std::env::var(Self::ENV) {
            Ok(v) => Crypto::from_name(&v)
                .unwrap_or_else(|| panic!("{} = {v:?}: expected software or host", Self::ENV)),
            Err(_) => Crypto::Software,
        }
    }

    /// The environment variable [`Crypto::from_env`] reads.
    pub const ENV: &'static str = "SIMFOTA_CARD_CRYPTO";
}

impl std::fmt::Display for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The applet's platform on ring, with `R` for the applet's own random draws (nonces, the
/// card key) and ring's system generator for its signature nonces and ephemeral keys.
pub struct HostPlatform<R> {
    software: RngPlatform<R>,
    system: SystemRandom,
    /// The card key as ring holds it, with the scalar it was made from: building it costs a
    /// scalar multiplication (ring checks the public key against the private one), and the
    /// card signs with the same key for its whole life.
    signing: Mutex<Option<Box<CachedKey>>>,
}

impl<R> HostPlatform<R> {
    /// The platform around the generator `rng`.
    pub fn new(rng: R) -> Self {
        Self {
            software: RngPlatform(rng),
            system: SystemRandom::new(),
            signing: Mutex::new(None),
        }
    }
}

/// A key pair as ring holds it, with the scalar it was made from.
type CachedKey = ([u8; 32], EcdsaKeyPair);

/// ring's incremental SHA-256.
#[derive(Clone)]
pub struct HostSha256(Context);

impl Sha256Context for HostSha256 {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl<R: CryptoRngCore> Platform for HostPlatform<R> {
    type Rng = R;
    type Sha256 = HostSha256;

    fn rng(&mut self) -> &mut R {
        self.software.rng()
    }

    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = self.sha256_start();
        for part in parts {
            h.update(part);
        }
        h.finish()
    }

    fn sha256_start(&self) -> HostSha256 {
        HostSha256(Context::new(&SHA256))
    }

    fn ecdsa_verify(&self, key: &[u8; 65], message: &[&[u8]], signature: &[u8; 64]) -> bool {
        // ring takes the message in one piece.
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key)
            .verify(&message.concat(), signature)
            .is_ok()
    }

    fn ecdsa_sign(&self, key: &KeyPair, message: &[&[u8]]) -> Result<[u8; 64], CryptoError> {
        let mut cached = self.signing.lock().map_err(|_| CryptoError)?;
        if cached.as_ref().is_none_or(|cached| cached.0 != key.secret) {
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.secret,
                &key.public,
                &self.system,
            )
            .map_err(|_| CryptoError)?;
            *cached = Some(Box::new((key.secret, pair)));
        }
        let (_, pair) = cached.as_deref().ok_or(CryptoError)?;
        let sig = pair
            .sign(&self.system, &message.concat())
            .map_err(|_| CryptoError)?;
        sig.as_ref().try_into().map_err(|_| CryptoError)
    }

    fn generate_key_pair(&mut self) -> Result<KeyPair, CryptoError> {
        self.software.generate_key_pair()
    }

    fn ecdh_ephemeral(&mut self, peer: &[u8; 65]) -> Result<Ephemeral, CryptoError> {
        let private =
            EphemeralPrivateKey::generate(&ECDH_P256, &self.system).map_err(|_| CryptoError)?;
        let public: [u8; 65] = private
            .compute_public_key()
            .map_err(|_| CryptoError)?
            .as_ref()
            .try_into()
            .map_err(|_| CryptoError)?;
        let shared_x = agreement::agree_ephemeral(
            private,
            &agreement::UnparsedPublicKey::new(&ECDH_P256, peer),
            |x| <[u8; 32]>::try_from(x).map_err(|_| CryptoError),
        )
        .map_err(|_| CryptoError)??;
        Ok(Ephemeral { public, shared_x })
    }
}

/// An in-process card's platform: either back-end, chosen when the card is made.
pub enum LocalPlatform<R> {
    /// The software back-end.
    Software(RngPlatform<R>),
    /// ring.
    Host(HostPlatform<R>),
}

impl<R> LocalPlatform<R> {
    /// The platform of back-end `crypto` around the generator `rng`.
    pub fn new(crypto: Crypto, rng: R) -> Self {
        match crypto {
            Crypto::Software => LocalPlatform::Software(RngPlatform(rng)),
            Crypto::Host => LocalPlatform::Host(HostPlatform::new(rng)),
        }
    }

    /// Which back-end it is.
    pub fn crypto(&self) -> Crypto {
        match self {
            LocalPlatform::Software(_) => Crypto::Software,
            LocalPlatform::Host(_) => Crypto::Host,
        }
    }
}

/// The incremental SHA-256 of a [`LocalPlatform`].
#[derive(Clone)]
pub enum LocalSha256 {
    /// The software back-end's.
    Software(SoftwareSha256),
    /// ring's.
    Host(HostSha256),
}

impl Sha256Context for LocalSha256 {
    fn update(&mut self, data: &[u8]) {
        match self {
            LocalSha256::Software(h) => h.update(data),
            LocalSha256::Host(h) => h.update(data),
        }
    }
    fn finish(self) -> [u8; 32] {
        match self {
            LocalSha256::Software(h) => h.finish(),
            LocalSha256::Host(h) => h.finish(),
        }
    }
}

impl<R: CryptoRngCore> Platform for LocalPlatform<R> {
    type Rng = R;
    type Sha256 = LocalSha256;

    fn rng(&mut self) -> &mut R {
        match self {
            LocalPlatform::Software(p) => p.rng(),
            LocalPlatform::Host(p) => p.rng(),
        }
    }

    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        match self {
            LocalPlatform::Software(p) => p.sha256(parts),
            LocalPlatform::Host(p) => p.sha256(parts),
        }
    }

    fn sha256_start(&self) -> LocalSha256 {
        match self {
            LocalPlatform::Software(p) => LocalSha256::Software(p.sha256_start()),
            LocalPlatform::Host(p) => LocalSha256::Host(p.sha256_start()),
        }
    }

    fn ecdsa_verify(&self, key: &[u8; 65], message: &[&[u8]], signature: &[u8; 64]) -> bool {
        match self {
            LocalPlatform::Software(p) => p.ecdsa_verify(key, message, signature),
            LocalPlatform::Host(p) => p.ecdsa_verify(key, message, signature),
        }
    }

    fn ecdsa_sign(&self, key: &KeyPair, message: &[&[u8]]) -> Result<[u8; 64], CryptoError> {
        match self {
            LocalPlatform::Software(p) => p.ecdsa_sign(key, message),
            LocalPlatform::Host(p) => p.ecdsa_sign(key, message),
        }
    }

    fn generate_key_pair(&mut self) -> Result<KeyPair, CryptoError> {
        match self {
            LocalPlatform::Software(p) => p.generate_key_pair(),
            LocalPlatform::Host(p) => p.generate_key_pair(),
        }
    }

    fn ecdh_ephemeral(&mut self, peer: &[u8; 65]) -> Result<Ephemeral, CryptoError> {
        match self {
            LocalPlatform::Software(p) => p.ecdh_ephemeral(peer),
            LocalPlatform::Host(p) => p.ecdh_ephemeral(peer),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_core::OsRng;

    fn platforms() -> [LocalPlatform<OsRng>; 2] {
        Crypto::ALL.map(|c| LocalPlatform::new(c, OsRng))
    }

    /// Each back-end verifies the other's signatures and refuses tampered ones; both hash
    /// alike, whole or in pieces.
    #[test]
    fn the_back_ends_verify_each_others_signatures() {
        let mut soft = LocalPlatform::new(Crypto::Software, OsRng);
        let key = soft.generate_key_pair().unwrap();
        let message: [&[u8]; 3] = [b"Signature1", &[0x43, 0xa1, 0x01], &[0x5a; 700]];
        let whole = message.concat();
        for signer in platforms() {
            let sig = signer.ecdsa_sign(&key, &message).unwrap();
            for verifier in platforms() {
                assert!(verifier.ecdsa_verify(&key.public, &message, &sig));
                assert!(verifier.ecdsa_verify(&key.public, &[&whole], &sig));
                let mut bad = sig;
                bad[40] ^= 0x10;
                assert!(!verifier.ecdsa_verify(&key.public, &message, &bad));
                assert!(!verifier.ecdsa_verify(&key.public, &message[..2], &sig));
                assert!(!verifier.ecdsa_verify(&[4; 65], &message, &sig));
                assert!(!verifier.ecdsa_verify(&key.public, &message, &[0; 64]));
                assert_eq!(verifier.sha256(&message), platforms()[0].sha256(&[&whole]));
                let mut h = verifier.sha256_start();
                for part in message {
                    h.update(part);
                }
                assert_eq!(h.finish(), verifier.sha256(&[&whole]));
            }
        }
    }

    /// The software back-end signs deterministically; ring does not, and signs for the same
    /// key all the same (its cached key pair follows a key change).
    #[test]
    fn signatures_deterministic_on_software_randomized_on_ring() {
        let [mut soft, host] = platforms();
        let a = soft.generate_key_pair().unwrap();
        let b = soft.generate_key_pair().unwrap();
        let m: [&[u8]; 1] = [b"receipt"];
        assert_eq!(soft.ecdsa_sign(&a, &m), soft.ecdsa_sign(&a, &m));
        assert_ne!(host.ecdsa_sign(&a, &m), host.ecdsa_sign(&a, &m));
        for key in [a, b, a] {
            let sig = host.ecdsa_sign(&key, &m).unwrap();
            assert!(soft.ecdsa_verify(&key.public, &m, &sig));
        }
        let broken = KeyPair {
            secret: [0xff; 32],
            public: a.public,
        };
        assert_eq!(host.ecdsa_sign(&broken, &m), Err(CryptoError));
        assert_eq!(soft.ecdsa_sign(&broken, &m), Err(CryptoError));
    }

    /// Both ends of an ECDH-ES agreement find the same secret whichever back-end made the
    /// ephemeral key; a peer key off the curve is refused by both.
    #[test]
    fn ephemeral_ecdh_agrees_with_the_static_side() {
        let static_secret = simfota_card::platform::KeyPair {
            secret: [7; 32],
            public: {
                let sk = simfota_wire::p256::SecretKey::from_slice(&[7; 32]).unwrap();
                simfota_wire::PublicKey::from(simfota_wire::p256::ecdsa::VerifyingKey::from(
                    sk.public_key(),
                ))
                .to_sec1()
            },
        };
        let sk = simfota_wire::p256::SecretKey::from_slice(&static_secret.secret).unwrap();
        for mut p in platforms() {
            let e = p.ecdh_ephemeral(&static_secret.public).unwrap();
            let eph = simfota_wire::p256::PublicKey::from_sec1_bytes(&e.public).unwrap();
            let shared =
                simfota_wire::p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), eph.as_affine());
            assert_eq!(&e.shared_x[..], &shared.raw_secret_bytes()[..]);
            let mut off = static_secret.public;
            off[64] ^= 1;
            assert_eq!(p.ecdh_ephemeral(&off), Err(CryptoError));
        }
    }
}
