//! Kernel same-page merging (KSM) of a container's anonymous memory, asked for by the
//! annotation `org.warren.memory.merge` (a hosting plan's `memory.merge`). Tenants that run
//! the same program on the same data then share their identical pages. The init sets
//! PR_SET_MEMORY_MERGE before it execs the container's process (and every exec'd one); the
//! kernel keeps the flag across exec (6.7+) and fork, so all of the container's processes
//! have it. The host's KSM daemon is the operator's to run: Warren never switches it on.

use oci_spec::runtime::Spec;
use std::path::Path;
use warren_config::MEMORY_MERGE_ANNOTATION;

/// ksmd's switch: 0 stopped, 1 running, 2 unmerge all.
const KSM_RUN: &str = "/sys/kernel/mm/ksm/run";

#[derive(Debug, thiserror::Error)]
pub enum MemoryMergeError {
    #[error("annotations[{annotation:?}]: {value:?} is neither \"true\" nor \"false\"")]
    Value { annotation: &'static str, value: String },
    #[error("annotations[{annotation:?}]: the kernel refuses PR_SET_MEMORY_MERGE (KSM needs Linux 6.4+ built with CONFIG_KSM): {source}")]
    Refused { annotation: &'static str, source: std::io::Error },
}

/// Whether `spec` asks for merging. Only the exact words "true" and "false" are taken: a
/// "yes" or "1" that silently meant "no" would be worse than an error.
pub fn requested(spec: &Spec) -> Result<bool, MemoryMergeError> {
    let value = spec.annotations().as_ref().and_then(|a| a.get(MEMORY_MERGE_ANNOTATION));
    match value.map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(MemoryMergeError::Value { annotation: MEMORY_MERGE_ANNOTATION, value: other.to_string() }),
    }
}

/// Marks the calling process's memory mergeable (in the init, before exec).
pub fn enable() -> Result<(), MemoryMergeError> {
    crate::sys::set_memory_merge()
        .map_err(|source| MemoryMergeError::Refused { annotation: MEMORY_MERGE_ANNOTATION, source })
}

/// A warning (through `log`) when ksmd is stopped: then the flag is set but nothing merges.
pub fn warn_if_ksmd_stopped(id: &str) {
    if std::fs::read_to_string(Path::new(KSM_RUN)).is_ok_and(|run| run.trim() == "0") {
        log::warn!(
            "container {id}: {MEMORY_MERGE_ANNOTATION} is true but the host's KSM daemon is stopped \
             ({KSM_RUN} is 0): nothing is merged until the operator runs `echo 1 > {KSM_RUN}`"
        );
    }
}

/// CRIU restores the processes' memory but not their merge-any flag (checked on 6.18: a
/// restored container's process shows `ksm_merge_any: no`), and no syscall sets it on another
/// process: a restored container is warned about. Processes exec'd into it later have it.
pub fn warn_not_restored(id: &str) {
    log::warn!(
        "container {id}: {MEMORY_MERGE_ANNOTATION} is true, but the restored processes are not merged: \
         CRIU does not restore PR_SET_MEMORY_MERGE (processes exec'd into the container later are)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(value: Option<&str>) -> Spec {
        let mut spec = Spec::default();
        let annotations = value.map(|v| [(MEMORY_MERGE_ANNOTATION.to_string(), v.to_string())].into());
        spec.set_annotations(annotations);
        spec
    }

    #[test]
    fn only_true_and_false_are_read() {
        assert!(!requested(&spec_with(None)).unwrap());
        assert!(!requested(&spec_with(Some("false"))).unwrap());
        assert!(requested(&spec_with(Some("true"))).unwrap());
        for bad in ["yes", "1", "True", " true", ""] {
            let err = requested(&spec_with(Some(bad))).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("annotations[\"org.warren.memory.merge\"]: {bad:?} is neither \"true\" nor \"false\"")
            );
        }
    }
}
