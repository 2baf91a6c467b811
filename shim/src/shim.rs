//! The shim binary's three lives: `start` (find or spawn the shim process of the container's
//! group and print its address), the server (the task service), and `delete` (clean up after
//! a shim that is gone).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{api::DeleteResponse, Config, Error, ExitSignal, Flags, StartOpts};

use crate::events::Events;
use crate::service::Service;
use crate::supervisor::Supervisor;
use crate::tasks::{timestamp, Tasks};
use crate::{config, mounts};

/// Annotations that put containers into one shim process, in order of precedence.
pub const GROUP_ANNOTATIONS: [&str; 3] =
    ["io.containerd.runc.v2.group", "org.warren.group", "io.kubernetes.cri.sandbox-id"];

pub struct WarrenShim {
    namespace: String,
    id: String,
    bundle: String,
    socket: String,
    exit: Arc<ExitSignal>,
    events: Mutex<Option<Events>>,
}

impl containerd_shim::Shim for WarrenShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        WarrenShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
            events: Mutex::new(None),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = group_of(Path::new("config.json")).unwrap_or_else(|| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if !serving(&address) {
            spawn_server(&opts, &address)?;
        }
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = match self.bundle.is_empty() {
            true => std::env::current_dir().map_err(|err| Error::IoError { context: "cwd".into(), err })?,
            false => PathBuf::from(&self.bundle),
        };
        cleanup_lost(&bundle, &self.id);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: timestamp(std::time::SystemTime::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The library removes the socket named in the bundle's address file, which containerd
        // may have deleted by now: remove it here, from our own flags.
        let _ = std::fs::remove_file(socket_path(&self.socket));
        // The last Delete's event must reach containerd before the process goes.
        if let Some(events) = self.events.lock().ok().and_then(|e| e.clone()) {
            events.flush(Duration::from_secs(5));
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        // Events go through a connection of our own (see [`Events`]); the library's is let go.
        drop(publisher);
        self.task_service()
    }
}

impl WarrenShim {
    pub(crate) fn task_service(&self) -> Service {
        // Release builds abort on a panic; its reason goes to containerd's log (the server's
        // stderr is /dev/null) before every tenant of the process is lost.
        std::panic::set_hook(Box::new(|info| log::error!("shim panic: {info}")));
        let address = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        // The two `expect`s below run once, before the server listens: no task is hosted yet,
        // and the library's interface leaves no error to return. A shim without events or a
        // reaper could serve nobody; containerd sees its start fail.
        let events = Events::start(&address, self.namespace.clone()).expect("connect to containerd for events");
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events.clone());
        let tasks = Arc::new(Tasks::new(events));
        let supervisor = Supervisor::start(tasks.clone()).expect("start the reaper thread");
        Service { tasks, supervisor, namespace: self.namespace.clone(), exit: self.exit.clone() }
    }
}

/// The group named by the bundle's annotations, if any.
fn group_of(config_json: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Annotated {
        annotations: Option<HashMap<String, String>>,
    }
    let text = std::fs::read(config_json).ok()?;
    let annotations = serde_json::from_slice::<Annotated>(&text).ok()?.annotations?;
    GROUP_ANNOTATIONS.iter().find_map(|key| annotations.get(*key).filter(|v| !v.is_empty()).cloned())
}

/// Whether a shim answers on `address`.
pub(crate) fn serving(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(address)).is_ok()
}

/// The file of a shim's socket address (`unix:///run/containerd/s/...`).
pub(crate) fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Starts the server process (in its own process group, so that signals meant for
/// containerd's group do not reach it) and waits until it serves or gives up.
fn spawn_server(opts: &StartOpts, address: &str) -> containerd_shim::Result<()> {
    let exe = std::env::current_exe().map_err(|err| Error::IoError { context: "own executable".into(), err })?;
    let mut cmd = Command::new(exe);
    cmd.args(["-namespace", &opts.namespace, "-id", &opts.id, "-address", &opts.address, "-socket", address])
        // One malloc arena: the shim is mostly idle, and each arena costs resident memory.
        .env("MALLOC_ARENA_MAX", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    if opts.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().map_err(|err| Error::IoError { context: "spawn the shim server".into(), err })?;
    // The server closes its stdout once it listens (or when it exits).
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut Vec::new());
    }
    // Still running: it serves. Gone: another server of the group may have won the race.
    match child.try_wait() {
        Ok(None) => Ok(()),
        _ if serving(address) => Ok(()),
        _ => Err(Error::Other(format!("shim server for {} did not come up on {address}", opts.id))),
    }
}

/// `shim delete` after the shim is gone: force-delete the container (its processes, cgroup
/// and state) and unmount its rootfs. Errors are logged: containerd goes on regardless.
fn cleanup_lost(bundle: &Path, id: &str) {
    match config::load(bundle) {
        Ok(rt) => {
            let status = Command::new(&rt.binary)
                .arg("--root")
                .arg(&rt.root)
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => log::warn!("warren delete --force {id}: {s}"),
                Err(e) => log::warn!("warren delete --force {id}: {e}"),
            }
        }
        Err(e) => log::warn!("container {id}: {e}"),
    }
    if let Err(e) = mounts::unmount_all(&bundle.join("rootfs")) {
        log::warn!("{e}");
    }
    // A killed shim leaves its socket behind; one that still serves (a group's) keeps it.
    if let Ok(address) = std::fs::read_to_string(bundle.join("address")) {
        let address = address.trim();
        if !serving(address) {
            let _ = std::fs::remove_file(socket_path(address));
        }
    }
}
