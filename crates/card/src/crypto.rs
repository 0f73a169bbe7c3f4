//! The applet's use of the wire crate's verifiers and signers, in one place: key parsing,
//! the card key handle, certificate and policy checks, appending hash-chained log entries.

use rand_core::RngCore as _;
use simfota_wire::Digest;
use simfota_wire::Limits;
use simfota_wire::LogEntry;
use simfota_wire::cose::{PublicKey, with_sig_structure};
use simfota_wire::{CardCertificate, Es256Signer, ExportCrypto, Policy, Verifier};

use crate::CardError;
use crate::layout::{
    KEY_LEN, O_CARD_PK, O_CARD_SK, O_LOG_FLAGS, O_TRUSTED_TIME, Persist, RECORD_LEN,
};
use crate::platform::{KeyPair, Platform};
use crate::ring::{self, LogState};
use crate::store::Store;

/// The platform as the wire crate's [`Verifier`]: every signature and digest the wire crate
/// checks for the card (tokens, envelopes, requests, acknowledgements, admin commands, the
/// card certificate) runs on the platform's crypto.
pub(crate) struct Via<'a, P>(pub(crate) &'a P);

impl<P: Platform> Verifier for Via<'_, P> {
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.0.sha256(parts)
    }
    fn verify_es256(&self, key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> bool {
        self.0.ecdsa_verify(&key.to_sec1(), message, signature)
    }
}

/// The card key on the platform as the wire crate's [`Es256Signer`] (receipts).
pub(crate) struct CardSigner<'a, P> {
    pub(crate) platform: &'a P,
    pub(crate) key: KeyPair,
}

impl<P: Platform> Es256Signer for CardSigner<'_, P> {
    fn sign_structure(
        &self,
        protected: &[u8],
        aad: &[u8],
        payload: &[u8],
    ) -> simfota_wire::Result<[u8; 64]> {
        with_sig_structure(protected, aad, payload, |message| {
            self.platform.ecdsa_sign(&self.key, message)
        })
        .map_err(|_| simfota_wire::Error::BadKey)
    }
}

/// The card key and the platform as the wire crate's [`ExportCrypto`] (export pages: the
/// signature, the ephemeral key agreement, the IV).
pub(crate) struct CardExport<'a, P> {
    pub(crate) platform: &'a mut P,
    pub(crate) key: KeyPair,
}

impl<P: Platform> Es256Signer for CardExport<'_, P> {
    fn sign_structure(
        &self,
        protected: &[u8],
        aad: &[u8],
        payload: &[u8],
    ) -> simfota_wire::Result<[u8; 64]> {
        CardSigner {
            platform: &*self.platform,
            key: self.key,
        }
        .sign_structure(protected, aad, payload)
    }
}

impl<P: Platform> ExportCrypto for CardExport<'_, P> {
    fn ecdh_ephemeral(&mut self, peer: &PublicKey) -> simfota_wire::Result<(PublicKey, [u8; 32])> {
        let e = self
            .platform
            .ecdh_ephemeral(&peer.to_sec1())
            .map_err(|_| simfota_wire::Error::BadKey)?;
        Ok((PublicKey::from_sec1(&e.public)?, e.shared_x))
    }
    fn fill_random(&mut self, out: &mut [u8]) {
        self.platform.rng().fill_bytes(out);
    }
}

/// Public-key operations performed, counted at the call sites (host instrumentation for the
/// measurements; a card port drops it). Cells, so read-only paths can count too.
#[derive(Default)]
pub(crate) struct OpCount {
    verify: core::cell::Cell<u32>,
    sign: core::cell::Cell<u32>,
    ecdh: core::cell::Cell<u32>,
}

impl OpCount {
    pub(crate) fn verify(&self) {
        self.verify.set(self.verify.get().saturating_add(1));
    }
    pub(crate) fn sign(&self) {
        self.sign.set(self.sign.get().saturating_add(1));
    }
    pub(crate) fn ecdh(&self) {
        self.ecdh.set(self.ecdh.get().saturating_add(1));
    }
    pub(crate) fn snapshot(&self) -> CryptoOps {
        CryptoOps {
            ecdsa_verify: self.verify.get(),
            ecdsa_sign: self.sign.get(),
            ecdh: self.ecdh.get(),
        }
    }
    pub(crate) fn clear(&self) {
        self.verify.set(0);
        self.sign.set(0);
        self.ecdh.set(0);
    }
}

/// Public-key operations the applet performed since the last [`crate::Applet::take_crypto_ops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CryptoOps {
    /// ECDSA P-256 verifications (tokens, manifests, requests, acknowledgements, admin).
    pub ecdsa_verify: u32,
    /// ECDSA P-256 signatures (receipts, export pages).
    pub ecdsa_sign: u32,
    /// Ephemeral key generations + ECDH agreements (export pages).
    pub ecdh: u32,
}

/// Decoding bounds on the card.
pub(crate) const LIMITS: Limits = Limits::CARD;

/// Parses a stored or received SEC1 P-256 public key.
pub(crate) fn public_key(sec1: &[u8]) -> Result<PublicKey, CardError> {
    if sec1.len() != KEY_LEN {
        return Err(CardError::WrongData(
            "P-256 key must be 65 bytes SEC1 uncompressed",
        ));
    }
    PublicKey::from_sec1(sec1).map_err(|_| CardError::WrongData("not a P-256 public key"))
}

/// Decodes a policy encoding.
pub(crate) fn decode_policy(bytes: &[u8]) -> Result<Policy, CardError> {
    Policy::decode(bytes, &LIMITS).map_err(|_| CardError::WrongData("malformed policy"))
}

/// Reads the stored policy; a card personalized without one refuses unauthorized servers and
/// compares device digests (the most restrictive rule with the cheapest integrity mode).
pub(crate) fn policy<S: Store>(p: &Persist<S>) -> Result<Policy, CardError> {
    let mut buf = [0u8; crate::layout::POLICY_MAX];
    let bytes = crate::tables::policy_bytes(p, &mut buf)?;
    if bytes.is_empty() {
        return Ok(Policy::new(
            simfota_wire::objects::UnauthorizedRule::Refuse,
            simfota_wire::objects::IntegrityMode::DeviceDigest,
        ));
    }
    Policy::decode(bytes, &LIMITS).map_err(|_| CardError::Internal("stored policy is corrupt"))
}

/// Checks that `cert` is an issuer-signed card certificate for this ICCID and card key.
pub(crate) fn check_certificate(
    platform: &impl Platform,
    cert: &[u8],
    issuer: &[u8],
    iccid: &[u8],
    card_pk: &[u8],
) -> Result<(), CardError> {
    let issuer = public_key(issuer)?;
    let v = CardCertificate::verify_with(cert, &Via(platform), &issuer, &LIMITS).map_err(|_| {
        CardError::WrongData("card certificate does not verify under the issuer key")
    })?;
    if v.iccid.as_str().as_bytes() != iccid {
        return Err(CardError::WrongData("card certificate names another ICCID"));
    }
    if v.card_key.to_sec1()[..] != card_pk[..] {
        return Err(CardError::WrongData(
            "card certificate certifies another key",
        ));
    }
    Ok(())
}

/// The card's key pair, loaded from persistent memory for one operation (a Java Card port
/// keeps an `ECPrivateKey` object instead and never exports it).
pub(crate) fn card_key<S: Store>(p: &Persist<S>) -> Result<KeyPair, CardError> {
    let mut key = KeyPair {
        secret: [0; 32],
        public: [0; KEY_LEN],
    };
    p.read(O_CARD_SK, &mut key.secret)?;
    p.read(O_CARD_PK, &mut key.public)?;
    // GENERATE KEY PAIR writes both at once; a card that never ran it holds zeros.
    if key.public[0] != 0x04 || key.secret == [0; 32] {
        return Err(CardError::Internal("card key missing"));
    }
    Ok(key)
}

/// The card's trusted time (newest verified token `iat`), `None` before the first token.
pub(crate) fn trusted_time<S: Store>(p: &Persist<S>) -> Result<Option<u64>, CardError> {
    let t = p.u64_at(O_TRUSTED_TIME)?;
    Ok(if t == 0 { None } else { Some(t) })
}

/// Appends `entry` to the log (inside a transaction): sets its sequence number and chain
/// link, encodes the fixed record, advances the ring. Returns the new chain head. An open
/// refusal tally before it is sealed: it is no longer the newest record.
pub(crate) fn append_entry<S: Store>(
    p: &mut Persist<S>,
    platform: &impl Platform,
    entry: &mut LogEntry,
) -> Result<(u32, Digest), CardError> {
    let st: LogState = ring::state(p)?;
    entry.seq = st.next;
    entry.prev_hash = Digest(st.head);
    let record: [u8; RECORD_LEN] = entry
        .encode()
        .map_err(|_| CardError::Internal("log entry does not encode"))?;
    let hash = record_hash(platform, &record);
    ring::append(p, &st, &record, &hash.0)?;
    seal_tally(p)?;
    Ok((st.next, hash))
}

/// Closes the open refusal tally, if any (inside a transaction): from now on the record
/// stays as it is, and the next refusal starts a new tally.
pub(crate) fn seal_tally<S: Store>(p: &mut Persist<S>) -> Result<(), CardError> {
    if p.u8_at(O_LOG_FLAGS)? & FLAG_OPEN_TALLY != 0 {
        p.put_u8(O_LOG_FLAGS, 0)?;
    }
    Ok(())
}

/// The chain hash of a stored record (`LogEntry::record_hash`, on the platform's SHA-256).
pub(crate) fn record_hash(platform: &impl Platform, record: &[u8; RECORD_LEN]) -> Digest {
    Digest(platform.sha256(&[record]))
}

/// Whether the newest record is an open refusal tally.
pub(crate) fn tally_open<S: Store>(p: &Persist<S>) -> Result<bool, CardError> {
    Ok(p.u8_at(O_LOG_FLAGS)? & FLAG_OPEN_TALLY != 0)
}

/// Header bit of [`O_LOG_FLAGS`]: the newest record is an open refusal tally.
const FLAG_OPEN_TALLY: u8 = 1;

/// Where and when a refusal happened, as far as the card knows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefusalContext {
    pub(crate) imei: Option<simfota_wire::Imei>,
    pub(crate) trusted_time: Option<u64>,
    pub(crate) device_time: Option<u64>,
}

/// Counts a refusal of a request nothing authenticated (inside a transaction): in the open
/// tally when there is one, else in a new tally record when `room` allows one. Returns
/// whether the refusal was recorded. A device can repeat such requests at will, so they
/// never take more than one record between two entries an authorized party caused
/// (docs/card.md, the log).
pub(crate) fn count_refusal<S: Store>(
    p: &mut Persist<S>,
    platform: &impl Platform,
    reason: simfota_wire::DenyReason,
    at: &RefusalContext,
    room: bool,
) -> Result<bool, CardError> {
    use simfota_wire::{Event, RefusalTally, Unverified};
    let st = ring::state(p)?;
    if tally_open(p)? {
        let mut rec = [0u8; RECORD_LEN];
        ring::read(p, st.next.wrapping_sub(1), &mut rec)?;
        let mut entry = LogEntry::decode(&rec)
            .map_err(|_| CardError::Internal("open tally record is corrupt"))?;
        if let Event::Refusals(mut tally) = entry.event
            && tally.add(reason)
        {
            entry.event = Event::Refusals(tally);
            entry.imei = at.imei;
            entry.trusted_time = at.trusted_time;
            entry.device_time = at.device_time;
            let record = entry
                .encode()
                .map_err(|_| CardError::Internal("log entry does not encode"))?;
            let hash = record_hash(platform, &record);
            ring::replace_newest(p, &st, &record, &hash.0)?;
            return Ok(true);
        }
        // Not a tally after all, or every reason slot taken: start a new one.
        seal_tally(p)?;
    }
    if !room {
        return Ok(false);
    }
    let mut tally = RefusalTally::new(at.trusted_time, at.device_time);
    tally.add(reason);
    let mut entry = LogEntry::new(0, Digest::default(), Event::Refusals(tally));
    entry.imei = at.imei;
    entry.trusted_time = at.trusted_time;
    entry.device_time = at.device_time;
    entry.unverified = Some(Unverified::IMEI);
    append_entry(p, platform, &mut entry)?;
    p.put_u8(O_LOG_FLAGS, FLAG_OPEN_TALLY)?;
    Ok(true)
}

/// What the card keeps from a verified SUIT manifest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ManifestFacts {
    pub(crate) manifest_digest: Digest,
    pub(crate) sequence: u64,
    pub(crate) vendor: simfota_wire::Uuid,
    pub(crate) class: simfota_wire::Uuid,
    pub(crate) image_digest: Digest,
    pub(crate) image_size: u64,
}

/// Check 7: the envelope's signer is a trusted originator and its signature verifies; fills
/// the log fields (originator, release, version, manifest digest) only once a signature has
/// verified, so a refusal names nothing the card has not checked.
///
/// The SUIT authentication block carries no key id, so the card tries each trusted
/// originator's key in table order. A key under which no authentication block verifies
/// (bad signature, an algorithm the card does not implement, a malformed COSE_Sign1) is not
/// the signer; the first key under which one verifies is. If no key verifies, the originator
/// is unknown (or was removed) and no originator is named. If a key verifies the signature but
/// a later check of the envelope fails (manifest digest, structure — draft-ietf-suit-manifest
/// §8.3), the manifest was altered (`ManifestSignature`); if the manifest uses a command the
/// card does not process, it is refused as such (`ManifestUnsupported`, §8.4.6). The outer
/// error is the card's own failure (reading the originator table), not a verdict.
pub(crate) fn verify_manifest<S: Store>(
    p: &Persist<S>,
    platform: &impl Platform,
    ops: &OpCount,
    envelope: &[u8],
    entry: &mut LogEntry,
) -> Result<Result<ManifestFacts, crate::Reason>, CardError> {
    use crate::Reason;
    use simfota_wire::suit::{Envelope, SignerCheck};
    use simfota_wire::{OriginatorId, ShortText};

    if envelope.len() > LIMITS.max_envelope_len {
        return Ok(Err(Reason::Malformed));
    }
    let Ok(env) = Envelope::decode(envelope, &LIMITS) else {
        return Ok(Err(Reason::Malformed));
    };
    let mut outcome: Result<ManifestFacts, Reason> = Err(Reason::OriginatorUnknown);
    crate::tables::for_each_originator(p, |id, key| {
        if !matches!(outcome, Err(Reason::OriginatorUnknown)) {
            return Ok(());
        }
        let Ok(key) = PublicKey::from_sec1(key) else {
            return Ok(());
        };
        ops.verify();
        match env.verify_as_signer_with(&Via(platform), &key) {
            Ok(m) => {
                entry.originator = OriginatorId::new(id).ok();
                entry.release = m.name.map(ShortText::truncated);
                entry.version = m.version.map(ShortText::truncated);
                let md = m.manifest_digest();
                entry.manifest_digest = Some(md);
                outcome = match (m.vendor_id, m.class_id, m.image_digest, m.image_size) {
                    (Some(vendor), Some(class), Some(image_digest), Some(image_size)) => {
                        Ok(ManifestFacts {
                            manifest_digest: md,
                            sequence: m.sequence,
                            vendor,
                            class,
                            image_digest,
                            image_size,
                        })
                    }
                    _ => Err(Reason::ManifestUnsupported),
                };
            }
            Err(SignerCheck::NotSigned(_)) => {}
            Err(SignerCheck::Invalid(e)) => {
                // This originator signed the envelope: it may be named.
                entry.originator = OriginatorId::new(id).ok();
                outcome = Err(match e {
                    // A command, or a nesting of sequences, beyond what the card processes.
                    simfota_wire::Error::UnsupportedSuit { .. } | simfota_wire::Error::TooDeep => {
                        Reason::ManifestUnsupported
                    }
                    _ => Reason::ManifestSignature,
                });
            }
        }
        Ok(())
    })?;
    Ok(outcome)
}
