//! The card behind a cellular modem: the real applet as the SIM of the modem emulator on a
//! pseudo-terminal, reached through the AT commands of 3GPP TS 27.007 over that serial port
//! (AT+CCHO/AT+CGLA, the AT+CSIM fallback), with the difficult modems: echo that stays on,
//! unsolicited result codes in every answer, a channel dropped in the middle of an update, a
//! modem that stops answering.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/flows.rs"]
mod flows;

use std::time::{Duration, Instant};

use simfota_card::{AID, CardMemory, Reason};
use simfota_cardlink::modem::at::{self, CmeCode};
use simfota_cardlink::modem::emulator::{ChannelDrop, Echo, EmulatorOptions, ModemEmulator};
use simfota_cardlink::modem::{AtMode, ModemChannel, ModemError, ModemOptions};
use simfota_cardlink::{AppletCard, CardClient, ChannelMode, ClientError, LinkError};

type Card = AppletCard<CardMemory>;

fn emulator(card: Card, options: EmulatorOptions) -> ModemEmulator<Card> {
    ModemEmulator::start(card, options).unwrap()
}

fn open(modem: &ModemEmulator<Card>, options: ModemOptions) -> CardClient<ModemChannel> {
    let channel = ModemChannel::open(modem.path(), options).unwrap();
    // What the device does with a modem: a logical channel, the modem's or its own.
    CardClient::new(channel).with_channel_mode(ChannelMode::Logical)
}

fn blank() -> Card {
    AppletCard::new(CardMemory::new())
}

/// A card personalized through a first modem, given back for the next one.
fn personalized(world: &flows::World) -> Card {
    let modem = emulator(blank(), EmulatorOptions::default());
    let mut c = open(&modem, ModemOptions::default());
    c.personalize(&world.issuer, &world.personalization())
        .unwrap();
    drop(c);
    modem.stop().unwrap()
}

fn modem_error(e: ClientError) -> ModemError {
    match e {
        ClientError::Link(LinkError::Modem(m)) => m,
        other => panic!("expected a modem error, got {other:?}"),
    }
}

/// The `<length>` of every AT+CGLA / AT+CSIM line sent counts its hex characters.
fn assert_lengths_count_hex_characters(commands: &[String]) {
    for line in commands {
        let args = line.strip_prefix("AT+CSIM=").or_else(|| {
            line.strip_prefix("AT+CGLA=")
                .map(|a| a.split_once(',').unwrap().1)
        });
        if let Some(args) = args {
            at::parse_length_and_hex(args).unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
}

#[test]
fn select_and_get_data_through_cgla() {
    let world = flows::World::new();
    let modem = emulator(personalized(&world), EmulatorOptions::default());
    let mut c = open(&modem, ModemOptions::default());
    assert_eq!(c.link().channel().at_mode(), AtMode::Cgla);
    assert_eq!(c.link().channel().session(), Some(1));
    let selected = c.select().unwrap();
    assert_eq!(
        selected.lifecycle,
        simfota_cardlink::client::Lifecycle::Operational
    );
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
    // The modem's channel is the applet's: the client opened none of its own.
    assert_eq!(c.channel_number(), 0);
    let commands = modem.commands();
    assert_eq!(
        &commands[..3],
        &[
            "ATE0".to_owned(),
            "AT+CMEE=1".to_owned(),
            format!("AT+CCHO=\"{}\"", at::hex(&AID)),
        ]
    );
    // SELECT goes on the modem's channel with CLA 00 (the modem puts its number in).
    assert_eq!(
        commands[3],
        format!(
            "AT+CGLA=1,{},\"00A40400{:02X}{}00\"",
            (6 + AID.len()) * 2,
            AID.len(),
            at::hex(&AID)
        )
    );
    assert!(commands[3..].iter().all(|l| l.starts_with("AT+CGLA=1,")));
    assert_lengths_count_hex_characters(&commands);
}

#[test]
fn every_flow_through_cgla() {
    let world = flows::World::new();
    let modem = emulator(blank(), EmulatorOptions::default());
    let mut c = open(&modem, ModemOptions::default());
    flows::every_flow(&mut c, &world);
    flows::pin_to_blocking(&mut c);
    assert_eq!(c.channel_number(), 0);
    let stats = c.link().stats();
    drop(c);
    let commands = modem.commands();
    // Short APDUs only (chaining + GET RESPONSE), no MANAGE CHANNEL from the host, and the
    // channel given back when the link closed.
    assert!(!c_uses_csim(&commands));
    assert!(!commands.iter().any(|l| l.contains(",\"0070")));
    assert_eq!(commands.last().map(String::as_str), Some("AT+CCHC=1"));
    assert_lengths_count_hex_characters(&commands);
    eprintln!(
        "every flow through AT+CGLA: {} command lines, {stats:?}",
        commands.len()
    );
}

fn c_uses_csim(commands: &[String]) -> bool {
    commands.iter().any(|l| l.starts_with("AT+CSIM"))
}

/// A modem without AT+CCHO (it answers ERROR): the link falls back to AT+CSIM, and the client
/// opens its own logical channel through it, leaving the basic channel to the modem.
#[test]
fn without_logical_channels_the_link_falls_back_to_csim() {
    let world = flows::World::new();
    let options = EmulatorOptions {
        no_logical_channels: true,
        ..EmulatorOptions::default()
    };
    let modem = emulator(blank(), options.clone());
    let mut c = open(&modem, ModemOptions::default());
    assert_eq!(c.link().channel().at_mode(), AtMode::Csim);
    assert_eq!(c.link().channel().session(), None);
    flows::every_flow(&mut c, &world);
    assert_eq!(c.channel_number(), 1);
    let commands = modem.commands();
    assert!(commands[2].starts_with("AT+CCHO="));
    assert!(commands[3..].iter().all(|l| l.starts_with("AT+CSIM=")));
    // MANAGE CHANNEL open on the basic channel, then every command on channel 1.
    assert_eq!(commands[3], "AT+CSIM=10,\"0070000001\"");
    assert_lengths_count_hex_characters(&commands);

    // A reset closes the channel the client opened through AT+CSIM; reopen opens a new one.
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.reset(simfota_cardlink::ResetKind::Warm).unwrap();
    assert_eq!(
        modem.commands().last().map(String::as_str),
        Some("AT+CSIM=8,\"00708001\"")
    );
    c.reopen(Some(&imei)).unwrap();
    assert_eq!(c.channel_number(), 1);
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);

    // at_mode = "cgla" on such a modem: a clear refusal instead of a fallback.
    let strict = ModemChannel::open(
        modem.path(),
        ModemOptions {
            at_mode: AtMode::Cgla,
            ..ModemOptions::default()
        },
    );
    drop(c);
    match strict {
        Err(e @ ModemError::NoLogicalChannel { .. }) => {
            let text = e.to_string();
            assert!(text.contains("csim") && text.contains("ERROR"), "{text}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a modem without AT+CCHO opened a logical channel"),
    }
}

/// `at_mode = "csim"` never tries AT+CCHO.
#[test]
fn csim_mode_uses_the_basic_access_only() {
    let world = flows::World::new();
    let modem = emulator(personalized(&world), EmulatorOptions::default());
    let mut c = open(
        &modem,
        ModemOptions {
            at_mode: AtMode::Csim,
            ..ModemOptions::default()
        },
    );
    assert_eq!(c.link().channel().at_mode(), AtMode::Csim);
    c.select().unwrap();
    assert_eq!(c.channel_number(), 1);
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
    assert!(!modem.commands().iter().any(|l| l.starts_with("AT+CC")));
}

/// Echo that ATE0 does not stop, and unsolicited result codes before every answer and between
/// every answer and its OK: the whole command set still runs, none of them is taken for an
/// answer.
#[test]
fn echo_and_unsolicited_result_codes_are_skipped() {
    let world = flows::World::new();
    let modem = emulator(
        blank(),
        EmulatorOptions {
            echo: Echo::Always,
            unsolicited_every: Some(1),
            ..EmulatorOptions::default()
        },
    );
    let mut c = open(&modem, ModemOptions::default());
    flows::every_flow(&mut c, &world);
    let skipped = c.link().channel().unsolicited_skipped();
    let lines = modem.commands().len() as u64;
    // One before each answer, one more inside each answer that carries information text.
    assert!(
        skipped >= lines,
        "{skipped} skipped for {lines} command lines"
    );
}

/// The modem drops the channel in the middle of an update (the card is reset right after the
/// first link of AUTHORIZE UPDATE ran): a typed error naming the cause, nothing sent again on
/// the lost session, no silent retry; `reopen` opens a new session, where the card's own
/// state says what happened (the nonce died with the reset).
#[test]
fn a_card_reset_mid_update_is_a_clear_error_and_nothing_is_retried() {
    let world = flows::World::new();
    let card = personalized(&world);
    // AT+CGLA 1 SELECT, 2 BIND TERMINAL, 3 GET CHALLENGE, 4 the first link of AUTHORIZE.
    let modem = emulator(
        card,
        EmulatorOptions {
            drop_channel: Some((4, ChannelDrop::CardReset)),
            ..EmulatorOptions::default()
        },
    );
    let mut c = open(&modem, ModemOptions::default());
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.select().unwrap();
    c.bind_terminal(&imei).unwrap();
    let payload = vec![5u8; 300];
    let envelope = world.envelope(&payload, 1);
    let nonce = c.get_nonce().unwrap();
    let token = world.token(&world.server, nonce, &envelope, "u1");
    let err = modem_error(c.authorize(&token, &envelope).unwrap_err());
    match &err {
        ModemError::ChannelLost {
            session: 1, cause, ..
        } => {
            assert_eq!(cause.cme(), Some(&CmeCode::Numeric(13)));
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("session 1")
            && text.contains("+CME ERROR: 13 (SIM failure)")
            && text.contains("may or may not have run"),
        "{text}"
    );
    let sent = modem.commands().len();
    // Later commands fail the same way without reaching the modem.
    let again = modem_error(c.card_info().unwrap_err());
    assert!(matches!(again, ModemError::ChannelLost { session: 1, .. }));
    assert_eq!(
        modem.commands().len(),
        sent,
        "nothing sent on a lost session"
    );

    c.reopen(Some(&imei)).unwrap();
    assert_eq!(c.link().channel().session(), Some(2));
    let after: Vec<String> = modem.commands()[sent..].to_vec();
    assert_eq!(after[0], "ATE0");
    assert!(after.iter().any(|l| l == "AT+CCHC=1"), "{after:?}");
    // The first APDU on the new session is SELECT: AUTHORIZE was not sent again.
    let first_apdu = after.iter().find(|l| l.starts_with("AT+CGLA")).unwrap();
    assert!(first_apdu.starts_with("AT+CGLA=2,") && first_apdu.contains("\"00A40400"));
    // The card lost its nonce with the reset: the old token is refused by the card.
    let refused = c.authorize(&token, &envelope).unwrap_err();
    assert_eq!(refused.reason(), Some(Reason::NonceUnavailable));
    // And a fresh authorization goes through on the new session.
    let nonce = c.get_nonce().unwrap();
    let token = world.token(&world.server, nonce, &envelope, "u1");
    c.authorize(&token, &envelope).unwrap();
}

/// The modem closes the channel itself (`+CME ERROR: 21` to the session from then on) or the
/// card is pulled (`+CME ERROR: 10`): each a typed error with its §9.2 code.
#[test]
fn a_closed_channel_or_a_removed_card_is_named() {
    let world = flows::World::new();
    let card = personalized(&world);
    let modem = emulator(
        card,
        EmulatorOptions {
            drop_channel: Some((2, ChannelDrop::Closed)),
            ..EmulatorOptions::default()
        },
    );
    let mut c = open(&modem, ModemOptions::default());
    c.select().unwrap();
    let err = modem_error(c.card_info().unwrap_err());
    assert_eq!(err.cme(), Some(&CmeCode::Numeric(21)), "{err}");
    assert!(err.to_string().contains("invalid index"), "{err}");
    c.reopen(None).unwrap();
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
    drop(c);
    let card = modem.stop().unwrap();

    let modem = emulator(
        card,
        EmulatorOptions {
            drop_channel: Some((2, ChannelDrop::CardRemoved)),
            ..EmulatorOptions::default()
        },
    );
    let mut c = open(&modem, ModemOptions::default());
    c.select().unwrap();
    let err = modem_error(c.card_info().unwrap_err());
    assert_eq!(err.cme(), Some(&CmeCode::Numeric(10)), "{err}");
    // No card, no new channel: reopen says so.
    let err = modem_error(c.reopen(None).unwrap_err());
    match &err {
        ModemError::Cme { command, code, .. } => {
            assert_eq!((*command, code), ("AT+CCHO", &CmeCode::Numeric(10)));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("SIM not inserted"), "{err}");
}

/// A modem that stops answering: the configured time-out, then a clear error.
#[test]
fn a_silent_modem_times_out() {
    let timeout = Duration::from_millis(300);
    let options = ModemOptions {
        timeout,
        ..ModemOptions::default()
    };
    // Silent from the start: opening fails on ATE0.
    let modem = emulator(
        blank(),
        EmulatorOptions {
            mute_after: Some(0),
            ..EmulatorOptions::default()
        },
    );
    let started = Instant::now();
    let err = ModemChannel::open(modem.path(), options.clone())
        .err()
        .unwrap();
    let waited = started.elapsed();
    assert!(
        matches!(
            err,
            ModemError::Timeout {
                command: "ATE0",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("did not answer ATE0 within 300 ms"),
        "{err}"
    );
    eprintln!("silent modem: gave up after {waited:?} (time-out {timeout:?})");

    // Silent after the channel is open: the APDU's session is lost.
    let modem = emulator(
        blank(),
        EmulatorOptions {
            mute_after: Some(3),
            ..EmulatorOptions::default()
        },
    );
    let mut c = open(&modem, options);
    let err = modem_error(c.select().unwrap_err());
    match err {
        ModemError::ChannelLost { cause, .. } => {
            assert!(matches!(
                *cause,
                ModemError::Timeout {
                    command: "AT+CGLA",
                    ..
                }
            ));
        }
        other => panic!("{other}"),
    }
}

/// A reset over AT+CGLA closes the modem's channel and opens a new one: the applet's session
/// on it (binding, nonce, PIN status) is gone, the card's persistent state is not.
#[test]
fn a_reset_over_cgla_is_a_new_channel() {
    let world = flows::World::new();
    let modem = emulator(personalized(&world), EmulatorOptions::default());
    let mut c = open(&modem, ModemOptions::default());
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.reopen(Some(&imei)).unwrap();
    c.verify_pin(flows::PIN).unwrap();
    c.reset(simfota_cardlink::ResetKind::Cold).unwrap();
    assert_eq!(c.link().channel().session(), Some(2));
    c.reopen(Some(&imei)).unwrap();
    assert_eq!(
        c.pin_status().unwrap(),
        simfota_cardlink::client::PinStatus::TriesLeft(3)
    );
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
    assert!(modem.commands().iter().any(|l| l == "AT+CCHC=1"));
}
