//! The parent side of a trial: spawn the child (batchd's own worker, or a
//! command job's script), feed it the request, watch it, kill it when it
//! overstays or overeats, and turn what happened into a [`TrialResult`].
//!
//! [`TrialResult`]: crate::trial::TrialResult

mod classify;
mod command;
mod runner;
mod supervise;

pub use command::kill_orphaned_trials;
pub use runner::ProcessTrialRunner;
pub use supervise::RunnerOptions;
