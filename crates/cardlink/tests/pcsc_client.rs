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
