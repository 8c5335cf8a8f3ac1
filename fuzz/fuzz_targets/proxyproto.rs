#![no_main]

use libfuzzer_sys::fuzz_target;
use mc_proxy::proxyproto::{MAX_HEADER_LEN, Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete(h)) = parse(data) {
        assert!(h.len <= data.len(), "header longer than its input");
        assert!(h.len <= MAX_HEADER_LEN, "header over the 536-byte cap");
    }
});
