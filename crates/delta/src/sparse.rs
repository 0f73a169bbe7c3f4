//! The sparse form of a stream: zero runs as lengths, everything else as literal bytes.
//!
//! The difference stream of a pair whose changes are scattered rewrites (random or compressed
//! content) is long runs of zeros around blocks of incompressible bytes. zstd and LZMA2 code
//! such a run for a few bytes per block of their own (128 KiB for zstd, 2 MiB of input per
//! LZMA2 chunk) plus a sequence or match per run, which adds up to about 0.5 % of the
//! incompressible bytes on a 64 MiB image. The sparse form states each zero run once, as a
//! number, and leaves the coder nothing to do but store the literal bytes; the diff keeps it
//! only when the coded result is smaller (machine code's differences are not sparse enough:
//! LZMA2 models their short zero runs better than run lengths do).
//!
//! Layout: an LEB128 varint, the decoded length `L`; then pairs of varints `zeros`,
//! `literal`, each pair followed by `literal` bytes taken as they are (they may hold zeros:
//! the diff breaks a literal only at a zero run of [`MIN_ZERO_RUN`] bytes or at the end).
//! Decoding a pair emits `zeros` zero bytes, then the literal bytes. A pair emits at least one
//! byte and never more than what remains of `L`; the pairs end exactly at `L`, and the coded
//! stream ends there too.

use std::io::{self, Read};

use crate::{MAX_VARINT_LEN, write_varint};

/// The shortest zero run inside non-zero bytes that the encoder breaks a literal at. A break
/// costs two varints (two to six bytes before coding); a shorter run costs less left inside
/// the literal, where the coder sees it in context.
const MIN_ZERO_RUN: usize = 32;

/// What is wrong with a sparse stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SparseFault {
    /// The stream ends inside a varint.
    #[error("the stream ends inside a varint")]
    TruncatedVarint,
    /// A varint is longer than ten bytes or overflows 64 bits.
    #[error("a varint overflows 64 bits")]
    VarintOverflow,
    /// The declared length is more than a stream of this target can hold.
    #[error("declared length {declared} exceeds the {limit} bytes this stream can hold")]
    DeclaredTooLong {
        /// The declared decoded length.
        declared: u64,
        /// The most this stream may decode to for the delta's target.
        limit: u64,
    },
    /// A pair of runs emits no byte.
    #[error("a pair of runs emits no byte")]
    EmptyRun,
    /// A pair of runs goes past the declared length.
    #[error("a run goes past the declared length")]
    PastDeclaredLength,
    /// The stream ends before it has produced its declared length.
    #[error("the stream ends before its declared length")]
    EndsEarly,
}

/// `raw` in the sparse form.
pub(crate) fn encode(raw: &[u8]) -> Vec<u8> {
    let zeros_at = |at: usize| raw[at..].iter().take_while(|&&b| b == 0).count();
    let mut out = Vec::new();
    write_varint(&mut out, raw.len() as u64);
    let mut at = 0;
    while at < raw.len() {
        let zeros = zeros_at(at);
        let start = at + zeros;
        // The literal runs to the next zero run long enough to break at, or to the end.
        let mut end = start;
        while end < raw.len() {
            let Some(next) = raw[end..].iter().position(|&b| b == 0) else {
                end = raw.len();
                break;
            };
            let run_at = end + next;
            let run = zeros_at(run_at);
            if run >= MIN_ZERO_RUN || run_at + run == raw.len() {
                end = run_at;
                break;
            }
            end = run_at + run;
        }
        write_varint(&mut out, zeros as u64);
        write_varint(&mut out, (end - start) as u64);
        out.extend_from_slice(&raw[start..end]);
        // `zeros` or the literal is at least one byte: `at` moves on.
        at = end;
    }
    out
}

/// Decodes the sparse form read from `inner`, streaming: it holds two counters, never the
/// stream.
pub(crate) struct SparseReader<R> {
    inner: R,
    /// The most the declared length may be.
    limit: u64,
    /// Decoded bytes not yet covered by a pair; `None` before the length is read.
    unclaimed: Option<u64>,
    /// Zero bytes of the current pair still to emit.
    zeros: u64,
    /// Literal bytes of the current pair still to emit.
    literal: u64,
}

fn fault(fault: SparseFault) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, fault)
}

/// The fault an I/O error carries, if a [`SparseReader`] raised it.
pub(crate) fn fault_of(e: &io::Error) -> Option<SparseFault> {
    e.get_ref()?.downcast_ref::<SparseFault>().copied()
}

impl<R: Read> SparseReader<R> {
    /// A reader of the sparse form in `inner`, whose declared length may be at most `limit`.
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        SparseReader {
            inner,
            limit,
            unclaimed: None,
            zeros: 0,
            literal: 0,
        }
    }

    /// The reader underneath, positioned after the last byte the sparse form used.
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// Reads one varint; `Ok(None)` if the stream ends before its first byte.
    fn varint(&mut self) -> io::Result<Option<u64>> {
        let mut value: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let mut byte = [0u8; 1];
            if self.inner.read(&mut byte)? == 0 {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(fault(SparseFault::TruncatedVarint))
                };
            }
            let low = u64::from(byte[0] & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if i == MAX_VARINT_LEN - 1 && low > 1 {
                break;
            }
            value |= low << (7 * i);
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(fault(SparseFault::VarintOverflow))
    }

    /// A varint that must be there: the stream has not produced its declared length yet.
    fn required_varint(&mut self) -> io::Result<u64> {
        self.varint()?.ok_or_else(|| fault(SparseFault::EndsEarly))
    }
}

impl<R: Read> Read for SparseReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.zeros > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.zeros).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            if self.literal > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(self.literal).unwrap_or(usize::MAX));
                let got = self.inner.read(&mut buf[..n])?;
                if got == 0 {
                    return Err(fault(SparseFault::EndsEarly));
                }
                self.literal -= got as u64;
                return Ok(got);
            }
            match self.unclaimed {
                None => {
                    let declared = self.required_varint()?;
                    if declared > self.limit {
                        return Err(fault(SparseFault::DeclaredTooLong {
                            declared,
                            limit: self.limit,
                        }));
                    }
                    self.unclaimed = Some(declared);
                }
                Some(0) => return Ok(0),
                Some(left) => {
                    let zeros = self.required_varint()?;
                    let literal = self.required_varint()?;
                    if zeros == 0 && literal == 0 {
                        return Err(fault(SparseFault::EmptyRun));
                    }
                    if zeros > left || literal > left - zeros {
                        return Err(fault(SparseFault::PastDeclaredLength));
                    }
                    self.unclaimed = Some(left - zeros - literal);
                    (self.zeros, self.literal) = (zeros, literal);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(sparse: &[u8], limit: u64) -> Result<Vec<u8>, SparseFault> {
        let mut out = Vec::new();
        SparseReader::new(sparse, limit)
            .read_to_end(&mut out)
            .map_err(|e| fault_of(&e).unwrap_or_else(|| panic!("not a sparse fault: {e}")))?;
        Ok(out)
    }

    fn round_trip(raw: &[u8]) -> Vec<u8> {
        let sparse = encode(raw);
        assert_eq!(decode(&sparse, raw.len() as u64).unwrap(), raw);
        // Nothing of the sparse form is left unread once the length is produced.
        let mut reader = SparseReader::new(&sparse[..], raw.len() as u64);
        io::copy(&mut reader, &mut io::sink()).unwrap();
        assert!(reader.into_inner().is_empty());
        sparse
    }

    fn varints(values: &[u64]) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in values {
            write_varint(&mut out, v);
        }
        out
    }

    #[test]
    fn round_trips_at_the_edges() {
        assert_eq!(round_trip(&[]), [0]);
        assert_eq!(round_trip(&[0; 100_000]), varints(&[100_000, 100_000, 0]));
        let dense: Vec<u8> = (1..=255).cycle().take(1000).collect();
        let mut expected = varints(&[1000, 0, 1000]);
        expected.extend_from_slice(&dense);
        assert_eq!(round_trip(&dense), expected);
        // Zero runs at either edge, and a short one kept inside the literal.
        let mut raw = vec![0u8; 40];
        raw.extend_from_slice(&[7, 0, 0, 0, 9]);
        raw.extend_from_slice(&[0; MIN_ZERO_RUN]);
        raw.push(5);
        raw.extend_from_slice(&[0; 3]);
        let mut expected = varints(&[raw.len() as u64, 40, 5]);
        expected.extend_from_slice(&[7, 0, 0, 0, 9]);
        expected.extend(varints(&[MIN_ZERO_RUN as u64, 1]));
        expected.push(5);
        expected.extend(varints(&[3, 0]));
        assert_eq!(round_trip(&raw), expected);
        // A zero run one byte short of the break stays in the literal.
        let mut raw = vec![1u8];
        raw.extend_from_slice(&[0; MIN_ZERO_RUN - 1]);
        raw.push(1);
        let mut expected = varints(&[raw.len() as u64, 0, raw.len() as u64]);
        expected.extend_from_slice(&raw);
        assert_eq!(round_trip(&raw), expected);
    }

    #[test]
    fn round_trips_runs_whose_lengths_fill_their_varints() {
        // 2^7 - 1, 2^7, 2^14 - 1, 2^14, 2^21: the last length of each varint size and the
        // first of the next.
        for len in [127usize, 128, 16_383, 16_384, 1 << 21] {
            let mut raw = vec![0u8; len];
            raw.extend(std::iter::repeat_n(3u8, len));
            raw.extend(std::iter::repeat_n(0u8, len));
            let sparse = round_trip(&raw);
            assert_eq!(
                sparse[..],
                [
                    varints(&[3 * len as u64, len as u64, len as u64]),
                    vec![3; len],
                    varints(&[len as u64, 0]),
                ]
                .concat()
            );
        }
    }

    #[test]
    fn reads_the_largest_varint_and_refuses_one_past_it() {
        // u64::MAX takes ten bytes; it parses, and is refused as longer than the limit.
        let max = varints(&[u64::MAX]);
        assert_eq!(max.len(), MAX_VARINT_LEN);
        assert_eq!(
            decode(&max, u64::MAX - 1),
            Err(SparseFault::DeclaredTooLong {
                declared: u64::MAX,
                limit: u64::MAX - 1
            })
        );
        // A tenth byte carrying more than the top bit, and an eleventh byte.
        let mut over = max.clone();
        over[9] = 0x02;
        assert_eq!(decode(&over, u64::MAX), Err(SparseFault::VarintOverflow));
        let mut long = vec![0x80; MAX_VARINT_LEN];
        long.push(0);
        assert_eq!(decode(&long, u64::MAX), Err(SparseFault::VarintOverflow));
        // Runs whose sum overflows u64 go past the declared length.
        let stream = varints(&[u64::MAX, u64::MAX, u64::MAX]);
        assert_eq!(
            decode(&stream, u64::MAX),
            Err(SparseFault::PastDeclaredLength)
        );
    }

    #[test]
    fn refuses_malformed_streams() {
        let cases: [(&[u8], SparseFault); 8] = [
            // No length at all, a length cut short, a pair cut short.
            (&[], SparseFault::EndsEarly),
            (&[0x85], SparseFault::TruncatedVarint),
            (&[10, 0x80], SparseFault::TruncatedVarint),
            // A length and no pairs, a pair missing its literal count, literal bytes missing.
            (&[10], SparseFault::EndsEarly),
            (&[10, 4], SparseFault::EndsEarly),
            (&[10, 4, 6, 1, 2, 3], SparseFault::EndsEarly),
            // A pair that emits nothing; runs past the length.
            (&[10, 0, 0], SparseFault::EmptyRun),
            (
                &[10, 4, 7, 1, 2, 3, 4, 5, 6, 7],
                SparseFault::PastDeclaredLength,
            ),
        ];
        for (stream, expected) in cases {
            assert_eq!(decode(stream, 100), Err(expected), "{stream:?}");
        }
        assert_eq!(decode(&[11, 11, 0], 100).unwrap(), [0; 11]);
        assert_eq!(
            decode(&[11, 11, 0], 10),
            Err(SparseFault::DeclaredTooLong {
                declared: 11,
                limit: 10
            })
        );
        assert_eq!(decode(&[12, 11, 0], 100), Err(SparseFault::EndsEarly));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_streams_round_trip(
            runs in proptest::collection::vec((0usize..80, proptest::collection::vec(any::<u8>(), 0..80)), 0..24),
        ) {
            let raw: Vec<u8> = runs
                .iter()
                .flat_map(|(zeros, bytes)| std::iter::repeat_n(0u8, *zeros).chain(bytes.iter().copied()))
                .collect();
            let sparse = round_trip(&raw);
            prop_assert!(sparse.len() <= raw.len() + 3 * (raw.len() / MIN_ZERO_RUN + 1) + MAX_VARINT_LEN);
        }

        #[test]
        fn arbitrary_bytes_decode_or_fail_precisely(stream in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            match SparseReader::new(&stream[..], 4096).read_to_end(&mut out) {
                Ok(n) => prop_assert!(n <= 4096),
                Err(e) => prop_assert!(fault_of(&e).is_some(), "{e}"),
            }
        }
    }
}
