//! Malformed short frames through the real pcscd and vpcd, sent with the `pcsc` crate as any
//! PC/SC client would: each gets an ISO/IEC 7816-4 status word (`6700`, wrong length) and the
//! reader keeps working; a normal SELECT and command follow. The one-byte frames `00`, `01`
//! and `02` are the ones vpcd frames like its power events (see `simfota_cardlink::vpcd`).
//! Needs `SIMFOTA_PCSCD=1` (pcscd running with vsmartcard-vpcd).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use simfota_card::CardMemory;
use simfota_cardlink::AppletCard;
use support::{READER, Served};

const SELECT: [u8; 15] = [
    0x00, 0xA4, 0x04, 0x00, 0x09, 0xF0, 0x73, 0x69, 0x6D, 0x66, 0x6F, 0x74, 0x61, 0x01, 0x00,
];

fn connect() -> pcsc::Card {
    let ctx = pcsc::Context::establish(pcsc::Scope::User).expect("pcscd answers");
    let reader = std::ffi::CString::new(READER).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ctx.connect(&reader, pcsc::ShareMode::Shared, pcsc::Protocols::ANY) {
            Ok(card) => return card,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot connect to {READER}: {e}"),
        }
    }
}

/// Sends `apdu` and returns the status word, failing if the answer takes longer than `within`.
fn sw(card: &pcsc::Card, apdu: &[u8], within: Duration) -> u16 {
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    let answer = card
        .transmit(apdu, &mut buf)
        .unwrap_or_else(|e| panic!("{apdu:02X?}: {e}"));
    assert!(
        started.elapsed() < within,
        "{apdu:02X?} took {:?}",
        started.elapsed()
    );
    match answer {
        [.., sw1, sw2] => u16::from_be_bytes([*sw1, *sw2]),
        short => panic!("{apdu:02X?}: answer without a status word: {short:02X?}"),
    }
}

#[test]
fn pcsc_malformed_short_frames_get_6700_and_the_reader_keeps_working() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_malformed_short_frames_get_6700") else {
        return;
    };
    let _served = Served::start(AppletCard::new(CardMemory::new()));
    let card = connect();
    let quick = Duration::from_secs(2);
    // Held for simfota_cardlink::vpcd::AMBIGUOUS_WAIT before they are answered.
    let held = simfota_cardlink::vpcd::AMBIGUOUS_WAIT + Duration::from_secs(3);
    let frames: [(&[u8], Duration); 15] = [
        // One byte: vpcd's power-event codes, and one that is none.
        (&[0x00], held),
        (&[0x01], held),
        (&[0x02], held),
        (&[0x80], quick),
        // Shorter than the 4-byte header.
        (&[0x80, 0xCA], quick),
        (&[0x80, 0xCA, 0x01], quick),
        // Short Lc larger, then smaller, than the data that follows.
        (&[0x80, 0xCA, 0x01, 0x01, 0x05, 0x01, 0x02], quick),
        (&[0x80, 0xCA, 0x01, 0x01, 0x01, 0xAA, 0xBB, 0xCC], quick),
        // A lone 00 where Lc would be, followed by one byte.
        (&[0x80, 0xCA, 0x01, 0x01, 0x00, 0x05], quick),
        // Extended headers cut short: the marker and one length byte, or Lc without its data.
        (&[0x80, 0xCA, 0x01, 0x01, 0x00, 0x01], quick),
        (&[0x80, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x05, 0xAA], quick),
        (
            &[0x80, 0xCA, 0x01, 0x01, 0x00, 0x01, 0x00, 0xAA, 0xBB],
            quick,
        ),
        // Extended Lc of zero with data; extended Lc and data with a one-byte Le.
        (&[0x80, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x00, 0xAA], quick),
        (
            &[0x80, 0xCA, 0x01, 0x01, 0x00, 0x00, 0x01, 0xAA, 0x00],
            quick,
        ),
        // And once more a power-event code, after the others.
        (&[0x00], held),
    ];
    for (apdu, within) in frames {
        assert_eq!(sw(&card, apdu, within), 0x6700, "{apdu:02X?}");
    }
    // Not sent: an empty command. pcscd passes it to vpcd, which then sends nothing to the
    // card and waits for an answer; the card, seeing no message, has nothing to answer (see
    // the `vpcd` module documentation).
    // The link goes on: SELECT, then a command of the applet (GET DATA of the card info).
    assert_eq!(sw(&card, &SELECT, quick), 0x9000);
    let mut buf = [0u8; 1024];
    let answer = card
        .transmit(&[0x80, 0xCA, 0x01, 0x01, 0x00], &mut buf)
        .unwrap();
    assert!(answer.len() > 2, "{answer:02X?}");
    assert_eq!(answer[answer.len() - 2..], [0x90, 0x00], "{answer:02X?}");
}
