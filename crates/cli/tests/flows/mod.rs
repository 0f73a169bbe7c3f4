//! The full-flow suite's scenarios (design §4 flows, §5 attacks), each run with the real
//! `simfota` binaries over loopback and parameterized by the matrix cell: storage (SQLite,
//! PostgreSQL) and card path (in process, through pcscd). `tests/flows.rs` and
//! `tests/pcsc_flows.rs` hold one thin `#[test]` per scenario and cell; `docs/flows.md` maps
//! each flow and attack to its tests and the three facts each asserts: what the user sees,
//! the FUMO result code the server records, and the card log entry that proves it.

// Test support: a failed expectation is a test failure.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::too_many_lines
)]

pub mod relay;
pub mod scenarios;
pub mod world;
