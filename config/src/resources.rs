//! A plan as OCI `linux.resources` (and an annotation), and its merge into a container's config.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    Linux, LinuxBlockIo, LinuxPids, LinuxResources, LinuxThrottleDevice, LinuxThrottleDeviceBuilder, Spec,
};

use crate::plan::CPU_PERIOD_US;
use crate::{BlockDevice, ConfigError, HostConfig, Plan};

impl Plan {
    /// The resources this plan sets, its I/O limits on each of `disks`. OCI's memory.swap is
    /// memory and swap together (v1's memsw; the runtime derives v2's swap.max from it, as runc
    /// does), so it is the plan's limit plus its swap.
    pub fn resources(&self, disks: &[BlockDevice]) -> LinuxResources {
        let mut r = LinuxResources::default();
        let mut cpu = oci_spec::runtime::LinuxCpu::default();
        cpu.set_quota(Some(self.cpu_quota() as i64));
        cpu.set_period(Some(CPU_PERIOD_US));
        cpu.set_shares(self.cpu_shares());
        r.set_cpu(Some(cpu));
        let mut memory = oci_spec::runtime::LinuxMemory::default();
        // Plan::parse keeps memory + swap within i64.
        memory.set_limit(Some(self.memory() as i64));
        memory.set_swap(Some((self.memory() + self.swap()) as i64));
        r.set_memory(Some(memory));
        let mut pids = LinuxPids::default();
        pids.set_limit(self.pids() as i64);
        r.set_pids(Some(pids));
        if !self.io().is_empty() && !disks.is_empty() {
            r.set_block_io(Some(self.block_io(disks)));
        }
        r
    }

    fn block_io(&self, disks: &[BlockDevice]) -> LinuxBlockIo {
        let throttle = |rate: Option<u64>| {
            rate.map(|rate| {
                disks
                    .iter()
                    .map(|d| {
                        LinuxThrottleDeviceBuilder::default()
                            .major(i64::from(d.major()))
                            .minor(i64::from(d.minor()))
                            .rate(rate)
                            .build()
                            // The struct has no setters; its builder fails only on a field
                            // left unset, and all three are set.
                            .expect("every LinuxThrottleDevice field is set")
                    })
                    .collect()
            })
        };
        let io = self.io();
        let mut block_io = LinuxBlockIo::default();
        block_io.set_throttle_read_bps_device(throttle(io.read_bps()));
        block_io.set_throttle_write_bps_device(throttle(io.write_bps()));
        block_io.set_throttle_read_iops_device(throttle(io.read_iops()));
        block_io.set_throttle_write_iops_device(throttle(io.write_iops()));
        block_io
    }
}

/// The annotation that asks the runtime to offer the container's anonymous memory to the
/// kernel's same-page merging (KSM): "true" or "false". It is an annotation because OCI has no
/// field for it; a plan with `memory.merge = true` sets it.
pub const MEMORY_MERGE_ANNOTATION: &str = "org.warren.memory.merge";

/// Writes `plan` into `spec`: its linux.resources as [`apply_plan_to_resources`] does, and its
/// annotations as [`apply_plan_to_annotations`] does. On error `spec` is unchanged.
pub fn apply_plan(spec: &mut Spec, plan: &Plan, host: &HostConfig, rootfs: &Path) -> Result<(), ConfigError> {
    let mut resources = spec.linux().as_ref().and_then(|l| l.resources().clone()).unwrap_or_default();
    apply_plan_to_resources(&mut resources, plan, host, rootfs)?;
    spec.linux_mut().get_or_insert_with(Linux::default).set_resources(Some(resources));
    // A config without annotations gets none unless the plan needs one.
    if plan.memory_merge() || spec.annotations().is_some() {
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        apply_plan_to_annotations(&mut annotations, plan);
        spec.set_annotations(Some(annotations));
    }
    Ok(())
}

/// Sets [`MEMORY_MERGE_ANNOTATION`] to "true" when `plan` merges memory and removes it when
/// not, so that applying a plan again (or another one) gives exactly that plan's config.
pub fn apply_plan_to_annotations(annotations: &mut HashMap<String, String>, plan: &Plan) {
    if plan.memory_merge() {
        annotations.insert(MEMORY_MERGE_ANNOTATION.to_string(), "true".to_string());
    } else {
        annotations.remove(MEMORY_MERGE_ANNOTATION);
    }
}

/// Writes `plan` over `resources`. The plan's values win; everything else there (devices,
/// cpuset, memory reservation, other disks' throttles, ...) stays. The I/O limits go to the
/// disks of `host`'s io.devices, "auto" being the disk under `rootfs`; a plan without I/O
/// limits needs no disk. On error `resources` is unchanged.
pub fn apply_plan_to_resources(
    resources: &mut LinuxResources,
    plan: &Plan,
    host: &HostConfig,
    rootfs: &Path,
) -> Result<(), ConfigError> {
    let disks = if plan.io().is_empty() { Vec::new() } else { host.io_devices(rootfs)? };
    merge(resources, &plan.resources(&disks));
    Ok(())
}

/// Writes what `plan` sets over `into`, field by field.
fn merge(into: &mut LinuxResources, plan: &LinuxResources) {
    if let Some(p) = plan.cpu() {
        let mut cpu = into.cpu().clone().unwrap_or_default();
        cpu.set_quota(p.quota().or(cpu.quota()));
        cpu.set_period(p.period().or(cpu.period()));
        cpu.set_shares(p.shares().or(cpu.shares()));
        into.set_cpu(Some(cpu));
    }
    if let Some(p) = plan.memory() {
        let mut memory = into.memory().unwrap_or_default();
        memory.set_limit(p.limit().or(memory.limit()));
        memory.set_swap(p.swap().or(memory.swap()));
        into.set_memory(Some(memory));
    }
    if plan.pids().is_some() {
        into.set_pids(*plan.pids());
    }
    if let Some(p) = plan.block_io() {
        let mut io = into.block_io().clone().unwrap_or_default();
        io.set_throttle_read_bps_device(replace(io.throttle_read_bps_device(), p.throttle_read_bps_device()));
        io.set_throttle_write_bps_device(replace(io.throttle_write_bps_device(), p.throttle_write_bps_device()));
        io.set_throttle_read_iops_device(replace(io.throttle_read_iops_device(), p.throttle_read_iops_device()));
        io.set_throttle_write_iops_device(replace(io.throttle_write_iops_device(), p.throttle_write_iops_device()));
        into.set_block_io(Some(io));
    }
}

/// `old`'s throttles for disks `new` does not name, then `new`'s.
fn replace(
    old: &Option<Vec<LinuxThrottleDevice>>,
    new: &Option<Vec<LinuxThrottleDevice>>,
) -> Option<Vec<LinuxThrottleDevice>> {
    let Some(new) = new else {
        return old.clone();
    };
    let named = |t: &LinuxThrottleDevice| new.iter().any(|n| (n.major(), n.minor()) == (t.major(), t.minor()));
    let kept = old.iter().flatten().filter(|t| !named(t)).copied();
    Some(kept.chain(new.iter().copied()).collect())
}

#[cfg(test)]
mod tests;
