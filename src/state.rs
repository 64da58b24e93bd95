//! Persistent state under the daemon's state folder: recommendations, kept
//! so a restart does not redo finished work.
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

use crate::search::Recommendation;

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
}

impl CacheKey {
    pub fn new(spec_hash: &str, device_model: &str) -> CacheKey {
        CacheKey {
            spec_hash: spec_hash.to_string(),
            device_model: device_model.to_string(),
            batchd_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// A file-name-safe digest of the key.
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [&self.spec_hash, &self.device_model, &self.batchd_version] {
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
    pub recommendation: Recommendation,
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateStore {
    root: PathBuf,
}

impl StateStore {
    /// Opens (creating when needed) the state folder.
    pub fn open(root: &Path) -> Result<StateStore, StateError> {
        for dir in [
            root.to_path_buf(),
            root.join("recommendations"),
            root.join("corrupt"),
        ] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(StateStore {
            root: root.to_path_buf(),
        })
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
        let stored = StoredRecommendation {
            key: key.clone(),
            job: job.to_string(),
            stored_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            recommendation: recommendation.clone(),
        };
        write_atomically(
            &self.recommendation_path(key),
            &serde_json::to_vec_pretty(&stored)?,
        )
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
            Ok(Some(stored)) if stored.key == *key => (Some(stored), None),
            Ok(Some(_)) => (
                None,
                Some(self.set_aside(&path, "its key does not match its file name")),
            ),
            Err(reason) => (None, Some(self.set_aside(&path, &reason))),
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

/// Reads JSON: `Ok(None)` when the file does not exist, `Err` with the
/// reason when it exists but cannot be used.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new
/// one, never a mix: temporary file, fsync, rename, fsync of the folder.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let temporary = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut file = fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(io(path))?;
    if let Ok(folder) = fs::File::open(dir) {
        // Makes the rename itself durable; failure here loses nothing
        // already written.
        let _ = folder.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Objective;
    use crate::search::maxfit::MaxFit;
    use crate::search::recommend::PrecisionAdvice;

    fn recommendation(batch: u64) -> Recommendation {
        Recommendation {
            job: "j".into(),
            policy: "balanced".into(),
            objective: Objective::Goodput,
            device: "cpu".into(),
            batchd_version: "test".into(),
            batch_size: batch,
            world_size: 1,
            global_batch_size: batch,
            gradient_accumulation_steps: 1,
            effective_batch_size: batch,
            learning_rate: Some(1e-3),
            lr_rule: None,
            warmup_steps: None,
            updates_per_epoch: None,
            total_updates: None,
            dataset_size: None,
            max_fit_batch_size: batch * 4,
            max_fit: MaxFit {
                batch_size: Some(batch * 4),
                peak_bytes: Some(1 << 20),
                budget_bytes: 1 << 30,
                first_failure: None,
                memory_model: None,
                capped_by_max_batch: false,
                flaky_batch_sizes: Vec::new(),
                trials: 4,
            },
            memory_limit_bytes: 1 << 30,
            memory_limit_source: "test".into(),
            memory_budget_bytes: 1 << 30,
            memory_headroom_fraction: 0.1,
            expected_peak_memory_bytes: None,
            expected_samples_per_second: None,
            throughput_curve: Vec::new(),
            throughput_plateau_batch_size: None,
            gradient_noise_scale: None,
            gradient_noise: None,
            goodput_curve: Vec::new(),
            lr_range_tests: Vec::new(),
            lr_confirmations: Vec::new(),
            best_lrs: Vec::new(),
            precision: PrecisionAdvice {
                measured: "f32".into(),
                recommended: "f32".into(),
                reason: String::new(),
            },
            rationale: Vec::new(),
            partial: false,
            partial_reason: None,
            trials: Vec::new(),
            trial_count: 0,
            seconds: 1.0,
        }
    }

    #[test]
    fn recommendations_survive_a_reopen_and_follow_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::new("abc", "NVIDIA H200");
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
            .get_recommendation(&CacheKey::new("abc", "cpu"))
            .0
            .is_none());
        assert!(store
            .get_recommendation(&CacheKey::new("abd", "NVIDIA H200"))
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
    fn a_corrupt_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let key = CacheKey::new("abc", "cpu");
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

    #[test]
    fn overwrites_are_atomic_replacements() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }
}
