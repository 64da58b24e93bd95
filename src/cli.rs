//! The command-line interface: argument definitions and dispatch.
//!
//! Exit codes (documented in the README): 0 success, 2 usage error (clap),
//! 64 invalid spec, configuration or policy, 1 any other failure.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};
use crate::gpu::{open_probe, Inventory};
use crate::policy::{load_policy_file, PolicySet};
use crate::spec::load_spec_file;
use crate::validation::{DocumentErrors, Syntax};

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_INVALID: u8 = 64;

/// An error at the command line's edge, carrying its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A spec, configuration or policy is invalid (exit 64).
    #[error("{0}")]
    Invalid(String),
    /// The command was used wrongly in a way clap could not catch (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Anything else (exit 1).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Invalid(_) => EXIT_INVALID,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Other(_) => EXIT_FAILURE,
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

#[derive(Debug, Clone, Args)]
pub struct AdviseArgs {
    /// The job spec file (.toml, .yaml, .yml or .json)
    pub spec: PathBuf,
    /// Device: auto, cpu or cuda:N (overrides the spec)
    #[arg(long, value_name = "D")]
    pub device: Option<String>,
    /// Memory limit, e.g. 4GiB (overrides the spec)
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Also print the learning rate for this effective batch size
    #[arg(long, value_name = "N")]
    pub lr_for: Option<u64>,
    /// Folder for compiled CUDA kernels shared between trials
    /// [default: ~/.cache/batchd/kernels]
    #[arg(long, value_name = "DIR")]
    pub kernel_cache: Option<PathBuf>,
    /// Print the recommendation object (the HTTP API's) as JSON
    #[arg(long)]
    pub json: bool,
    /// Also write an HTML report with charts of the evidence to FILE
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct TrialArgs {
    /// The job spec file (.toml, .yaml, .yml or .json)
    pub spec: PathBuf,
    /// Batch size to try
    #[arg(long, value_name = "N")]
    pub batch_size: u64,
    /// Training steps
    #[arg(long, value_name = "S")]
    pub steps: Option<u32>,
    /// Learning rate
    #[arg(long, value_name = "X")]
    pub lr: Option<f64>,
    /// Memory limit for the trial, e.g. 4GiB
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Device: auto, cpu or cuda:N (overrides the spec)
    #[arg(long, value_name = "D")]
    pub device: Option<String>,
    /// Also compute the held-out validation loss
    #[arg(long)]
    pub validation: bool,
    /// Folder for compiled CUDA kernels shared between trials
    /// [default: ~/.cache/batchd/kernels]
    #[arg(long, value_name = "DIR")]
    pub kernel_cache: Option<PathBuf>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
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
    match &cli.command {
        Command::Serve(args) => {
            let load = {
                let (cli, args) = (cli.clone(), args.clone());
                move || -> anyhow::Result<crate::daemon::Settings> {
                    let config = load_config(&cli, &args).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let policies = load_policies(&cli).map_err(|e| anyhow::anyhow!("{e}"))?;
                    crate::daemon::Settings::new(config, policies)
                }
            };
            // The first load keeps the command line's error kinds (exit codes).
            let settings =
                crate::daemon::Settings::new(load_config(&cli, args)?, load_policies(&cli)?)
                    .map_err(CliError::Other)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)?;
            runtime
                .block_on(crate::daemon::serve(settings, Box::new(load)))
                .map_err(CliError::Other)
        }
        Command::Advise(args) => crate::advise_cli::run(&cli, args),
        Command::Trial(args) => crate::trial_cli::run(&cli, args),
        Command::Gpus(args) => gpus(args),
        Command::Validate(args) => validate(&cli, args),
        Command::Policies(args) => policies(&cli, args),
        Command::Config(args) => {
            let config = load_config(&cli, args)?;
            let text = toml::to_string_pretty(&config).map_err(anyhow::Error::from)?;
            print!("{text}");
            Ok(())
        }
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

fn gpus(args: &GpusArgs) -> Result<(), CliError> {
    let probe = open_probe();
    let inventory = Inventory::take(probe.as_deref());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inventory).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", inventory.render());
    }
    Ok(())
}

/// Files named on the command line, with folders expanded to their documents.
fn expand_paths(paths: &[PathBuf]) -> Vec<Result<PathBuf, (PathBuf, String)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_file() && Syntax::from_path(p).is_some())
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        out.push(Err((
                            path.clone(),
                            "folder holds no .toml, .yaml, .yml or .json files".into(),
                        )));
                    }
                    out.extend(files.into_iter().map(Ok));
                }
                Err(e) => out.push(Err((path.clone(), format!("cannot read folder: {e}")))),
            }
        } else {
            out.push(Ok(path.clone()));
        }
    }
    out
}

fn validate(cli: &Cli, args: &ValidateArgs) -> Result<(), CliError> {
    let policies = match args.kind {
        DocumentKind::Spec => Some(load_policies(cli)?),
        _ => None,
    };
    let mut invalid_count = 0usize;
    let mut unreadable_count = 0usize;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    for item in expand_paths(&args.paths) {
        let (path, outcome) = match item {
            Ok(path) => {
                let outcome = check_document(&path, args.kind, policies.as_ref());
                (path, outcome)
            }
            Err((path, reason)) => (path.clone(), Err(Failure::Unreadable(reason))),
        };
        match &outcome {
            Ok(_) => {}
            Err(Failure::Invalid(_)) => invalid_count += 1,
            Err(Failure::Unreadable(_)) => unreadable_count += 1,
        }
        if args.json {
            let line = match &outcome {
                Ok(summary) => serde_json::json!({"path": path, "valid": true, "summary": summary}),
                Err(Failure::Invalid(errors)) => {
                    serde_json::json!({"path": path, "valid": false, "errors": errors.errors})
                }
                Err(Failure::Unreadable(reason)) => {
                    serde_json::json!({"path": path, "valid": false, "errors": [{"field": "", "message": reason}]})
                }
            };
            let _ = writeln!(stdout.lock(), "{line}");
        } else {
            match outcome {
                Ok(summary) => {
                    let _ = writeln!(stdout.lock(), "{}: ok ({summary})", path.display());
                }
                Err(Failure::Invalid(errors)) => {
                    let _ = writeln!(stderr.lock(), "{errors}");
                }
                Err(Failure::Unreadable(reason)) => {
                    let _ = writeln!(stderr.lock(), "{}: {reason}", path.display());
                }
            }
        }
    }
    if invalid_count > 0 {
        Err(CliError::Invalid(format!(
            "{invalid_count} invalid file(s)"
        )))
    } else if unreadable_count > 0 {
        Err(CliError::Other(anyhow::anyhow!(
            "{unreadable_count} file(s) could not be read"
        )))
    } else {
        Ok(())
    }
}

enum Failure {
    Invalid(DocumentErrors),
    Unreadable(String),
}

fn check_document(
    path: &Path,
    kind: DocumentKind,
    policies: Option<&PolicySet>,
) -> Result<String, Failure> {
    if !path.exists() {
        return Err(Failure::Unreadable("no such file".into()));
    }
    match (kind, policies) {
        (DocumentKind::Spec, Some(policies)) => {
            load_spec_file(path, policies, crate::spec::DEFAULT_SPEC_FILE_LIMIT)
                .map(|spec| format!("job `{}`: {}", spec.name, spec.summary()))
                .map_err(Failure::Invalid)
        }
        (DocumentKind::Policy, _) => load_policy_file(path)
            .map(|(policy, _)| format!("policy `{}`: {}", policy.name, policy.summary()))
            .map_err(Failure::Invalid),
        _ => Config::load(Some(path))
            .map(|config| format!("configuration, API on {}", config.listen))
            .map_err(Failure::Invalid),
    }
}

fn policies(cli: &Cli, args: &PoliciesArgs) -> Result<(), CliError> {
    let set = load_policies(cli)?;
    if args.json {
        let list: Vec<_> = set
            .iter()
            .map(|(policy, origin)| serde_json::json!({"policy": policy, "origin": origin}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(anyhow::Error::from)?
        );
        return Ok(());
    }
    let width = set.names().map(str::len).max().unwrap_or(8);
    for (policy, origin) in set.iter() {
        let origin = match origin {
            crate::policy::PolicyOrigin::Builtin => String::new(),
            crate::policy::PolicyOrigin::File(path) => format!(" [{}]", path.display()),
        };
        println!(
            "{:<width$}  {} ({}){origin}",
            policy.name,
            policy.description,
            policy.summary()
        );
    }
    Ok(())
}
