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
        let mut rationale = Vec::new();
        if let Some(cap) = cap.as_ref().filter(|c| c.binding) {
            rationale.push(format!(
                "the training set of {} samples caps the batch at {} ({} updates per epoch at least); the max fit of {} is reported but not used",
                cap.training_samples, cap.largest_batch, cap.min_updates_per_epoch, fit.batch
            ));
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
                    source: crate::search::throughput::PointSource::MaxFit,
                });
                continue;
            }
            let model = StepTimeModel::fit(&points);
            let estimate = speed_at(&points, model.as_ref(), batch)
                .map_or(0.0, |s| f64::from(steps) * batch as f64 / s)
                + self.overhead_seconds();
            if self.phase_left(Phase::Throughput).as_secs_f64() < estimate && !points.is_empty() {
                self.cut_short(
                    Phase::Throughput,
                    format!("batch {batch} was left off the throughput curve to stay in the time budget"),
                );
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
                    source: crate::search::throughput::PointSource::Ladder,
                });
            }
        }
        // The max fit's own speed, when it was measured and lies above.
        if let Some(result) = reusable(fit.batch).filter(|_| fit.batch > top) {
            points.push(CurvePoint {
                batch_size: fit.batch,
                samples_per_second: result.samples_per_second.unwrap_or(0.0),
                source: crate::search::throughput::PointSource::MaxFit,
            });
        }
        points.sort_by_key(|p| p.batch_size);
        points.dedup_by_key(|p| p.batch_size);
        let model = StepTimeModel::fit(&points);
        let usable: Vec<CurvePoint> = points
            .iter()
            .filter(|p| p.batch_size <= top)
            .cloned()
            .collect();
        let plateau_batch = plateau(&usable, policy.throughput_gain_threshold);
        if let Some(m) = &model {
            rationale.push(format!(
                "step time t(B) = {:.2} ms + B / {:.0} samples/s fits the {} measured points within {:.0}%",
                m.fixed_seconds * 1e3,
                m.samples_per_second_limit,
                m.points,
                m.max_relative_error * 100.0
            ));
        }
        if let Some(p) = plateau_batch {
            rationale.push(format!(
                "throughput comes within {:.0}% of its best from batch {p} on ({:.0} samples/s)",
                policy.throughput_gain_threshold * 100.0,
                expected_speed(&points, p).unwrap_or(0.0)
            ));
        }
        CurvePhase {
            points,
            model,
            plateau: plateau_batch,
            floor,
            top,
            rationale,
        }
    }
}
