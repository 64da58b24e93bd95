//! The seven charts of a recommendation's evidence, built as SVG.

use super::svg::{
    Chart, Format, Point, Rule, Scale, Series, Style, BUDGET_COLOR, NOISE_COLOR, PALETTE,
};
use crate::search::Recommendation;
use crate::trial::Outcome;
use crate::units::ByteSize;

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

/// The seven charts of a recommendation, with their captions.
pub fn charts(rec: &Recommendation) -> Vec<(Chart, &'static str)> {
    vec![
        (memory_chart(rec), "Peak memory of every trial against its batch size, marked by outcome, with the memory budget and the affine memory model fitted to the max-fit trials. The ringed point is the largest batch that fits."),
        (throughput_chart(rec), "Training throughput against batch size: the measured curve and each trial's speed. The ringed point is the recommended batch."),
        (lr_chart(rec), "LR range tests (training loss over an exponential LR sweep, raw and smoothed) with the suggested LR, and the confirmation runs' validation losses at the LRs they tried."),
        (goodput_chart(rec), "Goodput (throughput x statistical efficiency from the gradient noise scale) against batch size; the ringed point is the recommendation."),
        (race_chart(rec), "The race: validation loss of every seed of every candidate batch, each trained for the same budget at the LR its rule gives, and the mean per candidate. The ringed point is the winner, the recommendation."),
        (training_chart(rec), "Training loss per step of each confirmation run (dashed: runs that did not finish cleanly)."),
        (ramp_chart(rec), "The batch over the run: the batch ramp derived from the noise scale's growth (its windows over training, with the fitted growth), against the constant recommended batch. It is recommended only when it beat the constant batch in their race; the caption line of the recommendation says how it fared."),
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
        .evidence
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
            p.highlight = Some(t.batch_size) == rec.memory.max_fit.batch_size
                && t.peak_memory_bytes == rec.memory.max_fit.peak_bytes;
            Some(p)
        })
        .collect();
    if let (Some(model), false) = (&rec.memory.max_fit.memory_model, trials.is_empty()) {
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
        value: rec.memory_budget_bytes() as f64,
        label: format!("budget {}", ByteSize(rec.memory_budget_bytes())),
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
        .throughput
        .curve
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
        .evidence
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
    for (i, test) in rec.evidence.lr_range_tests.iter().enumerate() {
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
        rec.evidence
            .lr_confirmations
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
                p.outcome = Some(run.outcome.as_str().to_string());
                p.highlight = rec.evidence.best_lrs.iter().any(|b| {
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
        .throughput
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
        .throughput
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
    let Some(race) = &rec.evidence.race else {
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
                p.outcome = Some(run.outcome.as_str().to_string());
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
    for (i, run) in rec.evidence.lr_confirmations.iter().enumerate() {
        let steps = crate::search::curve::steps_of(run.losses.len(), &run.loss_steps);
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
        line.dashed = run.outcome != Outcome::Ok;
        c.series.push(line);
    }
    c
}

fn ramp_chart(rec: &Recommendation) -> Chart {
    let mut c = chart(
        "ramp",
        "Batch and noise scale over training",
        "samples trained (per device)",
        "samples",
        "no batch ramp was tried (the policy gives it no budget share)",
    );
    c.x_scale = Scale::Linear;
    c.y_scale = Scale::Log;
    let Some(advice) = &rec.batch_schedule else {
        return c;
    };
    let end = advice
        .points
        .iter()
        .map(|p| p.0)
        .chain(advice.phases.last().map(|p| p.from_sample))
        .max()
        .unwrap_or(0) as f64
        * 1.25;
    if !advice.phases.is_empty() {
        // Steps: each phase's batch from its first sample to the next's.
        let mut steps = Vec::new();
        for (i, phase) in advice.phases.iter().enumerate() {
            let until = advice
                .phases
                .get(i + 1)
                .map_or(end, |next| next.from_sample as f64);
            let label = format!(
                "batch {} from sample {} (LR x {:.2})",
                phase.batch_size, phase.from_sample, phase.lr_factor
            );
            steps.push(Point::new(
                phase.from_sample as f64,
                phase.batch_size as f64,
                label.clone(),
            ));
            steps.push(Point::new(until, phase.batch_size as f64, label));
        }
        c.series
            .push(series("batch ramp", Style::Line, PALETTE[1], steps));
    }
    let points: Vec<Point> = advice
        .points
        .iter()
        .filter(|(s, b)| *s > 0 && b.is_finite() && *b > 0.0)
        .map(|&(s, b)| Point::new(s as f64, b, format!("noise scale {b:.0} at {s} samples")))
        .collect();
    if let (Some(growth), false) = (&advice.growth, points.is_empty()) {
        let low = growth.from_samples.max(1) as f64;
        let high = (growth.to_samples as f64 * 2.0).min(end.max(low * 1.01));
        let line = (0..=20)
            .map(|i| {
                let s = low + (high - low) * f64::from(i) / 20.0;
                Point::new(
                    s,
                    growth.at(s as u64),
                    format!(
                        "fitted: {:.3} x samples^{:.2}",
                        growth.scale, growth.exponent
                    ),
                )
            })
            .collect();
        let mut fitted = series("fitted growth", Style::Line, NOISE_COLOR, line);
        fitted.dashed = true;
        c.series.push(fitted);
    }
    c.series
        .push(series("noise scale", Style::Points, NOISE_COLOR, points));
    c.horizontal.push(Rule {
        value: rec.batch_size as f64,
        label: format!("constant batch {}", rec.batch_size),
        color: PALETTE[0],
    });
    c
}
