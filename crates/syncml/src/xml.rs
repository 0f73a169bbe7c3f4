//! The XML codec (SyncML RepPro 1.2 §4, DM Protocol 1.2 §6.1 MIME type
//! `application/vnd.syncml.dm+xml`).
//!
//! Decoding is liberal in what it takes: with or without the XML declaration and DOCTYPE, the
//! MetInf elements in the default namespace, with `xmlns="syncml:metinf"` or under a prefix;
//! element order is left to the model. Encoding writes the declaration, the SyncML 1.2
//! DOCTYPE, `xmlns="SYNCML:SYNCML1.2"` on the root and `xmlns="syncml:metinf"` on each
//! MetInf element, as the DM 1.2 examples do.

use crate::element::{CodePage, Element, Node, Tag};
use crate::error::{DecodeError, EncodeError};
use crate::limits::Limits;
use crate::model::Message;
use quick_xml::Reader;
use quick_xml::events::Event;

/// MIME type of DM messages in XML.
pub const DM_XML_MIME: &str = "application/vnd.syncml.dm+xml";
/// MIME type of DS messages in XML, accepted on input.
pub const DS_XML_MIME: &str = "application/vnd.syncml+xml";
/// Namespace of the SyncML 1.2 elements.
pub const SYNCML_NS: &str = "SYNCML:SYNCML1.2";
/// Namespace of the MetInf elements.
pub const METINF_NS: &str = "syncml:metinf";
/// The formal public identifier of the SyncML 1.2 DTD.
pub const SYNCML_12_FPI: &str = "-//SYNCML//DTD SyncML 1.2//EN";

struct Builder<'l> {
    limits: &'l Limits,
    stack: Vec<Element>,
    root: Option<Element>,
    elements: usize,
}

impl Builder<'_> {
    fn open(&mut self, name: &str) -> Result<(), DecodeError> {
        // Prefixes (`mi:Format`) are accepted: the names of both pages are unique.
        let local = name.rsplit(':').next().unwrap_or(name);
        let tag = Tag::by_name(local).ok_or_else(|| DecodeError::UnknownElement(shorten(local)))?;
        if self.root.is_some() {
            return Err(DecodeError::MalformedXml(
                "content after the root element".into(),
            ));
        }
        self.elements += 1;
        if self.elements > self.limits.max_elements {
            return Err(DecodeError::TooManyElements(self.limits.max_elements));
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(DecodeError::TooDeep(self.limits.max_depth));
        }
        self.stack.push(Element::new(tag));
        Ok(())
    }

    fn close(&mut self) -> Result<(), DecodeError> {
        let done = self
            .stack
            .pop()
            .ok_or_else(|| DecodeError::MalformedXml("unbalanced end tag".into()))?;
        match self.stack.last_mut() {
            Some(parent) => parent.children.push(Node::Element(done)),
            None => self.root = Some(done),
        }
        Ok(())
    }

    fn text(&mut self, text: &str) -> Result<(), DecodeError> {
        let Some(current) = self.stack.last_mut() else {
            if text.trim().is_empty() {
                return Ok(());
            }
            return Err(DecodeError::MalformedXml(
                "text outside the root element".into(),
            ));
        };
        if let Some(Node::Text(prev)) = current.children.last_mut() {
            prev.push_str(text);
            if prev.len() > self.limits.max_text_bytes {
                return Err(DecodeError::ValueTooLarge {
                    size: prev.len(),
                    limit: self.limits.max_text_bytes,
                });
            }
        } else {
            if text.len() > self.limits.max_text_bytes {
                return Err(DecodeError::ValueTooLarge {
                    size: text.len(),
                    limit: self.limits.max_text_bytes,
                });
            }
            current.children.push(Node::Text(text.to_owned()));
        }
        Ok(())
    }
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

fn xml_err(e: impl std::fmt::Display) -> DecodeError {
    DecodeError::MalformedXml(shorten(&e.to_string()))
}

/// Resolves the five predefined entities and character references (XML 1.0 §4.6, §4.1).
fn resolve_reference(name: &str) -> Result<char, DecodeError> {
    Ok(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let num = name.strip_prefix('#').ok_or_else(|| {
                DecodeError::MalformedXml(format!("unknown entity &{};", shorten(name)))
            })?;
            let code = match num.strip_prefix('x') {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => num.parse(),
            }
            .map_err(|_| DecodeError::MalformedXml("bad character reference".into()))?;
            char::from_u32(code)
                .filter(|c| *c != '\0')
                .ok_or_else(|| DecodeError::MalformedXml("bad character reference".into()))?
        }
    })
}

/// Decodes an XML document into the element tree.
pub fn decode_element(bytes: &[u8], limits: &Limits) -> Result<Element, DecodeError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(DecodeError::MessageTooLarge {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut b = Builder {
        limits,
        stack: Vec::new(),
        root: None,
        elements: 0,
    };
    loop {
        match reader.read_event().map_err(xml_err)? {
            Event::Start(s) => b.open(s.name().as_ref())?,
            Event::Empty(s) => {
                b.open(s.name().as_ref())?;
                b.close()?;
            }
            Event::End(_) => b.close()?,
            Event::Text(t) => b.text(&t.xml10_content())?,
            Event::CData(t) => {
                if b.stack.is_empty() {
                    return Err(DecodeError::MalformedXml(
                        "CDATA outside the root element".into(),
                    ));
                }
                b.text(&t.xml10_content())?
            }
            Event::GeneralRef(r) => {
                let c = resolve_reference(&r)?;
                b.text(c.encode_utf8(&mut [0u8; 4]))?
            }
            Event::Decl(_) | Event::DocType(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !b.stack.is_empty() {
        return Err(DecodeError::MalformedXml(
            "document ends inside an element".into(),
        ));
    }
    b.root
        .ok_or_else(|| DecodeError::MalformedXml("no root element".into()))
}

/// Decodes an XML SyncML message.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
    Message::from_element(&decode_element(bytes, limits)?)
}

/// XML 1.0 §2.2 Char, minus the C0 controls other than tab, newline and carriage return.
fn xml_char_ok(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// True if `data` is UTF-8 made only of characters XML 1.0 can carry.
pub fn is_xml_text(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|t| t.chars().all(xml_char_ok))
}

fn escape_into(out: &mut String, text: &str, element: &'static str) -> Result<(), EncodeError> {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            // A literal CR would be normalised away by the reader (XML 1.0 §2.11).
            '\r' => out.push_str("&#13;"),
            c if xml_char_ok(c) => out.push(c),
            _ => return Err(EncodeError::NotXmlText(element)),
        }
    }
    Ok(())
}

fn write_element(out: &mut String, e: &Element, parent_page: CodePage) -> Result<(), EncodeError> {
    out.push('<');
    out.push_str(e.tag.name);
    if e.tag.page == CodePage::MetInf && parent_page != CodePage::MetInf {
        out.push_str(" xmlns=\"");
        out.push_str(METINF_NS);
        out.push('"');
    }
    if e.children.is_empty() {
        out.push_str("/>");
        return Ok(());
    }
    out.push('>');
    for child in &e.children {
        match child {
            Node::Element(c) => write_element(out, c, e.tag.page)?,
            Node::Text(t) => escape_into(out, t, e.tag.name)?,
            Node::Opaque(bytes) => {
                let t =
                    std::str::from_utf8(bytes).map_err(|_| EncodeError::NotXmlText(e.tag.name))?;
                escape_into(out, t, e.tag.name)?
            }
        }
    }
    out.push_str("</");
    out.push_str(e.tag.name);
    out.push('>');
    Ok(())
}

/// Encodes an element tree whose root is `SyncML`.
pub fn encode_element(root: &Element) -> Result<Vec<u8>, EncodeError> {
    let mut out = String::with_capacity(1024);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str("<!DOCTYPE SyncML PUBLIC \"");
    out.push_str(SYNCML_12_FPI);
    out.push_str(
        "\" \"http://www.openmobilealliance.org/tech/DTD/OMA-TS-SyncML_RepPro_DTD-V1_2.dtd\">\n",
    );
    out.push_str("<SyncML xmlns=\"");
    out.push_str(SYNCML_NS);
    out.push_str("\">");
    for child in &root.children {
        match child {
            Node::Element(c) => write_element(&mut out, c, CodePage::SyncMl)?,
            Node::Text(t) => escape_into(&mut out, t, "SyncML")?,
            Node::Opaque(_) => return Err(EncodeError::NotXmlText("SyncML")),
        }
    }
    out.push_str("</SyncML>");
    Ok(out.into_bytes())
}

/// Encodes a message as XML.
pub fn encode(message: &Message) -> Result<Vec<u8>, EncodeError> {
    encode_element(&message.to_element())
}
