//! HTML reports: one page per job with its recommendation, the rationale,
//! six charts of the evidence (server-side SVG, no JavaScript) and the
//! table of trials; an index of all jobs. Served by the daemon at `/` and
//! `/jobs/{name}`, and written by `batchd advise --report FILE.html`.
//!
//! While a job is queued or running its page reloads itself every few
//! seconds (a `<meta http-equiv="refresh">`, which needs no script) and
//! shows the phase and the trials done.

pub mod svg;
pub mod text;

use std::fmt::Write;

use crate::job::JobState;
use crate::search::{Phase, Recommendation};
use crate::state::RunRecord;
use crate::units::ByteSize;
use svg::{Chart, Format, Point, Rule, Scale, Series, Style, BUDGET_COLOR, PALETTE};

/// Seconds between reloads of a live page.
pub const REFRESH_SECONDS: u32 = 3;

/// One job as a page shows it.
pub struct JobView<'a> {
    pub name: &'a str,
    pub state: JobState,
    pub phase: Option<Phase>,
    pub trials_done: usize,
    pub device: Option<&'a str>,
    pub error: Option<&'a str>,
    /// Validation errors of an invalid spec: `(field, message)`.
    pub errors: Vec<(String, String)>,
    pub recommendation: Option<&'a Recommendation>,
    /// Earlier runs of the job's search, oldest first.
    pub history: &'a [RunRecord],
}

impl JobView<'_> {
    fn live(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Running)
    }
}

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

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
            device = escape(job.device.unwrap_or("-")),
            batch = rec.map_or("-".into(), |r| r.batch_size.to_string()),
            lr = fmt_lr(rec.and_then(|r| r.learning_rate)),
            max_fit = rec.map_or("-".into(), |r| r.max_fit_batch_size.to_string()),
            trials = rec.map_or(job.trials_done, |r| r.trial_count),
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
        let _ = write!(html, " on {}", escape(device));
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

/// `2026-11-26 18:21:28 UTC` from Unix seconds (proleptic Gregorian).
pub fn utc(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        seconds / 3_600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn runs_table(html: &mut String, runs: &[RunRecord]) {
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
            escape(&run.device),
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
    let rule = rec.lr_rule.as_ref().map_or(String::new(), |r| {
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
        format!("<b>{}</b>{rule}", fmt_lr(rec.learning_rate)),
    );
    if let Some(warmup) = rec.warmup_steps {
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
            fmt_bytes(rec.expected_peak_memory_bytes),
            ByteSize(rec.memory_budget_bytes),
            escape(&rec.memory_limit_source)
        ),
    );
    row(
        "expected throughput",
        format!("{} samples/s", fmt_speed(rec.expected_samples_per_second)),
    );
    row(
        "largest batch that fits",
        rec.max_fit_batch_size.to_string(),
    );
    row(
        "gradient noise scale",
        rec.gradient_noise
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
    if let Some((lo, hi)) = rec.learning_rate_interval {
        row("LR within noise", format!("{lo:.2e} .. {hi:.2e}"));
    }
    if let Some(cap) = &rec.batch_cap {
        row(
            "data cap",
            format!(
                "{} ({} training samples, at least {} updates per epoch){}",
                cap.largest_batch,
                cap.training_samples,
                cap.min_updates_per_epoch,
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
            rec.trial_count,
            rec.seconds,
            escape(&rec.device),
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
    for (i, t) in rec.trials.iter().enumerate() {
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

fn chart(id: &'static str, title: &str, x_label: &str, y_label: &str, empty: &str) -> Chart {
    Chart {
        id,
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        x_scale: Scale::Log,
        y_scale: Scale::Linear,
        x_format: Format::Number,
        y_format: Format::Number,
        series: Vec::new(),
        horizontal: Vec::new(),
        vertical: Vec::new(),
        empty_note: empty.into(),
    }
}

fn series(name: &str, style: Style, color: &'static str, points: Vec<Point>) -> Series {
    Series {
        name: name.into(),
        style,
        color,
        dashed: false,
        points,
    }
}

/// Batch sizes spread evenly on a log axis, for drawing a model.
fn log_spaced(low: f64, high: f64, count: usize) -> Vec<f64> {
    (0..count)
        .map(|i| low * (high / low).powf(i as f64 / (count - 1) as f64))
        .collect()
}

/// The six charts of a recommendation, with their captions.
pub fn charts(rec: &Recommendation) -> Vec<(Chart, &'static str)> {
    vec![
        (memory_chart(rec), "Peak memory of every trial against its batch size, marked by outcome, with the memory budget and the affine memory model fitted to the max-fit trials. The ringed point is the largest batch that fits."),
        (throughput_chart(rec), "Training throughput against batch size: the measured curve and each trial's speed. The ringed point is the recommended batch."),
        (lr_chart(rec), "LR range tests (training loss over an exponential LR sweep, raw and smoothed) with the suggested LR, and the confirmation runs' validation losses at the LRs they tried."),
        (goodput_chart(rec), "Goodput (throughput x statistical efficiency from the gradient noise scale) against batch size; the ringed point is the recommendation."),
        (race_chart(rec), "The race: validation loss of every seed of every candidate batch, each trained for the same budget at the LR its rule gives, and the mean per candidate. The ringed point is the winner, the recommendation."),
        (training_chart(rec), "Training loss per step of each confirmation run (dashed: runs that did not finish cleanly)."),
    ]
}

fn memory_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "memory",
        "Peak memory vs batch size",
        "batch size (per device)",
        "peak memory",
        "no trial reported its memory",
    );
    c.y_format = Format::Bytes;
    let trials: Vec<Point> = rec
        .trials
        .iter()
        .filter_map(|t| {
            let peak = t.peak_memory_bytes? as f64;
            let mut p = Point::new(
                t.batch_size as f64,
                peak,
                format!(
                    "{} batch {}: peak {}, {}",
                    t.phase.as_str(),
                    t.batch_size,
                    ByteSize(peak as u64),
                    t.outcome.as_str()
                ),
            );
            p.outcome = Some(t.outcome.as_str().to_string());
            p.highlight = Some(t.batch_size) == rec.max_fit.batch_size
                && t.peak_memory_bytes == rec.max_fit.peak_bytes;
            Some(p)
        })
        .collect();
    if let (Some(model), false) = (&rec.max_fit.memory_model, trials.is_empty()) {
        let low = trials.iter().map(|p| p.x).fold(f64::INFINITY, f64::min);
        let high = trials.iter().map(|p| p.x).fold(0.0, f64::max) * 1.5;
        let line = log_spaced(low.max(1.0), high.max(2.0), 40)
            .into_iter()
            .map(|b| {
                Point::new(
                    b,
                    model.predict(b as u64),
                    format!(
                        "model: {} + {} per sample",
                        ByteSize(model.fixed_bytes.max(0.0) as u64),
                        ByteSize(model.bytes_per_sample.max(0.0) as u64)
                    ),
                )
            })
            .collect();
        let mut fitted = series("fitted memory model", Style::Line, PALETTE[0], line);
        fitted.dashed = true;
        c.series.push(fitted);
    }
    c.series
        .push(series("trials", Style::Points, PALETTE[0], trials));
    c.horizontal.push(Rule {
        value: rec.memory_budget_bytes as f64,
        label: format!("budget {}", ByteSize(rec.memory_budget_bytes)),
        color: BUDGET_COLOR,
    });
    c
}

fn throughput_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "throughput",
        "Samples per second vs batch size",
        "batch size (per device)",
        "samples / s",
        "throughput was not measured",
    );
    let curve = rec
        .throughput_curve
        .iter()
        .map(|p| {
            let mut point = Point::new(
                p.batch_size as f64,
                p.samples_per_second,
                format!(
                    "batch {}: {:.0} samples/s",
                    p.batch_size, p.samples_per_second
                ),
            );
            point.highlight = p.batch_size == rec.batch_size;
            point
        })
        .collect();
    let trials = rec
        .trials
        .iter()
        .filter_map(|t| {
            let speed = t.samples_per_second?;
            let mut p = Point::new(
                t.batch_size as f64,
                speed,
                format!(
                    "{} batch {}: {speed:.0} samples/s, {}",
                    t.phase.as_str(),
                    t.batch_size,
                    t.outcome.as_str()
                ),
            );
            p.outcome = Some(t.outcome.as_str().to_string());
            Some(p)
        })
        .collect();
    c.series
        .push(series("throughput curve", Style::Line, PALETTE[0], curve));
    c.series
        .push(series("trials", Style::Points, PALETTE[1], trials));
    c
}

/// Points worth plotting from a sweep: up to where the loss ran away (past
/// 2.5x its start), so the interesting part keeps its scale.
fn before_runaway(xs: &[f64], ys: &[f64]) -> Vec<(f64, f64)> {
    let start = ys
        .iter()
        .copied()
        .find(|y| y.is_finite())
        .unwrap_or(f64::NAN);
    xs.iter()
        .zip(ys)
        .map(|(x, y)| (*x, *y))
        .take_while(|(_, y)| !(start.is_finite() && *y > 2.5 * start.abs().max(1e-9)))
        .collect()
}

fn lr_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "lr",
        "LR range test and confirmation runs",
        "learning rate",
        "loss",
        "no LR range test ran (time budget or no fitting batch)",
    );
    for (i, test) in rec.lr_range_tests.iter().enumerate() {
        let color = PALETTE[(2 * i) % PALETTE.len()];
        let raw = before_runaway(&test.learning_rates, &test.losses)
            .into_iter()
            .map(|(lr, loss)| Point::new(lr, loss, format!("lr {lr:.2e}: loss {loss:.4}")))
            .collect();
        c.series.push(series(
            &format!("sweep at batch {}", test.batch_size),
            Style::Line,
            color,
            raw,
        ));
        let smooth = before_runaway(&test.learning_rates, &test.smoothed)
            .into_iter()
            .map(|(lr, loss)| Point::new(lr, loss, format!("smoothed at lr {lr:.2e}: {loss:.4}")))
            .collect();
        let mut smoothed = series(
            &format!("smoothed, batch {}", test.batch_size),
            Style::Line,
            PALETTE[(2 * i + 1) % PALETTE.len()],
            smooth,
        );
        smoothed.dashed = true;
        c.series.push(smoothed);
        c.vertical.push(Rule {
            value: test.suggestion,
            label: format!("suggested {:.1e}", test.suggestion),
            color: "#444444",
        });
    }
    let confirmations =
        rec.lr_confirmations
            .iter()
            .map(|run| {
                // A run without a validation loss is drawn at its last
                // training loss, so its failure still shows.
                let y = run
                    .validation_loss
                    .or_else(|| run.losses.iter().rev().copied().find(|l| l.is_finite()))
                    .unwrap_or(f64::NAN);
                let mut p = Point::new(
                    run.learning_rate,
                    y,
                    format!(
                        "batch {} at lr {:.2e}: {} ({})",
                        run.batch_size,
                        run.learning_rate,
                        run.validation_loss
                            .map_or("no validation loss".into(), |v| format!(
                                "validation loss {v:.4}"
                            )),
                        run.outcome
                    ),
                );
                p.outcome = Some(run.outcome.clone());
                p.highlight = rec.best_lrs.iter().any(|b| {
                    b.batch_size == run.batch_size && b.best_tested_lr == run.learning_rate
                });
                p
            })
            .collect();
    c.series.push(series(
        "confirmation runs (validation loss)",
        Style::Points,
        PALETTE[3],
        confirmations,
    ));
    c
}

fn goodput_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "goodput",
        "Goodput vs batch size",
        "batch size (per device)",
        "samples / s of progress",
        "goodput needs the throughput curve and the noise scale",
    );
    let goodput = rec
        .goodput_curve
        .iter()
        .map(|g| {
            let mut p = Point::new(
                g.batch_size as f64,
                g.goodput,
                format!(
                    "batch {}: goodput {:.0} = {:.0} samples/s x efficiency {:.2}",
                    g.batch_size, g.goodput, g.samples_per_second, g.efficiency
                ),
            );
            p.highlight = g.batch_size == rec.batch_size;
            p
        })
        .collect();
    let throughput = rec
        .goodput_curve
        .iter()
        .map(|g| {
            Point::new(
                g.batch_size as f64,
                g.samples_per_second,
                format!(
                    "batch {}: {:.0} samples/s",
                    g.batch_size, g.samples_per_second
                ),
            )
        })
        .collect();
    let mut raw = series("throughput", Style::Line, "#999999", throughput);
    raw.dashed = true;
    c.series.push(raw);
    c.series
        .push(series("goodput", Style::Line, PALETTE[2], goodput));
    c
}

fn race_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "race",
        "The race: validation loss per candidate batch",
        "batch size (per device)",
        "validation loss",
        "no race was run (no LR could be confirmed)",
    );
    let Some(race) = &rec.race else {
        return c;
    };
    let runs: Vec<Point> = race
        .entries
        .iter()
        .flat_map(|entry| {
            entry.runs.iter().filter_map(move |run| {
                let loss = run.validation_loss.filter(|l| l.is_finite())?;
                let mut p = Point::new(
                    entry.batch_size as f64,
                    loss,
                    format!(
                        "batch {} lr {:.2e} seed {}: {loss:.4} after {} steps",
                        entry.batch_size, entry.learning_rate, run.seed, entry.steps
                    ),
                );
                p.outcome = Some(run.outcome.clone());
                Some(p)
            })
        })
        .collect();
    let means: Vec<Point> = race
        .entries
        .iter()
        .filter_map(|entry| {
            let mean = entry.mean_loss()?;
            let mut p = Point::new(
                entry.batch_size as f64,
                mean,
                format!(
                    "batch {}: mean {mean:.4} over {} seeds (spread {})",
                    entry.batch_size,
                    entry.runs.len(),
                    entry
                        .spread()
                        .map_or("n/a".to_string(), |s| format!("{s:.4}"))
                ),
            );
            p.highlight = race.winner == Some(entry.batch_size);
            Some(p)
        })
        .collect();
    c.series
        .push(series("seeds", Style::Points, PALETTE[0], runs));
    c.series
        .push(series("mean", Style::Line, PALETTE[1], means));
    c
}

fn training_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "training",
        "Training curves of the confirmation runs",
        "step",
        "training loss",
        "no confirmation run recorded its losses",
    );
    c.x_scale = Scale::Linear;
    for (i, run) in rec.lr_confirmations.iter().enumerate() {
        let steps: Vec<f64> = (0..run.losses.len()).map(|s| s as f64).collect();
        let points = before_runaway(&steps, &run.losses)
            .into_iter()
            .map(|(step, loss)| {
                Point::new(
                    step,
                    loss,
                    format!(
                        "batch {} lr {:.2e}, step {step}: {loss:.4}",
                        run.batch_size, run.learning_rate
                    ),
                )
            })
            .collect();
        let mut line = series(
            &format!("batch {} lr {:.1e}", run.batch_size, run.learning_rate),
            Style::Line,
            PALETTE[i % PALETTE.len()],
            points,
        );
        line.dashed = run.outcome != "ok";
        c.series.push(line);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_717_289), "2026-11-26 18:21:29 UTC");
    }

    #[test]
    fn runs_are_listed_newest_first() {
        let mut done = RunRecord::started("h", "cpu".into(), "cpu");
        done.started_at_unix_s = 100;
        done.finished_at_unix_s = Some(130);
        done.outcome = crate::state::RunOutcome::Done;
        done.batch_size = Some(64);
        let mut failed = done.clone();
        failed.started_at_unix_s = 200;
        failed.outcome = crate::state::RunOutcome::Failed;
        failed.error = Some("no <memory>".into());
        let mut html = String::new();
        runs_table(&mut html, &[done, failed]);
        let failed_at = html.find("failed").unwrap();
        assert!(failed_at < html.find(">done<").unwrap());
        assert!(html.contains("no &lt;memory&gt;"));
        assert!(html.contains("<td class=\"num\">30</td>"));
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn a_live_job_page_refreshes_and_shows_progress() {
        let view = JobView {
            name: "mlp<1>",
            state: JobState::Running,
            phase: Some(Phase::MaxFit),
            trials_done: 3,
            device: Some("cpu"),
            error: None,
            errors: Vec::new(),
            recommendation: None,
            history: &[],
        };
        let html = job_page(&view, true);
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("phase <b>max_fit</b>, 3 trial(s) done"));
        assert!(html.contains("mlp&lt;1&gt;"));
        let done = JobView {
            state: JobState::Done,
            ..view
        };
        assert!(!job_page(&done, true).contains("http-equiv"));
        let index = index_page(&[done]);
        assert!(index.contains("href=\"/jobs/mlp&lt;1&gt;\""));
    }
}

#[cfg(test)]
mod full_report_tests {
    use super::*;
    use crate::policy::PolicySet;
    use crate::search::tests::FakeRunner;
    use crate::search::{advise, SearchContext};
    use crate::spec::{parse_spec, SpecOrigin};
    use crate::trial::TrialDevice;
    use crate::validation::Syntax;

    #[tokio::test]
    async fn a_finished_search_renders_six_charts_with_data_and_no_nan() {
        let text = "[model]\nkind = \"mlp\"\ninput_size = 32\nhidden = [64]\nclasses = 4\n[data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n[search]\nmax_batch = 1048576\n";
        let origin = SpecOrigin {
            label: "r.toml".into(),
            default_name: Some("r".into()),
            base_dir: None,
        };
        let spec = parse_spec(text, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap();
        let context = SearchContext {
            device: TrialDevice::Cpu,
            memory_limit_bytes: 4 << 30,
            memory_limit_source: crate::machine::MemorySource::Given("test".into()),
        };
        let rec = advise(&spec, &context, &FakeRunner::new(), &|_| {})
            .await
            .unwrap();
        let html = job_page(
            &JobView {
                name: "r",
                state: JobState::Done,
                phase: None,
                trials_done: rec.trial_count,
                device: Some("cpu"),
                error: None,
                errors: Vec::new(),
                recommendation: Some(&rec),
                history: &[],
            },
            false,
        );
        assert_eq!(html.matches("<svg").count(), 6);
        for id in ["memory", "throughput", "lr", "goodput", "race", "training"] {
            assert!(
                html.contains(&format!("id=\"chart-{id}\"")),
                "no {id} chart"
            );
        }
        assert!(!html.contains("NaN"));
        assert!(
            !html.contains("class=\"chart-empty\""),
            "a chart had no data"
        );
        assert!(html.contains("class=\"chosen\""));
        assert!(html.contains(&format!("<b>{}</b> per device", rec.batch_size)));
        assert_eq!(
            html.matches("<tr class=\"outcome-").count(),
            rec.trials.len()
        );
        assert!(!html.contains("<nav>"));
    }
}
