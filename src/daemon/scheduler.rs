//! The scheduler: queued jobs onto devices, one search per device at a
//! time (trials never share a GPU, or their memory and speed figures would
//! be each other's), searches on different devices in parallel, at most
//! `max_concurrent_jobs` in all.
//!
//! Fairness: the queue is served in arrival order (a changed or retuned
//! spec joins at the back), and a job waiting for a busy device does not
//! hold up the jobs behind it that want a free one.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::jobs::JobState;
use super::{fleet, RunningSearch, Shared};
use crate::machine::DeviceSlot;
use crate::search::{advise, Progress, Recommendation};
use crate::spec::{DeviceChoice, JobSpec};
use crate::state::{CacheKey, RunOutcome, RunRecord};
use crate::trial::{TrialDevice, TrialRunner};

/// What the scheduler does next.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Jobs to start now, with their device.
    pub start: Vec<(String, TrialDevice)>,
    /// Jobs that ask for a device this machine does not have.
    pub unservable: Vec<String>,
}

/// Assigns queued jobs (in queue order) to free devices.
pub fn plan(
    queue: &[(String, DeviceChoice)],
    devices: &[DeviceSlot],
    busy: &HashSet<TrialDevice>,
    max_concurrent: usize,
) -> Plan {
    let has_gpu = crate::machine::has_gpu(devices);
    let mut taken = busy.clone();
    let mut plan = Plan::default();
    for (name, choice) in queue {
        let mut candidates = devices.iter().filter(|d| d.device.serves(*choice, has_gpu));
        let Some(first) = candidates.next() else {
            plan.unservable.push(name.clone());
            continue;
        };
        if taken.len() >= max_concurrent {
            continue;
        }
        let free = std::iter::once(first)
            .chain(candidates)
            .find(|d| !taken.contains(&d.device));
        if let Some(slot) = free {
            taken.insert(slot.device);
            plan.start.push((name.clone(), slot.device));
        }
    }
    plan
}

/// Runs until aborted: starts what [`plan`] says whenever a job is queued
/// or a search ends.
pub(super) async fn run<R: TrialRunner + 'static>(shared: Arc<Shared>, runner: Arc<R>) {
    let mut searches = JoinSet::new();
    loop {
        for (name, spec, data, slot, cancel) in take_startable(&shared) {
            searches.spawn(run_search(
                shared.clone(),
                runner.clone(),
                name,
                spec,
                data,
                slot,
                cancel,
            ));
        }
        tokio::select! {
            _ = shared.queued.notified() => {}
            Some(_) = searches.join_next(), if !searches.is_empty() => {}
        }
    }
}

/// A job to start: its name, spec, data digest, device and cancel switch.
type Startable = (String, JobSpec, String, DeviceSlot, Arc<Notify>);

/// Takes the jobs to start off the queue and marks them running. Locks in
/// the daemon's order: jobs, running, queue.
fn take_startable(shared: &Shared) -> Vec<Startable> {
    let max_concurrent = shared.settings().config.max_concurrent_jobs as usize;
    let (Ok(mut jobs), Ok(mut running), Ok(mut queue)) = (
        shared.jobs.lock(),
        shared.running.lock(),
        shared.queue.lock(),
    ) else {
        return Vec::new();
    };
    queue.retain(|name| {
        jobs.get(name)
            .is_some_and(|j| j.state == JobState::Queued && j.spec.is_some())
    });
    let entries: Vec<(String, DeviceChoice)> = queue
        .iter()
        .filter_map(|name| {
            let spec = jobs.get(name)?.spec.as_ref()?;
            Some((name.clone(), spec.search.device))
        })
        .collect();
    let busy: HashSet<TrialDevice> = running.values().map(|r| r.device).collect();
    let plan = plan(&entries, &shared.machine.devices, &busy, max_concurrent);
    queue.retain(|name| {
        !plan.unservable.contains(name) && !plan.start.iter().any(|(n, _)| n == name)
    });
    let available: Vec<String> = shared
        .machine
        .devices
        .iter()
        .map(|d| d.device.to_string())
        .collect();
    for name in &plan.unservable {
        if let Some(job) = jobs.get_mut(name) {
            let wanted = job
                .spec
                .as_ref()
                .map_or_else(String::new, |s| s.search.device.to_string());
            job.state = JobState::Failed;
            job.error = Some(format!(
                "search.device = {wanted}: this machine has no such device (it has {})",
                available.join(", ")
            ));
            tracing::warn!(job = %name, "job {name}: {}", job.error.as_deref().unwrap_or_default());
        }
    }
    let mut startable = Vec::new();
    for (name, device) in plan.start {
        let Some(job) = jobs.get_mut(&name) else {
            continue;
        };
        let Some(spec) = job.spec.clone() else {
            continue;
        };
        let Some(slot) = shared
            .machine
            .devices
            .iter()
            .find(|d| d.device == device)
            .cloned()
        else {
            continue;
        };
        job.state = JobState::Running;
        job.device = Some(device);
        job.device_model = Some(slot.model.clone());
        job.lease_holder = None;
        job.phase = None;
        job.trials_done = 0;
        job.error = None;
        let cancel = Arc::new(Notify::new());
        running.insert(
            name.clone(),
            RunningSearch {
                device,
                cancel: cancel.clone(),
                lease: None,
            },
        );
        tracing::info!(job = %name, "job {name}: running on {device} ({})", slot.model);
        let data = job.data_digest.clone();
        startable.push((name, spec, data, slot, cancel));
    }
    startable
}

enum SearchEnd {
    Done(Box<Recommendation>),
    Failed(String),
    Cancelled,
    /// Another daemon took this one's lease over (it was thought dead).
    LostLease,
}

/// Takes `name` off the running table (if this search is still the one
/// there).
fn leave_running(shared: &Shared, name: &str, cancel: &Arc<Notify>) {
    if let Ok(mut running) = shared.running.lock() {
        if running
            .get(name)
            .is_some_and(|r| Arc::ptr_eq(&r.cancel, cancel))
        {
            running.remove(name);
        }
    }
}

/// On a shared state folder: claims the work before searching. `Some`
/// with the lease when this daemon is to search; `None` when the job was
/// settled otherwise (served, failed elsewhere, or waiting on another
/// node), the job's state saying which.
async fn claim_work(
    shared: &Arc<Shared>,
    name: &str,
    work: (&str, &str),
    key: &CacheKey,
    cancel: &Arc<Notify>,
) -> Option<Option<crate::lease::LeaseInfo>> {
    if shared.fleet.is_none() {
        return Some(None);
    }
    let waited_since = shared.job(name).and_then(|j| j.waiting_since);
    let claimed = {
        let shared = shared.clone();
        let (name, key) = (name.to_string(), key.clone());
        tokio::task::spawn_blocking(move || {
            let fleet = shared.fleet.as_ref()?;
            Some(fleet::claim(
                &shared.store,
                fleet,
                &name,
                &key,
                waited_since,
            ))
        })
        .await
        .ok()
        .flatten()
    };
    let (hash, data) = work;
    match claimed {
        Some(Ok(fleet::Claim::Run(lease))) => {
            if lease.took_over_from.is_some() {
                shared.metrics.lease_takeovers.inc();
            }
            if let Ok(mut running) = shared.running.lock() {
                if let Some(search) = running.get_mut(name) {
                    search.lease = Some(lease.clone());
                }
            }
            return Some(Some(lease));
        }
        Some(Ok(fleet::Claim::Served(stored))) => {
            serve_stored(shared, name, work, *stored);
        }
        Some(Ok(fleet::Claim::FailedElsewhere { node, error })) => {
            let node = node.unwrap_or_else(|| "another node".into());
            tracing::warn!(job = %name, "job {name}: failed on {node}: {error}");
            shared.update_job(name, (hash, data), |job| {
                job.state = JobState::Failed;
                job.error = Some(format!("failed on {node}: {error}"));
                job.lease_holder = None;
            });
        }
        Some(Ok(fleet::Claim::Wait(lease))) => {
            let holder = lease.owner.node.clone();
            tracing::info!(job = %name, "job {name}: {holder} is tuning this work; waiting for its result");
            shared.update_job(name, (hash, data), |job| {
                job.state = JobState::Waiting;
                job.lease_holder = Some(holder);
                job.waiting_since.get_or_insert_with(crate::state::unix_now);
                job.phase = None;
            });
            tokio::spawn(wait_for_holder(
                shared.clone(),
                name.to_string(),
                (hash.to_string(), data.to_string()),
                key.clone(),
            ));
        }
        Some(Err(error)) => {
            tracing::error!(job = %name, "job {name}: cannot claim its work on the shared state folder: {error}");
            shared.update_job(name, (hash, data), |job| {
                job.state = JobState::Failed;
                job.error = Some(format!(
                    "cannot claim its work on the shared state folder: {error}"
                ));
            });
        }
        None => {}
    }
    leave_running(shared, name, cancel);
    // A freed device may start the next job.
    shared.queued.notify_one();
    None
}

/// Serves a recommendation another node stored.
fn serve_stored(
    shared: &Shared,
    name: &str,
    work: (&str, &str),
    stored: crate::state::StoredRecommendation,
) {
    tracing::info!(job = %name, "job {name}: serving the result {} stored", stored.node.as_deref().unwrap_or("another daemon"));
    shared.metrics.shared_results.inc();
    shared.update_job(name, work, |job| job.take_stored(stored, shared.node()));
}

/// Follows a job waiting on another node: serves its result when stored;
/// queues the job again when the holder's lease is gone without one (it
/// died, or failed), so this daemon claims the work.
async fn wait_for_holder(shared: Arc<Shared>, name: String, work: (String, String), key: CacheKey) {
    let Some(interval) = shared.fleet.as_ref().map(|f| {
        (f.leases.ttl() / 4).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(2),
        )
    }) else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        let still_waiting = shared.job(&name).is_some_and(|j| {
            j.state == JobState::Waiting && j.identity() == Some((&work.0, &work.1))
        });
        if !still_waiting {
            return;
        }
        let looked = {
            let shared = shared.clone();
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                shared
                    .fleet
                    .as_ref()
                    .map(|fleet| fleet::look(&shared.store, fleet, &key))
            })
            .await
            .ok()
            .flatten()
        };
        match looked {
            Some(fleet::Look::Served(stored)) => {
                serve_stored(&shared, &name, (&work.0, &work.1), *stored);
                return;
            }
            Some(fleet::Look::StillHeld(node)) => {
                shared.update_job(&name, (&work.0, &work.1), |job| {
                    job.lease_holder = Some(node);
                });
            }
            Some(fleet::Look::Free) => {
                tracing::info!(job = %name, "job {name}: the lease on its work is free; claiming it");
                shared.update_job(&name, (&work.0, &work.1), |job| {
                    job.state = JobState::Queued;
                    job.lease_holder = None;
                });
                shared.enqueue(&name);
                return;
            }
            None => return,
        }
    }
}

/// Renews `lease` until it is lost; returns then (never, while it holds).
async fn keep_lease(shared: Arc<Shared>, lease: Option<crate::lease::LeaseInfo>) {
    let (Some(mut lease), Some(interval)) = (
        lease,
        shared.fleet.as_ref().map(|f| f.leases.heartbeat_interval()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        let renewed = {
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || {
                let fleet = shared.fleet.as_ref()?;
                let held = fleet.leases.renew(&mut lease, crate::lease::now_ms());
                Some((held, lease))
            })
            .await
            .ok()
            .flatten()
        };
        match renewed {
            Some((Ok(true), renewed)) => lease = renewed,
            Some((Ok(false), _)) => return,
            // A slow or failing volume: keep trying while the lease may
            // still be alive; the next heartbeat says whether it was lost.
            Some((Err(error), renewed)) => {
                tracing::warn!("cannot renew the lease on {}'s work: {error}", renewed.job);
                lease = renewed;
            }
            None => return,
        }
    }
}

/// One job's search from start to stored result.
async fn run_search<R: TrialRunner>(
    shared: Arc<Shared>,
    runner: Arc<R>,
    name: String,
    spec: JobSpec,
    data: String,
    slot: DeviceSlot,
    cancel: Arc<Notify>,
) {
    let hash = spec.content_hash.clone();
    let key = CacheKey::new(&hash, &slot.model, &data);
    let Some(lease) = claim_work(&shared, &name, (&hash, &data), &key, &cancel).await else {
        return;
    };
    let mut record = RunRecord::started(&hash, &data, slot.device, &slot.model);
    record.node = shared.node().map(str::to_string);
    let started_at_unix_s = record.started_at_unix_s;
    if let Err(error) = shared.store.record_run(&name, &record) {
        tracing::warn!(job = %name, "job {name}: cannot record the run in its history: {error}");
    }
    let end = tokio::select! {
        end = search(
            &shared,
            runner.as_ref(),
            &name,
            &spec,
            &data,
            &slot,
            &cancel,
        ) => end,
        () = keep_lease(shared.clone(), lease.clone()) => {
            runner.release(slot.device).await;
            SearchEnd::LostLease
        }
    };
    leave_running(&shared, &name, &cancel);
    let trials = shared.job(&name).map_or(0, |j| j.trials_done);
    let finished = shared
        .store
        .finish_run(&name, &hash, started_at_unix_s, |run| {
            run.trials = trials;
            match &end {
                SearchEnd::Done(recommendation) => {
                    run.outcome = RunOutcome::Done;
                    run.trials = recommendation.evidence.trials.len();
                    run.batch_size = Some(recommendation.batch_size);
                    run.learning_rate = recommendation.lr.learning_rate;
                }
                SearchEnd::Failed(error) => {
                    run.outcome = RunOutcome::Failed;
                    run.error = Some(error.clone());
                }
                SearchEnd::Cancelled => {
                    run.outcome = RunOutcome::Cancelled;
                    run.error = Some("the spec changed or was removed".into());
                }
                SearchEnd::LostLease => {
                    run.outcome = RunOutcome::Interrupted;
                    run.error = Some(
                        "another node took this daemon's lease on the work over (its heartbeats stopped reaching the shared folder in time)".into(),
                    );
                }
            }
        });
    if let Err(error) = finished {
        tracing::warn!(job = %name, "job {name}: cannot record the run's end in its history: {error}");
    }
    match end {
        SearchEnd::Cancelled => tracing::info!(job = %name, "job {name}: search cancelled"),
        SearchEnd::LostLease => {
            tracing::warn!(job = %name, "job {name}: lost its lease to another node; serving that node's result when it is stored");
            shared.update_job(&name, (&hash, &data), |job| {
                job.state = JobState::Queued;
            });
            shared.enqueue(&name);
        }
        SearchEnd::Done(recommendation) => {
            if let Err(error) =
                shared
                    .store
                    .put_recommendation_from(&key, &name, &recommendation, shared.node())
            {
                tracing::error!(job = %name, "job {name}: cannot store the recommendation: {error}");
            }
            tracing::info!(job = %name, "job {name}: done, batch {}", recommendation.batch_size);
            shared.update_job(&name, (&hash, &data), |job| {
                job.state = JobState::Done;
                job.trials_done = recommendation.evidence.trials.len();
                job.recommendation = Some(std::sync::Arc::from(recommendation));
            });
        }
        SearchEnd::Failed(error) => {
            tracing::warn!(job = %name, "job {name}: failed: {error}");
            shared.update_job(&name, (&hash, &data), |job| {
                job.state = JobState::Failed;
                job.error = Some(error);
            });
        }
    }
    // Last: the answer (or the failure) is stored, so whoever takes the
    // lease next finds it rather than tuning again.
    if let Some(lease) = lease {
        let shared = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(fleet) = &shared.fleet {
                fleet.leases.release(&lease);
            }
        })
        .await;
    }
}

async fn search<R: TrialRunner>(
    shared: &Arc<Shared>,
    runner: &R,
    name: &str,
    spec: &JobSpec,
    data: &str,
    slot: &DeviceSlot,
    cancel: &Notify,
) -> SearchEnd {
    let context = match shared
        .machine
        .search_context(slot.device, spec.search.memory_limit)
    {
        Ok(context) => context,
        Err(error) => return SearchEnd::Failed(error.to_string()),
    };
    let progress_shared = shared.clone();
    let progress_name = name.to_string();
    let progress_hash = spec.content_hash.clone();
    let progress_data = data.to_string();
    let on_progress = move |p: &Progress| {
        progress_shared.update_job(&progress_name, (&progress_hash, &progress_data), |job| {
            job.phase = Some(p.phase);
            job.trials_done = p.trials_done;
        });
    };
    tokio::select! {
        outcome = advise(spec, &context, runner, &on_progress) => match outcome {
            Ok(recommendation) => SearchEnd::Done(Box::new(recommendation)),
            Err(error) => SearchEnd::Failed(error.to_string()),
        },
        // Dropping the search drops its trial, whose child is killed; an
        // idle persistent process of the job's is ended here.
        _ = cancel.notified() => {
            runner.release(slot.device).await;
            SearchEnd::Cancelled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(index: u32) -> DeviceSlot {
        DeviceSlot {
            device: TrialDevice::Cuda(index),
            model: "NVIDIA H100".into(),
        }
    }

    fn cpu() -> DeviceSlot {
        DeviceSlot {
            device: TrialDevice::Cpu,
            model: "cpu".into(),
        }
    }

    fn queue(entries: &[(&str, DeviceChoice)]) -> Vec<(String, DeviceChoice)> {
        entries.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn one_search_per_device_and_auto_jobs_spread_over_gpus() {
        let devices = [cuda(0), cuda(1), cpu()];
        let q = queue(&[
            ("a", DeviceChoice::Auto),
            ("b", DeviceChoice::Auto),
            ("c", DeviceChoice::Auto),
            ("d", DeviceChoice::Cpu),
        ]);
        let plan = plan(&q, &devices, &HashSet::new(), 16);
        assert_eq!(
            plan.start,
            vec![
                ("a".into(), TrialDevice::Cuda(0)),
                ("b".into(), TrialDevice::Cuda(1)),
                ("d".into(), TrialDevice::Cpu),
            ]
        );
        assert!(plan.unservable.is_empty());
    }

    #[test]
    fn a_job_waiting_for_a_busy_device_does_not_block_the_queue() {
        let devices = [cuda(0), cuda(1), cpu()];
        let q = queue(&[
            ("pinned", DeviceChoice::Cuda(0)),
            ("any", DeviceChoice::Auto),
        ]);
        let busy = HashSet::from([TrialDevice::Cuda(0)]);
        let plan = plan(&q, &devices, &busy, 16);
        assert_eq!(plan.start, vec![("any".into(), TrialDevice::Cuda(1))]);
    }

    #[test]
    fn concurrency_is_capped_in_queue_order() {
        let devices = [cuda(0), cuda(1), cuda(2), cpu()];
        let q = queue(&[
            ("a", DeviceChoice::Auto),
            ("b", DeviceChoice::Auto),
            ("c", DeviceChoice::Auto),
        ]);
        let plan1 = plan(&q, &devices, &HashSet::new(), 2);
        assert_eq!(plan1.start.len(), 2);
        assert_eq!(plan1.start[0].0, "a");
        assert_eq!(plan1.start[1].0, "b");
        let busy = HashSet::from([TrialDevice::Cuda(0), TrialDevice::Cuda(1)]);
        assert!(plan(&q[2..], &devices, &busy, 2).start.is_empty());
    }

    #[test]
    fn auto_means_cpu_only_without_gpus_and_missing_devices_are_reported() {
        let q = queue(&[("a", DeviceChoice::Auto), ("g", DeviceChoice::Cuda(3))]);
        let plan1 = plan(&q, &[cpu()], &HashSet::new(), 16);
        assert_eq!(plan1.start, vec![("a".into(), TrialDevice::Cpu)]);
        assert_eq!(plan1.unservable, vec!["g".to_string()]);
        // With a GPU, auto never falls back to the (busy-free) CPU.
        let busy = HashSet::from([TrialDevice::Cuda(0)]);
        let plan2 = plan(&q[..1], &[cuda(0), cpu()], &busy, 16);
        assert!(plan2.start.is_empty());
    }
}
