//! OCI `linux.seccomp` compiled with seccompiler.
