//! Direct CUDA driver checks through `cudarc`.
//!
//! Burn 0.21 panics on the first use of a CUDA device where the driver
//! library is missing, so batchd asks the driver itself before any Burn code
//! touches a device. The worker also reads free/total memory as its own
//! CUDA context sees it, a second opinion beside NVML's per-process figure.

use cudarc::driver::result;

/// Whether the CUDA driver loads and how many devices it sees.
pub fn device_count() -> Result<u32, String> {
    // SAFETY: only probes whether the shared library can be opened.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    if !present {
        return Err("the CUDA driver library (libcuda.so) is not installed".into());
    }
    result::init().map_err(|e| format!("the CUDA driver failed to initialize: {e}"))?;
    let count =
        result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    Ok(count.max(0) as u32)
}

/// Checks that CUDA device `index` exists, with a clear message otherwise.
pub fn check_device(index: u32) -> Result<(), String> {
    let count = device_count()?;
    if index >= count {
        return Err(format!(
            "cuda:{index} does not exist: the driver sees {count} CUDA device{}",
            if count == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

/// A handle on the device's primary context (the one Burn's CUDA backend
/// also uses), for free/total memory queries from the worker's main thread.
pub struct ContextProbe {
    context: std::sync::Arc<cudarc::driver::CudaContext>,
}

impl ContextProbe {
    pub fn new(index: u32) -> Result<ContextProbe, String> {
        let context = cudarc::driver::CudaContext::new(index as usize)
            .map_err(|e| format!("cannot open a CUDA context on cuda:{index}: {e}"))?;
        Ok(ContextProbe { context })
    }

    /// `(free, total)` device memory in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        self.context
            .mem_get_info()
            .ok()
            .map(|(free, total)| (free as u64, total as u64))
    }

    /// The device's name as the driver reports it.
    pub fn name(&self) -> Option<String> {
        self.context.name().ok()
    }
}
