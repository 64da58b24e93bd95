//! `cargo bench --bench backends`: every CPU backend batchd's trial worker
//! is built with, on the example jobs' models at a small and a large batch,
//! beside PyTorch training the same architecture on the same machine.
//!
//! Each Burn figure is a real trial: a fresh worker process of the batchd
//! binary on the example's own data, fp32, the spec's optimizer; samples/s
//! is the mean over the timed steps after warm-up, as every trial reports
//! it, and the peak is the worker's RSS. Every cell (both sides) is timed
//! over at least `MIN_SECONDS` of steps and is the median of `REPEATS`
//! runs: on two shared cores a 0.1 s measurement moved by 1.6x between
//! runs. PyTorch runs `benches/torch_cpu.py`
//! (the interpreter is `BATCHD_TORCH_PYTHON`, else `python3`) on random
//! inputs of the same shapes with the same optimizer, timed the same way;
//! without PyTorch its column says "skipped". Its peak RSS includes
//! libtorch itself (about 300 MiB before any tensor).
//!
//! `BATCHD_BENCH_MODELS=transformer,cnn` keeps only the examples whose name
//! contains one of the words. Figures are printed, not asserted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use batchd::policy::PolicySet;
use batchd::spec::{load_spec_file, JobSpec, ModelSpec};
use batchd::trial::{
    CpuBackend, ProcessTrialRunner, RunnerOptions, TrialDevice, TrialRequest, TrialResult,
    TrialRunner,
};

/// The example jobs with built-in models (command jobs have none).
const EXAMPLES: &[&str] = &[
    "mlp-synthetic.toml",
    "mlp-digits-csv.toml",
    "mlp-digits-idx.yaml",
    "cnn-digits-idx.toml",
    "cnn-synthetic.toml",
    "transformer-text.toml",
    "transformer-synthetic.json",
];

const STEPS: u32 = 30;
const WARMUP_STEPS: u32 = 5;
const MIN_SECONDS: f64 = 1.0;
const REPEATS: usize = 3;
const MAX_STEPS: u32 = 5000;
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// A small batch (where the searches land on these jobs on a CPU) and a
/// large one, per model kind.
fn batches(model: &ModelSpec) -> [u64; 2] {
    match model {
        ModelSpec::Mlp(_) => [64, 4096],
        ModelSpec::Cnn(_) => [16, 256],
        ModelSpec::Transformer(_) => [8, 128],
    }
}

fn shape(model: &ModelSpec, input_width: usize) -> String {
    match model {
        ModelSpec::Mlp(m) => {
            let mut widths = vec![input_width.to_string()];
            widths.extend(m.hidden.iter().map(|w| w.to_string()));
            widths.push(m.classes.to_string());
            format!("mlp {}", widths.join("-"))
        }
        ModelSpec::Cnn(c) => format!("cnn {}x{}x{} {:?}", c.height, c.width, c.channels, c.stages),
        ModelSpec::Transformer(t) => format!(
            "gpt ctx{} d{} {}L {}H v{}",
            t.context_length, t.d_model, t.layers, t.heads, t.vocab_size
        ),
    }
}

struct Measured {
    samples_per_second: f64,
    peak_bytes: u64,
}

enum Cell {
    Ok(Measured),
    Failed(String),
}

impl Cell {
    fn speed(&self) -> Option<f64> {
        match self {
            Cell::Ok(m) => Some(m.samples_per_second),
            Cell::Failed(_) => None,
        }
    }
}

/// The run with the median speed (failures sort first, so a cell fails
/// only when most of its runs do).
fn median(mut runs: Vec<Cell>) -> Cell {
    runs.sort_by(|a, b| {
        a.speed()
            .unwrap_or(-1.0)
            .total_cmp(&b.speed().unwrap_or(-1.0))
    });
    runs.swap_remove(runs.len() / 2)
}

fn from_trial(result: TrialResult) -> Cell {
    match (result.is_ok(), result.samples_per_second) {
        (true, Some(speed)) => Cell::Ok(Measured {
            samples_per_second: speed,
            peak_bytes: result.peak_memory_bytes.unwrap_or(0),
        }),
        _ => Cell::Failed(result.outcome.to_string()),
    }
}

/// PyTorch on the same architecture, or why not.
fn torch(python: &str, spec: &JobSpec, input_size: usize, batch: u64) -> Cell {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/torch_cpu.py");
    let request = serde_json::json!({
        "model": spec.model(),
        "input_size": input_size,
        "optimizer": spec.optimizer,
        "batch": batch,
        "steps": STEPS - WARMUP_STEPS,
        "warmup": WARMUP_STEPS,
        "min_seconds": MIN_SECONDS,
    });
    let output = match Command::new(python)
        .arg(&script)
        .arg(request.to_string())
        .output()
    {
        Ok(output) => output,
        Err(error) => return Cell::Failed(format!("skipped ({python}: {error})")),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(Ok(answer)) = stdout
        .lines()
        .last()
        .map(serde_json::from_str::<serde_json::Value>)
    else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Cell::Failed(format!(
            "failed: {}",
            stderr.lines().last().unwrap_or("no output")
        ));
    };
    if answer.get("skipped").is_some() {
        return Cell::Failed("skipped".into());
    }
    match (
        answer["samples_per_second"].as_f64(),
        answer["peak_rss_bytes"].as_u64(),
    ) {
        (Some(speed), Some(peak)) => Cell::Ok(Measured {
            samples_per_second: speed,
            peak_bytes: peak,
        }),
        _ => Cell::Failed(format!("unreadable answer {answer}")),
    }
}

fn torch_version(python: &str) -> Option<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import torch; print(torch.__version__, torch.get_num_threads())",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn speed_text(cell: &Cell) -> String {
    match cell {
        Cell::Ok(m) if m.samples_per_second >= 10_000.0 => {
            format!("{:.0}k", m.samples_per_second / 1000.0)
        }
        Cell::Ok(m) => format!("{:.0}", m.samples_per_second),
        Cell::Failed(why) => why.split_whitespace().next().unwrap_or("-").to_string(),
    }
}

fn mib_text(cell: &Cell) -> String {
    match cell {
        Cell::Ok(m) => format!("{:.0}", m.peak_bytes as f64 / (1u64 << 20) as f64),
        Cell::Failed(_) => "-".into(),
    }
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("BATCHD_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let filter: Vec<String> = std::env::var("BATCHD_BENCH_MODELS")
        .map(|words| words.split(',').map(|w| w.trim().to_string()).collect())
        .unwrap_or_default();
    let mut options = RunnerOptions::current_exe().expect("current exe");
    options.worker_exe = env!("CARGO_BIN_EXE_batchd").into();
    let runner = ProcessTrialRunner::new(options);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let policies = PolicySet::builtin();
    let backends = CpuBackend::BUILT;

    println!(
        "CPU trial speed: >= {} steps ({} untimed) and >= {MIN_SECONDS} s timed, median of {REPEATS} runs; fp32, the spec's optimizer; {} CPUs",
        STEPS,
        WARMUP_STEPS,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    match torch_version(&python) {
        Some(version) => println!("PyTorch {version} (version, threads) via {python}"),
        None => println!("PyTorch: skipped ({python} cannot import torch)"),
    }
    println!("samples/s (x PyTorch); peak RSS MiB in brackets; auto = batchd's choice\n");
    let mut header = format!("{:<22}{:<26}{:>6}", "example", "model", "batch");
    for backend in backends {
        header += &format!("{:>22}", backend.name());
    }
    header += &format!("{:>16}{:>8}", "pytorch", "auto");
    println!("{header}");

    for example in EXAMPLES {
        if !filter.is_empty() && !filter.iter().any(|w| example.contains(w.as_str())) {
            continue;
        }
        let path = root.join("examples/jobs").join(example);
        let spec = load_spec_file(&path, &policies, MAX_SPEC_BYTES).expect("example spec");
        let model = spec.model().expect("a built-in model").clone();
        for batch in batches(&model) {
            let mut cells = Vec::new();
            let mut parameters = None;
            for backend in backends {
                let trial = |steps: u32| {
                    let mut request =
                        TrialRequest::new(spec.clone(), TrialDevice::Cpu, batch, steps, 1e-4);
                    request.warmup_steps = WARMUP_STEPS;
                    request.deadline = Duration::from_secs(600);
                    request.cpu_backend = *backend;
                    runtime.block_on(runner.run(request))
                };
                // A first trial sizes the timed part to MIN_SECONDS.
                let probe = trial(STEPS);
                parameters = parameters.or(probe.parameter_count);
                let steps = match probe.step_seconds_median {
                    Some(step) if step > 0.0 => {
                        let timed = (MIN_SECONDS / step).ceil() as u32;
                        (timed + WARMUP_STEPS).clamp(STEPS, MAX_STEPS)
                    }
                    _ => STEPS,
                };
                let runs = (0..REPEATS).map(|_| from_trial(trial(steps))).collect();
                cells.push(median(runs));
            }
            let width = input_width(&model, parameters);
            let reference = median(
                (0..REPEATS)
                    .map(|_| torch(&python, &spec, width, batch))
                    .collect(),
            );
            let mut row = format!("{:<22}{:<26}{:>6}", spec.name, shape(&model, width), batch);
            for cell in &cells {
                let ratio = match (cell.speed(), reference.speed()) {
                    (Some(ours), Some(theirs)) => format!(" x{:.2}", ours / theirs),
                    _ => String::new(),
                };
                row += &format!(
                    "{:>22}",
                    format!("{}{} [{}]", speed_text(cell), ratio, mib_text(cell))
                );
            }
            row += &format!(
                "{:>16}",
                format!("{} [{}]", speed_text(&reference), mib_text(&reference))
            );
            row += &format!("{:>8}", CpuBackend::auto_for(&model).name());
            println!("{row}");
        }
    }
}

/// The MLP's input width: the spec's, or (when the data decides it) solved
/// from the parameter count a trial reported.
fn input_width(model: &ModelSpec, parameters: Option<u64>) -> usize {
    let ModelSpec::Mlp(mlp) = model else {
        return 0;
    };
    if let Some(width) = mlp.input_size {
        return width;
    }
    let (Some(parameters), Some(&first)) = (parameters, mlp.hidden.first()) else {
        return 0;
    };
    // parameters = (input + 1) x first + sum over later layers (in + 1) x out
    let mut rest = first as u64;
    let mut widths = mlp.hidden.clone();
    widths.push(mlp.classes);
    for pair in widths.windows(2) {
        rest += (pair[0] as u64 + 1) * pair[1] as u64;
    }
    (parameters.saturating_sub(rest) / first as u64) as usize
}
