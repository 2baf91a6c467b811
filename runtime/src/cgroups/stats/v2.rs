//! cgroup v2 counters: cpu.stat, memory.*, io.stat, hugetlb.*, mapped onto runc's v1-shaped
//! fields as runc maps them.

use std::path::Path;

use super::{
    device, parse, read_keyed, read_optional, read_u64_or, throttling, Blkio, BlkioEntry, Cpu, CpuUsage, Hugetlb,
    Memory, MemoryEntry,
};
use crate::cgroups::CgroupError;

/// cpu.stat in µs; no per-CPU figures exist on v2.
pub fn cpu(dir: &Path) -> Result<Cpu, CgroupError> {
    let stat = read_keyed(&dir.join("cpu.stat"))?;
    let usec = |key: &str| stat.get(key).copied().unwrap_or(0).saturating_mul(1000);
    Ok(Cpu {
        usage: CpuUsage {
            total: usec("usage_usec"),
            kernel: usec("system_usec"),
            user: usec("user_usec"),
            ..CpuUsage::default()
        },
        throttling: throttling(dir, 1000)?,
    })
}

/// usage from memory.current/max/peak; failcnt = memory.events "max" (times the limit was
/// hit); swap as memory+swap like v1's memsw; cache = memory.stat "file".
pub fn memory(dir: &Path) -> Result<Memory, CgroupError> {
    let raw = read_keyed(&dir.join("memory.stat"))?;
    let events = read_keyed(&dir.join("memory.events"))?;
    let usage = MemoryEntry {
        limit: read_u64_or(&dir.join("memory.max"), u64::MAX)?,
        usage: read_u64_or(&dir.join("memory.current"), 0)?,
        max: read_u64_or(&dir.join("memory.peak"), 0)?,
        failcnt: events.get("max").copied().unwrap_or(0),
    };
    let swap = match read_optional(&dir.join("memory.swap.current"))? {
        Some(current) => MemoryEntry {
            limit: read_u64_or(&dir.join("memory.swap.max"), u64::MAX)?.saturating_add(usage.limit),
            usage: parse::<u64>(&dir.join("memory.swap.current"), &current)?.saturating_add(usage.usage),
            max: read_u64_or(&dir.join("memory.swap.peak"), 0)?.saturating_add(usage.max),
            failcnt: read_keyed(&dir.join("memory.swap.events"))?.get("max").copied().unwrap_or(0),
        },
        None => MemoryEntry::default(),
    };
    Ok(Memory { cache: raw.get("file").copied().unwrap_or(0), usage, swap, raw, ..Memory::default() })
}

/// io.stat lines "MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N".
pub fn blkio(dir: &Path) -> Result<Blkio, CgroupError> {
    let path = dir.join("io.stat");
    let text = read_optional(&path)?.unwrap_or_default();
    let mut blkio = Blkio::default();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(dev) = fields.next() else { continue };
        let (major, minor) = device(&path, dev)?;
        for field in fields {
            let Some((key, value)) = field.split_once('=') else { continue };
            let (list, op) = match key {
                "rbytes" => (&mut blkio.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut blkio.io_service_bytes_recursive, "Write"),
                "rios" => (&mut blkio.io_serviced_recursive, "Read"),
                "wios" => (&mut blkio.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry { major, minor, op: op.to_string(), value: parse(&path, value)? });
        }
    }
    Ok(blkio)
}

/// failcnt = hugetlb.SIZE.events "max"; v2 keeps no maximum usage.
pub fn hugetlb(dir: &Path, size: &str) -> Result<Hugetlb, CgroupError> {
    let events = read_keyed(&dir.join(format!("hugetlb.{size}.events")))?;
    Ok(Hugetlb {
        usage: read_u64_or(&dir.join(format!("hugetlb.{size}.current")), 0)?,
        max: 0,
        failcnt: events.get("max").copied().unwrap_or(0),
    })
}
