//! The time budget, planned across the phases before the first trial.
//!
//! Each phase gets the policy's share (`budget_shares`); the deadlines are
//! cumulative, so a phase that finishes early hands its time to the ones
//! after it, and one that runs long can only eat into its own share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::phase::Phase;
use crate::policy::BudgetShares;

/// The policy's shares with their phases, in phase order.
fn phase_shares(shares: &BudgetShares) -> [(Phase, f64); 7] {
    [
        (Phase::MaxFit, shares.max_fit),
        (Phase::Throughput, shares.throughput),
        (Phase::LrRangeTest, shares.lr_range_test),
        (Phase::LrConfirmation, shares.lr_confirmation),
        (Phase::Race, shares.race),
        (Phase::LrCheck, shares.lr_check),
        (Phase::Ramp, shares.ramp),
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseBudget {
    pub phase: Phase,
    /// Seconds into the search by which the phase must end.
    pub ends_at_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BudgetPlan {
    pub total_seconds: f64,
    pub phases: Vec<PhaseBudget>,
}

impl BudgetPlan {
    pub fn new(total: Duration, shares: &BudgetShares) -> BudgetPlan {
        let total_seconds = total.as_secs_f64();
        let mut cumulative = 0.0;
        let phases = phase_shares(shares)
            .iter()
            .map(|&(phase, share)| {
                cumulative += share;
                PhaseBudget {
                    phase,
                    ends_at_seconds: total_seconds * cumulative.min(1.0),
                }
            })
            .collect();
        BudgetPlan {
            total_seconds,
            phases,
        }
    }

    /// When `phase` must end, as time into the search.
    pub fn deadline(&self, phase: Phase) -> Duration {
        let seconds = self
            .phases
            .iter()
            .find(|p| p.phase == phase)
            .map_or(self.total_seconds, |p| p.ends_at_seconds);
        Duration::from_secs_f64(seconds)
    }

    /// Re-divides the time from `elapsed` to the end among `phases`, in
    /// proportion to their weights (the runs each plans), once the early
    /// phases have shown what a run costs.
    pub fn replan(&mut self, elapsed: f64, phases: &[(Phase, f64)]) {
        let total_weight: f64 = phases.iter().map(|(_, w)| w.max(0.0)).sum();
        if total_weight <= 0.0 {
            return;
        }
        let span = (self.total_seconds - elapsed).max(0.0);
        let mut cumulative = 0.0;
        for &(phase, weight) in phases {
            cumulative += weight.max(0.0);
            if let Some(p) = self.phases.iter_mut().find(|p| p.phase == phase) {
                p.ends_at_seconds = elapsed + span * cumulative / total_weight;
            }
        }
    }

    /// Time `phase` has left when `elapsed` has passed.
    pub fn left(&self, phase: Phase, elapsed: Duration) -> Duration {
        self.deadline(phase).saturating_sub(elapsed)
    }
}

/// The training runs still planned, in rank order: after every run the
/// plan of the phases left is recomputed from it and what runs have cost
/// ([`RunBook::fitting`]), so runs dearer than planned take time from the
/// lowest ranks first instead of cutting whichever phase comes next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunBook {
    /// (phase, runs left), highest rank first; a phase may have several
    /// entries (the race's planned seeds, then its extra seeds).
    entries: Vec<(Phase, f64)>,
}

impl RunBook {
    pub fn new(entries: Vec<(Phase, f64)>) -> RunBook {
        RunBook { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.iter().all(|&(_, left)| left <= 0.0)
    }

    /// One run of `phase` finished: it is counted off that phase's first
    /// entry with runs left. Phases run in order, so the phases before it
    /// are over.
    pub fn ran(&mut self, phase: Phase) {
        for (p, left) in &mut self.entries {
            if *p < phase {
                *left = 0.0;
            }
        }
        if let Some((_, left)) = self
            .entries
            .iter_mut()
            .find(|(p, left)| *p == phase && *left > 0.0)
        {
            *left = (*left - 1.0).max(0.0);
        }
    }

    /// `phase` will run nothing more (it ended, or has nothing to run).
    pub fn close(&mut self, phase: Phase) {
        for (p, left) in &mut self.entries {
            if *p == phase {
                *left = 0.0;
            }
        }
    }

    /// `runs` of `phase` will not be made (a race candidate that left):
    /// counted off as [`Self::ran`] counts, without ending earlier phases.
    pub fn forgo(&mut self, phase: Phase, runs: f64) {
        let mut runs = runs.max(0.0);
        for (p, left) in &mut self.entries {
            if *p == phase && runs > 0.0 {
                let taken = left.max(0.0).min(runs);
                *left -= taken;
                runs -= taken;
            }
        }
    }

    /// The runs left per phase, in phase order, that `affordable` runs
    /// cover when they are given out by rank: the weights for
    /// [`BudgetPlan::replan`].
    pub fn fitting(&self, affordable: f64) -> Vec<(Phase, f64)> {
        let mut budget = affordable.max(0.0);
        let mut weights: Vec<(Phase, f64)> = Vec::new();
        for &(phase, left) in &self.entries {
            let given = left.max(0.0).min(budget);
            budget -= given;
            match weights.iter_mut().find(|(p, _)| *p == phase) {
                Some((_, w)) => *w += given,
                None => weights.push((phase, given)),
            }
        }
        weights.sort_by_key(|&(p, _)| p);
        weights
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_budget_in_phase_order() {
        let shares = BudgetShares::default();
        let total: f64 = phase_shares(&shares).iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let plan = BudgetPlan::new(Duration::from_secs(100), &shares);
        assert!((plan.deadline(Phase::MaxFit).as_secs_f64() - 14.0).abs() < 1e-6);
        assert!((plan.deadline(Phase::LrCheck).as_secs_f64() - 100.0).abs() < 1e-6);
        let ends: Vec<f64> = plan.phases.iter().map(|p| p.ends_at_seconds).collect();
        // In order; the ramp's default share is 0 (not tried), so it ends
        // with the check.
        assert!(ends.windows(2).all(|w| w[0] <= w[1]), "{ends:?}");
        assert!(ends[..6].windows(2).all(|w| w[0] < w[1]), "{ends:?}");
        // Time saved early carries over: a phase starting late still gets
        // everything up to its own deadline.
        assert!(
            (plan
                .left(Phase::Race, Duration::from_secs(20))
                .as_secs_f64()
                - 70.0)
                .abs()
                < 1e-6
        );
        assert_eq!(
            plan.left(Phase::MaxFit, Duration::from_secs(20)),
            Duration::ZERO
        );
    }

    #[test]
    fn replanning_shares_what_is_left_by_runs() {
        let mut plan = BudgetPlan::new(Duration::from_secs(100), &BudgetShares::default());
        plan.replan(
            20.0,
            &[
                (Phase::LrConfirmation, 2.0),
                (Phase::Race, 5.0),
                (Phase::LrCheck, 1.0),
            ],
        );
        assert!((plan.deadline(Phase::LrConfirmation).as_secs_f64() - 40.0).abs() < 1e-9);
        assert!((plan.deadline(Phase::Race).as_secs_f64() - 90.0).abs() < 1e-9);
        assert!((plan.deadline(Phase::LrCheck).as_secs_f64() - 100.0).abs() < 1e-9);
        assert!((plan.deadline(Phase::MaxFit).as_secs_f64() - 14.0).abs() < 1e-6);
    }

    #[test]
    fn the_policy_sets_the_shares() {
        let shares = BudgetShares {
            max_fit: 0.5,
            throughput: 0.1,
            lr_range_test: 0.1,
            lr_confirmation: 0.1,
            race: 0.1,
            lr_check: 0.1,
            ramp: 0.0,
        };
        let plan = BudgetPlan::new(Duration::from_secs(10), &shares);
        assert!((plan.deadline(Phase::MaxFit).as_secs_f64() - 5.0).abs() < 1e-9);
        assert!((plan.deadline(Phase::Throughput).as_secs_f64() - 6.0).abs() < 1e-9);
    }

    #[test]
    fn the_run_book_gives_time_out_by_rank_and_counts_runs_off() {
        // Ranks: the race's planned seeds, the ramp, extra seeds, the check.
        let mut book = RunBook::new(vec![
            (Phase::LrConfirmation, 3.0),
            (Phase::Race, 6.0),
            (Phase::Ramp, 2.0),
            (Phase::Race, 2.0),
            (Phase::LrCheck, 4.0),
        ]);
        // Everything fits: each phase gets its runs.
        assert_eq!(
            book.fitting(100.0),
            [
                (Phase::LrConfirmation, 3.0),
                (Phase::Race, 8.0),
                (Phase::LrCheck, 4.0),
                (Phase::Ramp, 2.0)
            ]
        );
        // Ten runs: the check, the lowest rank, gets none, the extra
        // seeds one.
        assert_eq!(
            book.fitting(10.0),
            [
                (Phase::LrConfirmation, 3.0),
                (Phase::Race, 6.0),
                (Phase::LrCheck, 0.0),
                (Phase::Ramp, 1.0)
            ]
        );
        // A race run ends the confirmations and counts off the planned
        // seeds first.
        book.ran(Phase::Race);
        assert_eq!(
            book.fitting(7.0),
            [
                (Phase::LrConfirmation, 0.0),
                (Phase::Race, 5.0),
                (Phase::LrCheck, 0.0),
                (Phase::Ramp, 2.0)
            ]
        );
        book.close(Phase::Race);
        assert_eq!(
            book.fitting(3.0),
            [
                (Phase::LrConfirmation, 0.0),
                (Phase::Race, 0.0),
                (Phase::LrCheck, 1.0),
                (Phase::Ramp, 2.0)
            ]
        );
        assert!(!book.is_empty());
        book.ran(Phase::Ramp);
        book.ran(Phase::Ramp);
        book.close(Phase::LrCheck);
        assert!(book.is_empty());
        assert!(RunBook::default().is_empty());
    }
}
