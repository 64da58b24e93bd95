//! `batchd advise`: the whole search for one spec, in the foreground.

use std::sync::Arc;

use crate::cli::{AdviseArgs, Cli, CliError};
use crate::gpu::{open_probe, GpuProbe, SystemMemory};
use crate::search::{advise, Recommendation, SearchContext, SearchError};
use crate::spec::JobSpec;
use crate::trial::{ProcessTrialRunner, RunnerOptions, TrialDevice};
use crate::trial_cli::{default_kernel_cache, load_with_overrides, resolve_device};
use crate::units::{format_duration, ByteSize};

/// Share of available host memory CPU trials may use without a limit.
const CPU_MEMORY_SHARE: f64 = 0.8;

/// The memory a search may use on `device`: the spec's (or flag's) limit,
/// capped by what is free. On a GPU, memory other processes hold (NVML)
/// comes out of the budget.
pub fn search_context(
    device: TrialDevice,
    limit: Option<ByteSize>,
    probe: Option<&dyn GpuProbe>,
) -> Result<SearchContext, String> {
    let (available, source) = match device {
        TrialDevice::Cpu => {
            let memory = SystemMemory::read().ok_or("cannot read /proc/meminfo")?;
            (
                (memory.available_bytes as f64 * CPU_MEMORY_SHARE) as u64,
                format!(
                    "{:.0}% of the {} of host memory available",
                    CPU_MEMORY_SHARE * 100.0,
                    ByteSize(memory.available_bytes)
                ),
            )
        }
        TrialDevice::Cuda(index) => {
            let gpu = probe
                .and_then(|p| p.snapshot().ok())
                .and_then(|s| s.gpus.into_iter().find(|g| g.index == index));
            match gpu {
                Some(gpu) => {
                    let others: u64 = gpu
                        .processes
                        .iter()
                        .filter_map(|p| p.used_memory_bytes)
                        .sum();
                    (
                        gpu.memory_free_bytes,
                        format!(
                            "free memory of cuda:{index} ({}, NVML): {} total, {} held by {} other process(es)",
                            gpu.name,
                            ByteSize(gpu.memory_total_bytes),
                            ByteSize(others.max(gpu.memory_used_bytes)),
                            gpu.processes.len()
                        ),
                    )
                }
                None => match limit {
                    Some(limit) => (
                        limit.bytes(),
                        "the spec's memory_limit (NVML unavailable)".into(),
                    ),
                    None => {
                        return Err(format!(
                        "cannot read cuda:{index}'s memory through NVML; set search.memory_limit"
                    ))
                    }
                },
            }
        }
    };
    let (bytes, source) = match limit {
        Some(limit) if limit.bytes() <= available => {
            (limit.bytes(), "the spec's memory_limit".to_string())
        }
        Some(limit) => (
            available,
            format!("{source} (below the spec's memory_limit of {limit})"),
        ),
        None => (available, source),
    };
    Ok(SearchContext {
        device,
        memory_limit_bytes: bytes,
        memory_limit_source: source,
    })
}

pub fn run(cli: &Cli, args: &AdviseArgs) -> Result<(), CliError> {
    let (spec, choice, limit) = load_with_overrides(
        cli,
        &args.spec,
        args.device.as_deref(),
        args.memory_limit.as_deref(),
    )?;
    let device = resolve_device(choice);
    let probe: Option<Arc<dyn GpuProbe>> = open_probe().ok().map(Arc::from);
    let context = search_context(device, limit, probe.as_deref())
        .map_err(|e| CliError::Other(anyhow::anyhow!(e)))?;

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let mut options = RunnerOptions::current_exe().map_err(anyhow::Error::from)?;
    options.gpu_probe = probe;
    options.kernel_cache_dir = args.kernel_cache.clone().or_else(default_kernel_cache);
    let runner = ProcessTrialRunner::new(options);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    let progress_bar = bar.clone();
    let on_progress = move |p: &crate::search::Progress| {
        progress_bar.set_message(format!(
            "{} trials | {}: {}",
            p.trials_done,
            p.phase.as_str(),
            p.message
        ));
    };
    let outcome = runtime.block_on(advise(&spec, &context, &runner, &on_progress));
    bar.finish_and_clear();
    let recommendation = match outcome {
        Ok(recommendation) => recommendation,
        Err(SearchError::InvalidRequest(reason)) => {
            return Err(CliError::Invalid(format!(
                "{}: {reason}",
                args.spec.display()
            )))
        }
        Err(error) => return Err(CliError::Other(anyhow::anyhow!("{error}"))),
    };
    if let Some(path) = &args.report {
        let page = crate::report::job_page(
            &crate::report::JobView {
                name: &spec.name,
                state: "done",
                phase: None,
                trials_done: recommendation.trial_count,
                device: Some(&recommendation.device),
                error: None,
                errors: Vec::new(),
                recommendation: Some(&recommendation),
                history: &[],
            },
            false,
        );
        crate::state::write_atomically(path, page.as_bytes())
            .map_err(|e| CliError::Other(anyhow::anyhow!("--report {}: {e}", path.display())))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&recommendation).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", render(&spec, &recommendation, args.lr_for));
    }
    Ok(())
}

fn opt<T>(value: Option<T>, f: impl Fn(T) -> String) -> String {
    value.map(f).unwrap_or_else(|| "-".into())
}

/// The readable report of a recommendation.
pub fn render(spec: &JobSpec, rec: &Recommendation, lr_for: Option<u64>) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "batchd advice for {} (policy {}, objective {}) on {}: {} trials in {}{}\n\n",
        rec.job,
        rec.policy,
        crate::policy::serde_plain(&rec.objective),
        rec.device,
        rec.trial_count,
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
        match (&rec.learning_rate, &rec.lr_rule) {
            (Some(lr), Some(rule)) => format!(
                "{lr:.3e}  (lr(N) = {:.3e} x (N / {})^{:.2}; rule {}, measured alpha {}, textbook {})",
                rule.reference_lr,
                rule.reference_batch,
                rule.alpha,
                crate::policy::serde_plain(&rule.kind),
                opt(rule.measured_alpha, |a| format!("{a:.2}")),
                rule.textbook_alpha
            ),
            _ => "- (not measured)".into(),
        },
    );
    if let Some((lo, hi)) = rec.learning_rate_interval {
        row(&mut out, "lr within noise", format!("{lo:.2e} .. {hi:.2e}"));
    }
    if let Some(schedule) = &rec.lr_schedule {
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
        match (rec.warmup_steps, rec.total_updates, rec.updates_per_epoch) {
            (Some(w), Some(t), Some(u)) => format!(
                "{w} steps of {t} updates ({u} per epoch over {} samples)",
                rec.dataset_size.unwrap_or(0)
            ),
            _ => "-".into(),
        },
    );
    row(
        &mut out,
        "largest fitting batch",
        format!(
            "{} (peak {}; budget {} = {} less {:.0}% headroom){}",
            rec.max_fit_batch_size,
            opt(rec.max_fit.peak_bytes, |b| ByteSize(b).to_string()),
            ByteSize(rec.memory_budget_bytes),
            ByteSize(rec.memory_limit_bytes),
            rec.memory_headroom_fraction * 100.0,
            rec.max_fit
                .first_failure
                .as_ref()
                .map(|(b, why)| format!("; {b} failed: {why}"))
                .unwrap_or_default()
        ),
    );
    if let Some(cap) = &rec.batch_cap {
        row(
            &mut out,
            "data cap",
            format!(
                "{} ({} training samples / {} updates per epoch at least){}",
                cap.largest_batch,
                cap.training_samples,
                cap.min_updates_per_epoch,
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
        rec.memory_limit_source.clone(),
    );
    row(
        &mut out,
        "expected peak memory",
        opt(rec.expected_peak_memory_bytes, |b| ByteSize(b).to_string()),
    );
    row(
        &mut out,
        "expected throughput",
        opt(rec.expected_samples_per_second, |s| {
            format!("{s:.0} samples/s")
        }),
    );
    row(
        &mut out,
        "gradient noise scale",
        opt(rec.gradient_noise.as_ref(), |n| {
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
    if spec.training.world_size > 1 {
        row(
            &mut out,
            "data parallel",
            format!("{} replicas", spec.training.world_size),
        );
    }
    out.push_str("\n  throughput curve (per device)\n");
    for point in &rec.throughput_curve {
        let goodput = rec
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
    if let Some(race) = &rec.race {
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
    for (i, t) in rec.trials.iter().enumerate() {
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
