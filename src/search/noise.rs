//! The gradient noise scale, B_simple = tr(Sigma) / |G|^2, from squared
//! gradient norms measured at two batch sizes (McCandlish et al. 2018,
//! "An Empirical Model of Large-Batch Training", appendix A).
//!
//! With |G_B|^2 the squared norm of a gradient averaged over B samples,
//! E|G_B|^2 = |G|^2 + tr(Sigma)/B. Two batch sizes b < B give unbiased
//! estimates
//!   |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
//!   tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)
//! each noisy; the paper averages numerator and denominator separately
//! before dividing, which is what this does, over groups of measurements so
//! the spread between groups gives an uncertainty.

use serde::{Deserialize, Serialize};

use crate::trial::GradNoiseSample;

/// Two-sided confidence of the interval (one-sided 95% for a lower bound).
pub const CONFIDENCE: f64 = 0.9;
/// The normal quantile for [`CONFIDENCE`].
const Z: f64 = 1.6449;

/// Whether the measurements pin the noise scale down or only bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoiseBound {
    /// |G|^2 is clearly above zero: `value` is the estimate, `low..high`
    /// its Fieller interval.
    #[default]
    Estimate,
    /// |G|^2 is not clearly above zero, so the ratio has no upper bound:
    /// `value` is a lower bound (late in training on an easy task, or with
    /// batches far below the noise scale).
    LowerBound,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoiseScale {
    /// B_simple, in samples: the estimate, or with `bound = lower_bound` the
    /// largest value the measurements rule out.
    pub value: f64,
    #[serde(default)]
    pub bound: NoiseBound,
    /// The [`CONFIDENCE`] interval: Fieller's for a ratio of two means, over
    /// the measured steps (a jackknife of the ratio understates its spread
    /// exactly when |G|^2 is near zero).
    #[serde(default)]
    pub low: f64,
    /// `None`: unbounded above.
    #[serde(default)]
    pub high: Option<f64>,
    /// The standard error of the ratio by the delta method; infinite (null)
    /// for a lower bound.
    #[serde(with = "crate::trial::json_float")]
    #[schema(value_type = Option<f64>)]
    pub stderr: f64,
    pub big_batch: u64,
    pub small_batch: u64,
    /// Measured steps pooled (each one pair of norms).
    pub measurements: usize,
    /// Estimated |G|^2 and tr(Sigma), averaged over all measurements.
    pub gradient_sq_norm: f64,
    pub trace_sigma: f64,
    /// |G|^2 in standard errors: below the z of [`CONFIDENCE`] (one-sided)
    /// the value is only a lower bound.
    #[serde(default, with = "crate::trial::json_float")]
    #[schema(value_type = Option<f64>)]
    pub gradient_sq_norm_z: f64,
    /// Every (big, small) batch pair the estimate pools.
    #[serde(default)]
    pub pairs: Vec<(u64, u64)>,
    /// Training steps taken before the measurements began (0: at
    /// initialization, where the noise scale is at its smallest).
    #[serde(default)]
    pub after_steps: u32,
    /// Training samples seen before the measurements began: the point of
    /// training the value belongs to (the noise scale grows as the loss
    /// falls).
    #[serde(default)]
    pub after_samples: u64,
    /// Training samples seen at the last measurement.
    #[serde(default)]
    pub until_samples: u64,
    /// The kurtosis of the per-step |G|^2 estimates (3 for normal ones),
    /// where enough steps were measured to tell; above
    /// [`HEAVY_TAIL_KURTOSIS`] no interval is trusted and the value is a
    /// lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_sq_norm_kurtosis: Option<f64>,
}

/// Per-step |G|^2 estimates with a kurtosis above this are too heavy-tailed
/// for Fieller's normal approximation. On the digits MLP (SGD with
/// Nesterov, batch 24 against 3) dense runs measured kurtosis 376-1,346,
/// the top 1% of steps carrying 91-97% of the spread (rare large negative
/// estimates); 400-570-step subsamples of them measured 28-457, and their
/// 90% intervals held the other nine tenths' mean 35 times in 50. The
/// quick-start job (AdamW): 3.5-3.9 whole, 3-5 in subsamples, covered 27
/// in 30 (README, "Round 12").
pub const HEAVY_TAIL_KURTOSIS: f64 = 20.0;

/// Steps below which a sample kurtosis says too little to act on.
const MIN_STEPS_FOR_KURTOSIS: usize = 30;

/// An interval wider than this factor (high / low) cannot separate candidate
/// batches a factor of two apart: the race decides over a wider spread.
pub const DECISIVE_RATIO: f64 = 4.0;

impl NoiseScale {
    /// Whether the estimate is precise enough to decide between batches.
    pub fn is_decisive(&self) -> bool {
        self.bound == NoiseBound::Estimate
            && self
                .high
                .is_some_and(|high| self.low > 0.0 && high <= DECISIVE_RATIO * self.low)
    }

    pub fn is_lower_bound(&self) -> bool {
        self.bound == NoiseBound::LowerBound
    }

    /// Whether the per-step |G|^2 estimates were too heavy-tailed for an
    /// interval ([`HEAVY_TAIL_KURTOSIS`]).
    pub fn is_heavy_tailed(&self) -> bool {
        self.gradient_sq_norm_kurtosis
            .is_some_and(|k| k > HEAVY_TAIL_KURTOSIS)
    }

    /// The value with its interval, in words.
    pub fn describe(&self) -> String {
        match (self.bound, self.high) {
            (NoiseBound::Estimate, Some(high)) => format!(
                "{:.0} ({:.0}% interval {:.0}..{:.0})",
                self.value,
                CONFIDENCE * 100.0,
                self.low,
                high
            ),
            _ if self.is_heavy_tailed() => format!(
                "at least {:.0} (the per-step |G|^2 estimates are heavy-tailed, kurtosis {:.0}, so no interval is trusted)",
                self.value,
                self.gradient_sq_norm_kurtosis.unwrap_or(f64::NAN)
            ),
            _ => format!(
                "at least {:.0} (|G|^2 not clearly above zero, so no upper bound)",
                self.value
            ),
        }
    }
}

/// One measured step's unbiased estimates.
#[derive(Debug, Clone, Copy)]
struct Step {
    g2: f64,
    trace: f64,
    /// Weight of the |G|^2 estimate: |G_B|^2 scatters by about tr(Sigma)/B,
    /// so a pair with a large big batch pins |G|^2 down far better than one
    /// of 8 and 4 (inverse-variance weights B^2).
    weight: f64,
}

fn steps_of(sample: &GradNoiseSample) -> Vec<Step> {
    let (b_big, b_small) = (sample.big_batch as f64, sample.small_batch as f64);
    if b_small >= b_big || b_small <= 0.0 {
        return Vec::new();
    }
    sample
        .big_sq_norms
        .iter()
        .zip(&sample.small_sq_norms)
        .filter(|(b, s)| b.is_finite() && s.is_finite())
        .map(|(big, small)| Step {
            g2: (b_big * big - b_small * small) / (b_big - b_small),
            trace: (small - big) / (1.0 / b_small - 1.0 / b_big),
            weight: b_big * b_big,
        })
        .collect()
}

/// Means, variances of the means and their covariance over the steps.
struct Moments {
    g2: f64,
    trace: f64,
    var_g2: f64,
    var_trace: f64,
    cov: f64,
}

/// The sample kurtosis of the steps' |G|^2 estimates; `None` with fewer
/// than [`MIN_STEPS_FOR_KURTOSIS`] steps or no spread.
fn g2_kurtosis(steps: &[Step]) -> Option<f64> {
    if steps.len() < MIN_STEPS_FOR_KURTOSIS {
        return None;
    }
    let n = steps.len() as f64;
    let mean = steps.iter().map(|s| s.g2).sum::<f64>() / n;
    let m2 = steps.iter().map(|s| (s.g2 - mean).powi(2)).sum::<f64>() / n;
    let m4 = steps.iter().map(|s| (s.g2 - mean).powi(4)).sum::<f64>() / n;
    (m2 > 0.0).then(|| m4 / (m2 * m2)).filter(|k| k.is_finite())
}

fn moments(steps: &[Step]) -> Option<Moments> {
    let n = steps.len() as f64;
    if steps.len() < 2 {
        return None;
    }
    let w: f64 = steps.iter().map(|s| s.weight).sum();
    let g2 = steps.iter().map(|s| s.weight * s.g2).sum::<f64>() / w;
    let trace = steps.iter().map(|s| s.trace).sum::<f64>() / n;
    let bessel = n / (n - 1.0);
    let var_g2 = bessel
        * steps
            .iter()
            .map(|s| (s.weight * (s.g2 - g2)).powi(2))
            .sum::<f64>()
        / (w * w);
    let var_trace = bessel * steps.iter().map(|s| (s.trace - trace).powi(2)).sum::<f64>() / (n * n);
    let cov = bessel
        * steps
            .iter()
            .map(|s| s.weight * (s.g2 - g2) * (s.trace - trace))
            .sum::<f64>()
        / (w * n);
    Some(Moments {
        g2,
        trace,
        var_g2,
        var_trace,
        cov,
    })
}

/// B_simple pooled over the measured steps of `samples`: the ratio of the
/// mean tr(Sigma) to the mean |G|^2 (the paper's averaging, never a mean of
/// ratios), with Fieller's interval. When |G|^2 is not clearly above zero,
/// only a lower bound: tr(Sigma)'s lower confidence limit over |G|^2's upper
/// one. `None` when tr(Sigma) itself is not clearly above zero (no signal),
/// or with fewer than two measured steps.
///
/// Pool only samples taken at one point of training (`after_samples`
/// names it): the noise scale grows as the loss falls, so pooling early and
/// late measurements mixes two different quantities.
pub fn pooled_noise_scale(
    samples: &[GradNoiseSample],
    after_steps: u32,
    after_samples: u64,
    until_samples: u64,
) -> Option<NoiseScale> {
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    for sample in samples {
        let measured = steps_of(sample);
        if measured.is_empty() {
            continue;
        }
        steps.extend(measured);
        if !pairs.contains(&(sample.big_batch, sample.small_batch)) {
            pairs.push((sample.big_batch, sample.small_batch));
        }
    }
    let m = moments(&steps)?;
    let (sd_g2, sd_trace) = (m.var_g2.sqrt(), m.var_trace.sqrt());
    if m.trace - Z * sd_trace <= 0.0 {
        // tr(Sigma) is not clearly above zero: no estimate beats a wrong one.
        return None;
    }
    let z_g2 = if sd_g2 > 0.0 {
        m.g2 / sd_g2
    } else if m.g2 > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    // Fieller: the ratios R with (T - R G)^2 <= z^2 Var(T - R G), i.e.
    // a R^2 - 2 b R + c <= 0. With a > 0 (|G|^2 clearly above zero) that
    // is a bounded interval around T/G.
    let a = m.g2 * m.g2 - Z * Z * m.var_g2;
    let b = m.trace * m.g2 - Z * Z * m.cov;
    let c = m.trace * m.trace - Z * Z * m.var_trace;
    let disc = b * b - a * c;
    let (pairs_big, pairs_small) = pairs.iter().copied().max().unwrap_or((0, 0));
    let base = NoiseScale {
        value: 0.0,
        bound: NoiseBound::Estimate,
        low: 0.0,
        high: None,
        stderr: f64::INFINITY,
        big_batch: pairs_big,
        small_batch: pairs_small,
        measurements: steps.len(),
        gradient_sq_norm: m.g2,
        trace_sigma: m.trace,
        gradient_sq_norm_z: z_g2,
        pairs,
        after_steps,
        after_samples,
        until_samples,
        gradient_sq_norm_kurtosis: g2_kurtosis(&steps),
    };
    // Heavy tails: the steps' spread understates the mean's error (a
    // sample that missed the rare large steps looks precise), so only the
    // bound below is stated.
    if m.g2 > 0.0 && a > 0.0 && disc >= 0.0 && !base.is_heavy_tailed() {
        let value = m.trace / m.g2;
        let low = ((b - disc.sqrt()) / a).max(0.0);
        let high = (b + disc.sqrt()) / a;
        // Delta method, for the JSON's standard error.
        let rel = m.var_trace / (m.trace * m.trace) + m.var_g2 / (m.g2 * m.g2)
            - 2.0 * m.cov / (m.trace * m.g2);
        return Some(NoiseScale {
            value,
            low,
            high: Some(high),
            stderr: value * rel.max(0.0).sqrt(),
            ..base
        });
    }
    // |G|^2 not clearly above zero: the smallest ratio the data allow.
    // Its upper limit is taken from max(|G|^2, 0): |G|^2 cannot be
    // negative, and a negative draw must not shrink the limit and inflate
    // the bound (at 168 on the quick-start job it gave "at least 18,967"
    // where batch 1840 measured 9,765 +- 30%).
    let g2_high = m.g2.max(0.0) + Z * sd_g2;
    if g2_high <= 0.0 {
        return None;
    }
    let low = (m.trace - Z * sd_trace) / g2_high;
    Some(NoiseScale {
        value: low,
        bound: NoiseBound::LowerBound,
        low,
        ..base
    })
}

/// Statistical efficiency of batch `m` relative to `m0` (Pollux, OSDI'21):
/// the progress per sample at `m` as a share of that at `m0`.
pub fn efficiency(noise_scale: f64, m0: f64, m: f64) -> f64 {
    (noise_scale + m0) / (noise_scale + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic generator of standard normal deviates.
    struct Normal(u64);

    impl Normal {
        fn uniform(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn next(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        }
    }

    /// Squared norms of real mean gradients: G plus the mean of `batch`
    /// per-sample noise vectors (isotropic, tr(Sigma) = `trace`), in `dim`
    /// dimensions, the small batch a head of the big one, as the workers
    /// measure them.
    /// As [`measured`] (batches 128 and 16, 16 dimensions), but one example
    /// in `every` has its noise `spike` times larger: per-step |G|^2
    /// estimates with rare, large negative outliers (a spike in the small
    /// batch), as the digits MLP's are. tr(Sigma) is `trace` x (1 +
    /// (spike^2 - 1) / every).
    fn spiky(g2: f64, trace: f64, spike: f64, every: u64, n: usize, seed: u64) -> GradNoiseSample {
        drawn(g2, trace, (128, 16), 16, Some((spike, every)), n, seed)
    }

    #[test]
    fn heavy_tailed_steps_give_a_bound_not_an_interval() {
        // |G|^2 = 0.05, tr(Sigma) = 20 x (1 + 9,999 / 2,000) = 120: the
        // true B_simple is 2,400. One example in 2,000 carries 100x the
        // noise, so one step in about 125 has a spike in its small batch.
        let truth = 20.0 * (1.0 + (100.0f64.powi(2) - 1.0) / 2000.0) / 0.05;
        let (mut estimates, mut stated) = (0, 0);
        for seed in 0..10 {
            let sample = spiky(0.05, 20.0, 100.0, 2000, 400, seed);
            // tr(Sigma) itself may not be clearly above zero: no statement.
            let Some(scale) = pooled_noise_scale(&[sample], 0, 0, 0) else {
                continue;
            };
            stated += 1;
            let kurtosis = scale.gradient_sq_norm_kurtosis.unwrap();
            if kurtosis > HEAVY_TAIL_KURTOSIS {
                assert!(scale.is_lower_bound(), "{}", scale.describe());
                assert!(
                    scale.describe().contains("heavy-tailed"),
                    "{}",
                    scale.describe()
                );
                assert!(scale.value <= truth, "{} > {truth}", scale.describe());
            } else {
                estimates += 1;
            }
        }
        assert!(stated >= 4, "{stated} statements");
        assert!(
            estimates <= 1,
            "{estimates} of {stated} draws looked normal"
        );
        // Normal steps keep their interval: no draw of the coverage test's
        // kind is taken for heavy-tailed.
        for seed in 0..10 {
            let scale =
                pooled_noise_scale(&[measured(0.05, 20.0, 128, 16, 400, seed)], 0, 0, 0).unwrap();
            let kurtosis = scale.gradient_sq_norm_kurtosis.unwrap();
            assert!(kurtosis < 6.0, "seed {seed}: {kurtosis}");
            assert!(!scale.is_heavy_tailed());
        }
    }

    fn measured(g2: f64, trace: f64, big: u64, small: u64, n: usize, seed: u64) -> GradNoiseSample {
        drawn(g2, trace, (big, small), 64, None, n, seed)
    }

    /// `n` steps of per-example gradients in `dim` dimensions with mean
    /// norm^2 `g2` and noise trace `trace`, the small batch the first
    /// examples of the big one; `spike`: (factor, one example in how many).
    fn drawn(
        g2: f64,
        trace: f64,
        (big, small): (u64, u64),
        dim: usize,
        spike: Option<(f64, u64)>,
        n: usize,
        seed: u64,
    ) -> GradNoiseSample {
        let mut rng = Normal(seed);
        let g = (g2 / dim as f64).sqrt();
        let sd = (trace / dim as f64).sqrt();
        let mut sample = GradNoiseSample {
            big_batch: big,
            small_batch: small,
            ..GradNoiseSample::default()
        };
        for _ in 0..n {
            let (mut sum_big, mut sum_small) = (vec![0.0; dim], vec![0.0; dim]);
            for i in 0..big {
                // Drawn only with spikes, so the plain draws' stream is
                // unchanged.
                let scale = match spike {
                    Some((factor, every)) if rng.uniform() * (every as f64) < 1.0 => factor,
                    _ => 1.0,
                };
                for d in 0..dim {
                    let x = g + sd * scale * rng.next();
                    sum_big[d] += x;
                    if i < small {
                        sum_small[d] += x;
                    }
                }
            }
            let norm = |v: &[f64], k: u64| v.iter().map(|x| (x / k as f64).powi(2)).sum::<f64>();
            sample.big_sq_norms.push(norm(&sum_big, big));
            sample.small_sq_norms.push(norm(&sum_small, small));
        }
        sample
    }

    /// Exact expectations: E|G_B|^2 = |G|^2 + tr(Sigma)/B at every step.
    fn exact(g2: f64, trace: f64, big: u64, small: u64, n: usize) -> GradNoiseSample {
        GradNoiseSample {
            big_batch: big,
            small_batch: small,
            big_sq_norms: vec![g2 + trace / big as f64; n],
            small_sq_norms: vec![g2 + trace / small as f64; n],
            ..GradNoiseSample::default()
        }
    }

    #[test]
    fn exact_inputs_give_the_exact_noise_scale() {
        let scale = pooled_noise_scale(&[exact(2.0, 1000.0, 512, 32, 10)], 5, 160, 320).unwrap();
        assert!((scale.value - 500.0).abs() < 1e-6, "{scale:?}");
        assert_eq!(scale.bound, NoiseBound::Estimate);
        assert!((scale.low - 500.0).abs() < 1e-6 && (scale.high.unwrap() - 500.0).abs() < 1e-6);
        assert!(scale.is_decisive());
        assert_eq!((scale.after_samples, scale.until_samples), (160, 320));
    }

    #[test]
    fn the_interval_covers_the_known_answer_at_its_stated_rate() {
        // B_simple = 20 / 0.05 = 400, measured at 128 and 16 over 40 steps.
        let (mut covered, mut bounded) = (0, 0);
        for seed in 0..60 {
            let sample = measured(0.05, 20.0, 128, 16, 40, seed);
            let scale = pooled_noise_scale(&[sample], 0, 0, 0).unwrap();
            if let Some(high) = scale.high {
                bounded += 1;
                covered += usize::from(scale.low <= 400.0 && 400.0 <= high);
            } else {
                covered += usize::from(scale.value <= 400.0);
            }
        }
        // 90% nominal: at least 80% of 60 draws (binomial slack).
        assert!(covered >= 48, "covered {covered}/60");
        assert!(bounded >= 50, "bounded {bounded}/60");
    }

    #[test]
    fn a_batch_far_below_the_noise_scale_gives_a_lower_bound_not_a_wild_value() {
        // B_simple = 20,000 measured at 64 and 8: |G|^2 is lost in the noise
        // of tr(Sigma)/8, so the ratio of means swings wildly between draws.
        let mut values = Vec::new();
        for seed in 0..20 {
            let sample = measured(0.001, 20.0, 64, 8, 40, seed);
            let Some(scale) = pooled_noise_scale(&[sample], 0, 0, 0) else {
                continue;
            };
            // Whatever it says must not exceed the truth by its own bound.
            assert!(scale.low <= 20_000.0, "{scale:?}");
            if scale.is_lower_bound() {
                assert!(scale.high.is_none() && !scale.is_decisive());
                assert!(
                    scale.describe().starts_with("at least"),
                    "{}",
                    scale.describe()
                );
            }
            values.push(scale);
        }
        let bounds = values.iter().filter(|s| s.is_lower_bound()).count();
        assert!(
            bounds >= 15,
            "only {bounds} of {} were bounds",
            values.len()
        );
    }

    #[test]
    fn a_negative_draw_of_the_gradient_norm_does_not_raise_the_bound() {
        // Signal far below the noise: across draws, some |G|^2 estimates
        // come out negative. Each bound stays below the truth (20,000),
        // and one from a negative draw is no larger than it would be had
        // the draw been zero.
        let mut negative = 0;
        for seed in 0..40 {
            let sample = measured(0.001, 20.0, 64, 8, 40, seed);
            let Some(scale) = pooled_noise_scale(&[sample], 0, 0, 0) else {
                continue;
            };
            if scale.gradient_sq_norm < 0.0 {
                negative += 1;
                assert!(scale.is_lower_bound(), "{scale:?}");
                let sd = scale.gradient_sq_norm / scale.gradient_sq_norm_z;
                assert!(
                    scale.value <= scale.trace_sigma / (Z * sd) + 1e-9,
                    "{scale:?}"
                );
            }
            assert!(scale.low <= 20_000.0, "{scale:?}");
        }
        assert!(negative >= 5, "only {negative} negative draws");
    }

    #[test]
    fn no_signal_in_the_trace_gives_no_estimate() {
        let sample = GradNoiseSample {
            big_batch: 64,
            small_batch: 8,
            big_sq_norms: vec![5.0, 5.0, 5.0],
            small_sq_norms: vec![1.0, 1.0, 1.0],
            ..GradNoiseSample::default()
        };
        assert!(pooled_noise_scale(&[sample], 0, 0, 0).is_none());
        let one = exact(2.0, 1000.0, 512, 32, 1);
        assert!(
            pooled_noise_scale(&[one], 0, 0, 0).is_none(),
            "one step has no spread"
        );
    }

    #[test]
    fn pooling_two_pairs_recovers_the_scale() {
        let samples = [
            measured(0.5, 100.0, 256, 32, 30, 1),
            measured(0.5, 100.0, 64, 8, 30, 2),
        ];
        let pooled = pooled_noise_scale(&samples, 300, 0, 0).unwrap();
        assert!((pooled.value / 200.0 - 1.0).abs() < 0.3, "{pooled:?}");
        assert!(
            pooled.low < 200.0 && pooled.high.unwrap() > 200.0,
            "{pooled:?}"
        );
        assert_eq!(pooled.pairs, [(256, 32), (64, 8)]);
        assert_eq!((pooled.big_batch, pooled.small_batch), (256, 32));
        assert_eq!(pooled.measurements, 60);
        assert!(pooled.is_decisive(), "{pooled:?}");
        assert!(
            pooled.describe().contains("90% interval"),
            "{}",
            pooled.describe()
        );
    }

    #[test]
    fn old_stored_noise_scales_still_read() {
        let old = r#"{"value":193.0,"stderr":67.0,"big_batch":64,"small_batch":8,"measurements":40,"groups":5,"gradient_sq_norm":0.1,"trace_sigma":19.3}"#;
        let scale: NoiseScale = serde_json::from_str(old).unwrap();
        assert_eq!(scale.bound, NoiseBound::Estimate);
        assert_eq!(scale.value, 193.0);
    }

    #[test]
    fn efficiency_falls_past_the_noise_scale() {
        assert!((efficiency(1000.0, 32.0, 32.0) - 1.0).abs() < 1e-12);
        assert!(efficiency(1000.0, 32.0, 64.0) > 0.95);
        assert!(efficiency(1000.0, 32.0, 8000.0) < 0.2);
    }
}
