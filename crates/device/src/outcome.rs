//! Every way an update can end, and the FUMO result code each one reports.
//!
//! Result codes are OMA-TS-DM-FUMO-V1_0 §6.3 ("Result Codes"). `docs/dm-tree.md` has the same
//! mapping as one table; a test below keeps the two in step.

use simfota_wire::FumoResult;

/// FUMO 1.0 result codes the agent reports (OMA-TS-DM-FUMO-V1_0 §6.3).
pub mod code {
    use simfota_wire::FumoResult;

    /// 200 Successful.
    pub const SUCCESSFUL: FumoResult = FumoResult(200);
    /// 401 User cancelled.
    pub const USER_CANCELLED: FumoResult = FumoResult(401);
    /// 402 Corrupted firmware update package.
    pub const CORRUPTED_PACKAGE: FumoResult = FumoResult(402);
    /// 403 Firmware update package: device mismatch.
    pub const DEVICE_MISMATCH: FumoResult = FumoResult(403);
    /// 404 Failed firmware update package validation.
    pub const VALIDATION_FAILED: FumoResult = FumoResult(404);
    /// 405 Firmware update package not acceptable.
    pub const NOT_ACCEPTABLE: FumoResult = FumoResult(405);
    /// 408 Not implemented.
    pub const NOT_IMPLEMENTED: FumoResult = FumoResult(408);
    /// 410 Firmware update failed.
    pub const UPDATE_FAILED: FumoResult = FumoResult(410);
    /// 411 Malformed or bad URL.
    pub const BAD_URL: FumoResult = FumoResult(411);
    /// 501 Download fails: device out of memory.
    pub const DOWNLOAD_OUT_OF_MEMORY: FumoResult = FumoResult(501);
    /// 502 Firmware update fails: device out of memory.
    pub const UPDATE_OUT_OF_MEMORY: FumoResult = FumoResult(502);
    /// 503 Download fails due to network issues (also used when the card is unavailable,
    /// per the DM contract: the update could not run, nothing about the package is wrong).
    pub const UNAVAILABLE: FumoResult = FumoResult(503);
}

/// Why an update did not end with success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The user said no (or gave no valid PIN) to an update from an unauthorized server.
    #[error("you declined the update offered by server `{server}`")]
    UserDeclined {
        /// The server that asked.
        server: String,
    },
    /// Consent needed the card PIN and none that the card accepted was given: a wrong PIN,
    /// a blocked PIN, or no way to ask. Not a "no" from the user; reported as cancelled.
    #[error("the update offered by server `{server}` was not confirmed: {why}")]
    NotConfirmed {
        /// The server that asked.
        server: String,
        /// What went wrong ("the card PIN was wrong (2 tries left)").
        why: String,
    },
    /// The card refused the update; the card's reason decides the code.
    #[error("the card refused the update: {reason}")]
    CardRefused {
        /// The card's reason, as the card states it.
        reason: String,
        /// The card's FUMO code for it.
        fumo: u16,
    },
    /// The package or payload is damaged (digest, size, undecodable envelope, delta that does
    /// not rebuild the signed image).
    #[error("the update package is corrupt: {0}")]
    Corrupt(String),
    /// The package is for another model, or a delta for another base image.
    #[error("the update package is not for this device: {0}")]
    WrongDevice(String),
    /// The package cannot be authenticated (signature or originator).
    #[error("the update package failed validation: {0}")]
    Invalid(String),
    /// The package URL is malformed or names nothing on the server.
    #[error("the package address is unusable: {0}")]
    BadUrl(String),
    /// The package server could not be reached or kept breaking the download.
    #[error("the package server is unavailable: {0} (the partial download is kept)")]
    ServerUnavailable(String),
    /// The card was removed or stopped answering.
    #[error("the card is unavailable: {0} (insert it again; nothing was installed)")]
    CardUnavailable(String),
    /// Not enough space for the download.
    #[error("not enough storage for the download: {0}")]
    DownloadNoSpace(String),
    /// Not enough space to install.
    #[error("not enough storage to install: {0}")]
    InstallNoSpace(String),
    /// Installing failed, or the new firmware failed its boot check and was rolled back.
    #[error("the update failed: {0} (the previous firmware is running)")]
    InstallFailed(String),
}

impl Failure {
    /// The FUMO result code this failure reports.
    pub fn fumo_result(&self) -> FumoResult {
        match self {
            Failure::UserDeclined { .. } | Failure::NotConfirmed { .. } => code::USER_CANCELLED,
            Failure::CardRefused { fumo, .. } => FumoResult(*fumo),
            Failure::Corrupt(_) => code::CORRUPTED_PACKAGE,
            Failure::WrongDevice(_) => code::DEVICE_MISMATCH,
            Failure::Invalid(_) => code::VALIDATION_FAILED,
            Failure::BadUrl(_) => code::BAD_URL,
            Failure::ServerUnavailable(_) | Failure::CardUnavailable(_) => code::UNAVAILABLE,
            Failure::DownloadNoSpace(_) => code::DOWNLOAD_OUT_OF_MEMORY,
            Failure::InstallNoSpace(_) => code::UPDATE_OUT_OF_MEMORY,
            Failure::InstallFailed(_) => code::UPDATE_FAILED,
        }
    }

    /// The failure for a download error.
    pub fn from_download(e: &crate::download::DownloadError) -> Failure {
        use crate::download::DownloadError as D;
        match e {
            D::Unreachable { .. } | D::Tls { .. } | D::Status { .. } | D::Truncated { .. } => {
                Failure::ServerUnavailable(e.to_string())
            }
            D::NotFound { .. } => Failure::BadUrl(e.to_string()),
            D::TooLarge { .. } | D::LengthMismatch { .. } | D::DigestMismatch { .. } => {
                Failure::Corrupt(e.to_string())
            }
            D::BadContentRange { .. } => Failure::ServerUnavailable(e.to_string()),
            D::Io { source, .. } if is_no_space(source) => Failure::DownloadNoSpace(e.to_string()),
            D::Io { .. } => Failure::InstallFailed(e.to_string()),
        }
    }

    /// The failure for a local file error while preparing or installing the image.
    pub fn from_io(e: &std::io::Error) -> Failure {
        if is_no_space(e) {
            Failure::InstallNoSpace(e.to_string())
        } else {
            Failure::InstallFailed(e.to_string())
        }
    }

    /// The failure for a slot installer error.
    pub fn from_slots(e: &crate::slots::SlotError) -> Failure {
        use crate::slots::SlotError as S;
        match e {
            S::ImageMismatch { .. } => Failure::Corrupt(e.to_string()),
            S::Delta { source, .. } => match source {
                simfota_delta::DeltaError::SourceSizeMismatch { .. }
                | simfota_delta::DeltaError::SourceDigestMismatch => {
                    Failure::WrongDevice(e.to_string())
                }
                _ => Failure::Corrupt(e.to_string()),
            },
            S::Io { source, .. } if is_no_space(source) => Failure::InstallNoSpace(e.to_string()),
            _ => Failure::InstallFailed(e.to_string()),
        }
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}

/// How an update ended: success, or the failure.
pub type Outcome = Result<String, Failure>;

/// The FUMO result code of an outcome.
pub fn result_code(outcome: &Outcome) -> FumoResult {
    match outcome {
        Ok(_) => code::SUCCESSFUL,
        Err(f) => f.fumo_result(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in docs/dm-tree.md lists each code this module can produce.
    #[test]
    fn every_code_is_in_the_documented_table() {
        let doc = include_str!("../../../docs/dm-tree.md");
        let failures = [
            Failure::UserDeclined { server: "s".into() },
            Failure::NotConfirmed {
                server: "s".into(),
                why: String::new(),
            },
            Failure::Corrupt(String::new()),
            Failure::WrongDevice(String::new()),
            Failure::Invalid(String::new()),
            Failure::BadUrl(String::new()),
            Failure::ServerUnavailable(String::new()),
            Failure::CardUnavailable(String::new()),
            Failure::DownloadNoSpace(String::new()),
            Failure::InstallNoSpace(String::new()),
            Failure::InstallFailed(String::new()),
        ];
        for f in failures {
            let row = format!("| {} |", f.fumo_result().0);
            assert!(
                doc.contains(&row),
                "docs/dm-tree.md lacks a row ending in `{row}` for {f:?}"
            );
        }
    }

    #[test]
    fn download_errors_map_to_content_or_availability() {
        use crate::download::DownloadError as D;
        let url = || "http://x/p".to_owned();
        let cases = [
            (
                D::Unreachable {
                    url: url(),
                    message: "refused".into(),
                },
                503,
            ),
            (
                D::Tls {
                    url: url(),
                    problem: crate::download::TlsProblem::UnknownIssuer,
                },
                503,
            ),
            (
                D::Truncated {
                    url: url(),
                    got: 1,
                    expected: 2,
                },
                503,
            ),
            (
                D::NotFound {
                    url: url(),
                    status: 404,
                },
                411,
            ),
            (
                D::DigestMismatch {
                    url: url(),
                    expected: "a".into(),
                    actual: "b".into(),
                },
                402,
            ),
            (
                D::LengthMismatch {
                    url: url(),
                    expected: 1,
                    actual: 2,
                },
                402,
            ),
            (
                D::TooLarge {
                    url: url(),
                    limit: 1,
                },
                402,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(Failure::from_download(&e).fumo_result().0, want, "{e}");
        }
    }
}
