//! Phase 2: the throughput curve, from the max-fit trials and a geometric
//! ladder of short trials.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 2: samples per second on a geometric ladder over the whole
    /// usable range, reusing max-fit trials, and the step-time model.
    pub(in crate::search) async fn throughput_curve(
        &mut self,
        fit: &FitPhase,
        cap: &Option<BatchCap>,
    ) -> CurvePhase {
        let policy = &self.spec.policy;
        let floor = self.spec.search.min_batch.max(1);
        let top = cap
            .as_ref()
            .map_or(fit.batch, |c| c.largest_batch.min(fit.batch))
            .max(floor);
        let mut points: Vec<CurvePoint> = Vec::new();
        let mut left_off: Vec<u64> = Vec::new();
        let mut findings = Vec::new();
        if let Some(cap) = cap.as_ref().filter(|c| c.binding) {
            findings.push(Finding::DataCap {
                cap: cap.clone(),
                max_fit: fit.batch,
            });
        }
        let reusable = |batch: u64| {
            fit.results.iter().rev().find(|r| {
                r.batch_size == batch
                    && r.is_ok()
                    && r.samples_per_second.is_some()
                    && r.steps_completed > MIN_TIMED_STEPS
            })
        };
        let mut ladder = full_range_ladder(floor, top, policy.batch_multiple, LADDER_POINTS);
        // The small end first: those trials are cheap and make the model
        // that estimates the big ones.
        ladder.sort_unstable();
        let steps = policy.trials.throughput_steps;
        for batch in ladder {
            if let Some(result) = reusable(batch) {
                points.push(CurvePoint {
                    batch_size: batch,
                    samples_per_second: result.samples_per_second.unwrap_or(0.0),
                    source: PointSource::MaxFit,
                });
                continue;
            }
            let model = StepTimeModel::fit(&points);
            let estimate = speed_at(&points, model.as_ref(), batch)
                .map_or(0.0, |s| f64::from(steps) * batch as f64 / s)
                + self.overhead_seconds();
            if self.phase_left(Phase::Throughput).as_secs_f64() < estimate && !points.is_empty() {
                left_off.push(batch);
                continue;
            }
            let result = self
                .trial(
                    Phase::Throughput,
                    self.request(
                        batch,
                        steps,
                        LrSchedule::Constant {
                            lr: probe_lr(self.spec),
                        },
                    ),
                )
                .await;
            if let (true, Some(speed)) = (result.is_ok(), result.samples_per_second) {
                points.push(CurvePoint {
                    batch_size: batch,
                    samples_per_second: speed,
                    source: PointSource::Ladder,
                });
            }
        }
        // The max fit's own speed, when it was measured and lies above.
        if let Some(result) = reusable(fit.batch).filter(|_| fit.batch > top) {
            points.push(CurvePoint {
                batch_size: fit.batch,
                samples_per_second: result.samples_per_second.unwrap_or(0.0),
                source: PointSource::MaxFit,
            });
        }
        points.sort_by_key(|p| p.batch_size);
        points.dedup_by_key(|p| p.batch_size);
        // A batch left off between two measured ones is interpolated
        // between them: a refinement left out. One beyond them all would
        // be extrapolated: the curve is cut short.
        for batch in left_off {
            let gap = Gap::OffTheCurve { batch };
            let bracketed = points.first().is_some_and(|p| p.batch_size < batch)
                && points.last().is_some_and(|p| p.batch_size > batch);
            if bracketed {
                self.skipped.push(gap);
            } else {
                self.cut_short(Phase::Throughput, gap);
            }
        }
        let model = StepTimeModel::fit(&points);
        let usable: Vec<CurvePoint> = points
            .iter()
            .filter(|p| p.batch_size <= top)
            .cloned()
            .collect();
        let plateau_batch = plateau(&usable, policy.throughput_gain_threshold);
        if let Some(m) = &model {
            findings.push(Finding::StepTime(*m));
        }
        if let Some(p) = plateau_batch {
            findings.push(Finding::Plateau {
                batch: p,
                threshold: policy.throughput_gain_threshold,
                speed: expected_speed(&points, p).unwrap_or(0.0),
            });
        }
        CurvePhase {
            points,
            model,
            plateau: plateau_batch,
            floor,
            top,
            findings,
        }
    }
}
