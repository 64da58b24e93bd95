//! batchd: an auto-tuning batch-size advisor.
//!
//! The library is organized one module per concern:
//! - [`spec`]: job specs, parsed and validated;
//! - [`policy`]: the knobs that turn measurements into advice;
//! - [`config`]: the daemon's configuration;
//! - [`gpu`]: GPU inventory through NVML (or injected fakes);
//! - [`cli`]: the command line.

pub mod cli;
pub mod config;
pub mod gpu;
pub mod logging;
pub mod policy;
pub mod spec;
pub mod units;
pub mod validation;
