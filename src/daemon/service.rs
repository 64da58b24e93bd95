//! The daemon's service: the job table, the state store and the settings,
//! with what a client may ask of them (submit, list, get, delete, retune)
//! and the rules that go with it: the command-job gate, the data roots,
//! how a posted spec becomes a file in the jobs folder. The HTTP API holds
//! an `Arc<Service>` and calls its public methods only; the scheduler, the
//! watcher and the rescan reach the parts through `pub(super)` accessors.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use super::jobs::Folder;
use super::table::{Job, JobState, JobTable, Retuned, TransitionError};
use super::{fleet, reconcile_now, ReloadError, Reloader, Settings};
use crate::atomic_file::FileError;
use crate::gpu::GpuProbe;
use crate::machine::Machine;
use crate::metrics::{JobView, Metrics, Snapshot};
use crate::search::Recommendation;
use crate::spec::{parse_spec, DeviceChoice, JobSpec, SpecOrigin};
use crate::state::{CacheKey, RunRecord, StateError, StateStore};
use crate::validation::{DocumentErrors, FieldError, Syntax};

/// The job table, the state store and the settings, shared by the API, the
/// watcher and the scheduler.
pub struct Service {
    settings: RwLock<Arc<Settings>>,
    reload: Reloader,
    store: StateStore,
    /// Devices searches run on (one search each at a time), and NVML.
    machine: Machine,
    metrics: Arc<Metrics>,
    table: JobTable,
    /// The rescans of the jobs folder and what they remember.
    folder: Folder,
    /// Held by POST and DELETE from their check to their rescan, so two
    /// requests never claim one name.
    claims: tokio::sync::Mutex<()>,
    /// The jobs folder has been scanned once.
    ready: AtomicBool,
    /// This daemon's place in a fleet sharing the state folder
    /// (`shared_state`); `None` when the folder is its alone.
    fleet: Option<fleet::Fleet>,
}

impl Service {
    pub fn new(
        settings: Settings,
        reload: Reloader,
        store: StateStore,
        machine: Machine,
        metrics: Arc<Metrics>,
    ) -> Service {
        Service {
            settings: RwLock::new(Arc::new(settings)),
            reload,
            store,
            machine,
            metrics,
            table: JobTable::new(),
            folder: Folder::default(),
            claims: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            fleet: None,
        }
    }

    /// Joins the fleet sharing the state folder (see [`fleet`]).
    pub fn with_fleet(mut self, fleet: fleet::Fleet) -> Service {
        self.fleet = Some(fleet);
        self
    }

    pub(super) fn table(&self) -> &JobTable {
        &self.table
    }

    pub(super) fn store(&self) -> &StateStore {
        &self.store
    }

    pub(super) fn folder(&self) -> &Folder {
        &self.folder
    }

    pub(super) fn machine(&self) -> &Machine {
        &self.machine
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(super) fn fleet(&self) -> Option<&fleet::Fleet> {
        self.fleet.as_ref()
    }

    /// This daemon's node, when it shares its state folder.
    pub(super) fn node(&self) -> Option<&str> {
        self.fleet.as_ref().map(|f| f.owner.node.as_str())
    }

    /// The current settings (a reload swaps them whole).
    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(settings) => settings.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether the jobs folder has been scanned (readiness).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// NVML, when this machine has a GPU.
    pub fn gpu_probe(&self) -> Option<Arc<dyn GpuProbe>> {
        self.machine.gpu_probe.clone()
    }

    /// Device models whose stored answers fit a job asking for `choice`.
    pub(super) fn models_for(&self, choice: DeviceChoice) -> Vec<String> {
        let mut models: Vec<String> = self
            .machine
            .serving(choice)
            .map(|d| d.model.clone())
            .collect();
        models.dedup();
        models
    }

    /// Whether the daemon's table answers (for the watchdog).
    pub(super) fn responsive(&self) -> bool {
        self.table.responsive()
    }

    /// Reloads configuration and policies, then re-reads every spec (a
    /// changed policy changes the specs' hashes, so their jobs run again).
    /// Settings that only a restart can change are named in the result.
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<&'static str>, ReloadError> {
        let this = self.clone();
        let new = tokio::task::spawn_blocking(move || (this.reload)()).await??;
        let old = self.settings();
        let mut need_restart = Vec::new();
        if new.config.listen != old.config.listen {
            need_restart.push("listen");
        }
        if new.config.state_dir != old.config.state_dir {
            need_restart.push("state_dir");
        }
        if new.config.max_request_body != old.config.max_request_body {
            need_restart.push("max_request_body");
        }
        if new.config.log_format != old.config.log_format {
            need_restart.push("log_format");
        }
        match self.settings.write() {
            Ok(mut settings) => *settings = Arc::new(new),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(new),
        }
        reconcile_now(self).await;
        self.folder.ask_rescan();
        // A larger max_concurrent_jobs may start queued jobs now.
        self.table.wake_scheduler();
        Ok(need_restart)
    }

    /// The Prometheus scrape: GPU state read now, jobs as they stand.
    pub fn metrics_text(&self) -> String {
        let gpus = self
            .machine
            .gpu_probe
            .as_ref()
            .and_then(|p| p.snapshot().ok());
        let jobs: Vec<JobView> = self.table.each(|name, entry, recommendation| {
            let mut view = JobView::new(name, entry.state(), recommendation);
            view.device_model = entry.device_model().map(str::to_string);
            view
        });
        let (_, searches_running, queue_depth) = self.table.counts();
        self.metrics.render(&Snapshot {
            gpus: gpus.as_ref().map(|s| s.gpus.as_slice()),
            jobs,
            queue_depth,
            searches_running,
        })
    }

    /// A one-line summary for systemd's STATUS.
    pub(super) fn status_line(&self) -> String {
        let (jobs, running, queued) = self.table.counts();
        format!("{jobs} job(s), {running} running, {queued} queued")
    }
}

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

impl Service {
    /// Accepts a spec sent by a client: parsed off the async runtime's
    /// threads, checked against the gate and the data roots, then created
    /// as a file in the jobs folder (never over one) and made a job.
    pub async fn submit(
        self: &Arc<Self>,
        text: String,
        syntax: Syntax,
    ) -> Result<Job, ServiceError> {
        let settings = self.settings();
        // The rescan's cache must know which policies the spec was resolved
        // with: those of this parse, even if a reload lands meanwhile.
        let generation = settings.generation;
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
        if self.table.get(&spec.name).is_some() {
            return Err(ServiceError::Exists(spec.name));
        }
        // The spec becomes a file in the jobs folder, so it persists and
        // the watcher treats it like any other.
        let path = settings
            .config
            .jobs_dir
            .join(format!("{}.{}", spec.name, syntax.extension()));
        let name = spec.name.clone();
        let created = {
            let (path, this) = (path.clone(), self.clone());
            tokio::task::spawn_blocking(move || {
                crate::atomic_file::create_atomically(&path, text.as_bytes())?;
                // The rescan takes the spec parsed here rather than parsing
                // the file again: its paths are absolute (a posted spec has
                // no folder to resolve against), so the file parses to the
                // same spec under the same settings.
                this.folder.remember(&path, generation, spec);
                Ok::<(), FileError>(())
            })
            .await
            .map_err(|_| ServiceError::TaskLost("writer"))?
        };
        match created {
            Ok(()) => {}
            Err(FileError::Exists(_)) => return Err(ServiceError::Exists(name)),
            Err(error) => return Err(StateError::from(error).into()),
        }
        reconcile_now(self).await;
        match self.table.get(&name) {
            Some(job) if job.source_path == path => Ok(job),
            // Another file in the folder already names this job: the new
            // file is an invalid entry now, and saying "created" would lie.
            _ => Err(ServiceError::Exists(name)),
        }
    }

    /// Every job, in name order.
    pub fn list(&self) -> Vec<Job> {
        self.table.list()
    }

    /// One job.
    pub fn get(&self, name: &str) -> Result<Job, ServiceError> {
        self.table
            .get(name)
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
    pub fn recommendation(&self, name: &str) -> Result<Arc<Recommendation>, ServiceError> {
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
        let valid = job.spec_hash.is_some();
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
    /// queued, waiting or running stays as it is).
    pub fn retune(&self, name: &str) -> Result<Job, ServiceError> {
        let job = self.get(name)?;
        let work = self
            .table
            .work(name)
            .ok_or_else(|| ServiceError::InvalidJob(name.to_string()))?;
        // The stored answers go before the job is queued: a search started
        // at once must not find the old answer and serve it again.
        if matches!(job.state, JobState::Done | JobState::Failed) {
            for model in self.models_for(work.spec.search.device) {
                let key = CacheKey::new(&work.spec.content_hash, &model, &work.data_digest);
                self.store.remove_recommendation(&key)?;
            }
        }
        match self.table.retune(name) {
            Ok(Retuned::Queued { .. } | Retuned::Unchanged) => {}
            Err(TransitionError::Invalid(name)) => return Err(ServiceError::InvalidJob(name)),
            Err(_) => return Err(ServiceError::NoSuchJob(name.to_string())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::machine::DeviceSlot;
    use crate::policy::PolicySet;
    use crate::trial::TrialDevice;

    const SPEC: &str = "name = \"posted\"\n[model]\nkind = \"mlp\"\ninput_size = 2\nhidden = [4]\n\
                        classes = 2\n[data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n";

    fn service(dir: &std::path::Path) -> Arc<Service> {
        let config = Config {
            jobs_dir: dir.join("jobs"),
            state_dir: dir.join("state"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.jobs_dir).unwrap();
        let store = StateStore::open(&config.state_dir).unwrap();
        let settings = Settings::new(config, PolicySet::builtin()).unwrap();
        let machine = Machine {
            devices: vec![DeviceSlot {
                device: TrialDevice::Cpu,
                model: "cpu".into(),
            }],
            gpu_probe: None,
        };
        Arc::new(Service::new(
            settings,
            Box::new(|| Err(super::super::SettingsError::Invalid("no reload".into()))),
            store,
            machine,
            Arc::new(Metrics::new().unwrap()),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_posted_spec_is_parsed_once_and_a_dropped_one_by_the_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        reconcile_now(&service).await;
        let job = service.submit(SPEC.into(), Syntax::Toml).await.unwrap();
        assert_eq!((job.name.as_str(), job.state), ("posted", JobState::Queued));
        assert!(dir.path().join("jobs/posted.toml").is_file());
        // The rescan that made it a job took the request's parse.
        assert_eq!(service.folder().parsed(), 0);
        reconcile_now(&service).await;
        assert_eq!(service.folder().parsed(), 0);
        // The same text dropped in by hand is read by the rescan, and is
        // the same work as the posted one.
        let text = SPEC.replace("posted", "dropped");
        std::fs::write(dir.path().join("jobs/dropped.toml"), text.clone()).unwrap();
        reconcile_now(&service).await;
        assert_eq!(service.folder().parsed(), 1);
        assert_eq!(service.get("dropped").unwrap().state, JobState::Queued);
        // The request's parse stands in for the file's: the same work.
        let from_file = crate::spec::load_spec_file(
            &dir.path().join("jobs/posted.toml"),
            &PolicySet::builtin(),
            1 << 20,
        )
        .unwrap();
        let posted = service.get("posted").unwrap();
        assert_eq!(posted.spec_hash, Some(from_file.content_hash));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retune_forgets_the_stored_answer_before_queueing() {
        let dir = tempfile::tempdir().unwrap();
        let service = service(dir.path());
        std::fs::write(dir.path().join("jobs/j.toml"), SPEC.replace("posted", "j")).unwrap();
        reconcile_now(&service).await;
        assert_eq!(service.get("j").unwrap().state, JobState::Queued);
        let hash = service.get("j").unwrap().spec_hash.unwrap();
        let key = CacheKey::new(&hash, "cpu", "");
        service
            .store()
            .put_recommendation(&key, "j", &Recommendation::example(64))
            .unwrap();
        // A restart reads the spec again and finds the stored answer.
        let service = self::service(dir.path());
        reconcile_now(&service).await;
        let job = service.get("j").unwrap();
        assert_eq!((job.state, job.reused), (JobState::Done, true));
        let job = service.retune("j").unwrap();
        assert_eq!(job.state, JobState::Queued);
        assert!(service.store().get_recommendation(&key).0.is_none());
        // Retuning a queued job changes nothing; an unknown one is named.
        assert_eq!(service.retune("j").unwrap().state, JobState::Queued);
        assert!(matches!(
            service.retune("nope"),
            Err(ServiceError::NoSuchJob(_))
        ));
    }
}
