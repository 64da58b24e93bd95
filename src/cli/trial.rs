//! `batchd trial`: one isolated trial from the command line.

use super::{foreground, load_with_overrides, Cli, CliError, TrialArgs};
use batchd::spec::{JobSpec, OptimizerSpec};
use batchd::trial::{BatchPhase, BatchSchedule, Outcome, TrialRequest, TrialResult, TrialRunner};
use batchd::units::{format_duration, ByteSize};

/// A sane first learning rate for a quick trial when the user gives none.
fn default_lr(spec: &JobSpec) -> f64 {
    match spec.optimizer {
        OptimizerSpec::Sgd { .. } => 0.05,
        OptimizerSpec::Adam(_) | OptimizerSpec::AdamW(_) => 1e-3,
    }
}

pub fn run(cli: &Cli, args: &TrialArgs) -> Result<(), CliError> {
    let (spec, choice, memory_limit) = load_with_overrides(cli, &args.run)?;
    if args.batch_size == 0 {
        return Err(CliError::Usage("--batch-size must be > 0".into()));
    }
    let steps = args.steps.unwrap_or(spec.policy.trials.throughput_steps);
    if steps == 0 {
        return Err(CliError::Usage("--steps must be > 0".into()));
    }
    let lr = args.lr.unwrap_or_else(|| default_lr(&spec));
    let (machine, runner, runtime) = foreground(cli, &args.run, false)?;
    let device = machine.resolve(choice);
    let mut request = TrialRequest::new(spec, device, args.batch_size, steps, lr);
    request.warmup_steps = request
        .spec
        .policy
        .trials
        .warmup_steps
        .min(steps.saturating_sub(1));
    request.memory_limit_bytes = memory_limit.map(ByteSize::bytes);
    request.record.validation_loss = args.validation;
    request.record.validation_samples = args.validation_samples;
    if let Some(text) = &args.batch_schedule {
        request.batch_schedule = Some(parse_batch_schedule(text)?);
    }

    let name = request.spec.name.clone();
    let result = runtime.block_on(runner.run(request));

    if args.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).map_err(anyhow::Error::from)?
        );
    } else {
        print!("{}", render(&name, &result));
    }
    match result.outcome {
        Outcome::Ok => Ok(()),
        Outcome::InvalidRequest => Err(CliError::Invalid(format!(
            "trial request is invalid: {}",
            result.reason.as_deref().unwrap_or("?")
        ))),
        other => Err(CliError::Other(anyhow::anyhow!("trial outcome: {other}"))),
    }
}

/// `FROM:BATCH:LR_FACTOR,...` as a schedule; the trial request checks the
/// phases' order and values, naming the phase.
fn parse_batch_schedule(text: &str) -> Result<BatchSchedule, CliError> {
    let phases = text
        .split(',')
        .map(|part| {
            let fields: Vec<&str> = part.trim().split(':').collect();
            let bad = || {
                CliError::Usage(format!(
                    "--batch-schedule: `{part}` is not FROM_SAMPLE:BATCH:LR_FACTOR"
                ))
            };
            let [from, batch, factor] = fields[..] else {
                return Err(bad());
            };
            Ok(BatchPhase {
                from_sample: from.parse().map_err(|_| bad())?,
                batch_size: batch.parse().map_err(|_| bad())?,
                lr_factor: factor.parse().map_err(|_| bad())?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BatchSchedule { phases })
}

/// The human-readable summary of a trial.
fn render(name: &str, result: &TrialResult) -> String {
    let mut out = format!("trial {name}: {}", result.outcome);
    if let Some(reason) = &result.reason {
        out.push_str(&format!(" ({reason})"));
    }
    out.push('\n');
    let precision = result
        .precision
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    out.push_str(&format!(
        "  device {}{} ({}, {precision}), batch {}, {}/{} steps",
        result.device,
        result
            .device_name
            .as_ref()
            .map_or_else(String::new, |name| format!(" ({name})")),
        result.backend,
        result.batch_size,
        result.steps_completed,
        result.steps
    ));
    if let Some(params) = result.parameter_count {
        out.push_str(&format!(", {params} parameters"));
    }
    out.push('\n');
    if let (Some(first), Some(last)) = (result.loss_first, result.loss_last) {
        out.push_str(&format!("  loss {first:.4} -> {last:.4}"));
        if let Some(valid) = result.validation_loss {
            out.push_str(&format!(", validation loss {valid:.4}"));
        }
        out.push('\n');
    }
    if let Some(speed) = result.samples_per_second {
        out.push_str(&format!("  throughput {speed:.0} samples/s"));
        if let Some(step) = result.step_seconds_median {
            out.push_str(&format!(" (median step {:.1} ms)", step * 1000.0));
        }
        if let Some(startup) = result.startup_seconds {
            out.push_str(&format!("; start-up {startup:.2}s"));
        }
        out.push('\n');
    }
    if let Some(peak) = result.peak_memory_bytes {
        out.push_str(&format!(
            "  peak memory {} ({})",
            ByteSize(peak),
            result.peak_memory_source.as_deref().unwrap_or("?")
        ));
        if let Some(limit) = result.memory_limit_bytes {
            out.push_str(&format!(", limit {}", ByteSize(limit)));
        }
        out.push('\n');
    }
    for warning in &result.warnings {
        out.push_str(&format!("  warning: {warning}\n"));
    }
    out.push_str(&format!(
        "  wall time {}\n",
        format_duration(std::time::Duration::from_secs_f64(result.wall_seconds))
    ));
    if result.outcome != Outcome::Ok && !result.stderr_tail.trim().is_empty() {
        out.push_str("  worker stderr (tail):\n");
        for line in result
            .stderr_tail
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}
