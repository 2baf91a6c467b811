//! Create, Start, Exec and Delete: the RPCs that run `warren` and move processes through
//! their phases. Each takes the task table's lock only around its own bookkeeping, never
//! while a `warren` command runs.

use std::path::{Path, PathBuf};

use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::shim::{CreateTaskRequest, DeleteResponse, ExecProcessRequest};

use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::runner::{read_pid, Runner, Spawn};
use crate::service::Service;
use crate::stdio::{ConsoleSocket, IoConfig, Stdio, Terminal};
use crate::tasks::{AfterExit, Container, Exit, Hooks, Launch, Phase, Process, RuntimeConfig};
use crate::{config, mounts};
use warren::failpoint::failpoint;

/// How long Delete waits for a created (never started) init to die after `warren delete`.
const KILLED_INIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Service {
    pub(crate) fn do_create(&self, req: &CreateTaskRequest) -> Result<u32> {
        if self.tasks.lock().containers.contains_key(&req.id) {
            return Err(ShimError::ContainerExists { id: req.id.clone() });
        }
        if !req.checkpoint.is_empty() {
            crate::checkpoint::check_restore(req)?;
        }
        let bundle = PathBuf::from(&req.bundle);
        let runtime = config::from_options(req.options.as_ref(), &self.namespace)?;
        config::save(&bundle, &runtime)?;
        let rootfs = bundle.join("rootfs");
        let in_container = mounts::as_overlay_annotation(&req.rootfs);
        let mounted = !req.rootfs.is_empty() && in_container.is_none();
        if let Some(value) = in_container {
            std::fs::create_dir_all(&rootfs).map_err(ShimError::io(&rootfs))?;
            mounts::annotate_bundle(&bundle, value)?;
        } else if mounted {
            mounts::mount_rootfs(&req.rootfs, &rootfs)?;
        }
        failpoint("shim.create.rootfs-mounted");
        let io = IoConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let created = self.create_container(req, &bundle, runtime, io, mounted.then_some(rootfs.clone()));
        if created.is_err() && mounted {
            let _ = mounts::unmount_all(&rootfs);
        }
        created
    }

    fn create_container(
        &self,
        req: &CreateTaskRequest,
        bundle: &Path,
        runtime: RuntimeConfig,
        io: IoConfig,
        rootfs_mount: Option<PathBuf>,
    ) -> Result<u32> {
        let id = req.id.as_str();
        let bundle_config = BundleConfig::load(bundle)?;
        let runner = Runner::new(&runtime, id, bundle);
        let launch = self.tasks.launch();
        // With a checkpoint nothing runs before Start, which restores it (as runc's shim does).
        let restore_from = (!req.checkpoint.is_empty()).then(|| PathBuf::from(&req.checkpoint));
        let (pid, terminal) = match restore_from {
            Some(_) => (0, None),
            None => self.spawn(&launch, &runner, &io, bundle, Verb::Create)?,
        };
        failpoint("shim.create.runtime-done");
        let mut table = self.tasks.lock();
        let mut init = Process::new("", io.clone(), Vec::new());
        init.pid = pid;
        init.terminal = terminal;
        let early_exit = launch.claim(&mut table, pid);
        let mut c = Container {
            id: id.into(),
            bundle: bundle.into(),
            runtime: runtime.clone(),
            init,
            execs: Default::default(),
            paused: false,
            rootfs_mount,
            kill_all_on_exit: !bundle_config.own_pid_namespace(),
            hooks: bundle_config.hooks(),
            restore_from,
        };
        self.tasks.events.send(Event::Create(TaskCreate {
            container_id: id.into(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: io.stdin,
                stdout: io.stdout,
                stderr: io.stderr,
                terminal: io.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        }));
        let after = match early_exit {
            Some(exit) => self.tasks.finish(&mut c, "", exit),
            None => AfterExit::default(),
        };
        let restoring = c.restore_from.is_some();
        table.containers.insert(id.into(), c);
        drop(table);
        drop(launch);
        after.run();
        if !restoring {
            self.supervisor.watch_oom(id, &runtime.root);
        }
        Ok(pid as u32)
    }

    /// Runs `warren create`, `exec` or `restore`, and takes over the terminal.
    fn spawn(
        &self,
        launch: &Launch,
        runner: &Runner,
        io: &IoConfig,
        bundle: &Path,
        verb: Verb,
    ) -> Result<(i32, Option<Terminal>)> {
        let console = if io.terminal { Some(ConsoleSocket::new()?) } else { None };
        let stdio = if io.terminal { Stdio::null()? } else { Stdio::open(io, runner.id, &self.namespace)? };
        let console_path = console.as_ref().map(|c| c.path());
        let init_pid_file = bundle.join("init.pid");
        let pid_file = match verb {
            Verb::Exec { pid_file, .. } => pid_file,
            _ => init_pid_file.as_path(),
        };
        let spawn = Spawn { pid_file, console_socket: console_path.as_deref(), stdio: Some(stdio) };
        match verb {
            Verb::Create => runner.create(launch, bundle, spawn)?,
            Verb::Exec { process_json, .. } => runner.exec(launch, process_json, spawn)?,
            Verb::Restore { images } => {
                runner.restore(launch, bundle, images, &crate::checkpoint::work_dir(bundle), spawn)?
            }
        }
        let started = match read_pid(pid_file) {
            Err(e) => Err((None, e)),
            Ok(pid) => match &console {
                None => Ok((pid, None)),
                Some(c) => match c.receive().and_then(|master| Terminal::start(master, io)) {
                    Ok(terminal) => Ok((pid, Some(terminal))),
                    Err(e) => Err((Some(pid), e)),
                },
            },
        };
        started.map_err(|(pid, e)| {
            // The console socket goes first: when descriptors ran out, the undoing needs the
            // ones it holds.
            drop(console);
            undo_spawn(launch, runner, &verb, pid);
            e
        })
    }

    pub(crate) fn do_start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (runtime, bundle, hooks, io, spec, restore_from) = {
            let mut table = self.tasks.lock();
            let c = table.container_mut(id)?;
            if !matches!(c.process(exec_id)?.phase, Phase::Created) {
                return Err(c.bad_state(exec_id, "start"));
            }
            let (runtime, bundle, hooks) = (c.runtime.clone(), c.bundle.clone(), c.hooks);
            let restore_from = c.restore_from.clone().filter(|_| exec_id.is_empty());
            let p = c.process_mut(exec_id)?;
            p.phase = Phase::Starting;
            (runtime, bundle, hooks, p.io.clone(), p.spec.clone(), restore_from)
        };
        failpoint(if exec_id.is_empty() { "shim.start.begun" } else { "shim.exec.begun" });
        let runner = Runner::new(&runtime, id, &bundle);
        let launch = self.tasks.launch();
        let result = if let Some(images) = &restore_from {
            self.spawn(&launch, &runner, &io, &bundle, Verb::Restore { images }).map(Some)
        } else if exec_id.is_empty() && !hooks.poststart {
            // Nothing to run: release the init in-process, one exec of `warren` fewer.
            warren::container::Runtime::new(&runtime.root).start(id).map(|()| None).map_err(ShimError::from)
        } else if exec_id.is_empty() {
            runner.start(&launch).map(|()| None)
        } else {
            self.start_exec(&launch, &runner, &bundle, exec_id, &io, &spec).map(Some)
        };
        failpoint(if exec_id.is_empty() { "shim.start.runtime-done" } else { "shim.exec.runtime-done" });
        let mut table = self.tasks.lock();
        let claimed = match &result {
            Ok(Some((pid, _))) => launch.claim(&mut table, *pid),
            _ => None,
        };
        let c = table.container_mut(id)?;
        let (pid, terminal) = match result {
            Err(e) => {
                let after = self.tasks.start_failed(c, exec_id);
                drop(table);
                after.run();
                return Err(e);
            }
            Ok(None) => (c.init.pid, None),
            Ok(Some(started)) => started,
        };
        if restore_from.is_some() {
            c.restore_from = None;
        }
        let p = c.process_mut(exec_id)?;
        if !exec_id.is_empty() || restore_from.is_some() {
            p.pid = pid;
            p.terminal = terminal;
        }
        if let Some(exit) = claimed {
            p.hold_exit(exit);
        }
        let event = if exec_id.is_empty() {
            Event::Start(TaskStart { container_id: id.into(), pid: pid as u32, ..Default::default() })
        } else {
            let e = TaskExecStarted {
                container_id: id.into(),
                exec_id: exec_id.into(),
                pid: pid as u32,
                ..Default::default()
            };
            Event::ExecStarted(e)
        };
        self.tasks.events.send(event);
        let after = self.tasks.started(c, exec_id);
        drop(table);
        after.run();
        if restore_from.is_some() {
            self.supervisor.watch_oom(id, &runtime.root);
        }
        Ok(pid as u32)
    }

    fn start_exec(
        &self,
        launch: &Launch,
        runner: &Runner,
        bundle: &Path,
        exec_id: &str,
        io: &IoConfig,
        spec: &[u8],
    ) -> Result<(i32, Option<Terminal>)> {
        let process_json = bundle.join(format!(".exec-{exec_id}.json"));
        let pid_file = bundle.join(format!(".exec-{exec_id}.pid"));
        std::fs::write(&process_json, spec).map_err(ShimError::io(&process_json))?;
        let started =
            self.spawn(launch, runner, io, bundle, Verb::Exec { process_json: &process_json, pid_file: &pid_file });
        let _ = std::fs::remove_file(&process_json);
        let _ = std::fs::remove_file(&pid_file);
        started
    }

    pub(crate) fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        if let Err(e) = serde_json::from_slice::<oci_spec::runtime::Process>(&spec) {
            return Err(ShimError::BadRequest { field: "spec", reason: format!("not a runtime-spec process: {e}") });
        }
        let io = IoConfig {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut table = self.tasks.lock();
        let c = table.container_mut(&req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(ShimError::ExecExists { id: req.id.clone(), exec_id: req.exec_id.clone() });
        }
        // A task created from a checkpoint has no process to join before Start.
        if !matches!(c.init.phase, Phase::Created | Phase::Running) || c.restore_from.is_some() {
            return Err(c.bad_state("", "exec in"));
        }
        c.execs.insert(req.exec_id.clone(), Process::new(&req.exec_id, io, spec));
        let event = TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.tasks.events.send(Event::ExecAdded(event));
        Ok(())
    }

    pub(crate) fn do_delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        if !exec_id.is_empty() {
            return self.delete_exec(id, exec_id);
        }
        let (runtime, bundle, hooks, was_started, never_restored) = {
            let table = self.tasks.lock();
            let c = table.container(id)?;
            if matches!(c.init.phase, Phase::Starting | Phase::Running) {
                return Err(c.bad_state("", "delete"));
            }
            let was_started = !matches!(c.init.phase, Phase::Created);
            (c.runtime.clone(), c.bundle.clone(), c.hooks, was_started, c.restore_from.is_some())
        };
        let deleted = match (never_restored, hooks.poststop) {
            // Warren never knew it: there is nothing to delete, and no process to wait for.
            (true, _) => Ok(()),
            (false, true) => Runner::new(&runtime, id, &bundle).delete(&self.tasks.launch(), false),
            // No hook to run: delete in-process.
            (false, false) => warren::container::Runtime::new(&runtime.root).delete(id, false).map_err(ShimError::from),
        };
        if let Err(e) = deleted {
            if runtime.root.join(id).exists() {
                return Err(e);
            }
            log::warn!("{e} (its state is gone already)");
        }
        failpoint("shim.delete.runtime-done");
        // A created init dies by `warren delete`; its exit is the task's.
        let exit = match (was_started, never_restored) {
            (_, true) => Some(Exit::now(0)),
            (true, false) => None,
            (false, false) => self.tasks.wait_exit(id, "", Some(KILLED_INIT_GRACE)).ok(),
        };
        self.supervisor.unwatch_oom(id);
        let mut table = self.tasks.lock();
        let c = table.containers.remove(id).ok_or_else(|| ShimError::NoContainer { id: id.into() })?;
        drop(table);
        if let Some(target) = &c.rootfs_mount {
            mounts::unmount_all(target)?;
        }
        failpoint("shim.delete.unmounted");
        let exit = c.init.exit().or(exit).unwrap_or_else(|| Exit::now(128 + libc::SIGKILL as u32));
        let response = DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            ..Default::default()
        };
        self.tasks.events.send(Event::Delete(TaskDelete {
            container_id: id.into(),
            pid: c.init.pid as u32,
            exit_status: exit.status,
            exited_at: exit.timestamp(),
            id: id.into(),
            ..Default::default()
        }));
        Ok(response)
    }

    fn delete_exec(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let mut table = self.tasks.lock();
        let c = table.container_mut(id)?;
        let p = c.process(exec_id)?;
        if matches!(p.phase, Phase::Starting | Phase::Running) {
            return Err(c.bad_state(exec_id, "delete"));
        }
        let p = c.execs.remove(exec_id).ok_or_else(|| ShimError::NoExec { id: id.into(), exec_id: exec_id.into() })?;
        let exit = p.exit();
        Ok(DeleteResponse {
            pid: p.pid as u32,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map_or_else(MessageField::none, |e| e.timestamp()),
            ..Default::default()
        })
    }
}

/// Nothing half-made stays behind a failed spawn: a container is deleted, an exec's process
/// (which lost its terminal) killed.
fn undo_spawn(launch: &Launch, runner: &Runner, verb: &Verb, pid: Option<i32>) {
    match (verb, pid) {
        (Verb::Exec { .. }, Some(pid)) => {
            if let Err(e) = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL) {
                log::warn!("kill exec pid {pid} of {}: {e}", runner.id);
            }
        }
        (Verb::Exec { .. }, None) => {}
        _ => {
            if let Err(e) = runner.delete(launch, true) {
                log::warn!("{e}");
            }
        }
    }
}

/// What [`Service::spawn`] runs.
enum Verb<'a> {
    Create,
    Exec {
        process_json: &'a Path,
        pid_file: &'a Path,
    },
    /// `warren restore` of these checkpoint images.
    Restore {
        images: &'a Path,
    },
}

/// What the shim needs from the bundle's config.json, without parsing all of it.
#[derive(serde::Deserialize)]
struct BundleConfig {
    linux: Option<LinuxPart>,
    hooks: Option<HooksPart>,
}

#[derive(serde::Deserialize)]
struct LinuxPart {
    namespaces: Option<Vec<NamespacePart>>,
}

#[derive(serde::Deserialize)]
struct NamespacePart {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
}

#[derive(serde::Deserialize)]
struct HooksPart {
    poststart: Option<Vec<serde::de::IgnoredAny>>,
    poststop: Option<Vec<serde::de::IgnoredAny>>,
}

impl BundleConfig {
    fn load(bundle: &Path) -> Result<BundleConfig> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(ShimError::io(&path))?;
        serde_json::from_slice(&text)
            .map_err(|e| ShimError::BadRequest { field: "bundle config.json", reason: e.to_string() })
    }

    /// A pid namespace made for the container (not joined by path).
    fn own_pid_namespace(&self) -> bool {
        let namespaces = self.linux.as_ref().and_then(|l| l.namespaces.as_deref()).unwrap_or_default();
        namespaces.iter().any(|ns| ns.kind == "pid" && ns.path.as_deref().unwrap_or_default().is_empty())
    }

    fn hooks(&self) -> Hooks {
        let has = |list: &Option<Vec<serde::de::IgnoredAny>>| list.as_ref().is_some_and(|l| !l.is_empty());
        Hooks {
            poststart: self.hooks.as_ref().is_some_and(|h| has(&h.poststart)),
            poststop: self.hooks.as_ref().is_some_and(|h| has(&h.poststop)),
        }
    }
}
