//! The shim's one watching thread: it reaps every child (the shim is a subreaper, so the
//! containers' processes come to it) and turns OOM notices of the containers' memory cgroups
//! into TaskOOM events. It sleeps in epoll on a SIGCHLD self-pipe, a control pipe and one
//! descriptor per watched cgroup: a grouped shim watches thousands, and poll(2) would register
//! every one of them again at each child's exit.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use containerd_shim::protos::events::task::TaskOOM;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use warren::cgroups::oom::OomWatcher;

use crate::events::Event;
use crate::tasks::{Exit, Tasks};

enum Control {
    /// Watch a container (id, state root) for OOM kills.
    Watch(String, PathBuf),
    Unwatch(String),
}

/// Handle to the thread.
pub struct Supervisor {
    control: Mutex<Sender<Control>>,
    wake: UnixStream,
}

impl Supervisor {
    /// Installs the SIGCHLD handler and starts the thread. Must run before the shim spawns
    /// anything.
    pub fn start(tasks: Arc<Tasks>) -> std::io::Result<Supervisor> {
        let (sig_r, sig_w) = UnixStream::pair()?;
        sig_r.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(libc::SIGCHLD, sig_w)?;
        let (wake_r, wake) = UnixStream::pair()?;
        wake_r.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let (tx, rx) = channel();
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(&sig_r, EpollEvent::new(EpollFlags::EPOLLIN, SIGCHLD_TOKEN))?;
        epoll.add(&wake_r, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_TOKEN))?;
        let watch = Watch {
            tasks,
            sigchld: sig_r,
            wake: wake_r,
            control: rx,
            epoll,
            oom: HashMap::new(),
            next_token: FIRST_OOM_TOKEN,
        };
        std::thread::Builder::new().name("reaper".into()).stack_size(crate::SMALL_STACK).spawn(move || {
            // Children that exited before the handler was in place.
            watch.reap();
            watch.run()
        })?;
        Ok(Supervisor { control: Mutex::new(tx), wake })
    }

    /// Starts watching; the cgroup is looked up on the thread, off the caller's path (the
    /// container cannot run out of memory before it starts).
    pub fn watch_oom(&self, id: &str, root: &Path) {
        self.send(Control::Watch(id.into(), root.into()));
    }

    pub fn unwatch_oom(&self, id: &str) {
        self.send(Control::Unwatch(id.into()));
    }

    fn send(&self, c: Control) {
        if let Ok(tx) = self.control.lock() {
            let _ = tx.send(c);
        }
        let _ = std::io::Write::write(&mut &self.wake, &[1]);
    }
}

/// epoll tokens: the two pipes, then one per OOM watcher.
const SIGCHLD_TOKEN: u64 = 0;
const WAKE_TOKEN: u64 = 1;
const FIRST_OOM_TOKEN: u64 = 2;

struct Watch {
    tasks: Arc<Tasks>,
    sigchld: UnixStream,
    wake: UnixStream,
    control: Receiver<Control>,
    epoll: Epoll,
    /// Container id and watcher by epoll token.
    oom: HashMap<u64, (String, OomWatcher)>,
    next_token: u64,
}

impl Watch {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("epoll_wait: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            for token in events[..n].iter().map(EpollEvent::data) {
                match token {
                    SIGCHLD_TOKEN => {
                        drain(&self.sigchld);
                        self.reap();
                    }
                    WAKE_TOKEN => {
                        drain(&self.wake);
                        self.apply_control();
                    }
                    // A watcher removed earlier in this round is simply not found.
                    token => self.check_oom(token),
                }
            }
        }
    }

    fn reap(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::error!("waitpid: {e}");
                    return;
                }
            };
            self.tasks.on_exit(pid.as_raw(), Exit::now(status));
        }
    }

    fn apply_control(&mut self) {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::Watch(id, root) => {
                    let Some(w) = oom_watcher(&id, &root) else { continue };
                    let token = self.next_token;
                    match self.epoll.add(w.fd(), EpollEvent::new(EpollFlags::EPOLLIN, token)) {
                        Ok(()) => {
                            self.next_token += 1;
                            self.oom.insert(token, (id, w));
                        }
                        Err(e) => log::warn!("container {id}: no OOM events: epoll: {e}"),
                    }
                }
                Control::Unwatch(id) => {
                    let tokens: Vec<u64> = self.oom.iter().filter(|(_, (i, _))| *i == id).map(|(t, _)| *t).collect();
                    for token in tokens {
                        self.unwatch(token);
                    }
                }
            }
        }
    }

    fn unwatch(&mut self, token: u64) {
        if let Some((_, w)) = self.oom.remove(&token) {
            let _ = self.epoll.delete(w.fd());
        }
    }

    fn check_oom(&mut self, token: u64) {
        let Some((id, watcher)) = self.oom.get_mut(&token) else { return };
        match watcher.take() {
            Ok(true) => {
                log::info!("container {id}: OOM");
                let event = TaskOOM { container_id: id.clone(), ..Default::default() };
                self.tasks.events.send(Event::Oom(event));
            }
            Ok(false) => {}
            Err(e) => {
                if !e.is_not_found() {
                    log::warn!("container {id}: OOM watch: {e}");
                }
                self.unwatch(token);
            }
        }
    }
}

fn oom_watcher(id: &str, root: &Path) -> Option<OomWatcher> {
    let cgroup = warren::container::Runtime::new(root).live_cgroup(id);
    match cgroup.map(|cg| OomWatcher::new(&cg)) {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            log::warn!("container {id}: no OOM events: {e}");
            None
        }
        Err(e) => {
            log::warn!("container {id}: no OOM events: {e}");
            None
        }
    }
}

fn drain(mut s: &UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
