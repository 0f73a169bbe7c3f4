//! The provisioning-file parser behind `POST /api/v1/devices/bulk` with `text/csv`
//! (`simfota_server::provisioning::devices_from_csv`) on arbitrary bytes: refusals are fine,
//! panics are not. A file it takes holds at most `BULK_MAX` devices, each with a 15-digit
//! IMEI and an auth scheme the registry knows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_server::provisioning::devices_from_csv;
use simfota_server::registry::BULK_MAX;

/// The allocation guard every fuzz target uses (fuzz/src/lib.rs).
#[path = "../../src/lib.rs"]
mod bounded;

#[global_allocator]
static ALLOC: bounded::BoundedAlloc = bounded::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    if let Ok(devices) = devices_from_csv(data) {
        assert!(devices.len() <= BULK_MAX);
        for d in &devices {
            assert!(d.imei.len() == 15 && d.imei.bytes().all(|b| b.is_ascii_digit()));
            assert!(d.auth == "md5" || d.auth == "hmac", "auth {:?}", d.auth);
        }
    }
});
