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
        let steps = runs.steps(curve, batch, self.stepping_share(&runs.budget));
        let lr_search = &self.spec.policy.lr_search;
        let mut machine = ConfirmMachine::new(
            range.center_lr,
            lr_search.confirmation_candidates,
            lr_search.max_extensions as usize,
            lr_search.candidate_spacing,
        );
        let mut samples: Vec<(f64, GradNoiseSample)> = Vec::new();
        let seed = self.spec.search.seed;
        while let Some(ask) = machine.next_run() {
            let lr = ask.learning_rate;
            if !self.run_fits(Phase::LrConfirmation, self.seconds_for(curve, batch, steps)) {
                let what = format!("LR {lr:.2e} at batch {batch} was not confirmed");
                if ask.extension {
                    self.skipped.push(format!(
                        "{what} (the best sat at an edge; no time to look further)"
                    ));
                } else {
                    self.cut_short(Phase::LrConfirmation, what);
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
        let mut rationale = Vec::new();
        if let Some(best) = &best {
            rationale.push(format!(
                "at the reference batch {batch}, {} runs of {steps} steps put the best LR at {:.3e} (validation loss {:.4})",
                confirmations.len(),
                best.learning_rate,
                best.validation_loss
            ));
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
        let judge = |n: &NoiseScale| {
            if n.is_lower_bound() {
                ": the goodput model takes it as a bound, and the race reaches above it"
            } else if n.is_decisive() {
                ""
            } else {
                ": too uncertain to separate candidates, so the race decides over a wider spread"
            }
        };
        match &noise {
            Some(n) => rationale.push(format!(
                "gradient noise scale B_simple = {} samples, measured over training samples {}..{} ({} runs at batch {batch}, steps {}..{steps}; {} measurements against batch {}; McCandlish et al. 2018){}",
                n.describe(),
                n.after_samples,
                n.until_samples,
                good.len(),
                n.after_steps,
                n.measurements,
                n.small_batch,
                if preconditioned.is_some() { "" } else { judge(n) }
            )),
            None => rationale.push(
                "the gradient noise scale could not be measured (too little time, or tr(Sigma) not clearly above zero): the race decides".into(),
            ),
        }
        if let Some(p) = &preconditioned {
            rationale.push(format!(
                "preconditioned by Adam's sqrt(v) + eps, the noise scale is {} samples: Adam steps along the preconditioned gradient, so this one drives the model (AdaptDL's AdamGradientNoiseScale){}",
                p.describe(),
                judge(p)
            ));
        }
        ReferencePhase {
            best,
            runs: confirmations,
            noise,
            preconditioned,
            rationale,
        }
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
