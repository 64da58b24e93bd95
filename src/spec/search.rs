//! The `[search]` section: device, limits and budget of the search.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::units::ByteSize;
use crate::validation::{deserialize_section, Problems};

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
