//! What every fuzz target shares: an allocator that turns one oversized allocation into a
//! crash.
//!
//! libFuzzer's own `-malloc_limit_mb` only works with a sanitizer's allocator hooks, and these
//! targets are built without a sanitizer (`cargo fuzz … -s none`, the stable toolchain). A
//! single allocation larger than the target's bound (a length taken from the input and
//! reserved before it is checked) aborts with a message; libFuzzer reports the abort as a
//! crash and saves the input. The total memory of a run is bounded by `-rss_limit_mb`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write as _;

/// The system allocator, refusing any single allocation above `max` bytes by aborting.
#[derive(Debug)]
pub struct BoundedAlloc {
    max: usize,
}

impl BoundedAlloc {
    /// An allocator whose largest allocation is `max` bytes.
    pub const fn new(max: usize) -> Self {
        BoundedAlloc { max }
    }

    fn check(&self, size: usize) {
        if size > self.max {
            // No formatting here: it could allocate, inside the allocator.
            let _ = std::io::stderr()
                .write_all(b"BoundedAlloc: one allocation exceeds the target's bound\n");
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the `GlobalAlloc`
// contract; `check` only reads the size and may abort, never returning a bad pointer.
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.check(new_size);
        // SAFETY: as in `dealloc`; `new_size` is the caller's, unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
