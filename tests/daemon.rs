//! `batchd serve` driven for real: the binary on a free loopback port with
//! temporary folders, spec files dropped into its jobs folder, its HTTP API
//! polled, then a restart that must not redo finished work.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{drop_spec, Daemon, TINY};

#[test]
fn the_daemon_tunes_dropped_specs_serves_them_and_keeps_them_across_restarts() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    let port = 0;
    let daemon = Daemon::start(&jobs, &state, port);
    assert_eq!(daemon.json("/healthz").1["status"], "ok");

    drop_spec(&jobs, "tiny.toml", TINY);
    drop_spec(
        &jobs,
        "broken.toml",
        &TINY.replace("hidden = [32]", "hidden = [32, 0]"),
    );
    // A half-written file: cut mid-table, as an editor saving in place would.
    std::fs::write(
        jobs.join("half.toml"),
        &TINY[..TINY.find("[optimizer]").unwrap() + 5],
    )
    .unwrap();
    std::fs::write(jobs.join("notes.txt~"), "an editor's backup").unwrap();

    daemon.wait_for(Duration::from_secs(150), |d| d.job_state("tiny") == "done");
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("broken") == "invalid"
    });
    let (_, broken) = daemon.json("/v1/jobs/broken");
    assert_eq!(broken["errors"][0]["field"], "model.hidden[1]", "{broken}");
    let (_, half) = daemon.json("/v1/jobs/half");
    assert_eq!(half["state"], "invalid", "{half}");
    assert!(
        half["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("syntax error"),
        "{half}"
    );

    // The recommendation, and the LR for another batch size.
    let (status, rec) = daemon.json("/v1/jobs/tiny/recommendation");
    assert_eq!(status, 200);
    let batch = rec["batch_size"].as_u64().unwrap();
    assert!(batch >= 1 && batch <= rec["memory"]["max_fit"]["batch_size"].as_u64().unwrap());
    let trials = rec["evidence"]["trials"].as_array().unwrap().len() as u64;
    assert!(trials > 5);
    // The HTML report of the same job, and the index linking to it.
    let (status, page) = daemon.get("/jobs/tiny");
    assert_eq!(status, 200);
    common::check_report("tiny", &page, &rec);
    assert!(
        !page.contains("http-equiv=\"refresh\""),
        "a finished job's page is static"
    );
    let (status, index) = daemon.get("/");
    assert_eq!(status, 200);
    assert!(index.contains("href=\"/jobs/tiny\""), "{index}");
    assert!(index.contains("state-invalid"), "{index}");
    let (status, missing) = daemon.get("/jobs/nope");
    assert_eq!(status, 404);
    assert!(missing.contains("No such job"));
    let (status, lr) = daemon.json("/v1/jobs/tiny/recommendation?batch_size=4096");
    assert_eq!(status, 200, "{lr}");
    assert!(lr["learning_rate"].as_f64().unwrap() > 0.0);
    // Errors are problem+json and name what is wrong.
    let (status, body) = daemon.get("/v1/jobs/tiny/recommendation?batch_size=-3");
    assert_eq!(status, 400);
    assert!(body.contains("batch_size"), "{body}");
    let (status, missing) = daemon.json("/v1/jobs/nope");
    assert_eq!(status, 404);
    assert_eq!(missing["status"], 404);
    let (status, _) = daemon.json("/v1/jobs/broken/recommendation");
    assert_eq!(status, 409);
    let (status, gpus) = daemon.json("/v1/gpus");
    assert_eq!(status, 200);
    assert!(gpus["system_memory"].is_object());

    // Completing the half-written file turns it into a real job.
    drop_spec(&jobs, "half.toml", TINY);
    daemon.wait_for(Duration::from_secs(30), |d| d.job_state("half") == "done");
    // Deleting a spec retires its job.
    std::fs::remove_file(jobs.join("broken.toml")).unwrap();
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.json("/v1/jobs/broken").0 == 404
    });
    let (_, list) = daemon.json("/v1/jobs");
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["half", "tiny"], "the backup file is no job");

    assert!(daemon.stop().success(), "a clean exit on SIGTERM");

    // A restart finds the work done and does not redo it.
    let daemon = Daemon::start(&jobs, &state, port);
    let (_, job) = daemon.json("/v1/jobs/tiny");
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["reused"], true);
    // One run in the history: the one before the restart.
    let runs = job["history"].as_array().expect("a history");
    assert_eq!(runs.len(), 1, "{job}");
    assert_eq!(runs[0]["outcome"], "done");
    assert_eq!(runs[0]["batch_size"], rec["batch_size"]);
    assert_eq!(runs[0]["trials"], trials);
    // The page lists the run from before the restart.
    let (_, page) = daemon.get("/jobs/tiny");
    assert!(page.contains("<table class=\"runs\">"), "{page}");
    let (_, again) = daemon.json("/v1/jobs/tiny/recommendation");
    assert_eq!(again["batch_size"], rec["batch_size"]);
    assert_eq!(
        again["evidence"]["trials"].as_array().unwrap().len() as u64,
        trials
    );

    // A corrupt state file is set aside, and the job simply runs again.
    let recommendations = state.join("recommendations");
    for entry in std::fs::read_dir(&recommendations).unwrap() {
        std::fs::write(entry.unwrap().path(), "{ not json").unwrap();
    }
    assert!(daemon.stop().success());
    let daemon = Daemon::start(&jobs, &state, port);
    assert!(std::fs::read_dir(state.join("corrupt")).unwrap().count() >= 1);
    daemon.wait_for(Duration::from_secs(150), |d| d.job_state("tiny") == "done");
    assert_eq!(daemon.json("/v1/jobs/tiny").1["reused"], false);
}

#[test]
fn jobs_are_submitted_retuned_and_deleted_over_http_with_a_token() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    std::fs::write(root.path().join("token"), "s3cret\n").unwrap();
    let config = root.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "max_request_body = \"4KiB\"\napi_token_file = \"{}\"\ndata_roots = [\"{}\"]\n",
            root.path().join("token").display(),
            data.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);

    let spec = format!("name = \"posted\"\n{TINY}");
    // No token, a wrong token: 401 problem+json.
    let (status, body) = daemon.send("POST", "/v1/jobs", "application/toml", &spec, None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = daemon.send("POST", "/v1/jobs", "application/toml", &spec, Some("wrong"));
    assert_eq!(status, 401);
    // A body over the limit: 413.
    let huge = format!("{spec}\n# {}\n", "x".repeat(8192));
    let (status, _) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/toml",
        &huge,
        Some("s3cret"),
    );
    assert_eq!(status, 413);
    // An invalid spec: 422 naming the field.
    let bad = spec.replace("hidden = [32]", "hidden = [-1]");
    let (status, body) = daemon.send("POST", "/v1/jobs", "application/toml", &bad, Some("s3cret"));
    assert_eq!(status, 422, "{body}");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        problem["errors"][0]["field"], "model.hidden[0]",
        "{problem}"
    );
    // Data outside the data roots is refused; inside is fine.
    let outside = "name = \"outside\"\n[model]\nkind = \"mlp\"\nhidden = [8]\nclasses = 10\n[data]\nkind = \"csv\"\npath = \"/etc/passwd\"\n[optimizer]\nkind = \"sgd\"\n";
    let (status, body) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/toml",
        outside,
        Some("s3cret"),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("data.path") && body.contains("data root"),
        "{body}"
    );
    // A valid spec, as JSON: 201, then tuned.
    let json_spec = serde_json::json!({
        "name": "posted",
        "model": {"kind": "mlp", "hidden": [32], "classes": 10},
        "data": {"kind": "csv", "path": data.join("digits.csv"), "label_column": "label"},
        "optimizer": {"kind": "adam"},
        "search": {"max_batch": 1024, "memory_limit": "512MiB", "time_budget": "90s"}
    })
    .to_string();
    let (status, body) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/json",
        &json_spec,
        Some("s3cret"),
    );
    assert_eq!(status, 201, "{body}");
    assert!(
        jobs.join("posted.json").exists(),
        "the posted spec is kept as a file"
    );
    daemon.wait_for(Duration::from_secs(150), |d| {
        d.job_state("posted") == "done"
    });
    // Posting the same name again conflicts.
    let (status, _) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/json",
        &json_spec,
        Some("s3cret"),
    );
    assert_eq!(status, 409);
    // Retune: the job runs again, with new trials.
    let (status, _) = daemon.send(
        "POST",
        "/v1/jobs/posted/retune",
        "application/json",
        "",
        Some("s3cret"),
    );
    assert_eq!(status, 202);
    daemon.wait_for(Duration::from_secs(150), |d| {
        d.job_state("posted") == "done"
    });
    assert_eq!(daemon.json("/v1/jobs/posted").1["reused"], false);
    // Delete: the job and its file are gone.
    let (status, _) = daemon.send("DELETE", "/v1/jobs/posted", "application/json", "", None);
    assert_eq!(status, 401);
    let (status, _) = daemon.send(
        "DELETE",
        "/v1/jobs/posted",
        "application/json",
        "",
        Some("s3cret"),
    );
    assert_eq!(status, 204);
    assert_eq!(daemon.json("/v1/jobs/posted").0, 404);
    assert!(!jobs.join("posted.json").exists());
    // The OpenAPI document describes the endpoints.
    let (status, doc) = daemon.json("/openapi.json");
    assert_eq!(status, 200);
    for path in [
        "/v1/jobs",
        "/v1/jobs/{name}",
        "/v1/jobs/{name}/retune",
        "/v1/jobs/{name}/recommendation",
        "/v1/gpus",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(daemon.stop().success());
}

/// Trial workers of a process, found through /proc.
fn workers_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find(|l| l.starts_with("PPid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.contains("__trial-worker") {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| !s.contains("State:\tZ"))
        .unwrap_or(false)
}

#[test]
fn a_daemon_killed_mid_trial_leaves_no_orphans_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    let port = 0;
    let mut daemon = Daemon::start(&jobs, &state, port);
    // A job whose trials take a while: a small CNN on the CPU.
    let slow = "[model]\nkind = \"cnn\"\nheight = 16\nwidth = 16\nchannels = 3\nstages = [8, 16]\nclasses = 4\n[data]\nkind = \"synthetic\"\nsamples = 1024\n[optimizer]\nkind = \"sgd\"\n[search]\nmax_batch = 512\nmemory_limit = \"512MiB\"\ntime_budget = \"60s\"\n";
    drop_spec(&jobs, "slow.toml", slow);
    let pid = daemon.child.id();
    let mut worker = Vec::new();
    daemon.wait_for(Duration::from_secs(60), |_| {
        worker = workers_of(pid);
        !worker.is_empty()
    });
    assert_eq!(daemon.job_state("slow"), "running");
    // The live view: the page refreshes itself and shows the progress.
    let (status, page) = daemon.get("/jobs/slow");
    assert_eq!(status, 200);
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(page.contains("trial(s) done"), "{page}");
    // kill -9: no chance to clean up.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let started = Instant::now();
    while worker.iter().any(|w| alive(*w)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "trial workers {worker:?} outlived their daemon"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(daemon);
    // The restarted daemon finds the job unfinished and runs it again.
    let daemon = Daemon::start(&jobs, &state, port);
    daemon.wait_for(Duration::from_secs(120), |d| d.job_state("slow") == "done");
    let (_, job) = daemon.json("/v1/jobs/slow");
    assert_eq!(job["reused"], false);
    let outcomes: Vec<&str> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["interrupted", "done"], "{job}");
    assert!(daemon.stop().success());
}

/// Reads the next sd_notify datagram, if one comes within `limit`.
fn next_message(socket: &std::os::unix::net::UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    let n = socket.recv(&mut buffer).ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

/// Waits for a message starting with `prefix`, skipping watchdog pings
/// and status lines.
fn expect_message(socket: &std::os::unix::net::UnixDatagram, prefix: &str) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Some(message) = next_message(socket, Duration::from_secs(30)) {
            if message.starts_with(prefix) {
                return message;
            }
        }
    }
    panic!("no {prefix} message from batchd");
}

#[test]
fn the_daemon_notifies_systemd_and_reloads_policies_on_sighup() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    let policies = root.path().join("policies");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::create_dir_all(&policies).unwrap();
    let config = root.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!("policies_dir = {:?}\n", policies.display().to_string()),
    )
    .unwrap();
    let socket_path = root.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    // A job naming a policy that does not exist yet.
    drop_spec(
        &jobs,
        "team-job.toml",
        &format!("policy = \"team\"\n{TINY}"),
    );
    let daemon = Daemon::start_with_env(
        &jobs,
        &state,
        0,
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = expect_message(&socket, "READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    // Watchdog pings at half the 400 ms timeout.
    let started = Instant::now();
    expect_message(&socket, "WATCHDOG=1");
    expect_message(&socket, "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, job) = daemon.json("/v1/jobs/team-job");
    assert_eq!(job["state"], "invalid", "{job}");
    assert!(job["errors"].to_string().contains("team"), "{job}");

    // The policy arrives; SIGHUP makes the daemon read it.
    let balanced = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/balanced.toml"),
    )
    .unwrap();
    std::fs::write(
        policies.join("team.toml"),
        balanced.replace("name = \"balanced\"", "name = \"team\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let reloading = expect_message(&socket, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    expect_message(&socket, "READY=1");
    daemon.wait_for(Duration::from_secs(10), |d| {
        d.job_state("team-job") != "invalid"
    });
    // A broken configuration is refused and the running one kept.
    std::fs::write(&config, "max_concurrent_jobs = \"many\"\n").unwrap();
    daemon.signal(libc::SIGHUP);
    expect_message(&socket, "RELOADING=1");
    expect_message(&socket, "READY=1");
    assert_eq!(daemon.json("/healthz").0, 200);
    assert_ne!(daemon.job_state("team-job"), "invalid");

    let status = {
        daemon.signal(libc::SIGTERM);
        expect_message(&socket, "STOPPING=1");
        daemon.stop()
    };
    assert!(status.success());
}
