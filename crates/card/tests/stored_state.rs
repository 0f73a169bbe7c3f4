//! Stored card state from a released layout must still load and work: a personalized card
//! image of layout version 1 (after one completed update) is kept as a file, and today's
//! applet runs a full update on it. A layout change must bump `LAYOUT_VERSION` and keep
//! loading (or migrating) this image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use simfota_card::{CardMemory, PERSISTENT_SIZE, PowerCut, Store};
use simfota_wire::contract::{CardInfo, Lifecycle};

const IMAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/images/layout-v1-personalized.img"
);

fn load() -> Card {
    let bytes = std::fs::read(IMAGE).expect("golden card image");
    assert_eq!(bytes.len(), PERSISTENT_SIZE, "layout v1 image size");
    let mut mem = CardMemory::new();
    mem.begin().unwrap();
    mem.write(0, &bytes).unwrap();
    mem.commit().unwrap();
    Card::from_store(PowerCut::new(mem, None), "golden")
}

#[test]
fn layout_v1_image_still_works() {
    let mut w = World::new();
    // The image holds one finished update (sequence 1, three log entries).
    w.cti = 1;
    let mut card = load();
    assert_eq!(card.select(), simfota_card::StatusWord::OK);
    let info = card.info();
    let ci = CardInfo::decode(&info, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!(
        (
            ci.iccid.as_str(),
            ci.lifecycle,
            ci.installed_sequence,
            ci.log_next
        ),
        (ICCID, Lifecycle::Operational, 1, 3)
    );
    assert_eq!(card.bind(IMEI), simfota_card::StatusWord::OK);
    w.full_update(&mut card, 2);
    let entries = w.read_all(&mut card);
    assert_eq!(entries.len(), 6);
    assert!(chain_ok(&entries));
}

/// Writes the golden image (run once when a layout version is released:
/// `cargo test -p simfota-card --test stored_state -- --ignored`).
#[test]
#[ignore = "generator of the golden image, not a check"]
fn write_layout_v1_image() {
    let mut w = World::new();
    let mut card = w.default_card();
    w.full_update(&mut card, 1);
    let mem = card.applet.into_store().into_inner();
    std::fs::write(IMAGE, mem.image()).unwrap();
}
