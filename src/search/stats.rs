//! The small statistics the search's phases share: mean, median, the
//! sample standard deviation, a weighted affine least-squares fit, and
//! rounding a batch down to a multiple. One copy each, tested here.

/// The mean of the finite values, `None` when there is none.
pub fn mean(values: &[f64]) -> Option<f64> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64)
}

/// The median of the finite values (the upper one of an even count),
/// `None` when there is none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}

/// The sample standard deviation (n − 1), `None` below two values.
pub fn sample_sd(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64;
    Some(var.sqrt())
}

/// A line y = intercept + slope · x fitted by weighted least squares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineFit {
    pub intercept: f64,
    pub slope: f64,
}

/// Weighted least squares over `(x, y, weight)` points; `None` with fewer
/// than two points or when the x values do not tell a slope apart (all
/// equal, up to rounding).
pub fn weighted_affine_fit(points: &[(f64, f64, f64)]) -> Option<AffineFit> {
    if points.len() < 2 {
        return None;
    }
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y, w) in points {
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    let denominator = sw * sxx - sx * sx;
    if denominator.abs() <= f64::EPSILON * sw * sxx {
        return None;
    }
    let slope = (sw * sxy - sx * sy) / denominator;
    Some(AffineFit {
        intercept: (sy - slope * sx) / sw,
        slope,
    })
}

/// `batch` rounded down to a multiple of `multiple`; a batch below the
/// multiple stays as it is (never 0).
pub fn round_down(batch: u64, multiple: u64) -> u64 {
    let m = multiple.max(1);
    if batch >= m {
        batch / m * m
    } else {
        batch.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_median_skip_non_finite_values() {
        assert_eq!(mean(&[1.0, f64::NAN, 3.0]), Some(2.0));
        assert_eq!(mean(&[f64::INFINITY]), None);
        assert_eq!(median(&[5.0, 1.0, f64::NAN, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0]), Some(4.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_sample_sd_divides_by_n_minus_one() {
        assert_eq!(sample_sd(&[1.0]), None);
        let sd = sample_sd(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12, "{sd}");
    }

    #[test]
    fn the_fit_recovers_a_line_and_its_weights_matter() {
        let line: Vec<(f64, f64, f64)> = [1.0, 2.0, 4.0, 8.0]
            .iter()
            .map(|&x| (x, 3.0 + 0.5 * x, 1.0))
            .collect();
        let fit = weighted_affine_fit(&line).unwrap();
        assert!((fit.intercept - 3.0).abs() < 1e-12 && (fit.slope - 0.5).abs() < 1e-12);
        // An outlier with a tiny weight barely moves the fit.
        let mut noisy = line.clone();
        noisy.push((3.0, 100.0, 1e-9));
        let fit = weighted_affine_fit(&noisy).unwrap();
        assert!((fit.slope - 0.5).abs() < 1e-6, "{fit:?}");
        // One x value tells no slope apart.
        assert_eq!(
            weighted_affine_fit(&[(2.0, 1.0, 1.0), (2.0, 3.0, 1.0)]),
            None
        );
        assert_eq!(weighted_affine_fit(&[(2.0, 1.0, 1.0)]), None);
    }

    #[test]
    fn rounding_down_keeps_small_batches() {
        assert_eq!(round_down(130, 8), 128);
        assert_eq!(round_down(5, 8), 5);
        assert_eq!(round_down(0, 8), 1);
        assert_eq!(round_down(7, 0), 7);
    }
}
