//! A batch ramp from the noise scale measured during training: start at the
//! recommended batch, double it once the noise scale has grown past about
//! twice the current batch, stop at the throughput plateau (or the largest
//! batch that fits), and move the LR with the batch by the job's own rule.
//!
//! Why this rule. Past the critical batch B_noise more batch buys little
//! per sample (McCandlish et al. 2018), and B_noise grows as the loss falls.
//! Per sample, a batch B trains with efficiency 1/(1 + B/B_noise) (the
//! paper's E = E_min(1 + B/B_noise)): 2/3 at B = B_noise/2, 1/2 at
//! B = B_noise. Doubling once B_noise passes 2B keeps every phase between
//! the two, while each step moves more samples. Near the throughput
//! plateau a doubled batch barely runs faster, so the doubling also waits
//! until it pays in goodput (speed x efficiency, Pollux) by the measured
//! curve ([`noise_needed`]): that is where "stop at the plateau" comes
//! from, measured rather than assumed. Smith et
//! al. 2017 and Seesaw (2025) grow the batch *instead of* decaying the LR
//! (Seesaw: batch x2 with LR x1/sqrt 2 under Adam where a schedule would
//! halve the LR). batchd keeps its cosine decay underneath and scales the
//! LR with the batch by the rule it already uses for the constant batch
//! (square root for Adam, linear for SGD), so each phase trains at the LR
//! the rule gives its batch; whether that pays is not assumed but raced
//! against the constant batch before it is recommended.
//!
//! Pure: the search gives it the measured points and the limits.

use serde::{Deserialize, Serialize};

use super::stats::{round_down, weighted_affine_fit};
use crate::trial::{BatchPhase, BatchSchedule};

/// The noise scale grows past this many times the current batch before it
/// doubles.
pub const GROWTH_TRIGGER: f64 = 2.0;
/// Growth over the points' span below this factor is not growth: the
/// scatter of the windows' estimates, not the noise scale moving.
pub const MIN_GROWTH: f64 = 1.25;

/// B_noise(s) = scale x s^exponent over samples s, fitted in log-log space
/// to the measured points.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NoiseGrowth {
    pub scale: f64,
    pub exponent: f64,
    /// The samples the fit's points span: it is not read beyond them.
    pub from_samples: u64,
    pub to_samples: u64,
}

impl NoiseGrowth {
    /// Fits the points `(samples, noise scale)`; `None` with fewer than two
    /// points, points that span less than a factor of 1.5 in samples, or a
    /// noise scale that grows by less than [`MIN_GROWTH`] over them.
    pub fn fit(points: &[(u64, f64)]) -> Option<NoiseGrowth> {
        let usable: Vec<(f64, f64, f64)> = points
            .iter()
            .filter(|(s, b)| *s > 0 && b.is_finite() && *b > 0.0)
            .map(|&(s, b)| ((s as f64).ln(), b.ln(), 1.0))
            .collect();
        let from = points.iter().map(|p| p.0).filter(|s| *s > 0).min()?;
        let to = points.iter().map(|p| p.0).max()?;
        if usable.len() < 2 || (to as f64) < 1.5 * from as f64 {
            return None;
        }
        let fit = weighted_affine_fit(&usable)?;
        let grew = (to as f64 / from as f64).powf(fit.slope) >= MIN_GROWTH;
        (fit.slope > 0.0 && fit.slope.is_finite() && grew).then(|| NoiseGrowth {
            scale: fit.intercept.exp(),
            exponent: fit.slope,
            from_samples: from,
            to_samples: to,
        })
    }

    pub fn at(&self, samples: u64) -> f64 {
        self.scale * (samples.max(1) as f64).powf(self.exponent)
    }

    /// The samples at which the noise scale reaches `value`.
    pub fn samples_reaching(&self, value: f64) -> f64 {
        (value / self.scale).powf(1.0 / self.exponent)
    }
}

/// What the ramp may not pass, and how its batches and LRs are made.
#[derive(Debug, Clone, Copy)]
pub struct RampLimits {
    /// The batch it starts at (the constant recommendation).
    pub start: u64,
    /// The largest batch it may reach: the throughput plateau, or the
    /// largest that fits when lower.
    pub top: u64,
    /// Samples the run trains: no phase starts after them.
    pub run_samples: u64,
    pub batch_multiple: u64,
    /// LR ~ batch^alpha.
    pub alpha: f64,
}

/// Why no ramp was derived.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum NoRamp {
    /// Fewer than two points of the noise scale over training, or points
    /// that show no growth.
    NoGrowthMeasured { points: usize },
    /// The start is at the plateau (or the memory limit) already.
    NoRoomAbove { start: u64, top: u64 },
    /// The noise scale does not pass twice the batch within the run.
    NeverPasses {
        /// The fitted noise scale at the run's end.
        at_end: f64,
        needed: f64,
    },
}

impl std::fmt::Display for NoRamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRamp::NoGrowthMeasured { points } => write!(
                f,
                "the noise scale was not seen to grow over training ({points} usable point(s) over training progress)"
            ),
            NoRamp::NoRoomAbove { start, top } => write!(
                f,
                "batch {start} is at the throughput plateau or memory limit already ({top})"
            ),
            NoRamp::NeverPasses { at_end, needed } => write!(
                f,
                "the noise scale reaches only {at_end:.0} by the end of the run, short of the {needed:.0} a doubling needs"
            ),
        }
    }
}

/// The noise scale a doubling from `batch` waits for: [`GROWTH_TRIGGER`] x
/// the batch, and more where the measured speed-up of the doubled batch
/// (`speedup` = speed(2B) / speed(B)) does not pay for the statistical
/// efficiency it costs. Goodput (Pollux) is speed x 1/(1 + B/B_noise); the
/// doubled batch has more of it only when
/// B_noise > (2 - r) B / (r - 1) for r = speedup below 2. Near the
/// throughput plateau r is close to 1 and no noise scale is enough: the
/// ramp stops there.
pub fn noise_needed(batch: u64, speedup: Option<f64>) -> f64 {
    let trigger = GROWTH_TRIGGER * batch as f64;
    match speedup {
        Some(r) if r < 2.0 => {
            if r <= 1.0 {
                f64::INFINITY
            } else {
                trigger.max((2.0 - r) * batch as f64 / (r - 1.0))
            }
        }
        _ => trigger,
    }
}

/// The ramp: a doubling where the fitted noise scale passes
/// [`noise_needed`] for the current batch, within what the points measured
/// and the run trains, up to `top`. `speed`: measured samples per second
/// at a batch (the throughput curve).
pub fn derive(
    growth: &NoiseGrowth,
    limits: &RampLimits,
    speed: &dyn Fn(u64) -> Option<f64>,
) -> Result<BatchSchedule, NoRamp> {
    let start = limits.start.max(1);
    let doubled = |b: u64| round_down(b * 2, limits.batch_multiple).max(b + 1);
    if doubled(start) > limits.top {
        return Err(NoRamp::NoRoomAbove {
            start,
            top: limits.top,
        });
    }
    // Not read beyond the points measured, nor beyond the run.
    let horizon = limits.run_samples.min(growth.to_samples.saturating_mul(2));
    let mut phases = vec![BatchPhase {
        from_sample: 0,
        batch_size: start,
        lr_factor: 1.0,
    }];
    let mut batch = start;
    loop {
        let next = doubled(batch);
        if next > limits.top {
            break;
        }
        let speedup = match (speed(next), speed(batch)) {
            (Some(fast), Some(slow)) if slow > 0.0 => Some(fast / slow),
            _ => None,
        };
        let needed = noise_needed(batch, speedup);
        // Up to the sample it is reached at (a hair under, for the fit's
        // rounding).
        let reached = growth.samples_reaching(needed);
        let at = (reached * (1.0 - 1e-9))
            .ceil()
            .max(growth.from_samples as f64);
        let last = phases.last().map_or(0, |p| p.from_sample);
        if !(at.is_finite() && at < horizon as f64) {
            if phases.len() == 1 {
                return Err(NoRamp::NeverPasses {
                    at_end: growth.at(horizon),
                    needed,
                });
            }
            break;
        }
        let lr_factor = (next as f64 / start as f64).powf(limits.alpha);
        let grown = phases.len() > 1;
        match phases.last_mut() {
            // Due where the last doubling was (the fit is not read before
            // its first point): one phase jumps there.
            Some(phase) if grown && at as u64 <= last => {
                phase.batch_size = next;
                phase.lr_factor = lr_factor;
            }
            _ => phases.push(BatchPhase {
                from_sample: (at as u64).max(last + 1),
                batch_size: next,
                lr_factor,
            }),
        }
        batch = next;
    }
    Ok(BatchSchedule { phases })
}

/// One side of the ramp's race: its mean validation loss over the seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RampSide {
    /// The constant batch, or the ramp's first batch.
    pub batch_size: u64,
    pub steps: u32,
    pub mean_loss: f64,
    /// Sample standard deviation over the seeds.
    pub spread: Option<f64>,
    pub seeds: usize,
}

/// How the ramp fared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RampOutcome {
    /// Better than the constant batch by more than the seed-to-seed spread:
    /// recommended.
    Won,
    /// Not better beyond the seed-to-seed spread: the constant batch stays.
    Lost,
    /// No ramp was derived from the measurements.
    NotDerived { why: NoRamp },
    /// A ramp was derived but not raced.
    NotRaced { why: String },
}

/// The batch-size schedule section of a recommendation: the ramp derived
/// from the noise scale's growth, and its race against the constant batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchRampAdvice {
    /// The ramp beat the constant batch beyond seed noise: train with
    /// `phases`. Otherwise train at the constant `batch_size`.
    pub recommended: bool,
    pub outcome: RampOutcome,
    /// The ramp (raced, or derived and not raced); empty when none was
    /// derived. Samples are counted per device; LR factors multiply the
    /// recommended schedule's LR.
    pub phases: Vec<BatchPhase>,
    /// The fitted growth of the noise scale over samples trained.
    pub growth: Option<NoiseGrowth>,
    /// The points it was fitted to: (samples trained, noise scale).
    pub points: Vec<(u64, f64)>,
    /// What both sides got the same of.
    pub budget: Option<super::race::RaceBudget>,
    pub constant: Option<RampSide>,
    pub ramp: Option<RampSide>,
    /// The ramp's runs, one per seed of the constant batch's.
    pub runs: Vec<super::race::RaceRun>,
    /// constant mean - ramp mean, as a fraction of the constant mean:
    /// positive when the ramp trained to a lower loss.
    pub gain: Option<f64>,
    pub verdict: String,
}

/// Judges the ramp's losses against the constant batch's (same seeds, same
/// budget): it wins when its mean is lower by more than the larger of the
/// two sides' seed-to-seed spreads. With fewer than two seeds a side has
/// no spread and the ramp cannot win.
pub fn judge(constant: &RampSide, ramp: &RampSide) -> (RampOutcome, f64, String) {
    let gain =
        (constant.mean_loss - ramp.mean_loss) / constant.mean_loss.abs().max(f64::MIN_POSITIVE);
    let noise = match (constant.spread, ramp.spread) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    let lead = constant.mean_loss - ramp.mean_loss;
    let won = noise.is_some_and(|noise| lead > noise);
    let spread = noise.map_or("n/a (a single seed)".to_string(), |n| format!("{n:.4}"));
    let verdict = if won {
        format!(
            "the ramp won: mean validation loss {:.4} against the constant batch {}'s {:.4} over {} seeds, {:.1}% lower, beyond the seed-to-seed spread {spread}",
            ramp.mean_loss, constant.batch_size, constant.mean_loss, ramp.seeds, gain * 100.0
        )
    } else {
        format!(
            "the ramp was tried and lost: mean validation loss {:.4} against the constant batch {}'s {:.4} over {} seeds ({:+.1}%; the seed-to-seed spread is {spread}), so the constant batch stays",
            ramp.mean_loss, constant.batch_size, constant.mean_loss, ramp.seeds, -gain * 100.0
        )
    };
    (
        if won {
            RampOutcome::Won
        } else {
            RampOutcome::Lost
        },
        gain,
        verdict,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No throughput curve: the plain trigger.
    fn no_speed(_: u64) -> Option<f64> {
        None
    }

    fn limits(start: u64, top: u64) -> RampLimits {
        RampLimits {
            start,
            top,
            run_samples: 1_000_000,
            batch_multiple: 8,
            alpha: 0.5,
        }
    }

    #[test]
    fn a_noise_scale_that_grows_linearly_doubles_the_batch_each_time_it_passes_twice_it() {
        // B_noise = s / 100: passes 128 at 12,800 samples, 256 at 25,600.
        let growth =
            NoiseGrowth::fit(&[(10_000, 100.0), (40_000, 400.0), (80_000, 800.0)]).unwrap();
        assert!((growth.exponent - 1.0).abs() < 1e-9, "{growth:?}");
        let ramp = derive(&growth, &limits(64, 512), &no_speed).unwrap();
        let batches: Vec<u64> = ramp.phases.iter().map(|p| p.batch_size).collect();
        assert_eq!(batches, vec![64, 128, 256, 512]);
        let starts: Vec<u64> = ramp.phases.iter().map(|p| p.from_sample).collect();
        assert_eq!(starts, vec![0, 12_800, 25_600, 51_200]);
        // The square-root rule: LR x sqrt 2 per doubling.
        let factors: Vec<f64> = ramp.phases.iter().map(|p| p.lr_factor).collect();
        assert!(
            (factors[1] - 2f64.sqrt()).abs() < 1e-12 && (factors[3] - 8f64.sqrt()).abs() < 1e-12
        );
        ramp.check().unwrap();
    }

    #[test]
    fn the_ramp_stops_at_the_top_and_at_the_run_and_does_not_extrapolate_far() {
        let growth = NoiseGrowth::fit(&[(10_000, 100.0), (80_000, 800.0)]).unwrap();
        // Capped by the plateau.
        let ramp = derive(&growth, &limits(64, 256), &no_speed).unwrap();
        assert_eq!(ramp.largest_batch(), 256);
        // Capped by the run: 30,000 samples see one doubling only.
        let short = RampLimits {
            run_samples: 30_000,
            ..limits(64, 4096)
        };
        let ramp = derive(&growth, &short, &no_speed).unwrap();
        assert_eq!(ramp.phases.len(), 3, "{ramp:?}");
        // Not read past twice the last measured point (160,000 samples):
        // 2048 would need 409,600.
        let ramp = derive(&growth, &limits(64, 8192), &no_speed).unwrap();
        assert_eq!(ramp.largest_batch(), 1024, "{ramp:?}");
    }

    #[test]
    fn no_ramp_without_growth_room_or_a_crossing_and_it_says_why() {
        // One point, or a flat or falling noise scale: no growth measured.
        assert!(NoiseGrowth::fit(&[(10_000, 100.0)]).is_none());
        assert!(NoiseGrowth::fit(&[(10_000, 100.0), (40_000, 90.0)]).is_none());
        // Points too close together in samples.
        assert!(NoiseGrowth::fit(&[(10_000, 100.0), (12_000, 200.0)]).is_none());
        let growth = NoiseGrowth::fit(&[(10_000, 100.0), (40_000, 400.0)]).unwrap();
        assert_eq!(
            derive(&growth, &limits(256, 256), &no_speed),
            Err(NoRamp::NoRoomAbove {
                start: 256,
                top: 256
            })
        );
        // B_noise reaches 800 by the horizon (80,000); batch 512 would need
        // 1024.
        match derive(&growth, &limits(512, 4096), &no_speed) {
            Err(NoRamp::NeverPasses { at_end, needed }) => {
                assert!(
                    (at_end - 800.0).abs() < 1e-6 && needed == 1024.0,
                    "{at_end} {needed}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn near_the_plateau_a_doubling_waits_for_more_noise_or_never_comes() {
        // Twice as fast at twice the batch: the plain trigger.
        assert_eq!(noise_needed(64, Some(2.0)), 128.0);
        // 28% faster: B_noise > 0.72/0.28 x 64 = 164.6.
        assert!((noise_needed(64, Some(1.28)) - 0.72 / 0.28 * 64.0).abs() < 1e-9);
        // No faster: never.
        assert!(noise_needed(64, Some(1.0)).is_infinite());
        // On a curve that flattens past 256 the ramp stops there, though the
        // noise scale would allow 512.
        let growth = NoiseGrowth::fit(&[(10_000, 100.0), (80_000, 800.0)]).unwrap();
        let speed = |b: u64| Some(if b <= 256 { b as f64 } else { 256.0 * 1.02 });
        let ramp = derive(&growth, &limits(64, 4096), &speed).unwrap();
        assert_eq!(ramp.largest_batch(), 256, "{ramp:?}");
    }

    #[test]
    fn scatter_without_growth_is_not_growth() {
        // 1980 then 2010: 1.5% over a 2.4x span of samples.
        assert!(NoiseGrowth::fit(&[(606_720, 1980.0), (1_471_488, 2010.0)]).is_none());
    }

    fn side(batch: u64, mean_loss: f64, spread: Option<f64>) -> RampSide {
        RampSide {
            batch_size: batch,
            steps: 100,
            mean_loss,
            spread,
            seeds: 2,
        }
    }

    #[test]
    fn the_ramp_wins_only_beyond_the_seed_noise() {
        let constant = side(64, 1.00, Some(0.01));
        let (outcome, gain, verdict) = judge(&constant, &side(64, 0.95, Some(0.02)));
        assert_eq!(outcome, RampOutcome::Won);
        assert!(
            (gain - 0.05).abs() < 1e-12 && verdict.contains("5.0% lower"),
            "{verdict}"
        );
        // Lower, but within the larger spread: lost, and by how much.
        let (outcome, _, verdict) = judge(&constant, &side(64, 0.99, Some(0.02)));
        assert_eq!(outcome, RampOutcome::Lost);
        assert!(verdict.contains("-1.0%"), "{verdict}");
        // Worse: lost, with the size of the loss.
        let (outcome, _, verdict) = judge(&constant, &side(64, 1.10, Some(0.01)));
        assert_eq!(outcome, RampOutcome::Lost);
        assert!(verdict.contains("+10.0%"), "{verdict}");
        // One seed: no spread, no win.
        let (outcome, _, _) = judge(&side(64, 1.0, None), &side(64, 0.5, None));
        assert_eq!(outcome, RampOutcome::Lost);
    }

    #[test]
    fn a_noise_scale_already_past_the_trigger_doubles_from_the_first_measured_point() {
        // B_noise = 1000 at 10,000 samples: 64 could double at once, but the
        // ramp does not read the fit before its first point.
        let growth = NoiseGrowth::fit(&[(10_000, 1000.0), (20_000, 2000.0)]).unwrap();
        let ramp = derive(&growth, &limits(64, 256), &no_speed).unwrap();
        let phases: Vec<(u64, u64)> = ramp
            .phases
            .iter()
            .map(|p| (p.from_sample, p.batch_size))
            .collect();
        assert_eq!(phases, vec![(0, 64), (10_000, 256)]);
        assert!((ramp.phases[1].lr_factor - 2.0).abs() < 1e-12);
    }
}
