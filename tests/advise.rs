//! `batchd advise` on the example specs, on the CPU, through the real
//! binary: real trials in worker processes, the whole search, the JSON the
//! HTTP API will serve.

mod common;

use std::process::Command;
use std::sync::Mutex;

/// Searches time their trials: run them one at a time so they do not
/// compete for the two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn advise(spec: &str, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, value, stderr, _) = advise_timed(spec, extra);
    (code, value, stderr)
}

/// [`advise`], with the wall time of the command itself: timed once the
/// other tests' searches are done, not from before the wait for them (a
/// timer started before it once counted another test's search against
/// the CNN example's budget: 193 s, of which the search took about 141).
fn advise_timed(
    spec: &str,
    extra: &[&str],
) -> (i32, serde_json::Value, String, std::time::Duration) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .args(["advise", spec, "--device", "cpu", "--json"])
        .args(extra)
        .output()
        .expect("batchd runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let value = serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    (
        output.status.code().unwrap_or(-1),
        value,
        stderr,
        started.elapsed(),
    )
}

/// What every recommendation must hold, whatever the job.
fn check_recommendation(name: &str, rec: &serde_json::Value) {
    assert_eq!(rec["schema_version"], 2, "{name}");
    for field in [
        "/batch_size",
        "/lr/learning_rate",
        "/memory/max_fit/batch_size",
        "/gradient_accumulation_steps",
        "/evidence/gradient_noise",
        "/memory/expected_peak_bytes",
        "/throughput/expected_samples_per_second",
        "/policy",
        "/device",
        "/rationale",
        "/evidence/trials",
    ] {
        assert!(rec.pointer(field).is_some(), "{name}: no `{field}`");
    }
    let batch = rec["batch_size"].as_u64().unwrap();
    let max_fit = rec["memory"]["max_fit"]["batch_size"].as_u64().unwrap();
    assert!(
        batch >= 1 && batch <= max_fit,
        "{name}: batch {batch}, max fit {max_fit}"
    );
    let trials = rec["evidence"]["trials"].as_array().unwrap();
    assert!(!trials.is_empty());
    for trial in trials {
        for field in [
            "batch_size",
            "learning_rate",
            "outcome",
            "peak_memory_bytes",
            "samples_per_second",
            "seconds",
        ] {
            assert!(
                trial.get(field).is_some(),
                "{name}: a trial has no `{field}`"
            );
        }
    }
    // The max-fit answer itself ran successfully at full length.
    assert!(
        trials
            .iter()
            .any(|t| t["batch_size"] == max_fit && t["outcome"] == "ok" && t["phase"] == "max_fit"),
        "{name}: max fit {max_fit} was never run successfully"
    );
    let budget = rec["memory"]["max_fit"]["budget_bytes"].as_u64().unwrap();
    let peak = rec["memory"]["max_fit"]["peak_bytes"].as_u64().unwrap();
    assert!(
        peak <= budget,
        "{name}: max-fit peak {peak} over the budget {budget}"
    );
    assert!(!rec["rationale"].as_array().unwrap().is_empty());
    assert_eq!(rec["device"], "cpu");
}

#[test]
fn every_example_gets_a_recommendation_on_cpu() {
    let mut names: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    names.sort();
    let reports = tempfile::tempdir().unwrap();
    for name in names {
        let path = format!("examples/jobs/{name}");
        let report = reports.path().join(format!("{name}.html"));
        let (code, rec, stderr, elapsed) =
            advise_timed(&path, &["--report", report.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {stderr}");
        check_recommendation(&name, &rec);
        // The HTML report of the same search.
        common::check_report(&name, &std::fs::read_to_string(&report).unwrap(), &rec);
        // The spec's time budget (150s) holds, with start-up to spare.
        assert!(elapsed.as_secs() < 180, "{name} took {elapsed:?}");
        eprintln!(
            "{name}: batch {} (max fit {}), lr {}, noise scale {}, {} trials, {:.0}s{}",
            rec["batch_size"],
            rec["memory"]["max_fit"]["batch_size"],
            rec["lr"]["learning_rate"],
            rec["evidence"]["gradient_noise"]["value"],
            rec["evidence"]["trials"].as_array().map_or(0, Vec::len),
            rec["seconds"].as_f64().unwrap_or(0.0),
            if rec["partial"] == true {
                " (partial)"
            } else {
                ""
            }
        );
    }
}

#[test]
fn a_memory_bound_mlp_is_tuned_completely() {
    // 40MiB binds below the 14,746-sample training set: a real max-fit
    // search, then the whole range below it.
    let (code, rec, stderr) = advise(
        "examples/jobs/mlp-synthetic.toml",
        &["--lr-for", "1024", "--memory-limit", "40MiB"],
    );
    assert_eq!(code, 0, "{stderr}");
    check_recommendation("mlp-synthetic", &rec);
    assert_eq!(rec["partial"], false, "{}", rec["partial_reason"]);
    let max_fit = rec["memory"]["max_fit"]["batch_size"].as_u64().unwrap();
    assert!(max_fit < 14_746, "{max_fit}");
    assert!(
        rec["memory"]["max_fit"]["first_failure"].is_array(),
        "a larger batch failed"
    );
    // The throughput ladder spans the range from min_batch up.
    let curve: Vec<u64> = rec["throughput"]["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(curve.first(), Some(&8), "{curve:?}");
    assert!(rec["throughput"]["step_time_model"]["fixed_seconds"].is_number());
    // The race decided, and its winner is the recommendation.
    let race = &rec["evidence"]["race"];
    assert_eq!(race["winner"], rec["batch_size"], "{race:#}");
    let entries = race["entries"].as_array().unwrap();
    assert!(entries.len() >= 2, "{race:#}");
    assert!(entries
        .iter()
        .all(|e| e["runs"].as_array().unwrap().len() >= 2));
    // No batch beyond the data cap was raced or recommended.
    let cap = rec["evidence"]["batch_cap"]["largest_batch"]
        .as_u64()
        .unwrap();
    assert!(rec["batch_size"].as_u64().unwrap() <= cap);
    assert!(entries
        .iter()
        .all(|e| e["batch_size"].as_u64().unwrap() <= cap));
    assert!(rec["lr"]["learning_rate"].as_f64().unwrap() > 0.0);
    assert!(rec["lr"]["rule"]["alpha"].is_number());
    assert!(rec["lr"]["interval"].is_array(), "{rec:#}");
    assert_eq!(rec["schedule"]["decay"], "cosine");
    assert!(rec["schedule"]["warmup_steps"].as_u64().unwrap() > 0);
    let noise = &rec["evidence"]["gradient_noise"];
    if noise.is_object() {
        // Measured after training, with its uncertainty.
        assert!(noise["after_steps"].as_u64().unwrap() > 0, "{noise:#}");
        assert!(noise.get("stderr").is_some());
    }
}

#[test]
fn a_human_report_and_exit_codes() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .args([
            "advise",
            "examples/jobs/mlp-digits-idx.yaml",
            "--device",
            "cpu",
            "--lr-for",
            "256",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "batchd advice for mlp-digits-idx",
        "batch size",
        "learning rate",
        "lr at batch 256",
        "largest fitting batch",
        "throughput curve",
        "why",
        "trials",
    ] {
        assert!(stdout.contains(needle), "no `{needle}` in:\n{stdout}");
    }
    drop(_guard);
    // Nothing fits in 1MiB: exit 1 with the reason.
    let (code, _, stderr) = advise(
        "examples/jobs/mlp-synthetic.toml",
        &["--memory-limit", "1MiB"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("not even a batch"), "{stderr}");
    // An invalid spec: 64.
    let (code, _, _) = advise("tests/specs/invalid/hidden-zero.toml", &[]);
    assert_eq!(code, 64);
}
