//! Delivery tokens minted by an independent CWT implementation (python-cwt, through
//! `scripts/cwt_corpus.py`; the corpus is committed under `tests/tokens/`) run through the real
//! applet's AUTHORIZE UPDATE: authorization check 6 (the validity window against the trusted
//! time: `exp`, `iat`, `nbf`, RFC 8392 §3.1.4-3.1.6) and check 0c (a token without a claim the
//! profile requires does not decode). One test per case, each asserting the status word and the
//! log entry the decision wrote.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

use common::*;
use simfota_card::{Reason, StatusWord};
use simfota_wire::{DeliveryToken, DenyReason, Digest, Event, LogEntry, Nonce};

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tokens")
}

fn corpus(name: &str) -> Vec<u8> {
    let path = corpus_dir().join(format!("{name}.cwt"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh test card with its first nonce outstanding, the package the corpus tokens authorize,
/// and a check that the corpus was minted for this nonce and manifest.
fn fresh() -> (World, Card, Vec<u8>) {
    let w = World::new();
    let mut card = w.default_card();
    let (env, md) = w.package(10);
    let nonce = card.nonce();
    let valid = corpus("valid");
    let claims = *DeliveryToken::decode(&valid, &simfota_wire::Limits::DEFAULT)
        .unwrap()
        .dangerous_unverified();
    if claims.nonce != nonce || claims.manifest_digest != md {
        panic!("{}", regenerate(nonce, md));
    }
    (w, card, env)
}

fn regenerate(nonce: Nonce, md: Digest) -> String {
    format!(
        "the token corpus was minted for another card nonce or package; regenerate it:\n  \
         $SIMFOTA_PYTHON scripts/cwt_corpus.py crates/card/tests/tokens {} {}",
        hex::encode(nonce.0),
        hex::encode(md.0)
    )
}

/// Runs the corpus token `name` through AUTHORIZE UPDATE on a fresh card; returns the status
/// word and the log entry the decision wrote (the card's last).
fn authorize(name: &str) -> (StatusWord, LogEntry) {
    let (w, mut card, env) = fresh();
    let sw = card.authorize(&corpus(name), &env);
    let last = *w
        .read_all(&mut card)
        .last()
        .expect("the decision is logged");
    (sw, last)
}

fn refused(r: Reason) -> StatusWord {
    StatusWord::refused(r.code())
}

fn denied(r: Reason) -> Event {
    Event::Denied(DenyReason(u16::from(r.code())))
}

/// The decision entry names this token's update id and server.
fn names_the_token(e: &LogEntry) {
    assert_eq!(e.update_id.unwrap().as_bytes(), b"\xc7\x01");
    assert_eq!(e.server.unwrap().as_str(), SERVER);
}

fn accepted(name: &str) {
    let (sw, e) = authorize(name);
    assert_eq!(sw, StatusWord::OK, "{name}");
    names_the_token(&e);
    assert_eq!(e.event, Event::Authorized, "{name}");
    assert_eq!(e.trusted_time, Some(NOW), "{name}");
}

fn refused_in_window(name: &str, reason: Reason, trusted_time: Option<u64>) {
    let (sw, e) = authorize(name);
    assert_eq!(sw, refused(reason), "{name}");
    names_the_token(&e);
    assert_eq!(e.event, denied(reason), "{name}");
    assert_eq!(e.trusted_time, trusted_time, "{name}");
}

/// A token that does not decode: 6611, and the refusal counted (nothing authenticated it),
/// naming nothing from the token.
fn malformed(name: &str) {
    let (sw, e) = authorize(name);
    assert_eq!(sw, refused(Reason::Malformed), "{name}");
    assert_eq!(refused(Reason::Malformed).0, 0x6611);
    match e.event {
        Event::Refusals(t) => assert_eq!(t.counts(), &[(Reason::Malformed.deny_reason(), 1)]),
        other => panic!("{name}: {other:?}"),
    }
    assert_eq!((e.update_id, e.server), (None, None), "{name}");
}

#[test]
fn python_cwt_valid_token_is_authorized() {
    accepted("valid");
}

#[test]
fn python_cwt_token_with_nbf_in_the_past_is_authorized() {
    accepted("nbf_past");
}

#[test]
fn python_cwt_token_with_nbf_equal_to_the_trusted_time_is_authorized() {
    accepted("nbf_now");
}

#[test]
fn python_cwt_token_without_nbf_is_authorized() {
    // nbf is optional in the profile (RFC 8392 §3.1.5: "not before", when present).
    accepted("no_nbf");
}

#[test]
fn python_cwt_token_with_unknown_claims_is_authorized() {
    // RFC 8392 §7.2 / RFC 7519 §4: claims a recipient does not understand are ignored.
    accepted("unknown_claims");
}

#[test]
fn python_cwt_token_with_nbf_in_the_future_is_not_yet_valid() {
    refused_in_window("nbf_future", Reason::TokenNotYetValid, Some(NOW));
    assert_eq!(refused(Reason::TokenNotYetValid).0, 0x6613);
}

#[test]
fn python_cwt_expired_token_is_refused() {
    // Expired an hour before its own issue time: never valid, so its iat gives no time.
    refused_in_window("exp_passed", Reason::TokenExpired, None);
    assert_eq!(refused(Reason::TokenExpired).0, 0x6607);
}

#[test]
fn python_cwt_token_expiring_at_its_issue_time_is_refused() {
    // exp <= now: the expiry instant itself is already too late (RFC 7519 §4.1.4).
    refused_in_window("exp_at_iat", Reason::TokenExpired, Some(NOW));
}

#[test]
fn python_cwt_token_issued_after_it_expires_is_refused() {
    // A token that was never valid gives the card no time: its iat is not taken (the card
    // had none yet, so the entry carries none).
    refused_in_window("iat_after_exp", Reason::TokenExpired, None);
}

#[test]
fn python_cwt_tokens_missing_a_required_claim_do_not_decode() {
    for claim in [
        "iss",
        "iat",
        "exp",
        "cti",
        "nonce",
        "iccid",
        "imei",
        "manifest_digest",
    ] {
        malformed(&format!("no_{claim}"));
    }
}

#[test]
fn corpus_lists_every_token_it_holds() {
    let listed = std::fs::read_to_string(corpus_dir().join("cases.txt")).unwrap();
    let mut names: Vec<String> = listed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(':').next().map(str::to_owned))
        .collect();
    names.sort();
    let mut files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".cwt").map(str::to_owned)
        })
        .collect();
    files.sort();
    assert_eq!(names, files);
    assert_eq!(files.len(), 17);
}
