//! The simfota card applet (placeholder: being written).
#![no_std]
