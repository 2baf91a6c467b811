//! Block devices as the I/O throttles name them: the whole disk's major:minor.
//!
//! The kernel takes throttles only for whole disks: on this host (Linux 6.18, cgroup v1) a
//! partition's major:minor written to blkio.throttle.* fails with ENODEV, as does an unknown
//! one; v2's io.max goes through the same parser (blkg_conf_prep). So every device named,
//! however, is mapped to the disk that holds it.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::mountinfo;

/// A block device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockDevice {
    major: u32,
    minor: u32,
}

impl BlockDevice {
    pub fn new(major: u32, minor: u32) -> BlockDevice {
        BlockDevice { major, minor }
    }

    pub fn major(self) -> u32 {
        self.major
    }

    pub fn minor(self) -> u32 {
        self.minor
    }

    fn from_dev_t(dev: u64) -> BlockDevice {
        BlockDevice { major: libc::major(dev), minor: libc::minor(dev) }
    }

    /// "MAJ:MIN".
    pub fn parse(text: &str) -> Option<BlockDevice> {
        let (major, minor) = text.split_once(':')?;
        Some(BlockDevice { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }
}

impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Where the kernel lists block devices by number.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

/// The whole disk for `dev` (itself unless it is a partition), from sysfs.
pub fn whole_disk(dev: BlockDevice) -> Result<BlockDevice, String> {
    whole_disk_in(Path::new(SYS_DEV_BLOCK), dev)
}

/// [`whole_disk`] against a sysfs `dev/block` directory: `DIR/MAJ:MIN` links to the device's
/// directory; a partition's has a `partition` file and sits in its disk's directory, whose
/// `dev` file holds the disk's number.
pub fn whole_disk_in(sys_dev_block: &Path, dev: BlockDevice) -> Result<BlockDevice, String> {
    let node = sys_dev_block.join(dev.to_string());
    let dir = std::fs::canonicalize(&node).map_err(|_| format!("is no block device of this host ({dev})"))?;
    if !dir.join("partition").exists() {
        return Ok(dev);
    }
    let parent = dir.parent().map(|p| p.join("dev")).unwrap_or_default();
    let text = std::fs::read_to_string(&parent).map_err(|e| format!("is a partition ({dev}); {parent:?}: {e}"))?;
    BlockDevice::parse(text.trim()).ok_or_else(|| format!("is a partition ({dev}); {parent:?} holds {text:?}"))
}

/// The block device a device node (e.g. /dev/vda) stands for.
pub fn of_node(path: &Path) -> Result<BlockDevice, String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.file_type().is_block_device() {
        return Err("is not a block device".to_string());
    }
    Ok(BlockDevice::from_dev_t(meta.rdev()))
}

/// The block device holding the filesystem that `path` is on. Filesystems without one of their
/// own (major 0: overlay, btrfs, tmpfs) are followed through /proc/self/mountinfo: overlay's
/// upper directory, else a /dev/ mount source.
pub fn backing(path: &Path) -> Result<BlockDevice, String> {
    backing_at(path, 0)
}

fn backing_at(path: &Path, depth: u32) -> Result<BlockDevice, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let dev = BlockDevice::from_dev_t(meta.dev());
    if dev.major != 0 {
        return Ok(dev);
    }
    let mount = mount_of(dev).ok_or_else(|| format!("{} is on {dev}, which is in no mount", path.display()))?;
    if let Some(upper) = mount.upper_dir.filter(|_| depth < 8) {
        return backing_at(&upper, depth + 1);
    }
    if mount.source.starts_with("/dev/") {
        return of_node(Path::new(&mount.source)).map_err(|e| format!("{}: {e}", mount.source));
    }
    Err(format!("{} is on a {} filesystem with no block device under it", path.display(), mount.fstype))
}

struct Mount {
    fstype: String,
    source: String,
    upper_dir: Option<PathBuf>,
}

/// The mount whose st_dev is `dev` (mountinfo's third field).
fn mount_of(dev: BlockDevice) -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let number = dev.to_string();
    let m = mountinfo::parse(&text).ok()?.into_iter().find(|m| m.device == number)?;
    let upper_dir = m.super_options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(mountinfo::unescape);
    Some(Mount { fstype: m.fs_type, source: m.source, upper_dir: upper_dir.map(PathBuf::from) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn partitions_map_to_their_disk() {
        let sys = tempfile::tempdir().unwrap();
        let disk = sys.path().join("devices/virtual/block/loop0");
        let part = disk.join("loop0p1");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(disk.join("dev"), "7:0\n").unwrap();
        std::fs::write(part.join("dev"), "259:0\n").unwrap();
        std::fs::write(part.join("partition"), "1\n").unwrap();
        let by_number = sys.path().join("dev/block");
        std::fs::create_dir_all(&by_number).unwrap();
        symlink(&disk, by_number.join("7:0")).unwrap();
        symlink(&part, by_number.join("259:0")).unwrap();
        assert_eq!(whole_disk_in(&by_number, BlockDevice::new(259, 0)), Ok(BlockDevice::new(7, 0)));
        assert_eq!(whole_disk_in(&by_number, BlockDevice::new(7, 0)), Ok(BlockDevice::new(7, 0)));
        let err = whole_disk_in(&by_number, BlockDevice::new(9999, 0)).unwrap_err();
        assert_eq!(err, "is no block device of this host (9999:0)");
    }

    #[test]
    fn the_root_filesystem_has_a_disk() {
        // Whatever backs / on the machine running the tests, it is a whole disk that sysfs knows.
        let dev = backing(Path::new("/")).unwrap();
        assert_eq!(whole_disk(dev).map(|d| d.major() != 0), Ok(true), "{dev}");
    }

    #[test]
    fn device_numbers_parse() {
        assert_eq!(BlockDevice::parse("254:0"), Some(BlockDevice::new(254, 0)));
        assert_eq!(BlockDevice::new(8, 16).to_string(), "8:16");
        for bad in ["254", "a:b", "-1:0", "1:2:3", ""] {
            assert_eq!(BlockDevice::parse(bad), None, "{bad}");
        }
    }
}
