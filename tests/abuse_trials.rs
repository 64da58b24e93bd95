//! Command trials under abuse (issue 22, items 3, 4, 5, 9 and 15), each
//! through the real binary with a small script written here: a descendant
//! that keeps stderr open, processes that leave the trial's process group
//! (to live on, or to hold memory past the limit), a report line of 64 MiB,
//! links planted where report files go, and a machine full of processes
//! the memory sampler must not read. Plus cgroup containment for real,
//! where a cgroup v2 hierarchy is writable.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private folder (0700) holding a script (0700) and a command spec
/// running it; `marker` goes into the trial's environment, so every process
/// of the trial carries it.
struct Job {
    dir: tempfile::TempDir,
    marker: String,
}

impl Job {
    fn new(name: &str, script: &str, interpreter: &str, extra: &str) -> Job {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let marker = format!("abuse-{name}-{}", std::process::id());
        let script_path = dir.path().join("script");
        std::fs::write(&script_path, script).unwrap();
        std::fs::set_permissions(&script_path, std::fs::Permissions::from_mode(0o700)).unwrap();
        let spec = format!(
            "runner = \"command\"\n\
             command = [\"{interpreter}\", \"script\"]\n\
             workdir = {:?}\n\
             environment = {{ ABUSE_MARKER = \"{marker}\" }}\n\
             [optimizer]\nkind = \"sgd\"\n{extra}\n",
            dir.path().display().to_string()
        );
        std::fs::write(dir.path().join("job.toml"), spec).unwrap();
        Job { dir, marker }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `batchd trial` on the job (4 steps, batch 8, JSON out).
    fn start_trial(&self, flags: &[&str], env: &[(&str, &str)]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_batchd"))
            .env("BATCHD_CONFIG", "/dev/null")
            .envs(env.iter().copied())
            .arg("trial")
            .arg(self.path("job.toml"))
            .args(["--batch-size", "8", "--steps", "4", "--json"])
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Processes of this job's trials still alive.
    fn survivors(&self) -> Vec<String> {
        processes_with_env(&format!("ABUSE_MARKER={}", self.marker))
    }

    /// Waits (briefly) for the trial's processes to be gone; those left.
    fn survivors_after(&self, limit: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let left = self.survivors();
            if left.is_empty() || started.elapsed() > limit {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // A failed test leaves nothing running either.
        for line in self.survivors() {
            if let Some(pid) = line.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
                // SAFETY: a process of this test's trial.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// How a `batchd` process ended: its JSON result, wall time, and peak RSS.
struct Ended {
    result: serde_json::Value,
    wall: Duration,
    max_rss_bytes: u64,
}

/// Waits for `batchd` (at most `limit`, then kills it and fails), reaping
/// it with wait4 for its peak RSS.
fn finish(mut child: Child, limit: Duration) -> Ended {
    let started = Instant::now();
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    // SAFETY: rusage is plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("batchd did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = started.elapsed();
    let stdout = reader.join().unwrap();
    let stderr = errors.join().unwrap();
    let result = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON result ({e}): {}\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )
    });
    Ended {
        result,
        wall,
        max_rss_bytes: usage.ru_maxrss as u64 * 1024,
    }
}

/// `pid: cmdline` of every process whose environment holds `entry`.
fn processes_with_env(entry: &str) -> Vec<String> {
    common::processes()
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|b| *b == 0)
                    .any(|var| var == entry.as_bytes())
            })
        })
        .map(|(pid, cmdline)| format!("{pid}: {cmdline}"))
        .collect()
}

/// Shell lines that report `$BATCHD_STEPS` steps with a falling loss.
const REPORT_STEPS: &str = r#"
n=0
while [ "$n" -lt "$BATCHD_STEPS" ]; do
    echo "{\"step\": $n, \"loss\": $((100000 - n))e-5, \"time\": $n.5}" >> "$BATCHD_REPORT"
    n=$((n + 1))
done
"#;

#[test]
fn a_descendant_holding_stderr_cannot_keep_the_trial_past_its_deadline() {
    // The repro of issue 22 item 3: a background process inherits stderr
    // and outlives the script, which exits 0 at once.
    let job = Job::new(
        "stderr",
        &format!("setsid sleep 300 &\n{REPORT_STEPS}exit 0\n"),
        "sh",
        "[policy_overrides.trials]\ndeadline = \"3s\"",
    );
    let ended = finish(job.start_trial(&[], &[]), Duration::from_secs(30));
    assert!(
        ended.wall < Duration::from_secs(3 + 2),
        "the trial took {:?} against a 3 s deadline",
        ended.wall
    );
    assert_eq!(ended.result["outcome"], "ok", "{:#}", ended.result);
    let left = job.survivors_after(Duration::from_secs(2));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn processes_that_leave_the_process_group_die_with_their_trial() {
    // A `setsid` child with its streams closed (the campaign's leak), and a
    // daemon's double fork, whose grandchild is orphaned at once.
    let job = Job::new(
        "leak",
        &format!(
            "setsid sleep 311 </dev/null >/dev/null 2>&1 &\n\
             ( setsid sh -c 'sleep 312' </dev/null >/dev/null 2>&1 & )\n\
             {REPORT_STEPS}exit 0\n"
        ),
        "sh",
        "",
    );
    let ended = finish(job.start_trial(&[], &[]), Duration::from_secs(30));
    assert_eq!(ended.result["outcome"], "ok", "{:#}", ended.result);
    let left = job.survivors_after(Duration::from_secs(2));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_script_that_stops_its_supervisor_is_still_ended_at_its_deadline() {
    // The script stops the process above it (the supervisor) and hangs; the
    // deadline must still end the trial and everything in it.
    let job = Job::new(
        "stop",
        "setsid sleep 313 </dev/null >/dev/null 2>&1 &\nkill -STOP $PPID\nsleep 30\n",
        "sh",
        "[policy_overrides.trials]\ndeadline = \"2s\"",
    );
    let ended = finish(job.start_trial(&[], &[]), Duration::from_secs(30));
    assert_eq!(ended.result["outcome"], "timeout", "{:#}", ended.result);
    assert!(ended.wall < Duration::from_secs(2 + 5), "{:?}", ended.wall);
    let left = job.survivors_after(Duration::from_secs(2));
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Held by the tests that must not overlap: a daemon starting up kills
/// the processes of dead batchd processes' trials, which would hide what
/// `a_trial_whose_batchd_dies_leaves_nothing_behind` checks.
static NO_DAEMON_STARTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_trial_whose_batchd_dies_leaves_nothing_behind() {
    // batchd is killed outright mid-trial: the supervisor's parent-death
    // signal makes it sweep, escaped processes included.
    let _alone = NO_DAEMON_STARTS.lock().unwrap_or_else(|e| e.into_inner());
    let job = Job::new(
        "orphan",
        "setsid sleep 314 </dev/null >/dev/null 2>&1 &\ntouch started\nsleep 30\n",
        "sh",
        "",
    );
    // A batchd killed outright cannot remove its report file: keep it here.
    let tmp = job.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut child = job.start_trial(&[], &[("TMPDIR", tmp.to_str().unwrap())]);
    let started = Instant::now();
    while !job.path("started").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the script never ran"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!job.survivors().is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    let left = job.survivors_after(Duration::from_secs(3));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn memory_held_outside_the_process_group_counts_against_the_limit() {
    if common::outside_program("python3").is_none() {
        return;
    }
    // A child leaves the process group and the script's stderr, then holds
    // 400 MiB (written, so resident); the script reports its steps slowly.
    let script = r#"
import json, os, sys, time
if os.fork() == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    held = b"\x01" * (400 << 20)
    time.sleep(60)
    os._exit(0)
for step in range(int(os.environ["BATCHD_STEPS"])):
    time.sleep(0.75)
    with open(os.environ["BATCHD_REPORT"], "a") as report:
        report.write(json.dumps({"step": step, "loss": 2.0 - step / 10, "time": time.monotonic()}) + "\n")
"#;
    let job = Job::new(
        "memory",
        script,
        "python3",
        "[policy_overrides.trials]\ndeadline = \"20s\"",
    );
    let ended = finish(
        job.start_trial(&["--memory-limit", "256MiB"], &[]),
        Duration::from_secs(40),
    );
    assert_eq!(
        ended.result["outcome"], "out_of_memory",
        "{:#}",
        ended.result
    );
    let reason = ended.result["reason"].as_str().unwrap_or("");
    assert!(reason.contains("limit"), "{reason}");
    assert!(ended.result["peak_memory_bytes"].as_u64().unwrap() > 256 << 20);
    let left = job.survivors_after(Duration::from_secs(2));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_huge_report_line_fails_the_trial_without_costing_batchd_its_size() {
    // 64 MiB on one line, then a clean exit.
    let job = Job::new(
        "line",
        "head -c 67108864 /dev/zero | tr '\\0' 'x' >> \"$BATCHD_REPORT\"\nexit 0\n",
        "sh",
        "",
    );
    let tmp = job.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let ended = finish(
        job.start_trial(&[], &[("TMPDIR", tmp.to_str().unwrap())]),
        Duration::from_secs(60),
    );
    assert_eq!(ended.result["outcome"], "crashed", "{:#}", ended.result);
    let reason = ended.result["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("report line 1 is longer than the limit of 64KiB"),
        "{reason}"
    );
    // batchd alone peaks near 15 MB; reading the line whole took 4 copies.
    assert!(
        ended.max_rss_bytes < 48 << 20,
        "batchd's peak RSS was {} MiB",
        ended.max_rss_bytes >> 20
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the report file stays: {left:?}");
}

#[test]
fn report_files_are_never_written_through_planted_links() {
    // Every trial plants links to a canary at the names the next trials'
    // reports would have had (`batchd-report-<pid>-<serial>.jsonl`, pid
    // from BATCHD_TRIAL_OWNER), and checks its own report is a private
    // regular file. A whole search runs, so later trials meet the links.
    let script = format!(
        r#"
i=0
while [ "$i" -lt 64 ]; do
    ln -s "$CANARY" "$TMPDIR/batchd-report-$BATCHD_TRIAL_OWNER-$i.jsonl" 2>/dev/null
    i=$((i + 1))
done
echo run >> runs.txt
if [ -L "$BATCHD_REPORT" ] || [ ! -f "$BATCHD_REPORT" ]; then
    echo "the report is not a regular file" >> failures.txt
fi
mode=$(stat -c %a "$BATCHD_REPORT")
if [ "$mode" != 600 ]; then
    echo "the report's mode is $mode" >> failures.txt
fi
{REPORT_STEPS}"#
    );
    let job = Job::new(
        "links",
        &script,
        "sh",
        "[search]\nmax_batch = 8\ntime_budget = \"60s\"",
    );
    let tmp = job.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let canary = job.path("canary");
    std::fs::write(&canary, "precious").unwrap();
    let spec = std::fs::read_to_string(job.path("job.toml"))
        .unwrap()
        .replace(
            "environment = {",
            &format!(
                "environment = {{ CANARY = {:?},",
                canary.display().to_string()
            ),
        );
    std::fs::write(job.path("job.toml"), spec).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", "/dev/null")
        .env("TMPDIR", &tmp)
        .arg("advise")
        .arg(job.path("job.toml"))
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = finish(child, Duration::from_secs(120));
    assert!(
        ended.result["batch_size"].as_u64().is_some(),
        "{:#}",
        ended.result
    );
    let runs = std::fs::read_to_string(job.path("runs.txt")).unwrap();
    assert!(runs.lines().count() >= 2, "{runs}");
    let failures = std::fs::read_to_string(job.path("failures.txt")).unwrap_or_default();
    assert!(failures.is_empty(), "{failures}");
    assert_eq!(std::fs::read_to_string(&canary).unwrap(), "precious");
    // Only the planted links are left in the folder.
    for entry in std::fs::read_dir(&tmp).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_symlink(), "{entry:?} stays");
    }
}

/// `syscr` (read system calls so far) of a process, from /proc/PID/io.
fn read_calls(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("syscr:"))?
        .trim()
        .parse()
        .ok()
}

/// Kills a process group when dropped.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // SAFETY: the process group this test created.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

#[test]
fn the_memory_sampler_reads_only_the_trials_own_processes() {
    if read_calls(std::process::id()).is_none() {
        eprintln!("skipped: /proc/PID/io is not available (no task I/O accounting)");
        return;
    }
    // 300 idle processes elsewhere on the machine: a sampler that reads
    // every process's stat every 25 ms makes ~24,000 reads a second of
    // them; one that walks the trial's tree makes a few hundred.
    const IDLE: usize = 300;
    let mut crowd = Command::new("sh")
        .args([
            "-c",
            &format!("i=0; while [ $i -lt {IDLE} ]; do sleep 120 & i=$((i+1)); done; wait"),
        ])
        .process_group(0)
        .spawn()
        .unwrap();
    let _crowd = GroupGuard(crowd.id() as i32);
    let started = Instant::now();
    let crowd_size = || {
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", crowd.id(), crowd.id()))
            .map(|t| t.split_whitespace().count())
            .unwrap_or(0)
    };
    while crowd_size() < IDLE {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the crowd never gathered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let job = Job::new(
        "sampler",
        &format!("touch started\nsleep 3\n{REPORT_STEPS}"),
        "sh",
        "",
    );
    let child = job.start_trial(&[], &[]);
    let pid = child.id();
    let started = Instant::now();
    while !job.path("started").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the script never ran"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = read_calls(pid).unwrap();
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let reads = read_calls(pid).unwrap() - before;
    let rate = reads as f64 / window.elapsed().as_secs_f64();
    let ended = finish(child, Duration::from_secs(30));
    let _ = crowd.kill();
    let _ = crowd.wait();
    assert_eq!(ended.result["outcome"], "ok", "{:#}", ended.result);
    // The sampler still measured the trial (sh and its sleep).
    assert!(ended.result["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert!(
        rate < 3000.0,
        "batchd made {rate:.0} read calls a second while the trial idled among {IDLE} processes"
    );
}

/// A cgroup made for a test under the cgroup2 mount, removed (with what
/// batchd made in it) when dropped.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn make(name: &str) -> Result<TestCgroup, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let mount = mountinfo
            .lines()
            .find_map(|line| {
                let (mount, fs) = line.split_once(" - ")?;
                let fields: Vec<&str> = mount.split_whitespace().collect();
                let whole = fs.split_whitespace().next()? == "cgroup2" && fields.get(3)? == &"/";
                whole.then(|| PathBuf::from(fields[4]))
            })
            .ok_or("no cgroup2 mount")?;
        let dir = mount.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(TestCgroup(dir))
    }

    fn children(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let mut dirs = self.children();
        dirs.push(self.0.clone());
        for dir in &dirs {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        let started = Instant::now();
        for dir in &dirs {
            while std::fs::remove_dir(dir).is_err() && started.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A daemon killed (and reaped) when dropped, should the test fail.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port of a daemon's "listening on http://ADDRESS:PORT" log line; the
/// rest of its log is drained so that it never blocks on it.
fn listening_port(stderr: std::process::ChildStderr) -> u16 {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let port = line
                .split("listening on http://")
                .nth(1)
                .and_then(|address| address.trim().rsplit(':').next()?.parse::<u16>().ok());
            if let Some(port) = port {
                let _ = sender.send(port);
            }
        }
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the daemon says where it listens")
}

#[test]
fn cgroup_containment_runs_each_trial_in_a_cgroup_of_its_own() {
    let _alone = NO_DAEMON_STARTS.lock().unwrap_or_else(|e| e.into_inner());
    let cgroup = match TestCgroup::make("batchd-abuse") {
        Ok(cgroup) => cgroup,
        Err(why) => {
            eprintln!("skipped: no writable cgroup v2 hierarchy ({why})");
            return;
        }
    };
    // Each trial notes the cgroup it runs in, and leaves a process behind.
    let job = Job::new(
        "cgroup",
        &format!(
            "grep '^0::' /proc/self/cgroup >> cgroups.txt\n\
             setsid sleep 315 </dev/null >/dev/null 2>&1 &\n{REPORT_STEPS}"
        ),
        "sh",
        "[search]\nmax_batch = 4\ntime_budget = \"60s\"",
    );
    let root = tempfile::tempdir().unwrap();
    let (jobs, state) = (root.path().join("jobs"), root.path().join("state"));
    std::fs::create_dir(&jobs).unwrap();
    let config = root.path().join("batchd.toml");
    std::fs::write(&config, "trial_containment = \"cgroup\"\n").unwrap();
    // The daemon reads `trial_containment` from its configuration; it
    // starts inside the test's cgroup (the write of `0` moves the writer).
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))
        .unwrap();
    let join = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .env("BATCHD_CONFIG", &config)
        .args(["serve", "--listen", "127.0.0.1:0", "--jobs-dir"])
        .arg(&jobs)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null());
    // SAFETY: one write(2) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::write(join, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    command.stderr(Stdio::piped());
    let mut daemon = Stopped(command.spawn().unwrap());
    drop(procs);
    let port = listening_port(daemon.0.stderr.take().unwrap());
    std::fs::copy(job.path("job.toml"), jobs.join("cgroup.toml")).unwrap();
    let started = Instant::now();
    loop {
        let (_, body) = common::http(port, "GET", "/v1/jobs/cgroup", "", "", None);
        let job: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if job["state"] == "done" {
            break;
        }
        assert!(
            !["failed", "invalid"].contains(&job["state"].as_str().unwrap_or("")),
            "{body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the job did not finish: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = daemon.0.id();
    // SAFETY: our own child, not yet reaped.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = daemon.0.wait();
    let notes = job.path("cgroups.txt");
    let notes = std::fs::read_to_string(&notes).unwrap();
    let base = format!(
        "0::/{}/trial-{pid}-",
        cgroup.0.file_name().unwrap().to_str().unwrap(),
    );
    let names: std::collections::BTreeSet<&str> = notes.lines().collect();
    assert!(
        notes.lines().all(|line| line.starts_with(&base)),
        "trials ran outside their cgroups ({base}...):\n{notes}"
    );
    assert_eq!(
        names.len(),
        notes.lines().count(),
        "a cgroup per trial:\n{notes}"
    );
    let left = job.survivors_after(Duration::from_secs(2));
    assert!(left.is_empty(), "left behind: {left:?}");
    let trial_cgroups: Vec<_> = cgroup
        .children()
        .into_iter()
        .filter(|d| {
            d.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("trial-")
        })
        .collect();
    assert!(trial_cgroups.is_empty(), "cgroups left: {trial_cgroups:?}");
}
