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
        let as_point = |result: &TrialResult| CurvePoint {
            batch_size: result.batch_size,
            samples_per_second: result.samples_per_second.unwrap_or(0.0),
            source: PointSource::MaxFit,
        };
        let ladder = full_range_ladder(floor, top, policy.batch_multiple, policy.throughput_points);
        let reused: Vec<CurvePoint> = ladder
            .iter()
            .filter_map(|&b| reusable(b).map(as_point))
            .collect();
        let steps = policy.trials.throughput_steps;
        let mut machine = LadderMachine::new(ladder, reused, steps);
        let mut validating = false;
        while let Some(batch) = machine.next_trial(
            self.phase_left(Phase::Throughput).as_secs_f64(),
            self.overhead_seconds(),
        ) {
            let mut request = self.request(
                batch,
                steps,
                LrSchedule::Constant {
                    lr: probe_lr(self.spec),
                },
            );
            // The first ladder trial also validates, once, to time what
            // every training run's validation will cost before the runs are
            // planned (`Session::run_seconds`).
            request.record.validation_loss = self.validations.is_empty() && !validating;
            validating |= request.record.validation_loss;
            let result = self.trial(Phase::Throughput, request).await;
            machine.tell(batch, result.samples_per_second.filter(|_| result.is_ok()));
        }
        // The max fit's own speed, when it was measured and lies above.
        let above = reusable(fit.batch)
            .filter(|_| fit.batch > top)
            .map(as_point);
        let (points, left_off) = machine.finish(above);
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
