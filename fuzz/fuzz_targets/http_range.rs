//! The server's `Range` / `If-Range` decision (RFC 9110 §14, §13.1.5) on arbitrary header
//! values and lengths. The file is compiled here as it is in the server
//! (crates/server/src/http/range.rs has no dependency), so the fuzz build does not need the
//! server's own dependencies for it.
//!
//! Input: `[len: u64 LE][flags][Range value]\n[If-Range value]`; flag bit 0 sends the
//! If-Range header, bit 1 sends no Range at all. A decision must name bytes inside the
//! representation: a partial answer with `start <= end < len`, 416 only for a range that
//! starts at or past the end (or a suffix of zero bytes), and the whole body when If-Range does
//! not match the ETag.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/server/src/http/range.rs"]
mod range;

use range::{RangeDecision, decide};

const ETAG: &str = "\"0123abcd\"";

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(1 << 20);

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let len = u64::from_le_bytes(*len);
    let Some((&flags, rest)) = rest.split_first() else {
        return;
    };
    // Header values reach the server as `HeaderValue::to_str`: visible ASCII only.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (range, if_range) = text.split_once('\n').unwrap_or((text, ETAG));
    let range = (flags & 2 == 0).then_some(range);
    let if_range = (flags & 1 != 0).then_some(if_range);

    match decide(range, if_range, len, ETAG) {
        RangeDecision::Full => {}
        RangeDecision::Partial { start, end } => {
            assert!(range.is_some(), "a partial answer without a Range header");
            assert!(start <= end, "range {start}-{end} is reversed");
            assert!(end < len, "range {start}-{end} ends past {len} bytes");
            if let Some(v) = if_range {
                assert_eq!(v.trim(), ETAG, "If-Range {v:?} honoured but does not match");
            }
        }
        RangeDecision::Unsatisfiable => {
            let r = range.expect("416 without a Range header");
            assert!(
                r.contains("bytes="),
                "416 for a header that is not a byte range: {r:?}"
            );
        }
    }
});
