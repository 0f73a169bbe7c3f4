//! What the card says about its own configuration, relayed by the device in each DM session:
//! the authorized-server list (`./SIMFOTA/Card/Servers`), the update policy
//! (`./SIMFOTA/Card/Policy`) and the trusted originators (`./SIMFOTA/Card/Originators`),
//! formats in docs/dm-tree.md "Card answers".
//!
//! These answers are not signed: a device could show the server anything. The server stores
//! them as last read (raw bytes and decoded JSON) for the operator to see; it decides nothing
//! on them (the card enforces its own lists and policy). An answer that does not decode is
//! kept out of the database and logged.
//!
//! The PIN retry counter is the exception: the card states it inside each log export page it
//! signs (docs/formats.md §7, member 7), so the server records it only from a verified page
//! ([`crate::cardlog`]) and [`PinReport`] shows it with the time that page was stored.

use serde::Serialize;
use serde_json::{Value, json};
use simfota_wire::contract::{OriginatorEntry, Rights, ServerEntry};
use simfota_wire::{IntegrityMode, Limits, PinTries, Policy, UnauthorizedRule};

use crate::db::{RowExt, now_ms};
use crate::error::Result;

/// The counter stored in `cards.pin_tries_left` / `pin_max_tries`; `None` when no page stated
/// it, or when the stored values are no counter a page can state (then the next page's
/// counter replaces them).
pub fn stored_pin(left: Option<i64>, max: Option<i64>) -> Option<PinTries> {
    let left = u8::try_from(left?).ok()?;
    let max = match max {
        Some(m) => Some(u8::try_from(m).ok()?),
        None => None,
    };
    PinTries::new(left, max).ok()
}

/// The card's PIN retry counter as the newest verified export page that stated it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PinReport {
    /// Tries left before the PIN blocks.
    pub tries_left: u8,
    /// The maximum the counter is reset to; `None` when the card did not state it.
    pub max_tries: Option<u8>,
    /// No try left: the card refuses the PIN until the PUK resets the counter.
    pub blocked: bool,
    /// When the server stored the page that stated it (Unix ms).
    pub reported_ms: i64,
}

impl PinReport {
    /// The report in a `cards` row (`pin_tries_left`, `pin_max_tries`, `pin_reported_ms`);
    /// `None` until a page stated the counter.
    pub fn from_row(r: &sqlx::any::AnyRow) -> Result<Option<Self>> {
        let pin = stored_pin(r.opt_i64("pin_tries_left")?, r.opt_i64("pin_max_tries")?);
        Ok(match (pin, r.opt_i64("pin_reported_ms")?) {
            (Some(p), Some(at)) => Some(Self {
                tries_left: p.left(),
                max_tries: p.max(),
                blocked: p.blocked(),
                reported_ms: at,
            }),
            _ => None,
        })
    }

    /// The counter in words: `2 of 3`, `5 (maximum not stated)` or `blocked`.
    pub fn text(&self) -> String {
        match (self.blocked, self.max_tries) {
            (true, _) => "blocked".to_owned(),
            (false, Some(max)) => format!("{} of {max}", self.tries_left),
            (false, None) => format!("{} (maximum not stated)", self.tries_left),
        }
    }
}

/// Which card node an answer came from (its layout is the contract module's,
/// `simfota_wire::contract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// `[* [id tstr, key bstr, rights uint]]`.
    Servers,
    /// The wire crate's `Policy` encoding.
    Policy,
    /// `[* [id tstr, key bstr]]`.
    Originators,
}

impl Relayed {
    fn name(self) -> &'static str {
        match self {
            Self::Servers => "server list",
            Self::Policy => "policy",
            Self::Originators => "originator list",
        }
    }
}

/// Decodes an answer into the JSON the API and dashboard show; `Err` names what is wrong.
pub fn decode(what: Relayed, bytes: &[u8]) -> std::result::Result<Value, String> {
    let limits = Limits::DEFAULT;
    match what {
        Relayed::Servers => ServerEntry::decode_vec(bytes, &limits).map(|list| {
            list.iter()
                .map(|s| {
                    json!({
                        "id": s.id.as_str(),
                        "key": hex::encode(s.key.to_sec1()),
                        "rights": rights_json(s.rights),
                    })
                })
                .collect()
        }),
        Relayed::Originators => OriginatorEntry::decode_vec(bytes, &limits).map(|list| {
            list.iter()
                .map(|o| json!({ "id": o.id.as_str(), "key": hex::encode(o.key.to_sec1()) }))
                .collect()
        }),
        Relayed::Policy => Policy::decode(bytes, &limits).map(|p| policy_json(&p)),
    }
    .map_err(|e| e.to_string())
}

/// The names of a server's rights, from the contract's one table ([`Rights::NAMES`]).
fn rights_json(rights: Rights) -> Value {
    rights.names().collect::<Vec<_>>().into()
}

fn uuid_text(b: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*b).to_string()
}

/// The policy as JSON: `{unauthorized, integrity, card_digest_max_bytes, allowed_classes}`.
pub fn policy_json(p: &Policy) -> Value {
    let rule = match p.unauthorized {
        UnauthorizedRule::Refuse => "refuse",
        UnauthorizedRule::WarnConfirm => "warn_confirm",
        UnauthorizedRule::ConfirmWithPin => "confirm_with_pin",
        UnauthorizedRule::FreeDevice => "free_device",
    };
    let (integrity, max) = match p.integrity {
        IntegrityMode::DeviceDigest => ("device_digest", None),
        IntegrityMode::CardDigest { max_size } => ("card_digest", Some(max_size)),
    };
    let allowed: Vec<Value> = p
        .allowed()
        .iter()
        .map(|(v, c)| json!({ "vendor_id": uuid_text(v), "class_id": uuid_text(c) }))
        .collect();
    json!({
        "unauthorized": rule,
        "integrity": integrity,
        "card_digest_max_bytes": max,
        "allowed_classes": allowed,
    })
}

/// Stores several answers of the card `iccid` in one statement (a DM message usually carries
/// all three lists); an answer that does not decode is logged and left out.
pub async fn store_lists(
    conn: &mut sqlx::AnyConnection,
    iccid: &str,
    answers: &[(Relayed, Vec<u8>)],
) -> Result<()> {
    let mut set = Vec::new();
    let mut values: Vec<(Vec<u8>, String)> = Vec::new();
    for (what, bytes) in answers {
        let json = match decode(*what, bytes) {
            Ok(v) => v,
            Err(why) => {
                tracing::warn!(%iccid, what = what.name(), %why, "card answer not decodable; not stored");
                continue;
            }
        };
        let column = match what {
            Relayed::Servers => "servers",
            Relayed::Policy => "policy",
            Relayed::Originators => "originators",
        };
        // A list relayed twice in one message: the last answer is what the card said last.
        if let Some(at) = set.iter().position(|c| *c == column) {
            set.remove(at);
            values.remove(at);
        }
        set.push(column);
        values.push((bytes.clone(), json.to_string()));
    }
    if set.is_empty() {
        return Ok(());
    }
    // `lists_read_ms`: the lists are not due again before the configured refresh.
    let mut sql = String::from("UPDATE cards SET updated_ms = $1, lists_read_ms = $1");
    for (i, column) in set.iter().enumerate() {
        let n = 3 + 2 * i;
        sql.push_str(&format!(", {column} = ${n}, {column}_json = ${}", n + 1));
    }
    sql.push_str(" WHERE iccid = $2");
    let mut q = sqlx::query(&sql).bind(now_ms()).bind(iccid.to_owned());
    for (raw, json) in values {
        q = q.bind(raw).bind(json);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_decodes_to_names() {
        let mut p = Policy::new(
            UnauthorizedRule::ConfirmWithPin,
            IntegrityMode::CardDigest { max_size: 4096 },
        );
        p.allow([1; 16], [2; 16]).unwrap();
        let mut buf = [0u8; Policy::MAX_ENCODED_LEN];
        let n = p.encode(&mut buf).unwrap();
        let v = decode(Relayed::Policy, &buf[..n]).unwrap();
        assert_eq!(v["unauthorized"], "confirm_with_pin");
        assert_eq!(v["integrity"], "card_digest");
        assert_eq!(v["card_digest_max_bytes"], 4096);
        assert_eq!(
            v["allowed_classes"][0]["class_id"],
            "02020202-0202-0202-0202-020202020202"
        );
        assert!(decode(Relayed::Policy, &buf[..n - 1]).is_err());
    }

    #[test]
    fn stored_pin_counters_read_back_or_not_at_all() {
        let p = stored_pin(Some(2), Some(3)).unwrap();
        assert_eq!((p.left(), p.max(), p.blocked()), (2, Some(3), false));
        assert!(stored_pin(Some(0), Some(3)).unwrap().blocked());
        assert_eq!(stored_pin(Some(5), None).unwrap().max(), None);
        // Nothing stated, or values no page can state.
        assert_eq!(stored_pin(None, Some(3)), None);
        assert_eq!(stored_pin(Some(4), Some(3)), None);
        assert_eq!(stored_pin(Some(-1), None), None);
        assert_eq!(stored_pin(Some(2), Some(256)), None);
        let report = |tries_left, max_tries| PinReport {
            tries_left,
            max_tries,
            blocked: tries_left == 0,
            reported_ms: 0,
        };
        assert_eq!(report(2, Some(3)).text(), "2 of 3");
        assert_eq!(report(0, Some(3)).text(), "blocked");
        assert_eq!(report(0, None).text(), "blocked");
        assert_eq!(report(7, None).text(), "7 (maximum not stated)");
    }

    #[test]
    fn lists_decode_and_refuse_garbage() {
        use simfota_wire::p256::ecdsa::SigningKey;
        use simfota_wire::{OriginatorId, PublicKey, ServerId};
        let key = PublicKey::from(&SigningKey::from_slice(&[3; 32]).unwrap());
        let sec1 = hex::encode(key.to_sec1());
        let originators = OriginatorEntry::encode_vec(&[OriginatorEntry {
            id: OriginatorId::new("oem").unwrap(),
            key,
        }])
        .unwrap();
        let v = decode(Relayed::Originators, &originators).unwrap();
        assert_eq!(v, json!([{ "id": "oem", "key": sec1 }]));
        let servers = ServerEntry::encode_vec(&[ServerEntry {
            id: ServerId::new("srv").unwrap(),
            key,
            rights: Rights::FIRMWARE_UPDATE | Rights::LOG_ACK,
        }])
        .unwrap();
        let v = decode(Relayed::Servers, &servers).unwrap();
        assert_eq!(
            v,
            json!([{ "id": "srv", "key": sec1, "rights": ["firmware_update", "log_ack"] }])
        );
        // An originator entry where a server entry belongs, trailing bytes, not CBOR, a key
        // that is not a P-256 point ([["oem", h'0102']]).
        assert!(decode(Relayed::Servers, &originators).is_err());
        let mut long = originators.clone();
        long.push(0);
        assert!(decode(Relayed::Originators, &long).is_err());
        assert!(decode(Relayed::Originators, b"junk").is_err());
        let short_key = [0x81, 0x82, 0x63, b'o', b'e', b'm', 0x42, 1, 2];
        assert!(decode(Relayed::Originators, &short_key).is_err());
    }
}
