//! The readable, plain-text form of a recommendation (`batchd advise`,
//! `batchd show`).

use crate::search::Recommendation;
use crate::spec::JobSpec;
use crate::units::{format_duration, ByteSize};

fn opt<T>(value: Option<T>, f: impl Fn(T) -> String) -> String {
    value.map(f).unwrap_or_else(|| "-".into())
}

/// The readable report of a recommendation; `lr_for` adds the LR the
/// rule gives at that effective batch. The recommendation carries all it
/// shows (the spec's replica count included, as `world_size`): this is
/// [`advice`], kept with the spec for `batchd advise`'s callers.
pub fn recommendation(spec: &JobSpec, rec: &Recommendation, lr_for: Option<u64>) -> String {
    debug_assert_eq!(spec.training.world_size.max(1), rec.world_size.max(1));
    advice(rec, lr_for)
}

/// The readable report of a recommendation alone, as `batchd advise`
/// prints it: what `batchd show` prints for a recommendation the daemon
/// serves, whose spec it does not have.
pub fn advice(rec: &Recommendation, lr_for: Option<u64>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "batchd advice for {} (policy {}, objective {}) on {}: {} trials in {}{}\n\n",
        rec.job,
        rec.policy,
        rec.objective,
        rec.device,
        rec.evidence.trials.len(),
        format_duration(std::time::Duration::from_secs_f64(rec.seconds)),
        if rec.partial { " (PARTIAL)" } else { "" }
    ));
    if let Some(reason) = &rec.partial_reason {
        out.push_str(&format!("  partial: {reason}\n\n"));
    }
    let row = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("  {label:<22}{value}\n"))
    };
    row(
        &mut out,
        "batch size",
        format!(
            "{} per device, {} global over {} replica(s), {} accumulation step(s) -> {} per optimizer step",
            rec.batch_size, rec.global_batch_size, rec.world_size, rec.gradient_accumulation_steps, rec.effective_batch_size
        ),
    );
    row(
        &mut out,
        "learning rate",
        match (&rec.lr.learning_rate, &rec.lr.rule) {
            (Some(lr), Some(rule)) => format!(
                "{lr:.3e}  (lr(N) = {:.3e} x (N / {})^{:.2}; rule {}, measured alpha {}, textbook {})",
                rule.reference_lr,
                rule.reference_batch,
                rule.alpha,
                rule.kind,
                opt(rule.measured_alpha, |a| format!("{a:.2}")),
                rule.textbook_alpha
            ),
            _ => "- (not measured)".into(),
        },
    );
    if let Some((lo, hi)) = rec.lr.interval {
        row(&mut out, "lr within noise", format!("{lo:.2e} .. {hi:.2e}"));
    }
    {
        let schedule = &rec.schedule;
        row(
            &mut out,
            "lr schedule",
            format!(
                "linear warm-up, then {} decay to {:.0}% of the peak LR",
                schedule.decay,
                schedule.final_lr_fraction * 100.0
            ),
        );
    }
    if let (Some(n), Some(lr)) = (lr_for, lr_for.and_then(|n| rec.learning_rate_for(n))) {
        row(&mut out, &format!("lr at batch {n}"), format!("{lr:.3e}"));
    }
    row(
        &mut out,
        "warm-up",
        match (
            rec.schedule.warmup_steps,
            rec.schedule.total_updates,
            rec.schedule.updates_per_epoch,
        ) {
            (Some(w), Some(t), Some(u)) => format!(
                "{w} steps of {t} updates ({u} per epoch over {} samples)",
                rec.schedule.dataset_size.unwrap_or(0)
            ),
            _ => "-".into(),
        },
    );
    row(
        &mut out,
        "largest fitting batch",
        format!(
            "{} (peak {}; budget {} = {} less {:.0}% headroom){}",
            rec.max_fit_batch_size(),
            opt(rec.memory.max_fit.peak_bytes, |b| ByteSize(b).to_string()),
            ByteSize(rec.memory_budget_bytes()),
            ByteSize(rec.memory.limit_bytes),
            rec.memory.headroom_fraction * 100.0,
            rec.memory
                .max_fit
                .first_failure
                .as_ref()
                .map(|(b, why)| format!("; {b} failed: {why}"))
                .unwrap_or_default()
        ),
    );
    if let Some(cap) = &rec.evidence.batch_cap {
        row(
            &mut out,
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
                        "{} training samples / {} updates per epoch at least",
                        cap.training_samples, cap.min_updates_per_epoch
                    ),
                    |run| format!(
                        "the real run's {} samples / {} updates per run at least",
                        run.run_samples, run.min_updates_per_run
                    )
                ),
                if cap.binding {
                    "; it, not memory, bounds the advice"
                } else {
                    ""
                }
            ),
        );
    }
    row(
        &mut out,
        "memory limit from",
        rec.memory.limit_source.to_string(),
    );
    row(
        &mut out,
        "expected peak memory",
        opt(rec.memory.expected_peak_bytes, |b| ByteSize(b).to_string()),
    );
    row(
        &mut out,
        "expected throughput",
        opt(rec.throughput.expected_samples_per_second, |s| {
            format!("{s:.0} samples/s")
        }),
    );
    row(
        &mut out,
        "gradient noise scale",
        opt(rec.evidence.gradient_noise.as_ref(), |n| {
            format!(
                "{} samples{}",
                n.describe(),
                if n.is_decisive() {
                    ""
                } else {
                    " (too uncertain to decide on: the race decided)"
                }
            )
        }),
    );
    row(
        &mut out,
        "precision",
        format!(
            "measured {}, recommended {}: {}",
            rec.precision.measured, rec.precision.recommended, rec.precision.reason
        ),
    );
    if rec.world_size > 1 {
        row(
            &mut out,
            "data parallel",
            format!("{} replicas", rec.world_size),
        );
    }
    out.push_str("\n  throughput curve (per device)\n");
    for point in &rec.throughput.curve {
        let goodput = rec
            .throughput
            .goodput_curve
            .iter()
            .find(|g| g.batch_size == point.batch_size)
            .map(|g| {
                format!(
                    "  goodput {:>12.0}  efficiency {:.2}",
                    g.goodput, g.efficiency
                )
            })
            .unwrap_or_default();
        let mark = if point.batch_size == rec.batch_size {
            " <- chosen"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {:>9}  {:>12.0} samples/s{goodput}{mark}\n",
            point.batch_size, point.samples_per_second
        ));
    }
    if let Some(race) = &rec.evidence.race {
        out.push_str(&format!("\n  race ({})\n", race.budget));
        for entry in &race.entries {
            let losses: Vec<String> = entry
                .runs
                .iter()
                .map(|r| opt(r.validation_loss, |l| format!("{l:.4}")))
                .collect();
            out.push_str(&format!(
                "    {:>9}  lr {:.2e}  {:>6} steps  mean {:>8}  spread {:>8}  seeds [{}]{}\n",
                entry.batch_size,
                entry.learning_rate,
                entry.steps,
                opt(entry.mean_loss(), |l| format!("{l:.4}")),
                opt(entry.spread(), |l| format!("{l:.4}")),
                losses.join(", "),
                if Some(entry.batch_size) == race.winner {
                    " <- winner"
                } else {
                    ""
                }
            ));
        }
    }
    out.push_str("\n  why\n");
    for line in &rec.rationale {
        out.push_str(&format!("    - {line}\n"));
    }
    out.push_str(&format!(
        "\n  trials\n    {:>3} {:<16}{:>9} {:>10} {:<15}{:>10}{:>13}{:>10}{:>8}\n",
        "#", "phase", "batch", "lr", "outcome", "peak", "samples/s", "val loss", "secs"
    ));
    for (i, t) in rec.evidence.trials.iter().enumerate() {
        let lr = match (t.learning_rate_start, t.learning_rate) {
            (Some(a), Some(b)) => format!("{a:.0e}..{b:.0e}"),
            (None, Some(b)) => format!("{b:.2e}"),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "    {:>3} {:<16}{:>9} {:>10} {:<15}{:>10}{:>13}{:>10}{:>8.1}\n",
            i + 1,
            t.phase.as_str(),
            t.batch_size,
            lr,
            t.outcome.as_str(),
            opt(t.peak_memory_bytes, |b| ByteSize(b).to_string()),
            opt(t.samples_per_second, |s| format!("{s:.0}")),
            opt(t.validation_loss, |v| format!("{v:.4}")),
            t.seconds
        ));
        if t.outcome != crate::trial::Outcome::Ok {
            if let Some(reason) = &t.reason {
                let short: String = reason.chars().take(110).collect();
                out.push_str(&format!("          {short}\n"));
            }
        }
    }
    out
}
