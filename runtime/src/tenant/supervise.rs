//! A tenant's supervisor: one small process per running tenant (as conmon is per container),
//! the parent and child subreaper of the tenant's init. It creates and starts the container,
//! waits for its init to end, and starts it again as the restart policy says, with back-off
//! (1 s doubling to 30 s; back to 1 s after a run of 10 s or more). It holds
//! `supervisor.lock` while it lives, so that a tenant has one supervisor at most and
//! `stop` can tell whether one runs. It ends when the tenant's record says it should not
//! run (`stop`, `destroy`), or when the policy does not restart it; it then deletes the
//! container. Killed itself, it leaves the container running: `start` (or `boot`) gives
//! it a new supervisor, which adopts the running container. It also serves the tenant's
//! console (`console`).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::console::{Relay, Wake};
use super::guard;
use super::net::Call;
use super::{Restart, TenantError, Tenants};
use crate::container::{ConsoleTarget, ContainerError, CreateOptions, Runtime};
use crate::state::{StateError, Status};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a supervisor wakes to reap orphans that came to it while its tenant runs (rare:
/// the tenant's own orphans go to its init). Rarely, so that 1000 idle supervisors stay idle.
const ORPHAN_REAP_MS: i32 = 10_000;
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
/// ends). The caller has pointed fd 1 at the tenant's log: the console's output goes there.
/// `console` is the pty master of a running container it adopts, when the caller holds it
/// (a tenant that moved here: its restore made a new pty).
pub fn supervise(
    tenants: &Tenants,
    rt: &Runtime,
    name: &str,
    console: Option<OwnedFd>,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), TenantError> {
    let lock = Flock::lock(lock_file(tenants, name)?, FlockArg::LockExclusiveNonblock)
        .map_err(|_| TenantError::Supervisor { name: name.to_string(), message: "is already running".into() })?;
    // Whatever the init leaves orphaned comes to us to be reaped.
    crate::sys::set_child_subreaper().map_err(super::io_err(Path::new("PR_SET_CHILD_SUBREAPER")))?;
    let log = std::io::stdout().as_fd().try_clone_to_owned().map_err(super::io_err(Path::new("(stdout)")))?;
    let mut relay = Relay::open(&tenants.console_socket(name), log)?;
    if console.is_some() {
        relay.set_master(console);
    }
    let mut ready = Some(ready);
    let mut status = SupervisorStatus { restarts: read_status(tenants, name).restarts, ..Default::default() };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match run_once(tenants, rt, name, &mut relay) {
            Ok(run) => {
                if let Some(r) = ready.take() {
                    r(Ok(()));
                }
                (status.pid, status.started) = (run.pid(), now());
                write_status(tenants, name, &status)?;
                status.last_exit = run.wait(&mut relay);
                if let Err(e) = release_network(tenants, name, &run.netns_path()) {
                    log::warn!("tenant {name}: {e}");
                }
                log::info!("tenant {name}: init {} ended: {:?}", run.pid(), status.last_exit);
                drop(run);
                status.pid = 0;
                write_status(tenants, name, &status)?;
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
        if !sleep_while_wanted(tenants, name, backoff, &mut relay) {
            break;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        status.restarts += 1;
    }
    remove_container(rt, name)?;
    drop(lock);
    Ok(())
}

/// Sleeps `d` (serving the console) unless the tenant stops being wanted first; returns
/// whether it still is.
fn sleep_while_wanted(tenants: &Tenants, name: &str, d: Duration, relay: &mut Relay) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        relay.serve(None, 100);
        if !tenants.get(name).is_ok_and(|t| t.want_running) {
            return false;
        }
    }
    true
}

/// A running container: started by us (our child) or found running (adopted), with its
/// network namespace held open while it is attached to the tenant network.
struct Run {
    pid: i32,
    ours: bool,
    netns: Option<OwnedFd>,
}

impl Run {
    fn pid(&self) -> i32 {
        self.pid
    }

    /// Serves the console until the init ends: its exit code (128 + signal when killed),
    /// None for an adopted one, whose status goes to its original parent. Orphans that come
    /// to us (the subreaper) are reaped on the way.
    fn wait(&self, relay: &mut Relay) -> Option<i32> {
        let pidfd = crate::sys::pidfd_open(self.pid).ok();
        loop {
            if let Some(code) = self.reap(false) {
                return Some(code);
            }
            let Some(fd) = &pidfd else { break };
            if let Wake::Done = relay.serve(Some(fd.as_fd()), ORPHAN_REAP_MS) {
                break;
            }
        }
        relay.set_master(None);
        if self.ours {
            return self.reap(true);
        }
        None
    }

    /// Reaps what has ended (waiting when `block`) until the init is among them: its exit
    /// code, or None while it runs (or is not ours).
    fn reap(&self, block: bool) -> Option<i32> {
        use nix::sys::wait::WaitPidFlag;
        let flags = (!block).then_some(WaitPidFlag::WNOHANG);
        loop {
            match waitpid(Pid::from_raw(-1), flags) {
                Ok(WaitStatus::Exited(p, code)) if p.as_raw() == self.pid => return Some(code),
                Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == self.pid => return Some(128 + sig as i32),
                Ok(WaitStatus::StillAlive) => return None,
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return None,
            }
        }
    }

    /// The held namespace as a path the CNI plugins (our children) can open.
    fn netns_path(&self) -> String {
        self.netns.as_ref().map_or(String::new(), |fd| format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()))
    }
}

fn run_once(tenants: &Tenants, rt: &Runtime, name: &str, relay: &mut Relay) -> Result<Run, TenantError> {
    match rt.state(name) {
        Ok(s) if matches!(s.status, Status::Running | Status::Paused) => {
            let mut run = Run { pid: s.pid, ours: false, netns: None };
            attach_network(tenants, name, &mut run, true)?;
            return Ok(run);
        }
        Ok(_) => rt.delete(name, true)?,
        Err(ContainerError::State(StateError::NotFound { .. })) => {}
        Err(e) => return Err(e.into()),
    }
    // The pty's master comes back over a socketpair, from the init as it sets up.
    let (ours, theirs) = if tenants.has_terminal(name)? {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(super::io_err(Path::new("socketpair")))?;
        (Some(ours), Some(OwnedFd::from(theirs)))
    } else {
        (None, None)
    };
    let opts = CreateOptions {
        id: name.to_string(),
        bundle: tenants.bundle(name),
        pid_file: None,
        console: theirs.map(ConsoleTarget::Fd),
        no_pivot: false,
        no_new_keyring: false,
        preserve_fds: 0,
    };
    let pid = rt.create(&opts)?;
    // Closes our copy of the init's end: only the init's is left.
    drop(opts);
    if let Some(ours) = &ours {
        match crate::console::receive_master(ours.as_raw_fd()) {
            Ok(m) => relay.set_master(Some(m)),
            Err(e) => {
                let _ = rt.delete(name, true);
                return Err(TenantError::Supervisor { name: name.to_string(), message: e.to_string() });
            }
        }
    }
    let mut run = Run { pid, ours: true, netns: None };
    let attached = attach_network(tenants, name, &mut run, false);
    if let Err(e) = attached.and_then(|()| rt.start(name).map_err(Into::into)) {
        let _ = release_network(tenants, name, &run.netns_path());
        let _ = rt.delete(name, true);
        return Err(e);
    }
    Ok(run)
}

/// Puts a networked tenant's container on the tenant network (CNI ADD), unless `adopted`
/// finds it there already; a DEL a killed supervisor missed is done first.
fn attach_network(tenants: &Tenants, name: &str, run: &mut Run, adopted: bool) -> Result<(), TenantError> {
    let list_path = tenants.network_list(name);
    if !list_path.exists() {
        return Ok(());
    }
    let ns = format!("/proc/{}/ns/net", run.pid);
    run.netns = Some(File::open(&ns).map_err(super::io_err(Path::new(&ns)))?.into());
    if adopted && tenants.network_added(name).exists() {
        return Ok(());
    }
    release_network(tenants, name, "")?;
    add_network(tenants, name, &run.netns_path())
}

/// CNI ADD of a networked tenant's container, whose network namespace is at `netns`, with
/// its address and MAC once it has them; its port admitted to the guard and the result
/// recorded for the DEL. All or nothing.
pub fn add_network(tenants: &Tenants, name: &str, netns: &str) -> Result<(), TenantError> {
    let list_path = tenants.network_list(name);
    if !list_path.exists() {
        return Ok(());
    }
    let added = tenants.network_added(name);
    let list = read_json(&list_path)?;
    let t = tenants.get(name)?;
    let call = Call { list: &list, id: name, netns, ip: t.ip, mac: t.mac.as_deref(), publish: &t.publish };
    let result = call.add()?;
    let ready = match super::net::masquerade_of(&list) {
        Some(subnet) => super::net::ensure_masquerade(subnet),
        None => Ok(()),
    };
    if let Err(e) = ready.and_then(|()| guard_port(tenants, &list, &result, true)) {
        let _ = call.del(Some(&result));
        return Err(e);
    }
    let text = serde_json::to_vec(&result).expect("a result serializes");
    crate::atomic_file::write(&added, &text, 0o600).map_err(super::io_err(&added))?;
    if t.ip.is_none() || t.mac.is_none() {
        // The first address and MAC become the tenant's: asked for again at every start.
        let mut t = tenants.get(name)?;
        t.ip = t.ip.or_else(|| super::net::address(&result));
        t.mac = t.mac.or_else(|| super::net::mac(&result));
        tenants.save(&t)?;
    }
    Ok(())
}

/// CNI DEL of the last ADD, if one is recorded; `netns` "" once the namespace is gone.
pub fn release_network(tenants: &Tenants, name: &str, netns: &str) -> Result<(), TenantError> {
    let added_path = tenants.network_added(name);
    if !added_path.exists() {
        return Ok(());
    }
    let list = read_json(&tenants.network_list(name))?;
    let added = read_json(&added_path)?;
    let t = tenants.get(name)?;
    // The DEL is done even when the guard could not forget the port: its veth goes anyway.
    let unguarded = guard_port(tenants, &list, &added, false);
    Call { list: &list, id: name, netns, ip: t.ip, mac: t.mac.as_deref(), publish: &t.publish }.del(Some(&added))?;
    unguarded?;
    std::fs::remove_file(&added_path).map_err(super::io_err(&added_path))
}

/// Admits (or withdraws) the tenant's port of an ADD's `result` to its bridge's anti-spoofing
/// guard (see `guard`). A port the result does not name is refused: no unguarded tenant.
fn guard_port(
    tenants: &Tenants,
    list: &serde_json::Value,
    result: &serde_json::Value,
    admit: bool,
) -> Result<(), TenantError> {
    let Some(bridge) = super::net::bridge_of(list) else {
        return Ok(());
    };
    let Some(port) = guard::Port::from_result(result, bridge) else {
        if !admit {
            return Ok(());
        }
        let message = format!("no host-side interface, MAC and address in the bridge plugin's result: {result}");
        return Err(TenantError::Network { plugin: "nft".into(), command: "admit".into(), message });
    };
    let _lock = tenants.lock()?;
    if admit {
        guard::admit(bridge, &port)
    } else {
        guard::withdraw(bridge, &port)
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, TenantError> {
    let text = std::fs::read(path).map_err(super::io_err(path))?;
    serde_json::from_slice(&text).map_err(|source| TenantError::Record { path: path.to_path_buf(), source })
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
