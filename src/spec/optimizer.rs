//! The `[optimizer]` section: SGD, Adam and AdamW.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::kind::section_kind;
use crate::validation::{deserialize_section, Problems};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerSpec {
    Sgd {
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
        grad_clip_norm: Option<f64>,
    },
    Adam(AdamSettings),
    #[serde(rename = "adamw")]
    AdamW(AdamSettings),
}

/// Adam's and AdamW's settings: the two differ only in how weight decay
/// enters (into the gradient, or decoupled from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub grad_clip_norm: Option<f64>,
}

impl OptimizerSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerSpec::Sgd { .. } => "sgd",
            OptimizerSpec::Adam(_) => "adam",
            OptimizerSpec::AdamW(_) => "adamw",
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
        let settings = AdamSettings {
            beta1,
            beta2,
            epsilon,
            weight_decay,
            grad_clip_norm,
        };
        if kind == "adam" {
            OptimizerSpec::Adam(settings)
        } else {
            OptimizerSpec::AdamW(settings)
        }
    };
    (problems.len() == before).then_some(optimizer)
}
