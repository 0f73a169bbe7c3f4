//! What `simfota demo` and `simfota fleet` both set up: P-256 key pairs as PEM files, the
//! operator's REST client ([`operator`]), firmware images and signed packages ([`firmware`]),
//! and a card personalized by the issuer for one authorized server.

pub mod firmware;
pub mod operator;

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use p256::ecdsa::SigningKey;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::OsRng;
use simfota_cardlink::Channel;
use simfota_cardlink::client::{CardClient, Personalization};
use simfota_wire::{Iccid, Policy, PublicKey, Rights};

use crate::files::{self, Overwrite};
use crate::keys;

/// A new P-256 key pair written as `DIR/<name>.pem` (private, mode 0600) and
/// `DIR/<name>.pub.pem`; answers the signing key.
pub fn new_key_files(dir: &Path, name: &str) -> Result<SigningKey> {
    let secret = p256::SecretKey::random(&mut OsRng);
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .context("cannot encode a new key")?;
    files::write_atomic(
        &dir.join(format!("{name}.pem")),
        pem.as_bytes(),
        0o600,
        Overwrite::Allow,
    )?;
    files::write_atomic(
        &dir.join(format!("{name}.pub.pem")),
        keys::public_pem(&secret.public_key())?.as_bytes(),
        0o644,
        Overwrite::Allow,
    )?;
    Ok(SigningKey::from(&secret))
}

/// What the issuer writes on one card.
pub struct CardSpec<'a> {
    /// The issuer's name in the card certificate.
    pub issuer_name: &'a str,
    /// The card's ICCID.
    pub iccid: &'a str,
    /// The card's IMSI.
    pub imsi: &'a str,
    /// The card PIN.
    pub pin: &'a str,
    /// The PUK.
    pub puk: &'a str,
    /// The one authorized server: its ServerID, public key and rights.
    pub server: (&'a str, PublicKey, Rights),
    /// The trusted software originator: its id and key.
    pub originator: (&'a str, &'a SigningKey),
    /// The card's policy.
    pub policy: Policy,
}

/// Personalizes a blank card (the issuer certifies the card key it generates).
pub fn personalize<C: Channel>(
    client: &mut CardClient<C>,
    issuer: &SigningKey,
    spec: &CardSpec<'_>,
) -> Result<()> {
    let (server_id, server_key, rights) = spec.server;
    let (originator_id, originator_key) = spec.originator;
    client
        .personalize(
            issuer,
            &Personalization {
                issuer_name: spec.issuer_name.into(),
                iccid: Iccid::parse(spec.iccid).map_err(|e| anyhow!("ICCID: {e}"))?,
                imsi: spec.imsi.into(),
                pin: (spec.pin.into(), 3),
                puk: (spec.puk.into(), 10),
                servers: vec![(server_id.to_owned(), server_key, rights)],
                originators: vec![(originator_id.into(), PublicKey::from(originator_key))],
                policy: spec.policy,
            },
        )
        .map_err(|e| anyhow!("the card refused personalization: {e}"))?;
    Ok(())
}
