//! Command jobs (`runner = "command"`) with a real Python training script
//! (tests/command/linear.py, pure Python): each way a training script ends
//! is classified like its real counterpart, the whole search runs on it
//! over the CLI and the daemon, and the daemon refuses command specs from
//! places it must not trust.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{drop_spec, Daemon};

fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/command")
}

/// A command spec running linear.py in `mode`, with a marker argument that
/// lets the test find leftover processes.
fn spec(mode: &str, marker: &str, extra: &str) -> String {
    format!(
        "runner = \"command\"\n\
         command = [\"python3\", \"linear.py\", \"--marker={marker}\"]\n\
         workdir = {:?}\n\
         environment = {{ MODE = \"{mode}\" }}\n\
         {extra}\n\
         [optimizer]\nkind = \"sgd\"\n",
        script_dir().display().to_string()
    )
}

fn trial(spec_path: &Path, batch: u64, extra: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", "/dev/null")
        .args(["trial"])
        .arg(spec_path)
        .args(["--batch-size", &batch.to_string(), "--steps", "4", "--json"])
        .args(extra)
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Processes whose command line carries `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    common::processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains(marker))
        .map(|(pid, cmdline)| format!("{pid}: {cmdline}"))
        .collect()
}

#[test]
fn each_way_a_training_script_ends_is_classified() {
    if common::outside_program("python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str], &str, &str)] = &[
        ("train", &[], "ok", ""),
        (
            "hungry",
            &["--memory-limit", "96MiB"],
            "out_of_memory",
            "limit",
        ),
        ("torch-oom", &[], "out_of_memory", "CUDA out of memory"),
        ("jax-oom", &[], "out_of_memory", "RESOURCE_EXHAUSTED"),
        ("tf-oom", &[], "out_of_memory", "OOM when allocating"),
        ("killed", &[], "out_of_memory", "SIGKILL"),
        ("crash", &[], "crashed", "mat1 and mat2 shapes"),
        (
            "garbled",
            &[],
            "crashed",
            "report line 2 is not a step record",
        ),
        ("silent", &[], "crashed", "without writing a step"),
        ("short", &[], "crashed", "3 of 4 steps"),
        ("nan", &[], "diverged", "step 2"),
        ("hang", &[], "timeout", "deadline"),
    ];
    for (mode, flags, outcome, reason) in cases {
        let marker = format!("batchd-test-{mode}-{}", std::process::id());
        let path = dir.path().join(format!("{mode}.toml"));
        // A short deadline for the hanging script.
        let extra = "[policy_overrides.trials]\ndeadline = \"3s\"";
        std::fs::write(&path, spec(mode, &marker, extra)).unwrap();
        let result = trial(&path, 32, flags);
        assert_eq!(result["outcome"], *outcome, "{mode}: {result:#}");
        let said = result["reason"].as_str().unwrap_or("");
        assert!(
            said.contains(reason),
            "{mode}: reason `{said}` lacks `{reason}`"
        );
        // Nothing of the trial survives it, children included.
        std::thread::sleep(Duration::from_millis(200));
        let left = processes_with(&marker);
        assert!(left.is_empty(), "{mode} left processes behind: {left:?}");
        if *mode == "train" {
            assert_eq!(result["steps_completed"], 4);
            assert_eq!(result["backend"], "command");
            assert!(result["samples_per_second"].as_f64().unwrap() > 0.0);
            assert_eq!(result["peak_memory_source"], "rss");
            assert!(result["losses"].as_array().unwrap().len() == 4);
        }
    }
}

/// The memory-hungry flavour: each sample holds 64 KiB during a step, so
/// the largest batch under 80 MiB is near a thousand.
const ADVISE_EXTRA: &str =
    "[search]\nmax_batch = 4096\nmemory_limit = \"80MiB\"\ntime_budget = \"150s\"\n";

#[test]
fn the_whole_search_runs_on_a_command_job() {
    if common::outside_program("python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("linear.toml");
    let text = spec("train", "advise", ADVISE_EXTRA).replace(
        "MODE = \"train\"",
        "MODE = \"train\", BYTES_PER_SAMPLE = \"65536\"",
    );
    std::fs::write(&path, text).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", "/dev/null")
        .args(["advise"])
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rec: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let max_fit = rec["memory"]["max_fit"]["batch_size"].as_u64().unwrap();
    assert!(
        (400..=1400).contains(&max_fit),
        "max fit {max_fit}: {rec:#}"
    );
    let max_fit_peak = rec["memory"]["max_fit"]["peak_bytes"].as_u64().unwrap();
    assert!(max_fit_peak <= rec["memory"]["max_fit"]["budget_bytes"].as_u64().unwrap());
    // An out-of-memory was seen on the way (the search brackets the limit).
    let trials = rec["evidence"]["trials"].as_array().unwrap();
    assert!(
        trials.iter().any(|t| t["outcome"] == "out_of_memory"),
        "{rec:#}"
    );
    let batch = rec["batch_size"].as_u64().unwrap();
    assert!(batch >= 1 && batch <= max_fit);
    // The noise scale is measured only on runs at batch 8 or more; when
    // this cheap script's throughput plateau keeps every run below that,
    // the recommendation must say it could not be measured.
    match rec["evidence"]["gradient_noise"]["value"].as_f64() {
        Some(noise) => assert!(noise > 0.0, "{rec:#}"),
        None => assert!(
            common::rationale_says(&rec, "could not be measured"),
            "{rec:#}"
        ),
    }
    assert!(rec["lr"]["learning_rate"].as_f64().unwrap() > 0.0);
    assert!(
        rec["throughput"]["expected_samples_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(!rec["evidence"]["lr_range_tests"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn the_daemon_runs_command_jobs_from_its_folder_but_not_from_http() {
    if common::outside_program("python3").is_none() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    let config = common::config_with_token(root.path(), "s3cret");
    let token = root.path().join("token");
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);

    let small = "[search]\nmax_batch = 512\nmemory_limit = \"256MiB\"\ntime_budget = \"120s\"\n";
    let text = format!("name = \"posted\"\n{}", spec("train", "posted", small));
    let (status, body) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/toml",
        &text,
        Some("s3cret"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"field\":\"runner\""), "{body}");
    assert!(body.contains("allow_command_jobs_over_http"), "{body}");

    // From the folder it runs, through the same search as built-in jobs.
    drop_spec(&jobs, "linear.toml", &spec("train", "folder", small));
    daemon.wait_for(Duration::from_secs(150), |d| {
        d.job_state("linear") == "done"
    });
    let (status, rec) = daemon.json("/v1/jobs/linear/recommendation");
    assert_eq!(status, 200);
    assert!(rec["batch_size"].as_u64().unwrap() >= 1);
    assert!(rec["lr"]["learning_rate"].as_f64().unwrap() > 0.0);
    // The script's gradient norms reach the noise-scale estimator: at the
    // reference batch (measured only at 8 or more) or at a race candidate's
    // own point of training.
    let by_progress = rec["evidence"]["noise_by_progress"].as_array().unwrap();
    assert!(
        rec["evidence"]["gradient_noise"]["value"]
            .as_f64()
            .is_some()
            || by_progress
                .iter()
                .any(|n| n["value"].as_f64().is_some_and(|v| v > 0.0)),
        "{rec:#}"
    );

    // A spec everyone may write is no trust boundary.
    use std::os::unix::fs::PermissionsExt;
    drop_spec(&jobs, "open.toml", &spec("train", "open", small));
    std::fs::set_permissions(
        jobs.join("open.toml"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("open") == "invalid"
    });
    let (_, job) = daemon.json("/v1/jobs/open");
    assert_eq!(job["errors"][0]["field"], "runner", "{job}");
    assert!(job["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("writable by everyone"));
    drop(daemon);

    // With the setting and a token, HTTP may submit command jobs.
    std::fs::write(
        &config,
        format!(
            "api_token_file = {:?}\nallow_command_jobs_over_http = true\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);
    let (status, body) = daemon.send(
        "POST",
        "/v1/jobs",
        "application/toml",
        &text,
        Some("s3cret"),
    );
    assert_eq!(status, 201, "{body}");
    // The setting without a token is a configuration error.
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .args(["config", "--config"])
        .arg({
            let bad = root.path().join("bad.toml");
            std::fs::write(&bad, "allow_command_jobs_over_http = true\n").unwrap();
            bad
        })
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("allow_command_jobs_over_http"));
}

/// The batch-schedule protocol end to end: `batchd trial --batch-schedule`
/// on a script built on the Python package, which grows its batch by the
/// samples trained; and a spec that does not declare support is refused
/// before any process starts.
#[test]
fn a_command_job_that_declares_it_trains_a_growing_batch() {
    if common::outside_program("python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("batches.txt");
    let write = |declared: &str| {
        let path = dir.path().join("ramp.toml");
        let text = format!(
            "runner = \"command\"\n\
             command = [\"python3\", \"ramp.py\"]\n\
             workdir = {:?}\n\
             environment = {{ PYTHONPATH = {:?}, BATCHES_OUT = {:?} }}\n\
             {declared}\n\
             [optimizer]\nkind = \"sgd\"\n",
            script_dir().display().to_string(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("python")
                .display()
                .to_string(),
            out.display().to_string()
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_batchd"))
            .env("BATCHD_CONFIG", "/dev/null")
            .args(["trial"])
            .arg(path)
            .args([
                "--batch-size",
                "8",
                "--steps",
                "6",
                "--lr",
                "0.01",
                "--json",
            ])
            .args(["--batch-schedule", "0:8:1,16:32:2"])
            .output()
            .unwrap()
    };
    let output = run(&write("batch_schedule = true"));
    let result: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(result["outcome"], "ok", "{result:#}");
    // 8, 8 reach 16 samples; then 32s at twice the LR.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "8,8,32,32,32,32");
    let lrs: Vec<f64> = result["learning_rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(lrs, vec![0.01, 0.01, 0.02, 0.02, 0.02, 0.02]);
    // Undeclared: refused, naming the key, and the script never ran.
    std::fs::remove_file(&out).unwrap();
    let output = run(&write(""));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("batch_schedule = true"), "{stderr}");
    assert!(!out.exists());
}
