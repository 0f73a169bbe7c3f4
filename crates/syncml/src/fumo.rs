//! The Firmware Update Management Object (OMA FUMO 1.0 §5-§8).
//!
//! Mounted on a node `<x>` (e.g. `./FUMO`) it serves:
//!
//! ```text
//! <x>/PkgName  <x>/PkgVersion                       chr, Get/Replace
//! <x>/Download             (Exec)  /PkgURL          chr, Get/Replace
//! <x>/Update               (Exec)  /PkgData         bin, Replace
//! <x>/DownloadAndUpdate    (Exec)  /PkgURL          chr, Get/Replace
//! <x>/State                                         int, Get (FUMO §7.1 values)
//! <x>/Ext/...                                       leaves added and replaced by the server
//! ```
//!
//! `Exec` on an operation node answers 202 and records a [`FumoJob`] (FUMO §6.2: the result
//! is asynchronous). The device takes the job, does the work, and calls [`Fumo::finish`],
//! which gives the Generic Alert 1226 (DM Protocol §8.7.3, FUMO §8.2) carrying the
//! `Correlator`, the alert type `org.openmobilealliance.dm.firmwareupdate.*` and the result.

use crate::codes::{AlertCode, FumoResult, FumoState, StatusCode, fumo_alert_type};
use crate::model::{Alert, CmdId, Data, Item, Location, Meta};
use crate::tree::{ExecOutcome, ExecRequest, NodeValue, SubtreeHandler};
use crate::uri::NodeUri;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The three executable FUMO operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FumoOperation {
    /// `Download`: fetch the package from `Download/PkgURL`.
    Download,
    /// `Update`: install the package already on the device.
    Update,
    /// `DownloadAndUpdate`: fetch from `DownloadAndUpdate/PkgURL` and install.
    DownloadAndUpdate,
}

impl FumoOperation {
    /// The node name.
    pub fn node(self) -> &'static str {
        match self {
            FumoOperation::Download => "Download",
            FumoOperation::Update => "Update",
            FumoOperation::DownloadAndUpdate => "DownloadAndUpdate",
        }
    }

    /// The Generic Alert type reporting its result (FUMO §8.2).
    pub fn alert_type(self) -> &'static str {
        match self {
            FumoOperation::Download => fumo_alert_type::DOWNLOAD,
            FumoOperation::Update => fumo_alert_type::UPDATE,
            FumoOperation::DownloadAndUpdate => fumo_alert_type::DOWNLOAD_AND_UPDATE,
        }
    }
}

/// An accepted Exec waiting for the device to carry it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FumoJob {
    /// Which operation.
    pub operation: FumoOperation,
    /// The Exec's `Correlator`, echoed in the Generic Alert.
    pub correlator: Option<String>,
    /// The server that asked.
    pub server_id: String,
    /// The package URL (Download, DownloadAndUpdate).
    pub pkg_url: Option<String>,
    /// The Exec item's data, if any.
    pub exec_data: Option<Vec<u8>>,
}

/// The FUMO object's state. Serializable, so the device can keep a pending job across reboots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fumo {
    root: NodeUri,
    /// `PkgName`.
    pub pkg_name: String,
    /// `PkgVersion`.
    pub pkg_version: String,
    /// `Download/PkgURL`.
    pub download_url: String,
    /// `Update/PkgData`.
    pub update_data: Vec<u8>,
    /// `DownloadAndUpdate/PkgURL`.
    pub download_and_update_url: String,
    /// `State`.
    pub state: FumoState,
    /// Leaves under `Ext` by relative path (the delivery token travels here).
    pub ext: BTreeMap<String, Vec<u8>>,
    /// The Format each `Ext` leaf was last written with (`bin` for a value that came as
    /// `b64`: the session decoded it), so its reader decodes by it instead of guessing.
    #[serde(default)]
    pub ext_format: BTreeMap<String, String>,
    job: Option<FumoJob>,
}

impl Fumo {
    /// A FUMO object for mounting at `root`, state Idle.
    pub fn new(root: NodeUri) -> Fumo {
        Fumo {
            root,
            pkg_name: String::new(),
            pkg_version: String::new(),
            download_url: String::new(),
            update_data: Vec::new(),
            download_and_update_url: String::new(),
            state: FumoState::IDLE,
            ext: BTreeMap::new(),
            ext_format: BTreeMap::new(),
            job: None,
        }
    }

    /// Where the object is mounted.
    pub fn root(&self) -> &NodeUri {
        &self.root
    }

    /// The accepted job not yet finished.
    pub fn job(&self) -> Option<&FumoJob> {
        self.job.as_ref()
    }

    /// Reports progress (FUMO §7.1 state machine).
    pub fn set_state(&mut self, state: FumoState) {
        self.state = state;
    }

    /// Ends the pending job with `result` and gives the Generic Alert to send (its CmdID is
    /// set by the session). `None` if no job is pending.
    pub fn finish(&mut self, result: FumoResult) -> Option<Alert> {
        let job = self.job.take()?;
        self.state = match (job.operation, result.is_success()) {
            (FumoOperation::Download, true) => FumoState::READY_TO_UPDATE,
            (FumoOperation::Download, false) => FumoState::DOWNLOAD_FAILED,
            (_, true) => FumoState::UPDATE_SUCCESSFUL_NO_DATA,
            (_, false) => FumoState::UPDATE_FAILED_NO_DATA,
        };
        let source = format!("{}/{}", self.root, job.operation.node());
        Some(Alert {
            cmd_id: CmdId(0),
            no_resp: false,
            cred: None,
            code: AlertCode::GENERIC_ALERT,
            correlator: job.correlator,
            items: vec![Item {
                source: Some(Location::new(source)),
                meta: Some(Meta {
                    format: Some("int".into()),
                    mime_type: Some(job.operation.alert_type().into()),
                    mark: Some(
                        if result.is_success() {
                            "informational"
                        } else {
                            "critical"
                        }
                        .into(),
                    ),
                    ..Meta::default()
                }),
                data: Some(Data::text(result.0.to_string())),
                ..Item::default()
            }],
        })
    }

    fn rel<'a>(&self, uri: &'a NodeUri) -> Result<&'a str, StatusCode> {
        uri.relative_to(&self.root).ok_or(StatusCode::NOT_FOUND)
    }

    fn text(value: &NodeValue) -> Result<String, StatusCode> {
        String::from_utf8(value.data.clone()).map_err(|_| StatusCode::UNSUPPORTED_MEDIA_TYPE)
    }
}

impl SubtreeHandler for Fumo {
    fn get(&mut self, uri: &NodeUri) -> Result<NodeValue, StatusCode> {
        Ok(match self.rel(uri)? {
            "" => NodeValue::interior(
                &[
                    "PkgName",
                    "PkgVersion",
                    "Download",
                    "Update",
                    "DownloadAndUpdate",
                    "State",
                    "Ext",
                ]
                .map(String::from),
            ),
            "PkgName" => NodeValue::chr(&self.pkg_name),
            "PkgVersion" => NodeValue::chr(&self.pkg_version),
            "Download" | "DownloadAndUpdate" => NodeValue::interior(&["PkgURL".to_owned()]),
            "Update" => NodeValue::interior(&["PkgData".to_owned()]),
            "Download/PkgURL" => NodeValue::chr(&self.download_url),
            "DownloadAndUpdate/PkgURL" => NodeValue::chr(&self.download_and_update_url),
            // FUMO §5: PkgData is write-only.
            "Update/PkgData" => return Err(StatusCode::COMMAND_NOT_ALLOWED),
            "State" => NodeValue::int(i64::from(self.state.0)),
            "Ext" => NodeValue::interior(&self.ext.keys().cloned().collect::<Vec<_>>()),
            other => match other.strip_prefix("Ext/").and_then(|k| self.ext.get(k)) {
                Some(v) => NodeValue::bin(v.clone()),
                None => return Err(StatusCode::NOT_FOUND),
            },
        })
    }

    fn replace(&mut self, uri: &NodeUri, value: NodeValue) -> Result<(), StatusCode> {
        match self.rel(uri)? {
            "PkgName" => self.pkg_name = Self::text(&value)?,
            "PkgVersion" => self.pkg_version = Self::text(&value)?,
            "Download/PkgURL" => self.download_url = Self::text(&value)?,
            "DownloadAndUpdate/PkgURL" => self.download_and_update_url = Self::text(&value)?,
            "Update/PkgData" => self.update_data = value.data,
            other => match other.strip_prefix("Ext/") {
                Some(k) if self.ext.contains_key(k) => {
                    self.ext_format.insert(k.to_owned(), value.format);
                    self.ext.insert(k.to_owned(), value.data);
                }
                Some(_) => return Err(StatusCode::NOT_FOUND),
                None => return Err(StatusCode::COMMAND_NOT_ALLOWED),
            },
        }
        Ok(())
    }

    fn add(&mut self, uri: &NodeUri, value: Option<NodeValue>) -> Result<(), StatusCode> {
        let rel = self.rel(uri)?;
        match (rel.strip_prefix("Ext/"), value) {
            (Some(k), Some(v)) => {
                if self.ext.contains_key(k) {
                    return Err(StatusCode::ALREADY_EXISTS);
                }
                self.ext_format.insert(k.to_owned(), v.format);
                self.ext.insert(k.to_owned(), v.data);
                Ok(())
            }
            _ => Err(StatusCode::COMMAND_NOT_ALLOWED),
        }
    }

    fn delete(&mut self, uri: &NodeUri) -> Result<(), StatusCode> {
        match self.rel(uri)?.strip_prefix("Ext/") {
            Some(k) => {
                self.ext_format.remove(k);
                self.ext.remove(k).map(|_| ()).ok_or(StatusCode::NOT_FOUND)
            }
            None => Err(StatusCode::COMMAND_NOT_ALLOWED),
        }
    }

    fn exec(&mut self, uri: &NodeUri, request: ExecRequest<'_>) -> Result<ExecOutcome, StatusCode> {
        let (operation, pkg_url, state) = match self.rel(uri)? {
            "Download" => (
                FumoOperation::Download,
                Some(self.download_url.clone()),
                FumoState::DOWNLOAD_PROGRESSING,
            ),
            "Update" => (FumoOperation::Update, None, FumoState::UPDATE_PROGRESSING),
            "DownloadAndUpdate" => (
                FumoOperation::DownloadAndUpdate,
                Some(self.download_and_update_url.clone()),
                FumoState::DOWNLOAD_PROGRESSING,
            ),
            _ => return Err(StatusCode::COMMAND_NOT_ALLOWED),
        };
        // One operation at a time: a second Exec while one runs fails (FUMO §6.2).
        if self.job.is_some() {
            return Err(StatusCode::COMMAND_FAILED);
        }
        self.job = Some(FumoJob {
            operation,
            correlator: request.correlator.map(str::to_owned),
            server_id: request.server_id.to_owned(),
            pkg_url,
            exec_data: request.data.map(<[u8]>::to_vec),
        });
        self.state = state;
        Ok(ExecOutcome::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::DmTree;

    #[test]
    fn exec_accepts_and_finish_builds_the_generic_alert() {
        let root = NodeUri::parse("./FUMO").unwrap();
        let mut t = DmTree::new();
        t.mount_fumo(
            "./FUMO",
            "Get=*&Replace=srv1&Exec=srv1&Add=srv1",
            Fumo::new(root.clone()),
        )
        .unwrap();
        let url = NodeUri::parse("./FUMO/DownloadAndUpdate/PkgURL").unwrap();
        t.replace(&url, "srv1", NodeValue::chr("https://pkg.example/p1"))
            .unwrap();
        t.add(
            &NodeUri::parse("./FUMO/Ext/Token").unwrap(),
            "srv1",
            Some(NodeValue::bin(vec![1, 2])),
        )
        .unwrap();
        let dau = NodeUri::parse("./FUMO/DownloadAndUpdate").unwrap();
        let req = ExecRequest {
            server_id: "srv1",
            data: None,
            correlator: Some("c-42"),
        };
        assert_eq!(
            t.exec(
                &dau,
                ExecRequest {
                    server_id: "srv2",
                    ..req
                }
            ),
            Err(StatusCode::PERMISSION_DENIED)
        );
        assert_eq!(t.exec(&dau, req), Ok(ExecOutcome::Accepted));
        assert_eq!(t.exec(&dau, req), Err(StatusCode::COMMAND_FAILED));
        let fumo = t.fumo_mut(&root).unwrap();
        assert_eq!(fumo.state, FumoState::DOWNLOAD_PROGRESSING);
        assert_eq!(
            fumo.job().unwrap().pkg_url.as_deref(),
            Some("https://pkg.example/p1")
        );
        assert_eq!(fumo.ext.get("Token"), Some(&vec![1, 2]));
        let alert = fumo.finish(FumoResult::CORRUPTED_PACKAGE).unwrap();
        assert_eq!(alert.code, AlertCode::GENERIC_ALERT);
        assert_eq!(alert.correlator.as_deref(), Some("c-42"));
        let item = &alert.items[0];
        assert_eq!(
            item.source.as_ref().unwrap().uri,
            "./FUMO/DownloadAndUpdate"
        );
        assert_eq!(
            item.meta.as_ref().unwrap().mime_type.as_deref(),
            Some(fumo_alert_type::DOWNLOAD_AND_UPDATE)
        );
        assert_eq!(item.data.as_ref().unwrap().as_text(), Some("402"));
        assert_eq!(fumo.state, FumoState::UPDATE_FAILED_NO_DATA);
        assert!(fumo.finish(FumoResult::SUCCESSFUL).is_none());
        assert_eq!(
            t.get(&NodeUri::parse("./FUMO/Update/PkgData").unwrap(), "srv1"),
            Err(StatusCode::COMMAND_NOT_ALLOWED)
        );
    }
}
