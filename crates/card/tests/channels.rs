//! Logical channels (ISO/IEC 7816-4 §5.1.1, §11.1.2): each channel has its own selection and
//! session (nonce, bound IMEI, PIN status, consent question, payload stream); closing a
//! channel or a reset drops them; a whole update runs on a channel other than the basic one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{StatusWord, ins};
use simfota_wire::{Event, FumoResult, IntegrityMode, UnauthorizedRule};

/// MANAGE CHANNEL open, the card picking the number.
fn open(card: &mut Card) -> u8 {
    let (d, sw) = card.raw(&[0x00, ins::MANAGE_CHANNEL, 0x00, 0x00, 0x01]);
    assert_eq!(sw, StatusWord::OK, "MANAGE CHANNEL open");
    assert_eq!(d.len(), 1);
    d[0]
}

fn close(card: &mut Card, channel: u8) -> StatusWord {
    card.raw(&[0x00, ins::MANAGE_CHANNEL, 0x80, channel]).1
}

/// Opens a channel, selects the applet and binds the terminal on it.
fn session_on_new_channel(card: &mut Card) -> u8 {
    let ch = open(card);
    card.channel = ch;
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    ch
}

#[test]
fn a_whole_update_runs_on_a_logical_channel() {
    let mut w = World::new();
    let mut card = w.default_card();
    let ch = session_on_new_channel(&mut card);
    assert_eq!(ch, 1);
    let (cti, _receipt) = w.full_update(&mut card, 5);
    // The receipt can be fetched again on that channel, and the log read there.
    assert_eq!(card.receipt(&cti).1, StatusWord::OK);
    let events: Vec<Event> = w.read_all(&mut card).iter().map(|e| e.event).collect();
    assert_eq!(
        events,
        [
            Event::Authorized,
            Event::IntegrityOk,
            Event::Installed(FumoResult::SUCCESSFUL)
        ]
    );
}

#[test]
fn a_whole_update_runs_on_channel_nineteen_in_extended_length() {
    let mut w = World::new();
    let mut card = w.default_card();
    card.extended = true;
    assert_eq!(
        card.raw(&[0x00, ins::MANAGE_CHANNEL, 0x00, 19]).1,
        StatusWord::OK
    );
    card.channel = 19;
    assert_eq!(card.select(), StatusWord::OK);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    w.full_update(&mut card, 3);
    assert_eq!(w.read_all(&mut card).len(), 3);
}

#[test]
fn each_channel_keeps_its_own_nonce() {
    let mut w = World::new();
    let mut card = w.default_card();
    session_on_new_channel(&mut card);
    let (env, md) = w.package(4);
    let cti = w.next_cti();
    let on_one = card.nonce();
    // A challenge on the basic channel does not replace channel 1's nonce.
    card.channel = 0;
    let on_basic = card.nonce();
    assert_ne!(on_basic, on_one);
    card.channel = 1;
    let tok = w.token(&cti, on_one, md);
    assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
    let p = w.payload.clone();
    assert_eq!(card.device_digest(&p), StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
    // The basic channel's nonce outlived all that: the next update uses it.
    card.channel = 0;
    let (env2, md2) = w.package(6);
    let cti2 = w.next_cti();
    let tok2 = w.token(&cti2, on_basic, md2);
    assert_eq!(card.authorize(&tok2, &env2), StatusWord::OK);
}

#[test]
fn the_bound_terminal_and_the_pin_status_are_per_channel() {
    let w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::ConfirmWithPin,
        IntegrityMode::DeviceDigest,
    ));
    assert_eq!(card.verify_pin(PIN), StatusWord::OK);
    let ch = open(&mut card);
    card.channel = ch;
    assert_eq!(card.select(), StatusWord::OK);
    // Not verified on the new channel: its status shows the tries left.
    assert_eq!(
        card.cmd(0x00, ins::VERIFY, 0, 0x81, &[]).1,
        StatusWord::tries_left(3)
    );
    // No terminal bound on it: an update needs BIND TERMINAL on this channel.
    let (env, md) = w.package(2);
    let n = card.nonce();
    let tok = w.token(b"upd-1", n, md);
    assert_eq!(card.authorize(&tok, &env), StatusWord::CONDITIONS);
    // The basic channel still has both.
    card.channel = 0;
    assert_eq!(card.cmd(0x00, ins::VERIFY, 0, 0x81, &[]).1, StatusWord::OK);
}

#[test]
fn a_consent_question_is_answered_on_its_channel() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::ConfirmWithPin,
        IntegrityMode::DeviceDigest,
    ));
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token_with(&w.rogue, ROGUE, &cti, n, ICCID, IMEI, md, NOW, NOW + 60);
    let req = request(&tok, &env);
    assert_eq!(card.authorize(&tok, &env), StatusWord(0x660F));
    // Another channel, PIN verified there, cannot answer the basic channel's question.
    session_on_new_channel(&mut card);
    assert_eq!(card.verify_pin(PIN), StatusWord::OK);
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::CONDITIONS
    );
    // On its own channel the PIN must be verified there.
    card.channel = 0;
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::SECURITY_STATUS
    );
    assert_eq!(card.verify_pin(PIN), StatusWord::OK);
    assert_eq!(
        card.cmd(0x80, ins::RECORD_CONSENT, 1, 0, &req).1,
        StatusWord::OK
    );
}

#[test]
fn a_payload_stream_belongs_to_the_channel_that_started_it() {
    let mut w = World::new();
    let mut card = w.card(&World::policy(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 20 },
    ));
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token(&cti, n, md);
    assert_eq!(card.authorize(&tok, &env), StatusWord::OK);
    let payload = w.payload.clone();
    let (head, tail) = payload.split_at(payload.len() / 2);
    assert_eq!(
        card.cmd(0x80, ins::PAYLOAD, 1, 0, head).1,
        StatusWord::OK,
        "stream started on the basic channel"
    );
    // Another channel cannot continue or finish it.
    session_on_new_channel(&mut card);
    assert_eq!(
        card.cmd(0x80, ins::PAYLOAD, 3, 0, tail).1,
        StatusWord::CONDITIONS
    );
    // The basic channel finishes it: the digest matches.
    card.channel = 0;
    assert_eq!(card.cmd(0x80, ins::PAYLOAD, 3, 0, tail).1, StatusWord::OK);
    assert_eq!(card.report(200, &cti).1, StatusWord::OK);
}

#[test]
fn an_export_page_is_acknowledged_on_its_own_channel_only() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 3);
    let ch = session_on_new_channel(&mut card);
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    assert_eq!(card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1, StatusWord::OK);
    let ack = w.log_ack(&w.reader, READER, n, 2);
    // On the basic channel the page's nonce is not outstanding.
    card.channel = 0;
    assert_ne!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    assert_eq!(card.log_status().acked, 0);
    // Read again on the channel, the page is acknowledged there; closing the channel would
    // have ended that.
    card.channel = ch;
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    assert_eq!(card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1, StatusWord::OK);
    let ack = w.log_ack(&w.reader, READER, n, 2);
    card.channel = 0;
    assert_eq!(close(&mut card, ch), StatusWord::OK);
    assert_eq!(open(&mut card), ch);
    card.channel = ch;
    assert_eq!(card.select(), StatusWord::OK);
    assert_ne!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    assert_eq!(card.log_status().acked, 0);
    let n = card.nonce();
    let req = w.log_read(&w.reader, READER, n, 0, 8);
    assert_eq!(card.cmd(0x80, ins::READ_LOG, 0, 0, &req).1, StatusWord::OK);
    let ack = w.log_ack(&w.reader, READER, n, 2);
    assert_eq!(card.cmd(0x80, ins::ACK_LOG, 0, 0, &ack).1, StatusWord::OK);
    assert_eq!(card.log_status().acked, 3);
}

#[test]
fn closing_a_channel_drops_its_session() {
    let mut w = World::new();
    let mut card = w.default_card();
    let ch = session_on_new_channel(&mut card);
    let _ = card.nonce();
    card.channel = 0;
    assert_eq!(close(&mut card, ch), StatusWord::OK);
    // Its class answers 6881 now.
    card.channel = ch;
    assert_eq!(card.select(), StatusWord(0x6881));
    // Opened again (same number, the lowest free one), it starts empty: nothing selected,
    // and once selected no terminal bound and no nonce outstanding.
    card.channel = 0;
    assert_eq!(open(&mut card), ch);
    card.channel = ch;
    assert_eq!(
        card.cmd(0x00, ins::GET_CHALLENGE, 0, 0, &[]).1,
        StatusWord::CONDITIONS
    );
    assert_eq!(card.select(), StatusWord::OK);
    let (env, md) = w.package(2);
    let cti = w.next_cti();
    let tok = w.token(&cti, simfota_wire::Nonce([0; 16]), md);
    assert_eq!(card.authorize(&tok, &env), StatusWord::CONDITIONS);
    assert_eq!(card.bind(IMEI), StatusWord::OK);
    assert_eq!(
        card.authorize(&tok, &env),
        StatusWord::refused(simfota_card::Reason::NonceUnavailable.code())
    );
    // The basic channel's session did not move.
    card.channel = 0;
    w.full_update(&mut card, 9);
}

#[test]
fn a_channel_closes_itself_and_a_reset_closes_all() {
    let w = World::new();
    let mut card = w.default_card();
    let a = open(&mut card);
    let b = open(&mut card);
    let c = open(&mut card);
    assert_eq!((a, b, c), (1, 2, 3));
    // Three logical channels and the basic one: no slot left.
    assert_eq!(
        card.raw(&[0x00, ins::MANAGE_CHANNEL, 0, 0, 1]).1,
        StatusWord(0x6A81)
    );
    // Channel 2 closes itself (CLA 02).
    assert_eq!(
        card.raw(&[0x02, ins::MANAGE_CHANNEL, 0x80, 0x02]).1,
        StatusWord::OK
    );
    assert_eq!(
        card.raw(&[0x02, ins::GET_CHALLENGE, 0, 0, 0x10]).1,
        StatusWord(0x6881)
    );
    card.applet.reset();
    for ch in [1u8, 3] {
        assert_eq!(
            card.raw(&[ch, ins::GET_CHALLENGE, 0, 0, 0x10]).1,
            StatusWord(0x6881)
        );
    }
    // The basic channel is open after a reset, with nothing selected.
    assert_eq!(
        card.raw(&[0x00, ins::GET_CHALLENGE, 0, 0, 0x10]).1,
        StatusWord::CONDITIONS
    );
}

#[test]
fn selection_is_per_channel() {
    let w = World::new();
    let mut card = w.default_card();
    let ch = open(&mut card);
    // Selected on the basic channel only.
    assert_eq!(
        card.raw(&[ch, ins::GET_CHALLENGE, 0, 0, 0x10]).1,
        StatusWord::CONDITIONS
    );
    card.channel = ch;
    assert_eq!(card.select(), StatusWord::OK);
    // A failed SELECT on the basic channel leaves both selections as they were.
    assert_eq!(
        card.raw(&[0x00, ins::SELECT, 0x04, 0x00, 5, 0xA0, 0, 0, 0, 0x87])
            .1,
        StatusWord::NOT_FOUND
    );
    for cla in [0x00, ch] {
        assert_eq!(
            card.raw(&[cla, ins::GET_CHALLENGE, 0, 0, 0x10]).1,
            StatusWord::OK
        );
    }
}
