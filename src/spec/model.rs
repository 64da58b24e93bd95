//! The `[model]` section: the built-in architectures (MLP, CNN,
//! transformer).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kind::section_kind;
use crate::validation::{deserialize_section, Problems};

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
