//! `Cgroup` against a fake cgroupfs: plain directories and files in a temp dir, described to
//! the layout parser through made-up mountinfo and /proc/self/cgroup texts.

use std::fs::{create_dir_all, read_to_string, write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};

use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

use super::*;

/// Fake hybrid host: v1 cpu and cpuacct apart, freezer, devices, name=systemd, and cgroup2 at
/// unified. The calling process sits in /user/1 of every hierarchy.
fn hybrid(root: &Path) -> Layout {
    let mounts = [
        ("cpu", "cpu", "cgroup"),
        ("cpuacct", "cpuacct", "cgroup"),
        ("freezer", "freezer", "cgroup"),
        ("devices", "devices", "cgroup"),
        ("systemd", "name=systemd", "cgroup"),
        ("unified", "", "cgroup2"),
    ];
    let mut mountinfo = String::new();
    let mut self_cgroup = String::new();
    for (n, (dir, controllers, fs_type)) in mounts.iter().enumerate() {
        let options = if controllers.is_empty() { "rw".to_string() } else { format!("rw,{controllers}") };
        let point = root.join(dir);
        mountinfo.push_str(&format!("{} 1 0:{n} / {} rw - {fs_type} {fs_type} {options}\n", n + 30, point.display()));
        self_cgroup.push_str(&format!("{n}:{controllers}:/user/1\n"));
        create_dir_all(point.join("user/1")).unwrap();
    }
    Layout::from_texts(&mountinfo, &self_cgroup).unwrap()
}

fn pure_v2(root: &Path) -> Layout {
    let mountinfo = format!("30 1 0:30 / {} rw - cgroup2 cgroup2 rw\n", root.display());
    Layout::from_texts(&mountinfo, "0::/user/1\n").unwrap()
}

/// The files the kernel would create in a new cgroup directory, with their initial values.
fn fake_kernel_files(cgroup: &Cgroup, files: &[(&str, &str)]) {
    for dir in cgroup.dirs() {
        for (name, value) in files {
            write(dir.join(name), value).unwrap();
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("100").spawn().unwrap()
}

#[test]
fn hybrid_resolve_create_add_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(None, "ctr").unwrap();
    let Cgroup::V1 { paths, unified } = &cg else { panic!("hybrid host resolved to {cg:?}") };
    let keys: Vec<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cpu", "cpuacct", "devices", "freezer", "name=systemd"]);
    assert_eq!(paths["cpu"], tmp.path().join("cpu/user/1/ctr"));
    assert_eq!(unified.as_deref(), Some(&*tmp.path().join("unified/user/1/ctr")));

    cg.create().unwrap();
    assert_eq!(cg.dirs().len(), 6);
    assert!(cg.dirs().iter().all(|d| d.is_dir()));
    fake_kernel_files(&cg, &[("cgroup.procs", "")]);
    cg.add_pid(42).unwrap();
    cg.add_pid(43).unwrap();
    for dir in cg.dirs() {
        assert_eq!(read_to_string(dir.join("cgroup.procs")).unwrap(), "42\n43\n");
    }
    assert_eq!(cg.controller_dir("cpuacct"), Some(paths["cpuacct"].clone()));
    assert_eq!(cg.controller_dir("hugetlb"), unified.clone());
}

#[test]
fn pids_come_from_freezer_hierarchy_recursively() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(Some(Path::new("/pod/ctr")), "x").unwrap();
    cg.create().unwrap();
    fake_kernel_files(&cg, &[("cgroup.procs", "")]);
    let freezer = cg.controller_dir("freezer").unwrap();
    assert_eq!(freezer, tmp.path().join("freezer/pod/ctr"));
    write(freezer.join("cgroup.procs"), "10\n11\n").unwrap();
    create_dir_all(freezer.join("sub/deeper")).unwrap();
    write(freezer.join("sub/cgroup.procs"), "12\n0\n").unwrap();
    write(freezer.join("sub/deeper/cgroup.procs"), "13\n").unwrap();
    let mut pids = cg.pids().unwrap();
    pids.sort();
    assert_eq!(pids, [10, 11, 12, 13]);
}

#[test]
fn v2_create_freeze_and_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for dir in [root.to_path_buf(), root.join("user"), root.join("user/1")] {
        create_dir_all(&dir).unwrap();
        write(dir.join("cgroup.controllers"), "cpu memory\n").unwrap();
        write(dir.join("cgroup.subtree_control"), "").unwrap();
    }
    let cg = pure_v2(root).resolve(None, "ctr").unwrap();
    assert_eq!(cg, Cgroup::V2 { path: root.join("user/1/ctr") });
    cg.create().unwrap();
    for dir in [root.to_path_buf(), root.join("user"), root.join("user/1")] {
        let control = read_to_string(dir.join("cgroup.subtree_control")).unwrap();
        assert_eq!(control, "+cpu\n+memory\n", "in {dir:?}");
    }
    let leaf = root.join("user/1/ctr");
    fake_kernel_files(
        &cg,
        &[
            ("cgroup.procs", ""),
            ("cgroup.freeze", "0\n"),
            ("cgroup.events", "populated 1\nfrozen 1\n"),
            ("cgroup.kill", ""),
        ],
    );
    cg.freeze().unwrap();
    assert_eq!(read_to_string(leaf.join("cgroup.freeze")).unwrap(), "1\n");
    assert!(cg.is_frozen().unwrap());
    write(leaf.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
    cg.thaw().unwrap();
    assert_eq!(read_to_string(leaf.join("cgroup.freeze")).unwrap(), "0\n");
    // SIGKILL goes through cgroup.kill; no pid is signalled one by one.
    write(leaf.join("cgroup.procs"), "not-a-pid\n").unwrap();
    cg.signal_all(libc::SIGKILL).unwrap();
    assert_eq!(read_to_string(leaf.join("cgroup.kill")).unwrap(), "1\n");
    assert_eq!(cg.controller_dir("memory"), Some(leaf));
}

#[test]
fn signal_all_freezes_signals_and_thaws_on_v1() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(None, "ctr").unwrap();
    cg.create().unwrap();
    let mut child = sleeper();
    let freezer = cg.controller_dir("freezer").unwrap();
    write(freezer.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
    write(freezer.join("freezer.state"), "THAWED\n").unwrap();
    cg.signal_all(libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(read_to_string(freezer.join("freezer.state")).unwrap(), "THAWED\n");
}

#[test]
fn signal_all_leaves_a_paused_container_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(None, "ctr").unwrap();
    cg.create().unwrap();
    let mut child = sleeper();
    let freezer = cg.controller_dir("freezer").unwrap();
    write(freezer.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
    write(freezer.join("freezer.state"), "FROZEN\n").unwrap();
    cg.signal_all(libc::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(read_to_string(freezer.join("freezer.state")).unwrap(), "FROZEN\n");
    assert!(matches!(cg.signal_all(12345), Err(CgroupError::InvalidSignal { signal: 12345, .. })));
}

#[test]
fn apply_devices_v1_writes_deny_all_then_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(None, "ctr").unwrap();
    cg.create().unwrap();
    fake_kernel_files(&cg, &[("devices.allow", ""), ("devices.deny", "")]);
    let rules = [
        LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rwm")
            .build()
            .unwrap(),
        LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(136)
            .access("rw")
            .build()
            .unwrap(),
    ];
    cg.apply_devices(&rules).unwrap();
    let dir = cg.controller_dir("devices").unwrap();
    assert_eq!(read_to_string(dir.join("devices.deny")).unwrap(), "a\na\n");
    assert_eq!(read_to_string(dir.join("devices.allow")).unwrap(), "c 1:3 rwm\nc 136:* rw\n");
    // The other hierarchies are untouched.
    let cpu = cg.controller_dir("cpu").unwrap();
    assert_eq!(read_to_string(cpu.join("devices.allow")).unwrap(), "");
}

#[test]
fn destroy_removes_leaf_and_below_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(Some(Path::new("pod/ctr")), "x").unwrap();
    cg.create().unwrap();
    let freezer = cg.controller_dir("freezer").unwrap();
    create_dir_all(freezer.join("a/b")).unwrap();
    // One hierarchy already gone: fine.
    std::fs::remove_dir(cg.controller_dir("cpu").unwrap()).unwrap();
    cg.destroy().unwrap();
    for dir in cg.dirs() {
        assert!(!dir.exists(), "{dir:?} left");
        assert!(dir.parent().unwrap().is_dir(), "parent of {dir:?} removed");
    }
    cg.destroy().unwrap();
}

#[test]
fn cgroup_round_trips_through_json() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = hybrid(tmp.path()).resolve(None, "ctr").unwrap();
    let json = serde_json::to_string(&cg).unwrap();
    assert_eq!(serde_json::from_str::<Cgroup>(&json).unwrap(), cg);
}
