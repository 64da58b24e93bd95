//! HTML reports: one page per job with its recommendation, the rationale,
//! six charts of the evidence (server-side SVG, no JavaScript) and the
//! table of trials; an index of all jobs. Served by the daemon at `/` and
//! `/jobs/{name}`, and written by `batchd advise --report FILE.html`.
//!
//! While a job is queued or running its page reloads itself every few
//! seconds (a `<meta http-equiv="refresh">`, which needs no script) and
//! shows the phase and the trials done.

mod charts;
mod html;
mod page;
pub mod svg;
pub mod text;

pub use charts::charts;
pub use html::{escape, utc};
pub use page::{index_page, job_page};

use crate::job::JobState;
use crate::machine::TrialDevice;
use crate::search::{Phase, Recommendation};
use crate::state::RunRecord;

/// Seconds between reloads of a live page.
pub const REFRESH_SECONDS: u32 = 3;

/// One job as a page shows it.
pub struct JobView<'a> {
    pub name: &'a str,
    pub state: JobState,
    pub phase: Option<Phase>,
    pub trials_done: usize,
    pub device: Option<TrialDevice>,
    pub error: Option<&'a str>,
    /// Validation errors of an invalid spec: `(field, message)`.
    pub errors: Vec<(String, String)>,
    pub recommendation: Option<&'a Recommendation>,
    /// Earlier runs of the job's search, oldest first.
    pub history: &'a [RunRecord],
}

impl JobView<'_> {
    fn live(&self) -> bool {
        matches!(
            self.state,
            JobState::Queued | JobState::Waiting | JobState::Running
        )
    }
}

#[cfg(test)]
mod tests {
    use super::page::runs_table;
    use super::*;

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_717_289), "2026-11-26 18:21:29 UTC");
    }

    #[test]
    fn runs_are_listed_newest_first() {
        let mut done = RunRecord::started("h", "", TrialDevice::Cpu, "cpu");
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
            device: Some(TrialDevice::Cpu),
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
    async fn a_finished_search_renders_seven_charts_with_data_and_no_nan() {
        // With a share for the batch ramp, so its chart has data too.
        let text = "[model]\nkind = \"mlp\"\ninput_size = 32\nhidden = [64]\nclasses = 4\n[data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adam\"\n[search]\nmax_batch = 1048576\n\
                    [policy_overrides.budget_shares]\nmax_fit = 0.14\nthroughput = 0.08\nlr_range_test = 0.06\n\
                    lr_confirmation = 0.22\nrace = 0.34\nlr_check = 0.08\nramp = 0.08\n";
        let origin = SpecOrigin {
            label: "r.toml".into(),
            default_name: Some("r".into()),
            base_dir: None,
        };
        let spec = parse_spec(text, Syntax::Toml, &origin, &PolicySet::builtin()).unwrap();
        let context = SearchContext {
            device: TrialDevice::Cpu,
            memory_limit_bytes: 4 << 30,
            memory_limit_source: crate::machine::MemorySource::Given {
                note: "test".into(),
            },
        };
        let rec = advise(&spec, &context, &FakeRunner::new(), &|_| {})
            .await
            .unwrap();
        let html = job_page(
            &JobView {
                name: "r",
                state: JobState::Done,
                phase: None,
                trials_done: rec.evidence.trials.len(),
                device: Some(TrialDevice::Cpu),
                error: None,
                errors: Vec::new(),
                recommendation: Some(&rec),
                history: &[],
            },
            false,
        );
        assert_eq!(html.matches("<svg").count(), 7);
        for id in [
            "memory",
            "throughput",
            "lr",
            "goodput",
            "race",
            "training",
            "ramp",
        ] {
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
            rec.evidence.trials.len()
        );
        assert!(!html.contains("<nav>"));
    }
}
