//! What must not leak into a container: the runtime binary, host fds, host
//! paths through the working directory, privileges.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;

use anyhow::{ensure, Result};
use warren_tests::*;

#[test]
fn init_exe_is_the_container_binary() -> Result<()> {
    let t = Test::new("exe_init");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let out = c.exec(&[], &["sh", "-c", "readlink /proc/1/exe; readlink /proc/self/exe"])?;
    ensure!(out.ok()?.stdout == "/bin/busybox\n/bin/busybox\n", "{out}");
    let w = c.exec(&[], &["sh", "-c", "echo x >>/proc/1/exe && echo wrote"])?;
    ensure!(!w.stdout.contains("wrote"), "{w}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// While the container waits in `created`, its init is still the runtime.
/// That process's /proc/PID/exe must not lead to the warren binary on disk in
/// a writable way (CVE-2019-5736): either it is a sealed copy or the binary
/// sits on a read-only mount.
#[test]
fn created_init_exe_is_not_the_writable_runtime_binary() -> Result<()> {
    let t = Test::new("exe_created");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.create(&t.id("c"), &b)?;
    let exe = format!("/proc/{}/exe", c.pid()?);
    let target = std::fs::read_link(&exe)?;
    let on_disk = std::fs::canonicalize(warren_bin())?;
    if target == on_disk {
        let cpath = std::ffi::CString::new(exe.clone())?;
        // SAFETY: zeroed statvfs filled in by statvfs(3).
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(cpath.as_ptr(), &mut st) };
        ensure!(rc == 0 && st.f_flag & libc::ST_RDONLY != 0, "{exe} -> writable {}", target.display());
    }
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// `warren run --preserve-fds N` with an extra open fd 3, listing the
/// container's fds (`ls` opens one more for the directory).
fn fds_inside(t: &Test, id: &str, preserve: &str) -> Result<Out> {
    let b = t.bundle(&["sh", "-c", "ls /proc/self/fd; cat <&3 2>/dev/null || echo no-fd3"])?;
    let extra = t.dir().join("fd3.txt");
    std::fs::write(&extra, "fd3-content\n")?;
    let f = File::open(&extra)?;
    let raw = f.as_raw_fd();
    let mut cmd = command(warren_bin());
    cmd.arg("--root").arg(t.warren.root());
    cmd.args(["run", "--preserve-fds", preserve, "--bundle", b.path().to_str().unwrap(), id]);
    // SAFETY: only dup2/fcntl between fork and exec. dup2 onto itself keeps
    // close-on-exec, so when the file already is fd 3 clear the flag instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if raw == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(raw, 3) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = run_with_deadline(cmd, &t.dir().join(format!("fds-{preserve}")), DEADLINE)?;
    drop(f);
    Ok(out)
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
