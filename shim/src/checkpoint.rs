//! containerd's Checkpoint RPC and Create with a checkpoint, as runc's shim does them.
//!
//! Checkpoint runs `warren checkpoint` into the directory containerd names (containerd then
//! archives that directory into its content store). Create with a checkpoint starts nothing:
//! the task stays created, with no process, until Start runs `warren restore --detach` of the
//! images containerd unpacked ([`crate::lifecycle`]).

use std::path::{Path, PathBuf};

use containerd_shim::protos::events::task::TaskCheckpointed;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::CheckpointOptions;
use containerd_shim::protos::shim::shim::{CheckpointTaskRequest, CreateTaskRequest};

use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::runner::Runner;
use crate::service::Service;
use crate::tasks::Phase;
use warren::failpoint::failpoint;

/// The type containerd's clients give the checkpoint options (runc's), whatever the runtime.
const OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

impl Service {
    pub(crate) fn do_checkpoint(&self, req: &CheckpointTaskRequest) -> Result<()> {
        let opts = options(req.options.as_ref())?;
        if req.path.is_empty() {
            return Err(ShimError::BadRequest { field: "path", reason: "empty (the directory for the images)".into() });
        }
        let (runtime, bundle) = {
            let table = self.tasks.lock();
            let c = table.container(&req.id)?;
            if !matches!(c.init.phase, Phase::Running) || c.restore_from.is_some() {
                return Err(c.bad_state("", "checkpoint"));
            }
            (c.runtime.clone(), c.bundle.clone())
        };
        // Without a work path criu works in a directory of the task's that goes afterwards.
        let own_work = opts.work_path.is_empty();
        let work = match own_work {
            true => work_dir(&bundle).join("criu-work"),
            false => PathBuf::from(&opts.work_path),
        };
        let runner = Runner::new(&runtime, &req.id, &bundle);
        failpoint("shim.checkpoint.begun");
        let done = match runner.checkpoint(&self.tasks.launch(), Path::new(&req.path), &work, &opts) {
            Err(ShimError::Runtime { verb, id, message }) if own_work => {
                // criu's log outlives its work directory, in the bundle (as runc's shim keeps
                // it), and the error names it there.
                let (dump_log, kept) = (work.join("dump.log"), bundle.join("criu-dump.log"));
                let message = match std::fs::copy(&dump_log, &kept) {
                    Ok(_) => message.replace(&*dump_log.to_string_lossy(), &kept.to_string_lossy()),
                    Err(_) => message,
                };
                Err(ShimError::Runtime { verb, id, message })
            }
            other => other,
        };
        if own_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        done?;
        failpoint("shim.checkpoint.runtime-done");
        // Only the id: containerd archives the image directory and removes it.
        let event = TaskCheckpointed { container_id: req.id.clone(), ..Default::default() };
        self.tasks.events.send(Event::Checkpointed(event));
        Ok(())
    }
}

/// containerd's checkpoint options: runc's, or none (ctr sends none to a runtime that is not
/// runc's: the defaults, which leave the task running).
fn options(any: Option<&Any>) -> Result<CheckpointOptions> {
    let Some(any) = any.filter(|a| !(a.type_url.is_empty() && a.value.is_empty())) else {
        return Ok(CheckpointOptions::default());
    };
    let bad = |reason: String| ShimError::BadRequest { field: "options", reason };
    if any.type_url.trim_start_matches('/').rsplit('/').next() != Some(OPTIONS_TYPE) {
        return Err(bad(format!("{}: not {OPTIONS_TYPE}", any.type_url)));
    }
    CheckpointOptions::parse_from_bytes(&any.value).map_err(|e| bad(format!("{OPTIONS_TYPE}: {e}")))
}

/// Refuses, at Create, a checkpoint the restore at Start could not use: one that is not
/// Warren's, or whose terminal does not match the task's.
pub(crate) fn check_restore(req: &CreateTaskRequest) -> Result<()> {
    if !req.parent_checkpoint.is_empty() {
        // runc's restore takes no parent either: criu finds a pre-dump through the images.
        let reason = "not supported (a restore needs only the checkpoint's own images)".into();
        return Err(ShimError::BadRequest { field: "parent_checkpoint", reason });
    }
    let info = warren::checkpoint::CheckpointInfo::read(Path::new(&req.checkpoint))
        .map_err(|e| ShimError::BadRequest { field: "checkpoint", reason: e.to_string() })?;
    if info.has_terminal() != req.terminal {
        let had = if info.has_terminal() { "with" } else { "without" };
        let reason = format!("{}: the checkpoint was taken {had} a terminal, the task must be too", req.checkpoint);
        return Err(ShimError::BadRequest { field: "terminal", reason });
    }
    Ok(())
}

/// Where criu works for a task: containerd's work directory of it (BUNDLE/work, a link to
/// the task's directory under containerd's root), else the bundle.
pub(crate) fn work_dir(bundle: &Path) -> PathBuf {
    let work = bundle.join("work");
    match work.is_dir() {
        true => work,
        false => bundle.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_runcs_or_none() {
        assert!(!options(None).unwrap().exit);
        let opts = CheckpointOptions { exit: true, file_locks: true, ..Default::default() };
        let any = Any { type_url: OPTIONS_TYPE.into(), value: opts.write_to_bytes().unwrap(), ..Default::default() };
        let parsed = options(Some(&any)).unwrap();
        assert!(parsed.exit && parsed.file_locks && !parsed.open_tcp);
        let other = Any { type_url: "containerd.runc.v1.Options".into(), value: vec![], ..Default::default() };
        let e = options(Some(&other)).err().unwrap().to_string();
        assert_eq!(e, "options: containerd.runc.v1.Options: not containerd.runc.v1.CheckpointOptions");
        let garbage = Any { type_url: OPTIONS_TYPE.into(), value: vec![0xff, 0xff], ..Default::default() };
        assert!(options(Some(&garbage)).is_err());
    }

    #[test]
    fn a_checkpoint_to_restore_must_be_warrens() {
        let dir = std::env::temp_dir().join(format!("warren-shim-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let req = CreateTaskRequest { checkpoint: dir.display().to_string(), ..Default::default() };
        let e = check_restore(&req).err().unwrap().to_string();
        assert!(e.starts_with("checkpoint: ") && e.contains("not a Warren checkpoint"), "{e}");
        let req = CreateTaskRequest { parent_checkpoint: "/p".into(), ..req };
        let e = check_restore(&req).err().unwrap().to_string();
        assert!(e.starts_with("parent_checkpoint: not supported"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
