//! NETLINK_ROUTE sockets, in our own network namespace or in another one. Only the socket
//! calls live here; the messages are built and parsed by `crate::netdev`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::check;

/// A new NETLINK_ROUTE socket in the calling thread's network namespace. The kernel binds
/// it on the first send; replies come back to it.
pub fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; no pointers.
    let fd =
        check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) }
            as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A NETLINK_ROUTE socket that talks to the network namespace `netns`: a socket stays in
/// the namespace it was made in, so a short-lived thread joins `netns` (setns affects only
/// that thread) and makes it there. The rest of the process never leaves its namespace.
pub fn route_socket_in(netns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            route_socket()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netlink socket thread panicked")))
    })
}

/// Sends one whole request to the kernel (netlink datagrams are never split).
pub fn send(sock: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: `msg` is a live buffer of `msg.len()` bytes that the kernel only reads.
    let n = check(unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } as libc::c_long)?;
    if n as usize != msg.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short netlink send"));
    }
    Ok(())
}

/// Receives one datagram of replies into `buf`; returns its length.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let r = check(unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) } as libc::c_long);
        match r {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(|n| n as usize),
        }
    }
}
