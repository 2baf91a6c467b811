//! Freezing and thawing a cgroup: v1 `freezer.state`, v2 `cgroup.freeze`/`cgroup.events`.

use std::path::Path;
use std::thread;
use std::time::Duration;

use super::{fs, CgroupError};

/// How many times a freeze is polled, and the longest sleep between polls (they start at 1ms).
const FREEZE_POLLS: u32 = 300;
const FREEZE_MAX_SLEEP: Duration = Duration::from_millis(10);
/// On v1, every this many polls that still read FREEZING, FROZEN is written again.
const V1_REWRITE_EVERY: u32 = 10;

/// The directory whose freezer files control the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freezer<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

impl Freezer<'_> {
    /// Freezes and waits until the kernel reports the cgroup frozen. On timeout the cgroup is
    /// thawed again (best effort) and [`CgroupError::FreezerTimeout`] returned.
    pub fn freeze(self) -> Result<(), CgroupError> {
        match self {
            Freezer::V1(dir) => freeze_v1(dir),
            Freezer::V2(dir) => freeze_v2(dir),
        }
    }

    /// Thaws. On v2 the write itself wakes every task before it returns, so nothing is waited
    /// for: cgroup.events' `frozen` key can stay at 1 after a thaw when tasks exited while the
    /// cgroup froze (seen on 6.18 with a child cgroup), and waiting on it would time out.
    pub fn thaw(self) -> Result<(), CgroupError> {
        match self {
            Freezer::V1(dir) => fs::write(&dir.join("freezer.state"), "THAWED"),
            Freezer::V2(dir) => fs::write(&dir.join("cgroup.freeze"), "0"),
        }
    }

    /// Whether the cgroup is frozen (v1 FREEZING counts as not frozen). On v2 a freeze must be
    /// asked for (`cgroup.freeze` 1) and reached (`frozen 1`), for the reason given at `thaw`.
    pub fn is_frozen(self) -> Result<bool, CgroupError> {
        match self {
            Freezer::V1(dir) => Ok(fs::read_trimmed(&dir.join("freezer.state"))? == "FROZEN"),
            Freezer::V2(dir) => Ok(fs::read_trimmed(&dir.join("cgroup.freeze"))? == "1" && v2_events_frozen(dir)?),
        }
    }
}

fn poll_sleep(poll: u32) -> Duration {
    Duration::from_millis(u64::from(poll) + 1).min(FREEZE_MAX_SLEEP)
}

fn freeze_v1(dir: &Path) -> Result<(), CgroupError> {
    let state = dir.join("freezer.state");
    fs::write(&state, "FROZEN")?;
    for poll in 0..FREEZE_POLLS {
        match fs::read_trimmed(&state)?.as_str() {
            "FROZEN" => return Ok(()),
            // Someone thawed it meanwhile, or the freeze stalls: ask again.
            "THAWED" => fs::write(&state, "FROZEN")?,
            _ if poll % V1_REWRITE_EVERY == V1_REWRITE_EVERY - 1 => fs::write(&state, "FROZEN")?,
            _ => {}
        }
        thread::sleep(poll_sleep(poll));
    }
    if let Err(e) = fs::write(&state, "THAWED") {
        log::warn!("cannot thaw after a freeze timed out: {e}");
    }
    Err(CgroupError::FreezerTimeout { path: state, state: "FROZEN" })
}

fn freeze_v2(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.freeze");
    if !control.exists() {
        return Err(CgroupError::ControllerMissing { path: dir.to_path_buf(), controller: "freezer".to_string() });
    }
    fs::write(&control, "1")?;
    wait_v2_frozen(dir).inspect_err(|_| {
        if let Err(e) = fs::write(&control, "0") {
            log::warn!("cannot thaw after a freeze timed out: {e}");
        }
    })
}

/// Polls cgroup.events until its `frozen` key says 1.
fn wait_v2_frozen(dir: &Path) -> Result<(), CgroupError> {
    for poll in 0..FREEZE_POLLS {
        if v2_events_frozen(dir)? {
            return Ok(());
        }
        thread::sleep(poll_sleep(poll));
    }
    Err(CgroupError::FreezerTimeout { path: dir.join("cgroup.events"), state: "frozen 1" })
}

/// The `frozen` key of `dir/cgroup.events`.
fn v2_events_frozen(dir: &Path) -> Result<bool, CgroupError> {
    let text = fs::read(&dir.join("cgroup.events"))?;
    Ok(text.lines().any(|line| line.split_whitespace().eq(["frozen", "1"])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{read_to_string, write};

    #[test]
    fn v1_freeze_thaw_on_fake_cgroupfs() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("freezer.state");
        write(&state, "THAWED\n").unwrap();
        let freezer = Freezer::V1(tmp.path());
        assert!(!freezer.is_frozen().unwrap());
        freezer.freeze().unwrap();
        assert_eq!(read_to_string(&state).unwrap(), "FROZEN\n");
        assert!(freezer.is_frozen().unwrap());
        freezer.thaw().unwrap();
        assert_eq!(read_to_string(&state).unwrap(), "THAWED\n");
    }

    #[test]
    fn v2_freeze_writes_cgroup_freeze_and_reads_events() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("cgroup.freeze"), "0\n").unwrap();
        write(tmp.path().join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        let freezer = Freezer::V2(tmp.path());
        freezer.freeze().unwrap();
        assert_eq!(read_to_string(tmp.path().join("cgroup.freeze")).unwrap(), "1\n");
        assert!(freezer.is_frozen().unwrap());
        write(tmp.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        freezer.thaw().unwrap();
        assert_eq!(read_to_string(tmp.path().join("cgroup.freeze")).unwrap(), "0\n");
        assert!(!freezer.is_frozen().unwrap());
    }

    #[test]
    fn v2_thaw_does_not_trust_a_stale_frozen_event() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("cgroup.freeze"), "1\n").unwrap();
        write(tmp.path().join("cgroup.events"), "populated 0\nfrozen 1\n").unwrap();
        let freezer = Freezer::V2(tmp.path());
        assert!(freezer.is_frozen().unwrap());
        freezer.thaw().unwrap();
        assert_eq!(read_to_string(tmp.path().join("cgroup.freeze")).unwrap(), "0\n");
        assert!(!freezer.is_frozen().unwrap());
    }

    #[test]
    fn v2_freeze_times_out_and_thaws() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("cgroup.freeze"), "0\n").unwrap();
        write(tmp.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        let err = Freezer::V2(tmp.path()).freeze().unwrap_err();
        assert!(
            matches!(&err, CgroupError::FreezerTimeout { path, state: "frozen 1" } if path.ends_with("cgroup.events"))
        );
        assert_eq!(read_to_string(tmp.path().join("cgroup.freeze")).unwrap(), "0\n");
    }

    #[test]
    fn v2_without_cgroup_freeze_is_missing_controller() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(Freezer::V2(tmp.path()).freeze(), Err(CgroupError::ControllerMissing { .. })));
    }
}
