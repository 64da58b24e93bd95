//! Training curves cut to what a chart needs.
//!
//! A confirmation or race run records its training loss at every step:
//! 8,000-11,000 steps on a held-out job, megabytes per recommendation. A
//! chart a few hundred pixels wide shows no more than [`MAX_CURVE_POINTS`]
//! points, so longer curves are kept as that many bucket means.

/// The most points a stored training curve keeps.
pub const MAX_CURVE_POINTS: usize = 100;

/// Significant digits a downsampled point keeps: a chart cannot show more,
/// and `1.2346` is less than half of `1.2345678901234` in JSON.
pub const CURVE_DIGITS: i32 = 5;

/// `losses` (one per step) cut to at most `max_points` points, with the
/// step each point ends at. Short curves come back unchanged with no steps
/// (each point is its own step). Otherwise the steps are split into
/// `max_points` runs of consecutive steps as equal as whole steps allow
/// (point i covers steps `i*n/k .. (i+1)*n/k - 1`); a point is its run's
/// mean, rounded to [`CURVE_DIGITS`] significant digits, and NaN when any
/// step of the run was not finite, so a blow-up still shows where it was.
pub fn downsample(losses: &[f64], max_points: usize) -> (Vec<f64>, Vec<u32>) {
    let n = losses.len();
    if n <= max_points || max_points == 0 {
        return (losses.to_vec(), Vec::new());
    }
    let mut points = Vec::with_capacity(max_points);
    let mut steps = Vec::with_capacity(max_points);
    for i in 0..max_points {
        let start = i * n / max_points;
        let end = (i + 1) * n / max_points;
        let bucket = &losses[start..end];
        let value = if bucket.iter().all(|l| l.is_finite()) {
            round_significant(
                bucket.iter().sum::<f64>() / bucket.len() as f64,
                CURVE_DIGITS,
            )
        } else {
            f64::NAN
        };
        points.push(value);
        steps.push(u32::try_from(end - 1).unwrap_or(u32::MAX));
    }
    (points, steps)
}

/// `x` to `digits` significant decimal digits.
pub fn round_significant(x: f64, digits: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let exponent = digits - 1 - x.abs().log10().floor() as i32;
    // Dividing by an exact power of ten gives the double nearest the
    // decimal, which JSON then writes in as few digits as it has.
    if exponent >= 0 {
        let scale = 10f64.powi(exponent);
        (x * scale).round() / scale
    } else {
        let scale = 10f64.powi(-exponent);
        (x / scale).round() * scale
    }
}

/// The step of each point of a curve: `steps` when it was downsampled,
/// else one point per step.
pub fn steps_of(points: usize, steps: &[u32]) -> Vec<f64> {
    if steps.len() == points {
        steps.iter().map(|&s| f64::from(s)).collect()
    } else {
        (0..points).map(|s| s as f64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_curves_are_kept_whole() {
        let losses = vec![1.234_567_890_123_4, 1.5, f64::NAN];
        let (points, steps) = downsample(&losses, 100);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0], 1.234_567_890_123_4);
        assert!(steps.is_empty());
    }

    #[test]
    fn long_curves_become_bucket_means_ending_at_their_last_step() {
        let losses: Vec<f64> = (0..1000).map(|s| s as f64).collect();
        let (points, steps) = downsample(&losses, 100);
        assert_eq!(points.len(), 100);
        assert_eq!(steps.len(), 100);
        // Buckets of 10: steps 0..=9 average 4.5, the last ends at 999.
        assert_eq!(points[0], 4.5);
        assert_eq!(steps[0], 9);
        assert_eq!(points[99], 994.5);
        assert_eq!(steps[99], 999);
        // Uneven: 1,001 steps in 100 points cover every step once.
        let (points, steps) = downsample(&vec![1.0; 1001], 100);
        assert_eq!(points.len(), 100);
        assert_eq!(*steps.last().unwrap(), 1000);
    }

    #[test]
    fn a_bucket_with_a_blow_up_is_nan() {
        let mut losses = vec![1.0; 500];
        losses[377] = f64::INFINITY;
        let (points, steps) = downsample(&losses, 50);
        let bad: Vec<u32> = points
            .iter()
            .zip(&steps)
            .filter(|(p, _)| !p.is_finite())
            .map(|(_, &s)| s)
            .collect();
        assert_eq!(bad, vec![379]);
    }

    #[test]
    fn rounding_keeps_five_significant_digits_and_prints_short() {
        assert_eq!(round_significant(1.234_567_890_123_4, 5), 1.2346);
        assert_eq!(round_significant(0.000123456789, 5), 0.00012346);
        assert_eq!(round_significant(123456.789, 5), 123460.0);
        assert_eq!(
            serde_json::to_string(&round_significant(0.1234567, 5)).unwrap(),
            "0.12346"
        );
        assert!(round_significant(f64::NAN, 5).is_nan());
    }
}
