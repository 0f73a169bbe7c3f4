//! The simfota card applet: the subscriber's SIM as the operator's control point for
//! firmware-over-the-air updates (design §1-§5).
//!
//! The card keeps the list of authorized DM servers with their rights, the update policy for
//! everyone else, the trusted software originators and a hash-chained log of every update
//! decision and result. Before a device may install a package it asks the card, which checks
//! the server's delivery token (signature, one-time nonce, ICCID, IMEI, expiry), the SUIT
//! manifest (originator signature, digest, class, anti-rollback) and, later, the payload's
//! integrity; it logs every decision and signs receipts and encrypted log exports.
//!
//! Shape: one entry point, [`Applet::process`] — a command APDU in, a response into a fixed
//! buffer out (ISO/IEC 7816-4) — over a persistent [`Store`] with atomic transactions and a
//! [`Platform`] giving randomness, SHA-256 and the P-256 operations (a secure element's
//! crypto co-processor; [`RngPlatform`] is the software one). `no_std`, no heap, no `unsafe`;
//! the RAM state is [`Applet::ram_state_size`] bytes and the persistent image
//! [`PERSISTENT_SIZE`] bytes, a real SIM's budget. The byte formats of every signed object come from `simfota-wire`.
//!
//! What it does not do: talk to a reader (see the card-link crate), keep time (its trusted
//! time is the newest verified token `iat`), or trust the device: the device relays, and
//! every decision rests on signatures the card checks itself.
//!
//! `docs/apdu.md` lists the commands; `docs/card.md` describes state, persistent layout,
//! transactions and the order of checks for a Java Card port.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

mod admin;
pub mod apdu;
mod applet;
mod commands;
mod crypto;
mod error;
pub mod info;
pub mod layout;
mod logcmd;
pub mod perso;
mod pin;
pub mod platform;
pub mod ring;
pub mod store;
mod sw;
mod tables;
mod update;

pub use applet::{
    AID, APPLET_VERSION, Applet, CHANNEL_SLOTS, IO_CAP, MAX_CHANNEL, PersistentUsage, ins,
};
pub use crypto::CryptoOps;
pub use error::{CardError, Reason, fumo_result_for};
pub use layout::{LOG_CAPACITY, PERSISTENT_SIZE};
pub use logcmd::PAGE_ENTRIES;
pub use pin::{PIN_LEN, valid_pin_block};
pub use platform::{
    CryptoError, Ephemeral, KeyPair, Platform, RngPlatform, Sha256Context, SoftwareSha256,
};
#[cfg(feature = "std")]
pub use store::FileStore;
pub use store::{MemStore, PowerCut, Store, StoreError};
pub use sw::StatusWord;

/// A RAM store sized for this applet's persistent layout.
pub type CardMemory = MemStore<PERSISTENT_SIZE>;
