//! Files written whole or not at all, and locks on files: what the state
//! folder, the leases, the jobs folder (a POSTed spec) and the reports
//! share. A writer killed mid-write leaves a temporary file, never half a
//! file under the real name; [`sweep_temporaries`] clears them later.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a file could not be written or locked.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} exists already", .0.display())]
    Exists(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new
/// one, never a mix: temporary file, fsync, rename, fsync of the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let temporary = write_temporary(path, bytes)?;
    let renamed = fs::rename(&temporary, path).map_err(io(path));
    if renamed.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    renamed?;
    sync_folder(path);
    Ok(())
}

/// Creates `path` with `bytes`, whole or not at all, and only if nothing is
/// there yet: two writers of one new name get one success and one
/// [`FileError::Exists`], never a silent replacement.
pub fn create_atomically(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let temporary = write_temporary(path, bytes)?;
    // A hard link fails when the name exists, where a rename replaces.
    let linked = fs::hard_link(&temporary, path);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_folder(path);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(FileError::Exists(path.to_path_buf()))
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// The prefix of every temporary file [`write_atomically`] makes.
const TEMPORARY_MARK: &str = ".tmp.";

/// A temporary file beside `path` holding `bytes`, synced; removed again
/// when writing fails (a full disk must not leave debris).
fn write_temporary(path: &Path, bytes: &[u8]) -> Result<PathBuf, FileError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    // Unique per write: tasks of one process may write at the same time.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let serial = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = dir.join(format!(
        ".{name}{TEMPORARY_MARK}{}.{serial}",
        std::process::id()
    ));
    let written = (|| {
        // Never through a planted link or over a planted file.
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temporary),
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            Err(io(&temporary)(e))
        }
    }
}

/// An exclusive `flock` on a lock file, held until dropped. On NFS the
/// client turns it into a byte-range lock the server arbitrates.
#[derive(Debug)]
pub struct FileLock {
    _file: fs::File,
}

impl FileLock {
    /// Blocks until `path` (created if missing) is locked by this process.
    pub fn exclusive(path: &Path) -> Result<FileLock, FileError> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io(path))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(io(path)(error));
            }
        }
    }
}

/// Makes a rename or link in `path`'s folder durable; failure here loses
/// nothing already written.
fn sync_folder(path: &Path) {
    if let Ok(folder) = fs::File::open(path.parent().unwrap_or(Path::new("."))) {
        let _ = folder.sync_all();
    }
}

/// Removes the temporary files a killed writer left in `dir` (their
/// writer's process is gone, or is an earlier run of this one).
pub fn sweep_temporaries(dir: &Path) -> usize {
    sweep_temporaries_older_than(dir, None)
}

/// [`sweep_temporaries`], sparing files modified within `age` when given.
pub fn sweep_temporaries_older_than(dir: &Path, age: Option<std::time::Duration>) -> usize {
    let old_enough = |entry: &fs::DirEntry| {
        age.is_none_or(|age| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|elapsed| elapsed > age)
        })
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mine = format!("{TEMPORARY_MARK}{}.", std::process::id());
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.contains(TEMPORARY_MARK) && !name.contains(&mine)
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(old_enough)
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries of `dir` other than `keep`.
    fn debris(dir: &Path, keep: &[&str]) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect()
    }

    #[test]
    fn failed_writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        // The rename fails: a folder holds the name.
        fs::create_dir(dir.path().join("taken.json")).unwrap();
        assert!(write_atomically(&dir.path().join("taken.json"), b"{}").is_err());
        // The link fails: a file holds the name, which is kept as it was.
        fs::write(dir.path().join("spec.toml"), "old").unwrap();
        let error = create_atomically(&dir.path().join("spec.toml"), b"new").unwrap_err();
        assert!(matches!(error, FileError::Exists(_)), "{error}");
        assert_eq!(
            fs::read_to_string(dir.path().join("spec.toml")).unwrap(),
            "old"
        );
        assert_eq!(
            debris(dir.path(), &["taken.json", "spec.toml"]),
            Vec::<String>::new()
        );
        // Temporaries of a dead writer are swept; this process's are not.
        fs::write(dir.path().join(".x.json.tmp.999999.0"), "half").unwrap();
        let mine = format!(".y.json.tmp.{}.0", std::process::id());
        fs::write(dir.path().join(&mine), "in flight").unwrap();
        assert_eq!(sweep_temporaries(dir.path()), 1);
        assert_eq!(debris(dir.path(), &["taken.json", "spec.toml"]), vec![mine]);
    }

    #[test]
    fn overwrites_are_atomic_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn a_file_lock_is_held_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = FileLock::exclusive(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let _second = FileLock::exclusive(&path).unwrap();
                tx.send(()).unwrap();
            })
        };
        // flock locks are per open file, so a second open blocks here too.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }
}
