//! The table of containers and their processes, and the exit bookkeeping around it.
//!
//! One mutex guards the table, the count of launches in flight and the exits nobody has
//! claimed yet, so that "is this pid one of ours?" and "record this pid as ours" can never
//! interleave badly: an exit that lands before the process that made it is in the table (a
//! `warren exec` whose process dies at once, an init killed during create) is held as
//! unclaimed while any launch is in flight, and the launch claims it when it learns its pid.
//! The exits of the `warren` commands themselves reach their callers the same way.
//!
//! The lock guards only this bookkeeping, so that one tenant's slow request never holds up
//! another's: `warren` commands, waits for processes and I/O run outside it, and what an exit
//! leaves to do (killing the rest of a container) is handed back as an [`AfterExit`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;

use crate::error::{Result, ShimError};
use crate::events::{Event, Events};
use crate::stdio::{IoConfig, Terminal};

/// How a process ended: its exit code, or 128 + the signal that killed it.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit { status, at: SystemTime::now() }
    }

    pub fn timestamp(&self) -> MessageField<Timestamp> {
        timestamp(self.at)
    }
}

pub fn timestamp(at: SystemTime) -> MessageField<Timestamp> {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    })
}

#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Created,
    /// `Start` is running: an exit now is held back until the start event has been queued.
    Starting,
    Running,
    Exited(Exit),
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Exited(_) => "stopped",
        }
    }
}

/// The init (exec id "") or an exec of a container.
pub struct Process {
    pub exec_id: String,
    /// Host pid; 0 for an exec that has not started.
    pub pid: i32,
    pub io: IoConfig,
    pub phase: Phase,
    held_exit: Option<Exit>,
    pub terminal: Option<Terminal>,
    /// An exec's process as runtime-spec JSON.
    pub spec: Vec<u8>,
    /// Wakes the Waits on this process: at its exit, and when it leaves the table (dropped).
    /// One per process, so that an exit wakes its own waiters only, not every task's (under
    /// the CRI every container has a Wait pending).
    exit_changed: Arc<Condvar>,
}

impl Process {
    pub fn new(exec_id: &str, io: IoConfig, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.into(),
            pid: 0,
            io,
            phase: Phase::Created,
            held_exit: None,
            terminal: None,
            spec,
            exit_changed: Arc::new(Condvar::new()),
        }
    }

    pub fn exit(&self) -> Option<Exit> {
        match self.phase {
            Phase::Exited(e) => Some(e),
            _ => None,
        }
    }

    /// An exit found while starting: reported once the start event is out.
    pub fn hold_exit(&mut self, exit: Exit) {
        self.held_exit = Some(exit);
    }

    fn alive_with_pid(&self, pid: i32) -> bool {
        self.pid == pid && matches!(self.phase, Phase::Created | Phase::Starting | Phase::Running)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Its waiters find it gone (deleted) and return.
        self.exit_changed.notify_all();
    }
}

/// Where a container's `warren` binary and state live.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeConfig {
    pub binary: PathBuf,
    pub root: PathBuf,
}

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub runtime: RuntimeConfig,
    pub init: Process,
    pub execs: BTreeMap<String, Process>,
    pub paused: bool,
    /// Where the shim mounted the rootfs containerd handed over (unmounted at delete).
    pub rootfs_mount: Option<PathBuf>,
    /// No pid namespace of its own: the init's exit does not end the other processes.
    pub kill_all_on_exit: bool,
    pub hooks: Hooks,
    /// Checkpoint images the init is restored from at Start (created with a checkpoint, as
    /// runc's shim does it: no process exists until then).
    pub restore_from: Option<PathBuf>,
}

/// Which hooks of its config run at start and delete: those verbs then go through the
/// `warren` binary, whose children the hooks are; otherwise the shim does them in-process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hooks {
    pub poststart: bool,
    pub poststop: bool,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| ShimError::NoExec { id: self.id.clone(), exec_id: exec_id.into() })
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = &self.id;
        self.execs.get_mut(exec_id).ok_or_else(|| ShimError::NoExec { id: id.clone(), exec_id: exec_id.into() })
    }

    pub fn bad_state(&self, exec_id: &str, action: &'static str) -> ShimError {
        let state = self.process(exec_id).map(|p| p.phase.name()).unwrap_or("gone");
        ShimError::BadState { id: self.id.clone(), exec_id: exec_id.into(), action, state }
    }
}

pub struct Table {
    pub containers: HashMap<String, Container>,
    launches: usize,
    unclaimed: HashMap<i32, Exit>,
}

impl Table {
    pub fn container(&self, id: &str) -> Result<&Container> {
        self.containers.get(id).ok_or_else(|| ShimError::NoContainer { id: id.into() })
    }

    pub fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| ShimError::NoContainer { id: id.into() })
    }
}

pub struct Tasks {
    table: Mutex<Table>,
    /// Signalled at every exit, claimed or not: launches wait on it for their commands.
    changed: Condvar,
    pub events: Events,
}

impl Tasks {
    pub fn new(events: Events) -> Tasks {
        let table = Table { containers: HashMap::new(), launches: 0, unclaimed: HashMap::new() };
        Tasks { table: Mutex::new(table), changed: Condvar::new(), events }
    }

    pub fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic aborts the process (panic = "abort"): the lock is never poisoned.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Announces a child about to be spawned whose exit the caller will claim.
    pub fn launch(&self) -> Launch<'_> {
        self.lock().launches += 1;
        Launch { tasks: self }
    }

    /// The reaper's report of one exit.
    pub fn on_exit(&self, pid: i32, exit: Exit) {
        let mut after = AfterExit::default();
        let mut table = self.lock();
        let found = table.containers.values_mut().find_map(|c| {
            let exec = c.execs.values().find(|p| p.alive_with_pid(pid)).map(|p| p.exec_id.clone());
            match exec {
                Some(exec_id) => Some((c.id.clone(), exec_id)),
                None if c.init.alive_with_pid(pid) => Some((c.id.clone(), String::new())),
                None => None,
            }
        });
        match found {
            Some((id, exec_id)) => {
                if let Ok(c) = table.container_mut(&id) {
                    let held = c.process_mut(&exec_id).map(|p| matches!(p.phase, Phase::Starting)).unwrap_or(false);
                    if held {
                        let _ = c.process_mut(&exec_id).map(|p| p.held_exit = Some(exit));
                    } else {
                        after = self.finish(c, &exec_id, exit);
                    }
                }
            }
            None if table.launches > 0 => {
                table.unclaimed.insert(pid, exit);
            }
            None => log::debug!("reaped pid {pid} (not a container process), status {}", exit.status),
        }
        drop(table);
        self.changed.notify_all();
        after.run_aside();
    }

    /// Marks the process exited and queues its TaskExit. What is left to do goes to the
    /// caller, who runs it once the table's lock is released.
    pub fn finish(&self, c: &mut Container, exec_id: &str, exit: Exit) -> AfterExit {
        let Ok(p) = c.process_mut(exec_id) else { return AfterExit::default() };
        p.phase = Phase::Exited(exit);
        // Its relay finishes on its own; the shim keeps none of the terminal's descriptors.
        p.terminal = None;
        // The table's lock is held: its waiters return after the exit event is queued.
        p.exit_changed.notify_all();
        let pid = p.pid;
        self.events.send(Event::Exit(TaskExit {
            container_id: c.id.clone(),
            id: if exec_id.is_empty() { c.id.clone() } else { exec_id.into() },
            pid: pid as u32,
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            ..Default::default()
        }));
        // Without a pid namespace of its own nothing ends the rest of the container.
        let kill_rest = exec_id.is_empty() && c.kill_all_on_exit;
        AfterExit { kill_rest: kill_rest.then(|| (c.id.clone(), c.runtime.root.clone())) }
    }

    /// Ends `Starting`: the start event is queued by the caller first, then a held exit is
    /// reported.
    pub fn started(&self, c: &mut Container, exec_id: &str) -> AfterExit {
        let Ok(p) = c.process_mut(exec_id) else { return AfterExit::default() };
        p.phase = Phase::Running;
        match p.held_exit.take() {
            Some(exit) => self.finish(c, exec_id, exit),
            None => AfterExit::default(),
        }
    }

    /// Undoes `Starting` after a failed start.
    pub fn start_failed(&self, c: &mut Container, exec_id: &str) -> AfterExit {
        let Ok(p) = c.process_mut(exec_id) else { return AfterExit::default() };
        p.phase = Phase::Created;
        match p.held_exit.take() {
            Some(exit) => self.finish(c, exec_id, exit),
            None => AfterExit::default(),
        }
    }

    /// Blocks until the process has exited (`timeout` None = for ever).
    pub fn wait_exit(&self, id: &str, exec_id: &str, timeout: Option<Duration>) -> Result<Exit> {
        let until = timeout.map(|t| Instant::now() + t);
        let mut table = self.lock();
        loop {
            let p = table.container(id)?.process(exec_id)?;
            if let Some(exit) = p.exit() {
                return Ok(exit);
            }
            // Taken anew each time: the exec id may name a new process by now.
            let exit_changed = p.exit_changed.clone();
            table = match until {
                None => exit_changed.wait(table).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(table.container(id)?.bad_state(exec_id, "wait for"));
                    }
                    exit_changed.wait_timeout(table, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

/// What an exit leaves to do outside the table's lock: killing what is left of a container
/// without a pid namespace of its own takes the container's state lock (held by any `warren`
/// command on it) and may wait for its freezer, which must hold up no other task.
#[must_use = "run it once the table's lock is released"]
#[derive(Default)]
pub struct AfterExit {
    /// (container id, state root)
    kill_rest: Option<(String, PathBuf)>,
}

impl AfterExit {
    pub fn run(self) {
        let Some((id, root)) = self.kill_rest else { return };
        let rt = warren::container::Runtime::new(&root);
        if let Err(e) = rt.kill(&id, nix::sys::signal::Signal::SIGKILL, true) {
            log::debug!("kill the rest of {id}: {e}");
        }
    }

    /// [`AfterExit::run`] on a thread of its own, so that the reaper goes on reaping (every
    /// launch waits on it) while the kill waits for the container's state lock; on this
    /// thread when no thread can be had.
    fn run_aside(self) {
        let Some(kill_rest) = self.kill_rest.clone() else { return };
        let spawned = std::thread::Builder::new()
            .name("kill-rest".into())
            .stack_size(crate::SMALL_STACK)
            .spawn(move || AfterExit { kill_rest: Some(kill_rest) }.run());
        if let Err(e) = spawned {
            log::warn!("no thread for the kill after an exit ({e}): killing on the reaper");
            self.run();
        }
    }
}

/// A spawn in flight: while one exists, exits of unknown pids are kept for it.
pub struct Launch<'a> {
    tasks: &'a Tasks,
}

impl Launch<'_> {
    /// Blocks until the child `pid` has exited.
    pub fn wait(&self, pid: i32) -> Exit {
        let mut table = self.tasks.lock();
        loop {
            if let Some(exit) = table.unclaimed.remove(&pid) {
                return exit;
            }
            table = self.tasks.changed.wait(table).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// An exit of `pid` that already happened, if any.
    pub fn claim(&self, table: &mut Table, pid: i32) -> Option<Exit> {
        table.unclaimed.remove(&pid)
    }
}

impl Drop for Launch<'_> {
    fn drop(&mut self) {
        let mut table = self.tasks.lock();
        table.launches -= 1;
        if table.launches == 0 {
            table.unclaimed.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::TaskStart;
    use containerd_shim::protos::topics::{TASK_EXIT_EVENT_TOPIC, TASK_START_EVENT_TOPIC};

    fn container(id: &str, init_pid: i32, phase: Phase) -> Container {
        let mut init = Process::new("", IoConfig::default(), Vec::new());
        init.pid = init_pid;
        init.phase = phase;
        Container {
            id: id.into(),
            bundle: "/nonexistent".into(),
            runtime: RuntimeConfig { binary: "/nonexistent/warren".into(), root: "/nonexistent".into() },
            init,
            execs: BTreeMap::new(),
            paused: false,
            rootfs_mount: None,
            kill_all_on_exit: false,
            hooks: Hooks::default(),
            restore_from: None,
        }
    }

    #[test]
    fn an_exit_before_its_pid_is_known_is_kept_for_the_launch() {
        let (events, _) = Events::recorder();
        let tasks = Tasks::new(events);
        let launch = tasks.launch();
        tasks.on_exit(4242, Exit::now(3));
        assert_eq!(launch.wait(4242).status, 3);
        tasks.on_exit(4343, Exit::now(4));
        let mut table = tasks.lock();
        assert_eq!(launch.claim(&mut table, 4343).map(|e| e.status), Some(4));
        assert!(launch.claim(&mut table, 4343).is_none());
    }

    #[test]
    fn unknown_exits_are_not_kept_without_a_launch() {
        let (events, recorder) = Events::recorder();
        let tasks = Tasks::new(events);
        tasks.on_exit(4242, Exit::now(3));
        let launch = tasks.launch();
        assert!(launch.claim(&mut tasks.lock(), 4242).is_none());
        assert!(recorder.topics().is_empty());
    }

    #[test]
    fn an_exit_during_start_is_reported_after_the_start_event() {
        let (events, recorder) = Events::recorder();
        let tasks = Tasks::new(events);
        tasks.lock().containers.insert("c1".into(), container("c1", 77, Phase::Starting));
        tasks.on_exit(77, Exit::now(9));
        assert!(recorder.topics().is_empty(), "no exit before the start event");
        assert!(matches!(tasks.lock().container("c1").unwrap().init.phase, Phase::Starting));
        {
            let mut table = tasks.lock();
            let c = table.container_mut("c1").unwrap();
            tasks.events.send(Event::Start(TaskStart { container_id: "c1".into(), pid: 77, ..Default::default() }));
            tasks.started(c, "").run();
        }
        assert_eq!(recorder.topics(), [TASK_START_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC]);
        assert_eq!(tasks.wait_exit("c1", "", Some(Duration::from_secs(1))).unwrap().status, 9);
    }

    #[test]
    fn a_running_process_exit_is_reported_at_once() {
        let (events, recorder) = Events::recorder();
        let tasks = Tasks::new(events);
        tasks.lock().containers.insert("c1".into(), container("c1", 78, Phase::Running));
        tasks.on_exit(78, Exit::now(137));
        assert_eq!(recorder.topics(), [TASK_EXIT_EVENT_TOPIC]);
        assert_eq!(tasks.wait_exit("c1", "", None).unwrap().status, 137);
        let e = tasks.wait_exit("c2", "", None).err().unwrap().to_string();
        assert_eq!(e, "container c2: not found");
    }

    #[test]
    fn a_wait_returns_at_its_own_exit_or_when_its_task_is_deleted() {
        let (events, _recorder) = Events::recorder();
        let tasks = Arc::new(Tasks::new(events));
        for (id, pid) in [("c1", 81), ("c2", 82), ("c3", 83)] {
            tasks.lock().containers.insert(id.into(), container(id, pid, Phase::Running));
        }
        let waiter = |id: &'static str| {
            let tasks = tasks.clone();
            std::thread::spawn(move || tasks.wait_exit(id, "", None).map(|e| e.status).map_err(|e| e.to_string()))
        };
        let (w1, w2) = (waiter("c1"), waiter("c2"));
        std::thread::sleep(Duration::from_millis(50));
        tasks.on_exit(83, Exit::now(1));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!w1.is_finished() && !w2.is_finished(), "another task's exit ends no wait");
        tasks.on_exit(81, Exit::now(7));
        assert_eq!(w1.join().unwrap(), Ok(7));
        // Deleted before it exited (a restore that never ran): its wait ends at once.
        drop(tasks.lock().containers.remove("c2"));
        assert_eq!(w2.join().unwrap(), Err("container c2: not found".to_string()));
    }
}
