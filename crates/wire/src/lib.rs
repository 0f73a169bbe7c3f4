//! simfota's signed objects and their byte formats: SUIT envelopes (software packages), CWT
//! delivery tokens, the card's hash-chained log entries, encrypted log exports, receipts, log
//! acknowledgements, log-read requests, admin commands and the card certificate
//! (see docs/formats.md for each object's CDDL and an example).
//!
//! The crate is `no_std` and never allocates in what the card uses: decoders borrow from the
//! input and check every length against [`Limits`]; encoders write into caller buffers and
//! fail with [`Error::BufferTooSmall`]. Signatures are ECDSA P-256 with SHA-256 (COSE ES256,
//! RFC 9053 §2.1), deterministic (RFC 6979). A signed object's content is handed out as
//! [`Verified<T>`] only after its signature checked out. The `std` feature adds host
//! conveniences: the SUIT builder, PEM key files, export opening, `Vec` outputs.
//!
//! # API map
//!
//! | object | make | read |
//! |---|---|---|
//! | SUIT envelope | `suit::build` (std), `suit::sever` (std) | [`suit::Envelope::decode`] then [`suit::Envelope::verify`] -> `Verified<`[`suit::Manifest`]`>` |
//! | delivery token (CWT) | [`DeliveryToken::sign`] / `to_vec` (std) | [`DeliveryToken::decode`] (key lookup by `iss`) then [`Signed::verify`], or [`DeliveryToken::verify`] |
//! | receipt, log ack, log-read request, admin command, card certificate | `X::sign(&key, &mut buf)` | `X::decode` / `X::verify(bytes, &key, &limits)` |
//! | policy | [`Policy::encode`] | [`Policy::decode`] |
//! | log entry | [`LogEntry::encode`] -> `[u8; RECORD_LEN]`, [`LogEntry::entry_hash`] | [`LogEntry::decode`] |
//! | log export | [`build_export`] (fixed buffer, records by callback) | `open_export` (std) then `ExportContents::entries` |
//! | any COSE_Sign1 | [`cose::sign1_into`], [`cose::sign1_bytes_into`], [`cose::sign1_detached_into`] | [`CoseSign1::decode`] + [`CoseSign1::verify`] |
//! | with another crypto back-end (the card's platform) | any [`Es256Signer`]; [`build_export_with`] and an [`ExportCrypto`] | every `verify` has a `verify_with` taking a [`Verifier`] ([`SoftwareVerifier`]: this crate's code) |
//! | card info, pending update, log status, server and originator lists, DM node table | [`contract`]: `X::encode` | [`contract`]: `X::decode`; node values by Format: `contract::Node::decode_value` (std) |
//! | keys | [`PublicKey::from_sec1`], [`PublicKey::from_xy`], `From<&SigningKey>` | `pem` (std): PKCS#8 / SPKI PEM files |
//! | hashing | [`Sha256Stream`], [`sha256`], `sha256_reader` (std) | |
//!
//! What it does not do: decide. Whether a server is listed, a nonce fresh, a sequence number
//! high enough, is the card's business (crate `simfota-card`); this crate proves who signed
//! what and that the bytes are well-formed.
#![no_std]

#[cfg(feature = "std")]
extern crate std;

mod cbor;
pub mod contract;
pub mod cose;
mod error;
pub mod export;
mod hash;
mod ids;
mod limits;
pub mod log;
pub mod objects;
#[cfg(feature = "std")]
pub mod pem;
pub mod suit;
pub mod token;

pub use cose::{
    CoseSign1, Es256Signer, PublicKey, Signed, SignedPayload, SoftwareVerifier, Verified, Verifier,
};
#[cfg(feature = "ring")]
pub use cose::{RingSigningKey, RingVerifier};
pub use error::{Error, Result};
#[cfg(feature = "std")]
pub use export::{ExportContents, open_export};
pub use export::{ExportCrypto, ExportHeader, PinTries, build_export, build_export_with};
#[cfg(feature = "std")]
pub use hash::sha256_reader;
pub use hash::{Sha256Stream, sha256};
pub use ids::{
    ChargingRef, Digest, Iccid, Imei, IssuerId, Nonce, OriginatorId, ServerId, ShortText, UpdateId,
    Uuid,
};
pub use limits::Limits;
pub use log::{DenyReason, Event, FumoResult, LogEntry, RefusalTally, Unverified};
pub use objects::{
    AdminChange, AdminCommand, CardCertificate, IntegrityMode, LogAck, LogReadRequest, Policy,
    Receipt, Rights, UnauthorizedRule,
};
pub use token::DeliveryToken;

/// The RustCrypto P-256 crate this crate is built on (keys, ECDSA, ECDH types).
pub use p256;
/// The RNG trait `build_export` needs.
pub use rand_core;
