//! The runtime's operations on containers (create, start, state, kill,
//! delete, pause, resume, ps, exec), each under the container's lock.

use crate::affinity::ExecAffinity;
use crate::cgroups::stats::Stats;
use crate::cgroups::{Cgroup, CgroupError};
use crate::failpoint::failpoint;
use crate::hooks::{self, HookKind};
use crate::mempolicy::MemPolicy;
use crate::namespaces::NamespacePlan;
use crate::spawn::{InitProcess, SpawnError};
use crate::spec::{Bundle, SpecError};
use crate::state::{self, DirLock, State, StateError, Status};
use crate::sync::{CreateSetup, InitConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources, Process, Spec};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const OCI_VERSION: &str = "1.2.0";

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    MemoryPolicy(#[from] crate::mempolicy::MemPolicyError),
    #[error(transparent)]
    Affinity(#[from] crate::affinity::AffinityError),
    #[error(transparent)]
    MemoryMerge(#[from] crate::memory_merge::MemoryMergeError),
    #[error("container not running")]
    NotRunning { id: String },
    #[error("cannot start a container that has stopped")]
    StartStopped { id: String },
    #[error("cannot start an already running container")]
    StartRunning { id: String },
    #[error("cannot delete container {id} that is not stopped: {status}")]
    DeleteNotStopped { id: String, status: Status },
    #[error("container {id} is {status}: cannot {action}")]
    BadStatus { id: String, status: Status, action: &'static str },
    #[error("kill {id}: {source}")]
    Signal { id: String, source: nix::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("--console-socket {path}: {source}")]
    ConsoleSocket { path: PathBuf, source: std::io::Error },
    #[error("container {id}: process.terminal is set: --console-socket is required")]
    NoConsoleSocket { id: String },
    #[error("container {id}: its cgroup {path} already holds processes (another container's?)")]
    CgroupInUse { id: String, path: PathBuf },
    #[error("container {id}: cannot merge the updated resources into its config: {source}")]
    MergeResources { id: String, source: serde_json::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError + '_ {
    move |source| ContainerError::Io { path: path.to_path_buf(), source }
}

/// `state` output: the spec's state plus runc's rootfs/created/owner.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The state JSON hooks read on stdin (runtime-spec "State").
pub fn hook_state(state: &State, status: Status, pid: i32) -> String {
    serde_json::json!({
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "status": status,
        "pid": pid,
        "bundle": state.bundle,
        "annotations": state.annotations,
    })
    .to_string()
}

/// Where the pty master of a container with a terminal goes.
pub enum ConsoleTarget {
    /// `--console-socket`: a unix socket path the caller listens on.
    Socket(PathBuf),
    /// Our own end of a socketpair: the caller relays the terminal itself.
    Fd(OwnedFd),
}

pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console: Option<ConsoleTarget>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
}

pub struct ExecOptions {
    pub id: String,
    pub process: Process,
    pub pid_file: Option<PathBuf>,
    pub console: Option<ConsoleTarget>,
    pub preserve_fds: u32,
}

/// A container's directory, locked for the lifetime of this value.
pub struct Locked {
    pub dir: PathBuf,
    pub state: State,
    _lock: DirLock,
}

/// All containers under one `--root`.
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    pub(crate) fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Locks the container and loads its state.
    pub fn open(&self, id: &str) -> Result<Locked, ContainerError> {
        crate::spec::validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound { id: id.into() }.into());
        }
        // Only a directory removed since the check above is "not found": running out of
        // descriptors (EMFILE) must not read as a missing container.
        let lock = DirLock::acquire(&dir).map_err(|e| match e {
            StateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                StateError::NotFound { id: id.into() }
            }
            other => other,
        })?;
        // A concurrent delete may have removed it while we waited.
        let state = state::read_state(&dir, id)?;
        Ok(Locked { dir, state, _lock: lock })
    }

    pub fn status(&self, locked: &Locked) -> Status {
        status_of(&locked.dir, &locked.state)
    }

    pub fn state(&self, id: &str) -> Result<StateView, ContainerError> {
        let dir = self.dir(id);
        crate::spec::validate_id(id)?;
        let st = state::read_state(&dir, id)?;
        Ok(view(&st, status_of(&dir, &st)))
    }

    pub fn list(&self) -> Result<Vec<StateView>, ContainerError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ContainerError::Io { path: self.root.clone(), source: e }),
        };
        let mut out: Vec<StateView> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().to_string_lossy().into_owned();
                let st = state::read_state(&e.path(), &id).ok()?;
                Some(view(&st, status_of(&e.path(), &st)))
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    pub fn create(&self, opts: &CreateOptions) -> Result<i32, ContainerError> {
        crate::spec::validate_id(&opts.id)?;
        self.create_from(opts, Bundle::load(&opts.bundle)?)
    }

    /// `create` for a bundle the caller has loaded already (`opts.bundle` is not read again).
    pub fn create_from(&self, opts: &CreateOptions, bundle: Bundle) -> Result<i32, ContainerError> {
        let t0 = Instant::now();
        crate::spec::validate_id(&opts.id)?;
        let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        if terminal && opts.console.is_none() {
            return Err(ContainerError::NoConsoleSocket { id: opts.id.clone() });
        }
        let (lock, mut guard, st) = self.register(&opts.id, &bundle)?;
        log::debug!("create {}: config and state in {:?}", opts.id, t0.elapsed());
        let pid = self.build(opts, &bundle, st, &mut guard)?;
        log::debug!("create {}: ready in {:?}", opts.id, t0.elapsed());
        guard.armed = false;
        drop(lock);
        Ok(pid)
    }

    /// The first step of create and restore: the container's state directory, locked, with its
    /// initial state (pid 0: creating) and a guard that removes everything made on error.
    pub(crate) fn register(&self, id: &str, bundle: &Bundle) -> Result<(DirLock, CreateGuard, State), ContainerError> {
        let cgroup_path = bundle.spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let cgroup = Cgroup::resolve(cgroup_path.as_deref(), id)?;
        // Its processes are not ours: a failed create would kill them with the cgroup.
        if let Some(path) = cgroup.occupied() {
            return Err(ContainerError::CgroupInUse { id: id.into(), path });
        }
        let mut private = std::fs::DirBuilder::new();
        private.mode(state::STATE_DIR_MODE);
        private.recursive(true).create(&self.root).map_err(io_err(&self.root))?;
        let dir = self.dir(id);
        match private.recursive(false).create(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Io { path: dir, source: e })
            }
            _ => {}
        }
        // Ours only while it has no state: a directory another create made (or took over) has.
        let lock = lock_abandoned(&dir).ok_or_else(|| StateError::Exists { id: id.to_string() })?;
        failpoint("create.state-dir-claimed");
        let guard = CreateGuard { dir: dir.clone(), cgroup: None, init: None, netdevs: None, armed: true };
        let st = State {
            id: id.to_string(),
            pid: 0,
            pid_start_time: 0,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::rfc3339_now(),
            owner: String::new(),
            annotations: bundle.spec.annotations().clone().unwrap_or_default().into_iter().collect(),
            cgroup: Some(cgroup),
            config: bundle.spec.clone(),
        };
        state::write_state(&dir, &st)?;
        failpoint("create.state-recorded");
        Ok((lock, guard, st))
    }

    /// The part of create that can leave things behind: the guard undoes it on error.
    fn build(
        &self,
        opts: &CreateOptions,
        bundle: &Bundle,
        mut st: State,
        guard: &mut CreateGuard,
    ) -> Result<i32, ContainerError> {
        let dir = guard.dir.clone();
        let cgroup = st.cgroup.clone().expect("set by create");
        let fifo = dir.join(state::EXEC_FIFO);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .map_err(|e| ContainerError::Io { path: fifo.clone(), source: e.into() })?;
        // The init keeps the read end; `start` opens the write end.
        let fifo_rd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&fifo)
            .map_err(io_err(&fifo))?
            .into();
        let console = connect_console(opts.console.as_ref())?;
        // Built here, privileged and on the host, and attached by the init inside its namespace.
        let rootfs_mount = bundle
            .overlay
            .as_ref()
            .map(|o| o.detached_mount(crate::spec::IdMaps::of_spec(&bundle.spec).as_ref()))
            .transpose()
            .map_err(SpecError::from)?;
        let memory_merge = crate::memory_merge::requested(&bundle.spec)?;
        if memory_merge {
            crate::memory_merge::warn_if_ksmd_stopped(&opts.id);
        }
        let config = InitConfig {
            spec: bundle.spec.clone(),
            namespaces: NamespacePlan::for_spec(&bundle.spec),
            create: Some(CreateSetup {
                rootfs: bundle.rootfs.clone(),
                bundle: bundle.dir.clone(),
                exec_fifo_fd: fifo_rd.as_raw_fd(),
                no_pivot: opts.no_pivot,
                no_new_keyring: opts.no_new_keyring,
                rootfs_mount_fd: rootfs_mount.as_ref().map(|m| m.as_raw_fd()),
            }),
            cgroup: Some(cgroup.clone()),
            cgroup_ready: false,
            console_fd: console.as_ref().map(|c| c.as_raw_fd()),
            preserve_fds: opts.preserve_fds,
            mempolicy: MemPolicy::from_spec(&bundle.spec)?,
            // runtime-spec: execCPUAffinity "is not applicable to the container's init process"
            // (runc agrees); `exec` takes it from the container's process (see `exec`).
            affinity: ExecAffinity::default(),
            memory_merge,
        };
        // The init starts and makes its namespaces while we build the cgroup.
        guard.cgroup = Some(cgroup.clone());
        let init = guard.init.insert(InitProcess::spawn(config)?);
        drop(console);
        drop(fifo_rd);
        drop(rootfs_mount);
        log::debug!("create {}: init spawned", opts.id);
        failpoint("create.init-spawned");
        prepare_cgroup(&cgroup, &bundle.spec)?;
        failpoint("create.cgroup-made");
        init.cgroup_ready()?;
        log::debug!("create {}: cgroup made", opts.id);
        // The network namespace exists once the container process does: interfaces move in
        // then, before the hooks run, and the guard puts them back if create fails later.
        let net_devices = crate::netdev::requested(&bundle.spec);
        let netdevs = &mut guard.netdevs;
        let move_devices = |pid| {
            if !net_devices.is_empty() {
                netdevs.insert(crate::netdev::NetDevices::of_pid(pid)?).move_all(&net_devices)?;
            }
            Ok(())
        };
        let pid = init.wait_for_child_ready(&bundle.spec, move_devices, |pid| {
            st.pid = pid;
            st.pid_start_time = crate::sys::process_start_time(pid).unwrap_or(0);
            // Hooks run with the pid recorded, so `state` answers during them.
            let _ = state::write_state(&dir, &st);
            hook_state(&st, Status::Creating, pid)
        })?;
        failpoint("create.init-ready");
        st.pid = pid;
        st.pid_start_time = crate::sys::process_start_time(pid).map_err(io_err(Path::new("/proc")))?;
        state::write_state(&dir, &st)?;
        failpoint("create.state-written");
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    }

    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.open(id)?;
        match self.status(&c) {
            s if s.can_start() => {}
            Status::Stopped => return Err(ContainerError::StartStopped { id: id.into() }),
            _ => return Err(ContainerError::StartRunning { id: id.into() }),
        }
        log::debug!("start {id}: begin");
        release_init(&c)?;
        log::debug!("start {id}: released");
        failpoint("start.fifo-removed");
        let hook_json = hook_state(&c.state, Status::Running, c.state.pid);
        if let Err(e) = hooks::run_all(HookKind::Poststart, &c.state.config, &hook_json) {
            log::warn!("{e}");
        }
        Ok(())
    }

    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<(), ContainerError> {
        let c = self.open(id)?;
        let status = self.status(&c);
        if all {
            if let Some(cg) = &c.state.cgroup {
                cg.signal_all(sig as i32)?;
                return Ok(());
            }
        }
        if !status.can_kill() || !c.state.init_alive() {
            return Err(ContainerError::NotRunning { id: id.into() });
        }
        kill(Pid::from_raw(c.state.pid), sig).map_err(|source| ContainerError::Signal { id: id.into(), source })
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let c = match self.open(id) {
            Err(ContainerError::State(StateError::NotFound { .. })) if self.remove_abandoned(id) => return Ok(()),
            opened => opened?,
        };
        self.delete_locked(&c, force)
    }

    /// `delete` of a container whose lock the caller holds (and drops after: the directory is
    /// gone by then).
    pub(crate) fn delete_locked(&self, c: &Locked, force: bool) -> Result<(), ContainerError> {
        let id = c.state.id.as_str();
        log::debug!("delete {id}: begin");
        let status = self.status(c);
        if !force && !status.can_delete() {
            return Err(ContainerError::DeleteNotStopped { id: id.into(), status });
        }
        // pid 0 is a create that never got as far as an init (kill(0) would
        // hit our own process group); a dead or recycled pid is left alone.
        if c.state.init_alive() {
            let _ = kill(Pid::from_raw(c.state.pid), Signal::SIGKILL);
        }
        // When the init of its own pid namespace is dead, the kernel has
        // killed the namespace's other processes already. Otherwise the
        // processes that outlived the init go too; a frozen cgroup must thaw
        // for SIGKILL to land.
        let own_pid_ns = crate::spec::namespace(&c.state.config, oci_spec::runtime::LinuxNamespaceType::Pid)
            .is_some_and(|ns| ns.path().is_none());
        if let (Some(cg), false) = (&c.state.cgroup, own_pid_ns && status == Status::Stopped) {
            if !cg.pids().unwrap_or_default().is_empty() {
                cg.signal_all(libc::SIGKILL)?;
                let _ = cg.thaw();
            }
        }
        wait_gone(&c.state, Duration::from_secs(10));
        log::debug!("delete {id}: processes gone");
        failpoint("delete.processes-killed");
        if let Some(cg) = &c.state.cgroup {
            cg.destroy()?;
        }
        log::debug!("delete {id}: cgroup removed");
        failpoint("delete.cgroup-removed");
        // Every container that got as far as an init gets its poststop hooks.
        if c.state.pid > 0 {
            let json = hook_state(&c.state, Status::Stopped, 0);
            if let Err(e) = hooks::run_all(HookKind::Poststop, &c.state.config, &json) {
                log::warn!("{e}");
            }
        }
        failpoint("delete.poststop-run");
        // The state goes first: a delete that dies after it leaves an abandoned directory (see
        // `lock_abandoned`), never a container with half its files.
        let state_file = c.dir.join(state::STATE_FILE);
        std::fs::remove_file(&state_file).map_err(io_err(&state_file))?;
        failpoint("delete.state-removed");
        std::fs::remove_dir_all(&c.dir).map_err(io_err(&c.dir))
    }

    /// Removes the directory of `id` if it is abandoned (see [`lock_abandoned`]); true if it was.
    fn remove_abandoned(&self, id: &str) -> bool {
        let dir = self.dir(id);
        lock_abandoned(&dir).is_some_and(|_lock| std::fs::remove_dir_all(&dir).is_ok())
    }

    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        self.pause_locked(&self.open(id)?)
    }

    pub(crate) fn pause_locked(&self, c: &Locked) -> Result<(), ContainerError> {
        let status = self.status(c);
        if !status.can_pause() {
            return Err(ContainerError::BadStatus { id: c.state.id.clone(), status, action: "pause" });
        }
        Ok(self.cgroup_of(c)?.freeze()?)
    }

    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        self.resume_locked(&self.open(id)?)
    }

    pub(crate) fn resume_locked(&self, c: &Locked) -> Result<(), ContainerError> {
        let status = self.status(c);
        if !status.can_resume() {
            return Err(ContainerError::BadStatus { id: c.state.id.clone(), status, action: "resume" });
        }
        Ok(self.cgroup_of(c)?.thaw()?)
    }

    /// Changes the resources of a live (created, running or paused) container, as `runc
    /// update`: `r` is written to its cgroup all-or-nothing (see [`Cgroup::update_resources`]),
    /// then merged into the stored config so that `state` and later updates see it.
    pub fn update(&self, id: &str, r: &LinuxResources) -> Result<(), ContainerError> {
        let mut c = self.open(id)?;
        let status = self.status(&c);
        if !status.can_update() {
            return Err(ContainerError::BadStatus { id: id.into(), status, action: "update" });
        }
        self.cgroup_of(&c)?.update_resources(r)?;
        let merged = merge_resources(c.state.config.linux().as_ref().and_then(|l| l.resources().clone()), r)
            .map_err(|source| ContainerError::MergeResources { id: id.into(), source })?;
        let mut linux = c.state.config.linux().clone().unwrap_or_default();
        linux.set_resources(Some(merged));
        c.state.config.set_linux(Some(linux));
        Ok(state::write_state(&c.dir, &c.state)?)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>, ContainerError> {
        let c = self.open(id)?;
        Ok(self.cgroup_of(&c)?.pids()?)
    }

    /// The cgroup of a live (created, running or paused) container. Read under the container's
    /// lock, which is not kept: for watchers that must not block `kill` or `delete`.
    pub fn live_cgroup(&self, id: &str) -> Result<Cgroup, ContainerError> {
        let c = self.open(id)?;
        let status = self.status(&c);
        if !status.can_kill() {
            return Err(ContainerError::NotRunning { id: id.into() });
        }
        Ok(self.cgroup_of(&c)?.clone())
    }

    /// A live container's usage counters (`events --stats`).
    pub fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        Ok(self.live_cgroup(id)?.stats()?)
    }

    fn cgroup_of<'a>(&self, c: &'a Locked) -> Result<&'a Cgroup, ContainerError> {
        c.state.cgroup.as_ref().ok_or(ContainerError::NotRunning { id: c.state.id.clone() })
    }

    /// Starts a new process in a running container; returns its host pid.
    pub fn exec(&self, opts: ExecOptions) -> Result<i32, ContainerError> {
        let c = self.open(&opts.id)?;
        let status = self.status(&c);
        if !status.can_exec() {
            return Err(ContainerError::BadStatus { id: opts.id.clone(), status, action: "exec" });
        }
        if opts.process.terminal().unwrap_or(false) && opts.console.is_none() {
            return Err(ContainerError::NoConsoleSocket { id: opts.id.clone() });
        }
        // The exec'd process joins by setns: it inherits neither the init's
        // memory policy nor its affinity, so it gets both from the config.
        let affinity = ExecAffinity::from_process(&opts.process)?;
        let mempolicy = MemPolicy::from_spec(&c.state.config)?;
        // Nor its KSM flag (an exec'd process is no child of the container's).
        let memory_merge = crate::memory_merge::requested(&c.state.config)?;
        let mut spec = c.state.config.clone();
        spec.set_process(Some(opts.process));
        let console = connect_console(opts.console.as_ref())?;
        let config = InitConfig {
            mempolicy,
            affinity,
            memory_merge,
            namespaces: NamespacePlan::for_exec(&spec, c.state.pid),
            spec: spec.clone(),
            create: None,
            cgroup: c.state.cgroup.clone(),
            cgroup_ready: true,
            console_fd: console.as_ref().map(|c| c.as_raw_fd()),
            preserve_fds: opts.preserve_fds,
        };
        let mut init = InitProcess::spawn(config)?;
        drop(console);
        failpoint("exec.init-spawned");
        let pid = match init.wait_for_child_ready(&spec, |_| Ok(()), |_| String::new()) {
            Ok(pid) => pid,
            Err(e) => {
                init.kill();
                return Err(e.into());
            }
        };
        failpoint("exec.ready");
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        Ok(pid)
    }
}

fn view(st: &State, status: Status) -> StateView {
    StateView {
        oci_version: OCI_VERSION.into(),
        id: st.id.clone(),
        pid: if status == Status::Stopped { 0 } else { st.pid },
        status,
        bundle: st.bundle.clone(),
        rootfs: st.rootfs.clone(),
        created: st.created.clone(),
        owner: st.owner.clone(),
        annotations: st.annotations.clone(),
    }
}

/// `update` over `old`, field by field at any depth (what `update` leaves unset keeps its old
/// value; lists are replaced whole), through JSON as the OCI types have no merge of their own.
fn merge_resources(old: Option<LinuxResources>, update: &LinuxResources) -> Result<LinuxResources, serde_json::Error> {
    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (key, value) in from {
                    merge(into.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (_, serde_json::Value::Null) => {}
            (into, from) => *into = from,
        }
    }
    let mut merged = serde_json::to_value(old.unwrap_or_default())?;
    merge(&mut merged, serde_json::to_value(update)?);
    serde_json::from_value(merged)
}

/// The lock of `dir` when it holds no state: a create killed before it wrote any (or a delete
/// killed after it removed it). Nothing else of a container is made before its state is
/// written, so such a directory is free for a new create and for delete to remove.
fn lock_abandoned(dir: &Path) -> Option<DirLock> {
    let lock = DirLock::acquire(dir).ok()?;
    // A delete that held the lock before us may have removed the directory meanwhile.
    (dir.is_dir() && !dir.join(state::STATE_FILE).exists()).then_some(lock)
}

/// Derives the status from what is on the host right now.
fn status_of(dir: &Path, st: &State) -> Status {
    if st.pid == 0 {
        return Status::Creating;
    }
    if !st.init_alive() {
        return Status::Stopped;
    }
    if init_waits_on(st.pid, &dir.join(state::EXEC_FIFO)) {
        return Status::Created;
    }
    match &st.cgroup {
        Some(cg) if cg.is_frozen().unwrap_or(false) => Status::Paused,
        _ => Status::Running,
    }
}

/// Whether the init still holds the exec fifo open, waiting for `start`. The fifo alone does
/// not say so: a `start` killed after its write and before it removed the fifo leaves it.
fn init_waits_on(pid: i32, fifo: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(fifo).map(|m| (m.dev(), m.ino())) else { return false };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == want))
}

/// Writes the byte the init waits for into the exec fifo; from then on it
/// runs. No reader (ENXIO) means the init is gone.
fn release_init(c: &Locked) -> Result<(), ContainerError> {
    let path = c.dir.join(state::EXEC_FIFO);
    let mut fifo =
        match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                return Err(ContainerError::StartStopped { id: c.state.id.clone() })
            }
            Err(e) => return Err(ContainerError::Io { path, source: e }),
        };
    std::io::Write::write_all(&mut fifo, &[0]).map_err(io_err(&path))?;
    failpoint("start.released");
    std::fs::remove_file(&path).map_err(io_err(&path))
}

use std::os::unix::fs::OpenOptionsExt;

fn wait_gone(st: &State, timeout: Duration) {
    let until = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    while st.init_alive() && Instant::now() < until {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

pub(crate) fn connect_console(target: Option<&ConsoleTarget>) -> Result<Option<OwnedFd>, ContainerError> {
    match target {
        None => Ok(None),
        Some(ConsoleTarget::Socket(path)) => std::os::unix::net::UnixStream::connect(path)
            .map(|s| Some(s.into()))
            .map_err(|source| ContainerError::ConsoleSocket { path: path.clone(), source }),
        Some(ConsoleTarget::Fd(fd)) => fd
            .try_clone()
            .map(Some)
            .map_err(|source| ContainerError::ConsoleSocket { path: PathBuf::from("(socketpair)"), source }),
    }
}

/// Written whole, so readers never see a partial pid; readable by all, as runc's.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<(), ContainerError> {
    let path = std::path::absolute(path).map_err(io_err(path))?;
    crate::atomic_file::write(&path, pid.to_string().as_bytes(), 0o644).map_err(io_err(&path))
}

/// Makes the container's cgroup with its device rules and resources.
pub(crate) fn prepare_cgroup(cgroup: &Cgroup, spec: &Spec) -> Result<(), ContainerError> {
    cgroup.create()?;
    cgroup.apply_devices(&device_rules(spec))?;
    if let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        cgroup.apply_resources(r)?;
    }
    Ok(())
}

/// The device cgroup rules: config.json's own (deny-all if it has none),
/// then access to the devices every container gets and to its ptys.
fn device_rules(spec: &Spec) -> Vec<LinuxDeviceCgroup> {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder as B, LinuxDeviceType as T};
    let rule = |allow: bool, typ: T, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut b = B::default().allow(allow).typ(typ).access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        if let Some(m) = minor {
            b = b.minor(m);
        }
        b.build().expect("all fields set")
    };
    let own = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone());
    let mut rules = own.unwrap_or_else(|| vec![rule(false, T::A, None, None, "rwm")]);
    for (_, major, minor) in crate::rootfs::DEFAULT_DEVICES {
        rules.push(rule(true, T::C, Some(major as i64), Some(minor as i64), "rwm"));
    }
    for d in spec.linux().as_ref().and_then(|l| l.devices().clone()).unwrap_or_default() {
        // A FIFO is a plain file to the device controller: it needs no rule (and `p` is none).
        let typ = match d.typ() {
            T::P => continue,
            T::U => T::C,
            typ => typ,
        };
        rules.push(rule(true, typ, Some(d.major()), Some(d.minor()), "rwm"));
    }
    rules.push(rule(true, T::C, Some(5), Some(2), "rwm")); // /dev/ptmx
    rules.push(rule(true, T::C, Some(136), None, "rwm")); // /dev/pts/*
    rules.push(rule(true, T::C, Some(5), Some(1), "rwm")); // /dev/console
    rules
}

/// Undoes a half-made container when create or restore fails at any step.
pub(crate) struct CreateGuard {
    dir: PathBuf,
    pub(crate) cgroup: Option<Cgroup>,
    init: Option<InitProcess>,
    /// Interfaces moved into the container (`linux.netDevices`), to move back.
    netdevs: Option<crate::netdev::NetDevices>,
    pub(crate) armed: bool,
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(init) = &mut self.init {
            init.kill();
        }
        // The namespace outlives the killed init: `netdevs` holds it open.
        if let Some(devs) = &mut self.netdevs {
            devs.undo();
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.signal_all(libc::SIGKILL);
            let _ = cg.destroy();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
