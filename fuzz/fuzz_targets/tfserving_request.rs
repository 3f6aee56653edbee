//! Fuzz target `tfserving_request`: see harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::tfserving_request(data));
