//! Several daemons on one shared state folder (a fleet of GPU nodes on a
//! ReadWriteMany volume): before a search, a daemon claims its work's
//! lease ([`crate::lease`]); the holder tunes, the others wait and serve
//! the stored result, and a dead holder's work is taken over when its
//! lease expires. docs/fleet.md has the design and its limits.
//!
//! Everything here reads and writes files: callers run it off the async
//! threads (`spawn_blocking`).

use crate::lease::{now_ms, Acquired, LeaseInfo, Leases, Owner};
use crate::state::{CacheKey, RunOutcome, StateError, StateStore, StoredRecommendation};

/// This daemon's place in the fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub leases: Leases,
    pub owner: Owner,
}

impl Fleet {
    /// The node's name: `BATCHD_NODE_NAME` (the DaemonSet sets it from the
    /// pod's node), else the host name.
    pub fn node_name() -> String {
        std::env::var("BATCHD_NODE_NAME")
            .ok()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(crate::state::host_name)
    }
}

/// What a daemon is to do with a job's work.
#[derive(Debug)]
pub enum Claim {
    /// Tune it: this daemon holds the lease.
    Run(LeaseInfo),
    /// Another daemon stored the answer: serve it.
    Served(Box<StoredRecommendation>),
    /// Another daemon's search of it failed since this job began waiting.
    FailedElsewhere { node: Option<String>, error: String },
    /// Another daemon holds a live lease on it.
    Wait(LeaseInfo),
}

/// Claims `key`'s work for `job`. `waited_since` (Unix seconds): when the
/// job began waiting on another node, whose failure since then is this
/// job's failure too (it would fail the same way here).
pub fn claim(
    store: &StateStore,
    fleet: &Fleet,
    job: &str,
    key: &CacheKey,
    waited_since: Option<u64>,
) -> Result<Claim, StateError> {
    if let (Some(stored), _) = store.get_recommendation(key) {
        return Ok(Claim::Served(Box::new(stored)));
    }
    let lease = match fleet.leases.acquire(key, job, &fleet.owner, now_ms())? {
        Acquired::Held(lease) => return Ok(Claim::Wait(lease)),
        Acquired::Taken(lease) => lease,
    };
    // A holder stores its answer (or records its failure) before it
    // releases its lease, so a lease taken now sees either.
    if let (Some(stored), _) = store.get_recommendation(key) {
        fleet.leases.release(&lease);
        return Ok(Claim::Served(Box::new(stored)));
    }
    if let Some(since) = waited_since {
        let (runs, _) = store.history(job);
        let failed = runs.iter().rev().find(|run| {
            run.answers(key)
                && run.outcome == RunOutcome::Failed
                && run.finished_at_unix_s.is_some_and(|t| t >= since)
        });
        if let Some(run) = failed {
            fleet.leases.release(&lease);
            return Ok(Claim::FailedElsewhere {
                node: run.node.clone(),
                error: run.error.clone().unwrap_or_default(),
            });
        }
    }
    if let Some(dead) = &lease.took_over_from {
        let reason = format!(
            "the daemon on {} stopped renewing its lease; {} took the work over",
            dead.node, fleet.owner.node
        );
        store.interrupt_runs_of(job, key, &dead.node, &reason)?;
    }
    Ok(Claim::Run(lease))
}

/// What a waiting job finds when it looks again.
#[derive(Debug)]
pub enum Look {
    Served(Box<StoredRecommendation>),
    /// The holder is still at it (its node).
    StillHeld(String),
    /// No live lease and no answer: claim the work again.
    Free,
}

/// Looks at `key`'s work for a waiting job.
pub fn look(store: &StateStore, fleet: &Fleet, key: &CacheKey) -> Look {
    if let (Some(stored), _) = store.get_recommendation(key) {
        return Look::Served(Box::new(stored));
    }
    match fleet.leases.current(key) {
        Some(lease) if !lease.expired(now_ms(), fleet.leases.grace()) => {
            Look::StillHeld(lease.owner.node)
        }
        _ => Look::Free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::Recommendation;
    use crate::state::RunRecord;
    use crate::trial::TrialDevice;
    use std::time::Duration;

    fn fleet(dir: &std::path::Path, node: &str) -> Fleet {
        Fleet {
            leases: Leases::open(dir, Duration::from_secs(30)).unwrap(),
            owner: Owner::new(node, 1),
        }
    }

    #[test]
    fn one_daemon_runs_the_work_and_the_others_wait_then_serve_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_shared(dir.path()).unwrap();
        let (a, b) = (fleet(dir.path(), "a"), fleet(dir.path(), "b"));
        let key = CacheKey::new("hash", "cpu", "");
        let Claim::Run(lease) = claim(&store, &a, "j", &key, None).unwrap() else {
            panic!("the first claim runs it");
        };
        assert!(matches!(
            claim(&store, &b, "j", &key, None).unwrap(),
            Claim::Wait(_)
        ));
        assert!(matches!(look(&store, &b, &key), Look::StillHeld(node) if node == "a"));
        store
            .put_recommendation_from(&key, "j", &Recommendation::example(64), Some("a"))
            .unwrap();
        a.leases.release(&lease);
        match look(&store, &b, &key) {
            Look::Served(stored) => assert_eq!(stored.node.as_deref(), Some("a")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            claim(&store, &b, "j", &key, None).unwrap(),
            Claim::Served(_)
        ));
    }

    #[test]
    fn a_failure_while_waiting_is_shared_and_a_dead_holders_run_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open_shared(dir.path()).unwrap();
        let (a, b) = (fleet(dir.path(), "a"), fleet(dir.path(), "b"));
        let key = CacheKey::new("hash", "cpu", "");
        let Claim::Run(lease) = claim(&store, &a, "j", &key, None).unwrap() else {
            panic!()
        };
        let mut run = RunRecord::started("hash", "", TrialDevice::Cpu, "cpu");
        run.node = Some("a".into());
        store.record_run("j", &run).unwrap();
        store
            .finish_run("j", "hash", run.started_at_unix_s, |r| {
                r.outcome = RunOutcome::Failed;
                r.error = Some("nothing fits".into());
            })
            .unwrap();
        a.leases.release(&lease);
        match claim(&store, &b, "j", &key, Some(run.started_at_unix_s)).unwrap() {
            Claim::FailedElsewhere { node, error } => {
                assert_eq!(
                    (node.as_deref(), error.as_str()),
                    (Some("a"), "nothing fits")
                )
            }
            other => panic!("{other:?}"),
        }
        // A job that did not wait (a retune) runs the work again.
        let Claim::Run(lease) = claim(&store, &b, "j", &key, None).unwrap() else {
            panic!()
        };
        b.leases.release(&lease);
        // A holder that died mid-run: its lease expires, the taker marks
        // its run interrupted.
        let Claim::Run(_dead) = claim(&store, &a, "j", &key, None).unwrap() else {
            panic!()
        };
        store.record_run("j", &run).unwrap();
        let late = Leases::open(dir.path(), Duration::from_secs(30)).unwrap();
        let taker = Fleet {
            leases: late,
            owner: Owner::new("c", 3),
        };
        let Acquired::Taken(lease) = taker
            .leases
            .acquire(&key, "j", &taker.owner, now_ms() + 60_000)
            .unwrap()
        else {
            panic!("an expired lease is taken over")
        };
        assert_eq!(
            lease.took_over_from.as_ref().map(|o| o.node.as_str()),
            Some("a")
        );
        store
            .interrupt_runs_of("j", &key, "a", "taken over")
            .unwrap();
        let (runs, _) = store.history("j");
        assert_eq!(runs.last().unwrap().outcome, RunOutcome::Interrupted);
    }
}
