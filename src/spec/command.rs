//! `runner = "command"`: the user's own training script instead of a
//! built-in model. The protocol it speaks is in `docs/command-runner.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::validation::Problems;

/// What a job trains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "runner")]
pub enum Workload {
    /// A built-in Burn model on a built-in data source.
    Builtin {
        model: super::ModelSpec,
        data: super::DataSpec,
    },
    /// An external command that trains and reports each step.
    Command(CommandSpec),
}

/// An external training command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandSpec {
    /// Program and arguments, run without a shell.
    pub argv: Vec<String>,
    /// The folder it runs in (the spec's folder unless `workdir` says).
    pub workdir: PathBuf,
    /// Variables added to the clean environment the command gets.
    pub environment: BTreeMap<String, String>,
    /// Whether batchd may offer the persistent trial mode (one process
    /// running trial after trial; docs/command-runner.md). `persistent =
    /// false` keeps one fresh process per trial.
    #[serde(default = "persistent_by_default")]
    pub persistent: bool,
    /// The script applies `BATCHD_BATCH_SCHEDULE` (a batch that grows
    /// during the run), as `batchd.torch.train` does: only then are ramp
    /// trials run. Scripts that do not declare it get constant batches.
    #[serde(default)]
    pub batch_schedule: bool,
}

fn persistent_by_default() -> bool {
    true
}

/// Keys only a command job may use.
pub(super) const COMMAND_KEYS: [&str; 5] = [
    "command",
    "workdir",
    "environment",
    "persistent",
    "batch_schedule",
];

/// Reads `runner`, and for command jobs `command`, `workdir` and
/// `environment`. `None` with problems pushed when they are wrong; `Some(None)`
/// for a built-in job.
pub(super) fn parse_command(
    object: &Map<String, Value>,
    base_dir: Option<&Path>,
    problems: &mut Problems,
) -> Option<Option<CommandSpec>> {
    let runner = match object.get("runner") {
        None => "builtin",
        Some(Value::String(runner)) if runner == "builtin" || runner == "command" => runner,
        Some(other) => {
            problems.push(
                "runner",
                format!("must be \"builtin\" or \"command\", got {other}"),
            );
            return None;
        }
    };
    if runner == "builtin" {
        for key in COMMAND_KEYS {
            if object.contains_key(key) {
                problems.push(key, "only a job with runner = \"command\" runs a command");
            }
        }
        return Some(None);
    }
    for key in ["model", "data"] {
        if object.contains_key(key) {
            problems.push(
                key,
                format!("a command job trains its own model and data; remove [{key}]"),
            );
        }
    }
    let before = problems.len();
    let argv: Vec<String> = match object.get("command") {
        None => {
            problems.push(
                "command",
                "missing; a command job needs the program and its arguments, e.g. [\"python3\", \"train.py\"]",
            );
            Vec::new()
        }
        Some(Value::Array(items)) => {
            let mut argv = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match item {
                    Value::String(text) if !text.is_empty() && !text.contains('\0') => {
                        argv.push(text.clone())
                    }
                    other => problems.push(
                        format!("command[{index}]"),
                        format!("must be a non-empty string, got {other}"),
                    ),
                }
            }
            if items.is_empty() {
                problems.push("command", "must name a program");
            }
            argv
        }
        Some(other) => {
            problems.push(
                "command",
                format!("must be an array of strings (no shell is used), got {other}"),
            );
            Vec::new()
        }
    };
    let workdir = match object.get("workdir") {
        None => match base_dir {
            Some(base) => base.to_path_buf(),
            None => {
                problems.push(
                    "workdir",
                    "missing; a spec without a folder of its own must give an absolute workdir",
                );
                PathBuf::new()
            }
        },
        Some(Value::String(text)) if !text.trim().is_empty() => {
            let path = PathBuf::from(text);
            match (path.is_absolute(), base_dir) {
                (true, _) => path,
                (false, Some(base)) => base.join(path),
                (false, None) => {
                    problems.push(
                        "workdir",
                        format!("`{text}` is relative, but this spec has no folder to resolve it against; use an absolute path"),
                    );
                    path
                }
            }
        }
        Some(other) => {
            problems.push("workdir", format!("must be a folder path, got {other}"));
            PathBuf::new()
        }
    };
    let mut environment = BTreeMap::new();
    match object.get("environment") {
        None => {}
        Some(Value::Object(vars)) => {
            for (name, value) in vars {
                let field = format!("environment.{name}");
                let valid_name = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid_name {
                    problems.push(field, "is not a valid environment variable name");
                } else if name.starts_with("BATCHD_") {
                    problems.push(field, "BATCHD_* variables are set by batchd for each trial");
                } else {
                    match value {
                        Value::String(text) if !text.contains('\0') => {
                            environment.insert(name.clone(), text.clone());
                        }
                        Value::Number(number) => {
                            environment.insert(name.clone(), number.to_string());
                        }
                        other => problems.push(field, format!("must be a string, got {other}")),
                    }
                }
            }
        }
        Some(other) => problems.push(
            "environment",
            format!("must be a table of NAME = \"value\", got {other}"),
        ),
    }
    let persistent = match object.get("persistent") {
        None => true,
        Some(Value::Bool(persistent)) => *persistent,
        Some(other) => {
            problems.push("persistent", format!("must be true or false, got {other}"));
            true
        }
    };
    let batch_schedule = match object.get("batch_schedule") {
        None => false,
        Some(Value::Bool(declared)) => *declared,
        Some(other) => {
            problems.push(
                "batch_schedule",
                format!("must be true or false (whether the script applies BATCHD_BATCH_SCHEDULE), got {other}"),
            );
            false
        }
    };
    (problems.len() == before).then_some(Some(CommandSpec {
        argv,
        workdir,
        environment,
        persistent,
        batch_schedule,
    }))
}

/// File checks for a command job: the folder exists and the program can be
/// found, so a typo is an `invalid` job rather than a crash per trial.
pub(super) fn check_command(command: &CommandSpec, problems: &mut Problems) {
    if !command.workdir.is_dir() {
        problems.push(
            "workdir",
            format!("{} is not a folder", command.workdir.display()),
        );
        return;
    }
    let program = &command.argv[0];
    let found = if program.contains('/') {
        command.workdir.join(program).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    if !found {
        problems.push(
            "command[0]",
            format!("cannot find the program `{program}` (relative paths start from workdir; plain names are looked up in PATH)"),
        );
    }
}
