//! `linux.intelRdt`: cache and memory-bandwidth allocation through the
//! resctrl filesystem. Warren does not implement it yet; a config that asks
//! for it is refused before anything is created, rather than run without
//! the limits it asked for.

use oci_spec::runtime::Spec;
use std::path::Path;

/// Where resctrl is mounted, by convention (runc and the kernel docs).
pub const RESCTRL: &str = "/sys/fs/resctrl";
/// RDTGROUP_SUPER_MAGIC, resctrl's f_type in statfs(2).
const RESCTRL_MAGIC: u64 = 0x0765_5821;

#[derive(Debug, thiserror::Error)]
pub enum IntelRdtError {
    #[error("linux.intelRdt: resctrl is not mounted on this host")]
    NotMounted,
    #[error("linux.intelRdt: resctrl is mounted at {RESCTRL}, but this runtime does not implement Intel RDT")]
    NotImplemented,
}

/// Whether a resctrl filesystem is mounted at `path`.
pub fn is_resctrl(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 as u64 == RESCTRL_MAGIC)
}

/// Refuses a config with `linux.intelRdt`: this host or this runtime cannot honour it.
pub fn check(spec: &Spec) -> Result<(), IntelRdtError> {
    if spec.linux().as_ref().and_then(|l| l.intel_rdt().as_ref()).is_none() {
        return Ok(());
    }
    if !is_resctrl(Path::new(RESCTRL)) {
        return Err(IntelRdtError::NotMounted);
    }
    Err(IntelRdtError::NotImplemented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_resctrl() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_resctrl(dir.path()));
        assert!(!is_resctrl(&dir.path().join("missing")));
    }
}
