//! `linux.memoryPolicy`: the NUMA memory policy (set_mempolicy(2)) of the
//! container's processes. The runtime checks and translates the config
//! (it can still read the host's node list); the init applies the result
//! before exec, for the container's process and for every exec'd one (those
//! join by setns and do not inherit the init's policy).

use crate::idlist::{IdListError, IdSet};
use oci_spec::runtime::{MemoryPolicyFlagType, MemoryPolicyModeType, Spec};
use serde::{Deserialize, Serialize};

/// The kernel's MAX_NUMNODES at its largest (CONFIG_NODES_SHIFT 10).
const MAX_NODE: u32 = 1023;
/// Modes newer than the libc crate's constants (linux/mempolicy.h).
const MPOL_PREFERRED_MANY: i32 = 5;
const MPOL_WEIGHTED_INTERLEAVE: i32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum MemPolicyError {
    #[error("linux.memoryPolicy.nodes {nodes:?}: {source}")]
    Nodes { nodes: String, source: IdListError },
    #[error(
        "linux.memoryPolicy.nodes {nodes:?}: node {node} does not exist on this host (possible nodes: {possible})"
    )]
    NoSuchNode { nodes: String, node: u32, possible: String },
    #[error("linux.memoryPolicy: mode {mode} takes no nodes, got {nodes:?}")]
    NodesNotAllowed { mode: MemoryPolicyModeType, nodes: String },
    #[error("linux.memoryPolicy: mode {mode} needs nodes")]
    NodesRequired { mode: MemoryPolicyModeType },
    #[error("linux.memoryPolicy.flags: MPOL_F_STATIC_NODES and MPOL_F_RELATIVE_NODES exclude each other")]
    StaticAndRelative,
    #[error("linux.memoryPolicy: the kernel rejects {policy}: {source}")]
    Rejected { policy: String, source: std::io::Error },
}

/// A checked memory policy, ready for set_mempolicy(2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemPolicy {
    /// The mode with its MPOL_F_* flags or'ed in.
    mode: i32,
    nodes: IdSet,
    /// The config's words, for error messages.
    text: String,
}

impl MemPolicy {
    /// The spec's policy, checked against what the kernel will refuse and
    /// against the host's NUMA nodes; None without `linux.memoryPolicy`.
    pub fn from_spec(spec: &Spec) -> Result<Option<MemPolicy>, MemPolicyError> {
        let Some(p) = spec.linux().as_ref().and_then(|l| l.memory_policy().as_ref()) else { return Ok(None) };
        let mode = p.mode();
        let text = p.nodes().clone().unwrap_or_default();
        let nodes =
            IdSet::parse(&text, MAX_NODE).map_err(|source| MemPolicyError::Nodes { nodes: text.clone(), source })?;
        let flags = p.flags().clone().unwrap_or_default();
        let has = |f: MemoryPolicyFlagType| flags.contains(&f);
        if has(MemoryPolicyFlagType::MpolFStaticNodes) && has(MemoryPolicyFlagType::MpolFRelativeNodes) {
            return Err(MemPolicyError::StaticAndRelative);
        }
        match mode {
            MemoryPolicyModeType::MpolDefault | MemoryPolicyModeType::MpolLocal if !nodes.is_empty() => {
                return Err(MemPolicyError::NodesNotAllowed { mode, nodes: text });
            }
            // MPOL_PREFERRED without nodes is the kernel's "local"; the others need some.
            MemoryPolicyModeType::MpolBind
            | MemoryPolicyModeType::MpolInterleave
            | MemoryPolicyModeType::MpolWeightedInterleave
            | MemoryPolicyModeType::MpolPreferredMany
                if nodes.is_empty() =>
            {
                return Err(MemPolicyError::NodesRequired { mode });
            }
            _ => {}
        }
        // Relative node numbers are folded onto the allowed nodes by the kernel: any will do.
        if !has(MemoryPolicyFlagType::MpolFRelativeNodes) {
            check_nodes_exist(&nodes, &text)?;
        }
        let bits = flags.iter().fold(mode_bits(mode), |m, f| m | flag_bits(*f));
        let names: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let text = format!("mode {mode} with nodes {text:?} and flags [{}]", names.join(", "));
        Ok(Some(MemPolicy { mode: bits, nodes, text }))
    }

    /// Sets the policy of the calling (single-threaded) process.
    pub fn apply(&self) -> Result<(), MemPolicyError> {
        crate::sys::set_mempolicy(self.mode, self.nodes.words())
            .map_err(|source| MemPolicyError::Rejected { policy: self.text.clone(), source })
    }
}

/// Every node must be one the host may ever have (/sys/devices/system/node/possible).
fn check_nodes_exist(nodes: &IdSet, text: &str) -> Result<(), MemPolicyError> {
    // Without NUMA support in the kernel there is no such file: node 0 only.
    let possible = std::fs::read_to_string("/sys/devices/system/node/possible").unwrap_or_else(|_| "0".into());
    let possible = possible.trim().to_string();
    let set = IdSet::parse(&possible, MAX_NODE).unwrap_or_else(|_| IdSet::parse("0", 0).expect("literal"));
    match (0..=nodes.max().unwrap_or(0)).find(|n| nodes.contains(*n) && !set.contains(*n)) {
        Some(node) => Err(MemPolicyError::NoSuchNode { nodes: text.to_string(), node, possible }),
        None => Ok(()),
    }
}

fn mode_bits(mode: MemoryPolicyModeType) -> i32 {
    match mode {
        MemoryPolicyModeType::MpolDefault => libc::MPOL_DEFAULT,
        MemoryPolicyModeType::MpolPreferred => libc::MPOL_PREFERRED,
        MemoryPolicyModeType::MpolBind => libc::MPOL_BIND,
        MemoryPolicyModeType::MpolInterleave => libc::MPOL_INTERLEAVE,
        MemoryPolicyModeType::MpolLocal => libc::MPOL_LOCAL,
        MemoryPolicyModeType::MpolPreferredMany => MPOL_PREFERRED_MANY,
        MemoryPolicyModeType::MpolWeightedInterleave => MPOL_WEIGHTED_INTERLEAVE,
    }
}

fn flag_bits(flag: MemoryPolicyFlagType) -> i32 {
    match flag {
        MemoryPolicyFlagType::MpolFNumaBalancing => libc::MPOL_F_NUMA_BALANCING,
        MemoryPolicyFlagType::MpolFRelativeNodes => libc::MPOL_F_RELATIVE_NODES,
        MemoryPolicyFlagType::MpolFStaticNodes => libc::MPOL_F_STATIC_NODES,
    }
}

/// The modes and flags `warren features` reports: every one the config may name.
pub const MODES: [&str; 7] = [
    "MPOL_DEFAULT",
    "MPOL_BIND",
    "MPOL_INTERLEAVE",
    "MPOL_WEIGHTED_INTERLEAVE",
    "MPOL_PREFERRED",
    "MPOL_PREFERRED_MANY",
    "MPOL_LOCAL",
];
pub const FLAGS: [&str; 3] = ["MPOL_F_NUMA_BALANCING", "MPOL_F_RELATIVE_NODES", "MPOL_F_STATIC_NODES"];

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(policy: serde_json::Value) -> Spec {
        let mut v = serde_json::to_value(Spec::default()).unwrap();
        v["linux"]["memoryPolicy"] = policy;
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn translates_mode_flags_and_nodes() {
        let spec = spec_with(serde_json::json!({"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}));
        let p = MemPolicy::from_spec(&spec).unwrap().unwrap();
        assert_eq!(p.mode, libc::MPOL_BIND | libc::MPOL_F_STATIC_NODES);
        assert_eq!(p.nodes.words(), &[1]);
        assert!(MemPolicy::from_spec(&Spec::default()).unwrap().is_none());
    }

    #[test]
    fn rejects_what_the_kernel_would() {
        let cases = [
            (serde_json::json!({"mode": "MPOL_DEFAULT", "nodes": "0"}), "takes no nodes"),
            (serde_json::json!({"mode": "MPOL_LOCAL", "nodes": "0"}), "takes no nodes"),
            (serde_json::json!({"mode": "MPOL_BIND"}), "needs nodes"),
            (serde_json::json!({"mode": "MPOL_BIND", "nodes": "1023"}), "does not exist"),
            (serde_json::json!({"mode": "MPOL_BIND", "nodes": "2-1"}), "backwards"),
            (
                serde_json::json!({"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES", "MPOL_F_RELATIVE_NODES"]}),
                "exclude each other",
            ),
        ];
        for (policy, want) in cases {
            let err = MemPolicy::from_spec(&spec_with(policy.clone())).unwrap_err().to_string();
            assert!(err.starts_with("linux.memoryPolicy") && err.contains(want), "{policy}: {err}");
        }
    }
}
