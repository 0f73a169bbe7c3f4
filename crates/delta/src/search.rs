//! The bsdiff match search (Percival 2003, §3-4), over a `divsufsort` suffix array.
//!
//! The scan walks the target. At each position it looks up the longest exact match in the
//! source; it keeps extending the current alignment (`last_offset`) while that alignment
//! still explains the bytes about as well as the new match would, and starts a new record
//! when a match beats the current alignment by more than eight bytes. Each record is then
//! widened forwards and backwards to the stretch where at least half the bytes agree, which
//! is what makes the difference stream mostly zeros for recompiled code.

use crate::Stretch;

/// A new alignment must beat the current one by more than this many bytes to start a
/// record (the constant of the original bsdiff).
const MIN_GAIN: usize = 8;

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (wa, _) = a.as_chunks::<8>();
    let (wb, _) = b.as_chunks::<8>();
    let mut i = 0;
    for (x, y) in wa.iter().zip(wb) {
        let d = u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y);
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..]
        .iter()
        .zip(&b[i..])
        .take_while(|(x, y)| x == y)
        .count()
}

/// The position and length of the longest match of a prefix of `target` in `old`.
fn longest_match(sa: &[i32], old: &[u8], target: &[u8]) -> (usize, usize) {
    let suffix = |k: usize| {
        let at = usize::try_from(sa[k]).unwrap_or(old.len());
        (at, old.get(at..).unwrap_or(&[]))
    };
    if sa.is_empty() || target.is_empty() {
        return (0, 0);
    }
    // Binary search for where `target` would sort; the longest common prefix is with one
    // of the two neighbouring suffixes.
    let (mut lo, mut hi) = (0, sa.len() - 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if suffix(mid).1 < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (at_lo, s_lo) = suffix(lo);
    let (at_hi, s_hi) = suffix(hi);
    let (len_lo, len_hi) = (common_prefix(s_lo, target), common_prefix(s_hi, target));
    if len_lo >= len_hi {
        (at_lo, len_lo)
    } else {
        (at_hi, len_hi)
    }
}

/// Whether `old[i + offset] == new[i]`, false when outside `old`.
fn agrees(old: &[u8], new: &[u8], i: usize, offset: isize) -> bool {
    i.checked_add_signed(offset)
        .and_then(|j| old.get(j))
        .is_some_and(|&o| Some(&o) == new.get(i))
}

/// Runs the search; the stretches cover `new` from start to end, in order.
pub(crate) fn bsdiff(old: &[u8], new: &[u8]) -> Vec<Stretch> {
    let mut sa = vec![0i32; old.len()];
    if !old.is_empty() {
        divsufsort::sort_in_place(old, &mut sa);
    }

    let mut stretches = Vec::new();
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut last_scan, mut last_pos) = (0usize, 0usize);
    let mut last_offset: isize = 0;

    while scan < new.len() {
        // Number of bytes in [scan, scored_to) that agree under the current alignment.
        let mut old_score = 0usize;
        scan += len;
        let mut scored_to = scan;
        while scan < new.len() {
            (pos, len) = longest_match(&sa, old, &new[scan..]);
            while scored_to < scan + len {
                if agrees(old, new, scored_to, last_offset) {
                    old_score += 1;
                }
                scored_to += 1;
            }
            if (len == old_score && len != 0) || len > old_score + MIN_GAIN {
                break;
            }
            if agrees(old, new, scan, last_offset) {
                old_score = old_score.saturating_sub(1);
            }
            scan += 1;
        }

        if len == old_score && scan != new.len() {
            continue;
        }

        // Forward extension of the previous match: the longest stretch from `last_scan`
        // where matches outweigh mismatches (score 2*matches - length is maximal).
        let mut len_f = 0usize;
        {
            let (mut s, mut best) = (0i64, 0i64);
            let mut i = 0usize;
            while last_scan + i < scan && last_pos + i < old.len() {
                if old[last_pos + i] == new[last_scan + i] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as i64 > best * 2 - len_f as i64 {
                    best = s;
                    len_f = i;
                }
            }
        }
        // Backward extension of the new match, the same way.
        let mut len_b = 0usize;
        if scan < new.len() {
            let (mut s, mut best) = (0i64, 0i64);
            let mut i = 1usize;
            while scan >= last_scan + i && pos >= i {
                if old[pos - i] == new[scan - i] {
                    s += 1;
                }
                if s * 2 - i as i64 > best * 2 - len_b as i64 {
                    best = s;
                    len_b = i;
                }
                i += 1;
            }
        }
        // If the two extensions overlap, split the overlap where it scores best.
        if last_scan + len_f > scan - len_b {
            let overlap = (last_scan + len_f) - (scan - len_b);
            let (mut s, mut best, mut len_s) = (0i64, 0i64, 0usize);
            for i in 0..overlap {
                if new[last_scan + len_f - overlap + i] == old[last_pos + len_f - overlap + i] {
                    s += 1;
                }
                if new[scan - len_b + i] == old[pos - len_b + i] {
                    s -= 1;
                }
                if s > best {
                    best = s;
                    len_s = i + 1;
                }
            }
            len_f = len_f + len_s - overlap;
            len_b -= len_s;
        }

        stretches.push(Stretch {
            new_at: last_scan,
            old_at: last_pos,
            add: len_f,
            copy: (scan - len_b) - (last_scan + len_f),
        });

        last_scan = scan - len_b;
        last_pos = pos - len_b;
        last_offset = pos as isize - scan as isize;
    }
    stretches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_across_word_boundaries() {
        let a = b"0123456789abcdefXYZ";
        let mut b = *a;
        assert_eq!(common_prefix(a, &b), a.len());
        b[11] = b'!';
        assert_eq!(common_prefix(a, &b), 11);
        b[3] = b'!';
        assert_eq!(common_prefix(a, &b), 3);
        assert_eq!(common_prefix(&a[..5], &b[..2]), 2);
        assert_eq!(common_prefix(b"", b"abc"), 0);
    }

    #[test]
    fn longest_match_finds_the_longest() {
        let old = b"the quick brown fox jumps over the lazy dog";
        let mut sa = vec![0i32; old.len()];
        divsufsort::sort_in_place(old, &mut sa);
        assert_eq!(longest_match(&sa, old, b"the lazy cat"), (31, 9));
        assert_eq!(longest_match(&sa, old, b"quick"), (4, 5));
        assert_eq!(
            longest_match(&sa, old, b"#"),
            (longest_match(&sa, old, b"#").0, 0)
        );
    }
}
