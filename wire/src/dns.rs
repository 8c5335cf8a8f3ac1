//! DNS-name normalisation: the one definition of "a hostname we can route on", shared by the
//! ClientHello parser (the SNI `host_name`), route validation and backend-address checks in the
//! daemon, so a name that parses off the wire can match a configured route.
//!
//! No I/O. Invariants: a returned name is lowercase ASCII, has no trailing dot, is at most
//! [`MAX_NAME_LEN`] bytes in labels of 1 to [`MAX_LABEL_LEN`] bytes (RFC 1035 §2.3.4), and is
//! never an IPv4 literal; normalising an already normalised name returns it unchanged.

/// Longest DNS name, without the trailing dot (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Lowercases `name`, strips one trailing dot and checks that what remains is a DNS name:
/// ASCII labels of 1 to 63 letters, digits, `-` or `_` (not starting or ending with `-`),
/// at most 253 bytes in all, the last label not all digits. Returns `None` for anything else
/// (spaces, NUL, non-ASCII, empty labels, a `*`, an IPv4 literal such as `1.2.3.4` or `127.1`).
///
/// `_` is allowed because real service names carry it (`_acme-challenge`, SRV-style hosts)
/// and matching on it is harmless; everything a resolver could not look up is not. No real
/// top-level domain is numeric, so an all-digit last label can only be an address.
pub fn normalize_dns_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    (valid && !numeric_tld).then(|| name.to_ascii_lowercase())
}

/// Normalises a route hostname: an exact DNS name or `*.` followed by one (see
/// [`normalize_dns_name`]). Returns `None` if it is neither.
pub fn normalize_route_hostname(hostname: &str) -> Option<String> {
    match hostname.strip_prefix("*.") {
        Some(rest) => normalize_dns_name(rest).map(|rest| format!("*.{rest}")),
        None => normalize_dns_name(hostname),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn dns_names_are_lowercased_and_lose_one_trailing_dot() {
        assert_eq!(normalize_dns_name("App.Test.").as_deref(), Some("app.test"));
        assert_eq!(normalize_dns_name("app.test..").as_deref(), None);
        assert_eq!(
            normalize_dns_name("_acme.x-y.test").as_deref(),
            Some("_acme.x-y.test")
        );
    }

    #[test]
    fn non_dns_bytes_are_rejected() {
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "a\0b",
            "é.test",
            "-a.test",
            "a-.test",
            "*.test",
            "a/b",
            "1.2.3.4",
            "127.1",
            &"a".repeat(64),
            &format!("{}.test", "a.".repeat(125)),
        ] {
            assert_eq!(normalize_dns_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn route_hostnames_allow_one_leading_wildcard_only() {
        assert_eq!(
            normalize_route_hostname("*.Example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(normalize_route_hostname("a.*.example.com"), None);
        assert_eq!(normalize_route_hostname("*"), None);
        assert_eq!(normalize_route_hostname("**.example.com"), None);
    }

    proptest! {
        #[test]
        fn normalising_is_idempotent_and_keeps_the_invariants(name in "[A-Za-z0-9._*-]{0,80}\\.?") {
            if let Some(norm) = normalize_dns_name(&name) {
                prop_assert!(norm.len() <= MAX_NAME_LEN);
                prop_assert!(!norm.ends_with('.'));
                prop_assert!(!norm.bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert_eq!(normalize_dns_name(&norm), Some(norm.clone()));
            }
        }
    }
}
