//! The agent with its card in a cellular modem (`[card] modem = ...`): the applet of a state
//! file is the SIM of the modem emulator on a pseudo-terminal, the agent reaches it through AT
//! commands on that serial port, and runs a whole update against the real DM server on
//! loopback; the server records the result with the card's receipt verified. Once through
//! the modem's logical channel (AT+CCHO/AT+CGLA), once through AT+CSIM on a channel the
//! agent opens itself.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::real_server::RealServer;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::modem::emulator::{EmulatorOptions, ModemEmulator};
use simfota_cardlink::modem::{AtMode, ModemChannel};
use simfota_cardlink::{ChannelMode, FileCard};

fn check_update_through_a_modem(at_mode: &str, want: AtMode) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = RealServer::start(d);
    let state = d.join("CARD.state");
    server.personalize_card(&state);
    server.publish_update();
    let modem = ModemEmulator::start(
        FileCard::open(&state).unwrap(),
        EmulatorOptions {
            // A talkative modem: registration and message indications between the answers.
            unsolicited_every: Some(7),
            ..EmulatorOptions::default()
        },
    )
    .unwrap();
    let dcfg = server.device_config(
        d,
        &format!(
            "modem = \"{}\"\nat_mode = \"{at_mode}\"\nmodem_timeout_ms = 10000",
            modem.path().display()
        ),
    );
    // As `simfota device` opens it (crates/cli/src/device.rs).
    let channel =
        ModemChannel::open(dcfg.card.modem.as_ref().unwrap(), dcfg.card.modem_options()).unwrap();
    assert_eq!(channel.at_mode(), want);
    assert_eq!(dcfg.card.mode(), ChannelMode::Logical);
    server.check_update_succeeds(
        &dcfg,
        CardClient::new(channel).with_channel_mode(dcfg.card.mode()),
    );
    let commands = modem.commands();
    let apdus = commands
        .iter()
        .filter(|l| l.starts_with("AT+CGLA=") || l.starts_with("AT+CSIM="))
        .count();
    eprintln!(
        "update through the modem ({at_mode}): {} AT command lines, {apdus} APDUs",
        commands.len()
    );
    match want {
        AtMode::Csim => assert!(!commands.iter().any(|l| l.starts_with("AT+CGLA"))),
        _ => assert!(!commands.iter().any(|l| l.starts_with("AT+CSIM"))),
    }
    server.shutdown();
}

#[test]
fn check_update_with_the_card_in_a_modem_over_cgla() {
    check_update_through_a_modem("auto", AtMode::Cgla);
}

#[test]
fn check_update_with_the_card_in_a_modem_over_csim() {
    check_update_through_a_modem("csim", AtMode::Csim);
}
