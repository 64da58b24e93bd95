//! The job table: every job the daemon knows, the searches running and the
//! queue, behind one lock, changed only through its transitions.
//!
//! ```text
//!  (spec read) ──> queued ──start──> running ──finish──────────> done
//!                   ^  ^               │ │ └──fail─────────────> failed
//!                   │  └───requeue─────┘ └──wait──> waiting ──serve──> done
//!                   │  └───requeue (the lease is free)─┘  └──fail──> failed
//!                   └───retune─── done, failed
//! ```
//!
//! A search's running state ends with `finish`, `fail`, `wait`, `serve` or
//! `requeue`; a stored answer found when the spec is read makes the job
//! `done` at once. An invalid spec is its own kind of entry, with no work
//! and no transitions: it is replaced when its file changes and removed
//! with it. Every transition of a search names the work it was started
//! for (spec hash and data digest): a job whose spec changed meanwhile is
//! other work, and the old search's news is refused as stale.
//!
//! Nothing here reads a file or blocks: the lock is held for a few map
//! operations at a time.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::Notify;

pub use crate::job::JobState;
use crate::machine::{DeviceSlot, TrialDevice};
use crate::search::{Phase, Recommendation};
use crate::spec::{DeviceChoice, JobSpec};
use crate::state::StoredRecommendation;
use crate::validation::FieldError;

/// One job as the API shows it: a copy made under the lock, cheap since the
/// recommendation is shared.
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
    /// The identity of the data files the spec reads (a digest of their
    /// contents): changed data is other work, tuned again.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub data_digest: String,
    /// Shown in full by the recommendation endpoint, not in the job.
    #[serde(skip)]
    pub recommendation: Option<Arc<Recommendation>>,
    /// The content hash of a valid job's spec.
    pub spec_hash: Option<String>,
}

/// What a valid job's search is about: its spec and its data.
#[derive(Debug, Clone)]
pub struct Work {
    pub spec: Arc<JobSpec>,
    /// The digest of the data files' contents.
    pub data_digest: String,
}

impl Work {
    pub fn new(spec: JobSpec, data_digest: String) -> Work {
        Work {
            spec: Arc::new(spec),
            data_digest,
        }
    }

    /// Spec hash and data digest: what a transition names.
    pub fn id(&self) -> WorkId<'_> {
        WorkId {
            spec_hash: &self.spec.content_hash,
            data_digest: &self.data_digest,
        }
    }
}

/// Names one piece of work, so news of an old search never lands on the
/// job that replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkId<'a> {
    pub spec_hash: &'a str,
    pub data_digest: &'a str,
}

/// Where a valid job stands, with what that state knows.
#[derive(Debug, Clone)]
pub enum Status {
    Queued,
    Running {
        device: TrialDevice,
        device_model: String,
        phase: Option<Phase>,
        trials_done: usize,
    },
    /// Another node holds the lease on this work.
    Waiting {
        device: TrialDevice,
        device_model: String,
        holder: String,
        /// Unix seconds: a failure on the holder since then is this job's.
        since: u64,
    },
    Done {
        recommendation: Arc<Recommendation>,
        device: TrialDevice,
        device_model: String,
        trials_done: usize,
        /// From the state folder, not from this daemon's new trials.
        reused: bool,
        /// The other node that computed it.
        tuned_by: Option<String>,
    },
    Failed {
        error: String,
        device: Option<TrialDevice>,
        trials_done: usize,
    },
}

impl Status {
    pub fn state(&self) -> JobState {
        match self {
            Status::Queued => JobState::Queued,
            Status::Running { .. } => JobState::Running,
            Status::Waiting { .. } => JobState::Waiting,
            Status::Done { .. } => JobState::Done,
            Status::Failed { .. } => JobState::Failed,
        }
    }

    /// `done` with a stored answer: kept by this daemon, or by another node
    /// when it names one other than `own_node`.
    pub fn stored(stored: StoredRecommendation, own_node: Option<&str>) -> Status {
        Status::Done {
            device: stored.recommendation.device,
            device_model: stored.key.device_model.clone(),
            trials_done: stored.recommendation.evidence.trials.len(),
            reused: true,
            tuned_by: stored.node.filter(|n| Some(n.as_str()) != own_node),
            // One stored before curves were cut keeps them whole on disk;
            // served and shown, it is cut like a new one.
            recommendation: Arc::new(stored.recommendation.with_compact_curves()),
        }
    }
}

/// A job as the table keeps it.
#[derive(Debug, Clone)]
pub struct Entry {
    source_path: PathBuf,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Invalid { errors: Vec<FieldError> },
    Valid { work: Work, status: Status },
}

impl Entry {
    /// A valid spec's job, in the state its stored work puts it in.
    pub fn valid(source_path: PathBuf, work: Work, status: Status) -> Entry {
        Entry {
            source_path,
            kind: Kind::Valid { work, status },
        }
    }

    pub fn invalid(source_path: PathBuf, errors: Vec<FieldError>) -> Entry {
        Entry {
            source_path,
            kind: Kind::Invalid { errors },
        }
    }

    pub fn state(&self) -> JobState {
        match &self.kind {
            Kind::Invalid { .. } => JobState::Invalid,
            Kind::Valid { status, .. } => status.state(),
        }
    }

    pub fn work(&self) -> Option<&Work> {
        match &self.kind {
            Kind::Valid { work, .. } => Some(work),
            Kind::Invalid { .. } => None,
        }
    }

    /// The device model its work is keyed by, once known.
    pub fn device_model(&self) -> Option<&str> {
        match &self.kind {
            Kind::Valid { status, .. } => device_model_of(status),
            Kind::Invalid { .. } => None,
        }
    }

    /// The API's copy.
    fn view(&self, name: &str) -> Job {
        let mut job = Job {
            name: name.to_string(),
            source_path: self.source_path.clone(),
            state: self.state(),
            device: None,
            phase: None,
            trials_done: 0,
            errors: Vec::new(),
            error: None,
            reused: false,
            device_model: None,
            lease_holder: None,
            tuned_by: None,
            data_digest: String::new(),
            recommendation: None,
            spec_hash: None,
        };
        let (work, status) = match &self.kind {
            Kind::Invalid { errors } => {
                job.errors = errors.clone();
                return job;
            }
            Kind::Valid { work, status } => (work, status),
        };
        job.spec_hash = Some(work.spec.content_hash.clone());
        job.data_digest = work.data_digest.clone();
        job.device = device_of(status);
        job.device_model = device_model_of(status).map(str::to_string);
        job.trials_done = trials_of(status);
        match status {
            Status::Queued => {}
            Status::Running { phase, .. } => job.phase = *phase,
            Status::Waiting { holder, .. } => job.lease_holder = Some(holder.clone()),
            Status::Done {
                recommendation,
                reused,
                tuned_by,
                ..
            } => {
                job.recommendation = Some(recommendation.clone());
                job.reused = *reused;
                job.tuned_by = tuned_by.clone();
            }
            Status::Failed { error, .. } => job.error = Some(error.clone()),
        }
        job
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("no job named `{0}`")]
    NoSuchJob(String),
    /// The job holds other work now: its spec or data changed since.
    #[error("job `{0}` holds other work now")]
    Stale(String),
    #[error("job `{0}` is invalid")]
    Invalid(String),
    #[error("job `{job}` cannot go from {from} to {to}")]
    Illegal {
        job: String,
        from: JobState,
        to: JobState,
    },
}

impl TransitionError {
    /// Stale news, or news of a job that is gone: expected when a spec
    /// changes under a search. Anything else is a bug.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            TransitionError::NoSuchJob(_) | TransitionError::Stale(_)
        )
    }
}

/// A search in progress: what occupies a device.
pub struct RunningSearch {
    pub device: TrialDevice,
    pub cancel: Arc<Notify>,
    /// The lease it holds on a shared state folder.
    pub lease: Option<crate::lease::LeaseInfo>,
}

/// A job to start: the scheduler runs its search on `slot`.
pub struct Startable {
    pub name: String,
    pub work: Work,
    pub slot: DeviceSlot,
    pub cancel: Arc<Notify>,
}

/// What [`JobTable::start`] did.
#[derive(Default)]
pub struct Started {
    pub searches: Vec<Startable>,
    /// Jobs failed for asking for a device this machine lacks, with why.
    pub unservable: Vec<(String, String)>,
}

/// What a rescan asks of the table: the folder as it stands.
#[derive(Default)]
pub struct Rescanned {
    /// New or changed jobs (replacing any entry of that name).
    pub replace: Vec<(String, Entry)>,
    /// Unchanged jobs whose spec now lives in another file.
    pub moved: Vec<(String, PathBuf)>,
    /// Every name the folder still holds; the others are retired.
    pub keep: HashSet<String>,
}

/// What applying a rescan changed, for the log.
#[derive(Debug, PartialEq)]
pub enum Change {
    Moved {
        name: String,
        from: PathBuf,
        to: PathBuf,
    },
    Queued(String),
    Replaced(String, JobState),
    Invalid(String, Vec<FieldError>),
    Retired(String),
}

/// What a retune did.
#[derive(Debug)]
pub enum Retuned {
    /// Queued again: forget the stored answers of this work.
    Queued { work: Work },
    /// Already queued, waiting or running: nothing to do.
    Unchanged,
}

/// What [`JobTable::identities`] gives a rescan to compare the folder with.
pub struct Seen {
    pub source_path: PathBuf,
    /// Spec hash and data digest of a valid job.
    pub identity: Option<(String, String)>,
    pub state: JobState,
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Entry>,
    /// Device occupancy: a replaced job's old search stays here until its
    /// task ends.
    running: HashMap<String, RunningSearch>,
    /// Queued jobs in arrival order.
    queue: VecDeque<String>,
}

impl Inner {
    fn enqueue(&mut self, name: &str) {
        if !self.queue.iter().any(|n| n == name) {
            self.queue.push_back(name.to_string());
        }
    }

    fn cancel(&self, name: &str) {
        if let Some(search) = self.running.get(name) {
            search.cancel.notify_one();
        }
    }

    /// The status of `name` when it still holds `work`.
    fn status_of(&mut self, name: &str, work: WorkId<'_>) -> Result<&mut Status, TransitionError> {
        let entry = self
            .jobs
            .get_mut(name)
            .ok_or_else(|| TransitionError::NoSuchJob(name.to_string()))?;
        match &mut entry.kind {
            Kind::Invalid { .. } => Err(TransitionError::Stale(name.to_string())),
            Kind::Valid { work: held, status } => {
                if held.id() == work {
                    Ok(status)
                } else {
                    Err(TransitionError::Stale(name.to_string()))
                }
            }
        }
    }
}

/// Moves `name`'s status to `to` when `allowed` accepts its current one.
fn transition(
    inner: &mut Inner,
    name: &str,
    work: WorkId<'_>,
    allowed: impl Fn(&Status) -> bool,
    to: impl FnOnce(&Status) -> Status,
) -> Result<(), TransitionError> {
    let status = inner.status_of(name, work)?;
    if !allowed(status) {
        let from = status.state();
        let next = to(status).state();
        return Err(TransitionError::Illegal {
            job: name.to_string(),
            from,
            to: next,
        });
    }
    *status = to(status);
    Ok(())
}

fn is_running(status: &Status) -> bool {
    matches!(status, Status::Running { .. })
}

fn is_running_or_waiting(status: &Status) -> bool {
    matches!(status, Status::Running { .. } | Status::Waiting { .. })
}

/// The device a job's search runs (or ran) on.
fn device_of(status: &Status) -> Option<TrialDevice> {
    match status {
        Status::Running { device, .. }
        | Status::Waiting { device, .. }
        | Status::Done { device, .. } => Some(*device),
        Status::Failed { device, .. } => *device,
        Status::Queued => None,
    }
}

/// The device model a job's work is keyed by, once known.
fn device_model_of(status: &Status) -> Option<&str> {
    match status {
        Status::Running { device_model, .. }
        | Status::Waiting { device_model, .. }
        | Status::Done { device_model, .. } => Some(device_model),
        Status::Queued | Status::Failed { .. } => None,
    }
}

fn trials_of(status: &Status) -> usize {
    match status {
        Status::Running { trials_done, .. }
        | Status::Done { trials_done, .. }
        | Status::Failed { trials_done, .. } => *trials_done,
        _ => 0,
    }
}

/// Every job, the running searches and the queue.
#[derive(Default)]
pub struct JobTable {
    inner: Mutex<Inner>,
    /// Wakes the scheduler: a job was queued, or a device freed.
    wake: Notify,
}

impl JobTable {
    pub fn new() -> JobTable {
        JobTable::default()
    }

    /// A panic under the lock (a bug) leaves the table as the last
    /// transition left it; the daemon keeps serving, and the watchdog
    /// (see [`JobTable::responsive`]) has systemd restart it.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether no panic happened under the lock.
    pub fn responsive(&self) -> bool {
        !self.inner.is_poisoned()
    }

    /// Resolves when a job is queued or a device frees.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }

    /// Wakes the scheduler (a search ended, or settings changed).
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    // ----- reads -----

    pub fn get(&self, name: &str) -> Option<Job> {
        self.lock().jobs.get(name).map(|entry| entry.view(name))
    }

    /// Every job, in name order.
    pub fn list(&self) -> Vec<Job> {
        self.lock()
            .jobs
            .iter()
            .map(|(name, entry)| entry.view(name))
            .collect()
    }

    /// `f` of every job, in name order, under the lock (for the metrics,
    /// which take a few figures and no copies).
    pub fn each<T>(&self, mut f: impl FnMut(&str, &Entry, Option<&Recommendation>) -> T) -> Vec<T> {
        self.lock()
            .jobs
            .iter()
            .map(|(name, entry)| {
                let recommendation = match &entry.kind {
                    Kind::Valid {
                        status: Status::Done { recommendation, .. },
                        ..
                    } => Some(recommendation.as_ref()),
                    _ => None,
                };
                f(name, entry, recommendation)
            })
            .collect()
    }

    /// `(jobs, running searches, queued)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.lock();
        (inner.jobs.len(), inner.running.len(), inner.queue.len())
    }

    /// What a rescan compares the folder with.
    pub fn identities(&self) -> BTreeMap<String, Seen> {
        self.lock()
            .jobs
            .iter()
            .map(|(name, entry)| {
                let identity = entry
                    .work()
                    .map(|w| (w.spec.content_hash.clone(), w.data_digest.clone()));
                let seen = Seen {
                    source_path: entry.source_path.clone(),
                    identity,
                    state: entry.state(),
                };
                (name.clone(), seen)
            })
            .collect()
    }

    /// The spec of a valid job (POST's duplicate check, DELETE's reread).
    pub fn work(&self, name: &str) -> Option<Work> {
        self.lock().jobs.get(name)?.work().cloned()
    }

    /// Since when `name` has waited on another node for `work`; `None`
    /// when it is not waiting on it.
    pub fn waiting_since(&self, name: &str, work: WorkId<'_>) -> Option<u64> {
        match self.lock().status_of(name, work) {
            Ok(Status::Waiting { since, .. }) => Some(*since),
            _ => None,
        }
    }

    /// Trials the search of `name` has run so far.
    pub fn trials_done(&self, name: &str, work: WorkId<'_>) -> usize {
        self.lock()
            .status_of(name, work)
            .map_or(0, |s| trials_of(s))
    }

    /// The leases the running searches hold.
    pub fn running_leases(&self) -> Vec<crate::lease::LeaseInfo> {
        self.lock()
            .running
            .values()
            .filter_map(|r| r.lease.clone())
            .collect()
    }

    /// Running jobs with their spec hash (to mark their runs at a stop).
    pub fn running_jobs(&self) -> Vec<(String, String)> {
        self.lock()
            .jobs
            .iter()
            .filter(|(_, e)| e.state() == JobState::Running)
            .filter_map(|(n, e)| Some((n.clone(), e.work()?.spec.content_hash.clone())))
            .collect()
    }

    // ----- transitions -----

    /// Brings the table in line with a rescan of the jobs folder: new and
    /// changed jobs replace old ones (cancelling their search), an
    /// unchanged invalid entry is left alone, names the folder no longer
    /// holds are retired.
    pub fn apply(&self, rescanned: Rescanned) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut inner = self.lock();
        for (name, to) in rescanned.moved {
            if let Some(entry) = inner.jobs.get_mut(&name) {
                let from = std::mem::replace(&mut entry.source_path, to.clone());
                changes.push(Change::Moved { name, from, to });
            }
        }
        let mut queued = false;
        for (name, entry) in rescanned.replace {
            let same_invalid = inner.jobs.get(&name).is_some_and(|old| {
                matches!((&old.kind, &entry.kind), (
                    Kind::Invalid { errors: a },
                    Kind::Invalid { errors: b },
                ) if a == b && old.source_path == entry.source_path)
            });
            if same_invalid {
                continue;
            }
            inner.cancel(&name);
            match &entry.kind {
                Kind::Invalid { errors } => {
                    changes.push(Change::Invalid(name.clone(), errors.clone()))
                }
                Kind::Valid {
                    status: Status::Queued,
                    ..
                } => {
                    inner.enqueue(&name);
                    queued = true;
                    changes.push(Change::Queued(name.clone()));
                }
                Kind::Valid { status, .. } => {
                    changes.push(Change::Replaced(name.clone(), status.state()))
                }
            }
            inner.jobs.insert(name, entry);
        }
        let retired: Vec<String> = inner
            .jobs
            .keys()
            .filter(|n| !rescanned.keep.contains(*n))
            .cloned()
            .collect();
        for name in retired {
            inner.cancel(&name);
            inner.jobs.remove(&name);
            changes.push(Change::Retired(name));
        }
        // A job replaced by an invalid or finished one leaves the queue.
        let Inner { jobs, queue, .. } = &mut *inner;
        queue.retain(|n| jobs.get(n).is_some_and(|e| e.state() == JobState::Queued));
        drop(inner);
        if queued {
            self.wake.notify_one();
        }
        changes
    }

    /// Starts what [`super::placement::plan`] allows: queued jobs onto free
    /// devices, in queue order. Jobs asking for a device this machine
    /// lacks fail.
    pub fn start(&self, devices: &[DeviceSlot], max_concurrent: usize) -> Started {
        let mut inner = self.lock();
        let Inner {
            jobs,
            running,
            queue,
        } = &mut *inner;
        queue.retain(|n| jobs.get(n).is_some_and(|e| e.state() == JobState::Queued));
        let entries: Vec<(String, DeviceChoice)> = queue
            .iter()
            .filter_map(|name| Some((name.clone(), jobs.get(name)?.work()?.spec.search.device)))
            .collect();
        let busy: HashSet<TrialDevice> = running.values().map(|r| r.device).collect();
        let plan = super::placement::plan(&entries, devices, &busy, max_concurrent);
        queue.retain(|name| {
            !plan.unservable.contains(name) && !plan.start.iter().any(|(n, _)| n == name)
        });
        let available: Vec<String> = devices.iter().map(|d| d.device.to_string()).collect();
        let mut started = Started::default();
        for name in plan.unservable {
            let Some(Entry {
                kind: Kind::Valid { work, status },
                ..
            }) = jobs.get_mut(&name)
            else {
                continue;
            };
            let error = format!(
                "search.device = {}: this machine has no such device (it has {})",
                work.spec.search.device,
                available.join(", ")
            );
            *status = Status::Failed {
                error: error.clone(),
                device: None,
                trials_done: 0,
            };
            started.unservable.push((name, error));
        }
        for (name, device) in plan.start {
            let Some(Entry {
                kind: Kind::Valid { work, status },
                ..
            }) = jobs.get_mut(&name)
            else {
                continue;
            };
            let Some(slot) = devices.iter().find(|d| d.device == device).cloned() else {
                continue;
            };
            *status = Status::Running {
                device,
                device_model: slot.model.clone(),
                phase: None,
                trials_done: 0,
            };
            let cancel = Arc::new(Notify::new());
            running.insert(
                name.clone(),
                RunningSearch {
                    device,
                    cancel: cancel.clone(),
                    lease: None,
                },
            );
            started.searches.push(Startable {
                name,
                work: work.clone(),
                slot,
                cancel,
            });
        }
        started
    }

    /// A running search's progress.
    pub fn progress(
        &self,
        name: &str,
        work: WorkId<'_>,
        phase: Phase,
        trials: usize,
    ) -> Result<(), TransitionError> {
        let mut inner = self.lock();
        match inner.status_of(name, work)? {
            Status::Running {
                phase: p,
                trials_done,
                ..
            } => {
                *p = Some(phase);
                *trials_done = trials;
                Ok(())
            }
            other => Err(TransitionError::Illegal {
                job: name.to_string(),
                from: other.state(),
                to: JobState::Running,
            }),
        }
    }

    /// The lease a running search took on a shared state folder.
    pub fn hold_lease(&self, name: &str, cancel: &Arc<Notify>, lease: crate::lease::LeaseInfo) {
        if let Some(search) = self
            .lock()
            .running
            .get_mut(name)
            .filter(|r| Arc::ptr_eq(&r.cancel, cancel))
        {
            search.lease = Some(lease);
        }
    }

    /// Running (it found the work leased) or waiting (the holder changed)
    /// → waiting on `holder`.
    pub fn wait(
        &self,
        name: &str,
        work: WorkId<'_>,
        holder: String,
        now_unix_s: u64,
    ) -> Result<(), TransitionError> {
        transition(&mut self.lock(), name, work, is_running_or_waiting, |s| {
            let since = match s {
                Status::Waiting { since, .. } => *since,
                _ => now_unix_s,
            };
            Status::Waiting {
                device: device_of(s).unwrap_or(TrialDevice::Cpu),
                device_model: device_model_of(s).unwrap_or_default().to_string(),
                holder,
                since,
            }
        })
    }

    /// Running or waiting → done with an answer another node stored.
    pub fn serve(
        &self,
        name: &str,
        work: WorkId<'_>,
        stored: StoredRecommendation,
        own_node: Option<&str>,
    ) -> Result<(), TransitionError> {
        transition(&mut self.lock(), name, work, is_running_or_waiting, |_| {
            Status::stored(stored, own_node)
        })
    }

    /// Running → done with this daemon's answer.
    pub fn finish(
        &self,
        name: &str,
        work: WorkId<'_>,
        recommendation: Arc<Recommendation>,
    ) -> Result<(), TransitionError> {
        transition(&mut self.lock(), name, work, is_running, |s| Status::Done {
            trials_done: recommendation.evidence.trials.len(),
            device: device_of(s).unwrap_or(recommendation.device),
            device_model: device_model_of(s).unwrap_or_default().to_string(),
            recommendation,
            reused: false,
            tuned_by: None,
        })
    }

    /// Running or waiting → failed.
    pub fn fail(&self, name: &str, work: WorkId<'_>, error: String) -> Result<(), TransitionError> {
        transition(&mut self.lock(), name, work, is_running_or_waiting, |s| {
            Status::Failed {
                error,
                device: device_of(s),
                trials_done: trials_of(s),
            }
        })
    }

    /// Running (its lease was lost) or waiting (the lease is free) →
    /// queued, at the back.
    pub fn requeue(&self, name: &str, work: WorkId<'_>) -> Result<(), TransitionError> {
        let mut inner = self.lock();
        transition(&mut inner, name, work, is_running_or_waiting, |_| {
            Status::Queued
        })?;
        inner.enqueue(name);
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }

    /// Done or failed → queued; queued, waiting and running jobs stay.
    pub fn retune(&self, name: &str) -> Result<Retuned, TransitionError> {
        let mut inner = self.lock();
        let entry = inner
            .jobs
            .get_mut(name)
            .ok_or_else(|| TransitionError::NoSuchJob(name.to_string()))?;
        let Kind::Valid { work, status } = &mut entry.kind else {
            return Err(TransitionError::Invalid(name.to_string()));
        };
        if !matches!(status, Status::Done { .. } | Status::Failed { .. }) {
            return Ok(Retuned::Unchanged);
        }
        *status = Status::Queued;
        let work = work.clone();
        inner.enqueue(name);
        drop(inner);
        self.wake.notify_one();
        Ok(Retuned::Queued { work })
    }

    /// The search started with `cancel` ended: its device is free.
    pub fn leave_running(&self, name: &str, cancel: &Arc<Notify>) {
        {
            let mut inner = self.lock();
            if inner
                .running
                .get(name)
                .is_some_and(|r| Arc::ptr_eq(&r.cancel, cancel))
            {
                inner.running.remove(name);
            }
        }
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::CacheKey;

    fn spec(hash: &str, device: DeviceChoice) -> JobSpec {
        let origin = crate::spec::SpecOrigin {
            label: "j.toml".into(),
            default_name: Some("j".into()),
            base_dir: None,
        };
        let text = "[model]\nkind = \"mlp\"\ninput_size = 2\nhidden = [4]\nclasses = 2\n\
                    [data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n";
        let policies = crate::policy::PolicySet::builtin();
        let syntax = crate::validation::Syntax::Toml;
        let mut spec = crate::spec::parse_spec(text, syntax, &origin, &policies).unwrap();
        spec.content_hash = hash.to_string();
        spec.search.device = device;
        spec
    }

    fn cpu() -> Vec<DeviceSlot> {
        vec![DeviceSlot {
            device: TrialDevice::Cpu,
            model: "cpu".into(),
        }]
    }

    /// A table holding job `j` of spec hash `hash` asking for `device`,
    /// queued.
    fn table_with(hash: &str, device: DeviceChoice) -> JobTable {
        let table = JobTable::new();
        let work = Work::new(spec(hash, device), "d".into());
        table.apply(Rescanned {
            replace: vec![(
                "j".into(),
                Entry::valid("j.toml".into(), work, Status::Queued),
            )],
            keep: HashSet::from(["j".to_string()]),
            ..Rescanned::default()
        });
        table
    }

    /// A table holding job `j` (spec hash `h1`), queued.
    fn table_with_queued_job() -> JobTable {
        table_with("h1", DeviceChoice::Auto)
    }

    const W1: WorkId<'static> = WorkId {
        spec_hash: "h1",
        data_digest: "d",
    };

    fn state(table: &JobTable) -> JobState {
        table.get("j").unwrap().state
    }

    fn start(table: &JobTable) -> Startable {
        let mut started = table.start(&cpu(), 4);
        assert_eq!(started.searches.len(), 1);
        started.searches.pop().unwrap()
    }

    fn stored(batch: u64, node: &str) -> StoredRecommendation {
        StoredRecommendation {
            key: CacheKey::new("h1", "cpu", "d"),
            job: "j".into(),
            stored_at: 0,
            node: Some(node.into()),
            recommendation: Recommendation::example(batch),
        }
    }

    #[test]
    fn a_search_goes_queued_running_done_and_reads_share_the_answer() {
        let table = table_with_queued_job();
        assert_eq!(state(&table), JobState::Queued);
        assert_eq!(table.counts(), (1, 0, 1));
        let search = start(&table);
        assert_eq!(
            (state(&table), table.counts()),
            (JobState::Running, (1, 1, 0))
        );
        // Nothing more to start: the job is running, the CPU busy.
        assert!(table.start(&cpu(), 4).searches.is_empty());
        table.progress("j", W1, Phase::MaxFit, 3).unwrap();
        let job = table.get("j").unwrap();
        assert_eq!((job.phase, job.trials_done), (Some(Phase::MaxFit), 3));
        let answer = Arc::new(Recommendation::example(64));
        table.finish("j", W1, answer.clone()).unwrap();
        table.leave_running("j", &search.cancel);
        let job = table.get("j").unwrap();
        assert_eq!(job.state, JobState::Done);
        assert!(Arc::ptr_eq(job.recommendation.as_ref().unwrap(), &answer));
        assert_eq!(job.device, Some(TrialDevice::Cpu));
        assert_eq!(table.counts(), (1, 0, 0));
    }

    #[test]
    fn illegal_transitions_are_refused_and_change_nothing() {
        let table = table_with_queued_job();
        let answer = Arc::new(Recommendation::example(64));
        // A queued job has no search to finish, fail, wait or progress.
        let illegal = |r: Result<(), TransitionError>, from, to| {
            assert_eq!(
                r,
                Err(TransitionError::Illegal {
                    job: "j".into(),
                    from,
                    to
                })
            );
        };
        illegal(
            table.finish("j", W1, answer.clone()),
            JobState::Queued,
            JobState::Done,
        );
        illegal(
            table.fail("j", W1, "x".into()),
            JobState::Queued,
            JobState::Failed,
        );
        illegal(
            table.wait("j", W1, "b".into(), 1),
            JobState::Queued,
            JobState::Waiting,
        );
        illegal(
            table.progress("j", W1, Phase::MaxFit, 1),
            JobState::Queued,
            JobState::Running,
        );
        illegal(table.requeue("j", W1), JobState::Queued, JobState::Queued);
        assert_eq!(state(&table), JobState::Queued);
        // A done job cannot finish again, or fail, or be served.
        start(&table);
        table.finish("j", W1, answer.clone()).unwrap();
        illegal(
            table.finish("j", W1, answer),
            JobState::Done,
            JobState::Done,
        );
        illegal(
            table.fail("j", W1, "x".into()),
            JobState::Done,
            JobState::Failed,
        );
        illegal(
            table.serve("j", W1, stored(8, "b"), None),
            JobState::Done,
            JobState::Done,
        );
        assert_eq!(
            table.get("j").unwrap().recommendation.unwrap().batch_size,
            64
        );
        // Unknown jobs and other work are named as such.
        assert_eq!(
            table.finish("k", W1, Arc::new(Recommendation::example(1))),
            Err(TransitionError::NoSuchJob("k".into()))
        );
        let other = WorkId {
            spec_hash: "h2",
            data_digest: "d",
        };
        assert_eq!(
            table.fail("j", other, "x".into()),
            Err(TransitionError::Stale("j".into()))
        );
        assert!(TransitionError::Stale("j".into()).is_expected());
        assert!(!TransitionError::Illegal {
            job: "j".into(),
            from: JobState::Done,
            to: JobState::Done
        }
        .is_expected());
    }

    #[test]
    fn a_changed_spec_cancels_the_old_search_whose_news_is_then_stale() {
        let table = table_with_queued_job();
        let search = start(&table);
        let work = Work::new(spec("h2", DeviceChoice::Auto), "d".into());
        let changes = table.apply(Rescanned {
            replace: vec![(
                "j".into(),
                Entry::valid("j.toml".into(), work, Status::Queued),
            )],
            keep: HashSet::from(["j".to_string()]),
            ..Rescanned::default()
        });
        assert_eq!(changes, vec![Change::Queued("j".into())]);
        // The old search was told to stop; its device stays busy until it
        // has, so the new one waits for it.
        assert!(futures_ready(search.cancel.notified()));
        assert!(table.start(&cpu(), 4).searches.is_empty());
        assert_eq!(
            table.finish("j", W1, Arc::new(Recommendation::example(1))),
            Err(TransitionError::Stale("j".into()))
        );
        table.leave_running("j", &search.cancel);
        let new = start(&table);
        assert_eq!(new.work.spec.content_hash, "h2");
    }

    /// Whether `future` is ready at its first poll.
    fn futures_ready(future: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        future.as_mut().poll(&mut context).is_ready()
    }

    #[test]
    fn waiting_on_another_node_ends_served_failed_or_queued_again() {
        // Served.
        let table = table_with_queued_job();
        start(&table);
        table.wait("j", W1, "b".into(), 100).unwrap();
        // Waiting again on a new holder keeps when it began.
        table.wait("j", W1, "c".into(), 200).unwrap();
        assert_eq!(table.waiting_since("j", W1), Some(100));
        let job = table.get("j").unwrap();
        assert_eq!(
            (job.state, job.lease_holder.as_deref()),
            (JobState::Waiting, Some("c"))
        );
        table.serve("j", W1, stored(32, "c"), Some("a")).unwrap();
        let job = table.get("j").unwrap();
        assert_eq!(job.state, JobState::Done);
        assert_eq!((job.reused, job.tuned_by.as_deref()), (true, Some("c")));
        assert_eq!(table.waiting_since("j", W1), None);
        // Failed there.
        let table = table_with_queued_job();
        start(&table);
        table.wait("j", W1, "b".into(), 100).unwrap();
        table.fail("j", W1, "failed on b".into()).unwrap();
        assert_eq!(
            table.get("j").unwrap().error.as_deref(),
            Some("failed on b")
        );
        // The lease went free: queued again, and started again.
        let table = table_with_queued_job();
        let first = start(&table);
        table.wait("j", W1, "b".into(), 100).unwrap();
        table.leave_running("j", &first.cancel);
        table.requeue("j", W1).unwrap();
        assert_eq!(table.counts(), (1, 0, 1));
        start(&table);
        assert_eq!(state(&table), JobState::Running);
    }

    #[test]
    fn retune_queues_finished_jobs_only() {
        let table = table_with_queued_job();
        assert!(matches!(table.retune("j"), Ok(Retuned::Unchanged)));
        let search = start(&table);
        assert!(matches!(table.retune("j"), Ok(Retuned::Unchanged)));
        table.fail("j", W1, "boom".into()).unwrap();
        table.leave_running("j", &search.cancel);
        match table.retune("j") {
            Ok(Retuned::Queued { work }) => assert_eq!(work.spec.content_hash, "h1"),
            other => panic!("{other:?}"),
        }
        let job = table.get("j").unwrap();
        assert_eq!((job.state, job.error), (JobState::Queued, None));
        assert_eq!(table.counts(), (1, 0, 1));
        assert_eq!(
            table.retune("nope").unwrap_err(),
            TransitionError::NoSuchJob("nope".into())
        );
        table.apply(Rescanned {
            replace: vec![(
                "j".into(),
                Entry::invalid("j.toml".into(), vec![FieldError::new("x", "bad")]),
            )],
            keep: HashSet::from(["j".to_string()]),
            ..Rescanned::default()
        });
        assert_eq!(
            table.retune("j").unwrap_err(),
            TransitionError::Invalid("j".into())
        );
        // An invalid entry left the queue and is never started.
        assert_eq!(table.counts(), (1, 0, 0));
        assert!(table.start(&cpu(), 4).searches.is_empty());
    }

    #[test]
    fn a_job_for_a_missing_device_fails_and_a_removed_spec_is_retired() {
        let table = table_with("h1", DeviceChoice::Cuda(3));
        let started = table.start(&cpu(), 4);
        assert!(started.searches.is_empty());
        assert_eq!(started.unservable.len(), 1);
        let job = table.get("j").unwrap();
        assert_eq!(job.state, JobState::Failed);
        assert!(job.error.unwrap().contains("no such device"), "unservable");
        let changes = table.apply(Rescanned::default());
        assert_eq!(changes, vec![Change::Retired("j".into())]);
        assert!(table.get("j").is_none());
    }
}
