//! The model zoo in Burn: the same code trains on the CPU (`Flex`) and on
//! CUDA. Models are one enum so the training loop is compiled once per
//! backend rather than once per backend and model.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{
    activation::{Activation, ActivationConfig},
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm,
    LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use std::sync::{Arc, Mutex, PoisonError};

use crate::spec::{self, ModelSpec};

use super::data::{Batch, SplitMix64};

/// A batch on the device.
pub enum DeviceBatch<B: Backend> {
    Classification {
        inputs: Tensor<B, 2>,
        labels: Tensor<B, 1, Int>,
    },
    Sequences {
        tokens: Tensor<B, 2, Int>,
    },
}

impl<B: Backend> DeviceBatch<B> {
    pub fn upload(batch: &Batch, n: usize, device: &B::Device) -> DeviceBatch<B> {
        match batch {
            Batch::Classification { inputs, labels } => {
                let len = inputs.len() / n.max(1);
                DeviceBatch::Classification {
                    inputs: Tensor::from_data(TensorData::new(inputs.clone(), [n, len]), device),
                    labels: Tensor::from_data(TensorData::new(labels.clone(), [n]), device),
                }
            }
            Batch::Sequences { tokens } => {
                let window = tokens.len() / n.max(1);
                DeviceBatch::Sequences {
                    tokens: Tensor::from_data(TensorData::new(tokens.clone(), [n, window]), device),
                }
            }
        }
    }

    /// The first `n` samples (for the small-batch gradient).
    pub fn head(&self, n: usize) -> DeviceBatch<B> {
        match self {
            DeviceBatch::Classification { inputs, labels } => {
                let width = inputs.dims()[1];
                DeviceBatch::Classification {
                    inputs: inputs.clone().slice([0..n, 0..width]),
                    labels: labels.clone().narrow(0, 0, n),
                }
            }
            DeviceBatch::Sequences { tokens } => {
                let width = tokens.dims()[1];
                DeviceBatch::Sequences {
                    tokens: tokens.clone().slice([0..n, 0..width]),
                }
            }
        }
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    hidden: Vec<Linear<B>>,
    output: Linear<B>,
    activation: Activation<B>,
    dropout: Dropout,
    #[module(skip)]
    masks: Option<HostMasks>,
}

impl<B: Backend> Mlp<B> {
    fn new(
        spec: &spec::MlpSpec,
        input: usize,
        masks: Option<HostMasks>,
        device: &B::Device,
    ) -> Self {
        let mut width = input;
        let mut hidden = Vec::new();
        for &next in &spec.hidden {
            hidden.push(LinearConfig::new(width, next).init(device));
            width = next;
        }
        let activation = match spec.activation {
            spec::Activation::Relu => ActivationConfig::Relu,
            spec::Activation::Gelu => ActivationConfig::Gelu,
            spec::Activation::Tanh => ActivationConfig::Tanh,
        };
        Mlp {
            hidden,
            output: LinearConfig::new(width, spec.classes).init(device),
            activation: activation.init(device),
            dropout: DropoutConfig::new(spec.dropout).init(),
            masks,
        }
    }

    fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for layer in &self.hidden {
            let x_activated = self.activation.forward(layer.forward(x));
            x = dropout(&self.dropout, &self.masks, x_activated);
        }
        self.output.forward(x)
    }
}

/// Dropout masks drawn on the host (SplitMix64, 16 bits per element) for
/// CPU trials. Burn draws its Bernoulli mask through a generic per-element
/// sampler over ChaCha20: 45% of a step of the digits MLP (dropout 0.1,
/// batch 4096). On CUDA Burn's device-side draw is kept (`None`), since a
/// host mask would cross the bus every step.
#[derive(Debug, Clone)]
pub struct HostMasks(Arc<Mutex<SplitMix64>>);

impl HostMasks {
    pub fn new(seed: u64) -> HostMasks {
        HostMasks(Arc::new(Mutex::new(SplitMix64::new(seed))))
    }

    /// `n` factors: `1 / keep` with probability `keep`, else 0.
    fn draw(&self, n: usize, keep: f64) -> Vec<f32> {
        let threshold = (keep * 65536.0).round() as u64;
        let scale = (1.0 / keep) as f32;
        let mut rng = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut mask = Vec::with_capacity(n + 3);
        while mask.len() < n {
            let bits = rng.next_u64();
            for lane in 0..4 {
                let draw = (bits >> (16 * lane)) & 0xFFFF;
                mask.push(if draw < threshold { scale } else { 0.0 });
            }
        }
        mask.truncate(n);
        mask
    }
}

/// Burn's dropout semantics (only while training, scaled by `1 / keep`),
/// with the mask from `masks` when there are host masks.
fn dropout<B: Backend, const D: usize>(
    dropout: &Dropout,
    masks: &Option<HostMasks>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    let Some(masks) = masks else {
        return dropout.forward(x);
    };
    if dropout.prob == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let dims = x.dims();
    let mask = masks.draw(dims.iter().product(), 1.0 - dropout.prob);
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, dims), &x.device());
    x * mask
}

#[derive(Module, Debug)]
pub struct ConvBn<B: Backend> {
    conv: Conv2d<B>,
    norm: BatchNorm<B>,
}

impl<B: Backend> ConvBn<B> {
    fn new(channels: [usize; 2], kernel: usize, stride: usize, device: &B::Device) -> Self {
        let padding = if kernel == 1 {
            PaddingConfig2d::Valid
        } else {
            let p = kernel / 2;
            PaddingConfig2d::Explicit(p, p, p, p)
        };
        ConvBn {
            conv: Conv2dConfig::new(channels, [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(padding)
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(channels[1]).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        batch_norm(&self.norm, self.conv.forward(x))
    }
}

/// Burn's `BatchNorm` arithmetic (batch statistics and running-state update
/// while training, running statistics otherwise), laid out for the CPU:
/// Burn's own broadcasts `[1, c, 1, 1]` against `[n, c, h, w]` and
/// transposes to reduce, which Flex runs element by element through a
/// strided iterator (two thirds of a CNN step). Here the activations are
/// `[n, c, h·w]` and every per-channel operand is materialized as
/// `[n, c, 1]`, the per-row broadcast Flex vectorizes, and reductions run
/// along contiguous rows.
fn batch_norm<B: Backend>(norm: &BatchNorm<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h * w]);
    let per_sample = |channels: Tensor<B, 3>| channels.repeat_dim(0, n);
    let gamma = norm.gamma.val().reshape([1, c, 1]);
    let beta = norm.beta.val().reshape([1, c, 1]);
    let y = if B::ad_enabled(&x.device()) {
        let count = (n * h * w) as f64;
        let mean = x.clone().sum_dim(2).sum_dim(0).div_scalar(count);
        let centered = x - per_sample(mean.clone());
        let var = centered
            .clone()
            .square()
            .sum_dim(2)
            .sum_dim(0)
            .div_scalar(count);
        let keep = 1.0 - norm.momentum;
        let running_mean = norm
            .running_mean
            .value_sync()
            .mul_scalar(keep)
            .add(mean.detach().mul_scalar(norm.momentum).reshape([c]));
        let running_var = norm
            .running_var
            .value_sync()
            .mul_scalar(keep)
            .add(var.clone().detach().mul_scalar(norm.momentum).reshape([c]));
        norm.running_mean.update(running_mean.detach());
        norm.running_var.update(running_var.detach());
        let scale = gamma / var.add_scalar(norm.epsilon).sqrt();
        centered * per_sample(scale) + per_sample(beta)
    } else {
        let mean = norm.running_mean.value().reshape([1, c, 1]);
        let var = norm.running_var.value().reshape([1, c, 1]);
        let scale = gamma / var.add_scalar(norm.epsilon).sqrt();
        let shift = beta - mean * scale.clone();
        x * per_sample(scale) + per_sample(shift)
    };
    y.reshape([n, c, h, w])
}

/// A basic residual block: two 3x3 convolutions and a shortcut (a 1x1
/// projection when the shape changes).
#[derive(Module, Debug)]
pub struct ResidualBlock<B: Backend> {
    first: ConvBn<B>,
    second: ConvBn<B>,
    shortcut: Option<ConvBn<B>>,
}

impl<B: Backend> ResidualBlock<B> {
    fn new(input: usize, output: usize, stride: usize, device: &B::Device) -> Self {
        ResidualBlock {
            first: ConvBn::new([input, output], 3, stride, device),
            second: ConvBn::new([output, output], 3, 1, device),
            shortcut: (stride != 1 || input != output)
                .then(|| ConvBn::new([input, output], 1, stride, device)),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let skip = match &self.shortcut {
            Some(projection) => projection.forward(x.clone()),
            None => x.clone(),
        };
        let y = burn::tensor::activation::relu(self.first.forward(x));
        burn::tensor::activation::relu(self.second.forward(y) + skip)
    }
}

#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    stem: ConvBn<B>,
    blocks: Vec<ResidualBlock<B>>,
    pool: AdaptiveAvgPool2d,
    head: Linear<B>,
    #[module(skip)]
    shape: [usize; 3],
}

impl<B: Backend> Cnn<B> {
    fn new(spec: &spec::CnnSpec, device: &B::Device) -> Self {
        let stem_width = spec.stages[0];
        let mut blocks = Vec::new();
        let mut width = stem_width;
        for (stage, &stage_width) in spec.stages.iter().enumerate() {
            for block in 0..spec.blocks_per_stage {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                blocks.push(ResidualBlock::new(width, stage_width, stride, device));
                width = stage_width;
            }
        }
        Cnn {
            stem: ConvBn::new([spec.channels, stem_width], 3, 1, device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(width, spec.classes).init(device),
            shape: [spec.channels, spec.height, spec.width],
        }
    }

    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let [c, h, w] = self.shape;
        let mut x = burn::tensor::activation::relu(self.stem.forward(x.reshape([n, c, h, w])));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let channels = x.dims()[1];
        self.head
            .forward(self.pool.forward(x).reshape([n, channels]))
    }
}

/// A decoder-only language model: token and position embeddings, causal
/// pre-norm transformer blocks, a final norm and a vocabulary head.
///
/// The blocks are batchd's own rather than Burn's `TransformerEncoder`
/// (same arithmetic and parameter count: Burn's pre-norm layer, GELU
/// feed-forward, additive mask of -1e4): activations stay a token matrix
/// `[n·t, d]` so every linear layer is one 2-D matmul instead of a batch of
/// `n` small ones, Q, K and V come from one fused projection and one copy,
/// and the causal mask is an additive `[t, t]` bias built once and added
/// as a shared row, where Burn's rebuilt an `[n, t, t]` boolean mask every
/// step and filled scores through a strided copy.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    tokens: Embedding<B>,
    positions: Embedding<B>,
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    head: Linear<B>,
    /// `0` where a position may attend, `-1e4` above the diagonal.
    #[module(skip)]
    causal_bias: Vec<f32>,
}

/// One pre-norm block: `x + attention(norm(x))`, then
/// `x + feed_forward(norm(x))`.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    attention_norm: LayerNorm<B>,
    qkv: Linear<B>,
    projection: Linear<B>,
    feed_forward_norm: LayerNorm<B>,
    expand: Linear<B>,
    contract: Linear<B>,
    dropout: Dropout,
    #[module(skip)]
    masks: Option<HostMasks>,
    #[module(skip)]
    heads: usize,
}

/// The score Burn's attention gives masked positions (its `min_float`):
/// finite in f16, and nothing after the softmax.
const MASKED_SCORE: f32 = -1.0e4;

impl<B: Backend> Block<B> {
    fn new(spec: &spec::TransformerSpec, masks: Option<HostMasks>, device: &B::Device) -> Self {
        let d = spec.d_model;
        Block {
            attention_norm: LayerNormConfig::new(d).init(device),
            qkv: LinearConfig::new(d, 3 * d).init(device),
            projection: LinearConfig::new(d, d).init(device),
            feed_forward_norm: LayerNormConfig::new(d).init(device),
            expand: LinearConfig::new(d, d * spec.mlp_ratio).init(device),
            contract: LinearConfig::new(d * spec.mlp_ratio, d).init(device),
            dropout: DropoutConfig::new(spec.dropout).init(),
            masks,
            heads: spec.heads,
        }
    }

    fn drop<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        dropout(&self.dropout, &self.masks, x)
    }

    /// `x`: `[n·t, d]`; `bias`: `[1, t·t]`.
    fn forward(&self, x: Tensor<B, 2>, n: usize, bias: &Tensor<B, 2>) -> Tensor<B, 2> {
        let attended = self.attention(self.attention_norm.forward(x.clone()), n, bias);
        let x = x + self.dropout.forward(attended);
        let hidden = gelu(
            self.expand
                .forward(self.feed_forward_norm.forward(x.clone())),
        );
        let out = self.contract.forward(self.dropout.forward(hidden));
        x + self.dropout.forward(out)
    }

    fn attention(&self, x: Tensor<B, 2>, n: usize, bias: &Tensor<B, 2>) -> Tensor<B, 2> {
        let [tokens, d] = x.dims();
        let (t, heads) = (tokens / n, self.heads);
        let head_dim = d / heads;
        // [n·t, 3d] -> [3, n·heads, t, head_dim]: one copy for Q, K and V.
        let qkv = self
            .qkv
            .forward(x)
            .reshape([n, t, 3, heads, head_dim])
            .permute([2, 0, 3, 1, 4])
            .reshape([3, n * heads, t, head_dim]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(0, i, 1)
                .reshape([n * heads, t, head_dim])
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q
            .matmul(k.swap_dims(1, 2))
            .mul_scalar(1.0 / (head_dim as f64).sqrt());
        let scores = (scores.reshape([n * heads, t * t]) + bias.clone()).reshape([n * heads, t, t]);
        let weights = self.drop(softmax(scores, 2));
        let context = weights
            .matmul(v)
            .reshape([n, heads, t, head_dim])
            .swap_dims(1, 2)
            .reshape([tokens, d]);
        self.projection.forward(context)
    }
}

impl<B: Backend> Gpt<B> {
    fn new(spec: &spec::TransformerSpec, masks: Option<HostMasks>, device: &B::Device) -> Self {
        let t = spec.context_length;
        Gpt {
            tokens: EmbeddingConfig::new(spec.vocab_size, spec.d_model).init(device),
            positions: EmbeddingConfig::new(t, spec.d_model).init(device),
            blocks: (0..spec.layers)
                .map(|_| Block::new(spec, masks.clone(), device))
                .collect(),
            norm: LayerNormConfig::new(spec.d_model).init(device),
            head: LinearConfig::new(spec.d_model, spec.vocab_size).init(device),
            causal_bias: causal_bias(t),
        }
    }

    /// Logits `[n·t, vocab]` for tokens `[n, t]`.
    fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [n, t] = tokens.dims();
        let device = tokens.device();
        let x = self.tokens.forward(tokens);
        let d = x.dims()[2];
        // Position rows 0..t, added to every sequence as one shared row.
        let positions = self
            .positions
            .weight
            .val()
            .slice([0..t, 0..d])
            .reshape([1, t * d]);
        let x = x.reshape([n, t * d]) + positions;
        let mut x = x.reshape([n * t, d]);
        let bias = Tensor::<B, 2>::from_data(
            TensorData::new(self.causal_bias_for(t), [1, t * t]),
            &device,
        );
        for block in &self.blocks {
            x = block.forward(x, n, &bias);
        }
        self.head.forward(self.norm.forward(x))
    }

    /// The causal bias for `t` positions (the built one unless a shorter
    /// window comes in).
    fn causal_bias_for(&self, t: usize) -> Vec<f32> {
        if t * t == self.causal_bias.len() {
            self.causal_bias.clone()
        } else {
            causal_bias(t)
        }
    }
}

/// Row-major `[t, t]`: position `i` may attend to `j <= i`.
fn causal_bias(t: usize) -> Vec<f32> {
    (0..t * t)
        .map(|i| if i % t > i / t { MASKED_SCORE } else { 0.0 })
        .collect()
}

#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    Mlp(Mlp<B>),
    Cnn(Cnn<B>),
    Gpt(Gpt<B>),
}

impl<B: Backend> Model<B> {
    /// Builds the spec's model; `input_size` is the data's sample width
    /// (used by the MLP when the spec leaves it out); `masks`, where
    /// dropout masks come from on the CPU.
    pub fn new(
        spec: &ModelSpec,
        input_size: usize,
        masks: Option<HostMasks>,
        device: &B::Device,
    ) -> Model<B> {
        match spec {
            ModelSpec::Mlp(mlp) => {
                let input = mlp.input_size.unwrap_or(input_size);
                Model::Mlp(Mlp::new(mlp, input, masks, device))
            }
            ModelSpec::Cnn(cnn) => Model::Cnn(Cnn::new(cnn, device)),
            ModelSpec::Transformer(t) => Model::Gpt(Gpt::new(t, masks, device)),
        }
    }

    /// Mean cross-entropy over the batch (over every position, for
    /// sequences).
    pub fn loss(&self, batch: &DeviceBatch<B>) -> Tensor<B, 1> {
        match (self, batch) {
            (Model::Mlp(m), DeviceBatch::Classification { inputs, labels }) => {
                cross_entropy(m.forward(inputs.clone()), labels.clone())
            }
            (Model::Cnn(m), DeviceBatch::Classification { inputs, labels }) => {
                cross_entropy(m.forward(inputs.clone()), labels.clone())
            }
            (Model::Gpt(m), DeviceBatch::Sequences { tokens }) => {
                let [n, window] = tokens.dims();
                let t = window - 1;
                let inputs = tokens.clone().slice([0..n, 0..t]);
                let targets = tokens.clone().slice([0..n, 1..window]).reshape([n * t]);
                cross_entropy(m.forward(inputs), targets)
            }
            _ => panic!("batch kind does not match the model (a bug in batchd's data loading)"),
        }
    }
}

fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, targets)
}

/// Forward FLOPs per sample, estimated from the architecture (two FLOPs per
/// multiply-add). Training costs about three times this.
pub fn forward_flops_per_sample(spec: &ModelSpec, input_size: usize) -> f64 {
    match spec {
        ModelSpec::Mlp(m) => {
            let mut width = m.input_size.unwrap_or(input_size) as f64;
            let mut flops = 0.0;
            for &h in &m.hidden {
                flops += 2.0 * width * h as f64;
                width = h as f64;
            }
            flops + 2.0 * width * m.classes as f64
        }
        ModelSpec::Cnn(c) => {
            let (mut h, mut w) = (c.height as f64, c.width as f64);
            let conv =
                |cin: f64, cout: f64, k: f64, h: f64, w: f64| 2.0 * k * k * cin * cout * h * w;
            let mut flops = conv(c.channels as f64, c.stages[0] as f64, 3.0, h, w);
            let mut width = c.stages[0] as f64;
            for (stage, &out) in c.stages.iter().enumerate() {
                for block in 0..c.blocks_per_stage {
                    if stage > 0 && block == 0 {
                        h = (h / 2.0).ceil();
                        w = (w / 2.0).ceil();
                    }
                    let out = out as f64;
                    flops += conv(width, out, 3.0, h, w) + conv(out, out, 3.0, h, w);
                    if width != out || (stage > 0 && block == 0) {
                        flops += conv(width, out, 1.0, h, w);
                    }
                    width = out;
                }
            }
            flops + 2.0 * width * c.classes as f64
        }
        ModelSpec::Transformer(t) => {
            let (d, ctx, layers) = (t.d_model as f64, t.context_length as f64, t.layers as f64);
            let per_token_block = 2.0 * (4.0 * d * d + 2.0 * d * d * t.mlp_ratio as f64);
            let attention = 2.0 * 2.0 * ctx * d; // scores and weighted sum, per token
            ctx * (layers * (per_token_block + attention) + 2.0 * d * t.vocab_size as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use burn::module::AutodiffModule;
    use burn::nn::transformer::TransformerEncoderConfig;
    use burn::tensor::Distribution;

    use super::*;

    type Cpu = Flex;
    type Train = Autodiff<Flex>;

    fn transformer_spec() -> spec::TransformerSpec {
        spec::TransformerSpec {
            vocab_size: 32,
            context_length: 8,
            d_model: 16,
            layers: 2,
            heads: 4,
            mlp_ratio: 4,
            dropout: 0.0,
        }
    }

    fn assert_close(a: Tensor<Cpu, 2>, b: Tensor<Cpu, 2>, tolerance: f32) {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "largest difference {worst}");
    }

    #[test]
    fn batch_norm_matches_burns_in_training_and_inference() {
        let device = Default::default();
        let ours = BatchNormConfig::new(3).init::<Train>(&device);
        let burns = BatchNormConfig::new(3).init::<Train>(&device);
        let x = Tensor::<Train, 4>::random([5, 3, 4, 2], Distribution::Normal(1.5, 2.0), &device);
        for _ in 0..3 {
            let a = batch_norm(&ours, x.clone()).inner().reshape([5, 24]);
            let b = burns.forward(x.clone()).inner().reshape([5, 24]);
            assert_close(a, b, 1e-4);
        }
        let stats = |n: &BatchNorm<Train>| {
            Tensor::cat(
                vec![
                    n.running_mean.value().inner(),
                    n.running_var.value().inner(),
                ],
                0,
            )
            .reshape([1, 6])
        };
        assert_close(stats(&ours), stats(&burns), 1e-5);
        // Inference uses the running statistics both ways.
        let (ours, burns) = (ours.valid(), burns.valid());
        let x = x.inner();
        assert_close(
            batch_norm(&ours, x.clone()).reshape([5, 24]),
            burns.forward(x).reshape([5, 24]),
            1e-4,
        );
    }

    #[test]
    fn gradients_flow_through_batch_statistics_as_in_burns() {
        let device = Default::default();
        let ours = BatchNormConfig::new(2).init::<Train>(&device);
        let burns = BatchNormConfig::new(2).init::<Train>(&device);
        let data = Tensor::<Cpu, 4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let weights =
            Tensor::<Train, 4>::random([4, 2, 3, 3], Distribution::Normal(0.0, 1.0), &device);
        let grad_of = |forward: &dyn Fn(Tensor<Train, 4>) -> Tensor<Train, 4>| {
            let x = Tensor::<Train, 4>::from_inner(data.clone()).require_grad();
            let loss = (forward(x.clone()) * weights.clone()).sum();
            x.grad(&loss.backward()).unwrap().reshape([4, 18])
        };
        assert_close(
            grad_of(&|x| batch_norm(&ours, x)),
            grad_of(&|x| burns.forward(x)),
            1e-4,
        );
    }

    #[test]
    fn host_dropout_keeps_the_right_share_scaled_and_only_while_training() {
        let masks = HostMasks::new(7);
        let mask = masks.draw(100_003, 0.9);
        assert_eq!(mask.len(), 100_003);
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(mask
            .iter()
            .all(|&m| m == 0.0 || (m - 1.0 / 0.9).abs() < 1e-6));
        // Seeded: the same seed draws the same masks, another seed others.
        assert_eq!(
            HostMasks::new(7).draw(64, 0.5),
            HostMasks::new(7).draw(64, 0.5)
        );
        assert_ne!(
            HostMasks::new(7).draw(64, 0.5),
            HostMasks::new(8).draw(64, 0.5)
        );

        let device = Default::default();
        let layer = DropoutConfig::new(0.25).init();
        let masks = Some(HostMasks::new(1));
        let x = Tensor::<Train, 2>::ones([200, 100], &device);
        let trained = dropout(&layer, &masks, x.clone()).inner();
        let zeros = trained.clone().equal_elem(0.0).int().sum().into_scalar() as f64;
        assert!((zeros / 20_000.0 - 0.25).abs() < 0.02, "dropped {zeros}");
        let mean = trained.mean().into_scalar();
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
        // No autodiff: evaluation, nothing dropped.
        let evaluated = dropout(&layer, &masks, x.inner());
        assert_eq!(evaluated.min().into_scalar(), 1.0);
    }

    #[test]
    fn the_transformer_has_burns_parameter_count() {
        let device = Default::default();
        let spec = transformer_spec();
        let ours = Gpt::<Cpu>::new(&spec, None, &device);
        let burns = TransformerEncoderConfig::new(
            spec.d_model,
            spec.d_model * spec.mlp_ratio,
            spec.heads,
            spec.layers,
        )
        .with_norm_first(true)
        .init::<Cpu>(&device);
        let outside_blocks = ours.tokens.num_params()
            + ours.positions.num_params()
            + ours.norm.num_params()
            + ours.head.num_params();
        assert_eq!(ours.num_params(), outside_blocks + burns.num_params());
    }

    #[test]
    fn attention_is_causal() {
        let device = Default::default();
        let spec = transformer_spec();
        let model = Gpt::<Cpu>::new(&spec, None, &device);
        let t = spec.context_length;
        let tokens: Vec<i64> = (0..2 * t as i64).map(|i| (i * 7) % 32).collect();
        let mut changed = tokens.clone();
        changed[t - 1] = 31 - changed[t - 1]; // the last position of sequence 0
        let run = |tokens: Vec<i64>| {
            model.forward(Tensor::from_data(TensorData::new(tokens, [2, t]), &device))
        };
        let (before, after) = (run(tokens), run(changed));
        let vocab = spec.vocab_size;
        // Positions before the change, and the other sequence, see nothing.
        let unaffected = |x: Tensor<Cpu, 2>| {
            Tensor::cat(
                vec![
                    x.clone().slice([0..t - 1, 0..vocab]),
                    x.slice([t..2 * t, 0..vocab]),
                ],
                0,
            )
        };
        assert_close(unaffected(before.clone()), unaffected(after.clone()), 1e-5);
        // The changed position itself does.
        let last = |x: Tensor<Cpu, 2>| x.slice([t - 1..t, 0..vocab]);
        let moved = (last(before) - last(after)).abs().max().into_scalar();
        assert!(
            moved > 1e-3,
            "the changed token moved its logits by {moved}"
        );
    }
}
