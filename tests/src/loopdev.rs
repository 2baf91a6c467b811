//! File-backed loop devices for I/O tests: a block device of our own to
//! throttle, detached again whatever happens to the test.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// An attached loop device; `losetup -d` on drop.
pub struct LoopDevice {
    path: PathBuf,
    major: u32,
    minor: u32,
}

impl LoopDevice {
    /// Makes a sparse `size`-byte file at `backing` and attaches the first
    /// free loop device to it.
    pub fn new(backing: &Path, size: u64) -> Result<LoopDevice> {
        fs::File::create(backing)?.set_len(size)?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .context("losetup (apt-get install mount)")?;
        if !out.status.success() {
            bail!("losetup --find --show {}: {}", backing.display(), String::from_utf8_lossy(&out.stderr).trim());
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        // From here on the guard owns the device, whatever goes wrong next.
        let mut dev = LoopDevice { path, major: 0, minor: 0 };
        let md = fs::metadata(&dev.path).with_context(|| format!("{}", dev.path.display()))?;
        if !md.file_type().is_block_device() {
            bail!("{} is not a block device", dev.path.display());
        }
        (dev.major, dev.minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
        Ok(dev)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    pub fn minor(&self) -> u32 {
        self.minor
    }

    /// "major:minor", as cgroup files name devices.
    pub fn number(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        detach(&self.path);
    }
}

fn detach(dev: &Path) {
    match Command::new("losetup").arg("-d").arg(dev).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!("warning: losetup -d {}: {}", dev.display(), String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => eprintln!("warning: losetup -d {}: {e}", dev.display()),
    }
}

/// Loop devices whose backing file lies under `dir` (from sysfs).
pub fn loop_devices_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|f| Path::new(f.trim().trim_end_matches(" (deleted)")).starts_with(dir))
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// Detaches every loop device backed under `dir`.
pub fn detach_loop_devices_under(dir: &Path) {
    for dev in loop_devices_under(dir) {
        detach(&dev);
    }
}
