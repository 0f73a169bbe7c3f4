//! Validated identities and fixed-size values carried by the signed objects.

use core::fmt;

use crate::error::{Error, Result};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Digest(pub [u8; 32]);

/// A card nonce: 16 random bytes, used once (design §4 step 2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Nonce(pub [u8; 16]);

/// A SUIT vendor or class identifier: an RFC 9562 UUID as 16 bytes
/// (draft-ietf-suit-manifest §8.4.8.3-4 recommends UUIDv5 for both).
pub type Uuid = [u8; 16];

macro_rules! hex_debug {
    ($t:ident) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(", stringify!($t))?;
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                write!(f, ")")
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}
hex_debug!(Digest);
hex_debug!(Nonce);

/// Luhn check over ASCII digits (ISO/IEC 7812-1 Annex B), the check digit being the last one.
fn luhn_ok(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Bounded inline ASCII/UTF-8 storage shared by the identity types.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Inline<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> Inline<N> {
    fn new(b: &[u8]) -> Option<Self> {
        if b.len() > N {
            return None;
        }
        let mut buf = [0u8; N];
        buf[..b.len()].copy_from_slice(b);
        Some(Inline {
            buf,
            len: b.len() as u8,
        })
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
    fn as_str(&self) -> &str {
        // Only validated UTF-8 is ever stored.
        core::str::from_utf8(self.bytes()).unwrap_or("")
    }
}

/// An ICCID (ITU-T E.118): 18 to 20 decimal digits, the last one a Luhn check digit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Iccid(Inline<20>);

impl Iccid {
    /// Parses and validates the digit string.
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if !(18..=20).contains(&b.len()) || !b.iter().all(u8::is_ascii_digit) || !luhn_ok(b) {
            return Err(Error::BadIccid);
        }
        Inline::new(b).map(Iccid).ok_or(Error::BadIccid)
    }
    /// The digits.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// An IMEI (3GPP TS 23.003 §6.2.1): 14 digits plus the Luhn check digit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Imei([u8; 15]);

impl Imei {
    /// Parses and validates the digit string.
    pub fn parse(s: &str) -> Result<Self> {
        let b = s.as_bytes();
        if b.len() != 15 || !b.iter().all(u8::is_ascii_digit) || !luhn_ok(b) {
            return Err(Error::BadImei);
        }
        let mut d = [0u8; 15];
        d.copy_from_slice(b);
        Ok(Imei(d))
    }
    /// The 15 digits.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// Bounded UTF-8 text without control characters, at most `N` bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortText<const N: usize>(Inline<N>);

impl<const N: usize> ShortText<N> {
    /// Validates: 1..=N bytes, no control characters.
    pub fn new(s: &str) -> Result<Self> {
        if s.is_empty() || s.chars().any(char::is_control) {
            return Err(Error::BadId("empty or control characters"));
        }
        Inline::new(s.as_bytes())
            .map(ShortText)
            .ok_or(Error::BadId("too long"))
    }
    /// Keeps at most `N` bytes, cut at a character boundary, control characters replaced by
    /// spaces (for log summaries of longer SUIT texts; the manifest digest pins the full text).
    pub fn truncated(s: &str) -> Self {
        let mut buf = [0u8; N];
        let mut len = 0;
        for c in s.chars() {
            let c = if c.is_control() { ' ' } else { c };
            let w = c.len_utf8();
            if len + w > N {
                break;
            }
            c.encode_utf8(&mut buf[len..len + w]);
            len += w;
        }
        ShortText(Inline {
            buf,
            len: len as u8,
        })
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

macro_rules! text_id {
    ($(#[$m:meta])* $t:ident, $n:expr) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $t(ShortText<$n>);
        impl $t {
            /// Longest allowed encoding, in bytes.
            pub const MAX_LEN: usize = $n;
            /// Validates: 1..=MAX_LEN bytes of UTF-8, no control characters.
            pub fn new(s: &str) -> Result<Self> {
                ShortText::new(s).map($t)
            }
            /// The identifier text.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($t), self.as_str())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_id!(
    /// A DM server's identity as listed on the card and used as the token issuer (`iss`).
    ServerId,
    32
);
text_id!(
    /// A software originator's identity as listed on the card.
    OriginatorId,
    32
);
text_id!(
    /// The card issuer's name (`iss` of card certificates).
    IssuerId,
    32
);
text_id!(
    /// An optional charging reference carried by a delivery token (design R12).
    ChargingRef,
    32
);

impl<const N: usize> fmt::Debug for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Debug for Iccid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iccid({})", self.as_str())
    }
}
impl fmt::Display for Iccid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl fmt::Debug for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Imei({})", self.as_str())
    }
}
impl fmt::Display for Imei {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An update identifier: the token's `cti` (RFC 8392 §3.1.7), 1 to 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpdateId(Inline<16>);

impl UpdateId {
    /// Longest allowed identifier, in bytes.
    pub const MAX_LEN: usize = 16;
    /// Validates the length (1..=16 bytes).
    pub fn new(b: &[u8]) -> Result<Self> {
        if b.is_empty() {
            return Err(Error::BadId("empty update id"));
        }
        Inline::new(b)
            .map(UpdateId)
            .ok_or(Error::BadId("update id longer than 16 bytes"))
    }
    /// The identifier bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

impl fmt::Debug for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdateId(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_checked_identities() {
        assert!(Imei::parse("490154203237518").is_ok());
        assert_eq!(Imei::parse("490154203237519"), Err(Error::BadImei));
        assert_eq!(Imei::parse("49015420323751"), Err(Error::BadImei));
        assert!(Iccid::parse("89014103211118510720").is_ok());
        assert_eq!(Iccid::parse("89014103211118510721"), Err(Error::BadIccid));
        assert_eq!(Iccid::parse("8901410321111851a720"), Err(Error::BadIccid));
    }

    #[test]
    fn bounded_text() {
        assert!(ServerId::new("dm.example.net").is_ok());
        assert!(ServerId::new("").is_err());
        assert!(ServerId::new("a\nb").is_err());
        assert!(ServerId::new(&"x".repeat(33)).is_err());
        let t = ShortText::<4>::truncated("aé€b");
        assert_eq!(t.as_str(), "aé");
        assert!(UpdateId::new(&[0u8; 17]).is_err());
    }
}
