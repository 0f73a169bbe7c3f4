//! `simfota card`: the card tools, through any PC/SC reader or on a card state file.
//!
//! `serve` puts the applet of a state file into pcscd as a virtual card (vsmartcard's vpcd),
//! so every PC/SC client on the machine can talk to it. The other commands reach a card with
//! `--reader NAME` (PC/SC, physical or virtual) or `--state FILE` (the applet in this
//! process): `personalize`, `info`, `servers`, `originators`, `policy`, `admin`; and
//! `admin-sign`, the issuer's offline signing tool, touches no card at all.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use simfota_cardlink::client::{CardClient, CardInfo, Lifecycle, Personalization};
use simfota_cardlink::pcsc::PcscChannel;
use simfota_cardlink::vpcd::{DEFAULT_VPCD, Event, VpcdServer};
use simfota_cardlink::wire::p256::ecdsa::SigningKey;
use simfota_cardlink::wire::{
    AdminChange, AdminCommand, Iccid, IntegrityMode, OriginatorId, Policy, PublicKey, Rights,
    ServerId, UnauthorizedRule,
};
use simfota_cardlink::{Channel, FileCard, InProcessChannel};

use crate::files::{self, Overwrite};
use crate::keys;

/// Arguments of `simfota card`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: CardCommand,
    /// Print what the command shows as one JSON document on stdout (not for `serve`).
    #[arg(long, global = true)]
    json: bool,
}

/// Which card a command talks to.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A card in this PC/SC reader (exact name, or a unique part of it; see `simfota card readers`).
    #[arg(long, value_name = "NAME")]
    reader: Option<String>,
    /// The card whose state is this file, run in this process.
    #[arg(long, value_name = "CARD.state")]
    state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum CardCommand {
    /// Serve the card of a state file into pcscd as a virtual card (vsmartcard vpcd).
    Serve {
        /// The card state (created blank if missing; persisted after every command).
        #[arg(long, value_name = "CARD.state")]
        state: PathBuf,
        /// vpcd's address: 35963 is reader "Virtual PCD 00 00", 35964 is "00 01".
        #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_VPCD)]
        vpcd: String,
        /// Print every power event and APDU on stderr.
        #[arg(long)]
        verbose: bool,
    },
    /// List the PC/SC readers.
    Readers,
    /// Personalize a blank card: card key, issuer certificate, identity, PIN/PUK, servers,
    /// originators, policy; then the card locks.
    Personalize {
        #[command(flatten)]
        target: Target,
        /// The issuer's private key (certifies the card key; its public half goes on the card).
        #[arg(long, value_name = "ISSUER.pem")]
        issuer_key: PathBuf,
        /// The issuer's name in the card certificate.
        #[arg(long, value_name = "NAME", default_value = "simfota-issuer")]
        issuer_name: String,
        /// ICCID (18-20 digits, Luhn check digit).
        #[arg(long)]
        iccid: String,
        /// IMSI (6-15 digits).
        #[arg(long)]
        imsi: String,
        /// PIN (4-8 digits).
        #[arg(long)]
        pin: String,
        /// PUK (4-8 digits).
        #[arg(long)]
        puk: String,
        /// PIN tries before blocking.
        #[arg(long, default_value_t = 3)]
        pin_tries: u8,
        /// PUK tries before blocking.
        #[arg(long, default_value_t = 10)]
        puk_tries: u8,
        /// An authorized server: ID=PUB.pem[:RIGHTS], RIGHTS a comma list of fw, log-read,
        /// log-ack, dm, or all (the default).
        #[arg(long = "server", value_name = "ID=PUB.pem:RIGHTS")]
        servers: Vec<String>,
        /// A trusted software originator: ID=PUB.pem.
        #[arg(long = "originator", value_name = "ID=PUB.pem")]
        originators: Vec<String>,
        /// The policy: RULE[:INTEGRITY], RULE one of refuse, warn-confirm, confirm-with-pin,
        /// free-device; INTEGRITY device-digest (default) or card-digest=MAX_BYTES.
        #[arg(long, value_name = "POLICY", default_value = "refuse")]
        policy: String,
        /// An allowed (vendor-id, class-id) pair, VENDOR_UUID/CLASS_UUID (none: any).
        #[arg(long = "allow", value_name = "VENDOR/CLASS")]
        allow: Vec<String>,
    },
    /// Show the card's identity, key, capacities, log usage and counters.
    Info {
        #[command(flatten)]
        target: Target,
    },
    /// List the authorized DM servers with their rights.
    Servers {
        #[command(flatten)]
        target: Target,
    },
    /// List the trusted software originators.
    Originators {
        #[command(flatten)]
        target: Target,
    },
    /// Show the update policy.
    Policy {
        #[command(flatten)]
        target: Target,
    },
    /// Apply an issuer-signed admin command (from `simfota card admin-sign`).
    Admin {
        #[command(flatten)]
        target: Target,
        /// The signed admin command (COSE_Sign1, CBOR).
        #[arg(value_name = "SIGNED.cbor")]
        signed: PathBuf,
    },
    /// Sign an admin command offline with the issuer key (no card needed).
    AdminSign {
        /// The issuer's private key.
        #[arg(long, value_name = "ISSUER.pem")]
        issuer_key: PathBuf,
        /// The one card the command is for.
        #[arg(long)]
        iccid: String,
        /// The command's counter: above the card's last applied one (see `card info`).
        #[arg(long)]
        counter: u64,
        /// Where to write the signed command.
        #[arg(long, short, value_name = "SIGNED.cbor")]
        out: PathBuf,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
        #[command(subcommand)]
        change: ChangeArg,
    },
}

/// The change an admin command makes.
#[derive(Debug, Subcommand)]
enum ChangeArg {
    /// Add or replace an authorized server: ID=PUB.pem[:RIGHTS].
    PutServer {
        /// ID=PUB.pem[:RIGHTS]
        #[arg(value_name = "ID=PUB.pem:RIGHTS")]
        server: String,
    },
    /// Remove an authorized server.
    RemoveServer {
        /// Server id.
        id: String,
    },
    /// Add or replace a trusted originator: ID=PUB.pem.
    PutOriginator {
        /// ID=PUB.pem
        #[arg(value_name = "ID=PUB.pem")]
        originator: String,
    },
    /// Remove a trusted originator.
    RemoveOriginator {
        /// Originator id.
        id: String,
    },
    /// Replace the policy: RULE[:INTEGRITY] (as for `personalize --policy`).
    SetPolicy {
        /// RULE[:INTEGRITY]
        policy: String,
        /// An allowed (vendor-id, class-id) pair, VENDOR_UUID/CLASS_UUID.
        #[arg(long = "allow", value_name = "VENDOR/CLASS")]
        allow: Vec<String>,
    },
}

/// Runs `simfota card ...`.
pub fn run(args: Args) -> Result<ExitCode> {
    let json = args.json;
    match args.command {
        CardCommand::Serve {
            state,
            vpcd,
            verbose,
        } => {
            if json {
                bail!("`card serve` prints events, not a document: leave out --json");
            }
            serve(&state, &vpcd, verbose)
        }
        CardCommand::Readers => {
            let readers = simfota_cardlink::pcsc::list_readers()?;
            if json {
                outln!("{}", serde_json::json!(readers));
                return Ok(ExitCode::SUCCESS);
            }
            if readers.is_empty() {
                bail!("no smart-card reader is connected");
            }
            for r in readers {
                outln!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Personalize {
            target,
            issuer_key,
            issuer_name,
            iccid,
            imsi,
            pin,
            puk,
            pin_tries,
            puk_tries,
            servers,
            originators,
            policy,
            allow,
        } => {
            let issuer = signing_key(&issuer_key)?;
            let perso = Personalization {
                issuer_name,
                iccid: parse_iccid(&iccid)?,
                imsi,
                pin: (pin, pin_tries),
                puk: (puk, puk_tries),
                servers: servers
                    .iter()
                    .map(|s| parse_server(s))
                    .collect::<Result<_>>()?,
                originators: originators
                    .iter()
                    .map(|s| parse_originator(s))
                    .collect::<Result<_>>()?,
                policy: parse_policy(&policy, &allow)?,
            };
            let mut client = open(&target, true)?;
            let key = client
                .personalize(&issuer, &perso)
                .context("personalization refused")?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "iccid": perso.iccid.to_string(),
                        "card_key": hex::encode(key.to_sec1()),
                    })
                );
            } else {
                outln!(
                    "personalized card {} (card key {})",
                    perso.iccid,
                    hex::encode(key.to_sec1())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Info { target } => {
            let mut client = open(&target, false)?;
            let info = client.card_info()?;
            if json {
                outln!("{}", info_json(&info));
            } else {
                print_info(&info);
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Servers { target } => {
            let mut client = open(&target, false)?;
            let servers = client.servers()?;
            if json {
                let list: Vec<_> = servers
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "id": s.id.to_string(),
                            "rights": rights_text(s.rights),
                            "key": hex::encode(s.key.to_sec1()),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(list));
                return Ok(ExitCode::SUCCESS);
            }
            if servers.is_empty() {
                outln!("no authorized server");
            }
            for s in servers {
                outln!(
                    "{}\trights={}\tkey={}",
                    s.id,
                    rights_text(s.rights),
                    hex::encode(s.key.to_sec1())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Originators { target } => {
            let mut client = open(&target, false)?;
            let list = client.originators()?;
            if json {
                let list: Vec<_> = list
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "id": o.id.to_string(),
                            "key": hex::encode(o.key.to_sec1()),
                        })
                    })
                    .collect();
                outln!("{}", serde_json::Value::Array(list));
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                outln!("no trusted originator");
            }
            for o in list {
                outln!("{}\tkey={}", o.id, hex::encode(o.key.to_sec1()));
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Policy { target } => {
            let mut client = open(&target, false)?;
            let policy = client.policy()?;
            if json {
                outln!("{}", policy_json(&policy));
            } else {
                print_policy(&policy);
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::Admin { target, signed } => {
            let bytes = files::read(&signed, "signed admin command")?;
            let mut client = open(&target, false)?;
            client
                .admin(&bytes)
                .with_context(|| format!("admin command {} refused", signed.display()))?;
            let counter = client.card_info()?.admin_counter;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"applied": true, "admin_counter": counter})
                );
            } else {
                outln!("admin command applied (card admin counter now {counter})");
            }
            Ok(ExitCode::SUCCESS)
        }
        CardCommand::AdminSign {
            issuer_key,
            iccid,
            counter,
            out,
            force,
            change,
        } => {
            let issuer = signing_key(&issuer_key)?;
            let change = match change {
                ChangeArg::PutServer { server } => {
                    let (id, key, rights) = parse_server(&server)?;
                    AdminChange::PutServer {
                        id: server_id(&id)?,
                        key,
                        rights,
                    }
                }
                ChangeArg::RemoveServer { id } => AdminChange::RemoveServer {
                    id: server_id(&id)?,
                },
                ChangeArg::PutOriginator { originator } => {
                    let (id, key) = parse_originator(&originator)?;
                    AdminChange::PutOriginator {
                        id: originator_id(&id)?,
                        key,
                    }
                }
                ChangeArg::RemoveOriginator { id } => AdminChange::RemoveOriginator {
                    id: originator_id(&id)?,
                },
                ChangeArg::SetPolicy { policy, allow } => {
                    AdminChange::SetPolicy(parse_policy(&policy, &allow)?)
                }
            };
            let command = AdminCommand {
                target: parse_iccid(&iccid)?,
                counter,
                change,
            };
            let mut buf = vec![0u8; 4096];
            let n = command
                .sign(&issuer, &mut buf)
                .map_err(|e| anyhow!("cannot sign the admin command: {e}"))?;
            let overwrite = if force {
                Overwrite::Allow
            } else {
                Overwrite::Refuse
            };
            files::write_atomic(&out, &buf[..n], 0o644, overwrite)?;
            if json {
                outln!(
                    "{}",
                    serde_json::json!({
                        "iccid": iccid,
                        "counter": counter,
                        "out": out.display().to_string(),
                    })
                );
            } else {
                outln!(
                    "signed admin command for card {iccid}, counter {counter}: {}",
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens the card a command names. `create`: a missing state file is a blank card (for
/// personalization); otherwise it is an error.
fn open(target: &Target, create: bool) -> Result<CardClient<Box<dyn Channel>>> {
    let channel: Box<dyn Channel> = match (&target.reader, &target.state) {
        (Some(reader), _) => Box::new(
            PcscChannel::connect(Some(reader)).with_context(|| format!("reader {reader:?}"))?,
        ),
        (None, Some(state)) => {
            if !create && !state.exists() {
                bail!(
                    "no card state at {} (make one with 'simfota card personalize --state {}')",
                    state.display(),
                    state.display()
                );
            }
            let card = FileCard::open(state)?;
            Box::new(InProcessChannel::new(card, state.display().to_string()))
        }
        (None, None) => bail!("name the card: --reader NAME or --state FILE"),
    };
    let mut client = CardClient::new(channel);
    let selected = client.select().context("selecting the simfota applet")?;
    if !create && selected.lifecycle != Lifecycle::Operational {
        bail!("the card is not personalized yet (run 'simfota card personalize')");
    }
    Ok(client)
}

/// Serves the card until pcscd goes away (or the process is stopped: the state file is
/// always whole, every command's writes are committed atomically before its answer).
fn serve(state: &Path, vpcd: &str, verbose: bool) -> Result<ExitCode> {
    let mut card = FileCard::open(state)?;
    let server = VpcdServer::connect(vpcd)?;
    let slot = match server.peer().port() {
        35963 => " (reader \"Virtual PCD 00 00\")",
        35964 => " (reader \"Virtual PCD 00 01\")",
        _ => "",
    };
    errln!(
        "serving card {} on vpcd {vpcd}{slot}; stop with Ctrl-C",
        state.display()
    );
    let mut observer = |event: &Event| {
        if verbose {
            match event {
                Event::Apdu {
                    header,
                    command_len,
                    response_len,
                    sw,
                } => errln!(
                    "apdu {} ({command_len} bytes) -> {response_len} bytes, SW {sw:04X}",
                    hex::encode(header)
                ),
                other => errln!("{}", event_text(other)),
            }
        }
    };
    server.serve(&mut card, &mut observer)?;
    Ok(ExitCode::SUCCESS)
}

fn signing_key(path: &Path) -> Result<SigningKey> {
    Ok(SigningKey::from(keys::load_private(path)?))
}

fn public_key(path: &Path) -> Result<PublicKey> {
    let key = keys::load_public(path)?;
    PublicKey::from_sec1(key.to_sec1_bytes().as_ref())
        .map_err(|e| anyhow!("{}: unusable public key ({e})", path.display()))
}

fn parse_iccid(s: &str) -> Result<Iccid> {
    Iccid::parse(s).map_err(|_| {
        anyhow!("ICCID {s:?} is not 18-20 digits with a valid Luhn check digit (ITU-T E.118)")
    })
}

fn server_id(s: &str) -> Result<ServerId> {
    ServerId::new(s).map_err(|e| anyhow!("server id {s:?}: {e}"))
}

fn originator_id(s: &str) -> Result<OriginatorId> {
    OriginatorId::new(s).map_err(|e| anyhow!("originator id {s:?}: {e}"))
}

/// The command line's short name of each right of the contract's table
/// (`simfota_wire::contract::Rights::NAMES`), which it also accepts.
fn short_name(right: Rights) -> &'static str {
    match right {
        Rights::FIRMWARE_UPDATE => "fw",
        Rights::LOG_READ => "log-read",
        Rights::LOG_ACK => "log-ack",
        Rights::DM_OTHER => "dm",
        _ => "?",
    }
}

fn parse_rights(s: &str) -> Result<Rights> {
    let mut rights = Rights(0);
    for part in s.split(',').map(str::trim) {
        let found = match part {
            "all" => Some(Rights::ALL),
            "firmware" => Some(Rights::FIRMWARE_UPDATE),
            _ => Rights::NAMES
                .into_iter()
                .find(|(r, name)| part == short_name(*r) || part == *name)
                .map(|(r, _)| r),
        };
        let Some(r) = found else {
            bail!("unknown right {part:?} (fw, log-read, log-ack, dm, all)");
        };
        rights = rights | r;
    }
    Ok(rights)
}

fn rights_text(r: Rights) -> String {
    let list: Vec<&str> = Rights::NAMES
        .into_iter()
        .filter(|(bit, _)| r.contains(*bit))
        .map(|(bit, _)| short_name(bit))
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(",")
    }
}

/// `ID=PUB.pem[:RIGHTS]`
fn parse_server(s: &str) -> Result<(String, PublicKey, Rights)> {
    let (id, rest) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("server {s:?}: expected ID=PUB.pem[:RIGHTS]"))?;
    server_id(id)?;
    let (path, rights) = match rest.rsplit_once(':') {
        Some((path, rights)) if !Path::new(rest).exists() => (path, parse_rights(rights)?),
        _ => (rest, Rights::ALL),
    };
    Ok((id.to_owned(), public_key(Path::new(path))?, rights))
}

/// `ID=PUB.pem`
fn parse_originator(s: &str) -> Result<(String, PublicKey)> {
    let (id, path) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("originator {s:?}: expected ID=PUB.pem"))?;
    originator_id(id)?;
    Ok((id.to_owned(), public_key(Path::new(path))?))
}

/// `RULE[:INTEGRITY]` plus allowed `VENDOR/CLASS` pairs.
fn parse_policy(s: &str, allow: &[String]) -> Result<Policy> {
    let (rule, integrity) = s.split_once(':').unwrap_or((s, "device-digest"));
    let rule = match rule {
        "refuse" => UnauthorizedRule::Refuse,
        "warn-confirm" => UnauthorizedRule::WarnConfirm,
        "confirm-with-pin" => UnauthorizedRule::ConfirmWithPin,
        "free-device" => UnauthorizedRule::FreeDevice,
        other => bail!(
            "unknown policy rule {other:?} (refuse, warn-confirm, confirm-with-pin, free-device)"
        ),
    };
    let integrity = match integrity.split_once('=') {
        None if integrity == "device-digest" => IntegrityMode::DeviceDigest,
        Some(("card-digest", max)) => IntegrityMode::CardDigest {
            max_size: max
                .parse()
                .map_err(|_| anyhow!("card-digest={max:?}: expected a size in bytes"))?,
        },
        _ => {
            bail!("unknown integrity mode {integrity:?} (device-digest, or card-digest=MAX_BYTES)")
        }
    };
    let mut policy = Policy::new(rule, integrity);
    for pair in allow {
        let (v, c) = pair
            .split_once('/')
            .ok_or_else(|| anyhow!("--allow {pair:?}: expected VENDOR_UUID/CLASS_UUID"))?;
        let uuid = |t: &str| -> Result<[u8; 16]> {
            Ok(*uuid::Uuid::parse_str(t)
                .map_err(|e| anyhow!("--allow {pair:?}: {t:?} is not a UUID ({e})"))?
                .as_bytes())
        };
        policy
            .allow(uuid(v)?, uuid(c)?)
            .map_err(|e| anyhow!("--allow {pair:?}: {e}"))?;
    }
    Ok(policy)
}

/// The life-cycle phase in the words the docs use.
fn lifecycle_text(l: Lifecycle) -> &'static str {
    match l {
        Lifecycle::Blank => "blank",
        Lifecycle::Personalizing => "personalizing",
        Lifecycle::Operational => "operational",
    }
}

fn rule_text(r: UnauthorizedRule) -> &'static str {
    match r {
        UnauthorizedRule::Refuse => "refuse",
        UnauthorizedRule::WarnConfirm => "warn-confirm",
        UnauthorizedRule::ConfirmWithPin => "confirm-with-pin",
        UnauthorizedRule::FreeDevice => "free-device",
    }
}

/// `card info --json`.
fn info_json(ci: &CardInfo) -> serde_json::Value {
    serde_json::json!({
        "iccid": ci.iccid.to_string(),
        "imsi": ci.imsi.to_string(),
        "applet_version": format!("{}.{}", ci.version.0, ci.version.1),
        "lifecycle": lifecycle_text(ci.lifecycle),
        "card_key": ci.card_key.map(hex::encode),
        "certificate_bytes": ci.certificate.len(),
        "log": {
            "capacity": ci.log_capacity,
            "next_seq": ci.log_next,
            "acked_below": ci.log_acked,
            "free": ci.log_free,
        },
        "capacities": {
            "servers": ci.max_servers,
            "originators": ci.max_originators,
            "command_bytes": ci.io_capacity,
            "persistent_bytes": ci.persistent_size,
        },
        "installed_sequence": ci.installed_sequence,
        "trusted_time": ci.trusted_time,
        "admin_counter": ci.admin_counter,
        "update_pending": ci.update_pending,
    })
}

/// `card policy --json`.
fn policy_json(p: &Policy) -> serde_json::Value {
    let (integrity, max_size) = match p.integrity {
        IntegrityMode::DeviceDigest => ("device-digest", None),
        IntegrityMode::CardDigest { max_size } => ("card-digest", Some(max_size)),
    };
    let allowed: Vec<_> = p
        .allowed()
        .iter()
        .map(|(v, c)| {
            serde_json::json!({
                "vendor": uuid::Uuid::from_bytes(*v).to_string(),
                "class": uuid::Uuid::from_bytes(*c).to_string(),
            })
        })
        .collect();
    serde_json::json!({
        "unauthorized": rule_text(p.unauthorized),
        "integrity": integrity,
        "card_digest_max_bytes": max_size,
        "allowed": allowed,
    })
}

/// A vpcd power event of `card serve --verbose` (APDUs are shown by the caller).
fn event_text(event: &Event) -> &'static str {
    match event {
        Event::PowerOn => "power on",
        Event::PowerOff => "power off",
        Event::Reset => "reset",
        Event::Apdu { .. } => "apdu",
    }
}

fn print_policy(p: &Policy) {
    outln!("unauthorized servers: {}", rule_text(p.unauthorized));
    match p.integrity {
        IntegrityMode::DeviceDigest => outln!("integrity: device-digest"),
        IntegrityMode::CardDigest { max_size } => {
            outln!("integrity: card-digest (payloads up to {max_size} bytes)")
        }
    }
    if p.allowed().is_empty() {
        outln!("allowed classes: any");
    }
    for (v, c) in p.allowed() {
        outln!(
            "allowed: vendor {} class {}",
            uuid::Uuid::from_bytes(*v),
            uuid::Uuid::from_bytes(*c)
        );
    }
}

fn print_info(ci: &CardInfo) {
    outln!("iccid: {}", ci.iccid);
    outln!("imsi: {}", ci.imsi);
    outln!("applet version: {}.{}", ci.version.0, ci.version.1);
    outln!("lifecycle: {}", lifecycle_text(ci.lifecycle));
    match &ci.card_key {
        Some(k) => outln!("card key: {}", hex::encode(k)),
        None => outln!("card key: none"),
    }
    outln!("certificate: {} bytes", ci.certificate.len());
    outln!(
        "log: {} used of {} entries (next seq {}, acknowledged below {}, {} free)",
        ci.log_next - ci.log_acked.min(ci.log_next),
        ci.log_capacity,
        ci.log_next,
        ci.log_acked,
        ci.log_free
    );
    outln!(
        "capacities: {} servers, {} originators, {}-byte commands, {} persistent bytes",
        ci.max_servers,
        ci.max_originators,
        ci.io_capacity,
        ci.persistent_size
    );
    outln!("installed sequence: {}", ci.installed_sequence);
    outln!("trusted time: {}", ci.trusted_time);
    outln!("admin counter: {}", ci.admin_counter);
    outln!("update pending: {}", ci.update_pending);
}

#[cfg(test)]
mod rights_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The short names and the contract's names both parse; every set prints back as the
    /// short names it parses from.
    #[test]
    fn rights_names_round_trip() {
        assert_eq!(
            parse_rights("fw,log_read").unwrap(),
            Rights::FIRMWARE_UPDATE | Rights::LOG_READ
        );
        assert_eq!(parse_rights("all").unwrap(), Rights::ALL);
        assert!(parse_rights("fw,root").is_err());
        for bits in 0..16u8 {
            let r = Rights(bits);
            let text = rights_text(r);
            let back = if text == "none" {
                Rights(0)
            } else {
                parse_rights(&text).unwrap()
            };
            assert_eq!(back, r, "{text}");
        }
    }
}
