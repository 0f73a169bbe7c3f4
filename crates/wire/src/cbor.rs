//! Strict, borrowing CBOR reading (on minicbor) and a tiny writer into caller buffers.
//!
//! The profile (RFC 8949 §5.2 "strict mode" subset): definite lengths only, no duplicate map
//! keys, no trailing bytes, bounded lengths and nesting. Encoders emit preferred (shortest)
//! serialization of heads and the deterministic layouts documented in docs/formats.md.

use minicbor::Decoder;
use minicbor::data::Type;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// A decoded map key: integer, text, or (for SUIT text maps) any other item by its raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    Int(i64),
    Text(&'a str),
    Other(&'a [u8]),
}

/// Strict reader over one input slice (crate internal; public only so the sealed payload trait can name it).
pub struct Reader<'a, 'l> {
    d: Decoder<'a>,
    pub(crate) lim: &'l Limits,
    depth: u8,
}

impl<'a, 'l> Reader<'a, 'l> {
    pub(crate) fn new(input: &'a [u8], lim: &'l Limits) -> Self {
        Reader {
            d: Decoder::new(input),
            lim,
            depth: 0,
        }
    }

    pub(crate) fn position(&self) -> usize {
        self.d.position()
    }

    pub(crate) fn input(&self) -> &'a [u8] {
        self.d.input()
    }

    fn bad(&self) -> Error {
        Error::BadCbor {
            at: self.d.position(),
        }
    }

    pub(crate) fn datatype(&self) -> Result<Type> {
        self.d.datatype().map_err(|_| self.bad())
    }

    /// Fails unless every input byte has been consumed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.d.position() == self.d.input().len() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                at: self.d.position(),
            })
        }
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        self.d.u64().map_err(|_| self.bad())
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32> {
        u32::try_from(self.u64()?).map_err(|_| Error::InvalidField(field))
    }

    pub(crate) fn i64(&mut self) -> Result<i64> {
        self.d.i64().map_err(|_| self.bad())
    }

    pub(crate) fn bool(&mut self) -> Result<bool> {
        self.d.bool().map_err(|_| self.bad())
    }

    /// A definite-length byte string, borrowed.
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        if self.datatype()? == Type::BytesIndef {
            return Err(Error::IndefiniteLength {
                at: self.position(),
            });
        }
        self.d.bytes().map_err(|_| self.bad())
    }

    /// A byte string of exactly `N` bytes.
    pub(crate) fn bytes_n<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let b = self.bytes()?;
        <[u8; N]>::try_from(b).map_err(|_| Error::InvalidField(field))
    }

    /// A definite-length text string, borrowed, at most `max_text_len` bytes.
    pub(crate) fn str(&mut self) -> Result<&'a str> {
        if self.datatype()? == Type::StringIndef {
            return Err(Error::IndefiniteLength {
                at: self.position(),
            });
        }
        let s = self.d.str().map_err(|_| self.bad())?;
        if s.len() > self.lim.max_text_len {
            return Err(Error::TooLarge {
                what: "text string",
                max: self.lim.max_text_len,
            });
        }
        Ok(s)
    }

    pub(crate) fn tag(&mut self) -> Result<u64> {
        self.d.tag().map(|t| t.as_u64()).map_err(|_| self.bad())
    }

    /// If the next item is a tag, consume it and return its number.
    pub(crate) fn opt_tag(&mut self) -> Result<Option<u64>> {
        if self.datatype()? == Type::Tag {
            self.tag().map(Some)
        } else {
            Ok(None)
        }
    }

    pub(crate) fn is_null(&self) -> Result<bool> {
        Ok(self.datatype()? == Type::Null)
    }

    pub(crate) fn null(&mut self) -> Result<()> {
        self.d.null().map_err(|_| self.bad())
    }

    /// Array header; definite length only, at most `max_array_len` items.
    pub(crate) fn array(&mut self) -> Result<usize> {
        let at = self.position();
        match self.d.array().map_err(|_| self.bad())? {
            None => Err(Error::IndefiniteLength { at }),
            Some(n) if n > self.lim.max_array_len as u64 => Err(Error::TooLarge {
                what: "array",
                max: self.lim.max_array_len,
            }),
            Some(n) => Ok(n as usize),
        }
    }

    /// Array header that must announce exactly `n` items.
    pub(crate) fn array_n(&mut self, n: usize) -> Result<()> {
        let at = self.position();
        if self.array()? == n {
            Ok(())
        } else {
            Err(Error::BadCbor { at })
        }
    }

    fn map_header(&mut self) -> Result<usize> {
        let at = self.position();
        let max = self.lim.max_map_entries.min(Limits::MAP_KEYS_CAP);
        match self.d.map().map_err(|_| self.bad())? {
            None => Err(Error::IndefiniteLength { at }),
            Some(n) if n > max as u64 => Err(Error::TooLarge { what: "map", max }),
            Some(n) => Ok(n as usize),
        }
    }

    fn key(&mut self, allow_other: bool) -> Result<Key<'a>> {
        let at = self.position();
        match self.datatype()? {
            Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Int => self
                .i64()
                .map(Key::Int)
                .map_err(|_| Error::BadMapKey { at }),
            Type::String => self.str().map(Key::Text),
            _ if allow_other => {
                self.skip()?;
                Ok(Key::Other(&self.input()[at..self.position()]))
            }
            _ => Err(Error::BadMapKey { at }),
        }
    }

    /// Walks a map: for each entry, `f` gets the key and either consumes the value (returning
    /// `true`) or leaves it (returning `false`, the value is then skipped). Duplicate keys are
    /// refused (RFC 8949 §5.6, "valid" maps have unique keys).
    pub(crate) fn map<F>(&mut self, allow_other_keys: bool, mut f: F) -> Result<()>
    where
        F: FnMut(&mut Self, Key<'a>) -> Result<bool>,
    {
        let n = self.map_header()?;
        self.enter()?;
        // Only the keys' offsets are kept (128 bytes of stack per map level on the card); an
        // earlier key is decoded again for the comparison, so equal values with different
        // encodings are still caught.
        let mut seen = [0u32; Limits::MAP_KEYS_CAP];
        for i in 0..n {
            let at = self.position();
            let k = self.key(allow_other_keys)?;
            for &prev in &seen[..i] {
                let mut again = Reader::new(self.input(), self.lim);
                again.d.set_position(prev as usize);
                if again.key(allow_other_keys)? == k {
                    return Err(Error::DuplicateKey { at });
                }
            }
            seen[i] = u32::try_from(at).map_err(|_| Error::TooLarge {
                what: "input",
                max: u32::MAX as usize,
            })?;
            if !f(self, k)? {
                self.skip()?;
            }
        }
        self.leave();
        Ok(())
    }

    fn enter(&mut self) -> Result<()> {
        if self.depth >= self.lim.max_depth {
            return Err(Error::TooDeep);
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Skips one item, refusing indefinite lengths and nesting beyond the limit.
    pub(crate) fn skip(&mut self) -> Result<()> {
        let at = self.position();
        match self.datatype()? {
            Type::Array => {
                let n = self.array()?;
                self.enter()?;
                for _ in 0..n {
                    self.skip()?;
                }
                self.leave();
                Ok(())
            }
            Type::Map => {
                let n = self.map_header()?;
                self.enter()?;
                for _ in 0..n * 2 {
                    self.skip()?;
                }
                self.leave();
                Ok(())
            }
            Type::Tag => {
                self.tag()?;
                self.enter()?;
                self.skip()?;
                self.leave();
                Ok(())
            }
            Type::BytesIndef | Type::StringIndef | Type::ArrayIndef | Type::MapIndef => {
                Err(Error::IndefiniteLength { at })
            }
            Type::Break | Type::Unknown(_) => Err(Error::BadCbor { at }),
            Type::String => self.str().map(|_| ()),
            _ => self.d.skip().map_err(|_| Error::BadCbor { at }),
        }
    }

    /// Reads a byte string and returns a reader over its content (the `bstr .cbor T` pattern).
    pub(crate) fn nested(&mut self) -> Result<(&'a [u8], Reader<'a, 'l>)> {
        let b = self.bytes()?;
        let mut r = Reader::new(b, self.lim);
        r.depth = self.depth;
        Ok((b, r))
    }
}

/// Encodes a CBOR head (major type + argument) in preferred serialization.
pub(crate) fn head(major: u8, val: u64) -> ([u8; 9], usize) {
    let mut h = [0u8; 9];
    let m = major << 5;
    let n = if val < 24 {
        h[0] = m | val as u8;
        1
    } else if val <= 0xff {
        h[0] = m | 24;
        h[1] = val as u8;
        2
    } else if val <= 0xffff {
        h[0] = m | 25;
        h[1..3].copy_from_slice(&(val as u16).to_be_bytes());
        3
    } else if val <= 0xffff_ffff {
        h[0] = m | 26;
        h[1..5].copy_from_slice(&(val as u32).to_be_bytes());
        5
    } else {
        h[0] = m | 27;
        h[1..9].copy_from_slice(&val.to_be_bytes());
        9
    };
    (h, n)
}

/// Length of a head with this argument.
pub(crate) fn head_len(val: u64) -> usize {
    head(0, val).1
}

/// Writes CBOR into a caller-provided buffer; every write is bounds checked.
pub struct Writer<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> Writer<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.pos
    }

    pub(crate) fn raw(&mut self, b: &[u8]) -> Result<&mut Self> {
        let end = self.pos.checked_add(b.len()).ok_or(Error::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(Error::BufferTooSmall)?;
        dst.copy_from_slice(b);
        self.pos = end;
        Ok(self)
    }

    fn head(&mut self, major: u8, val: u64) -> Result<&mut Self> {
        let (h, n) = head(major, val);
        self.raw(&h[..n])
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<&mut Self> {
        self.head(0, v)
    }

    pub(crate) fn i64(&mut self, v: i64) -> Result<&mut Self> {
        if v >= 0 {
            self.head(0, v as u64)
        } else {
            self.head(1, !(v as u64))
        }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> Result<&mut Self> {
        self.head(2, b.len() as u64)?.raw(b)
    }

    pub(crate) fn bytes_head(&mut self, len: usize) -> Result<&mut Self> {
        self.head(2, len as u64)
    }

    pub(crate) fn str(&mut self, s: &str) -> Result<&mut Self> {
        self.head(3, s.len() as u64)?.raw(s.as_bytes())
    }

    pub(crate) fn array(&mut self, n: usize) -> Result<&mut Self> {
        self.head(4, n as u64)
    }

    pub(crate) fn map(&mut self, n: usize) -> Result<&mut Self> {
        self.head(5, n as u64)
    }

    pub(crate) fn tag(&mut self, t: u64) -> Result<&mut Self> {
        self.head(6, t)
    }

    pub(crate) fn bool(&mut self, b: bool) -> Result<&mut Self> {
        self.raw(&[if b { 0xf5 } else { 0xf4 }])
    }

    pub(crate) fn null(&mut self) -> Result<&mut Self> {
        self.raw(&[0xf6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(b: &[u8]) -> Result<()> {
        let lim = Limits::DEFAULT;
        let mut r = Reader::new(b, &lim);
        r.map(true, |_, _| Ok(false))?;
        r.finish()
    }

    #[test]
    fn strict_maps() {
        assert_eq!(walk(&[0xa2, 0x01, 0x00, 0x02, 0x00]), Ok(()));
        // Same key, once in the short and once in the one-byte-argument form.
        assert_eq!(
            walk(&[0xa2, 0x01, 0x00, 0x18, 0x01, 0x00]),
            Err(Error::DuplicateKey { at: 3 })
        );
        assert_eq!(
            walk(&[0xa2, 0x61, b'a', 0x00, 0x61, b'a', 0x00]),
            Err(Error::DuplicateKey { at: 4 })
        );
        assert_eq!(
            walk(&[0xa2, 0x81, 0x00, 0x00, 0x81, 0x00, 0x00]),
            Err(Error::DuplicateKey { at: 4 })
        );
        assert_eq!(
            walk(&[0xbf, 0x01, 0x00, 0xff]),
            Err(Error::IndefiniteLength { at: 0 })
        );
        assert_eq!(
            walk(&[0xa1, 0x01, 0x9f, 0xff]),
            Err(Error::IndefiniteLength { at: 2 })
        );
        assert_eq!(
            walk(&[0xa1, 0x01, 0x5f, 0x41, 0x00, 0xff]),
            Err(Error::IndefiniteLength { at: 2 })
        );
        assert_eq!(walk(&[0xa0, 0x00]), Err(Error::TrailingBytes { at: 1 }));
        assert!(matches!(walk(&[0xa1, 0x01]), Err(Error::BadCbor { .. })));
    }

    #[test]
    fn nesting_is_bounded() {
        let mut b = [0x81u8; 43];
        b[0] = 0xa1;
        b[1] = 0x01;
        b[42] = 0x00;
        assert_eq!(walk(&b), Err(Error::TooDeep));
    }

    #[test]
    fn heads_are_preferred() {
        assert_eq!(head(0, 23).1, 1);
        assert_eq!(head(0, 24).1, 2);
        assert_eq!(head(0, 256).1, 3);
        assert_eq!(head(0, 65536).1, 5);
        assert_eq!(head(0, 1 << 32).1, 9);
    }
}
