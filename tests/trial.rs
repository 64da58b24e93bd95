//! Real trials on the CPU, each in a real worker process of the real binary:
//! every model kind on every data source it accepts, and every way a trial
//! can fail, including the ways a broken worker could try to report a
//! success that did not happen.

use std::path::Path;
use std::time::Duration;

use batchd::policy::PolicySet;
use batchd::spec::{parse_spec, JobSpec, SpecOrigin};
use batchd::trial::{
    CpuBackend, Fault, GradNoiseRequest, LrSchedule, Outcome, ProcessTrialRunner, RunnerOptions,
    TrialDevice, TrialRequest, TrialResult, TrialRunner,
};
use batchd::validation::Syntax;

fn spec(toml: &str) -> JobSpec {
    let origin = SpecOrigin {
        label: "test.toml".into(),
        default_name: Some("test".into()),
        base_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")),
    };
    parse_spec(toml, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap_or_else(|e| panic!("{e}"))
}

fn runner() -> ProcessTrialRunner {
    let mut options = RunnerOptions::current_exe().unwrap();
    options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
    ProcessTrialRunner::new(options)
}

fn run(request: TrialRequest) -> TrialResult {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(runner().run(request))
}

fn request(spec: JobSpec, batch: u64, steps: u32, lr: f64) -> TrialRequest {
    let mut request = TrialRequest::new(spec, TrialDevice::Cpu, batch, steps, lr);
    request.deadline = Duration::from_secs(120);
    request
}

const MLP_SYNTHETIC: &str = r#"
[model]
kind = "mlp"
input_size = 32
hidden = [64]
classes = 4
[data]
kind = "synthetic"
samples = 4096
[optimizer]
kind = "adam"
"#;

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// 50 steps at a sane LR: the loss must fall clearly.
fn assert_learns(name: &str, toml: &str, batch: u64, lr: f64) -> TrialResult {
    let mut req = request(spec(toml), batch, 50, lr);
    req.record.validation_loss = true;
    let result = run(req);
    assert_eq!(
        result.outcome,
        Outcome::Ok,
        "{name}: {:?}\n{}",
        result.reason,
        result.stderr_tail
    );
    assert_eq!(result.losses.len(), 50);
    let early = mean(&result.losses[..5]);
    let late = mean(&result.losses[45..]);
    assert!(
        late < 0.85 * early,
        "{name}: loss did not fall: {early:.4} -> {late:.4}"
    );
    assert!(result.validation_loss.unwrap().is_finite(), "{name}");
    assert!(result.samples_per_second.unwrap() > 0.0, "{name}");
    assert!(result.peak_memory_bytes.unwrap() > 1 << 20, "{name}");
    assert!(result.parameter_count.unwrap() > 0, "{name}");
    result
}

#[test]
fn trials_of_one_search_parse_a_csv_once_and_a_changed_one_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits.csv");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/digits.csv"),
        &data,
    )
    .unwrap();
    let toml = format!(
        "[model]\nkind = \"mlp\"\nhidden = [16]\nclasses = 10\n[data]\nkind = \"csv\"\npath = {:?}\nlabel_column = \"label\"\n[optimizer]\nkind = \"adam\"\n",
        data.display().to_string()
    );
    let cache = dir.path().join("cache");
    let trial = |batch: u64| {
        let mut request = request(spec(&toml), batch, 5, 1e-3);
        request.data_cache_dir = Some(cache.clone());
        let result = run(request);
        assert!(
            result.is_ok(),
            "{:?}: {}",
            result.reason,
            result.stderr_tail
        );
        result
    };
    let first = trial(16);
    assert_eq!(first.data_from_cache, Some(false), "the first trial parses");
    let later: Vec<TrialResult> = [32, 64].into_iter().map(trial).collect();
    assert!(later.iter().all(|r| r.data_from_cache == Some(true)));
    assert_eq!(later[0].train_samples, first.train_samples);
    eprintln!(
        "data load: parsed {:.1} ms, cached {:.1} ms",
        first.data_seconds.unwrap() * 1e3,
        later[0].data_seconds.unwrap() * 1e3
    );
    // A changed file is parsed again.
    let mut text = std::fs::read_to_string(&data).unwrap();
    let row = text.lines().nth(1).unwrap().to_owned();
    text.push_str(&row);
    text.push('\n');
    std::fs::write(&data, text).unwrap();
    let changed = trial(16);
    assert_eq!(changed.data_from_cache, Some(false));
}

#[test]
fn mlp_learns_teacher_csv_and_idx_data() {
    assert_learns("mlp/synthetic", MLP_SYNTHETIC, 64, 3e-3);
    let csv = r#"
[model]
kind = "mlp"
hidden = [64]
classes = 10
[data]
kind = "csv"
path = "digits.csv"
label_column = "label"
[optimizer]
kind = "sgd"
momentum = 0.9
"#;
    assert_learns("mlp/csv", csv, 64, 0.05);
    let idx = r#"
[model]
kind = "mlp"
hidden = [64]
classes = 10
[data]
kind = "idx"
images = "digits-images.idx"
labels = "digits-labels.idx"
[optimizer]
kind = "adamw"
"#;
    assert_learns("mlp/idx", idx, 64, 3e-3);
}

#[test]
fn cnn_learns_teacher_csv_and_idx_data() {
    let synthetic = r#"
[model]
kind = "cnn"
height = 8
width = 8
channels = 2
stages = [8, 16]
classes = 4
[data]
kind = "synthetic"
samples = 2048
[optimizer]
kind = "adam"
"#;
    assert_learns("cnn/synthetic", synthetic, 32, 3e-3);
    let csv = r#"
[model]
kind = "cnn"
height = 8
width = 8
channels = 1
stages = [8, 16]
classes = 10
[data]
kind = "csv"
path = "digits.csv"
[optimizer]
kind = "adam"
"#;
    assert_learns("cnn/csv", csv, 32, 3e-3);
    let idx = r#"
[model]
kind = "cnn"
height = 8
width = 8
channels = 1
stages = [8, 16]
classes = 10
[data]
kind = "idx"
images = "digits-images.idx"
labels = "digits-labels.idx"
[optimizer]
kind = "sgd"
momentum = 0.9
nesterov = true
"#;
    assert_learns("cnn/idx", idx, 32, 0.05);
}

#[test]
fn transformer_learns_markov_and_real_text() {
    let synthetic = r#"
[model]
kind = "transformer"
vocab_size = 64
context_length = 16
d_model = 32
layers = 1
heads = 2
[data]
kind = "synthetic"
samples = 1024
[optimizer]
kind = "adamw"
"#;
    assert_learns("transformer/synthetic", synthetic, 16, 3e-3);
    let text = r#"
[model]
kind = "transformer"
context_length = 16
d_model = 32
layers = 1
heads = 2
[data]
kind = "text"
path = "corpus.txt"
[optimizer]
kind = "adam"
"#;
    assert_learns("transformer/text", text, 16, 3e-3);
}

#[test]
fn an_absurd_learning_rate_diverges() {
    let sgd = MLP_SYNTHETIC.replace("kind = \"adam\"", "kind = \"sgd\"\nmomentum = 0.9");
    let result = run(request(spec(&sgd), 64, 30, 1e4));
    assert_eq!(result.outcome, Outcome::Diverged, "{:?}", result.reason);
    let reason = result.reason.unwrap();
    assert!(
        reason.contains("exploded") || reason.contains("NaN") || reason.contains("inf"),
        "{reason}"
    );
    assert!(result.steps_completed < 30);
}

#[test]
fn a_memory_limit_below_the_need_is_out_of_memory_with_the_peak() {
    let big = MLP_SYNTHETIC.replace("hidden = [64]", "hidden = [1024, 1024]");
    let mut req = request(spec(&big), 16384, 5, 1e-3);
    req.memory_limit_bytes = Some(96 << 20);
    let result = run(req);
    assert_eq!(
        result.outcome,
        Outcome::OutOfMemory,
        "{:?}\n{}",
        result.reason,
        result.stderr_tail
    );
    // The allocation that was refused counts towards what the trial needed.
    let peak = result.peak_memory_bytes.expect("the peak is measured");
    assert!(peak > 96 << 20, "peak {peak}");
    assert!(
        result
            .reason
            .as_deref()
            .unwrap()
            .contains("needed at least"),
        "{:?}",
        result.reason
    );
    assert_eq!(result.memory_limit_bytes, Some(96 << 20));
    // The same trial with room to spare fits.
    let mut req = request(spec(&big), 16384, 5, 1e-3);
    req.memory_limit_bytes = Some(4 << 30);
    let result = run(req);
    assert_eq!(result.outcome, Outcome::Ok, "{:?}", result.reason);
    assert!(
        result.peak_memory_bytes.unwrap() > 96 << 20,
        "the big batch really needs more than the small limit"
    );
}

#[test]
fn a_panic_on_a_helper_thread_is_never_ok() {
    let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
    req.fault = Some(Fault::PanicOnHelperThread);
    let result = run(req);
    assert_ne!(result.outcome, Outcome::Ok);
    // The injected panic reads like cubecl's allocation failure.
    assert_eq!(result.outcome, Outcome::OutOfMemory, "{:?}", result.reason);
    assert!(result
        .reason
        .unwrap()
        .contains("panic on thread 'device-helper'"));
    assert_eq!(result.exit.unwrap().code, Some(70));
}

#[test]
fn garbage_successes_are_caught_by_the_cross_checks() {
    for fault in [Fault::ImpossibleSpeed, Fault::FrozenLoss] {
        let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
        req.fault = Some(fault);
        let result = run(req);
        assert_eq!(
            result.outcome,
            Outcome::Crashed,
            "{fault:?}: {:?}",
            result.reason
        );
        assert!(result.reason.unwrap().contains("cross-check"));
    }
}

#[test]
fn a_hung_worker_is_killed_at_its_deadline() {
    let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
    req.fault = Some(Fault::Hang);
    req.deadline = Duration::from_secs(2);
    let result = run(req);
    assert_eq!(result.outcome, Outcome::Timeout);
    assert!(
        result.wall_seconds >= 2.0 && result.wall_seconds < 10.0,
        "{}",
        result.wall_seconds
    );
    assert_eq!(result.exit.unwrap().signal, Some(libc::SIGKILL));
}

#[test]
fn an_aborting_worker_is_a_crash() {
    let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
    req.fault = Some(Fault::Abort);
    let result = run(req);
    assert_eq!(result.outcome, Outcome::Crashed, "{:?}", result.reason);
    assert_eq!(result.exit.unwrap().signal, Some(libc::SIGABRT));
}

#[test]
fn a_leaking_worker_is_stopped_before_it_hurts_the_machine() {
    let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
    req.fault = Some(Fault::LeakMemory);
    req.memory_limit_bytes = Some(256 << 20);
    let result = run(req);
    assert_eq!(result.outcome, Outcome::OutOfMemory, "{:?}", result.reason);
    // Stopped near the limit, not gigabytes later.
    assert!(
        result.peak_memory_bytes.unwrap() < 512 << 20,
        "{:?}",
        result.peak_memory_bytes
    );
}

#[test]
fn cpu_trials_say_which_backend_trained_and_refuse_one_not_built() {
    let result = run(request(spec(MLP_SYNTHETIC), 64, 10, 1e-3));
    assert_eq!(result.outcome, Outcome::Ok, "{:?}", result.reason);
    assert_eq!(result.backend, "flex", "auto picks Flex for an MLP");
    for backend in CpuBackend::BUILT {
        let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
        req.cpu_backend = *backend;
        let result = run(req);
        assert_eq!(
            result.outcome,
            Outcome::Ok,
            "{backend:?}: {:?}",
            result.reason
        );
        assert_eq!(result.backend, backend.name());
    }
    if !CpuBackend::BUILT.contains(&CpuBackend::Candle) {
        let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
        req.cpu_backend = CpuBackend::Candle;
        let result = run(req);
        assert_eq!(result.outcome, Outcome::InvalidRequest);
        let reason = result.reason.unwrap();
        assert!(
            reason.contains("built without the candle CPU backend"),
            "{reason}"
        );
    }
}

#[test]
fn invalid_requests_are_reported_as_such() {
    let mut req = request(spec(MLP_SYNTHETIC), 64, 10, 1e-3);
    req.schedule = LrSchedule::Constant { lr: -1.0 };
    let result = run(req);
    assert_eq!(result.outcome, Outcome::InvalidRequest);
    assert!(result.reason.unwrap().contains("learning rate"));

    let missing = r#"
[model]
kind = "mlp"
hidden = [8]
classes = 10
[data]
kind = "csv"
path = "no-such.csv"
[optimizer]
kind = "sgd"
"#;
    let result = run(request(spec(missing), 8, 5, 0.1));
    assert_eq!(result.outcome, Outcome::InvalidRequest);
    assert!(result.reason.unwrap().contains("no-such.csv"));

    let mismatch = MLP_SYNTHETIC
        .replace(
            "kind = \"synthetic\"\nsamples = 4096",
            "kind = \"csv\"\npath = \"digits.csv\"",
        )
        .replace("input_size = 32", "input_size = 50")
        .replace("classes = 4", "classes = 10");
    let result = run(request(spec(&mismatch), 8, 5, 0.1));
    assert_eq!(result.outcome, Outcome::InvalidRequest);
    assert!(result
        .reason
        .unwrap()
        .contains("input_size is 50 but the data has 64"));
}

#[test]
fn sweeps_and_gradient_noise_are_recorded() {
    let mut req = request(spec(MLP_SYNTHETIC), 128, 30, 1e-3);
    req.schedule = LrSchedule::ExponentialSweep {
        min_lr: 1e-5,
        max_lr: 1e-1,
    };
    req.record.grad_noise = Some(GradNoiseRequest {
        small_batch: 8,
        measurements: 6,
        from_step: None,
    });
    let result = run(req);
    assert!(
        matches!(result.outcome, Outcome::Ok | Outcome::Diverged),
        "{:?}",
        result.reason
    );
    assert!((result.learning_rates[0] - 1e-5).abs() < 1e-12);
    assert!(result.learning_rates.windows(2).all(|w| w[1] > w[0]));
    let noise = result.grad_noise.expect("gradient norms recorded");
    assert_eq!(noise.big_sq_norms.len(), noise.small_sq_norms.len());
    assert!(!noise.big_sq_norms.is_empty());
    // A gradient from 8 samples is noisier, so its squared norm is larger.
    assert!(
        noise.small_mean() > noise.big_mean(),
        "small {} big {}",
        noise.small_mean(),
        noise.big_mean()
    );
    // Adam: the same norms divided by Adam's sqrt(v_hat) + eps, where
    // every coordinate is scaled to about one: far above the raw norms
    // here, and still larger for the smaller batch.
    let pre = noise
        .preconditioned()
        .expect("Adam's preconditioned norms recorded at every measured step");
    assert_eq!(pre.big_sq_norms.len(), noise.big_sq_norms.len());
    assert!(pre.big_mean() > noise.big_mean(), "{pre:?}");
    assert!(pre.small_mean() > pre.big_mean(), "{pre:?}");
}

#[test]
fn sgd_records_raw_gradient_norms_only() {
    let text = MLP_SYNTHETIC.replace("kind = \"adam\"", "kind = \"sgd\"");
    let mut req = request(spec(&text), 64, 12, 1e-2);
    req.record.grad_noise = Some(GradNoiseRequest {
        small_batch: 8,
        measurements: 4,
        from_step: Some(6),
    });
    let result = run(req);
    let noise = result.grad_noise.expect("gradient norms recorded");
    assert_eq!(noise.big_sq_norms.len(), 4);
    assert!(noise.preconditioned_big_sq_norms.is_empty() && noise.preconditioned().is_none());
}

#[test]
fn the_trial_command_prints_the_documented_json() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .args([
            "trial",
            "examples/jobs/mlp-synthetic.toml",
            "--batch-size",
            "128",
            "--steps",
            "8",
            "--device",
            "cpu",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in [
        "outcome",
        "batch_size",
        "steps",
        "loss_first",
        "loss_last",
        "samples_per_second",
        "peak_memory_bytes",
        "startup_seconds",
        "device",
    ] {
        assert!(!value[field].is_null(), "missing {field}: {value}");
    }
    assert_eq!(value["outcome"], "ok");
    assert_eq!(value["batch_size"], 128);

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .args([
            "trial",
            "examples/jobs/mlp-synthetic.toml",
            "--batch-size",
            "4096",
            "--steps",
            "3",
            "--device",
            "cpu",
            "--memory-limit",
            "16MiB",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("trial mlp-synthetic: out_of_memory"),
        "{stdout}"
    );
}

/// A built-in trial whose batch grows: the LR takes each phase's factor at
/// the step its samples are reached, and the speed counts the samples of
/// every batch size.
#[test]
fn a_built_in_trial_follows_its_batch_schedule() {
    let mut ramped = request(spec(MLP_SYNTHETIC), 16, 8, 1e-3);
    ramped.batch_schedule = Some(batchd::trial::BatchSchedule {
        phases: vec![
            batchd::trial::BatchPhase {
                from_sample: 0,
                batch_size: 16,
                lr_factor: 1.0,
            },
            batchd::trial::BatchPhase {
                from_sample: 48,
                batch_size: 64,
                lr_factor: 2.0,
            },
        ],
    });
    let result = run(ramped);
    assert_eq!(result.outcome, Outcome::Ok, "{:?}", result.reason);
    assert_eq!(result.steps_completed, 8);
    // Steps 0-2 train 16 each (48 samples), then 64s at twice the LR.
    assert_eq!(
        result.learning_rates,
        vec![1e-3, 1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 2e-3, 2e-3]
    );
    assert!(result.losses.iter().all(|l| l.is_finite()));
    // A schedule that does not start at the trial's batch is refused.
    let mut bad = request(spec(MLP_SYNTHETIC), 32, 8, 1e-3);
    bad.batch_schedule = Some(batchd::trial::BatchSchedule {
        phases: vec![batchd::trial::BatchPhase {
            from_sample: 0,
            batch_size: 16,
            lr_factor: 1.0,
        }],
    });
    let refused = run(bad);
    assert_eq!(refused.outcome, Outcome::InvalidRequest);
    assert!(refused.reason.unwrap().contains("first batch"));
}
