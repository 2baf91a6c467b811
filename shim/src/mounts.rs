//! The rootfs containerd hands over with Create (typically one overlay from its snapshotter),
//! mounted on BUNDLE/rootfs before `warren create` and unmounted at delete.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Result, ShimError};

/// Mounts `mounts` in order on `target` (created if missing). Undoes what it did on failure.
pub fn mount_rootfs(mounts: &[Mount], target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(ShimError::io(target))?;
    for (index, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(index, m, target) {
            let _ = unmount_all(target);
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(index: usize, m: &Mount, target: &Path) -> Result<()> {
    let err = |source| ShimError::Mount {
        index,
        fstype: m.type_.clone(),
        source_path: m.source.clone(),
        target: target.into(),
        source,
    };
    let opts = warren::rootfs::options::parse(&m.options);
    let data = opts.data_string();
    if data.as_ref().is_some_and(|d| d.len() >= page_size()) {
        return Err(err(nix::Error::E2BIG));
    }
    let fstype = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    // A bind mount takes read-only only on a remount.
    let ro_bind = opts.is_bind() && opts.flags.contains(MsFlags::MS_RDONLY);
    let flags = if ro_bind { opts.flags - MsFlags::MS_RDONLY } else { opts.flags };
    mount(Some(m.source.as_str()), target, fstype, flags, data.as_deref()).map_err(err)?;
    if ro_bind {
        let remount = opts.flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
        mount(None::<&str>, target, None::<&str>, remount, None::<&str>).map_err(err)?;
    }
    for p in &opts.propagation {
        mount(None::<&str>, target, None::<&str>, *p, None::<&str>).map_err(err)?;
    }
    Ok(())
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as usize
}

/// Unmounts everything stacked on `target` (EINVAL: nothing mounted there any more).
pub fn unmount_all(target: &Path) -> Result<()> {
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(nix::Error::EBUSY) => {
                return umount2(target, MntFlags::MNT_DETACH)
                    .map_err(|source| ShimError::Unmount { target: PathBuf::from(target), source })
            }
            Err(source) => return Err(ShimError::Unmount { target: target.into(), source }),
        }
    }
}
