//! The shim's one watching thread: it reaps every child (the shim is a subreaper, so the
//! containers' processes come to it) and turns OOM notices of the containers' memory cgroups
//! into TaskOOM events. It sleeps in poll(2) on a SIGCHLD self-pipe, a control pipe and one
//! descriptor per watched cgroup.

use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use containerd_shim::protos::events::task::TaskOOM;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
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
        let watch = Watch { tasks, sigchld: sig_r, wake: wake_r, control: rx, oom: Vec::new() };
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

struct Watch {
    tasks: Arc<Tasks>,
    sigchld: UnixStream,
    wake: UnixStream,
    control: Receiver<Control>,
    oom: Vec<(String, OomWatcher)>,
}

impl Watch {
    fn run(mut self) {
        loop {
            let ready = self.wait();
            // The OOM indices are positions in the list as polled: they go before a control
            // message (Unwatch) changes it. Doing them after let a container's cgroup removal
            // (its notifier fires) and its Unwatch in the same round index past the list's end:
            // a panic, which aborts the shim with every tenant of its group.
            for i in ready.oom.into_iter().rev() {
                self.check_oom(i);
            }
            if ready.sigchld {
                drain(&self.sigchld);
                self.reap();
            }
            if ready.wake {
                drain(&self.wake);
                self.apply_control();
            }
        }
    }

    /// Which descriptors are readable.
    fn wait(&self) -> Ready {
        let any = PollFlags::POLLIN;
        let mut fds = vec![PollFd::new(self.sigchld.as_fd(), any), PollFd::new(self.wake.as_fd(), any)];
        fds.extend(self.oom.iter().map(|(_, w)| PollFd::new(w.fd(), any)));
        while let Err(e) = poll(&mut fds, PollTimeout::NONE) {
            if e != Errno::EINTR {
                log::error!("poll: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let hit = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        Ready {
            sigchld: hit(&fds[0]),
            wake: hit(&fds[1]),
            oom: fds[2..].iter().enumerate().filter(|(_, fd)| hit(fd)).map(|(i, _)| i).collect(),
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
                    if let Some(w) = oom_watcher(&id, &root) {
                        self.oom.push((id, w));
                    }
                }
                Control::Unwatch(id) => self.oom.retain(|(i, _)| *i != id),
            }
        }
    }

    fn check_oom(&mut self, index: usize) {
        let Some((id, watcher)) = self.oom.get_mut(index) else { return };
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
                self.oom.swap_remove(index);
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

struct Ready {
    sigchld: bool,
    wake: bool,
    oom: Vec<usize>,
}

fn drain(mut s: &UnixStream) {
    let mut buf = [0u8; 64];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
