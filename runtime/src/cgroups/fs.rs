//! File and directory operations on a cgroupfs, each error naming the path it is about.
//!
//! Every value is written with a single write(2), as cgroupfs parses each write on its own,
//! and ends in a newline as `echo` would write it (cgroupfs strips it).
//! [`write`] truncates and [`append`] appends; cgroupfs ignores both flags, but on the fake
//! cgroupfs of the unit tests (plain files in a temp dir) state files such as `freezer.state`
//! then hold the last value while list files such as `cgroup.procs` or `devices.allow` keep a
//! log of every write.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::CgroupError;

/// How often [`remove_tree`] retries an rmdir that fails with EBUSY, and how long it sleeps in between:
/// up to 10 s. A killed container's last process leaves its cgroups only at the end of its exit,
/// after its mount namespace is torn down; with the rootfs overlay inside that namespace, the
/// overlay's unmount syncs the upper file system, which took over a second on ext4 for the
/// first delete after 1000 starts (bench/density).
const RMDIR_BUSY_RETRIES: u32 = 500;
const RMDIR_BUSY_SLEEP: Duration = Duration::from_millis(20);

pub fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

/// Reads a file, trimmed of surrounding whitespace.
pub fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    read(path).map(|s| s.trim().to_string())
}

pub fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_with(path, value, OpenOptions::new().write(true).truncate(true))
}

pub fn append(path: &Path, value: &str) -> Result<(), CgroupError> {
    write_with(path, value, OpenOptions::new().append(true))
}

fn write_with(path: &Path, value: &str, options: &OpenOptions) -> Result<(), CgroupError> {
    options
        .open(path)
        .and_then(|mut file| file.write_all(format!("{value}\n").as_bytes()))
        .map_err(|source| CgroupError::Write { path: path.to_path_buf(), value: value.to_string(), source })
}

/// `mkdir -p`; returns the directories it made, outermost first.
pub fn create_dir_all(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.is_dir()).collect();
    let mut made = Vec::with_capacity(missing.len());
    for level in missing.into_iter().rev() {
        match fs::create_dir(level) {
            Ok(()) => made.push(level.to_path_buf()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::CreateDir { path: level.to_path_buf(), source }),
        }
    }
    Ok(made)
}

/// `dir` and every directory below it, each parent before its children.
pub fn subtree(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut all = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < all.len() {
        let current = all[next].clone();
        next += 1;
        let entries = fs::read_dir(&current).map_err(|source| CgroupError::Read { path: current.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| CgroupError::Read { path: current.clone(), source })?;
            // cgroupfs directories are never symlinks; file_type() does not follow them.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                all.push(entry.path());
            }
        }
    }
    Ok(all)
}

/// Pids listed in `dir/cgroup.procs`.
pub fn read_procs(dir: &Path) -> Result<Vec<i32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    read(&path)?
        .split_whitespace()
        .map(|word| word.parse().map_err(|_| CgroupError::BadPid { path: path.clone(), value: word.to_string() }))
        .collect()
}

/// Removes `dir` and the cgroups below it, deepest first. A directory that is already gone is
/// fine; EBUSY (processes still exiting) is retried a bounded number of times.
pub fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    // The common case, a leaf with no sub-cgroups, needs no directory listing.
    match fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    let dirs = match subtree(dir) {
        Ok(dirs) => dirs,
        Err(CgroupError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for level in dirs.iter().rev() {
        remove_dir_retrying(level)?;
    }
    Ok(())
}

fn remove_dir_retrying(dir: &Path) -> Result<(), CgroupError> {
    let mut attempt = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < RMDIR_BUSY_RETRIES => {
                attempt += 1;
                thread::sleep(RMDIR_BUSY_SLEEP);
            }
            Err(source) => return Err(CgroupError::RemoveDir { path: dir.to_path_buf(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_all_reports_new_levels() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("a")).unwrap();
        let made = create_dir_all(&tmp.path().join("a/b/c")).unwrap();
        assert_eq!(made, vec![tmp.path().join("a/b"), tmp.path().join("a/b/c")]);
        assert!(create_dir_all(&tmp.path().join("a/b/c")).unwrap().is_empty());
    }

    #[test]
    fn remove_tree_removes_deepest_first_and_tolerates_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let leaf = tmp.path().join("ctr");
        fs::create_dir_all(leaf.join("x/y")).unwrap();
        fs::create_dir_all(leaf.join("z")).unwrap();
        remove_tree(&leaf).unwrap();
        assert!(!leaf.exists());
        assert!(tmp.path().exists());
        remove_tree(&leaf).unwrap();
    }

    #[test]
    fn read_procs_parses_and_rejects_garbage() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.procs"), "1\n42\n").unwrap();
        assert_eq!(read_procs(tmp.path()).unwrap(), vec![1, 42]);
        fs::write(tmp.path().join("cgroup.procs"), "1\nx\n").unwrap();
        assert!(matches!(
            read_procs(tmp.path()),
            Err(CgroupError::BadPid { value, .. }) if value == "x"
        ));
    }
}
