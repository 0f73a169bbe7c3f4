//! Choosing between the two encodings.

use crate::error::{DecodeError, EncodeError};
use crate::limits::Limits;
use crate::model::Message;
use crate::{wbxml, xml};
use serde::{Deserialize, Serialize};

/// The encoding of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    /// `application/vnd.syncml.dm+xml`.
    Xml,
    /// `application/vnd.syncml.dm+wbxml`.
    Wbxml,
}

impl Encoding {
    /// The DM MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Xml => xml::DM_XML_MIME,
            Encoding::Wbxml => wbxml::DM_WBXML_MIME,
        }
    }

    /// The encoding named by a Content-Type (parameters ignored; DS types accepted too).
    pub fn from_content_type(content_type: &str) -> Option<Encoding> {
        let base = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match base.as_str() {
            xml::DM_XML_MIME | xml::DS_XML_MIME => Some(Encoding::Xml),
            wbxml::DM_WBXML_MIME | wbxml::DS_WBXML_MIME => Some(Encoding::Wbxml),
            _ => None,
        }
    }

    /// Guesses the encoding from the first byte: WBXML starts with its version byte 0-3.
    pub fn sniff(bytes: &[u8]) -> Encoding {
        match bytes.first() {
            Some(0x00..=0x03) => Encoding::Wbxml,
            _ => Encoding::Xml,
        }
    }

    /// Decodes a message in this encoding.
    pub fn decode(self, bytes: &[u8], limits: &Limits) -> Result<Message, DecodeError> {
        match self {
            Encoding::Xml => xml::decode(bytes, limits),
            Encoding::Wbxml => wbxml::decode(bytes, limits),
        }
    }

    /// Decodes only the header of a message whose body may be refused (see
    /// [`Message::header_from_element`]).
    pub fn decode_header(
        self,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<crate::model::SyncHdr, DecodeError> {
        let root = match self {
            Encoding::Xml => xml::decode_element(bytes, limits)?,
            Encoding::Wbxml => wbxml::decode_element(bytes, limits)?,
        };
        Message::header_from_element(&root)
    }

    /// Encodes a message in this encoding.
    pub fn encode(self, message: &Message) -> Result<Vec<u8>, EncodeError> {
        match self {
            Encoding::Xml => xml::encode(message),
            Encoding::Wbxml => wbxml::encode(message),
        }
    }
}
