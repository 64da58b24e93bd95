//! The daemon's logs for machines: `--log-format json` (or `log_format =
//! "json"` in the configuration) writes one JSON object per line, with the
//! job's name in a `job` field; the text format stays the default.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{drop_spec, TINY};

/// `batchd serve` with `extra` arguments and configuration `config`, its
/// stderr collected line by line.
struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    fn start(root: &Path, config: &Path, extra: &[&str]) -> Serve {
        let jobs = root.join("jobs");
        std::fs::create_dir_all(&jobs).unwrap();
        // An invalid spec: a job event at once, and no trial to wait for.
        drop_spec(
            &jobs,
            "broken.toml",
            &TINY.replace("hidden = [32]", "hidden = [32, 0]"),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchd"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("BATCHD_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(config)
            .args(extra)
            .arg("serve")
            .arg("--jobs-dir")
            .arg(&jobs)
            .arg("--state-dir")
            .arg(root.join("state"))
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("batchd serve starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Serve { child, lines }
    }

    /// The log so far, once a line satisfying `wanted` is in it.
    fn wait_for(&self, wanted: impl Fn(&str) -> bool) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.iter().any(|l| wanted(l)) {
                return lines;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no such line in:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn empty_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml")
}

/// Every line is a JSON object with a timestamp, a level and a message;
/// the invalid job's event names it in a `job` field.
fn assert_json_log(lines: &[String]) {
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for event in &events {
        assert!(event["timestamp"].is_string(), "{event}");
        assert!(event["level"].is_string(), "{event}");
        assert!(event["message"].is_string(), "{event}");
    }
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .starts_with("listening on http://")),
        "{lines:?}"
    );
    let job = events
        .iter()
        .find(|e| e["job"] == "broken")
        .unwrap_or_else(|| panic!("no event with \"job\":\"broken\" in {lines:?}"));
    assert_eq!(job["level"], "WARN", "{job}");
    assert!(
        job["message"].as_str().unwrap().contains("model.hidden[1]"),
        "{job}"
    );
}

#[test]
fn log_format_json_writes_one_object_per_line_with_the_job_as_a_field() {
    let root = tempfile::tempdir().unwrap();
    let serve = Serve::start(root.path(), &empty_config(), &["--log-format", "json"]);
    let lines = serve.wait_for(|l| l.contains("\"job\":\"broken\""));
    assert_json_log(&lines);
}

#[test]
fn log_format_json_in_the_configuration_does_the_same_and_the_flag_wins() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("batchd.toml");
    std::fs::write(&config, "log_format = \"json\"\n").unwrap();
    let serve = Serve::start(root.path(), &config, &[]);
    let lines = serve.wait_for(|l| l.contains("\"job\":\"broken\""));
    assert_json_log(&lines);
    drop(serve);

    // --log-format text over the configuration's json.
    let root = tempfile::tempdir().unwrap();
    let serve = Serve::start(root.path(), &config, &["--log-format", "text"]);
    let lines = serve.wait_for(|l| l.contains("job broken is invalid"));
    assert!(
        lines.iter().all(|l| !l.starts_with('{')),
        "{}",
        lines.join("\n")
    );
}

#[test]
fn the_text_format_stays_the_default_and_names_the_job_once() {
    let root = tempfile::tempdir().unwrap();
    let serve = Serve::start(root.path(), &empty_config(), &[]);
    let lines = serve.wait_for(|l| l.contains("job broken is invalid"));
    let line = lines
        .iter()
        .find(|l| l.contains("job broken is invalid"))
        .unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        !line.contains("job=broken"),
        "the job is named once: {line}"
    );
    assert!(!line.starts_with('{'), "{line}");
}
