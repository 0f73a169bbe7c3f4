//! Every card flow through the typed client, through pcscd and vpcd, against the applet
//! served from this process. Needs `SIMFOTA_PCSCD=1` (pcscd running with vsmartcard-vpcd).

mod support;

#[path = "support/flows.rs"]
mod flows;

use simfota_card::CardMemory;
use simfota_cardlink::client::CardClient;
use simfota_cardlink::{AppletCard, ExtendedMode, Link, LinkOptions};
use support::Served;

#[test]
fn pcsc_every_flow_through_pcscd_extended() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_every_flow_through_pcscd_extended") else {
        return;
    };
    let _served = Served::start(AppletCard::new(CardMemory::new()));
    let mut client = CardClient::new(support::connect());
    assert!(client.link().uses_extended());
    let world = flows::World::new();
    flows::every_flow(&mut client, &world);
    flows::pin_to_blocking(&mut client);
}

#[test]
fn pcsc_every_flow_through_pcscd_short_apdus() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_every_flow_through_pcscd_short_apdus") else {
        return;
    };
    let _served = Served::start(AppletCard::new(CardMemory::new()));
    let link = Link::with_options(
        support::connect(),
        LinkOptions {
            extended: ExtendedMode::Never,
            ..LinkOptions::default()
        },
    );
    let mut client = CardClient::with_link(link);
    let world = flows::World::new();
    flows::every_flow(&mut client, &world);
    let stats = client.link().stats();
    assert!(stats.apdus > 40, "{stats:?}");
}

#[test]
fn pcsc_every_flow_on_a_logical_channel() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_every_flow_on_a_logical_channel") else {
        return;
    };
    let _served = Served::start(AppletCard::new(CardMemory::new()));
    let link = Link::with_options(
        support::connect(),
        LinkOptions {
            extended: ExtendedMode::Never,
            ..LinkOptions::default()
        },
    );
    let mut client =
        CardClient::with_link(link).with_channel_mode(simfota_cardlink::ChannelMode::Logical);
    let world = flows::World::new();
    flows::every_flow(&mut client, &world);
    assert_eq!(client.channel_number(), 1);
    client.close_channel().unwrap();
}

/// GET CHALLENGE with an extended Le field (ISO/IEC 7816-4 §5.1: `00 Le1 Le2` with no command
/// data), sent as raw bytes through pcscd by a client that does not shorten it: answered like
/// the short form, 16 bytes and `9000`, as the ATR's extended-length announcement promises.
#[test]
fn pcsc_get_challenge_with_an_extended_le() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_get_challenge_with_an_extended_le") else {
        return;
    };
    let _served = Served::start(AppletCard::new(CardMemory::new()));
    let mut client = CardClient::new(support::connect());
    let world = flows::World::new();
    client
        .personalize(&world.issuer, &world.personalization())
        .unwrap();
    client.select().unwrap();
    let channel = client.link_mut().channel_mut();
    let mut nonces = Vec::new();
    for apdu in [
        &[0x00, 0x84, 0x00, 0x00, 0x00, 0x00, 0x10][..],
        &[0x00, 0x84, 0x00, 0x00, 0x00, 0x01, 0x00],
        &[0x00, 0x84, 0x00, 0x00, 0x10],
    ] {
        // The bytes as given, in one exchange: nothing of the link rewrites them.
        let mut answer = Vec::new();
        simfota_cardlink::Channel::exchange(channel, &mut |t| {
            answer = t.transmit(apdu)?;
            simfota_cardlink::Response::from_bytes(&answer)
                .ok_or(simfota_cardlink::LinkError::MalformedResponse { len: answer.len() })
        })
        .unwrap();
        assert_eq!(answer.len(), 18, "{apdu:02X?}: {answer:02X?}");
        assert_eq!(&answer[16..], &[0x90, 0x00], "{apdu:02X?}");
        nonces.push(answer[..16].to_vec());
    }
    nonces.dedup();
    assert_eq!(nonces.len(), 3, "a fresh nonce each time");
}
