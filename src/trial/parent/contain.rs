//! Containment of a command trial: every process its command starts,
//! including those that leave its process group (`setsid`, a daemon's
//! double fork), counts against the trial's memory and dies with it.
//!
//! Every command trial runs under its own supervisor (`supervisor.rs`), the
//! trial's child subreaper, which works everywhere. Where batchd has a
//! delegated cgroup v2 subtree (systemd's `Delegate=yes`), each trial also
//! gets a cgroup of its own under batchd's: membership no process can
//! leave, `cgroup.kill` at the end, and with the memory controller the
//! kernel's own counters. `trial_containment` picks: `auto` (a cgroup where
//! delegated, else the subreaper), `cgroup` (a trial fails as `crashed`
//! when its cgroup cannot be made), `subreaper`.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::tree::{descendants, parse_pids};
use crate::trial::Containment;

/// How long the parent gives a supervisor to sweep and exit after its
/// SIGTERM before it kills the supervisor and the process group outright;
/// also how long a trial cgroup may take to empty before it is removed.
pub(super) const SUPERVISOR_GRACE: Duration = Duration::from_secs(2);

/// Names of trial cgroups: `trial-<batchd pid>-<serial>`.
const TRIAL_CGROUP_PREFIX: &str = "trial-";

/// The leaf batchd moves itself into, so that its own cgroup may enable
/// the memory controller for the trial cgroups (cgroup v2 lets only a
/// cgroup without processes of its own hand controllers down).
const SELF_LEAF: &str = "batchd";

/// Why a trial cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("batchd is in no cgroup v2 hierarchy (no `0::` line in /proc/self/cgroup)")]
    NoUnifiedHierarchy,
    #[error("no cgroup2 file system mounted over batchd's cgroup {0} (/proc/self/mountinfo)")]
    NotMounted(String),
    #[error("cannot create the trial cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// batchd's own cgroup v2 folder, where trial cgroups are made, and whether
/// the memory controller is enabled for them.
struct CgroupBase {
    dir: PathBuf,
    memory: bool,
}

/// batchd's cgroup path (`/system.slice/batchd.service`) from
/// `/proc/self/cgroup`: the unified hierarchy's `0::` line.
fn own_cgroup_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
        .filter(|path| path.starts_with('/'))
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The folder of cgroup `path` under a cgroup2 mount listed in `mountinfo`
/// (the mount's root, field 4, may be a sub-tree in a cgroup namespace).
fn cgroup_dir(mountinfo: &str, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = mount.split_whitespace().collect();
        let root = unescape(fields.get(3)?);
        let point = unescape(fields.get(4)?);
        let relative = if root == "/" {
            path
        } else {
            let rest = path.strip_prefix(root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        Some(Path::new(&point).join(relative.trim_start_matches('/')))
    })
}

/// batchd's own cgroup folder, found the way the brief of `auto` says.
fn own_cgroup_dir() -> Result<PathBuf, ContainError> {
    let read = |path: &'static str| {
        std::fs::read_to_string(path).map_err(|source| ContainError::Read { path, source })
    };
    let proc_cgroup = read("/proc/self/cgroup")?;
    let own = own_cgroup_path(&proc_cgroup).ok_or(ContainError::NoUnifiedHierarchy)?;
    cgroup_dir(&read("/proc/self/mountinfo")?, own)
        .ok_or_else(|| ContainError::NotMounted(own.to_string()))
}

/// Whether systemd delegated `dir` to us: it marks a delegated cgroup with
/// the extended attribute `trusted.delegate` (or, for a user manager,
/// `user.delegate`) set to `1`.
fn delegated(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("no NUL in a literal");
        let mut value = [0u8; 8];
        // SAFETY: NUL-terminated path and name, a buffer of the given size.
        let len = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        len > 0 && value[..len as usize].trim_ascii() == b"1"
    })
}

/// Whether `auto` finds a delegated subtree; looked up once.
fn auto_uses_cgroups() -> bool {
    static DELEGATED: OnceLock<bool> = OnceLock::new();
    *DELEGATED.get_or_init(|| own_cgroup_dir().is_ok_and(|dir| delegated(&dir)))
}

/// The base for trial cgroups, prepared once: leftovers of dead batchd
/// processes removed, the memory controller enabled where it can be.
fn base() -> Result<&'static CgroupBase, &'static ContainError> {
    static BASE: OnceLock<Result<CgroupBase, ContainError>> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = own_cgroup_dir()?;
        remove_leftovers(&dir);
        let memory = enable_memory(&dir);
        Ok(CgroupBase { dir, memory })
    })
    .as_ref()
}

/// Enables the memory controller for the trial cgroups under `dir`, once:
/// batchd first moves itself into the leaf [`SELF_LEAF`] (cgroup v2's
/// no-internal-processes rule; the hierarchy's root is exempt). Without
/// it, trial cgroups still hold and kill the trial, and memory is the
/// members' summed RSS.
fn enable_memory(dir: &Path) -> bool {
    let listed = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .is_ok_and(|text| text.split_whitespace().any(|c| c == "memory"))
    };
    if listed("cgroup.subtree_control") {
        return true;
    }
    if !listed("cgroup.controllers") {
        return false;
    }
    let at_root =
        own_cgroup_path(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
            == Some("/");
    if !at_root {
        let leaf = dir.join(SELF_LEAF);
        let moved = match std::fs::create_dir(&leaf) {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AlreadyExists,
        } && std::fs::write(leaf.join("cgroup.procs"), std::process::id().to_string())
            .is_ok();
        if !moved {
            return false;
        }
    }
    std::fs::write(dir.join("cgroup.subtree_control"), "+memory").is_ok()
}

/// Kills and removes the trial cgroups of batchd processes that are gone
/// (one killed outright leaves its trials' cgroups behind).
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.strip_prefix(TRIAL_CGROUP_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if owner == std::process::id() || Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        TrialCgroup::open(entry.path(), false).remove();
    }
}

/// One trial's cgroup.
pub(super) struct TrialCgroup {
    dir: PathBuf,
    /// Its `cgroup.procs`, open for the spawned supervisor to join the
    /// cgroup by writing `0` before it executes (so the command never runs
    /// outside it).
    procs: Option<File>,
    memory: bool,
}

impl TrialCgroup {
    fn open(dir: PathBuf, memory: bool) -> TrialCgroup {
        TrialCgroup {
            dir,
            procs: None,
            memory,
        }
    }

    fn create(base: &CgroupBase) -> Result<TrialCgroup, ContainError> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        loop {
            let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
            let dir = base.dir.join(format!(
                "{TRIAL_CGROUP_PREFIX}{}-{serial}",
                std::process::id()
            ));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                // A name of ours left by a crashed run of the same pid.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(ContainError::Create { path: dir, source }),
            }
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"));
            return match procs {
                Ok(procs) => Ok(TrialCgroup {
                    procs: Some(procs),
                    ..TrialCgroup::open(dir, base.memory)
                }),
                Err(source) => {
                    let _ = std::fs::remove_dir(&dir);
                    Err(ContainError::Create { path: dir, source })
                }
            };
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The descriptor the supervisor writes `0` to, joining the cgroup.
    pub fn join_fd(&self) -> Option<RawFd> {
        self.procs.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn members(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| parse_pids(&text).collect())
            .unwrap_or_default()
    }

    fn populated(&self) -> bool {
        match std::fs::read_to_string(self.dir.join("cgroup.events")) {
            Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
            Err(_) => !self.members().is_empty(),
        }
    }

    /// Kills every process in the cgroup (`cgroup.kill`, Linux 5.14; before
    /// it, each member).
    fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_err() {
            for pid in self.members() {
                // SAFETY: a member of our trial's cgroup.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }

    /// Kills what is left, waits (at most [`SUPERVISOR_GRACE`]) for the
    /// cgroup to empty, and removes it.
    fn remove(self) {
        let started = Instant::now();
        loop {
            self.kill();
            if !self.populated() || started.elapsed() > SUPERVISOR_GRACE {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(self.procs);
        if let Err(error) = std::fs::remove_dir(&self.dir) {
            tracing::warn!(
                "cannot remove the trial cgroup {}: {error}",
                self.dir.display()
            );
        }
    }

    /// The working set (`memory.current` less the inactive file cache,
    /// which the kernel reclaims before it runs out): what RSS measures
    /// elsewhere, without counting a dataset merely read through the page
    /// cache against the trial. `None` without the memory controller.
    fn working_set(&self) -> Option<u64> {
        if !self.memory {
            return None;
        }
        let current: u64 = std::fs::read_to_string(self.dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        Some(current.saturating_sub(stat_field(&stat, "inactive_file").unwrap_or(0)))
    }
}

/// A field of `memory.stat` (`name value` lines).
fn stat_field(stat: &str, name: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The trial cgroup `containment` asks for: `None` means the supervisor
/// alone (the subreaper). `auto` falls back to it when the cgroup cannot be
/// made; `cgroup` makes that an error.
pub(super) fn trial_cgroup(containment: Containment) -> Result<Option<TrialCgroup>, String> {
    let forced = match containment {
        Containment::Subreaper => return Ok(None),
        Containment::Auto if !auto_uses_cgroups() => return Ok(None),
        Containment::Auto => false,
        Containment::Cgroup => true,
    };
    let made = base()
        .map_err(ToString::to_string)
        .and_then(|base| TrialCgroup::create(base).map_err(|e| e.to_string()));
    match made {
        Ok(cgroup) => Ok(Some(cgroup)),
        Err(reason) if forced => Err(format!(
            "trial_containment = \"cgroup\", but the trial's cgroup cannot be made: {reason}"
        )),
        Err(reason) => {
            tracing::warn!("trial containment falls back to the subreaper: {reason}");
            Ok(None)
        }
    }
}

/// A running command trial: its supervisor (whose pid is also the trial's
/// process group) and its cgroup, if any. Dropped before [`finish`], as
/// when the search awaiting the trial is cancelled, it still ends every
/// process of the trial.
///
/// [`finish`]: TrialProcesses::finish
pub(super) struct TrialProcesses {
    supervisor: u32,
    /// Signals the supervisor without a pid-reuse race, once the trial's
    /// handle may outlive the wait (Linux 5.3; the pid otherwise).
    pidfd: Option<OwnedFd>,
    cgroup: Option<TrialCgroup>,
    finished: bool,
}

impl TrialProcesses {
    pub fn new(supervisor: u32, cgroup: Option<TrialCgroup>) -> TrialProcesses {
        let fd = match supervisor {
            0 => -1,
            // SAFETY: pidfd_open on our own child; a new fd or -1.
            pid => unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) },
        };
        TrialProcesses {
            supervisor,
            // SAFETY: a fresh descriptor nothing else owns.
            pidfd: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            cgroup,
            finished: supervisor == 0,
        }
    }

    /// The pids of the trial's processes, the supervisor left out: the
    /// cgroup's members, or the supervisor's descendants (orphans included,
    /// as it is their subreaper).
    pub fn pids(&self) -> Vec<u32> {
        match &self.cgroup {
            Some(cgroup) => cgroup
                .members()
                .into_iter()
                .filter(|&pid| pid != self.supervisor)
                .collect(),
            None => descendants(self.supervisor),
        }
    }

    /// Whether the kernel counts the trial's memory (a trial cgroup with
    /// the memory controller).
    pub fn counts_memory(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.memory)
    }

    /// The cgroup's working set, where the kernel counts it.
    pub fn counted_memory(&self) -> Option<u64> {
        self.cgroup.as_ref()?.working_set()
    }

    fn signal_supervisor(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child, through its pidfd when we have
        // one (a reaped child then gives ESRCH, never another process).
        unsafe {
            match &self.pidfd {
                Some(fd) => {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    );
                }
                None => {
                    libc::kill(self.supervisor as i32, signal);
                }
            }
        }
    }

    /// Ends the trial: the cgroup is killed at once; the supervisor is told
    /// to sweep (woken first, should the command have stopped it).
    pub fn terminate(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        self.signal_supervisor(libc::SIGCONT);
        self.signal_supervisor(libc::SIGTERM);
    }

    /// The supervisor did not end within [`SUPERVISOR_GRACE`]: kill it and
    /// the process group. Only while the supervisor is unreaped, so that the
    /// group still exists.
    pub fn kill_hard(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        // SAFETY: the process group our unreaped supervisor leads.
        unsafe {
            libc::kill(-(self.supervisor as i32), libc::SIGKILL);
        }
        self.signal_supervisor(libc::SIGKILL);
    }

    /// After the supervisor has exited: kill what is left of the process
    /// group (a supervisor killed from outside could not sweep) and remove
    /// the cgroup.
    pub fn finish(mut self) {
        self.finished = true;
        // SAFETY: the trial's process group; never 0 (that would be ours).
        unsafe {
            libc::kill(-(self.supervisor as i32), libc::SIGKILL);
        }
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.remove();
        }
    }
}

/// Whether the process behind `pidfd` ended within `limit`.
fn exited_within(pidfd: &OwnedFd, limit: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a pidfd polls readable once its process
    // has exited.
    unsafe { libc::poll(&mut poll, 1, limit.as_millis() as libc::c_int) > 0 }
}

impl Drop for TrialProcesses {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Cancelled mid-trial: the supervisor sweeps. A thread waits for it
        // (Drop cannot await) and kills it outright if it does not end in
        // time; without a pidfd, the pid may be reaped and reused by then,
        // so it is left to its parent-death signal.
        self.terminate();
        let mut processes = TrialProcesses {
            supervisor: self.supervisor,
            pidfd: self.pidfd.take(),
            cgroup: self.cgroup.take(),
            finished: true,
        };
        std::thread::spawn(move || {
            if let Some(pidfd) = &processes.pidfd {
                if !exited_within(pidfd, SUPERVISOR_GRACE) {
                    processes.kill_hard();
                }
            }
            if let Some(cgroup) = processes.cgroup.take() {
                cgroup.remove();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_names_our_cgroup() {
        let text = "12:memory:/x\n0::/system.slice/batchd.service\n";
        assert_eq!(own_cgroup_path(text), Some("/system.slice/batchd.service"));
        assert_eq!(own_cgroup_path("4:memory:/x\n"), None);
    }

    #[test]
    fn the_cgroup2_mount_is_found_and_joined_with_our_path() {
        let mountinfo = "\
25 1 0:22 / /sys rw - sysfs sysfs rw\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir(mountinfo, "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a/b"))
        );
        assert_eq!(
            cgroup_dir(mountinfo, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        // A namespace's mount of a sub-tree, with an escaped space.
        let mountinfo = "41 31 0:38 /ns\\040x /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir(mountinfo, "/ns x/job"),
            Some(PathBuf::from("/mnt/cg two/job"))
        );
        assert_eq!(cgroup_dir(mountinfo, "/nsx/job"), None);
        assert_eq!(
            cgroup_dir("25 1 0:22 / /sys rw - sysfs sysfs rw\n", "/"),
            None
        );
    }

    #[test]
    fn the_working_set_leaves_out_inactive_file_cache() {
        let stat = "anon 100\nfile 500\ninactive_file 300\nactive_file 200\n";
        assert_eq!(stat_field(stat, "inactive_file"), Some(300));
        assert_eq!(stat_field(stat, "file"), Some(500));
        assert_eq!(stat_field(stat, "shmem"), None);
    }

    #[test]
    fn subreaper_containment_makes_no_cgroup() {
        assert!(matches!(trial_cgroup(Containment::Subreaper), Ok(None)));
    }
}
