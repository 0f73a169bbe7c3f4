//! The agent against the real DM server (`simfota-server`, SQLite in a temporary folder) on
//! loopback with the card in a PC/SC reader: the applet of a state file is served into the
//! system's pcscd as a virtual card (vsmartcard vpcd), and the agent reaches it by reader name.
//! A device registered through the REST API, a package uploaded, a campaign; the agent's
//! check-update runs the update, and the server records the result with the card's receipt
//! verified. Needs `SIMFOTA_PCSCD=1` (pcscd running with vpcd).

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::real_server::RealServer;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::VpcdServer;
use simfota_cardlink::{FileCard, LinkError};

const VPCD: &str = "127.0.0.1:35963";
const READER: &str = "Virtual PCD 00 00";

fn pcscd_or_skip(test: &str) -> bool {
    if std::env::var("SIMFOTA_PCSCD").as_deref() != Ok("1") {
        if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
            panic!("{test}: pcscd with vsmartcard-vpcd is required (SIMFOTA_PCSCD=1 not set)");
        }
        println!(
            "skipped: {test}: pcscd with vsmartcard-vpcd missing (set SIMFOTA_PCSCD=1 when it runs; skipped under SIMFOTA_SKIP_EXTERNAL=1)"
        );
        return false;
    }
    true
}

/// Polls the reader until `done` holds for what a connection attempt answers (pcscd notices a
/// vpcd card arriving or leaving only on its next poll).
fn wait_for(done: impl Fn(&Result<PcscChannel, LinkError>) -> bool) -> Option<PcscChannel> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let r = PcscChannel::connect(Some(READER));
        if done(&r) {
            return r.ok();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{READER}: the card did not reach the expected state in time");
}

#[test]
fn pcsc_check_update_against_the_real_dm_server() {
    if !pcscd_or_skip("pcsc_check_update_against_the_real_dm_server") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = RealServer::start(d);
    let state = d.join("CARD.state");
    // Personalized in process; from here on the card lives behind pcscd.
    server.personalize_card(&state);
    let mut card = FileCard::open(&state).unwrap();
    let vpcd = VpcdServer::connect(VPCD).expect("vpcd listens (pcscd with vsmartcard-vpcd)");
    let pull = vpcd.stop_handle();
    let reader = std::thread::spawn(move || {
        let _ = vpcd.serve(&mut card, &mut |_| {});
    });
    let channel = wait_for(|r| r.is_ok()).unwrap();

    server.publish_update();
    let dcfg = server.device_config(d, &format!("reader = \"{READER}\""));
    server.check_update_succeeds(&dcfg, CardClient::new(channel));
    server.shutdown();
    pull.stop();
    reader.join().unwrap();
    wait_for(|r| matches!(r, Err(LinkError::NoCard { .. })));
}
