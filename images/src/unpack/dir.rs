//! A layer's output directory, written through directory descriptors that
//! the kernel resolved beneath its root without following any symlink, so a
//! mistake in the model still cannot write outside it.

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmodat, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// Owner, mode and mtime of one entry.
#[derive(Clone, Copy, Debug)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
}

pub struct LayerDir {
    root_fd: OwnedFd,
    /// The last directory opened: tar entries come grouped by directory.
    cached: Option<(PathBuf, OwnedFd)>,
}

fn to_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn open_beneath(dirfd: RawFd, rel: &Path) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    let fd = openat2(dirfd, rel, how).map_err(to_io)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl LayerDir {
    pub fn open(root: &Path) -> io::Result<LayerDir> {
        let root_fd = File::open(root)?.into();
        Ok(LayerDir { root_fd, cached: None })
    }

    /// A descriptor of directory `rel` (canonical, relative to the root).
    pub fn dir(&mut self, rel: &Path) -> io::Result<RawFd> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root_fd.as_raw_fd());
        }
        if self.cached.as_ref().is_some_and(|(p, _)| p == rel) {
            return Ok(self.cached.as_ref().map(|(_, fd)| fd.as_raw_fd()).unwrap_or(-1));
        }
        let fd = open_beneath(self.root_fd.as_raw_fd(), rel)?;
        let raw = fd.as_raw_fd();
        self.cached = Some((rel.to_path_buf(), fd));
        Ok(raw)
    }

    /// A descriptor of directory `rel` that the next [`LayerDir::dir`] call does not close.
    pub fn dir_uncached(&self, rel: &Path) -> io::Result<OwnedFd> {
        if rel.as_os_str().is_empty() {
            return self.root_fd.try_clone();
        }
        open_beneath(self.root_fd.as_raw_fd(), rel)
    }

    /// Forgets the cached directory (after removing or replacing one).
    pub fn forget(&mut self) {
        self.cached = None;
    }

    /// A path naming `name` in the directory `fd` without following `name`
    /// itself, for the syscalls that take no directory descriptor.
    pub fn proc_path(fd: RawFd, name: &OsStr) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{fd}")).join(name)
    }

    pub fn mkdir(fd: RawFd, name: &OsStr) -> io::Result<()> {
        match mkdirat(Some(fd), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(to_io(e)),
        }
    }

    pub fn mknod(fd: RawFd, name: &OsStr, kind: SFlag, dev: libc::dev_t) -> io::Result<()> {
        mknodat(Some(fd), name, kind, Mode::from_bits_truncate(0o600), dev).map_err(to_io)
    }

    /// An overlayfs whiteout: a character device 0:0.
    pub fn whiteout(fd: RawFd, name: &OsStr) -> io::Result<()> {
        LayerDir::mknod(fd, name, SFlag::S_IFCHR, 0)
    }

    pub fn create_file(fd: RawFd, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let raw = nix::fcntl::openat(Some(fd), name, flags, Mode::from_bits_truncate(0o600)).map_err(to_io)?;
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(raw) })
    }

    pub fn symlink(fd: RawFd, name: &OsStr, target: &Path) -> io::Result<()> {
        nix::unistd::symlinkat(target, Some(fd), name).map_err(to_io)
    }

    pub fn hard_link(old_fd: RawFd, old: &OsStr, new_fd: RawFd, new: &OsStr) -> io::Result<()> {
        nix::unistd::linkat(Some(old_fd), old, Some(new_fd), new, nix::fcntl::AtFlags::empty()).map_err(to_io)
    }

    /// Removes `name` (a whole tree for a directory) from directory `fd`.
    pub fn remove(fd: RawFd, name: &OsStr) -> io::Result<()> {
        use nix::unistd::{unlinkat, UnlinkatFlags};
        match unlinkat(Some(fd), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => std::fs::remove_dir_all(LayerDir::proc_path(fd, name)),
            Err(e) => Err(to_io(e)),
        }
    }

    /// Owner, then mode (chown clears set-id bits), then mtime; never
    /// following `name` when it is a symlink.
    pub fn set_attrs(fd: RawFd, name: &OsStr, a: &Attrs, symlink: bool) -> io::Result<()> {
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        fchownat(Some(fd), name, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid)), flags).map_err(to_io)?;
        if !symlink {
            let mode = Mode::from_bits_truncate(a.mode & 0o7777);
            fchmodat(Some(fd), name, mode, FchmodatFlags::FollowSymlink).map_err(to_io)?;
        }
        LayerDir::set_mtime(fd, name, a.mtime)
    }

    /// [`LayerDir::set_attrs`] through the open file itself: no lookup by name.
    pub fn set_file_attrs(f: &File, a: &Attrs) -> io::Result<()> {
        let fd = f.as_raw_fd();
        nix::unistd::fchown(fd, Some(Uid::from_raw(a.uid)), Some(Gid::from_raw(a.gid))).map_err(to_io)?;
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(a.mode & 0o7777)).map_err(to_io)?;
        let t = TimeSpec::new(a.mtime, 0);
        nix::sys::stat::futimens(fd, &t, &t).map_err(to_io)
    }

    pub fn set_mtime(fd: RawFd, name: &OsStr, mtime: i64) -> io::Result<()> {
        let t = TimeSpec::new(mtime, 0);
        utimensat(Some(fd), name, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(to_io)
    }
}
