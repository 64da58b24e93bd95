//! Trials: short, isolated training runs that every number batchd gives
//! rests on.
//!
//! The types here are plain data and the [`TrialRunner`] trait, so the
//! search can be written and tested without Burn. Burn lives in
//! [`engine`] and runs only inside a worker process ([`worker`]); the parent
//! side ([`runner`]) spawns the worker, enforces deadlines and memory limits,
//! samples memory, classifies the outcome and cross-checks every success.

mod batch_schedule;
mod divergence;
pub mod memory;
mod parent;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{JobSpec, Precision};

pub use batch_schedule::{BatchPhase, BatchSchedule};
pub use parent::supervisor_main;
pub use parent::{kill_orphaned_trials, ProcessTrialRunner, RunnerOptions};

/// JSON has no NaN or infinity: non-finite floats travel as `null` and come
/// back as NaN, so a diverged trial's losses survive the protocol.
pub(crate) mod json_float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else {
            serializer.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }

    pub mod vec {
        use super::*;

        pub fn serialize<S: Serializer>(values: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_seq(values.iter().map(|v| v.is_finite().then_some(*v)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<f64>, D::Error> {
            Ok(Vec::<Option<f64>>::deserialize(deserializer)?
                .into_iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect())
        }
    }
}

pub use crate::machine::TrialDevice;

/// The hidden subcommand a worker runs as.
pub const WORKER_SUBCOMMAND: &str = "__trial-worker";

/// The hidden subcommand a command trial's supervisor runs as.
pub const SUPERVISOR_SUBCOMMAND: &str = "__trial-supervisor";

/// How a command trial's processes are held together, so that none
/// outlives its trial or escapes its memory accounting (README, "Trial
/// containment").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Containment {
    /// A cgroup per trial where batchd has a delegated cgroup v2 subtree
    /// (systemd's `Delegate=yes`), else the subreaper.
    #[default]
    Auto,
    /// A cgroup v2 per trial under batchd's own cgroup; an error where the
    /// cgroup cannot be made.
    Cgroup,
    /// A per-trial supervisor process that is the child subreaper of the
    /// trial's processes.
    Subreaper,
}

/// Exit status of a worker that panicked on any thread.
pub const PANIC_EXIT_CODE: i32 = 70;
/// Prefix of the line the panic hook writes on stderr.
pub const PANIC_MARKER: &str = "batchd-worker: panic on thread";

/// One line of the worker protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerEvent {
    Started {
        pid: u32,
        device: TrialDevice,
        backend: String,
    },
    Progress {
        step: u32,
        #[serde(with = "json_float")]
        loss: f64,
        lr: f64,
    },
    Result {
        report: Box<WorkerReport>,
    },
}

/// The Burn release the trial engine is built with (Cargo.toml pins it
/// exactly; a test keeps the two in step).
pub const BURN_VERSION: &str = "0.21.0";

/// Why a trial request cannot run; the words become the trial's reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// The learning rate at each step of a trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LrSchedule {
    Constant {
        lr: f64,
    },
    /// Linear warm-up from lr/warmup_steps to lr, then constant.
    Warmup {
        lr: f64,
        warmup_steps: u32,
    },
    /// Exponential sweep from `min_lr` at the first step to `max_lr` at the
    /// last (an LR range test).
    ExponentialSweep {
        min_lr: f64,
        max_lr: f64,
    },
    /// Linear warm-up to `lr`, then cosine decay to `lr x final_fraction`
    /// at the last step: the schedule batchd recommends, and the one its
    /// confirmation and race runs use, because a decayed final iterate
    /// does not bounce the way a constant-LR one does.
    WarmupCosine {
        lr: f64,
        warmup_steps: u32,
        final_fraction: f64,
    },
}

impl LrSchedule {
    /// The LR at `step` (0-based) of a trial of `steps` steps.
    pub fn lr_at(&self, step: u32, steps: u32) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Warmup { lr, warmup_steps } => {
                if warmup_steps == 0 || step >= warmup_steps {
                    lr
                } else {
                    lr * f64::from(step + 1) / f64::from(warmup_steps)
                }
            }
            LrSchedule::ExponentialSweep { min_lr, max_lr } => {
                let fraction = if steps <= 1 {
                    0.0
                } else {
                    f64::from(step) / f64::from(steps - 1)
                };
                min_lr * (max_lr / min_lr).powf(fraction)
            }
            LrSchedule::WarmupCosine {
                lr,
                warmup_steps,
                final_fraction,
            } => {
                if step < warmup_steps {
                    return lr * f64::from(step + 1) / f64::from(warmup_steps);
                }
                let decay_steps = steps.saturating_sub(warmup_steps).max(1);
                let progress = if decay_steps <= 1 {
                    1.0
                } else {
                    f64::from(step - warmup_steps) / f64::from(decay_steps - 1)
                };
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
                lr * (final_fraction + (1.0 - final_fraction) * cosine)
            }
        }
    }

    /// The peak LR of the schedule (a sweep's last).
    pub fn peak_lr(&self) -> f64 {
        match *self {
            LrSchedule::Constant { lr }
            | LrSchedule::Warmup { lr, .. }
            | LrSchedule::WarmupCosine { lr, .. } => lr,
            LrSchedule::ExponentialSweep { max_lr, .. } => max_lr,
        }
    }

    /// Every LR is finite and positive.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        match *self {
            LrSchedule::Constant { lr }
            | LrSchedule::Warmup { lr, .. }
            | LrSchedule::WarmupCosine { lr, .. }
                if !ok(lr) =>
            {
                Err(InvalidRequest(format!(
                    "learning rate must be finite and > 0, got {lr}"
                )))
            }
            LrSchedule::WarmupCosine { final_fraction, .. }
                if !(0.0..=1.0).contains(&final_fraction) =>
            {
                Err(InvalidRequest(format!(
                    "final_fraction must be in 0..=1, got {final_fraction}"
                )))
            }
            LrSchedule::ExponentialSweep { min_lr, max_lr }
                if !ok(min_lr) || !ok(max_lr) || max_lr <= min_lr =>
            {
                Err(InvalidRequest(format!(
                    "a sweep needs 0 < min_lr < max_lr, got {min_lr} .. {max_lr}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Whether losses are expected to rise towards the end (a sweep's high
    /// LRs diverge by design, so divergence ends a sweep without failing it).
    pub fn is_sweep(&self) -> bool {
        matches!(self, LrSchedule::ExponentialSweep { .. })
    }
}

/// Gradient noise inputs to record (McCandlish et al. 2018, appendix A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GradNoiseRequest {
    /// The smaller batch whose gradient is measured beside the trial's own.
    pub small_batch: u64,
    /// Steps (after warm-up) at which both norms are measured.
    pub measurements: u32,
    /// Spread the measurements evenly over `from_step..steps` (see
    /// [`GradNoiseRequest::steps`]); `None`: the last `measurements` steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_step: Option<u32>,
}

impl GradNoiseRequest {
    /// The steps of a `steps`-step trial that measure both norms: with
    /// `from_step` = h, the `measurements` = m steps h + ⌊(i + ½)(steps − h)/m⌋,
    /// i < m, evenly spread (consecutive steps' gradients are correlated,
    /// spread ones much less); otherwise the last m steps. The Python
    /// helper (`Trial.measure_noise`) computes the same set.
    pub fn steps(&self, steps: u32) -> std::collections::BTreeSet<u32> {
        let m = self.measurements.min(steps);
        match self.from_step {
            Some(from) if from < steps && m > 0 => {
                let span = u64::from(steps - from);
                (0..u64::from(m))
                    .map(|i| from + ((2 * i + 1) * span / (2 * u64::from(m))) as u32)
                    .collect()
            }
            _ => (steps - m..steps).collect(),
        }
    }
}

/// Held-out samples a validation takes where the request names none.
pub const DEFAULT_VALIDATION_SAMPLES: u32 = 1024;

/// The most held-out samples a request may name: a validation is a cost
/// every training run pays.
pub const MAX_VALIDATION_SAMPLES: u32 = 65_536;

/// What a trial records beyond losses and speed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RecordOptions {
    /// Compute the held-out validation loss at the end.
    #[serde(default)]
    pub validation_loss: bool,
    /// Held-out samples the validation loss is taken over (batchd's
    /// worker; a command job's script validates as it does): the first
    /// this many of one fixed draw, so a smaller set is a prefix of a
    /// larger one. `None`: [`DEFAULT_VALIDATION_SAMPLES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_samples: Option<u32>,
    /// Measure squared gradient norms at two batch sizes.
    #[serde(default)]
    pub grad_noise: Option<GradNoiseRequest>,
}

/// Faults a test can ask the worker to commit, to prove the parent never
/// reports a success that did not happen. Not reachable from specs or the
/// CLI; only a request built in code sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Panic on a helper thread while the main thread trains on and reports
    /// success: what Burn 0.21 does on a CUDA out-of-memory.
    PanicOnHelperThread,
    /// Stop responding (sleep forever) after the first step.
    Hang,
    /// Report `ok` with a speed no hardware could reach.
    ImpossibleSpeed,
    /// Report `ok` with the same loss at every step (garbage results).
    FrozenLoss,
    /// Abort the process (SIGABRT) mid-trial.
    Abort,
    /// Allocate without bound, as a memory leak would.
    LeakMemory,
}

/// The Burn backend of a CPU trial. `Auto` picks per model kind from the
/// measurements in the README (`cargo bench --bench backends`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuBackend {
    #[default]
    Auto,
    Flex,
    Ndarray,
    Candle,
    /// libtorch through `tch` (feature `tch-backend`; libtorch 2.9 from
    /// PyPI's torch wheel at build and run time).
    Tch,
}

impl CpuBackend {
    /// The backends this binary is built with, in the benchmark's order.
    pub const BUILT: &'static [CpuBackend] = &[
        CpuBackend::Flex,
        #[cfg(feature = "extra-cpu-backends")]
        CpuBackend::Ndarray,
        #[cfg(feature = "extra-cpu-backends")]
        CpuBackend::Candle,
        #[cfg(feature = "tch-backend")]
        CpuBackend::Tch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CpuBackend::Auto => "auto",
            CpuBackend::Flex => "flex",
            CpuBackend::Ndarray => "ndarray",
            CpuBackend::Candle => "candle",
            CpuBackend::Tch => "tch",
        }
    }

    /// The backend `Auto` resolves to for a model, from the README's
    /// backend table: Flex was the fastest Burn-native backend on every
    /// example model (ndarray trailed it, Candle cannot train the CNN).
    /// libtorch, where built in (`tch-backend`), trained the CNN 1.1-3.4x
    /// and the transformer 1.4-3.3x faster than Flex, but the MLPs at small
    /// batches 1.7-2.8x slower, so it takes the CNN and the transformer only.
    pub fn auto_for(model: &crate::spec::ModelSpec) -> CpuBackend {
        use crate::spec::ModelSpec;
        match model {
            ModelSpec::Mlp(_) => CpuBackend::Flex,
            ModelSpec::Cnn(_) | ModelSpec::Transformer(_) if cfg!(feature = "tch-backend") => {
                CpuBackend::Tch
            }
            ModelSpec::Cnn(_) | ModelSpec::Transformer(_) => CpuBackend::Flex,
        }
    }
}

/// Everything a worker needs to run one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRequest {
    pub spec: JobSpec,
    pub device: TrialDevice,
    pub batch_size: u64,
    pub steps: u32,
    /// Steps excluded from the speed measurement (JIT, autotune, caches).
    pub warmup_steps: u32,
    pub schedule: LrSchedule,
    /// A batch that changes during the run (`batch_size` is then its first
    /// phase's); `None`: `batch_size` throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_schedule: Option<BatchSchedule>,
    pub seed: u64,
    #[serde(default)]
    pub record: RecordOptions,
    /// Memory the trial may use: peak RSS on CPU, the process's GPU memory
    /// on CUDA. `None`: only the device's capacity.
    pub memory_limit_bytes: Option<u64>,
    #[serde(with = "crate::units::duration_text")]
    pub deadline: Duration,
    /// Where CUDA kernels compiled by earlier trials are kept.
    #[serde(default)]
    pub kernel_cache_dir: Option<PathBuf>,
    /// Where parsed tabular data is kept for the next trial.
    #[serde(default)]
    pub data_cache_dir: Option<PathBuf>,
    /// Which Burn backend trains a CPU trial (ignored on CUDA).
    #[serde(default)]
    pub cpu_backend: CpuBackend,
    #[serde(default)]
    pub fault: Option<Fault>,
}

impl TrialRequest {
    /// A plain trial: constant LR, no extras.
    pub fn new(
        spec: JobSpec,
        device: TrialDevice,
        batch_size: u64,
        steps: u32,
        lr: f64,
    ) -> TrialRequest {
        let deadline = spec.policy.trials.deadline;
        let seed = spec.search.seed;
        TrialRequest {
            spec,
            device,
            batch_size,
            steps,
            warmup_steps: (steps / 5).clamp(1, 5),
            schedule: LrSchedule::Constant { lr },
            batch_schedule: None,
            seed,
            record: RecordOptions::default(),
            memory_limit_bytes: None,
            deadline,
            kernel_cache_dir: None,
            data_cache_dir: None,
            cpu_backend: CpuBackend::Auto,
            fault: None,
        }
    }

    /// Checks the request before any work; a failure is `invalid_request`.
    pub fn check(&self) -> Result<(), InvalidRequest> {
        if self.batch_size == 0 {
            return Err(InvalidRequest("batch_size must be > 0".into()));
        }
        if self.steps == 0 {
            return Err(InvalidRequest("steps must be > 0".into()));
        }
        if self.warmup_steps >= self.steps {
            return Err(InvalidRequest(format!(
                "warmup_steps ({}) must be less than steps ({}) so some steps are timed",
                self.warmup_steps, self.steps
            )));
        }
        self.schedule.check()?;
        if let Some(ramp) = &self.batch_schedule {
            ramp.check()?;
            if ramp.first_batch() != self.batch_size {
                return Err(InvalidRequest(format!(
                    "batch_size ({}) must be the batch_schedule's first batch ({})",
                    self.batch_size,
                    ramp.first_batch()
                )));
            }
            // One noise measurement pairs one batch with one small batch;
            // a run whose batch changes has no such pair.
            if self.record.grad_noise.is_some() {
                return Err(InvalidRequest(
                    "grad_noise cannot be measured in a run with a batch_schedule".into(),
                ));
            }
            if !self.spec.supports_batch_schedule() {
                return Err(InvalidRequest(
                    "this command job does not declare batch_schedule = true, so its script would ignore the schedule".into(),
                ));
            }
        }
        if let Some(n) = self.record.validation_samples {
            if n == 0 || n > MAX_VALIDATION_SAMPLES {
                return Err(InvalidRequest(format!(
                    "record.validation_samples must be in 1..={MAX_VALIDATION_SAMPLES}, got {n}"
                )));
            }
        }
        if let Some(noise) = self.record.grad_noise {
            if noise.small_batch == 0 || noise.small_batch >= self.batch_size {
                return Err(InvalidRequest(format!(
                    "grad_noise.small_batch must be in 1..{} (below the trial's batch), got {}",
                    self.batch_size, noise.small_batch
                )));
            }
            if noise.measurements == 0 || noise.measurements > self.steps - self.warmup_steps {
                return Err(InvalidRequest(format!(
                    "grad_noise.measurements must be in 1..={} (the timed steps), got {}",
                    self.steps - self.warmup_steps,
                    noise.measurements
                )));
            }
            if let Some(from) = noise.from_step {
                if from < self.warmup_steps
                    || from >= self.steps
                    || noise.measurements > self.steps - from
                {
                    return Err(InvalidRequest(format!(
                        "grad_noise.from_step must be in {}..{} with grad_noise.measurements ({}) steps after it, got {from}",
                        self.warmup_steps, self.steps, noise.measurements
                    )));
                }
            }
        }
        if self.deadline.is_zero() {
            return Err(InvalidRequest("deadline must be > 0".into()));
        }
        Ok(())
    }
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    OutOfMemory,
    /// Loss NaN, infinite or exploding.
    Diverged,
    Timeout,
    /// Exit code or signal, panic, or a result that failed its cross-checks.
    Crashed,
    InvalidRequest,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::OutOfMemory,
        Outcome::Diverged,
        Outcome::Timeout,
        Outcome::Crashed,
        Outcome::InvalidRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::Diverged => "diverged",
            Outcome::Timeout => "timeout",
            Outcome::Crashed => "crashed",
            Outcome::InvalidRequest => "invalid_request",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two-batch gradient measurements of one trial.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GradNoiseSample {
    pub big_batch: u64,
    pub small_batch: u64,
    /// |G_big|^2 at each measured step.
    pub big_sq_norms: Vec<f64>,
    /// |G_small|^2 at the same steps and parameters.
    pub small_sq_norms: Vec<f64>,
    /// For Adam and AdamW: the same norms of the gradients divided by
    /// Adam's preconditioner sqrt(v_hat) + eps (empty otherwise, or when the
    /// trainer cannot see the optimizer's state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preconditioned_big_sq_norms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preconditioned_small_sq_norms: Vec<f64>,
}

impl GradNoiseSample {
    /// The preconditioned norms as a sample of their own, when every
    /// measured step has them.
    pub fn preconditioned(&self) -> Option<GradNoiseSample> {
        let n = self.big_sq_norms.len();
        (n > 0
            && self.preconditioned_big_sq_norms.len() == n
            && self.preconditioned_small_sq_norms.len() == n)
            .then(|| GradNoiseSample {
                big_batch: self.big_batch,
                small_batch: self.small_batch,
                big_sq_norms: self.preconditioned_big_sq_norms.clone(),
                small_sq_norms: self.preconditioned_small_sq_norms.clone(),
                ..GradNoiseSample::default()
            })
    }

    pub fn big_mean(&self) -> f64 {
        mean(&self.big_sq_norms)
    }

    pub fn small_mean(&self) -> f64 {
        mean(&self.small_sq_norms)
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// How the process ended, as the parent saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What the worker measured; the parent adds its own view in [`TrialResult`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub outcome: Option<Outcome>,
    pub reason: Option<String>,
    pub backend: String,
    pub device_name: String,
    pub precision: Option<Precision>,
    pub parameter_count: u64,
    /// Samples (or token windows) in the training split.
    #[serde(default)]
    pub train_samples: Option<u64>,
    /// Estimated training FLOPs per sample (forward + backward), for the
    /// parent's plausibility check of the measured speed.
    pub train_flops_per_sample: f64,
    pub steps_completed: u32,
    #[serde(with = "json_float::vec")]
    pub losses: Vec<f64>,
    pub learning_rates: Vec<f64>,
    pub validation_loss: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub step_seconds_median: Option<f64>,
    pub setup_seconds: f64,
    pub startup_seconds: Option<f64>,
    /// Seconds to load (or read back) the data, before the model is built.
    #[serde(default)]
    pub data_seconds: Option<f64>,
    /// The data came from the parse cache rather than its file.
    #[serde(default)]
    pub data_from_cache: Option<bool>,
    /// The worker's own peak RSS (VmHWM).
    pub peak_rss_bytes: Option<u64>,
    /// CUDA: device memory in use by this worker's context as the driver saw
    /// it (free memory at start minus the lowest free memory seen).
    pub cuda_memory_delta_bytes: Option<u64>,
    pub device_memory_total_bytes: Option<u64>,
    pub grad_noise: Option<GradNoiseSample>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Seconds from the first step's start to the last step's end, as the
    /// command's report times them (command trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_seconds: Option<f64>,
    /// Seconds the validation took: timed by the worker, or as the command
    /// reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_seconds: Option<f64>,
}

/// The result of one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    pub outcome: Outcome,
    /// Why a trial did not succeed, in words.
    pub reason: Option<String>,
    pub batch_size: u64,
    pub steps: u32,
    pub steps_completed: u32,
    pub device: TrialDevice,
    /// The device's name as its driver gives it (`NVIDIA H200`), for GPUs.
    #[serde(default)]
    pub device_name: Option<String>,
    pub backend: String,
    pub precision: Option<Precision>,
    pub parameter_count: Option<u64>,
    /// Samples (or token windows) in the data's training split.
    pub train_samples: Option<u64>,
    #[serde(with = "json_float::vec")]
    pub losses: Vec<f64>,
    pub learning_rates: Vec<f64>,
    pub loss_first: Option<f64>,
    pub loss_last: Option<f64>,
    pub validation_loss: Option<f64>,
    pub samples_per_second: Option<f64>,
    pub step_seconds_median: Option<f64>,
    pub startup_seconds: Option<f64>,
    pub setup_seconds: Option<f64>,
    /// Seconds the worker took to load its data.
    #[serde(default)]
    pub data_seconds: Option<f64>,
    #[serde(default)]
    pub data_from_cache: Option<bool>,
    pub peak_memory_bytes: Option<u64>,
    /// How the peak was measured: `rss` (CPU), `nvml` (per-process GPU
    /// memory), `cuda_context` (driver free-memory delta) or `cgroup` (the
    /// trial cgroup's memory controller, a command trial's working set).
    pub peak_memory_source: Option<String>,
    pub memory_limit_bytes: Option<u64>,
    pub device_memory_total_bytes: Option<u64>,
    pub grad_noise: Option<GradNoiseSample>,
    pub wall_seconds: f64,
    pub exit: Option<ExitInfo>,
    /// The end of the worker's stderr, kept for failures.
    pub stderr_tail: String,
    pub warnings: Vec<String>,
    /// Seconds spent stepping (command trials: from the report's times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_seconds: Option<f64>,
    /// Which trial of its process this was: 1 for a fresh process, k for
    /// the k-th trial of a persistent one (command trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_trial: Option<u32>,
    /// Seconds the validation took (worker trials, and command trials that
    /// report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_seconds: Option<f64>,
}

impl TrialResult {
    pub fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// Runs trials. The real runner spawns worker processes; the search is
/// written against this trait so tests can use fakes.
pub trait TrialRunner: Send + Sync {
    fn run(&self, request: TrialRequest) -> impl Future<Output = TrialResult> + Send;

    /// The search on `device` is over: end what the runner keeps between
    /// its trials (a command job's persistent process).
    fn release(&self, device: TrialDevice) -> impl Future<Output = ()> + Send {
        let _ = device;
        async {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_backend_defaults_to_auto_and_auto_is_a_built_backend() {
        let request: serde_json::Value = serde_json::json!("ndarray");
        assert_eq!(
            serde_json::from_value::<CpuBackend>(request).unwrap(),
            CpuBackend::Ndarray
        );
        assert_eq!(CpuBackend::default(), CpuBackend::Auto);
        for model in [
            r#"{"kind":"mlp","input_size":4,"hidden":[8],"classes":2,"activation":"relu","dropout":0.0}"#,
            r#"{"kind":"cnn","height":8,"width":8,"channels":1,"stages":[4],"blocks_per_stage":1,"classes":2}"#,
            r#"{"kind":"transformer","vocab_size":16,"context_length":8,"d_model":8,"layers":1,"heads":2,"mlp_ratio":4,"dropout":0.0}"#,
        ] {
            let model: crate::spec::ModelSpec = serde_json::from_str(model).unwrap();
            let chosen = CpuBackend::auto_for(&model);
            assert!(CpuBackend::BUILT.contains(&chosen), "{chosen:?}");
            assert_ne!(chosen, CpuBackend::Auto);
        }
    }

    #[test]
    fn flex_is_built_with_its_simd_kernels_and_threads() {
        // Burn asks for its CPU backends without their default features;
        // without these the CPU trials ran scalar on one core.
        let manifest = include_str!("../../Cargo.toml");
        assert!(
            manifest.contains(r#"burn-flex = { version = "=0.21.0", default-features = false, features = ["std", "simd", "rayon"] }"#),
            "Cargo.toml must name burn-flex with simd and rayon"
        );
    }

    #[test]
    fn the_burn_version_named_is_the_one_cargo_pins() {
        let manifest = include_str!("../../Cargo.toml");
        let pin = format!("burn = {{ version = \"={BURN_VERSION}\"");
        assert!(manifest.contains(&pin), "Cargo.toml does not pin {pin}");
    }

    #[test]
    fn sweep_runs_from_min_to_max_exponentially() {
        let sweep = LrSchedule::ExponentialSweep {
            min_lr: 1e-4,
            max_lr: 1.0,
        };
        assert!((sweep.lr_at(0, 5) - 1e-4).abs() < 1e-12);
        assert!((sweep.lr_at(2, 5) - 1e-2).abs() < 1e-9);
        assert!((sweep.lr_at(4, 5) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn warmup_rises_linearly_then_holds() {
        let warmup = LrSchedule::Warmup {
            lr: 0.1,
            warmup_steps: 4,
        };
        assert!((warmup.lr_at(0, 10) - 0.025).abs() < 1e-12);
        assert!((warmup.lr_at(3, 10) - 0.1).abs() < 1e-12);
        assert!((warmup.lr_at(9, 10) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn cosine_warms_up_then_decays_to_its_floor() {
        let cosine = LrSchedule::WarmupCosine {
            lr: 1.0,
            warmup_steps: 2,
            final_fraction: 0.1,
        };
        assert!((cosine.lr_at(0, 12) - 0.5).abs() < 1e-12);
        assert!((cosine.lr_at(2, 12) - 1.0).abs() < 1e-12);
        assert!((cosine.lr_at(11, 12) - 0.1).abs() < 1e-12);
        let middle = cosine.lr_at(7, 12);
        assert!(middle < 1.0 && middle > 0.1, "{middle}");
        assert!(LrSchedule::WarmupCosine {
            lr: 1.0,
            warmup_steps: 0,
            final_fraction: 1.5
        }
        .check()
        .is_err());
    }

    #[test]
    fn bad_schedules_are_rejected() {
        assert!(LrSchedule::Constant { lr: f64::NAN }.check().is_err());
        assert!(LrSchedule::ExponentialSweep {
            min_lr: 1.0,
            max_lr: 0.1
        }
        .check()
        .is_err());
    }
}
