//! The step-time model t(B) = t0 + B / r (Pollux's compute model, OSDI'21):
//! a fixed cost per step (launches, optimizer, framework) plus a cost per
//! sample. Fitted to the throughput curve, it gives samples per second and
//! goodput at any batch, not only at the tried points, and the duration of
//! a trial before it runs.

use super::stats::{weighted_affine_fit, AffineFit};
use serde::{Deserialize, Serialize};

use super::throughput::{interpolate, CurvePoint};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepTimeModel {
    /// Seconds per step that do not grow with the batch.
    pub fixed_seconds: f64,
    /// Samples per second the per-sample part runs at.
    pub samples_per_second_limit: f64,
    /// Largest relative miss of the fit at a measured point.
    pub max_relative_error: f64,
    pub points: usize,
}

impl StepTimeModel {
    /// Least squares of step time against batch, weighted so every point
    /// counts by its relative error (small batches' steps are short).
    pub fn fit(curve: &[CurvePoint]) -> Option<StepTimeModel> {
        let points: Vec<(f64, f64)> = curve
            .iter()
            .filter(|p| p.samples_per_second > 0.0 && p.samples_per_second.is_finite())
            .map(|p| {
                let b = p.batch_size as f64;
                (b, b / p.samples_per_second)
            })
            .collect();
        let weighted: Vec<(f64, f64, f64)> =
            points.iter().map(|&(x, y)| (x, y, 1.0 / (y * y))).collect();
        let AffineFit {
            mut intercept,
            mut slope,
        } = weighted_affine_fit(&weighted)?;
        if intercept < 0.0 || slope <= 0.0 {
            // A negative fixed cost (or per-sample cost) is no physics: fit
            // the one-parameter model through the origin, or a pure fixed
            // cost, whichever the data allows.
            if slope > 0.0 {
                intercept = 0.0;
                slope = points.iter().map(|(x, y)| y / x / (y * y)).sum::<f64>()
                    / points.iter().map(|(_, y)| 1.0 / (y * y)).sum::<f64>();
            } else {
                return None;
            }
        }
        let model = StepTimeModel {
            fixed_seconds: intercept,
            samples_per_second_limit: 1.0 / slope,
            max_relative_error: 0.0,
            points: points.len(),
        };
        let max_relative_error = points
            .iter()
            .map(|&(x, y)| (model.step_seconds(x as u64) - y).abs() / y)
            .fold(0.0, f64::max);
        Some(StepTimeModel {
            max_relative_error,
            ..model
        })
    }

    pub fn step_seconds(&self, batch: u64) -> f64 {
        self.fixed_seconds + batch as f64 / self.samples_per_second_limit
    }

    pub fn samples_per_second(&self, batch: u64) -> f64 {
        batch as f64 / self.step_seconds(batch)
    }
}

/// Samples per second at any batch: the measurements where the batch lies
/// inside the measured range (they know about cache cliffs the affine model
/// does not), the model outside it.
pub fn speed_at(curve: &[CurvePoint], model: Option<&StepTimeModel>, batch: u64) -> Option<f64> {
    let lowest = curve.iter().map(|p| p.batch_size).min()?;
    let highest = curve.iter().map(|p| p.batch_size).max()?;
    match model {
        Some(model) if batch < lowest || batch > highest => Some(model.samples_per_second(batch)),
        _ => interpolate(curve, batch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(t0: f64, rate: f64, batches: &[u64]) -> Vec<CurvePoint> {
        batches
            .iter()
            .map(|&b| CurvePoint {
                batch_size: b,
                samples_per_second: b as f64 / (t0 + b as f64 / rate),
                source: crate::search::throughput::PointSource::Ladder,
            })
            .collect()
    }

    #[test]
    fn recovers_fixed_and_per_sample_cost() {
        let model = StepTimeModel::fit(&curve(0.002, 400_000.0, &[8, 64, 512, 4096])).unwrap();
        assert!(
            (model.fixed_seconds / 0.002 - 1.0).abs() < 1e-6,
            "{model:?}"
        );
        assert!((model.samples_per_second_limit / 400_000.0 - 1.0).abs() < 1e-6);
        assert!(model.max_relative_error < 1e-9);
        // Evaluated anywhere, not only at the tried points.
        let at = model.samples_per_second(1000);
        assert!((at - 1000.0 / (0.002 + 1000.0 / 400_000.0)).abs() < 1e-6);
    }

    #[test]
    fn speed_uses_measurements_inside_and_the_model_outside() {
        let points = curve(0.01, 10_000.0, &[16, 64, 256]);
        let model = StepTimeModel::fit(&points).unwrap();
        let inside = speed_at(&points, Some(&model), 64).unwrap();
        assert!((inside - points[1].samples_per_second).abs() < 1e-9);
        let outside = speed_at(&points, Some(&model), 4096).unwrap();
        assert!((outside - 4096.0 / (0.01 + 4096.0 / 10_000.0)).abs() < 1e-3);
        // Beyond the curve without a model: flat.
        assert_eq!(
            speed_at(&points, None, 4096),
            Some(points[2].samples_per_second)
        );
    }

    #[test]
    fn no_model_from_one_point_or_nonsense() {
        assert!(StepTimeModel::fit(&curve(0.01, 1000.0, &[32])).is_none());
        // Step time falling with batch: no positive per-sample cost.
        let falling = vec![
            CurvePoint {
                batch_size: 8,
                samples_per_second: 8.0,
                source: crate::search::throughput::PointSource::Ladder,
            },
            CurvePoint {
                batch_size: 64,
                samples_per_second: 640.0,
                source: crate::search::throughput::PointSource::Ladder,
            },
        ];
        assert!(StepTimeModel::fit(&falling).is_none());
    }
}
