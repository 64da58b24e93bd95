//! End to end with a real Prometheus (Debian's `prometheus` package): it
//! scrapes a running daemon, and a PromQL query through its HTTP API
//! returns an example job's recommended batch size; `promtool check
//! metrics` accepts the scrape.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{daemon_with_a_tuned_job, free_port, http, outside_program, url_encode};

/// Kills the Prometheus server when the test ends, pass or fail.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn promtool_accepts_the_scrape() {
    let Some(promtool) = outside_program("promtool") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_a_tuned_job(root.path(), &[]);
    let (status, text) = daemon.get("/metrics");
    assert_eq!(status, 200);
    // Labelled with the device model its work is keyed by (fleet views
    // compare one job across GPU models).
    assert!(
        text.contains("batchd_job_recommended_batch_size{job_name=\"tiny\",gpu_model=\""),
        "{text}"
    );
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // promtool exits non-zero on lint problems and prints them.
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}

#[test]
fn prometheus_scrapes_the_daemon_and_answers_promql_with_the_recommendation() {
    let Some(prometheus) = outside_program("prometheus") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let daemon = daemon_with_a_tuned_job(root.path(), &[]);
    let (_, recommendation) = daemon.json("/v1/jobs/tiny/recommendation");
    let batch = recommendation["batch_size"].as_u64().unwrap();

    let config = root.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: batchd\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
            daemon.port
        ),
    )
    .unwrap();
    let port = free_port();
    let _server = Server(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let query = |promql: &str| -> serde_json::Value {
        let (status, body) = http(
            port,
            "GET",
            &format!("/api/v1/query?query={}", url_encode(promql)),
            "",
            "",
            None,
        );
        if status != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    };
    let value_of = |answer: &serde_json::Value| -> Option<f64> {
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    };
    let started = Instant::now();
    let answer = loop {
        let answer = query("batchd_job_recommended_batch_size{job_name=\"tiny\"}");
        if value_of(&answer).is_some() {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "Prometheus never returned the recommendation: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(value_of(&answer), Some(batch as f64), "{answer}");
    // Prometheus's own labels, not ours.
    let series = &answer["data"]["result"][0]["metric"];
    assert_eq!(series["job"], "batchd");
    assert_eq!(series["instance"], format!("127.0.0.1:{}", daemon.port));
    // The target is healthy, and the trial counters reached Prometheus.
    assert_eq!(value_of(&query("up{job=\"batchd\"}")), Some(1.0));
    let trials = value_of(&query("sum(batchd_trials_total)")).unwrap();
    let trial_count = recommendation["evidence"]["trials"]
        .as_array()
        .unwrap()
        .len() as f64;
    assert_eq!(trials, trial_count, "every trial of the search was counted");
}
