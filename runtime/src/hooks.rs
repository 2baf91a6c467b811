//! OCI hooks: each gets the container's state JSON on stdin, runs with its
//! own args/env, and is killed with its process group when its timeout expires. Its stdin
//! is fed and its output drained at the same time, so no pipe fills up and blocks it.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::Hook;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: {source}")]
    Spawn { kind: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{kind} hook {path}: exited with {status}{output}")]
    Failed { kind: &'static str, path: PathBuf, status: String, output: String },
    #[error("{kind} hook {path}: timed out after {secs}s")]
    Timeout { kind: &'static str, path: PathBuf, secs: i64 },
}

/// The six hook kinds, named as in config.json.
#[derive(Debug, Clone, Copy)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    pub fn of(self, spec: &oci_spec::runtime::Spec) -> Vec<Hook> {
        let Some(h) = spec.hooks() else {
            return Vec::new();
        };
        #[allow(deprecated)]
        let list = match self {
            HookKind::Prestart => h.prestart(),
            HookKind::CreateRuntime => h.create_runtime(),
            HookKind::CreateContainer => h.create_container(),
            HookKind::StartContainer => h.start_container(),
            HookKind::Poststart => h.poststart(),
            HookKind::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Runs every hook of `kind` in order; stops at the first failure.
pub fn run_all(kind: HookKind, spec: &oci_spec::runtime::Spec, state_json: &str) -> Result<(), HookError> {
    for hook in kind.of(spec) {
        run_one(kind.name(), &hook, state_json)?;
    }
    Ok(())
}

/// What is kept of a hook's stdout and stderr for its error message: the last bytes, where a
/// failing program says why. The rest is read and dropped, so a chatty hook can neither block
/// on a full pipe nor grow our memory.
const OUTPUT_CAP: usize = 4096;

/// Without a pidfd (a seccomp profile may refuse pidfd_open to startContainer hooks), the
/// drain loop looks for the hook's exit this often.
const EXIT_POLL: Duration = Duration::from_millis(10);

fn run_one(kind: &'static str, hook: &Hook, state_json: &str) -> Result<(), HookError> {
    let path = hook.path().clone();
    let mut child = spawn(hook).map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
    let deadline = hook.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    let drained = Drain::new(&mut child, state_json.as_bytes()).and_then(|d| d.until_exit(deadline.map(|d| d.1)));
    let output = match drained {
        Ok(Some(output)) => output,
        Ok(None) => {
            kill_group(&mut child);
            let secs = deadline.map_or(0, |d| d.0);
            return Err(HookError::Timeout { kind, path, secs });
        }
        Err(source) => {
            kill_group(&mut child);
            return Err(HookError::Spawn { kind, path, source });
        }
    };
    let status = child.wait().map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output).trim().replace('\n', " ");
    let output = if text.is_empty() { String::new() } else { format!(": {text}") };
    Err(HookError::Failed { kind, path, status: status.to_string(), output })
}

/// The hook in a process group of its own, so that a timeout kills whatever it started too.
fn spawn(hook: &Hook) -> std::io::Result<Child> {
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(hook.path());
    if let Some((arg0, rest)) = args.split_first() {
        cmd.arg0(arg0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.process_group(0);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn()
}

fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.wait();
}

/// Feeds a hook its stdin and reads its stdout and stderr at the same time, until it exits.
struct Drain<'a> {
    exited: Option<OwnedFd>,
    child: &'a mut Child,
    stdin: Option<ChildStdin>,
    input: &'a [u8],
    /// stdout and stderr, read alike.
    outputs: [Option<File>; 2],
    kept: Vec<u8>,
}

impl<'a> Drain<'a> {
    fn new(child: &'a mut Child, input: &'a [u8]) -> std::io::Result<Drain<'a>> {
        let exited = crate::sys::pidfd_open(child.id() as i32).ok();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(|s| File::from(OwnedFd::from(s)));
        let stderr = child.stderr.take().map(|s| File::from(OwnedFd::from(s)));
        let fds = [stdin.as_ref().map(|s| s.as_raw_fd()), stdout.as_ref().map(|s| s.as_raw_fd())];
        for fd in fds.into_iter().chain([stderr.as_ref().map(|s| s.as_raw_fd())]).flatten() {
            crate::sys::set_nonblocking(fd)?;
        }
        Ok(Drain { exited, child, stdin, input, outputs: [stdout, stderr], kept: Vec::new() })
    }

    /// The hook's output once it has exited, or None when `deadline` came first. Output that
    /// a process it left behind writes later is not waited for.
    fn until_exit(mut self, deadline: Option<Instant>) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let wait = match deadline.map(|at| at.saturating_duration_since(Instant::now())) {
                Some(left) if left.is_zero() => return Ok(None),
                Some(left) if self.exited.is_none() => Some(left.min(EXIT_POLL)),
                Some(left) => Some(left),
                None if self.exited.is_none() => Some(EXIT_POLL),
                None => None,
            };
            let ready = self.poll(wait)?;
            self.read_outputs(&ready[1..3]);
            if ready[3] {
                self.feed();
            }
            let done = if self.exited.is_some() { ready[0] } else { self.child.try_wait()?.is_some() };
            if done {
                self.read_outputs(&[true, true]);
                return Ok(Some(self.kept));
            }
        }
    }

    /// Which of (exit, stdout, stderr, stdin) are ready after waiting up to `wait`.
    fn poll(&self, wait: Option<Duration>) -> std::io::Result<[bool; 4]> {
        let input = PollFlags::POLLIN;
        let mut slots: Vec<(usize, PollFd<'_>)> = Vec::with_capacity(4);
        if let Some(fd) = &self.exited {
            slots.push((0, PollFd::new(fd.as_fd(), input)));
        }
        for (i, out) in self.outputs.iter().enumerate() {
            if let Some(out) = out {
                slots.push((i + 1, PollFd::new(out.as_fd(), input)));
            }
        }
        if let Some(stdin) = &self.stdin {
            slots.push((3, PollFd::new(stdin.as_fd(), PollFlags::POLLOUT)));
        }
        let timeout = match wait {
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
            None => PollTimeout::NONE,
        };
        let mut fds: Vec<PollFd<'_>> = slots.iter().map(|(_, fd)| *fd).collect();
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let mut ready = [false; 4];
        for ((slot, _), fd) in slots.iter().zip(&fds) {
            ready[*slot] = fd.revents().is_some_and(|r| !r.is_empty());
        }
        Ok(ready)
    }

    /// Reads what is there now from each ready output; an output at its end is closed.
    fn read_outputs(&mut self, ready: &[bool]) {
        let mut buf = [0u8; 16 * 1024];
        for (slot, ready) in self.outputs.iter_mut().zip(ready) {
            let Some(out) = slot.as_mut().filter(|_| *ready) else {
                continue;
            };
            loop {
                match out.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        break;
                    }
                    Ok(n) => {
                        self.kept.extend_from_slice(&buf[n.saturating_sub(OUTPUT_CAP)..n]);
                        let over = self.kept.len().saturating_sub(OUTPUT_CAP);
                        self.kept.drain(..over);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
    }

    /// Writes what the pipe takes of the state JSON; closes stdin when all is written or the
    /// hook closed its end (a hook need not read its stdin).
    fn feed(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        match stdin.write(self.input) {
            Ok(n) => self.input = &self.input[n..],
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {}
            Err(_) => self.input = &[],
        }
        if self.input.is_empty() {
            self.stdin = None;
        }
    }
}
