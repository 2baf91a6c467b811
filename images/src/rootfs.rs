//! A container's rootfs from an image's layers: an overlayfs mount (the
//! shared layers as lower dirs, a per-container upper and work dir), or a
//! plain copy of the merged tree where overlay is not wanted.

use crate::unpack::{is_opaque, read_xattrs};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The most a mount(2) data page holds.
const MAX_MOUNT_DATA: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("overlay lower dir {path}: ',' and ':' cannot be passed to overlayfs")]
    BadPath { path: PathBuf },
    #[error("{layers} layers: overlay options exceed {MAX_MOUNT_DATA} bytes")]
    TooManyLayers { layers: usize },
    #[error("mount overlay on {target}: {source}")]
    Mount { target: PathBuf, source: io::Error },
    #[error("unmount {target}: {source}")]
    Unmount { target: PathBuf, source: io::Error },
    #[error("copy {path}: {source}")]
    Copy { path: PathBuf, source: io::Error },
}

fn option_path(p: &Path) -> Result<&str, RootfsError> {
    p.to_str().filter(|s| !s.contains([',', ':'])).ok_or_else(|| RootfsError::BadPath { path: p.to_path_buf() })
}

/// The overlayfs mount options for `layers` (bottom first).
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, RootfsError> {
    let mut lower = Vec::with_capacity(layers.len());
    for l in layers.iter().rev() {
        lower.push(option_path(l)?);
    }
    let data = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), option_path(upper)?, option_path(work)?);
    if data.len() > MAX_MOUNT_DATA {
        return Err(RootfsError::TooManyLayers { layers: layers.len() });
    }
    Ok(data)
}

/// The overlayfs options for `layers` (bottom first) as the runtime's annotation carries
/// them: overlayfs' syntax, without the one-page limit of mount(2) (the runtime mounts with
/// one fsconfig parameter per layer).
pub fn annotation_options(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, RootfsError> {
    let lower: Vec<&str> = layers.iter().rev().map(|l| option_path(l)).collect::<Result<_, _>>()?;
    Ok(format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), option_path(upper)?, option_path(work)?))
}

/// The overlay of `layers` (bottom first) as a mount attached nowhere (see `sys::detached_overlay`).
pub fn detached_overlay(layers: &[PathBuf], upper: &Path, work: &Path) -> Result<std::os::fd::OwnedFd, RootfsError> {
    let lowers: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
    crate::sys::detached_overlay(&lowers, upper, work, false)
        .map_err(|source| RootfsError::Mount { target: upper.to_path_buf(), source })
}

/// A tmpfs attached nowhere, made with `params` (fsconfig(2) keys and values: `size`,
/// `mode`, `source`, ...): its files are reached through the descriptor (`openat`), and it
/// goes when the last descriptor (or a mount namespace it was attached in) does.
pub fn detached_tmpfs(params: &[(&str, &str)]) -> io::Result<std::os::fd::OwnedFd> {
    crate::sys::detached_tmpfs(params)
}

/// The same for lower dirs listed top first, as overlayfs' options list them (the runtime's
/// `org.warren.rootfs.overlay`), with `index=off` when asked.
pub fn detached_overlay_listed(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    index_off: bool,
) -> io::Result<std::os::fd::OwnedFd> {
    crate::sys::detached_overlay(lowers, upper, work, index_off)
}

/// Mounts overlayfs at `target`: `layers` (bottom first) under `upper`.
/// mount(2) where its one page of options holds the layers, else the new
/// mount API with one parameter per layer.
pub fn mount_overlay(layers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), RootfsError> {
    let mount_err = |source| RootfsError::Mount { target: target.to_path_buf(), source };
    match overlay_options(layers, upper, work) {
        Ok(data) => mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str()))
            .map_err(|e| mount_err(e.into())),
        Err(RootfsError::TooManyLayers { .. } | RootfsError::BadPath { .. }) => {
            let lowers: Vec<&Path> = layers.iter().rev().map(PathBuf::as_path).collect();
            crate::sys::mount_overlay_fsconfig(&lowers, upper, work, target).map_err(mount_err)
        }
        Err(e) => Err(e),
    }
}

/// Detaches the mount at `target`; Ok if nothing is mounted there.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(RootfsError::Unmount { target: target.to_path_buf(), source: e.into() }),
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() != std::fs::symlink_metadata(parent)?.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Copies the merged tree of `layers` (bottom first, overlayfs form) into
/// the empty directory `dest`. Returns the bytes of file content copied.
pub fn copy_layers(layers: &[PathBuf], dest: &Path) -> Result<u64, RootfsError> {
    let mut c = Copier { links: HashMap::new(), bytes: 0 };
    for layer in layers {
        c.links.clear();
        c.apply_dir(layer, dest).map_err(|(path, source)| RootfsError::Copy { path, source })?;
        c.copy_attrs(layer, dest).map_err(|source| RootfsError::Copy { path: dest.to_path_buf(), source })?;
    }
    Ok(c.bytes)
}

struct Copier {
    /// Hard links inside the layer being applied: (dev, ino) to the first copy.
    links: HashMap<(u64, u64), PathBuf>,
    bytes: u64,
}

type CopyResult = Result<(), (PathBuf, io::Error)>;

/// Removes whatever is at `path` (a whole tree for a directory).
fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl Copier {
    /// Applies layer directory `src` onto `dst`, which is a real directory.
    fn apply_dir(&mut self, src: &Path, dst: &Path) -> CopyResult {
        let rd = std::fs::read_dir(src).map_err(|e| (src.to_path_buf(), e))?;
        for entry in rd {
            let entry = entry.map_err(|e| (src.to_path_buf(), e))?;
            let (s, d) = (entry.path(), dst.join(entry.file_name()));
            self.apply_entry(&s, &d).map_err(|e| (s.clone(), e))?;
            if std::fs::symlink_metadata(&s).map_err(|e| (s.clone(), e))?.is_dir() {
                self.apply_dir(&s, &d)?;
                self.copy_attrs(&s, &d).map_err(|e| (s.clone(), e))?;
            }
        }
        Ok(())
    }

    /// One entry; a directory's children are the caller's.
    fn apply_entry(&mut self, s: &Path, d: &Path) -> io::Result<()> {
        let m = std::fs::symlink_metadata(s)?;
        let ft = m.file_type();
        let existing = std::fs::symlink_metadata(d).ok();
        if ft.is_char_device() && m.rdev() == 0 {
            return remove_any(d);
        }
        if ft.is_dir() {
            match existing {
                Some(e) if e.is_dir() && is_opaque(s)? => {
                    remove_any(d)?;
                    std::fs::create_dir(d)
                }
                Some(e) if e.is_dir() => Ok(()),
                Some(_) => remove_any(d).and_then(|_| std::fs::create_dir(d)),
                None => std::fs::create_dir(d),
            }?;
            return Ok(());
        }
        if existing.is_some() {
            remove_any(d)?;
        }
        if m.nlink() > 1 {
            if let Some(first) = self.links.get(&(m.dev(), m.ino())) {
                return std::fs::hard_link(first, d);
            }
            self.links.insert((m.dev(), m.ino()), d.to_path_buf());
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(s)?, d)?;
        } else if ft.is_file() {
            let mut from = std::fs::File::open(s)?;
            let mut to = std::fs::File::options().write(true).create_new(true).open(d)?;
            self.bytes += io::copy(&mut from, &mut to)?;
        } else {
            let kind = SFlag::from_bits_truncate(m.mode() & libc::S_IFMT);
            mknod(d, kind, Mode::from_bits_truncate(0o600), m.rdev()).map_err(io::Error::from)?;
        }
        self.copy_attrs(s, d)
    }

    /// Owner, mode, xattrs and mtime of `s` onto `d` (not following symlinks).
    fn copy_attrs(&self, s: &Path, d: &Path) -> io::Result<()> {
        let m = std::fs::symlink_metadata(s)?;
        std::os::unix::fs::lchown(d, Some(m.uid()), Some(m.gid()))?;
        let symlink = m.file_type().is_symlink();
        if !symlink {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(m.mode() & 0o7777))?;
        }
        for (name, value) in read_xattrs(s)? {
            crate::sys::lsetxattr(d, &name, &value)?;
        }
        let t = TimeSpec::new(m.mtime(), m.mtime_nsec());
        nix::sys::stat::utimensat(None, d, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .map_err(io::Error::from)
    }
}

/// Reads a small file of a container's rootfs, resolving its path as the
/// container would (symlinks stay inside the root). None if it is missing.
pub fn read_in_root(root: &Path, rel: &str) -> io::Result<Option<Vec<u8>>> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let dir = std::fs::File::open(root)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(dir.as_raw_fd(), OsStr::new(rel), how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    if !f.metadata()?.is_file() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    f.take(1 << 20).read_to_end(&mut buf)?;
    Ok(Some(buf))
}
