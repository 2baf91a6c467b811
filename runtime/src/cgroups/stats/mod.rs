//! Usage counters of a container's cgroup, in the JSON shape of `runc events --stats` (field
//! names and units as runc prints them, so that tools reading runc's output read ours).
//!
//! Each controller is read by a plain function of its directory ([`v1`], [`v2`]); counters a
//! kernel does not offer (swap accounting off, no cpu.stat throttling) read as zero. A
//! controller that is not available to the container leaves its section empty.

mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::resources::{find_dir, Dir};
use super::{Cgroup, CgroupError};

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    /// By page size as the kernel names it ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, Hugetlb>,
    /// Not measured; present (empty) because runc always prints it.
    pub intel_rdt: Empty,
    /// Not measured (null): the container's interfaces live in its own network namespace.
    pub network_interfaces: Option<Vec<Empty>>,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Empty {}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds. The per-CPU lists exist on v1 (cpuacct) only.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct CpuUsage {
    #[serde(skip_serializing_if = "is_zero")]
    pub total: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

/// `throttled_time` in nanoseconds.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Throttling {
    #[serde(skip_serializing_if = "is_zero")]
    pub periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_periods: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled_time: u64,
}

/// The CPUs and memory nodes the container may use, and (v1) the cpuset flags.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct CpuSet {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

/// Bytes. `swap` is memory+swap, as v1's memsw counters are (v2 values are summed to match).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    #[serde(skip_serializing_if = "is_zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as the kernel prints it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

/// `limit` is u64::MAX (v2 "max") or the kernel's page-rounded maximum (v1) when unlimited.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

/// `limit` 0 = unlimited.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Pids {
    #[serde(skip_serializing_if = "is_zero")]
    pub current: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub limit: u64,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Blkio {
    /// Bytes moved, per device and operation ("Read", "Write", "Sync", "Async", "Discard", "Total").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    /// Operations done, same keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct Hugetlb {
    #[serde(skip_serializing_if = "is_zero")]
    pub usage: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max: u64,
    pub failcnt: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Reads every controller the container has; see the module documentation.
pub fn collect(cgroup: &Cgroup) -> Result<Stats, CgroupError> {
    let mut stats = Stats::default();
    match find_dir(cgroup, "cpuacct", Some("cpu"))? {
        Some(Dir::V1(dir)) => stats.cpu.usage = v1::cpu_usage(dir)?,
        Some(Dir::V2(dir)) => stats.cpu = v2::cpu(dir)?,
        None => {}
    }
    if let Some(Dir::V1(dir)) = find_dir(cgroup, "cpu", None)? {
        stats.cpu.throttling = throttling(dir, 1)?;
    }
    if let Some(dir) = find_dir(cgroup, "cpuset", Some("cpuset"))? {
        stats.cpuset = cpuset(dir)?;
    }
    match find_dir(cgroup, "memory", Some("memory"))? {
        Some(Dir::V1(dir)) => stats.memory = v1::memory(dir)?,
        Some(Dir::V2(dir)) => stats.memory = v2::memory(dir)?,
        None => {}
    }
    if let Some(dir) = find_dir(cgroup, "pids", Some("pids"))? {
        stats.pids = pids(dir.path())?;
    }
    match find_dir(cgroup, "blkio", Some("io"))? {
        Some(Dir::V1(dir)) => stats.blkio = v1::blkio(dir)?,
        Some(Dir::V2(dir)) => stats.blkio = v2::blkio(dir)?,
        None => {}
    }
    if let Some(dir) = find_dir(cgroup, "hugetlb", Some("hugetlb"))? {
        stats.hugetlb = hugetlb(dir)?;
    }
    Ok(stats)
}

/// cpu.stat's throttling counters; `time_unit` turns its time into nanoseconds (v1
/// `throttled_time` is in ns, v2 `throttled_usec` in µs).
fn throttling(dir: &Path, time_unit: u64) -> Result<Throttling, CgroupError> {
    let stat = read_keyed(&dir.join("cpu.stat"))?;
    let time = stat.get("throttled_time").or_else(|| stat.get("throttled_usec")).copied().unwrap_or(0);
    Ok(Throttling {
        periods: stat.get("nr_periods").copied().unwrap_or(0),
        throttled_periods: stat.get("nr_throttled").copied().unwrap_or(0),
        throttled_time: time.saturating_mul(time_unit),
    })
}

fn pids(dir: &Path) -> Result<Pids, CgroupError> {
    let limit = read_u64_or(&dir.join("pids.max"), 0)?;
    Ok(Pids { current: read_u64_or(&dir.join("pids.current"), 0)?, limit: if limit == u64::MAX { 0 } else { limit } })
}

/// v1 reads the configured sets and flags; v2 the effective sets (the configured ones are
/// empty when not set, meaning "the parent's").
fn cpuset(dir: Dir) -> Result<CpuSet, CgroupError> {
    let (cpus, mems) = match dir {
        Dir::V1(_) => ("cpuset.cpus", "cpuset.mems"),
        Dir::V2(_) => ("cpuset.cpus.effective", "cpuset.mems.effective"),
    };
    let path = dir.path();
    let mut set =
        CpuSet { cpus: read_list(&path.join(cpus))?, mems: read_list(&path.join(mems))?, ..CpuSet::default() };
    if let Dir::V1(_) = dir {
        let flag = |name: &str| read_u64_or(&path.join(name), 0);
        set.cpu_exclusive = flag("cpuset.cpu_exclusive")?;
        set.mem_hardwall = flag("cpuset.mem_hardwall")?;
        set.mem_exclusive = flag("cpuset.mem_exclusive")?;
        set.memory_migrate = flag("cpuset.memory_migrate")?;
        set.memory_spread_page = flag("cpuset.memory_spread_page")?;
        set.memory_spread_slab = flag("cpuset.memory_spread_slab")?;
        set.memory_pressure = flag("cpuset.memory_pressure")?;
        set.sched_load_balance = flag("cpuset.sched_load_balance")?;
        let level = read_optional(&path.join("cpuset.sched_relax_domain_level"))?;
        set.sched_relax_domain_level = level.map_or(Ok(0), |text| parse(&path.join("cpuset"), &text))?;
    }
    Ok(set)
}

/// Reads one page size's counters from a directory.
type HugetlbReader = fn(&Path, &str) -> Result<Hugetlb, CgroupError>;

/// One entry per page size the kernel offers (the files that exist name them).
fn hugetlb(dir: Dir) -> Result<BTreeMap<String, Hugetlb>, CgroupError> {
    let path = dir.path();
    let (limit_suffix, reader): (&str, HugetlbReader) = match dir {
        Dir::V1(_) => (".limit_in_bytes", v1::hugetlb),
        Dir::V2(_) => (".max", v2::hugetlb),
    };
    let entries = std::fs::read_dir(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })?;
    let mut sizes = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(size) = name.strip_prefix("hugetlb.").and_then(|n| n.strip_suffix(limit_suffix)) else {
            continue;
        };
        // "hugetlb.2MB.rsvd.max" and the like are reservations, not page sizes.
        if !size.contains('.') {
            sizes.insert(size.to_string(), reader(path, size)?);
        }
    }
    Ok(sizes)
}

/// A file's content, None when the kernel does not offer it.
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read { path: path.to_path_buf(), source }),
    }
}

fn parse<T: std::str::FromStr>(path: &Path, text: &str) -> Result<T, CgroupError> {
    let text = text.trim();
    text.parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), line: text.to_string() })
}

/// A file holding one number ("max" = u64::MAX); `absent` when the file does not exist.
fn read_u64_or(path: &Path, absent: u64) -> Result<u64, CgroupError> {
    match read_optional(path)? {
        None => Ok(absent),
        Some(text) if text.trim() == "max" => Ok(u64::MAX),
        Some(text) => parse(path, &text),
    }
}

/// A file of "key value" lines (cpu.stat, memory.stat, memory.events); empty when absent.
fn read_keyed(path: &Path) -> Result<BTreeMap<String, u64>, CgroupError> {
    let text = read_optional(path)?.unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match line.split_once(' ') {
            Some((key, value)) => Ok((key.to_string(), parse(path, value)?)),
            None => Err(CgroupError::Parse { path: path.to_path_buf(), line: line.to_string() }),
        })
        .collect()
}

/// A file of whitespace-separated numbers (cpuacct.usage_percpu); empty when absent.
fn read_numbers(path: &Path) -> Result<Vec<u64>, CgroupError> {
    let text = read_optional(path)?.unwrap_or_default();
    text.split_whitespace().map(|n| parse(path, n)).collect()
}

/// A kernel list ("0-3,8,10-11") as its members.
fn read_list(path: &Path) -> Result<Vec<u16>, CgroupError> {
    let text = read_optional(path)?.unwrap_or_default();
    let mut members = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (u16, u16) = (parse(path, first)?, parse(path, last)?);
        members.extend(first..=last);
    }
    Ok(members)
}

/// A "MAJ:MIN" device key.
fn device(path: &Path, key: &str) -> Result<(u64, u64), CgroupError> {
    let bad = || CgroupError::Parse { path: path.to_path_buf(), line: key.to_string() };
    let (major, minor) = key.split_once(':').ok_or_else(bad)?;
    Ok((major.parse().map_err(|_| bad())?, minor.parse().map_err(|_| bad())?))
}

impl Cgroup {
    /// The container's usage counters (see [`Stats`]).
    pub fn stats(&self) -> Result<Stats, CgroupError> {
        collect(self)
    }
}
