//! Traffic log lines the daemon formats itself: the per-request and per-connection lines go
//! through here rather than through tracing-subscriber's formatter, whose generic field visitor (a `dyn Debug` per
//! field, the timestamp formatted whole each time, styles asked even without colours) was a
//! third of a logged HTTP/2 request's cost (docs/BENCHMARKS.md).
//!
//! Owns [`LineFormat`], the [`Line`] builder, the timestamp cache and the sink the binary
//! [`install`]s. No I/O of its own: a finished line goes to the sink (the daemon's batched
//! stderr writer, `api::logwriter`), so the model names the job and the upper layer does it.
//!
//! Invariants: a line is byte for byte what tracing-subscriber writes for the same event with
//! the daemon's settings: the text format (`2026-12-07T11:38:23.028045Z  INFO target:
//! message key=value key="text"`, a `&str` quoted as `{:?}` does) and the flattened JSON one
//! (`timestamp`, `level`, `message`, the fields, `target`), so a parser of either sees no
//! difference (checked against tracing-subscriber in the tests below), except that the JSON
//! line leaves out the `span` object: a traffic line is written outside any span and carries
//! the connection's fields itself (tracing's `parent: None`). Nothing
//! is installed in a library user's or a test's process: then [`event`] says so and the caller
//! logs through `tracing` as before.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::Level;

/// The two formats of `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// tracing-subscriber's default text format, without colours.
    Text,
    /// tracing-subscriber's JSON format with the event's fields flattened.
    Json,
}

/// What takes a finished line (whole, newline included).
pub type Sink = fn(&[u8]);

/// Where finished lines go: the format and the writer, set once by the binary.
static SINK: OnceLock<(LineFormat, Sink)> = OnceLock::new();

/// Makes traffic lines written directly in `format`, each handed whole to `sink`. Once per
/// process (later calls change nothing): the binary calls it when it sets up logging.
pub fn install(format: LineFormat, sink: Sink) {
    let _ = SINK.set((format, sink));
}

/// Longest a line's buffer stays allocated between lines (a line with a long path grows it).
const KEEP: usize = 4096;

thread_local! {
    /// This thread's line buffer and the formatted second it last wrote: a line is built
    /// without an allocation and without formatting the date again within the same second.
    static SCRATCH: RefCell<(Vec<u8>, Stamp)> = const { RefCell::new((Vec::new(), Stamp::EMPTY)) };
}

/// A second, formatted (`2026-12-07T11:38:23`).
struct Stamp {
    secs: u64,
    text: [u8; 19],
}

impl Stamp {
    const EMPTY: Stamp = Stamp {
        secs: u64::MAX,
        text: [0; 19],
    };

    /// Appends `now` as RFC 3339 in UTC with microseconds, as tracing-subscriber does.
    fn write(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.secs {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(since.as_secs());
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            // `YYYY-MM-DDTHH:MM:SSZ`: the part before the `Z`.
            if let Some(prefix) = text.as_bytes().get(..19) {
                self.text.copy_from_slice(prefix);
                self.secs = since.as_secs();
            }
        }
        out.extend_from_slice(&self.text);
        out.push(b'.');
        push_padded(out, since.subsec_micros(), 6);
        out.push(b'Z');
    }
}

/// One line being built: fields in order, then [`Line::finish`] hands it to the sink.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
    format: LineFormat,
    target: &'static str,
}

/// Builds one line of `level` and `target` with `message` through `fields`, and hands it to
/// the installed sink. False, and nothing done, when none is installed: the caller logs
/// through `tracing`. The caller has asked `tracing::enabled!` for the target and level: the
/// subscriber's filter (`RUST_LOG`) is not consulted here.
pub fn event(
    level: Level,
    target: &'static str,
    message: &'static str,
    fields: impl FnOnce(&mut Line<'_>),
) -> bool {
    let Some(&(format, sink)) = SINK.get() else {
        return false;
    };
    let write = |buf: &mut Vec<u8>, stamp: &mut Stamp| {
        let head = Head {
            level,
            target,
            message,
        };
        let mut line = Line::start(buf, stamp, format, head, SystemTime::now());
        fields(&mut line);
        line.end();
        sink(buf);
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut scratch) => {
            let (buf, stamp) = &mut *scratch;
            buf.clear();
            write(buf, stamp);
            if buf.capacity() > KEEP {
                buf.shrink_to(KEEP);
            }
        }
        // A line logged while this thread builds one (a sink that logs): a buffer of its
        // own, never a lost line.
        Err(_) => {
            let mut stamp = Stamp::EMPTY;
            write(&mut Vec::new(), &mut stamp);
        }
    });
    true
}

/// One line as [`event`] would hand it to the sink, for other modules' tests to compare with
/// what tracing-subscriber writes.
#[cfg(test)]
pub(crate) fn render(
    format: LineFormat,
    level: Level,
    target: &'static str,
    message: &'static str,
    fields: impl FnOnce(&mut Line<'_>),
) -> String {
    let mut out = Vec::new();
    let mut stamp = Stamp::EMPTY;
    let head = Head {
        level,
        target,
        message,
    };
    let mut line = Line::start(&mut out, &mut stamp, format, head, SystemTime::now());
    fields(&mut line);
    line.end();
    String::from_utf8(out).unwrap_or_default()
}

/// What tracing-subscriber, configured as the daemon's binary does (every level on), writes
/// for the events `emit` logs: the reference [`render`] is compared with.
#[cfg(test)]
pub(crate) fn through_subscriber(format: LineFormat, emit: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(bytes);
            }
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let captured = Captured::default();
    let writer = {
        let captured = captured.clone();
        move || captured.clone()
    };
    match format {
        LineFormat::Text => {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(writer)
                .with_ansi(false)
                .with_max_level(Level::TRACE)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
        LineFormat::Json => {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(writer)
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_max_level(Level::TRACE)
                .finish();
            tracing::subscriber::with_default(subscriber, emit);
        }
    }
    let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

/// A line's text after its timestamp (which differs between two runs of the same event).
#[cfg(test)]
pub(crate) fn after_stamp(line: &str) -> &str {
    line.find('Z').map_or(line, |at| &line[at..])
}

/// What every line starts with besides its timestamp.
#[derive(Clone, Copy)]
struct Head {
    level: Level,
    target: &'static str,
    message: &'static str,
}

impl<'a> Line<'a> {
    fn start(
        out: &'a mut Vec<u8>,
        stamp: &mut Stamp,
        format: LineFormat,
        head: Head,
        now: SystemTime,
    ) -> Self {
        match format {
            LineFormat::Text => {
                stamp.write(now, out);
                out.push(b' ');
                out.extend_from_slice(padded(head.level).as_bytes());
                out.push(b' ');
                out.extend_from_slice(head.target.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(head.message.as_bytes());
            }
            LineFormat::Json => {
                out.extend_from_slice(b"{\"timestamp\":\"");
                stamp.write(now, out);
                out.extend_from_slice(b"\",\"level\":\"");
                out.extend_from_slice(head.level.as_str().as_bytes());
                out.extend_from_slice(b"\",\"message\":");
                json_string(out, head.message);
            }
        }
        Line {
            out,
            format,
            target: head.target,
        }
    }

    fn key(&mut self, key: &str) {
        match self.format {
            LineFormat::Text => {
                self.out.push(b' ');
                self.out.extend_from_slice(key.as_bytes());
                self.out.push(b'=');
            }
            LineFormat::Json => {
                self.out.push(b',');
                json_string(self.out, key);
                self.out.push(b':');
            }
        }
    }

    /// A text field (tracing's `key = value` with a `&str`: quoted in the text format).
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        match self.format {
            LineFormat::Text => debug_string(self.out, value),
            LineFormat::Json => json_string(self.out, value),
        }
        self
    }

    /// A text field the client controls: [`escape`]d straight into the line, then quoted
    /// (the same as `.str(key, &escape(value, max))`, without the `String`).
    pub fn escaped(&mut self, key: &str, value: &[u8], max: usize) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        escape_into(self.out, value, max, true);
        self.out.push(b'"');
        self
    }

    /// A text field when there is one; left out otherwise (tracing's `Option` field).
    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        if let Some(value) = value {
            self.str(key, value);
        }
        self
    }

    /// A number field.
    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        push_padded(self.out, value, 1);
        self
    }

    /// A number field when there is one; left out otherwise.
    pub fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.u64(key, value);
        }
        self
    }

    /// An address field (tracing's `key = %addr`: bare in the text format, a string in
    /// JSON); an IPv4 one written without `fmt`. An address's text (digits, `.`, `:`, `[`,
    /// `]`, hex, `%`) never needs escaping.
    pub fn addr(&mut self, key: &str, addr: SocketAddr) -> &mut Self {
        self.key(key);
        let json = self.format == LineFormat::Json;
        if json {
            self.out.push(b'"');
        }
        match addr {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    push_padded(self.out, octet, 1);
                }
                self.out.push(b':');
                push_padded(self.out, v4.port(), 1);
            }
            SocketAddr::V6(_) => {
                let _ = write!(self.out, "{addr}");
            }
        }
        if json {
            self.out.push(b'"');
        }
        self
    }

    fn end(self) {
        match self.format {
            LineFormat::Text => self.out.push(b'\n'),
            LineFormat::Json => {
                self.out.extend_from_slice(b",\"target\":");
                json_string(self.out, self.target);
                self.out.extend_from_slice(b"}\n");
            }
        }
    }
}

/// A level as the text format writes it: right-aligned in five columns.
fn padded(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// `bytes` as printable ASCII, for a log value: every byte outside space..`~`, and `\`,
/// percent-encoded (`%0A`, `%C3%A9`, `%5C`), so the value has no control character, no
/// newline, no invalid UTF-8 and no backslash. A path stays an equivalent form of the request
/// target (RFC 3986 §2.1: any byte may be written percent-encoded). No backslash: the text
/// format's only escape left is `\"`, which every logfmt parser reads, where some (Python's
/// `logfmt`) misread `\\`. Cut after `max` bytes of input, marked with a trailing `…` (never
/// part of an escaped value otherwise, being non-ASCII).
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = Vec::with_capacity(bytes.len().min(max) + 3);
    escape_into(&mut out, bytes, max, false);
    // Printable ASCII and `…` only.
    String::from_utf8(out).unwrap_or_default()
}

/// [`escape`] appended to `out`, with `"` written `\"` when `quoted` (inside a quoted
/// value, which the text format's `{:?}` and JSON escape alike).
fn escape_into(out: &mut Vec<u8>, bytes: &[u8], max: usize, quoted: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let kept = &bytes[..bytes.len().min(max)];
    for &b in kept {
        if (b' '..=b'~').contains(&b) && b != b'\\' {
            if quoted && b == b'"' {
                out.push(b'\\');
            }
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    if bytes.len() > max {
        out.extend_from_slice("…".as_bytes());
    }
}

/// Appends `n` in decimal, zero-padded to at least `width` digits.
fn push_padded(out: &mut Vec<u8>, n: impl Into<u64>, width: usize) {
    let mut n: u64 = n.into();
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 && digits.len() - i >= width {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `s` as `{:?}` writes a `&str` (what tracing's text format does with one). The
/// common case, printable ASCII without `"` or `\`, is copied as it is.
fn debug_string(out: &mut Vec<u8>, s: &str) {
    let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'\\';
    if s.bytes().all(|b| plain(b) && b != b'"') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if s.bytes().all(plain) {
        out.push(b'"');
        for &b in s.as_bytes() {
            if b == b'"' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

fn needs_json_escape(b: u8) -> bool {
    b < b' ' || b == b'"' || b == b'\\'
}

/// Appends `s` as a JSON string (serde_json's escaping).
fn json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().any(needs_json_escape) {
        let _ = serde_json::to_writer(&mut *out, s);
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "mc_proxy::request";
    const HOSTILE: &str = "a\"b\\c\u{7f}é\n\t";

    fn head(level: Level, message: &'static str) -> Head {
        Head {
            level,
            target: TARGET,
            message,
        }
    }

    /// The same event through tracing-subscriber, configured as the daemon's binary does.
    fn through_tracing(
        format: LineFormat,
        level: Level,
        host: &str,
        retries: Option<u64>,
    ) -> String {
        let event = || {
            let addr: SocketAddr = "[::1]:8443".parse().unwrap();
            macro_rules! event {
                ($level:expr) => {
                    tracing::event!(
                        target: TARGET,
                        parent: None,
                        $level,
                        conn = 7u64,
                        listener = %addr,
                        host,
                        backend = None::<&str>,
                        retries,
                        status = 200u16,
                        "request"
                    )
                };
            }
            match level {
                Level::WARN => event!(Level::WARN),
                Level::DEBUG => event!(Level::DEBUG),
                _ => event!(Level::INFO),
            }
        };
        through_subscriber(format, event)
    }

    fn direct(
        format: LineFormat,
        level: Level,
        host: &str,
        retries: Option<u64>,
        now: SystemTime,
    ) -> String {
        let mut out = Vec::new();
        let mut stamp = Stamp::EMPTY;
        let mut line = Line::start(&mut out, &mut stamp, format, head(level, "request"), now);
        let addr: SocketAddr = "[::1]:8443".parse().unwrap();
        line.u64("conn", 7)
            .addr("listener", addr)
            .str("host", host)
            .opt_str("backend", None)
            .opt_u64("retries", retries)
            .u64("status", 200);
        line.end();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_line_is_what_tracing_subscriber_writes_in_both_formats() {
        let cases = [
            (Level::INFO, "web.test", None),
            (Level::INFO, HOSTILE, Some(2)),
            (Level::INFO, "", Some(0)),
            (Level::WARN, "web.test", Some(1)),
            (Level::DEBUG, HOSTILE, None),
        ];
        for format in [LineFormat::Text, LineFormat::Json] {
            for (level, host, retries) in cases {
                let theirs = through_tracing(format, level, host, retries);
                let ours = direct(format, level, host, retries, SystemTime::now());
                assert_eq!(
                    after_stamp(&ours),
                    after_stamp(&theirs),
                    "{format:?} {level}"
                );
                assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1);
            }
        }
    }

    #[test]
    fn the_timestamp_is_rfc3339_with_microseconds_in_utc() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_796_642_303_028_045);
        let line = direct(LineFormat::Text, Level::INFO, "h", None, at);
        assert!(
            line.starts_with("2026-12-07T11:18:23.028045Z  INFO "),
            "{line}"
        );
        // Within the same second the cached date is reused; the next second is new.
        let mut out = Vec::new();
        let mut stamp = Stamp::EMPTY;
        stamp.write(at, &mut out);
        stamp.write(at + std::time::Duration::from_micros(5), &mut out);
        stamp.write(at + std::time::Duration::from_secs(1), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-12-07T11:18:23.028045Z2026-12-07T11:18:23.028050Z2026-12-07T11:18:24.028045Z"
        );
        let json = direct(LineFormat::Json, Level::INFO, "h", None, UNIX_EPOCH);
        assert!(
            json.starts_with("{\"timestamp\":\"1970-01-01T00:00:00.000000Z\""),
            "{json}"
        );
    }

    #[test]
    fn printable_ascii_is_kept_as_it_is() {
        assert_eq!(escape(b"/a b?c=\"d\"&e='f'", 100), "/a b?c=\"d\"&e='f'");
    }

    #[test]
    fn control_bytes_backslash_and_non_ascii_are_percent_encoded() {
        assert_eq!(escape(b"a\nb\r\t\x00\x7f", 100), "a%0Ab%0D%09%00%7F");
        assert_eq!(escape(b"\\x41", 100), "%5Cx41");
        assert_eq!(escape(b"\xff\xfe", 100), "%FF%FE");
        assert_eq!(escape("é".as_bytes(), 100), "%C3%A9");
        // What the client percent-encoded itself stays as it was.
        assert_eq!(escape(b"/a%20b", 100), "/a%20b");
    }

    #[test]
    fn long_values_are_cut_and_marked() {
        let long = vec![b'x'; 5000];
        let out = escape(&long, 1024);
        assert_eq!(out.len(), 1024 + '…'.len_utf8());
        assert!(out.ends_with("x…"));
        assert_eq!(escape(b"abc", 3), "abc");
    }

    #[test]
    fn the_output_is_printable_ascii_without_backslash_whatever_the_input() {
        let all: Vec<u8> = (0..=255).collect();
        let out = escape(&all, 1000);
        assert!(
            out.bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'\\'),
            "{out}"
        );
    }

    #[test]
    fn an_escaped_field_is_the_escaped_text_as_a_str_field() {
        let hostile: Vec<u8> = (0..=255u8).chain(*b"\"q\"").collect();
        for format in [LineFormat::Text, LineFormat::Json] {
            for max in [3, 1000] {
                let ours = render(format, Level::INFO, TARGET, "m", |line| {
                    line.escaped("path", &hostile, max);
                });
                let via_str = render(format, Level::INFO, TARGET, "m", |line| {
                    line.str("path", &escape(&hostile, max));
                });
                assert_eq!(after_stamp(&ours), after_stamp(&via_str));
            }
        }
    }

    #[test]
    fn an_address_is_written_as_its_display() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:8443",
            "255.255.255.255:65535",
            "10.20.3.4:80",
            "[::1]:443",
            "[2001:db8::1%3]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            for format in [LineFormat::Text, LineFormat::Json] {
                let out = render(format, Level::INFO, TARGET, "m", |line| {
                    line.addr("client", addr);
                });
                let field = match format {
                    LineFormat::Text => format!(" client={addr}\n"),
                    LineFormat::Json => format!(",\"client\":\"{addr}\",\"target\""),
                };
                assert!(out.contains(&field), "{out} lacks {field}");
            }
        }
    }

    #[test]
    fn numbers_are_written_whole() {
        for (n, width, text) in [
            (0u64, 1, "0"),
            (7, 1, "7"),
            (12_345, 6, "012345"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            push_padded(&mut out, n, width);
            assert_eq!(out, text.as_bytes());
        }
    }
}
