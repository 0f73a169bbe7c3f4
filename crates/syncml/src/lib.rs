//! OMA DM 1.2 protocol core (placeholder: being written).
