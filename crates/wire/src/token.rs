//! The delivery token: a CWT (RFC 8392) signed by an authorized DM server with COSE_Sign1
//! ES256, binding one update to one card nonce, one subscription (ICCID) and one device (IMEI).

use crate::cbor::{Key, Reader, Writer};
use crate::cose::{Es256Signer, PublicKey, Signed, SignedPayload, Verified, Verifier, sign_object};
use crate::error::{Error, Result};
use crate::ids::{ChargingRef, Digest, Iccid, Imei, Nonce, ServerId, UpdateId};
use crate::limits::Limits;

/// CWT claim keys. 1/4/6/7 are registered (RFC 8392 §3.1); the others are in the
/// "Private Use" range (integers below -65536, RFC 8392 §9.1).
pub mod claims {
    /// `iss`: the issuing server's id.
    pub const ISS: i64 = 1;
    /// `exp`: expiry, NumericDate.
    pub const EXP: i64 = 4;
    /// `nbf`: not before, NumericDate.
    pub const NBF: i64 = 5;
    /// `iat`: issue time, NumericDate.
    pub const IAT: i64 = 6;
    /// `cti`: the update id.
    pub const CTI: i64 = 7;
    /// The card's one-time nonce (bstr 16).
    pub const NONCE: i64 = -65537;
    /// Target subscription, ICCID digits (tstr).
    pub const ICCID: i64 = -65538;
    /// Target device, IMEI digits (tstr).
    pub const IMEI: i64 = -65539;
    /// SHA-256 of the bstr-wrapped SUIT manifest the token authorizes (bstr 32).
    pub const MANIFEST_DIGEST: i64 = -65540;
    /// Optional charging reference (tstr).
    pub const CHARGING_REF: i64 = -65541;
}

/// The claims of a delivery token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryToken {
    /// Issuing server (`iss`).
    pub iss: ServerId,
    /// Issue time, seconds since the epoch (`iat`): the card's trusted time source.
    pub iat: u64,
    /// Expiry, seconds since the epoch (`exp`).
    pub exp: u64,
    /// Not before, seconds since the epoch (`nbf`, RFC 8392 §3.1.5); optional.
    pub nbf: Option<u64>,
    /// Update id (`cti`).
    pub cti: UpdateId,
    /// The card nonce this token answers.
    pub nonce: Nonce,
    /// Target subscription.
    pub iccid: Iccid,
    /// Target device.
    pub imei: Imei,
    /// Digest of the authorized SUIT manifest (what `suit::Manifest::manifest_digest` gives).
    pub manifest_digest: Digest,
    /// Optional charging reference.
    pub charging_ref: Option<ChargingRef>,
}

impl DeliveryToken {
    /// Signs the token (COSE_Sign1 ES256, RFC 6979) into `out`; the server id goes into the
    /// unprotected `kid` too, so verifiers can pick the key without parsing the claims.
    pub fn sign(&self, key: &(impl Es256Signer + ?Sized), out: &mut [u8]) -> Result<usize> {
        sign_object(self, key, Some(self.iss.as_str().as_bytes()), out)
    }

    /// Decodes without verifying: read `dangerous_unverified().iss` to find the server key.
    pub fn decode<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Signed<'a, Self>> {
        Signed::decode(bytes, limits)
    }

    /// Decodes and verifies with the issuing server's key.
    pub fn verify(bytes: &[u8], key: &PublicKey, limits: &Limits) -> Result<Verified<Self>> {
        Self::decode(bytes, limits)?.verify(key)
    }

    /// Decodes and verifies with the issuing server's key and the crypto of `verifier`.
    pub fn verify_with(
        bytes: &[u8],
        verifier: &(impl Verifier + ?Sized),
        key: &PublicKey,
        limits: &Limits,
    ) -> Result<Verified<Self>> {
        Self::decode(bytes, limits)?.verify_with(verifier, key)
    }

    /// Encodes and signs into a new vector (host side).
    #[cfg(feature = "std")]
    pub fn to_vec(&self, key: &(impl Es256Signer + ?Sized)) -> Result<std::vec::Vec<u8>> {
        let mut buf = std::vec![0u8; 1024];
        let n = self.sign(key, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

impl SignedPayload for DeliveryToken {
    const TYPE: Option<u64> = None;
    const NAME: &'static str = "delivery token";

    fn write_payload(&self, w: &mut Writer<'_>) -> Result<()> {
        // Deterministic order (RFC 8949 §4.2.1: by encoded key bytes): 1, 4, (5), 6, 7, then the
        // negative private claims -65537.. in increasing magnitude.
        let n = 8 + usize::from(self.charging_ref.is_some()) + usize::from(self.nbf.is_some());
        w.map(n)?;
        w.i64(claims::ISS)?.str(self.iss.as_str())?;
        w.i64(claims::EXP)?.u64(self.exp)?;
        if let Some(nbf) = self.nbf {
            w.i64(claims::NBF)?.u64(nbf)?;
        }
        w.i64(claims::IAT)?.u64(self.iat)?;
        w.i64(claims::CTI)?.bytes(self.cti.as_bytes())?;
        w.i64(claims::NONCE)?.bytes(&self.nonce.0)?;
        w.i64(claims::ICCID)?.str(self.iccid.as_str())?;
        w.i64(claims::IMEI)?.str(self.imei.as_str())?;
        w.i64(claims::MANIFEST_DIGEST)?
            .bytes(&self.manifest_digest.0)?;
        if let Some(c) = &self.charging_ref {
            w.i64(claims::CHARGING_REF)?.str(c.as_str())?;
        }
        Ok(())
    }

    fn read_payload(r: &mut Reader<'_, '_>) -> Result<Self> {
        let (mut iss, mut iat, mut exp, mut cti, mut nonce) = (None, None, None, None, None);
        let mut nbf = None;
        let (mut iccid, mut imei, mut md, mut cref) = (None, None, None, None);
        // RFC 8392 §7.2 step 6-7: unknown claims are ignored; duplicates are refused.
        r.map(false, |r, k| {
            match k {
                Key::Int(claims::ISS) => iss = Some(ServerId::new(r.str()?)?),
                Key::Int(claims::EXP) => exp = Some(r.u64()?),
                Key::Int(claims::IAT) => iat = Some(r.u64()?),
                Key::Int(claims::NBF) => nbf = Some(r.u64()?),
                Key::Int(claims::CTI) => cti = Some(UpdateId::new(r.bytes()?)?),
                Key::Int(claims::NONCE) => nonce = Some(Nonce(r.bytes_n("nonce")?)),
                Key::Int(claims::ICCID) => iccid = Some(Iccid::parse(r.str()?)?),
                Key::Int(claims::IMEI) => imei = Some(Imei::parse(r.str()?)?),
                Key::Int(claims::MANIFEST_DIGEST) => {
                    md = Some(Digest(r.bytes_n("manifest digest")?))
                }
                Key::Int(claims::CHARGING_REF) => cref = Some(ChargingRef::new(r.str()?)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(DeliveryToken {
            iss: iss.ok_or(Error::MissingField("iss"))?,
            iat: iat.ok_or(Error::MissingField("iat"))?,
            exp: exp.ok_or(Error::MissingField("exp"))?,
            nbf,
            cti: cti.ok_or(Error::MissingField("cti"))?,
            nonce: nonce.ok_or(Error::MissingField("nonce"))?,
            iccid: iccid.ok_or(Error::MissingField("iccid"))?,
            imei: imei.ok_or(Error::MissingField("imei"))?,
            manifest_digest: md.ok_or(Error::MissingField("manifest digest"))?,
            charging_ref: cref,
        })
    }
}
