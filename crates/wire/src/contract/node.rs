//! The DM node table: URI, Format and MIME type of every node the card, the device and the
//! server exchange (docs/dm-tree.md "Tree").

use core::fmt;

/// A DM node Format (OMA-TS-DM_TND-V1_2 §7.7.6; SyncML Meta Inf §5.1.2 `Format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Text (`chr`).
    Chr,
    /// A decimal integer as text (`int`).
    Int,
    /// `true` / `false` (`bool`).
    Bool,
    /// Octets carried as such (`bin`, WBXML opaque data).
    Bin,
    /// Octets carried as base64 text (`b64`, RFC 4648 §4).
    B64,
    /// XML (`xml`).
    Xml,
    /// A floating point number (`float`).
    Float,
    /// An ISO 8601 date (`date`).
    Date,
    /// An ISO 8601 time (`time`).
    Time,
    /// No value (`null`).
    Null,
    /// An interior node (`node`).
    Node,
}

impl Format {
    /// Every Format, in the order of TND §7.7.6.
    pub const ALL: [Format; 11] = [
        Format::Chr,
        Format::Int,
        Format::Bool,
        Format::Bin,
        Format::B64,
        Format::Xml,
        Format::Float,
        Format::Date,
        Format::Time,
        Format::Null,
        Format::Node,
    ];

    /// The name in a `Format` element.
    pub const fn as_str(self) -> &'static str {
        match self {
            Format::Chr => "chr",
            Format::Int => "int",
            Format::Bool => "bool",
            Format::Bin => "bin",
            Format::B64 => "b64",
            Format::Xml => "xml",
            Format::Float => "float",
            Format::Date => "date",
            Format::Time => "time",
            Format::Null => "null",
            Format::Node => "node",
        }
    }

    /// The Format a `Format` element names (exact, lower case as TND spells them).
    pub fn parse(name: &str) -> Option<Format> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Whether a value of this Format is octets rather than text.
    pub const fn is_binary(self) -> bool {
        matches!(self, Format::Bin | Format::B64)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DM node the project uses, with its URI, Format and MIME type (docs/dm-tree.md "Tree").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    /// `./DevDetail/FwV`: version of the active firmware slot (OMA-TS-DM_StdObj-V1_2 §5.4).
    DevDetailFwV,
    /// `./FUMO/fw/DownloadAndUpdate`: the Exec node (OMA-TS-DM-FUMO-V1_0 §5.3).
    FumoDownloadAndUpdate,
    /// `./FUMO/fw/DownloadAndUpdate/PkgURL`: URL of the SUIT envelope.
    FumoPkgUrl,
    /// `./FUMO/fw/State`: FUMO 1.0 §6.1 state.
    FumoState,
    /// `./FUMO/fw/Ext/DeliveryToken`: the server's CWT delivery token (COSE_Sign1).
    FumoDeliveryToken,
    /// `./FUMO/fw/Ext/Receipt`: the card-signed receipt of the last finished update.
    FumoReceipt,
    /// `./SIMFOTA/Card/Nonce`: a fresh one-time card nonce (16 bytes).
    CardNonce,
    /// `./SIMFOTA/Card/Info`: [`CardInfo`](super::CardInfo).
    CardInfo,
    /// `./SIMFOTA/Card/Servers`: [`ServerEntry`](super::ServerEntry) list.
    CardServers,
    /// `./SIMFOTA/Card/Policy`: [`Policy`](crate::Policy).
    CardPolicy,
    /// `./SIMFOTA/Card/Originators`: [`OriginatorEntry`](super::OriginatorEntry) list.
    CardOriginators,
    /// `./SIMFOTA/Card/LogRequest`: a server-signed log-read request.
    CardLogRequest,
    /// `./SIMFOTA/Card/LogResponse`: the card's export answering the last `LogRequest`.
    CardLogResponse,
    /// `./SIMFOTA/Card/LogAck`: a server-signed log acknowledgement.
    CardLogAck,
    /// `./SIMFOTA/Card/Admin`: an issuer-signed admin command.
    CardAdmin,
    /// `./SIMFOTA/Card/AdminResult`: the card's status word for the last `Admin`, 4 hex digits.
    CardAdminResult,
}

/// MIME type of a CBOR value (RFC 8949 §9.5).
const CBOR: &str = "application/cbor";
/// MIME type of a COSE message (RFC 9052 §11.2).
const COSE: &str = "application/cose";
/// MIME type of text values.
const TEXT: &str = "text/plain";

impl Node {
    /// Where the card subtree is mounted.
    pub const CARD_ROOT: &'static str = "./SIMFOTA/Card";
    /// Where the FUMO object is mounted (the `<x>` node is `fw`).
    pub const FUMO_ROOT: &'static str = "./FUMO/fw";

    /// Every node of the table.
    pub const ALL: [Node; 16] = [
        Node::DevDetailFwV,
        Node::FumoDownloadAndUpdate,
        Node::FumoPkgUrl,
        Node::FumoState,
        Node::FumoDeliveryToken,
        Node::FumoReceipt,
        Node::CardNonce,
        Node::CardInfo,
        Node::CardServers,
        Node::CardPolicy,
        Node::CardOriginators,
        Node::CardLogRequest,
        Node::CardLogResponse,
        Node::CardLogAck,
        Node::CardAdmin,
        Node::CardAdminResult,
    ];

    /// The children of `./SIMFOTA/Card`, in the order the device lists them.
    pub const CARD: [Node; 10] = [
        Node::CardNonce,
        Node::CardInfo,
        Node::CardServers,
        Node::CardPolicy,
        Node::CardOriginators,
        Node::CardLogRequest,
        Node::CardLogResponse,
        Node::CardLogAck,
        Node::CardAdmin,
        Node::CardAdminResult,
    ];

    /// The absolute URI.
    pub const fn uri(self) -> &'static str {
        match self {
            Node::DevDetailFwV => "./DevDetail/FwV",
            Node::FumoDownloadAndUpdate => "./FUMO/fw/DownloadAndUpdate",
            Node::FumoPkgUrl => "./FUMO/fw/DownloadAndUpdate/PkgURL",
            Node::FumoState => "./FUMO/fw/State",
            Node::FumoDeliveryToken => "./FUMO/fw/Ext/DeliveryToken",
            Node::FumoReceipt => "./FUMO/fw/Ext/Receipt",
            Node::CardNonce => "./SIMFOTA/Card/Nonce",
            Node::CardInfo => "./SIMFOTA/Card/Info",
            Node::CardServers => "./SIMFOTA/Card/Servers",
            Node::CardPolicy => "./SIMFOTA/Card/Policy",
            Node::CardOriginators => "./SIMFOTA/Card/Originators",
            Node::CardLogRequest => "./SIMFOTA/Card/LogRequest",
            Node::CardLogResponse => "./SIMFOTA/Card/LogResponse",
            Node::CardLogAck => "./SIMFOTA/Card/LogAck",
            Node::CardAdmin => "./SIMFOTA/Card/Admin",
            Node::CardAdminResult => "./SIMFOTA/Card/AdminResult",
        }
    }

    /// The Format the node's value has (docs/dm-tree.md).
    pub const fn format(self) -> Format {
        match self {
            Node::DevDetailFwV | Node::FumoPkgUrl | Node::CardAdminResult => Format::Chr,
            Node::FumoState => Format::Int,
            Node::FumoDownloadAndUpdate => Format::Node,
            Node::FumoDeliveryToken
            | Node::FumoReceipt
            | Node::CardNonce
            | Node::CardInfo
            | Node::CardServers
            | Node::CardPolicy
            | Node::CardOriginators
            | Node::CardLogRequest
            | Node::CardLogResponse
            | Node::CardLogAck
            | Node::CardAdmin => Format::B64,
        }
    }

    /// The MIME type of the node's value (`Meta/Type`); `None` for the interior Exec node.
    pub const fn mime_type(self) -> Option<&'static str> {
        Some(match self {
            Node::FumoDownloadAndUpdate => return None,
            Node::DevDetailFwV | Node::FumoPkgUrl | Node::FumoState | Node::CardAdminResult => TEXT,
            // RFC 8392 §9.2.
            Node::FumoDeliveryToken => "application/cwt",
            Node::FumoReceipt => "application/vnd.simfota.receipt+cbor",
            Node::CardNonce => "application/octet-stream",
            Node::CardInfo | Node::CardServers | Node::CardPolicy | Node::CardOriginators => CBOR,
            Node::CardLogRequest | Node::CardLogResponse | Node::CardLogAck | Node::CardAdmin => {
                COSE
            }
        })
    }

    /// The largest value, in octets after the transfer encoding is undone. The signed
    /// objects are bounded by `Limits::DEFAULT.max_object_len`; a log export page by
    /// `max_export_entries` records of 288 bytes plus its envelope.
    pub const fn max_len(self) -> usize {
        match self {
            Node::CardLogResponse => 32 * 1024,
            Node::FumoPkgUrl => 2048,
            Node::CardNonce => 16,
            Node::CardAdminResult => 4,
            Node::FumoState => 3,
            Node::DevDetailFwV => 256,
            Node::FumoDownloadAndUpdate => 0,
            _ => 4096,
        }
    }

    /// The node at `uri` (exact match; DM URIs are compared as given, TND §6.3).
    pub fn from_uri(uri: &str) -> Option<Node> {
        Self::ALL.into_iter().find(|n| n.uri() == uri)
    }

    /// The child of [`Node::CARD_ROOT`] with this name (`"Info"`, `"Servers"`, ...).
    pub fn card_child(name: &str) -> Option<Node> {
        Self::CARD.into_iter().find(|n| n.name() == name)
    }

    /// The path below the node's root ([`Node::CARD_ROOT`], [`Node::FUMO_ROOT`], or
    /// `./DevDetail`): `"Info"`, `"Ext/DeliveryToken"`, `"FwV"`.
    pub fn name(self) -> &'static str {
        let uri = self.uri();
        [Self::CARD_ROOT, Self::FUMO_ROOT, "./DevDetail"]
            .into_iter()
            .find_map(|root| uri.strip_prefix(root)?.strip_prefix('/'))
            .unwrap_or(uri)
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.uri())
    }
}

#[cfg(feature = "std")]
pub use values::ValueError;

#[cfg(feature = "std")]
mod values {
    use std::string::String;
    use std::vec::Vec;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::{Format, Node};

    /// Why a node value was refused.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    pub enum ValueError {
        /// The item's `Format` is not one TND defines.
        #[error("{node}: unknown Format")]
        UnknownFormat {
            /// The node.
            node: Node,
        },
        /// The item's `Format` cannot carry this node's value.
        #[error("{node}: a {expected} node does not take a {found} value")]
        WrongFormat {
            /// The node.
            node: Node,
            /// The Format the node declares.
            expected: Format,
            /// The Format the item carried.
            found: Format,
        },
        /// Text that must be base64 (RFC 4648 §4, padded) is not.
        #[error("{node}: the value is not base64")]
        BadBase64 {
            /// The node.
            node: Node,
        },
        /// A text value is not UTF-8, or an `int` value not a decimal number.
        #[error("{node}: the value is not valid {expected} text")]
        BadText {
            /// The node.
            node: Node,
            /// The Format the text should have.
            expected: Format,
        },
        /// The value is larger than the node allows ([`Node::max_len`]).
        #[error("{node}: the value is larger than {max} bytes")]
        TooLarge {
            /// The node.
            node: Node,
            /// The bound.
            max: usize,
        },
    }

    impl Node {
        /// The value's octets, given the `Format` of the item that carried it (`None`: the
        /// item named none, so the node's own Format applies, SyncML Meta Inf §5.1.2).
        ///
        /// For an octet node (`b64`/`bin`): `b64` is base64 text (ASCII white space, as XML
        /// line folding leaves it, is ignored; anything else that is not base64 is refused,
        /// there is no fallback to the raw text), `bin` is the octets (WBXML opaque data, or
        /// a value the receiving session already decoded), and `chr` must be base64 text too
        /// (a server that sends binary values as text). For a text node (`chr`, `int`):
        /// `chr`, `bin` or `b64` carrying UTF-8 text (an `int` node: a decimal number).
        pub fn decode_value(
            self,
            item_format: Option<&str>,
            data: &[u8],
        ) -> Result<Vec<u8>, ValueError> {
            let node = self;
            let declared = self.format();
            let found = match item_format {
                None => declared,
                Some(name) => Format::parse(name).ok_or(ValueError::UnknownFormat { node })?,
            };
            let wrong = || ValueError::WrongFormat {
                node,
                expected: declared,
                found,
            };
            // Base64 takes 4 characters per 3 octets; white space is bounded as well.
            let max = self.max_len();
            let max_text = max.div_ceil(3) * 4 + max / 8 + 8;
            let too_large = ValueError::TooLarge { node, max };
            let octets = match found {
                Format::Bin => {
                    if data.len() > max {
                        return Err(too_large);
                    }
                    data.to_vec()
                }
                Format::B64 | Format::Chr if declared.is_binary() || found == Format::B64 => {
                    if data.len() > max_text {
                        return Err(too_large);
                    }
                    let text: Vec<u8> = data
                        .iter()
                        .copied()
                        .filter(|b| !b.is_ascii_whitespace())
                        .collect();
                    STANDARD
                        .decode(text)
                        .map_err(|_| ValueError::BadBase64 { node })?
                }
                Format::Chr | Format::Int if matches!(declared, Format::Chr | Format::Int) => {
                    if data.len() > max {
                        return Err(too_large);
                    }
                    data.to_vec()
                }
                _ => return Err(wrong()),
            };
            if octets.len() > max {
                return Err(too_large);
            }
            match declared {
                Format::Bin | Format::B64 => Ok(octets),
                Format::Chr => match core::str::from_utf8(&octets) {
                    Ok(_) => Ok(octets),
                    Err(_) => Err(ValueError::BadText {
                        node,
                        expected: declared,
                    }),
                },
                Format::Int => {
                    let digits = octets.strip_prefix(b"-").unwrap_or(&octets);
                    if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) {
                        Ok(octets)
                    } else {
                        Err(ValueError::BadText {
                            node,
                            expected: declared,
                        })
                    }
                }
                _ => Err(wrong()),
            }
        }

        /// A text node's value as text ([`Node::decode_value`], then UTF-8).
        pub fn decode_text(
            self,
            item_format: Option<&str>,
            data: &[u8],
        ) -> Result<String, ValueError> {
            let octets = self.decode_value(item_format, data)?;
            String::from_utf8(octets).map_err(|_| ValueError::BadText {
                node: self,
                expected: Format::Chr,
            })
        }

        /// The `Data` to send `value` with, in the node's own Format: base64 text for a
        /// `b64` node, the octets as they are otherwise. Send it with [`Node::format`] and
        /// [`Node::mime_type`] in the item's `Meta`.
        pub fn encode_value(self, value: &[u8]) -> Vec<u8> {
            match self.format() {
                Format::B64 => STANDARD.encode(value).into_bytes(),
                _ => value.to_vec(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent() {
        for node in Node::ALL {
            assert_eq!(Node::from_uri(node.uri()), Some(node));
            assert!(node.uri().ends_with(node.name()), "{node}");
        }
        for node in Node::CARD {
            assert_eq!(Node::card_child(node.name()), Some(node));
            assert!(node.uri().starts_with(Node::CARD_ROOT));
        }
        assert_eq!(Node::FumoDeliveryToken.name(), "Ext/DeliveryToken");
        assert_eq!(Node::DevDetailFwV.name(), "FwV");
        assert_eq!(Node::from_uri("./SIMFOTA/Card/Nope"), None);
        assert_eq!(Node::card_child("DeliveryToken"), None);
        for f in Format::ALL {
            assert_eq!(Format::parse(f.as_str()), Some(f));
        }
        assert_eq!(Format::parse("B64"), None);
    }
}

#[cfg(test)]
#[cfg(feature = "std")]
mod value_tests {
    use super::*;

    #[test]
    fn b64_nodes_take_base64_or_octets_and_nothing_else() {
        let n = Node::CardInfo;
        assert_eq!(n.decode_value(Some("b64"), b"AQID").unwrap(), [1, 2, 3]);
        assert_eq!(n.decode_value(None, b"AQ\r\n ID").unwrap(), [1, 2, 3]);
        assert_eq!(n.decode_value(Some("bin"), b"AQID").unwrap(), b"AQID");
        assert_eq!(n.decode_value(Some("chr"), b"AQID").unwrap(), [1, 2, 3]);
        // Not base64: refused, never taken as raw octets.
        for bad in [&b"not base64!"[..], b"AQI", b"AQ=D", &[0xa1, 0x01, 0x02]] {
            assert_eq!(
                n.decode_value(Some("b64"), bad),
                Err(ValueError::BadBase64 { node: n })
            );
        }
        assert_eq!(
            n.decode_value(Some("chr"), &[0xa1, 0x01, 0x02]),
            Err(ValueError::BadBase64 { node: n })
        );
        assert_eq!(
            n.decode_value(Some("int"), b"12"),
            Err(ValueError::WrongFormat {
                node: n,
                expected: Format::B64,
                found: Format::Int
            })
        );
        assert_eq!(
            n.decode_value(Some("base64"), b"AQID"),
            Err(ValueError::UnknownFormat { node: n })
        );
    }

    #[test]
    fn text_nodes_take_text() {
        let n = Node::FumoPkgUrl;
        assert_eq!(
            n.decode_text(Some("chr"), b"http://h/p").unwrap(),
            "http://h/p"
        );
        assert_eq!(
            n.decode_text(Some("b64"), b"aHR0cDovL2gvcA==").unwrap(),
            "http://h/p"
        );
        assert_eq!(
            n.decode_value(Some("chr"), &[0xff]),
            Err(ValueError::BadText {
                node: n,
                expected: Format::Chr
            })
        );
        assert_eq!(
            Node::FumoState.decode_text(Some("int"), b"100").unwrap(),
            "100"
        );
        assert!(matches!(
            Node::FumoState.decode_value(Some("int"), b"1x"),
            Err(ValueError::BadText { .. })
        ));
        assert!(matches!(
            Node::FumoDownloadAndUpdate.decode_value(None, b""),
            Err(ValueError::WrongFormat { .. })
        ));
    }

    #[test]
    fn values_are_bounded() {
        let n = Node::CardNonce;
        assert_eq!(n.decode_value(Some("bin"), &[0; 16]).unwrap(), [0; 16]);
        assert_eq!(
            n.decode_value(Some("bin"), &[0; 17]),
            Err(ValueError::TooLarge { node: n, max: 16 })
        );
        let long = Node::CardNonce.encode_value(&[0; 17]);
        assert_eq!(
            n.decode_value(Some("b64"), &long),
            Err(ValueError::TooLarge { node: n, max: 16 })
        );
        let huge = std::vec![b'A'; 64 * 1024];
        assert!(matches!(
            Node::CardInfo.decode_value(Some("b64"), &huge),
            Err(ValueError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoding_follows_the_declared_format() {
        for node in Node::ALL {
            let value = b"1";
            let data = node.encode_value(value);
            if node.format() == Format::Node {
                continue;
            }
            assert_eq!(
                node.decode_value(Some(node.format().as_str()), &data)
                    .unwrap(),
                value
            );
        }
    }
}
