//! The client subcommands (`jobs`, `show`, `submit`, `retune`, `rm`,
//! `lr`) driven against the real daemon: the binary on a free loopback
//! port with temporary folders.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{drop_spec, run, Daemon, TINY};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `batchd ARGS` as a client of the daemon at `url`: no machine
/// configuration, no stray settings from the environment.
fn client(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_batchd"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BATCHD_CONFIG", repo("tests/fixtures/empty-config.toml"))
        .env("BATCHD_URL", url)
        .env_remove("BATCHD_TOKEN_FILE")
        .env_remove("BATCHD_LOG_FORMAT");
    command
}

/// A refusal: exit `code`, and one line on stderr starting with `start`.
fn assert_one_line(outcome: &(i32, String, String), code: i32, start: &str) {
    let (actual, stdout, stderr) = outcome;
    assert_eq!(*actual, code, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.starts_with(&format!("batchd: {start}")),
        "expected `batchd: {start}...`, got:\n{stderr}"
    );
}

fn url_of(daemon: &Daemon) -> String {
    format!("http://127.0.0.1:{}", daemon.port)
}

/// The names in `jobs`' table (its first column).
fn names_in(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_client_submits_lists_retunes_and_removes_jobs_and_refuses_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let daemon = Daemon::start(&jobs, &root.path().join("state"), 0);
    let url = url_of(&daemon);

    // Nothing yet.
    let (code, stdout, stderr) = run(client(&url).arg("jobs"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "no jobs\n");
    let (code, stdout, _) = run(client(&url).args(["jobs", "--json"]));
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["jobs"], serde_json::json!([]), "{stdout}");

    // An invalid spec: the daemon's 422 as one line naming every field, 64.
    let bad = root.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("name = \"bad\"\n{TINY}")
            .replace("hidden = [32]", "hidden = [-1]")
            .replace("kind = \"adam\"", "kind = \"adamm\""),
    )
    .unwrap();
    let outcome = run(client(&url).arg("submit").arg(&bad));
    assert_one_line(&outcome, 64, "422 Invalid job spec: 2 errors: ");
    assert!(
        outcome.2.contains("model.hidden[0]: ") && outcome.2.contains("optimizer.kind: "),
        "{}",
        outcome.2
    );
    // --json keeps the line (errors go to stderr) and prints nothing.
    let (code, stdout, _) = run(client(&url).args(["submit", "--json"]).arg(&bad));
    assert_eq!((code, stdout.as_str()), (64, ""));
    // A file that is no spec by its name: a usage error, nothing sent.
    let notes = root.path().join("notes.txt");
    std::fs::write(&notes, "x").unwrap();
    let outcome = run(client(&url).arg("submit").arg(&notes));
    assert_one_line(&outcome, 2, "");
    assert!(
        outcome.2.contains(".toml, .json, .yaml or .yml"),
        "{}",
        outcome.2
    );

    // A good spec, as YAML (the content type follows the extension).
    let good = root.path().join("posted.yaml");
    std::fs::write(
        &good,
        "name: posted\nmodel: {kind: mlp, input_size: 16, hidden: [32], classes: 4}\n\
         data: {kind: synthetic, samples: 2048}\noptimizer: {kind: adam}\n\
         search: {max_batch: 2048, memory_limit: 512MiB, time_budget: 90s}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run(client(&url).arg("submit").arg(&good));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("submitted job `posted`: "), "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    // Submitting it again conflicts: 409, exit 1.
    let outcome = run(client(&url).arg("submit").arg(&good));
    assert_one_line(&outcome, 1, "409 Job exists");

    // An invalid file in the jobs folder is listed with its first error.
    drop_spec(
        &jobs,
        "broken.toml",
        &TINY.replace("hidden = [32]", "hidden = [32, 0]"),
    );
    daemon.wait_for(Duration::from_secs(20), |d| {
        d.job_state("broken") == "invalid"
    });
    let (code, table, stderr) = run(client(&url).arg("jobs"));
    assert_eq!(code, 0, "{stderr}");
    assert!(table.starts_with("NAME"), "{table}");
    for column in ["STATE", "PHASE", "TRIALS", "BATCH", "LR", "ERROR"] {
        assert!(table.lines().next().unwrap().contains(column), "{table}");
    }
    assert_eq!(names_in(&table), ["broken", "posted"], "{table}");
    let broken = table.lines().find(|l| l.starts_with("broken")).unwrap();
    assert!(
        broken.contains("invalid") && broken.contains("model.hidden[1]: "),
        "{table}"
    );
    let (code, stdout, _) = run(client(&url).args(["jobs", "--json"]));
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{stdout}");

    // Not done yet: show and lr are refused with the daemon's 409.
    let outcome = run(client(&url).args(["show", "posted"]));
    assert_one_line(&outcome, 1, "409 ");
    let outcome = run(client(&url).args(["lr", "posted", "--batch-size", "64"]));
    assert_one_line(&outcome, 1, "409 ");
    let outcome = run(client(&url).args(["lr", "posted", "--batch-size", "0"]));
    assert_eq!(outcome.0, 2, "a batch of 0 is a usage error");
    // Names travel encoded: a name with a space and a slash reaches the
    // daemon whole, which knows no such job.
    let outcome = run(client(&url).args(["show", "no such/job"]));
    assert_one_line(&outcome, 1, "404 No such job");
    assert!(outcome.2.contains("no such/job"), "{}", outcome.2);

    // Retune: a queued or running job is left as it is; an invalid one
    // cannot be.
    let (code, stdout, stderr) = run(client(&url).args(["retune", "posted"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("retuning job `posted`: "), "{stdout}");
    let (code, stdout, _) = run(client(&url).args(["retune", "posted", "--json"]));
    assert_eq!(code, 0);
    let job: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(job["name"], "posted");
    let outcome = run(client(&url).args(["retune", "broken"]));
    assert_one_line(&outcome, 1, "409 Cannot retune");

    // jobs --watch to a pipe: the table, written again only on a change.
    let mut watch = client(&url)
        .args(["jobs", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let header = lines.next().unwrap().unwrap();
    assert!(header.starts_with("NAME"), "{header}");
    let first: Vec<String> = (0..2).map(|_| lines.next().unwrap().unwrap()).collect();
    assert!(first[0].starts_with("broken"), "{first:?}");
    assert!(first[1].starts_with("posted"), "{first:?}");
    let _ = watch.kill();
    let _ = watch.wait();
    // With --json: one document per line.
    let mut watch = client(&url)
        .args(["jobs", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let document: serde_json::Value =
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(document["jobs"].as_array().unwrap().len(), 2);
    let _ = watch.kill();
    let _ = watch.wait();

    // rm: gone from the list and from the folder; a second rm is a 404.
    let (code, stdout, stderr) = run(client(&url).args(["rm", "posted"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("removed job `posted`"), "{stdout}");
    assert!(!jobs.join("posted.yaml").exists());
    let (code, stdout, _) = run(client(&url).args(["rm", "broken", "--json"]));
    assert_eq!(code, 0);
    let removed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        removed,
        serde_json::json!({"job": "broken", "removed": true})
    );
    let outcome = run(client(&url).args(["rm", "posted"]));
    assert_one_line(&outcome, 1, "404 No such job");
    let (_, stdout, _) = run(client(&url).arg("jobs"));
    assert_eq!(stdout, "no jobs\n");
    assert!(daemon.stop().success());
}

#[test]
fn an_unreachable_daemon_exits_69_with_a_clear_message() {
    // A port nothing listens on.
    let port = common::free_port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [
        &["jobs"][..],
        &["jobs", "--json"],
        &["show", "x"],
        &["rm", "x"],
        &["lr", "x", "--batch-size", "8"],
        &["jobs", "--watch"],
    ] {
        let outcome = run(client(&url).args(args));
        assert_one_line(&outcome, 69, "cannot reach the daemon at ");
        assert!(outcome.2.contains(&url), "{args:?}: {}", outcome.2);
    }
    // The default address is the configuration's listen.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("batchd.toml");
    std::fs::write(&config, format!("listen = \"0.0.0.0:{port}\"\n")).unwrap();
    let mut command = client("");
    command
        .env_remove("BATCHD_URL")
        .arg("--config")
        .arg(&config);
    let outcome = run(command.arg("jobs"));
    assert_one_line(&outcome, 69, "cannot reach the daemon at ");
    assert!(
        outcome.2.contains(&format!("http://127.0.0.1:{port}")),
        "{}",
        outcome.2
    );
    // Only plain HTTP is spoken.
    let outcome = run(client("https://localhost:8477").arg("jobs"));
    assert_one_line(&outcome, 2, "--url https://");
}

#[test]
fn a_daemon_with_a_token_needs_it_from_the_client() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let config = common::config_with_token(root.path(), "s3cret");
    let daemon = Daemon::start_with(&jobs, &root.path().join("state"), 0, &config);
    let url = url_of(&daemon);
    let spec = root.path().join("posted.toml");
    std::fs::write(&spec, format!("name = \"posted\"\n{TINY}")).unwrap();

    // Without a token (the client's configuration has none): 401, exit 1.
    let outcome = run(client(&url).arg("submit").arg(&spec));
    assert_one_line(&outcome, 1, "401 Unauthorized: ");
    // A wrong one.
    let wrong = root.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let outcome = run(client(&url)
        .arg("submit")
        .arg(&spec)
        .arg("--token-file")
        .arg(&wrong));
    assert_one_line(&outcome, 1, "401 Unauthorized: ");
    // A token that cannot travel in a header (an inner newline, a
    // non-ASCII byte): a usage error that does not show it, nothing sent.
    for (name, text) in [
        ("two-lines", "tokpartA\ntokpartB\n"),
        ("accented", "tokpartA\u{e9}tokpartB"),
    ] {
        let bad = root.path().join(name);
        std::fs::write(&bad, text).unwrap();
        let outcome = run(client(&url)
            .arg("submit")
            .arg(&spec)
            .arg("--token-file")
            .arg(&bad));
        assert_one_line(&outcome, 2, "--token-file ");
        assert!(
            !outcome.2.contains("tokpart") && !outcome.1.contains("tokpart"),
            "{}",
            outcome.2
        );
    }
    // Too large to be a token.
    let big = root.path().join("big");
    std::fs::write(&big, "t".repeat(5000)).unwrap();
    let outcome = run(client(&url)
        .arg("submit")
        .arg(&spec)
        .arg("--token-file")
        .arg(&big));
    assert_one_line(&outcome, 2, "--token-file ");
    assert!(!outcome.2.contains("tttt"), "{}", outcome.2);
    // A configured token file that cannot be read: the 401 says so.
    let unreadable = root.path().join("client.toml");
    let bad_token = root.path().join("two-lines");
    std::fs::write(
        &unreadable,
        format!("api_token_file = {:?}\n", bad_token.display().to_string()),
    )
    .unwrap();
    let outcome = run(client(&url)
        .env("BATCHD_CONFIG", &unreadable)
        .arg("submit")
        .arg(&spec));
    assert_one_line(&outcome, 1, "401 Unauthorized: ");
    assert!(
        outcome.2.contains(&format!(
            "(could not read the configured api_token_file {}: ",
            bad_token.display()
        )) && outcome.2.trim_end().ends_with("; pass --token-file)"),
        "{}",
        outcome.2
    );
    assert!(!outcome.2.contains("tokpart"), "{}", outcome.2);
    // A token file that is not there: a usage error.
    let outcome = run(client(&url)
        .arg("submit")
        .arg(&spec)
        .arg("--token-file")
        .arg(root.path().join("missing")));
    assert_one_line(&outcome, 2, "--token-file ");
    // With --token-file: accepted. Reading needs no token.
    let token = root.path().join("token");
    let (code, stdout, stderr) = run(client(&url)
        .arg("submit")
        .arg(&spec)
        .arg("--token-file")
        .arg(&token));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("submitted job `posted`"), "{stdout}");
    let (code, table, _) = run(client(&url).arg("jobs"));
    assert_eq!(code, 0);
    assert_eq!(names_in(&table), ["posted"], "{table}");
    // BATCHD_TOKEN_FILE works the same.
    let (code, _, stderr) = run(client(&url)
        .env("BATCHD_TOKEN_FILE", &token)
        .args(["retune", "posted"]));
    assert_eq!(code, 0, "{stderr}");
    // And without either, the configuration's api_token_file (the same
    // configuration as the daemon's, as on a system install): sent to a
    // loopback daemon even when named with --url (a daemon elsewhere gets
    // only a --token-file; see the unit test of the decision).
    let (code, _, stderr) = run(client(&url)
        .env("BATCHD_CONFIG", &config)
        .env_remove("BATCHD_URL")
        .args(["retune", "posted", "--url", &url]));
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(client(&url)
        .env("BATCHD_CONFIG", &config)
        .args(["rm", "posted"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("removed job `posted`"), "{stdout}");
    assert!(daemon.stop().success());
}

/// `child` ends within `limit`; its status, or a failure (after killing
/// it) if it does not.
fn exits_within(child: &mut std::process::Child, limit: Duration, what: &str) -> i32 {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running {limit:?} after its stdout was closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_closed_stdout_ends_the_client_quietly() {
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    let daemon = Daemon::start(&jobs, &root.path().join("state"), 0);
    let url = url_of(&daemon);
    let submit = |name: &str| {
        let spec = root.path().join(format!("{name}.toml"));
        std::fs::write(&spec, format!("name = \"{name}\"\n{TINY}")).unwrap();
        let (code, _, stderr) = run(client(&url).arg("submit").arg(&spec));
        assert_eq!(code, 0, "{stderr}");
    };

    // `jobs --watch [--json] | head -n1`: once the reader is gone, the next
    // change ends the watch, with 0 and nothing on stderr.
    for (round, args) in [&["jobs", "--watch", "--json"][..], &["jobs", "--watch"]]
        .into_iter()
        .enumerate()
    {
        let mut watch = client(&url)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(watch.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(!first.is_empty(), "{args:?}");
        drop(lines);
        submit(&format!("job{round}"));
        let code = exits_within(&mut watch, Duration::from_secs(5), &format!("{args:?}"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }

    // The one-shot commands too: no panic (101) on a closed pipe.
    for args in [&["jobs"][..], &["jobs", "--json"]] {
        let mut command = client(&url);
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let code = exits_within(&mut child, Duration::from_secs(10), &format!("{args:?}"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
    assert!(daemon.stop().success());
}

#[test]
fn show_lr_and_jobs_report_a_tuned_job_as_advise_would() {
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let daemon = common::daemon_with_a_tuned_job(root.path(), &[]);
    eprintln!("tuned in {:?}", started.elapsed());
    let url = url_of(&daemon);
    let (status, body) = daemon.get("/v1/jobs/tiny/recommendation");
    assert_eq!(status, 200);
    let served: serde_json::Value = serde_json::from_str(&body).unwrap();
    let recommendation: batchd::search::Recommendation = serde_json::from_str(&body).unwrap();

    // show: exactly what advise prints for this recommendation.
    let (code, stdout, stderr) = run(client(&url).args(["show", "tiny"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        batchd::report::text::advice(&recommendation, None),
        "show prints what advise prints"
    );
    assert!(stdout.starts_with("batchd advice for tiny "), "{stdout}");
    assert!(stdout.contains("\n  why\n"), "{stdout}");
    let (code, stdout, _) = run(client(&url).args(["show", "tiny", "--lr-for", "1024"]));
    assert_eq!(code, 0);
    if recommendation.lr.rule.is_some() {
        assert!(stdout.contains("lr at batch 1024"), "{stdout}");
    }
    let (code, stdout, _) = run(client(&url).args(["show", "tiny", "--json"]));
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap(),
        served
    );

    // lr: the rule's LR at another batch, as the API gives it; or, with no
    // rule, the daemon's 409 on one line.
    let (status, answer) = daemon.json("/v1/jobs/tiny/recommendation?batch_size=4096");
    let outcome = run(client(&url).args(["lr", "tiny", "--batch-size", "4096"]));
    if status == 200 {
        let (code, stdout, stderr) = &outcome;
        assert_eq!(*code, 0, "{stderr}");
        let expected = format!("{:.3e}", answer["learning_rate"].as_f64().unwrap());
        assert!(
            stdout.starts_with(&format!("{expected} for `tiny` at effective batch 4096")),
            "{stdout}"
        );
        let (_, stdout, _) =
            run(client(&url).args(["lr", "tiny", "--batch-size", "4096", "--json"]));
        let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(json, answer);
    } else {
        assert_one_line(&outcome, 1, "409 No learning-rate rule");
    }

    // jobs: state, batch and the recommended LR.
    let (code, table, stderr) = run(client(&url).arg("jobs"));
    assert_eq!(code, 0, "{stderr}");
    let row = table
        .lines()
        .find(|l| l.starts_with("tiny "))
        .expect(&table);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "done", "{table}");
    assert_eq!(cells[2], "-", "no phase once done: {table}");
    let (_, job) = daemon.json("/v1/jobs/tiny");
    assert_eq!(cells[3], job["trials_done"].to_string(), "{table}");
    assert_eq!(cells[4], served["batch_size"].to_string(), "{table}");
    let lr = served["lr"]["learning_rate"]
        .as_f64()
        .map_or("-".to_string(), |lr| format!("{lr:.3e}"));
    assert_eq!(cells[5], lr, "{table}");
    assert!(daemon.stop().success());
}
