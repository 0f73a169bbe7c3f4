//! What can go wrong between the host and the card, below the level of the card's own answers.

use crate::apdu::EncodeError;

/// A failure of the link to the card: the card could not be reached, went away, was reset, or
/// sent something that is not a response APDU. A card that answers with an error status word is
/// not a link failure; the client reports those as typed refusals.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The PC/SC service (pcscd) is not running or not reachable.
    #[error("the PC/SC service is not running (start pcscd, e.g. `systemctl start pcscd`)")]
    NoService,
    /// PC/SC is up, but there is no reader at all.
    #[error(
        "no smart-card reader is connected (for the virtual card: is vsmartcard-vpcd installed?)"
    )]
    NoReaders,
    /// No reader of the requested name.
    #[error("no reader named {name:?}; readers present: {}", available.join(", "))]
    ReaderNotFound {
        /// The name asked for.
        name: String,
        /// The readers PC/SC knows.
        available: Vec<String>,
    },
    /// Readers exist, but none (or not the named one) holds a card.
    #[error("no card in {reader} (insert the card, or start `simfota card serve`)")]
    NoCard {
        /// Reader name, or "any reader".
        reader: String,
    },
    /// The card was pulled (or the virtual card stopped) while we talked to it.
    #[error("the card was removed from {reader}; the last command may or may not have run")]
    CardRemoved {
        /// Reader name.
        reader: String,
    },
    /// The card was reset (by us or by another application); its volatile state is gone:
    /// the selected applet, the terminal binding, the one-time nonce and the PIN status.
    #[error(
        "the card in {reader} was reset; its session (applet selection, nonce, PIN status) is gone, open the session again"
    )]
    CardReset {
        /// Reader name.
        reader: String,
    },
    /// Another application holds the reader exclusively.
    #[error("{reader} is in exclusive use by another application")]
    ReaderBusy {
        /// Reader name.
        reader: String,
    },
    /// The card does not answer (mute card, or a driver time-out).
    #[error("the card in {reader} does not respond")]
    Unresponsive {
        /// Reader name.
        reader: String,
    },
    /// Any other PC/SC failure.
    #[cfg(feature = "pcsc")]
    #[error("PC/SC failure on {reader}: {source}")]
    Pcsc {
        /// Reader name, or "PC/SC context".
        reader: String,
        /// The PC/SC status.
        #[source]
        source: pcsc::Error,
    },
    /// The card in a cellular modem could not be reached through its AT interface.
    #[cfg(feature = "modem")]
    #[error(transparent)]
    Modem(#[from] crate::modem::ModemError),
    /// The card's answer has fewer than the two status bytes.
    #[error("the card sent a malformed response of {len} bytes (a response ends with SW1 SW2)")]
    MalformedResponse {
        /// Bytes received.
        len: usize,
    },
    /// The command could not be encoded in any form the link can send.
    #[error("cannot encode the command: {0}")]
    Encode(#[from] EncodeError),
    /// The card keeps sending `61xx` beyond the response limit.
    #[error("the card's response exceeds the {limit}-byte limit of this link")]
    ResponseTooLong {
        /// The limit.
        limit: usize,
    },
}
