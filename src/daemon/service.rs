//! The job table's service: what a client may ask of the daemon (submit,
//! list, get, delete, retune) with the rules that go with it: the
//! command-job gate, the data roots, how a posted spec becomes a file in
//! the jobs folder. The HTTP API only maps these answers to responses.

use std::path::PathBuf;
use std::sync::Arc;

use super::jobs::{Job, JobState};
use super::{reconcile_now, Shared};
use crate::atomic_file::FileError;
use crate::search::Recommendation;
use crate::spec::{parse_spec, JobSpec, SpecOrigin};
use crate::state::{CacheKey, RunRecord, StateError};
use crate::validation::{DocumentErrors, FieldError, Syntax};

/// Why a request of the job table was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no job named `{0}`")]
    NoSuchJob(String),
    #[error("{0}")]
    InvalidSpec(DocumentErrors),
    /// Data files outside the configured roots (one error per field).
    #[error("{}", join(.0))]
    DataOutsideRoots(Vec<FieldError>),
    #[error("a spec with runner = \"command\" runs code as the daemon's user; drop it into the jobs folder instead, or set allow_command_jobs_over_http (with api_token_file) in the daemon's configuration")]
    CommandJobsRefused,
    #[error(
        "a job named `{0}` exists, or its file does; DELETE it first or change the spec's name"
    )]
    Exists(String),
    #[error("job `{0}` is invalid; fix its spec first")]
    InvalidJob(String),
    #[error("job `{name}` is {state}")]
    NoRecommendation { name: String, state: JobState },
    #[error("cannot store the spec: {0}")]
    Store(#[from] StateError),
    /// The job's file no longer holds it (changed since the last rescan).
    #[error("{} no longer holds job `{name}`{}; nothing was removed", path.display(), holds.as_ref().map(|h| format!(" (it holds `{h}`)")).unwrap_or_default())]
    FileChanged {
        name: String,
        path: PathBuf,
        holds: Option<String>,
    },
    #[error("cannot remove the spec {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A blocking task (parsing, file I/O) did not finish.
    #[error("the {0} stopped unexpectedly")]
    TaskLost(&'static str),
    #[error("the job table is unavailable")]
    Unavailable,
}

/// Why a DELETE did not unlink.
enum Unlink {
    /// The file no longer holds the job: it names another (`Some`), or is
    /// no valid spec now.
    Changed(Option<String>),
    Io(std::io::Error),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Shared {
    /// Accepts a spec sent by a client: parsed off the async runtime's
    /// threads, checked against the gate and the data roots, then created
    /// as a file in the jobs folder (never over one) and made a job.
    pub async fn submit(
        self: &Arc<Self>,
        text: String,
        syntax: Syntax,
    ) -> Result<Job, ServiceError> {
        let settings = self.settings();
        // Parsing and every look at the disk (data roots, data files) run
        // off the async runtime's threads.
        let checked = tokio::task::spawn_blocking(move || {
            let origin = SpecOrigin {
                label: "<request body>".into(),
                default_name: None,
                base_dir: None,
            };
            let spec = parse_spec(&text, syntax, &origin, &settings.policies)
                .map_err(ServiceError::InvalidSpec)?;
            if spec.command().is_some()
                && !(settings.config.allow_command_jobs_over_http && settings.api_token.is_some())
            {
                return Err(ServiceError::CommandJobsRefused);
            }
            let outside = data_outside_roots(&settings.config.data_roots, &spec);
            if !outside.is_empty() {
                return Err(ServiceError::DataOutsideRoots(outside));
            }
            // The data files must be usable before the spec becomes a file:
            // a spec refused here leaves nothing behind in the jobs folder.
            let mut problems = crate::validation::Problems::new();
            crate::spec::check_data_files(&spec, &mut problems);
            let spec = problems
                .finish(&origin.label, spec)
                .map_err(ServiceError::InvalidSpec)?;
            Ok((text, spec))
        })
        .await;
        let (text, spec) = checked.map_err(|_| ServiceError::TaskLost("parser"))??;
        let settings = self.settings();
        // Name claims one at a time: the check, the file and the rescan
        // that makes it a job happen together.
        let _claim = self.claims.lock().await;
        if self.job(&spec.name).is_some() {
            return Err(ServiceError::Exists(spec.name));
        }
        // The spec becomes a file in the jobs folder, so it persists and
        // the watcher treats it like any other.
        let path = settings
            .config
            .jobs_dir
            .join(format!("{}.{}", spec.name, syntax.extension()));
        let created = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                crate::atomic_file::create_atomically(&path, text.as_bytes())
            })
            .await
            .map_err(|_| ServiceError::TaskLost("writer"))?
        };
        match created {
            Ok(()) => {}
            Err(FileError::Exists(_)) => return Err(ServiceError::Exists(spec.name)),
            Err(error) => return Err(StateError::from(error).into()),
        }
        reconcile_now(self).await;
        match self.job(&spec.name) {
            Some(job) if job.source_path == path => Ok(job),
            // Another file in the folder already names this job: the new
            // file is an invalid entry now, and saying "created" would lie.
            _ => Err(ServiceError::Exists(spec.name)),
        }
    }

    /// Every job, in name order.
    pub fn list(&self) -> Vec<Job> {
        self.jobs
            .lock()
            .map(|jobs| jobs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One job.
    pub fn get(&self, name: &str) -> Result<Job, ServiceError> {
        self.job(name)
            .ok_or_else(|| ServiceError::NoSuchJob(name.to_string()))
    }

    /// One job with its run history (read off the async runtime's threads).
    pub async fn get_with_history(
        &self,
        name: &str,
    ) -> Result<(Job, Vec<RunRecord>), ServiceError> {
        let job = self.get(name)?;
        let store = self.store.clone();
        let key = name.to_string();
        let history = tokio::task::spawn_blocking(move || store.history(&key).0)
            .await
            .map_err(|_| ServiceError::TaskLost("history reader"))?;
        Ok((job, history))
    }

    /// A finished job's recommendation.
    pub fn recommendation(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<Recommendation>, ServiceError> {
        let job = self.get(name)?;
        match job.recommendation {
            Some(recommendation) if job.state == JobState::Done => Ok(recommendation),
            _ => Err(ServiceError::NoRecommendation {
                name: name.to_string(),
                state: job.state,
            }),
        }
    }

    /// Removes a job's spec file, and so the job. The table is brought in
    /// line with the folder first (a renamed spec is followed), and the file
    /// is read again just before it is unlinked: only a file that still
    /// holds this job is removed, never one that took its old name.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), ServiceError> {
        let _claim = self.claims.lock().await;
        reconcile_now(self).await;
        let job = self.get(name)?;
        let path = job.source_path.clone();
        let settings = self.settings();
        let valid = job.spec.is_some();
        let owner = name.to_string();
        let removed = tokio::task::spawn_blocking(move || {
            if valid {
                let limit = settings.config.max_spec_file.bytes();
                match crate::spec::load_spec_file(&path, &settings.policies, limit) {
                    Ok(spec) if spec.name == owner => {}
                    Ok(spec) => return Err(Unlink::Changed(Some(spec.name))),
                    // Not a valid spec any more: the next rescan decides.
                    Err(_) => return Err(Unlink::Changed(None)),
                }
            }
            std::fs::remove_file(&path).map_err(Unlink::Io)
        })
        .await
        .map_err(|_| ServiceError::TaskLost("remover"))?;
        reconcile_now(self).await;
        match removed {
            Ok(()) => Ok(()),
            Err(Unlink::Changed(holds)) => Err(ServiceError::FileChanged {
                name: name.to_string(),
                path: job.source_path,
                holds,
            }),
            // Gone already (removed by hand, or by a racing request).
            Err(Unlink::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(ServiceError::NoSuchJob(name.to_string()))
            }
            Err(Unlink::Io(source)) => Err(ServiceError::Remove {
                path: job.source_path,
                source,
            }),
        }
    }

    /// Forgets a job's recommendation and queues it again (a job already
    /// queued or running stays as it is).
    pub fn retune(&self, name: &str) -> Result<Job, ServiceError> {
        let (hash, data, choice) = {
            let mut jobs = self.jobs.lock().map_err(|_| ServiceError::Unavailable)?;
            let job = jobs
                .get_mut(name)
                .ok_or_else(|| ServiceError::NoSuchJob(name.to_string()))?;
            let Some(spec) = job.spec.as_ref() else {
                return Err(ServiceError::InvalidJob(name.to_string()));
            };
            if matches!(
                job.state,
                JobState::Queued | JobState::Waiting | JobState::Running
            ) {
                return Ok(job.clone());
            }
            let (hash, data, choice) = (
                spec.content_hash.clone(),
                job.data_digest.clone(),
                spec.search.device,
            );
            job.state = JobState::Queued;
            job.recommendation = None;
            job.reused = false;
            job.tuned_by = None;
            job.waiting_since = None;
            job.error = None;
            job.trials_done = 0;
            job.phase = None;
            (hash, data, choice)
        };
        for model in self.models_for(choice) {
            self.store
                .remove_recommendation(&CacheKey::new(&hash, &model, &data))?;
        }
        self.enqueue(name);
        self.get(name)
    }
}

/// Data files of a posted spec must lie under a configured data root: the
/// API must not become a way to read any file the daemon can.
fn data_outside_roots(roots: &[PathBuf], spec: &JobSpec) -> Vec<FieldError> {
    let roots: Vec<PathBuf> = roots.iter().filter_map(|r| r.canonicalize().ok()).collect();
    spec.data_files()
        .into_iter()
        .filter_map(|(field, file)| {
            let inside = file
                .canonicalize()
                .ok()
                .is_some_and(|f| roots.iter().any(|r| f.starts_with(r)));
            (!inside).then(|| {
                FieldError::new(
                    field,
                    if roots.is_empty() {
                        "specs posted over HTTP may read no files: the daemon has no data_roots configured".to_string()
                    } else {
                        format!("{} is not under a configured data root", file.display())
                    },
                )
            })
        })
        .collect()
}
