#![no_main]

use libfuzzer_sys::fuzz_target;
use mc_proxy::sni::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Complete(hello)) = parse(data) {
        assert!(hello.len <= data.len(), "ClientHello longer than its input");
    }
});
