//! The HTTP side of the client subcommands (`jobs`, `show`, `submit`,
//! `retune`, `rm`, `lr`): where the daemon is, its token, one request with
//! explicit timeouts, and every failure turned into one readable line with
//! its exit code.
//!
//! - The daemon is `--url` (or `BATCHD_URL`), else `http://` + the
//!   configuration's `listen` (an all-addresses listen is reached on
//!   loopback).
//! - The token is read from `--token-file` (or `BATCHD_TOKEN_FILE`), else
//!   from the configuration's `api_token_file` when that is readable; it is
//!   sent as `Authorization: Bearer`.
//! - A daemon that cannot be reached (refused, unknown host, timed out) is
//!   exit 69 ([`CliError::Unreachable`]); a request it refuses is one line
//!   from its problem document, exit 64 for an invalid spec (422) and 1
//!   otherwise.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use batchd::config::Config;

use super::{invalid, Cli, CliError, ClientArgs};

/// Time to open the connection: a daemon on this machine or the LAN
/// answers far sooner; more means it is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for the daemon's answer (a recommendation is read from memory).
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read; a recommendation is far smaller.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// A connection's settings: where the daemon is, and the token.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// The client for a subcommand's `--url` and `--token-file`, with the
    /// configuration (`--config`) supplying what they leave out.
    pub fn new(cli: &Cli, args: &ClientArgs) -> Result<Client, CliError> {
        let needs_config = args.url.is_none() || args.token_file.is_none();
        let config = if needs_config {
            configuration(cli)?
        } else {
            Config::default()
        };
        let base = match &args.url {
            Some(url) => base_url(url)?,
            None => default_url(config.listen),
        };
        let token = match &args.token_file {
            Some(path) => Some(read_token(path).map_err(CliError::Usage)?),
            None => config
                .api_token_file
                .as_deref()
                .and_then(|path| read_token(path).ok()),
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout_write(READ_TIMEOUT)
            .redirects(0)
            .user_agent(concat!("batchd/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { base, token, agent })
    }

    /// The daemon's address, as requests use it.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The body of a successful `GET path`.
    pub fn get(&self, path: &str) -> Result<String, CliError> {
        self.send("GET", path, None)
    }

    /// The body of a successful `POST path`, with a body of `content_type`.
    pub fn post(&self, path: &str, body: Option<(&str, &[u8])>) -> Result<String, CliError> {
        self.send("POST", path, body)
    }

    /// The body of a successful `DELETE path` (empty on 204).
    pub fn delete(&self, path: &str) -> Result<String, CliError> {
        self.send("DELETE", path, None)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<String, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .agent
            .request(method, &url)
            .set("Accept", "application/json, application/problem+json");
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let outcome = match body {
            Some((content_type, bytes)) => {
                request.set("Content-Type", content_type).send_bytes(bytes)
            }
            None if method == "POST" => request.send_bytes(&[]),
            None => request.call(),
        };
        match outcome {
            Ok(response) if response.status() >= 300 => {
                let status = response.status();
                let body = read_body(response).unwrap_or_default();
                Err(CliError::Refused(problem_line(status, &body)))
            }
            Ok(response) => read_body(response).map_err(|e| {
                CliError::Unreachable(format!(
                    "the daemon at {} stopped answering: {e}",
                    self.base
                ))
            }),
            Err(ureq::Error::Status(status, response)) => {
                let body = read_body(response).unwrap_or_default();
                let line = problem_line(status, &body);
                Err(if status == 422 {
                    CliError::Invalid(line)
                } else {
                    CliError::Refused(line)
                })
            }
            Err(ureq::Error::Transport(error)) => Err(self.unreachable(&error)),
        }
    }

    fn unreachable(&self, error: &ureq::Transport) -> CliError {
        let mut detail = error.kind().to_string();
        if let Some(message) = error.message() {
            detail.push_str(&format!(": {message}"));
        }
        if let Some(source) = std::error::Error::source(error) {
            detail.push_str(&format!(": {source}"));
        }
        let detail = one_line(&detail, 300);
        if matches!(
            error.kind(),
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme
        ) {
            return CliError::Usage(format!("--url {}: {detail}", self.base));
        }
        CliError::Unreachable(format!(
            "cannot reach the daemon at {}: {detail} (is `batchd serve` running there? --url or BATCHD_URL names another address)",
            self.base
        ))
    }
}

/// The configuration for the client's defaults. One named with `--config`
/// (or `BATCHD_CONFIG`) must load; the system's default file, perhaps not
/// readable by this user, is skipped when it does not.
fn configuration(cli: &Cli) -> Result<Config, CliError> {
    match Config::load(cli.config.as_deref()) {
        Ok(config) => Ok(config),
        Err(error) if cli.config.is_some() => Err(invalid(&[error])),
        Err(_) => Ok(Config::default()),
    }
}

/// `--url`, checked: `http://host:port` (a bare `host:port` gets the
/// scheme), without a trailing slash. There is no TLS: a daemon behind an
/// HTTPS proxy is out of this client's reach.
fn base_url(url: &str) -> Result<String, CliError> {
    let url = url.trim();
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(CliError::Usage(format!(
            "--url {url}: only http:// URLs are supported"
        )));
    };
    if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
        return Err(CliError::Usage(format!("--url {url}: no host")));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The address a client on this machine reaches a daemon listening on
/// `listen` at.
fn default_url(listen: SocketAddr) -> String {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match listen {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{address}")
}

/// The token in a file, trimmed; empty is an error.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!(
            "--token-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(token.to_string())
}

fn read_body(response: ureq::Response) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A refused request as one line: `STATUS TITLE: DETAIL`, or with field
/// errors `STATUS TITLE: N errors: FIELD: MESSAGE; ...`. A body that is no
/// problem document is shown shortened, on one line.
pub fn problem_line(status: u16, body: &str) -> String {
    let problem = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .filter(serde_json::Value::is_object);
    let Some(problem) = problem else {
        let text = one_line(body.trim(), 200);
        return if text.is_empty() {
            format!("{status} {}", reason(status))
        } else {
            format!("{status} {}: {text}", reason(status))
        };
    };
    let text = |key: &str| problem.get(key).and_then(|v| v.as_str()).unwrap_or("");
    let title = match text("title") {
        "" => reason(status),
        title => title,
    };
    let errors: Vec<String> = problem
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    let field = e.get("field").and_then(|v| v.as_str()).unwrap_or("");
                    let message = e.get("message").and_then(|v| v.as_str()).unwrap_or("");
                    if field.is_empty() {
                        message.to_string()
                    } else {
                        format!("{field}: {message}")
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let detail = match errors.len() {
        0 => text("detail").to_string(),
        1 => errors[0].clone(),
        n => format!("{n} errors: {}", errors.join("; ")),
    };
    let line = if detail.is_empty() || detail == title {
        format!("{status} {title}")
    } else {
        format!("{status} {title}: {detail}")
    };
    one_line(&line, 2000)
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// `text` on one line of at most `limit` characters: control characters
/// escaped (a job name is a file name, and may hold anything), the rest
/// cut with an ellipsis.
pub fn one_line(text: &str, limit: usize) -> String {
    let mut out = String::new();
    for (count, c) in text.chars().enumerate() {
        if count >= limit {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One path segment (a job name), percent-encoded.
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The content type a spec file is posted with, from its extension.
pub fn content_type_of(path: &Path) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "toml" => Some("application/toml"),
        "json" => Some("application/json"),
        "yaml" | "yml" => Some("application/yaml"),
        _ => None,
    }
}

/// A spec file's bytes, for `submit`.
pub fn read_spec(path: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::Other(anyhow::anyhow!("{}: cannot read: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_document_reads_as_one_line() {
        let body = r#"{"type":"about:blank","title":"Invalid job spec","status":422,
            "detail":"spec:\n  a\n  b","errors":[{"field":"search.max_batch","message":"must be > 0"},
            {"field":"optimizer.kind","message":"unknown value `adamm`"}]}"#;
        assert_eq!(
            problem_line(422, body),
            "422 Invalid job spec: 2 errors: search.max_batch: must be > 0; optimizer.kind: unknown value `adamm`"
        );
        let body = r#"{"title":"No such job","status":404,"detail":"no job named `x`"}"#;
        assert_eq!(problem_line(404, body), "404 No such job: no job named `x`");
        assert_eq!(
            problem_line(502, "<html>\n<b>bad gateway</b>\n</html>"),
            "502 Bad Gateway: <html>\\n<b>bad gateway</b>\\n</html>"
        );
        assert_eq!(problem_line(500, ""), "500 Internal Server Error");
        assert_eq!(problem_line(418, "[1,2]"), "418 Error: [1,2]");
        let long = "x".repeat(5000);
        assert!(problem_line(500, &long).chars().count() < 250);
    }

    #[test]
    fn names_are_encoded_and_urls_checked() {
        assert_eq!(segment("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(segment("mlp-synthetic_2.v1"), "mlp-synthetic_2.v1");
        assert_eq!(segment("é"), "%C3%A9");
        assert_eq!(
            base_url("localhost:8477/").unwrap(),
            "http://localhost:8477"
        );
        assert_eq!(
            base_url("http://10.0.0.5:8477").unwrap(),
            "http://10.0.0.5:8477"
        );
        assert!(matches!(base_url("https://x"), Err(CliError::Usage(_))));
        assert!(matches!(base_url("http://"), Err(CliError::Usage(_))));
        assert_eq!(
            default_url("0.0.0.0:8477".parse().unwrap()),
            "http://127.0.0.1:8477"
        );
        assert_eq!(
            default_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000"
        );
        assert_eq!(
            default_url("127.0.0.1:8477".parse().unwrap()),
            "http://127.0.0.1:8477"
        );
        assert_eq!(
            content_type_of(Path::new("a.YML")),
            Some("application/yaml")
        );
        assert_eq!(content_type_of(Path::new("a.txt")), None);
        assert_eq!(one_line("a\x1b[31mb", 10), "a\\u{1b}[31mb");
    }
}
