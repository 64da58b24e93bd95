//! Search and advice: the largest fitting batch, the throughput curve, the
//! gradient noise scale and the LR pairing, turned into a recommendation.
//!
//! Written as pure logic over the [`TrialRunner`] trait: unit tests drive it
//! with fake runners, the daemon and the CLI with real worker processes.

pub mod lr;
pub mod maxfit;
pub mod noise;
pub mod recommend;
pub mod throughput;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy::LrScaling;
use crate::spec::{JobSpec, OptimizerSpec, Precision};
use crate::trial::{
    GradNoiseRequest, LrSchedule, Outcome, TrialDevice, TrialRequest, TrialResult, TrialRunner,
};
use lr::{analyze_range_test, best_lr, fit_alpha, BestLr, Confirmation, LrRule, RangeTest};
use maxfit::{prior_bytes_per_sample, MaxFitSearch, Next, Probe};
use noise::{noise_scale, NoiseScale};
use recommend::{choose_batch, expected_speed, goodput_curve, precision_advice};
pub use recommend::{Phase, Recommendation, TrialRecord};
use throughput::{ladder, plateau, CurvePoint};

/// Where and within what the search runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchContext {
    pub device: TrialDevice,
    /// Memory the trials may use before the policy's headroom.
    pub memory_limit_bytes: u64,
    /// Where that limit came from, for the report.
    pub memory_limit_source: String,
}

/// A progress report while the search runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    pub trials_done: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the job cannot be trialled: {0}")]
    InvalidRequest(String),
    #[error("not even a batch of {min_batch} fits in {budget} bytes: {reason}")]
    NothingFits {
        min_batch: u64,
        budget: u64,
        reason: String,
    },
}

/// Most points on the throughput ladder.
const LADDER_POINTS: usize = 7;
/// A phase may plan trials taking at most this share of the time left.
const PHASE_SHARE: f64 = 0.25;

/// A small LR that will not diverge, for trials that only measure memory
/// and speed.
fn probe_lr(spec: &JobSpec) -> f64 {
    match spec.optimizer {
        OptimizerSpec::Sgd { .. } => 1e-3,
        _ => 1e-4,
    }
}

/// The textbook exponent of lr ~ B^alpha for the optimizer.
fn textbook_alpha(spec: &JobSpec) -> f64 {
    match spec.optimizer {
        OptimizerSpec::Sgd { .. } => 1.0,
        _ => 0.5,
    }
}

struct Session<'a, R: TrialRunner> {
    spec: &'a JobSpec,
    ctx: &'a SearchContext,
    runner: &'a R,
    budget_bytes: u64,
    started: Instant,
    records: Vec<TrialRecord>,
    partial: Option<String>,
    on_progress: &'a (dyn Fn(&Progress) + Send + Sync),
    train_samples: Option<u64>,
}

impl<R: TrialRunner> Session<'_, R> {
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn time_left(&self) -> Duration {
        self.spec.search.time_budget.saturating_sub(self.elapsed())
    }

    /// True (and the search marked partial) once the budget is spent.
    fn out_of_time(&mut self, next: &str) -> bool {
        if self.time_left().is_zero() {
            if self.partial.is_none() {
                self.partial = Some(format!(
                    "the time budget of {} ran out before {next}",
                    crate::units::format_duration(self.spec.search.time_budget)
                ));
            }
            true
        } else {
            false
        }
    }

    fn request(&self, batch: u64, steps: u32, schedule: LrSchedule) -> TrialRequest {
        let mut request = TrialRequest::new(
            self.spec.clone(),
            self.ctx.device,
            batch,
            steps,
            probe_lr(self.spec),
        );
        request.schedule = schedule;
        request.warmup_steps = self
            .spec
            .policy
            .trials
            .warmup_steps
            .min(steps.saturating_sub(1));
        request.memory_limit_bytes = Some(self.budget_bytes);
        // Never run past the search's own budget.
        request.deadline = self
            .spec
            .policy
            .trials
            .deadline
            .min(self.time_left().max(Duration::from_secs(1)));
        request
    }

    async fn trial(&mut self, phase: Phase, request: TrialRequest) -> TrialResult {
        (self.on_progress)(&Progress {
            phase,
            trials_done: self.records.len(),
            message: format!("{} trial at batch {}", phase.as_str(), request.batch_size),
        });
        let (lr, lr_start) = match request.schedule {
            LrSchedule::Constant { lr } | LrSchedule::Warmup { lr, .. } => (lr, None),
            LrSchedule::ExponentialSweep { min_lr, max_lr } => (max_lr, Some(min_lr)),
        };
        let batch = request.batch_size;
        let steps = request.steps;
        let result = self.runner.run(request).await;
        if self.train_samples.is_none() {
            self.train_samples = result.train_samples;
        }
        if result.outcome == Outcome::Timeout && self.time_left().is_zero() {
            self.partial
                .get_or_insert_with(|| "the time budget ran out during a trial".into());
        }
        self.records.push(TrialRecord {
            phase,
            batch_size: batch,
            learning_rate: Some(lr),
            learning_rate_start: lr_start,
            steps,
            outcome: result.outcome,
            reason: result.reason.clone(),
            peak_memory_bytes: result.peak_memory_bytes,
            samples_per_second: result.samples_per_second,
            validation_loss: result.validation_loss,
            seconds: result.wall_seconds,
        });
        (self.on_progress)(&Progress {
            phase,
            trials_done: self.records.len(),
            message: format!("batch {batch}: {}", result.outcome),
        });
        result
    }

    /// Seconds a trial of `steps` at `batch` should take, from the curve.
    fn estimate_seconds(&self, curve: &[CurvePoint], batch: u64, steps: u32) -> f64 {
        throughput::interpolate(curve, batch)
            .map(|speed| batch as f64 * f64::from(steps) / speed + 1.0)
            .unwrap_or(f64::INFINITY)
    }
}

/// Runs the whole search for `spec` and returns the recommendation.
pub async fn advise<R: TrialRunner>(
    spec: &JobSpec,
    ctx: &SearchContext,
    runner: &R,
    on_progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Recommendation, SearchError> {
    let policy = &spec.policy;
    let budget_bytes =
        (ctx.memory_limit_bytes as f64 * (1.0 - policy.memory_headroom_fraction)) as u64;
    let mut session = Session {
        spec,
        ctx,
        runner,
        budget_bytes,
        started: Instant::now(),
        records: Vec::new(),
        partial: None,
        on_progress,
        train_samples: None,
    };
    let mut rationale = Vec::new();

    // 1. The largest batch that fits.
    let element_bytes = match (ctx.device, spec.precision) {
        (TrialDevice::Cuda(_), Precision::F16 | Precision::Bf16) => 2.0,
        _ => 4.0,
    };
    let mut search = MaxFitSearch::new(
        spec.search.min_batch,
        spec.search.max_batch,
        policy.batch_multiple,
        budget_bytes,
        prior_bytes_per_sample(spec, element_bytes),
    );
    let mut fit_results: Vec<TrialResult> = Vec::new();
    while let Next::Try(batch) = search.next_step() {
        if session.out_of_time("the largest fitting batch was found")
            && search.result().batch_size.is_some()
        {
            break;
        }
        let steps = policy.trials.fit_steps;
        let mut attempt = 0;
        let (result, probe) = loop {
            attempt += 1;
            let mut request =
                session.request(batch, steps, LrSchedule::Constant { lr: probe_lr(spec) });
            request.warmup_steps = 1;
            let result = session.trial(Phase::MaxFit, request).await;
            if result.outcome == Outcome::InvalidRequest {
                return Err(SearchError::InvalidRequest(
                    result.reason.unwrap_or_default(),
                ));
            }
            let probe = if result.outcome == Outcome::Ok {
                Probe::Fits {
                    peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                }
            } else if result.outcome == Outcome::OutOfMemory {
                Probe::OutOfMemory {
                    reason: format!(
                        "{}: {}",
                        result.outcome,
                        result.reason.clone().unwrap_or_default()
                    ),
                    peak_bytes: result.peak_memory_bytes.unwrap_or(0),
                }
            } else {
                Probe::Fails {
                    reason: format!(
                        "{}: {}",
                        result.outcome,
                        result.reason.clone().unwrap_or_default()
                    ),
                    out_of_memory: result.outcome == Outcome::OutOfMemory,
                }
            };
            // A crash or timeout may be a fluke: run the same batch once more.
            if attempt == 1 && search.should_retry(batch, &probe) && !session.out_of_time("a retry")
            {
                continue;
            }
            break (result, probe);
        };
        search.record(batch, probe);
        fit_results.push(result);
    }
    let max_fit = search.result();
    let Some(max_fit_batch) = max_fit.batch_size else {
        return Err(SearchError::NothingFits {
            min_batch: spec.search.min_batch,
            budget: budget_bytes,
            reason: max_fit
                .first_failure
                .as_ref()
                .map(|(b, r)| format!("batch {b}: {r}"))
                .unwrap_or_default(),
        });
    };
    rationale.push(match &max_fit.first_failure {
        Some((fail, why)) => format!(
            "largest batch that fits: {max_fit_batch} (peak {}) under a budget of {} ({} limit from {} less {:.0}% headroom); {fail} failed ({why}); {} trials",
            crate::units::ByteSize(max_fit.peak_bytes.unwrap_or(0)),
            crate::units::ByteSize(budget_bytes),
            crate::units::ByteSize(ctx.memory_limit_bytes),
            ctx.memory_limit_source,
            policy.memory_headroom_fraction * 100.0,
            max_fit.trials
        ),
        None if max_fit.capped_by_max_batch => format!(
            "largest batch that fits: {max_fit_batch}, the spec's search.max_batch (peak {} of a {} budget)",
            crate::units::ByteSize(max_fit.peak_bytes.unwrap_or(0)),
            crate::units::ByteSize(budget_bytes)
        ),
        None => format!(
            "largest batch that fits: {max_fit_batch} (the search ended before a larger batch failed); {} trials",
            max_fit.trials
        ),
    });
    if !max_fit.flaky_batch_sizes.is_empty() {
        rationale.push(format!(
            "batch sizes {:?} fitted once and failed on a re-run, so they were not trusted",
            max_fit.flaky_batch_sizes
        ));
    }

    // 2. The throughput curve.
    let mut curve: Vec<CurvePoint> = Vec::new();
    for batch in ladder(
        max_fit_batch,
        spec.search.min_batch,
        policy.batch_multiple,
        LADDER_POINTS,
    ) {
        let reusable = fit_results.iter().rev().find(|r| {
            r.batch_size == batch
                && r.is_ok()
                && r.samples_per_second.is_some()
                && r.steps_completed >= 4
        });
        if let Some(result) = reusable {
            curve.push(CurvePoint {
                batch_size: batch,
                samples_per_second: result.samples_per_second.unwrap_or(0.0),
                source: "max_fit".into(),
            });
            continue;
        }
        if session.out_of_time("the throughput curve was complete") {
            break;
        }
        let steps = policy.trials.throughput_steps;
        if !curve.is_empty() {
            let estimate = session.estimate_seconds(&curve, batch, steps);
            if estimate > session.time_left().as_secs_f64() * PHASE_SHARE {
                session
                    .partial
                    .get_or_insert_with(|| format!("batch {batch} was left off the throughput curve to stay in the time budget"));
                continue;
            }
        }
        let result = session
            .trial(
                Phase::Throughput,
                session.request(batch, steps, LrSchedule::Constant { lr: probe_lr(spec) }),
            )
            .await;
        if let (true, Some(speed)) = (result.is_ok(), result.samples_per_second) {
            curve.push(CurvePoint {
                batch_size: batch,
                samples_per_second: speed,
                source: "ladder".into(),
            });
        }
    }
    curve.sort_by_key(|p| p.batch_size);
    let plateau_batch = plateau(&curve, policy.throughput_gain_threshold);
    if let Some(p) = plateau_batch {
        rationale.push(format!(
            "throughput stops improving by {:.0}% per doubling past batch {p} ({:.0} samples/s)",
            policy.throughput_gain_threshold * 100.0,
            expected_speed(&curve, p).unwrap_or(0.0)
        ));
    }

    // 3. An LR range test at a reference batch the time budget allows.
    let sweep_steps = policy.lr_search.sweep_steps;
    let reference_batch = curve
        .iter()
        .filter(|p| p.batch_size <= plateau_batch.unwrap_or(max_fit_batch))
        .filter(|p| {
            session.estimate_seconds(&curve, p.batch_size, sweep_steps)
                <= session.time_left().as_secs_f64() * PHASE_SHARE * 0.5
        })
        .map(|p| p.batch_size)
        .max()
        .or_else(|| curve.first().map(|p| p.batch_size))
        .unwrap_or(max_fit_batch);
    let mut range_tests: Vec<RangeTest> = Vec::new();
    let range_test = run_range_test(&mut session, reference_batch).await;
    if let Some(test) = &range_test {
        rationale.push(format!(
            "LR range test at batch {reference_batch}: smoothed loss lowest at {:.2e}, suggestion {:.2e} (a tenth of it)",
            test.min_loss_lr, test.suggestion
        ));
        range_tests.push(test.clone());
    }
    let reference_lr = range_test
        .as_ref()
        .map(|t| t.suggestion)
        .unwrap_or_else(|| probe_lr(spec) * 10.0);
    // Confirmation runs bracket the span between the conservative suggestion
    // and the loss minimum: centred on their geometric mean.
    let reference_center = range_test
        .as_ref()
        .map(|t| (t.suggestion * t.min_loss_lr).sqrt())
        .unwrap_or(reference_lr);

    // 4. The gradient noise scale at the reference batch.
    let noise = measure_noise(&mut session, reference_batch, reference_lr).await;
    match &noise {
        Some(n) => rationale.push(format!(
            "gradient noise scale B_simple = {:.0} +- {:.0} samples (McCandlish et al. 2018; {} measurements at batches {} and {}); it is measured early in training and usually grows as the loss falls",
            n.value, n.stderr, n.measurements, n.big_batch, n.small_batch
        )),
        None => rationale.push("the gradient noise scale could not be measured (too little time, or a signal lost in noise)".into()),
    }

    // 5. The batch under the policy.
    let world = spec.training.world_size.max(1);
    let (batch, why) = choose_batch(
        policy,
        &curve,
        noise.as_ref(),
        max_fit_batch,
        spec.search.min_batch,
        world,
    );
    rationale.push(why);

    // 6. The best LR at that batch, and at a second one for the rule.
    let textbook = textbook_alpha(spec);
    let mut confirmations: Vec<Confirmation> = Vec::new();
    let mut best_lrs: Vec<BestLr> = Vec::new();
    let ratio = batch as f64 / reference_batch as f64;
    let suggestion_at_batch = if ratio.log2().abs() <= 1.0 {
        Some(reference_center * ratio.powf(textbook))
    } else {
        match run_range_test(&mut session, batch).await {
            Some(test) => {
                let center = (test.suggestion * test.min_loss_lr).sqrt();
                range_tests.push(test);
                Some(center)
            }
            None => Some(reference_center * ratio.powf(textbook)),
        }
    };
    let steps = policy.lr_search.confirmation_steps;
    if let Some(center) = suggestion_at_batch {
        if let Some(best) = confirm(&mut session, batch, center, steps, &mut confirmations).await {
            best_lrs.push(best);
        }
    }
    let second = second_batch(batch, reference_batch, spec.search.min_batch, max_fit_batch);
    if let (Some(best), Some(second)) = (best_lrs.first().cloned(), second) {
        let second_steps = ((f64::from(steps) * batch as f64 / second as f64) as u32)
            .clamp(steps / 4 + 1, steps * 4);
        let center = best.learning_rate * (second as f64 / batch as f64).powf(textbook);
        if let Some(best2) = confirm(
            &mut session,
            second,
            center,
            second_steps,
            &mut confirmations,
        )
        .await
        {
            best_lrs.push(best2);
        }
    }
    let measured_alpha = match best_lrs.as_slice() {
        [a, b, ..] => fit_alpha(a, b),
        _ => None,
    };
    if let Some(alpha) = measured_alpha {
        if policy.lr_scaling == LrScaling::Measured && !lr::PLAUSIBLE_ALPHA.contains(&alpha) {
            rationale.push(format!(
                "the measured LR exponent {alpha:.2} lies outside the plausible {:.1}..{:.1} (short confirmation runs are noisy), so the textbook exponent {textbook} is used",
                lr::PLAUSIBLE_ALPHA.start(),
                lr::PLAUSIBLE_ALPHA.end()
            ));
        }
    }
    let lr_rule = best_lrs.first().map(|best| {
        let alpha = match policy.lr_scaling {
            LrScaling::Linear => 1.0,
            LrScaling::Sqrt => 0.5,
            LrScaling::Measured => measured_alpha
                .filter(|a| lr::PLAUSIBLE_ALPHA.contains(a))
                .unwrap_or(textbook),
        };
        LrRule {
            kind: policy.lr_scaling,
            reference_batch: best.batch_size,
            reference_lr: best.learning_rate,
            alpha,
            measured_alpha,
            textbook_alpha: textbook,
        }
    });

    // 7. Accumulation, global batch and the LR that goes with it.
    let global = batch * u64::from(world);
    let (accumulation, effective) = match spec.training.target_batch_size {
        Some(target) if target > global => {
            let wanted = target.div_ceil(global);
            let steps = wanted.min(u64::from(policy.max_accumulation_steps)).max(1);
            if steps < wanted {
                rationale.push(format!(
                    "reaching the target batch of {target} needs {wanted} accumulation steps; the policy allows {}, so the effective batch is {}",
                    policy.max_accumulation_steps,
                    global * steps
                ));
            } else {
                rationale.push(format!(
                    "{steps} gradient-accumulation steps reach the target batch of {target} ({} per optimizer step); accumulation adds no samples per second, only a larger effective batch",
                    global * steps
                ));
            }
            (steps as u32, global * steps)
        }
        _ => (1, global),
    };
    let learning_rate = lr_rule.as_ref().map(|rule| rule.lr_at(effective));
    if let (Some(rule), Some(lr)) = (&lr_rule, learning_rate) {
        rationale.push(format!(
            "learning rate {lr:.3e} for the effective batch {effective}: best validation loss at batch {} was at {:.3e}; scaled with lr ~ B^{:.2} ({}; measured alpha {}, textbook {})",
            rule.reference_batch,
            rule.reference_lr,
            rule.alpha,
            crate::policy::serde_plain(&rule.kind),
            rule.measured_alpha.map_or("n/a".to_string(), |a| format!("{a:.2}")),
            rule.textbook_alpha
        ));
    }
    let dataset_size = spec.training.dataset_size.or(session.train_samples);
    let updates_per_epoch = dataset_size.map(|n| n.div_ceil(effective).max(1));
    let total_updates = updates_per_epoch.map(|u| (u as f64 * spec.training.epochs).ceil() as u64);
    let warmup_steps =
        total_updates.map(|t| (t as f64 * policy.lr_search.warmup_fraction).ceil() as u64);

    // Expectations: measured where the batch was tested, else modelled.
    let measured_peak = session
        .records
        .iter()
        .filter(|r| r.batch_size == batch && r.outcome == Outcome::Ok)
        .filter_map(|r| r.peak_memory_bytes)
        .max();
    let expected_peak = measured_peak.or_else(|| {
        max_fit
            .memory_model
            .map(|m| m.predict(batch).max(0.0) as u64)
    });
    let expected_speed = expected_speed(&curve, batch).map(|s| s * f64::from(world));
    let measured_precision = match ctx.device {
        TrialDevice::Cpu => "f32".to_string(),
        TrialDevice::Cuda(_) => crate::policy::serde_plain(&spec.precision),
    };
    let precision = precision_advice(
        matches!(ctx.device, TrialDevice::Cuda(_)),
        &crate::policy::serde_plain(&spec.precision),
        &measured_precision,
    );
    if world > 1 {
        rationale.push(format!(
            "data-parallel over {world} replicas: {batch} per device, {global} globally; memory is per device, throughput assumes linear scaling"
        ));
    }
    let goodput = noise
        .as_ref()
        .map(|n| goodput_curve(&curve, n.value, world))
        .unwrap_or_default();

    Ok(Recommendation {
        job: spec.name.clone(),
        policy: spec.policy_name.clone(),
        objective: policy.objective,
        device: ctx.device.to_string(),
        batchd_version: env!("CARGO_PKG_VERSION").to_string(),
        batch_size: batch,
        world_size: world,
        global_batch_size: global,
        gradient_accumulation_steps: accumulation,
        effective_batch_size: effective,
        learning_rate,
        lr_rule,
        warmup_steps,
        updates_per_epoch,
        total_updates,
        dataset_size,
        max_fit_batch_size: max_fit_batch,
        max_fit,
        memory_limit_bytes: ctx.memory_limit_bytes,
        memory_limit_source: ctx.memory_limit_source.clone(),
        memory_budget_bytes: budget_bytes,
        memory_headroom_fraction: policy.memory_headroom_fraction,
        expected_peak_memory_bytes: expected_peak,
        expected_samples_per_second: expected_speed,
        throughput_curve: curve,
        throughput_plateau_batch_size: plateau_batch,
        gradient_noise_scale: noise.as_ref().map(|n| n.value),
        gradient_noise: noise,
        goodput_curve: goodput,
        lr_range_tests: range_tests,
        lr_confirmations: confirmations,
        best_lrs,
        precision,
        rationale,
        partial: session.partial.is_some(),
        partial_reason: session.partial.clone(),
        trial_count: session.records.len(),
        trials: session.records,
        seconds: session.started.elapsed().as_secs_f64(),
    })
}

async fn run_range_test<R: TrialRunner>(
    session: &mut Session<'_, R>,
    batch: u64,
) -> Option<RangeTest> {
    if session.out_of_time("the LR range test") {
        return None;
    }
    let lr = &session.spec.policy.lr_search;
    let schedule = LrSchedule::ExponentialSweep {
        min_lr: lr.min_lr,
        max_lr: lr.max_lr,
    };
    let mut request = session.request(batch, lr.sweep_steps, schedule);
    request.warmup_steps = 1;
    let result = session.trial(Phase::LrRangeTest, request).await;
    if !matches!(result.outcome, Outcome::Ok | Outcome::Diverged) {
        return None;
    }
    analyze_range_test(batch, &result.learning_rates, &result.losses)
}

async fn measure_noise<R: TrialRunner>(
    session: &mut Session<'_, R>,
    batch: u64,
    lr: f64,
) -> Option<NoiseScale> {
    if batch < 2 || session.out_of_time("the gradient noise scale") {
        return None;
    }
    let groups = session.spec.policy.trials.noise_scale_measurements;
    let measurements = groups * 4;
    let small = (batch / 8).max(1);
    let warmup = 10;
    let mut request = session.request(
        batch,
        warmup + measurements,
        LrSchedule::Warmup {
            lr,
            warmup_steps: warmup / 2,
        },
    );
    request.warmup_steps = warmup / 2;
    request.record.grad_noise = Some(GradNoiseRequest {
        small_batch: small,
        measurements,
    });
    let result = session.trial(Phase::NoiseScale, request).await;
    let sample = result.grad_noise?;
    noise_scale(&[sample], groups as usize)
}

/// Factors around a suggestion for `n` confirmation candidates.
fn candidate_factors(n: u32) -> Vec<f64> {
    let n = n.max(1) as i32;
    let half = (n - 1) / 2;
    (-half..=(n - 1 - half)).map(|k| 3f64.powi(k)).collect()
}

/// Extra candidates, at most, when the best keeps sitting at an edge.
const MAX_EXTENSIONS: usize = 3;

/// Short runs at candidate LRs, judged on validation loss; more candidates
/// further out while the best sits at an edge.
async fn confirm<R: TrialRunner>(
    session: &mut Session<'_, R>,
    batch: u64,
    center: f64,
    steps: u32,
    confirmations: &mut Vec<Confirmation>,
) -> Option<BestLr> {
    let factors = candidate_factors(session.spec.policy.lr_search.confirmation_candidates);
    let mut runs: Vec<Confirmation> = Vec::new();
    let mut lrs: Vec<f64> = factors.iter().map(|f| center * f).collect();
    let mut extensions = 0;
    let mut index = 0;
    while index < lrs.len() {
        let lr = lrs[index];
        index += 1;
        if session.out_of_time("the LR confirmation runs") {
            break;
        }
        let mut request = session.request(
            batch,
            steps,
            LrSchedule::Warmup {
                lr,
                warmup_steps: (steps / 10).max(1),
            },
        );
        request.warmup_steps = 1;
        request.record.validation_loss = true;
        let result = session.trial(Phase::LrConfirmation, request).await;
        runs.push(Confirmation {
            batch_size: batch,
            learning_rate: lr,
            validation_loss: if result.is_ok() {
                result.validation_loss
            } else {
                None
            },
            outcome: result.outcome.to_string(),
            losses: result.losses.clone(),
        });
        if index == lrs.len() && extensions < MAX_EXTENSIONS {
            // The best at the lowest or highest candidate: look further out.
            if let Some(best) = best_lr(&runs) {
                let min = lrs.iter().cloned().fold(f64::MAX, f64::min);
                let max = lrs.iter().cloned().fold(0.0, f64::max);
                if best.best_tested_lr == min {
                    lrs.push(min / 3.0);
                    extensions += 1;
                } else if best.best_tested_lr == max {
                    lrs.push(max * 3.0);
                    extensions += 1;
                }
            }
        }
    }
    confirmations.extend(runs.iter().cloned());
    best_lr(&runs)
}

/// A second batch size for the LR rule: the reference batch when it is far
/// enough away, else a quarter (or four times) the chosen one.
fn second_batch(batch: u64, reference: u64, min_batch: u64, max_fit: u64) -> Option<u64> {
    let ratio = batch.max(reference) as f64 / batch.min(reference).max(1) as f64;
    if ratio >= 2.0 {
        return Some(reference);
    }
    let quarter = batch / 4;
    if quarter >= min_batch.max(2) {
        Some(quarter)
    } else if batch * 4 <= max_fit {
        Some(batch * 4)
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests;
