//! cgroup v2 specifics: one directory, controllers enabled from the root down.

use std::path::Path;

use super::{fs, CgroupError};

/// `mkdir -p`, then in every ancestor from the hierarchy's root down to the parent, enables
/// each controller listed in its cgroup.controllers through its cgroup.subtree_control.
/// EBUSY (an ancestor holding processes) and ENOTSUP are skipped: that controller is then just
/// not available to the container.
pub fn create(dir: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir)?;
    let mut ancestors: Vec<&Path> =
        dir.ancestors().skip(1).take_while(|a| a.join("cgroup.controllers").is_file()).collect();
    ancestors.reverse();
    for ancestor in ancestors {
        enable_controllers(ancestor)?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = fs::read(&dir.join("cgroup.controllers"))?;
    let subtree_control = dir.join("cgroup.subtree_control");
    for controller in available.split_whitespace() {
        match fs::append(&subtree_control, &format!("+{controller}")) {
            Err(CgroupError::Write { source, .. })
                if matches!(source.raw_os_error(), Some(libc::EBUSY | libc::ENOTSUP)) =>
            {
                log::debug!("cannot enable {controller} in {subtree_control:?}: {source}");
            }
            other => other?,
        }
    }
    Ok(())
}

/// Kills every process of the cgroup and its descendants through cgroup.kill (Linux 5.14+).
/// Returns false, doing nothing, when the kernel has no cgroup.kill.
pub fn kill(dir: &Path) -> Result<bool, CgroupError> {
    let control = dir.join("cgroup.kill");
    if !control.exists() {
        return Ok(false);
    }
    fs::write(&control, "1")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{create_dir_all, read_to_string, write};

    fn fake_cgroup(dir: &Path, controllers: &str) {
        create_dir_all(dir).unwrap();
        write(dir.join("cgroup.controllers"), controllers).unwrap();
        write(dir.join("cgroup.subtree_control"), "").unwrap();
    }

    #[test]
    fn create_enables_controllers_from_the_root_down() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("cgroup");
        fake_cgroup(&root, "cpu io memory pids\n");
        fake_cgroup(&root.join("pod"), "cpu memory\n");
        let leaf = root.join("pod/ctr");
        create(&leaf).unwrap();
        assert!(leaf.is_dir());
        let control = |d: &Path| read_to_string(d.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control(&root), "+cpu\n+io\n+memory\n+pids\n");
        assert_eq!(control(&root.join("pod")), "+cpu\n+memory\n");
        // Not in the leaf itself: it is to hold the container's processes.
        assert!(!leaf.join("cgroup.subtree_control").exists());
    }

    #[test]
    fn kill_writes_cgroup_kill_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(!kill(tmp.path()).unwrap());
        write(tmp.path().join("cgroup.kill"), "").unwrap();
        assert!(kill(tmp.path()).unwrap());
        assert_eq!(read_to_string(tmp.path().join("cgroup.kill")).unwrap(), "1\n");
    }
}
