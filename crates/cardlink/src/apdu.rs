//! Command and response APDUs as a host builds and reads them (ISO/IEC 7816-4 §5.1).
//!
//! The card crate decodes APDUs inside its fixed buffers; this module is the host's side: it
//! owns its bytes, picks the short or extended encoding, and never panics on what a card sends.

use core::fmt;

/// Largest command data field of a short APDU (ISO 7816-4 §5.1: Lc in one byte, 1..=255).
pub const SHORT_MAX_DATA: usize = 255;
/// Largest response data field a short APDU can ask for (Le = `00` means 256).
pub const SHORT_MAX_NE: usize = 256;
/// Largest command data field of an extended APDU (Lc in two bytes, 1..=65535).
pub const EXTENDED_MAX_DATA: usize = 65_535;
/// Largest response data field an extended APDU can ask for (Le = `0000` means 65536).
pub const EXTENDED_MAX_NE: usize = 65_536;

/// CLA bit 5 (`0x10`): "command is not the last of a chain" (ISO 7816-4 §5.4.1, first
/// interindustry CLA values `0x0X`..`0x3X`).
pub const CLA_CHAINING: u8 = 0x10;

/// `cla` (an interindustry class, or its proprietary twin, as the link and the client build
/// them for the basic channel) moved to logical channel `channel` (ISO 7816-4 §5.1.1):
/// channels 0-3 in b2-b1 of the first coding, 4-19 in b4-b1 (number − 4) of the further one
/// (`0x40`, proprietary `0xC0`). The chaining bit b5 is the same in both; secure messaging
/// is not used. `None` for a channel above 19.
pub const fn cla_on_channel(cla: u8, channel: u8) -> Option<u8> {
    match channel {
        0..=3 => Some((cla & 0x90) | channel),
        4..=19 => Some((cla & 0x90) | 0x40 | (channel - 4)),
        _ => None,
    }
}

/// The logical channel a class byte addresses (ISO 7816-4 §5.1.1), for the first and the
/// further interindustry codings and their proprietary twins; `None` for other classes (GSM
/// `A0`, reserved `2X`/`3X`).
pub const fn channel_of(cla: u8) -> Option<u8> {
    match cla {
        0x00..=0x1F | 0x80..=0x9F => Some(cla & 0x03),
        0x40..=0x7F | 0xC0..=0xFE => Some(4 + (cla & 0x0F)),
        _ => None,
    }
}

/// INS of MANAGE CHANNEL (ISO 7816-4 §11.1.2).
pub const INS_MANAGE_CHANNEL: u8 = 0x70;

/// INS of GET RESPONSE (ISO 7816-4 §7.6.1), used after a `61xx` status.
pub const INS_GET_RESPONSE: u8 = 0xC0;

/// A status word SW1-SW2 (ISO 7816-4 §5.6).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusWord(pub u16);

impl StatusWord {
    /// `9000`: normal processing.
    pub const OK: Self = Self(0x9000);
    /// `6700`: wrong length.
    pub const WRONG_LENGTH: Self = Self(0x6700);
    /// `6884`: command chaining not supported.
    pub const CHAINING_NOT_SUPPORTED: Self = Self(0x6884);
    /// `6A82`: file or application not found.
    pub const NOT_FOUND: Self = Self(0x6A82);
    /// `6D00`: instruction code not supported.
    pub const INS_NOT_SUPPORTED: Self = Self(0x6D00);
    /// `6E00`: class not supported.
    pub const CLA_NOT_SUPPORTED: Self = Self(0x6E00);
    /// `6F00`: no precise diagnosis.
    pub const UNKNOWN: Self = Self(0x6F00);

    /// Builds the status word from its two bytes.
    pub const fn from_bytes(sw1: u8, sw2: u8) -> Self {
        Self(((sw1 as u16) << 8) | sw2 as u16)
    }

    /// SW1.
    pub const fn sw1(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// SW2.
    pub const fn sw2(self) -> u8 {
        (self.0 & 0xFF) as u8
    }

    /// Normal processing: `9000`, or `61xx` (more data waits; the link fetches it).
    pub const fn is_success(self) -> bool {
        self.0 == 0x9000 || self.sw1() == 0x61
    }

    /// A warning (`62xx`, `63xx`): processed, but the card has something to say.
    pub const fn is_warning(self) -> bool {
        matches!(self.sw1(), 0x62 | 0x63)
    }

    /// For `63Cx`: the retry counter `x` a verification status carries (ISO 7816-4 §11.5.6).
    pub const fn retries_left(self) -> Option<u8> {
        if self.0 & 0xFFF0 == 0x63C0 {
            Some((self.0 & 0x0F) as u8)
        } else {
            None
        }
    }

    /// A short human text for the interindustry status words (ISO 7816-4 §5.6, table 5/6).
    pub fn describe(self) -> &'static str {
        match (self.sw1(), self.sw2()) {
            (0x90, 0x00) => "success",
            (0x61, _) => "more response data available",
            (0x62, 0x83) => "selected file deactivated",
            (0x62, _) => "warning, memory unchanged",
            (0x63, sw2) if sw2 & 0xF0 == 0xC0 => "verification failed, retries left in SW2",
            (0x63, _) => "warning, memory changed",
            (0x64, _) => "execution error, memory unchanged",
            (0x65, 0x81) => "memory failure",
            (0x65, _) => "execution error, memory changed",
            (0x67, 0x00) => "wrong length",
            (0x68, 0x81) => "logical channel not supported",
            (0x68, 0x82) => "secure messaging not supported",
            (0x68, 0x83) => "last command of the chain expected",
            (0x68, 0x84) => "command chaining not supported",
            (0x69, 0x82) => "security status not satisfied",
            (0x69, 0x83) => "authentication method blocked",
            (0x69, 0x84) => "reference data not usable",
            (0x69, 0x85) => "conditions of use not satisfied",
            (0x69, 0x86) => "command not allowed",
            (0x69, _) => "command not allowed",
            (0x6A, 0x80) => "incorrect parameters in the data field",
            (0x6A, 0x81) => "function not supported",
            (0x6A, 0x82) => "file or application not found",
            (0x6A, 0x84) => "not enough memory space",
            (0x6A, 0x86) => "incorrect parameters P1-P2",
            (0x6A, 0x88) => "referenced data not found",
            (0x6A, _) => "wrong parameters",
            (0x6B, 0x00) => "wrong parameters P1-P2",
            (0x6C, _) => "wrong Le field, exact length in SW2",
            (0x6D, 0x00) => "instruction not supported",
            (0x6E, 0x00) => "class not supported",
            (0x6F, 0x00) => "no precise diagnosis",
            _ => "card-specific status",
        }
    }
}

impl fmt::Debug for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StatusWord({:04X})", self.0)
    }
}

impl fmt::Display for StatusWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04X}", self.0)
    }
}

/// A command APDU: header, data field and expected response length Ne (ISO 7816-4 §5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data field (empty: no Lc).
    pub data: Vec<u8>,
    /// Ne, the most response bytes wanted (`None`: no Le field, a case 1 or 3 command).
    pub ne: Option<usize>,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Command({:02X} {:02X} {:02X} {:02X}, {} data bytes, ne {:?})",
            self.cla,
            self.ins,
            self.p1,
            self.p2,
            self.data.len(),
            self.ne
        )
    }
}

/// Why a command cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The data field is longer than the chosen encoding can carry.
    #[error("command data of {len} bytes exceeds the {max}-byte limit of this APDU form")]
    DataTooLong {
        /// Data length.
        len: usize,
        /// Limit of the form.
        max: usize,
    },
    /// Ne is larger than the chosen encoding can ask for.
    #[error("expected length {ne} exceeds the {max}-byte limit of this APDU form")]
    NeTooLarge {
        /// Requested Ne.
        ne: usize,
        /// Limit of the form.
        max: usize,
    },
}

impl Command {
    /// A command without data and without Le (case 1).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        Self {
            cla,
            ins,
            p1,
            p2,
            data: Vec::new(),
            ne: None,
        }
    }

    /// Sets the data field.
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = data.into();
        self
    }

    /// Sets Ne (the most response bytes wanted).
    pub fn with_ne(mut self, ne: usize) -> Self {
        self.ne = Some(ne);
        self
    }

    /// True when the short form can carry this command (data ≤ 255, Ne ≤ 256).
    pub fn fits_short(&self) -> bool {
        self.data.len() <= SHORT_MAX_DATA && self.ne.is_none_or(|ne| ne <= SHORT_MAX_NE)
    }

    /// Encodes with short length fields (ISO 7816-4 §5.1, cases 1, 2S, 3S, 4S).
    pub fn encode_short(&self) -> Result<Vec<u8>, EncodeError> {
        if self.data.len() > SHORT_MAX_DATA {
            return Err(EncodeError::DataTooLong {
                len: self.data.len(),
                max: SHORT_MAX_DATA,
            });
        }
        let mut out = Vec::with_capacity(6 + self.data.len());
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if !self.data.is_empty() {
            // The length was checked against 255 above, so it fits one byte.
            out.push(self.data.len() as u8);
            out.extend_from_slice(&self.data);
        }
        if let Some(ne) = self.ne {
            if ne > SHORT_MAX_NE {
                return Err(EncodeError::NeTooLarge {
                    ne,
                    max: SHORT_MAX_NE,
                });
            }
            // Le = 00 stands for 256 (§5.1).
            out.push((ne % 256) as u8);
        }
        Ok(out)
    }

    /// Encodes with extended length fields (ISO 7816-4 §5.1, cases 2E, 3E, 4E).
    ///
    /// A command without data and without Le has no length field at all and is the same in both
    /// forms.
    pub fn encode_extended(&self) -> Result<Vec<u8>, EncodeError> {
        if self.data.len() > EXTENDED_MAX_DATA {
            return Err(EncodeError::DataTooLong {
                len: self.data.len(),
                max: EXTENDED_MAX_DATA,
            });
        }
        let mut out = Vec::with_capacity(9 + self.data.len());
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        if !self.data.is_empty() {
            out.push(0x00);
            out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
            out.extend_from_slice(&self.data);
        }
        if let Some(ne) = self.ne {
            if ne > EXTENDED_MAX_NE {
                return Err(EncodeError::NeTooLarge {
                    ne,
                    max: EXTENDED_MAX_NE,
                });
            }
            if self.data.is_empty() {
                // Case 2E: the Le field is 00 followed by two bytes.
                out.push(0x00);
            }
            // Le = 0000 stands for 65536 (§5.1).
            out.extend_from_slice(&((ne % 65_536) as u16).to_be_bytes());
        }
        Ok(out)
    }
}

/// A response APDU: data field and status word (ISO 7816-4 §5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data field.
    pub data: Vec<u8>,
    /// Status word.
    pub sw: StatusWord,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} data bytes, {})", self.data.len(), self.sw)
    }
}

impl Response {
    /// Splits raw response bytes into data and status word; `None` for fewer than two bytes.
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        let split = raw.len().checked_sub(2)?;
        let (data, sw) = raw.split_at(split);
        Some(Self {
            data: data.to_vec(),
            sw: StatusWord::from_bytes(sw[0], sw[1]),
        })
    }

    /// The raw bytes: data then SW1 SW2.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.data.clone();
        out.extend_from_slice(&self.sw.0.to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_cases_encode_per_iso_7816_4_5_1() {
        let case1 = Command::new(0x00, 0x70, 0x00, 0x00);
        assert_eq!(case1.encode_short().unwrap(), [0x00, 0x70, 0x00, 0x00]);
        let case2 = Command::new(0x00, 0xCA, 0x00, 0x42).with_ne(256);
        assert_eq!(
            case2.encode_short().unwrap(),
            [0x00, 0xCA, 0x00, 0x42, 0x00]
        );
        let case3 = Command::new(0x00, 0xA4, 0x04, 0x00).with_data([1, 2, 3]);
        assert_eq!(
            case3.encode_short().unwrap(),
            [0x00, 0xA4, 0x04, 0x00, 3, 1, 2, 3]
        );
        let case4 = case3.clone().with_ne(16);
        assert_eq!(
            case4.encode_short().unwrap(),
            [0x00, 0xA4, 0x04, 0x00, 3, 1, 2, 3, 16]
        );
    }

    #[test]
    fn extended_cases_encode_per_iso_7816_4_5_1() {
        let case2 = Command::new(0x00, 0xCA, 0x00, 0x42).with_ne(65_536);
        assert_eq!(
            case2.encode_extended().unwrap(),
            [0x00, 0xCA, 0x00, 0x42, 0x00, 0x00, 0x00]
        );
        let data = vec![0xAB; 300];
        let case4 = Command::new(0x80, 0x20, 0x00, 0x00)
            .with_data(data.clone())
            .with_ne(1000);
        let enc = case4.encode_extended().unwrap();
        assert_eq!(&enc[..7], &[0x80, 0x20, 0x00, 0x00, 0x00, 0x01, 0x2C]);
        assert_eq!(&enc[7..307], &data[..]);
        assert_eq!(&enc[307..], &[0x03, 0xE8]);
    }

    #[test]
    fn oversize_commands_are_refused_not_truncated() {
        let long = Command::new(0, 0, 0, 0).with_data(vec![0; 256]);
        assert_eq!(
            long.encode_short(),
            Err(EncodeError::DataTooLong { len: 256, max: 255 })
        );
        assert!(!long.fits_short());
        let big_ne = Command::new(0, 0, 0, 0).with_ne(257);
        assert_eq!(
            big_ne.encode_short(),
            Err(EncodeError::NeTooLarge { ne: 257, max: 256 })
        );
    }

    #[test]
    fn responses_split_and_reject_runts() {
        assert_eq!(Response::from_bytes(&[0x90]), None);
        let r = Response::from_bytes(&[1, 2, 0x63, 0xC2]).unwrap();
        assert_eq!(r.data, [1, 2]);
        assert_eq!(r.sw.retries_left(), Some(2));
        assert_eq!(r.to_bytes(), [1, 2, 0x63, 0xC2]);
        assert!(StatusWord(0x6110).is_success());
        assert!(!StatusWord(0x6A82).is_success());
    }
}
