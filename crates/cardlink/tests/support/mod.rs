//! Shared helpers of the tests that run through the system's PC/SC stack.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::{ServeEnd, ServeError, StopHandle, VpcdServer};
use simfota_cardlink::{LinkError, VirtualCard};

/// vpcd's first slot; these tests run one at a time (nextest group `pcsc`, and the lock below
/// for plain `cargo test`).
pub const VPCD: &str = "127.0.0.1:35963";
/// The reader PC/SC shows for that slot.
pub const READER: &str = "Virtual PCD 00 00";

static SLOT: Mutex<()> = Mutex::new(());

/// Whether pcscd with vpcd is there. Without `SIMFOTA_PCSCD=1` the test fails, unless
/// `SIMFOTA_SKIP_EXTERNAL=1` says missing outside tools are to be skipped.
pub fn pcscd_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var("SIMFOTA_PCSCD").as_deref() != Ok("1") {
        if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
            panic!("{test}: pcscd with vsmartcard-vpcd is required (SIMFOTA_PCSCD=1 not set)");
        }
        println!(
            "skipped: {test}: pcscd with vsmartcard-vpcd missing (set SIMFOTA_PCSCD=1 when it runs; skipped under SIMFOTA_SKIP_EXTERNAL=1)"
        );
        return None;
    }
    Some(SLOT.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A card served into vpcd from a thread of this test.
pub struct Served<C> {
    pub stop: StopHandle,
    pub thread: Option<JoinHandle<(C, Result<ServeEnd, ServeError>)>>,
}

impl<C: VirtualCard + Send + 'static> Served<C> {
    pub fn start(mut card: C) -> Self {
        let server = VpcdServer::connect(VPCD).expect("vpcd listens");
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || {
            let end = server.serve(&mut card, &mut |_| {});
            (card, end)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Pulls the card and gives it back.
    pub fn pull(mut self) -> (C, Result<ServeEnd, ServeError>) {
        self.stop.stop();
        let thread = self.thread.take().expect("not pulled twice");
        let out = thread.join().expect("serve thread");
        wait_until_empty();
        out
    }
}

impl<C> Drop for Served<C> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.stop.stop();
            let _ = thread.join();
            wait_until_empty();
        }
    }
}

/// Connects to the card in the test reader, waiting for pcscd to notice the insertion.
pub fn connect() -> PcscChannel {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match PcscChannel::connect(Some(READER)) {
            Ok(channel) => return channel,
            Err(LinkError::NoCard { .. } | LinkError::CardRemoved { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("cannot connect to {READER}: {e}"),
        }
    }
}

/// Waits until pcscd has seen the card go, so the next test's card is a fresh insertion.
pub fn wait_until_empty() {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        match PcscChannel::connect(Some(READER)) {
            Err(LinkError::NoCard { .. }) => return,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A card with the transport habits of a SIM, to test the link through pcscd:
/// - `80 E0` (chained with CLA `90`): answers the assembled data reversed, in pieces of at most
///   `chunk` bytes followed by `61xx` (GET RESPONSE `00 C0` fetches the rest);
/// - `80 CA`: a 20-byte object, only with Le = 20 exactly (else `6C14`);
/// - `80 D0`: stores its data in RAM (volatile); `80 D2` reads it back (cleared by any reset);
/// - anything else: `6D00`; malformed lengths: `6700`.
pub struct IsoCard {
    pub chunk: usize,
    pub extended: bool,
    /// Answer a T=0-only ATR (no TD1) instead of the T=1 one.
    pub t0: bool,
    pending: Vec<u8>,
    chain: Vec<u8>,
    volatile: Vec<u8>,
    pub resets: u32,
    pub power_offs: u32,
    pub commands: u32,
}

impl IsoCard {
    pub fn new(chunk: usize, extended: bool) -> Self {
        Self {
            chunk,
            extended,
            t0: false,
            pending: Vec::new(),
            chain: Vec::new(),
            volatile: Vec::new(),
            resets: 0,
            power_offs: 0,
            commands: 0,
        }
    }

    fn answer(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        if data.len() <= self.chunk {
            data.extend_from_slice(&[0x90, 0x00]);
            return data;
        }
        self.pending = data.split_off(self.chunk);
        let left = self.pending.len().min(255) as u8;
        data.extend_from_slice(&[0x61, left]);
        data
    }
}

/// (CLA, INS, data, Ne) of an APDU, or None when the lengths are malformed.
fn parse(apdu: &[u8]) -> Option<(u8, u8, Vec<u8>, Option<usize>)> {
    if apdu.len() < 4 {
        return None;
    }
    let (cla, ins) = (apdu[0], apdu[1]);
    let body = &apdu[4..];
    match body.len() {
        0 => Some((cla, ins, vec![], None)),
        1 => Some((
            cla,
            ins,
            vec![],
            Some(if body[0] == 0 { 256 } else { body[0] as usize }),
        )),
        _ if body[0] == 0 && body.len() >= 3 => {
            let n = u16::from_be_bytes([body[1], body[2]]) as usize;
            let rest = &body[3..];
            if rest.is_empty() {
                Some((cla, ins, vec![], Some(if n == 0 { 65536 } else { n })))
            } else if rest.len() == n {
                Some((cla, ins, rest.to_vec(), None))
            } else if rest.len() == n + 2 {
                let le = u16::from_be_bytes([rest[n], rest[n + 1]]) as usize;
                Some((
                    cla,
                    ins,
                    rest[..n].to_vec(),
                    Some(if le == 0 { 65536 } else { le }),
                ))
            } else {
                None
            }
        }
        _ => {
            let n = body[0] as usize;
            let rest = &body[1..];
            if rest.len() == n {
                Some((cla, ins, rest.to_vec(), None))
            } else if rest.len() == n + 1 {
                let le = rest[n] as usize;
                Some((
                    cla,
                    ins,
                    rest[..n].to_vec(),
                    Some(if le == 0 { 256 } else { le }),
                ))
            } else {
                None
            }
        }
    }
}

impl VirtualCard for IsoCard {
    fn atr(&self) -> Vec<u8> {
        if self.t0 {
            // TS, T0 = no interface bytes (so T=0 only) + 9 historical bytes that still
            // claim extended length: T=0 must not get it anyway.
            return vec![
                0x3B, 0x09, 0x80, 0x73, 0x80, 0x01, 0xC0, 0x83, 0x05, 0x90, 0x00,
            ];
        }
        simfota_cardlink::atr::virtual_card_atr(self.extended)
    }

    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        self.commands += 1;
        let Some((cla, ins, data, le)) = parse(apdu) else {
            return vec![0x67, 0x00];
        };
        if data.len() > 255 && !self.extended {
            return vec![0x67, 0x00];
        }
        match (cla, ins) {
            (0x00, 0xC0) => {
                let n = self.pending.len().min(le.unwrap_or(0));
                let rest = self.pending.split_off(n);
                let mut out = std::mem::replace(&mut self.pending, rest);
                if self.pending.is_empty() {
                    out.extend_from_slice(&[0x90, 0x00]);
                } else {
                    out.extend_from_slice(&[0x61, self.pending.len().min(255) as u8]);
                }
                out
            }
            (0x90, 0xE0) => {
                self.chain.extend_from_slice(&data);
                vec![0x90, 0x00]
            }
            (0x80, 0xE0) => {
                self.chain.extend_from_slice(&data);
                let mut all = std::mem::take(&mut self.chain);
                all.reverse();
                self.answer(all)
            }
            (0x80, 0xCA) => {
                if le != Some(20) {
                    return vec![0x6C, 20];
                }
                self.answer((0..20).collect())
            }
            (0x80, 0xD0) => {
                self.volatile = data;
                vec![0x90, 0x00]
            }
            (0x80, 0xD2) => {
                let v = self.volatile.clone();
                self.answer(v)
            }
            _ => vec![0x6D, 0x00],
        }
    }

    fn power_off(&mut self) {
        self.power_offs += 1;
        self.pending.clear();
        self.chain.clear();
        self.volatile.clear();
    }

    fn power_on(&mut self) {}

    fn reset(&mut self) {
        self.resets += 1;
        self.pending.clear();
        self.chain.clear();
        self.volatile.clear();
    }

    fn extended_length(&self) -> bool {
        self.extended
    }
}
