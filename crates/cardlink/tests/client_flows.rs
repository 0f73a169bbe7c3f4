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
