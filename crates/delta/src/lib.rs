//! Delta images for simfota packages.
//!
//! A delta package carries the difference between the image a device already runs (the
//! *source*, named in the SUIT manifest by its precursor digest) and the new image (the
//! *target*), instead of the full target. This crate computes such a difference and applies
//! it again, and nothing else: it knows nothing of SUIT, signatures or files. The SUIT layer
//! signs the target's digest and size; [`apply`] output is only trustworthy after the caller
//! has compared it with that signed digest (the container's own optional digests catch
//! mistakes such as the wrong source image early, they prove nothing about who made the delta).
//!
//! # Algorithm
//!
//! The difference is a bsdiff-family delta (C. Percival, "Naive differences of executable
//! code", 2003): a suffix array of the source finds long approximate matches, each match is
//! stored as the *bytewise difference* against the source (mostly zeros when code moved and
//! addresses changed a little), and what matches nothing is stored verbatim. The three
//! resulting streams (control records, differences, verbatim bytes) compress very differently,
//! so each is compressed on its own, by zstd (level 19) or by LZMA2 (xz's coder at `-9e`
//! settings, pure Rust), whichever is smaller for that stream of that delta: the choice is
//! measured per delta and recorded in the header. On machine code LZMA2 usually wins the
//! difference stream by 10-15 %; zstd decodes two to four times faster where it is as small.
//! Either coder may also run on a stream's *sparse form*, its zero runs written as lengths:
//! the difference stream of scattered rewrites in random or compressed content is long zero
//! runs around incompressible blocks, which both coders store for a few bytes per block of
//! their own; the sparse form removes that overhead. The diff tries it where it is at most a
//! quarter of the stream and keeps it only when it codes smaller.
//!
//! Why our own bsdiff rather than the `qbsdiff` crate: `qbsdiff` writes the BSDIFF40 format,
//! whose three streams are hard-wired to bzip2 (slow to decode, and larger than LZMA2 here).
//! The search and the patch loop are short enough to own, which also lets the patch side
//! enforce this crate's limits on every record (the BSDIFF40 header is trusted by most
//! patchers). The suffix array comes from `divsufsort` (a pure-Rust, `unsafe`-free port of
//! libdivsufsort), which indexes with `i32`: a source image must be smaller than 2 GiB.
//!
//! # Container format (version 2)
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SFDELTA\0` |
//! | 8 | 1 | format version, `2` |
//! | 9 | 1 | flags: bit 0 = source SHA-256 present, bit 1 = target SHA-256 present; other bits zero |
//! | 10 | 3 | coder of the control, difference and verbatim stream: `1` zstd, `2` LZMA2, `3` sparse form then zstd, `4` sparse form then LZMA2 |
//! | 13 | 3 | reserved, zero |
//! | 16 | 8 | source size in bytes |
//! | 24 | 8 | target size in bytes |
//! | 32 | 8 | length of the control stream |
//! | 40 | 8 | length of the difference stream |
//! | 48 | 8 | length of the verbatim stream |
//! | 56 | 0/32 | SHA-256 of the source (if flag bit 0) |
//! | .. | 0/32 | SHA-256 of the target (if flag bit 1) |
//! | .. | .. | control, difference and verbatim streams, back to back, nothing after |
//!
//! A zstd stream is one zstd frame with a content checksum. An LZMA2 stream is one byte, the
//! base-2 logarithm of its dictionary size (12 to [`MAX_DICT_LOG`], and at most the target
//! size rounded up to a power of two), then raw LZMA2 chunks up to and including the end
//! marker; it has no checksum of its own (the target digest, and the SUIT digest of the
//! whole delta, cover it). Version 1 is the same layout with bytes 10-15 reserved and every
//! stream zstd: this crate still applies it; any other version is refused with
//! [`DeltaError::UnsupportedVersion`], whose message says which versions this build reads.
//! Coders `3` and `4` were added to version 2 without a change of layout; a build that
//! predates them refuses such a delta with [`DeltaError::UnknownCodec`].
//!
//! A stream under coder `3` or `4` is coded in its sparse form: an LEB128 varint, the decoded
//! length `L` (at most the target size; for the control stream at most 32 times it), then
//! pairs of varints `zeros`, `literal`, each followed by `literal` bytes as they are. A pair
//! decodes to `zeros` zero bytes, then its literal bytes; it must emit at least one byte and
//! must not go past `L`, and the pairs end exactly at `L`, where the coded stream ends too.
//! The diff breaks a literal only at a zero run of 32 bytes or more (or at the end), so
//! literals may hold shorter zero runs. A malformed sparse form is refused with
//! [`DeltaError::BadSparse`], naming the stream and the [`SparseFault`].
//!
//! The decompressed control stream is a sequence of records, each three LEB128 varints:
//! `seek` (zigzag-encoded signed), `add` and `copy`. Version 2 writes them in groups of at
//! most 4096 records: the count, then the group's seeks, then its adds, then its copies
//! (version 1: one record after the other, each with its three fields). Applying a record moves the source cursor
//! by `seek`, then emits `add` bytes that are the next difference bytes added (mod 256) to the
//! source bytes under the cursor (the cursor advances by `add`), then emits the next `copy`
//! verbatim bytes. A record must emit at least one byte, so a target of `n` bytes has at most
//! `n` records and a hostile control stream cannot make the patcher spin.
//!
//! # Limits and memory
//!
//! [`apply`] never allocates from an unchecked header field: sizes are checked against
//! [`Limits`] and against the actual source before anything is reserved, the three streams
//! are decompressed as streams straight into the output (zstd windows capped at 2^27 bytes,
//! LZMA2 dictionaries at 2^26 and at the target size; a sparse form adds two counters and an
//! 8 KiB read buffer, never the stream), and every record is checked against
//! the source and the remaining target size before it is applied. [`apply`] holds the source
//! and the target in memory. [`apply_to`] streams: it reads the source from any seekable
//! reader (a slot file) through a 1 MiB window that slides (each source byte is read about
//! once, however many records there are), writes the target to any writer in 64 KiB pieces
//! while hashing it, and so needs the delta itself, the decoders' windows (at most 8 MiB
//! each for deltas this crate writes with the default [`DiffOptions`]) and about 2 MiB of
//! buffers, whatever the image size (figures in docs/performance.md).
//! [`diff`] needs about 5 bytes per source byte for the suffix array, the raw streams (about
//! the target's size) and one LZMA2 encoder (about 12 times its dictionary): roughly 500 MiB
//! for a 64 MiB image.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

mod codec;
mod search;
mod sparse;

pub use codec::Codec;
use codec::StreamReader;
pub use sparse::SparseFault;

/// The first eight bytes of every delta.
pub const MAGIC: [u8; 8] = *b"SFDELTA\0";
/// The container format version this crate writes.
pub const VERSION: u8 = 2;
/// The oldest container format version this crate still reads (version 1: every stream zstd).
pub const OLDEST_VERSION: u8 = 1;
/// Largest LZMA2 dictionary a delta may ask for: 2^26 bytes (64 MiB), and never more than the
/// target image rounded up to a power of two.
pub const MAX_DICT_LOG: u8 = 26;
/// Length of the fixed part of the header, before the optional digests.
pub const FIXED_HEADER_LEN: usize = 56;

const FLAG_SOURCE_DIGEST: u8 = 0b01;
const FLAG_TARGET_DIGEST: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_SOURCE_DIGEST | FLAG_TARGET_DIGEST;

/// Largest source the suffix array can index (`divsufsort` uses `i32` positions).
pub const MAX_DIFF_SOURCE: usize = (i32::MAX as usize) - 1;
/// An LEB128 varint of a `u64` takes at most ten bytes.
pub(crate) const MAX_VARINT_LEN: usize = 10;

/// Which of the three compressed streams a problem was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// The control records.
    Control,
    /// The bytewise differences against the source.
    Difference,
    /// The verbatim target bytes.
    Verbatim,
}

impl core::fmt::Display for StreamKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            StreamKind::Control => "control",
            StreamKind::Difference => "difference",
            StreamKind::Verbatim => "verbatim",
        })
    }
}

/// What is wrong with a control record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlFault {
    /// A varint is longer than ten bytes or overflows 64 bits.
    BadVarint,
    /// The record emits no byte at all.
    Empty,
    /// The record would emit more bytes than the declared target size.
    OverrunsTarget,
    /// The record reads source bytes outside the source image.
    OutsideSource,
    /// A group of records (version 2) declares no record or more than 4096.
    BadGroup,
}

impl core::fmt::Display for ControlFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ControlFault::BadVarint => "malformed varint",
            ControlFault::Empty => "record emits no byte",
            ControlFault::OverrunsTarget => "record runs past the declared target size",
            ControlFault::OutsideSource => "record reads outside the source image",
            ControlFault::BadGroup => "record group count is not between 1 and 4096",
        })
    }
}

/// Why a delta could not be made or applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// The delta is shorter than its header says it must be.
    #[error("delta truncated: {needed} bytes needed for the header, {actual} present")]
    TruncatedHeader {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The first eight bytes are not [`MAGIC`].
    #[error("not a simfota delta (bad magic)")]
    BadMagic,
    /// A format version this crate does not read.
    #[error(
        "unsupported delta format version {0}: this build reads versions {OLDEST_VERSION} to \
         {VERSION}; apply it with a newer simfota or rebuild the package with this one"
    )]
    UnsupportedVersion(u8),
    /// A stream names a coder this crate does not know.
    #[error("unknown coder {id} for the {stream} stream")]
    UnknownCodec {
        /// The stream.
        stream: StreamKind,
        /// The coder number in the header.
        id: u8,
    },
    /// Flag bits this crate does not know are set.
    #[error("unknown delta flags {0:#04x}")]
    UnknownFlags(u8),
    /// Reserved header bytes are not zero.
    #[error("reserved delta header bytes are not zero")]
    ReservedNotZero,
    /// The three frame lengths do not add up to the bytes after the header.
    #[error(
        "delta length mismatch: header announces {declared} bytes of streams, {actual} present"
    )]
    LengthMismatch {
        /// Stream bytes the header announces (saturated at `u64::MAX`).
        declared: u64,
        /// Stream bytes present.
        actual: u64,
    },
    /// The source is larger than the limit (or than a suffix array can index, when diffing).
    #[error("source image of {size} bytes exceeds the limit of {limit} bytes")]
    SourceTooLarge {
        /// Source size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The target is larger than the limit.
    #[error("target image of {size} bytes exceeds the limit of {limit} bytes")]
    TargetTooLarge {
        /// Target size (as declared by the delta, or as given to `diff`).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The source given to [`apply`] is not the size the delta was made against.
    #[error("wrong source image: the delta was made against {expected} bytes, got {actual}")]
    SourceSizeMismatch {
        /// Source size recorded in the delta.
        expected: u64,
        /// Size of the source given.
        actual: u64,
    },
    /// The source given to [`apply`] does not have the digest the delta was made against.
    #[error("wrong source image: its SHA-256 differs from the one the delta was made against")]
    SourceDigestMismatch,
    /// The rebuilt target does not have the digest recorded in the delta.
    #[error("rebuilt image does not match the target SHA-256 recorded in the delta")]
    TargetDigestMismatch,
    /// A compressed stream is corrupt (its decoder refused it).
    #[error("corrupt {stream} stream: {detail}")]
    CorruptStream {
        /// The stream.
        stream: StreamKind,
        /// The decoder's description.
        detail: String,
    },
    /// A stream ended before the control records were satisfied.
    #[error("{stream} stream ends too early")]
    ShortStream {
        /// The stream.
        stream: StreamKind,
    },
    /// A stream has bytes left over after the target is complete.
    #[error("{stream} stream has data left after the target is complete")]
    TrailingData {
        /// The stream.
        stream: StreamKind,
    },
    /// A control record is malformed.
    #[error("bad control record #{record}: {fault}")]
    BadControl {
        /// Zero-based index of the record.
        record: u64,
        /// What is wrong with it.
        fault: ControlFault,
    },
    /// The sparse form of a stream is malformed.
    #[error("bad sparse {stream} stream: {fault}")]
    BadSparse {
        /// The stream.
        stream: StreamKind,
        /// What is wrong with it.
        fault: SparseFault,
    },
    /// The compressor failed while building a delta.
    #[error("compression failed: {0}")]
    Compression(String),
    /// Reading the source or writing the target failed ([`apply_to`]).
    #[error("cannot {action}: {detail}")]
    Io {
        /// What was being done ("read the source image", "write the target image").
        action: &'static str,
        /// The kind of the I/O error (a full disk is `StorageFull`).
        kind: io::ErrorKind,
        /// The operating system's explanation.
        detail: String,
    },
}

impl DeltaError {
    fn read_source(e: &io::Error) -> DeltaError {
        DeltaError::Io {
            action: "read the source image",
            kind: e.kind(),
            detail: e.to_string(),
        }
    }

    fn write_target(e: &io::Error) -> DeltaError {
        DeltaError::Io {
            action: "write the target image",
            kind: e.kind(),
            detail: e.to_string(),
        }
    }
}

/// What [`apply_to`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Bytes written: the target size the delta declares.
    pub size: u64,
    /// SHA-256 of the bytes written.
    pub sha256: [u8; 32],
}

/// Limits [`apply_with`] enforces before allocating anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest source image accepted.
    pub max_source: u64,
    /// Largest target image the delta may declare.
    pub max_target: u64,
}

impl Default for Limits {
    /// 1 GiB each: well above the 64-256 MiB firmware images simfota targets.
    fn default() -> Self {
        Limits {
            max_source: 1 << 30,
            max_target: 1 << 30,
        }
    }
}

/// Which coders [`diff_with`] tries for each stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coders {
    /// zstd and LZMA2, each on the plain and (where it is a quarter of the stream or less) the
    /// sparse form,
    /// keeping the smallest per stream (the default).
    Smallest,
    /// zstd only, on the plain and the sparse form: a faster diff and the fastest apply, a
    /// larger delta on code.
    Zstd,
}

/// How [`diff_with`] builds a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffOptions {
    /// zstd level for the streams (clamped to 1..=19: levels 20-22 raise the window past what
    /// small devices should be asked to hold). The default is 19: on the difference stream of
    /// recompiled code it is 38 % smaller than level 9 (docs/performance.md).
    pub level: i32,
    /// The coders tried for each stream.
    pub coders: Coders,
    /// Base-2 logarithm of the largest LZMA2 dictionary (clamped to 12..=[`MAX_DICT_LOG`];
    /// never more than the stream needs). The decoder holds one dictionary per LZMA2 stream:
    /// the default, 23 (8 MiB, zstd level 19's own window), bounds a device's apply memory.
    pub dict_log: u8,
    /// Record the source's SHA-256, so that applying to the wrong source fails early.
    pub source_digest: bool,
    /// Record the target's SHA-256, so that the rebuilt image is checked by [`apply`] itself.
    pub target_digest: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            level: 19,
            coders: Coders::Smallest,
            dict_log: 23,
            source_digest: true,
            target_digest: true,
        }
    }
}

/// The decoded header of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Container format version ([`OLDEST_VERSION`] to [`VERSION`]).
    pub version: u8,
    /// The coder of the control, difference and verbatim streams.
    pub codecs: [Codec; 3],
    /// Source size in bytes.
    pub source_size: u64,
    /// Target size in bytes.
    pub target_size: u64,
    /// Length of the compressed control frame.
    pub control_len: u64,
    /// Length of the compressed difference frame.
    pub difference_len: u64,
    /// Length of the compressed verbatim frame.
    pub verbatim_len: u64,
    /// SHA-256 of the source, if recorded.
    pub source_digest: Option<[u8; 32]>,
    /// SHA-256 of the target, if recorded.
    pub target_digest: Option<[u8; 32]>,
}

impl Header {
    /// Decodes and checks the header; returns it with the three frames.
    ///
    /// Checks magic, version, flags, coders, reserved bytes, and that the frame lengths add up
    /// to exactly the bytes that follow the header. Sizes are not checked against limits here.
    pub fn parse(delta: &[u8]) -> Result<(Header, [&[u8]; 3]), DeltaError> {
        let fixed = delta
            .get(..FIXED_HEADER_LEN)
            .ok_or(DeltaError::TruncatedHeader {
                needed: FIXED_HEADER_LEN,
                actual: delta.len(),
            })?;
        if fixed[..8] != MAGIC {
            return Err(DeltaError::BadMagic);
        }
        let version = fixed[8];
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(DeltaError::UnsupportedVersion(version));
        }
        let flags = fixed[9];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DeltaError::UnknownFlags(flags));
        }
        // Version 1: bytes 10-15 reserved, every stream zstd. Version 2: bytes 10-12 name the
        // coder of each stream, 13-15 reserved.
        let mut codecs = [Codec::Zstd; 3];
        let reserved = if version == 1 {
            &fixed[10..16]
        } else {
            let kinds = [
                StreamKind::Control,
                StreamKind::Difference,
                StreamKind::Verbatim,
            ];
            for ((codec, &id), stream) in codecs.iter_mut().zip(&fixed[10..13]).zip(kinds) {
                *codec = Codec::from_id(id).ok_or(DeltaError::UnknownCodec { stream, id })?;
            }
            &fixed[13..16]
        };
        if reserved.iter().any(|&b| b != 0) {
            return Err(DeltaError::ReservedNotZero);
        }
        let field = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&fixed[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let (source_size, target_size) = (field(16), field(24));
        let lens = [field(32), field(40), field(48)];

        let mut rest = &delta[FIXED_HEADER_LEN..];
        let mut digest = |present: bool| -> Result<Option<[u8; 32]>, DeltaError> {
            if !present {
                return Ok(None);
            }
            let (d, tail) = rest
                .split_first_chunk::<32>()
                .ok_or(DeltaError::TruncatedHeader {
                    needed: delta.len() - rest.len() + 32,
                    actual: delta.len(),
                })?;
            rest = tail;
            Ok(Some(*d))
        };
        let source_digest = digest(flags & FLAG_SOURCE_DIGEST != 0)?;
        let target_digest = digest(flags & FLAG_TARGET_DIGEST != 0)?;

        let declared = lens.iter().fold(0u64, |acc, &l| acc.saturating_add(l));
        let actual = rest.len() as u64;
        if declared != actual {
            return Err(DeltaError::LengthMismatch { declared, actual });
        }
        // All three lengths are now known to fit in `rest`, so the conversions and splits
        // below cannot fail; they are written without panicking paths all the same.
        let mut frames: [&[u8]; 3] = [&[]; 3];
        for (frame, &len) in frames.iter_mut().zip(&lens) {
            let len = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
            let (head, tail) = rest.split_at(len);
            *frame = head;
            rest = tail;
        }
        let header = Header {
            version,
            codecs,
            source_size,
            target_size,
            control_len: lens[0],
            difference_len: lens[1],
            verbatim_len: lens[2],
            source_digest,
            target_digest,
        };
        Ok((header, frames))
    }

    /// The header's bytes, in its own version's layout.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 64);
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        let flags = (if self.source_digest.is_some() {
            FLAG_SOURCE_DIGEST
        } else {
            0
        }) | (if self.target_digest.is_some() {
            FLAG_TARGET_DIGEST
        } else {
            0
        });
        out.push(flags);
        if self.version == 1 {
            out.extend_from_slice(&[0; 6]);
        } else {
            out.extend(self.codecs.map(Codec::id));
            out.extend_from_slice(&[0; 3]);
        }
        for value in [
            self.source_size,
            self.target_size,
            self.control_len,
            self.difference_len,
            self.verbatim_len,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for digest in [&self.source_digest, &self.target_digest]
            .into_iter()
            .flatten()
        {
            out.extend_from_slice(digest);
        }
        out
    }
}

/// Computes a delta that turns `old` into `new`, with the default [`DiffOptions`].
pub fn diff(old: &[u8], new: &[u8]) -> Result<Vec<u8>, DeltaError> {
    diff_with(old, new, &DiffOptions::default())
}

/// Computes a delta that turns `old` into `new`.
///
/// Fails only if `old` is too large for the suffix array ([`MAX_DIFF_SOURCE`]) or if the
/// compressor reports an error.
pub fn diff_with(old: &[u8], new: &[u8], options: &DiffOptions) -> Result<Vec<u8>, DeltaError> {
    if old.len() > MAX_DIFF_SOURCE {
        return Err(DeltaError::SourceTooLarge {
            size: old.len() as u64,
            limit: MAX_DIFF_SOURCE as u64,
        });
    }
    let stretches = search::bsdiff(old, new);
    let raw = raw_streams(old, new, &stretches);
    let ([control, difference, verbatim], codecs) =
        compress_streams(&raw, options, new.len() as u64)?;
    drop(raw);
    let header = Header {
        version: VERSION,
        codecs,
        source_size: old.len() as u64,
        target_size: new.len() as u64,
        control_len: control.len() as u64,
        difference_len: difference.len() as u64,
        verbatim_len: verbatim.len() as u64,
        source_digest: options.source_digest.then(|| Sha256::digest(old).into()),
        target_digest: options.target_digest.then(|| Sha256::digest(new).into()),
    };
    let mut out = header.encode();
    out.reserve(control.len() + difference.len() + verbatim.len());
    out.extend_from_slice(&control);
    out.extend_from_slice(&difference);
    out.extend_from_slice(&verbatim);
    Ok(out)
}

/// Rebuilds the target from `old` and `delta`, with the default [`Limits`].
pub fn apply(old: &[u8], delta: &[u8]) -> Result<Vec<u8>, DeltaError> {
    apply_with(old, delta, &Limits::default())
}

/// Rebuilds the target from `old` and `delta`, in memory.
///
/// Refuses (never panics on) truncated, corrupt or hostile deltas; see the crate docs for
/// what is checked and when.
pub fn apply_with(old: &[u8], delta: &[u8], limits: &Limits) -> Result<Vec<u8>, DeltaError> {
    let (header, _) = Header::parse(delta)?;
    check_limits(&header, limits)?;
    // Bounded by `limits.max_target`, checked above.
    let capacity = usize::try_from(header.target_size).map_err(|_| too_large(&header))?;
    let mut out = Vec::with_capacity(capacity);
    apply_to(
        io::Cursor::new(old),
        old.len() as u64,
        delta,
        &mut out,
        limits,
    )?;
    Ok(out)
}

/// Records per group of the version-2 control stream.
const CONTROL_GROUP: usize = 4096;

/// Reads control records. Version 1 interleaves each record's three varints; version 2 writes
/// groups: a count (1 to [`CONTROL_GROUP`]), then that many seeks, adds and copies, each field
/// in a column, which LZMA2 and zstd compress about 10 % better than interleaved records.
struct Records {
    version: u8,
    /// The current group, in reverse order (the next record is last).
    group: Vec<(i64, u64, u64)>,
}

impl Records {
    fn new(version: u8) -> Self {
        Records {
            version,
            group: Vec::new(),
        }
    }

    /// The next record: `(seek, add, copy)`; `record` is its index, for errors.
    fn next(
        &mut self,
        control: &mut impl Read,
        record: u64,
    ) -> Result<(i64, u64, u64), DeltaError> {
        if self.version == 1 {
            let seek = zigzag_decode(read_varint(control, record)?);
            let add = read_varint(control, record)?;
            let copy = read_varint(control, record)?;
            return Ok((seek, add, copy));
        }
        if let Some(next) = self.group.pop() {
            return Ok(next);
        }
        let count = read_varint(control, record)?;
        if count == 0 || count > CONTROL_GROUP as u64 {
            return Err(DeltaError::BadControl {
                record,
                fault: ControlFault::BadGroup,
            });
        }
        // At most CONTROL_GROUP, checked above.
        let n = count as usize;
        let mut fields = [vec![0u64; n], vec![0u64; n], vec![0u64; n]];
        for column in &mut fields {
            for (i, value) in column.iter_mut().enumerate() {
                *value = read_varint(control, record + i as u64)?;
            }
        }
        let [seeks, adds, copies] = fields;
        self.group = seeks
            .into_iter()
            .zip(adds)
            .zip(copies)
            .rev()
            .map(|((s, a), c)| (zigzag_decode(s), a, c))
            .collect();
        self.group.pop().ok_or(DeltaError::BadControl {
            record,
            fault: ControlFault::BadGroup,
        })
    }

    /// Whether records were read that the target had no room for.
    fn pending(&self) -> bool {
        !self.group.is_empty()
    }
}

/// Read window over the source image in [`apply_to`].
const SOURCE_WINDOW: usize = 1 << 20;
/// Piece size of the difference / verbatim copies in [`apply_to`].
const PIECE: usize = 64 << 10;

/// Rebuilds the target by streaming: the source is read from `source` (whose length is
/// `source_len`, e.g. a slot file), the target is written to `out` in order, and its size and
/// SHA-256 are returned. Memory: the delta, a 1 MiB source window, 64 KiB pieces and the
/// stream decoders (see the crate docs).
///
/// The checks are those of [`apply_with`]. When the delta records the source digest, the
/// source is hashed in a first pass before anything is written. When it records the target
/// digest and the rebuilt bytes differ, [`DeltaError::TargetDigestMismatch`] comes after the
/// bytes were written: the caller discards what it wrote on any error.
pub fn apply_to<S: Read + Seek, W: Write>(
    mut source: S,
    source_len: u64,
    delta: &[u8],
    out: W,
    limits: &Limits,
) -> Result<Applied, DeltaError> {
    let (header, [control, difference, verbatim]) = Header::parse(delta)?;
    check_limits(&header, limits)?;
    if source_len != header.source_size {
        return Err(DeltaError::SourceSizeMismatch {
            expected: header.source_size,
            actual: source_len,
        });
    }
    if let Some(expected) = header.source_digest
        && hash_source(&mut source, source_len)? != expected
    {
        return Err(DeltaError::SourceDigestMismatch);
    }
    let target_size = header.target_size;

    let [c_codec, d_codec, v_codec] = header.codecs;
    let open = |codec, frame, stream| StreamReader::open(codec, frame, stream, target_size);
    let mut control = BufReader::new(open(c_codec, control, StreamKind::Control)?);
    let mut difference = open(d_codec, difference, StreamKind::Difference)?;
    let mut verbatim = open(v_codec, verbatim, StreamKind::Verbatim)?;
    let mut window = SourceWindow::new(source, source_len);
    let mut out = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
    };
    let mut piece = vec![0u8; PIECE];
    let mut base = vec![0u8; PIECE];

    let mut cursor: i64 = 0;
    let mut records = Records::new(header.version);
    let mut record: u64 = 0;
    while out.written < target_size {
        let bad = |fault| DeltaError::BadControl { record, fault };
        let (seek, add, copy) = records.next(&mut control, record)?;
        if add == 0 && copy == 0 {
            return Err(bad(ControlFault::Empty));
        }
        let remaining = target_size - out.written;
        if add > remaining || copy > remaining - add {
            return Err(bad(ControlFault::OverrunsTarget));
        }

        cursor = cursor
            .checked_add(seek)
            .ok_or(bad(ControlFault::OutsideSource))?;
        if add > 0 {
            let from = u64::try_from(cursor).map_err(|_| bad(ControlFault::OutsideSource))?;
            if from.checked_add(add).is_none_or(|to| to > source_len) {
                return Err(bad(ControlFault::OutsideSource));
            }
            let mut done = 0u64;
            while done < add {
                // At most PIECE, so it fits in usize.
                let n = (add - done).min(PIECE as u64) as usize;
                window
                    .read_at(from + done, &mut base[..n])
                    .map_err(|e| DeltaError::read_source(&e))?;
                read_exact(&mut difference, &mut piece[..n], StreamKind::Difference)?;
                for (byte, &b) in piece[..n].iter_mut().zip(&base[..n]) {
                    *byte = byte.wrapping_add(b);
                }
                out.write_all(&piece[..n])
                    .map_err(|e| DeltaError::write_target(&e))?;
                done += n as u64;
            }
            // `add` <= target size <= limits, far below i64::MAX.
            cursor = i64::try_from(add)
                .ok()
                .and_then(|a| cursor.checked_add(a))
                .ok_or(bad(ControlFault::OutsideSource))?;
        }
        let mut done = 0u64;
        while done < copy {
            let n = (copy - done).min(PIECE as u64) as usize;
            read_exact(&mut verbatim, &mut piece[..n], StreamKind::Verbatim)?;
            out.write_all(&piece[..n])
                .map_err(|e| DeltaError::write_target(&e))?;
            done += n as u64;
        }
        record += 1;
    }
    if records.pending() {
        return Err(DeltaError::TrailingData {
            stream: StreamKind::Control,
        });
    }
    expect_end(&mut control, StreamKind::Control)?;
    expect_end(&mut difference, StreamKind::Difference)?;
    expect_end(&mut verbatim, StreamKind::Verbatim)?;
    control.into_inner().finish(StreamKind::Control)?;
    difference.finish(StreamKind::Difference)?;
    verbatim.finish(StreamKind::Verbatim)?;
    out.inner
        .flush()
        .map_err(|e| DeltaError::write_target(&e))?;
    let sha256: [u8; 32] = out.hasher.finalize().into();
    if header
        .target_digest
        .is_some_and(|expected| expected != sha256)
    {
        return Err(DeltaError::TargetDigestMismatch);
    }
    Ok(Applied {
        size: out.written,
        sha256,
    })
}

fn too_large(header: &Header) -> DeltaError {
    DeltaError::TargetTooLarge {
        size: header.target_size,
        limit: usize::MAX as u64,
    }
}

fn check_limits(header: &Header, limits: &Limits) -> Result<(), DeltaError> {
    if header.source_size > limits.max_source {
        return Err(DeltaError::SourceTooLarge {
            size: header.source_size,
            limit: limits.max_source,
        });
    }
    if header.target_size > limits.max_target {
        return Err(DeltaError::TargetTooLarge {
            size: header.target_size,
            limit: limits.max_target,
        });
    }
    Ok(())
}

/// SHA-256 of the first `len` bytes of `source`, read from its start.
fn hash_source<S: Read + Seek>(source: &mut S, len: u64) -> Result<[u8; 32], DeltaError> {
    let err = |e: io::Error| DeltaError::read_source(&e);
    source.seek(SeekFrom::Start(0)).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut reader = source.take(len);
    let mut buf = vec![0u8; PIECE];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len {
        return Err(DeltaError::SourceSizeMismatch {
            expected: len,
            actual: seen,
        });
    }
    Ok(hasher.finalize().into())
}

/// A read window over a seekable source: random reads at record positions cost a seek only
/// when they leave the window. Records mostly move forward through the source, a little back
/// now and then (an alignment that shifts by a few bytes): a refill keeps [`WINDOW_BACK`]
/// bytes behind the position that missed, and reads from the source only the bytes the
/// window did not already hold, so that each source byte is read about once however many
/// records there are.
struct SourceWindow<S> {
    inner: S,
    len: u64,
    buf: Vec<u8>,
    start: u64,
    filled: usize,
    /// Source bytes read so far (for the tests: about the bytes the records use).
    read: u64,
    /// Where the last read outside the window ended, and how many such reads in a row each
    /// continued the one before (see [`SourceWindow::read_at`]).
    direct: Option<(u64, u32)>,
}

/// Bytes a refill keeps before the position that missed; a miss at most this far past the
/// window slides it.
const WINDOW_BACK: u64 = 64 << 10;
/// Bytes a forward slide reads ahead of the position that missed.
const WINDOW_AHEAD: u64 = 256 << 10;

impl<S: Read + Seek> SourceWindow<S> {
    fn new(inner: S, len: u64) -> Self {
        SourceWindow {
            inner,
            len,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            read: 0,
            direct: None,
        }
    }

    /// Fills `out` from position `pos`; the caller checked `pos + out.len() <= len`.
    ///
    /// A miss just past the window slides it forward. A miss elsewhere is a record that
    /// matched far from the current alignment (a short match inside rewritten code, say),
    /// after which the records usually come back: it is read directly, leaving the window
    /// where it is, unless it is the third such read in a row that continues where the one
    /// before ended (the alignment has moved for good), in which case the window moves there.
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let p = pos + done as u64;
            let end = self.start + self.filled as u64;
            if p < self.start || p >= end {
                let slides = p >= end && p - end < WINDOW_BACK && self.filled > 0;
                let streak = match self.direct {
                    Some((d, n)) if p + 4096 >= d && p < d.saturating_add(WINDOW_BACK) => n + 1,
                    _ => 0,
                };
                if !slides && streak < 2 && self.filled > 0 {
                    let rest = &mut out[done..];
                    self.inner.seek(SeekFrom::Start(p))?;
                    // A source shorter than its stated length ends here with UnexpectedEof.
                    self.inner.read_exact(rest)?;
                    self.read += rest.len() as u64;
                    self.direct = Some((p + rest.len() as u64, streak));
                    return Ok(());
                }
                self.direct = None;
                self.fill(p, slides)?;
            }
            // `p` is inside the window now; the offset is below its length.
            let off = (p - self.start) as usize;
            let n = (self.filled - off).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[off..off + n]);
            done += n;
        }
        Ok(())
    }

    /// Moves the window so that it holds `p` (below `len`), keeping what it already holds of
    /// the new range. Sliding `forward`, it moves only as far as it must to hold
    /// [`WINDOW_AHEAD`] bytes from `p`, so that what the records still read behind `p` stays.
    fn fill(&mut self, p: u64, forward: bool) -> io::Result<()> {
        if p >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the source image",
            ));
        }
        if self.buf.is_empty() {
            let want = self.len.min(SOURCE_WINDOW as u64) as usize;
            self.buf = vec![0u8; want.max(1)];
        }
        let cap = self.buf.len() as u64;
        // The new range [start, end): `cap` bytes (fewer at the end of the source) that hold
        // `p`, from WINDOW_BACK before it or, sliding, from as far back as it can.
        let start = if forward {
            self.start.max((p + WINDOW_AHEAD).saturating_sub(cap))
        } else {
            p.saturating_sub(WINDOW_BACK)
        }
        .min(self.len - cap.min(self.len));
        let end = (start + cap).min(self.len);
        let (old_start, old_end) = (self.start, self.start + self.filled as u64);
        // The part of the old range still wanted, moved to its new place in the buffer.
        let (keep_from, keep_to) = (start.max(old_start), end.min(old_end));
        if keep_from < keep_to {
            let src = (keep_from - old_start) as usize..(keep_to - old_start) as usize;
            self.buf.copy_within(src, (keep_from - start) as usize);
            self.read_range(start, start, keep_from)?;
            self.read_range(start, keep_to, end)?;
        } else {
            self.read_range(start, start, end)?;
        }
        self.start = start;
        self.filled = (end - start) as usize;
        Ok(())
    }

    /// Reads source bytes [from, to) into the buffer of a window that starts at `start`.
    fn read_range(&mut self, start: u64, from: u64, to: u64) -> io::Result<()> {
        if from >= to {
            return Ok(());
        }
        // Invalidate first: a failed read leaves no stale bytes behind.
        self.filled = 0;
        self.inner.seek(SeekFrom::Start(from))?;
        // A source shorter than its stated length ends here with UnexpectedEof.
        self.inner
            .read_exact(&mut self.buf[(from - start) as usize..(to - start) as usize])?;
        self.read += to - from;
        Ok(())
    }
}

/// Counts and hashes what goes to the target.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }
}

fn stream_error(e: io::Error, stream: StreamKind) -> DeltaError {
    if let Some(fault) = sparse::fault_of(&e) {
        DeltaError::BadSparse { stream, fault }
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        DeltaError::ShortStream { stream }
    } else {
        DeltaError::CorruptStream {
            stream,
            detail: e.to_string(),
        }
    }
}

fn read_exact(
    reader: &mut impl Read,
    buf: &mut [u8],
    stream: StreamKind,
) -> Result<(), DeltaError> {
    reader.read_exact(buf).map_err(|e| stream_error(e, stream))
}

pub(crate) fn expect_end(reader: &mut impl Read, stream: StreamKind) -> Result<(), DeltaError> {
    let mut probe = [0u8; 1];
    match reader.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(DeltaError::TrailingData { stream }),
        Err(e) => Err(stream_error(e, stream)),
    }
}

fn read_varint(reader: &mut impl Read, record: u64) -> Result<u64, DeltaError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let mut byte = [0u8; 1];
        read_exact(reader, &mut byte, StreamKind::Control)?;
        let low = u64::from(byte[0] & 0x7f);
        let shift = 7 * i as u32;
        // The tenth byte may only carry the top bit of a u64.
        if i == MAX_VARINT_LEN - 1 && low > 1 {
            break;
        }
        value |= low << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DeltaError::BadControl {
        record,
        fault: ControlFault::BadVarint,
    })
}

pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn zigzag_encode(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// One stretch of the target as the search found it: `add` bytes that are
/// `new[new_at..]` minus `old[old_at..]`, then `copy` verbatim bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stretch {
    pub(crate) new_at: usize,
    pub(crate) old_at: usize,
    pub(crate) add: usize,
    pub(crate) copy: usize,
}

/// The three raw streams for the search's stretches: control records, differences, verbatim
/// bytes.
fn raw_streams(old: &[u8], new: &[u8], stretches: &[Stretch]) -> [Vec<u8>; 3] {
    let mut records = Vec::new();
    let (adds, copies) = stretches
        .iter()
        .fold((0, 0), |(a, c), s| (a + s.add, c + s.copy));
    let mut difference = Vec::with_capacity(adds);
    let mut verbatim = Vec::with_capacity(copies);
    // Where the patcher's source cursor stands; a stretch that emits nothing only moves it,
    // and the format forbids empty records, so its seek is folded into the next record.
    let mut cursor = 0usize;
    for s in stretches {
        difference.extend(
            new[s.new_at..s.new_at + s.add]
                .iter()
                .zip(&old[s.old_at..s.old_at + s.add])
                .map(|(&n, &o)| n.wrapping_sub(o)),
        );
        let from = s.new_at + s.add;
        verbatim.extend_from_slice(&new[from..from + s.copy]);
        if s.add + s.copy == 0 {
            continue;
        }
        // Positions are below 2^31 (suffix-array limit), so these fit in i64.
        let seek = s.old_at as i64 - cursor as i64;
        records.push([zigzag_encode(seek), s.add as u64, s.copy as u64]);
        cursor = s.old_at + s.add;
    }
    let mut control = Vec::new();
    for group in records.chunks(CONTROL_GROUP) {
        write_varint(&mut control, group.len() as u64);
        for field in 0..3 {
            for r in group {
                write_varint(&mut control, r[field]);
            }
        }
    }
    [control, difference, verbatim]
}

/// The sparse form of a stream is coded only when it is at most this fraction of the stream.
const SPARSE_MIN_GAIN: usize = 4;

/// Compresses each raw stream with every coder `options` allows, plain and (where it is at
/// most a quarter of the stream) in its sparse form, and keeps the smallest; on equal sizes the plain
/// form before the sparse one and zstd before LZMA2 (they decode faster). LZMA2 runs on a
/// second thread while zstd runs on this one.
fn compress_streams(
    raw: &[Vec<u8>; 3],
    options: &DiffOptions,
    target_size: u64,
) -> Result<([Vec<u8>; 3], [Codec; 3]), DeltaError> {
    let level = options.level.clamp(1, 19);
    // The sparse form pays where the stream is mostly long zero runs: on scattered rewrites
    // of random content it is 2 % of the stream. Machine code's differences keep short zero
    // runs between their bytes (the code-like pair of the tests: 42 %), which the coders model
    // better in place; coding that form too would only add diff time.
    let sparse: Vec<Option<Vec<u8>>> = raw
        .iter()
        .map(|r| {
            let s = sparse::encode(r);
            (s.len() <= r.len() / SPARSE_MIN_GAIN).then_some(s)
        })
        .collect();
    // (stream, sparse form?, bytes to code)
    let inputs: Vec<(usize, bool, &[u8])> = raw
        .iter()
        .zip(&sparse)
        .enumerate()
        .flat_map(|(i, (r, s))| {
            std::iter::once((i, false, &r[..])).chain(s.as_deref().map(|s| (i, true, s)))
        })
        .collect();
    let (zstd, lzma) = std::thread::scope(|scope| {
        let lzma = (options.coders == Coders::Smallest).then(|| {
            scope.spawn(|| {
                inputs
                    .iter()
                    .map(|&(_, _, bytes)| codec::lzma2_encode(bytes, options.dict_log, target_size))
                    .collect::<Result<Vec<_>, _>>()
            })
        });
        let zstd = inputs
            .iter()
            .map(|&(_, _, bytes)| codec::zstd_encode(bytes, level))
            .collect::<Result<Vec<_>, _>>();
        let lzma = match lzma {
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| {
                    Err(DeltaError::Compression("the LZMA2 encoder panicked".into()))
                })
                .map(Some),
            None => Ok(None),
        };
        (zstd, lzma)
    });
    let (zstd, lzma) = (zstd?, lzma?);
    let mut candidates: Vec<(usize, Codec, Vec<u8>)> = Vec::with_capacity(2 * inputs.len());
    for (coder, frames) in [(Codec::Zstd, Some(zstd)), (Codec::Lzma2, lzma)] {
        for (&(i, is_sparse, _), frame) in inputs.iter().zip(frames.into_iter().flatten()) {
            let codec = if is_sparse { coder.sparse() } else { coder };
            candidates.push((i, codec, frame));
        }
    }
    // The order of preference; the first of equal sizes wins below.
    candidates.sort_by_key(|&(_, codec, _)| {
        (
            codec.is_sparse(),
            matches!(codec, Codec::Lzma2 | Codec::Lzma2Sparse),
        )
    });
    let mut best: [Option<(Codec, Vec<u8>)>; 3] = Default::default();
    for (i, codec, frame) in candidates {
        if best[i]
            .as_ref()
            .is_none_or(|(_, kept)| frame.len() < kept.len())
        {
            best[i] = Some((codec, frame));
        }
    }
    let mut frames: [Vec<u8>; 3] = Default::default();
    let mut codecs = [Codec::Zstd; 3];
    for (i, kept) in best.into_iter().enumerate() {
        // Every stream has its plain zstd candidate.
        let (codec, frame) =
            kept.ok_or_else(|| DeltaError::Compression(format!("no coder produced stream {i}")))?;
        (frames[i], codecs[i]) = (frame, codec);
    }
    Ok((frames, codecs))
}

#[cfg(test)]
mod tests;
