//! `cargo bench --bench trials`: samples per second of each model kind on
//! the CPU backend, and what a trial costs before its first useful step.
//!
//! Every trial runs the real way: a fresh worker process of the batchd
//! binary, real Burn training on real or teacher data. Figures are printed,
//! not asserted. Set `BATCHD_BENCH_DEVICE=cuda:0` to run the same table on a
//! GPU.

use std::path::Path;
use std::time::{Duration, Instant};

use batchd::policy::PolicySet;
use batchd::spec::{parse_spec, SpecOrigin};
use batchd::trial::{ProcessTrialRunner, RunnerOptions, TrialDevice, TrialRequest, TrialRunner};
use batchd::validation::Syntax;

const CASES: &[(&str, &str, u64)] = &[
    (
        "mlp 64-256-256-10 (synthetic)",
        "[model]\nkind = \"mlp\"\ninput_size = 64\nhidden = [256, 256]\nclasses = 10\n[data]\nkind = \"synthetic\"\n[optimizer]\nkind = \"adamw\"\n",
        256,
    ),
    (
        "mlp 64-128-10 (digits csv)",
        "[model]\nkind = \"mlp\"\nhidden = [128]\nclasses = 10\n[data]\nkind = \"csv\"\npath = \"digits.csv\"\n[optimizer]\nkind = \"sgd\"\n",
        128,
    ),
    (
        "cnn 8x8x1 [16,32] (digits idx)",
        "[model]\nkind = \"cnn\"\nheight = 8\nwidth = 8\nchannels = 1\nstages = [16, 32]\nclasses = 10\n[data]\nkind = \"idx\"\nimages = \"digits-images.idx\"\nlabels = \"digits-labels.idx\"\n[optimizer]\nkind = \"adam\"\n",
        64,
    ),
    (
        "cnn 32x32x3 [16,32,64] (synthetic)",
        "[model]\nkind = \"cnn\"\nheight = 32\nwidth = 32\nchannels = 3\nstages = [16, 32, 64]\nclasses = 10\n[data]\nkind = \"synthetic\"\nsamples = 2048\n[optimizer]\nkind = \"sgd\"\n",
        32,
    ),
    (
        "gpt d64 ctx32 2L (text)",
        "[model]\nkind = \"transformer\"\ncontext_length = 32\nd_model = 64\nlayers = 2\nheads = 2\n[data]\nkind = \"text\"\npath = \"corpus.txt\"\n[optimizer]\nkind = \"adamw\"\n",
        32,
    ),
];

fn main() {
    let device = match std::env::var("BATCHD_BENCH_DEVICE").as_deref() {
        Ok(text) if text.starts_with("cuda") => TrialDevice::Cuda(
            text.trim_start_matches("cuda")
                .trim_start_matches(':')
                .parse()
                .unwrap_or(0),
        ),
        _ => TrialDevice::Cpu,
    };
    let mut options = RunnerOptions::current_exe().expect("current exe");
    options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
    let runner = ProcessTrialRunner::new(options);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let origin = SpecOrigin {
        label: "bench".into(),
        default_name: Some("bench".into()),
        base_dir: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")),
    };
    let policies = PolicySet::builtin();

    // The bare cost of a trial process: spawn, read the request, load a
    // tiny dataset, one step of a tiny model, report.
    let tiny = parse_spec(
        CASES[0].1.replace("[256, 256]", "[8]").as_str(),
        Syntax::Toml,
        &origin,
        &policies,
    )
    .expect("spec");
    let mut bare = Vec::new();
    for _ in 0..5 {
        let mut request = TrialRequest::new(tiny.clone(), device, 8, 2, 1e-3);
        request.deadline = Duration::from_secs(60);
        let started = Instant::now();
        let result = runtime.block_on(runner.run(request));
        assert!(result.is_ok(), "{:?}", result.reason);
        bare.push(started.elapsed().as_secs_f64());
    }
    bare.sort_by(f64::total_cmp);
    println!(
        "trial process overhead (tiny model, 2 steps, median of 5): {:.1} ms",
        bare[2] * 1000.0
    );
    println!();
    println!(
        "{:<36}{:>7}{:>14}{:>12}{:>12}{:>11}{:>10}",
        "model", "batch", "samples/s", "step ms", "start-up s", "peak MiB", "params"
    );
    for (name, text, batch) in CASES {
        let spec = parse_spec(text, Syntax::Toml, &origin, &policies).expect("spec");
        let mut request = TrialRequest::new(spec, device, *batch, 30, 1e-3);
        request.warmup_steps = 5;
        request.deadline = Duration::from_secs(600);
        let result = runtime.block_on(runner.run(request));
        if !result.is_ok() {
            println!(
                "{name:<36}{batch:>7}  {}: {}",
                result.outcome,
                result.reason.unwrap_or_default()
            );
            continue;
        }
        println!(
            "{:<36}{:>7}{:>14.0}{:>12.2}{:>12.2}{:>11.1}{:>10}",
            name,
            batch,
            result.samples_per_second.unwrap_or(f64::NAN),
            result.step_seconds_median.unwrap_or(f64::NAN) * 1000.0,
            result.startup_seconds.unwrap_or(f64::NAN),
            result.peak_memory_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
            result.parameter_count.unwrap_or(0),
        );
    }
}
