//! cgroup v1 specifics: one directory per mounted hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{fs, CgroupError};

/// The directory of the hierarchy that has `controller` ("cpu" finds "cpu,cpuacct").
pub fn find<'a>(paths: &'a BTreeMap<String, PathBuf>, controller: &str) -> Option<&'a Path> {
    paths.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == controller)).map(|(_, dir)| dir.as_path())
}

/// `mkdir -p` in every hierarchy. In the cpuset one, each level made gets cpuset.cpus and
/// cpuset.mems from its parent when they are empty, as no task can join a cgroup without them.
pub fn create(paths: &BTreeMap<String, PathBuf>) -> Result<(), CgroupError> {
    for (controllers, dir) in paths {
        let made = fs::create_dir_all(dir)?;
        if controllers.split(',').any(|c| c == "cpuset") {
            for level in &made {
                inherit_cpuset(level)?;
            }
        }
    }
    Ok(())
}

fn inherit_cpuset(level: &Path) -> Result<(), CgroupError> {
    let Some(parent) = level.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = level.join(file);
        if fs::read_trimmed(&own)?.is_empty() {
            fs::write(&own, &fs::read_trimmed(&parent.join(file))?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{create_dir_all, read_to_string, write};

    #[test]
    fn find_matches_one_controller_of_a_comounted_list() {
        let paths = BTreeMap::from([
            ("cpu,cpuacct".to_string(), PathBuf::from("/cg/cpu,cpuacct/x")),
            ("name=systemd".to_string(), PathBuf::from("/cg/systemd/x")),
        ]);
        assert_eq!(find(&paths, "cpuacct"), Some(Path::new("/cg/cpu,cpuacct/x")));
        assert_eq!(find(&paths, "name=systemd"), Some(Path::new("/cg/systemd/x")));
        assert_eq!(find(&paths, "cpuset"), None);
        assert_eq!(find(&paths, "cpu,"), None);
    }

    /// A fake cgroupfs has no files in the directories create() makes, so the cpuset copy is
    /// tested on levels made beforehand with the empty files the kernel would put there.
    #[test]
    fn inherit_cpuset_fills_empty_levels_top_down() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        write(root.join("cpuset.cpus"), "0-3\n").unwrap();
        write(root.join("cpuset.mems"), "0\n").unwrap();
        let (a, b) = (root.join("a"), root.join("a/b"));
        for level in [&a, &b] {
            create_dir_all(level).unwrap();
            write(level.join("cpuset.cpus"), "").unwrap();
            write(level.join("cpuset.mems"), "\n").unwrap();
        }
        write(a.join("cpuset.mems"), "1\n").unwrap();
        inherit_cpuset(&a).unwrap();
        inherit_cpuset(&b).unwrap();
        let read = |p: PathBuf| read_to_string(p).unwrap();
        assert_eq!(read(a.join("cpuset.cpus")), "0-3\n");
        assert_eq!(read(a.join("cpuset.mems")), "1\n");
        assert_eq!(read(b.join("cpuset.cpus")), "0-3\n");
        assert_eq!(read(b.join("cpuset.mems")), "1\n");
    }

    #[test]
    fn create_makes_every_hierarchy_and_leaves_existing_cpuset_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let cpuset_leaf = tmp.path().join("cpuset/ctr");
        create_dir_all(&cpuset_leaf).unwrap();
        write(cpuset_leaf.join("cpuset.cpus"), "").unwrap();
        let paths = BTreeMap::from([
            ("cpuset".to_string(), cpuset_leaf.clone()),
            ("memory".to_string(), tmp.path().join("memory/a/ctr")),
        ]);
        create(&paths).unwrap();
        assert!(tmp.path().join("memory/a/ctr").is_dir());
        assert_eq!(read_to_string(cpuset_leaf.join("cpuset.cpus")).unwrap(), "");
    }
}
