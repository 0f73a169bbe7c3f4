//! The full-flow suite on PostgreSQL with the card served into pcscd (vpcd reader "Virtual
//! PCD 00 00"): the same scenarios as `flows.rs` (see `flows/scenarios.rs`, docs/flows.md).
//! Needs `SIMFOTA_PCSCD=1` and PostgreSQL (`SIMFOTA_POSTGRES_URL`); without them each test
//! fails, or prints "skipped: ..." under `SIMFOTA_SKIP_EXTERNAL=1`. The `pcsc_` tests run one at a
//! time (.config/nextest.toml): they share the reader.

// Test functions: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "flows/mod.rs"]
mod support;

use support::scenarios::{self as s, Unauthorized};
use support::world::POSTGRES_PCSCD as CELL;

#[test]
fn pcsc_flow_full_update_and_log_read_postgres() {
    const T: &str = "pcsc_flow_full_update_and_log_read_postgres";
    s::full_update_and_log_read(T, CELL);
}

#[test]
fn pcsc_flow_delta_update_postgres() {
    const T: &str = "pcsc_flow_delta_update_postgres";
    s::delta_update(T, CELL);
}

#[test]
fn pcsc_flow_card_digest_update_postgres() {
    const T: &str = "pcsc_flow_card_digest_update_postgres";
    s::card_digest_update(T, CELL);
}

#[test]
fn pcsc_flow_unauthorized_server_refuse_postgres() {
    const T: &str = "pcsc_flow_unauthorized_server_refuse_postgres";
    s::unauthorized_server(T, CELL, Unauthorized::Refuse);
}

#[test]
fn pcsc_flow_unauthorized_server_confirm_postgres() {
    const T: &str = "pcsc_flow_unauthorized_server_confirm_postgres";
    s::unauthorized_server(T, CELL, Unauthorized::Confirm);
}

#[test]
fn pcsc_flow_unauthorized_server_confirm_with_pin_postgres() {
    const T: &str = "pcsc_flow_unauthorized_server_confirm_with_pin_postgres";
    s::unauthorized_server(T, CELL, Unauthorized::ConfirmWithPin);
}

#[test]
fn pcsc_flow_notification_postgres() {
    const T: &str = "pcsc_flow_notification_postgres";
    s::notification(T, CELL);
}

#[test]
fn pcsc_flow_admin_relay_postgres() {
    const T: &str = "pcsc_flow_admin_relay_postgres";
    s::admin_relay(T, CELL);
}

#[test]
fn pcsc_flow_token_attacks_postgres() {
    const T: &str = "pcsc_flow_token_attacks_postgres";
    s::token_attacks(T, CELL);
}

#[test]
fn pcsc_flow_package_attacks_postgres() {
    const T: &str = "pcsc_flow_package_attacks_postgres";
    s::package_attacks(T, CELL);
}

#[test]
fn pcsc_flow_log_attacks_postgres() {
    const T: &str = "pcsc_flow_log_attacks_postgres";
    s::log_attacks(T, CELL);
}

#[test]
fn pcsc_flow_forged_result_postgres() {
    const T: &str = "pcsc_flow_forged_result_postgres";
    s::forged_result(T, CELL);
}

#[test]
fn pcsc_flow_pin_brute_force_postgres() {
    const T: &str = "pcsc_flow_pin_brute_force_postgres";
    s::pin_brute_force(T, CELL);
}

#[test]
fn pcsc_flow_log_full_postgres() {
    const T: &str = "pcsc_flow_log_full_postgres";
    s::log_full(T, CELL);
}

#[test]
fn pcsc_flow_power_cut_during_install_postgres() {
    const T: &str = "pcsc_flow_power_cut_during_install_postgres";
    s::power_cut_during_install(T, CELL);
}

#[test]
fn pcsc_flow_server_crash_mid_campaign_postgres() {
    const T: &str = "pcsc_flow_server_crash_mid_campaign_postgres";
    s::server_crash_mid_campaign(T, CELL);
}

#[test]
fn pcsc_flow_malformed_and_flood_postgres() {
    const T: &str = "pcsc_flow_malformed_and_flood_postgres";
    s::malformed_and_flood(T, CELL);
}

#[test]
fn pcsc_flow_replicas_postgres() {
    const T: &str = "pcsc_flow_replicas_postgres";
    s::replicas(T, CELL);
}
