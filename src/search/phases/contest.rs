//! Phase 5: the race of candidate batches around the model's choice, decided
//! on validation loss (ties by the policy's rule).

use super::*;

use crate::policy::{Policy, TieRule};
use crate::search::recommend::ModelChoice;

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 5: the race. The policy's model names a preferred batch; the
    /// candidates around it train for the same budget with several seeds,
    /// and the lowest mean validation loss wins when it leads beyond the
    /// seed-to-seed spread; otherwise the policy's tie rule picks.
    pub(in crate::search) async fn race(
        &mut self,
        curve: &CurvePhase,
        reference: &ReferencePhase,
        runs: &RunPlan,
    ) -> RacePhase {
        let policy = &self.spec.policy;
        let field = self.race_field(curve, reference);
        let preferred = field.preferred;
        let mut findings = vec![Finding::Model(field.why.clone())];
        let pick = |count: usize| field.candidates(policy, curve, count);
        let (decisive, bound) = (field.decisive, field.bound);
        let world = self.spec.training.world_size.max(1);
        let Some(reference_lr) = reference
            .best
            .as_ref()
            .map(|b| (b.batch_size, b.learning_rate))
        else {
            findings.push(Finding::NoRace { preferred });
            return RacePhase {
                race: None,
                preferred,
                batch: preferred,
                learning_rate: None,
                noise_by_progress: Vec::new(),
                noise_windows: Vec::new(),
                findings,
            };
        };
        let alpha = self.transfer_alpha();
        // Only Adam's preconditioned noise scale, and only a value, not a
        // bound. B_simple = tr(Sigma)/|G|^2 stands for the critical batch
        // only where the Hessian is near a multiple of the identity
        // (McCandlish et al. 2018, appendix), which Adam's preconditioner
        // goes some way to make true and plain SGD does not: on the digits
        // MLP (SGD) B_simple measured 3-9 while the grid's best LR climbs
        // nearly linearly from batch 8 to 1,024, and moved by it the race's
        // LRs spread 56x across five searches. A lower bound cannot place
        // the knee: moved by the CNN's (24-60), the race trained batch 64
        // at 1.2e-2 where the grid's best is 3.2e-2 (50% worse).
        let transfer_noise = reference
            .preconditioned
            .as_ref()
            .filter(|n| !n.is_lower_bound())
            .map(|n| n.value);
        let lr_for =
            |batch: u64| transfer_lr(reference_lr.1, reference_lr.0, batch, alpha, transfer_noise);
        let base_seed = self.spec.search.seed;
        // The plan counted runs at the confirmations' cost; a range the max
        // fit opened wider puts candidates where runs cost more (or less).
        // Priced at their own batches, the candidates' planned seeds must
        // fit the time left: candidates go (never below two) before any
        // is started, rather than the last one running a seed short.
        let round_cost = |batches: &[u64]| -> f64 {
            batches
                .iter()
                .map(|&b| self.race_run_cost(curve, b, runs.steps(curve, b)))
                .sum()
        };
        // The candidates' planned runs, the first round priced as it will
        // be charged: nothing for a run an earlier phase made (the
        // candidate at the reference batch, at its confirmed LR and seed).
        let planned_cost = |batches: &[u64]| -> f64 {
            batches
                .iter()
                .map(|&b| {
                    let steps = runs.steps(curve, b);
                    self.race_run_price(curve, b, lr_for(b), steps, base_seed)
                        + self.race_run_cost(curve, b, steps) * f64::from(runs.seeds - 1)
                })
                .sum()
        };
        let left = self.time_left().as_secs_f64();
        let planned = runs.candidates.max(1);
        let mut count = planned;
        let mut candidates = pick(count);
        while count > 2 && planned_cost(&candidates) > left {
            count -= 1;
            candidates = pick(count);
        }
        if count < planned {
            findings.push(Finding::RaceNarrowed {
                round_cost: round_cost(&candidates),
                left: self.time_left(),
                candidates: count,
                planned,
                seeds: runs.seeds,
            });
        }
        let entries: Vec<RaceEntry> = candidates
            .iter()
            .map(|&batch| {
                let steps = runs.steps(curve, batch);
                RaceEntry {
                    batch_size: batch,
                    learning_rate: lr_for(batch),
                    steps,
                    warmup_steps: ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil()
                        as u32)
                        .max(1),
                    runs: Vec::new(),
                }
            })
            .collect();
        let mut samples: Vec<Vec<GradNoiseSample>> = vec![Vec::new(); entries.len()];
        let mut machine = race::RaceMachine::new(
            entries,
            runs.seeds,
            policy.race.extra_seeds,
            self.spec.search.seed,
        );
        loop {
            // The second round, which the verdict needs whole, must fit at
            // what runs have cost so far: identical runs cost up to 1.5x
            // one another, and a plan priced before the first round can
            // leave its last run refused (a candidate a seed short: a
            // partial search). The candidates whose first seed came out
            // worst leave instead, never below two.
            let margin = self.run_cost_spread();
            // The round's last run carries the margin for the dearest run
            // of the round: one run's overrun, not every run's at once,
            // which would drop candidates the race has time for.
            let with_margin = |mut costs: Vec<f64>| -> Vec<f64> {
                let dearest = costs.iter().copied().fold(0.0, f64::max);
                if let Some(last) = costs.last_mut() {
                    *last += (margin - 1.0) * dearest;
                }
                costs
            };
            if machine.round_ahead() == Some(1) {
                loop {
                    let costs = self.round_costs(curve, &machine);
                    let round_cost: f64 = costs.iter().sum();
                    if self.round_fits(&with_margin(costs)) {
                        break;
                    }
                    let Some(entry) = machine.drop_worst() else {
                        break;
                    };
                    findings.push(Finding::RaceDropped {
                        batch: entry.batch_size,
                        loss: entry.runs.first().and_then(|r| r.validation_loss),
                        round_cost,
                        margin,
                        left: self.phase_left(Phase::Race),
                    });
                    // Its planned seeds are not run: their time goes to the
                    // ranks after them.
                    self.book
                        .forgo(Phase::Race, f64::from(runs.seeds.saturating_sub(1)));
                    self.replan_from_book();
                }
            }
            // Between planned rounds (after the two a verdict needs), the
            // next round must fit whole at what runs have cost so far.
            if let Some(round) = machine.round_ahead().filter(|&r| r >= 2) {
                let costs = with_margin(self.round_costs(curve, &machine));
                if !self.round_fits(&costs) {
                    let planned_seeds = runs.seeds;
                    let seeds = machine.end_planned_rounds();
                    findings.push(Finding::RoundsEnded {
                        seeds,
                        planned_seeds,
                        round_cost: costs.iter().sum(),
                        left: self.phase_left(Phase::Race),
                    });
                    debug_assert_eq!(seeds, round);
                    // Its planned runs are over; its time goes to the
                    // phases after it.
                    self.book.close(Phase::Race);
                    self.replan_from_book();
                }
            }
            let Some(ask) = machine.next_run() else {
                break;
            };
            if let Some(run) = self
                .race_run(curve, &machine, ask, &mut samples[ask.entry])
                .await
            {
                machine.tell(ask, run);
            }
        }
        // Candidates that left the race are not judged; their noise
        // samples go with them.
        let kept = machine.kept_mask();
        let samples: Vec<Vec<GradNoiseSample>> = samples
            .into_iter()
            .zip(&kept)
            .filter_map(|(s, kept)| kept.then_some(s))
            .collect();
        let candidates: Vec<u64> = candidates
            .into_iter()
            .zip(&kept)
            .filter_map(|(b, kept)| kept.then_some(b))
            .collect();
        let entries = machine.into_entries();
        let warmup_of = |steps: u32| runs::run_warmup(policy.trials.warmup_steps, steps);
        // Race runs measure the noise from the end of their warm-up on
        // (`training_run`): each candidate's second half gives its point of
        // training, never pooled across candidates.
        let point_of = |entry: &RaceEntry, samples: &[GradNoiseSample]| {
            noise_since(
                samples,
                entry.batch_size,
                entry.steps,
                warmup_of(entry.steps),
                entry.steps / 2,
            )
        };
        // The model before the race had only the reference batch's noise
        // scale, often a lower bound there (README, "Repeatable advice");
        // the race measures it at larger batches, later in training, where
        // it can resolve. Ties are decided by the model re-run with the
        // best-resolved of those points (of the noise the model uses).
        let resolved = (!decisive && policy.objective != Objective::Throughput)
            .then(|| {
                best_resolved(
                    entries
                        .iter()
                        .zip(&samples)
                        .filter_map(|(entry, samples)| point_of(entry, &model_samples(samples))),
                )
            })
            .flatten();
        let (tie_preferred, rule) = match &resolved {
            Some(noise) => {
                let (batch, _) = preferred_batch(
                    policy,
                    &curve.points,
                    curve.model.as_ref(),
                    Some(noise),
                    curve.floor,
                    curve.top,
                    world,
                );
                findings.push(Finding::TieModel {
                    noise: noise.clone(),
                    preferred: batch,
                    before: preferred,
                });
                (batch, policy.race.tie_rule(policy.objective))
            }
            _ => {
                let rule = match policy.race.tie_rule(policy.objective) {
                    // Every candidate at or above a lower-bound batch agrees
                    // with the model, so its choice cannot break a tie; the
                    // larger batch is the better bet for a run longer than
                    // the race's (the noise scale grows as training
                    // proceeds).
                    TieRule::NearestPreferred if bound => TieRule::Fastest,
                    rule => rule,
                };
                (preferred, rule)
            }
        };
        let mut race = race::decide(runs.budget, entries, tie_preferred, rule, &|b| {
            curve.speed(b)
        });
        race.tie_noise = resolved;
        findings.push(Finding::Race {
            candidates: candidates.clone(),
            budget: race.budget,
            alpha,
            noise: transfer_noise.filter(|n| n.is_finite() && *n > 0.0),
            reference_lr: reference_lr.1,
            reference_batch: reference_lr.0,
            verdict: race.verdict.clone(),
        });
        // Each candidate's point of training; four windows over the whole
        // run show the noise scale growing, for the batch ramp.
        let mut noise_by_progress: Vec<NoiseScale> = race
            .entries
            .iter()
            .zip(&samples)
            .filter_map(|(entry, samples)| point_of(entry, samples))
            .collect();
        noise_by_progress.sort_by_key(|n| n.after_samples);
        let mut windows: Vec<NoiseScale> = race
            .entries
            .iter()
            .zip(&samples)
            .flat_map(|(entry, samples)| {
                let from = warmup_of(entry.steps);
                noise_windows(samples, entry.batch_size, entry.steps, from, 4)
            })
            .collect();
        windows.sort_by_key(|n| n.after_samples);
        let (batch, learning_rate) = match race.winner {
            Some(w) => (
                w,
                race.entries
                    .iter()
                    .find(|e| e.batch_size == w)
                    .map(|e| e.learning_rate),
            ),
            None => {
                findings.push(Finding::NoWinner { preferred });
                (preferred, Some(lr_for(preferred)))
            }
        };
        RacePhase {
            race: Some(race),
            preferred: tie_preferred,
            batch,
            learning_rate,
            noise_by_progress,
            noise_windows: windows,
            findings,
        }
    }

    /// One seed of one candidate, or `None` when the budget refuses it:
    /// `planned` runs that the budget cuts make the search partial, unless
    /// their candidate is already beaten ([`race::beaten`]: the verdict
    /// stands without them); extra seeds for ties never do. (On the
    /// transformer's bench search the second seed of batch 16, 0.15 behind
    /// the leader against a seed spread of 0.02, was refused and made the
    /// search partial.)
    pub(super) async fn race_run(
        &mut self,
        curve: &CurvePhase,
        machine: &race::RaceMachine,
        ask: race::RunAsk,
        samples: &mut Vec<GradNoiseSample>,
    ) -> Option<RaceRun> {
        let entry = &machine.entries()[ask.entry];
        let (batch, lr, steps) = (entry.batch_size, entry.learning_rate, entry.steps);
        let price = self.race_run_price(curve, batch, lr, steps, ask.seed);
        if !self.run_fits(Phase::Race, price) {
            // Judged only for a refused run: the verdict's fit per ask.
            match (ask.planned, machine.beaten(ask.entry)) {
                (true, false) => self.cut_short(Phase::Race, Gap::FewerSeeds { batch }),
                (true, true) => self.skipped.push(Gap::BeatenSeed {
                    batch,
                    seed: ask.seed,
                }),
                (false, _) => self.skipped.push(Gap::NoExtraSeed { batch }),
            }
            return None;
        }
        let result = self
            .training_run(Phase::Race, batch, lr, steps, ask.seed)
            .await;
        let loss = result.validation_loss.filter(|_| result.is_ok());
        if let (Some(_), Some(sample)) = (loss, result.grad_noise.clone()) {
            samples.push(sample);
        }
        Some(RaceRun {
            seed: ask.seed,
            validation_loss: loss,
            outcome: result.outcome,
            losses: result.losses,
            loss_steps: Vec::new(),
        })
    }

    /// The model's preferred batch, from the reference phase's noise
    /// scale (or the throughput curve without one), and how the race
    /// spreads its candidates around it.
    pub(super) fn race_field(&self, curve: &CurvePhase, reference: &ReferencePhase) -> RaceField {
        let policy = &self.spec.policy;
        let world = self.spec.training.world_size.max(1);
        let noise = reference.model_noise();
        let (preferred, why) = preferred_batch(
            policy,
            &curve.points,
            curve.model.as_ref(),
            noise,
            curve.floor,
            curve.top,
            world,
        );
        RaceField {
            preferred,
            why,
            decisive: noise.is_some_and(NoiseScale::is_decisive),
            bound: noise.is_some_and(NoiseScale::is_lower_bound),
        }
    }

    /// What a race run at `batch` costs: the curve's estimate, or what the
    /// dearest run at that batch has cost so far, if more.
    pub(super) fn race_run_cost(&self, curve: &CurvePhase, batch: u64, steps: u32) -> f64 {
        self.records
            .iter()
            .filter(|r| r.phase == Phase::Race && r.batch_size == batch && r.outcome == Outcome::Ok)
            .map(|r| r.seconds)
            .fold(self.seconds_for(curve, batch, steps), f64::max)
    }

    /// What a race or check run will charge the budget: its cost
    /// ([`Self::race_run_cost`]), or nothing where an earlier phase made
    /// the same run, which is then reused ([`Self::training_run`]).
    pub(super) fn race_run_price(
        &self,
        curve: &CurvePhase,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> f64 {
        if self.run_made(batch, lr, steps, seed) {
            0.0
        } else {
            self.race_run_cost(curve, batch, steps)
        }
    }

    /// How much dearer than its cheapest twin a training run has come out
    /// (identical runs: one batch, one length), 1 to [`MAX_COST_SPREAD`]:
    /// the margin the race's second round is checked with, since the run
    /// a budget refuses is that round's last.
    fn run_cost_spread(&self) -> f64 {
        let mut groups: std::collections::BTreeMap<(u64, u32), (f64, f64)> = Default::default();
        for r in self.records.iter().filter(|r| {
            runs::TRAINING_PHASES.contains(&r.phase) && r.outcome == Outcome::Ok && r.seconds > 0.0
        }) {
            let group = groups
                .entry((r.batch_size, r.steps))
                .or_insert((f64::INFINITY, 0.0));
            group.0 = group.0.min(r.seconds);
            group.1 = group.1.max(r.seconds);
        }
        groups
            .values()
            .map(|(low, high)| high / low)
            .fold(1.0, f64::max)
            .min(MAX_COST_SPREAD)
    }

    /// What the round ahead of the candidates still racing costs, run by
    /// run: nothing for a run an earlier phase made.
    fn round_costs(&self, curve: &CurvePhase, machine: &race::RaceMachine) -> Vec<f64> {
        let seed = machine
            .round_ahead()
            .map(|round| self.spec.search.seed + u64::from(round));
        machine
            .racing()
            .map(|e| match seed {
                Some(seed) => {
                    self.race_run_price(curve, e.batch_size, e.learning_rate, e.steps, seed)
                }
                None => self.race_run_cost(curve, e.batch_size, e.steps),
            })
            .collect()
    }

    /// Whether runs costing `costs`, one after another, all pass the
    /// race's budget check ([`Self::run_fits`]) from now.
    fn round_fits(&self, costs: &[f64]) -> bool {
        let phase_left = self.phase_left(Phase::Race).as_secs_f64();
        let time_left = self.time_left().as_secs_f64();
        let mut spent = 0.0;
        costs.iter().all(|&cost| {
            let fits = phase_left - spent >= cost * 0.5 && time_left - spent >= cost;
            spent += cost;
            fits
        })
    }
}

/// Of the noise-scale points the race measured, the best resolved: an
/// estimate (not a bound) whose interval is decisive and, of those, the
/// narrowest relative to its value.
fn best_resolved(points: impl Iterator<Item = NoiseScale>) -> Option<NoiseScale> {
    points
        .filter(NoiseScale::is_decisive)
        .min_by(|a, b| relative_width(a).total_cmp(&relative_width(b)))
}

fn relative_width(noise: &NoiseScale) -> f64 {
    noise.high.map_or(f64::INFINITY, |high| high / noise.low)
}

/// The model's preferred batch and how the race spreads around it.
pub(super) struct RaceField {
    pub preferred: u64,
    pub why: ModelChoice,
    /// The noise scale is decisive: candidates a factor of two apart, not
    /// four.
    decisive: bool,
    /// The noise scale is a lower bound, so the model's batch is one too.
    bound: bool,
}

impl RaceField {
    /// `count` candidate batches for the policy's objective.
    pub fn candidates(&self, policy: &Policy, curve: &CurvePhase, count: usize) -> Vec<u64> {
        let preferred = self.preferred;
        if policy.objective == Objective::Throughput {
            // The throughput objective leans large: the plateau and below.
            let center = round_down(preferred / 2, policy.batch_multiple).max(curve.floor);
            return race::candidates(
                center,
                2.0,
                curve.floor,
                preferred.max(curve.floor),
                policy.batch_multiple,
                count,
            );
        }
        let step = if self.decisive { 2.0 } else { 4.0 };
        // A lower bound on the noise scale makes the model's batch a lower
        // bound too: the race reaches above it rather than around it.
        let center = if self.bound && policy.objective == Objective::Goodput {
            round_down((preferred as f64 * step) as u64, policy.batch_multiple).min(curve.top)
        } else {
            preferred
        };
        race::candidates(
            center,
            step,
            curve.floor,
            curve.top,
            policy.batch_multiple,
            count,
        )
    }
}

/// The most the race's second-round check adds for run-to-run cost
/// variance: identical runs were measured up to 1.5x one another here.
const MAX_COST_SPREAD: f64 = 1.5;
