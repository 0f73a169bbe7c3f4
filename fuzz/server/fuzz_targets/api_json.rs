//! The JSON bodies of the server's REST API, as axum's `Json` extractor deserializes them with
//! serde_json: `POST /api/v1/devices` (`NewDevice`), the list inside `POST /devices/bulk`,
//! and `POST /api/v1/campaigns` (`CampaignSpec`, then its `validate`). Errors are fine; panics
//! are not. A campaign spec that validates must serialize and deserialize to the same spec.
//! The first byte picks the body type.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_server::campaign::CampaignSpec;
use simfota_server::registry::NewDevice;

/// The allocation guard every fuzz target uses (fuzz/src/lib.rs).
#[path = "../../src/lib.rs"]
mod bounded;

#[global_allocator]
static ALLOC: bounded::BoundedAlloc = bounded::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let _ = serde_json::from_slice::<NewDevice>(body);
        }
        1 => {
            let _ = serde_json::from_slice::<Vec<NewDevice>>(body);
        }
        _ => {
            let Ok(spec) = serde_json::from_slice::<CampaignSpec>(body) else {
                return;
            };
            if spec.validate().is_ok() {
                let json = serde_json::to_string(&spec).expect("a spec serializes");
                let again: CampaignSpec = serde_json::from_str(&json).expect("and reads back");
                assert_eq!(serde_json::to_string(&again).ok(), Some(json));
                assert!(again.validate().is_ok());
            }
        }
    }
});
