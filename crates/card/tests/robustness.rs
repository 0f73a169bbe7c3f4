//! Malformed input never panics; the file-backed store survives restarts atomically.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use proptest::prelude::*;
use simfota_card::{FileStore, PERSISTENT_SIZE, StatusWord, Store, ins};

fn personalized() -> Card {
    World::new().default_card()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Arbitrary byte strings as APDUs, against a personalized, selected card.
    #[test]
    fn arbitrary_apdus_never_panic(apdus in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..8)) {
        let mut card = personalized();
        for a in &apdus {
            let (_, sw) = card.raw(a);
            prop_assert!(sw.sw1() != 0);
        }
    }

    /// Well-formed headers of this applet's instructions with arbitrary data.
    #[test]
    fn arbitrary_data_for_every_instruction_never_panics(
        ins_i in 0usize..19,
        p1 in any::<u8>(),
        p2 in any::<u8>(),
        data in proptest::collection::vec(any::<u8>(), 0..1600),
        chained in any::<bool>(),
    ) {
        let all = [
            (0x00, ins::SELECT), (0x00, ins::GET_RESPONSE), (0x00, ins::GET_CHALLENGE),
            (0x00, ins::VERIFY), (0x00, ins::CHANGE_REFERENCE_DATA), (0x00, ins::RESET_RETRY_COUNTER),
            (0x00, ins::GENERATE_KEY_PAIR), (0x80, ins::GET_DATA), (0x80, ins::STORE_DATA),
            (0x80, ins::BIND_TERMINAL), (0x80, ins::AUTHORIZE_UPDATE), (0x80, ins::RECORD_CONSENT),
            (0x80, ins::PAYLOAD), (0x80, ins::REPORT_RESULT), (0x80, ins::READ_LOG),
            (0x80, ins::ACK_LOG), (0x80, ins::ADMIN), (0x80, ins::GET_RECEIPT), (0x80, 0x77),
        ];
        let (cla, i) = all[ins_i];
        let mut card = personalized();
        card.extended = !chained;
        let _ = card.nonce();
        let (_, sw) = card.cmd(cla, i, p1, p2, &data);
        prop_assert!(sw.sw1() != 0);
        // The card still works afterwards.
        prop_assert_eq!(card.select(), StatusWord::OK);
    }

    /// Random bytes as personalization data on a blank card.
    #[test]
    fn arbitrary_store_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), p1 in any::<u8>()) {
        let mut card = Card::blank("fuzz");
        prop_assert_eq!(card.select(), StatusWord::OK);
        let (_, sw) = card.cmd(0x80, ins::STORE_DATA, p1, 0, &data);
        prop_assert!(sw.sw1() != 0);
    }
}

#[test]
fn truncated_and_bit_flipped_signed_objects_are_refused_cleanly() {
    let mut w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(5);
    let cti = w.next_cti();
    let n = card.nonce();
    let tok = w.token(&cti, n, md);
    let req = request(&tok, &env);
    for cut in [1usize, 2, 3, 10, 100, req.len() / 2, req.len() - 1] {
        let _ = card.nonce();
        let (_, sw) = card.cmd(0x80, ins::AUTHORIZE_UPDATE, 0, 0, &req[..cut]);
        assert!(!sw.is_success(), "truncated at {cut}");
    }
    for i in (0..req.len()).step_by(7) {
        let mut r = req.clone();
        r[i] ^= 0x41;
        let _ = card.nonce();
        let (_, sw) = card.cmd(0x80, ins::AUTHORIZE_UPDATE, 0, 0, &r);
        assert!(!sw.is_success(), "flipped byte {i}");
    }
}

#[test]
fn file_store_persists_commits_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    {
        let mut s = FileStore::open(&path, 64).unwrap();
        s.begin().unwrap();
        s.write(3, &[1, 2, 3]).unwrap();
        s.commit().unwrap();
        s.begin().unwrap();
        s.write(10, &[9]).unwrap();
        // Dropped without commit: a crash in the middle of a transaction.
    }
    let s = FileStore::open(&path, 64).unwrap();
    let mut b = [0u8; 8];
    s.read(3, &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 0, 0, 0, 0, 0], "the uncommitted write is gone");
    // A stale temporary file from a crash during commit is ignored.
    std::fs::write(dir.path().join("card.img.tmp"), [0xAA; 64]).unwrap();
    let s = FileStore::open(&path, 64).unwrap();
    s.read(3, &mut b[..3]).unwrap();
    assert_eq!(&b[..3], &[1, 2, 3]);
    // Another size is refused, not truncated.
    assert!(FileStore::open(&path, 65).is_err());
}

#[test]
fn virtual_card_survives_restart_on_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("card.img");
    let mut w = World::new();
    // Personalize and update on a RAM card, then move its image to a file, as the virtual
    // card would after a restart.
    let mut card = w.default_card();
    w.full_update(&mut card, 4);
    std::fs::write(&path, card.image()).unwrap();
    let store = FileStore::open(&path, PERSISTENT_SIZE).unwrap();
    let mut applet = simfota_card::Applet::new(
        store,
        TestPlatform::new(Crypto::from_env(), TestRng::new("file")),
    );
    let mut out = [0u8; 258];
    let mut sel = vec![0x00, ins::SELECT, 4, 0, simfota_card::AID.len() as u8];
    sel.extend_from_slice(&simfota_card::AID);
    let n = applet.process(&sel, &mut out);
    assert_eq!(&out[..n], &[0x90, 0x00]);
    let n = applet.process(&[0x80, ins::GET_DATA, 0x01, 0x05, 0x00], &mut out);
    assert_eq!(&out[n - 2..n], &[0x90, 0x00]);
    let st =
        simfota_wire::contract::LogStatus::decode(&out[..n - 2], &simfota_wire::Limits::DEFAULT)
            .unwrap();
    assert_eq!(st.next, 3);
    // A change goes to the file.
    let mut imei = vec![0x80, ins::BIND_TERMINAL, 0, 0, 15];
    imei.extend_from_slice(IMEI.as_bytes());
    let n = applet.process(&imei, &mut out);
    assert_eq!(&out[..n], &[0x90, 0x00]);
    let mut pin = vec![0x00, ins::VERIFY, 0, 0x81, 8];
    pin.extend_from_slice(b"0000\xFF\xFF\xFF\xFF");
    let n = applet.process(&pin, &mut out);
    assert_eq!(&out[..n], &[0x63, 0xC2]);
    drop(applet);
    let store = FileStore::open(&path, PERSISTENT_SIZE).unwrap();
    let mut applet = simfota_card::Applet::new(
        store,
        TestPlatform::new(Crypto::from_env(), TestRng::new("file")),
    );
    let n = applet.process(&sel, &mut out);
    assert_eq!(&out[..n], &[0x90, 0x00]);
    let n = applet.process(&[0x00, ins::VERIFY, 0, 0x81], &mut out);
    assert_eq!(&out[..n], &[0x63, 0xC2]);
}

/// A store whose reads of one range fail once `failing` is set (a worn or faulty persistent
/// memory cell).
struct FailingReads {
    inner: simfota_card::CardMemory,
    range: std::ops::Range<usize>,
    failing: std::rc::Rc<std::cell::Cell<bool>>,
}

impl Store for FailingReads {
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), simfota_card::StoreError> {
        let overlaps = offset < self.range.end && offset + buf.len() > self.range.start;
        if self.failing.get() && overlaps {
            return Err(simfota_card::StoreError::PowerLost);
        }
        self.inner.read(offset, buf)
    }
    fn begin(&mut self) -> Result<(), simfota_card::StoreError> {
        self.inner.begin()
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), simfota_card::StoreError> {
        self.inner.write(offset, data)
    }
    fn commit(&mut self) -> Result<(), simfota_card::StoreError> {
        self.inner.commit()
    }
    fn abort(&mut self) {
        self.inner.abort()
    }
}

#[test]
fn a_failing_memory_read_is_a_memory_error_not_a_refusal() {
    // Before, a failed read of the card's own tables during AUTHORIZE UPDATE was refused and
    // logged as "malformed request", blaming the request for the card's fault. Now it answers
    // 6581 (memory failure) and records nothing about the request.
    let mut w = World::new();
    let mut card = w.default_card();
    let image = card.image();
    let mut mem = simfota_card::CardMemory::new();
    mem.begin().unwrap();
    mem.write(0, &image).unwrap();
    mem.commit().unwrap();
    let failing = std::rc::Rc::new(std::cell::Cell::new(false));
    // The server table (docs/card.md, persistent layout: offset 1031, 8 × 100 bytes).
    let store = FailingReads {
        inner: mem,
        range: 1031..1831,
        failing: failing.clone(),
    };
    let mut applet = simfota_card::Applet::new(
        store,
        TestPlatform::new(Crypto::from_env(), TestRng::new("f")),
    );
    let mut send = |apdu: &[u8]| -> (Vec<u8>, StatusWord) {
        let mut out = vec![0u8; 65_538];
        let n = applet.process(apdu, &mut out);
        let sw = StatusWord(u16::from_be_bytes([out[n - 2], out[n - 1]]));
        out.truncate(n - 2);
        (out, sw)
    };
    let aid = simfota_card::AID;
    let mut select = vec![0x00, ins::SELECT, 0x04, 0x00, aid.len() as u8];
    select.extend_from_slice(&aid);
    assert_eq!(send(&select).1, StatusWord::OK);
    let mut bind = vec![0x80, ins::BIND_TERMINAL, 0, 0, 15];
    bind.extend_from_slice(IMEI.as_bytes());
    assert_eq!(send(&bind).1, StatusWord::OK);
    let (nonce, sw) = send(&[0x00, ins::GET_CHALLENGE, 0, 0, 16]);
    assert_eq!(sw, StatusWord::OK);
    let (env, md) = w.package(10);
    let cti = w.next_cti();
    let token = w.token(&cti, simfota_wire::Nonce(nonce.try_into().unwrap()), md);
    let data = request(&token, &env);
    let mut apdu = vec![0x80, ins::AUTHORIZE_UPDATE, 0, 0, 0];
    apdu.extend_from_slice(&(data.len() as u16).to_be_bytes());
    apdu.extend_from_slice(&data);
    failing.set(true);
    assert_eq!(send(&apdu).1, StatusWord::MEMORY_FAILURE);
    failing.set(false);
    // Nothing was recorded: the log is as before, and no tally counts a "malformed" request.
    let (info, sw) = send(&[0x80, ins::GET_DATA, 0x01, 0x01, 0, 0, 0]);
    assert_eq!(sw, StatusWord::OK);
    let before_info = card.info();
    let before =
        simfota_wire::contract::CardInfo::decode(&before_info, &simfota_wire::Limits::DEFAULT)
            .unwrap();
    let after =
        simfota_wire::contract::CardInfo::decode(&info, &simfota_wire::Limits::DEFAULT).unwrap();
    assert_eq!((after.log_next, before.log_next), (0, 0));
}
