//! Pictures drawn on the server as inline SVG: a stacked bar (a campaign's jobs by state), one
//! bar per wave, the progress over time (stacked areas), failures by reason. No script draws
//! them, so they render under the dashboard's content security policy and in a saved page
//! alike. Every text that goes into a picture is escaped here.

use std::fmt::Write as _;

use super::escape;
use super::time::utc;

/// Colours of job states, the same on every picture and legend.
pub mod colour {
    /// Succeeded.
    pub const SUCCEEDED: &str = "#2f7d46";
    /// Failed.
    pub const FAILED: &str = "#c0392b";
    /// Delivered, result awaited.
    pub const IN_PROGRESS: &str = "#e0a526";
    /// Released, not delivered yet.
    pub const PENDING: &str = "#5b8fd1";
    /// In a wave not released yet.
    pub const WAITING: &str = "#c9ced8";
    /// Cancelled.
    pub const CANCELLED: &str = "#7d828c";
    /// Skipped: the device already had this version or a later one.
    pub const SKIPPED: &str = "#9b7fd4";
}

/// One part of a stacked bar.
#[derive(Debug, Clone)]
pub struct Segment {
    /// What it counts (`succeeded`, ...).
    pub label: &'static str,
    /// How many.
    pub count: i64,
    /// Its colour.
    pub colour: &'static str,
}

/// The legend of `segments` as HTML: a colour chip, the label and the count for each.
pub fn legend(segments: &[Segment]) -> String {
    let mut out = String::from("<ul class=\"legend\">");
    for s in segments {
        let _ = write!(
            out,
            "<li><svg width=\"12\" height=\"12\" aria-hidden=\"true\"><rect width=\"12\" \
             height=\"12\" rx=\"2\" fill=\"{}\"/></svg> {} <strong>{}</strong></li>",
            s.colour,
            escape(s.label),
            s.count
        );
    }
    out.push_str("</ul>");
    out
}

/// A horizontal bar `width` × `height` split by `segments` in proportion (an empty bar when
/// they count nothing). Each part names itself on hover.
pub fn bar(segments: &[Segment], width: u32, height: u32) -> String {
    let total: i64 = segments.iter().map(|s| s.count.max(0)).sum();
    let summary = segments
        .iter()
        .filter(|s| s.count > 0)
        .map(|s| format!("{} {}", s.count, s.label))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "<svg class=\"chart\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} \
         {height}\" role=\"img\" aria-label=\"{}\"><rect width=\"{width}\" height=\"{height}\" \
         rx=\"3\" fill=\"#e9ecf1\"/>",
        escape(if summary.is_empty() {
            "nothing yet"
        } else {
            &summary
        })
    );
    if total > 0 {
        let mut x = 0.0f64;
        for s in segments.iter().filter(|s| s.count > 0) {
            let w = f64::from(width) * s.count as f64 / total as f64;
            let _ = write!(
                out,
                "<rect x=\"{x:.2}\" width=\"{w:.2}\" height=\"{height}\" fill=\"{}\"><title>{}: \
                 {}</title></rect>",
                s.colour,
                escape(s.label),
                s.count
            );
            x += w;
        }
    }
    out.push_str("</svg>");
    out
}

/// One wave of a campaign as [`waves`] draws it.
#[derive(Debug, Clone)]
pub struct WaveBar {
    /// `Wave 1 · 10%`.
    pub label: String,
    /// Whether the wave was released (its devices are offered the update).
    pub released: bool,
    /// Its jobs by state.
    pub segments: Vec<Segment>,
}

/// One bar per wave, each as wide as the wave's share of the campaign's devices, with the
/// wave's name on the left and its counts on the right.
pub fn waves(rows: &[WaveBar]) -> String {
    const LABEL: u32 = 130;
    const BAR: u32 = 460;
    const ROW: u32 = 30;
    const TEXT: u32 = 440;
    let width = LABEL + BAR + TEXT;
    let height = ROW * u32::try_from(rows.len()).unwrap_or(0).max(1) + 6;
    let largest = rows
        .iter()
        .map(|r| r.segments.iter().map(|s| s.count.max(0)).sum::<i64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = format!(
        "<svg class=\"chart\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} \
         {height}\" role=\"img\" aria-label=\"jobs per wave\">"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = ROW * u32::try_from(i).unwrap_or(0) + 4;
        let total: i64 = r.segments.iter().map(|s| s.count.max(0)).sum();
        // A wave's bar is as long as its share of the largest wave: the picture shows the
        // waves' sizes as well as their progress.
        let len = (f64::from(BAR) * total as f64 / largest as f64).max(2.0);
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\" class=\"lbl\">{}</text><rect x=\"{LABEL}\" y=\"{y}\" \
             width=\"{len:.2}\" height=\"20\" rx=\"3\" fill=\"#e9ecf1\"/>",
            y + 15,
            escape(&r.label)
        );
        let mut x = f64::from(LABEL);
        for s in r.segments.iter().filter(|s| s.count > 0) {
            let w = len * s.count as f64 / total.max(1) as f64;
            let _ = write!(
                out,
                "<rect x=\"{x:.2}\" y=\"{y}\" width=\"{w:.2}\" height=\"20\" fill=\"{}\"><title>{}: \
                 {} {}</title></rect>",
                s.colour,
                escape(&r.label),
                s.count,
                escape(s.label)
            );
            x += w;
        }
        let mut counts = r
            .segments
            .iter()
            .filter(|s| s.count > 0)
            .map(|s| format!("{} {}", s.count, s.label))
            .collect::<Vec<_>>()
            .join(" · ");
        if !r.released {
            counts.push_str(" · not released yet");
        }
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" class=\"num\">{}</text>",
            LABEL + BAR + 10,
            y + 15,
            escape(counts.trim_start_matches(" · "))
        );
    }
    out.push_str("</svg>");
    out
}

/// A point of [`timeline`]: the jobs in each state from time `t_ms` until the next point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Point {
    /// Unix ms.
    pub t_ms: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
    /// Delivered, result awaited.
    pub in_progress: i64,
    /// Offered, not delivered yet.
    pub pending: i64,
}

impl Point {
    /// The counts as [`timeline`] stacks them, bottom up (the order of every bar and legend),
    /// each with its label and colour.
    pub fn layers(&self) -> [Segment; 4] {
        [
            ("succeeded", self.succeeded, colour::SUCCEEDED),
            ("failed", self.failed, colour::FAILED),
            ("in progress", self.in_progress, colour::IN_PROGRESS),
            ("pending", self.pending, colour::PENDING),
        ]
        .map(|(label, count, colour)| Segment {
            label,
            count,
            colour,
        })
    }
}

/// Progress over time: the jobs succeeded, failed, in progress and pending, stacked in that
/// order, from `start_ms` to `end_ms`, against `total` jobs. Each count holds from its point
/// until the next (the last until `end_ms`; none before the first). The picture names itself
/// and the counts at its right edge; each layer names its state, its count there and its
/// most.
pub fn timeline(start_ms: i64, end_ms: i64, total: i64, points: &[Point]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 64.0;
    const RIGHT: f64 = 16.0;
    const TOP: f64 = 12.0;
    const BOTTOM: f64 = 34.0;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let span = (end_ms - start_ms).max(1) as f64;
    // The height of a point's first `n` layers.
    let height = |p: &Point, n: usize| {
        p.layers()
            .iter()
            .take(n)
            .map(|s| s.count.max(0))
            .sum::<i64>()
    };
    let stacked = |p: &Point| height(p, 4);
    let top_value = points
        .iter()
        .map(stacked)
        .max()
        .unwrap_or(0)
        .max(total)
        .max(1) as f64;
    let x = |t: i64| LEFT + plot_w * ((t - start_ms).max(0) as f64 / span).min(1.0);
    let y = |v: i64| TOP + plot_h * (1.0 - v as f64 / top_value);
    let last = points.last().copied().unwrap_or_default();
    let summary = last
        .layers()
        .iter()
        .map(|s| format!("{} {}", s.count, s.label))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "<svg class=\"chart\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"{}\">",
        escape(&format!(
            "jobs over time, stacked, from {} to {} UTC; at the end: {summary}",
            utc(start_ms),
            utc(end_ms)
        ))
    );
    // Grid: 0, half and all of the jobs.
    for frac in [0.0, 0.5, 1.0] {
        let v = (top_value * frac).round() as i64;
        let gy = y(v);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\" stroke=\"#d6dae2\"/>\
             <text x=\"{}\" y=\"{:.1}\" class=\"num\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            gy + 4.0,
            compact(v)
        );
    }
    // Time labels as precise as the span needs: seconds within ten minutes, the day beyond a
    // day (`YYYY-MM-DD hh:mm:ss` cut to size), UTC.
    let (from, to) = match end_ms - start_ms {
        d if d <= 600_000 => (11, 19),
        d if d <= 86_400_000 => (11, 16),
        _ => (5, 16),
    };
    for (t, anchor) in [
        (start_ms, "start"),
        (start_ms + (end_ms - start_ms) / 2, "middle"),
        (end_ms, "end"),
    ] {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" class=\"num\" text-anchor=\"{anchor}\">{} UTC</text>",
            x(t),
            H - 10.0,
            escape(utc(t).get(from..to).unwrap_or_default())
        );
    }
    if points.iter().all(|p| stacked(p) == 0) {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"lbl\" text-anchor=\"middle\">no job offered \
             yet</text>",
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
        out.push_str("</svg>");
        return out;
    }
    // Where each point's counts hold: from its time to the next point's (the last to the end).
    let spans: Vec<(f64, f64, &Point)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let until = points.get(i + 1).map_or(end_ms, |n| n.t_ms);
            (x(p.t_ms), x(until.max(p.t_ms)), p)
        })
        .collect();
    for layer in 0..4 {
        // This layer lies between the layers below it and those up to it.
        let below = |p: &Point| height(p, layer);
        let upto = |p: &Point| height(p, layer + 1);
        let most = points
            .iter()
            .map(|p| p.layers()[layer].count)
            .max()
            .unwrap_or(0);
        if most <= 0 {
            continue;
        }
        // Its outline: along its top, left to right, then back along its bottom.
        let mut corners = Vec::with_capacity(spans.len() * 4);
        for (from, to, p) in &spans {
            let top = y(upto(p));
            corners.push((*from, top));
            corners.push((*to, top));
        }
        for (from, to, p) in spans.iter().rev() {
            let bottom = y(below(p));
            corners.push((*to, bottom));
            corners.push((*from, bottom));
        }
        let mut d = String::new();
        for (i, (cx, cy)) in corners.iter().enumerate() {
            let _ = write!(d, "{}{cx:.1},{cy:.1}", if i == 0 { "M" } else { " L" });
        }
        let s = &last.layers()[layer];
        let _ = write!(
            out,
            "<path d=\"{d} Z\" fill=\"{}\" fill-opacity=\"0.9\" stroke=\"{}\" \
             stroke-width=\"0.5\"><title>{}: {} at the end, {} at most</title></path>",
            s.colour,
            s.colour,
            escape(s.label),
            s.count,
            most
        );
    }
    out.push_str("</svg>");
    out
}

/// `n` in few characters for an axis: `950`, `12.5k`, `1M`.
pub fn compact(n: i64) -> String {
    let trim = |v: f64, unit: &str| {
        let t = format!("{v:.1}");
        format!("{}{unit}", t.trim_end_matches(".0"))
    };
    match n.unsigned_abs() {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => trim(n as f64 / 1000.0, "k"),
        _ => trim(n as f64 / 1_000_000.0, "M"),
    }
}

/// `n` with its thousands apart: `1 000 000` (thin spaces, read alike in every locale).
pub fn grouped(n: impl std::borrow::Borrow<i64>) -> String {
    let n = *n.borrow();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(ch);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Failures by reason: one bar per reason, its words above it, as long as its share of the
/// most frequent reason.
pub fn reasons(rows: &[(String, i64)]) -> String {
    bars(rows, colour::FAILED, "failures by reason")
}

/// One bar per row, its label above it, as long as its share of the largest row, in `fill`.
pub fn bars(rows: &[(String, i64)], fill: &str, title: &str) -> String {
    const W: u32 = 760;
    const ROW: u32 = 40;
    const BAR: f64 = 600.0;
    let height = ROW * u32::try_from(rows.len()).unwrap_or(0).max(1);
    let most = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let mut out = format!(
        "<svg class=\"chart\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\" \
         role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    for (i, (reason, n)) in rows.iter().enumerate() {
        let y = ROW * u32::try_from(i).unwrap_or(0);
        let len = (BAR * *n as f64 / most as f64).max(2.0);
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\" class=\"lbl\">{}</text><rect x=\"0\" y=\"{}\" \
             width=\"{len:.2}\" height=\"14\" rx=\"2\" fill=\"{}\"><title>{}: {n}</title></rect>\
             <text x=\"{:.1}\" y=\"{}\" class=\"num\">{n}</text>",
            y + 13,
            escape(reason),
            y + 19,
            fill,
            escape(reason),
            len + 8.0,
            y + 31
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(label: &'static str, count: i64) -> Segment {
        Segment {
            label,
            count,
            colour: colour::SUCCEEDED,
        }
    }

    #[test]
    fn a_bar_splits_in_proportion() {
        let svg = bar(&[seg("succeeded", 3), seg("failed", 1)], 200, 10);
        assert!(svg.contains("width=\"150.00\""), "{svg}");
        assert!(svg.contains("x=\"150.00\" width=\"50.00\""), "{svg}");
        assert!(
            svg.contains("aria-label=\"3 succeeded, 1 failed\""),
            "{svg}"
        );
        let empty = bar(&[seg("succeeded", 0)], 200, 10);
        assert!(
            empty.contains("nothing yet") && !empty.contains("<title>"),
            "{empty}"
        );
    }

    #[test]
    fn text_in_pictures_is_escaped() {
        let svg = reasons(&[("<script>&\"".to_owned(), 2)]);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;&amp;&quot;"), "{svg}");
        let svg = waves(&[WaveBar {
            label: "<b>".into(),
            released: false,
            segments: vec![seg("succeeded", 1)],
        }]);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
    }

    #[test]
    fn numbers_read_short_and_grouped() {
        assert_eq!(compact(950), "950");
        assert_eq!(compact(12_500), "12.5k");
        assert_eq!(compact(500_000), "500k");
        assert_eq!(compact(1_000_000), "1M");
        assert_eq!(grouped(1_000_000), "1\u{2009}000\u{2009}000");
        assert_eq!(grouped(999), "999");
    }

    #[test]
    fn a_timeline_stacks_its_states_and_names_the_last_counts() {
        let at = |t_ms, succeeded, failed, in_progress, pending| Point {
            t_ms,
            succeeded,
            failed,
            in_progress,
            pending,
        };
        let svg = timeline(0, 1000, 10, &[at(500, 5, 1, 2, 2), at(1000, 8, 1, 0, 1)]);
        assert!(
            svg.contains(
                "aria-label=\"jobs over time, stacked, from 1970-01-01 00:00:00 to 1970-01-01 \
                 00:00:01 UTC; at the end: 8 succeeded, 1 failed, 0 in progress, 1 pending\""
            ),
            "{svg}"
        );
        assert!(
            svg.contains("<title>succeeded: 8 at the end, 8 at most</title>"),
            "{svg}"
        );
        assert!(
            svg.contains("<title>in progress: 0 at the end, 2 at most</title>"),
            "{svg}"
        );
        // Ten jobs fill the plot's height (12 to 186): succeeded holds 5 from the middle
        // (x 404) and 8 at the end, failed lies on top of it.
        assert!(
            svg.contains("d=\"M404.0,99.0 L744.0,99.0 L744.0,46.8 L744.0,46.8 "),
            "{svg}"
        );
        assert!(
            svg.contains("fill=\"#5b8fd1\""),
            "pending in its colour: {svg}"
        );
        // A layer that never counted anything is not drawn.
        let svg = timeline(0, 1000, 10, &[at(500, 5, 0, 0, 0)]);
        assert_eq!(svg.matches("<path").count(), 1, "{svg}");
        assert!(timeline(0, 1000, 10, &[]).contains("no job offered yet"));
        assert!(timeline(0, 1000, 10, &[at(500, 0, 0, 0, 0)]).contains("no job offered yet"));
    }
}
