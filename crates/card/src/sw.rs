//! ISO/IEC 7816-4 status words (§5.6, table 6), as a newtype so that a bare `u16` never
//! travels where a status word is meant.

use core::fmt;

/// A two-byte ISO/IEC 7816-4 status word (SW1-SW2), sent after the response data.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusWord(pub u16);

impl StatusWord {
    /// `9000`: normal processing, no further qualification.
    pub const OK: Self = Self(0x9000);
    /// `6200`: warning, no information given, non-volatile memory unchanged.
    pub const WARNING_UNCHANGED: Self = Self(0x6200);
    /// `6581`: memory failure (a persistent write did not complete).
    pub const MEMORY_FAILURE: Self = Self(0x6581);
    /// `6700`: wrong length (Lc/Le inconsistent with the command, or data too long).
    pub const WRONG_LENGTH: Self = Self(0x6700);
    /// `6881`: logical channel not supported (also: the command's channel is not open).
    pub const CHANNEL_NOT_SUPPORTED: Self = Self(0x6881);
    /// `6882`: secure messaging not supported.
    pub const SECURE_MESSAGING_NOT_SUPPORTED: Self = Self(0x6882);
    /// `6883`: last command of the chain expected.
    pub const LAST_COMMAND_EXPECTED: Self = Self(0x6883);
    /// `6884`: command chaining not supported (the instruction does not take a chain).
    pub const CHAINING_NOT_SUPPORTED: Self = Self(0x6884);
    /// `6982`: security status not satisfied (PIN not verified, right missing).
    pub const SECURITY_STATUS: Self = Self(0x6982);
    /// `6983`: authentication method blocked (PIN or PUK try counter at zero).
    pub const AUTH_BLOCKED: Self = Self(0x6983);
    /// `6985`: conditions of use not satisfied (wrong life-cycle state, no pending update...).
    pub const CONDITIONS: Self = Self(0x6985);
    /// `6A80`: incorrect parameters in the command data field (malformed object).
    pub const WRONG_DATA: Self = Self(0x6A80);
    /// `6A81`: function not supported.
    pub const FUNCTION_NOT_SUPPORTED: Self = Self(0x6A81);
    /// `6A82`: file or application not found (SELECT of an unknown AID).
    pub const NOT_FOUND: Self = Self(0x6A82);
    /// `6A84`: not enough memory space (a table is full).
    pub const NO_SPACE: Self = Self(0x6A84);
    /// `6A86`: incorrect parameters P1-P2.
    pub const WRONG_P1P2: Self = Self(0x6A86);
    /// `6A88`: referenced data or reference data not found.
    pub const DATA_NOT_FOUND: Self = Self(0x6A88);
    /// `6D00`: instruction code not supported or invalid.
    pub const INS_NOT_SUPPORTED: Self = Self(0x6D00);
    /// `6E00`: class not supported.
    pub const CLA_NOT_SUPPORTED: Self = Self(0x6E00);
    /// `6F00`: no precise diagnosis.
    pub const UNKNOWN: Self = Self(0x6F00);

    /// `61xx`: `xx` more response bytes wait for GET RESPONSE (`00` = 256 or more).
    pub const fn bytes_remaining(n: usize) -> Self {
        Self(0x6100 | if n >= 256 { 0 } else { n as u16 })
    }

    /// `6Cxx`: wrong Le; `xx` is the exact length to ask for (`00` = 256).
    pub const fn wrong_le(exact: usize) -> Self {
        Self(0x6C00 | if exact >= 256 { 0 } else { exact as u16 })
    }

    /// `63Cx`: verification failed, `x` tries left (ISO/IEC 7816-4 §5.6, counter in SW2 b4-b1).
    pub const fn tries_left(n: u8) -> Self {
        Self(0x63C0 | (if n > 15 { 15 } else { n }) as u16)
    }

    /// `66RR`: a refusal by the applet's security checks; `RR` is the [`crate::Reason`] code.
    /// ISO/IEC 7816-4 table 6 reserves SW1 `66` for security-related issues.
    pub const fn refused(reason: u8) -> Self {
        Self(0x6600 | reason as u16)
    }

    /// SW1.
    pub const fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2.
    pub const fn sw2(self) -> u8 {
        self.0 as u8
    }

    /// The two bytes as sent on the wire.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.0.to_be_bytes()
    }

    /// Status words of normal processing (`9000`, `61xx`).
    pub const fn is_success(self) -> bool {
        self.0 == 0x9000 || self.sw1() == 0x61
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SW {:04X}", self.0)
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_encode_sw2() {
        assert_eq!(StatusWord::bytes_remaining(300).0, 0x6100);
        assert_eq!(StatusWord::bytes_remaining(17).0, 0x6111);
        assert_eq!(StatusWord::wrong_le(16).0, 0x6C10);
        assert_eq!(StatusWord::tries_left(2).0, 0x63C2);
        assert_eq!(StatusWord::refused(0x0B).to_bytes(), [0x66, 0x0B]);
        assert!(StatusWord(0x6105).is_success());
        assert!(!StatusWord::CONDITIONS.is_success());
    }
}
