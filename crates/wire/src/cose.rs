//! COSE_Sign1 (RFC 9052 §4.2) with ECDSA P-256, COSE_Key for EC2 public keys (RFC 9053 §7.1),
//! and the `Verified<T>` / `Signed<T>` pair every signed object goes through.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::Digest as _;

use crate::cbor::{Key, Reader, Writer, head};
use crate::error::{Error, Result};
use crate::limits::Limits;

/// CBOR tag of COSE_Sign1 (RFC 9052 §2).
pub const TAG_SIGN1: u64 = 18;
/// CBOR tag of a CWT (RFC 8392 §6), accepted around a tagged COSE_Sign1.
pub const TAG_CWT: u64 = 61;
/// CBOR tag of COSE_Encrypt (RFC 9052 §2).
pub const TAG_ENCRYPT: u64 = 96;
/// COSE algorithm ES256: ECDSA w/ SHA-256 (RFC 9053 §2.1).
pub const ALG_ES256: i64 = -7;
/// COSE algorithm ESP256: ECDSA P-256 w/ SHA-256, fully specified (RFC 9864).
pub const ALG_ESP256: i64 = -9;

/// Header labels (RFC 9052 §3.1).
pub(crate) const HDR_ALG: i64 = 1;
pub(crate) const HDR_CRIT: i64 = 2;
pub(crate) const HDR_CTY: i64 = 3;
pub(crate) const HDR_KID: i64 = 4;

/// Protected header `{1: -7}` as we emit it.
pub(crate) const PROTECTED_ES256: [u8; 3] = [0xa1, 0x01, 0x26];

/// A value that passed signature verification. Only this crate's verifiers construct it, so a
/// `Verified<T>` in a signature proves the check happened (style: "a `Verified<T>` that only a
/// verifier can build").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub(crate) fn new(t: T) -> Self {
        Verified(t)
    }
    /// The verified value.
    pub fn get(&self) -> &T {
        &self.0
    }
    /// Gives the value up (it is no longer marked as verified).
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> core::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A P-256 public key (ECDSA verification, ECDH recipient).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// From a SEC1 encoding (65-byte uncompressed or 33-byte compressed point).
    pub fn from_sec1(bytes: &[u8]) -> Result<Self> {
        VerifyingKey::from_sec1_bytes(bytes)
            .map(PublicKey)
            .map_err(|_| Error::BadKey)
    }
    /// From the affine coordinates (as in a COSE_Key).
    pub fn from_xy(x: &[u8; 32], y: &[u8; 32]) -> Result<Self> {
        let mut b = [0u8; 65];
        b[0] = 4;
        b[1..33].copy_from_slice(x);
        b[33..].copy_from_slice(y);
        Self::from_sec1(&b)
    }
    /// The 65-byte uncompressed SEC1 encoding (what the card stores).
    pub fn to_sec1(&self) -> [u8; 65] {
        let p = self.0.to_encoded_point(false);
        let mut out = [0u8; 65];
        out.copy_from_slice(p.as_bytes());
        out
    }
    /// The x and y coordinates.
    pub fn xy(&self) -> ([u8; 32], [u8; 32]) {
        let s = self.to_sec1();
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        x.copy_from_slice(&s[1..33]);
        y.copy_from_slice(&s[33..]);
        (x, y)
    }
    /// The ECDSA verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }
    /// Writes the key as a COSE_Key map `{1: 2, -1: 1, -2: x, -3: y}` (RFC 9053 §7.1.1).
    pub(crate) fn write_cose_key(&self, w: &mut Writer<'_>) -> Result<()> {
        let (x, y) = self.xy();
        w.map(4)?
            .u64(1)?
            .u64(2)?
            .i64(-1)?
            .u64(1)?
            .i64(-2)?
            .bytes(&x)?
            .i64(-3)?
            .bytes(&y)?;
        Ok(())
    }
    /// Reads an EC2 P-256 COSE_Key; other members (kid, alg, key_ops) are accepted and ignored,
    /// a private part (-4) is refused.
    pub(crate) fn read_cose_key(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut kty, mut crv, mut x, mut y) = (None, None, None, None);
        r.map(false, |r, k| {
            match k {
                Key::Int(1) => kty = Some(r.i64()?),
                Key::Int(-1) => crv = Some(r.i64()?),
                Key::Int(-2) => x = Some(r.bytes_n::<32>("COSE_Key x")?),
                Key::Int(-3) => y = Some(r.bytes_n::<32>("COSE_Key y")?),
                Key::Int(-4) => return Err(Error::InvalidField("COSE_Key with private part")),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if kty != Some(2) || crv != Some(1) {
            return Err(Error::BadKey);
        }
        match (x, y) {
            (Some(x), Some(y)) => Self::from_xy(&x, &y),
            _ => Err(Error::MissingField("COSE_Key x/y")),
        }
    }
}

impl From<VerifyingKey> for PublicKey {
    fn from(k: VerifyingKey) -> Self {
        PublicKey(k)
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(k: &SigningKey) -> Self {
        PublicKey(*k.verifying_key())
    }
}

/// A decoded, not yet verified COSE_Sign1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoseSign1<'a> {
    /// The serialized protected header (the bytes the signature covers).
    pub protected: &'a [u8],
    /// The signature algorithm (from the protected header).
    pub alg: i64,
    /// Key identifier (either bucket), if any.
    pub kid: Option<&'a [u8]>,
    /// Content type (label 3) as an integer, if any.
    pub content_type: Option<u64>,
    /// The payload, or `None` when detached (nil).
    pub payload: Option<&'a [u8]>,
    /// The 64-byte r||s signature (RFC 9053 §2.1).
    pub signature: &'a [u8; 64],
    /// Whether the input carried tag 18.
    pub tagged: bool,
}

#[derive(Default)]
struct Headers<'a> {
    alg: Option<i64>,
    kid: Option<&'a [u8]>,
    cty: Option<u64>,
}

/// Reads one header map; `labels` collects the labels for the cross-bucket duplicate check.
fn read_headers<'a>(
    r: &mut Reader<'a, '_>,
    h: &mut Headers<'a>,
    protected: bool,
    labels: &mut ([i64; 16], usize),
) -> Result<()> {
    let mut crit: Option<(usize, usize)> = None;
    r.map(true, |r, k| {
        let at = r.position();
        let label = match k {
            Key::Int(l) => l,
            // Text labels are legal (RFC 9052 §3) but none is understood: ignore the value.
            Key::Text(_) | Key::Other(_) => return Ok(false),
        };
        // RFC 9052 §3: a label must not appear in both buckets.
        if labels.0[..labels.1].contains(&label) {
            return Err(Error::DuplicateKey { at });
        }
        if labels.1 < labels.0.len() {
            labels.0[labels.1] = label;
            labels.1 += 1;
        }
        match label {
            HDR_ALG => {
                if !protected {
                    return Err(Error::AlgNotProtected);
                }
                match r.datatype()? {
                    minicbor::data::Type::String => {
                        r.str()?;
                        h.alg = Some(i64::MIN);
                    }
                    _ => h.alg = Some(r.i64()?),
                }
            }
            HDR_CRIT => {
                // RFC 9052 §3.1: crit lives in the protected bucket, non-empty array.
                if !protected {
                    return Err(Error::InvalidField("crit outside protected header"));
                }
                let start = r.position();
                r.skip()?;
                crit = Some((start, r.position()));
            }
            HDR_KID => h.kid = Some(r.bytes()?),
            HDR_CTY => match r.datatype()? {
                minicbor::data::Type::String => {
                    r.str()?;
                }
                _ => h.cty = Some(r.u64()?),
            },
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if let Some((s, e)) = crit {
        let mut cr = Reader::new(&r.input()[s..e], r.lim);
        let n = cr.array()?;
        if n == 0 {
            return Err(Error::InvalidField("empty crit"));
        }
        for _ in 0..n {
            match cr.datatype()? {
                minicbor::data::Type::String => return Err(Error::UnknownCritical(0)),
                _ => {
                    let l = cr.i64()?;
                    // Labels this implementation processes; anything else must be refused.
                    if !matches!(l, HDR_ALG | HDR_CTY | HDR_KID) {
                        return Err(Error::UnknownCritical(l));
                    }
                }
            }
        }
    }
    Ok(())
}

impl<'a> CoseSign1<'a> {
    /// Decodes a COSE_Sign1 (tagged with 18 or untagged) that must span all of `bytes`.
    pub fn decode(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_object_len {
            return Err(Error::TooLarge {
                what: "COSE_Sign1",
                max: limits.max_object_len,
            });
        }
        let mut r = Reader::new(bytes, limits);
        let s = Self::read(&mut r)?;
        r.finish()?;
        Ok(s)
    }

    pub(crate) fn read(r: &mut Reader<'a, '_>) -> Result<Self> {
        let mut tag = r.opt_tag()?;
        if tag == Some(TAG_CWT) {
            // RFC 8392 §6: a CWT may carry tag 61 around the COSE message, which must then be
            // tagged itself.
            tag = match r.opt_tag()? {
                Some(TAG_SIGN1) => Some(TAG_SIGN1),
                Some(found) => return Err(Error::UnexpectedTag { found }),
                None => return Err(Error::MissingField("COSE_Sign1 tag inside CWT tag")),
            };
        }
        let tagged = match tag {
            None => false,
            Some(TAG_SIGN1) => true,
            Some(found) => return Err(Error::UnexpectedTag { found }),
        };
        r.array_n(4)?;
        let (protected, mut pr) = r.nested()?;
        let mut h = Headers::default();
        let mut labels = ([0i64; 16], 0usize);
        if !protected.is_empty() {
            read_headers(&mut pr, &mut h, true, &mut labels)?;
            pr.finish()?;
        }
        read_headers(r, &mut h, false, &mut labels)?;
        let payload = if r.is_null()? {
            r.null()?;
            None
        } else {
            Some(r.bytes()?)
        };
        let sig = r.bytes()?;
        let alg = h.alg.ok_or(Error::MissingField("alg"))?;
        let signature: &[u8; 64] = sig.try_into().map_err(|_| {
            // A signature of another size belongs to another algorithm (ES384, EdDSA, ...).
            if alg == ALG_ES256 || alg == ALG_ESP256 {
                Error::BadSignature
            } else {
                Error::UnsupportedAlg(alg)
            }
        })?;
        Ok(CoseSign1 {
            protected,
            alg,
            kid: h.kid,
            content_type: h.cty,
            payload,
            signature,
            tagged,
        })
    }

    /// Verifies the signature (RFC 9052 §4.4) with `key`. `detached` supplies the payload when
    /// the message carries nil; a detached message without it, or an attached one with it, fails.
    pub fn verify(
        self,
        key: &PublicKey,
        external_aad: &[u8],
        detached: Option<&[u8]>,
    ) -> Result<Verified<CoseSign1<'a>>> {
        self.verify_with(&BUILTIN, key, external_aad, detached)
    }

    /// [`CoseSign1::verify`] with the crypto of `verifier`.
    pub fn verify_with(
        self,
        verifier: &(impl Verifier + ?Sized),
        key: &PublicKey,
        external_aad: &[u8],
        detached: Option<&[u8]>,
    ) -> Result<Verified<CoseSign1<'a>>> {
        // RFC 9053 §2.1: ES256; RFC 9864: ESP256 is the same operation pinned to P-256.
        if self.alg != ALG_ES256 && self.alg != ALG_ESP256 {
            return Err(Error::UnsupportedAlg(self.alg));
        }
        let payload = match (self.payload, detached) {
            (Some(p), None) => p,
            (None, Some(p)) => p,
            (Some(_), Some(_)) => return Err(Error::InvalidField("payload attached and detached")),
            (None, None) => return Err(Error::MissingField("payload")),
        };
        let valid = with_sig_structure(self.protected, external_aad, payload, |message| {
            verifier.verify_es256(key, message, self.signature)
        });
        if !valid {
            return Err(Error::BadSignature);
        }
        Ok(Verified::new(self))
    }
}

/// The fixed start of every Sig_structure: a 4-element array and the text "Signature1"
/// (RFC 9052 §4.4).
const SIG1_CONTEXT: [u8; 12] = *b"\x84\x6aSignature1";

/// Calls `f` with the Sig_structure `["Signature1", protected, external_aad, payload]`
/// (RFC 9052 §4.4) as the pieces whose concatenation it is, so no buffer for the structure
/// is needed: what an [`Es256Signer`] signs, fed piece by piece to a signature engine.
pub fn with_sig_structure<T>(
    protected: &[u8],
    aad: &[u8],
    payload: &[u8],
    f: impl FnOnce(&[&[u8]]) -> T,
) -> T {
    let (hp, np) = head(2, protected.len() as u64);
    let (ha, na) = head(2, aad.len() as u64);
    let (hl, nl) = head(2, payload.len() as u64);
    f(&[
        &SIG1_CONTEXT,
        &hp[..np],
        protected,
        &ha[..na],
        aad,
        &hl[..nl],
        payload,
    ])
}

/// SHA-256 of the Sig_structure (RFC 9052 §4.4), streamed.
pub(crate) fn sig_structure_digest(protected: &[u8], aad: &[u8], payload: &[u8]) -> [u8; 32] {
    with_sig_structure(protected, aad, payload, |parts| {
        SoftwareVerifier.sha256(parts)
    })
}

/// The ECDSA P-256 and SHA-256 that signature checks run on. The `verify_with` functions of
/// this crate take one: the card applet passes its platform's crypto (a secure element's
/// co-processor, or whatever back-end its host chose); the plain `verify` functions use this
/// crate's own code ([`SoftwareVerifier`], or `RingVerifier` with the `ring` feature).
///
/// Messages come as pieces to be hashed in order, as a card's `Signature.update` takes them:
/// the Sig_structure is never assembled in one buffer.
pub trait Verifier {
    /// SHA-256 of the concatenation of `parts`.
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32];
    /// Whether `signature` (r ‖ s) is `key`'s ECDSA P-256 signature with SHA-256 (ES256,
    /// RFC 9053 §2.1) over the concatenation of `message`.
    fn verify_es256(&self, key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> bool;
}

impl<V: Verifier + ?Sized> Verifier for &V {
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        (**self).sha256(parts)
    }
    fn verify_es256(&self, key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> bool {
        (**self).verify_es256(key, message, signature)
    }
}

/// [`Verifier`] by this crate's no_std code (RustCrypto `p256` and `sha2`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SoftwareVerifier;

impl Verifier for SoftwareVerifier {
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        for part in parts {
            h.update(part);
        }
        h.finalize().into()
    }
    fn verify_es256(&self, key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> bool {
        let digest = self.sha256(message);
        Signature::from_slice(signature)
            .is_ok_and(|sig| key.0.verify_prehash(&digest, &sig).is_ok())
    }
}

/// [`Verifier`] by ring (host only, about five times faster than [`SoftwareVerifier`]; the two
/// agree: `ring_tests`).
#[cfg(feature = "ring")]
#[derive(Debug, Clone, Copy, Default)]
pub struct RingVerifier;

#[cfg(feature = "ring")]
impl Verifier for RingVerifier {
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            h.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(h.finish().as_ref());
        out
    }
    fn verify_es256(&self, key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> bool {
        // ring takes the message in one piece.
        let whole = message.concat();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &key.to_sec1()[..],
        )
        .verify(&whole, signature)
        .is_ok()
    }
}

/// What the plain `verify` functions check with.
#[cfg(feature = "ring")]
pub(crate) const BUILTIN: RingVerifier = RingVerifier;
/// What the plain `verify` functions check with.
#[cfg(not(feature = "ring"))]
pub(crate) const BUILTIN: SoftwareVerifier = SoftwareVerifier;

/// What signs COSE_Sign1 messages with ES256: the card's no_std key ([`SigningKey`],
/// deterministic ECDSA per RFC 6979) or, on a host, `RingSigningKey`.
pub trait Es256Signer {
    /// The signature (r ‖ s) over the Sig_structure `["Signature1", protected, aad, payload]`.
    fn sign_structure(&self, protected: &[u8], aad: &[u8], payload: &[u8]) -> Result<[u8; 64]>;
}

impl Es256Signer for SigningKey {
    fn sign_structure(&self, protected: &[u8], aad: &[u8], payload: &[u8]) -> Result<[u8; 64]> {
        let digest = sig_structure_digest(protected, aad, payload);
        let sig: Signature = self.sign_prehash(&digest).map_err(|_| Error::BadKey)?;
        let mut out = [0u8; 64];
        out.copy_from_slice(&sig.to_bytes());
        Ok(out)
    }
}

/// A P-256 signing key held by ring (randomized ECDSA, about ten times faster than
/// [`SigningKey`] on a host). Made from the same key, it signs for the same public key.
#[cfg(feature = "ring")]
pub struct RingSigningKey {
    pair: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

#[cfg(feature = "ring")]
impl RingSigningKey {
    /// The ring form of `key`.
    pub fn new(key: &SigningKey) -> Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let public = key.verifying_key().to_encoded_point(false);
        let pair = ring::signature::EcdsaKeyPair::from_private_key_and_public_key(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.to_bytes(),
            public.as_bytes(),
            &rng,
        )
        .map_err(|_| Error::BadKey)?;
        Ok(Self { pair, rng })
    }
}

#[cfg(feature = "ring")]
impl core::fmt::Debug for RingSigningKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RingSigningKey(..)")
    }
}

#[cfg(feature = "ring")]
impl Es256Signer for RingSigningKey {
    fn sign_structure(&self, protected: &[u8], aad: &[u8], payload: &[u8]) -> Result<[u8; 64]> {
        let sig = self
            .pair
            .sign(
                &self.rng,
                &with_sig_structure(protected, aad, payload, |m| m.concat()),
            )
            .map_err(|_| Error::BadKey)?;
        sig.as_ref().try_into().map_err(|_| Error::BadKey)
    }
}

/// Room kept in front of a payload written in place before the COSE_Sign1 head is known.
pub(crate) const SIGN1_RESERVE: usize = 48;

/// Signs: writes a tagged COSE_Sign1 with protected `{1: -7}`, unprotected `{4: kid}` (or `{}`)
/// and the payload produced by `payload`, then the RFC 6979 signature. Returns the length used.
///
/// `payload` writes the payload bytes into the slice it gets (part of `out`, so no second
/// buffer is needed) and returns their length; the COSE head is then put in front of them.
pub fn sign1_into<F>(
    out: &mut [u8],
    key: &(impl Es256Signer + ?Sized),
    kid: Option<&[u8]>,
    external_aad: &[u8],
    payload: F,
) -> Result<usize>
where
    F: FnOnce(&mut [u8]) -> Result<usize>,
{
    if kid.is_some_and(|k| k.len() > 32) {
        return Err(Error::BadId("kid longer than 32 bytes"));
    }
    let body = out.get_mut(SIGN1_RESERVE..).ok_or(Error::BufferTooSmall)?;
    let plen = payload(body)?;
    finish_sign1(out, SIGN1_RESERVE, plen, key, kid, external_aad)
}

/// Completes a COSE_Sign1 whose payload already sits at `out[at..at + plen]`.
pub(crate) fn finish_sign1(
    out: &mut [u8],
    at: usize,
    plen: usize,
    key: &(impl Es256Signer + ?Sized),
    kid: Option<&[u8]>,
    external_aad: &[u8],
) -> Result<usize> {
    let mut prefix = [0u8; SIGN1_RESERVE + 40];
    let plen_hdr = {
        let mut w = Writer::new(&mut prefix);
        w.tag(TAG_SIGN1)?.array(4)?.bytes(&PROTECTED_ES256)?;
        match kid {
            Some(k) => w.map(1)?.u64(HDR_KID as u64)?.bytes(k)?,
            None => w.map(0)?,
        };
        w.bytes_head(plen)?;
        w.len()
    };
    let start = plen_hdr;
    let end = start.checked_add(plen).ok_or(Error::BufferTooSmall)?;
    if end + 2 + 64 > out.len() {
        return Err(Error::BufferTooSmall);
    }
    out.copy_within(at..at + plen, start);
    out[..plen_hdr].copy_from_slice(&prefix[..plen_hdr]);
    let sig = key.sign_structure(&PROTECTED_ES256, external_aad, &out[start..end])?;
    let mut w = Writer::new(&mut out[end..]);
    w.bytes(&sig)?;
    Ok(end + w.len())
}

/// Signs `payload` as an attached COSE_Sign1 into `out` (see [`sign1_into`]).
pub fn sign1_bytes_into(
    out: &mut [u8],
    key: &(impl Es256Signer + ?Sized),
    kid: Option<&[u8]>,
    external_aad: &[u8],
    payload: &[u8],
) -> Result<usize> {
    sign1_into(out, key, kid, external_aad, |buf| {
        let dst = buf.get_mut(..payload.len()).ok_or(Error::BufferTooSmall)?;
        dst.copy_from_slice(payload);
        Ok(payload.len())
    })
}

/// Signs a detached-payload COSE_Sign1 (payload nil), as SUIT authentication blocks use
/// (draft-ietf-suit-manifest §8.3: the payload is the SUIT_Digest).
pub fn sign1_detached_into(
    out: &mut [u8],
    key: &(impl Es256Signer + ?Sized),
    external_aad: &[u8],
    payload: &[u8],
) -> Result<usize> {
    let sig = key.sign_structure(&PROTECTED_ES256, external_aad, payload)?;
    let mut w = Writer::new(out);
    w.tag(TAG_SIGN1)?
        .array(4)?
        .bytes(&PROTECTED_ES256)?
        .map(0)?
        .null()?
        .bytes(&sig)?;
    Ok(w.len())
}

/// A simfota object payload carried in a COSE_Sign1.
pub trait SignedPayload: Sized {
    /// Type code (key 0 of the payload map), `None` for CWTs which carry none.
    const TYPE: Option<u64>;
    /// Name for error messages.
    const NAME: &'static str;
    /// Writes the payload CBOR.
    #[doc(hidden)]
    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()>;
    /// Reads the payload CBOR (the whole slice).
    #[doc(hidden)]
    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self>;
}

/// A decoded signed object whose signature has not been checked yet. Its content is only
/// reachable through [`Signed::dangerous_unverified`], meant for key lookup (which server
/// issued it) before [`Signed::verify`].
#[derive(Debug, Clone)]
pub struct Signed<'a, T> {
    sign1: CoseSign1<'a>,
    body: T,
}

impl<'a, T: SignedPayload> Signed<'a, T> {
    /// Decodes the COSE_Sign1 and its payload.
    pub fn decode(bytes: &'a [u8], limits: &Limits) -> Result<Self> {
        if bytes.len() > limits.max_object_len {
            return Err(Error::TooLarge {
                what: T::NAME,
                max: limits.max_object_len,
            });
        }
        let sign1 = CoseSign1::decode(bytes, limits)?;
        let payload = sign1.payload.ok_or(Error::MissingField("payload"))?;
        let mut r = Reader::new(payload, limits);
        let body = T::read_payload(&mut r)?;
        r.finish()?;
        Ok(Signed { sign1, body })
    }

    /// Checks the signature with the signer's key.
    pub fn verify(self, key: &PublicKey) -> Result<Verified<T>> {
        self.verify_with(&BUILTIN, key)
    }

    /// [`Signed::verify`] with the crypto of `verifier`.
    pub fn verify_with(
        self,
        verifier: &(impl Verifier + ?Sized),
        key: &PublicKey,
    ) -> Result<Verified<T>> {
        self.sign1.verify_with(verifier, key, &[], None)?;
        Ok(Verified::new(self.body))
    }

    /// The content before verification: use it only to choose the key.
    pub fn dangerous_unverified(&self) -> &T {
        &self.body
    }

    /// The COSE key identifier, if the signer set one.
    pub fn kid(&self) -> Option<&'a [u8]> {
        self.sign1.kid
    }
}

/// Writes `obj` as a signed COSE_Sign1 into `out`, returns the length used.
pub(crate) fn sign_object<T: SignedPayload>(
    obj: &T,
    key: &(impl Es256Signer + ?Sized),
    kid: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize> {
    sign1_into(out, key, kid, &[], |buf| {
        let mut w = Writer::new(buf);
        obj.write_payload(&mut w)?;
        Ok(w.len())
    })
}

/// Reads the type code under key 0, which every simfota payload map carries first.
pub(crate) fn check_type(r: &mut Reader<'_, '_>, expected: u64) -> Result<()> {
    let found = r.u64()?;
    if found != expected {
        return Err(Error::WrongObjectType { expected, found });
    }
    Ok(())
}

#[cfg(all(test, feature = "ring"))]
mod ring_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    /// Both back-ends give the same verdict on signatures from both signers, and on tampered
    /// ones; a ring signature is a valid ES256 signature for the same public key; both hash
    /// alike.
    #[test]
    fn ring_and_the_no_std_code_agree() {
        let k = key(7);
        let public = PublicKey::from(&k);
        let ring_key = RingSigningKey::new(&k).unwrap();
        let (prot, aad) = (&PROTECTED_ES256[..], &b"context"[..]);
        let check = |key: &PublicKey, aad: &[u8], payload: &[u8], sig: &[u8; 64]| {
            with_sig_structure(prot, aad, payload, |m| {
                let soft = SoftwareVerifier.verify_es256(key, m, sig);
                assert_eq!(soft, RingVerifier.verify_es256(key, m, sig));
                assert_eq!(SoftwareVerifier.sha256(m), RingVerifier.sha256(m));
                soft
            })
        };
        for payload in [&b""[..], b"hello", &[0xa5; 3000]] {
            let signers: [&dyn Es256Signer; 2] = [&k, &ring_key];
            for signer in signers {
                let sig = signer.sign_structure(prot, aad, payload).unwrap();
                assert!(check(&public, aad, payload, &sig));
                let mut bad = sig;
                bad[10] ^= 1;
                assert!(!check(&public, aad, payload, &bad));
                assert!(!check(&public, b"other", payload, &sig));
                assert!(!check(&PublicKey::from(&key(8)), aad, payload, &sig));
                // r = 0 and s = 0 are no signature for either.
                assert!(!check(&public, aad, payload, &[0; 64]));
            }
        }
    }

    /// A whole COSE_Sign1 made with the ring key decodes and verifies.
    #[test]
    fn a_ring_signed_message_verifies() {
        let k = key(9);
        let ring_key = RingSigningKey::new(&k).unwrap();
        let mut out = [0u8; 256];
        let n = sign1_bytes_into(&mut out, &ring_key, Some(b"kid"), b"aad", b"payload").unwrap();
        let m = CoseSign1::decode(&out[..n], &crate::Limits::DEFAULT).unwrap();
        assert!(m.verify(&PublicKey::from(&k), b"aad", None).is_ok());
    }
}
