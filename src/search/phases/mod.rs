//! The phases of a search, each a method returning a typed result with the
//! findings it contributes (`search::findings` words them), one file per
//! phase. `advise` in the
//! parent module calls them in order.

mod advice;
mod check;
mod contest;
mod fit;
mod ladder;
mod ramp;
mod range_test;
mod reference;
mod runs;

pub(super) use ramp::RampPhase;
#[cfg(test)]
pub(super) use runs::RunKey;
pub(super) use runs::{FinishedRun, TRAINING_PHASES};

use super::findings::{Finding, Gap, RunLengthSource};
use super::lr::{
    best_lr, fit_alpha, settle_refused, transfer_lr, BestLr, CheckMachine, ConfirmMachine,
    Confirmation, LrRule, RangeTest, RangeTestMachine, SkippedLr,
};
use super::maxfit::{prior_bytes_per_sample, MaxFit, MaxFitSearch, Next, Probe};
use super::noise::{pooled_noise_scale, NoiseScale};
use super::plan::RunBook;
use super::race::{self, Race, RaceBudget, RaceEntry, RaceRun};
use super::recommend::{
    expected_speed, goodput_curve, precision_advice, preferred_batch, BatchCap, Evidence, LrAdvice,
    MemoryAdvice, RunCap, ScheduleAdvice, ThroughputAdvice, SCHEMA_VERSION,
};
use super::stats::round_down;
use super::steptime::{speed_at, StepTimeModel};
use super::throughput::{plateau, CurvePoint, LadderMachine, PointSource};
use super::{probe_lr, textbook_alpha, Phase, Recommendation, SearchError, Session};
use crate::policy::{LrScaling, Objective};
use crate::spec::Precision;
use crate::trial::{
    GradNoiseRequest, GradNoiseSample, LrSchedule, Outcome, TrialDevice, TrialRequest, TrialResult,
    TrialRunner,
};

/// Fewest steps of a confirmation or race run: fewer say nothing.
const MIN_RUN_STEPS: u32 = 10;
/// Most steps of one run, whatever the budget.
const MAX_RUN_STEPS: u32 = 50_000;
/// A max-fit trial counts towards the throughput curve once it timed at
/// least this many steps.
const MIN_TIMED_STEPS: u32 = 2;

/// The most of the real run's training time a training run's validation
/// may take before its held-out set is made smaller.
const VALIDATION_SHARE: f64 = 0.25;

/// The fewest held-out samples a training run validates on (one forward
/// batch of the worker's).
const MIN_VALIDATION_SAMPLES: u32 = 256;

pub(super) struct FitPhase {
    pub max_fit: MaxFit,
    pub batch: u64,
    pub results: Vec<TrialResult>,
    /// The search stopped at the first batch, before a probe of the
    /// second would overrun its share, with memory left unexplored.
    pub stopped: Option<(u64, u64)>,
    pub findings: Vec<Finding>,
}

pub(super) struct CurvePhase {
    pub points: Vec<CurvePoint>,
    pub model: Option<StepTimeModel>,
    pub plateau: Option<u64>,
    /// The range the advice may use: `min_batch` up to the max fit and the
    /// data cap.
    pub floor: u64,
    pub top: u64,
    pub findings: Vec<Finding>,
}

impl CurvePhase {
    fn speed(&self, batch: u64) -> Option<f64> {
        speed_at(&self.points, self.model.as_ref(), batch)
    }

    fn step_seconds(&self, batch: u64) -> Option<f64> {
        self.speed(batch).map(|s| batch as f64 / s)
    }
}

pub(super) struct RangePhase {
    pub reference_batch: u64,
    pub test: Option<RangeTest>,
    /// Where confirmation runs are centred.
    pub center_lr: f64,
    pub findings: Vec<Finding>,
}

/// How long every confirmation, race and check run trains: the same
/// wall-clock time, or the same epochs, so the LR found at the reference
/// batch suits the runs it is transferred to.
pub(super) struct RunPlan {
    pub budget: RaceBudget,
    pub train_samples: u64,
    /// Candidates the race can afford at this run length.
    pub candidates: usize,
    /// Seeds per candidate: the policy's, or more where the budget has
    /// time left over.
    pub seeds: u32,
    /// Wall seconds the plan expected of a confirmation run.
    pub planned_run: f64,
    /// Runs the plan left for after the confirmations: the race's (extra
    /// seeds included), the check's and a ramp's.
    pub later_runs: f64,
    pub findings: Vec<Finding>,
}

impl RunPlan {
    /// Whether the race is re-planned from what the confirmation runs cost
    /// (`replan_from_runs`): wall-clock runs, which cost the same at every
    /// batch. Equal-epoch runs cost what their batch costs, so the curve's
    /// estimate per candidate is better than one run's time.
    fn replanned_from_costs(&self) -> bool {
        matches!(self.budget, RaceBudget::WallClock { .. })
    }

    /// Steps of a run at `batch`: a wall-clock run steps for its whole
    /// length, as the real run would (its start-up, validation and noise
    /// measurement are the plan's to count, `Session::run_seconds`).
    fn steps(&self, curve: &CurvePhase, batch: u64) -> u32 {
        let steps = match self.budget {
            // Never more training than the run's length.
            RaceBudget::WallClock { seconds } => curve
                .step_seconds(batch)
                .map_or(f64::from(MIN_RUN_STEPS), |t| (seconds / t).floor()),
            RaceBudget::Epochs { epochs } => {
                return epoch_steps(epochs, self.train_samples, batch);
            }
        };
        (steps as u32).clamp(MIN_RUN_STEPS, MAX_RUN_STEPS)
    }
}

pub(super) struct ReferencePhase {
    pub best: Option<BestLr>,
    pub runs: Vec<Confirmation>,
    pub noise: Option<NoiseScale>,
    /// For Adam-family optimizers: the noise scale of the preconditioned
    /// gradients, which drives the model when measured.
    pub preconditioned: Option<NoiseScale>,
    pub findings: Vec<Finding>,
    /// Planned confirmations the budget refused (the one refused and those
    /// after it), judged once the race and check have run
    /// ([`Session::settle_refused`]).
    pub refused: Option<RefusedLrs>,
}

/// Planned confirmation LRs at the reference `batch` that runs of `steps`
/// would have confirmed, had the budget allowed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RefusedLrs {
    pub batch: u64,
    pub steps: u32,
    pub lrs: Vec<f64>,
}

impl ReferencePhase {
    /// The noise scale the model uses: the preconditioned one when there is
    /// one (Adam-family optimizers), else the raw one.
    pub fn model_noise(&self) -> Option<&NoiseScale> {
        self.preconditioned.as_ref().or(self.noise.as_ref())
    }
}

pub(super) struct RacePhase {
    pub race: Option<Race>,
    /// The policy model's choice, before the race.
    pub preferred: u64,
    /// The batch the recommendation takes, and the LR its runs used.
    pub batch: u64,
    pub learning_rate: Option<f64>,
    /// The noise scale at each candidate's own point of training (its runs'
    /// second halves), by samples seen.
    pub noise_by_progress: Vec<NoiseScale>,
    /// The same, in two windows per candidate (the first and second half of
    /// its measured steps), of the noise the model uses (preconditioned
    /// for Adam-family optimizers when measured): the points the batch ramp
    /// reads the noise scale's growth from.
    pub noise_windows: Vec<NoiseScale>,
    pub findings: Vec<Finding>,
}

pub(super) struct CheckPhase {
    pub best: Option<BestLr>,
    /// LRs at the chosen batch within noise of the best.
    pub interval: Option<(f64, f64)>,
    pub runs: Vec<Confirmation>,
    pub findings: Vec<Finding>,
}

/// Steps of an equal-epoch run of `epochs` over `train_samples` at
/// `batch`: whole steps, within the run's bounds.
fn epoch_steps(epochs: f64, train_samples: u64, batch: u64) -> u32 {
    ((epochs * train_samples as f64 / batch as f64).floor() as u32)
        .clamp(MIN_RUN_STEPS, MAX_RUN_STEPS)
}

/// The run counts (candidates, confirmations, race runs, checks) when only
/// `affordable` runs of the real length fit: fewer candidates if need be,
/// extensions and extra seeds only as time allows. `None` below the leanest
/// plan worth running: the initial confirmations and two seeds of two
/// candidates.
fn lean_plan(
    affordable: f64,
    initial: f64,
    race: &crate::policy::RaceSettings,
) -> Option<(u32, f64, f64, f64)> {
    if affordable < initial + f64::from(2 * race.seeds.min(2)) {
        return None;
    }
    let spare = affordable - initial;
    let candidates = race
        .candidates
        .min((spare / f64::from(race.seeds)).floor() as u32)
        .max(2);
    let racing = f64::from(candidates * race.seeds);
    let confirmations = initial + (spare - racing - 1.0).clamp(0.0, 2.0);
    let checks = (affordable - confirmations - racing).max(0.5);
    Some((candidates, confirmations, racing, checks))
}

/// A geometric ladder from `floor` to `top` with at most `points` sizes,
/// neighbours at least a factor of two apart, both ends included.
pub(crate) fn full_range_ladder(floor: u64, top: u64, multiple: u64, points: usize) -> Vec<u64> {
    let floor = floor.max(1);
    let top = top.max(floor);
    let span = (top as f64 / floor as f64).log2();
    let count = ((span.floor() as usize) + 1).clamp(1, points.max(1));
    let mut sizes: Vec<u64> = (0..count)
        .map(|i| {
            if i + 1 == count {
                top
            } else {
                let f = if count == 1 {
                    0.0
                } else {
                    i as f64 / (count - 1) as f64
                };
                let raw = (floor as f64 * (top as f64 / floor as f64).powf(f)).round() as u64;
                round_down(raw, multiple).clamp(floor, top)
            }
        })
        .collect();
    sizes.dedup();
    sizes
}

/// Where a run's noise measurements start: the second half of the run
/// (the noise scale grows as the loss falls, and is steady there), never in
/// the warm-up.
fn noise_from(steps: u32, warmup: u32) -> u32 {
    warmup.max(steps / 2)
}

/// The noise scale of runs of `steps` at `batch`, at the point of training
/// their measurements cover (see [`noise_request`]).
fn noise_at(samples: &[GradNoiseSample], batch: u64, steps: u32) -> Option<NoiseScale> {
    let from = noise_from(steps, 0);
    pooled_noise_scale(
        samples,
        from,
        u64::from(from) * batch,
        u64::from(steps) * batch,
    )
}

/// Where measurement `i` of `m`, spread from step `from` to the end of a
/// run of `steps`, was taken (as the worker spreads them).
fn measured_step(from: u32, steps: u32, m: usize, i: usize) -> u32 {
    from + ((i as f64 + 0.5) * f64::from(steps.saturating_sub(from)) / m as f64) as u32
}

/// Measurements `lo..hi` of every run that has all `m`, as samples of
/// their own.
fn measured_slice(
    samples: &[GradNoiseSample],
    m: usize,
    lo: usize,
    hi: usize,
) -> Vec<GradNoiseSample> {
    samples
        .iter()
        .filter(|s| s.big_sq_norms.len() == m && s.small_sq_norms.len() == m)
        .map(|s| GradNoiseSample {
            big_batch: s.big_batch,
            small_batch: s.small_batch,
            big_sq_norms: s.big_sq_norms[lo..hi].to_vec(),
            small_sq_norms: s.small_sq_norms[lo..hi].to_vec(),
            ..GradNoiseSample::default()
        })
        .collect()
}

/// The noise scale of runs of `steps` at `batch` whose measurements were
/// spread from step `from` on, pooled over those taken at step `since` or
/// later: one stated point of training.
fn noise_since(
    samples: &[GradNoiseSample],
    batch: u64,
    steps: u32,
    from: u32,
    since: u32,
) -> Option<NoiseScale> {
    let m = samples.iter().map(|s| s.big_sq_norms.len()).max()?;
    let lo = (0..m).find(|&i| measured_step(from, steps, m, i) >= since)?;
    let first = measured_step(from, steps, m, lo);
    pooled_noise_scale(
        &measured_slice(samples, m, lo, m),
        first,
        u64::from(first) * batch,
        u64::from(steps) * batch,
    )
}

/// The measurements of the noise the model uses: the preconditioned norms
/// when every run has them (Adam-family optimizers), else the raw ones.
fn model_samples(samples: &[GradNoiseSample]) -> std::borrow::Cow<'_, [GradNoiseSample]> {
    let preconditioned: Option<Vec<GradNoiseSample>> = samples
        .iter()
        .map(GradNoiseSample::preconditioned)
        .collect();
    match preconditioned {
        Some(p) if !p.is_empty() => std::borrow::Cow::Owned(p),
        _ => std::borrow::Cow::Borrowed(samples),
    }
}

/// The noise scale of runs of `steps` at `batch` in `windows` consecutive
/// windows of their measured steps (spread from step `from` to the end),
/// each stated at the samples its window covers; of the preconditioned
/// norms when every run has them.
fn noise_windows(
    samples: &[GradNoiseSample],
    batch: u64,
    steps: u32,
    from: u32,
    windows: usize,
) -> Vec<NoiseScale> {
    let samples = &model_samples(samples);
    let Some(m) = samples.iter().map(|s| s.big_sq_norms.len()).max() else {
        return Vec::new();
    };
    let windows = windows.max(1);
    (0..windows)
        .filter_map(|w| {
            let (lo, hi) = (w * m / windows, (w + 1) * m / windows);
            if hi < lo + 2 {
                return None;
            }
            let (first, last) = (
                measured_step(from, steps, m, lo),
                measured_step(from, steps, m, hi - 1),
            );
            pooled_noise_scale(
                &measured_slice(samples, m, lo, hi),
                first,
                u64::from(first) * batch,
                u64::from(last + 1) * batch,
            )
        })
        .collect()
}

/// The gradient-noise measurements of a training run of `steps`: the
/// policy's `per_run` (`trials.noise_scale_measurements`, 400 in `balanced`)
/// at most, a quarter of the steps at most, spread evenly over the run's
/// second half. Why that many: |G|^2 is the hard half of the ratio, and one
/// step's estimate of it scatters by about tr(Sigma)/B; late in training,
/// at batches well below the noise scale, it takes hundreds of steps to
/// tell it from zero (README, "Repeatable advice": on the quick-start job
/// 40 gave bounds 3-4x below what 400-800 read from the same runs, and two
/// intervals of five below it). A measured step costs an extra small-batch
/// pass (an eighth of the batch) and two norms: 400 measured steps cost
/// 2-6% of a 2.7-s run there. On a small model's few, slow steps the pass
/// costs about a step (the transformer's runs at batch 8 cost 2.1-2.5 s
/// where unmeasured ones at batch 4 cost 1.8), so a quarter of the steps
/// is the cap.
/// `whole_run`: spread from the end of the warm-up instead (race runs, so
/// the noise scale is seen over the course of training; their second
/// halves still give each candidate's point, see [`noise_since`]).
pub(super) fn noise_request(
    batch: u64,
    steps: u32,
    warmup: u32,
    per_run: u32,
    whole_run: bool,
) -> Option<GradNoiseRequest> {
    let from = if whole_run {
        warmup
    } else {
        noise_from(steps, warmup)
    };
    let measurements = per_run.min(steps / 4).min(steps.saturating_sub(from));
    // An eighth of the batch, but never a gradient of fewer than four
    // samples: those are mostly noise about the noise.
    (batch >= 8 && measurements >= 2).then(|| GradNoiseRequest {
        small_batch: (batch / 8).max(4).min(batch / 2),
        measurements,
        from_step: Some(from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_spans_the_whole_range_geometrically() {
        let ladder = full_range_ladder(8, 14_744, 8, 8);
        assert_eq!(ladder.first(), Some(&8));
        assert_eq!(ladder.last(), Some(&14_744));
        assert_eq!(ladder.len(), 8);
        assert!(
            ladder.windows(2).all(|w| w[1] as f64 / w[0] as f64 >= 2.0),
            "{ladder:?}"
        );
        // A narrow range gives fewer points, never one below the floor.
        assert_eq!(full_range_ladder(64, 200, 8, 8), [64, 200]);
        assert_eq!(full_range_ladder(100, 100, 8, 8), [100]);
        assert_eq!(full_range_ladder(1, 5, 8, 8), [1, 2, 5]);
    }
}
