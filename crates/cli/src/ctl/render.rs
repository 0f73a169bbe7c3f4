//! What `ctl` prints: aligned tables and `key  value` lines for people, the API's JSON for
//! scripts. Text that comes from the server is shown with control characters escaped, so a
//! device's model or a token's name cannot move the cursor or forge a line.

use serde_json::Value;

/// Text from the server, safe on a terminal: control characters escaped as `\u{..}`.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON value as a table cell: strings cleaned, `null` as `-`, lists joined by `, `.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => clean(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(_) => clean(&v.to_string()),
    }
}

/// Prints `v` as indented JSON on stdout.
pub fn json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => outln!("{text}"),
        // A `Value` always serializes; nothing to print otherwise.
        Err(_) => outln!("null"),
    }
}

/// A table: a header line, then rows, columns aligned on their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table on stdout, or `none` on stderr when it has no row.
    pub fn print(&self, none: &str) {
        if self.rows.is_empty() {
            errln!("{none}");
            return;
        }
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain(self.headers.get(i).map(|h| h.len()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.headers.len()).map(width).collect();
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (i, c) in cells.enumerate() {
                match widths.get(i) {
                    Some(w) if i + 1 < widths.len() => text.push_str(&format!("{c:<w$}  ")),
                    _ => text.push_str(c),
                }
            }
            outln!("{}", text.trim_end());
        };
        line(&mut self.headers.iter().copied());
        for r in &self.rows {
            line(&mut r.iter().map(String::as_str));
        }
    }
}

/// `key  value` lines, keys aligned.
pub struct Fields {
    lines: Vec<(String, String)>,
}

impl Fields {
    /// No line yet.
    pub fn new() -> Self {
        Fields { lines: Vec::new() }
    }

    /// Adds a line.
    pub fn add(&mut self, key: &str, value: impl Into<String>) {
        self.lines.push((key.to_owned(), value.into()));
    }

    /// Prints the lines on stdout.
    pub fn print(&self) {
        let w = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.lines {
            outln!("{}", format!("{k:<w$}  {v}").trim_end());
        }
    }
}

/// A byte count for people: `512 B`, `4.0 KiB`, `12.5 MiB`, `1.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A string field of a JSON object, cleaned, `-` when absent.
pub fn text(v: &Value, key: &str) -> String {
    cell(&v[key])
}

/// A Unix-milliseconds field as a table cell, `-` when absent.
pub fn when_short(v: &Value, key: &str, now: i64) -> String {
    v[key]
        .as_i64()
        .map_or_else(|| "-".to_owned(), |ms| super::time::short(ms, now))
}

/// A Unix-milliseconds field as a detail line, `never` when absent.
pub fn when_long(v: &Value, key: &str, now: i64) -> String {
    v[key]
        .as_i64()
        .map_or_else(|| "never".to_owned(), |ms| super::time::long(ms, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_cannot_drive_the_terminal() {
        assert_eq!(clean("EX-1\u{1b}[2J\n"), "EX-1\\u{1b}[2J\\u{a}");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a, b");
        assert_eq!(cell(&Value::Null), "-");
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(4096), "4.0 KiB");
        assert_eq!(bytes(512 * 1024 * 1024), "512.0 MiB");
    }
}
