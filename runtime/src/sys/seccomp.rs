//! seccomp(2) filter installation.
