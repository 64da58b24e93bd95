//! Supervision shared by the worker runner and the command runner: the
//! runner options, the deadline and memory watch over a child (or its
//! whole process group), the stderr tail, and the result a failed or
//! finished trial becomes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::classify::{classify, KillReason, Observation};
use crate::gpu::GpuProbe;
use crate::trial::memory::read_rss;
use crate::trial::{
    ExitInfo, Outcome, TrialDevice, TrialRequest, TrialResult, WorkerEvent, WorkerReport,
};

/// Keep this much of the end of a worker's stderr.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

type ProgressCallback = Arc<dyn Fn(&WorkerEvent) + Send + Sync>;

/// How trials are run.
#[derive(Clone)]
pub struct RunnerOptions {
    /// The batchd binary to run as the worker.
    pub worker_exe: PathBuf,
    /// How often memory is sampled.
    pub sample_interval: Duration,
    /// NVML (or a fake), for the worker's per-process GPU memory.
    pub gpu_probe: Option<Arc<dyn GpuProbe>>,
    /// Where CUDA kernels compiled by earlier trials are kept.
    pub kernel_cache_dir: Option<PathBuf>,
    /// Where trials keep parsed datasets for the trials after them.
    pub data_cache_dir: Option<PathBuf>,
    /// Called for every event a worker sends (progress, for live views).
    pub on_event: Option<ProgressCallback>,
}

impl RunnerOptions {
    /// Workers run this very executable.
    pub fn current_exe() -> std::io::Result<RunnerOptions> {
        Ok(RunnerOptions {
            worker_exe: std::env::current_exe()?,
            sample_interval: Duration::from_millis(25),
            gpu_probe: None,
            kernel_cache_dir: None,
            data_cache_dir: None,
            on_event: None,
        })
    }
}

/// Copies what a trial measured from its report into its result.
pub(super) fn apply_report(result: &mut TrialResult, report: WorkerReport) {
    result.precision = report.precision;
    result.parameter_count = (report.parameter_count > 0).then_some(report.parameter_count);
    result.train_samples = report.train_samples;
    result.steps_completed = report.steps_completed;
    result.loss_first = report.losses.first().copied();
    result.loss_last = report.losses.last().copied();
    result.losses = report.losses;
    result.learning_rates = report.learning_rates;
    result.validation_loss = report.validation_loss;
    result.samples_per_second = report.samples_per_second;
    result.step_seconds_median = report.step_seconds_median;
    result.grad_noise = report.grad_noise;
    result.data_seconds = report.data_seconds;
    result.data_from_cache = report.data_from_cache;
    result.warnings = report.warnings;
}

/// Keeps the last [`STDERR_TAIL_BYTES`] a child writes to stderr.
pub(super) fn collect_stderr_tail(
    stderr: Option<tokio::process::ChildStderr>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut tail: Vec<u8> = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut chunk = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut chunk).await {
                if read == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..read]);
                if tail.len() > 2 * STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
        }
        if tail.len() > STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
        String::from_utf8_lossy(&tail).into_owned()
    })
}

/// Waits for a child while enforcing its deadline and memory limit. With
/// `process_group`, the whole group is killed, not just the child.
pub(super) async fn supervise(
    child: &mut tokio::process::Child,
    sampler: &mut MemorySampler,
    deadline: Duration,
    sample_interval: Duration,
    limit: Option<u64>,
    process_group: Option<u32>,
) -> (ExitInfo, Option<KillReason>) {
    let kill = |child: &mut tokio::process::Child| {
        if let Some(group) = process_group.filter(|&group| group > 0) {
            // SAFETY: signalling a process group we created.
            unsafe {
                libc::kill(-(group as i32), libc::SIGKILL);
            }
        }
        let _ = child.start_kill();
    };
    let deadline = tokio::time::sleep(deadline);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut killed: Option<KillReason> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = &mut deadline, if killed.is_none() => {
                killed = Some(KillReason::Deadline);
                kill(child);
            }
            _ = ticker.tick(), if killed.is_none() => {
                let current = sampler.sample().await;
                if let (Some(current), Some(limit)) = (current, limit) {
                    if current > limit {
                        killed = Some(KillReason::MemoryLimit { peak: current, limit });
                        kill(child);
                    }
                }
            }
        }
    };
    let exit = match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            ExitInfo {
                code: status.code(),
                signal: status.signal(),
            }
        }
        Err(_) => ExitInfo {
            code: None,
            signal: None,
        },
    };
    (exit, killed)
}

/// The limit the parent enforces: the request's, or on CPU a share of the
/// machine's available memory so a runaway trial cannot swap the machine.
/// What the parent saw of a trial process that has ended, before it is
/// classified. Both runners build one, so an observation and a result are
/// made in one place.
pub(super) struct Finished {
    pub exit: ExitInfo,
    pub killed: Option<KillReason>,
    pub stderr_tail: String,
    pub peak_memory_bytes: Option<u64>,
    /// How the peak was measured: `rss`, `nvml` or `cuda_context`.
    pub peak_memory_source: &'static str,
    pub device_memory_total_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// A user's command rather than batchd's worker.
    pub foreign: bool,
}

impl Finished {
    /// The trial's outcome and its reason, from what was seen and from the
    /// report the process wrote, if it is trusted.
    pub fn classify(
        &self,
        request: &TrialRequest,
        report: Option<&WorkerReport>,
    ) -> (Outcome, Option<String>) {
        classify(&Observation {
            device: request.device,
            steps: request.steps,
            deadline_seconds: request.deadline.as_secs_f64(),
            killed: self.killed,
            exit: &self.exit,
            report,
            stderr_tail: &self.stderr_tail,
            peak_memory_bytes: self.peak_memory_bytes,
            memory_limit_bytes: self.memory_limit_bytes,
            device_memory_total_bytes: self.device_memory_total_bytes,
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            foreign: self.foreign,
        })
    }

    /// Writes the verdict and what was seen into `result`.
    pub fn record(
        self,
        result: &mut TrialResult,
        (outcome, reason): (Outcome, Option<String>),
        started: Instant,
    ) {
        result.outcome = outcome;
        result.reason = reason;
        result.peak_memory_bytes = self.peak_memory_bytes;
        result.peak_memory_source = self
            .peak_memory_bytes
            .map(|_| self.peak_memory_source.to_string());
        result.device_memory_total_bytes = self.device_memory_total_bytes;
        result.exit = Some(self.exit);
        result.stderr_tail = self.stderr_tail;
        result.wall_seconds = started.elapsed().as_secs_f64();
    }
}

pub(super) fn effective_limit(request: &TrialRequest) -> Option<u64> {
    match (request.memory_limit_bytes, request.device) {
        (Some(limit), _) => Some(limit),
        (None, TrialDevice::Cpu) => crate::machine::cpu_memory_budget(),
        (None, TrialDevice::Cuda(_)) => None,
    }
}

pub(super) fn max_option(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

pub(super) fn empty_result(request: &TrialRequest, limit: Option<u64>) -> TrialResult {
    TrialResult {
        outcome: Outcome::Crashed,
        reason: None,
        batch_size: request.batch_size,
        steps: request.steps,
        steps_completed: 0,
        device: request.device,
        device_name: None,
        backend: match request.device {
            TrialDevice::Cpu => "flex".into(),
            TrialDevice::Cuda(_) => "cuda".into(),
        },
        precision: None,
        parameter_count: None,
        train_samples: None,
        losses: Vec::new(),
        learning_rates: Vec::new(),
        loss_first: None,
        loss_last: None,
        validation_loss: None,
        samples_per_second: None,
        step_seconds_median: None,
        startup_seconds: None,
        setup_seconds: None,
        data_seconds: None,
        data_from_cache: None,
        peak_memory_bytes: None,
        peak_memory_source: None,
        memory_limit_bytes: limit,
        device_memory_total_bytes: None,
        grad_noise: None,
        wall_seconds: 0.0,
        exit: None,
        stderr_tail: String::new(),
        warnings: Vec::new(),
    }
}

pub(super) fn failed(
    mut result: TrialResult,
    outcome: Outcome,
    reason: String,
    started: Instant,
) -> TrialResult {
    result.outcome = outcome;
    result.reason = Some(reason);
    result.wall_seconds = started.elapsed().as_secs_f64();
    result
}

/// Samples a trial's memory: RSS on CPU, NVML per-process on CUDA; of the
/// one process, or of its whole process group (a training script's data
/// loader workers count against its trial).
pub(super) struct MemorySampler {
    device: TrialDevice,
    pid: u32,
    group: bool,
    probe: Option<Arc<dyn GpuProbe>>,
    pub peak: Option<u64>,
    pub device_total: Option<u64>,
}

impl MemorySampler {
    pub fn new(
        device: TrialDevice,
        pid: u32,
        group: bool,
        probe: Option<Arc<dyn GpuProbe>>,
    ) -> Self {
        MemorySampler {
            device,
            pid,
            group,
            probe,
            peak: None,
            device_total: None,
        }
    }

    fn pids(&self) -> Vec<u32> {
        if self.group {
            process_group_members(self.pid)
        } else {
            vec![self.pid]
        }
    }

    /// Takes one sample; returns the current figure (for the limit check).
    pub async fn sample(&mut self) -> Option<u64> {
        let current = match self.device {
            TrialDevice::Cpu => {
                let own = read_rss(self.pid)?;
                let current: u64 = if self.group {
                    self.pids()
                        .into_iter()
                        .filter_map(read_rss)
                        .map(|r| r.current_bytes)
                        .sum()
                } else {
                    own.current_bytes
                };
                self.peak = max_option(self.peak, Some(own.peak_bytes.max(current)));
                current
            }
            TrialDevice::Cuda(index) => {
                let probe = self.probe.clone()?;
                let pids = self.pids();
                let want_total = self.device_total.is_none();
                // NVML calls block; keep them off the async workers.
                let (used, total) = tokio::task::spawn_blocking(move || {
                    let used = probe.processes_memory(&pids).ok().flatten();
                    let total = if want_total {
                        probe.snapshot().ok().and_then(|s| {
                            s.gpus
                                .iter()
                                .find(|g| g.index == index)
                                .map(|g| g.memory_total_bytes)
                        })
                    } else {
                        None
                    };
                    (used, total)
                })
                .await
                .ok()?;
                if total.is_some() {
                    self.device_total = total;
                }
                let used = used?;
                self.peak = max_option(self.peak, Some(used));
                used
            }
        };
        Some(current)
    }
}

/// Processes in the process group `group` (whose leader is `group`).
fn process_group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![group];
    };
    let mut members: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // Field 5 is the group; the name (field 2) may hold spaces.
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    after_name.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(group)
        })
        .collect();
    if !members.contains(&group) {
        members.push(group);
    }
    members
}
