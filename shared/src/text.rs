//! Bounded echoes of untrusted text in messages.
//!
//! No I/O. An error message that repeats what a client sent must stay short whatever was sent:
//! a 1 MB hostname must not become a 1 MB gRPC status (clients reject oversized statuses, and a
//! person cannot read one anyway). [`clip`] quotes and escapes a value and cuts it after a
//! fixed number of characters, saying how long it really was.

/// Characters of an echoed value kept in a message.
pub const ECHO_CHARS: usize = 64;

/// `value` quoted and escaped as `{:?}` does, cut after [`ECHO_CHARS`] characters with
/// `…` and the full length in bytes: `"aaaa…" (1000000 bytes)`.
pub fn clip(value: &str) -> String {
    match value.char_indices().nth(ECHO_CHARS) {
        None => format!("{value:?}"),
        Some((end, _)) => {
            let shown = format!("{:?}", &value[..end]);
            // Put the ellipsis inside the quotes: it is part of the value that was cut.
            let inner = shown.strip_suffix('"').unwrap_or(&shown);
            format!("{inner}…\" ({} bytes)", value.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(clip("app.test"), "\"app.test\"");
        assert_eq!(clip("a\"b\n"), "\"a\\\"b\\n\"");
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        let long = "x".repeat(1_000_000);
        let shown = clip(&long);
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.starts_with(&format!("\"{}", "x".repeat(ECHO_CHARS))));
        assert!(shown.ends_with("…\" (1000000 bytes)"), "{shown}");
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        let long = "é".repeat(ECHO_CHARS + 10);
        let shown = clip(&long);
        assert!(shown.contains(&"é".repeat(ECHO_CHARS)));
        assert!(!shown.contains(&"é".repeat(ECHO_CHARS + 1)));
    }
}
