//! The scheduler: starts the searches the table's placement allows
//! ([`super::placement`]), claims their work on a shared state folder,
//! runs them, and reports how each ended as a transition of the job
//! table.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::table::{Startable, TransitionError, Work, WorkId};
use super::{fleet, Service};
use crate::machine::DeviceSlot;
use crate::search::{advise, Progress, Recommendation};
use crate::state::{CacheKey, RunOutcome, RunRecord};
use crate::trial::TrialRunner;

/// Runs until aborted: starts what [`super::placement::plan`] allows whenever a job is queued
/// or a search ends.
pub(super) async fn run<R: TrialRunner + 'static>(service: Arc<Service>, runner: Arc<R>) {
    let mut searches = JoinSet::new();
    loop {
        let max_concurrent = service.settings().config.max_concurrent_jobs as usize;
        let started = service
            .table()
            .start(&service.machine().devices, max_concurrent);
        for (name, error) in started.unservable {
            tracing::warn!(job = %name, "job {name}: {error}");
        }
        for search in started.searches {
            tracing::info!(job = %search.name, "job {}: running on {} ({})", search.name, search.slot.device, search.slot.model);
            searches.spawn(run_search(service.clone(), runner.clone(), search));
        }
        tokio::select! {
            () = service.table().changed() => {}
            Some(_) = searches.join_next(), if !searches.is_empty() => {}
        }
    }
}

/// Logs a refused transition: stale news is expected (the spec changed
/// under the search), anything else is a bug worth a loud line.
fn noted(name: &str, result: Result<(), TransitionError>) {
    match result {
        Ok(()) => {}
        Err(error) if error.is_expected() => {
            tracing::debug!(job = %name, "job {name}: not updated: {error}")
        }
        Err(error) => tracing::error!(job = %name, "job {name}: {error} (a bug: please report it)"),
    }
}

enum SearchEnd {
    Done(Box<Recommendation>),
    Failed(String),
    Cancelled,
    /// Another daemon took this one's lease over (it was thought dead).
    LostLease,
}

/// On a shared state folder: claims the work before searching. `Some`
/// with the lease when this daemon is to search; `None` when the job was
/// settled otherwise (served, failed elsewhere, or waiting on another
/// node), the job's state saying which.
async fn claim_work(
    service: &Arc<Service>,
    name: &str,
    work: &Work,
    key: &CacheKey,
    cancel: &Arc<Notify>,
) -> Option<Option<crate::lease::LeaseInfo>> {
    if service.fleet().is_none() {
        return Some(None);
    }
    let id = work.id();
    let waited_since = service.table().waiting_since(name, id);
    let claimed = {
        let service = service.clone();
        let (name, key) = (name.to_string(), key.clone());
        tokio::task::spawn_blocking(move || {
            let fleet = service.fleet()?;
            Some(fleet::claim(
                service.store(),
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
    let table = service.table();
    match claimed {
        Some(Ok(fleet::Claim::Run(lease))) => {
            if lease.took_over_from.is_some() {
                service.metrics().lease_takeovers.inc();
            }
            table.hold_lease(name, cancel, lease.clone());
            return Some(Some(lease));
        }
        Some(Ok(fleet::Claim::Served(stored))) => {
            serve_stored(service, name, id, *stored);
        }
        Some(Ok(fleet::Claim::FailedElsewhere { node, error })) => {
            let node = node.unwrap_or_else(|| "another node".into());
            tracing::warn!(job = %name, "job {name}: failed on {node}: {error}");
            noted(
                name,
                table.fail(name, id, format!("failed on {node}: {error}")),
            );
        }
        Some(Ok(fleet::Claim::Wait(lease))) => {
            let holder = lease.owner.node.clone();
            tracing::info!(job = %name, "job {name}: {holder} is tuning this work; waiting for its result");
            let waiting = table.wait(name, id, holder, crate::state::unix_now());
            if waiting.is_ok() {
                tokio::spawn(wait_for_holder(
                    service.clone(),
                    name.to_string(),
                    work.clone(),
                    key.clone(),
                ));
            }
            noted(name, waiting);
        }
        Some(Err(error)) => {
            tracing::error!(job = %name, "job {name}: cannot claim its work on the shared state folder: {error}");
            let error = format!("cannot claim its work on the shared state folder: {error}");
            noted(name, table.fail(name, id, error));
        }
        None => {}
    }
    // A freed device may start the next job.
    table.leave_running(name, cancel);
    None
}

/// Serves a recommendation another node stored.
fn serve_stored(
    service: &Service,
    name: &str,
    work: WorkId<'_>,
    stored: crate::state::StoredRecommendation,
) {
    tracing::info!(job = %name, "job {name}: serving the result {} stored", stored.node.as_deref().unwrap_or("another daemon"));
    service.metrics().shared_results.inc();
    noted(
        name,
        service.table().serve(name, work, stored, service.node()),
    );
}

/// Follows a job waiting on another node: serves its result when stored;
/// queues the job again when the holder's lease is gone without one (it
/// died, or failed), so this daemon claims the work.
async fn wait_for_holder(service: Arc<Service>, name: String, work: Work, key: CacheKey) {
    let Some(interval) = service.fleet().map(|f| {
        (f.leases.ttl() / 4).clamp(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(2),
        )
    }) else {
        return;
    };
    loop {
        tokio::time::sleep(interval).await;
        if service.table().waiting_since(&name, work.id()).is_none() {
            return;
        }
        let looked = {
            let service = service.clone();
            let key = key.clone();
            tokio::task::spawn_blocking(move || {
                service
                    .fleet()
                    .map(|fleet| fleet::look(service.store(), fleet, &key))
            })
            .await
            .ok()
            .flatten()
        };
        match looked {
            Some(fleet::Look::Served(stored)) => {
                serve_stored(&service, &name, work.id(), *stored);
                return;
            }
            Some(fleet::Look::StillHeld(node)) => {
                let now = crate::state::unix_now();
                noted(&name, service.table().wait(&name, work.id(), node, now));
            }
            Some(fleet::Look::Free) => {
                tracing::info!(job = %name, "job {name}: the lease on its work is free; claiming it");
                noted(&name, service.table().requeue(&name, work.id()));
                return;
            }
            None => return,
        }
    }
}

/// Renews `lease` until it is lost; returns then (never, while it holds).
async fn keep_lease(service: Arc<Service>, lease: Option<crate::lease::LeaseInfo>) {
    let (Some(mut lease), Some(interval)) = (
        lease,
        service.fleet().map(|f| f.leases.heartbeat_interval()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        let renewed = {
            let service = service.clone();
            tokio::task::spawn_blocking(move || {
                let fleet = service.fleet()?;
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
async fn run_search<R: TrialRunner>(service: Arc<Service>, runner: Arc<R>, started: Startable) {
    let Startable {
        name,
        work,
        slot,
        cancel,
    } = started;
    let (hash, data) = (work.spec.content_hash.clone(), work.data_digest.clone());
    let key = CacheKey::new(&hash, &slot.model, &data);
    let Some(lease) = claim_work(&service, &name, &work, &key, &cancel).await else {
        return;
    };
    let mut record = RunRecord::started(&hash, &data, slot.device, &slot.model);
    record.node = service.node().map(str::to_string);
    let started_at_unix_s = record.started_at_unix_s;
    if let Err(error) = service.store().record_run(&name, &record) {
        tracing::warn!(job = %name, "job {name}: cannot record the run in its history: {error}");
    }
    let end = tokio::select! {
        end = search(&service, runner.as_ref(), &name, &work, &slot, &cancel) => end,
        () = keep_lease(service.clone(), lease.clone()) => {
            runner.release(slot.device).await;
            SearchEnd::LostLease
        }
    };
    let trials = service.table().trials_done(&name, work.id());
    let finished = service
        .store()
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
    let table = service.table();
    match end {
        SearchEnd::Cancelled => tracing::info!(job = %name, "job {name}: search cancelled"),
        SearchEnd::LostLease => {
            tracing::warn!(job = %name, "job {name}: lost its lease to another node; serving that node's result when it is stored");
            noted(&name, table.requeue(&name, work.id()));
        }
        SearchEnd::Done(recommendation) => {
            let stored = service.store().put_recommendation_from(
                &key,
                &name,
                &recommendation,
                service.node(),
            );
            if let Err(error) = stored {
                tracing::error!(job = %name, "job {name}: cannot store the recommendation: {error}");
            }
            tracing::info!(job = %name, "job {name}: done, batch {}", recommendation.batch_size);
            noted(
                &name,
                table.finish(&name, work.id(), Arc::from(recommendation)),
            );
        }
        SearchEnd::Failed(error) => {
            tracing::warn!(job = %name, "job {name}: failed: {error}");
            noted(&name, table.fail(&name, work.id(), error));
        }
    }
    // The device is free once the job's state says how the search ended.
    table.leave_running(&name, &cancel);
    // Last: the answer (or the failure) is stored, so whoever takes the
    // lease next finds it rather than tuning again.
    if let Some(lease) = lease {
        let service = service.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(fleet) = service.fleet() {
                fleet.leases.release(&lease);
            }
        })
        .await;
    }
}

async fn search<R: TrialRunner>(
    service: &Arc<Service>,
    runner: &R,
    name: &str,
    work: &Work,
    slot: &DeviceSlot,
    cancel: &Notify,
) -> SearchEnd {
    let spec = work.spec.as_ref();
    let context = match service
        .machine()
        .search_context(slot.device, spec.search.memory_limit)
    {
        Ok(context) => context,
        Err(error) => return SearchEnd::Failed(error.to_string()),
    };
    let progress_service = service.clone();
    let progress_name = name.to_string();
    let progress_work = work.clone();
    let on_progress = move |p: &Progress| {
        let table = progress_service.table();
        let updated = table.progress(&progress_name, progress_work.id(), p.phase, p.trials_done);
        noted(&progress_name, updated);
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
