//! The defects a fault-and-abuse campaign found in `batchd serve`, each
//! driven against the real binary so none comes back: a watcher woken by
//! its own reads, job names that collide, hostile nesting, FIFOs and huge
//! files in the jobs folder, empty token files, racing POSTs, a stream of
//! writes starving the rescan, leftover temporary files and state folders
//! that are files.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{drop_spec, http, Daemon, TINY};

fn folders() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    let state = root.path().join("state");
    std::fs::create_dir_all(&jobs).unwrap();
    (root, jobs, state)
}

/// A spec that fails validation (an unknown key): read on every rescan,
/// never searched, so cheap to keep many of.
fn invalid_spec(n: usize) -> String {
    format!("name = \"junk{n}\"\nunknown_key_{n} = 1\n{TINY}")
}

fn counter(daemon: &Daemon, name: &str) -> f64 {
    let (_, text) = daemon.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported"))
}

fn job(daemon: &Daemon, name: &str) -> serde_json::Value {
    daemon
        .json(&format!("/v1/jobs/{}", common::url_encode(name)))
        .1
}

fn first_error(job: &serde_json::Value) -> String {
    job["errors"][0]["message"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn an_idle_watcher_does_not_wake_itself() {
    let (_root, jobs, state) = folders();
    for n in 0..40 {
        drop_spec(&jobs, &format!("junk{n}.toml"), &invalid_spec(n));
    }
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("junk39") == "invalid"
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = counter(&daemon, "batchd_jobs_folder_rescans_total");
    std::thread::sleep(Duration::from_secs(11));
    let rescans = counter(&daemon, "batchd_jobs_folder_rescans_total") - before;
    // Only the periodic rescan (every 5 s) runs while nothing changes; a
    // watcher reacting to its own opens rescanned every 300 ms.
    assert!(rescans <= 3.0, "{rescans} rescans in 11 idle seconds");
}

#[test]
fn two_files_naming_one_job_do_not_restart_each_other() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    drop_spec(&jobs, "a.toml", &format!("name = \"x\"\n{TINY}"));
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("x").is_empty());
    drop_spec(&jobs, "b.toml", &format!("name = \"x\"\n{TINY}"));
    // A valid y.toml beside an invalid y.json.
    drop_spec(&jobs, "y.toml", TINY);
    drop_spec(&jobs, "y.json", "{\"model\": ");
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("b") == "invalid" && d.job_state("y.json") == "invalid"
    });
    let b = job(&daemon, "b");
    let said = first_error(&b);
    assert!(said.contains("a.toml") && said.contains("b.toml"), "{b:#}");
    assert_eq!(b["errors"][0]["field"], "name");
    assert!(first_error(&job(&daemon, "y.json")).contains("syntax"));
    // Over several rescans the job keeps its file and is never cancelled.
    std::thread::sleep(Duration::from_secs(6));
    let x = job(&daemon, "x");
    assert!(
        x["source_path"].as_str().unwrap().ends_with("a.toml"),
        "{x:#}"
    );
    let runs = x["history"].as_array().cloned().unwrap_or_default();
    assert!(
        runs.iter().all(|r| r["outcome"] != "cancelled"),
        "the job was restarted: {runs:#?}"
    );
    assert!(runs.len() <= 1, "{} runs of x", runs.len());
    assert_ne!(job(&daemon, "y")["state"], "invalid");
}

#[test]
fn deep_nesting_is_refused_quickly_and_health_stays_up() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    let deep = format!("a: {}{}", "[".repeat(60_000), "]".repeat(60_000));
    let port = daemon.port;
    let posts: Vec<_> = (0..2)
        .map(|_| {
            let deep = deep.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = http(port, "POST", "/v1/jobs", "application/yaml", &deep, None);
                (answer, started.elapsed())
            })
        })
        .collect();
    let started = Instant::now();
    let (status, _) = daemon.get("/healthz");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    for post in posts {
        let ((status, body), took) = post.join().unwrap();
        assert_eq!(status, 422, "{body}");
        assert!(body.contains("levels deep"), "{body}");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }
    // The same document dropped as a file is an invalid job, not a hang.
    std::fs::write(jobs.join("deep.yaml"), &deep).unwrap();
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("deep") == "invalid"
    });
    assert!(first_error(&job(&daemon, "deep")).contains("levels deep"));
}

#[test]
fn odd_files_in_the_jobs_folder_become_invalid_jobs_that_say_why() {
    let (_root, jobs, state) = folders();
    let fifo = std::ffi::CString::new(jobs.join("pipe.toml").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::create_dir(jobs.join("folder.toml")).unwrap();
    std::os::unix::fs::symlink(jobs.join("nowhere"), jobs.join("dangling.toml")).unwrap();
    std::os::unix::fs::symlink(jobs.join("loop.toml"), jobs.join("loop.toml")).unwrap();
    // Three files of garbage with one stem stay three entries.
    for ext in ["toml", "json", "yaml"] {
        std::fs::write(jobs.join(format!("g.{ext}")), "{{{ not a spec").unwrap();
    }
    // Over the 1 MiB file limit, and a small file of many junk keys.
    let huge: String = (0..120_000).map(|i| format!("k{i} = 1\n")).collect();
    std::fs::write(jobs.join("huge.toml"), &huge).unwrap();
    let junk: String = (0..5_000).map(|i| format!("k{i} = 1\n")).collect();
    std::fs::write(jobs.join("junk.toml"), &junk).unwrap();

    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("junk") == "invalid"
    });
    for (name, says) in [
        ("pipe", "FIFO"),
        ("folder", "folder"),
        ("dangling", "symbolic link to nothing"),
        ("loop", "loop"),
        ("huge", "over the limit"),
    ] {
        let entry = job(&daemon, name);
        assert_eq!(entry["state"], "invalid", "{name}: {entry:#}");
        assert!(first_error(&entry).contains(says), "{name}: {entry:#}");
    }
    let (_, listed) = daemon.json("/v1/jobs");
    let garbage = listed["jobs"]
        .as_array()
        .or(listed.as_array())
        .unwrap()
        .iter()
        .filter(|j| {
            let path = Path::new(j["source_path"].as_str().unwrap_or(""));
            path.file_stem().is_some_and(|s| s == "g") && j["state"] == "invalid"
        })
        .count();
    assert_eq!(garbage, 3, "{listed:#}");
    let junk = job(&daemon, "junk");
    let errors = junk["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 51, "{} errors kept", errors.len());
    assert!(errors[50]["message"]
        .as_str()
        .unwrap()
        .contains("more errors"));
    // The daemon answers throughout: the FIFO blocked nothing.
    assert_eq!(daemon.get("/healthz").0, 200);
}

fn serve_with_config(root: &Path, config: &str) -> std::process::Output {
    let path = root.join("batchd.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .env("BATCHD_CONFIG", &path)
        .args(["serve", "--jobs-dir"])
        .arg(root.join("jobs"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_empty_token_file_is_an_error_not_an_open_api() {
    let (root, _jobs, _state) = folders();
    let token = root.path().join("token");
    std::fs::write(&token, "\n").unwrap();
    let output = serve_with_config(
        root.path(),
        &format!("api_token_file = {:?}\n", token.display().to_string()),
    );
    assert!(!output.status.success(), "started with an empty token file");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("empty") && stderr.contains(token.to_str().unwrap()),
        "{stderr}"
    );
    // No colour codes when stderr is not a terminal (journald).
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_the_token_still_required() {
    let (root, jobs, state) = folders();
    let config = common::config_with_token(root.path(), "s3cret");
    let daemon = Daemon::start_with(&jobs, &state, 0, &config);
    let send = |authorization: &str| {
        let request = format!(
            "DELETE /v1/jobs/none HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: {authorization}\r\n\r\n"
        );
        raw(daemon.port, &request)
    };
    assert!(send("bearer s3cret").starts_with("HTTP/1.1 404"));
    assert!(send("BEARER s3cret").starts_with("HTTP/1.1 404"));
    assert!(send("Bearer s3cre").starts_with("HTTP/1.1 401"));
    assert!(send("Bearer s3cret2").starts_with("HTTP/1.1 401"));
    assert!(send("Basic s3cret").starts_with("HTTP/1.1 401"));
}

/// The raw response to a raw request.
fn raw(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A refused request is answered from its head (413 from the declared
    // length, 401 without the token) and the connection closed unread: a
    // client still sending its body gets EPIPE, and the answer is there
    // to read all the same.
    let _ = stream.write_all(request.as_bytes());
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn posts_never_replace_a_file_and_racing_posts_get_one_201() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    // foo.toml holds job bar; posting a job named foo must not overwrite it.
    drop_spec(&jobs, "foo.toml", &format!("name = \"bar\"\n{TINY}"));
    daemon.wait_for(Duration::from_secs(20), |d| !d.job_state("bar").is_empty());
    let foo = format!("name = \"foo\"\n{TINY}");
    let (status, body) = daemon.send("POST", "/v1/jobs", "application/toml", &foo, None);
    assert_eq!(status, 409, "{body}");
    assert!(std::fs::read_to_string(jobs.join("foo.toml"))
        .unwrap()
        .contains("name = \"bar\""));
    assert!(!job(&daemon, "bar")["state"].is_null());
    // text/plain is not a spec type (a web page can send it cross-site).
    let (status, _) = daemon.send("POST", "/v1/jobs", "text/plain", &foo, None);
    assert_eq!(status, 415);

    let port = daemon.port;
    for round in 0..5 {
        let spec = format!("name = \"race{round}\"\n{TINY}");
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let spec = spec.clone();
                std::thread::spawn(move || {
                    http(port, "POST", "/v1/jobs", "application/toml", &spec, None).0
                })
            })
            .collect();
        let mut statuses: Vec<u16> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, [201, 409], "round {round}");
        // DELETE racing DELETE: one 204, one 404, never a 500.
        let name = format!("/v1/jobs/race{round}");
        let deleters: Vec<_> = (0..2)
            .map(|_| {
                let name = name.clone();
                std::thread::spawn(move || http(port, "DELETE", &name, "", "", None).0)
            })
            .collect();
        let mut statuses: Vec<u16> = deleters.into_iter().map(|r| r.join().unwrap()).collect();
        statuses.sort();
        assert_eq!(statuses, [204, 404], "round {round}");
    }
}

#[test]
fn a_file_rewritten_without_pause_does_not_hide_a_new_spec() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let busy = jobs.join("busy.toml");
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                std::fs::write(&busy, format!("# rewrite {n}\n{TINY}")).unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    drop_spec(&jobs, "newcomer.toml", &invalid_spec(1));
    let started = Instant::now();
    let seen = loop {
        if daemon.job_state("newcomer") == "invalid" {
            break Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(12) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    let seen = seen.expect("the new spec stayed unseen while the other file was rewritten");
    assert!(seen < Duration::from_secs(7), "seen after {seen:?}");
}

#[test]
fn leftover_temporary_files_are_swept_and_state_folders_that_are_files_set_aside() {
    let (_root, jobs, state) = folders();
    std::fs::create_dir_all(state.join("recommendations")).unwrap();
    // A regular file where the history folder belongs.
    std::fs::write(state.join("history"), "not a folder").unwrap();
    let debris = [
        jobs.join(".a.toml.tmp.999999.0"),
        state.join("recommendations").join(".r.json.tmp.999999.1"),
    ];
    for path in &debris {
        std::fs::write(path, "half a write").unwrap();
    }
    let daemon = Daemon::start(&jobs, &state, 0);
    assert_eq!(daemon.get("/healthz").0, 200);
    for path in &debris {
        assert!(!path.exists(), "{} left behind", path.display());
    }
    assert!(state.join("history").is_dir());
    let aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("history.not-a-folder")
        });
    assert!(aside, "the file was not kept aside");
}

#[test]
fn non_finite_and_absurd_numbers_are_errors_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let limit = "memory_limit = \"512MiB\"";
    for (name, from, to, field, says) in [
        (
            "nan",
            limit,
            "memory_limit = nan",
            "search.memory_limit",
            "finite",
        ),
        (
            "inf",
            limit,
            "memory_limit = inf",
            "search.memory_limit",
            "finite",
        ),
        (
            "decay",
            "kind = \"adam\"",
            "kind = \"adam\"\nweight_decay = nan",
            "optimizer.weight_decay",
            "finite",
        ),
        (
            "huge",
            limit,
            "memory_limit = \"17179869184GiB\"",
            "search.memory_limit",
            "at most",
        ),
    ] {
        let text = TINY.replace(from, to);
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_batchd"))
            .env("BATCHD_CONFIG", "/dev/null")
            .arg("validate")
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{name} passed validation: {said}");
        assert!(
            said.contains(field) && said.contains(says),
            "{name}: {said}"
        );
    }
}

/// Pids of processes whose command line is exactly `cmdline`.
fn pids_running(cmdline: &str) -> Vec<u32> {
    common::processes()
        .into_iter()
        .filter(|(_, line)| line.trim() == cmdline)
        .map(|(pid, _)| pid)
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead: only its exit status is left.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn killing_batchd_kills_what_a_command_trial_forked() {
    let (_root, jobs, state) = folders();
    // Unusual sleep lengths, so the test finds only its own processes.
    let spec = "runner = \"command\"\ncommand = [\"sh\", \"-c\", \"sleep 97.25 & sleep 98.25\"]\n\
                workdir = \"/tmp\"\n[policy_overrides.trials]\ndeadline = \"60s\"\n\
                [optimizer]\nkind = \"sgd\"\n";
    drop_spec(&jobs, "forks.toml", spec);
    let port = 0;
    let mut daemon = Daemon::start(&jobs, &state, port);
    daemon.wait_for(Duration::from_secs(30), |_| {
        !pids_running("sleep 97.25").is_empty() && !pids_running("sleep 98.25").is_empty()
    });
    let left: Vec<u32> = [pids_running("sleep 97.25"), pids_running("sleep 98.25")].concat();
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    // The trial's supervisor gets SIGTERM when batchd dies (its parent-death
    // signal) and kills everything the script forked: no restart needed.
    // (Before the supervisor, the children lived on until the next start.)
    let started = Instant::now();
    while left.iter().any(|pid| alive(*pid)) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivors: Vec<u32> = left.iter().copied().filter(|pid| alive(*pid)).collect();
    drop(daemon);
    for pid in &survivors {
        // SAFETY: cleaning up after a failed assertion.
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    assert!(survivors.is_empty(), "left running: {survivors:?}");
}

#[test]
fn every_http_error_is_a_problem_and_odd_requests_are_refused() {
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    let problem = |response: &str, status: &str| {
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{response}"
        );
        assert!(
            response
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{response}"
        );
        let body = response.split_once("\r\n\r\n").unwrap().1;
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["status"].to_string(), status, "{body}");
    };
    let request = |head: &str, body: &str| {
        raw(
            daemon.port,
            &format!(
                "{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    problem(
        &request("GET /nowhere HTTP/1.1\r\nHost: localhost", ""),
        "404",
    );
    problem(
        &request("PUT /v1/jobs HTTP/1.1\r\nHost: localhost", ""),
        "405",
    );
    let big = "x".repeat(2 << 20);
    problem(
        &request(
            "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/toml",
            &big,
        ),
        "413",
    );
    problem(&request("GET /healthz HTTP/1.1", ""), "400");
    let cross_site = request(
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nContent-Type: application/toml",
        TINY,
    );
    problem(&cross_site, "403");
    assert!(std::fs::read_dir(&jobs).unwrap().next().is_none());
}

#[test]
fn command_jobs_from_writable_places_or_running_writable_scripts_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (root, jobs, state) = folders();
    // A world-writable folder outside the jobs folder, and a 0644 spec in
    // it reached through a symbolic link.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let command = |script: &str, workdir: &Path| {
        format!(
            "runner = \"command\"\ncommand = [\"python3\", \"{script}\"]\nworkdir = {:?}\n[optimizer]\nkind = \"sgd\"\n",
            workdir.display().to_string()
        )
    };
    let scripts = root.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(scripts.join("train.py"), "print('hi')\n").unwrap();
    std::fs::write(scripts.join("open.py"), "print('hi')\n").unwrap();
    std::fs::set_permissions(
        scripts.join("open.py"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    std::fs::write(open.join("linked.toml"), command("train.py", &scripts)).unwrap();
    std::fs::set_permissions(
        open.join("linked.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink(open.join("linked.toml"), jobs.join("linked.toml")).unwrap();
    drop_spec(&jobs, "script.toml", &command("open.py", &scripts));
    drop_spec(&jobs, "fine.toml", &command("train.py", &scripts));
    let daemon = Daemon::start(&jobs, &state, 0);
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("linked") == "invalid" && d.job_state("script") == "invalid"
    });
    let linked = first_error(&job(&daemon, "linked"));
    assert!(
        linked.contains("writable by everyone") && linked.contains("open"),
        "{linked}"
    );
    let script = first_error(&job(&daemon, "script"));
    assert!(script.contains("open.py"), "{script}");
    assert_ne!(job(&daemon, "fine")["state"], "invalid");
}

#[test]
fn slow_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    let closed_within = |prelude: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .unwrap();
        stream.write_all(prelude.as_bytes()).unwrap();
        let started = Instant::now();
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        (
            started.elapsed(),
            String::from_utf8_lossy(&sink).into_owned(),
        )
    };
    // Half a request head, then nothing; a connection never used; a body
    // promised and never sent.
    let (slow_head, _) = closed_within("GET /healthz HTTP/1.1\r\nHost: localhost\r\n");
    assert!(slow_head < Duration::from_secs(15), "{slow_head:?}");
    let (idle, _) = closed_within("");
    assert!(idle < Duration::from_secs(15), "{idle:?}");
    let (slow_body, answer) = closed_within(
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/toml\r\nContent-Length: 100\r\n\r\nname",
    );
    assert!(slow_body < Duration::from_secs(35), "{slow_body:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // And the daemon serves others throughout.
    assert_eq!(daemon.get("/healthz").0, 200);
}

#[test]
fn a_newline_in_a_file_name_cannot_forge_a_log_line() {
    let (root, jobs, state) = folders();
    let log_path = root.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    std::fs::write(
        jobs.join("evil\nFORGED job done, batch 1\n.toml"),
        "{{{ not a spec",
    )
    .unwrap();
    let port = 0;
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchd"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", "tests/fixtures/empty-config.toml")
        .args(["serve", "--jobs-dir"])
        .arg(&jobs)
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let logged = |needle: &str| std::fs::read_to_string(&log_path).unwrap().contains(needle);
    while !logged("is invalid") && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Removing the file logs its name a second time.
    std::fs::remove_file(jobs.join("evil\nFORGED job done, batch 1\n.toml")).unwrap();
    while !logged("retired") && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("is invalid") && text.contains("retired"),
        "{text}"
    );
    assert!(text.contains("evil\\nFORGED"), "{text}");
    for line in text.lines() {
        assert!(
            !line.starts_with("FORGED"),
            "a forged line: {line:?} in\n{text}"
        );
        assert!(
            !line.trim().is_empty() && !line.starts_with(".toml"),
            "{line:?} in\n{text}"
        );
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    use std::io::{Read, Write};
    let (_root, jobs, state) = folders();
    let daemon = Daemon::start(&jobs, &state, 0);
    // Far more pipelined responses than the socket buffers hold.
    const REQUESTS: usize = 20_000;
    let stream = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(REQUESTS);
        // Blocks once the daemon stops reading; fails once it hangs up.
        let _ = writer.write_all(request.as_bytes());
    });
    std::thread::sleep(Duration::from_secs(40));
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answers = Vec::new();
    let ended = reader.read_to_end(&mut answers);
    let served = String::from_utf8_lossy(&answers)
        .matches("HTTP/1.1 200")
        .count();
    // The daemon gave up on the connection: the stream ended (or was
    // reset) before all the answers came.
    assert!(served < REQUESTS, "{served} answers, {ended:?}");
    assert!(
        ended.is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "{ended:?} after {served} answers"
    );
    assert_eq!(daemon.get("/healthz").0, 200);
}
