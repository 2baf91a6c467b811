//! `process.execCPUAffinity`: the CPUs a container process runs on. `initial`
//! holds while the process is still outside the container's cgroup (so the
//! runtime's work there does not land on CPUs the container is meant to keep
//! free); `final` is set once it is inside, just before the user's program
//! runs. Without `final` the process keeps `initial` as far as the
//! container's cpuset allows.

use crate::idlist::{IdListError, IdSet};
use oci_spec::runtime::Process;
use serde::{Deserialize, Serialize};

/// The kernel's NR_CPUS at its largest.
const MAX_CPU: u32 = 8191;

#[derive(Debug, thiserror::Error)]
pub enum AffinityError {
    #[error("process.execCPUAffinity.{field} {list:?}: {source}")]
    Parse { field: &'static str, list: String, source: IdListError },
    #[error("process.execCPUAffinity.{field} {list:?}: cannot run on these CPUs: {source}")]
    Apply { field: String, list: String, source: std::io::Error },
}

/// One checked CPU list of `execCPUAffinity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CpuList {
    /// "initial" or "final", for error messages.
    field: String,
    list: String,
    cpus: IdSet,
}

impl CpuList {
    fn parse(field: &'static str, list: Option<&String>) -> Result<Option<CpuList>, AffinityError> {
        // "If omitted or empty" the runtime leaves the affinity alone.
        let Some(list) = list.filter(|l| !l.trim().is_empty()) else { return Ok(None) };
        let cpus =
            IdSet::parse(list, MAX_CPU).map_err(|source| AffinityError::Parse { field, list: list.clone(), source })?;
        Ok(Some(CpuList { field: field.to_string(), list: list.clone(), cpus }))
    }

    fn apply(&self) -> Result<(), AffinityError> {
        crate::sys::set_cpu_affinity(self.cpus.words()).map_err(|source| AffinityError::Apply {
            field: self.field.clone(),
            list: self.list.clone(),
            source,
        })
    }
}

/// The checked `execCPUAffinity` of one process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecAffinity {
    initial: Option<CpuList>,
    #[serde(rename = "final")]
    last: Option<CpuList>,
}

impl ExecAffinity {
    pub fn from_process(process: &Process) -> Result<ExecAffinity, AffinityError> {
        let Some(a) = process.exec_cpu_affinity() else { return Ok(ExecAffinity::default()) };
        Ok(ExecAffinity {
            initial: CpuList::parse("initial", a.initial().as_ref())?,
            last: CpuList::parse("final", a.cpu_affinity_final().as_ref())?,
        })
    }

    /// Before the process joins the container's cgroup.
    pub fn apply_initial(&self) -> Result<(), AffinityError> {
        self.initial.as_ref().map_or(Ok(()), CpuList::apply)
    }

    /// After the cgroup join, before exec.
    pub fn apply_final(&self) -> Result<(), AffinityError> {
        self.last.as_ref().map_or(Ok(()), CpuList::apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(affinity: serde_json::Value) -> Result<Process, serde_json::Error> {
        let user = serde_json::json!({"uid": 0, "gid": 0});
        serde_json::from_value(
            serde_json::json!({"cwd": "/", "args": ["true"], "user": user, "execCPUAffinity": affinity}),
        )
    }

    #[test]
    fn parses_both_lists() {
        let a = ExecAffinity::from_process(&process(serde_json::json!({"initial": "0-1", "final": "1"})).unwrap());
        let a = a.unwrap();
        assert_eq!(a.initial.unwrap().cpus.words(), &[0b11]);
        assert_eq!(a.last.unwrap().cpus.words(), &[0b10]);
        let only = ExecAffinity::from_process(&process(serde_json::json!({"initial": "0"})).unwrap()).unwrap();
        assert!(only.initial.is_some() && only.last.is_none());
    }

    #[test]
    fn bad_lists_name_the_field() {
        let p = process(serde_json::json!({"final": "3-1"})).unwrap();
        let err = ExecAffinity::from_process(&p).unwrap_err().to_string();
        assert!(err.starts_with("process.execCPUAffinity.final \"3-1\""), "{err}");
        let p = process(serde_json::json!({"initial": "99999"})).unwrap();
        let err = ExecAffinity::from_process(&p).unwrap_err().to_string();
        assert!(err.starts_with("process.execCPUAffinity.initial"), "{err}");
    }
}
