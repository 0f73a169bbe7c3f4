//! What the server is waiting for in a DM session: every command it queues is recorded with
//! the answer it expects ([`Expect`]), so each Results or Status is dispatched on what its
//! command was for, by one function per kind of answer (`super::answers`).

use serde::{Deserialize, Serialize};
use simfota_syncml::StatusCode as DmStatus;
use simfota_syncml::session::CommandHandle;

/// This module's progress in one session, stored with the protocol session between messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flow {
    /// No authenticated message yet: nothing was asked of the device.
    #[default]
    New,
    /// The session's first requests are queued; answers are matched to them.
    Open(Open),
}

/// An open session: the commands still awaiting their answer, and the card-log pages read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// Awaited answers, by the handle of the command that asked. A session queues a bounded
    /// number of commands (its Gets, at most [`crate::cardlog::MAX_PAGES_PER_SESSION`] pages,
    /// one delivery), and an answered command leaves the list.
    awaiting: Vec<(CommandHandle, Expect)>,
    /// Card-log export pages accepted in this session.
    pub log_pages: u32,
    /// Whether the session's card (by the applet version its Card Info states) takes a log
    /// acknowledgement bound to the page it answers; `false` in sessions stored before.
    #[serde(default)]
    pub page_bound_acks: bool,
    /// The log-read request awaiting its page ([`Expect::LogPage`]); `None` in sessions stored
    /// when requests were kept in `log_requests`.
    #[serde(default)]
    pub log_request: Option<crate::cardlog::SentRequest>,
}

/// What the answer to one queued command means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// Get `./DevDetail/FwV`: the firmware version.
    FirmwareVersion,
    /// Get of the card's info: ICCID and card certificate.
    CardInfo,
    /// Get of one of the card's lists, shown to the operator as last read.
    CardList(CardList),
    /// Get of `./FUMO/fw/State` while `job` is delivered and awaits its result: idle means the
    /// device no longer holds it.
    FumoState {
        /// The delivered job.
        job: i64,
    },
    /// Get of a fresh card nonce, for the purpose given.
    CardNonce(NonceUse),
    /// Get of the card's answer to a relayed issuer command (`admin_queue` row id).
    AdminResult {
        /// The queued command.
        command: i64,
    },
    /// Get of the card's answer to a log-read request: one export page.
    LogPage,
    /// Status of the Replace of a log acknowledgement.
    LogAck {
        /// The newest entry it acknowledges.
        up_to: u32,
    },
    /// Status of the FUMO Exec that delivers a job.
    Delivery(Delivery),
}

/// The card lists a session reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardList {
    /// Authorized DM servers.
    Servers,
    /// Policy for unauthorized servers.
    Policy,
    /// Trusted software originators.
    Originators,
}

/// What a card nonce is for (the card holds one nonce at a time, so each use Gets its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NonceUse {
    /// The delivery token of this job.
    Deliver {
        /// The job.
        job: i64,
    },
    /// A signed log-read request.
    RequestLogPage,
    /// A signed acknowledgement of the entries up to `up_to`; `more` when the next page
    /// is read in this session (a card whose acknowledgement is bound to the page's own nonce
    /// needs none for it).
    Acknowledge {
        /// The newest entry stored.
        up_to: u32,
        /// Whether a further page is requested after the acknowledgement.
        more: bool,
    },
}

/// A job whose token and Exec are on their way to the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The job.
    pub job: i64,
    /// The token's `cti`.
    pub update_id: Vec<u8>,
    /// The token as sent.
    pub token: Vec<u8>,
}

impl Expect {
    /// Whether the answer comes as Results (a Get) rather than as a Status alone.
    fn is_get(&self) -> bool {
        !matches!(self, Self::LogAck { .. } | Self::Delivery(_))
    }
}

impl Flow {
    /// Opens the flow; `false` when it was open already (only the first authenticated
    /// message of a session queues the session's requests).
    pub fn open(&mut self) -> bool {
        match self {
            Self::New => {
                *self = Self::Open(Open::default());
                true
            }
            Self::Open(_) => false,
        }
    }

    /// The open flow, if any.
    pub fn as_open(&mut self) -> Option<&mut Open> {
        match self {
            Self::New => None,
            Self::Open(o) => Some(o),
        }
    }

    /// Records that `handle` awaits `what`. Commands are queued only once the flow is open.
    pub fn expect(&mut self, handle: CommandHandle, what: Expect) {
        if let Some(o) = self.as_open() {
            o.awaiting.push((handle, what));
        }
    }

    /// The expectation a Results answers, taken off the list: each Get is answered once.
    pub fn take_results(&mut self, handle: CommandHandle) -> Option<Expect> {
        let o = self.as_open()?;
        let i = o
            .awaiting
            .iter()
            .position(|(h, e)| *h == handle && e.is_get())?;
        Some(o.awaiting.remove(i).1)
    }

    /// The expectation a Status answers. A Replace or Exec is taken with its outcome; a Get
    /// stays awaiting its Results unless its Status failed (no Results follow then).
    pub fn take_status(&mut self, handle: CommandHandle, code: DmStatus) -> Option<Expect> {
        let o = self.as_open()?;
        let i = o.awaiting.iter().position(|(h, _)| *h == handle)?;
        if o.awaiting[i].1.is_get() && code.is_success() {
            return None;
        }
        Some(o.awaiting.remove(i).1)
    }

    /// How many answers are still awaited.
    #[cfg(test)]
    pub fn awaiting(&self) -> usize {
        match self {
            Self::New => 0,
            Self::Open(o) => o.awaiting.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_with(entries: &[(u32, Expect)]) -> Flow {
        let mut f = Flow::default();
        assert!(f.open());
        for (h, e) in entries {
            f.expect(CommandHandle(*h), e.clone());
        }
        f
    }

    #[test]
    fn nothing_is_awaited_before_the_flow_opens() {
        let mut f = Flow::default();
        f.expect(CommandHandle(1), Expect::CardInfo);
        assert_eq!(f.awaiting(), 0);
        assert_eq!(f.take_results(CommandHandle(1)), None);
        assert!(f.open());
        assert!(!f.open(), "a flow opens once");
    }

    #[test]
    fn a_get_is_answered_once_by_its_results() {
        let mut f = open_with(&[(3, Expect::CardInfo), (4, Expect::FirmwareVersion)]);
        // Its 200 Status leaves it awaiting the Results.
        assert_eq!(f.take_status(CommandHandle(3), DmStatus::OK), None);
        assert_eq!(f.take_results(CommandHandle(3)), Some(Expect::CardInfo));
        assert_eq!(f.take_results(CommandHandle(3)), None, "answered already");
        assert_eq!(f.awaiting(), 1);
    }

    #[test]
    fn a_failed_get_is_dropped_by_its_status() {
        let mut f = open_with(&[(5, Expect::CardList(CardList::Policy))]);
        assert_eq!(
            f.take_status(CommandHandle(5), DmStatus::NOT_FOUND),
            Some(Expect::CardList(CardList::Policy))
        );
        assert_eq!(f.awaiting(), 0);
    }

    #[test]
    fn results_never_answer_a_replace_or_an_exec() {
        let d = Expect::Delivery(Delivery {
            job: 7,
            update_id: vec![1; 16],
            token: vec![2; 8],
        });
        let ack = Expect::LogAck { up_to: 4 };
        let mut f = open_with(&[(8, d.clone()), (9, ack.clone())]);
        assert_eq!(f.take_results(CommandHandle(8)), None);
        assert_eq!(f.take_results(CommandHandle(9)), None);
        assert_eq!(
            f.take_status(CommandHandle(8), DmStatus::ACCEPTED_FOR_PROCESSING),
            Some(d)
        );
        assert_eq!(f.take_status(CommandHandle(9), DmStatus::OK), Some(ack));
    }

    #[test]
    fn a_session_stored_before_page_bound_acks_acknowledges_on_fresh_nonces() {
        let stored = r#"{"Open":{"awaiting":[[3,{"LogAck":{"up_to":5}}]],"log_pages":1}}"#;
        let mut f: Flow = serde_json::from_str(stored).unwrap();
        assert!(!f.as_open().unwrap().page_bound_acks);
        assert_eq!(
            f.take_status(CommandHandle(3), DmStatus::OK),
            Some(Expect::LogAck { up_to: 5 })
        );
    }

    #[test]
    fn the_flow_survives_its_stored_form() {
        let f = open_with(&[
            (
                1,
                Expect::CardNonce(NonceUse::Acknowledge {
                    up_to: 9,
                    more: true,
                }),
            ),
            (2, Expect::AdminResult { command: 12 }),
        ]);
        let json = serde_json::to_vec(&f).unwrap();
        assert_eq!(serde_json::from_slice::<Flow>(&json).unwrap(), f);
    }

    #[test]
    fn the_outstanding_log_request_is_kept_with_the_session() {
        let mut f = open_with(&[(4, Expect::LogPage)]);
        let sent = crate::cardlog::SentRequest {
            nonce: vec![9; 16],
            first_seq: 17,
        };
        f.as_open().unwrap().log_request = Some(sent.clone());
        let json = serde_json::to_vec(&f).unwrap();
        let mut back: Flow = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.as_open().unwrap().log_request, Some(sent));
        // A session stored when requests were kept in `log_requests` has none.
        let stored = r#"{"Open":{"awaiting":[[4,"LogPage"]],"log_pages":0}}"#;
        let mut old: Flow = serde_json::from_str(stored).unwrap();
        assert_eq!(old.as_open().unwrap().log_request, None);
        assert_eq!(old.take_results(CommandHandle(4)), Some(Expect::LogPage));
    }
}
