//! A process's stdio as containerd asks for it: FIFO paths, `file://` and `binary://` log
//! URIs, or a terminal.
//!
//! Without a terminal the shim copies nothing: the process gets the descriptors themselves
//! (through `warren create`/`exec`, whose stdio the container inherits). A FIFO is opened for
//! the process before it runs, while the client's own open of its end is pending (clients
//! open their ends before they send Create or Exec), so stdin sees EOF only once the client
//! closes it, and stdout is opened read-write so that a client that goes away never turns
//! the process's writes into EPIPE. With a terminal, one thread per process relays between
//! the pty master and the FIFOs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::{Result, ShimError};

/// The stdio of a process as containerd sent it.
#[derive(Debug, Clone, Default)]
pub struct IoConfig {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where an output stream goes.
enum Sink {
    Null,
    Fifo(PathBuf),
    File(PathBuf),
    Binary { program: PathBuf, args: Vec<String> },
}

fn sink(uri: &str) -> Result<Sink> {
    let bad = |reason: &str| ShimError::LogUri { uri: uri.into(), reason: reason.into() };
    if uri.is_empty() {
        return Ok(Sink::Null);
    }
    let Some((scheme, rest)) = uri.split_once("://") else { return Ok(Sink::Fifo(uri.into())) };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(bad("the path must be absolute"));
    }
    match scheme {
        "fifo" => Ok(Sink::Fifo(path.into())),
        "file" => Ok(Sink::File(path.into())),
        "binary" => {
            // Each query parameter becomes "key value" on the logger's command line.
            let args = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .flat_map(|kv| match kv.split_once('=') {
                    Some((k, v)) => vec![k.to_string(), v.to_string()],
                    None => vec![kv.to_string()],
                })
                .collect();
            Ok(Sink::Binary { program: path.into(), args })
        }
        _ => Err(bad("unknown scheme (fifo, file and binary are known)")),
    }
}

/// The descriptors a process without a terminal gets as stdin, stdout and stderr.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Stdio {
    /// Opens what `io` names. `id`/`namespace` are passed to a `binary://` logger.
    pub fn open(io: &IoConfig, id: &str, namespace: &str) -> Result<Stdio> {
        let stdin = if io.stdin.is_empty() { open_null(false)? } else { open_fifo_reader(Path::new(&io.stdin))? };
        let (stdout, stderr) = match sink(&io.stdout)? {
            Sink::Binary { program, args } => start_logger(&program, &args, id, namespace)?,
            out => {
                let stdout = open_sink(out)?;
                let stderr = if io.stderr == io.stdout {
                    stdout.try_clone().map_err(ShimError::io(&io.stderr))?
                } else {
                    open_sink(sink(&io.stderr)?)?
                };
                (stdout, stderr)
            }
        };
        Ok(Stdio { stdin, stdout, stderr })
    }

    /// /dev/null for all three (a process with a terminal).
    pub fn null() -> Result<Stdio> {
        Ok(Stdio { stdin: open_null(false)?, stdout: open_null(true)?, stderr: open_null(true)? })
    }
}

fn open_null(write: bool) -> Result<OwnedFd> {
    let f = OpenOptions::new().read(!write).write(write).open("/dev/null").map_err(ShimError::io("/dev/null"))?;
    Ok(f.into())
}

/// Opens a FIFO for reading without waiting for a writer, then makes it blocking for the
/// process that will read it.
fn open_fifo_reader(path: &Path) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(ShimError::io(path))?;
    fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(|e| ShimError::io(path)(e.into()))?;
    Ok(f.into())
}

fn open_sink(sink: Sink) -> Result<OwnedFd> {
    match sink {
        Sink::Null => open_null(true),
        Sink::Fifo(path) => {
            let f = OpenOptions::new().read(true).write(true).open(&path).map_err(ShimError::io(&path))?;
            Ok(f.into())
        }
        Sink::File(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(ShimError::io(dir))?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&path).map_err(ShimError::io(&path))?;
            Ok(f.into())
        }
        Sink::Binary { program, .. } => Err(ShimError::LogUri {
            uri: program.display().to_string(),
            reason: "stderr may only name the same logger as stdout".into(),
        }),
    }
}

/// Starts a `binary://` logger with the process's stdout and stderr pipes as its fds 3 and 4
/// and a readiness pipe as fd 5, and waits until it closes fd 5.
fn start_logger(program: &Path, args: &[String], id: &str, namespace: &str) -> Result<(OwnedFd, OwnedFd)> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ShimError::io(program)(e.into()));
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    // Above 5, so that placing them at 3, 4 and 5 in the child never overwrites a source.
    let high = |fd: &OwnedFd| -> Result<OwnedFd> {
        let dup = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(6)).map_err(|e| ShimError::io(program)(e.into()))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(dup) })
    };
    let sources = [high(&out_r)?, high(&err_r)?, high(&ready_w)?];
    let raw: Vec<i32> = sources.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut cmd = Command::new(program);
    cmd.args(args).env("CONTAINER_ID", id).env("CONTAINER_NAMESPACE", namespace);
    // SAFETY: the closure only calls dup2 on descriptors prepared before the fork; it neither
    // allocates nor takes locks.
    unsafe {
        cmd.pre_exec(move || {
            for (target, src) in raw.iter().enumerate() {
                nix::unistd::dup2(*src, 3 + target as i32)?;
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(ShimError::io(program))?;
    drop((sources, out_r, err_r, ready_w));
    // EOF (or any byte) on the readiness pipe: the logger is ready, or gone.
    let _ = File::from(ready_r).read(&mut [0u8; 1]);
    Ok((out_w, err_w))
}

static NEXT_SOCKET: AtomicU32 = AtomicU32::new(0);

/// A unix socket on which `warren` hands over the pty master of a process with a terminal.
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("warren-pty-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(ShimError::io(&dir))?;
        let path = dir.join("pty.sock");
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(ConsoleSocket { dir, listener }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(ShimError::Io { path, source: e })
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pty.sock")
    }

    /// The master `warren` sent (it has returned: the connection is queued or never came).
    pub fn receive(&self) -> Result<OwnedFd> {
        let path = self.path();
        self.listener.set_nonblocking(true).map_err(ShimError::io(&path))?;
        let (stream, _) = self.listener.accept().map_err(ShimError::io(&path))?;
        Ok(warren::console::receive_master(stream.as_raw_fd())?)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running relay between a pty master and the process's FIFOs.
pub struct Terminal {
    master: OwnedFd,
    control: File,
}

const STOP_STDIN: u8 = b'i';

impl Terminal {
    pub fn start(master: OwnedFd, io: &IoConfig) -> Result<Terminal> {
        let stdin = match io.stdin.is_empty() {
            true => None,
            false => Some(File::from(open_fifo_nonblocking(Path::new(&io.stdin))?)),
        };
        let stdout = match sink(&io.stdout)? {
            Sink::Null => None,
            out => Some(File::from(open_sink(out)?)),
        };
        let (control_r, control_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(|e| ShimError::io("pipe")(e.into()))?;
        // The relay's own handle of the master, duplicated here so that running out of
        // descriptors fails this process's request rather than the relay thread.
        let relay_master = File::from(master.try_clone().map_err(ShimError::io("pty master (dup)"))?);
        let relay = Relay { master: relay_master, stdin, stdout, control: Some(File::from(control_r)) };
        std::thread::Builder::new()
            .name("tty".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || relay.run())
            .map_err(ShimError::io("tty relay thread"))?;
        Ok(Terminal { master, control: File::from(control_w) })
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        warren::sys::set_window_size(self.master.as_raw_fd(), height as u16, width as u16)
            .map_err(ShimError::io("pty master (resize)"))
    }

    /// Stops feeding stdin to the terminal (CloseIO).
    pub fn close_stdin(&self) {
        let _ = (&self.control).write(&[STOP_STDIN]);
    }
}

fn open_fifo_nonblocking(path: &Path) -> Result<OwnedFd> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(ShimError::io(path))?;
    Ok(f.into())
}

/// The relay's side. Dropping the [`Terminal`] (the process has exited) leaves it running until
/// every process has let go of the terminal, so that the last output still reaches the client.
struct Relay {
    master: File,
    stdin: Option<File>,
    stdout: Option<File>,
    control: Option<File>,
}

impl Relay {
    /// Copies until the process side of the terminal is closed by every process (EIO on the
    /// master); dropping stdout then gives the client EOF.
    fn run(mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let ready = match self.wait() {
                Some(r) => r,
                None => return,
            };
            if ready.control {
                self.read_control();
            }
            if ready.master {
                match (&self.master).read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Some(out) = &mut self.stdout {
                            if out.write_all(&buf[..n]).is_err() {
                                self.stdout = None;
                            }
                        }
                    }
                }
            }
            if ready.stdin {
                if let Some(stdin) = &mut self.stdin {
                    match stdin.read(&mut buf) {
                        Ok(0) => self.stdin = None,
                        Ok(n) => {
                            let _ = (&self.master).write_all(&buf[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => self.stdin = None,
                    }
                }
            }
        }
    }

    fn wait(&self) -> Option<Ready> {
        let any = PollFlags::POLLIN;
        let mut fds = vec![PollFd::new(self.master.as_fd(), any)];
        let control = self.control.as_ref().map(|c| {
            fds.push(PollFd::new(c.as_fd(), any));
            fds.len() - 1
        });
        let stdin = self.stdin.as_ref().map(|s| {
            fds.push(PollFd::new(s.as_fd(), any));
            fds.len() - 1
        });
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
        }
        let hit = |i: Option<usize>| i.is_some_and(|i| fds[i].revents().is_some_and(|r| !r.is_empty()));
        Some(Ready { master: hit(Some(0)), control: hit(control), stdin: hit(stdin) })
    }

    fn read_control(&mut self) {
        let mut cmd = [0u8; 16];
        match self.control.as_ref().map(|mut c| c.read(&mut cmd)) {
            Some(Ok(n)) if n > 0 => {
                if cmd[..n].contains(&STOP_STDIN) {
                    self.stdin = None;
                }
            }
            Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // The shim let go of the process.
            _ => self.control = None,
        }
    }
}

struct Ready {
    master: bool,
    control: bool,
    stdin: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uris() {
        assert!(matches!(sink("").unwrap(), Sink::Null));
        assert!(matches!(sink("/run/fifo/x-stdout").unwrap(), Sink::Fifo(p) if p == Path::new("/run/fifo/x-stdout")));
        assert!(matches!(sink("file:///var/log/c.log").unwrap(), Sink::File(p) if p == Path::new("/var/log/c.log")));
        match sink("binary:///usr/bin/logger?tag=web&debug").unwrap() {
            Sink::Binary { program, args } => {
                assert_eq!(program, Path::new("/usr/bin/logger"));
                assert_eq!(args, ["tag", "web", "debug"]);
            }
            _ => panic!("not a binary sink"),
        }
        let e = sink("file://relative/c.log").err().unwrap().to_string();
        assert!(e.contains("file://relative/c.log") && e.contains("absolute"), "{e}");
        let e = sink("http:///x").err().unwrap().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
    }
}
