//! `events`: a live container's usage counters at an interval, and its out-of-memory events
//! as they happen, until the container stops.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::cgroups::oom::OomWatcher;
use crate::cgroups::stats::Stats;
use crate::container::{ContainerError, Runtime};

pub enum Event {
    Stats(Box<Stats>),
    Oom,
}

/// How often the container's status is looked at between stats, so that the watch ends soon
/// after the container stops however long the interval.
const STATUS_CHECK: Duration = Duration::from_millis(250);

/// Calls `emit` with the container's stats every `interval` and at each OOM, until the
/// container stops or is deleted (Ok) or `emit` returns false (the reader went away).
/// OOMs are looked for once more after the stop, as the OOM kill of the init is what stops
/// many containers.
pub fn watch(
    rt: &Runtime,
    id: &str,
    interval: Duration,
    mut emit: impl FnMut(Event) -> bool,
) -> Result<(), ContainerError> {
    let cgroup = rt.live_cgroup(id)?;
    let mut oom = OomWatcher::new(&cgroup)?;
    let mut next_stats = Instant::now() + interval;
    loop {
        let wait = next_stats.saturating_duration_since(Instant::now()).min(STATUS_CHECK);
        if wait_readable(oom.as_ref(), wait)? && !report_oom(oom.as_mut(), &mut emit) {
            return Ok(());
        }
        if !is_live(rt, id)? {
            report_oom(oom.as_mut(), &mut emit);
            return Ok(());
        }
        if Instant::now() >= next_stats {
            next_stats += interval;
            let stats = match cgroup.stats() {
                Ok(stats) => stats,
                // Removed between the status check and the read: the container is gone.
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            if !emit(Event::Stats(Box::new(stats))) {
                return Ok(());
            }
        }
    }
}

/// Sleeps up to `wait`; true when the watcher's fd became readable.
fn wait_readable(oom: Option<&OomWatcher>, wait: Duration) -> Result<bool, ContainerError> {
    let Some(oom) = oom else {
        std::thread::sleep(wait);
        return Ok(false);
    };
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    let fd = oom.fd();
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(ContainerError::Io { path: "poll".into(), source: e.into() }),
    }
}

/// Emits an OOM event if one happened; false when `emit` wants no more.
fn report_oom(oom: Option<&mut OomWatcher>, emit: &mut impl FnMut(Event) -> bool) -> bool {
    match oom.map(OomWatcher::take) {
        Some(Ok(true)) => emit(Event::Oom),
        Some(Err(e)) if !e.is_not_found() => {
            log::warn!("cannot read the OOM counter: {e}");
            true
        }
        _ => true,
    }
}

fn is_live(rt: &Runtime, id: &str) -> Result<bool, ContainerError> {
    match rt.state(id) {
        Ok(view) => Ok(!view.status.is_stopped()),
        Err(ContainerError::State(crate::state::StateError::NotFound { .. })) => Ok(false),
        Err(e) => Err(e),
    }
}
