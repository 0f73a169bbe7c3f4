//! HTTP range requests for package payloads (RFC 9110 §14 and §13.1.5), so that devices resume
//! interrupted downloads.
//!
//! Pure decision logic, tested on its own: given the request's `Range` and `If-Range` headers,
//! the representation's length and strong ETag, what to send.

/// What to answer to a GET of a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole representation (no Range, an ignored Range, or If-Range mismatch).
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset (inclusive).
        end: u64,
    },
    /// 416: the range starts past the end (RFC 9110 §15.5.17); `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides how to answer. `range` and `if_range` are the raw header values, if present; `etag`
/// is the current strong entity tag including its quotes.
pub fn decide(range: Option<&str>, if_range: Option<&str>, len: u64, etag: &str) -> RangeDecision {
    let Some(range) = range else {
        return RangeDecision::Full;
    };
    // RFC 9110 §13.1.5: a Range is honoured only if the If-Range validator matches the current
    // representation. Only a strong ETag can match; an HTTP-date (we send no Last-Modified) or
    // a weak tag never does, and then the full representation is sent with 200.
    if let Some(v) = if_range
        && v.trim() != etag
    {
        return RangeDecision::Full;
    }
    match parse_single(range, len) {
        Parsed::Ignore => RangeDecision::Full,
        Parsed::Unsatisfiable => RangeDecision::Unsatisfiable,
        Parsed::Range(start, end) => RangeDecision::Partial { start, end },
    }
}

enum Parsed {
    Ignore,
    Unsatisfiable,
    Range(u64, u64),
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` (RFC 9110 §14.1.2). Syntactically invalid
/// headers, other units and multi-range requests are ignored (§14.2 allows a server to ignore
/// Range): the client then gets the full body, which is always correct.
fn parse_single(header: &str, len: u64) -> Parsed {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Parsed::Ignore;
    };
    if spec.contains(',') {
        return Parsed::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Parsed::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = num(last) else {
            return Parsed::Ignore;
        };
        if n == 0 || len == 0 {
            return Parsed::Unsatisfiable;
        }
        return Parsed::Range(len.saturating_sub(n), len - 1);
    }
    let Some(start) = num(first) else {
        return Parsed::Ignore;
    };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match num(last) {
            Some(e) if e >= start => e,
            _ => return Parsed::Ignore,
        }
    };
    if start >= len {
        return Parsed::Unsatisfiable;
    }
    Parsed::Range(start, end.min(len - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    const E: &str = "\"abc\"";

    #[test]
    fn ranges() {
        use RangeDecision::*;
        assert_eq!(decide(None, None, 10, E), Full);
        assert_eq!(
            decide(Some("bytes=2-4"), None, 10, E),
            Partial { start: 2, end: 4 }
        );
        assert_eq!(
            decide(Some("bytes=2-"), None, 10, E),
            Partial { start: 2, end: 9 }
        );
        assert_eq!(
            decide(Some("bytes=5-100"), None, 10, E),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            decide(Some("bytes=-3"), None, 10, E),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            decide(Some("bytes=-30"), None, 10, E),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(decide(Some("bytes=10-"), None, 10, E), Unsatisfiable);
        assert_eq!(decide(Some("bytes=-0"), None, 10, E), Unsatisfiable);
        assert_eq!(decide(Some("bytes=4-2"), None, 10, E), Full);
        assert_eq!(decide(Some("bytes=0-1,3-4"), None, 10, E), Full);
        assert_eq!(decide(Some("items=0-1"), None, 10, E), Full);
        assert_eq!(decide(Some("bytes=+1-2"), None, 10, E), Full);
        assert_eq!(decide(Some("bytes=0-0"), None, 0, E), Unsatisfiable);
    }

    #[test]
    fn if_range() {
        use RangeDecision::*;
        assert_eq!(
            decide(Some("bytes=2-"), Some(E), 10, E),
            Partial { start: 2, end: 9 }
        );
        assert_eq!(decide(Some("bytes=2-"), Some("\"old\""), 10, E), Full);
        assert_eq!(decide(Some("bytes=2-"), Some("W/\"abc\""), 10, E), Full);
        assert_eq!(
            decide(
                Some("bytes=2-"),
                Some("Sun, 06 Nov 1994 08:49:37 GMT"),
                10,
                E
            ),
            Full
        );
    }
}
