//! cpuset: the CPUs and memory nodes the container may use (same files on v1 and v2).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxCpu;

use super::{fs, invalid, set, CgroupError, Dir};

pub const CPUS: &str = "linux.resources.cpu.cpus";
pub const MEMS: &str = "linux.resources.cpu.mems";

/// What the host has, when the parent cgroup says nothing (v2 parents often leave
/// cpuset.cpus empty; a parent may have no cpuset files at all).
const ONLINE_CPUS: &str = "/sys/devices/system/cpu/online";
const ONLINE_NODES: &str = "/sys/devices/system/node/online";
/// Far above any kernel's CPU or node count (NR_CPUS is at most 8192): bounds the expansion of
/// a list into a set.
const MAX_ID: u32 = 1 << 16;

/// The first cpuset field the resources set, if any (an empty list means "not set").
pub fn first_set(cpu: &LinuxCpu) -> Option<&'static str> {
    if non_empty(cpu.cpus()).is_some() {
        Some(CPUS)
    } else {
        non_empty(cpu.mems()).map(|_| MEMS)
    }
}

/// Each list must parse and lie within what the parent cgroup has (else the host's online
/// CPUs or nodes): the kernel refuses anything else, with a less helpful EINVAL.
pub fn validate(cpu: &LinuxCpu, dir: Dir) -> Result<(), CgroupError> {
    let parent = dir.path().parent().unwrap_or(Path::new("/"));
    if let Some(cpus) = non_empty(cpu.cpus()) {
        let files = if dir.is_v2() {
            ["cpuset.cpus.effective", "cpuset.cpus"]
        } else {
            ["cpuset.cpus", "cpuset.effective_cpus"]
        };
        check_within(CPUS, cpus, &files.map(|f| parent.join(f)), Path::new(ONLINE_CPUS))?;
    }
    if let Some(mems) = non_empty(cpu.mems()) {
        let files = if dir.is_v2() {
            ["cpuset.mems.effective", "cpuset.mems"]
        } else {
            ["cpuset.mems", "cpuset.effective_mems"]
        };
        check_within(MEMS, mems, &files.map(|f| parent.join(f)), Path::new(ONLINE_NODES))?;
    }
    Ok(())
}

pub fn apply(cpu: &LinuxCpu, dir: &Path) -> Result<(), CgroupError> {
    if let Some(cpus) = non_empty(cpu.cpus()) {
        set(dir, "cpuset.cpus", cpus, CPUS)?;
    }
    if let Some(mems) = non_empty(cpu.mems()) {
        set(dir, "cpuset.mems", mems, MEMS)?;
    }
    Ok(())
}

fn non_empty(list: &Option<String>) -> Option<&str> {
    list.as_deref().map(str::trim).filter(|l| !l.is_empty())
}

/// Refuses `list` unless it parses and is a subset of the first non-empty list among
/// `candidates`, else `fallback`. With none of them readable there is nothing to check against.
fn check_within(field: &'static str, list: &str, candidates: &[PathBuf], fallback: &Path) -> Result<(), CgroupError> {
    let wanted = parse_list(list).ok_or_else(|| invalid(field, format!("{list:?}"), "is not a list such as 0-3,7"))?;
    let Some((path, allowed_text)) = allowed(candidates, fallback) else {
        return Ok(());
    };
    let allowed = parse_list(&allowed_text)
        .ok_or_else(|| CgroupError::Parse { path: path.clone(), line: allowed_text.clone() })?;
    if wanted.is_subset(&allowed) {
        Ok(())
    } else {
        Err(CgroupError::NotWithin { field, value: list.to_string(), allowed: allowed_text, path })
    }
}

fn allowed(candidates: &[PathBuf], fallback: &Path) -> Option<(PathBuf, String)> {
    candidates
        .iter()
        .map(PathBuf::as_path)
        .chain([fallback])
        .filter_map(|path| fs::read_trimmed(path).ok().map(|text| (path.to_path_buf(), text)))
        .find(|(_, text)| !text.is_empty())
}

/// Parses the kernel's list format, "0-3,7" (whitespace around items allowed); None if
/// malformed or naming an id above [`MAX_ID`].
pub fn parse_list(text: &str) -> Option<BTreeSet<u32>> {
    crate::idlist::IdSet::parse(text, MAX_ID).ok().map(|set| set.ids().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxCpuBuilder;
    use std::fs::{create_dir, read_to_string, write};

    #[test]
    fn parse_list_accepts_kernel_lists_only() {
        assert_eq!(parse_list("0-2,5\n"), Some(BTreeSet::from([0, 1, 2, 5])));
        assert_eq!(parse_list(" 3 "), Some(BTreeSet::from([3])));
        assert_eq!(parse_list(""), Some(BTreeSet::new()));
        for bad in ["3-1", "a", "1,,2", "0-", "-1", "0-99999999"] {
            assert_eq!(parse_list(bad), None, "{bad}");
        }
    }

    fn fake_v1() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("cpuset.cpus"), "0-3\n").unwrap();
        write(tmp.path().join("cpuset.mems"), "0\n").unwrap();
        let leaf = tmp.path().join("ctr");
        create_dir(&leaf).unwrap();
        write(leaf.join("cpuset.cpus"), "0-3\n").unwrap();
        write(leaf.join("cpuset.mems"), "0\n").unwrap();
        (tmp, leaf)
    }

    #[test]
    fn within_parent_is_written() {
        let (_tmp, leaf) = fake_v1();
        let cpu = LinuxCpuBuilder::default().cpus("1,3").mems("0").build().unwrap();
        assert_eq!(first_set(&cpu), Some(CPUS));
        validate(&cpu, Dir::V1(&leaf)).unwrap();
        apply(&cpu, &leaf).unwrap();
        assert_eq!(read_to_string(leaf.join("cpuset.cpus")).unwrap(), "1,3\n");
        assert_eq!(read_to_string(leaf.join("cpuset.mems")).unwrap(), "0\n");
    }

    #[test]
    fn outside_parent_or_malformed_is_refused() {
        let (_tmp, leaf) = fake_v1();
        let cpu = LinuxCpuBuilder::default().cpus("2-4").build().unwrap();
        let err = validate(&cpu, Dir::V1(&leaf)).unwrap_err();
        assert!(matches!(&err, CgroupError::NotWithin { field: CPUS, allowed, .. } if allowed == "0-3"), "{err}");
        assert!(err.to_string().starts_with("linux.resources.cpu.cpus: \"2-4\" is not within \"0-3\""), "{err}");
        let mems = LinuxCpuBuilder::default().mems("1").build().unwrap();
        assert!(validate(&mems, Dir::V1(&leaf)).unwrap_err().to_string().starts_with(MEMS));
        let garbage = LinuxCpuBuilder::default().cpus("0-x").build().unwrap();
        let err = validate(&garbage, Dir::V1(&leaf)).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.cpu.cpus: \"0-x\" is not a list"), "{err}");
    }

    #[test]
    fn v2_uses_the_parents_effective_list() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("cpuset.cpus"), "\n").unwrap();
        write(tmp.path().join("cpuset.cpus.effective"), "0-1\n").unwrap();
        let leaf = tmp.path().join("ctr");
        create_dir(&leaf).unwrap();
        let ok = LinuxCpuBuilder::default().cpus("1").build().unwrap();
        validate(&ok, Dir::V2(&leaf)).unwrap();
        let too_many = LinuxCpuBuilder::default().cpus("0-2").build().unwrap();
        assert!(matches!(validate(&too_many, Dir::V2(&leaf)), Err(CgroupError::NotWithin { .. })));
    }

    #[test]
    fn without_parent_files_the_online_list_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let online = tmp.path().join("online");
        write(&online, "0-7\n").unwrap();
        let missing = [tmp.path().join("nope")];
        check_within(CPUS, "7", &missing, &online).unwrap();
        assert!(check_within(CPUS, "8", &missing, &online).is_err());
        // Nothing to check against at all: accepted (the kernel has the last word).
        check_within(CPUS, "8", &missing, &tmp.path().join("nope2")).unwrap();
        assert!(first_set(&LinuxCpuBuilder::default().cpus(" ").build().unwrap()).is_none());
    }
}
