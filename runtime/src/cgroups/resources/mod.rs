//! OCI `linux.resources` (all but `devices`, see [`super::devices`]) written to a container's
//! cgroup files.
//!
//! Each controller has a module of plain functions of (resources, directory), so that they run
//! against a fake cgroupfs as well. [`apply`] first works out the directory serving each
//! controller the resources use, then validates everything, and only then writes: input that
//! is obviously wrong leaves the cgroup as it was.

mod blkio;
mod cpu;
mod cpuset;
mod hugetlb;
mod memory;
mod network;
mod pids;
mod rdma;
mod unified;

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxInterfacePriority, LinuxMemory, LinuxPids, LinuxRdma,
    LinuxResources,
};

use super::{fs, v1, Cgroup, CgroupError};

/// Where one controller's files are, and which interface they speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

impl<'a> Dir<'a> {
    pub fn path(self) -> &'a Path {
        match self {
            Dir::V1(path) | Dir::V2(path) => path,
        }
    }

    pub fn is_v2(self) -> bool {
        matches!(self, Dir::V2(_))
    }

    /// Whether the kernel offers `file` here (optional knobs: cpu.idle, burst, swap...).
    pub fn has(self, file: &str) -> bool {
        self.path().join(file).exists()
    }
}

/// One controller's share of the resources, with the directory serving it.
enum Step<'a> {
    Cpuset(&'a LinuxCpu, Dir<'a>),
    Memory(&'a LinuxMemory, Dir<'a>),
    Cpu(&'a LinuxCpu, Dir<'a>),
    Pids(&'a LinuxPids, Dir<'a>),
    BlockIo(&'a LinuxBlockIo, Dir<'a>),
    Hugetlb(&'a [LinuxHugepageLimit], Dir<'a>),
    NetCls(u32, &'a Path),
    NetPrio(&'a [LinuxInterfacePriority], &'a Path),
    Rdma(&'a HashMap<String, LinuxRdma>, Dir<'a>),
    /// None: the host has no cgroup2 hierarchy.
    Unified(&'a HashMap<String, String>, Option<&'a Path>),
}

/// See [`Cgroup::apply_resources`].
pub fn apply(cgroup: &Cgroup, resources: &LinuxResources) -> Result<(), CgroupError> {
    let steps = plan(cgroup, resources)?;
    for step in &steps {
        step.validate()?;
    }
    for step in &steps {
        step.apply()?;
    }
    Ok(())
}

/// Like [`apply`], but all-or-nothing for a live cgroup (`update`): the old content of every
/// file is saved just before its first write, and when a write fails the saved values are
/// written back, newest first (the reverse order undoes ordering constraints such as
/// memory.limit_in_bytes <= memory.memsw.limit_in_bytes the way they were met).
pub fn apply_atomic(cgroup: &Cgroup, resources: &LinuxResources) -> Result<(), CgroupError> {
    let steps = plan(cgroup, resources)?;
    for step in &steps {
        step.validate()?;
    }
    JOURNAL.with(|j| *j.borrow_mut() = Some(Vec::new()));
    let applied = steps.iter().try_for_each(Step::apply);
    let journal = JOURNAL.with(|j| j.borrow_mut().take()).unwrap_or_default();
    let Err(error) = applied else {
        return Ok(());
    };
    let failed: Vec<PathBuf> =
        journal.iter().rev().filter(|(path, old)| restore(path, old).is_err()).map(|(path, _)| path.clone()).collect();
    Err(CgroupError::RolledBack { cause: Box::new(error), restored: journal.len() - failed.len(), failed })
}

thread_local! {
    /// While [`apply_atomic`] runs: each file written so far with its content before the
    /// first write. Kept here rather than passed down so that the controllers' write paths
    /// ([`set`], [`add`]) stay the same for create and update.
    static JOURNAL: RefCell<Option<Vec<(PathBuf, String)>>> = const { RefCell::new(None) };
}

/// Saves `path`'s content in the journal (if one is kept) before its first write. A missing
/// file fails as its write would; other read errors leave it out (write-only knobs such as
/// memory.reclaim have no value to restore).
fn journal_before(path: &Path, value: &str, field: &'static str) -> Result<(), CgroupError> {
    let recorded = JOURNAL.with(|j| j.borrow().as_ref().map(|entries| entries.iter().any(|(p, _)| p == path)));
    if recorded != Some(false) {
        return Ok(());
    }
    match fs::read(path) {
        Ok(old) => JOURNAL.with(|j| j.borrow_mut().as_mut().map(|entries| entries.push((path.to_path_buf(), old)))),
        Err(CgroupError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let path = path.to_path_buf();
            return Err(CgroupError::Apply { field, path, value: value.to_string(), source });
        }
        Err(e) => {
            log::debug!("{field}: not restorable if the update fails: {e}");
            None
        }
    };
    Ok(())
}

/// Writes a saved content back. Files read as one value take it back as is; list files
/// (io.max, blkio throttles, ifpriomap) take one line per write; memory.oom_control reads as
/// a table of which only oom_kill_disable is writable.
fn restore(path: &Path, old: &str) -> Result<(), CgroupError> {
    if path.file_name().is_some_and(|name| name == "memory.oom_control") {
        let disabled = old.lines().find_map(|l| l.strip_prefix("oom_kill_disable ")).unwrap_or("0");
        return fs::write(path, disabled.trim());
    }
    let result = old.lines().filter(|l| !l.trim().is_empty()).try_for_each(|line| fs::write(path, line.trim()));
    if let Err(e) = &result {
        log::warn!("cannot restore {path:?}: {e}");
    }
    result
}

/// The steps for what the resources set, in runc's order (unified last: it overrides the
/// rest). Fails if a controller they need is not available.
fn plan<'a>(cgroup: &'a Cgroup, r: &'a LinuxResources) -> Result<Vec<Step<'a>>, CgroupError> {
    let at = |v1_name, v2_name, field| locate(cgroup, v1_name, v2_name, field);
    let mut steps = Vec::new();
    if let Some(cpu) = r.cpu() {
        if let Some(field) = cpuset::first_set(cpu) {
            steps.push(Step::Cpuset(cpu, at("cpuset", Some("cpuset"), field)?));
        }
    }
    if let Some(mem) = r.memory() {
        if let Some(field) = memory::first_set(mem) {
            steps.push(Step::Memory(mem, at("memory", Some("memory"), field)?));
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(field) = cpu::first_set(cpu) {
            steps.push(Step::Cpu(cpu, at("cpu", Some("cpu"), field)?));
        }
    }
    if let Some(pids) = r.pids() {
        steps.push(Step::Pids(pids, at("pids", Some("pids"), pids::LIMIT)?));
    }
    if let Some(io) = r.block_io() {
        if let Some(field) = blkio::first_set(io) {
            steps.push(Step::BlockIo(io, at("blkio", Some("io"), field)?));
        }
    }
    if let Some(limits) = r.hugepage_limits().as_deref().filter(|l| !l.is_empty()) {
        steps.push(Step::Hugetlb(limits, at("hugetlb", Some("hugetlb"), hugetlb::PAGE_SIZE)?));
    }
    if let Some(net) = r.network() {
        if let Some(class_id) = net.class_id() {
            steps.push(Step::NetCls(class_id, at("net_cls", None, network::CLASS_ID)?.path()));
        }
        if let Some(priorities) = net.priorities().as_deref().filter(|p| !p.is_empty()) {
            steps.push(Step::NetPrio(priorities, at("net_prio", None, network::PRIORITIES)?.path()));
        }
    }
    if let Some(limits) = r.rdma().as_ref().filter(|l| !l.is_empty()) {
        steps.push(Step::Rdma(limits, at("rdma", Some("rdma"), rdma::FIELD)?));
    }
    if let Some(values) = r.unified().as_ref().filter(|v| !v.is_empty()) {
        steps.push(Step::Unified(values, cgroup.v2_dir()));
    }
    Ok(steps)
}

/// The directory serving a controller (`v1_name`; `v2_name` None: a v1-only one), see
/// [`find_dir`]. `field` is the OCI field that needs it, for the error.
fn locate<'a>(
    cgroup: &'a Cgroup,
    v1_name: &'static str,
    v2_name: Option<&str>,
    field: &'static str,
) -> Result<Dir<'a>, CgroupError> {
    if let Some(dir) = find_dir(cgroup, v1_name, v2_name)? {
        return Ok(dir);
    }
    let v2_dir = cgroup.v2_dir();
    let path = v2_dir.or_else(|| cgroup.dirs().first().copied()).map(Path::to_path_buf).unwrap_or_default();
    Err(CgroupError::ControllerUnavailable { field, controller: v1_name, path })
}

/// The directory serving a controller: its v1 hierarchy if mounted, else the cgroup2 dir (v2,
/// or unified on hybrid hosts, where the controllers v1 has not taken live) if its
/// cgroup.controllers lists `v2_name`. None when neither has it.
pub(super) fn find_dir<'a>(
    cgroup: &'a Cgroup,
    v1_name: &str,
    v2_name: Option<&str>,
) -> Result<Option<Dir<'a>>, CgroupError> {
    if let Cgroup::V1 { paths, .. } = cgroup {
        if let Some(dir) = v1::find(paths, v1_name) {
            return Ok(Some(Dir::V1(dir)));
        }
    }
    if let (Some(dir), Some(name)) = (cgroup.v2_dir(), v2_name) {
        let listed = fs::read(&dir.join("cgroup.controllers"))?;
        if listed.split_whitespace().any(|c| c == name) {
            return Ok(Some(Dir::V2(dir)));
        }
    }
    Ok(None)
}

impl Step<'_> {
    fn validate(&self) -> Result<(), CgroupError> {
        match *self {
            Step::Cpuset(cpu, dir) => cpuset::validate(cpu, dir),
            Step::Memory(mem, dir) => memory::validate(mem, dir),
            Step::Cpu(cpu, dir) => cpu::validate(cpu, dir),
            Step::Pids(..) | Step::NetCls(..) => Ok(()),
            Step::BlockIo(io, dir) => blkio::validate(io, dir),
            Step::Hugetlb(limits, dir) => hugetlb::validate(limits, dir),
            Step::NetPrio(priorities, _) => network::validate(priorities),
            Step::Rdma(limits, _) => rdma::validate(limits),
            Step::Unified(values, dir) => unified::validate(values, dir),
        }
    }

    fn apply(&self) -> Result<(), CgroupError> {
        match *self {
            Step::Cpuset(cpu, dir) => cpuset::apply(cpu, dir.path()),
            Step::Memory(mem, Dir::V1(dir)) => memory::apply_v1(mem, dir),
            Step::Memory(mem, Dir::V2(dir)) => memory::apply_v2(mem, dir),
            Step::Cpu(cpu, Dir::V1(dir)) => cpu::apply_v1(cpu, dir),
            Step::Cpu(cpu, Dir::V2(dir)) => cpu::apply_v2(cpu, dir),
            Step::Pids(pids, dir) => pids::apply(pids, dir.path()),
            Step::BlockIo(io, Dir::V1(dir)) => blkio::apply_v1(io, dir),
            Step::BlockIo(io, Dir::V2(dir)) => blkio::apply_v2(io, dir),
            Step::Hugetlb(limits, dir) => hugetlb::apply(limits, dir),
            Step::NetCls(class_id, dir) => network::apply_class_id(class_id, dir),
            Step::NetPrio(priorities, dir) => network::apply_priorities(priorities, dir),
            Step::Rdma(limits, dir) => rdma::apply(limits, dir.path()),
            Step::Unified(values, dir) => dir.map_or(Ok(()), |dir| unified::apply(values, dir)),
        }
    }
}

/// Writes one value to `dir/file`; an error names the OCI field it comes from.
fn set(dir: &Path, file: &str, value: &str, field: &'static str) -> Result<(), CgroupError> {
    journal_before(&dir.join(file), value, field)?;
    fs::write(&dir.join(file), value).map_err(|e| for_field(e, field))
}

/// Like [`set`], for files taking one entry per write (per-device limits, ifpriomap): appended,
/// so that a fake cgroupfs keeps every entry as the kernel does.
fn add(dir: &Path, file: &str, value: &str, field: &'static str) -> Result<(), CgroupError> {
    journal_before(&dir.join(file), value, field)?;
    fs::append(&dir.join(file), value).map_err(|e| for_field(e, field))
}

fn for_field(e: CgroupError, field: &'static str) -> CgroupError {
    match e {
        CgroupError::Write { path, value, source } => CgroupError::Apply { field, path, value, source },
        other => other,
    }
}

/// One value for one file, and the OCI field it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub file: &'static str,
    pub value: String,
    pub field: &'static str,
}

impl Setting {
    pub fn new(file: &'static str, value: impl Display, field: &'static str) -> Setting {
        Setting { file, value: value.to_string(), field }
    }
}

/// Writes `settings` in order. The kernel checks some values against the current ones of
/// others (cfs period and burst against the quota, rt period against the rt runtime), so the
/// order that works depends on what is there now: a write refused with EINVAL is retried once
/// after the rest, as runc does.
fn set_all_retrying(dir: &Path, settings: &[Setting]) -> Result<(), CgroupError> {
    let mut refused = Vec::new();
    for s in settings {
        match set(dir, s.file, &s.value, s.field) {
            Err(CgroupError::Apply { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => refused.push(s),
            other => other?,
        }
    }
    for s in refused {
        set(dir, s.file, &s.value, s.field)?;
    }
    Ok(())
}

fn invalid(field: &'static str, value: impl Display, reason: &'static str) -> CgroupError {
    CgroupError::Invalid { field, value: value.to_string(), reason }
}

/// OCI generators write 0 for "not set" in several fields (cpu shares, quota, period, memory
/// limits, blkio weights); runc treats them so, and so do we.
fn nonzero<T: Default + PartialEq>(value: Option<T>) -> Option<T> {
    value.filter(|v| *v != T::default())
}

/// Reads a file holding one unsigned number ("max" counts as unlimited).
fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = fs::read_trimmed(path)?;
    if text == "max" {
        return Ok(u64::MAX);
    }
    text.parse().map_err(|_| CgroupError::Parse { path: path.to_path_buf(), line: text })
}

/// A device number pair "major:minor", refusing negative numbers.
fn device(major: i64, minor: i64, field: &'static str) -> Result<String, CgroupError> {
    if major < 0 || minor < 0 {
        return Err(invalid(field, format!("{major}:{minor}"), "is not a device number"));
    }
    Ok(format!("{major}:{minor}"))
}
