//! The applet's errors and the ONE mapping from them to ISO/IEC 7816-4 status words, plus the
//! refusal reasons and their FUMO result codes (OMA FUMO 1.0 §10.1, result codes).

use simfota_wire::DenyReason;

use crate::StatusWord;
use crate::store::StoreError;

/// A code of the wire crate's table as the one byte it takes here (every code is below
/// `0x100`: SW2 of `66RR`; `tests::reasons_are_the_wire_table` checks each one).
const fn code(r: DenyReason) -> u8 {
    r.0 as u8
}

/// Why a security check refused a request. The code travels as SW2 of `66RR`, is the code a
/// "denied" log entry carries ([`Reason::deny_reason`]), and the device maps it to a FUMO
/// result code with [`Reason::fumo_result`]. The codes are the wire crate's [`DenyReason`]
/// table (one table for the card, its log and its readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum Reason {
    /// The token's issuer is not listed with the firmware-update right, and the policy
    /// refuses unauthorized servers.
    #[error("the server is not authorized for firmware updates")]
    ServerNotAuthorized = code(DenyReason::SERVER_NOT_AUTHORIZED),
    /// The token's signature does not verify under the listed server's key.
    #[error("the delivery token's signature is invalid")]
    TokenSignature = code(DenyReason::TOKEN_SIGNATURE),
    /// No nonce is outstanding (never issued, already used, or lost with a reset).
    #[error("no unused card nonce: the token is a replay or the card was reset")]
    NonceUnavailable = code(DenyReason::NONCE_UNAVAILABLE),
    /// The token carries another nonce than the one the card issued.
    #[error("the token's nonce is not the card's")]
    NonceMismatch = code(DenyReason::NONCE_MISMATCH),
    /// The token names another subscription (ICCID).
    #[error("the token is for another card (ICCID)")]
    WrongCard = code(DenyReason::WRONG_CARD),
    /// The token names another device than the one bound at session open (IMEI).
    #[error("the token is for another device (IMEI)")]
    WrongDevice = code(DenyReason::WRONG_DEVICE),
    /// The token's `exp` lies before the card's trusted time.
    #[error("the token has expired")]
    TokenExpired = code(DenyReason::TOKEN_EXPIRED),
    /// The manifest's signer is not a trusted originator.
    #[error("the software originator is not trusted")]
    OriginatorUnknown = code(DenyReason::ORIGINATOR_UNKNOWN),
    /// The manifest's signature does not verify under the originator's key.
    #[error("the manifest's signature is invalid")]
    ManifestSignature = code(DenyReason::MANIFEST_SIGNATURE),
    /// The manifest digest differs from the one the token binds.
    #[error("the manifest is not the one the token authorizes")]
    ManifestMismatch = code(DenyReason::MANIFEST_MISMATCH),
    /// The policy does not allow this vendor-id/class-id.
    #[error("the policy does not allow this device class")]
    ClassNotAllowed = code(DenyReason::CLASS_NOT_ALLOWED),
    /// The manifest's sequence number is not above the installed one.
    #[error("rollback: the sequence number is not above the installed one")]
    Rollback = code(DenyReason::ROLLBACK),
    /// Every log slot holds an entry no server has acknowledged.
    #[error("the log is full of unacknowledged entries")]
    LogFull = code(DenyReason::LOG_FULL),
    /// Unauthorized server, policy "warn and confirm": the user must confirm first.
    #[error("the user must confirm this update (unauthorized server)")]
    ConsentRequired = code(DenyReason::CONSENT_REQUIRED),
    /// Unauthorized server, policy "confirm with PIN": the user must confirm with the PIN.
    #[error("the user must confirm this update with the PIN (unauthorized server)")]
    PinConsentRequired = code(DenyReason::PIN_CONSENT_REQUIRED),
    /// The user declined the update.
    #[error("the user declined the update")]
    UserDeclined = code(DenyReason::USER_DECLINED),
    /// The token or the envelope does not decode.
    #[error("the token or manifest is malformed")]
    Malformed = code(DenyReason::MALFORMED),
    /// Another authorized update has not ended yet.
    #[error("another update is pending: report its result first")]
    UpdatePending = code(DenyReason::UPDATE_PENDING),
    /// The token's `nbf` lies after the card's trusted time.
    #[error("the token is not valid yet (nbf)")]
    TokenNotYetValid = code(DenyReason::TOKEN_NOT_YET_VALID),
    /// The manifest verifies but uses a SUIT command, condition or parameter the card does
    /// not process.
    #[error("the manifest uses a SUIT command the card does not process")]
    ManifestUnsupported = code(DenyReason::MANIFEST_UNSUPPORTED),
    /// Too many updates through unlisted servers wait for an authorized server to read the log.
    #[error("updates through unlisted servers must wait until an authorized server reads the log")]
    UnverifiedBudget = code(DenyReason::UNVERIFIED_BUDGET),
    /// The payload digest differs from the signed one.
    #[error("the payload digest differs from the signed one")]
    IntegrityFailed = code(DenyReason::INTEGRITY_FAILED),
    /// The payload size differs from the signed one, or exceeds the card-digest cap.
    #[error("the payload size is wrong or above the policy's cap")]
    SizeMismatch = code(DenyReason::SIZE_MISMATCH),
    /// The policy requires the card to hash the payload; a device digest is not enough.
    #[error("the policy requires card-side hashing of the payload")]
    CardDigestRequired = code(DenyReason::CARD_DIGEST_REQUIRED),
    /// Success reported for an update whose integrity did not pass.
    #[error("success reported but the payload's integrity did not pass")]
    IntegrityNotPassed = code(DenyReason::INTEGRITY_NOT_PASSED),
    /// A result for an update this card did not authorize, or that already ended.
    #[error("no such authorized update in progress")]
    UnknownUpdate = code(DenyReason::UNKNOWN_UPDATE),
    /// The log-read request's server is not listed with the log-read right.
    #[error("the server may not read the log")]
    LogReadNotAuthorized = code(DenyReason::LOG_READ_NOT_AUTHORIZED),
    /// The acknowledgement's server is not listed with the log-ack right.
    #[error("the server may not acknowledge the log")]
    LogAckNotAuthorized = code(DenyReason::LOG_ACK_NOT_AUTHORIZED),
    /// The signature of a log-read request or acknowledgement is invalid.
    #[error("the request's signature is invalid")]
    RequestSignature = code(DenyReason::REQUEST_SIGNATURE),
    /// The acknowledgement covers entries that were never exported/written.
    #[error("the acknowledgement covers entries that do not exist")]
    AckBeyondLog = code(DenyReason::ACK_BEYOND_LOG),
    /// The admin command's issuer signature is invalid.
    #[error("the admin command's signature is invalid")]
    AdminSignature = code(DenyReason::ADMIN_SIGNATURE),
    /// The admin command targets another card.
    #[error("the admin command is for another card")]
    AdminWrongCard = code(DenyReason::ADMIN_WRONG_CARD),
    /// The admin command's counter does not grow (replay).
    #[error("the admin command was already applied (counter does not grow)")]
    AdminReplay = code(DenyReason::ADMIN_REPLAY),
}

impl Reason {
    /// Every reason, in code order (for documentation and tests).
    pub const ALL: [Reason; 33] = [
        Self::ServerNotAuthorized,
        Self::TokenSignature,
        Self::NonceUnavailable,
        Self::NonceMismatch,
        Self::WrongCard,
        Self::WrongDevice,
        Self::TokenExpired,
        Self::OriginatorUnknown,
        Self::ManifestSignature,
        Self::ManifestMismatch,
        Self::ClassNotAllowed,
        Self::Rollback,
        Self::LogFull,
        Self::ConsentRequired,
        Self::PinConsentRequired,
        Self::UserDeclined,
        Self::Malformed,
        Self::UpdatePending,
        Self::TokenNotYetValid,
        Self::ManifestUnsupported,
        Self::UnverifiedBudget,
        Self::IntegrityFailed,
        Self::SizeMismatch,
        Self::CardDigestRequired,
        Self::IntegrityNotPassed,
        Self::UnknownUpdate,
        Self::LogReadNotAuthorized,
        Self::LogAckNotAuthorized,
        Self::RequestSignature,
        Self::AckBeyondLog,
        Self::AdminSignature,
        Self::AdminWrongCard,
        Self::AdminReplay,
    ];

    /// The one-byte code (SW2 of `66RR`, and the code stored in "denied" log entries).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The code a "denied" log entry carries for this reason.
    pub const fn deny_reason(self) -> DenyReason {
        DenyReason(self as u16)
    }

    /// The reason with this code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The FUMO result code the device reports for an update refused for this reason
    /// (OMA FUMO 1.0 result codes; design §4): integrity 402, wrong device or subscription
    /// 403, originator or signature 404, policy / replay / rollback 405, user declined 401.
    /// `None` for reasons that do not end a firmware update (log and admin commands, or a
    /// result report the card rejects).
    pub const fn fumo_result(self) -> Option<u16> {
        use Reason::*;
        Some(match self {
            UserDeclined | ConsentRequired | PinConsentRequired => 401,
            IntegrityFailed | SizeMismatch | CardDigestRequired | IntegrityNotPassed => 402,
            WrongCard | WrongDevice => 403,
            TokenSignature | OriginatorUnknown | ManifestSignature | ManifestMismatch
            | ManifestUnsupported | Malformed => 404,
            ServerNotAuthorized | NonceUnavailable | NonceMismatch | TokenExpired
            | TokenNotYetValid | ClassNotAllowed | Rollback | LogFull | UpdatePending
            | UnverifiedBudget => 405,
            UnknownUpdate | LogReadNotAuthorized | LogAckNotAuthorized | RequestSignature
            | AckBeyondLog | AdminSignature | AdminWrongCard | AdminReplay => return None,
        })
    }
}

impl From<Reason> for DenyReason {
    fn from(r: Reason) -> Self {
        r.deny_reason()
    }
}

/// Maps a refusal status word (`66RR`) to the FUMO result code the device reports; `None`
/// when the status word is not an update refusal.
pub fn fumo_result_for(sw: StatusWord) -> Option<u16> {
    if sw.sw1() != 0x66 {
        return None;
    }
    Reason::from_code(sw.sw2()).and_then(Reason::fumo_result)
}

/// Everything the applet can answer other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// Lc/Le inconsistent, or the data does not fit the applet's buffer.
    #[error("wrong length")]
    WrongLength,
    /// The class byte is not supported.
    #[error("class not supported")]
    ClaNotSupported,
    /// The instruction is unknown.
    #[error("instruction not supported")]
    InsNotSupported,
    /// P1-P2 are invalid for this instruction.
    #[error("incorrect P1-P2")]
    WrongP1P2,
    /// The command came on a logical channel that is not open.
    #[error("logical channel not supported (not open)")]
    ChannelNotSupported,
    /// MANAGE CHANNEL asked for what the card does not do: another P1, a channel number
    /// above 19, closing the basic channel, or opening one more channel than it keeps.
    #[error("function not supported")]
    FunctionNotSupported,
    /// MANAGE CHANNEL closed a channel that was not open: nothing changed (a warning).
    #[error("the logical channel was not open")]
    NothingToClose,
    /// Secure messaging is not supported.
    #[error("secure messaging not supported")]
    SecureMessagingNotSupported,
    /// A chain was interrupted by another command.
    #[error("last command of the chain expected")]
    ChainBroken,
    /// CLA b5 (command chaining) set on an instruction that does not take long data.
    #[error("command chaining not supported for this instruction")]
    ChainingNotSupported,
    /// The command data is malformed.
    #[error("malformed command data: {0}")]
    WrongData(&'static str),
    /// The command is not allowed in the current state.
    #[error("conditions of use not satisfied: {0}")]
    Conditions(&'static str),
    /// The PIN must be verified first.
    #[error("security status not satisfied: {0}")]
    SecurityStatus(&'static str),
    /// Wrong PIN or PUK; this many tries are left.
    #[error("wrong PIN or PUK, {0} tries left")]
    WrongPin(u8),
    /// The PIN or PUK is blocked.
    #[error("PIN or PUK blocked")]
    Blocked,
    /// The referenced entry does not exist.
    #[error("referenced data not found")]
    NotFound,
    /// SELECT named an application this card does not hold.
    #[error("application not found")]
    AppletNotFound,
    /// A table is full.
    #[error("not enough memory space")]
    NoSpace,
    /// A persistent write failed; the transaction was rolled back.
    #[error("persistent memory failure: {0}")]
    Memory(StoreError),
    /// A security check refused the request.
    #[error("refused: {0}")]
    Refused(Reason),
    /// An internal step failed (signature creation, encoding into the buffer).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<StoreError> for CardError {
    fn from(e: StoreError) -> Self {
        CardError::Memory(e)
    }
}

impl From<Reason> for CardError {
    fn from(r: Reason) -> Self {
        CardError::Refused(r)
    }
}

impl CardError {
    /// The status word answered for this error: the single place where the applet's
    /// errors become ISO/IEC 7816-4 status words.
    pub const fn status_word(&self) -> StatusWord {
        match self {
            CardError::WrongLength => StatusWord::WRONG_LENGTH,
            CardError::ClaNotSupported => StatusWord::CLA_NOT_SUPPORTED,
            CardError::InsNotSupported => StatusWord::INS_NOT_SUPPORTED,
            CardError::WrongP1P2 => StatusWord::WRONG_P1P2,
            CardError::ChannelNotSupported => StatusWord::CHANNEL_NOT_SUPPORTED,
            CardError::FunctionNotSupported => StatusWord::FUNCTION_NOT_SUPPORTED,
            CardError::NothingToClose => StatusWord::WARNING_UNCHANGED,
            CardError::SecureMessagingNotSupported => StatusWord::SECURE_MESSAGING_NOT_SUPPORTED,
            CardError::ChainBroken => StatusWord::LAST_COMMAND_EXPECTED,
            CardError::ChainingNotSupported => StatusWord::CHAINING_NOT_SUPPORTED,
            CardError::WrongData(_) => StatusWord::WRONG_DATA,
            CardError::Conditions(_) => StatusWord::CONDITIONS,
            CardError::SecurityStatus(_) => StatusWord::SECURITY_STATUS,
            CardError::WrongPin(n) => StatusWord::tries_left(*n),
            CardError::Blocked => StatusWord::AUTH_BLOCKED,
            CardError::NotFound => StatusWord::DATA_NOT_FOUND,
            CardError::AppletNotFound => StatusWord::NOT_FOUND,
            CardError::NoSpace => StatusWord::NO_SPACE,
            CardError::Memory(_) => StatusWord::MEMORY_FAILURE,
            CardError::Refused(r) => StatusWord::refused(*r as u8),
            CardError::Internal(_) => StatusWord::UNKNOWN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_unique_and_round_trip() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            assert_eq!(Reason::from_code(a.code()), Some(*a));
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} and {b:?} share a code");
            }
        }
    }

    #[test]
    fn reasons_are_the_wire_table() {
        // One table: every card reason is a wire code and every wire code a card reason,
        // in the same order, with the values docs/apdu.md lists.
        assert_eq!(Reason::ALL.len(), DenyReason::ALL.len());
        for (r, d) in Reason::ALL.iter().zip(DenyReason::ALL) {
            assert_eq!(r.deny_reason(), d, "{r:?}");
            assert_eq!(u16::from(r.code()), d.0, "{r:?} truncated");
            assert_eq!(DenyReason::from(*r), d);
        }
        assert_eq!(Reason::ServerNotAuthorized.deny_reason(), DenyReason(0x01));
        assert_eq!(Reason::NonceUnavailable.deny_reason(), DenyReason(0x03));
        assert_eq!(Reason::UserDeclined.deny_reason(), DenyReason(0x10));
        assert_eq!(Reason::SizeMismatch.deny_reason(), DenyReason(0x21));
        assert_eq!(Reason::AdminReplay.deny_reason(), DenyReason(0x52));
    }

    #[test]
    fn fumo_mapping_follows_design() {
        let sw = CardError::Refused(Reason::WrongDevice).status_word();
        assert_eq!(sw, StatusWord(0x6606));
        assert_eq!(fumo_result_for(sw), Some(403));
        assert_eq!(Reason::IntegrityFailed.fumo_result(), Some(402));
        assert_eq!(Reason::ManifestSignature.fumo_result(), Some(404));
        assert_eq!(Reason::Rollback.fumo_result(), Some(405));
        assert_eq!(Reason::UserDeclined.fumo_result(), Some(401));
        assert_eq!(fumo_result_for(StatusWord::OK), None);
        assert_eq!(CardError::WrongPin(2).status_word(), StatusWord(0x63C2));
    }

    #[test]
    fn iso_status_words_for_selection_and_chaining() {
        // ISO/IEC 7816-4 §5.6 table 6: application not found, chaining not supported.
        assert_eq!(CardError::AppletNotFound.status_word(), StatusWord(0x6A82));
        assert_eq!(
            CardError::ChainingNotSupported.status_word(),
            StatusWord(0x6884)
        );
        assert_eq!(CardError::NotFound.status_word(), StatusWord(0x6A88));
    }
}
