//! `batchd serve`: the watched jobs folder ([`watcher`], read by [`jobs`]),
//! the job table ([`table`]) behind the [`Service`] the HTTP API sees, the
//! scheduler ([`scheduler`]) and the lifecycle: systemd
//! notifications ([`sdnotify`]), reload and shutdown as the edge asks
//! ([`Control`]), the HTTP API ([`api`], served by [`http`]).
//!
//! Finished recommendations are stored by spec content hash, device model
//! and batchd version, and every run of a job's search is kept in its
//! history, so a restart does not redo finished (or failed) work; runs a
//! crashed daemon left behind are marked interrupted and run again.

pub mod api;
mod data_identity;
pub mod fleet;
pub mod http;
pub mod jobs;
pub mod placement;
pub mod scheduler;
pub mod sdnotify;
mod service;
pub mod table;
mod trust;
mod watcher;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use jobs::reconcile;
pub use service::{Service, ServiceError};
pub use table::{Job, JobState};

use crate::config::Config;
use crate::gpu::{open_probe, GpuProbe};
use crate::machine::Machine;
use crate::metrics::{MeteredRunner, Metrics};
use crate::policy::PolicySet;
use crate::state::{RunOutcome, StateStore};
use crate::trial::{ProcessTrialRunner, RunnerOptions, TrialRunner};

/// What a SIGHUP reloads: the configuration, the policies, the API token.
pub struct Settings {
    pub config: Config,
    pub policies: PolicySet,
    /// The bearer token state-changing endpoints require, when configured.
    pub api_token: Option<String>,
    /// Distinct for every load: what was resolved under other settings
    /// (the rescan's cached specs) is not reused.
    pub generation: u64,
}

/// Why settings cannot be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the API token file {}: {source}", path.display())]
    TokenUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {} is empty: put a token in it, or remove api_token_file from the configuration", path.display())]
    TokenEmpty { path: PathBuf },
    /// The configuration or a policy is invalid (the loader's report).
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    pub fn new(config: Config, policies: PolicySet) -> Result<Settings, SettingsError> {
        // An empty or unreadable token file is an error, never "no
        // authentication": that would open the API without a word.
        let api_token = match &config.api_token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::TokenUnreadable {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string();
                if token.is_empty() {
                    return Err(SettingsError::TokenEmpty { path: path.clone() });
                }
                Some(token)
            }
            None => None,
        };
        static LOADS: AtomicU64 = AtomicU64::new(0);
        Ok(Settings {
            config,
            policies,
            api_token,
            generation: LOADS.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// Loads the settings again, the way the command line first did.
pub type Reloader = Box<dyn Fn() -> Result<Settings, SettingsError> + Send + Sync>;

/// Why a reload was refused (the running settings stay).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("the reload did not finish: {0}")]
    Aborted(#[from] tokio::task::JoinError),
}

/// Why the daemon could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the jobs folder {}: {source}", path.display())]
    JobsFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot register the metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("serving HTTP failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// What the daemon's edge (signals, in `batchd serve`) asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Load the configuration and policies again (SIGHUP).
    Reload,
    /// Stop (SIGTERM, SIGINT); a closed channel means the same.
    Shutdown,
}

/// What the daemon runs on, passed in so tests can give fakes.
pub struct Edges<R> {
    pub machine: Machine,
    /// Runs trials: [`ProcessTrialRunner`] in production.
    pub runner: R,
    pub reload: Reloader,
    pub notifier: Arc<sdnotify::Notifier>,
}

impl Edges<ProcessTrialRunner> {
    /// This machine, trials in child processes of this binary, systemd
    /// when it supervises us.
    pub fn production(settings: &Settings, reload: Reloader) -> std::io::Result<Self> {
        let gpu_probe: Option<Arc<dyn GpuProbe>> = match open_probe() {
            Ok(probe) => Some(Arc::from(probe)),
            Err(error) => {
                tracing::info!("no GPU found ({error}), using CPU");
                None
            }
        };
        let machine = Machine::discover(gpu_probe.clone());
        let mut options = RunnerOptions::current_exe()?;
        options.gpu_probe = gpu_probe;
        options.kernel_cache_dir = Some(crate::machine::daemon_kernel_cache(
            settings.config.cache_root(),
        ));
        options.data_cache_dir = Some(crate::machine::daemon_data_cache(
            settings.config.cache_root(),
        ));
        options.containment = settings.config.trial_containment;
        options.persistent = true;
        Ok(Edges {
            machine,
            runner: ProcessTrialRunner::new(options),
            reload,
            notifier: Arc::new(sdnotify::Notifier::from_env()),
        })
    }
}

/// Reconciles from async code, off the async workers (it reads files).
pub async fn reconcile_now(service: &Arc<Service>) {
    let service = service.clone();
    let _ = tokio::task::spawn_blocking(move || reconcile(&service)).await;
}

/// Runs the daemon on `listener` until `control` says to stop (or
/// closes): recovers what a previous run left, scans the jobs folder,
/// schedules searches on `edges.machine`, serves the HTTP API.
pub async fn run<R: TrialRunner + 'static>(
    settings: Settings,
    listener: tokio::net::TcpListener,
    control: tokio::sync::mpsc::Receiver<Control>,
    edges: Edges<R>,
) -> Result<(), DaemonError> {
    let config = &settings.config;
    // First of all: a second daemon on a state folder that is not shared
    // stops here, before it sweeps or marks anything of the first one's.
    // A shared one (`shared_state`) is arbitrated by leases instead.
    let _state_lock = if config.shared_state {
        None
    } else {
        Some(crate::state::lock_state_folder(&config.state_dir)?)
    };
    std::fs::create_dir_all(&config.jobs_dir).map_err(|source| DaemonError::JobsFolder {
        path: config.jobs_dir.clone(),
        source,
    })?;
    // Temporary files of POSTs a killed daemon left behind.
    crate::atomic_file::sweep_temporaries(&config.jobs_dir);
    // And the processes of its command trials (a script's own children).
    let orphans = crate::trial::kill_orphaned_trials();
    if orphans > 0 {
        tracing::warn!("killed {orphans} processes left by the trials of a batchd that died");
    }
    let fleet = if config.shared_state {
        let node = fleet::Fleet::node_name();
        tracing::info!(
            "sharing the state folder {} as node {node} (leases live {})",
            config.state_dir.display(),
            crate::units::format_duration(config.lease_ttl)
        );
        Some(fleet::Fleet {
            leases: crate::lease::Leases::open(&config.state_dir, config.lease_ttl)?,
            owner: crate::lease::Owner::new(&node, crate::lease::now_ms()),
        })
    } else {
        None
    };
    let store = if config.shared_state {
        StateStore::open_shared(&config.state_dir)?
    } else {
        StateStore::open(&config.state_dir)?
    };
    // On a shared folder only this node's runs are this daemon's to mark:
    // other nodes' live on, or their leases expire.
    let interrupted = store.mark_interrupted_runs_of(fleet.as_ref().map(|f| f.owner.node.as_str()));
    if interrupted > 0 {
        tracing::warn!(
            "{interrupted} search(es) were interrupted by the last stop; they run again"
        );
    }
    for slot in &edges.machine.devices {
        tracing::info!("device {} ({})", slot.device, slot.model);
    }
    let metrics = Arc::new(Metrics::new()?);
    let runner = Arc::new(MeteredRunner {
        inner: edges.runner,
        metrics: metrics.clone(),
    });
    let notifier = edges.notifier;
    let mut shared = Service::new(settings, edges.reload, store, edges.machine, metrics);
    if let Some(fleet) = fleet {
        shared = shared.with_fleet(fleet);
    }
    let shared = Arc::new(shared);
    reconcile_now(&shared).await;
    shared.set_ready();
    let scheduler_task = tokio::spawn(scheduler::run(shared.clone(), runner));
    let watcher_task = tokio::spawn(watcher::run(shared.clone()));
    let watchdog_task = notifier.watchdog_interval().map(|interval| {
        let notifier = notifier.clone();
        let shared = shared.clone();
        let scheduler = scheduler_task.abort_handle();
        tokio::spawn(async move {
            loop {
                // Only a daemon whose scheduler lives and whose tables
                // answer pets the watchdog; otherwise systemd restarts it.
                if !scheduler.is_finished() && shared.responsive() {
                    notifier.watchdog();
                }
                tokio::time::sleep(interval).await;
            }
        })
    });
    tracing::info!("listening on http://{}", listener.local_addr()?);
    notifier.ready(&shared.status_line());
    let app = api::router(shared.clone());
    let lifecycle = lifecycle(shared.clone(), control, notifier.clone());
    http::serve(listener, app, lifecycle).await?;
    // Stop the running searches: dropping them drops their trials, whose
    // worker processes are killed.
    scheduler_task.abort();
    watcher_task.abort();
    if let Some(task) = watchdog_task {
        task.abort();
    }
    let _ = scheduler_task.await;
    record_interrupted(&shared);
    tracing::info!("stopped");
    Ok(())
}

/// The stopped searches' runs are marked interrupted; their jobs run
/// again at the next start.
fn record_interrupted(service: &Service) {
    // Leases of the stopped searches go now, so another node takes their
    // work over at once rather than after the leases expire.
    if let Some(fleet) = service.fleet() {
        for lease in service.table().running_leases() {
            fleet.leases.release(&lease);
        }
    }
    for (name, hash) in service.table().running_jobs() {
        let (runs, _) = service.store().history(&name);
        if let Some(run) = runs.iter().rev().find(|r| {
            r.spec_hash == hash
                && r.outcome == RunOutcome::Running
                && r.node.as_deref() == service.node()
        }) {
            let _ = service
                .store()
                .finish_run(&name, &hash, run.started_at_unix_s, |run| {
                    run.outcome = RunOutcome::Interrupted;
                    run.error = Some("the daemon was stopped".into());
                });
        }
    }
}

/// Follows the edge's requests until one asks for shutdown: reloads on
/// [`Control::Reload`], tells systemd what happens.
async fn lifecycle(
    shared: Arc<Service>,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    notifier: Arc<sdnotify::Notifier>,
) {
    while let Some(Control::Reload) = control.recv().await {
        tracing::info!("reloading the configuration and policies");
        notifier.reloading();
        match shared.reload().await {
            Ok(need_restart) if need_restart.is_empty() => tracing::info!("reloaded"),
            Ok(need_restart) => tracing::warn!(
                "reloaded; {} changed but only take effect after a restart",
                need_restart.join(", ")
            ),
            Err(error) => {
                tracing::error!("reload failed, keeping the running configuration: {error}")
            }
        }
        notifier.ready(&shared.status_line());
    }
    tracing::info!("shutting down");
    notifier.stopping();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::DeviceSlot;
    use crate::search::tests::FakeRunner;
    use crate::trial::{TrialDevice, TrialRequest, TrialResult, TrialRunner};
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    /// The search's fake runner, slowed down, counting how many trials run
    /// at once on each device and in all.
    struct CountingRunner {
        inner: FakeRunner,
        active: Mutex<HashMap<TrialDevice, usize>>,
        peaks: Mutex<(usize, usize)>,
        used: Mutex<Vec<TrialDevice>>,
    }

    impl TrialRunner for CountingRunner {
        async fn run(&self, request: TrialRequest) -> TrialResult {
            {
                let mut active = self.active.lock().unwrap();
                *active.entry(request.device).or_default() += 1;
                let mut peaks = self.peaks.lock().unwrap();
                peaks.0 = peaks.0.max(active[&request.device]);
                peaks.1 = peaks.1.max(active.values().sum());
                self.used.lock().unwrap().push(request.device);
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
            let result = self.inner.answer(&request);
            *self
                .active
                .lock()
                .unwrap()
                .get_mut(&request.device)
                .unwrap() -= 1;
            result
        }
    }

    fn slot(device: TrialDevice) -> DeviceSlot {
        DeviceSlot {
            device,
            model: if device == TrialDevice::Cpu {
                "cpu".into()
            } else {
                "Fake GPU".into()
            },
        }
    }

    /// Four jobs on a machine with two (fake) GPUs and a CPU.
    async fn run_four_jobs(max_concurrent_jobs: u32) -> (usize, usize, Vec<TrialDevice>) {
        let dir = tempfile::tempdir().unwrap();
        let jobs_dir = dir.path().join("jobs");
        std::fs::create_dir_all(&jobs_dir).unwrap();
        for name in ["a", "b", "c", "d"] {
            std::fs::write(
                jobs_dir.join(format!("{name}.toml")),
                "[model]\nkind = \"mlp\"\ninput_size = 8\nhidden = [16]\nclasses = 2\n\
                 [data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n\
                 [search]\nmax_batch = 4096\nmemory_limit = \"2GiB\"\n",
            )
            .unwrap();
        }
        let config = Config {
            jobs_dir,
            state_dir: dir.path().join("state"),
            max_concurrent_jobs,
            ..Config::default()
        };
        let store = StateStore::open(&config.state_dir).unwrap();
        let settings = Settings::new(config, PolicySet::builtin()).unwrap();
        let shared = Arc::new(Service::new(
            settings,
            Box::new(|| Err(SettingsError::Invalid("no reload in tests".into()))),
            store,
            Machine {
                devices: vec![
                    slot(TrialDevice::Cuda(0)),
                    slot(TrialDevice::Cuda(1)),
                    slot(TrialDevice::Cpu),
                ],
                gpu_probe: None,
            },
            Arc::new(Metrics::new().unwrap()),
        ));
        let runner = Arc::new(CountingRunner {
            inner: FakeRunner::new(),
            active: Mutex::default(),
            peaks: Mutex::default(),
            used: Mutex::default(),
        });
        let task = tokio::spawn(scheduler::run(shared.clone(), runner.clone()));
        reconcile_now(&shared).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let jobs = shared.list();
            let states: Vec<JobState> = jobs.iter().map(|j| j.state).collect();
            assert!(!states.contains(&JobState::Failed), "{jobs:?}");
            if states.len() == 4 && states.iter().all(|s| *s == JobState::Done) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{states:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        // Every run is in the history, and its recommendation is stored.
        for name in ["a", "b", "c", "d"] {
            let (runs, _) = shared.store().history(name);
            assert_eq!(runs.len(), 1);
            assert_eq!(runs[0].outcome, RunOutcome::Done);
            assert!(runs[0].batch_size.is_some());
        }
        let peaks = *runner.peaks.lock().unwrap();
        let used = runner.used.lock().unwrap().clone();
        (peaks.0, peaks.1, used)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn searches_run_in_parallel_on_different_gpus_and_never_share_one() {
        let (per_device, total, used) = run_four_jobs(16).await;
        assert_eq!(per_device, 1, "two trials shared a device");
        assert_eq!(total, 2, "the two GPUs did not work in parallel");
        assert!(used.contains(&TrialDevice::Cuda(0)) && used.contains(&TrialDevice::Cuda(1)));
        // `auto` jobs stay off the CPU on a GPU machine.
        assert!(!used.contains(&TrialDevice::Cpu));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_concurrent_jobs_caps_parallel_searches() {
        let (per_device, total, _) = run_four_jobs(1).await;
        assert_eq!((per_device, total), (1, 1));
    }
}
