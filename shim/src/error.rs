//! The shim's one error type, and how each kind reaches containerd (a ttrpc status code that
//! containerd turns back into its own error kinds: not found, already exists, ...).

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {id}: not found")]
    NoContainer { id: String },
    #[error("container {id}: exec {exec_id}: not found")]
    NoExec { id: String, exec_id: String },
    #[error("container {id}: already exists")]
    ContainerExists { id: String },
    #[error("container {id}: exec {exec_id} already exists")]
    ExecExists { id: String, exec_id: String },
    #[error("container {id}{}: cannot {action} a process that is {state}", exec_suffix(.exec_id))]
    BadState { id: String, exec_id: String, action: &'static str, state: &'static str },
    #[error("container {id}{}: process already finished", exec_suffix(.exec_id))]
    Finished { id: String, exec_id: String },
    #[error("{field}: {reason}")]
    BadRequest { field: &'static str, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("start {binary} {verb}: {source}")]
    Spawn { binary: PathBuf, verb: &'static str, source: std::io::Error },
    #[error("warren {verb} {id}: {message}")]
    Runtime { verb: &'static str, id: String, message: String },
    #[error("{binary}: no warren binary there (set BinaryName in the runtime options, or put warren beside the shim)")]
    NoBinary { binary: PathBuf },
    #[error("rootfs mount {index} ({fstype} {source_path} on {target}): {source}")]
    Mount { index: usize, fstype: String, source_path: String, target: PathBuf, source: nix::Error },
    #[error("unmount {target}: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
    #[error("log uri {uri}: {reason}")]
    LogUri { uri: String, reason: String },
    #[error(transparent)]
    Container(#[from] warren::container::ContainerError),
    #[error(transparent)]
    Cgroup(#[from] warren::cgroups::CgroupError),
    #[error(transparent)]
    Console(#[from] warren::console::ConsoleError),
    #[error("signal {signal} to pid {pid}: {source}")]
    Signal { signal: u32, pid: i32, source: nix::Error },
    #[error("encode {what}: {source}")]
    Encode { what: &'static str, source: containerd_shim::protos::protobuf::Error },
}

fn exec_suffix(exec_id: &str) -> String {
    if exec_id.is_empty() {
        String::new()
    } else {
        format!(" exec {exec_id}")
    }
}

impl ShimError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ShimError {
        let path = path.into();
        move |source| ShimError::Io { path, source }
    }

    fn code(&self) -> Code {
        use warren::container::ContainerError as C;
        match self {
            ShimError::NoContainer { .. } | ShimError::NoExec { .. } | ShimError::Finished { .. } => Code::NOT_FOUND,
            ShimError::ContainerExists { .. } | ShimError::ExecExists { .. } => Code::ALREADY_EXISTS,
            ShimError::BadState { .. } => Code::FAILED_PRECONDITION,
            ShimError::BadRequest { .. } | ShimError::LogUri { .. } => Code::INVALID_ARGUMENT,
            ShimError::Container(C::NotRunning { .. }) => Code::NOT_FOUND,
            ShimError::Container(C::BadStatus { .. } | C::DeleteNotStopped { .. }) => Code::FAILED_PRECONDITION,
            _ => Code::UNKNOWN,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, ShimError>;
