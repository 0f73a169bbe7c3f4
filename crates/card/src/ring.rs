//! The log ring: `LOG_CAPACITY` fixed-size records, slot = seq mod capacity. Two counters
//! and the chain head describe it:
//! - `next`: the sequence number the next entry gets (entries `0..next` were written);
//! - `acked`: every entry below it is stored by an authorized server (acknowledged);
//! - `head`: the hash of entry `next - 1` (all zeros before the first entry).
//!
//! A slot may be reused only when its entry is acknowledged, so the card never drops an
//! entry no server has stored: `free = capacity - (next - acked)`, and when `free` is zero
//! (or below what an update in progress has reserved) new events are refused (`LogFull`).

use crate::CardError;
use crate::layout::{
    LOG_CAPACITY, O_LOG, O_LOG_ACKED, O_LOG_HEAD, O_LOG_NEXT, Persist, RECORD_LEN,
};
use crate::store::Store;

/// A snapshot of the ring's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogState {
    /// Sequence number of the next entry.
    pub next: u32,
    /// Every entry below this one is acknowledged.
    pub acked: u32,
    /// Hash of the newest entry (zeros when the log is empty).
    pub head: [u8; 32],
}

impl LogState {
    /// Entries not yet acknowledged.
    pub fn unacked(&self) -> u32 {
        self.next - self.acked
    }

    /// Slots that may receive a new entry.
    pub fn free(&self) -> u32 {
        LOG_CAPACITY as u32 - self.unacked()
    }

    /// The oldest entry still in its slot (acknowledged entries stay readable until reused).
    pub fn oldest(&self) -> u32 {
        self.next.saturating_sub(LOG_CAPACITY as u32)
    }
}

pub(crate) fn state<S: Store>(p: &Persist<S>) -> Result<LogState, CardError> {
    let mut head = [0u8; 32];
    p.read(O_LOG_HEAD, &mut head)?;
    Ok(LogState {
        next: p.u32_at(O_LOG_NEXT)?,
        acked: p.u32_at(O_LOG_ACKED)?,
        head,
    })
}

fn slot(seq: u32) -> usize {
    O_LOG + (seq as usize % LOG_CAPACITY) * RECORD_LEN
}

/// Appends a record whose chain hash is `hash` (inside a transaction). The caller built the
/// record with `seq = state.next` and `prev = state.head` and checked the free space.
pub(crate) fn append<S: Store>(
    p: &mut Persist<S>,
    st: &LogState,
    record: &[u8; RECORD_LEN],
    hash: &[u8; 32],
) -> Result<(), CardError> {
    if st.free() == 0 {
        return Err(CardError::Refused(crate::Reason::LogFull));
    }
    p.write(slot(st.next), record)?;
    p.put_u32(O_LOG_NEXT, st.next + 1)?;
    p.write(O_LOG_HEAD, hash)?;
    Ok(())
}

/// Reads the record with sequence number `seq`, if it is still in its slot.
pub(crate) fn read<S: Store>(
    p: &Persist<S>,
    seq: u32,
    out: &mut [u8; RECORD_LEN],
) -> Result<(), CardError> {
    let st = state(p)?;
    if seq >= st.next || seq < st.oldest() {
        return Err(CardError::NotFound);
    }
    p.read(slot(seq), out)?;
    Ok(())
}

/// Marks every entry below `upto` as acknowledged (inside a transaction). Never moves back.
pub(crate) fn acknowledge<S: Store>(p: &mut Persist<S>, upto: u32) -> Result<(), CardError> {
    let st = state(p)?;
    if upto > st.next {
        return Err(CardError::Refused(crate::Reason::AckBeyondLog));
    }
    if upto > st.acked {
        p.put_u32(O_LOG_ACKED, upto)?;
    }
    Ok(())
}
