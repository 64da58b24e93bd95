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

use super::stats::sample_sd;
use serde::{Deserialize, Serialize};

use crate::trial::GradNoiseSample;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoiseScale {
    /// B_simple, in samples.
    pub value: f64,
    /// Standard error across the groups of measurements.
    #[serde(with = "crate::trial::json_float")]
    #[schema(value_type = Option<f64>)]
    pub stderr: f64,
    pub big_batch: u64,
    pub small_batch: u64,
    pub measurements: usize,
    pub groups: usize,
    /// Estimated |G|^2 and tr(Sigma), averaged over all measurements.
    pub gradient_sq_norm: f64,
    pub trace_sigma: f64,
    /// Every (big, small) batch pair the estimate pools.
    #[serde(default)]
    pub pairs: Vec<(u64, u64)>,
    /// Training steps taken before the measurements began (0: at
    /// initialization, where the noise scale is at its smallest).
    #[serde(default)]
    pub after_steps: u32,
}

/// A noise scale whose standard error exceeds this share of its value
/// cannot separate candidate batches a factor of two apart: the race decides.
pub const DECISIVE_RELATIVE_ERROR: f64 = 0.5;

impl NoiseScale {
    /// Whether the estimate is precise enough to decide between batches.
    pub fn is_decisive(&self) -> bool {
        self.stderr.is_finite() && self.stderr <= DECISIVE_RELATIVE_ERROR * self.value
    }

    /// value +- stderr in words.
    pub fn describe(&self) -> String {
        if self.stderr.is_finite() {
            format!("{:.0} +- {:.0}", self.value, self.stderr)
        } else if self.stderr.is_infinite() {
            format!(
                "{:.0} (uncertainty unbounded: some groups lost the signal)",
                self.value
            )
        } else {
            format!("{:.0} (one group: uncertainty unknown)", self.value)
        }
    }
}

/// B_simple pooled over samples that may use different batch pairs (runs
/// at several candidate batches, late in training). Each sample is cut into
/// `groups` groups; the estimate is the ratio of the mean tr(Sigma) to the
/// mean |G|^2 over all groups, its standard error the jackknife's.
pub fn pooled_noise_scale(
    samples: &[GradNoiseSample],
    groups: usize,
    after_steps: u32,
) -> Option<NoiseScale> {
    // (|G|^2, tr(Sigma), weight of the |G|^2 estimate) per group.
    let mut estimates: Vec<(f64, f64, f64)> = Vec::new();
    let mut pairs: Vec<(u64, u64)> = Vec::new();
    let mut measurements = 0;
    for sample in samples {
        let (b_big, b_small) = (sample.big_batch as f64, sample.small_batch as f64);
        if b_small >= b_big || b_small <= 0.0 {
            continue;
        }
        let (big, small): (Vec<f64>, Vec<f64>) = sample
            .big_sq_norms
            .iter()
            .zip(&sample.small_sq_norms)
            .filter(|(b, s)| b.is_finite() && s.is_finite())
            .map(|(b, s)| (*b, *s))
            .unzip();
        if big.is_empty() {
            continue;
        }
        measurements += big.len();
        if !pairs.contains(&(sample.big_batch, sample.small_batch)) {
            pairs.push((sample.big_batch, sample.small_batch));
        }
        let groups = groups.clamp(1, big.len());
        let size = big.len() / groups;
        for g in 0..groups {
            let end = if g + 1 == groups {
                big.len()
            } else {
                (g + 1) * size
            };
            if let Some((g2, trace)) =
                estimate(&big[g * size..end], &small[g * size..end], b_big, b_small)
            {
                // |G_B|^2 scatters by about tr(Sigma)/B: a pair with a large
                // big batch pins |G|^2 down far better than one of 8 and 4,
                // so |G|^2 is averaged with inverse-variance weights B^2.
                estimates.push((g2, trace, b_big * b_big));
            }
        }
    }
    let n = estimates.len();
    if n == 0 {
        return None;
    }
    let ratio = |skip: Option<usize>| -> Option<(f64, f64)> {
        let kept = || {
            estimates
                .iter()
                .enumerate()
                .filter(move |(i, _)| Some(*i) != skip)
                .map(|(_, e)| e)
        };
        let weight: f64 = kept().map(|e| e.2).sum();
        let count = kept().count() as f64;
        let g2 = kept().map(|e| e.0 * e.2).sum::<f64>() / weight;
        let trace = kept().map(|e| e.1).sum::<f64>() / count;
        (g2 > 0.0 && trace > 0.0).then_some((g2, trace))
    };
    let (g2, trace) = ratio(None)?;
    let value = trace / g2;
    let stderr = if n >= 2 {
        // Jackknife over groups; a leave-one-out estimate that loses the
        // signal (|G|^2 <= 0) makes the error unbounded, honestly.
        let leave_one_out: Vec<f64> = (0..n)
            .map(|i| ratio(Some(i)).map_or(f64::INFINITY, |(g, t)| t / g))
            .collect();
        if leave_one_out.iter().any(|v| !v.is_finite()) {
            f64::INFINITY
        } else {
            let mean = leave_one_out.iter().sum::<f64>() / n as f64;
            let var = leave_one_out
                .iter()
                .map(|v| (v - mean).powi(2))
                .sum::<f64>();
            ((n - 1) as f64 / n as f64 * var).sqrt()
        }
    } else {
        f64::NAN
    };
    // The pair named is the one that weighs most: the largest batch.
    let (big_batch, small_batch) = pairs.iter().copied().max().unwrap_or(pairs[0]);
    Some(NoiseScale {
        value,
        stderr,
        big_batch,
        small_batch,
        measurements,
        groups: n,
        gradient_sq_norm: g2,
        trace_sigma: trace,
        pairs,
        after_steps,
    })
}

fn estimate(big: &[f64], small: &[f64], b_big: f64, b_small: f64) -> Option<(f64, f64)> {
    if big.is_empty() || big.len() != small.len() {
        return None;
    }
    let n = big.len() as f64;
    let mean_big = big.iter().sum::<f64>() / n;
    let mean_small = small.iter().sum::<f64>() / n;
    let g2 = (b_big * mean_big - b_small * mean_small) / (b_big - b_small);
    let trace = (mean_small - mean_big) / (1.0 / b_small - 1.0 / b_big);
    Some((g2, trace))
}

/// B_simple from one or more two-batch samples, split into `groups`.
pub fn noise_scale(samples: &[GradNoiseSample], groups: usize) -> Option<NoiseScale> {
    let first = samples.first()?;
    let (b_big, b_small) = (first.big_batch as f64, first.small_batch as f64);
    if b_small >= b_big || b_small <= 0.0 {
        return None;
    }
    let mut big = Vec::new();
    let mut small = Vec::new();
    for sample in samples
        .iter()
        .filter(|s| s.big_batch == first.big_batch && s.small_batch == first.small_batch)
    {
        for (b, s) in sample.big_sq_norms.iter().zip(&sample.small_sq_norms) {
            if b.is_finite() && s.is_finite() {
                big.push(*b);
                small.push(*s);
            }
        }
    }
    let (g2, trace) = estimate(&big, &small, b_big, b_small)?;
    if g2 <= 0.0 || trace <= 0.0 {
        // The noise swamped the signal: no estimate is better than a wrong one.
        return None;
    }
    let value = trace / g2;
    let groups = groups.clamp(1, big.len());
    let size = big.len() / groups;
    let group_values: Vec<f64> = (0..groups)
        .filter_map(|g| {
            let range = g * size..if g + 1 == groups {
                big.len()
            } else {
                (g + 1) * size
            };
            estimate(&big[range.clone()], &small[range], b_big, b_small)
                .filter(|(g2, t)| *g2 > 0.0 && *t > 0.0)
                .map(|(g2, t)| t / g2)
        })
        .collect();
    let stderr = if let Some(sd) = sample_sd(&group_values) {
        sd / (group_values.len() as f64).sqrt()
    } else {
        f64::NAN
    };
    Some(NoiseScale {
        value,
        stderr,
        big_batch: first.big_batch,
        small_batch: first.small_batch,
        measurements: big.len(),
        groups: group_values.len(),
        gradient_sq_norm: g2,
        trace_sigma: trace,
        pairs: vec![(first.big_batch, first.small_batch)],
        after_steps: 0,
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

    /// Exact expectations plus deterministic noise.
    fn synthetic(
        g2: f64,
        trace: f64,
        big: u64,
        small: u64,
        n: usize,
        noise: f64,
    ) -> GradNoiseSample {
        let wobble = |i: usize| 1.0 + noise * (((i * 37) % 11) as f64 / 5.0 - 1.0);
        GradNoiseSample {
            big_batch: big,
            small_batch: small,
            big_sq_norms: (0..n)
                .map(|i| (g2 + trace / big as f64) * wobble(i))
                .collect(),
            small_sq_norms: (0..n)
                .map(|i| (g2 + trace / small as f64) * wobble(i + 3))
                .collect(),
        }
    }

    #[test]
    fn exact_inputs_give_the_exact_noise_scale() {
        let sample = synthetic(2.0, 1000.0, 512, 32, 10, 0.0);
        let scale = noise_scale(&[sample], 5).unwrap();
        assert!((scale.value - 500.0).abs() < 1e-6, "{scale:?}");
        assert!(scale.stderr.abs() < 1e-6);
    }

    #[test]
    fn noisy_inputs_give_an_estimate_with_an_uncertainty() {
        let sample = synthetic(2.0, 1000.0, 512, 32, 20, 0.05);
        let scale = noise_scale(&[sample], 5).unwrap();
        assert!(scale.value > 300.0 && scale.value < 800.0, "{scale:?}");
        assert!(scale.stderr > 0.0 && scale.stderr.is_finite());
    }

    #[test]
    fn a_signal_lost_in_noise_gives_no_estimate() {
        let sample = GradNoiseSample {
            big_batch: 64,
            small_batch: 8,
            big_sq_norms: vec![5.0, 5.0],
            small_sq_norms: vec![1.0, 1.0],
        };
        assert!(noise_scale(&[sample], 2).is_none());
    }

    #[test]
    fn pooling_several_pairs_recovers_the_scale_with_a_jackknife_error() {
        let samples = [
            synthetic(2.0, 1000.0, 512, 64, 20, 0.03),
            synthetic(2.0, 1000.0, 128, 16, 20, 0.03),
        ];
        let pooled = pooled_noise_scale(&samples, 5, 300).unwrap();
        assert!((pooled.value / 500.0 - 1.0).abs() < 0.2, "{pooled:?}");
        assert_eq!(pooled.pairs, [(512, 64), (128, 16)]);
        assert_eq!((pooled.big_batch, pooled.small_batch), (512, 64));
        assert_eq!(pooled.groups, 10);
        assert_eq!(pooled.after_steps, 300);
        assert!(pooled.stderr > 0.0 && pooled.is_decisive(), "{pooled:?}");
    }

    #[test]
    fn an_uncertainty_as_large_as_the_value_is_not_decisive() {
        // Gradients barely differing between the two batch sizes: tr(Sigma)
        // is a small difference of large noisy numbers, here with
        // independent 40% errors on every measurement.
        let mut state = 12345u64;
        let mut noise = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            1.0 + 0.4 * (((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0)
        };
        let (g2, trace) = (2.0, 40.0);
        let noisy = GradNoiseSample {
            big_batch: 512,
            small_batch: 64,
            big_sq_norms: (0..20).map(|_| (g2 + trace / 512.0) * noise()).collect(),
            small_sq_norms: (0..20).map(|_| (g2 + trace / 64.0) * noise()).collect(),
        };
        let scale = pooled_noise_scale(&[noisy], 5, 100);
        assert!(scale.as_ref().is_none_or(|s| !s.is_decisive()), "{scale:?}");
        let exact = pooled_noise_scale(&[synthetic(2.0, 1000.0, 512, 64, 20, 0.0)], 5, 0).unwrap();
        assert!(exact.is_decisive());
        assert!(
            exact.describe().starts_with("500 +- 0"),
            "{}",
            exact.describe()
        );
    }

    #[test]
    fn efficiency_falls_past_the_noise_scale() {
        assert!((efficiency(1000.0, 32.0, 32.0) - 1.0).abs() < 1e-12);
        assert!(efficiency(1000.0, 32.0, 64.0) > 0.95);
        assert!(efficiency(1000.0, 32.0, 8000.0) < 0.2);
    }
}
