//! GPU inventory: what NVIDIA GPUs this machine has, how loaded they are, and
//! which processes hold their memory.
//!
//! NVML sits behind [`GpuProbe`] so tests can inject fake GPUs: setting
//! `BATCHD_FAKE_GPUS` to a JSON file of a [`GpuSnapshot`] replaces NVML for
//! the whole process. Without an NVIDIA driver the inventory says so and
//! batchd carries on with the CPU backend.

mod nvml;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use nvml::NvmlProbe;

/// Environment variable naming a JSON file of fake GPUs (for tests).
pub const FAKE_GPUS_ENV: &str = "BATCHD_FAKE_GPUS";

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("NVML is not available: {0}")]
    NvmlUnavailable(String),
    #[error("NVML query failed: {0}")]
    Query(String),
    #[error("cannot use fake GPU file {path}: {reason}")]
    FakeFile { path: PathBuf, reason: String },
}

/// A process holding memory on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuProcess {
    pub pid: u32,
    #[serde(default)]
    pub name: Option<String>,
    /// `None` where the driver does not report it.
    #[serde(default)]
    pub used_memory_bytes: Option<u64>,
}

/// One GPU's state at one moment. Fields a GPU does not report are `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    #[serde(default)]
    pub utilization_gpu_percent: Option<u32>,
    #[serde(default)]
    pub utilization_memory_percent: Option<u32>,
    #[serde(default)]
    pub temperature_celsius: Option<u32>,
    #[serde(default)]
    pub power_watts: Option<f64>,
    #[serde(default)]
    pub power_limit_watts: Option<f64>,
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

/// Everything the driver reports at one moment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuSnapshot {
    #[serde(default)]
    pub driver_version: Option<String>,
    #[serde(default)]
    pub cuda_driver_version: Option<String>,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
}

/// A source of GPU state: NVML on a real machine, a fixture in tests.
pub trait GpuProbe: Send + Sync {
    fn snapshot(&self) -> Result<GpuSnapshot, GpuError>;

    /// GPU memory held by one process, summed over all GPUs; `None` when the
    /// process holds none or the driver does not say.
    fn process_memory(&self, pid: u32) -> Result<Option<u64>, GpuError> {
        self.processes_memory(&[pid])
    }

    /// GPU memory held by any of `pids` (a process tree), summed.
    fn processes_memory(&self, pids: &[u32]) -> Result<Option<u64>, GpuError> {
        let snapshot = self.snapshot()?;
        let used: Vec<u64> = snapshot
            .gpus
            .iter()
            .flat_map(|gpu| gpu.processes.iter())
            .filter(|p| pids.contains(&p.pid))
            .filter_map(|p| p.used_memory_bytes)
            .collect();
        Ok((!used.is_empty()).then(|| used.iter().sum()))
    }
}

/// GPUs read from a JSON fixture instead of the driver.
#[derive(Debug, Clone)]
pub struct FakeProbe {
    snapshot: GpuSnapshot,
}

impl FakeProbe {
    pub fn new(snapshot: GpuSnapshot) -> FakeProbe {
        FakeProbe { snapshot }
    }

    pub fn from_file(path: &std::path::Path) -> Result<FakeProbe, GpuError> {
        let fail = |reason: String| GpuError::FakeFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let snapshot = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        Ok(FakeProbe { snapshot })
    }
}

impl GpuProbe for FakeProbe {
    fn snapshot(&self) -> Result<GpuSnapshot, GpuError> {
        Ok(self.snapshot.clone())
    }
}

/// Opens the process's GPU probe: the fake named by `BATCHD_FAKE_GPUS` when
/// set, else NVML. An error means "no NVIDIA GPU usable", never a panic.
pub fn open_probe() -> Result<Box<dyn GpuProbe>, GpuError> {
    if let Some(path) = std::env::var_os(FAKE_GPUS_ENV) {
        return Ok(Box::new(FakeProbe::from_file(&PathBuf::from(path))?));
    }
    Ok(Box::new(NvmlProbe::init()?))
}

/// Host memory, from `/proc/meminfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SystemMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

impl SystemMemory {
    pub fn read() -> Option<SystemMemory> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some(SystemMemory {
            total_bytes: field("MemTotal:")?,
            available_bytes: field("MemAvailable:").or_else(|| field("MemFree:"))?,
        })
    }
}

/// Which backend trials will use by default on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DefaultBackend {
    Cuda,
    Cpu,
}

/// What `batchd gpus` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inventory {
    pub default_backend: DefaultBackend,
    pub nvml_available: bool,
    /// Why NVML could not be used, when it could not.
    pub nvml_error: Option<String>,
    pub driver_version: Option<String>,
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    pub cpu_count: usize,
    pub system_memory: Option<SystemMemory>,
}

impl Inventory {
    /// Takes the inventory through `probe`, or records why there is none.
    pub fn take(probe: Result<&dyn GpuProbe, &GpuError>) -> Inventory {
        let (snapshot, error) = match probe {
            Ok(probe) => match probe.snapshot() {
                Ok(snapshot) => (Some(snapshot), None),
                Err(error) => (None, Some(error.to_string())),
            },
            Err(error) => (None, Some(error.to_string())),
        };
        let snapshot = snapshot.unwrap_or_default();
        let has_gpu = !snapshot.gpus.is_empty();
        Inventory {
            default_backend: if has_gpu {
                DefaultBackend::Cuda
            } else {
                DefaultBackend::Cpu
            },
            nvml_available: error.is_none(),
            nvml_error: error,
            driver_version: snapshot.driver_version,
            cuda_driver_version: snapshot.cuda_driver_version,
            gpus: snapshot.gpus,
            cpu_count: std::thread::available_parallelism().map_or(1, |n| n.get()),
            system_memory: SystemMemory::read(),
        }
    }

    /// The human-readable report of `batchd gpus`.
    pub fn render(&self) -> String {
        use crate::units::ByteSize;
        let mut out = String::new();
        if self.gpus.is_empty() {
            let why = self
                .nvml_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_else(|| " (NVML reports no devices)".into());
            out.push_str(&format!(
                "No NVIDIA GPU found{why}; trials will use the CPU backend.\n"
            ));
        } else {
            out.push_str(&format!(
                "NVIDIA driver {}, CUDA {}, {} GPU{}\n",
                self.driver_version.as_deref().unwrap_or("?"),
                self.cuda_driver_version.as_deref().unwrap_or("?"),
                self.gpus.len(),
                if self.gpus.len() == 1 { "" } else { "s" }
            ));
            out.push_str(&format!(
                "{:<4}{:<26}{:<42}{:>22}{:>11}{:>6}{:>6}{:>16}\n",
                "GPU",
                "NAME",
                "UUID",
                "MEMORY USED / TOTAL",
                "FREE",
                "UTIL",
                "TEMP",
                "POWER / LIMIT"
            ));
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            for gpu in &self.gpus {
                out.push_str(&format!(
                    "{:<4}{:<26}{:<42}{:>22}{:>11}{:>6}{:>6}{:>16}\n",
                    gpu.index,
                    truncate(&gpu.name, 25),
                    truncate(&gpu.uuid, 41),
                    format!(
                        "{} / {}",
                        ByteSize(gpu.memory_used_bytes),
                        ByteSize(gpu.memory_total_bytes)
                    ),
                    ByteSize(gpu.memory_free_bytes).to_string(),
                    opt(gpu.utilization_gpu_percent.map(|u| format!("{u}%"))),
                    opt(gpu.temperature_celsius.map(|t| format!("{t}C"))),
                    format!(
                        "{} / {}",
                        opt(gpu.power_watts.map(|w| format!("{w:.0}W"))),
                        opt(gpu.power_limit_watts.map(|w| format!("{w:.0}W")))
                    ),
                ));
                if gpu.processes.is_empty() {
                    out.push_str("    no compute processes\n");
                }
                for process in &gpu.processes {
                    out.push_str(&format!(
                        "    pid {:<8} {:<24} {}\n",
                        process.pid,
                        process.name.as_deref().unwrap_or("?"),
                        process
                            .used_memory_bytes
                            .map(|b| ByteSize(b).to_string())
                            .unwrap_or_else(|| "memory not reported".into())
                    ));
                }
            }
        }
        match &self.system_memory {
            Some(memory) => out.push_str(&format!(
                "CPU: {} cores; system memory {} total, {} available\n",
                self.cpu_count,
                ByteSize(memory.total_bytes),
                ByteSize(memory.available_bytes)
            )),
            None => out.push_str(&format!(
                "CPU: {} cores; system memory unknown\n",
                self.cpu_count
            )),
        }
        out
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('~');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> FakeProbe {
        FakeProbe::new(GpuSnapshot {
            driver_version: Some("580.1".into()),
            cuda_driver_version: Some("13.0".into()),
            gpus: vec![GpuInfo {
                index: 0,
                name: "NVIDIA H200".into(),
                uuid: "GPU-0000".into(),
                memory_total_bytes: 140 << 30,
                memory_used_bytes: 3 << 30,
                memory_free_bytes: 137 << 30,
                utilization_gpu_percent: Some(12),
                utilization_memory_percent: Some(3),
                temperature_celsius: Some(40),
                power_watts: Some(120.0),
                power_limit_watts: Some(700.0),
                processes: vec![
                    GpuProcess {
                        pid: 7,
                        name: Some("python3".into()),
                        used_memory_bytes: Some(2 << 30),
                    },
                    GpuProcess {
                        pid: 9,
                        name: None,
                        used_memory_bytes: Some(1 << 30),
                    },
                ],
            }],
        })
    }

    #[test]
    fn fake_gpus_render_with_their_processes() {
        let probe = fake();
        let inventory = Inventory::take(Ok(&probe));
        assert_eq!(inventory.default_backend, DefaultBackend::Cuda);
        let text = inventory.render();
        assert!(text.contains("NVIDIA H200"), "{text}");
        assert!(text.contains("3GiB / 140GiB"), "{text}");
        assert!(text.contains("pid 7"), "{text}");
        assert!(text.contains("python3"), "{text}");
    }

    #[test]
    fn process_memory_sums_over_gpus() {
        let probe = fake();
        assert_eq!(probe.process_memory(7).unwrap(), Some(2 << 30));
        assert_eq!(probe.process_memory(8).unwrap(), None);
        assert_eq!(
            probe.processes_memory(&[8, 7, 9]).unwrap(),
            probe.processes_memory(&[7, 9]).unwrap()
        );
        assert!(probe.processes_memory(&[7, 9]).unwrap() > probe.process_memory(7).unwrap());
    }

    #[test]
    fn missing_driver_means_cpu_not_a_panic() {
        let error = GpuError::NvmlUnavailable("libnvidia-ml.so: cannot open".into());
        let inventory = Inventory::take(Err(&error));
        assert_eq!(inventory.default_backend, DefaultBackend::Cpu);
        assert!(!inventory.nvml_available);
        let text = inventory.render();
        assert!(text.starts_with("No NVIDIA GPU found"), "{text}");
        assert!(text.contains("CPU backend"), "{text}");
    }
}
