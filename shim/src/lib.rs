//! `containerd-shim-warren-v2`: containerd's shim v2 for the Warren runtime (runtime type
//! `io.containerd.warren.v2`), on containerd's Rust shim crates with their synchronous API
//! (no async runtime: the shim is mostly asleep, and threads cost less resident memory than
//! an executor and its pools). The server's life is the shim's own ([`server`]): its ttrpc
//! server ([`rpc`]) polls every connection from one thread and runs requests on a small pool,
//! since containerd connects once per task and ttrpc's own server keeps six threads for each.
//!
//! # How the shim drives Warren
//! * Process-creating verbs (`create`, `exec`) and the verbs that run hooks (`start`,
//!   `delete`) exec the `warren` binary the way the runc shim execs runc
//!   (`--root R --log BUNDLE/log.json --log-format json ...`), reading a failure's reason back
//!   from the JSON log ([`runner`]). Warren's init is exec'd from the runtime's own
//!   executable, and a fork in this multi-threaded process must go straight to exec; std's
//!   `Command` (posix_spawn or fork+exec without allocating) does exactly that.
//! * Everything that only reads or signals goes through the `warren` library in-process:
//!   state, kill, pause/resume, update, pids, stats ([`metrics`]) and OOM notices
//!   ([`supervisor`]).
//! * Checkpoint and restore run `warren checkpoint` and `warren restore --detach` (criu takes
//!   long, and is the runtime's child); a task created from a checkpoint is restored at Start,
//!   as runc's shim does it ([`checkpoint`]).
//! * The binary is BinaryName from runc's runtime options, else `warren` beside the shim
//!   binary, else `warren` on PATH ([`config`]).
//!
//! # Processes and exits
//! The shim is the subreaper of everything it starts. One thread ([`supervisor`]) reaps every
//! child and hands each exit to the task table ([`tasks`]), which maps it to an init or exec,
//! or keeps it for a launch in flight, so an exit that lands before `Start` (or `Create`)
//! returns is still reported, after the start event ([`tasks::Phase::Starting`]). Events go out
//! in the order the table queued them, from one thread ([`events`]).
//!
//! # Stdio
//! Without a terminal the container gets the FIFO, file or logger-pipe descriptors
//! themselves: the shim copies nothing ([`stdio`]). A terminal's master comes back over a
//! console socket and one thread per process relays it.
//!
//! # Grouping
//! `start` puts containers whose bundle annotations name the same group into one shim process
//! ([`shim::GROUP_ANNOTATIONS`]); the shim exits at Shutdown once it holds no container.

mod checkpoint;
pub mod config;
pub mod error;
pub mod events;
mod lifecycle;
pub mod metrics;
pub mod mounts;
pub mod rpc;
pub mod runner;
pub mod server;
pub mod service;
pub mod shim;
pub mod stdio;
pub mod supervisor;
pub mod tasks;

pub use shim::WarrenShim;

/// The runtime name containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.warren.v2";

/// Stack size of the shim's own threads (they keep little on the stack).
pub(crate) const SMALL_STACK: usize = 256 * 1024;

/// The shim's configuration of containerd's shim library: the shim reaps its children
/// itself ([`supervisor`]) and is their subreaper.
pub fn shim_config() -> containerd_shim::Config {
    containerd_shim::Config { no_reaper: true, ..Default::default() }
}
