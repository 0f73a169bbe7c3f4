//! The dashboard's read queries: keyset pagination over an index, never `OFFSET` over the
//! rows shown, so a page costs the same on the first page of a million devices as on the last.
//!
//! A list is walked in the order of its key (an IMEI, an ICCID, an id), from the cursor of the
//! previous page, `PAGE` rows at a time. A filter no index serves (a model, a firmware version,
//! a last-seen range) is checked row by row; so that a rare value cannot make one page read
//! the whole table, such a page looks at [`WINDOW`] keys at most and, when it found fewer
//! matches, offers to continue from where it stopped.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::db::{Db, RowExt};
use crate::error::{Result, ServerError};

/// Rows per page.
pub const PAGE: usize = 50;
/// Most keys one page of a filtered list looks at.
pub const WINDOW: i64 = 10_000;

/// A value bound to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// An integer.
    I(i64),
    /// A text.
    T(String),
}

/// A condition: SQL with `?` for each value and `{a}` where the table's alias goes.
pub type Cond = (String, Vec<Val>);

/// A list as [`page`] walks it.
pub struct Spec<'a> {
    /// `SELECT ... FROM table a ...` (every column the page shows, the key among them).
    pub select: &'a str,
    /// The table the key belongs to.
    pub table: &'a str,
    /// Its alias in `select`, with the dot (`d.`).
    pub alias: &'a str,
    /// The key column (unique, indexed).
    pub key: &'a str,
    /// Whether the key is an integer (else text).
    pub int_key: bool,
    /// Newest first (descending key).
    pub desc: bool,
    /// Conditions an index serves (the key's range, the parent's id of an index prefix).
    pub indexed: Vec<Cond>,
    /// Conditions checked row by row.
    pub filters: Vec<Cond>,
}

/// Where a page starts: after a key (the next page) or before one (the previous page).
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    /// Rows after this key.
    pub after: Option<String>,
    /// Rows before this key.
    pub before: Option<String>,
}

/// One page of a list.
pub struct Listing {
    /// The rows, in display order.
    pub rows: Vec<AnyRow>,
    /// The cursor (`after`) of the next page.
    pub next: Option<String>,
    /// The cursor (`before`) of the previous page.
    pub prev: Option<String>,
    /// The page stopped at the end of its [`WINDOW`] rather than at a full page: more rows may
    /// match beyond it.
    pub window_ended: bool,
}

fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for ch in sql.chars() {
        if ch == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(ch);
        }
    }
    out
}

fn where_clause(conds: &[Cond], alias: &str) -> (String, Vec<Val>) {
    let mut vals = Vec::new();
    let parts: Vec<String> = conds
        .iter()
        .map(|(sql, v)| {
            vals.extend(v.iter().cloned());
            format!("({})", sql.replace("{a}", alias))
        })
        .collect();
    if parts.is_empty() {
        (String::new(), vals)
    } else {
        (format!(" WHERE {}", parts.join(" AND ")), vals)
    }
}

/// Runs `sql` (with `?` placeholders) with `vals`.
pub async fn fetch(db: &Db, sql: &str, vals: &[Val]) -> Result<Vec<AnyRow>> {
    let sql = numbered(sql);
    let mut q = sqlx::query(&sql);
    for v in vals {
        q = match v {
            Val::I(i) => q.bind(*i),
            Val::T(t) => q.bind(t.clone()),
        };
    }
    Ok(q.fetch_all(db.pool()).await?)
}

fn key_text(r: &AnyRow, key: &str, int_key: bool) -> Result<String> {
    if int_key {
        r.i64(key).map(|v| v.to_string())
    } else {
        r.text(key)
    }
}

/// How a page walks its list: direction, the cursor's key, the conditions an index serves.
struct Walk {
    backwards: bool,
    walk_desc: bool,
    from: Option<String>,
    conds: Vec<Cond>,
}

fn key_val(spec: &Spec<'_>, s: &str) -> Result<Val> {
    if spec.int_key {
        s.parse::<i64>()
            .map(Val::I)
            .map_err(|_| ServerError::BadRequest("the page cursor is not a number".into()))
    } else {
        Ok(Val::T(s.to_owned()))
    }
}

fn walk(spec: &Spec<'_>, cursor: &Cursor) -> Result<Walk> {
    let backwards = cursor.after.is_none() && cursor.before.is_some();
    let from = if backwards {
        cursor.before.clone()
    } else {
        cursor.after.clone()
    };
    let walk_desc = spec.desc != backwards;
    let mut conds = spec.indexed.clone();
    if let Some(f) = &from {
        let cmp = if walk_desc { "<" } else { ">" };
        conds.push((
            format!("{{a}}{} {cmp} ?", spec.key),
            vec![key_val(spec, f)?],
        ));
    }
    Ok(Walk {
        backwards,
        walk_desc,
        from,
        conds,
    })
}

fn dir(w: &Walk) -> &'static str {
    if w.walk_desc { "DESC" } else { "ASC" }
}

/// The statement that finds the end of a page's window: the WINDOW-th key from the cursor,
/// read from the index alone. Only a list with row-by-row filters has one.
pub(crate) fn window_sql(spec: &Spec<'_>, cursor: &Cursor) -> Result<Option<(String, Vec<Val>)>> {
    if spec.filters.is_empty() {
        return Ok(None);
    }
    let w = walk(spec, cursor)?;
    let (wh, vals) = where_clause(&w.conds, "");
    let sql = format!(
        "SELECT {key} FROM {table}{wh} ORDER BY {key} {} LIMIT 1 OFFSET {}",
        dir(&w),
        WINDOW - 1,
        key = spec.key,
        table = spec.table,
    );
    Ok(Some((sql, vals)))
}

/// The statement that reads a page, up to the window's end `bound` when there is one.
pub(crate) fn page_sql(
    spec: &Spec<'_>,
    cursor: &Cursor,
    bound: Option<&str>,
) -> Result<(String, Vec<Val>)> {
    let w = walk(spec, cursor)?;
    let mut all = w.conds.clone();
    all.extend(spec.filters.iter().cloned());
    if let Some(b) = bound {
        // Up to the window's last key, in the walking direction.
        let upto = if w.walk_desc { ">=" } else { "<=" };
        all.push((
            format!("{{a}}{} {upto} ?", spec.key),
            vec![key_val(spec, b)?],
        ));
    }
    let (wh, vals) = where_clause(&all, spec.alias);
    let sql = format!(
        "{}{wh} ORDER BY {}{} {} LIMIT {}",
        spec.select,
        spec.alias,
        spec.key,
        dir(&w),
        PAGE + 1
    );
    Ok((sql, vals))
}

/// One page of the list `spec` from `cursor`.
pub async fn page(db: &Db, spec: &Spec<'_>, cursor: &Cursor) -> Result<Listing> {
    let Walk {
        backwards, from, ..
    } = walk(spec, cursor)?;
    let mut bound = None;
    if let Some((sql, vals)) = window_sql(spec, cursor)?
        && let Some(r) = fetch(db, &sql, &vals).await?.first()
    {
        bound = Some(key_text(r, spec.key, spec.int_key)?);
    }
    let (sql, vals) = page_sql(spec, cursor, bound.as_deref())?;
    let mut rows = fetch(db, &sql, &vals).await?;
    let more = rows.len() > PAGE;
    rows.truncate(PAGE);
    let window_ended = !more && bound.is_some();
    if backwards {
        rows.reverse();
    }
    let first = rows
        .first()
        .map(|r| key_text(r, spec.key, spec.int_key))
        .transpose()?;
    let last = rows
        .last()
        .map(|r| key_text(r, spec.key, spec.int_key))
        .transpose()?;
    let further = if more {
        if backwards {
            first.clone()
        } else {
            last.clone()
        }
    } else if window_ended {
        bound.clone()
    } else {
        None
    };
    let (next, prev) = if backwards {
        (last.or(from), further)
    } else {
        (further, from.as_ref().and(first.or(from.clone())))
    };
    Ok(Listing {
        rows,
        next,
        prev,
        window_ended,
    })
}

/// Whether `row` has a column `name` (columns another version of the schema adds).
pub fn has(row: &AnyRow, name: &str) -> bool {
    row.try_column(name).is_ok()
}

/// An optional integer column that may not exist in this schema.
pub fn opt_col_i64(row: &AnyRow, name: &str) -> Result<Option<i64>> {
    if has(row, name) {
        row.opt_i64(name)
    } else {
        Ok(None)
    }
}

/// An optional text column that may not exist in this schema.
pub fn opt_col_text(row: &AnyRow, name: &str) -> Result<Option<String>> {
    if has(row, name) {
        row.opt_text(name)
    } else {
        Ok(None)
    }
}

/// The upper end of a range of digit strings starting with `prefix` (`"35"` -> `"36"`): the
/// prefix plus one, or `None` when it is all nines (no end). Digits compare alike in every
/// collation, so the range `[prefix, end)` is an index range on both engines.
pub fn digits_end(prefix: &str) -> Option<String> {
    let mut d: Vec<u8> = prefix.bytes().collect();
    while let Some(last) = d.pop() {
        if last < b'9' {
            d.push(last + 1);
            return String::from_utf8(d).ok();
        }
    }
    None
}

/// A `LIKE` pattern matching `text` anywhere (its `%`, `_` and `\` taken literally).
pub fn like_anywhere(text: &str) -> String {
    let mut p = String::from("%");
    for ch in text.to_lowercase().chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(numbered("a = ? AND b > ?"), "a = $1 AND b > $2");
        let (w, v) = where_clause(
            &[
                ("{a}imei > ?".into(), vec![Val::T("1".into())]),
                ("{a}model = ?".into(), vec![Val::T("m".into())]),
            ],
            "d.",
        );
        assert_eq!(w, " WHERE (d.imei > ?) AND (d.model = ?)");
        assert_eq!(v.len(), 2);
    }

    /// A list with a rare filter, walked page by page: every match is found once, in order,
    /// each page looking at a window of keys at most, and back again.
    #[tokio::test]
    async fn a_rare_filter_walks_window_by_window() {
        let (_dir, db) = crate::db::scratch_sqlite().await;
        // 25,000 devices; every 999th runs firmware 0.9.
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 25000) \
             INSERT INTO devices (imei, dm_username, dm_password, server_password, fw_version, \
             enrolled_by, created_ms) SELECT printf('35%013d', i), 'u' || i, '', '', \
             CASE WHEN i % 999 = 0 THEN '0.9' ELSE '1.0' END, 'api', 0 FROM n",
        )
        .execute(db.pool())
        .await
        .unwrap();
        let spec = Spec {
            select: "SELECT d.imei FROM devices d",
            table: "devices",
            alias: "d.",
            key: "imei",
            int_key: false,
            desc: false,
            indexed: vec![],
            filters: vec![("{a}fw_version = ?".into(), vec![Val::T("0.9".into())])],
        };
        let mut found = Vec::new();
        let mut cursor = Cursor::default();
        let mut pages = 0;
        loop {
            let l = page(&db, &spec, &cursor).await.unwrap();
            pages += 1;
            found.extend(l.rows.iter().map(|r| r.text("imei").unwrap()));
            match l.next {
                Some(n) => {
                    cursor = Cursor {
                        after: Some(n),
                        before: None,
                    }
                }
                None => break,
            }
        }
        let expected: Vec<String> = (1..=25_000)
            .filter(|i| i % 999 == 0)
            .map(|i| format!("35{i:013}"))
            .collect();
        assert_eq!(found, expected);
        assert_eq!(pages, 3, "25,000 keys in windows of {WINDOW}");
        // Backwards from the end: the same matches, window by window.
        let mut back = Vec::new();
        let mut cursor = Cursor {
            after: None,
            before: Some("36".into()),
        };
        loop {
            let l = page(&db, &spec, &cursor).await.unwrap();
            let mut rows: Vec<String> = l.rows.iter().map(|r| r.text("imei").unwrap()).collect();
            rows.extend(back);
            back = rows;
            match l.prev {
                Some(p) => {
                    cursor = Cursor {
                        after: None,
                        before: Some(p),
                    }
                }
                None => break,
            }
        }
        assert_eq!(back, expected);
        db.close().await;
    }

    #[test]
    fn digit_prefixes_end_where_the_next_begins() {
        assert_eq!(digits_end("35").as_deref(), Some("36"));
        assert_eq!(digits_end("3599").as_deref(), Some("36"));
        assert_eq!(digits_end("999"), None);
        assert_eq!(like_anywhere("50%_a\\"), "%50\\%\\_a\\\\%");
    }
}
