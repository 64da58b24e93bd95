//! Phase 1: the largest batch that fits under the memory budget, and the cap
//! the training data puts on the batch.

use super::*;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 1: the largest batch that fits under the memory budget, never
    /// beyond the training set.
    pub(in crate::search) async fn max_fit(&mut self) -> Result<FitPhase, SearchError> {
        let spec = self.spec;
        let policy = &spec.policy;
        let element_bytes = match (self.ctx.device, spec.precision) {
            (TrialDevice::Cuda(_), Precision::F16 | Precision::Bf16) => 2.0,
            _ => 4.0,
        };
        let mut search = MaxFitSearch::new(
            spec.search.min_batch,
            spec.search.max_batch,
            policy.batch_multiple,
            self.budget_bytes,
            prior_bytes_per_sample(spec, element_bytes),
        );
        if let Some(size) = spec.training.dataset_size {
            search.cap_at_dataset(size);
        }
        let mut results: Vec<TrialResult> = Vec::new();
        // The smallest batch passed over because its trial would overrun.
        let mut passed_over: Option<u64> = None;
        let steps = policy.trials.fit_steps;
        while let Next::Try(proposed) = search.next_step() {
            // A trial's cost grows with its batch: from the largest fit's
            // speed, a trial that would overrun the phase is not started.
            let speed = results
                .iter()
                .filter(|r| r.is_ok())
                .max_by_key(|r| r.batch_size)
                .and_then(|r| r.samples_per_second);
            let estimate = speed.map_or(0.0, |s| f64::from(steps) * proposed as f64 / s);
            let left = self.phase_left(Phase::MaxFit).as_secs_f64();
            let batch = proposed;
            if (left <= 0.0 || estimate > left * 1.5) && search.result().batch_size.is_some() {
                // Not replaced by a smaller probe that fits the time left:
                // tried on the advice bench, the bigger max fit it found
                // made the ladder, race and LR check that follow cost more
                // than the phases had, and the advice got worse (README).
                passed_over = Some(proposed);
                break;
            }
            let mut attempt = 0;
            let (result, probe) = loop {
                attempt += 1;
                let mut request =
                    self.request(batch, steps, LrSchedule::Constant { lr: probe_lr(spec) });
                request.warmup_steps = 1;
                let result = self.trial(Phase::MaxFit, request).await;
                if result.outcome == Outcome::InvalidRequest {
                    return Err(SearchError::InvalidRequest(
                        result.reason.unwrap_or_default(),
                    ));
                }
                let reason = || {
                    format!(
                        "{}: {}",
                        result.outcome,
                        result.reason.clone().unwrap_or_default()
                    )
                };
                let probe = match result.outcome {
                    Outcome::Ok => Probe::Fits {
                        peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                    },
                    Outcome::OutOfMemory => Probe::OutOfMemory {
                        reason: reason(),
                        peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                    },
                    _ => Probe::Fails {
                        reason: reason(),
                        out_of_memory: false,
                    },
                };
                // A crash or timeout may be a fluke: run the same batch once more.
                if attempt == 1 && search.should_retry(batch, &probe) && !self.time_left().is_zero()
                {
                    continue;
                }
                break (result, probe);
            };
            if let Some(samples) = result.train_samples.or(self.train_samples) {
                if spec.training.dataset_size.is_none() {
                    search.cap_at_dataset(samples);
                }
            }
            search.record(batch, probe);
            results.push(result);
        }
        let max_fit = search.result();
        if let (Some(over), Some(answer)) = (passed_over, max_fit.batch_size) {
            // Unless a failure between the answer and the passed-over batch
            // closed the bracket, memory may allow more than was tried.
            let bracketed = max_fit
                .first_failure
                .as_ref()
                .is_some_and(|(fail, _)| *fail <= over);
            if !bracketed {
                self.cut_short(
                    Phase::MaxFit,
                    format!("the max-fit search stopped at batch {answer}: a trial of batch {over} would overrun its share of the budget, so the largest fitting batch may be larger"),
                );
            }
        }
        let Some(batch) = max_fit.batch_size else {
            return Err(SearchError::NothingFits {
                min_batch: spec.search.min_batch,
                budget: self.budget_bytes,
                reason: max_fit
                    .first_failure
                    .as_ref()
                    .map(|(b, r)| format!("batch {b}: {r}"))
                    .unwrap_or_default(),
            });
        };
        let mut rationale = vec![match &max_fit.first_failure {
            Some((fail, why)) => format!(
                "largest batch that fits: {batch} (peak {}) under a budget of {} ({} limit from {} less {:.0}% headroom); {fail} failed ({why}); {} trials",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes),
                ByteSize(self.ctx.memory_limit_bytes),
                self.ctx.memory_limit_source,
                policy.memory_headroom_fraction * 100.0,
                max_fit.trials
            ),
            None if max_fit.capped_by_dataset => format!(
                "largest batch that fits: {batch}, the whole training set (peak {} of a {} budget: memory allows more, the data does not)",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes)
            ),
            None if max_fit.capped_by_max_batch => format!(
                "largest batch that fits: {batch}, the spec's search.max_batch (peak {} of a {} budget)",
                ByteSize(max_fit.peak_bytes.unwrap_or(0)),
                ByteSize(self.budget_bytes)
            ),
            None => format!(
                "largest batch that fits: {batch} (the search ended before a larger batch failed); {} trials",
                max_fit.trials
            ),
        }];
        if !max_fit.flaky_batch_sizes.is_empty() {
            rationale.push(format!(
                "batch sizes {:?} fitted once and failed on a re-run, so they were not trusted",
                max_fit.flaky_batch_sizes
            ));
        }
        Ok(FitPhase {
            max_fit,
            batch,
            results,
            rationale,
        })
    }

    /// The data's cap on every batch the advice may use.
    pub(in crate::search) fn batch_cap(&self, fit: &FitPhase) -> Option<BatchCap> {
        let samples = self.spec.training.dataset_size.or(self.train_samples)?;
        let per_epoch = self.spec.policy.min_updates_per_epoch.max(1);
        let largest = round_down(
            (samples / per_epoch).max(self.spec.search.min_batch.max(1)),
            self.spec.policy.batch_multiple,
        );
        Some(BatchCap {
            training_samples: samples,
            min_updates_per_epoch: per_epoch,
            largest_batch: largest,
            binding: largest < fit.batch,
        })
    }
}
