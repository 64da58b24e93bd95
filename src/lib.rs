//! batchd: an auto-tuning batch-size advisor.
//!
//! The library is organized one module per concern:
//! - [`spec`]: job specs, parsed and validated;
//! - [`policy`]: the knobs that turn measurements into advice;
//! - [`config`]: the daemon's configuration;
//! - [`gpu`]: GPU inventory through NVML (or injected fakes);
//! - [`trial`]: isolated training trials (Burn lives only in its engine);
//! - [`search`]: max-fit search, throughput, noise scale, LR pairing, advice;
//! - [`state`]: recommendations kept across restarts;
//! - [`lease`]: leases on work in a state folder several daemons share;
//! - [`job`]: a job's lifecycle states;
//! - [`machine`]: the devices, what `auto` means, memory budgets;
//! - [`daemon`]: `batchd serve`, its job table, scheduler and HTTP API;
//! - [`report`]: recommendations as HTML pages and as text.
//!
//! The command line is the binary's (`src/cli/`), not the library's.

pub mod atomic_file;
pub mod config;
pub mod daemon;
pub mod gpu;
pub mod job;
pub mod lease;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod policy;
pub mod report;
pub mod search;
pub mod spec;
pub mod state;
pub mod trial;
pub mod units;
pub mod validation;

/// Every process counts its heap so a trial worker can cap it (see
/// [`trial::memory`]); the cost is two relaxed atomics per allocation.
#[global_allocator]
static ALLOCATOR: trial::memory::CountingAllocator = trial::memory::CountingAllocator;
