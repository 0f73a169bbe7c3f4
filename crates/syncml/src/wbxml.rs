//! The WBXML codec (WAP-192 WBXML 1.1-1.3; SyncML RepPro 1.2 WBXML code pages; DM Protocol
//! 1.2 §6.1 MIME type `application/vnd.syncml.dm+wbxml`).
//!
//! Decoding takes versions 1.0 to 1.3, the public id as the well-known value 0x1201 (or
//! "unknown", 1) or as a string-table FPI, the UTF-8 charset, code pages 0 (SyncML) and 1
//! (MetInf), and text as inline strings, string-table references, entities or opaque data.
//! Attributes, literal tags, processing instructions and extensions have no place in SyncML
//! and are refused. Encoding writes WBXML 1.2 (or a chosen version), the public id 0x1201 (or
//! the FPI in the string table), UTF-8, and `Data` as an inline string when it is UTF-8
//! without NUL, otherwise as opaque.

use crate::element::{CodePage, Element, Node, Tag, WbxmlToken};
use crate::error::{DecodeError, EncodeError};
use crate::limits::Limits;
use crate::model::Message;
use crate::xml::SYNCML_12_FPI;

/// MIME type of DM messages in WBXML.
pub const DM_WBXML_MIME: &str = "application/vnd.syncml.dm+wbxml";
/// MIME type of DS messages in WBXML, accepted on input.
pub const DS_WBXML_MIME: &str = "application/vnd.syncml+wbxml";
/// The registered WBXML public id of the SyncML 1.2 DTD.
pub const PUBLIC_ID_SYNCML_12: u32 = 0x1201;
/// The WBXML public id meaning "unknown or missing" (WAP-192 §7.2.1).
pub const PUBLIC_ID_UNKNOWN: u32 = 0x01;
/// IANA MIBenum of UTF-8.
pub const CHARSET_UTF8: u32 = 106;

/// The WBXML version written in the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WbxmlVersion {
    /// WBXML 1.1 (byte 0x01).
    V1_1 = 0x01,
    /// WBXML 1.2 (byte 0x02), what SyncML 1.2 names.
    V1_2 = 0x02,
    /// WBXML 1.3 (byte 0x03).
    V1_3 = 0x03,
}

/// How the encoder names the document type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicIdForm {
    /// The well-known public id 0x1201.
    WellKnown,
    /// Public id 0 with the FPI `-//SYNCML//DTD SyncML 1.2//EN` in the string table.
    StringTable,
}

/// How the encoder writes `Data` content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataForm {
    /// Inline string when the data is UTF-8 without NUL, opaque otherwise.
    InlineWhenText,
    /// Always opaque.
    Opaque,
}

/// Encoder options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WbxmlOptions {
    /// Version byte.
    pub version: WbxmlVersion,
    /// Public id form.
    pub public_id: PublicIdForm,
    /// Data form.
    pub data: DataForm,
}

impl Default for WbxmlOptions {
    fn default() -> Self {
        WbxmlOptions {
            version: WbxmlVersion::V1_2,
            public_id: PublicIdForm::WellKnown,
            data: DataForm::InlineWhenText,
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, reason: &'static str) -> DecodeError {
        DecodeError::MalformedWbxml {
            offset: self.pos,
            reason,
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.err("unexpected end of document"))?;
        self.pos += 1;
        Ok(b)
    }

    /// mb_u_int32 (WAP-192 §5.1): at most five bytes, big-endian 7-bit groups.
    fn mb_u32(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for _ in 0..5 {
            let b = self.byte()?;
            if value > (u32::MAX >> 7) {
                return Err(self.err("mb_u_int32 overflows 32 bits"));
            }
            value = (value << 7) | u32::from(b & 0x7F);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err("mb_u_int32 longer than 5 bytes"))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.err("length beyond the end of document"))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn cstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = &self.bytes[self.pos..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.err("unterminated inline string"))?;
        let s = &rest[..len];
        self.pos += len + 1;
        Ok(s)
    }
}

fn table_string(table: &[u8], offset: u32, at: usize) -> Result<&[u8], DecodeError> {
    let rest = table
        .get(offset as usize..)
        .ok_or(DecodeError::MalformedWbxml {
            offset: at,
            reason: "string table offset out of range",
        })?;
    let len = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or(DecodeError::MalformedWbxml {
            offset: at,
            reason: "unterminated string table entry",
        })?;
    Ok(&rest[..len])
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

fn add_text(e: &mut Element, text: &str, limits: &Limits) -> Result<(), DecodeError> {
    if let Some(Node::Text(prev)) = e.children.last_mut() {
        prev.push_str(text);
        if prev.len() > limits.max_text_bytes {
            return Err(DecodeError::ValueTooLarge {
                size: prev.len(),
                limit: limits.max_text_bytes,
            });
        }
    } else {
        if text.len() > limits.max_text_bytes {
            return Err(DecodeError::ValueTooLarge {
                size: text.len(),
                limit: limits.max_text_bytes,
            });
        }
        e.children.push(Node::Text(text.to_owned()));
    }
    Ok(())
}

/// Decodes a WBXML document into the element tree.
pub fn decode_element(bytes: &[u8], limits: &Limits) -> Result<Element, DecodeError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::MessageTooLarge {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let mut c = Cursor { bytes, pos: 0 };
    let table = read_header(&mut c)?;
    let mut tree = TreeBuilder {
        stack: Vec::new(),
        elements: 0,
        limits,
    };
    let mut page = CodePage::SyncMl;
    loop {
        let at = c.pos;
        match WbxmlToken(c.byte()?) {
            WbxmlToken::SWITCH_PAGE => page = code_page(c.byte()?, at)?,
            WbxmlToken::END => {
                if let Some(root) = tree.close(at)? {
                    // Trailing bytes after the root are not part of the document.
                    if c.pos != bytes.len() {
                        return Err(malformed(c.pos, "bytes after the root element"));
                    }
                    return Ok(root);
                }
            }
            WbxmlToken::STR_I => {
                let s = utf8(c.cstr()?)?;
                tree.text(s, at)?;
            }
            WbxmlToken::STR_T => {
                let index = c.mb_u32()?;
                let s = utf8(table_string(table, index, at)?)?;
                tree.text(s, at)?;
            }
            WbxmlToken::ENTITY => {
                let code = c.mb_u32()?;
                let ch = char::from_u32(code).ok_or(malformed(at, "entity is not a character"))?;
                tree.text(ch.encode_utf8(&mut [0u8; 4]), at)?;
            }
            WbxmlToken::OPAQUE => {
                let len = c.mb_u32()? as usize;
                if len > limits.max_text_bytes {
                    return Err(DecodeError::ValueTooLarge {
                        size: len,
                        limit: limits.max_text_bytes,
                    });
                }
                tree.opaque(c.take(len)?, at)?;
            }
            WbxmlToken::LITERAL
            | WbxmlToken::LITERAL_A
            | WbxmlToken::LITERAL_C
            | WbxmlToken::LITERAL_AC => {
                return Err(DecodeError::UnknownElement("(literal tag)".into()));
            }
            WbxmlToken::PI => {
                return Err(malformed(
                    at,
                    "processing instructions are not used in SyncML",
                ));
            }
            WbxmlToken(0x40..=0x42 | 0x80..=0x82 | 0xC0..=0xC2) => {
                return Err(malformed(at, "extension tokens are not used in SyncML"));
            }
            WbxmlToken(t) => {
                if let Some(root) = tree.open(page, t, at)? {
                    return Ok(root);
                }
            }
        }
    }
}

fn malformed(offset: usize, reason: &'static str) -> DecodeError {
    DecodeError::MalformedWbxml { offset, reason }
}

/// Reads the document header (WAP-192 §5.3-§5.5): version, public id, charset and string
/// table; refuses anything but SyncML 1.2 in UTF-8. Answers the string table.
fn read_header<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], DecodeError> {
    let version = c.byte()?;
    if version > 0x03 {
        return Err(DecodeError::UnsupportedWbxmlVersion(version));
    }
    let public_id = c.mb_u32()?;
    let fpi_index = if public_id == 0 {
        Some(c.mb_u32()?)
    } else {
        None
    };
    // WBXML 1.0 has no charset field (WAP-192 §5.3 came with 1.1).
    let charset = if version == 0x00 {
        CHARSET_UTF8
    } else {
        c.mb_u32()?
    };
    // 0 means "unknown"; SyncML is UTF-8 then.
    if charset != CHARSET_UTF8 && charset != 0 {
        return Err(DecodeError::UnsupportedCharset(charset));
    }
    let table_len = c.mb_u32()? as usize;
    let table = c.take(table_len)?;
    match (public_id, fpi_index) {
        (PUBLIC_ID_SYNCML_12 | PUBLIC_ID_UNKNOWN, _) => {}
        (0, Some(index)) => {
            let fpi = utf8(table_string(table, index, c.pos)?)?;
            if fpi != SYNCML_12_FPI {
                return Err(DecodeError::UnsupportedPublicId(
                    fpi.chars().take(64).collect(),
                ));
            }
        }
        (other, _) => return Err(DecodeError::UnsupportedPublicId(format!("{other:#x}"))),
    }
    Ok(table)
}

/// The code page a SWITCH_PAGE names (SyncML RepPro 1.2 §8.2: 0 SyncML, 1 MetInf).
fn code_page(index: u8, at: usize) -> Result<CodePage, DecodeError> {
    match index {
        0 => Ok(CodePage::SyncMl),
        1 => Ok(CodePage::MetInf),
        _ => Err(malformed(at, "unknown code page")),
    }
}

/// The element tree under construction: the open elements, innermost last, within the limits.
struct TreeBuilder<'l> {
    stack: Vec<Element>,
    elements: usize,
    limits: &'l Limits,
}

impl TreeBuilder<'_> {
    /// The innermost open element, for content at offset `at`.
    fn current(&mut self, at: usize, what: &'static str) -> Result<&mut Element, DecodeError> {
        self.stack.last_mut().ok_or(malformed(at, what))
    }

    /// A tag token: opens an element (with content) or adds an empty one. Answers the root
    /// when the document is a single empty element.
    fn open(&mut self, page: CodePage, t: u8, at: usize) -> Result<Option<Element>, DecodeError> {
        if t & WbxmlToken::HAS_ATTRIBUTES != 0 {
            return Err(malformed(at, "attributes are not used in SyncML"));
        }
        let tag = Tag::by_token(page, t).ok_or_else(|| {
            DecodeError::UnknownElement(format!("token {t:#04x} on page {}", page as u8))
        })?;
        if self.stack.is_empty() && (self.elements > 0 || tag != crate::element::tag::SYNC_ML) {
            return Err(DecodeError::NotSyncMl(tag.name.to_owned()));
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(DecodeError::TooManyElements(self.limits.max_elements));
        }
        let element = Element::new(tag);
        if t & WbxmlToken::HAS_CONTENT != 0 {
            if self.stack.len() >= self.limits.max_depth {
                return Err(DecodeError::TooDeep(self.limits.max_depth));
            }
            self.stack.push(element);
            return Ok(None);
        }
        match self.stack.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Element(element));
                Ok(None)
            }
            None => Ok(Some(element)),
        }
    }

    /// END: closes the innermost element; answers the root when it was the root.
    fn close(&mut self, at: usize) -> Result<Option<Element>, DecodeError> {
        let done = self
            .stack
            .pop()
            .ok_or(malformed(at, "END without an open element"))?;
        match self.stack.last_mut() {
            Some(parent) => {
                parent.children.push(Node::Element(done));
                Ok(None)
            }
            None => Ok(Some(done)),
        }
    }

    /// Text content of the innermost element.
    fn text(&mut self, s: &str, at: usize) -> Result<(), DecodeError> {
        let limits = self.limits;
        let e = self.current(at, "text outside the root element")?;
        add_text(e, s, limits)
    }

    /// Opaque content of the innermost element; adjacent opaque runs join.
    fn opaque(&mut self, data: &[u8], at: usize) -> Result<(), DecodeError> {
        let max = self.limits.max_text_bytes;
        let e = self.current(at, "opaque data outside the root element")?;
        match e.children.last_mut() {
            Some(Node::Opaque(prev)) => {
                prev.extend_from_slice(data);
                if prev.len() > max {
                    return Err(DecodeError::ValueTooLarge {
                        size: prev.len(),
                        limit: max,
                    });
                }
            }
            _ => e.children.push(Node::Opaque(data.to_vec())),
        }
        Ok(())
    }
}

/// Decodes a WBXML SyncML message.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    Message::from_element(&decode_element(bytes, limits)?)
}

fn push_mb_u32(out: &mut Vec<u8>, mut value: u32) {
    let mut groups = [0u8; 5];
    let mut n = 0;
    loop {
        groups[n] = (value & 0x7F) as u8;
        n += 1;
        value >>= 7;
        if value == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        let more = if i > 0 { 0x80 } else { 0 };
        out.push(groups[i] | more);
    }
}

fn push_str_i(out: &mut Vec<u8>, text: &str, element: &'static str) -> Result<(), EncodeError> {
    if text.as_bytes().contains(&0) {
        return Err(EncodeError::NulInString(element));
    }
    out.push(WbxmlToken::STR_I.0);
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Ok(())
}

fn push_opaque(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(WbxmlToken::OPAQUE.0);
    push_mb_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

fn write_element(
    out: &mut Vec<u8>,
    e: &Element,
    page: &mut CodePage,
    opts: &WbxmlOptions,
) -> Result<(), EncodeError> {
    if e.tag.page != *page {
        out.push(WbxmlToken::SWITCH_PAGE.0);
        out.push(e.tag.page as u8);
        *page = e.tag.page;
    }
    if e.children.is_empty() {
        out.push(e.tag.token.0);
        return Ok(());
    }
    out.push(e.tag.token.0 | WbxmlToken::HAS_CONTENT);
    let is_data = e.tag == crate::element::tag::DATA;
    for child in &e.children {
        match child {
            Node::Element(c) => write_element(out, c, page, opts)?,
            Node::Text(t)
                if is_data && (opts.data == DataForm::Opaque || t.as_bytes().contains(&0)) =>
            {
                push_opaque(out, t.as_bytes())
            }
            Node::Text(t) => push_str_i(out, t, e.tag.name)?,
            Node::Opaque(bytes) => push_opaque(out, bytes),
        }
    }
    out.push(WbxmlToken::END.0);
    Ok(())
}

/// Encodes an element tree whose root is `SyncML`.
pub fn encode_element(root: &Element, opts: &WbxmlOptions) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(512);
    out.push(opts.version as u8);
    match opts.public_id {
        PublicIdForm::WellKnown => {
            push_mb_u32(&mut out, PUBLIC_ID_SYNCML_12);
            push_mb_u32(&mut out, CHARSET_UTF8);
            push_mb_u32(&mut out, 0);
        }
        PublicIdForm::StringTable => {
            out.push(0);
            push_mb_u32(&mut out, 0);
            push_mb_u32(&mut out, CHARSET_UTF8);
            push_mb_u32(&mut out, SYNCML_12_FPI.len() as u32 + 1);
            out.extend_from_slice(SYNCML_12_FPI.as_bytes());
            out.push(0);
        }
    }
    let mut page = CodePage::SyncMl;
    write_element(&mut out, root, &mut page, opts)?;
    Ok(out)
}

/// Encodes a message as WBXML with the given options.
pub fn encode_with(message: &Message, opts: &WbxmlOptions) -> Result<Vec<u8>, EncodeError> {
    encode_element(&message.to_element(), opts)
}

/// Encodes a message as WBXML 1.2 with the well-known public id.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    encode_with(message, &WbxmlOptions::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mb_u_int32_round_trip() {
        for v in [0u32, 1, 0x7F, 0x80, 0x1201, 0x3FFF, 0x4000, u32::MAX] {
            let mut out = Vec::new();
            push_mb_u32(&mut out, v);
            let mut c = Cursor {
                bytes: &out,
                pos: 0,
            };
            assert_eq!(c.mb_u32().unwrap(), v);
            assert_eq!(c.pos, out.len());
        }
        let mut out = Vec::new();
        push_mb_u32(&mut out, 0x1201);
        assert_eq!(out, [0xA4, 0x01]);
        let mut c = Cursor {
            bytes: &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            pos: 0,
        };
        assert!(c.mb_u32().is_err());
    }
}
