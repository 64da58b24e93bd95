//! The client subcommands, which talk to a running daemon over its HTTP
//! API: `jobs` (with `--watch`), `show`, `submit`, `retune`, `rm` and `lr`.
//! With `--json` each prints the daemon's JSON answer as it came (`rm`,
//! whose answer is empty, prints `{"job": NAME, "removed": true}`; `jobs
//! --watch --json` prints one compact document per line, on every change).

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use serde_json::Value;

use super::client::{content_type_of, one_line, read_spec, segment, Client};
use super::{Cli, CliError, JobsArgs, LrArgs, NameArgs, ShowArgs, SubmitArgs};

/// How often `jobs --watch` asks the daemon.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// The longest error shown in the jobs table.
const ERROR_WIDTH: usize = 80;

/// `text` on stdout, flushed. A closed stdout (`batchd jobs | head -n1`)
/// is no failure: the reader has what it wanted, and the command ends
/// quietly with 0.
fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    output(out.write_all(text.as_bytes()).and_then(|()| out.flush()))
}

/// A write to stdout's outcome as the command's: a closed pipe is done,
/// any other failure an error.
fn output(outcome: std::io::Result<()>) -> Result<(), CliError> {
    match outcome {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(CliError::Other(anyhow::anyhow!(
            "cannot write to stdout: {e}"
        ))),
    }
}

/// The daemon's answer as it came, on its own line(s).
fn print_raw(body: &str) -> Result<(), CliError> {
    if body.ends_with('\n') {
        print(body)
    } else {
        print(&format!("{body}\n"))
    }
}

fn parse(body: &str, what: &str) -> Result<Value, CliError> {
    serde_json::from_str(body).map_err(|e| {
        CliError::Other(anyhow::anyhow!(
            "the daemon's answer to {what} is not JSON ({e}): {}",
            one_line(body, 200)
        ))
    })
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `batchd jobs [--watch]`.
pub fn jobs(cli: &Cli, args: &JobsArgs) -> Result<(), CliError> {
    let client = Client::new(cli, &args.client)?;
    let mut lrs = LrCache::default();
    if !args.watch {
        let body = client.get("/v1/jobs")?;
        if args.client.json {
            return print_raw(&body);
        }
        let list = parse(&body, "GET /v1/jobs")?;
        let jobs = job_list(&list);
        lrs.update(&client, &jobs)?;
        return print(&table(&jobs, &lrs));
    }
    watch(&client, args.client.json, &mut lrs)
}

/// `jobs --watch`: on a terminal the screen is redrawn every second; to a
/// pipe or file the table (or with `--json` the document, one line) is
/// written again only when it changes. Runs until interrupted, or until
/// stdout is closed (which ends it with 0 at the next write). Once the
/// daemon has answered, a failure is reported on stderr and retried.
fn watch(client: &Client, json: bool, lrs: &mut LrCache) -> Result<(), CliError> {
    let terminal = !json && std::io::stdout().is_terminal();
    let mut shown: Option<String> = None;
    let mut last_error: Option<String> = None;
    let mut answered = false;
    loop {
        let outcome = client.get("/v1/jobs").and_then(|body| {
            let list = parse(&body, "GET /v1/jobs")?;
            if json {
                return Ok(format!("{list}\n"));
            }
            let jobs = job_list(&list);
            lrs.update(client, &jobs)?;
            Ok(table(&jobs, lrs))
        });
        match outcome {
            Ok(view) => {
                answered = true;
                last_error = None;
                let mut out = std::io::stdout().lock();
                let written = if terminal {
                    write!(
                        out,
                        "\x1b[H\x1b[2J{}  (every {}s; Ctrl-C to stop)\n\n{view}",
                        client.base(),
                        WATCH_INTERVAL.as_secs()
                    )
                } else if shown.as_deref() != Some(view.as_str()) {
                    let separator = if shown.is_some() && !json { "\n" } else { "" };
                    write!(out, "{separator}{view}")
                } else {
                    Ok(())
                };
                if let Err(error) = written.and_then(|()| out.flush()) {
                    return output(Err(error));
                }
                shown = Some(view);
            }
            Err(error) if !answered => return Err(error),
            Err(error) => {
                let line = format!("batchd: {error} (retrying)");
                if last_error.as_deref() != Some(line.as_str()) {
                    if terminal {
                        let mut out = std::io::stdout().lock();
                        if let Err(error) =
                            writeln!(out, "\x1b[H\x1b[2J{line}").and_then(|()| out.flush())
                        {
                            return output(Err(error));
                        }
                        shown = None;
                    } else {
                        // A diagnostic that cannot be shown is no reason to stop.
                        let _ = writeln!(std::io::stderr().lock(), "{line}");
                    }
                    last_error = Some(line);
                }
            }
        }
        std::thread::sleep(WATCH_INTERVAL);
    }
}

fn job_list(list: &Value) -> Vec<Value> {
    list.get("jobs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The learning rates of finished jobs, fetched once per finished run.
#[derive(Default)]
struct LrCache {
    /// name -> (what identifies the run, its LR).
    known: HashMap<String, (String, Option<f64>)>,
}

impl LrCache {
    /// Keeps the LR of every job that is done now: from the job list when
    /// the daemon puts it there, else from the job's recommendation, read
    /// once. A job that is not done is forgotten (a retune is a new run).
    fn update(&mut self, client: &Client, jobs: &[Value]) -> Result<(), CliError> {
        let mut known = HashMap::new();
        for job in jobs {
            if text(job, "state") != "done" {
                continue;
            }
            let name = text(job, "name").to_string();
            let run = format!(
                "{}/{}/{}",
                text(job, "spec_hash"),
                text(job, "data_digest"),
                job.get("trials_done").and_then(Value::as_u64).unwrap_or(0)
            );
            let lr = if let Some(lr) = job.get("learning_rate") {
                lr.as_f64()
            } else {
                match self.known.remove(&name) {
                    Some((seen, lr)) if seen == run => lr,
                    _ => self.fetch(client, &name)?,
                }
            };
            known.insert(name, (run, lr));
        }
        self.known = known;
        Ok(())
    }

    /// The recommended LR of a job; none when the job changed meanwhile.
    fn fetch(&self, client: &Client, name: &str) -> Result<Option<f64>, CliError> {
        match client.get(&format!("/v1/jobs/{}/recommendation", segment(name))) {
            Ok(body) => Ok(serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|rec| rec.pointer("/lr/learning_rate").and_then(Value::as_f64))),
            Err(CliError::Refused(_) | CliError::Invalid(_)) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.known.get(name).and_then(|(_, lr)| *lr)
    }
}

/// The jobs table: name, state, phase (of a running job), trials, batch
/// (per device), the recommended LR and, for a failed or invalid job, why.
fn table(jobs: &[Value], lrs: &LrCache) -> String {
    let header = ["NAME", "STATE", "PHASE", "TRIALS", "BATCH", "LR", "ERROR"];
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|job| {
            let name = text(job, "name");
            let number = |key: &str| {
                job.get(key)
                    .and_then(Value::as_u64)
                    .map_or_else(|| "-".to_string(), |n| n.to_string())
            };
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    one_line(s, 40)
                }
            };
            [
                one_line(name, 60),
                or_dash(text(job, "state")),
                // The phase a finished search ended in says nothing.
                if text(job, "state") == "running" {
                    or_dash(text(job, "phase"))
                } else {
                    "-".to_string()
                },
                number("trials_done"),
                number("batch_size"),
                lrs.get(name)
                    .map_or_else(|| "-".to_string(), |lr| format!("{lr:.3e}")),
                error_summary(job),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no jobs\n".to_string();
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 7]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let numeric = (3..=5).contains(&i);
            let cell = if numeric {
                format!("{cell:>width$}")
            } else {
                format!("{cell:<width$}")
            };
            text.push_str(&cell);
            text.push_str("  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// Why a job failed, or its first validation error, shortened.
fn error_summary(job: &Value) -> String {
    match text(job, "state") {
        "failed" => {
            let error = text(job, "error");
            let first = error.lines().next().unwrap_or("");
            one_line(if first.is_empty() { "-" } else { first }, ERROR_WIDTH)
        }
        "invalid" => {
            let errors = job
                .get("errors")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let Some(first) = errors.first() else {
                return one_line(text(job, "error"), ERROR_WIDTH);
            };
            let field = text(first, "field");
            let message = text(first, "message");
            let first = if field.is_empty() {
                message.to_string()
            } else {
                format!("{field}: {message}")
            };
            let more = match errors.len() {
                1 => String::new(),
                n => format!(" (+{} more)", n - 1),
            };
            format!("{}{more}", one_line(&first, ERROR_WIDTH))
        }
        _ => String::new(),
    }
}

/// `batchd show NAME`: the recommendation as `advise` prints it.
pub fn show(cli: &Cli, args: &ShowArgs) -> Result<(), CliError> {
    let client = Client::new(cli, &args.client)?;
    let body = client.get(&format!("/v1/jobs/{}/recommendation", segment(&args.name)))?;
    if args.client.json {
        return print_raw(&body);
    }
    let recommendation: batchd::search::Recommendation =
        serde_json::from_str(&body).map_err(|e| {
            let version = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("schema_version").cloned())
                .map_or_else(|| "?".to_string(), |v| v.to_string());
            CliError::Other(anyhow::anyhow!(
                "the daemon's recommendation for `{}` (schema_version {version}) is not one this batchd reads: {e}; --json prints it as served",
                one_line(&args.name, 60)
            ))
        })?;
    print(&batchd::report::text::advice(&recommendation, args.lr_for))
}

/// A one-line account of a job the daemon answered with.
fn job_line(job: &Value) -> String {
    let name = one_line(text(job, "name"), 60);
    let state = text(job, "state");
    let hint = match state {
        "done" => format!("; `batchd show {name}` prints its recommendation"),
        "invalid" => format!(": {}", error_summary(job)),
        "failed" => format!(": {}", error_summary(job)),
        _ => "; `batchd jobs --watch` follows it".to_string(),
    };
    format!("job `{name}`: {state}{hint}")
}

/// `batchd submit FILE`.
pub fn submit(cli: &Cli, args: &SubmitArgs) -> Result<(), CliError> {
    let content_type = content_type_of(&args.file).ok_or_else(|| {
        CliError::Usage(format!(
            "{}: a spec file ends in .toml, .json, .yaml or .yml",
            args.file.display()
        ))
    })?;
    let spec = read_spec(&args.file)?;
    let client = Client::new(cli, &args.client)?;
    let body = client.post("/v1/jobs", Some((content_type, &spec)))?;
    if args.client.json {
        return print_raw(&body);
    }
    let job = parse(&body, "POST /v1/jobs")?;
    print(&format!("submitted {}\n", job_line(&job)))
}

/// `batchd retune NAME`.
pub fn retune(cli: &Cli, args: &NameArgs) -> Result<(), CliError> {
    let client = Client::new(cli, &args.client)?;
    let body = client.post(&format!("/v1/jobs/{}/retune", segment(&args.name)), None)?;
    if args.client.json {
        return print_raw(&body);
    }
    let job = parse(&body, "POST .../retune")?;
    print(&format!("retuning {}\n", job_line(&job)))
}

/// `batchd rm NAME`.
pub fn rm(cli: &Cli, args: &NameArgs) -> Result<(), CliError> {
    let client = Client::new(cli, &args.client)?;
    client.delete(&format!("/v1/jobs/{}", segment(&args.name)))?;
    if args.client.json {
        print(&format!(
            "{}\n",
            serde_json::json!({"job": args.name, "removed": true})
        ))
    } else {
        print(&format!(
            "removed job `{}` (its spec file is deleted; its recommendation stays in the state folder)\n",
            one_line(&args.name, 60)
        ))
    }
}

/// `batchd lr NAME --batch-size N`.
pub fn lr(cli: &Cli, args: &LrArgs) -> Result<(), CliError> {
    let client = Client::new(cli, &args.client)?;
    let body = client.get(&format!(
        "/v1/jobs/{}/recommendation?batch_size={}",
        segment(&args.name),
        args.batch_size
    ))?;
    if args.client.json {
        return print_raw(&body);
    }
    let answer = parse(&body, "GET .../recommendation?batch_size")?;
    let Some(lr) = answer.get("learning_rate").and_then(Value::as_f64) else {
        return Err(CliError::Other(anyhow::anyhow!(
            "the daemon's answer has no learning_rate: {}",
            one_line(&body, 200)
        )));
    };
    let rule = answer
        .get("lr_rule")
        .filter(|rule| rule.is_object())
        .map(|rule| {
            let number = |key: &str| rule.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
            format!(
                " (lr(N) = {:.3e} x (N / {})^{:.2}, rule {})",
                number("reference_lr"),
                rule.get("reference_batch")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
                number("alpha"),
                one_line(text(rule, "kind"), 20)
            )
        })
        .unwrap_or_default();
    print(&format!(
        "{lr:.3e} for `{}` at effective batch {}{rule}\n",
        one_line(&args.name, 60),
        args.batch_size
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_shows_each_job_on_one_line() {
        let jobs = vec![
            json!({"name": "tiny", "state": "done", "phase": null, "trials_done": 31,
                   "batch_size": 512, "error": null, "errors": []}),
            json!({"name": "run\nning", "state": "running", "phase": "max_fit",
                   "trials_done": 3, "batch_size": null, "error": null, "errors": []}),
            json!({"name": "bad", "state": "invalid", "phase": null, "trials_done": 0,
                   "batch_size": null, "error": null,
                   "errors": [{"field": "model.hidden[1]", "message": "must be > 0"},
                              {"field": "x", "message": "y"}]}),
            json!({"name": "f", "state": "failed", "trials_done": 4,
                   "error": "nothing fits\nsecond line"}),
        ];
        let mut lrs = LrCache::default();
        lrs.known
            .insert("tiny".into(), (String::new(), Some(0.00123)));
        let table = table(&jobs, &lrs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(
            lines[1].contains("done") && lines[1].contains("512"),
            "{table}"
        );
        assert!(lines[1].contains("1.230e-3"), "{table}");
        assert!(lines[2].starts_with("run\\nning") && lines[2].contains("max_fit"));
        assert!(
            lines[3].ends_with("model.hidden[1]: must be > 0 (+1 more)"),
            "{table}"
        );
        assert!(lines[4].ends_with("nothing fits"), "{table}");
        assert_eq!(super::table(&[], &lrs), "no jobs\n");
    }
}
