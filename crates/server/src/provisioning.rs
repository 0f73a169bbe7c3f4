//! Device lists in an operator's provisioning file: CSV (RFC 4180), as a factory or a
//! logistics system exports them, taken by `POST /api/v1/devices/bulk` with
//! `Content-Type: text/csv`.
//!
//! The first record names the columns, in any order and any letter case:
//!
//! | column | required | value |
//! |---|---|---|
//! | `imei` | yes | 15 digits, Luhn-checked |
//! | `username`, `password`, `server_password` | yes | the device's DM account |
//! | `auth` | no | `md5` (default) or `hmac` |
//! | `model`, `manufacturer`, `fw_version`, `notify_addr` | no | as in the JSON registration |
//! | `groups` | no | group names separated by `;` |
//! | `nonce` | no | base64, 1 to 64 bytes: the nonce the device's first credentials use (DM Security 1.2 §5.4) |
//!
//! An empty cell is an absent value. A file is taken whole or not at all, like the JSON form:
//! the first problem is named by its line and column, and nothing is registered.

use std::collections::HashMap;

use crate::error::{Result, ServerError};
use crate::registry::{BULK_MAX, NewDevice};

/// The columns a provisioning file may have.
const COLUMNS: [&str; 11] = [
    "imei",
    "username",
    "password",
    "server_password",
    "auth",
    "model",
    "manufacturer",
    "fw_version",
    "notify_addr",
    "groups",
    "nonce",
];

/// The columns every file must have.
const REQUIRED: [&str; 4] = ["imei", "username", "password", "server_password"];

fn refused(line: u64, what: impl std::fmt::Display) -> ServerError {
    ServerError::BadRequest(format!("CSV line {line}: {what}"))
}

/// The devices of a provisioning file, each checked as a JSON entry would be.
pub fn devices_from_csv(body: &[u8]) -> Result<Vec<NewDevice>> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(body);
    let header = reader
        .byte_headers()
        .map_err(|e| refused(1, csv_problem(&e)))?
        .clone();
    if header.is_empty() {
        return Err(ServerError::BadRequest(
            "CSV: empty file; the first line names the columns".into(),
        ));
    }
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, raw) in header.iter().enumerate() {
        let name = String::from_utf8_lossy(raw).trim().to_ascii_lowercase();
        let Some(known) = COLUMNS.iter().find(|c| **c == name) else {
            return Err(refused(
                1,
                format_args!("unknown column {name:?} (columns: {})", COLUMNS.join(", ")),
            ));
        };
        if index.insert(known, i).is_some() {
            return Err(refused(1, format_args!("column {name:?} appears twice")));
        }
    }
    if let Some(missing) = REQUIRED.iter().find(|c| !index.contains_key(*c)) {
        return Err(refused(
            1,
            format_args!("the column {missing:?} is required"),
        ));
    }
    let mut devices = Vec::new();
    for record in reader.byte_records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, csv::Position::line);
            refused(line, csv_problem(&e))
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        if devices.len() == BULK_MAX {
            return Err(refused(
                line,
                format_args!("at most {BULK_MAX} devices per request"),
            ));
        }
        let cell = |name: &str| -> Result<Option<String>> {
            let Some(&i) = index.get(name) else {
                return Ok(None);
            };
            let raw = record.get(i).unwrap_or_default();
            let text = std::str::from_utf8(raw)
                .map_err(|_| refused(line, format_args!("{name}: not UTF-8")))?
                .trim();
            Ok((!text.is_empty()).then(|| text.to_owned()))
        };
        let required = |name: &str| -> Result<String> {
            cell(name)?.ok_or_else(|| refused(line, format_args!("{name}: empty")))
        };
        let device = NewDevice {
            imei: required("imei")?,
            username: required("username")?,
            password: required("password")?,
            server_password: required("server_password")?,
            auth: cell("auth")?.unwrap_or_else(|| "md5".into()),
            model: cell("model")?,
            manufacturer: cell("manufacturer")?,
            fw_version: cell("fw_version")?,
            notify_addr: cell("notify_addr")?,
            groups: cell("groups")?
                .map(|g| {
                    g.split(';')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            nonce: cell("nonce")?,
        };
        device.check().map_err(|e| refused(line, e))?;
        devices.push(device);
    }
    Ok(devices)
}

/// What the CSV reader refused, without its own position prefix (the caller gives the line).
fn csv_problem(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} fields where the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMEI: &str = "490154203237518";
    const IMEI2: &str = "356938035643809";

    fn refusal(body: &str) -> String {
        match devices_from_csv(body.as_bytes()) {
            Err(ServerError::BadRequest(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn reads_columns_in_any_order_with_quotes_and_empty_cells() {
        let body = format!(
            "\u{feff}Username,IMEI,password,server_password,groups,nonce,model\r\n\
             dev-1,{IMEI},\"p,w\",sp,\"north; south\",AAECAw==,\r\n\
             dev-2,{IMEI2},\"say \"\"hi\"\"\",sp,,,EX-2\r\n"
        );
        let d = devices_from_csv(body.as_bytes()).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].imei, IMEI);
        assert_eq!(d[0].username, "dev-1");
        assert_eq!(d[0].password, "p,w");
        assert_eq!(d[0].groups, ["north", "south"]);
        assert_eq!(d[0].nonce.as_deref(), Some("AAECAw=="));
        assert_eq!(d[0].model, None, "an empty cell is absent");
        assert_eq!(d[0].auth, "md5", "the default scheme");
        assert_eq!(d[1].password, "say \"hi\"");
        assert!(d[1].groups.is_empty());
        assert_eq!(d[1].model.as_deref(), Some("EX-2"));
    }

    #[test]
    fn refuses_with_line_and_column() {
        assert!(refusal("").contains("empty file"), "{}", refusal(""));
        assert!(refusal("imei,username,password\n").contains("\"server_password\" is required"));
        assert!(
            refusal("imei,user,password,server_password\n").contains("unknown column \"user\"")
        );
        assert!(refusal("imei,imei,username,password,server_password\n").contains("appears twice"));
        let head = "imei,username,password,server_password,nonce\n";
        let m = refusal(&format!("{head}{IMEI},a,p,sp\n"));
        assert!(
            m.starts_with("CSV line 2: 4 fields where the header has 5"),
            "{m}"
        );
        let m = refusal(&format!("{head}{IMEI},a,p,sp,\n{IMEI2},b,p,sp,!!\n"));
        assert!(m.starts_with("CSV line 3: nonce: not base64"), "{m}");
        let m = refusal(&format!("{head}{IMEI},,p,sp,\n"));
        assert_eq!(m, "CSV line 2: username: empty");
        let m = refusal(&format!("{head}490154203237519,a,p,sp,\n"));
        assert!(m.starts_with("CSV line 2: imei:"), "{m}");
        let m = refusal(&format!("{head}{IMEI},\"a,p,sp,\n"));
        assert!(m.starts_with("CSV line"), "an unterminated quote: {m}");
        let mut bytes = format!("{head}{IMEI},a,p,sp,").into_bytes();
        bytes.extend_from_slice(b"\xff\n");
        match devices_from_csv(&bytes) {
            Err(ServerError::BadRequest(m)) => assert!(m.contains("not UTF-8"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_more_than_a_batch() {
        let mut body = String::from("imei,username,password,server_password\n");
        for i in 0..=BULK_MAX {
            body.push_str(&format!("{IMEI},u{i},p,sp\n"));
        }
        let m = refusal(&body);
        assert!(m.contains(&format!("at most {BULK_MAX}")), "{m}");
    }
}
