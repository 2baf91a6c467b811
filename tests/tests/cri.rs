//! Kubernetes' view: containerd 1.6's CRI plugin with Warren as a runtime handler (and runc's,
//! for comparison, in the same run), driven by a CRI client over containerd's socket as the
//! kubelet drives it. The effects are checked inside the containers, in their cgroups and on
//! the host; what the containers see must be the same under both handlers.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1 as cri;
use k8s_cri::v1::NamespaceMode;
use std::os::unix::fs::FileTypeExt;
use tungstenite::client::IntoClientRequest;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};
use warren_tests::cri::{namespaces, CriHost, Pod};
use warren_tests::*;

const MIB: i64 = 1 << 20;

/// `web` serves the pod's /etc on :8080 and writes a line every 200 ms; `side` echoes what
/// is written to its stdin, as uid 1000 on a read-only rootfs under the runtime's default
/// seccomp profile.
fn start_containers(pod: &mut Pod) -> Result<(String, String)> {
    let web = pod.start(
        "web",
        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done & exec httpd -f -p 8080 -h /etc",
        |c| {
            let linux = c.linux.as_mut().unwrap();
            linux.resources = Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 * MIB,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            });
            linux.security_context = Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            });
        },
    )?;
    let side = pod.start("side", "while read l; do echo attached:$l; done; sleep 3600", |c| {
        c.stdin = true;
        c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(namespaces()),
            run_as_user: Some(cri::Int64Value { value: 1000 }),
            readonly_rootfs: true,
            privileged: false,
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        });
    })?;
    Ok((web, side))
}

/// What the two containers see, as text, for the comparison between handlers.
fn observe(pod: &mut Pod, web: &str, side: &str) -> Result<BTreeMap<&'static str, String>> {
    let mut seen = BTreeMap::new();
    seen.insert("hostname", pod.out(web, &["hostname"])?);
    seen.insert("served over the pod's loopback", pod.out(side, &["wget", "-qO-", "http://127.0.0.1:8080/hostname"])?);
    seen.insert("side uid", pod.out(side, &["id", "-u"])?);
    seen.insert("side seccomp", pod.out(side, &["grep", "^Seccomp:", "/proc/self/status"])?);
    seen.insert("side nnp", pod.out(side, &["grep", "^NoNewPrivs:", "/proc/self/status"])?);
    let (code, text) = pod.exec(side, &["touch", "/x"])?;
    seen.insert("side writes /", format!("{code} {}", text.contains("Read-only file system")));
    seen.insert("web sysctl", pod.out(web, &["cat", "/proc/sys/kernel/shm_rmid_forced"])?);
    seen.insert("side pid 1", pod.out(side, &["cat", "/proc/1/cmdline"])?.replace('\0', " "));
    seen.insert("exit code", pod.exec(web, &["sh", "-c", "exit 3"])?.0.to_string());
    for ns in ["net", "ipc", "pid", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let same = pod.out(web, &["readlink", &path])? == pod.out(side, &["readlink", &path])?;
        seen.insert(ns_key(ns), same.to_string());
    }
    let web_caps = pod.out(web, &["grep", "^CapBnd:", "/proc/self/status"])?;
    seen.insert("web bounding caps", web_caps);
    let addr = pod.out(web, &["ip", "-4", "-o", "addr", "show", "eth0"])?;
    seen.insert("web has a pod address", addr.contains(" 10.91.").to_string());
    Ok(seen)
}

fn ns_key(ns: &str) -> &'static str {
    match ns {
        "net" => "same net ns",
        "ipc" => "same ipc ns",
        "pid" => "same pid ns",
        _ => "same uts ns",
    }
}

/// The pod's life under `handler`: what its containers saw.
fn pod_life(h: &CriHost, handler: &'static str) -> Result<BTreeMap<&'static str, String>> {
    let netns_before = netns_names();
    let mut pod = Pod::run(h, handler, &format!("pod-{handler}"))?;
    let (web, side) = start_containers(&mut pod)?;
    let mut seen = observe(&mut pod, &web, &side)?;
    ensure!(h.shims(handler).len() == 1, "{handler}: shims for one pod: {:?}", h.shims(handler));
    seen.insert("exec stream", exec_stream(&mut pod, &side)?);
    seen.insert("attach stream", attach_stream(&mut pod, &side)?);
    check_stats_and_update(&mut pod, &web)?;
    seen.insert("log reopened", reopen_log(&mut pod, &web)?.to_string());
    let hog = out_of_memory(&mut pod)?;
    seen.insert("out of memory", hog.1);
    let lost = start_error(&mut pod)?;
    seen.insert("start error", lost.1);
    let stopped = pod.stop(&web, 2)?;
    seen.insert("web stopped", format!("{} {}", stopped.exit_code, stopped.reason));
    let pod_cgroup = format!("{}/{handler}", h.cgroup_parent);
    pod.remove(&[&web, &side, &hog.0, &lost.0])?;
    ensure!(h.shims(handler).is_empty(), "{handler}: shims left: {:?}", h.shims(handler));
    ensure!(netns_names() == netns_before, "{handler}: netns left: {:?}", netns_names());
    for dir in cgroup_dirs(pod_cgroup.trim_start_matches('/')) {
        let children: Vec<_> = std::fs::read_dir(&dir)?.flatten().filter(|e| e.path().is_dir()).collect();
        ensure!(children.is_empty(), "{handler}: container cgroups left in {}", dir.display());
    }
    Ok(seen)
}

/// A container over its memory limit: killed, exit 137, reason OOMKilled (containerd learns
/// it from the shim's OOM event).
fn out_of_memory(pod: &mut Pod) -> Result<(String, String)> {
    let id = pod.start("hog", "x=aaaaaaaa; while true; do x=$x$x; done", |c| {
        let linux = c.linux.as_mut().unwrap();
        linux.resources = Some(cri::LinuxContainerResources { memory_limit_in_bytes: 16 * MIB, ..Default::default() });
        linux.security_context =
            Some(cri::LinuxContainerSecurityContext { namespace_options: Some(namespaces()), ..Default::default() });
    })?;
    let status = pod.exited(&id, Duration::from_secs(20))?;
    Ok((id, format!("{} {}", status.exit_code, status.reason)))
}

/// A command that does not exist: StartContainer fails naming it, and the container is left
/// exited with what the kubelet reports (exit code, reason).
fn start_error(pod: &mut Pod) -> Result<(String, String)> {
    let id = pod.create("lost", "", |c| c.command = vec!["/no/such/program".into()])?;
    let req = cri::StartContainerRequest { container_id: id.clone() };
    let err = match pod.h.block_on(pod.rt.start_container(req)) {
        Ok(_) => bail!("{}: StartContainer of /no/such/program succeeded", pod.handler),
        Err(e) => e.message().to_string(),
    };
    ensure!(err.contains("/no/such/program"), "{}: StartContainer error does not name the program: {err}", pod.handler);
    let status = pod.exited(&id, Duration::from_secs(5))?;
    Ok((id, format!("{} {}", status.exit_code, status.reason)))
}

/// A pod as node agents run them (kube-proxy, CNI daemons): privileged, on the host's
/// network. What its container sees, for the comparison between handlers.
fn privileged_pod_life(h: &CriHost, handler: &'static str) -> Result<BTreeMap<&'static str, String>> {
    let host_net = |ns: NamespaceMode| cri::NamespaceOption { network: ns as i32, ..namespaces() };
    let mut pod = Pod::run_with(h, handler, &format!("node-agent-{handler}"), |c| {
        let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
        sc.privileged = true;
        sc.namespace_options = Some(host_net(NamespaceMode::Node));
        c.hostname = String::new();
    })?;
    let agent = pod.start("agent", "exec sleep 3600", |c| {
        c.linux.as_mut().unwrap().security_context = Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            namespace_options: Some(host_net(NamespaceMode::Node)),
            ..Default::default()
        });
    })?;
    let mut seen = BTreeMap::new();
    let own_net = std::fs::read_link("/proc/self/ns/net")?.to_string_lossy().into_owned();
    seen.insert("host net ns", (pod.out(&agent, &["readlink", "/proc/self/ns/net"])? == own_net).to_string());
    seen.insert("caps", pod.out(&agent, &["grep", "^CapEff:", "/proc/self/status"])?);
    seen.insert("seccomp", pod.out(&agent, &["grep", "^Seccomp:", "/proc/self/status"])?);
    seen.insert("sys", pod.out(&agent, &["sh", "-c", "grep ' /sys ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1"])?);
    let host_devs =
        std::fs::read_dir("/dev")?.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_char_device())).count();
    let devs: usize = pod.out(&agent, &["sh", "-c", "find /dev -maxdepth 1 -type c | wc -l"])?.parse()?;
    seen.insert("host's char devices", (devs + 3 >= host_devs).to_string());
    let tty = exec_tty(&mut pod, &agent)?;
    seen.insert("exec tty", tty);
    pod.remove(&[&agent])?;
    Ok(seen)
}

/// Exec with a terminal: the command's stdin and stdout are a pty.
fn exec_tty(pod: &mut Pod, id: &str) -> Result<String> {
    let mut ws = exec_with_stdin(pod, id, "tty; test -t 0 && echo stdin-is-a-tty", true)?;
    let stdout = read_stdout(&mut ws, "stdin-is-a-tty")?;
    Ok(stdout.lines().next().unwrap_or_default().trim_end_matches('\r').to_string())
}

/// The named network namespaces (CRI's pods' are /run/netns/cni-*).
fn netns_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Exec through containerd's streaming server (websocket, v4.channel.k8s.io): stdin in,
/// stdout back.
fn exec_stream(pod: &mut Pod, id: &str) -> Result<String> {
    let mut ws = exec_with_stdin(pod, id, "read x; echo got:$x", false)?;
    send_stdin(&mut ws, b"hello\n")?;
    read_stdout_until(&mut ws, "got:hello")
}

/// Exec of `sh -c SCRIPT` with stdin and stdout (and stderr, unless on a terminal), its
/// stream open.
fn exec_with_stdin(pod: &mut Pod, id: &str, script: &str, tty: bool) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        stdin: true,
        stdout: true,
        stderr: !tty,
        tty,
    };
    let url = pod.h.block_on(pod.rt.exec(req)).context("Exec")?.into_inner().url;
    open_stream(&url)
}

fn attach_stream(pod: &mut Pod, id: &str) -> Result<String> {
    let req = cri::AttachRequest { container_id: id.into(), stdin: true, stdout: true, stderr: false, tty: false };
    let url = pod.h.block_on(pod.rt.attach(req)).context("Attach")?.into_inner().url;
    let mut ws = open_stream(&url)?;
    send_stdin(&mut ws, b"hi\n")?;
    read_stdout_until(&mut ws, "attached:hi")
}

fn open_stream(url: &str) -> Result<WebSocket<MaybeTlsStream<TcpStream>>> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
    let (ws, _) = tungstenite::connect(req).with_context(|| format!("websocket to {url}"))?;
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
    Ok(ws)
}

/// Channel 0 is stdin.
fn send_stdin(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, data: &[u8]) -> Result<()> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(data);
    ws.send(Message::binary(frame))?;
    Ok(())
}

/// The line of channel 1's text that holds `want` (within 10 s).
fn read_stdout_until(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, want: &str) -> Result<String> {
    let stdout = read_stdout(ws, want)?;
    Ok(stdout.lines().find(|l| l.contains(want)).unwrap_or_default().to_string())
}

/// Channel 1's text, until it holds `want` or 10 s pass.
fn read_stdout(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, want: &str) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut stdout = String::new();
    while Instant::now() < end {
        match ws.read() {
            Ok(Message::Binary(b)) if b.first() == Some(&1) => stdout += &String::from_utf8_lossy(&b[1..]),
            Ok(Message::Binary(b)) if b.first() == Some(&3) && b.len() > 1 => {
                bail!("stream error: {}", String::from_utf8_lossy(&b[1..]))
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("stream read"),
        }
        if stdout.contains(want) {
            let _ = ws.close(None);
            return Ok(stdout);
        }
    }
    bail!("no {want:?} on the stream; stdout so far: {stdout:?}")
}

/// ContainerStats has the cgroup's figures; UpdateContainerResources reaches the cgroup.
fn check_stats_and_update(pod: &mut Pod, id: &str) -> Result<()> {
    let pid = pod.pid(id)?;
    let limit = knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?;
    ensure!(read_knob(&limit)? == (64 * MIB).to_string(), "{}: memory limit {}", pod.handler, read_knob(&limit)?);
    let (quota, period) = cpu_bandwidth(pid)?;
    ensure!((quota.as_str(), period.as_str()) == ("50000", "100000"), "cpu bandwidth {quota} {period}");
    let req = cri::ContainerStatsRequest { container_id: id.into() };
    let stats = pod.h.block_on(pod.rt.container_stats(req)).context("ContainerStats")?.into_inner();
    let stats = stats.stats.context("no stats")?;
    let working_set = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value).unwrap_or(0);
    let cpu = stats.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value).unwrap_or(0);
    ensure!(working_set > 0 && cpu > 0, "{}: stats working set {working_set}, cpu {cpu}", pod.handler);
    let resources = cri::LinuxContainerResources {
        memory_limit_in_bytes: 96 * MIB,
        cpu_period: 100_000,
        cpu_quota: 20_000,
        ..Default::default()
    };
    let req =
        cri::UpdateContainerResourcesRequest { container_id: id.into(), linux: Some(resources), ..Default::default() };
    pod.h.block_on(pod.rt.update_container_resources(req)).context("UpdateContainerResources")?;
    ensure!(read_knob(&limit)? == (96 * MIB).to_string(), "{}: updated limit {}", pod.handler, read_knob(&limit)?);
    ensure!(cpu_bandwidth(pid)?.0 == "20000", "{}: updated quota {:?}", pod.handler, cpu_bandwidth(pid)?);
    Ok(())
}

/// The log rotated as the kubelet does it (rename, then ReopenContainerLog): new lines go to
/// a new file at the old path, in CRI's log format.
fn reopen_log(pod: &mut Pod, id: &str) -> Result<bool> {
    let log = PathBuf::from(&pod.config.log_directory).join("web.log");
    wait_for_line(&log, " stdout F tick ")?;
    std::fs::rename(&log, log.with_extension("log.1"))?;
    let req = cri::ReopenContainerLogRequest { container_id: id.into() };
    pod.h.block_on(pod.rt.reopen_container_log(req)).context("ReopenContainerLog")?;
    wait_for_line(&log, " stdout F tick ")?;
    Ok(true)
}

fn wait_for_line(path: &Path, want: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.contains(want)) {
            return Ok(());
        }
        ensure!(Instant::now() < end, "no {want:?} in {}: {text:?}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One pod with two containers, through every CRI call the kubelet makes for it, under
/// Warren's handler and runc's: the effects are real and the same, and nothing is left.
#[test]
fn a_pod_runs_the_same_under_warren_and_runc_through_cri() -> Result<()> {
    let t = Test::new("cri_pod");
    let h = CriHost::start(&t, 1)?;
    h.pull_busybox()?;
    let warren = pod_life(&h, "warren")?;
    let runc = pod_life(&h, "runc")?;
    println!("what the containers saw: {warren:#?}");
    for (k, v) in &warren {
        ensure!(runc.get(k) == Some(v), "{k}: warren saw {v:?}, runc {:?}", runc.get(k));
    }
    ensure!(warren["served over the pod's loopback"] == "cri-pod", "{warren:?}");
    ensure!(warren["side uid"] == "1000" && warren["side seccomp"] == "Seccomp:\t2", "{warren:?}");
    ensure!(warren["side writes /"] == "1 true" && warren["web sysctl"] == "1", "{warren:?}");
    ensure!(warren["same net ns"] == "true" && warren["same ipc ns"] == "true", "{warren:?}");
    ensure!(warren["same pid ns"] == "false" && warren["exit code"] == "3", "{warren:?}");
    ensure!(warren["out of memory"] == "137 OOMKilled", "{warren:?}");
    drop(h);
    t.assert_no_leftovers();
    Ok(())
}

/// A privileged pod on the host's network, with a terminal exec: the same under both handlers.
#[test]
fn a_privileged_host_network_pod_runs_the_same_under_warren_and_runc() -> Result<()> {
    let t = Test::new("cri_privileged");
    let h = CriHost::start(&t, 2)?;
    h.pull_busybox()?;
    let warren = privileged_pod_life(&h, "warren")?;
    let runc = privileged_pod_life(&h, "runc")?;
    println!("what the privileged container saw: {warren:#?}");
    ensure!(warren == runc, "warren saw {warren:#?}\nrunc saw {runc:#?}");
    ensure!(warren["host net ns"] == "true" && warren["seccomp"] == "Seccomp:\t0", "{warren:?}");
    ensure!(warren["sys"] == "rw" && warren["host's char devices"] == "true", "{warren:?}");
    ensure!(warren["exec tty"] == "/dev/pts/0", "{warren:?}");
    drop(h);
    t.assert_no_leftovers();
    Ok(())
}
