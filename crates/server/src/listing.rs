//! Pages of the API's lists: `limit`, an opaque `cursor` and a `sort` order, on every list.
//!
//! Pagination is by keyset, never by offset: a page is the rows after the last one seen in the
//! sort order, `(key, id) > (last key, last id)`, read from an index on `(key, id)`, so the
//! millionth device costs what the first does. The cursor carries the list's name, the sort
//! order and the last row's key and id; a cursor from another list or another order is
//! refused rather than read as something it is not.
//!
//! The body of a list answer stays the JSON array of its items. When more items follow, the
//! answer names the next page in `Link: <...>; rel="next"` (RFC 8288) and `X-Next-Cursor`.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, Row as _};

use crate::error::{Result, ServerError};

/// Items on a page when the request does not say.
pub const DEFAULT_LIMIT: i64 = 100;
/// Most items on a page.
pub const MAX_LIMIT: i64 = 1000;
/// Longest cursor taken (a cursor holds a list name, an order, one key and an id).
const MAX_CURSOR: usize = 1024;

/// The paging parameters every list takes.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items on the page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// Where the page starts: the `X-Next-Cursor` of the previous page (opaque).
    pub cursor: Option<String>,
    /// The order: one of the list's sort fields, `-field` for descending.
    pub sort: Option<String>,
}

/// One order a list can be read in: its name in `sort=` and the SQL expression of its key
/// (never NULL, with an index on `(expression, id)`).
#[derive(Debug)]
pub struct SortField {
    /// The name in `sort=`.
    pub name: &'static str,
    /// The key's SQL expression (over the list's table alias).
    pub expr: &'static str,
    /// Whether the key is text (else an integer).
    pub text: bool,
}

/// A sort key's value in a cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Key {
    Int(i64),
    Text(String),
}

/// What a cursor holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorBody {
    /// The list.
    l: String,
    /// The order (`field` or `-field`).
    s: String,
    /// The last row's key (absent when the order is by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<Key>,
    /// The last row's id.
    i: i64,
}

/// A list read: its order, its page size and where it starts.
#[derive(Debug)]
pub struct Keyset {
    list: &'static str,
    limit: i64,
    /// `None`: by id alone.
    field: Option<&'static SortField>,
    descending: bool,
    after: Option<(Option<Key>, i64)>,
}

impl Keyset {
    /// Reads the paging parameters of list `list`: `sorts` are its orders besides `id`,
    /// `descending` its default direction (by id).
    pub fn parse(
        list: &'static str,
        p: &PageParams,
        sorts: &'static [SortField],
        descending: bool,
    ) -> Result<Self> {
        let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ServerError::BadRequest(format!(
                "limit: {limit} is out of range (1 to {MAX_LIMIT})"
            )));
        }
        let (field, descending) = match p.sort.as_deref() {
            None => (None, descending),
            Some(s) => {
                let (name, desc) = match s.strip_prefix('-') {
                    Some(n) => (n, true),
                    None => (s, false),
                };
                let field = match name {
                    "id" => None,
                    _ => Some(sorts.iter().find(|f| f.name == name).ok_or_else(|| {
                        let names: Vec<&str> = std::iter::once("id")
                            .chain(sorts.iter().map(|f| f.name))
                            .collect();
                        ServerError::BadRequest(format!(
                            "sort: {s:?} is not an order of this list (one of {}, with - for descending)",
                            names.join(", ")
                        ))
                    })?),
                };
                (field, desc)
            }
        };
        let mut k = Keyset {
            list,
            limit,
            field,
            descending,
            after: None,
        };
        if let Some(c) = p.cursor.as_deref() {
            k.after = Some(k.read_cursor(c)?);
        }
        Ok(k)
    }

    /// The order as `sort=` spells it.
    fn order_name(&self) -> String {
        format!(
            "{}{}",
            if self.descending { "-" } else { "" },
            self.field.map_or("id", |f| f.name)
        )
    }

    fn read_cursor(&self, c: &str) -> Result<(Option<Key>, i64)> {
        let bad = |why: &str| ServerError::BadRequest(format!("cursor: {why}"));
        if c.len() > MAX_CURSOR {
            return Err(bad("too long"));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .map_err(|_| bad("not a cursor this server gave (not base64url)"))?;
        let body: CursorBody =
            serde_json::from_slice(&bytes).map_err(|_| bad("not a cursor this server gave"))?;
        if body.l != self.list {
            return Err(bad(&format!(
                "a cursor of the {} list, not of {}",
                body.l, self.list
            )));
        }
        if body.s != self.order_name() {
            return Err(bad(&format!(
                "a cursor of the order {:?}; ask for that order, or start again without a cursor",
                body.s
            )));
        }
        match (self.field, &body.k) {
            (None, None) => {}
            (Some(f), Some(Key::Text(_))) if f.text => {}
            (Some(f), Some(Key::Int(_))) if !f.text => {}
            _ => return Err(bad("its key does not fit the order")),
        }
        Ok((body.k, body.i))
    }

    fn cursor(&self, key: Option<Key>, id: i64) -> String {
        let body = CursorBody {
            l: self.list.to_owned(),
            s: self.order_name(),
            k: key,
            i: id,
        };
        // Serializing a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// The SQL of the page for a query over id column `id` whose next free parameter is
    /// `$next`. Bind with [`Keyset::bind`] after the query's own parameters.
    pub fn sql(&self, id: &str, next: usize) -> KeysetSql {
        let cmp = if self.descending { "<" } else { ">" };
        let dir = if self.descending { "DESC" } else { "ASC" };
        let (condition, order, used) = match (self.field, &self.after) {
            (None, None) => (String::new(), format!("{id} {dir}"), 0),
            (None, Some(_)) => (format!(" AND {id} {cmp} ${next}"), format!("{id} {dir}"), 1),
            (Some(f), None) => (String::new(), format!("{} {dir}, {id} {dir}", f.expr), 0),
            (Some(f), Some(_)) => (
                // `key >= last` bounds the range of the `(key, id)` index (SQLite does not
                // search an expression index with a row-value comparison); the rest skips
                // the rows of the last key already seen.
                format!(
                    " AND {e} {cmp}= ${next} AND ({e} {cmp} ${next} OR {id} {cmp} ${})",
                    next + 1,
                    e = f.expr
                ),
                format!("{} {dir}, {id} {dir}", f.expr),
                2,
            ),
        };
        let key = self.field.map_or_else(
            || format!("{id} AS sort_key"),
            |f| format!("{} AS sort_key", f.expr),
        );
        KeysetSql {
            condition,
            key,
            order: format!("ORDER BY {order} LIMIT ${}", next + used),
        }
    }

    /// Binds the cursor's values and the page size (one more row than the page, to know
    /// whether another page follows).
    pub fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        if let Some((key, id)) = &self.after {
            match key {
                Some(Key::Int(v)) => q = q.bind(*v),
                Some(Key::Text(v)) => q = q.bind(v.clone()),
                None => {}
            }
            q = q.bind(*id);
        }
        q.bind(self.limit + 1)
    }

    /// The page of `rows` (as [`Keyset::bind`] asked for them, with `sort_key` and `id`
    /// columns), each item built by `item`.
    pub fn page<T>(
        &self,
        mut rows: Vec<AnyRow>,
        mut item: impl FnMut(&AnyRow) -> Result<T>,
    ) -> Result<Page<T>> {
        let more = rows.len() as i64 > self.limit;
        rows.truncate(usize::try_from(self.limit).unwrap_or(usize::MAX));
        let next = match (more, rows.last()) {
            (true, Some(last)) => {
                let id: i64 = last.try_get("id").map_err(ServerError::from)?;
                let key = match self.field {
                    None => None,
                    Some(f) if f.text => Some(Key::Text(
                        last.try_get::<String, _>("sort_key")
                            .map_err(ServerError::from)?,
                    )),
                    Some(_) => Some(Key::Int(
                        last.try_get::<i64, _>("sort_key")
                            .map_err(ServerError::from)?,
                    )),
                };
                Some(self.cursor(key, id))
            }
            _ => None,
        };
        let items = rows.iter().map(&mut item).collect::<Result<Vec<T>>>()?;
        Ok(Page { items, next })
    }
}

/// The SQL pieces of a page ([`Keyset::sql`]).
#[derive(Debug)]
pub struct KeysetSql {
    /// ` AND (...)` after the query's own conditions (empty on the first page).
    pub condition: String,
    /// The column to select beside the item's own: `... AS sort_key`.
    pub key: String,
    /// `ORDER BY ... LIMIT $n`.
    pub order: String,
}

/// One page of a list.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, in the order asked for.
    pub items: Vec<T>,
    /// The cursor of the next page, when more items follow.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// The page with its items replaced.
    pub fn map<U>(self, f: impl FnOnce(Vec<T>) -> Vec<U>) -> Page<U> {
        Page {
            items: f(self.items),
            next: self.next,
        }
    }
}

/// A page as an HTTP answer: the JSON array, and when more follow the `Link` to the next
/// page (the request's own URI with `cursor` replaced) and `X-Next-Cursor`.
pub fn respond<T: Serialize>(page: Page<T>, uri: &axum::http::Uri) -> Response {
    let mut resp = Json(page.items).into_response();
    if let Some(c) = page.next {
        let mut query: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && p.split('=').next() != Some("cursor"))
            .map(str::to_owned)
            .collect();
        // A cursor is base64url: no character in it needs escaping in a query.
        query.push(format!("cursor={c}"));
        let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&link) {
            headers.insert(header::LINK, v);
        }
        if let Ok(v) = HeaderValue::from_str(&c) {
            headers.insert("x-next-cursor", v);
        }
    }
    resp
}

/// A value bound to a list's filter.
#[derive(Debug, Clone)]
pub enum Arg {
    /// An integer.
    Int(i64),
    /// A text.
    Text(String),
}

/// The conditions of a list's filters: only those asked for enter the SQL (a plan per
/// combination, each on its index, rather than one plan with `$1 IS NULL OR ...` guards).
#[derive(Debug, Default)]
pub struct Filters {
    conds: Vec<String>,
    args: Vec<Arg>,
}

impl Filters {
    /// Adds `cond`, in which `?` stands for `arg`'s parameter.
    pub fn add(&mut self, cond: &str, arg: Arg) -> &mut Self {
        self.add_all(cond, [arg])
    }

    /// Adds `cond`, in which each `?` stands for the next of `args`, in order.
    pub fn add_all(&mut self, cond: &str, args: impl IntoIterator<Item = Arg>) -> &mut Self {
        let mut out = String::with_capacity(cond.len() + 8);
        let mut args = args.into_iter().peekable();
        for c in cond.chars() {
            match (c, args.next_if(|_| c == '?')) {
                ('?', Some(a)) => {
                    self.args.push(a);
                    out.push_str(&format!("${}", self.args.len()));
                }
                (c, _) => out.push(c),
            }
        }
        self.conds.push(out);
        self
    }

    /// Adds `cond`, which takes no parameter.
    pub fn fixed(&mut self, cond: &str) -> &mut Self {
        self.conds.push(cond.to_owned());
        self
    }

    /// Adds `cond` when `arg` is given.
    pub fn opt(&mut self, cond: &str, arg: Option<Arg>) -> &mut Self {
        if let Some(a) = arg {
            self.add(cond, a);
        }
        self
    }

    /// `WHERE ...` over every condition (`WHERE 1 = 1` with none, so that a keyset condition
    /// can follow).
    pub fn where_sql(&self) -> String {
        let mut w = String::from("WHERE 1 = 1");
        for c in &self.conds {
            w.push_str(" AND ");
            w.push_str(c);
        }
        w
    }

    /// The number of the next free parameter.
    pub fn next(&self) -> usize {
        self.args.len() + 1
    }

    /// Binds the conditions' values in order.
    pub fn bind<'q>(
        &self,
        mut q: sqlx::query::Query<'q, Any, AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
            };
        }
        q
    }

    /// The page of `keys` over `select` (`SELECT cols FROM table alias`, the key column
    /// appended) with these filters, rows fetched from `conn`, keyed by `id`.
    pub async fn fetch(
        &self,
        conn: &mut sqlx::AnyConnection,
        keys: &Keyset,
        select: &str,
        id: &str,
    ) -> Result<Vec<AnyRow>> {
        let k = keys.sql(id, self.next());
        let (cols, from) = select.split_once(" FROM ").unwrap_or((select, ""));
        let sql = format!(
            "{cols}, {} FROM {from} {}{} {}",
            k.key,
            self.where_sql(),
            k.condition,
            k.order
        );
        let q = self.bind(sqlx::query(&sql));
        Ok(keys.bind(q).fetch_all(conn).await?)
    }
}

/// The range `[low, high)` of the digit strings that start with `prefix` (a prefix search on
/// an index, the same under any collation: both bounds are digit strings); `high` is `None`
/// when every digit string after `low` matches (a prefix of nines). Refuses a prefix that is
/// not 1 to 20 digits.
pub fn digit_prefix(field: &str, prefix: &str) -> Result<(String, Option<String>)> {
    if prefix.is_empty() || prefix.len() > 20 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ServerError::BadRequest(format!(
            "{field}: a prefix of 1 to 20 digits"
        )));
    }
    let mut high = prefix.as_bytes().to_vec();
    while let Some(last) = high.pop() {
        if last < b'9' {
            high.push(last + 1);
            return Ok((prefix.to_owned(), String::from_utf8(high).ok()));
        }
    }
    Ok((prefix.to_owned(), None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    static SORTS: [SortField; 1] = [SortField {
        name: "imei",
        expr: "d.imei",
        text: true,
    }];

    fn params(limit: Option<i64>, cursor: Option<&str>, sort: Option<&str>) -> PageParams {
        PageParams {
            limit,
            cursor: cursor.map(str::to_owned),
            sort: sort.map(str::to_owned),
        }
    }

    #[test]
    fn limit_out_of_range_names_the_parameter() {
        for l in [0, -1, 1001] {
            let e =
                Keyset::parse("devices", &params(Some(l), None, None), &SORTS, false).unwrap_err();
            assert!(e.to_string().contains("limit"), "{e}");
        }
        assert!(Keyset::parse("devices", &params(Some(1000), None, None), &SORTS, false).is_ok());
    }

    #[test]
    fn unknown_sort_is_refused_with_the_choices() {
        let e = Keyset::parse("devices", &params(None, None, Some("model")), &SORTS, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sort") && e.contains("imei"), "{e}");
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_list_and_order() {
        let k =
            Keyset::parse("devices", &params(None, None, Some("-imei")), &SORTS, false).unwrap();
        let c = k.cursor(Some(Key::Text("4901".into())), 7);
        let again = Keyset::parse(
            "devices",
            &params(None, Some(&c), Some("-imei")),
            &SORTS,
            false,
        )
        .unwrap();
        assert_eq!(again.after, Some((Some(Key::Text("4901".into())), 7)));
        // Another list, another order, or garbage: refused.
        assert!(
            Keyset::parse(
                "cards",
                &params(None, Some(&c), Some("-imei")),
                &SORTS,
                false
            )
            .unwrap_err()
            .to_string()
            .contains("cursor")
        );
        assert!(Keyset::parse("devices", &params(None, Some(&c), None), &SORTS, false).is_err());
        for junk in ["", "!!!", "e30", "bm90IGpzb24"] {
            assert!(
                Keyset::parse(
                    "devices",
                    &params(None, Some(junk), Some("-imei")),
                    &SORTS,
                    false
                )
                .is_err(),
                "{junk}"
            );
        }
        // A key of the wrong type for the order.
        let wrong = k.cursor(Some(Key::Int(3)), 7);
        assert!(
            Keyset::parse(
                "devices",
                &params(None, Some(&wrong), Some("-imei")),
                &SORTS,
                false
            )
            .is_err()
        );
    }

    #[test]
    fn keyset_sql_compares_key_then_id() {
        let k = Keyset::parse(
            "devices",
            &params(Some(5), None, Some("imei")),
            &SORTS,
            false,
        )
        .unwrap();
        let c = k.cursor(Some(Key::Text("1".into())), 1);
        let k = Keyset::parse(
            "devices",
            &params(Some(5), Some(&c), Some("imei")),
            &SORTS,
            false,
        )
        .unwrap();
        let sql = k.sql("d.id", 3);
        assert_eq!(
            sql.condition,
            " AND d.imei >= $3 AND (d.imei > $3 OR d.id > $4)"
        );
        assert_eq!(sql.key, "d.imei AS sort_key");
        assert_eq!(sql.order, "ORDER BY d.imei ASC, d.id ASC LIMIT $5");
    }

    #[test]
    fn digit_prefix_ranges() {
        assert_eq!(
            digit_prefix("q", "4901").unwrap(),
            ("4901".into(), Some("4902".into()))
        );
        assert_eq!(
            digit_prefix("q", "4999").unwrap(),
            ("4999".into(), Some("5".into()))
        );
        assert_eq!(digit_prefix("q", "99").unwrap(), ("99".into(), None));
        assert!(digit_prefix("q", "49a").is_err());
        assert!(digit_prefix("q", "").is_err());
    }
}
