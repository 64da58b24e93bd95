//! Whom a command job's code may be trusted from: a command job runs code
//! as the daemon's user, so the permissions of its spec file, the folders
//! above it and the programs it names are the trust boundary. The rescan
//! (`jobs`) refuses a command spec that fails these checks.

use std::path::Path;

use crate::spec::JobSpec;
use crate::validation::FieldError;

/// Whether others may write `path` (its mode's "other write" bit), and
/// whether it is sticky.
fn others_may_write(path: &Path) -> Option<(bool, bool)> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    Some((mode & 0o002 != 0, mode & 0o1000 != 0))
}

/// Why a command job's files are not to be trusted, if they are not: the
/// spec's real file (symbolic links resolved) writable by others; its real
/// folder writable by others, sticky or not (anyone may have put the file
/// there); a folder above it writable by others without the sticky bit
/// (anyone could swap the subtree); or a program or script the command
/// names writable by others.
fn untrusted_because(path: &Path, command: &crate::spec::CommandSpec) -> Option<String> {
    let real = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let via = if real != path {
        format!(" (reached through {})", path.display())
    } else {
        String::new()
    };
    if others_may_write(&real).is_some_and(|(writable, _)| writable) {
        return Some(format!("{}{via} is writable by everyone", real.display()));
    }
    let mut folder = real.parent();
    let mut first = true;
    while let Some(dir) = folder {
        if let Some((writable, sticky)) = others_may_write(dir) {
            if writable && (first || !sticky) {
                return Some(format!(
                    "the folder {} holding {}{via} is writable by everyone",
                    dir.display(),
                    real.display()
                ));
            }
        }
        first = false;
        folder = dir.parent();
    }
    // The program (found on PATH when it has no slash) and any argument
    // that names a file in the working folder, such as the script.
    let program = command.argv.first().map(|p| {
        if p.contains('/') {
            vec![command.workdir.join(p)]
        } else {
            std::env::var_os("PATH")
                .map(|paths| {
                    std::env::split_paths(&paths)
                        .map(|d| d.join(p))
                        .filter(|c| c.is_file())
                        .take(1)
                        .collect()
                })
                .unwrap_or_default()
        }
    });
    let arguments = command.argv.iter().skip(1).map(|a| command.workdir.join(a));
    program
        .unwrap_or_default()
        .into_iter()
        .chain(arguments)
        .filter(|file| file.is_file())
        .find(|file| others_may_write(file).is_some_and(|(writable, _)| writable))
        .map(|file| {
            format!(
                "{} (named in `command`) is writable by everyone",
                file.display()
            )
        })
}

/// A command job runs code as the daemon's user, so the permissions of
/// its spec, the folders on the way and the programs it names are the
/// trust boundary (see [`untrusted_because`]).
pub(super) fn trusted(
    path: &Path,
    spec: JobSpec,
) -> Result<JobSpec, crate::validation::DocumentErrors> {
    let Some(command) = spec.command() else {
        return Ok(spec);
    };
    match untrusted_because(path, command) {
        None => Ok(spec),
        Some(problem) => Err(crate::validation::DocumentErrors {
            source: path.display().to_string(),
            errors: vec![FieldError::new(
                "runner",
                format!("a command job runs code as batchd's user, but {problem}; refusing it (chmod o-w)"),
            )],
        }),
    }
}
