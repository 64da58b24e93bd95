//! Phase 3: the LR range test at the reference batch.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 3: an LR range test at the reference batch (see
    /// [`RangeTestMachine`]).
    pub(in crate::search) async fn lr_range_test(&mut self, curve: &CurvePhase) -> RangePhase {
        let lr = &self.spec.policy.lr_search;
        let mut machine = RangeTestMachine::new(
            curve.floor,
            curve.top,
            curve.plateau,
            self.spec.policy.batch_multiple,
            lr.sweep_steps,
            lr.min_lr,
            lr.max_lr,
        );
        let reference_batch = machine.reference_batch();
        let mut findings = Vec::new();
        if let Some(ask) = machine.next_trial(
            curve.step_seconds(reference_batch),
            self.overhead_seconds(),
            self.phase_left(Phase::LrRangeTest).as_secs_f64(),
            self.time_left().as_secs_f64(),
        ) {
            let schedule = LrSchedule::ExponentialSweep {
                min_lr: ask.min_lr,
                max_lr: ask.max_lr,
            };
            let mut request = self.request(ask.batch_size, ask.steps, schedule);
            request.warmup_steps = 1;
            let result = self.trial(Phase::LrRangeTest, request).await;
            machine.tell(result.outcome, &result.learning_rates, &result.losses);
        }
        if machine.skipped() {
            self.cut_short(Phase::LrRangeTest, Gap::RangeTestSkipped);
        }
        let test = machine.finish();
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
