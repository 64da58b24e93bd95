//! Placement: which queued jobs start now, and on which device. One search
//! per device at a time (trials never share a GPU, or their memory and
//! speed figures would be each other's), searches on different devices in
//! parallel, at most `max_concurrent_jobs` in all.
//!
//! Fairness: the queue is served in arrival order (a changed or retuned
//! spec joins at the back), and a job waiting for a busy device does not
//! hold up the jobs behind it that want a free one.

use std::collections::HashSet;

use crate::machine::DeviceSlot;
use crate::spec::DeviceChoice;
use crate::trial::TrialDevice;

/// What the scheduler does next.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Jobs to start now, with their device.
    pub start: Vec<(String, TrialDevice)>,
    /// Jobs that ask for a device this machine does not have.
    pub unservable: Vec<String>,
}

/// Assigns queued jobs (in queue order) to free devices.
pub fn plan(
    queue: &[(String, DeviceChoice)],
    devices: &[DeviceSlot],
    busy: &HashSet<TrialDevice>,
    max_concurrent: usize,
) -> Plan {
    let has_gpu = crate::machine::has_gpu(devices);
    let mut taken = busy.clone();
    let mut plan = Plan::default();
    for (name, choice) in queue {
        let mut candidates = devices.iter().filter(|d| d.device.serves(*choice, has_gpu));
        let Some(first) = candidates.next() else {
            plan.unservable.push(name.clone());
            continue;
        };
        if taken.len() >= max_concurrent {
            continue;
        }
        let free = std::iter::once(first)
            .chain(candidates)
            .find(|d| !taken.contains(&d.device));
        if let Some(slot) = free {
            taken.insert(slot.device);
            plan.start.push((name.clone(), slot.device));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cuda(index: u32) -> DeviceSlot {
        DeviceSlot {
            device: TrialDevice::Cuda(index),
            model: "NVIDIA H100".into(),
        }
    }

    fn cpu() -> DeviceSlot {
        DeviceSlot {
            device: TrialDevice::Cpu,
            model: "cpu".into(),
        }
    }

    fn queue(entries: &[(&str, DeviceChoice)]) -> Vec<(String, DeviceChoice)> {
        entries.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn one_search_per_device_and_auto_jobs_spread_over_gpus() {
        let devices = [cuda(0), cuda(1), cpu()];
        let q = queue(&[
            ("a", DeviceChoice::Auto),
            ("b", DeviceChoice::Auto),
            ("c", DeviceChoice::Auto),
            ("d", DeviceChoice::Cpu),
        ]);
        let plan = plan(&q, &devices, &HashSet::new(), 16);
        assert_eq!(
            plan.start,
            vec![
                ("a".into(), TrialDevice::Cuda(0)),
                ("b".into(), TrialDevice::Cuda(1)),
                ("d".into(), TrialDevice::Cpu),
            ]
        );
        assert!(plan.unservable.is_empty());
    }

    #[test]
    fn a_job_waiting_for_a_busy_device_does_not_block_the_queue() {
        let devices = [cuda(0), cuda(1), cpu()];
        let q = queue(&[
            ("pinned", DeviceChoice::Cuda(0)),
            ("any", DeviceChoice::Auto),
        ]);
        let busy = HashSet::from([TrialDevice::Cuda(0)]);
        let plan = plan(&q, &devices, &busy, 16);
        assert_eq!(plan.start, vec![("any".into(), TrialDevice::Cuda(1))]);
    }

    #[test]
    fn concurrency_is_capped_in_queue_order() {
        let devices = [cuda(0), cuda(1), cuda(2), cpu()];
        let q = queue(&[
            ("a", DeviceChoice::Auto),
            ("b", DeviceChoice::Auto),
            ("c", DeviceChoice::Auto),
        ]);
        let plan1 = plan(&q, &devices, &HashSet::new(), 2);
        assert_eq!(plan1.start.len(), 2);
        assert_eq!(plan1.start[0].0, "a");
        assert_eq!(plan1.start[1].0, "b");
        let busy = HashSet::from([TrialDevice::Cuda(0), TrialDevice::Cuda(1)]);
        assert!(plan(&q[2..], &devices, &busy, 2).start.is_empty());
    }

    #[test]
    fn auto_means_cpu_only_without_gpus_and_missing_devices_are_reported() {
        let q = queue(&[("a", DeviceChoice::Auto), ("g", DeviceChoice::Cuda(3))]);
        let plan1 = plan(&q, &[cpu()], &HashSet::new(), 16);
        assert_eq!(plan1.start, vec![("a".into(), TrialDevice::Cpu)]);
        assert_eq!(plan1.unservable, vec!["g".to_string()]);
        // With a GPU, auto never falls back to the (busy-free) CPU.
        let busy = HashSet::from([TrialDevice::Cuda(0)]);
        let plan2 = plan(&q[..1], &[cuda(0), cpu()], &busy, 16);
        assert!(plan2.start.is_empty());
    }
}
