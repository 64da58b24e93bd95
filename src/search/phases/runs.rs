//! The plan of the training runs (their length, count and seeds) and the one
//! place a training run is started and charged to the budget.

use super::*;
use crate::search::findings::Reused;

impl<R: TrialRunner> Session<'_, R> {
    /// Plans the length of every training run from the time left: the
    /// confirmations, the race (with its extra seeds) and the LR check all
    /// share it, in proportion to how many runs each makes.
    pub(in crate::search) fn plan_training_runs(
        &mut self,
        curve: &CurvePhase,
        range: &RangePhase,
    ) -> RunPlan {
        let policy = &self.spec.policy;
        let race = &policy.race;
        let initial = f64::from(policy.lr_search.confirmation_candidates);
        let left = self.time_left().as_secs_f64();
        let train_samples = self
            .train_samples
            .or(self.spec.training.dataset_size)
            .unwrap_or(curve.top);
        let mut findings = Vec::new();
        let mut candidates = race.candidates;
        let mut seeds = race.seeds;
        // The full plan: two extensions past an edge, the race with its
        // extra seeds, the check's two LRs with each of its seeds.
        let mut confirmations = initial + 2.0;
        let mut racing = f64::from(candidates * race.seeds + 2 * race.extra_seeds);
        let mut checks = 2.0 * f64::from(policy.lr_search.check_seeds);
        let ramping = self.ramp_runs(seeds);
        let real_stepping = self.real_run_seconds(curve, range, train_samples);
        // The leanest plan: the initial confirmations, two seeds of two
        // candidates, one check.
        let leanest = initial + f64::from(2 * race.seeds.min(2)) + 1.0;
        // A run's training: the real run's, or the most the leanest plan
        // affords with the default validation set, if less.
        let longest = real_stepping.min(self.stepping_within(left / (leanest + ramping)));
        findings.extend(self.size_validation(longest));
        let per_run = left / (confirmations + racing + checks + ramping);
        let budget = if policy.objective == Objective::Generalization {
            // Equal epochs, each run priced at the batch it will train at:
            // the confirmations and the check at the reference batch, the
            // race (and a ramp) at candidates a factor of four around it,
            // the race's step without a decisive noise scale. Pricing every
            // run as one at a quarter of the reference batch, where samples
            // are slowest, left the digits MLP's search spending 2 s of its
            // 6.5 and training 1.3 of the job's 20 epochs.
            let job_epochs = self.spec.training.epochs;
            let pricing = self.epoch_pricing(curve, range, candidates as usize, train_samples);
            let plan_wall = |epochs: f64, confirmations: f64, racing: f64, checks: f64| {
                pricing.wall(
                    self,
                    curve,
                    epochs,
                    confirmations + checks,
                    racing + ramping,
                )
            };
            let epochs = if plan_wall(job_epochs, confirmations, racing, checks) <= left {
                job_epochs
            } else if let Some(plan) = (leanest as u32..(confirmations + racing + checks) as u32)
                .rev()
                .filter_map(|count| lean_plan(f64::from(count), initial, race))
                .find(|&(_, c, r, k)| plan_wall(job_epochs, c, r, k) <= left)
            {
                (candidates, confirmations, racing, checks) = plan;
                findings.push(Finding::JobEpochRuns {
                    epochs: job_epochs,
                    affordable: confirmations + racing + checks,
                    candidates,
                });
                job_epochs
            } else {
                let epochs = pricing.most_epochs(
                    self,
                    curve,
                    job_epochs,
                    confirmations + checks,
                    racing + ramping,
                    left,
                );
                findings.push(Finding::ShortEpochRuns {
                    epochs,
                    job_epochs,
                    reference: range.reference_batch,
                    race_batches: pricing.race_batches.clone(),
                });
                epochs
            };
            RaceBudget::Epochs { epochs }
        } else {
            // The real run's length: the job's own time budget when it has
            // one, else its epochs at the reference batch. The best batch
            // and LR depend on it (longer runs favour larger batches and
            // lower LRs), so runs train exactly that long whenever the
            // budget affords a lean plan at that length: the initial
            // confirmations, two seeds of two candidates, one check.
            let job_seconds = real_stepping;
            let source = if self.spec.training.time_budget.is_some() {
                RunLengthSource::TimeBudget
            } else {
                RunLengthSource::Epochs {
                    epochs: self.spec.training.epochs,
                    batch: range.reference_batch,
                }
            };
            let affordable_runs = (left / self.run_seconds(job_seconds)).floor();
            let lean = lean_plan(affordable_runs, initial, race);
            // A wall-clock run's length, which may include its overhead.
            let fill = self.stepping_within(per_run);
            let seconds = if job_seconds <= fill {
                findings.push(Finding::RealLengthRuns {
                    seconds: job_seconds,
                    source,
                });
                // Time the full plan leaves over (cheap trials: a persistent
                // command process, a fast model) buys the race more seeds,
                // which narrows the seed-to-seed spread its verdict rests on.
                let spare = affordable_runs - (confirmations + racing + checks + ramping);
                let more = ((spare / f64::from(candidates)).floor().max(0.0) as u32)
                    .min(race.max_seeds.saturating_sub(seeds));
                if more > 0 {
                    seeds += more;
                    racing += f64::from(more * candidates);
                    findings.push(Finding::MoreSeeds {
                        affordable: affordable_runs,
                        planned: confirmations + racing - f64::from(more * candidates) + checks,
                        seeds,
                        policy_seeds: race.seeds,
                    });
                }
                job_seconds
            } else if let Some(plan) = lean {
                (candidates, confirmations, racing, checks) = plan;
                findings.push(Finding::LeanRuns {
                    seconds: job_seconds,
                    source,
                    affordable: affordable_runs,
                    candidates,
                });
                job_seconds
            } else {
                // Shorter runs than the real one: as many as keep them at
                // least half its length, from the leanest plan (the longest
                // runs) to the full one. The full plan's count alone made
                // runs of a slow model a tenth of the real one, whose best
                // batch and LR they no longer measure.
                let full = confirmations + racing + checks;
                let half_length = (left / self.run_seconds(job_seconds / 2.0)).floor();
                let count = half_length.clamp(leanest, full.max(leanest));
                if count < full {
                    if let Some(plan) = lean_plan(count, initial, race) {
                        (candidates, confirmations, racing, checks) = plan;
                    }
                }
                // At the full plan's count this is `fill`, under the real
                // length by this branch's condition.
                let seconds = self
                    .stepping_within(left / (count + ramping))
                    .min(job_seconds);
                findings.push(Finding::ShortRuns {
                    seconds,
                    job_seconds,
                    source,
                });
                seconds
            };
            RaceBudget::WallClock { seconds }
        };
        let elapsed = self.elapsed().as_secs_f64();
        self.plan.replan(
            elapsed,
            &[
                (Phase::LrConfirmation, confirmations),
                (Phase::Race, racing),
                (Phase::LrCheck, checks),
                (Phase::Ramp, ramping),
            ],
        );
        if matches!(budget, RaceBudget::WallClock { .. }) {
            // From here the plan follows what runs cost, after every run.
            // Ranks: the leanest race (two candidates, two seeds: a verdict
            // needs a spread), the initial confirmations, the rest of the
            // race, the ramp, extensions, extra seeds, the check.
            let initial = initial.min(confirmations);
            let planned = f64::from(candidates * seeds).min(racing);
            let leanest = f64::from(2 * seeds.min(2)).min(planned);
            self.book = RunBook::new(vec![
                (Phase::Race, leanest),
                (Phase::LrConfirmation, initial),
                (Phase::Race, planned - leanest),
                (Phase::Ramp, ramping),
                (Phase::LrConfirmation, confirmations - initial),
                (Phase::Race, racing - planned),
                (Phase::LrCheck, checks),
            ]);
        }
        findings.push(Finding::RunBudget {
            budget,
            final_fraction: race.final_lr_fraction,
            runs: confirmations + racing + checks + ramping,
            left: self.time_left(),
        });
        let later_runs = racing + checks + ramping;
        let planned_run = match budget {
            RaceBudget::Epochs { epochs } => {
                self.epoch_run_wall(curve, range.reference_batch, epochs, train_samples)
            }
            RaceBudget::WallClock { seconds } => self.run_seconds(seconds),
        };
        RunPlan {
            budget,
            train_samples,
            candidates: candidates as usize,
            seeds,
            planned_run,
            later_runs,
            findings,
        }
    }

    /// Re-plans the race and the check from what the confirmation runs
    /// actually cost, before the race starts. The plan before them guessed
    /// a run's wall time from throughput trials; a slow model's runs can
    /// cost more (validation, noise measurement, start-up), and a race cut
    /// mid-way leaves a candidate with fewer seeds than the others. So when
    /// the planned race and check no longer fit, the race drops candidates
    /// (never below two) before any is started. Equal-epoch runs, whose
    /// cost varies by batch, are re-sized instead (`resize_epoch_runs`).
    pub(in crate::search) fn replan_from_runs(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        mut runs: RunPlan,
    ) -> RunPlan {
        if !runs.replanned_from_costs() {
            return self.resize_epoch_runs(curve, reference, runs);
        }
        let costs = self.confirmation_costs();
        // The dearest confirmation: race runs at larger batches cost a
        // little more (validation, start-up), and a planned race run the
        // budget refuses cuts the search short.
        let Some(cost) = costs.iter().copied().reduce(f64::max).filter(|c| *c > 0.0) else {
            return runs;
        };
        let policy = &self.spec.policy;
        let left = self.time_left().as_secs_f64();
        let affordable = (left / cost).floor();
        let extra = f64::from(2 * policy.race.extra_seeds);
        let racing = |candidates: usize, seeds: u32| candidates as f64 * f64::from(seeds);
        // Seeds the plan added for spare time go first, while they leave no
        // room for a one-seed check; then candidates (never below two),
        // while their own seeds do not fit. Extra seeds and the check are
        // refinements the budget may skip; the candidates' seeds are not.
        let (mut candidates, mut seeds) = (runs.candidates, runs.seeds);
        while seeds > policy.race.seeds && racing(candidates, seeds) + 2.0 > affordable {
            seeds -= 1;
        }
        while candidates > 2 && racing(candidates, seeds) > affordable {
            candidates -= 1;
        }
        let checks = 2.0 * f64::from(policy.lr_search.check_seeds.min(seeds));
        if (candidates, seeds) != (runs.candidates, runs.seeds) {
            runs.findings.push(Finding::Replanned {
                cost,
                left: self.time_left(),
                affordable,
                candidates,
                seeds,
                planned_candidates: runs.candidates,
                planned_seeds: runs.seeds,
            });
            runs.candidates = candidates;
            runs.seeds = seeds;
        }
        // The deadlines follow what is affordable, in rank: the
        // candidates' own seeds, the ramp where the policy asks for one
        // (it runs last, so without a rank it never fits), extra seeds,
        // then the check.
        self.book = RunBook::new(vec![
            (Phase::Race, racing(candidates, seeds)),
            (Phase::Ramp, self.ramp_runs(policy.race.seeds)),
            (Phase::Race, extra),
            (Phase::LrCheck, checks),
        ]);
        let elapsed = self.elapsed().as_secs_f64();
        self.plan.replan(elapsed, &self.book.fitting(affordable));
        runs
    }

    /// Recomputes the plan of the phases left from the runs still planned
    /// (`book`, by rank) and what the dearest run of the phase under way
    /// has cost: after every training run, and when a phase gives back
    /// runs it planned. So a run dearer than planned takes its time from
    /// the lowest ranks (the check, extra seeds) instead of cutting the
    /// next planned run of whichever phase comes next.
    pub(in crate::search) fn replan_from_book(&mut self) {
        if self.book.is_empty() {
            return;
        }
        let Some(phase) = self
            .records
            .iter()
            .rev()
            .map(|r| r.phase)
            .find(|&p| TRAINING_PHASES.contains(&p))
        else {
            return;
        };
        let Some(cost) = self
            .records
            .iter()
            .filter(|r| r.phase == phase && r.outcome == Outcome::Ok)
            .map(|r| r.seconds)
            .reduce(f64::max)
            .filter(|c| *c > 0.0)
        else {
            return;
        };
        let affordable = (self.time_left().as_secs_f64() / cost).floor();
        let elapsed = self.elapsed().as_secs_f64();
        self.plan.replan(elapsed, &self.book.fitting(affordable));
    }

    /// The batch ramp's runs in the plan: one per seed of the race winner's
    /// (the policy's seeds), where the policy gives the ramp a share and the
    /// job's trials can change their batch.
    pub(super) fn ramp_runs(&self, seeds: u32) -> f64 {
        let enabled =
            self.spec.policy.budget_shares.ramp > 0.0 && self.spec.supports_batch_schedule();
        if enabled {
            f64::from(seeds.max(2))
        } else {
            0.0
        }
    }

    /// Wall seconds of every confirmation run that finished: what a
    /// training run of the planned length really costs here.
    pub(super) fn confirmation_costs(&self) -> Vec<f64> {
        self.records
            .iter()
            .filter(|r| r.phase == Phase::LrConfirmation && r.outcome == Outcome::Ok)
            .map(|r| r.seconds)
            .collect()
    }

    /// One training run as confirmations, races and checks use it: the
    /// recommended schedule, validation loss at the end, and the gradient
    /// noise over the last steps (after training, not at initialization).
    ///
    /// A run identical to one already made (see [`RunKey`]) is not made
    /// again: its result stands, charged nothing, and counted off the
    /// plan as a run of `phase`. The race's candidate at the reference
    /// batch trains at the confirmed LR with the confirmations' seed, and
    /// the LR check at the reference batch steps to LRs the confirmations
    /// ran: on the transformer's bench search that was one run of the
    /// race's four (2.3 s of 19), and its second seed at that batch was
    /// then refused (a partial search).
    pub(super) async fn training_run(
        &mut self,
        phase: Phase,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> TrialResult {
        let policy = &self.spec.policy;
        let mut request = self.training_request(batch, lr, steps, seed);
        request.record.grad_noise = noise_request(
            batch,
            steps,
            request.warmup_steps,
            policy.trials.noise_scale_measurements,
            phase == Phase::Race,
        );
        let key = RunKey::of(&request);
        if let Some(made) = self.finished_runs.iter().find(|f| f.key.same(&key)) {
            let mut result = made.result.clone();
            // The noise was measured over another window of the run than
            // this phase reads: not this phase's measurement.
            if made.noise != request.record.grad_noise {
                result.grad_noise = None;
            }
            self.reused.push(Reused {
                phase,
                from: made.phase,
                batch,
                lr,
                seed,
            });
            self.book.ran(phase);
            self.replan_from_book();
            return result;
        }
        let noise = request.record.grad_noise;
        let result = self.trial(phase, request).await;
        // Only what a rerun would repeat: a crash or a timeout may not.
        if matches!(result.outcome, Outcome::Ok | Outcome::Diverged) {
            self.finished_runs.push(FinishedRun {
                phase,
                key,
                noise,
                result: result.clone(),
            });
        }
        result
    }

    /// Whether the training run of these settings has been made (and
    /// would be reused by [`Self::training_run`], costing nothing).
    pub(super) fn run_made(&self, batch: u64, lr: f64, steps: u32, seed: u64) -> bool {
        self.finished_run(batch, lr, steps, seed).is_some()
    }

    /// The finished training run of these settings, if it was made.
    fn finished_run(&self, batch: u64, lr: f64, steps: u32, seed: u64) -> Option<&FinishedRun> {
        let key = RunKey::of(&self.training_request(batch, lr, steps, seed));
        self.finished_runs.iter().find(|f| f.key.same(&key))
    }

    /// The phase that made the training run of these settings, and its
    /// validation loss (infinite where it diverged), if it was made.
    pub(super) fn made_run(
        &self,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> Option<(Phase, f64)> {
        let made = self.finished_run(batch, lr, steps, seed)?;
        let loss = match made.result.outcome {
            Outcome::Ok => made.result.validation_loss?,
            _ => f64::INFINITY,
        };
        Some((made.phase, loss))
    }

    /// A training run's request: the recommended schedule (warm-up, then
    /// cosine decay) over its `steps`, validation at the end, the untimed
    /// steps of [`run_warmup`].
    pub(super) fn training_request(
        &self,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> TrialRequest {
        let policy = &self.spec.policy;
        let warmup = ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil() as u32)
            .clamp(1, steps.saturating_sub(1).max(1));
        let schedule = LrSchedule::WarmupCosine {
            lr,
            warmup_steps: warmup,
            final_fraction: policy.race.final_lr_fraction,
        };
        let mut request = self.request(batch, steps, schedule);
        request.seed = seed;
        request.warmup_steps = run_warmup(policy.trials.warmup_steps, steps);
        request.record.validation_loss = true;
        request.record.validation_samples = self.validation_samples;
        request
    }

    /// Sizes the held-out set every training run validates on: the
    /// default, unless its validation (timed by the first ladder trial)
    /// would take more than [`VALIDATION_SHARE`] of `stepping`, the
    /// seconds of training a run gets (the real run's, or the most the
    /// budget affords); then as many samples as fit that share, in whole
    /// forward batches, never under [`MIN_VALIDATION_SAMPLES`]. A command
    /// job's script validates as it does. Measured: the transformer's
    /// 1,024 windows took 0.55-0.9 s against 2.5-s real runs, and at the
    /// bench's 15% budgets half of a planned run's wall time. (Against the
    /// real run alone, the choice flipped between searches of one job
    /// whose validation timed either side of the share.)
    fn size_validation(&mut self, stepping: f64) -> Option<Finding> {
        use crate::trial::DEFAULT_VALIDATION_SAMPLES as DEFAULT;
        if self.spec.model().is_none() || self.validation_samples.is_some() {
            return None;
        }
        let full = crate::search::stats::median(&self.validations).filter(|s| *s > 0.0)?;
        let per_sample = full / f64::from(DEFAULT);
        let fits = (VALIDATION_SHARE * stepping / per_sample).floor();
        if !fits.is_finite() || fits >= f64::from(DEFAULT) {
            return None;
        }
        let samples = (fits as u32 / MIN_VALIDATION_SAMPLES * MIN_VALIDATION_SAMPLES)
            .clamp(MIN_VALIDATION_SAMPLES, DEFAULT);
        if samples >= DEFAULT {
            return None;
        }
        self.validation_samples = Some(samples);
        Some(Finding::ValidationSized {
            samples,
            default_samples: DEFAULT,
            default_seconds: full,
            stepping,
        })
    }

    /// Seconds of training the real run takes: for equal-epoch runs, the
    /// job's epochs at a quarter of the reference batch (where samples are
    /// slowest); otherwise the job's time budget, or its epochs at the
    /// reference batch.
    fn real_run_seconds(&self, curve: &CurvePhase, range: &RangePhase, train_samples: u64) -> f64 {
        if let Some(budget) = self.wall_clock_run() {
            return budget.as_secs_f64();
        }
        let samples = self.spec.training.epochs * train_samples as f64;
        if self.spec.policy.objective == Objective::Generalization {
            let smallest = (range.reference_batch / 4).max(curve.floor);
            return curve
                .step_seconds(smallest)
                .map_or(f64::INFINITY, |t| samples * t / smallest as f64);
        }
        curve
            .speed(range.reference_batch)
            .map_or(f64::INFINITY, |speed| samples / speed)
    }

    /// Wall seconds an equal-epoch run of `epochs` at `batch` should take,
    /// its steps counted as the race counts them.
    fn epoch_run_wall(
        &self,
        curve: &CurvePhase,
        batch: u64,
        epochs: f64,
        train_samples: u64,
    ) -> f64 {
        let steps = f64::from(epoch_steps(epochs, train_samples, batch));
        curve
            .step_seconds(batch)
            .map_or(f64::INFINITY, |t| self.run_seconds(t * steps))
    }

    /// The batches equal-epoch runs are priced at: the confirmations and
    /// the check at the reference batch, the race (and a ramp) at
    /// `candidates` a factor of four around it, the race's step without a
    /// decisive noise scale. The race's own candidates are known only
    /// after the confirmations; it prices them again before it starts.
    fn epoch_pricing(
        &self,
        curve: &CurvePhase,
        range: &RangePhase,
        candidates: usize,
        train_samples: u64,
    ) -> EpochPricing {
        EpochPricing {
            reference: Some(range.reference_batch),
            race_batches: race::candidates(
                range.reference_batch,
                4.0,
                curve.floor,
                curve.top,
                self.spec.policy.batch_multiple,
                candidates,
            ),
            train_samples,
        }
    }

    /// Re-sizes equal-epoch runs from what the confirmations cost, before
    /// the race, and at the race's own candidates: the plan priced runs
    /// before any had run (the extra of a training run over a throughput
    /// trial was a guess) and before the model had its candidates, and the
    /// digits MLP's confirmations cost under half of it, leaving a third of
    /// the budget unspent. The race and the check train the epochs the time left
    /// affords (never more than the job's), where that differs from the
    /// plan by more than a quarter; the confirmations' best LR is
    /// transferred to them by the batch rule, and the check measures it
    /// again at the new length.
    fn resize_epoch_runs(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        mut runs: RunPlan,
    ) -> RunPlan {
        let RaceBudget::Epochs { epochs } = runs.budget else {
            return runs;
        };
        let job_epochs = self.spec.training.epochs;
        let Some(cost) = self
            .confirmation_costs()
            .into_iter()
            .reduce(f64::max)
            .filter(|c| *c > 0.0)
        else {
            return runs;
        };
        let policy = &self.spec.policy;
        // Priced at the race's own candidates, now the reference phase has
        // given the model its noise scale; the check and a ramp run at one
        // of them.
        let pricing = EpochPricing {
            reference: None,
            race_batches: self.race_field(curve, reference).candidates(
                policy,
                curve,
                runs.candidates,
            ),
            train_samples: runs.train_samples,
        };
        let left = self.time_left().as_secs_f64();
        // The runs the plan left for after the confirmations (a lean plan
        // counts fewer than the full one).
        let resized = pricing.most_epochs(self, curve, job_epochs, 0.0, runs.later_runs, left);
        if (resized / epochs - 1.0).abs() <= EPOCH_RESIZE_SLACK && epochs <= pricing.step_cap() {
            return runs;
        }
        runs.budget = RaceBudget::Epochs { epochs: resized };
        runs.findings.push(Finding::EpochsResized {
            cost,
            planned_cost: runs.planned_run,
            epochs: resized,
            confirmed_epochs: epochs,
            job_epochs,
            left: self.time_left(),
        });
        runs
    }

    /// Wall seconds a training run of `steps` at `batch` should take.
    pub(super) fn seconds_for(&self, curve: &CurvePhase, batch: u64, steps: u32) -> f64 {
        self.run_seconds(
            curve
                .step_seconds(batch)
                .map_or(0.0, |t| t * f64::from(steps)),
        )
    }

    /// Whether a run estimated at `seconds` may start in `phase`: half of
    /// it may borrow from the next phase, none from beyond the budget (a
    /// run killed at the budget's end measures nothing).
    pub(super) fn run_fits(&self, phase: Phase, seconds: f64) -> bool {
        self.phase_left(phase).as_secs_f64() >= seconds * 0.5
            && self.time_left().as_secs_f64() >= seconds
    }
}

/// The phases whose trials are training runs of the planned length.
pub(in crate::search) const TRAINING_PHASES: [Phase; 4] = [
    Phase::LrConfirmation,
    Phase::Race,
    Phase::LrCheck,
    Phase::Ramp,
];

/// What makes two training runs one run: what the trial trains and
/// validates with. Not what it measures along the way: the noise window
/// differs between phases and does not touch the weights (the
/// transformer's race and confirmation runs at one LR and seed ended at
/// one loss, 2.5503). Compared with [`RunKey::same`], not `==`: LRs
/// computed two ways differ in their last bits.
#[derive(Debug, Clone)]
pub(in crate::search) struct RunKey {
    batch: u64,
    steps: u32,
    warmup_steps: u32,
    schedule: LrSchedule,
    seed: u64,
    validation: bool,
    validation_samples: Option<u32>,
}

impl RunKey {
    pub(in crate::search) fn of(request: &TrialRequest) -> RunKey {
        RunKey {
            batch: request.batch_size,
            steps: request.steps,
            warmup_steps: request.warmup_steps,
            schedule: request.schedule,
            seed: request.seed,
            validation: request.record.validation_loss,
            validation_samples: request.record.validation_samples,
        }
    }

    #[cfg(test)]
    pub(in crate::search) fn batch(&self) -> u64 {
        self.batch
    }

    #[cfg(test)]
    pub(in crate::search) fn seed(&self) -> u64 {
        self.seed
    }

    /// The peak LR of a warm-up-and-cosine run.
    #[cfg(test)]
    pub(in crate::search) fn lr(&self) -> Option<f64> {
        match self.schedule {
            LrSchedule::WarmupCosine { lr, .. } => Some(lr),
            _ => None,
        }
    }

    /// The same run, LRs equal to rounding: the race transfers the
    /// reference LR by its rule and the check steps by the confirmations'
    /// spacing, each computing the LR its own way.
    pub(in crate::search) fn same(&self, other: &RunKey) -> bool {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
        let schedule = match (self.schedule, other.schedule) {
            (
                LrSchedule::WarmupCosine {
                    lr: a,
                    warmup_steps: wa,
                    final_fraction: fa,
                },
                LrSchedule::WarmupCosine {
                    lr: b,
                    warmup_steps: wb,
                    final_fraction: fb,
                },
            ) => wa == wb && fa == fb && close(a, b),
            (a, b) => a == b,
        };
        schedule
            && (self.batch, self.steps, self.warmup_steps, self.seed)
                == (other.batch, other.steps, other.warmup_steps, other.seed)
            && (self.validation, self.validation_samples)
                == (other.validation, other.validation_samples)
    }
}

/// A training run made in this search, kept for [`RunKey`] reuse.
pub(in crate::search) struct FinishedRun {
    phase: Phase,
    key: RunKey,
    /// The noise measurement it was asked for.
    noise: Option<GradNoiseRequest>,
    result: TrialResult,
}

/// The steps of a training run left out of its speed figures (and before
/// its first noise measurement): the policy's, at most a quarter of the run.
pub(super) fn run_warmup(policy_warmup: u32, steps: u32) -> u32 {
    policy_warmup.min(steps / 4).max(1)
}

/// How far the epochs the time left affords may differ from the planned
/// ones before the race and the check are re-sized (a run's cost varies by
/// about this much between identical runs).
const EPOCH_RESIZE_SLACK: f64 = 0.25;

/// The batches equal-epoch runs are priced at (`Session::epoch_pricing`).
pub(super) struct EpochPricing {
    /// The confirmations' batch, where they are still to be priced.
    reference: Option<u64>,
    race_batches: Vec<u64>,
    train_samples: u64,
}

impl EpochPricing {
    /// Wall seconds of `at_reference` runs at the reference batch and
    /// `racing` runs spread evenly over the race's batches, each training
    /// `epochs`.
    fn wall<R: TrialRunner>(
        &self,
        session: &Session<'_, R>,
        curve: &CurvePhase,
        epochs: f64,
        at_reference: f64,
        racing: f64,
    ) -> f64 {
        let run = |b: u64| session.epoch_run_wall(curve, b, epochs, self.train_samples);
        let racing_run = self.race_batches.iter().map(|&b| run(b)).sum::<f64>()
            / self.race_batches.len().max(1) as f64;
        let reference = self
            .reference
            .filter(|_| at_reference > 0.0)
            .map_or(0.0, |b| at_reference * run(b));
        reference + racing * racing_run
    }

    /// The most epochs a run at the smallest batch priced may train: a
    /// run capped at [`MAX_RUN_STEPS`] short of its epochs would not be an
    /// equal one.
    fn step_cap(&self) -> f64 {
        let smallest = self
            .race_batches
            .iter()
            .copied()
            .chain(self.reference)
            .min()
            .unwrap_or(1);
        f64::from(MAX_RUN_STEPS) * smallest as f64 / self.train_samples.max(1) as f64
    }

    /// The most epochs (0.01 to `most`, and no more than the smallest
    /// batch's longest run) whose runs fit in `left` seconds: the wall
    /// time grows with them, so a bisection finds them.
    fn most_epochs<R: TrialRunner>(
        &self,
        session: &Session<'_, R>,
        curve: &CurvePhase,
        most: f64,
        at_reference: f64,
        racing: f64,
        left: f64,
    ) -> f64 {
        let most = most.min(self.step_cap()).max(0.01);
        if self.wall(session, curve, most, at_reference, racing) <= left {
            return most;
        }
        let (mut low, mut high) = (0.01_f64, most);
        for _ in 0..48 {
            let mid = 0.5 * (low + high);
            if self.wall(session, curve, mid, at_reference, racing) <= left {
                low = mid;
            } else {
                high = mid;
            }
        }
        low
    }
}
