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
use simfota_wire::{IntegrityMode, Limits, Policy, UnauthorizedRule};

use crate::AppState;
use crate::db::now_ms;
use crate::error::Result;

/// Most entries decoded from a list (the applet holds 8 servers and 8 originators).
const MAX_LIST: u64 = 64;

/// Which card node an answer came from.
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
    match what {
        Relayed::Servers => decode_list(bytes, true),
        Relayed::Originators => decode_list(bytes, false),
        Relayed::Policy => Policy::decode(bytes, &Limits::DEFAULT)
            .map(|p| policy_json(&p))
            .map_err(|e| e.to_string()),
    }
}

/// The names the rights bits of a server entry stand for (docs/dm-tree.md).
const RIGHTS: [(u32, &str); 4] = [
    (1, "firmware_update"),
    (2, "log_read"),
    (4, "log_ack"),
    (8, "dm_other"),
];

fn decode_list(bytes: &[u8], with_rights: bool) -> std::result::Result<Value, String> {
    let mut d = minicbor::Decoder::new(bytes);
    let mut list = Vec::new();
    let parsed: std::result::Result<(), minicbor::decode::Error> = (|| {
        let n = d
            .array()?
            .ok_or_else(|| minicbor::decode::Error::message("indefinite-length list"))?;
        if n > MAX_LIST {
            return Err(minicbor::decode::Error::message("list too long"));
        }
        for _ in 0..n {
            let want = if with_rights { 3 } else { 2 };
            if d.array()? != Some(want) {
                return Err(minicbor::decode::Error::message(
                    "an entry has the wrong number of items",
                ));
            }
            let id = d.str()?.to_owned();
            let key = hex::encode(d.bytes()?);
            if with_rights {
                let bits = d.u32()?;
                let rights: Vec<&str> = RIGHTS
                    .into_iter()
                    .filter(|(b, _)| bits & b != 0)
                    .map(|(_, n)| n)
                    .collect();
                list.push(json!({ "id": id, "key": key, "rights": rights }));
            } else {
                list.push(json!({ "id": id, "key": key }));
            }
        }
        Ok(())
    })();
    parsed.map_err(|e| e.to_string())?;
    if d.position() != bytes.len() {
        return Err("bytes after the list".into());
    }
    Ok(Value::Array(list))
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

/// Stores an answer with the card `iccid` (raw and decoded), or logs why it was not stored.
pub async fn store(state: &AppState, iccid: &str, what: Relayed, bytes: &[u8]) -> Result<()> {
    let json = match decode(what, bytes) {
        Ok(v) => v,
        Err(why) => {
            tracing::warn!(%iccid, what = what.name(), %why, "card answer not decodable; not stored");
            return Ok(());
        }
    };
    let sql = match what {
        Relayed::Servers => {
            "UPDATE cards SET servers = $1, servers_json = $2, updated_ms = $3 WHERE iccid = $4"
        }
        Relayed::Policy => {
            "UPDATE cards SET policy = $1, policy_json = $2, updated_ms = $3 WHERE iccid = $4"
        }
        Relayed::Originators => {
            "UPDATE cards SET originators = $1, originators_json = $2, updated_ms = $3 WHERE iccid = $4"
        }
    };
    sqlx::query(sql)
        .bind(bytes.to_vec())
        .bind(json.to_string())
        .bind(now_ms())
        .bind(iccid.to_owned())
        .execute(state.db.pool())
        .await?;
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
        // [["oem", h'0102']]
        let originators = [0x81, 0x82, 0x63, b'o', b'e', b'm', 0x42, 1, 2];
        let v = decode(Relayed::Originators, &originators).unwrap();
        assert_eq!(v, json!([{ "id": "oem", "key": "0102" }]));
        // [["srv", h'01', 5]]
        let servers = [0x81, 0x83, 0x63, b's', b'r', b'v', 0x41, 1, 5];
        let v = decode(Relayed::Servers, &servers).unwrap();
        assert_eq!(v[0]["rights"], json!(["firmware_update", "log_ack"]));
        // An originator entry where a server entry belongs, trailing bytes, not CBOR.
        assert!(decode(Relayed::Servers, &originators).is_err());
        let mut long = originators.to_vec();
        long.push(0);
        assert!(decode(Relayed::Originators, &long).is_err());
        assert!(decode(Relayed::Originators, b"junk").is_err());
    }
}
