//! The job table and its reconciliation with the jobs folder.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Shared;
use crate::search::Recommendation;
use crate::spec::{load_spec_file, JobSpec};
use crate::state::{CacheKey, RunOutcome};
use crate::validation::{FieldError, Syntax};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Invalid,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Invalid => "invalid",
        }
    }
}

/// One job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub source_path: PathBuf,
    pub state: JobState,
    pub spec_hash: Option<String>,
    /// The device its search runs (or ran) on.
    pub device: Option<String>,
    /// Current phase of a running search.
    pub phase: Option<String>,
    pub trials_done: usize,
    /// Validation errors of an invalid spec.
    pub errors: Vec<FieldError>,
    /// Why a job failed.
    pub error: Option<String>,
    /// The recommendation came from the state folder, not from new trials.
    pub reused: bool,
    #[serde(skip)]
    pub recommendation: Option<Recommendation>,
    #[serde(skip)]
    pub(super) spec: Option<JobSpec>,
}

impl Job {
    fn invalid(name: String, path: PathBuf, errors: Vec<FieldError>) -> Job {
        Job {
            name,
            source_path: path,
            state: JobState::Invalid,
            spec_hash: None,
            device: None,
            phase: None,
            trials_done: 0,
            errors,
            error: None,
            reused: false,
            recommendation: None,
            spec: None,
        }
    }

    /// A valid spec's job, restored from the state folder when its work
    /// was already done (or already failed) on this kind of device.
    fn restore(shared: &Shared, path: PathBuf, spec: JobSpec) -> Job {
        let name = spec.name.clone();
        let mut job = Job {
            name: name.clone(),
            source_path: path,
            state: JobState::Queued,
            spec_hash: Some(spec.content_hash.clone()),
            device: None,
            phase: None,
            trials_done: 0,
            errors: Vec::new(),
            error: None,
            reused: false,
            recommendation: None,
            spec: None,
        };
        let keys: Vec<CacheKey> = shared
            .models_for(spec.search.device)
            .iter()
            .map(|model| CacheKey::new(&spec.content_hash, model))
            .collect();
        for key in &keys {
            let (stored, warning) = shared.store.get_recommendation(key);
            if let Some(warning) = warning {
                tracing::warn!("{warning}");
            }
            if let Some(stored) = stored {
                job.state = JobState::Done;
                job.reused = true;
                job.device = Some(stored.recommendation.device.clone());
                job.trials_done = stored.recommendation.trial_count;
                job.recommendation = Some(stored.recommendation);
                tracing::info!("job {name}: recommendation reused from the state folder");
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
            job.device = Some(run.device.clone());
            job.trials_done = run.trials;
            tracing::info!("job {name}: failed before with this spec (POST .../retune to retry)");
        } else {
            tracing::info!("job {name}: queued");
        }
        job.spec = Some(spec);
        job
    }
}

/// Editor droppings and partial downloads, which are never specs.
fn is_spec_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.ends_with('~')
        && !name.starts_with('#')
        && Syntax::from_path(path).is_some()
        && path.is_file()
}

/// A command job runs code as the daemon's user, so the jobs folder's
/// permissions are the trust boundary: its spec file (and the folder,
/// unless sticky) must not be writable by everyone.
fn trusted(path: &Path, spec: JobSpec) -> Result<JobSpec, crate::validation::DocumentErrors> {
    use std::os::unix::fs::PermissionsExt;
    if spec.command().is_none() {
        return Ok(spec);
    }
    let world_writable = |p: &Path, sticky_ok: bool| {
        std::fs::metadata(p).is_ok_and(|m| {
            let mode = m.permissions().mode();
            mode & 0o002 != 0 && !(sticky_ok && mode & 0o1000 != 0)
        })
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    let problem = if world_writable(path, false) {
        Some(format!("{} is writable by everyone", path.display()))
    } else if world_writable(folder, true) {
        Some(format!("{} is writable by everyone", folder.display()))
    } else {
        None
    };
    match problem {
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

/// Brings the job table in line with the jobs folder: new or changed specs
/// are (re)queued, invalid ones become `invalid` jobs with their errors,
/// removed ones are retired (a running search is cancelled; the
/// recommendation stays in the state folder and is reused if the same spec
/// comes back).
pub fn reconcile(shared: &Shared) {
    let settings = shared.settings();
    let dir = &settings.config.jobs_dir;
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_spec_file(p))
            .collect(),
        Err(error) => {
            tracing::warn!("cannot read the jobs folder {}: {error}", dir.display());
            Vec::new()
        }
    };
    files.sort();
    let mut seen = Vec::new();
    let mut to_queue = Vec::new();
    {
        let Ok(mut jobs) = shared.jobs.lock() else {
            return;
        };
        for path in files {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("job")
                .to_string();
            match load_spec_file(&path, &settings.policies).and_then(|spec| trusted(&path, spec)) {
                Ok(spec) => {
                    let name = spec.name.clone();
                    seen.push(name.clone());
                    let unchanged = jobs.get(&name).is_some_and(|j| {
                        j.spec_hash.as_deref() == Some(spec.content_hash.as_str())
                            && j.state != JobState::Invalid
                    });
                    if unchanged {
                        continue;
                    }
                    shared.cancel_if_running(&name);
                    let job = Job::restore(shared, path.clone(), spec);
                    if job.state == JobState::Queued {
                        to_queue.push(name.clone());
                    }
                    jobs.insert(name, job);
                }
                Err(errors) => {
                    seen.push(stem.clone());
                    let already = jobs
                        .get(&stem)
                        .is_some_and(|j| j.state == JobState::Invalid && j.errors == errors.errors);
                    if already {
                        continue;
                    }
                    shared.cancel_if_running(&stem);
                    tracing::warn!("job {stem} is invalid: {errors}");
                    jobs.insert(stem.clone(), Job::invalid(stem, path, errors.errors));
                }
            }
        }
        let retired: Vec<String> = jobs.keys().filter(|n| !seen.contains(n)).cloned().collect();
        for name in retired {
            tracing::info!("job {name}: spec removed, job retired (its recommendation stays in the state folder)");
            shared.cancel_if_running(&name);
            jobs.remove(&name);
        }
    }
    for name in to_queue {
        shared.enqueue(&name);
    }
}
