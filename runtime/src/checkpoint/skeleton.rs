//! tmpfs mounts that a few metadata records can make again: the masks over /proc/acpi and
//! /sys/firmware and the tmpfs under /sys/fs/cgroup (read-only, directories only), and, when
//! the container is frozen while they are read, /dev (directories, symlinks, device nodes,
//! the empty files that binds cover) and an empty /dev/shm. CRIU would copy each through tar
//! at the dump and back at the restore (about 10 ms a mount each way on this host). They are
//! declared external instead, with what makes them in the checkpoint's info (each entry with
//! its mode and owner, the mount's flags, source and options), and the restore makes each
//! anew as a detached tmpfs that CRIU binds in. A writable tmpfs holding any data is left to
//! CRIU.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};
use serde::{Deserialize, Serialize};

use crate::container::ContainerError;

/// More entries than this and CRIU's copy is left to do it.
const MAX_ENTRIES: usize = 64;

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;

/// A tmpfs made of metadata only, by its destination in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkeletonTmpfs {
    pub destination: PathBuf,
    /// Its MOUNT_ATTR_* flags: read-only, nosuid, nodev, noexec and the atime mode as it had
    /// them (in a user namespace CRIU may not change them on a mount made outside it).
    pub attrs: u64,
    /// What it was made with: its source and the super options a new one needs again
    /// (size, mode, nr_inodes, uid, gid), as fsconfig(2) keys and values.
    #[serde(default)]
    pub params: Vec<(String, String)>,
    /// Its root ("") and each entry below it, parents first.
    #[serde(alias = "dirs")]
    pub entries: Vec<SkeletonEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkeletonEntry {
    pub path: PathBuf,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub kind: EntryKind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    #[default]
    Dir,
    Symlink(PathBuf),
    /// A character device node, by its device number.
    CharDevice(u64),
    /// An empty regular file (the target of a bind, or just empty).
    EmptyFile,
}

/// The skeleton tmpfs mounts of the container whose init is `pid`. Writable ones only when
/// the container is `frozen`: their contents must not change before CRIU's dump.
pub fn find(pid: i32, frozen: bool) -> Vec<SkeletonTmpfs> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mounts = crate::cgroups::layout::parse_mountinfo(&text).unwrap_or_default();
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "tmpfs" && m.root == Path::new("/"))
        .filter(|m| frozen || m.options.iter().any(|o| o == "ro"))
        .filter_map(|m| {
            let inside = root.join(m.mount_point.strip_prefix("/").unwrap_or(&m.mount_point));
            let entries = skeleton_of(&inside)?;
            let flag = |name: &str, attr: u64| if m.options.iter().any(|o| o == name) { attr } else { 0 };
            let attrs = flag("ro", MOUNT_ATTR_RDONLY)
                | flag("nosuid", MOUNT_ATTR_NOSUID)
                | flag("nodev", MOUNT_ATTR_NODEV)
                | flag("noexec", MOUNT_ATTR_NOEXEC)
                | flag("nodiratime", MOUNT_ATTR_NODIRATIME)
                | atime(&m.options);
            let kept = ["size", "mode", "nr_inodes", "uid", "gid"];
            let options = m.super_options.iter().filter_map(|o| o.split_once('='));
            let params = std::iter::once(("source", m.source.as_str()))
                .chain(options.filter(|(k, _)| kept.contains(k)))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(SkeletonTmpfs { destination: m.mount_point, attrs, params, entries })
        })
        .collect()
}

/// The atime mode of a mount with `options` (mountinfo names relatime and noatime, and
/// shows strictatime as neither).
fn atime(options: &[String]) -> u64 {
    if options.iter().any(|o| o == "noatime") {
        MOUNT_ATTR_NOATIME
    } else if options.iter().any(|o| o == "relatime") {
        0
    } else {
        MOUNT_ATTR_STRICTATIME
    }
}

/// The entries of the tree at `top` (on one file system: mounts over its entries are not
/// entered), or None if it holds data or anything else, or too much.
fn skeleton_of(top: &Path) -> Option<Vec<SkeletonEntry>> {
    let top_meta = std::fs::symlink_metadata(top).ok()?;
    let dev = top_meta.dev();
    let mut entries = Vec::new();
    let mut queue = vec![PathBuf::new()];
    while let Some(rel) = queue.pop() {
        if entries.len() >= MAX_ENTRIES {
            return None;
        }
        let path = top.join(&rel);
        let meta = std::fs::symlink_metadata(&path).ok()?;
        let entry = |mode: u32, kind: EntryKind| SkeletonEntry {
            path: rel.clone(),
            mode: mode & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            kind,
        };
        // A mount point: what is mounted there is the container's, not this tmpfs's, and
        // the node under it is hidden; one of the same type does.
        if meta.dev() != dev {
            let kind = if meta.is_dir() { EntryKind::Dir } else { EntryKind::EmptyFile };
            let mode = if meta.is_dir() { 0o755 } else { 0o644 };
            entries.push(SkeletonEntry { uid: top_meta.uid(), gid: top_meta.gid(), ..entry(mode, kind) });
            continue;
        }
        let t = meta.file_type();
        let kind = if t.is_dir() {
            for e in std::fs::read_dir(&path).ok()? {
                queue.push(rel.join(e.ok()?.file_name()));
            }
            EntryKind::Dir
        } else if t.is_symlink() {
            EntryKind::Symlink(std::fs::read_link(&path).ok()?)
        } else if t.is_char_device() {
            EntryKind::CharDevice(meta.rdev())
        } else if t.is_file() && meta.len() == 0 {
            EntryKind::EmptyFile
        } else {
            return None;
        };
        entries.push(entry(meta.mode(), kind));
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Some(entries)
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
    let params: Vec<(&str, &str)> = s.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let fd = warren_images::rootfs::detached_tmpfs(&params)?;
    let top = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    for e in &s.entries {
        let path = top.join(&e.path);
        let top_dir = e.path.as_os_str().is_empty();
        match &e.kind {
            EntryKind::Dir if top_dir => {}
            EntryKind::Dir => std::fs::create_dir(&path)?,
            EntryKind::Symlink(target) => std::os::unix::fs::symlink(target, &path)?,
            EntryKind::CharDevice(rdev) => mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(e.mode), *rdev)?,
            EntryKind::EmptyFile => drop(std::fs::File::create(&path)?),
        }
        std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid))?;
        if !matches!(e.kind, EntryKind::Symlink(_)) {
            // After the owner: chown clears the set-id bits.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))?;
        }
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
    fn a_tree_of_directories_is_a_skeleton_and_a_file_with_data_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        std::fs::create_dir_all(top.join("cpu")).unwrap();
        std::fs::create_dir_all(top.join("memory/a")).unwrap();
        let entries = skeleton_of(top).expect("only directories");
        let paths: Vec<&Path> = entries.iter().map(|d| d.path.as_path()).collect();
        assert_eq!(paths, [Path::new(""), Path::new("cpu"), Path::new("memory"), Path::new("memory/a")]);
        assert!(entries.iter().all(|e| e.kind == EntryKind::Dir));
        std::fs::write(top.join("memory/a/f"), "x").unwrap();
        assert!(skeleton_of(top).is_none());
    }

    #[test]
    fn symlinks_devices_and_empty_files_are_kept_and_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path();
        std::os::unix::fs::symlink("/proc/self/fd", top.join("fd")).unwrap();
        std::fs::File::create(top.join("console")).unwrap();
        let null =
            mknod(&top.join("null"), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3));
        let entries = skeleton_of(top).expect("no data");
        let kind = |p: &str| entries.iter().find(|e| e.path == Path::new(p)).map(|e| e.kind.clone());
        assert_eq!(kind("fd"), Some(EntryKind::Symlink("/proc/self/fd".into())));
        assert_eq!(kind("console"), Some(EntryKind::EmptyFile));
        if null.is_ok() {
            assert_eq!(kind("null"), Some(EntryKind::CharDevice(nix::sys::stat::makedev(1, 3))));
        }
    }

    #[test]
    fn an_older_checkpoints_directory_list_still_reads() {
        let text = r#"{"destination":"/sys/fs/cgroup","attrs":15,"dirs":[{"path":"","mode":493,"uid":0,"gid":0}]}"#;
        let s: SkeletonTmpfs = serde_json::from_str(text).unwrap();
        assert_eq!(s.entries[0].kind, EntryKind::Dir);
        assert!(s.params.is_empty());
    }
}
