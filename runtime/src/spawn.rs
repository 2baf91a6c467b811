//! Starting `warren init` and driving the sync protocol from the runtime's side.
//!
//! A process of the container that opens /proc/PID/exe of the init (or of
//! itself, after exec'ing `#!/proc/self/exe`) must never be able to write
//! the `warren` binary on the host (the CVE-2019-5736 class). The init is
//! exec'd through a read-only bind of the binary made in a private mount
//! namespace of the child: writes through that exe fail with EROFS. Where
//! the container wants its mounts to propagate back to the host
//! (rootfsPropagation shared), that namespace is in the way, so the init
//! runs from a sealed memfd copy instead (slower: a copy of the binary).
//! Spawning is fork+exec through std's Command, safe from a threaded caller.

use crate::hooks::{self, HookKind};
use crate::init::SYNC_FD_ENV;
use crate::sync::InitConfig;
use crate::sync::{Channel, FromInit, SyncError};
use oci_spec::runtime::Spec;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("copy runtime binary into a sealed memfd: {source}")]
    SelfCopy { source: std::io::Error },
    #[error("start container init: {source}")]
    Spawn { source: std::io::Error },
    #[error("write {file} of pid {pid}: {source}")]
    IdMap { pid: i32, file: &'static str, source: std::io::Error },
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    NetDev(#[from] crate::netdev::NetDevError),
    #[error("container init did not report its pid")]
    NoPid,
}

/// A running stage 1 of the init and our end of its channel.
pub struct InitProcess {
    child: Child,
    chan: Channel,
    /// Host pid of the container process, once stage 1 has reported it.
    pub pid: Option<i32>,
}

/// How the init's binary is kept out of the container's reach.
enum SealedExe {
    /// Our binary's path, bound read-only in the child's own mount namespace.
    ReadOnlyBind(std::ffi::CString),
    Memfd(OwnedFd),
}

impl SealedExe {
    fn new(spec: &Spec) -> Result<SealedExe, SpawnError> {
        let err = |source| SpawnError::SelfCopy { source };
        let exe = std::fs::read_link("/proc/self/exe").map_err(err)?;
        let propagates_out =
            spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()).is_some_and(|p| p.contains("shared"));
        if propagates_out {
            return crate::sys::sealed_memfd_copy(&exe, c"warren").map(SealedExe::Memfd).map_err(err);
        }
        let path = std::ffi::CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
        Ok(SealedExe::ReadOnlyBind(path))
    }

    fn program(&self) -> std::ffi::OsString {
        match self {
            SealedExe::ReadOnlyBind(p) => std::ffi::OsStr::from_bytes(p.as_bytes()).to_os_string(),
            SealedExe::Memfd(fd) => format!("/proc/self/fd/{}", fd.as_raw_fd()).into(),
        }
    }

    fn bind_path(&self) -> Option<std::ffi::CString> {
        match self {
            SealedExe::ReadOnlyBind(p) => Some(p.clone()),
            SealedExe::Memfd(_) => None,
        }
    }
}

impl InitProcess {
    /// Spawns stage 1 with our stdio (and the fds the caller keeps open for
    /// --preserve-fds and the console socket), and hands it its config.
    pub fn spawn(mut config: InitConfig) -> Result<InitProcess, SpawnError> {
        let exe = SealedExe::new(&config.spec)?;
        if matches!(exe, SealedExe::ReadOnlyBind(_)) && config.namespaces.can_use_early_mount_ns() {
            config.namespaces.mount_ns_made = true;
        }
        let (ours, theirs) = Channel::pair().map_err(|source| SpawnError::Spawn { source })?;
        let fd = theirs.raw_fd();
        let inherit: Vec<i32> = config.inherited_fds().into_iter().chain(std::iter::once(fd)).collect();
        let mut cmd = Command::new(exe.program());
        cmd.arg0("warren").arg("init").env_clear().env(SYNC_FD_ENV, fd.to_string());
        let bind = exe.bind_path();
        // SAFETY: the closure only makes syscalls (fcntl, unshare, mount) on
        // data prepared before the fork; it neither allocates nor locks.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &inherit {
                    crate::sys::clear_cloexec(*fd)?;
                }
                if let Some(path) = &bind {
                    crate::sys::readonly_self_in_new_mount_ns(path)?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| SpawnError::Spawn { source })?;
        drop(theirs);
        drop(exe);
        let mut init = InitProcess { child, chan: ours, pid: None };
        init.chan.send_config(config)?;
        Ok(init)
    }

    /// Tells the init that the cgroup it waits for is in place.
    pub fn cgroup_ready(&mut self) -> Result<(), SpawnError> {
        Ok(self.chan.cgroup_ready()?)
    }

    /// Serves the init's requests until it is ready. `on_pid` is called once the container
    /// process exists in its namespaces, before any hook; `state_for_hooks` is called with
    /// the container pid and returns the state JSON for hooks.
    pub fn wait_for_child_ready(
        &mut self,
        spec: &Spec,
        mut on_pid: impl FnMut(i32) -> Result<(), SpawnError>,
        mut state_for_hooks: impl FnMut(i32) -> String,
    ) -> Result<i32, SpawnError> {
        loop {
            match self.chan.next_request()? {
                FromInit::NeedIdMaps { pid } => {
                    write_id_maps(pid, spec)?;
                    crate::failpoint::failpoint("spawn.id-maps-written");
                    self.chan.id_maps_written()?;
                }
                FromInit::Pid { pid } => {
                    self.pid = Some(pid);
                    on_pid(pid)?;
                }
                FromInit::RunCreateRuntimeHooks => {
                    let state = state_for_hooks(self.pid.ok_or(SpawnError::NoPid)?);
                    hooks::run_all(HookKind::Prestart, spec, &state)?;
                    hooks::run_all(HookKind::CreateRuntime, spec, &state)?;
                    self.chan.hooks_done(state)?;
                }
                FromInit::Ready => break,
                FromInit::Error { message } => return Err(SyncError::Init { message }.into()),
            }
        }
        // Stage 1 exits once it has reported the pid; reap it.
        let _ = self.child.wait();
        self.pid.ok_or(SpawnError::NoPid)
    }

    /// Kills what was started (on a failed create or exec).
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_id_maps(pid: i32, spec: &Spec) -> Result<(), SpawnError> {
    let maps = crate::spec::IdMaps::of_spec(spec).unwrap_or_default();
    let write = |file: &'static str, text: &str| {
        std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|source| SpawnError::IdMap { pid, file, source })
    };
    write("uid_map", &maps.uid_map)?;
    write("gid_map", &maps.gid_map)
}
