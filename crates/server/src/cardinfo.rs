//! What the card says about its own configuration, relayed by the device in each DM session:
//! the authorized-server list (`./SIMFOTA/Card/Servers`), the update policy
//! (`./SIMFOTA/Card/Policy`) and the trusted originators (`./SIMFOTA/Card/Originators`),
//! formats in docs/dm-tree.md "Card answers".
//!
//! These answers are not signed: a device could show the server anything. The server stores
//! them as last read (raw bytes and decoded JSON) for the operator to see; it decides nothing
//! on them (the card enforces its own lists and policy). An answer that does not decode is
//! kept out of the database and logged.

use serde_json::{Value, json};
use simfota_wire::contract::{OriginatorEntry, Rights, ServerEntry};
use simfota_wire::{IntegrityMode, Limits, Policy, UnauthorizedRule};

use crate::db::now_ms;
use crate::error::Result;

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
