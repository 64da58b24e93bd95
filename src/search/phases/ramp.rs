//! Phase 7: the batch ramp. From the noise scale's growth over training
//! (the race's windows), a ramp from the race winner up to the throughput
//! plateau (`search::ramp`), raced against the winner itself: the same
//! seeds, the same budget (wall clock, or samples for the generalization
//! objective), the same LR at the start. Recommended only when it wins
//! beyond the seed-to-seed spread; otherwise the recommendation says it
//! was tried and lost, by how much.

use super::*;
use crate::search::ramp::{
    self, BatchRampAdvice, NoRamp, NoiseGrowth, RampLimits, RampOutcome, RampSide,
};
use crate::search::stats::{mean, sample_sd};
use crate::trial::BatchSchedule;

pub(in crate::search) struct RampPhase {
    /// `None` when the policy gives the ramp no budget share.
    pub advice: Option<BatchRampAdvice>,
    pub findings: Vec<Finding>,
}

impl RampPhase {
    fn none() -> RampPhase {
        RampPhase {
            advice: None,
            findings: Vec::new(),
        }
    }
}

/// The ramp once derived, before it is raced: settled already (no share,
/// nothing derived, nothing to race against), or a schedule to race
/// against the winner's runs.
pub(in crate::search) enum RampStart {
    Settled(RampPhase),
    Race {
        advice: BatchRampAdvice,
        schedule: BatchSchedule,
        constant: RaceEntry,
    },
}

impl RampStart {
    /// Whether the ramp has runs to make (the plan keeps time for them).
    pub(in crate::search) fn races(&self) -> bool {
        matches!(self, RampStart::Race { .. })
    }
}

impl<R: TrialRunner> Session<'_, R> {
    /// Phase 7, first half, right after the race: derive the ramp from the
    /// race's noise windows, so a ramp that will not be raced gives its
    /// time back to the LR check before the check starts.
    pub(in crate::search) fn derive_ramp(
        &self,
        curve: &CurvePhase,
        raced: &RacePhase,
        runs: &RunPlan,
    ) -> RampStart {
        if self.spec.policy.budget_shares.ramp <= 0.0 {
            return RampStart::Settled(RampPhase::none());
        }
        let points: Vec<(u64, f64)> = raced
            .noise_windows
            .iter()
            .map(|n| ((n.after_samples + n.until_samples) / 2, n.value))
            .collect();
        let mut advice = BatchRampAdvice {
            recommended: false,
            outcome: RampOutcome::NotRaced { why: String::new() },
            phases: Vec::new(),
            growth: None,
            points: points.clone(),
            budget: Some(runs.budget),
            constant: None,
            ramp: None,
            runs: Vec::new(),
            gain: None,
            verdict: String::new(),
        };
        let not_raced = |mut advice: BatchRampAdvice, why: String| {
            advice.verdict = format!("no batch ramp was raced: {why}");
            advice.outcome = RampOutcome::NotRaced { why };
            advice
        };
        let finish = |advice: BatchRampAdvice| RampStart::Settled(settle(advice));
        if !self.spec.supports_batch_schedule() {
            let why = "the job's script does not declare batch_schedule = true".to_string();
            return finish(not_raced(advice, why));
        }
        // The constant side: the winner's runs, every seed finished.
        let Some(entry) = raced.race.as_ref().and_then(|race| {
            let winner = race.winner?;
            race.entries.iter().find(|e| e.batch_size == winner)
        }) else {
            return finish(not_raced(advice, "the race named no winner".into()));
        };
        let Some(growth) = NoiseGrowth::fit(&points) else {
            let why = NoRamp::NoGrowthMeasured {
                points: points.len(),
            };
            advice.verdict = format!("no batch ramp: {why}");
            advice.outcome = RampOutcome::NotDerived { why };
            return finish(advice);
        };
        advice.growth = Some(growth);
        let policy = &self.spec.policy;
        let start = entry.batch_size;
        let top = curve.plateau.unwrap_or(curve.top).min(curve.top).max(start);
        // At most what the ramp could train in the constant run's time: its
        // samples, times how much faster the top batch runs.
        let speedup = match (curve.speed(top), curve.speed(start)) {
            (Some(fast), Some(slow)) if slow > 0.0 => (fast / slow).max(1.0),
            _ => 1.0,
        };
        let limits = RampLimits {
            start,
            top,
            run_samples: (u64::from(entry.steps) as f64 * start as f64 * speedup) as u64,
            batch_multiple: policy.batch_multiple,
            alpha: self.transfer_alpha(),
        };
        let speed = |batch: u64| curve.speed(batch);
        let schedule = match ramp::derive(&growth, &limits, &speed) {
            Ok(schedule) => schedule,
            Err(why) => {
                advice.verdict = format!("no batch ramp: {why}");
                advice.outcome = RampOutcome::NotDerived { why };
                return finish(advice);
            }
        };
        advice.phases = schedule.phases.clone();
        let losses: Vec<f64> = entry
            .runs
            .iter()
            .filter_map(|r| r.validation_loss.filter(|l| l.is_finite()))
            .collect();
        if losses.len() < 2 || losses.len() < entry.runs.len() {
            let why = format!(
                "the winner, batch {}, has {} finished seed(s); beating it beyond the seed-to-seed spread needs two",
                entry.batch_size,
                losses.len()
            );
            return finish(not_raced(advice, why));
        }
        let constant = RampSide {
            batch_size: entry.batch_size,
            steps: entry.steps,
            mean_loss: mean(&losses).unwrap_or(f64::NAN),
            spread: sample_sd(&losses),
            seeds: losses.len(),
        };
        advice.constant = Some(constant);
        RampStart::Race {
            advice,
            schedule,
            constant: entry.clone(),
        }
    }

    /// Phase 7, second half, after the LR check: race the derived ramp
    /// against the winner on the winner's seeds.
    pub(in crate::search) async fn ramp(
        &mut self,
        curve: &CurvePhase,
        runs: &RunPlan,
        start: RampStart,
    ) -> RampPhase {
        let (mut advice, schedule, entry) = match start {
            RampStart::Settled(phase) => return phase,
            RampStart::Race {
                advice,
                schedule,
                constant,
            } => (advice, schedule, constant),
        };
        let entry = &entry;
        let finish = settle;
        let not_raced = |mut advice: BatchRampAdvice, why: String| {
            advice.verdict = format!("no batch ramp was raced: {why}");
            advice.outcome = RampOutcome::NotRaced { why };
            advice
        };
        let start = entry.batch_size;
        let steps = self.ramp_steps(curve, &schedule, runs, entry);
        let stepping: f64 = self.ramp_stepping(curve, &schedule, steps);
        let cost = self.run_seconds(stepping);
        let seeds: Vec<u64> = entry.runs.iter().map(|r| r.seed).collect();
        let mut ramp_runs: Vec<RaceRun> = Vec::new();
        for seed in seeds {
            if !self.run_fits(Phase::Ramp, cost) {
                self.skipped.push(Gap::NoRamp {
                    seeds_run: ramp_runs.len(),
                });
                break;
            }
            let result = self
                .ramp_run(&schedule, entry.learning_rate, steps, seed)
                .await;
            let loss = result.validation_loss.filter(|_| result.is_ok());
            ramp_runs.push(RaceRun {
                seed,
                validation_loss: loss,
                outcome: result.outcome,
                losses: result.losses,
                loss_steps: Vec::new(),
            });
        }
        if ramp_runs.len() < 2 {
            let why = format!(
                "two of its runs ({cost:.1} s each) did not fit the {:.1} s left",
                self.phase_left(Phase::Ramp).as_secs_f64()
            );
            advice.runs = ramp_runs;
            return finish(not_raced(advice, why));
        }
        let failed = ramp_runs
            .iter()
            .filter(|r| r.validation_loss.is_none_or(|l| !l.is_finite()))
            .count();
        advice.runs = ramp_runs;
        if failed > 0 {
            advice.verdict = format!(
                "the batch ramp was tried and lost: {failed} of its {} runs diverged or failed, so the constant batch stays",
                advice.runs.len()
            );
            advice.outcome = RampOutcome::Lost;
            return finish(advice);
        }
        // Judged on the seeds both sides ran.
        let paired: Vec<(f64, f64)> = advice
            .runs
            .iter()
            .filter_map(|r| {
                let ramp = r.validation_loss?;
                let constant = entry
                    .runs
                    .iter()
                    .find(|c| c.seed == r.seed)?
                    .validation_loss?;
                Some((constant, ramp))
            })
            .collect();
        let (constant_losses, ramp_losses): (Vec<f64>, Vec<f64>) = paired.into_iter().unzip();
        let side = |batch_size, steps, losses: &[f64]| RampSide {
            batch_size,
            steps,
            mean_loss: mean(losses).unwrap_or(f64::NAN),
            spread: sample_sd(losses),
            seeds: losses.len(),
        };
        let constant = side(entry.batch_size, entry.steps, &constant_losses);
        let ramped = side(start, steps, &ramp_losses);
        let (outcome, gain, verdict) = ramp::judge(&constant, &ramped);
        advice.recommended = outcome == RampOutcome::Won;
        advice.outcome = outcome;
        advice.gain = Some(gain);
        advice.constant = Some(constant);
        advice.ramp = Some(ramped);
        advice.verdict = verdict;
        finish(advice)
    }

    /// Steps of the ramp's run at the race's budget: the same training
    /// time as the constant batch's run (by the throughput curve's step
    /// times), or the same samples under an epoch budget.
    fn ramp_steps(
        &self,
        curve: &CurvePhase,
        schedule: &BatchSchedule,
        runs: &RunPlan,
        constant: &RaceEntry,
    ) -> u32 {
        let steps = match runs.budget {
            RaceBudget::Epochs { .. } => {
                schedule.steps_for(u64::from(constant.steps) * constant.batch_size)
            }
            RaceBudget::WallClock { .. } => {
                let Some(target) = curve
                    .step_seconds(constant.batch_size)
                    .map(|t| t * f64::from(constant.steps))
                else {
                    return constant.steps;
                };
                let (mut seen, mut spent, mut steps) = (0u64, 0.0, 0u64);
                while steps < u64::from(MAX_RUN_STEPS) {
                    let batch = schedule.phase_at(seen).batch_size;
                    let t = curve.step_seconds(batch).unwrap_or(0.0);
                    // To the nearest step, as the race's runs are sized.
                    if spent + t / 2.0 > target {
                        break;
                    }
                    spent += t;
                    seen += batch;
                    steps += 1;
                }
                steps
            }
        };
        (steps as u32).clamp(MIN_RUN_STEPS, MAX_RUN_STEPS)
    }

    /// Timed stepping of `steps` of the ramp, by the curve.
    fn ramp_stepping(&self, curve: &CurvePhase, schedule: &BatchSchedule, steps: u32) -> f64 {
        let mut seen = 0u64;
        let mut spent = 0.0;
        for _ in 0..steps {
            let batch = schedule.phase_at(seen).batch_size;
            spent += curve.step_seconds(batch).unwrap_or(0.0);
            seen += batch;
        }
        spent
    }

    /// One seed of the ramp: the race's run (warm-up and cosine decay over
    /// its steps, validation at the end) with the batch growing by
    /// `schedule` and the LR multiplied by each phase's factor.
    async fn ramp_run(
        &mut self,
        schedule: &BatchSchedule,
        lr: f64,
        steps: u32,
        seed: u64,
    ) -> TrialResult {
        let mut request = self.training_request(schedule.first_batch(), lr, steps, seed);
        request.batch_schedule = Some(schedule.clone());
        self.trial(Phase::Ramp, request).await
    }
}

/// The phase's result once the ramp's advice is final.
fn settle(advice: BatchRampAdvice) -> RampPhase {
    RampPhase {
        findings: vec![Finding::Ramp(advice.verdict.clone())],
        advice: Some(advice),
    }
}
