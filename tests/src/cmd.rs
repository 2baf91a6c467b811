//! Running a child process with a deadline, so that no test can hang.
//!
//! stdout and stderr go to files, not pipes: a detached container inherits
//! warren's stdio, and a pipe it keeps open would make a reader wait for the
//! container instead of for warren.

use std::fmt;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished (or killed) command produced.
#[derive(Debug, Clone)]
pub struct Out {
    pub cmdline: String,
    /// None when the command was killed at its deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// The exit code; a death by signal N is reported as 128+N like a shell.
    pub fn code(&self) -> Option<i32> {
        let s = self.status?;
        s.code().or_else(|| s.signal().map(|n| 128 + n))
    }

    /// Ok(self) when the command exited 0, else an error showing everything.
    pub fn ok(&self) -> Result<&Self> {
        if !self.success() {
            bail!("command failed: {self}");
        }
        Ok(self)
    }

    /// Ok(self) when the command exited non-zero in time (an expected failure).
    pub fn failed(&self) -> Result<&Self> {
        if self.success() || self.timed_out() {
            bail!("command should have failed: {self}");
        }
        Ok(self)
    }

    /// The last non-empty stderr line: where a runtime puts its error.
    pub fn error_line(&self) -> &str {
        self.stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "KILLED at deadline".to_string(),
        };
        write!(f, "`{}` -> {status}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.cmdline, self.stdout, self.stderr)
    }
}

/// Runs `cmd` with stdout/stderr captured into `out_base`.{stdout,stderr},
/// stdin from /dev/null unless already set, killing its whole process group
/// once `deadline` has passed.
pub fn run_with_deadline(mut cmd: Command, out_base: &Path, deadline: Duration) -> Result<Out> {
    let cmdline = format!("{cmd:?}");
    let (out_path, err_path) = (out_base.with_extension("stdout"), out_base.with_extension("stderr"));
    cmd.stdout(File::create(&out_path).context("stdout file")?)
        .stderr(File::create(&err_path).context("stderr file")?)
        // Own process group: on timeout we kill warren and anything it forked
        // that did not leave the group.
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmdline}"))?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > deadline {
            // SAFETY: kill(2) on the process group this child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        sleep(Duration::from_millis(5));
    };
    Ok(Out { cmdline, status, stdout: read_lossy(&out_path), stderr: read_lossy(&err_path) })
}

fn read_lossy(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// A Command with stdin from /dev/null (the default for everything here).
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    c
}

/// Makes `files` fds 3, 4, ... of the child `cmd` starts (without
/// close-on-exec), as a caller of `--preserve-fds` would.
pub fn pass_fds(cmd: &mut Command, files: &[&File]) {
    use std::os::fd::AsRawFd;
    let raw: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    // First every source is moved above the target range, so that placing
    // one file cannot overwrite another still to be placed.
    let high = 3 + raw.len() as i32 + 100;
    // SAFETY: only fcntl/dup2 between fork and exec, on fds this process
    // owns; the vector was made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, high + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..raw.len() as i32 {
                // dup2 clears close-on-exec on the new fd.
                if libc::dup2(high + i, 3 + i) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high + i);
            }
            Ok(())
        });
    }
}
