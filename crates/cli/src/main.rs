//! The `simfota` command (placeholder: being written).
fn main() {}
