//! The phases of a search, each a method returning a typed result with the
//! rationale lines it contributes. `advise` in the parent module calls them
//! in order.

use super::lr::{
    analyze_range_test, best_lr, fit_alpha, lr_interval, BestLr, Confirmation, LrRule, RangeTest,
};
use super::maxfit::{prior_bytes_per_sample, MaxFit, MaxFitSearch, Next, Probe};
use super::noise::{pooled_noise_scale, NoiseScale};
use super::race::{self, Race, RaceBudget, RaceEntry, RaceRun};
use super::recommend::{
    expected_speed, goodput_curve, precision_advice, preferred_batch, BatchCap, Evidence, LrAdvice,
    MemoryAdvice, ScheduleAdvice, ThroughputAdvice, SCHEMA_VERSION,
};
use super::stats::round_down;
use super::steptime::{speed_at, StepTimeModel};
use super::throughput::{plateau, CurvePoint};
use super::{probe_lr, textbook_alpha, Phase, Recommendation, SearchError, Session};
use crate::policy::{LrScaling, Objective};
use crate::spec::Precision;
use crate::trial::{
    GradNoiseRequest, GradNoiseSample, LrSchedule, Outcome, TrialDevice, TrialResult, TrialRunner,
};
use crate::units::{format_duration, ByteSize};

/// Most points on the throughput ladder, max-fit trials included.
const LADDER_POINTS: usize = 8;
/// Fewest steps of a confirmation or race run: fewer say nothing.
const MIN_RUN_STEPS: u32 = 10;
/// Most steps of one run, whatever the budget.
const MAX_RUN_STEPS: u32 = 50_000;
/// Confirmation runs beyond the policy's candidates when the best LR sits
/// at an edge of those tried.
const MAX_EXTENSIONS: usize = 3;
/// Factor between neighbouring LR candidates (half a decade).
const LR_STEP: f64 = 3.16;
/// A max-fit trial counts towards the throughput curve once it timed at
/// least this many steps.
const MIN_TIMED_STEPS: u32 = 2;

pub(super) struct FitPhase {
    pub max_fit: MaxFit,
    pub batch: u64,
    pub results: Vec<TrialResult>,
    pub rationale: Vec<String>,
}

pub(super) struct CurvePhase {
    pub points: Vec<CurvePoint>,
    pub model: Option<StepTimeModel>,
    pub plateau: Option<u64>,
    /// The range the advice may use: `min_batch` up to the max fit and the
    /// data cap.
    pub floor: u64,
    pub top: u64,
    pub rationale: Vec<String>,
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
    pub rationale: Vec<String>,
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
    pub rationale: Vec<String>,
}

impl RunPlan {
    /// Steps of a run at `batch`; `share`: the part of a wall-clock run
    /// its stepping may take (see `Session::stepping_share`).
    fn steps(&self, curve: &CurvePhase, batch: u64, share: f64) -> u32 {
        let steps = match self.budget {
            // To the nearest step (a run of few long steps would otherwise
            // lose up to a whole one), but never more training than the
            // real run's.
            RaceBudget::WallClock { seconds } => curve
                .step_seconds(batch)
                .map_or(f64::from(MIN_RUN_STEPS), |t| {
                    (seconds * share / t).round().min((seconds / t).floor())
                }),
            RaceBudget::Epochs { epochs } => {
                (epochs * self.train_samples as f64 / batch as f64).floor()
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
    pub rationale: Vec<String>,
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
    pub rationale: Vec<String>,
}

pub(super) struct CheckPhase {
    pub best: Option<BestLr>,
    /// LRs at the chosen batch within noise of the best.
    pub interval: Option<(f64, f64)>,
    pub runs: Vec<Confirmation>,
    pub rationale: Vec<String>,
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

/// The most seeds per race candidate a plan gives (the policy's own
/// `race.seeds` allows as many).
const MAX_RACE_SEEDS: u32 = 5;

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

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 1: the largest batch that fits under the memory budget, never
    /// beyond the training set.
    pub(super) async fn max_fit(&mut self) -> Result<FitPhase, SearchError> {
        let spec = self.spec;
        let policy = &spec.policy;
        let element_bytes = match (self.ctx.device, spec.precision) {
            (TrialDevice::Cuda(_), Precision::F16 | Precision::Bf16) => 2.0,
            _ => 4.0,
        };
        let mut search = MaxFitSearch::new(
            spec.search.min_batch,
            spec.search.max_batch,
            policy.batch_multiple,
            self.budget_bytes,
            prior_bytes_per_sample(spec, element_bytes),
        );
        if let Some(size) = spec.training.dataset_size {
            search.cap_at_dataset(size);
        }
        let mut results: Vec<TrialResult> = Vec::new();
        // The smallest batch passed over because its trial would overrun.
        let mut passed_over: Option<u64> = None;
        let steps = policy.trials.fit_steps;
        while let Next::Try(proposed) = search.next_step() {
            // A trial's cost grows with its batch: from the largest fit's
            // speed, a trial that would overrun the phase is not started.
            let speed = results
                .iter()
                .filter(|r| r.is_ok())
                .max_by_key(|r| r.batch_size)
                .and_then(|r| r.samples_per_second);
            let estimate = speed.map_or(0.0, |s| f64::from(steps) * proposed as f64 / s);
            let left = self.phase_left(Phase::MaxFit).as_secs_f64();
            let batch = proposed;
            if (left <= 0.0 || estimate > left * 1.5) && search.result().batch_size.is_some() {
                // Not replaced by a smaller probe that fits the time left:
                // tried on the advice bench, the bigger max fit it found
                // made the ladder, race and LR check that follow cost more
                // than the phases had, and the advice got worse (README).
                passed_over = Some(proposed);
                break;
            }
            let mut attempt = 0;
            let (result, probe) = loop {
                attempt += 1;
                let mut request =
                    self.request(batch, steps, LrSchedule::Constant { lr: probe_lr(spec) });
                request.warmup_steps = 1;
                let result = self.trial(Phase::MaxFit, request).await;
                if result.outcome == Outcome::InvalidRequest {
                    return Err(SearchError::InvalidRequest(
                        result.reason.unwrap_or_default(),
                    ));
                }
                let reason = || {
                    format!(
                        "{}: {}",
                        result.outcome,
                        result.reason.clone().unwrap_or_default()
                    )
                };
                let probe = match result.outcome {
                    Outcome::Ok => Probe::Fits {
                        peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                    },
                    Outcome::OutOfMemory => Probe::OutOfMemory {
                        reason: reason(),
                        peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                    },
                    _ => Probe::Fails {
                        reason: reason(),
                        out_of_memory: false,
                    },
                };
                // A crash or timeout may be a fluke: run the same batch once more.
                if attempt == 1 && search.should_retry(batch, &probe) && !self.time_left().is_zero()
                {
                    continue;
                }
                break (result, probe);
            };
            if let Some(samples) = result.train_samples.or(self.train_samples) {
                if spec.training.dataset_size.is_none() {
                    search.cap_at_dataset(samples);
                }
            }
            search.record(batch, probe);
            results.push(result);
        }
        let max_fit = search.result();
        if let (Some(over), Some(answer)) = (passed_over, max_fit.batch_size) {
            // Unless a failure between the answer and the passed-over batch
            // closed the bracket, memory may allow more than was tried.
            let bracketed = max_fit
                .first_failure
                .as_ref()
                .is_some_and(|(fail, _)| *fail <= over);
            if !bracketed {
                self.cut_short(
                    Phase::MaxFit,
                    format!("the max-fit search stopped at batch {answer}: a trial of batch {over} would overrun its share of the budget, so the largest fitting batch may be larger"),
                );
            }
        }
        let Some(batch) = max_fit.batch_size else {
            return Err(SearchError::NothingFits {
                min_batch: spec.search.min_batch,
                budget: self.budget_bytes,
                reason: max_fit
                    .first_failure
                    .as_ref()
                    .map(|(b, r)| format!("batch {b}: {r}"))
                    .unwrap_or_default(),
            });
        };
        let mut rationale = vec![match &max_fit.first_failure {
            Some((fail, why)) => format!(
                "largest batch that fits: {batch} (peak {}) under a budget of {} ({} limit from {} less {:.0}% headroom); {fail} failed ({why}); {} trials",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes),
                ByteSize(self.ctx.memory_limit_bytes),
                self.ctx.memory_limit_source,
                policy.memory_headroom_fraction * 100.0,
                max_fit.trials
            ),
            None if max_fit.capped_by_dataset => format!(
                "largest batch that fits: {batch}, the whole training set (peak {} of a {} budget: memory allows more, the data does not)",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes)
            ),
            None if max_fit.capped_by_max_batch => format!(
                "largest batch that fits: {batch}, the spec's search.max_batch (peak {} of a {} budget)",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes)
            ),
            None => format!(
                "largest batch that fits: {batch} (the search ended before a larger batch failed); {} trials",
                max_fit.trials
            ),
        }];
        if !max_fit.flaky_batch_sizes.is_empty() {
            rationale.push(format!(
                "batch sizes {:?} fitted once and failed on a re-run, so they were not trusted",
                max_fit.flaky_batch_sizes
            ));
        }
        Ok(FitPhase {
            max_fit,
            batch,
            results,
            rationale,
        })
    }

    /// The data's cap on every batch the advice may use.
    pub(super) fn batch_cap(&self, fit: &FitPhase) -> Option<BatchCap> {
        let samples = self.spec.training.dataset_size.or(self.train_samples)?;
        let per_epoch = self.spec.policy.min_updates_per_epoch.max(1);
        let largest = round_down(
            (samples / per_epoch).max(self.spec.search.min_batch.max(1)),
            self.spec.policy.batch_multiple,
        );
        Some(BatchCap {
            training_samples: samples,
            min_updates_per_epoch: per_epoch,
            largest_batch: largest,
            binding: largest < fit.batch,
        })
    }

    /// Phase 2: samples per second on a geometric ladder over the whole
    /// usable range, reusing max-fit trials, and the step-time model.
    pub(super) async fn throughput_curve(
        &mut self,
        fit: &FitPhase,
        cap: &Option<BatchCap>,
    ) -> CurvePhase {
        let policy = &self.spec.policy;
        let floor = self.spec.search.min_batch.max(1);
        let top = cap
            .as_ref()
            .map_or(fit.batch, |c| c.largest_batch.min(fit.batch))
            .max(floor);
        let mut points: Vec<CurvePoint> = Vec::new();
        let mut rationale = Vec::new();
        if let Some(cap) = cap.as_ref().filter(|c| c.binding) {
            rationale.push(format!(
                "the training set of {} samples caps the batch at {} ({} updates per epoch at least); the max fit of {} is reported but not used",
                cap.training_samples, cap.largest_batch, cap.min_updates_per_epoch, fit.batch
            ));
        }
        let reusable = |batch: u64| {
            fit.results.iter().rev().find(|r| {
                r.batch_size == batch
                    && r.is_ok()
                    && r.samples_per_second.is_some()
                    && r.steps_completed > MIN_TIMED_STEPS
            })
        };
        let mut ladder = full_range_ladder(floor, top, policy.batch_multiple, LADDER_POINTS);
        // The small end first: those trials are cheap and make the model
        // that estimates the big ones.
        ladder.sort_unstable();
        let steps = policy.trials.throughput_steps;
        for batch in ladder {
            if let Some(result) = reusable(batch) {
                points.push(CurvePoint {
                    batch_size: batch,
                    samples_per_second: result.samples_per_second.unwrap_or(0.0),
                    source: "max_fit".into(),
                });
                continue;
            }
            let model = StepTimeModel::fit(&points);
            let estimate = speed_at(&points, model.as_ref(), batch)
                .map_or(0.0, |s| f64::from(steps) * batch as f64 / s)
                + self.overhead_seconds();
            if self.phase_left(Phase::Throughput).as_secs_f64() < estimate && !points.is_empty() {
                self.cut_short(
                    Phase::Throughput,
                    format!("batch {batch} was left off the throughput curve to stay in the time budget"),
                );
                continue;
            }
            let result = self
                .trial(
                    Phase::Throughput,
                    self.request(
                        batch,
                        steps,
                        LrSchedule::Constant {
                            lr: probe_lr(self.spec),
                        },
                    ),
                )
                .await;
            if let (true, Some(speed)) = (result.is_ok(), result.samples_per_second) {
                points.push(CurvePoint {
                    batch_size: batch,
                    samples_per_second: speed,
                    source: "ladder".into(),
                });
            }
        }
        // The max fit's own speed, when it was measured and lies above.
        if let Some(result) = reusable(fit.batch).filter(|_| fit.batch > top) {
            points.push(CurvePoint {
                batch_size: fit.batch,
                samples_per_second: result.samples_per_second.unwrap_or(0.0),
                source: "max_fit".into(),
            });
        }
        points.sort_by_key(|p| p.batch_size);
        points.dedup_by_key(|p| p.batch_size);
        let model = StepTimeModel::fit(&points);
        let usable: Vec<CurvePoint> = points
            .iter()
            .filter(|p| p.batch_size <= top)
            .cloned()
            .collect();
        let plateau_batch = plateau(&usable, policy.throughput_gain_threshold);
        if let Some(m) = &model {
            rationale.push(format!(
                "step time t(B) = {:.2} ms + B / {:.0} samples/s fits the {} measured points within {:.0}%",
                m.fixed_seconds * 1e3,
                m.samples_per_second_limit,
                m.points,
                m.max_relative_error * 100.0
            ));
        }
        if let Some(p) = plateau_batch {
            rationale.push(format!(
                "throughput comes within {:.0}% of its best from batch {p} on ({:.0} samples/s)",
                policy.throughput_gain_threshold * 100.0,
                expected_speed(&points, p).unwrap_or(0.0)
            ));
        }
        CurvePhase {
            points,
            model,
            plateau: plateau_batch,
            floor,
            top,
            rationale,
        }
    }

    /// Phase 3: an LR range test at the reference batch, the geometric
    /// middle of the range below the plateau, where candidates gather.
    pub(super) async fn lr_range_test(&mut self, curve: &CurvePhase) -> RangePhase {
        let upper = curve.plateau.unwrap_or(curve.top).min(curve.top);
        let middle = ((curve.floor as f64) * (upper as f64)).sqrt();
        let reference_batch = round_down(middle as u64, self.spec.policy.batch_multiple)
            .clamp(curve.floor, curve.top.max(curve.floor));
        let lr = &self.spec.policy.lr_search;
        let sweep = lr.sweep_steps;
        let estimate = curve
            .step_seconds(reference_batch)
            .map_or(0.0, |t| t * f64::from(sweep))
            + self.overhead_seconds();
        let mut rationale = Vec::new();
        let test = if estimate > self.phase_left(Phase::LrRangeTest).as_secs_f64() * 2.0
            || self.time_left().is_zero()
        {
            self.cut_short(Phase::LrRangeTest, "the LR range test was skipped");
            None
        } else {
            let schedule = LrSchedule::ExponentialSweep {
                min_lr: lr.min_lr,
                max_lr: lr.max_lr,
            };
            let mut request = self.request(reference_batch, sweep, schedule);
            request.warmup_steps = 1;
            let result = self.trial(Phase::LrRangeTest, request).await;
            if matches!(result.outcome, Outcome::Ok | Outcome::Diverged) {
                analyze_range_test(reference_batch, &result.learning_rates, &result.losses)
            } else {
                None
            }
        };
        let center_lr = match &test {
            Some(t) => {
                rationale.push(format!(
                    "LR range test at batch {reference_batch}: smoothed loss lowest at {:.2e}, suggestion {:.2e} (a tenth of it)",
                    t.min_loss_lr, t.suggestion
                ));
                // The conservative suggestion: confirmation runs train far
                // longer than the sweep, and longer runs want lower LRs.
                t.suggestion
            }
            None => probe_lr(self.spec) * 10.0,
        };
        RangePhase {
            reference_batch,
            test,
            center_lr,
            rationale,
        }
    }

    /// Plans the length of every training run from the time left: the
    /// confirmations, the race (with its extra seeds) and the LR check all
    /// share it, in proportion to how many runs each makes.
    pub(super) fn plan_training_runs(&mut self, curve: &CurvePhase, range: &RangePhase) -> RunPlan {
        let policy = &self.spec.policy;
        let race = &policy.race;
        let initial = f64::from(policy.lr_search.confirmation_candidates);
        let left = self.time_left().as_secs_f64();
        let train_samples = self
            .train_samples
            .or(self.spec.training.dataset_size)
            .unwrap_or(curve.top);
        let mut rationale = Vec::new();
        let mut candidates = race.candidates;
        let mut seeds = race.seeds;
        // The full plan: two extensions past an edge, the race with its
        // extra seeds, two checks.
        let mut confirmations = initial + 2.0;
        let mut racing = f64::from(candidates * race.seeds + 2 * race.extra_seeds);
        let mut checks = 2.0;
        let per_run = left / (confirmations + racing + checks);
        let fill = self.stepping_within(per_run);
        let budget = if policy.objective == Objective::Generalization {
            // Equal epochs: as many of the job's epochs as the smallest
            // likely candidate (a quarter of the reference batch, where
            // samples are slowest) can afford in the per-run time.
            let smallest = (range.reference_batch / 4).max(curve.floor);
            let per_sample = curve
                .step_seconds(smallest)
                .map_or(f64::INFINITY, |t| t / smallest as f64);
            let job_epochs = self.spec.training.epochs;
            let full_run = job_epochs * train_samples as f64 * per_sample;
            let affordable_runs = (left / self.run_seconds(full_run)).floor();
            let lean = lean_plan(affordable_runs, initial, race);
            let epochs = if full_run <= fill {
                job_epochs
            } else if let Some(plan) = lean {
                (candidates, confirmations, racing, checks) = plan;
                rationale.push(format!(
                    "runs train the job's {job_epochs} epochs: the budget affords about {affordable_runs:.0} such runs, so {candidates} candidates race"
                ));
                job_epochs
            } else {
                let epochs = (fill / (per_sample * train_samples as f64)).clamp(0.01, job_epochs);
                rationale.push(format!(
                    "confirmation and race runs train {epochs:.2} epochs each ({job_epochs} in the job): all the budget affords at batch {smallest}; longer runs tend to favour lower LRs than these"
                ));
                epochs
            };
            RaceBudget::Epochs { epochs }
        } else {
            // The real run's length: the job's own time budget when it has
            // one, else its epochs at the reference batch. The best batch
            // and LR depend on it (longer runs favour larger batches and
            // lower LRs), so runs train exactly that long whenever the
            // budget affords a lean plan at that length: the initial
            // confirmations, two seeds of two candidates, one check.
            let job_seconds = match self.spec.training.time_budget {
                Some(budget) => budget.as_secs_f64(),
                None => curve
                    .speed(range.reference_batch)
                    .map_or(f64::INFINITY, |speed| {
                        self.spec.training.epochs * train_samples as f64 / speed
                    }),
            };
            let source = if self.spec.training.time_budget.is_some() {
                "the job's training.time_budget".to_string()
            } else {
                format!(
                    "{} epochs at batch {}",
                    self.spec.training.epochs, range.reference_batch
                )
            };
            let affordable_runs = (left / self.planned_run_wall(job_seconds)).floor();
            let lean = lean_plan(affordable_runs, initial, race);
            // A wall-clock run's length, which may include its overhead.
            let fill = self.run_length_within(per_run);
            let seconds = if job_seconds <= fill {
                rationale.push(format!(
                    "runs train as long as the real training run, about {} ({source})",
                    format_duration(std::time::Duration::from_secs_f64(job_seconds))
                ));
                // Time the full plan leaves over (cheap trials: a persistent
                // command process, a fast model) buys the race more seeds,
                // which narrows the seed-to-seed spread its verdict rests on.
                let spare = affordable_runs - (confirmations + racing + checks);
                let more = ((spare / f64::from(candidates)).floor().max(0.0) as u32)
                    .min(MAX_RACE_SEEDS.saturating_sub(seeds));
                if more > 0 {
                    seeds += more;
                    racing += f64::from(more * candidates);
                    rationale.push(format!(
                        "the budget affords about {affordable_runs:.0} such runs, more than the plan's {:.0}: {seeds} seeds per race candidate instead of {}",
                        confirmations + racing - f64::from(more * candidates) + checks,
                        race.seeds
                    ));
                }
                job_seconds
            } else if let Some(plan) = lean {
                (candidates, confirmations, racing, checks) = plan;
                rationale.push(format!(
                    "runs train as long as the real training run, {} ({source}): the budget affords about {affordable_runs:.0} such runs, so {candidates} candidates race",
                    format_duration(std::time::Duration::from_secs_f64(job_seconds))
                ));
                job_seconds
            } else {
                rationale.push(format!(
                    "runs train {}, shorter than the real training run ({}, {source}): the budget affords too few runs of that length; longer runs tend to favour larger batches and lower LRs than these",
                    format_duration(std::time::Duration::from_secs_f64(fill)),
                    format_duration(std::time::Duration::from_secs_f64(job_seconds))
                ));
                fill
            };
            RaceBudget::WallClock { seconds }
        };
        let elapsed = self.elapsed().as_secs_f64();
        self.plan.replan(
            elapsed,
            &[
                (Phase::LrConfirmation, confirmations),
                (Phase::Race, racing),
                (Phase::LrCheck, checks),
            ],
        );
        rationale.push(format!(
            "every confirmation, race and check run trains for the same budget, {budget}, with linear warm-up and cosine decay to {:.0}% of the peak LR (about {:.0} runs in the {} left)",
            race.final_lr_fraction * 100.0,
            confirmations + racing + checks,
            format_duration(self.time_left())
        ));
        RunPlan {
            budget,
            train_samples,
            candidates: candidates as usize,
            seeds,
            rationale,
        }
    }

    /// One training run as confirmations, races and checks use it: the
    /// recommended schedule, validation loss at the end, and the gradient
    /// noise over the last steps (after training, not at initialization).
    async fn training_run(
        &mut self,
        phase: Phase,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> TrialResult {
        let policy = &self.spec.policy;
        let warmup = ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil() as u32)
            .clamp(1, steps.saturating_sub(1).max(1));
        let schedule = LrSchedule::WarmupCosine {
            lr,
            warmup_steps: warmup,
            final_fraction: policy.race.final_lr_fraction,
        };
        let mut request = self.request(batch, steps, schedule);
        request.seed = seed;
        request.warmup_steps = policy.trials.warmup_steps.min(steps / 4).max(1);
        request.record.validation_loss = true;
        request.record.grad_noise = noise_request(
            batch,
            steps,
            request.warmup_steps,
            policy.trials.noise_scale_measurements,
        );
        self.trial(phase, request).await
    }

    /// Wall seconds a training run of `steps` at `batch` should take.
    fn seconds_for(&self, curve: &CurvePhase, batch: u64, steps: u32) -> f64 {
        self.run_seconds(
            curve
                .step_seconds(batch)
                .map_or(0.0, |t| t * f64::from(steps)),
        )
    }

    /// Whether a run estimated at `seconds` may start in `phase`: half of
    /// it may borrow from the next phase, none from beyond the budget (a
    /// run killed at the budget's end measures nothing).
    fn run_fits(&self, phase: Phase, seconds: f64) -> bool {
        self.phase_left(phase).as_secs_f64() >= seconds * 0.5
            && self.time_left().as_secs_f64() >= seconds
    }

    /// Phase 4: the best LR at the reference batch from runs of the planned
    /// length, more candidates further out while the best sits at an edge;
    /// their last steps give the gradient noise scale after training.
    pub(super) async fn confirm_reference_lr(
        &mut self,
        curve: &CurvePhase,
        range: &RangePhase,
        runs: &RunPlan,
    ) -> ReferencePhase {
        let batch = range.reference_batch;
        let steps = runs.steps(curve, batch, self.stepping_share(&runs.budget));
        let n = self.spec.policy.lr_search.confirmation_candidates.max(1) as i32;
        let half = (n - 1) / 2;
        let mut lrs: Vec<f64> = (-half..=(n - 1 - half))
            .map(|k| range.center_lr * LR_STEP.powi(k))
            .collect();
        let mut confirmations: Vec<Confirmation> = Vec::new();
        let mut samples: Vec<(f64, GradNoiseSample)> = Vec::new();
        let mut extensions = 0;
        let mut index = 0;
        let seed = self.spec.search.seed;
        while index < lrs.len() {
            let lr = lrs[index];
            index += 1;
            if !self.run_fits(Phase::LrConfirmation, self.seconds_for(curve, batch, steps)) {
                let what = format!("LR {lr:.2e} at batch {batch} was not confirmed");
                if index > n as usize {
                    // An extension past an edge: a refinement, not the plan.
                    self.skipped.push(format!(
                        "{what} (the best sat at an edge; no time to look further)"
                    ));
                } else {
                    self.cut_short(Phase::LrConfirmation, what);
                }
                break;
            }
            let result = self
                .training_run(Phase::LrConfirmation, batch, lr, steps, seed)
                .await;
            let loss = result.validation_loss.filter(|_| result.is_ok());
            if let (Some(loss), Some(sample)) = (loss, result.grad_noise.clone()) {
                samples.push((loss, sample));
            }
            confirmations.push(Confirmation {
                batch_size: batch,
                learning_rate: lr,
                validation_loss: loss,
                outcome: result.outcome,
                losses: result.losses.clone(),
                loss_steps: Vec::new(),
            });
            if index == lrs.len() && extensions < MAX_EXTENSIONS {
                let min = lrs.iter().copied().fold(f64::MAX, f64::min);
                let max = lrs.iter().copied().fold(0.0, f64::max);
                if let Some(best) = best_lr(&confirmations) {
                    if best.best_tested_lr == min {
                        lrs.push(min / LR_STEP);
                        extensions += 1;
                    } else if best.best_tested_lr == max {
                        lrs.push(max * LR_STEP);
                        extensions += 1;
                    }
                } else if confirmations.iter().all(|c| c.outcome == Outcome::Diverged) {
                    // Every LR was too high (a range test misled by a
                    // noisy loss does that): look below them all.
                    lrs.push(min / LR_STEP.powi(2));
                    extensions += 1;
                }
            }
        }
        let best = best_lr(&confirmations);
        let mut rationale = Vec::new();
        if let Some(best) = &best {
            rationale.push(format!(
                "at the reference batch {batch}, {} runs of {steps} steps put the best LR at {:.3e} (validation loss {:.4})",
                confirmations.len(),
                best.learning_rate,
                best.validation_loss
            ));
        }
        // The noise scale from the runs that trained well: a run whose LR
        // barely moved the weights is still at its early, smaller scale.
        let best_loss = best.as_ref().map_or(f64::INFINITY, |b| b.validation_loss);
        let good: Vec<GradNoiseSample> = samples
            .iter()
            .filter(|(loss, _)| *loss <= best_loss * 1.05 + 1e-9)
            .map(|(_, s)| s.clone())
            .collect();
        let measured_from = noise_from(steps, 0);
        let noise = pooled_noise_scale(
            &good,
            measured_from,
            u64::from(measured_from) * batch,
            u64::from(steps) * batch,
        );
        let pre: Vec<GradNoiseSample> = good.iter().filter_map(|s| s.preconditioned()).collect();
        let preconditioned = (pre.len() == good.len())
            .then(|| {
                pooled_noise_scale(
                    &pre,
                    measured_from,
                    u64::from(measured_from) * batch,
                    u64::from(steps) * batch,
                )
            })
            .flatten();
        let judge = |n: &NoiseScale| {
            if n.is_lower_bound() {
                ": the goodput model takes it as a bound, and the race reaches above it"
            } else if n.is_decisive() {
                ""
            } else {
                ": too uncertain to separate candidates, so the race decides over a wider spread"
            }
        };
        match &noise {
            Some(n) => rationale.push(format!(
                "gradient noise scale B_simple = {} samples, measured over training samples {}..{} ({} runs at batch {batch}, steps {measured_from}..{steps}; {} measurements against batch {}; McCandlish et al. 2018){}",
                n.describe(),
                n.after_samples,
                n.until_samples,
                good.len(),
                n.measurements,
                n.small_batch,
                if preconditioned.is_some() { "" } else { judge(n) }
            )),
            None => rationale.push(
                "the gradient noise scale could not be measured (too little time, or tr(Sigma) not clearly above zero): the race decides".into(),
            ),
        }
        if let Some(p) = &preconditioned {
            rationale.push(format!(
                "preconditioned by Adam's sqrt(v) + eps, the noise scale is {} samples: Adam steps along the preconditioned gradient, so this one drives the model (AdaptDL's AdamGradientNoiseScale){}",
                p.describe(),
                judge(p)
            ));
        }
        ReferencePhase {
            best,
            runs: confirmations,
            noise,
            preconditioned,
            rationale,
        }
    }

    /// The exponent the race transfers the reference LR with.
    fn transfer_alpha(&self) -> f64 {
        match self.spec.policy.lr_scaling {
            LrScaling::Linear => 1.0,
            LrScaling::Sqrt => 0.5,
            LrScaling::Measured => textbook_alpha(self.spec),
        }
    }

    /// Phase 5: the race. The policy's model names a preferred batch; the
    /// candidates around it train for the same budget with several seeds,
    /// and the lowest mean validation loss wins.
    pub(super) async fn race(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        runs: &RunPlan,
    ) -> RacePhase {
        let policy = &self.spec.policy;
        let world = self.spec.training.world_size.max(1);
        let noise = reference.model_noise();
        let (preferred, why) = preferred_batch(
            policy,
            &curve.points,
            curve.model.as_ref(),
            noise,
            curve.floor,
            curve.top,
            world,
        );
        let mut rationale = vec![why];
        let decisive = noise.is_some_and(NoiseScale::is_decisive);
        // A lower bound on the noise scale makes the model's batch a lower
        // bound too: the race reaches above it rather than around it.
        let bound = noise.is_some_and(NoiseScale::is_lower_bound);
        let count = runs.candidates.max(1);
        let candidates = if policy.objective == Objective::Throughput {
            // The throughput objective leans large: the plateau and below.
            let center = round_down(preferred / 2, policy.batch_multiple).max(curve.floor);
            race::candidates(
                center,
                2.0,
                curve.floor,
                preferred.max(curve.floor),
                policy.batch_multiple,
                count,
            )
        } else {
            let step = if decisive { 2.0 } else { 4.0 };
            let center = if bound && policy.objective == Objective::Goodput {
                round_down((preferred as f64 * step) as u64, policy.batch_multiple).min(curve.top)
            } else {
                preferred
            };
            race::candidates(
                center,
                step,
                curve.floor,
                curve.top,
                policy.batch_multiple,
                count,
            )
        };
        let Some(reference_lr) = reference
            .best
            .as_ref()
            .map(|b| (b.batch_size, b.learning_rate))
        else {
            rationale.push(format!(
                "no LR was confirmed, so there was no race: the model's choice {preferred} stands"
            ));
            return RacePhase {
                race: None,
                preferred,
                batch: preferred,
                learning_rate: None,
                noise_by_progress: Vec::new(),
                rationale,
            };
        };
        let alpha = self.transfer_alpha();
        let lr_for =
            |batch: u64| reference_lr.1 * (batch as f64 / reference_lr.0 as f64).powf(alpha);
        let share = self.stepping_share(&runs.budget);
        let mut entries: Vec<RaceEntry> = candidates
            .iter()
            .map(|&batch| {
                let steps = runs.steps(curve, batch, share);
                RaceEntry {
                    batch_size: batch,
                    learning_rate: lr_for(batch),
                    steps,
                    warmup_steps: ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil()
                        as u32)
                        .max(1),
                    runs: Vec::new(),
                }
            })
            .collect();
        let mut samples: Vec<Vec<GradNoiseSample>> = vec![Vec::new(); entries.len()];
        let base_seed = self.spec.search.seed;
        // Seed-major, so a budget cut still leaves every candidate a run.
        for round in 0..runs.seeds {
            for (entry, samples) in entries.iter_mut().zip(samples.iter_mut()) {
                self.race_run(curve, entry, base_seed + u64::from(round), true, samples)
                    .await;
            }
        }
        for extra in 0..policy.race.extra_seeds {
            let tied = race::needs_another_seed(&entries);
            if tied.is_empty() {
                break;
            }
            for i in tied {
                let seed = base_seed + u64::from(runs.seeds + extra);
                self.race_run(curve, &mut entries[i], seed, false, &mut samples[i])
                    .await;
            }
        }
        let rule = policy.race.tie_rule(policy.objective);
        let race = race::decide(runs.budget, entries, preferred, rule, &|b| curve.speed(b));
        rationale.push(format!(
            "race over batches {:?} ({}, each at the LR the rule lr ~ B^{alpha} gives from {:.3e} at {}): {}",
            candidates, race.budget, reference_lr.1, reference_lr.0, race.verdict
        ));
        // Each candidate's runs measure the noise over their own second
        // half: one point of training per candidate, never pooled across.
        let mut noise_by_progress: Vec<NoiseScale> = race
            .entries
            .iter()
            .zip(&samples)
            .filter_map(|(entry, samples)| {
                let from = noise_from(entry.steps, 0);
                pooled_noise_scale(
                    samples,
                    from,
                    u64::from(from) * entry.batch_size,
                    u64::from(entry.steps) * entry.batch_size,
                )
            })
            .collect();
        noise_by_progress.sort_by_key(|n| n.after_samples);
        let (batch, learning_rate) = match race.winner {
            Some(w) => (
                w,
                race.entries
                    .iter()
                    .find(|e| e.batch_size == w)
                    .map(|e| e.learning_rate),
            ),
            None => {
                rationale.push(format!(
                    "no candidate finished every seed: the model's choice {preferred} stands"
                ));
                (preferred, Some(lr_for(preferred)))
            }
        };
        RacePhase {
            race: Some(race),
            preferred,
            batch,
            learning_rate,
            noise_by_progress,
            rationale,
        }
    }

    /// One seed of one candidate; `planned` runs that the budget cuts
    /// make the search partial, extra seeds for ties do not.
    async fn race_run(
        &mut self,
        curve: &CurvePhase,
        entry: &mut RaceEntry,
        seed: u64,
        planned: bool,
        samples: &mut Vec<GradNoiseSample>,
    ) {
        if !self.run_fits(
            Phase::Race,
            self.seconds_for(curve, entry.batch_size, entry.steps),
        ) {
            if planned {
                self.cut_short(
                    Phase::Race,
                    format!("batch {} ran fewer seeds than planned", entry.batch_size),
                );
            } else {
                self.skipped.push(format!(
                    "batch {} got no extra seed to break its tie (no time)",
                    entry.batch_size
                ));
            }
            return;
        }
        let result = self
            .training_run(
                Phase::Race,
                entry.batch_size,
                entry.learning_rate,
                entry.steps,
                seed,
            )
            .await;
        let loss = result.validation_loss.filter(|_| result.is_ok());
        if let (Some(_), Some(sample)) = (loss, result.grad_noise.clone()) {
            samples.push(sample);
        }
        entry.runs.push(RaceRun {
            seed,
            validation_loss: loss,
            outcome: result.outcome,
            losses: result.losses,
            loss_steps: Vec::new(),
        });
    }

    /// Phase 6: LRs a half-decade either side of the winner's, with the
    /// winner's first seed (paired: same initialization and data order),
    /// so the LR is measured at the chosen batch rather than transferred.
    pub(super) async fn lr_check(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        raced: &RacePhase,
    ) -> CheckPhase {
        let mut check = CheckPhase {
            best: None,
            interval: None,
            runs: Vec::new(),
            rationale: Vec::new(),
        };
        let (Some(race), Some(lr)) = (&raced.race, raced.learning_rate) else {
            return check;
        };
        let Some(entry) = race
            .entries
            .iter()
            .find(|e| Some(e.batch_size) == race.winner)
        else {
            return check;
        };
        let Some(first) = entry.runs.first() else {
            return check;
        };
        let batch = entry.batch_size;
        let steps = entry.steps;
        let noise = entry.spread().unwrap_or(0.0);
        check.runs.push(Confirmation {
            batch_size: batch,
            learning_rate: lr,
            validation_loss: first.validation_loss,
            outcome: first.outcome,
            losses: first.losses.clone(),
            loss_steps: Vec::new(),
        });
        let mut lrs = vec![lr / LR_STEP, lr * LR_STEP];
        let mut index = 0;
        let mut extended = false;
        while index < lrs.len() {
            let candidate = lrs[index];
            index += 1;
            if !self.run_fits(Phase::LrCheck, self.seconds_for(curve, batch, steps)) {
                // The check refines an LR the race already used: skipping
                // it leaves a tested answer, so it is noted, not partial.
                self.skipped.push(format!(
                    "LR {candidate:.2e} at batch {batch} was not checked (no time)"
                ));
                break;
            }
            let result = self
                .training_run(Phase::LrCheck, batch, candidate, steps, first.seed)
                .await;
            check.runs.push(Confirmation {
                batch_size: batch,
                learning_rate: candidate,
                validation_loss: result.validation_loss.filter(|_| result.is_ok()),
                outcome: result.outcome,
                losses: result.losses,
                loss_steps: Vec::new(),
            });
            if index == lrs.len() && !extended {
                // A clear win at an edge: one more step that way.
                if let Some(best) = best_lr(&check.runs) {
                    let center_loss = first.validation_loss.unwrap_or(f64::INFINITY);
                    if best.validation_loss < center_loss - noise.max(1e-9) {
                        let min = lrs.iter().copied().fold(lr, f64::min);
                        let max = lrs.iter().copied().fold(lr, f64::max);
                        if best.best_tested_lr == min {
                            lrs.push(min / LR_STEP);
                            extended = true;
                        } else if best.best_tested_lr == max {
                            lrs.push(max * LR_STEP);
                            extended = true;
                        }
                    }
                }
            }
        }
        let Some(best) = best_lr(&check.runs) else {
            return check;
        };
        let center_loss = first.validation_loss.unwrap_or(f64::INFINITY);
        // One seed must beat the race's seed-to-seed noise to move the LR
        // off the raced one towards an edge; a bowl around the raced LR
        // refines it to the bowl's bottom.
        let threshold = noise.max(0.002 * center_loss.abs());
        let raced = BestLr {
            batch_size: batch,
            learning_rate: lr,
            best_tested_lr: lr,
            validation_loss: center_loss,
            interpolated: false,
        };
        let chosen = if best.best_tested_lr == lr || best.validation_loss < center_loss - threshold
        {
            best.clone()
        } else {
            raced
        };
        check.interval = lr_interval(&check.runs, threshold)
            .map(|(lo, hi)| (lo.min(chosen.learning_rate), hi.max(chosen.learning_rate)));
        check.rationale.push(format!(
            "LR check at batch {batch}: {} runs from {:.2e} to {:.2e} with the race's first seed; best {:.3e} (loss {:.4} against {:.4} at the raced LR; seed noise {:.4}), so the LR is {:.3e}",
            check.runs.len(),
            check.runs.iter().map(|r| r.learning_rate).fold(f64::MAX, f64::min),
            check.runs.iter().map(|r| r.learning_rate).fold(0.0, f64::max),
            best.learning_rate,
            best.validation_loss,
            center_loss,
            noise,
            chosen.learning_rate
        ));
        if let Some(reference_best) = &reference.best {
            if reference_best.batch_size != batch {
                check.rationale.push(format!(
                    "best LR {:.3e} at batch {} and {:.3e} at batch {batch}",
                    reference_best.learning_rate, reference_best.batch_size, chosen.learning_rate
                ));
            }
        }
        check.best = Some(chosen);
        check
    }

    /// The recommendation from the phases' results.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn recommend(
        self,
        fit: FitPhase,
        cap: Option<BatchCap>,
        curve: CurvePhase,
        range: RangePhase,
        mut reference: ReferencePhase,
        raced: RacePhase,
        check: CheckPhase,
        runs: RunPlan,
    ) -> Recommendation {
        let spec = self.spec;
        let policy = &spec.policy;
        let mut rationale: Vec<String> = Vec::new();
        rationale.extend(fit.rationale);
        rationale.extend(curve.rationale.iter().cloned());
        rationale.extend(range.rationale);
        rationale.extend(runs.rationale);
        rationale.extend(std::mem::take(&mut reference.rationale));
        rationale.extend(raced.rationale);
        rationale.extend(check.rationale);
        let reused = self
            .records
            .iter()
            .filter(|r| r.process_trial.is_some_and(|k| k > 1))
            .count();
        if reused > 0 {
            let started = self
                .records
                .iter()
                .filter(|r| r.process_trial.is_none_or(|k| k == 1))
                .count();
            rationale.push(format!(
                "the command ran {} trials in {started} process(es): persistent trials (docs/command-runner.md)",
                self.records.len()
            ));
        }
        let batch = raced.batch;
        let world = spec.training.world_size.max(1);
        if raced.race.is_some() && raced.preferred != batch {
            rationale.push(format!(
                "the race overruled the model: {batch} instead of its {}",
                raced.preferred
            ));
        }
        if cap
            .as_ref()
            .is_some_and(|c| batch >= c.largest_batch && c.binding)
        {
            rationale.push(format!(
                "the recommendation sits at the data cap of {}: the training set, not memory, limits it",
                cap.as_ref().map_or(0, |c| c.largest_batch)
            ));
        }

        // The LR rule: anchored at the chosen batch when it was measured
        // there, with the exponent measured between two batches if asked.
        let textbook = textbook_alpha(spec);
        let mut best_lrs: Vec<BestLr> = Vec::new();
        if let Some(best) = &check.best {
            best_lrs.push(best.clone());
        } else if let Some(lr) = raced.learning_rate {
            best_lrs.push(BestLr {
                batch_size: batch,
                learning_rate: lr,
                best_tested_lr: lr,
                validation_loss: f64::NAN,
                interpolated: false,
            });
        }
        if let Some(r) = &reference.best {
            if best_lrs
                .first()
                .is_none_or(|b| b.batch_size != r.batch_size)
            {
                best_lrs.push(r.clone());
            }
        }
        let measured_alpha = match (check.best.as_ref(), reference.best.as_ref()) {
            (Some(a), Some(b))
                if (a.batch_size.max(b.batch_size) as f64
                    / a.batch_size.min(b.batch_size).max(1) as f64)
                    >= 2.0 =>
            {
                fit_alpha(a, b)
            }
            _ => None,
        };
        // Both best LRs come from single-seed runs (confirmations at the
        // reference batch, the check at the chosen one), whose optimum moves
        // by a grid step from seed to seed: their exponent is shown, never
        // called measured. The textbook rule is used and named as such.
        let textbook_kind = if textbook >= 1.0 {
            LrScaling::Linear
        } else {
            LrScaling::Sqrt
        };
        let kind = match policy.lr_scaling {
            LrScaling::Measured => {
                rationale.push(format!(
                    "the policy asks for a measured LR exponent, but the best LRs at two batches come from single-seed runs, which do not measure it{}: the textbook rule ({textbook_kind}, alpha {textbook}) is used",
                    measured_alpha.map_or(String::new(), |a| format!(" (their exponent {a:.2} is shown, not used)"))
                ));
                textbook_kind
            }
            other => other,
        };
        let lr_rule = best_lrs.first().map(|best| LrRule {
            kind,
            reference_batch: best.batch_size,
            reference_lr: best.learning_rate,
            alpha: match kind {
                LrScaling::Linear => 1.0,
                LrScaling::Sqrt => 0.5,
                LrScaling::Measured => textbook,
            },
            measured_alpha,
            textbook_alpha: textbook,
        });

        // Accumulation, global batch and the LR that goes with it.
        let global = batch * u64::from(world);
        let (accumulation, effective) = match spec.training.target_batch_size {
            Some(target) if target > global => {
                let wanted = target.div_ceil(global);
                let steps = wanted.min(u64::from(policy.max_accumulation_steps)).max(1);
                if steps < wanted {
                    rationale.push(format!(
                        "reaching the target batch of {target} needs {wanted} accumulation steps; the policy allows {}, so the effective batch is {}",
                        policy.max_accumulation_steps,
                        global * steps
                    ));
                } else {
                    rationale.push(format!(
                        "{steps} gradient-accumulation steps reach the target batch of {target} ({} per optimizer step); accumulation adds no samples per second, only a larger effective batch",
                        global * steps
                    ));
                }
                (steps as u32, global * steps)
            }
            _ => (1, global),
        };
        let learning_rate = lr_rule.as_ref().map(|rule| rule.lr_at(effective));
        let interval = check.interval.map(|(lo, hi)| {
            let scale = lr_rule
                .as_ref()
                .map_or(1.0, |r| (effective as f64 / batch as f64).powf(r.alpha));
            (lo * scale, hi * scale)
        });
        if let (Some(rule), Some(lr)) = (&lr_rule, learning_rate) {
            rationale.push(format!(
                "learning rate {lr:.3e} for the effective batch {effective}{}: best validation loss at batch {} was at {:.3e}; scaled with lr ~ B^{:.2} ({} rule; single-seed alpha {}, textbook {})",
                interval.map_or(String::new(), |(lo, hi)| format!(" (within noise from {lo:.2e} to {hi:.2e})")),
                rule.reference_batch,
                rule.reference_lr,
                rule.alpha,
                rule.kind,
                rule.measured_alpha.map_or("n/a".to_string(), |a| format!("{a:.2}")),
                rule.textbook_alpha
            ));
        }
        let dataset_size = spec.training.dataset_size.or(self.train_samples);
        let updates_per_epoch = dataset_size.map(|n| n.div_ceil(effective).max(1));
        let total_updates =
            updates_per_epoch.map(|u| (u as f64 * spec.training.epochs).ceil() as u64);
        let warmup_steps =
            total_updates.map(|t| (t as f64 * policy.lr_search.warmup_fraction).ceil() as u64);

        // Expectations: measured where the batch was tested, else modelled.
        let measured_peak = self
            .records
            .iter()
            .filter(|r| r.batch_size == batch && r.outcome == Outcome::Ok)
            .filter_map(|r| r.peak_memory_bytes)
            .max();
        let expected_peak = measured_peak.or_else(|| {
            fit.max_fit
                .memory_model
                .map(|m| m.predict(batch).max(0.0) as u64)
        });
        let expected_speed =
            speed_at(&curve.points, curve.model.as_ref(), batch).map(|s| s * f64::from(world));
        let measured_precision = match self.ctx.device {
            TrialDevice::Cpu => "f32".to_string(),
            TrialDevice::Cuda(_) => spec.precision.to_string(),
        };
        let precision = precision_advice(
            matches!(self.ctx.device, TrialDevice::Cuda(_)),
            &spec.precision.to_string(),
            &measured_precision,
        );
        if world > 1 {
            rationale.push(format!(
                "data-parallel over {world} replicas: {batch} per device, {global} globally; memory is per device, throughput assumes linear scaling"
            ));
        }
        let goodput = reference
            .model_noise()
            .map(|n| goodput_curve(&curve.points, n.value, world))
            .unwrap_or_default();
        let noise = reference.noise;
        for what in &self.skipped {
            rationale.push(format!("left out: {what}"));
        }
        for (phase, what) in &self.cut {
            rationale.push(format!("{} phase cut short: {what}", phase.as_str()));
        }
        let partial_reason = (!self.cut.is_empty()).then(|| {
            self.cut
                .iter()
                .map(|(phase, what)| {
                    format!("{} cut short by the time budget: {what}", phase.as_str())
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        let mut confirmations = reference.runs;
        confirmations.extend(check.runs);
        Recommendation {
            schema_version: SCHEMA_VERSION,
            job: spec.name.clone(),
            policy: spec.policy_name.clone(),
            objective: policy.objective,
            device: self.ctx.device,
            batchd_version: env!("CARGO_PKG_VERSION").to_string(),
            batch_size: batch,
            world_size: world,
            global_batch_size: global,
            gradient_accumulation_steps: accumulation,
            effective_batch_size: effective,
            lr: LrAdvice {
                learning_rate,
                interval,
                rule: lr_rule,
            },
            schedule: ScheduleAdvice {
                dataset_size,
                updates_per_epoch,
                total_updates,
                warmup_steps,
                decay: "cosine".into(),
                final_lr_fraction: policy.race.final_lr_fraction,
            },
            memory: MemoryAdvice {
                limit_bytes: self.ctx.memory_limit_bytes,
                limit_source: self.ctx.memory_limit_source.clone(),
                headroom_fraction: policy.memory_headroom_fraction,
                max_fit: fit.max_fit,
                expected_peak_bytes: expected_peak,
            },
            throughput: ThroughputAdvice {
                expected_samples_per_second: expected_speed,
                curve: curve.points,
                plateau_batch_size: curve.plateau,
                step_time_model: curve.model,
                goodput_curve: goodput,
            },
            precision,
            evidence: Evidence {
                gradient_noise: noise,
                preconditioned_noise: reference.preconditioned,
                noise_by_progress: raced.noise_by_progress,
                lr_range_tests: range.test.into_iter().collect(),
                lr_confirmations: confirmations,
                best_lrs,
                race: raced.race,
                batch_cap: cap,
                budget_plan: self.plan,
                trials: self.records,
            },
            rationale,
            partial: partial_reason.is_some(),
            partial_reason,
            phases_cut: self.cut.iter().map(|(p, _)| *p).collect(),
            seconds: self.clock.now().saturating_sub(self.started).as_secs_f64(),
        }
    }
}

/// Where a run's noise measurements start: the second half of the run
/// (the noise scale grows as the loss falls, and is steady there), never in
/// the warm-up.
fn noise_from(steps: u32, warmup: u32) -> u32 {
    warmup.max(steps / 2)
}

/// The gradient-noise measurements of a training run of `steps`: 4 ×
/// `groups` (20 by default) pairs at most, a quarter of the steps at most,
/// spread evenly over the run's second half. Why that many: one pair's
/// B_simple estimate scatters with a relative error of about 1.07 (measured
/// on the PyTorch example, docs/design/persistent-command-trials.md §3), so
/// the 40-60 pairs pooled over a search's confirmation runs give about ±15%;
/// a measured step costs an extra small-batch pass (an eighth of the batch)
/// and two norms, so a quarter of the steps keeps the surcharge under 10% of
/// the run.
pub(super) fn noise_request(
    batch: u64,
    steps: u32,
    warmup: u32,
    groups: u32,
) -> Option<GradNoiseRequest> {
    let from = noise_from(steps, warmup);
    let measurements = (groups * 4).min(steps / 4).min(steps.saturating_sub(from));
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
