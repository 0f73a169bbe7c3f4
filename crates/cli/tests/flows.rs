//! The full-flow suite on SQLite with the in-process card: every flow of design §4 and every
//! attack of §5, end to end with the real `simfota` binaries over loopback (scenarios in
//! `flows/scenarios.rs`; the matrix and what each test asserts: docs/flows.md).

// Test functions: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "flows/mod.rs"]
mod support;

use support::scenarios::{self as s, Unauthorized};
use support::world::SQLITE_INPROCESS as CELL;

#[test]
fn flow_full_update_and_log_read_sqlite_inprocess() {
    const T: &str = "flow_full_update_and_log_read_sqlite_inprocess";
    s::full_update_and_log_read(T, CELL);
}

#[test]
fn flow_update_through_signed_package_urls_sqlite_inprocess() {
    const T: &str = "flow_update_through_signed_package_urls_sqlite_inprocess";
    s::update_through_signed_package_urls(T, CELL);
}

#[test]
fn flow_delta_update_sqlite_inprocess() {
    const T: &str = "flow_delta_update_sqlite_inprocess";
    s::delta_update(T, CELL);
}

#[test]
fn flow_card_digest_update_sqlite_inprocess() {
    const T: &str = "flow_card_digest_update_sqlite_inprocess";
    s::card_digest_update(T, CELL);
}

#[test]
fn flow_unauthorized_server_refuse_sqlite_inprocess() {
    const T: &str = "flow_unauthorized_server_refuse_sqlite_inprocess";
    s::unauthorized_server(T, CELL, Unauthorized::Refuse);
}

#[test]
fn flow_unauthorized_server_confirm_sqlite_inprocess() {
    const T: &str = "flow_unauthorized_server_confirm_sqlite_inprocess";
    s::unauthorized_server(T, CELL, Unauthorized::Confirm);
}

#[test]
fn flow_unauthorized_server_confirm_with_pin_sqlite_inprocess() {
    const T: &str = "flow_unauthorized_server_confirm_with_pin_sqlite_inprocess";
    s::unauthorized_server(T, CELL, Unauthorized::ConfirmWithPin);
}

#[test]
fn flow_notification_sqlite_inprocess() {
    const T: &str = "flow_notification_sqlite_inprocess";
    s::notification(T, CELL);
}

#[test]
fn flow_admin_relay_sqlite_inprocess() {
    const T: &str = "flow_admin_relay_sqlite_inprocess";
    s::admin_relay(T, CELL);
}

#[test]
fn flow_token_attacks_sqlite_inprocess() {
    const T: &str = "flow_token_attacks_sqlite_inprocess";
    s::token_attacks(T, CELL);
}

#[test]
fn flow_package_attacks_sqlite_inprocess() {
    const T: &str = "flow_package_attacks_sqlite_inprocess";
    s::package_attacks(T, CELL);
}

#[test]
fn flow_log_attacks_sqlite_inprocess() {
    const T: &str = "flow_log_attacks_sqlite_inprocess";
    s::log_attacks(T, CELL);
}

#[test]
fn flow_forged_result_sqlite_inprocess() {
    const T: &str = "flow_forged_result_sqlite_inprocess";
    s::forged_result(T, CELL);
}

#[test]
fn flow_pin_brute_force_sqlite_inprocess() {
    const T: &str = "flow_pin_brute_force_sqlite_inprocess";
    s::pin_brute_force(T, CELL);
}

#[test]
fn flow_log_full_sqlite_inprocess() {
    const T: &str = "flow_log_full_sqlite_inprocess";
    s::log_full(T, CELL);
}

#[test]
fn flow_power_cut_during_install_sqlite_inprocess() {
    const T: &str = "flow_power_cut_during_install_sqlite_inprocess";
    s::power_cut_during_install(T, CELL);
}

#[test]
fn flow_server_crash_mid_campaign_sqlite_inprocess() {
    const T: &str = "flow_server_crash_mid_campaign_sqlite_inprocess";
    s::server_crash_mid_campaign(T, CELL);
}

#[test]
fn flow_malformed_and_flood_sqlite_inprocess() {
    const T: &str = "flow_malformed_and_flood_sqlite_inprocess";
    s::malformed_and_flood(T, CELL);
}
