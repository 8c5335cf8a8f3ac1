#![no_main]

use libfuzzer_sys::fuzz_target;
use mc_proxy_wire::client_hello::{MAX_HELLO_LEN, Parsed, Scanner, parse};

// run.sh builds with -Cdebug-assertions, so the parser's own postconditions (a Complete
// hello's records are exactly its declared lengths) are checked on every input too.
fuzz_target!(|data: &[u8]| {
    let verdict = parse(data);
    match &verdict {
        Ok(Parsed::Complete(hello)) => {
            assert!(hello.len <= data.len(), "ClientHello longer than its input");
            assert_eq!(
                parse(&data[..hello.len]),
                verdict,
                "bytes after the hello mattered"
            );
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() <= MAX_HELLO_LEN, "Incomplete past the cap");
        }
        Err(_) => {}
    }
    // The resumable scanner, fed the same bytes in two steps, agrees with parse.
    let mut scanner = Scanner::new();
    let _ = scanner.feed(&data[..data.len() / 2]);
    assert_eq!(scanner.feed(data), verdict, "Scanner disagrees with parse");
});
