use super::*;
use p256::ecdsa::SigningKey;

const ICCID: &str = "89882110000000000010";
const LIM: Limits = Limits::DEFAULT;

fn key(seed: u8) -> PublicKey {
    let sk = SigningKey::from_slice(&[seed; 32]).unwrap();
    PublicKey::from(&sk)
}

fn info(cert: &[u8]) -> CardInfo<&[u8]> {
    CardInfo {
        iccid: Digits::new(ICCID).unwrap(),
        imsi: Digits::new("001010123456789").unwrap(),
        card_key: Some(key(7).to_sec1()),
        certificate: cert,
        version: (1, 0),
        installed_sequence: 3,
        log_next: 66,
        log_acked: 60,
        log_free: 58,
        update_pending: true,
        lifecycle: Lifecycle::Operational,
        trusted_time: 1_700_000_000,
        admin_counter: 2,
        log_capacity: 64,
        max_servers: 8,
        max_originators: 8,
        io_capacity: 1536,
        persistent_size: 20_000,
        record_len: 288,
    }
}

fn encode(ci: &CardInfo<&[u8]>) -> ([u8; 1024], usize) {
    let mut buf = [0u8; 1024];
    let n = ci.encode(&mut buf).unwrap();
    (buf, n)
}

/// A copy of `b` with the item after the first occurrence of `key` replaced by `item`.
fn replace_after(b: &[u8], at: usize, old_len: usize, item: &[u8]) -> ([u8; 1024], usize) {
    let mut out = [0u8; 1024];
    out[..at].copy_from_slice(&b[..at]);
    out[at..at + item.len()].copy_from_slice(item);
    let rest = &b[at + old_len..];
    out[at + item.len()..at + item.len() + rest.len()].copy_from_slice(rest);
    (out, b.len() - old_len + item.len())
}

#[test]
fn card_info_round_trips() {
    let cert = [0xd2, 0x84, 0x40];
    let ci = info(&cert);
    let (buf, n) = encode(&ci);
    let back = CardInfo::decode(&buf[..n], &LIM).unwrap();
    assert_eq!(back, ci);
    assert_eq!(back.iccid(), Some(Iccid::parse(ICCID).unwrap()));
    assert_eq!(back.public_key(), Some(key(7)));
    assert_eq!(back.iccid, ICCID);
    // The first members are the ones docs/dm-tree.md names: {1: ICCID, 2: IMSI, 3: key, 4: cert}.
    assert_eq!(&buf[..3], &[0xae, 0x01, 0x74]);
    let id = CardIdentity::decode(&buf[..n], &LIM).unwrap();
    assert_eq!(id.iccid, Some(ICCID));
    assert_eq!(id.certificate, Some(&cert[..]));
    assert_eq!(id.applet, Some(ci.version));
}

#[test]
fn a_blank_card_has_no_identity_yet() {
    let mut ci = info(&[]);
    ci.iccid = Digits::EMPTY;
    ci.imsi = Digits::EMPTY;
    ci.card_key = None;
    ci.lifecycle = Lifecycle::Blank;
    let (buf, n) = encode(&ci);
    let back = CardInfo::decode(&buf[..n], &LIM).unwrap();
    assert_eq!(back, ci);
    assert_eq!(back.iccid(), None);
    assert_eq!(back.public_key(), None);
    let id = CardIdentity::decode(&buf[..n], &LIM).unwrap();
    assert_eq!(id.certificate, None);
}

#[test]
fn card_info_refusals() {
    let (buf, n) = encode(&info(&[1, 2, 3]));
    let b = &buf[..n];
    // Truncated anywhere: refused.
    for cut in 0..n {
        assert!(CardInfo::decode(&b[..cut], &LIM).is_err(), "cut at {cut}");
    }
    // Trailing bytes.
    let mut long = [0u8; 1024];
    long[..n].copy_from_slice(b);
    assert_eq!(
        CardInfo::decode(&long[..n + 1], &LIM),
        Err(Error::TrailingBytes { at: n })
    );
    // Not a map.
    assert_eq!(
        CardInfo::decode(&[0x80], &LIM),
        Err(Error::InvalidField("card info"))
    );
    // Wrong type: the ICCID as a byte string (0x54 = bstr of 20).
    let (x, m) = replace_after(b, 2, 1, &[0x54]);
    assert_eq!(
        CardInfo::decode(&x[..m], &LIM),
        Err(Error::InvalidField("iccid"))
    );
    // An ICCID with a wrong check digit.
    let (x, m) = replace_after(b, 22, 1, b"1");
    assert_eq!(CardInfo::decode(&x[..m], &LIM), Err(Error::BadIccid));
    // A card key that is not a point.
    let key_at = 3 + 20 + 1 + 1 + 15 + 1 + 2;
    let (x, m) = replace_after(b, key_at, 1, &[0x05]);
    assert_eq!(CardInfo::decode(&x[..m], &LIM), Err(Error::BadKey));
    // A missing member: {1: ICCID} alone.
    let mut only = [0u8; 23];
    only[0] = 0xa1;
    only[1..].copy_from_slice(&b[1..23]);
    assert_eq!(
        CardInfo::decode(&only, &LIM),
        Err(Error::MissingField("imsi"))
    );
    // ... which the server's view accepts.
    let id = CardIdentity::decode(&only, &LIM).unwrap();
    assert_eq!(
        (id.iccid, id.certificate, id.applet),
        (Some(ICCID), None, None)
    );
    // An applet version that is not two bytes: refused by the server's view too.
    assert_eq!(
        CardIdentity::decode(&[0xa1, 0x05, 0x82, 0x01, 0x19, 0x01, 0x00], &LIM),
        Err(Error::InvalidField("version"))
    );
    assert_eq!(
        CardIdentity::decode(&[0xa1, 0x05, 0x82, 0x01, 0x02], &LIM).map(|i| i.applet),
        Ok(Some((1, 2)))
    );
    // A repeated key.
    assert_eq!(
        CardIdentity::decode(&[0xa2, 0x01, 0x60, 0x01, 0x60], &LIM),
        Err(Error::DuplicateKey { at: 3 })
    );
    // A text key.
    assert!(matches!(
        CardIdentity::decode(&[0xa1, 0x61, b'a', 0x00], &LIM),
        Err(Error::BadMapKey { .. })
    ));
}

#[test]
fn unknown_members_are_skipped() {
    let (buf, n) = encode(&info(&[]));
    let mut x = [0u8; 1024];
    x[0] = 0xaf;
    x[1..n].copy_from_slice(&buf[1..n]);
    // 15: "new"
    x[n..n + 5].copy_from_slice(&[0x0f, 0x63, b'n', b'e', b'w']);
    assert_eq!(CardInfo::decode(&x[..n + 5], &LIM).unwrap(), info(&[]));
}

#[test]
fn pending_update_round_trips_and_refuses() {
    let p = PendingUpdate {
        update_id: UpdateId::new(&[1, 2, 3]).unwrap(),
        integrity: Integrity::Passed,
        sequence: 9,
        image_size: 1 << 20,
        image_digest: Digest([0xab; 32]),
    };
    let mut buf = [0u8; PendingUpdate::MAX_ENCODED_LEN];
    let n = PendingUpdate::encode(Some(&p), &mut buf).unwrap();
    assert_eq!(PendingUpdate::decode(&buf[..n], &LIM), Ok(Some(p)));
    let max = PendingUpdate {
        update_id: UpdateId::new(&[0xff; 16]).unwrap(),
        sequence: u64::MAX,
        image_size: u64::MAX,
        ..p
    };
    assert!(PendingUpdate::encode(Some(&max), &mut buf).is_ok());
    let n0 = PendingUpdate::encode(None, &mut buf).unwrap();
    assert_eq!(&buf[..n0], &[0xa0]);
    assert_eq!(PendingUpdate::decode(&[0xa0], &LIM), Ok(None));

    // {1: h'0102', 2: 1, 3: 5}: members missing.
    let partial = [0xa3, 0x01, 0x42, 0x01, 0x02, 0x02, 0x01, 0x03, 0x05];
    assert_eq!(
        PendingUpdate::decode(&partial, &LIM),
        Err(Error::MissingField("image size"))
    );
    // Integrity 3 is not a state.
    assert_eq!(
        PendingUpdate::decode(&[0xa1, 0x02, 0x03], &LIM),
        Err(Error::InvalidField("integrity"))
    );
    // An update id of the wrong type, an empty one, a short digest.
    assert_eq!(
        PendingUpdate::decode(&[0xa1, 0x01, 0x01], &LIM),
        Err(Error::InvalidField("update id"))
    );
    assert!(matches!(
        PendingUpdate::decode(&[0xa1, 0x01, 0x40], &LIM),
        Err(Error::BadId(_))
    ));
    assert_eq!(
        PendingUpdate::decode(&[0xa1, 0x05, 0x41, 0x00], &LIM),
        Err(Error::InvalidField("image digest"))
    );
    // Truncated.
    assert!(matches!(
        PendingUpdate::decode(&[0xa1, 0x01], &LIM),
        Err(Error::BadCbor { .. })
    ));
    assert!(PendingUpdate::decode(&[], &LIM).is_err());
}

#[test]
fn log_status_round_trips_and_refuses() {
    let s = LogStatus {
        next: 10,
        acked: 4,
        free: 58,
        head: [7; 32],
        capacity: 64,
    };
    let mut buf = [0u8; LogStatus::MAX_ENCODED_LEN];
    let n = s.encode(&mut buf).unwrap();
    assert_eq!(LogStatus::decode(&buf[..n], &LIM), Ok(s));
    // Unacknowledged count that disagrees with next - acked (key 3 is at byte 5).
    assert_eq!(buf[5], 0x03);
    buf[6] = 0x05;
    assert_eq!(
        LogStatus::decode(&buf[..n], &LIM),
        Err(Error::InvalidField("log unacknowledged"))
    );
    assert_eq!(
        LogStatus::decode(&[0xa0], &LIM),
        Err(Error::MissingField("log next"))
    );
}

fn servers() -> [ServerEntry; 2] {
    [
        ServerEntry {
            id: ServerId::new("dm.example").unwrap(),
            key: key(1),
            rights: Rights::ALL,
        },
        ServerEntry {
            id: ServerId::new("reader").unwrap(),
            key: key(2),
            rights: Rights::LOG_READ | Rights::LOG_ACK,
        },
    ]
}

#[test]
fn server_lists_round_trip() {
    let list = servers();
    let bytes = ServerEntry::encode_vec(&list).unwrap();
    assert_eq!(ServerEntry::decode_vec(&bytes, &LIM).unwrap(), list);
    // The card's way: entry by entry from stored SEC1 keys, same bytes.
    let mut buf = [0u8; 512];
    let mut w = ServerListWriter::new(&mut buf, 2).unwrap();
    for s in &list {
        w.push(s.id.as_str(), &s.key.to_sec1(), s.rights).unwrap();
    }
    let n = w.finish().unwrap();
    assert_eq!(&buf[..n], &bytes[..]);
    assert_eq!(ServerEntry::decode_vec(&[0x80], &LIM).unwrap(), []);
}

#[test]
fn server_list_refusals() {
    let bytes = ServerEntry::encode_vec(&servers()).unwrap();
    for cut in 0..bytes.len() {
        assert!(
            ServerEntry::decode_vec(&bytes[..cut], &LIM).is_err(),
            "{cut}"
        );
    }
    // Not a list; an originator entry where a server entry belongs.
    assert_eq!(
        ServerEntry::decode_vec(&[0xa0], &LIM),
        Err(Error::InvalidField("server list"))
    );
    let originators = OriginatorEntry::encode_vec(&[OriginatorEntry {
        id: OriginatorId::new("oem").unwrap(),
        key: key(3),
    }])
    .unwrap();
    assert_eq!(
        ServerEntry::decode_vec(&originators, &LIM),
        Err(Error::InvalidField("server entry"))
    );
    // Rights with a bit this version does not define (the last byte is the rights).
    let mut x = bytes.clone();
    *x.last_mut().unwrap() = 0x10;
    assert_eq!(
        ServerEntry::decode_vec(&x, &LIM),
        Err(Error::InvalidField("rights"))
    );
    // Too many entries: refused from the header, before any entry is read.
    assert_eq!(
        ServerEntry::decode_vec(&[0x98, 65], &LIM),
        Err(Error::TooLarge {
            what: "server list",
            max: MAX_LIST_ENTRIES
        })
    );
    assert!(ServerListWriter::new(&mut [0u8; 8], MAX_LIST_ENTRIES + 1).is_err());
    // A key that is not a SEC1 uncompressed point; an empty id.
    let bad_key = [0x81, 0x83, 0x61, b's', 0x41, 0x04, 0x01];
    assert_eq!(
        ServerEntry::decode_vec(&bad_key, &LIM),
        Err(Error::InvalidField("server key"))
    );
    let mut out = [0u8; 128];
    let mut w = ServerListWriter::new(&mut out, 1).unwrap();
    assert!(w.push("", &key(1).to_sec1(), Rights::ALL).is_err());
    // Fewer entries than announced.
    let mut out = [0u8; 8];
    let w = ServerListWriter::new(&mut out, 1).unwrap();
    assert_eq!(w.finish(), Err(Error::InvalidField("server list count")));
}

#[test]
fn originator_lists_round_trip_and_refuse() {
    let list = [
        OriginatorEntry {
            id: OriginatorId::new("oem").unwrap(),
            key: key(3),
        },
        OriginatorEntry {
            id: OriginatorId::new("second").unwrap(),
            key: key(4),
        },
    ];
    let bytes = OriginatorEntry::encode_vec(&list).unwrap();
    assert_eq!(OriginatorEntry::decode_vec(&bytes, &LIM).unwrap(), list);
    for cut in 0..bytes.len() {
        assert!(OriginatorEntry::decode_vec(&bytes[..cut], &LIM).is_err());
    }
    let servers = ServerEntry::encode_vec(&servers()).unwrap();
    assert_eq!(
        OriginatorEntry::decode_vec(&servers, &LIM),
        Err(Error::InvalidField("originator entry"))
    );
    assert!(matches!(
        OriginatorEntry::decode_vec(&[0x99, 0x01, 0x00], &LIM),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn rights_have_one_table_of_names() {
    let names: std::vec::Vec<_> = (Rights::FIRMWARE_UPDATE | Rights::LOG_ACK)
        .names()
        .collect();
    assert_eq!(names, ["firmware_update", "log_ack"]);
    assert_eq!(Rights::ALL.names().count(), 4);
    for (r, n) in Rights::NAMES {
        assert_eq!(Rights::from_name(n), Some(r));
    }
    assert_eq!(Rights::from_name("root"), None);
    assert_eq!(Rights::from_bits(15), Ok(Rights::ALL));
    assert_eq!(Rights::from_bits(16), Err(Error::InvalidField("rights")));
    assert_eq!(
        Rights::from_bits(256 + 1),
        Err(Error::InvalidField("rights"))
    );
}
