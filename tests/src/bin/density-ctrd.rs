//! bench/density's containerd client: starts and stops tenants through containerd's own gRPC
//! API, the calls `ctr run -d` / `ctr task kill; task delete; container delete` make, without
//! paying for a Go process per call. The same client drives every runtime under containerd
//! (Warren's shim grouped or not, runc's shim), so the comparison stays fair.
//!
//! Usage: density-ctrd --address SOCK --namespace NS --runtime NAME --snapshotter NAME
//!        --parent SNAPSHOT --image REF --spec FILE
//! SPEC is a complete OCI config (root.path "rootfs", terminal false); per start the client
//! sets linux.cgroupsPath and, when given, the path of the network namespace.
//! Commands on stdin, one per line, served concurrently:
//!   start ID CGROUP [NETNS]   container + snapshot + task, started
//!   stop ID                   SIGKILL, wait, delete task, container and snapshot
//! Each is answered on stdout by `ok ID` or `err ID MESSAGE` (one line), in completion order.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest, DeleteTaskRequest, KillRequest,
    StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::with_namespace;
use prost_types::Any;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

struct Client {
    channel: Channel,
    ns: String,
    runtime: String,
    snapshotter: String,
    parent: String,
    image: String,
    spec: Value,
}

impl Client {
    fn spec_for(&self, cgroup: &str, netns: Option<&str>) -> Result<Vec<u8>> {
        let mut spec = self.spec.clone();
        let linux = spec.get_mut("linux").and_then(Value::as_object_mut).context("spec has no linux object")?;
        linux.insert("cgroupsPath".into(), cgroup.into());
        if let Some(path) = netns {
            let nss = linux.get_mut("namespaces").and_then(Value::as_array_mut).context("spec has no namespaces")?;
            for ns in nss.iter_mut().filter(|n| n["type"] == "network") {
                ns["path"] = path.into();
            }
        }
        Ok(serde_json::to_vec(&spec)?)
    }

    async fn start(&self, id: &str, cgroup: &str, netns: Option<&str>) -> Result<()> {
        let ns = self.ns.as_str();
        let container = Container {
            id: id.into(),
            image: self.image.clone(),
            runtime: Some(Runtime { name: self.runtime.clone(), options: None }),
            spec: Some(Any { type_url: SPEC_TYPE.into(), value: self.spec_for(cgroup, netns)? }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        let req = CreateContainerRequest { container: Some(container) };
        ContainersClient::new(self.channel.clone())
            .create(with_namespace!(req, ns))
            .await
            .context("create container")?;
        let res = self.start_task(id).await;
        if res.is_err() {
            self.delete_task(id).await;
            self.remove(id).await;
        }
        res
    }

    async fn start_task(&self, id: &str) -> Result<()> {
        let ns = self.ns.as_str();
        let req = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: id.into(),
            parent: self.parent.clone(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(with_namespace!(req, ns))
            .await
            .context("prepare snapshot")?
            .into_inner()
            .mounts;
        let mut tasks = TasksClient::new(self.channel.clone());
        let req = CreateTaskRequest { container_id: id.into(), rootfs: mounts, ..Default::default() };
        tasks.create(with_namespace!(req, ns)).await.context("create task")?;
        let req = StartRequest { container_id: id.into(), exec_id: String::new() };
        tasks.start(with_namespace!(req, ns)).await.context("start task")?;
        Ok(())
    }

    async fn stop(&self, id: &str) -> Result<()> {
        let ns = self.ns.as_str();
        let mut tasks = TasksClient::new(self.channel.clone());
        let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal: 9, all: false };
        tasks.kill(with_namespace!(req, ns)).await.context("kill task")?;
        // The shim keeps an exit until the task is deleted, so a wait after the kill sees it.
        let req = WaitRequest { container_id: id.into(), exec_id: String::new() };
        tasks.wait(with_namespace!(req, ns)).await.context("wait task")?;
        let req = DeleteTaskRequest { container_id: id.into() };
        tasks.delete(with_namespace!(req, ns)).await.context("delete task")?;
        self.remove(id).await;
        Ok(())
    }

    /// A task that was created but did not start: killed and deleted, if present.
    async fn delete_task(&self, id: &str) {
        let ns = self.ns.as_str();
        let mut tasks = TasksClient::new(self.channel.clone());
        let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal: 9, all: true };
        let _ = tasks.kill(with_namespace!(req, ns)).await;
        let req = DeleteTaskRequest { container_id: id.into() };
        let _ = tasks.delete(with_namespace!(req, ns)).await;
    }

    /// Container and snapshot, each if present.
    async fn remove(&self, id: &str) {
        let ns = self.ns.as_str();
        let req = DeleteContainerRequest { id: id.into() };
        let _ = ContainersClient::new(self.channel.clone()).delete(with_namespace!(req, ns)).await;
        let req = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: id.into() };
        let _ = SnapshotsClient::new(self.channel.clone()).remove(with_namespace!(req, ns)).await;
    }

    async fn serve(&self, line: &str) -> (String, Result<()>) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let id = words.get(1).copied().unwrap_or("-").to_string();
        let res = match words.as_slice() {
            ["start", id, cgroup] => self.start(id, cgroup, None).await,
            ["start", id, cgroup, netns] => self.start(id, cgroup, Some(netns)).await,
            ["stop", id] => self.stop(id).await,
            _ => Err(anyhow::anyhow!("bad command {line:?}")),
        };
        (id, res)
    }
}

async fn client_from_args() -> Result<Client> {
    let mut flags = HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(name) = flag.strip_prefix("--") else { bail!("unexpected argument {flag:?}") };
        let value = args.next().with_context(|| format!("--{name} needs a value"))?;
        flags.insert(name.to_string(), value);
    }
    let mut take = |name: &str| flags.remove(name).with_context(|| format!("missing --{name}"));
    let (address, spec_path) = (take("address")?, take("spec")?);
    let spec = std::fs::read(&spec_path).with_context(|| format!("reading {spec_path}"))?;
    Ok(Client {
        ns: take("namespace")?,
        runtime: take("runtime")?,
        snapshotter: take("snapshotter")?,
        parent: take("parent")?,
        image: take("image")?,
        spec: serde_json::from_slice(&spec).with_context(|| format!("parsing {spec_path}"))?,
        channel: containerd_client::connect(&address).await.with_context(|| format!("connecting to {address}"))?,
    })
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run())
}

async fn run() -> Result<()> {
    let client = Arc::new(client_from_args().await?);
    let out = Arc::new(Mutex::new(tokio::io::stdout()));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        let (client, out) = (client.clone(), out.clone());
        pending.spawn(async move {
            let (id, res) = client.serve(&line).await;
            let reply = match res {
                Ok(()) => format!("ok {id}\n"),
                Err(e) => format!("err {id} {}\n", format!("{e:#}").replace('\n', " ")),
            };
            let mut out = out.lock().await;
            let _ = out.write_all(reply.as_bytes()).await;
            let _ = out.flush().await;
        });
    }
    while pending.join_next().await.is_some() {}
    Ok(())
}
