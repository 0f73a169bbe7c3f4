//! The element tree both codecs share, and the tag tables of the two code pages.
//!
//! XML and WBXML decode into [`Element`]s, which [`crate::model`] turns into a
//! [`crate::Message`]; encoding goes the other way. Tags and tokens come from the SyncML
//! RepPro 1.2 WBXML code page 0 (SyncML) and code page 1 (MetInf 1.2).

use std::fmt;

/// A WBXML code page of the SyncML 1.2 document type.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum CodePage {
    /// Page 0: the SyncML 1.2 elements.
    SyncMl = 0,
    /// Page 1: the MetInf 1.2 elements (XML namespace `syncml:metinf`).
    MetInf = 1,
}

/// A WBXML token byte (global token or tag token).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WbxmlToken(pub u8);

impl WbxmlToken {
    /// Change the code page (followed by the page number).
    pub const SWITCH_PAGE: WbxmlToken = WbxmlToken(0x00);
    /// End of the current element.
    pub const END: WbxmlToken = WbxmlToken(0x01);
    /// A character entity (followed by an mb_u_int32 code point).
    pub const ENTITY: WbxmlToken = WbxmlToken(0x02);
    /// An inline NUL-terminated string.
    pub const STR_I: WbxmlToken = WbxmlToken(0x03);
    /// A literal (string-table-named) tag without content or attributes.
    pub const LITERAL: WbxmlToken = WbxmlToken(0x04);
    /// Extension tokens with inline strings.
    pub const EXT_I_0: WbxmlToken = WbxmlToken(0x40);
    /// A processing instruction.
    pub const PI: WbxmlToken = WbxmlToken(0x43);
    /// A literal tag with content.
    pub const LITERAL_C: WbxmlToken = WbxmlToken(0x44);
    /// Extension tokens with string-table references.
    pub const EXT_T_0: WbxmlToken = WbxmlToken(0x80);
    /// A string-table reference (followed by an mb_u_int32 offset).
    pub const STR_T: WbxmlToken = WbxmlToken(0x83);
    /// A literal tag with attributes.
    pub const LITERAL_A: WbxmlToken = WbxmlToken(0x84);
    /// Single-byte extension tokens.
    pub const EXT_0: WbxmlToken = WbxmlToken(0xC0);
    /// Opaque data (followed by an mb_u_int32 length and the bytes).
    pub const OPAQUE: WbxmlToken = WbxmlToken(0xC3);
    /// A literal tag with attributes and content.
    pub const LITERAL_AC: WbxmlToken = WbxmlToken(0xC4);
    /// Tag flag: the element has content.
    pub const HAS_CONTENT: u8 = 0x40;
    /// Tag flag: the element has attributes.
    pub const HAS_ATTRIBUTES: u8 = 0x80;
}

impl fmt::Debug for WbxmlToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WbxmlToken({:#04x})", self.0)
    }
}

/// One element name of the SyncML 1.2 or MetInf 1.2 DTD with its WBXML tag token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    /// The code page.
    pub page: CodePage,
    /// The tag token (without content/attribute flags).
    pub token: WbxmlToken,
    /// The element name.
    pub name: &'static str,
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.name)
    }
}

macro_rules! tags {
    ($($konst:ident = $page:ident $token:literal $name:literal,)*) => {
        /// The tags as constants.
        #[allow(missing_docs)]
        pub mod tag {
            use super::{CodePage, Tag, WbxmlToken};
            $(pub const $konst: Tag = Tag { page: CodePage::$page, token: WbxmlToken($token), name: $name };)*
        }
        /// Every tag of both code pages.
        pub const ALL_TAGS: &[Tag] = &[$(tag::$konst,)*];
    };
}

tags! {
    ADD = SyncMl 0x05 "Add",
    ALERT = SyncMl 0x06 "Alert",
    ARCHIVE = SyncMl 0x07 "Archive",
    ATOMIC = SyncMl 0x08 "Atomic",
    CHAL = SyncMl 0x09 "Chal",
    CMD = SyncMl 0x0A "Cmd",
    CMD_ID = SyncMl 0x0B "CmdID",
    CMD_REF = SyncMl 0x0C "CmdRef",
    COPY = SyncMl 0x0D "Copy",
    CRED = SyncMl 0x0E "Cred",
    DATA = SyncMl 0x0F "Data",
    DELETE = SyncMl 0x10 "Delete",
    EXEC = SyncMl 0x11 "Exec",
    FINAL = SyncMl 0x12 "Final",
    GET = SyncMl 0x13 "Get",
    ITEM = SyncMl 0x14 "Item",
    LANG = SyncMl 0x15 "Lang",
    LOC_NAME = SyncMl 0x16 "LocName",
    LOC_URI = SyncMl 0x17 "LocURI",
    MAP = SyncMl 0x18 "Map",
    MAP_ITEM = SyncMl 0x19 "MapItem",
    META = SyncMl 0x1A "Meta",
    MSG_ID = SyncMl 0x1B "MsgID",
    MSG_REF = SyncMl 0x1C "MsgRef",
    NO_RESP = SyncMl 0x1D "NoResp",
    NO_RESULTS = SyncMl 0x1E "NoResults",
    PUT = SyncMl 0x1F "Put",
    REPLACE = SyncMl 0x20 "Replace",
    RESP_URI = SyncMl 0x21 "RespURI",
    RESULTS = SyncMl 0x22 "Results",
    SEARCH = SyncMl 0x23 "Search",
    SEQUENCE = SyncMl 0x24 "Sequence",
    SESSION_ID = SyncMl 0x25 "SessionID",
    SFT_DEL = SyncMl 0x26 "SftDel",
    SOURCE = SyncMl 0x27 "Source",
    SOURCE_REF = SyncMl 0x28 "SourceRef",
    STATUS = SyncMl 0x29 "Status",
    SYNC = SyncMl 0x2A "Sync",
    SYNC_BODY = SyncMl 0x2B "SyncBody",
    SYNC_HDR = SyncMl 0x2C "SyncHdr",
    SYNC_ML = SyncMl 0x2D "SyncML",
    TARGET = SyncMl 0x2E "Target",
    TARGET_REF = SyncMl 0x2F "TargetRef",
    VER_DTD = SyncMl 0x31 "VerDTD",
    VER_PROTO = SyncMl 0x32 "VerProto",
    NUMBER_OF_CHANGES = SyncMl 0x33 "NumberOfChanges",
    MORE_DATA = SyncMl 0x34 "MoreData",
    FIELD = SyncMl 0x35 "Field",
    FILTER = SyncMl 0x36 "Filter",
    RECORD = SyncMl 0x37 "Record",
    FILTER_TYPE = SyncMl 0x38 "FilterType",
    SOURCE_PARENT = SyncMl 0x39 "SourceParent",
    TARGET_PARENT = SyncMl 0x3A "TargetParent",
    MOVE = SyncMl 0x3B "Move",
    CORRELATOR = SyncMl 0x3C "Correlator",
    ANCHOR = MetInf 0x05 "Anchor",
    EMI = MetInf 0x06 "EMI",
    FORMAT = MetInf 0x07 "Format",
    FREE_ID = MetInf 0x08 "FreeID",
    FREE_MEM = MetInf 0x09 "FreeMem",
    LAST = MetInf 0x0A "Last",
    MARK = MetInf 0x0B "Mark",
    MAX_MSG_SIZE = MetInf 0x0C "MaxMsgSize",
    MEM = MetInf 0x0D "Mem",
    MET_INF = MetInf 0x0E "MetInf",
    NEXT = MetInf 0x0F "Next",
    NEXT_NONCE = MetInf 0x10 "NextNonce",
    SHARED_MEM = MetInf 0x11 "SharedMem",
    SIZE = MetInf 0x12 "Size",
    TYPE = MetInf 0x13 "Type",
    VERSION = MetInf 0x14 "Version",
    MAX_OBJ_SIZE = MetInf 0x15 "MaxObjSize",
    FIELD_LEVEL = MetInf 0x16 "FieldLevel",
}

/// Tags indexed by code page and token, built at compile time from [`ALL_TAGS`].
const TOKEN_TABLE: [[Option<Tag>; 64]; 2] = {
    let mut table = [[None; 64]; 2];
    let mut i = 0;
    while i < ALL_TAGS.len() {
        let t = ALL_TAGS[i];
        table[t.page as usize][(t.token.0 & 0x3F) as usize] = Some(t);
        i += 1;
    }
    table
};

impl Tag {
    /// Looks a tag up by element name (names are unique across both pages).
    pub fn by_name(name: &str) -> Option<Tag> {
        ALL_TAGS.iter().copied().find(|t| t.name == name)
    }

    /// Looks a tag up by code page and token (flags stripped).
    pub fn by_token(page: CodePage, token: u8) -> Option<Tag> {
        TOKEN_TABLE[page as usize][usize::from(token & 0x3F)]
    }
}

/// A node of the element tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A child element.
    Element(Element),
    /// Character data.
    Text(String),
    /// WBXML opaque data.
    Opaque(Vec<u8>),
}

/// One element with its children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The element's tag.
    pub tag: Tag,
    /// Its content in document order.
    pub children: Vec<Node>,
}

impl Element {
    /// An element without content.
    pub fn new(tag: Tag) -> Element {
        Element {
            tag,
            children: Vec::new(),
        }
    }

    /// An element holding text.
    pub fn text(tag: Tag, text: impl Into<String>) -> Element {
        Element {
            tag,
            children: vec![Node::Text(text.into())],
        }
    }

    /// Appends a child element.
    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    /// The child elements.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            _ => None,
        })
    }
}
