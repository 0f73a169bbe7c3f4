//! The simfota device agent: what runs on the handset or IoT device.
//!
//! It speaks OMA DM 1.2 to the operator's DM server, executes FUMO `DownloadAndUpdate`
//! (OMA-TS-DM-FUMO-V1_0), and lets the subscriber's card decide: the card authorizes each update
//! before the bulk download, checks the payload's integrity (or compares the digest the device
//! computed), logs the outcome and signs a receipt. The agent is not trusted by the card or the
//! server; it is built to survive crashes and power cuts without losing or repeating a result.
//!
//! Layers, each usable alone:
//! - [`config`]: `DEVICE.toml` and the data folder layout.
//! - [`download`]: resumable HTTP downloads (Range, ETag / If-Range).
//! - [`progress`]: the progress of downloads and installs: a bar on a terminal, plain lines
//!   elsewhere.
//! - [`slots`]: the A/B slot installer with a boot-control record, boot check and rollback.
//! - [`fumo`]: the persistent FUMO job (stages, FUMO `State` values), crash-safe.
//! - [`outcome`]: every way an update ends and its FUMO result code.
//! - [`prompt`]: asking the user about an unauthorized server (`--yes`, `--no`, `--pin-file`).
//!
//! What it does not do: it holds no key the card or the server relies on, and it never decides
//! on its own whether an update is allowed.

pub mod agent;
pub mod cardnodes;
pub mod config;
pub mod dm;
pub mod download;
mod fsutil;
pub mod fumo;
pub mod outcome;
pub mod progress;
pub mod prompt;
pub mod slots;
pub mod update;
