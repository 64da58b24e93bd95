//! Persistent state under the daemon's state folder: recommendations, kept
//! so a restart does not redo finished work, and each job's run history.
//!
//! A recommendation is keyed by the spec's content hash, the device model
//! and batchd's version: change any of them and the work is done again.
//! Writes are atomic (a temporary file in the same folder, fsync, rename),
//! so a crash never leaves half a file behind; a file that is corrupt
//! anyway (a disk fault, a hand edit) is reported and moved aside into
//! `corrupt/`, never fatal.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file::{sweep_temporaries_older_than, write_atomically, FileLock};
use crate::machine::TrialDevice;
use crate::search::{Recommendation, SCHEMA_VERSION};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    File(#[from] crate::atomic_file::FileError),
    /// Another batchd holds the state folder.
    #[error("the state folder is in use by another batchd ({holder}, holding {}); two daemons on one state folder would run the same jobs twice and lose history. Stop it, or give this one its own --state-dir", path.display())]
    Locked { path: PathBuf, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What identifies finished work: the same spec text, on the same device
/// model, by the same batchd, gives the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub spec_hash: String,
    pub device_model: String,
    pub batchd_version: String,
    /// The digest of the data files' contents (empty for a spec that names
    /// none): the same spec over changed data is other work.
    #[serde(default)]
    pub data_digest: String,
}

impl CacheKey {
    pub fn new(spec_hash: &str, device_model: &str, data_digest: &str) -> CacheKey {
        CacheKey {
            spec_hash: spec_hash.to_string(),
            device_model: device_model.to_string(),
            batchd_version: env!("CARGO_PKG_VERSION").to_string(),
            data_digest: data_digest.to_string(),
        }
    }

    /// A file-name-safe digest of the key.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            &self.spec_hash,
            &self.device_model,
            &self.batchd_version,
            &self.data_digest,
        ] {
            hasher.update(part.as_bytes());
            hasher.update([0u8]);
        }
        hasher
            .finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A stored recommendation with the key it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecommendation {
    pub key: CacheKey,
    pub job: String,
    /// Seconds since the Unix epoch when it was stored.
    pub stored_at: u64,
    /// The node whose daemon computed it, on a shared state folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub recommendation: Recommendation,
}

/// How a run of a job's search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Still running (or the daemon died; see `Interrupted`).
    Running,
    Done,
    Failed,
    /// The spec changed or was removed while it ran.
    Cancelled,
    /// The daemon stopped (or crashed) while it ran; it runs again.
    Interrupted,
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunOutcome::Running => "running",
            RunOutcome::Done => "done",
            RunOutcome::Failed => "failed",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Interrupted => "interrupted",
        })
    }
}

/// One run of a job's search, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    pub spec_hash: String,
    /// The data's digest ([`CacheKey::data_digest`]).
    #[serde(default)]
    pub data_digest: String,
    pub device: TrialDevice,
    pub device_model: String,
    pub batchd_version: String,
    pub started_at_unix_s: u64,
    pub finished_at_unix_s: Option<u64>,
    pub outcome: RunOutcome,
    pub trials: usize,
    pub batch_size: Option<u64>,
    pub learning_rate: Option<f64>,
    pub error: Option<String>,
    /// The node whose daemon ran it, on a shared state folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl RunRecord {
    /// A run that starts now, by this batchd.
    pub fn started(
        spec_hash: &str,
        data_digest: &str,
        device: TrialDevice,
        device_model: &str,
    ) -> RunRecord {
        RunRecord {
            spec_hash: spec_hash.to_string(),
            data_digest: data_digest.to_string(),
            device,
            device_model: device_model.to_string(),
            batchd_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_unix_s: unix_now(),
            finished_at_unix_s: None,
            outcome: RunOutcome::Running,
            trials: 0,
            batch_size: None,
            learning_rate: None,
            error: None,
            node: None,
        }
    }

    /// Whether this run answers the given work (same spec, data, device
    /// model and batchd version).
    pub fn answers(&self, key: &CacheKey) -> bool {
        self.spec_hash == key.spec_hash
            && self.data_digest == key.data_digest
            && self.device_model == key.device_model
            && self.batchd_version == key.batchd_version
    }
}

/// A job's history file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    job: String,
    runs: Vec<RunRecord>,
}

/// Runs kept per job; older ones are dropped.
const HISTORY_RUNS_KEPT: usize = 50;

/// The largest state file read (a history or a recommendation). Real ones
/// are kilobytes; anything larger is set aside as corrupt, unread.
pub const MAX_STATE_FILE: u64 = 16 * 1024 * 1024;

/// The file whose `flock` marks the state folder as held by a daemon.
const LOCK_FILE: &str = "daemon.lock";

/// A daemon's hold on its state folder, released when dropped (or when the
/// process dies: the kernel drops the `flock`).
#[derive(Debug)]
pub struct StateLock {
    _file: fs::File,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Takes the state folder `root` for this process alone, before anything
/// in it is touched (opening the store sweeps temporary files): a second
/// daemon on the same folder is refused, naming the holder, rather than
/// marking the first one's live searches interrupted and running them
/// twice.
pub fn lock_state_folder(root: &Path) -> Result<StateLock, StateError> {
    use std::io::{Read, Seek};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(&path)(error));
        }
        let mut holder = String::new();
        let _ = Read::by_ref(&mut file)
            .take(256)
            .read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(StateError::Locked {
            path,
            holder: if holder.is_empty() {
                "a process that has not written its pid yet".into()
            } else {
                holder.to_string()
            },
        });
    }
    let me = format!("pid {} on {}\n", std::process::id(), host_name());
    let written = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(me.as_bytes()));
    written.map_err(io(&path))?;
    Ok(StateLock { _file: file })
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
    /// History files are read, changed and rewritten: one writer at a time.
    history_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl StateStore {
    /// Opens (creating when needed) the state folder.
    pub fn open(root: &Path) -> Result<StateStore, StateError> {
        Self::open_swept(root, None)
    }

    /// Opens a state folder other daemons share: only temporary files
    /// older than an hour are swept, since a younger one may be another
    /// daemon's write in progress.
    pub fn open_shared(root: &Path) -> Result<StateStore, StateError> {
        Self::open_swept(root, Some(std::time::Duration::from_secs(3600)))
    }

    fn open_swept(
        root: &Path,
        older_than: Option<std::time::Duration>,
    ) -> Result<StateStore, StateError> {
        fs::create_dir_all(root).map_err(io(root))?;
        for dir in [
            root.join("recommendations"),
            root.join("history"),
            root.join("corrupt"),
        ] {
            // Something else where a folder belongs is corrupt state like
            // any other: set it aside and go on.
            if dir.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("state");
                let aside = root.join(format!("{name}.not-a-folder.{stamp}"));
                fs::rename(&dir, &aside).map_err(io(&dir))?;
                tracing::warn!(
                    "{} was not a folder; moved it to {} and started afresh",
                    dir.display(),
                    aside.display()
                );
            }
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        for dir in [
            root.to_path_buf(),
            root.join("recommendations"),
            root.join("history"),
        ] {
            let swept = sweep_temporaries_older_than(&dir, older_than);
            if swept > 0 {
                tracing::info!(
                    "removed {swept} temporary files an interrupted write left in {}",
                    dir.display()
                );
            }
        }
        Ok(StateStore {
            root: root.to_path_buf(),
            history_lock: Default::default(),
        })
    }

    fn history_path(&self, job: &str) -> PathBuf {
        // Job names are validated to [A-Za-z0-9._-]; anything else is hashed
        // so a name can never point outside the folder.
        let safe = !job.is_empty()
            && !job.starts_with('.')
            && job
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        let file = if safe {
            job.to_string()
        } else {
            CacheKey::new(job, "", "").digest()
        };
        self.root.join("history").join(format!("{file}.json"))
    }

    /// A job's runs, oldest first, and a warning when its file was corrupt
    /// (and has been set aside).
    pub fn history(&self, job: &str) -> (Vec<RunRecord>, Option<String>) {
        let _guard = self.history_lock.lock();
        self.read_history(job)
    }

    fn read_history(&self, job: &str) -> (Vec<RunRecord>, Option<String>) {
        let path = self.history_path(job);
        match read_json::<History>(&path) {
            Ok(Some(history)) => (history.runs, None),
            Ok(None) => (Vec::new(), None),
            Err(reason) => (Vec::new(), Some(self.set_aside(&path, &reason.to_string()))),
        }
    }

    /// Appends a run to a job's history.
    pub fn record_run(&self, job: &str, run: &RunRecord) -> Result<(), StateError> {
        self.change_history(job, |runs| runs.push(run.clone()))
    }

    /// Rewrites the latest run of a job that started at `started_at_unix_s`
    /// with `spec_hash`.
    pub fn finish_run(
        &self,
        job: &str,
        spec_hash: &str,
        started_at_unix_s: u64,
        update: impl FnOnce(&mut RunRecord),
    ) -> Result<(), StateError> {
        self.change_history(job, |runs| {
            if let Some(run) = runs.iter_mut().rev().find(|r| {
                r.spec_hash == spec_hash
                    && r.started_at_unix_s == started_at_unix_s
                    && r.outcome == RunOutcome::Running
            }) {
                update(run);
                run.finished_at_unix_s = Some(unix_now());
            }
        })
    }

    fn change_history(
        &self,
        job: &str,
        change: impl FnOnce(&mut Vec<RunRecord>),
    ) -> Result<(), StateError> {
        let _guard = self.history_lock.lock();
        // Other daemons on a shared state folder change histories too: the
        // read, change and rewrite hold the file's lock against them.
        let _across_processes =
            FileLock::exclusive(&self.history_path(job).with_extension("lock"))?;
        let (mut runs, warning) = self.read_history(job);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        change(&mut runs);
        if runs.len() > HISTORY_RUNS_KEPT {
            runs.drain(..runs.len() - HISTORY_RUNS_KEPT);
        }
        let history = History {
            job: job.to_string(),
            runs,
        };
        write_atomically(
            &self.history_path(job),
            &serde_json::to_vec_pretty(&history)?,
        )?;
        Ok(())
    }

    /// Marks `job`'s runs of `key` that `node`'s daemon left `running` as
    /// interrupted, for `reason`: another node took its work over.
    pub fn interrupt_runs_of(
        &self,
        job: &str,
        key: &CacheKey,
        node: &str,
        reason: &str,
    ) -> Result<(), StateError> {
        self.change_history(job, |runs| {
            for run in runs.iter_mut().filter(|r| {
                r.outcome == RunOutcome::Running
                    && r.answers(key)
                    && r.node.as_deref() == Some(node)
            }) {
                run.outcome = RunOutcome::Interrupted;
                run.error = Some(reason.to_string());
                run.finished_at_unix_s = Some(unix_now());
            }
        })
    }

    /// Marks runs a previous daemon left `running` (it crashed or was
    /// killed) as interrupted. Returns how many there were.
    pub fn mark_interrupted_runs(&self) -> usize {
        self.mark_interrupted_runs_of(None)
    }

    /// [`Self::mark_interrupted_runs`] for the runs of one node only (`None`:
    /// every run): on a shared state folder, other nodes' runs are theirs
    /// (their leases say whether they live).
    pub fn mark_interrupted_runs_of(&self, node: Option<&str>) -> usize {
        let Ok(entries) = fs::read_dir(self.root.join("history")) else {
            return 0;
        };
        let mut count = 0;
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let history = {
                let _guard = self.history_lock.lock();
                match read_json::<History>(&path) {
                    Ok(Some(history)) => history,
                    Ok(None) => continue,
                    Err(reason) => {
                        tracing::warn!("{}", self.set_aside(&path, &reason.to_string()));
                        continue;
                    }
                }
            };
            let job = history.job.clone();
            let _ = self.change_history(&job, |runs| {
                for run in runs
                    .iter_mut()
                    .filter(|r| r.outcome == RunOutcome::Running)
                    .filter(|r| node.is_none() || r.node.as_deref() == node)
                {
                    run.outcome = RunOutcome::Interrupted;
                    run.error = Some("the daemon stopped while this run was in progress".into());
                    count += 1;
                }
            });
        }
        count
    }

    fn recommendation_path(&self, key: &CacheKey) -> PathBuf {
        self.root
            .join("recommendations")
            .join(format!("{}.json", key.digest()))
    }

    /// Stores a recommendation atomically.
    pub fn put_recommendation(
        &self,
        key: &CacheKey,
        job: &str,
        recommendation: &Recommendation,
    ) -> Result<(), StateError> {
        self.put_recommendation_from(key, job, recommendation, None)
    }

    /// [`Self::put_recommendation`], saying which node computed it.
    pub fn put_recommendation_from(
        &self,
        key: &CacheKey,
        job: &str,
        recommendation: &Recommendation,
        node: Option<&str>,
    ) -> Result<(), StateError> {
        let stored = StoredRecommendation {
            key: key.clone(),
            job: job.to_string(),
            stored_at: unix_now(),
            node: node.map(str::to_string),
            recommendation: recommendation.clone(),
        };
        // Compact: indenting its point series would double the file
        // (`jq .` reads it as well).
        write_atomically(
            &self.recommendation_path(key),
            &serde_json::to_vec(&stored)?,
        )?;
        Ok(())
    }

    /// Forgets the recommendation for `key` (to tune the job again).
    pub fn remove_recommendation(&self, key: &CacheKey) -> Result<(), StateError> {
        let path = self.recommendation_path(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The stored recommendation for `key`, if any. A corrupt file, or one
    /// whose key does not match (a digest collision or a hand copy), is
    /// moved aside and reported in the returned warning.
    pub fn get_recommendation(
        &self,
        key: &CacheKey,
    ) -> (Option<StoredRecommendation>, Option<String>) {
        let path = self.recommendation_path(key);
        match read_json::<StoredRecommendation>(&path) {
            Ok(None) => (None, None),
            // Checked on every read: a document of another version parses
            // (unknown fields are ignored) but does not mean the same.
            Ok(Some(stored)) if stored.recommendation.schema_version != SCHEMA_VERSION => (
                None,
                Some(self.set_aside(
                    &path,
                    &format!(
                        "it holds a recommendation of schema version {}; this batchd reads version {SCHEMA_VERSION}",
                        stored.recommendation.schema_version
                    ),
                )),
            ),
            Ok(Some(stored)) if stored.key == *key => (Some(stored), None),
            Ok(Some(_)) => (
                None,
                Some(self.set_aside(&path, "its key does not match its file name")),
            ),
            Err(reason) => {
                let reason = match stored_schema_version(&path) {
                    Some(version) if version != SCHEMA_VERSION => format!(
                        "it holds a recommendation of schema version {version}; this batchd reads version {SCHEMA_VERSION}"
                    ),
                    _ => reason.to_string(),
                };
                (None, Some(self.set_aside(&path, &reason)))
            }
        }
    }

    /// Moves a bad file into `corrupt/` and says so.
    fn set_aside(&self, path: &Path, reason: &str) -> String {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = self.root.join("corrupt").join(format!("{name}.{stamp}"));
        match fs::rename(path, &target) {
            Ok(()) => format!(
                "state file {} is unusable ({reason}); moved to {}",
                path.display(),
                target.display()
            ),
            Err(e) => format!(
                "state file {} is unusable ({reason}) and could not be moved aside: {e}",
                path.display()
            ),
        }
    }
}

/// The schema version of the recommendation a stored file holds; 1 for
/// the flat documents that had no version.
fn stored_schema_version(path: &Path) -> Option<u32> {
    let bytes = crate::spec::read::read_regular_file(path, MAX_STATE_FILE).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let recommendation = value.get("recommendation")?.as_object()?;
    Some(match recommendation.get("schema_version") {
        Some(version) => u32::try_from(version.as_u64()?).ok()?,
        None => 1,
    })
}

/// Reads JSON: `Ok(None)` when the file does not exist, `Err` with the
/// reason when it exists but cannot be used. The file is opened without
/// blocking and checked on the opened descriptor, so a FIFO, a device (a
/// link to `/dev/zero`) or a huge file is refused, never read.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, Unusable> {
    use crate::spec::read::ReadError;
    match crate::spec::read::read_regular_file(path, MAX_STATE_FILE) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(Unusable::Json),
        Err(_) if path.symlink_metadata().is_err() => Ok(None),
        Err(ReadError::TooLarge { size, limit }) => Err(Unusable::TooLarge { size, limit }),
        Err(e) => Err(Unusable::File(e)),
    }
}

/// Why a state file that exists cannot be used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("it {0}")]
    File(crate::spec::read::ReadError),
    #[error("it is {size} bytes, over the state-file limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Json(serde_json::Error),
}

/// This machine's name, to say where a lock's holder runs.
pub fn host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|n| n.trim().to_string())
        .unwrap_or_else(|_| "this machine".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recommendation(batch: u64) -> Recommendation {
        let mut recommendation = Recommendation::example(batch);
        recommendation.memory.max_fit.batch_size = Some(batch * 4);
        recommendation
    }

    #[test]
    fn recommendations_survive_a_reopen_and_follow_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::new("abc", "NVIDIA H200", "");
        {
            let store = StateStore::open(dir.path()).unwrap();
            store
                .put_recommendation(&key, "j", &recommendation(64))
                .unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let (stored, warning) = store.get_recommendation(&key);
        assert!(warning.is_none());
        assert_eq!(stored.unwrap().recommendation.batch_size, 64);
        // Another device model or spec is other work.
        assert!(store
            .get_recommendation(&CacheKey::new("abc", "cpu", ""))
            .0
            .is_none());
        assert!(store
            .get_recommendation(&CacheKey::new("abd", "NVIDIA H200", ""))
            .0
            .is_none());
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("recommendations"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn a_version_1_recommendation_is_set_aside_naming_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let key = CacheKey::new("abc", "cpu", "");
        let flat = serde_json::json!({
            "key": key,
            "job": "j",
            "stored_at": 1,
            "recommendation": {"job": "j", "batch_size": 64, "max_fit_batch_size": 256},
        });
        fs::write(store.recommendation_path(&key), flat.to_string()).unwrap();
        let (stored, warning) = store.get_recommendation(&key);
        assert!(stored.is_none());
        let warning = warning.unwrap();
        assert!(
            warning.contains("schema version 1") && warning.contains("reads version 2"),
            "{warning}"
        );
        assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let key = CacheKey::new("abc", "cpu", "");
        fs::write(store.recommendation_path(&key), b"{ half a recommen").unwrap();
        let (stored, warning) = store.get_recommendation(&key);
        assert!(stored.is_none());
        let warning = warning.unwrap();
        assert!(
            warning.contains("unusable") && warning.contains("corrupt"),
            "{warning}"
        );
        assert!(!store.recommendation_path(&key).exists());
        assert_eq!(fs::read_dir(dir.path().join("corrupt")).unwrap().count(), 1);
        // The slot is usable again.
        store
            .put_recommendation(&key, "j", &recommendation(8))
            .unwrap();
        assert_eq!(
            store
                .get_recommendation(&key)
                .0
                .unwrap()
                .recommendation
                .batch_size,
            8
        );
    }

    fn run(hash: &str, started: u64) -> RunRecord {
        RunRecord {
            started_at_unix_s: started,
            ..RunRecord::started(hash, "", TrialDevice::Cpu, "cpu")
        }
    }

    #[test]
    fn history_records_runs_and_marks_a_crashed_daemons_runs_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        store.record_run("mlp", &run("h1", 10)).unwrap();
        store
            .finish_run("mlp", "h1", 10, |r| {
                r.outcome = RunOutcome::Done;
                r.batch_size = Some(64);
            })
            .unwrap();
        store.record_run("mlp", &run("h2", 20)).unwrap();
        // A new daemon on the same folder: the second run never finished.
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.mark_interrupted_runs(), 1);
        let (runs, warning) = store.history("mlp");
        assert!(warning.is_none());
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].outcome, RunOutcome::Done);
        assert_eq!(runs[0].batch_size, Some(64));
        assert!(runs[0].finished_at_unix_s.is_some());
        assert_eq!(runs[1].outcome, RunOutcome::Interrupted);
        assert!(runs[1].answers(&CacheKey::new("h2", "cpu", "")));
        assert!(!runs[1].answers(&CacheKey::new("h2", "NVIDIA H100", "")));
    }

    #[test]
    fn history_is_bounded_and_survives_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        for i in 0..(HISTORY_RUNS_KEPT as u64 + 5) {
            store.record_run("j", &run("h", i)).unwrap();
        }
        let (runs, _) = store.history("j");
        assert_eq!(runs.len(), HISTORY_RUNS_KEPT);
        assert_eq!(runs[0].started_at_unix_s, 5);
        fs::write(store.history_path("j"), b"[{\"trunc").unwrap();
        let (runs, warning) = store.history("j");
        assert!(runs.is_empty());
        assert!(warning.unwrap().contains("corrupt"));
        store.record_run("j", &run("h", 99)).unwrap();
        assert_eq!(store.history("j").0.len(), 1);
        // Names that are not plain file names never leave the folder.
        assert!(store
            .history_path("../../etc/passwd")
            .starts_with(dir.path().join("history")));
    }
}
