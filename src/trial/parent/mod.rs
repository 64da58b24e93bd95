//! The parent side of a trial: spawn the child (batchd's own worker, or a
//! command job's script under its supervisor), feed it the request, watch
//! it, kill it when it overstays or overeats, and turn what happened into a
//! [`TrialResult`].
//!
//! [`TrialResult`]: crate::trial::TrialResult

mod classify;
mod command;
mod contain;
mod persistent;
mod runner;
mod supervise;
mod supervisor;
mod tree;

pub use command::kill_orphaned_trials;
pub use runner::ProcessTrialRunner;
pub use supervise::RunnerOptions;
pub use supervisor::main as supervisor_main;
