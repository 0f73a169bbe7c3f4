//! Every bound the decoders enforce, in one place (style: "Limits in one `Limits` struct").

/// Size bounds applied while decoding untrusted bytes.
///
/// Decoders never allocate, so these bounds are about refusing oversize or deeply nested input
/// early and predictably, not about memory exhaustion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest signed object (token, request, ack, admin command, certificate, receipt).
    pub max_object_len: usize,
    /// Largest SUIT envelope (with integrated payloads, if any).
    pub max_envelope_len: usize,
    /// Largest number of entries of one map (at most [`Limits::MAP_KEYS_CAP`]).
    pub max_map_entries: usize,
    /// Largest number of items of one array (SUIT command sequences count pairs twice).
    pub max_array_len: usize,
    /// Deepest nesting of arrays, maps and tags.
    pub max_depth: u8,
    /// Longest text string (SUIT text, URIs).
    pub max_text_len: usize,
    /// Largest number of log records in one export page.
    pub max_export_entries: u32,
}

impl Limits {
    /// Hard capacity of the duplicate-key check: no map may have more entries than this.
    pub const MAP_KEYS_CAP: usize = 32;

    /// Bounds for hosts (CLI, server, device): generous, still finite.
    pub const DEFAULT: Limits = Limits {
        max_object_len: 4096,
        max_envelope_len: usize::MAX,
        max_map_entries: Self::MAP_KEYS_CAP,
        max_array_len: 256,
        max_depth: 16,
        max_text_len: 1024,
        max_export_entries: 64,
    };

    /// Bounds for the card: severed envelopes of a few hundred bytes, small pages.
    pub const CARD: Limits = Limits {
        max_object_len: 1024,
        max_envelope_len: 2048,
        max_map_entries: 24,
        max_array_len: 64,
        max_depth: 10,
        max_text_len: 512,
        max_export_entries: 8,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
