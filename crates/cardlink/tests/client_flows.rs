//! Every card flow through the typed client against the applet in this process, with short
//! APDUs only (chaining + GET RESPONSE, what every SIM takes) and with extended length.

#[path = "support/flows.rs"]
mod flows;

use simfota_card::CardMemory;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::{AppletCard, ExtendedMode, InProcessChannel, Link, LinkOptions};

fn client(extended: ExtendedMode) -> CardClient<InProcessChannel<AppletCard<CardMemory>>> {
    let channel = InProcessChannel::new(AppletCard::new(CardMemory::new()), "in-process");
    CardClient::with_link(Link::with_options(
        channel,
        LinkOptions {
            extended,
            ..LinkOptions::default()
        },
    ))
}

#[test]
fn every_flow_with_short_apdus_and_chaining() {
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Never);
    flows::every_flow(&mut c, &world);
    assert!(!c.link().uses_extended());
    flows::pin_to_blocking(&mut c);
}

#[test]
fn every_flow_with_extended_length() {
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Auto);
    assert!(c.link().uses_extended());
    flows::every_flow(&mut c, &world);
}

#[test]
fn a_reset_forgets_the_session_but_not_the_card() {
    use simfota_card::Reason;
    use simfota_cardlink::{ClientError, ResetKind};
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Never);
    c.personalize(&world.issuer, &world.personalization())
        .unwrap();
    c.select().unwrap();
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.bind_terminal(&imei).unwrap();
    c.verify_pin(flows::PIN).unwrap();
    let payload = vec![7u8; 100];
    let envelope = world.envelope(&payload, 1);
    let nonce = c.get_nonce().unwrap();
    let token = world.token(&world.server, nonce, &envelope, "u");
    c.reset(ResetKind::Warm).unwrap();
    // Applet no longer selected.
    assert!(matches!(c.card_info(), Err(ClientError::Status { .. })));
    c.reopen(Some(&imei)).unwrap();
    // The nonce died with the reset; PIN status too.
    let err = c.authorize(&token, &envelope).unwrap_err();
    assert_eq!(err.reason(), Some(Reason::NonceUnavailable));
    assert_eq!(
        c.pin_status().unwrap(),
        simfota_cardlink::client::PinStatus::TriesLeft(3)
    );
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
}

/// A card-digest stream of every size around the 255-byte chunk (one byte, a chunk, a chunk
/// and one, two chunks), through `stream_payload` (which rides the incremental stream calls);
/// then a stream cut by a card reset: the client knows the card's hash state is gone and the
/// card refuses to continue it, and a new stream from byte 0 passes.
#[test]
fn card_digest_streams_of_every_size_around_a_chunk_and_a_reset_midway() {
    use simfota_cardlink::{ClientError, ResetKind};
    use simfota_wire::{AdminChange, IntegrityMode, Policy, UnauthorizedRule};
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Never);
    c.personalize(&world.issuer, &world.personalization())
        .unwrap();
    c.select().unwrap();
    let policy = Policy::new(
        UnauthorizedRule::Refuse,
        IntegrityMode::CardDigest { max_size: 1 << 16 },
    );
    c.admin(&world.admin(1, AdminChange::SetPolicy(policy), flows::ICCID))
        .unwrap();
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.bind_terminal(&imei).unwrap();
    let mut sequence = 0;
    let mut authorize = |c: &mut CardClient<_>, payload: &[u8], id: &str| {
        sequence += 1;
        let envelope = world.envelope(payload, sequence);
        let nonce = c.get_nonce().unwrap();
        c.authorize(&world.token(&world.server, nonce, &envelope, id), &envelope)
            .unwrap();
    };
    for (i, len) in [1usize, 255, 256, 510, 700].into_iter().enumerate() {
        let payload: Vec<u8> = (0..len).map(|b| (b * 31 + i) as u8).collect();
        let id = format!("size-{len}");
        authorize(&mut c, &payload, &id);
        assert_eq!(
            c.stream_payload(&mut payload.as_slice()).unwrap(),
            len as u64
        );
        c.report_result(id.as_bytes(), 200, None).unwrap();
    }

    let payload: Vec<u8> = (0..2000u32).map(|b| (b % 253) as u8).collect();
    authorize(&mut c, &payload, "reset");
    c.payload_stream_start();
    c.payload_stream_feed(&payload[..1000]).unwrap();
    c.reset(ResetKind::Warm).unwrap();
    assert_eq!(c.payload_stream_len(), None);
    assert!(matches!(
        c.payload_stream_feed(&payload[1000..]),
        Err(ClientError::Input(_))
    ));
    c.reopen(Some(&imei)).unwrap();
    // The card itself has no stream to continue either (its hash state died with the reset).
    let cont = c
        .link_mut()
        .transmit(
            &simfota_cardlink::Command::new(0x80, simfota_card::ins::PAYLOAD, 0x02, 0)
                .with_data(payload[1000..1255].to_vec()),
        )
        .unwrap();
    assert_eq!(cont.sw, simfota_cardlink::StatusWord(0x6985));
    assert_eq!(c.stream_payload(&mut payload.as_slice()).unwrap(), 2000);
    c.report_result(b"reset", 200, None).unwrap();
    // A finish without a stream is the client's refusal, not an APDU.
    assert!(matches!(
        c.payload_stream_finish(),
        Err(ClientError::Input(_))
    ));
    let err = c.receipt(b"never").unwrap_err();
    assert_eq!(err.reason(), None);
    assert_eq!(err.status(), Some(simfota_cardlink::StatusWord(0x6A88)));
}

/// Every flow on a logical channel the client opens (MANAGE CHANNEL, the card picking the
/// number), as a phone or a module reaches the applet while the modem holds the basic
/// channel: the basic channel's selection is never touched.
#[test]
fn every_flow_on_a_logical_channel() {
    use simfota_cardlink::{ChannelMode, Command, StatusWord};
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Never).with_channel_mode(ChannelMode::Logical);
    flows::every_flow(&mut c, &world);
    assert_eq!(c.channel_number(), 1);
    let basic = c
        .link_mut()
        .transmit(&Command::new(0x00, 0x84, 0, 0).with_ne(16))
        .unwrap();
    assert_eq!(
        basic.sw,
        StatusWord(0x6985),
        "nothing selected on channel 0"
    );
    let on_one = c
        .link_mut()
        .transmit(&Command::new(0x01, 0x84, 0, 0).with_ne(16))
        .unwrap();
    assert_eq!((on_one.sw, on_one.data.len()), (StatusWord::OK, 16));
    c.close_channel().unwrap();
    assert_eq!(c.channel_number(), 0);
    let closed = c
        .link_mut()
        .transmit(&Command::new(0x01, 0x84, 0, 0).with_ne(16))
        .unwrap();
    assert_eq!(closed.sw, StatusWord(0x6881), "channel 1 is closed");
}

/// After a reset the card has closed the client's logical channel: `reopen` opens a new one
/// and the session goes on there; `reopen` without a reset gives the old channel back first,
/// so channels do not pile up on the card.
#[test]
fn reopen_on_a_logical_channel_after_a_reset_and_without_one() {
    use simfota_cardlink::{ChannelMode, ResetKind};
    let world = flows::World::new();
    let mut c = client(ExtendedMode::Auto).with_channel_mode(ChannelMode::Logical);
    c.personalize(&world.issuer, &world.personalization())
        .unwrap();
    let imei = simfota_wire::Imei::parse(flows::IMEI).unwrap();
    c.reset(ResetKind::Cold).unwrap();
    assert_eq!(c.channel_number(), 0);
    c.reopen(Some(&imei)).unwrap();
    assert_eq!(c.channel_number(), 1);
    for _ in 0..5 {
        c.reopen(Some(&imei)).unwrap();
        assert_eq!(c.channel_number(), 1);
    }
    assert_eq!(c.card_info().unwrap().iccid, flows::ICCID);
    c.get_nonce().unwrap();
}
