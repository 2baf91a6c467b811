//! A `cgroup` mount in config.json: the container sees its own cgroup
//! directories (bound from the host) at the usual places, read-only if asked.

use super::{do_mount, fd_path, open_target, options::MountOptions, RootfsError};
use crate::cgroups::Cgroup;
use nix::mount::MsFlags;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where one host hierarchy appears under the mount point: "cpu,cpuacct" for a
/// co-mounted pair, "systemd" for name=systemd, "unified" for the hybrid v2 mount.
fn subdir(key: &str) -> String {
    key.strip_prefix("name=").unwrap_or(key).to_string()
}

pub fn mount(root: &File, dest: &Path, opts: &MountOptions, cgroup: Option<&Cgroup>) -> Result<(), RootfsError> {
    let Some(cgroup) = cgroup else { return Ok(()) };
    let keep = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let ro = opts.flags.contains(MsFlags::MS_RDONLY);
    let binds: Vec<(PathBuf, PathBuf)> = match cgroup {
        Cgroup::V2 { path } => vec![(path.clone(), dest.to_path_buf())],
        Cgroup::V1 { paths, unified } => {
            let target = open_target(root, dest, false)?;
            let data = "mode=755";
            do_mount(Some(Path::new("tmpfs")), &fd_path(&target), Some("tmpfs"), keep, Some(data), dest)?;
            let mut v: Vec<(PathBuf, PathBuf)> =
                paths.iter().map(|(key, host)| (host.clone(), dest.join(subdir(key)))).collect();
            if let Some(u) = unified {
                v.push((u.clone(), dest.join("unified")));
            }
            v
        }
    };
    for (host, inside) in &binds {
        let target = open_target(root, inside, false)?;
        do_mount(Some(host), &fd_path(&target), None, MsFlags::MS_BIND | MsFlags::MS_REC, None, inside)?;
    }
    if let Cgroup::V1 { paths, .. } = cgroup {
        comount_links(root, dest, paths.keys())?;
    }
    // One recursive mount_setattr for the whole tree instead of a remount
    // per hierarchy: the cgroup mount is the costliest one of a container.
    const RDONLY: u64 = 0x1;
    const NOSUID_NODEV_NOEXEC: u64 = 0x2 | 0x4 | 0x8;
    let target = open_target(root, dest, false)?;
    let set = NOSUID_NODEV_NOEXEC | if ro { RDONLY } else { 0 };
    crate::sys::mount_setattr_recursive(target.as_raw_fd(), set, 0)
        .map_err(|source| RootfsError::Path { path: dest.into(), source })
}

/// "cpu" and "cpuacct" as symlinks to a co-mounted "cpu,cpuacct".
fn comount_links<'a>(root: &File, dest: &Path, keys: impl Iterator<Item = &'a String>) -> Result<(), RootfsError> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    let dir = crate::sys::open_in_root(root.as_raw_fd(), rel, libc::O_PATH | libc::O_DIRECTORY, 0)
        .map_err(|source| RootfsError::Path { path: dest.into(), source })?;
    for key in keys.filter(|k| k.contains(',')) {
        for part in key.split(',') {
            match nix::unistd::symlinkat(key.as_str(), Some(dir.as_raw_fd()), part) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(RootfsError::Path { path: dest.join(part), source: e.into() }),
            }
        }
    }
    Ok(())
}
