//! Parsed tabular data kept across trials. A search runs its trials in
//! separate processes, and each would parse the same CSV again; instead the
//! first writes the standardized samples as raw little-endian f32/i32 to a
//! file named by a hash of the CSV's bytes and the parse settings, and the
//! rest read that. A changed file has another hash, so it is parsed again.
//!
//! Limits: the folder holds at most [`MAX_CACHED_DATASETS`] files (the
//! least recently written go first). A file that is short, or has the
//! wrong magic or version, is ignored and rewritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// First bytes of a cache file, with the layout's version.
const MAGIC: &[u8; 8] = b"BATCHD\x01\x00";
/// Most dataset files kept in the cache folder.
pub const MAX_CACHED_DATASETS: usize = 16;

/// Samples as the CSV parser produces them, before the split.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Parsed {
    pub sample_len: usize,
    pub inputs: Vec<f32>,
    pub labels: Vec<i32>,
}

/// The cache file for `bytes` parsed with `settings`.
pub(super) fn entry(dir: &Path, bytes: &[u8], settings: &str) -> PathBuf {
    let mut hasher = hasher(settings);
    hasher.update(bytes);
    entry_named(dir, hasher)
}

/// The cache file for the file at `path` as it is now, hashed as it is
/// read so that a cache hit never holds the whole source in memory.
pub(super) fn entry_for_file(dir: &Path, path: &Path, settings: &str) -> std::io::Result<PathBuf> {
    use std::io::Read;
    let mut hasher = hasher(settings);
    let mut file = std::fs::File::open(path)?;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut chunk)? {
            0 => break,
            n => hasher.update(&chunk[..n]),
        }
    }
    Ok(entry_named(dir, hasher))
}

fn hasher(settings: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    hasher.update(settings.as_bytes());
    hasher.update([0u8]);
    hasher
}

fn entry_named(dir: &Path, hasher: Sha256) -> PathBuf {
    let digest: String = hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{digest}.samples"))
}

/// The samples stored at `path`, if it holds a whole, current file.
pub(super) fn load(path: &Path) -> Option<Parsed> {
    let bytes = std::fs::read(path).ok()?;
    let body = bytes.strip_prefix(MAGIC.as_slice())?;
    let word = |i: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            body.get(i * 8..i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (rows, sample_len) = (
        usize::try_from(word(0)?).ok()?,
        usize::try_from(word(1)?).ok()?,
    );
    let values = rows.checked_mul(sample_len)?;
    let data = body.get(16..)?;
    if data.len() != values.checked_add(rows)?.checked_mul(4)? {
        return None;
    }
    let (inputs, labels) = data.split_at(values * 4);
    Some(Parsed {
        sample_len,
        inputs: inputs
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        labels: labels
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    })
}

/// Stores `parsed` at `path` (atomically: readers see no half file) and
/// trims the folder. Failing to cache only costs a parse later, so errors
/// are returned for a warning, never fatal.
pub(super) fn store(path: &Path, parsed: &Parsed) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut bytes = Vec::with_capacity(24 + 4 * (parsed.inputs.len() + parsed.labels.len()));
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(parsed.labels.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(parsed.sample_len as u64).to_le_bytes());
    for value in &parsed.inputs {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    for label in &parsed.labels {
        bytes.extend_from_slice(&label.to_le_bytes());
    }
    // Trials on two devices may store the same entry at once: each writes
    // its own temporary file and the renames replace one another whole.
    let temporary = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::File::create(&temporary).and_then(|mut file| file.write_all(&bytes));
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    trim(dir);
    Ok(())
}

/// Removes the oldest cache files beyond [`MAX_CACHED_DATASETS`].
fn trim(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "samples"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(MAX_CACHED_DATASETS);
    for (_, path) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_dataset_reads_back_and_a_damaged_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let parsed = Parsed {
            sample_len: 2,
            inputs: vec![0.5, -1.0, 3.25, f32::MIN_POSITIVE],
            labels: vec![1, 0],
        };
        let path = entry(dir.path(), b"a,b\n1,2\n", "label=0");
        let source = dir.path().join("d.csv");
        std::fs::write(&source, b"a,b\n1,2\n").unwrap();
        assert_eq!(
            entry_for_file(dir.path(), &source, "label=0").unwrap(),
            path
        );
        store(&path, &parsed).unwrap();
        assert_eq!(load(&path), Some(parsed));
        // Other bytes or other settings: another file.
        assert_ne!(path, entry(dir.path(), b"a,b\n1,3\n", "label=0"));
        assert_ne!(path, entry(dir.path(), b"a,b\n1,2\n", "label=1"));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(load(&path), None);
    }

    #[test]
    fn the_folder_keeps_at_most_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let parsed = Parsed {
            sample_len: 1,
            inputs: vec![1.0],
            labels: vec![0],
        };
        for i in 0..MAX_CACHED_DATASETS + 3 {
            let path = entry(dir.path(), format!("{i}").as_bytes(), "");
            store(&path, &parsed).unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            MAX_CACHED_DATASETS
        );
    }
}
