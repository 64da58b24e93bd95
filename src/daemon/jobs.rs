//! The job table and its reconciliation with the jobs folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Shared;
pub use crate::job::JobState;
use crate::machine::TrialDevice;
use crate::search::{Phase, Recommendation};
use crate::spec::{load_spec_file, JobSpec};
use crate::state::{CacheKey, RunOutcome, StoredRecommendation};
use crate::validation::{FieldError, Syntax};

/// One job as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Job {
    pub name: String,
    #[schema(value_type = String)]
    pub source_path: PathBuf,
    pub state: JobState,
    /// The device its search runs (or ran) on.
    pub device: Option<TrialDevice>,
    /// Current phase of a running search.
    pub phase: Option<Phase>,
    pub trials_done: usize,
    /// Validation errors of an invalid spec.
    pub errors: Vec<FieldError>,
    /// Why a job failed.
    pub error: Option<String>,
    /// The recommendation came from the state folder, not from new trials.
    pub reused: bool,
    /// The device model its work is keyed by, once known (a search
    /// started, or a stored answer found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    /// While `waiting`: the node whose daemon holds the lease on this work
    /// (a shared state folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_holder: Option<String>,
    /// The node whose daemon computed the recommendation, when it was
    /// another one on the shared state folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tuned_by: Option<String>,
    /// When it began waiting on another node (Unix seconds): a failure
    /// there since then is this job's failure too.
    #[serde(skip)]
    pub(super) waiting_since: Option<u64>,
    /// The identity of the data files the spec reads (a digest of their
    /// contents): changed data is other work, tuned again.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data_digest: String,
    /// Shared: listing the jobs (every second under `batchd jobs
    /// --watch`) clones the table under its lock, and a reference count is
    /// all a recommendation costs there.
    #[serde(skip)]
    pub recommendation: Option<std::sync::Arc<Recommendation>>,
    /// Documents show the spec by its hash alone.
    #[serde(rename = "spec_hash", serialize_with = "serialize_spec_hash")]
    #[schema(value_type = Option<String>)]
    pub(super) spec: Option<JobSpec>,
}

fn serialize_spec_hash<S: serde::Serializer>(
    spec: &Option<JobSpec>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_some(&spec.as_ref().map(|spec| &spec.content_hash))
}

impl Job {
    /// The content hash of a valid job's spec.
    pub fn spec_hash(&self) -> Option<&str> {
        self.spec.as_ref().map(|spec| spec.content_hash.as_str())
    }

    /// What a valid job's work is: its spec and its data.
    pub fn identity(&self) -> Option<(&str, &str)> {
        Some((self.spec_hash()?, self.data_digest.as_str()))
    }

    /// Makes the job `done` with a stored answer (kept by this daemon, or
    /// by another node when it names one other than `own_node`).
    pub(super) fn take_stored(&mut self, stored: StoredRecommendation, own_node: Option<&str>) {
        self.state = JobState::Done;
        self.reused = true;
        self.device = Some(stored.recommendation.device);
        self.device_model = Some(stored.key.device_model.clone());
        self.tuned_by = stored.node.filter(|n| Some(n.as_str()) != own_node);
        self.lease_holder = None;
        self.waiting_since = None;
        self.trials_done = stored.recommendation.evidence.trials.len();
        // One stored before curves were cut keeps them whole on disk;
        // served and shown, it is cut like a new one.
        self.recommendation = Some(std::sync::Arc::new(
            stored.recommendation.with_compact_curves(),
        ));
    }

    fn invalid(name: String, path: PathBuf, errors: Vec<FieldError>) -> Job {
        Job {
            name,
            source_path: path,
            state: JobState::Invalid,
            device: None,
            phase: None,
            trials_done: 0,
            errors,
            error: None,
            reused: false,
            device_model: None,
            lease_holder: None,
            tuned_by: None,
            waiting_since: None,
            data_digest: String::new(),
            recommendation: None,
            spec: None,
        }
    }

    /// A valid spec's job, restored from the state folder when its work
    /// was already done (or already failed) on this kind of device.
    fn restore(shared: &Shared, path: PathBuf, spec: JobSpec, data_digest: String) -> Job {
        let name = spec.name.clone();
        let mut job = Job {
            name: name.clone(),
            source_path: path,
            state: JobState::Queued,
            device: None,
            phase: None,
            trials_done: 0,
            errors: Vec::new(),
            error: None,
            reused: false,
            device_model: None,
            lease_holder: None,
            tuned_by: None,
            waiting_since: None,
            data_digest,
            recommendation: None,
            spec: None,
        };
        let keys: Vec<CacheKey> = shared
            .models_for(spec.search.device)
            .iter()
            .map(|model| CacheKey::new(&spec.content_hash, model, &job.data_digest))
            .collect();
        for key in &keys {
            let (stored, warning) = shared.store.get_recommendation(key);
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            if let Some(stored) = stored {
                job.take_stored(stored, shared.node());
                if job.tuned_by.is_some() {
                    shared.metrics.shared_results.inc();
                }
                tracing::info!(job = %name, "job {name}: recommendation reused from the state folder");
                job.spec = Some(spec);
                return job;
            }
        }
        // A run that failed is finished work too; a retune runs it again.
        let (runs, warning) = shared.store.history(&name);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        if let Some(run) = runs.last().filter(|run| {
            run.outcome == RunOutcome::Failed && keys.iter().any(|key| run.answers(key))
        }) {
            job.state = JobState::Failed;
            job.error = run.error.clone();
            job.device = Some(run.device);
            job.trials_done = run.trials;
            tracing::info!(job = %name, "job {name}: failed before with this spec (POST .../retune to retry)");
        } else {
            tracing::info!(job = %name, "job {name}: queued");
        }
        job.spec = Some(spec);
        job
    }
}

/// Editor droppings and partial downloads, which are never specs. Any
/// other entry with a spec's extension is read, so that a FIFO, a folder
/// or a dangling link named `x.toml` becomes an `invalid` job saying what
/// it is rather than being skipped without a word.
fn is_spec_name(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && !name.starts_with('#')
        && Syntax::from_path(path).is_some()
}

/// One file of the jobs folder as a rescan read it.
struct Found {
    path: PathBuf,
    loaded: Result<JobSpec, Vec<FieldError>>,
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Reads every spec of the jobs folder. No lock is held: a slow or hostile
/// file delays only the rescan.
fn read_folder(shared: &Shared) -> Vec<Found> {
    let settings = shared.settings();
    let dir = &settings.config.jobs_dir;
    let limit = settings.config.max_spec_file.bytes();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_spec_name(p))
            .collect(),
        Err(error) => {
            tracing::warn!("cannot read the jobs folder {}: {error}", dir.display());
            Vec::new()
        }
    };
    files.sort();
    // Valid specs whose file has not changed since the last rescan (same
    // inode, size, modification and change times, same settings) are not
    // read or parsed again: an idle folder of a thousand jobs costs a
    // thousand stats per rescan, not a thousand parses. The trust check
    // (permissions) runs every time, since a chmod elsewhere can change it.
    let generation = settings.generation;
    // Taken out for the rescan (rescans never overlap), so no lock is held
    // while files are read; what this rescan saw goes back at the end.
    let previous = std::mem::take(
        &mut *shared
            .spec_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let mut cache = std::collections::HashMap::new();
    let found = files
        .into_iter()
        .map(|path| {
            let stamp = FileStamp::of(&path, generation);
            let cached = previous
                .get(&path)
                .filter(|(seen, _)| stamp.is_some() && *seen == stamp)
                .map(|(_, spec)| spec.clone());
            let loaded = match cached {
                // Its data files may have gone since: those are checked.
                Some(spec) => {
                    let mut problems = crate::validation::Problems::new();
                    crate::spec::check_data_files(&spec, &mut problems);
                    problems.finish(&path.display().to_string(), spec)
                }
                None => load_spec_file(&path, &settings.policies, limit),
            };
            let loaded = loaded.and_then(|spec| super::trust::trusted(&path, spec));
            if let Ok(spec) = &loaded {
                cache.insert(path.clone(), (stamp, spec.clone()));
            }
            Found {
                path,
                loaded: loaded.map_err(|e| e.errors),
            }
        })
        .collect();
    *shared
        .spec_cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = cache;
    found
}

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

/// One version of a spec file, for the rescan's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    version: FileVersion,
    /// The settings (policies) the spec was resolved with.
    generation: u64,
}

impl FileStamp {
    fn of(path: &Path, generation: u64) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        meta.is_file().then(|| FileStamp {
            version: FileVersion::of(&meta),
            generation,
        })
    }
}

/// What the folder asks the table to hold: one entry per key.
enum Wanted {
    Valid(PathBuf, Box<JobSpec>),
    Invalid(PathBuf, Vec<FieldError>),
}

/// Gives every file its job-table key. A job name belongs to the file that
/// holds it in the table already (else to the first file in name order);
/// any other file naming it is an `invalid` entry that names both files,
/// and the job that owns the name runs undisturbed. An invalid file is
/// keyed by its stem unless that is taken, then by its whole file name, so
/// `x.toml` and `x.json` never collapse into one entry.
fn assign_keys(found: Vec<Found>, owners: &BTreeMap<String, PathBuf>) -> BTreeMap<String, Wanted> {
    let mut wanted: BTreeMap<String, Wanted> = BTreeMap::new();
    let mut invalid: Vec<(PathBuf, Vec<FieldError>)> = Vec::new();
    let (mut valid, failed): (Vec<Found>, Vec<Found>) =
        found.into_iter().partition(|f| f.loaded.is_ok());
    for f in failed {
        invalid.push((f.path, f.loaded.err().unwrap_or_default()));
    }
    // The current owner of each name goes first.
    valid.sort_by_key(|f| {
        let name = f
            .loaded
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        (owners.get(&name) != Some(&f.path), f.path.clone())
    });
    for f in valid {
        let Ok(spec) = f.loaded else { continue };
        match wanted.get(&spec.name) {
            Some(Wanted::Valid(owner, _)) => {
                let message = format!(
                    "job `{}` is already defined by {}; {} names it too: rename one of them",
                    spec.name,
                    file_name(owner),
                    file_name(&f.path)
                );
                invalid.push((f.path, vec![FieldError::new("name", message)]));
            }
            _ => {
                wanted.insert(spec.name.clone(), Wanted::Valid(f.path, Box::new(spec)));
            }
        }
    }
    invalid.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, errors) in invalid {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("job")
            .to_string();
        let name = file_name(&path);
        let key = [stem, name.clone()]
            .into_iter()
            .chain((1..).map(|n| format!("{name}~{n}")))
            .find(|key| !wanted.contains_key(key))
            .expect("an endless list has a free key");
        wanted.insert(key, Wanted::Invalid(path, errors));
    }
    wanted
}

/// Brings the job table in line with the jobs folder: new or changed specs
/// are (re)queued, invalid ones become `invalid` jobs with their errors,
/// removed ones are retired (a running search is cancelled; the
/// recommendation stays in the state folder and is reused if the same spec
/// comes back). Files are read, and stored work looked up, with no lock on
/// the job table; only the final swap takes it.
pub fn reconcile(shared: &Shared) {
    // One rescan at a time (the watcher, POST and DELETE all ask for one).
    let _one_at_a_time = shared
        .reconciling
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = read_folder(shared);
    shared.metrics.rescans.inc();
    type Identity = Option<(String, String)>;
    let snapshot: BTreeMap<String, (PathBuf, Identity, JobState)> = match shared.jobs.lock() {
        Ok(jobs) => jobs
            .iter()
            .map(|(name, job)| {
                let identity = job.identity().map(|(s, d)| (s.to_string(), d.to_string()));
                let entry = (job.source_path.clone(), identity, job.state);
                (name.clone(), entry)
            })
            .collect(),
        Err(_) => return,
    };
    let owners = snapshot
        .iter()
        .filter(|(_, (_, _, state))| *state != JobState::Invalid)
        .map(|(name, (path, _, _))| (name.clone(), path.clone()))
        .collect();
    let wanted = assign_keys(found, &owners);
    // New and changed jobs, restored from the state folder outside the lock.
    let mut replacements: Vec<(String, Job)> = Vec::new();
    // Unchanged jobs whose spec now lives in another file (renamed): the
    // job follows its file, so a DELETE removes the right one.
    let mut moved: Vec<(String, PathBuf)> = Vec::new();
    for (key, want) in wanted.iter() {
        let current = snapshot.get(key);
        match want {
            Wanted::Valid(path, spec) => {
                // Hashed when the data files changed since the last rescan.
                let data = shared.data_digests.digest(spec);
                let unchanged = current.is_some_and(|(_, identity, state)| {
                    identity.as_ref().is_some_and(|(hash, old_data)| {
                        *hash == spec.content_hash && *old_data == data
                    }) && *state != JobState::Invalid
                });
                if unchanged && current.is_some_and(|(old, _, _)| old != path) {
                    moved.push((key.clone(), path.clone()));
                }
                if !unchanged {
                    replacements.push((
                        key.clone(),
                        Job::restore(shared, path.clone(), (**spec).clone(), data),
                    ));
                }
            }
            Wanted::Invalid(path, errors) => {
                replacements.push((
                    key.clone(),
                    Job::invalid(key.clone(), path.clone(), errors.clone()),
                ));
            }
        }
    }
    shared.data_digests.forget_unused();
    let mut to_queue = Vec::new();
    {
        let Ok(mut jobs) = shared.jobs.lock() else {
            return;
        };
        for (key, path) in moved {
            if let Some(job) = jobs.get_mut(&key) {
                tracing::info!(job = %key, "job {key}: its spec moved from {} to {}",
                    job.source_path.display(),
                    path.display()
                );
                job.source_path = path;
            }
        }
        for (key, job) in replacements {
            let same_invalid = jobs.get(&key).is_some_and(|j| {
                j.state == JobState::Invalid
                    && job.state == JobState::Invalid
                    && j.errors == job.errors
                    && j.source_path == job.source_path
            });
            if same_invalid {
                continue;
            }
            shared.cancel_if_running(&key);
            if job.state == JobState::Invalid {
                tracing::warn!(
                    job = %key,
                    "job {} is invalid: {}",
                    key,
                    job.errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if job.state == JobState::Queued {
                to_queue.push(key.clone());
            }
            jobs.insert(key, job);
        }
        let retired: Vec<String> = jobs
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in retired {
            tracing::info!(
                job = %name,
                "job {}: spec removed, job retired (its recommendation stays in the state folder)",
                name
            );
            shared.cancel_if_running(&name);
            jobs.remove(&name);
        }
    }
    for name in to_queue {
        shared.enqueue(&name);
    }
}
