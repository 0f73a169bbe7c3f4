//! The persistent FUMO job: one `DownloadAndUpdate` from the server's Exec to the Generic Alert.
//!
//! The job lives in `<data>/fumo.json`, rewritten atomically at every stage change, so an agent
//! killed at any point finds it again and continues from the last stage it reached. Each stage's
//! action is safe to repeat (the download resumes, the slot install rewrites the inactive slot,
//! the boot check reads the boot-control record), and the two card steps that must not run twice
//! (authorization and the result report) are checked against the card's own pending-update
//! record before they are repeated. The `State` node (OMA-TS-DM-FUMO-V1_0 §5.3.x, state values
//! in §6.1) is derived from the stage.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, Faults};

/// FUMO 1.0 `State` values (OMA-TS-DM-FUMO-V1_0 §6.1, "State" node values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FumoState {
    /// 10: no update in progress.
    Idle = 10,
    /// 20: the download failed.
    DownloadFailed = 20,
    /// 30: download in progress.
    DownloadProgressing = 30,
    /// 40: download complete.
    DownloadComplete = 40,
    /// 50: ready to update.
    ReadyToUpdate = 50,
    /// 60: update in progress.
    UpdateProgressing = 60,
    /// 70: update failed, the package is still here.
    UpdateFailedHaveData = 70,
    /// 80: update failed, no package kept.
    UpdateFailedNoData = 80,
    /// 90: update successful, the package is still here.
    UpdateSuccessfulHaveData = 90,
    /// 100: update successful, no package kept.
    UpdateSuccessfulNoData = 100,
}

impl FumoState {
    /// The value the `State` node holds.
    pub fn value(self) -> u8 {
        self as u8
    }
}

/// Base64 for byte fields in the JSON job file.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }

    pub mod opt {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(b) => s.serialize_some(&STANDARD.encode(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            let s = Option::<String>::deserialize(d)?;
            s.map(|s| STANDARD.decode(s).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}

/// What the agent took from the SUIT manifest (unverified by the agent: the card verifies it;
/// the agent uses these facts only to fetch and to check what it installs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageFacts {
    /// Where the payload is.
    pub payload_url: String,
    /// Signed image size (of the installed image).
    pub image_size: u64,
    /// Signed image SHA-256, hex.
    pub image_sha256: String,
    /// Release name.
    pub name: String,
    /// Release version (becomes DevDetail/FwV).
    pub version: String,
    /// Anti-rollback sequence number.
    pub sequence: u64,
    /// For a delta: the SHA-256 (hex) of the image it applies to.
    pub precursor_sha256: Option<String>,
    /// For a delta: the signed SHA-256 (hex) of the delta itself (SUIT parameter -258).
    #[serde(default)]
    pub payload_sha256: Option<String>,
    /// For a delta: the signed size of the delta itself (SUIT parameter -259).
    #[serde(default)]
    pub payload_size: Option<u64>,
    /// The envelope member that carries the payload (`"#delta"`, `"#image"`) when the manifest
    /// names one (draft-ietf-suit-manifest §7.5); `payload_url` is then where a server that
    /// severed the envelope hosts it.
    #[serde(default)]
    pub integrated: Option<String>,
}

/// How far the job got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// The Exec was accepted (202); the card has not authorized yet.
    Accepted,
    /// The card authorized the update (it keeps the authorization persistently).
    Authorized {
        /// Package facts.
        package: PackageFacts,
    },
    /// The payload is complete on disk.
    Downloaded {
        /// Package facts.
        package: PackageFacts,
        /// The payload file.
        payload: PathBuf,
        /// Its SHA-256, hex.
        payload_sha256: String,
        /// Its size.
        payload_size: u64,
    },
    /// The card accepted the payload's integrity.
    Verified {
        /// Package facts.
        package: PackageFacts,
        /// The payload file.
        payload: PathBuf,
    },
    /// The new image is in the inactive slot, waiting for its boot check.
    Installed {
        /// Package facts.
        package: PackageFacts,
    },
    /// The outcome is decided; the card has not been told yet.
    Finished {
        /// FUMO result code.
        result: u16,
        /// What the user and the server are told.
        message: String,
        /// Whether the card holds an authorization this result must end.
        report_to_card: bool,
    },
    /// The card has the result (and gave a receipt); the server has not been told yet.
    Reported {
        /// FUMO result code.
        result: u16,
        /// What the user and the server are told.
        message: String,
        /// The card-signed receipt (COSE_Sign1), if the card gave one.
        #[serde(with = "b64::opt", default)]
        receipt: Option<Vec<u8>>,
    },
}

/// One FUMO DownloadAndUpdate job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The server that started it (its ServerID).
    pub server_id: String,
    /// The Exec's Correlator, echoed in the Generic Alert (DM Protocol 1.2 §8.7.1).
    pub correlator: Option<String>,
    /// DownloadAndUpdate/PkgURL: the SUIT envelope's URL.
    pub envelope_url: String,
    /// Ext/DeliveryToken: the server's CWT.
    #[serde(with = "b64")]
    pub token: Vec<u8>,
    /// The update id (the token's `cti`), once known.
    #[serde(with = "b64::opt", default)]
    pub update_id: Option<Vec<u8>>,
    /// The envelope, once fetched.
    #[serde(with = "b64::opt", default)]
    pub envelope: Option<Vec<u8>>,
    /// How far it got.
    pub stage: Stage,
    /// The FUMO operation node the Exec named (`DownloadAndUpdate`; the others are answered
    /// with result 408, not implemented).
    #[serde(default = "default_operation")]
    pub operation: String,
}

fn default_operation() -> String {
    "DownloadAndUpdate".into()
}

impl Job {
    /// A new job in stage [`Stage::Accepted`].
    pub fn new(server_id: &str, correlator: Option<&str>, envelope_url: &str, token: &[u8]) -> Job {
        Job {
            server_id: server_id.to_owned(),
            correlator: correlator.map(str::to_owned),
            envelope_url: envelope_url.to_owned(),
            token: token.to_vec(),
            update_id: None,
            envelope: None,
            stage: Stage::Accepted,
            operation: default_operation(),
        }
    }

    /// The operation node the Generic Alert names as its source.
    pub fn operation_node(&self) -> &str {
        &self.operation
    }

    /// The FUMO `State` this job shows (OMA-TS-DM-FUMO-V1_0 §6.1; DownloadAndUpdate moves
    /// 30 → 50 → 60 → 100 / 80, a download failure ends in 20).
    pub fn fumo_state(&self) -> FumoState {
        match &self.stage {
            Stage::Accepted | Stage::Authorized { .. } => FumoState::DownloadProgressing,
            Stage::Downloaded { .. } | Stage::Verified { .. } => FumoState::ReadyToUpdate,
            Stage::Installed { .. } => FumoState::UpdateProgressing,
            Stage::Finished { result, .. } | Stage::Reported { result, .. } => match *result {
                200..=299 => FumoState::UpdateSuccessfulNoData,
                411 | 412 | 501 | 503 => FumoState::DownloadFailed,
                _ => FumoState::UpdateFailedNoData,
            },
        }
    }

    /// The package facts, in the stages that have them.
    pub fn package(&self) -> Option<&PackageFacts> {
        match &self.stage {
            Stage::Authorized { package }
            | Stage::Downloaded { package, .. }
            | Stage::Verified { package, .. }
            | Stage::Installed { package } => Some(package),
            _ => None,
        }
    }
}

/// Why the job file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JobStoreError {
    /// Reading or writing failed.
    #[error("FUMO job file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file does not parse (it is kept, renamed, for inspection).
    #[error("FUMO job file {path} is damaged ({message}); moved aside to {moved_to}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
        /// Where it went.
        moved_to: PathBuf,
    },
}

/// The job file.
#[derive(Debug, Clone)]
pub struct JobStore {
    path: PathBuf,
    faults: Faults,
}

impl JobStore {
    /// The job file at `path` (normally `DataDir::fumo_state()`).
    pub fn new(path: &Path) -> JobStore {
        JobStore {
            path: path.to_owned(),
            faults: Faults::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_faults(mut self, faults: Faults) -> JobStore {
        self.faults = faults;
        self
    }

    /// The current job, if any.
    pub fn load(&self) -> Result<Option<Job>, JobStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JobStoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(job) => Ok(Some(job)),
            Err(e) => {
                let moved_to = self.path.with_extension("json.damaged");
                std::fs::rename(&self.path, &moved_to).map_err(|source| JobStoreError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                Err(JobStoreError::Damaged {
                    path: self.path.clone(),
                    message: e.to_string(),
                    moved_to,
                })
            }
        }
    }

    /// Persists the job (atomically).
    pub fn save(&self, job: &Job) -> Result<(), JobStoreError> {
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| JobStoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| JobStoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        fsutil::write_atomic(&self.path, &bytes, &self.faults).map_err(|source| JobStoreError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Removes the job (the server acknowledged its Generic Alert): FUMO state back to Idle.
    pub fn clear(&self) -> Result<(), JobStoreError> {
        fsutil::remove_if_exists(&self.path).map_err(|source| JobStoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent() {
            fsutil::sync_dir(dir).map_err(|source| JobStoreError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> PackageFacts {
        PackageFacts {
            payload_url: "http://s/packages/1/payload".into(),
            image_size: 10,
            image_sha256: "00".repeat(32),
            name: "fw".into(),
            version: "2.0".into(),
            sequence: 2,
            precursor_sha256: None,
            payload_sha256: None,
            payload_size: None,
            integrated: None,
        }
    }

    #[test]
    fn the_job_survives_a_round_trip_and_a_cut_at_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fumo.json");
        let store = JobStore::new(&path);
        assert_eq!(store.load().unwrap(), None);
        let mut job = Job::new("srv", Some("corr-1"), "http://s/e", b"\xd2token");
        store.save(&job).unwrap();
        assert_eq!(store.load().unwrap().as_ref(), Some(&job));
        let before = job.clone();
        job.stage = Stage::Authorized { package: facts() };
        for cut in 0..5 {
            let res = JobStore::new(&path).with_faults(Faults::at(cut)).save(&job);
            assert!(res.is_err());
            let now = store.load().unwrap().unwrap();
            assert!(now == before || now == job, "cut {cut}: {now:?}");
        }
        store.save(&job).unwrap();
        assert_eq!(
            store.load().unwrap().unwrap().fumo_state(),
            FumoState::DownloadProgressing
        );
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_damaged_job_file_is_moved_aside_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fumo.json");
        std::fs::write(&path, b"{\"server_id\": 3").unwrap();
        let err = JobStore::new(&path).load().unwrap_err();
        assert!(matches!(err, JobStoreError::Damaged { .. }), "{err}");
        assert!(dir.path().join("fumo.json.damaged").exists());
        assert_eq!(JobStore::new(&path).load().unwrap(), None);
    }

    #[test]
    fn states_follow_fumo() {
        let mut job = Job::new("srv", None, "u", b"t");
        assert_eq!(job.fumo_state().value(), 30);
        job.stage = Stage::Installed { package: facts() };
        assert_eq!(job.fumo_state().value(), 60);
        job.stage = Stage::Finished {
            result: 200,
            message: String::new(),
            report_to_card: true,
        };
        assert_eq!(job.fumo_state().value(), 100);
        job.stage = Stage::Reported {
            result: 503,
            message: String::new(),
            receipt: None,
        };
        assert_eq!(job.fumo_state().value(), 20);
        job.stage = Stage::Reported {
            result: 410,
            message: String::new(),
            receipt: Some(vec![1]),
        };
        assert_eq!(job.fumo_state().value(), 80);
    }
}
