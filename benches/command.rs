//! `cargo bench --bench command`: a PyTorch command job (the example,
//! examples/pytorch/pytorch-mlp.toml, on CPU here) advised twice under the
//! same search budget, once with one fresh process per trial and once with
//! the persistent trial mode, and both picks checked on a small truth grid
//! trained the same way.
//!
//! Printed, per mode: the per-trial overhead (wall time beyond the steps
//! the report times) of short probes and of training runs, the share of the
//! search's wall time spent training, the trials completed and the
//! processes started, how long the runs planned at T seconds took, and the
//! pick with its validation loss next to the grid's best cell.
//!
//! Needs torch: the python is `BATCHD_BENCH_PYTHON`, else `python3` on the
//! PATH; without torch it prints `skipped`. `BATCHD_BENCH_BUDGET` sets the
//! search budget in seconds (180), `BATCHD_BENCH_QUICK=1` a small model
//! (HIDDEN 1024), 60 s searches and 4-s runs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use batchd::policy::PolicySet;
use batchd::search::advise;
use batchd::spec::{parse_spec, JobSpec, SpecOrigin};
use batchd::trial::{
    LrSchedule, ProcessTrialRunner, RunnerOptions, TrialDevice, TrialRequest, TrialResult,
    TrialRunner,
};
use batchd::validation::Syntax;

const SEEDS: [u64; 2] = [1, 2];
const GRID_BATCHES: [u64; 3] = [64, 256, 1024];
const GRID_LRS: [f64; 3] = [1e-4, 3e-4, 1e-3];

/// A runner that keeps every result, and whether the trial was a
/// validated training run.
struct Recording<'a> {
    inner: &'a ProcessTrialRunner,
    seen: Mutex<Vec<(bool, TrialResult)>>,
}

impl TrialRunner for Recording<'_> {
    async fn run(&self, request: TrialRequest) -> TrialResult {
        let run = request.record.validation_loss;
        let result = self.inner.run(request).await;
        self.seen.lock().unwrap().push((run, result.clone()));
        result
    }

    async fn release(&self, device: TrialDevice) {
        self.inner.release(device).await;
    }
}

fn python() -> Option<PathBuf> {
    let python = std::env::var_os("BATCHD_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn runner(persistent: bool) -> ProcessTrialRunner {
    let mut options = RunnerOptions::current_exe().expect("current exe");
    options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
    options.persistent = persistent;
    ProcessTrialRunner::new(options)
}

fn spec(python: &Path, hidden: u32, run_seconds: f64, budget: f64) -> JobSpec {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pytorch");
    let text = std::fs::read_to_string(dir.join("pytorch-mlp.toml")).expect("example spec");
    let text = text
        .replace(
            "command = [\"python3\", \"train.py\"]",
            &format!(
                "command = [{:?}, \"train.py\"]",
                python.display().to_string()
            ),
        )
        .replace("HIDDEN = \"4096\"", &format!("HIDDEN = \"{hidden}\""))
        .replace(
            "epochs = 10\n",
            &format!("epochs = 10\ntime_budget = \"{run_seconds}s\"\n"),
        )
        .replace(
            "time_budget = \"240s\"",
            &format!("time_budget = \"{budget}s\""),
        );
    let origin = SpecOrigin {
        label: "bench".into(),
        default_name: Some("pytorch-mlp".into()),
        base_dir: Some(dir),
    };
    parse_spec(&text, Syntax::Toml, &origin, &PolicySet::builtin()).expect("spec")
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

struct ModeFigures {
    name: &'static str,
    ok: usize,
    all: usize,
    processes: usize,
    probe_overhead: f64,
    run_overhead: f64,
    validation: f64,
    training_share: f64,
    training: f64,
    run_walls: Vec<f64>,
    search_seconds: f64,
    /// What the plan gave each run (`None`: the race did not run).
    planned: Option<f64>,
    pick: (u64, f64),
}

fn measure(
    runtime: &tokio::runtime::Runtime,
    name: &'static str,
    inner: &ProcessTrialRunner,
    spec: &JobSpec,
) -> ModeFigures {
    let recording = Recording {
        inner,
        seen: Mutex::default(),
    };
    let context = batchd::machine::search_context(TrialDevice::Cpu, spec.search.memory_limit, None)
        .expect("search context");
    let started = Instant::now();
    let rec = runtime
        .block_on(advise(spec, &context, &recording, &|_| {}))
        .expect("advice");
    let search_seconds = started.elapsed().as_secs_f64();
    let seen = recording.seen.into_inner().unwrap();
    // What the search did and why, so a surprising row can be read.
    println!("{name}: {search_seconds:.0} s, {} trials", seen.len());
    for (run, r) in &seen {
        println!(
            "  batch {:>5} {:>4} steps{} {:<14} wall {:>5.2} s, training {:>5.2} s{}",
            r.batch_size,
            r.steps,
            if *run { " run  " } else { " probe" },
            r.outcome.to_string(),
            r.wall_seconds,
            r.training_seconds.unwrap_or(f64::NAN),
            r.reason
                .as_deref()
                .map(|why| format!(" ({})", why.chars().take(80).collect::<String>()))
                .unwrap_or_default()
        );
    }
    for line in &rec.rationale {
        println!("  | {line}");
    }
    let training: f64 = seen.iter().filter_map(|(_, r)| r.training_seconds).sum();
    // Beyond the steps and the validation (which the real run's own
    // evaluation would replace): start-up, re-run, clean-up, batchd.
    let overhead = |runs: bool| {
        let mut values: Vec<f64> = seen
            .iter()
            .filter(|(run, r)| *run == runs && r.is_ok())
            .filter_map(|(_, r)| {
                Some(r.wall_seconds - r.training_seconds? - r.validation_seconds.unwrap_or(0.0))
            })
            .collect();
        median(&mut values)
    };
    let mut validation: Vec<f64> = seen
        .iter()
        .filter_map(|(_, r)| r.validation_seconds)
        .collect();
    ModeFigures {
        name,
        ok: seen.iter().filter(|(_, r)| r.is_ok()).count(),
        all: seen.len(),
        processes: seen
            .iter()
            .filter(|(_, r)| r.process_trial.is_none_or(|k| k == 1))
            .count(),
        probe_overhead: overhead(false),
        run_overhead: overhead(true),
        validation: median(&mut validation),
        training_share: training / search_seconds,
        training,
        run_walls: seen
            .iter()
            .filter(|(run, r)| *run && r.is_ok())
            .map(|(_, r)| r.wall_seconds)
            .collect(),
        search_seconds,
        planned: rec
            .evidence
            .race
            .as_ref()
            .and_then(|race| match race.budget {
                batchd::search::race::RaceBudget::WallClock { seconds } => Some(seconds),
                batchd::search::race::RaceBudget::Epochs { .. } => None,
            }),
        pick: (
            rec.effective_batch_size,
            rec.lr.learning_rate.unwrap_or(f64::NAN),
        ),
    }
}

/// The mean validation loss of `seconds` of training at (batch, lr) with
/// the race's schedule, over [`SEEDS`]; `step` is the batch's step time.
fn cell_loss(
    runtime: &tokio::runtime::Runtime,
    runner: &ProcessTrialRunner,
    spec: &JobSpec,
    batch: u64,
    lr: f64,
    steps: u32,
) -> Option<f64> {
    let policy = &spec.policy;
    let mut losses = Vec::new();
    for seed in SEEDS {
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, steps, lr);
        request.seed = seed;
        request.warmup_steps = 1;
        request.deadline = Duration::from_secs(300);
        request.schedule = LrSchedule::WarmupCosine {
            lr,
            warmup_steps: ((f64::from(steps) * policy.lr_search.warmup_fraction).ceil() as u32)
                .clamp(1, steps - 1),
            final_fraction: policy.race.final_lr_fraction,
        };
        request.record.validation_loss = true;
        let result = runtime.block_on(runner.run(request));
        losses.push(result.validation_loss.filter(|_| result.is_ok())?);
    }
    Some(losses.iter().sum::<f64>() / losses.len() as f64)
}

fn main() {
    let Some(python) = python() else {
        println!("skipped: no python with torch (set BATCHD_BENCH_PYTHON)");
        return;
    };
    let quick = std::env::var("BATCHD_BENCH_QUICK").is_ok_and(|v| v == "1");
    let (hidden, run_seconds, default_budget) = if quick {
        (1024, 4.0, 60.0)
    } else {
        (4096, 6.0, 180.0)
    };
    let budget = std::env::var("BATCHD_BENCH_BUDGET")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(default_budget);
    let spec = spec(&python, hidden, run_seconds, budget);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "PyTorch MLP (HIDDEN {hidden}, bf16, AdamW) on CPU, {budget:.0}-s searches, runs planned at {run_seconds} s ({})",
        python.display()
    );
    let fresh_runner = runner(false);
    let persistent_runner = runner(true);
    let modes = [
        measure(&runtime, "one process per trial", &fresh_runner, &spec),
        measure(&runtime, "persistent", &persistent_runner, &spec),
    ];

    // The truth grid, trained like the race's runs: the same wall-clock
    // training at every batch, from each batch's measured step time.
    let step_time = |batch: u64| -> f64 {
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, 12, 1e-4);
        request.warmup_steps = 2;
        request.deadline = Duration::from_secs(300);
        let result = runtime.block_on(persistent_runner.run(request));
        result.step_seconds_median.unwrap_or(f64::NAN)
    };
    let steps_for = |step: f64| ((run_seconds / step).floor() as u32).max(8);
    let mut grid = Vec::new();
    for batch in GRID_BATCHES {
        let steps = steps_for(step_time(batch));
        for lr in GRID_LRS {
            let loss = cell_loss(&runtime, &persistent_runner, &spec, batch, lr, steps);
            grid.push((batch, lr, steps, loss));
        }
    }
    let best = grid
        .iter()
        .filter_map(|&(b, lr, _, loss)| Some((b, lr, loss?)))
        .min_by(|a, b| a.2.total_cmp(&b.2));
    println!();
    println!("truth grid: mean validation loss over seeds {SEEDS:?}, {run_seconds} s of training per cell");
    for (batch, lr, steps, loss) in &grid {
        println!(
            "  batch {batch:>5}  lr {lr:.0e}  {steps:>4} steps  {}",
            loss.map_or("failed".into(), |l| format!("{l:.4}"))
        );
    }
    println!();
    println!(
        "| mode | trials ok/all | processes | overhead per trial, probe / run (+ validation) | training: seconds, share of the search's wall time | runs: planned, took | pick (batch, LR) | pick's loss | best cell | gap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut shares = Vec::new();
    for mode in &modes {
        let (batch, lr) = mode.pick;
        let steps = steps_for(step_time(batch));
        let loss = cell_loss(&runtime, &persistent_runner, &spec, batch, lr, steps);
        let mut walls = mode.run_walls.clone();
        walls.sort_by(f64::total_cmp);
        let walls_text = match (walls.first(), walls.last()) {
            (Some(lo), Some(hi)) => format!(
                "{} s, {:.1}-{:.1} s (median {:.1})",
                mode.planned.map_or("-".into(), |p| format!("{p:.1}")),
                lo,
                hi,
                median(&mut walls.clone())
            ),
            _ => "-".into(),
        };
        let (best_text, gap) = match (best, loss) {
            (Some((b, blr, bl)), Some(l)) => (
                format!("{b}, {blr:.0e}: {bl:.4}"),
                format!("{:+.1}%", (l / bl - 1.0) * 100.0),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {}/{} | {} | {:.2} s / {:.2} s (+ {:.2} s) | {:.0} s, {:.0}% of {:.0} s | {} | {}, {:.2e} | {} | {} | {} |",
            mode.name,
            mode.ok,
            mode.all,
            mode.processes,
            mode.probe_overhead,
            mode.run_overhead,
            mode.validation,
            mode.training,
            mode.training_share * 100.0,
            mode.search_seconds,
            walls_text,
            batch,
            lr,
            loss.map_or("failed".into(), |l| format!("{l:.4}")),
            best_text,
            gap
        );
        shares.push((mode.training, mode.training_share));
    }
    if let [fresh, persistent] = shares[..] {
        println!();
        println!(
            "persistent over one process per trial: {:.2}x the training in the same {budget:.0}-s budget, {:.2}x the training per second of search",
            persistent.0 / fresh.0,
            persistent.1 / fresh.1
        );
    }
}
