//! The agent against the real DM server (`simfota-server`, SQLite in a temporary folder) on
//! loopback: a device registered through the REST API, a package uploaded, a campaign; the
//! agent's check-update runs the update with the in-process card, and the server records the
//! result with the card's receipt verified.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::real_server::RealServer;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::{FileCard, InProcessChannel};

#[test]
fn check_update_against_the_real_dm_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = RealServer::start(d);
    let state = d.join("CARD.state");
    server.personalize_card(&state);
    server.publish_update();
    let dcfg = server.device_config(d, &format!("state = \"{}\"", state.display()));
    let client = CardClient::new(InProcessChannel::new(
        FileCard::open(&state).unwrap(),
        "in-process",
    ));
    server.check_update_succeeds(&dcfg, client);
    // Without a provisioned nonce the device's first message was challenged.
    assert!(server.auth_failures() >= 1);
    server.shutdown();
}

/// `[credentials] nonce`, the same nonce given to the server at registration: the device's
/// first message authenticates, no challenge, no failed authentication counted.
#[test]
fn a_provisioned_nonce_authenticates_the_first_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = RealServer::start(d);
    let state = d.join("CARD.state");
    server.personalize_card(&state);
    let nonce = "cHJvdmlzaW9uZWQgbm9uY2U="; // "provisioned nonce"
    server.register_device_with(Some(nonce));
    server.publish(&common::content(200_000, 2), "2.0", 2, "c1");
    let mut dcfg = server.device_config(d, &format!("state = \"{}\"", state.display()));
    dcfg.credentials.nonce = Some(nonce.to_owned());
    let client = CardClient::new(InProcessChannel::new(
        FileCard::open(&state).unwrap(),
        "in-process",
    ));
    server.check_update_succeeds(&dcfg, client);
    assert_eq!(server.auth_failures(), 0);
    server.shutdown();
}
