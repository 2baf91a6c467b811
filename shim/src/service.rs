//! The task service (containerd.task.v2.Task) over the task table: each RPC validates, does
//! its work and maps errors to ttrpc statuses. Create, Start, Exec and Delete live in
//! [`crate::lifecycle`], Checkpoint in [`crate::checkpoint`].

use std::sync::Arc;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};
use nix::sys::signal::Signal;
use warren::cgroups::Cgroup;
use warren::container::Runtime;

use crate::error::{Result, ShimError};
use crate::events::Event;
use crate::supervisor::Supervisor;
use crate::tasks::{Phase, Tasks};

pub struct Service {
    pub(crate) tasks: Arc<Tasks>,
    pub(crate) supervisor: Supervisor,
    pub(crate) namespace: String,
    pub(crate) exit: Arc<ExitSignal>,
}

impl Service {
    fn runtime(&self, id: &str) -> Result<Runtime> {
        Ok(Runtime::new(&self.tasks.lock().container(id)?.runtime.root))
    }

    fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let table = self.tasks.lock();
        let c = table.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let status = match p.phase {
            Phase::Created | Phase::Starting => Status::CREATED,
            Phase::Running if c.paused => Status::PAUSED,
            Phase::Running => Status::RUNNING,
            Phase::Exited(_) => Status::STOPPED,
        };
        let exit = p.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid as u32,
            status: status.into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map_or_else(MessageField::none, |e| e.timestamp()),
            ..Default::default()
        })
    }

    fn kill(&self, req: &KillRequest) -> Result<()> {
        let signal = Signal::try_from(req.signal as i32)
            .map_err(|_| ShimError::BadRequest { field: "signal", reason: format!("{} is no signal", req.signal) })?;
        let table = self.tasks.lock();
        let c = table.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if !req.exec_id.is_empty() {
            if !matches!(p.phase, Phase::Running) {
                return Err(ShimError::Finished { id: req.id.clone(), exec_id: req.exec_id.clone() });
            }
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), signal)
                .map_err(|source| ShimError::Signal { signal: req.signal, pid: p.pid, source });
        }
        // Not yet restored from its checkpoint, there is no process (runc says the same).
        if (p.exit().is_some() && !req.all) || c.restore_from.is_some() {
            return Err(ShimError::Finished { id: req.id.clone(), exec_id: String::new() });
        }
        let rt = Runtime::new(&c.runtime.root);
        drop(table);
        Ok(rt.kill(&req.id, signal, req.all)?)
    }

    fn pause_or_resume(&self, id: &str, pause: bool) -> Result<()> {
        let rt = self.runtime(id)?;
        if pause {
            rt.pause(id)?;
        } else {
            rt.resume(id)?;
        }
        let mut table = self.tasks.lock();
        table.container_mut(id)?.paused = pause;
        let container_id = id.to_string();
        self.tasks.events.send(match pause {
            true => Event::Paused(TaskPaused { container_id, ..Default::default() }),
            false => Event::Resumed(TaskResumed { container_id, ..Default::default() }),
        });
        Ok(())
    }

    fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let pids = self.runtime(id)?.pids(id)?;
        let table = self.tasks.lock();
        let c = table.container(id)?;
        let info = |pid: i32| {
            let exec = c.execs.values().find(|p| p.pid == pid && matches!(p.phase, Phase::Running))?;
            let details = ProcessDetails { exec_id: exec.exec_id.clone(), ..Default::default() };
            let value = details.write_to_bytes().ok()?;
            Some(Any { type_url: "containerd.runc.v1.ProcessDetails".into(), value, ..Default::default() })
        };
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo { pid: pid as u32, info: info(pid).into(), ..Default::default() })
            .collect())
    }

    fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let value = req.resources.as_ref().map(|a| a.value.as_slice()).unwrap_or(b"{}");
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(value).map_err(|e| {
            ShimError::BadRequest { field: "resources", reason: format!("not runtime-spec resources: {e}") }
        })?;
        Ok(self.runtime(&req.id)?.update(&req.id, &resources)?)
    }

    fn stats(&self, id: &str) -> Result<Any> {
        let cgroup = self.runtime(id)?.live_cgroup(id)?;
        let stats = cgroup.stats()?;
        crate::metrics::to_any(&stats, matches!(cgroup, Cgroup::V2 { .. }))
    }

    fn with_terminal(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&crate::stdio::Terminal) -> Result<()>,
    ) -> Result<()> {
        let table = self.tasks.lock();
        match &table.container(id)?.process(exec_id)?.terminal {
            Some(t) => f(t),
            None => Ok(()),
        }
    }
}

impl Task for Service {
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(Service::state(self, &req)?)
    }

    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        let pid = self.do_create(&req)?;
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let pid = self.do_start(&req.id, &req.exec_id)?;
        Ok(StartResponse { pid, ..Default::default() })
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(&req.id, &req.exec_id)?)
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(PidsResponse { processes: Service::pids(self, &req.id)?, ..Default::default() })
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.pause_or_resume(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.pause_or_resume(&req.id, false)?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        self.do_checkpoint(&req)?;
        Ok(Empty::new())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        Service::kill(self, &req)?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.do_exec(&req)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.with_terminal(&req.id, &req.exec_id, |t| t.resize(req.width, req.height))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.with_terminal(&req.id, &req.exec_id, |t| {
                t.close_stdin();
                Ok(())
            })?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        Service::update(self, &req)?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = self.tasks.wait_exit(&req.id, &req.exec_id, None)?;
        Ok(WaitResponse { exit_status: exit.status, exited_at: exit.timestamp(), ..Default::default() })
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(StatsResponse { stats: MessageField::some(Service::stats(self, &req.id)?), ..Default::default() })
    }

    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.tasks.lock().container(&req.id).map(|c| c.init.pid as u32).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: concat!("warren-shim ", env!("CARGO_PKG_VERSION")).into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        // A shim that hosts a group stays while any of its containers does.
        if req.now || self.tasks.lock().containers.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
