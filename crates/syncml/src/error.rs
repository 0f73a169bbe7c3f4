//! The crate's error enums: one for decoding, one for encoding.

use crate::codes::StatusCode;
use thiserror::Error;

/// Why a message could not be decoded. [`DecodeError::status`] gives the SyncML status the
/// receiver answers with.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The message is larger than [`crate::Limits::max_message_bytes`].
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Size of the message.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A text or opaque value is larger than [`crate::Limits::max_text_bytes`].
    #[error("a value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Size of the value.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Elements nest deeper than [`crate::Limits::max_depth`].
    #[error("elements nest deeper than {0} levels")]
    TooDeep(usize),
    /// More elements than [`crate::Limits::max_elements`].
    #[error("more than {0} elements")]
    TooManyElements(usize),
    /// The XML is not well formed.
    #[error("malformed XML: {0}")]
    MalformedXml(String),
    /// The WBXML is not well formed.
    #[error("malformed WBXML at byte {offset}: {reason}")]
    MalformedWbxml {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// The WBXML document names a DTD other than SyncML 1.2.
    #[error("unsupported WBXML public identifier {0}")]
    UnsupportedPublicId(String),
    /// The WBXML document uses a character set other than UTF-8.
    #[error("unsupported WBXML charset (IANA MIBenum {0}); only UTF-8 is supported")]
    UnsupportedCharset(u32),
    /// The WBXML version byte is not 1.0-1.3.
    #[error("unsupported WBXML version byte {0:#04x}")]
    UnsupportedWbxmlVersion(u8),
    /// Text is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// An element the SyncML 1.2 and MetInf 1.2 DTDs do not define.
    #[error("unknown element <{0}>")]
    UnknownElement(String),
    /// An element that is defined, but not allowed where it appears.
    #[error("element <{child}> is not allowed in <{parent}>")]
    UnexpectedElement {
        /// The enclosing element.
        parent: &'static str,
        /// The offending element.
        child: String,
    },
    /// A required element is missing.
    #[error("<{parent}> lacks the required <{child}>")]
    MissingElement {
        /// The enclosing element.
        parent: &'static str,
        /// The missing element.
        child: &'static str,
    },
    /// An element holds a value that does not parse (a number, a code, ...).
    #[error("<{element}> has an invalid value {value:?}")]
    InvalidValue {
        /// The element.
        element: &'static str,
        /// The value found (shortened).
        value: String,
    },
    /// Two commands of one message share a CmdID (RepPro §5.1.3: unique per message).
    #[error("CmdID {0} is used twice in one message")]
    DuplicateCmdId(u32),
    /// The root element is not `SyncML`.
    #[error("the root element is <{0}>, not <SyncML>")]
    NotSyncMl(String),
}

impl DecodeError {
    /// The SyncML status the receiver sends back for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            DecodeError::MessageTooLarge { .. } | DecodeError::ValueTooLarge { .. } => {
                StatusCode::REQUEST_ENTITY_TOO_LARGE
            }
            DecodeError::UnsupportedPublicId(_)
            | DecodeError::UnsupportedCharset(_)
            | DecodeError::UnsupportedWbxmlVersion(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DecodeError::MissingElement { .. } => StatusCode::INCOMPLETE_COMMAND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// XML cannot carry this data (not UTF-8, or characters XML 1.0 forbids); send it
    /// with `Format` b64, or use WBXML, which carries it as opaque data.
    #[error("<{0}> holds data that XML 1.0 cannot carry; use b64 format or WBXML")]
    NotXmlText(&'static str),
    /// A string for WBXML inline text contains a NUL byte.
    #[error("<{0}> text contains a NUL byte, which WBXML inline strings cannot carry")]
    NulInString(&'static str),
}
