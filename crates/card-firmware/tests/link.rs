//! The firmware's serial link on the host: framing, refusals that keep the link in step,
//! and the applet behind it answering as the host build does.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;

use rand_core::RngCore;
use simfota_card::{AID, CardMemory};
use simfota_card_firmware::{
    BANNER, Buffers, MAX_REQUEST, Measurement, OP_APDU, OP_EXIT, OP_MEASURE, OP_POWER_ON, OP_RESET,
    STATUS_OK, STATUS_REFUSED, SeededRng, StackUse, serve,
};

/// A link fed with the requests up front; it records what the firmware sends.
struct Script {
    input: VecDeque<u8>,
    output: Vec<u8>,
}

impl simfota_card_firmware::Link for Script {
    fn read(&mut self) -> u8 {
        self.input
            .pop_front()
            .expect("the firmware read past the requests")
    }
    fn write(&mut self, byte: u8) {
        self.output.push(byte);
    }
}

fn frame(op: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![op];
    f.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn apdu(reader: u16, command: &[u8]) -> Vec<u8> {
    let mut b = reader.to_be_bytes().to_vec();
    b.extend_from_slice(command);
    frame(OP_APDU, &b)
}

/// Runs `requests` (an exit is appended) and returns the answers as (status, body).
fn run(requests: &[Vec<u8>]) -> Vec<(u8, Vec<u8>)> {
    let mut input: Vec<u8> = requests.concat();
    input.extend(frame(OP_EXIT, &[]));
    let mut link = Script {
        input: input.into(),
        output: Vec::new(),
    };
    let mut memory = Box::new(CardMemory::new());
    let mut applet = None;
    let mut buffers = Box::new(Buffers::new());
    serve(&mut link, &mut memory, &mut applet, &mut buffers, || {
        StackUse {
            high_water: 100,
            untouched: 200,
        }
    });
    assert!(link.input.is_empty(), "every request was read");
    let mut out = &link.output[..];
    let mut answers = Vec::new();
    while !out.is_empty() {
        let len = usize::from(u16::from_be_bytes([out[1], out[2]]));
        answers.push((out[0], out[3..3 + len].to_vec()));
        out = &out[3 + len..];
    }
    answers
}

fn select() -> Vec<u8> {
    let mut a = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
    a.extend_from_slice(&AID);
    a.push(0x00);
    a
}

#[test]
fn banner_then_one_answer_per_request_then_exit() {
    let answers = run(&[
        frame(OP_POWER_ON, b"link"),
        apdu(258, &select()),
        frame(OP_RESET, &[]),
        // Nothing is selected after a reset.
        apdu(258, &[0x00, 0x84, 0x00, 0x00, 0x10]),
        frame(OP_MEASURE, &[]),
    ]);
    assert_eq!(answers.len(), 7);
    assert_eq!(answers[0], (STATUS_OK, BANNER.to_vec()));
    assert_eq!(answers[1], (STATUS_OK, vec![]));
    // The FCI of a blank card: version 1.1, life cycle 0.
    assert_eq!(
        answers[2],
        (
            STATUS_OK,
            vec![
                0x6F, 0x09, 0xA5, 0x07, 0x80, 0x02, 0x01, 0x01, 0x81, 0x01, 0x00, 0x90, 0x00
            ]
        )
    );
    assert_eq!(answers[3], (STATUS_OK, vec![]));
    assert_eq!(answers[4], (STATUS_OK, vec![0x69, 0x85]));
    let m = Measurement::from_bytes(&answers[5].1).unwrap();
    assert_eq!((m.stack_high_water, m.stack_untouched), (100, 200));
    assert_eq!(
        m.ram_state as usize,
        simfota_card_firmware::FirmwareApplet::ram_state_size()
    );
    assert_eq!(Measurement::from_bytes(&m.to_bytes()), Some(m));
    assert_eq!(answers[6], (STATUS_OK, vec![]));
}

#[test]
fn refusals_name_the_cause_and_keep_the_link_in_step() {
    let answers = run(&[
        apdu(258, &select()),
        frame(OP_RESET, &[]),
        frame(OP_POWER_ON, &[]),
        frame(OP_POWER_ON, &[b'x'; 65]),
        frame(b'Q', &[]),
        frame(OP_APDU, &[0x01, 0x02, 0x00, 0xA4, 0x04, 0x00]),
        frame(OP_APDU, &[0x00]),
        frame(OP_POWER_ON, b"link"),
        apdu(1, &select()),
        apdu(258, &[]),
        frame(OP_APDU, &vec![0u8; MAX_REQUEST + 1]),
        // After all that, the link still carries an APDU.
        apdu(258, &select()),
    ]);
    let refused = |i: usize, why: &str| {
        assert_eq!(answers[i].0, STATUS_REFUSED, "answer {i}");
        assert_eq!(String::from_utf8_lossy(&answers[i].1), why, "answer {i}");
    };
    refused(1, "no card: power on (P) first");
    refused(2, "no card: power on (P) first");
    refused(3, "seed label must be 1-64 bytes");
    refused(4, "seed label must be 1-64 bytes");
    refused(5, "unknown request op");
    refused(6, "no card: power on (P) first");
    refused(7, "no card: power on (P) first");
    assert_eq!(answers[8], (STATUS_OK, vec![]));
    refused(9, "reader buffer below 2 bytes");
    // An empty APDU is the applet's to refuse: wrong length.
    assert_eq!(answers[10], (STATUS_OK, vec![0x67, 0x00]));
    refused(11, "request body longer than 1600 bytes");
    assert_eq!(answers[12].0, STATUS_OK);
    assert_eq!(answers[12].1[answers[12].1.len() - 2..], [0x90, 0x00]);
}

#[test]
fn power_on_blanks_the_card_and_reseeds_the_generator() {
    let challenge = [0x00, 0x84, 0x00, 0x00, 0x10];
    // Personalization state does not survive a power-on: GENERATE KEY PAIR works again on a
    // blank card, and the same label gives the same key.
    let keygen = [0x00, 0x46, 0x00, 0x00, 0x00];
    let answers = run(&[
        frame(OP_POWER_ON, b"one"),
        apdu(258, &select()),
        apdu(258, &keygen),
        frame(OP_POWER_ON, b"one"),
        apdu(258, &select()),
        apdu(258, &keygen),
        frame(OP_POWER_ON, b"two"),
        apdu(258, &select()),
        apdu(258, &keygen),
        apdu(258, &challenge),
    ]);
    let key = &answers[3].1;
    assert_eq!(key.len(), 65 + 2, "an uncompressed P-256 key and 9000");
    assert_eq!((key[0], &key[65..]), (0x04, &[0x90, 0x00][..]));
    assert_eq!(answers[6], answers[3], "same label, same key");
    assert_ne!(answers[9], answers[3], "another label, another key");
    // The blank card is in personalization: GET CHALLENGE is for operational cards.
    assert_eq!(answers[10], (STATUS_OK, vec![0x69, 0x85]));
}

#[test]
fn generator_is_sha256_in_counter_mode_over_the_label() {
    use sha2::{Digest, Sha256};
    let mut rng = SeededRng::new(b"label");
    let mut got = [0u8; 40];
    rng.fill_bytes(&mut got);
    let seed = Sha256::digest(b"label");
    let block = |n: u64| {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(n.to_be_bytes());
        h.finalize()
    };
    assert_eq!(got[..32], block(0)[..]);
    assert_eq!(got[32..], block(1)[..8]);
}
