//! Read-only tmpfs mounts that hold only directories: the masks over /proc/acpi and
//! /sys/firmware, the tmpfs under /sys/fs/cgroup. CRIU would copy each through tar at the
//! dump and back at the restore (about 10 ms a mount each way on this host). They are
//! declared external instead, with what makes them in the checkpoint's info (their
//! directories with modes and owners, their mount flags), and the restore makes each anew as
//! a detached tmpfs that CRIU binds in.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::container::ContainerError;

/// More directories than this and CRIU's copy is left to do it.
const MAX_DIRS: usize = 64;

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// A read-only tmpfs of directories only, by its destination in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkeletonTmpfs {
    pub destination: PathBuf,
    /// Its MOUNT_ATTR_* flags: read-only, and nosuid, nodev, noexec as it had them.
    pub attrs: u64,
    /// Its root ("") and each directory below it, parents first.
    pub dirs: Vec<SkeletonDir>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkeletonDir {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The skeleton tmpfs mounts of the container whose init is `pid`.
pub fn find(pid: i32) -> Vec<SkeletonTmpfs> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mounts = crate::cgroups::layout::parse_mountinfo(&text).unwrap_or_default();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "tmpfs" && m.root == Path::new("/") && m.options.iter().any(|o| o == "ro"))
        .filter_map(|m| {
            let inside = root.join(m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point));
            let dirs = skeleton_of(&inside)?;
            let flag = |name: &str, attr: u64| if m.options.iter().any(|o| o == name) { attr } else { 0 };
            let attrs = MOUNT_ATTR_RDONLY
                | flag("nosuid", MOUNT_ATTR_NOSUID)
                | flag("nodev", MOUNT_ATTR_NODEV)
                | flag("noexec", MOUNT_ATTR_NOEXEC);
            Some(SkeletonTmpfs { destination: m.mount_point, attrs, dirs })
        })
        .collect()
}

/// The directories of the tree at `top` (on one file system: mounts over its directories are
/// not entered), or None if it holds anything else or too much.
fn skeleton_of(top: &Path) -> Option<Vec<SkeletonDir>> {
    let dev = std::fs::symlink_metadata(top).ok()?.dev();
    let mut dirs = Vec::new();
    let mut queue = vec![PathBuf::new()];
    while let Some(rel) = queue.pop() {
        let path = top.join(&rel);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.is_dir() || dirs.len() >= MAX_DIRS {
            return None;
        }
        dirs.push(SkeletonDir { path: rel.clone(), mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() });
        // A mount point: what is mounted there is the container's, and not this tmpfs's.
        if meta.dev() != dev {
            dirs.last_mut().expect("pushed above").mode = 0o755;
            continue;
        }
        for entry in std::fs::read_dir(&path).ok()? {
            queue.push(rel.join(entry.ok()?.file_name()));
        }
    }
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Some(dirs)
}

/// The restore's tmpfs mounts, made and attached nowhere yet, with where they will be
/// attached in criu's mount namespace (empty directories in `dir`, removed when dropped).
pub struct Made {
    mounts: Vec<(OwnedFd, CString)>,
    points: Vec<PathBuf>,
}

/// Makes each skeleton as a new tmpfs, and its attach point `dir/tmpfs-N`.
pub fn make(list: &[SkeletonTmpfs], dir: &Path) -> Result<Made, ContainerError> {
    let mut made = Made { mounts: Vec::new(), points: Vec::new() };
    for (n, s) in list.iter().enumerate() {
        let point = dir.join(format!("tmpfs-{n}"));
        let io = |source| ContainerError::Io { path: point.clone(), source };
        match std::fs::create_dir(&point) {
            // Left by a restore that was killed: empty, and nothing is mounted on it here.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            r => r.map_err(io)?,
        }
        made.points.push(point.clone());
        let fd = build(s).map_err(io)?;
        let c = CString::new(point.as_os_str().as_bytes()).expect("paths made here have no NUL");
        made.mounts.push((fd, c));
    }
    Ok(made)
}

fn build(s: &SkeletonTmpfs) -> std::io::Result<OwnedFd> {
    let fd = warren_images::rootfs::detached_tmpfs(None)?;
    let top = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    for d in &s.dirs {
        let path = top.join(&d.path);
        if !d.path.as_os_str().is_empty() {
            std::fs::create_dir(&path)?;
        }
        std::os::unix::fs::chown(&path, Some(d.uid), Some(d.gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(d.mode))?;
    }
    crate::sys::mount_setattr_flags(fd.as_raw_fd(), s.attrs)?;
    Ok(fd)
}

impl Made {
    /// `--external mnt[DEST]:SOURCE` pairs for criu.
    pub fn binds(&self, list: &[SkeletonTmpfs]) -> Vec<(PathBuf, PathBuf)> {
        list.iter().map(|s| s.destination.clone()).zip(self.points.iter().cloned()).collect()
    }

    /// The raw fds and attach points, for [`attach_all`] in criu's child.
    pub fn targets(&self) -> Vec<(i32, CString)> {
        self.mounts.iter().map(|(fd, p)| (fd.as_raw_fd(), p.clone())).collect()
    }
}

/// Attaches each mount at its point. Async-signal-safe: it runs between fork and exec, in
/// criu's own mount namespace.
pub fn attach_all(targets: &[(i32, CString)]) -> std::io::Result<()> {
    targets.iter().try_for_each(|(fd, point)| crate::sys::attach_mount(*fd, point))
}

impl Drop for Made {
    fn drop(&mut self) {
        for p in &self.points {
            let _ = std::fs::remove_dir(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_of_directories_is_a_skeleton_and_a_file_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        std::fs::create_dir_all(top.join("cpu")).unwrap();
        std::fs::create_dir_all(top.join("memory/a")).unwrap();
        let dirs = skeleton_of(top).expect("only directories");
        let paths: Vec<&Path> = dirs.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(paths, [Path::new(""), Path::new("cpu"), Path::new("memory"), Path::new("memory/a")]);
        std::fs::write(top.join("memory/a/f"), "x").unwrap();
        assert!(skeleton_of(top).is_none());
    }
}
