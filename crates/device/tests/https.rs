//! HTTPS towards a private CA: the real DM server in process serves TLS with a certificate of
//! a CA made for the test (openssl command line). The device trusts it only through
//! `ca_file`; without it, or for a certificate naming another host, the connection is
//! refused with the certificate problem named: no DM session takes place, and a package
//! download refused that way ends the update with FUMO 503 (docs/dm-tree.md, "How every update
//! ends").

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::real_server::{RealServer, TlsSetup};
use simfota_cardlink::{CardClient, FileCard, InProcessChannel};
use simfota_device::agent::{Agent, AgentError, SessionOutcome};
use simfota_device::config::DeviceConfig;
use simfota_device::dm::DmError;
use simfota_device::download::TlsProblem;
use simfota_device::fumo::Stage;
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};
use simfota_server::config::TlsFiles;

/// Runs `openssl` in `dir`; `None` when the tool is missing (and allowed to be).
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(())
        }
        Err(e) => {
            if std::env::var("SIMFOTA_SKIP_EXTERNAL").as_deref() != Ok("1") {
                panic!(
                    "openssl is required (set SIMFOTA_SKIP_EXTERNAL=1 to skip instead) but cannot run: {e}"
                );
            }
            println!("skipped: the openssl command line is not available ({e})");
            None
        }
    }
}

/// A CA (`ca.pem`) and a server certificate it signed for the names `san`
/// (`DNS:localhost,IP:127.0.0.1`): `<name>.pem` (leaf then CA, as servers send chains) and
/// `<name>.key`. P-256 keys, valid for two days.
fn certificates(dir: &Path, name: &str, san: &str) -> Option<TlsFiles> {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=simfota test operator CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
    }
    let ext = format!(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName={san}\n"
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (key, csr, leaf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.leaf.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=simfota test DM server",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &leaf,
        ],
    )?;
    let chain = [
        std::fs::read_to_string(dir.join(&leaf)).unwrap(),
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join(format!("{name}.pem")), chain).unwrap();
    Some(TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(key),
    })
}

/// A personalized card, the device registered and an update campaign running on `server`;
/// the device's configuration (no `ca_file` yet) and its card state file.
fn set_up(server: &RealServer, d: &Path) -> (DeviceConfig, PathBuf) {
    let state = d.join("CARD.state");
    server.personalize_card(&state);
    server.publish_update();
    let dcfg = server.device_config(d, &format!("state = \"{}\"", state.display()));
    (dcfg, state)
}

/// One check-update with the in-process card; what the agent said comes back too.
fn check_update(
    dcfg: &DeviceConfig,
    state: &Path,
) -> (Result<SessionOutcome, AgentError>, Vec<String>) {
    let said = Arc::new(Mutex::new(Vec::new()));
    let sink = said.clone();
    let card = CardClient::new(InProcessChannel::new(
        FileCard::open(state).unwrap(),
        "in-process",
    ));
    let mut agent = Agent {
        cfg: dcfg.clone(),
        card: Arc::new(Mutex::new(card)),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| sink.lock().unwrap().push(s.to_owned())),
    };
    let result = agent.check_update();
    let said = said.lock().unwrap().clone();
    (result, said)
}

/// The certificate of the test CA is refused (unknown issuer) until the device trusts the CA
/// with `ca_file`; then the update goes through over HTTPS, receipt verified.
#[test]
fn https_needs_the_private_ca_and_then_updates() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(files) = certificates(d, "server", "DNS:localhost,IP:127.0.0.1") else {
        return;
    };
    let server = RealServer::start_with_tls(
        d,
        Some(TlsSetup {
            files,
            ca: d.join("ca.pem"),
            host: "127.0.0.1".into(),
        }),
    );
    let (mut dcfg, state) = set_up(&server, d);
    assert!(dcfg.server_url.starts_with("https://127.0.0.1:"));

    // The system's CA bundle only: refused, no DM session (nothing answered, nothing saved).
    let (result, said) = check_update(&dcfg, &state);
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Dm(DmError::Tls {
                problem: TlsProblem::UnknownIssuer,
                ..
            })
        ),
        "{err:?} {said:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach the DM server at {}/dm securely: ",
            dcfg.server_url
        )) && text.contains("the server's certificate is not signed by a trusted CA")
            && text.contains("ca_file"),
        "{text}"
    );
    assert!(!dcfg.data().dm_state().exists(), "a DM session took place");
    assert_eq!(server.device_record()["jobs"][0]["state"], "pending");

    // With the CA: the whole update over HTTPS (DM and package download), result 200, the
    // card's receipt verified by the server.
    dcfg.ca_file = Some(d.join("ca.pem"));
    server.check_update_succeeds(
        &dcfg,
        CardClient::new(InProcessChannel::new(
            FileCard::open(&state).unwrap(),
            "in-process",
        )),
    );
    server.shutdown();
}

/// A certificate for `localhost` only: the DM server reached as 127.0.0.1 is refused (wrong
/// host name, no session); reached as localhost the session runs, but the package URL the
/// server gives (https://127.0.0.1:...) is refused: the update ends with 503, reported.
#[test]
fn https_refuses_a_certificate_for_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(files) = certificates(d, "server", "DNS:localhost") else {
        return;
    };
    let server = RealServer::start_with_tls(
        d,
        Some(TlsSetup {
            files,
            ca: d.join("ca.pem"),
            host: "localhost".into(),
        }),
    );
    let (mut dcfg, state) = set_up(&server, d);
    dcfg.ca_file = Some(d.join("ca.pem"));
    let by_name = dcfg.server_url.clone();
    assert!(by_name.starts_with("https://localhost:"));

    dcfg.server_url = by_name.replace("localhost", "127.0.0.1");
    let (result, said) = check_update(&dcfg, &state);
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            AgentError::Dm(DmError::Tls {
                problem: TlsProblem::WrongHost { .. },
                ..
            })
        ),
        "{err:?} {said:?}"
    );
    let text = err.to_string();
    assert!(
        text.ends_with(
            "the server's certificate is not valid for the host name 127.0.0.1 \
             (it is for localhost)"
        ),
        "{text}"
    );
    assert!(!dcfg.data().dm_state().exists(), "a DM session took place");

    dcfg.server_url = by_name;
    let (result, said) = check_update(&dcfg, &state);
    let outcome = result.unwrap();
    let job = outcome.update.expect("the server started the update");
    match &job.stage {
        Stage::Reported {
            result, message, ..
        } => {
            assert_eq!(*result, 503, "{message}");
            assert!(
                message.contains("securely")
                    && message.contains("not valid for the host name 127.0.0.1"),
                "{message}"
            );
        }
        other => panic!("{other:?} {said:?}"),
    }
    assert_eq!(outcome.reported, Some((503, true)), "{said:?}");
    let rec = server.device_record();
    assert_eq!(rec["jobs"][0]["result_code"], 503, "{rec}");
    assert_eq!(
        SlotStore::open(dcfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap(),
        "1.0"
    );
    server.shutdown();
}
