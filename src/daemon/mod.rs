//! `batchd serve`: the watched jobs folder, the job table, the scheduler
//! and the lifecycle. The HTTP API is in [`crate::api`].
//!
//! Jobs come from spec files in the jobs folder. Any change to the folder
//! (notify events, debounced, plus a periodic rescan that also catches
//! overflowed event queues and a folder removed and recreated) triggers a
//! reconcile: new or changed specs are (re)queued, invalid ones become jobs
//! in state `invalid` with their errors, removed ones are retired (their
//! running search is cancelled; their recommendation stays in the state
//! folder and is reused if the same spec returns). Finished
//! recommendations are stored by spec content hash, device model and batchd
//! version, so a restart does not redo finished work.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::config::Config;
use crate::gpu::{open_probe, GpuProbe};
use crate::policy::PolicySet;
use crate::search::{advise, Recommendation};
use crate::spec::{load_spec_file, JobSpec};
use crate::state::{CacheKey, StateStore};
use crate::trial::{ProcessTrialRunner, RunnerOptions, TrialDevice};
use crate::validation::{FieldError, Syntax};

/// How often the jobs folder is rescanned even without events.
const RESCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Quiet time after the last event before a rescan (editors write in bursts).
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Invalid,
}

/// One job as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub name: String,
    pub source_path: PathBuf,
    pub state: JobState,
    pub spec_hash: Option<String>,
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
    spec: Option<JobSpec>,
}

/// Everything the API and the scheduler share.
pub struct Shared {
    pub config: Config,
    /// The bearer token state-changing endpoints require, when configured.
    pub api_token: Option<String>,
    pub policies: PolicySet,
    pub store: StateStore,
    pub device: TrialDevice,
    pub device_model: String,
    pub gpu_probe: Option<Arc<dyn GpuProbe>>,
    pub jobs: Mutex<BTreeMap<String, Job>>,
    queue: Mutex<VecDeque<String>>,
    queued: Notify,
    /// The job whose search runs now, and how to cancel it.
    running: Mutex<Option<(String, Arc<Notify>)>>,
    pub ready: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn job(&self, name: &str) -> Option<Job> {
        self.jobs.lock().ok()?.get(name).cloned()
    }

    /// Forgets a job's recommendation and queues it again.
    pub fn retune(&self, name: &str) -> Result<(), String> {
        let hash = {
            let mut jobs = self
                .jobs
                .lock()
                .map_err(|_| "job table unavailable".to_string())?;
            let job = jobs
                .get_mut(name)
                .ok_or_else(|| format!("no job named `{name}`"))?;
            let Some(hash) = job.spec_hash.clone() else {
                return Err(format!("job `{name}` is invalid; fix its spec first"));
            };
            if matches!(job.state, JobState::Queued | JobState::Running) {
                return Ok(());
            }
            job.state = JobState::Queued;
            job.recommendation = None;
            job.reused = false;
            job.error = None;
            job.trials_done = 0;
            job.phase = None;
            hash
        };
        self.store
            .remove_recommendation(&CacheKey::new(&hash, &self.device_model))
            .map_err(|e| e.to_string())?;
        self.enqueue(name);
        Ok(())
    }

    fn enqueue(&self, name: &str) {
        if let Ok(mut queue) = self.queue.lock() {
            if !queue.iter().any(|n| n == name) {
                queue.push_back(name.to_string());
            }
        }
        self.queued.notify_one();
    }

    fn cancel_if_running(&self, name: &str) {
        if let Ok(running) = self.running.lock() {
            if let Some((running_name, cancel)) = running.as_ref() {
                if running_name == name {
                    cancel.notify_one();
                }
            }
        }
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

/// Brings the job table in line with the jobs folder.
pub fn reconcile(shared: &Shared) {
    let dir = &shared.config.jobs_dir;
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
            match load_spec_file(&path, &shared.policies) {
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
                    let key = CacheKey::new(&spec.content_hash, &shared.device_model);
                    let (stored, warning) = shared.store.get_recommendation(&key);
                    if let Some(warning) = warning {
                        tracing::warn!("{warning}");
                    }
                    let reused = stored.is_some();
                    let job = Job {
                        name: name.clone(),
                        source_path: path.clone(),
                        state: if reused {
                            JobState::Done
                        } else {
                            JobState::Queued
                        },
                        spec_hash: Some(spec.content_hash.clone()),
                        phase: None,
                        trials_done: 0,
                        errors: Vec::new(),
                        error: None,
                        reused,
                        recommendation: stored.map(|s| s.recommendation),
                        spec: Some(spec),
                    };
                    tracing::info!(
                        "job {name}: {}",
                        if reused {
                            "recommendation reused from the state folder"
                        } else {
                            "queued"
                        }
                    );
                    if !reused {
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
                    jobs.insert(
                        stem.clone(),
                        Job {
                            name: stem,
                            source_path: path.clone(),
                            state: JobState::Invalid,
                            spec_hash: None,
                            phase: None,
                            trials_done: 0,
                            errors: errors.errors,
                            error: None,
                            reused: false,
                            recommendation: None,
                            spec: None,
                        },
                    );
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

/// Reconciles from async code, off the async workers (it reads files).
pub async fn reconcile_now(shared: &Arc<Shared>) {
    let shared = shared.clone();
    let _ = tokio::task::spawn_blocking(move || reconcile(&shared)).await;
}

/// Runs queued jobs one at a time (trials never share a device).
async fn scheduler(shared: Arc<Shared>, runner: ProcessTrialRunner) {
    loop {
        let next = shared.queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(name) = next else {
            shared.queued.notified().await;
            continue;
        };
        let Some(spec) = shared
            .job(&name)
            .filter(|j| j.state == JobState::Queued)
            .and_then(|j| j.spec)
        else {
            continue;
        };
        let cancel = Arc::new(Notify::new());
        if let Ok(mut running) = shared.running.lock() {
            *running = Some((name.clone(), cancel.clone()));
        }
        set_state(&shared, &name, &spec.content_hash, |job| {
            job.state = JobState::Running
        });
        let context = match crate::advise_cli::search_context(
            shared.device,
            spec.search.memory_limit,
            shared.gpu_probe.as_deref(),
        ) {
            Ok(context) => context,
            Err(error) => {
                set_state(&shared, &name, &spec.content_hash, |job| {
                    job.state = JobState::Failed;
                    job.error = Some(error.clone());
                });
                continue;
            }
        };
        let progress_shared = shared.clone();
        let progress_name = name.clone();
        let progress_hash = spec.content_hash.clone();
        let on_progress = move |p: &crate::search::Progress| {
            set_state(&progress_shared, &progress_name, &progress_hash, |job| {
                job.phase = Some(p.phase.as_str().to_string());
                job.trials_done = p.trials_done;
            });
        };
        let outcome = tokio::select! {
            outcome = advise(&spec, &context, &runner, &on_progress) => Some(outcome),
            // Dropping the search drops its trial, whose child is killed.
            _ = cancel.notified() => None,
        };
        if let Ok(mut running) = shared.running.lock() {
            *running = None;
        }
        match outcome {
            None => tracing::info!("job {name}: search cancelled"),
            Some(Ok(recommendation)) => {
                let key = CacheKey::new(&spec.content_hash, &shared.device_model);
                if let Err(error) = shared
                    .store
                    .put_recommendation(&key, &name, &recommendation)
                {
                    tracing::error!("job {name}: cannot store the recommendation: {error}");
                }
                tracing::info!("job {name}: done, batch {}", recommendation.batch_size);
                set_state(&shared, &name, &spec.content_hash, |job| {
                    job.state = JobState::Done;
                    job.recommendation = Some(recommendation.clone());
                });
            }
            Some(Err(error)) => {
                tracing::warn!("job {name}: failed: {error}");
                set_state(&shared, &name, &spec.content_hash, |job| {
                    job.state = JobState::Failed;
                    job.error = Some(error.to_string());
                });
            }
        }
    }
}

/// Updates a job if it still holds the same spec.
fn set_state(shared: &Shared, name: &str, hash: &str, update: impl FnOnce(&mut Job)) {
    if let Ok(mut jobs) = shared.jobs.lock() {
        if let Some(job) = jobs
            .get_mut(name)
            .filter(|j| j.spec_hash.as_deref() == Some(hash))
        {
            update(job);
        }
    }
}

/// Watches the jobs folder: notify events, debounced, plus a periodic
/// rescan. Watching the parent too means a removed and recreated folder is
/// picked up again.
async fn watcher(shared: Arc<Shared>) {
    use notify::Watcher;
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
    let dir = shared.config.jobs_dir.clone();
    let watcher = notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
        let _ = sender.send(());
    });
    let mut watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                "file events unavailable ({error}); rescanning every {RESCAN_INTERVAL:?}"
            );
            None
        }
    };
    let mut watched = false;
    loop {
        if let Some(w) = watcher.as_mut() {
            if !watched && dir.is_dir() {
                watched = w.watch(&dir, notify::RecursiveMode::NonRecursive).is_ok();
            } else if watched && !dir.is_dir() {
                // The folder went away; watch it again once it is back.
                let _ = w.unwatch(&dir);
                watched = false;
            }
        }
        tokio::select! {
            Some(()) = events.recv() => {
                // Debounce: wait for a quiet moment.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, events.recv()).await {}
            }
            _ = tokio::time::sleep(RESCAN_INTERVAL) => {}
        }
        reconcile_now(&shared).await;
    }
}

/// Starts the daemon and runs until SIGTERM or SIGINT.
pub async fn serve(config: Config, policies: PolicySet) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.jobs_dir).with_context(|| {
        format!(
            "cannot create the jobs folder {}",
            config.jobs_dir.display()
        )
    })?;
    let store = StateStore::open(&config.state_dir)?;
    let gpu_probe: Option<Arc<dyn GpuProbe>> = match open_probe() {
        Ok(probe) => Some(Arc::from(probe)),
        Err(error) => {
            tracing::info!("no GPU found ({error}), using CPU");
            None
        }
    };
    let device = crate::trial_cli::resolve_device(crate::spec::DeviceChoice::Auto);
    let device_model = match (device, &gpu_probe) {
        (TrialDevice::Cuda(index), Some(probe)) => probe
            .snapshot()
            .ok()
            .and_then(|s| {
                s.gpus
                    .into_iter()
                    .find(|g| g.index == index)
                    .map(|g| g.name)
            })
            .unwrap_or_else(|| format!("cuda:{index}")),
        (TrialDevice::Cuda(index), None) => format!("cuda:{index}"),
        (TrialDevice::Cpu, _) => "cpu".to_string(),
    };
    tracing::info!("trials run on {device} ({device_model})");
    let mut options = RunnerOptions::current_exe()?;
    options.gpu_probe = gpu_probe.clone();
    options.kernel_cache_dir = Some(config.state_dir.join("kernel-cache"));
    let runner = ProcessTrialRunner::new(options);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let api_token = match &config.api_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token file {}", path.display()))?
                .trim()
                .to_string(),
        )
        .filter(|t| !t.is_empty()),
        None => None,
    };
    let shared = Arc::new(Shared {
        api_token,
        config,
        policies,
        store,
        device,
        device_model,
        gpu_probe,
        jobs: Mutex::new(BTreeMap::new()),
        queue: Mutex::new(VecDeque::new()),
        queued: Notify::new(),
        running: Mutex::new(None),
        ready: std::sync::atomic::AtomicBool::new(false),
    });
    reconcile_now(&shared).await;
    shared
        .ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let scheduler_task = tokio::spawn(scheduler(shared.clone(), runner));
    let watcher_task = tokio::spawn(watcher(shared.clone()));
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let app = crate::api::router(shared.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Stop the running search: dropping the scheduler drops its trial,
    // whose worker process is killed.
    scheduler_task.abort();
    watcher_task.abort();
    let _ = scheduler_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
