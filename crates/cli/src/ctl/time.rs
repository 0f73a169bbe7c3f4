//! Times as an operator reads and writes them: the server's Unix milliseconds shown in UTC
//! with how long ago, and deadlines given as a UTC date and time or as a duration from now.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (the algorithm of
/// H. Hinnant's "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01 (the inverse, `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-06 14:03:27` (UTC) for Unix milliseconds.
fn utc(ms: i64, seconds: bool) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let (h, mi, s) = (t / 3600, t % 3600 / 60, t % 60);
    if seconds {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
    }
}

/// How far `ms` is from `now`: `just now`, `5s ago`, `3m ago`, `2h ago`, `4d ago`, `in 3h`.
pub fn relative(ms: i64, now: i64) -> String {
    let diff = now - ms;
    let abs = diff.unsigned_abs() / 1000;
    if abs < 2 {
        return "just now".to_owned();
    }
    let span = if abs < 60 {
        format!("{abs}s")
    } else if abs < 3600 {
        format!("{}m", abs / 60)
    } else if abs < 86_400 * 2 {
        format!("{}h", abs / 3600)
    } else {
        format!("{}d", abs / 86_400)
    };
    if diff >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// The time of day, `14:03:27` (UTC), for lines that follow something as it happens.
pub fn clock(ms: i64) -> String {
    utc(ms, true)[11..].to_owned()
}

/// For a table cell: `2026-12-06 14:03 (3m ago)`.
pub fn short(ms: i64, now: i64) -> String {
    format!("{} ({})", utc(ms, false), relative(ms, now))
}

/// For a detail line: `2026-12-06 14:03:27 UTC (3m ago)`.
pub fn long(ms: i64, now: i64) -> String {
    format!("{} UTC ({})", utc(ms, true), relative(ms, now))
}

/// A deadline as given on the command line: a UTC date and time (`2026-12-24T18:00Z`,
/// `2026-12-24 18:00:00`, `2026-12-24T19:00+01:00`, `2026-12-24`), or a duration from now
/// (`90m`, `48h`, `7d`, `+2h`). Answers Unix milliseconds.
pub fn parse_deadline(text: &str, now: i64) -> Result<i64, String> {
    let t = text.trim();
    if let Some(ms) = parse_duration_ms(t.strip_prefix('+').unwrap_or(t)) {
        return Ok(now + ms);
    }
    parse_datetime(t).ok_or_else(|| {
        format!(
            "'{text}' is neither a UTC date and time (2026-12-24T18:00Z, 2026-12-24 18:00) \
             nor a duration from now (90m, 48h, 7d)"
        )
    })
}

/// `90s`, `90m`, `48h`, `7d` in milliseconds.
fn parse_duration_ms(t: &str) -> Option<i64> {
    let unit = t.chars().last()?;
    let n: i64 = t[..t.len() - unit.len_utf8()].parse().ok()?;
    let per = match unit {
        's' => 1000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return None,
    };
    n.checked_mul(per).filter(|ms| *ms > 0)
}

fn parse_datetime(t: &str) -> Option<i64> {
    // `get`: a character that is not ASCII at either cut makes it no date, not a panic.
    let (date, rest) = if t.len() > 10 {
        (t.get(..10)?, t.get(11..)?)
    } else {
        (t, "")
    };
    if t.len() > 10 && !matches!(t.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    // The time, then the offset: `Z`, `+HH:MM`, `-HH:MM` or nothing (UTC).
    let (clock, offset_min) = if rest.is_empty() {
        ("00:00", 0)
    } else if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(at) = rest.rfind(['+', '-']) {
        let (c, off) = rest.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        let (oh, om): (i64, i64) = (oh.parse().ok()?, om.parse().ok()?);
        if oh > 23 || om > 59 {
            return None;
        }
        (c, sign * (oh * 60 + om))
    } else {
        (rest, 0)
    };
    let mut hms = clock.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let s: i64 = match hms.next() {
        Some(s) => s.parse().ok()?,
        None => 0,
    };
    if hms.next().is_some() || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + s - offset_min * 60;
    Some(secs * 1000)
}

/// A maintenance window `HH:MM-HH:MM` (UTC) as the API's `{"start", "end"}`.
pub fn parse_window(text: &str) -> Result<(String, String), String> {
    let bad = || format!("'{text}' is not a daily window HH:MM-HH:MM (UTC), e.g. 22:00-04:00");
    let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
    let check = |s: &str| -> Option<String> {
        let (h, m) = s.split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 23 && m <= 59 && s.len() == 5).then(|| format!("{h:02}:{m:02}"))
    };
    Ok((check(a).ok_or_else(bad)?, check(b).ok_or_else(bad)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_format() {
        assert_eq!(utc(0, true), "1970-01-01 00:00:00");
        // 2026-12-06 14:03:27 UTC
        let ms = 1_796_565_807_000;
        assert_eq!(utc(ms, true), "2026-12-06 14:03:27");
        assert_eq!(parse_datetime("2026-12-06T14:03:27Z"), Some(ms));
        assert_eq!(parse_datetime("2026-12-06 15:03:27+01:00"), Some(ms));
        assert_eq!(parse_datetime("2024-02-29"), Some(1_709_164_800_000));
        assert_eq!(parse_datetime("2025-02-29"), None);
        assert_eq!(parse_datetime("2026-12-06T25:00Z"), None);
        assert_eq!(parse_datetime("2026-12-0\u{e9}T10:00Z"), None);
        assert_eq!(parse_datetime("2026-12-06\u{e9}10:00Z"), None);
    }

    #[test]
    fn relative_times_read_naturally() {
        let now = 1_000_000_000;
        assert_eq!(relative(now, now), "just now");
        assert_eq!(relative(now - 45_000, now), "45s ago");
        assert_eq!(relative(now - 180_000, now), "3m ago");
        assert_eq!(relative(now - 7_200_000, now), "2h ago");
        assert_eq!(relative(now - 5 * 86_400_000, now), "5d ago");
        assert_eq!(relative(now + 3 * 3_600_000, now), "in 3h");
    }

    #[test]
    fn deadlines_and_windows_parse() {
        assert_eq!(parse_deadline("48h", 1000), Ok(1000 + 48 * 3_600_000));
        assert_eq!(parse_deadline("+90m", 0), Ok(90 * 60_000));
        assert!(parse_deadline("soon", 0).is_err());
        assert!(parse_deadline("0h", 0).is_err());
        assert_eq!(
            parse_window("22:00-04:30"),
            Ok(("22:00".into(), "04:30".into()))
        );
        assert!(parse_window("24:00-01:00").is_err());
        assert!(parse_window("2200-0100").is_err());
    }
}
