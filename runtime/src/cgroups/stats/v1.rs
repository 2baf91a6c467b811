//! cgroup v1 counters: cpuacct, memory, blkio, hugetlb.

use std::path::Path;

use super::{
    device, parse, read_keyed, read_numbers, read_optional, read_u64_or, Blkio, BlkioEntry, CpuUsage, Hugetlb, Memory,
    MemoryEntry,
};
use crate::cgroups::CgroupError;

/// cpuacct: total and per-CPU time; kernel/user split from the ns counters where the kernel
/// has them (4.7+), else from cpuacct.stat's ticks.
pub fn cpu_usage(dir: &Path) -> Result<CpuUsage, CgroupError> {
    let mut usage = CpuUsage {
        total: read_u64_or(&dir.join("cpuacct.usage"), 0)?,
        percpu: read_numbers(&dir.join("cpuacct.usage_percpu"))?,
        percpu_kernel: read_numbers(&dir.join("cpuacct.usage_percpu_sys"))?,
        percpu_user: read_numbers(&dir.join("cpuacct.usage_percpu_user"))?,
        ..CpuUsage::default()
    };
    match (read_optional(&dir.join("cpuacct.usage_sys"))?, read_optional(&dir.join("cpuacct.usage_user"))?) {
        (Some(sys), Some(user)) => {
            usage.kernel = parse(&dir.join("cpuacct.usage_sys"), &sys)?;
            usage.user = parse(&dir.join("cpuacct.usage_user"), &user)?;
        }
        _ => {
            let stat = read_keyed(&dir.join("cpuacct.stat"))?;
            let ns_per_tick = 1_000_000_000 / crate::sys::clock_ticks();
            usage.kernel = stat.get("system").copied().unwrap_or(0).saturating_mul(ns_per_tick);
            usage.user = stat.get("user").copied().unwrap_or(0).saturating_mul(ns_per_tick);
        }
    }
    Ok(usage)
}

pub fn memory(dir: &Path) -> Result<Memory, CgroupError> {
    let raw = read_keyed(&dir.join("memory.stat"))?;
    Ok(Memory {
        cache: raw.get("cache").copied().unwrap_or(0),
        usage: entry(dir, "memory")?,
        swap: entry(dir, "memory.memsw")?,
        kernel: entry(dir, "memory.kmem")?,
        kernel_tcp: entry(dir, "memory.kmem.tcp")?,
        raw,
    })
}

/// `PREFIX.{limit_in_bytes,usage_in_bytes,max_usage_in_bytes,failcnt}`, zeros when the kernel
/// lacks them (memsw without swap accounting).
fn entry(dir: &Path, prefix: &str) -> Result<MemoryEntry, CgroupError> {
    let read = |name: &str| read_u64_or(&dir.join(format!("{prefix}.{name}")), 0);
    Ok(MemoryEntry {
        limit: read("limit_in_bytes")?,
        usage: read("usage_in_bytes")?,
        max: read("max_usage_in_bytes")?,
        failcnt: read("failcnt")?,
    })
}

/// The proportional-weight scheduler's counters when it keeps any (BFQ, or CFQ on old
/// kernels), else the throttling layer's, which sees every I/O of the cgroup.
pub fn blkio(dir: &Path) -> Result<Blkio, CgroupError> {
    let read = |prefix: &str| -> Result<Blkio, CgroupError> {
        Ok(Blkio {
            io_service_bytes_recursive: entries(&dir.join(format!("{prefix}_bytes_recursive")))?,
            io_serviced_recursive: entries(&dir.join(format!("{prefix}d_recursive")))?,
        })
    };
    for prefix in ["blkio.bfq.io_service", "blkio.io_service"] {
        let counted = read(prefix)?;
        if counted.io_service_bytes_recursive.iter().chain(&counted.io_serviced_recursive).any(|e| e.value > 0) {
            return Ok(counted);
        }
    }
    read("blkio.throttle.io_service")
}

/// Lines "MAJ:MIN Op value", plus a closing "Total value" that is not per device.
fn entries(path: &Path) -> Result<Vec<BlkioEntry>, CgroupError> {
    let text = read_optional(path)?.unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [dev, op, value] = fields[..] {
            let (major, minor) = device(path, dev)?;
            out.push(BlkioEntry { major, minor, op: op.to_string(), value: parse(path, value)? });
        }
    }
    Ok(out)
}

pub fn hugetlb(dir: &Path, size: &str) -> Result<Hugetlb, CgroupError> {
    let read = |name: &str| read_u64_or(&dir.join(format!("hugetlb.{size}.{name}")), 0);
    Ok(Hugetlb { usage: read("usage_in_bytes")?, max: read("max_usage_in_bytes")?, failcnt: read("failcnt")? })
}
