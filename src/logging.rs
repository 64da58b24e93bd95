//! Logging setup: one event per line on stderr, filtered by `--log` or
//! `RUST_LOG`, in one of two formats ([`LogFormat`], `--log-format` or the
//! configuration's `log_format`):
//!
//! - `text` (the default), for people: colour only on a terminal, never
//!   with `NO_COLOR` set (under systemd stderr is journald, where escape
//!   codes are noise). Control characters inside a message (a newline in a
//!   spec's file name, say) are written escaped, so nothing a user names
//!   can forge or split log lines.
//! - `json`, for machines: one JSON object per line with `timestamp`,
//!   `level`, `target`, `message` and the event's fields at the top level.
//!   Events about a job carry its name in a `job` field ([`JOB_FIELD`]).
//!   JSON escaping keeps every event on one line by itself.
//!
//! Job events also name the job in their message (`job NAME: ...`), so the
//! text format leaves the `job` field out rather than print it twice.

use std::io::Write;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// The field that names the job an event is about.
pub const JOB_FIELD: &str = "job";

/// How log events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Installs the global subscriber; a second call (tests) keeps the first.
pub fn init(default_filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => {
            let colour = wants_colour();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .fmt_fields(tracing_subscriber::fmt::format::debug_fn(text_field))
                .with_writer(move || OneLinePerEvent {
                    keep_escape_codes: colour,
                })
                .with_target(false)
                .with_ansi(colour)
                .try_init();
        }
        LogFormat::Json => {
            // The formatter writes each event whole, in one `write`.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}

/// One field of a text line: the message as it is, the job (named in the
/// message already) not at all, any other field as ` name=value`.
fn text_field(
    writer: &mut tracing_subscriber::fmt::format::Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    match field.name() {
        "message" => write!(writer, "{value:?}"),
        JOB_FIELD => Ok(()),
        name => write!(writer, " {name}={value:?}"),
    }
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
    use super::{escape_controls, LogFormat};

    #[test]
    fn the_format_reads_and_writes_as_its_lowercase_name() {
        #[derive(serde::Deserialize)]
        struct Holder {
            f: LogFormat,
        }
        let json: Holder = toml::from_str("f = \"json\"").unwrap();
        assert_eq!(json.f, LogFormat::Json);
        assert!(toml::from_str::<Holder>("f = \"xml\"").is_err());
        assert_eq!(LogFormat::default().to_string(), "text");
    }

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
