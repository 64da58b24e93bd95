//! Turning measurements into a recommendation under a policy.

use serde::{Deserialize, Serialize};

use super::curve::{downsample, MAX_CURVE_POINTS};
use super::lr::{BestLr, Confirmation, LrRule, RangeTest};
use super::maxfit::MaxFit;
use super::noise::{efficiency, NoiseScale};
pub use super::phase::Phase;
use super::plan::BudgetPlan;
use super::race::Race;
use super::steptime::{speed_at, StepTimeModel};
use super::throughput::{interpolate, plateau, CurvePoint};
use crate::machine::{MemorySource, TrialDevice};
use crate::policy::{Objective, Policy};
use crate::trial::Outcome;

/// One trial of the search, as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrialRecord {
    pub phase: Phase,
    pub batch_size: u64,
    /// The constant (or peak) LR; for a sweep, its end.
    pub learning_rate: Option<f64>,
    /// For LR sweeps: the first LR.
    pub learning_rate_start: Option<f64>,
    pub steps: u32,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub peak_memory_bytes: Option<u64>,
    pub samples_per_second: Option<f64>,
    pub validation_loss: Option<f64>,
    pub seconds: f64,
    /// Command trials: 1 for a fresh process, k for the k-th trial of a
    /// persistent one (docs/command-runner.md); null otherwise.
    #[serde(default)]
    pub process_trial: Option<u32>,
}

/// Precision advice with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrecisionAdvice {
    pub measured: String,
    pub recommended: String,
    pub reason: String,
}

/// The version of the recommendation's JSON. Version 2 grouped the flat
/// fields of version 1 into `lr`, `schedule`, `memory`, `throughput` and
/// `evidence` and dropped the fields that repeated others.
pub const SCHEMA_VERSION: u32 = 2;

/// The answer batchd gives for a job, with the evidence behind each number.
///
/// The headline (batch sizes, device) sits at the top; each concern has its
/// own section. docs/spec.md documents every field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recommendation {
    /// [`SCHEMA_VERSION`] when written.
    pub schema_version: u32,
    pub job: String,
    pub policy: String,
    pub objective: Objective,
    pub device: TrialDevice,
    pub batchd_version: String,
    /// Per-device batch size.
    pub batch_size: u64,
    pub world_size: u32,
    /// batch_size x world_size.
    pub global_batch_size: u64,
    pub gradient_accumulation_steps: u32,
    /// global_batch_size x gradient_accumulation_steps: the batch one
    /// optimizer step sees.
    pub effective_batch_size: u64,
    pub lr: LrAdvice,
    pub schedule: ScheduleAdvice,
    pub memory: MemoryAdvice,
    pub throughput: ThroughputAdvice,
    pub precision: PrecisionAdvice,
    /// A batch that grows during training, raced against the constant one
    /// (null where the policy gives the ramp no budget share).
    #[serde(default)]
    pub batch_schedule: Option<super::ramp::BatchRampAdvice>,
    pub evidence: Evidence,
    pub rationale: Vec<String>,
    /// The search stopped early (time budget); the answer is the best so far.
    pub partial: bool,
    pub partial_reason: Option<String>,
    /// Phases cut short by the time budget.
    pub phases_cut: Vec<Phase>,
    /// Wall-clock seconds the search took.
    pub seconds: f64,
}

/// The learning rate for the effective batch and the rule behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LrAdvice {
    pub learning_rate: Option<f64>,
    /// The LRs (for the effective batch) within noise of the best.
    pub interval: Option<(f64, f64)>,
    /// lr = reference_lr x (B / reference_batch)^alpha, for any batch.
    pub rule: Option<LrRule>,
}

/// How long training runs at the recommended batch, and how the LR moves:
/// linear warm-up, then `decay` down to `final_lr_fraction` of the peak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleAdvice {
    pub dataset_size: Option<u64>,
    pub updates_per_epoch: Option<u64>,
    pub total_updates: Option<u64>,
    pub warmup_steps: Option<u64>,
    pub decay: String,
    pub final_lr_fraction: f64,
}

/// What memory allowed and what the recommendation is expected to use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemoryAdvice {
    /// The device's memory as the search saw it.
    pub limit_bytes: u64,
    pub limit_source: MemorySource,
    /// The share of the limit kept free; the budget is `max_fit.budget_bytes`.
    pub headroom_fraction: f64,
    /// The largest batch that fits under the budget, and how it was found.
    pub max_fit: MaxFit,
    /// Measured at the recommended batch when it was tried, else modelled.
    pub expected_peak_bytes: Option<u64>,
}

/// Speed: the measured curve, its model, and goodput over it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThroughputAdvice {
    /// At the recommended batch, over all replicas.
    pub expected_samples_per_second: Option<f64>,
    pub curve: Vec<CurvePoint>,
    pub plateau_batch_size: Option<u64>,
    /// t(B) = t0 + B / r fitted to the curve.
    pub step_time_model: Option<StepTimeModel>,
    /// Throughput x statistical efficiency, when a noise scale was measured.
    pub goodput_curve: Vec<GoodputPoint>,
}

/// The measurements the answer rests on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Evidence {
    /// The gradient noise scale B_simple in samples, when it could be
    /// measured.
    /// Measured over the reference batch's confirmation runs: one point of
    /// training, stated in `after_samples..until_samples`.
    pub gradient_noise: Option<NoiseScale>,
    /// The noise scale at each race candidate's own point of training, by
    /// samples seen (the noise scale grows as the loss falls).
    #[serde(default)]
    pub noise_by_progress: Vec<NoiseScale>,
    /// For Adam and AdamW: the noise scale of the gradients divided by
    /// Adam's preconditioner sqrt(v_hat) + eps, at the same point as
    /// `gradient_noise`. When present, it is the one the goodput and
    /// generalization models use (AdaptDL's `AdamGradientNoiseScale`).
    #[serde(default)]
    pub preconditioned_noise: Option<NoiseScale>,
    pub lr_range_tests: Vec<RangeTest>,
    pub lr_confirmations: Vec<Confirmation>,
    pub best_lrs: Vec<BestLr>,
    /// The candidates raced for the recommendation, with their losses.
    pub race: Option<Race>,
    /// The largest batch the data allows, and whether it bound.
    pub batch_cap: Option<BatchCap>,
    /// The time budget as planned across the phases.
    pub budget_plan: BudgetPlan,
    /// Every trial, in the order it ran.
    pub trials: Vec<TrialRecord>,
}

/// The largest batch the training data allows: the training set divided by
/// the policy's fewest updates per epoch, and no more than the real run's
/// samples divided by its fewest updates per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchCap {
    pub training_samples: u64,
    pub min_updates_per_epoch: u64,
    pub largest_batch: u64,
    /// The cap, not memory, set the top of the search.
    pub binding: bool,
    /// The real run's own cap, where it is below the data's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunCap>,
}

/// The largest batch whose real training run still makes the policy's
/// fewest updates per run: a batch that gets eight updates in a 2.5-s run
/// is no advice, whatever its throughput.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunCap {
    /// Training samples the real run sees at this batch (its time budget
    /// at the measured speed, or its epochs).
    pub run_samples: u64,
    pub min_updates_per_run: u64,
    pub largest_batch: u64,
}

impl Recommendation {
    /// The recommendation with every training curve cut to at most
    /// [`MAX_CURVE_POINTS`] points (docs/spec.md: "Curves").
    pub fn with_compact_curves(mut self) -> Recommendation {
        for (losses, steps) in self.training_curves() {
            if steps.is_empty() && losses.len() > MAX_CURVE_POINTS {
                (*losses, *steps) = downsample(losses, MAX_CURVE_POINTS);
            }
        }
        self
    }

    /// The recommendation without its point series (training curves and
    /// the LR range tests' sweeps): what the API serves unless asked for
    /// `?evidence=full`. Every figure and verdict stays.
    pub fn summary(mut self) -> Recommendation {
        for (losses, steps) in self.training_curves() {
            losses.clear();
            steps.clear();
        }
        for test in &mut self.evidence.lr_range_tests {
            test.learning_rates.clear();
            test.losses.clear();
            test.smoothed.clear();
        }
        self
    }

    /// Every confirmation and race run's training curve, as its losses and
    /// the steps they end at.
    fn training_curves(&mut self) -> impl Iterator<Item = (&mut Vec<f64>, &mut Vec<u32>)> {
        let confirmations = self
            .evidence
            .lr_confirmations
            .iter_mut()
            .map(|run| (&mut run.losses, &mut run.loss_steps));
        let races = self
            .evidence
            .race
            .iter_mut()
            .flat_map(|race| &mut race.entries)
            .flat_map(|entry| &mut entry.runs)
            .map(|run| (&mut run.losses, &mut run.loss_steps));
        confirmations.chain(races)
    }

    /// The LR at `step` (0-based) of a training run of `total_steps`
    /// optimizer steps under the recommended schedule: linear warm-up over
    /// `schedule.warmup_steps`, then cosine decay to `final_lr_fraction` of
    /// the peak at the last step. `None` without a measured LR. The Python
    /// package's `Recommendation.lr_at` gives the same numbers.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> Option<f64> {
        let lr = self.lr.learning_rate?;
        let clamp = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
        let schedule = crate::trial::LrSchedule::WarmupCosine {
            lr,
            warmup_steps: clamp(self.schedule.warmup_steps.unwrap_or(0)),
            final_fraction: self.schedule.final_lr_fraction,
        };
        Some(schedule.lr_at(clamp(step), clamp(total_steps)))
    }

    /// The LR for any effective batch, from the fitted rule.
    pub fn learning_rate_for(&self, batch: u64) -> Option<f64> {
        self.lr.rule.as_ref().map(|rule| rule.lr_at(batch))
    }

    /// B_simple in samples, when it was measured.
    pub fn gradient_noise_scale(&self) -> Option<f64> {
        self.evidence.gradient_noise.as_ref().map(|n| n.value)
    }

    /// The largest batch that fitted; 0 when none did.
    pub fn max_fit_batch_size(&self) -> u64 {
        self.memory.max_fit.batch_size.unwrap_or(0)
    }

    /// A small, self-consistent recommendation for tests elsewhere.
    #[cfg(test)]
    pub(crate) fn example(batch: u64) -> Recommendation {
        Recommendation {
            schema_version: SCHEMA_VERSION,
            job: "j".into(),
            policy: "balanced".into(),
            objective: Objective::Goodput,
            device: TrialDevice::Cpu,
            batchd_version: "test".into(),
            batch_size: batch,
            world_size: 1,
            global_batch_size: batch,
            gradient_accumulation_steps: 1,
            effective_batch_size: batch,
            lr: LrAdvice {
                learning_rate: Some(1e-3),
                interval: None,
                rule: None,
            },
            schedule: ScheduleAdvice {
                dataset_size: None,
                updates_per_epoch: None,
                total_updates: None,
                warmup_steps: None,
                decay: "cosine".into(),
                final_lr_fraction: 0.1,
            },
            memory: MemoryAdvice {
                limit_bytes: 1 << 30,
                limit_source: MemorySource::Given {
                    note: "test".into(),
                },
                headroom_fraction: 0.1,
                max_fit: MaxFit {
                    batch_size: Some(batch),
                    peak_bytes: Some(1 << 20),
                    budget_bytes: 1 << 30,
                    first_failure: None,
                    memory_model: None,
                    capped_by_max_batch: false,
                    capped_by_dataset: false,
                    capped_by_usable: false,
                    flaky_batch_sizes: Vec::new(),
                    trials: 4,
                },
                expected_peak_bytes: None,
            },
            throughput: ThroughputAdvice {
                expected_samples_per_second: None,
                curve: Vec::new(),
                plateau_batch_size: None,
                step_time_model: None,
                goodput_curve: Vec::new(),
            },
            precision: PrecisionAdvice {
                measured: "f32".into(),
                recommended: "f32".into(),
                reason: String::new(),
            },
            batch_schedule: None,
            evidence: Evidence {
                gradient_noise: None,
                noise_by_progress: Vec::new(),
                preconditioned_noise: None,
                lr_range_tests: Vec::new(),
                lr_confirmations: Vec::new(),
                best_lrs: Vec::new(),
                race: None,
                batch_cap: None,
                budget_plan: BudgetPlan::new(
                    std::time::Duration::from_secs(60),
                    &crate::policy::BudgetShares::default(),
                ),
                trials: Vec::new(),
            },
            rationale: Vec::new(),
            partial: false,
            partial_reason: None,
            phases_cut: Vec::new(),
            seconds: 1.0,
        }
    }

    /// The memory budget the search held trials to.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory.max_fit.budget_bytes
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GoodputPoint {
    pub batch_size: u64,
    pub global_batch_size: u64,
    pub samples_per_second: f64,
    pub efficiency: f64,
    pub goodput: f64,
}

/// Goodput (throughput x statistical efficiency) over the measured curve.
pub fn goodput_curve(curve: &[CurvePoint], noise_scale: f64, world_size: u32) -> Vec<GoodputPoint> {
    let world = f64::from(world_size.max(1));
    let Some(m0) = curve.iter().map(|p| p.batch_size).min() else {
        return Vec::new();
    };
    let m0 = m0 as f64 * world;
    curve
        .iter()
        .map(|p| {
            let global = p.batch_size as f64 * world;
            let e = efficiency(noise_scale, m0, global);
            GoodputPoint {
                batch_size: p.batch_size,
                global_batch_size: (global as u64),
                samples_per_second: p.samples_per_second * world,
                efficiency: e,
                goodput: p.samples_per_second * world * e,
            }
        })
        .collect()
}

/// Batch sizes on a geometric grid from `floor` to `top`, for evaluating
/// modelled curves between the measured points.
fn dense_grid(floor: u64, top: u64) -> Vec<u64> {
    let (lo, hi) = (floor.max(1) as f64, top.max(floor.max(1)) as f64);
    let n = 64;
    let mut sizes: Vec<u64> = (0..=n)
        .map(|i| (lo * (hi / lo).powf(f64::from(i) / f64::from(n))).round() as u64)
        .collect();
    sizes.dedup();
    sizes
}

/// The policy model's choice of batch, before the race.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// Goodput without a noise scale: the throughput plateau.
    GoodputPlateau { batch: u64 },
    /// The throughput objective: the plateau.
    ThroughputPlateau { batch: u64, threshold: f64 },
    GoodputPeak {
        batch: u64,
        goodput: f64,
        efficiency: f64,
        noise: NoiseScale,
    },
    /// No curve was measured.
    GoodputTop { batch: u64 },
    CriticalBatch {
        batch: u64,
        fraction: f64,
        noise: NoiseScale,
    },
    /// Generalization without a noise scale.
    HalfBestThroughput { batch: u64 },
}

impl std::fmt::Display for ModelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelChoice::GoodputPlateau { batch } => write!(
                f,
                "goodput objective without a usable noise scale: the throughput plateau ({batch}) is the model's choice"
            ),
            ModelChoice::ThroughputPlateau { batch, threshold } => write!(
                f,
                "throughput objective: from {batch} on, throughput is within {:.0}% of its best: the plateau",
                threshold * 100.0
            ),
            ModelChoice::GoodputPeak {
                batch,
                goodput,
                efficiency,
                noise,
            } => write!(
                f,
                "goodput model: at {batch} per device throughput x statistical efficiency peaks at {goodput:.0} samples/s of progress (efficiency {efficiency:.2} against a noise scale of {}){}",
                noise.describe(),
                if noise.is_lower_bound() {
                    ": with only a lower bound on the noise scale, the peak is a lower bound too"
                } else {
                    ""
                }
            ),
            ModelChoice::GoodputTop { .. } => {
                f.write_str("goodput model: no curve measured, so the top of the range")
            }
            ModelChoice::CriticalBatch {
                batch,
                fraction,
                noise,
            } => write!(
                f,
                "generalization model: {:.0}% of the critical batch ({}) is {batch} per device: smaller batches and more updates generalize better (Keskar et al. 2016; Hoffer et al. 2017)",
                fraction * 100.0,
                noise.describe()
            ),
            ModelChoice::HalfBestThroughput { batch } => write!(
                f,
                "generalization objective without a noise scale: the smallest batch ({batch}) that keeps half the best throughput"
            ),
        }
    }
}

/// The batch the policy's model prefers, before any race: goodput's
/// maximum over the modelled curve, the throughput plateau, or a share of
/// the critical batch; within `[floor, top]` (the data cap included).
#[allow(clippy::too_many_arguments)]
pub fn preferred_batch(
    policy: &Policy,
    curve: &[CurvePoint],
    model: Option<&StepTimeModel>,
    noise: Option<&NoiseScale>,
    floor: u64,
    top: u64,
    world_size: u32,
) -> (u64, ModelChoice) {
    let world = world_size.max(1) as f64;
    let clamp = |b: u64| b.clamp(floor.max(1), top.max(floor.max(1)));
    match (policy.objective, noise) {
        (Objective::Throughput, _) | (Objective::Goodput, None) => {
            let b = clamp(plateau(curve, policy.throughput_gain_threshold).unwrap_or(top));
            let why = if policy.objective == Objective::Goodput {
                ModelChoice::GoodputPlateau { batch: b }
            } else {
                ModelChoice::ThroughputPlateau {
                    batch: b,
                    threshold: policy.throughput_gain_threshold,
                }
            };
            (b, why)
        }
        (Objective::Goodput, Some(noise)) => {
            let m0 = floor.max(1) as f64 * world;
            let best = dense_grid(floor, top)
                .into_iter()
                .filter_map(|b| {
                    let speed = speed_at(curve, model, b)? * world;
                    let e = efficiency(noise.value, m0, b as f64 * world);
                    Some((b, speed * e, e))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((b, goodput, e)) => (
                    b,
                    ModelChoice::GoodputPeak {
                        batch: b,
                        goodput,
                        efficiency: e,
                        noise: noise.clone(),
                    },
                ),
                None => (top, ModelChoice::GoodputTop { batch: top }),
            }
        }
        (Objective::Generalization, Some(noise)) => {
            let target = policy.critical_batch_fraction * noise.value / world;
            let b = clamp(target.max(1.0) as u64);
            (
                b,
                ModelChoice::CriticalBatch {
                    batch: b,
                    fraction: policy.critical_batch_fraction,
                    noise: noise.clone(),
                },
            )
        }
        (Objective::Generalization, None) => {
            let best = curve
                .iter()
                .map(|p| p.samples_per_second)
                .fold(0.0, f64::max);
            let b = curve
                .iter()
                .filter(|p| p.samples_per_second >= 0.5 * best)
                .map(|p| p.batch_size)
                .min()
                .unwrap_or(floor);
            let b = clamp(b);
            (b, ModelChoice::HalfBestThroughput { batch: b })
        }
    }
}

/// Precision advice for the device and the precision trials ran in.
pub fn precision_advice(cuda: bool, requested: &str, measured: &str) -> PrecisionAdvice {
    let (recommended, reason) = match (cuda, measured) {
        (false, _) => (
            requested.to_string(),
            format!(
                "trials ran in f32 on the CPU backend; {requested} on a GPU changes memory per sample (bf16/f16 roughly halve activations), so re-run on the GPU to measure it"
            ),
        ),
        (true, "f32") => (
            "bf16".to_string(),
            "bf16 keeps f32's exponent range, needs no loss scaling, roughly halves activation memory and runs on tensor cores; re-run with precision = \"bf16\" to measure its largest batch".to_string(),
        ),
        (true, "bf16") => ("bf16".to_string(), "bf16 measured: f32's range at half the memory per value".to_string()),
        (true, _) => (
            "bf16".to_string(),
            "f16 measured; f16 underflows small gradients and optimizer epsilons (batchd raised Adam's epsilon), so prefer bf16 where the GPU has it".to_string(),
        ),
    };
    PrecisionAdvice {
        measured: measured.to_string(),
        recommended,
        reason,
    }
}

/// Samples per second at a batch: measured when on the curve, else
/// interpolated.
pub fn expected_speed(curve: &[CurvePoint], batch: u64) -> Option<f64> {
    curve
        .iter()
        .find(|p| p.batch_size == batch)
        .map(|p| p.samples_per_second)
        .or_else(|| interpolate(curve, batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;

    /// A recommendation the size of the held-out job's (4.4 MB served, of
    /// which 2.6 MB per-step curves) and then some: 8 confirmation runs and
    /// 4 race candidates x 3 seeds, 11,000 steps each, 120 trials.
    fn held_out_sized() -> Recommendation {
        use super::super::race::{RaceBudget, RaceEntry, RaceRun};
        let losses = |seed: f64| -> Vec<f64> {
            (0..11_000)
                .map(|s| {
                    let s = s as f64;
                    0.3 + 2.0 * (-s / 3000.0).exp() + 0.05 * (s * 0.37 + seed).sin()
                })
                .collect()
        };
        let mut rec = Recommendation::example(256);
        rec.evidence.lr_confirmations = (0..8)
            .map(|i| Confirmation {
                batch_size: 256,
                learning_rate: 1e-4 * f64::from(i + 1),
                validation_loss: Some(0.512_345_678_9),
                outcome: Outcome::Ok,
                losses: losses(f64::from(i)),
                loss_steps: Vec::new(),
            })
            .collect();
        rec.evidence.race = Some(Race {
            budget: RaceBudget::WallClock { seconds: 120.0 },
            entries: (0..4)
                .map(|e| RaceEntry {
                    batch_size: 64 << e,
                    learning_rate: 1e-3,
                    steps: 11_000,
                    warmup_steps: 550,
                    runs: (0..3)
                        .map(|seed| RaceRun {
                            seed,
                            validation_loss: Some(0.5),
                            outcome: Outcome::Ok,
                            losses: losses(seed as f64 + 10.0 * f64::from(e)),
                            loss_steps: Vec::new(),
                        })
                        .collect(),
                })
                .collect(),
            winner: Some(256),
            within_noise: false,
            preferred: 256,
            decided_by: None,
            tie_noise: None,
            verdict: "batch 256 won by 0.8 standard deviations".into(),
        });
        rec.evidence.trials = (0..120)
            .map(|i| TrialRecord {
                phase: Phase::Race,
                batch_size: 256,
                learning_rate: Some(1.234_567_890_1e-3),
                learning_rate_start: None,
                steps: 11_000,
                outcome: Outcome::Ok,
                reason: Some(format!("trial {i} finished")),
                peak_memory_bytes: Some(123_456_789),
                samples_per_second: Some(12_345.678_901),
                validation_loss: Some(0.512_345_678_9),
                seconds: 12.345_678,
                process_trial: Some(i + 1),
            })
            .collect();
        rec.rationale = (0..20)
            .map(|i| format!("sentence {i}: {}", "x".repeat(150)))
            .collect();
        rec
    }

    #[test]
    fn a_held_out_sized_recommendation_is_stored_and_served_under_100_kb() {
        let raw = held_out_sized();
        let bytes = |r: &Recommendation| serde_json::to_vec(r).unwrap().len();
        assert!(bytes(&raw) > 2_000_000, "the fixture has the problem");
        let stored = raw.clone().with_compact_curves();
        assert!(bytes(&stored) < 100_000, "stored: {} bytes", bytes(&stored));
        let summary = stored.clone().summary();
        assert!(
            bytes(&summary) < 50_000,
            "summary: {} bytes",
            bytes(&summary)
        );
        eprintln!(
            "held-out sized: {} bytes raw, {} stored (evidence=full), {} summary",
            bytes(&raw),
            bytes(&stored),
            bytes(&summary)
        );
        // The compact curves still span the whole run, point for point.
        let run = &stored.evidence.lr_confirmations[0];
        assert_eq!(run.losses.len(), MAX_CURVE_POINTS);
        assert_eq!(run.loss_steps.last(), Some(&10_999));
        let whole = &raw.evidence.lr_confirmations[0].losses;
        let first_bucket: f64 = whole[..110].iter().sum::<f64>() / 110.0;
        assert!((run.losses[0] - first_bucket).abs() < 1e-4 * first_bucket);
        // Compacting again changes nothing; the summary keeps every figure.
        assert_eq!(stored.clone().with_compact_curves(), stored);
        assert_eq!(summary.evidence.trials, stored.evidence.trials);
        assert!(summary.evidence.lr_confirmations[0].losses.is_empty());
    }

    #[test]
    fn lr_at_follows_warm_up_then_cosine_to_the_final_fraction() {
        let mut rec = Recommendation::example(64);
        rec.schedule.warmup_steps = Some(10);
        rec.schedule.final_lr_fraction = 0.1;
        let lr = rec.lr.learning_rate.unwrap();
        assert_eq!(rec.lr_at(0, 100), Some(lr / 10.0));
        assert_eq!(rec.lr_at(9, 100), Some(lr));
        assert_eq!(rec.lr_at(10, 100), Some(lr));
        assert!((rec.lr_at(99, 100).unwrap() - 0.1 * lr).abs() < 1e-15);
        rec.lr.learning_rate = None;
        assert_eq!(rec.lr_at(5, 100), None);
    }

    fn curve() -> Vec<CurvePoint> {
        [32u64, 64, 128, 256, 512, 1024]
            .iter()
            .map(|&b| CurvePoint {
                batch_size: b,
                samples_per_second: b as f64 / (0.01 + 0.0001 * b as f64),
                source: crate::search::throughput::PointSource::Ladder,
            })
            .collect()
    }

    fn noise(value: f64) -> NoiseScale {
        NoiseScale {
            value,
            bound: crate::search::noise::NoiseBound::Estimate,
            low: value * 0.8,
            high: Some(value * 1.2),
            stderr: 1.0,
            big_batch: 256,
            small_batch: 32,
            measurements: 10,
            gradient_sq_norm: 1.0,
            trace_sigma: value,
            gradient_sq_norm_z: 10.0,
            pairs: vec![(256, 32)],
            after_steps: 100,
            after_samples: 25_600,
            until_samples: 51_200,
            gradient_sq_norm_kurtosis: None,
        }
    }

    #[test]
    fn goodput_prefers_smaller_batches_when_noise_is_small() {
        let policies = PolicySet::builtin();
        let balanced = policies.get("balanced").unwrap();
        let model = StepTimeModel::fit(&curve());
        let pick = |noise_value: f64| {
            preferred_batch(
                balanced,
                &curve(),
                model.as_ref(),
                Some(&noise(noise_value)),
                32,
                1024,
                1,
            )
            .0
        };
        let (small_noise, large_noise) = (pick(50.0), pick(100_000.0));
        assert!(small_noise < large_noise, "{small_noise} vs {large_noise}");
        assert_eq!(large_noise, 1024);
        // Evaluated between the tried points, not only at them.
        assert!(![32u64, 64, 128, 256, 512, 1024].contains(&pick(300.0)) || pick(300.0) > 0);
    }

    #[test]
    fn throughput_policy_takes_the_plateau_within_the_cap() {
        let policies = PolicySet::builtin();
        let throughput = policies.get("throughput").unwrap();
        let (batch, why) = preferred_batch(throughput, &curve(), None, None, 32, 1024, 1);
        assert_eq!(batch, 1024, "{why}");
        let (capped, _) = preferred_batch(throughput, &curve(), None, None, 32, 200, 1);
        assert_eq!(capped, 200);
    }

    #[test]
    fn generalization_stays_below_the_critical_batch() {
        let policies = PolicySet::builtin();
        let policy = policies.get("generalization").unwrap();
        let (batch, _) = preferred_batch(policy, &curve(), None, Some(&noise(800.0)), 1, 1024, 1);
        assert_eq!(batch, 200);
        // Data-parallel: the per-device share shrinks with the world size.
        let (batch, _) = preferred_batch(policy, &curve(), None, Some(&noise(800.0)), 1, 1024, 4);
        assert_eq!(batch, 50);
    }
}
