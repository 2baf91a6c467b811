//! Which namespaces the container joins (by path) and which it gets anew,
//! and the syscalls that do it, in the order the kernel requires.

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("join {typ} namespace {path}: {source}")]
    Join { typ: String, path: PathBuf, source: nix::Error },
    #[error("open {typ} namespace {path}: {source}")]
    Open { typ: String, path: PathBuf, source: std::io::Error },
    #[error("create namespaces ({flags:?}): {source}")]
    Unshare { flags: CloneFlags, source: nix::Error },
    #[error("write /proc/self/timens_offsets: {source}")]
    TimeOffsets { source: std::io::Error },
}

/// The namespace set-up of one container process, computed by the runtime
/// and carried to the init in its config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespacePlan {
    /// (kind, path) pairs, joined in this order.
    pub join: Vec<(String, PathBuf)>,
    /// Kinds to create, as clone flags bits.
    pub new: Vec<String>,
    /// clock name -> (secs, nanosecs) for a new time namespace.
    pub time_offsets: BTreeMap<String, (i64, u32)>,
    /// The init already starts in a fresh mount namespace of its own (made
    /// by the runtime for the read-only bind of its binary): the container
    /// uses that one instead of copying the mount table once more.
    #[serde(default)]
    pub mount_ns_made: bool,
}

pub fn clone_flag(typ: LinuxNamespaceType) -> CloneFlags {
    // nix has no CLONE_NEWTIME constant: keep the raw bit.
    CloneFlags::from_bits_retain(typ as i32)
}

/// The /proc/PID/ns entry name of a namespace kind.
pub fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

fn parse_kind(name: &str) -> LinuxNamespaceType {
    LinuxNamespaceType::try_from(name).unwrap_or(LinuxNamespaceType::Mount)
}

impl NamespacePlan {
    /// For a new container: what its config.json asks for.
    pub fn for_spec(spec: &Spec) -> NamespacePlan {
        let mut plan = NamespacePlan::default();
        let Some(linux) = spec.linux() else {
            return plan;
        };
        for ns in linux.namespaces().iter().flatten() {
            let name = proc_name(ns.typ()).to_string();
            match ns.path() {
                Some(path) => plan.join.push((name, path.clone())),
                None => plan.new.push(name),
            }
        }
        // A joined user namespace must come first: it decides what we may join next.
        plan.join.sort_by_key(|(name, _)| name != "user");
        for (clock, off) in linux.time_offsets().iter().flatten() {
            plan.time_offsets.insert(clock.clone(), (off.secs().unwrap_or(0), off.nanosecs().unwrap_or(0)));
        }
        plan
    }

    /// For `exec`: every namespace of the container's init, by /proc path.
    pub fn for_exec(spec: &Spec, init_pid: i32) -> NamespacePlan {
        let mut plan = NamespacePlan::default();
        let kinds = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        for ns in kinds {
            let name = proc_name(ns.typ());
            plan.join.push((name.to_string(), PathBuf::from(format!("/proc/{init_pid}/ns/{name}"))));
        }
        // CRIU restores a container into a time namespace of its own (clocks go on from
        // their values at the dump) even when its config asked for none.
        let time = PathBuf::from(format!("/proc/{init_pid}/ns/time"));
        let differs =
            |ours: &str| std::fs::read_link(&time).ok().is_some_and(|t| std::fs::read_link(ours).ok() != Some(t));
        if !plan.joins(LinuxNamespaceType::Time) && differs("/proc/self/ns/time") {
            plan.join.push(("time".to_string(), time));
        }
        plan.join.sort_by_key(|(name, _)| name != "user");
        plan
    }

    /// Whether a mount namespace made before the init runs (owned by the
    /// host's user namespace) can serve as the container's: not when the
    /// container gets a user namespace of its own, which must own its mounts.
    pub fn can_use_early_mount_ns(&self) -> bool {
        self.creates(LinuxNamespaceType::Mount) && !self.creates(LinuxNamespaceType::User) && self.join.is_empty()
    }

    pub fn creates(&self, typ: LinuxNamespaceType) -> bool {
        self.new.iter().any(|n| parse_kind(n) == typ)
    }

    pub fn joins(&self, typ: LinuxNamespaceType) -> bool {
        self.join.iter().any(|(n, _)| parse_kind(n) == typ)
    }

    /// setns(2) into every namespace given by path. All are opened first:
    /// once we are in another mount namespace the paths may mean something else.
    pub fn join_all(&self) -> Result<(), NamespaceError> {
        let mut files = Vec::with_capacity(self.join.len());
        for (name, path) in &self.join {
            let file = std::fs::File::open(path).map_err(|source| NamespaceError::Open {
                typ: name.clone(),
                path: path.clone(),
                source,
            })?;
            files.push((name, path, file));
        }
        for (name, path, file) in files {
            setns(file, clone_flag(parse_kind(name))).map_err(|source| NamespaceError::Join {
                typ: name.clone(),
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    pub fn unshare_user(&self) -> Result<(), NamespaceError> {
        if self.creates(LinuxNamespaceType::User) {
            let flags = CloneFlags::CLONE_NEWUSER;
            unshare(flags).map_err(|source| NamespaceError::Unshare { flags, source })?;
        }
        Ok(())
    }

    /// A new cgroup namespace takes the caller's cgroups as its root: the
    /// container's process makes it once it sits in the container's cgroups.
    pub fn unshare_cgroup(&self) -> Result<(), NamespaceError> {
        if self.creates(LinuxNamespaceType::Cgroup) {
            let flags = CloneFlags::CLONE_NEWCGROUP;
            unshare(flags).map_err(|source| NamespaceError::Unshare { flags, source })?;
        }
        Ok(())
    }

    /// Creates every other new namespace at once (not user, not cgroup), then
    /// sets the time offsets (allowed only before any process lives in the
    /// new time namespace).
    pub fn unshare_rest(&self) -> Result<(), NamespaceError> {
        let flags = self
            .new
            .iter()
            .map(|n| parse_kind(n))
            .filter(|t| *t != LinuxNamespaceType::User && *t != LinuxNamespaceType::Cgroup)
            .filter(|t| !(*t == LinuxNamespaceType::Mount && self.mount_ns_made))
            .fold(CloneFlags::empty(), |acc, t| acc | clone_flag(t));
        if !flags.is_empty() {
            unshare(flags).map_err(|source| NamespaceError::Unshare { flags, source })?;
        }
        if self.creates(LinuxNamespaceType::Time) && !self.time_offsets.is_empty() {
            let text: String = self.time_offsets.iter().map(|(clock, (s, ns))| format!("{clock} {s} {ns}\n")).collect();
            std::fs::write("/proc/self/timens_offsets", text)
                .map_err(|source| NamespaceError::TimeOffsets { source })?;
        }
        Ok(())
    }
}
