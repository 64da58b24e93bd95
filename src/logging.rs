//! Logging setup: human-readable lines on stderr, filtered by `--log` or
//! `RUST_LOG`. Colour only on a terminal, never with `NO_COLOR` set: under
//! systemd stderr is journald, where escape codes are noise.
//!
//! Every event is one line: control characters inside a message (a newline
//! in a spec's file name, say) are written escaped, so nothing a user names
//! can forge or split log lines.

use std::io::Write;

use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = wants_colour();
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || OneLinePerEvent {
            keep_escape_codes: colour,
        })
        .with_target(false)
        .with_ansi(colour)
        .try_init();
}

fn wants_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Stderr, with control characters escaped in all but an event's final
/// newline. The formatter hands over each event whole, in one `write`.
struct OneLinePerEvent {
    keep_escape_codes: bool,
}

impl Write for OneLinePerEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = escape_controls(buf, self.keep_escape_codes);
        std::io::stderr().lock().write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn escape_controls(buf: &[u8], keep_escape_codes: bool) -> Vec<u8> {
    let (body, ending) = match buf.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (buf, &b""[..]),
    };
    let mut out = Vec::with_capacity(buf.len());
    for &byte in body {
        match byte {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0x1b if keep_escape_codes => out.push(byte),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{byte:02x}").as_bytes()),
            _ => out.push(byte),
        }
    }
    out.extend_from_slice(ending);
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn an_event_stays_one_line_whatever_its_message_holds() {
        let event = b"job a\nFORGED line\r\x07 \x1b[31m\n";
        assert_eq!(
            escape_controls(event, false),
            b"job a\\nFORGED line\\r\\x07 \\x1b[31m\n"
        );
        assert_eq!(
            escape_controls(event, true),
            b"job a\\nFORGED line\\r\\x07 \x1b[31m\n"
        );
        assert_eq!(escape_controls(b"plain", false), b"plain");
    }
}
