//! The card applet on arbitrary APDU sequences, starting from a personalized card (the
//! layout-v1 golden image of crates/card/tests/images, one finished update in its log).
//! Refusals are fine; a panic, a response without a status word, or a response longer than
//! the buffer is not. Input: a sequence of `[len][len bytes of APDU]`; the first byte's low
//! bit picks short (258-byte) or extended (65 538-byte) response buffers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_card::{Applet, CardMemory, RngPlatform, Store};
use simfota_wire::rand_core::{CryptoRng, Error, RngCore};

const IMAGE: &[u8] = include_bytes!("../../crates/card/tests/images/layout-v1-personalized.img");

/// A fixed xorshift generator: fuzzing needs a repeatable run for a given input, not secrecy.
struct FuzzRng(u64);

impl RngCore for FuzzRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for FuzzRng {}

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut mem = CardMemory::new();
    if mem.begin().is_err() || mem.write(0, IMAGE).is_err() || mem.commit().is_err() {
        return;
    }
    let mut applet = Applet::new(mem, RngPlatform(FuzzRng(0x9e37_79b9_7f4a_7c15)));
    let mut out = vec![0u8; if mode & 1 == 1 { 65_538 } else { 258 }];
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (apdu, next) = tail.split_at(len);
        rest = next;
        let n = applet.process(apdu, &mut out);
        assert!(n >= 2 && n <= out.len(), "response of {n} bytes");
    }
});
