//! Warren's engine: everything the `warren` binary (and later the shim) does,
//! as a library. The binary only parses arguments and dispatches here.

pub mod cgroups;
pub mod seccomp;
pub mod sys;
