//! Personalization: GENERATE ASYMMETRIC KEY PAIR and STORE DATA (GlobalPlatform Card
//! Specification v2.3 §11.11, data in DGI format: a 2-byte group identifier, a length of one
//! byte or `FF` + two bytes, the value). The last block (P1 b8 = 1) checks that the card is
//! complete and locks it: from then on every personalization command answers `6985`.
//!
//! In the field the personalization bureau sends these under a GlobalPlatform secure channel;
//! the applet itself takes them only before it is locked.

use crate::apdu::Command;
use crate::applet::{Core, Platform};
use crate::layout::{
    self, CERT_MAX, ICCID_MAX, IMSI_MAX, KEY_LEN, Lifecycle, O_CARD_PK, O_CARD_SK, O_CERT, O_ICCID,
    O_IMSI, O_ISSUER_PK, Persist, PinSlot,
};
use crate::pin::{PIN_LEN, valid_pin_block};
use crate::store::Store;
use crate::{CardError, tables};

/// DGI tags accepted by STORE DATA (see `docs/apdu.md`).
pub mod dgi {
    /// ICCID, ASCII digits (ITU-T E.118, Luhn).
    pub const ICCID: u16 = 0x0101;
    /// IMSI, 6-15 ASCII digits (ITU-T E.212).
    pub const IMSI: u16 = 0x0102;
    /// PIN block (8 bytes) || maximum tries (1 byte, 1-15).
    pub const PIN: u16 = 0x0103;
    /// PUK block (8 bytes) || maximum tries (1 byte, 1-15).
    pub const PUK: u16 = 0x0104;
    /// Issuer public key, SEC1 uncompressed P-256 (65 bytes).
    pub const ISSUER_KEY: u16 = 0x0201;
    /// Card certificate: issuer-signed, binding this card's ICCID and generated public key.
    pub const CARD_CERTIFICATE: u16 = 0x0202;
    /// Authorized server: rights (1 byte) || key (65 bytes) || id (UTF-8).
    pub const SERVER: u16 = 0x0301;
    /// Trusted originator: key (65 bytes) || id (UTF-8).
    pub const ORIGINATOR: u16 = 0x0302;
    /// Policy, as the wire crate encodes it.
    pub const POLICY: u16 = 0x0303;
}

/// Formats a blank store (inside the caller's transaction).
fn ensure_formatted<S: Store>(p: &mut Persist<S>) -> Result<(), CardError> {
    if p.lifecycle()? == Lifecycle::Blank {
        p.format()?;
        p.set_lifecycle(Lifecycle::Personalizing)?;
    }
    Ok(())
}

/// GENERATE ASYMMETRIC KEY PAIR (ISO/IEC 7816-8 §5.1), P1-P2 `0000`: the card makes its
/// P-256 key pair from its own random generator and answers the public key (SEC1
/// uncompressed, 65 bytes). The private key never leaves the card. Personalization only.
pub(crate) fn generate_key_pair<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    io: &mut [u8],
) -> Result<usize, CardError> {
    let pair = core
        .platform
        .generate_key_pair()
        .map_err(|_| CardError::Internal("key generation failed"))?;
    let pk = &pair.public;
    core.p.transaction(|p| -> Result<(), CardError> {
        ensure_formatted(p)?;
        p.write(O_CARD_SK, &pair.secret)?;
        p.write(O_CARD_PK, pk)?;
        // A new key voids any certificate stored for the old one.
        p.put_u16(O_CERT, 0)?;
        Ok(())
    })?;
    io[..pk.len()].copy_from_slice(pk);
    Ok(pk.len())
}

/// Splits DGI-formatted data into (tag, value) pairs.
pub(crate) struct Dgis<'a>(&'a [u8]);

impl<'a> Iterator for Dgis<'a> {
    type Item = Result<(u16, &'a [u8]), CardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let bad = Some(Err(CardError::WrongData("malformed DGI")));
        let [t0, t1, l0, rest @ ..] = self.0 else {
            self.0 = &[];
            return bad;
        };
        let tag = u16::from_be_bytes([*t0, *t1]);
        let (len, rest) = if *l0 == 0xFF {
            let [a, b, rest @ ..] = rest else {
                self.0 = &[];
                return bad;
            };
            (usize::from(u16::from_be_bytes([*a, *b])), rest)
        } else {
            (usize::from(*l0), rest)
        };
        if rest.len() < len {
            self.0 = &[];
            return bad;
        }
        let (value, rest) = rest.split_at(len);
        self.0 = rest;
        Some(Ok((tag, value)))
    }
}

/// STORE DATA: P1 b8 = last block; P2 = block number (not enforced: each block stands on
/// its own). All DGIs of one command are written in one transaction.
pub(crate) fn store_data<S: Store, P: Platform>(
    core: &mut Core<S, P>,
    cmd: &Command<'_>,
    io: &mut [u8],
    n: usize,
) -> Result<usize, CardError> {
    if cmd.p1 & 0x7F != 0 {
        return Err(CardError::WrongP1P2);
    }
    let last = cmd.p1 & 0x80 != 0;
    let data = &io[..n];
    // Check every DGI before writing any (all or nothing).
    for item in Dgis(data) {
        let (tag, value) = item?;
        check_dgi(&core.p, tag, value)?;
    }
    let platform = &core.platform;
    core.p.transaction(|p| -> Result<(), CardError> {
        ensure_formatted(p)?;
        for item in Dgis(data) {
            let (tag, value) = item?;
            apply_dgi(p, tag, value)?;
        }
        if last {
            check_complete(p, platform)?;
            p.set_lifecycle(Lifecycle::Operational)?;
        }
        Ok(())
    })?;
    Ok(0)
}

fn all_digits(v: &[u8], min: usize, max: usize) -> bool {
    (min..=max).contains(&v.len()) && v.iter().all(u8::is_ascii_digit)
}

fn check_pin_dgi(v: &[u8]) -> Result<(), CardError> {
    if v.len() != PIN_LEN + 1 || !valid_pin_block(&v[..PIN_LEN]) || !(1..=15).contains(&v[PIN_LEN])
    {
        return Err(CardError::WrongData(
            "PIN/PUK DGI: 8-byte block + tries 1-15",
        ));
    }
    Ok(())
}

fn check_dgi<S: Store>(p: &Persist<S>, tag: u16, v: &[u8]) -> Result<(), CardError> {
    match tag {
        dgi::ICCID => {
            let s = core::str::from_utf8(v).map_err(|_| CardError::WrongData("ICCID"))?;
            simfota_wire::Iccid::parse(s).map_err(|_| CardError::WrongData("ICCID"))?;
            if v.len() > ICCID_MAX {
                return Err(CardError::WrongData("ICCID"));
            }
        }
        dgi::IMSI => {
            if !all_digits(v, 6, IMSI_MAX) {
                return Err(CardError::WrongData("IMSI: 6-15 digits"));
            }
        }
        dgi::PIN | dgi::PUK => check_pin_dgi(v)?,
        dgi::ISSUER_KEY => {
            crate::crypto::public_key(v).map_err(|_| CardError::WrongData("issuer key"))?;
        }
        dgi::CARD_CERTIFICATE => {
            if v.len() > CERT_MAX {
                return Err(CardError::WrongData("certificate too long"));
            }
            // Verified against the stored issuer key, ICCID and card key in `check_complete`,
            // once everything it binds is present.
        }
        dgi::SERVER => {
            tables::parse_server_dgi(v)?;
        }
        dgi::ORIGINATOR => {
            tables::parse_originator_dgi(v)?;
        }
        dgi::POLICY => {
            tables::check_policy(v)?;
        }
        _ => return Err(CardError::WrongData("unknown DGI")),
    }
    let _ = p;
    Ok(())
}

fn apply_dgi<S: Store>(p: &mut Persist<S>, tag: u16, v: &[u8]) -> Result<(), CardError> {
    match tag {
        dgi::ICCID => p.put_lv(O_ICCID, v)?,
        dgi::IMSI => p.put_lv(O_IMSI, v)?,
        dgi::PIN => p.set_pin(PinSlot::Pin, &v[..PIN_LEN], v[PIN_LEN])?,
        dgi::PUK => p.set_pin(PinSlot::Puk, &v[..PIN_LEN], v[PIN_LEN])?,
        dgi::ISSUER_KEY => p.write(O_ISSUER_PK, v)?,
        dgi::CARD_CERTIFICATE => {
            p.put_u16(O_CERT, v.len() as u16)?;
            p.write(O_CERT + 2, v)?;
        }
        dgi::SERVER => {
            let (rights, key, id) = tables::parse_server_dgi(v)?;
            tables::put_server(p, id, key, rights)?;
        }
        dgi::ORIGINATOR => {
            let (key, id) = tables::parse_originator_dgi(v)?;
            tables::put_originator(p, id, key)?;
        }
        dgi::POLICY => tables::set_policy(p, v)?,
        _ => return Err(CardError::WrongData("unknown DGI")),
    }
    Ok(())
}

/// The card is complete when it has its identity, key pair, issuer key, a certificate that
/// the issuer key verifies and that binds this ICCID and this card key, PIN and PUK.
fn check_complete<S: Store>(p: &Persist<S>, platform: &impl Platform) -> Result<(), CardError> {
    let mut iccid = [0u8; ICCID_MAX];
    if p.lv_at(O_ICCID, ICCID_MAX, &mut iccid)?.is_empty() {
        return Err(CardError::Conditions("personalization incomplete: ICCID"));
    }
    let mut imsi = [0u8; IMSI_MAX];
    if p.lv_at(O_IMSI, IMSI_MAX, &mut imsi)?.is_empty() {
        return Err(CardError::Conditions("personalization incomplete: IMSI"));
    }
    if p.u8_at(O_CARD_PK)? != 0x04 {
        return Err(CardError::Conditions(
            "personalization incomplete: card key pair",
        ));
    }
    if p.u8_at(O_ISSUER_PK)? != 0x04 {
        return Err(CardError::Conditions(
            "personalization incomplete: issuer key",
        ));
    }
    if p.pin_max(PinSlot::Pin)? == 0 || p.pin_max(PinSlot::Puk)? == 0 {
        return Err(CardError::Conditions(
            "personalization incomplete: PIN and PUK",
        ));
    }
    let len = usize::from(p.u16_at(O_CERT)?);
    if len == 0 {
        return Err(CardError::Conditions(
            "personalization incomplete: card certificate",
        ));
    }
    let mut cert = [0u8; CERT_MAX];
    p.read(O_CERT + 2, &mut cert[..len.min(CERT_MAX)])?;
    let mut issuer = [0u8; KEY_LEN];
    p.read(O_ISSUER_PK, &mut issuer)?;
    let mut card_pk = [0u8; KEY_LEN];
    p.read(O_CARD_PK, &mut card_pk)?;
    let iccid_len = usize::from(p.u8_at(O_ICCID)?).min(ICCID_MAX);
    crate::crypto::check_certificate(
        platform,
        &cert[..len.min(CERT_MAX)],
        &issuer,
        &iccid[..iccid_len],
        &card_pk,
    )?;
    let _ = layout::PERSISTENT_SIZE;
    Ok(())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn dgi_lengths_short_and_long() {
        let mut long = vec![0x03, 0x03, 0xFF, 0x01, 0x00];
        long.extend_from_slice(&[7u8; 256]);
        let mut data = vec![0x01, 0x02, 0x02, b'1', b'2'];
        data.extend_from_slice(&long);
        let items: Vec<_> = Dgis(&data).collect::<Result<_, _>>().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], (dgi::IMSI, &b"12"[..]));
        assert_eq!((items[1].0, items[1].1.len()), (dgi::POLICY, 256));
    }

    #[test]
    fn malformed_dgis_are_refused() {
        for bad in [
            &[0x01][..],
            &[0x01, 0x01],
            &[0x01, 0x01, 0x05, 1],
            &[0x01, 0x01, 0xFF, 0x00],
        ] {
            assert!(Dgis(bad).any(|r| r.is_err()), "{bad:02X?}");
        }
    }
}
