//! pids: the number of tasks (pids.max, the same file on v1 and v2).

use std::path::Path;

use oci_spec::runtime::LinuxPids;

use super::{set, CgroupError};

pub const LIMIT: &str = "linux.resources.pids.limit";

/// A limit of 0 or less means no limit, as runc and crun read it.
pub fn apply(pids: &LinuxPids, dir: &Path) -> Result<(), CgroupError> {
    set(dir, "pids.max", &max_value(pids.limit()), LIMIT)
}

pub fn max_value(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxPidsBuilder;
    use std::fs::{read_to_string, write};

    #[test]
    fn limit_or_max() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("pids.max"), "max\n").unwrap();
        apply(&LinuxPidsBuilder::default().limit(32).build().unwrap(), tmp.path()).unwrap();
        assert_eq!(read_to_string(tmp.path().join("pids.max")).unwrap(), "32\n");
        for unlimited in [0, -1] {
            apply(&LinuxPidsBuilder::default().limit(unlimited).build().unwrap(), tmp.path()).unwrap();
            assert_eq!(read_to_string(tmp.path().join("pids.max")).unwrap(), "max\n");
        }
    }
}
