//! What the search found, typed: each phase records findings, and this
//! module alone turns them into the recommendation's rationale sentences
//! (and the "left out" and "cut short" notes), so the wording lives in one
//! place and tests can match on the data rather than on text.

use std::fmt;
use std::time::Duration;

use super::lr::{LrRule, Settled, SkipReason, SkippedLr};
use super::maxfit::MaxFit;
use super::noise::NoiseScale;
use super::phase::Phase;
use super::race::RaceBudget;
use super::recommend::{BatchCap, ModelChoice};
use super::steptime::StepTimeModel;
use crate::units::{format_duration, ByteSize};

/// Where the real run's length came from.
#[derive(Debug, Clone, PartialEq)]
pub enum RunLengthSource {
    /// The job's `training.time_budget`.
    TimeBudget,
    /// The job's epochs at the reference batch.
    Epochs { epochs: f64, batch: u64 },
}

/// One sentence of the rationale.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    MaxFit {
        fit: MaxFit,
        limit_bytes: u64,
        limit_source: String,
        headroom: f64,
    },
    FlakyBatches(Vec<u64>),
    DataCap {
        cap: BatchCap,
        max_fit: u64,
    },
    StepTime(StepTimeModel),
    Plateau {
        batch: u64,
        threshold: f64,
        speed: f64,
    },
    RangeTest {
        batch: u64,
        min_loss_lr: f64,
        suggestion: f64,
    },
    /// Equal-epoch runs of the job's epochs, on a lean plan.
    JobEpochRuns {
        epochs: f64,
        affordable: f64,
        candidates: u32,
    },
    /// Equal-epoch runs shorter than the job's.
    ShortEpochRuns {
        epochs: f64,
        job_epochs: f64,
        /// The batch the confirmations and the check were priced at.
        reference: u64,
        /// The batches the race was priced at.
        race_batches: Vec<u64>,
    },
    RealLengthRuns {
        seconds: f64,
        source: RunLengthSource,
    },
    MoreSeeds {
        affordable: f64,
        planned: f64,
        seeds: u32,
        policy_seeds: u32,
    },
    LeanRuns {
        seconds: f64,
        source: RunLengthSource,
        affordable: f64,
        candidates: u32,
    },
    ShortRuns {
        seconds: f64,
        job_seconds: f64,
        source: RunLengthSource,
    },
    RunBudget {
        budget: RaceBudget,
        final_fraction: f64,
        runs: f64,
        left: Duration,
    },
    Replanned {
        cost: f64,
        left: Duration,
        affordable: f64,
        candidates: usize,
        seeds: u32,
        planned_candidates: usize,
        planned_seeds: u32,
    },
    /// A race candidate left before the second round, which did not fit.
    RaceDropped {
        batch: u64,
        loss: Option<f64>,
        round_cost: f64,
        /// The run-to-run cost spread the round was checked with.
        margin: f64,
        left: Duration,
    },
    /// Equal-epoch race and check runs re-sized from what the
    /// confirmations cost.
    EpochsResized {
        cost: f64,
        planned_cost: f64,
        epochs: f64,
        confirmed_epochs: f64,
        job_epochs: f64,
        left: Duration,
    },
    /// Training runs validate on fewer held-out samples than the default:
    /// the default set's validation would take more than a quarter of a
    /// run's training.
    ValidationSized {
        samples: u32,
        default_samples: u32,
        default_seconds: f64,
        stepping: f64,
    },
    /// The race dropped candidates before its first run: priced at their
    /// own batches, the planned ones' seeds would not fit the time left.
    RaceNarrowed {
        round_cost: f64,
        left: Duration,
        candidates: usize,
        planned: usize,
        seeds: u32,
    },
    /// The race ended its planned seed rounds early: the next round, at
    /// what runs had cost, would not have fit.
    RoundsEnded {
        seeds: u32,
        planned_seeds: u32,
        round_cost: f64,
        left: Duration,
    },
    ReferenceLr {
        batch: u64,
        runs: usize,
        steps: u32,
        lr: f64,
        loss: f64,
    },
    /// Planned confirmation LRs the runs ruled out.
    LrSkipped {
        batch: u64,
        skipped: Vec<SkippedLr>,
    },
    Noise {
        noise: NoiseScale,
        runs: usize,
        batch: u64,
        steps: u32,
        /// Whether this is the scale that drives the model (no
        /// preconditioned one was measured), so its use is stated here.
        drives: bool,
    },
    NoNoise,
    Preconditioned(NoiseScale),
    Model(ModelChoice),
    NoRace {
        preferred: u64,
    },
    Race {
        candidates: Vec<u64>,
        budget: RaceBudget,
        alpha: f64,
        /// The noise scale the LR was moved with (`lr::transfer_lr`).
        noise: Option<f64>,
        reference_lr: f64,
        reference_batch: u64,
        verdict: String,
    },
    NoWinner {
        preferred: u64,
    },
    /// The model re-run for the race's tie rule with the noise scale the
    /// race resolved (`noise`), where the reference batch's did not.
    TieModel {
        noise: NoiseScale,
        preferred: u64,
        before: u64,
    },
    /// The batch ramp's verdict (`search::ramp`), in words.
    Ramp(String),
    Check {
        batch: u64,
        runs: usize,
        lowest: f64,
        highest: f64,
        seeds: usize,
        best_lr: f64,
        best_loss: f64,
        raced_loss: f64,
        noise: f64,
        /// The best checked LR did not move the answer.
        held: bool,
        lr: f64,
    },
    BestLrs {
        reference_lr: f64,
        reference_batch: u64,
        lr: f64,
        batch: u64,
    },
    Persistent {
        trials: usize,
        processes: usize,
    },
    Overruled {
        batch: u64,
        preferred: u64,
    },
    AtDataCap {
        cap: u64,
        /// The real run's cap, not the data's, is the one that binds.
        run: bool,
    },
    TextbookExponent {
        kind: crate::policy::LrScaling,
        alpha: f64,
        implied: Option<f64>,
    },
    Accumulation {
        target: u64,
        wanted: u64,
        steps: u64,
        max_steps: u32,
        effective: u64,
    },
    LearningRate {
        lr: f64,
        effective: u64,
        interval: Option<(f64, f64)>,
        rule: LrRule,
    },
    DataParallel {
        world: u32,
        batch: u64,
        global: u64,
    },
    /// A run a phase asked for that an earlier run had made.
    Reused(Reused),
    LeftOut(Gap),
    CutShort(Phase, Gap),
}

/// A training run a phase asked for that an earlier run had made (same
/// batch, LR, length, schedule, seed and validation set): its result was
/// reused, not rerun.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reused {
    pub phase: Phase,
    pub from: Phase,
    pub batch: u64,
    pub lr: f64,
    pub seed: u64,
}

/// What the budget left out, or cut short.
#[derive(Debug, Clone, PartialEq)]
pub enum Gap {
    MaxFitStopped {
        answer: u64,
        over: u64,
    },
    OffTheCurve {
        batch: u64,
    },
    RangeTestSkipped,
    NotConfirmed {
        lr: f64,
        batch: u64,
        extension: bool,
    },
    FewerSeeds {
        batch: u64,
    },
    NoExtraSeed {
        batch: u64,
    },
    /// A planned seed of a candidate already out of contention (it trails
    /// the leader past the race's t-test, or a seed of it failed).
    BeatenSeed {
        batch: u64,
        seed: u64,
    },
    NotChecked {
        lr: f64,
        batch: u64,
        seed: u64,
    },
    /// A planned confirmation the budget refused that did not leave the
    /// reference LR in doubt (`by`: the phase that made the same run later).
    SettledConfirmation {
        lr: f64,
        batch: u64,
        settled: Settled,
        by: Option<Phase>,
    },
    /// The batch ramp's runs did not fit (after `seeds_run` of them).
    NoRamp {
        seeds_run: usize,
    },
    BudgetRanOut,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gap::MaxFitStopped { answer, over } => write!(
                f,
                "the max-fit search stopped at batch {answer}: a trial of batch {over} would overrun its share of the budget, so the largest fitting batch may be larger"
            ),
            Gap::OffTheCurve { batch } => write!(
                f,
                "batch {batch} was left off the throughput curve to stay in the time budget"
            ),
            Gap::RangeTestSkipped => f.write_str("the LR range test was skipped"),
            Gap::NotConfirmed {
                lr,
                batch,
                extension,
            } => {
                write!(f, "LR {lr:.2e} at batch {batch} was not confirmed")?;
                if *extension {
                    f.write_str(" (the best sat at an edge; no time to look further)")?;
                }
                Ok(())
            }
            Gap::FewerSeeds { batch } => write!(f, "batch {batch} ran fewer seeds than planned"),
            Gap::NoExtraSeed { batch } => write!(
                f,
                "batch {batch} got no extra seed to break its tie (no time)"
            ),
            Gap::BeatenSeed { batch, seed } => write!(
                f,
                "batch {batch} was not run with seed {seed} (no time); it was already out of contention (its runs trail the leader's past the race's 90% t-test, or one failed), so the verdict does not wait for it"
            ),
            Gap::NotChecked { lr, batch, seed } => write!(
                f,
                "LR {lr:.2e} at batch {batch} was not checked with seed {seed} (no time)"
            ),
            Gap::SettledConfirmation {
                lr,
                batch,
                settled,
                by,
            } => match settled {
                Settled::RunLater { loss, best } => {
                    let by = by.map_or("a later phase", |p| p.as_str());
                    let result = if loss.is_finite() {
                        format!("validation loss {loss:.4}")
                    } else {
                        "it diverged".to_string()
                    };
                    write!(
                        f,
                        "LR {lr:.2e} at batch {batch} was not confirmed in time, but {by} made the same run later ({result}, not below the best confirmation's {:.4} at {:.2e}), so the reference LR stood",
                        best.1, best.0
                    )
                }
                Settled::PastRise {
                    via,
                    best,
                    threshold,
                } => write!(
                    f,
                    "LR {lr:.2e} at batch {batch} was not confirmed (no time); it lies past LR {:.2e}, whose validation loss came out {:.4} above the best confirmation's ({:.4} at {:.2e}), more than the race's seed noise lets a paired difference move ({threshold:.4}, one-sided 90%): with one minimum in log-LR it could not have been the best",
                    via.0,
                    via.1 - best.1,
                    best.1,
                    best.0
                ),
            },
            Gap::NoRamp { seeds_run } => write!(
                f,
                "the batch ramp was not raced (no time after {seeds_run} of its runs)"
            ),
            Gap::BudgetRanOut => f.write_str("the time budget ran out during a trial"),
        }
    }
}

impl fmt::Display for RunLengthSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunLengthSource::TimeBudget => f.write_str("the job's training.time_budget"),
            RunLengthSource::Epochs { epochs, batch } => {
                write!(f, "{epochs} epochs at batch {batch}")
            }
        }
    }
}

fn seconds(s: f64) -> String {
    format_duration(Duration::from_secs_f64(s.max(0.0)))
}

/// The noise scale's use, when it is the one the model takes.
fn judged(noise: &NoiseScale) -> &'static str {
    if noise.is_lower_bound() {
        ": the goodput model takes it as a bound, and the race reaches above it"
    } else if noise.is_decisive() {
        ""
    } else {
        ": too uncertain to separate candidates, so the race decides over a wider spread"
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::MaxFit {
                fit,
                limit_bytes,
                limit_source,
                headroom,
            } => {
                let batch = fit.batch_size.unwrap_or(0);
                let peak = ByteSize(fit.peak_bytes.unwrap_or(0));
                let budget = ByteSize(fit.budget_bytes);
                match &fit.first_failure {
                    Some((fail, why)) => write!(
                        f,
                        "largest batch that fits: {batch} (peak {peak}) under a budget of {budget} ({} limit from {limit_source} less {:.0}% headroom); {fail} failed ({why}); {} trials",
                        ByteSize(*limit_bytes),
                        headroom * 100.0,
                        fit.trials
                    ),
                    None if fit.capped_by_dataset => write!(
                        f,
                        "largest batch that fits: {batch}, the whole training set (peak {peak} of a {budget} budget: memory allows more, the data does not)"
                    ),
                    None if fit.capped_by_usable => write!(
                        f,
                        "largest batch tried: {batch}, the most the data and the real run let the advice use (peak {peak} of a {budget} budget); a larger probe would have overrun the search's time and could not be used, so memory was not probed further; {} trials",
                        fit.trials
                    ),
                    None if fit.capped_by_max_batch => write!(
                        f,
                        "largest batch that fits: {batch}, the spec's search.max_batch (peak {peak} of a {budget} budget)"
                    ),
                    None => write!(
                        f,
                        "largest batch that fits: {batch} (the search ended before a larger batch failed); {} trials",
                        fit.trials
                    ),
                }
            }
            Finding::FlakyBatches(sizes) => write!(
                f,
                "batch sizes {sizes:?} fitted once and failed on a re-run, so they were not trusted"
            ),
            Finding::DataCap { cap, max_fit } => match &cap.run {
                Some(run) => write!(
                    f,
                    "the real training run sees about {} samples, which caps the batch at {} ({} updates per run at least); the max fit of {max_fit} is reported but not used",
                    run.run_samples, run.largest_batch, run.min_updates_per_run
                ),
                None => write!(
                    f,
                    "the training set of {} samples caps the batch at {} ({} updates per epoch at least); the max fit of {max_fit} is reported but not used",
                    cap.training_samples, cap.largest_batch, cap.min_updates_per_epoch
                ),
            },
            Finding::StepTime(m) => write!(
                f,
                "step time t(B) = {:.2} ms + B / {:.0} samples/s fits the {} measured points within {:.0}%",
                m.fixed_seconds * 1e3,
                m.samples_per_second_limit,
                m.points,
                m.max_relative_error * 100.0
            ),
            Finding::Plateau {
                batch,
                threshold,
                speed,
            } => write!(
                f,
                "throughput comes within {:.0}% of its best from batch {batch} on ({speed:.0} samples/s)",
                threshold * 100.0
            ),
            Finding::RangeTest {
                batch,
                min_loss_lr,
                suggestion,
            } => write!(
                f,
                "LR range test at batch {batch}: smoothed loss lowest at {min_loss_lr:.2e}, suggestion {suggestion:.2e} (a tenth of it)"
            ),
            Finding::JobEpochRuns {
                epochs,
                affordable,
                candidates,
            } => write!(
                f,
                "runs train the job's {epochs} epochs: the budget affords about {affordable:.0} such runs, so {candidates} candidates race"
            ),
            Finding::ShortEpochRuns {
                epochs,
                job_epochs,
                reference,
                race_batches,
            } => write!(
                f,
                "confirmation runs train {epochs:.2} epochs each, and race and check runs unless re-sized below ({job_epochs} in the job): all the budget affords with confirmations and the check priced at batch {reference} and the race at about {race_batches:?}; longer runs tend to favour lower LRs than these"
            ),
            Finding::RealLengthRuns { seconds: s, source } => write!(
                f,
                "runs train as long as the real training run, about {} ({source})",
                seconds(*s)
            ),
            Finding::MoreSeeds {
                affordable,
                planned,
                seeds,
                policy_seeds,
            } => write!(
                f,
                "the budget affords about {affordable:.0} such runs, more than the plan's {planned:.0}: {seeds} seeds per race candidate instead of {policy_seeds}"
            ),
            Finding::LeanRuns {
                seconds: s,
                source,
                affordable,
                candidates,
            } => write!(
                f,
                "runs train as long as the real training run, {} ({source}): the budget affords about {affordable:.0} such runs, so {candidates} candidates race",
                seconds(*s)
            ),
            Finding::ShortRuns {
                seconds: s,
                job_seconds,
                source,
            } => write!(
                f,
                "runs train {}, shorter than the real training run ({}, {source}): the budget affords too few runs of that length; longer runs tend to favour larger batches and lower LRs than these",
                seconds(*s),
                seconds(*job_seconds)
            ),
            Finding::RunBudget {
                budget,
                final_fraction,
                runs,
                left,
            } => write!(
                f,
                "every confirmation, race and check run trains for the same budget, {budget}, with linear warm-up and cosine decay to {:.0}% of the peak LR (about {runs:.0} runs in the {} left)",
                final_fraction * 100.0,
                format_duration(*left)
            ),
            Finding::Replanned {
                cost,
                left,
                affordable,
                candidates,
                seeds,
                planned_candidates,
                planned_seeds,
            } => write!(
                f,
                "the dearest confirmation run took {cost:.1} s; the {} left afford about {affordable:.0} such runs, so {candidates} candidates race with {seeds} seeds each (planned: {planned_candidates} with {planned_seeds})",
                format_duration(*left)
            ),
            Finding::RaceDropped {
                batch,
                loss,
                round_cost,
                margin,
                left,
            } => {
                let first = loss.map_or("no loss".to_string(), |l| format!("loss {l:.4}"));
                write!(
                    f,
                    "the race's second round (about {round_cost:.1} s at what its runs cost, and its last run's share of the {margin:.2}x spread identical runs have shown) did not fit the {} left: batch {batch}, worst on its first seed ({first}), left the race rather than a candidate running a seed short",
                    format_duration(*left)
                )
            }
            Finding::EpochsResized {
                cost,
                planned_cost,
                epochs,
                confirmed_epochs,
                job_epochs,
                left,
            } => {
                let most = if *epochs >= *job_epochs {
                    " (the job's own)".to_string()
                } else {
                    String::new()
                };
                write!(
                    f,
                    "the dearest confirmation run took {cost:.2} s against {planned_cost:.2} s planned; at what runs cost, with the race's own candidates, the {} left afford {epochs:.2} epochs{most} per race and check run, not the {confirmed_epochs:.2} the confirmations trained (their best LR is carried over by the batch rule and checked again at the new length)",
                    format_duration(*left)
                )
            }
            Finding::ValidationSized {
                samples,
                default_samples,
                default_seconds,
                stepping,
            } => write!(
                f,
                "every training run validates on the same {samples} held-out samples, not {default_samples}: {default_samples} took {default_seconds:.2} s, more than a quarter of the {stepping:.1} s of training a run gets (the real run's, or the most the budget affords)"
            ),
            Finding::RaceNarrowed {
                round_cost,
                left,
                candidates,
                planned,
                seeds,
            } => write!(
                f,
                "priced at their own batches, a seed round of the race costs about {round_cost:.1} s, so with {} left {candidates} candidates race with {seeds} seeds each (planned: {planned})",
                format_duration(*left)
            ),
            Finding::RoundsEnded {
                seeds,
                planned_seeds,
                round_cost,
                left,
            } => write!(
                f,
                "a seed round of every candidate would have taken about {round_cost:.1} s with {} left for the race, so the race ended at {seeds} seeds each (planned: {planned_seeds}) rather than leave some candidates a seed short",
                format_duration(*left)
            ),
            Finding::ReferenceLr {
                batch,
                runs,
                steps,
                lr,
                loss,
            } => write!(
                f,
                "at the reference batch {batch}, {runs} runs of {steps} steps put the best LR at {lr:.3e} (validation loss {loss:.4})"
            ),
            Finding::LrSkipped { batch, skipped } => {
                write!(f, "at the reference batch {batch}, ")?;
                for (i, skip) in skipped.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "LR {:.2e} was not run: ", skip.learning_rate)?;
                    match skip.reason {
                        SkipReason::Rose { from, to } => write!(
                            f,
                            "the loss had already risen from {:.4} at {:.2e} to {:.4} at {:.2e}, on the way to it",
                            from.1, from.0, to.1, to.0
                        )?,
                        SkipReason::AboveDivergence { diverged } => {
                            write!(f, "{diverged:.2e} below it diverged")?
                        }
                    }
                }
                f.write_str(" (the loss is taken to have one minimum in log-LR)")
            }
            Finding::Noise {
                noise,
                runs,
                batch,
                steps,
                drives,
            } => write!(
                f,
                "gradient noise scale B_simple = {} samples, measured over training samples {}..{} ({runs} runs at batch {batch}, steps {}..{steps}; {} measurements against batch {}; McCandlish et al. 2018){}",
                noise.describe(),
                noise.after_samples,
                noise.until_samples,
                noise.after_steps,
                noise.measurements,
                noise.small_batch,
                if *drives { judged(noise) } else { "" }
            ),
            Finding::NoNoise => f.write_str(
                "the gradient noise scale could not be measured (too little time, or tr(Sigma) not clearly above zero): the race decides",
            ),
            Finding::Preconditioned(noise) => write!(
                f,
                "preconditioned by Adam's sqrt(v) + eps, the noise scale is {} samples: Adam steps along the preconditioned gradient, so this one drives the model (AdaptDL's AdamGradientNoiseScale){}",
                noise.describe(),
                judged(noise)
            ),
            Finding::Model(choice) => choice.fmt(f),
            Finding::NoRace { preferred } => write!(
                f,
                "no LR was confirmed, so there was no race: the model's choice {preferred} stands"
            ),
            Finding::Race {
                candidates,
                budget,
                alpha,
                noise: Some(noise),
                reference_lr,
                reference_batch,
                verdict,
            } => write!(
                f,
                "race over batches {candidates:?} ({budget}, each at the LR lr ~ (B / (B + B_noise))^{alpha} gives from {reference_lr:.3e} at {reference_batch}, with B_noise = {noise:.0}: the textbook rule below the noise scale, level above it; McCandlish et al. 2018): {verdict}"
            ),
            Finding::Race {
                candidates,
                budget,
                alpha,
                noise: None,
                reference_lr,
                reference_batch,
                verdict,
            } => write!(
                f,
                "race over batches {candidates:?} ({budget}, each at the LR the rule lr ~ B^{alpha} gives from {reference_lr:.3e} at {reference_batch}): {verdict}"
            ),
            Finding::Ramp(verdict) => write!(f, "batch schedule: {verdict}"),
            Finding::TieModel {
                noise,
                preferred,
                before,
            } => write!(
                f,
                "the race resolved the noise scale the reference batch could not: {} at batch {}, after {} samples; re-run with it, the model prefers batch {preferred} (before the race: {before}), and a tie goes to the candidate nearest it",
                noise.describe(),
                noise.big_batch,
                noise.after_samples
            ),
            Finding::NoWinner { preferred } => write!(
                f,
                "no candidate finished every seed: the model's choice {preferred} stands"
            ),
            Finding::Check {
                batch,
                runs,
                lowest,
                highest,
                seeds,
                best_lr,
                best_loss,
                raced_loss,
                noise,
                held,
                lr,
            } => write!(
                f,
                "LR check at batch {batch}: {runs} runs from {lowest:.2e} to {highest:.2e} {}; best {best_lr:.3e} ({}loss {best_loss:.4} against {raced_loss:.4} at the raced LR; seed noise {noise:.4}{}), so the LR is {lr:.3e}",
                if *seeds > 1 {
                    format!("paired with {seeds} of the race's seeds")
                } else {
                    "with the race's first seed".to_string()
                },
                if *seeds > 1 { "mean " } else { "" },
                if *held {
                    "; a move needs every seed's pair to agree, a mean that beats the noise and, upwards, two seeds where two were planned"
                } else {
                    ""
                }
            ),
            Finding::BestLrs {
                reference_lr,
                reference_batch,
                lr,
                batch,
            } => write!(
                f,
                "best LR {reference_lr:.3e} at batch {reference_batch} and {lr:.3e} at batch {batch}"
            ),
            Finding::Persistent { trials, processes } => write!(
                f,
                "the command ran {trials} trials in {processes} process(es): persistent trials (docs/command-runner.md)"
            ),
            Finding::Overruled { batch, preferred } => write!(
                f,
                "the race overruled the model: {batch} instead of its {preferred}"
            ),
            Finding::AtDataCap { cap, run: false } => write!(
                f,
                "the recommendation sits at the data cap of {cap}: the training set, not memory, limits it"
            ),
            Finding::AtDataCap { cap, run: true } => write!(
                f,
                "the recommendation sits at the run's cap of {cap}: the real run's length, not memory, limits it"
            ),
            Finding::TextbookExponent {
                kind,
                alpha,
                implied,
            } => write!(
                f,
                "the policy asks for a measured LR exponent, but the best LRs at two batches come from single-seed runs, which do not measure it{}: the textbook rule ({kind}, alpha {alpha}) is used",
                implied.map_or(String::new(), |a| format!(
                    " (their exponent {a:.2} is shown, not used)"
                ))
            ),
            Finding::Accumulation {
                target,
                wanted,
                steps,
                max_steps,
                effective,
            } => {
                if steps < wanted {
                    write!(
                        f,
                        "reaching the target batch of {target} needs {wanted} accumulation steps; the policy allows {max_steps}, so the effective batch is {effective}"
                    )
                } else {
                    write!(
                        f,
                        "{steps} gradient-accumulation steps reach the target batch of {target} ({effective} per optimizer step); accumulation adds no samples per second, only a larger effective batch"
                    )
                }
            }
            Finding::LearningRate {
                lr,
                effective,
                interval,
                rule,
            } => write!(
                f,
                "learning rate {lr:.3e} for the effective batch {effective}{}: best validation loss at batch {} was at {:.3e}; scaled with lr ~ B^{:.2} ({} rule; single-seed alpha {}, textbook {})",
                interval.map_or(String::new(), |(lo, hi)| format!(
                    " (within noise from {lo:.2e} to {hi:.2e})"
                )),
                rule.reference_batch,
                rule.reference_lr,
                rule.alpha,
                rule.kind,
                rule.measured_alpha
                    .map_or("n/a".to_string(), |a| format!("{a:.2}")),
                rule.textbook_alpha
            ),
            Finding::DataParallel {
                world,
                batch,
                global,
            } => write!(
                f,
                "data-parallel over {world} replicas: {batch} per device, {global} globally; memory is per device, throughput assumes linear scaling"
            ),
            Finding::Reused(Reused {
                phase,
                from,
                batch,
                lr,
                seed,
            }) => write!(
                f,
                "the {} run at batch {batch} (LR {lr:.3e}, seed {seed}, same length and schedule) had been made in {}: its result was reused, not rerun",
                phase.as_str(),
                from.as_str()
            ),
            Finding::LeftOut(gap) => write!(f, "left out: {gap}"),
            Finding::CutShort(phase, gap) => {
                write!(f, "{} phase cut short: {gap}", phase.as_str())
            }
        }
    }
}

/// The rationale: one sentence per finding, in the order found.
pub fn render(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_read_as_before_and_extensions_say_why() {
        let gap = Gap::NotConfirmed {
            lr: 1e-3,
            batch: 64,
            extension: true,
        };
        assert_eq!(
            Finding::LeftOut(gap).to_string(),
            "left out: LR 1.00e-3 at batch 64 was not confirmed (the best sat at an edge; no time to look further)"
        );
        assert_eq!(
            Finding::CutShort(Phase::Race, Gap::FewerSeeds { batch: 8 }).to_string(),
            "race phase cut short: batch 8 ran fewer seeds than planned"
        );
    }

    #[test]
    fn a_held_check_says_what_a_move_needs() {
        let check = |held| Finding::Check {
            batch: 256,
            runs: 6,
            lowest: 1e-4,
            highest: 1e-2,
            seeds: 2,
            best_lr: 3e-3,
            best_loss: 0.5,
            raced_loss: 0.51,
            noise: 0.02,
            held,
            lr: 1e-3,
        };
        assert!(check(true)
            .to_string()
            .contains("a move needs every seed's pair to agree"));
        assert!(!check(false).to_string().contains("a move needs"));
        assert!(check(false)
            .to_string()
            .starts_with("LR check at batch 256: 6 runs from 1.00e-4 to 1.00e-2 paired with 2"));
    }

    #[test]
    fn a_skipped_confirmation_names_the_runs_that_ruled_it_out() {
        let finding = Finding::LrSkipped {
            batch: 120,
            skipped: vec![
                SkippedLr {
                    learning_rate: 4.18e-3,
                    reason: SkipReason::Rose {
                        from: (4.18e-4, 0.6819),
                        to: (1.32e-3, 1.2872),
                    },
                },
                SkippedLr {
                    learning_rate: 1e-1,
                    reason: SkipReason::AboveDivergence { diverged: 3.16e-2 },
                },
            ],
        };
        assert_eq!(
            finding.to_string(),
            "at the reference batch 120, LR 4.18e-3 was not run: the loss had already risen from 0.6819 at 4.18e-4 to 1.2872 at 1.32e-3, on the way to it; \
             LR 1.00e-1 was not run: 3.16e-2 below it diverged (the loss is taken to have one minimum in log-LR)"
        );
    }
}
