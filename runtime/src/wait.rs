//! Foreground `run` and `exec`: we are the process's subreaper, forward the
//! signals we get to it, and return its exit code the way a shell reports it.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

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
