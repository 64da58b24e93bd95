//! The parent side of a trial: spawn a worker (this same binary), feed it
//! the request, watch it, kill it when it overstays or overeats, and turn
//! what happened into a [`TrialResult`].

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::persistent::Pool;
use super::supervise::{
    apply_report, collect_stderr_tail, drain, effective_limit, empty_result, failed, max_option,
    supervise, Finished, MemorySampler, RunnerOptions, Scope,
};
use crate::trial::memory::parse_refusal;
use crate::trial::{
    Outcome, TrialDevice, TrialRequest, TrialResult, TrialRunner, WorkerEvent, WorkerReport,
    WORKER_SUBCOMMAND,
};

/// Runs each trial in a fresh worker process; a command job's trials in
/// a persistent process of the job's when the options offer it and the
/// script takes it (`persistent.rs`).
#[derive(Clone)]
pub struct ProcessTrialRunner {
    options: RunnerOptions,
    pool: Arc<Pool>,
}

impl ProcessTrialRunner {
    pub fn new(options: RunnerOptions) -> ProcessTrialRunner {
        ProcessTrialRunner {
            options,
            pool: Arc::default(),
        }
    }

    async fn run_trial(&self, mut request: TrialRequest) -> TrialResult {
        let started = Instant::now();
        if request.data_cache_dir.is_none() {
            request.data_cache_dir = self.options.data_cache_dir.clone();
        }
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
        // The final report and the count of unreadable lines, kept outside
        // the reader so they survive its abort (see `drain`).
        let events: Arc<Mutex<(Option<WorkerReport>, usize)>> = Arc::default();
        let seen = Arc::clone(&events);
        let reader = tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str::<WorkerEvent>(&line);
                if let (Ok(event), Some(callback)) = (&event, &on_event) {
                    callback(event);
                }
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    Ok(WorkerEvent::Result { report }) => seen.0 = Some(*report),
                    Ok(_) => {}
                    Err(_) => seen.1 += 1,
                }
            }
        });
        let stderr_tail = collect_stderr_tail(child.stderr.take());

        let mut sampler = MemorySampler::new(
            request.device,
            Scope::Process(pid),
            self.options.gpu_probe.clone(),
        );
        let (exit, killed) = supervise(
            &mut child,
            &mut sampler,
            request.deadline,
            self.options.sample_interval,
            limit,
        )
        .await;
        // Both pipes at once: each gets at most PIPE_DRAIN_GRACE.
        let ((), stderr_tail) = tokio::join!(drain(reader), stderr_tail.finish());
        let (report, garbled) =
            std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));

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
        let mut finished = Finished {
            exit,
            killed,
            stderr_tail,
            peak_memory_bytes: peak,
            peak_memory_source: source,
            device_memory_total_bytes: device_total,
            memory_limit_bytes: limit,
            foreign: false,
        };
        let (outcome, mut reason) = finished.classify(&request, report.as_ref());
        // A heap allocation the worker's cap refused was never resident, so
        // the RSS peak understates the need: count the live heap plus the
        // refused request.
        if outcome == Outcome::OutOfMemory {
            if let Some((refused, live)) = parse_refusal(&finished.stderr_tail) {
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
                finished.peak_memory_bytes = max_option(finished.peak_memory_bytes, Some(needed));
            }
        }
        if garbled > 0 && outcome != Outcome::Ok {
            let note = format!("{garbled} unreadable line(s) on the worker's stdout");
            reason = Some(reason.map_or(note.clone(), |r| format!("{r}; {note}")));
        }

        if let Some(report) = report {
            result.backend = report.backend.clone();
            if !report.device_name.is_empty() && report.device_name != "cpu" {
                result.device_name = Some(report.device_name.clone());
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
        finished.record(&mut result, (outcome, reason), started);
        result
    }
}

impl TrialRunner for ProcessTrialRunner {
    async fn run(&self, request: TrialRequest) -> TrialResult {
        match request.spec.command().cloned() {
            Some(command) if self.options.persistent && command.persistent => {
                super::persistent::run(&self.options, &self.pool, request, &command).await
            }
            Some(command) => super::command::run(&self.options, request, &command).await,
            None => self.run_trial(request).await,
        }
    }

    async fn release(&self, device: TrialDevice) {
        self.pool.release(device).await;
    }
}
