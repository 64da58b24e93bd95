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
    pooled_sd([values]).map(|(sd, _)| sd)
}

/// The one-sided 90% quantile of Student's t with `df` degrees of freedom
/// (tabulated; the normal's 1.2816 past 30).
pub fn t_quantile_90(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        3.078, 1.886, 1.638, 1.533, 1.476, 1.440, 1.415, 1.397, 1.383, 1.372, 1.363, 1.356, 1.350,
        1.345, 1.341, 1.337, 1.333, 1.330, 1.328, 1.325, 1.323, 1.321, 1.319, 1.318, 1.316, 1.315,
        1.314, 1.313, 1.311, 1.310,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => 1.2816,
    }
}

/// The pooled sample standard deviation of several groups, each assumed to
/// share one spread: sqrt(sum of squared deviations from each group's mean /
/// sum of (n - 1)), with those degrees of freedom. Groups below two values
/// add nothing; `None` when no group has two.
pub fn pooled_sd<'a>(groups: impl IntoIterator<Item = &'a [f64]>) -> Option<(f64, usize)> {
    let (squares, df) =
        groups
            .into_iter()
            .filter(|g| g.len() >= 2)
            .fold((0.0, 0usize), |(squares, df), g| {
                let mean = g.iter().sum::<f64>() / g.len() as f64;
                let ss: f64 = g.iter().map(|v| (v - mean).powi(2)).sum();
                (squares + ss, df + g.len() - 1)
            });
    (df > 0).then(|| ((squares / df as f64).sqrt(), df))
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

    #[test]
    fn pooled_sd_weights_groups_by_their_degrees_of_freedom() {
        // Groups with sds 1 (3 values, df 2) and 2 (2 values, df 1): the
        // pooled variance is (2 * 1 + 1 * 4) / 3 = 2.
        let a = [1.0, 2.0, 3.0];
        let b = [0.0, 2.0 * std::f64::consts::SQRT_2];
        let single = [5.0];
        let (sd, df) = pooled_sd([&a[..], &b[..], &single[..]]).unwrap();
        assert_eq!(df, 3);
        assert!((sd - 2f64.sqrt()).abs() < 1e-12, "{sd}");
        assert_eq!(pooled_sd([&single[..]]), None);
    }

    #[test]
    fn the_t_quantile_falls_to_the_normal_one() {
        assert_eq!(t_quantile_90(0), f64::INFINITY);
        assert_eq!(t_quantile_90(1), 3.078);
        assert_eq!(t_quantile_90(3), 1.638);
        assert!((1..60).all(|df| t_quantile_90(df) >= t_quantile_90(df + 1)));
        assert_eq!(t_quantile_90(1000), 1.2816);
    }
}
