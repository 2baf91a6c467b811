//! bpf(2) for cgroup v2 device programs.
