//! The client-side DM tree (OMA DM TND 1.2): interior and leaf nodes with formats and ACLs,
//! the standard objects `./DevInfo`, `./DevDetail` and `./DMAcc` (DM StdObj 1.2), and
//! subtrees served by pluggable handlers (the FUMO object, the card nodes of the device).
//!
//! Every operation names the server that asks; ACLs (TND §7.7.1) decide. A node without an
//! ACL of its own takes its parent's. `Add` is checked against the parent's ACL, everything
//! else against the node's.

use crate::codes::StatusCode;
use crate::fumo::Fumo;
use crate::uri::NodeUri;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A command an ACL grants (TND §7.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AclOp {
    /// `Add`.
    Add,
    /// `Delete`.
    Delete,
    /// `Exec`.
    Exec,
    /// `Get`.
    Get,
    /// `Replace`.
    Replace,
}

impl AclOp {
    fn name(self) -> &'static str {
        match self {
            AclOp::Add => "Add",
            AclOp::Delete => "Delete",
            AclOp::Exec => "Exec",
            AclOp::Get => "Get",
            AclOp::Replace => "Replace",
        }
    }

    fn parse(s: &str) -> Option<AclOp> {
        [
            AclOp::Add,
            AclOp::Delete,
            AclOp::Exec,
            AclOp::Get,
            AclOp::Replace,
        ]
        .into_iter()
        .find(|op| op.name() == s)
    }
}

/// Who an ACL entry grants: everyone (`*`) or named servers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principals {
    /// `*`.
    All,
    /// `srv1+srv2`.
    Servers(BTreeSet<String>),
}

/// An ACL such as `Get=*&Replace=srv1+srv2`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl(BTreeMap<AclOp, Principals>);

/// Why an ACL string does not parse.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("malformed ACL {0:?}")]
pub struct AclError(pub String);

impl Acl {
    /// Parses the TND §7.7.1 syntax; an empty string is an empty ACL (inherit).
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut map = BTreeMap::new();
        for entry in text.split('&').filter(|e| !e.is_empty()) {
            let (op, who) = entry
                .split_once('=')
                .ok_or_else(|| AclError(text.to_owned()))?;
            let op = AclOp::parse(op).ok_or_else(|| AclError(text.to_owned()))?;
            let principals = if who == "*" {
                Principals::All
            } else {
                let set: BTreeSet<String> = who.split('+').map(str::to_owned).collect();
                if set.iter().any(|s| s.is_empty() || s == "*") {
                    return Err(AclError(text.to_owned()));
                }
                Principals::Servers(set)
            };
            map.insert(op, principals);
        }
        Ok(Acl(map))
    }

    /// True if the ACL has no entries (the node inherits its parent's).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Does the ACL grant `op` to `server`?
    pub fn allows(&self, op: AclOp, server: &str) -> bool {
        match self.0.get(&op) {
            Some(Principals::All) => true,
            Some(Principals::Servers(s)) => s.contains(server),
            None => false,
        }
    }
}

impl fmt::Display for Acl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (op, who) in &self.0 {
            if !first {
                f.write_str("&")?;
            }
            first = false;
            write!(f, "{}=", op.name())?;
            match who {
                Principals::All => f.write_str("*")?,
                Principals::Servers(s) => {
                    f.write_str(&s.iter().cloned().collect::<Vec<_>>().join("+"))?
                }
            }
        }
        Ok(())
    }
}

/// A node's value as Get returns it and Add/Replace set it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeValue {
    /// The format (TND §7.7.6): chr, int, bool, bin, b64, xml, float, date, time, null, node.
    pub format: String,
    /// The MIME type (`Type`), if any.
    pub mime_type: Option<String>,
    /// The value.
    pub data: Vec<u8>,
}

impl NodeValue {
    /// A `chr` value.
    pub fn chr(text: impl Into<String>) -> NodeValue {
        NodeValue {
            format: "chr".into(),
            mime_type: Some("text/plain".into()),
            data: text.into().into_bytes(),
        }
    }

    /// An `int` value.
    pub fn int(value: i64) -> NodeValue {
        NodeValue {
            format: "int".into(),
            mime_type: Some("text/plain".into()),
            data: value.to_string().into_bytes(),
        }
    }

    /// A `bool` value.
    pub fn boolean(value: bool) -> NodeValue {
        NodeValue {
            format: "bool".into(),
            mime_type: Some("text/plain".into()),
            data: value.to_string().into_bytes(),
        }
    }

    /// A `bin` value.
    pub fn bin(data: Vec<u8>) -> NodeValue {
        NodeValue {
            format: "bin".into(),
            mime_type: Some("application/octet-stream".into()),
            data,
        }
    }

    /// An interior node's value: its child names separated by `/` (TND §7.7.6, format node).
    pub fn interior(children: &[String]) -> NodeValue {
        NodeValue {
            format: "node".into(),
            mime_type: None,
            data: children.join("/").into_bytes(),
        }
    }
}

/// What an asynchronous-capable Exec did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Done now: status 200.
    Done,
    /// Accepted: status 202; the result follows as a Generic Alert (DM Protocol §8.7).
    Accepted,
}

/// The arguments of an Exec.
#[derive(Clone, Copy, Debug)]
pub struct ExecRequest<'a> {
    /// The server asking.
    pub server_id: &'a str,
    /// The item `Data`.
    pub data: Option<&'a [u8]>,
    /// The `Correlator`.
    pub correlator: Option<&'a str>,
}

/// Serves a subtree of the DM tree (e.g. the device's card nodes under `./SIMFOTA`). The tree
/// has already checked the ACL of the mount point before calling; URIs are absolute. The
/// default methods refuse with 405.
pub trait SubtreeHandler: Send {
    /// Get a node.
    fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, StatusCode>;

    /// Replace a leaf.
    fn replace(&mut self, uri: &NodeUri, value: NodeValue) -> Result<(), StatusCode> {
        let _ = (uri, value);
        Err(StatusCode::COMMAND_NOT_ALLOWED)
    }

    /// Add a node (`None`: interior).
    fn add(&mut self, uri: &NodeUri, value: Option<NodeValue>) -> Result<(), StatusCode> {
        let _ = (uri, value);
        Err(StatusCode::COMMAND_NOT_ALLOWED)
    }

    /// Delete a node.
    fn delete(&mut self, uri: &NodeUri) -> Result<(), StatusCode> {
        let _ = uri;
        Err(StatusCode::COMMAND_NOT_ALLOWED)
    }

    /// Execute a node.
    fn exec(&mut self, uri: &NodeUri, request: ExecRequest<'_>) -> Result<ExecOutcome, StatusCode> {
        let _ = (uri, request);
        Err(StatusCode::COMMAND_NOT_ALLOWED)
    }
}

enum Mounted {
    Fumo(Box<Fumo>),
    Custom(Box<dyn SubtreeHandler>),
}

impl Mounted {
    fn handler(&mut self) -> &mut dyn SubtreeHandler {
        match self {
            Mounted::Fumo(f) => f.as_mut(),
            Mounted::Custom(h) => h.as_mut(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Interior,
    Leaf(NodeValue),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredNode {
    acl: Acl,
    kind: Kind,
}

/// `./DevInfo` (DM StdObj 1.2 §5.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevInfo {
    /// `DevId` (e.g. `IMEI:...`).
    pub dev_id: String,
    /// `Man`.
    pub manufacturer: String,
    /// `Mod`.
    pub model: String,
    /// `Lang`.
    pub lang: String,
}

/// `./DevDetail` (DM StdObj 1.2 §5.2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevDetail {
    /// `DevTyp`.
    pub dev_type: String,
    /// `OEM`.
    pub oem: String,
    /// `FwV`.
    pub fw_version: String,
    /// `SwV`.
    pub sw_version: String,
    /// `HwV`.
    pub hw_version: String,
}

/// One `./DMAcc/<x>` account (DM StdObj 1.2 §5.3, DMAcc MO).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmAccount {
    /// The node name `<x>`.
    pub node: String,
    /// `ServerID`.
    pub server_id: String,
    /// `Name`.
    pub name: String,
    /// `AppAddr/1/Addr`: the server URL.
    pub addr: String,
    /// `AAuthPref` (BASIC, DIGEST, HMAC).
    pub auth_pref: String,
    /// Server credentials (`AppAuth/Srv`, level SRVCRED).
    pub server_credentials: crate::auth::Credentials,
    /// Client credentials (`AppAuth/Cli`, level CLCRED).
    pub client_credentials: crate::auth::Credentials,
}

/// The DM tree.
pub struct DmTree {
    nodes: BTreeMap<NodeUri, StoredNode>,
    mounts: Vec<(NodeUri, Mounted)>,
}

impl fmt::Debug for DmTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmTree")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field(
                "mounts",
                &self.mounts.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why the tree could not be set up.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// A URI is invalid.
    #[error(transparent)]
    Uri(#[from] crate::uri::UriError),
    /// An ACL is invalid.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// The mount point or node already exists.
    #[error("{0} already exists")]
    Exists(NodeUri),
    /// The parent is missing or a leaf.
    #[error("the parent of {0} is missing or not an interior node")]
    NoParent(NodeUri),
}

fn uri(s: &str) -> Result<NodeUri, TreeError> {
    Ok(NodeUri::parse(s)?)
}

impl Default for DmTree {
    fn default() -> Self {
        DmTree::new()
    }
}

impl DmTree {
    /// A tree with only the root, ACL `Add=*&Get=*` (TND §7.7.1 default for the root).
    pub fn new() -> DmTree {
        let mut nodes = BTreeMap::new();
        let mut acl = BTreeMap::new();
        acl.insert(AclOp::Add, Principals::All);
        acl.insert(AclOp::Get, Principals::All);
        nodes.insert(
            NodeUri::root(),
            StoredNode {
                acl: Acl(acl),
                kind: Kind::Interior,
            },
        );
        DmTree {
            nodes,
            mounts: Vec::new(),
        }
    }

    /// A tree with `./DevInfo`, `./DevDetail` and an empty `./DMAcc`.
    pub fn with_standard_objects(info: &DevInfo, detail: &DevDetail) -> Result<DmTree, TreeError> {
        let mut t = DmTree::new();
        t.put_interior("./DevInfo", "Get=*")?;
        t.put_leaf("./DevInfo/DevId", "", NodeValue::chr(&info.dev_id))?;
        t.put_leaf("./DevInfo/Man", "", NodeValue::chr(&info.manufacturer))?;
        t.put_leaf("./DevInfo/Mod", "", NodeValue::chr(&info.model))?;
        t.put_leaf("./DevInfo/DmV", "", NodeValue::chr("1.2"))?;
        t.put_leaf("./DevInfo/Lang", "", NodeValue::chr(&info.lang))?;
        t.put_interior("./DevDetail", "Get=*")?;
        t.put_leaf("./DevDetail/DevTyp", "", NodeValue::chr(&detail.dev_type))?;
        t.put_leaf("./DevDetail/OEM", "", NodeValue::chr(&detail.oem))?;
        t.put_leaf("./DevDetail/FwV", "", NodeValue::chr(&detail.fw_version))?;
        t.put_leaf("./DevDetail/SwV", "", NodeValue::chr(&detail.sw_version))?;
        t.put_leaf("./DevDetail/HwV", "", NodeValue::chr(&detail.hw_version))?;
        t.put_leaf("./DevDetail/LrgObj", "", NodeValue::boolean(true))?;
        t.put_interior("./DevDetail/URI", "")?;
        t.put_leaf("./DevDetail/URI/MaxDepth", "", NodeValue::int(0))?;
        t.put_leaf(
            "./DevDetail/URI/MaxTotLen",
            "",
            NodeValue::int(NodeUri::MAX_LEN as i64),
        )?;
        t.put_leaf("./DevDetail/URI/MaxSegLen", "", NodeValue::int(0))?;
        t.put_interior("./DMAcc", "Get=*")?;
        Ok(t)
    }

    /// Adds `./DMAcc/<x>` for an account: only its own server may read or change it, and
    /// no one may read the secrets.
    pub fn add_account(&mut self, acc: &DmAccount) -> Result<(), TreeError> {
        let base = format!("./DMAcc/{}", acc.node);
        let own = format!("Get={0}&Replace={0}", acc.server_id);
        let secret = format!("Replace={}", acc.server_id);
        self.put_interior(&base, &own)?;
        self.put_leaf(&format!("{base}/AppID"), "", NodeValue::chr("w7"))?;
        self.put_leaf(
            &format!("{base}/ServerID"),
            "",
            NodeValue::chr(&acc.server_id),
        )?;
        self.put_leaf(&format!("{base}/Name"), "", NodeValue::chr(&acc.name))?;
        self.put_interior(&format!("{base}/AppAddr"), "")?;
        self.put_interior(&format!("{base}/AppAddr/1"), "")?;
        self.put_leaf(
            &format!("{base}/AppAddr/1/Addr"),
            "",
            NodeValue::chr(&acc.addr),
        )?;
        self.put_leaf(
            &format!("{base}/AppAddr/1/AddrType"),
            "",
            NodeValue::chr("URI"),
        )?;
        self.put_leaf(
            &format!("{base}/AAuthPref"),
            "",
            NodeValue::chr(&acc.auth_pref),
        )?;
        self.put_interior(&format!("{base}/AppAuth"), "")?;
        for (node, level, creds) in [
            ("Srv", "SRVCRED", &acc.server_credentials),
            ("Cli", "CLCRED", &acc.client_credentials),
        ] {
            let a = format!("{base}/AppAuth/{node}");
            self.put_interior(&a, "")?;
            self.put_leaf(&format!("{a}/AAuthLevel"), "", NodeValue::chr(level))?;
            self.put_leaf(
                &format!("{a}/AAuthType"),
                "",
                NodeValue::chr(&acc.auth_pref),
            )?;
            self.put_leaf(&format!("{a}/AAuthName"), "", NodeValue::chr(&creds.name))?;
            self.put_leaf(
                &format!("{a}/AAuthSecret"),
                &secret,
                NodeValue::chr(&creds.password),
            )?;
            self.put_leaf(
                &format!("{a}/AAuthData"),
                &secret,
                NodeValue::bin(Vec::new()),
            )?;
        }
        Ok(())
    }

    fn insert(&mut self, at: &str, acl: &str, kind: Kind) -> Result<(), TreeError> {
        let u = uri(at)?;
        if self.nodes.contains_key(&u) || self.mount_of(&u).is_some() {
            return Err(TreeError::Exists(u));
        }
        let parent = u.parent().ok_or_else(|| TreeError::Exists(u.clone()))?;
        if !matches!(
            self.nodes.get(&parent),
            Some(StoredNode {
                kind: Kind::Interior,
                ..
            })
        ) {
            return Err(TreeError::NoParent(u));
        }
        self.nodes.insert(
            u,
            StoredNode {
                acl: Acl::parse(acl)?,
                kind,
            },
        );
        Ok(())
    }

    /// Creates an interior node (set-up, no ACL check).
    pub fn put_interior(&mut self, at: &str, acl: &str) -> Result<(), TreeError> {
        self.insert(at, acl, Kind::Interior)
    }

    /// Creates a leaf (set-up, no ACL check).
    pub fn put_leaf(&mut self, at: &str, acl: &str, value: NodeValue) -> Result<(), TreeError> {
        self.insert(at, acl, Kind::Leaf(value))
    }

    /// Sets a leaf's value (the device's own writes, no ACL check).
    pub fn set_value(&mut self, at: &NodeUri, value: NodeValue) -> Result<(), StatusCode> {
        match self.nodes.get_mut(at) {
            Some(StoredNode {
                kind: kind @ Kind::Leaf(_),
                ..
            }) => {
                *kind = Kind::Leaf(value);
                Ok(())
            }
            Some(_) => Err(StatusCode::COMMAND_NOT_ALLOWED),
            None => Err(StatusCode::NOT_FOUND),
        }
    }

    /// Mounts a handler on `at`. The mount point is an interior node carrying `acl`, and the
    /// handler serves everything below it.
    pub fn mount(
        &mut self,
        at: &str,
        acl: &str,
        handler: Box<dyn SubtreeHandler>,
    ) -> Result<(), TreeError> {
        self.mount_inner(at, acl, Mounted::Custom(handler))
    }

    /// Mounts a FUMO object on `at` (e.g. `./FUMO`).
    pub fn mount_fumo(&mut self, at: &str, acl: &str, fumo: Fumo) -> Result<(), TreeError> {
        self.mount_inner(at, acl, Mounted::Fumo(Box::new(fumo)))
    }

    fn mount_inner(&mut self, at: &str, acl: &str, m: Mounted) -> Result<(), TreeError> {
        self.insert(at, acl, Kind::Interior)?;
        self.mounts.push((uri(at)?, m));
        Ok(())
    }

    /// The FUMO object mounted at `at`.
    pub fn fumo(&self, at: &NodeUri) -> Option<&Fumo> {
        self.mounts.iter().find_map(|(u, m)| match m {
            Mounted::Fumo(f) if u == at => Some(f.as_ref()),
            _ => None,
        })
    }

    /// The FUMO object mounted at `at`, mutable (the device reports progress through it).
    pub fn fumo_mut(&mut self, at: &NodeUri) -> Option<&mut Fumo> {
        self.mounts.iter_mut().find_map(|(u, m)| match m {
            Mounted::Fumo(f) if u == at => Some(f.as_mut()),
            _ => None,
        })
    }

    fn mount_of(&self, u: &NodeUri) -> Option<usize> {
        self.mounts
            .iter()
            .position(|(root, _)| u.is_within(root) && u != root)
    }

    /// The ACL in force at `u`: its own, or the nearest ancestor's that is not empty.
    fn effective_acl(&self, u: &NodeUri) -> Option<&Acl> {
        let mut cur = Some(u.clone());
        while let Some(c) = cur {
            if let Some(n) = self.nodes.get(&c)
                && !n.acl.is_empty()
            {
                return Some(&n.acl);
            }
            cur = c.parent();
        }
        None
    }

    fn check(&self, u: &NodeUri, op: AclOp, server: &str) -> Result<(), StatusCode> {
        match self.effective_acl(u) {
            Some(acl) if acl.allows(op, server) => Ok(()),
            _ => Err(StatusCode::PERMISSION_DENIED),
        }
    }

    fn children(&self, u: &NodeUri) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|k| k.parent().as_ref() == Some(u))
            .map(|k| k.name().to_owned())
            .collect()
    }

    /// `Get` on behalf of `server`.
    pub fn get(&mut self, u: &NodeUri, server: &str) -> Result<NodeValue, StatusCode> {
        if let Some(i) = self.mount_of(u) {
            self.check(u, AclOp::Get, server)?;
            return self.mounts[i].1.handler().get(u);
        }
        let node = self.nodes.get(u).ok_or(StatusCode::NOT_FOUND)?;
        self.check(u, AclOp::Get, server)?;
        match &node.kind {
            Kind::Leaf(v) => Ok(v.clone()),
            Kind::Interior => {
                // A mount point lists what its handler serves.
                if let Some((_, m)) = self.mounts.iter_mut().find(|(root, _)| root == u) {
                    return m.handler().get(u);
                }
                Ok(NodeValue::interior(&self.children(u)))
            }
        }
    }

    /// `Replace` on behalf of `server`.
    pub fn replace(
        &mut self,
        u: &NodeUri,
        server: &str,
        value: NodeValue,
    ) -> Result<(), StatusCode> {
        if let Some(i) = self.mount_of(u) {
            self.check(u, AclOp::Replace, server)?;
            return self.mounts[i].1.handler().replace(u, value);
        }
        let node = self.nodes.get(u).ok_or(StatusCode::NOT_FOUND)?;
        self.check(u, AclOp::Replace, server)?;
        match node.kind {
            Kind::Leaf(_) => self.set_value(u, value),
            Kind::Interior => Err(StatusCode::COMMAND_NOT_ALLOWED),
        }
    }

    /// `Add` on behalf of `server` (`None` adds an interior node).
    pub fn add(
        &mut self,
        u: &NodeUri,
        server: &str,
        value: Option<NodeValue>,
    ) -> Result<(), StatusCode> {
        if let Some(i) = self.mount_of(u) {
            self.check(u, AclOp::Add, server)?;
            return self.mounts[i].1.handler().add(u, value);
        }
        if self.nodes.contains_key(u) {
            return Err(StatusCode::ALREADY_EXISTS);
        }
        let parent = u.parent().ok_or(StatusCode::COMMAND_NOT_ALLOWED)?;
        match self.nodes.get(&parent) {
            Some(StoredNode {
                kind: Kind::Interior,
                ..
            }) => {}
            Some(_) => return Err(StatusCode::COMMAND_NOT_ALLOWED),
            None => return Err(StatusCode::NOT_FOUND),
        }
        self.check(&parent, AclOp::Add, server)?;
        let kind = match value {
            Some(v) => Kind::Leaf(v),
            None => Kind::Interior,
        };
        self.nodes.insert(
            u.clone(),
            StoredNode {
                acl: Acl::default(),
                kind,
            },
        );
        Ok(())
    }

    /// `Delete` on behalf of `server` (the node and everything below it).
    pub fn delete(&mut self, u: &NodeUri, server: &str) -> Result<(), StatusCode> {
        if let Some(i) = self.mount_of(u) {
            self.check(u, AclOp::Delete, server)?;
            return self.mounts[i].1.handler().delete(u);
        }
        if u.is_root() || self.mounts.iter().any(|(root, _)| root.is_within(u)) {
            return Err(StatusCode::COMMAND_NOT_ALLOWED);
        }
        if !self.nodes.contains_key(u) {
            return Err(StatusCode::NOT_FOUND);
        }
        self.check(u, AclOp::Delete, server)?;
        self.nodes.retain(|k, _| !k.is_within(u));
        Ok(())
    }

    /// `Exec` on behalf of `server`.
    pub fn exec(
        &mut self,
        u: &NodeUri,
        request: ExecRequest<'_>,
    ) -> Result<ExecOutcome, StatusCode> {
        if let Some(i) = self.mount_of(u) {
            self.check(u, AclOp::Exec, request.server_id)?;
            return self.mounts[i].1.handler().exec(u, request);
        }
        if !self.nodes.contains_key(u) {
            return Err(StatusCode::NOT_FOUND);
        }
        self.check(u, AclOp::Exec, request.server_id)?;
        Err(StatusCode::COMMAND_NOT_ALLOWED)
    }

    /// True if any item target of `commands` lies in a handler subtree (its changes cannot
    /// be rolled back by restoring a snapshot).
    pub(crate) fn has_mounts_under_targets(&self, commands: &[crate::model::Command]) -> bool {
        commands.iter().any(|c| {
            c.items().iter().any(|i| {
                i.target
                    .as_ref()
                    .and_then(|t| NodeUri::parse(&t.uri).ok())
                    .is_some_and(|u| self.mount_of(&u).is_some())
            })
        })
    }

    /// A copy of the stored (non-handler) nodes, for Atomic roll back.
    pub(crate) fn snapshot(&self) -> TreeSnapshot {
        TreeSnapshot(self.nodes.clone())
    }

    /// Restores a snapshot taken by [`DmTree::snapshot`].
    pub(crate) fn restore(&mut self, snap: TreeSnapshot) {
        self.nodes = snap.0;
    }
}

/// The stored nodes at one instant (handler subtrees are not included).
pub(crate) struct TreeSnapshot(BTreeMap<NodeUri, StoredNode>);

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> DmTree {
        let info = DevInfo {
            dev_id: "IMEI:490154203237518".into(),
            manufacturer: "Acme".into(),
            model: "P1".into(),
            lang: "en".into(),
        };
        let detail = DevDetail {
            dev_type: "phone".into(),
            oem: "Acme".into(),
            fw_version: "1.0".into(),
            sw_version: "1.0".into(),
            hw_version: "A".into(),
        };
        DmTree::with_standard_objects(&info, &detail).unwrap()
    }

    fn u(s: &str) -> NodeUri {
        NodeUri::parse(s).unwrap()
    }

    #[test]
    fn acl_parse_and_display() {
        let acl = Acl::parse("Get=*&Replace=srv1+srv2").unwrap();
        assert!(acl.allows(AclOp::Get, "anyone"));
        assert!(acl.allows(AclOp::Replace, "srv2"));
        assert!(!acl.allows(AclOp::Replace, "srv3"));
        assert!(!acl.allows(AclOp::Delete, "srv1"));
        assert_eq!(acl.to_string(), "Get=*&Replace=srv1+srv2");
        assert!(Acl::parse("Fly=*").is_err());
        assert!(Acl::parse("Get").is_err());
        assert!(Acl::parse("Get=a++b").is_err());
    }

    #[test]
    fn standard_objects_and_acls() {
        let mut t = tree();
        assert_eq!(t.get(&u("./DevInfo/DmV"), "srv").unwrap().data, b"1.2");
        assert_eq!(
            t.get(&u("./DevInfo"), "srv").unwrap().data,
            b"DevId/DmV/Lang/Man/Mod"
        );
        assert_eq!(
            t.replace(&u("./DevInfo/Mod"), "srv", NodeValue::chr("x")),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(t.get(&u("./Nope"), "srv"), Err(StatusCode::NOT_FOUND));
        // Add is checked on the parent: the root allows Add=*.
        t.add(&u("./Vendor"), "srv", None).unwrap();
        assert_eq!(
            t.add(&u("./Vendor"), "srv", None),
            Err(StatusCode::ALREADY_EXISTS)
        );
        // ./Vendor has no ACL of its own: it inherits Add=*&Get=* from the root, no Replace.
        t.add(&u("./Vendor/X"), "srv", Some(NodeValue::chr("1")))
            .unwrap();
        assert_eq!(
            t.replace(&u("./Vendor/X"), "srv", NodeValue::chr("2")),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(
            t.delete(&u("./Vendor"), "srv"),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(
            t.add(&u("./Missing/X"), "srv", None),
            Err(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn account_secrets_are_not_readable() {
        let mut t = tree();
        let acc = DmAccount {
            node: "srv1".into(),
            server_id: "srv1".into(),
            name: "Operator".into(),
            addr: "https://dm.example/".into(),
            auth_pref: "DIGEST".into(),
            server_credentials: crate::auth::Credentials::new("srv1", "ss"),
            client_credentials: crate::auth::Credentials::new("dev", "cs"),
        };
        t.add_account(&acc).unwrap();
        assert_eq!(
            t.get(&u("./DMAcc/srv1/ServerID"), "srv1").unwrap().data,
            b"srv1"
        );
        assert_eq!(
            t.get(&u("./DMAcc/srv1/ServerID"), "srv2"),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(
            t.get(&u("./DMAcc/srv1/AppAuth/Cli/AAuthSecret"), "srv1"),
            Err(StatusCode::PERMISSION_DENIED)
        );
        t.replace(
            &u("./DMAcc/srv1/AppAuth/Cli/AAuthSecret"),
            "srv1",
            NodeValue::chr("new"),
        )
        .unwrap();
    }

    struct Echo;
    impl SubtreeHandler for Echo {
        fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, StatusCode> {
            Ok(NodeValue::chr(uri.as_str()))
        }
    }

    #[test]
    fn handlers_serve_their_subtree_behind_the_mount_acl() {
        let mut t = tree();
        t.mount("./SIMFOTA", "Get=srv1", Box::new(Echo)).unwrap();
        assert_eq!(
            t.get(&u("./SIMFOTA/Log/Head"), "srv1").unwrap().data,
            b"./SIMFOTA/Log/Head"
        );
        assert_eq!(
            t.get(&u("./SIMFOTA/Log/Head"), "srv2"),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(
            t.replace(&u("./SIMFOTA/X"), "srv1", NodeValue::chr("x")),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert!(t.mount("./SIMFOTA", "", Box::new(Echo)).is_err());
    }
}
