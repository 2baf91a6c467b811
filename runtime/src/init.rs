//! The container side of create and exec: `warren init`, run from a sealed
//! copy of the binary. Stage 1 joins and creates namespaces, then forks
//! stage 2, which (as pid 1 of a new pid namespace) builds the container's
//! view and finally execs the user's program.

use crate::affinity::AffinityError;
use crate::hooks::{self, HookKind};
use crate::mempolicy::MemPolicyError;
use crate::sync::{Channel, InitConfig};
use crate::{console, process, rootfs, seccomp};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// The environment variable that carries the sync socket's fd number.
pub const SYNC_FD_ENV: &str = "_WARREN_SYNC_FD";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    #[error(transparent)]
    Namespace(#[from] crate::namespaces::NamespaceError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Process(#[from] process::ProcessError),
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    MemoryPolicy(#[from] MemPolicyError),
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error(transparent)]
    MemoryMerge(#[from] crate::memory_merge::MemoryMergeError),
    #[error("{step}: {source}")]
    Sys { step: &'static str, source: std::io::Error },
}

fn sys_err(step: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
    move |source| InitError::Sys { step, source }
}

/// Entry point of `warren init`: never returns.
pub fn main(sync_fd: RawFd) -> ! {
    // Our own descriptors must never reach the container, even when their
    // numbers fall in the --preserve-fds range.
    let _ = crate::sys::set_cloexec(sync_fd);
    // SAFETY: the runtime passed us this socket and nothing else in this fresh process owns it.
    let mut chan = unsafe { Channel::from_raw_fd(sync_fd) };
    match stage1(&mut chan) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            chan.report_error(e.to_string());
            std::process::exit(1)
        }
    }
}

fn stage1(chan: &mut Channel) -> Result<(), InitError> {
    let cfg = chan.recv_config()?;
    for fd in cfg.inherited_fds() {
        let _ = crate::sys::set_cloexec(fd);
    }
    // Before any cgroup join (execCPUAffinity.initial's whole point).
    cfg.affinity.apply_initial()?;
    // The cgroup must be joined while we still see and may write the host's
    // cgroupfs: before joining other namespaces or leaving the host's user
    // namespace. Otherwise join late, so the runtime's cgroup set-up overlaps
    // with our start and namespace creation.
    let new_user = cfg.namespaces.creates(LinuxNamespaceType::User);
    let join_early = cfg.cgroup_ready || new_user || !cfg.namespaces.join.is_empty();
    let mut cgroup2 = None;
    if join_early {
        if !cfg.cgroup_ready {
            chan.wait_for_cgroup()?;
        }
        cgroup2 = join_cgroup(&cfg)?;
    }
    cfg.namespaces.join_all()?;
    if new_user {
        cfg.namespaces.unshare_user()?;
        chan.request_id_maps(std::process::id() as i32)?;
        crate::sys::set_ids(0, 0).map_err(sys_err("become root in the user namespace"))?;
    }
    cfg.namespaces.unshare_rest()?;
    if cfg.namespaces.creates(LinuxNamespaceType::Network) {
        crate::sys::set_loopback_up().map_err(sys_err("set the loopback interface up"))?;
    }
    if !join_early {
        chan.wait_for_cgroup()?;
        cgroup2 = join_cgroup(&cfg)?;
    }
    let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| InitError::Sys { step: "pipe", source: e.into() })?;
    // Before stage 2 exists: it must never be visible in a (joined) pid
    // namespace as a dumpable process, whose /proc files others could open.
    crate::sys::set_non_dumpable().map_err(sys_err("set non-dumpable"))?;
    // This process is single-threaded (a fresh exec of ours), so fork is safe.
    match fork_into_cgroup(cgroup2)? {
        0 => {
            drop(gate_w);
            // Wait until stage 1 has told the runtime our pid: the runtime
            // must see Pid before anything stage 2 says.
            let mut b = [0u8; 1];
            if nix::unistd::read(gate_r.as_raw_fd(), &mut b) != Ok(1) {
                std::process::exit(1);
            }
            drop(gate_r);
            stage2(chan, cfg)
        }
        pid => {
            chan.report_pid(pid)?;
            nix::unistd::write(&gate_w, &[1])
                .map_err(|e| InitError::Sys { step: "release stage 2", source: e.into() })?;
            Ok(())
        }
    }
}

/// Stage 1 joins the container's cgroups itself, before any namespace
/// changes what it may see or write: v1 hierarchies now; the cgroup2 part
/// through the returned directory when it forks stage 2 (CLONE_INTO_CGROUP).
/// Once in a new user namespace we may no longer write there, so then
/// cgroup2 is joined now too (the slower way, through cgroup.procs).
fn join_cgroup(cfg: &InitConfig) -> Result<Option<std::fs::File>, InitError> {
    let Some(cg) = &cfg.cgroup else { return Ok(None) };
    cg.join_v1_self()?;
    let Some(dir) = cg.v2_dir() else { return Ok(None) };
    if cfg.namespaces.creates(LinuxNamespaceType::User) {
        cg.join_v2_self()?;
        return Ok(None);
    }
    std::fs::File::open(dir).map(Some).map_err(sys_err("open the container's cgroup2 directory"))
}

/// Forks stage 2, into `cgroup2` when given (see [`join_cgroup`]).
fn fork_into_cgroup(cgroup2: Option<std::fs::File>) -> Result<i32, InitError> {
    let Some(dir) = cgroup2 else {
        return crate::sys::fork().map_err(sys_err("fork"));
    };
    match crate::sys::fork_into_cgroup(dir.as_raw_fd()) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::E2BIG)) => {
            // A kernel before 5.7: move ourselves, then a plain fork.
            std::fs::write(Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join("cgroup.procs"), "0")
                .map_err(sys_err("join the container's cgroup2 directory"))?;
            crate::sys::fork().map_err(sys_err("fork"))
        }
        other => other.map_err(sys_err("clone into the container's cgroup")),
    }
}

fn stage2(chan: &mut Channel, cfg: InitConfig) -> ! {
    let prepared = match prepare(chan, &cfg) {
        Ok(p) => p,
        Err(e) => {
            chan.report_error(e.to_string());
            std::process::exit(1)
        }
    };
    if let Err(e) = chan.ready() {
        eprintln!("warren init: {e}");
        std::process::exit(1);
    }
    // From here on the runtime has returned: errors go to the container's stderr.
    let err = run(&cfg, prepared);
    eprintln!("warren init: {err}");
    std::process::exit(127)
}

/// What `prepare` leaves for the final steps after Ready.
struct Prepared {
    exec_fifo: Option<OwnedFd>,
    program: PathBuf,
    seccomp: Option<seccomp::SeccompProgram>,
    state_json: String,
}

/// Everything that can fail before `create` returns, so failures reach the caller.
fn prepare(chan: &mut Channel, cfg: &InitConfig) -> Result<Prepared, InitError> {
    cfg.namespaces.unshare_cgroup()?;
    nix::unistd::setsid().map_err(|e| InitError::Sys { step: "setsid", source: e.into() })?;
    let process = cfg.process();
    let mut exec_fifo = None;
    let mut state_json = String::new();
    if let Some(create) = &cfg.create {
        let ctx = rootfs::RootfsContext {
            spec: &cfg.spec,
            rootfs: &create.rootfs,
            bundle: &create.bundle,
            in_user_ns: cfg.namespaces.creates(LinuxNamespaceType::User)
                || cfg.namespaces.joins(LinuxNamespaceType::User),
            cgroup: cfg.cgroup.as_ref(),
            root_is_rslave: cfg.namespaces.mount_ns_made,
            rootfs_mount: create.rootfs_mount_fd,
        };
        // SAFETY: the runtime handed us this descriptor; nothing else here owns it.
        exec_fifo = Some(unsafe { OwnedFd::from_raw_fd(create.exec_fifo_fd) });
        rootfs::prepare(&ctx)?;
        // Most containers have no hooks: then there is nothing to ask for.
        let kinds = [HookKind::Prestart, HookKind::CreateRuntime, HookKind::CreateContainer, HookKind::StartContainer];
        if kinds.iter().any(|k| !k.of(&cfg.spec).is_empty()) {
            state_json = chan.run_create_runtime_hooks()?;
            hooks::run_all(HookKind::CreateContainer, &cfg.spec, &state_json)?;
            state_json = with_status(&state_json, "created");
        }
        rootfs::pivot(&create.rootfs, create.no_pivot)?;
    }
    if process.terminal().unwrap_or(false) {
        setup_terminal(cfg)?;
    }
    if let Some(create) = &cfg.create {
        rootfs::finish(&cfg.spec)?;
        set_names(&cfg.spec)?;
        if !create.no_new_keyring {
            // Kernels or seccomp profiles without keyrings: nothing to isolate then.
            if let Err(e) = crate::sys::join_new_session_keyring() {
                if e.raw_os_error() != Some(libc::ENOSYS) && e.raw_os_error() != Some(libc::EPERM) {
                    return Err(sys_err("join a new session keyring")(e));
                }
            }
        }
        process::apply_personality(&cfg.spec)?;
    }
    process::apply_oom_score_adj(process)?;
    process::apply_rlimits(process)?;
    process::change_dir(process)?;
    let program = process::find_program(process)?;
    let seccomp = match cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp::compile(s)?),
        None => None,
    };
    process::drop_bounding(process)?;
    // Inside the cgroup since the fork; set here rather than right before
    // exec so that a refusal still reaches the caller of create or exec.
    // Nothing between here and exec moves the process or resets either.
    cfg.affinity.apply_final()?;
    if let Some(policy) = &cfg.mempolicy {
        policy.apply()?;
    }
    // Also here rather than at exec, for the same reason: a kernel without KSM fails create.
    // The flag is the mm's and survives exec (6.7+): the program gets it.
    if cfg.memory_merge {
        crate::memory_merge::enable()?;
    }
    Ok(Prepared { exec_fifo, program, seccomp, state_json })
}

fn setup_terminal(cfg: &InitConfig) -> Result<(), InitError> {
    let fd = cfg.console_fd.ok_or_else(|| InitError::Sys {
        step: "process.terminal is set but no --console-socket was given",
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let size = cfg.process().console_size().map(|b| (b.height() as u16, b.width() as u16));
    let (slave, path) = console::create(fd, size)?;
    nix::unistd::close(fd).ok();
    if cfg.create.is_some() {
        rootfs::bind_console(&path)?;
    }
    console::attach(&slave)?;
    Ok(())
}

fn set_names(spec: &Spec) -> Result<(), InitError> {
    if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| InitError::Sys { step: "sethostname", source: e.into() })?;
    }
    if let Some(d) = spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        crate::sys::set_domainname(d).map_err(sys_err("setdomainname"))?;
    }
    Ok(())
}

/// After Ready: wait for `start`, switch to the container's user and
/// privileges, run startContainer hooks and exec.
fn run(cfg: &InitConfig, prepared: Prepared) -> InitError {
    let process = cfg.process();
    if let Some(fifo) = &prepared.exec_fifo {
        if let Err(e) = wait_for_start(fifo) {
            return e;
        }
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    let steps = || -> Result<(), InitError> {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it
        // while we still have it. With it, do it last, so that as few of our
        // own syscalls as possible run under the filter.
        if let (Some(s), false) = (&prepared.seccomp, nnp) {
            s.install()?;
        }
        process::switch_user(process)?;
        process::set_capabilities(process)?;
        process::set_no_new_privs(process)?;
        if cfg.create.is_some() {
            hooks::run_all(HookKind::StartContainer, &cfg.spec, &prepared.state_json)?;
        }
        crate::sys::cloexec_from(3 + cfg.preserve_fds).map_err(sys_err("close descriptors"))?;
        if let (Some(s), true) = (&prepared.seccomp, nnp) {
            s.install()?;
        }
        Ok(())
    };
    if let Err(e) = steps() {
        return e;
    }
    process::exec(process, &prepared.program).into()
}

/// Blocks until `start` writes its byte into the exec fifo.
fn wait_for_start(fifo: &OwnedFd) -> Result<(), InitError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(InitError::Sys { step: "wait for start", source: e.into() }),
        }
        let mut b = [0u8; 1];
        match nix::unistd::read(fifo.as_raw_fd(), &mut b) {
            Ok(1) => return Ok(()),
            // Someone opened and closed the fifo without a word: not a start.
            Ok(_) | Err(nix::Error::EAGAIN) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => return Err(InitError::Sys { step: "wait for start", source: e.into() }),
        }
    }
}

/// The hook state JSON with another status.
fn with_status(state_json: &str, status: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(state_json) {
        Ok(mut v) => {
            v["status"] = status.into();
            v.to_string()
        }
        Err(_) => state_json.to_string(),
    }
}
