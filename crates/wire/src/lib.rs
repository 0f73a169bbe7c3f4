//! simfota's signed objects (placeholder: being written).
#![no_std]
