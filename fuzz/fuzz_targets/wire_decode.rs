//! Every decoder of the signed objects on arbitrary bytes: errors are fine, panics are not.
//! The first byte picks the decoder; the rest is the input. Signatures are not checked here
//! (the inputs are not signed); what is fuzzed is the CBOR/COSE parsing in front of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simfota_wire::suit::Envelope;
use simfota_wire::{
    AdminCommand, CardCertificate, CoseSign1, DeliveryToken, Limits, LogAck, LogEntry,
    LogReadRequest, Policy, Receipt,
};

#[global_allocator]
static ALLOC: simfota_fuzz::BoundedAlloc = simfota_fuzz::BoundedAlloc::new(16 << 20);

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    match which % 10 {
        0 => {
            let _ = Envelope::decode(bytes, &limits);
        }
        1 => {
            let _ = DeliveryToken::decode(bytes, &limits);
        }
        2 => {
            let _ = CardCertificate::decode(bytes, &limits);
        }
        3 => {
            let _ = Policy::decode(bytes, &limits);
        }
        4 => {
            let _ = Receipt::decode(bytes, &limits);
        }
        5 => {
            let _ = LogAck::decode(bytes, &limits);
        }
        6 => {
            let _ = LogReadRequest::decode(bytes, &limits);
        }
        7 => {
            let _ = AdminCommand::decode(bytes, &limits);
        }
        8 => {
            let _ = LogEntry::decode(bytes);
        }
        _ => {
            let _ = CoseSign1::decode(bytes, &limits);
        }
    }
});
