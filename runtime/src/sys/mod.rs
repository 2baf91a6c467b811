//! Thin wrappers over the raw syscalls that nix does not cover.
//! Every `unsafe` block of the crate that talks to the kernel lives under here.

pub mod bpf;
pub mod seccomp;
