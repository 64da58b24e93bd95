//! The pages: the index of all jobs and one job's report.

use std::fmt::Write;

use super::charts::charts;
use super::html::{escape, utc};
use super::{JobView, REFRESH_SECONDS};
use crate::job::JobState;
use crate::search::{Phase, Recommendation};
use crate::state::RunRecord;
use crate::units::ByteSize;

const STYLE: &str = r#"
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1340px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: .3rem 0; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
nav a { color: #555; } a { color: #1f5fa0; }
.state { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600; background: #eee; }
.state-done { background: #dff3df; } .state-running, .state-queued { background: #fff2cc; } .state-failed, .state-invalid { background: #f9d6d5; }
table { border-collapse: collapse; margin: .5rem 0; } th, td { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.summary td:first-child { color: #555; white-space: nowrap; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 1rem; }
figure { margin: 0; } figcaption { color: #555; font-size: .9rem; max-width: 640px; }
svg.chart { max-width: 100%; height: auto; background: #fff; }
svg .chart-title { font-weight: 600; font-size: 14px; } svg .tick, svg .legend-label, svg .rule-label { font-size: 11px; fill: #444; }
svg .axis-label { font-size: 12px; fill: #333; } svg .chart-empty { font-size: 13px; fill: #777; }
.trials td { font-size: .85rem; } .reason { color: #8a1f1f; font-size: .8rem; }
.partial { background: #fff2cc; padding: .5rem .8rem; border-radius: .3rem; }
@media print { body { max-width: none; padding: 0; } nav, .live-note { display: none; } .charts { display: block; } figure { break-inside: avoid; margin-bottom: 1rem; } h2 { break-after: avoid; } }
"#;

fn head(title: &str, live: bool) -> String {
    let refresh = if live {
        format!(r#"<meta http-equiv="refresh" content="{REFRESH_SECONDS}">"#)
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}<title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

fn fmt_lr(lr: Option<f64>) -> String {
    lr.filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.3e}"))
}

fn fmt_bytes(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| ByteSize(b).to_string())
}

fn fmt_speed(speed: Option<f64>) -> String {
    speed
        .filter(|v| v.is_finite())
        .map_or("-".into(), |v| format!("{v:.0}"))
}

/// The index page: every job with its state and headline numbers.
pub fn index_page(jobs: &[JobView]) -> String {
    let live = jobs.iter().any(JobView::live);
    let mut html = head("batchd jobs", live);
    let _ = write!(
        html,
        "<h1>batchd jobs</h1><p>{} job(s). Each page shows the recommendation and its evidence.{}</p>",
        jobs.len(),
        if live {
            format!(" <span class=\"live-note\">Refreshing every {REFRESH_SECONDS} s while jobs run.</span>")
        } else {
            String::new()
        }
    );
    html.push_str("<table class=\"jobs\"><thead><tr><th>job</th><th>state</th><th>device</th><th class=\"num\">batch size</th><th class=\"num\">learning rate</th><th class=\"num\">max fit</th><th class=\"num\">trials</th></tr></thead><tbody>");
    for job in jobs {
        let rec = job.recommendation;
        let _ = write!(
            html,
            "<tr><td><a href=\"/jobs/{name}\">{name}</a></td><td><span class=\"state state-{state}\">{state}</span>{phase}</td><td>{device}</td><td class=\"num\">{batch}</td><td class=\"num\">{lr}</td><td class=\"num\">{max_fit}</td><td class=\"num\">{trials}</td></tr>",
            name = escape(job.name),
            state = job.state,
            phase = job
                .phase
                .filter(|_| job.state == JobState::Running)
                .map(|p| format!(" {p}"))
                .unwrap_or_default(),
            device = job.device.map_or_else(|| "-".to_string(), |d| d.to_string()),
            batch = rec.map_or("-".into(), |r| r.batch_size.to_string()),
            lr = fmt_lr(rec.and_then(|r| r.lr.learning_rate)),
            max_fit = rec.map_or("-".into(), |r| r.max_fit_batch_size().to_string()),
            trials = rec.map_or(job.trials_done, |r| r.evidence.trials.len()),
        );
    }
    if jobs.is_empty() {
        html.push_str("<tr><td colspan=\"7\">No jobs yet: drop a spec into the jobs folder or POST one to /v1/jobs.</td></tr>");
    }
    html.push_str("</tbody></table></body></html>\n");
    html
}

/// A job's page. `nav` adds the link back to the index (the daemon's
/// pages; a report file written by `advise` stands alone).
pub fn job_page(job: &JobView, nav: bool) -> String {
    let live = job.live();
    let mut html = head(&format!("batchd: {}", job.name), live);
    if nav {
        html.push_str("<nav><a href=\"/\">all jobs</a></nav>");
    }
    let _ = write!(
        html,
        "<h1>{}</h1><p><span class=\"state state-{state}\">{state}</span>",
        escape(job.name),
        state = job.state
    );
    if let Some(device) = job.device {
        let _ = write!(html, " on {}", device);
    }
    if live {
        let _ = write!(
            html,
            " <span class=\"progress\">phase <b>{}</b>, {} trial(s) done</span> <span class=\"live-note\">(this page refreshes every {REFRESH_SECONDS} s)</span>",
            job.phase.map_or("waiting for a device", Phase::as_str),
            job.trials_done
        );
    }
    html.push_str("</p>");
    if let Some(error) = job.error {
        let _ = write!(html, "<p class=\"reason\">{}</p>", escape(error));
    }
    if !job.errors.is_empty() {
        html.push_str("<h2>Errors in the spec</h2><ul>");
        for (field, message) in &job.errors {
            let _ = write!(
                html,
                "<li><code>{}</code>: {}</li>",
                escape(field),
                escape(message)
            );
        }
        html.push_str("</ul>");
    }
    if let Some(rec) = job.recommendation {
        recommendation_sections(&mut html, rec);
    }
    runs_table(&mut html, job.history);
    html.push_str("</body></html>\n");
    html
}

pub(super) fn runs_table(html: &mut String, runs: &[RunRecord]) {
    if runs.is_empty() {
        return;
    }
    html.push_str("<h2>Runs</h2><table class=\"runs\"><thead><tr><th>started</th><th class=\"num\">seconds</th><th>device</th><th>outcome</th><th class=\"num\">trials</th><th class=\"num\">batch</th><th class=\"num\">lr</th></tr></thead><tbody>");
    for run in runs.iter().rev() {
        let seconds = run.finished_at_unix_s.map_or("-".into(), |end| {
            end.saturating_sub(run.started_at_unix_s).to_string()
        });
        let outcome = run.outcome.to_string();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"num\">{seconds}</td><td>{} ({})</td><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            utc(run.started_at_unix_s),
            run.device,
            escape(&run.device_model),
            escape(&outcome),
            run.error
                .as_deref()
                .map(|e| format!("<div class=\"reason\">{}</div>", escape(e)))
                .unwrap_or_default(),
            run.trials,
            run.batch_size.map_or("-".into(), |b| b.to_string()),
            fmt_lr(run.learning_rate),
        );
    }
    html.push_str("</tbody></table>");
}

fn recommendation_sections(html: &mut String, rec: &Recommendation) {
    if rec.partial {
        let _ = write!(
            html,
            "<p class=\"partial\">Partial answer: {}</p>",
            escape(
                rec.partial_reason
                    .as_deref()
                    .unwrap_or("the search stopped early")
            )
        );
    }
    html.push_str("<h2>Recommendation</h2><table class=\"summary\"><tbody>");
    let mut row = |label: &str, value: String| {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(label),
            value
        );
    };
    row(
        "batch size",
        format!(
            "<b>{}</b> per device, {} global over {} replica(s), {} accumulation step(s): {} per optimizer step",
            rec.batch_size,
            rec.global_batch_size,
            rec.world_size,
            rec.gradient_accumulation_steps,
            rec.effective_batch_size
        ),
    );
    let rule = rec.lr.rule.as_ref().map_or(String::new(), |r| {
        format!(
            " (lr(N) = {:.3e} &times; (N / {})<sup>{:.2}</sup>, rule {})",
            r.reference_lr,
            r.reference_batch,
            r.alpha,
            escape(&r.kind.to_string())
        )
    });
    row(
        "learning rate",
        format!("<b>{}</b>{rule}", fmt_lr(rec.lr.learning_rate)),
    );
    if let Some(warmup) = rec.schedule.warmup_steps {
        row("warm-up", format!("{warmup} steps"));
    }
    row(
        "precision",
        format!(
            "{} (measured {}): {}",
            escape(&rec.precision.recommended),
            escape(&rec.precision.measured),
            escape(&rec.precision.reason)
        ),
    );
    row(
        "expected peak memory",
        format!(
            "{} of a {} budget ({})",
            fmt_bytes(rec.memory.expected_peak_bytes),
            ByteSize(rec.memory_budget_bytes()),
            escape(&rec.memory.limit_source.to_string())
        ),
    );
    row(
        "expected throughput",
        format!(
            "{} samples/s",
            fmt_speed(rec.throughput.expected_samples_per_second)
        ),
    );
    row(
        "largest batch that fits",
        rec.max_fit_batch_size().to_string(),
    );
    row(
        "gradient noise scale",
        rec.evidence
            .gradient_noise
            .as_ref()
            .map_or("not measured".into(), |n| {
                format!(
                    "{} samples{}",
                    escape(&n.describe()),
                    if n.is_decisive() {
                        ""
                    } else {
                        " (too uncertain to decide on: the race decided)"
                    }
                )
            }),
    );
    if let Some((lo, hi)) = rec.lr.interval {
        row("LR within noise", format!("{lo:.2e} .. {hi:.2e}"));
    }
    if let Some(cap) = &rec.evidence.batch_cap {
        row(
            if cap.run.is_some() {
                "run cap"
            } else {
                "data cap"
            },
            format!(
                "{} ({}){}",
                cap.largest_batch,
                cap.run.as_ref().map_or_else(
                    || format!(
                        "{} training samples, at least {} updates per epoch",
                        cap.training_samples, cap.min_updates_per_epoch
                    ),
                    |run| format!(
                        "the real run's {} samples, at least {} updates per run",
                        run.run_samples, run.min_updates_per_run
                    )
                ),
                if cap.binding {
                    ": it, not memory, bounds the advice"
                } else {
                    ""
                }
            ),
        );
    }
    row(
        "search",
        format!(
            "{} trials in {:.0} s on {}, policy {}, objective {}, batchd {}",
            rec.evidence.trials.len(),
            rec.seconds,
            escape(&rec.device.to_string()),
            escape(&rec.policy),
            escape(&rec.objective.to_string()),
            escape(&rec.batchd_version)
        ),
    );
    html.push_str("</tbody></table><h2>Why</h2><ul class=\"rationale\">");
    for line in &rec.rationale {
        let _ = write!(html, "<li>{}</li>", escape(line));
    }
    html.push_str("</ul><h2>Evidence</h2><div class=\"charts\">");
    for (chart, caption) in charts(rec) {
        let _ = write!(
            html,
            "<figure>{}<figcaption>{}</figcaption></figure>",
            chart.render(),
            escape(caption)
        );
    }
    html.push_str("</div>");
    trials_table(html, rec);
}

fn trials_table(html: &mut String, rec: &Recommendation) {
    html.push_str("<h2>Trials</h2><table class=\"trials\"><thead><tr><th class=\"num\">#</th><th>phase</th><th class=\"num\">batch</th><th class=\"num\">lr</th><th>outcome</th><th class=\"num\">peak memory</th><th class=\"num\">samples/s</th><th class=\"num\">val loss</th><th class=\"num\">seconds</th></tr></thead><tbody>");
    for (i, t) in rec.evidence.trials.iter().enumerate() {
        let lr = match (t.learning_rate_start, t.learning_rate) {
            (Some(start), Some(end)) => format!("{start:.0e}..{end:.0e}"),
            (_, lr) => fmt_lr(lr),
        };
        let _ = write!(
            html,
            "<tr class=\"outcome-{outcome}\"><td class=\"num\">{n}</td><td>{phase}</td><td class=\"num\">{batch}</td><td class=\"num\">{lr}</td><td>{outcome_text}{reason}</td><td class=\"num\">{peak}</td><td class=\"num\">{speed}</td><td class=\"num\">{val}</td><td class=\"num\">{secs:.1}</td></tr>",
            n = i + 1,
            outcome = t.outcome.as_str(),
            outcome_text = t.outcome.as_str().replace('_', " "),
            phase = t.phase.as_str(),
            batch = t.batch_size,
            reason = t
                .reason
                .as_deref()
                .map(|r| format!("<div class=\"reason\">{}</div>", escape(r)))
                .unwrap_or_default(),
            peak = fmt_bytes(t.peak_memory_bytes),
            speed = fmt_speed(t.samples_per_second),
            val = t
                .validation_loss
                .filter(|v| v.is_finite())
                .map_or("-".into(), |v| format!("{v:.4}")),
            secs = t.seconds,
        );
    }
    html.push_str("</tbody></table>");
}
