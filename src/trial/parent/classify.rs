//! Deciding how a trial ended, from what the parent saw: its own kills, the
//! exit status, the worker's report, stderr and the measured memory. Every
//! `ok` is cross-checked, because a worker can believe it succeeded when it
//! did not (Burn 0.21 on a CUDA out-of-memory).

use crate::trial::{ExitInfo, Outcome, TrialDevice, WorkerReport, PANIC_EXIT_CODE, PANIC_MARKER};

/// Why the parent killed the worker, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Deadline,
    /// Memory passed the limit while the trial ran.
    MemoryLimit {
        peak: u64,
        limit: u64,
    },
}

/// Everything the parent knows when the worker is gone.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub device: TrialDevice,
    pub steps: u32,
    pub deadline_seconds: f64,
    pub killed: Option<KillReason>,
    pub exit: &'a ExitInfo,
    pub report: Option<&'a WorkerReport>,
    pub stderr_tail: &'a str,
    pub peak_memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub device_memory_total_bytes: Option<u64>,
    pub cpu_count: usize,
    /// A user's command rather than batchd's worker: its exit codes and
    /// stderr follow no convention of ours.
    pub foreign: bool,
}

/// Phrases that mean "out of memory" in the stderr of Burn/cubecl, the Rust
/// allocator, the CUDA driver, and (for foreign training scripts) PyTorch,
/// JAX/XLA and TensorFlow.
pub const OOM_PATTERNS: &[&str] = &[
    "can't allocate buffer",
    "memory page",
    "out of memory",
    "outofmemory",
    "out_of_memory",
    "memory allocation of",
    "cannot allocate memory",
    "resource_exhausted",
    "oom when allocating",
    "failed to allocate",
    // Python's host-side out-of-memory and C++'s.
    "memoryerror",
    "std::bad_alloc",
];

pub fn mentions_oom(text: &str) -> bool {
    let lowered = text.to_ascii_lowercase();
    OOM_PATTERNS.iter().any(|p| lowered.contains(p))
}

/// Peak training FLOP/s a device could plausibly reach, generously above
/// any real figure: a measured speed above it is a broken measurement.
fn plausible_peak_flops(device: TrialDevice, cpu_count: usize) -> f64 {
    match device {
        // ~4x a wide-vector core's fp32 peak: no CPU trains faster.
        TrialDevice::Cpu => cpu_count.max(1) as f64 * 400e9,
        // Above a Hopper GPU's dense bf16 and fp8 peaks.
        TrialDevice::Cuda(_) => 5e15,
    }
}

/// Why a reported success cannot be believed: the first check it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Implausible(pub String);

/// Cross-checks a success the worker reported. `Err` names the first
/// check that failed.
pub fn cross_check(obs: &Observation<'_>, report: &WorkerReport) -> Result<(), Implausible> {
    if report.steps_completed != obs.steps || report.losses.len() != obs.steps as usize {
        return Err(Implausible(format!(
            "the worker reported success after {} of {} steps",
            report.steps_completed, obs.steps
        )));
    }
    if let Some((step, loss)) = report
        .losses
        .iter()
        .enumerate()
        .find(|(_, l)| !l.is_finite())
    {
        return Err(Implausible(format!(
            "loss at step {step} is {loss}, yet the worker reported success"
        )));
    }
    if report.losses.len() >= 3
        && report
            .losses
            .windows(2)
            .all(|w| w[0].to_bits() == w[1].to_bits())
    {
        return Err(Implausible(format!(
            "the loss is bit-identical ({}) at all {} steps although every step draws a new batch: the results are not real",
            report.losses[0],
            report.losses.len()
        )));
    }
    if let (Some(peak), Some(total)) = (obs.peak_memory_bytes, obs.device_memory_total_bytes) {
        if peak >= total {
            return Err(Implausible(format!(
                "peak memory {peak} bytes is not below the device's capacity {total}"
            )));
        }
    }
    if let Some(speed) = report.samples_per_second {
        if !speed.is_finite() || speed <= 0.0 {
            return Err(Implausible(format!(
                "measured speed {speed} samples/s is not a speed"
            )));
        }
        let implied = speed * report.train_flops_per_sample;
        let peak = plausible_peak_flops(obs.device, obs.cpu_count);
        if report.train_flops_per_sample > 0.0 && implied > peak {
            return Err(Implausible(format!(
                "{speed:.0} samples/s would need {:.2e} FLOP/s, more than this device can do ({peak:.2e}): the steps did not really run",
                implied
            )));
        }
    }
    Ok(())
}

/// Classifies a finished trial: the outcome and, unless `ok`, why.
pub fn classify(obs: &Observation<'_>) -> (Outcome, Option<String>) {
    match obs.killed {
        Some(KillReason::Deadline) => {
            return (
                Outcome::Timeout,
                Some(format!(
                    "killed at its deadline of {:.1}s",
                    obs.deadline_seconds
                )),
            )
        }
        Some(KillReason::MemoryLimit { peak, limit }) => {
            return (
                Outcome::OutOfMemory,
                Some(format!(
                    "memory reached {} while the limit is {}; killed",
                    crate::units::ByteSize(peak),
                    crate::units::ByteSize(limit)
                )),
            )
        }
        None => {}
    }
    let stderr = obs.stderr_tail;
    let last_line = |text: &str| {
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let worker_panicked = obs.exit.code == Some(PANIC_EXIT_CODE) || stderr.contains(PANIC_MARKER);
    if worker_panicked && !obs.foreign {
        let panic_line = stderr
            .lines()
            .find(|l| l.contains(PANIC_MARKER))
            .map(str::to_string)
            .unwrap_or_else(|| last_line(stderr));
        let outcome = if mentions_oom(&panic_line) {
            Outcome::OutOfMemory
        } else {
            Outcome::Crashed
        };
        return (outcome, Some(panic_line));
    }
    if let Some(signal) = obs.exit.signal {
        if mentions_oom(stderr) {
            return (Outcome::OutOfMemory, Some(last_line(stderr)));
        }
        if signal == libc::SIGKILL {
            // Not our kill: on Linux that is almost always the kernel's
            // OOM killer.
            return (
                Outcome::OutOfMemory,
                Some(
                    "killed by SIGKILL from outside batchd (most likely the kernel's OOM killer)"
                        .into(),
                ),
            );
        }
        return (
            Outcome::Crashed,
            Some(format!("killed by signal {signal}: {}", last_line(stderr))),
        );
    }
    let Some(report) = obs.report else {
        let why = match obs.exit.code {
            Some(0) => "exited 0 without reporting a result".to_string(),
            Some(code) => format!("exited with status {code}"),
            None => "ended without an exit status".to_string(),
        };
        let outcome = if mentions_oom(stderr) {
            Outcome::OutOfMemory
        } else {
            Outcome::Crashed
        };
        let tail = last_line(stderr);
        return (
            outcome,
            Some(if tail.is_empty() {
                why
            } else {
                format!("{why}: {tail}")
            }),
        );
    };
    if obs.exit.code != Some(0) {
        return (
            Outcome::Crashed,
            Some(format!(
                "reported a result but exited with status {:?}",
                obs.exit.code
            )),
        );
    }
    let outcome = report.outcome.unwrap_or(Outcome::Crashed);
    if outcome != Outcome::Ok {
        return (outcome, report.reason.clone());
    }
    if let Err(reason) = cross_check(obs, report) {
        return (
            Outcome::Crashed,
            Some(format!("result failed its cross-check: {reason}")),
        );
    }
    if let (Some(peak), Some(limit)) = (obs.peak_memory_bytes, obs.memory_limit_bytes) {
        if peak > limit {
            return (
                Outcome::OutOfMemory,
                Some(format!(
                    "peak memory {} exceeds the limit {}",
                    crate::units::ByteSize(peak),
                    crate::units::ByteSize(limit)
                )),
            );
        }
    }
    (Outcome::Ok, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good_report() -> WorkerReport {
        WorkerReport {
            outcome: Some(Outcome::Ok),
            steps_completed: 4,
            losses: vec![2.3, 2.2, 2.1, 2.05],
            samples_per_second: Some(10_000.0),
            train_flops_per_sample: 1e6,
            ..WorkerReport::default()
        }
    }

    fn observe<'a>(
        exit: &'a ExitInfo,
        report: Option<&'a WorkerReport>,
        stderr: &'a str,
    ) -> Observation<'a> {
        Observation {
            device: TrialDevice::Cpu,
            steps: 4,
            deadline_seconds: 60.0,
            killed: None,
            exit,
            report,
            stderr_tail: stderr,
            peak_memory_bytes: Some(100 << 20),
            memory_limit_bytes: Some(1 << 30),
            device_memory_total_bytes: None,
            cpu_count: 2,
            foreign: false,
        }
    }

    const CLEAN: ExitInfo = ExitInfo {
        code: Some(0),
        signal: None,
    };

    #[test]
    fn a_clean_success_is_ok() {
        let report = good_report();
        assert_eq!(classify(&observe(&CLEAN, Some(&report), "")).0, Outcome::Ok);
    }

    #[test]
    fn a_panic_on_any_thread_is_never_ok() {
        let report = good_report();
        let exit = ExitInfo {
            code: Some(PANIC_EXIT_CODE),
            signal: None,
        };
        let stderr =
            "batchd-worker: panic on thread 'cubecl-device': can't allocate buffer of size 42";
        let (outcome, reason) = classify(&observe(&exit, Some(&report), stderr));
        assert_eq!(outcome, Outcome::OutOfMemory);
        assert!(reason.unwrap().contains("can't allocate buffer"));
        let stderr = "batchd-worker: panic on thread 'x': index out of bounds";
        assert_eq!(
            classify(&observe(&exit, Some(&report), stderr)).0,
            Outcome::Crashed
        );
        // Even with exit 0, the marker on stderr fails the trial.
        assert_eq!(
            classify(&observe(&CLEAN, Some(&report), stderr)).0,
            Outcome::Crashed
        );
    }

    #[test]
    fn garbage_successes_fail_the_cross_check() {
        let mut frozen = good_report();
        frozen.losses = vec![2.3; 4];
        assert_eq!(
            classify(&observe(&CLEAN, Some(&frozen), "")).0,
            Outcome::Crashed
        );

        let mut fast = good_report();
        fast.samples_per_second = Some(1e12);
        let (outcome, reason) = classify(&observe(&CLEAN, Some(&fast), ""));
        assert_eq!(outcome, Outcome::Crashed);
        assert!(reason.unwrap().contains("FLOP/s"));

        let mut nan = good_report();
        nan.losses[2] = f64::NAN;
        assert_eq!(
            classify(&observe(&CLEAN, Some(&nan), "")).0,
            Outcome::Crashed
        );

        let mut short = good_report();
        short.steps_completed = 2;
        assert_eq!(
            classify(&observe(&CLEAN, Some(&short), "")).0,
            Outcome::Crashed
        );
    }

    #[test]
    fn memory_over_capacity_or_limit_is_not_a_success() {
        let report = good_report();
        let mut obs = observe(&CLEAN, Some(&report), "");
        obs.device = TrialDevice::Cuda(0);
        obs.device_memory_total_bytes = Some(80 << 30);
        obs.peak_memory_bytes = Some(80 << 30);
        assert_eq!(classify(&obs).0, Outcome::Crashed);
        let mut obs = observe(&CLEAN, Some(&report), "");
        obs.peak_memory_bytes = Some(2 << 30);
        assert_eq!(classify(&obs).0, Outcome::OutOfMemory);
    }

    #[test]
    fn signals_and_missing_results() {
        let aborted = ExitInfo {
            code: None,
            signal: Some(libc::SIGABRT),
        };
        let (outcome, _) = classify(&observe(
            &aborted,
            None,
            "memory allocation of 1048576 bytes failed",
        ));
        assert_eq!(outcome, Outcome::OutOfMemory);
        assert_eq!(
            classify(&observe(&aborted, None, "boom")).0,
            Outcome::Crashed
        );
        let killed = ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
        };
        assert_eq!(
            classify(&observe(&killed, None, "")).0,
            Outcome::OutOfMemory
        );
        assert_eq!(classify(&observe(&CLEAN, None, "")).0, Outcome::Crashed);
    }

    #[test]
    fn parent_kills_decide_first() {
        let report = good_report();
        let mut obs = observe(&CLEAN, Some(&report), "");
        obs.killed = Some(KillReason::Deadline);
        assert_eq!(classify(&obs).0, Outcome::Timeout);
        obs.killed = Some(KillReason::MemoryLimit {
            peak: 2 << 30,
            limit: 1 << 30,
        });
        assert_eq!(classify(&obs).0, Outcome::OutOfMemory);
    }

    #[test]
    fn foreign_framework_oom_messages_are_recognized() {
        assert!(mentions_oom(
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
        ));
        assert!(mentions_oom(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate"
        ));
        assert!(mentions_oom(
            "OOM when allocating tensor with shape[1024,1024]"
        ));
        assert!(mentions_oom("    x = [0] * n\nMemoryError"));
        assert!(mentions_oom(
            "terminate called after throwing an instance of 'std::bad_alloc'"
        ));
        assert!(!mentions_oom("loss 2.3 at step 4"));
    }

    #[test]
    fn a_foreign_exit_70_is_not_taken_for_a_worker_panic() {
        let exit = ExitInfo {
            code: Some(70),
            signal: None,
        };
        let mut obs = observe(&exit, None, "sysexits: EX_SOFTWARE");
        obs.foreign = true;
        let (outcome, reason) = classify(&obs);
        assert_eq!(outcome, Outcome::Crashed);
        assert!(reason.unwrap().contains("exited with status 70"));
    }
}
