//! unified: cgroup v2 files written as given, after everything else (they override it).

use std::collections::HashMap;
use std::path::Path;

use super::{invalid, set, CgroupError};

pub const FIELD: &str = "linux.resources.unified";

/// Every key must name a file of the cgroup itself, "<controller>.<knob>" (as runc demands),
/// and there must be a cgroup2 dir (`dir`) to write it in.
pub fn validate(values: &HashMap<String, String>, dir: Option<&Path>) -> Result<(), CgroupError> {
    for key in sorted_keys(values) {
        let file_name = !key.contains('/') && !key.contains("..") && key.find('.').is_some_and(|dot| dot > 0);
        if !file_name {
            return Err(invalid(FIELD, format!("{key:?}"), "must be a file name of the form controller.knob"));
        }
        if dir.is_none() {
            return Err(invalid(FIELD, format!("{key:?}"), "cannot be set: the host has no cgroup v2 hierarchy"));
        }
    }
    Ok(())
}

/// A missing file (a controller not enabled, a knob this kernel lacks) is an error naming it.
pub fn apply(values: &HashMap<String, String>, dir: &Path) -> Result<(), CgroupError> {
    for key in sorted_keys(values) {
        set(dir, key, &values[key], FIELD)?;
    }
    Ok(())
}

/// In a stable order, so that errors and writes do not depend on hashing.
fn sorted_keys(values: &HashMap<String, String>) -> Vec<&String> {
    let mut keys: Vec<&String> = values.keys().collect();
    keys.sort();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{read_to_string, write};

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn writes_as_given() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("memory.high"), "max\n").unwrap();
        write(tmp.path().join("pids.max"), "max\n").unwrap();
        let values = map(&[("memory.high", "1000000"), ("pids.max", "10")]);
        validate(&values, Some(tmp.path())).unwrap();
        apply(&values, tmp.path()).unwrap();
        assert_eq!(read_to_string(tmp.path().join("memory.high")).unwrap(), "1000000\n");
        assert_eq!(read_to_string(tmp.path().join("pids.max")).unwrap(), "10\n");
        let err = apply(&map(&[("io.max", "8:0 rbps=1")]), tmp.path()).unwrap_err();
        assert!(matches!(&err, CgroupError::Apply { field: FIELD, path, .. } if path.ends_with("io.max")), "{err}");
    }

    #[test]
    fn refuses_paths_and_hosts_without_cgroup2() {
        let tmp = tempfile::tempdir().unwrap();
        for key in ["../memory.max", "sub/memory.max", ".hidden", "nodot", "", "a..b"] {
            let err = validate(&map(&[(key, "1")]), Some(tmp.path())).unwrap_err();
            assert!(err.to_string().starts_with(&format!("linux.resources.unified: {key:?} must be")), "{err}");
        }
        let err = validate(&map(&[("memory.max", "1")]), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.resources.unified: \"memory.max\" cannot be set: the host has no cgroup v2 hierarchy"
        );
    }
}
