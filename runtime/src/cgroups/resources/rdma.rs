//! rdma: HCA handle and object limits per device (rdma.max, the same format on v1 and v2).

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::LinuxRdma;

use super::{add, invalid, CgroupError};

pub const FIELD: &str = "linux.resources.rdma";

/// Device names are the first word of an rdma.max line.
pub fn validate(limits: &HashMap<String, LinuxRdma>) -> Result<(), CgroupError> {
    match limits.keys().find(|name| name.is_empty() || name.contains(char::is_whitespace)) {
        Some(name) => Err(invalid(FIELD, format!("{name:?}"), "is not an RDMA device name")),
        None => Ok(()),
    }
}

/// One write per device (sorted, for a stable order), with the limits it sets.
pub fn apply(limits: &HashMap<String, LinuxRdma>, dir: &Path) -> Result<(), CgroupError> {
    let mut names: Vec<&String> = limits.keys().collect();
    names.sort();
    for name in names {
        if let Some(line) = line(name, &limits[name]) {
            add(dir, "rdma.max", &line, FIELD)?;
        }
    }
    Ok(())
}

fn line(name: &str, limit: &LinuxRdma) -> Option<String> {
    let handles = limit.hca_handles().map(|n| format!(" hca_handle={n}"));
    let objects = limit.hca_objects().map(|n| format!(" hca_object={n}"));
    if handles.is_none() && objects.is_none() {
        return None;
    }
    Some(format!("{name}{}{}", handles.unwrap_or_default(), objects.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxRdmaBuilder;
    use std::fs::{read_to_string, write};

    #[test]
    fn one_line_per_device_with_what_is_set() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("rdma.max"), "").unwrap();
        let limits = HashMap::from([
            ("mlx5_1".to_string(), LinuxRdmaBuilder::default().hca_objects(1000u32).build().unwrap()),
            ("mlx5_0".to_string(), LinuxRdmaBuilder::default().hca_handles(2u32).hca_objects(10u32).build().unwrap()),
            ("mlx5_2".to_string(), LinuxRdma::default()),
        ]);
        validate(&limits).unwrap();
        apply(&limits, tmp.path()).unwrap();
        let written = read_to_string(tmp.path().join("rdma.max")).unwrap();
        assert_eq!(written, "mlx5_0 hca_handle=2 hca_object=10\nmlx5_1 hca_object=1000\n");
        let bad = HashMap::from([("a b".to_string(), LinuxRdma::default())]);
        assert!(validate(&bad).unwrap_err().to_string().starts_with("linux.resources.rdma: \"a b\""));
    }
}
