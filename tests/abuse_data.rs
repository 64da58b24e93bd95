//! Abuse of a trial's data, through the real binary (`batchd trial`): a
//! parsed-data cache entry that was damaged, swapped, replaced by a FIFO or
//! whose temporary name was planted as a link, and an IDX header whose
//! sizes overflow. Each trial runs in its own cache folder
//! (`$XDG_CACHE_HOME/batchd/data`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::quick_trial;
use serde_json::Value;

/// Rows, features and classes of the CSVs here: small, so a trial takes a
/// second.
const ROWS: usize = 40;
const FEATURES: usize = 4;
const CLASSES: usize = 10;
/// Longest a trial of these may take before the test calls it hung (the
/// trial deadline is minutes).
const TRIAL_LIMIT: Duration = Duration::from_secs(60);
/// Longest the trial behind a FIFO entry may take: far below its deadline.
const FIFO_LIMIT: Duration = Duration::from_secs(20);
/// Process ids ahead of the last one given out that get a planted link.
const PLANTED_PIDS: u32 = 20_000;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cache(&self) -> PathBuf {
        self.path().join("cache/batchd/data")
    }

    /// A CSV of [`ROWS`] rows whose features depend on `seed`, labels
    /// cycling through the classes, and a spec training a tiny MLP on it.
    fn csv_job(&self, name: &str, seed: u32) -> PathBuf {
        let mut text = String::from("f0,f1,f2,f3,label\n");
        for row in 0..ROWS {
            let features: Vec<String> = (0..FEATURES)
                .map(|f| format!("{}", (row * 7 + f * 3 + seed as usize * 11) % 17))
                .collect();
            text.push_str(&format!("{},{}\n", features.join(","), row % CLASSES));
        }
        let csv = self.path().join(format!("{name}.csv"));
        std::fs::write(&csv, text).unwrap();
        self.spec(
            name,
            &format!(
                "kind = \"csv\"\npath = {:?}\nlabel_column = \"label\"",
                csv.display().to_string()
            ),
        )
    }

    fn spec(&self, name: &str, data: &str) -> PathBuf {
        let spec = self.path().join(format!("{name}.toml"));
        std::fs::write(
            &spec,
            format!(
                "name = \"{name}\"\n[model]\nkind = \"mlp\"\nhidden = [8]\nclasses = {CLASSES}\n\
                 [data]\n{data}\n[optimizer]\nkind = \"adam\"\n"
            ),
        )
        .unwrap();
        spec
    }

    /// `batchd trial SPEC --json` with this setup's cache: the result, and
    /// how long it took. Panics past `limit`.
    fn trial_within(&self, spec: &Path, extra: &[&str], limit: Duration) -> (Value, Duration) {
        let started = Instant::now();
        let mut child = quick_trial(spec, &self.path().join("cache"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > limit {
                // The worker dies with its parent (PR_SET_PDEATHSIG).
                let _ = child.kill();
                let _ = child.wait();
                panic!("the trial of {} ran past {limit:?}", spec.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = started.elapsed();
        let output = child.wait_with_output().unwrap();
        let result: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (result, elapsed)
    }

    fn trial(&self, spec: &Path) -> Value {
        self.trial_within(spec, &[], TRIAL_LIMIT).0
    }

    /// A trial that must succeed; whether it read the cache.
    fn ok_trial(&self, spec: &Path) -> (Value, bool) {
        let result = self.trial(spec);
        assert_ok(&result);
        let cached = result["data_from_cache"].as_bool().unwrap();
        (result, cached)
    }

    /// The cache's entries.
    fn entries(&self) -> Vec<PathBuf> {
        let Ok(files) = std::fs::read_dir(self.cache()) else {
            return Vec::new();
        };
        let mut entries: Vec<PathBuf> = files
            .map(|f| f.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "samples"))
            .collect();
        entries.sort();
        entries
    }

    /// Runs `spec` once on an empty cache: its entry's path and bytes.
    fn first_entry(&self, spec: &Path) -> (PathBuf, Vec<u8>) {
        let before = self.entries();
        let (_, cached) = self.ok_trial(spec);
        assert!(!cached, "the first trial parses");
        let new: Vec<PathBuf> = self
            .entries()
            .into_iter()
            .filter(|e| !before.contains(e))
            .collect();
        assert_eq!(new.len(), 1, "one entry per CSV: {new:?}");
        let bytes = std::fs::read(&new[0]).unwrap();
        (new[0].clone(), bytes)
    }
}

fn assert_ok(result: &Value) {
    assert_eq!(
        result["outcome"], "ok",
        "{}\n{}",
        result["reason"], result["stderr_tail"]
    );
}

/// The trial went back to the CSV because its entry was refused, said so,
/// and stored the entry again as the first trial had.
fn assert_refused_and_restored(setup: &Setup, spec: &Path, entry: &Path, original: &[u8]) {
    let (result, cached) = setup.ok_trial(spec);
    assert!(!cached, "a refused entry is parsed again: {result}");
    let warned = result["warnings"].as_array().is_some_and(|warnings| {
        warnings.iter().any(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("cached samples of") && w.contains("were not used"))
        })
    });
    assert!(warned, "the refusal is in the trial's warnings: {result}");
    let metadata = std::fs::symlink_metadata(entry).unwrap();
    assert!(metadata.file_type().is_file());
    assert_eq!(
        std::fs::read(entry).unwrap(),
        original,
        "the entry is stored again from the CSV"
    );
    let (_, cached) = setup.ok_trial(spec);
    assert!(cached, "and used by the next trial");
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    let at: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the pattern occurs once in the entry");
    at[0]
}

/// Where the labels (i32, in row order) start in an entry. Found by their
/// values, so the test knows no more of the layout than that they are
/// stored as the CSV's i32 labels.
fn labels_at(entry: &[u8]) -> usize {
    let labels: Vec<u8> = (0..ROWS)
        .flat_map(|row| ((row % CLASSES) as i32).to_le_bytes())
        .collect();
    find(entry, &labels)
}

#[test]
fn an_entry_with_labels_out_of_range_is_refused_and_parsed_again() {
    for bad in [1000i32, -5] {
        let setup = Setup::new();
        let spec = setup.csv_job("labels", 1);
        let (entry, original) = setup.first_entry(&spec);
        let mut damaged = original.clone();
        let at = labels_at(&damaged) + 4 * 3;
        damaged[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&entry, &damaged).unwrap();
        assert_refused_and_restored(&setup, &spec, &entry, &original);
    }
}

#[test]
fn an_entry_of_zero_or_one_rows_is_refused_and_parsed_again() {
    for rows in [0usize, 1] {
        let setup = Setup::new();
        let spec = setup.csv_job("rows", 2);
        let (entry, original) = setup.first_entry(&spec);
        // The counts (rows, then values per sample, u64 each) precede the
        // inputs; keep the first `rows` inputs and labels and whatever
        // follows the labels, so the sizes agree with the counts.
        let counts: Vec<u8> = [ROWS as u64, FEATURES as u64]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect();
        let counts_at = find(&original, &counts);
        let inputs_at = counts_at + 16;
        let labels = labels_at(&original);
        let mut forged = original[..counts_at].to_vec();
        forged.extend_from_slice(&(rows as u64).to_le_bytes());
        forged.extend_from_slice(&(FEATURES as u64).to_le_bytes());
        forged.extend_from_slice(&original[inputs_at..inputs_at + 4 * FEATURES * rows]);
        forged.extend_from_slice(&original[labels..labels + 4 * rows]);
        forged.extend_from_slice(&original[labels + 4 * ROWS..]);
        std::fs::write(&entry, &forged).unwrap();
        assert_refused_and_restored(&setup, &spec, &entry, &original);
    }
}

#[test]
fn an_entry_swapped_for_another_csvs_samples_is_refused() {
    let setup = Setup::new();
    let first = setup.csv_job("first", 3);
    let second = setup.csv_job("second", 4);
    let (first_entry, first_bytes) = setup.first_entry(&first);
    let (second_entry, second_bytes) = setup.first_entry(&second);
    assert_eq!(first_bytes.len(), second_bytes.len(), "the same shape");
    assert_ne!(first_bytes, second_bytes);
    std::fs::copy(&first_entry, &second_entry).unwrap();
    assert_refused_and_restored(&setup, &second, &second_entry, &second_bytes);
}

#[test]
fn an_entry_replaced_by_a_fifo_is_refused_at_once() {
    let setup = Setup::new();
    let spec = setup.csv_job("fifo", 5);
    let (entry, original) = setup.first_entry(&spec);
    std::fs::remove_file(&entry).unwrap();
    let name = std::ffi::CString::new(entry.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let (result, elapsed) = setup.trial_within(&spec, &[], FIFO_LIMIT);
    assert_ok(&result);
    eprintln!("trial behind a FIFO entry: {elapsed:?}");
    assert_eq!(result["data_from_cache"], false);
    assert_eq!(std::fs::read(&entry).unwrap(), original);
}

/// The last process id given out here, and the largest there can be.
fn pids() -> (u32, u32) {
    let read =
        |path: &str| -> Option<u32> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let last = read("/proc/sys/kernel/ns_last_pid").unwrap_or_else(std::process::id);
    let max = read("/proc/sys/kernel/pid_max").unwrap_or(1 << 22);
    (last, max)
}

#[test]
fn a_link_planted_at_a_temporary_name_is_not_written_through() {
    let setup = Setup::new();
    let spec = setup.csv_job("canary", 6);
    let (entry, original) = setup.first_entry(&spec);
    std::fs::remove_file(&entry).unwrap();
    let canary = setup.path().join("canary");
    std::fs::write(&canary, "the user's file\n").unwrap();
    // The temporary name once was `<entry>.tmp.<pid>`: plant a link there
    // for every process id the next worker may get.
    let (last, max) = pids();
    let stem = entry.file_stem().unwrap().to_str().unwrap().to_owned();
    for ahead in 1..=PLANTED_PIDS {
        // Process ids wrap to just above the kernel's reserved ones.
        let pid = match last + ahead {
            pid if pid >= max => pid - max + 300,
            pid => pid,
        };
        let link = setup.cache().join(format!("{stem}.tmp.{pid}"));
        std::os::unix::fs::symlink(&canary, link).unwrap();
    }
    let (_, cached) = setup.ok_trial(&spec);
    assert!(!cached);
    assert!(
        std::fs::read(&canary).unwrap() == b"the user's file\n",
        "the canary behind the planted links was overwritten"
    );
    let metadata = std::fs::symlink_metadata(&entry).unwrap();
    assert!(metadata.file_type().is_file(), "the entry is a file");
    assert_eq!(std::fs::read(&entry).unwrap(), original);
    let (_, cached) = setup.ok_trial(&spec);
    assert!(cached);
}

/// An IDX file of unsigned bytes with `sizes` and `payload` zero bytes.
fn idx(path: &Path, sizes: &[u32], payload: usize) {
    let mut bytes = vec![0, 0, 0x08, sizes.len() as u8];
    for size in sizes {
        bytes.extend_from_slice(&size.to_be_bytes());
    }
    bytes.resize(bytes.len() + payload, 0);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_idx_header_whose_sizes_overflow_is_a_data_error_not_out_of_memory() {
    let setup = Setup::new();
    let images = setup.path().join("images.idx");
    let labels = setup.path().join("labels.idx");
    // 2^22 images of 2^21 x 2^21 pixels: 2^64 bytes, 0 when it wraps.
    idx(&images, &[1 << 22, 1 << 21, 1 << 21], 0);
    idx(&labels, &[1 << 22], 1 << 22);
    let spec = setup.spec(
        "idx",
        &format!(
            "kind = \"idx\"\nimages = {:?}\nlabels = {:?}",
            images.display().to_string(),
            labels.display().to_string()
        ),
    );
    let (result, _) = setup.trial_within(&spec, &["--memory-limit", "1GiB"], TRIAL_LIMIT);
    assert_eq!(result["outcome"], "invalid_request", "{result}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("cannot load the data")
            && reason.contains("IDX header promises 4194304 images of 2097152x2097152 pixels"),
        "{reason}"
    );
}
