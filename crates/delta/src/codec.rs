//! The two stream coders of the container and the choice between them.
//!
//! Each of the three streams is compressed on its own, by whichever coder makes it smaller:
//! the diff compresses it both ways and keeps the smaller (sizes are measured per delta, not
//! assumed per stream kind). zstd decodes fastest; LZMA2 (the coder of xz, here in pure Rust)
//! models the difference stream's sparse bytes and machine code's literals better and wins
//! on real binaries. Either may run on the stream's sparse form (zero runs as lengths, see
//! [`crate::sparse`]), which the diff tries when that form is at most a quarter of the stream
//! and keeps when it codes smaller. Every decoder streams, with a window the container bounds.

use std::io::{self, BufReader, Read, Write};

use crate::sparse::SparseReader;
use crate::{DeltaError, StreamKind};

/// How one stream of a delta is compressed (container version 2 records one per stream;
/// version 1 knows only zstd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One zstd frame with a content checksum (RFC 8878).
    Zstd,
    /// One byte, the base-2 logarithm of the dictionary size (12 to
    /// [`MAX_DICT_LOG`](crate::MAX_DICT_LOG)), then a raw LZMA2 stream ending in its end
    /// marker (the chunk format of xz, without the xz container).
    Lzma2,
    /// The stream's sparse form (a decoded length, then zero-run and literal lengths with the
    /// literal bytes), as one zstd frame.
    ZstdSparse,
    /// The stream's sparse form as an LZMA2 stream (dictionary byte, then chunks).
    Lzma2Sparse,
}

impl Codec {
    /// The codec's number in the header.
    pub fn id(self) -> u8 {
        match self {
            Codec::Zstd => 1,
            Codec::Lzma2 => 2,
            Codec::ZstdSparse => 3,
            Codec::Lzma2Sparse => 4,
        }
    }

    /// The codec a header number stands for.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            1 => Some(Codec::Zstd),
            2 => Some(Codec::Lzma2),
            3 => Some(Codec::ZstdSparse),
            4 => Some(Codec::Lzma2Sparse),
            _ => None,
        }
    }

    /// Whether the coder runs on the stream's sparse form.
    pub fn is_sparse(self) -> bool {
        matches!(self, Codec::ZstdSparse | Codec::Lzma2Sparse)
    }

    /// The codec with the same coder on the sparse form.
    pub(crate) fn sparse(self) -> Codec {
        match self {
            Codec::Zstd | Codec::ZstdSparse => Codec::ZstdSparse,
            Codec::Lzma2 | Codec::Lzma2Sparse => Codec::Lzma2Sparse,
        }
    }
}

impl core::fmt::Display for Codec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Codec::Zstd => "zstd",
            Codec::Lzma2 => "LZMA2",
            Codec::ZstdSparse => "sparse, zstd",
            Codec::Lzma2Sparse => "sparse, LZMA2",
        })
    }
}

/// zstd decoders refuse frames whose window is larger than 2^27 bytes (128 MiB): that bounds
/// the decoder's memory whatever the frame header claims (version 1 deltas were written at
/// level 9, whose window is at most 2^22; level 19 uses 2^23).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Smallest LZMA2 dictionary the container accepts (4 KiB, the format's own minimum).
const MIN_DICT_LOG: u8 = 12;

/// The largest dictionary a delta of a `target_size`-byte image may ask an LZMA2 decoder for:
/// no stream needs to look back further than the largest image, so a hostile header cannot
/// make a small update allocate much (the diff never writes more than this).
pub(crate) fn dict_bound(target_size: u64) -> u64 {
    target_size
        .max(1 << MIN_DICT_LOG)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .min(1 << crate::MAX_DICT_LOG)
}

/// The most bytes a decoded stream of a delta whose target is `target_size` bytes can hold:
/// the difference and verbatim streams emit target bytes; a control record takes at most
/// three ten-byte varints, a group count at most two bytes, and every record emits a byte.
pub(crate) fn decoded_bound(stream: StreamKind, target_size: u64) -> u64 {
    match stream {
        StreamKind::Control => target_size.saturating_mul(32),
        StreamKind::Difference | StreamKind::Verbatim => target_size,
    }
}

/// A decoder of one stream, read as bytes.
pub(crate) enum StreamReader<'a> {
    Plain(Decoder<'a>),
    /// The sparse form is read in small pieces (varints): buffered over the decoder.
    Sparse(Box<SparseReader<BufReader<Decoder<'a>>>>),
}

/// The coder's decoder of one stream.
pub(crate) enum Decoder<'a> {
    Zstd(zstd::stream::read::Decoder<'static, &'a [u8]>),
    Lzma2(Box<lzma_rust2::Lzma2Reader<&'a [u8]>>),
}

impl<'a> StreamReader<'a> {
    /// Opens `frame`, refusing a window or dictionary larger than the container allows.
    pub(crate) fn open(
        codec: Codec,
        frame: &'a [u8],
        stream: StreamKind,
        target_size: u64,
    ) -> Result<Self, DeltaError> {
        let decoder = Decoder::open(codec, frame, stream, target_size)?;
        Ok(if codec.is_sparse() {
            let limit = decoded_bound(stream, target_size);
            StreamReader::Sparse(Box::new(SparseReader::new(BufReader::new(decoder), limit)))
        } else {
            StreamReader::Plain(decoder)
        })
    }

    /// Checks, after the reader reported its end, that nothing of the frame is left: no
    /// decoded byte after the sparse form and no frame byte after the coded stream.
    pub(crate) fn finish(self, stream: StreamKind) -> Result<(), DeltaError> {
        let decoder = match self {
            StreamReader::Plain(decoder) => decoder,
            StreamReader::Sparse(sparse) => {
                let mut buffered = sparse.into_inner();
                if !buffered.buffer().is_empty() {
                    return Err(DeltaError::TrailingData { stream });
                }
                crate::expect_end(buffered.get_mut(), stream)?;
                buffered.into_inner()
            }
        };
        if decoder.rest().is_empty() {
            Ok(())
        } else {
            Err(DeltaError::TrailingData { stream })
        }
    }
}

impl<'a> Decoder<'a> {
    fn open(
        codec: Codec,
        frame: &'a [u8],
        stream: StreamKind,
        target_size: u64,
    ) -> Result<Self, DeltaError> {
        let corrupt = |detail: String| DeltaError::CorruptStream { stream, detail };
        match codec {
            Codec::Zstd | Codec::ZstdSparse => {
                let mut reader = zstd::stream::read::Decoder::with_buffer(frame)
                    .map_err(|e| corrupt(e.to_string()))?
                    .single_frame();
                reader
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| corrupt(e.to_string()))?;
                Ok(Decoder::Zstd(reader))
            }
            Codec::Lzma2 | Codec::Lzma2Sparse => {
                let (&log, body) = frame
                    .split_first()
                    .ok_or(DeltaError::ShortStream { stream })?;
                let bound = dict_bound(target_size);
                if !(MIN_DICT_LOG..=crate::MAX_DICT_LOG).contains(&log) || (1u64 << log) > bound {
                    return Err(corrupt(format!(
                        "LZMA2 dictionary of 2^{log} bytes (at most {bound} allowed for this target)"
                    )));
                }
                Ok(Decoder::Lzma2(Box::new(lzma_rust2::Lzma2Reader::new(
                    body,
                    1u32 << log,
                    None,
                ))))
            }
        }
    }

    /// The frame's bytes the decoder did not consume (nothing, for a well-formed stream).
    fn rest(self) -> &'a [u8] {
        match self {
            Decoder::Zstd(d) => d.finish(),
            Decoder::Lzma2(r) => r.into_inner(),
        }
    }
}

impl Read for Decoder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Lzma2(r) => r.read(buf),
        }
    }
}

impl Read for StreamReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamReader::Plain(d) => d.read(buf),
            StreamReader::Sparse(s) => s.read(buf),
        }
    }
}

fn compression_error(e: impl core::fmt::Display) -> DeltaError {
    DeltaError::Compression(e.to_string())
}

/// `raw` as one zstd frame at `level`, with a content checksum so that the patcher can name
/// a corrupt stream.
pub(crate) fn zstd_encode(raw: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).map_err(compression_error)?;
    e.include_checksum(true).map_err(compression_error)?;
    // The exact size up front lets zstd size its window and tables for the data.
    e.set_pledged_src_size(Some(raw.len() as u64))
        .map_err(compression_error)?;
    e.write_all(raw).map_err(compression_error)?;
    e.finish().map_err(compression_error)
}

/// `raw` as an LZMA2 stream with the strongest settings of xz (`-9e`: binary-tree match
/// finder, nice length 273, search depth 512) and a dictionary no larger than the stream, at
/// most `2^dict_log_max` and at most [`dict_bound`] of the target.
pub(crate) fn lzma2_encode(
    raw: &[u8],
    dict_log_max: u8,
    target_size: u64,
) -> Result<Vec<u8>, DeltaError> {
    let fits = (raw.len() as u64)
        .max(1 << MIN_DICT_LOG)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .min(dict_bound(target_size))
        .min(1 << dict_log_max.clamp(MIN_DICT_LOG, crate::MAX_DICT_LOG));
    // A power of two between 2^12 and 2^26.
    let log = fits.trailing_zeros() as u8;
    let mut options = lzma_rust2::LzmaOptions::with_preset(9);
    options.dict_size = 1 << log;
    options.nice_len = 273;
    options.depth_limit = 512;
    let mut out = vec![log];
    let mut e = lzma_rust2::Lzma2Writer::new(
        &mut out,
        lzma_rust2::Lzma2Options {
            lzma_options: options,
            ..Default::default()
        },
    );
    e.write_all(raw).map_err(compression_error)?;
    e.finish().map_err(compression_error)?;
    Ok(out)
}
