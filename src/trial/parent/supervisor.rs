//! The per-trial supervisor: `batchd __trial-supervisor -- COMMAND [ARG...]`,
//! the process between batchd and a command job's script.
//!
//! A process that leaves the trial's process group (`setsid`, a daemon's
//! double fork) used to escape both the memory limit and the kill at the
//! trial's end. The supervisor is the trial's *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`): every orphan of the trial is reparented to
//! it instead of to init, so it stays in the tree the memory sampler walks,
//! and the supervisor kills and reaps all of them when the command ends.
//!
//! It runs without argument parsing or logging (like the worker), in the
//! environment and folder batchd gave it, and:
//! - starts the command with stdin and stdout on `/dev/null` and stderr
//!   inherited (batchd's pipe), `no_new_privs` and a parent-death SIGKILL;
//! - waits for it; on SIGTERM (batchd's deadline, memory or cancel kill, or
//!   the parent-death signal batchd sets on the supervisor: SIGTERM rather
//!   than SIGKILL so that the supervisor can still sweep when batchd dies)
//!   it stops waiting;
//! - kills every remaining descendant, reaps until none is left, and exits
//!   as the command did: its exit code, or its terminating signal raised
//!   again, so batchd classifies the trial exactly as without a supervisor.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tree::descendants;

/// The variable naming a persistent process's control socket descriptor
/// (batchd sets it; the supervisor closes its own copy).
pub const CONTROL_VARIABLE: &str = "BATCHD_CONTROL_FD";

/// Starts a line the supervisor writes on stderr about its own failures.
pub const SUPERVISOR_MARKER: &str = "batchd-supervisor:";

/// The supervisor's exit status when it could not start the command (the
/// shell's "command not found"); the [`SUPERVISOR_MARKER`] line says why.
pub const START_FAILED_EXIT: i32 = 127;

/// How often the supervisor looks for an ended child when no SIGCHLD came
/// (it also wakes at once on SIGCHLD and SIGTERM).
const WAIT_POLL: Duration = Duration::from_millis(200);

/// How long one sweep pass reaps before it looks for descendants again
/// (those forked while it killed, or reparented to it since).
const SWEEP_PASS: Duration = Duration::from_millis(10);

/// The supervisor's `main`; returns the exit status (or does not return,
/// when it re-raises the command's signal).
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(2).collect();
    let argv = match args.split_first() {
        Some((dash, argv)) if dash == "--" && !argv.is_empty() => argv,
        _ => {
            eprintln!(
                "{SUPERVISOR_MARKER} usage: batchd {} -- COMMAND [ARG...]",
                crate::trial::SUPERVISOR_SUBCOMMAND
            );
            return START_FAILED_EXIT;
        }
    };
    let signals = stop_signals();
    // SAFETY: prctl and sigprocmask on this single-threaded process.
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        // Handled by waiting for them (sigtimedwait), never asynchronously.
        libc::sigprocmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut());
    }
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(|| {
            // Dies with the supervisor, and can never gain privileges.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child.id() as i32,
        Err(error) => {
            let folder = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            eprintln!(
                "{SUPERVISOR_MARKER} cannot start `{}` in {folder}: {error}",
                argv[0].to_string_lossy()
            );
            return START_FAILED_EXIT;
        }
    };
    // A persistent process's control socket is the command's alone: with
    // the supervisor's copy closed, batchd reads EOF as soon as the command
    // is gone, even while the supervisor is still sweeping.
    if let Some(fd) = std::env::var(CONTROL_VARIABLE)
        .ok()
        .and_then(|fd| fd.parse::<libc::c_int>().ok())
    {
        // SAFETY: closes a descriptor batchd passed for the command only.
        unsafe {
            libc::close(fd);
        }
    }
    let mut status = wait_for(child, &signals);
    sweep(child, &mut status);
    // Without a status (a stop signal came first and the command was not
    // reaped here), end as killed by SIGKILL, which is what batchd's own
    // kill left before there was a supervisor; that wait status is the
    // signal's number.
    exit_like(status.unwrap_or(libc::SIGKILL))
}

/// SIGTERM (batchd's kill, the parent-death signal), SIGINT and SIGHUP (a
/// terminal's), and SIGCHLD (to wake when a child ends).
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Waits for the command, reaping any orphan that ends meanwhile. Its
/// wait status, or `None` when a stop signal came first.
fn wait_for(child: i32, signals: &libc::sigset_t) -> Option<libc::c_int> {
    let poll = libc::timespec {
        tv_sec: 0,
        tv_nsec: WAIT_POLL.as_nanos() as libc::c_long,
    };
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == child {
                return Some(status);
            }
            if pid == 0 {
                break;
            }
            if pid < 0 {
                // No child at all: the command is gone without a status.
                return None;
            }
        }
        // SAFETY: a valid signal set and timeout; no siginfo wanted.
        let signal = unsafe { libc::sigtimedwait(signals, std::ptr::null_mut(), &poll) };
        if [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].contains(&signal) {
            return None;
        }
    }
}

/// Kills every descendant and reaps them all, until the supervisor has no
/// child left. Records the command's status if it is reaped here.
fn sweep(command: i32, status: &mut Option<libc::c_int>) {
    let me = std::process::id();
    loop {
        for pid in descendants(me) {
            // SAFETY: a descendant not yet reaped (we are its subreaper, so
            // its pid cannot have been reused).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let pass = Instant::now();
        loop {
            let mut wait_status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut wait_status, libc::WNOHANG) };
            if pid > 0 {
                if pid == command {
                    *status = Some(wait_status);
                }
                continue;
            }
            if pid < 0 {
                return; // ECHILD: nothing left.
            }
            if pass.elapsed() >= SWEEP_PASS {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Ends the supervisor the way the command ended.
fn exit_like(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        return libc::WEXITSTATUS(status);
    }
    let signal = if libc::WIFSIGNALED(status) {
        libc::WTERMSIG(status)
    } else {
        libc::SIGKILL
    };
    // SAFETY: resetting our own signal state, then raising the signal.
    unsafe {
        // The command's crash is not the supervisor's: no core file.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    // A signal whose default is not to terminate: the shell's convention.
    128 + signal
}
