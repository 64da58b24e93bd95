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
        // The highest usable cap set since the last trial: a cap is raised
        // only past it, which ends the loop where no trial can run between
        // a cap and its raise (a bracket rounding leaves nothing in).
        let mut highest_cap = 0;
        loop {
            let answer = search.result().batch_size;
            let proposed = match search.next_step() {
                Next::Try(batch) => batch,
                Next::Done => {
                    // A usable cap estimated from fewer probes rises as
                    // larger ones time the step better.
                    // Raised whether or not its probe is affordable: the
                    // probes below it are then judged as any other (a
                    // usable range wider than the time allows is probed
                    // as far as the time allows, as before the cap).
                    let raised = search.usable_cap().zip(answer).and_then(|(cap, answer)| {
                        self.usable_target(&results, answer)
                            .filter(|&raised| raised > cap.max(highest_cap))
                    });
                    match raised {
                        Some(raised) => {
                            highest_cap = raised;
                            search.cap_at_usable(raised);
                            continue;
                        }
                        None => break,
                    }
                }
            };
            // A trial's cost grows with its batch: from the largest fit's
            // speed, a trial that would overrun the phase is not started.
            let estimate =
                fit_speed(&results).map_or(0.0, |s| f64::from(steps) * proposed as f64 / s);
            let left = self.phase_left(Phase::MaxFit).as_secs_f64();
            let batch = proposed;
            if let Some(answer) = answer.filter(|_| left <= 0.0 || estimate > left) {
                // Not replaced by just any smaller probe that fits the time
                // left: tried on the advice bench, the bigger max fit it
                // found made the ladder, race and LR check cover a range
                // the advice could not use, and the advice got worse
                // (README). The largest batch the advice may use is worth
                // its probe: the phases after it are planned for that
                // range anyway. A probe past the phase's time but within
                // half as much again is made only where no cheaper one
                // serves the advice (on the transformer, one such probe of
                // 400 took a quarter of a 14-s search whose runs could use
                // 48 at most).
                let usable = self.usable_probe(&results, answer, proposed, steps, left);
                if left <= 0.0 || estimate > left * 1.5 || usable.is_some() {
                    passed_over = passed_over.or(Some(proposed));
                    match usable {
                        Some(cap) => {
                            highest_cap = highest_cap.max(cap);
                            search.cap_at_usable(cap);
                            continue;
                        }
                        None => break,
                    }
                }
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
            highest_cap = 0;
            results.push(result);
        }
        let mut max_fit = search.result();
        if let Some(answer) = max_fit.batch_size.filter(|_| max_fit.capped_by_usable) {
            // The cap the search stopped at was estimated from fewer
            // probes, or limited by the time: it is the advice's only if
            // the cap over every probe is no larger.
            max_fit.capped_by_usable = self
                .batch_cap_over(&results, answer)
                .is_some_and(|cap| cap.largest_batch <= answer);
        }
        // Unless a failure between the answer and the passed-over batch
        // closed the bracket, memory may allow more than was tried; whether
        // that matters depends on the cap (`note_max_fit_stop`).
        let stopped = match (passed_over, max_fit.batch_size) {
            (Some(over), Some(answer))
                if max_fit
                    .first_failure
                    .as_ref()
                    .is_none_or(|(fail, _)| *fail > over) =>
            {
                Some((answer, over))
            }
            _ => None,
        };
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
        let mut findings = vec![Finding::MaxFit {
            fit: max_fit.clone(),
            limit_bytes: self.ctx.memory_limit_bytes,
            limit_source: self.ctx.memory_limit_source.to_string(),
            headroom: policy.memory_headroom_fraction,
        }];
        if !max_fit.flaky_batch_sizes.is_empty() {
            findings.push(Finding::FlakyBatches(max_fit.flaky_batch_sizes.clone()));
        }
        Ok(FitPhase {
            max_fit,
            batch,
            results,
            stopped,
            findings,
        })
    }

    /// The batch to probe instead of one that would overrun the phase:
    /// the largest the advice may use, or the largest below it whose probe
    /// fits the phase's `left` seconds, when that lies above `answer` and
    /// below `below`.
    fn usable_probe(
        &self,
        results: &[TrialResult],
        answer: u64,
        below: u64,
        steps: u32,
        left: f64,
    ) -> Option<u64> {
        let target = self.usable_target(results, answer)?;
        // The largest fit's speed understates a larger batch's: the
        // estimate errs towards a smaller probe.
        let affordable = left * fit_speed(results)? / f64::from(steps.max(1));
        let affordable = round_down(affordable.max(0.0) as u64, self.spec.policy.batch_multiple);
        let target = target.min(affordable);
        (target > answer && target < below && left > 0.0).then_some(target)
    }

    /// The largest batch the advice may use, from the max-fit trials so
    /// far (`answer`: the largest that fitted). A wall-clock run's cap
    /// needs the step timed at two batches: before that, the batch to
    /// probe is twice `answer` (within the data's cap), which times the
    /// second.
    fn usable_target(&self, results: &[TrialResult], answer: u64) -> Option<u64> {
        let cap = self.batch_cap_over(results, answer)?.largest_batch;
        let timed = results
            .iter()
            .filter(|r| r.is_ok() && r.steps_completed > MIN_TIMED_STEPS)
            .count();
        Some(if self.wall_clock_run().is_some() && timed < 2 {
            round_down(answer.saturating_mul(2), self.spec.policy.batch_multiple).min(cap)
        } else {
            cap
        })
    }

    /// A max-fit search stopped before memory ran out (a bigger probe
    /// would overrun its share) cuts the advice short only when the range
    /// it left unexplored is one the advice could use: below the cap.
    pub(in crate::search) fn note_max_fit_stop(&mut self, fit: &FitPhase, cap: &Option<BatchCap>) {
        let Some((answer, over)) = fit.stopped else {
            return;
        };
        let gap = Gap::MaxFitStopped { answer, over };
        if cap.as_ref().is_some_and(|c| c.largest_batch <= answer) {
            self.skipped.push(gap);
        } else {
            self.cut_short(Phase::MaxFit, gap);
        }
    }

    /// The cap on every batch the advice may use: the data's (training
    /// samples / the fewest updates per epoch) and the real run's (its
    /// samples / the fewest updates per run), per device: with
    /// `world_size` replicas an update takes `world_size` batches.
    pub(in crate::search) fn batch_cap(&self, fit: &FitPhase) -> Option<BatchCap> {
        self.batch_cap_over(&fit.results, fit.batch)
    }

    /// The real run's length in time, where its runs are wall-clock ones.
    pub(super) fn wall_clock_run(&self) -> Option<std::time::Duration> {
        let spec = self.spec;
        spec.training
            .time_budget
            .filter(|_| spec.policy.objective != Objective::Generalization)
    }

    /// The cap over the max-fit trials `results`, whose largest fit is
    /// `fit_batch`.
    fn batch_cap_over(&self, results: &[TrialResult], fit_batch: u64) -> Option<BatchCap> {
        let samples = self.spec.training.dataset_size.or(self.train_samples)?;
        let policy = &self.spec.policy;
        let per_epoch = policy.min_updates_per_epoch.max(1);
        let floor = self.spec.search.min_batch.max(1);
        let world = u64::from(self.spec.training.world_size.max(1));
        let data = round_down(
            (samples / per_epoch / world).max(floor),
            policy.batch_multiple,
        );
        let run = self
            .run_cap(results, samples)
            .filter(|r| r.largest_batch < data);
        let largest = run.as_ref().map_or(data, |r| r.largest_batch);
        Some(BatchCap {
            training_samples: samples,
            min_updates_per_epoch: per_epoch,
            largest_batch: largest,
            binding: largest < fit_batch,
            run,
        })
    }

    /// The largest batch whose real run makes the policy's fewest updates
    /// per run. A wall-clock run's samples grow with the batch's speed, so
    /// they come from a step-time model of the max-fit trials; an
    /// equal-epoch run's are its epochs of the training set.
    fn run_cap(&self, results: &[TrialResult], samples: u64) -> Option<RunCap> {
        let spec = self.spec;
        let policy = &spec.policy;
        let updates = policy.min_updates_per_run.max(1);
        let floor = spec.search.min_batch.max(1);
        let (largest, run_samples) = match self.wall_clock_run() {
            Some(budget) => {
                let points: Vec<CurvePoint> = results
                    .iter()
                    .filter(|r| r.is_ok() && r.steps_completed > MIN_TIMED_STEPS)
                    .filter_map(|r| {
                        Some(CurvePoint {
                            batch_size: r.batch_size,
                            samples_per_second: r.samples_per_second?,
                            source: PointSource::MaxFit,
                        })
                    })
                    .collect();
                let model = StepTimeModel::fit(&points)?;
                // t(B) = fixed + B / limit <= T / updates.
                let step = budget.as_secs_f64() / updates as f64;
                let largest =
                    ((step - model.fixed_seconds) * model.samples_per_second_limit).floor();
                if !largest.is_finite() || largest < floor as f64 {
                    // No batch makes that many updates: there is no cap to
                    // state, and the smallest batches are what the race has.
                    return None;
                }
                let largest = largest as u64;
                let speed = speed_at(&points, Some(&model), largest.max(1)).unwrap_or(0.0);
                (largest, (speed * budget.as_secs_f64()) as u64)
            }
            None => {
                // Epochs of the training set, split across the replicas; a
                // wall-clock run's updates do not depend on them.
                let world = u64::from(spec.training.world_size.max(1));
                let run_samples = (spec.training.epochs * samples as f64) as u64;
                let largest = run_samples / updates / world;
                if largest < floor {
                    return None;
                }
                (largest, run_samples)
            }
        };
        Some(RunCap {
            run_samples,
            min_updates_per_run: updates,
            largest_batch: round_down(largest, policy.batch_multiple).max(floor),
        })
    }
}

/// Samples per second of the largest batch that ran.
fn fit_speed(results: &[TrialResult]) -> Option<f64> {
    results
        .iter()
        .filter(|r| r.is_ok())
        .max_by_key(|r| r.batch_size)
        .and_then(|r| r.samples_per_second)
}
