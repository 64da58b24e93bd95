//! Phase 6: LRs either side of the rule's at the race winner.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 6: LRs a half-decade either side of the winner's, with the
    /// winner's first seed (paired: same initialization and data order),
    /// so the LR is measured at the chosen batch rather than transferred.
    pub(in crate::search) async fn lr_check(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        raced: &RacePhase,
    ) -> CheckPhase {
        let mut check = CheckPhase {
            best: None,
            interval: None,
            runs: Vec::new(),
            rationale: Vec::new(),
        };
        let (Some(race), Some(lr)) = (&raced.race, raced.learning_rate) else {
            return check;
        };
        let Some(entry) = race
            .entries
            .iter()
            .find(|e| Some(e.batch_size) == race.winner)
        else {
            return check;
        };
        let Some(first) = entry.runs.first() else {
            return check;
        };
        let batch = entry.batch_size;
        let steps = entry.steps;
        let noise = entry.spread().unwrap_or(0.0);
        check.runs.push(Confirmation {
            batch_size: batch,
            learning_rate: lr,
            validation_loss: first.validation_loss,
            outcome: first.outcome,
            losses: first.losses.clone(),
            loss_steps: Vec::new(),
        });
        let mut lrs = vec![lr / LR_STEP, lr * LR_STEP];
        let mut index = 0;
        let mut extended = false;
        while index < lrs.len() {
            let candidate = lrs[index];
            index += 1;
            if !self.run_fits(Phase::LrCheck, self.seconds_for(curve, batch, steps)) {
                // The check refines an LR the race already used: skipping
                // it leaves a tested answer, so it is noted, not partial.
                self.skipped.push(format!(
                    "LR {candidate:.2e} at batch {batch} was not checked (no time)"
                ));
                break;
            }
            let result = self
                .training_run(Phase::LrCheck, batch, candidate, steps, first.seed)
                .await;
            check.runs.push(Confirmation {
                batch_size: batch,
                learning_rate: candidate,
                validation_loss: result.validation_loss.filter(|_| result.is_ok()),
                outcome: result.outcome,
                losses: result.losses,
                loss_steps: Vec::new(),
            });
            if index == lrs.len() && !extended {
                // A clear win at an edge: one more step that way.
                if let Some(best) = best_lr(&check.runs) {
                    let center_loss = first.validation_loss.unwrap_or(f64::INFINITY);
                    if best.validation_loss < center_loss - noise.max(1e-9) {
                        let min = lrs.iter().copied().fold(lr, f64::min);
                        let max = lrs.iter().copied().fold(lr, f64::max);
                        if best.best_tested_lr == min {
                            lrs.push(min / LR_STEP);
                            extended = true;
                        } else if best.best_tested_lr == max {
                            lrs.push(max * LR_STEP);
                            extended = true;
                        }
                    }
                }
            }
        }
        let Some(best) = best_lr(&check.runs) else {
            return check;
        };
        let center_loss = first.validation_loss.unwrap_or(f64::INFINITY);
        // One seed must beat the race's seed-to-seed noise to move the LR
        // off the raced one towards an edge; a bowl around the raced LR
        // refines it to the bowl's bottom.
        let threshold = noise.max(0.002 * center_loss.abs());
        let raced = BestLr {
            batch_size: batch,
            learning_rate: lr,
            best_tested_lr: lr,
            validation_loss: center_loss,
            interpolated: false,
        };
        let chosen = if best.best_tested_lr == lr || best.validation_loss < center_loss - threshold
        {
            best.clone()
        } else {
            raced
        };
        check.interval = lr_interval(&check.runs, threshold)
            .map(|(lo, hi)| (lo.min(chosen.learning_rate), hi.max(chosen.learning_rate)));
        check.rationale.push(format!(
            "LR check at batch {batch}: {} runs from {:.2e} to {:.2e} with the race's first seed; best {:.3e} (loss {:.4} against {:.4} at the raced LR; seed noise {:.4}), so the LR is {:.3e}",
            check.runs.len(),
            check.runs.iter().map(|r| r.learning_rate).fold(f64::MAX, f64::min),
            check.runs.iter().map(|r| r.learning_rate).fold(0.0, f64::max),
            best.learning_rate,
            best.validation_loss,
            center_loss,
            noise,
            chosen.learning_rate
        ));
        if let Some(reference_best) = &reference.best {
            if reference_best.batch_size != batch {
                check.rationale.push(format!(
                    "best LR {:.3e} at batch {} and {:.3e} at batch {batch}",
                    reference_best.learning_rate, reference_best.batch_size, chosen.learning_rate
                ));
            }
        }
        check.best = Some(chosen);
        check
    }
}
