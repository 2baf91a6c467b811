//! /dev inside the container: the default devices every container gets,
//! config.json's `linux.devices`, and the usual /dev symlinks.

use super::{do_mount, fd_path, open_target, RootfsContext, RootfsError};
use nix::mount::MsFlags;
use nix::sys::stat::{makedev, mknodat, Mode, SFlag};
use oci_spec::runtime::LinuxDeviceType;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// A device node to create: path, kind, major, minor, mode, uid, gid.
struct Node {
    path: PathBuf,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The devices the runtime spec requires in every container.
pub const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn nodes(ctx: &RootfsContext) -> Vec<Node> {
    let mut out: Vec<Node> = DEFAULT_DEVICES
        .iter()
        .map(|(p, major, minor)| Node {
            path: PathBuf::from(p),
            kind: SFlag::S_IFCHR,
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    let devices = ctx.spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default();
    for d in devices {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        out.retain(|n| n.path != *d.path());
        out.push(Node {
            path: d.path().clone(),
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    out
}

pub fn create_all(ctx: &RootfsContext, root: &File) -> Result<(), RootfsError> {
    let mut dirs = Vec::new();
    for node in nodes(ctx) {
        if ctx.in_user_ns {
            bind_host_device(root, &node)?;
        } else {
            make_node(root, &node, &mut dirs)?;
        }
    }
    symlinks(root)
}

fn make_node(root: &File, node: &Node, dirs: &mut Vec<(PathBuf, OwnedFd)>) -> Result<(), RootfsError> {
    let rel = node.path.strip_prefix("/").unwrap_or(&node.path);
    let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
    // Devices mostly share /dev: open each parent directory once.
    let dir = match dirs.iter().position(|(p, _)| *p == parent) {
        Some(i) => dirs[i].1.as_raw_fd(),
        None => {
            super::mkdir_all(root, &parent)?;
            let fd = crate::sys::open_in_root(
                root.as_raw_fd(),
                &Path::new(".").join(&parent),
                libc::O_PATH | libc::O_DIRECTORY,
                0,
            )
            .map_err(|source| RootfsError::Path { path: node.path.clone(), source })?;
            let raw = fd.as_raw_fd();
            dirs.push((parent, fd));
            raw
        }
    };
    let name = rel.file_name().unwrap_or_default();
    let err = |source| RootfsError::Device { path: node.path.clone(), source };
    let mode = Mode::from_bits_truncate(node.mode);
    let dev = makedev(node.major, node.minor);
    match mknodat(Some(dir), name, node.kind, mode, dev) {
        Ok(()) => {}
        // Something of the image sits there: the device replaces it.
        Err(nix::Error::EEXIST) => {
            nix::unistd::unlinkat(Some(dir), name, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(err)?;
            mknodat(Some(dir), name, node.kind, mode, dev).map_err(err)?;
        }
        Err(e) => return Err(err(e)),
    }
    // mknod is subject to the umask: set the mode exactly, then the owner.
    nix::sys::stat::fchmodat(Some(dir), name, mode, nix::sys::stat::FchmodatFlags::NoFollowSymlink).map_err(err)?;
    if node.uid != 0 || node.gid != 0 {
        nix::unistd::fchownat(
            Some(dir),
            name,
            Some(node.uid.into()),
            Some(node.gid.into()),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// In a user namespace mknod is refused: bind the host's node instead.
fn bind_host_device(root: &File, node: &Node) -> Result<(), RootfsError> {
    let target = open_target(root, &node.path, true)?;
    do_mount(Some(&node.path), &fd_path(&target), None, MsFlags::MS_BIND, None, &node.path)
}

fn symlinks(root: &File) -> Result<(), RootfsError> {
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    super::mkdir_all(root, Path::new("dev"))?;
    let dev = crate::sys::open_in_root(root.as_raw_fd(), Path::new("dev"), libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|source| RootfsError::Path { path: "/dev".into(), source })?;
    for (target, name) in links {
        let path = Path::new("/dev").join(name);
        let err = |source| RootfsError::Device { path: path.clone(), source };
        if name == "ptmx" {
            // The devpts instance's own ptmx, never the host's.
            match nix::unistd::unlinkat(Some(dev.as_raw_fd()), name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::Error::ENOENT) => {}
                Err(e) => return Err(err(e)),
            }
        }
        match nix::unistd::symlinkat(target, Some(dev.as_raw_fd()), name) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}
