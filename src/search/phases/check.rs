//! Phase 6: LRs either side of the rule's at the race winner.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 6: LRs a step (`lr_search.candidate_spacing`) either side of
    /// the winner's, with its first `lr_search.check_seeds` race seeds
    /// (paired: same initialization and data order),
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
            findings: Vec::new(),
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
        if entry.runs.is_empty() {
            return check;
        }
        let batch = entry.batch_size;
        let steps = entry.steps;
        // The noise of a paired difference, from the whole race with seeds
        // as blocks (the check's runs pair with the raced ones on their
        // seeds, so a seed's shared luck cancels); without blocks, the seed
        // spread pooled over the candidates in contention (the winner and
        // those tied with it): the winner's own two seeds give one degree
        // of freedom, and a pair that agreed by chance let the check move
        // the LR on a difference of nothing.
        let mut contention = race::tied_with_best(&race.entries);
        if let Some(winner) = race.entries.iter().position(|e| e.batch_size == batch) {
            if !contention.contains(&winner) {
                contention.push(winner);
            }
        }
        let noise = race::paired_noise(&race.entries, &contention).unwrap_or(0.0);
        let raced = entry
            .runs
            .iter()
            .map(|run| {
                (
                    run.seed,
                    Confirmation {
                        batch_size: batch,
                        learning_rate: lr,
                        validation_loss: run.validation_loss,
                        outcome: run.outcome,
                        losses: run.losses.clone(),
                        loss_steps: Vec::new(),
                    },
                )
            })
            .collect();
        // One seed let a single lucky run move the LR a half-decade (the
        // advice's LR spread 11-13x across repeated searches).
        let lr_search = &self.spec.policy.lr_search;
        let mut machine = CheckMachine::new(
            raced,
            noise,
            lr_search.check_seeds as usize,
            lr_search.candidate_spacing,
        );
        while let Some(ask) = machine.next_run() {
            let candidate = ask.learning_rate;
            // At what the race's runs at this batch cost, when more than
            // the curve's estimate: a check run started on the estimate
            // was killed at the budget's end (PARTIAL).
            let price = self.race_run_price(curve, batch, candidate, steps, ask.seed);
            if !self.run_fits(Phase::LrCheck, price) {
                // The check refines an LR the race already used: skipping
                // it leaves a tested answer, so it is noted, not partial.
                self.skipped.push(Gap::NotChecked {
                    lr: candidate,
                    batch,
                    seed: ask.seed,
                });
                break;
            }
            let result = self
                .training_run(Phase::LrCheck, batch, candidate, steps, ask.seed)
                .await;
            machine.tell(
                ask,
                Confirmation {
                    batch_size: batch,
                    learning_rate: candidate,
                    validation_loss: result.validation_loss.filter(|_| result.is_ok()),
                    outcome: result.outcome,
                    losses: result.losses,
                    loss_steps: Vec::new(),
                },
            );
        }
        let (finding, runs) = machine.finish();
        check.runs = runs;
        let Some(finding) = finding else {
            return check;
        };
        let chosen = finding.chosen;
        check.interval = finding.interval;
        check.findings.push(Finding::Check {
            batch,
            runs: finding.runs,
            lowest: check
                .runs
                .iter()
                .map(|r| r.learning_rate)
                .fold(f64::MAX, f64::min),
            highest: check
                .runs
                .iter()
                .map(|r| r.learning_rate)
                .fold(0.0, f64::max),
            seeds: finding.seeds,
            best_lr: finding.best.learning_rate,
            best_loss: finding.best.validation_loss,
            raced_loss: finding.raced_loss,
            noise,
            held: finding.best.best_tested_lr != chosen.best_tested_lr,
            lr: chosen.learning_rate,
        });
        if let Some(reference_best) = &reference.best {
            if reference_best.batch_size != batch {
                check.findings.push(Finding::BestLrs {
                    reference_lr: reference_best.learning_rate,
                    reference_batch: reference_best.batch_size,
                    lr: chosen.learning_rate,
                    batch,
                });
            }
        }
        check.best = Some(chosen);
        check
    }
}
