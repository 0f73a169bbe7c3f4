//! The simfota card applet as firmware for an Arm Cortex-M4 (`thumbv7em-none-eabihf`): the
//! same `simfota-card` code a SIM would run, answering APDUs over a serial link, on the Arm
//! MPS2 AN386 board as QEMU emulates it (`qemu-system-arm -M mps2-an386`).
//!
//! This library holds what does not touch the hardware, so the host tests it too: the
//! framing of the serial link ([`serve`]), the persistent store in RAM ([`CardStore`]) and
//! the deterministic generator ([`SeededRng`]). The binary (`src/main.rs`) adds the board:
//! UART driver, stack painting, semihosting exit.
//!
//! # The serial link
//!
//! Requests and answers are frames, integers big-endian:
//!
//! - request: `op` (1) ‖ body length (2) ‖ body;
//! - answer: `status` (1: [`STATUS_OK`], [`STATUS_REFUSED`], [`STATUS_STOPPED`]) ‖ body
//!   length (2) ‖ body.
//!
//! At start the firmware sends one answer frame unasked, [`BANNER`]. Then, per request:
//!
//! | op | body | answer body |
//! |---|---|---|
//! | [`OP_POWER_ON`] `P` | generator seed label (1-64 bytes) | — (a blank card, new RAM state) |
//! | [`OP_RESET`] `R` | — | — (`Applet::reset`: RAM state cleared, persistent state kept) |
//! | [`OP_APDU`] `A` | reader buffer size (2) ‖ command APDU | response APDU: data ‖ SW1 SW2 |
//! | [`OP_MEASURE`] `M` | — | [`Measurement`] (16 bytes); the stack is painted again |
//! | [`OP_EXIT`] `X` | — | —, then the firmware stops the board |
//!
//! A request the firmware cannot take (unknown op, body too long, APDU before `P`) gets a
//! [`STATUS_REFUSED`] answer naming why, and the link goes on. A panic sends one
//! [`STATUS_STOPPED`] answer with its message and stops the board.
#![no_std]
#![forbid(unsafe_code)]

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest as _, Sha256};
use simfota_card::{Applet, CardMemory, IO_CAP, RngPlatform, Store, StoreError};

/// The first frame the firmware sends (status [`STATUS_OK`]): who answers on the link.
pub const BANNER: &[u8] = b"simfota-card-firmware 1";

/// Request: a blank card (all-zero persistent image) with a new applet whose generator is
/// seeded with the body.
pub const OP_POWER_ON: u8 = b'P';
/// Request: a card reset (`Applet::reset`).
pub const OP_RESET: u8 = b'R';
/// Request: one command APDU, after the reader's buffer size.
pub const OP_APDU: u8 = b'A';
/// Request: the stack measurement since the last one (or since start).
pub const OP_MEASURE: u8 = b'M';
/// Request: stop the board (QEMU exits with status 0).
pub const OP_EXIT: u8 = b'X';

/// Answer status: done, the body is the answer.
pub const STATUS_OK: u8 = 0;
/// Answer status: the request was not taken; the body says why (UTF-8).
pub const STATUS_REFUSED: u8 = 1;
/// Answer status: the firmware panicked; the body is the message, and the board stops.
pub const STATUS_STOPPED: u8 = 2;

/// Largest request body: an extended case-4 APDU with a full I/O buffer of data
/// (4 + 3 + 1536 + 2) and the reader buffer size, with room to spare. Longer APDUs (which the
/// applet would refuse anyway) are refused by the link.
pub const MAX_REQUEST: usize = 1600;
/// Largest seed label.
pub const MAX_LABEL: usize = 64;
/// The response buffer: the applet never answers more than its I/O buffer and a status word,
/// so a reader buffer above this size behaves as this size.
pub const RESPONSE_CAP: usize = IO_CAP + 2;

/// The applet as the firmware runs it.
pub type FirmwareApplet<'a> = Applet<CardStore<'a>, RngPlatform<SeededRng>>;

/// A deterministic generator: SHA-256 in counter mode over a seed label, the same bytes as
/// the host tests' generator (`crates/card/tests/common`). The emulated board has no true
/// random source, and determinism is what lets the firmware's answers be compared with the
/// host build's byte for byte. A card uses its platform's TRNG (`docs/card.md`).
pub struct SeededRng {
    seed: [u8; 32],
    counter: u64,
}

impl SeededRng {
    /// The generator for `label`.
    pub fn new(label: &[u8]) -> Self {
        Self {
            seed: Sha256::digest(label).into(),
            counter: 0,
        }
    }
}

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let mut h = Sha256::new();
            h.update(self.seed);
            h.update(self.counter.to_be_bytes());
            self.counter += 1;
            let block: [u8; 32] = h.finalize().into();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

// Only for the emulated board and its comparison with the host: see the type's docs.
impl CryptoRng for SeededRng {}

/// The card's persistent image, held in RAM (on a card: EEPROM or flash), borrowed for the
/// applet's lifetime so that the image itself stays in a static, not on the stack.
pub struct CardStore<'a>(pub &'a mut CardMemory);

impl CardStore<'_> {
    /// Makes the image blank (all zero), as a freshly installed applet's memory, through
    /// the store's own transaction.
    pub fn blank(&mut self) -> Result<(), StoreError> {
        const ZEROS: [u8; 256] = [0; 256];
        self.0.abort();
        self.0.begin()?;
        let cap = self.0.capacity();
        let mut at = 0;
        while at < cap {
            let n = (cap - at).min(ZEROS.len());
            self.0.write(at, &ZEROS[..n])?;
            at += n;
        }
        self.0.commit()
    }
}

impl Store for CardStore<'_> {
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), StoreError> {
        self.0.read(offset, buf)
    }
    fn begin(&mut self) -> Result<(), StoreError> {
        self.0.begin()
    }
    fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), StoreError> {
        self.0.write(offset, data)
    }
    fn commit(&mut self) -> Result<(), StoreError> {
        self.0.commit()
    }
    fn abort(&mut self) {
        self.0.abort()
    }
}

/// The serial link, one byte at a time (blocking).
pub trait Link {
    /// The next byte received.
    fn read(&mut self) -> u8;
    /// Sends one byte.
    fn write(&mut self, byte: u8);
}

/// The stack figures the board measures: how deep the stack went since the last
/// measurement and how much of the painted area was never touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StackUse {
    /// Bytes from the top of the stack to the deepest word written.
    pub high_water: u32,
    /// Painted bytes below that word, never written (0: the stack went at least as deep as
    /// the painted area, maybe deeper).
    pub untouched: u32,
}

/// The answer to [`OP_MEASURE`]: four big-endian `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Stack high-water mark since the last measurement (bytes).
    pub stack_high_water: u32,
    /// Painted stack bytes never touched (bytes).
    pub stack_untouched: u32,
    /// The applet's RAM state, `Applet::ram_state_size()` (bytes).
    pub ram_state: u32,
    /// The whole applet object on this target: RAM state, store reference, generator,
    /// counters (bytes).
    pub applet_object: u32,
}

impl Measurement {
    /// Encoded length.
    pub const LEN: usize = 16;

    /// The 16-byte encoding.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&self.stack_high_water.to_be_bytes());
        b[4..8].copy_from_slice(&self.stack_untouched.to_be_bytes());
        b[8..12].copy_from_slice(&self.ram_state.to_be_bytes());
        b[12..16].copy_from_slice(&self.applet_object.to_be_bytes());
        b
    }

    /// Reads the encoding; `None` when `b` is not 16 bytes.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != Self::LEN {
            return None;
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Self {
            stack_high_water: word(0),
            stack_untouched: word(4),
            ram_state: word(8),
            applet_object: word(12),
        })
    }
}

/// The firmware's buffers, kept out of the stack (statics on the board).
pub struct Buffers {
    request: [u8; MAX_REQUEST],
    response: [u8; RESPONSE_CAP],
}

impl Buffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Self {
            request: [0; MAX_REQUEST],
            response: [0; RESPONSE_CAP],
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// Sends one answer frame.
pub fn send(link: &mut impl Link, status: u8, body: &[u8]) {
    // Bodies are at most RESPONSE_CAP or a short message: the length fits 16 bits.
    let len = body.len().min(usize::from(u16::MAX));
    link.write(status);
    for b in (len as u16).to_be_bytes() {
        link.write(b);
    }
    for &b in &body[..len] {
        link.write(b);
    }
}

/// Serves requests until [`OP_EXIT`] (answered before returning). `memory` is the card's
/// persistent image, `applet` the slot the running applet lives in (both statics on the
/// board), `measure` the board's stack measurement (which paints the stack again).
pub fn serve<'a>(
    link: &mut impl Link,
    memory: &'a mut CardMemory,
    applet: &mut Option<FirmwareApplet<'a>>,
    buffers: &mut Buffers,
    mut measure: impl FnMut() -> StackUse,
) {
    send(link, STATUS_OK, BANNER);
    let mut memory = Some(memory);
    loop {
        let op = link.read();
        let len = usize::from(u16::from_be_bytes([link.read(), link.read()]));
        // Read the whole body even when it is refused, so the link stays in step.
        for i in 0..len {
            let b = link.read();
            if i < MAX_REQUEST {
                buffers.request[i] = b;
            }
        }
        if len > MAX_REQUEST {
            send(link, STATUS_REFUSED, b"request body longer than 1600 bytes");
            continue;
        }
        let body = &buffers.request[..len];
        match op {
            OP_POWER_ON => {
                if body.is_empty() || body.len() > MAX_LABEL {
                    send(link, STATUS_REFUSED, b"seed label must be 1-64 bytes");
                    continue;
                }
                let mem = match applet.take() {
                    Some(old) => old.into_store().0,
                    None => match memory.take() {
                        Some(m) => m,
                        // The memory is either in the applet or still unused.
                        None => {
                            send(link, STATUS_REFUSED, b"card memory lost");
                            continue;
                        }
                    },
                };
                let mut store = CardStore(mem);
                if store.blank().is_err() {
                    send(link, STATUS_REFUSED, b"cannot blank the card memory");
                    continue;
                }
                *applet = Some(Applet::new(store, RngPlatform(SeededRng::new(body))));
                send(link, STATUS_OK, &[]);
            }
            OP_RESET => match applet.as_mut() {
                Some(a) => {
                    a.reset();
                    send(link, STATUS_OK, &[]);
                }
                None => send(link, STATUS_REFUSED, b"no card: power on (P) first"),
            },
            OP_APDU => {
                let Some(a) = applet.as_mut() else {
                    send(link, STATUS_REFUSED, b"no card: power on (P) first");
                    continue;
                };
                if body.len() < 2 {
                    send(
                        link,
                        STATUS_REFUSED,
                        b"APDU request without reader buffer size",
                    );
                    continue;
                }
                let reader = usize::from(u16::from_be_bytes([body[0], body[1]]));
                if reader < 2 {
                    send(link, STATUS_REFUSED, b"reader buffer below 2 bytes");
                    continue;
                }
                let out = &mut buffers.response[..reader.min(RESPONSE_CAP)];
                let n = a.process(&body[2..], out);
                send(link, STATUS_OK, &out[..n]);
            }
            OP_MEASURE => {
                let stack = measure();
                let m = Measurement {
                    stack_high_water: stack.high_water,
                    stack_untouched: stack.untouched,
                    ram_state: FirmwareApplet::ram_state_size() as u32,
                    applet_object: core::mem::size_of::<FirmwareApplet<'_>>() as u32,
                };
                send(link, STATUS_OK, &m.to_bytes());
            }
            OP_EXIT => {
                send(link, STATUS_OK, &[]);
                return;
            }
            _ => send(link, STATUS_REFUSED, b"unknown request op"),
        }
    }
}
