//! Fuzz target `tfserving_response`: see harness.rs.
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::tfserving_response(data));
