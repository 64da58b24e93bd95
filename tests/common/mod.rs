//! Helpers shared by the integration tests that drive `batchd serve`.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// An outside program a test needs (Prometheus, promtool,
/// systemd-analyze). Missing on a user's machine, the test is skipped with a
/// visible note; missing in CI (`CI=true`), the test fails.
pub fn outside_program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} is not installed; CI must run this test (.ci/run installs it)"
        );
        eprintln!("skipped: {name} not installed");
    }
    found
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(jobs: &Path, state: &Path, port: u16) -> Daemon {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml");
        Daemon::start_with(jobs, state, port, &config)
    }

    pub fn start_with(jobs: &Path, state: &Path, port: u16, config: &Path) -> Daemon {
        Daemon::start_with_env(jobs, state, port, config, &[])
    }

    /// Starts `batchd serve` on `port`; port 0 lets the daemon bind any free
    /// port (no race with other tests), read back from its log.
    pub fn start_with_env(
        jobs: &Path,
        state: &Path,
        port: u16,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchd"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("BATCHD_CONFIG", config)
            .envs(env.iter().copied())
            .args(["serve", "--jobs-dir"])
            .arg(jobs)
            .arg("--state-dir")
            .arg(state)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("batchd serve starts");
        let port = bound_port(child.stderr.take().unwrap());
        let daemon = Daemon { child, port };
        daemon.wait_for(Duration::from_secs(30), |d| d.get("/readyz").0 == 200);
        daemon
    }

    /// `(status, body)` of a GET.
    pub fn get(&self, path: &str) -> (u16, String) {
        self.send("GET", path, "", "", None)
    }

    /// `(status, body)` of a request to the daemon; see [`http`].
    pub fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        http(self.port, method, path, content_type, body, token)
    }

    pub fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path);
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn wait_for(&self, limit: Duration, mut ready: impl FnMut(&Daemon) -> bool) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if ready(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("condition not met within {limit:?}");
    }

    pub fn job_state(&self, name: &str) -> String {
        self.json(&format!("/v1/jobs/{name}")).1["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "batchd did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(status, body)` of an HTTP/1.1 request to a loopback port, with an
/// optional body (and content type) and bearer token. Status 0 means no
/// answer.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = http_with_head(port, method, path, content_type, body, token);
    (status, body)
}

/// [`http`], with the answer's head (status line and headers) as well.
pub fn http_with_head(
    port: u16,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut headers = String::new();
    if !content_type.is_empty() {
        headers.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if let Some(token) = token {
        headers.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new(), String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// Joins an HTTP/1.1 chunked body (Prometheus answers this way).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Metric names in a Prometheus text exposition.
pub fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A daemon with one finished tiny job (`tiny`), for the metrics tests.
pub fn daemon_with_a_tuned_job(root: &Path, env: &[(&str, &str)]) -> Daemon {
    let jobs = root.join("jobs");
    let state = root.join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml");
    drop_spec(&jobs, "tiny.toml", TINY);
    let daemon = Daemon::start_with_env(&jobs, &state, 0, &config, env);
    daemon.wait_for(Duration::from_secs(150), |d| d.job_state("tiny") == "done");
    daemon
}

/// The port a daemon says it listens on (its log's "listening on" line);
/// the rest of its log is drained so the daemon never blocks on it.
fn bound_port(stderr: std::process::ChildStderr) -> u16 {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sender = Some(sender);
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(address) = line.split("listening on http://").nth(1) {
                if let Some(port) = address
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    if let Some(sender) = sender.take() {
                        let _ = sender.send(port);
                    }
                }
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon says where it listens")
}

/// `(pid, command line)` of every process on the machine, the command
/// line's NULs as spaces (for tests that look for what a trial left).
pub fn processes() -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// A port free now, for tests that must know it before the daemon starts
/// (a restart on the same port, a Prometheus configuration).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub const TINY: &str = r#"
[model]
kind = "mlp"
input_size = 16
hidden = [32]
classes = 4
[data]
kind = "synthetic"
samples = 2048
[optimizer]
kind = "adam"
[search]
max_batch = 2048
memory_limit = "512MiB"
time_budget = "90s"
"#;

/// Writes a file the way careful tools do: a temporary name, then a rename.
pub fn drop_spec(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.partial"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

/// Checks a job's HTML report against its recommendation (the JSON the
/// API serves): the six charts are there, charts with evidence to show
/// are not empty, no SVG holds NaN, and the trials table has every trial.
pub fn check_report(name: &str, html: &str, rec: &serde_json::Value) {
    assert!(
        html.starts_with("<!doctype html>"),
        "{name}: not an HTML page"
    );
    let svgs: Vec<&str> = html
        .split("<svg")
        .skip(1)
        .map(|rest| rest.split("</svg>").next().unwrap_or(""))
        .collect();
    assert_eq!(
        svgs.len(),
        7,
        "{name}: expected 7 charts, found {}",
        svgs.len()
    );
    let chart = |id: &str| -> &str {
        svgs.iter()
            .find(|s| s.contains(&format!("id=\"chart-{id}\"")))
            .unwrap_or_else(|| panic!("{name}: no {id} chart"))
    };
    for svg in &svgs {
        assert!(!svg.contains("NaN"), "{name}: NaN in a chart");
        assert!(!svg.contains("inf\""), "{name}: infinity in a chart");
    }
    let has_data = |id: &str| !chart(id).contains("class=\"chart-empty\"");
    assert!(has_data("memory"), "{name}: empty memory chart");
    assert!(has_data("throughput"), "{name}: empty throughput chart");
    let non_empty = |field: &str| {
        rec.pointer(field)
            .and_then(|v| v.as_array())
            .is_some_and(|a| !a.is_empty())
    };
    if non_empty("/evidence/lr_range_tests") || non_empty("/evidence/lr_confirmations") {
        assert!(has_data("lr"), "{name}: LR data but an empty LR chart");
    }
    if non_empty("/throughput/goodput_curve") {
        assert!(has_data("goodput"), "{name}: empty goodput chart");
    }
    if non_empty("/evidence/lr_confirmations") {
        assert!(has_data("training"), "{name}: empty training-curve chart");
    }
    if rec["evidence"]["race"]["entries"]
        .as_array()
        .is_some_and(|e| {
            e.iter()
                .any(|e| e["runs"].as_array().is_some_and(|r| !r.is_empty()))
        })
    {
        assert!(has_data("race"), "{name}: a race but an empty race chart");
    }
    // The batch ramp: its phases or the noise points it was derived from.
    if non_empty("/batch_schedule/phases") || non_empty("/batch_schedule/points") {
        assert!(
            has_data("ramp"),
            "{name}: a batch ramp but an empty ramp chart"
        );
    } else if rec["batch_schedule"].is_null() {
        assert!(!has_data("ramp"), "{name}: no ramp tried but a ramp chart");
    }
    // The budget line and the chosen points.
    assert!(chart("memory").contains("budget"), "{name}: no budget line");
    let trials = rec["evidence"]["trials"].as_array().map_or(0, |t| t.len());
    assert_eq!(
        html.matches("<tr class=\"outcome-").count(),
        trials,
        "{name}: trials table"
    );
    let batch = rec["batch_size"].as_u64().unwrap();
    assert!(
        html.contains(&format!("<b>{batch}</b> per device")),
        "{name}: no batch size"
    );
}

/// A daemon configuration in `dir` whose API token file holds `token`.
pub fn config_with_token(dir: &Path, token: &str) -> std::path::PathBuf {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let config = dir.join("batchd.toml");
    std::fs::write(
        &config,
        format!("api_token_file = {:?}\n", token_file.display().to_string()),
    )
    .unwrap();
    config
}

/// Whether a recommendation's rationale has a line containing `text`.
pub fn rationale_says(rec: &serde_json::Value, text: &str) -> bool {
    rec["rationale"].as_array().is_some_and(|lines| {
        lines
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains(text)))
    })
}

/// `(exit code, stdout, stderr)` of a command that must exit normally.
pub fn run(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("batchd runs");
    (
        status.code().expect("batchd exits normally"),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `batchd trial SPEC --batch-size 8 --steps 2 --device cpu --json`, its
/// parsed-data cache under `cache_home` (the data tests' trial).
pub fn quick_trial(spec: &Path, cache_home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .env("XDG_CACHE_HOME", cache_home)
        .arg("trial")
        .arg(spec)
        .args([
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--json",
        ]);
    command
}
