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
    server.shutdown();
}
