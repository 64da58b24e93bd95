//! The training loop of a trial, generic over Burn backends. Runs only in a
//! worker process.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};

use crate::spec::OptimizerSpec;

use super::cuda::ContextProbe;
use super::data::{Dataset, SplitMix64};
use super::models::{forward_flops_per_sample, DeviceBatch, HostMasks, Model};
use crate::trial::divergence::DivergenceWatch;
use crate::trial::{Fault, GradNoiseSample, Outcome, TrialDevice, TrialRequest, WorkerReport};

/// Receives per-step progress from the loop.
pub trait ProgressSink {
    fn step(&mut self, step: u32, loss: f64, lr: f64);
}

/// What the loop needs besides the backend.
pub struct TrialContext<'a> {
    pub request: &'a TrialRequest,
    pub data: &'a Dataset,
    pub sink: &'a mut dyn ProgressSink,
    /// The CUDA context probe, for free-memory sampling (CUDA only).
    pub cuda: Option<&'a ContextProbe>,
    /// When the worker process started, for the start-up cost.
    pub process_start: Instant,
}

/// Samples per validation forward pass. Which samples a validation takes
/// is fixed (one seeded draw), so every LR candidate is judged on the same
/// ones; the request says how many.
const VALIDATION_BATCH: usize = 256;

/// Mixed into the trial's seed for its dropout masks, so they are not the
/// data order's stream.
const DROPOUT_STREAM: u64 = 0xD0_0D;

/// Smallest Adam epsilon that survives half precision: 1e-8 rounds to zero
/// in f16, and a zero epsilon turns the first update into 0/0.
const F16_MIN_EPSILON: f64 = 1e-4;

/// Runs the trial on backend `B`, filling `report`.
pub fn run<B: AutodiffBackend>(
    device: B::Device,
    ctx: TrialContext<'_>,
    report: &mut WorkerReport,
) {
    let spec = &ctx.request.spec;
    let Some(model_spec) = spec.model() else {
        report.outcome = Some(Outcome::InvalidRequest);
        report.reason = Some("the Burn engine got a command job".into());
        return;
    };
    let half = report.precision == Some(crate::spec::Precision::F16);
    let input_size = match ctx.data {
        Dataset::Classification(d) => d.sample_len,
        Dataset::Sequences(d) => d.context_length,
    };
    B::seed(&device, ctx.request.seed);
    let host_masks = (ctx.request.device == TrialDevice::Cpu)
        .then(|| HostMasks::new(ctx.request.seed ^ DROPOUT_STREAM));
    let model = Model::<B>::new(model_spec, input_size, host_masks, &device);
    report.parameter_count = model.num_params() as u64;
    report.train_flops_per_sample = 3.0 * forward_flops_per_sample(model_spec, input_size);
    match &spec.optimizer {
        OptimizerSpec::Sgd {
            momentum,
            nesterov,
            weight_decay,
            grad_clip_norm,
        } => {
            let mut config = SgdConfig::new();
            if *momentum > 0.0 {
                config = config.with_momentum(Some(
                    MomentumConfig::new()
                        .with_momentum(*momentum)
                        .with_dampening(0.0)
                        .with_nesterov(*nesterov),
                ));
            }
            if *weight_decay > 0.0 {
                config =
                    config.with_weight_decay(Some(WeightDecayConfig::new(*weight_decay as f32)));
            }
            config = config.with_gradient_clipping(norm_clip(*grad_clip_norm));
            train(
                model,
                config.init::<B, Model<B>>(),
                None,
                &device,
                ctx,
                report,
            );
        }
        // Adam and AdamW are distinct Burn types, so one arm each.
        OptimizerSpec::Adam(adam) => {
            let decay = adam.weight_decay as f32;
            let epsilon = half_safe_epsilon(adam.epsilon, half, report);
            let config = AdamConfig::new()
                .with_beta_1(adam.beta1 as f32)
                .with_beta_2(adam.beta2 as f32)
                .with_epsilon(epsilon as f32)
                .with_weight_decay((decay > 0.0).then(|| WeightDecayConfig::new(decay)))
                .with_grad_clipping(norm_clip(adam.grad_clip_norm));
            let moment = SecondMoment::new(adam.beta2, epsilon);
            train(
                model,
                config.init::<B, Model<B>>(),
                Some(moment),
                &device,
                ctx,
                report,
            );
        }
        OptimizerSpec::AdamW(adam) => {
            let epsilon = half_safe_epsilon(adam.epsilon, half, report);
            let config = AdamWConfig::new()
                .with_beta_1(adam.beta1 as f32)
                .with_beta_2(adam.beta2 as f32)
                .with_epsilon(epsilon as f32)
                .with_weight_decay(adam.weight_decay as f32)
                .with_grad_clipping(norm_clip(adam.grad_clip_norm));
            let moment = SecondMoment::new(adam.beta2, epsilon);
            train(
                model,
                config.init::<B, Model<B>>(),
                Some(moment),
                &device,
                ctx,
                report,
            );
        }
    }
}

/// Adam's second-moment estimate v, kept beside the optimizer for the
/// preconditioned noise scale (AdaptDL's `AdamGradientNoiseScale`): Adam
/// steps along g / (sqrt(v) + eps), so the noise that matters to it is in
/// those coordinates. Burn keeps its optimizer state private; the same EMA
/// of the same gradients gives the same v (clipping aside, which Burn
/// applies inside the step).
struct SecondMoment {
    beta2: f64,
    epsilon: f64,
    v: GradientsParams,
    updates: i32,
}

impl SecondMoment {
    fn new(beta2: f64, epsilon: f64) -> Self {
        SecondMoment {
            beta2,
            epsilon,
            v: GradientsParams::new(),
            updates: 0,
        }
    }

    /// Folds this step's gradients into v.
    fn update<B: AutodiffBackend>(&mut self, model: &Model<B>, grads: &GradientsParams) {
        let mut visitor = MomentUpdate::<B> {
            grads,
            moment: self,
            _backend: std::marker::PhantomData,
        };
        model.visit(&mut visitor);
        self.updates += 1;
    }

    /// |g / (sqrt(v_hat) + eps)|^2 with the bias-corrected v of the steps
    /// before this one (the preconditioner the optimizer applies to g);
    /// `None` before the first update.
    fn preconditioned_norm<B: AutodiffBackend>(
        &self,
        model: &Model<B>,
        grads: &GradientsParams,
    ) -> Option<f64> {
        if self.updates == 0 {
            return None;
        }
        let correction = 1.0 - self.beta2.powi(self.updates);
        let mut visitor = PreconditionedNorm::<B> {
            grads,
            moment: self,
            correction,
            total: None,
        };
        model.visit(&mut visitor);
        visitor.total.map(|total| total.into_scalar().elem::<f64>())
    }
}

struct MomentUpdate<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    moment: &'a mut SecondMoment,
    _backend: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for MomentUpdate<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let beta2 = self.moment.beta2;
        let fresh = grad.powi_scalar(2).mul_scalar(1.0 - beta2);
        let v = match self.moment.v.remove::<B::InnerBackend, D>(param.id) {
            Some(old) => old.mul_scalar(beta2) + fresh,
            None => fresh,
        };
        self.moment.v.register(param.id, v);
    }
}

struct PreconditionedNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    moment: &'a SecondMoment,
    correction: f64,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PreconditionedNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let (Some(grad), Some(v)) = (
            self.grads.get::<B::InnerBackend, D>(param.id),
            self.moment.v.get::<B::InnerBackend, D>(param.id),
        ) else {
            return;
        };
        let scale = v
            .div_scalar(self.correction)
            .sqrt()
            .add_scalar(self.moment.epsilon);
        let sum = grad.div(scale).powi_scalar(2).sum();
        self.total = Some(match self.total.take() {
            Some(total) => total + sum,
            None => sum,
        });
    }
}

/// Clipping by global norm, when the spec asks for it.
fn norm_clip(max_norm: Option<f64>) -> Option<GradientClippingConfig> {
    max_norm.map(|norm| GradientClippingConfig::Norm(norm as f32))
}

/// Burn trains f16 without f32 master weights, so an epsilon that
/// underflows would make every trial diverge; raise it, and say so.
fn half_safe_epsilon(epsilon: f64, half: bool, report: &mut WorkerReport) -> f64 {
    if half && epsilon < F16_MIN_EPSILON {
        report.warnings.push(format!(
            "optimizer epsilon {epsilon:e} underflows in f16 (parameters and optimizer state are f16 here, with no f32 master copy); the trial used {F16_MIN_EPSILON:e}"
        ));
        F16_MIN_EPSILON
    } else {
        epsilon
    }
}

/// Sum of squared gradients over all parameters, kept on the device.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sum = grad.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + sum,
                None => sum,
            });
        }
    }
}

fn squared_norm<B: AutodiffBackend>(model: &Model<B>, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    model.visit(&mut visitor);
    visitor
        .total
        .map_or(0.0, |total| total.into_scalar().elem::<f64>())
}

fn commit_fault(fault: Fault) {
    match fault {
        Fault::PanicOnHelperThread => {
            // Joined so the panic is certain to happen before the loop goes
            // on; the worker's panic hook ends the process meanwhile.
            let helper = std::thread::Builder::new()
                .name("device-helper".into())
                .spawn(|| panic!("can't allocate buffer of size 68719476736 (injected fault)"))
                .expect("spawn helper thread");
            let _ = helper.join();
        }
        Fault::Hang => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        Fault::Abort => std::process::abort(),
        Fault::LeakMemory => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touch every page so the RSS really grows.
                hoard.push(vec![1u8; 16 << 20]);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Fault::ImpossibleSpeed | Fault::FrozenLoss => {}
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(sorted[sorted.len() / 2])
}

fn train<B: AutodiffBackend, O: Optimizer<Model<B>, B>>(
    mut model: Model<B>,
    mut optimizer: O,
    moment: Option<SecondMoment>,
    device: &B::Device,
    ctx: TrialContext<'_>,
    report: &mut WorkerReport,
) {
    let request = ctx.request;
    let steps = request.steps;
    // Samples trained so far: a batch schedule's phases go by them.
    let mut seen: u64 = 0;
    let mut timed_samples: u64 = 0;
    let mut rng = SplitMix64::new(request.seed ^ 0xDA7A);
    // Gradient-noise measurements cost an extra forward and backward pass,
    // so their steps are not timed.
    let noise_steps: BTreeSet<u32> = request
        .record
        .grad_noise
        .map(|noise| noise.steps(steps))
        .unwrap_or_default();
    let mut noise = request.record.grad_noise.map(|noise| GradNoiseSample {
        big_batch: request.batch_size,
        small_batch: noise.small_batch,
        big_sq_norms: Vec::new(),
        small_sq_norms: Vec::new(),
        preconditioned_big_sq_norms: Vec::new(),
        preconditioned_small_sq_norms: Vec::new(),
    });
    // Adam's v is only needed for the noise measurements.
    let mut moment = moment.filter(|_| noise.is_some());
    let cuda_free_at_start = ctx.cuda.and_then(|c| c.memory()).map(|(free, _)| free);
    let mut cuda_free_min = cuda_free_at_start;
    let setup = ctx.process_start.elapsed();
    report.setup_seconds = setup.as_secs_f64();
    let mut warmup_time = Duration::ZERO;
    let mut timed: Vec<f64> = Vec::new();
    let mut divergence = DivergenceWatch::default();

    for step in 0..steps {
        if step == 1.min(steps - 1) && step > 0 {
            if let Some(fault) = request.fault {
                commit_fault(fault);
            }
        }
        let (n, lr_factor) = match &request.batch_schedule {
            Some(ramp) => {
                let phase = ramp.phase_at(seen);
                (phase.batch_size as usize, phase.lr_factor)
            }
            None => (request.batch_size as usize, 1.0),
        };
        let lr = request.schedule.lr_at(step, steps) * lr_factor;
        let host = ctx.data.train_batch(n, &mut rng);
        let started = Instant::now();
        let batch = DeviceBatch::<B>::upload(&host, n, device);
        let loss = model.loss(&batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let measured = if noise_steps.contains(&step) {
            let big = squared_norm(&model, &grads);
            let small_batch = batch.head(noise.as_ref().map_or(1, |s| s.small_batch as usize));
            let small_loss = model.loss(&small_batch);
            let small_grads = GradientsParams::from_grads(small_loss.backward(), &model);
            let preconditioned = moment.as_ref().and_then(|m| {
                Some((
                    m.preconditioned_norm(&model, &grads)?,
                    m.preconditioned_norm(&model, &small_grads)?,
                ))
            });
            Some((big, squared_norm(&model, &small_grads), preconditioned))
        } else {
            None
        };
        if let Some(moment) = moment.as_mut() {
            moment.update(&model, &grads);
        }
        model = optimizer.step(lr, model, grads);
        // Reading the loss waits for the queued work of this step.
        let loss_value = loss.into_scalar().elem::<f64>();
        let elapsed = started.elapsed();

        if let Some(free) = ctx.cuda.and_then(|c| c.memory()).map(|(free, _)| free) {
            cuda_free_min = Some(cuda_free_min.map_or(free, |min: u64| min.min(free)));
        }
        report.losses.push(loss_value);
        report.learning_rates.push(lr);
        report.steps_completed = step + 1;
        seen += n as u64;
        ctx.sink.step(step, loss_value, lr);
        if let (Some(sample), Some((big, small, preconditioned))) = (noise.as_mut(), measured) {
            sample.big_sq_norms.push(big);
            sample.small_sq_norms.push(small);
            if let Some((big, small)) = preconditioned {
                sample.preconditioned_big_sq_norms.push(big);
                sample.preconditioned_small_sq_norms.push(small);
            }
        }
        if step < request.warmup_steps {
            warmup_time += elapsed;
        } else if measured.is_none() {
            timed.push(elapsed.as_secs_f64());
            timed_samples += n as u64;
        }

        if let Some(why) = divergence.observe(step as usize, loss_value, lr) {
            report.outcome = Some(Outcome::Diverged);
            report.reason = Some(why);
            break;
        }
    }

    if let (Some(start), Some(min)) = (cuda_free_at_start, cuda_free_min) {
        report.cuda_memory_delta_bytes = Some(start.saturating_sub(min));
    }
    let step_median = median(&timed);
    report.step_seconds_median = step_median;
    if !timed.is_empty() {
        report.samples_per_second = Some(timed_samples as f64 / timed.iter().sum::<f64>());
    }
    if let Some(step_median) = step_median {
        let warmup_steps = request.warmup_steps.min(report.steps_completed);
        let steady = step_median * f64::from(warmup_steps);
        report.startup_seconds =
            Some(setup.as_secs_f64() + (warmup_time.as_secs_f64() - steady).max(0.0));
    }
    report.grad_noise = noise;
    if report.outcome.is_none() && request.record.validation_loss {
        // Timed: a fixed cost every training run pays whatever its batch,
        // which the search's plan charges per run.
        let started = Instant::now();
        let samples = request
            .record
            .validation_samples
            .unwrap_or(crate::trial::DEFAULT_VALIDATION_SAMPLES);
        report.validation_loss = Some(validation_loss(&model, ctx.data, device, samples as usize));
        report.validation_seconds = Some(started.elapsed().as_secs_f64());
    }
    if report.outcome.is_none() {
        report.outcome = Some(Outcome::Ok);
    }
    match request.fault {
        Some(Fault::ImpossibleSpeed) => {
            report.samples_per_second = report.samples_per_second.map(|s| s * 1e7);
        }
        Some(Fault::FrozenLoss) => {
            let first = report.losses.first().copied().unwrap_or(0.0);
            report.losses.iter_mut().for_each(|l| *l = first);
        }
        _ => {}
    }
}

/// Mean loss over the first `samples` of a fixed draw of validation
/// samples, without autodiff.
fn validation_loss<B: AutodiffBackend>(
    model: &Model<B>,
    data: &Dataset,
    device: &B::Device,
    samples: usize,
) -> f64 {
    let model = model.valid();
    let mut rng = SplitMix64::new(0x7A11D);
    let (mut total, mut left) = (0.0, samples.max(1));
    while left > 0 {
        // Drawn in order from one stream: a smaller set is a prefix of a
        // larger one, whatever the batching.
        let n = left.min(VALIDATION_BATCH);
        let host = data.valid_batch(n, &mut rng);
        let batch = DeviceBatch::<B::InnerBackend>::upload(&host, n, device);
        // The loss is a mean over the batch: weighted by its samples.
        total += model.loss(&batch).into_scalar().elem::<f64>() * n as f64;
        left -= n;
    }
    total / samples.max(1) as f64
}
