//! `cargo bench --bench advice`: batchd's recommendation against the truth
//! of a grid, on the same real CPU trial runner.
//!
//! For each job (built from this repository's own data), a grid of batch
//! sizes (geometric, from `search.min_batch` to the largest that fits,
//! capped at the training set) x learning rates (half-decade steps from
//! 1e-6 to 10) is trained with 3 seeds per cell, each cell with the schedule
//! batchd recommends (linear warm-up over 5% of the steps, cosine decay to
//! 10%). Each batch's row starts at the three LRs around the previous row's
//! best and extends half a decade at a time while its best sits at an edge,
//! so no row's best is an unexplored edge and cells a decade past a row's
//! optimum are not paid for. The budget per cell:
//! - for `balanced` and `throughput`, every cell gets the same wall-clock
//!   training time (steps = time x measured samples/s / batch);
//! - for `generalization`, the same number of epochs.
//!
//! Then `batchd advise` runs under each policy with a search budget of 15%
//! of that grid's wall time, and its pick (batch, LR, warm-up) is trained
//! with the same budget and the same seeds. One table compares them.
//!
//! Environment: `BATCHD_BENCH_JOBS=mlp-synthetic,cnn-digits` runs a subset;
//! `BATCHD_BENCH_SECONDS` sets the per-cell training time (default 2.5);
//! `BATCHD_BENCH_WORKER` names the `batchd` binary the trials run in
//! (default: this build's), so a copied bench can measure an older build.
//!
//! `BATCHD_BENCH_DRAWS=3` advises every policy row that many times (search
//! seeds 0..N, the first the default), so a row's gap is a median over
//! draws rather than one draw's luck; each draw is a row of the table, and a
//! summary per row gives the median and worst gap and the PARTIAL count.
//!
//! The best cell is the lowest of many 3-seed means, so its loss on the
//! grid's seeds is biased low by the choice (the winner's curse) by about a
//! seed spread on a flat grid. So the best cell and every pick are trained
//! again on `FRESH_SEEDS`, which picked nothing: the "fresh gap" compares
//! the two on those same seeds and is the unbiased figure.
//!
//! `BATCHD_BENCH_REPEAT=5` measures repeatability too (with
//! `BATCHD_BENCH_REPEAT_ONLY=1`, only: no policy rows, no epoch grid): per
//! job, on the
//! wall-clock grid, `balanced` advised that many more times with
//! search seeds 1..=N at the same budget, each pick trained on the grid's
//! seeds and on the fresh ones (the best cell too). It prints every run
//! (batch, LR, noise scale with |G|^2 and tr(Sigma), the race's verdict,
//! the pick's loss, its gap and its fresh-seed gap) and the spread
//! (max/min) of batch, LR and noise scale across runs, with how many picks
//! came within the best cell's seed spread on either set of seeds.
//! Each search's noise scale is checked against its truth
//! (`BATCHD_BENCH_NOISE_TRUTH=1`): the best of the confirmation runs it
//! was read from (batch, LR, length, schedule, seed) trained again with
//! [`TRUTH_MEASUREMENTS`]x the measurements over the same window (the
//! measurements do not touch the weights, so it is the same run), and on
//! two more seeds; the search's bound holds where it is at most the
//! truth's value, its interval where it holds the truth's value. A
//! statement pooled over several confirmation runs (LRs within 5% of the
//! best's loss) is also judged against those runs, each measured again
//! the same way, pooled as the search pooled them.
//! `BATCHD_BENCH_NOISE_DUMP=DIR` writes each dense run's per-step norms
//! (the trial's `GradNoiseSample`) to DIR as JSON, for offline study.
//!
//! `BATCHD_BENCH_GRID_DIR=DIR` keeps each grid it trains in DIR (one JSON
//! file per job and budget: cells, steps, losses, wall time) and reads it
//! back instead of training it when the file is there, so two builds (a
//! copied bench each) are compared on one grid and one search budget: the
//! grid's cell lengths and wall time follow the measured speed, and a
//! grid trained again gave one job's searches 21 s in one run and 24 s in
//! the next, which drew a different plan.
//!
//! `BATCHD_BENCH_CELLS=256:1e-4,256:1.75e-4` trains only the cells named
//! (batch:LR, as wall-clock grid cells, on the grid's and the fresh seeds)
//! for each job selected: what a pick would measure at another LR.
//!
//! `BATCHD_BENCH_RAMP=1` measures the batch ramp instead (no grids): per
//! job, `balanced` with a budget share for the ramp advises a run of
//! `BATCHD_BENCH_RAMP_SECONDS` (default 8) of training; the constant
//! recommendation trains that long on the bench's seeds, and its mean final
//! validation loss is the target. Then the derived ramp (whether or not it
//! won the search's own race; where none was derived, the textbook ramp:
//! twice the batch from half the run's samples, the LR by the optimizer's
//! rule) and the constant batch each train for growing shares of that time
//! (steps from the measured speed of each batch), and the first share
//! whose mean loss reaches the target is each one's time to it.
//! Figures are printed, not asserted: the README keeps them.

use std::path::Path;
use std::time::{Duration, Instant};

use batchd::policy::PolicySet;
use batchd::search::noise::{pooled_noise_scale, NoiseScale};
use batchd::search::{advise, Recommendation};
use batchd::spec::{parse_spec, JobSpec, SpecOrigin};
use batchd::trial::{
    BatchPhase, BatchSchedule, GradNoiseRequest, LrSchedule, ProcessTrialRunner, RunnerOptions,
    TrialDevice, TrialRequest, TrialResult, TrialRunner,
};
use batchd::validation::Syntax;

/// Seeds every cell and every pick is trained with: not the seeds the
/// search itself uses, so batchd cannot have seen these runs.
const SEEDS: [u64; 3] = [1001, 1002, 1003];
/// Seeds the best cell and each pick are trained on again: nothing was
/// chosen on them, so the best cell's loss there carries no selection bias.
const FRESH_SEEDS: [u64; 3] = [2001, 2002, 2003];
/// A run needs at least this many steps to mean anything; cells whose
/// budget allows fewer are left out of the grid (and said so).
const MIN_STEPS: u32 = 10;
const WARMUP_FRACTION: f64 = 0.05;
const FINAL_LR_FRACTION: f64 = 0.1;
/// How many times the search's noise measurements the truth takes.
const TRUTH_MEASUREMENTS: u32 = 10;
/// batchd's search budget as a share of the grid's wall time.
const SEARCH_SHARE: f64 = 0.15;

struct Job {
    label: &'static str,
    example: &'static str,
    /// Overrides merged into the example spec (TOML).
    overrides: &'static str,
    /// Where the first row of the grid starts.
    first_lr: f64,
    batches: usize,
}

const ADAM_START: f64 = 1e-3;
const SGD_START: f64 = 3.16e-2;
/// Most cells in one row of the grid.
const MAX_ROW_CELLS: usize = 8;

/// The LR ladder: half-decade steps from 1e-6 to 10.
fn lr_ladder() -> Vec<f64> {
    (-12..=2).map(|k| 10f64.powf(f64::from(k) / 2.0)).collect()
}

fn jobs() -> Vec<Job> {
    vec![
        Job {
            label: "mlp-synthetic (AdamW)",
            example: "mlp-synthetic.toml",
            overrides: "[training]\nepochs = 2\n",
            first_lr: ADAM_START,
            batches: 6,
        },
        Job {
            label: "mlp-digits-csv (SGD)",
            example: "mlp-digits-csv.toml",
            overrides: "[training]\nepochs = 20\n[search]\nmin_batch = 4\n",
            first_lr: SGD_START,
            batches: 6,
        },
        Job {
            label: "cnn-digits (AdamW)",
            example: "cnn-digits-idx.toml",
            overrides: "[training]\nepochs = 2\n[search]\nmin_batch = 4\n",
            first_lr: ADAM_START,
            batches: 5,
        },
        Job {
            label: "transformer-text (AdamW)",
            example: "transformer-text.toml",
            overrides: "precision = \"f32\"\n[training]\nepochs = 0.1\nworld_size = 1\n[search]\nmin_batch = 2\n",
            first_lr: ADAM_START,
            batches: 5,
        },
    ]
}

struct Bench {
    runner: ProcessTrialRunner,
    runtime: tokio::runtime::Runtime,
}

/// Mean and sample standard deviation of a cell's validation losses; a
/// cell with a failed seed has no mean.
#[derive(Clone, Copy)]
struct Cell {
    batch: u64,
    lr: f64,
    /// Steps each seed trained for.
    steps: u32,
    mean: Option<f64>,
    spread: f64,
}

fn stats(losses: &[Option<f64>]) -> (Option<f64>, f64) {
    let values: Option<Vec<f64>> = losses.iter().copied().collect();
    let Some(values) = values.filter(|v| !v.is_empty()) else {
        return (None, f64::NAN);
    };
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (Some(mean), var.sqrt())
}

#[derive(Clone, Copy)]
enum Budget {
    Seconds(f64),
    Epochs(f64),
}

impl Bench {
    fn run(&self, request: TrialRequest) -> TrialResult {
        self.runtime.block_on(self.runner.run(request))
    }

    /// `batchd advise` on the CPU, and the seconds it took.
    fn advise(&self, spec: &JobSpec) -> (Recommendation, f64) {
        let context =
            batchd::machine::search_context(TrialDevice::Cpu, spec.search.memory_limit, None)
                .expect("search context");
        let started = Instant::now();
        let rec = self
            .runtime
            .block_on(advise(spec, &context, &self.runner, &|_| {}))
            .expect("advice");
        (rec, started.elapsed().as_secs_f64())
    }

    fn speed(&self, spec: &JobSpec, batch: u64) -> Option<f64> {
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, 25, 1e-4);
        request.warmup_steps = 5;
        request.deadline = Duration::from_secs(300);
        let result = self.run(request);
        result.samples_per_second.filter(|_| result.is_ok())
    }

    fn train_samples(&self, spec: &JobSpec) -> u64 {
        let request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, 1, 2, 1e-4);
        self.run(request).train_samples.expect("train samples")
    }

    fn fits(&self, spec: &JobSpec, batch: u64, limit: u64) -> bool {
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, 4, 1e-4);
        request.warmup_steps = 1;
        request.memory_limit_bytes = Some(limit);
        request.deadline = Duration::from_secs(300);
        self.run(request).is_ok()
    }

    /// `cell` trained again on `seeds`.
    fn retrain(&self, spec: &JobSpec, cell: &Cell, seeds: &[u64]) -> Cell {
        let losses: Vec<Option<f64>> = seeds
            .iter()
            .map(|&seed| self.train(spec, cell.batch, cell.lr, cell.steps, seed))
            .collect();
        let (mean, spread) = stats(&losses);
        Cell {
            mean,
            spread,
            ..*cell
        }
    }

    /// Validation loss of one training run under the recommended schedule.
    fn train(&self, spec: &JobSpec, batch: u64, lr: f64, steps: u32, seed: u64) -> Option<f64> {
        self.train_ramp(spec, batch, lr, steps, seed, None)
    }

    /// The same, the batch growing by `ramp` when given.
    fn train_ramp(
        &self,
        spec: &JobSpec,
        batch: u64,
        lr: f64,
        steps: u32,
        seed: u64,
        ramp: Option<&BatchSchedule>,
    ) -> Option<f64> {
        let warmup = ((f64::from(steps) * WARMUP_FRACTION).ceil() as u32).max(1);
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, steps, lr);
        request.schedule = LrSchedule::WarmupCosine {
            lr,
            warmup_steps: warmup,
            final_fraction: FINAL_LR_FRACTION,
        };
        request.warmup_steps = 1;
        request.seed = seed;
        request.record.validation_loss = true;
        request.deadline = Duration::from_secs(600);
        request.batch_schedule = ramp.cloned();
        let result = self.run(request);
        result.validation_loss.filter(|_| result.is_ok())
    }
}

/// What [`Bench::noise_truth`] measured.
struct NoiseTruth {
    /// The best confirmation run, again, with more measurements.
    same: NoiseScale,
    /// That run on three seeds, pooled.
    seeds: NoiseScale,
    /// Every confirmation run at the reference batch within 5% of the
    /// best's loss (what the search pools), again, each on its own:
    /// (LR, its loss in the search, its truth).
    runs: Vec<(f64, f64, Option<NoiseScale>)>,
    /// Those runs again, pooled as the search pooled them: the truth for a
    /// statement pooled over several LRs (`None` with one run).
    pooled_runs: Option<NoiseScale>,
    /// Wall seconds of the best run in the search, and again with
    /// [`TRUTH_MEASUREMENTS`]x the measurements.
    seconds: (Option<f64>, f64),
}

impl Bench {
    /// The noise scale the search read from its confirmation runs at the
    /// reference batch, measured again on the best of them (and on
    /// `extra_seeds` more, and on each run the search pooled) with
    /// [`TRUTH_MEASUREMENTS`] times the measurements over the same window;
    /// `None` where the search measured none.
    fn noise_truth(
        &self,
        spec: &JobSpec,
        rec: &Recommendation,
        extra_seeds: &[u64],
    ) -> Option<NoiseTruth> {
        let noise = rec.evidence.gradient_noise.as_ref()?;
        let batch = noise.big_batch;
        let steps = u32::try_from(noise.until_samples / batch.max(1)).ok()?;
        let at_reference: Vec<(f64, f64)> = rec
            .evidence
            .lr_confirmations
            .iter()
            .filter(|c| c.batch_size == batch)
            .filter_map(|c| Some((c.learning_rate, c.validation_loss?)))
            .collect();
        let best = at_reference
            .iter()
            .copied()
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        let from = noise.after_steps;
        let measurements = (noise.measurements as u32 * TRUTH_MEASUREMENTS)
            .min(steps.saturating_sub(from))
            .max(2);
        let policy = &spec.policy;
        let run = |lr: f64, seed: u64| {
            let warmup = ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil() as u32)
                .clamp(1, steps.saturating_sub(1).max(1));
            let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, steps, lr);
            request.schedule = LrSchedule::WarmupCosine {
                lr,
                warmup_steps: warmup,
                final_fraction: policy.race.final_lr_fraction,
            };
            request.seed = seed;
            request.deadline = Duration::from_secs(600);
            request.record.grad_noise = Some(GradNoiseRequest {
                small_batch: noise.small_batch,
                measurements,
                from_step: Some(from),
            });
            let result = self.run(request);
            let ok = result.is_ok();
            (result.grad_noise.filter(|_| ok), result.wall_seconds)
        };
        let pool = |samples: &[batchd::trial::GradNoiseSample]| {
            pooled_noise_scale(
                samples,
                from,
                u64::from(from) * batch,
                u64::from(steps) * batch,
            )
        };
        let (same, wall) = run(best.0, spec.search.seed);
        let same = same?;
        if let Some(dir) = std::env::var_os("BATCHD_BENCH_NOISE_DUMP") {
            // The dense run's per-step norms, for studying their
            // distribution offline (one file per search).
            let path = std::path::Path::new(&dir).join(format!(
                "{}-seed{}-batch{batch}-lr{:.3e}.json",
                spec.name, spec.search.seed, best.0
            ));
            if let Err(e) = std::fs::write(&path, serde_json::to_vec(&same).unwrap_or_default()) {
                eprintln!("noise dump {}: {e}", path.display());
            }
        }
        let same_scale = pool(std::slice::from_ref(&same))?;
        let mut dense = vec![same.clone()];
        let mut all = vec![same];
        all.extend(extra_seeds.iter().filter_map(|&s| run(best.0, s).0));
        let mut runs = Vec::new();
        for &(lr, loss) in at_reference
            .iter()
            .filter(|(_, loss)| *loss <= best.1 * 1.05 + 1e-9)
        {
            let truth = if lr == best.0 {
                Some(same_scale.clone())
            } else {
                let sample = run(lr, spec.search.seed).0;
                dense.extend(sample.clone());
                sample.and_then(|s| pool(&[s]))
            };
            runs.push((lr, loss, truth));
        }
        let pooled_runs = (dense.len() > 1).then(|| pool(&dense)).flatten();
        let searched = rec
            .evidence
            .trials
            .iter()
            .find(|t| {
                t.phase == batchd::search::Phase::LrConfirmation
                    && t.batch_size == batch
                    && t.learning_rate == Some(best.0)
            })
            .map(|t| t.seconds);
        Some(NoiseTruth {
            same: same_scale,
            seeds: pool(&all)?,
            runs,
            pooled_runs,
            seconds: (searched, wall),
        })
    }
}

/// Whether the search's statement of the noise scale holds against the
/// truth ([`holds`]).
#[derive(Clone, Copy, PartialEq)]
enum Verdict {
    Holds,
    Misses,
    /// Two bounds cannot contradict each other.
    BothBounds,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Holds => "holds",
            Verdict::Misses => "MISSES",
            Verdict::BothBounds => "both bounds",
        })
    }
}

/// Whether the search's statement of the noise scale holds against the
/// truth: against an estimate, a bound at most its value, an interval
/// around it; against a bound (|G|^2 still not clearly above zero), an
/// interval reaching it.
fn holds(search: &NoiseScale, truth: &NoiseScale) -> Verdict {
    let t = truth.value;
    let ok = match (search.is_lower_bound(), truth.is_lower_bound()) {
        (true, false) => search.value <= t,
        (false, false) => search.low <= t && search.high.is_none_or(|h| t <= h),
        (false, true) => search.high.is_none_or(|h| h >= t),
        (true, true) => return Verdict::BothBounds,
    };
    if ok {
        Verdict::Holds
    } else {
        Verdict::Misses
    }
}

fn steps_for(budget: Budget, batch: u64, speed: f64, train_samples: u64) -> u32 {
    let steps = match budget {
        Budget::Seconds(s) => s * speed / batch as f64,
        Budget::Epochs(e) => e * train_samples as f64 / batch as f64,
    };
    steps.floor().min(1e6) as u32
}

/// The job's spec under `policy`; `time_budget` is the search's, and
/// `training_seconds` the real run's wall-clock budget when it has one.
fn spec_for(
    job: &Job,
    policy: &str,
    time_budget: Option<f64>,
    training_seconds: Option<f64>,
) -> JobSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/jobs");
    let text = std::fs::read_to_string(dir.join(job.example)).expect("example spec");
    let mut document: toml::Value = toml::from_str(&text).expect("example parses");
    let overrides: toml::Value = toml::from_str(job.overrides).expect("overrides parse");
    merge(&mut document, overrides);
    let table = document.as_table_mut().expect("table");
    table.insert("policy".into(), toml::Value::String(policy.into()));
    table.remove("policy_overrides");
    let search = table
        .entry("search")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    let search = search.as_table_mut().expect("search table");
    search.insert("device".into(), toml::Value::String("cpu".into()));
    if let Some(seconds) = time_budget {
        search.insert(
            "time_budget".into(),
            toml::Value::String(format!("{}s", seconds.round() as u64)),
        );
    }
    if let Some(seconds) = training_seconds {
        let training = table
            .entry("training")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        training.as_table_mut().expect("training table").insert(
            "time_budget".into(),
            toml::Value::String(format!("{seconds}s")),
        );
    }
    let origin = SpecOrigin {
        label: job.example.into(),
        default_name: Some("bench".into()),
        base_dir: Some(dir),
    };
    let text = toml::to_string(&document).expect("serializes");
    parse_spec(&text, Syntax::Toml, &origin, &PolicySet::builtin()).expect("bench spec")
}

fn merge(base: &mut toml::Value, overrides: toml::Value) {
    match (base, overrides) {
        (toml::Value::Table(base), toml::Value::Table(overrides)) => {
            for (key, value) in overrides {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_table() && value.is_table() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overrides) => *base = overrides,
    }
}

fn geometric(lo: u64, hi: u64, n: usize) -> Vec<u64> {
    let mut sizes: Vec<u64> = (0..n)
        .map(|i| {
            let f = if n <= 1 {
                1.0
            } else {
                i as f64 / (n - 1) as f64
            };
            let b = (lo as f64 * (hi as f64 / lo as f64).powf(f)).round() as u64;
            if b >= 8 {
                b / 8 * 8
            } else {
                b
            }
        })
        .collect();
    sizes.dedup();
    sizes
}

struct Grid {
    cells: Vec<Cell>,
    seconds: f64,
    left_out: Vec<u64>,
}

impl Grid {
    fn best(&self) -> Option<Cell> {
        self.cells
            .iter()
            .filter(|c| c.mean.is_some())
            .min_by(|a, b| a.mean.unwrap().total_cmp(&b.mean.unwrap()))
            .copied()
    }
}

/// A cell as [`grid_cached`] keeps it: batch, LR, steps, mean, spread (a
/// NaN spread as null).
type CellRow = (u64, f64, u32, Option<f64>, Option<f64>);

/// A grid as [`grid_cached`] keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct GridFile {
    cells: Vec<CellRow>,
    seconds: f64,
    left_out: Vec<u64>,
}

/// The grid `train` gives, kept in `BATCHD_BENCH_GRID_DIR` when set: read
/// from `name` there when it exists, else trained and written there.
fn grid_cached(name: &str, train: impl FnOnce() -> Grid) -> Grid {
    let path = std::env::var_os("BATCHD_BENCH_GRID_DIR").map(|dir| {
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        Path::new(&dir).join(format!("{slug}.json"))
    });
    if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        let file: GridFile = serde_json::from_str(&text).expect("a grid file the bench wrote");
        eprintln!(
            "  grid {name}: read from {}",
            path.as_ref().unwrap().display()
        );
        return Grid {
            cells: file
                .cells
                .into_iter()
                .map(|(batch, lr, steps, mean, spread)| Cell {
                    batch,
                    lr,
                    steps,
                    mean,
                    spread: spread.unwrap_or(f64::NAN),
                })
                .collect(),
            seconds: file.seconds,
            left_out: file.left_out,
        };
    }
    let truth = train();
    if let Some(path) = path {
        let file = GridFile {
            cells: truth
                .cells
                .iter()
                .map(|c| {
                    let spread = c.spread.is_finite().then_some(c.spread);
                    (c.batch, c.lr, c.steps, c.mean, spread)
                })
                .collect(),
            seconds: truth.seconds,
            left_out: truth.left_out.clone(),
        };
        let text = serde_json::to_string_pretty(&file).expect("a grid serializes");
        std::fs::write(&path, text).expect("the grid directory is writable");
    }
    truth
}

fn grid(
    bench: &Bench,
    spec: &JobSpec,
    batches: &[(u64, f64)],
    first_lr: f64,
    budget: Budget,
    train_samples: u64,
) -> Grid {
    let started = Instant::now();
    let ladder = lr_ladder();
    let nearest = |lr: f64| {
        (0..ladder.len())
            .min_by(|&a, &b| {
                (ladder[a] / lr)
                    .ln()
                    .abs()
                    .total_cmp(&(ladder[b] / lr).ln().abs())
            })
            .unwrap_or(0)
    };
    let mut start = nearest(first_lr);
    let mut cells = Vec::new();
    let mut left_out = Vec::new();
    for &(batch, speed) in batches {
        let steps = steps_for(budget, batch, speed, train_samples);
        if steps < MIN_STEPS {
            left_out.push(batch);
            continue;
        }
        let mut row: std::collections::BTreeMap<usize, Cell> = Default::default();
        let evaluate = |i: usize, row: &mut std::collections::BTreeMap<usize, Cell>| {
            let lr = ladder[i];
            let losses: Vec<Option<f64>> = SEEDS
                .iter()
                .map(|&seed| bench.train(spec, batch, lr, steps, seed))
                .collect();
            let (mean, spread) = stats(&losses);
            eprintln!(
                "    cell batch {batch:>6} lr {lr:.2e} steps {steps:>6}: {}",
                mean.map_or("failed".into(), |m| format!("{m:.4} +- {spread:.4}"))
            );
            row.insert(
                i,
                Cell {
                    batch,
                    lr,
                    steps,
                    mean,
                    spread,
                },
            );
        };
        for i in start.saturating_sub(1)..=(start + 1).min(ladder.len() - 1) {
            evaluate(i, &mut row);
        }
        // Extend while the row's best sits at an edge of what was tried.
        while row.len() < MAX_ROW_CELLS {
            let lo = *row.keys().next().unwrap_or(&0);
            let hi = *row.keys().next_back().unwrap_or(&0);
            let best = row
                .iter()
                .filter_map(|(i, c)| c.mean.map(|m| (*i, m)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i);
            let next = match best {
                Some(b) if b == lo && lo > 0 => lo - 1,
                Some(b) if b == hi && hi + 1 < ladder.len() => hi + 1,
                // Every LR failed: lower ones diverge less.
                None if lo > 0 => lo - 1,
                _ => break,
            };
            evaluate(next, &mut row);
        }
        if let Some((i, _)) = row
            .iter()
            .filter(|(_, c)| c.mean.is_some())
            .min_by(|a, b| a.1.mean.unwrap().total_cmp(&b.1.mean.unwrap()))
        {
            start = *i;
        }
        cells.extend(row.into_values());
    }
    Grid {
        cells,
        seconds: started.elapsed().as_secs_f64(),
        left_out,
    }
}

/// `pick`'s gap to `best` in percent of the best's loss.
fn gap(best: Option<&Cell>, pick: &Cell) -> Option<f64> {
    match (best.and_then(|b| b.mean), pick.mean) {
        (Some(best), Some(pick)) => Some((pick - best) / best * 100.0),
        _ => None,
    }
}

fn fmt_gap(gap: Option<f64>) -> String {
    gap.map_or("-".into(), |g| format!("{g:.1}"))
}

fn print_row(row: &Row) {
    println!(
        "{:<26}{:<15}{:>5} {:<33} {:<33} {:>7} {:>8} {:>8.1}{}",
        row.job,
        row.policy,
        row.draw,
        row.best.as_ref().map_or("-".into(), fmt_cell),
        fmt_cell(&row.pick),
        fmt_gap(gap(row.best.as_ref(), &row.pick)),
        fmt_gap(gap(row.fresh_best.as_ref(), &row.fresh_pick)),
        row.search_seconds / row.grid_seconds * 100.0,
        if row.partial { "  PARTIAL" } else { "" }
    );
}

/// One policy row's draws: the median and worst gap on the grid's seeds
/// and on the fresh ones, and how many were partial. A failed pick counts
/// as the worst gap.
fn draw_summary(draws: &[Row]) -> String {
    let summarize = |gaps: Vec<Option<f64>>| {
        let failed = gaps.iter().filter(|g| g.is_none()).count();
        let mut values: Vec<f64> = gaps.into_iter().flatten().collect();
        values.sort_by(f64::total_cmp);
        // Failed picks sort last, as the worst.
        let n = values.len() + failed;
        let at = |i: usize| values.get(i).map_or("failed".into(), |g| format!("{g:.1}"));
        format!(
            "median {} worst {} ({})",
            at((n - 1) / 2),
            at(n - 1),
            values
                .iter()
                .map(|g| format!("{g:.1}"))
                .chain(std::iter::repeat_n("failed".to_string(), failed))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let first = &draws[0];
    format!(
        "{} / {}: {} draws; gap % {}; fresh-seed gap % {}; {} PARTIAL; batches {:?}",
        first.job,
        first.policy,
        draws.len(),
        summarize(
            draws
                .iter()
                .map(|r| gap(r.best.as_ref(), &r.pick))
                .collect()
        ),
        summarize(
            draws
                .iter()
                .map(|r| gap(r.fresh_best.as_ref(), &r.fresh_pick))
                .collect()
        ),
        draws.iter().filter(|r| r.partial).count(),
        draws.iter().map(|r| r.pick.batch).collect::<Vec<_>>()
    )
}

struct Row {
    job: String,
    policy: String,
    draw: u64,
    best: Option<Cell>,
    pick: Cell,
    /// The best cell and the pick trained on `FRESH_SEEDS`.
    fresh_best: Option<Cell>,
    fresh_pick: Cell,
    search_seconds: f64,
    grid_seconds: f64,
    partial: bool,
    note: String,
}

fn fmt_cell(cell: &Cell) -> String {
    match cell.mean {
        Some(m) => format!(
            "{:>6} {:>8.2e} {:.4}±{:.4}",
            cell.batch, cell.lr, m, cell.spread
        ),
        None => format!("{:>6} {:>8.2e} failed", cell.batch, cell.lr),
    }
}

fn main() {
    let mut options = RunnerOptions::current_exe().expect("current exe");
    options.worker_exe = std::env::var_os("BATCHD_BENCH_WORKER")
        .map_or_else(|| env!("CARGO_BIN_EXE_batchd").into(), Into::into);
    let bench = Bench {
        runner: ProcessTrialRunner::new(options),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    let cell_seconds: f64 = std::env::var("BATCHD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.5);
    let only: Option<Vec<String>> = std::env::var("BATCHD_BENCH_JOBS")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let repeat: usize = std::env::var("BATCHD_BENCH_REPEAT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let draws: u64 = std::env::var("BATCHD_BENCH_DRAWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut rows: Vec<Row> = Vec::new();
    let mut repeats: Vec<String> = Vec::new();
    let mut summaries: Vec<String> = Vec::new();
    println!(
        "per-cell budget: {cell_seconds} s of training (balanced, throughput) or the job's epochs (generalization); {} seeds; warm-up {:.0}% then cosine to {:.0}%; half-decade LRs, each row extended while its best sits at an edge",
        SEEDS.len(),
        WARMUP_FRACTION * 100.0,
        FINAL_LR_FRACTION * 100.0
    );
    println!(
        "{:<26}{:<15}{:>5} {:<33} {:<33} {:>7} {:>8} {:>8}",
        "job",
        "policy",
        "draw",
        "best cell (batch lr loss±sd)",
        "batchd (batch lr loss±sd)",
        "gap %",
        "fresh %",
        "search %"
    );
    for job in jobs() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|name| job.example.starts_with(name.as_str())))
        {
            continue;
        }
        eprintln!("== {}", job.label);
        if std::env::var_os("BATCHD_BENCH_RAMP").is_some() {
            let row = ramp_row(&bench, &job);
            eprintln!("{row}");
            repeats.push(row);
            continue;
        }
        let spec = spec_for(&job, "balanced", None, None);
        let train_samples = bench.train_samples(&spec);
        if let Ok(cells) = std::env::var("BATCHD_BENCH_CELLS") {
            probe_cells(&bench, &spec, &cells, cell_seconds, train_samples);
            continue;
        }
        let limit = spec.search.memory_limit.map_or(1 << 30, |l| l.bytes());
        let budget_bytes = (limit as f64 * (1.0 - spec.policy.memory_headroom_fraction)) as u64;
        // The top of the grid: the largest batch up to the training set
        // (and the spec's max_batch) that fits in the same memory budget.
        let mut top = train_samples.min(spec.search.max_batch);
        while top > spec.search.min_batch && !bench.fits(&spec, top, budget_bytes) {
            top /= 2;
        }
        let batches: Vec<(u64, f64)> = geometric(spec.search.min_batch, top, job.batches)
            .into_iter()
            .filter_map(|b| bench.speed(&spec, b).map(|s| (b, s)))
            .collect();
        eprintln!(
            "  {} training samples; batches {:?}",
            train_samples,
            batches
                .iter()
                .map(|(b, s)| format!("{b} ({s:.0}/s)"))
                .collect::<Vec<_>>()
        );
        let wall = grid_cached(&format!("{}-wall-{cell_seconds}s", job.label), || {
            grid(
                &bench,
                &spec,
                &batches,
                job.first_lr,
                Budget::Seconds(cell_seconds),
                train_samples,
            )
        });
        let repeat_on = |repeats: &mut Vec<String>| {
            repeats.push(repeatability(
                &bench,
                &job,
                &wall,
                cell_seconds,
                train_samples,
                repeat,
            ))
        };
        if repeat > 0 && std::env::var_os("BATCHD_BENCH_REPEAT_ONLY").is_some() {
            repeat_on(&mut repeats);
            continue;
        }
        let epochs = spec.training.epochs;
        let per_epoch = grid_cached(&format!("{}-epochs", job.label), || {
            grid(
                &bench,
                &spec,
                &batches,
                job.first_lr,
                Budget::Epochs(epochs),
                train_samples,
            )
        });
        // The best cells again on seeds nothing was chosen on.
        let fresh = |truth: &Grid, spec: &JobSpec| {
            truth
                .best()
                .map(|best| bench.retrain(spec, &best, &FRESH_SEEDS))
        };
        let fresh_wall = fresh(&wall, &spec);
        let fresh_epochs = fresh(&per_epoch, &spec);
        for policy in ["balanced", "throughput", "generalization"] {
            let (truth, budget, fresh_best) = if policy == "generalization" {
                (&per_epoch, Budget::Epochs(epochs), fresh_epochs)
            } else {
                (&wall, Budget::Seconds(cell_seconds), fresh_wall)
            };
            let search_budget = (truth.seconds * SEARCH_SHARE).max(5.0);
            // A wall-clock job tells batchd its training budget, as a user
            // bounded by time would.
            let training_seconds = matches!(budget, Budget::Seconds(_)).then_some(cell_seconds);
            let first_row = rows.len();
            for draw in 0..draws {
                let mut spec = spec_for(&job, policy, Some(search_budget), training_seconds);
                if draws > 1 {
                    spec.search.seed = draw;
                }
                let (rec, search_seconds) = bench.advise(&spec);
                let batch = rec.effective_batch_size;
                let lr = rec.lr.learning_rate.unwrap_or(1e-3);
                let speed = bench.speed(&spec, batch).unwrap_or(1.0);
                let steps = steps_for(budget, batch, speed, train_samples).max(MIN_STEPS);
                let chosen = Cell {
                    batch,
                    lr,
                    steps,
                    mean: None,
                    spread: f64::NAN,
                };
                let pick = bench.retrain(&spec, &chosen, &SEEDS);
                let fresh_pick = bench.retrain(&spec, &chosen, &FRESH_SEEDS);
                let mut note = format!(
                    "grid {} cells x {} seeds in {:.0} s, search {:.0} s",
                    truth.cells.len(),
                    SEEDS.len(),
                    truth.seconds,
                    search_seconds
                );
                note.push_str("; ");
                if let Some(best) = &fresh_best {
                    note.push_str(&format!(
                        "fresh seeds: best cell {}, pick {}; ",
                        fmt_cell(best),
                        fmt_cell(&fresh_pick)
                    ));
                }
                if !truth.left_out.is_empty() {
                    note.push_str(&format!(
                        "grid left out {:?} (< {MIN_STEPS} steps in budget); ",
                        truth.left_out
                    ));
                }
                if rec.partial {
                    note.push_str(&format!(
                        "PARTIAL: {}; ",
                        rec.partial_reason.clone().unwrap_or_default()
                    ));
                }
                if let Some(noise) = &rec.evidence.gradient_noise {
                    note.push_str(&format!("noise {}; ", noise.describe()));
                }
                eprintln!(
                    "  {policy} (draw {draw}): pick {} in {search_seconds:.0}s; {note}",
                    fmt_cell(&pick)
                );
                if std::env::var_os("BATCHD_BENCH_VERBOSE").is_some() {
                    eprintln!(
                        "{}",
                        batchd::report::text::recommendation(&spec, &rec, None)
                    );
                }
                let row = Row {
                    job: job.label.to_string(),
                    policy: policy.to_string(),
                    draw,
                    best: truth.best(),
                    pick,
                    fresh_best,
                    fresh_pick,
                    search_seconds,
                    grid_seconds: truth.seconds,
                    partial: rec.partial,
                    note,
                };
                print_row(&row);
                rows.push(row);
            }
            if draws > 1 {
                let summary = draw_summary(&rows[first_row..]);
                println!("{summary}");
                summaries.push(summary);
            }
        }
        if repeat > 0 {
            repeat_on(&mut repeats);
        }
    }
    println!();
    for line in &summaries {
        println!("{line}");
    }
    for line in &repeats {
        println!("{line}");
    }
    for row in &rows {
        if !row.note.is_empty() {
            println!(
                "{} / {} (draw {}): {}",
                row.job,
                row.policy,
                row.draw,
                row.note.trim_end_matches("; ")
            );
        }
    }
}

/// `BATCHD_BENCH_CELLS=B:LR,...`: each cell trained as a wall-clock grid
/// cell is, on the grid's seeds and the fresh ones: what a pick would
/// have measured at another LR or batch, without a grid.
fn probe_cells(bench: &Bench, spec: &JobSpec, cells: &str, seconds: f64, train_samples: u64) {
    for cell in cells.split(',').filter(|c| !c.is_empty()) {
        let parsed = cell
            .split_once(':')
            .and_then(|(b, lr)| Some((b.parse::<u64>().ok()?, lr.parse::<f64>().ok()?)));
        let Some((batch, lr)) = parsed else {
            eprintln!("BATCHD_BENCH_CELLS: {cell:?} is not BATCH:LR");
            continue;
        };
        let Some(speed) = bench.speed(spec, batch) else {
            println!("{batch:>6} {lr:>9.2e}: does not fit");
            continue;
        };
        let steps = steps_for(Budget::Seconds(seconds), batch, speed, train_samples).max(MIN_STEPS);
        let cell = Cell {
            batch,
            lr,
            steps,
            mean: None,
            spread: f64::NAN,
        };
        let grid_seeds = bench.retrain(spec, &cell, &SEEDS);
        let fresh = bench.retrain(spec, &cell, &FRESH_SEEDS);
        // Other seeds to compare with, e.g. a search's race seeds.
        let more: Vec<u64> = std::env::var("BATCHD_BENCH_CELL_SEEDS")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default();
        let other = (!more.is_empty()).then(|| {
            more.iter()
                .map(|&seed| {
                    bench
                        .train(spec, batch, lr, steps, seed)
                        .map_or("failed".to_string(), |l| format!("{seed}: {l:.4}"))
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        println!(
            "{}: {} steps; grid seeds {}; fresh seeds {}{}",
            spec.name,
            steps,
            fmt_cell(&grid_seeds),
            fmt_cell(&fresh),
            other.map_or(String::new(), |o| format!("; seeds {o}"))
        );
    }
}

/// `BATCHD_BENCH_REPEAT`: the same job advised `runs` times under
/// `balanced` with search seeds 1..=runs and the same budget.
fn repeatability(
    bench: &Bench,
    job: &Job,
    truth: &Grid,
    cell_seconds: f64,
    train_samples: u64,
    runs: usize,
) -> String {
    let search_budget = (truth.seconds * SEARCH_SHARE).max(5.0);
    let best = truth.best();
    // The best cell's grid loss is the lowest of many means, so biased low
    // by the choice: the picks are also judged against it retrained on
    // seeds nothing was chosen on.
    let base_spec = spec_for(job, "balanced", Some(search_budget), Some(cell_seconds));
    let fresh_best = best.map(|b| bench.retrain(&base_spec, &b, &FRESH_SEEDS));
    println!(
        "{}: best cell {} (fresh seeds {}); search budget {search_budget:.0} s; {runs} searches",
        job.label,
        best.as_ref().map_or("-".into(), fmt_cell),
        fresh_best.as_ref().map_or("-".into(), fmt_cell)
    );
    println!(
        "{:>4} {:>6} {:>9} {:>28} {:>10} {:>10} {:>5} {:>6} {:>28}  {:<22} {:>7} {:>7}  race",
        "seed",
        "batch",
        "lr",
        "noise scale",
        "|G|^2",
        "tr(Sigma)",
        "n",
        "after",
        "preconditioned",
        "pick loss±sd",
        "gap %",
        "fresh %"
    );
    let mut picks: Vec<(u64, f64, Option<f64>)> = Vec::new();
    let mut within = 0;
    let mut fresh_within = 0;
    let mut pre: Vec<f64> = Vec::new();
    let mut bounds = 0;
    let mut truths: Vec<Verdict> = Vec::new();
    let mut pooled_truths: Vec<Verdict> = Vec::new();
    for seed in 1..=runs as u64 {
        let mut spec = spec_for(job, "balanced", Some(search_budget), Some(cell_seconds));
        spec.search.seed = seed;
        let (rec, _) = bench.advise(&spec);
        if std::env::var_os("BATCHD_BENCH_VERBOSE").is_some() {
            eprintln!(
                "  search seed {seed}:\n{}",
                batchd::report::text::recommendation(&spec, &rec, None)
            );
        }
        let batch = rec.effective_batch_size;
        let lr = rec.lr.learning_rate.unwrap_or(1e-3);
        let speed = bench.speed(&spec, batch).unwrap_or(1.0);
        let steps =
            steps_for(Budget::Seconds(cell_seconds), batch, speed, train_samples).max(MIN_STEPS);
        let losses: Vec<Option<f64>> = SEEDS
            .iter()
            .map(|&s| bench.train(&spec, batch, lr, steps, s))
            .collect();
        let (mean, spread) = stats(&losses);
        let gap = match (best.and_then(|b| b.mean), mean) {
            (Some(b), Some(m)) => {
                if best.is_some_and(|c| m - b <= c.spread) {
                    within += 1;
                }
                format!("{:.1}", (m - b) / b * 100.0)
            }
            _ => "-".into(),
        };
        let pick = Cell {
            batch,
            lr,
            steps,
            mean,
            spread,
        };
        let fresh_pick = bench.retrain(&spec, &pick, &FRESH_SEEDS);
        let fresh_best_mean = fresh_best.and_then(|b| Some((b.mean?, b.spread)));
        let fresh_gap = match (fresh_best_mean, fresh_pick.mean) {
            (Some((b, spread)), Some(m)) => {
                if m - b <= spread {
                    fresh_within += 1;
                }
                format!("{:.1}", (m - b) / b * 100.0)
            }
            _ => "-".into(),
        };
        let noise = rec.evidence.gradient_noise.as_ref();
        picks.push((batch, lr, noise.map(|n| n.value)));
        bounds += usize::from(noise.is_some_and(|n| n.is_lower_bound()));
        pre.extend(rec.evidence.preconditioned_noise.as_ref().map(|n| n.value));
        let race = rec
            .evidence
            .race
            .as_ref()
            .map_or("no race".to_string(), |r| {
                if r.within_noise {
                    format!("within noise: {}", r.verdict)
                } else {
                    r.verdict.clone()
                }
            });
        println!(
            "{seed:>4} {batch:>6} {lr:>9.2e} {:>28} {:>10} {:>10} {:>5} {:>6} {:>28}  {:<22} {gap:>7} {fresh_gap:>7}  {race}{}",
            noise.map_or("-".into(), |n| n.describe()),
            noise.map_or("-".into(), |n| format!("{:.3e}", n.gradient_sq_norm)),
            noise.map_or("-".into(), |n| format!("{:.3e}", n.trace_sigma)),
            noise.map_or("-".into(), |n| n.measurements.to_string()),
            noise.map_or("-".into(), |n| n.after_steps.to_string()),
            rec.evidence
                .preconditioned_noise
                .as_ref()
                .map_or("-".into(), |n| n.describe()),
            mean.map_or("failed".into(), |m| format!("{m:.4}±{spread:.4}")),
            if rec.partial { " PARTIAL" } else { "" },
        );
        if let Some(noise) =
            noise.filter(|_| std::env::var_os("BATCHD_BENCH_NOISE_TRUTH").is_some())
        {
            match bench.noise_truth(&spec, &rec, &[seed + 100, seed + 200]) {
                Some(truth) => {
                    let (same, pooled) = (&truth.same, &truth.seeds);
                    let verdict = holds(noise, same);
                    truths.push(verdict);
                    println!(
                        "      truth: the same run, {} measurements: {} (|G|^2 {:.3e}, tr(Sigma) {:.3e}); three seeds pooled, {}: {}; the search's statement {verdict} against the same run, {} against the three",
                        same.measurements,
                        same.describe(),
                        same.gradient_sq_norm,
                        same.trace_sigma,
                        pooled.measurements,
                        pooled.describe(),
                        holds(noise, pooled),
                    );
                    for (lr, loss, run) in &truth.runs {
                        println!(
                            "      pooled by the search: LR {lr:.3e} (loss {loss:.4}): {}",
                            run.as_ref().map_or("-".into(), |n| format!(
                                "{} (|G|^2 {:.3e}, tr(Sigma) {:.3e})",
                                n.describe(),
                                n.gradient_sq_norm,
                                n.trace_sigma
                            ))
                        );
                    }
                    if let Some(dense) = &truth.pooled_runs {
                        let verdict = holds(noise, dense);
                        pooled_truths.push(verdict);
                        println!(
                            "      the runs it pooled, {TRUTH_MEASUREMENTS}x the measurements each, pooled as it pooled them ({}): {}; the search's statement {verdict} against them",
                            dense.measurements,
                            dense.describe(),
                        );
                    } else {
                        // One run pooled: its truth is the same run's.
                        pooled_truths.push(verdict);
                    }
                    println!(
                        "      the best run's wall time: {} in the search, {:.2} s with {TRUTH_MEASUREMENTS}x the measurements",
                        truth.seconds.0.map_or("-".into(), |s| format!("{s:.2} s")),
                        truth.seconds.1,
                    );
                }
                None => println!("      truth: not measured (no signal, or the runs failed)"),
            }
        }
    }
    let spread = |values: Vec<f64>| {
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(0.0, f64::max);
        if values.is_empty() || lo <= 0.0 {
            "-".to_string()
        } else {
            format!("{:.2}x ({lo:.3e}..{hi:.3e})", hi / lo)
        }
    };
    let summary = format!(
        "{}: spread (max/min) batch {}, LR {}, noise scale {} ({bounds} of {runs} lower bounds), preconditioned {}; {within}/{runs} picks within the best cell's seed spread on the grid's seeds, {fresh_within}/{runs} on fresh seeds",
        job.label,
        spread(picks.iter().map(|p| p.0 as f64).collect()),
        spread(picks.iter().map(|p| p.1).collect()),
        spread(picks.iter().filter_map(|p| p.2).collect()),
        spread(pre),
    );
    let summary = if truths.is_empty() {
        summary
    } else {
        let count = |verdicts: &[Verdict]| {
            format!(
                "{} of {} hold, {} miss, {} both bounds",
                verdicts.iter().filter(|v| **v == Verdict::Holds).count(),
                verdicts.len(),
                verdicts.iter().filter(|v| **v == Verdict::Misses).count(),
                verdicts
                    .iter()
                    .filter(|v| **v == Verdict::BothBounds)
                    .count(),
            )
        };
        format!(
            "{summary}; noise scale against its truth (the same run, {TRUTH_MEASUREMENTS}x the measurements): {}; against the runs it pooled, each {TRUTH_MEASUREMENTS}x, pooled alike: {}",
            count(&truths),
            count(&pooled_truths),
        )
    };
    println!("{summary}");
    summary
}

/// Shares of the run's time the ramp and the constant batch train for,
/// looking for the first that reaches the target loss.
const RAMP_SHARES: [f64; 6] = [0.5, 0.625, 0.75, 0.875, 1.0, 1.25];

/// `BATCHD_BENCH_RAMP`: time to the constant recommendation's loss, for
/// the ramp batchd derived and for the constant batch.
fn ramp_row(bench: &Bench, job: &Job) -> String {
    let seconds: f64 = std::env::var("BATCHD_BENCH_RAMP_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0);
    let search_budget: f64 = std::env::var("BATCHD_BENCH_RAMP_SEARCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90.0);
    let mut spec = spec_for(job, "balanced", Some(search_budget), Some(seconds));
    // balanced's shares with 0.08 for the ramp, taken from the race and
    // the check.
    let shares = &mut spec.policy.budget_shares;
    shares.race = 0.34;
    shares.lr_check = 0.08;
    shares.ramp = 0.08;
    let (rec, search) = bench.advise(&spec);
    let batch = rec.batch_size;
    let lr = rec.lr.learning_rate.unwrap_or(1e-3);
    let advice = rec.batch_schedule.clone();
    let verdict = advice
        .as_ref()
        .map_or("no ramp section".to_string(), |a| a.verdict.clone());
    // The derived ramp; where none was derived, the textbook one (Smith et
    // al. 2017, Seesaw: double the batch where the schedule would decay,
    // here at half the run's samples, the LR scaled by the optimizer's
    // rule), so every job gets a measured answer to whether a ramp pays.
    let derived = advice
        .as_ref()
        .map(|a| a.phases.clone())
        .filter(|p| p.len() >= 2);
    let kind = if derived.is_some() {
        "derived"
    } else {
        "none derived; textbook x2 at half the run"
    };
    let mut speeds: std::collections::BTreeMap<u64, f64> = Default::default();
    let mut speed_of = |b: u64| {
        *speeds
            .entry(b)
            .or_insert_with(|| bench.speed(&spec, b).unwrap_or(1.0))
    };
    let constant_speed = speed_of(batch);
    let ramp = match derived {
        Some(phases) => BatchSchedule { phases },
        None => {
            let fits = rec.memory.max_fit.batch_size.unwrap_or(batch).min(
                rec.evidence
                    .batch_cap
                    .as_ref()
                    .map_or(u64::MAX, |c| c.largest_batch),
            );
            let doubled = (2 * batch).min(fits);
            if doubled <= batch {
                return format!(
                    "{}: constant {batch} @ {lr:.2e} (search {search:.0} s); no ramp to measure (none derived: {verdict}; twice the batch does not fit)",
                    job.label
                );
            }
            let alpha = match spec.optimizer {
                batchd::spec::OptimizerSpec::Sgd { .. } => 1.0,
                _ => 0.5,
            };
            let run_samples = (seconds * constant_speed) as u64;
            BatchSchedule {
                phases: vec![
                    BatchPhase {
                        from_sample: 0,
                        batch_size: batch,
                        lr_factor: 1.0,
                    },
                    BatchPhase {
                        from_sample: run_samples / 2,
                        batch_size: doubled,
                        lr_factor: (doubled as f64 / batch as f64).powf(alpha),
                    },
                ],
            }
        }
    };
    for p in &ramp.phases {
        speed_of(p.batch_size);
    }
    let step_time = |b: u64| b as f64 / speeds[&b];
    let constant_steps = |t: f64| ((t / step_time(batch)).round() as u32).max(MIN_STEPS);
    // The ramp's steps in `t` seconds by the measured step time of each
    // phase's batch.
    let ramp_steps = |t: f64| {
        let (mut seen, mut spent, mut steps) = (0u64, 0.0, 0u32);
        loop {
            let b = ramp.phase_at(seen).batch_size;
            if spent + step_time(b) / 2.0 > t {
                break;
            }
            spent += step_time(b);
            seen += b;
            steps += 1;
        }
        steps.max(MIN_STEPS)
    };
    let mean_of = |steps: u32, with: Option<&BatchSchedule>| {
        let losses: Vec<Option<f64>> = SEEDS
            .iter()
            .map(|&seed| bench.train_ramp(&spec, batch, lr, steps, seed, with))
            .collect();
        stats(&losses)
    };
    let (target, target_sd) = mean_of(constant_steps(seconds), None);
    let Some(target) = target else {
        return format!("{}: the constant batch failed a seed", job.label);
    };
    // The first share of the time at which each reaches the target.
    let reach = |with: Option<&BatchSchedule>| -> (Option<f64>, Vec<String>) {
        let mut tried = Vec::new();
        for share in RAMP_SHARES {
            let t = seconds * share;
            if with.is_none() && share >= 1.0 {
                // Reaches its own final loss at the full time, by definition.
                return (Some(seconds), tried);
            }
            let steps = match with {
                Some(_) => ramp_steps(t),
                None => constant_steps(t),
            };
            let (mean, _) = mean_of(steps, with);
            tried.push(format!(
                "{share:.3}: {}",
                mean.map_or("failed".into(), |m| format!("{m:.4}"))
            ));
            if mean.is_some_and(|m| m <= target) {
                return (Some(t), tried);
            }
        }
        (None, tried)
    };
    let (ramp_time, ramp_tried) = reach(Some(&ramp));
    let (constant_time, constant_tried) = reach(None);
    let saving = match (ramp_time, constant_time) {
        (Some(r), Some(c)) => format!("{:+.0}%", (c - r) / c * 100.0),
        _ => "n/a".into(),
    };
    let phases: Vec<String> = ramp
        .phases
        .iter()
        .map(|p| format!("{}@{}", p.batch_size, p.from_sample))
        .collect();
    format!(
        "{}: constant {batch} @ {lr:.2e}: target loss {target:.4}±{target_sd:.4} after {seconds} s; ramp ({kind}) [{}]; speeds [{}]; time to target: ramp {}, constant {}; saving {saving}; ramp losses by share [{}], constant [{}]; search {search:.0} s, its race: {verdict}",
        job.label,
        phases.join(" "),
        speeds
            .iter()
            .map(|(b, v)| format!("{b}: {v:.0}/s"))
            .collect::<Vec<_>>()
            .join(", "),
        ramp_time.map_or("not reached by 1.25x".into(), |t| format!("{t:.1} s")),
        constant_time.map_or("-".into(), |t| format!("{t:.1} s")),
        ramp_tried.join(", "),
        constant_tried.join(", ")
    )
}
