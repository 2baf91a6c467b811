//! The `criu` command lines for dump, pre-dump and restore, built as plain data from the
//! options (so that they are unit-tested), and running criu with its log read back on error.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{CheckpointError, CheckpointOptions, CriuCommon, Stdio};

/// The criu binary: `explicit` (runc's global `--criu`), else `WARREN_CRIU` if set, else the
/// first `criu` on PATH.
pub fn binary(explicit: Option<&Path>) -> Result<PathBuf, CheckpointError> {
    if let Some(path) = explicit.map(Path::as_os_str).map(ToOwned::to_owned).or_else(|| std::env::var_os("WARREN_CRIU"))
    {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("criu"))
        .find(|candidate| candidate.is_file())
        .ok_or(CheckpointError::CriuNotFound)
}

/// Flags shared by dump and restore.
fn common_args(args: &mut Vec<OsString>, common: &CriuCommon) {
    let flags = [
        (common.tcp_established, "--tcp-established"),
        (common.ext_unix_sk, "--ext-unix-sk"),
        (common.shell_job, "--shell-job"),
        (common.file_locks, "--file-locks"),
    ];
    args.extend(flags.iter().filter(|(on, _)| *on).map(|(_, flag)| OsString::from(flag)));
    args.push(format!("--manage-cgroups={}", common.manage_cgroups_mode.as_deref().unwrap_or("soft")).into());
    // Validated to name the network namespace, which runc calls "network" and criu "net".
    for _ in &common.empty_ns {
        args.extend(["--empty-ns".into(), "net".into()]);
    }
}

fn dir_args(args: &mut Vec<OsString>, images: &Path, work: &Path, log: &str) {
    for (flag, value) in [("--images-dir", images.as_os_str()), ("--work-dir", work.as_os_str())] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.extend(["--log-file".into(), log.into(), "-v4".into()]);
}

/// `criu dump` (or `pre-dump`) of the tree rooted at `pid`. `externals` are the mounts whose
/// sources lie outside the container (bind mounts, by destination), `freezer` the cgroup to
/// freeze the tree with.
pub fn dump_args(
    pid: i32,
    opts: &CheckpointOptions,
    stdio: &[Stdio],
    externals: &[PathBuf],
    freezer: Option<&Path>,
    joined_netns: Option<u64>,
) -> Vec<OsString> {
    let action = if opts.pre_dump { "pre-dump" } else { "dump" };
    let mut args: Vec<OsString> = vec![action.into(), "--tree".into(), pid.to_string().into()];
    dir_args(
        &mut args,
        &opts.image_path,
        opts.work_path.as_deref().unwrap_or(&opts.image_path),
        &format!("{action}.log"),
    );
    common_args(&mut args, &opts.common);
    if let Some(parent) = &opts.parent_path {
        args.extend(["--prev-images-dir".into(), parent.into()]);
    }
    if opts.pre_dump || opts.parent_path.is_some() {
        args.push("--track-mem".into());
    }
    if opts.leave_running && !opts.pre_dump {
        args.push("--leave-running".into());
    }
    if opts.auto_dedup {
        args.push("--auto-dedup".into());
    }
    if opts.link_remap {
        args.push("--link-remap".into());
    }
    if opts.tcp_skip_in_flight {
        args.push("--skip-in-flight".into());
    }
    if opts.skip_network_lock {
        args.extend(["--network-lock".into(), "skip".into()]);
    }
    if let Some(fd) = opts.page_socket {
        args.extend(["--page-server".into(), "--ps-socket".into(), fd.to_string().into()]);
    }
    if let Some(dir) = freezer {
        args.extend(["--freeze-cgroup".into(), dir.into()]);
    }
    for dest in externals {
        args.extend(["--external".into(), format!("mnt[{}]:{}", dest.display(), dest.display()).into()]);
    }
    for external in stdio.iter().filter_map(Stdio::dump_external) {
        args.extend(["--external".into(), external.into()]);
    }
    if let Some(inode) = joined_netns {
        args.extend(["--external".into(), format!("net[{inode}]:{EXTERNAL_NETNS}").into()]);
    }
    args
}

/// CRIU's key for a network namespace the container joined (not its own): not dumped, and
/// at restore the fd inherited under this key is the namespace joined (runc's name).
pub const EXTERNAL_NETNS: &str = "extRootNetNS";

/// What `criu restore` needs beyond the shared flags.
pub struct RestorePlan<'a> {
    pub images: &'a Path,
    pub work: &'a Path,
    pub root: &'a Path,
    pub pid_file: &'a Path,
    /// (destination in the container, source on this host) of each bind mount.
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// (our fd, the criu key of what it replaces).
    pub inherit: Vec<(i32, String)>,
    /// (controller list as in /proc/PID/cgroup, path there) of each hierarchy.
    pub cgroup_roots: Vec<(String, PathBuf)>,
    pub no_pivot: bool,
    pub leave_stopped: bool,
    /// Memory is left to a [`LazyPages`] daemon serving the same images (post-copy).
    pub lazy_pages: bool,
    /// Restored pages are punched out of the images.
    pub auto_dedup: bool,
}

pub fn restore_args(plan: &RestorePlan, common: &CriuCommon) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["restore".into()];
    dir_args(&mut args, plan.images, plan.work, "restore.log");
    common_args(&mut args, common);
    args.extend(["--root".into(), plan.root.into(), "--restore-detached".into()]);
    args.extend(["--pidfile".into(), plan.pid_file.into()]);
    if plan.no_pivot {
        args.push("--no-pivot".into());
    }
    if plan.leave_stopped {
        args.push("--leave-stopped".into());
    }
    if plan.lazy_pages {
        args.push("--lazy-pages".into());
    }
    if plan.auto_dedup {
        args.push("--auto-dedup".into());
    }
    if !common.tcp_established {
        // The lock keeps peers from resetting restored connections; without them it only
        // costs an iptables-restore (and ip6tables-restore) that removes it at the end.
        args.extend(["--network-lock".into(), "skip".into()]);
    }
    for (dest, source) in &plan.binds {
        args.extend(["--external".into(), format!("mnt[{}]:{}", dest.display(), source.display()).into()]);
    }
    for (fd, key) in &plan.inherit {
        args.extend(["--inherit-fd".into(), format!("fd[{fd}]:{key}").into()]);
    }
    for (controllers, path) in &plan.cgroup_roots {
        // v1 hierarchies by any of their controllers. The cgroup2 one has no controller name
        // to give: it takes the default root, which applies to every hierarchy not named.
        let root = match controllers.split(',').next().filter(|c| !c.is_empty()) {
            Some(name) => format!("{name}:{}", path.display()),
            None => path.display().to_string(),
        };
        args.extend(["--cgroup-root".into(), root.into()]);
    }
    args
}

/// `criu lazy-pages`: the daemon that fills a lazily restored tree's memory from the images
/// through userfaultfd, on faults and in the background, and exits when every page is in (or
/// the tree is gone). The images must stay until then.
pub struct LazyPages {
    child: Option<std::process::Child>,
    log: PathBuf,
}

/// How long the daemon may take to listen before the restore gives up on it.
const LAZY_PAGES_LISTEN: std::time::Duration = std::time::Duration::from_secs(10);

impl LazyPages {
    /// Starts the daemon on `images`; it listens in `work`, where the restore must look for it
    /// (the same `--work-dir`). Returns once it listens.
    pub fn start(criu: &Path, images: &Path, work: &Path) -> Result<LazyPages, CheckpointError> {
        super::kdat::ensure_cache(criu);
        let socket = work.join("lazy-pages.socket");
        let _ = std::fs::remove_file(&socket);
        let mut args: Vec<OsString> = vec!["lazy-pages".into()];
        dir_args(&mut args, images, work, "lazy-pages.log");
        // Its own process group: a Ctrl-C or a stop signal for the receiver's group must not
        // kill it while it fills a running container's memory.
        let child = spawn_quiet(Command::new(criu).args(&args).process_group(0), criu)?;
        let mut daemon = LazyPages { child: Some(child), log: work.join("lazy-pages.log") };
        let deadline = std::time::Instant::now() + LAZY_PAGES_LISTEN;
        while !socket.exists() {
            let exited = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() > deadline {
                let status = exited.map_or_else(|| "not listening".to_string(), |s| s.to_string());
                let err = daemon.failed(status);
                daemon.abort();
                return Err(err);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(daemon)
    }

    /// Waits until every page is in (the daemon exits); an error if the daemon failed.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let status = child.wait().map_err(|source| CheckpointError::Io { path: self.log.clone(), source })?;
        match status.success() {
            true => Ok(()),
            false => Err(self.failed(status.to_string())),
        }
    }

    /// Kills the daemons started with work dir `work` by a process that is gone (a receiver
    /// killed between the daemon's start and the restore leaves one waiting for ever). Only
    /// for a work dir whose restore is being undone: a restored tree's daemon fills its memory.
    pub fn kill_orphans(work: &Path) -> Vec<i32> {
        let Ok(work) = std::fs::canonicalize(work) else { return Vec::new() };
        let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
        let mut killed = Vec::new();
        for pid in procs.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.get(1) == Some(&&b"lazy-pages"[..])
                && args.windows(2).any(|w| {
                    // A relative work dir is the daemon's: resolved from its own cwd.
                    let dir = Path::new(&format!("/proc/{pid}/cwd")).join(std::ffi::OsStr::from_bytes(w[1]));
                    w[0] == b"--work-dir" && std::fs::canonicalize(dir).is_ok_and(|p| p == work)
                });
            if ours && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).is_ok() {
                killed.push(pid);
            }
        }
        killed
    }

    /// An error if the daemon has already ended in failure (the memory it had yet to fill
    /// would read as zeros); Ok while it runs or once it succeeded.
    pub fn check(&mut self) -> Result<(), CheckpointError> {
        let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        match exited {
            Some(status) if !status.success() => Err(self.failed(status.to_string())),
            _ => Ok(()),
        }
    }

    /// For a restore that failed: the daemon has no tree to fill.
    pub fn abort(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn failed(&self, status: String) -> CheckpointError {
        failed("lazy-pages", status, &self.log)
    }
}

impl Drop for LazyPages {
    /// Once the tree is restored its memory is the daemon's to fill: it is waited for, never
    /// killed (an unfilled page would read as zeros), also when what follows fails.
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let daemon = LazyPages { child: Some(child), log: self.log.clone() };
            if let Err(e) = daemon.finish() {
                log::warn!("{e}");
            }
        }
    }
}

/// `criu page-server` on a socket: writes the page maps and pages a dump sends over it into
/// `images` (the other end is [`PageServer::socket`]).
pub struct PageServer {
    child: Option<std::process::Child>,
    socket: std::os::unix::net::UnixStream,
    log: PathBuf,
    /// Reads the server's answers (a byte per page map opened, one per process): unread, they
    /// would fill the socket and stop the server, and with it our writes.
    answers: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    /// `criu`: as for [`binary`].
    pub fn start(criu: Option<&Path>, images: &Path, work: &Path) -> Result<PageServer, CheckpointError> {
        use std::os::fd::AsRawFd;
        let criu = &binary(criu)?;
        super::kdat::ensure_cache(criu);
        let io = |source| CheckpointError::Io { path: PathBuf::from("socketpair"), source };
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        crate::sys::clear_cloexec(theirs.as_raw_fd()).map_err(io)?;
        let mut args: Vec<OsString> = vec!["page-server".into()];
        dir_args(&mut args, images, work, "page-server.log");
        args.extend(["--ps-socket".into(), theirs.as_raw_fd().to_string().into()]);
        let child = spawn_quiet(Command::new(criu).args(&args), criu)?;
        drop(theirs);
        let mut reader = ours.try_clone().map_err(io)?;
        // Ends when the server's end closes (it exits, or is killed).
        let answers = std::thread::spawn(move || {
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        Ok(PageServer { child: Some(child), socket: ours, log: work.join("page-server.log"), answers: Some(answers) })
    }

    /// Where the page stream goes.
    pub fn socket(&self) -> &std::os::unix::net::UnixStream {
        &self.socket
    }

    /// Waits for the server to have written everything and exited; an error if it failed.
    pub fn finish(mut self) -> Result<(), CheckpointError> {
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        let mut child = self.child.take().expect("taken only here");
        let status = child.wait().map_err(|source| CheckpointError::Io { path: self.log.clone(), source })?;
        if let Some(answers) = self.answers.take() {
            let _ = answers.join();
        }
        match status.success() {
            true => Ok(()),
            false => Err(failed("page-server", status.to_string(), &self.log)),
        }
    }
}

impl Drop for PageServer {
    /// Not finished: the stream failed; what it wrote goes with the spool.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(answers) = self.answers.take() {
            let _ = answers.join();
        }
    }
}

/// A criu process beside us (a daemon or server), its stdio on /dev/null: it logs to its file.
fn spawn_quiet(cmd: &mut Command, criu: &Path) -> Result<std::process::Child, CheckpointError> {
    use std::process::Stdio;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn().map_err(|source| CheckpointError::Spawn { path: criu.to_path_buf(), source })
}

/// A criu `action` that ended with `status`, with the first error of its log.
fn failed(action: &'static str, status: String, log: &Path) -> CheckpointError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    CheckpointError::Criu { action, status, reason: first_error(&text), log: log.to_path_buf() }
}

/// Work done in criu's process before it starts (between fork and exec).
pub type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// Runs criu; on failure the error carries the log's last error line. `before_exec` runs in
/// the child between fork and exec (it must be async-signal-safe).
pub fn run(
    criu: &Path,
    args: &[OsString],
    log: PathBuf,
    action: &'static str,
    before_exec: Option<PreExec>,
) -> Result<(), CheckpointError> {
    super::kdat::ensure_cache(criu);
    let mut cmd = Command::new(criu);
    cmd.args(args);
    if let Some(f) = before_exec {
        // SAFETY: `f` is async-signal-safe (plain syscalls on data made before the fork).
        unsafe { cmd.pre_exec(f) };
    }
    // criu keeps our stdio: the restored process may inherit it (--inherit-fd); what criu
    // has to say goes to its log.
    let status = cmd.status().map_err(|source| CheckpointError::Spawn { path: criu.to_path_buf(), source })?;
    if status.success() {
        return Ok(());
    }
    Err(failed(action, status.to_string(), &log))
}

/// The first error criu logged (the later ones follow from it), without its timestamp, pid
/// and source location. criu's own errors read "(00.012345)  7: Error (criu/x.c:12): what";
/// they come before other "Error" lines, which are tools criu ran (`ip addr restore` says
/// "Error: ipv4: Address already assigned." on every restore of a netns with lo up). Its
/// RLIMIT_NOFILE complaint is harmless: without CAP_SYS_RESOURCE it cannot raise its own limit.
fn first_error(log: &str) -> String {
    let errors = || log.lines().filter(|l| l.contains("Error") && !l.contains("RLIMIT_NOFILE"));
    let line = errors()
        .find(|l| l.contains("Error ("))
        .or_else(|| errors().next())
        .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("no log");
    let what = match line.split_once("Error (").and_then(|(_, rest)| rest.split_once("): ")) {
        Some((_, what)) => what,
        None => line,
    };
    let what = what.trim();
    match HINTS.iter().find(|(needle, _)| what.contains(needle)) {
        Some((_, hint)) => format!("{what} ({hint})"),
        None => what.to_string(),
    }
}

/// What to do about criu errors whose text does not say it.
const HINTS: [(&str, &str); 1] =
    [("Connected TCP socket in image", "checkpointed with --tcp-established: restore with it too")];

#[cfg(test)]
mod tests {
    use super::first_error;

    #[test]
    fn the_first_criu_error_without_its_prefix() {
        let log = "(00.016047) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n\
                   Error: ipv4: Address already assigned.\n\
                   (00.165315) Error (criu/sk-inet.c:200): inet: Connected TCP socket, consider using --tcp-established option.\n\
                   (00.165400) Error (criu/cr-dump.c:2111): Dumping FAILED.\n";
        assert_eq!(first_error(log), "inet: Connected TCP socket, consider using --tcp-established option.");
    }

    #[test]
    fn a_restore_without_tcp_established_says_what_to_do() {
        let log = "Error: ipv4: Address already assigned.\n\
                   (00.199671)      4: Error (criu/sk-inet.c:912): inet: Connected TCP socket in image\n";
        let got = first_error(log);
        assert!(got.starts_with("inet: Connected TCP socket in image (") && got.contains("--tcp-established"), "{got}");
    }

    #[test]
    fn other_tools_errors_and_then_the_last_line_when_criu_logged_none() {
        assert_eq!(
            first_error("Error (criu/util.c:1): rlimit: RLIMIT_NOFILE\nError: ipv4: Address already assigned.\nb\n"),
            "Error: ipv4: Address already assigned."
        );
        assert_eq!(first_error("a\nlast words\n\n"), "last words");
        assert_eq!(first_error(""), "no log");
    }
}
