//! The whole search against fake runners: a model of memory, speed, loss
//! and gradient noise with known answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::policy::PolicySet;
use crate::spec::{parse_spec, SpecOrigin};
use crate::trial::{GradNoiseSample, TrialDevice, TrialResult};
use crate::validation::Syntax;

/// A job whose truths are known.
pub(crate) struct FakeRunner {
    fixed_bytes: f64,
    bytes_per_sample: f64,
    /// Step time c0 + c1 * batch.
    c0: f64,
    c1: f64,
    /// The best LR at batch 64, and how it scales (lr* ~ B^alpha).
    best_lr_64: f64,
    alpha: f64,
    /// tr(Sigma) / |G|^2.
    noise_scale: f64,
    /// Batches from which every trial crashes.
    crash_from: Option<u64>,
    /// Samples in the training split.
    train_samples: u64,
    /// Steps to reach the loss floor at a huge batch (McCandlish's S_min).
    min_steps: f64,
    /// Seed-to-seed wobble of validation losses, shared by every run on
    /// that seed (the same initialization and data order), as the seed's
    /// luck is in real races.
    seed_noise: f64,
    /// Wobble of one run's validation loss that no other run shares (its
    /// seed, batch and LR together).
    run_noise: f64,
    /// Relative wobble of the squared gradient norms.
    grad_wobble: f64,
    /// Where the LR range test's loss bottoms out, as a multiple of the
    /// best LR (a noisy sweep can put it far off).
    sweep_bottom: f64,
    /// Training runs whose peak LR exceeds this multiple of the best LR
    /// diverge.
    diverges_above: Option<f64>,
    /// Trials take the wall time their steps model (for tests of the
    /// budget); otherwise they return at once.
    sleeps: bool,
    /// The noise scale grows with samples trained s as
    /// noise_scale x (1 + s / 10,000)^k (McCandlish: it grows as the loss
    /// falls); `None`: constant. With it, a run's progress is summed step
    /// by step, which is what makes a batch ramp pay.
    noise_growth: Option<f64>,
    /// Validation loss this much higher from this batch on (batch, extra):
    /// a candidate clearly out of contention.
    worse_from: Option<(u64, f64)>,
    calls: AtomicUsize,
    seen: Mutex<Vec<u64>>,
    /// Every training run asked for (validated at the end).
    trained: Mutex<Vec<super::phases::RunKey>>,
}

impl FakeRunner {
    pub(crate) fn new() -> FakeRunner {
        FakeRunner {
            fixed_bytes: 200e6,
            bytes_per_sample: 50e3,
            c0: 0.01,
            c1: 2e-5,
            best_lr_64: 1e-3,
            alpha: 0.5,
            noise_scale: 2000.0,
            crash_from: None,
            train_samples: 10_000_000,
            min_steps: 200.0,
            seed_noise: 0.002,
            run_noise: 0.0,
            grad_wobble: 0.02,
            sweep_bottom: 1.0,
            diverges_above: None,
            sleeps: false,
            noise_growth: None,
            worse_from: None,
            calls: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            trained: Mutex::new(Vec::new()),
        }
    }

    /// The best LR moves with the batch as the optimal step does
    /// (McCandlish et al. 2018): by B^alpha far below the noise scale,
    /// levelling off past it.
    fn best_lr(&self, batch: u64) -> f64 {
        let (b, n) = (batch as f64, self.noise_scale);
        self.best_lr_64 * ((b / (b + n)) / (64.0 / (64.0 + n))).powf(self.alpha)
    }

    /// The noise scale once `samples` have been trained.
    fn noise_at(&self, samples: u64) -> f64 {
        self.noise_growth.map_or(self.noise_scale, |k| {
            self.noise_scale * (1.0 + samples as f64 / 10_000.0).powf(k)
        })
    }

    /// McCandlish's progress of a run: each step at batch B_t does
    /// 1 / (S_min (1 + B_noise(s_t) / B_t)) of the way.
    fn progress(&self, ramp: Option<&crate::trial::BatchSchedule>, batch: u64, steps: u32) -> f64 {
        if self.noise_growth.is_none() && ramp.is_none() {
            return f64::from(steps) / (self.min_steps * (1.0 + self.noise_scale / batch as f64));
        }
        let (mut seen, mut progress) = (0u64, 0.0);
        for _ in 0..steps {
            let b = ramp.map_or(batch, |r| r.phase_at(seen).batch_size);
            progress += 1.0 / (self.min_steps * (1.0 + self.noise_at(seen) / b as f64));
            seen += b;
        }
        progress
    }

    /// Validation loss after `progress` (see [`Self::progress`]) at
    /// `batch` with peak `lr`: a floor approached as progress grows
    /// (McCandlish et al. 2018), a bowl in log-LR around the best, and a
    /// seed's wobble and the run's own.
    fn loss_after(&self, batch: u64, lr: f64, progress: f64, seed: u64) -> f64 {
        let unit = |h: u64| (h % 1000) as f64 / 500.0 - 1.0;
        let run = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(batch.wrapping_mul(0xBF58_476D_1CE4_E5B9))
            ^ lr.to_bits();
        let run = run.wrapping_mul(0x94D0_49BB_1331_11EB) >> 20;
        let wobble =
            unit(seed.wrapping_mul(2654435761)) * self.seed_noise + unit(run) * self.run_noise;
        let worse = self
            .worse_from
            .filter(|&(from, _)| batch >= from)
            .map_or(0.0, |(_, extra)| extra);
        0.5 + 1.0 / (1.0 + progress)
            + 0.2 * (lr.ln() - self.best_lr(batch).ln()).powi(2)
            + wobble
            + worse
    }

    /// Seconds per step.
    fn step_seconds(&self, batch: u64) -> f64 {
        self.c0 + self.c1 * batch as f64
    }

    pub(crate) fn answer(&self, request: &TrialRequest) -> TrialResult {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(request.batch_size);
        if request.record.validation_loss {
            self.trained
                .lock()
                .unwrap()
                .push(super::phases::RunKey::of(request));
        }
        let batch = request.batch_size;
        let peak = (self.fixed_bytes + self.bytes_per_sample * batch as f64) as u64;
        let mut result = TrialResult {
            outcome: Outcome::Ok,
            reason: None,
            batch_size: batch,
            steps: request.steps,
            steps_completed: request.steps,
            device: crate::trial::TrialDevice::Cpu,
            device_name: None,
            backend: "fake".into(),
            precision: None,
            parameter_count: Some(1000),
            train_samples: Some(self.train_samples),
            losses: Vec::new(),
            learning_rates: Vec::new(),
            loss_first: None,
            loss_last: None,
            validation_loss: None,
            samples_per_second: Some(batch as f64 / (self.c0 + self.c1 * batch as f64)),
            step_seconds_median: None,
            startup_seconds: Some(0.1),
            setup_seconds: Some(0.1),
            data_seconds: None,
            data_from_cache: None,
            peak_memory_bytes: Some(peak),
            peak_memory_source: Some("rss".into()),
            memory_limit_bytes: request.memory_limit_bytes,
            device_memory_total_bytes: None,
            grad_noise: None,
            wall_seconds: 0.01,
            exit: None,
            stderr_tail: String::new(),
            warnings: Vec::new(),
            training_seconds: None,
            process_trial: None,
            validation_seconds: None,
        };
        if self.crash_from.is_some_and(|from| batch >= from) {
            result.outcome = Outcome::Crashed;
            result.reason = Some(format!("injected crash {call}"));
            return result;
        }
        if request.memory_limit_bytes.is_some_and(|limit| peak > limit) {
            result.outcome = Outcome::OutOfMemory;
            result.reason = Some("over the limit".into());
            return result;
        }
        for step in 0..request.steps {
            let lr = request.schedule.lr_at(step, request.steps);
            result.learning_rates.push(lr);
            let loss = match request.schedule {
                // A sweep: the loss responds to the LR of each step, and
                // explodes far past the best LR.
                LrSchedule::ExponentialSweep { .. } => {
                    let x = (lr / (self.best_lr(batch) * self.sweep_bottom)).log10();
                    if x < 0.0 {
                        2.0 - 1.0 / (1.0 + (-x).powi(2))
                    } else {
                        1.0 + 2.0 * x * x
                    }
                }
                _ => 2.3 - 0.5 * f64::from(step) / f64::from(request.steps),
            };
            result.losses.push(loss);
        }
        if self.sleeps {
            let seconds = f64::from(request.steps) * self.step_seconds(batch);
            std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
            result.wall_seconds = seconds;
        }
        let peak_lr = request.schedule.peak_lr();
        let too_high = self
            .diverges_above
            .is_some_and(|ratio| peak_lr > ratio * self.best_lr(batch));
        if too_high && !matches!(request.schedule, LrSchedule::ExponentialSweep { .. }) {
            result.outcome = Outcome::Diverged;
            result.reason = Some(format!("lr {peak_lr:.3e} is too high"));
            return result;
        }
        if request.record.validation_loss {
            let lr = request.schedule.peak_lr();
            let progress = self.progress(request.batch_schedule.as_ref(), batch, request.steps);
            result.validation_loss = Some(self.loss_after(batch, lr, progress, request.seed));
        }
        if let Some(noise) = request.record.grad_noise {
            let g2 = 1.0;
            let n = noise.measurements as usize;
            let from = noise
                .from_step
                .unwrap_or(request.steps - noise.measurements);
            // Measurement i's step, as the worker spreads them.
            let trace_at = |i: usize| {
                let span = f64::from(request.steps - from);
                let step = from + ((i as f64 + 0.5) * span / n as f64) as u32;
                self.noise_at(u64::from(step) * batch) * g2
            };
            let spread = self.grad_wobble;
            let wobble = |i: usize| 1.0 + spread * (((i * 13) % 7) as f64 / 3.5 - 1.0);
            let big: Vec<f64> = (0..n)
                .map(|i| (g2 + trace_at(i) / batch as f64) * wobble(i))
                .collect();
            let small: Vec<f64> = (0..n)
                .map(|i| (g2 + trace_at(i) / noise.small_batch as f64) * wobble(i + 2))
                .collect();
            // Adam's preconditioned gradients: the same noise scale (a
            // preconditioner that scales every coordinate alike).
            let scaled = |norms: &[f64]| norms.iter().map(|x| x * 0.25).collect();
            result.grad_noise = Some(GradNoiseSample {
                big_batch: batch,
                small_batch: noise.small_batch,
                preconditioned_big_sq_norms: scaled(&big),
                preconditioned_small_sq_norms: scaled(&small),
                big_sq_norms: big,
                small_sq_norms: small,
            });
        }
        result.loss_first = result.losses.first().copied();
        result.loss_last = result.losses.last().copied();
        result
    }
}

impl TrialRunner for FakeRunner {
    fn run(&self, request: TrialRequest) -> impl std::future::Future<Output = TrialResult> + Send {
        let result = self.answer(&request);
        async move { result }
    }
}

fn spec(policy: &str, extra: &str) -> JobSpec {
    let text = format!(
        "policy = \"{policy}\"\n[model]\nkind = \"mlp\"\ninput_size = 32\nhidden = [64]\nclasses = 4\n[data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n[search]\nmax_batch = 1048576\n{extra}"
    );
    let origin = SpecOrigin {
        label: "fake.toml".into(),
        default_name: Some("fake".into()),
        base_dir: None,
    };
    parse_spec(&text, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap()
}

fn context(limit: u64) -> SearchContext {
    SearchContext {
        device: TrialDevice::Cpu,
        memory_limit_bytes: limit,
        memory_limit_source: crate::machine::MemorySource::Given {
            note: "test".into(),
        },
    }
}

fn advise_with(
    runner: &FakeRunner,
    spec: &JobSpec,
    limit: u64,
) -> Result<Recommendation, SearchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(advise(spec, &context(limit), runner, &|_| {}))
}

#[test]
fn the_whole_search_finds_the_known_answers() {
    let runner = FakeRunner::new();
    let spec = spec("balanced", "");
    let limit = 4u64 << 30;
    let rec = advise_with(&runner, &spec, limit).unwrap();
    // Max fit: within 2% (or one multiple) below the true limit.
    let budget = limit as f64 * 0.9;
    let truth = ((budget - runner.fixed_bytes) / runner.bytes_per_sample) as u64 / 8 * 8;
    assert!(
        rec.max_fit_batch_size() <= truth,
        "{} > {truth}",
        rec.max_fit_batch_size()
    );
    assert!(
        truth - rec.max_fit_batch_size() <= 8.max(truth / 50),
        "{} vs {truth}",
        rec.max_fit_batch_size()
    );
    let fit_trials = rec
        .evidence
        .trials
        .iter()
        .filter(|t| t.phase == Phase::MaxFit)
        .count();
    assert!(fit_trials <= 6, "{fit_trials} max-fit trials");
    // Noise scale recovered.
    let noise = rec.gradient_noise_scale().unwrap();
    assert!((noise / 2000.0 - 1.0).abs() < 0.15, "noise scale {noise}");
    // The goodput choice lies below the max fit and near the noise scale.
    assert!(rec.batch_size < rec.max_fit_batch_size());
    assert!(rec.batch_size >= 256, "batch {}", rec.batch_size);
    // The LR at the chosen batch is close to the truth, and alpha measured.
    let lr = rec.lr.learning_rate.unwrap();
    let truth_lr = runner.best_lr(rec.effective_batch_size);
    assert!((lr / truth_lr).ln().abs() < 0.3, "lr {lr} vs {truth_lr}");
    let alpha = rec.lr.rule.as_ref().unwrap().measured_alpha.unwrap();
    assert!(
        (alpha - 0.5).abs() < 0.1,
        "alpha {alpha} {:?} {:?}",
        rec.evidence.best_lrs,
        rec.evidence.lr_confirmations
    );
    // "What LR at batch N?" follows the rule.
    let at_4x = rec.learning_rate_for(rec.effective_batch_size * 4).unwrap();
    assert!((at_4x / lr / 4f64.powf(rec.lr.rule.as_ref().unwrap().alpha) - 1.0).abs() < 1e-9);
    assert!(!rec.partial);
    assert_eq!(rec.evidence.trials.len(), rec.evidence.trials.len());
    assert!(rec.memory.expected_peak_bytes.unwrap() <= rec.memory_budget_bytes());
    assert!(rec.schedule.warmup_steps.unwrap() > 0);
    assert_eq!(
        rec.schedule.updates_per_epoch,
        Some(runner.train_samples.div_ceil(rec.effective_batch_size))
    );
    // The schedule the runs used is the one recommended.
    let schedule = &rec.schedule;
    assert_eq!(schedule.decay, "cosine");
    assert!(rec.lr.interval.is_some());
}

/// The batch a fixed time favours: minimizing (c0 + c1 B)(1 + B_noise / B)
/// gives B* = sqrt(c0 B_noise / c1).
fn best_batch_for_time(runner: &FakeRunner) -> f64 {
    (runner.c0 * runner.noise_scale / runner.c1).sqrt()
}

#[test]
fn the_race_finds_the_batch_a_fixed_time_favours() {
    let runner = FakeRunner::new();
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    let truth = best_batch_for_time(&runner);
    assert!((truth - 1000.0).abs() < 1e-6);
    let ratio = rec.batch_size as f64 / truth;
    assert!(
        (0.5..=2.0).contains(&ratio),
        "batch {} vs {truth}: {:#?}",
        rec.batch_size,
        rec.evidence.race
    );
    let race = rec.evidence.race.as_ref().unwrap();
    assert_eq!(race.winner, Some(rec.batch_size));
    assert!(race.entries.len() >= 2);
    // Every candidate ran every seed, at the LR the transfer gives with the
    // measured noise scale, for the same time; that LR is within 4% of
    // each batch's best (the fake's best LR levels off towards its noise
    // scale of 2,000: from the reference batch 120, the square-root rule
    // would overshoot by 6% at 384 and 14% at 768).
    let seconds =
        |e: &crate::search::race::RaceEntry| f64::from(e.steps) * runner.step_seconds(e.batch_size);
    let first = seconds(&race.entries[0]);
    let noise = rec
        .evidence
        .preconditioned_noise
        .as_ref()
        .filter(|n| !n.is_lower_bound())
        .map(|n| n.value);
    assert!(noise.is_some());
    for entry in &race.entries {
        assert!(entry.runs.len() >= 2, "{entry:?}");
        assert!(
            (seconds(entry) / first - 1.0).abs() < 0.1,
            "{:?}",
            race.entries
        );
        let first = &race.entries[0];
        let rule = crate::search::lr::transfer_lr(
            first.learning_rate,
            first.batch_size,
            entry.batch_size,
            0.5,
            noise,
        );
        assert!((entry.learning_rate / rule - 1.0).abs() < 1e-9);
        let truth = runner.best_lr(entry.batch_size);
        assert!(
            (entry.learning_rate / truth).ln().abs() < 0.04,
            "batch {}: lr {} vs best {truth}",
            entry.batch_size,
            entry.learning_rate
        );
    }
    // The race is evidence in the rationale.
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.starts_with("race over batches")),
        "{:?}",
        rec.rationale
    );
    assert!(rec.evidence.trials.iter().any(|t| t.phase == Phase::Race));
}

#[test]
fn no_trial_or_recommendation_exceeds_the_training_set() {
    let mut runner = FakeRunner::new();
    runner.train_samples = 142;
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    let seen = runner.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|&b| b <= 142), "{seen:?}");
    assert!(rec.max_fit_batch_size() <= 142);
    assert!(
        rec.memory.max_fit.capped_by_dataset,
        "{:?}",
        rec.memory.max_fit
    );
    let cap = rec.evidence.batch_cap.as_ref().unwrap();
    assert_eq!(cap.training_samples, 142);
    assert!(cap.binding);
    assert!(
        rec.batch_size <= cap.largest_batch,
        "{} > {}",
        rec.batch_size,
        cap.largest_batch
    );
    assert!(rec.schedule.updates_per_epoch.unwrap() >= 8);
    assert!(rec.throughput.curve.iter().all(|p| p.batch_size <= 142));
    assert!(
        rec.rationale.iter().any(|l| l.contains("caps the batch")),
        "{:?}",
        rec.rationale
    );
    // A stated dataset size bounds the search the same way.
    let runner = FakeRunner::new();
    let rec = advise_with(
        &runner,
        &spec("balanced", "[training]\ndataset_size = 4000\n"),
        4 << 30,
    )
    .unwrap();
    assert!(runner.seen.lock().unwrap().iter().all(|&b| b <= 4000));
    assert!(rec.batch_size <= 500);
}

#[test]
fn an_uncertain_noise_scale_is_reported_and_widens_the_race() {
    let mut runner = FakeRunner::new();
    runner.grad_wobble = 0.6;
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    let batches: Vec<u64> = race.entries.iter().map(|e| e.batch_size).collect();
    // Too uncertain to decide on, or (with |G|^2 not clearly above zero)
    // only a lower bound that the race reaches above.
    let undecided = rec
        .rationale
        .iter()
        .any(|l| l.contains("race decides") || l.contains("the race reaches above it"));
    assert!(undecided, "{:?}", rec.rationale);
    let noise = rec.evidence.gradient_noise.as_ref().unwrap();
    assert!(!noise.is_decisive(), "{noise:?}");
    // Candidates a factor of four apart, not two.
    assert!(
        batches.windows(2).all(|w| w[1] as f64 / w[0] as f64 >= 3.5),
        "{batches:?}"
    );
}

#[test]
fn confirmations_that_all_diverge_are_followed_by_lower_lrs() {
    let mut runner = FakeRunner::new();
    // The sweep bottoms out 1000x too high, so its suggestion (a tenth)
    // is 100x too high, and every LR above 10x the best diverges: all
    // three confirmations (31.6x to 316x) do.
    runner.sweep_bottom = 1000.0;
    runner.diverges_above = Some(10.0);
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    assert!(
        rec.evidence
            .lr_confirmations
            .iter()
            .any(|c| c.outcome == Outcome::Diverged),
        "{:#?}",
        rec.evidence.lr_confirmations
    );
    let truth = runner.best_lr(rec.effective_batch_size);
    let lr = rec.lr.learning_rate.unwrap();
    assert!(
        (1.0 / 3.0..=3.0).contains(&(lr / truth)),
        "LR {lr} against the best {truth}: {:#?}",
        rec.rationale
    );
}

#[test]
fn candidates_within_the_seed_spread_get_another_seed() {
    let mut runner = FakeRunner::new();
    // Progress barely depends on the batch, and seeds wobble a lot.
    runner.noise_scale = 1.0;
    runner.min_steps = 1.0;
    runner.seed_noise = 0.05;
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(
        race.entries.iter().any(|e| e.runs.len() > 2),
        "{:#?}",
        race.entries
    );
    assert!(race.within_noise, "{}", race.verdict);
}

#[test]
fn a_steeper_lr_rule_is_measured_as_such() {
    let mut runner = FakeRunner::new();
    runner.alpha = 0.9;
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    let alpha = rec.lr.rule.as_ref().unwrap().measured_alpha.unwrap();
    assert!(
        (alpha - 0.9).abs() < 0.15,
        "alpha {alpha}: {:#?}",
        rec.rationale
    );
}

#[test]
fn policies_move_the_batch_the_expected_way() {
    let runner = FakeRunner::new();
    let limit = 4u64 << 30;
    let balanced = advise_with(&runner, &spec("balanced", ""), limit).unwrap();
    let throughput = advise_with(&runner, &spec("throughput", ""), limit).unwrap();
    let generalization = advise_with(&runner, &spec("generalization", ""), limit).unwrap();
    let safe = advise_with(&runner, &spec("memory-safe", ""), limit).unwrap();
    assert!(generalization.batch_size < balanced.batch_size);
    assert!(throughput.batch_size >= balanced.batch_size);
    assert!(safe.max_fit_batch_size() < balanced.max_fit_batch_size());
    assert!(safe.memory_budget_bytes() < balanced.memory_budget_bytes());
}

#[test]
fn data_parallel_and_accumulation_shape_the_global_batch() {
    let runner = FakeRunner::new();
    let spec = spec(
        "balanced",
        "[training]\nworld_size = 4\ntarget_batch_size = 65536\n",
    );
    let rec = advise_with(&runner, &spec, 1 << 30).unwrap();
    assert_eq!(rec.world_size, 4);
    assert_eq!(rec.global_batch_size, rec.batch_size * 4);
    assert!(rec.gradient_accumulation_steps > 1);
    assert_eq!(
        rec.effective_batch_size,
        rec.global_batch_size * u64::from(rec.gradient_accumulation_steps)
    );
    // The LR is for the effective batch.
    let lr = rec.lr.learning_rate.unwrap();
    assert!((lr - rec.learning_rate_for(rec.effective_batch_size).unwrap()).abs() < 1e-15);
    // Memory stays per device.
    assert!(rec.max_fit_batch_size() <= ((0.9 * (1u64 << 30) as f64 - 200e6) / 50e3) as u64);
}

#[test]
fn crashes_bound_the_search_and_are_reported() {
    let mut runner = FakeRunner::new();
    runner.crash_from = Some(5000);
    let rec = advise_with(&runner, &spec("balanced", ""), 4 << 30).unwrap();
    assert!(rec.max_fit_batch_size() < 5000);
    let (failed, why) = rec.memory.max_fit.first_failure.clone().unwrap();
    assert!(failed >= 5000 && why.contains("crashed"), "{failed} {why}");
    // The first crash is retried once; once a retry reproduces it, later
    // crashes count at once.
    let seen = runner.seen.lock().unwrap();
    let first_crash = *seen.iter().find(|b| **b >= 5000).unwrap();
    assert_eq!(
        seen.iter().filter(|b| **b == first_crash).count(),
        2,
        "{seen:?}"
    );
    assert_eq!(seen.iter().filter(|b| **b == failed).count(), 1, "{seen:?}");
}

#[test]
fn nothing_fitting_is_an_error_not_a_recommendation() {
    let runner = FakeRunner::new();
    let error = advise_with(&runner, &spec("balanced", ""), 100 << 20).unwrap_err();
    assert!(matches!(error, SearchError::NothingFits { .. }), "{error}");
}

#[test]
fn a_spent_time_budget_gives_a_partial_answer() {
    let runner = FakeRunner::new();
    let mut spec = spec("balanced", "");
    spec.search.time_budget = std::time::Duration::from_millis(1);
    let rec = advise_with(&runner, &spec, 4 << 30).unwrap();
    assert!(rec.partial);
    assert!(rec.partial_reason.as_ref().unwrap().contains("time budget"));
    // Still an answer that was itself tested.
    assert!(rec
        .evidence
        .trials
        .iter()
        .any(|t| t.batch_size == rec.max_fit_batch_size() && t.outcome == Outcome::Ok));
}

#[test]
fn slow_max_fit_trials_stop_within_their_share_and_say_so() {
    let mut runner = FakeRunner::new();
    runner.sleeps = true;
    let mut spec = spec("balanced", "");
    spec.search.time_budget = std::time::Duration::from_secs(8);
    // Memory would allow about 82,000; a 4-step trial at batch B takes
    // 0.04 + 8e-5 B seconds, and the max-fit share of 8 s is 1.12 s: the
    // search stops short, says so, and the whole search stays in budget.
    let rec = advise_with(&runner, &spec, 4 << 30).unwrap();
    assert!(
        rec.phases_cut.contains(&Phase::MaxFit),
        "{:?}",
        rec.phases_cut
    );
    assert!(rec.seconds < 8.0 * 1.1, "took {} s", rec.seconds);
}

#[test]
fn race_runs_never_train_longer_than_the_real_job() {
    let runner = FakeRunner::new();
    let rec = advise_with(
        &runner,
        &spec("balanced", "[training]\ntime_budget = \"2s\"\n"),
        4 << 30,
    )
    .unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    assert_eq!(
        race.budget,
        crate::search::race::RaceBudget::WallClock { seconds: 2.0 }
    );
    for entry in &race.entries {
        let seconds = f64::from(entry.steps) * runner.step_seconds(entry.batch_size);
        assert!(seconds <= 2.0 + 1e-9 && seconds > 1.8, "{entry:?}");
    }
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("training.time_budget")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn time_the_plan_leaves_over_buys_the_race_more_seeds() {
    // Fake trials cost no time: a 2-s job's runs leave most of the search
    // budget over, and the race spends it on seeds, up to five each.
    let runner = FakeRunner::new();
    let rec = advise_with(
        &runner,
        &spec("balanced", "[training]\ntime_budget = \"2s\"\n"),
        4 << 30,
    )
    .unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    for entry in &race.entries {
        assert!(entry.runs.len() >= 5, "{entry:?}");
    }
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("5 seeds per race candidate instead of 2")),
        "{:?}",
        rec.rationale
    );
    // A budget that affords only the plan keeps the policy's seeds.
    let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
    spec.search.time_budget = std::time::Duration::from_secs(28);
    let rec = advise_with(&runner, &spec, 4 << 30).unwrap();
    assert!(
        !rec.rationale
            .iter()
            .any(|l| l.contains("seeds per race candidate")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn the_generalization_race_gives_every_candidate_the_same_epochs() {
    let mut runner = FakeRunner::new();
    runner.train_samples = 20_000;
    let rec = advise_with(
        &runner,
        &spec("generalization", "[training]\nepochs = 1\n"),
        4 << 30,
    )
    .unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    let crate::search::race::RaceBudget::Epochs { epochs } = race.budget else {
        panic!("{:?}", race.budget);
    };
    for entry in &race.entries {
        let seen = f64::from(entry.steps) * entry.batch_size as f64 / 20_000.0;
        assert!(
            (seen - epochs).abs() <= entry.batch_size as f64 / 20_000.0 + 1e-9,
            "{entry:?} vs {epochs}"
        );
    }
    // Equal epochs favour the smaller batch: more updates.
    assert_eq!(
        race.winner,
        race.entries.iter().map(|e| e.batch_size).min(),
        "{}",
        race.verdict
    );
}

#[test]
fn a_tight_budget_races_fewer_candidates_at_the_real_length() {
    let runner = FakeRunner::new();
    let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
    // 28 s of search affords about eight runs of 3 s of stepping (planned
    // with the default overhead until a run is timed): the lean plan.
    spec.search.time_budget = std::time::Duration::from_secs(28);
    let rec = advise_with(&runner, &spec, 4 << 30).unwrap();
    let race = rec.evidence.race.as_ref().unwrap();
    assert_eq!(
        race.budget,
        crate::search::race::RaceBudget::WallClock { seconds: 3.0 },
        "{:?}",
        rec.rationale
    );
    assert_eq!(race.entries.len(), 2, "{:?}", race.entries);
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("2 candidates race")),
        "{:?}",
        rec.rationale
    );
}

/// The fake runner on simulated time: each trial moves the clock by its
/// steps at the fake's step time plus a fixed cost per trial (start-up).
struct Timed<'a> {
    inner: &'a FakeRunner,
    clock: &'a crate::search::clock::ManualClock,
    per_trial: f64,
    /// What a training run costs beyond its steps (validation, noise
    /// measurement), which throughput trials do not show.
    per_run: f64,
    /// Seconds each training run costs more than the one before (a machine
    /// that slows down as the search goes on).
    slowdown: f64,
    /// Seconds a validation of the default held-out set takes, reported
    /// as the worker times it (a smaller set takes its share).
    validation: f64,
    /// The held-out samples every validating trial asked for.
    validated_on: Mutex<Vec<Option<u32>>>,
    runs: std::sync::atomic::AtomicU32,
}

impl TrialRunner for Timed<'_> {
    fn run(&self, request: TrialRequest) -> impl std::future::Future<Output = TrialResult> + Send {
        let mut result = self.inner.answer(&request);
        let training = matches!(request.schedule, LrSchedule::WarmupCosine { .. });
        let extra = if training {
            let before = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.per_run + self.slowdown * f64::from(before)
        } else {
            0.0
        };
        let validation = if request.record.validation_loss && self.validation > 0.0 {
            self.validated_on
                .lock()
                .unwrap()
                .push(request.record.validation_samples);
            let samples = request
                .record
                .validation_samples
                .unwrap_or(crate::trial::DEFAULT_VALIDATION_SAMPLES);
            let seconds = self.validation * f64::from(samples)
                / f64::from(crate::trial::DEFAULT_VALIDATION_SAMPLES);
            result.validation_seconds = Some(seconds);
            seconds
        } else {
            0.0
        };
        let seconds = f64::from(request.steps) * self.inner.step_seconds(request.batch_size)
            + self.per_trial
            + extra
            + validation;
        result.wall_seconds = seconds;
        self.clock
            .advance(std::time::Duration::from_secs_f64(seconds));
        async move { result }
    }
}

fn advise_timed(per_trial: f64, budget: u64, run_seconds: u64) -> (Recommendation, FakeRunner) {
    let mut spec = spec(
        "balanced",
        &format!("[training]\ntime_budget = \"{run_seconds}s\"\n"),
    );
    spec.search.time_budget = std::time::Duration::from_secs(budget);
    advise_on_simulated_time(FakeRunner::new(), &spec, per_trial)
}

/// The whole search on a [`crate::search::clock::ManualClock`] that each
/// trial advances by its modelled wall time plus `per_trial`.
fn advise_on_simulated_time(
    runner: FakeRunner,
    spec: &JobSpec,
    per_trial: f64,
) -> (Recommendation, FakeRunner) {
    advise_on_simulated_runs(runner, spec, per_trial, 0.0)
}

/// [`advise_on_simulated_time`] with training runs costing `per_run` more.
fn advise_on_simulated_runs(
    runner: FakeRunner,
    spec: &JobSpec,
    per_trial: f64,
    per_run: f64,
) -> (Recommendation, FakeRunner) {
    advise_on_slowing_runs(runner, spec, per_trial, per_run, 0.0)
}

/// [`advise_on_simulated_runs`] with each training run `slowdown` seconds
/// dearer than the one before.
fn advise_on_slowing_runs(
    runner: FakeRunner,
    spec: &JobSpec,
    per_trial: f64,
    per_run: f64,
    slowdown: f64,
) -> (Recommendation, FakeRunner) {
    advise_on_timed(runner, spec, per_trial, per_run, slowdown, 0.0)
}

/// [`advise_on_slowing_runs`] with every validation taking `validation`
/// seconds, timed and reported as the worker does.
fn advise_on_timed(
    runner: FakeRunner,
    spec: &JobSpec,
    per_trial: f64,
    per_run: f64,
    slowdown: f64,
    validation: f64,
) -> (Recommendation, FakeRunner) {
    let (rec, runner, _) =
        advise_on_timed_validating(runner, spec, per_trial, per_run, slowdown, validation);
    (rec, runner)
}

/// [`advise_on_timed`], with the held-out samples every validating trial
/// asked for (`None`: the default set).
fn advise_on_timed_validating(
    runner: FakeRunner,
    spec: &JobSpec,
    per_trial: f64,
    per_run: f64,
    slowdown: f64,
    validation: f64,
) -> (Recommendation, FakeRunner, Vec<Option<u32>>) {
    use crate::search::clock::Clock;
    let clock = crate::search::clock::ManualClock::default();
    let timed = Timed {
        inner: &runner,
        clock: &clock,
        per_trial,
        per_run,
        slowdown,
        validation,
        validated_on: Mutex::new(Vec::new()),
        runs: std::sync::atomic::AtomicU32::new(0),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rec = runtime
        .block_on(crate::search::advise_with_clock(
            spec,
            &context(4 << 30),
            &timed,
            &|_| {},
            &clock,
        ))
        .unwrap();
    assert_eq!(rec.seconds, clock.now().as_secs_f64());
    let validated_on = timed.validated_on.into_inner().unwrap();
    (rec, runner, validated_on)
}

#[test]
fn on_simulated_time_the_search_keeps_its_budget_and_runs_their_length() {
    // Cheap trials (a persistent process): runs step the planned 20 s,
    // their small overhead on top.
    let (rec, runner) = advise_timed(0.2, 300, 20);
    assert!(rec.seconds <= 300.0 * 1.05, "{} s", rec.seconds);
    assert!(
        rec.seconds > 200.0,
        "{} s: the budget was left unused",
        rec.seconds
    );
    let race = rec.evidence.race.as_ref().unwrap();
    for entry in &race.entries {
        let wall = f64::from(entry.steps) * runner.step_seconds(entry.batch_size) + 0.2;
        assert!((18.0..=22.0).contains(&wall), "{entry:?}: {wall} s");
    }
}

#[test]
fn runs_dearer_than_planned_shrink_the_race_before_it_starts() {
    // Throughput trials show 3-s runs; real runs cost more (validation and
    // noise measurement the ladder does not time). Planned on the ladder,
    // the race would take five seeds per candidate and the budget would
    // cut the last candidates' seeds; re-planned from what the
    // confirmations cost, the spare seeds go first (3.5-s runs), then a
    // candidate (15.5-s runs), and every candidate that races gets all
    // its seeds.
    for (per_run, candidates, seeds) in [(3.0, 3, 2), (13.0, 2, 2)] {
        let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
        spec.search.time_budget = std::time::Duration::from_secs(90);
        let (rec, _) = advise_on_simulated_runs(FakeRunner::new(), &spec, 0.05, per_run);
        let race = rec.evidence.race.as_ref().unwrap();
        assert_eq!(race.entries.len(), candidates, "{:?}", rec.rationale);
        assert!(
            race.entries.iter().all(|e| e.runs.len() >= seeds),
            "{:?} {:?}",
            rec.rationale,
            rec.partial_reason
        );
        assert!(
            !rec.phases_cut.contains(&Phase::Race),
            "{:?}",
            rec.partial_reason
        );
        let replanned = format!("so {candidates} candidates race with {seeds} seeds each");
        assert!(
            rec.rationale.iter().any(|l| l.contains(&replanned)),
            "{:?}",
            rec.rationale
        );
        assert!(rec.seconds <= 90.0 * 1.05, "{} s", rec.seconds);
    }
}

#[test]
fn a_seed_round_that_no_longer_fits_is_not_started() {
    // Runs grow dearer as the search goes on, beyond what the confirmations
    // showed: the re-plan before the race keeps five seeds, but the later
    // rounds would not fit whole. The race stops between rounds, so every
    // candidate has the same seeds and the search is not partial.
    let mut spec = spec("balanced", "[training]\ntime_budget = \"5s\"\n");
    spec.search.time_budget = std::time::Duration::from_secs(300);
    let (rec, _) = advise_on_slowing_runs(FakeRunner::new(), &spec, 0.05, 0.5, 1.0);
    let race = rec.evidence.race.as_ref().unwrap();
    let seeds: Vec<usize> = race.entries.iter().map(|e| e.runs.len()).collect();
    assert_eq!(seeds, [4, 4, 4], "{:?}", rec.rationale);
    assert!(rec.phases_cut.is_empty(), "{:?}", rec.partial_reason);
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("so the race ended at 4 seeds each (planned: 5)")),
        "{:?}",
        rec.rationale
    );
    assert!(rec.seconds <= 300.0 * 1.05, "{} s", rec.seconds);
}

#[test]
fn a_best_lr_at_an_edge_is_looked_past_before_the_race_grows() {
    // The range test points ten times too high, so the best confirmation
    // sits at the lower edge. The lean plan (about eight 3.5-s runs) has
    // no room for an extension; the extension still runs, as the race would
    // otherwise compare batches at an LR off its bowl, and the race
    // shrinks to two candidates instead.
    let mut runner = FakeRunner::new();
    runner.sweep_bottom = 100.0;
    let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
    spec.search.time_budget = std::time::Duration::from_secs(30);
    let (rec, runner) = advise_on_simulated_runs(runner, &spec, 0.05, 0.5);
    let confirmations: Vec<f64> = rec
        .evidence
        .trials
        .iter()
        .filter(|t| t.phase == Phase::LrConfirmation)
        .filter_map(|t| t.learning_rate)
        .collect();
    let lowest = confirmations.iter().copied().fold(f64::MAX, f64::min);
    // The centre, the LR below it (better: the one above is not run),
    // then at least one below both.
    assert!(confirmations.len() >= 3, "{confirmations:?}");
    assert!(lowest < confirmations[1], "{confirmations:?}");
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("was not run: the loss had already risen")),
        "{:?}",
        rec.rationale
    );
    assert!(
        !rec.phases_cut.contains(&Phase::LrConfirmation) && !rec.phases_cut.contains(&Phase::Race),
        "{:?}",
        rec.partial_reason
    );
    let race = rec.evidence.race.as_ref().unwrap();
    assert_eq!(race.entries.len(), 2, "{:?}", rec.rationale);
    // The race ran within a step of the best LR its batch has.
    for entry in &race.entries {
        let best = runner.best_lr(entry.batch_size);
        let off = (entry.learning_rate / best).ln().abs();
        assert!(off < 3.2f64.ln(), "{entry:?}: best {best}");
    }
}

#[test]
fn a_short_real_run_caps_the_batch_at_its_fewest_updates() {
    // A 0.5-s run: t(B) = 10 ms + B / 50,000 samples/s makes 32 updates up
    // to about batch 280, far below what memory allows (82,000) and below
    // the batch a longer run would favour (1,000).
    let runner = FakeRunner::new();
    let rec = advise_with(
        &runner,
        &spec("balanced", "[training]\ntime_budget = \"0.5s\"\n"),
        4 << 30,
    )
    .unwrap();
    let cap = rec.evidence.batch_cap.as_ref().unwrap();
    let run = cap.run.as_ref().expect("the run's cap");
    assert_eq!(run.min_updates_per_run, 32);
    assert!(
        (240..=288).contains(&run.largest_batch),
        "{cap:?}: t(B) <= 0.5 s / 32 means B <= 281"
    );
    assert_eq!(cap.largest_batch, run.largest_batch);
    assert!(cap.binding);
    assert!(rec.batch_size <= cap.largest_batch, "{}", rec.batch_size);
    let updates = 0.5 / runner.step_seconds(rec.batch_size);
    assert!(updates >= 32.0, "{updates} updates at {}", rec.batch_size);
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(race
        .entries
        .iter()
        .all(|e| e.batch_size <= cap.largest_batch));
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("updates per run at least")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn a_max_fit_stopped_above_the_cap_leaves_nothing_usable_out() {
    // Every trial costs 3 s, so the max-fit share of 20 s (2.8 s) ends
    // after the first probe, at batch 16, with memory unexplored.
    let stop = |dataset: u64| {
        let mut spec = spec(
            "balanced",
            &format!("[training]\ndataset_size = {dataset}\n"),
        );
        spec.search.min_batch = 16;
        spec.search.time_budget = std::time::Duration::from_secs(20);
        advise_on_simulated_runs(FakeRunner::new(), &spec, 3.0, 0.0).0
    };
    // 64 samples: the data caps the advice at 16, which the stop reached.
    let rec = stop(64);
    assert_eq!(rec.evidence.batch_cap.as_ref().unwrap().largest_batch, 16);
    assert!(
        !rec.phases_cut.contains(&Phase::MaxFit),
        "{:?}",
        rec.partial_reason
    );
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.starts_with("left out: the max-fit search stopped at batch 16")),
        "{:?}",
        rec.rationale
    );
    // 100,000 samples: the stop left usable batches unexplored.
    let rec = stop(100_000);
    assert!(
        rec.phases_cut.contains(&Phase::MaxFit),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn a_max_fit_short_of_time_probes_up_to_the_batch_the_run_can_use() {
    // A 0.5-s real run caps the advice near batch 280 (32 updates at
    // t(B) = 10 ms + B / 50,000 samples/s); memory allows 82,000. Each
    // trial costs 0.5 s beyond its steps, so after the first probe (8)
    // the memory model's next one (tens of thousands) would overrun the
    // max-fit share. The search probes up to the cap instead of stopping
    // at 8, and leaves nothing usable out.
    let mut spec = spec("balanced", "[training]\ntime_budget = \"0.5s\"\n");
    spec.search.min_batch = 8;
    spec.search.time_budget = std::time::Duration::from_secs(30);
    let (rec, runner) = advise_on_simulated_time(FakeRunner::new(), &spec, 0.5);
    let cap = rec.evidence.batch_cap.clone().expect("a cap");
    let fit = &rec.memory.max_fit;
    let fit_trials: Vec<u64> = rec
        .evidence
        .trials
        .iter()
        .filter(|t| t.phase == Phase::MaxFit)
        .map(|t| t.batch_size)
        .collect();
    assert!(
        fit.batch_size.is_some_and(|b| b >= cap.largest_batch),
        "{fit:?} {cap:?} trials {fit_trials:?}"
    );
    assert!(fit.capped_by_usable, "{fit:?}");
    assert!(
        fit_trials.iter().all(|&b| b <= 2 * cap.largest_batch),
        "a probe far past the cap: {fit_trials:?} (cap {})",
        cap.largest_batch
    );
    assert!(
        !rec.phases_cut.contains(&Phase::MaxFit),
        "{:?}",
        rec.partial_reason
    );
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("the most the data and the real run let the advice use")),
        "{:?}",
        rec.rationale
    );
    // The race reached up to the cap's range, not only the first probe's.
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(
        race.entries.iter().any(|e| e.batch_size > 8),
        "{:?}",
        race.entries
    );
    assert!(runner
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|&b| b <= 2 * cap.largest_batch));
}

#[test]
fn a_seeds_luck_that_every_candidate_shares_does_not_make_a_tie() {
    // The same wobble as below, but each seed's shared by every candidate
    // (as in real races: the quick-start job's seeds moved every candidate
    // by 0.036 together). Seeds as blocks take it out: the race is decided
    // on the candidates' differences, which the fake makes clear.
    let mut runner = FakeRunner::new();
    runner.seed_noise = 0.3;
    let mut spec = spec("balanced", "[training]\ntime_budget = \"20s\"\n");
    spec.search.time_budget = std::time::Duration::from_secs(600);
    let (rec, _) = advise_on_simulated_time(runner, &spec, 0.2);
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(!race.within_noise, "{}", race.verdict);
    assert!(
        race.verdict.contains("after each seed's shared effect"),
        "{}",
        race.verdict
    );
    // The winner is the lowest mean; the seeds' shared luck is the same for
    // every candidate, so it is also the lowest on every seed.
    let winner = race
        .entries
        .iter()
        .find(|e| Some(e.batch_size) == race.winner)
        .unwrap();
    for other in &race.entries {
        for (w, o) in winner.runs.iter().zip(&other.runs) {
            assert_eq!(w.seed, o.seed);
            assert!(
                w.validation_loss <= o.validation_loss,
                "{}: {w:?} vs {o:?}",
                race.verdict
            );
        }
    }
}

#[test]
fn a_race_within_seed_noise_is_decided_by_the_rule_whatever_the_search_seed() {
    // Run-to-run wobble far above the loss differences between the
    // candidates: every race ties, and the runs' luck would pick the
    // lowest mean. The rule picks the candidate nearest the model's
    // preferred batch, the same one on every search seed.
    let mut winners = Vec::new();
    for seed in 1..=4 {
        let mut runner = FakeRunner::new();
        runner.run_noise = 0.4;
        let mut spec = spec("balanced", "[training]\ntime_budget = \"20s\"\n");
        spec.search.seed = seed;
        spec.search.time_budget = std::time::Duration::from_secs(600);
        let (rec, _) = advise_on_simulated_time(runner, &spec, 0.2);
        let race = rec.evidence.race.as_ref().unwrap();
        assert!(race.within_noise, "{}", race.verdict);
        assert_eq!(
            race.decided_by,
            Some(crate::policy::TieRule::NearestPreferred),
            "{}",
            race.verdict
        );
        assert!(
            rec.rationale
                .iter()
                .any(|l| l.contains("the tie rule decided")),
            "{:?}",
            rec.rationale
        );
        let preferred = race.preferred;
        let distance = |b: u64| (b as f64 / preferred as f64).ln().abs();
        let winner = race.winner.unwrap();
        assert!(
            race.entries
                .iter()
                .all(|e| distance(winner) <= distance(e.batch_size)),
            "{winner} is not the candidate nearest {preferred}: {}",
            race.verdict
        );
        winners.push(winner);
    }
    assert!(winners.windows(2).all(|w| w[0] == w[1]), "{winners:?}");
}

/// A search on simulated time whose runs wobble enough that the race ties
/// and whose norms wobble enough that the reference batch gives only a
/// lower bound on the fake's `noise_scale`.
fn tied_search_with_a_bound_at_the_reference(noise_scale: f64) -> (Recommendation, FakeRunner) {
    let mut runner = FakeRunner::new();
    runner.run_noise = 0.3;
    runner.grad_wobble = 0.6;
    runner.noise_scale = noise_scale;
    // 40 measurements per run (the policy has 400): few enough that the
    // reference's runs give only a bound, as on real jobs with short runs.
    let mut spec = spec(
        "balanced",
        "[training]\ntime_budget = \"20s\"\n[policy_overrides.trials]\nnoise_scale_measurements = 40\n",
    );
    spec.search.time_budget = std::time::Duration::from_secs(600);
    let (rec, runner) = advise_on_simulated_time(runner, &spec, 0.2);
    let noise = rec.evidence.gradient_noise.as_ref().unwrap();
    assert!(noise.is_lower_bound(), "{}", noise.describe());
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(race.within_noise, "{}", race.verdict);
    (rec, runner)
}

#[test]
fn a_noise_scale_the_race_resolves_decides_its_ties_where_the_reference_gave_a_bound() {
    // At the reference batch (168) the fake's |G|^2 is lost in the wobble
    // of the norms: only a lower bound. The race's candidates measure it at
    // larger batches, later in training, where it resolves; the model is
    // re-run with the best-resolved point, whose interval covers the
    // fake's true noise scale (2,000), and the tie goes to the candidate
    // nearest its choice.
    let (rec, _) = tied_search_with_a_bound_at_the_reference(2000.0);
    let race = rec.evidence.race.as_ref().unwrap();
    assert_eq!(
        race.decided_by,
        Some(crate::policy::TieRule::NearestPreferred)
    );
    let noise = race.tie_noise.as_ref().expect("the race resolved it");
    assert!(noise.is_decisive(), "{noise:?}");
    assert!(
        noise.low <= 2000.0 && noise.high.unwrap() >= 2000.0,
        "{}",
        noise.describe()
    );
    assert!(
        (noise.value / 2000.0 - 1.0).abs() < 0.3,
        "{}",
        noise.describe()
    );
    // The winner: the tied candidate nearest (in log scale) the re-run
    // model's choice.
    let winner = race.winner.unwrap();
    let distance = |b: u64| (b as f64 / race.preferred as f64).ln().abs();
    assert!(
        race.entries
            .iter()
            .all(|e| distance(winner) <= distance(e.batch_size)),
        "{}",
        race.verdict
    );
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.starts_with("the race resolved the noise scale")),
        "{:?}",
        rec.rationale
    );
    assert_eq!(rec.batch_size, winner);
    // The model's own pick among the raced, not an overrule.
    assert!(
        !rec.rationale.iter().any(|l| l.contains("overruled")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn with_only_a_lower_bound_on_the_noise_scale_a_tie_goes_to_the_fastest() {
    // Where neither the reference nor the race resolves the noise scale,
    // every candidate above the bound agrees with the model: the fastest
    // tied candidate wins.
    let (rec, runner) = tied_search_with_a_bound_at_the_reference(2_000_000.0);
    let race = rec.evidence.race.as_ref().unwrap();
    assert!(race.tie_noise.is_none(), "{:?}", race.tie_noise);
    assert_eq!(race.decided_by, Some(crate::policy::TieRule::Fastest));
    // The fake's speed rises with the batch: the largest tied candidate.
    let largest = race.entries.iter().map(|e| e.batch_size).max().unwrap();
    assert_eq!(race.winner, Some(largest), "{}", race.verdict);
    assert!(race.preferred < largest && runner.step_seconds(largest) > 0.0);
}

/// The balanced policy with a share for the batch ramp.
const RAMP_SHARES: &str = "[policy_overrides.budget_shares]\nmax_fit = 0.14\nthroughput = 0.08\n\
                           lr_range_test = 0.06\nlr_confirmation = 0.22\nrace = 0.34\n\
                           lr_check = 0.08\nramp = 0.08\n";

#[test]
fn a_noise_scale_that_grows_gets_a_ramp_that_is_raced_and_wins() {
    let mut runner = FakeRunner::new();
    runner.noise_scale = 100.0;
    runner.noise_growth = Some(1.0);
    // A fixed cost per step that larger batches amortize: doubling the
    // batch runs much faster here, so a growing noise scale makes the ramp
    // pay in wall-clock time.
    runner.c0 = 0.03;
    let spec = spec("balanced", RAMP_SHARES);
    let rec = advise_with(&runner, &spec, 4u64 << 30).unwrap();
    let ramp = rec
        .batch_schedule
        .as_ref()
        .expect("the policy gives the ramp a share");
    assert_eq!(
        ramp.outcome,
        crate::search::ramp::RampOutcome::Won,
        "{ramp:#?}"
    );
    assert!(ramp.recommended);
    // It starts at the recommended batch and grows from there.
    assert_eq!(ramp.phases[0].batch_size, rec.batch_size);
    assert!(ramp.phases.len() >= 2, "{:?}", ramp.phases);
    let growth = ramp.growth.unwrap();
    assert!(growth.exponent > 0.3, "{growth:?}");
    // Raced on the winner's seeds, each a ramp trial of the search.
    let race = rec.evidence.race.as_ref().unwrap();
    let winner = race
        .entries
        .iter()
        .find(|e| Some(e.batch_size) == race.winner)
        .unwrap();
    let seeds: Vec<u64> = ramp.runs.iter().map(|r| r.seed).collect();
    assert_eq!(
        seeds,
        winner.runs.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
    let ramp_trials = rec
        .evidence
        .trials
        .iter()
        .filter(|t| t.phase == Phase::Ramp)
        .count();
    assert_eq!(ramp_trials, seeds.len());
    assert!(ramp.gain.unwrap() > 0.0);
    assert!(
        rec.rationale
            .iter()
            .any(|r| r.starts_with("batch schedule: the ramp won")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn a_constant_noise_scale_gets_no_ramp_and_says_why() {
    let runner = FakeRunner::new();
    let rec = advise_with(&runner, &spec("balanced", RAMP_SHARES), 4u64 << 30).unwrap();
    let ramp = rec.batch_schedule.as_ref().unwrap();
    assert!(!ramp.recommended);
    assert!(
        matches!(
            ramp.outcome,
            crate::search::ramp::RampOutcome::NotDerived { .. }
        ),
        "{ramp:#?}"
    );
    assert!(ramp.runs.is_empty() && rec.evidence.trials.iter().all(|t| t.phase != Phase::Ramp));
    // Without a share (the built-in policies), nothing is tried or said.
    let rec = advise_with(&runner, &spec("balanced", ""), 4u64 << 30).unwrap();
    assert!(rec.batch_schedule.is_none());
}

#[test]
fn after_every_run_the_plan_follows_what_runs_cost() {
    // Training runs cost 5 s more than the throughput trials showed. The
    // plan before the confirmations, by counts of runs, gave them a share
    // two of their three did not fit (the phase was cut: PARTIAL). The
    // plan re-made after every run from what runs cost, by rank (the
    // leanest race, then the confirmations, then the rest), fits all three
    // and every race candidate's two seeds, taking the time from the
    // check and the extra seeds.
    for budget in [70, 90] {
        let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
        spec.search.time_budget = std::time::Duration::from_secs(budget);
        let (rec, _) = advise_on_simulated_runs(FakeRunner::new(), &spec, 0.05, 5.0);
        let confirmations = rec
            .evidence
            .trials
            .iter()
            .filter(|t| t.phase == Phase::LrConfirmation)
            .count();
        assert!(confirmations >= 3, "{:?}", rec.rationale);
        let race = rec.evidence.race.as_ref().unwrap();
        assert!(
            race.entries.len() >= 2 && race.entries.iter().all(|e| e.runs.len() >= 2),
            "{:?}",
            race.entries
        );
        assert!(
            !rec.phases_cut.contains(&Phase::LrConfirmation)
                && !rec.phases_cut.contains(&Phase::Race),
            "{budget} s: {:?}",
            rec.partial_reason
        );
        assert!(rec.seconds <= budget as f64 * 1.05, "{} s", rec.seconds);
    }
}

#[test]
fn a_validation_timed_before_the_plan_is_charged_to_every_run() {
    // Validation of the default held-out set takes 3 s per run whatever
    // its batch, as the transformer's 0.8 s did against 2.5-s runs. The
    // first ladder trial times it; the runs validate on a smaller set
    // (a quarter of the real run's 3 s: 256 samples, 0.75 s), and the
    // plan charges that to every run: no planned training run is cut,
    // and the search keeps its budget. (Before the set was sized, the
    // same budgets with the full 3 s charged per run also passed; charged
    // as a share of the stepping instead, the plan at 45 s chose
    // real-length runs that did not fit and cut a race seed.)
    for budget in [45, 60, 75, 90, 120] {
        let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
        spec.search.time_budget = std::time::Duration::from_secs(budget);
        let (rec, _, validated_on) =
            advise_on_timed_validating(FakeRunner::new(), &spec, 0.05, 0.0, 0.0, 3.0);
        // The ladder's timing validation on the default set, then every
        // training run on the same 256.
        assert_eq!(validated_on.first(), Some(&None), "{validated_on:?}");
        assert!(
            validated_on[1..].iter().all(|n| *n == Some(256)),
            "{validated_on:?}"
        );
        let ladder_validated = rec
            .evidence
            .trials
            .iter()
            .filter(|t| t.phase == Phase::Throughput && t.validation_loss.is_some())
            .count();
        assert_eq!(ladder_validated, 1, "{:?}", rec.evidence.trials);
        assert!(
            ![Phase::LrConfirmation, Phase::Race, Phase::LrCheck]
                .iter()
                .any(|p| rec.phases_cut.contains(p)),
            "{budget} s: {:?} {:?}",
            rec.partial_reason,
            rec.rationale
        );
        assert!(rec.seconds <= budget as f64 * 1.05, "{} s", rec.seconds);
        let race = rec.evidence.race.as_ref().unwrap();
        assert!(
            race.entries.len() >= 2 && race.entries.iter().all(|e| e.runs.len() >= 2),
            "{budget} s: {:?}",
            race.entries
        );
    }
}

#[test]
fn a_validation_dearer_than_the_run_it_judges_is_taken_on_fewer_samples() {
    // The default held-out set takes 4 s to validate; the real run trains
    // 2 s. Every training run validates on the same smaller set (a quarter
    // of 2 s at 4 s per 1,024 samples: 128, so the floor of 256), the
    // rationale says so, and the time saved buys real-length runs: with
    // the default set charged, 45 s afford only runs shorter than the
    // real one.
    let mut spec = spec("balanced", "[training]\ntime_budget = \"2s\"\n");
    spec.search.time_budget = std::time::Duration::from_secs(45);
    let (rec, _, validated_on) =
        advise_on_timed_validating(FakeRunner::new(), &spec, 0.05, 0.0, 0.0, 4.0);
    assert_eq!(validated_on.first(), Some(&None), "{validated_on:?}");
    assert!(validated_on.len() > 4, "{validated_on:?}");
    assert!(
        validated_on[1..].iter().all(|n| *n == Some(256)),
        "{validated_on:?}"
    );
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("validates on the same 256 held-out samples, not 1024")),
        "{:?}",
        rec.rationale
    );
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.starts_with("runs train as long as the real training run")),
        "{:?}",
        rec.rationale
    );
    assert!(rec.seconds <= 45.0 * 1.05, "{} s", rec.seconds);
    // A validation within its share is left alone.
    let (_, _, validated_on) =
        advise_on_timed_validating(FakeRunner::new(), &spec, 0.05, 0.0, 0.0, 0.4);
    assert!(validated_on.iter().all(Option::is_none), "{validated_on:?}");
}

#[test]
fn on_simulated_time_a_ramp_the_policy_asks_for_is_raced_within_the_budget() {
    // The ramp runs last, after the check; the plan keeps its runs ranked
    // above the check's and the extra seeds', so a derived ramp is raced
    // on every seed of the winner within the budget.
    for per_run in [0.5, 5.0] {
        let mut runner = FakeRunner::new();
        runner.noise_scale = 100.0;
        runner.noise_growth = Some(1.0);
        runner.c0 = 0.03;
        let mut spec = spec(
            "balanced",
            &format!("{RAMP_SHARES}[training]\ntime_budget = \"30s\"\n"),
        );
        spec.search.time_budget = std::time::Duration::from_secs(600);
        let (rec, _) = advise_on_simulated_runs(runner, &spec, 0.05, per_run);
        let ramp = rec.batch_schedule.as_ref().unwrap();
        assert_eq!(
            ramp.outcome,
            crate::search::ramp::RampOutcome::Won,
            "{:?}",
            rec.rationale
        );
        let race = rec.evidence.race.as_ref().unwrap();
        let winner = race
            .entries
            .iter()
            .find(|e| Some(e.batch_size) == race.winner)
            .unwrap();
        assert_eq!(ramp.runs.len(), winner.runs.len());
        assert!(rec.phases_cut.is_empty(), "{:?}", rec.partial_reason);
        assert!(rec.seconds <= 600.0 * 1.05, "{} s", rec.seconds);
    }
}

#[test]
fn the_data_cap_is_per_device_when_replicas_share_an_epoch() {
    // 4,000 samples: one device's cap is the training set over the
    // fewest updates per epoch; four replicas take four batches per
    // update, so each device's cap is a quarter of that.
    let cap = |world: u32| {
        let runner = FakeRunner::new();
        let rec = advise_with(
            &runner,
            &spec(
                "balanced",
                &format!("[training]\ndataset_size = 4000\nworld_size = {world}\n"),
            ),
            4 << 30,
        )
        .unwrap();
        let cap = rec.evidence.batch_cap.clone().unwrap();
        assert!(rec.batch_size <= cap.largest_batch, "{rec:?}");
        (cap, rec.schedule.updates_per_epoch.unwrap())
    };
    let (one, _) = cap(1);
    let (four, updates) = cap(4);
    assert!(one.largest_batch * one.min_updates_per_epoch <= 4000);
    assert!(
        four.largest_batch * 4 * four.min_updates_per_epoch <= 4000,
        "{four:?}"
    );
    assert!(
        four.largest_batch * 4 <= one.largest_batch + 4 * 8,
        "{one:?} {four:?}"
    );
    assert!(updates >= four.min_updates_per_epoch, "{updates}");
}

#[test]
fn equal_epoch_runs_spend_the_budget_at_the_batches_they_train() {
    // Small batches pay a fixed 10 ms a step, so an epoch at a quarter of
    // the reference batch costs several times one at the race's batches.
    // Priced as if every run trained there, and with a training run's
    // extra over a throughput trial guessed (here it is nothing), the
    // search spent a third of its budget; priced at the runs' batches and
    // re-sized from what the confirmations cost, the race trains longer
    // and the search spends most of the budget, and no more.
    let mut runner = FakeRunner::new();
    runner.train_samples = 20_000;
    let mut spec = spec("generalization", "[training]\nepochs = 20\n");
    spec.search.time_budget = std::time::Duration::from_secs(60);
    let (rec, _) = advise_on_timed(runner, &spec, 0.01, 0.0, 0.0, 0.0);
    let race = rec.evidence.race.as_ref().unwrap();
    let crate::search::race::RaceBudget::Epochs { epochs } = race.budget else {
        panic!("{:?}", race.budget);
    };
    assert!(
        rec.seconds >= 0.7 * 60.0 && rec.seconds <= 60.0,
        "{} s, {epochs} epochs: {:#?}",
        rec.seconds,
        rec.rationale
    );
    assert!(!rec.partial, "{:#?}", rec.rationale);
    // Every race run trains the same epochs, and more than the
    // confirmations, which were sized before any run had been timed.
    let confirmed = rec
        .evidence
        .trials
        .iter()
        .find(|t| t.phase == Phase::LrConfirmation)
        .map(|t| f64::from(t.steps) * t.batch_size as f64 / 20_000.0)
        .unwrap();
    for entry in &race.entries {
        let seen = f64::from(entry.steps) * entry.batch_size as f64 / 20_000.0;
        assert!(
            (seen - epochs).abs() <= entry.batch_size as f64 / 20_000.0 + 1e-9,
            "{entry:?} vs {epochs}"
        );
    }
    assert!(epochs > confirmed * 1.25, "{epochs} vs {confirmed}");
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.contains("afford") && l.contains("epochs per race and check run")),
        "{:#?}",
        rec.rationale
    );
}

#[test]
fn a_race_round_that_would_not_fit_whole_loses_its_worst_candidate_not_a_seed() {
    // Each training run costs more than the one before (0.3-0.6 s), so the
    // run the budget refuses is a round's last: before, a candidate a seed
    // short (a partial search) in each of these. The second round, checked
    // with the spread identical runs have shown, drops the candidate whose
    // first seed came out worst; later rounds end before they start.
    for (slowdown, budget, drops) in [
        (0.3, 55, true),
        (0.6, 70, true),
        (0.3, 100, false),
        (0.6, 100, false),
    ] {
        let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
        spec.search.time_budget = std::time::Duration::from_secs(budget);
        let (rec, _) = advise_on_slowing_runs(FakeRunner::new(), &spec, 0.05, 0.5, slowdown);
        let race = rec.evidence.race.as_ref().unwrap();
        assert!(
            !rec.phases_cut.contains(&Phase::Race),
            "{slowdown} {budget}: {:?}",
            rec.partial_reason
        );
        let seeds: Vec<usize> = race.entries.iter().map(|e| e.runs.len()).collect();
        assert!(
            race.entries.len() >= 2 && seeds.iter().all(|&n| n == seeds[0] && n >= 2),
            "{slowdown} {budget}: {seeds:?}"
        );
        assert_eq!(
            rec.rationale
                .iter()
                .any(|l| l.contains("left the race rather than a candidate running a seed short")),
            drops,
            "{slowdown} {budget}: {:#?}",
            rec.rationale
        );
        // The candidate that left had the worst first seed of the race.
        if drops {
            let raced: Vec<u64> = race.entries.iter().map(|e| e.batch_size).collect();
            let first_losses: Vec<(u64, f64)> = rec
                .evidence
                .trials
                .iter()
                .filter(|t| t.phase == Phase::Race)
                .fold(Vec::new(), |mut seen, t| {
                    if !seen.iter().any(|(b, _)| *b == t.batch_size) {
                        seen.push((t.batch_size, t.validation_loss.unwrap_or(f64::INFINITY)));
                    }
                    seen
                });
            let (left_out, worst) = first_losses
                .iter()
                .copied()
                .find(|(b, _)| !raced.contains(b))
                .expect("a dropped candidate");
            assert!(
                first_losses.iter().all(|(_, l)| *l <= worst),
                "{left_out} at {worst}: {first_losses:?}"
            );
        }
        assert!(rec.seconds <= budget as f64 * 1.05, "{} s", rec.seconds);
    }
}

#[test]
fn a_run_an_earlier_phase_made_is_reused_not_made_again() {
    // Runs at the real run's length (one length for every phase), a data
    // cap that puts the reference batch among the race's candidates, and
    // a best LR that is a tested one (its neighbour above diverges): the
    // race's first seed there is the confirmation run.
    let mut runner = FakeRunner::new();
    runner.train_samples = 1024;
    runner.diverges_above = Some(1.5);
    let spec = spec("balanced", "[training]\ntime_budget = \"0.1s\"\n");
    let rec = advise_with(&runner, &spec, 4u64 << 30).unwrap();
    let reference = rec.evidence.best_lrs.last().unwrap().clone();
    assert!(!reference.interpolated, "{reference:?}");
    let race = rec.evidence.race.as_ref().unwrap();
    let entry = race
        .entries
        .iter()
        .find(|e| e.batch_size == reference.batch_size)
        .unwrap_or_else(|| panic!("{reference:?} not raced: {race:?}"));
    let confirmation = rec
        .evidence
        .lr_confirmations
        .iter()
        .find(|c| c.batch_size == reference.batch_size && c.learning_rate == entry.learning_rate)
        .unwrap();
    assert_eq!(entry.runs[0].seed, spec.search.seed);
    assert_eq!(entry.runs[0].validation_loss, confirmation.validation_loss);
    let trained = runner.trained.lock().unwrap();
    let made = trained
        .iter()
        .filter(|k| k.batch() == entry.batch_size && k.seed() == spec.search.seed)
        .filter(|k| {
            k.lr()
                .is_some_and(|lr| (lr / entry.learning_rate - 1.0).abs() < 1e-9)
        })
        .count();
    assert_eq!(made, 1, "{trained:?}");
    assert!(
        rec.rationale.iter().any(|l| l.contains(&format!(
            "the race run at batch {} (LR {:.3e}, seed {}, same length and schedule) had been made in lr_confirmation: its result was reused",
            entry.batch_size, entry.learning_rate, spec.search.seed
        ))),
        "{:?}",
        rec.rationale
    );
    assert!(!rec.partial);
}

#[test]
fn no_training_run_is_made_twice() {
    for (policy, extra) in [
        ("balanced", ""),
        ("throughput", ""),
        ("generalization", ""),
        ("balanced", "[training]\ntime_budget = \"0.1s\"\n"),
        ("throughput", "[training]\ntime_budget = \"0.1s\"\n"),
    ] {
        let mut runner = FakeRunner::new();
        runner.train_samples = 1024;
        advise_with(&runner, &spec(policy, extra), 4u64 << 30).unwrap();
        let trained = runner.trained.lock().unwrap();
        assert!(trained.len() > 5, "{policy} {extra}: {}", trained.len());
        for (i, a) in trained.iter().enumerate() {
            assert!(
                !trained[..i].iter().any(|b| b.same(a)),
                "{policy} {extra}: run {i} made twice: {a:?}"
            );
        }
    }
}

#[test]
fn a_lower_bound_on_the_noise_scale_leaves_the_race_on_the_textbook_rule() {
    // A bound cannot place the knee where the best LR levels off: the
    // race's LRs follow the square-root rule from the reference's.
    let (rec, _) = tied_search_with_a_bound_at_the_reference(20_000.0);
    let pre = rec.evidence.preconditioned_noise.as_ref().unwrap();
    assert!(pre.is_lower_bound(), "{}", pre.describe());
    let race = rec.evidence.race.as_ref().unwrap();
    let first = &race.entries[0];
    for entry in &race.entries {
        let rule = first.learning_rate * (entry.batch_size as f64 / first.batch_size as f64).sqrt();
        assert!(
            (entry.learning_rate / rule - 1.0).abs() < 1e-9,
            "{:?}",
            race.entries
        );
    }
    assert!(
        rec.rationale
            .iter()
            .any(|l| l.starts_with("race over batches") && l.contains("the rule lr ~ B^0.5")),
        "{:?}",
        rec.rationale
    );
}

#[test]
fn a_refused_seed_of_a_candidate_already_beaten_leaves_the_search_whole() {
    // Two candidates, runs 0.6 s dearer each than the one before: the
    // second round's last run (the larger candidate's second seed) does
    // not fit. Where that candidate trails past the race's t-test
    // (validation loss 0.1 higher from batch 1000 on, seed spread 0.004),
    // the verdict stands without it and the search is whole; where the two
    // are within noise, the same refusal cuts the race short.
    let spec = || {
        let mut spec = spec(
            "balanced",
            "[training]\ntime_budget = \"3s\"\n[policy_overrides.race]\ncandidates = 2\n",
        );
        spec.search.time_budget = std::time::Duration::from_secs(49);
        spec
    };
    let behind = FakeRunner {
        worse_from: Some((1000, 0.1)),
        ..FakeRunner::new()
    };
    let (rec, _) = advise_on_slowing_runs(behind, &spec(), 0.05, 0.5, 0.6);
    let race = rec.evidence.race.as_ref().unwrap();
    let seeds: Vec<(u64, usize)> = race
        .entries
        .iter()
        .map(|e| (e.batch_size, e.runs.len()))
        .collect();
    assert_eq!(seeds, [(648, 2), (1288, 1)], "{:#?}", rec.rationale);
    assert_eq!(race.winner, Some(648));
    assert!(!race.within_noise, "{}", race.verdict);
    assert!(rec.phases_cut.is_empty(), "{:?}", rec.partial_reason);
    assert!(!rec.partial);
    assert!(
        rec.rationale.iter().any(|l| l.contains(
            "batch 1288 was not run with seed 1 (no time); it was already out of contention"
        )),
        "{:#?}",
        rec.rationale
    );
    let (rec, _) = advise_on_slowing_runs(FakeRunner::new(), &spec(), 0.05, 0.5, 0.6);
    assert!(
        rec.phases_cut.contains(&Phase::Race),
        "{:#?}",
        rec.rationale
    );
    assert!(rec
        .partial_reason
        .as_ref()
        .unwrap()
        .contains("batch 1288 ran fewer seeds than planned"));
}

#[test]
fn a_refused_confirmation_past_a_clear_rise_leaves_the_search_whole() {
    // Runs 1.5 s dearer than the throughput trials showed, a 33-s search:
    // after two confirmations the third planned one (above the centre)
    // does not fit beside the leanest race. The range test points 24x
    // too high, so the LR below the centre is the best and the centre's
    // loss rose 0.056 above it, far past the race's seed noise: the
    // refused LR lies past that rise, the best stands, and the search is
    // whole, the refusal named under "left out".
    let spec = || {
        let mut spec = spec("balanced", "[training]\ntime_budget = \"3s\"\n");
        spec.search.time_budget = std::time::Duration::from_secs(33);
        spec
    };
    let settled = FakeRunner {
        sweep_bottom: 24.0,
        ..FakeRunner::new()
    };
    let (rec, _) = advise_on_simulated_runs(settled, &spec(), 0.05, 1.5);
    let reference: Vec<&crate::search::lr::Confirmation> = rec
        .evidence
        .lr_confirmations
        .iter()
        .filter(|c| c.batch_size == 64)
        .collect();
    assert_eq!(reference.len(), 2, "{:#?}", rec.rationale);
    assert!(rec.phases_cut.is_empty(), "{:?}", rec.partial_reason);
    assert!(!rec.partial);
    let line = rec
        .rationale
        .iter()
        .find(|l| l.contains("could not have been the best"))
        .unwrap_or_else(|| panic!("{:#?}", rec.rationale));
    assert!(
        line.starts_with(
            "left out: LR 6.35e-3 at batch 64 was not confirmed (no time); it lies past LR 2.01e-3"
        ),
        "{line}"
    );
    // The range test at 10x: the centre is the best, and the refused LR
    // above it is its neighbour, which no run ruled out: partial, as
    // before.
    let adjacent = FakeRunner {
        sweep_bottom: 10.0,
        ..FakeRunner::new()
    };
    let (rec, _) = advise_on_simulated_runs(adjacent, &spec(), 0.05, 1.5);
    assert_eq!(
        rec.phases_cut,
        [Phase::LrConfirmation],
        "{:#?}",
        rec.rationale
    );
    assert!(rec.partial_reason.as_ref().unwrap().contains(
        "lr_confirmation cut short by the time budget: LR 2.75e-3 at batch 64 was not confirmed"
    ));
}
