//! A batch size that changes during a run: phases from a number of samples
//! seen on, each with its batch and the factor its LR is multiplied by
//! (the optimizer's rule for the larger batch). Trials that ramp the batch
//! take one; command jobs get it as `BATCHD_BATCH_SCHEDULE`
//! (docs/command-runner.md).

use serde::{Deserialize, Serialize};

use super::InvalidRequest;

/// The most phases a schedule may have (a doubling ramp from 1 to 2^20 has
/// 21).
pub const MAX_PHASES: usize = 32;

/// One phase: from `from_sample` samples seen, steps of `batch_size`
/// samples at the LR schedule's value times `lr_factor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchPhase {
    pub from_sample: u64,
    pub batch_size: u64,
    pub lr_factor: f64,
}

/// Phases in order of `from_sample`, the first from sample 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
pub struct BatchSchedule {
    pub phases: Vec<BatchPhase>,
}

impl BatchSchedule {
    /// The phase in force once `seen` samples have been trained on.
    pub fn phase_at(&self, seen: u64) -> &BatchPhase {
        let index = self.phases.partition_point(|p| p.from_sample <= seen);
        &self.phases[index.saturating_sub(1)]
    }

    /// The batch of the first phase.
    pub fn first_batch(&self) -> u64 {
        self.phases.first().map_or(0, |p| p.batch_size)
    }

    /// The largest batch of any phase (what memory must hold).
    pub fn largest_batch(&self) -> u64 {
        self.phases.iter().map(|p| p.batch_size).max().unwrap_or(0)
    }

    /// Steps to train `samples` samples under this schedule (the last step
    /// may run past it).
    pub fn steps_for(&self, samples: u64) -> u64 {
        let mut seen = 0;
        let mut steps = 0;
        while seen < samples {
            seen += self.phase_at(seen).batch_size;
            steps += 1;
        }
        steps
    }

    pub fn check(&self) -> Result<(), InvalidRequest> {
        let bad = |why: String| Err(InvalidRequest(format!("batch_schedule: {why}")));
        if self.phases.is_empty() || self.phases.len() > MAX_PHASES {
            return bad(format!(
                "must have 1 to {MAX_PHASES} phases, got {}",
                self.phases.len()
            ));
        }
        if self.phases[0].from_sample != 0 {
            return bad("the first phase must start at sample 0".into());
        }
        for (i, phase) in self.phases.iter().enumerate() {
            if phase.batch_size == 0 {
                return bad(format!("phase {i}: batch_size must be > 0"));
            }
            if !(phase.lr_factor.is_finite() && phase.lr_factor > 0.0) {
                return bad(format!(
                    "phase {i}: lr_factor must be a finite number > 0, got {}",
                    phase.lr_factor
                ));
            }
            if i > 0 && phase.from_sample <= self.phases[i - 1].from_sample {
                return bad(format!(
                    "phase {i}: from_sample must grow from phase to phase ({} after {})",
                    phase.from_sample,
                    self.phases[i - 1].from_sample
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> BatchSchedule {
        BatchSchedule {
            phases: vec![
                BatchPhase {
                    from_sample: 0,
                    batch_size: 32,
                    lr_factor: 1.0,
                },
                BatchPhase {
                    from_sample: 320,
                    batch_size: 64,
                    lr_factor: std::f64::consts::SQRT_2,
                },
                BatchPhase {
                    from_sample: 1000,
                    batch_size: 128,
                    lr_factor: 2.0,
                },
            ],
        }
    }

    #[test]
    fn the_phase_follows_the_samples_seen() {
        let ramp = ramp();
        assert_eq!(ramp.phase_at(0).batch_size, 32);
        assert_eq!(ramp.phase_at(319).batch_size, 32);
        assert_eq!(ramp.phase_at(320).batch_size, 64);
        assert_eq!(ramp.phase_at(999).batch_size, 64);
        assert_eq!(ramp.phase_at(5000).batch_size, 128);
        assert_eq!((ramp.first_batch(), ramp.largest_batch()), (32, 128));
        // 10 steps of 32 reach 320; 11 of 64 reach 1024; then 128s.
        assert_eq!(ramp.steps_for(320), 10);
        assert_eq!(ramp.steps_for(1024), 21);
        assert_eq!(ramp.steps_for(1025), 22);
        ramp.check().unwrap();
    }

    #[test]
    fn malformed_schedules_are_refused_naming_the_phase() {
        let mut bad = ramp();
        bad.phases[0].from_sample = 5;
        assert!(bad.check().unwrap_err().0.contains("sample 0"));
        let mut bad = ramp();
        bad.phases[2].from_sample = 320;
        assert!(bad.check().unwrap_err().0.contains("phase 2"));
        let mut bad = ramp();
        bad.phases[1].lr_factor = f64::NAN;
        assert!(bad.check().unwrap_err().0.contains("phase 1: lr_factor"));
        let mut bad = ramp();
        bad.phases[1].batch_size = 0;
        assert!(bad.check().unwrap_err().0.contains("phase 1: batch_size"));
        assert!(BatchSchedule { phases: vec![] }.check().is_err());
        // The JSON form a command sees is the list of phases.
        let text = serde_json::to_string(&ramp()).unwrap();
        assert!(text.starts_with("[{\"from_sample\":0,\"batch_size\":32,\"lr_factor\":1.0}"));
        let back: BatchSchedule = serde_json::from_str(&text).unwrap();
        assert_eq!(back, ramp());
    }
}
