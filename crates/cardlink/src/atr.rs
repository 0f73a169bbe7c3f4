//! The Answer To Reset: the bits the link reads from it, and the one the virtual card sends.
//!
//! ISO/IEC 7816-3 §8.2 gives the structure (TS, T0, interface bytes TA/TB/TC/TD, historical
//! bytes, TCK); ISO/IEC 7816-4 §8.1.1 the historical bytes, whose "card capabilities"
//! compact-TLV object (tag `7`) says whether the card takes command chaining and extended
//! Lc/Le (third software function table, b8 and b7).

/// What an ATR says about the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtrInfo {
    /// T=0 offered (explicitly, or by default when no TD1 is present).
    pub t0: bool,
    /// T=1 offered.
    pub t1: bool,
    /// The card announces command chaining.
    pub chaining: bool,
    /// The card announces extended Lc and Le fields.
    pub extended_length: bool,
}

/// Reads an ATR; `None` when it is malformed (too short for what its own bytes announce).
pub fn parse(atr: &[u8]) -> Option<AtrInfo> {
    let mut info = AtrInfo::default();
    let t0 = *atr.get(1)?;
    let historical_len = usize::from(t0 & 0x0F);
    let mut y = t0 >> 4;
    let mut pos = 2;
    let mut any_td = false;
    loop {
        // TA, TB, TC present per Y bits 1..3, TD per bit 4 (7816-3 §8.2.3).
        for bit in [0x1, 0x2, 0x4] {
            if y & bit != 0 {
                atr.get(pos)?;
                pos += 1;
            }
        }
        if y & 0x8 == 0 {
            break;
        }
        let td = *atr.get(pos)?;
        pos += 1;
        any_td = true;
        match td & 0x0F {
            0 => info.t0 = true,
            1 => info.t1 = true,
            _ => {}
        }
        y = td >> 4;
    }
    if !any_td {
        // Without TD1 the card offers T=0 only (7816-3 §8.2.3).
        info.t0 = true;
    }
    let historical = atr.get(pos..pos + historical_len)?;
    if let Some(third) = card_capabilities(historical).and_then(|caps| caps.get(2)) {
        info.chaining = third & 0x80 != 0;
        info.extended_length = third & 0x40 != 0;
    }
    Some(info)
}

/// The value of the card-capabilities object (tag `7`) in compact-TLV historical bytes.
fn card_capabilities(historical: &[u8]) -> Option<&[u8]> {
    let (&category, rest) = historical.split_first()?;
    let objects = match category {
        // 7816-4 §8.1.1.1: 80 = compact-TLV objects, status indicator optional among them;
        // 00 = compact-TLV objects then a 3-byte status indicator.
        0x80 => rest,
        0x00 => rest.get(..rest.len().checked_sub(3)?)?,
        _ => return None,
    };
    let mut i = 0;
    while i < objects.len() {
        let tag = objects[i] >> 4;
        let len = usize::from(objects[i] & 0x0F);
        let value = objects.get(i + 1..i + 1 + len)?;
        if tag == 0x7 {
            return Some(value);
        }
        i += 1 + len;
    }
    None
}

/// The ATR the virtual card answers: direct convention, T=1 only, and historical bytes with a
/// card-capabilities object announcing chaining, (when `extended`) extended Lc/Le and logical
/// channels, then a status indicator "operational, 9000".
pub fn virtual_card_atr(extended: bool) -> Vec<u8> {
    // Third software function table (7816-4 §8.1.1.2.7): b8 chaining, b7 extended Lc/Le,
    // b5-b4 logical channel numbers assigned by the card and by the interface device, b3-b1
    // at most 4 logical channels at once (y + 1, y = 3: the applet's `CHANNEL_SLOTS`).
    const CHANNELS: u8 = 0x18 | (simfota_card::CHANNEL_SLOTS as u8 - 1);
    let third = 0x80 | CHANNELS | if extended { 0x40 } else { 0x00 };
    // Historical bytes: category 80, tag 7 length 3 (card capabilities: selection by full
    // DF name, data coding 01, chaining/extended), tag 8 length 3 (status: LCS 05, 9000).
    let historical = [0x80, 0x73, 0x80, 0x01, third, 0x83, 0x05, 0x90, 0x00];
    // TS 3B (direct convention), T0 = TD1 present + K historical bytes, TD1 = T=1 with TD2
    // present, TD2 = T=1 again with no T=1 specific bytes, so IFSC and the waiting times keep
    // their defaults (7816-3 §11.4).
    let mut atr = vec![0x3B, 0x80 | historical.len() as u8, 0x81, 0x01];
    atr.extend_from_slice(&historical);
    // TCK: XOR of T0 up to the last historical byte (7816-3 §8.2.5), present since T=1 is offered.
    let tck = atr[1..].iter().fold(0u8, |acc, b| acc ^ b);
    atr.push(tck);
    atr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_atr_reads_back_with_its_announcements() {
        for ext in [false, true] {
            let atr = virtual_card_atr(ext);
            let info = parse(&atr).unwrap();
            assert!(info.t1 && !info.t0 && info.chaining);
            assert_eq!(info.extended_length, ext);
            assert_eq!(atr[1..].iter().fold(0u8, |a, b| a ^ b), 0, "TCK");
        }
    }

    #[test]
    fn vsmartcard_default_atr_has_no_extended_length() {
        // The default ATR of vsmartcard's virtual cards (T=1, card capabilities FF 01 00).
        let info = parse(&[
            0x3b, 0x95, 0x13, 0x81, 0x01, 0x80, 0x73, 0xff, 0x01, 0x00, 0x0B,
        ])
        .unwrap();
        assert!(info.t1 && !info.extended_length && !info.chaining);
    }

    #[test]
    fn t0_only_sim_atr_and_malformed_atrs() {
        // A T=0 SIM ATR without TD1 and with 5 historical bytes.
        let info = parse(&[0x3B, 0x15, 0x94, 1, 2, 3, 4, 5]).unwrap();
        assert!(info.t0 && !info.t1);
        assert_eq!(parse(&[0x3B]), None);
        // Announces TD1 and 9 historical bytes but stops short.
        assert_eq!(parse(&[0x3B, 0x89, 0x81]), None);
    }
}
