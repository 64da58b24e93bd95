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

/// The throughput ladder as an ask/tell machine: it walks the ladder from
/// the small end (cheap trials that make the model estimating the big
/// ones), reuses a max-fit trial's speed where one measured the batch, and
/// leaves off a batch whose trial, estimated from the points so far, would
/// overrun the time the driver says is left. The driver runs each ask and
/// tells the speed it measured, or none.
#[derive(Debug)]
pub struct LadderMachine {
    /// Batches still to visit, largest first (popped from the back).
    pending: Vec<u64>,
    reusable: Vec<CurvePoint>,
    steps: u32,
    points: Vec<CurvePoint>,
    left_off: Vec<u64>,
    asked: Option<u64>,
}

impl LadderMachine {
    /// `ladder`: the batches to measure; `reusable`: max-fit points that
    /// already timed some of them; `steps`: the steps of one trial.
    pub fn new(mut ladder: Vec<u64>, reusable: Vec<CurvePoint>, steps: u32) -> Self {
        ladder.sort_unstable_by(|a, b| b.cmp(a));
        ladder.dedup();
        LadderMachine {
            pending: ladder,
            reusable,
            steps,
            points: Vec::new(),
            left_off: Vec::new(),
            asked: None,
        }
    }

    /// The next batch to time, given the seconds the phase has left and
    /// what a trial costs beyond its steps; `None` when the ladder is done.
    /// The first trial always runs: a curve needs one point.
    pub fn next_trial(&mut self, seconds_left: f64, overhead: f64) -> Option<u64> {
        debug_assert!(self.asked.is_none(), "ask before the last was told");
        while let Some(batch) = self.pending.pop() {
            if let Some(point) = self.reusable.iter().find(|p| p.batch_size == batch) {
                self.points.push(point.clone());
                continue;
            }
            let model = crate::search::steptime::StepTimeModel::fit(&self.points);
            let estimate = crate::search::steptime::speed_at(&self.points, model.as_ref(), batch)
                .map_or(0.0, |s| f64::from(self.steps) * batch as f64 / s)
                + overhead;
            if seconds_left < estimate && !self.points.is_empty() {
                self.left_off.push(batch);
                continue;
            }
            self.asked = Some(batch);
            return Some(batch);
        }
        None
    }

    /// The speed the asked trial measured (`None`: it failed).
    pub fn tell(&mut self, batch: u64, samples_per_second: Option<f64>) {
        debug_assert_eq!(self.asked, Some(batch));
        self.asked = None;
        if let Some(speed) = samples_per_second.filter(|s| s.is_finite() && *s > 0.0) {
            self.points.push(CurvePoint {
                batch_size: batch,
                samples_per_second: speed,
                source: PointSource::Ladder,
            });
        }
    }

    /// The measured points (with `extra`, a point above the ladder, if
    /// any), sorted and distinct, and the batches left off.
    pub fn finish(mut self, extra: Option<CurvePoint>) -> (Vec<CurvePoint>, Vec<u64>) {
        self.points.extend(extra);
        self.points.sort_by_key(|p| p.batch_size);
        self.points.dedup_by_key(|p| p.batch_size);
        (self.points, self.left_off)
    }
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

    /// Drives a ladder on a simulated machine: step time 0.01 + 1e-4*b s,
    /// one second of overhead, `budget` seconds for the phase.
    fn drive(
        ladder: Vec<u64>,
        reusable: Vec<CurvePoint>,
        budget: f64,
    ) -> (Vec<CurvePoint>, Vec<u64>, Vec<u64>) {
        let steps = 20;
        let mut machine = LadderMachine::new(ladder, reusable, steps);
        let mut left = budget;
        let mut asked = Vec::new();
        while let Some(batch) = machine.next_trial(left, 1.0) {
            let step = 0.01 + 1e-4 * batch as f64;
            left -= 1.0 + step * f64::from(steps);
            asked.push(batch);
            machine.tell(batch, Some(batch as f64 / step));
        }
        let (points, left_off) = machine.finish(None);
        (points, left_off, asked)
    }

    #[test]
    fn the_ladder_machine_climbs_from_the_small_end_and_reuses_max_fit_points() {
        let reused = point(1024, 5000.0);
        let (points, left_off, asked) = drive(vec![1024, 8, 64, 512], vec![reused.clone()], 100.0);
        assert_eq!(asked, [8, 64, 512]);
        assert!(left_off.is_empty());
        assert_eq!(
            points.iter().map(|p| p.batch_size).collect::<Vec<_>>(),
            [8, 64, 512, 1024]
        );
        assert_eq!(points[3], reused);
        assert!(points[..3].iter().all(|p| p.source == PointSource::Ladder));
    }

    #[test]
    fn the_ladder_machine_leaves_off_what_would_overrun() {
        // 10 s: batch 8 (1.2 s) and 64 (1.3 s) run; 4096, estimated from
        // the model of those two at 20 x 0.42 s + 1 s, would not fit in the
        // 7.5 s left.
        let (points, left_off, asked) = drive(vec![8, 4096, 64], Vec::new(), 10.0);
        assert_eq!(asked, [8, 64]);
        assert_eq!(left_off, [4096]);
        assert_eq!(points.len(), 2);
        // With time for it, it runs.
        let (_, left_off, asked) = drive(vec![8, 4096, 64], Vec::new(), 12.0);
        assert_eq!(asked, [8, 64, 4096]);
        assert!(left_off.is_empty());
        // No time at all still measures one point.
        let (points, left_off, _) = drive(vec![8, 64], Vec::new(), 0.0);
        assert_eq!(points.len(), 1);
        assert_eq!(left_off, [64]);
    }

    #[test]
    fn a_failed_ladder_trial_adds_no_point() {
        let mut machine = LadderMachine::new(vec![8, 16], Vec::new(), 10);
        assert_eq!(machine.next_trial(100.0, 1.0), Some(8));
        machine.tell(8, None);
        assert_eq!(machine.next_trial(100.0, 1.0), Some(16));
        machine.tell(16, Some(f64::NAN));
        assert_eq!(machine.next_trial(100.0, 1.0), None);
        let (points, left_off) = machine.finish(Some(point(32, 10.0)));
        assert_eq!(points, [point(32, 10.0)]);
        assert!(left_off.is_empty());
    }
}
