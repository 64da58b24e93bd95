//! Trials of `runner = "command"` jobs: the user's own training script
//! (PyTorch, JAX, anything), run once per trial.
//!
//! The protocol (`docs/command-runner.md`): batchd starts the command in
//! the job's folder with a clean environment plus `BATCHD_*` variables
//! (batch size, steps, LR schedule, seed, device, report path); the command
//! appends one JSON line per step to `$BATCHD_REPORT`. batchd supervises it
//! like its own workers: deadline, memory of all the trial's processes (RSS
//! on CPU, NVML per process on CUDA), stderr tail; then it classifies the
//! end from the exit status, the out-of-memory phrases of PyTorch, JAX and
//! TensorFlow, and the report, which must be complete and well-formed.
//!
//! The command runs under a supervisor of its own (`supervisor.rs`), and in
//! a cgroup of its own where batchd has a delegated one (`contain.rs`), so
//! that nothing it starts outlives the trial or escapes its memory limit.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use serde::Deserialize;
use tokio::process::Command;

use super::classify::KillReason;
use super::contain::{trial_cgroup, TrialProcesses};
use super::supervise::{
    apply_report, collect_stderr_tail, effective_limit, empty_result, failed, supervise, Finished,
    MemorySampler, RunnerOptions, Scope,
};
use super::supervisor::{CONTROL_VARIABLE, START_FAILED_EXIT, SUPERVISOR_MARKER};
use crate::spec::CommandSpec;
use crate::trial::divergence::first_divergence;
use crate::trial::{
    ExitInfo, GradNoiseSample, Outcome, TrialDevice, TrialRequest, TrialResult, WorkerReport,
    SUPERVISOR_SUBCOMMAND,
};

/// The longest line a report may hold (a step record is well under 1 KiB).
/// The report is read line by line, so a command that writes a huge line
/// costs batchd at most this much memory, and its trial is `crashed`.
pub const REPORT_LINE_LIMIT: usize = 64 * 1024;

/// How many names the report file is tried under before the trial fails:
/// each name is fresh and random, so only a planted file can be in the way.
const REPORT_NAME_ATTEMPTS: usize = 16;

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

/// The environment of one trial's command: the process's part, then the
/// trial's.
pub fn environment(
    request: &TrialRequest,
    command: &CommandSpec,
    report: &Path,
    inherited: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut vars = process_environment(request, command, inherited);
    vars.extend(
        trial_variables(request, report)
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_string(), value?))),
    );
    vars
}

/// The variables that stay the same from trial to trial of a job on one
/// device: what a persistent process is started with besides the first
/// trial's own.
pub(super) fn process_environment(
    request: &TrialRequest,
    command: &CommandSpec,
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
    let mut set = |name: &str, value: String| vars.push((name.to_string(), value));
    set("BATCHD_DEVICE", device.to_string());
    // The trial's GPU becomes the command's only (and first) GPU; a CPU
    // trial sees none.
    set("CUDA_VISIBLE_DEVICES", visible);
    set("BATCHD_PRECISION", request.spec.precision.to_string());
    // Marks every process of the trial (children inherit it) with its
    // owner, so a daemon restarted after `kill -9` can find what its
    // predecessor left behind: the parent-death signal reaches only the
    // trial's first process.
    set(OWNER_VARIABLE, std::process::id().to_string());
    vars
}

/// The variables that describe one trial, every one of them named: `None`
/// for one this trial leaves unset (a persistent process unsets it).
pub(super) fn trial_variables(
    request: &TrialRequest,
    report: &Path,
) -> Vec<(&'static str, Option<String>)> {
    let schedule = serde_json::to_string(&request.schedule).unwrap_or_default();
    let noise = request.record.grad_noise;
    vec![
        ("BATCHD_BATCH_SIZE", Some(request.batch_size.to_string())),
        ("BATCHD_STEPS", Some(request.steps.to_string())),
        (
            "BATCHD_WARMUP_STEPS",
            Some(request.warmup_steps.to_string()),
        ),
        (
            "BATCHD_LR",
            Some(request.schedule.lr_at(0, request.steps).to_string()),
        ),
        ("BATCHD_LR_SCHEDULE", Some(schedule)),
        (
            "BATCHD_BATCH_SCHEDULE",
            request
                .batch_schedule
                .as_ref()
                .and_then(|ramp| serde_json::to_string(ramp).ok()),
        ),
        ("BATCHD_SEED", Some(request.seed.to_string())),
        ("BATCHD_REPORT", Some(report.display().to_string())),
        (
            "BATCHD_VALIDATE",
            Some(u8::from(request.record.validation_loss).to_string()),
        ),
        (
            "BATCHD_GRAD_NOISE_SMALL_BATCH",
            noise.map(|n| n.small_batch.to_string()),
        ),
        (
            "BATCHD_GRAD_NOISE_MEASUREMENTS",
            noise.map(|n| n.measurements.to_string()),
        ),
        (
            "BATCHD_GRAD_NOISE_FROM",
            noise.and_then(|n| n.from_step).map(|from| from.to_string()),
        ),
        (
            "BATCHD_MEMORY_LIMIT_BYTES",
            request.memory_limit_bytes.map(|limit| limit.to_string()),
        ),
    ]
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
    /// The same norms after Adam's preconditioner (optional).
    grad_norm_sq_pre: Option<f64>,
    grad_norm_sq_small_pre: Option<f64>,
    val_loss: Option<f64>,
    /// Seconds the validation took (after the step's `time`).
    val_seconds: Option<f64>,
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

/// Turns a report's text into the report batchd's own worker would send.
/// `Err` says what is wrong with it, naming the line.
#[cfg(test)]
fn read_report(text: &str, request: &TrialRequest) -> Result<WorkerReport, BadReport> {
    parse_report(text.as_bytes(), request).map(|(report, _)| report)
}

/// Reads a report line by line, each line at most [`REPORT_LINE_LIMIT`]
/// bytes and the whole at most that per step (blank lines are skipped but
/// count). Returns the report and how many step records it held.
fn parse_report(
    mut reader: impl BufRead,
    request: &TrialRequest,
) -> Result<(WorkerReport, usize), BadReport> {
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
        ..GradNoiseSample::default()
    });
    let budget = (request.steps as u64 + 1) * (REPORT_LINE_LIMIT as u64 + 1);
    let mut total = 0u64;
    let mut buffer = Vec::new();
    let mut number = 0usize;
    loop {
        buffer.clear();
        let read = (&mut reader)
            .take(REPORT_LINE_LIMIT as u64 + 1)
            .read_until(b'\n', &mut buffer)
            .map_err(|e| BadReport(format!("cannot read the report: {e}")))?;
        if read == 0 {
            break;
        }
        number += 1;
        total += read as u64;
        let ended = buffer.last() == Some(&b'\n');
        if !ended && read > REPORT_LINE_LIMIT {
            return Err(BadReport(format!(
                "report line {number} is longer than the limit of {} per line (a step record is one short JSON line)",
                crate::units::ByteSize(REPORT_LINE_LIMIT as u64)
            )));
        }
        if total > budget {
            return Err(BadReport(format!(
                "the report is longer than {} ({} steps, at most {} a line)",
                crate::units::ByteSize(budget),
                request.steps,
                crate::units::ByteSize(REPORT_LINE_LIMIT as u64)
            )));
        }
        let Ok(raw) = std::str::from_utf8(&buffer) else {
            return Err(BadReport(format!("report line {number} is not UTF-8")));
        };
        let raw = raw.trim_end_matches(['\n', '\r']);
        if raw.trim().is_empty() {
            continue;
        }
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
        // Without a field of its own, a step is the schedule's: its batch
        // and LR at the samples trained so far.
        let seen: u64 = samples.iter().sum();
        let (batch, lr_factor) =
            request
                .batch_schedule
                .as_ref()
                .map_or((request.batch_size, 1.0), |ramp| {
                    let phase = ramp.phase_at(seen);
                    (phase.batch_size, phase.lr_factor)
                });
        report.learning_rates.push(
            line.lr
                .unwrap_or_else(|| request.schedule.lr_at(line.step, request.steps) * lr_factor),
        );
        times.push(line.time);
        samples.push(line.samples.unwrap_or(batch));
        if let (Some(sample), Some(big), Some(small)) =
            (noise.as_mut(), line.grad_norm_sq, line.grad_norm_sq_small)
        {
            sample.big_sq_norms.push(big);
            sample.small_sq_norms.push(small);
            noise_steps.push(line.step);
            // Both or neither, at every measured step, or none at all.
            if let (Some(big), Some(small)) = (line.grad_norm_sq_pre, line.grad_norm_sq_small_pre) {
                sample.preconditioned_big_sq_norms.push(big);
                sample.preconditioned_small_sq_norms.push(small);
            }
        }
        if line.val_loss.is_some() {
            report.validation_loss = line.val_loss;
        }
        if let Some(seconds) = line.val_seconds.filter(|s| s.is_finite() && *s >= 0.0) {
            report.validation_seconds = Some(seconds);
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
    // The first step has no start of its own: count it as a median step.
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        report.training_seconds = Some(last - first + report.step_seconds_median.unwrap_or(0.0));
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
    Ok((report, times.len()))
}

/// A trial's report file, made by batchd and read back through the
/// descriptor that made it: a command that renames it or puts a link, a
/// FIFO or `/dev/zero` in its place cannot make batchd read anything else.
pub(super) struct ReportFile {
    pub path: PathBuf,
    file: File,
}

impl ReportFile {
    /// A new, empty file `batchd-report-<pid>-<serial>-<random>.jsonl` in
    /// the temporary folder. Made with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode
    /// 0600: a name that exists (a planted link above all) is never
    /// followed or reused, and a fresh random name is tried instead.
    pub fn create() -> std::io::Result<ReportFile> {
        static TRIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = TRIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir();
        create_exclusive(&dir, || {
            format!(
                "batchd-report-{}-{serial}-{:016x}.jsonl",
                std::process::id(),
                random_u64()
            )
        })
    }

    /// The report, read line by line from the start: `None` when it holds
    /// no step.
    pub fn read(&mut self, request: &TrialRequest) -> Option<Result<WorkerReport, BadReport>> {
        if let Err(e) = self.file.rewind() {
            return Some(Err(BadReport(format!("cannot read the report: {e}"))));
        }
        let reader = BufReader::with_capacity(REPORT_LINE_LIMIT, &self.file);
        match parse_report(reader, request) {
            Ok((_, 0)) => None,
            Ok((report, _)) => Some(Ok(report)),
            Err(error) => Some(Err(error)),
        }
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        // Unlinks whatever holds the name now; a link is removed, never
        // followed.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates a new file in `dir` under the first name from `names` that does
/// not exist yet, with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600.
fn create_exclusive(dir: &Path, mut names: impl FnMut() -> String) -> std::io::Result<ReportFile> {
    let mut last = None;
    for _ in 0..REPORT_NAME_ATTEMPTS {
        let path = dir.join(names());
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match opened {
            Ok(file) => return Ok(ReportFile { path, file }),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AlreadyExists.into()))
}

/// 64 random bits from the kernel (the clock's nanoseconds should
/// getrandom fail, which it does not on Linux 3.17 and later).
fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills at most the 8 bytes it is given.
    let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if filled == bytes.len() as isize {
        u64::from_ne_bytes(bytes)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    }
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

/// Runs one trial of a command job in a fresh process.
pub async fn run(
    options: &RunnerOptions,
    request: TrialRequest,
    command: &CommandSpec,
) -> TrialResult {
    let started = Instant::now();
    let (result, report) = match prepare(&request, command) {
        Ok(prepared) => prepared,
        Err(failure) => return failure.into_result(started),
    };
    let spawned = match spawn_supervised(options, &request, command, &report.path, None) {
        Ok(spawned) => spawned,
        Err(reason) => return failed(result, Outcome::Crashed, reason, started),
    };
    let Spawned {
        mut child,
        processes,
        stderr,
    } = spawned;
    let stderr_tail = collect_stderr_tail(stderr);
    let limit = result.memory_limit_bytes;
    let mut sampler = MemorySampler::new(
        request.device,
        Scope::Trial(&processes),
        options.gpu_probe.clone(),
    );
    let (exit, killed) = supervise(
        &mut child,
        &mut sampler,
        request.deadline,
        options.sample_interval,
        limit,
    )
    .await;
    let seen = Seen {
        peak: sampler.peak,
        device_total: sampler.device_total,
        counted_by_cgroup: processes.counts_memory(),
    };
    processes.finish();
    let stderr_tail = stderr_tail.finish().await;
    conclude_exited(
        &request,
        result,
        exit,
        killed,
        stderr_tail,
        seen,
        report,
        started,
    )
}

/// The result of a command trial whose process has exited: the
/// supervisor's own start failure, else the verdict on its exit and
/// report. A start failure leaves `exit` unset.
#[allow(clippy::too_many_arguments)]
pub(super) fn conclude_exited(
    request: &TrialRequest,
    mut result: TrialResult,
    exit: ExitInfo,
    killed: Option<KillReason>,
    stderr_tail: String,
    seen: Seen,
    mut report: ReportFile,
    started: Instant,
) -> TrialResult {
    if let Some(said) = start_failure(&exit, &stderr_tail) {
        return failed(result, Outcome::Crashed, said, started);
    }
    let parsed = report.read(request);
    drop(report);
    conclude(
        request,
        &mut result,
        exit,
        killed,
        stderr_tail,
        seen,
        parsed,
        started,
    );
    result
}

/// Why a command trial could not start, before any process ran.
pub(super) struct NotStarted {
    result: TrialResult,
    outcome: Outcome,
    reason: String,
}

impl NotStarted {
    pub fn into_result(self, started: Instant) -> TrialResult {
        failed(self.result, self.outcome, self.reason, started)
    }
}

/// The checks before a command trial starts, its empty result and its
/// report file.
pub(super) fn prepare(
    request: &TrialRequest,
    command: &CommandSpec,
) -> Result<(TrialResult, ReportFile), Box<NotStarted>> {
    let limit = effective_limit(request);
    let mut result = empty_result(request, limit);
    result.backend = "command".into();
    let refuse = |result, outcome, reason| {
        Box::new(NotStarted {
            result,
            outcome,
            reason,
        })
    };
    if let Err(reason) = request.check() {
        return Err(refuse(result, Outcome::InvalidRequest, reason.to_string()));
    }
    if command.argv.is_empty() {
        return Err(refuse(
            result,
            Outcome::InvalidRequest,
            "the command is empty".into(),
        ));
    }
    match ReportFile::create() {
        Ok(report) => Ok((result, report)),
        Err(error) => {
            let reason = format!(
                "cannot create the report file in {}: {error}",
                std::env::temp_dir().display()
            );
            Err(refuse(result, Outcome::Crashed, reason))
        }
    }
}

/// A command trial's processes once started.
pub(super) struct Spawned {
    pub child: tokio::process::Child,
    pub processes: TrialProcesses,
    pub stderr: Option<tokio::process::ChildStderr>,
}

/// The descriptor number a persistent process finds its control socket
/// on (`BATCHD_CONTROL_FD`).
pub(super) const CONTROL_FD: libc::c_int = 3;

/// Starts the command under its supervisor, in its own process group and,
/// where there is one, its trial cgroup. `control`: the socket a persistent
/// process talks to batchd over, passed as descriptor [`CONTROL_FD`].
pub(super) fn spawn_supervised(
    options: &RunnerOptions,
    request: &TrialRequest,
    command: &CommandSpec,
    report: &Path,
    control: Option<&OwnedFd>,
) -> Result<Spawned, String> {
    let program = &command.argv[0];
    let cgroup = trial_cgroup(options.containment)?;
    let mut environment = environment(request, command, report, |name| std::env::var(name).ok());
    if control.is_some() {
        environment.push((CONTROL_VARIABLE.into(), CONTROL_FD.to_string()));
    }
    // The supervisor (this binary) starts the command in the same folder
    // and environment; it shares the trial's process group, which it leads.
    let mut process = Command::new(&options.worker_exe);
    process
        .arg(SUPERVISOR_SUBCOMMAND)
        .arg("--")
        .args(&command.argv)
        .current_dir(&command.workdir)
        .env_clear()
        .envs(environment)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    let join_cgroup = cgroup.as_ref().and_then(|c| c.join_fd());
    let control = control.map(|fd| fd.as_raw_fd());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        process.pre_exec(move || {
            // SIGTERM, not SIGKILL, when batchd dies: the supervisor then
            // still kills the trial's processes. Checked after setting it,
            // should batchd have died already.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // Nothing in the trial can gain privileges (no setuid).
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if let Some(fd) = join_cgroup {
                // `0` moves the writer: the supervisor, before it runs
                // anything, so the command is never outside the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(fd) = control {
                // dup2 leaves the copy open across exec; a socket already
                // on the number keeps its close-on-exec flag, so clear it.
                if fd == CONTROL_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else if libc::dup2(fd, CONTROL_FD) != CONTROL_FD {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = process.spawn().map_err(|error| match &cgroup {
        Some(cgroup) => format!(
            "cannot start `{program}` in {} inside the trial cgroup {}: {error}",
            command.workdir.display(),
            cgroup.dir().display()
        ),
        None => format!(
            "cannot start `{program}` in {}: {error}",
            command.workdir.display()
        ),
    })?;
    let processes = TrialProcesses::new(child.id().unwrap_or(0), cgroup);
    let stderr = child.stderr.take();
    Ok(Spawned {
        child,
        processes,
        stderr,
    })
}

/// The supervisor's own reason when it could not start the command.
pub(super) fn start_failure(exit: &ExitInfo, stderr_tail: &str) -> Option<String> {
    if exit.code != Some(START_FAILED_EXIT) {
        return None;
    }
    stderr_tail
        .lines()
        .find_map(|line| line.strip_prefix(SUPERVISOR_MARKER))
        .map(|said| said.trim().to_string())
}

/// What the memory watch saw of a trial.
pub(super) struct Seen {
    pub peak: Option<u64>,
    pub device_total: Option<u64>,
    pub counted_by_cgroup: bool,
}

/// Classifies a command trial that has ended (its process exited, or a
/// persistent process said the trial's code returned with `exit`) and
/// writes the verdict and the report into `result`.
#[allow(clippy::too_many_arguments)]
pub(super) fn conclude(
    request: &TrialRequest,
    result: &mut TrialResult,
    exit: ExitInfo,
    killed: Option<KillReason>,
    stderr_tail: String,
    seen: Seen,
    parsed: Option<Result<WorkerReport, BadReport>>,
    started: Instant,
) {
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
    let source = match request.device {
        TrialDevice::Cpu if seen.counted_by_cgroup => "cgroup",
        TrialDevice::Cpu => "rss",
        TrialDevice::Cuda(_) => "nvml",
    };
    let finished = Finished {
        exit,
        killed,
        stderr_tail,
        peak_memory_bytes: seen.peak,
        peak_memory_source: source,
        device_memory_total_bytes: seen.device_total,
        memory_limit_bytes: result.memory_limit_bytes,
        foreign: true,
    };
    let verdict = finished.classify(request, vouched.as_ref());
    if let Some(Ok(report)) = parsed {
        result.training_seconds = report.training_seconds;
        result.validation_seconds = report.validation_seconds;
        apply_report(result, report);
    }
    finished.record(result, verdict, started);
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
            from_step: None,
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
            from_step: None,
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
    fn a_ramp_is_passed_on_and_its_steps_are_read_by_the_schedule() {
        let mut request = request(4);
        let ramp = crate::trial::BatchSchedule {
            phases: vec![
                crate::trial::BatchPhase {
                    from_sample: 0,
                    batch_size: 64,
                    lr_factor: 1.0,
                },
                crate::trial::BatchPhase {
                    from_sample: 128,
                    batch_size: 128,
                    lr_factor: 2.0,
                },
            ],
        };
        request.batch_schedule = Some(ramp);
        // Not declared by the spec: refused before any process starts.
        let refused = request.check().unwrap_err().0;
        assert!(refused.contains("batch_schedule = true"), "{refused}");
        let mut spec = request.spec.clone();
        if let crate::spec::Workload::Command(command) = &mut spec.workload {
            command.batch_schedule = true;
        }
        request.spec = spec;
        request.check().unwrap();
        let command = request.spec.command().unwrap().clone();
        let vars = environment(&request, &command, Path::new("/r.jsonl"), |_| None);
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(
            get("BATCHD_BATCH_SCHEDULE").as_deref(),
            Some(
                "[{\"from_sample\":0,\"batch_size\":64,\"lr_factor\":1.0},\
                 {\"from_sample\":128,\"batch_size\":128,\"lr_factor\":2.0}]"
            )
        );
        assert_eq!(get("BATCHD_BATCH_SIZE").as_deref(), Some("64"));
        // Steps without `samples` or `lr` are the schedule's: 64, 64, then
        // 128 at twice the LR.
        let text = [
            line(0, "2.0", 10.0),
            line(1, "1.8", 10.5),
            line(2, "1.6", 11.0),
            line(3, "1.5", 11.5),
        ]
        .concat();
        let report = read_report(&text, &request).unwrap();
        assert_eq!(report.learning_rates, vec![0.1, 0.1, 0.2, 0.2]);
        // Timed steps 1-3: 64 + 128 + 128 samples in 1.5 s.
        assert_eq!(report.samples_per_second, Some(320.0 / 1.5));
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

    #[test]
    fn a_line_past_the_cap_is_refused_without_reading_it_whole() {
        let request = request(4);
        // Exactly at the cap is a line; one byte more is not.
        let padded = format!(
            "{{\"step\": 0, \"loss\": 1, \"time\": 0, \"pad\": \"{}\"}}",
            "x".repeat(REPORT_LINE_LIMIT - 44)
        );
        assert_eq!(padded.len(), REPORT_LINE_LIMIT);
        let report = read_report(&format!("{padded}\n"), &request).unwrap();
        assert_eq!(report.steps_completed, 1);
        let long = format!("{padded}x\n");
        let error = read_report(&long, &request).unwrap_err().to_string();
        assert!(
            error.contains("report line 1 is longer than the limit of 64KiB"),
            "{error}"
        );
        // An endless line (a reader that never runs out) ends at the cap.
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        let error = parse_report(endless, &request).unwrap_err().to_string();
        assert!(error.contains("longer than the limit"), "{error}");
        // Endless blank lines end at the report's budget.
        let blank = std::io::BufReader::new(std::io::repeat(b'\n'));
        let error = parse_report(blank, &request).unwrap_err().to_string();
        assert!(error.contains("the report is longer than"), "{error}");
    }

    #[test]
    fn a_report_of_blank_lines_holds_no_step() {
        let request = request(4);
        let (_, records) = parse_report("\n  \n".as_bytes(), &request).unwrap();
        assert_eq!(records, 0);
    }

    #[test]
    fn a_planted_link_at_a_report_name_is_neither_followed_nor_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, "precious").unwrap();
        std::os::unix::fs::symlink(&canary, dir.path().join("first")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("second")).unwrap();
        let mut names = ["first", "second", "third"].into_iter();
        let report = create_exclusive(dir.path(), || names.next().unwrap().to_string()).unwrap();
        assert_eq!(report.path, dir.path().join("third"));
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
        assert!(
            !dir.path().join("nowhere").exists(),
            "a dangling link was followed"
        );
        let meta = std::fs::symlink_metadata(&report.path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Every name taken: an error, not a reuse.
        std::fs::write(dir.path().join("taken"), "").unwrap();
        let error = create_exclusive(dir.path(), || "taken".to_string())
            .err()
            .unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        drop(report);
        assert!(
            !dir.path().join("third").exists(),
            "removed after the trial"
        );
    }

    #[test]
    fn the_report_is_read_through_the_descriptor_batchd_made() {
        let request = request(4);
        let dir = tempfile::tempdir().unwrap();
        let mut report = create_exclusive(dir.path(), || "r.jsonl".to_string()).unwrap();
        std::fs::write(&report.path, line(0, "1.0", 0.0)).unwrap();
        // The command swaps the name for something else afterwards.
        std::fs::remove_file(&report.path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &report.path).unwrap();
        let parsed = report.read(&request).unwrap().unwrap();
        assert_eq!(parsed.steps_completed, 1);
    }
}
