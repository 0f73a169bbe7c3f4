//! The link's transport rules through the real PC/SC stack: pcscd, vpcd, and a card served
//! from this process. Needs `SIMFOTA_PCSCD=1` (pcscd running with vsmartcard-vpcd).

mod support;

use simfota_cardlink::{Channel, Command, Link, LinkError, ResetKind, StatusWord};
use support::{IsoCard, Served};

#[test]
fn pcsc_chaining_and_get_response_through_pcscd() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_chaining_and_get_response_through_pcscd") else {
        return;
    };
    let served = Served::start(IsoCard::new(200, false));
    let mut link = Link::new(support::connect());
    assert!(!link.uses_extended());
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    let r = link
        .transmit(
            &Command::new(0x80, 0xE0, 0, 0)
                .with_data(data.clone())
                .with_ne(256),
        )
        .unwrap();
    let mut want = data;
    want.reverse();
    assert_eq!(r.sw, StatusWord::OK);
    assert_eq!(r.data, want);
    // 4 chain links, then 200 + 255 + 255 + 255 + 35 in GET RESPONSE rounds.
    assert_eq!(link.stats().apdus, 4 + 4);
    let r = link
        .transmit(&Command::new(0x80, 0xCA, 0, 0).with_ne(256))
        .unwrap();
    assert_eq!(r.data, (0..20).collect::<Vec<u8>>());
    drop(link);
    let (card, _) = served.pull();
    assert!(card.commands >= 10);
}

#[test]
fn pcsc_extended_length_when_the_atr_announces_it() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_extended_length_when_the_atr_announces_it")
    else {
        return;
    };
    let _served = Served::start(IsoCard::new(4096, true));
    let mut link = Link::new(support::connect());
    assert!(
        link.uses_extended(),
        "ATR announces extended Lc/Le over T=1"
    );
    let data = vec![0x5A; 3000];
    let r = link
        .transmit(
            &Command::new(0x80, 0xE0, 0, 0)
                .with_data(data.clone())
                .with_ne(4096),
        )
        .unwrap();
    assert_eq!(r.data, data);
    assert_eq!(link.stats().apdus, 1);
}

#[test]
fn pcsc_reset_clears_volatile_state_and_the_link_goes_on() {
    let Some(_slot) =
        support::pcscd_or_skip("pcsc_reset_clears_volatile_state_and_the_link_goes_on")
    else {
        return;
    };
    let served = Served::start(IsoCard::new(255, false));
    let mut link = Link::new(support::connect());
    let put = Command::new(0x80, 0xD0, 0, 0).with_data(b"session".to_vec());
    let get = Command::new(0x80, 0xD2, 0, 0).with_ne(256);
    assert_eq!(link.transmit(&put).unwrap().sw, StatusWord::OK);
    assert_eq!(link.transmit(&get).unwrap().data, b"session");
    link.reset(ResetKind::Warm).unwrap();
    assert_eq!(link.transmit(&get).unwrap().data, b"");
    assert_eq!(link.transmit(&put).unwrap().sw, StatusWord::OK);
    link.reset(ResetKind::Cold).unwrap();
    assert_eq!(link.transmit(&get).unwrap().data, b"");

    // A reset by another application: reported once, then the channel works again.
    assert_eq!(link.transmit(&put).unwrap().sw, StatusWord::OK);
    let mut other = support::connect();
    other.reset(ResetKind::Warm).unwrap();
    let err = link.transmit(&get).unwrap_err();
    assert!(matches!(err, LinkError::CardReset { .. }), "{err}");
    assert_eq!(link.transmit(&get).unwrap().data, b"");
    drop(other);
    drop(link);
    let (card, _) = served.pull();
    assert!(
        card.resets + card.power_offs >= 3,
        "resets {} power-offs {}",
        card.resets,
        card.power_offs
    );
}

#[test]
fn pcsc_card_removed_mid_session_is_a_clear_error() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_card_removed_mid_session_is_a_clear_error")
    else {
        return;
    };
    let served = Served::start(IsoCard::new(255, false));
    let mut link = Link::new(support::connect());
    let get = Command::new(0x80, 0xD2, 0, 0).with_ne(256);
    assert_eq!(link.transmit(&get).unwrap().sw, StatusWord::OK);
    let _ = served.pull();
    let err = link.transmit(&get).unwrap_err();
    assert!(matches!(err, LinkError::CardRemoved { .. }), "{err}");
    // Until a card is back, reconnecting says there is none.
    let err = link.reconnect().unwrap_err();
    assert!(
        matches!(
            err,
            LinkError::NoCard { .. } | LinkError::CardRemoved { .. }
        ),
        "{err}"
    );
    let _again = Served::start(IsoCard::new(255, false));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match link.reconnect() {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("card back, reconnect failed: {e}"),
        }
    }
    assert_eq!(link.transmit(&get).unwrap().sw, StatusWord::OK);
}

#[test]
fn pcsc_unknown_reader_lists_the_readers() {
    let Some(_slot) = support::pcscd_or_skip("pcsc_unknown_reader_lists_the_readers") else {
        return;
    };
    let err = simfota_cardlink::pcsc::PcscChannel::connect(Some("No Such Reader")).unwrap_err();
    match err {
        LinkError::ReaderNotFound { available, .. } => {
            assert!(
                available.iter().any(|r| r == support::READER),
                "{available:?}"
            )
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn pcsc_t0_card_gets_short_apdus_chaining_and_get_response() {
    let Some(_slot) =
        support::pcscd_or_skip("pcsc_t0_card_gets_short_apdus_chaining_and_get_response")
    else {
        return;
    };
    let mut card = IsoCard::new(100, true);
    card.t0 = true;
    let _served = Served::start(card);
    let mut link = Link::new(support::connect());
    assert_eq!(
        link.channel().capabilities().protocol,
        simfota_cardlink::Protocol::T0
    );
    assert!(!link.uses_extended(), "no extended length over T=0");
    let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
    let r = link
        .transmit(
            &Command::new(0x80, 0xE0, 0, 0)
                .with_data(data.clone())
                .with_ne(256),
        )
        .unwrap();
    let mut want = data;
    want.reverse();
    assert_eq!(r.data, want);
    // 3 chain links, then 100 + 255 + 245 through GET RESPONSE.
    assert_eq!(link.stats().apdus, 3 + 2);
}
