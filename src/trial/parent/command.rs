//! Trials of `runner = "command"` jobs: the user's own training script
//! (PyTorch, JAX, anything), run once per trial.
//!
//! The protocol (`docs/command-runner.md`): batchd starts the command in
//! the job's folder with a clean environment plus `BATCHD_*` variables
//! (batch size, steps, LR schedule, seed, device, report path); the command
//! appends one JSON line per step to `$BATCHD_REPORT`. batchd supervises it
//! like its own workers: deadline, memory of the whole process group (RSS on
//! CPU, NVML per process on CUDA), stderr tail; then it classifies the end
//! from the exit status, the out-of-memory phrases of PyTorch, JAX and
//! TensorFlow, and the report, which must be complete and well-formed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::Deserialize;
use tokio::process::Command;

use super::supervise::{
    apply_report, collect_stderr_tail, effective_limit, empty_result, failed, supervise, Finished,
    MemorySampler, RunnerOptions,
};
use crate::spec::CommandSpec;
use crate::trial::divergence::first_divergence;
use crate::trial::{
    GradNoiseSample, Outcome, TrialDevice, TrialRequest, TrialResult, WorkerReport,
};

/// Variables the command inherits from batchd's environment; everything
/// else is cleared. PATH finds interpreters, HOME and the locale keep
/// Python and friends sane, the CUDA ones find the toolkit.
pub const INHERITED_VARIABLES: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "CUDA_HOME",
    "CUDA_PATH",
];

/// The environment of one trial's command.
pub fn environment(
    request: &TrialRequest,
    command: &CommandSpec,
    report: &Path,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = INHERITED_VARIABLES
        .iter()
        .filter_map(|name| Some((name.to_string(), inherited(name)?)))
        .collect();
    vars.extend(
        command
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let (device, visible) = match request.device {
        TrialDevice::Cpu => ("cpu", String::new()),
        TrialDevice::Cuda(index) => ("cuda", index.to_string()),
    };
    let schedule = serde_json::to_string(&request.schedule).unwrap_or_default();
    let mut set = |name: &str, value: String| vars.push((name.to_string(), value));
    set("BATCHD_BATCH_SIZE", request.batch_size.to_string());
    set("BATCHD_STEPS", request.steps.to_string());
    set("BATCHD_WARMUP_STEPS", request.warmup_steps.to_string());
    set(
        "BATCHD_LR",
        request.schedule.lr_at(0, request.steps).to_string(),
    );
    set("BATCHD_LR_SCHEDULE", schedule);
    set("BATCHD_SEED", request.seed.to_string());
    set("BATCHD_DEVICE", device.to_string());
    // The trial's GPU becomes the command's only (and first) GPU; a CPU
    // trial sees none.
    set("CUDA_VISIBLE_DEVICES", visible);
    set("BATCHD_PRECISION", request.spec.precision.to_string());
    set("BATCHD_REPORT", report.display().to_string());
    // Marks every process of the trial (children inherit it) with its
    // owner, so a daemon restarted after `kill -9` can find what its
    // predecessor left behind: the parent-death signal reaches only the
    // trial's first process.
    set(OWNER_VARIABLE, std::process::id().to_string());
    set(
        "BATCHD_VALIDATE",
        u8::from(request.record.validation_loss).to_string(),
    );
    if let Some(noise) = request.record.grad_noise {
        set(
            "BATCHD_GRAD_NOISE_SMALL_BATCH",
            noise.small_batch.to_string(),
        );
        set(
            "BATCHD_GRAD_NOISE_MEASUREMENTS",
            noise.measurements.to_string(),
        );
    }
    if let Some(limit) = request.memory_limit_bytes {
        set("BATCHD_MEMORY_LIMIT_BYTES", limit.to_string());
    }
    vars
}

/// One line of the command's report.
#[derive(Debug, Deserialize)]
struct ReportLine {
    step: u32,
    /// `null` (or `NaN`) for a non-finite loss.
    loss: Option<f64>,
    /// Seconds on any monotonic clock, taken when the step finished.
    time: f64,
    samples: Option<u64>,
    lr: Option<f64>,
    grad_norm_sq: Option<f64>,
    grad_norm_sq_small: Option<f64>,
    val_loss: Option<f64>,
    parameters: Option<u64>,
    train_samples: Option<u64>,
}

/// JSON has no NaN or Infinity, but Python's `json.dumps` writes them.
fn tolerate_non_finite(line: &str) -> String {
    line.replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null")
}

/// What is wrong with a command's report file, naming the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct BadReport(pub String);

/// Turns the report file into the report batchd's own worker would send.
/// `Err` says what is wrong with the file, naming the line.
pub fn read_report(text: &str, request: &TrialRequest) -> Result<WorkerReport, BadReport> {
    let mut report = WorkerReport {
        outcome: Some(Outcome::Ok),
        backend: "command".into(),
        device_name: request.device.to_string(),
        precision: Some(request.spec.precision),
        train_samples: request.spec.training.dataset_size,
        ..WorkerReport::default()
    };
    let mut times = Vec::new();
    let mut samples = Vec::new();
    let mut noise_steps = Vec::new();
    let mut noise = request.record.grad_noise.map(|n| GradNoiseSample {
        big_batch: request.batch_size,
        small_batch: n.small_batch,
        big_sq_norms: Vec::new(),
        small_sq_norms: Vec::new(),
    });
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let line: ReportLine = serde_json::from_str(&tolerate_non_finite(raw)).map_err(|e| {
            let shown: String = raw.chars().take(80).collect();
            BadReport(format!(
                "report line {number} is not a step record ({e}): `{shown}`"
            ))
        })?;
        let expected = report.losses.len() as u32;
        if line.step != expected {
            return Err(BadReport(format!(
                "report line {number} is step {} where step {expected} was due (steps count from 0, in order)",
                line.step
            )));
        }
        if line.step >= request.steps {
            return Err(BadReport(format!(
                "report line {number} is step {}, but the trial has {} steps",
                line.step, request.steps
            )));
        }
        if !line.time.is_finite() || times.last().is_some_and(|t| line.time < *t) {
            return Err(BadReport(format!(
                "report line {number}: `time` {} goes backwards (use a monotonic clock)",
                line.time
            )));
        }
        report
            .losses
            .push(line.loss.filter(|l| l.is_finite()).unwrap_or(f64::NAN));
        report.learning_rates.push(
            line.lr
                .unwrap_or_else(|| request.schedule.lr_at(line.step, request.steps)),
        );
        times.push(line.time);
        samples.push(line.samples.unwrap_or(request.batch_size));
        if let (Some(sample), Some(big), Some(small)) =
            (noise.as_mut(), line.grad_norm_sq, line.grad_norm_sq_small)
        {
            sample.big_sq_norms.push(big);
            sample.small_sq_norms.push(small);
            noise_steps.push(line.step);
        }
        if line.val_loss.is_some() {
            report.validation_loss = line.val_loss;
        }
        if line.parameters.is_some() {
            report.parameter_count = line.parameters.unwrap_or(0);
        }
        if line.train_samples.is_some() {
            report.train_samples = line.train_samples;
        }
    }
    report.steps_completed = report.losses.len() as u32;
    if let Some((step, reason)) = first_divergence(&report.losses, &report.learning_rates) {
        report.outcome = Some(Outcome::Diverged);
        report.reason = Some(reason);
        report.losses.truncate(step + 1);
        report.learning_rates.truncate(step + 1);
        report.steps_completed = step as u32 + 1;
    }
    // Speed over the steps after warm-up, leaving out the steps that also
    // measured a small batch's gradient (they do extra work).
    let timed: Vec<usize> = (1..times.len())
        .filter(|&i| i as u32 >= request.warmup_steps && !noise_steps.contains(&(i as u32)))
        .collect();
    let mut durations: Vec<f64> = timed.iter().map(|&i| times[i] - times[i - 1]).collect();
    let seconds: f64 = durations.iter().sum();
    let timed_samples: u64 = timed.iter().map(|&i| samples[i]).sum();
    if seconds > 0.0 {
        report.samples_per_second = Some(timed_samples as f64 / seconds);
        durations.sort_by(f64::total_cmp);
        report.step_seconds_median = durations.get(durations.len() / 2).copied();
    }
    if let Some(sample) = noise {
        if sample.big_sq_norms.is_empty() {
            report.warnings.push(
                "the command reported no grad_norm_sq/grad_norm_sq_small pairs; the gradient noise scale cannot be measured".into(),
            );
        } else {
            report.grad_noise = Some(sample);
        }
    }
    if request.record.validation_loss && report.validation_loss.is_none() {
        report
            .warnings
            .push("BATCHD_VALIDATE was set but the command reported no val_loss".into());
    }
    Ok(report)
}

/// A report file of its own for each trial.
fn report_path() -> PathBuf {
    static TRIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = TRIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "batchd-report-{}-{serial}.jsonl",
        std::process::id()
    ))
}

/// The environment variable naming the batchd process a trial belongs to.
const OWNER_VARIABLE: &str = "BATCHD_TRIAL_OWNER";

/// Kills what the trials of dead batchd processes left running: every
/// process carrying [`OWNER_VARIABLE`] whose owner is gone, with its whole
/// process group. Trials of a live batchd (another daemon, a CLI search)
/// are left alone. Returns how many processes were found. A process that
/// cleared its environment and left the group escapes this sweep.
pub fn kill_orphaned_trials() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // SAFETY: getpgrp has no preconditions.
    let own_group = unsafe { libc::getpgrp() };
    let marker = format!("{OWNER_VARIABLE}=");
    let mut found = 0;
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let owner = environ
            .split(|b| *b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok())
            .find_map(|var| var.strip_prefix(&marker))
            .and_then(|owner| owner.parse::<i32>().ok());
        let Some(owner) = owner else { continue };
        let owner_alive = std::path::Path::new(&format!("/proc/{owner}")).exists();
        if owner_alive || owner == std::process::id() as i32 {
            continue;
        }
        found += 1;
        // SAFETY: getpgid and kill on a pid read from /proc; a process that
        // exited meanwhile makes them fail harmlessly.
        unsafe {
            let group = libc::getpgid(pid);
            if group > 1 && group != own_group {
                libc::kill(-group, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
    found
}

/// Kills a trial's whole process group when dropped: at the trial's end
/// (a data loader worker can outlive its parent) or when the search that
/// awaited it is cancelled.
struct GroupKiller(u32);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: signalling the process group this trial created.
            unsafe {
                libc::kill(-(self.0 as i32), libc::SIGKILL);
            }
        }
    }
}

/// Runs one trial of a command job.
pub async fn run(
    options: &RunnerOptions,
    request: TrialRequest,
    command: &CommandSpec,
) -> TrialResult {
    let started = Instant::now();
    let limit = effective_limit(&request);
    let mut result = empty_result(&request, limit);
    result.backend = "command".into();
    if let Err(reason) = request.check() {
        return failed(result, Outcome::InvalidRequest, reason.to_string(), started);
    }
    let Some(program) = command.argv.first() else {
        return failed(
            result,
            Outcome::InvalidRequest,
            "the command is empty".into(),
            started,
        );
    };
    let report_file = report_path();
    if let Err(error) = std::fs::write(&report_file, b"") {
        let reason = format!(
            "cannot create the report file {}: {error}",
            report_file.display()
        );
        return failed(result, Outcome::Crashed, reason, started);
    }
    let mut process = Command::new(program);
    process
        .args(&command.argv[1..])
        .current_dir(&command.workdir)
        .env_clear()
        .envs(environment(&request, command, &report_file, |name| {
            std::env::var(name).ok()
        }))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        process.pre_exec(|| {
            // Dies with batchd, and can never gain privileges (no setuid).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => {
            let _ = std::fs::remove_file(&report_file);
            let reason = format!(
                "cannot start `{program}` in {}: {error}",
                command.workdir.display()
            );
            return failed(result, Outcome::Crashed, reason, started);
        }
    };
    let pid = child.id().unwrap_or(0);
    let group = GroupKiller(pid);
    let stderr_tail = collect_stderr_tail(child.stderr.take());
    let mut sampler = MemorySampler::new(request.device, pid, true, options.gpu_probe.clone());
    let (exit, killed) = supervise(
        &mut child,
        &mut sampler,
        request.deadline,
        options.sample_interval,
        limit,
        // Never 0: kill(-0) would signal batchd's own process group.
        Some(pid).filter(|&pid| pid > 0),
    )
    .await;
    drop(group);
    let stderr_tail = stderr_tail.await.unwrap_or_default();
    let text = std::fs::read_to_string(&report_file).unwrap_or_default();
    let _ = std::fs::remove_file(&report_file);
    let parsed = (!text.trim().is_empty()).then(|| read_report(&text, &request));

    // Only a command that exited 0 vouches for its report; otherwise the
    // exit (and stderr) decides, and the partial report only adds losses.
    let vouched = match (&parsed, exit.code) {
        (Some(Ok(report)), Some(0)) => Some(report.clone()),
        (Some(Err(reason)), Some(0)) => Some(WorkerReport {
            outcome: Some(Outcome::Crashed),
            reason: Some(format!("garbled report: {reason}")),
            ..WorkerReport::default()
        }),
        (None, Some(0)) => Some(WorkerReport {
            outcome: Some(Outcome::Crashed),
            reason: Some(
                "exited 0 without writing a step to $BATCHD_REPORT (see docs/command-runner.md)"
                    .into(),
            ),
            ..WorkerReport::default()
        }),
        _ => None,
    };
    let peak = sampler.peak;
    let source = match request.device {
        TrialDevice::Cpu => "rss",
        TrialDevice::Cuda(_) => "nvml",
    };
    let finished = Finished {
        exit,
        killed,
        stderr_tail,
        peak_memory_bytes: peak,
        peak_memory_source: source,
        device_memory_total_bytes: sampler.device_total,
        memory_limit_bytes: limit,
        foreign: true,
    };
    let verdict = finished.classify(&request, vouched.as_ref());
    if let Some(Ok(report)) = parsed {
        apply_report(&mut result, report);
    }
    finished.record(&mut result, verdict, started);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::spec::{parse_spec, SpecOrigin};
    use crate::trial::{GradNoiseRequest, LrSchedule};
    use crate::validation::Syntax;

    fn request(steps: u32) -> TrialRequest {
        let text =
            "runner = \"command\"\ncommand = [\"python3\", \"train.py\"]\nworkdir = \"/tmp\"\n\
                    environment = { OMP_NUM_THREADS = \"2\" }\n[optimizer]\nkind = \"sgd\"\n";
        let origin = SpecOrigin {
            label: "t.toml".into(),
            default_name: Some("t".into()),
            base_dir: None,
        };
        let spec = parse_spec(text, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap();
        let mut request = TrialRequest::new(spec, TrialDevice::Cuda(1), 64, steps, 0.1);
        request.warmup_steps = 1;
        request
    }

    fn line(step: u32, loss: &str, time: f64) -> String {
        format!("{{\"step\": {step}, \"loss\": {loss}, \"time\": {time}}}\n")
    }

    #[test]
    fn the_environment_is_clean_plus_the_documented_variables() {
        let mut request = request(5);
        request.schedule = LrSchedule::ExponentialSweep {
            min_lr: 1e-4,
            max_lr: 1.0,
        };
        request.record.grad_noise = Some(GradNoiseRequest {
            small_batch: 8,
            measurements: 4,
        });
        let command = request.spec.command().unwrap().clone();
        let vars = environment(&request, &command, Path::new("/r.jsonl"), |name| {
            (name == "PATH" || name == "SECRET").then(|| format!("{name}-value"))
        });
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("PATH"), Some("PATH-value"));
        assert_eq!(
            get("SECRET"),
            None,
            "only the listed variables pass through"
        );
        assert_eq!(get("OMP_NUM_THREADS"), Some("2"));
        assert_eq!(get("BATCHD_BATCH_SIZE"), Some("64"));
        assert_eq!(get("BATCHD_STEPS"), Some("5"));
        assert_eq!(get("BATCHD_LR"), Some("0.0001"));
        assert!(get("BATCHD_LR_SCHEDULE")
            .unwrap()
            .contains("exponential_sweep"));
        assert_eq!(get("BATCHD_DEVICE"), Some("cuda"));
        assert_eq!(get("CUDA_VISIBLE_DEVICES"), Some("1"));
        assert_eq!(get("BATCHD_REPORT"), Some("/r.jsonl"));
        assert_eq!(get("BATCHD_GRAD_NOISE_SMALL_BATCH"), Some("8"));
        assert_eq!(get("BATCHD_PRECISION"), Some("f32"));
        let owner = std::process::id().to_string();
        assert_eq!(get("BATCHD_TRIAL_OWNER"), Some(owner.as_str()));
    }

    #[test]
    fn a_complete_report_gives_losses_speed_and_noise() {
        let mut request = request(4);
        request.record.grad_noise = Some(GradNoiseRequest {
            small_batch: 8,
            measurements: 1,
        });
        let text = [
            line(0, "2.0", 10.0),
            line(1, "1.8", 10.5),
            line(2, "1.6", 11.0),
            "{\"step\": 3, \"loss\": 1.5, \"time\": 12.0, \"grad_norm_sq\": 2.0, \"grad_norm_sq_small\": 5.0, \"parameters\": 99, \"extra\": \"ignored\"}\n".to_string(),
        ]
        .concat();
        let report = read_report(&text, &request).unwrap();
        assert_eq!(report.outcome, Some(Outcome::Ok));
        assert_eq!(report.steps_completed, 4);
        assert_eq!(report.losses, vec![2.0, 1.8, 1.6, 1.5]);
        assert_eq!(report.learning_rates, vec![0.1; 4]);
        // Steps 1 and 2 are timed (0.5 s each, 64 samples); step 3 measured
        // the noise and step 0 is warm-up.
        assert_eq!(report.samples_per_second, Some(128.0));
        assert_eq!(report.step_seconds_median, Some(0.5));
        let noise = report.grad_noise.unwrap();
        assert_eq!((noise.big_sq_norms[0], noise.small_sq_norms[0]), (2.0, 5.0));
        assert_eq!(report.parameter_count, 99);
    }

    #[test]
    fn garbled_out_of_order_and_backwards_reports_are_named() {
        let request = request(4);
        let error = read_report(&[line(0, "1", 0.0), "oops\n".into()].concat(), &request)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("report line 2 is not a step record"),
            "{error}"
        );
        let error = read_report(&[line(0, "1", 0.0), line(2, "1", 1.0)].concat(), &request)
            .unwrap_err()
            .to_string();
        assert!(error.contains("step 2 where step 1 was due"), "{error}");
        let error = read_report(&[line(0, "1", 5.0), line(1, "1", 1.0)].concat(), &request)
            .unwrap_err()
            .to_string();
        assert!(error.contains("goes backwards"), "{error}");
        let error = read_report("{\"step\": 0, \"loss\": 1}\n", &request)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `time`"), "{error}");
    }

    #[test]
    fn nan_and_exploding_losses_are_divergence() {
        let request = request(6);
        let text = [line(0, "1.0", 0.0), line(1, "NaN", 1.0)].concat();
        let report = read_report(&text, &request).unwrap();
        assert_eq!(report.outcome, Some(Outcome::Diverged));
        assert!(report.reason.unwrap().contains("step 1"));
        // Growing tenfold a step: caught when it passes a hundredfold,
        // and the losses after it are dropped.
        let text = [
            line(0, "1.0", 0.0),
            line(1, "10.0", 1.0),
            line(2, "100.0", 2.0),
            line(3, "1000.0", 3.0),
            line(4, "1.0", 4.0),
        ]
        .concat();
        let report = read_report(&text, &request).unwrap();
        assert_eq!(report.outcome, Some(Outcome::Diverged));
        assert_eq!(report.steps_completed, 4);
        assert_eq!(report.losses.len(), 4);
    }
}
