//! Tests on the real host's cgroups (v1, hybrid or v2). They need root and are skipped
//! without it. Every cgroup they make is named warren-unit-<pid>-..., and a guard kills their
//! children and removes those cgroups even when an assertion fails.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

use super::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Cleans up whatever a test made, in reverse order of making it.
#[derive(Default)]
struct Guard {
    children: Vec<Child>,
    cgroups: Vec<Cgroup>,
}

impl Guard {
    fn cgroup(&mut self, cgroup: Cgroup) -> Cgroup {
        self.cgroups.push(cgroup.clone());
        cgroup
    }

    /// Spawns a child and returns its index in `children`.
    fn spawn(&mut self, command: &mut Command) -> usize {
        self.children.push(command.spawn().unwrap());
        self.children.len() - 1
    }

    fn pid(&self, child: usize) -> i32 {
        i32::try_from(self.children[child].id()).unwrap()
    }

    /// Waits (at most 10s) for a child to end.
    fn reap(&mut self, child: usize) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.children[child].try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child {child} did not end");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for cgroup in self.cgroups.iter().rev() {
            let _ = cgroup.thaw();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for cgroup in self.cgroups.iter().rev() {
            if let Err(e) = cgroup.destroy() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

fn assert_removed(cgroup: &Cgroup) {
    for dir in cgroup.dirs() {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
}

#[test]
fn lifecycle_on_this_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let name = format!("/warren-unit-{}", std::process::id());
    let outer = Cgroup::resolve(Some(Path::new(&name)), "x").unwrap();
    let inner = Cgroup::resolve(Some(Path::new(&format!("{name}/inner"))), "x").unwrap();
    check_lifecycle(&outer, &inner);
    // On a hybrid host, cgroup2 alone too, on the unified hierarchy.
    if let Cgroup::V1 { unified: Some(dir), .. } = &outer {
        let outer = Cgroup::V2 { path: dir.with_file_name(format!("warren-unit-{}-v2", std::process::id())) };
        let inner = Cgroup::V2 { path: outer.dirs()[0].join("inner") };
        check_lifecycle(&outer, &inner);
    }
}

/// create, add_pid, pids, freeze/thaw, signal_all, destroy on `outer` and `inner` below it.
fn check_lifecycle(outer: &Cgroup, inner: &Cgroup) {
    let mut guard = Guard::default();
    guard.cgroup(outer.clone());
    guard.cgroup(inner.clone());
    // In this order, as a container making its own sub-cgroups would: on cgroup2, enabling
    // controllers in outer then fails with EBUSY (skipped) as outer already holds a process.
    outer.create().unwrap();
    let a = guard.spawn(Command::new("sleep").arg("1000"));
    outer.add_pid(guard.pid(a)).unwrap();
    inner.create().unwrap();
    let b = guard.spawn(Command::new("sleep").arg("1000"));
    inner.add_pid(guard.pid(b)).unwrap();
    let mut pids = outer.pids().unwrap();
    pids.sort();
    let mut expected = vec![guard.pid(a), guard.pid(b)];
    expected.sort();
    assert_eq!(pids, expected);

    outer.freeze().unwrap();
    assert!(outer.is_frozen().unwrap());
    if let Cgroup::V1 { paths, .. } = outer {
        let dir = v1::find(paths, "freezer").unwrap();
        assert_eq!(fs::read_trimmed(&dir.join("freezer.state")).unwrap(), "FROZEN");
    }
    // A paused container stays paused when signalled (SIGCONT is harmless to sleep).
    outer.signal_all(libc::SIGCONT).unwrap();
    assert!(outer.is_frozen().unwrap());
    outer.thaw().unwrap();
    assert!(!outer.is_frozen().unwrap());

    // Freeze, signal each pid, thaw.
    outer.signal_all(libc::SIGTERM).unwrap();
    assert_eq!(guard.reap(a).signal(), Some(libc::SIGTERM));
    assert_eq!(guard.reap(b).signal(), Some(libc::SIGTERM));
    assert!(!outer.is_frozen().unwrap());

    // SIGKILL on a frozen container (cgroup.kill where there is one), which must thaw it.
    let c = guard.spawn(Command::new("sleep").arg("1000"));
    inner.add_pid(guard.pid(c)).unwrap();
    outer.freeze().unwrap();
    outer.signal_all(libc::SIGKILL).unwrap();
    assert_eq!(guard.reap(c).signal(), Some(libc::SIGKILL));
    assert!(outer.pids().unwrap().is_empty());

    outer.destroy().unwrap();
    assert_removed(inner);
    assert_removed(outer);
}

/// A shell in the cgroup that, once told to go on, reports which of /dev/null and /dev/zero
/// it may open.
fn device_probe(guard: &mut Guard) -> (usize, ChildStdin) {
    let script = "read _; true </dev/null && echo null; true </dev/zero && echo zero; true";
    let mut command = Command::new("sh");
    command.args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let child = guard.spawn(&mut command);
    let stdin = guard.children[child].stdin.take().unwrap();
    (child, stdin)
}

fn check_devices(guard: &mut Guard, cgroup: &Cgroup) {
    cgroup.create().unwrap();
    let (child, mut go) = device_probe(guard);
    cgroup.add_pid(guard.pid(child)).unwrap();
    let null = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(1)
        .minor(3)
        .access("rwm")
        .build()
        .unwrap();
    cgroup.apply_devices(&[null]).unwrap();
    go.write_all(b"\n").unwrap();
    drop(go);
    let mut output = String::new();
    let mut stdout = guard.children[child].stdout.take().unwrap();
    stdout.read_to_string(&mut output).unwrap();
    assert!(guard.reap(child).success());
    assert_eq!(output, "null\n", "in {cgroup:?}");
    cgroup.destroy().unwrap();
    assert_removed(cgroup);
}

#[test]
fn devices_on_this_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut guard = Guard::default();
    let name = format!("/warren-unit-{}-devices", std::process::id());
    let cgroup = guard.cgroup(Cgroup::resolve(Some(Path::new(&name)), "x").unwrap());
    check_devices(&mut guard, &cgroup);
    // On a hybrid host, the BPF program on the unified hierarchy too.
    if let Cgroup::V1 { unified: Some(dir), .. } = &cgroup {
        let bpf_dir = dir.with_file_name(format!("warren-unit-{}-bpf", std::process::id()));
        let v2 = guard.cgroup(Cgroup::V2 { path: bpf_dir });
        check_devices(&mut guard, &v2);
    }
}
