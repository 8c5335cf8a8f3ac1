//! Natural ordering of names: `svc2` before `svc10`, as an operator reads them.
//!
//! No I/O, no state. Invariant: a total order consistent with equality (ties on the numeric
//! value, as in `svc02` and `svc2`, fall back to plain string order).

use std::cmp::Ordering;

/// Compares `a` and `b` with runs of ASCII digits compared as numbers, case-insensitively
/// elsewhere.
pub fn natural(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let n = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let m = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (p, q) = (trim_zeros(&x[..n]), trim_zeros(&y[..m]));
                let ord = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[n..];
                y = &y[m..];
            }
            (Some(c), Some(d)) => {
                let ord = c.to_ascii_lowercase().cmp(&d.to_ascii_lowercase());
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|c| **c == b'0').count();
    &digits[zeros..]
}

/// Route order for the name sort: exact names first, then wildcards (the daemon's precedence),
/// each group in natural order.
pub fn route_name(a: &str, b: &str) -> Ordering {
    (a.starts_with('*'))
        .cmp(&b.starts_with('*'))
        .then_with(|| natural(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_sort_by_value() {
        let mut v = vec![
            "svc10.test",
            "svc2.test",
            "svc1.test",
            "*.test",
            "api.test",
            "svc02.test",
        ];
        v.sort_by(|a, b| route_name(a, b));
        assert_eq!(
            v,
            [
                "api.test",
                "svc1.test",
                "svc02.test",
                "svc2.test",
                "svc10.test",
                "*.test"
            ]
        );
        assert_eq!(
            natural("a99999999999999999999999b", "a100000000000000000000000b"),
            Ordering::Less
        );
        assert_eq!(natural("x", "x"), Ordering::Equal);
    }
}
