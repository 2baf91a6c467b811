//! The rootfs containerd hands over with Create (typically one overlay from its snapshotter).
//! One plain overlay is left to the runtime, which mounts it inside the container's own mount
//! namespace (`warren::rootfs::overlay`), so the host's mount table does not grow with
//! containers; anything else is mounted on BUNDLE/rootfs before `warren create` and unmounted
//! at delete.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Result, ShimError};

/// containerd's rootfs as the runtime's overlay annotation, when it is one overlay of
/// nothing but lower, upper and work dirs (and `index=off`).
pub fn as_overlay_annotation(mounts: &[Mount]) -> Option<String> {
    let [m] = mounts else { return None };
    if m.type_ != "overlay" {
        return None;
    }
    let overlay = warren::rootfs::overlay::RootfsOverlay::parse(&m.options.join(",")).ok()?;
    Some(overlay.to_annotation())
}

/// Puts the overlay annotation into BUNDLE/config.json (a new file renamed over it).
pub fn annotate_bundle(bundle: &Path, value: String) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(ShimError::io(&path))?;
    let json_err = |source| ShimError::Json { path: path.clone(), source };
    let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&text).map_err(json_err)?;
    let annotations = config.entry("annotations").or_insert_with(|| serde_json::json!({}));
    if let Some(a) = annotations.as_object_mut() {
        a.insert(warren::rootfs::overlay::ANNOTATION.into(), serde_json::Value::String(value));
    }
    let bytes = serde_json::to_vec(&config).map_err(json_err)?;
    warren::atomic_file::write(&path, &bytes, 0o644).map_err(ShimError::io(&path))
}

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
