//! `precision` and the `[training]` section: what the real run will be.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::validation::{deserialize_section, Problems};

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
