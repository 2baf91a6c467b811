//! Warren's engine: everything the `warren` binary (and later the shim) does,
//! as a library. The binary only parses arguments and dispatches here.

pub mod affinity;
// One atomic-write helper for the workspace; it lives in the lowest crate that writes records.
pub use warren_images::atomic_file;
pub mod cgroups;
pub mod checkpoint;
pub mod console;
pub mod container;
pub mod events;
pub mod failpoint;
pub mod features;
pub mod hooks;
pub mod idlist;
pub mod init;
pub mod intel_rdt;
pub mod memory_merge;
pub mod mempolicy;
pub mod migrate;
pub mod namespaces;
pub mod netdev;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod sync;
pub mod sys;
pub mod tenant;
pub mod wait;
