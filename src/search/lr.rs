//! Learning-rate pairing: reading an LR range test, judging confirmation
//! runs, and the rule that moves the LR with batch size.

use super::stats::mean;
use serde::{Deserialize, Serialize};

use crate::policy::LrScaling;
use crate::trial::Outcome;

/// A smoothed LR range test and its suggestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RangeTest {
    pub batch_size: u64,
    pub learning_rates: Vec<f64>,
    /// Null where a step's loss was not finite.
    #[schema(value_type = Vec<Option<f64>>)]
    pub losses: Vec<f64>,
    #[schema(value_type = Vec<Option<f64>>)]
    pub smoothed: Vec<f64>,
    /// Where the smoothed loss is lowest.
    pub min_loss_lr: f64,
    /// Where the smoothed loss first rises to 4x its minimum, if it does.
    pub divergence_lr: Option<f64>,
    pub suggestion: f64,
}

/// Smooths with a centered window of about 10% of the points, in log-loss.
/// Users of steepest-slope picks (Lightning, fastai) see suggestions jump
/// between runs because a slope is a derivative of noisy data; the minimum
/// of a wide smoothing is far steadier.
pub fn smooth(losses: &[f64]) -> Vec<f64> {
    let n = losses.len();
    let half = (n / 20).max(2);
    (0..n)
        .map(|i| {
            let window = &losses[i.saturating_sub(half)..(i + half + 1).min(n)];
            mean(window).unwrap_or(f64::NAN)
        })
        .collect()
}

/// Reads a range test: `lrs` and `losses` step by step (the losses may stop
/// early where the sweep diverged).
pub fn analyze_range_test(batch_size: u64, lrs: &[f64], losses: &[f64]) -> Option<RangeTest> {
    let n = lrs.len().min(losses.len());
    if n < 5 {
        return None;
    }
    // Drop the first steps: the loss falls there because the model starts,
    // not because of the LR.
    let skip = (n / 10).min(5);
    let lrs = &lrs[skip..n];
    let losses = &losses[skip..n];
    let smoothed = smooth(losses);
    let (min_index, min_loss) = smoothed
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite())
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, l)| (i, *l))?;
    let divergence_index = smoothed
        .iter()
        .enumerate()
        .skip(min_index)
        .find(|(_, l)| !l.is_finite() || **l > 4.0 * min_loss.max(1e-6))
        .map(|(i, _)| i);
    let min_loss_lr = lrs[min_index];
    // A tenth of the minimum's LR (fastai's "lr_min" rule): safely inside
    // the region where the loss was still falling.
    let mut suggestion = min_loss_lr / 10.0;
    if let Some(div) = divergence_index {
        suggestion = suggestion.min(lrs[div] / 20.0);
    }
    Some(RangeTest {
        batch_size,
        learning_rates: lrs.to_vec(),
        losses: losses.to_vec(),
        smoothed,
        min_loss_lr,
        divergence_lr: divergence_index.map(|i| lrs[i]),
        suggestion: suggestion.max(lrs[0]),
    })
}

/// One exponential LR sweep the range test asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepAsk {
    pub batch_size: u64,
    pub steps: u32,
    pub min_lr: f64,
    pub max_lr: f64,
}

/// The LR range test as an ask/tell machine: one sweep at the reference
/// batch, the geometric middle of the range below the throughput plateau
/// (where the race's candidates gather), asked only when its estimated
/// cost is within twice what its share has left.
#[derive(Debug)]
pub struct RangeTestMachine {
    sweep: SweepAsk,
    state: SweepState,
}

#[derive(Debug)]
enum SweepState {
    Ready,
    Asked,
    Skipped,
    Done(Option<RangeTest>),
}

impl RangeTestMachine {
    /// `floor..=top`: the usable batches; `plateau`: where speed stops
    /// growing; `multiple`: the batch rounding; `steps`, `min_lr`,
    /// `max_lr`: the sweep.
    pub fn new(
        floor: u64,
        top: u64,
        plateau: Option<u64>,
        multiple: u64,
        steps: u32,
        min_lr: f64,
        max_lr: f64,
    ) -> Self {
        let upper = plateau.unwrap_or(top).min(top);
        let middle = ((floor as f64) * (upper as f64)).sqrt();
        let batch_size =
            super::stats::round_down(middle as u64, multiple).clamp(floor, top.max(floor));
        RangeTestMachine {
            sweep: SweepAsk {
                batch_size,
                steps,
                min_lr,
                max_lr,
            },
            state: SweepState::Ready,
        }
    }

    pub fn reference_batch(&self) -> u64 {
        self.sweep.batch_size
    }

    /// The sweep to run, given its step time at the reference batch (if
    /// known), a trial's overhead, and the seconds left in the phase's
    /// share and in the search; `None` once asked, or when it is skipped.
    pub fn next_trial(
        &mut self,
        step_seconds: Option<f64>,
        overhead: f64,
        phase_left: f64,
        time_left: f64,
    ) -> Option<SweepAsk> {
        if !matches!(self.state, SweepState::Ready) {
            return None;
        }
        let estimate = step_seconds.map_or(0.0, |t| t * f64::from(self.sweep.steps)) + overhead;
        if estimate > phase_left * 2.0 || time_left <= 0.0 {
            self.state = SweepState::Skipped;
            return None;
        }
        self.state = SweepState::Asked;
        Some(self.sweep)
    }

    /// The sweep's outcome, its LRs and its per-step losses.
    pub fn tell(&mut self, outcome: Outcome, lrs: &[f64], losses: &[f64]) {
        debug_assert!(matches!(self.state, SweepState::Asked));
        let test = matches!(outcome, Outcome::Ok | Outcome::Diverged)
            .then(|| analyze_range_test(self.sweep.batch_size, lrs, losses))
            .flatten();
        self.state = SweepState::Done(test);
    }

    /// Whether the budget left the sweep out.
    pub fn skipped(&self) -> bool {
        matches!(self.state, SweepState::Skipped)
    }

    /// The range test, when the sweep ran and could be read.
    pub fn finish(self) -> Option<RangeTest> {
        match self.state {
            SweepState::Done(test) => test,
            _ => None,
        }
    }
}

/// One confirmation run: an LR and the validation loss it reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Confirmation {
    pub batch_size: u64,
    pub learning_rate: f64,
    /// `None` when the run diverged or failed.
    pub validation_loss: Option<f64>,
    pub outcome: Outcome,
    /// Training loss per step, for the report's charts (or per bucket of steps: `loss_steps`).
    #[serde(default, with = "crate::trial::json_float::vec")]
    #[schema(value_type = Vec<Option<f64>>)]
    pub losses: Vec<f64>,
    /// The step each point of `losses` ends at, when the curve was cut to
    /// [`super::curve::MAX_CURVE_POINTS`] bucket means; absent when every
    /// step has its point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loss_steps: Vec<u32>,
}

/// The best LR among confirmation runs at one batch size, refined by a
/// parabola through the best point and its neighbours in log-LR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BestLr {
    pub batch_size: u64,
    pub learning_rate: f64,
    pub best_tested_lr: f64,
    pub validation_loss: f64,
    /// The parabola's minimum was used (the best run was not at an edge).
    pub interpolated: bool,
}

/// The finished runs as (LR, validation loss), sorted by LR, with the index
/// of the lowest loss.
fn scored_by_lr(runs: &[Confirmation]) -> Option<(Vec<(f64, f64)>, usize)> {
    let mut scored: Vec<(f64, f64)> = runs
        .iter()
        .filter_map(|r| {
            r.validation_loss
                .filter(|l| l.is_finite())
                .map(|l| (r.learning_rate, l))
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    let index = scored
        .iter()
        .enumerate()
        .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))?
        .0;
    Some((scored, index))
}

/// A bowl in log-LR through the run at `index` and its two neighbours:
/// y = a (x - vertex)^2 + floor, when they make one (a > 0).
struct Bowl {
    a: f64,
    vertex: f64,
    floor: f64,
    /// The neighbours' log-LRs: the vertex is trusted only between them.
    span: (f64, f64),
}

fn bowl_around(scored: &[(f64, f64)], index: usize) -> Option<Bowl> {
    if index == 0 || index + 1 >= scored.len() {
        return None;
    }
    let (x0, y0) = (scored[index - 1].0.ln(), scored[index - 1].1);
    let (x1, y1) = (scored[index].0.ln(), scored[index].1);
    let (x2, y2) = (scored[index + 1].0.ln(), scored[index + 1].1);
    let denominator = (x0 - x1) * (x0 - x2) * (x1 - x2);
    let a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator;
    let b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denominator;
    if a <= 0.0 {
        return None;
    }
    let vertex = -b / (2.0 * a);
    let c = y1 - a * x1 * x1 - b * x1;
    Some(Bowl {
        a,
        vertex,
        floor: a * vertex * vertex + b * vertex + c,
        span: (x0, x2),
    })
}

pub fn best_lr(runs: &[Confirmation]) -> Option<BestLr> {
    let (scored, index) = scored_by_lr(runs)?;
    let (lr, loss) = scored[index];
    let mut result = BestLr {
        batch_size: runs.first()?.batch_size,
        learning_rate: lr,
        best_tested_lr: lr,
        validation_loss: loss,
        interpolated: false,
    };
    if let Some(bowl) = bowl_around(&scored, index) {
        if bowl.vertex > bowl.span.0 && bowl.vertex < bowl.span.1 {
            result.learning_rate = bowl.vertex.exp();
            result.interpolated = true;
        }
    }
    Some(result)
}

/// The LRs whose loss lies within `tolerance` of the best: where the
/// parabola through the best run and its neighbours (in log-LR) stays
/// within it, bounded by the LRs tried; the tried LRs within it when the
/// points make no bowl.
pub fn lr_interval(runs: &[Confirmation], tolerance: f64) -> Option<(f64, f64)> {
    let (scored, index) = scored_by_lr(runs)?;
    let best = scored[index].1;
    let lowest = scored.first()?.0;
    let highest = scored.last()?.0;
    if let Some(bowl) = bowl_around(&scored, index) {
        let half = ((best.min(bowl.floor) + tolerance - bowl.floor).max(0.0) / bowl.a).sqrt();
        return Some((
            (bowl.vertex - half).exp().clamp(lowest, highest),
            (bowl.vertex + half).exp().clamp(lowest, highest),
        ));
    }
    let within: Vec<f64> = scored
        .iter()
        .filter(|(_, l)| *l <= best + tolerance)
        .map(|(lr, _)| *lr)
        .collect();
    Some((within.first().copied()?, within.last().copied()?))
}

/// One step of `spacing` past the edge of `tried` that `best` sits at, or
/// `None` when the best is inside.
fn past_edge(tried: &[f64], best: f64, spacing: f64) -> Option<f64> {
    let min = tried.iter().copied().fold(f64::MAX, f64::min);
    let max = tried.iter().copied().fold(0.0, f64::max);
    if best == min {
        Some(min / spacing)
    } else if best == max {
        Some(max * spacing)
    } else {
        None
    }
}

/// The LR confirmation as an ask/tell machine: the policy's candidates
/// around the range test's suggestion, `spacing` apart (half a decade in
/// the shipped policies), asked from the centre outwards (below before
/// above), then up to `max_extensions` more past whichever edge the best
/// sits at (two below them all when every one diverged). The driver runs
/// each ask, or stops when the budget refuses one.
///
/// The loss is taken to have one minimum in log-LR: a candidate past a
/// point where the loss has already risen by more than `skip_past_rise`
/// (a fraction, from the nearer run to the farther), or past a run that
/// diverged (above it), is not run. On the quick-start job the range
/// test's suggestion sat two steps above the best, and the planned run
/// above it (loss 1.96 beyond 0.68 and 1.29) cost one run in five.
#[derive(Debug)]
pub struct ConfirmMachine {
    /// Factor between neighbouring LRs (the policy's `candidate_spacing`).
    spacing: f64,
    /// Relative rise in the loss past which candidates are skipped.
    skip_past_rise: f64,
    /// Planned LRs not yet asked, in the order they are asked.
    queue: std::collections::VecDeque<f64>,
    /// Every LR asked, planned or extension.
    asked: Vec<f64>,
    /// Planned LRs skipped, and what ruled each out.
    skipped: Vec<SkippedLr>,
    extensions: usize,
    max_extensions: usize,
    runs: Vec<Confirmation>,
}

/// A planned confirmation LR the machine left out, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkippedLr {
    pub learning_rate: f64,
    pub reason: SkipReason,
}

/// What ruled a confirmation LR out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SkipReason {
    /// Between it and the run at `from` (LR, loss), the run at `to` came
    /// out worse by more than the policy's `skip_past_rise`.
    Rose { from: (f64, f64), to: (f64, f64) },
    /// A lower LR diverged.
    AboveDivergence { diverged: f64 },
}

/// One confirmation run the machine asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfirmAsk {
    pub learning_rate: f64,
    /// Past an edge of the plan: a refinement, which a budget cut leaves
    /// out without making the search partial.
    pub extension: bool,
}

impl ConfirmMachine {
    pub fn new(
        center_lr: f64,
        candidates: u32,
        max_extensions: usize,
        spacing: f64,
        skip_past_rise: f64,
    ) -> Self {
        let n = candidates.max(1) as i32;
        let half = (n - 1) / 2;
        let mut offsets: Vec<i32> = (-half..=(n - 1 - half)).collect();
        // From the centre out, the lower of two equally far first: the
        // first two runs then say which side the bowl's floor is on.
        offsets.sort_by_key(|&k| (k.abs(), k > 0));
        ConfirmMachine {
            spacing,
            skip_past_rise,
            queue: offsets
                .into_iter()
                .map(|k| center_lr * spacing.powi(k))
                .collect(),
            asked: Vec::new(),
            skipped: Vec::new(),
            extensions: 0,
            max_extensions,
            runs: Vec::new(),
        }
    }

    pub fn next_run(&mut self) -> Option<ConfirmAsk> {
        while let Some(learning_rate) = self.queue.pop_front() {
            if let Some(skip) = self.ruled_out(learning_rate) {
                self.skipped.push(skip);
                continue;
            }
            self.asked.push(learning_rate);
            return Some(ConfirmAsk {
                learning_rate,
                extension: false,
            });
        }
        if self.runs.is_empty() || self.extensions >= self.max_extensions {
            return None;
        }
        let learning_rate = self.extension()?;
        self.asked.push(learning_rate);
        self.extensions += 1;
        Some(ConfirmAsk {
            learning_rate,
            extension: true,
        })
    }

    /// One more LR past the edge the best sits at, unless the runs rule
    /// it out.
    fn extension(&self) -> Option<f64> {
        let next = match best_lr(&self.runs) {
            Some(best) => past_edge(&self.asked, best.best_tested_lr, self.spacing),
            // Every LR was too high (a range test misled by a noisy loss
            // does that): look below them all.
            None if self.runs.iter().all(|c| c.outcome == Outcome::Diverged) => {
                let min = self.asked.iter().copied().fold(f64::MAX, f64::min);
                Some(min / self.spacing.powi(2))
            }
            None => None,
        }?;
        self.ruled_out(next).is_none().then_some(next)
    }

    /// Why `lr` cannot be the best nor its neighbour, if the runs so far
    /// say so: between it and a finished run, another whose loss is more
    /// than `skip_past_rise` above that run's, or, above a run that
    /// diverged, any LR at all.
    fn ruled_out(&self, lr: f64) -> Option<SkippedLr> {
        let scored = scored_by_lr(&self.runs).map_or_else(Vec::new, |(scored, _)| scored);
        let skip = |reason| {
            Some(SkippedLr {
                learning_rate: lr,
                reason,
            })
        };
        for to in self.runs.iter().filter(|c| c.learning_rate != lr) {
            if to.outcome == Outcome::Diverged && to.learning_rate < lr {
                return skip(SkipReason::AboveDivergence {
                    diverged: to.learning_rate,
                });
            }
            let Some(to_loss) = to.validation_loss.filter(|l| l.is_finite()) else {
                continue;
            };
            // `from` on the near side of `to`, `lr` on the far side.
            let between = |from: f64| (from < to.learning_rate) == (to.learning_rate < lr);
            let from = scored
                .iter()
                .copied()
                .filter(|&(from, _)| from != to.learning_rate && between(from))
                .filter(|&(_, l)| to_loss > l + self.skip_past_rise * l.abs())
                .min_by(|a, b| a.1.total_cmp(&b.1));
            if let Some(from) = from {
                return skip(SkipReason::Rose {
                    from,
                    to: (to.learning_rate, to_loss),
                });
            }
        }
        None
    }

    pub fn tell(&mut self, run: Confirmation) {
        self.runs.push(run);
    }

    /// The planned LRs left out, and why.
    pub fn skipped(&self) -> &[SkippedLr] {
        &self.skipped
    }

    pub fn into_runs(self) -> Vec<Confirmation> {
        self.runs
    }

    /// The planned LRs not yet asked (a budget refusal ends the phase
    /// before them).
    pub fn planned_left(&self) -> Vec<f64> {
        self.queue.iter().copied().collect()
    }
}

/// Why a planned confirmation LR the budget refused did not leave the
/// reference LR in doubt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Settled {
    /// A later phase made the same run (same batch, LR, length and seed):
    /// its loss did not beat the best confirmation's, so the best stood.
    RunLater { loss: f64, best: (f64, f64) },
    /// Between it and the best confirmation (LR, loss), the run at `via`
    /// came out worse by more than `threshold` (the seed noise of a paired
    /// difference, one-sided 90%): under a loss with one minimum in log-LR
    /// it could not have been the best.
    PastRise {
        via: (f64, f64),
        best: (f64, f64),
        threshold: f64,
    },
}

/// Whether the refused planned confirmation at `lr` leaves the reference
/// LR standing: the same run made later (`later_loss`) came out no better
/// than the best confirmation, or it lies past a run whose loss rose from
/// the best's by more than `clear_rise` (`None`: no noise to judge a rise
/// by). `None` where the refusal leaves the best in doubt.
pub fn settle_refused(
    lr: f64,
    runs: &[Confirmation],
    later_loss: Option<f64>,
    clear_rise: Option<f64>,
) -> Option<Settled> {
    let best = best_lr(runs)?;
    let best = (best.best_tested_lr, best.validation_loss);
    // Infinite where the later run diverged: no better either.
    if let Some(loss) = later_loss.filter(|l| !l.is_nan()) {
        // A later run that beat the best would have moved the reference LR
        // the race's LRs were transferred from.
        return (loss >= best.1).then_some(Settled::RunLater { loss, best });
    }
    let threshold = clear_rise.filter(|t| t.is_finite() && *t >= 0.0)?;
    let (scored, _) = scored_by_lr(runs)?;
    let between = |x: f64| (best.0 < x && x < lr) || (lr < x && x < best.0);
    scored
        .iter()
        .copied()
        .filter(|&(x, loss)| between(x) && loss - best.1 > threshold)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|via| Settled::PastRise {
            via,
            best,
            threshold,
        })
}

/// The LR check at the race winner as an ask/tell machine: a step of `spacing`
/// either side of the raced LR, paired with the race's own seeds (same
/// initialization and data order, so a seed's luck cancels in the
/// difference), seed by seed; one more step past a clear win at an edge.
/// Seeded with the raced runs themselves.
///
/// With one seed, a single lucky run moved the LR a half-decade and the
/// advice's LR spread 11-13x across repeated searches; with two, the LR
/// moves only when every seed agrees and their mean beats the race's noise.
#[derive(Debug)]
pub struct CheckMachine {
    raced_lr: f64,
    /// Factor between the raced LR and its neighbours.
    spacing: f64,
    /// The race's seed-to-seed spread at the winner.
    noise: f64,
    /// The seeds every checked LR runs with, in order.
    seeds: Vec<u64>,
    lrs: Vec<f64>,
    /// Asks not yet handed out.
    queue: std::collections::VecDeque<CheckAsk>,
    extended: bool,
    /// Every run told, with its seed (the raced ones first).
    runs: Vec<(u64, Confirmation)>,
    /// How many of `runs` are the raced ones.
    raced_runs: usize,
}

/// One check run the machine asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckAsk {
    pub learning_rate: f64,
    pub seed: u64,
}

/// What the check found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckFinding {
    /// The LR the recommendation takes: the best checked one when it beat
    /// the raced one by more than `threshold` on every seed's pair (or is
    /// the raced one), otherwise the raced one.
    pub chosen: BestLr,
    /// The best of the checked LRs (seed means), whether or not it was taken.
    pub best: BestLr,
    /// The LRs within `threshold` of the best.
    pub interval: Option<(f64, f64)>,
    /// The raced LR's mean loss over the seeds compared.
    pub raced_loss: f64,
    pub threshold: f64,
    /// How many seeds every compared LR ran with.
    pub seeds: usize,
    /// The check's own runs (the raced ones not counted).
    pub runs: usize,
}

impl CheckMachine {
    /// `raced`: the winner's runs at the raced LR as (seed, run); the check
    /// pairs with at most `max_seeds` of them, in their order.
    pub fn new(
        raced: Vec<(u64, Confirmation)>,
        noise: f64,
        max_seeds: usize,
        spacing: f64,
    ) -> Self {
        let raced_lr = raced.first().map_or(f64::NAN, |(_, r)| r.learning_rate);
        // Only the raced runs of the seeds the check pairs with are kept:
        // they are what it compares against.
        let raced: Vec<(u64, Confirmation)> = raced.into_iter().take(max_seeds.max(1)).collect();
        let seeds: Vec<u64> = raced.iter().map(|(seed, _)| *seed).collect();
        let lrs = vec![raced_lr / spacing, raced_lr * spacing];
        let queue = seeds
            .iter()
            .flat_map(|&seed| {
                lrs.iter().map(move |&learning_rate| CheckAsk {
                    learning_rate,
                    seed,
                })
            })
            .collect();
        CheckMachine {
            raced_lr,
            spacing,
            noise,
            seeds,
            lrs,
            queue,
            extended: false,
            raced_runs: raced.len(),
            runs: raced,
        }
    }

    /// The next run, or `None` when the check is over.
    pub fn next_run(&mut self) -> Option<CheckAsk> {
        if self.queue.is_empty() && !self.extended {
            self.extended = true;
            // A clear win at an edge: one more step that way, every seed.
            if let Some(finding) = self.judge() {
                if finding.chosen.best_tested_lr != self.raced_lr {
                    if let Some(lr) =
                        past_edge(&self.lrs, finding.chosen.best_tested_lr, self.spacing)
                    {
                        self.lrs.push(lr);
                        for &seed in &self.seeds {
                            self.queue.push_back(CheckAsk {
                                learning_rate: lr,
                                seed,
                            });
                        }
                    }
                }
            }
        }
        self.queue.pop_front()
    }

    pub fn tell(&mut self, ask: CheckAsk, run: Confirmation) {
        self.runs.push((ask.seed, run));
    }

    /// Whether `seed` has a run at `lr`. LRs are compared exactly: every
    /// one is a copy of a value this machine computed once.
    fn has(&self, seed: u64, lr: f64) -> bool {
        self.runs
            .iter()
            .any(|(s, r)| *s == seed && r.learning_rate == lr)
    }

    /// The seeds and LRs a comparison may use: every seed, over the LRs
    /// every seed ran, once that includes both neighbours of the raced LR
    /// (an extension the budget refused a later seed drops out, not the
    /// seed); before that, the first seed over the LRs it ran.
    fn compared(&self) -> (Vec<u64>, Vec<f64>) {
        let tried = std::iter::once(self.raced_lr).chain(self.lrs.iter().copied());
        let everywhere: Vec<f64> = tried
            .clone()
            .filter(|&lr| self.seeds.iter().all(|&seed| self.has(seed, lr)))
            .collect();
        if self.seeds.len() > 1 && everywhere.len() >= 3 {
            return (self.seeds.clone(), everywhere);
        }
        let Some(&first) = self.seeds.first() else {
            return (Vec::new(), Vec::new());
        };
        (
            vec![first],
            tried.filter(|&lr| self.has(first, lr)).collect(),
        )
    }

    /// Loss at `lr` for `seed` (`None`: diverged, failed or not run).
    fn loss(&self, lr: f64, seed: u64) -> Option<f64> {
        self.runs
            .iter()
            .find(|(s, r)| *s == seed && r.learning_rate == lr)
            .and_then(|(_, r)| r.validation_loss.filter(|l| l.is_finite()))
    }

    /// The finding over the seeds and LRs compared so far (`compared`).
    fn judge(&self) -> Option<CheckFinding> {
        let (seeds, lrs) = self.compared();
        // One point per LR: its mean over the compared seeds, none where
        // any seed diverged (an LR that diverges on some seeds is no pick).
        let means: Vec<Confirmation> = lrs
            .iter()
            .filter_map(|&lr| {
                let mut template = self
                    .runs
                    .iter()
                    .find(|(s, r)| r.learning_rate == lr && seeds.contains(s))?
                    .1
                    .clone();
                let losses: Option<Vec<f64>> =
                    seeds.iter().map(|&seed| self.loss(lr, seed)).collect();
                template.validation_loss = losses.as_deref().and_then(mean);
                Some(template)
            })
            .collect();
        let best = best_lr(&means)?;
        let raced_loss = means
            .first()
            .filter(|r| r.learning_rate == self.raced_lr)
            .and_then(|r| r.validation_loss)
            .unwrap_or(f64::INFINITY);
        // A raced run that failed leaves no loss to beat: any finite
        // checked one does, by the noise alone.
        let threshold = if raced_loss.is_finite() {
            self.noise.max(0.002 * raced_loss.abs())
        } else {
            self.noise
        };
        let every_pair_better = seeds.iter().all(|&seed| {
            match (
                self.loss(best.best_tested_lr, seed),
                self.loss(self.raced_lr, seed),
            ) {
                (Some(checked), Some(raced)) => checked < raced,
                (Some(_), None) => true,
                _ => false,
            }
        });
        // One seed is not evidence enough to move the LR up when the plan
        // had two (a budget cut after the first): one lucky run moved it a
        // half-decade up, where other seeds diverged (the digits MLP,
        // README "Repeatable advice", round 3). Down, one seed still may:
        // a lower LR costs some progress on other seeds, not divergence,
        // and at the large batches the race reaches, the transferred LR
        // tends to be too high.
        let enough_seeds =
            seeds.len() >= self.seeds.len().min(2) || best.best_tested_lr < self.raced_lr;
        let chosen = if best.best_tested_lr == self.raced_lr
            || (best.validation_loss < raced_loss - threshold && every_pair_better && enough_seeds)
        {
            best.clone()
        } else {
            BestLr {
                batch_size: best.batch_size,
                learning_rate: self.raced_lr,
                best_tested_lr: self.raced_lr,
                validation_loss: raced_loss,
                interpolated: false,
            }
        };
        let interval = lr_interval(&means, threshold)
            .map(|(lo, hi)| (lo.min(chosen.learning_rate), hi.max(chosen.learning_rate)));
        Some(CheckFinding {
            chosen,
            best,
            interval,
            raced_loss,
            threshold,
            seeds: seeds.len(),
            runs: self.runs.len() - self.raced_runs,
        })
    }

    /// The finding, and every run (the raced ones first). The LR moves off
    /// the raced one towards an edge only when the checked LR's seed mean
    /// beats the raced one's by the race's seed-to-seed noise (and 0.2% of
    /// the loss), every seed's pair agrees, and, for a move up, at least
    /// two seeds were compared where two were planned; a bowl around the
    /// raced LR refines it to the bowl's bottom.
    pub fn finish(self) -> (Option<CheckFinding>, Vec<Confirmation>) {
        let finding = self.judge();
        (finding, self.runs.into_iter().map(|(_, r)| r).collect())
    }
}

/// How the LR moves with batch size: lr(N) = reference_lr x (N / reference_batch)^alpha.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LrRule {
    /// The rule in use: `measured`, `linear` or `sqrt`.
    pub kind: LrScaling,
    pub reference_batch: u64,
    pub reference_lr: f64,
    pub alpha: f64,
    /// Alpha fitted from the best LR at two batch sizes, when measured.
    pub measured_alpha: Option<f64>,
    /// The textbook alpha for the optimizer: 1 for SGD, 0.5 for Adam(W).
    pub textbook_alpha: f64,
}

impl LrRule {
    pub fn lr_at(&self, batch: u64) -> f64 {
        self.reference_lr * (batch as f64 / self.reference_batch as f64).powf(self.alpha)
    }
}

/// The LR at `batch` from the best one at `reference_batch`, moved as the
/// optimal step moves with the batch (McCandlish et al. 2018:
/// eps_opt(B) = eps_max / (1 + B_noise / B)), with the optimizer's exponent:
/// lr ~ (B / (B + B_noise))^alpha. Far below the noise scale that is the
/// textbook rule (linear for SGD, square root for Adam); past it the LR
/// levels off, since more batch no longer cuts the gradient's noise. Without
/// a noise scale, the textbook rule. Measured on the advice bench's
/// wall-clock grids, the best LR is flat (at half-decade resolution) over
/// batches 2-208 on the transformer (preconditioned noise scale 2-9 where
/// measured as a value), where the square-root rule moves it 10x.
pub fn transfer_lr(
    lr: f64,
    reference_batch: u64,
    batch: u64,
    alpha: f64,
    noise_scale: Option<f64>,
) -> f64 {
    let (b, r) = (batch as f64, reference_batch as f64);
    let ratio = match noise_scale.filter(|n| n.is_finite() && *n > 0.0) {
        Some(n) => (b / (b + n)) / (r / (r + n)),
        None => b / r,
    };
    lr * ratio.powf(alpha)
}

/// The measured exponent from two (batch, best LR) pairs.
pub fn fit_alpha(a: &BestLr, b: &BestLr) -> Option<f64> {
    if a.batch_size == b.batch_size {
        return None;
    }
    let alpha =
        (a.learning_rate / b.learning_rate).ln() / (a.batch_size as f64 / b.batch_size as f64).ln();
    alpha.is_finite().then_some(alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lr_moves_by_the_textbook_rule_below_the_noise_scale_and_levels_off_above_it() {
        let close = |a: f64, b: f64, tol: f64| (a / b - 1.0).abs() < tol;
        // Far below the noise scale: the textbook rule.
        let lr = transfer_lr(1e-3, 16, 64, 0.5, Some(1e6));
        assert!(close(lr, 2e-3, 1e-3), "{lr}");
        let lr = transfer_lr(1e-2, 16, 64, 1.0, Some(1e6));
        assert!(close(lr, 4e-2, 1e-3), "{lr}");
        // Far above it: flat.
        let lr = transfer_lr(1e-3, 1_000, 16_000, 0.5, Some(10.0));
        assert!(close(lr, 1e-3, 0.01), "{lr}");
        // At the noise scale from a tenth of it: sqrt((1/2) / (1/11)).
        let lr = transfer_lr(1e-3, 100, 1_000, 0.5, Some(1_000.0));
        assert!(close(lr, 1e-3 * 5.5f64.sqrt(), 1e-9), "{lr}");
        // Down in batch as well as up, and the reference batch gives back
        // its own LR.
        let lr = transfer_lr(1e-3, 64, 16, 1.0, Some(64.0));
        assert!(close(lr, 1e-3 * (16.0 / 80.0) / 0.5, 1e-9), "{lr}");
        assert_eq!(transfer_lr(1e-3, 64, 64, 0.5, Some(300.0)), 1e-3);
        // No usable noise scale: the textbook rule.
        for noise in [None, Some(0.0), Some(f64::NAN), Some(-5.0)] {
            let lr = transfer_lr(1e-3, 16, 64, 0.5, noise);
            assert!(close(lr, 2e-3, 1e-12), "{noise:?}: {lr}");
        }
    }

    /// The shipped policies' spacing: half a decade.
    const LR_STEP: f64 = 3.16;

    /// Drives a confirmation machine against a loss bowl around `best`;
    /// LRs above `diverge_above` diverge. Returns the LRs it asked for.
    fn confirm(center: f64, best: f64, diverge_above: f64) -> Vec<(f64, bool)> {
        confirm_with(center, best, diverge_above, 0.2).0
    }

    /// As [`confirm`], with the policy's `skip_past_rise`; also returns
    /// the LRs the machine left out.
    fn confirm_with(
        center: f64,
        best: f64,
        diverge_above: f64,
        rise: f64,
    ) -> (Vec<(f64, bool)>, Vec<SkippedLr>) {
        let mut machine = ConfirmMachine::new(center, 3, 3, LR_STEP, rise);
        let mut asked = Vec::new();
        while let Some(ask) = machine.next_run() {
            asked.push((ask.learning_rate, ask.extension));
            let lr = ask.learning_rate;
            let diverged = lr > diverge_above;
            machine.tell(Confirmation {
                batch_size: 64,
                learning_rate: lr,
                validation_loss: (!diverged).then(|| 1.0 + (lr / best).ln().powi(2)),
                outcome: if diverged {
                    Outcome::Diverged
                } else {
                    Outcome::Ok
                },
                losses: Vec::new(),
                loss_steps: Vec::new(),
            });
        }
        (asked, machine.skipped().to_vec())
    }

    fn close(a: f64, b: f64) -> bool {
        (a / b - 1.0).abs() < 1e-9
    }

    #[test]
    fn the_confirmation_machine_looks_past_the_edge_the_best_sits_at() {
        // Best in the middle: the three planned LRs and no more.
        let asked = confirm(1e-3, 1e-3, 1.0);
        assert_eq!(asked.len(), 3);
        assert!(asked.iter().all(|(_, extension)| !extension));
        // Best far below: the centre, the one below it, and (the loss having
        // risen from there to the centre) extensions downwards, at most
        // three; the planned LR above the centre is not run.
        let asked = confirm(1e-3, 1e-6, 1.0);
        assert_eq!(asked.len(), 5, "{asked:?}");
        assert!(close(asked[0].0, 1e-3) && close(asked[1].0, 1e-3 / LR_STEP));
        assert!(asked[2..].iter().all(|(_, extension)| *extension));
        assert!(close(asked[2].0, 1e-3 / LR_STEP / LR_STEP));
        assert!(asked.windows(2).skip(1).all(|w| w[1].0 < w[0].0));
        // Best just above the top: one step up finds the bowl's far side.
        let asked = confirm(1e-3, 1e-2, 1.0);
        assert_eq!(asked.len(), 5, "{asked:?}");
        assert!(close(asked[3].0, 1e-3 * LR_STEP * LR_STEP));
    }

    #[test]
    fn the_confirmation_machine_skips_candidates_past_a_rise() {
        // The centre came out worse than the LR below it by more than the
        // margin: the LR above is ruled out, and the rationale has the pair.
        let (asked, skipped) = confirm_with(1e-3, 1e-5, 1.0, 0.2);
        assert!(asked.iter().all(|(lr, _)| *lr < 1.5e-3), "{asked:?}");
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(close(skipped[0].learning_rate, 1e-3 * LR_STEP));
        let SkipReason::Rose { from, to } = skipped[0].reason else {
            panic!("{skipped:?}")
        };
        assert!(close(from.0, 1e-3 / LR_STEP) && close(to.0, 1e-3));
        assert!(to.1 > from.1 * 1.2);
        // The same runs without the rule (a rise it never sees): all three
        // planned LRs, then the extensions.
        let (all, none) = confirm_with(1e-3, 1e-5, 1.0, 1e9);
        assert!(none.is_empty());
        assert_eq!(all.len(), asked.len() + 1, "{all:?} / {asked:?}");
        // A rise within the margin rules nothing out: with the floor 0.55
        // of a step below the centre, the centre is 10% worse than the LR
        // below it, and the LR above still runs.
        let (asked, skipped) = confirm_with(1e-3, 1e-3 / LR_STEP.powf(0.55), 1.0, 0.2);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert!(
            asked.iter().any(|(lr, _)| close(*lr, 1e-3 * LR_STEP)),
            "{asked:?}"
        );
        // The centre diverged: nothing above it runs, the LR below does, and
        // the search goes on below it.
        let (asked, skipped) = confirm_with(1e-3, 1e-5, 5e-4, 0.2);
        assert!(close(asked[1].0, 1e-3 / LR_STEP), "{asked:?}");
        assert_eq!(
            skipped[0].reason,
            SkipReason::AboveDivergence { diverged: 1e-3 }
        );
        assert!(asked[1..].iter().all(|(lr, _)| *lr < 1e-3));
        // Every one diverged: two steps below them all, as before.
        let (asked, _) = confirm_with(1e-3, 1e-5, 1e-9, 0.2);
        assert!(close(asked[2].0, 1e-3 / LR_STEP.powi(3)), "{asked:?}");
    }

    /// A check on a bowl with its bottom at `best`, each seed's losses
    /// offset by `luck(seed, lr)`.
    fn checked_with(
        lr: f64,
        best: f64,
        noise: f64,
        seeds: usize,
        luck: impl Fn(u64, f64) -> f64,
    ) -> (Vec<CheckAsk>, Option<CheckFinding>) {
        let run = |lr: f64, seed: u64| {
            check_run(
                lr,
                Some(1.0 + 0.1 * (lr / best).ln().powi(2) + luck(seed, lr)),
            )
        };
        let raced = (1..=seeds as u64)
            .map(|seed| (seed, run(lr, seed)))
            .collect();
        let mut machine = CheckMachine::new(raced, noise, 2, LR_STEP);
        let mut asked = Vec::new();
        while let Some(ask) = machine.next_run() {
            asked.push(ask);
            machine.tell(ask, run(ask.learning_rate, ask.seed));
        }
        let (finding, runs) = machine.finish();
        assert_eq!(runs.len(), asked.len() + seeds);
        (asked, finding)
    }

    fn checked(lr: f64, best: f64, noise: f64) -> (Vec<CheckAsk>, Option<CheckFinding>) {
        checked_with(lr, best, noise, 1, |_, _| 0.0)
    }

    #[test]
    fn the_check_moves_the_lr_only_past_the_seed_noise() {
        // The raced LR is the best: either side, no extension, it stays.
        let (asked, finding) = checked(1e-3, 1e-3, 0.01);
        assert_eq!(asked.len(), 2);
        let finding = finding.unwrap();
        assert!(close(finding.chosen.learning_rate, 1e-3) || finding.chosen.interpolated);
        // A clear win a step up: one more step that way, and the LR moves.
        let (asked, finding) = checked(1e-3, 1e-2, 0.01);
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert!(close(asked[2].learning_rate, 1e-3 * LR_STEP * LR_STEP));
        assert!(finding.unwrap().chosen.learning_rate > 3e-3);
        // A win at the edge smaller than the seed noise: the raced LR
        // stands; beyond it, the LR moves.
        let (_, finding) = checked(1e-3, 2.5e-3, 0.5);
        let finding = finding.unwrap();
        assert!(close(finding.chosen.learning_rate, 1e-3), "{finding:?}");
        assert!(finding.best.learning_rate > 2e-3, "{finding:?}");
        let (_, finding) = checked(1e-3, 2.5e-3, 0.01);
        assert!(finding.unwrap().chosen.learning_rate > 2e-3);
    }

    #[test]
    fn two_seeds_run_seed_by_seed_and_must_agree() {
        // Each seed runs both neighbours before the next seed starts, so a
        // budget cut after the first seed leaves a complete single-seed
        // comparison.
        let (asked, finding) = checked_with(1e-3, 1e-3, 0.01, 2, |_, _| 0.0);
        let seeds: Vec<u64> = asked.iter().map(|a| a.seed).collect();
        assert_eq!(seeds, vec![1, 1, 2, 2]);
        assert_eq!(finding.unwrap().seeds, 2);
        // Seed 1 is lucky at the higher LR (by more than the noise), seed 2
        // unlucky there: the mean still favours it, but the pairs disagree,
        // so the raced LR stands.
        let lucky = |seed: u64, lr: f64| match (seed, lr > 2e-3) {
            (1, true) => -0.5,
            (2, true) => 0.1,
            _ => 0.0,
        };
        let (_, finding) = checked_with(1e-3, 1e-3, 0.01, 2, lucky);
        let finding = finding.unwrap();
        assert!(
            close(finding.best.best_tested_lr, 1e-3 * LR_STEP),
            "{finding:?}"
        );
        assert!(close(finding.chosen.learning_rate, 1e-3), "{finding:?}");
        // The same luck on one seed alone moves the LR: what the pairing
        // guards against.
        let (_, finding) = checked_with(1e-3, 1e-3, 0.01, 1, lucky);
        assert!(finding.unwrap().chosen.learning_rate > 2e-3);
        // A real win that both seeds see moves it, with both seeds.
        let (asked, finding) = checked_with(1e-3, 1e-2, 0.01, 2, |seed, _| seed as f64 * 0.05);
        assert_eq!(asked.len(), 6, "{asked:?}");
        let finding = finding.unwrap();
        assert!(finding.chosen.learning_rate > 3e-3, "{finding:?}");
        assert_eq!(finding.seeds, 2);
    }

    /// A check or raced run at `lr` with `loss` (none: diverged).
    #[test]
    fn a_refused_confirmation_stands_settled_by_a_later_run_or_past_a_clear_rise() {
        // The transformer's bench searches, reference batch 8.
        let runs = |points: &[(f64, f64)]| -> Vec<Confirmation> {
            points
                .iter()
                .map(|&(lr, loss)| check_run(lr, Some(loss)))
                .collect()
        };
        // The best at the upper LR: the refused 4.48e-2 above it could be
        // better. Run later by the check at 2.7348: the best stood.
        let upper = runs(&[(1.42e-2, 2.5558), (4.49e-3, 2.5752)]);
        assert_eq!(
            settle_refused(4.48e-2, &upper, Some(2.7348), Some(0.045)),
            Some(Settled::RunLater {
                loss: 2.7348,
                best: (1.42e-2, 2.5558)
            })
        );
        // Diverged later: also no better.
        assert!(matches!(
            settle_refused(4.48e-2, &upper, Some(f64::INFINITY), None),
            Some(Settled::RunLater { .. })
        ));
        // Run later and better: the race's LRs came from the wrong best.
        assert_eq!(
            settle_refused(4.48e-2, &upper, Some(2.50), Some(0.045)),
            None
        );
        // Not run later, and nothing between it and the best: in doubt,
        // whatever the noise.
        assert_eq!(settle_refused(4.48e-2, &upper, None, Some(0.0)), None);
        // The best at the lower LR, the refused 5.92e-2 past 1.87e-2,
        // whose loss rose 0.107: past a noise of 0.045 it stands settled;
        // within a noise of 0.2, or with no noise to judge by, it does not.
        let lower = runs(&[(1.87e-2, 2.7020), (5.93e-3, 2.5950)]);
        match settle_refused(5.92e-2, &lower, None, Some(0.045)) {
            Some(Settled::PastRise {
                via,
                best,
                threshold,
            }) => {
                assert_eq!(via, (1.87e-2, 2.7020));
                assert_eq!(best, (5.93e-3, 2.5950));
                assert_eq!(threshold, 0.045);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(settle_refused(5.92e-2, &lower, None, Some(0.2)), None);
        assert_eq!(settle_refused(5.92e-2, &lower, None, None), None);
        // No finished confirmation: nothing to stand.
        assert_eq!(settle_refused(5.92e-2, &[], Some(3.0), Some(0.1)), None);
    }

    #[test]
    fn the_confirmations_left_after_a_refusal_are_the_planned_ones_not_asked() {
        let mut machine = ConfirmMachine::new(1e-2, 3, 3, LR_STEP, 0.2);
        let first = machine.next_run().unwrap();
        assert_eq!(machine.planned_left().len(), 2);
        machine.tell(check_run(first.learning_rate, Some(1.0)));
        let second = machine.next_run().unwrap();
        assert!(second.learning_rate < first.learning_rate);
        assert_eq!(machine.planned_left(), [1e-2 * LR_STEP]);
    }

    fn check_run(lr: f64, loss: Option<f64>) -> Confirmation {
        Confirmation {
            batch_size: 256,
            learning_rate: lr,
            validation_loss: loss,
            outcome: if loss.is_some() {
                Outcome::Ok
            } else {
                Outcome::Diverged
            },
            losses: Vec::new(),
            loss_steps: Vec::new(),
        }
    }

    #[test]
    fn an_extension_one_seed_missed_drops_out_not_the_seed() {
        let run = check_run;
        let raced = vec![(1, run(1e-3, Some(1.0))), (2, run(1e-3, Some(1.0)))];
        let mut machine = CheckMachine::new(raced, 0.01, 2, LR_STEP);
        // Both seeds: the higher LR wins by 0.1 on each; then the
        // extension runs for seed 1 only (the budget refuses seed 2's),
        // where seed 1 is lucky.
        for _ in 0..4 {
            let ask = machine.next_run().unwrap();
            let loss = if ask.learning_rate > 2e-3 { 0.9 } else { 1.2 };
            machine.tell(ask, run(ask.learning_rate, Some(loss)));
        }
        let ask = machine.next_run().unwrap();
        assert_eq!(ask.seed, 1);
        assert!(close(ask.learning_rate, 1e-3 * LR_STEP * LR_STEP));
        machine.tell(ask, run(ask.learning_rate, Some(0.1)));
        let (finding, _) = machine.finish();
        let finding = finding.unwrap();
        assert_eq!(finding.seeds, 2, "{finding:?}");
        assert!(
            close(finding.chosen.best_tested_lr, 1e-3 * LR_STEP),
            "{finding:?}"
        );
        assert_eq!(finding.runs, 5);
    }

    #[test]
    fn a_failed_raced_run_is_beaten_by_any_finite_loss() {
        let run = check_run;
        let mut machine = CheckMachine::new(vec![(1, run(1e-3, None))], 0.01, 2, LR_STEP);
        while let Some(ask) = machine.next_run() {
            let loss = (ask.learning_rate < 1e-3).then_some(1.0);
            machine.tell(ask, run(ask.learning_rate, loss));
        }
        let finding = machine.finish().0.unwrap();
        assert!(finding.threshold.is_finite());
        assert!(finding.chosen.learning_rate < 1e-3, "{finding:?}");
    }

    #[test]
    fn a_cut_after_the_first_seed_reports_it_but_does_not_move_the_lr() {
        let run = |lr: f64, loss: f64| check_run(lr, Some(loss));
        let mut machine = CheckMachine::new(
            vec![(7, run(1e-3, 1.0)), (8, run(1e-3, 1.1))],
            0.01,
            2,
            LR_STEP,
        );
        // Seed 7's two neighbours, then seed 8's first only: the budget cut.
        for loss in [1.2, 0.5] {
            let ask = machine.next_run().unwrap();
            assert_eq!(ask.seed, 7);
            machine.tell(ask, run(ask.learning_rate, loss));
        }
        let ask = machine.next_run().unwrap();
        assert_eq!(ask.seed, 8);
        machine.tell(ask, run(ask.learning_rate, 1.3));
        let (finding, runs) = machine.finish();
        let finding = finding.unwrap();
        assert_eq!(finding.seeds, 1);
        assert_eq!(runs.len(), 5);
        assert!((finding.raced_loss - 1.0).abs() < 1e-12);
        // Seed 7 alone saw the higher LR win by 0.5: shown, not taken.
        assert!(finding.best.best_tested_lr > 2e-3, "{finding:?}");
        assert!(close(finding.chosen.learning_rate, 1e-3), "{finding:?}");
        // The same single-seed win one step down is taken: a lower LR
        // risks no divergence on the seeds not run.
        let mut machine = CheckMachine::new(
            vec![(7, run(1e-3, 1.0)), (8, run(1e-3, 1.1))],
            0.01,
            2,
            LR_STEP,
        );
        for _ in 0..2 {
            let ask = machine.next_run().unwrap();
            let loss = if ask.learning_rate < 1e-3 { 0.5 } else { 1.2 };
            machine.tell(ask, run(ask.learning_rate, loss));
        }
        let finding = machine.finish().0.unwrap();
        assert_eq!(finding.seeds, 1);
        assert!(finding.chosen.best_tested_lr < 1e-3, "{finding:?}");
        // With both seeds agreeing, the same win moves it.
        let mut machine = CheckMachine::new(
            vec![(7, run(1e-3, 1.0)), (8, run(1e-3, 1.1))],
            0.01,
            2,
            LR_STEP,
        );
        while let Some(ask) = machine.next_run() {
            let loss = if ask.learning_rate > 2e-3 { 0.5 } else { 1.2 };
            machine.tell(ask, run(ask.learning_rate, loss));
        }
        let finding = machine.finish().0.unwrap();
        assert_eq!(finding.seeds, 2);
        assert!(finding.chosen.best_tested_lr > 2e-3, "{finding:?}");
    }

    #[test]
    fn when_every_confirmation_diverges_it_looks_two_steps_below() {
        // The centre and the LR below it diverge (the one above is not
        // run): two steps below them all.
        let asked = confirm(1e-2, 1e-4, 1e-3);
        assert!(
            close(asked[2].0, 1e-2 / LR_STEP / LR_STEP / LR_STEP),
            "{asked:?}"
        );
        assert!(asked[2].1);
    }

    /// A classic range-test curve: flat at tiny LRs, falling, then blowing up.
    fn curve(optimum: f64, n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
        let lrs: Vec<f64> = (0..n)
            .map(|i| 1e-6 * (1e6f64).powf(i as f64 / (n - 1) as f64))
            .collect();
        let losses = lrs
            .iter()
            .enumerate()
            .map(|(i, lr)| {
                let x = (lr / optimum).log10();
                let base = if x < 0.0 {
                    2.0 - 1.5 / (1.0 + (-2.0 * x).exp().min(1e6) / 20.0)
                } else {
                    0.5 + 3.0 * x * x
                };
                let noise = 0.05 * ((((i as u64 + seed) * 2654435761) % 100) as f64 / 50.0 - 1.0);
                base + noise
            })
            .collect();
        (lrs, losses)
    }

    #[test]
    fn the_suggestion_sits_below_the_minimum_and_is_stable() {
        let mut suggestions = Vec::new();
        for seed in 0..5 {
            let (lrs, losses) = curve(1e-2, 100, seed * 17);
            let test = analyze_range_test(64, &lrs, &losses).unwrap();
            assert!(test.suggestion < test.min_loss_lr);
            assert!(
                test.suggestion > 1e-5 && test.suggestion < 1e-2,
                "{}",
                test.suggestion
            );
            suggestions.push(test.suggestion);
        }
        let spread = suggestions.iter().cloned().fold(0.0, f64::max)
            / suggestions.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            spread < 2.0,
            "suggestions jump by {spread}x across noisy runs: {suggestions:?}"
        );
    }

    #[test]
    fn parabola_refines_the_best_confirmation() {
        let runs: Vec<Confirmation> = [1e-3, 3e-3, 1e-2]
            .iter()
            .map(|&lr: &f64| Confirmation {
                batch_size: 32,
                learning_rate: lr,
                validation_loss: Some(1.0 + (lr.ln() - 4e-3f64.ln()).powi(2)),
                outcome: Outcome::Ok,
                losses: Vec::new(),
                loss_steps: Vec::new(),
            })
            .collect();
        let best = best_lr(&runs).unwrap();
        assert!(best.interpolated);
        assert!(
            (best.learning_rate / 4e-3 - 1.0).abs() < 0.01,
            "{}",
            best.learning_rate
        );
    }

    #[test]
    fn the_interval_is_where_the_bowl_stays_within_noise() {
        let runs: Vec<Confirmation> = [1e-3, 3e-3, 1e-2]
            .iter()
            .map(|&lr: &f64| Confirmation {
                batch_size: 32,
                learning_rate: lr,
                validation_loss: Some(1.0 + (lr.ln() - 3e-3f64.ln()).powi(2)),
                outcome: Outcome::Ok,
                losses: Vec::new(),
                loss_steps: Vec::new(),
            })
            .collect();
        // Loss within 0.25 of the best: |ln(lr / 3e-3)| <= 0.5.
        let (lo, hi) = lr_interval(&runs, 0.25).unwrap();
        assert!((lo / (3e-3 * (-0.5f64).exp()) - 1.0).abs() < 0.02, "{lo}");
        assert!((hi / (3e-3 * 0.5f64.exp()) - 1.0).abs() < 0.02, "{hi}");
        // A wide tolerance is bounded by the LRs tried.
        assert_eq!(lr_interval(&runs, 100.0), Some((1e-3, 1e-2)));
    }

    #[test]
    fn diverged_runs_do_not_win() {
        let runs = vec![
            Confirmation {
                batch_size: 8,
                learning_rate: 0.1,
                validation_loss: None,
                outcome: Outcome::Diverged,
                losses: vec![2.0, f64::NAN],
                loss_steps: Vec::new(),
            },
            Confirmation {
                batch_size: 8,
                learning_rate: 0.01,
                validation_loss: Some(2.0),
                outcome: Outcome::Ok,
                losses: vec![2.5, 2.0],
                loss_steps: Vec::new(),
            },
        ];
        assert_eq!(best_lr(&runs).unwrap().learning_rate, 0.01);
    }

    #[test]
    fn alpha_is_recovered_from_two_batch_sizes() {
        let at = |batch: u64, lr: f64| BestLr {
            batch_size: batch,
            learning_rate: lr,
            best_tested_lr: lr,
            validation_loss: 1.0,
            interpolated: false,
        };
        let alpha = fit_alpha(&at(256, 0.02), &at(64, 0.01)).unwrap();
        assert!((alpha - 0.5).abs() < 1e-9);
        let rule = LrRule {
            kind: LrScaling::Measured,
            reference_batch: 256,
            reference_lr: 0.02,
            alpha,
            measured_alpha: Some(alpha),
            textbook_alpha: 0.5,
        };
        assert!((rule.lr_at(1024) - 0.04).abs() < 1e-12);
    }

    #[test]
    fn the_range_test_machine_sweeps_once_at_the_middle_below_the_plateau() {
        // Floor 8, plateau 512: the geometric middle is 64.
        let mut machine = RangeTestMachine::new(8, 4096, Some(512), 8, 100, 1e-6, 1.0);
        assert_eq!(machine.reference_batch(), 64);
        let ask = machine
            .next_trial(Some(0.01), 1.0, 5.0, 30.0)
            .expect("a 2-s sweep fits");
        assert_eq!((ask.batch_size, ask.steps), (64, 100));
        assert_eq!(machine.next_trial(Some(0.01), 1.0, 5.0, 30.0), None);
        // A bowl with its minimum at 1e-2 and divergence from 1e-1.
        let lrs: Vec<f64> = (0..100)
            .map(|i| 1e-6 * 1e6_f64.powf(f64::from(i) / 99.0))
            .collect();
        let losses: Vec<f64> = lrs
            .iter()
            .map(|&lr| {
                if lr > 0.1 {
                    100.0
                } else {
                    1.0 + (lr / 1e-2).ln().powi(2) / 100.0
                }
            })
            .collect();
        machine.tell(Outcome::Diverged, &lrs, &losses);
        assert!(!machine.skipped());
        let test = machine.finish().expect("a readable sweep");
        assert_eq!(test.batch_size, 64);
        assert!(
            test.min_loss_lr > 3e-3 && test.min_loss_lr < 3e-2,
            "{test:?}"
        );
        assert!(test.suggestion < test.min_loss_lr);
    }

    #[test]
    fn the_range_test_is_skipped_when_it_would_overrun_and_unread_when_it_failed() {
        // 0.1 s x 100 steps + 1 s is over twice the 5 s left.
        let mut machine = RangeTestMachine::new(8, 4096, None, 8, 100, 1e-6, 1.0);
        assert_eq!(machine.next_trial(Some(0.1), 1.0, 5.0, 30.0), None);
        assert!(machine.skipped());
        assert!(machine.finish().is_none());
        // No time left in the search at all.
        let mut machine = RangeTestMachine::new(8, 4096, None, 8, 100, 1e-6, 1.0);
        assert_eq!(machine.next_trial(None, 1.0, 5.0, 0.0), None);
        // A sweep that failed leaves no test, and is not a skip.
        let mut machine = RangeTestMachine::new(8, 8, None, 8, 100, 1e-6, 1.0);
        assert_eq!(machine.reference_batch(), 8);
        assert!(machine.next_trial(None, 1.0, 5.0, 30.0).is_some());
        machine.tell(Outcome::OutOfMemory, &[1e-3; 10], &[1.0; 10]);
        assert!(!machine.skipped());
        assert!(machine.finish().is_none());
    }
}
