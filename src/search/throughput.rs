//! The throughput curve: samples per second over a geometric ladder of
//! batch sizes up to the largest that fits.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CurvePoint {
    pub batch_size: u64,
    pub samples_per_second: f64,
    pub source: PointSource,
}

/// Which trial measured a curve point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PointSource {
    /// A throughput trial.
    Ladder,
    /// A max-fit trial, reused for its timed steps.
    MaxFit,
}

/// Batch sizes halving down from `top` to `bottom`, at most `points` of
/// them, rounded to `multiple` where they are at least that large.
pub fn ladder(top: u64, bottom: u64, multiple: u64, points: usize) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut batch = top;
    while batch >= bottom.max(1) && sizes.len() < points {
        let rounded = if batch >= multiple {
            batch / multiple * multiple
        } else {
            batch
        };
        if sizes.last() != Some(&rounded) {
            sizes.push(rounded);
        }
        if batch == 1 {
            break;
        }
        batch /= 2;
    }
    sizes.reverse();
    sizes
}

/// The batch where more stops paying: the smallest measured batch within
/// one doubling's worth of gain (`gain`, a share of samples per second) of
/// the best speed on the curve. Judged against the best rather than pair by
/// pair, so one noisy dip at small batches does not end the climb.
pub fn plateau(curve: &[CurvePoint], gain: f64) -> Option<u64> {
    let best = curve
        .iter()
        .map(|p| p.samples_per_second)
        .filter(|s| s.is_finite())
        .fold(f64::NAN, f64::max);
    if !best.is_finite() {
        return None;
    }
    curve
        .iter()
        .filter(|p| p.samples_per_second >= best / (1.0 + gain))
        .map(|p| p.batch_size)
        .min()
}

/// Samples per second at any batch, interpolated in log-log space between
/// measured points (flat beyond the ends).
pub fn interpolate(curve: &[CurvePoint], batch: u64) -> Option<f64> {
    let mut sorted = curve.to_vec();
    sorted.sort_by_key(|p| p.batch_size);
    let first = sorted.first()?;
    if batch <= first.batch_size {
        return Some(first.samples_per_second);
    }
    for pair in sorted.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if batch <= b.batch_size {
            let t = ((batch as f64).ln() - (a.batch_size as f64).ln())
                / ((b.batch_size as f64).ln() - (a.batch_size as f64).ln());
            return Some(
                (a.samples_per_second.ln() * (1.0 - t) + b.samples_per_second.ln() * t).exp(),
            );
        }
    }
    sorted.last().map(|p| p.samples_per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(batch: u64, speed: f64) -> CurvePoint {
        CurvePoint {
            batch_size: batch,
            samples_per_second: speed,
            source: PointSource::Ladder,
        }
    }

    #[test]
    fn ladders_halve_and_round() {
        assert_eq!(ladder(1000, 8, 8, 10), [8, 24, 56, 120, 248, 496, 1000]);
        assert_eq!(ladder(4096, 1, 8, 4), [512, 1024, 2048, 4096]);
        assert_eq!(ladder(5, 1, 8, 8), [1, 2, 5]);
    }

    #[test]
    fn the_plateau_is_where_doubling_stops_paying() {
        // Step time c0 + c1*b: speed saturates.
        let curve: Vec<CurvePoint> = [32u64, 64, 128, 256, 512, 1024]
            .iter()
            .map(|&b| point(b, b as f64 / (0.01 + 0.0001 * b as f64)))
            .collect();
        // Speeds 2424 .. 9110: within 10% of the best from 512 on.
        assert_eq!(plateau(&curve, 0.10), Some(512));
        assert_eq!(plateau(&curve, 0.50), Some(256));
        assert_eq!(plateau(&curve, 0.0), Some(1024));
        // A dip at a small batch does not end the climb.
        let mut dipped = curve.clone();
        dipped[1].samples_per_second = 1000.0;
        assert_eq!(plateau(&dipped, 0.10), Some(512));
    }

    #[test]
    fn interpolation_is_log_linear_and_flat_outside() {
        let curve = vec![point(10, 100.0), point(1000, 10_000.0)];
        assert!((interpolate(&curve, 100).unwrap() - 1000.0).abs() < 1e-6);
        assert_eq!(interpolate(&curve, 1), Some(100.0));
        assert_eq!(interpolate(&curve, 5000), Some(10_000.0));
    }
}
