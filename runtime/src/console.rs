//! `process.terminal`: a pty made inside the container's devpts; its master
//! goes to the caller over `--console-socket` (SCM_RIGHTS), its slave
//! becomes the process's stdio, controlling terminal and /dev/console.

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("terminal: {step}: {source}")]
    Pty { step: &'static str, source: nix::Error },
    #[error("terminal: pass the pty master over the console socket: {source}")]
    Send { source: nix::Error },
    #[error("terminal: {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// Makes the pty, sends its master away and returns (slave fd, slave path).
pub fn create(console_socket: RawFd, size: Option<(u16, u16)>) -> Result<(OwnedFd, PathBuf), ConsoleError> {
    let pty = |step| move |source| ConsoleError::Pty { step, source };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(pty("open /dev/ptmx"))?;
    grantpt(&master).map_err(pty("grantpt"))?;
    unlockpt(&master).map_err(pty("unlockpt"))?;
    let name = PathBuf::from(ptsname_r(&master).map_err(pty("ptsname"))?);
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|source| ConsoleError::Open { path: name.clone(), source })?
        .into();
    if let Some((rows, cols)) = size {
        let _ = crate::sys::set_window_size(slave.as_raw_fd(), rows, cols);
    }
    send_fd(console_socket, master.as_raw_fd(), "/dev/ptmx")?;
    Ok((slave, name))
}

use std::os::unix::fs::OpenOptionsExt;

/// Sends `fd` with `name` as the payload, the way runc's clients expect.
pub fn send_fd(socket: RawFd, fd: RawFd, name: &str) -> Result<(), ConsoleError> {
    let iov = [IoSlice::new(name.as_bytes())];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(socket, &iov, &cmsg, MsgFlags::empty(), None).map_err(|source| ConsoleError::Send { source })?;
    Ok(())
}

/// The runtime's side: receives the pty master the init sent over `socket`.
pub fn receive_master(socket: RawFd) -> Result<OwnedFd, ConsoleError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::os::fd::FromRawFd;
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|source| ConsoleError::Send { source })?;
    for cmsg in msg.cmsgs().map_err(|source| ConsoleError::Send { source })? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just gave us this descriptor; we are its only owner.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(ConsoleError::Send { source: nix::Error::EBADMSG })
}

/// The slave becomes stdin/stdout/stderr and the controlling terminal.
pub fn attach(slave: &OwnedFd) -> Result<(), ConsoleError> {
    let err = |source| ConsoleError::Pty { step: "make stdio", source };
    for target in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), target).map_err(err)?;
    }
    crate::sys::set_controlling_tty(0).map_err(|e| err(nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))
}
