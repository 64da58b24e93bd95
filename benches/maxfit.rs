//! `cargo bench --bench maxfit`: batchd's max-fit search against the peers'
//! strategies, side by side on the same real trial runner (CPU trials in
//! worker processes, each under the same memory budget).
//!
//! Peers, reimplemented as their documentation and code describe them:
//! - Lightning `Tuner.scale_batch_size(mode="power")`: start at 2, double
//!   while it fits, at most 25 trials, capped at `max_val` = 8192 (its
//!   default); answer the last size that fitted.
//! - Lightning `mode="binsearch"`: double until a failure, then bisect
//!   between the last success and the failure; at most 25 trials, same cap,
//!   and the answer shrunk by its 5% `margin`.
//! - Accelerate `find_executable_batch_size`: start at 128 and multiply by
//!   0.9 after every failure; answer the first size that runs.
//!
//! Each peer runs twice: with its defaults, and as a user who read its
//! documentation would configure it for this job: Lightning with `max_val`
//! raised to the spec's `max_batch`, Accelerate with `starting_batch_size`
//! set to it.
//!
//! The true maximum is found by bisection down to one rounding step (8) of
//! real trials. Figures are printed, not asserted: the README keeps them.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use batchd::policy::PolicySet;
use batchd::search::maxfit::{prior_bytes_per_sample, MaxFitSearch, Next, Probe};
use batchd::spec::{parse_spec, JobSpec, SpecOrigin};
use batchd::trial::{ProcessTrialRunner, RunnerOptions, TrialDevice, TrialRequest, TrialRunner};
use batchd::validation::Syntax;

const MULTIPLE: u64 = 8;
const LIGHTNING_MAX_TRIALS: usize = 25;
const LIGHTNING_MAX_VAL: u64 = 8192;
const ACCELERATE_START: u64 = 128;
/// The `search.max_batch` of the benchmark's jobs (that of the shipped
/// mlp-synthetic example): batchd's upper bound and the configured peers'.
const SPEC_MAX_BATCH: u64 = 262_144;

struct Bench {
    runner: ProcessTrialRunner,
    runtime: tokio::runtime::Runtime,
}

/// What a strategy saw: every trial, in order.
#[derive(Default)]
struct Log {
    trials: Vec<(u64, bool, Option<u64>)>,
    started: Option<Instant>,
}

impl Bench {
    fn fits(
        &self,
        spec: &JobSpec,
        batch: u64,
        steps: u32,
        budget: u64,
        log: &mut Log,
    ) -> (bool, Option<u64>) {
        log.started.get_or_insert_with(Instant::now);
        let mut request = TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, steps, 1e-4);
        request.warmup_steps = 1;
        request.memory_limit_bytes = Some(budget);
        request.deadline = Duration::from_secs(300);
        let result = self.runtime.block_on(self.runner.run(request));
        let ok = result.is_ok();
        log.trials.push((batch, ok, result.peak_memory_bytes));
        (ok, result.peak_memory_bytes)
    }
}

fn batchd(bench: &Bench, spec: &JobSpec, budget: u64, log: &mut Log) -> Option<u64> {
    let prior = prior_bytes_per_sample(spec, 4.0);
    let mut search = MaxFitSearch::new(1, SPEC_MAX_BATCH, MULTIPLE, budget, prior);
    while let Next::Try(batch) = search.next_step() {
        let (ok, peak) = bench.fits(spec, batch, spec.policy.trials.fit_steps, budget, log);
        let probe = if ok {
            Probe::Fits {
                peak_bytes: peak.unwrap_or(0),
            }
        } else {
            Probe::Fails {
                reason: "failed".into(),
                out_of_memory: true,
            }
        };
        search.record(batch, probe);
    }
    search.result().batch_size
}

fn lightning_power(
    bench: &Bench,
    spec: &JobSpec,
    budget: u64,
    log: &mut Log,
    max_val: u64,
) -> Option<u64> {
    let mut batch = 2;
    let mut last_ok = None;
    for _ in 0..LIGHTNING_MAX_TRIALS {
        let (ok, _) = bench.fits(spec, batch, 3, budget, log);
        if !ok {
            break;
        }
        last_ok = Some(batch);
        if batch >= max_val {
            break;
        }
        batch = (batch * 2).min(max_val);
    }
    last_ok
}

fn lightning_binsearch(
    bench: &Bench,
    spec: &JobSpec,
    budget: u64,
    log: &mut Log,
    max_val: u64,
) -> Option<u64> {
    let mut batch = 2u64;
    let mut low = None;
    let mut high: Option<u64> = None;
    for _ in 0..LIGHTNING_MAX_TRIALS {
        let (ok, _) = bench.fits(spec, batch, 3, budget, log);
        if ok {
            low = Some(batch);
            if batch >= max_val {
                break;
            }
            batch = match high {
                Some(h) => {
                    if h - batch <= 1 {
                        break;
                    }
                    (batch + h) / 2
                }
                None => (batch * 2).min(max_val),
            };
        } else {
            high = Some(batch);
            let l = low.unwrap_or(1);
            if batch - l <= 1 {
                break;
            }
            batch = (l + batch) / 2;
        }
    }
    // Lightning's safety margin, applied to the answer without a trial.
    low.map(|b| ((b as f64) * 0.95) as u64)
}

fn accelerate(
    bench: &Bench,
    spec: &JobSpec,
    budget: u64,
    log: &mut Log,
    start: u64,
) -> Option<u64> {
    let mut batch = start;
    while batch > 0 {
        let (ok, _) = bench.fits(spec, batch, 3, budget, log);
        if ok {
            return Some(batch);
        }
        batch = (batch as f64 * 0.9) as u64;
    }
    None
}

/// The largest multiple of 8 that fits, by doubling then bisection, with
/// every size's result cached. Near the limit a size can fit in one run and
/// not in the next (RSS varies by a percent or so), so a size counts as
/// fitting only when two runs both fit.
fn truth(bench: &Bench, spec: &JobSpec, budget: u64) -> (u64, usize) {
    let mut cache: BTreeMap<u64, bool> = BTreeMap::new();
    let mut log = Log::default();
    let mut check = |b: u64, log: &mut Log| -> bool {
        *cache.entry(b).or_insert_with(|| {
            bench
                .fits(spec, b, spec.policy.trials.fit_steps, budget, log)
                .0
        })
    };
    let mut lo = MULTIPLE;
    assert!(check(lo, &mut log), "nothing fits in {budget}");
    let mut hi = lo * 2;
    while check(hi, &mut log) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > MULTIPLE {
        let mid = (lo + hi) / 2 / MULTIPLE * MULTIPLE;
        if check(mid, &mut log) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo, log.trials.len())
}

fn main() {
    let mut options = RunnerOptions::current_exe().expect("current exe");
    options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
    let bench = Bench {
        runner: ProcessTrialRunner::new(options),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    };
    let origin = SpecOrigin {
        label: "bench".into(),
        default_name: Some("bench".into()),
        base_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")),
    };
    let policies = PolicySet::builtin();
    let mlp = parse_spec(
        "[model]\nkind = \"mlp\"\ninput_size = 64\nhidden = [256, 256]\nclasses = 10\n[data]\nkind = \"synthetic\"\nsamples = 4096\n[optimizer]\nkind = \"adamw\"\n",
        Syntax::Toml,
        &origin,
        &policies,
    )
    .expect("mlp spec");
    let gpt = parse_spec(
        "[model]\nkind = \"transformer\"\ncontext_length = 16\nd_model = 32\nlayers = 1\nheads = 2\n[data]\nkind = \"text\"\npath = \"corpus.txt\"\n[optimizer]\nkind = \"adam\"\n",
        Syntax::Toml,
        &origin,
        &policies,
    )
    .expect("transformer spec");
    let quick = std::env::var_os("BATCHD_BENCH_QUICK").is_some();
    let cases: Vec<(&str, &JobSpec, u64)> = if quick {
        vec![
            ("mlp 64-256-256", &mlp, 64 << 20),
            ("gpt d32 ctx16", &gpt, 96 << 20),
        ]
    } else {
        vec![
            ("mlp 64-256-256", &mlp, 64 << 20),
            ("mlp 64-256-256", &mlp, 192 << 20),
            ("mlp 64-256-256", &mlp, 768 << 20),
            ("gpt d32 ctx16", &gpt, 96 << 20),
            ("gpt d32 ctx16", &gpt, 384 << 20),
        ]
    };
    type Strategy = Box<dyn Fn(&Bench, &JobSpec, u64, &mut Log) -> Option<u64>>;
    let strategies: Vec<(&str, Strategy)> = vec![
        ("batchd", Box::new(batchd)),
        (
            "lightning power",
            Box::new(|b, s, m, l| lightning_power(b, s, m, l, LIGHTNING_MAX_VAL)),
        ),
        (
            "lightning binsearch",
            Box::new(|b, s, m, l| lightning_binsearch(b, s, m, l, LIGHTNING_MAX_VAL)),
        ),
        (
            "accelerate 0.9x",
            Box::new(|b, s, m, l| accelerate(b, s, m, l, ACCELERATE_START)),
        ),
        (
            "lightning power*",
            Box::new(|b, s, m, l| lightning_power(b, s, m, l, SPEC_MAX_BATCH)),
        ),
        (
            "lightning binsrch*",
            Box::new(|b, s, m, l| lightning_binsearch(b, s, m, l, SPEC_MAX_BATCH)),
        ),
        (
            "accelerate 0.9x*",
            Box::new(|b, s, m, l| accelerate(b, s, m, l, SPEC_MAX_BATCH)),
        ),
    ];
    println!(
        "{:<16}{:>8} {:<20}{:>7}{:>9}{:>9}{:>9}{:>8}  flags",
        "model", "budget", "strategy", "trials", "wall s", "answer", "truth", "gap %"
    );
    let mut batchd_trials = Vec::new();
    let mut batchd_gaps = Vec::new();
    for (name, spec, budget) in cases {
        let (true_max, truth_trials) = truth(&bench, spec, budget);
        for (label, strategy) in &strategies {
            let mut log = Log::default();
            let answer = strategy(&bench, spec, budget, &mut log);
            let wall = log.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            let mut flags = Vec::new();
            let tested_ok =
                answer.is_some_and(|a| log.trials.iter().any(|(b, ok, _)| *b == a && *ok));
            if answer.is_some() && !tested_ok {
                flags.push("untested");
            }
            // Over budget: the answer is at or above a size that failed in
            // the strategy's own trials, or its own run exceeded the budget.
            let over = answer.is_some_and(|a| {
                log.trials.iter().any(|(b, ok, peak)| {
                    (*b <= a && !*ok && !log.trials.iter().any(|(c, ok2, _)| *c == a && *ok2))
                        || (*b == a && peak.is_some_and(|p| p > budget))
                })
            });
            if over {
                flags.push("over budget");
            }
            if answer.is_some_and(|a| a > true_max) {
                flags.push("above the twice-fitting truth");
            }
            if answer.is_none() {
                flags.push("no answer");
            }
            let gap = answer.map_or(100.0, |a| {
                (true_max as f64 - a as f64) / true_max as f64 * 100.0
            });
            if *label == "batchd" {
                batchd_trials.push(log.trials.len());
                batchd_gaps.push(gap);
                if std::env::var_os("BATCHD_BENCH_VERBOSE").is_some() {
                    for (b, ok, peak) in &log.trials {
                        eprintln!(
                            "    batchd tried {b:>8} {} peak {:?}",
                            if *ok { "ok  " } else { "FAIL" },
                            peak.map(|p| p >> 20)
                        );
                    }
                }
            }
            println!(
                "{:<16}{:>8} {:<20}{:>7}{:>9.1}{:>9}{:>9}{:>8.1}  {}",
                name,
                format!("{}MiB", budget >> 20),
                label,
                log.trials.len(),
                wall,
                answer.map_or("-".into(), |a| a.to_string()),
                true_max,
                gap,
                flags.join(", ")
            );
        }
        println!(
            "{:<16}{:>8} {:<20}{:>7}  (bisection to one step of {MULTIPLE})",
            name,
            format!("{}MiB", budget >> 20),
            "truth",
            truth_trials
        );
    }
    batchd_trials.sort_unstable();
    let median = batchd_trials[batchd_trials.len() / 2];
    let worst_gap = batchd_gaps.iter().cloned().fold(f64::MIN, f64::max);
    println!();
    println!(
        "* configured as the docs suggest: Lightning max_val = {SPEC_MAX_BATCH}, Accelerate starting_batch_size = {SPEC_MAX_BATCH} (the spec's max_batch)"
    );
    println!(
        "batchd: median {median} trials (target <= 6), worst gap {worst_gap:.2}% below the true maximum (target <= 2% or one step of {MULTIPLE})"
    );
}
