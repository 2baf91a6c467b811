//! Cold migration of a running container to another host: freeze and dump on the source,
//! stream the dump, the rootfs changes and the config to the target, restore there, and only
//! when the target reports the container restored is it deleted on the source.
//!
//! The target restores the container stopped and lets it run only when the source says it
//! removed its copy (commit): it never runs on both hosts at once, and a lost word leaves it
//! stopped on the target for the operator rather than gone.
//!
//! Nothing is lost on the way. The source dumps with the container paused and left so
//! (CRIU keeps a frozen cgroup frozen), so any failure before the target's "restored" (a cut
//! connection, a digest mismatch, a refused restore, a timeout) ends with the container resumed
//! where it was, its memory and connections untouched. The target undoes everything it made
//! for the container when anything fails there. See `wire` for the stream.

mod pages;
mod policy;
mod receive;
mod send;
mod spool;
pub mod tls;
pub mod wire;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checkpoint::CheckpointError;
use crate::container::ContainerError;

pub use policy::{cap_name, Policy, PolicyError};
pub use receive::{listen, ReceiveOptions, ReceiveReport};
pub use send::{SendOptions, SendReport};
pub use wire::{Part, Resumed};

/// How long either end waits for the other before it gives up (and rolls back).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `migrate receive` listens unless told otherwise: this host only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7447";

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Tenant(Box<crate::tenant::TenantError>),
    #[error(transparent)]
    Store(#[from] warren_images::store::StoreError),
    #[error(transparent)]
    Bundle(#[from] warren_images::bundle::BundleError),
    #[error(transparent)]
    Transfer(#[from] warren_images::transfer::TransferError),
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("migration stream with {peer}: {source}")]
    Stream { peer: String, source: std::io::Error },
    #[error("migration stream from {peer} ended early (truncated)")]
    Truncated { peer: String },
    #[error("migration stream with {peer}: no answer within the timeout")]
    Timeout { peer: String },
    #[error("{peer} did not send a Warren migration stream")]
    NotMigrationStream { peer: String },
    #[error("migration stream from {peer}: unknown frame type {tag}")]
    BadFrame { peer: String, tag: u8 },
    #[error("migration stream from {peer}: frame of {len} bytes is too large")]
    FrameTooLarge { peer: String, len: usize },
    #[error("migration stream from {peer}: got {got} where {want} was due")]
    Unexpected { peer: String, got: String, want: String },
    #[error("migration stream from {peer}: bad {what} message: {source}")]
    BadMessage { peer: String, what: String, source: serde_json::Error },
    #[error("migration stream: part name {name:?} would lie outside its directory")]
    BadPartName { name: String },
    #[error("migration stream: part {part:?} does not decompress")]
    BadChunk { part: Part },
    #[error("migration stream: part {part:?} has sha256 {actual}, its sender says {expected}")]
    DigestMismatch { part: Part, expected: warren_images::digest::Digest, actual: warren_images::digest::Digest },
    #[error("migration stream: manifest and parts differ at {part:?}: {reason}")]
    Manifest { part: Part, reason: &'static str },
    #[error("migration stream: part {part:?} was not asked for or comes twice")]
    UnwantedPart { part: Part },
    #[error("migration stream: no {part:?} part before the manifest")]
    MissingPart { part: Part },
    #[error("migration stream: part {part:?} is not valid JSON: {source}")]
    BadConfig { part: Part, source: serde_json::Error },
    #[error("writing part {part:?}: {source}")]
    Spool { part: Part, source: std::io::Error },
    #[error("zstd: {source}")]
    Zstd { source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the target refused the container: {reason}")]
    Refused { reason: String },
    #[error("the target failed to restore the container: {reason}")]
    TargetFailed { reason: String },
    #[error("container {id} is {status}: only a running container can migrate")]
    NotRunning { id: String, status: crate::state::Status },
    #[error("{cause}; container {id} is running here again")]
    RolledBack { id: String, cause: Box<MigrateError> },
    #[error("container {id} was removed here, but the target did not hear so ({cause}): it is restored there and stopped; start it there with `warren kill --all {id} CONT`")]
    CommitLost { id: String, cause: Box<MigrateError> },
    #[error("container {id} was moved to the target, but the target did not confirm that it runs there ({cause}); see `warren state {id}` there, and if it is stopped start it with `warren kill --all {id} CONT`")]
    ResumeUnconfirmed { id: String, cause: Box<MigrateError> },
    #[error("container {id} was moved to the target but stays stopped there: {reason}; start it there with `warren kill --all {id} CONT`")]
    NotResumed { id: String, reason: String },
    #[error("the source resumed container {id} (it gave up the move): the copy here is removed")]
    SourceAborted { id: String },
    #[error("container {id} is restored here but stopped: the source did not say whether it removed its copy ({cause}); if it is gone there, start it with `warren kill --all {id} CONT`, else remove it with `warren delete -f {id}`")]
    Unconfirmed { id: String, cause: Box<MigrateError> },
    #[error("container {id} runs on the target now (pid {target_pid}), but removing its bundle here failed: {cause}")]
    SourceLeftovers { id: String, target_pid: i32, cause: Box<MigrateError> },
    #[error("migration page stream: {what}")]
    PageStream { what: &'static str },
    #[error("migration page stream: criu sent command {cmd}, which a dump to a page server does not send")]
    PageCommand { cmd: u32 },
    #[error("container {id}: filling its memory after the restore failed (what it had yet to get would read as zeros): {source}")]
    LazyPages { id: String, source: CheckpointError },
    #[error("{cause}; and resuming container {id} here failed too: {resume}")]
    RollbackFailed { id: String, cause: Box<MigrateError>, resume: Box<ContainerError> },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io { path: path.to_path_buf(), source }
}

/// Where a runtime root's migrations keep their dumps: beside the root (on the same tmpfs
/// when the root is /run/warren), one directory per container.
pub fn default_work_dir(root: &Path) -> PathBuf {
    let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "warren".into());
    root.with_file_name(format!("{name}-migrate"))
}
