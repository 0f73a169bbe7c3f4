//! The WBXML decoder on arbitrary bytes: errors are fine, panics are not. A message that
//! decodes must encode and decode again to the same model.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_syncml::{Limits, wbxml};

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = wbxml::decode(data, &limits)
        && let Ok(again) = wbxml::encode(&m)
    {
        assert_eq!(wbxml::decode(&again, &limits).ok(), Some(m));
    }
});
