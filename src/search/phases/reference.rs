//! Phase 4: the best LR at the reference batch, confirmed by runs of the
//! planned length, and the gradient noise scale they measure.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 4: the best LR at the reference batch from runs of the planned
    /// length, more candidates further out while the best sits at an edge;
    /// their last steps give the gradient noise scale after training.
    pub(in crate::search) async fn confirm_reference_lr(
        &mut self,
        curve: &CurvePhase,
        range: &RangePhase,
        runs: &RunPlan,
    ) -> ReferencePhase {
        let batch = range.reference_batch;
        let steps = runs.steps(curve, batch);
        let lr_search = &self.spec.policy.lr_search;
        let mut machine = ConfirmMachine::new(
            range.center_lr,
            lr_search.confirmation_candidates,
            lr_search.max_extensions as usize,
            lr_search.candidate_spacing,
            lr_search.skip_past_rise,
        );
        let mut samples: Vec<(f64, GradNoiseSample)> = Vec::new();
        let seed = self.spec.search.seed;
        let mut left_out: Vec<SkippedLr> = Vec::new();
        let mut refused = None;
        loop {
            let skipped = machine.skipped().len();
            let ask = machine.next_run();
            let newly = &machine.skipped()[skipped..];
            if !newly.is_empty() {
                left_out.extend_from_slice(newly);
                // Their planned time goes to the phases after them.
                self.book.forgo(Phase::LrConfirmation, newly.len() as f64);
                self.replan_from_book();
            }
            let Some(ask) = ask else { break };
            let lr = ask.learning_rate;
            let estimate = self.seconds_for(curve, batch, steps);
            let fits = if ask.extension {
                self.extension_fits(estimate, runs)
            } else {
                self.run_fits(Phase::LrConfirmation, estimate)
            };
            if !fits {
                if ask.extension {
                    self.skipped.push(Gap::NotConfirmed {
                        lr,
                        batch,
                        extension: true,
                    });
                } else {
                    // Judged after the race and check: their runs may show
                    // the best LR stands without these.
                    let mut lrs = vec![lr];
                    lrs.extend(machine.planned_left());
                    refused = Some(RefusedLrs { batch, steps, lrs });
                }
                break;
            }
            let result = self
                .training_run(Phase::LrConfirmation, batch, lr, steps, seed)
                .await;
            let loss = result.validation_loss.filter(|_| result.is_ok());
            if let (Some(loss), Some(sample)) = (loss, result.grad_noise.clone()) {
                samples.push((loss, sample));
            }
            machine.tell(Confirmation {
                batch_size: batch,
                learning_rate: lr,
                validation_loss: loss,
                outcome: result.outcome,
                losses: result.losses,
                loss_steps: Vec::new(),
            });
        }
        let confirmations = machine.into_runs();
        let best = best_lr(&confirmations);
        let mut findings = Vec::new();
        if let Some(best) = &best {
            findings.push(Finding::ReferenceLr {
                batch,
                runs: confirmations.len(),
                steps,
                lr: best.learning_rate,
                loss: best.validation_loss,
            });
        }
        if !left_out.is_empty() {
            findings.push(Finding::LrSkipped {
                batch,
                skipped: left_out,
            });
        }
        // The noise scale from the runs that trained well: a run whose LR
        // barely moved the weights is still at its early, smaller scale.
        let best_loss = best.as_ref().map_or(f64::INFINITY, |b| b.validation_loss);
        let good: Vec<GradNoiseSample> = samples
            .iter()
            .filter(|(loss, _)| *loss <= best_loss * 1.05 + 1e-9)
            .map(|(_, s)| s.clone())
            .collect();
        let noise = noise_at(&good, batch, steps);
        let pre: Vec<GradNoiseSample> = good.iter().filter_map(|s| s.preconditioned()).collect();
        let preconditioned = (pre.len() == good.len())
            .then(|| noise_at(&pre, batch, steps))
            .flatten();
        findings.push(match &noise {
            Some(n) => Finding::Noise {
                noise: n.clone(),
                runs: good.len(),
                batch,
                steps,
                drives: preconditioned.is_none(),
            },
            None => Finding::NoNoise,
        });
        if let Some(p) = &preconditioned {
            findings.push(Finding::Preconditioned(p.clone()));
        }
        ReferencePhase {
            best,
            runs: confirmations,
            noise,
            preconditioned,
            findings,
            refused,
        }
    }

    /// Judges the planned confirmations the budget refused, once the race
    /// and the check have run: one stands settled where the same run was
    /// made later and did not beat the best confirmation, or where it lies
    /// past a run whose loss rose from the best's by more than the race's
    /// seed noise allows ([`settle_refused`]); it is then listed as left
    /// out. Any other cuts the confirmation short (a partial search): the
    /// race's LRs were transferred from a best LR it could have moved.
    pub(in crate::search) fn settle_refused(
        &mut self,
        reference: &ReferencePhase,
        raced: &RacePhase,
    ) {
        let Some(refused) = &reference.refused else {
            return;
        };
        let clear_rise = raced
            .race
            .as_ref()
            .and_then(|r| race::clear_paired_rise(&r.entries));
        let seed = self.spec.search.seed;
        let mut unsettled = None;
        for &lr in &refused.lrs {
            let later = self.made_run(refused.batch, lr, refused.steps, seed);
            match settle_refused(lr, &reference.runs, later.map(|(_, l)| l), clear_rise) {
                Some(settled) => self.skipped.push(Gap::SettledConfirmation {
                    lr,
                    batch: refused.batch,
                    settled,
                    by: later.map(|(p, _)| p),
                }),
                None => {
                    unsettled.get_or_insert(lr);
                }
            }
        }
        if let Some(lr) = unsettled {
            self.cut_short(
                Phase::LrConfirmation,
                Gap::NotConfirmed {
                    lr,
                    batch: refused.batch,
                    extension: false,
                },
            );
        }
    }

    /// Whether a confirmation past an edge the best LR sits at may run. It
    /// outranks the race's third candidate and the LR check: a race run at
    /// an LR off its bowl compares the batches' tolerance of a bad LR, not
    /// the batches (measured on the quick-start job's bench settings: the
    /// best sat at the lower edge, the extension was left out for the
    /// race's share, and every race run trained at 3-6x the best LR). So
    /// it runs whenever the time left, at what the runs so far cost, still
    /// affords it and the leanest race (two candidates, the policy's
    /// seeds); the race is then re-planned (`replan_from_runs`).
    fn extension_fits(&self, estimate: f64, runs: &RunPlan) -> bool {
        // Where the race is not re-planned, the extension keeps to its
        // phase's share.
        if !runs.replanned_from_costs() {
            return self.run_fits(Phase::LrConfirmation, estimate);
        }
        // The dearest confirmation, not the median: identical runs here
        // cost 1.7-2.6 s, and an extension on the median left the
        // transformer's race a seed short.
        let cost = self
            .confirmation_costs()
            .into_iter()
            .fold(estimate, f64::max);
        let leanest_race = 2.0 * f64::from(self.spec.policy.race.seeds.min(runs.seeds));
        self.time_left().as_secs_f64() >= cost * (1.0 + leanest_race)
    }

    /// The exponent the race transfers the reference LR with.
    pub(super) fn transfer_alpha(&self) -> f64 {
        match self.spec.policy.lr_scaling {
            LrScaling::Linear => 1.0,
            LrScaling::Sqrt => 0.5,
            LrScaling::Measured => textbook_alpha(self.spec),
        }
    }
}
