//! Direct CUDA driver checks through `cudarc`.
//!
//! The worker reads free/total memory as its own CUDA context sees it, a
//! second opinion beside NVML's per-process figure. (Whether the driver
//! loads at all is [`crate::machine::cuda_device_count`]'s question.)

use crate::machine::CudaError;

/// A handle on the device's primary context (the one Burn's CUDA backend
/// also uses), for free/total memory queries from the worker's main thread.
pub struct ContextProbe {
    context: std::sync::Arc<cudarc::driver::CudaContext>,
}

impl ContextProbe {
    pub fn new(index: u32) -> Result<ContextProbe, CudaError> {
        let context =
            cudarc::driver::CudaContext::new(index as usize).map_err(|e| CudaError::Context {
                index,
                reason: e.to_string(),
            })?;
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
