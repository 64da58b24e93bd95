//! Supervision shared by the worker runner and the command runner: the
//! runner options, the deadline and memory watch over a child (or over all
//! the processes of a command trial), the stderr tail, and the result a
//! failed or finished trial becomes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::classify::{classify, KillReason, Observation};
use super::contain::{TrialProcesses, SUPERVISOR_GRACE};
use crate::gpu::GpuProbe;
use crate::trial::memory::{read_rss, Rss};
use crate::trial::{
    ExitInfo, Outcome, TrialDevice, TrialRequest, TrialResult, WorkerEvent, WorkerReport,
};

/// Keep this much of the end of a worker's stderr.
const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// How long the parent still reads a trial's stderr (and a worker's
/// stdout) once the process has exited: a descendant that inherited the
/// pipe and outlives the trial would otherwise hold it open, and the trial
/// past its deadline, for as long as it lives. What was read is kept.
pub(super) const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(1);

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
    /// How command trials are contained.
    pub containment: crate::trial::Containment,
    /// Offer command jobs the persistent trial mode (one process for trial
    /// after trial; a spec can still say `persistent = false`).
    pub persistent: bool,
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
            containment: crate::trial::Containment::Auto,
            persistent: false,
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
    result.validation_seconds = report.validation_seconds;
    result.samples_per_second = report.samples_per_second;
    result.step_seconds_median = report.step_seconds_median;
    result.grad_noise = report.grad_noise;
    result.data_seconds = report.data_seconds;
    result.data_from_cache = report.data_from_cache;
    result.warnings = report.warnings;
}

/// Waits at most [`PIPE_DRAIN_GRACE`] for a pipe reader to reach EOF,
/// then stops it.
pub(super) async fn drain(mut reader: tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(PIPE_DRAIN_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

/// The last [`STDERR_TAIL_BYTES`] a child wrote to stderr, read as it comes.
pub(super) struct StderrTail {
    tail: Arc<Mutex<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl StderrTail {
    /// The tail, once the pipe is at EOF or [`PIPE_DRAIN_GRACE`] has passed.
    pub async fn finish(self) -> String {
        drain(self.reader).await;
        let tail = std::mem::take(&mut *self.tail.lock().unwrap_or_else(|e| e.into_inner()));
        tail_text(tail)
    }

    /// What was written before the line `sentinel` (a persistent process's
    /// end-of-trial mark), which is removed with it so the next trial's
    /// tail starts after it. Waits at most `grace` for the line; then, or
    /// at EOF, everything read so far.
    pub async fn take_until(&self, sentinel: &str, grace: Duration) -> String {
        let line = format!("{sentinel}\n");
        let until = Instant::now() + grace;
        loop {
            {
                let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                let at = tail
                    .windows(line.len())
                    .position(|window| window == line.as_bytes());
                if let Some(at) = at {
                    let before: Vec<u8> = tail.drain(..at + line.len()).take(at).collect();
                    return tail_text(before);
                }
                if self.reader.is_finished() || Instant::now() >= until {
                    return tail_text(std::mem::take(&mut *tail));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The last [`STDERR_TAIL_BYTES`] of `tail`, as text.
fn tail_text(mut tail: Vec<u8>) -> String {
    if tail.len() > STDERR_TAIL_BYTES {
        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// Starts keeping the last [`STDERR_TAIL_BYTES`] a child writes to stderr.
pub(super) fn collect_stderr_tail(stderr: Option<tokio::process::ChildStderr>) -> StderrTail {
    let tail = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&tail);
    let reader = tokio::spawn(async move {
        let Some(mut stderr) = stderr else { return };
        let mut chunk = [0u8; 4096];
        while let Ok(read) = stderr.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            let mut tail = kept.lock().unwrap_or_else(|e| e.into_inner());
            tail.extend_from_slice(&chunk[..read]);
            if tail.len() > 2 * STDERR_TAIL_BYTES {
                let excess = tail.len() - STDERR_TAIL_BYTES;
                tail.drain(..excess);
            }
        }
    });
    StderrTail { tail, reader }
}

/// Waits for a child while enforcing its deadline and memory limit. A
/// worker is killed alone; a command trial's supervisor is told to end the
/// trial, and killed with the process group if it has not exited
/// [`SUPERVISOR_GRACE`] later.
pub(super) async fn supervise(
    child: &mut tokio::process::Child,
    sampler: &mut MemorySampler<'_>,
    deadline: Duration,
    sample_interval: Duration,
    limit: Option<u64>,
) -> (ExitInfo, Option<KillReason>) {
    let never = std::future::pending::<Option<()>>();
    match supervise_until(child, sampler, deadline, sample_interval, limit, never).await {
        (Ended::Exited(exit), killed) => (exit, killed),
        (Ended::Done(()), _) => unreachable!("a pending future never finishes"),
    }
}

/// How a supervised wait ended.
#[derive(Debug)]
pub(super) enum Ended<T> {
    /// The process exited.
    Exited(ExitInfo),
    /// `done` gave its value first (a persistent process's trial ended).
    Done(T),
}

/// [`supervise`], also ending when `done` gives `Some` (`None`: it has
/// nothing more to say, keep waiting for the exit). Once batchd has killed
/// the trial, only the exit ends the wait.
pub(super) async fn supervise_until<T>(
    child: &mut tokio::process::Child,
    sampler: &mut MemorySampler<'_>,
    deadline: Duration,
    sample_interval: Duration,
    limit: Option<u64>,
    done: impl std::future::Future<Output = Option<T>>,
) -> (Ended<T>, Option<KillReason>) {
    let trial = match sampler.scope {
        Scope::Trial(processes) => Some(processes),
        Scope::Process(_) => None,
    };
    let kill = |child: &mut tokio::process::Child| match trial {
        Some(processes) => processes.terminate(),
        None => {
            let _ = child.start_kill();
        }
    };
    tokio::pin!(done);
    let mut listening = true;
    let deadline = tokio::time::sleep(deadline);
    tokio::pin!(deadline);
    let escalation = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(escalation);
    let mut escalated = false;
    let mut ticker = tokio::time::interval(sample_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut killed: Option<KillReason> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            said = &mut done, if listening && killed.is_none() => match said {
                Some(value) => return (Ended::Done(value), None),
                None => listening = false,
            },
            _ = &mut deadline, if killed.is_none() => {
                killed = Some(KillReason::Deadline);
                kill(child);
                escalation.as_mut().reset(tokio::time::Instant::now() + SUPERVISOR_GRACE);
            }
            _ = ticker.tick(), if killed.is_none() => {
                let current = sampler.sample().await;
                if let (Some(current), Some(limit)) = (current, limit) {
                    if current > limit {
                        killed = Some(KillReason::MemoryLimit { peak: current, limit });
                        kill(child);
                        escalation.as_mut().reset(tokio::time::Instant::now() + SUPERVISOR_GRACE);
                    }
                }
            }
            _ = &mut escalation, if killed.is_some() && !escalated && trial.is_some() => {
                escalated = true;
                if let Some(processes) = trial {
                    processes.kill_hard();
                }
            }
        }
    };
    (Ended::Exited(exit_info(status)), killed)
}

/// A wait's result as batchd records it.
pub(super) fn exit_info(status: std::io::Result<std::process::ExitStatus>) -> ExitInfo {
    match status {
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
    }
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
        training_seconds: None,
        process_trial: None,
        validation_seconds: None,
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

/// Whose memory a sampler measures.
pub(super) enum Scope<'a> {
    /// One process: batchd's own worker.
    Process(u32),
    /// Every process of a command trial (its supervisor left out): the
    /// cgroup's counters or members, or the supervisor's descendants. Only
    /// these are read, never the rest of the machine.
    Trial(&'a TrialProcesses),
}

/// Samples a trial's memory: RSS on CPU (or a trial cgroup's working set),
/// NVML per-process on CUDA; of the one worker, or of all of a command
/// trial's processes (a training script's data loader workers, and what
/// left its process group, count against its trial).
pub(super) struct MemorySampler<'a> {
    device: TrialDevice,
    scope: Scope<'a>,
    probe: Option<Arc<dyn GpuProbe>>,
    pub peak: Option<u64>,
    pub device_total: Option<u64>,
}

impl<'a> MemorySampler<'a> {
    pub fn new(device: TrialDevice, scope: Scope<'a>, probe: Option<Arc<dyn GpuProbe>>) -> Self {
        MemorySampler {
            device,
            scope,
            probe,
            peak: None,
            device_total: None,
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self.scope {
            Scope::Process(pid) => vec![pid],
            Scope::Trial(processes) => processes.pids(),
        }
    }

    /// Takes one sample; returns the current figure (for the limit check).
    pub async fn sample(&mut self) -> Option<u64> {
        let current = match self.device {
            TrialDevice::Cpu => {
                let counted = match self.scope {
                    Scope::Trial(processes) => processes.counted_memory(),
                    Scope::Process(_) => None,
                };
                let (current, peak) = match counted {
                    Some(current) => (current, current),
                    None => {
                        let rss: Vec<Rss> = self.pids().into_iter().filter_map(read_rss).collect();
                        if rss.is_empty() {
                            return None;
                        }
                        rss_figures(&rss)
                    }
                };
                self.peak = max_option(self.peak, Some(peak));
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

/// `(current, peak)` of processes sampled together: the summed RSS, and
/// the larger of it and any one process's high-water mark (a spike between
/// two samples).
fn rss_figures(rss: &[Rss]) -> (u64, u64) {
    let current: u64 = rss.iter().map(|r| r.current_bytes).sum();
    let highest = rss.iter().map(|r| r.peak_bytes).max().unwrap_or(0);
    (current, current.max(highest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn memory_of_several_processes_is_their_sum_or_one_peak() {
        let rss = |current_bytes, peak_bytes| Rss {
            current_bytes,
            peak_bytes,
        };
        assert_eq!(rss_figures(&[rss(10, 12), rss(5, 5)]), (15, 15));
        assert_eq!(rss_figures(&[rss(10, 40), rss(5, 5)]), (15, 40));
    }

    #[tokio::test]
    async fn stderr_held_open_by_a_descendant_is_read_only_briefly() {
        // The shell writes a line and exits; its background sleep keeps the
        // pipe open for 30 s.
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", "echo last words >&2; sleep 30 & exit 0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let group = child.id().unwrap() as i32;
        let tail = collect_stderr_tail(child.stderr.take());
        child.wait().await.unwrap();
        let started = Instant::now();
        let text = tail.finish().await;
        let waited = started.elapsed();
        // SAFETY: the process group this test created.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        assert!(text.contains("last words"), "{text:?}");
        assert!(
            waited < PIPE_DRAIN_GRACE + Duration::from_millis(500),
            "waited {waited:?}"
        );
    }
}
