//! Parsed tabular data kept across trials. A search runs its trials in
//! separate processes, and each would parse the same CSV again; instead the
//! first writes the standardized samples as raw little-endian f32/i32 to a
//! file named by a hash of the CSV's bytes and the parse settings (the
//! entry's key), and the rest read that. A changed file has another key, so
//! it is parsed again.
//!
//! An entry is only a copy, and anything that can write the folder can
//! change it, so nothing in it is trusted (see [`load`]): it is opened
//! without following links and without blocking, must be a regular file
//! whose size is exactly what its counts need, must name the key it was
//! stored under (an entry moved to another name fails), and its samples must
//! match the SHA-256 digest at its end; the counts must be possible for the
//! CSV's length, and the labels in range. An entry that fails is reported,
//! removed and parsed again. The digest finds damage and swaps, not
//! forgery: whoever can write the folder can also compute a digest.
//!
//! Layout (version 3): [`MAGIC`], the 32-byte key, rows and values per
//! sample (u64 each), the inputs (rows x values f32), the labels (rows
//! i32), then the SHA-256 of everything before it. Version 3 has version
//! 2's layout; it came with the `csv`-crate parser (quoting, one-hot text
//! columns), so nothing the old parser stored is read (the key hashes the
//! magic too).
//!
//! Limits: the folder holds at most [`MAX_CACHED_DATASETS`] files (the
//! least recently written go first); an entry holds at most one CSV field
//! per [`SOURCE_BYTES_PER_FIELD`] bytes of its CSV (a text field stands for
//! up to [`MAX_TEXT_LEVELS`] values) and at least [`MIN_SAMPLES`] rows; temporary files are created new (never through an
//! existing name or link), mode 0600, in up to [`TEMPORARY_ATTEMPTS`] tries.

use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::MAX_TEXT_LEVELS;
use super::MIN_SAMPLES;

/// First bytes of a cache file, with the layout's version. Entries of an
/// older layout fail the check and are replaced.
const MAGIC: &[u8; 8] = b"BATCHD\x03\x00";
/// Most dataset files kept in the cache folder.
pub const MAX_CACHED_DATASETS: usize = 16;
/// A CSV spends at least this many bytes per field (one character, as an
/// empty field is refused, and a delimiter or line end), so an entry
/// claiming more fields than its CSV's length allows is forged or damaged.
/// A numeric field or a label is one value; a text feature is one-hot
/// encoded into at most [`MAX_TEXT_LEVELS`].
pub const SOURCE_BYTES_PER_FIELD: u64 = 2;
/// Names tried for a temporary file before storing gives up. Each name is
/// fresh (process id, a serial and random bits), so a taken one means
/// someone planted it; a few tries bound the work such a folder can cause.
pub const TEMPORARY_ATTEMPTS: u32 = 8;
/// Permissions of the cache folder (when batchd creates it) and its files:
/// parsed data is the user's own.
const FOLDER_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

const KEY_LEN: usize = 32;
const DIGEST_LEN: usize = 32;
/// Magic, key, rows, values per sample.
const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + 8 + 8;
/// Bytes of inputs read, hashed and decoded at a time.
const CHUNK_BYTES: usize = 1 << 16;

/// Samples as the CSV parser produces them, before the split.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Parsed {
    pub sample_len: usize,
    pub inputs: Vec<f32>,
    pub labels: Vec<i32>,
}

/// Where the samples of one CSV parsed with one set of settings are kept,
/// with what an entry there must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub path: PathBuf,
    /// SHA-256 of the settings and the CSV's bytes; the file's name is its
    /// first half in hex, and the file holds it whole.
    key: [u8; KEY_LEN],
    /// The CSV's length in bytes, which bounds the values it can hold.
    source_len: u64,
}

/// Why a cache entry was not used. Every one of these sends the trial back
/// to the CSV; the entry is removed.
#[derive(Debug, thiserror::Error)]
pub(super) enum EntryError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it holds {actual} bytes where {expected} were expected")]
    Size { actual: u64, expected: u64 },
    #[error("it does not start with this batchd's magic and layout version")]
    Magic,
    #[error("it was stored for other data (the key inside does not match its name)")]
    OtherData,
    #[error(
        "its counts ({rows} rows of {sample_len} values) are impossible for a {source_len}-byte CSV"
    )]
    Counts {
        rows: u64,
        sample_len: u64,
        source_len: u64,
    },
    #[error("its samples do not match their digest")]
    Digest,
    #[error("row {row} has label {label}, out of range for {classes} classes")]
    Label {
        row: usize,
        label: i32,
        classes: usize,
    },
}

/// The cache entry for `bytes` parsed with `settings`.
pub(super) fn entry(dir: &Path, bytes: &[u8], settings: &str) -> Entry {
    let mut hasher = hasher(settings);
    hasher.update(bytes);
    entry_named(dir, hasher, bytes.len() as u64)
}

/// The cache entry for the file at `path` as it is now, hashed as it is
/// read so that a cache hit never holds the whole source in memory.
pub(super) fn entry_for_file(dir: &Path, path: &Path, settings: &str) -> std::io::Result<Entry> {
    let mut hasher = hasher(settings);
    let mut file = File::open(path)?;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut len = 0u64;
    loop {
        match file.read(&mut chunk)? {
            0 => break,
            n => {
                hasher.update(&chunk[..n]);
                len += n as u64;
            }
        }
    }
    Ok(entry_named(dir, hasher, len))
}

fn hasher(settings: &str) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(MAGIC);
    hasher.update(settings.as_bytes());
    hasher.update([0u8]);
    hasher
}

fn entry_named(dir: &Path, hasher: Sha256, source_len: u64) -> Entry {
    let key: [u8; KEY_LEN] = hasher.finalize().into();
    let name: String = key.iter().take(16).map(|b| format!("{b:02x}")).collect();
    Entry {
        path: dir.join(format!("{name}.samples")),
        key,
        source_len,
    }
}

/// The samples stored for `entry` with labels below `classes`: `None` when
/// there is no entry, an error when there is one that must not be used.
pub(super) fn load(entry: &Entry, classes: usize) -> Result<Option<Parsed>, EntryError> {
    // Non-blocking, so a FIFO planted here cannot hold the trial until its
    // deadline; no links, so the entry cannot be a device or another file.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&entry.path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => {
            return Err(EntryError::NotRegular)
        }
        Err(error) => return Err(error.into()),
    };
    // Checked on the opened descriptor: the name may be swapped meanwhile.
    let metadata = file.metadata()?;
    if !metadata.file_type().is_file() {
        return Err(EntryError::NotRegular);
    }
    let actual = metadata.len();
    let smallest = (HEADER_LEN + DIGEST_LEN) as u64;
    if actual < smallest {
        return Err(EntryError::Size {
            actual,
            expected: smallest,
        });
    }
    let mut reader = BufReader::with_capacity(CHUNK_BYTES, file);
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header)?;
    let (magic, rest) = header.split_at(MAGIC.len());
    let (key, counts) = rest.split_at(KEY_LEN);
    if magic != MAGIC {
        return Err(EntryError::Magic);
    }
    if key != entry.key {
        return Err(EntryError::OtherData);
    }
    let word = |at: usize| u64::from_le_bytes(counts[at..at + 8].try_into().expect("8 bytes"));
    let (rows, sample_len) = (word(0), word(8));
    let impossible = EntryError::Counts {
        rows,
        sample_len,
        source_len: entry.source_len,
    };
    // Every value of the samples came from a field of the CSV: a row's
    // label from one, its values from at least one per MAX_TEXT_LEVELS.
    let most_fields = entry.source_len / SOURCE_BYTES_PER_FIELD + 1;
    let fields = sample_len
        .div_ceil(MAX_TEXT_LEVELS as u64)
        .checked_add(1)
        .and_then(|per_row| per_row.checked_mul(rows))
        .filter(|&fields| fields <= most_fields && rows >= MIN_SAMPLES as u64);
    let values = fields.and_then(|_| sample_len.checked_add(1)?.checked_mul(rows));
    let Some(values) = values else {
        return Err(impossible);
    };
    // Bounded by the CSV's length now (and the size below), so these fit
    // a usize and nothing is allocated beyond what the file holds.
    let (rows, sample_len) = (rows as usize, sample_len as usize);
    let expected = smallest.saturating_add(values.saturating_mul(4));
    if actual != expected {
        return Err(EntryError::Size { actual, expected });
    }

    let mut digest = Sha256::new();
    digest.update(header);
    let mut inputs = Vec::with_capacity(rows * sample_len);
    read_words(&mut reader, rows * sample_len, &mut digest, |word| {
        inputs.push(f32::from_le_bytes(word));
    })?;
    let mut labels = Vec::with_capacity(rows);
    read_words(&mut reader, rows, &mut digest, |word| {
        labels.push(i32::from_le_bytes(word));
    })?;
    let mut stored = [0u8; DIGEST_LEN];
    reader.read_exact(&mut stored)?;
    if digest.finalize().as_slice() != stored {
        return Err(EntryError::Digest);
    }
    // The file may have grown since the size was checked.
    if reader.read(&mut [0u8; 1])? != 0 {
        return Err(EntryError::Size {
            actual: actual + 1,
            expected,
        });
    }
    let out_of_range = labels
        .iter()
        .enumerate()
        .find(|(_, &label)| label < 0 || label as usize >= classes);
    if let Some((row, &label)) = out_of_range {
        return Err(EntryError::Label {
            row,
            label,
            classes,
        });
    }
    Ok(Some(Parsed {
        sample_len,
        inputs,
        labels,
    }))
}

/// Reads `count` little-endian 4-byte words into `each`, hashing the bytes.
fn read_words(
    reader: &mut impl Read,
    count: usize,
    digest: &mut Sha256,
    mut each: impl FnMut([u8; 4]),
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let mut left = count * 4;
    while left > 0 {
        let part = &mut chunk[..left.min(CHUNK_BYTES)];
        reader.read_exact(part)?;
        digest.update(&*part);
        part.chunks_exact(4)
            .for_each(|w| each([w[0], w[1], w[2], w[3]]));
        left -= part.len();
    }
    Ok(())
}

/// Removes an entry that failed its checks, so the next trial does not
/// report it again. A removal that fails leaves it to the next store.
pub(super) fn discard(entry: &Entry) {
    let _ = std::fs::remove_file(&entry.path);
}

/// Stores `parsed` at `entry` (atomically: readers see no half file) and
/// trims the folder. Failing to cache only costs a parse later, so errors
/// are returned for a warning, never fatal.
pub(super) fn store(entry: &Entry, parsed: &Parsed) -> std::io::Result<()> {
    let path = &entry.path;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(FOLDER_MODE)
        .create(dir)?;
    // Trials on two devices may store the same entry at once: each writes
    // its own temporary file and the renames replace one another whole.
    let (file, temporary) = create_temporary(path)?;
    let written = write_entry(file, entry, parsed);
    if let Err(error) = written.and_then(|()| std::fs::rename(&temporary, path)) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    trim(dir);
    Ok(())
}

fn write_entry(file: File, entry: &Entry, parsed: &Parsed) -> std::io::Result<()> {
    struct Sealed<W: Write> {
        out: W,
        digest: Sha256,
    }
    impl<W: Write> Sealed<W> {
        fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            self.digest.update(bytes);
            self.out.write_all(bytes)
        }
    }
    let mut out = Sealed {
        out: BufWriter::with_capacity(CHUNK_BYTES, file),
        digest: Sha256::new(),
    };
    out.put(MAGIC)?;
    out.put(&entry.key)?;
    out.put(&(parsed.labels.len() as u64).to_le_bytes())?;
    out.put(&(parsed.sample_len as u64).to_le_bytes())?;
    for value in &parsed.inputs {
        out.put(&value.to_le_bytes())?;
    }
    for label in &parsed.labels {
        out.put(&label.to_le_bytes())?;
    }
    let digest = out.digest.finalize();
    out.out.write_all(&digest)?;
    out.out.flush()
}

/// Serial of the temporary names this process has drawn.
static TEMPORARY_SERIAL: AtomicU64 = AtomicU64::new(0);

/// A new file beside `path` for writing it, under a name nobody can have
/// planted a link at: unpredictable, and created exclusively.
fn create_temporary(path: &Path) -> std::io::Result<(File, PathBuf)> {
    let names = (0..TEMPORARY_ATTEMPTS).map(|_| {
        let serial = TEMPORARY_SERIAL.fetch_add(1, Ordering::Relaxed);
        // RandomState's keys come from the operating system's random
        // source, so the name cannot be guessed by another process.
        let random = std::collections::hash_map::RandomState::new().hash_one(serial);
        path.with_extension(format!("tmp.{}.{serial}.{random:016x}", std::process::id()))
    });
    create_first_free(names)
}

/// Creates the first of `names` that does not exist yet, with
/// `O_CREAT|O_EXCL|O_NOFOLLOW`: an existing name, file or link (even a
/// dangling one), is skipped, never opened.
fn create_first_free(names: impl IntoIterator<Item = PathBuf>) -> std::io::Result<(File, PathBuf)> {
    let mut last = None;
    for name in names {
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&name);
        match created {
            Ok(file) => return Ok((file, name)),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(ErrorKind::AlreadyExists, "no temporary name to try")
    }))
}

/// Removes the oldest cache files beyond [`MAX_CACHED_DATASETS`].
fn trim(dir: &Path) {
    sweep_dead_temporaries(dir);
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

/// Removes the temporaries of writers that died mid-store (`<entry>.tmp.
/// <pid>.<serial>.<random>` whose process is gone): a killed worker would
/// otherwise leave a dataset's worth of bytes behind for good. A live
/// writer's, this process's included, are left alone.
fn sweep_dead_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Some((_, rest)) = name.split_once(".tmp.") else {
                return false;
            };
            let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
                return false;
            };
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
        // A link is removed, never followed.
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_writers_are_swept_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has a pid this high (the kernel's limit is 4,194,304).
        let dead = dir.path().join("abc.tmp.4194305.0.00ff");
        let mine = dir
            .path()
            .join(format!("abc.tmp.{}.0.00ff", std::process::id()));
        let entry = dir.path().join("abc.samples");
        for file in [&dead, &mine, &entry] {
            std::fs::write(file, b"x").unwrap();
        }
        assert_eq!(sweep_dead_temporaries(dir.path()), 1);
        assert!(!dead.exists() && mine.exists() && entry.exists());
    }

    const CSV: &[u8] = b"a,b,label\n1,2,1\n3,4,0\n5,6,1\n";

    fn parsed() -> Parsed {
        Parsed {
            sample_len: 2,
            inputs: vec![0.5, -1.0, 3.25, f32::MIN_POSITIVE, 7.0, -0.0],
            labels: vec![1, 0, 1],
        }
    }

    fn stored(dir: &Path, parsed: &Parsed) -> Entry {
        let entry = entry(dir, CSV, "label=2");
        store(&entry, parsed).unwrap();
        entry
    }

    fn rejection(entry: &Entry, classes: usize) -> EntryError {
        load(entry, classes).expect_err("the entry must be refused")
    }

    #[test]
    fn a_stored_dataset_reads_back_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("d.csv");
        std::fs::write(&source, CSV).unwrap();
        let entry = entry(dir.path(), CSV, "label=2");
        assert_eq!(
            entry_for_file(dir.path(), &source, "label=2").unwrap(),
            entry
        );
        assert!(load(&entry, 2).unwrap().is_none());
        store(&entry, &parsed()).unwrap();
        assert_eq!(load(&entry, 2).unwrap(), Some(parsed()));
        // Other bytes or other settings: another file.
        assert_ne!(
            entry.path,
            self::entry(dir.path(), b"a,b\n1,3\n", "label=2").path
        );
        assert_ne!(entry.path, self::entry(dir.path(), CSV, "label=1").path);
        // Only the entry is left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let mode = std::fs::metadata(&entry.path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn damaged_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let entry = stored(dir.path(), &parsed());
        let good = std::fs::read(&entry.path).unwrap();
        let damaged = |bytes: &[u8]| {
            std::fs::write(&entry.path, bytes).unwrap();
            rejection(&entry, 2)
        };
        let error = damaged(&good[..good.len() - 1]);
        assert!(matches!(error, EntryError::Size { .. }), "{error}");
        let error = damaged(&[good.as_slice(), b"x"].concat());
        assert!(matches!(error, EntryError::Size { .. }), "{error}");
        let error = damaged(&good[..10]);
        assert!(matches!(error, EntryError::Size { .. }), "{error}");
        // The layout before these checks.
        let mut old = good.clone();
        old[6] = 1;
        assert!(matches!(damaged(&old), EntryError::Magic));
        // One bit of one label: the digest.
        let mut label = good.clone();
        let at = good.len() - DIGEST_LEN - 4;
        label[at] ^= 0x02;
        assert!(matches!(damaged(&label), EntryError::Digest));
        // Counts that fit the file's size, the CSV and the minimum (9 rows
        // of no features) are still covered by the digest.
        let mut rows = good.clone();
        rows[HEADER_LEN - 16..HEADER_LEN - 8].copy_from_slice(&9u64.to_le_bytes());
        rows[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&0u64.to_le_bytes());
        let error = damaged(&rows);
        assert!(matches!(error, EntryError::Digest), "{error}");
        // Too few rows is refused before anything is read.
        rows[HEADER_LEN - 16..HEADER_LEN - 8].copy_from_slice(&1u64.to_le_bytes());
        rows[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&8u64.to_le_bytes());
        let error = damaged(&rows);
        assert!(
            matches!(error, EntryError::Counts { rows: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn an_entry_is_bound_to_its_own_data() {
        let dir = tempfile::tempdir().unwrap();
        let entry = stored(dir.path(), &parsed());
        let other = self::entry(dir.path(), b"a,b,label\n9,9,1\n8,8,0\n7,7,1\n", "label=2");
        let mut swapped = parsed();
        swapped.inputs.reverse();
        store(&other, &swapped).unwrap();
        std::fs::rename(&other.path, &entry.path).unwrap();
        assert!(matches!(rejection(&entry, 2), EntryError::OtherData));
    }

    #[test]
    fn sealed_entries_with_impossible_contents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Labels out of range for the spec's classes, sealed with a valid
        // digest: checked on their own.
        for label in [1000, -5, 2] {
            let mut bad = parsed();
            bad.labels[1] = label;
            let entry = stored(dir.path(), &bad);
            let error = rejection(&entry, 2);
            assert!(
                matches!(error, EntryError::Label { row: 1, label: l, classes: 2 } if l == label),
                "{error}"
            );
        }
        // Fewer rows than a split needs.
        for rows in [0, 1] {
            let few = Parsed {
                sample_len: 2,
                inputs: vec![1.0; 2 * rows],
                labels: vec![0; rows],
            };
            let entry = stored(dir.path(), &few);
            let error = rejection(&entry, 2);
            assert!(matches!(error, EntryError::Counts { .. }), "{error}");
        }
        // More values than the CSV's bytes can hold.
        let many = Parsed {
            sample_len: 2,
            inputs: vec![1.0; 2 * 64],
            labels: vec![0; 64],
        };
        let entry = stored(dir.path(), &many);
        let error = rejection(&entry, 2);
        assert!(
            error.to_string().contains("impossible for a 28-byte CSV"),
            "{error}"
        );
    }

    #[test]
    fn fifos_links_and_folders_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let entry = entry(dir.path(), CSV, "label=2");
        let fifo = std::ffi::CString::new(entry.path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        assert!(matches!(rejection(&entry, 2), EntryError::NotRegular));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        discard(&entry);
        assert!(!entry.path.exists());

        let real = stored(dir.path(), &parsed());
        std::os::unix::fs::symlink(&real.path, dir.path().join("link")).unwrap();
        let link = Entry {
            path: dir.path().join("link"),
            ..real.clone()
        };
        assert!(matches!(rejection(&link, 2), EntryError::NotRegular));
        std::fs::remove_file(&real.path).unwrap();
        std::fs::create_dir(&real.path).unwrap();
        assert!(matches!(rejection(&real, 2), EntryError::NotRegular));
    }

    #[test]
    fn temporaries_never_open_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("canary");
        std::fs::write(&canary, "keep").unwrap();
        let link = dir.path().join("a.tmp");
        std::os::unix::fs::symlink(&canary, &link).unwrap();
        let dangling = dir.path().join("b.tmp");
        std::os::unix::fs::symlink(dir.path().join("nothing"), &dangling).unwrap();
        let taken = dir.path().join("c.tmp");
        std::fs::write(&taken, "theirs").unwrap();
        let fresh = dir.path().join("d.tmp");
        let (mut file, name) =
            create_first_free([link.clone(), dangling.clone(), taken.clone(), fresh.clone()])
                .unwrap();
        file.write_all(b"mine").unwrap();
        assert_eq!(name, fresh);
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&taken).unwrap(), "theirs");
        assert!(!dir.path().join("nothing").exists());
        let error = create_first_free([link, dangling, taken]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::AlreadyExists);
        // Names drawn for one entry differ every time.
        let target = dir.path().join("x.samples");
        let (_, first) = create_temporary(&target).unwrap();
        let (_, second) = create_temporary(&target).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn the_folder_keeps_at_most_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let parsed = parsed();
        for i in 0..MAX_CACHED_DATASETS + 3 {
            let entry = entry(dir.path(), format!("{i}").as_bytes(), "");
            store(&entry, &parsed).unwrap();
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            MAX_CACHED_DATASETS
        );
    }
}
