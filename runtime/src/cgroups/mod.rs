//! Container cgroups on v1, hybrid and v2 hosts.
