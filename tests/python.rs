//! The Python package (`python/`): its pytest suite, run against this
//! build's binary, and its LR schedules against the Rust ones, number for
//! number.
//!
//! The interpreter is `$BATCHD_PYTHON`, else the first of `python3` and
//! `/usr/bin/python3` that has pytest. Without one the tests say
//! "skipped", except under CI (`CI` set), where that is a failure:
//! `.ci/run` installs pytest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use batchd::search::Recommendation;
use batchd::trial::LrSchedule;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An interpreter with pytest, or `None` (a skip) outside CI.
fn python() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("BATCHD_PYTHON") {
        Some(explicit) => vec![PathBuf::from(explicit)],
        None => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    let found = candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-m", "pytest", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no python3 with pytest (CI installs python3-pytest)"
        );
        eprintln!("skipped: no python3 with pytest (set BATCHD_PYTHON)");
    }
    found
}

#[test]
fn the_python_package_passes_its_tests_against_this_build() {
    let Some(python) = python() else { return };
    let output = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "python/tests",
            "-q",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(repo())
        .env("BATCHD_BIN", env!("CARGO_BIN_EXE_batchd"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("pytest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "{}: {}",
        python.display(),
        text.lines().last().unwrap_or("")
    );
    assert!(output.status.success(), "pytest failed:\n{text}");
    assert!(text.contains(" passed"), "{text}");
}

/// Every schedule batchd hands a command trial, and the recommended one,
/// evaluated by Rust and by the Python package at the same steps: the
/// numbers must be the same doubles.
#[test]
fn python_schedules_give_the_rust_numbers() {
    let Some(python) = python() else { return };
    let schedules = [
        LrSchedule::Constant { lr: 0.1 },
        LrSchedule::Warmup {
            lr: 3e-4,
            warmup_steps: 7,
        },
        LrSchedule::Warmup {
            lr: 3e-4,
            warmup_steps: 0,
        },
        LrSchedule::ExponentialSweep {
            min_lr: 1e-7,
            max_lr: 3.0,
        },
        LrSchedule::WarmupCosine {
            lr: 1.7e-3,
            warmup_steps: 13,
            final_fraction: 0.1,
        },
        LrSchedule::WarmupCosine {
            lr: 0.05,
            warmup_steps: 0,
            final_fraction: 0.0,
        },
        LrSchedule::WarmupCosine {
            lr: 0.05,
            warmup_steps: 5,
            final_fraction: 0.3,
        },
    ];
    let mut cases = Vec::new();
    for schedule in &schedules {
        for steps in [1u32, 2, 6, 100, 997] {
            for step in (0..steps)
                .step_by((steps as usize / 40).max(1))
                .chain([steps - 1])
            {
                cases.push(serde_json::json!({
                    "schedule": schedule,
                    "step": step,
                    "steps": steps,
                    "rust_bits": schedule.lr_at(step, steps).to_bits(),
                }));
            }
        }
    }
    // The recommended schedule, on a real recommendation.
    let text =
        std::fs::read_to_string(repo().join("python/tests/data/recommendation.json")).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["evidence"]["trials"] = value["evidence"]["trials"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into();
    let recommendation: Recommendation = serde_json::from_value(value).unwrap();
    let total = recommendation.schedule.total_updates.unwrap_or(1000);
    let mut recommended = Vec::new();
    for total_steps in [total, 50, 1] {
        for step in (0..total_steps)
            .step_by((total_steps as usize / 60).max(1))
            .chain([total_steps - 1])
        {
            recommended.push(serde_json::json!({
                "step": step,
                "total": total_steps,
                "rust_bits": recommendation.lr_at(step, total_steps).unwrap().to_bits(),
            }));
        }
    }
    let input = serde_json::json!({"cases": cases, "recommended": recommended});
    let script = r#"
import json, struct, sys
from batchd import Recommendation
from batchd.trial import schedule_lr
data = json.load(sys.stdin)
rec = Recommendation.load("python/tests/data/recommendation.json")
out = [schedule_lr(c["schedule"], c["step"], c["steps"]) for c in data["cases"]]
out += [rec.lr_at(c["step"], c["total"]) for c in data["recommended"]]
# The doubles' bits: no decimal printing or parsing in between.
print(json.dumps([struct.unpack("<Q", struct.pack("<d", x))[0] for x in out]))
"#;
    let mut child = Command::new(&python)
        .args(["-c", script])
        .current_dir(repo())
        .env("PYTHONPATH", repo().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let bits: Vec<u64> = serde_json::from_slice(&output.stdout).unwrap();
    let python_values: Vec<f64> = bits.into_iter().map(f64::from_bits).collect();
    let rust_values: Vec<f64> = cases
        .iter()
        .chain(&recommended)
        .map(|c| f64::from_bits(c["rust_bits"].as_u64().unwrap()))
        .collect();
    assert_eq!(python_values.len(), rust_values.len());
    let differing: Vec<String> = python_values
        .iter()
        .zip(&rust_values)
        .zip(cases.iter().chain(&recommended))
        .filter(|((p, r), _)| p.to_bits() != r.to_bits())
        .map(|((p, r), case)| format!("{case}: python {p:e} rust {r:e}"))
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} differ:\n{}",
        differing.len(),
        rust_values.len(),
        differing.join("\n")
    );
    eprintln!("{} LRs identical in Rust and Python", rust_values.len());
}
