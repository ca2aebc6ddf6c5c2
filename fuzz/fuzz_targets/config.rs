#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| stategate_fuzz::config(data));
