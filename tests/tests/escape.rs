//! Escape regression tests that really try: each attack is made from inside a
//! container the way an exploit would (with `probe`, a small static helper,
//! where busybox cannot), and each test also shows that the attempt reached
//! its target, so that a refusal for an unrelated reason cannot pass it.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// Docker's default capability set (the one tenants get): what most containers on a host
/// run with (more than `warren spec` gives: DAC_OVERRIDE, MKNOD, SETUID, ...).
const DOCKER_CAPS: [&str; 14] = warren::tenant::TENANT_CAPS;

/// Gives the process `caps` in every set (ambient too, so that they survive
/// exec for a root process either way).
fn set_caps(cfg: &mut Value, caps: &[&str]) {
    for set in ["bounding", "effective", "permitted", "inheritable", "ambient"] {
        cfg["process"]["capabilities"][set] = json!(caps);
    }
}

fn docker_caps_and(extra: &[&'static str]) -> Vec<&'static str> {
    DOCKER_CAPS.iter().chain(extra).copied().collect()
}

/// A busybox bundle running `args`, with a writable root, `caps` and
/// /bin/probe.
fn probe_bundle(t: &Test, args: &[&str], caps: &[&str]) -> Result<Bundle> {
    let b = t.bundle(args)?;
    b.edit(|c| {
        writable_root(c);
        set_caps(c, caps);
    })?;
    install_probe(t, &b)?;
    Ok(b)
}

/// Waits until `path` exists and returns its content.
fn wait_file(path: &Path, timeout: Duration) -> Result<String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not appear within {timeout:?}", path.display())
}

/// Lines of probe output whose last word is "ok": attempts that succeeded.
fn successes(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.ends_with(" ok")).collect()
}

// ---------------------------------------------------------------------------
// The runtime binary through /proc/PID/exe (CVE-2019-5736)

/// While a container waits in `created`, its pid 1 is `warren init`. From
/// inside, open its exe for writing directly, through /proc/1/root and
/// /proc/1/cwd, through /proc/1/map_files; then hold O_PATH fds on every
/// runtime exe the container can see (the init, exec helpers) and keep
/// reopening them for writing while the container starts and execs run, as
/// the 2019 exploit did once the runtime had left the binary (ETXTBSY gone).
/// All of it runs against a copy of the binary, compared byte for byte.
fn exe_attack(name: &str, caps: &[&str], must_hold: bool) -> Result<()> {
    let mut t = Test::new(name);
    let bin = t.use_binary_copy()?;
    let before = std::fs::read(&bin)?;
    let b = probe_bundle(&t, &["sleep", "100"], caps)?;
    let c = t.create(&t.id("c"), &b)?;

    // The host's view: the init runs the copy, from a read-only mount. (Its
    // exe link reads "/" from here: the mount is in the init's own namespace.)
    let host_exe = format!("/proc/{}/exe", c.pid()?);
    let (exe, copy) = (std::fs::metadata(&host_exe)?, std::fs::metadata(&bin)?);
    ensure!((exe.dev(), exe.ino()) == (copy.dev(), copy.ino()), "init's exe is not the binary copy");
    let flags = mount_flags(&host_exe)?;
    ensure!(flags & libc::ST_RDONLY != 0, "{host_exe} lies on a writable mount");

    let bin_s = bin.to_string_lossy();
    let script = format!(
        "probe open /proc/1/exe; probe open /proc/1/root/../../../..{bin_s}; \
         probe open /proc/1/cwd/../../../..{bin_s}; probe open /proc/self/root/../..{bin_s}; \
         for f in /proc/1/map_files/*; do probe open $f; done"
    );
    let direct = c.exec(&[], &["sh", "-c", &script])?;
    direct.ok()?;
    ensure!(direct.stdout.lines().count() >= 16, "too few attempts: {direct}");
    ensure!(successes(&direct.stdout).is_empty(), "opened for writing: {direct}");

    // The racer holds what it can, then the container starts and execs come and go.
    c.exec(&["-d"], &["/bin/probe", "exe-hold", "4", "/tmp/exe-report"])?.ok()?;
    if must_hold {
        wait_file(&b.rootfs().join("tmp/holding"), Duration::from_secs(5)).context("the racer holds no exe")?;
    } else {
        std::thread::sleep(Duration::from_millis(200));
    }
    c.start()?.ok()?;
    // Exec helpers for the racer to catch. Their outcome is not the point: if
    // the racer did overwrite the binary, they fail, and the report says why.
    for _ in 0..5 {
        let _ = c.exec(&[], &["true"]);
    }
    let report = wait_file(&b.rootfs().join("tmp/exe-report"), Duration::from_secs(15))?;
    let runtime: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("held ") && !l.contains(" /bin/busybox ") && !l.contains(" /bin/probe "))
        .collect();
    let denied: u32 = report.lines().find_map(|l| l.strip_prefix("denied ")?.parse().ok()).unwrap_or(0);
    ensure!(!runtime.is_empty() || (!must_hold && denied > 0), "the racer reached no runtime exe: {report}");
    if must_hold {
        ensure!(runtime.iter().any(|l| l.starts_with("held 1 ")), "the init's exe was not held: {report}");
    }
    eprintln!("racer's report:\n{report}");
    ensure!(!report.contains("OPENED"), "a runtime exe was reopened for writing:\n{report}");
    for l in &runtime {
        ensure!(!l.contains("=ok"), "{l}");
    }
    drop(c);
    ensure!(std::fs::read(&bin)? == before, "the runtime binary changed");
    t.assert_no_leftovers();
    Ok(())
}

/// statvfs(2) flags of the file system holding `path`.
fn mount_flags(path: &str) -> Result<u64> {
    let cpath = std::ffi::CString::new(path)?;
    // SAFETY: a zeroed statvfs for statvfs(3) to fill in; cpath is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statvfs(cpath.as_ptr(), &mut st) };
    ensure!(rc == 0, "statvfs {path}: {}", std::io::Error::last_os_error());
    Ok(st.f_flag)
}

#[test]
fn runtime_exe_cannot_be_written_with_default_caps() -> Result<()> {
    // The init is not dumpable: without CAP_SYS_PTRACE its exe is refused outright.
    exe_attack("exe_caps", &DOCKER_CAPS, false)
}

#[test]
fn runtime_exe_cannot_be_written_even_with_sys_ptrace() -> Result<()> {
    // CAP_SYS_PTRACE gets past non-dumpable: the read-only mount must hold on its own.
    exe_attack("exe_ptrace", &docker_caps_and(&["CAP_SYS_PTRACE"]), true)
}

// ---------------------------------------------------------------------------
// File descriptors, cwd and root

/// `probe fds` output: fd -> link target, and the cwd and root lines.
struct FdReport {
    fds: BTreeMap<i32, String>,
    cwd: (String, String),
    root: (String, String),
}

impl FdReport {
    fn parse(text: &str) -> Result<FdReport> {
        let mut fds = BTreeMap::new();
        let (mut cwd, mut root) = (None, None);
        for l in text.lines() {
            let mut w = l.splitn(3, ' ');
            match (w.next(), w.next(), w.next()) {
                (Some("fd"), Some(n), Some(target)) => {
                    fds.insert(n.parse()?, target.to_string());
                }
                (Some("cwd"), Some(p), Some(di)) => cwd = Some((p.to_string(), di.to_string())),
                (Some("root"), Some(p), Some(di)) => root = Some((p.to_string(), di.to_string())),
                _ => bail!("bad probe line {l:?}"),
            }
        }
        let cwd = cwd.context("no cwd line")?;
        let root = root.context("no root line")?;
        Ok(FdReport { fds, cwd, root })
    }

    /// Only `want` fds are open, cwd is `cwd` inside the rootfs and root is the rootfs.
    fn check(&self, want: &[i32], rootfs: &Path, cwd: &str) -> Result<()> {
        let open: Vec<i32> = self.fds.keys().copied().collect();
        ensure!(open == want, "open fds {:?}, wanted {want:?}", self.fds);
        let di = |p: &Path| -> Result<String> {
            let m = std::fs::metadata(p)?;
            Ok(format!("{}:{}", m.dev(), m.ino()))
        };
        ensure!(self.root == ("/".to_string(), di(rootfs)?), "root {:?} is not the rootfs", self.root);
        let host_cwd = rootfs.join(cwd.trim_start_matches('/'));
        ensure!(self.cwd == (cwd.to_string(), di(&host_cwd)?), "cwd {:?} is not {cwd} in the rootfs", self.cwd);
        Ok(())
    }

    /// fds 0-2 are the container's terminal.
    fn check_terminal(&self) -> Result<()> {
        for fd in 0..3 {
            let target = self.fds.get(&fd).map(String::as_str).unwrap_or("");
            ensure!(target.starts_with("/dev/pts/"), "fd {fd} -> {target:?}, not the container's pty");
        }
        Ok(())
    }
}

/// Two host files the caller has open, to pass as fds 3 and 4.
fn host_files(t: &Test) -> Result<(File, File)> {
    let (a, b) = (t.dir().join("host-a"), t.dir().join("host-b"));
    std::fs::write(&a, "a")?;
    std::fs::write(&b, "b")?;
    Ok((File::open(a)?, File::open(b)?))
}

#[test]
fn init_sees_only_stdio_and_preserved_fds() -> Result<()> {
    let t = Test::new("fds_init");
    let (a, b) = host_files(&t)?;
    let bundle = probe_bundle(&t, &["/bin/probe", "fds"], &DOCKER_CAPS)?;
    bundle.edit(|c| c["process"]["cwd"] = json!("/tmp"))?;
    let path = bundle.path().to_string_lossy().to_string();
    let rootfs = bundle.rootfs();
    for (preserve, want) in [("0", &[0, 1, 2][..]), ("1", &[0, 1, 2, 3]), ("2", &[0, 1, 2, 3, 4])] {
        let id = t.id(&format!("p{preserve}"));
        let out = t.warren.cmd_with_fds(&["run", "--preserve-fds", preserve, "--bundle", &path, &id], &[&a, &b])?;
        let r = FdReport::parse(&out.ok()?.stdout)?;
        r.check(want, &rootfs, "/tmp").with_context(|| format!("--preserve-fds {preserve}: {out}"))?;
        for (fd, name) in [(3, "host-a"), (4, "host-b")].into_iter().take(preserve.parse()?) {
            ensure!(r.fds[&fd].ends_with(name), "fd {fd} is not {name}: {out}");
        }
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn init_with_a_terminal_sees_only_its_pty() -> Result<()> {
    let t = Test::new("fds_init_tty");
    let (a, b) = host_files(&t)?;
    let bundle = probe_bundle(&t, &["/bin/probe", "fds", "/tmp/fds"], &DOCKER_CAPS)?;
    bundle.edit(|c| c["process"]["terminal"] = json!(true))?;
    let console = ConsoleSocket::new(t.dir())?;
    let (path, sock) = (bundle.path().to_string_lossy().to_string(), console.path.to_string_lossy().to_string());
    let id = t.id("c");
    let out = t.warren.cmd_with_fds(&["create", "--console-socket", &sock, "--bundle", &path, &id], &[&a, &b])?;
    let c = t.warren.adopt(&id);
    out.ok()?;
    let _master = console.masters.recv_timeout(Duration::from_secs(5)).context("no pty master")?;
    c.start()?.ok()?;
    let r = FdReport::parse(&wait_file(&bundle.rootfs().join("tmp/fds"), Duration::from_secs(10))?)?;
    r.check(&[0, 1, 2], &bundle.rootfs(), "/")?;
    r.check_terminal()?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn exec_sees_only_stdio_and_preserved_fds() -> Result<()> {
    let t = Test::new("fds_exec");
    let (a, b) = host_files(&t)?;
    let bundle = probe_bundle(&t, &["sleep", "100"], &DOCKER_CAPS)?;
    let c = t.start_new(&t.id("c"), &bundle)?;
    let rootfs = bundle.rootfs();
    for (preserve, want) in [("0", &[0, 1, 2][..]), ("1", &[0, 1, 2, 3])] {
        let args = ["exec", "--preserve-fds", preserve, "--cwd", "/etc", &c.id, "/bin/probe", "fds"];
        let out = t.warren.cmd_with_fds(&args, &[&a, &b])?;
        let r = FdReport::parse(&out.ok()?.stdout)?;
        r.check(want, &rootfs, "/etc").with_context(|| format!("exec --preserve-fds {preserve}: {out}"))?;
    }
    let console = ConsoleSocket::new(t.dir())?;
    let sock = console.path.to_string_lossy().to_string();
    let args = ["exec", "-d", "-t", "--console-socket", &sock, &c.id, "/bin/probe", "fds", "/tmp/exec-fds"];
    t.warren.cmd_with_fds(&args, &[&a, &b])?.ok()?;
    let _master = console.masters.recv_timeout(Duration::from_secs(5)).context("no pty master")?;
    let r = FdReport::parse(&wait_file(&rootfs.join("tmp/exec-fds"), Duration::from_secs(10))?)?;
    r.check(&[0, 1, 2], &rootfs, "/")?;
    r.check_terminal()?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// The combinations the tests above leave out, for the init and for exec: detached with and
/// without a terminal, each with and without a preserved fd; exec into a container whose init
/// has a terminal, with and without one of its own. Each process writes its report to a file.
#[test]
fn every_terminal_and_detach_combination_sees_only_stdio_and_preserved_fds() -> Result<()> {
    let t = Test::new("fds_combos");
    let (a, b) = host_files(&t)?;
    let console = ConsoleSocket::new(t.dir())?;
    let sock = console.path.to_string_lossy().to_string();
    let mut masters = Vec::new();
    for (terminal, preserve) in [(false, 0), (false, 1), (true, 0), (true, 1)] {
        let what = format!("init terminal={terminal} --preserve-fds {preserve}");
        let bundle = probe_bundle(&t, &["sh", "-c", "/bin/probe fds /tmp/fds; exec sleep 100"], &DOCKER_CAPS)?;
        bundle.edit(|c| c["process"]["terminal"] = json!(terminal))?;
        let (path, rootfs) = (bundle.path().to_string_lossy().to_string(), bundle.rootfs());
        let id = t.id(&format!("i{}{preserve}", u8::from(terminal)));
        let p = preserve.to_string();
        let mut args = vec!["create", "--preserve-fds", &p, "--bundle", &path];
        if terminal {
            args.extend(["--console-socket", &sock]);
        }
        args.push(&id);
        let out = t.warren.cmd_with_fds(&args, &[&a, &b])?;
        let c = t.warren.adopt(&id);
        out.ok().with_context(|| what.clone())?;
        if terminal {
            masters.push(console.masters.recv_timeout(Duration::from_secs(5)).context("no pty master")?);
        }
        c.start()?.ok()?;
        let want: Vec<i32> = (0..3 + preserve).collect();
        let r = FdReport::parse(&wait_file(&rootfs.join("tmp/fds"), Duration::from_secs(10))?)?;
        r.check(&want, &rootfs, "/").with_context(|| what.clone())?;
        if terminal {
            r.check_terminal().with_context(|| what.clone())?;
        }
        for (exec_tty, exec_preserve) in [(false, 0), (false, 1), (true, 0), (true, 1)] {
            let what = format!("{what}, exec -d terminal={exec_tty} --preserve-fds {exec_preserve}");
            let report = format!("/tmp/exec-fds-{}{exec_preserve}", u8::from(exec_tty));
            let ep = exec_preserve.to_string();
            let mut args = vec!["exec", "-d", "--preserve-fds", &ep];
            if exec_tty {
                args.extend(["-t", "--console-socket", &sock]);
            }
            args.extend([id.as_str(), "/bin/probe", "fds", &report]);
            t.warren.cmd_with_fds(&args, &[&a, &b])?.ok().with_context(|| what.clone())?;
            if exec_tty {
                masters.push(console.masters.recv_timeout(Duration::from_secs(5)).context("no pty master")?);
            }
            let host_report = rootfs.join(report.trim_start_matches('/'));
            let r = FdReport::parse(&wait_file(&host_report, Duration::from_secs(10))?)?;
            let want: Vec<i32> = (0..3 + exec_preserve).collect();
            r.check(&want, &rootfs, "/").with_context(|| what.clone())?;
            if exec_tty {
                r.check_terminal().with_context(|| what.clone())?;
            }
        }
        drop(c);
    }
    t.assert_no_leftovers();
    Ok(())
}

// ---------------------------------------------------------------------------
// A bind mount's target swapped for a symlink to the host while containers are made

/// Swaps `a` and `b` atomically (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let b = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: renameat2 with two NUL-terminated paths relative to the cwd.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps swapping rootfs/mnt/target between a directory and symlinks to
/// `victim` (absolute and relative) until `stop`; returns the swap count.
fn swapper(rootfs: &Path, victim: &Path, stop: Arc<AtomicBool>) -> Result<std::thread::JoinHandle<u64>> {
    let mnt = rootfs.join("mnt");
    let target = mnt.join("target");
    let (abs, rel) = (mnt.join("abs"), mnt.join("rel"));
    std::os::unix::fs::symlink(victim, &abs)?;
    let up = "../".repeat(rootfs.components().count() + 1);
    std::os::unix::fs::symlink(format!("{up}{}", victim.to_string_lossy().trim_start_matches('/')), &rel)?;
    Ok(std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            for link in [&abs, &rel] {
                // target <-> link, then back: the target is a symlink in between.
                if exchange(&target, link).is_ok() && exchange(&target, link).is_ok() {
                    swaps += 2;
                }
                std::thread::yield_now();
            }
        }
        swaps
    }))
}

/// What lies in `dir`: names and contents.
fn snapshot(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let content = if e.file_type()?.is_file() { std::fs::read(e.path())? } else { Vec::new() };
        v.push((e.file_name().to_string_lossy().into_owned(), content));
    }
    v.sort();
    Ok(v)
}

/// What the creates under the swapping gave: where the source was mounted
/// (as the container sees it) and why creates were refused, with counts.
#[derive(Default)]
struct RaceTally {
    mounted_at: BTreeMap<String, u32>,
    refused: BTreeMap<String, u32>,
}

/// Creates and deletes containers from `b` for 200 rounds or 20 s, checking
/// each outcome and the victim after each round.
fn race_rounds(t: &Test, b: &Bundle, victim: &Path, src_tail: &str) -> Result<RaceTally> {
    let victim_before = snapshot(victim)?;
    let mut tally = RaceTally::default();
    let start = Instant::now();
    for round in 0..200 {
        if start.elapsed() > Duration::from_secs(20) {
            break;
        }
        let id = t.id(&format!("r{round}"));
        let out = t.warren.try_create(&id, b, &[])?;
        if out.success() {
            let c = t.warren.adopt(&id);
            // Mounted, and inside: the container's mount table has the source,
            // wherever the target was when the runtime resolved it (in the root).
            let mi = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid()?))?;
            let at = mi.lines().find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.get(3).filter(|root| root.ends_with(src_tail)).and(f.get(4)).map(|p| p.to_string())
            });
            let at = at.with_context(|| format!("round {round}: no bind of the source:\n{mi}"))?;
            *tally.mounted_at.entry(at).or_insert(0) += 1;
        } else {
            ensure!(out.error_line().contains("mnt/target"), "round {round}: error does not name the mount: {out}");
            ensure!(t.cmd(&["state", &id])?.failed().is_ok(), "round {round}: state left by a failed create");
            ensure!(cgroup_dirs(&id).is_empty(), "round {round}: cgroup left by a failed create");
            *tally.refused.entry(out.error_line().to_string()).or_insert(0) += 1;
        }
        let on_victim = mounts_under(victim);
        ensure!(on_victim.is_empty(), "round {round}: the victim is mounted over: {on_victim:?}");
        ensure!(snapshot(victim)? == victim_before, "round {round}: the victim changed");
    }
    Ok(tally)
}

#[test]
fn mount_target_swapped_for_a_host_symlink_never_mounts_outside() -> Result<()> {
    let t = Test::new("mnt_race");
    let (src, victim) = (t.dir().join("src"), t.dir().join("victim"));
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&victim)?;
    std::fs::write(victim.join("canary"), "host file\n")?;
    let b = t.bundle(&["sleep", "100"])?;
    std::fs::create_dir_all(b.rootfs().join("mnt/target"))?;
    let source = src.to_string_lossy().to_string();
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/mnt/target", "type": "bind", "source": source, "options": ["rbind", "rw"]
        }));
    })?;
    // A bind mount's root in mountinfo is its path inside its file system.
    let src_tail = format!("{}/src", t.dir().file_name().unwrap().to_string_lossy());
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(&b.rootfs(), &victim, stop.clone())?;
    let tally = race_rounds(&t, &b, &victim, &src_tail);
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().map_err(|_| anyhow::anyhow!("swapper panicked"))?;
    let tally = tally?;
    eprintln!("{swaps} swaps; mounted at {:?}; refused: {:?}", tally.mounted_at, tally.refused);
    let rounds: u32 = tally.mounted_at.values().chain(tally.refused.values()).sum();
    ensure!(swaps > 1000, "the target was hardly swapped ({swaps})");
    ensure!(rounds >= 50, "too few rounds ({rounds})");
    t.assert_no_leftovers();
    Ok(())
}

// ---------------------------------------------------------------------------
// Writes to /proc and /sys as the container's root

fn read_trim(p: &str) -> Result<String> {
    Ok(std::fs::read_to_string(p).with_context(|| p.to_string())?.trim().to_string())
}

#[test]
fn proc_and_sys_stay_read_only_for_container_root() -> Result<()> {
    let t = Test::new("proc_sys");
    let b = probe_bundle(&t, &["sleep", "100"], &DOCKER_CAPS)?;
    b.edit(|c| c["linux"]["resources"]["pids"] = json!({"limit": 100}))?;
    let c = t.start_new(&t.id("c"), &b)?;
    let pids_max = knob_path(c.pid()?, "pids", "pids.max", "pids.max")?;
    let tunables = ["/proc/sys/kernel/printk_ratelimit_burst", "/sys/kernel/mm/ksm/pages_to_scan"];
    let host_before: Vec<String> = tunables.iter().map(|p| read_trim(p)).collect::<Result<_>>()?;
    // The container's own pids.max, as its cgroup namespace shows it (v1 or cgroup2).
    let cg_inside =
        if is_cgroup2(pids_max.parent().unwrap()) { "/sys/fs/cgroup/pids.max" } else { "/sys/fs/cgroup/pids/pids.max" };
    let mut writes = vec![
        ("/proc/sysrq-trigger".to_string(), "h".to_string()),
        ("/proc/sys/vm/drop_caches".to_string(), "1".to_string()),
        (cg_inside.to_string(), "1".to_string()),
    ];
    for (p, v) in tunables.iter().zip(&host_before) {
        writes.push((p.to_string(), (v.parse::<u64>()? + 1).to_string()));
    }
    for (path, value) in &writes {
        let out = c.exec(&[], &["/bin/probe", "write", path, value])?;
        ensure!(out.ok()?.stdout.lines().any(|l| l.starts_with("open ") || l.starts_with("write ")), "{out}");
        ensure!(successes(&out.stdout).len() < 2, "{path} was written from the container: {out}");
    }
    for dir in ["/sys/fs/cgroup/pids/escape", "/sys/fs/cgroup/escape"] {
        let mkdir = c.exec(&[], &["mkdir", dir])?;
        ensure!(!mkdir.success(), "made a cgroup: {mkdir}");
    }
    let kcore = c.exec(&[], &["/bin/probe", "read", "/proc/kcore"])?;
    ensure!(kcore.ok()?.stdout.lines().any(|l| l == "read 0" || (l.starts_with("open ") && l != "open ok")), "{kcore}");
    for (p, v) in tunables.iter().zip(&host_before) {
        ensure!(read_trim(p)? == *v, "host {p} changed");
    }
    ensure!(read_knob(&pids_max)? == "100", "the container changed its pids.max");
    ensure!(!pids_max.parent().unwrap().join("escape").exists());
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

// ---------------------------------------------------------------------------
// Device nodes

/// The block device that holds the host's root file system, as (major, minor).
fn host_root_disk() -> Result<(u32, u32)> {
    let dev = std::fs::metadata("/")?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    ensure!(major != 0, "/ is not on a block device ({major}:{minor})");
    Ok((major, minor))
}

/// A bundle running `script` with `caps`, allowed one loop device (after
/// the default deny-all): the positive control.
fn device_bundle(t: &Test, lo: &LoopDevice, caps: &[&str]) -> Result<Bundle> {
    let b = probe_bundle(t, &["sleep", "100"], caps)?;
    b.edit(|c| {
        c["linux"]["resources"]["devices"].as_array_mut().unwrap().push(json!({
            "allow": true, "type": "b", "major": lo.major(), "minor": lo.minor(), "access": "rwm"
        }));
    })?;
    Ok(b)
}

#[test]
fn mknod_of_a_host_disk_gives_no_access() -> Result<()> {
    let t = Test::new("mknod");
    let (major, minor) = host_root_disk()?;
    let (maj, min) = (major.to_string(), minor.to_string());
    let backing = t.dir().join("loop.img");
    let lo = LoopDevice::new(&backing, 1 << 20)?;
    let (lmaj, lmin) = (lo.major().to_string(), lo.minor().to_string());

    let b = device_bundle(&t, &lo, &DOCKER_CAPS)?;
    let c = t.start_new(&t.id("c"), &b)?;
    // With CAP_MKNOD the node may be made (cgroup2) or refused by the v1
    // device cgroup's "m"; either way it cannot be opened.
    let disk = c.exec(&[], &["/bin/probe", "mknod", "/tmp/disk", "b", &maj, &min])?;
    let lines: Vec<&str> = disk.ok()?.stdout.lines().collect();
    ensure!(matches!(lines.first(), Some(&"mknod ok" | &"mknod EPERM")), "{disk}");
    ensure!(lines.get(1).is_some_and(|l| l.starts_with("open ") && *l != "open ok"), "opened the host disk: {disk}");
    let allowed = c.exec(&[], &["/bin/probe", "mknod", "/tmp/loop", "b", &lmaj, &lmin, "through-the-rule"])?;
    ensure!(allowed.ok()?.stdout == "mknod ok\nopen ok\nwrite ok\nfsync ok\n", "the allowed device: {allowed}");
    ensure!(std::fs::read(&backing)?.starts_with(b"through-the-rule"), "the loop device's file lacks the write");
    drop(c);

    // Without CAP_MKNOD not even the allowed device can be made.
    let b = device_bundle(&t, &lo, &["CAP_KILL"])?;
    let c = t.start_new(&t.id("nocap"), &b)?;
    let out = c.exec(&[], &["/bin/probe", "mknod", "/tmp/loop", "b", &lmaj, &lmin])?;
    ensure!(out.ok()?.stdout.starts_with("mknod EPERM\nopen ENOENT"), "{out}");
    drop(c);
    drop(lo);
    t.assert_no_leftovers();
    Ok(())
}

// ---------------------------------------------------------------------------
// Host processes

/// A host process with a marker in its command line; killed on drop.
struct HostSleep(std::process::Child);

impl HostSleep {
    fn new() -> Result<HostSleep> {
        Ok(HostSleep(command("sleep").arg("987654").spawn()?))
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for HostSleep {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `probe ptrace PID` (attach, seize, kill 0) in a fresh container.
fn ptrace_from(t: &Test, tag: &str, pid: &str, caps: &[&str], host_pid_ns: bool) -> Result<Out> {
    // The bracket keeps grep (and this shell) from matching its own command line. -qs: a
    // process that ends between the glob and grep's open is no error (grep would exit 2).
    let script = format!("grep -qs '98765[4]' /proc/[0-9]*/cmdline && echo sees-host; /bin/probe ptrace {pid}");
    let b = probe_bundle(t, &["sh", "-c", &script], caps)?;
    if host_pid_ns {
        b.edit(|c| c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid"))?;
    }
    let out = t.run(&t.id(tag), &b)?;
    out.ok()?;
    Ok(out)
}

#[test]
fn host_processes_cannot_be_seen_signalled_or_traced() -> Result<()> {
    let t = Test::new("ptrace");
    let sleep = HostSleep::new()?;
    let pid = sleep.pid();
    let caps = docker_caps_and(&["CAP_KILL"]);
    // Own pid namespace: the host process does not exist in there.
    let out = ptrace_from(&t, "own", &pid, &caps, false)?;
    ensure!(out.stdout == "attach ESRCH\nseize ESRCH\nkill ESRCH\n", "{out}");
    // The host's pid namespace: visible, and signalable by uid 0 with CAP_KILL
    // (as with any runtime), but not traceable without CAP_SYS_PTRACE.
    let out = ptrace_from(&t, "host", &pid, &caps, true)?;
    ensure!(out.stdout.starts_with("sees-host\nattach EPERM\nseize EPERM\n"), "{out}");
    // The control: with CAP_SYS_PTRACE the same probe does attach.
    let out = ptrace_from(&t, "traced", &pid, &docker_caps_and(&["CAP_SYS_PTRACE"]), true)?;
    ensure!(out.stdout.starts_with("sees-host\nattach ok\nseize ok\n"), "{out}");
    drop(sleep);
    t.assert_no_leftovers();
    Ok(())
}
