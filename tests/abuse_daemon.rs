//! The second fault-and-abuse campaign's defects in `batchd serve`, each
//! driven against the real binary: a rebinding page's Host, renamed specs,
//! two daemons on one state folder, FIFOs and devices in the state folder,
//! bodies read before they are refused, a POST that left its file behind,
//! stored advice of a future schema or for changed data, and a SIGHUP that
//! arrives while the daemon starts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{drop_spec, Daemon, TINY};

fn folders() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    (root, jobs, state)
}

/// A valid spec named `name` whose search is short.
fn quick_spec(name: &str) -> String {
    format!(
        "name = \"{name}\"\n{}",
        TINY.replace("time_budget = \"90s\"", "time_budget = \"3s\"")
    )
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` raw; returns everything the server answered before closing or
/// `wait` passing.
fn raw(port: u16, head: &str, body: &str, wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream
        .write_all(format!("{head}\r\n\r\n{body}").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// `batchd serve` on any free loopback port, its stderr piped, for the
/// tests that watch a daemon's start (`common::Daemon` waits for it).
fn serve(jobs: &Path, state: &Path, config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .env("BATCHD_CONFIG", config)
        .args(["serve", "--listen", "127.0.0.1:0", "--jobs-dir"])
        .arg(jobs)
        .arg("--state-dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("batchd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_page_on_a_rebound_name_cannot_read_create_or_delete_jobs() {
    let (root, jobs, state) = folders();
    drop_spec(&jobs, "keep.toml", "name = \"keep\"\nunknown_key = 1\n");
    let config = config(root.path(), "allowed_hosts = [\"gpu-box.lab\"]\n");
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("keep").is_empty());
    let port = daemon.port;
    let attacker =
        format!("Host: attacker.example:{port}\r\nOrigin: http://attacker.example:{port}");
    let wait = Duration::from_secs(10);
    let answer = raw(
        port,
        &format!("DELETE /v1/jobs/keep HTTP/1.1\r\n{attacker}\r\nConnection: close"),
        "",
        wait,
    );
    assert_eq!(status_of(&answer), 421, "{answer}");
    assert!(answer.contains("attacker.example"), "{answer}");
    assert!(
        jobs.join("keep.toml").exists(),
        "the operator's spec was deleted"
    );
    let answer = raw(
        port,
        &format!("GET /v1/jobs HTTP/1.1\r\n{attacker}\r\nConnection: close"),
        "",
        wait,
    );
    assert_eq!(status_of(&answer), 421, "{answer}");
    let spec = quick_spec("planted");
    let answer = raw(
        port,
        &format!(
            "POST /v1/jobs HTTP/1.1\r\n{attacker}\r\nContent-Type: application/toml\r\nContent-Length: {}\r\nConnection: close",
            spec.len()
        ),
        &spec,
        wait,
    );
    assert_eq!(status_of(&answer), 421, "{answer}");
    assert!(!jobs.join("planted.toml").exists());
    // The names that do name the daemon.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "gpu-box.lab".to_string(),
    ] {
        let answer = raw(
            port,
            &format!("GET /v1/jobs HTTP/1.1\r\nHost: {host}\r\nConnection: close"),
            "",
            wait,
        );
        assert_eq!(status_of(&answer), 200, "Host: {host}: {answer}");
    }
    let answer = raw(
        port,
        &format!("DELETE /v1/jobs/keep HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close"),
        "",
        wait,
    );
    assert_eq!(status_of(&answer), 204, "{answer}");
    assert!(!jobs.join("keep.toml").exists());
}

#[test]
fn a_job_follows_its_renamed_file_and_a_delete_never_takes_anothers() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    drop_spec(&jobs, "a.toml", &quick_spec("mv"));
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("mv").is_empty());
    std::fs::rename(jobs.join("a.toml"), jobs.join("b.toml")).unwrap();
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.json("/v1/jobs/mv").1["source_path"]
            .as_str()
            .is_some_and(|p| p.ends_with("b.toml"))
    });
    drop_spec(&jobs, "a.toml", &quick_spec("victim"));
    daemon.wait_for(Duration::from_secs(20), |d| {
        !d.job_state("victim").is_empty()
    });
    let (status, body) = daemon.send("DELETE", "/v1/jobs/mv", "", "", None);
    assert_eq!(status, 204, "{body}");
    assert!(!jobs.join("b.toml").exists(), "mv's file is still there");
    assert!(jobs.join("a.toml").exists(), "victim's file was deleted");
    assert!(!daemon.job_state("victim").is_empty(), "victim was retired");
    assert_eq!(daemon.get("/v1/jobs/mv").0, 404);
}

#[test]
fn a_second_daemon_on_one_state_folder_refuses_to_start_naming_the_first() {
    let (root, jobs, state) = folders();
    let first = Daemon::start(&jobs, &state, 0);
    let other_jobs = root.path().join("other-jobs");
    let started = Instant::now();
    let empty = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/empty-config.toml");
    let second = serve(&other_jobs, &state, &empty).output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    let holder = format!("pid {}", first.child.id());
    assert!(
        said.contains("in use by another batchd") && said.contains(&holder),
        "{said}"
    );
    // The first one is untouched and the lock goes with it.
    assert_eq!(first.get("/readyz").0, 200);
    first.stop();
    let again = Daemon::start(&jobs, &state, 0);
    assert_eq!(again.get("/readyz").0, 200);
}

fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o644) }, 0);
}

#[test]
fn fifos_and_devices_in_the_state_folder_are_set_aside_not_opened() {
    let (_root, jobs, state) = folders();
    std::fs::create_dir_all(state.join("history")).unwrap();
    mkfifo(&state.join("history/x.json"));
    std::os::unix::fs::symlink("/dev/zero", state.join("history/z.json")).unwrap();
    // Invalid specs: jobs whose GET reads their history, with no search.
    drop_spec(&jobs, "x.toml", "unknown_key = 1\n");
    drop_spec(&jobs, "z.toml", "unknown_key = 1\n");
    let started = Instant::now();
    let daemon = Daemon::start(&jobs, &state, 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ready after {:?}",
        started.elapsed()
    );
    daemon.wait_for(Duration::from_secs(20), |d| d.job_state("x") == "invalid");
    let (status, _) = daemon.get("/v1/jobs/z");
    assert_eq!(status, 200);
    let spec = quick_spec("fresh");
    let (status, body) = daemon.send("POST", "/v1/jobs", "application/toml", &spec, None);
    assert_eq!(status, 201, "{body}"); // answered: the rescan it waits for is not hung
    let corrupt: Vec<String> = std::fs::read_dir(state.join("corrupt"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        corrupt.iter().any(|n| n.starts_with("x.json"))
            && corrupt.iter().any(|n| n.starts_with("z.json")),
        "{corrupt:?}"
    );
    let stopped = Instant::now();
    daemon.stop();
    assert!(stopped.elapsed() < Duration::from_secs(10));
}

#[test]
fn refused_requests_are_answered_before_their_body_is_read() {
    let (root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    let port = daemon.port;
    let wait = Duration::from_secs(3);
    // 10 GB announced: 413 at once, never `100 Continue`.
    let answer = raw(
        port,
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/toml\r\nContent-Length: 10000000000\r\nExpect: 100-continue",
        "",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    drop(daemon);
    // With a token: 401 before the body, and no `100 Continue` either.
    let config = common::config_with_token(root.path(), "s3cret");
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);
    let answer = raw(
        daemon.port,
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/toml\r\nContent-Length: 100\r\nExpect: 100-continue",
        "",
        wait,
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
}

#[test]
fn a_posted_spec_whose_data_is_unusable_is_refused_and_leaves_no_file() {
    let (root, jobs, state) = folders();
    let config = config(root.path(), "data_roots = [\"/dev\"]\n");
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);
    let spec = serde_json::json!({
        "name": "zero",
        "model": {"kind": "mlp", "hidden": [8], "classes": 2},
        "data": {"kind": "csv", "path": "/dev/zero", "label_column": "label"},
        "optimizer": {"kind": "adam"},
    })
    .to_string();
    let (status, body) = daemon.send("POST", "/v1/jobs", "application/json", &spec, None);
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("data.path") && body.contains("/dev/zero"),
        "{body}"
    );
    let left: Vec<_> = std::fs::read_dir(&jobs).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(daemon.get("/v1/jobs/zero").0, 404);
}

/// A CSV job with a short search.
fn csv_job(data: &Path) -> String {
    format!(
        "name = \"d\"\n[model]\nkind = \"mlp\"\nhidden = [16]\nclasses = 10\n\
         [data]\nkind = \"csv\"\npath = {:?}\nlabel_column = \"label\"\n\
         [optimizer]\nkind = \"adam\"\n\
         [search]\nmax_batch = 256\nmemory_limit = \"512MiB\"\ntime_budget = \"4s\"\n",
        data.display().to_string()
    )
}

fn reused(daemon: &Daemon) -> serde_json::Value {
    daemon.json("/v1/jobs/d").1["reused"].clone()
}

#[test]
fn stored_advice_is_reused_only_for_its_schema_and_its_data() {
    let (root, jobs, state) = folders();
    let data = root.path().join("digits.csv");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/digits.csv"),
        &data,
    )
    .unwrap();
    drop_spec(&jobs, "d.toml", &csv_job(&data));
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(120), |d| d.job_state("d") == "done");
    daemon.stop();
    // Unchanged: reused (so the refusals below are the checks at work).
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| d.job_state("d") == "done");
    assert_eq!(reused(&daemon), true);
    daemon.stop();
    // A stored recommendation of a future schema is not served as current.
    let stored: Vec<PathBuf> = std::fs::read_dir(state.join("recommendations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stored[0]).unwrap()).unwrap();
    document["recommendation"]["schema_version"] = serde_json::json!(3);
    std::fs::write(&stored[0], document.to_string()).unwrap();
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("d").is_empty());
    assert_eq!(reused(&daemon), false, "{}", daemon.get("/v1/jobs/d").1);
    assert!(std::fs::read_dir(state.join("corrupt"))
        .unwrap()
        .any(|e| e.is_ok()));
    daemon.wait_for(Duration::from_secs(120), |d| d.job_state("d") == "done");
    daemon.stop();
    // The CSV cut to 399 rows (the header and 398 samples) is other data.
    let text = std::fs::read_to_string(&data).unwrap();
    let cut: Vec<&str> = text.lines().take(399).collect();
    std::fs::write(&data, cut.join("\n") + "\n").unwrap();
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("d").is_empty());
    assert_eq!(reused(&daemon), false, "{}", daemon.get("/v1/jobs/d").1);
    assert_ne!(daemon.job_state("d"), "done");
}

/// Opens the FIFO `path` for writing once a reader has it open (so the
/// reader is known to be waiting on it), writes `text` and closes it.
/// (The reader sees the FIFO because it blocks in `open`; batchd reads
/// its configuration with a plain read, which this test relies on.)
/// False when no reader came within `wait`.
fn feed_fifo(path: &Path, text: &str, wait: Duration) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let started = Instant::now();
    while started.elapsed() < wait {
        // Non-blocking: ENXIO until a reader has the FIFO open.
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(mut fifo) => {
                let _ = fifo.write_all(text.as_bytes());
                return true;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    false
}

#[test]
fn a_sighup_during_start_up_is_a_reload_not_a_death() {
    let (root, jobs, state) = folders();
    // The configuration is a FIFO: the daemon's read of it blocks until
    // this test writes, so the test knows the daemon is past its first
    // instructions and still starting (no handler installed yet) when it
    // sends SIGHUP, the moment systemd's reload or a stray `kill -HUP` can
    // land on a restarting daemon.
    let config = root.path().join("batchd.toml");
    mkfifo(&config);
    let mut child = serve(&jobs, &state, &config).spawn().unwrap();
    let pid = child.id() as i32;
    assert!(
        feed_fifo(&config, "", Duration::from_secs(20)),
        "the daemon never read its configuration"
    );
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    // Every later read of the configuration (the policies' folder at
    // start-up, then the reload's reads) gets the empty file too.
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (feeding, config) = (feeding.clone(), config.clone());
        std::thread::spawn(move || {
            while feeding.load(std::sync::atomic::Ordering::SeqCst) {
                feed_fifo(&config, "", Duration::from_millis(100));
            }
        })
    };
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }
    let started = Instant::now();
    while !log.lock().unwrap().contains("reloaded") && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = child.try_wait().unwrap().is_none();
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    feeding.store(false, std::sync::atomic::Ordering::SeqCst);
    feeder.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        alive,
        "a SIGHUP during start-up killed the daemon ({status:?}): {log}"
    );
    assert!(log.contains("listening on"), "{log}");
    assert!(
        log.contains("reloading") && log.contains("reloaded"),
        "the early SIGHUP was not a reload: {log}"
    );
}
