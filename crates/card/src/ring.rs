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
    LOG_CAPACITY, O_LOG, O_LOG_ACKED, O_LOG_HEAD, O_LOG_NEXT, O_UNVERIFIED_UPDATES, Persist,
    RECORD_LEN,
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
        // Saturating: a corrupt image must not make the applet panic.
        self.next.saturating_sub(self.acked)
    }

    /// Slots that may receive a new entry.
    pub fn free(&self) -> u32 {
        (LOG_CAPACITY as u32).saturating_sub(self.unacked())
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

/// Replaces the newest record (an open refusal tally) and the chain head, inside a
/// transaction. Its predecessor's link is unchanged; nothing follows it yet, so no link
/// breaks. Only a record no export has shown may be replaced (the caller seals it first).
pub(crate) fn replace_newest<S: Store>(
    p: &mut Persist<S>,
    st: &LogState,
    record: &[u8; RECORD_LEN],
    hash: &[u8; 32],
) -> Result<(), CardError> {
    let newest = st
        .next
        .checked_sub(1)
        .ok_or(CardError::Internal("no record to replace"))?;
    p.write(slot(newest), record)?;
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
    // Every entry is stored by a server: the updates through unlisted servers it holds no
    // longer count against their budget (docs/card.md, the log).
    if upto == st.next && p.u8_at(O_UNVERIFIED_UPDATES)? != 0 {
        p.put_u8(O_UNVERIFIED_UPDATES, 0)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::PERSISTENT_SIZE;
    use crate::store::MemStore;

    fn record(b: u8) -> [u8; RECORD_LEN] {
        [b; RECORD_LEN]
    }

    #[test]
    fn ring_reuses_only_acknowledged_slots() {
        let mut p = Persist::new(MemStore::<PERSISTENT_SIZE>::new());
        for i in 0..LOG_CAPACITY as u32 {
            p.transaction(|p| {
                let st = state(p)?;
                append(p, &st, &record(i as u8), &[i as u8; 32])
            })
            .unwrap();
        }
        let st = state(&p).unwrap();
        assert_eq!((st.next, st.free(), st.head), (64, 0, [63; 32]));
        let full = p.transaction(|p| {
            let st = state(p)?;
            append(p, &st, &record(0xEE), &[0xEE; 32])
        });
        assert_eq!(full, Err(CardError::Refused(crate::Reason::LogFull)));
        assert_eq!(
            p.transaction(|p| acknowledge(p, 65)),
            Err(CardError::Refused(crate::Reason::AckBeyondLog))
        );
        p.transaction(|p| acknowledge(p, 10)).unwrap();
        // Acknowledgements never move back.
        p.transaction(|p| acknowledge(p, 3)).unwrap();
        assert_eq!(state(&p).unwrap().free(), 10);
        p.transaction(|p| {
            let st = state(p)?;
            append(p, &st, &record(0xAB), &[0xAB; 32])
        })
        .unwrap();
        let mut out = [0u8; RECORD_LEN];
        read(&p, 64, &mut out).unwrap();
        assert_eq!(out, record(0xAB));
        // Entry 0's slot now holds entry 64; entry 1 is still readable.
        assert_eq!(read(&p, 0, &mut out), Err(CardError::NotFound));
        read(&p, 1, &mut out).unwrap();
        assert_eq!(out, record(1));
        assert_eq!(read(&p, 65, &mut out), Err(CardError::NotFound));
    }
}
