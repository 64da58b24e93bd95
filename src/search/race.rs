//! The goodput race: the best few candidate batches, each at the LR its
//! rule gives, trained for the same wall-clock time (or, for the
//! generalization objective, the same number of epochs) with more than one
//! seed, and judged on validation loss. It measures the trade-off the
//! policy claims to optimize instead of trusting a model of it.
//!
//! The judging is pure: the search feeds it runs and asks whom to re-seed.

use super::noise::NoiseScale;
use super::stats::{mean, pooled_sd, sample_sd, t_quantile_90};
use crate::policy::TieRule;
use crate::trial::Outcome;
use serde::{Deserialize, Serialize};

/// What every candidate of a race gets the same amount of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum RaceBudget {
    /// Training seconds per run (steps = seconds / modelled step time).
    WallClock { seconds: f64 },
    /// Passes over the training data per run.
    Epochs { epochs: f64 },
}

impl std::fmt::Display for RaceBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RaceBudget::WallClock { seconds } => write!(f, "{seconds:.1} s of training each"),
            RaceBudget::Epochs { epochs } => write!(f, "{epochs:.2} epochs each"),
        }
    }
}

/// One seed of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RaceRun {
    pub seed: u64,
    /// `None` when the run diverged or failed.
    pub validation_loss: Option<f64>,
    pub outcome: Outcome,
    #[serde(default, with = "crate::trial::json_float::vec")]
    #[schema(value_type = Vec<Option<f64>>)]
    pub losses: Vec<f64>,
    /// The step each point of `losses` ends at, when the curve was cut to
    /// [`super::curve::MAX_CURVE_POINTS`] bucket means; absent when every
    /// step has its point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_steps: Vec<u32>,
}

/// One candidate batch with its LR and the runs at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RaceEntry {
    pub batch_size: u64,
    pub learning_rate: f64,
    pub steps: u32,
    pub warmup_steps: u32,
    pub runs: Vec<RaceRun>,
}

impl RaceEntry {
    /// Mean validation loss over the seeds; `None` when any seed failed (a
    /// setting that diverges on some seeds is not a recommendation).
    pub fn mean_loss(&self) -> Option<f64> {
        mean(&self.losses()?)
    }

    /// Sample standard deviation over the seeds (`None` below two seeds).
    pub fn spread(&self) -> Option<f64> {
        sample_sd(&self.losses()?)
    }

    fn losses(&self) -> Option<Vec<f64>> {
        self.runs
            .iter()
            .map(|r| r.validation_loss.filter(|l| l.is_finite()))
            .collect()
    }
}

/// The race as evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Race {
    pub budget: RaceBudget,
    pub entries: Vec<RaceEntry>,
    /// The winning batch, when any candidate finished on every seed.
    pub winner: Option<u64>,
    /// The winner's lead over the runner-up was within the seed-to-seed
    /// spread even after extra seeds.
    pub within_noise: bool,
    /// The policy model's choice: the batch the candidates were spread
    /// around, or, where the race resolved the noise scale the reference
    /// batch could not (`tie_noise`), the model's choice re-run with it,
    /// which the tie rule then uses.
    #[serde(default)]
    pub preferred: u64,
    /// The noise scale the race resolved and the tie rule's model used
    /// (see `preferred`): the best-resolved of the candidates' points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_noise: Option<NoiseScale>,
    /// The rule that picked among the tied candidates, when the race ended
    /// within noise.
    #[serde(default)]
    pub decided_by: Option<TieRule>,
    pub verdict: String,
}

/// The order of the entries by mean loss, best first; failed ones left
/// out. With seeds as blocks ([`seed_blocks`]), by the seed-adjusted means:
/// a candidate given an extra seed is not ranked on that seed's luck.
fn ranked(entries: &[RaceEntry], blocks: Option<&SeedBlocks>) -> Vec<(usize, f64)> {
    let mut scored: Vec<(usize, f64)> = entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match blocks {
            Some(b) => b.adjusted.get(i).copied().flatten().map(|m| (i, m)),
            None => e.mean_loss().map(|m| (i, m)),
        })
        .collect();
    scored.sort_by(|a, b| a.1.total_cmp(&b.1));
    scored
}

/// The race's losses read with each seed as a block. Every candidate's
/// seed `s` starts from the same initialization and sees the same data
/// order, so a seed's luck is shared: on the quick-start job two seeds
/// differed by 0.036 on every candidate while the candidates' paired
/// differences agreed within 0.003, and the two-sample test, which counts
/// the shared part as noise, called every such race a tie. The additive
/// model loss = candidate + seed + residual takes the shared part out.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedBlocks {
    /// Per entry, its mean loss over the seeds it ran with the seeds'
    /// effects taken out (the plain mean when every candidate ran the same
    /// seeds); `None` for a candidate that did not finish every seed.
    pub adjusted: Vec<Option<f64>>,
    /// The spread of one run's loss that the candidate and the seed do not
    /// explain, at least [`MIN_RELATIVE_SPREAD`] of the best mean.
    pub spread: f64,
    /// Its degrees of freedom: runs less candidates less seeds plus one.
    pub df: usize,
}

/// A floor on the residual spread, relative to the loss: a fit whose
/// residuals vanish (a simulated race) would call any lead clear; with it,
/// a lead of about a tenth of a percent of the loss is not.
pub const MIN_RELATIVE_SPREAD: f64 = 0.001;

/// Fits [`SeedBlocks`] over the candidates that finished every seed they
/// ran. `None` without a degree of freedom left (every candidate on one
/// seed, or one candidate), and `None` where blocking does not pay: where
/// the residual spread is not below the two-sample spread pooled over the
/// same candidates, the seeds share no luck worth taking out, and the
/// pairwise two-sample test is the sturdier one (a candidate whose seeds
/// disagree with the others', an LR too high for its batch, would widen
/// every comparison's residual: a digits race tied its best candidate with
/// one 40% worse that way). Least squares by alternating means, exact
/// after one pass when every candidate ran the same seeds; the seeds share
/// runs with each other through the first seed every candidate runs, so
/// the design is connected and the count of degrees of freedom holds.
pub fn seed_blocks(entries: &[RaceEntry]) -> Option<SeedBlocks> {
    let finished: Vec<(usize, Vec<(u64, f64)>)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.runs.is_empty() && e.losses().is_some())
        .map(|(i, e)| {
            let runs = e
                .runs
                .iter()
                .filter_map(|r| Some((r.seed, r.validation_loss?)))
                .collect();
            (i, runs)
        })
        .collect();
    let mut seeds: Vec<u64> = finished
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(|&(seed, _)| seed))
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    let observations: usize = finished.iter().map(|(_, runs)| runs.len()).sum();
    let df = (observations + 1).checked_sub(finished.len() + seeds.len())?;
    if df == 0 {
        return None;
    }
    let seed_index = |seed: u64| seeds.binary_search(&seed).unwrap_or(0);
    // The same runs as the two-sample test sees them.
    let groups: Vec<Vec<f64>> = finished
        .iter()
        .map(|(_, runs)| runs.iter().map(|r| r.1).collect())
        .collect();
    let mut candidate: Vec<f64> = groups.iter().filter_map(|g| mean(g)).collect();
    let mut seed_effect = vec![0.0; seeds.len()];
    for _ in 0..200 {
        let mut sums = vec![(0.0, 0usize); seeds.len()];
        for ((_, runs), c) in finished.iter().zip(&candidate) {
            for &(seed, loss) in runs {
                let slot = &mut sums[seed_index(seed)];
                slot.0 += loss - c;
                slot.1 += 1;
            }
        }
        let raw: Vec<f64> = sums.iter().map(|&(sum, n)| sum / n.max(1) as f64).collect();
        // Seed effects average zero, so a candidate's effect reads as its
        // mean loss over an average seed.
        let centre = raw.iter().sum::<f64>() / raw.len() as f64;
        seed_effect = raw.iter().map(|r| r - centre).collect();
        let next: Vec<f64> = finished
            .iter()
            .map(|(_, runs)| {
                runs.iter()
                    .map(|&(seed, loss)| loss - seed_effect[seed_index(seed)])
                    .sum::<f64>()
                    / runs.len() as f64
            })
            .collect();
        let change = next
            .iter()
            .zip(&candidate)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        candidate = next;
        if change < 1e-12 {
            break;
        }
    }
    let squares: f64 = finished
        .iter()
        .zip(&candidate)
        .flat_map(|((_, runs), c)| {
            let seed_effect = &seed_effect;
            runs.iter()
                .map(move |&(seed, loss)| (loss - c - seed_effect[seed_index(seed)]).powi(2))
        })
        .sum();
    let residual = (squares / df as f64).sqrt();
    let unblocked = pooled_sd(groups.iter().map(Vec::as_slice)).map(|(sd, _)| sd);
    if unblocked.is_some_and(|sd| residual >= sd) {
        return None;
    }
    let best = candidate.iter().copied().fold(f64::INFINITY, f64::min);
    let mut adjusted = vec![None; entries.len()];
    for ((i, _), c) in finished.iter().zip(&candidate) {
        adjusted[*i] = Some(*c);
    }
    Some(SeedBlocks {
        adjusted,
        spread: residual.max(MIN_RELATIVE_SPREAD * best.abs()),
        df,
    })
}

/// The noise a paired comparison at one seed carries: the spread of the
/// difference of two runs on the same seed (sqrt 2 residual spreads) with
/// seeds as blocks; without them, the two-sample pooled spread of `among`.
pub fn paired_noise(entries: &[RaceEntry], among: &[usize]) -> Option<f64> {
    match seed_blocks(entries) {
        Some(blocks) => Some(blocks.spread * std::f64::consts::SQRT_2),
        None => pooled_spread(entries, among).map(|(spread, _)| spread),
    }
}

/// The rise a difference of two runs on one seed must pass to be more
/// than seed noise: the one-sided 90% t quantile times the spread of such
/// a difference (sqrt 2 residual spreads with seeds as blocks; without
/// them, sqrt 2 seed spreads pooled over every candidate that finished two
/// seeds). `None` where the race gives no spread.
pub fn clear_paired_rise(entries: &[RaceEntry]) -> Option<f64> {
    let (spread, df) = match seed_blocks(entries) {
        Some(blocks) => (blocks.spread, blocks.df),
        None => {
            let all: Vec<usize> = (0..entries.len()).collect();
            pooled_spread(entries, &all)?
        }
    };
    Some(t_quantile_90(df) * spread * std::f64::consts::SQRT_2)
}

/// The seed-to-seed spread of one run's validation loss, pooled over the
/// candidates `among` (indices into `entries`) that finished two seeds or
/// more, with its degrees of freedom. Pooling two candidates' seeds, as
/// Student's two-sample test does, steadies the spread: one candidate's
/// two seeds give one degree of freedom, one time in four under a third
/// of the true spread, and such a pair called "clear wins" (README,
/// "Repeatable advice"). Only candidates in contention are pooled: one
/// whose LR is too high for its batch scatters far more than the rest.
pub fn pooled_spread(entries: &[RaceEntry], among: &[usize]) -> Option<(f64, usize)> {
    let losses: Vec<Vec<f64>> = among
        .iter()
        .filter_map(|&i| entries.get(i)?.losses())
        .collect();
    pooled_sd(losses.iter().map(Vec::as_slice))
}

/// Entries (indices) whose mean is within the noise of the best one's: a
/// lead that a one-sided 90% t-test does not call, on the standard error of
/// the difference of the two means, so more seeds narrow it. With seeds as
/// blocks ([`seed_blocks`]) the test is on the seed-adjusted means and the
/// residual spread; without (no degree of freedom left, or seeds that
/// share no luck), it is Student's two-sample test on the pair's pooled
/// spread ([`pooled_spread`]). Where neither gives a spread, no lead is within
/// noise.
pub fn tied_with_best(entries: &[RaceEntry]) -> Vec<usize> {
    let blocks = seed_blocks(entries);
    tied_given(entries, blocks.as_ref(), &ranked(entries, blocks.as_ref()))
}

/// The spread (and its degrees of freedom) a test among `among` rests on:
/// the residual one with seeds as blocks, else the pair's pooled spread.
fn test_spread(
    entries: &[RaceEntry],
    blocks: Option<&SeedBlocks>,
    among: &[usize],
) -> Option<(f64, usize)> {
    match blocks {
        Some(b) => Some((b.spread, b.df)),
        None => pooled_spread(entries, among),
    }
}

/// [`tied_with_best`] on a fit and a ranking already made.
fn tied_given(
    entries: &[RaceEntry],
    blocks: Option<&SeedBlocks>,
    ranking: &[(usize, f64)],
) -> Vec<usize> {
    let Some(&(best, best_mean)) = ranking.first() else {
        return Vec::new();
    };
    let seeds = |i: usize| entries[i].runs.len().max(1) as f64;
    ranking
        .iter()
        .filter(|&&(i, mean)| {
            i == best
                || test_spread(entries, blocks, &[best, i]).is_some_and(|(spread, df)| {
                    let error = spread * (1.0 / seeds(best) + 1.0 / seeds(i)).sqrt();
                    mean - best_mean <= t_quantile_90(df) * error
                })
        })
        .map(|&(i, _)| i)
        .collect()
}

/// Whether entry `i` is out of contention on the runs made so far, so the
/// verdict stands without a planned seed of it that the budget refuses:
/// one of its seeds failed (a failed seed disqualifies a candidate), or
/// its mean trails the leader's past the same one-sided 90% t-test
/// [`decide`] applies, on a spread that exists (a further seed would have
/// to overturn a test it already failed).
/// A candidate with no run yet, the leader, and one within noise of it
/// are not beaten.
pub fn beaten(entries: &[RaceEntry], i: usize) -> bool {
    let Some(entry) = entries.get(i).filter(|e| !e.runs.is_empty()) else {
        return false;
    };
    if entry.losses().is_none() {
        return true;
    }
    let blocks = seed_blocks(entries);
    let ranking = ranked(entries, blocks.as_ref());
    let Some(&(best, _)) = ranking.first() else {
        return false;
    };
    best != i
        && ranking.iter().any(|&(r, _)| r == i)
        && test_spread(entries, blocks.as_ref(), &[best, i]).is_some()
        && !tied_given(entries, blocks.as_ref(), &ranking).contains(&i)
}

/// Entries that should get another seed before a winner is named: the
/// best and every candidate within noise of it, when there are several.
pub fn needs_another_seed(entries: &[RaceEntry]) -> Vec<usize> {
    let tied = tied_with_best(entries);
    if tied.len() >= 2 {
        tied
    } else {
        Vec::new()
    }
}

/// The tied candidate `rule` picks: `tied` indexes `entries`, `preferred`
/// is the policy model's batch, `speed` the measured samples/s at a batch.
pub fn break_tie(
    entries: &[RaceEntry],
    tied: &[usize],
    rule: TieRule,
    preferred: u64,
    speed: &dyn Fn(u64) -> Option<f64>,
) -> Option<usize> {
    let batch = |i: usize| entries[i].batch_size;
    match rule {
        TieRule::LowestMean => tied.first().copied(),
        TieRule::NearestPreferred => {
            let distance = |i: usize| (batch(i) as f64 / preferred.max(1) as f64).ln().abs();
            tied.iter().copied().min_by(|&a, &b| {
                distance(a)
                    .total_cmp(&distance(b))
                    .then(batch(b).cmp(&batch(a)))
            })
        }
        TieRule::Fastest => tied.iter().copied().max_by(|&a, &b| {
            let (sa, sb) = (speed(batch(a)), speed(batch(b)));
            sa.unwrap_or(0.0)
                .total_cmp(&sb.unwrap_or(0.0))
                .then(batch(a).cmp(&batch(b)))
        }),
    }
}

/// Names the winner: the lowest mean validation loss when it leads beyond
/// the seed-to-seed spread; otherwise the tied candidates are equal on the
/// evidence and `rule` picks among them (see [`break_tie`]), and the
/// verdict says the rule decided.
pub fn decide(
    budget: RaceBudget,
    entries: Vec<RaceEntry>,
    preferred: u64,
    rule: TieRule,
    speed: &dyn Fn(u64) -> Option<f64>,
) -> Race {
    let blocks = seed_blocks(&entries);
    let ranking = ranked(&entries, blocks.as_ref());
    let mean_of = |i: usize| ranking.iter().find(|r| r.0 == i).map_or(f64::NAN, |r| r.1);
    let Some(&(best, best_mean)) = ranking.first() else {
        return Race {
            budget,
            winner: None,
            within_noise: false,
            preferred,
            decided_by: None,
            tie_noise: None,
            verdict: "no candidate finished the race on every seed".into(),
            entries,
        };
    };
    let tied = tied_given(&entries, blocks.as_ref(), &ranking);
    let within_noise = tied.len() >= 2;
    let lowest = &entries[best];
    let seeds = lowest.runs.len();
    // The spread the verdict rests on: the tied candidates', or the
    // leader's and the runner-up's.
    let judged: Vec<usize> = if within_noise {
        tied.clone()
    } else {
        ranking.iter().take(2).map(|&(i, _)| i).collect()
    };
    let pooled = test_spread(&entries, blocks.as_ref(), &judged);
    let spread = pooled.map_or("n/a".to_string(), |(s, df)| {
        if blocks.is_some() {
            format!("{s:.4} after each seed's shared effect, over {df} degrees of freedom")
        } else {
            format!("{s:.4}, pooled over {df} degrees of freedom")
        }
    });
    if within_noise {
        let pick = break_tie(&entries, &tied, rule, preferred, speed).unwrap_or(best);
        let winner = &entries[pick];
        let verdict = format!(
            "batches {:?} finished within seed noise of each other (lowest mean {best_mean:.4} at {} over {seeds} seeds, seed spread {spread}), so the tie rule decided: {} picks {} (mean {:.4}; the model preferred {preferred})",
            tied.iter().map(|&i| entries[i].batch_size).collect::<Vec<_>>(),
            lowest.batch_size,
            rule,
            winner.batch_size,
            mean_of(pick),
        );
        return Race {
            budget,
            winner: Some(winner.batch_size),
            within_noise,
            preferred,
            decided_by: Some(rule),
            tie_noise: None,
            verdict,
            entries,
        };
    }
    let tested = if pooled.is_some() {
        "; a lead past the 90% t-test"
    } else {
        "; no spread to test the lead against"
    };
    let runner_up = ranking
        .get(1)
        .map(|&(i, m)| format!("; runner-up {} at {m:.4}", entries[i].batch_size))
        .unwrap_or_default();
    let verdict = format!(
        "batch {} won with mean validation loss {best_mean:.4} over {seeds} seeds (seed spread {spread}{tested}){runner_up}",
        lowest.batch_size,
    );
    Race {
        budget,
        winner: Some(lowest.batch_size),
        within_noise,
        preferred,
        decided_by: None,
        tie_noise: None,
        verdict,
        entries,
    }
}

/// One race run the machine asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunAsk {
    /// The candidate (index into the entries).
    pub entry: usize,
    pub seed: u64,
    /// A run of the plan (a budget cut makes the search partial), or an
    /// extra seed for a tie (a cut only leaves the tie less resolved).
    pub planned: bool,
}

/// The race as an ask/tell machine: it asks for runs seed-major (every
/// candidate's first seed before any second, so a budget cut still leaves
/// every candidate a run), then extra seeds, round by round, for the
/// candidates still within noise of the best. The driver runs each ask (or
/// skips it when the budget refuses) and tells the machine the run.
#[derive(Debug)]
pub struct RaceMachine {
    entries: Vec<RaceEntry>,
    seeds: u32,
    extra_seeds: u32,
    base_seed: u64,
    /// Candidates that left the race before its second round (`drop_worst`):
    /// asked for no more runs and not judged.
    dropped: Vec<bool>,
    state: RaceState,
}

#[derive(Debug)]
enum RaceState {
    Planned { round: u32, next: usize },
    Extra { round: u32, queue: Vec<usize> },
    Done,
}

impl RaceMachine {
    pub fn new(entries: Vec<RaceEntry>, seeds: u32, extra_seeds: u32, base_seed: u64) -> Self {
        RaceMachine {
            dropped: vec![false; entries.len()],
            entries,
            seeds,
            extra_seeds,
            base_seed,
            state: RaceState::Planned { round: 0, next: 0 },
        }
    }

    pub fn entries(&self) -> &[RaceEntry] {
        &self.entries
    }

    /// The next run to make, or `None` when the race is over.
    pub fn next_run(&mut self) -> Option<RunAsk> {
        loop {
            match &mut self.state {
                RaceState::Planned { round, next } => {
                    let kept_from = |i: usize| (i..self.dropped.len()).find(|&k| !self.dropped[k]);
                    if let Some(entry) = kept_from(*next).filter(|_| *round < self.seeds) {
                        let ask = RunAsk {
                            entry,
                            seed: self.base_seed + u64::from(*round),
                            planned: true,
                        };
                        match kept_from(entry + 1) {
                            Some(following) => *next = following,
                            None => {
                                *round += 1;
                                *next = 0;
                            }
                        }
                        return Some(ask);
                    }
                    self.state = RaceState::Extra {
                        round: 0,
                        queue: Vec::new(),
                    };
                    self.refill();
                }
                RaceState::Extra { round, queue } => {
                    if let Some(entry) = queue.pop() {
                        return Some(RunAsk {
                            entry,
                            seed: self.base_seed + u64::from(self.seeds + *round),
                            planned: false,
                        });
                    }
                    *round += 1;
                    self.refill();
                }
                RaceState::Done => return None,
            }
        }
    }

    /// The planned seed round the next ask starts, when it starts one:
    /// the point where the driver re-plans from what runs cost.
    pub fn round_ahead(&self) -> Option<u32> {
        match self.state {
            RaceState::Planned { round, next: 0 } if round < self.seeds => Some(round),
            _ => None,
        }
    }

    /// Ends the planned rounds before the one ahead, when it would not fit:
    /// every candidate keeps the same number of seeds rather than a round
    /// cut part-way leaving some with fewer. Extra seeds for a tie may
    /// still follow. Returns the seeds each candidate keeps.
    pub fn end_planned_rounds(&mut self) -> u32 {
        if let Some(round) = self.round_ahead() {
            self.seeds = round;
        }
        self.seeds
    }

    /// The candidates still in the race, with their indices.
    fn kept(&self) -> (Vec<usize>, Vec<RaceEntry>) {
        (0..self.entries.len())
            .filter(|&i| !self.dropped[i])
            .map(|i| (i, self.entries[i].clone()))
            .unzip()
    }

    /// Candidates still in the race.
    pub fn racing(&self) -> impl Iterator<Item = &RaceEntry> {
        self.entries
            .iter()
            .zip(&self.dropped)
            .filter(|(_, dropped)| !**dropped)
            .map(|(entry, _)| entry)
    }

    /// Before the second planned round, which a verdict needs whole: the
    /// candidate whose first round came out worst (diverged or failed
    /// runs first, then the highest loss) leaves the race, never leaving
    /// fewer than two. Returns it. Successive halving's rule: a candidate
    /// clearly behind after one seed rarely wins, while one a seed short
    /// leaves the verdict unjudged (a partial search).
    pub fn drop_worst(&mut self) -> Option<RaceEntry> {
        if self.round_ahead() != Some(1) {
            return None;
        }
        let (indices, kept) = self.kept();
        if kept.len() <= 2 {
            return None;
        }
        let first = |e: &RaceEntry| {
            e.runs
                .first()
                .and_then(|r| r.validation_loss)
                .unwrap_or(f64::INFINITY)
        };
        let worst = (0..kept.len()).max_by(|&a, &b| first(&kept[a]).total_cmp(&first(&kept[b])))?;
        self.dropped[indices[worst]] = true;
        Some(kept[worst].clone())
    }

    /// Whether candidate `entry` is out of contention among the candidates
    /// still racing ([`beaten`]).
    pub fn beaten(&self, entry: usize) -> bool {
        let (indices, kept) = self.kept();
        indices
            .iter()
            .position(|&i| i == entry)
            .is_some_and(|at| beaten(&kept, at))
    }

    /// Starts an extra round with the candidates still tied, or ends.
    fn refill(&mut self) {
        let (indices, kept) = self.kept();
        let RaceState::Extra { round, queue } = &mut self.state else {
            return;
        };
        let tied: Vec<usize> = needs_another_seed(&kept)
            .into_iter()
            .map(|i| indices[i])
            .collect();
        if *round >= self.extra_seeds || tied.is_empty() {
            self.state = RaceState::Done;
        } else {
            // Popped from the back: in ranking order.
            *queue = tied.into_iter().rev().collect();
        }
    }

    /// The run made for `ask`.
    pub fn tell(&mut self, ask: RunAsk, run: RaceRun) {
        self.entries[ask.entry].runs.push(run);
    }

    /// Which entries are still in the race (by index), for what the
    /// driver keeps beside them.
    pub fn kept_mask(&self) -> Vec<bool> {
        self.dropped.iter().map(|d| !d).collect()
    }

    /// The entries still in the race with their runs, for [`decide`].
    pub fn into_entries(self) -> Vec<RaceEntry> {
        self.entries
            .into_iter()
            .zip(self.dropped)
            .filter(|(_, dropped)| !dropped)
            .map(|(entry, _)| entry)
            .collect()
    }
}

/// Candidate batches around the model's `preferred` one: a factor `step`
/// either side, inside `[floor, top]`, rounded to `multiple`, distinct.
pub fn candidates(
    preferred: u64,
    step: f64,
    floor: u64,
    top: u64,
    multiple: u64,
    count: usize,
) -> Vec<u64> {
    let round = |b: f64| {
        let b = b.round().max(1.0) as u64;
        let m = multiple.max(1);
        let b = if b >= m { b / m * m } else { b };
        b.clamp(floor.max(1), top.max(floor.max(1)))
    };
    let preferred = preferred as f64;
    let mut factors: Vec<f64> = vec![1.0];
    let mut k = 1;
    while factors.len() < count.max(1) * 3 && k < 8 {
        factors.push(step.powi(-k));
        factors.push(step.powi(k));
        k += 1;
    }
    let mut out: Vec<u64> = Vec::new();
    for f in factors {
        let b = round(preferred * f);
        if !out.contains(&b) {
            out.push(b);
        }
        if out.len() >= count.max(1) {
            break;
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(batch: u64, losses: &[Option<f64>]) -> RaceEntry {
        RaceEntry {
            batch_size: batch,
            learning_rate: 1e-3,
            steps: 100,
            warmup_steps: 5,
            runs: losses
                .iter()
                .enumerate()
                .map(|(i, l)| RaceRun {
                    seed: i as u64,
                    validation_loss: *l,
                    outcome: if l.is_some() {
                        Outcome::Ok
                    } else {
                        Outcome::Diverged
                    },
                    losses: Vec::new(),
                    loss_steps: Vec::new(),
                })
                .collect(),
        }
    }

    const BUDGET: RaceBudget = RaceBudget::WallClock { seconds: 4.0 };

    fn no_speed(_: u64) -> Option<f64> {
        None
    }

    #[test]
    fn a_clear_paired_rise_is_the_t_quantile_of_a_same_seed_difference() {
        // Seeds shared by both candidates (0.02 apart on each), residual
        // wobble 0.001: with seeds as blocks, one degree of freedom.
        let blocked = [
            entry(8, &[Some(2.500), Some(2.522)]),
            entry(32, &[Some(2.700), Some(2.720)]),
        ];
        let blocks = seed_blocks(&blocked).unwrap();
        let rise = clear_paired_rise(&blocked).unwrap();
        let expected = t_quantile_90(blocks.df) * blocks.spread * std::f64::consts::SQRT_2;
        assert!((rise - expected).abs() < 1e-12, "{rise} {expected}");
        assert!(rise < 0.02, "{rise}");
        // Seeds that share no luck: the two-sample spread over every
        // candidate with two seeds (here 0.02 on two degrees of freedom).
        let unblocked = [
            entry(8, &[Some(2.50), Some(2.52)]),
            entry(32, &[Some(2.72), Some(2.70)]),
            entry(64, &[Some(2.9)]),
        ];
        assert!(seed_blocks(&unblocked).is_none());
        let spread = (0.02f64.powi(2) / 2.0 * 2.0 / 2.0).sqrt();
        let rise = clear_paired_rise(&unblocked).unwrap();
        let expected = t_quantile_90(2) * spread * std::f64::consts::SQRT_2;
        assert!((rise - expected).abs() < 1e-12, "{rise} {expected}");
        // One seed each: no spread, no rise can be judged.
        assert_eq!(
            clear_paired_rise(&[entry(8, &[Some(2.5)]), entry(32, &[Some(2.7)])]),
            None
        );
    }

    #[test]
    fn a_clear_lead_wins() {
        let race = decide(
            BUDGET,
            vec![
                entry(64, &[Some(0.60), Some(0.61)]),
                entry(256, &[Some(0.50), Some(0.51)]),
                entry(1024, &[Some(0.70), Some(0.69)]),
            ],
            1024,
            TieRule::NearestPreferred,
            &no_speed,
        );
        assert_eq!(race.winner, Some(256));
        assert!(!race.within_noise);
        assert_eq!(race.decided_by, None);
        assert!(needs_another_seed(&race.entries).is_empty());
    }

    #[test]
    fn a_lead_within_the_spread_asks_for_seeds_and_says_so() {
        let entries = vec![
            entry(64, &[Some(0.50), Some(0.56)]),
            entry(256, &[Some(0.52), Some(0.55)]),
            entry(1024, &[Some(0.90), Some(0.91)]),
        ];
        assert_eq!(needs_another_seed(&entries), vec![0, 1]);
        // The lowest mean (64) leads within noise: the rule decides, and the
        // verdict says so.
        let race = decide(
            BUDGET,
            entries.clone(),
            300,
            TieRule::NearestPreferred,
            &no_speed,
        );
        assert_eq!(race.winner, Some(256), "{}", race.verdict);
        assert!(race.within_noise);
        assert_eq!(race.decided_by, Some(TieRule::NearestPreferred));
        assert!(
            race.verdict.contains("the tie rule decided"),
            "{}",
            race.verdict
        );
        let lowest = decide(BUDGET, entries, 300, TieRule::LowestMean, &no_speed);
        assert_eq!(lowest.winner, Some(64), "{}", lowest.verdict);
    }

    #[test]
    fn a_lead_the_t_test_does_not_call_is_a_tie() {
        // 256 leads 64 by 0.02, more than either one's own spread (0.017,
        // 0.008), which an early rule called a clear win; pooled, the two
        // seeds of each give a spread of 0.0134 on two degrees of freedom
        // (the two-sample test), and with seeds as blocks the residual
        // spread is 0.026 (the third candidate's seeds disagree too), so
        // neither test calls the lead. The third, 0.1 behind, is out.
        let entries = vec![
            entry(64, &[Some(0.508), Some(0.532)]),
            entry(256, &[Some(0.494), Some(0.506)]),
            entry(1024, &[Some(0.56), Some(0.64)]),
        ];
        assert_eq!(tied_with_best(&entries), vec![1, 0]);
        let (spread, df) = pooled_spread(&entries, &[0, 1]).unwrap();
        assert_eq!(df, 2);
        assert!((spread - 0.01342).abs() < 1e-4, "{spread}");
        let race = decide(BUDGET, entries, 1024, TieRule::Fastest, &|b| Some(b as f64));
        assert!(race.within_noise);
        assert_eq!(race.winner, Some(256), "{}", race.verdict);
    }

    #[test]
    fn more_seeds_narrow_what_counts_as_a_tie() {
        // The same means (0.50 and 0.53) and the same spread per run, the
        // seeds' luck not shared (opposite signs): at two seeds each the lead
        // is within the 90% test, at six it is not.
        let seeds = |centre: f64, n: usize, sign: f64| -> Vec<Option<f64>> {
            (0..n)
                .map(|i| Some(centre + sign * if i % 2 == 0 { 0.02 } else { -0.02 }))
                .collect()
        };
        let two = vec![
            entry(64, &seeds(0.50, 2, 1.0)),
            entry(256, &seeds(0.53, 2, -1.0)),
        ];
        assert_eq!(tied_with_best(&two), vec![0, 1]);
        let six = vec![
            entry(64, &seeds(0.50, 6, 1.0)),
            entry(256, &seeds(0.53, 6, -1.0)),
        ];
        assert_eq!(tied_with_best(&six), vec![0]);
        // Single seeds give no spread: no lead is within noise.
        let single = vec![
            entry(64, &seeds(0.50, 1, 1.0)),
            entry(256, &seeds(0.53, 1, 1.0)),
        ];
        assert_eq!(tied_with_best(&single), vec![0]);
    }

    #[test]
    fn seeds_as_blocks_take_out_the_luck_every_candidate_shares() {
        // A quick-start race (2026-12-07): seed 1 came out 0.036 worse than
        // seed 0 on every candidate, while 200's lead over the others held
        // on both seeds (paired differences 0.0046/0.0102 and
        // 0.0055/0.0076).
        let entries = vec![
            entry(200, &[Some(0.5910), Some(0.6268)]),
            entry(808, &[Some(0.5956), Some(0.6370)]),
            entry(1840, &[Some(0.5965), Some(0.6344)]),
        ];
        // The two-sample test counts the shared luck as noise: a tie.
        let (spread, df) = pooled_spread(&entries, &[0, 1]).unwrap();
        assert!(spread > 0.02 && df == 2, "{spread}");
        let blocks = seed_blocks(&entries).unwrap();
        assert_eq!(blocks.df, 2);
        assert!((blocks.spread - 0.0020).abs() < 2e-4, "{blocks:?}");
        // Every candidate ran the same seeds: the adjusted means are the
        // plain ones.
        for (e, adjusted) in entries.iter().zip(&blocks.adjusted) {
            assert!((e.mean_loss().unwrap() - adjusted.unwrap()).abs() < 1e-12);
        }
        assert_eq!(tied_with_best(&entries), vec![0]);
        let race = decide(BUDGET, entries, 1840, TieRule::Fastest, &|b| Some(b as f64));
        assert_eq!(race.winner, Some(200), "{}", race.verdict);
        assert!(!race.within_noise);
        assert!(
            race.verdict.contains("after each seed's shared effect"),
            "{}",
            race.verdict
        );
        // The check's noise is a paired difference's: sqrt 2 residuals.
        let noise = paired_noise(&race.entries, &[0]).unwrap();
        assert!((noise - blocks.spread * 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn seeds_whose_luck_is_not_shared_leave_the_two_sample_test_in_charge() {
        // A digits race (2026-12-07): 5's and 16's seeds disagree (one good
        // where the other is bad), 80 is best on every seed and got an
        // extra one. Blocking over the whole race would widen every
        // comparison with 5's and 16's disagreement (residual 0.0127) and
        // tie 80 with a candidate 40% worse; the two-sample spread is
        // smaller (0.0093), so no blocks, and each pair is tested on its
        // own pooled spread: 80 wins.
        let entries = vec![
            entry(5, &[Some(0.0610), Some(0.0831)]),
            entry(16, &[Some(0.0831), Some(0.0710)]),
            entry(80, &[Some(0.0581), Some(0.0532), Some(0.0511)]),
        ];
        assert_eq!(seed_blocks(&entries), None);
        assert_eq!(tied_with_best(&entries), vec![2]);
        let race = decide(BUDGET, entries, 20, TieRule::NearestPreferred, &no_speed);
        assert_eq!(race.winner, Some(80), "{}", race.verdict);
        assert!(race.verdict.contains("pooled over"), "{}", race.verdict);
    }

    #[test]
    fn an_extra_seed_counts_as_that_seeds_luck_not_its_candidates() {
        // 64 and 256 tied on seeds 0 and 1 and got seed 2, which is 0.08
        // harder for every candidate; 1024 ran seeds 0 and 1 only. By plain
        // means 1024 (0.5475) would rank between them; seed-adjusted it is
        // last, and 64 leads 256 by their paired 0.01.
        let mut entries = vec![
            entry(64, &[Some(0.500), Some(0.520), Some(0.600)]),
            entry(256, &[Some(0.511), Some(0.529), Some(0.610)]),
            entry(1024, &[Some(0.540), Some(0.555)]),
        ];
        assert!(entries[2].mean_loss().unwrap() < entries[1].mean_loss().unwrap());
        let blocks = seed_blocks(&entries).unwrap();
        assert_eq!(blocks.df, 8 + 1 - 3 - 3);
        let adjusted: Vec<f64> = blocks.adjusted.iter().map(|a| a.unwrap()).collect();
        assert!(
            adjusted[0] < adjusted[1] && adjusted[1] < adjusted[2],
            "{adjusted:?}"
        );
        assert!(
            (adjusted[1] - adjusted[0] - 0.01).abs() < 2e-3,
            "{adjusted:?}"
        );
        assert_eq!(ranked(&entries, Some(&blocks))[2].0, 2);
        // A candidate that failed a seed is left out of the fit.
        entries[2].runs[1].validation_loss = None;
        let blocks = seed_blocks(&entries).unwrap();
        assert_eq!(blocks.adjusted[2], None);
        assert_eq!(blocks.df, 6 + 1 - 2 - 3);
    }

    #[test]
    fn seed_blocks_need_a_degree_of_freedom_left() {
        // One seed each: candidates and seeds use every run up.
        let single = vec![entry(64, &[Some(0.5)]), entry(256, &[Some(0.6)])];
        assert_eq!(seed_blocks(&single), None);
        // One candidate: nothing to compare its seeds with.
        assert_eq!(
            seed_blocks(&[entry(64, &[Some(0.5), Some(0.6), Some(0.55)])]),
            None
        );
        // A perfectly additive race leaves no residual: the floor holds
        // the spread at 0.1% of the best mean.
        let additive = vec![
            entry(64, &[Some(0.50), Some(0.60)]),
            entry(256, &[Some(0.52), Some(0.62)]),
        ];
        let blocks = seed_blocks(&additive).unwrap();
        assert!(
            (blocks.spread - MIN_RELATIVE_SPREAD * 0.55).abs() < 1e-9,
            "{blocks:?}"
        );
    }

    #[test]
    fn the_tie_rule_is_deterministic_and_follows_the_objective() {
        // Three candidates all within noise; whichever order the seeds'
        // luck ranks them in, the rule picks the same one.
        let orders = [[0.50, 0.51, 0.52], [0.52, 0.50, 0.51], [0.51, 0.52, 0.50]];
        let speed = |b: u64| Some(1000.0 * (b as f64).sqrt());
        for losses in orders {
            // The middle candidate's seeds disagree with the others': luck
            // no seed shares.
            let entries: Vec<RaceEntry> = [64u64, 256, 1024]
                .iter()
                .zip(losses)
                .zip([1.0, -1.0, 1.0])
                .map(|((&b, l), sign)| entry(b, &[Some(l - sign * 0.03), Some(l + sign * 0.03)]))
                .collect();
            assert_eq!(tied_with_best(&entries).len(), 3);
            let near = decide(
                BUDGET,
                entries.clone(),
                200,
                TieRule::NearestPreferred,
                &speed,
            );
            assert_eq!(near.winner, Some(256), "{}", near.verdict);
            let fast = decide(BUDGET, entries.clone(), 200, TieRule::Fastest, &speed);
            assert_eq!(fast.winner, Some(1024), "{}", fast.verdict);
            assert!(fast.verdict.contains("the fastest"), "{}", fast.verdict);
        }
        // Equal log distances: the larger (faster) batch.
        let tied = vec![
            entry(64, &[Some(0.5), Some(0.52)]),
            entry(256, &[Some(0.5), Some(0.52)]),
        ];
        let race = decide(BUDGET, tied, 128, TieRule::NearestPreferred, &speed);
        assert_eq!(race.winner, Some(256));
    }

    #[test]
    fn a_seed_that_diverged_disqualifies_its_candidate() {
        let race = decide(
            BUDGET,
            vec![
                entry(64, &[Some(0.40), None]),
                entry(256, &[Some(0.50), Some(0.50)]),
            ],
            64,
            TieRule::NearestPreferred,
            &no_speed,
        );
        assert_eq!(race.winner, Some(256));
        let none = decide(
            BUDGET,
            vec![entry(64, &[None, None])],
            64,
            TieRule::NearestPreferred,
            &no_speed,
        );
        assert_eq!(none.winner, None);
    }

    #[test]
    fn a_candidate_behind_past_the_test_is_beaten_one_within_noise_is_not() {
        // The transformer's bench race: the leader's two seeds against the
        // other candidate's one, 0.15 behind on a spread of 0.02.
        let behind = vec![
            entry(4, &[Some(2.4902), Some(2.5183)]),
            entry(16, &[Some(2.6551)]),
        ];
        assert!(beaten(&behind, 1));
        assert!(!beaten(&behind, 0), "the leader is never beaten");
        // The same seeds, the other candidate 0.01 behind: within noise.
        let close = vec![
            entry(4, &[Some(2.4902), Some(2.5183)]),
            entry(16, &[Some(2.5143)]),
        ];
        assert!(!beaten(&close, 1));
        // One seed each: no spread to test a lead against.
        let one_each = vec![entry(4, &[Some(2.49)]), entry(16, &[Some(2.95)])];
        assert!(!beaten(&one_each, 1));
        // No run yet: nothing to judge.
        let unrun = vec![entry(4, &[Some(2.49), Some(2.51)]), entry(16, &[])];
        assert!(!beaten(&unrun, 1));
        // A failed seed disqualifies its candidate, whatever its other seeds.
        let failed = vec![entry(4, &[Some(2.49), Some(2.51)]), entry(16, &[None])];
        assert!(beaten(&failed, 1));
        // The machine asks about its own candidates, those that left aside.
        let mut machine = RaceMachine::new(fresh(&[4, 16, 64]), 2, 0, 0);
        let losses = [[2.4902, 2.5183], [2.6551, 2.6601], [2.51, 2.52]];
        for _ in 0..5 {
            let ask = machine.next_run().unwrap();
            machine.tell(ask, run(ask.seed, losses[ask.entry][ask.seed as usize]));
        }
        // Round two so far: 4 and 16 have two seeds, 64 one.
        assert!(machine.beaten(1));
        assert!(!machine.beaten(0));
        assert!(!machine.beaten(2), "64 is within noise of the leader");
    }

    fn fresh(batches: &[u64]) -> Vec<RaceEntry> {
        batches.iter().map(|&b| entry(b, &[])).collect()
    }

    fn run(seed: u64, loss: f64) -> RaceRun {
        RaceRun {
            seed,
            validation_loss: Some(loss),
            outcome: Outcome::Ok,
            losses: Vec::new(),
            loss_steps: Vec::new(),
        }
    }

    #[test]
    fn the_machine_asks_seed_major_then_extra_seeds_for_the_tied() {
        let mut machine = RaceMachine::new(fresh(&[64, 256, 1024]), 2, 2, 10);
        // 64 and 256 tie (their seeds disagree); 1024 is far behind.
        let losses = [[0.50, 0.53], [0.52, 0.51], [0.90, 0.91]];
        let mut asked = Vec::new();
        while let Some(ask) = machine.next_run() {
            asked.push((ask.entry, ask.seed, ask.planned));
            let loss = if ask.planned {
                losses[ask.entry][(ask.seed - 10) as usize]
            } else {
                // The extra seeds keep 64 and 256 tied.
                0.51 + 0.01 * ask.entry as f64
            };
            machine.tell(ask, run(ask.seed, loss));
        }
        assert_eq!(
            asked,
            [
                (0, 10, true),
                (1, 10, true),
                (2, 10, true),
                (0, 11, true),
                (1, 11, true),
                (2, 11, true),
                // Two extra rounds, for the tied pair only, best first.
                (0, 12, false),
                (1, 12, false),
                (0, 13, false),
                (1, 13, false),
            ]
        );
        let entries = machine.into_entries();
        assert_eq!(entries[0].runs.len(), 4);
        assert_eq!(entries[2].runs.len(), 2);
    }

    #[test]
    fn a_clear_race_asks_no_extra_seed_and_a_skipped_run_is_not_waited_for() {
        let mut machine = RaceMachine::new(fresh(&[64, 256]), 2, 3, 0);
        let mut asked = 0;
        while let Some(ask) = machine.next_run() {
            asked += 1;
            // The budget refuses 256's second seed: the driver tells
            // nothing, and the machine goes on.
            if ask.entry == 1 && ask.seed == 1 {
                continue;
            }
            let loss = [0.40, 0.80][ask.entry] + 0.001 * ask.seed as f64;
            machine.tell(ask, run(ask.seed, loss));
        }
        assert_eq!(asked, 4);
        assert_eq!(machine.entries()[1].runs.len(), 1);
    }

    #[test]
    fn candidates_spread_around_the_choice_within_bounds() {
        assert_eq!(candidates(256, 2.0, 8, 4096, 8, 3), [128, 256, 512]);
        assert_eq!(candidates(256, 4.0, 8, 4096, 8, 3), [64, 256, 1024]);
        // At the top of the range the candidates move down instead.
        assert_eq!(candidates(4096, 2.0, 8, 4096, 8, 3), [1024, 2048, 4096]);
        // A narrow range gives what it has.
        assert_eq!(candidates(16, 2.0, 16, 16, 8, 3), [16]);
    }

    #[test]
    fn planned_rounds_can_end_between_rounds_only() {
        let entries: Vec<RaceEntry> = [64u64, 128, 256].iter().map(|&b| entry(b, &[])).collect();
        let mut machine = RaceMachine::new(entries, 3, 0, 100);
        assert_eq!(machine.round_ahead(), Some(0));
        for _ in 0..3 {
            let ask = machine.next_run().unwrap();
            assert!(ask.planned);
            if ask.entry == 1 {
                // Mid-round there is no re-planning point.
                assert_eq!(machine.round_ahead(), None);
            }
            let loss = 1.0 + ask.entry as f64;
            machine.tell(ask, run(ask.seed, loss));
        }
        assert_eq!(machine.round_ahead(), Some(1));
        for _ in 0..3 {
            let ask = machine.next_run().unwrap();
            let loss = 1.0 + ask.entry as f64;
            machine.tell(ask, run(ask.seed, loss));
        }
        // The third round would not fit: it ends before it starts, and
        // every candidate keeps two seeds.
        assert_eq!(machine.round_ahead(), Some(2));
        assert_eq!(machine.end_planned_rounds(), 2);
        assert_eq!(machine.next_run(), None);
        let entries = machine.into_entries();
        assert!(entries.iter().all(|e| e.runs.len() == 2), "{entries:?}");
    }

    #[test]
    fn the_worst_first_seed_leaves_before_the_second_round_never_below_two() {
        let entries: Vec<RaceEntry> = [64u64, 128, 256, 512]
            .iter()
            .map(|&b| entry(b, &[]))
            .collect();
        let mut machine = RaceMachine::new(entries, 2, 1, 0);
        // Only before the second round.
        assert!(machine.drop_worst().is_none());
        let first = [Some(0.50), None, Some(0.70), Some(0.52)];
        for _ in 0..4 {
            let ask = machine.next_run().unwrap();
            let mut r = run(ask.seed, 0.0);
            r.validation_loss = first[ask.entry];
            machine.tell(ask, r);
        }
        assert_eq!(machine.round_ahead(), Some(1));
        // A run with no loss (diverged) goes first, then the highest loss;
        // two candidates always stay.
        assert_eq!(machine.drop_worst().map(|e| e.batch_size), Some(128));
        assert_eq!(machine.drop_worst().map(|e| e.batch_size), Some(256));
        assert!(machine.drop_worst().is_none());
        assert_eq!(machine.kept_mask(), [true, false, false, true]);
        let mut asked = Vec::new();
        while let Some(ask) = machine.next_run() {
            asked.push((ask.entry, ask.planned));
            // A tie: the kept pair gets its extra seed, the dropped none.
            machine.tell(ask, run(ask.seed, 0.5 + 0.001 * ask.entry as f64));
        }
        assert_eq!(asked, [(0, true), (3, true), (0, false), (3, false)]);
        let entries = machine.into_entries();
        assert_eq!(
            entries.iter().map(|e| e.batch_size).collect::<Vec<_>>(),
            [64, 512]
        );
        assert!(entries.iter().all(|e| e.runs.len() == 3), "{entries:?}");
    }

    #[test]
    fn dropping_the_first_or_last_candidate_keeps_the_rounds_whole() {
        for (first, dropped) in [([0.9, 0.5, 0.6], 0usize), ([0.5, 0.6, 0.9], 2)] {
            let entries: Vec<RaceEntry> =
                [64u64, 128, 256].iter().map(|&b| entry(b, &[])).collect();
            let mut machine = RaceMachine::new(entries, 3, 0, 0);
            for _ in 0..3 {
                let ask = machine.next_run().unwrap();
                machine.tell(ask, run(ask.seed, first[ask.entry]));
            }
            assert_eq!(
                machine.drop_worst().map(|e| e.batch_size),
                Some([64, 128, 256][dropped])
            );
            // Two whole rounds of the two kept, each starting at a round's
            // start; no drop once the second round is under way.
            for round in 1..3 {
                assert_eq!(machine.round_ahead(), Some(round));
                for _ in 0..2 {
                    let ask = machine.next_run().unwrap();
                    assert_ne!(ask.entry, dropped);
                    assert_eq!(ask.seed, u64::from(round));
                    assert!(machine.drop_worst().is_none());
                    machine.tell(ask, run(ask.seed, first[ask.entry]));
                }
            }
            assert_eq!(machine.next_run(), None);
            let entries = machine.into_entries();
            assert_eq!(entries.len(), 2);
            assert!(entries.iter().all(|e| e.runs.len() == 3), "{entries:?}");
        }
    }
}
