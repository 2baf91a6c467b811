//! Checkpoint and restore of a running container with CRIU (its command line), as runc's
//! `checkpoint` and `restore` verbs do it.
//!
//! What the container got from outside is declared to CRIU as external and supplied again at
//! restore: bind mounts (by destination; the restore maps each to the bundle's source) and the
//! init's stdio (pipes and sockets are inherited from the restoring process, a terminal is a
//! new pty, a file outside the container is the restorer's fd). `warren-checkpoint.json` in
//! the image directory records those stdio keys and the container's config.

mod criu;
mod kdat;
mod restore;
mod skeleton;

use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::{ContainerError, Locked, Runtime};
use crate::failpoint::failpoint;
use crate::state::Status;

pub use criu::{LazyPages, PageServer};
pub use restore::{RestoreOptions, Restored};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("criu not found on PATH (set WARREN_CRIU or install it: scripts/install-criu.sh)")]
    CriuNotFound,
    #[error("cannot run {path:?}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("criu {action} failed ({status}): {reason} (log: {log:?})")]
    Criu { action: &'static str, status: String, reason: String, log: PathBuf },
    #[error("{path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path:?} is not a Warren checkpoint: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("--manage-cgroups-mode {mode:?}: must be soft, full, strict or ignore")]
    CgroupMode { mode: String },
    #[error("--empty-ns {ns:?}: only network is supported")]
    EmptyNs { ns: String },
    #[error("criu restore reported pid {value:?} in {path:?}")]
    BadPid { path: PathBuf, value: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Options both directions share, as runc names them.
#[derive(Debug, Clone, Default)]
pub struct CriuCommon {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces created empty at restore ("net").
    pub empty_ns: Vec<String>,
    /// The criu binary (default: `WARREN_CRIU`, else PATH).
    pub criu: Option<PathBuf>,
}

impl CriuCommon {
    fn validate(&self) -> Result<(), CheckpointError> {
        if let Some(mode) = &self.manage_cgroups_mode {
            if !["soft", "full", "strict", "ignore"].contains(&mode.as_str()) {
                return Err(CheckpointError::CgroupMode { mode: mode.clone() });
            }
        }
        if let Some(ns) = self.empty_ns.iter().find(|ns| !matches!(ns.as_str(), "network" | "net")) {
            return Err(CheckpointError::EmptyNs { ns: ns.clone() });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    /// Images of a previous pre-dump, relative to `image_path` as criu wants it.
    pub parent_path: Option<PathBuf>,
    pub leave_running: bool,
    pub pre_dump: bool,
    pub auto_dedup: bool,
    /// No firewall lock of the container's network during the dump (`--network-lock skip`):
    /// for a container frozen beforehand whose connections are not kept, where the lock only
    /// costs time (removing its rules takes ~100 ms with iptables over nf_tables).
    pub skip_network_lock: bool,
    /// Dump files that are open but unlinked as links CRIU makes (`--link-remap`).
    pub link_remap: bool,
    /// With tcp_established: leave out connections still being set up or torn down.
    pub tcp_skip_in_flight: bool,
    /// Memory goes to a page server on this inherited socket instead of into the images
    /// (`--page-server --ps-socket`): the migration's page stream.
    pub page_socket: Option<std::os::fd::RawFd>,
    pub common: CriuCommon,
}

/// One stdio descriptor of the init, as CRIU names what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stdio {
    /// "pipe[INODE]", "socket[INODE]": inherited from the restoring process.
    Inherit(String),
    /// "tty[RDEV:DEV]" (hex): the container's terminal; a new pty at restore.
    Tty(String),
    /// "file[MNT_ID:INODE]" (hex): a file outside the container, and for a regular file its
    /// size at the dump (CRIU checks it at restore); the restorer's fd at restore.
    File(String, Option<u64>),
}

impl Stdio {
    /// What /proc/PID/fd/FD of a container process points at; None for what CRIU dumps itself.
    fn of(pid: i32, fd: i32) -> Option<Stdio> {
        use std::os::unix::fs::MetadataExt;
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let link = link.to_string_lossy();
        for (prefix, kind) in [("pipe:[", "pipe"), ("socket:[", "socket")] {
            if let Some(inode) = link.strip_prefix(prefix).and_then(|r| r.strip_suffix(']')) {
                return Some(Stdio::Inherit(format!("{kind}[{inode}]")));
            }
        }
        if link.starts_with("anon_inode:") || !link.starts_with('/') {
            return None;
        }
        let meta = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
        // A pty slave (Unix98 majors 136..=143), wherever its devpts is mounted: the link of
        // one in the container's own devpts reads as "/N" from outside.
        let pty_slave = (136..=143).contains(&nix::sys::stat::major(meta.rdev()));
        if std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()) && pty_slave {
            return Some(Stdio::Tty(format!("tty[{:x}:{:x}]", meta.rdev(), meta.dev())));
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
        let mnt_id: u64 = info.lines().find_map(|l| l.strip_prefix("mnt_id:"))?.trim().parse().ok()?;
        Some(Stdio::File(format!("file[{mnt_id:x}:{:x}]", meta.ino()), meta.is_file().then_some(meta.len())))
    }

    /// CRIU's name for what the descriptor points at.
    fn key(&self) -> &String {
        match self {
            Stdio::Inherit(key) | Stdio::Tty(key) | Stdio::File(key, _) => key,
        }
    }

    fn dump_external(&self) -> Option<String> {
        match self {
            Stdio::Tty(key) | Stdio::File(key, _) => Some(key.clone()),
            Stdio::Inherit(_) => None,
        }
    }
}

/// Written next to the images: what the restore must supply again.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The init's fds 0, 1, 2 (None: dumped by CRIU itself).
    pub stdio: Vec<Option<Stdio>>,
    /// Cgroup mounts CRIU cannot dump (no cgroup namespace: they show a host subtree).
    #[serde(default)]
    pub cgroup_mounts: Vec<CgroupMount>,
    /// Host device nodes bound in (a user namespace cannot mknod; masked files are binds
    /// of /dev/null): CRIU cannot dump a mount of the host's devtmpfs.
    #[serde(default)]
    pub device_binds: Vec<DeviceBind>,
    /// Its network namespace held only what a new one holds (see [`plain_netns`]): it was
    /// left out of the dump, and the restore gives it a new one instead of CRIU remaking it.
    #[serde(default)]
    pub fresh_netns: bool,
    /// With `fresh_netns`: CRIU ran in the container's network namespace, so the images hold
    /// no network namespace at all (CRIU leaves its own alone: no conntrack walk, no network
    /// lock), and the restore runs CRIU in the new one. Not with --tcp-established.
    #[serde(default)]
    pub criu_in_netns: bool,
    /// tmpfs mounts that hold only metadata (see [`skeleton`]): made anew at the restore, not
    /// copied.
    #[serde(default)]
    pub skeleton_tmpfs: Vec<skeleton::SkeletonTmpfs>,
    pub config: oci_spec::runtime::Spec,
}

/// A host device node bound into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceBind {
    pub destination: PathBuf,
    /// The node on the host.
    pub source: PathBuf,
}

/// The container's mounts of the host's devtmpfs (see [`CheckpointInfo::device_binds`]).
fn device_binds(pid: i32) -> Vec<DeviceBind> {
    device_binds_in(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default())
}

fn device_binds_in(text: &str) -> Vec<DeviceBind> {
    let mounts = crate::cgroups::layout::parse_mountinfo(text).unwrap_or_default();
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "devtmpfs")
        .map(|m| DeviceBind {
            source: Path::new("/dev").join(m.root.strip_prefix("/").unwrap_or(&m.root)),
            destination: m.mount_point,
        })
        .collect()
}

/// A cgroup hierarchy mounted in the container, by destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupMount {
    pub destination: PathBuf,
    /// The v1 hierarchy's controller list as the container's cgroup names it; empty: cgroup2.
    pub controllers: String,
}

/// The container's cgroup mounts when it shares the host's cgroup namespace: they show a
/// subtree of a host hierarchy, whose root CRIU cannot find, so they are declared external
/// and bound again from the restored container's own cgroup.
fn cgroup_mounts(pid: i32, cgroup: Option<&crate::cgroups::Cgroup>) -> Vec<CgroupMount> {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/cgroup")).ok();
    let (Some(cgroup), true) = (cgroup, ns(&pid.to_string()) == ns("self")) else {
        return Vec::new();
    };
    let keys: Vec<String> = match cgroup {
        crate::cgroups::Cgroup::V1 { paths, .. } => paths.keys().cloned().collect(),
        crate::cgroups::Cgroup::V2 { .. } => Vec::new(),
    };
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mounts = crate::cgroups::layout::parse_mountinfo(&text).unwrap_or_default();
    mounts
        .into_iter()
        .filter_map(|m| {
            let controllers = match m.fs_type.as_str() {
                "cgroup2" => String::new(),
                "cgroup" => keys.iter().find(|k| k.split(',').all(|c| m.super_options.iter().any(|o| o == c)))?.clone(),
                _ => return None,
            };
            Some(CgroupMount { destination: m.mount_point, controllers })
        })
        .collect()
}

/// Named as runc names it.
const DESCRIPTORS_FILE: &str = "descriptors.json";
const INFO_FILE: &str = "warren-checkpoint.json";

/// Where a container with a terminal has its pty slave bound.
const CONSOLE: &str = "/dev/console";

impl CheckpointInfo {
    pub fn has_terminal(&self) -> bool {
        self.stdio.iter().flatten().any(|s| matches!(s, Stdio::Tty(_)))
    }

    pub fn read(images: &Path) -> Result<CheckpointInfo, CheckpointError> {
        let path = images.join(INFO_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::BadImage {
            path: images.to_path_buf(),
            reason: format!("{INFO_FILE}: {e}"),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| CheckpointError::BadImage { path: images.to_path_buf(), reason: format!("{INFO_FILE}: {e}") })
    }
}

/// The network namespace the config joins by path, if any: it belongs to someone else (a
/// CNI set-up, a pod), so CRIU leaves it out of the dump and the restore joins it again.
fn joined_netns(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    let net = namespaces.iter().find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?;
    net.path().clone()
}

/// Whether the container's network namespace is as a new one is (its loopback up, nothing
/// else): one of its own, not joined, with no interface moved in (CNI, netDevices), no net.*
/// sysctl, outside any user namespace of its own, and no process that may change it (none
/// has CAP_NET_ADMIN in its bounding set). CRIU then need not save and remake it, which
/// costs tens of ms on each side (ip and iptables save/restore runs).
fn plain_netns(spec: &oci_spec::runtime::Spec, pid: i32, pids: &[i32]) -> bool {
    let Some(linux) = spec.linux() else { return false };
    let own = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network && ns.path().is_none());
    let net_sysctl = linux.sysctl().iter().flatten().any(|(k, _)| k.starts_with("net."));
    let moved_in = linux.net_devices().as_ref().is_some_and(|d| !d.is_empty());
    if !own || net_sysctl || moved_in || crate::spec::IdMaps::of_spec(spec).is_some() {
        return false;
    }
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    let only_lo = dev.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")) && dev.lines().count() == 3;
    let may_change = |p: &i32| {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).map(str::trim);
        // Unreadable (it ended meanwhile) counts as "may": nothing is assumed.
        bnd.and_then(|b| u64::from_str_radix(b, 16).ok())
            .is_none_or(|b| b & (1 << caps::Capability::CAP_NET_ADMIN.index()) != 0)
    };
    only_lo && !pids.is_empty() && !pids.iter().any(may_change)
}

/// Mount destinations whose source CRIU cannot dump: bind mounts of host paths.
fn external_mounts(spec: &oci_spec::runtime::Spec) -> Vec<(PathBuf, PathBuf)> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| crate::rootfs::is_bind(m))
        .filter_map(|m| Some((m.destination().clone(), m.source().clone()?)))
        .collect()
}

impl Runtime {
    /// `checkpoint`: dumps a running (or paused) container into `opts.image_path`. Unless
    /// `leave_running` (or `pre_dump`), the container is then stopped and deleted, as runc does.
    pub fn checkpoint(&self, id: &str, opts: &CheckpointOptions) -> Result<(), ContainerError> {
        opts.common.validate()?;
        // One lock from the status check to the delete: no other verb acts in between.
        let c = self.open(id)?;
        self.checkpoint_locked(&c, opts)?;
        if !opts.leave_running && !opts.pre_dump {
            // CRIU killed the tree after the dump; what is left is a stopped container.
            self.delete_locked(&c, true)?;
        }
        Ok(())
    }

    /// The dump of a container whose lock the caller holds; it stays as CRIU leaves it.
    pub(crate) fn checkpoint_locked(&self, c: &Locked, opts: &CheckpointOptions) -> Result<(), ContainerError> {
        let status = self.status(c);
        if !status.can_checkpoint() {
            return Err(ContainerError::BadStatus { id: c.state.id.clone(), status, action: "checkpoint" });
        }
        let pid = c.state.pid;
        // The images hold the container's memory: owner-only, as its state.
        let mut private = std::fs::DirBuilder::new();
        private.recursive(true).mode(crate::state::STATE_DIR_MODE);
        private.create(&opts.image_path).map_err(io_err(&opts.image_path)).map_err(ContainerError::from)?;
        if let Some(work) = &opts.work_path {
            private.create(work).map_err(io_err(work)).map_err(ContainerError::from)?;
        }
        let stdio: Vec<Option<Stdio>> = (0..3).map(|fd| Stdio::of(pid, fd)).collect();
        let cgroup_mounts = cgroup_mounts(pid, c.state.cgroup.as_ref());
        let fresh_netns = c
            .state
            .cgroup
            .as_ref()
            .and_then(|cg| cg.pids().ok())
            .is_some_and(|pids| plain_netns(&c.state.config, pid, &pids));
        let info = CheckpointInfo {
            stdio: stdio.clone(),
            cgroup_mounts: cgroup_mounts.clone(),
            device_binds: device_binds(pid),
            fresh_netns,
            criu_in_netns: fresh_netns && !opts.common.tcp_established,
            skeleton_tmpfs: skeleton::find(pid, status == Status::Paused),
            config: c.state.config.clone(),
        };
        write_descriptors(&opts.image_path, pid)?;
        let info_path = opts.image_path.join(INFO_FILE);
        let text = serde_json::to_vec_pretty(&info).expect("plain data serializes");
        std::fs::write(&info_path, text).map_err(io_err(&info_path)).map_err(ContainerError::from)?;
        let binds = external_mounts(&c.state.config).into_iter().map(|(dest, _)| dest);
        let devices = info.device_binds.iter().map(|d| d.destination.clone());
        let skeletons = info.skeleton_tmpfs.iter().map(|s| s.destination.clone());
        let mut externals: Vec<PathBuf> =
            binds.chain(cgroup_mounts.into_iter().map(|m| m.destination)).chain(devices).chain(skeletons).collect();
        if info.has_terminal() {
            // The pty slave bound on /dev/console: its master is outside the container.
            externals.push(PathBuf::from(CONSOLE));
        }
        let freezer = c.state.cgroup.as_ref().and_then(|cg| cg.freezer_dir());
        let stdio: Vec<Stdio> = stdio.into_iter().flatten().collect();
        let own_netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let in_netns = info.criu_in_netns.then(|| criu_in(&own_netns)).transpose()?;
        let netns = joined_netns(&c.state.config)
            .or_else(|| (info.fresh_netns && in_netns.is_none()).then_some(own_netns))
            .map(|path| {
                std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).map_err(io_err(&path))
            })
            .transpose()?;
        let args = criu::dump_args(pid, opts, &stdio, &externals, freezer, netns);
        let work = opts.work_path.as_deref().unwrap_or(&opts.image_path);
        let action = if opts.pre_dump { "pre-dump" } else { "dump" };
        failpoint("checkpoint.before-criu");
        criu::run(
            &criu::binary(opts.common.criu.as_deref())?,
            &args,
            work.join(format!("{action}.log")),
            action,
            in_netns,
        )?;
        failpoint("checkpoint.after-criu");
        Ok(())
    }
}

/// Work before criu's exec that puts it in the network namespace at `path`.
fn criu_in(path: &Path) -> Result<criu::PreExec, ContainerError> {
    let netns = std::fs::File::open(path).map_err(io_err(path)).map_err(ContainerError::from)?;
    Ok(Box::new(move || crate::sys::join_netns(netns.as_raw_fd())))
}

/// runc's `descriptors.json`: what the init's stdio pointed at, which tools that read runc's
/// checkpoints expect beside the images.
fn write_descriptors(images: &Path, pid: i32) -> Result<(), CheckpointError> {
    let fds: Vec<String> = (0..3)
        .map(|fd| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()))
        .map(|link| link.unwrap_or_else(|_| "/dev/null".into()))
        .collect();
    let path = images.join(DESCRIPTORS_FILE);
    let text = serde_json::to_vec(&fds).expect("strings serialize");
    std::fs::write(&path, text).map_err(io_err(&path))
}

#[cfg(test)]
mod tests;
