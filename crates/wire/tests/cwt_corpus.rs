//! The delivery tokens python-cwt minted (`scripts/cwt_corpus.py`, committed under
//! `crates/card/tests/tokens/`) decode with ours to exactly the claims python-cwt read back from
//! them (`claims.json`), `nbf` included; each verifies under the server key; a token without
//! a claim the profile requires is refused naming that claim.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;

use serde_json::Value;
use simfota_wire::{DeliveryToken, Error, Limits, PublicKey};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../card/tests/tokens")
}

fn read_back() -> Value {
    let text = std::fs::read_to_string(corpus_dir().join("claims.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn server_key(j: &Value) -> PublicKey {
    let mut sec1 = vec![0x04];
    sec1.extend(hex::decode(j["server_key"]["x"].as_str().unwrap()).unwrap());
    sec1.extend(hex::decode(j["server_key"]["y"].as_str().unwrap()).unwrap());
    PublicKey::from_sec1(&sec1).unwrap()
}

fn u64_claim(claims: &Value, key: i64) -> Option<u64> {
    claims.get(key.to_string()).map(|v| v.as_u64().unwrap())
}

fn str_claim(claims: &Value, key: i64) -> Option<&str> {
    claims.get(key.to_string()).map(|v| v.as_str().unwrap())
}

#[test]
fn python_cwt_tokens_decode_to_the_claims_python_cwt_reads() {
    use simfota_wire::token::claims as k;
    let j = read_back();
    let key = server_key(&j);
    let tokens = j["tokens"].as_object().unwrap();
    assert_eq!(tokens.len(), 17);
    let required = [
        ("iss", k::ISS),
        ("iat", k::IAT),
        ("exp", k::EXP),
        ("cti", k::CTI),
        ("nonce", k::NONCE),
        ("iccid", k::ICCID),
        ("imei", k::IMEI),
        ("manifest digest", k::MANIFEST_DIGEST),
    ];
    for (name, claims) in tokens {
        let bytes = std::fs::read(corpus_dir().join(format!("{name}.cwt"))).unwrap();
        let missing = required
            .iter()
            .find(|(_, key)| claims.get(key.to_string()).is_none());
        let decoded = DeliveryToken::decode(&bytes, &Limits::CARD);
        if let Some((field, _)) = missing {
            assert_eq!(decoded.err(), Some(Error::MissingField(field)), "{name}");
            continue;
        }
        let token = decoded
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .verify(&key)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            Some(token.iss.as_str()),
            str_claim(claims, k::ISS),
            "{name}"
        );
        assert_eq!(Some(token.iat), u64_claim(claims, k::IAT), "{name}");
        assert_eq!(Some(token.exp), u64_claim(claims, k::EXP), "{name}");
        assert_eq!(token.nbf, u64_claim(claims, k::NBF), "{name}");
        assert_eq!(
            Some(hex::encode(token.cti.as_bytes())).as_deref(),
            str_claim(claims, k::CTI),
            "{name}"
        );
        assert_eq!(
            Some(hex::encode(token.nonce.0)).as_deref(),
            str_claim(claims, k::NONCE),
            "{name}"
        );
        assert_eq!(
            Some(token.iccid.as_str()),
            str_claim(claims, k::ICCID),
            "{name}"
        );
        assert_eq!(
            Some(token.imei.as_str()),
            str_claim(claims, k::IMEI),
            "{name}"
        );
        assert_eq!(
            Some(hex::encode(token.manifest_digest.0)).as_deref(),
            str_claim(claims, k::MANIFEST_DIGEST),
            "{name}"
        );
        assert_eq!(token.charging_ref, None, "{name}");
    }
}
