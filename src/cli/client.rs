//! The HTTP side of the client subcommands (`jobs`, `show`, `submit`,
//! `retune`, `rm`, `lr`): where the daemon is, its token, one request with
//! explicit timeouts, and every failure turned into one readable line with
//! its exit code.
//!
//! - The daemon is `--url` (or `BATCHD_URL`), else `http://` + the
//!   configuration's `listen` (an all-addresses listen is reached on
//!   loopback).
//! - The token is read from `--token-file` (or `BATCHD_TOKEN_FILE`), else
//!   from the configuration's `api_token_file` when that is readable and
//!   the daemon is the configuration's own (no `--url`) or on loopback: a
//!   token is never sent to another host unless named with `--token-file`.
//!   It is one line of printable ASCII, at most 4 KiB, and is sent as
//!   `Authorization: Bearer` with the state-changing requests (POST,
//!   DELETE) only, the ones the daemon checks it on.
//! - A daemon that cannot be reached (refused, unknown host, timed out) is
//!   exit 69 ([`CliError::Unreachable`]); a request it refuses is one line
//!   from its problem document, exit 64 for an invalid spec (422) and 1
//!   otherwise.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
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
/// The largest token file read; a token is one short line.
const MAX_TOKEN: u64 = 4096;

/// A connection's settings: where the daemon is, and the token.
pub struct Client {
    base: String,
    token: Option<String>,
    /// Why no token came from the configuration's `api_token_file`, when
    /// that says something a 401 should be explained with.
    token_hint: Option<String>,
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
        let mut token_hint = None;
        let token = match (&args.token_file, config.api_token_file.as_deref()) {
            (Some(path), _) => {
                Some(read_token(path).map_err(|e| {
                    CliError::Usage(format!("--token-file {}: {e}", path.display()))
                })?)
            }
            (None, Some(path)) if may_send_config_token(args.url.is_some(), &base) => {
                match read_token(path) {
                    Ok(token) => Some(token),
                    Err(e) if e.missing => None,
                    Err(e) => {
                        token_hint = Some(format!(
                            "could not read the configured api_token_file {}: {e}; pass --token-file",
                            path.display()
                        ));
                        None
                    }
                }
            }
            (None, Some(_)) => {
                token_hint = Some(
                    "the configured api_token_file is sent only to the configuration's own or a loopback address; pass --token-file"
                        .to_string(),
                );
                None
            }
            (None, None) => None,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(READ_TIMEOUT)
            .timeout_write(READ_TIMEOUT)
            .redirects(0)
            .user_agent(concat!("batchd/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client {
            base,
            token,
            token_hint,
            agent,
        })
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
        // The daemon checks the token on state-changing requests only: a
        // read does not carry it.
        let changes_state = matches!(method, "POST" | "DELETE");
        if let Some(token) = self.token.as_ref().filter(|_| changes_state) {
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
                let mut line = problem_line(status, &body);
                if status == 401 && changes_state && self.token.is_none() {
                    if let Some(hint) = &self.token_hint {
                        line.push_str(&format!(" ({})", one_line(hint, 500)));
                    }
                }
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
        // A bad header's message is the header line, which may be the
        // `Authorization` one with the token: only its kind is shown.
        if error.kind() != ureq::ErrorKind::BadHeader {
            if let Some(message) = error.message() {
                detail.push_str(&format!(": {message}"));
            }
            if let Some(source) = std::error::Error::source(error) {
                detail.push_str(&format!(": {source}"));
            }
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

/// Whether the configuration's `api_token_file` may be sent to the daemon
/// at `base` (a URL as [`base_url`] gives it): to the configuration's own
/// address (`explicit_url` false), or to one on this machine. A `--url`
/// elsewhere gets a token only from `--token-file`.
fn may_send_config_token(explicit_url: bool, base: &str) -> bool {
    !explicit_url || is_loopback_url(base)
}

/// Whether an `http://` URL's host is a loopback one: 127.0.0.0/8, ::1 or
/// `localhost`. The URL is read by the parser the request itself uses, so
/// user information, backslashes, percent-encoding and short IPv4 forms
/// name the host they will reach; a URL it cannot read is not loopback.
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = ureq::request("GET", url).request_url() else {
        return false;
    };
    let host = parsed.host();
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a token file gave no token. Its text never holds the token.
#[derive(Debug)]
struct TokenError {
    /// The file is not there (which, for the configuration's, is no news).
    missing: bool,
    detail: String,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// The token in a file: at most 4 KiB, surrounding whitespace stripped,
/// one non-empty run of printable ASCII (0x21..=0x7E) — anything else
/// could not travel in a header, and the error about it would show it.
fn read_token(path: &Path) -> Result<String, TokenError> {
    let fail = |detail: String| TokenError {
        missing: false,
        detail,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_TOKEN + 1).read_to_end(&mut bytes))
        .map_err(|e| TokenError {
            missing: e.kind() == std::io::ErrorKind::NotFound,
            detail: e.to_string(),
        })?;
    if bytes.len() as u64 > MAX_TOKEN {
        return Err(fail(format!(
            "the file is larger than {} KiB; a token is one short line",
            MAX_TOKEN / 1024
        )));
    }
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(fail("the file is empty".to_string()));
    }
    if let Some(at) = token.iter().position(|b| !(0x21..=0x7E).contains(b)) {
        return Err(fail(format!(
            "the token has a space, control or non-ASCII byte at offset {at}; a token is one line of printable ASCII"
        )));
    }
    Ok(String::from_utf8_lossy(token).into_owned())
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

    #[test]
    fn the_configured_token_goes_only_to_the_configured_or_a_loopback_daemon() {
        // No --url: the configuration's own listen address, wherever it is.
        assert!(may_send_config_token(false, "http://10.0.0.5:8477"));
        assert!(may_send_config_token(false, "http://127.0.0.1:8477"));
        // --url on this machine.
        for url in [
            "http://127.0.0.1:8477",
            "http://127.1.2.3:8477",
            "http://localhost:8477",
            "http://LOCALHOST",
            "http://[::1]:8477",
            "http://[::1]",
            "http://127.0.0.1:8477/prefix",
        ] {
            assert!(may_send_config_token(true, url), "{url}");
        }
        // --url elsewhere.
        for url in [
            "http://10.0.0.5:8477",
            "http://example.com:8477",
            "http://localhost.example.com:8477",
            "http://127.0.0.1.example.com",
            "http://127.0.0.1@evil.example:8477",
            "http://[::2]:8477",
            "http://[::ffff:10.0.0.1]:8477",
            "http://0.0.0.0:8477",
            "http://[::1",
            "http://evil.example\\@127.0.0.1:8477",
            "http://evil.example%40127.0.0.1:8477",
        ] {
            assert!(!may_send_config_token(true, url), "{url}");
        }
        // The userinfo is no host.
        assert!(!is_loopback_url("http://evil.example@:80"));
        assert!(is_loopback_url("http://user@127.0.0.1:80"));
        assert!(is_loopback_url("http://127.1:80"));
        assert!(is_loopback_url("http://%6cocalhost:80"));
    }

    #[test]
    fn a_token_is_one_line_of_printable_ascii_and_no_error_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-Token_1\r\n").unwrap();
        assert_eq!(read_token(&file).unwrap(), "s3cret-Token_1");
        for bad in [
            &b"s3cret\nsecond"[..],
            b"s3cret second",
            b"s3cret\x7fx",
            "s3cr\u{e9}t".as_bytes(),
            b"s3cret\x00",
        ] {
            std::fs::write(&file, bad).unwrap();
            let error = read_token(&file).unwrap_err();
            assert!(!error.missing);
            assert!(!error.to_string().contains("s3cr"), "{error}");
        }
        std::fs::write(&file, " \n").unwrap();
        assert!(read_token(&file).unwrap_err().to_string().contains("empty"));
        std::fs::write(&file, "x".repeat(4097)).unwrap();
        let error = read_token(&file).unwrap_err();
        assert!(error.to_string().contains("4 KiB"), "{error}");
        assert!(!error.to_string().contains("xxxx"), "{error}");
        std::fs::write(&file, "x".repeat(4096)).unwrap();
        assert_eq!(read_token(&file).unwrap().len(), 4096);
        assert!(read_token(&dir.path().join("missing")).unwrap_err().missing);
    }
}
