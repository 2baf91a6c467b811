//! A hosting plan: what one container gets. Parsed from one TOML file (format in
//! config/README.md) and checked field by field, so that a plan that loads is one the kernel
//! takes.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::units::{Number, Rate, Size};
use crate::{toml_file, ConfigError};

/// The CFS period every plan's quota is written against, in microseconds (the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses a CFS quota under 1 ms (cpu.cfs_quota_us / cpu.max).
const MIN_QUOTA_US: u64 = 1_000;
/// Linux's largest NR_CPUS: a plan with more is a typo.
const MAX_CPUS: f64 = 8192.0;
/// v1 cpu.shares' range, which OCI's `shares` uses too (the runtime converts it for v2).
const SHARES: RangeInclusive<i64> = 2..=262_144;
/// The smallest memory limit a plan may have. Not what the kernel needs: measured with this
/// runtime, a busybox `sh -c 'echo hi'` runs under a 512 KiB limit (and dies at 256 KiB), while
/// `ls -R /` (dentries and inodes are charged to the cgroup) is OOM-killed under 8 MiB. The
/// floor is where a plan stops being plausible, so that a unit slip ("6KiB" for "6MiB") is
/// refused: 6 MiB, also Docker's minimum.
pub const MIN_MEMORY: u64 = 6 << 20;

const DESCRIPTION: &str = "description";
const CPUS: &str = "cpu.cpus";
const CPU_SHARES: &str = "cpu.shares";
const MEMORY_LIMIT: &str = "memory.limit";
const MEMORY_SWAP: &str = "memory.swap";
const READ_BPS: &str = "io.read_bps";
const WRITE_BPS: &str = "io.write_bps";
const READ_IOPS: &str = "io.read_iops";
const WRITE_IOPS: &str = "io.write_iops";
const PIDS_LIMIT: &str = "pids.limit";
const DISK_LIMIT: &str = "disk.limit";
/// The smallest writable layer a tenant's disk may have: an ext4 image smaller than this is
/// mostly its own metadata.
pub const MIN_DISK: u64 = 16 << 20;

// The file as written: everything optional here, so that a missing value gets an error
// naming it (serde's would name only the key, not its table).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    description: Option<String>,
    cpu: Option<CpuFile>,
    memory: Option<MemoryFile>,
    io: Option<IoFile>,
    pids: Option<PidsFile>,
    disk: Option<DiskFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiskFile {
    limit: Option<Size>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CpuFile {
    cpus: Option<Number>,
    shares: Option<Number>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MemoryFile {
    limit: Option<Size>,
    swap: Option<Size>,
    merge: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IoFile {
    read_bps: Option<Rate>,
    write_bps: Option<Rate>,
    read_iops: Option<Number>,
    write_iops: Option<Number>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PidsFile {
    limit: Option<Number>,
}

/// A checked plan. Sizes are in bytes, rates in bytes or operations per second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    name: String,
    source: String,
    description: Option<String>,
    cpus: f64,
    shares: Option<u64>,
    memory: u64,
    swap: u64,
    /// Kernel same-page merging (KSM) of the container's anonymous memory.
    merge: bool,
    io: IoLimits,
    pids: u64,
    /// The size of a tenant's writable layer, in bytes (`None`: not limited).
    disk: Option<u64>,
}

/// A plan's block I/O limits, each per device; `None`: not limited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IoLimits {
    read_bps: Option<u64>,
    write_bps: Option<u64>,
    read_iops: Option<u64>,
    write_iops: Option<u64>,
}

impl Plan {
    /// Parses and checks the plan `name` from `text`; `source` names the file in errors.
    pub fn parse(name: &str, text: &str, source: &str) -> Result<Plan, ConfigError> {
        let file: PlanFile = toml_file::parse(text, source)?;
        let check = Check { file: source };
        let cpu = file.cpu.unwrap_or_default();
        let cpus = check.cpus(check.required(CPUS, cpu.cpus)?)?;
        let shares = cpu.shares.map(|n| check.integer(CPU_SHARES, n, SHARES)).transpose()?;
        let memory_file = file.memory.unwrap_or_default();
        let merge = memory_file.merge.unwrap_or(false);
        let (memory, swap) = check.memory(memory_file)?;
        let io = check.io(file.io.unwrap_or_default())?;
        let pids = check.required(PIDS_LIMIT, file.pids.unwrap_or_default().limit)?;
        let pids = check.integer(PIDS_LIMIT, pids, 1..=i64::MAX)?;
        let description = check.description(file.description)?;
        let disk = file.disk.unwrap_or_default().limit.map(|d| check.disk(d)).transpose()?;
        Ok(Plan {
            name: name.to_string(),
            source: source.to_string(),
            description,
            cpus,
            shares,
            memory,
            swap,
            merge,
            io,
            pids,
            disk,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file the plan came from ("built-in plans/NAME.toml" for the embedded ones).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// CPUs of time per period, as written.
    pub fn cpus(&self) -> f64 {
        self.cpus
    }

    /// The CFS quota in microseconds per [`CPU_PERIOD_US`].
    pub fn cpu_quota(&self) -> u64 {
        cpu_quota(self.cpus)
    }

    /// The relative CPU weight (OCI/v1 shares), if the plan sets one.
    pub fn cpu_shares(&self) -> Option<u64> {
        self.shares
    }

    /// The memory limit in bytes.
    pub fn memory(&self) -> u64 {
        self.memory
    }

    /// Swap on top of [`Plan::memory`], in bytes (0: none).
    pub fn swap(&self) -> u64 {
        self.swap
    }

    /// Whether the container's anonymous memory is offered to KSM (`memory.merge`): the
    /// runtime sets PR_SET_MEMORY_MERGE on its processes.
    pub fn memory_merge(&self) -> bool {
        self.merge
    }

    pub fn io(&self) -> &IoLimits {
        &self.io
    }

    /// The most tasks (processes and threads) the container may have.
    pub fn pids(&self) -> u64 {
        self.pids
    }

    /// The size of a tenant's writable layer in bytes, if the plan limits it.
    pub fn disk(&self) -> Option<u64> {
        self.disk
    }
}

impl IoLimits {
    pub fn read_bps(&self) -> Option<u64> {
        self.read_bps
    }

    pub fn write_bps(&self) -> Option<u64> {
        self.write_bps
    }

    pub fn read_iops(&self) -> Option<u64> {
        self.read_iops
    }

    pub fn write_iops(&self) -> Option<u64> {
        self.write_iops
    }

    pub fn is_empty(&self) -> bool {
        *self == IoLimits::default()
    }
}

fn cpu_quota(cpus: f64) -> u64 {
    // Checked to be finite and within 0.01..=MAX_CPUS: the product fits.
    (cpus * CPU_PERIOD_US as f64).round() as u64
}

/// The checks, each naming the file and field it is about.
struct Check<'a> {
    file: &'a str,
}

impl Check<'_> {
    fn invalid(&self, field: &'static str, value: impl std::fmt::Display, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            field,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    fn required<T>(&self, field: &'static str, value: Option<T>) -> Result<T, ConfigError> {
        value.ok_or_else(|| ConfigError::Missing { file: self.file.to_string(), field })
    }

    fn cpus(&self, n: Number) -> Result<f64, ConfigError> {
        let cpus = match n {
            Number::Int(i) => i as f64,
            Number::Float(x) => x,
        };
        let reason = if !cpus.is_finite() {
            "is not a number of CPUs"
        } else if cpus < 0.0 {
            "is negative"
        } else if cpus == 0.0 {
            "is zero: a plan needs some CPU time"
        } else if cpu_quota(cpus.min(MAX_CPUS)) < MIN_QUOTA_US {
            "is below 0.01: the kernel refuses a CPU quota under 1 ms per 100 ms period"
        } else if cpus > MAX_CPUS {
            "is more CPUs than Linux supports (8192)"
        } else {
            return Ok(cpus);
        };
        Err(self.invalid(CPUS, n, reason))
    }

    /// A whole number within `range` (which starts above 0).
    fn integer(&self, field: &'static str, n: Number, range: RangeInclusive<i64>) -> Result<u64, ConfigError> {
        let Number::Int(i) = n else {
            return Err(self.invalid(field, n, "is not a whole number"));
        };
        let reason = match i {
            ..0 => "is negative".to_string(),
            0 => "is zero".to_string(),
            i if i < *range.start() => format!("is below {}", range.start()),
            i if i > *range.end() => format!("is above {}", range.end()),
            i => return Ok(i as u64),
        };
        Err(self.invalid(field, i, &reason))
    }

    /// The limit (at least [`MIN_MEMORY`]) and the swap on top of it.
    fn memory(&self, memory: MemoryFile) -> Result<(u64, u64), ConfigError> {
        let limit = self.required(MEMORY_LIMIT, memory.limit)?;
        if limit.bytes() < MIN_MEMORY {
            return Err(self.invalid(MEMORY_LIMIT, limit, "is below the 6MiB floor"));
        }
        let swap = memory.swap.unwrap_or(Size::from_bytes(0));
        if limit.bytes().checked_add(swap.bytes()).is_none_or(|total| total > i64::MAX as u64) {
            return Err(self.invalid(MEMORY_SWAP, swap, "plus memory.limit is too large"));
        }
        Ok((limit.bytes(), swap.bytes()))
    }

    fn disk(&self, limit: Size) -> Result<u64, ConfigError> {
        if limit.bytes() < MIN_DISK {
            return Err(self.invalid(DISK_LIMIT, limit, "is below the 16MiB floor"));
        }
        Ok(limit.bytes())
    }

    fn description(&self, text: Option<String>) -> Result<Option<String>, ConfigError> {
        match text {
            Some(d) if d.contains('\n') => {
                Err(self.invalid(DESCRIPTION, "(text)", "spans lines: it is one line of a table"))
            }
            Some(d) if d.trim().is_empty() => Ok(None),
            d => Ok(d),
        }
    }

    fn io(&self, io: IoFile) -> Result<IoLimits, ConfigError> {
        // 0 would mean "no limit" to the kernel (v1) or be refused (v2): the key is left out instead.
        let rate = |field, rate: Option<Rate>| match rate.map(Rate::bytes_per_second) {
            Some(0) => Err(self.invalid(field, "0B/s", "is zero: leave the key out for no limit")),
            bps => Ok(bps),
        };
        let ops = |field, n: Option<Number>| n.map(|n| self.integer(field, n, 1..=i64::MAX)).transpose();
        Ok(IoLimits {
            read_bps: rate(READ_BPS, io.read_bps)?,
            write_bps: rate(WRITE_BPS, io.write_bps)?,
            read_iops: ops(READ_IOPS, io.read_iops)?,
            write_iops: ops(WRITE_IOPS, io.write_iops)?,
        })
    }
}

#[cfg(test)]
mod tests;
