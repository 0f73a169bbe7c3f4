//! Validated DM tree node URIs (OMA DM TND 1.2 §6: URI rules).

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// Why a string is not a node URI.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UriError {
    /// The URI is empty.
    #[error("empty node URI")]
    Empty,
    /// The URI is longer than the limit.
    #[error("node URI of {0} bytes is too long")]
    TooLong(usize),
    /// An empty segment (`a//b`) or a trailing slash (TND §6: "must not end with /").
    #[error("node URI {0:?} has an empty segment or a trailing slash")]
    EmptySegment(String),
    /// `.` or `..` used inside the path (TND §6 allows `.` only as the root prefix).
    #[error("node URI {0:?} uses . or .. inside the path")]
    DotSegment(String),
    /// A query (`?list=`, `?prop=`) where a plain node URI is required.
    #[error("node URI {0:?} carries a query")]
    Query(String),
}

/// An absolute DM tree node URI, normalised to start at the root `.` (`./DevInfo/Mod`).
/// Relative URIs (`DevInfo/Mod`) are accepted and made absolute, as TND §6 allows.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeUri(String);

impl NodeUri {
    /// Default bound on the length (bytes) checked by [`NodeUri::parse`].
    pub const MAX_LEN: usize = 1024;

    /// The root node `.`.
    pub fn root() -> NodeUri {
        NodeUri(".".to_owned())
    }

    /// Checks and normalises a URI.
    pub fn parse(text: &str) -> Result<NodeUri, UriError> {
        if text.is_empty() {
            return Err(UriError::Empty);
        }
        if text.len() > Self::MAX_LEN {
            return Err(UriError::TooLong(text.len()));
        }
        if text.contains('?') {
            return Err(UriError::Query(text.to_owned()));
        }
        if text == "." || text == "./" {
            return Ok(NodeUri::root());
        }
        let path = text.strip_prefix("./").unwrap_or(text);
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err(UriError::EmptySegment(text.to_owned()));
            }
            if segment == "." || segment == ".." {
                return Err(UriError::DotSegment(text.to_owned()));
            }
        }
        Ok(NodeUri(format!("./{path}")))
    }

    /// The URI as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root `.`.
    pub fn is_root(&self) -> bool {
        self.0 == "."
    }

    /// The segments below the root (`./A/B` gives `A`, `B`).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0
            .strip_prefix("./")
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
    }

    /// The last segment (the node name); `.` for the root.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(".")
    }

    /// The parent node; `None` for the root.
    pub fn parent(&self) -> Option<NodeUri> {
        if self.is_root() {
            return None;
        }
        let (head, _) = self.0.rsplit_once('/')?;
        Some(NodeUri(head.to_owned()))
    }

    /// The child `name` of this node.
    pub fn child(&self, name: &str) -> Result<NodeUri, UriError> {
        NodeUri::parse(&format!("{}/{}", self.0, name))
    }

    /// True if `self` is `ancestor` or lies below it.
    pub fn is_within(&self, ancestor: &NodeUri) -> bool {
        ancestor.is_root()
            || self.0 == ancestor.0
            || (self.0.starts_with(&ancestor.0)
                && self.0.as_bytes().get(ancestor.0.len()) == Some(&b'/'))
    }

    /// The path of `self` below `ancestor` (`None` if not within it; empty for itself).
    pub fn relative_to(&self, ancestor: &NodeUri) -> Option<&str> {
        if !self.is_within(ancestor) {
            return None;
        }
        if self.0 == ancestor.0 {
            return Some("");
        }
        if ancestor.is_root() {
            return self.0.strip_prefix("./");
        }
        self.0.get(ancestor.0.len() + 1..)
    }
}

impl TryFrom<String> for NodeUri {
    type Error = UriError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        NodeUri::parse(&value)
    }
}

impl From<NodeUri> for String {
    fn from(value: NodeUri) -> Self {
        value.0
    }
}

impl fmt::Display for NodeUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeUri({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            NodeUri::parse("DevInfo/Mod").unwrap().as_str(),
            "./DevInfo/Mod"
        );
        assert_eq!(NodeUri::parse("./DevInfo").unwrap().as_str(), "./DevInfo");
        assert!(NodeUri::parse(".").unwrap().is_root());
        assert_eq!(
            NodeUri::parse("a//b"),
            Err(UriError::EmptySegment("a//b".into()))
        );
        assert_eq!(
            NodeUri::parse("./a/"),
            Err(UriError::EmptySegment("./a/".into()))
        );
        assert_eq!(
            NodeUri::parse("./a/../b"),
            Err(UriError::DotSegment("./a/../b".into()))
        );
        assert!(matches!(
            NodeUri::parse("./a?list=Struct"),
            Err(UriError::Query(_))
        ));
        assert_eq!(NodeUri::parse(""), Err(UriError::Empty));
    }

    #[test]
    fn family_relations() {
        let a = NodeUri::parse("./FUMO/Download/PkgURL").unwrap();
        let fumo = NodeUri::parse("./FUMO").unwrap();
        assert!(a.is_within(&fumo));
        assert!(!NodeUri::parse("./FUMOX").unwrap().is_within(&fumo));
        assert_eq!(a.relative_to(&fumo), Some("Download/PkgURL"));
        assert_eq!(a.parent().unwrap().as_str(), "./FUMO/Download");
        assert_eq!(a.name(), "PkgURL");
        assert_eq!(fumo.parent().unwrap(), NodeUri::root());
        assert_eq!(
            a.segments().collect::<Vec<_>>(),
            ["FUMO", "Download", "PkgURL"]
        );
    }
}
