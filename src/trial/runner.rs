//! The parent side of a trial: spawn a worker (this same binary), feed it
//! the request, watch it, kill it when it overstays or overeats, and turn
//! what happened into a [`TrialResult`].

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::classify::{classify, KillReason, Observation};
use super::memory::{parse_refusal, read_rss};
use super::worker::WorkerEvent;
use super::{ExitInfo, Outcome, TrialDevice, TrialRequest, TrialResult, TrialRunner, WorkerReport};
use crate::gpu::GpuProbe;

/// The hidden subcommand a worker runs as.
pub const WORKER_SUBCOMMAND: &str = "__trial-worker";

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
            on_event: None,
        })
    }
}

/// Runs each trial in a fresh worker process.
#[derive(Clone)]
pub struct ProcessTrialRunner {
    options: RunnerOptions,
}

impl ProcessTrialRunner {
    pub fn new(options: RunnerOptions) -> ProcessTrialRunner {
        ProcessTrialRunner { options }
    }

    async fn run_trial(&self, mut request: TrialRequest) -> TrialResult {
        let started = Instant::now();
        if request.kernel_cache_dir.is_none() {
            request.kernel_cache_dir = self.options.kernel_cache_dir.clone();
        }
        let limit = effective_limit(&request);
        let mut result = empty_result(&request, limit);
        let payload = match serde_json::to_vec(&request) {
            Ok(payload) => payload,
            Err(e) => {
                return failed(
                    result,
                    Outcome::InvalidRequest,
                    format!("cannot encode the request: {e}"),
                    started,
                )
            }
        };

        let mut command = Command::new(&self.options.worker_exe);
        command
            .arg(WORKER_SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "0")
            .kill_on_drop(true);
        if std::env::var_os("CUDA_PATH").is_none()
            && std::path::Path::new("/usr/local/cuda").is_dir()
        {
            // cubecl compiles kernels with NVRTC, which needs the CUDA headers.
            command.env("CUDA_PATH", "/usr/local/cuda");
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return failed(
                    result,
                    Outcome::Crashed,
                    format!(
                        "cannot start the worker {}: {e}",
                        self.options.worker_exe.display()
                    ),
                    started,
                )
            }
        };
        let pid = child.id().unwrap_or(0);

        if let Some(mut stdin) = child.stdin.take() {
            // A worker that dies before reading is classified from its exit.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
        let stdout = child.stdout.take();
        let on_event = self.options.on_event.clone();
        let events = tokio::spawn(async move {
            let mut report: Option<WorkerReport> = None;
            let mut garbled = 0usize;
            if let Some(stdout) = stdout {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<WorkerEvent>(&line) {
                        Ok(event) => {
                            if let Some(callback) = &on_event {
                                callback(&event);
                            }
                            if let WorkerEvent::Result { report: r } = event {
                                report = Some(*r);
                            }
                        }
                        Err(_) => garbled += 1,
                    }
                }
            }
            (report, garbled)
        });
        let stderr_tail = collect_stderr_tail(child.stderr.take());

        let mut sampler =
            MemorySampler::new(request.device, pid, false, self.options.gpu_probe.clone());
        let (exit, killed) = supervise(
            &mut child,
            &mut sampler,
            request.deadline,
            self.options.sample_interval,
            limit,
            None,
        )
        .await;
        let (report, garbled) = events.await.unwrap_or((None, 0));
        let stderr_tail = stderr_tail.await.unwrap_or_default();

        // The peak: the parent's samples, and the worker's own figures.
        let (peak, source) = match request.device {
            TrialDevice::Cpu => {
                let own = report.as_ref().and_then(|r| r.peak_rss_bytes);
                (max_option(sampler.peak, own), "rss")
            }
            TrialDevice::Cuda(_) => match sampler.peak {
                Some(peak) => (Some(peak), "nvml"),
                None => (
                    report.as_ref().and_then(|r| r.cuda_memory_delta_bytes),
                    "cuda_context",
                ),
            },
        };
        let device_total = report
            .as_ref()
            .and_then(|r| r.device_memory_total_bytes)
            .or(sampler.device_total);
        let observation = Observation {
            device: request.device,
            steps: request.steps,
            deadline_seconds: request.deadline.as_secs_f64(),
            killed,
            exit: &exit,
            report: report.as_ref(),
            stderr_tail: &stderr_tail,
            peak_memory_bytes: peak,
            memory_limit_bytes: limit,
            device_memory_total_bytes: device_total,
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            foreign: false,
        };
        let (outcome, mut reason) = classify(&observation);
        // A heap allocation the worker's cap refused was never resident, so
        // the RSS peak understates the need: count the live heap plus the
        // refused request.
        let mut peak = peak;
        if outcome == Outcome::OutOfMemory {
            if let Some((refused, live)) = parse_refusal(&stderr_tail) {
                let needed = live + refused;
                reason = Some(format!(
                    "needed at least {} ({} of heap live plus a refused allocation of {}){}",
                    crate::units::ByteSize(needed),
                    crate::units::ByteSize(live),
                    crate::units::ByteSize(refused),
                    limit
                        .map(|l| format!(", limit {}", crate::units::ByteSize(l)))
                        .unwrap_or_default()
                ));
                peak = max_option(peak, Some(needed));
            }
        }
        if garbled > 0 && outcome != Outcome::Ok {
            let note = format!("{garbled} unreadable line(s) on the worker's stdout");
            reason = Some(reason.map_or(note.clone(), |r| format!("{r}; {note}")));
        }

        if let Some(report) = report {
            result.backend = report.backend.clone();
            if !report.device_name.is_empty() && report.device_name != "cpu" {
                result.device = format!("{} ({})", result.device, report.device_name);
            }
            result.startup_seconds = report.startup_seconds;
            result.setup_seconds = Some(report.setup_seconds);
            apply_report(&mut result, report);
        }
        if garbled > 0 {
            result.warnings.push(format!(
                "{garbled} unreadable line(s) on the worker's stdout were ignored"
            ));
        }
        result.outcome = outcome;
        result.reason = reason;
        result.peak_memory_bytes = peak;
        result.peak_memory_source = peak.map(|_| source.to_string());
        result.device_memory_total_bytes = device_total;
        result.exit = Some(exit);
        result.stderr_tail = stderr_tail;
        result.wall_seconds = started.elapsed().as_secs_f64();
        result
    }
}

impl TrialRunner for ProcessTrialRunner {
    async fn run(&self, request: TrialRequest) -> TrialResult {
        match request.spec.command().cloned() {
            Some(command) => super::command::run(&self.options, request, &command).await,
            None => self.run_trial(request).await,
        }
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
        device: request.device.to_string(),
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
