//! A tenant's supervisor: one small process per running tenant (as conmon is per container),
//! the parent and child subreaper of the tenant's init. It creates and starts the container,
//! waits for its init to end, and starts it again as the restart policy says, with back-off
//! (1 s doubling to 30 s; back to 1 s after a run of 10 s or more). It holds
//! `supervisor.lock` while it lives, so that a tenant has one supervisor at most and
//! `stop` can tell whether one runs. It ends when the tenant's record says it should not
//! run (`stop`, `destroy`), or when the policy does not restart it; it then deletes the
//! container. Killed itself, it leaves the container running: `start` (or `boot`) gives
//! it a new supervisor, which adopts the running container.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{Restart, TenantError, Tenants};
use crate::container::{ContainerError, CreateOptions, Runtime};
use crate::state::{StateError, Status};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy: the back-off starts over.
const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// What the supervisor reports in `status.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SupervisorStatus {
    /// The container's init, 0 while none runs.
    pub pid: i32,
    /// Seconds since the epoch of its last start.
    pub started: u64,
    /// Starts after the first.
    pub restarts: u32,
    /// How the last init ended: its exit code, 128 + signal, or None when not seen.
    pub last_exit: Option<i32>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn lock_file(tenants: &Tenants, name: &str) -> Result<File, TenantError> {
    let path = tenants.dir(name).join("supervisor.lock");
    File::options().create(true).append(true).open(&path).map_err(super::io_err(&path))
}

/// Whether a supervisor of `name` is alive (holds its lock).
pub fn is_supervised(tenants: &Tenants, name: &str) -> Result<bool, TenantError> {
    Ok(Flock::lock(lock_file(tenants, name)?, FlockArg::LockExclusiveNonblock).is_err())
}

pub fn read_status(tenants: &Tenants, name: &str) -> SupervisorStatus {
    let path = tenants.dir(name).join("status.json");
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

fn write_status(tenants: &Tenants, name: &str, s: &SupervisorStatus) -> Result<(), TenantError> {
    let path = tenants.dir(name).join("status.json");
    let text = serde_json::to_vec(s).expect("status serializes");
    crate::atomic_file::write(&path, &text, 0o644).map_err(super::io_err(&path))
}

/// Runs the supervisor of `name` until the tenant should stop. `ready` is told once: Ok when
/// the container first runs, or the error that kept it from starting (the supervisor then
/// ends). The caller has pointed fds 0-2 where the tenant's stdio goes.
pub fn supervise(
    tenants: &Tenants,
    rt: &Runtime,
    name: &str,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), TenantError> {
    let lock = Flock::lock(lock_file(tenants, name)?, FlockArg::LockExclusiveNonblock)
        .map_err(|_| TenantError::Supervisor { name: name.to_string(), message: "is already running".into() })?;
    // Whatever the init leaves orphaned comes to us to be reaped.
    crate::sys::set_child_subreaper().map_err(super::io_err(Path::new("PR_SET_CHILD_SUBREAPER")))?;
    let mut ready = Some(ready);
    let mut status = SupervisorStatus { restarts: read_status(tenants, name).restarts, ..Default::default() };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match run_once(tenants, rt, name) {
            Ok(run) => {
                if let Some(r) = ready.take() {
                    r(Ok(()));
                }
                (status.pid, status.started) = (run.pid(), now());
                write_status(tenants, name, &status)?;
                status.last_exit = run.wait();
                status.pid = 0;
                write_status(tenants, name, &status)?;
                log::info!("tenant {name}: init {} ended: {:?}", run.pid(), status.last_exit);
            }
            Err(e) => match ready.take() {
                Some(r) => {
                    r(Err(e.to_string()));
                    let _ = remove_container(rt, name);
                    return Err(e);
                }
                None => log::warn!("tenant {name}: restart failed: {e}"),
            },
        }
        let t = tenants.get(name)?;
        let again = match t.restart {
            Restart::Never => false,
            Restart::OnFailure => status.last_exit != Some(0),
            Restart::Always => true,
        };
        if !t.want_running || !again {
            break;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        if !sleep_while_wanted(tenants, name, backoff) {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        status.restarts += 1;
    }
    remove_container(rt, name)?;
    drop(lock);
    Ok(())
}

/// Sleeps `d` unless the tenant stops being wanted first; returns whether it still is.
fn sleep_while_wanted(tenants: &Tenants, name: &str, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        if !tenants.get(name).is_ok_and(|t| t.want_running) {
            return false;
        }
    }
    true
}

/// A running container: started by us (our child) or found running (adopted).
enum Run {
    Ours(i32),
    Adopted(i32),
}

impl Run {
    fn pid(&self) -> i32 {
        match self {
            Run::Ours(p) | Run::Adopted(p) => *p,
        }
    }

    /// Waits for the init to end: its exit code (128 + signal when killed), None for an
    /// adopted one, whose status goes to its original parent.
    fn wait(&self) -> Option<i32> {
        match self {
            Run::Ours(pid) => loop {
                match waitpid(Pid::from_raw(-1), None) {
                    Ok(WaitStatus::Exited(p, code)) if p.as_raw() == *pid => return Some(code),
                    Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == *pid => return Some(128 + sig as i32),
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return None,
                }
            },
            Run::Adopted(pid) => {
                if let Ok(fd) = crate::sys::pidfd_open(*pid) {
                    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd, its count 1; -1: no timeout.
                    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
                }
                None
            }
        }
    }
}

fn run_once(tenants: &Tenants, rt: &Runtime, name: &str) -> Result<Run, TenantError> {
    match rt.state(name) {
        Ok(s) if matches!(s.status, Status::Running | Status::Paused) => return Ok(Run::Adopted(s.pid)),
        Ok(_) => rt.delete(name, true)?,
        Err(ContainerError::State(StateError::NotFound { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    let opts = CreateOptions {
        id: name.to_string(),
        bundle: tenants.bundle(name),
        pid_file: None,
        console: None,
        no_pivot: false,
        no_new_keyring: false,
        preserve_fds: 0,
    };
    let pid = rt.create(&opts)?;
    if let Err(e) = rt.start(name) {
        let _ = rt.delete(name, true);
        return Err(e.into());
    }
    Ok(Run::Ours(pid))
}

fn remove_container(rt: &Runtime, name: &str) -> Result<(), TenantError> {
    match rt.delete(name, true) {
        Ok(()) | Err(ContainerError::State(StateError::NotFound { .. })) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Stops a tenant whose record no longer wants it running: SIGTERM to its init, SIGKILL to
/// all its processes after `timeout`, then waits for its supervisor to end (it deletes the
/// container); without a supervisor, deletes the container itself.
pub fn stop(tenants: &Tenants, rt: &Runtime, name: &str, timeout: Duration) -> Result<(), TenantError> {
    if !is_supervised(tenants, name)? {
        return remove_container(rt, name);
    }
    let _ = rt.kill(name, Signal::SIGTERM, false);
    if wait_unsupervised(tenants, name, timeout)? {
        return Ok(());
    }
    let _ = rt.kill(name, Signal::SIGKILL, true);
    if wait_unsupervised(tenants, name, Duration::from_secs(10))? {
        return Ok(());
    }
    Err(TenantError::Supervisor { name: name.to_string(), message: "its supervisor did not end".into() })
}

fn wait_unsupervised(tenants: &Tenants, name: &str, d: Duration) -> Result<bool, TenantError> {
    let end = Instant::now() + d;
    loop {
        if !is_supervised(tenants, name)? {
            return Ok(true);
        }
        if Instant::now() >= end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
