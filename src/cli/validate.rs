//! `batchd validate`: check specs, policies or configurations, and report
//! every error.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{load_policies, Cli, CliError, DocumentKind, ValidateArgs};
use batchd::config::Config;
use batchd::policy::{load_policy_file, PolicySet};
use batchd::spec::load_spec_file;
use batchd::validation::{DocumentErrors, Syntax};

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

pub fn run(cli: &Cli, args: &ValidateArgs) -> Result<(), CliError> {
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
            load_spec_file(path, policies, batchd::spec::DEFAULT_SPEC_FILE_LIMIT)
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
