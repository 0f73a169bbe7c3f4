//! Command APDU parsing, ISO/IEC 7816-4 §5.1 (command-response pairs) and §5.2 (the four
//! cases, short and extended length). Parsing is strict: a body whose length does not match
//! exactly one of the seven encodings is refused with `6700`, never guessed at.

/// Why a byte string is not a command APDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("command APDU shorter than its 4-byte header")]
    TooShort,
    /// The body length matches none of cases 1, 2S, 3S, 4S, 2E, 3E, 4E.
    #[error("command APDU body length matches no ISO 7816-4 case")]
    BadLength,
    /// Extended Lc of zero (ISO/IEC 7816-4 §5.1: Lc encodes 1 to 65 535).
    #[error("extended Lc of zero")]
    ZeroLc,
}

/// A parsed command APDU; the data field borrows from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// The command data field (Nc bytes; empty for cases 1 and 2).
    pub data: &'a [u8],
    /// Ne, the maximum number of response bytes expected; `None` when Le is absent
    /// (cases 1 and 3). A short Le of `00` means 256, an extended Le of `0000` means 65 536.
    pub ne: Option<usize>,
    /// Whether the command used extended length fields.
    pub extended: bool,
}

impl<'a> Command<'a> {
    /// Parses one command APDU, ISO/IEC 7816-4 §5.2.
    pub fn parse(apdu: &'a [u8]) -> Result<Self, ApduError> {
        let [cla, ins, p1, p2, body @ ..] = apdu else {
            return Err(ApduError::TooShort);
        };
        let (data, ne, extended) = match body {
            // Case 1: no body.
            [] => (&[][..], None, false),
            // Case 2S: Le only.
            [le] => (&[][..], Some(short_ne(*le)), false),
            // Extended cases start with a 00 byte followed by two length bytes.
            [0, rest @ ..] if rest.len() >= 2 => {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let after = &rest[2..];
                if after.is_empty() {
                    // Case 2E: extended Le only.
                    (&[][..], Some(extended_ne(n)), true)
                } else {
                    if n == 0 {
                        return Err(ApduError::ZeroLc);
                    }
                    if after.len() == n {
                        // Case 3E.
                        (after, None, true)
                    } else if after.len() == n + 2 {
                        // Case 4E: Lc, data, two-byte Le.
                        let le = usize::from(u16::from_be_bytes([after[n], after[n + 1]]));
                        (&after[..n], Some(extended_ne(le)), true)
                    } else {
                        return Err(ApduError::BadLength);
                    }
                }
            }
            [lc, rest @ ..] => {
                let n = usize::from(*lc);
                if n == 0 {
                    // A lone 00 followed by one byte is not a valid encoding.
                    return Err(ApduError::BadLength);
                }
                if rest.len() == n {
                    // Case 3S.
                    (rest, None, false)
                } else if rest.len() == n + 1 {
                    // Case 4S.
                    (&rest[..n], Some(short_ne(rest[n])), false)
                } else {
                    return Err(ApduError::BadLength);
                }
            }
        };
        Ok(Command {
            cla: *cla,
            ins: *ins,
            p1: *p1,
            p2: *p2,
            data,
            ne,
            extended,
        })
    }

    /// Whether CLA announces command chaining (ISO/IEC 7816-4 §5.4.1, CLA b5 = 1 in both
    /// interindustry class codings and their proprietary twins alike).
    pub fn chained(&self) -> bool {
        self.cla & 0x10 != 0
    }

    /// The logical channel CLA addresses, `None` for a class byte this card does not read
    /// (ISO/IEC 7816-4 §5.1.1). First interindustry `0x00`-`0x1F`: channels 0-3 in b2-b1;
    /// further interindustry `0x40`-`0x7F`: channels 4-19, b4-b1 + 4. The proprietary
    /// `0x80`-`0x9F` and `0xC0`-`0xFE` carry the same bits, as GlobalPlatform (Card
    /// Specification §11.1.4) and ETSI TS 102 221 (§10.1.1) use them. `0x20`-`0x3F` are
    /// reserved, `0xA0`-`0xBF` hold the GSM class (3GPP TS 51.011) and `0xFF` is invalid.
    pub fn channel(&self) -> Option<u8> {
        match self.cla {
            0x00..=0x1F | 0x80..=0x9F => Some(self.cla & 0x03),
            0x40..=0x7F | 0xC0..=0xFE => Some(4 + (self.cla & 0x0F)),
            _ => None,
        }
    }

    /// Whether CLA announces secure messaging: b4-b3 in the first interindustry coding, b6 in
    /// the further one (ISO/IEC 7816-4 §5.1.1).
    pub fn secure_messaging(&self) -> bool {
        match self.cla {
            0x40..=0x7F | 0xC0..=0xFF => self.cla & 0x20 != 0,
            _ => self.cla & 0x0C != 0,
        }
    }

    /// Whether CLA is proprietary (b8 = 1), as this applet's own commands are.
    pub fn proprietary(&self) -> bool {
        self.cla & 0x80 != 0
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 { 256 } else { usize::from(le) }
}

fn extended_ne(le: usize) -> usize {
    if le == 0 { 65_536 } else { le }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case1() {
        let c = Command::parse(&[0x00, 0xA4, 0x04, 0x00]).unwrap();
        assert_eq!(c.data, &[] as &[u8]);
        assert_eq!(c.ne, None);
    }

    #[test]
    fn case2_short_and_extended() {
        assert_eq!(Command::parse(&[0, 0x84, 0, 0, 0x10]).unwrap().ne, Some(16));
        assert_eq!(
            Command::parse(&[0, 0x84, 0, 0, 0x00]).unwrap().ne,
            Some(256)
        );
        let e = Command::parse(&[0, 0xC0, 0, 0, 0, 0x01, 0x00]).unwrap();
        assert_eq!((e.ne, e.extended), (Some(256), true));
        assert_eq!(
            Command::parse(&[0, 0xC0, 0, 0, 0, 0, 0]).unwrap().ne,
            Some(65_536)
        );
    }

    #[test]
    fn case3_and_4() {
        let c = Command::parse(&[0x80, 0x52, 0, 0, 2, 0xAA, 0xBB]).unwrap();
        assert_eq!((c.data, c.ne), (&[0xAA, 0xBB][..], None));
        let c = Command::parse(&[0x80, 0x52, 0, 0, 2, 0xAA, 0xBB, 0]).unwrap();
        assert_eq!((c.data, c.ne), (&[0xAA, 0xBB][..], Some(256)));
        let c = Command::parse(&[0x80, 0x52, 0, 0, 0, 0, 1, 0xCC]).unwrap();
        assert_eq!((c.data, c.ne, c.extended), (&[0xCC][..], None, true));
        let c = Command::parse(&[0x80, 0x52, 0, 0, 0, 0, 1, 0xCC, 0x01, 0x00]).unwrap();
        assert_eq!((c.data, c.ne), (&[0xCC][..], Some(256)));
    }

    #[test]
    fn strict_lengths() {
        assert_eq!(Command::parse(&[0, 1, 2]), Err(ApduError::TooShort));
        // Lc says 3, two bytes follow.
        assert_eq!(
            Command::parse(&[0, 1, 2, 3, 3, 1, 2]),
            Err(ApduError::BadLength)
        );
        // Lc says 1, three bytes follow (neither case 3S nor 4S).
        assert_eq!(
            Command::parse(&[0, 1, 2, 3, 1, 1, 2, 3]),
            Err(ApduError::BadLength)
        );
        // 00 + one byte.
        assert_eq!(
            Command::parse(&[0, 1, 2, 3, 0, 5]),
            Err(ApduError::BadLength)
        );
        // Extended Lc zero with data.
        assert_eq!(
            Command::parse(&[0, 1, 2, 3, 0, 0, 0, 9]),
            Err(ApduError::ZeroLc)
        );
        // Extended Lc 2, one byte of data.
        assert_eq!(
            Command::parse(&[0, 1, 2, 3, 0, 0, 2, 9]),
            Err(ApduError::BadLength)
        );
    }

    #[test]
    fn class_bits() {
        let c = Command::parse(&[0x90, 0x54, 0, 0]).unwrap();
        assert!(c.chained() && c.proprietary() && !c.secure_messaging());
        assert_eq!(c.channel(), Some(0));
        let c = Command::parse(&[0x0D, 0x54, 0, 0]).unwrap();
        assert!(c.secure_messaging() && c.channel() == Some(1));
    }

    fn class_of(cla: u8) -> (Option<u8>, bool, bool) {
        let apdu = [cla, 0xCA, 0, 0];
        let c = Command::parse(&apdu).unwrap();
        (c.channel(), c.secure_messaging(), c.chained())
    }

    #[test]
    fn channel_bits_of_every_class_coding() {
        // First interindustry and its proprietary twin: channels 0-3 in b2-b1, SM in b4-b3.
        for base in [0x00, 0x80] {
            for ch in 0..4u8 {
                assert_eq!(class_of(base | ch), (Some(ch), false, false));
                assert_eq!(class_of(base | 0x10 | ch), (Some(ch), false, true));
                assert_eq!(class_of(base | 0x04 | ch), (Some(ch), true, false));
            }
        }
        // Further interindustry (0x40-0x7F) and proprietary 0xC0-0xFE: channels 4-19 in b4-b1,
        // SM in b6, chaining in b5.
        for base in [0x40, 0xC0] {
            for n in 0..16u8 {
                assert_eq!(class_of(base | n), (Some(4 + n), false, false));
                assert_eq!(class_of(base | 0x10 | n), (Some(4 + n), false, true));
                if base | 0x20 | n != 0xFF {
                    assert_eq!(class_of(base | 0x20 | n), (Some(4 + n), true, false));
                }
            }
        }
        // Reserved, GSM and invalid classes name no channel.
        for cla in [0x20, 0x3F, 0xA0, 0xBF, 0xFF] {
            assert_eq!(class_of(cla).0, None, "{cla:02X}");
        }
    }
}
