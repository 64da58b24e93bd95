//! `batchd advise`: the whole search for one spec, in the foreground.

use super::{foreground, load_with_overrides, AdviseArgs, Cli, CliError};
use batchd::search::{advise, SearchError};

pub fn run(cli: &Cli, args: &AdviseArgs) -> Result<(), CliError> {
    let (spec, choice, limit) = load_with_overrides(cli, &args.run)?;
    let (machine, runner, runtime) = foreground(cli, &args.run, true)?;
    let device = machine.resolve(choice);
    let context = machine
        .search_context(device, limit)
        .map_err(anyhow::Error::from)?;

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let progress_bar = bar.clone();
    let on_progress = move |p: &batchd::search::Progress| {
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
                args.run.spec.display()
            )))
        }
        Err(error) => return Err(CliError::Other(anyhow::anyhow!("{error}"))),
    };
    if let Some(path) = &args.report {
        let page = batchd::report::job_page(
            &batchd::report::JobView {
                name: &spec.name,
                state: batchd::job::JobState::Done,
                phase: None,
                trials_done: recommendation.evidence.trials.len(),
                device: Some(recommendation.device),
                error: None,
                errors: Vec::new(),
                recommendation: Some(&recommendation),
                history: &[],
            },
            false,
        );
        batchd::atomic_file::write_atomically(path, page.as_bytes())
            .map_err(|e| CliError::Other(anyhow::anyhow!("--report {}: {e}", path.display())))?;
    }
    if args.run.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&recommendation).map_err(anyhow::Error::from)?
        );
    } else {
        print!(
            "{}",
            batchd::report::text::recommendation(&spec, &recommendation, args.lr_for)
        );
    }
    Ok(())
}
