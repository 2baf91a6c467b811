//! CRIU's cache of what the kernel can do. Each criu run probes the kernel (about 30 ms on
//! this host) unless it finds `/run/criu.kdat`, which criu writes only where /run is a tmpfs,
//! so that a reboot drops it. Where /run is not one, Warren has `criu check` write the cache
//! into a small tmpfs of its own, attached on /run in a mount namespace of criu's alone, and
//! keeps a copy at `/run/criu.kdat` while the copy is younger than this boot and than the
//! criu binary. criu checks what it loads (magic and size) and probes again if it must.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

const CACHE: &str = "/run/criu.kdat";

/// Makes sure a fresh cache is in place before criu runs. A failure only costs the probing
/// the cache would have saved, so it is logged, not returned.
pub fn ensure_cache(criu: &Path) {
    if fresh(criu) || run_is_tmpfs() {
        return;
    }
    if let Err(e) = refresh(criu) {
        log::debug!("criu's kdat cache not made: {e}");
    }
}

fn fresh(criu: &Path) -> bool {
    let Ok(cache) = std::fs::metadata(CACHE).and_then(|m| m.modified()) else { return false };
    let binary = std::fs::metadata(criu).and_then(|m| m.modified()).ok();
    boot_time().is_some_and(|boot| cache >= boot) && binary.is_none_or(|b| cache >= b)
}

/// Where /run is a tmpfs criu keeps the cache itself.
fn run_is_tmpfs() -> bool {
    nix::sys::statfs::statfs("/run").is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs: u64 = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn refresh(criu: &Path) -> io::Result<()> {
    let tmpfs = warren_images::rootfs::detached_tmpfs(&[("size", "1m")])?;
    let fd = tmpfs.as_raw_fd();
    let mut cmd = Command::new(criu);
    cmd.args(["check", "--log-file", "/dev/null"]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: unshare, mount and move_mount only, on a descriptor made before the fork.
    unsafe { cmd.pre_exec(move || crate::sys::attach_in_new_mount_ns(fd, c"/run")) };
    // `check` fails where an optional feature is missing; it wrote the cache before that.
    cmd.status()?;
    let made = Path::new("/proc/self/fd").join(fd.to_string()).join("criu.kdat");
    let bytes = std::fs::read(&made)?;
    crate::atomic_file::write(Path::new(CACHE), &bytes, 0o600)
}
