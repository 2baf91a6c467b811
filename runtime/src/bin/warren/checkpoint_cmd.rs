//! `warren checkpoint` and `warren restore`, with runc's flags.

use std::path::Path;

use anyhow::Result;
use warren::checkpoint::{CheckpointOptions, CriuCommon, RestoreOptions};
use warren::container::{ConsoleTarget, Runtime};
use warren::wait::Forwarder;

use crate::cli::{CheckpointArgs, CriuArgs, RestoreArgs};
use crate::commands::{own_console, wait_for};

fn common(a: &CriuArgs, criu: Option<&Path>) -> CriuCommon {
    CriuCommon {
        criu: criu.map(Path::to_path_buf),
        tcp_established: a.tcp_established,
        ext_unix_sk: a.ext_unix_sk,
        shell_job: a.shell_job,
        file_locks: a.file_locks,
        manage_cgroups_mode: a.manage_cgroups_mode.clone(),
        empty_ns: a.empty_ns.clone(),
    }
}

pub fn checkpoint(rt: &Runtime, a: &CheckpointArgs, criu: Option<&Path>) -> Result<i32> {
    let opts = CheckpointOptions {
        image_path: std::path::absolute(&a.criu.image_path)?,
        work_path: a.criu.work_path.as_ref().map(std::path::absolute).transpose()?,
        parent_path: a.parent_path.clone(),
        leave_running: a.leave_running,
        pre_dump: a.pre_dump,
        auto_dedup: a.auto_dedup,
        skip_network_lock: false,
        link_remap: a.link_remap,
        tcp_skip_in_flight: a.tcp_skip_in_flight,
        page_socket: None,
        common: common(&a.criu, criu),
    };
    rt.checkpoint(&a.id, &opts)?;
    Ok(0)
}

/// Detached: returns once the container runs. In the foreground: waits for it (relaying a
/// checkpointed terminal when no console socket is given), deletes it and exits with its code.
pub fn restore(rt: &Runtime, a: &RestoreArgs, criu: Option<&Path>) -> Result<i32> {
    let forwarder = if a.detach { None } else { Some(Forwarder::install()?) };
    let bundle = warren::spec::Bundle::load(&a.bundle)?;
    let relay = !a.detach && a.console_socket.is_none();
    let (target, ours) = if relay { own_console().map(|(t, o)| (Some(t), Some(o)))? } else { (None, None) };
    let opts = RestoreOptions {
        id: a.id.clone(),
        image_path: std::path::absolute(&a.criu.image_path)?,
        work_path: a.criu.work_path.as_ref().map(std::path::absolute).transpose()?,
        pid_file: a.pid_file.clone(),
        console: target.or_else(|| a.console_socket.clone().map(ConsoleTarget::Socket)),
        no_pivot: a.no_pivot,
        moved: false,
        leave_stopped: false,
        lazy_pages: false,
        consume_images: false,
        common: common(&a.criu, criu),
    };
    let restored = rt.restore(&opts, bundle)?;
    let Some(fw) = forwarder else { return Ok(0) };
    // Only a checkpointed terminal sends a master over our socket.
    let code = wait_for(&fw, restored.pid, ours.filter(|_| restored.terminal))?;
    rt.delete(&a.id, true)?;
    Ok(code)
}
