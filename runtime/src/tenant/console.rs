//! A tenant's console: its init runs on a pty whose master the supervisor holds. The
//! supervisor copies what the tenant writes there into `console.log` and to every client
//! attached on `console.sock` (0600, in the tenant's dir), and what a client types into the
//! master. Clients stay attached across restarts; a client that cannot keep up loses output
//! rather than stalling the tenant. `attach` is the client: it ends on the escape byte
//! (Ctrl-], as virsh and telnet use) or when its input ends.
//!
//! A supervisor killed with -9 takes the master with it: the tenant's terminal hangs up (its
//! init, pid 1 of its namespace, ignores the SIGHUP) and its console returns with the next
//! start. The supervisor that adopts such a tenant tells clients so.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::TenantError;

/// Ctrl-]: ends `attach`.
pub const DETACH: u8 = 0x1d;
/// The rows and columns a pty starts with (a client does not send its own yet).
const SIZE: (u16, u16) = (24, 80);

fn console_err(path: &Path) -> impl FnOnce(io::Error) -> TenantError + '_ {
    move |source| TenantError::Io { path: path.to_path_buf(), source }
}

/// The supervisor's side: the listening socket, the attached clients and the current pty.
pub struct Relay {
    path: PathBuf,
    listener: UnixListener,
    clients: Vec<UnixStream>,
    master: Option<OwnedFd>,
    /// No slave of the pty is open (the init closed its terminal): poll would report the
    /// master at once for ever, so it is looked at again only once a second.
    master_hup: bool,
    /// Where the tenant's output is kept (console.log).
    log: OwnedFd,
}

/// What woke [`Relay::serve`].
pub enum Wake {
    /// `until` became readable (the init ended).
    Done,
    /// The timeout passed.
    Timeout,
}

impl Relay {
    /// Listens on `path` (replacing a socket a killed supervisor left); output goes to `log`.
    pub fn open(path: &Path, log: OwnedFd) -> Result<Relay, TenantError> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).map_err(console_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(console_err(path))?;
        listener.set_nonblocking(true).map_err(console_err(path))?;
        Ok(Relay { path: path.to_path_buf(), listener, clients: Vec::new(), master: None, master_hup: false, log })
    }

    /// The pty of the init just created (None: it has no terminal).
    pub fn set_master(&mut self, master: Option<OwnedFd>) {
        if let Some(m) = &master {
            let _ = crate::sys::set_window_size(m.as_raw_fd(), SIZE.0, SIZE.1);
            let _ = crate::sys::set_nonblocking(m.as_raw_fd());
        }
        self.master = master;
        self.master_hup = false;
    }

    /// Relays until `until` is readable or `timeout_ms` passes (-1: no timeout). When the
    /// init has ended, what is left in its pty is copied out and the pty dropped.
    pub fn serve(&mut self, until: Option<BorrowedFd<'_>>, timeout_ms: i32) -> Wake {
        let deadline = u64::try_from(timeout_ms).ok().map(|ms| Instant::now() + Duration::from_millis(ms));
        loop {
            let mut fds = vec![pollin(self.listener.as_raw_fd())];
            fds.extend(until.map(|fd| pollin(fd.as_raw_fd())));
            let master_at = fds.len();
            fds.extend(self.master.as_ref().filter(|_| !self.master_hup).map(|m| pollin(m.as_raw_fd())));
            let clients_at = fds.len();
            fds.extend(self.clients.iter().map(|c| pollin(c.as_raw_fd())));
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as i32);
            let wait = match (left, self.master_hup) {
                (Some(l), true) => l.min(1000),
                (None, true) => 1000,
                (Some(l), false) => l,
                (None, false) => -1,
            };
            // SAFETY: `fds` is a live array of pollfd of its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
            if n == 0 {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Wake::Timeout;
                }
                self.master_hup = false; // look at the master again
                continue;
            }
            if n < 0 {
                continue; // EINTR
            }
            let ready = |i: usize| fds.get(i).is_some_and(|p| p.revents != 0);
            if master_at < clients_at && ready(master_at) {
                self.copy_out();
            }
            let gone: Vec<usize> = (0..self.clients.len()).filter(|&i| ready(clients_at + i)).collect();
            for i in gone.into_iter().rev() {
                if !self.copy_in(i) {
                    self.clients.remove(i);
                }
            }
            if ready(0) {
                self.accept();
            }
            if until.is_some() && ready(1) {
                self.copy_out();
                self.master = None;
                return Wake::Done;
            }
        }
    }

    fn accept(&mut self) {
        while let Ok((mut c, _)) = self.listener.accept() {
            if self.master.is_none() {
                let _ = c.write_all(b"warren: no console: the tenant's terminal went with its last supervisor; it comes back at its next start\r\n");
                continue;
            }
            let _ = c.set_nonblocking(true);
            self.clients.push(c);
        }
    }

    /// The pty's output to the log and to each client; a client that would block misses it.
    fn copy_out(&mut self) {
        let Some(master) = &self.master else { return };
        let mut buf = [0u8; 16384];
        loop {
            let n = match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => return,
                Ok(n) => n,
                // EIO: no slave is open.
                Err(_) => {
                    self.master_hup = true;
                    return;
                }
            };
            let _ = write_all(self.log.as_fd(), &buf[..n]);
            self.clients.retain_mut(|c| match c.write(&buf[..n]) {
                Ok(_) => true,
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            });
        }
    }

    /// A client's input to the pty; false when the client is gone.
    fn copy_in(&mut self, i: usize) -> bool {
        let mut buf = [0u8; 4096];
        match self.clients[i].read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                if let Some(m) = &self.master {
                    let _ = write_all(m.as_fd(), &buf[..n]);
                }
                true
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pollin(fd: RawFd) -> libc::pollfd {
    libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
}

/// Writes all of `data` to `fd`, waiting while it is full (a pty or a file: never for long).
fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one live pollfd; waits at most 100 ms.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How `attach` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The escape byte, or the end of the input.
    Detached,
    /// The supervisor closed the console (it ended, or the tenant has no console now).
    Closed,
}

/// The client: relays `input` to the console at `socket` and the console to `output` until
/// the escape byte [`DETACH`] or the end of `input` (detached), or until the supervisor
/// closes it.
pub fn attach(socket: &Path, input: BorrowedFd<'_>, output: BorrowedFd<'_>) -> Result<Ended, TenantError> {
    let mut conn = UnixStream::connect(socket).map_err(console_err(socket))?;
    let mut buf = [0u8; 16384];
    loop {
        let mut fds = [pollin(input.as_raw_fd()), pollin(conn.as_raw_fd())];
        // SAFETY: two live pollfds; no timeout.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if fds[1].revents != 0 {
            let n = conn.read(&mut buf).map_err(console_err(socket))?;
            if n == 0 {
                return Ok(Ended::Closed);
            }
            write_all(output, &buf[..n]).map_err(console_err(Path::new("(stdout)")))?;
        }
        if fds[0].revents != 0 {
            let n = nix::unistd::read(input.as_raw_fd(), &mut buf).unwrap_or(0);
            let typed = &buf[..n];
            let (before, detach) = match typed.iter().position(|&b| b == DETACH) {
                Some(at) => (&typed[..at], true),
                None => (typed, n == 0),
            };
            conn.write_all(before).map_err(console_err(socket))?;
            if detach {
                return Ok(Ended::Detached);
            }
        }
    }
}
