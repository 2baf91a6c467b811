//! A private containerd with its CRI plugin on, for the CRI tests: two runtime handlers
//! (`warren`: Warren's shim; `runc`: runc's, for comparison), pod networking through CNI
//! (bridge + host-local, loopback), and images from a real registry on 127.0.0.1 (busybox and
//! a pause image built here). Everything lives in the test's dir; the bridge, the pods' cgroup
//! parent and containerd's shim socket dir are removed on drop.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cmd::{command, run_with_deadline};
use crate::{busybox_image, cgroup_dirs, pause_tool, processes, warren_bin, ProcMatch, Registry, Test};

/// Host dirs that containerd 1.6 and CNI use whatever the config says: the shims' sockets,
/// and libcni's cache of ADD results (emptied by DEL). Removed on drop when this host made them.
const HOST_DIRS: [&str; 5] =
    ["/run/containerd/s", "/run/containerd/fifo", "/run/containerd", "/var/lib/cni/results", "/var/lib/cni"];

pub struct CriHost {
    dir: PathBuf,
    containerd: Child,
    _registry: Registry,
    /// The busybox image's name in the registry.
    pub busybox: String,
    /// What pods are given as linux.cgroup_parent: one dir per hierarchy, removed on drop.
    pub cgroup_parent: String,
    bridge: String,
    /// Which of HOST_DIRS this host made.
    made: Vec<&'static str>,
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriHost {
    /// `k` tells hosts apart within one test binary (bridge name and subnet).
    pub fn start(t: &Test, k: u8) -> Result<CriHost> {
        let dir = t.dir().join("cri");
        std::fs::create_dir_all(&dir)?;
        let registry = Registry::start(&dir)?;
        registry.push(&busybox_image().join("busybox-oci.tar"), "warren-test/busybox:1")?;
        registry.push_from(&format!("oci:{}:1", pause_image(&dir)?.display()), "warren-test/pause:1")?;
        let made = HOST_DIRS.iter().copied().filter(|d| !Path::new(d).exists()).collect();
        let bridge = format!("wcri{}{k}", std::process::id() % 1000);
        let cgroup_parent = format!("/warren-cri-{}-{k}", std::process::id());
        write_cni(&dir, &bridge, k)?;
        write_config(&dir, &registry.addr)?;
        let containerd = spawn_containerd(&dir)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let sock = dir.join("containerd.sock");
        let channel = rt.block_on(connect(&sock))?;
        let busybox = format!("{}/warren-test/busybox:1", registry.addr);
        let mut host =
            CriHost { dir, containerd, _registry: registry, busybox, cgroup_parent, bridge, made, rt, channel };
        host.wait_ready()?;
        Ok(host)
    }

    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// PullImage of the registry's busybox.
    pub fn pull_busybox(&self) -> Result<()> {
        let req = cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: self.busybox.clone(), ..Default::default() }),
            ..Default::default()
        };
        self.block_on(self.images().pull_image(req)).context("PullImage")?;
        Ok(())
    }

    /// Runs a client call to its end.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The shim processes of this containerd for `handler`: (pid, description).
    pub fn shims(&self, handler: &str) -> Vec<(i32, String)> {
        // The description reads "pid N (why): CMDLINE".
        let name = format!("/containerd-shim-{handler}-v2 -namespace ");
        let paths = [self.dir.clone()];
        processes(&ProcMatch { paths: &paths, roots: &[], ids: &[] })
            .into_iter()
            .filter(|(_, desc)| desc.contains(&name))
            .collect()
    }

    /// containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Stops and removes every pod (and so every container) that is still there, as the
    /// kubelet would: a test that failed half-way leaves no sandbox, netns or shim.
    fn remove_pods(&self) {
        let mut rt = self.runtime();
        let Ok(pods) = self.block_on(rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })) else {
            return;
        };
        for pod in pods.into_inner().items {
            let stop = k8s_cri::v1::StopPodSandboxRequest { pod_sandbox_id: pod.id.clone() };
            let _ = self.block_on(rt.stop_pod_sandbox(stop));
            let remove = k8s_cri::v1::RemovePodSandboxRequest { pod_sandbox_id: pod.id };
            let _ = self.block_on(rt.remove_pod_sandbox(remove));
        }
    }

    /// The pods' log dir (CRI writes each container's log under it).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    fn wait_ready(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let mut rt = self.runtime();
            let status = self.rt.block_on(rt.status(k8s_cri::v1::StatusRequest { verbose: false }));
            if let Ok(s) = status {
                let conds = s.into_inner().status.map(|s| s.conditions).unwrap_or_default();
                if conds.iter().all(|c| c.status) && !conds.is_empty() {
                    return Ok(());
                }
            }
            if let Some(st) = self.containerd.try_wait()? {
                bail!("containerd exited ({st}): {}", self.log_tail());
            }
            ensure!(Instant::now() < end, "containerd's CRI not ready within 20 s: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A pod as the kubelet makes one: the pod's network and IPC namespaces, a PID namespace per
/// container, a namespaced sysctl, under `cgroup_parent/HANDLER`, its logs in `logs/NAME`.
pub struct Pod<'a> {
    pub h: &'a CriHost,
    pub rt: RuntimeServiceClient<Channel>,
    pub handler: &'static str,
    pub id: String,
    pub config: cri::PodSandboxConfig,
}

impl<'a> Pod<'a> {
    pub fn run(h: &'a CriHost, handler: &'static str, name: &str) -> Result<Pod<'a>> {
        Pod::run_with(h, handler, name, |_| {})
    }

    /// RunPodSandbox of the pod above, its config `tune`d first.
    pub fn run_with(
        h: &'a CriHost,
        handler: &'static str,
        name: &str,
        tune: impl FnOnce(&mut cri::PodSandboxConfig),
    ) -> Result<Pod<'a>> {
        let log_dir = h.log_dir().join(name);
        std::fs::create_dir_all(&log_dir)?;
        let mut config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "warren-test".into(),
                attempt: 0,
            }),
            hostname: "cri-pod".into(),
            log_directory: log_dir.to_string_lossy().into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/{handler}", h.cgroup_parent),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                sysctls: HashMap::from([("kernel.shm_rmid_forced".into(), "1".into())]),
                ..Default::default()
            }),
            ..Default::default()
        };
        tune(&mut config);
        let mut rt = h.runtime();
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        let id = h
            .block_on(rt.run_pod_sandbox(req))
            .with_context(|| format!("RunPodSandbox ({handler}): {}", h.log_tail()))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod { h, rt, handler, id, config })
    }

    /// Creates and starts a busybox container running `sh -c SCRIPT`.
    pub fn start(&mut self, name: &str, script: &str, tune: impl FnOnce(&mut cri::ContainerConfig)) -> Result<String> {
        let id = self.create(name, script, tune)?;
        let req = cri::StartContainerRequest { container_id: id.clone() };
        self.h.block_on(self.rt.start_container(req)).with_context(|| format!("StartContainer {name}"))?;
        Ok(id)
    }

    /// CreateContainer of busybox running `sh -c SCRIPT`, `tune`d.
    pub fn create(&mut self, name: &str, script: &str, tune: impl FnOnce(&mut cri::ContainerConfig)) -> Result<String> {
        let mut config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(cri::ImageSpec { image: self.h.busybox.clone(), ..Default::default() }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        };
        tune(&mut config);
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        let r = self.h.block_on(self.rt.create_container(req));
        let r = r.with_context(|| format!("CreateContainer {name} ({}): {}", self.handler, self.h.log_tail()))?;
        Ok(r.into_inner().container_id)
    }

    /// ExecSync: (exit code, stdout + stderr).
    pub fn exec(&mut self, id: &str, cmd: &[&str]) -> Result<(i32, String)> {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        };
        let r = self.h.block_on(self.rt.exec_sync(req)).with_context(|| format!("ExecSync {cmd:?}"))?.into_inner();
        let text = String::from_utf8_lossy(&r.stdout).to_string() + &String::from_utf8_lossy(&r.stderr);
        Ok((r.exit_code, text.trim_end().to_string()))
    }

    /// The output of a command that must succeed.
    pub fn out(&mut self, id: &str, cmd: &[&str]) -> Result<String> {
        let (code, text) = self.exec(id, cmd)?;
        ensure!(code == 0, "{cmd:?} in {} exited {code}: {text}", self.handler);
        Ok(text)
    }

    /// The container's init pid on the host (ContainerStatus' verbose info).
    pub fn pid(&mut self, id: &str) -> Result<i32> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: true };
        let r = self.h.block_on(self.rt.container_status(req))?.into_inner();
        let info: serde_json::Value = serde_json::from_str(r.info.get("info").context("no verbose info")?)?;
        Ok(info["pid"].as_i64().context("no pid in the verbose info")? as i32)
    }

    pub fn status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        let r = self.h.block_on(self.rt.container_status(req))?.into_inner();
        r.status.context("no status")
    }

    /// The status once the container has exited (within `wait`).
    pub fn exited(&mut self, id: &str, wait: Duration) -> Result<cri::ContainerStatus> {
        let end = Instant::now() + wait;
        loop {
            let status = self.status(id)?;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            ensure!(Instant::now() < end, "{id} ({}) still in state {} after {wait:?}", self.handler, status.state);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// StopContainer (SIGTERM, SIGKILL after `timeout` s): its status once exited.
    pub fn stop(&mut self, id: &str, timeout: i64) -> Result<cri::ContainerStatus> {
        let req = cri::StopContainerRequest { container_id: id.to_string(), timeout };
        self.h.block_on(self.rt.stop_container(req)).with_context(|| format!("StopContainer {id}"))?;
        self.exited(id, Duration::from_secs(5))
    }

    /// Stops and removes `containers`, then the pod.
    pub fn remove(mut self, containers: &[&str]) -> Result<()> {
        for id in containers {
            self.stop(id, 2)?;
            let req = cri::RemoveContainerRequest { container_id: id.to_string() };
            self.h.block_on(self.rt.remove_container(req)).with_context(|| format!("RemoveContainer {id}"))?;
        }
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: self.id.clone() };
        self.h.block_on(self.rt.stop_pod_sandbox(req)).context("StopPodSandbox")?;
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: self.id.clone() };
        self.h.block_on(self.rt.remove_pod_sandbox(req)).context("RemovePodSandbox")?;
        Ok(())
    }
}

/// The pod's network and IPC, a PID namespace per container. The kubelet sends this both in
/// the pod's config and in each container's security context.
pub fn namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Pod as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Drop for CriHost {
    fn drop(&mut self) {
        self.remove_pods();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.containerd.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && matches!(self.containerd.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.containerd.kill();
        let _ = self.containerd.wait();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        for top in cgroup_dirs(self.cgroup_parent.trim_start_matches('/')) {
            remove_cgroup_tree(&top);
        }
        for d in &self.made {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// rmdir of `dir` and its descendants, deepest first (a cgroup dir holds only files the
/// kernel removes with it).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

async fn connect(sock: &Path) -> Result<Channel> {
    let sock = sock.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let sock = sock.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(sock).await?)) }
    });
    // The URI is not used: every connection goes to the socket.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match Endpoint::try_from("http://[::]:50051")?.connect_with_connector(connector.clone()).await {
            Ok(ch) => return Ok(ch),
            Err(e) if Instant::now() > end => return Err(e).context("connect to containerd's socket"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The pause image as an OCI layout (tag "1") in `dir`: pause.c, static, as /pause.
fn pause_image(dir: &Path) -> Result<PathBuf> {
    let bin = pause_tool(dir)?;
    let layout = dir.join("pause-layout");
    let bundle = dir.join("pause-bundle");
    let umoci = |args: &[&str], tag: &str| -> Result<()> {
        let mut c = command("umoci");
        c.args(args);
        run_with_deadline(c, &dir.join(format!("umoci-{tag}")), Duration::from_secs(60))?.ok()?;
        Ok(())
    };
    let image = format!("{}:1", layout.display());
    umoci(&["init", "--layout", &layout.to_string_lossy()], "init")?;
    umoci(&["new", "--image", &image], "new")?;
    umoci(&["unpack", "--image", &image, &bundle.to_string_lossy()], "unpack")?;
    std::fs::copy(&bin, bundle.join("rootfs/pause")).context("copy pause into the image")?;
    umoci(&["repack", "--image", &image, &bundle.to_string_lossy()], "repack")?;
    umoci(&["config", "--image", &image, "--config.entrypoint", "/pause", "--os", "linux"], "config")?;
    std::fs::remove_dir_all(&bundle)?;
    Ok(layout)
}

/// One bridge network: host-local addresses in 10.91.K.0/24, their leases in the test's dir.
fn write_cni(dir: &Path, bridge: &str, k: u8) -> Result<()> {
    let conf = dir.join("cni");
    std::fs::create_dir_all(&conf)?;
    let net = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": format!("warren-cri-{k}"),
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("10.91.{k}.0/24")}]],
                "dataDir": dir.join("ipam"),
            },
        }],
    });
    std::fs::write(conf.join("10-warren-cri.conflist"), serde_json::to_vec_pretty(&net)?)?;
    Ok(())
}

/// containerd's config: CRI on, the two handlers, CNI and the registry (plain HTTP).
fn write_config(dir: &Path, registry: &str) -> Result<()> {
    let d = dir.display();
    let warren = warren_bin();
    std::fs::write(
        dir.join("warren-shim.toml"),
        format!("BinaryName = \"{}\"\nRoot = \"{d}/warren-root\"\n", warren.display()),
    )?;
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    let text = format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[{cri}]
  sandbox_image = "{registry}/warren-test/pause:1"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE here: a score below containerd's own cannot be set.
  restrict_oom_score_adj = true
  max_container_log_line_size = 16384
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni"
  max_conf_num = 1
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  BinaryName = "runc"
  Root = "{d}/runc-root"
[{cri}.containerd.runtimes.warren]
  runtime_type = "io.containerd.warren.v2"
[{cri}.containerd.runtimes.warren.options]
  ConfigPath = "{d}/warren-shim.toml"
[{cri}.registry.mirrors."{registry}"]
  endpoint = ["http://{registry}"]
"#
    );
    std::fs::write(dir.join("config.toml"), text)?;
    Ok(())
}

/// containerd with the shim binaries beside the binary under test first on its PATH.
fn spawn_containerd(dir: &Path) -> Result<Child> {
    let bin_dir = warren_bin().parent().context("warren's dir")?.to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let log = std::fs::File::create(dir.join("containerd.log"))?;
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("containerd (scripts/setup.sh installs it)")
}
