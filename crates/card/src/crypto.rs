//! The applet's use of the wire crate's verifiers and signers, in one place: key parsing,
//! the card key handle, certificate and policy checks, appending hash-chained log entries.

use p256::ecdsa::SigningKey;
use simfota_wire::Digest;
use simfota_wire::Limits;
use simfota_wire::LogEntry;
use simfota_wire::cose::PublicKey;
use simfota_wire::{CardCertificate, Policy};

use crate::CardError;
use crate::layout::{KEY_LEN, O_CARD_SK, O_LOG_FLAGS, O_TRUSTED_TIME, Persist, RECORD_LEN};
use crate::ring::{self, LogState};
use crate::store::Store;

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
    cert: &[u8],
    issuer: &[u8],
    iccid: &[u8],
    card_pk: &[u8],
) -> Result<(), CardError> {
    let issuer = public_key(issuer)?;
    let v = CardCertificate::verify(cert, &issuer, &LIMITS).map_err(|_| {
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

/// The card's signing key, loaded from persistent memory for one operation (a Java Card
/// port keeps an `ECPrivateKey` object instead and never exports it).
pub(crate) fn card_key<S: Store>(p: &Persist<S>) -> Result<SigningKey, CardError> {
    let mut scalar = [0u8; 32];
    p.read(O_CARD_SK, &mut scalar)?;
    SigningKey::from_slice(&scalar).map_err(|_| CardError::Internal("card key missing"))
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
    entry: &mut LogEntry,
) -> Result<(u32, Digest), CardError> {
    let st: LogState = ring::state(p)?;
    entry.seq = st.next;
    entry.prev_hash = Digest(st.head);
    let record: [u8; RECORD_LEN] = entry
        .encode()
        .map_err(|_| CardError::Internal("log entry does not encode"))?;
    let hash = LogEntry::record_hash(&record);
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
            let hash = LogEntry::record_hash(&record);
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
    append_entry(p, &mut entry)?;
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
        match env.verify_as_signer(&key) {
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
