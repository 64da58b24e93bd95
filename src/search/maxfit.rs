//! The largest batch that fits under a memory budget.
//!
//! Peak memory is close to affine in batch size (on an H200: 15.8 GiB at
//! 65,536, 28.8 at 131,072, 57.1 at 262,144, 117.9 at 524,288). So: run a
//! small batch, then one sized by a rough prior to use a useful share of the
//! budget, fit `fixed + per_sample x batch` to the fitting points, predict
//! the limit, and verify it from both sides. Predictions that miss fall
//! back to bracketing (geometric bisection), which also copes with memory
//! that jumps or results that are not monotonic. The answer is always a
//! batch that itself ran successfully at full trial length.

use super::stats::{round_down, weighted_affine_fit, AffineFit};
use serde::{Deserialize, Serialize};

/// `peak = fixed_bytes + bytes_per_sample x batch`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AffineMemory {
    pub fixed_bytes: f64,
    pub bytes_per_sample: f64,
}

impl AffineMemory {
    /// Least squares over `(batch, peak)` points, weighted heavily towards
    /// large batches: their memory is what matters near the limit, while
    /// small batches are swamped by fixed costs that do not grow linearly
    /// (allocator arenas, page granularity).
    pub fn fit(points: &[(u64, u64)]) -> Option<AffineMemory> {
        let weighted: Vec<(f64, f64, f64)> = points
            .iter()
            .map(|&(b, m)| (b as f64, m as f64, (b as f64).powi(2)))
            .collect();
        let AffineFit { intercept, slope } = weighted_affine_fit(&weighted)?;
        (slope > 0.0 && slope.is_finite()).then_some(AffineMemory {
            fixed_bytes: intercept,
            bytes_per_sample: slope,
        })
    }

    pub fn predict(&self, batch: u64) -> f64 {
        self.fixed_bytes + self.bytes_per_sample * batch as f64
    }

    /// The largest batch whose predicted peak stays within `bytes`.
    pub fn largest_within(&self, bytes: f64) -> Option<u64> {
        let batch = (bytes - self.fixed_bytes) / self.bytes_per_sample;
        (batch.is_finite() && batch >= 1.0).then_some(batch.floor() as u64)
    }
}

/// What one tested batch size showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// Ran every step under the budget, with this peak.
    Fits { peak_bytes: u64 },
    /// Did not fit or did not run; the reason says which. `out_of_memory`
    /// failures may carry what the trial was seen to need: a lower bound.
    Fails { reason: String, out_of_memory: bool },
    /// Ran out of memory having needed at least `peak_bytes`.
    OutOfMemory { reason: String, peak_bytes: u64 },
}

/// The max-fit search as a state machine: ask it for the next batch to
/// try, tell it what happened. Pure logic, so it is tested without trials.
#[derive(Debug, Clone)]
pub struct MaxFitSearch {
    min_batch: u64,
    max_batch: u64,
    multiple: u64,
    budget_bytes: u64,
    /// Rough bytes per sample from the architecture, for the second probe.
    prior_bytes_per_sample: Option<f64>,
    fits: Vec<(u64, u64)>,
    fails: Vec<(u64, String, bool)>,
    /// Lower bounds on the memory failed sizes needed.
    failed_needs: Vec<(u64, u64)>,
    /// Batches that fitted once and failed on a later run.
    flaky: Vec<u64>,
    retried: Vec<u64>,
    /// A retried failure failed again: failures are reproducible here, so
    /// further ones are not retried.
    failures_reproduce: bool,
    verified: Option<u64>,
    trials: usize,
    /// The training set, once known: no batch above it is tried.
    dataset_cap: Option<u64>,
    /// The spec's `max_batch`, before any cap.
    spec_max_batch: u64,
    /// The largest batch the advice may use, set when probing past it
    /// would cost more than the phase has left.
    usable_cap: Option<u64>,
}

/// The search's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MaxFit {
    /// The largest batch that ran successfully under the budget; `None`
    /// when not even the smallest allowed batch fits.
    pub batch_size: Option<u64>,
    pub peak_bytes: Option<u64>,
    pub budget_bytes: u64,
    /// The smallest batch that failed above the answer, and why.
    pub first_failure: Option<(u64, String)>,
    pub memory_model: Option<AffineMemory>,
    /// The answer is `max_batch` itself: the budget allows more.
    pub capped_by_max_batch: bool,
    /// The answer is the training set's size: memory allows more, the
    /// data does not.
    #[serde(default)]
    pub capped_by_dataset: bool,
    /// The answer is the largest batch the advice may use (the data's and
    /// the real run's cap): probing further would have overrun the
    /// search's time, and memory may allow more.
    #[serde(default)]
    pub capped_by_usable: bool,
    /// Sizes that fitted once and failed later.
    pub flaky_batch_sizes: Vec<u64>,
    pub trials: usize,
}

/// Next step of the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Try(u64),
    Done,
}

/// Most trials the search may spend before it answers with what it has.
const MAX_TRIALS: usize = 14;

impl MaxFitSearch {
    pub fn new(
        min_batch: u64,
        max_batch: u64,
        multiple: u64,
        budget_bytes: u64,
        prior: Option<f64>,
    ) -> Self {
        MaxFitSearch {
            min_batch: min_batch.max(1),
            max_batch: max_batch.max(min_batch.max(1)),
            multiple: multiple.max(1),
            budget_bytes,
            prior_bytes_per_sample: prior.filter(|p| p.is_finite() && *p > 0.0),
            fits: Vec::new(),
            fails: Vec::new(),
            failed_needs: Vec::new(),
            flaky: Vec::new(),
            retried: Vec::new(),
            failures_reproduce: false,
            verified: None,
            trials: 0,
            dataset_cap: None,
            spec_max_batch: max_batch.max(min_batch.max(1)),
            usable_cap: None,
        }
    }

    /// No batch larger than `cap`, the largest the advice may use, is
    /// tried: the session sets it when the next probe would overrun the
    /// phase, so the time goes to the range the advice can use. A later
    /// call replaces it (the cap is estimated from the probes so far, and
    /// rises as larger ones time the step better).
    pub fn cap_at_usable(&mut self, cap: u64) {
        let cap = cap.max(self.min_batch);
        let ceiling = self
            .dataset_cap
            .map_or(self.spec_max_batch, |d| d.min(self.spec_max_batch));
        if cap < ceiling {
            self.max_batch = cap;
            self.usable_cap = Some(cap);
        } else {
            self.max_batch = ceiling;
            self.usable_cap = None;
        }
    }

    /// The usable cap in force, if any.
    pub fn usable_cap(&self) -> Option<u64> {
        self.usable_cap
    }

    /// No batch larger than the training set (`samples`) is tried or
    /// answered: a batch beyond it only repeats samples within a step.
    pub fn cap_at_dataset(&mut self, samples: u64) {
        let cap = samples.max(self.min_batch);
        if cap < self.spec_max_batch {
            self.dataset_cap = Some(cap);
            self.max_batch = self.max_batch.min(cap);
            if self.usable_cap.is_some_and(|u| u >= cap) {
                self.usable_cap = None;
            }
        }
    }

    /// Rounds down to the policy's multiple (batches below it stay as
    /// they are), within the search bounds.
    fn round(&self, batch: u64) -> u64 {
        round_down(batch, self.multiple).clamp(self.min_batch, self.max_batch)
    }

    fn tolerance(&self, batch: u64) -> u64 {
        self.multiple.max((batch as f64 * 0.02).ceil() as u64)
    }

    fn largest_fit(&self) -> Option<(u64, u64)> {
        self.fits
            .iter()
            .filter(|(b, _)| !self.flaky.contains(b))
            .max_by_key(|(b, _)| *b)
            .copied()
    }

    fn smallest_failure_above(&self, lo: u64) -> Option<u64> {
        self.fails
            .iter()
            .map(|(b, _, _)| *b)
            .filter(|b| *b > lo)
            .min()
    }

    pub fn model(&self) -> Option<AffineMemory> {
        let points: Vec<(u64, u64)> = self
            .fits
            .iter()
            .filter(|(b, _)| !self.flaky.contains(b))
            .copied()
            .collect();
        AffineMemory::fit(&points)
    }

    /// Records what a trial of `batch` showed.
    pub fn record(&mut self, batch: u64, probe: Probe) {
        let probe = match probe {
            Probe::OutOfMemory { reason, peak_bytes } => {
                if peak_bytes > 0 {
                    self.failed_needs.push((batch, peak_bytes));
                }
                Probe::Fails {
                    reason,
                    out_of_memory: true,
                }
            }
            other => other,
        };
        self.trials += 1;
        match probe {
            Probe::Fits { peak_bytes } => {
                if self.verified == Some(u64::MAX) {
                    self.verified = Some(batch);
                }
                self.fits.push((batch, peak_bytes));
            }
            Probe::OutOfMemory { .. } => unreachable!("converted above"),
            Probe::Fails {
                reason,
                out_of_memory,
            } => {
                if self.retried.contains(&batch) && !out_of_memory {
                    self.failures_reproduce = true;
                }
                // A failure at or below a size that fitted before: the
                // results are not monotonic. Distrust the earlier fits.
                let contradicted: Vec<u64> = self
                    .fits
                    .iter()
                    .map(|(b, _)| *b)
                    .filter(|b| *b >= batch)
                    .collect();
                for b in contradicted {
                    if !self.flaky.contains(&b) {
                        self.flaky.push(b);
                    }
                }
                if self.verified == Some(u64::MAX) {
                    self.verified = None;
                }
                self.fails.push((batch, reason, out_of_memory));
            }
        }
    }

    /// Whether a non-memory failure at `batch` deserves one retry (a crash
    /// or timeout can be a fluke; running out of memory is not). A `true`
    /// counts the failed attempt; the retry's result is then recorded.
    pub fn should_retry(&mut self, batch: u64, probe: &Probe) -> bool {
        match probe {
            Probe::Fails {
                out_of_memory: false,
                ..
            } if !self.retried.contains(&batch)
                && !self.failures_reproduce
                && self.trials + 1 < MAX_TRIALS =>
            {
                self.retried.push(batch);
                self.trials += 1;
                true
            }
            _ => false,
        }
    }

    /// The next batch to try, or `Done`.
    pub fn next_step(&mut self) -> Next {
        if self.trials >= MAX_TRIALS {
            return Next::Done;
        }
        let Some((lo, lo_peak)) = self.largest_fit() else {
            // Nothing fits yet: start at the smallest allowed batch (one
            // rounding multiple, when allowed), then fall back to the minimum.
            let start = self.round(self.multiple.max(self.min_batch));
            let tried = |b: u64| self.fails.iter().any(|(f, _, _)| *f == b);
            return if !tried(start) {
                Next::Try(start)
            } else if !tried(self.min_batch) {
                Next::Try(self.min_batch)
            } else {
                Next::Done
            };
        };
        let hi = self.smallest_failure_above(lo);
        if lo >= self.max_batch {
            return self.verify_or_done(lo, lo_peak);
        }
        if let Some(hi) = hi {
            if hi.saturating_sub(lo) <= self.tolerance(lo) {
                return self.verify_or_done(lo, lo_peak);
            }
        }
        let ceiling = hi.map_or(self.max_batch, |h| h - 1).min(self.max_batch);
        let candidate = self.candidate(lo, lo_peak, hi);
        let candidate = self.round(candidate.clamp(lo + 1, ceiling.max(lo + 1)));
        if candidate <= lo || hi.is_some_and(|h| candidate >= h) {
            // Rounding leaves nothing between the bracket's ends.
            return self.verify_or_done(lo, lo_peak);
        }
        Next::Try(candidate)
    }

    /// Re-runs the answer once when the results give reason to doubt it:
    /// it sits at the very edge of the budget, some size already proved
    /// flaky, or memory strays from the affine model. Otherwise the policy's
    /// headroom absorbs the small run-to-run noise near the limit, and a
    /// re-run would only cost a trial.
    fn verify_or_done(&mut self, lo: u64, lo_peak: u64) -> Next {
        let at_the_edge = lo_peak as f64 > 0.995 * self.budget_bytes as f64;
        let erratic = !self.flaky.is_empty() || self.model_strays(lo);
        let tested_twice = self.fits.iter().filter(|(b, _)| *b == lo).count() >= 2;
        if (at_the_edge || erratic)
            && !tested_twice
            && self.verified.is_none()
            && self.trials < MAX_TRIALS
        {
            self.verified = Some(u64::MAX);
            return Next::Try(lo);
        }
        Next::Done
    }

    /// Whether a fitting point near the answer is more than 5% off the
    /// affine model (memory that jumps or drifts between runs).
    fn model_strays(&self, lo: u64) -> bool {
        let Some(model) = self.model() else {
            return false;
        };
        self.fits
            .iter()
            .filter(|(b, _)| *b * 4 >= lo && !self.flaky.contains(b))
            .any(|(b, peak)| (model.predict(*b) - *peak as f64).abs() > 0.05 * *peak as f64)
    }

    fn candidate(&self, lo: u64, lo_peak: u64, hi: Option<u64>) -> u64 {
        let target = 0.99 * self.budget_bytes as f64;
        if self.largest_fit_count() == 1 && hi.is_none() {
            // Second probe: aim at a third of the budget with the prior.
            return match self.prior_bytes_per_sample {
                Some(prior) => {
                    let room = self.budget_bytes as f64 / 3.0 - lo_peak as f64;
                    let jump = (room / prior).max(lo as f64);
                    (lo as f64 + jump).min(lo as f64 * 1024.0) as u64
                }
                None => lo.saturating_mul(16),
            };
        }
        let predicted = self.model().and_then(|m| m.largest_within(target));
        match (predicted, hi) {
            (Some(p), hi) if p > lo && hi.is_none_or(|h| p < h) => {
                if p - lo <= self.tolerance(lo) {
                    // The prediction says we are there: confirm from above.
                    lo + self.tolerance(lo)
                } else {
                    p
                }
            }
            (_, Some(hi)) => match self.secant(lo, lo_peak, hi, target) {
                // The failure's measured need bounds the slope from below:
                // interpolate between the largest fit and the failure.
                Some(b) => b,
                // Bracketed but nothing to interpolate: bisect, in log
                // space while the bracket is wide.
                None if hi > lo.saturating_mul(16) => {
                    ((lo as f64 * hi as f64).sqrt() as u64).max(lo + 1)
                }
                // A narrow one: the failure needed at least the budget, so
                // the line from the largest fit to (hi, budget) bounds the
                // answer from above; aim a little under it.
                None => {
                    let budget = self.budget_bytes as f64;
                    let aim = 0.985 * budget;
                    let hi_was_memory = self.fails.iter().any(|(b, _, oom)| *b == hi && *oom);
                    if hi_was_memory && (lo_peak as f64) < aim {
                        let b = lo as f64
                            + (aim - lo_peak as f64) * (hi - lo) as f64 / (budget - lo_peak as f64);
                        (b as u64).clamp(lo + 1, hi - 1)
                    } else {
                        lo + (hi - lo) / 2
                    }
                }
            },
            (Some(p), None) if p <= lo => lo + self.tolerance(lo),
            _ => lo.saturating_mul(4),
        }
    }

    /// The batch where the line from `(lo, lo_peak)` to the failure at `hi`
    /// (using the least it was seen to need) reaches `target`.
    fn secant(&self, lo: u64, lo_peak: u64, hi: u64, target: f64) -> Option<u64> {
        let need = self
            .failed_needs
            .iter()
            .filter(|(b, _)| *b == hi)
            .map(|(_, n)| *n)
            .max()?;
        let (lo_peak, need) = (lo_peak as f64, need as f64);
        // A need barely past the budget is the kill point, not a measure
        // of the slope: interpolating on it would creep towards `hi`.
        if need <= 1.05 * target || lo_peak >= target || hi <= lo {
            return None;
        }
        let batch = lo as f64 + (target - lo_peak) * (hi - lo) as f64 / (need - lo_peak);
        let batch = batch as u64;
        (batch > lo && batch < hi).then_some(batch)
    }

    fn largest_fit_count(&self) -> usize {
        let mut sizes: Vec<u64> = self
            .fits
            .iter()
            .filter(|(b, _)| !self.flaky.contains(b))
            .map(|(b, _)| *b)
            .collect();
        sizes.dedup();
        sizes.len()
    }

    /// The answer, from what the trials showed.
    pub fn result(&self) -> MaxFit {
        let best = self.largest_fit();
        let first_failure = best.and_then(|(lo, _)| {
            self.fails
                .iter()
                .filter(|(b, _, _)| *b > lo)
                .min_by_key(|(b, _, _)| *b)
                .map(|(b, reason, _)| (*b, reason.clone()))
        });
        let first_failure = first_failure.or_else(|| {
            best.is_none()
                .then(|| {
                    self.fails
                        .iter()
                        .min_by_key(|(b, _, _)| *b)
                        .map(|(b, r, _)| (*b, r.clone()))
                })
                .flatten()
        });
        let mut flaky = self.flaky.clone();
        flaky.sort_unstable();
        MaxFit {
            batch_size: best.map(|(b, _)| b),
            peak_bytes: best.map(|(_, p)| p),
            budget_bytes: self.budget_bytes,
            first_failure,
            memory_model: self.model(),
            capped_by_max_batch: self.dataset_cap.is_none()
                && self.usable_cap.is_none()
                && best.is_some_and(|(b, _)| b >= self.max_batch),
            capped_by_dataset: self
                .dataset_cap
                .is_some_and(|cap| best.is_some_and(|(b, _)| b >= self.round(cap))),
            capped_by_usable: self
                .usable_cap
                .is_some_and(|cap| best.is_some_and(|(b, _)| b >= self.round(cap))),
            flaky_batch_sizes: flaky,
            trials: self.trials,
        }
    }
}

/// A rough bytes-per-sample estimate from the architecture: activations
/// kept for the backward pass plus their gradients and the host-side batch.
/// Only used to size the search's second probe; off by 3x it costs nothing.
/// `None` for a command job, whose model batchd cannot see.
pub fn prior_bytes_per_sample(spec: &crate::spec::JobSpec, element_bytes: f64) -> Option<f64> {
    use crate::spec::ModelSpec;
    let values = match spec.model()? {
        ModelSpec::Mlp(m) => {
            let input = m.input_size.unwrap_or(256) as f64;
            input * 2.0
                + m.hidden.iter().map(|h| *h as f64 * 3.0).sum::<f64>()
                + m.classes as f64 * 3.0
        }
        ModelSpec::Cnn(c) => {
            let (mut h, mut w) = (c.height as f64, c.width as f64);
            let mut total = (c.channels * c.height * c.width) as f64 * 2.0;
            for (stage, width) in c.stages.iter().enumerate() {
                if stage > 0 {
                    h = (h / 2.0).ceil();
                    w = (w / 2.0).ceil();
                }
                // Two conv + norm + activation per block, plus the stem.
                total += h * w * *width as f64 * 7.0 * c.blocks_per_stage as f64;
            }
            total
        }
        ModelSpec::Transformer(t) => {
            let (ctx, d) = (t.context_length as f64, t.d_model as f64);
            let per_layer =
                ctx * d * (10.0 + 2.0 * t.mlp_ratio as f64) + 3.0 * t.heads as f64 * ctx * ctx;
            t.layers as f64 * per_layer + ctx * t.vocab_size as f64 * 3.0 + ctx * 2.0
        }
    };
    // Values kept for backward, their gradients, and temporaries; the
    // factor was calibrated on CPU and H200 trials (within 2x either way).
    Some(values * element_bytes * 1.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the search against a memory function; returns the answer
    /// and the sizes it tried.
    fn drive(
        search: &mut MaxFitSearch,
        memory: impl Fn(u64, usize) -> Option<u64>,
    ) -> (MaxFit, Vec<u64>) {
        let budget = search.budget_bytes;
        let probe_of = |peak: Option<u64>| match peak {
            Some(peak) if peak <= budget => Probe::Fits { peak_bytes: peak },
            Some(peak) => Probe::OutOfMemory {
                reason: format!("peak {peak}"),
                peak_bytes: peak,
            },
            None => Probe::Fails {
                reason: "crashed".into(),
                out_of_memory: false,
            },
        };
        let mut tried = Vec::new();
        let mut calls = 0;
        while let Next::Try(batch) = search.next_step() {
            tried.push(batch);
            let probe = probe_of(memory(batch, calls));
            calls += 1;
            let probe = if search.should_retry(batch, &probe) {
                tried.push(batch);
                calls += 1;
                probe_of(memory(batch, calls - 1))
            } else {
                probe
            };
            search.record(batch, probe);
        }
        (search.result(), tried)
    }

    fn true_max(budget: u64, multiple: u64, memory: impl Fn(u64) -> u64) -> u64 {
        let mut b = multiple;
        while memory(b + multiple) <= budget {
            b += multiple;
        }
        b
    }

    #[test]
    fn affine_memory_is_found_in_few_trials_and_within_tolerance() {
        // The H200 figures: ~225 KB per sample plus ~1.6 GiB.
        let memory = |b: u64| 1_700_000_000 + 225_000 * b;
        for budget_gib in [8u64, 24, 60, 130] {
            let budget = budget_gib << 30;
            let mut search = MaxFitSearch::new(1, 1 << 22, 8, budget, Some(150_000.0));
            let (fit, tried) = drive(&mut search, |b, _| Some(memory(b)));
            let truth = true_max(budget, 8, memory);
            let answer = fit.batch_size.unwrap();
            assert!(answer <= truth, "answer {answer} above the truth {truth}");
            assert!(
                truth - answer <= 8.max(truth / 50),
                "answer {answer} truth {truth}"
            );
            assert!(
                tried.len() <= 6,
                "budget {budget_gib}GiB took {} trials: {tried:?}",
                tried.len()
            );
            let model = fit.memory_model.unwrap();
            assert!((model.bytes_per_sample - 225_000.0).abs() < 1.0);
        }
    }

    #[test]
    fn without_a_prior_the_search_still_converges() {
        let memory = |b: u64| 50_000_000 + 4_000 * b;
        let budget = 1u64 << 30;
        let mut search = MaxFitSearch::new(1, 1 << 24, 8, budget, None);
        let (fit, tried) = drive(&mut search, |b, _| Some(memory(b)));
        let truth = true_max(budget, 8, memory);
        assert!(
            truth - fit.batch_size.unwrap() <= 8.max(truth / 50),
            "{fit:?}"
        );
        assert!(tried.len() <= 8, "{tried:?}");
    }

    #[test]
    fn noisy_memory_never_yields_an_untested_answer() {
        // +-3% pseudo-random noise on every measurement.
        let memory = |b: u64, call: usize| {
            let noise = 1.0 + 0.03 * (((call * 7919 + b as usize * 31) % 200) as f64 / 100.0 - 1.0);
            Some(((100_000_000 + 30_000 * b) as f64 * noise) as u64)
        };
        let budget = 2u64 << 30;
        let mut search = MaxFitSearch::new(1, 1 << 24, 8, budget, Some(20_000.0));
        let (fit, tried) = drive(&mut search, memory);
        let answer = fit.batch_size.unwrap();
        assert!(tried.contains(&answer));
        assert!(fit.peak_bytes.unwrap() <= budget);
        let truth = (budget - 100_000_000) / 30_000;
        assert!(
            answer as f64 > truth as f64 * 0.9,
            "answer {answer} truth {truth}"
        );
    }

    #[test]
    fn non_monotonic_results_are_distrusted() {
        // 4096 fits the first time it runs and fails on every later run;
        // above 4096 always fails.
        let runs_of_4096 = std::cell::Cell::new(0);
        let memory = |b: u64, _call: usize| -> Option<u64> {
            if b == 4096 {
                runs_of_4096.set(runs_of_4096.get() + 1);
            }
            if b > 4096 || (b == 4096 && runs_of_4096.get() > 1) {
                Some(10 << 30)
            } else {
                Some(100_000_000 + 200_000 * b)
            }
        };
        // 4096 peaks at 99.7% of the budget, so the search re-runs it.
        let budget = 922_000_000;
        let mut search = MaxFitSearch::new(1, 1 << 20, 8, budget, Some(200_000.0));
        let (fit, tried) = drive(&mut search, memory);
        let answer = fit.batch_size.unwrap();
        if tried.contains(&4096) {
            assert_eq!(tried.iter().filter(|b| **b == 4096).count(), 2, "{tried:?}");
            assert_eq!(fit.flaky_batch_sizes, [4096]);
        }
        assert!(answer < 4096, "{answer} {tried:?}");
        assert!(tried.contains(&answer));
    }

    #[test]
    fn memory_that_jumps_is_bracketed() {
        // A step at 3000 (an allocator switching size classes).
        let memory = |b: u64| {
            if b < 3000 {
                10_000_000 + 1_000 * b
            } else {
                900_000_000 + 1_000 * b
            }
        };
        let budget = 500_000_000;
        let mut search = MaxFitSearch::new(1, 1 << 20, 8, budget, Some(1_000.0));
        let (fit, tried) = drive(&mut search, |b, _| Some(memory(b)));
        let answer = fit.batch_size.unwrap();
        assert!((2936..3000).contains(&answer), "{answer} {tried:?}");
        assert!(fit.first_failure.unwrap().0 >= 3000);
    }

    #[test]
    fn runner_errors_are_retried_once_then_bound_the_search() {
        // Everything from 2048 up crashes; below fits.
        let memory = |b: u64, _| {
            if b >= 2048 {
                None
            } else {
                Some(1_000_000 + 100 * b)
            }
        };
        let mut search = MaxFitSearch::new(1, 1 << 20, 8, 1 << 30, Some(100.0));
        let (fit, tried) = drive(&mut search, memory);
        let answer = fit.batch_size.unwrap();
        assert!((2000..2048).contains(&answer), "{answer} {tried:?}");
        assert_eq!(fit.first_failure.as_ref().unwrap().1, "crashed");
        assert!(tried.len() <= MAX_TRIALS);
    }

    #[test]
    fn nothing_fits_is_an_answer_too() {
        let mut search = MaxFitSearch::new(1, 1 << 20, 8, 1_000, Some(100.0));
        let (fit, tried) = drive(&mut search, |_, _| Some(1 << 30));
        assert_eq!(fit.batch_size, None);
        assert_eq!(tried, [8, 1]);
        assert!(fit.first_failure.is_some());
    }

    #[test]
    fn the_max_batch_caps_the_answer() {
        let mut search = MaxFitSearch::new(1, 1000, 8, 1 << 40, Some(100.0));
        let (fit, _) = drive(&mut search, |b, _| Some(1_000 + b));
        assert_eq!(fit.batch_size, Some(1000));
        assert!(fit.capped_by_max_batch);
    }

    #[test]
    fn a_usable_cap_ends_the_search_at_it_and_says_memory_may_allow_more() {
        let mut search = MaxFitSearch::new(2, 100_000, 8, 1 << 40, Some(100.0));
        // One probe, then the session learns the advice can use 24 at most.
        let Next::Try(first) = search.next_step() else {
            panic!("a first probe")
        };
        assert_eq!(first, 8);
        search.record(first, Probe::Fits { peak_bytes: 10_000 });
        search.cap_at_usable(24);
        let mut tried = Vec::new();
        while let Next::Try(b) = search.next_step() {
            assert!(b <= 24, "probed {b} past the usable cap");
            tried.push(b);
            search.record(
                b,
                Probe::Fits {
                    peak_bytes: 10_000 + 100 * b,
                },
            );
        }
        assert_eq!(tried.last(), Some(&24));
        let fit = search.result();
        assert_eq!(fit.batch_size, Some(24));
        assert!(fit.capped_by_usable);
        assert!(!fit.capped_by_max_batch && !fit.capped_by_dataset);
        // A better-timed estimate raises the cap, and the search goes on to it.
        search.cap_at_usable(40);
        assert_eq!(search.next_step(), Next::Try(40));
        search.record(40, Probe::Fits { peak_bytes: 14_000 });
        assert_eq!(search.next_step(), Next::Done);
        assert_eq!(search.result().batch_size, Some(40));
        // A cap above the spec's max batch changes nothing.
        let mut search = MaxFitSearch::new(2, 16, 8, 1 << 40, Some(100.0));
        search.cap_at_usable(24);
        let (fit, _) = drive(&mut search, |b, _| Some(1_000 + b));
        assert_eq!(fit.batch_size, Some(16));
        assert!(fit.capped_by_max_batch && !fit.capped_by_usable);
    }
}
