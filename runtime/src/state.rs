//! What the runtime remembers about a container between commands:
//! `<root>/<id>/state.json`, written atomically under a per-container lock.

use crate::cgroups::Cgroup;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container does not exist")]
    NotFound { id: String },
    #[error("container with id {id} already exists")]
    Exists { id: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt state: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// The spec's container statuses, plus runc's `paused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn can_start(self) -> bool {
        self == Status::Created
    }
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }
    /// Without --force only containers that hold no running process may go.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Created | Status::Stopped)
    }
    pub fn can_pause(self) -> bool {
        matches!(self, Status::Running | Status::Created)
    }
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }
    pub fn can_exec(self) -> bool {
        matches!(self, Status::Created | Status::Running)
    }
    /// Every status whose processes (and cgroup) still exist.
    pub fn can_update(self) -> bool {
        self.can_kill()
    }
    /// CRIU dumps a live tree; a paused one is dumped as it stands.
    pub fn can_checkpoint(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
    /// A move freezes the container itself, and resumes it on failure: it must be running.
    pub fn can_migrate(self) -> bool {
        self == Status::Running
    }
    /// Stopped: its init is gone, whatever else its cgroup still holds.
    pub fn is_stopped(self) -> bool {
        self == Status::Stopped
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The persistent record of one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// Host pid of the container's init; 0 while it is being created.
    pub pid: i32,
    /// Start time of `pid`, so a recycled pid is never mistaken for ours.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub cgroup: Option<Cgroup>,
    pub config: oci_spec::runtime::Spec,
}

impl State {
    /// True if the recorded init is still alive (not a zombie, not a recycled pid).
    pub fn init_alive(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(text) => matches!(crate::sys::parse_stat(&text),
                Ok((st, start)) if start == self.pid_start_time && st != 'Z' && st != 'X'),
            Err(_) => false,
        }
    }
}

/// An exclusive flock on the container's directory, held for a whole command.
#[derive(Debug)]
pub struct DirLock {
    _lock: nix::fcntl::Flock<File>,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock, StateError> {
        let file = File::open(dir).map_err(io_err(dir))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| StateError::Io { path: dir.into(), source: e.into() })?;
        Ok(DirLock { _lock: lock })
    }
}

pub fn read_state(dir: &Path, id: &str) -> Result<State, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::NotFound { id: id.into() }),
        Err(e) => return Err(StateError::Io { path, source: e }),
    };
    serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
}

/// Readers see the old or the new state, never half. Owner-only: it holds the whole spec,
/// process.env (secrets) included.
pub fn write_state(dir: &Path, state: &State) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_vec(state).map_err(|source| StateError::Corrupt { path: path.clone(), source })?;
    crate::atomic_file::write(&path, &text, STATE_FILE_MODE).map_err(io_err(&path))
}

/// Modes of the state root, each container's directory and its state file, as runc's.
pub const STATE_DIR_MODE: u32 = 0o700;
pub const STATE_FILE_MODE: u32 = 0o600;

/// RFC 3339 UTC timestamp with nanoseconds, as runc prints `created`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn transitions() {
        assert!(Status::Created.can_start());
        assert!(!Status::Running.can_start());
        assert!(Status::Created.can_kill() && !Status::Stopped.can_kill());
        assert!(Status::Stopped.can_delete() && !Status::Running.can_delete());
        assert!(Status::Paused.can_resume() && !Status::Running.can_resume());
    }
}
