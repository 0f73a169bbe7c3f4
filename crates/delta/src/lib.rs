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
//! so each is a separate zstd frame.
//!
//! Why our own bsdiff rather than the `qbsdiff` crate: `qbsdiff` writes the BSDIFF40 format,
//! whose three streams are hard-wired to bzip2. Re-compressing bzip2 output with zstd gains
//! nothing, and carrying bzip2 as well would give the project two compressors for one job. The
//! search and the patch loop are short enough to own, which also lets the patch side enforce
//! this crate's limits on every record (the BSDIFF40 header is trusted by most patchers). The
//! suffix array comes from `divsufsort` (a pure-Rust, `unsafe`-free port of libdivsufsort),
//! which indexes with `i32`: a source image must be smaller than 2 GiB.
//!
//! # Container format (version 1)
//!
//! All integers are little-endian.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SFDELTA\0` |
//! | 8 | 1 | format version, `1` |
//! | 9 | 1 | flags: bit 0 = source SHA-256 present, bit 1 = target SHA-256 present; other bits zero |
//! | 10 | 6 | reserved, zero |
//! | 16 | 8 | source size in bytes |
//! | 24 | 8 | target size in bytes |
//! | 32 | 8 | length of the control frame |
//! | 40 | 8 | length of the difference frame |
//! | 48 | 8 | length of the verbatim frame |
//! | 56 | 0/32 | SHA-256 of the source (if flag bit 0) |
//! | .. | 0/32 | SHA-256 of the target (if flag bit 1) |
//! | .. | .. | control, difference and verbatim zstd frames, back to back, nothing after |
//!
//! The decompressed control stream is a sequence of records, each three LEB128 varints:
//! `seek` (zigzag-encoded signed), `add` and `copy`. Applying a record moves the source cursor
//! by `seek`, then emits `add` bytes that are the next difference bytes added (mod 256) to the
//! source bytes under the cursor (the cursor advances by `add`), then emits the next `copy`
//! verbatim bytes. A record must emit at least one byte, so a target of `n` bytes has at most
//! `n` records and a hostile control stream cannot make the patcher spin.
//!
//! # Limits and memory
//!
//! [`apply`] never allocates from an unchecked header field: sizes are checked against
//! [`Limits`] and against the actual source before anything is reserved, the three frames are
//! decompressed as streams straight into the output (zstd windows capped at 2^27 bytes), and
//! every record is checked against the source and the remaining target size before it is
//! applied. [`apply`] holds the source and the target in memory. [`apply_to`] streams: it
//! reads the source from any seekable reader (a slot file) through a 1 MiB window, writes the
//! target to any writer in 64 KiB pieces while hashing it, and so needs the delta itself plus
//! a few MiB of buffers whatever the image size (figures in docs/performance.md).
//! [`diff`] needs about 5 bytes per source byte for the suffix array plus the compressed
//! output: roughly 330 MiB for a 64 MiB image.

use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

mod search;

/// The first eight bytes of every delta.
pub const MAGIC: [u8; 8] = *b"SFDELTA\0";
/// The container format version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Length of the fixed part of the header, before the optional digests.
pub const FIXED_HEADER_LEN: usize = 56;

const FLAG_SOURCE_DIGEST: u8 = 0b01;
const FLAG_TARGET_DIGEST: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_SOURCE_DIGEST | FLAG_TARGET_DIGEST;

/// zstd decoders refuse frames whose window is larger than 2^27 bytes (128 MiB): that bounds
/// the decoder's memory whatever the frame header claims. Our encoder stays far below.
const WINDOW_LOG_MAX: u32 = 27;
/// Largest source the suffix array can index (`divsufsort` uses `i32` positions).
pub const MAX_DIFF_SOURCE: usize = (i32::MAX as usize) - 1;
/// An LEB128 varint of a `u64` takes at most ten bytes.
const MAX_VARINT_LEN: usize = 10;

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
}

impl core::fmt::Display for ControlFault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ControlFault::BadVarint => "malformed varint",
            ControlFault::Empty => "record emits no byte",
            ControlFault::OverrunsTarget => "record runs past the declared target size",
            ControlFault::OutsideSource => "record reads outside the source image",
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
    #[error("unsupported delta format version {0} (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
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
    /// A compressed stream is corrupt (zstd refused it).
    #[error("corrupt {stream} stream: {detail}")]
    CorruptStream {
        /// The stream.
        stream: StreamKind,
        /// zstd's description.
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

/// How [`diff_with`] builds a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffOptions {
    /// zstd level for the three streams (clamped to 1..=19; higher levels raise the window
    /// size past what small devices should be asked to hold). The default, 9, is within a
    /// few KiB of level 19 on the benchmark's 64 MiB change, while level 19 takes minutes on
    /// difference streams with scattered small changes (recompiled code).
    pub level: i32,
    /// Record the source's SHA-256, so that applying to the wrong source fails early.
    pub source_digest: bool,
    /// Record the target's SHA-256, so that the rebuilt image is checked by [`apply`] itself.
    pub target_digest: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            level: 9,
            source_digest: true,
            target_digest: true,
        }
    }
}

/// The decoded header of a delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
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
    /// Checks magic, version, flags, reserved bytes, and that the frame lengths add up to
    /// exactly the bytes that follow the header. Sizes are not checked against limits here.
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
        if fixed[8] != VERSION {
            return Err(DeltaError::UnsupportedVersion(fixed[8]));
        }
        let flags = fixed[9];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DeltaError::UnknownFlags(flags));
        }
        if fixed[10..16].iter().any(|&b| b != 0) {
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

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_HEADER_LEN + 64);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
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
        out.extend_from_slice(&[0; 6]);
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
    let level = options.level.clamp(1, 19);
    let stretches = search::bsdiff(old, new);
    let [control, difference, verbatim] = encode_streams(old, new, &stretches, level)?;
    let header = Header {
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

/// Read window over the source image in [`apply_to`].
const SOURCE_WINDOW: usize = 1 << 20;
/// Piece size of the difference / verbatim copies in [`apply_to`].
const PIECE: usize = 64 << 10;

/// Rebuilds the target by streaming: the source is read from `source` (whose length is
/// `source_len`, e.g. a slot file), the target is written to `out` in order, and its size and
/// SHA-256 are returned. Memory: the delta, a 1 MiB source window and 64 KiB pieces.
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

    let mut control = BufReader::new(frame_reader(control, StreamKind::Control)?);
    let mut difference = frame_reader(difference, StreamKind::Difference)?;
    let mut verbatim = frame_reader(verbatim, StreamKind::Verbatim)?;
    let mut window = SourceWindow::new(source, source_len);
    let mut out = HashingWriter {
        inner: out,
        hasher: Sha256::new(),
        written: 0,
    };
    let mut piece = vec![0u8; PIECE];
    let mut base = vec![0u8; PIECE];

    let mut cursor: i64 = 0;
    let mut record: u64 = 0;
    while out.written < target_size {
        let bad = |fault| DeltaError::BadControl { record, fault };
        let seek = zigzag_decode(read_varint(&mut control, record)?);
        let add = read_varint(&mut control, record)?;
        let copy = read_varint(&mut control, record)?;
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
    expect_end(&mut control, StreamKind::Control)?;
    expect_end(&mut difference, StreamKind::Difference)?;
    expect_end(&mut verbatim, StreamKind::Verbatim)?;
    for (stream, rest) in [
        (StreamKind::Control, control.into_inner().finish()),
        (StreamKind::Difference, difference.finish()),
        (StreamKind::Verbatim, verbatim.finish()),
    ] {
        if !rest.is_empty() {
            return Err(DeltaError::TrailingData { stream });
        }
    }
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
/// when they leave the window (records mostly move forward through the source).
struct SourceWindow<S> {
    inner: S,
    len: u64,
    buf: Vec<u8>,
    start: u64,
    filled: usize,
}

impl<S: Read + Seek> SourceWindow<S> {
    fn new(inner: S, len: u64) -> Self {
        SourceWindow {
            inner,
            len,
            buf: Vec::new(),
            start: 0,
            filled: 0,
        }
    }

    /// Fills `out` from position `pos`; the caller checked `pos + out.len() <= len`.
    fn read_at(&mut self, pos: u64, out: &mut [u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let p = pos + done as u64;
            let end = self.start + self.filled as u64;
            if p < self.start || p >= end {
                self.fill(p)?;
            }
            // `p` is inside the window now; the offset is below its length.
            let off = (p - self.start) as usize;
            let n = (self.filled - off).min(out.len() - done);
            out[done..done + n].copy_from_slice(&self.buf[off..off + n]);
            done += n;
        }
        Ok(())
    }

    fn fill(&mut self, p: u64) -> io::Result<()> {
        if self.buf.is_empty() {
            let want = self.len.min(SOURCE_WINDOW as u64) as usize;
            self.buf = vec![0u8; want.max(1)];
        }
        let want = (self.len.saturating_sub(p)).min(self.buf.len() as u64) as usize;
        if want == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the source image",
            ));
        }
        self.inner.seek(SeekFrom::Start(p))?;
        // A source shorter than its stated length ends here with UnexpectedEof.
        self.inner.read_exact(&mut self.buf[..want])?;
        self.start = p;
        self.filled = want;
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

type FrameReader<'a> = zstd::stream::read::Decoder<'static, &'a [u8]>;

fn frame_reader(frame: &[u8], stream: StreamKind) -> Result<FrameReader<'_>, DeltaError> {
    let corrupt = |e: io::Error| DeltaError::CorruptStream {
        stream,
        detail: e.to_string(),
    };
    let mut reader = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(corrupt)?
        .single_frame();
    reader.window_log_max(WINDOW_LOG_MAX).map_err(corrupt)?;
    Ok(reader)
}

fn stream_error(e: io::Error, stream: StreamKind) -> DeltaError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
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

fn expect_end(reader: &mut impl Read, stream: StreamKind) -> Result<(), DeltaError> {
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

fn write_varint(out: &mut Vec<u8>, mut value: u64) {
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

fn compression_error(e: io::Error) -> DeltaError {
    DeltaError::Compression(e.to_string())
}

/// A streaming zstd encoder told the exact input size up front, so that zstd sizes its
/// window and tables for the data instead of for an unknown, possibly huge, stream.
fn encoder(
    level: i32,
    size: u64,
) -> Result<zstd::stream::write::Encoder<'static, Vec<u8>>, DeltaError> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(compression_error)?;
    // A content checksum per frame lets the patcher name the corrupt stream.
    e.include_checksum(true).map_err(compression_error)?;
    e.set_pledged_src_size(Some(size))
        .map_err(compression_error)?;
    Ok(e)
}

/// Turns the search's stretches into the three compressed frames.
fn encode_streams(
    old: &[u8],
    new: &[u8],
    stretches: &[Stretch],
    level: i32,
) -> Result<[Vec<u8>; 3], DeltaError> {
    let mut control = Vec::new();
    let (mut diff_total, mut copy_total) = (0u64, 0u64);
    // Where the patcher's source cursor stands; a stretch that emits nothing only moves it,
    // and the format forbids empty records, so its seek is folded into the next record.
    let mut cursor = 0usize;
    for s in stretches.iter().filter(|s| s.add + s.copy > 0) {
        // Positions are below 2^31 (suffix-array limit), so these fit in i64.
        let seek = s.old_at as i64 - cursor as i64;
        write_varint(&mut control, zigzag_encode(seek));
        write_varint(&mut control, s.add as u64);
        write_varint(&mut control, s.copy as u64);
        cursor = s.old_at + s.add;
        diff_total += s.add as u64;
        copy_total += s.copy as u64;
    }
    let mut control_enc = encoder(level, control.len() as u64)?;
    control_enc.write_all(&control).map_err(compression_error)?;

    let mut difference = encoder(level, diff_total)?;
    let mut verbatim = encoder(level, copy_total)?;
    let mut buf = Vec::new();
    for s in stretches {
        buf.clear();
        buf.extend(
            new[s.new_at..s.new_at + s.add]
                .iter()
                .zip(&old[s.old_at..s.old_at + s.add])
                .map(|(&n, &o)| n.wrapping_sub(o)),
        );
        difference.write_all(&buf).map_err(compression_error)?;
        let from = s.new_at + s.add;
        verbatim
            .write_all(&new[from..from + s.copy])
            .map_err(compression_error)?;
    }
    Ok([
        control_enc.finish().map_err(compression_error)?,
        difference.finish().map_err(compression_error)?,
        verbatim.finish().map_err(compression_error)?,
    ])
}

#[cfg(test)]
mod tests;
