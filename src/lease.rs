//! Leases on work in a shared state folder: when several daemons (one per
//! GPU node) share one folder, the first to take the lease on a key (spec
//! hash, GPU model, batchd version, data) computes its recommendation and
//! the others serve it.
//!
//! A lease is a file `leases/<key digest>.<generation>.json`, created whole
//! or not at all with a hard link (atomic on local file systems and on NFS,
//! where `O_EXCL` has not always been), holding its owner, a heartbeat and
//! an expiry. The holder rewrites it (temporary file and rename) every
//! third of its time to live. A lease whose expiry has passed, by the
//! reader's clock and a grace of half the time to live, is dead: whoever
//! first creates the next generation takes the work over. Creating a name
//! that exists fails, so of any number of daemons racing for a generation
//! exactly one wins, with no lock server. A holder that finds a newer
//! generation at its heartbeat has lost the lease (it was thought dead)
//! and stops.
//!
//! Clocks: expiry compares the holder's wall clock with the reader's, so
//! clocks that disagree by more than the grace make a live lease look
//! dead (two daemons then tune the same key; both results are the same
//! kind of answer and the later write wins) or a dead one live for longer.
//! docs/fleet.md has the limits.
//!
//! Pure of time: every call takes `now` (Unix milliseconds), so the rules
//! are tested without sleeping.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::atomic_file::{create_atomically, write_atomically, FileError};
use crate::spec::read::read_regular_file;
use crate::state::{CacheKey, StateError};

/// The largest lease file read; real ones are a few hundred bytes.
const MAX_LEASE_FILE: u64 = 64 * 1024;

/// Who holds a lease: a node and one run of a daemon on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node's name (`BATCHD_NODE_NAME`, else the host name).
    pub node: String,
    /// Distinct for every start of a daemon: node, process and start time.
    pub id: String,
}

impl Owner {
    /// This process on `node`, started at `started_ms`.
    pub fn new(node: &str, started_ms: u64) -> Owner {
        Owner {
            node: node.to_string(),
            id: format!("{node}/{}/{started_ms}", std::process::id()),
        }
    }
}

/// A lease as its file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub owner: Owner,
    pub job: String,
    pub key: CacheKey,
    pub generation: u64,
    pub taken_at_ms: u64,
    pub heartbeat_ms: u64,
    pub expires_ms: u64,
    /// The owner of the dead lease this one took the work over from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_over_from: Option<Owner>,
}

impl LeaseInfo {
    /// Whether the lease is dead at `now`: past its expiry by `grace`.
    pub fn expired(&self, now_ms: u64, grace: Duration) -> bool {
        now_ms > self.expires_ms.saturating_add(grace.as_millis() as u64)
    }
}

/// What an attempt to take a lease found.
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// This daemon holds it now (over a dead holder's, when
    /// `took_over_from` says so).
    Taken(LeaseInfo),
    /// Another daemon holds it and is alive.
    Held(LeaseInfo),
}

/// The leases folder of a shared state folder.
#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
    ttl: Duration,
}

impl Leases {
    /// The leases under `state_dir`, with leases living `ttl` past each
    /// heartbeat.
    pub fn open(state_dir: &Path, ttl: Duration) -> Result<Leases, StateError> {
        let dir = state_dir.join("leases");
        fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Leases { dir, ttl })
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How long past its expiry a lease is still taken for alive: half
    /// its time to live, for clocks that disagree a little.
    pub fn grace(&self) -> Duration {
        self.ttl / 2
    }

    /// How often a holder renews its lease.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    fn path(&self, key: &CacheKey, generation: u64) -> PathBuf {
        self.dir.join(format!("{}.{generation}.json", key.digest()))
    }

    /// The generations present for `key`, highest first.
    fn generations(&self, key: &CacheKey) -> Vec<u64> {
        let prefix = format!("{}.", key.digest());
        let mut found: Vec<u64> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        name.strip_prefix(&prefix)?
                            .strip_suffix(".json")?
                            .parse()
                            .ok()
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }

    /// The lease of the highest generation for `key`, if any. A file that
    /// cannot be read whole (a disk fault, a hand edit) counts as a lease
    /// that lived until its modification time plus the time to live, so a
    /// holder's rewrite in progress never looks dead.
    pub fn current(&self, key: &CacheKey) -> Option<LeaseInfo> {
        let generation = *self.generations(key).first()?;
        let path = self.path(key, generation);
        let parsed = read_regular_file(&path, MAX_LEASE_FILE)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<LeaseInfo>(&bytes).ok());
        parsed.or_else(|| {
            let modified = fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            let modified_ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as u64;
            Some(LeaseInfo {
                owner: Owner {
                    node: "unknown".into(),
                    id: "an unreadable lease file".into(),
                },
                job: String::new(),
                key: key.clone(),
                generation,
                taken_at_ms: modified_ms,
                heartbeat_ms: modified_ms,
                expires_ms: modified_ms + self.ttl.as_millis() as u64,
                took_over_from: None,
            })
        })
    }

    /// Takes the lease on `key` for `owner` unless a live one is held by
    /// another daemon. Of daemons racing for it, one gets `Taken`.
    pub fn acquire(
        &self,
        key: &CacheKey,
        job: &str,
        owner: &Owner,
        now_ms: u64,
    ) -> Result<Acquired, StateError> {
        // Each lost race means someone else created the generation we
        // wanted; its lease is then live, and the next look says so.
        for _ in 0..4 {
            let current = self.current(key);
            let (generation, took_over_from) = match &current {
                Some(lease) if lease.owner == *owner => return Ok(Acquired::Taken(lease.clone())),
                Some(lease) if !lease.expired(now_ms, self.grace()) => {
                    return Ok(Acquired::Held(lease.clone()))
                }
                Some(dead) => (dead.generation + 1, Some(dead.owner.clone())),
                None => (1, None),
            };
            let lease = LeaseInfo {
                owner: owner.clone(),
                job: job.to_string(),
                key: key.clone(),
                generation,
                taken_at_ms: now_ms,
                heartbeat_ms: now_ms,
                expires_ms: now_ms + self.ttl.as_millis() as u64,
                took_over_from,
            };
            match create_atomically(&self.path(key, generation), &serde_json::to_vec(&lease)?) {
                Ok(()) => {
                    self.remove_below(key, generation);
                    return Ok(Acquired::Taken(lease));
                }
                Err(FileError::Exists(_)) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        match self.current(key) {
            Some(lease) if lease.owner != *owner => Ok(Acquired::Held(lease)),
            Some(lease) => Ok(Acquired::Taken(lease)),
            None => Err(StateError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("leases appear and vanish too fast to take one"),
            }),
        }
    }

    /// Renews `lease` at `now`; `Ok(false)` when it was lost: a newer
    /// generation exists (this holder was thought dead) or its file is gone.
    pub fn renew(&self, lease: &mut LeaseInfo, now_ms: u64) -> Result<bool, StateError> {
        let newest = self.generations(&lease.key).first().copied();
        if newest != Some(lease.generation) {
            return Ok(false);
        }
        let path = self.path(&lease.key, lease.generation);
        let still_ours = self
            .current(&lease.key)
            .is_some_and(|l| l.owner == lease.owner && l.generation == lease.generation);
        if !still_ours || !path.exists() {
            return Ok(false);
        }
        lease.heartbeat_ms = now_ms;
        lease.expires_ms = now_ms + self.ttl.as_millis() as u64;
        write_atomically(&path, &serde_json::to_vec(lease)?)?;
        Ok(true)
    }

    /// Gives `lease` up: its work is stored (or failed, in the history).
    /// A lease lost to a newer generation is left to its new holder.
    pub fn release(&self, lease: &LeaseInfo) {
        if self
            .current(&lease.key)
            .is_some_and(|l| l.owner == lease.owner && l.generation == lease.generation)
        {
            let _ = fs::remove_file(self.path(&lease.key, lease.generation));
        }
    }

    /// Removes generations below `generation`: dead leases taken over.
    fn remove_below(&self, key: &CacheKey, generation: u64) {
        for old in self
            .generations(key)
            .into_iter()
            .filter(|g| *g < generation)
        {
            let _ = fs::remove_file(self.path(key, old));
        }
    }

    /// Every live lease held by `owner`'s node, for the metrics.
    pub fn held_by_node(&self, node: &str, now_ms: u64) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".json")))
            .filter_map(|e| read_regular_file(&e.path(), MAX_LEASE_FILE).ok())
            .filter_map(|bytes| serde_json::from_slice::<LeaseInfo>(&bytes).ok())
            .filter(|l| l.owner.node == node && !l.expired(now_ms, self.grace()))
            .count()
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::new("spec-hash", "NVIDIA H100", "")
    }

    fn leases(dir: &Path) -> Leases {
        Leases::open(dir, Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn the_first_daemon_takes_the_lease_and_the_others_see_it_held() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        let (a, b) = (Owner::new("node-a", 1), Owner::new("node-b", 2));
        let Acquired::Taken(lease) = leases.acquire(&key(), "job", &a, 1_000).unwrap() else {
            panic!("the first taker holds it");
        };
        assert_eq!((lease.generation, lease.expires_ms), (1, 11_000));
        match leases.acquire(&key(), "job", &b, 2_000).unwrap() {
            Acquired::Held(held) => assert_eq!(held.owner, a),
            other => panic!("{other:?}"),
        }
        // Asking again is idempotent for the holder.
        assert!(matches!(
            leases.acquire(&key(), "job", &a, 3_000).unwrap(),
            Acquired::Taken(_)
        ));
        // Another key is free.
        let other = CacheKey::new("spec-hash", "NVIDIA H200", "");
        assert!(matches!(
            leases.acquire(&other, "job", &b, 2_000).unwrap(),
            Acquired::Taken(_)
        ));
    }

    #[test]
    fn a_lease_is_live_while_renewed_and_taken_over_after_expiry_and_grace() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        let (a, b) = (Owner::new("node-a", 1), Owner::new("node-b", 2));
        let Acquired::Taken(mut lease) = leases.acquire(&key(), "job", &a, 0).unwrap() else {
            panic!()
        };
        // Renewed at 8 s: alive until 18 s, plus 5 s of grace.
        assert!(leases.renew(&mut lease, 8_000).unwrap());
        assert!(matches!(
            leases.acquire(&key(), "job", &b, 22_000).unwrap(),
            Acquired::Held(_)
        ));
        // Past 23 s the holder is dead: b takes over, in generation 2.
        let Acquired::Taken(taken) = leases.acquire(&key(), "job", &b, 23_001).unwrap() else {
            panic!("a dead lease is taken over")
        };
        assert_eq!(taken.generation, 2);
        assert_eq!(taken.took_over_from, Some(a.clone()));
        // The old holder, back from a pause, finds it lost at its next
        // heartbeat and releasing does not remove b's lease.
        assert!(!leases.renew(&mut lease, 24_000).unwrap());
        leases.release(&lease);
        assert_eq!(leases.current(&key()).unwrap().owner, b);
        // Released by b, the key is free again from generation 1.
        leases.release(&taken);
        assert!(leases.current(&key()).is_none());
        assert!(matches!(
            leases.acquire(&key(), "job", &a, 30_000).unwrap(),
            Acquired::Taken(LeaseInfo { generation: 1, .. })
        ));
    }

    #[test]
    fn of_daemons_racing_for_one_key_exactly_one_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        let winners: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let leases = leases.clone();
                    scope.spawn(move || {
                        let owner = Owner::new(&format!("node-{i}"), i);
                        matches!(
                            leases.acquire(&key(), "job", &owner, 1_000).unwrap(),
                            Acquired::Taken(_)
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
    }

    #[test]
    fn an_unreadable_lease_lives_from_its_modification_time() {
        let dir = tempfile::tempdir().unwrap();
        let leases = leases(dir.path());
        fs::write(
            dir.path()
                .join("leases")
                .join(format!("{}.3.json", key().digest())),
            "{",
        )
        .unwrap();
        let now = now_ms();
        let b = Owner::new("node-b", 2);
        assert!(matches!(
            leases.acquire(&key(), "job", &b, now).unwrap(),
            Acquired::Held(_)
        ));
        let Acquired::Taken(lease) = leases.acquire(&key(), "job", &b, now + 60_000).unwrap()
        else {
            panic!()
        };
        assert_eq!(lease.generation, 4);
        assert_eq!(leases.held_by_node("node-b", now + 60_000), 1);
        assert_eq!(leases.held_by_node("node-a", now + 60_000), 0);
    }
}
