//! Container cgroups on v1, hybrid and v2 hosts.
//!
//! [`Cgroup`] names the container's directory in each hierarchy and dispatches on the cgroup
//! version. Layout detection and path resolution live in [`layout`]; the version specifics in
//! `v1` and `v2`; freezing in `freezer`; device rules in [`devices`]; the other OCI resources
//! in `resources`, one module per controller, as functions of (resources, directory).

pub mod devices;
mod freezer;
mod fs;
pub mod layout;
pub mod oom;
mod resources;
pub mod stats;
mod v1;
mod v2;

#[cfg(test)]
mod host_tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};
use serde::{Deserialize, Serialize};

use devices::DeviceRule;
use freezer::Freezer;
use layout::Layout;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path:?}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {path:?}: {source}")]
    Write { path: PathBuf, value: String, source: io::Error },
    #[error("cannot create cgroup directory {path:?}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot remove cgroup directory {path:?}: {source}")]
    RemoveDir { path: PathBuf, source: io::Error },
    #[error("malformed line in {path:?}: {line:?}")]
    Parse { path: PathBuf, line: String },
    #[error("no cgroup hierarchy mounted (per {path:?})")]
    NoHierarchy { path: PathBuf },
    #[error("own cgroup {own_cgroup:?} in hierarchy {controllers:?} lies outside what {path:?} shows")]
    OutsideMount { path: PathBuf, controllers: String, own_cgroup: PathBuf },
    #[error("cgroups path {path:?} is systemd-style (slice:prefix:name); only the cgroupfs driver is supported")]
    SystemdPath { path: PathBuf },
    #[error("cgroups path {path:?} has a '..' component")]
    DotDot { path: PathBuf },
    #[error("cgroups path {path:?} names no cgroup below its starting point")]
    NoLeaf { path: PathBuf },
    #[error("invalid pid {value:?} in {path:?}")]
    BadPid { path: PathBuf, value: String },
    #[error("controller {controller} is not available for {path:?}")]
    ControllerMissing { path: PathBuf, controller: String },
    #[error("timed out waiting for {path:?} to report {state}")]
    FreezerTimeout { path: PathBuf, state: &'static str },
    #[error("invalid signal {signal} for the processes of {path:?}")]
    InvalidSignal { path: PathBuf, signal: i32 },
    #[error("cannot signal pid {pid} of {path:?}: {source}")]
    Signal { path: PathBuf, pid: i32, source: Errno },
    #[error("invalid device rule {rule:?} for {path:?}: {reason}")]
    DeviceRule { path: PathBuf, rule: String, reason: &'static str },
    #[error("{op} of the device program for {path:?} failed: {source}; verifier log: {log}")]
    Bpf { path: PathBuf, op: &'static str, source: io::Error, log: String },
    /// An OCI resource value refused before anything is written. `field` is its OCI name
    /// ("linux.resources.cpu.quota").
    #[error("{field}: {value} {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
    #[error("{field}: {value:?} is not within {allowed:?} (per {path:?})")]
    NotWithin { field: &'static str, value: String, allowed: String, path: PathBuf },
    #[error("{field}: {limit} is below the current usage of {usage} bytes (checkBeforeUpdate is set; per {path:?})")]
    BelowUsage { field: &'static str, limit: i64, usage: u64, path: PathBuf },
    #[error(
        "{field}: {limit} is below the {held} bytes the container holds that the kernel cannot reclaim \
         (usage {usage} less file cache, per {path:?})"
    )]
    BelowHeld { field: &'static str, limit: i64, held: u64, usage: u64, path: PathBuf },
    #[error(
        "{field}: the {controller} controller is not available for {path:?} \
         (neither mounted as cgroup v1 nor enabled in cgroup v2)"
    )]
    ControllerUnavailable { field: &'static str, controller: &'static str, path: PathBuf },
    #[error("{field}: cannot write {value:?} to {path:?}: {source}")]
    Apply { field: &'static str, path: PathBuf, value: String, source: io::Error },
    /// An update failed part-way; the files written before were restored (`restored` of them),
    /// except those in `failed`.
    #[error("{cause} (rolled back: {restored} file(s) restored{})", restore_failures(failed))]
    RolledBack { cause: Box<CgroupError>, restored: usize, failed: Vec<PathBuf> },
}

fn restore_failures(failed: &[PathBuf]) -> String {
    if failed.is_empty() {
        String::new()
    } else {
        format!(", could not restore {failed:?}")
    }
}

impl CgroupError {
    /// True when a file or directory the operation needed does not exist (e.g. the cgroup
    /// was already removed).
    pub fn is_not_found(&self) -> bool {
        match self {
            CgroupError::Read { source, .. }
            | CgroupError::Write { source, .. }
            | CgroupError::Apply { source, .. }
            | CgroupError::CreateDir { source, .. }
            | CgroupError::RemoveDir { source, .. } => source.kind() == io::ErrorKind::NotFound,
            CgroupError::RolledBack { cause, .. } => cause.is_not_found(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Cgroup {
    /// v1 (or hybrid): one directory per mounted hierarchy, keyed by its controller list as
    /// mounted ("cpu", "cpuacct", "cpu,cpuacct", "memory", "name=systemd", ...); `unified` =
    /// the cgroup2 dir on a hybrid host.
    V1 {
        paths: BTreeMap<String, PathBuf>,
        unified: Option<PathBuf>,
    },
    V2 {
        path: PathBuf,
    },
}

impl Cgroup {
    /// Works out the container's cgroup from OCI `linux.cgroupsPath` (None or empty = not set)
    /// and the container id, on the host's layout (see [`Layout::resolve`]):
    /// absolute path => relative to each hierarchy's mount root; relative path => relative to
    /// the calling process's own cgroup in each hierarchy (as runc's cgroupfs driver does);
    /// unset => the relative path "<id>". Refuses systemd-style "slice:prefix:name" paths,
    /// paths with ".." components and paths naming no directory ("/", ".").
    pub fn resolve(cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup, CgroupError> {
        Layout::detect()?.resolve(cgroups_path, id)
    }

    /// `mkdir -p` in every hierarchy. v1 cpuset: new levels get cpuset.cpus/cpuset.mems from
    /// their parent. v2 (and the unified dir on hybrid hosts): each ancestor's available
    /// controllers are enabled in its cgroup.subtree_control, root first; EBUSY/ENOTSUP skipped.
    pub fn create(&self) -> Result<(), CgroupError> {
        match self {
            Cgroup::V1 { paths, unified } => {
                v1::create(paths)?;
                unified.as_deref().map_or(Ok(()), v2::create)
            }
            Cgroup::V2 { path } => v2::create(path),
        }
    }

    /// Writes `pid` to cgroup.procs in every hierarchy (v1: every dir and the unified one).
    pub fn add_pid(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in self.dirs() {
            fs::append(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling, single-threaded process into every v1 hierarchy by
    /// writing "0" to `tasks`. Moving one thread (here: all of them) skips
    /// the kernel's global threadgroup lock, whose writer waits for an RCU
    /// grace period: milliseconds per hierarchy through cgroup.procs. The
    /// cgroup2 part is joined at fork time instead (see [`Cgroup::v2_dir`]).
    pub fn join_v1_self(&self) -> Result<(), CgroupError> {
        if let Cgroup::V1 { paths, .. } = self {
            for dir in paths.values() {
                fs::append(&dir.join("tasks"), "0")?;
            }
        }
        Ok(())
    }

    /// Moves the calling process into the cgroup2 directory through
    /// cgroup.procs: the slow path, for kernels without CLONE_INTO_CGROUP.
    pub fn join_v2_self(&self) -> Result<(), CgroupError> {
        match self.v2_dir() {
            Some(dir) => fs::append(&dir.join("cgroup.procs"), "0"),
            None => Ok(()),
        }
    }

    /// Every pid in the container's cgroup and its sub-cgroups, from the freezer hierarchy on
    /// v1 (another one when there is none).
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let top = self.process_dir()?;
        let mut pids = Vec::new();
        for dir in fs::subtree(top)? {
            match fs::read_procs(&dir) {
                // 0 stands for a process outside our pid namespace: not one we can signal.
                Ok(found) => pids.extend(found.into_iter().filter(|pid| *pid > 0)),
                // A sub-cgroup removed since it was listed.
                Err(e) if dir != top && e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pids)
    }

    /// The directory listing processes when the cgroup already exists and holds some (of
    /// another container, or a leftover); None for a new or empty one.
    pub fn occupied(&self) -> Option<PathBuf> {
        let dir = self.process_dir().ok()?;
        fs::read_procs(dir).ok().filter(|pids| !pids.is_empty()).map(|_| dir.to_path_buf())
    }

    /// Freezes the container and waits until the kernel reports it frozen (bounded; on
    /// timeout it is thawed again and [`CgroupError::FreezerTimeout`] returned).
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.freezer()?.freeze()
    }

    /// Thaws the container (v2: waiting, bounded, until it no longer reports frozen).
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.freezer()?.thaw()
    }

    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        self.freezer()?.is_frozen()
    }

    /// Sends `sig` to every process of the cgroup, frozen meanwhile so that forks cannot
    /// escape. With SIGKILL and a cgroup2 dir that has cgroup.kill (v2, or the unified dir on
    /// hybrid hosts), that is used instead. A container that was frozen before stays frozen,
    /// except after SIGKILL (v1 frozen tasks only die once thawed). Without any freezer the
    /// signals are sent without freezing.
    pub fn signal_all(&self, sig: i32) -> Result<(), CgroupError> {
        let signal = Signal::try_from(sig).map_err(|_| CgroupError::InvalidSignal {
            path: self.process_dir().map(Path::to_path_buf).unwrap_or_default(),
            signal: sig,
        })?;
        let freezer = match self.freezer() {
            Ok(freezer) => Some(freezer),
            Err(CgroupError::ControllerMissing { .. }) => None,
            Err(e) => return Err(e),
        };
        let was_frozen = freezer.map(Freezer::is_frozen).transpose()?.unwrap_or(false);
        if signal == Signal::SIGKILL {
            if let Some(dir) = self.v2_dir() {
                if v2::kill(dir)? {
                    return match freezer {
                        Some(f) if was_frozen => f.thaw(),
                        _ => Ok(()),
                    };
                }
            }
        }
        let froze = match freezer {
            Some(f) if !was_frozen => match f.freeze() {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("signalling without freezing: {e}");
                    false
                }
            },
            _ => false,
        };
        let sent = self.send_to_each(signal);
        if let Some(f) = freezer {
            if froze || (was_frozen && signal == Signal::SIGKILL) {
                f.thaw()?;
            }
        }
        sent
    }

    /// Removes the container's own directory and the cgroups below it, deepest first, in
    /// every hierarchy. Ancestors are left alone even when `create` made them (they may be
    /// shared, e.g. a pod's parent cgroup). A missing directory is fine; EBUSY is retried
    /// for a while. Every hierarchy is attempted; the first error is returned.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in self.dirs() {
            if let Err(e) = fs::remove_tree(dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Applies OCI device rules (in order, over a default of deny-all). v1: "a" to
    /// devices.deny, then one line per rule to devices.allow/devices.deny. v2 (or a hybrid
    /// host without a v1 devices hierarchy): a BPF cgroup device program attached with
    /// BPF_F_ALLOW_MULTI; calling this again adds a program, which can only restrict further.
    pub fn apply_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
        let (dir, is_v1) = match self {
            Cgroup::V1 { paths, unified } => match (v1::find(paths, "devices"), unified) {
                (Some(dir), _) => (dir, true),
                (None, Some(dir)) => (dir.as_path(), false),
                (None, None) => {
                    return Err(CgroupError::ControllerMissing {
                        path: self.process_dir()?.to_path_buf(),
                        controller: "devices".to_string(),
                    })
                }
            },
            Cgroup::V2 { path } => (path.as_path(), false),
        };
        let rules = rules.iter().map(|rule| DeviceRule::from_oci(rule, dir)).collect::<Result<Vec<_>, _>>()?;
        if is_v1 {
            devices::apply_v1(&rules, dir)
        } else {
            devices::apply_v2(&rules, dir)
        }
    }

    /// Applies OCI `linux.resources` except `devices` (see [`Cgroup::apply_devices`]) to the
    /// (created) cgroup, as runc does: v1 files in each controller's hierarchy; on hybrid
    /// hosts, controllers not mounted as v1 in the unified dir; v2 files there and on v2
    /// hosts. Everything is checked before anything is written, so that invalid values leave
    /// the cgroup as it was; errors name the OCI field.
    pub fn apply_resources(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        resources::apply(self, resources)
    }

    /// Like [`Cgroup::apply_resources`], for a running container: all-or-nothing. When a write
    /// fails part-way (values only the kernel refuses), the files already written get their
    /// old content back and [`CgroupError::RolledBack`] wraps the error of the failed write.
    pub fn update_resources(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        resources::apply_atomic(self, resources)
    }

    /// The directory to read one controller's files from: v1 the hierarchy that has it ("cpu"
    /// finds "cpu,cpuacct"), else the unified dir on hybrid hosts (controllers not taken by v1
    /// live there); v2 the one dir.
    pub fn controller_dir(&self, controller: &str) -> Option<PathBuf> {
        match self {
            Cgroup::V1 { paths, unified } => {
                v1::find(paths, controller).map(Path::to_path_buf).or_else(|| unified.clone())
            }
            Cgroup::V2 { path } => Some(path.clone()),
        }
    }

    /// The directory whose freezer stops the container (v1 freezer hierarchy, else cgroup2).
    pub fn freezer_dir(&self) -> Option<&Path> {
        match self.freezer().ok()? {
            Freezer::V1(dir) | Freezer::V2(dir) => Some(dir),
        }
    }

    /// Each hierarchy's controller list (as /proc/PID/cgroup shows it; empty for cgroup2) with
    /// the container's cgroup as a path in that hierarchy (what /proc/PID/cgroup would show).
    pub fn hierarchy_paths(&self) -> Result<Vec<(String, PathBuf)>, CgroupError> {
        let layout = Layout::detect()?;
        let in_hierarchy = |h: &layout::Hierarchy, dir: &Path| {
            let below = dir.strip_prefix(&h.mount_point).unwrap_or(dir);
            (h.controllers.clone(), h.mount_root.join(below))
        };
        let mut out = Vec::new();
        for dir in self.dirs() {
            let hierarchy = layout.v1.iter().chain(&layout.unified).find(|h| dir.starts_with(&h.mount_point));
            if let Some(h) = hierarchy {
                out.push(in_hierarchy(h, dir));
            }
        }
        Ok(out)
    }

    /// Every directory of the container, one per hierarchy.
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            Cgroup::V1 { paths, unified } => paths.values().map(PathBuf::as_path).chain(unified.as_deref()).collect(),
            Cgroup::V2 { path } => vec![path],
        }
    }

    /// The cgroup2 directory: v2's one, or the unified one on hybrid hosts.
    pub fn v2_dir(&self) -> Option<&Path> {
        match self {
            Cgroup::V1 { unified, .. } => unified.as_deref(),
            Cgroup::V2 { path } => Some(path),
        }
    }

    /// Where to list processes: v1 the freezer hierarchy, else any.
    fn process_dir(&self) -> Result<&Path, CgroupError> {
        let dir = match self {
            Cgroup::V1 { paths, unified } => v1::find(paths, "freezer")
                .or_else(|| paths.values().next().map(PathBuf::as_path))
                .or(unified.as_deref()),
            Cgroup::V2 { path } => Some(path.as_path()),
        };
        dir.ok_or(CgroupError::NoHierarchy { path: PathBuf::new() })
    }

    /// v1: the freezer hierarchy, else the unified dir's cgroup.freeze; v2: cgroup.freeze.
    fn freezer(&self) -> Result<Freezer<'_>, CgroupError> {
        match self {
            Cgroup::V1 { paths, unified } => match (v1::find(paths, "freezer"), unified) {
                (Some(dir), _) => Ok(Freezer::V1(dir)),
                (None, Some(dir)) if dir.join("cgroup.freeze").exists() => Ok(Freezer::V2(dir)),
                _ => Err(CgroupError::ControllerMissing {
                    path: self.process_dir()?.to_path_buf(),
                    controller: "freezer".to_string(),
                }),
            },
            Cgroup::V2 { path } => Ok(Freezer::V2(path)),
        }
    }

    /// Signals each pid of [`Cgroup::pids`]; pids gone meanwhile are skipped. Every pid is
    /// attempted; the first error is returned.
    fn send_to_each(&self, signal: Signal) -> Result<(), CgroupError> {
        let mut first_error = None;
        for pid in self.pids()? {
            match signal::kill(Pid::from_raw(pid), signal) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(source) => {
                    first_error.get_or_insert(CgroupError::Signal {
                        path: self.process_dir()?.to_path_buf(),
                        pid,
                        source,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests;
