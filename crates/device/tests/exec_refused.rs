//! One update at a time (docs/dm-tree.md, FUMO `DownloadAndUpdate` step 1): while the device
//! holds an unfinished job, a new Exec of `DownloadAndUpdate` is answered `425 Permission
//! denied` and the running job stays whole. Against the real DM server on loopback with the
//! in-process card: the first update's result waits for the card (the card is removed right
//! after the install), a second campaign starts, and the server's next delivery meets the
//! unfinished job. The server must end up with both results, each with its own verified
//! receipt, and the device on the second firmware.

// Test fixtures: a failure in a helper is a test failure.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::content;
use common::real_server::RealServer;
use simfota_cardlink::channel::{Capabilities, Transmit};
use simfota_cardlink::{
    CardClient, Channel, FileCard, InProcessChannel, LinkError, ResetKind, Response,
};
use simfota_device::agent::Agent;
use simfota_device::fumo::Stage;
use simfota_device::prompt::{PromptChoice, StandardPrompter};
use simfota_device::slots::{SlotStore, StandardBootCheck};

/// The in-process card in a slot the test can empty: while `present` is false every exchange
/// fails as a removed card does; put back, it comes up from a cold reset (RAM state lost).
struct Removable {
    inner: InProcessChannel<FileCard>,
    present: Arc<AtomicBool>,
    was_removed: bool,
}

impl Removable {
    fn check(&mut self) -> Result<(), LinkError> {
        if self.present.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.was_removed = true;
        Err(LinkError::CardRemoved {
            reader: "test slot".into(),
        })
    }
}

impl Channel for Removable {
    fn exchange(
        &mut self,
        f: &mut dyn FnMut(&mut dyn Transmit) -> Result<Response, LinkError>,
    ) -> Result<Response, LinkError> {
        self.check()?;
        if std::mem::take(&mut self.was_removed) {
            self.inner.reset(ResetKind::Cold)?;
        }
        self.inner.exchange(f)
    }

    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, LinkError> {
        self.check()?;
        self.inner.reset(kind)
    }

    fn reconnect(&mut self) -> Result<Vec<u8>, LinkError> {
        self.check()?;
        self.was_removed = false;
        self.inner.reset(ResetKind::Cold)
    }

    fn atr(&self) -> &[u8] {
        self.inner.atr()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> &str {
        "test slot"
    }
}

#[test]
fn an_exec_during_an_unfinished_update_is_refused_425_and_both_results_reach_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = RealServer::start(d);
    let state = d.join("CARD.state");
    server.personalize_card(&state);
    server.publish_update();
    let dcfg = server.device_config(d, &format!("state = \"{}\"", state.display()));

    let present = Arc::new(AtomicBool::new(true));
    let card = Removable {
        inner: InProcessChannel::new(FileCard::open(&state).unwrap(), "in-process"),
        present: present.clone(),
        was_removed: false,
    };
    let said = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = said.clone();
    let pull = present.clone();
    let mut agent = Agent {
        cfg: dcfg.clone(),
        card: Arc::new(Mutex::new(CardClient::new(card))),
        prompter: Box::new(StandardPrompter::unattended(PromptChoice::default())),
        boot_check: Box::new(StandardBootCheck),
        progress: false,
        say: Box::new(move |s: &str| {
            // The card is pulled once firmware 2.0 is installed, before the result reaches it.
            if s.starts_with("installed 2.0") {
                pull.store(false, Ordering::SeqCst);
            }
            sink.lock().unwrap().push(s.to_owned());
        }),
    };

    // Update 1: installed and booted, but its result waits for the card.
    let outcome = agent.check_update().unwrap();
    let log = said.lock().unwrap().clone();
    let job = outcome.update.expect("the server started update 1");
    assert!(
        matches!(job.stage, Stage::Finished { result: 200, .. }),
        "{:?} {log:?}",
        job.stage
    );
    assert_eq!(outcome.reported, None, "{log:?}");
    let running = |dcfg: &simfota_device::config::DeviceConfig| {
        SlotStore::open(dcfg.data().slots())
            .unwrap()
            .active_version()
            .unwrap()
            .to_owned()
    };
    assert_eq!(running(&dcfg), "2.0");
    let rec = server.device_record();
    assert_eq!(rec["jobs"].as_array().unwrap().len(), 1, "{rec}");
    assert_eq!(rec["jobs"][0]["state"], "delivered", "{rec}");

    // A second campaign: the server's next session delivers it while update 1 is unfinished.
    server.publish(&content(180_000, 3), "2.1", 3, "c2");
    present.store(true, Ordering::SeqCst);
    said.lock().unwrap().clear();
    let outcome = agent.check_update().unwrap();
    let log = said.lock().unwrap().clone();
    assert!(outcome.exec_refused, "{log:?}");
    assert!(
        log.iter().any(|s| s.contains("refused (425)")),
        "the Exec met the unfinished update: {log:?}"
    );
    // Update 1's result went to the card and the server first, then update 2 ran.
    let first_report = log
        .iter()
        .position(|s| s.contains("the server took the update result 200"))
        .unwrap_or_else(|| panic!("{log:?}"));
    let second_start = log
        .iter()
        .position(|s| s.contains("the server started a firmware update"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(first_report < second_start, "{log:?}");
    assert_eq!(outcome.reported, Some((200, true)), "{log:?}");
    assert_eq!(running(&dcfg), "2.1");

    // The server: two jobs, each succeeded with its own verified receipt.
    let rec = server.device_record();
    let jobs = rec["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{rec}");
    for job in jobs {
        assert_eq!(job["state"], "succeeded", "{rec}");
        assert_eq!(job["result_code"], 200, "{rec}");
        assert_eq!(job["receipt_status"], "verified", "{rec}");
    }
    assert_ne!(jobs[0]["update_id"], jobs[1]["update_id"], "{rec}");
    assert_eq!(rec["device"]["fw_version"], "2.1", "{rec}");
    server.shutdown();
}
