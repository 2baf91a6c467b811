//! The receiving end of `--console-socket`, as a client of the runtime has.

use std::path::{Path, PathBuf};

use anyhow::Result;

/// A console socket that keeps every pty master sent to it (runc's protocol: one fd in an
/// SCM_RIGHTS message), so the container's terminal stays open.
pub struct ConsoleSocket {
    pub path: PathBuf,
    pub masters: std::sync::mpsc::Receiver<std::os::fd::OwnedFd>,
}

impl ConsoleSocket {
    /// Listens on DIR/console.sock.
    pub fn new(dir: &Path) -> Result<ConsoleSocket> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let path = dir.join("console.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        let (tx, masters) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut buf = [0u8; 256];
                let mut cmsg = [0u64; 8];
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                // SAFETY: zeroed msghdr pointing at live buffers of the given sizes.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cmsg.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&cmsg);
                // SAFETY: recvmsg on a connected socket into the buffers above.
                if unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) } <= 0 {
                    continue;
                }
                // SAFETY: the kernel filled the control buffer; CMSG_* walk it within its length.
                let fd = unsafe {
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
                        continue;
                    }
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
                };
                // SAFETY: SCM_RIGHTS gave us this fd; nothing else owns it.
                let _ = tx.send(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        });
        Ok(ConsoleSocket { path, masters })
    }
}
