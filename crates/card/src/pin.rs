//! PIN and PUK (ISO/IEC 7816-4 §7.5.6 VERIFY, §7.5.7 CHANGE REFERENCE DATA, §7.5.10 RESET
//! RETRY COUNTER).
//!
//! Reference data is 8 bytes: 4 to 8 ASCII digits padded with `FF`, the UICC format of
//! ETSI TS 102 221 §9.5.1. The try counter is decremented and committed BEFORE the comparison,
//! so cutting the power after a wrong guess cannot save a try (the classic tearing attack on
//! PIN counters); the comparison is constant-time; a match restores the counter in a second
//! transaction.

use subtle::ConstantTimeEq;

use crate::CardError;
use crate::layout::{Persist, PinSlot};
use crate::store::Store;

/// Length of a PIN/PUK block on the wire.
pub const PIN_LEN: usize = 8;

/// Checks the format of an 8-byte PIN block: 4-8 ASCII digits then `FF` padding.
pub fn valid_pin_block(b: &[u8]) -> bool {
    if b.len() != PIN_LEN {
        return false;
    }
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    digits >= 4 && b[digits..].iter().all(|&c| c == 0xFF)
}

/// Verifies `candidate` against a PIN/PUK slot.
///
/// Order (tearing-safe): check the block's format (no try spent on a block that cannot be
/// any PIN: `6A80`) → read counter → refuse if zero → decrement and COMMIT → compare in
/// constant time → on match, restore the counter and commit.
pub fn verify<S: Store>(
    p: &mut Persist<S>,
    slot: PinSlot,
    candidate: &[u8],
) -> Result<(), CardError> {
    if candidate.len() != PIN_LEN {
        return Err(CardError::WrongLength);
    }
    // The format says nothing about the reference (every reference has it), so checking it
    // first leaks nothing (ISO/IEC 7816-4 §5.6: `6A80`, wrong data).
    if !valid_pin_block(candidate) {
        return Err(CardError::WrongData("PIN block: 4-8 digits padded with FF"));
    }
    let left = p.pin_tries(slot)?;
    if left == 0 {
        return Err(CardError::Blocked);
    }
    p.transaction(|p| p.set_pin_tries(slot, left - 1))?;
    let reference = p.pin_value(slot)?;
    let same: bool = reference.ct_eq(candidate).into();
    if !same {
        return Err(CardError::WrongPin(left - 1));
    }
    let max = p.pin_max(slot)?;
    p.transaction(|p| p.set_pin_tries(slot, max))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_block_format() {
        assert!(valid_pin_block(b"1234\xFF\xFF\xFF\xFF"));
        assert!(valid_pin_block(b"12345678"));
        assert!(!valid_pin_block(b"123\xFF\xFF\xFF\xFF\xFF"));
        assert!(!valid_pin_block(b"1234\xFF\xFF\xFF1"));
        assert!(!valid_pin_block(b"1234"));
    }
}
