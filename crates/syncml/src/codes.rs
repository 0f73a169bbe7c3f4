//! Wire numbers of SyncML DM and FUMO as newtypes with their meanings.
//!
//! Status codes: SyncML RepPro 1.2 §10 and OMA DM Protocol 1.2 §10 (response status codes).
//! Alert codes: OMA DM Protocol 1.2 §8.7 (Alert types). FUMO result codes and states:
//! OMA FUMO 1.0 §6.3 and §8 (result codes) and §7.1 (State node values).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares a `u16`/`u8` newtype with named constants and a `meaning()` text for each.
macro_rules! coded {
    ($(#[$doc:meta])* $name:ident($repr:ty) { $($(#[$cdoc:meta])* $konst:ident = $val:literal => $text:literal,)* } fallback $fallback:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $repr);

        impl $name {
            $($(#[$cdoc])* pub const $konst: $name = $name($val);)*

            /// The numeric value as sent on the wire.
            pub const fn value(self) -> $repr {
                self.0
            }

            /// What the code means (the specification's wording, shortened).
            pub fn meaning(self) -> &'static str {
                match self.0 {
                    $($val => $text,)*
                    _ => $fallback(self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({} {})", stringify!($name), self.0, self.meaning())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ({})", self.0, self.meaning())
            }
        }
    };
}

fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "informational",
        200..=299 => "successful",
        300..=399 => "redirection",
        400..=499 => "originator exception",
        500..=599 => "recipient exception",
        _ => "unknown status code",
    }
}

coded! {
    /// A SyncML response status code (the `Data` of a `Status` command).
    StatusCode(u16) {
        /// 101: the command is still being processed.
        IN_PROGRESS = 101 => "in progress",
        /// 200: the command completed.
        OK = 200 => "OK",
        /// 202: accepted for processing; the result comes later (FUMO Exec, DM Protocol §10).
        ACCEPTED_FOR_PROCESSING = 202 => "accepted for processing",
        /// 212: credentials accepted for the whole session (DM Security §5.4).
        AUTHENTICATION_ACCEPTED = 212 => "authentication accepted",
        /// 213: one chunk of a large object was received (DM Protocol §7.1.3).
        CHUNKED_ITEM_ACCEPTED = 213 => "chunked item accepted and buffered",
        /// 214: operation cancelled.
        OPERATION_CANCELLED = 214 => "operation cancelled",
        /// 215: the command was not executed (e.g. the message failed authentication).
        NOT_EXECUTED = 215 => "not executed",
        /// 216: an Atomic was rolled back successfully.
        ATOMIC_ROLLBACK_OK = 216 => "atomic roll back OK",
        /// 400: the request could not be understood (malformed message).
        BAD_REQUEST = 400 => "bad request",
        /// 401: credentials missing the mark (wrong name, password or digest).
        INVALID_CREDENTIALS = 401 => "invalid credentials",
        /// 403: forbidden.
        FORBIDDEN = 403 => "forbidden",
        /// 404: the target node does not exist.
        NOT_FOUND = 404 => "not found",
        /// 405: the command is not allowed on this target.
        COMMAND_NOT_ALLOWED = 405 => "command not allowed",
        /// 406: an optional feature (command, format) is not supported.
        OPTIONAL_FEATURE_NOT_SUPPORTED = 406 => "optional feature not supported",
        /// 407: credentials are required and were missing.
        MISSING_CREDENTIALS = 407 => "missing credentials",
        /// 412: the command lacks a required element.
        INCOMPLETE_COMMAND = 412 => "incomplete command",
        /// 413: the request entity (message or object) is too large.
        REQUEST_ENTITY_TOO_LARGE = 413 => "request entity too large",
        /// 414: the URI is too long.
        URI_TOO_LONG = 414 => "URI too long",
        /// 415: unsupported media type or format.
        UNSUPPORTED_MEDIA_TYPE = 415 => "unsupported media type or format",
        /// 416: the requested size is too big.
        REQUESTED_SIZE_TOO_BIG = 416 => "requested size too big",
        /// 418: the node already exists.
        ALREADY_EXISTS = 418 => "already exists",
        /// 424: the reassembled large object does not have the announced size.
        SIZE_MISMATCH = 424 => "size mismatch",
        /// 425: the ACL does not permit the command for this server.
        PERMISSION_DENIED = 425 => "permission denied",
        /// 500: the recipient failed to execute the command.
        COMMAND_FAILED = 500 => "command failed",
        /// 506: processing error.
        PROCESSING_ERROR = 506 => "processing error",
        /// 507: an Atomic failed.
        ATOMIC_FAILED = 507 => "atomic failed",
        /// 516: an Atomic failed and could not be rolled back completely.
        ATOMIC_ROLLBACK_FAILED = 516 => "atomic roll back failed",
        /// 517: the response to an Atomic is too large for one message.
        ATOMIC_RESPONSE_TOO_LARGE = 517 => "atomic response too large to fit",
    } fallback status_class
}

impl StatusCode {
    /// 2xx: the command succeeded.
    pub const fn is_success(self) -> bool {
        self.0 >= 200 && self.0 < 300
    }
}

fn alert_fallback(code: u16) -> &'static str {
    match code {
        1100..=1199 => "user interaction alert",
        1200..=1299 => "session alert",
        _ => "unknown alert code",
    }
}

coded! {
    /// A DM alert code (the `Data` of an `Alert` command, DM Protocol §8.7).
    AlertCode(u16) {
        /// 1100: display a message to the user.
        DISPLAY = 1100 => "display",
        /// 1101: ask the user to continue or abort.
        CONTINUE_OR_ABORT = 1101 => "continue or abort",
        /// 1102: ask the user for text input.
        TEXT_INPUT = 1102 => "text input",
        /// 1103: single choice.
        SINGLE_CHOICE = 1103 => "single choice",
        /// 1104: multiple choice.
        MULTIPLE_CHOICE = 1104 => "multiple choice",
        /// 1200: the session was initiated by the server (package 0).
        SERVER_INITIATED_MGMT = 1200 => "server-initiated management session",
        /// 1201: the session was initiated by the client.
        CLIENT_INITIATED_MGMT = 1201 => "client-initiated management session",
        /// 1222: send the next message of the package.
        NEXT_MESSAGE = 1222 => "next message",
        /// 1223: the session is aborted.
        SESSION_ABORT = 1223 => "session abort",
        /// 1224: client event.
        CLIENT_EVENT = 1224 => "client event",
        /// 1225: the large object ended before all data was sent.
        NO_END_OF_DATA = 1225 => "no end of data",
        /// 1226: generic alert (carries e.g. the FUMO result).
        GENERIC_ALERT = 1226 => "generic alert",
    } fallback alert_fallback
}

fn fumo_fallback(code: u16) -> &'static str {
    match code {
        250..=299 => "successful (vendor specific)",
        450..=499 => "client error (vendor specific)",
        550..=599 => "alternate download server error (vendor specific)",
        _ => "unknown FUMO result code",
    }
}

coded! {
    /// A FUMO result code, carried in the Generic Alert that ends a FUMO operation (FUMO 1.0 §8).
    FumoResult(u16) {
        /// 200: successful.
        SUCCESSFUL = 200 => "successful",
        /// 400: management client error.
        CLIENT_ERROR = 400 => "management client error",
        /// 401: the user cancelled the update.
        USER_CANCELLED = 401 => "user cancelled",
        /// 402: the update package is corrupted (integrity check failed).
        CORRUPTED_PACKAGE = 402 => "corrupted firmware update package",
        /// 403: the package does not fit this device.
        PACKAGE_DEVICE_MISMATCH = 403 => "firmware update package - device mismatch",
        /// 404: the package failed validation (signature).
        FAILED_VALIDATION = 404 => "failed firmware update package validation",
        /// 405: the package is not acceptable (policy).
        NOT_ACCEPTABLE = 405 => "firmware update package not acceptable",
        /// 406: alternate download authentication failure.
        DOWNLOAD_AUTH_FAILURE = 406 => "alternate download authentication failure",
        /// 407: alternate download request time-out.
        DOWNLOAD_TIMEOUT = 407 => "alternate download request time-out",
        /// 408: not implemented.
        NOT_IMPLEMENTED = 408 => "not implemented",
        /// 409: undefined error.
        UNDEFINED_ERROR = 409 => "undefined error",
        /// 410: the update failed.
        UPDATE_FAILED = 410 => "firmware update failed",
        /// 411: malformed or bad URL.
        BAD_URL = 411 => "malformed or bad URL",
        /// 412: the alternate download server is unavailable.
        DOWNLOAD_SERVER_UNAVAILABLE = 412 => "alternate download server unavailable",
        /// 500: alternate download server error.
        DOWNLOAD_SERVER_ERROR = 500 => "alternate download server error",
        /// 501: the download failed: the device is out of memory.
        DOWNLOAD_OUT_OF_MEMORY = 501 => "download fails due to device out of memory",
        /// 502: the update failed: the device is out of memory.
        UPDATE_OUT_OF_MEMORY = 502 => "firmware update fails due to device out of memory",
        /// 503: the download failed because of the network.
        DOWNLOAD_NETWORK_FAILURE = 503 => "download fails due to network issues",
    } fallback fumo_fallback
}

impl FumoResult {
    /// 200 and the vendor range 250-299 mean success.
    pub const fn is_success(self) -> bool {
        self.0 == 200 || (self.0 >= 250 && self.0 < 300)
    }
}

fn fumo_state_fallback(_: u8) -> &'static str {
    "unknown FUMO state"
}

coded! {
    /// The value of the FUMO `State` node (FUMO 1.0 §7.1).
    FumoState(u8) {
        /// 10: idle / start, no pending operation.
        IDLE = 10 => "idle / start",
        /// 20: the download failed.
        DOWNLOAD_FAILED = 20 => "download failed",
        /// 30: the download is in progress.
        DOWNLOAD_PROGRESSING = 30 => "download progressing",
        /// 40: the download completed.
        DOWNLOAD_COMPLETE = 40 => "download complete",
        /// 50: ready to update.
        READY_TO_UPDATE = 50 => "ready to update",
        /// 60: the update is in progress.
        UPDATE_PROGRESSING = 60 => "update progressing",
        /// 70: the update failed, the package is still there.
        UPDATE_FAILED_HAVE_DATA = 70 => "update failed / have data",
        /// 80: the update failed, the package is gone.
        UPDATE_FAILED_NO_DATA = 80 => "update failed / no data",
        /// 90: the update succeeded, the package is still there.
        UPDATE_SUCCESSFUL_HAVE_DATA = 90 => "update successful / have data",
        /// 100: the update succeeded, the package is gone.
        UPDATE_SUCCESSFUL_NO_DATA = 100 => "update successful / no data",
    } fallback fumo_state_fallback
}

/// The Generic Alert types of FUMO 1.0 §8.2, one per executable node.
pub mod fumo_alert_type {
    /// Result of `Exec` on `Download`.
    pub const DOWNLOAD: &str = "org.openmobilealliance.dm.firmwareupdate.download";
    /// Result of `Exec` on `Update`.
    pub const UPDATE: &str = "org.openmobilealliance.dm.firmwareupdate.update";
    /// Result of `Exec` on `DownloadAndUpdate`.
    pub const DOWNLOAD_AND_UPDATE: &str =
        "org.openmobilealliance.dm.firmwareupdate.downloadandupdate";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meanings_cover_named_and_unnamed_codes() {
        assert_eq!(
            StatusCode::AUTHENTICATION_ACCEPTED.meaning(),
            "authentication accepted"
        );
        assert_eq!(StatusCode(299).meaning(), "successful");
        assert_eq!(AlertCode(1150).meaning(), "user interaction alert");
        assert_eq!(FumoResult(460).meaning(), "client error (vendor specific)");
        assert!(FumoResult(251).is_success());
        assert!(!FumoResult::CORRUPTED_PACKAGE.is_success());
        assert_eq!(format!("{}", StatusCode::NOT_FOUND), "404 (not found)");
    }
}
