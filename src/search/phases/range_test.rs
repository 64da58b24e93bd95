//! Phase 3: the LR range test at the reference batch.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 3: an LR range test at the reference batch, the geometric
    /// middle of the range below the plateau, where candidates gather.
    pub(in crate::search) async fn lr_range_test(&mut self, curve: &CurvePhase) -> RangePhase {
        let upper = curve.plateau.unwrap_or(curve.top).min(curve.top);
        let middle = ((curve.floor as f64) * (upper as f64)).sqrt();
        let reference_batch = round_down(middle as u64, self.spec.policy.batch_multiple)
            .clamp(curve.floor, curve.top.max(curve.floor));
        let lr = &self.spec.policy.lr_search;
        let sweep = lr.sweep_steps;
        let estimate = curve
            .step_seconds(reference_batch)
            .map_or(0.0, |t| t * f64::from(sweep))
            + self.overhead_seconds();
        let mut findings = Vec::new();
        let test = if estimate > self.phase_left(Phase::LrRangeTest).as_secs_f64() * 2.0
            || self.time_left().is_zero()
        {
            self.cut_short(Phase::LrRangeTest, Gap::RangeTestSkipped);
            None
        } else {
            let schedule = LrSchedule::ExponentialSweep {
                min_lr: lr.min_lr,
                max_lr: lr.max_lr,
            };
            let mut request = self.request(reference_batch, sweep, schedule);
            request.warmup_steps = 1;
            let result = self.trial(Phase::LrRangeTest, request).await;
            if matches!(result.outcome, Outcome::Ok | Outcome::Diverged) {
                analyze_range_test(reference_batch, &result.learning_rates, &result.losses)
            } else {
                None
            }
        };
        let center_lr = match &test {
            Some(t) => {
                findings.push(Finding::RangeTest {
                    batch: reference_batch,
                    min_loss_lr: t.min_loss_lr,
                    suggestion: t.suggestion,
                });
                // The conservative suggestion: confirmation runs train far
                // longer than the sweep, and longer runs want lower LRs.
                t.suggestion
            }
            None => probe_lr(self.spec) * 10.0,
        };
        RangePhase {
            reference_batch,
            test,
            center_lr,
            findings,
        }
    }
}
