//! The real probe, over NVML (`nvml-wrapper`).

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{GpuError, GpuInfo, GpuProbe, GpuProcess, GpuSnapshot};

/// NVML, initialized once. Where the driver library is missing,
/// [`NvmlProbe::init`] returns an error (nvml-wrapper does not panic).
pub struct NvmlProbe {
    nvml: Nvml,
}

impl NvmlProbe {
    pub fn init() -> Result<NvmlProbe, GpuError> {
        Nvml::init()
            .map(|nvml| NvmlProbe { nvml })
            .map_err(|e| GpuError::NvmlUnavailable(describe(&e)))
    }

    fn gpu(&self, index: u32) -> Result<GpuInfo, NvmlError> {
        let device = self.nvml.device_by_index(index)?;
        let memory = device.memory_info()?;
        let utilization = device.utilization_rates().ok();
        let processes = device
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| GpuProcess {
                pid: p.pid,
                // The driver cannot name processes from another PID
                // namespace; that is not worth failing the listing.
                name: self.nvml.sys_process_name(p.pid, 64).ok(),
                used_memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes),
                    UsedGpuMemory::Unavailable => None,
                },
            })
            .collect();
        Ok(GpuInfo {
            index,
            name: device.name()?,
            uuid: device.uuid()?,
            memory_total_bytes: memory.total,
            memory_used_bytes: memory.used,
            memory_free_bytes: memory.free,
            utilization_gpu_percent: utilization.as_ref().map(|u| u.gpu),
            utilization_memory_percent: utilization.as_ref().map(|u| u.memory),
            temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
            power_watts: device.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            power_limit_watts: device
                .enforced_power_limit()
                .ok()
                .map(|mw| f64::from(mw) / 1000.0),
            processes,
        })
    }
}

fn describe(error: &NvmlError) -> String {
    match error {
        NvmlError::LibloadingError(_) => {
            "the NVIDIA driver library libnvidia-ml.so could not be loaded".to_string()
        }
        NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".to_string(),
        other => other.to_string(),
    }
}

impl GpuProbe for NvmlProbe {
    fn snapshot(&self) -> Result<GpuSnapshot, GpuError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuError::Query(describe(&e)))?;
        let gpus = (0..count)
            .map(|i| {
                self.gpu(i)
                    .map_err(|e| GpuError::Query(format!("GPU {i}: {}", describe(&e))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cuda = self.nvml.sys_cuda_driver_version().ok().map(|v| {
            // NVML encodes CUDA 13.0 as 13000.
            format!("{}.{}", v / 1000, (v % 1000) / 10)
        });
        Ok(GpuSnapshot {
            driver_version: self.nvml.sys_driver_version().ok(),
            cuda_driver_version: cuda,
            gpus,
        })
    }

    fn process_memory(&self, pid: u32) -> Result<Option<u64>, GpuError> {
        // Cheaper than a whole snapshot: the trial runner samples this
        // every few tens of milliseconds.
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuError::Query(describe(&e)))?;
        let mut total = None;
        for index in 0..count {
            let device = self
                .nvml
                .device_by_index(index)
                .map_err(|e| GpuError::Query(describe(&e)))?;
            for process in device.running_compute_processes().unwrap_or_default() {
                if process.pid == pid {
                    if let UsedGpuMemory::Used(bytes) = process.used_gpu_memory {
                        *total.get_or_insert(0) += bytes;
                    }
                }
            }
        }
        Ok(total)
    }
}
