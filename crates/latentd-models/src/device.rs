//! What a device is called and how much of its memory is in use.

use candle_core::{Device, DeviceLocation};

/// `cpu`, `cuda:N` or `metal:N`, as `--devices` names it.
pub fn label(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// The memory of an accelerator, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes in use (by this process and any other on the device).
    pub used: u64,
    /// The device's capacity.
    pub total: u64,
}

/// The memory of a CUDA device as its driver reports it; `None` for the CPU (whose
/// memory the process's RSS describes) or when the query fails.
pub fn memory(device: &Device) -> Option<DeviceMemory> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some(DeviceMemory {
                used: total.saturating_sub(free) as u64,
                total: total as u64,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_named_and_reports_no_device_memory() {
        assert_eq!(label(&Device::Cpu), "cpu");
        assert_eq!(memory(&Device::Cpu), None);
    }
}
