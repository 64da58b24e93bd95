//! Persistent command trials: one process of a command job runs trial
//! after trial, so the interpreter start, the imports, the data loading and
//! (on a GPU) the CUDA context are paid once per search instead of once per
//! trial.
//!
//! batchd offers the mode by starting the first trial's process with a
//! socket on descriptor 3 (`BATCHD_CONTROL_FD=3`). A script that takes it
//! (the Python helper does, with no user code) says `hello`, runs the trial
//! and says `trial_done`; batchd then sends the next trial's variables and
//! it runs that one in the same process. A script that never says hello
//! runs one trial and exits, as before, and its job keeps one process per
//! trial. The protocol and the failure rules are in docs/command-runner.md.
//!
//! Containment does not change: the process is a trial process for its
//! whole life (its own process group, its supervisor, its cgroup), each
//! trial has its own deadline, memory limit and report file, and any trial
//! that does not end cleanly ends the process with it. Restarting is always
//! safe: it is what one process per trial does anyway.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::Child;

use super::command::{
    self, conclude, conclude_exited, prepare, spawn_supervised, trial_variables, ReportFile, Seen,
    Spawned, REPORT_LINE_LIMIT,
};
use super::contain::{TrialProcesses, SUPERVISOR_GRACE};
use super::supervise::{
    collect_stderr_tail, failed, supervise_until, Ended, MemorySampler, RunnerOptions, Scope,
    StderrTail, PIPE_DRAIN_GRACE,
};
use crate::spec::CommandSpec;
use crate::trial::{ExitInfo, Outcome, TrialDevice, TrialRequest, TrialResult};
use crate::units::ByteSize;

/// The control protocol's version, sent by the script in `hello`.
pub const PROTOCOL: u32 = 1;

/// An idle persistent process is ended after this long: a live search
/// never waits that long between two trials, so only a search that ended
/// without releasing its device (a crash of the search task) leaves one.
pub const PERSISTENT_IDLE: Duration = Duration::from_secs(15);

/// How long processes a trial started (data loader workers, `cmd &`) may
/// outlive its `trial_done` before the process is ended instead of reused.
const LEFTOVER_GRACE: Duration = Duration::from_secs(1);

/// Memory after a trial may exceed the process's baseline (its memory
/// after its first trial) by the larger of this and a tenth of the baseline
/// (on a GPU: of 5% of the device) before the process is ended: allocator
/// caches grow a little; a leak grows without bound and would inflate every
/// later trial's peak.
const BASELINE_SLACK_BYTES: u64 = 256 << 20;

/// The line a persistent script writes on stderr after each trial's own
/// output: `batchd-trial-done <k>`.
pub const SENTINEL: &str = "batchd-trial-done";

/// The persistent processes of one runner: at most one per device, each
/// for the job (command, folder, environment) that started it.
#[derive(Default)]
pub(super) struct Pool {
    slots: Mutex<HashMap<TrialDevice, Slot>>,
    generation: AtomicU64,
}

struct Slot {
    /// What the process was started with (see [`process_key`]).
    key: String,
    state: SlotState,
}

enum SlotState {
    /// A process waiting for its next trial.
    Idle(Box<Persistent>),
    /// The job's script does not run persistently (it never said hello,
    /// or re-running it in one process failed): one process per trial.
    Declined,
}

impl Pool {
    fn take(&self, device: TrialDevice) -> Option<Slot> {
        self.lock().remove(&device)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TrialDevice, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(self: &Arc<Self>, device: TrialDevice, slot: Slot) {
        let generation = match &slot.state {
            SlotState::Idle(process) => Some(process.generation),
            SlotState::Declined => None,
        };
        if let Some(Slot {
            state: SlotState::Idle(old),
            ..
        }) = self.lock().insert(device, slot)
        {
            retire(old);
        }
        if let Some(generation) = generation {
            // The backstop for a search that never releases its device.
            let pool = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(PERSISTENT_IDLE).await;
                let Some(pool) = pool.upgrade() else { return };
                let stale = {
                    let mut slots = pool.lock();
                    match slots.get(&device) {
                        Some(Slot {
                            state: SlotState::Idle(p),
                            ..
                        }) if p.generation == generation => slots.remove(&device),
                        _ => None,
                    }
                };
                if let Some(Slot {
                    state: SlotState::Idle(process),
                    ..
                }) = stale
                {
                    process.end().await;
                }
            });
        }
    }

    /// Ends the device's persistent process, if any, and forgets whether
    /// its job declined the mode (the next search may run another job).
    pub async fn release(&self, device: TrialDevice) {
        if let Some(Slot {
            state: SlotState::Idle(process),
            ..
        }) = self.take(device)
        {
            process.end().await;
        }
    }
}

/// What a persistent process is started with, besides its first trial: a
/// trial of the same device whose key differs (a reloaded spec, another
/// job) ends the process and starts another.
fn process_key(request: &TrialRequest, command: &CommandSpec) -> String {
    let environment =
        command::process_environment(request, command, |name| std::env::var(name).ok());
    serde_json::json!({
        "argv": command.argv,
        "workdir": command.workdir,
        "environment": environment,
    })
    .to_string()
}

/// One persistent process.
struct Persistent {
    child: Child,
    processes: TrialProcesses,
    stderr: StderrTail,
    events: BufReader<OwnedReadHalf>,
    requests: OwnedWriteHalf,
    /// The script's pid, from its hello.
    script: u32,
    /// Trials it has run.
    trials: u32,
    /// Its memory after its first trial (RSS, cgroup working set or NVML).
    baseline: Option<u64>,
    /// Its thread count after its first trial.
    threads: Option<u32>,
    /// CUDA memory its allocator kept reserved after the last trial.
    reserved_idle: Option<u64>,
    generation: u64,
}

impl Persistent {
    /// Asks the process to exit, then makes sure it has: terminated after
    /// [`SUPERVISOR_GRACE`], killed with its group after as long again.
    async fn end(mut self: Box<Self>) {
        let _ = self.requests.write_all(b"{\"op\":\"exit\"}\n").await;
        let _ = self.requests.shutdown().await;
        if tokio::time::timeout(SUPERVISOR_GRACE, self.child.wait())
            .await
            .is_err()
        {
            self.processes.terminate();
            if tokio::time::timeout(SUPERVISOR_GRACE, self.child.wait())
                .await
                .is_err()
            {
                self.processes.kill_hard();
                let _ = self.child.wait().await;
            }
        }
        self.processes.finish();
    }
}

/// Ends a process in the background, so the next trial does not wait.
fn retire(process: Box<Persistent>) {
    tokio::spawn(process.end());
}

/// What the script says on the control socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Hello { protocol: u32, pid: u32 },
    TrialDone(TrialDone),
}

/// A trial's code has returned (or raised) in the persistent process.
#[derive(Debug, Clone, Deserialize)]
struct TrialDone {
    trial: u32,
    /// The status the script would have exited with.
    exit: i32,
    /// `setup` when no step was reported, else `train`.
    #[serde(default)]
    stage: Option<String>,
    /// Python threads alive after the trial's clean-up.
    #[serde(default)]
    threads: Option<u32>,
    /// The CUDA caching allocator's figures (PyTorch), when it was used.
    #[serde(default)]
    cuda: Option<CudaFigures>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct CudaFigures {
    /// Peak reserved bytes during the trial (reset at its start).
    max_reserved: u64,
    /// Reserved bytes after the clean-up (`empty_cache`).
    reserved_idle: u64,
}

/// Reads one event line (at most [`REPORT_LINE_LIMIT`] bytes). `Ok(None)`
/// at EOF.
async fn read_event(events: &mut BufReader<OwnedReadHalf>) -> Result<Option<Event>, String> {
    let mut line = Vec::new();
    let read = (&mut *events)
        .take(REPORT_LINE_LIMIT as u64 + 1)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("cannot read the control socket: {e}"))?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if read > REPORT_LINE_LIMIT {
            return Err(format!(
                "a control line is longer than {}",
                ByteSize(REPORT_LINE_LIMIT as u64)
            ));
        }
        return Ok(None);
    }
    serde_json::from_slice(&line).map(Some).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&line).chars().take(80).collect();
        format!("not a control event ({e}): `{}`", shown.trim_end())
    })
}

/// The events of trial `k`: `hello` first when the process is new, then
/// `trial_done` for `k`. `None` when the socket closes (the process is
/// exiting: its exit decides); `Some(Err)` for a broken protocol.
async fn trial_events(
    events: &mut BufReader<OwnedReadHalf>,
    k: u32,
    hello: &mut Option<u32>,
) -> Option<Result<TrialDone, String>> {
    loop {
        match read_event(events).await {
            Ok(Some(Event::Hello { protocol, pid })) if hello.is_none() && k == 1 => {
                if protocol != PROTOCOL {
                    return Some(Err(format!(
                        "the script speaks control protocol {protocol}; this batchd speaks {PROTOCOL}"
                    )));
                }
                *hello = Some(pid);
            }
            Ok(Some(Event::TrialDone(done))) if hello.is_some() => {
                if done.trial != k {
                    return Some(Err(format!(
                        "trial_done for trial {} while trial {k} was running",
                        done.trial
                    )));
                }
                return Some(Ok(done));
            }
            Ok(Some(event)) => return Some(Err(format!("unexpected {event:?}"))),
            Ok(None) => return None,
            Err(error) => return Some(Err(error)),
        }
    }
}

/// Runs one trial of a command job in the device's persistent process,
/// starting one if there is none (or the job declined the mode: then in a
/// fresh process of its own, as [`command::run`] does).
pub(super) async fn run(
    options: &RunnerOptions,
    pool: &Arc<Pool>,
    request: TrialRequest,
    command: &CommandSpec,
) -> TrialResult {
    let started = Instant::now();
    let device = request.device;
    let key = process_key(&request, command);
    let mut process = None;
    match pool.take(device) {
        Some(slot) if slot.key == key => match slot.state {
            SlotState::Idle(p) => process = Some(p),
            SlotState::Declined => {
                pool.put(device, slot);
                return command::run(options, request, command).await;
            }
        },
        Some(Slot {
            state: SlotState::Idle(other),
            ..
        }) => retire(other),
        Some(_) | None => {}
    }
    // A process that died while idle costs no trial: start another.
    if let Some(mut p) = process.take() {
        match p.child.try_wait() {
            Ok(None) => process = Some(p),
            _ => retire(p),
        }
    }
    let next = match process {
        Some(p) => next_trial(options, p, &request, started).await,
        None => None,
    };
    let (result, verdict) = match next {
        Some(done) => done,
        None => first_trial(options, pool, &request, command, started).await,
    };
    match verdict {
        Verdict::Keep(p) => {
            pool.put(
                device,
                Slot {
                    key,
                    state: SlotState::Idle(p),
                },
            );
            result
        }
        Verdict::Gone => result,
        Verdict::Declined => {
            pool.put(
                device,
                Slot {
                    key,
                    state: SlotState::Declined,
                },
            );
            result
        }
        Verdict::Retry(p) => {
            // Re-running the script in one process failed where a fresh
            // process did not: this job runs one process per trial, and this
            // trial runs again in a fresh one.
            retire(p);
            pool.put(
                device,
                Slot {
                    key,
                    state: SlotState::Declined,
                },
            );
            let mut again = command::run(options, request, command).await;
            again.warnings.push(format!(
                "the script failed when re-run in its persistent process ({}); this job now runs one process per trial",
                result.reason.as_deref().unwrap_or("no reason given")
            ));
            again
        }
    }
}

/// What becomes of a process after a trial.
enum Verdict {
    /// Clean: it waits for the next trial.
    Keep(Box<Persistent>),
    /// It has exited, or was ended.
    Gone,
    /// It exited without saying hello: the job does not run persistently.
    Declined,
    /// Re-running failed before any step: end it, run the trial afresh.
    Retry(Box<Persistent>),
}

/// Starts a process offered the mode and runs its first trial.
async fn first_trial(
    options: &RunnerOptions,
    pool: &Arc<Pool>,
    request: &TrialRequest,
    command: &CommandSpec,
    started: Instant,
) -> (TrialResult, Verdict) {
    let (result, report) = match prepare(request, command) {
        Ok(prepared) => prepared,
        Err(failure) => return (failure.into_result(started), Verdict::Gone),
    };
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair()
        .and_then(|(ours, theirs)| ours.set_nonblocking(true).map(|()| (ours, theirs)))
        .and_then(|(ours, theirs)| Ok((tokio::net::UnixStream::from_std(ours)?, theirs)))
    {
        Ok(pair) => pair,
        Err(error) => {
            let reason = format!("cannot make the control socket: {error}");
            return (
                failed(result, Outcome::Crashed, reason, started),
                Verdict::Gone,
            );
        }
    };
    let theirs = OwnedFd::from(theirs);
    let spawned = spawn_supervised(options, request, command, &report.path, Some(&theirs));
    drop(theirs);
    let Spawned {
        child,
        processes,
        stderr,
    } = match spawned {
        Ok(spawned) => spawned,
        Err(reason) => {
            return (
                failed(result, Outcome::Crashed, reason, started),
                Verdict::Gone,
            );
        }
    };
    let (read, write) = ours.into_split();
    let process = Box::new(Persistent {
        child,
        processes,
        stderr: collect_stderr_tail(stderr),
        events: BufReader::new(read),
        requests: write,
        script: 0,
        trials: 0,
        baseline: None,
        threads: None,
        reserved_idle: None,
        generation: pool.generation.fetch_add(1, Ordering::Relaxed),
    });
    trial(options, process, request, result, report, started).await
}

/// Sends the next trial to an idle process and runs it.
async fn next_trial(
    options: &RunnerOptions,
    mut process: Box<Persistent>,
    request: &TrialRequest,
    started: Instant,
) -> Option<(TrialResult, Verdict)> {
    let command = request
        .spec
        .command()
        .cloned()
        .expect("persistent trials are command trials");
    let (result, report) = match prepare(request, &command) {
        Ok(prepared) => prepared,
        Err(failure) => return Some((failure.into_result(started), Verdict::Keep(process))),
    };
    reset_peaks(&process.processes);
    let env: serde_json::Map<String, serde_json::Value> = trial_variables(request, &report.path)
        .into_iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    let line = serde_json::json!({
        "op": "trial",
        "trial": process.trials + 1,
        "env": env,
    })
    .to_string()
        + "\n";
    if process.requests.write_all(line.as_bytes()).await.is_err() {
        // Gone while idle: no trial was charged, so start a fresh one.
        retire(process);
        return None;
    }
    Some(trial(options, process, request, result, report, started).await)
}

/// Watches trial `process.trials + 1` to its end and decides the process's
/// fate.
async fn trial(
    options: &RunnerOptions,
    mut process: Box<Persistent>,
    request: &TrialRequest,
    mut result: TrialResult,
    mut report: ReportFile,
    started: Instant,
) -> (TrialResult, Verdict) {
    let k = process.trials + 1;
    result.process_trial = Some(k);
    let limit = result.memory_limit_bytes;
    let supervisor = process.child.id().unwrap_or(0);
    let mut hello = (k > 1).then_some(process.script);
    let p = &mut *process;
    let mut sampler = MemorySampler::new(
        request.device,
        Scope::Trial(&p.processes),
        options.gpu_probe.clone(),
    );
    // Device memory held before the trial starts: with the allocator's
    // own peak, it bounds a spike the samples missed.
    let idle_before = match request.device {
        TrialDevice::Cuda(_) if k > 1 => sampler.sample().await,
        _ => None,
    };
    sampler.peak = None;
    let (ended, killed) = supervise_until(
        &mut p.child,
        &mut sampler,
        request.deadline,
        options.sample_interval,
        limit,
        trial_events(&mut p.events, k, &mut hello),
    )
    .await;
    let mut seen = Seen {
        peak: sampler.peak,
        device_total: sampler.device_total,
        counted_by_cgroup: p.processes.counts_memory(),
    };
    match ended {
        Ended::Exited(exit) => {
            // The process is gone (the script ended, or batchd killed it).
            let Persistent {
                processes, stderr, ..
            } = *process;
            processes.finish();
            let stderr_tail = stderr.finish().await;
            let result = conclude_exited(
                request,
                result,
                exit,
                killed,
                stderr_tail,
                seen,
                report,
                started,
            );
            // A script that started and never said hello declines the
            // mode; one that could not start (no exit recorded) has not.
            let verdict = if hello.is_none() && result.exit.is_some() {
                Verdict::Declined
            } else {
                Verdict::Gone
            };
            (result, verdict)
        }
        Ended::Done(Err(broken)) => {
            drop(sampler);
            let reason = format!("the persistent process broke the control protocol: {broken}");
            let stderr_tail = process.stderr.take_until(SENTINEL, Duration::ZERO).await;
            process.end().await;
            result.stderr_tail = stderr_tail;
            (
                failed(result, Outcome::Crashed, reason, started),
                Verdict::Gone,
            )
        }
        Ended::Done(Ok(done)) => {
            let stderr_tail = p
                .stderr
                .take_until(&format!("{SENTINEL} {k}"), PIPE_DRAIN_GRACE)
                .await;
            if let (Some(cuda), Some(idle)) = (done.cuda, idle_before) {
                let held = idle.saturating_sub(p.reserved_idle.unwrap_or(0));
                seen.peak = seen.peak.max(Some(held + cuda.max_reserved));
            }
            let now = sampler.sample().await;
            drop(sampler);
            let parsed = report.read(request);
            drop(report);
            let exit = ExitInfo {
                code: Some(done.exit),
                signal: None,
            };
            let device_total = seen.device_total;
            conclude(
                request,
                &mut result,
                exit,
                None,
                stderr_tail,
                seen,
                parsed,
                started,
            );
            process.trials = k;
            if let Some(pid) = hello {
                process.script = pid;
            }
            process.reserved_idle = done.cuda.map(|c| c.reserved_idle);
            // Trial 1 is a re-run too (the helper re-runs the script from
            // the top once it has taken over), so any trial may fail here.
            let rerun_failed = done.exit != 0
                && done.stage.as_deref() == Some("setup")
                && result.outcome != Outcome::OutOfMemory;
            if rerun_failed {
                return (result, Verdict::Retry(process));
            }
            let clean = done.exit == 0 && matches!(result.outcome, Outcome::Ok | Outcome::Diverged);
            if !clean {
                retire(process);
                return (result, Verdict::Gone);
            }
            if let Some(why) = unhealthy(&mut process, supervisor, now, device_total, &done).await {
                result
                    .warnings
                    .push(format!("{why}: the next trial starts a fresh process"));
                retire(process);
                return (result, Verdict::Gone);
            }
            (result, Verdict::Keep(process))
        }
    }
}

/// Why a process that ended a trial cleanly should still not run another:
/// processes the trial started are still alive, it holds more threads than
/// after its first trial, or its memory did not come back to its baseline.
async fn unhealthy(
    process: &mut Persistent,
    supervisor: u32,
    memory: Option<u64>,
    device_total: Option<u64>,
    done: &TrialDone,
) -> Option<String> {
    let waited = Instant::now();
    loop {
        let left = leftovers(&process.processes.pids(), process.script, supervisor);
        if left.is_empty() {
            break;
        }
        if waited.elapsed() >= LEFTOVER_GRACE {
            return Some(format!(
                "{} process(es) the trial started are still running (pids {left:?})",
                left.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(threads) = done.threads {
        match process.threads {
            None => process.threads = Some(threads),
            Some(first) if threads > first => {
                return Some(format!(
                    "the process holds {threads} threads after trial {}, {first} after its first",
                    done.trial
                ))
            }
            Some(_) => {}
        }
    }
    let memory = memory?;
    let Some(baseline) = process.baseline else {
        process.baseline = Some(memory);
        return None;
    };
    let slack = match device_total {
        // NVML figures: a share of the device.
        Some(total) if process.reserved_idle.is_some() => (total / 20).max(BASELINE_SLACK_BYTES),
        _ => (baseline / 10).max(BASELINE_SLACK_BYTES),
    };
    (memory > baseline + slack).then(|| {
        format!(
            "memory did not return to its baseline: {} after trial {}, {} after trial 1",
            ByteSize(memory),
            done.trial,
            ByteSize(baseline)
        )
    })
}

/// The trial's processes other than the script and the processes between
/// it and the supervisor (a wrapper shell).
fn leftovers(pids: &[u32], script: u32, supervisor: u32) -> Vec<u32> {
    let mut keep = vec![script];
    let mut pid = script;
    while let Some(parent) = parent_of(pid) {
        if parent == supervisor || parent <= 1 || keep.contains(&parent) {
            break;
        }
        keep.push(parent);
        pid = parent;
    }
    pids.iter().copied().filter(|p| !keep.contains(p)).collect()
}

/// A process's parent, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the
    // last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resets the kernel's high-water RSS mark of each of the trial's
/// processes, so a trial's peak is its own and not an earlier trial's.
/// Best effort: the script resets its own too.
fn reset_peaks(processes: &TrialProcesses) {
    for pid in processes.pids() {
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), b"5");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_ignore_unknown_fields() {
        let hello: Event =
            serde_json::from_str(r#"{"event":"hello","protocol":1,"pid":42,"python":"3.12"}"#)
                .unwrap();
        assert!(matches!(
            hello,
            Event::Hello {
                protocol: 1,
                pid: 42
            }
        ));
        let done: Event = serde_json::from_str(
            r#"{"event":"trial_done","trial":3,"exit":0,"stage":"train","threads":2,"cuda":{"max_reserved":10,"max_allocated":8,"reserved_idle":2}}"#,
        )
        .unwrap();
        let Event::TrialDone(done) = done else {
            panic!("not trial_done")
        };
        assert_eq!((done.trial, done.exit, done.threads), (3, 0, Some(2)));
        assert_eq!(
            done.cuda.map(|c| (c.max_reserved, c.reserved_idle)),
            Some((10, 2))
        );
        let bare: Event =
            serde_json::from_str(r#"{"event":"trial_done","trial":1,"exit":3}"#).unwrap();
        assert!(matches!(
            bare,
            Event::TrialDone(TrialDone {
                stage: None,
                cuda: None,
                ..
            })
        ));
        assert!(serde_json::from_str::<Event>(r#"{"event":"bye"}"#).is_err());
    }

    #[tokio::test]
    async fn control_lines_are_read_with_a_limit_and_a_protocol_check() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut events = BufReader::new(read);
        theirs
            .write_all(b"{\"event\":\"hello\",\"protocol\":1,\"pid\":7}\n{\"event\":\"trial_done\",\"trial\":1,\"exit\":0}\n")
            .await
            .unwrap();
        let mut hello = None;
        let done = trial_events(&mut events, 1, &mut hello)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((hello, done.trial), (Some(7), 1));
        // The wrong trial number is a broken protocol.
        theirs
            .write_all(b"{\"event\":\"trial_done\",\"trial\":5,\"exit\":0}\n")
            .await
            .unwrap();
        let broken = trial_events(&mut events, 2, &mut hello).await.unwrap();
        assert!(broken.unwrap_err().contains("trial 5"));
        // A line past the limit.
        theirs
            .write_all(&vec![b'x'; REPORT_LINE_LIMIT + 10])
            .await
            .unwrap();
        let long = read_event(&mut events).await.unwrap_err();
        assert!(long.contains("longer than"), "{long}");
        drop(theirs);
    }

    #[tokio::test]
    async fn a_closed_socket_leaves_the_exit_to_decide() {
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut events = BufReader::new(read);
        drop(theirs);
        let mut hello = None;
        assert!(trial_events(&mut events, 1, &mut hello).await.is_none());
    }

    #[tokio::test]
    async fn a_second_hello_or_a_done_before_hello_is_refused() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let (read, _write) = ours.into_split();
        let mut events = BufReader::new(read);
        theirs
            .write_all(b"{\"event\":\"trial_done\",\"trial\":1,\"exit\":0}\n")
            .await
            .unwrap();
        let mut hello = None;
        assert!(trial_events(&mut events, 1, &mut hello)
            .await
            .unwrap()
            .is_err());
        theirs
            .write_all(b"{\"event\":\"hello\",\"protocol\":2,\"pid\":1}\n")
            .await
            .unwrap();
        let old = trial_events(&mut events, 1, &mut hello).await.unwrap();
        assert!(old.unwrap_err().contains("protocol 2"));
    }

    #[test]
    fn leftovers_leave_out_the_script_and_its_wrappers() {
        let me = std::process::id();
        let parent = parent_of(me).unwrap();
        // The script is this process; its parent is the "supervisor".
        assert_eq!(leftovers(&[me, 99_999_999], me, parent), vec![99_999_999]);
        assert!(leftovers(&[me], me, parent).is_empty());
    }
}
