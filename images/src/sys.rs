//! The raw syscalls nix does not wrap: extended attributes (not following
//! symlinks) and the new mount API.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// lsetxattr(2): sets `name` on `path` itself (a symlink is not followed).
pub fn lsetxattr(path: &Path, name: &OsStr, value: &[u8]) -> io::Result<()> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let n = cstring(name.as_bytes())?;
    // SAFETY: both strings are NUL-terminated and live across the call; value
    // is a valid slice of value.len() bytes.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// lgetxattr(2): the value of `name` on `path` itself, None where it is unset.
pub fn lgetxattr(path: &Path, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let n = cstring(name.as_bytes())?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: the strings are NUL-terminated; buf is writable for buf.len() bytes.
        let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc >= 0 {
            buf.truncate(rc as usize);
            return Ok(Some(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(err),
        }
    }
}

/// llistxattr(2): the names of the extended attributes on `path` itself.
pub fn llistxattr(path: &Path) -> io::Result<Vec<OsString>> {
    let p = cstring(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: p is NUL-terminated; buf is writable for buf.len() bytes.
        let rc = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if rc >= 0 {
            buf.truncate(rc as usize);
            break;
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
    Ok(buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| OsString::from_vec(n.to_vec())).collect())
}

// The new mount API's constants (linux/mount.h).
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn fd_result(rc: libc::c_long) -> io::Result<OwnedFd> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as RawFd) })
}

fn rc_result(rc: libc::c_long) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fsconfig(fs: &OwnedFd, cmd: libc::c_uint, key: Option<&CStr>, value: Option<&CStr>) -> io::Result<()> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
    // SAFETY: fsconfig(2) on our fs context fd; key and value are NUL-terminated
    // strings (or null where the command takes none) that outlive the call.
    rc_result(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), cmd, key, value, 0) })
}

/// Mounts overlayfs at `target` with the new mount API: each lower dir
/// (`lowers`, top first) is its own "lowerdir+" parameter (Linux 6.8), so the
/// layer count is not bounded by mount(2)'s one page of options.
pub fn mount_overlay_fsconfig(lowers: &[&Path], upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    let mnt = detached_overlay(lowers, upper, work, false)?;
    let to = cstring(target.as_os_str().as_bytes())?;
    let empty = cstring(b"")?;
    // SAFETY: move_mount(2) of the detached mount fd onto `to`, both strings
    // NUL-terminated and alive across the call.
    rc_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// A new tmpfs made with `params` (fsconfig string keys and values), attached nowhere (see
/// [`detached_overlay`]).
pub fn detached_tmpfs(params: &[(&str, &str)]) -> io::Result<OwnedFd> {
    let name = cstring(b"tmpfs")?;
    // SAFETY: fsopen(2) with a NUL-terminated file system name.
    let fs = fd_result(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    for (key, value) in params {
        let (key, value) = (cstring(key.as_bytes())?, cstring(value.as_bytes())?);
        fsconfig(&fs, FSCONFIG_SET_STRING, Some(&key), Some(&value))?;
    }
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount(2) on the configured context; no attribute flags.
    fd_result(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })
}

/// An overlayfs mount attached nowhere: readable through `/proc/self/fd/N`,
/// gone when the descriptor is closed, until `move_mount` puts it somewhere.
/// `lowers` top first; `index_off` sets `index=off` whatever the kernel's default.
pub fn detached_overlay(lowers: &[&Path], upper: &Path, work: &Path, index_off: bool) -> io::Result<OwnedFd> {
    let name = cstring(b"overlay")?;
    // SAFETY: fsopen(2) with a NUL-terminated file system name.
    let fs = fd_result(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    let set =
        |key: &[u8], value: &[u8]| fsconfig(&fs, FSCONFIG_SET_STRING, Some(&cstring(key)?), Some(&cstring(value)?));
    // One parameter per layer ("lowerdir+", 6.8) has no page limit; older kernels take the list.
    let per_layer: io::Result<()> = lowers.iter().try_for_each(|l| set(b"lowerdir+", l.as_os_str().as_bytes()));
    if per_layer.is_err() {
        let list: Vec<&[u8]> = lowers.iter().map(|l| l.as_os_str().as_bytes()).collect();
        set(b"lowerdir", &list.join(&b':'))?;
    }
    set(b"upperdir", upper.as_os_str().as_bytes())?;
    set(b"workdir", work.as_os_str().as_bytes())?;
    if index_off {
        set(b"index", b"off")?;
    }
    // What mountinfo and df show as the source, as for `mount -t overlay overlay`.
    set(b"source", b"overlay")?;
    fsconfig(&fs, FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount(2) on the configured context; no attribute flags.
    fd_result(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })
}
