//! The phases of a search: the vocabulary of progress reports, trial
//! records and budget plans.

use serde::{Deserialize, Serialize};

/// The phases of a search, in order (the order they compare in).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    MaxFit,
    Throughput,
    LrRangeTest,
    NoiseScale,
    LrConfirmation,
    /// Candidate batches trained for the same budget with several seeds.
    Race,
    /// LRs either side of the rule's at the race winner.
    LrCheck,
    /// A batch that grows during the run, raced against the constant one.
    Ramp,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::MaxFit => "max_fit",
            Phase::Throughput => "throughput",
            Phase::LrRangeTest => "lr_range_test",
            Phase::NoiseScale => "noise_scale",
            Phase::LrConfirmation => "lr_confirmation",
            Phase::Race => "race",
            Phase::LrCheck => "lr_check",
            Phase::Ramp => "ramp",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
