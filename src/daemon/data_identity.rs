//! The identity of a job's data: a SHA-256 of the contents of every data
//! file its spec names, so a recommendation is reused only for the data it
//! was tuned on. Files are hashed again only when their [`FileVersion`]
//! (device, inode, size, modification and change times) changes, so an idle folder
//! costs a stat per data file per rescan.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::spec::JobSpec;

/// What identifies one version of a file without reading it: the rescan's
/// spec cache and the data-file digests both go by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileVersion {
    device: u64,
    inode: u64,
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
}

impl FileVersion {
    pub(crate) fn of(meta: &std::fs::Metadata) -> FileVersion {
        use std::os::unix::fs::MetadataExt;
        FileVersion {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            changed_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Data-file digests by path, with the file version each was taken at.
#[derive(Debug, Default)]
pub struct DataDigests {
    memo: Mutex<HashMap<PathBuf, (FileVersion, String)>>,
    /// Paths asked about since the last [`DataDigests::forget_unused`].
    used: Mutex<std::collections::HashSet<PathBuf>>,
}

impl DataDigests {
    /// The identity of the data `spec` reads: empty for a spec that names
    /// no data files (synthetic data, a command job), else a digest over
    /// each file's field and content digest. A file that cannot be read
    /// contributes its error, so it still differs from any readable one.
    /// Blocking: call it off the async runtime's threads.
    pub fn digest(&self, spec: &JobSpec) -> String {
        let files = spec.data_files();
        if files.is_empty() {
            return String::new();
        }
        let mut hasher = Sha256::new();
        for (field, path) in files {
            hasher.update(field.as_bytes());
            hasher.update([0u8]);
            hasher.update(self.file_digest(path).as_bytes());
            hasher.update([0u8]);
        }
        hex(&hasher.finalize()[..16])
    }

    /// Drops the digests of files no spec asked about since the last call
    /// (one rescan): the memo holds what the jobs folder names, no more.
    pub fn forget_unused(&self) {
        let used = match self.used.lock() {
            Ok(mut used) => std::mem::take(&mut *used),
            Err(_) => return,
        };
        if let Ok(mut memo) = self.memo.lock() {
            memo.retain(|path, _| used.contains(path));
        }
    }

    fn file_digest(&self, path: &Path) -> String {
        if let Ok(mut used) = self.used.lock() {
            used.insert(path.to_path_buf());
        }
        // A stat first: an unchanged file costs no open at all.
        if let Ok(meta) = std::fs::metadata(path) {
            if let Some(digest) = self.remembered(path, FileVersion::of(&meta)) {
                return digest;
            }
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            // A FIFO swapped in must not hang the rescan.
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        let mut file = match opened {
            Ok(file) => file,
            Err(error) => return format!("unreadable: {error}"),
        };
        let meta = match file.metadata() {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => return "not a regular file".into(),
            Err(error) => return format!("unreadable: {error}"),
        };
        let stamp = FileVersion::of(&meta);
        if let Some(digest) = self.remembered(path, stamp) {
            return digest;
        }
        // Hashed with no lock held: a large file delays only this rescan.
        let mut hasher = Sha256::new();
        if let Err(error) = std::io::copy(&mut file, &mut hasher) {
            return format!("unreadable: {error}");
        }
        let digest = hex(&hasher.finalize());
        if let Ok(mut memo) = self.memo.lock() {
            memo.insert(path.to_path_buf(), (stamp, digest.clone()));
        }
        digest
    }

    /// The digest taken of `path` when it had `stamp`, if any.
    fn remembered(&self, path: &Path, stamp: FileVersion) -> Option<String> {
        let memo = self.memo.lock().ok()?;
        memo.get(path)
            .filter(|(seen, _)| *seen == stamp)
            .map(|(_, digest)| digest.clone())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::spec::{parse_spec, SpecOrigin};
    use crate::validation::Syntax;

    fn csv_spec(path: &Path) -> JobSpec {
        let text = format!(
            "[model]\nkind = \"mlp\"\ninput_size = 2\nhidden = [4]\nclasses = 2\n\
             [data]\nkind = \"csv\"\npath = \"{}\"\nlabel_column = \"y\"\n\
             [optimizer]\nkind = \"adam\"\n",
            path.display()
        );
        let origin = SpecOrigin {
            label: "t.toml".into(),
            default_name: Some("t".into()),
            base_dir: None,
        };
        parse_spec(&text, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap()
    }

    #[test]
    fn changed_data_changes_the_digest_and_unchanged_data_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, "a,b,y\n1,2,0\n3,4,1\n").unwrap();
        let spec = csv_spec(&path);
        let digests = DataDigests::default();
        let first = digests.digest(&spec);
        assert_eq!(first.len(), 32);
        assert_eq!(digests.digest(&spec), first);
        std::fs::write(&path, "a,b,y\n1,2,0\n").unwrap();
        let second = digests.digest(&spec);
        assert_ne!(second, first);
        // The same bytes again are the same data.
        std::fs::write(&path, "a,b,y\n1,2,0\n3,4,1\n").unwrap();
        assert_eq!(digests.digest(&spec), first);
        std::fs::remove_file(&path).unwrap();
        assert_ne!(digests.digest(&spec), first);
        // The rescan that asked keeps the digest; the next one, which no
        // longer names the file, forgets it.
        digests.forget_unused();
        assert_eq!(digests.memo.lock().unwrap().len(), 1);
        digests.forget_unused();
        assert_eq!(digests.memo.lock().unwrap().len(), 0);
    }
}
