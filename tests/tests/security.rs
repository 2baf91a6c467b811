//! What must not leak into a container: host fds, host paths through the
//! working directory, privileges. Attacks that try harder (the runtime binary
//! through /proc/PID/exe, mount races, devices, ptrace) are in escape.rs.

use std::fs::File;

use anyhow::{ensure, Result};
use warren_tests::*;

/// `warren run --preserve-fds N` with an extra open fd 3, listing the
/// container's fds (`ls` opens one more for the directory).
fn fds_inside(t: &Test, id: &str, preserve: &str) -> Result<Out> {
    let b = t.bundle(&["sh", "-c", "ls /proc/self/fd; cat <&3 2>/dev/null || echo no-fd3"])?;
    let extra = t.dir().join("fd3.txt");
    std::fs::write(&extra, "fd3-content\n")?;
    let f = File::open(&extra)?;
    t.warren.cmd_with_fds(&["run", "--preserve-fds", preserve, "--bundle", b.path().to_str().unwrap(), id], &[&f])
}

#[test]
fn host_fds_do_not_leak() -> Result<()> {
    let t = Test::new("fd_leak");
    let out = fds_inside(&t, &t.id("c"), "0")?;
    let fds: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(fds == ["0", "1", "2", "3", "no-fd3"], "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn preserve_fds_passes_fd_3() -> Result<()> {
    let t = Test::new("fd_preserve");
    let out = fds_inside(&t, &t.id("c"), "1")?;
    let fds: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(fds == ["0", "1", "2", "3", "4", "fd3-content"], "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn cwd_stays_inside_rootfs() -> Result<()> {
    let t = Test::new("cwd_inside");
    let out = t.run_sh("readlink /proc/self/cwd; cd ../../..; pwd; ls / | head -c 1000 >/tmp/a; ls /.. >/tmp/b; cmp /tmp/a /tmp/b && echo same", |c| {
        writable_root(c);
        c["process"]["cwd"] = json!("/tmp");
    })?;
    ensure!(out.ok()?.stdout == "/tmp\n/\nsame\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn default_process_cannot_mount() -> Result<()> {
    let t = Test::new("no_mount");
    let out = t.run_sh("mount -t tmpfs none /tmp 2>&1 && echo mounted || echo refused", |_| {})?;
    ensure!(out.ok()?.stdout.contains("refused"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn runtime_fds_stay_out_of_the_preserved_range() -> Result<()> {
    // The caller asks for fds 3..6 but has none open there: whatever the
    // runtime opens for itself lands on those numbers and must not reach the
    // container (only ls's own directory fd shows up).
    let t = Test::new("fd_internal");
    let b = t.bundle(&["ls", "/proc/self/fd"])?;
    let mut cmd = command(warren_bin());
    cmd.arg("--root").arg(t.warren.root());
    cmd.args(["run", "--preserve-fds", "3", "--bundle", b.path().to_str().unwrap(), &t.id("c")]);
    let out = run_with_deadline(cmd, &t.dir().join("fds-internal"), DEADLINE)?;
    let fds: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(fds == ["0", "1", "2", "3"], "{out}");
    t.assert_no_leftovers();
    Ok(())
}
