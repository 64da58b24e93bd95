//! The command line, the binary's edge: argument definitions, dispatch,
//! and the mapping of every failure to an exit code. Only this wing (and
//! `main.rs`) uses `anyhow`; the library's errors are typed.
//!
//! Exit codes (documented in the README):
//!
//! - 0 success;
//! - 1 any other failure, a request the daemon refused included (its
//!   problem document printed as one line);
//! - 2 usage error (clap, or a flag's value checked later);
//! - 64 invalid spec, configuration or policy (also a spec the daemon
//!   refuses as invalid, HTTP 422);
//! - 69 the daemon cannot be reached (client subcommands; sysexits'
//!   EX_UNAVAILABLE).

mod advise;
mod client;
mod completions;
mod remote;
mod serve;
mod show;
mod trial;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use batchd::config::{Config, Overrides};
use batchd::gpu::{open_probe, GpuProbe};
use batchd::logging::LogFormat;
use batchd::machine::{user_data_cache, user_kernel_cache, Machine};
use batchd::policy::PolicySet;
use batchd::spec::{load_spec_file, DeviceChoice, JobSpec};
use batchd::trial::{ProcessTrialRunner, RunnerOptions};
use batchd::units::ByteSize;
use batchd::validation::DocumentErrors;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INVALID: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;

/// An error at the command line's edge, carrying its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A spec, configuration or policy is invalid (exit 64).
    #[error("{0}")]
    Invalid(String),
    /// The command was used wrongly in a way clap could not catch (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The daemon refused a client's request; its problem as one line
    /// (exit 1; a refused spec, HTTP 422, is [`CliError::Invalid`]).
    #[error("{0}")]
    Refused(String),
    /// The daemon cannot be reached: nothing listens, the host is unknown,
    /// or it did not answer in time (exit 69).
    #[error("{0}")]
    Unreachable(String),
    /// Anything else (exit 1).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Invalid(_) => EXIT_INVALID,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Refused(_) | CliError::Other(_) => EXIT_FAILURE,
            CliError::Unreachable(_) => EXIT_UNAVAILABLE,
        })
    }
}

fn invalid(errors: &[DocumentErrors]) -> CliError {
    CliError::Invalid(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// batchd: an auto-tuning batch-size advisor.
///
/// It measures, with short isolated training trials, the largest batch that
/// fits a GPU (or the CPU), the throughput curve, the gradient noise scale and
/// the best learning rate, and recommends a batch size, LR, warm-up and
/// gradient accumulation under a policy.
#[derive(Debug, Clone, Parser)]
#[command(name = "batchd", version, propagate_version = true)]
pub struct Cli {
    /// Daemon configuration file [default: /etc/batchd/batchd.toml when it exists]
    #[arg(long, global = true, value_name = "FILE", env = "BATCHD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Folder of extra or replacement policies (overrides the configuration)
    #[arg(long, global = true, value_name = "DIR")]
    pub policies_dir: Option<PathBuf>,

    /// Log filter, e.g. `info` or `batchd=debug` (also RUST_LOG)
    #[arg(long, global = true, value_name = "FILTER", default_value = "info")]
    pub log: String,

    /// Log format: text for people, json for machines (one object per
    /// line, the job's name in a `job` field) [default: the
    /// configuration's log_format, else text]
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "BATCHD_LOG_FORMAT"
    )]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the jobs folder, run trials, serve the HTTP API.
    Serve(ServeArgs),
    /// Tune one job spec in the foreground and print the recommendation.
    ///
    /// Runs the whole search: the largest batch that fits (with the policy's
    /// headroom), the throughput curve, the gradient noise scale, an LR range
    /// test and confirmation runs, then recommends batch size, LR, warm-up,
    /// accumulation and precision with the evidence. Respects the spec's
    /// search.time_budget (a partial answer is marked as such). Exits 0 with
    /// a recommendation, 64 for an invalid spec, 1 when nothing fits.
    Advise(AdviseArgs),
    /// Run one isolated training trial: does this batch fit, and how fast is it?
    ///
    /// The trial runs in a child process with a deadline and a memory limit
    /// (--memory-limit, else the spec's search.memory_limit). Exits 0 when
    /// the outcome is `ok`, 1 for any other outcome (out_of_memory,
    /// diverged, timeout, crashed), 64 for an invalid spec or request.
    Trial(TrialArgs),
    /// List NVIDIA GPUs (via NVML) with memory, load and compute processes.
    ///
    /// Without an NVIDIA driver it says so, shows the system memory, and
    /// exits 0: batchd then uses the CPU backend.
    Gpus(GpusArgs),
    /// Check job specs (or policies, or a configuration) and report every error.
    ///
    /// Each PATH is a file or a folder; a folder's .toml, .yaml, .yml and
    /// .json files are all checked. Exits 64 when any file is invalid.
    Validate(ValidateArgs),
    /// List the available policies, one line each.
    Policies(PoliciesArgs),
    /// Print the effective daemon configuration (file, defaults and flags).
    Config(ServeArgs),
    /// List a running daemon's jobs: state, phase, trials, batch and LR.
    ///
    /// The LR is the recommended one, for jobs that are done; a failed or
    /// invalid job shows why. With --watch the table is redrawn every
    /// second on a terminal, and written again whenever it changes when
    /// stdout is a pipe or a file (with --json: one JSON document per
    /// line), until interrupted.
    Jobs(JobsArgs),
    /// Print a job's recommendation and its rationale, as `advise` does.
    ///
    /// Asks the running daemon; the job must be done (a job still tuning
    /// is refused with 409).
    Show(ShowArgs),
    /// Submit a job spec file to the running daemon.
    ///
    /// Sent as application/toml, application/json or application/yaml
    /// after its extension. The daemon needs the API token when it has one.
    /// Exits 64 when the daemon finds the spec invalid.
    Submit(SubmitArgs),
    /// Tune a job again (a failed job, or new hardware).
    Retune(NameArgs),
    /// Remove a job: the daemon cancels its search and deletes its spec file.
    ///
    /// Its recommendation stays in the state folder.
    Rm(NameArgs),
    /// Print the learning rate for another effective batch size, from the
    /// job's fitted LR rule.
    ///
    /// Refused (409) when the job has no measured LR to scale.
    Lr(LrArgs),
    /// Print a shell completion script to stdout.
    ///
    /// bash: `batchd completions bash > /etc/bash_completion.d/batchd`;
    /// zsh: into a folder of $fpath as `_batchd`; fish:
    /// `~/.config/fish/completions/batchd.fish`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff) to stdout, or write one per command.
    ///
    /// Without --out-dir: one page, batchd(1), with a section for every
    /// subcommand (`batchd man | man -l -`). With --out-dir DIR: batchd.1
    /// and batchd-SUBCOMMAND.1 in DIR, their paths printed.
    Man(ManArgs),
}

/// `--log-format`'s values (the library's [`batchd::logging::LogFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// The flags every client subcommand shares: where the daemon is, its
/// token, and JSON output.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The daemon's address [default: http:// and the configuration's
    /// listen address]
    #[arg(long, value_name = "URL", env = "BATCHD_URL")]
    pub url: Option<String>,
    /// File holding the API token, sent with POST and DELETE [default:
    /// the configuration's api_token_file, when readable and the daemon is
    /// the configured or a loopback one]
    #[arg(long, value_name = "FILE", env = "BATCHD_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the daemon's JSON answer as it is
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct JobsArgs {
    /// Keep the table up to date until interrupted (Ctrl-C)
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The job's name
    pub name: String,
    /// Also print the learning rate for this effective batch size
    #[arg(long, value_name = "N")]
    pub lr_for: Option<u64>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The job spec file (.toml, .json, .yaml or .yml)
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// The job's name
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct LrArgs {
    /// The job's name
    pub name: String,
    /// The effective batch size (per optimizer step)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write one page per command into DIR instead
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Watched folder of job specs (overrides the configuration)
    #[arg(long, value_name = "DIR")]
    pub jobs_dir: Option<PathBuf>,
    /// State folder for recommendations and history (overrides the configuration)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Address for the HTTP API, e.g. 127.0.0.1:8477 (overrides the configuration)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
}

/// The flags `advise` and `trial` share: which spec, and where it runs.
#[derive(Debug, Clone, Args)]
pub struct SpecRunArgs {
    /// The job spec file (.toml, .yaml, .yml or .json)
    pub spec: PathBuf,
    /// Device: auto, cpu or cuda:N (overrides the spec)
    #[arg(long, value_name = "D")]
    pub device: Option<String>,
    /// Memory limit, e.g. 4GiB (overrides the spec)
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Folder for compiled CUDA kernels shared between trials
    /// [default: ~/.cache/batchd/kernels]
    #[arg(long, value_name = "DIR")]
    pub kernel_cache: Option<PathBuf>,
    /// Print the result as JSON (for advise: the HTTP API's recommendation)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AdviseArgs {
    #[command(flatten)]
    pub run: SpecRunArgs,
    /// Also print the learning rate for this effective batch size
    #[arg(long, value_name = "N")]
    pub lr_for: Option<u64>,
    /// Also write an HTML report with charts of the evidence to FILE
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TrialArgs {
    #[command(flatten)]
    pub run: SpecRunArgs,
    /// Batch size to try
    #[arg(long, value_name = "N")]
    pub batch_size: u64,
    /// Training steps
    #[arg(long, value_name = "S")]
    pub steps: Option<u32>,
    /// Learning rate
    #[arg(long, value_name = "X")]
    pub lr: Option<f64>,
    /// Also compute the held-out validation loss
    #[arg(long)]
    pub validation: bool,
    /// Held-out samples the validation takes (default 1024; the first N of
    /// one fixed draw)
    #[arg(long, value_name = "N", requires = "validation")]
    pub validation_samples: Option<u32>,
    /// Grow the batch during the trial: FROM:BATCH:LR_FACTOR phases, comma
    /// separated, the first from sample 0 at --batch-size (e.g.
    /// 0:16:1,256:32:1.41)
    #[arg(long, value_name = "PHASES")]
    pub batch_schedule: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct GpusArgs {
    /// Print the inventory as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocumentKind {
    Spec,
    Policy,
    Config,
}

#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Files or folders to check
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// What the files are
    #[arg(long = "as", value_enum, default_value = "spec")]
    pub kind: DocumentKind,
    /// Print one JSON object per file
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PoliciesArgs {
    /// Print the full policies as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    if !matches!(cli.command, Command::Serve(_)) {
        set_sighup_blocked(false);
    }
    match &cli.command {
        Command::Serve(args) => serve::run(&cli, args),
        Command::Advise(args) => advise::run(&cli, args),
        Command::Trial(args) => trial::run(&cli, args),
        Command::Gpus(args) => show::gpus(args),
        Command::Validate(args) => validate::run(&cli, args),
        Command::Policies(args) => show::policies(&cli, args),
        Command::Config(args) => show::config(&cli, args),
        Command::Jobs(args) => remote::jobs(&cli, args),
        Command::Show(args) => remote::show(&cli, args),
        Command::Submit(args) => remote::submit(&cli, args),
        Command::Retune(args) => remote::retune(&cli, args),
        Command::Rm(args) => remote::rm(&cli, args),
        Command::Lr(args) => remote::lr(&cli, args),
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
    }
}

/// The log format: `--log-format` (or `BATCHD_LOG_FORMAT`), else the
/// configuration's `log_format`, else text. Logging starts before any
/// command loads the configuration, so it is read here on its own; a
/// configuration that does not load is the command's to report.
pub fn log_format(cli: &Cli) -> LogFormat {
    match cli.log_format {
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => Config::load(cli.config.as_deref())
            .map(|config| config.log_format)
            .unwrap_or_default(),
    }
}

/// Blocks or unblocks SIGHUP for the calling thread (and the threads it
/// starts later). Child processes start with an empty mask (std resets it).
pub fn set_sighup_blocked(blocked: bool) {
    // SAFETY: plain signal-mask calls on a local, initialized set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let how = if blocked {
            libc::SIG_BLOCK
        } else {
            libc::SIG_UNBLOCK
        };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// The configuration with command-line overrides applied.
pub fn load_config(cli: &Cli, serve: &ServeArgs) -> Result<Config, CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| invalid(&[e]))?;
    Ok(config.apply(&Overrides {
        jobs_dir: serve.jobs_dir.clone(),
        state_dir: serve.state_dir.clone(),
        policies_dir: cli.policies_dir.clone(),
        listen: serve.listen,
    }))
}

/// The policy set: built-ins plus the configured folder.
pub fn load_policies(cli: &Cli) -> Result<PolicySet, CliError> {
    let dir = match &cli.policies_dir {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(CliError::Usage(format!(
                    "--policies-dir {}: not a folder",
                    dir.display()
                )));
            }
            dir.clone()
        }
        None => {
            let config = Config::load(cli.config.as_deref()).map_err(|e| invalid(&[e]))?;
            config.policies_dir
        }
    };
    PolicySet::load(Some(&dir)).map_err(|errors| invalid(&errors))
}

/// What a foreground command runs trials with: this machine (CUDA driver
/// and NVML), a runner of worker processes keeping kernels in
/// `--kernel-cache` or the user's cache and containing command trials as
/// the configuration says (`persistent`: offering command jobs one process
/// for all their trials), and a small async runtime.
pub fn foreground(
    cli: &Cli,
    args: &SpecRunArgs,
    persistent: bool,
) -> Result<(Machine, ProcessTrialRunner, tokio::runtime::Runtime), CliError> {
    let config = Config::load(cli.config.as_deref()).map_err(|e| invalid(&[e]))?;
    let probe: Option<Arc<dyn GpuProbe>> = open_probe().ok().map(Arc::from);
    let machine = Machine::discover(probe.clone());
    let mut options = RunnerOptions::current_exe().map_err(anyhow::Error::from)?;
    options.gpu_probe = probe;
    options.kernel_cache_dir = args.kernel_cache.clone().or_else(user_kernel_cache);
    options.data_cache_dir = user_data_cache();
    options.containment = config.trial_containment;
    options.persistent = persistent;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    Ok((machine, ProcessTrialRunner::new(options), runtime))
}

/// The spec of a foreground command with its `--device` and
/// `--memory-limit` flags applied over the spec's own settings.
pub fn load_with_overrides(
    cli: &Cli,
    args: &SpecRunArgs,
) -> Result<(JobSpec, DeviceChoice, Option<ByteSize>), CliError> {
    let policies = load_policies(cli)?;
    let spec = load_spec_file(&args.spec, &policies, batchd::spec::DEFAULT_SPEC_FILE_LIMIT)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    let choice = match &args.device {
        Some(text) => DeviceChoice::parse(text).map_err(|e| CliError::Usage(e.to_string()))?,
        None => spec.search.device,
    };
    let limit = match &args.memory_limit {
        Some(text) => Some(
            ByteSize::parse(text).map_err(|e| CliError::Usage(format!("--memory-limit: {e}")))?,
        ),
        None => spec.search.memory_limit,
    };
    Ok((spec, choice, limit))
}
