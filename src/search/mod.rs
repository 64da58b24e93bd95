//! Search and advice: the largest fitting batch, the throughput curve, the
//! gradient noise scale and the LR pairing, turned into a recommendation.
//!
//! Written as pure logic over the [`TrialRunner`] trait: unit tests drive it
//! with fake runners, the daemon and the CLI with real worker processes.

pub mod clock;
pub mod curve;
pub mod findings;
pub mod lr;
pub mod maxfit;
pub mod noise;
mod phase;
mod phases;
pub mod plan;
pub mod race;
pub mod ramp;
pub mod recommend;
pub mod stats;
pub mod steptime;
pub mod throughput;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::{JobSpec, OptimizerSpec};
use crate::trial::{LrSchedule, Outcome, TrialRequest, TrialResult, TrialRunner};
use clock::{Clock, SystemClock};
use plan::{BudgetPlan, RunBook};
pub use recommend::{
    Evidence, LrAdvice, MemoryAdvice, Phase, Recommendation, ScheduleAdvice, ThroughputAdvice,
    TrialRecord, SCHEMA_VERSION,
};
use stats::median;

pub use crate::machine::SearchContext;

/// A progress report while the search runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub trials_done: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the job cannot be trialled: {0}")]
    InvalidRequest(String),
    #[error("not even a batch of {min_batch} fits in {budget} bytes: {reason}")]
    NothingFits {
        min_batch: u64,
        budget: u64,
        reason: String,
    },
}

/// Wall time of a training run over its timed steps, before any run has
/// measured it: untimed data sampling, validation and noise measurement.
const DEFAULT_RUN_RATIO: f64 = 1.15;

/// A small LR that will not diverge, for trials that only measure memory
/// and speed.
fn probe_lr(spec: &JobSpec) -> f64 {
    match spec.optimizer {
        OptimizerSpec::Sgd { .. } => 1e-3,
        _ => 1e-4,
    }
}

/// The textbook exponent of lr ~ B^alpha for the optimizer.
fn textbook_alpha(spec: &JobSpec) -> f64 {
    match spec.optimizer {
        OptimizerSpec::Sgd { .. } => 1.0,
        _ => 0.5,
    }
}

/// Per-search state shared by the phases: the trials so far, the clock
/// and the plan.
struct Session<'a, R: TrialRunner> {
    spec: &'a JobSpec,
    ctx: &'a SearchContext,
    runner: &'a R,
    budget_bytes: u64,
    clock: &'a dyn Clock,
    /// The clock's reading when the search started.
    started: Duration,
    plan: BudgetPlan,
    records: Vec<TrialRecord>,
    /// Phases the budget cut short, each with what was left out.
    cut: Vec<(Phase, findings::Gap)>,
    /// Refinements beyond the plan the budget left out (not partial).
    skipped: Vec<findings::Gap>,
    on_progress: &'a (dyn Fn(&Progress) + Send + Sync),
    train_samples: Option<u64>,
    /// Seconds a trial costs beyond its steps (process start, data, model
    /// build, validation), measured on the trials so far.
    overheads: Vec<f64>,
    /// Wall time of each training run, less its validation, over its timed
    /// stepping: what noise measurement, data sampling and start-up add.
    run_ratios: Vec<f64>,
    /// Seconds each timed validation took, scaled to the default set of
    /// held-out samples: a fixed cost per training run, whatever its batch
    /// or length.
    validations: Vec<f64>,
    /// Held-out samples every training run validates on (`None`: the
    /// worker's default), sized once before the runs are planned so every
    /// run is judged on the same samples.
    validation_samples: Option<u32>,
    /// The training runs still planned, by rank: the plan of the phases
    /// left is recomputed from it after every run (empty until the runs
    /// are planned, and for equal-epoch runs, whose cost varies by batch).
    book: RunBook,
    /// The training runs made so far, so an identical one is reused.
    finished_runs: Vec<phases::FinishedRun>,
    /// Runs a phase asked for that an earlier run had made.
    reused: Vec<findings::Reused>,
}

impl<R: TrialRunner> Session<'_, R> {
    fn elapsed(&self) -> Duration {
        self.clock.now().saturating_sub(self.started)
    }

    fn time_left(&self) -> Duration {
        self.spec.search.time_budget.saturating_sub(self.elapsed())
    }

    /// Time left in `phase`'s share of the plan.
    fn phase_left(&self, phase: Phase) -> Duration {
        self.plan.left(phase, self.elapsed()).min(self.time_left())
    }

    /// Records that `phase` was cut short, and what it left out.
    fn cut_short(&mut self, phase: Phase, what: findings::Gap) {
        if !self.cut.iter().any(|(p, _)| *p == phase) {
            // In phase order: a confirmation's cut is judged after the race.
            let at = self.cut.partition_point(|(p, _)| *p < phase);
            self.cut.insert(at, (phase, what));
        }
    }

    /// The median per-trial overhead seen so far (1 s before any trial).
    fn overhead_seconds(&self) -> f64 {
        median(&self.overheads).unwrap_or(1.0)
    }

    /// Seconds a training run's validation takes: timed once before the
    /// runs are planned (the first ladder trial), 0 where nothing timed it.
    fn validation_seconds(&self) -> f64 {
        let scale = self.validation_samples.map_or(1.0, |n| {
            f64::from(n) / f64::from(crate::trial::DEFAULT_VALIDATION_SAMPLES)
        });
        median(&self.validations).unwrap_or(0.0) * scale
    }

    /// Wall seconds of a training run whose timed steps take `stepping`:
    /// its validation, plus the stepping at what runs so far cost over
    /// theirs, else a margin over the probes' overhead. (A ratio alone
    /// made a 2.5-s transformer run, whose validation takes 0.8 s, cost
    /// 3.1 s in the plan and 3.6-4.3 s in fact.)
    fn run_seconds(&self, stepping: f64) -> f64 {
        let fixed = self.overhead_seconds() * 1.5 + 0.1;
        let beyond_validation = match median(&self.run_ratios) {
            // Measured: the floor is the probes' overhead, not the guess
            // for what a training run adds to it.
            Some(ratio) => (stepping * ratio).max(self.overhead_seconds() * 1.5),
            None => stepping * DEFAULT_RUN_RATIO + fixed,
        };
        beyond_validation + self.validation_seconds()
    }

    /// The timed stepping a run may have to take `seconds` of wall time.
    fn stepping_within(&self, seconds: f64) -> f64 {
        let fixed = self.overhead_seconds() * 1.5 + 0.1;
        let seconds = seconds - self.validation_seconds();
        let stepping = match median(&self.run_ratios) {
            Some(ratio) => seconds / ratio,
            None => (seconds - fixed) / DEFAULT_RUN_RATIO,
        };
        stepping.max(0.05)
    }

    fn request(&self, batch: u64, steps: u32, schedule: LrSchedule) -> TrialRequest {
        let mut request = TrialRequest::new(
            self.spec.clone(),
            self.ctx.device,
            batch,
            steps,
            probe_lr(self.spec),
        );
        request.schedule = schedule;
        request.warmup_steps = self
            .spec
            .policy
            .trials
            .warmup_steps
            .min(steps.saturating_sub(1));
        request.memory_limit_bytes = Some(self.budget_bytes);
        // Never run past the search's own budget.
        request.deadline = self
            .spec
            .policy
            .trials
            .deadline
            .min(self.time_left().max(Duration::from_secs(1)));
        request
    }

    async fn trial(&mut self, phase: Phase, request: TrialRequest) -> TrialResult {
        (self.on_progress)(&Progress {
            phase,
            trials_done: self.records.len(),
            message: format!("{} trial at batch {}", phase.as_str(), request.batch_size),
        });
        let (lr, lr_start) = match request.schedule {
            LrSchedule::ExponentialSweep { min_lr, max_lr } => (max_lr, Some(min_lr)),
            other => (other.peak_lr(), None),
        };
        let batch = request.batch_size;
        let steps = request.steps;
        let training = phases::TRAINING_PHASES.contains(&phase);
        // Validations are kept at the default set's size: the plan scales
        // them to the set its runs use.
        let validation_scale = request.record.validation_samples.map_or(1.0, |n| {
            f64::from(crate::trial::DEFAULT_VALIDATION_SAMPLES) / f64::from(n.max(1))
        });
        let result = self.runner.run(request).await;
        if self.train_samples.is_none() {
            self.train_samples = result.train_samples;
        }
        let validation = result
            .validation_seconds
            .filter(|s| s.is_finite() && *s >= 0.0);
        if let Some(seconds) = validation {
            self.validations.push(seconds * validation_scale);
        }
        if let (true, Some(speed)) = (result.is_ok(), result.samples_per_second) {
            let stepping = f64::from(result.steps_completed) * batch as f64 / speed;
            let wall = result.wall_seconds - validation.unwrap_or(0.0);
            self.overheads.push((wall - stepping).max(0.0));
            if training && stepping > 0.0 {
                self.run_ratios.push(wall / stepping);
            }
        }
        if result.outcome == Outcome::Timeout && self.time_left().is_zero() {
            self.cut_short(phase, findings::Gap::BudgetRanOut);
        }
        self.records.push(TrialRecord {
            phase,
            batch_size: batch,
            learning_rate: Some(lr),
            learning_rate_start: lr_start,
            steps,
            outcome: result.outcome,
            reason: result.reason.clone(),
            peak_memory_bytes: result.peak_memory_bytes,
            samples_per_second: result.samples_per_second,
            validation_loss: result.validation_loss,
            process_trial: result.process_trial,
            seconds: result.wall_seconds,
        });
        if training {
            self.book.ran(phase);
            self.replan_from_book();
        }
        (self.on_progress)(&Progress {
            phase,
            trials_done: self.records.len(),
            message: format!("batch {batch}: {}", result.outcome),
        });
        result
    }
}

/// Runs the whole search for `spec` and returns the recommendation. The
/// phases, in order: the largest batch that fits; the throughput curve and
/// its step-time model; an LR range test; LR confirmation (which also
/// measures the noise scale after training); the race between candidate
/// batches; an LR check at the winner; the recommendation.
pub async fn advise<R: TrialRunner>(
    spec: &JobSpec,
    ctx: &SearchContext,
    runner: &R,
    on_progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Recommendation, SearchError> {
    advise_with_clock(spec, ctx, runner, on_progress, &SystemClock::default()).await
}

/// [`advise`] on the given clock (a [`clock::ManualClock`] in tests and
/// simulations: the budget rules then follow simulated time).
pub async fn advise_with_clock<R: TrialRunner>(
    spec: &JobSpec,
    ctx: &SearchContext,
    runner: &R,
    on_progress: &(dyn Fn(&Progress) + Send + Sync),
    clock: &dyn Clock,
) -> Result<Recommendation, SearchError> {
    let budget_bytes =
        (ctx.memory_limit_bytes as f64 * (1.0 - spec.policy.memory_headroom_fraction)) as u64;
    let session = Session {
        spec,
        ctx,
        runner,
        budget_bytes,
        clock,
        started: clock.now(),
        plan: BudgetPlan::new(spec.search.time_budget, &spec.policy.budget_shares),
        records: Vec::new(),
        cut: Vec::new(),
        skipped: Vec::new(),
        on_progress,
        train_samples: None,
        overheads: Vec::new(),
        run_ratios: Vec::new(),
        validations: Vec::new(),
        validation_samples: None,
        book: RunBook::default(),
        finished_runs: Vec::new(),
        reused: Vec::new(),
    };
    let outcome = session.run_phases().await;
    // What the runner kept for this search's trials (a command job's
    // persistent process) goes now, not at its idle timeout.
    runner.release(ctx.device).await;
    outcome
}

impl<R: TrialRunner> Session<'_, R> {
    async fn run_phases(mut self) -> Result<Recommendation, SearchError> {
        let fit = self.max_fit().await?;
        let cap = self.batch_cap(&fit);
        self.note_max_fit_stop(&fit, &cap);
        let curve = self.throughput_curve(&fit, &cap).await;
        let range = self.lr_range_test(&curve).await;
        let runs = self.plan_training_runs(&curve, &range);
        let reference = self.confirm_reference_lr(&curve, &range, &runs).await;
        let runs = self.replan_from_runs(&curve, &reference, runs);
        let race = self.race(&curve, &reference, &runs).await;
        let ramp = self.derive_ramp(&curve, &race, &runs);
        self.book.close(Phase::Race);
        if !ramp.races() {
            self.book.close(Phase::Ramp);
        }
        self.replan_from_book();
        let check = self.lr_check(&curve, &reference, &race).await;
        self.settle_refused(&reference, &race);
        self.book.close(Phase::LrCheck);
        self.replan_from_book();
        let ramp = self.ramp(&curve, &runs, ramp).await;
        // Stored and served with its curves cut to what the charts need.
        Ok(self
            .recommend(fit, cap, curve, range, reference, race, check, ramp, runs)
            .with_compact_curves())
    }
}

#[cfg(test)]
pub(crate) mod tests;
