//! Notice of out-of-memory events in a container's memory cgroup, as a pollable fd.
//!
//! v1: an eventfd registered through cgroup.event_control on memory.oom_control; the kernel
//! signals it at each OOM of the cgroup (also with the OOM killer disabled), and once more
//! when the cgroup is removed, which [`OomWatcher::take`] tells apart by the cgroup being
//! gone. v2: inotify on memory.events, whose `oom_kill` counter says how many processes the
//! OOM killer took (the file changes for other reasons too, such as `max` or `high` events).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::resources::{find_dir, Dir};
use super::{fs, Cgroup, CgroupError};

pub struct OomWatcher {
    wake: Wake,
    /// The memory cgroup directory.
    dir: PathBuf,
    /// v2: the `oom_kill` count seen last.
    seen: u64,
}

enum Wake {
    V1(EventFd),
    V2(Inotify),
}

impl OomWatcher {
    /// None when the container has no memory controller.
    pub fn new(cgroup: &Cgroup) -> Result<Option<OomWatcher>, CgroupError> {
        match find_dir(cgroup, "memory", Some("memory"))? {
            Some(Dir::V1(dir)) => Self::v1(dir).map(Some),
            Some(Dir::V2(dir)) => Self::v2(dir).map(Some),
            None => Ok(None),
        }
    }

    fn v1(dir: &Path) -> Result<OomWatcher, CgroupError> {
        let control = dir.join("memory.oom_control");
        let sys = |source: nix::Error| CgroupError::Read { path: control.clone(), source: source.into() };
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).map_err(sys)?;
        let file =
            std::fs::File::open(&control).map_err(|source| CgroupError::Read { path: control.clone(), source })?;
        // The kernel takes its own references to both files during the write.
        let registration = format!("{} {}", efd.as_fd().as_raw_fd(), file.as_raw_fd());
        fs::write(&dir.join("cgroup.event_control"), &registration)?;
        Ok(OomWatcher { wake: Wake::V1(efd), dir: dir.to_path_buf(), seen: 0 })
    }

    fn v2(dir: &Path) -> Result<OomWatcher, CgroupError> {
        let events = dir.join("memory.events");
        let sys = |source: nix::Error| CgroupError::Read { path: events.clone(), source: source.into() };
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(sys)?;
        inotify.add_watch(&events, AddWatchFlags::IN_MODIFY).map_err(sys)?;
        let seen = oom_kills(&events)?;
        Ok(OomWatcher { wake: Wake::V2(inotify), dir: dir.to_path_buf(), seen })
    }

    /// Readable when [`OomWatcher::take`] may have something.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.wake {
            Wake::V1(efd) => efd.as_fd(),
            Wake::V2(inotify) => inotify.as_fd(),
        }
    }

    /// Whether an OOM happened since the last call; never blocks. An error that
    /// [`CgroupError::is_not_found`] means the cgroup is gone.
    pub fn take(&mut self) -> Result<bool, CgroupError> {
        match &self.wake {
            Wake::V1(efd) => {
                let signalled = efd.read().is_ok_and(|n| n > 0);
                // The removal of the cgroup signals too: then the directory is gone.
                fs::read(&self.dir.join("memory.oom_control"))?;
                Ok(signalled)
            }
            Wake::V2(inotify) => {
                // Drain the queue; the counter says what happened.
                while inotify.read_events().is_ok_and(|events| !events.is_empty()) {}
                let kills = oom_kills(&self.dir.join("memory.events"))?;
                let new = kills > self.seen;
                self.seen = kills;
                Ok(new)
            }
        }
    }
}

fn oom_kills(events: &Path) -> Result<u64, CgroupError> {
    let text = fs::read(events)?;
    let count = text.lines().find_map(|line| line.strip_prefix("oom_kill ")).unwrap_or("0").trim();
    count.parse().map_err(|_| CgroupError::Parse { path: events.to_path_buf(), line: count.to_string() })
}
