//! Prometheus metrics, on a registry batchd owns (never the global one, so
//! a library linking `prometheus` cannot leak series into our scrape).
//!
//! Conventions: every name starts with `batchd_`, uses base units
//! (`_bytes`, `_seconds`, `_ratio`, `_celsius`, `_watts`), counters end in
//! `_total`. Labels stay bounded: GPU index and UUID, job name (one per spec
//! file), job state, trial outcome. Never `job` or `instance` (Prometheus
//! adds its own), never error strings or batch sizes.
//!
//! Trial counters are updated as trials end ([`MeteredRunner`]); everything
//! else is a gauge set from a [`Snapshot`] of the daemon at scrape time, so
//! a retired job's series disappear with it.

use std::sync::Mutex;
use std::time::Instant;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::gpu::GpuInfo;
use crate::job::JobState;
use crate::search::Recommendation;
use crate::trial::{Outcome, TrialRequest, TrialResult, TrialRunner};

/// Trial durations: from a cached-kernel MLP step (< 1 s) to a max-fit
/// trial on a large GPU (minutes).
const TRIAL_DURATION_BUCKETS: [f64; 12] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One job as the metrics see it: its name, state and the recommendation's
/// figures (taken under the job table's lock, so a scrape never copies
/// whole recommendations).
pub struct JobView {
    pub name: String,
    pub state: JobState,
    /// The device model its work is keyed by, when known: fleet views
    /// compare one job across GPU models.
    pub device_model: Option<String>,
    /// One value per [`JOB_VALUES`] family, `None` when not known.
    pub values: [Option<f64>; 6],
}

impl JobView {
    pub fn new(name: &str, state: JobState, rec: Option<&Recommendation>) -> JobView {
        let values = rec.map_or([None; 6], |rec| {
            [
                Some(rec.batch_size as f64),
                rec.lr.learning_rate,
                Some(rec.max_fit_batch_size() as f64),
                rec.gradient_noise_scale(),
                rec.throughput.expected_samples_per_second,
                rec.memory.expected_peak_bytes.map(|b| b as f64),
            ]
        });
        JobView {
            name: name.to_string(),
            state,
            device_model: None,
            values,
        }
    }
}

/// The per-job gauge families, in [`JobView::values`] order.
const JOB_VALUES: [(&str, &str); 6] = [
    (
        "batchd_job_recommended_batch_size",
        "Recommended per-device batch size.",
    ),
    (
        "batchd_job_learning_rate",
        "Recommended learning rate for the recommended effective batch.",
    ),
    (
        "batchd_job_max_fit_batch_size",
        "Largest batch measured to fit the memory budget.",
    ),
    (
        "batchd_job_gradient_noise_scale",
        "Measured gradient noise scale (critical batch, in samples).",
    ),
    (
        "batchd_job_expected_throughput_samples_per_second",
        "Expected training throughput at the recommended batch.",
    ),
    (
        "batchd_job_expected_peak_memory_bytes",
        "Expected peak device memory at the recommended batch.",
    ),
];

/// The daemon at one moment.
pub struct Snapshot<'a> {
    /// `None` when NVML is unavailable.
    pub gpus: Option<&'a [GpuInfo]>,
    pub jobs: Vec<JobView>,
    pub queue_depth: usize,
    pub searches_running: usize,
}

pub struct Metrics {
    registry: Registry,
    gpu_memory_total: GaugeVec,
    gpu_memory_used: GaugeVec,
    gpu_memory_free: GaugeVec,
    gpu_utilization: GaugeVec,
    gpu_temperature: GaugeVec,
    gpu_power: GaugeVec,
    jobs: IntGaugeVec,
    trials: IntCounterVec,
    trial_duration: HistogramVec,
    queue_depth: IntGauge,
    searches_running: IntGauge,
    nvml_up: IntGauge,
    /// Rescans of the jobs folder: flat while nothing changes but the
    /// periodic rescan (a watcher woken by its own reads climbed fast).
    pub rescans: prometheus::IntCounter,
    /// Recommendations another daemon on the shared state folder computed
    /// and this one serves.
    pub shared_results: prometheus::IntCounter,
    /// Works this daemon took over from a daemon whose lease expired.
    pub lease_takeovers: prometheus::IntCounter,
    /// Scrapes reset and refill the gauges; two at once would interleave.
    scrape: Mutex<()>,
}

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let vec = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let counter = |name: &str, help: &str| {
            let counter = prometheus::IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok::<_, prometheus::Error>(counter)
        };
        let gpu = ["gpu", "uuid"];
        let metrics = Metrics {
            gpu_memory_total: gauge_vec(
                "batchd_gpu_memory_total_bytes",
                "GPU memory in all.",
                &gpu,
            )?,
            gpu_memory_used: gauge_vec(
                "batchd_gpu_memory_used_bytes",
                "GPU memory in use, by any process.",
                &gpu,
            )?,
            gpu_memory_free: gauge_vec("batchd_gpu_memory_free_bytes", "GPU memory free.", &gpu)?,
            gpu_utilization: gauge_vec(
                "batchd_gpu_utilization_ratio",
                "Fraction of the last sample period a kernel ran (NVML).",
                &gpu,
            )?,
            gpu_temperature: gauge_vec(
                "batchd_gpu_temperature_celsius",
                "GPU core temperature.",
                &gpu,
            )?,
            gpu_power: gauge_vec("batchd_gpu_power_watts", "GPU power draw.", &gpu)?,
            jobs: {
                let vec = IntGaugeVec::new(Opts::new("batchd_jobs", "Jobs by state."), &["state"])?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            trials: {
                let vec = IntCounterVec::new(
                    Opts::new("batchd_trials_total", "Trials run, by outcome."),
                    &["outcome"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            trial_duration: {
                let vec = HistogramVec::new(
                    HistogramOpts::new(
                        "batchd_trial_duration_seconds",
                        "Wall time of a trial, process start to result, by outcome.",
                    )
                    .buckets(TRIAL_DURATION_BUCKETS.to_vec()),
                    &["outcome"],
                )?;
                registry.register(Box::new(vec.clone()))?;
                vec
            },
            queue_depth: {
                let gauge = IntGauge::new("batchd_queue_depth", "Jobs queued for a device.")?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            searches_running: {
                let gauge = IntGauge::new(
                    "batchd_searches_running",
                    "Searches running now (at most one per device).",
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            nvml_up: {
                let gauge = IntGauge::new(
                    "batchd_nvml_up",
                    "1 when NVML answers, 0 on a machine without a usable NVIDIA driver.",
                )?;
                registry.register(Box::new(gauge.clone()))?;
                gauge
            },
            rescans: counter(
                "batchd_jobs_folder_rescans_total",
                "Rescans of the jobs folder, periodic and event-driven.",
            )?,
            shared_results: counter(
                "batchd_fleet_shared_results_total",
                "Recommendations another daemon on the shared state folder computed, served here.",
            )?,
            lease_takeovers: counter(
                "batchd_fleet_lease_takeovers_total",
                "Searches taken over from a daemon whose lease on the work expired.",
            )?,
            registry,
            scrape: Mutex::new(()),
        };
        let build_info = IntGaugeVec::new(
            Opts::new("batchd_build_info", "Always 1; labels name the build."),
            &["version", "burn_version"],
        )?;
        metrics.registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), crate::trial::BURN_VERSION])
            .set(1);
        // Known label sets exist from the start, so a dashboard shows zeros
        // rather than "No data" before the first trial.
        for outcome in Outcome::ALL {
            metrics.trials.with_label_values(&[outcome.as_str()]);
            metrics
                .trial_duration
                .with_label_values(&[outcome.as_str()]);
        }
        for state in JobState::ALL {
            metrics.jobs.with_label_values(&[state.as_str()]);
        }
        Ok(metrics)
    }

    /// Counts one finished trial.
    pub fn observe_trial(&self, outcome: Outcome, seconds: f64) {
        self.trials.with_label_values(&[outcome.as_str()]).inc();
        self.trial_duration
            .with_label_values(&[outcome.as_str()])
            .observe(seconds);
    }

    /// Sets the gauges from `snapshot` and encodes the registry in the text
    /// exposition format.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let _guard = self.scrape.lock();
        self.set_gauges(snapshot);
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!("cannot encode metrics: {error}");
        }
        let mut text = String::from_utf8(buffer).unwrap_or_default();
        render_jobs(&mut text, &snapshot.jobs);
        text
    }

    fn set_gauges(&self, snapshot: &Snapshot) {
        for vec in [
            &self.gpu_memory_total,
            &self.gpu_memory_used,
            &self.gpu_memory_free,
            &self.gpu_utilization,
            &self.gpu_temperature,
            &self.gpu_power,
        ] {
            vec.reset();
        }
        self.nvml_up.set(i64::from(snapshot.gpus.is_some()));
        for gpu in snapshot.gpus.unwrap_or_default() {
            let index = gpu.index.to_string();
            let labels = [index.as_str(), gpu.uuid.as_str()];
            self.gpu_memory_total
                .with_label_values(&labels)
                .set(gpu.memory_total_bytes as f64);
            self.gpu_memory_used
                .with_label_values(&labels)
                .set(gpu.memory_used_bytes as f64);
            self.gpu_memory_free
                .with_label_values(&labels)
                .set(gpu.memory_free_bytes as f64);
            let optional = [
                (
                    &self.gpu_utilization,
                    gpu.utilization_gpu_percent.map(|p| f64::from(p) / 100.0),
                ),
                (
                    &self.gpu_temperature,
                    gpu.temperature_celsius.map(f64::from),
                ),
                (&self.gpu_power, gpu.power_watts),
            ];
            for (vec, value) in optional {
                if let Some(value) = value {
                    vec.with_label_values(&labels).set(value);
                }
            }
        }
        for state in JobState::ALL {
            let count = snapshot.jobs.iter().filter(|j| j.state == state).count();
            self.jobs
                .with_label_values(&[state.as_str()])
                .set(count as i64);
        }
        self.queue_depth.set(snapshot.queue_depth as i64);
        self.searches_running.set(snapshot.searches_running as i64);
    }
}

/// The per-job series, written straight into the exposition text. With a
/// thousand jobs they are most of a scrape, and building them as registry
/// metrics each time (a reset, thousands of label lookups, then a copy of
/// each series for the encoder) made the scrape several times slower.
fn render_jobs(out: &mut String, jobs: &[JobView]) {
    use std::fmt::Write;
    // Job names come from file names in the invalid case: escaped as the
    // exposition format requires.
    let names: Vec<String> = jobs.iter().map(|j| escape_label(&j.name)).collect();
    // `gpu_model` where known: one series per job and device model.
    let models: Vec<String> = jobs
        .iter()
        .map(|j| {
            j.device_model.as_deref().map_or_else(String::new, |m| {
                format!(",gpu_model=\"{}\"", escape_label(m))
            })
        })
        .collect();
    for (index, (family, help)) in JOB_VALUES.iter().enumerate() {
        let mut wrote_header = false;
        for ((job, name), model) in jobs.iter().zip(&names).zip(&models) {
            let Some(value) = job.values[index].filter(|v| v.is_finite()) else {
                continue;
            };
            if !wrote_header {
                let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} gauge");
                wrote_header = true;
            }
            let _ = writeln!(out, "{family}{{job_name=\"{name}\"{model}}} {value}");
        }
    }
    if jobs.is_empty() {
        return;
    }
    out.push_str(
        "# HELP batchd_job_state 1 for the job's current state, 0 for the others.\n# TYPE batchd_job_state gauge\n",
    );
    for ((job, name), model) in jobs.iter().zip(&names).zip(&models) {
        for state in JobState::ALL {
            let on = u8::from(job.state == state);
            let _ = writeln!(
                out,
                "batchd_job_state{{job_name=\"{name}\",state=\"{state}\"{model}}} {on}"
            );
        }
    }
}

/// A label value as the text exposition format writes it.
fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// A trial runner that counts its trials' outcomes and durations.
pub struct MeteredRunner<R> {
    pub inner: R,
    pub metrics: std::sync::Arc<Metrics>,
}

impl<R: TrialRunner> TrialRunner for MeteredRunner<R> {
    async fn run(&self, request: TrialRequest) -> TrialResult {
        let started = Instant::now();
        let result = self.inner.run(request).await;
        self.metrics
            .observe_trial(result.outcome, started.elapsed().as_secs_f64());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu() -> GpuInfo {
        GpuInfo {
            index: 0,
            name: "NVIDIA H200".into(),
            uuid: "GPU-1234".into(),
            memory_total_bytes: 150_000_000_000,
            memory_used_bytes: 1_000_000_000,
            memory_free_bytes: 149_000_000_000,
            utilization_gpu_percent: Some(37),
            utilization_memory_percent: None,
            temperature_celsius: Some(41),
            power_watts: Some(118.5),
            power_limit_watts: None,
            processes: Vec::new(),
        }
    }

    #[test]
    fn names_follow_the_conventions_and_known_series_exist_before_any_trial() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.render(&Snapshot {
            gpus: None,
            jobs: Vec::new(),
            queue_depth: 0,
            searches_running: 0,
        });
        assert!(
            text.contains("batchd_trials_total{outcome=\"out_of_memory\"} 0"),
            "{text}"
        );
        assert!(text.contains("batchd_jobs{state=\"invalid\"} 0"));
        assert!(text.contains("batchd_nvml_up 0"));
        assert!(text.contains("batchd_build_info{burn_version=\"0.21.0\",version=\""));
        for family in metrics.registry.gather() {
            let name = family.name();
            assert!(name.starts_with("batchd_"), "{name}");
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                assert!(name.ends_with("_total"), "{name}");
            }
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    assert!(
                        !matches!(label.name(), "job" | "instance" | "batch_size" | "error"),
                        "{name} has label {}",
                        label.name()
                    );
                }
            }
        }
    }

    #[test]
    fn gauges_follow_the_snapshot_and_retired_jobs_disappear() {
        let metrics = Metrics::new().unwrap();
        let gpus = [gpu()];
        let text = metrics.render(&Snapshot {
            gpus: Some(&gpus),
            jobs: vec![
                JobView::new("a", JobState::Running, None),
                JobView::new("b\"\n", JobState::Invalid, None),
                JobView {
                    device_model: Some("NVIDIA H100".into()),
                    ..JobView::new("c", JobState::Waiting, None)
                },
            ],
            queue_depth: 3,
            searches_running: 1,
        });
        assert!(
            text.contains("batchd_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-1234\"} 0.37"),
            "{text}"
        );
        assert!(text.contains("batchd_gpu_power_watts{gpu=\"0\",uuid=\"GPU-1234\"} 118.5"));
        assert!(text.contains("batchd_nvml_up 1"));
        assert!(text.contains("batchd_queue_depth 3"));
        assert!(text.contains("batchd_job_state{job_name=\"a\",state=\"running\"} 1"));
        assert!(text.contains("batchd_job_state{job_name=\"a\",state=\"done\"} 0"));
        assert!(text.contains("batchd_jobs{state=\"running\"} 1"));
        assert!(text.contains("batchd_jobs{state=\"waiting\"} 1"));
        assert!(
            text.contains(
                "batchd_job_state{job_name=\"c\",state=\"waiting\",gpu_model=\"NVIDIA H100\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("batchd_fleet_shared_results_total 0"));
        assert!(text.contains("batchd_fleet_lease_takeovers_total 0"));
        assert!(
            text.contains("batchd_job_state{job_name=\"b\\\"\\n\",state=\"invalid\"} 1"),
            "{text}"
        );
        metrics.observe_trial(Outcome::OutOfMemory, 3.0);
        let text = metrics.render(&Snapshot {
            gpus: None,
            jobs: vec![JobView::new("b", JobState::Invalid, None)],
            queue_depth: 0,
            searches_running: 0,
        });
        assert!(!text.contains("job_name=\"a\""), "{text}");
        assert!(!text.contains("batchd_gpu_memory_total_bytes{"));
        assert!(text.contains("batchd_trials_total{outcome=\"out_of_memory\"} 1"));
        assert!(text.contains(
            "batchd_trial_duration_seconds_bucket{outcome=\"out_of_memory\",le=\"5\"} 1"
        ));
    }
}
