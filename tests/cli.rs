//! Drives the real `batchd` binary: validate, policies, gpus, config, and
//! the exit codes the README documents.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::run;

fn batchd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    // Never read the machine's own /etc/batchd in tests.
    command.env("BATCHD_CONFIG", repo("tests/fixtures/empty-config.toml"));
    command.env_remove("BATCHD_FAKE_GPUS");
    command
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn every_example_spec_is_valid() {
    let (code, stdout, stderr) = run(batchd().args(["validate", "examples/jobs"]));
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let examples = std::fs::read_dir(repo("examples/jobs")).unwrap().count();
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        examples,
        "{stdout}"
    );
    // One example for each model kind and each data source.
    for needle in [
        "mlp on",
        "cnn on",
        "transformer on",
        "synthetic data",
        "csv data",
        "idx data",
        "text data",
    ] {
        assert!(
            stdout.contains(needle),
            "no example has `{needle}`:\n{stdout}"
        );
    }
}

/// Each malformed spec exits 64 and prints exactly its expected errors.
#[test]
fn each_malformed_spec_gets_its_own_precise_error() {
    let folder = repo("tests/specs/invalid");
    let manifest = std::fs::read_to_string(folder.join("expected.tsv")).unwrap();
    let mut expected: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (file, error) = line.split_once('\t').expect("file<TAB>error");
        expected
            .entry(file.to_string())
            .or_default()
            .push(error.to_string());
    }
    let mut files: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "expected.tsv")
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} malformed specs", files.len());
    let mut seen_messages = std::collections::BTreeSet::new();
    for file in &files {
        let wanted = expected
            .get(file)
            .unwrap_or_else(|| panic!("{file} has no line in expected.tsv"));
        let relative = format!("tests/specs/invalid/{file}");
        let (code, stdout, stderr) = run(batchd().args(["validate", &relative]));
        assert_eq!(code, 64, "{file}: stdout {stdout} stderr {stderr}");
        let printed: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("batchd: "))
            .collect();
        let wanted: Vec<String> = wanted.iter().map(|e| format!("{relative}: {e}")).collect();
        assert_eq!(printed, wanted, "{file}");
        assert!(
            seen_messages.insert(wanted[0].split_once(": ").unwrap().1.to_string()),
            "{file} repeats another file's error"
        );
    }
}

#[test]
fn validate_reports_every_file_and_every_error() {
    let (code, stdout, stderr) = run(batchd().args([
        "validate",
        "examples/jobs/mlp-synthetic.toml",
        "tests/specs/invalid/misspelt-key.toml",
        "tests/specs/invalid/hidden-zero.toml",
    ]));
    assert_eq!(code, 64);
    assert!(stdout.contains("mlp-synthetic.toml: ok"));
    assert!(stderr.contains("misspelt-key.toml: model.hiden"));
    assert!(stderr.contains("misspelt-key.toml: model.hidden: missing"));
    assert!(stderr.contains("hidden-zero.toml: model.hidden[1]"));
}

#[test]
fn validate_json_gives_one_object_per_file() {
    let (code, stdout, _) = run(batchd().args([
        "validate",
        "--json",
        "examples/jobs/cnn-synthetic.toml",
        "tests/specs/invalid/negative-batch.toml",
    ]));
    assert_eq!(code, 64);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["valid"], true);
    assert_eq!(lines[1]["valid"], false);
    assert_eq!(lines[1]["errors"][0]["field"], "search.min_batch");
}

#[test]
fn unreadable_file_is_a_failure_not_invalid() {
    let (code, _, stderr) = run(batchd().args(["validate", "no/such/spec.toml"]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no such file"), "{stderr}");
}

#[test]
fn policies_lists_the_four_shipped_ones() {
    let (code, stdout, stderr) = run(batchd().arg("policies"));
    assert_eq!(code, 0, "{stderr}");
    let names: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["balanced", "generalization", "memory-safe", "throughput"]
    );
    assert!(stdout.contains("objective goodput"));
}

#[test]
fn shipped_policy_files_validate_as_policies() {
    let (code, stdout, stderr) = run(batchd().args(["validate", "--as", "policy", "policies"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
}

#[test]
fn a_broken_policy_folder_is_invalid_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fast.toml"), "objective = \"speed\"\n").unwrap();
    let (code, _, stderr) = run(batchd()
        .args(["policies", "--policies-dir"])
        .arg(dir.path()));
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("fast.toml: objective: unknown value `speed`"),
        "{stderr}"
    );
}

#[test]
fn extra_policies_from_a_folder_are_listed_and_usable() {
    let dir = tempfile::tempdir().unwrap();
    let balanced = std::fs::read_to_string(repo("policies/balanced.toml")).unwrap();
    std::fs::write(
        dir.path().join("tight.toml"),
        balanced
            .replace("name = \"balanced\"", "name = \"tight\"")
            .replace(
                "memory_headroom_fraction = 0.10",
                "memory_headroom_fraction = 0.5",
            ),
    )
    .unwrap();
    let (code, stdout, _) = run(batchd()
        .args(["policies", "--policies-dir"])
        .arg(dir.path()));
    assert_eq!(code, 0);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("tight") && l.contains("headroom 50%")),
        "{stdout}"
    );
}

#[test]
fn gpus_without_a_driver_falls_back_to_cpu() {
    let (code, stdout, stderr) = run(batchd().arg("gpus"));
    assert_eq!(code, 0, "{stderr}");
    if stdout.starts_with("No NVIDIA GPU found") {
        assert!(stdout.contains("CPU backend"), "{stdout}");
        assert!(stdout.contains("system memory"), "{stdout}");
        let (code, json, _) = run(batchd().args(["gpus", "--json"]));
        assert_eq!(code, 0);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["default_backend"], "cpu");
        assert_eq!(value["nvml_available"], false);
        assert!(value["system_memory"]["total_bytes"].as_u64().unwrap() > 0);
    } else {
        // A machine with a driver: the listing is the real one.
        assert!(stdout.starts_with("NVIDIA driver"), "{stdout}");
    }
}

#[test]
fn gpus_with_injected_fake_gpus() {
    let mut command = batchd();
    command
        .env("BATCHD_FAKE_GPUS", repo("tests/fixtures/fake-gpus.json"))
        .arg("gpus");
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("NVIDIA driver 580.159.04, CUDA 13.0, 2 GPUs"),
        "{stdout}"
    );
    assert!(stdout.contains("NVIDIA H200"));
    assert!(stdout.contains("4GiB / 140.4GiB"), "{stdout}");
    assert!(stdout.contains("pid 4242"));
    assert!(stdout.contains("python3"));
    assert!(stdout.contains("memory not reported"));
    assert!(stdout.contains("212W / 700W"), "{stdout}");

    let mut command = batchd();
    command
        .env("BATCHD_FAKE_GPUS", repo("tests/fixtures/fake-gpus.json"))
        .args(["gpus", "--json"]);
    let (code, stdout, _) = run(&mut command);
    assert_eq!(code, 0);
    let value: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["default_backend"], "cuda");
    assert_eq!(value["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(
        value["gpus"][0]["processes"][0]["used_memory_bytes"],
        3221225472u64
    );
    assert_eq!(
        value["gpus"][1]["utilization_gpu_percent"],
        serde_json::Value::Null
    );
}

#[test]
fn a_broken_fake_gpu_file_is_reported_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpus.json");
    std::fs::write(&path, "{ not json").unwrap();
    let mut command = batchd();
    command.env("BATCHD_FAKE_GPUS", &path).arg("gpus");
    let (code, stdout, stderr) = run(&mut command);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("No NVIDIA GPU found (cannot use fake GPU file"),
        "{stdout}"
    );
}

#[test]
fn config_flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        "state_dir = \"/srv/state\"\nmax_concurrent_jobs = 3\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(batchd().arg("--config").arg(&config).args([
        "config",
        "--jobs-dir",
        "/tmp/jobs",
        "--listen",
        "127.0.0.1:9999",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("state_dir = \"/srv/state\""), "{stdout}");
    assert!(stdout.contains("jobs_dir = \"/tmp/jobs\""), "{stdout}");
    assert!(stdout.contains("listen = \"127.0.0.1:9999\""), "{stdout}");
    assert!(stdout.contains("max_concurrent_jobs = 3"), "{stdout}");
}

#[test]
fn an_invalid_config_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchd.toml");
    std::fs::write(&config, "listen = \"everywhere\"\n").unwrap();
    let (code, _, stderr) = run(batchd().arg("--config").arg(&config).arg("config"));
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("batchd.toml: listen: "), "{stderr}");
}

#[test]
fn usage_errors_exit_2_and_help_works_for_every_subcommand() {
    let (code, _, _) = run(batchd().args(["validate"]));
    assert_eq!(code, 2);
    let (code, _, _) = run(batchd().args(["frobnicate"]));
    assert_eq!(code, 2);
    for sub in [
        "serve", "advise", "trial", "gpus", "validate", "policies", "config",
    ] {
        let (code, stdout, _) = run(batchd().args([sub, "--help"]));
        assert_eq!(code, 0, "{sub} --help");
        assert!(stdout.contains("Usage: batchd"), "{sub}: {stdout}");
        assert!(
            stdout.lines().count() > 5,
            "{sub} --help is too thin:\n{stdout}"
        );
    }
}
