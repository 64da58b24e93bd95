//! The sections of a job spec: raw (as written) and validated forms.
//!
//! Raw integers are `i64` so that a negative number gets "must be > 0, got
//! -5" rather than a type error, and most fields are optional in raw form so
//! the validated form can fill documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::units::ByteSize;
use crate::validation::{deserialize_section, did_you_mean, join_path, Problems};

// ---------------------------------------------------------------- model

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MlpSpec {
    /// Features per sample; `None` means "take it from the data".
    pub input_size: Option<usize>,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub activation: Activation,
    pub dropout: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnnSpec {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    /// Channel width of each residual stage; every stage after the first
    /// halves the spatial size.
    pub stages: Vec<usize>,
    pub blocks_per_stage: usize,
    pub classes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerSpec {
    pub vocab_size: usize,
    pub context_length: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
}

/// The model a job trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    Mlp(MlpSpec),
    Cnn(CnnSpec),
    Transformer(TransformerSpec),
}

impl ModelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::Mlp(_) => "mlp",
            ModelSpec::Cnn(_) => "cnn",
            ModelSpec::Transformer(_) => "transformer",
        }
    }
}

const MODEL_KINDS: &[&str] = &["mlp", "cnn", "transformer"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMlp {
    #[allow(dead_code)]
    kind: String,
    input_size: Option<i64>,
    hidden: Vec<i64>,
    classes: i64,
    activation: Option<Activation>,
    dropout: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCnn {
    #[allow(dead_code)]
    kind: String,
    height: i64,
    width: i64,
    channels: i64,
    stages: Vec<i64>,
    blocks_per_stage: Option<i64>,
    classes: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransformer {
    #[allow(dead_code)]
    kind: String,
    vocab_size: Option<i64>,
    context_length: i64,
    d_model: i64,
    layers: i64,
    heads: i64,
    mlp_ratio: Option<i64>,
    dropout: Option<f64>,
}

/// Reads the `kind` of a tagged section, with a hint when it is misspelt.
fn section_kind(
    value: &Value,
    prefix: &str,
    kinds: &[&str],
    problems: &mut Problems,
) -> Option<String> {
    let Some(object) = value.as_object() else {
        problems.push(prefix, "must be a table");
        return None;
    };
    match object.get("kind") {
        None => {
            problems.push(
                join_path(prefix, "kind"),
                format!("missing; expected one of: {}", kinds.join(", ")),
            );
            None
        }
        Some(Value::String(kind)) if kinds.contains(&kind.as_str()) => Some(kind.clone()),
        Some(Value::String(kind)) => {
            let mut message = format!("unknown {prefix} kind `{kind}`");
            if let Some(hint) = did_you_mean(kind, kinds.iter().copied()) {
                message.push_str(&format!(" (did you mean `{hint}`?)"));
            }
            message.push_str(&format!("; expected one of: {}", kinds.join(", ")));
            problems.push(join_path(prefix, "kind"), message);
            None
        }
        Some(other) => {
            problems.push(
                join_path(prefix, "kind"),
                format!("must be a string, got {other}"),
            );
            None
        }
    }
}

fn positive_list(field: &str, values: &[i64], problems: &mut Problems) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            problems
                .at_least(&format!("{field}[{i}]"), *v, 1)
                .map(|v| v as usize)
        })
        .collect()
}

fn dropout(field: &str, value: Option<f64>, problems: &mut Problems) -> f64 {
    let value = value.unwrap_or(0.0);
    if !(0.0..1.0).contains(&value) {
        problems.push(field, format!("must be in [0, 1), got {value}"));
    }
    value
}

pub(super) fn parse_model(value: &Value, problems: &mut Problems) -> Option<ModelSpec> {
    let kind = section_kind(value, "model", MODEL_KINDS, problems)?;
    let before = problems.len();
    let model = match kind.as_str() {
        "mlp" => {
            let raw: RawMlp = deserialize_section(value, "model", problems)?;
            let input_size = raw
                .input_size
                .and_then(|v| problems.at_least("model.input_size", v, 1))
                .map(|v| v as usize);
            if raw.hidden.is_empty() {
                problems.push("model.hidden", "must list at least one hidden layer width");
            }
            let hidden = positive_list("model.hidden", &raw.hidden, problems);
            let classes = problems
                .at_least("model.classes", raw.classes, 2)
                .unwrap_or(2) as usize;
            ModelSpec::Mlp(MlpSpec {
                input_size,
                hidden,
                classes,
                activation: raw.activation.unwrap_or(Activation::Relu),
                dropout: dropout("model.dropout", raw.dropout, problems),
            })
        }
        "cnn" => {
            let raw: RawCnn = deserialize_section(value, "model", problems)?;
            let height = problems
                .at_least("model.height", raw.height, 4)
                .unwrap_or(4) as usize;
            let width = problems.at_least("model.width", raw.width, 4).unwrap_or(4) as usize;
            let channels = problems
                .at_least("model.channels", raw.channels, 1)
                .unwrap_or(1) as usize;
            if raw.stages.is_empty() {
                problems.push("model.stages", "must list at least one stage width");
            }
            let stages = positive_list("model.stages", &raw.stages, problems);
            let blocks_per_stage = problems
                .at_least(
                    "model.blocks_per_stage",
                    raw.blocks_per_stage.unwrap_or(1),
                    1,
                )
                .unwrap_or(1) as usize;
            let classes = problems
                .at_least("model.classes", raw.classes, 2)
                .unwrap_or(2) as usize;
            // The stem keeps full resolution and each later stage halves it.
            let downsample = 1usize << raw.stages.len().saturating_sub(1).min(30);
            if raw.stages.len() > 1 && (height < downsample || width < downsample) {
                problems.push(
                    "model.stages",
                    format!(
                        "{} stages halve a {height}x{width} input {} times, leaving nothing; use fewer stages",
                        raw.stages.len(),
                        raw.stages.len() - 1
                    ),
                );
            }
            ModelSpec::Cnn(CnnSpec {
                height,
                width,
                channels,
                stages,
                blocks_per_stage,
                classes,
            })
        }
        _ => {
            let raw: RawTransformer = deserialize_section(value, "model", problems)?;
            let vocab_size = problems
                .at_least("model.vocab_size", raw.vocab_size.unwrap_or(256), 2)
                .unwrap_or(256) as usize;
            let context_length = problems
                .at_least("model.context_length", raw.context_length, 2)
                .unwrap_or(2) as usize;
            let d_model = problems
                .at_least("model.d_model", raw.d_model, 1)
                .unwrap_or(1) as usize;
            let layers = problems
                .at_least("model.layers", raw.layers, 1)
                .unwrap_or(1) as usize;
            let heads = problems.at_least("model.heads", raw.heads, 1).unwrap_or(1) as usize;
            if raw.d_model > 0 && raw.heads > 0 && raw.d_model % raw.heads != 0 {
                problems.push(
                    "model.heads",
                    format!(
                        "must divide model.d_model ({}), got {}",
                        raw.d_model, raw.heads
                    ),
                );
            }
            let mlp_ratio = problems
                .at_least("model.mlp_ratio", raw.mlp_ratio.unwrap_or(4), 1)
                .unwrap_or(4) as usize;
            ModelSpec::Transformer(TransformerSpec {
                vocab_size,
                context_length,
                d_model,
                layers,
                heads,
                mlp_ratio,
                dropout: dropout("model.dropout", raw.dropout, problems),
            })
        }
    };
    (problems.len() == before).then_some(model)
}

// ---------------------------------------------------------------- data

/// Which CSV column holds the label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelColumn {
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// Inputs plus labels from a fixed random teacher network.
    Synthetic { seed: u64, samples: u64 },
    Csv {
        path: PathBuf,
        label_column: LabelColumn,
        has_header: bool,
        delimiter: char,
    },
    /// MNIST-format image and label files.
    Idx { images: PathBuf, labels: PathBuf },
    /// A byte-level text corpus.
    Text { path: PathBuf },
}

impl DataSource {
    pub fn kind(&self) -> &'static str {
        match self {
            DataSource::Synthetic { .. } => "synthetic",
            DataSource::Csv { .. } => "csv",
            DataSource::Idx { .. } => "idx",
            DataSource::Text { .. } => "text",
        }
    }

    /// Files the source reads, with the field naming each.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        match self {
            DataSource::Synthetic { .. } => Vec::new(),
            DataSource::Csv { path, .. } | DataSource::Text { path } => vec![("data.path", path)],
            DataSource::Idx { images, labels } => {
                vec![
                    ("data.images", images.as_path()),
                    ("data.labels", labels.as_path()),
                ]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    #[serde(flatten)]
    pub source: DataSource,
    /// Fraction of samples held out for validation loss.
    pub validation_fraction: f64,
}

const DATA_KINDS: &[&str] = &["synthetic", "csv", "idx", "text"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSynthetic {
    #[allow(dead_code)]
    kind: String,
    seed: Option<i64>,
    samples: Option<i64>,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCsv {
    #[allow(dead_code)]
    kind: String,
    path: String,
    label_column: Option<Value>,
    has_header: Option<bool>,
    delimiter: Option<String>,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdx {
    #[allow(dead_code)]
    kind: String,
    images: String,
    labels: String,
    validation_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    #[allow(dead_code)]
    kind: String,
    path: String,
    validation_fraction: Option<f64>,
}

fn data_path(field: &str, text: &str, base_dir: Option<&Path>, problems: &mut Problems) -> PathBuf {
    if text.trim().is_empty() {
        problems.push(field, "must not be empty");
        return PathBuf::new();
    }
    let path = PathBuf::from(text);
    if path.is_absolute() {
        return path;
    }
    match base_dir {
        Some(base) => base.join(path),
        None => {
            problems.push(
                field,
                format!("`{text}` is relative, but this spec has no folder to resolve it against; use an absolute path"),
            );
            path
        }
    }
}

pub(super) fn parse_data(
    value: &Value,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Option<DataSpec> {
    let kind = section_kind(value, "data", DATA_KINDS, problems)?;
    let before = problems.len();
    let (source, fraction) = match kind.as_str() {
        "synthetic" => {
            let raw: RawSynthetic = deserialize_section(value, "data", problems)?;
            let seed = problems
                .at_least("data.seed", raw.seed.unwrap_or(0), 0)
                .unwrap_or(0);
            let samples = problems
                .at_least("data.samples", raw.samples.unwrap_or(16_384), 64)
                .unwrap_or(64);
            (
                DataSource::Synthetic { seed, samples },
                raw.validation_fraction,
            )
        }
        "csv" => {
            let raw: RawCsv = deserialize_section(value, "data", problems)?;
            let path = data_path("data.path", &raw.path, base_dir, problems);
            let label_column = match raw.label_column {
                None => LabelColumn::Name("label".into()),
                Some(Value::String(name)) if !name.is_empty() => LabelColumn::Name(name),
                Some(Value::Number(n)) if n.as_u64().is_some() => {
                    LabelColumn::Index(n.as_u64().unwrap_or(0) as usize)
                }
                Some(other) => {
                    problems.push(
                        "data.label_column",
                        format!("must be a column name or a 0-based column index, got {other}"),
                    );
                    LabelColumn::Index(0)
                }
            };
            let has_header = raw.has_header.unwrap_or(true);
            if !has_header && matches!(label_column, LabelColumn::Name(_)) {
                problems.push(
                    "data.label_column",
                    "a file without a header row needs a 0-based column index",
                );
            }
            let delimiter = match raw.delimiter.as_deref() {
                None => ',',
                Some("\\t") | Some("tab") => '\t',
                Some(d) if d.chars().count() == 1 => d.chars().next().unwrap_or(','),
                Some(d) => {
                    problems.push(
                        "data.delimiter",
                        format!("must be a single character, got {d:?}"),
                    );
                    ','
                }
            };
            (
                DataSource::Csv {
                    path,
                    label_column,
                    has_header,
                    delimiter,
                },
                raw.validation_fraction,
            )
        }
        "idx" => {
            let raw: RawIdx = deserialize_section(value, "data", problems)?;
            let images = data_path("data.images", &raw.images, base_dir, problems);
            let labels = data_path("data.labels", &raw.labels, base_dir, problems);
            (DataSource::Idx { images, labels }, raw.validation_fraction)
        }
        _ => {
            let raw: RawText = deserialize_section(value, "data", problems)?;
            let path = data_path("data.path", &raw.path, base_dir, problems);
            (DataSource::Text { path }, raw.validation_fraction)
        }
    };
    let validation_fraction = fraction.unwrap_or(0.1);
    if !(validation_fraction > 0.0 && validation_fraction <= 0.5) {
        problems.push(
            "data.validation_fraction",
            format!("must be in (0, 0.5], got {validation_fraction}"),
        );
    }
    (problems.len() == before).then_some(DataSpec {
        source,
        validation_fraction,
    })
}

// ---------------------------------------------------------------- optimizer

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerSpec {
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        grad_clip_norm: Option<f64>,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
        grad_clip_norm: Option<f64>,
    },
    #[serde(rename = "adamw")]
    AdamW {
        beta1: f64,
        beta2: f64,
        epsilon: f64,
        weight_decay: f64,
        grad_clip_norm: Option<f64>,
    },
}

impl OptimizerSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd { .. } => "sgd",
            OptimizerSpec::Adam { .. } => "adam",
            OptimizerSpec::AdamW { .. } => "adamw",
        }
    }
}

const OPTIMIZER_KINDS: &[&str] = &["sgd", "adam", "adamw"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSgd {
    #[allow(dead_code)]
    kind: String,
    momentum: Option<f64>,
    nesterov: Option<bool>,
    weight_decay: Option<f64>,
    grad_clip_norm: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdam {
    #[allow(dead_code)]
    kind: String,
    betas: Option<[f64; 2]>,
    epsilon: Option<f64>,
    weight_decay: Option<f64>,
    grad_clip_norm: Option<f64>,
}

pub(super) fn parse_optimizer(value: &Value, problems: &mut Problems) -> Option<OptimizerSpec> {
    let kind = section_kind(value, "optimizer", OPTIMIZER_KINDS, problems)?;
    let before = problems.len();
    let clip = |clip: Option<f64>, problems: &mut Problems| {
        if let Some(c) = clip {
            problems.positive("optimizer.grad_clip_norm", c);
        }
        clip
    };
    let optimizer = if kind == "sgd" {
        let raw: RawSgd = deserialize_section(value, "optimizer", problems)?;
        let momentum = raw.momentum.unwrap_or(0.9);
        problems.in_range("optimizer.momentum", momentum, 0.0, 0.9999);
        let nesterov = raw.nesterov.unwrap_or(false);
        if nesterov && momentum == 0.0 {
            problems.push(
                "optimizer.nesterov",
                "Nesterov momentum needs optimizer.momentum > 0",
            );
        }
        let weight_decay = raw.weight_decay.unwrap_or(0.0);
        problems.in_range("optimizer.weight_decay", weight_decay, 0.0, 1.0);
        OptimizerSpec::Sgd {
            momentum,
            nesterov,
            weight_decay,
            grad_clip_norm: clip(raw.grad_clip_norm, problems),
        }
    } else {
        let raw: RawAdam = deserialize_section(value, "optimizer", problems)?;
        let [beta1, beta2] = raw.betas.unwrap_or([0.9, 0.999]);
        problems.in_range("optimizer.betas[0]", beta1, 0.0, 0.99999);
        problems.in_range("optimizer.betas[1]", beta2, 0.0, 0.99999999);
        let epsilon = raw.epsilon.unwrap_or(1e-8);
        if problems.positive("optimizer.epsilon", epsilon) && epsilon > 1.0 {
            problems.push("optimizer.epsilon", format!("must be <= 1, got {epsilon}"));
        }
        let default_decay = if kind == "adamw" { 0.01 } else { 0.0 };
        let weight_decay = raw.weight_decay.unwrap_or(default_decay);
        problems.in_range("optimizer.weight_decay", weight_decay, 0.0, 1.0);
        let grad_clip_norm = clip(raw.grad_clip_norm, problems);
        if kind == "adam" {
            OptimizerSpec::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                grad_clip_norm,
            }
        } else {
            OptimizerSpec::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
                grad_clip_norm,
            }
        }
    };
    (problems.len() == before).then_some(optimizer)
}

// ---------------------------------------------------------------- precision, training, search

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSpec {
    /// Samples per epoch; `None` means "the data source's size".
    pub dataset_size: Option<u64>,
    pub epochs: f64,
    /// Data-parallel replicas the job will train on.
    pub world_size: u32,
    /// The effective batch (per optimizer step, over all replicas) the user
    /// wants; gradient accumulation makes up what does not fit.
    #[serde(default)]
    pub target_batch_size: Option<u64>,
    /// The wall-clock time the real training run will get, when it is
    /// bounded by time: race runs under the `balanced` and `throughput`
    /// objectives then train at most this long.
    #[serde(default, with = "crate::units::option_duration_text")]
    pub time_budget: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraining {
    dataset_size: Option<i64>,
    epochs: Option<f64>,
    world_size: Option<i64>,
    target_batch_size: Option<i64>,
    #[serde(default, with = "crate::units::option_duration_text")]
    time_budget: Option<Duration>,
}

pub(super) fn parse_training(
    value: Option<&Value>,
    problems: &mut Problems,
) -> Option<TrainingSpec> {
    let empty = Value::Object(Default::default());
    let raw: RawTraining = deserialize_section(value.unwrap_or(&empty), "training", problems)?;
    let before = problems.len();
    let dataset_size = raw
        .dataset_size
        .and_then(|n| problems.at_least("training.dataset_size", n, 1));
    let epochs = raw.epochs.unwrap_or(10.0);
    problems.positive("training.epochs", epochs);
    let world_size = problems
        .at_least("training.world_size", raw.world_size.unwrap_or(1), 1)
        .unwrap_or(1);
    if world_size > 65_536 {
        problems.push(
            "training.world_size",
            format!("must be <= 65536, got {world_size}"),
        );
    }
    let target_batch_size = raw
        .target_batch_size
        .and_then(|n| problems.at_least("training.target_batch_size", n, 1));
    if raw
        .time_budget
        .is_some_and(|t| t < Duration::from_millis(10))
    {
        problems.push("training.time_budget", "must be at least 10ms");
    }
    (problems.len() == before).then_some(TrainingSpec {
        dataset_size,
        epochs,
        world_size: world_size as u32,
        target_batch_size,
        time_budget: raw.time_budget,
    })
}

/// Where trials run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceChoice {
    /// The first CUDA GPU when one is usable, else the CPU.
    Auto,
    Cpu,
    Cuda(u32),
}

impl DeviceChoice {
    pub fn parse(text: &str) -> Result<DeviceChoice, NotADevice> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(DeviceChoice::Cuda)
                .ok_or_else(|| NotADevice(text.to_string())),
        }
    }
}

/// A device name that is none of `auto`, `cpu`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a device; use \"auto\", \"cpu\" or \"cuda:N\"")]
pub struct NotADevice(pub String);

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DeviceChoice::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSpec {
    pub device: DeviceChoice,
    pub min_batch: u64,
    pub max_batch: u64,
    /// Memory a trial may use; `None` means "what the device has free".
    pub memory_limit: Option<ByteSize>,
    #[serde(with = "crate::units::duration_text")]
    pub time_budget: Duration,
    pub seed: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSearch {
    device: Option<DeviceChoice>,
    min_batch: Option<i64>,
    max_batch: Option<i64>,
    memory_limit: Option<ByteSize>,
    #[serde(default, with = "crate::units::option_duration_text")]
    time_budget: Option<Duration>,
    seed: Option<i64>,
}

pub const DEFAULT_MAX_BATCH: u64 = 1 << 20;

pub(super) fn parse_search(value: Option<&Value>, problems: &mut Problems) -> Option<SearchSpec> {
    let empty = Value::Object(Default::default());
    let raw: RawSearch = deserialize_section(value.unwrap_or(&empty), "search", problems)?;
    let before = problems.len();
    let min_batch = problems
        .at_least("search.min_batch", raw.min_batch.unwrap_or(1), 1)
        .unwrap_or(1);
    let max_batch = problems
        .at_least(
            "search.max_batch",
            raw.max_batch.unwrap_or(DEFAULT_MAX_BATCH as i64),
            1,
        )
        .unwrap_or(1);
    if raw.max_batch.is_some() && max_batch < min_batch {
        problems.push(
            "search.max_batch",
            format!("must be >= search.min_batch ({min_batch}), got {max_batch}"),
        );
    }
    if let Some(limit) = raw.memory_limit {
        // Above a petabyte is a typo, and past 2^53 the value no longer
        // survives the JSON a trial request travels in.
        const MOST: u64 = 1 << 50;
        if limit.bytes() < ByteSize::MIB {
            problems.push(
                "search.memory_limit",
                format!("must be at least 1MiB, got {limit}"),
            );
        } else if limit.bytes() > MOST {
            problems.push(
                "search.memory_limit",
                format!("must be at most {}, got {limit}", ByteSize(MOST)),
            );
        }
    }
    let time_budget = raw.time_budget.unwrap_or(Duration::from_secs(15 * 60));
    if time_budget < Duration::from_secs(1) {
        problems.push("search.time_budget", "must be at least 1s");
    }
    let seed = problems
        .at_least("search.seed", raw.seed.unwrap_or(0), 0)
        .unwrap_or(0);
    (problems.len() == before).then_some(SearchSpec {
        device: raw.device.unwrap_or(DeviceChoice::Auto),
        min_batch,
        max_batch,
        memory_limit: raw.memory_limit,
        time_budget,
        seed,
    })
}
