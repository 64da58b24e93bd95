//! The worker: the child-process side of a trial (`batchd __trial-worker`).
//!
//! It reads one [`TrialRequest`] as JSON on stdin and writes JSON-lines
//! [`WorkerEvent`]s on stdout: `started`, `progress` for every step, then
//! one `result`. Burn runs only here. Any panic on any thread ends the
//! process at once with [`PANIC_EXIT_CODE`]: Burn 0.21 reports a CUDA
//! out-of-memory by panicking on its device thread while the main thread
//! keeps getting garbage back, so a panic anywhere must fail the trial.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::backend::{Autodiff, Cuda, Flex};
use burn::tensor::{bf16, f16};

mod cuda;
mod data;
mod engine;
mod models;

use crate::machine::check_cuda_device;
use crate::spec::Precision;
use crate::trial::memory::{own_rss, peak_heap_bytes, set_heap_cap};
use crate::trial::{
    CpuBackend, Outcome, TrialDevice, TrialRequest, WorkerEvent, WorkerReport, PANIC_EXIT_CODE,
    PANIC_MARKER,
};
use cuda::ContextProbe;
use data::Dataset;
use engine::{ProgressSink, TrialContext};

static PANICKED: AtomicBool = AtomicBool::new(false);

struct EventWriter {
    out: File,
}

impl EventWriter {
    fn send(&mut self, event: &WorkerEvent) {
        // A parent that went away cannot be told anything; carry on so the
        // process ends normally.
        if let Ok(mut line) = serde_json::to_vec(event) {
            line.push(b'\n');
            let _ = self.out.write_all(&line);
            let _ = self.out.flush();
        }
    }
}

impl ProgressSink for EventWriter {
    fn step(&mut self, step: u32, loss: f64, lr: f64) {
        self.send(&WorkerEvent::Progress { step, loss, lr });
    }
}

/// Ends the process on the first panic on any thread, after one line on
/// stderr. Uses raw `write` and `_exit`: no locks, no unwinding, no atexit.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICKED.store(true, Ordering::SeqCst);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".into());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = format!("{PANIC_MARKER} '{name}': {payload}{location}\n");
        // SAFETY: write(2) on the stderr descriptor and _exit(2) are
        // async-signal-safe and need no Rust state.
        unsafe {
            libc::write(2, line.as_ptr().cast(), line.len());
            libc::_exit(PANIC_EXIT_CODE);
        }
    }));
}

/// Takes stdout for the protocol and points file descriptor 1 at stderr, so
/// a library that prints cannot corrupt the event stream.
fn take_stdout() -> File {
    // SAFETY: plain descriptor duplication; the new descriptor is owned by
    // the returned File alone.
    unsafe {
        let events = libc::dup(1);
        libc::dup2(2, 1);
        File::from_raw_fd(events)
    }
}

/// Dies with the parent: a daemon killed with SIGKILL cannot kill its
/// trial, so the kernel does it (an orphaned trial would hold the GPU).
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid() only affect this process.
    unsafe {
        let parent = libc::getppid();
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may have died before the call: then we were re-parented.
        if libc::getppid() != parent {
            libc::_exit(PANIC_EXIT_CODE);
        }
    }
}

/// Keeps freed memory in the process for the next step. By default glibc
/// maps every block over 128 KiB afresh and hands it back on free, so each
/// step faulted in its activations page by page again (a tenth of an MLP
/// step at batch 4096, and half its speed). A trial is short-lived and its
/// RSS is measured at its peak, so holding freed memory changes no figure.
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // thread is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Entry point of `batchd __trial-worker`. Returns the process exit code.
pub fn main() -> i32 {
    let process_start = Instant::now();
    keep_freed_memory();
    die_with_parent();
    install_panic_hook();
    let mut events = EventWriter { out: take_stdout() };
    let mut input = String::new();
    let request: TrialRequest = match std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&input).map_err(|e| e.to_string()))
    {
        Ok(request) => request,
        Err(error) => {
            let report = WorkerReport {
                outcome: Some(Outcome::InvalidRequest),
                reason: Some(format!("the trial request is not valid JSON: {error}")),
                ..WorkerReport::default()
            };
            events.send(&WorkerEvent::Result {
                report: Box::new(report),
            });
            return 0;
        }
    };
    let report = run(&request, &mut events, process_start);
    if PANICKED.load(Ordering::SeqCst) {
        // Unreachable while the hook exits, kept so a future hook that
        // returns can never let a panicked trial report success.
        return PANIC_EXIT_CODE;
    }
    events.send(&WorkerEvent::Result {
        report: Box::new(report),
    });
    0
}

fn invalid(reason: String) -> WorkerReport {
    WorkerReport {
        outcome: Some(Outcome::InvalidRequest),
        reason: Some(reason),
        ..WorkerReport::default()
    }
}

fn run(request: &TrialRequest, events: &mut EventWriter, process_start: Instant) -> WorkerReport {
    if let Err(reason) = request.check() {
        return invalid(reason.to_string());
    }
    if let (TrialDevice::Cpu, Some(limit)) = (request.device, request.memory_limit_bytes) {
        set_heap_cap(limit);
    }
    if let TrialDevice::Cuda(index) = request.device {
        // Before loading data: a machine without the device fails fast.
        if let Err(reason) = check_cuda_device(index) {
            return invalid(reason.to_string());
        }
    }
    let (Some(model), Some(data)) = (request.spec.model(), request.spec.data()) else {
        return invalid(
            "the trial worker runs built-in models; a command job's trials run its command".into(),
        );
    };
    let loading = std::time::Instant::now();
    let (data, loaded) = match Dataset::load(data, model, request.data_cache_dir.as_deref()) {
        Ok(loaded) => loaded,
        Err(error) => return invalid(format!("cannot load the data: {error}")),
    };
    let data_seconds = loading.elapsed().as_secs_f64();
    let mut report = match request.device {
        TrialDevice::Cpu => {
            let backend = match request.cpu_backend {
                CpuBackend::Auto => CpuBackend::auto_for(model),
                chosen => chosen,
            };
            if !CpuBackend::BUILT.contains(&backend) {
                let feature = match backend {
                    CpuBackend::Tch => "tch-backend",
                    _ => "extra-cpu-backends",
                };
                return invalid(format!(
                    "this batchd was built without the {} CPU backend (cargo feature {feature})",
                    backend.name()
                ));
            }
            let name = backend.name().to_string();
            let mut report = WorkerReport {
                backend: name.clone(),
                device_name: "cpu".into(),
                precision: Some(Precision::F32),
                ..WorkerReport::default()
            };
            if request.spec.precision != Precision::F32 {
                report.warnings.push(format!(
                    "the CPU backend trains in f32; the requested {} was not used",
                    request.spec.precision
                ));
            }
            events.send(&WorkerEvent::Started {
                pid: std::process::id(),
                device: TrialDevice::Cpu,
                backend: name,
            });
            let ctx = TrialContext {
                request,
                data: &data,
                sink: events,
                cuda: None,
                process_start,
            };
            run_cpu(backend, ctx, &mut report);
            report
        }
        TrialDevice::Cuda(index) => {
            if let Some(dir) = &request.kernel_cache_dir {
                configure_kernel_cache(dir);
            }
            let probe = match ContextProbe::new(index) {
                Ok(probe) => probe,
                Err(reason) => return invalid(reason.to_string()),
            };
            let mut report = WorkerReport {
                backend: "cuda".into(),
                device_name: probe.name().unwrap_or_else(|| format!("cuda:{index}")),
                precision: Some(request.spec.precision),
                device_memory_total_bytes: probe.memory().map(|(_, total)| total),
                ..WorkerReport::default()
            };
            events.send(&WorkerEvent::Started {
                pid: std::process::id(),
                device: TrialDevice::Cuda(index),
                backend: "cuda".into(),
            });
            let device = burn::backend::cuda::CudaDevice::new(index as usize);
            let ctx = TrialContext {
                request,
                data: &data,
                sink: events,
                cuda: Some(&probe),
                process_start,
            };
            match request.spec.precision {
                Precision::F32 => engine::run::<Autodiff<Cuda<f32>>>(device, ctx, &mut report),
                Precision::F16 => engine::run::<Autodiff<Cuda<f16>>>(device, ctx, &mut report),
                Precision::Bf16 => engine::run::<Autodiff<Cuda<bf16>>>(device, ctx, &mut report),
            }
            report
        }
    };
    report.train_samples = Some(data.train_len() as u64);
    report.data_seconds = Some(data_seconds);
    report.data_from_cache = Some(loaded.from_cache);
    report.warnings.extend(loaded.warnings);
    report.peak_rss_bytes = own_rss().map(|rss| rss.peak_bytes);
    if request.device == TrialDevice::Cpu {
        report.peak_rss_bytes = report.peak_rss_bytes.map(|rss| rss.max(peak_heap_bytes()));
    }
    report
}

/// Trains on the chosen CPU backend. Only Flex is built by default (the
/// fastest of Burn's own on every example model; see the README's backend
/// table); ndarray and Candle come with `extra-cpu-backends`, for the
/// benchmark, and libtorch with `tch-backend` (which `auto` then takes for
/// the CNN and the transformer).
fn run_cpu(backend: CpuBackend, ctx: TrialContext<'_>, report: &mut WorkerReport) {
    match backend {
        #[cfg(feature = "extra-cpu-backends")]
        CpuBackend::Ndarray => {
            engine::run::<Autodiff<burn::backend::NdArray>>(Default::default(), ctx, report)
        }
        #[cfg(feature = "extra-cpu-backends")]
        #[allow(deprecated)] // Burn 0.21 deprecates Candle; benchmarked, not chosen
        CpuBackend::Candle => {
            engine::run::<Autodiff<burn::backend::Candle>>(Default::default(), ctx, report)
        }
        #[cfg(feature = "tch-backend")]
        CpuBackend::Tch => engine::run::<Autodiff<burn::backend::LibTorch>>(
            burn::backend::libtorch::LibTorchDevice::Cpu,
            ctx,
            report,
        ),
        _ => engine::run::<Autodiff<Flex>>(Default::default(), ctx, report),
    }
}

/// Keeps compiled CUDA kernels (PTX) and autotune results on disk so the
/// next trial process skips NVRTC compilation. Must run before any CUDA
/// work: cubecl reads its configuration once.
fn configure_kernel_cache(dir: &std::path::Path) {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let mut config = CubeClRuntimeConfig::default();
    config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    config.autotune.cache = CacheConfig::File(dir.join("autotune"));
    CubeClRuntimeConfig::set(config);
}
