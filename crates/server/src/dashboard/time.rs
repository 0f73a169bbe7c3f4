//! Times as the dashboard shows them: absolute in UTC and relative to now ("3 min ago"),
//! both rendered on the server so a page needs no script to read them.

/// `ms` (Unix milliseconds) as `YYYY-MM-DD hh:mm:ss` UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// How long before `now` the instant `ms` was, in words: `just now`, `3 min ago`, `5 h ago`,
/// `4 days ago`, `3 months ago`, `2 years ago`; an instant after `now` reads `in 3 min`.
pub fn ago(now: i64, ms: i64) -> String {
    let future = ms > now;
    let secs = (now - ms).unsigned_abs() / 1000;
    let span = match secs {
        0..=44 => return "just now".to_owned(),
        45..=5_399 => format!("{} min", (secs + 30) / 60),
        5_400..=172_799 => format!("{} h", (secs + 1800) / 3600),
        172_800..=5_183_999 => format!("{} days", (secs + 43_200) / 86_400),
        5_184_000..=63_071_999 => format!("{} months", secs / 2_592_000),
        _ => format!("{} years", secs / 31_536_000),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// One instant on a page: relative on top, absolute (UTC) under it.
#[derive(Debug, Clone)]
pub struct When {
    /// `3 min ago`.
    pub rel: String,
    /// `2026-12-05 10:00:03`.
    pub abs: String,
}

impl When {
    /// The instant `ms` seen at `now` (both Unix milliseconds).
    pub fn at(now: i64, ms: i64) -> Self {
        Self {
            rel: ago(now, ms),
            abs: utc(ms),
        }
    }

    /// The instant `ms`, or `None` for a time never recorded.
    pub fn opt(now: i64, ms: Option<i64>) -> Option<Self> {
        ms.map(|m| Self::at(now, m))
    }

    /// The instant as HTML: a `<time>` element whose text is the relative time, the absolute
    /// time below it (and in its machine-readable `datetime`).
    pub fn html(&self) -> String {
        format!(
            "<time datetime=\"{}Z\" title=\"{} UTC\">{}</time><span class=\"abs\">{} UTC</span>",
            self.abs.replace(' ', "T"),
            self.abs,
            self.rel,
            self.abs
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_428_800_123), "2026-12-05 00:00:00");
        assert_eq!(utc(1_796_428_800_000 + 86_399_000), "2026-12-05 23:59:59");
    }

    #[test]
    fn relative_times() {
        let now = 1_796_428_800_000;
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now, now - 44_000), "just now");
        assert_eq!(ago(now, now - 3 * 60_000), "3 min ago");
        assert_eq!(ago(now, now - 89 * 60_000), "89 min ago");
        assert_eq!(ago(now, now - 5 * 3_600_000), "5 h ago");
        assert_eq!(ago(now, now - 47 * 3_600_000), "47 h ago");
        assert_eq!(ago(now, now - 4 * 86_400_000), "4 days ago");
        assert_eq!(ago(now, now - 90 * 86_400_000), "3 months ago");
        assert_eq!(ago(now, now - 800 * 86_400_000), "2 years ago");
        assert_eq!(ago(now, now + 10 * 60_000), "in 10 min");
    }

    #[test]
    fn an_instant_reads_both_ways() {
        let now = 1_796_428_800_000;
        let h = When::at(now, now - 180_000).html();
        assert!(h.contains(">3 min ago</time>"), "{h}");
        assert!(h.contains("2026-12-04 23:57:00 UTC"), "{h}");
        assert!(h.contains("datetime=\"2026-12-04T23:57:00Z\""), "{h}");
    }
}
