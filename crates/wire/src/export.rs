//! Log export: the card's answer to a [`crate::LogReadRequest`] (R4, R12).
//!
//! `COSE_Sign1(card key) { payload = COSE_Encrypt }`, the COSE_Encrypt (RFC 9052 §5.1) having
//! one recipient using direct key agreement ECDH-ES + HKDF-256 (alg -25, RFC 9053 §6.3.1) with
//! an ephemeral P-256 key to the requesting server's key, and content encryption A128GCM
//! (alg 1, RFC 9053 §4.1). The HKDF info is the COSE_KDF_Context of RFC 9053 §5.2 with no
//! party info and SuppPubInfo `[128, recipient protected]`. Only the server reads the entries;
//! anyone with the card certificate checks the signature over the ciphertext.
//!
//! Plaintext: `{0: 6, 1: iccid, 2: request-nonce, 3: first-seq, 4: [* record], 5: chain-head,
//! 6: log-end, ? 7: [pin-tries-left, pin-max-tries / null]}` where each record is a
//! [`LogEntry::RECORD_LEN`]-byte bstr, `chain-head` the hash of the newest entry on the card,
//! `log-end` the next sequence number it will use and member 7 the card's PIN retry counter
//! ([`PinTries`]; absent in pages of cards built before it).

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce as GcmNonce};
use hkdf::Hkdf;
use p256::ecdsa::SigningKey;
use rand_core::CryptoRngCore;
use sha2::Sha256;

use crate::cbor::{Writer, head_len};
use crate::cose::{Es256Signer, PublicKey, TAG_ENCRYPT, finish_sign1};
use crate::error::{Error, Result};
use crate::ids::{Digest, Iccid, Nonce};
use crate::log::LogEntry;
use crate::objects::type_code;

/// Content encryption A128GCM (RFC 9053 §4.1).
pub const ALG_A128GCM: i64 = 1;
/// ECDH-ES + HKDF-256 (RFC 9053 §6.3.1).
pub const ALG_ECDH_ES_HKDF_256: i64 = -25;

/// Protected header of the COSE_Encrypt: `{1: 1}`.
const ENC_PROTECTED: [u8; 3] = [0xa1, 0x01, 0x01];
/// Protected header of the recipient: `{1: -25}`.
const RCPT_PROTECTED: [u8; 4] = [0xa1, 0x01, 0x38, 0x18];
/// Where the plaintext is first written, before the heads in front of it are known.
const PLAIN_AT: usize = 128;

/// The card's PIN retry counter as an export page states it (member 7 of the plaintext): the
/// tries left before the PIN blocks and, when the card knows it, the maximum the counter is
/// reset to. A PIN with no try left is blocked (ISO/IEC 7816-4 §7.5.6: VERIFY answers `6983`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinTries {
    left: u8,
    max: Option<u8>,
}

impl PinTries {
    /// `left` tries of at most `max`; refused when the maximum is 0 or below `left` (a counter
    /// that contradicts itself states nothing).
    pub fn new(left: u8, max: Option<u8>) -> Result<Self> {
        match max {
            Some(0) => Err(Error::InvalidField("PIN maximum tries")),
            Some(m) if left > m => Err(Error::InvalidField("PIN tries left above the maximum")),
            _ => Ok(Self { left, max }),
        }
    }

    /// `left` tries, the maximum not stated.
    pub const fn without_max(left: u8) -> Self {
        Self { left, max: None }
    }

    /// Tries left before the PIN blocks.
    pub const fn left(&self) -> u8 {
        self.left
    }

    /// The maximum tries, if the card stated it.
    pub const fn max(&self) -> Option<u8> {
        self.max
    }

    /// No try left: the card refuses every PIN until the PUK resets the counter.
    pub const fn blocked(&self) -> bool {
        self.left == 0
    }
}

/// What a page of the export says besides the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportHeader {
    /// The card's ICCID.
    pub iccid: Iccid,
    /// The nonce of the request this export answers.
    pub nonce: Nonce,
    /// Sequence number of the first record in the page.
    pub first_seq: u32,
    /// Number of records in the page.
    pub count: u32,
    /// Hash of the newest entry on the card.
    pub chain_head: Digest,
    /// Next sequence number the card will use.
    pub log_end: u32,
    /// The card's PIN retry counter when it was signed; `None` leaves member 7 out (the page
    /// of a card that does not state it).
    pub pin: Option<PinTries>,
}

/// COSE_KDF_Context (RFC 9053 §5.2) for A128GCM with the given recipient protected header.
fn kdf_context(rcpt_protected: &[u8], out: &mut [u8; 64]) -> Result<usize> {
    let mut w = Writer::new(out);
    w.array(4)?.i64(ALG_A128GCM)?;
    w.array(3)?.null()?.null()?.null()?;
    w.array(3)?.null()?.null()?.null()?;
    w.array(2)?.u64(128)?.bytes(rcpt_protected)?;
    Ok(w.len())
}

/// Enc_structure `["Encrypt", protected, external_aad = h'']` (RFC 9052 §5.3).
fn enc_aad(protected: &[u8], out: &mut [u8; 64]) -> Result<usize> {
    let mut w = Writer::new(out);
    w.array(3)?.str("Encrypt")?.bytes(protected)?.bytes(&[])?;
    Ok(w.len())
}

/// ECDH-ES shared secret -> HKDF-SHA-256 -> 16-byte content key.
fn derive_cek(shared_x: &[u8], rcpt_protected: &[u8]) -> Result<[u8; 16]> {
    let mut ctx = [0u8; 64];
    let n = kdf_context(rcpt_protected, &mut ctx)?;
    let mut cek = [0u8; 16];
    Hkdf::<Sha256>::new(None, shared_x)
        .expand(&ctx[..n], &mut cek)
        .map_err(|_| Error::InvalidField("hkdf length"))?;
    Ok(cek)
}

/// What an export page needs from the card's crypto besides this crate's own HKDF and
/// AES-GCM: the ES256 signature over the page, an ephemeral ECDH-ES agreement and random
/// bytes. [`build_export`] uses the no_std code; a card applet passes its platform's crypto
/// to [`build_export_with`].
pub trait ExportCrypto: Es256Signer {
    /// A fresh ephemeral P-256 key pair: its public key and the x coordinate of its ECDH
    /// agreement with `peer` (ECDH-ES, RFC 9053 §6.3.1). The private key is forgotten.
    fn ecdh_ephemeral(&mut self, peer: &PublicKey) -> Result<(PublicKey, [u8; 32])>;
    /// Fills `out` with random bytes.
    fn fill_random(&mut self, out: &mut [u8]);
}

/// [`ExportCrypto`] by the no_std code: the card key, and `rng` for the ephemeral key and the
/// IV (drawn in that order).
struct SoftwareExport<'a, R> {
    card_key: &'a SigningKey,
    rng: &'a mut R,
}

impl<R> Es256Signer for SoftwareExport<'_, R> {
    fn sign_structure(&self, protected: &[u8], aad: &[u8], payload: &[u8]) -> Result<[u8; 64]> {
        self.card_key.sign_structure(protected, aad, payload)
    }
}

impl<R: CryptoRngCore> ExportCrypto for SoftwareExport<'_, R> {
    fn ecdh_ephemeral(&mut self, peer: &PublicKey) -> Result<(PublicKey, [u8; 32])> {
        let eph = p256::NonZeroScalar::random(&mut *self.rng);
        let eph_pub = PublicKey::from(p256::ecdsa::VerifyingKey::from(
            p256::PublicKey::from_secret_scalar(&eph),
        ));
        let peer = p256::PublicKey::from_sec1_bytes(&peer.to_sec1()).map_err(|_| Error::BadKey)?;
        let shared = p256::ecdh::diffie_hellman(eph, peer.as_affine());
        let mut x = [0u8; 32];
        x.copy_from_slice(shared.raw_secret_bytes());
        Ok((eph_pub, x))
    }
    fn fill_random(&mut self, out: &mut [u8]) {
        self.rng.fill_bytes(out);
    }
}

/// Builds a signed, encrypted export page into `out` and returns its length.
///
/// `records(seq, slot)` fills `slot` with the stored record `seq` (for `first_seq ..
/// first_seq + count`); returning `false` aborts with [`Error::RecordUnavailable`]. Records are
/// written straight into `out`, so the card needs no second buffer. `server_kid` is put in the
/// recipient's `kid` so the server finds its key. Needs about `count * 291 + 300` bytes.
pub fn build_export<F>(
    out: &mut [u8],
    header: &ExportHeader,
    server_key: &PublicKey,
    server_kid: &[u8],
    card_key: &SigningKey,
    rng: &mut impl CryptoRngCore,
    records: F,
) -> Result<usize>
where
    F: FnMut(u32, &mut [u8; LogEntry::RECORD_LEN]) -> bool,
{
    let mut crypto = SoftwareExport { card_key, rng };
    build_export_with(out, header, server_key, server_kid, &mut crypto, records)
}

/// [`build_export`] with the signature, the key agreement and the IV from `crypto`.
pub fn build_export_with<F>(
    out: &mut [u8],
    header: &ExportHeader,
    server_key: &PublicKey,
    server_kid: &[u8],
    crypto: &mut (impl ExportCrypto + ?Sized),
    mut records: F,
) -> Result<usize>
where
    F: FnMut(u32, &mut [u8; LogEntry::RECORD_LEN]) -> bool,
{
    if server_kid.len() > 32 {
        return Err(Error::BadId("kid longer than 32 bytes"));
    }
    // 1. Plaintext, at PLAIN_AT.
    let plen = {
        let body = out.get_mut(PLAIN_AT..).ok_or(Error::BufferTooSmall)?;
        let mut w = Writer::new(body);
        w.map(if header.pin.is_some() { 8 } else { 7 })?;
        w.u64(0)?.u64(type_code::LOG_EXPORT)?;
        w.u64(1)?.str(header.iccid.as_str())?;
        w.u64(2)?.bytes(&header.nonce.0)?;
        w.u64(3)?.u64(u64::from(header.first_seq))?;
        w.u64(4)?.array(header.count as usize)?;
        for i in 0..header.count {
            let seq = header
                .first_seq
                .checked_add(i)
                .ok_or(Error::InvalidField("seq"))?;
            let mut slot = [0u8; LogEntry::RECORD_LEN];
            if !records(seq, &mut slot) {
                return Err(Error::RecordUnavailable(seq));
            }
            w.bytes(&slot)?;
        }
        w.u64(5)?.bytes(&header.chain_head.0)?;
        w.u64(6)?.u64(u64::from(header.log_end))?;
        if let Some(pin) = header.pin {
            w.u64(7)?.array(2)?.u64(u64::from(pin.left))?;
            match pin.max {
                Some(m) => w.u64(u64::from(m))?,
                None => w.null()?,
            };
        }
        w.len()
    };

    // 2. Key agreement and content key.
    let (eph_pub, shared_x) = crypto.ecdh_ephemeral(server_key)?;
    let cek = derive_cek(&shared_x, &RCPT_PROTECTED)?;
    let mut iv = [0u8; 12];
    crypto.fill_random(&mut iv);

    // 3. Heads in front of the ciphertext.
    let ct_len = plen + 16;
    let mut enc_prefix = [0u8; 40];
    let enc_prefix_len = {
        let mut w = Writer::new(&mut enc_prefix);
        w.tag(TAG_ENCRYPT)?.array(4)?.bytes(&ENC_PROTECTED)?;
        w.map(1)?.u64(5)?.bytes(&iv)?;
        w.bytes_head(ct_len)?;
        w.len()
    };
    let mut rcpts = [0u8; 160];
    let rcpts_len = {
        let mut w = Writer::new(&mut rcpts);
        w.array(1)?.array(3)?.bytes(&RCPT_PROTECTED)?;
        // Deterministic key order: 4 (0x04) before -1 (0x20).
        w.map(2)?.u64(4)?.bytes(server_kid)?.i64(-1)?;
        eph_pub.write_cose_key(&mut w)?;
        w.bytes(&[])?;
        w.len()
    };
    let enc_len = enc_prefix_len + ct_len + rcpts_len;
    // Sign1 head: tag, array, protected bstr (4), empty map (1), payload bstr head.
    let sign1_prefix_len = 1 + 1 + 4 + 1 + head_len(enc_len as u64);
    let enc_at = sign1_prefix_len;
    let plain_at = enc_at + enc_prefix_len;
    let end = enc_at + enc_len;
    if end + 66 > out.len() || PLAIN_AT + plen > out.len() {
        return Err(Error::BufferTooSmall);
    }

    // 4. Move the plaintext into place, encrypt in place, append tag and recipients.
    out.copy_within(PLAIN_AT..PLAIN_AT + plen, plain_at);
    out[enc_at..plain_at].copy_from_slice(&enc_prefix[..enc_prefix_len]);
    let mut aad = [0u8; 64];
    let aad_len = enc_aad(&ENC_PROTECTED, &mut aad)?;
    let cipher = Aes128Gcm::new_from_slice(&cek).map_err(|_| Error::BadKey)?;
    let tag = cipher
        .encrypt_in_place_detached(
            &GcmNonce::from(iv),
            &aad[..aad_len],
            &mut out[plain_at..plain_at + plen],
        )
        .map_err(|_| Error::TooLarge {
            what: "export plaintext",
            max: usize::MAX,
        })?;
    out[plain_at + plen..plain_at + ct_len].copy_from_slice(&tag);
    out[plain_at + ct_len..end].copy_from_slice(&rcpts[..rcpts_len]);

    // 5. Sign over the COSE_Encrypt (finish_sign1 rewrites the same head in front of it).
    finish_sign1(out, enc_at, enc_len, crypto, None, &[])
}

#[cfg(feature = "std")]
pub use host::{ExportContents, open_export};

#[cfg(feature = "std")]
mod host {
    use std::vec::Vec;

    use super::*;
    use crate::cbor::{Key, Reader};
    use crate::cose::{CoseSign1, Verified, check_type};
    use crate::limits::Limits;

    /// A decrypted, signature-checked export page.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ExportContents {
        /// The card's ICCID.
        pub iccid: Iccid,
        /// The request nonce it answers (compare with the one sent).
        pub nonce: Nonce,
        /// Sequence number of the first record.
        pub first_seq: u32,
        /// The raw records.
        pub records: Vec<[u8; LogEntry::RECORD_LEN]>,
        /// Hash of the newest entry on the card.
        pub chain_head: Digest,
        /// Next sequence number the card will use.
        pub log_end: u32,
        /// The card's PIN retry counter when it signed the page; `None` for a page without
        /// member 7 (a card built before it).
        pub pin: Option<PinTries>,
    }

    impl ExportContents {
        /// Decodes every record and checks the hash chain inside the page: sequence numbers
        /// follow each other, each `prev_hash` is the hash of the record before, and when the
        /// page reaches `log_end` its last record hashes to `chain_head`.
        pub fn entries(&self) -> Result<Vec<LogEntry>> {
            let mut out = Vec::with_capacity(self.records.len());
            let mut prev: Option<Digest> = None;
            for (i, rec) in self.records.iter().enumerate() {
                let e = LogEntry::decode(rec)?;
                if u64::from(e.seq) != u64::from(self.first_seq) + i as u64 {
                    return Err(Error::InvalidField("export sequence numbers"));
                }
                if prev.is_some_and(|p| e.prev_hash != p) {
                    return Err(Error::DigestMismatch("log chain"));
                }
                prev = Some(LogEntry::record_hash(rec));
                out.push(e);
            }
            let last = u64::from(self.first_seq) + self.records.len() as u64;
            if last == u64::from(self.log_end) && prev.is_some_and(|p| p != self.chain_head) {
                return Err(Error::DigestMismatch("chain head"));
            }
            Ok(out)
        }
    }

    /// Verifies the card's signature, then decrypts with the server's private key.
    pub fn open_export(
        bytes: &[u8],
        card_key: &PublicKey,
        server_secret: &p256::SecretKey,
        limits: &Limits,
    ) -> Result<Verified<ExportContents>> {
        let max = 512 + limits.max_export_entries as usize * (LogEntry::RECORD_LEN + 3);
        if bytes.len() > max {
            return Err(Error::TooLarge {
                what: "log export",
                max,
            });
        }
        let mut r = Reader::new(bytes, limits);
        let s1 = CoseSign1::read(&mut r)?;
        r.finish()?;
        let s1 = s1.verify(card_key, &[], None)?;
        let enc = s1.payload.ok_or(Error::MissingField("payload"))?;
        let encrypted = Encrypted::read(enc, limits)?;
        let plain = encrypted.decrypt(server_secret)?;
        read_contents(&plain, limits).map(Verified::new)
    }

    /// The parts of the COSE_Encrypt (RFC 9052 §5.1) an export carries: one recipient,
    /// ECDH-ES + HKDF-256 with an ephemeral key (RFC 9053 §6.3.1), content in A128GCM.
    struct Encrypted<'a> {
        /// The content layer's protected header, as encoded (part of the AAD).
        protected: &'a [u8],
        iv: [u8; 12],
        /// Ciphertext followed by the 16-byte tag.
        ciphertext: &'a [u8],
        /// The recipient layer's protected header, as encoded (HKDF context).
        recipient_protected: &'a [u8],
        ephemeral: PublicKey,
    }

    /// The `alg` (label 1) of an encoded protected header; `AlgNotProtected` without one.
    fn protected_alg(r: &mut Reader<'_, '_>) -> Result<i64> {
        let mut alg = None;
        r.map(false, |r, k| {
            if k == Key::Int(1) {
                alg = Some(r.i64()?);
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        r.finish()?;
        alg.ok_or(Error::AlgNotProtected)
    }

    /// The unprotected header's value under `label`, read by `f`.
    fn unprotected<'a, T>(
        r: &mut Reader<'a, '_>,
        label: i64,
        f: impl Fn(&mut Reader<'a, '_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut value = None;
        r.map(false, |r, k| {
            if k == Key::Int(label) {
                value = Some(f(r)?);
                Ok(true)
            } else {
                Ok(false)
            }
        })?;
        Ok(value)
    }

    impl<'a> Encrypted<'a> {
        fn read(enc: &'a [u8], limits: &Limits) -> Result<Self> {
            let mut r = Reader::new(enc, limits);
            match r.opt_tag()? {
                None | Some(TAG_ENCRYPT) => {}
                Some(found) => return Err(Error::UnexpectedTag { found }),
            }
            r.array_n(4)?;
            let (protected, mut pr) = r.nested()?;
            match protected_alg(&mut pr)? {
                ALG_A128GCM => {}
                a => return Err(Error::UnsupportedAlg(a)),
            }
            let iv = unprotected(&mut r, 5, |r| r.bytes_n::<12>("iv"))?
                .ok_or(Error::MissingField("iv"))?;
            let ciphertext = r.bytes()?;
            if ciphertext.len() < 16 {
                return Err(Error::InvalidField("ciphertext"));
            }
            // recipients: [[protected, unprotected, ciphertext (empty for ECDH-ES)]]
            r.array_n(1)?;
            r.array_n(3)?;
            let (recipient_protected, mut rpr) = r.nested()?;
            match protected_alg(&mut rpr)? {
                ALG_ECDH_ES_HKDF_256 => {}
                a => return Err(Error::UnsupportedAlg(a)),
            }
            let ephemeral = unprotected(&mut r, -1, PublicKey::read_cose_key)?
                .ok_or(Error::MissingField("ephemeral key"))?;
            if !r.bytes()?.is_empty() {
                return Err(Error::InvalidField("recipient ciphertext"));
            }
            r.finish()?;
            Ok(Encrypted {
                protected,
                iv,
                ciphertext,
                recipient_protected,
                ephemeral,
            })
        }

        /// ECDH with the ephemeral key, HKDF to the content key, AES-GCM open.
        fn decrypt(&self, server_secret: &p256::SecretKey) -> Result<Vec<u8>> {
            let eph_point = p256::PublicKey::from_sec1_bytes(&self.ephemeral.to_sec1())
                .map_err(|_| Error::BadKey)?;
            let shared = p256::ecdh::diffie_hellman(
                server_secret.to_nonzero_scalar(),
                eph_point.as_affine(),
            );
            let cek = derive_cek(shared.raw_secret_bytes(), self.recipient_protected)?;
            let mut aad = [0u8; 64];
            let aad_len =
                enc_aad(self.protected, &mut aad).map_err(|_| Error::InvalidField("protected"))?;
            let (body, tag) = self.ciphertext.split_at(self.ciphertext.len() - 16);
            let tag = <[u8; 16]>::try_from(tag).map_err(|_| Error::DecryptFailed)?;
            let mut plain = body.to_vec();
            Aes128Gcm::new_from_slice(&cek)
                .map_err(|_| Error::BadKey)?
                .decrypt_in_place_detached(
                    &GcmNonce::from(self.iv),
                    &aad[..aad_len],
                    &mut plain,
                    &aes_gcm::Tag::from(tag),
                )
                .map_err(|_| Error::DecryptFailed)?;
            Ok(plain)
        }
    }

    /// The decrypted export map (docs/formats.md §7): type code first, then the fields.
    fn read_contents(plain: &[u8], limits: &Limits) -> Result<ExportContents> {
        let mut r = Reader::new(plain, limits);
        let (mut iccid, mut nonce, mut first, mut recs, mut headh, mut end) =
            (None, None, None, None, None, None);
        let mut pin = None;
        let (mut first_key, mut typed) = (true, false);
        r.map(false, |r, k| {
            let was_first = core::mem::replace(&mut first_key, false);
            match k {
                Key::Int(0) if was_first => {
                    check_type(r, type_code::LOG_EXPORT)?;
                    typed = true;
                }
                _ if was_first => return Err(Error::MissingField("type code")),
                Key::Int(1) => iccid = Some(Iccid::parse(r.str()?)?),
                Key::Int(2) => nonce = Some(Nonce(r.bytes_n("nonce")?)),
                Key::Int(3) => first = Some(r.u32("first seq")?),
                Key::Int(4) => recs = Some(read_records(r, limits)?),
                Key::Int(5) => headh = Some(Digest(r.bytes_n("chain head")?)),
                Key::Int(6) => end = Some(r.u32("log end")?),
                Key::Int(7) => pin = Some(read_pin(r)?),
                Key::Int(key) => {
                    return Err(Error::UnknownField {
                        object: "log export",
                        key,
                    });
                }
                _ => {
                    return Err(Error::UnknownField {
                        object: "log export",
                        key: i64::MIN,
                    });
                }
            }
            Ok(true)
        })?;
        r.finish()?;
        if !typed {
            return Err(Error::MissingField("type code"));
        }
        Ok(ExportContents {
            iccid: iccid.ok_or(Error::MissingField("iccid"))?,
            nonce: nonce.ok_or(Error::MissingField("nonce"))?,
            first_seq: first.ok_or(Error::MissingField("first seq"))?,
            records: recs.ok_or(Error::MissingField("records"))?,
            chain_head: headh.ok_or(Error::MissingField("chain head"))?,
            log_end: end.ok_or(Error::MissingField("log end"))?,
            pin,
        })
    }

    /// Member 7: `[tries-left, max-tries / null]`, each a counter of one byte.
    fn read_pin(r: &mut Reader<'_, '_>) -> Result<PinTries> {
        fn counter(r: &mut Reader<'_, '_>, field: &'static str) -> Result<u8> {
            u8::try_from(r.u64()?).map_err(|_| Error::InvalidField(field))
        }
        r.array_n(2)?;
        let left = counter(r, "PIN tries left")?;
        let max = if r.is_null()? {
            r.null()?;
            None
        } else {
            Some(counter(r, "PIN maximum tries")?)
        };
        PinTries::new(left, max)
    }

    /// The records array, at most `max_export_entries` fixed-size records.
    fn read_records(
        r: &mut Reader<'_, '_>,
        limits: &Limits,
    ) -> Result<Vec<[u8; LogEntry::RECORD_LEN]>> {
        let n = r.array()?;
        if n > limits.max_export_entries as usize {
            return Err(Error::TooLarge {
                what: "export entries",
                max: limits.max_export_entries as usize,
            });
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(r.bytes_n::<{ LogEntry::RECORD_LEN }>("log record")?);
        }
        Ok(v)
    }
}
