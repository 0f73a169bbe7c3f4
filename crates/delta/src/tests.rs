use super::*;
use proptest::prelude::*;

/// A deterministic pseudo-random image (xorshift), so tests need no RNG crate.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A firmware-like edit of `old`: some 4 KiB blocks rewritten, some bytes inserted, a tail cut.
fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let fresh = noise(4096, seed ^ 0xabcdef);
    for block in (0..new.len() / 4096).step_by(7) {
        let at = block * 4096;
        new[at..at + 4096].copy_from_slice(&fresh);
    }
    let mid = new.len() / 3;
    new.splice(mid..mid, noise(1000, seed ^ 0x5555));
    new.truncate(new.len() - new.len() / 10);
    new
}

/// Builds a delta from raw (uncompressed) streams, to test the patcher against deltas our
/// own `diff` would never write.
fn assemble(
    old: &[u8],
    target_size: u64,
    control: &[u8],
    difference: &[u8],
    verbatim: &[u8],
) -> Vec<u8> {
    let frame = |raw: &[u8]| zstd::bulk::compress(raw, 3).unwrap();
    let (c, d, v) = (frame(control), frame(difference), frame(verbatim));
    let header = Header {
        version: VERSION,
        codecs: [Codec::Zstd; 3],
        source_size: old.len() as u64,
        target_size,
        control_len: c.len() as u64,
        difference_len: d.len() as u64,
        verbatim_len: v.len() as u64,
        source_digest: None,
        target_digest: None,
    };
    [header.encode(), c, d, v].concat()
}

/// One control record, as a version-2 group of one.
fn record(seek: i64, add: u64, copy: u64) -> Vec<u8> {
    let mut out = vec![1];
    write_varint(&mut out, zigzag_encode(seek));
    write_varint(&mut out, add);
    write_varint(&mut out, copy);
    out
}

#[test]
fn round_trip_of_a_realistic_edit() {
    let old = noise(256 * 1024, 1);
    let new = edited(&old, 2);
    let delta = diff(&old, &new).unwrap();
    assert_eq!(apply(&old, &delta).unwrap(), new);
    // 1/7 of the blocks changed plus an insertion: the delta must be far below full size.
    assert!(delta.len() < new.len() / 4, "delta {} bytes", delta.len());
}

#[test]
fn round_trip_of_edge_cases() {
    let cases: [(&[u8], &[u8]); 6] = [
        (b"", b""),
        (b"", b"new bytes only"),
        (b"old bytes only", b""),
        (b"same", b"same"),
        (b"aaaaaaaaaaaaaaaaaaaaaaaa", b"aaaaaaaaaaaabaaaaaaaaaaaaaaa"),
        (b"abcdefgh", b"hgfedcbaabcdefgh"),
    ];
    for (old, new) in cases {
        let delta = diff(old, new).unwrap();
        assert_eq!(apply(old, &delta).unwrap(), new, "{old:?} -> {new:?}");
    }
}

#[test]
fn zero_filled_images_stay_fast_and_small() {
    let old = vec![0u8; 4 << 20];
    let mut new = old.clone();
    new[1 << 20] = 1;
    new.extend_from_slice(&[0; 4096]);
    let delta = diff(&old, &new).unwrap();
    assert_eq!(apply(&old, &delta).unwrap(), new);
    assert!(delta.len() < 1024, "delta {} bytes", delta.len());
}

#[test]
fn header_reports_sizes_and_digests() {
    let old = noise(5000, 3);
    let new = edited(&old, 4);
    let delta = diff(&old, &new).unwrap();
    let (header, _) = Header::parse(&delta).unwrap();
    assert_eq!(header.source_size, old.len() as u64);
    assert_eq!(header.target_size, new.len() as u64);
    assert_eq!(header.source_digest, Some(Sha256::digest(&old).into()));
    assert_eq!(header.target_digest, Some(Sha256::digest(&new).into()));

    let bare = diff_with(
        &old,
        &new,
        &DiffOptions {
            source_digest: false,
            target_digest: false,
            ..DiffOptions::default()
        },
    )
    .unwrap();
    let (header, _) = Header::parse(&bare).unwrap();
    assert_eq!((header.source_digest, header.target_digest), (None, None));
    assert_eq!(bare.len() + 64, delta.len());
    assert_eq!(apply(&old, &bare).unwrap(), new);
}

#[test]
fn refuses_bad_headers() {
    let old = noise(3000, 5);
    let new = edited(&old, 6);
    let delta = diff(&old, &new).unwrap();

    assert_eq!(
        apply(&old, &delta[..10]),
        Err(DeltaError::TruncatedHeader {
            needed: FIXED_HEADER_LEN,
            actual: 10
        })
    );
    assert!(matches!(
        apply(&old, &delta[..FIXED_HEADER_LEN + 40]),
        Err(DeltaError::TruncatedHeader { .. })
    ));
    let mut bad = delta.clone();
    bad[0] ^= 1;
    assert_eq!(apply(&old, &bad), Err(DeltaError::BadMagic));
    for version in [0, 3, 0xff] {
        let mut bad = delta.clone();
        bad[8] = version;
        let err = apply(&old, &bad).unwrap_err();
        assert_eq!(err, DeltaError::UnsupportedVersion(version));
        assert!(err.to_string().contains("reads versions 1 to 2"), "{err}");
    }
    let mut bad = delta.clone();
    bad[11] = 9;
    assert_eq!(
        apply(&old, &bad),
        Err(DeltaError::UnknownCodec {
            stream: StreamKind::Difference,
            id: 9
        })
    );
    let mut bad = delta.clone();
    bad[10] = 0;
    assert!(matches!(
        apply(&old, &bad),
        Err(DeltaError::UnknownCodec {
            stream: StreamKind::Control,
            id: 0
        })
    ));
    let mut bad = delta.clone();
    bad[9] |= 0x80;
    assert_eq!(apply(&old, &bad), Err(DeltaError::UnknownFlags(0x83)));
    for at in 13..16 {
        let mut bad = delta.clone();
        bad[at] = 1;
        assert_eq!(apply(&old, &bad), Err(DeltaError::ReservedNotZero));
    }
    assert!(matches!(
        apply(&old, &delta[..delta.len() - 1]),
        Err(DeltaError::LengthMismatch { .. })
    ));
    let mut longer = delta.clone();
    longer.push(0);
    assert!(matches!(
        apply(&old, &longer),
        Err(DeltaError::LengthMismatch { .. })
    ));
    // A frame length near u64::MAX must not overflow the sum.
    let mut bad = delta.clone();
    bad[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        apply(&old, &bad),
        Err(DeltaError::LengthMismatch {
            declared: u64::MAX,
            ..
        })
    ));
}

#[test]
fn refuses_sizes_over_the_limits_before_allocating() {
    let old = noise(100, 7);
    // Declares a 1 TiB target with tiny streams: refused on the header alone.
    let delta = assemble(&old, 1 << 40, &record(0, 1, 0), &[0], &[]);
    assert_eq!(
        apply(&old, &delta),
        Err(DeltaError::TargetTooLarge {
            size: 1 << 40,
            limit: 1 << 30
        })
    );
    let tight = Limits {
        max_source: 50,
        max_target: 1 << 30,
    };
    assert_eq!(
        apply_with(
            &old,
            &assemble(&old, 1, &record(0, 1, 0), &[0], &[]),
            &tight
        ),
        Err(DeltaError::SourceTooLarge {
            size: 100,
            limit: 50
        })
    );
}

#[test]
fn refuses_the_wrong_source() {
    let old = noise(3000, 8);
    let new = edited(&old, 9);
    let delta = diff(&old, &new).unwrap();
    assert_eq!(
        apply(&old[1..], &delta),
        Err(DeltaError::SourceSizeMismatch {
            expected: 3000,
            actual: 2999
        })
    );
    let mut other = old.clone();
    other[1500] ^= 0x40;
    assert_eq!(apply(&other, &delta), Err(DeltaError::SourceDigestMismatch));
}

#[test]
fn target_digest_catches_a_wrong_source_without_source_digest() {
    let old = noise(3000, 10);
    let new = edited(&old, 11);
    let options = DiffOptions {
        source_digest: false,
        ..DiffOptions::default()
    };
    let delta = diff_with(&old, &new, &options).unwrap();
    let mut other = old.clone();
    other[10] ^= 1;
    assert_eq!(apply(&other, &delta), Err(DeltaError::TargetDigestMismatch));
}

#[test]
fn refuses_corrupt_streams() {
    let old = noise(20_000, 12);
    let new = edited(&old, 13);
    let delta = diff(&old, &new).unwrap();
    let (header, _) = Header::parse(&delta).unwrap();
    let body = FIXED_HEADER_LEN + 64;
    let starts = [
        (StreamKind::Control, body),
        (StreamKind::Difference, body + header.control_len as usize),
        (
            StreamKind::Verbatim,
            body + (header.control_len + header.difference_len) as usize,
        ),
    ];
    for (stream, start) in starts {
        // Flip a byte in the middle of each frame: zstd or its checksum must notice.
        let len = match stream {
            StreamKind::Control => header.control_len,
            StreamKind::Difference => header.difference_len,
            StreamKind::Verbatim => header.verbatim_len,
        } as usize;
        let mut bad = delta.clone();
        bad[start + len / 2] ^= 0x10;
        let codec = header.codecs[starts.iter().position(|s| s.0 == stream).unwrap()];
        match apply(&old, &bad) {
            Err(DeltaError::CorruptStream { stream: s, .. })
            | Err(DeltaError::ShortStream { stream: s })
            | Err(DeltaError::TrailingData { stream: s }) => assert_eq!(s, stream),
            Err(DeltaError::BadSparse { stream: s, .. }) => {
                assert_eq!(s, stream);
                assert!(codec.is_sparse());
            }
            Err(DeltaError::BadControl { .. }) => assert_eq!(stream, StreamKind::Control),
            // An LZMA2 stream carries no checksum of its own: bytes that still decode to the
            // right length are caught by the target digest.
            Err(DeltaError::TargetDigestMismatch) => {
                assert!(matches!(codec, Codec::Lzma2 | Codec::Lzma2Sparse));
            }
            other => panic!("{stream} ({codec}): {other:?}"),
        }
    }
}

#[test]
fn refuses_hostile_control_records() {
    let old = b"0123456789".to_vec();
    let ok = assemble(&old, 4, &record(2, 2, 2), &[0, 0], b"xy");
    assert_eq!(apply(&old, &ok).unwrap(), b"23xy");

    let cases = [
        (record(0, 0, 0), ControlFault::Empty),
        (record(0, 5, 0), ControlFault::OverrunsTarget),
        (record(0, 0, u64::MAX), ControlFault::OverrunsTarget),
        (record(-1, 1, 0), ControlFault::OutsideSource),
        (record(9, 2, 0), ControlFault::OutsideSource),
        (record(i64::MAX, 1, 0), ControlFault::OutsideSource),
        (vec![0xff; 11], ControlFault::BadVarint),
    ];
    for (control, fault) in cases {
        let delta = assemble(&old, 4, &control, &[0; 4], b"abcd");
        assert_eq!(
            apply(&old, &delta),
            Err(DeltaError::BadControl { record: 0, fault }),
            "{control:?}"
        );
    }
    // Seek overflow on the second record.
    let control = [record(i64::MAX, 0, 1), record(1, 1, 0)].concat();
    assert_eq!(
        apply(&old, &assemble(&old, 2, &control, &[0], b"a")),
        Err(DeltaError::BadControl {
            record: 1,
            fault: ControlFault::OutsideSource
        })
    );
}

#[test]
fn refuses_short_and_overlong_streams() {
    let old = b"0123456789".to_vec();
    assert_eq!(
        apply(&old, &assemble(&old, 4, &record(0, 2, 0), &[0, 0], b"")),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Control
        })
    );
    assert_eq!(
        apply(&old, &assemble(&old, 2, &record(0, 2, 0), &[0], b"")),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Difference
        })
    );
    assert_eq!(
        apply(&old, &assemble(&old, 2, &record(0, 0, 2), &[], b"x")),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Verbatim
        })
    );
    let two = [record(0, 1, 0), record(0, 1, 0)].concat();
    assert_eq!(
        apply(&old, &assemble(&old, 1, &two, &[0], b"")),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Control
        })
    );
    assert_eq!(
        apply(&old, &assemble(&old, 1, &record(0, 1, 0), &[0, 0], b"")),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Difference
        })
    );
    assert_eq!(
        apply(&old, &assemble(&old, 1, &record(0, 1, 0), &[0], b"zz")),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Verbatim
        })
    );
}

#[test]
fn refuses_bytes_after_a_frame_inside_its_slot() {
    // A valid frame followed by garbage, with the slot length covering both.
    let old = b"0123456789".to_vec();
    let c = zstd::bulk::compress(&record(0, 0, 1), 3).unwrap();
    let d = zstd::bulk::compress(&[], 3).unwrap();
    let mut v = zstd::bulk::compress(b"q", 3).unwrap();
    v.extend_from_slice(&[1, 2, 3]);
    let header = Header {
        version: VERSION,
        codecs: [Codec::Zstd; 3],
        source_size: 10,
        target_size: 1,
        control_len: c.len() as u64,
        difference_len: d.len() as u64,
        verbatim_len: v.len() as u64,
        source_digest: None,
        target_digest: None,
    };
    let delta = [header.encode(), c, d, v].concat();
    assert_eq!(
        apply(&old, &delta),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Verbatim
        })
    );
}

#[test]
fn varints_round_trip_at_the_edges() {
    for value in [
        0,
        1,
        127,
        128,
        300,
        u64::from(u32::MAX),
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut buf = Vec::new();
        write_varint(&mut buf, value);
        assert_eq!(read_varint(&mut buf.as_slice(), 0), Ok(value));
    }
    for value in [0, 1, -1, i64::MAX, i64::MIN] {
        assert_eq!(zigzag_decode(zigzag_encode(value)), value);
    }
    // Eleven continuation bytes, or a tenth byte above 1, are not a u64.
    let mut too_big = vec![0xff; 9];
    too_big.push(0x02);
    assert!(read_varint(&mut too_big.as_slice(), 0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(old in proptest::collection::vec(any::<u8>(), 0..64),
                                   delta in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = apply(&old, &delta);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        old in proptest::collection::vec(any::<u8>(), 0..64),
        body in proptest::collection::vec(any::<u8>(), 0..512),
        target in 0u64..4096,
        split in (0usize..512, 0usize..512),
        coders in proptest::array::uniform3(1u8..=4),
    ) {
        let a = split.0.min(body.len());
        let b = split.1.min(body.len() - a);
        let header = Header {
            version: VERSION,
            codecs: coders.map(|id| Codec::from_id(id).unwrap()),
            source_size: old.len() as u64,
            target_size: target,
            control_len: a as u64,
            difference_len: b as u64,
            verbatim_len: (body.len() - a - b) as u64,
            source_digest: None,
            target_digest: None,
        };
        let delta = [header.encode(), body].concat();
        let _ = apply(&old, &delta);
    }

    #[test]
    fn random_pairs_round_trip(old in proptest::collection::vec(any::<u8>(), 0..2048),
                               new in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let delta = diff(&old, &new).unwrap();
        prop_assert_eq!(apply(&old, &delta).unwrap(), new);
    }

    #[test]
    fn edited_images_round_trip(
        old in proptest::collection::vec(0u8..4, 0..4096),
        edits in proptest::collection::vec((any::<u16>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..64)), 0..12),
    ) {
        // Low-entropy sources with inserts, deletes and overwrites: the cases where the
        // alignment logic of the search matters.
        let mut new = old.clone();
        for (at, kind, bytes) in edits {
            let at = usize::from(at) % (new.len() + 1);
            match kind {
                0 => { new.splice(at..at, bytes); }
                1 => { let end = (at + bytes.len()).min(new.len()); new.drain(at..end); }
                _ => { for (i, b) in bytes.into_iter().enumerate() {
                    if let Some(slot) = new.get_mut(at + i) { *slot = b; } } }
            }
        }
        let delta = diff(&old, &new).unwrap();
        prop_assert_eq!(apply(&old, &delta).unwrap(), new);
    }

    #[test]
    fn flipping_any_byte_of_a_delta_never_panics_and_never_lies(at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let old = noise(3000, 14);
        let new = edited(&old, 15);
        let mut delta = diff(&old, &new).unwrap();
        let i = at.index(delta.len());
        delta[i] ^= 1 << bit;
        // With both digests recorded, a flipped delta either fails or still yields `new`
        // (a flip zstd cannot see, e.g. in an unused header bit, is impossible: all are checked).
        if let Ok(out) = apply(&old, &delta) {
            prop_assert_eq!(out, new);
        }
    }
}

/// A writer that fails after `left` bytes, like a full disk.
struct FullDisk {
    left: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn streaming_apply_writes_the_same_image_and_its_digest() {
    // Larger than the source window, so records cross window refills.
    let old = noise(3 << 20, 21);
    let new = edited(&old, 22);
    let delta = diff(&old, &new).unwrap();
    let mut out = Vec::new();
    let applied = apply_to(
        io::Cursor::new(&old),
        old.len() as u64,
        &delta,
        &mut out,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(out, new);
    assert_eq!(applied.size, new.len() as u64);
    assert_eq!(applied.sha256[..], Sha256::digest(&new)[..]);
    // Through a real file, as the device reads its active slot.
    let dir = std::env::temp_dir().join(format!("simfota-delta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("old.bin");
    std::fs::write(&path, &old).unwrap();
    let mut out = Vec::new();
    let file = std::fs::File::open(&path).unwrap();
    apply_to(file, old.len() as u64, &delta, &mut out, &Limits::default()).unwrap();
    assert_eq!(out, new);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn streaming_apply_reports_source_and_target_io_errors() {
    let old = noise(100_000, 23);
    let new = edited(&old, 24);
    let opts = DiffOptions {
        source_digest: false,
        ..DiffOptions::default()
    };
    let delta = diff_with(&old, &new, &opts).unwrap();
    // The source is shorter than it claims to be (a truncated slot file).
    let err = apply_to(
        io::Cursor::new(&old[..50_000]),
        old.len() as u64,
        &delta,
        Vec::new(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::Io {
                action: "read the source image",
                ..
            }
        ),
        "{err}"
    );
    // The target cannot be written.
    let err = apply_to(
        io::Cursor::new(&old),
        old.len() as u64,
        &delta,
        FullDisk { left: 1000 },
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DeltaError::Io {
                action: "write the target image",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no space left"), "{err}");
    // With the source digest recorded, a short source is caught before anything is written.
    let delta = diff(&old, &new).unwrap();
    let mut out = Vec::new();
    let err = apply_to(
        io::Cursor::new(&old[..50_000]),
        old.len() as u64,
        &delta,
        &mut out,
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        DeltaError::SourceSizeMismatch {
            expected: old.len() as u64,
            actual: 50_000
        }
    );
    assert!(out.is_empty());
}

/// A delta written by the version-1 crate (every stream zstd level 9) for a small code-like
/// pair, committed with its images: this crate must keep applying it.
#[test]
fn a_version_1_delta_still_applies() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1");
    let read = |name: &str| std::fs::read(format!("{dir}/{name}")).unwrap();
    let (old, new, delta) = (read("old.bin"), read("new.bin"), read("delta-v1"));
    let (header, _) = Header::parse(&delta).unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(header.codecs, [Codec::Zstd; 3]);
    assert_eq!(header.target_digest, Some(Sha256::digest(&new).into()));
    assert_eq!(apply(&old, &delta).unwrap(), new);
    let mut out = Vec::new();
    let applied = apply_to(
        io::Cursor::new(&old),
        old.len() as u64,
        &delta,
        &mut out,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((out, applied.size), (new.clone(), new.len() as u64));
    // Version 1 has no coder bytes: its bytes 10-15 are all reserved.
    let mut bad = delta.clone();
    bad[10] = Codec::Lzma2.id();
    assert_eq!(apply(&old, &bad), Err(DeltaError::ReservedNotZero));
    // What this crate writes for the same pair is version 2, and smaller.
    let now = diff(&old, &new).unwrap();
    assert_eq!(Header::parse(&now).unwrap().0.version, VERSION);
    assert!(now.len() < delta.len(), "{} >= {}", now.len(), delta.len());
    assert_eq!(apply(&old, &now).unwrap(), new);
}

/// A code-like pair: 32-bit words from a small vocabulary and absolute addresses that move by
/// a constant after an insertion, the shape LZMA2 compresses better than zstd.
fn code_pair(words: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let pick = noise(words * 2, seed);
    let vocabulary: Vec<u32> = noise(64 * 4, seed ^ 1)
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let word = |i: usize, shift: u32| -> u32 {
        let (a, b) = (pick[2 * i], pick[2 * i + 1]);
        if a < 80 {
            let target = (usize::from(b) * 97 + i) % words;
            0x0800_0000 + 4 * target as u32 + if target > words / 2 { shift } else { 0 }
        } else {
            vocabulary[usize::from(b) % vocabulary.len()]
        }
    };
    let old: Vec<u8> = (0..words).flat_map(|i| word(i, 0).to_le_bytes()).collect();
    let mut new: Vec<u8> = (0..words).flat_map(|i| word(i, 64).to_le_bytes()).collect();
    new.splice(words * 2..words * 2, noise(64, seed ^ 2));
    (old, new)
}

#[test]
fn each_stream_gets_the_smaller_coder() {
    let (old, new) = code_pair(64 << 10, 31);
    let zstd_only = diff_with(
        &old,
        &new,
        &DiffOptions {
            coders: Coders::Zstd,
            ..DiffOptions::default()
        },
    )
    .unwrap();
    let smallest = diff(&old, &new).unwrap();
    let (z, _) = Header::parse(&zstd_only).unwrap();
    let (s, _) = Header::parse(&smallest).unwrap();
    assert_eq!(z.codecs, [Codec::Zstd; 3]);
    assert_eq!(s.codecs[1], Codec::Lzma2, "{s:?}");
    for (a, b) in [
        (s.control_len, z.control_len),
        (s.difference_len, z.difference_len),
        (s.verbatim_len, z.verbatim_len),
    ] {
        assert!(a <= b, "{s:?} vs {z:?}");
    }
    assert!(smallest.len() < zstd_only.len());
    assert_eq!(apply(&old, &zstd_only).unwrap(), new);
    assert_eq!(apply(&old, &smallest).unwrap(), new);
}

/// Builds a delta whose three streams are LZMA2 with the given dictionary log, as our diff
/// writes them.
fn assemble_lzma2(old: &[u8], target: &[u8], streams: [&[u8]; 3], log: u8) -> Vec<u8> {
    let frames = streams.map(|raw| {
        let mut f = codec::lzma2_encode(raw, MAX_DICT_LOG, target.len() as u64).unwrap();
        f[0] = log;
        f
    });
    let header = Header {
        version: VERSION,
        codecs: [Codec::Lzma2; 3],
        source_size: old.len() as u64,
        target_size: target.len() as u64,
        control_len: frames[0].len() as u64,
        difference_len: frames[1].len() as u64,
        verbatim_len: frames[2].len() as u64,
        source_digest: None,
        target_digest: None,
    };
    [header.encode(), frames.concat()].concat()
}

#[test]
fn refuses_hostile_lzma2_streams() {
    let old = b"0123456789".to_vec();
    let control = record(2, 2, 2);
    let ok = assemble_lzma2(&old, b"23xy", [&control, &[0, 0], b"xy"], 12);
    assert_eq!(apply(&old, &ok).unwrap(), b"23xy");
    // A dictionary larger than the target could need (4 KiB here) or than the format allows.
    for log in [13, 27, 40, 0, 11] {
        let bad = assemble_lzma2(&old, b"23xy", [&control, &[0, 0], b"xy"], log);
        assert!(
            matches!(
                apply(&old, &bad),
                Err(DeltaError::CorruptStream {
                    stream: StreamKind::Control,
                    ..
                })
            ),
            "dictionary 2^{log}"
        );
    }
    // Bytes after the end marker, inside the slot.
    let mut bad = ok.clone();
    bad.push(0);
    let verbatim_len = u64::from_le_bytes(bad[48..56].try_into().unwrap()) + 1;
    bad[48..56].copy_from_slice(&verbatim_len.to_le_bytes());
    assert_eq!(
        apply(&old, &bad),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Verbatim
        })
    );
    // A stream cut short, and one with only its dictionary byte.
    let mut bad = ok.clone();
    bad.pop();
    bad[48..56].copy_from_slice(&(verbatim_len - 2).to_le_bytes());
    assert!(matches!(
        apply(&old, &bad),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Verbatim
        } | DeltaError::CorruptStream {
            stream: StreamKind::Verbatim,
            ..
        })
    ));
    let empty = Header {
        version: VERSION,
        codecs: [Codec::Lzma2; 3],
        source_size: 10,
        target_size: 1,
        control_len: 0,
        difference_len: 0,
        verbatim_len: 0,
        source_digest: None,
        target_digest: None,
    };
    assert_eq!(
        apply(&old, &empty.encode()),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Control
        })
    );
}

#[test]
fn the_source_window_reads_each_byte_about_once() {
    // Records that walk forward and step back a little, as a recompiled image's alignments
    // do: the window must not re-read a whole window per record.
    let old = noise(8 << 20, 41);
    let mut window = SourceWindow::new(io::Cursor::new(&old), old.len() as u64);
    let mut buf = vec![0u8; 300];
    let mut pos = 0u64;
    let mut steps = 0u64;
    while pos + 300 < old.len() as u64 {
        window.read_at(pos, &mut buf).unwrap();
        assert_eq!(buf[..], old[pos as usize..pos as usize + 300]);
        pos = (pos + 290 + (steps % 7) * 3).saturating_sub(if steps.is_multiple_of(5) {
            1000
        } else {
            0
        });
        steps += 1;
    }
    assert!(steps > 20_000);
    assert!(
        window.read < old.len() as u64 + (1 << 20),
        "{} bytes read for a {}-byte source",
        window.read,
        old.len()
    );
    // A jump far back and one to the very end still read the right bytes.
    for pos in [100u64, old.len() as u64 - 300, 5 << 20, 0] {
        window.read_at(pos, &mut buf).unwrap();
        assert_eq!(buf[..], old[pos as usize..pos as usize + 300]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_source_window_returns_the_source(
        len in 1usize..(3 << 20),
        reads in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..5000), 1..40),
    ) {
        let old = noise(len, 43);
        let mut window = SourceWindow::new(io::Cursor::new(&old), len as u64);
        for (at, n) in reads {
            let pos = at.index(len);
            let n = n.min(len - pos);
            let mut buf = vec![0u8; n];
            window.read_at(pos as u64, &mut buf).unwrap();
            prop_assert_eq!(&buf[..], &old[pos..pos + n]);
        }
    }
}

#[test]
fn far_reads_between_records_do_not_move_the_window() {
    // The main alignment walks forward; every other record reads a few bytes far away (a
    // short match elsewhere) and the next one comes back: each far read costs its own bytes,
    // not a window refill.
    let old = noise(16 << 20, 45);
    let mut window = SourceWindow::new(io::Cursor::new(&old), old.len() as u64);
    let mut buf = vec![0u8; 200];
    let (mut main, mut used) = (0usize, 0u64);
    let mut far = 12usize << 20;
    while main + 200 < 8 << 20 {
        for at in [main, far] {
            window.read_at(at as u64, &mut buf).unwrap();
            assert_eq!(buf[..], old[at..at + 200]);
            used += 200;
        }
        main += 300;
        far = (far * 7 + 12345) % ((16 << 20) - 200);
    }
    // A refill per far read would read 1 MiB for each of them (about 39 GB here); what is
    // left is the few far reads that land just past the window and slide it.
    assert!(
        window.read < 10 * used,
        "{} bytes read for {used} used",
        window.read
    );
}

/// Builds a delta from streams framed with zstd as given, under the given codecs (a sparse
/// codec's stream is passed in its sparse form).
fn assemble_coded(
    old: &[u8],
    target_size: u64,
    codecs: [Codec; 3],
    streams: [&[u8]; 3],
) -> Vec<u8> {
    let [c, d, v] = streams.map(|raw| zstd::bulk::compress(raw, 3).unwrap());
    let header = Header {
        version: VERSION,
        codecs,
        source_size: old.len() as u64,
        target_size,
        control_len: c.len() as u64,
        difference_len: d.len() as u64,
        verbatim_len: v.len() as u64,
        source_digest: None,
        target_digest: None,
    };
    [header.encode(), c, d, v].concat()
}

/// The bench's random change at a smaller size: 2 % of the 4 KiB blocks rewritten, bytes
/// inserted and removed.
fn random_rewrite_pair(blocks: usize, seed: u64) -> (Vec<u8>, Vec<u8>, usize) {
    let old = noise(blocks * 4096, seed);
    let mut new = old.clone();
    let mut rewritten = 0;
    for block in (0..blocks).step_by(50) {
        let at = block * 4096 + 4096 * (seed as usize % 7);
        if at + 4096 <= new.len() {
            new[at..at + 4096].copy_from_slice(&noise(4096, seed ^ block as u64));
            rewritten += 4096;
        }
    }
    let third = new.len() / 3;
    new.splice(third..third, noise(4096, seed ^ 0x77));
    let cut = 2 * new.len() / 3;
    new.drain(cut..cut + 1024);
    (old, new, rewritten + 4096)
}

#[test]
fn the_sparse_form_is_chosen_for_scattered_rewrites_and_not_for_code() {
    let (old, new, floor) = random_rewrite_pair(512, 41);
    let delta = diff(&old, &new).unwrap();
    let (header, _) = Header::parse(&delta).unwrap();
    assert!(header.codecs[1].is_sparse(), "{header:?}");
    assert_eq!(header.version, VERSION);
    // The difference stream costs its rewritten bytes and little more (the plain form costs
    // zstd's block headers for every 128 KiB of zeros).
    let header_len = (FIXED_HEADER_LEN + 64) as u64;
    let streams = header.control_len + header.difference_len + header.verbatim_len;
    assert!(
        streams < floor as u64 + floor as u64 / 200,
        "{streams} bytes of streams for {floor} new bytes"
    );
    assert_eq!(delta.len() as u64, header_len + streams);
    assert_eq!(apply(&old, &delta).unwrap(), new);
    let mut out = Vec::new();
    let applied = apply_to(
        io::Cursor::new(&old),
        old.len() as u64,
        &delta,
        &mut out,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!((out, applied.size), (new.clone(), new.len() as u64));

    // Machine code's differences: the plain form codes smaller, so it is kept.
    let (old, new) = code_pair(64 << 10, 31);
    let delta = diff(&old, &new).unwrap();
    let (header, _) = Header::parse(&delta).unwrap();
    assert!(header.codecs.iter().all(|c| !c.is_sparse()), "{header:?}");
    assert_eq!(apply(&old, &delta).unwrap(), new);
}

#[test]
fn the_sparse_form_applies_with_either_coder_and_in_every_stream() {
    let old = b"0123456789".to_vec();
    // seek 2, add 4, copy 2: "2345" plus differences [0, 0, 0, 1], then "xy".
    let control = record(2, 4, 2);
    let difference = sparse::encode(&[0, 0, 0, 1]);
    let verbatim = sparse::encode(b"xy");
    let want = b"2346xy".to_vec();
    let delta = assemble_coded(
        &old,
        6,
        [Codec::ZstdSparse, Codec::ZstdSparse, Codec::ZstdSparse],
        [&sparse::encode(&control), &difference, &verbatim],
    );
    assert_eq!(apply(&old, &delta).unwrap(), want);
    // LZMA2 frames, as the diff writes them.
    let frames = [
        sparse::encode(&control),
        difference.clone(),
        verbatim.clone(),
    ]
    .map(|s| codec::lzma2_encode(&s, 12, 6).unwrap());
    let header = Header {
        version: VERSION,
        codecs: [Codec::Lzma2Sparse; 3],
        source_size: 10,
        target_size: 6,
        control_len: frames[0].len() as u64,
        difference_len: frames[1].len() as u64,
        verbatim_len: frames[2].len() as u64,
        source_digest: None,
        target_digest: None,
    };
    let [c, d, v] = frames;
    let delta = [header.encode(), c, d, v].concat();
    assert_eq!(apply(&old, &delta).unwrap(), want);
}

#[test]
fn refuses_malformed_sparse_streams() {
    let old = b"0123456789".to_vec();
    let control = record(2, 4, 2);
    let codecs = [Codec::Zstd, Codec::ZstdSparse, Codec::Zstd];
    let with_difference = |difference: &[u8]| {
        apply(
            &old,
            &assemble_coded(&old, 6, codecs, [&control, difference, b"xy"]),
        )
    };
    let bad = |fault| {
        Err(DeltaError::BadSparse {
            stream: StreamKind::Difference,
            fault,
        })
    };
    assert_eq!(with_difference(&[4, 3, 1, 1]).unwrap(), b"2346xy");
    // A varint cut off by the end of the stream.
    assert_eq!(
        with_difference(&[4, 0x83]),
        bad(SparseFault::TruncatedVarint)
    );
    // A run past the declared length, and one whose sum overflows.
    assert_eq!(
        with_difference(&[4, 3, 2, 1, 1]),
        bad(SparseFault::PastDeclaredLength)
    );
    let mut overflow = vec![4];
    write_varint(&mut overflow, u64::MAX);
    write_varint(&mut overflow, u64::MAX);
    assert_eq!(
        with_difference(&overflow),
        bad(SparseFault::PastDeclaredLength)
    );
    // A varint of eleven bytes.
    assert_eq!(
        with_difference(&[
            4, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0
        ]),
        bad(SparseFault::VarintOverflow)
    );
    // A declared length longer than the target, a pair that emits nothing, literal bytes
    // missing.
    assert_eq!(
        with_difference(&[7, 7, 0]),
        bad(SparseFault::DeclaredTooLong {
            declared: 7,
            limit: 6
        })
    );
    assert_eq!(with_difference(&[4, 0, 0]), bad(SparseFault::EmptyRun));
    assert_eq!(with_difference(&[4, 3, 1]), bad(SparseFault::EndsEarly));
    // A declared length the records do not use up, one they overrun, and bytes after the
    // sparse form inside the frame.
    assert_eq!(
        with_difference(&[5, 5, 0]),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Difference
        })
    );
    assert_eq!(
        with_difference(&[3, 3, 0]),
        Err(DeltaError::ShortStream {
            stream: StreamKind::Difference
        })
    );
    assert_eq!(
        with_difference(&[4, 3, 1, 1, 9]),
        Err(DeltaError::TrailingData {
            stream: StreamKind::Difference
        })
    );
    let err = with_difference(&[4, 0x83]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "bad sparse difference stream: the stream ends inside a varint"
    );
    // The streaming patcher refuses the same way.
    let delta = assemble_coded(&old, 6, codecs, [&control, &[4, 3, 2, 1, 1], b"xy"]);
    assert_eq!(
        apply_to(
            io::Cursor::new(&old),
            10,
            &delta,
            io::sink(),
            &Limits::default()
        )
        .err(),
        bad(SparseFault::PastDeclaredLength).err()
    );
}
