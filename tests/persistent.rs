//! Persistent command trials (docs/command-runner.md, "Persistent
//! trials"), with a real pure-Python script (tests/command/persistent.py,
//! through the batchd package): trials share one process while they end
//! cleanly, and every way a trial can fail ends the process, the next trial
//! starting a fresh one: an out-of-memory error mid-trial (batchd's limit,
//! and the helper's own exit), a crash, a hang past the deadline, a leak
//! between trials, a script that cannot run twice in one process. Old
//! scripts keep one process per trial, and nothing outlives batchd.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use batchd::policy::PolicySet;
use batchd::spec::{parse_spec, SpecOrigin};
use batchd::trial::{
    Outcome, ProcessTrialRunner, RunnerOptions, TrialDevice, TrialRequest, TrialResult, TrialRunner,
};
use batchd::validation::Syntax;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A command spec running `script` from tests/command with the package on
/// PYTHONPATH, `marker` on its command line and `env` in its environment.
fn spec_text(script: &str, marker: &str, env: &[(&str, String)]) -> String {
    // linear.py's helper copy is the package's when it can import it.
    let mut vars: Vec<String> = Vec::new();
    if script != "linear.py" {
        vars.push(format!(
            "PYTHONPATH = {:?}",
            root().join("python").display().to_string()
        ));
    }
    vars.extend(
        env.iter()
            .map(|(name, value)| format!("{name} = {value:?}")),
    );
    let environment = vars.join(", ");
    format!(
        "runner = \"command\"\n\
         command = [\"python3\", \"{script}\", \"--marker={marker}\"]\n\
         environment = {{ {environment} }}\n\
         [optimizer]\nkind = \"sgd\"\n"
    )
}

struct Harness {
    runner: ProcessTrialRunner,
    runtime: tokio::runtime::Runtime,
    spec: batchd::spec::JobSpec,
    pids: PathBuf,
    marker: String,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(script: &str, env: &[(&str, &str)]) -> Option<Harness> {
        common::outside_program("python3")?;
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let marker = format!("persistent-{}-{}", std::process::id(), rand_suffix());
        let mut vars: Vec<(&str, String)> = vec![("PIDS_FILE", pids.display().to_string())];
        vars.extend(env.iter().map(|(k, v)| (*k, v.to_string())));
        let origin = SpecOrigin {
            label: "test".into(),
            default_name: Some("persistent".into()),
            base_dir: Some(root().join("tests/command")),
        };
        let spec = parse_spec(
            &spec_text(script, &marker, &vars),
            Syntax::Toml,
            &origin,
            &PolicySet::builtin(),
        )
        .expect("spec");
        let mut options = RunnerOptions::current_exe().unwrap();
        options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
        options.persistent = true;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Some(Harness {
            runner: ProcessTrialRunner::new(options),
            runtime,
            spec,
            pids,
            marker,
            _dir: dir,
        })
    }

    fn request(&self, batch: u64, seed: u64) -> TrialRequest {
        let mut request = TrialRequest::new(self.spec.clone(), TrialDevice::Cpu, batch, 6, 1e-3);
        request.seed = seed;
        request.warmup_steps = 1;
        request.deadline = Duration::from_secs(60);
        request
    }

    fn run(&self, request: TrialRequest) -> TrialResult {
        self.runtime.block_on(self.runner.run(request))
    }

    fn trial(&self, batch: u64, seed: u64) -> TrialResult {
        self.run(self.request(batch, seed))
    }

    /// The pid each trial ran in, in order (the script writes one line per
    /// trial that got as far as its Trial()).
    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    fn release(&self) {
        self.runtime.block_on(self.runner.release(TrialDevice::Cpu));
    }

    fn leftovers(&self) -> Vec<String> {
        common::processes()
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(&self.marker))
            .map(|(pid, cmdline)| format!("{pid}: {cmdline}"))
            .collect()
    }

    /// Waits up to `limit` for every process of the test to be gone.
    fn assert_no_leftovers(&self, limit: Duration) {
        let start = Instant::now();
        while !self.leftovers().is_empty() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            self.leftovers().is_empty(),
            "left running: {:?}",
            self.leftovers()
        );
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn ok(result: &TrialResult) {
    assert_eq!(
        result.outcome,
        Outcome::Ok,
        "{:?}: {}",
        result.reason,
        result.stderr_tail
    );
}

#[test]
fn clean_trials_share_one_process_with_their_own_seed_and_peak() {
    let Some(h) = Harness::new("persistent.py", &[("BYTES_PER_SAMPLE", "262144")]) else {
        return;
    };
    let plan = [(8, 1), (64, 1), (512, 2), (64, 1), (8, 2)];
    let results: Vec<TrialResult> = plan.iter().map(|&(b, s)| h.trial(b, s)).collect();
    for result in &results {
        ok(result);
    }
    let pids = h.pids();
    assert_eq!(pids.len(), 5, "{pids:?}");
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 1, "{pids:?}");
    let numbers: Vec<Option<u32>> = results.iter().map(|r| r.process_trial).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5].map(Some));
    // The same seed and batch start from the same weights and data, as in a
    // fresh process; another seed does not.
    assert_eq!(results[1].loss_first, results[3].loss_first);
    assert_ne!(results[0].loss_first, results[4].loss_first);
    // Each trial's peak is its own: batch 512 holds 128 MiB per step, and
    // the batch-64 trial after it is measured without it.
    let peak = |i: usize| results[i].peak_memory_bytes.unwrap();
    assert!(peak(2) > peak(3) + (64 << 20), "{} vs {}", peak(2), peak(3));
    assert!(results.iter().all(|r| r.training_seconds.is_some()));
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn an_out_of_memory_trial_ends_the_process_and_the_next_starts_fresh() {
    let Some(h) = Harness::new("persistent.py", &[("BYTES_PER_SAMPLE", "1048576")]) else {
        return;
    };
    ok(&h.trial(8, 1));
    // batchd's limit: 512 MiB held against a 160 MiB limit.
    let mut over = h.request(512, 1);
    over.memory_limit_bytes = Some(160 << 20);
    let killed = h.run(over);
    assert_eq!(killed.outcome, Outcome::OutOfMemory, "{:?}", killed.reason);
    assert!(
        killed.reason.as_deref().unwrap_or("").contains("limit"),
        "{:?}",
        killed.reason
    );
    ok(&h.trial(8, 1));
    // The helper's own out-of-memory exit (status 3, the phrase on stderr).
    let oom = h.trial(8, 14);
    assert_eq!(oom.outcome, Outcome::OutOfMemory, "{:?}", oom.reason);
    assert_eq!(oom.process_trial, Some(2));
    ok(&h.trial(8, 1));
    let pids = h.pids();
    assert_eq!(pids.len(), 5, "{pids:?}");
    // 1 | killed with 2 | 3, 4 (the OOM) | 5
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[3], pids[4]);
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_crash_ends_the_process_and_says_why() {
    let Some(h) = Harness::new("persistent.py", &[]) else {
        return;
    };
    ok(&h.trial(8, 1));
    let crashed = h.trial(8, 13);
    assert_eq!(crashed.outcome, Outcome::Crashed);
    assert!(
        crashed
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("boom at step 1"),
        "{:?} / {}",
        crashed.reason,
        crashed.stderr_tail
    );
    // The tail is this trial's own: the end-of-trial mark is not in it.
    assert!(!crashed.stderr_tail.contains("batchd-trial-done"));
    ok(&h.trial(8, 1));
    let pids = h.pids();
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_hang_past_the_deadline_is_killed_with_its_children() {
    let Some(h) = Harness::new("persistent.py", &[]) else {
        return;
    };
    ok(&h.trial(8, 1));
    let mut hang = h.request(8, 15);
    hang.deadline = Duration::from_secs(3);
    let started = Instant::now();
    let hung = h.run(hang);
    assert_eq!(hung.outcome, Outcome::Timeout, "{:?}", hung.reason);
    assert!(started.elapsed() < Duration::from_secs(10));
    // The script and its sleeping child are gone.
    h.assert_no_leftovers(Duration::from_secs(3));
    ok(&h.trial(8, 1));
    let pids = h.pids();
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_leak_between_trials_ends_the_process_and_a_divergence_does_not() {
    let Some(h) = Harness::new("persistent.py", &[("LEAK_MB", "200")]) else {
        return;
    };
    let results: Vec<TrialResult> = (0..4).map(|_| h.trial(8, 1)).collect();
    for result in &results {
        ok(result);
    }
    let warned: Vec<&TrialResult> = results
        .iter()
        .filter(|r| {
            r.warnings
                .iter()
                .any(|w| w.contains("did not return to its baseline"))
        })
        .collect();
    assert_eq!(
        warned.len(),
        1,
        "{:?}",
        results.iter().map(|r| &r.warnings).collect::<Vec<_>>()
    );
    let pids = h.pids();
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 2, "{pids:?}");
    h.release();

    let Some(h) = Harness::new("persistent.py", &[]) else {
        return;
    };
    ok(&h.trial(8, 1));
    let diverged = h.trial(8, 16);
    assert_eq!(diverged.outcome, Outcome::Diverged, "{:?}", diverged.reason);
    ok(&h.trial(8, 1));
    let pids = h.pids();
    assert_eq!(pids.iter().collect::<BTreeSet<_>>().len(), 1, "{pids:?}");
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_script_that_cannot_run_twice_falls_back_to_one_process_per_trial() {
    // Fails on its second run in a process, after Trial(): the first trial
    // runs persistently, the second fails in setup and runs again fresh.
    let Some(h) = Harness::new("persistent.py", &[("REEXEC_FAIL", "2")]) else {
        return;
    };
    let first = h.trial(8, 1);
    ok(&first);
    let second = h.trial(8, 1);
    ok(&second);
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("one process per trial")),
        "{:?}",
        second.warnings
    );
    let third = h.trial(8, 1);
    ok(&third);
    assert_eq!(third.process_trial, None);
    // Trial 2's re-run wrote no line (it failed before its Trial()'s
    // bookkeeping line? no: after), so count distinct pids.
    let pids = h.pids();
    assert!(pids.iter().collect::<BTreeSet<_>>().len() >= 3, "{pids:?}");
    assert_eq!(first.loss_first, third.loss_first);
    h.release();

    // Fails before Trial() on a second run: even trial 1 (itself a re-run
    // in the taken-over process) fails in setup, and runs again fresh.
    let Some(h) = Harness::new("persistent.py", &[("REEXEC_FAIL", "1")]) else {
        return;
    };
    ok(&h.trial(8, 1));
    let next = h.trial(8, 1);
    ok(&next);
    assert_eq!(next.process_trial, None);
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

#[test]
fn a_script_without_the_helper_keeps_one_process_per_trial() {
    let Some(h) = Harness::new("linear.py", &[("MODE", "train")]) else {
        return;
    };
    let first = h.trial(8, 1);
    ok(&first);
    assert_eq!(first.process_trial, Some(1));
    let second = h.trial(8, 1);
    ok(&second);
    // Declined: the second ran as before, in a fresh process of its own.
    assert_eq!(second.process_trial, None);
    assert_eq!(first.loss_first, second.loss_first);
    h.release();
    h.assert_no_leftovers(Duration::from_secs(5));
}

/// A spec file for `batchd advise` on persistent.py.
fn advise_spec(dir: &Path, marker: &str, pids: &Path, budget: &str) -> PathBuf {
    let text = format!(
        "runner = \"command\"\n\
         command = [\"python3\", {:?}, \"--marker={marker}\"]\n\
         workdir = {:?}\n\
         environment = {{ PYTHONPATH = {:?}, PIDS_FILE = {:?}, STEP_SECONDS = \"0.01\" }}\n\
         [optimizer]\nkind = \"sgd\"\n\
         [training]\ndataset_size = 20000\nepochs = 1\ntime_budget = \"3s\"\n\
         [search]\nmin_batch = 8\nmax_batch = 256\ntime_budget = \"{budget}\"\n",
        root()
            .join("tests/command/persistent.py")
            .display()
            .to_string(),
        root().join("tests/command").display().to_string(),
        root().join("python").display().to_string(),
        pids.display().to_string(),
    );
    let path = dir.join("persistent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn advise_runs_a_whole_search_in_few_processes_and_kill_9_leaves_nothing() {
    if common::outside_program("python3").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("advise-{}-{}", std::process::id(), rand_suffix());
    let pids = dir.path().join("pids");
    let spec = advise_spec(dir.path(), &marker, &pids, "40s");
    let (code, stdout, stderr) = common::run(
        Command::new(env!("CARGO_BIN_EXE_batchd"))
            .env("BATCHD_CONFIG", "/dev/null")
            .env("XDG_CACHE_HOME", dir.path())
            .args(["advise", "--json"])
            .arg(&spec),
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rec: serde_json::Value = serde_json::from_str(&stdout).expect("recommendation");
    let trials = rec["evidence"]["trials"].as_array().map_or(0, Vec::len);
    let failed = rec["evidence"]["trials"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|t| t["outcome"] != "ok").count());
    let pids = std::fs::read_to_string(&pids).unwrap();
    let distinct: BTreeSet<&str> = pids.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(trials >= 8, "{trials} trials");
    // One process, plus one after each trial that ended it.
    assert!(
        distinct.len() <= 1 + failed,
        "{} processes for {trials} trials ({failed} not ok)",
        distinct.len()
    );
    assert!(
        rec["rationale"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap_or("").contains("persistent trials")),
        "{}",
        rec["rationale"]
    );
    assert_eq!(rec["evidence"]["trials"][1]["process_trial"], 2);
    let leftovers = || {
        common::processes()
            .into_iter()
            .filter(|(_, c)| c.contains(&marker))
            .count()
    };
    assert_eq!(leftovers(), 0);

    // kill -9 of a batchd mid-search: its persistent process goes too.
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", "/dev/null")
        .env("XDG_CACHE_HOME", dir.path())
        .args(["advise", "--json"])
        .arg(&spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while leftovers() == 0 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(leftovers() > 0, "the search never started its script");
    child.kill().unwrap();
    child.wait().unwrap();
    let start = Instant::now();
    while leftovers() > 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(leftovers(), 0, "a trial process outlived batchd");
}
