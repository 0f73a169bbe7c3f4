//! How a host reaches a simfota card, whatever the card is.
//!
//! The device's update client, the operator's card tools and the tests all talk to the card
//! the same way: a [`Channel`] moves APDU bytes to one card; a [`Link`] adds the ISO/IEC 7816
//! transport rules every channel shares (GET RESPONSE after `61xx`, resend after `6Cxx`,
//! command chaining, extended length where reader and card take it); a typed client above the
//! link speaks the applet's command set.
//!
//! Channels:
//! - [`InProcessChannel`]: a [`VirtualCard`] in this process (the applet over its state file,
//!   its crypto on the software back-end or on ring: [`platform`]);
//! - [`pcsc::PcscChannel`] (feature `pcsc`): any reader of the system's PC/SC stack, physical,
//!   or one of vsmartcard's virtual readers;
//! - [`modem::ModemChannel`] (feature `modem`): the card in a cellular modem, through the AT
//!   commands of 3GPP TS 27.007 on its serial port (`AT+CCHO`/`AT+CGLA`, or `AT+CSIM`);
//!   [`modem::emulator`] is such a modem on a pseudo-terminal, around a [`VirtualCard`];
//! - and the other way round, [`vpcd::VpcdServer`] (feature `vpcd`) puts a [`VirtualCard`]
//!   into pcscd as a virtual card, so every PC/SC tool on the machine can talk to our applet.
//!
//! What this crate does not do: it has no opinion on the card's commands beyond the transport
//! (they are the card crate's), it keeps no secret, and it never retries a command that may
//! have run on the card (a `6Cxx` or a `6700` to an extended command means it did not).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod apdu;
pub mod atr;
pub mod channel;
pub mod client;
pub mod error;
pub mod link;
pub mod local;
#[cfg(feature = "modem")]
pub mod modem;
#[cfg(feature = "pcsc")]
pub mod pcsc;
pub mod platform;
#[cfg(feature = "vpcd")]
pub mod vpcd;

pub use apdu::{Command, Response, StatusWord};
pub use channel::{
    Capabilities, Channel, InProcessChannel, Protocol, ResetKind, Transmit, VirtualCard,
};
pub use client::{CardClient, ChannelMode, ClientError};
pub use error::LinkError;
pub use link::{ExtendedMode, Link, LinkOptions, LinkStats};
pub use local::{AppletCard, FileCard};
pub use platform::{Crypto, HostPlatform, LocalPlatform};

/// The card crate this link serves and speaks to (reasons, constants, host-side decoders).
pub use simfota_card as card;
/// The signed objects the client carries (keys, tokens, admin commands, policies).
pub use simfota_wire as wire;
