//! Shared harness for the integration tests: they drive the real `warren`
//! binary as root, each test with its own state root, bundles and ids, so
//! that tests can run in parallel and clean up after themselves.
//!
//! ```ignore
//! let t = Test::new("hostname");
//! let b = t.bundle(&["hostname"])?;
//! let out = t.run(&t.id("c"), &b)?;
//! t.assert_no_leftovers();
//! ```

mod bundle;
mod cgroupfs;
mod cmd;
mod console;
pub mod cri;
mod host;
mod leftovers;
mod loopdev;
mod probe;
mod registry;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use bundle::Bundle;
pub use cgroupfs::{cgroup_dir, cpu_bandwidth, cpu_weight, hierarchy_root, is_cgroup2, keyed, knob_path, read_knob};
pub use cmd::{command, pass_fds, run_with_deadline, Out};
pub use console::ConsoleSocket;
pub use host::{FakeHost, HostPair, NetNs};
pub use leftovers::{cgroup_dirs, detach_mounts_under, mounts_under, processes, ProcMatch};
pub use loopdev::{loop_devices_under, LoopDevice};
pub use probe::{install_probe, pause_tool, spoof_tool};
pub use registry::{busybox_image, Registry};
pub use serde_json::json;

/// How long one warren invocation may take before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test: $WARREN_BIN, else scripts/build.sh's static
/// build, else the workspace's release build, else its debug build.
pub fn warren_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_BIN") {
        return PathBuf::from(p);
    }
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["target/bin/warren", "target/release/warren"]
        .iter()
        .map(|p| ws.join(p))
        .find(|p| p.exists())
        .unwrap_or_else(|| ws.join("target/debug/warren"))
}

/// The failpoints build of the binary under test (scripts/build.sh puts it beside it), for the
/// fault tests. None (a printed skip) when it is not there; an error under CI (see [`skip`]).
pub fn failpoints_bin() -> Result<Option<PathBuf>> {
    let bin = warren_bin();
    let name = format!("{}-failpoints", bin.file_name().unwrap_or_default().to_string_lossy());
    let path = bin.with_file_name(name);
    if path.exists() {
        return Ok(Some(path));
    }
    skip(&format!("no {} (scripts/build.sh builds it)", path.display()))?;
    Ok(None)
}

/// Runs warren with a private `--root`; output files go to a private dir.
#[derive(Clone)]
pub struct Warren {
    bin: PathBuf,
    /// Extra environment of each command (the failpoint of a fault test).
    env: Vec<(String, String)>,
    root: PathBuf,
    outdir: PathBuf,
    seq: Arc<AtomicUsize>,
    /// A program that runs `bin ARGS...` somewhere else (another host's namespaces).
    wrapper: Option<PathBuf>,
}

impl Warren {
    /// The same binary with another state root, run through `wrapper`.
    pub fn via(&self, wrapper: &Path, root: &Path) -> Warren {
        Warren { root: root.to_path_buf(), wrapper: Some(wrapper.to_path_buf()), ..self.clone() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The same state root through the failpoints build `bin`, each command dying by SIGKILL
    /// at `point` (`WARREN_FAILPOINT`).
    pub fn dying_at(&self, bin: &Path, point: &str) -> Warren {
        Warren { bin: bin.to_path_buf(), env: vec![("WARREN_FAILPOINT".into(), point.into())], ..self.clone() }
    }

    /// A fresh base path for one command's stdout/stderr files.
    fn out_base(&self, tag: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let tag: String = tag.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        self.outdir.join(format!("{n:03}-{tag}"))
    }

    /// `warren --root R ARGS...` with the default deadline.
    pub fn cmd(&self, args: &[&str]) -> Result<Out> {
        self.cmd_for(args, DEADLINE)
    }

    pub fn cmd_for(&self, args: &[&str], deadline: Duration) -> Result<Out> {
        let (out, _) = self.cmd_keep(args, deadline)?;
        Ok(out)
    }

    /// Like cmd, also returning the base of its output files: a detached
    /// container keeps writing there.
    fn cmd_keep(&self, args: &[&str], deadline: Duration) -> Result<(Out, PathBuf)> {
        let base = self.out_base(args.first().copied().unwrap_or("none"));
        Ok((run_with_deadline(self.command(args), &base, deadline)?, base))
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = match &self.wrapper {
            Some(w) => {
                let mut c = command(w);
                c.arg(&self.bin);
                c
            }
            None => command(&self.bin),
        };
        c.arg("--root").arg(&self.root).args(args);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Like cmd, with `files` open in warren as fds 3, 4, ... (for
    /// --preserve-fds).
    pub fn cmd_with_fds(&self, args: &[&str], files: &[&std::fs::File]) -> Result<Out> {
        let mut c = self.command(args);
        pass_fds(&mut c, files);
        run_with_deadline(c, &self.out_base(args.first().copied().unwrap_or("none")), DEADLINE)
    }

    /// `warren run --bundle B ID` in the foreground; the container's stdout
    /// and stderr are warren's.
    pub fn run(&self, id: &str, bundle: &Bundle) -> Result<Out> {
        let b = bundle.path().to_string_lossy();
        self.cmd(&["run", "--bundle", &b, id])
    }

    /// `warren create` without the guard, for tests that expect a failure.
    pub fn try_create(&self, id: &str, bundle: &Bundle, extra: &[&str]) -> Result<Out> {
        let b = bundle.path().to_string_lossy();
        let mut args = vec!["create", "--bundle", &b];
        args.extend_from_slice(extra);
        args.push(id);
        self.cmd(&args)
    }

    /// `warren create` that must succeed; the guard force-deletes on drop.
    pub fn create(&self, id: &str, bundle: &Bundle) -> Result<Container> {
        self.create_with(id, bundle, &[])
    }

    pub fn create_with(&self, id: &str, bundle: &Bundle, extra: &[&str]) -> Result<Container> {
        let b = bundle.path().to_string_lossy();
        let mut args = vec!["create", "--bundle", &b];
        args.extend_from_slice(extra);
        args.push(id);
        let (out, base) = self.cmd_keep(&args, DEADLINE)?;
        let c = Container { warren: self.clone(), id: id.to_string(), out_base: base };
        out.ok().context("create")?;
        Ok(c)
    }

    /// A guard for a container another verb made (restore): force-deleted on drop.
    pub fn adopt(&self, id: &str) -> Container {
        Container { warren: self.clone(), id: id.to_string(), out_base: self.out_base("adopt") }
    }

    /// create + start.
    pub fn start_new(&self, id: &str, bundle: &Bundle) -> Result<Container> {
        let c = self.create(id, bundle)?;
        c.start()?.ok().context("start")?;
        Ok(c)
    }

    pub fn state(&self, id: &str) -> Result<Value> {
        let out = self.cmd(&["state", id])?;
        out.ok()?;
        serde_json::from_str(&out.stdout).with_context(|| format!("state JSON: {out}"))
    }
}

/// A container this test created; force-deleted when dropped.
pub struct Container {
    warren: Warren,
    pub id: String,
    out_base: PathBuf,
}

impl Container {
    fn w(&self, args: &[&str]) -> Result<Out> {
        self.warren.cmd(args)
    }

    pub fn start(&self) -> Result<Out> {
        self.w(&["start", &self.id])
    }

    pub fn state(&self) -> Result<Value> {
        self.warren.state(&self.id)
    }

    pub fn status(&self) -> Result<String> {
        let st = self.state()?;
        Ok(st["status"].as_str().unwrap_or("").to_string())
    }

    pub fn pid(&self) -> Result<i32> {
        let st = self.state()?;
        st["pid"].as_i64().map(|p| p as i32).with_context(|| format!("no pid in state {st}"))
    }

    pub fn kill(&self, sig: &str) -> Result<Out> {
        self.w(&["kill", &self.id, sig])
    }

    pub fn delete(&self) -> Result<Out> {
        self.w(&["delete", &self.id])
    }

    /// `warren exec [OPTS...] ID ARGS...` in the foreground.
    pub fn exec(&self, opts: &[&str], args: &[&str]) -> Result<Out> {
        let mut v: Vec<&str> = vec!["exec"];
        v.extend_from_slice(opts);
        v.push(&self.id);
        v.extend_from_slice(args);
        self.w(&v)
    }

    /// Polls `state` until status is `want` or `timeout` passes.
    pub fn wait_status(&self, want: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let st = self.status()?;
            if st == want {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("{}: status {st:?}, wanted {want:?}", self.id);
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// What the container wrote so far to its stdout (inherited from create).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.out_base.with_extension("stdout")).unwrap_or_default()
    }

    /// Waits until the container's stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            let s = self.stdout();
            if s.contains(needle) {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                bail!("{}: stdout lacks {needle:?}: {s:?}", self.id);
            }
            sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.warren.cmd(&["delete", "--force", &self.id]);
    }
}

/// A bundle's path and its rootfs (dev, ino), for the leftover check.
type BundleRecord = (PathBuf, Option<(u64, u64)>);

/// One test's world: a temp dir holding the state root and output files,
/// the ids and bundles it made, and the leftover check.
pub struct Test {
    name: String,
    dir: tempfile::TempDir,
    pub warren: Warren,
    ids: Mutex<Vec<String>>,
    bundles: Mutex<Vec<BundleRecord>>,
}

impl Test {
    /// `name` must be unique among the tests (the test function's name).
    pub fn new(name: &str) -> Test {
        let dir = tempfile::Builder::new().prefix(&format!("wt-{name}-")).tempdir_in("/tmp").expect("test temp dir");
        let outdir = dir.path().join("out");
        std::fs::create_dir_all(&outdir).expect("out dir");
        let warren = Warren {
            bin: warren_bin(),
            env: Vec::new(),
            root: dir.path().join("state"),
            outdir,
            seq: Arc::new(AtomicUsize::new(0)),
            wrapper: None,
        };
        Test { name: name.to_string(), dir, warren, ids: Mutex::new(Vec::new()), bundles: Mutex::new(Vec::new()) }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Drives a copy of the binary under test, made in the test's dir, from
    /// now on: a test that tries to overwrite the runtime cannot destroy the
    /// real one. Returns the copy's path.
    pub fn use_binary_copy(&mut self) -> Result<PathBuf> {
        let copy = self.dir().join("warren");
        std::fs::copy(&self.warren.bin, &copy).context("copy the warren binary")?;
        self.warren.bin = copy.clone();
        Ok(copy)
    }

    /// A container id unique to this test and process, e.g.
    /// `wt-hostname-1234-c`; remembered for the leftover check.
    /// The name given to `Test::new`, which every `id` carries.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self, suffix: &str) -> String {
        let id = format!("wt-{}-{}-{suffix}", self.name, std::process::id());
        self.ids.lock().unwrap().push(id.clone());
        id
    }

    /// A busybox bundle running `args`, remembered for the leftover check.
    pub fn bundle(&self, args: &[&str]) -> Result<Bundle> {
        let b = Bundle::busybox(args)?;
        let di = leftovers::dev_ino(&b.rootfs());
        self.bundles.lock().unwrap().push((b.path().to_path_buf(), di));
        Ok(b)
    }

    // Shorthands for the runner.
    pub fn run(&self, id: &str, b: &Bundle) -> Result<Out> {
        self.warren.run(id, b)
    }
    pub fn create(&self, id: &str, b: &Bundle) -> Result<Container> {
        self.warren.create(id, b)
    }
    pub fn start_new(&self, id: &str, b: &Bundle) -> Result<Container> {
        self.warren.start_new(id, b)
    }
    pub fn cmd(&self, args: &[&str]) -> Result<Out> {
        self.warren.cmd(args)
    }

    /// The common case: `sh -c SCRIPT` in a fresh container whose config is
    /// first changed by `edit`, run in the foreground.
    pub fn run_sh(&self, script: &str, edit: impl FnOnce(&mut Value)) -> Result<Out> {
        let b = self.bundle(&["sh", "-c", script])?;
        b.edit(edit)?;
        let n = self.ids.lock().unwrap().len();
        self.run(&self.id(&format!("r{n}")), &b)
    }

    /// Every leftover found now: state entries, mounts, cgroups, processes,
    /// loop devices backed by files in the test dir.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.warren.root()) {
            for e in rd.flatten() {
                found.push(format!("state entry {}", e.path().display()));
            }
        }
        for p in self.paths() {
            for m in mounts_under(&p) {
                found.push(format!("mount {m}"));
            }
        }
        for id in self.ids.lock().unwrap().iter() {
            for d in cgroup_dirs(id) {
                found.push(format!("cgroup {}", d.display()));
            }
        }
        for (_, why) in self.processes() {
            found.push(format!("process {why}"));
        }
        for dev in loop_devices_under(self.dir()) {
            found.push(format!("loop device {}", dev.display()));
        }
        found
    }

    /// Panics listing the leftovers, if some remain after a short grace
    /// period (a killed process takes a moment to be reaped).
    pub fn assert_no_leftovers(&self) {
        let start = Instant::now();
        loop {
            let found = self.leftovers();
            if found.is_empty() {
                return;
            }
            if start.elapsed() > Duration::from_secs(3) {
                panic!("leftovers:\n  {}", found.join("\n  "));
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn paths(&self) -> Vec<PathBuf> {
        let mut v = vec![self.dir.path().to_path_buf()];
        v.extend(self.bundles.lock().unwrap().iter().map(|(p, _)| p.clone()));
        v
    }

    fn processes(&self) -> Vec<(i32, String)> {
        let paths = self.paths();
        let roots: Vec<(u64, u64)> = self.bundles.lock().unwrap().iter().filter_map(|(_, di)| *di).collect();
        let ids = self.ids.lock().unwrap().clone();
        leftovers::processes(&leftovers::ProcMatch { paths: &paths, roots: &roots, ids: &ids })
    }

    /// Best effort: remove whatever a misbehaving runtime left, so one
    /// failing test does not leave the host dirty for the next.
    fn sweep(&self) {
        let ids = self.ids.lock().unwrap().clone();
        for id in &ids {
            let _ = self.warren.cmd_for(&["delete", "--force", id], Duration::from_secs(10));
        }
        for (pid, _) in self.processes() {
            // SAFETY: kill(2); these processes belong to this test.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        sleep(Duration::from_millis(50));
        for id in &ids {
            for d in cgroup_dirs(id) {
                remove_cgroup_tree(&d);
            }
        }
        for p in self.paths() {
            detach_mounts_under(&p);
        }
        loopdev::detach_loop_devices_under(self.dir());
    }
}

impl Drop for Test {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// rmdir a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}

/// Runs a host command (not warren) with the default deadline; output files
/// go to the test's dir.
pub fn host(t: &Test, program: &str, args: &[&str]) -> Result<Out> {
    let mut c = command(program);
    c.args(args);
    run_with_deadline(c, &t.warren.out_base(program), DEADLINE)
}

/// Makes the root writable: `warren spec`, like `runc spec`, may default to a
/// read-only root, and many tests write to /tmp.
pub fn writable_root(cfg: &mut Value) {
    cfg["root"]["readonly"] = json!(false);
}

/// Capability names (without CAP_) by number, as in linux/capability.h.
const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The /proc/PID/status bit mask of a list of "CAP_X" names (a JSON array).
pub fn cap_mask(names: &Value) -> u64 {
    let mut mask = 0;
    for n in names.as_array().into_iter().flatten() {
        let n = n.as_str().unwrap_or("").trim_start_matches("CAP_");
        let bit = CAPS.iter().position(|c| *c == n);
        mask |= 1u64 << bit.unwrap_or_else(|| panic!("unknown cap {n}"));
    }
    mask
}

/// The value of `Field:` in a /proc/PID/status style text.
pub fn status_field<'a>(text: &'a str, field: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')).map(str::trim)
}

/// The libseccomp name of this machine's architecture.
pub fn seccomp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        other => panic!("no seccomp arch name for {other}"),
    }
}

/// The number a counting container keeps writing to `file` (through a rename, so it is never
/// seen half-written).
pub fn read_counter(file: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(file)?;
    text.trim().parse().with_context(|| format!("counter {text:?} in {}", file.display()))
}

/// Waits until the counter in `file` passes `above`; returns the value seen.
pub fn wait_counter_above(file: &Path, above: u64, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        if let Ok(n) = read_counter(file) {
            if n > above {
                return Ok(n);
            }
        }
        if start.elapsed() > timeout {
            bail!("counter in {} stayed at or below {above}", file.display());
        }
        sleep(Duration::from_millis(20));
    }
}

/// A test whose prerequisite is missing: under CI (the `CI` variable set, as
/// CI runs it) that is a failure, since a skipped test proves nothing;
/// elsewhere the test is skipped with `reason` printed.
pub fn skip(reason: &str) -> Result<()> {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        bail!("{reason}; CI is set, so this fails instead of skipping");
    }
    eprintln!("skipped: {reason}");
    Ok(())
}

/// Whether criu is on PATH. Ok(false) (a printed skip) when it is not, an
/// error under CI (see [`skip`]).
pub fn have_criu() -> Result<bool> {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join("criu").is_file())).unwrap_or(false);
    if !found {
        skip("criu not on PATH (scripts/install-criu.sh installs it)")?;
    }
    Ok(found)
}
