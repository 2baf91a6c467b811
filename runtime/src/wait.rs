//! Foreground `run` and `exec`: we are the process's subreaper, forward the
//! signals we get to it, and return its exit code the way a shell reports it.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("signal handling: {source}")]
    Signals { source: nix::Error },
}

const FORWARDED: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGTSTP,
    Signal::SIGALRM,
];

/// Blocks the signals we forward (and SIGCHLD) and makes us a subreaper.
/// Call before the process is created, so that no signal or exit is missed.
pub struct Forwarder {
    fd: SignalFd,
}

impl Forwarder {
    pub fn install() -> Result<Forwarder, WaitError> {
        let err = |source| WaitError::Signals { source };
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(s);
        }
        set.add(Signal::SIGCHLD);
        set.thread_block().map_err(err)?;
        crate::sys::set_child_subreaper().map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(err)?;
        Ok(Forwarder { fd })
    }

    /// Forwards signals to `pid` until it exits; reaps every other child on
    /// the way. Returns the exit code (128+N for a death by signal N).
    pub fn wait(&self, pid: i32) -> Result<i32, WaitError> {
        loop {
            if let Some(code) = reap(pid) {
                return Ok(code);
            }
            let info = match self.fd.read_signal() {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(source) => return Err(WaitError::Signals { source }),
            };
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig != Signal::SIGCHLD {
                let _ = kill(Pid::from_raw(pid), sig);
            }
        }
    }
}

/// Puts our terminal in raw mode while a container's terminal is relayed,
/// and restores it afterwards.
pub struct RawMode {
    saved: Option<nix::sys::termios::Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let Ok(saved) = tcgetattr(&stdin) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

/// Copies what `from` has to `to`; false once `from` is at its end.
fn pump(from: RawFd, to: RawFd) -> bool {
    let mut buf = [0u8; 8192];
    match nix::unistd::read(from, &mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut off = 0;
            while off < n {
                // SAFETY: `to` is an open descriptor owned by the caller for the call's duration.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(to) };
                match nix::unistd::write(fd, &buf[off..n]) {
                    Ok(w) => off += w,
                    Err(nix::Error::EINTR) => {}
                    Err(_) => return false,
                }
            }
            true
        }
    }
}

impl Forwarder {
    /// Like [`Forwarder::wait`], while relaying our stdin/stdout to the
    /// container's terminal (`runc run` with a terminal and no console socket).
    pub fn wait_with_terminal(&self, pid: i32, master: OwnedFd) -> Result<i32, WaitError> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let _raw = RawMode::enter();
        let resize = || {
            if let Some((rows, cols)) = crate::sys::window_size(0) {
                let _ = crate::sys::set_window_size(master.as_raw_fd(), rows, cols);
            }
        };
        resize();
        let (mut stdin_open, mut master_open, mut code) = (true, true, None);
        while code.is_none() || master_open {
            let stdin = std::io::stdin();
            let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            fds.push(PollFd::new(master.as_fd(), if master_open { PollFlags::POLLIN } else { PollFlags::empty() }));
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(100u16)) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(source) => return Err(WaitError::Signals { source }),
            }
            let ready = |i: usize| fds.get(i).and_then(|f| f.revents()).is_some_and(|r| !r.is_empty());
            let (sig_ready, master_ready, stdin_ready) = (ready(0), ready(1), ready(2));
            drop(fds);
            if master_ready {
                master_open = pump(master.as_raw_fd(), 1);
            }
            if stdin_ready {
                stdin_open = pump(0, master.as_raw_fd());
            }
            if sig_ready {
                if let Ok(Some(info)) = self.fd.read_signal() {
                    match Signal::try_from(info.ssi_signo as i32) {
                        Ok(Signal::SIGWINCH) => resize(),
                        Ok(Signal::SIGCHLD) | Err(_) => {}
                        Ok(sig) => {
                            let _ = kill(Pid::from_raw(pid), sig);
                        }
                    }
                }
            }
            if code.is_none() {
                code = reap(pid);
            }
        }
        Ok(code.unwrap_or(0))
    }
}

/// Reaps every exited child; returns the code of `pid` if it was among them.
fn reap(pid: i32) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p.as_raw() == pid => return Some(code),
            Ok(WaitStatus::Signaled(p, sig, _)) if p.as_raw() == pid => return Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}
