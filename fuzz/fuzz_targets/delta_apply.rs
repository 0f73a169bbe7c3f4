//! The delta patcher (`simfota_delta::apply_with` and the streaming `apply_to`) on hostile
//! deltas: errors are fine; a panic, an allocation beyond the limits, or the two entry points
//! disagreeing is not. The low bit of the first byte picks the mode:
//!
//! - 0: `[n: u16 LE][source: n bytes][delta]`, the delta as given (magic, header, frames; a
//!   mutated coder byte hands zstd bytes to the LZMA2 decoder and the other way round);
//! - 1: `[n: u16][flags][target size: u16][control len: u16][difference len: u16][source]
//!   [control][difference][verbatim]`: the three streams are raw, compressed here with zstd
//!   and put behind a valid version-2 header, so that mutations reach the control records
//!   instead of stopping at zstd's frame checks (flag bit 0 records the right source digest,
//!   bit 1 a wrong target digest).
//!
//! `diff` is not fuzzed here (its input is the vendor's own images, and a diff costs a suffix
//! array and two coders per stream per run): its round trip is the crate's property tests.
#![no_main]

use std::io::{self, Cursor};

use libfuzzer_sys::fuzz_target;
use simfota_delta::{Codec, Header, Limits, MAGIC, VERSION};

/// Small limits keep one run fast; a delta may still declare far more than the input holds.
const LIMITS: Limits = Limits {
    max_source: 1 << 16,
    max_target: 1 << 20,
};

/// `apply_with` reserves the declared target size (at most `LIMITS.max_target`) up front.
#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fn take_u16(data: &[u8]) -> Option<(usize, &[u8])> {
    let (n, rest) = data.split_first_chunk::<2>()?;
    Some((usize::from(u16::from_le_bytes(*n)), rest))
}

fn split(data: &[u8], n: usize) -> (&[u8], &[u8]) {
    data.split_at(n.min(data.len()))
}

/// Applies `delta` both ways and checks that they agree with each other and with the header.
fn apply_both(source: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    let in_memory = simfota_delta::apply_with(source, delta, &LIMITS);
    let streamed = simfota_delta::apply_to(
        Cursor::new(source),
        source.len() as u64,
        delta,
        io::sink(),
        &LIMITS,
    );
    match (in_memory, streamed) {
        (Ok(image), Ok(applied)) => {
            let (header, _) = Header::parse(delta).expect("an applied delta has a valid header");
            assert_eq!(image.len() as u64, header.target_size);
            assert_eq!(applied.size, header.target_size);
            assert_eq!(applied.sha256, simfota_wire::sha256(&image).0);
            if let Some(d) = header.target_digest {
                assert_eq!(d, applied.sha256, "target digest accepted but wrong");
            }
            Some(image)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "apply_with and apply_to refuse differently");
            None
        }
        (a, b) => panic!("apply_with gave {:?}, apply_to {:?}", a.err(), b.err()),
    }
}

thread_local! {
    /// One compression context for every run: creating one costs more than a small frame.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        std::cell::RefCell::new(zstd::bulk::Compressor::new(1).ok());
}

fn frame(raw: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|c| c.as_mut()?.compress(raw).ok())
}

fn assembled(data: &[u8]) -> Option<()> {
    let (n, rest) = take_u16(data)?;
    let (&flags, rest) = rest.split_first()?;
    let (target_size, rest) = take_u16(rest)?;
    let (c, rest) = take_u16(rest)?;
    let (d, rest) = take_u16(rest)?;
    let (source, rest) = split(rest, n);
    let (control, rest) = split(rest, c);
    let (difference, verbatim) = split(rest, d);
    let frames = [frame(control)?, frame(difference)?, frame(verbatim)?];

    let mut delta = Vec::new();
    delta.extend_from_slice(&MAGIC);
    delta.push(VERSION);
    delta.push(flags & 0b11);
    delta.extend_from_slice(&[Codec::Zstd.id(); 3]);
    delta.extend_from_slice(&[0; 3]);
    delta.extend_from_slice(&(source.len() as u64).to_le_bytes());
    delta.extend_from_slice(&(target_size as u64).to_le_bytes());
    for f in &frames {
        delta.extend_from_slice(&(f.len() as u64).to_le_bytes());
    }
    if flags & 1 != 0 {
        delta.extend_from_slice(&simfota_wire::sha256(source).0);
    }
    if flags & 2 != 0 {
        delta.extend_from_slice(&[0u8; 32]);
    }
    for f in &frames {
        delta.extend_from_slice(f);
    }
    apply_both(source, &delta);
    Some(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Some((n, rest)) = take_u16(rest) {
            let (source, delta) = split(rest, n);
            apply_both(source, delta);
        }
    } else {
        assembled(rest);
    }
});
