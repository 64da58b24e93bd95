//! Turning measurements into a recommendation under a policy.

use serde::{Deserialize, Serialize};

use super::lr::{BestLr, Confirmation, LrRule, RangeTest};
use super::maxfit::MaxFit;
use super::noise::{efficiency, NoiseScale};
use super::throughput::{interpolate, plateau, CurvePoint};
use crate::policy::{Objective, Policy};
use crate::trial::Outcome;

/// The phases of a search, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    MaxFit,
    Throughput,
    LrRangeTest,
    NoiseScale,
    LrConfirmation,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::MaxFit => "max_fit",
            Phase::Throughput => "throughput",
            Phase::LrRangeTest => "lr_range_test",
            Phase::NoiseScale => "noise_scale",
            Phase::LrConfirmation => "lr_confirmation",
        }
    }
}

/// One trial of the search, as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// Precision advice with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionAdvice {
    pub measured: String,
    pub recommended: String,
    pub reason: String,
}

/// The answer batchd gives for a job, with the evidence behind each number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub job: String,
    pub policy: String,
    pub objective: Objective,
    pub device: String,
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
    /// The LR for the effective batch.
    pub learning_rate: Option<f64>,
    pub lr_rule: Option<LrRule>,
    pub warmup_steps: Option<u64>,
    pub updates_per_epoch: Option<u64>,
    pub total_updates: Option<u64>,
    pub dataset_size: Option<u64>,
    pub max_fit_batch_size: u64,
    pub max_fit: MaxFit,
    pub memory_limit_bytes: u64,
    pub memory_limit_source: String,
    pub memory_budget_bytes: u64,
    pub memory_headroom_fraction: f64,
    pub expected_peak_memory_bytes: Option<u64>,
    pub expected_samples_per_second: Option<f64>,
    pub throughput_curve: Vec<CurvePoint>,
    pub throughput_plateau_batch_size: Option<u64>,
    /// B_simple in samples, when it could be measured.
    pub gradient_noise_scale: Option<f64>,
    pub gradient_noise: Option<NoiseScale>,
    pub goodput_curve: Vec<GoodputPoint>,
    pub lr_range_tests: Vec<RangeTest>,
    pub lr_confirmations: Vec<Confirmation>,
    pub best_lrs: Vec<BestLr>,
    pub precision: PrecisionAdvice,
    pub rationale: Vec<String>,
    /// The search stopped early (time budget); the answer is the best so far.
    pub partial: bool,
    pub partial_reason: Option<String>,
    pub trials: Vec<TrialRecord>,
    pub trial_count: usize,
    pub seconds: f64,
}

impl Recommendation {
    /// The LR for any effective batch, from the fitted rule.
    pub fn learning_rate_for(&self, batch: u64) -> Option<f64> {
        self.lr_rule.as_ref().map(|rule| rule.lr_at(batch))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The per-device batch the policy chooses, and why.
pub fn choose_batch(
    policy: &Policy,
    curve: &[CurvePoint],
    noise: Option<&NoiseScale>,
    max_fit: u64,
    min_batch: u64,
    world_size: u32,
) -> (u64, String) {
    let world = u64::from(world_size.max(1));
    let round = |b: u64| {
        let m = policy.batch_multiple.max(1);
        let r = if b >= m { b / m * m } else { b };
        r.clamp(min_batch.max(1), max_fit.max(1))
    };
    let plateau_batch = plateau(curve, policy.throughput_gain_threshold);
    match (policy.objective, noise) {
        (Objective::Throughput, _) => match plateau_batch {
            Some(b) => (
                b,
                format!(
                    "throughput objective: {b} is the largest batch whose doubling still gained at least {:.0}% samples per second",
                    policy.throughput_gain_threshold * 100.0
                ),
            ),
            None => (max_fit, "throughput objective: no curve measured, so the largest batch that fits".into()),
        },
        (Objective::Goodput, Some(noise)) => {
            let goodput = goodput_curve(curve, noise.value, world_size);
            match goodput.iter().max_by(|a, b| a.goodput.total_cmp(&b.goodput)) {
                Some(best) => (
                    best.batch_size,
                    format!(
                        "goodput objective: at {} per device ({} global) throughput x statistical efficiency peaks at {:.0} samples/s of progress (efficiency {:.2} against a noise scale of {:.0})",
                        best.batch_size, best.global_batch_size, best.goodput, best.efficiency, noise.value
                    ),
                ),
                None => (max_fit, "goodput objective: no curve measured, so the largest batch that fits".into()),
            }
        }
        (Objective::Goodput, None) => {
            let b = plateau_batch.unwrap_or(max_fit);
            (
                b,
                format!("goodput objective, but the gradient noise scale could not be measured: fell back to the throughput plateau ({b})"),
            )
        }
        (Objective::Generalization, Some(noise)) => {
            let target = policy.critical_batch_fraction * noise.value / world as f64;
            let b = round(target.max(1.0) as u64);
            (
                b,
                format!(
                    "generalization objective: {:.0}% of the critical batch ({:.0}) is {:.0} globally, {b} per device: smaller batches and more updates generalize better (Keskar et al. 2016; Hoffer et al. 2017)",
                    policy.critical_batch_fraction * 100.0,
                    noise.value,
                    target * world as f64
                ),
            )
        }
        (Objective::Generalization, None) => {
            let best = curve.iter().map(|p| p.samples_per_second).fold(0.0, f64::max);
            let b = curve
                .iter()
                .filter(|p| p.samples_per_second >= 0.5 * best)
                .map(|p| p.batch_size)
                .min()
                .unwrap_or(min_batch);
            (
                round(b),
                format!("generalization objective without a noise scale: the smallest batch ({b}) that keeps half the best throughput"),
            )
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

    fn curve() -> Vec<CurvePoint> {
        [32u64, 64, 128, 256, 512, 1024]
            .iter()
            .map(|&b| CurvePoint {
                batch_size: b,
                samples_per_second: b as f64 / (0.01 + 0.0001 * b as f64),
                source: "ladder".into(),
            })
            .collect()
    }

    fn noise(value: f64) -> NoiseScale {
        NoiseScale {
            value,
            stderr: 1.0,
            big_batch: 256,
            small_batch: 32,
            measurements: 10,
            groups: 5,
            gradient_sq_norm: 1.0,
            trace_sigma: value,
        }
    }

    #[test]
    fn goodput_prefers_smaller_batches_when_noise_is_small() {
        let policies = PolicySet::builtin();
        let balanced = policies.get("balanced").unwrap();
        let (small_noise, _) = choose_batch(balanced, &curve(), Some(&noise(50.0)), 1024, 1, 1);
        let (large_noise, _) =
            choose_batch(balanced, &curve(), Some(&noise(100_000.0)), 1024, 1, 1);
        assert!(small_noise < large_noise, "{small_noise} vs {large_noise}");
        assert_eq!(large_noise, 1024);
    }

    #[test]
    fn throughput_policy_takes_the_plateau() {
        let policies = PolicySet::builtin();
        let (batch, why) = choose_batch(
            policies.get("throughput").unwrap(),
            &curve(),
            None,
            1024,
            1,
            1,
        );
        assert_eq!(batch, 1024, "{why}");
    }

    #[test]
    fn generalization_stays_below_the_critical_batch() {
        let policies = PolicySet::builtin();
        let policy = policies.get("generalization").unwrap();
        let (batch, _) = choose_batch(policy, &curve(), Some(&noise(800.0)), 1024, 1, 1);
        assert_eq!(batch, 200);
        // Data-parallel: the per-device share shrinks with the world size.
        let (batch, _) = choose_batch(policy, &curve(), Some(&noise(800.0)), 1024, 1, 4);
        assert_eq!(batch, 48);
    }
}
