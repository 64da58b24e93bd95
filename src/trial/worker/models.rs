//! The model zoo in Burn: the same code trains on the CPU (`Flex`) and on
//! CUDA. Models are one enum so the training loop is compiled once per
//! backend rather than once per backend and model.

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{
    activation::{Activation, ActivationConfig},
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm,
    LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::spec::{self, ModelSpec};

use super::data::Batch;

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
}

impl<B: Backend> Mlp<B> {
    fn new(spec: &spec::MlpSpec, input: usize, device: &B::Device) -> Self {
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
        }
    }

    fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        for layer in &self.hidden {
            x = self
                .dropout
                .forward(self.activation.forward(layer.forward(x)));
        }
        self.output.forward(x)
    }
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
        self.norm.forward(self.conv.forward(x))
    }
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
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    tokens: Embedding<B>,
    positions: Embedding<B>,
    blocks: TransformerEncoder<B>,
    norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> Gpt<B> {
    fn new(spec: &spec::TransformerSpec, device: &B::Device) -> Self {
        Gpt {
            tokens: EmbeddingConfig::new(spec.vocab_size, spec.d_model).init(device),
            positions: EmbeddingConfig::new(spec.context_length, spec.d_model).init(device),
            blocks: TransformerEncoderConfig::new(
                spec.d_model,
                spec.d_model * spec.mlp_ratio,
                spec.heads,
                spec.layers,
            )
            .with_dropout(spec.dropout)
            .with_norm_first(true)
            .init(device),
            norm: LayerNormConfig::new(spec.d_model).init(device),
            head: LinearConfig::new(spec.d_model, spec.vocab_size).init(device),
        }
    }

    /// Logits `[n, t, vocab]` for tokens `[n, t]`.
    fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [n, t] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device)
            .reshape([1, t])
            .repeat_dim(0, n);
        let x = self.tokens.forward(tokens) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask::<B>(n, t, &device);
        let x = self
            .blocks
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        self.head.forward(self.norm.forward(x))
    }
}

#[derive(Module, Debug)]
pub enum Model<B: Backend> {
    Mlp(Mlp<B>),
    Cnn(Cnn<B>),
    Gpt(Gpt<B>),
}

impl<B: Backend> Model<B> {
    /// Builds the spec's model; `input_size` is the data's sample width
    /// (used by the MLP when the spec leaves it out).
    pub fn new(spec: &ModelSpec, input_size: usize, device: &B::Device) -> Model<B> {
        match spec {
            ModelSpec::Mlp(mlp) => {
                Model::Mlp(Mlp::new(mlp, mlp.input_size.unwrap_or(input_size), device))
            }
            ModelSpec::Cnn(cnn) => Model::Cnn(Cnn::new(cnn, device)),
            ModelSpec::Transformer(t) => Model::Gpt(Gpt::new(t, device)),
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
                let logits = m.forward(inputs);
                let vocab = logits.dims()[2];
                cross_entropy(logits.reshape([n * t, vocab]), targets)
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
