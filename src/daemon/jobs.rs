//! The jobs folder: reading it (with a cache of unchanged specs) and
//! bringing the job table in line with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::data_identity::{DataDigests, FileVersion};
use super::table::{Change, Entry, Rescanned, Status, Work};
use super::Service;
pub use crate::job::JobState;
use crate::spec::{load_spec_file, JobSpec};
use crate::state::{CacheKey, RunOutcome};
use crate::validation::{FieldError, Syntax};

/// The rescans of the jobs folder and what they remember between runs.
#[derive(Default)]
pub struct Folder {
    /// Held for a whole rescan, so rescans never interleave.
    reconciling: Mutex<()>,
    /// The specs the last rescan read, by file, with the file's stamp.
    spec_cache: Mutex<HashMap<PathBuf, (Option<FileStamp>, JobSpec)>>,
    /// The digests of the jobs' data files, hashed again only on change.
    data_digests: DataDigests,
    /// Wakes the watcher for an immediate rescan.
    rescan: Notify,
    /// Spec files parsed by rescans (not taken from the cache).
    parsed: AtomicU64,
}

impl Folder {
    /// Asks the watcher for a rescan now.
    pub fn ask_rescan(&self) {
        self.rescan.notify_one();
    }

    /// Resolves when a rescan is asked for.
    pub async fn rescan_asked(&self) {
        self.rescan.notified().await;
    }

    /// Spec files the rescans have parsed so far.
    pub fn parsed(&self) -> u64 {
        self.parsed.load(Ordering::Relaxed)
    }

    /// Remembers `spec` as what `path` holds under the settings of
    /// `generation`, so the next rescan takes it without parsing (POST
    /// parsed it already). A rescan running meanwhile may drop it: the
    /// file is then parsed, which costs time, not correctness.
    pub fn remember(&self, path: &Path, generation: u64, spec: JobSpec) {
        let stamp = FileStamp::of(path, generation);
        if stamp.is_some() {
            self.spec_cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(path.to_path_buf(), (stamp, spec));
        }
    }
}

/// A valid spec's job, in the state its stored work puts it in: done when
/// an answer is stored for it on this kind of device, failed when its last
/// run of this work failed, else queued. Reads the state folder.
fn restore(service: &Service, path: PathBuf, spec: JobSpec, data_digest: String) -> Entry {
    let name = spec.name.clone();
    let keys: Vec<CacheKey> = service
        .models_for(spec.search.device)
        .iter()
        .map(|model| CacheKey::new(&spec.content_hash, model, &data_digest))
        .collect();
    let work = Work::new(spec, data_digest);
    for key in &keys {
        let (stored, warning) = service.store().get_recommendation(key);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        if let Some(stored) = stored {
            let status = Status::stored(stored, service.node());
            if matches!(
                &status,
                Status::Done {
                    tuned_by: Some(_),
                    ..
                }
            ) {
                service.metrics().shared_results.inc();
            }
            tracing::info!(job = %name, "job {name}: recommendation reused from the state folder");
            return Entry::valid(path, work, status);
        }
    }
    // A run that failed is finished work too; a retune runs it again.
    let (runs, warning) = service.store().history(&name);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    if let Some(run) = runs
        .last()
        .filter(|run| run.outcome == RunOutcome::Failed && keys.iter().any(|key| run.answers(key)))
    {
        tracing::info!(job = %name, "job {name}: failed before with this spec (POST .../retune to retry)");
        let status = Status::Failed {
            error: run.error.clone().unwrap_or_default(),
            device: Some(run.device),
            trials_done: run.trials,
        };
        return Entry::valid(path, work, status);
    }
    tracing::info!(job = %name, "job {name}: queued");
    Entry::valid(path, work, Status::Queued)
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
fn read_folder(service: &Service) -> Vec<Found> {
    let settings = service.settings();
    let folder = service.folder();
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
        &mut *folder
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
                None => {
                    folder.parsed.fetch_add(1, Ordering::Relaxed);
                    load_spec_file(&path, &settings.policies, limit)
                }
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
    *folder
        .spec_cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = cache;
    found
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
/// the job table; one transition applies what was found.
pub fn reconcile(service: &Service) {
    let folder = service.folder();
    // One rescan at a time (the watcher, POST and DELETE all ask for one).
    let _one_at_a_time = folder
        .reconciling
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let found = read_folder(service);
    service.metrics().rescans.inc();
    let seen = service.table().identities();
    let owners = seen
        .iter()
        .filter(|(_, s)| s.state != JobState::Invalid)
        .map(|(name, s)| (name.clone(), s.source_path.clone()))
        .collect();
    let wanted = assign_keys(found, &owners);
    let mut rescanned = Rescanned {
        keep: wanted.keys().cloned().collect::<HashSet<String>>(),
        ..Rescanned::default()
    };
    for (key, want) in wanted {
        let current = seen.get(&key);
        match want {
            Wanted::Valid(path, spec) => {
                // Hashed when the data files changed since the last rescan.
                let data = folder.data_digests.digest(&spec);
                let unchanged = current.is_some_and(|s| {
                    s.state != JobState::Invalid
                        && s.identity.as_ref().is_some_and(|(hash, old_data)| {
                            *hash == spec.content_hash && *old_data == data
                        })
                });
                if unchanged {
                    // The job follows its file, so a DELETE removes the
                    // right one.
                    if current.is_some_and(|s| s.source_path != path) {
                        rescanned.moved.push((key, path));
                    }
                } else {
                    let entry = restore(service, path, *spec, data);
                    rescanned.replace.push((key, entry));
                }
            }
            Wanted::Invalid(path, errors) => {
                rescanned.replace.push((key, Entry::invalid(path, errors)));
            }
        }
    }
    folder.data_digests.forget_unused();
    for change in service.table().apply(rescanned) {
        match change {
            Change::Moved { name, from, to } => tracing::info!(
                job = %name,
                "job {name}: its spec moved from {} to {}",
                from.display(),
                to.display()
            ),
            Change::Invalid(name, errors) => tracing::warn!(
                job = %name,
                "job {name} is invalid: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Change::Retired(name) => tracing::info!(
                job = %name,
                "job {name}: spec removed, job retired (its recommendation stays in the state folder)"
            ),
            Change::Queued(_) | Change::Replaced(..) => {}
        }
    }
}
