//! APDUs per second through pcscd, for a short command and a 255-byte command, against the
//! applet served as a virtual card (vpcd) from this process; the same commands to the applet
//! in process give the card's own share of the time.
//!
//! Run (pcscd with vsmartcard-vpcd up, nothing else on reader "Virtual PCD 00 00"):
//!   cargo run --release -p simfota-cardlink --example pcsc_throughput [-- SECONDS]
//!
//! The short command is GET CHALLENGE (`00 84 00 00 10`: 5 bytes out, 16 + 2 back). The
//! 255-byte command is PAYLOAD INTEGRITY in card-digest mode (`80 16 02 00 FF` + 255 payload
//! bytes: what a device sends 255 bytes at a time while the card hashes the payload). The
//! third figure is the client's payload stream fed in the downloader's 64 KiB pieces, what a
//! device in card-digest mode does during a download.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use simfota_card::CardMemory;
use simfota_cardlink::client::{CardClient, Personalization};
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::VpcdServer;
use simfota_cardlink::wire::p256::ecdsa::SigningKey;
use simfota_cardlink::wire::suit::{self, BuildParams, ImageSource};
use simfota_cardlink::wire::{
    DeliveryToken, Digest, Iccid, Imei, IntegrityMode, Limits, Policy, PublicKey, Rights, ServerId,
    UnauthorizedRule, UpdateId,
};
use simfota_cardlink::{
    AppletCard, Channel, Command, InProcessChannel, Link, LinkError, StatusWord,
};

const READER: &str = "Virtual PCD 00 00";
const ICCID: &str = "89882110000000000010";
const IMEI: &str = "490154203237518";

/// Personalizes the card, authorizes a (huge) update in card-digest mode and starts its payload
/// stream, so that PAYLOAD INTEGRITY "continue" commands can be repeated for as long as wanted.
fn prepare<C: Channel>(client: &mut CardClient<C>) {
    let mut rng = rand_core::OsRng;
    let issuer = SigningKey::random(&mut rng);
    let server = SigningKey::random(&mut rng);
    let oem = SigningKey::random(&mut rng);
    let perso = Personalization {
        issuer_name: "bench".into(),
        iccid: Iccid::parse(ICCID).unwrap(),
        imsi: "001010123456789".into(),
        pin: ("1234".into(), 3),
        puk: ("12345678".into(), 10),
        servers: vec![("dm".into(), PublicKey::from(&server), Rights::ALL)],
        originators: vec![("oem".into(), PublicKey::from(&oem))],
        policy: Policy::new(
            UnauthorizedRule::Refuse,
            IntegrityMode::CardDigest { max_size: u64::MAX },
        ),
    };
    client.personalize(&issuer, &perso).unwrap();
    client.select().unwrap();
    let imei = Imei::parse(IMEI).unwrap();
    client.bind_terminal(&imei).unwrap();
    let envelope = suit::build(
        &BuildParams {
            vendor_id: [1; 16],
            class_id: [2; 16],
            sequence: 1,
            image: ImageSource::Digest {
                digest: Digest([0; 32]),
                size: u64::MAX / 2,
            },
            name: None,
            version: None,
            uri: Some("https://fw.example/big"),
            integrate: false,
            precursor_digest: None,
        },
        &oem,
    )
    .unwrap();
    let limits = Limits::default();
    let nonce = client.get_nonce().unwrap();
    let token = DeliveryToken {
        iss: ServerId::new("dm").unwrap(),
        iat: 1_800_000_000,
        exp: 1_900_000_000,
        cti: UpdateId::new(b"bench").unwrap(),
        nonce,
        iccid: Iccid::parse(ICCID).unwrap(),
        imei,
        manifest_digest: suit::Envelope::decode(&envelope, &limits)
            .unwrap()
            .stated_manifest_digest(),
        nbf: None,
        charging_ref: None,
    }
    .to_vec(&server)
    .unwrap();
    client.authorize(&token, &envelope).unwrap();
    let start = Command::new(0x80, 0x16, 0x01, 0x00).with_data(vec![0u8; 255]);
    let r = client.link_mut().transmit(&start).unwrap();
    assert_eq!(r.sw, StatusWord::OK);
}

fn rate<C: Channel>(link: &mut Link<C>, command: &Command, seconds: f64) -> (f64, u64) {
    // Warm-up, and a check that the command is answered 9000.
    for _ in 0..20 {
        let r = link.transmit(command).unwrap();
        assert_eq!(r.sw, StatusWord::OK, "{command:?}");
    }
    link.reset_stats();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let mut n = 0u64;
    while start.elapsed() < budget {
        link.transmit(command).unwrap();
        n += 1;
    }
    let per_second = n as f64 / start.elapsed().as_secs_f64();
    (per_second, link.stats().apdus)
}

fn report<C: Channel>(what: &str, client: &mut CardClient<C>, seconds: f64) {
    let short = Command::new(0x00, 0x84, 0x00, 0x00).with_ne(16);
    let long = Command::new(0x80, 0x16, 0x02, 0x00).with_data(vec![0xA5; 255]);
    let (s, _) = rate(client.link_mut(), &short, seconds);
    let (l, _) = rate(client.link_mut(), &long, seconds);
    println!(
        "{what}: short command (GET CHALLENGE, 5 B out / 18 B back): {s:.0} APDU/s ({:.3} ms each); \
         255-byte command (PAYLOAD continue, 260 B out / 2 B back): {l:.0} APDU/s ({:.3} ms each, {:.1} KB/s of payload)",
        1000.0 / s,
        1000.0 / l,
        l * 255.0 / 1000.0
    );
    // What a device in card-digest mode does during a download: the client's payload stream
    // fed with the downloader's 64 KiB pieces (255-byte chunks to the card, short APDUs).
    let piece = vec![0x5A; 64 * 1024];
    client.payload_stream_start();
    client.payload_stream_feed(&piece).unwrap();
    let start = Instant::now();
    let budget = Duration::from_secs_f64(seconds);
    let mut bytes = 0u64;
    while start.elapsed() < budget {
        client.payload_stream_feed(&piece).unwrap();
        bytes += piece.len() as u64;
    }
    println!(
        "{what}: payload stream fed in 64 KiB pieces: {:.2} MB/s hashed by the card",
        bytes as f64 / start.elapsed().as_secs_f64() / 1e6
    );
}

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);

    // In process: the applet alone.
    let mut local = CardClient::new(InProcessChannel::new(
        AppletCard::new(CardMemory::new()),
        "in-process",
    ));
    prepare(&mut local);
    report("in process", &mut local, seconds);

    // Through pcscd and vpcd.
    let server = match VpcdServer::connect(simfota_cardlink::vpcd::DEFAULT_VPCD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let stop = server.stop_handle();
    let thread = std::thread::spawn(move || {
        let mut card = AppletCard::new(CardMemory::new());
        let _ = server.serve(&mut card, &mut |_| {});
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let channel = loop {
        match PcscChannel::connect(Some(READER)) {
            Ok(c) => break c,
            Err(LinkError::NoCard { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
    };
    let mut pcsc = CardClient::new(channel);
    prepare(&mut pcsc);
    report("through pcscd (vpcd)", &mut pcsc, seconds);
    drop(pcsc);
    stop.stop();
    let _ = thread.join();
}
