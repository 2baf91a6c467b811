//! A tenant's disk quota: its bundle directory (config.json and the overlay's upper and work
//! dirs, so everything the tenant writes) is an ext4 file system in a sparse image file of
//! the plan's `disk.limit`, loop-mounted. Writing past it fails with ENOSPC inside the
//! tenant while its neighbours and the host go on; the host's disk holds only the blocks
//! written (the mount passes discards down, so deleted files give their blocks back).
//! The store here is on ext4, which has project quotas only when made with them, so an
//! image per tenant is the mechanism that works on any host file system.

use std::io;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::TenantError;

fn disk_err(path: &Path, message: impl Into<String>) -> TenantError {
    TenantError::Disk { path: path.to_path_buf(), message: message.into() }
}

/// Makes `image` (0600, sparse) of `size` bytes with an empty ext4 file system in it.
pub fn make(image: &Path, size: u64) -> Result<(), TenantError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(image)
        .map_err(|e| disk_err(image, e.to_string()))?;
    f.set_len(size).map_err(|e| disk_err(image, e.to_string()))?;
    drop(f);
    // No blocks reserved for root (-m 0): the whole limit is the tenant's. 4 KiB blocks even
    // on small disks, whose 1 KiB default makes resize2fs refuse most shrinks later.
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
        .arg(image)
        .output()
        .map_err(|e| disk_err(image, format!("mkfs.ext4: {e} (e2fsprogs)")))?;
    if !out.status.success() {
        return Err(disk_err(image, format!("mkfs.ext4: {}", one_line(&out.stdout, &out.stderr))));
    }
    Ok(())
}

/// Mounts `image` on `target` (nosuid, nodev: set-id files in an upper dir run only in the
/// tenant, through its overlay) through a loop device that frees itself at unmount.
pub fn mount_on(image: &Path, target: &Path) -> Result<(), TenantError> {
    let file =
        std::fs::OpenOptions::new().read(true).write(true).open(image).map_err(|e| disk_err(image, e.to_string()))?;
    let (dev, _held) = crate::sys::attach_loop(&file).map_err(|e| disk_err(image, format!("loop device: {e}")))?;
    mount(Some(&dev), target, Some("ext4"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("discard"))
        .map_err(|e| disk_err(target, format!("mount {}: {e}", dev.display())))
}

/// Whether something is mounted on `path` (its device differs from its parent's).
pub fn is_mounted(path: &Path) -> bool {
    warren_images::rootfs::is_mount_point(path).unwrap_or(false)
}

/// Unmounts `target`; Ok when nothing is mounted there.
pub fn unmount(target: &Path) -> Result<(), TenantError> {
    if !is_mounted(target) {
        return Ok(());
    }
    umount2(target, MntFlags::UMOUNT_NOFOLLOW).map_err(|e| disk_err(target, format!("unmount: {e}")))
}

/// The loop device mounted on `target` (from the mount's device number).
fn loop_device_of(target: &Path) -> Result<std::path::PathBuf, TenantError> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(target).map_err(|e| disk_err(target, e.to_string()))?.dev();
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    if major != LOOP_MAJOR {
        return Err(disk_err(target, format!("is on device {major}:{minor}, not on a loop device")));
    }
    Ok(std::path::PathBuf::from(format!("/dev/loop{minor}")))
}

/// Grows the file system mounted on `target` from `image` to `size` bytes while it stays
/// mounted and in use (ext4 grows online): the image file first, then the loop device's
/// capacity, then resize2fs.
pub fn grow(image: &Path, target: &Path, size: u64) -> Result<(), TenantError> {
    let dev = loop_device_of(target)?;
    let f = std::fs::OpenOptions::new().write(true).open(image).map_err(|e| disk_err(image, e.to_string()))?;
    f.set_len(size).map_err(|e| disk_err(image, e.to_string()))?;
    crate::sys::loop_set_capacity(&dev).map_err(|e| disk_err(&dev, format!("LOOP_SET_CAPACITY: {e}")))?;
    resize2fs(&dev, None)
}

/// Resizes the unmounted file system in `image` from `current` to `size` bytes: checked
/// first, as resize2fs asks; a growing file is extended before, a shrinking one cut after.
pub fn resize_offline(image: &Path, current: u64, size: u64) -> Result<(), TenantError> {
    let out = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .output()
        .map_err(|e| disk_err(image, format!("e2fsck: {e} (e2fsprogs)")))?;
    // 0: clean, 1: errors corrected.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(disk_err(image, format!("e2fsck: {}", one_line(&out.stdout, &out.stderr))));
    }
    let set_len = |len: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(image).map_err(|e| disk_err(image, e.to_string()))?;
        f.set_len(len).map_err(|e| disk_err(image, e.to_string()))
    };
    if size > current {
        set_len(size)?;
    }
    // On failure a grown file stays longer than its file system, which costs nothing (sparse).
    resize2fs(image, Some(size))?;
    if size < current {
        set_len(size)?;
    }
    Ok(())
}

fn resize2fs(what: &Path, size: Option<u64>) -> Result<(), TenantError> {
    let mut cmd = Command::new("resize2fs");
    cmd.arg(what);
    if let Some(size) = size {
        cmd.arg(format!("{}K", size / 1024));
    }
    let out = cmd.output().map_err(|e| disk_err(what, format!("resize2fs: {e} (e2fsprogs)")))?;
    if !out.status.success() {
        return Err(disk_err(what, format!("resize2fs: {}", one_line(&out.stdout, &out.stderr))));
    }
    Ok(())
}

fn one_line(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!("{} {}", String::from_utf8_lossy(stdout), String::from_utf8_lossy(stderr));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The loop devices' major number.
const LOOP_MAJOR: u64 = 7;

/// Adds, beside each throttle entry of `block_io` (OCI linux.resources.blockIO), the same
/// limit for the loop device `major:minor`, replacing entries for another loop device.
/// Returns whether anything changed.
pub fn retarget_throttles(block_io: &mut serde_json::Value, major: u32, minor: u32) -> bool {
    let mut changed = false;
    for key in ["throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice", "throttleWriteIOPSDevice"]
    {
        let Some(list) = block_io.get_mut(key).and_then(|v| v.as_array_mut()) else { continue };
        let is_loop = |e: &serde_json::Value| e["major"].as_u64() == Some(LOOP_MAJOR);
        let wanted: Vec<serde_json::Value> = list
            .iter()
            .filter(|e| !is_loop(e))
            .map(|e| {
                let mut l = e.clone();
                (l["major"], l["minor"]) = (major.into(), minor.into());
                l
            })
            .collect();
        let present: Vec<&serde_json::Value> = list.iter().filter(|e| is_loop(e)).collect();
        if present.len() != wanted.len() || present.iter().zip(&wanted).any(|(a, b)| *a != b) {
            list.retain(|e| !is_loop(e));
            list.extend(wanted);
            changed = true;
        }
    }
    changed
}

/// Bytes used and the file system's size, from statvfs of the mounted disk.
pub fn usage(target: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(target)?;
    let frag = st.fragment_size();
    let (blocks, free) = (st.blocks(), st.blocks_free());
    Ok(((blocks - free) * frag, blocks * frag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn throttles_follow_the_loop_device() {
        let mut b = json!({"throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 10}]});
        assert!(retarget_throttles(&mut b, 7, 3));
        assert_eq!(
            b["throttleWriteBpsDevice"],
            json!([{"major": 254, "minor": 0, "rate": 10}, {"major": 7, "minor": 3, "rate": 10}])
        );
        assert!(!retarget_throttles(&mut b, 7, 3), "already there");
        assert!(retarget_throttles(&mut b, 7, 9), "another loop device after a reboot");
        assert_eq!(b["throttleWriteBpsDevice"][1], json!({"major": 7, "minor": 9, "rate": 10}));
        assert_eq!(b["throttleWriteBpsDevice"].as_array().unwrap().len(), 2);
        let mut none = json!(null);
        assert!(!retarget_throttles(&mut none, 7, 1));
    }
}
