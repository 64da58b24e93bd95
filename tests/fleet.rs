//! A fleet on one machine: three `batchd serve` processes sharing one state
//! folder (as GPU nodes share a ReadWriteMany volume), each with its own
//! jobs folder and port, given the same spec. The job must be tuned
//! exactly once and served by all three; after `kill -9` of the daemon
//! tuning it, another must take its lease over and finish the job.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{drop_spec, Daemon, TINY};

/// A configuration sharing the state folder, with short leases so a dead
/// holder's work is taken over within seconds.
fn fleet_config(dir: &Path) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(&path, "shared_state = true\nlease_ttl = \"3s\"\n").unwrap();
    path
}

/// Trials a daemon ran, from its /metrics.
fn trials_run(daemon: &Daemon) -> u64 {
    let (status, text) = daemon.get("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("batchd_trials_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The value of an unlabelled counter in a daemon's /metrics.
fn counter(daemon: &Daemon, name: &str) -> u64 {
    let (_, text) = daemon.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse::<f64>().ok())
        .unwrap_or(f64::NAN) as u64
}

/// Three daemons on one state folder, nodes `node-0`..`node-2`, each with
/// its own jobs folder holding `spec` as `job.toml`.
fn fleet(root: &Path, spec: &str) -> Vec<Daemon> {
    let state = root.join("state");
    let config = fleet_config(root);
    let daemons: Vec<Daemon> = (0..3)
        .map(|i| {
            let jobs = root.join(format!("jobs-{i}"));
            std::fs::create_dir_all(&jobs).unwrap();
            Daemon::start_with_env(
                &jobs,
                &state,
                0,
                &config,
                &[("BATCHD_NODE_NAME", &format!("node-{i}"))],
            )
        })
        .collect();
    for i in 0..3 {
        drop_spec(&root.join(format!("jobs-{i}")), "job.toml", spec);
    }
    daemons
}

/// Every daemon's recommendation for `job`, as served.
fn recommendations(daemons: &[&Daemon]) -> Vec<serde_json::Value> {
    daemons
        .iter()
        .map(|d| {
            let (status, rec) = d.json("/v1/jobs/job/recommendation");
            assert_eq!(status, 200, "{rec}");
            rec
        })
        .collect()
}

#[test]
fn three_daemons_on_one_state_folder_tune_a_job_once_and_all_serve_it() {
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let daemons = fleet(root.path(), TINY);
    for daemon in &daemons {
        daemon.wait_for(Duration::from_secs(180), |d| d.job_state("job") == "done");
    }
    let answered = started.elapsed();
    let trials: Vec<u64> = daemons.iter().map(trials_run).collect();
    let tuners: Vec<usize> = (0..3).filter(|&i| trials[i] > 0).collect();
    assert_eq!(
        tuners.len(),
        1,
        "tuned once, by one daemon: trials {trials:?}"
    );
    let tuner = tuners[0];
    let recs = recommendations(&daemons.iter().collect::<Vec<_>>());
    assert!(
        recs.iter().all(|r| *r == recs[0]),
        "all three serve the same recommendation"
    );
    for (i, daemon) in daemons.iter().enumerate() {
        let (_, job) = daemon.json("/v1/jobs/job");
        if i == tuner {
            assert_eq!(job["reused"], false, "{job}");
            assert!(job.get("tuned_by").is_none(), "{job}");
        } else {
            assert_eq!(job["reused"], true, "{job}");
            assert_eq!(job["tuned_by"], format!("node-{tuner}"), "{job}");
            assert_eq!(counter(daemon, "batchd_fleet_shared_results_total"), 1);
        }
        // One run in the shared history, by the tuner.
        let runs = job["history"].as_array().expect("a history");
        assert_eq!(runs.len(), 1, "{job}");
        assert_eq!(runs[0]["outcome"], "done");
        assert_eq!(runs[0]["node"], format!("node-{tuner}"));
    }
    // No lease is left once the work is stored.
    let leases: Vec<_> = std::fs::read_dir(root.path().join("state/leases"))
        .unwrap()
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
    eprintln!(
        "fleet: the shared answer after {:.1} s; trials per daemon {trials:?} (duplicates: {})",
        answered.as_secs_f64(),
        trials.iter().filter(|t| **t > 0).count() - 1
    );
}

#[test]
fn after_kill_9_of_the_tuning_daemon_another_takes_its_lease_over_and_finishes() {
    let root = tempfile::tempdir().unwrap();
    // A search long enough to be killed in the middle.
    let spec = TINY.replace("time_budget = \"90s\"", "time_budget = \"40s\"");
    let mut daemons = fleet(root.path(), &spec);
    let mut tuner = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tuner.is_none() {
        assert!(Instant::now() < deadline, "no daemon started the search");
        let states: Vec<String> = daemons.iter().map(|d| d.job_state("job")).collect();
        if states.iter().filter(|s| *s == "running").count() == 1
            && states.iter().filter(|s| *s == "waiting").count() == 2
        {
            tuner = states.iter().position(|s| s == "running");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tuner = tuner.unwrap();
    // The waiting ones say who holds the lease.
    for (i, daemon) in daemons.iter().enumerate().filter(|(i, _)| *i != tuner) {
        let (_, job) = daemon.json("/v1/jobs/job");
        assert_eq!(
            job["lease_holder"],
            format!("node-{tuner}"),
            "daemon {i}: {job}"
        );
    }
    // Let it run some trials, then kill it outright. By its trial count,
    // not a fixed sleep: this tiny job's whole search can end inside 3 s
    // (a race decided without extra seeds), and then there is nothing left
    // to take over.
    let deadline = Instant::now() + Duration::from_secs(60);
    while trials_run(&daemons[tuner]) < 2 {
        assert!(Instant::now() < deadline, "the tuner ran no trials");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(daemons[tuner].job_state("job"), "done");
    let mut killed = daemons.remove(tuner);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let killed_at = Instant::now();
    for daemon in &daemons {
        daemon.wait_for(Duration::from_secs(240), |d| d.job_state("job") == "done");
    }
    let taken_over_after = killed_at.elapsed();
    let takeovers: Vec<u64> = daemons
        .iter()
        .map(|d| counter(d, "batchd_fleet_lease_takeovers_total"))
        .collect();
    assert_eq!(takeovers.iter().sum::<u64>(), 1, "{takeovers:?}");
    let trials: Vec<u64> = daemons.iter().map(trials_run).collect();
    assert_eq!(
        trials.iter().filter(|t| **t > 0).count(),
        1,
        "one survivor finished the job: {trials:?}"
    );
    let recs = recommendations(&daemons.iter().collect::<Vec<_>>());
    assert_eq!(recs[0], recs[1]);
    // The history: the killed daemon's run interrupted by the takeover,
    // then the survivor's, done.
    let (_, job) = daemons[0].json("/v1/jobs/job");
    let runs = job["history"].as_array().expect("a history");
    assert_eq!(runs.len(), 2, "{job}");
    assert_eq!(runs[0]["outcome"], "interrupted", "{job}");
    assert_eq!(runs[0]["node"], format!("node-{tuner}"));
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap()
            .contains("stopped renewing its lease"),
        "{job}"
    );
    assert_eq!(runs[1]["outcome"], "done", "{job}");
    eprintln!(
        "fleet: after kill -9 of node-{tuner}, the job was done {:.1} s later (lease 3 s)",
        taken_over_after.as_secs_f64()
    );
}

#[test]
fn a_state_folder_that_is_not_shared_still_refuses_a_second_daemon() {
    let root = tempfile::tempdir().unwrap();
    let state = root.path().join("state");
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let _first = Daemon::start(&jobs, &state, 0);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env(
            "BATCHD_CONFIG",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml"),
        )
        .args(["serve", "--listen", "127.0.0.1:0", "--jobs-dir"])
        .arg(&jobs)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another batchd"), "{stderr}");
}
