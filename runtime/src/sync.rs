//! The typed protocol between the runtime (parent, on the host) and the
//! container init it spawned. Each side holds one end of a socketpair; every
//! message is a length-prefixed JSON value of [`ToInit`] or [`FromInit`], and
//! the methods below read as the protocol's steps.

use crate::affinity::ExecAffinity;
use crate::cgroups::Cgroup;
use crate::mempolicy::MemPolicy;
use crate::namespaces::NamespacePlan;
use oci_spec::runtime::{Process, Spec};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("sync with container init: {step}: {source}")]
    Io { step: &'static str, source: std::io::Error },
    #[error("sync with container init: {step}: bad message: {source}")]
    Decode { step: &'static str, source: serde_json::Error },
    #[error("sync with container init: expected {expected}, got {got}")]
    Unexpected { expected: &'static str, got: String },
    #[error("container init exited before it was ready ({step})")]
    Closed { step: &'static str },
    /// The init reported a failure: its message goes to the user unchanged.
    #[error("{message}")]
    Init { message: String },
}

/// What a new container needs beyond the process: where its rootfs is and
/// how `start` will release it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateSetup {
    pub rootfs: PathBuf,
    pub bundle: PathBuf,
    /// Inherited read end of the exec fifo: `start` writes one byte into it.
    pub exec_fifo_fd: RawFd,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// Inherited detached overlay mount (`rootfs::overlay`) to attach at `rootfs`.
    pub rootfs_mount_fd: Option<RawFd>,
}

/// Everything the init gets from the runtime, in the first sync message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// For exec, the container's config with `process` replaced.
    pub spec: Spec,
    pub namespaces: NamespacePlan,
    /// None for exec: the process joins a container that is already set up.
    pub create: Option<CreateSetup>,
    pub cgroup: Option<Cgroup>,
    /// False while the runtime still builds the cgroup: the init then waits
    /// for CgroupReady before it joins (the two overlap for a faster create).
    pub cgroup_ready: bool,
    /// Inherited --console-socket connection, when process.terminal is set.
    pub console_fd: Option<RawFd>,
    pub preserve_fds: u32,
    /// linux.memoryPolicy, checked by the runtime against the host's nodes.
    pub mempolicy: Option<MemPolicy>,
    /// process.execCPUAffinity, parsed.
    pub affinity: ExecAffinity,
    /// The container asks for KSM merging of its memory (crate::memory_merge).
    pub memory_merge: bool,
}

impl InitConfig {
    /// Descriptors the init inherits from the runtime (besides stdio).
    pub fn inherited_fds(&self) -> Vec<RawFd> {
        let create = self.create.as_ref();
        let from_create = create.map(|c| c.exec_fifo_fd).into_iter().chain(create.and_then(|c| c.rootfs_mount_fd));
        self.console_fd.into_iter().chain(from_create).collect()
    }

    pub(crate) fn process(&self) -> &Process {
        self.spec.process().as_ref().expect("validated by the runtime")
    }
}

/// Messages the runtime sends to the init.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    Config(Box<InitConfig>),
    /// The container's cgroup exists with its limits: the init may join it.
    CgroupReady,
    IdMapsWritten,
    /// The runtime ran prestart and createRuntime hooks; here is the state
    /// JSON the init hands to createContainer and startContainer hooks.
    HooksDone {
        state: String,
    },
}

/// Messages the init sends to the runtime.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromInit {
    /// Stage 1 made a new user namespace: the runtime writes its id maps.
    NeedIdMaps {
        pid: i32,
    },
    /// Host pid of the process that becomes the container's process.
    Pid {
        pid: i32,
    },
    /// The container's mounts are in place: run prestart/createRuntime hooks.
    RunCreateRuntimeHooks,
    /// Everything is set up; the process waits for `start` (or execs now).
    Ready,
    Error {
        message: String,
    },
}

const MAX_MESSAGE: u32 = 64 << 20;

/// One end of the channel.
pub struct Channel {
    stream: UnixStream,
}

impl Channel {
    pub fn pair() -> std::io::Result<(Channel, Channel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel { stream: a }, Channel { stream: b }))
    }

    /// Adopts an inherited descriptor (the init side, after exec).
    ///
    /// # Safety
    /// `fd` must be an open socket that nothing else owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        // SAFETY: guaranteed by the caller.
        Channel { stream: UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }) }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn send<T: Serialize>(&mut self, step: &'static str, msg: &T) -> Result<(), SyncError> {
        let body = serde_json::to_vec(msg).map_err(|source| SyncError::Decode { step, source })?;
        let mut buf = Vec::with_capacity(body.len() + 4);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&body);
        self.stream.write_all(&buf).map_err(|source| SyncError::Io { step, source })
    }

    fn recv<T: DeserializeOwned>(&mut self, step: &'static str) -> Result<T, SyncError> {
        let mut len = [0u8; 4];
        if let Err(e) = self.stream.read_exact(&mut len) {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => SyncError::Closed { step },
                _ => SyncError::Io { step, source: e },
            });
        }
        let len = u32::from_le_bytes(len).min(MAX_MESSAGE) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(|_| SyncError::Closed { step })?;
        serde_json::from_slice(&body).map_err(|source| SyncError::Decode { step, source })
    }

    /// Parent side: a message from the init, with its reported errors turned into `Err`.
    fn recv_from_init(&mut self, step: &'static str) -> Result<FromInit, SyncError> {
        match self.recv(step)? {
            FromInit::Error { message } => Err(SyncError::Init { message }),
            other => Ok(other),
        }
    }

    // ---- the runtime's side ----

    pub fn send_config(&mut self, config: InitConfig) -> Result<(), SyncError> {
        self.send("send config", &ToInit::Config(Box::new(config)))
    }

    pub fn cgroup_ready(&mut self) -> Result<(), SyncError> {
        self.send("cgroup ready", &ToInit::CgroupReady)
    }

    pub fn id_maps_written(&mut self) -> Result<(), SyncError> {
        self.send("id maps written", &ToInit::IdMapsWritten)
    }

    pub fn hooks_done(&mut self, state: String) -> Result<(), SyncError> {
        self.send("hooks done", &ToInit::HooksDone { state })
    }

    /// The next request of the init, until it is ready.
    pub fn next_request(&mut self) -> Result<FromInit, SyncError> {
        self.recv_from_init("wait for init")
    }

    // ---- the init's side ----

    pub fn recv_config(&mut self) -> Result<InitConfig, SyncError> {
        match self.recv("receive config")? {
            ToInit::Config(c) => Ok(*c),
            other => Err(SyncError::Unexpected { expected: "Config", got: format!("{other:?}") }),
        }
    }

    pub fn wait_for_cgroup(&mut self) -> Result<(), SyncError> {
        match self.recv("wait for cgroup")? {
            ToInit::CgroupReady => Ok(()),
            other => Err(SyncError::Unexpected { expected: "CgroupReady", got: format!("{other:?}") }),
        }
    }

    pub fn request_id_maps(&mut self, pid: i32) -> Result<(), SyncError> {
        self.send("request id maps", &FromInit::NeedIdMaps { pid })?;
        match self.recv("wait for id maps")? {
            ToInit::IdMapsWritten => Ok(()),
            other => Err(SyncError::Unexpected { expected: "IdMapsWritten", got: format!("{other:?}") }),
        }
    }

    pub fn report_pid(&mut self, pid: i32) -> Result<(), SyncError> {
        self.send("report pid", &FromInit::Pid { pid })
    }

    /// Asks the runtime to run prestart/createRuntime hooks; returns the state
    /// JSON for the hooks the init runs itself.
    pub fn run_create_runtime_hooks(&mut self) -> Result<String, SyncError> {
        self.send("request hooks", &FromInit::RunCreateRuntimeHooks)?;
        match self.recv("wait for hooks")? {
            ToInit::HooksDone { state } => Ok(state),
            other => Err(SyncError::Unexpected { expected: "HooksDone", got: format!("{other:?}") }),
        }
    }

    pub fn ready(&mut self) -> Result<(), SyncError> {
        self.send("ready", &FromInit::Ready)
    }

    pub fn report_error(&mut self, message: String) {
        // The runtime may be gone already; nothing more to do then.
        let _ = self.send("report error", &FromInit::Error { message });
    }
}
