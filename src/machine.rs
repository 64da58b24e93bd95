//! The one place that knows the machine: which devices it has, what a
//! spec's `auto` means on it, how much memory a search may use there (and
//! why), and where compiled CUDA kernels are kept. `batchd serve` and the
//! foreground commands both ask here, so they never disagree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::gpu::{GpuProbe, SystemMemory};
use crate::spec::DeviceChoice;
use crate::units::ByteSize;

/// Share of the machine's available memory a CPU search (or a trial given
/// no limit) may take: the rest keeps the machine out of swap.
pub const CPU_MEMORY_SHARE: f64 = 0.8;

/// Where a trial runs, resolved (never `auto`). Written as `cpu` or
/// `cuda:N` in every document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrialDevice {
    Cpu,
    Cuda(u32),
}

impl std::fmt::Display for TrialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrialDevice::Cpu => f.write_str("cpu"),
            TrialDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for TrialDevice {
    type Err = NotATrialDevice;

    fn from_str(text: &str) -> Result<TrialDevice, NotATrialDevice> {
        match text {
            "cpu" => Ok(TrialDevice::Cpu),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(TrialDevice::Cuda)
                .ok_or_else(|| NotATrialDevice(text.to_string())),
        }
    }
}

/// A device name that is neither `cpu` nor `cuda:N`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{0}` is not a device; expected \"cpu\" or \"cuda:N\"")]
pub struct NotATrialDevice(pub String);

impl utoipa::PartialSchema for TrialDevice {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^(cpu|cuda:[0-9]+)$"))
            .description(Some("`cpu` or `cuda:N`"))
            .into()
    }
}

impl utoipa::ToSchema for TrialDevice {}

impl Serialize for TrialDevice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TrialDevice {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl TrialDevice {
    /// Whether a job asking for `choice` may run here. `auto` means any GPU
    /// on a machine that has one, else the CPU.
    pub fn serves(self, choice: DeviceChoice, machine_has_gpu: bool) -> bool {
        match (choice, self) {
            (DeviceChoice::Auto, TrialDevice::Cuda(_)) => true,
            (DeviceChoice::Auto, TrialDevice::Cpu) => !machine_has_gpu,
            (DeviceChoice::Cpu, TrialDevice::Cpu) => true,
            (DeviceChoice::Cuda(wanted), TrialDevice::Cuda(index)) => wanted == index,
            _ => false,
        }
    }
}

/// Why the CUDA driver cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CudaError {
    #[error("the CUDA driver library (libcuda.so) is not installed")]
    NoDriver,
    #[error("the CUDA driver failed to initialize: {0}")]
    Init(String),
    #[error("cannot count CUDA devices: {0}")]
    Count(String),
    #[error("cannot open a CUDA context on cuda:{index}: {reason}")]
    Context { index: u32, reason: String },
    #[error("cuda:{index} does not exist: the driver sees {count} CUDA device{}", if *count == 1 { "" } else { "s" })]
    NoSuchDevice { index: u32, count: u32 },
}

/// Whether the CUDA driver loads and how many devices it sees. Burn 0.21
/// panics on the first use of a device where the driver is missing, so
/// batchd asks the driver itself first.
pub fn cuda_device_count() -> Result<u32, CudaError> {
    use cudarc::driver::result;
    // SAFETY: only probes whether the shared library can be opened.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaError::NoDriver);
    }
    result::init().map_err(|e| CudaError::Init(e.to_string()))?;
    let count = result::device::get_count().map_err(|e| CudaError::Count(e.to_string()))?;
    Ok(count.max(0) as u32)
}

/// Checks that CUDA device `index` exists.
pub fn check_cuda_device(index: u32) -> Result<(), CudaError> {
    let count = cuda_device_count()?;
    if index >= count {
        return Err(CudaError::NoSuchDevice { index, count });
    }
    Ok(())
}

/// A device searches run on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceSlot {
    pub device: TrialDevice,
    /// The model name, part of a recommendation's cache key.
    pub model: String,
}

/// The machine's devices and its GPU probe.
#[derive(Clone)]
pub struct Machine {
    /// Every CUDA device the driver shows, then the CPU.
    pub devices: Vec<DeviceSlot>,
    pub gpu_probe: Option<Arc<dyn GpuProbe>>,
}

impl Machine {
    /// This machine, as the CUDA driver and `probe` (NVML) show it.
    pub fn discover(gpu_probe: Option<Arc<dyn GpuProbe>>) -> Machine {
        let count = cuda_device_count().unwrap_or(0);
        let gpus = gpu_probe
            .as_deref()
            .and_then(|p| p.snapshot().ok())
            .map(|s| s.gpus)
            .unwrap_or_default();
        let mut devices: Vec<DeviceSlot> = (0..count)
            .map(|index| DeviceSlot {
                device: TrialDevice::Cuda(index),
                // NVML and CUDA number GPUs alike unless CUDA_DEVICE_ORDER
                // says otherwise; the name is only used as a cache key.
                model: gpus
                    .iter()
                    .find(|g| g.index == index)
                    .map_or_else(|| format!("cuda:{index}"), |g| g.name.clone()),
            })
            .collect();
        devices.push(DeviceSlot {
            device: TrialDevice::Cpu,
            model: "cpu".into(),
        });
        Machine { devices, gpu_probe }
    }

    pub fn has_gpu(&self) -> bool {
        has_gpu(&self.devices)
    }

    /// The devices that may run a job asking for `choice`.
    pub fn serving(&self, choice: DeviceChoice) -> impl Iterator<Item = &DeviceSlot> {
        let has_gpu = self.has_gpu();
        self.devices
            .iter()
            .filter(move |slot| slot.device.serves(choice, has_gpu))
    }

    /// The device a foreground command runs `choice` on: the first that
    /// serves it. A named GPU the machine lacks stays named, so the trial
    /// can say it does not exist.
    pub fn resolve(&self, choice: DeviceChoice) -> TrialDevice {
        match choice {
            DeviceChoice::Cuda(index) => TrialDevice::Cuda(index),
            _ => self
                .serving(choice)
                .next()
                .map_or(TrialDevice::Cpu, |slot| slot.device),
        }
    }

    /// Where and within how much memory a search on `device` runs: the
    /// spec's limit, capped by what is free. On a GPU, memory other
    /// processes hold (NVML) comes out of the budget.
    pub fn search_context(
        &self,
        device: TrialDevice,
        limit: Option<ByteSize>,
    ) -> Result<SearchContext, MemoryError> {
        search_context(device, limit, self.gpu_probe.as_deref())
    }
}

/// Whether any of `devices` is a GPU.
pub fn has_gpu(devices: &[DeviceSlot]) -> bool {
    devices
        .iter()
        .any(|slot| matches!(slot.device, TrialDevice::Cuda(_)))
}

/// Where and within what a search runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchContext {
    pub device: TrialDevice,
    /// Memory the trials may use before the policy's headroom.
    pub memory_limit_bytes: u64,
    /// Where that limit came from, for the report.
    pub memory_limit_source: MemorySource,
}

/// Where a search's memory budget came from. Documents carry it as an
/// object tagged by `kind`; reports print its `Display` sentence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MemorySource {
    /// The spec's (or the command line's) `memory_limit`.
    SpecLimit,
    /// [`CPU_MEMORY_SHARE`] of the host memory available.
    HostShare { available: ByteSize },
    /// The free memory of a GPU, as NVML reports it.
    GpuFree {
        index: u32,
        name: String,
        total: ByteSize,
        held_by_others: ByteSize,
        other_processes: usize,
    },
    /// The spec's limit, NVML being unavailable to check it.
    SpecLimitUnchecked,
    /// The machine's figure, below the spec's limit.
    BelowSpecLimit {
        // The schema refers to itself here; no_recursion stops utoipa
        // collecting it forever.
        #[schema(no_recursion)]
        machine: Box<MemorySource>,
        spec_limit: ByteSize,
    },
    /// Set by a test or a benchmark.
    Given { note: String },
}

impl std::fmt::Display for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemorySource::SpecLimit => f.write_str("the spec's memory_limit"),
            MemorySource::HostShare { available } => write!(
                f,
                "{:.0}% of the {available} of host memory available",
                CPU_MEMORY_SHARE * 100.0
            ),
            MemorySource::GpuFree {
                index,
                name,
                total,
                held_by_others,
                other_processes,
            } => write!(
                f,
                "free memory of cuda:{index} ({name}, NVML): {total} total, {held_by_others} held by {other_processes} other process(es)"
            ),
            MemorySource::SpecLimitUnchecked => {
                f.write_str("the spec's memory_limit (NVML unavailable)")
            }
            MemorySource::BelowSpecLimit {
                machine,
                spec_limit,
            } => write!(f, "{machine} (below the spec's memory_limit of {spec_limit})"),
            MemorySource::Given { note } => f.write_str(note),
        }
    }
}

/// Why a search's memory budget cannot be known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot read /proc/meminfo")]
    NoMeminfo,
    #[error("cannot read cuda:{0}'s memory through NVML; set search.memory_limit")]
    NoGpuFigures(u32),
}

/// The memory a CPU trial may take when nothing else says:
/// [`CPU_MEMORY_SHARE`] of what is available now.
pub fn cpu_memory_budget() -> Option<u64> {
    SystemMemory::read().map(|memory| share_of(memory.available_bytes))
}

fn share_of(available: u64) -> u64 {
    (available as f64 * CPU_MEMORY_SHARE) as u64
}

/// [`Machine::search_context`] for a probe alone.
pub fn search_context(
    device: TrialDevice,
    limit: Option<ByteSize>,
    probe: Option<&dyn GpuProbe>,
) -> Result<SearchContext, MemoryError> {
    let (available, source) = match device {
        TrialDevice::Cpu => {
            let memory = SystemMemory::read().ok_or(MemoryError::NoMeminfo)?;
            (
                share_of(memory.available_bytes),
                MemorySource::HostShare {
                    available: ByteSize(memory.available_bytes),
                },
            )
        }
        TrialDevice::Cuda(index) => {
            let gpu = probe
                .and_then(|p| p.snapshot().ok())
                .and_then(|s| s.gpus.into_iter().find(|g| g.index == index));
            match (gpu, limit) {
                (Some(gpu), _) => {
                    let others: u64 = gpu
                        .processes
                        .iter()
                        .filter_map(|p| p.used_memory_bytes)
                        .sum();
                    (
                        gpu.memory_free_bytes,
                        MemorySource::GpuFree {
                            index,
                            name: gpu.name,
                            total: ByteSize(gpu.memory_total_bytes),
                            held_by_others: ByteSize(others.max(gpu.memory_used_bytes)),
                            other_processes: gpu.processes.len(),
                        },
                    )
                }
                (None, Some(limit)) => (limit.bytes(), MemorySource::SpecLimitUnchecked),
                (None, None) => return Err(MemoryError::NoGpuFigures(index)),
            }
        }
    };
    let (bytes, source) = match limit {
        Some(limit) if source == MemorySource::SpecLimitUnchecked => (limit.bytes(), source),
        Some(limit) if limit.bytes() <= available => (limit.bytes(), MemorySource::SpecLimit),
        Some(limit) => (
            available,
            MemorySource::BelowSpecLimit {
                machine: Box::new(source),
                spec_limit: limit,
            },
        ),
        None => (available, source),
    };
    Ok(SearchContext {
        device,
        memory_limit_bytes: bytes,
        memory_limit_source: source,
    })
}

/// Where a user's foreground commands keep compiled CUDA kernels:
/// `$XDG_CACHE_HOME/batchd/kernels`, else `~/.cache/batchd/kernels`.
pub fn user_kernel_cache() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("batchd").join("kernels"))
}

/// Where a user's foreground commands keep parsed datasets:
/// `$XDG_CACHE_HOME/batchd/data`, else `~/.cache/batchd/data`.
pub fn user_data_cache() -> Option<PathBuf> {
    user_kernel_cache().and_then(|kernels| Some(kernels.parent()?.join("data")))
}

/// Where the daemon keeps parsed datasets between trials.
pub fn daemon_data_cache(state_dir: &Path) -> PathBuf {
    state_dir.join("data-cache")
}

/// Where the daemon keeps compiled CUDA kernels: in its state folder, which
/// systemd lets it write.
pub fn daemon_kernel_cache(state_dir: &Path) -> PathBuf {
    state_dir.join("kernel-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(devices: &[TrialDevice]) -> Machine {
        Machine {
            devices: devices
                .iter()
                .map(|&device| DeviceSlot {
                    device,
                    model: device.to_string(),
                })
                .collect(),
            gpu_probe: None,
        }
    }

    #[test]
    fn auto_is_the_first_gpu_where_there_is_one_and_the_cpu_otherwise() {
        let gpus = machine(&[TrialDevice::Cuda(0), TrialDevice::Cuda(1), TrialDevice::Cpu]);
        assert_eq!(gpus.resolve(DeviceChoice::Auto), TrialDevice::Cuda(0));
        assert_eq!(gpus.serving(DeviceChoice::Auto).count(), 2);
        assert_eq!(gpus.resolve(DeviceChoice::Cpu), TrialDevice::Cpu);
        let cpu = machine(&[TrialDevice::Cpu]);
        assert_eq!(cpu.resolve(DeviceChoice::Auto), TrialDevice::Cpu);
        // A GPU the machine lacks stays named (the trial says it is missing).
        assert_eq!(cpu.resolve(DeviceChoice::Cuda(3)), TrialDevice::Cuda(3));
        assert_eq!(cpu.serving(DeviceChoice::Cuda(3)).count(), 0);
    }

    #[test]
    fn a_spec_limit_below_what_is_free_is_used_and_one_above_is_capped() {
        let cpu = search_context(TrialDevice::Cpu, Some(ByteSize(1 << 20)), None).unwrap();
        assert_eq!(cpu.memory_limit_bytes, 1 << 20);
        assert_eq!(cpu.memory_limit_source, MemorySource::SpecLimit);
        let huge = search_context(TrialDevice::Cpu, Some(ByteSize(1 << 60)), None).unwrap();
        assert!(huge.memory_limit_bytes < 1 << 60);
        assert!(huge
            .memory_limit_source
            .to_string()
            .contains("below the spec's memory_limit"));
        assert_eq!(
            search_context(TrialDevice::Cuda(0), None, None),
            Err(MemoryError::NoGpuFigures(0))
        );
        let unchecked =
            search_context(TrialDevice::Cuda(0), Some(ByteSize(1 << 30)), None).unwrap();
        assert_eq!(unchecked.memory_limit_bytes, 1 << 30);
        assert_eq!(
            unchecked.memory_limit_source.to_string(),
            "the spec's memory_limit (NVML unavailable)"
        );
    }
}
