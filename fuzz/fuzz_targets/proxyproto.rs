#![no_main]

use libfuzzer_sys::fuzz_target;
use mc_proxy_wire::proxy_protocol::{MAX_HEADER_LEN, Parsed, parse};

// run.sh builds with -Cdebug-assertions, so the parser's own postconditions (a Complete
// header owns exactly its declared bytes) are checked on every input too.
fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    match &verdict {
        Ok(Parsed::Complete(h)) => {
            assert!(h.len <= data.len(), "header longer than its input");
            assert!(h.len <= MAX_HEADER_LEN, "header over the 536-byte cap");
            assert_eq!(
                parse(&data[..h.len]),
                verdict,
                "bytes after the header mattered"
            );
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_HEADER_LEN, "Incomplete past the cap");
        }
        Err(_) => {}
    }
});
