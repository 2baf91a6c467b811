//! Cold migration between two hosts on one machine (network namespaces joined by a veth,
//! each host with its own cgroup subtree, state root and image store): the container goes
//! on from its memory on the target, its file holds every line written before the freeze,
//! its limits and hostname move with it, and the source keeps nothing. A stream cut
//! half-way leaves it running on the source and nothing on the target. Both ends hold keys
//! made by `warren migrate keygen` and pin each other's certificate; a peer that is not
//! pinned, a client without a key, a replayed stream and a config.json the receiver's policy
//! refuses are all turned away before anything is restored. Needs criu.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use warren::migrate::tls::Tls;
use warren_tests::*;

const MIB: u64 = 1 << 20;
const PORT: u16 = 7777;
const IMAGE: &str = "warren/busybox:latest";

/// The built-in busybox image's OCI archive.
fn busybox_archive() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(ws.join("scripts/make-busybox-image.sh")).output().unwrap();
        assert!(out.status.success(), "make-busybox-image.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("busybox-oci.tar")
    })
}

/// Counts in a shell variable; each value is appended to /log and written to /count
/// (through a rename, so no reader sees it half-written).
const COUNTER: &str =
    "i=0; while :; do i=$((i+1)); echo $i >> /log; echo $i > /count.new; mv /count.new /count; sleep 0.05; done";

fn import(host: &FakeHost) -> Result<()> {
    let archive = busybox_archive().to_string_lossy().into_owned();
    host.store_cmd("image", &["import", "--name", IMAGE, &archive])?.ok().context("import")?;
    Ok(())
}

/// An image bundle on `host` running the counter, with limits and a hostname.
fn counter_bundle(host: &FakeHost, id: &str) -> Result<PathBuf> {
    counter_bundle_with(host, id, &[])
}

/// The same with `bundle create` flags.
fn counter_bundle_with(host: &FakeHost, id: &str, flags: &[&str]) -> Result<PathBuf> {
    script_bundle(host, id, flags, COUNTER)
}

/// The same running `script`.
fn script_bundle(host: &FakeHost, id: &str, flags: &[&str], script: &str) -> Result<PathBuf> {
    let dir = host.bundles.join(id);
    let d = dir.to_string_lossy().into_owned();
    let args = [&["create", "--image", IMAGE], flags, &[&d, "--", "sh", "-c", script]].concat();
    host.store_cmd("bundle", &args)?.ok()?;
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["hostname"] = json!("moved-box");
    cfg["root"]["readonly"] = json!(false);
    cfg["linux"]["resources"] = json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 50}});
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    Ok(dir)
}

fn count(bundle: &Path) -> Result<u64> {
    read_counter(&bundle.join("rootfs/count"))
}

fn wait_count_above(bundle: &Path, above: u64, timeout: Duration) -> Result<u64> {
    wait_counter_above(&bundle.join("rootfs/count"), above, timeout)
}

/// `migrate receive --once` on `host` in a thread; returns once it listens.
fn receive(host: &FakeHost, port: u16) -> Result<JoinHandle<Result<Out>>> {
    receive_with(host, port, &[], &[])
}

/// The same with global flags (`--criu PATH`) before the verb and `receive` flags after it.
fn receive_with(host: &FakeHost, port: u16, global: &[&str], flags: &[&str]) -> Result<JoinHandle<Result<Out>>> {
    receive_as(&host.warren, host, port, global, flags)
}

/// The same through `warren` (the host's, or another build of it).
fn receive_as(
    warren: &Warren,
    host: &FakeHost,
    port: u16,
    global: &[&str],
    flags: &[&str],
) -> Result<JoinHandle<Result<Out>>> {
    let listen = format!("{}:{port}", host.addr);
    let bundles = host.bundles.to_string_lossy().into_owned();
    let tls = tls_dir(host).to_string_lossy().into_owned();
    let verb = [&["receive", "--listen", &listen, "--bundles", &bundles, "--once", "--tls-dir", &tls], flags].concat();
    let args: Vec<String> = global.iter().copied().chain(host.migrate_args(&verb)).map(String::from).collect();
    let warren = warren.clone();
    let handle = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        warren.cmd_for(&args, Duration::from_secs(120))
    });
    wait_listening(&host.netns_path(), port)?;
    Ok(handle)
}

/// `migrate [GLOBAL] send --tls-dir D ID TARGET` on `host`.
fn send(host: &FakeHost, global: &[&str], id: &str, target: &str) -> Result<Out> {
    let tls = tls_dir(host).to_string_lossy().into_owned();
    host.migrate(&[global, &["send", "--tls-dir", &tls, id, target]].concat())
}

/// A host's migration identity and trusted peers.
fn tls_dir(host: &FakeHost) -> PathBuf {
    host.store.with_file_name("tls")
}

/// A new identity in `dir`, made by the real binary: its certificate.
fn keygen(t: &Test, dir: &Path) -> Result<PathBuf> {
    let out = t.warren.cmd(&["migrate", "keygen", "--dir", &dir.to_string_lossy()])?;
    ensure!(out.ok()?.stdout.contains(" sha256:"), "keygen prints no fingerprint: {out}");
    Ok(dir.join("host.crt"))
}

/// Makes the identity in `dir` trust `cert`, as peers/NAME.crt.
fn trust(dir: &Path, cert: &Path, name: &str) -> Result<()> {
    std::fs::copy(cert, dir.join("peers").join(format!("{name}.crt")))?;
    Ok(())
}

/// An identity of the test's own (a proxy's, a hand-made client's) that both hosts trust
/// and that trusts them.
fn test_identity(t: &Test, pair: &HostPair, name: &str) -> Result<Tls> {
    let dir = t.dir().join(name);
    let cert = keygen(t, &dir)?;
    for host in [&pair.a, &pair.b] {
        trust(&tls_dir(host), &cert, name)?;
        trust(&dir, &tls_dir(host).join("host.crt"), &host.name)?;
    }
    Ok(Tls::load(&dir, &[])?)
}

/// Polls the namespace's TCP table until something listens on `port`.
fn wait_listening(netns: &str, port: u16) -> Result<()> {
    let needle = format!(":{port:04X} 00000000:0000 0A");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let out =
            std::process::Command::new("nsenter").args([&format!("--net={netns}"), "cat", "/proc/net/tcp"]).output()?;
        if String::from_utf8_lossy(&out.stdout).contains(&needle) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port} in {netns}")
}

/// Runs `f` in a thread inside the host's network namespace.
fn in_netns<T: Send + 'static>(
    host: &FakeHost,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let path = host.netns_path();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        // SAFETY: setns(2) on an fd we own; it moves only this thread.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        f()
    })
}

/// What must be gone from a host after the container left it (or never arrived).
fn assert_host_empty(host: &FakeHost) -> Result<()> {
    let entries =
        |p: &Path| std::fs::read_dir(p).map(|r| r.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    ensure!(entries(host.warren.root()).is_empty(), "{}: state left: {:?}", host.name, entries(host.warren.root()));
    ensure!(entries(&host.bundles).is_empty(), "{}: bundles left: {:?}", host.name, entries(&host.bundles));
    ensure!(entries(&host.work).is_empty(), "{}: work files left: {:?}", host.name, entries(&host.work));
    ensure!(entries(&host.store.join("bundles")).is_empty(), "{}: bundle records left", host.name);
    ensure!(host.child_cgroups().is_empty(), "{}: cgroups left: {:?}", host.name, host.child_cgroups());
    let mounts = mounts_under(&host.bundles);
    ensure!(mounts.is_empty(), "{}: mounts left: {mounts:?}", host.name);
    Ok(())
}

/// Every line 1..=n, each once, in order.
fn assert_log_complete(log: &str, at_least: u64) -> Result<u64> {
    let mut expect = 1;
    for line in log.lines() {
        let n: u64 = line.trim().parse().with_context(|| format!("log line {line:?}"))?;
        ensure!(n == expect, "log jumps from {} to {n}", expect - 1);
        expect += 1;
    }
    ensure!(expect > at_least, "log ends at {}, the counter had reached {at_least}", expect - 1);
    Ok(expect - 1)
}

/// Where the busybox image is imported before a test.
enum Image {
    OnBoth,
    OnSource,
    Nowhere,
}

/// A test with two hosts, or None (with a note) where there is no criu.
fn two_hosts(name: &str, image: Image) -> Result<Option<(Test, HostPair)>> {
    if !have_criu()? {
        return Ok(None);
    }
    let t = Test::new(name);
    let pair = HostPair::new(&t)?;
    // Each host has its key, and pins the other's certificate.
    let certs = [keygen(&t, &tls_dir(&pair.a))?, keygen(&t, &tls_dir(&pair.b))?];
    trust(&tls_dir(&pair.a), &certs[1], &pair.b.name)?;
    trust(&tls_dir(&pair.b), &certs[0], &pair.a.name)?;
    match image {
        Image::OnBoth => [&pair.a, &pair.b].into_iter().try_for_each(import)?,
        Image::OnSource => import(&pair.a)?,
        Image::Nowhere => {}
    }
    Ok(Some((t, pair)))
}

/// The counter running on `host` from an image bundle, past 10: (id, bundle, its guard).
fn run_counter(t: &Test, host: &FakeHost) -> Result<(String, PathBuf, Container)> {
    let id = t.id("c");
    let src = counter_bundle(host, &id)?;
    let guard = run_past_10(host, &id, &src, Duration::from_secs(10))?;
    Ok((id, src, guard))
}

/// `warren run -d` of a counting bundle on `host`, once it has counted past 10: its guard.
fn run_past_10(host: &FakeHost, id: &str, bundle: &Path, timeout: Duration) -> Result<Container> {
    let guard = host.warren.adopt(id);
    host.warren.cmd(&["run", "-d", "--bundle", &bundle.to_string_lossy(), id])?.ok()?;
    wait_count_above(bundle, 10, timeout)?;
    Ok(guard)
}

/// Running on `host`, counting on from its value, every line of its log there.
fn assert_counts_on(host: &FakeHost, id: &str, bundle: &Path) -> Result<()> {
    ensure!(host.warren.state(id)?["status"] == "running", "status on {}", host.name);
    let now = count(bundle)?;
    let later = wait_count_above(bundle, now + 5, Duration::from_secs(10))?;
    assert_log_complete(&std::fs::read_to_string(bundle.join("rootfs/log"))?, later)?;
    Ok(())
}

/// Deletes the counter and its bundle on `host`; nothing of it may be left there.
fn remove_counter(host: &FakeHost, guard: Container, bundle: &Path) -> Result<()> {
    drop(guard);
    host.store_cmd("bundle", &["rm", &bundle.to_string_lossy()])?.ok()?;
    assert_host_empty(host)
}

/// `migrate send` of `id` from A to B's `receive --once`, both succeeding: B's output, and
/// the guard of the container, which is B's now (A's guard is given up).
fn move_to_b(pair: &HostPair, id: &str, guard_a: Container) -> Result<(Out, Container)> {
    move_to_b_with(pair, id, guard_a, &[])
}

/// The same with `send` flags.
fn move_to_b_with(pair: &HostPair, id: &str, guard_a: Container, flags: &[&str]) -> Result<(Out, Container)> {
    let rx = receive(&pair.b, PORT)?;
    let tls = tls_dir(&pair.a).to_string_lossy().into_owned();
    let target = format!("{}:{PORT}", pair.b.addr);
    let sent = pair.a.migrate(&[&["send", "--tls-dir", &tls], flags, &[id, &target]].concat())?;
    let got = rx.join().expect("receive thread")?;
    sent.ok().context("send")?;
    got.ok().context("receive")?;
    std::mem::forget(guard_a);
    Ok((got, pair.b.warren.adopt(id)))
}

#[test]
fn a_counting_container_moves_to_the_other_host() -> Result<()> {
    // Only the source has the image: its layers travel too.
    let Some((t, pair)) = two_hosts("mig_move", Image::OnSource)? else {
        return Ok(());
    };
    let (id, _, guard_a) = run_counter(&t, &pair.a)?;

    let (got, guard_b) = move_to_b(&pair, &id, guard_a)?;
    ensure!(got.stdout.contains(&format!("received {id}")) && got.stdout.contains("1 layers received"), "{got}");
    ensure!(got.stdout.contains("(certificate sha256:"), "B does not name A's certificate: {got}");
    // A host key is never replaced.
    let again = t.warren.cmd(&["migrate", "keygen", "--dir", &tls_dir(&pair.a).to_string_lossy()])?;
    ensure!(again.failed()?.error_line().contains("host.key exists"), "keygen over a key: {again}");

    // On B: the counter goes on from where it was, not from 0.
    let dst = pair.b.bundles.join(&id);
    let at_arrival = count(&dst)?;
    ensure!(at_arrival > 10, "counter on B starts at {at_arrival}");
    wait_count_above(&dst, at_arrival + 5, Duration::from_secs(10))?;
    assert_log_complete(&std::fs::read_to_string(dst.join("rootfs/log"))?, at_arrival)?;
    ensure!(pair.b.warren.state(&id)?["status"] == "running", "status on B");
    let pid = pair.b.warren.state(&id)?["pid"].as_i64().context("pid")? as i32;
    let mem = read_knob(&knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?)?;
    ensure!(mem == (64 * MIB).to_string(), "memory limit on B: {mem}");
    let pids_dir = cgroup_dir(pid, "pids")?;
    ensure!(read_knob(&pids_dir.join("pids.max"))? == "50", "pids limit on B");
    ensure!(
        pair.b.cgroups.iter().any(|d| pids_dir.starts_with(d)),
        "B's container cgroup {pids_dir:?} is not under host B's"
    );
    let out = pair.b.warren.cmd(&["exec", &id, "hostname"])?;
    ensure!(out.ok()?.stdout.trim() == "moved-box", "hostname on B: {out}");

    // On A: nothing.
    assert_host_empty(&pair.a)?;
    ensure!(pair.a.warren.cmd(&["state", &id])?.failed().is_ok(), "state on A");

    drop(guard_b);
    pair.b.store_cmd("bundle", &["rm", &dst.to_string_lossy()])?.ok()?;
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// The counter, holding 4 MiB of random text in a shell variable: its md5 goes to /sum0 at
/// the start, and to /sum1 whenever /check appears.
const HOLDER: &str = "x=$(head -c 2097152 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo \"$x\" | md5sum > /sum0; \
     i=0; while :; do i=$((i+1)); echo $i >> /log; echo $i > /count.new; mv /count.new /count; \
     if [ -e /check ]; then echo \"$x\" | md5sum > /sum1.new; mv /sum1.new /sum1; rm /check; fi; sleep 0.05; done";

/// The counter with 300 sleeping children beside it.
const CROWD: &str = "for i in $(seq 300); do sleep 100000 & done; \
     i=0; while :; do i=$((i+1)); echo $i >> /log; echo $i > /count.new; mv /count.new /count; sleep 0.05; done";

#[test]
fn a_container_with_hundreds_of_processes_moves() -> Result<()> {
    // Each process's page map is an answer of B's page server to read.
    let Some((t, pair)) = two_hosts("mig_crowd", Image::OnBoth)? else {
        return Ok(());
    };
    let id = t.id("c");
    let src = script_bundle(&pair.a, &id, &[], CROWD)?;
    let path = src.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["linux"]["resources"] = json!({"memory": {"limit": 512 * MIB}, "pids": {"limit": 400}});
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    let guard_a = run_past_10(&pair.a, &id, &src, Duration::from_secs(30))?;

    let (_, guard_b) = move_to_b(&pair, &id, guard_a)?;
    let dst = pair.b.bundles.join(&id);
    assert_counts_on(&pair.b, &id, &dst)?;
    let pid = pair.b.warren.state(&id)?["pid"].as_i64().context("pid")? as i32;
    let procs = read_knob(&cgroup_dir(pid, "pids")?.join("pids.current"))?;
    ensure!(procs.parse::<u32>()? >= 301, "processes on B: {procs}");
    assert_host_empty(&pair.a)?;

    remove_counter(&pair.b, guard_b, &dst)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_container_moved_with_lazy_pages_runs_on_with_all_its_memory() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_lazy", Image::OnBoth)? else {
        return Ok(());
    };
    let id = t.id("c");
    let src = script_bundle(&pair.a, &id, &[], HOLDER)?;
    let guard_a = run_past_10(&pair.a, &id, &src, Duration::from_secs(20))?;
    let sum0 = std::fs::read_to_string(src.join("rootfs/sum0"))?;

    let (got, guard_b) = move_to_b_with(&pair, &id, guard_a, &["--lazy-pages"])?;
    ensure!(got.stdout.contains("memory filled"), "no post-copy on B: {got}");

    // On B: it counts on, and the 4 MiB it held read back the same.
    let dst = pair.b.bundles.join(&id);
    assert_counts_on(&pair.b, &id, &dst)?;
    std::fs::write(dst.join("rootfs/check"), "")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !dst.join("rootfs/sum1").exists() {
        ensure!(std::time::Instant::now() < deadline, "no /sum1 on B");
        std::thread::sleep(Duration::from_millis(50));
    }
    let sum1 = std::fs::read_to_string(dst.join("rootfs/sum1"))?;
    ensure!(sum0 == sum1 && sum0.len() > 32, "memory on B: md5 {sum1:?}, on A it was {sum0:?}");
    assert_host_empty(&pair.a)?;

    remove_counter(&pair.b, guard_b, &dst)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_bundle_mounted_in_its_container_moves_and_gets_the_targets_paths() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_private", Image::OnBoth)? else {
        return Ok(());
    };
    let id = t.id("c");
    let src = counter_bundle_with(&pair.a, &id, &["--mount-in-container"])?;
    let guard_a = pair.a.warren.adopt(&id);
    pair.a.warren.cmd(&["run", "-d", "--bundle", &src.to_string_lossy(), &id])?.ok()?;
    // Nothing is mounted on the host: what the counter writes is read from its upper dir.
    wait_counter_above(&src.join("upper/count"), 10, Duration::from_secs(10))?;
    ensure!(mounts_under(&src).is_empty(), "A mounted the rootfs on the host");

    let (_, guard_b) = move_to_b(&pair, &id, guard_a)?;

    let dst = pair.b.bundles.join(&id);
    let cfg: Value = serde_json::from_slice(&std::fs::read(dst.join("config.json"))?)?;
    let overlay = cfg["annotations"]["org.warren.rootfs.overlay"].as_str().context("no overlay annotation on B")?;
    ensure!(overlay.contains(&format!("upperdir={}", dst.join("upper").display())), "B's overlay: {overlay}");
    ensure!(!overlay.contains(&*src.to_string_lossy()), "B's overlay names A's paths: {overlay}");
    ensure!(mounts_under(&dst).is_empty(), "B mounted the rootfs on the host");
    let at_arrival = read_counter(&dst.join("upper/count"))?;
    let later = wait_counter_above(&dst.join("upper/count"), at_arrival + 5, Duration::from_secs(10))?;
    assert_log_complete(&std::fs::read_to_string(dst.join("upper/log"))?, later)?;
    assert_host_empty(&pair.a)?;

    ensure!(!src.exists(), "A kept the moved container's bundle");
    drop(guard_b);
    pair.b.store_cmd("bundle", &["rm", &dst.to_string_lossy()])?.ok()?;
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// As a tenant runs: its own user namespace, the image's layers idmapped onto it inside the
/// container, its upper dir owned by its root. Its devices are the host's, bound in.
#[test]
fn a_container_in_its_own_user_namespace_moves() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_userns", Image::OnBoth)? else {
        return Ok(());
    };
    let id = t.id("c");
    let src = counter_bundle_with(&pair.a, &id, &["--mount-in-container"])?;
    let path = src.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    cfg["linux"]["namespaces"].as_array_mut().context("namespaces")?.push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
    cfg["linux"]["uidMappings"] = map.clone();
    cfg["linux"]["gidMappings"] = map;
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    std::os::unix::fs::chown(src.join("upper"), Some(300000), Some(300000))?;
    // The container's root must reach its root's mount point (as a tenant's must).
    for host in [&pair.a, &pair.b] {
        for dir in host.bundles.ancestors().take_while(|d| d.starts_with(t.dir())) {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
        }
    }
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o711))?;
    let guard_a = pair.a.warren.adopt(&id);
    pair.a.warren.cmd(&["run", "-d", "--bundle", &src.to_string_lossy(), &id])?.ok()?;
    wait_counter_above(&src.join("upper/count"), 10, Duration::from_secs(10))?;
    let look = "cat /proc/self/uid_map; stat -c %u /bin/sh /count; echo > /dev/null && echo ok";
    let on_a = pair.a.warren.cmd(&["exec", &id, "sh", "-c", look])?.ok()?.stdout.clone();

    // Post-copy asked for: its tasks cannot open a userfaultfd here, so the memory comes whole.
    let (got, guard_b) = move_to_b_with(&pair, &id, guard_a, &["--lazy-pages"])?;
    let unprivileged_uffd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")?.trim() == "1";
    ensure!(unprivileged_uffd || got.stdout.contains("restored whole: no post-copy, its user namespace"), "B: {got}");

    let dst = pair.b.bundles.join(&id);
    let at_arrival = read_counter(&dst.join("upper/count"))?;
    let later = wait_counter_above(&dst.join("upper/count"), at_arrival + 5, Duration::from_secs(10))?;
    assert_log_complete(&std::fs::read_to_string(dst.join("upper/log"))?, later)?;
    let owner = std::fs::metadata(dst.join("upper/count"))?;
    ensure!(owner.uid() == 300000, "B's upper files keep their owner: {}", owner.uid());
    // The same ids, owners and devices as on A.
    let on_b = pair.b.warren.cmd(&["exec", &id, "sh", "-c", look])?.ok()?.stdout.clone();
    let words: Vec<&str> = on_b.split_whitespace().collect();
    ensure!(
        on_b == on_a && words[..3] == ["0", "300000", "65536"] && words[4..] == ["0", "ok"],
        "on A:\n{on_a}on B:\n{on_b}"
    );
    assert_host_empty(&pair.a)?;
    drop(guard_b);
    pair.b.store_cmd("bundle", &["rm", &dst.to_string_lossy()])?.ok()?;
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// A proxy on B at `listen_port` in front of B's receiver: `relay` gets the one connection
/// from A and one to the receiver, in a thread inside B's network namespace.
fn proxy<T: Send + 'static>(
    pair: &HostPair,
    listen_port: u16,
    relay: impl FnOnce(TcpStream, TcpStream) -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let (listen, upstream) = (format!("{}:{listen_port}", pair.b.addr), format!("{}:{PORT}", pair.b.addr));
    let listener = in_netns(&pair.b, move || Ok(TcpListener::bind(listen)?)).join().expect("bind thread");
    in_netns(&pair.b, move || {
        let (down, _) = listener?.accept()?;
        relay(down, TcpStream::connect(upstream)?)
    })
}

/// Forwards A's stream to B's receiver, cutting both connections after `cut` bytes.
fn cutting_proxy(pair: &HostPair, listen_port: u16, cut: usize) -> JoinHandle<Result<usize>> {
    proxy(pair, listen_port, move |mut down, mut up| {
        let mut back = up.try_clone()?;
        let mut down_w = down.try_clone()?;
        std::thread::spawn(move || std::io::copy(&mut back, &mut down_w));
        let mut buf = vec![0u8; 4096];
        let mut passed = 0;
        while passed < cut {
            let n = down.read(&mut buf[..(cut - passed).min(4096)])?;
            if n == 0 {
                break;
            }
            up.write_all(&buf[..n])?;
            passed += n;
        }
        let _ = up.shutdown(Shutdown::Both);
        let _ = down.shutdown(Shutdown::Both);
        Ok(passed)
    })
}

#[test]
fn a_stream_cut_half_way_leaves_the_container_running_on_the_source() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_cut", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;

    let rx = receive(&pair.b, PORT)?;
    // Past the hello and the config, inside the dump's files (the whole stream is ~40 KiB).
    let proxy = cutting_proxy(&pair, PORT + 1, 20 << 10);
    let target = format!("{}:{}", pair.b.addr, PORT + 1);
    let sent = send(&pair.a, &[], &id, &target)?;
    let got = rx.join().expect("receive thread")?;
    let passed = proxy.join().expect("proxy thread")?;
    ensure!(passed == 20 << 10, "the proxy passed only {passed} bytes: the stream was shorter than the cut");
    // A rollback (not a refusal before the freeze): the cut came after the dump.
    let err = sent.failed()?.error_line().to_string();
    ensure!(err.contains("is running here again"), "send error: {err}");
    ensure!(got.failed()?.error_line().contains("truncated"), "receive error: {got}");

    // A: the same container, running, its counter going on from its value.
    assert_counts_on(&pair.a, &id, &src)?;
    // B: nothing at all.
    assert_host_empty(&pair.b)?;
    ensure!(pair.b.warren.cmd(&["state", &id])?.failed().is_ok(), "state on B");

    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// Frame tags of the stream (runtime/src/migrate/wire.rs).
const MANIFEST: u8 = 6;
const OUTCOME: u8 = 7;
const COMMIT: u8 = 8;

/// Reads one frame (tag, u32 length, payload) from `from` and passes it to `to`, unless its
/// tag is `lose`; returns the tag.
fn relay_frame(from: &mut impl Read, to: &mut impl Write, lose: u8) -> Result<u8> {
    let mut head = [0u8; 5];
    from.read_exact(&mut head)?;
    let mut payload = vec![0u8; u32::from_be_bytes(head[1..].try_into()?) as usize];
    from.read_exact(&mut payload)?;
    if head[0] != lose {
        to.write_all(&head)?;
        to.write_all(&payload)?;
        to.flush()?;
    }
    Ok(head[0])
}

/// Stands between A and B's receiver as a peer both trust (it holds `tls`, which they pin),
/// relays the protocol's frames in their order, and loses one: B's outcome on its way to A
/// (then A's abort still reaches B), or A's commit on its way to B (then both ends are cut).
fn losing_proxy(pair: &HostPair, tls: Tls, listen_port: u16, lose: u8) -> JoinHandle<Result<()>> {
    proxy(pair, listen_port, move |down, up| {
        for s in [&down, &up] {
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
        }
        let mut down = tls.accept(down, "source")?;
        let mut up = tls.connect(up, "target")?;
        let mut magic = [0u8; 16];
        down.read_exact(&mut magic)?;
        up.write_all(&magic)?;
        relay_frame(&mut down, &mut up, lose)?; // Hello
        relay_frame(&mut up, &mut down, lose)?; // Answer
        while relay_frame(&mut down, &mut up, lose)? != MANIFEST {}
        relay_frame(&mut up, &mut down, lose)?; // Outcome
        relay_frame(&mut down, &mut up, lose)?; // Commit or Abort
        let _ = up.sock.shutdown(Shutdown::Both);
        let _ = down.sock.shutdown(Shutdown::Both);
        Ok(())
    })
}

/// `migrate send` from A to B's receiver through a proxy that loses frame `lose`: what each
/// end said.
fn send_losing(t: &Test, pair: &HostPair, id: &str, lose: u8, migrate_flags: &[&str]) -> Result<(Out, Out)> {
    let tls = test_identity(t, pair, "proxy")?;
    let rx = receive(&pair.b, PORT)?;
    let proxy = losing_proxy(pair, tls, PORT + 1, lose);
    let target = format!("{}:{}", pair.b.addr, PORT + 1);
    let sent = send(&pair.a, migrate_flags, id, &target)?;
    let got = rx.join().expect("receive thread")?;
    proxy.join().expect("proxy thread")?;
    Ok((sent, got))
}

/// The processes of B's container are stopped (state T), and its counter stands still.
fn assert_stopped(host: &FakeHost, id: &str, bundle: &Path) -> Result<()> {
    let pid = host.warren.state(id)?["pid"].as_i64().context("pid")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]).unwrap_or("?");
    ensure!(state == "T", "the restored init is in state {state}, not stopped");
    let before = count(bundle)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(count(bundle)? == before, "the counter went on while the move was unconfirmed");
    Ok(())
}

#[test]
fn a_lost_commit_leaves_the_moved_container_stopped_on_the_target_never_running_twice() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_nocommit", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, _, guard_a) = run_counter(&t, &pair.a)?;
    let (sent, got) = send_losing(&t, &pair, &id, COMMIT, &[])?;
    // A removed its copy and said so; the word never reached B, so A never heard it runs.
    let line = sent.failed()?.error_line().to_string();
    ensure!(line.contains("did not confirm that it runs there") && line.contains("kill --all"), "send: {line}");
    std::mem::forget(guard_a);
    let guard_b = pair.b.warren.adopt(&id);
    let line = got.failed()?.error_line().to_string();
    ensure!(line.contains("restored here but stopped") && line.contains("kill --all"), "receive: {line}");
    assert_host_empty(&pair.a)?;
    let dst = pair.b.bundles.join(&id);
    assert_stopped(&pair.b, &id, &dst)?;
    // The operator's way out, as the error says: it goes on from its value.
    pair.b.warren.cmd(&["kill", "--all", &id, "CONT"])?.ok()?;
    let at = count(&dst)?;
    wait_count_above(&dst, at + 3, Duration::from_secs(10))?;
    remove_counter(&pair.b, guard_b, &dst)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_lost_outcome_resumes_the_source_and_the_target_drops_its_copy() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_nooutcome", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;
    let (sent, got) = send_losing(&t, &pair, &id, OUTCOME, &["--timeout", "3"])?;
    let line = sent.failed()?.error_line().to_string();
    ensure!(line.contains("no answer within the timeout") && line.contains("is running here again"), "send: {line}");
    ensure!(got.failed()?.error_line().contains("gave up the move"), "receive: {got}");
    assert_counts_on(&pair.a, &id, &src)?;
    assert_host_empty(&pair.b)?;
    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// A criu that fails every restore the way the real one does: an error line in its log.
/// A criu whose `action` fails, logging "injected ACTION failure" where criu would; the
/// real one does the rest.
fn failing_criu(dir: &Path, action: &str) -> Result<PathBuf> {
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = {action} ] || exec criu \"$@\"\n\
         while [ $# -gt 0 ]; do\n\
         \tcase $1 in --work-dir) w=$2; shift ;; --log-file) l=$2; shift ;; esac\n\
         \tshift\n\
         done\n\
         echo '(00.000100) Error (criu/x.c:1): injected {action} failure' >\"$w/$l\"\n\
         exit 1\n"
    );
    let path = dir.join(format!("failing-criu-{action}"));
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

/// A move of `id` to B whose criu `action` fails there: both ends fail naming it, and the
/// source says the container runs there again. B's output.
fn move_failing_on_b(t: &Test, pair: &HostPair, id: &str, action: &str) -> Result<Out> {
    let fake = failing_criu(t.dir(), action)?;
    let rx = receive_with(&pair.b, PORT, &["--criu", &fake.to_string_lossy()], &[])?;
    let sent = send(&pair.a, &[], id, &format!("{}:{PORT}", pair.b.addr))?;
    let got = rx.join().expect("receive thread")?;
    let injected = format!("injected {action} failure");
    let err = sent.failed()?.error_line().to_string();
    ensure!(err.contains(&injected) && err.contains("is running here again"), "send: {err}");
    ensure!(got.failed()?.error_line().contains(&injected), "receive: {got}");
    Ok(got)
}

#[test]
fn a_restore_failing_on_the_target_leaves_the_container_running_on_the_source() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_fail", Image::OnSource)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;

    let got = move_failing_on_b(&t, &pair, &id, "restore")?;

    // A: running, counting on from its value, its log whole.
    assert_counts_on(&pair.a, &id, &src)?;
    // B: only the failed restore's log, for the operator; it names it.
    let log = pair.b.work.join(format!("{id}.restore.log"));
    ensure!(std::fs::read_to_string(&log)?.contains("injected"), "no kept log at {log:?}");
    ensure!(got.stderr.contains(&log.to_string_lossy().into_owned()), "receive does not name {log:?}: {got}");
    std::fs::remove_file(&log)?;
    assert_host_empty(&pair.b)?;
    ensure!(pair.b.warren.cmd(&["state", &id])?.failed().is_ok(), "state on B");

    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_page_server_failing_on_the_target_leaves_the_container_running_on_the_source() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_psfail", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;

    // The memory streams while A dumps; B's page server dies on the first bytes.
    move_failing_on_b(&t, &pair, &id, "page-server")?;

    assert_counts_on(&pair.a, &id, &src)?;
    assert_host_empty(&pair.b)?;
    ensure!(pair.b.warren.cmd(&["state", &id])?.failed().is_ok(), "state on B");

    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// A small tmpfs mounted on a directory until dropped.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Path, size: &str) -> Result<SmallTmpfs> {
        let d = dir.to_string_lossy();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &d])
            .output()?;
        ensure!(out.status.success(), "mount tmpfs on {d}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(SmallTmpfs(dir.to_path_buf()))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_target_out_of_space_leaves_the_container_running_on_the_source() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_full", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;
    // B spools the dump in its work dir: 128 KiB holds the small parts, not the dump's pages.
    let full = SmallTmpfs::mount(&pair.b.work, "128k")?;

    let rx = receive(&pair.b, PORT)?;
    let sent = send(&pair.a, &[], &id, &format!("{}:{PORT}", pair.b.addr))?;
    let got = rx.join().expect("receive thread")?;
    let err = sent.failed()?.error_line().to_string();
    ensure!(err.contains("No space left on device") && err.contains("is running here again"), "send: {err}");
    ensure!(got.failed()?.error_line().contains("No space left on device"), "receive: {got}");

    assert_counts_on(&pair.a, &id, &src)?;
    assert_host_empty(&pair.b)?;
    drop(full);
    ensure!(pair.b.warren.cmd(&["state", &id])?.failed().is_ok(), "state on B");
    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// Speaks to B's receiver by hand over plain TCP: `bytes`, then what comes back until EOF.
fn raw_exchange(pair: &HostPair, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let addr = format!("{}:{PORT}", pair.b.addr);
    in_netns(&pair.b, move || {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&bytes)?;
        let _ = s.shutdown(Shutdown::Write);
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        Ok(back)
    })
    .join()
    .expect("client thread")
}

/// The same inside TLS, as a client B trusts (`tls`): the stream ends with close_notify.
fn tls_exchange(pair: &HostPair, tls: &Tls, bytes: Vec<u8>) -> Result<()> {
    let (addr, tls) = (format!("{}:{PORT}", pair.b.addr), tls.clone());
    in_netns(&pair.b, move || {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut s = tls.connect(tcp, "B")?;
        s.write_all(&bytes)?;
        s.conn.send_close_notify();
        s.flush()?;
        let _ = s.read_to_end(&mut Vec::new());
        Ok(())
    })
    .join()
    .expect("client thread")
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[test]
fn bad_streams_and_ids_are_refused_with_one_line() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_bad", Image::Nowhere)? else {
        return Ok(());
    };
    // A client B trusts, speaking by hand inside TLS.
    let client = test_identity(&t, &pair, "client")?;

    // Not a migration stream at all.
    let rx = receive(&pair.b, PORT)?;
    tls_exchange(&pair, &client, b"GET / HTTP/1.0\r\n\r\n".to_vec())?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("did not send a Warren migration stream"), "{got}");

    // A manifest entry naming a file outside the dump's directory.
    let rx = receive(&pair.b, PORT)?;
    let hello = json!({"id": t.id("x"), "rootfs": "Plain", "criu": {}});
    let mut bytes = b"WARREN-MIGRATE/2".to_vec();
    bytes.extend(frame(1, &serde_json::to_vec(&hello)?));
    bytes.extend(frame(3, &serde_json::to_vec(&json!({"Criu": "../../etc/evil"}))?));
    tls_exchange(&pair, &client, bytes)?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("would lie outside its directory"), "{got}");
    assert_host_empty(&pair.b)?;

    // A truncated stream: the hello and half a part.
    let rx = receive(&pair.b, PORT)?;
    let mut bytes = b"WARREN-MIGRATE/2".to_vec();
    bytes.extend(frame(1, &serde_json::to_vec(&hello)?));
    bytes.extend(frame(3, &serde_json::to_vec(&json!("Config"))?));
    bytes.extend(&frame(4, &[0u8; 100])[..50]);
    tls_exchange(&pair, &client, bytes)?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("truncated"), "{got}");
    assert_host_empty(&pair.b)?;

    // A tenant's record under another container id: refused, no tenant claimed.
    let rx = receive(&pair.b, PORT)?;
    let record = json!({"name": "squat", "image": IMAGE, "plan": "nano", "hostname": "squat", "volumes": [],
        "restart": "never", "ids": 1_000_000, "want_running": true, "created": 0});
    let tenant_hello = json!({"id": "othername", "rootfs": "Plain", "criu": {}, "tenant": record});
    let mut bytes = b"WARREN-MIGRATE/2".to_vec();
    bytes.extend(frame(1, &serde_json::to_vec(&tenant_hello)?));
    tls_exchange(&pair, &client, bytes)?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("a tenant's container has its name"), "{got}");
    ensure!(!pair.b.store.join("tenants/squat").exists(), "B claimed the tenant");
    assert_host_empty(&pair.b)?;

    // An id that exists on B: refused before anything is frozen on A.
    import(&pair.a)?;
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;
    let squatter = t.bundle(&["sleep", "100"])?;
    let guard_b = pair.b.warren.create(&id, &squatter)?;
    let rx = receive(&pair.b, PORT)?;
    let sent = send(&pair.a, &[], &id, &format!("{}:{PORT}", pair.b.addr))?;
    let got = rx.join().expect("receive thread")?;
    ensure!(sent.failed()?.error_line().contains("already exists on this host"), "{sent}");
    ensure!(got.failed().is_ok(), "{got}");
    ensure!(pair.a.warren.state(&id)?["status"] == "running", "A after a refusal");
    drop(guard_b);
    remove_counter(&pair.a, guard_a, &src)?;
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// Whether `id` exists on `host`, and whether it runs there: a running status whose init is
/// not stopped (SIGSTOP) or frozen.
fn presence(host: &FakeHost, id: &str) -> Result<(bool, bool)> {
    let out = host.warren.cmd(&["state", id])?;
    if !out.success() {
        return Ok((false, false));
    }
    let st: Value = serde_json::from_str(&out.stdout)?;
    let pid = st["pid"].as_i64().unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let stopped = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'));
    Ok((true, st["status"] == "running" && !stopped))
}

/// Where `id` is after a kill at `point`: (on A, runs on A, on B, runs on B). It must be on one
/// host at least (never lost) and run on one at most (never twice).
fn whereabouts(pair: &HostPair, id: &str, point: &str) -> Result<(bool, bool, bool, bool)> {
    let (on_a, runs_a) = presence(&pair.a, id)?;
    let (on_b, runs_b) = presence(&pair.b, id)?;
    ensure!(on_a || on_b, "{point}: the container is on neither host");
    ensure!(!(runs_a && runs_b), "{point}: the container runs on both hosts");
    Ok((on_a, runs_a, on_b, runs_b))
}

/// B's copy is the one: let run if the commit never came, then it counts on there and goes.
fn keep_on_b(pair: &HostPair, id: &str, guard_a: Container, runs_b: bool, dst: &Path) -> Result<()> {
    if !runs_b {
        pair.b.warren.cmd(&["kill", "--all", id, "CONT"])?.ok()?;
    }
    std::mem::forget(guard_a);
    let guard_b = pair.b.warren.adopt(id);
    assert_counts_on(&pair.b, id, dst)?;
    remove_counter(&pair.b, guard_b, dst)
}

/// kill -9 of `migrate send` (the failpoints build) after each step of the move: the
/// container is never running on both hosts and never lost. Then the operator's way on: a
/// copy the target keeps stopped goes when the source still has one (which resumes and moves
/// again), else it is let run; a sender killed after the commit leaves only its bundle.
#[test]
fn a_sender_killed_at_each_step_never_runs_it_twice_nor_loses_it() -> Result<()> {
    let Some(bin) = failpoints_bin()? else {
        return Ok(());
    };
    let points = [
        "migrate-send.accepted",
        "migrate-send.frozen",
        "migrate-send.dumped",
        "migrate-send.parts-sent",
        "migrate-send.restored-there",
        "migrate-send.deleted",
        "migrate-send.committed",
    ];
    for (n, point) in points.into_iter().enumerate() {
        let Some((t, pair)) = two_hosts(&format!("mig_fault{n}"), Image::OnBoth)? else {
            return Ok(());
        };
        let (id, src, guard_a) = run_counter(&t, &pair.a)?;
        let rx = receive(&pair.b, PORT)?;
        let target = format!("{}:{PORT}", pair.b.addr);
        let dying = pair.a.warren.dying_at(&bin, point);
        let tls = tls_dir(&pair.a).to_string_lossy().into_owned();
        let args = pair.a.migrate_args(&["send", "--tls-dir", &tls, &id, &target]);
        let sent = dying.cmd_for(&args, Duration::from_secs(120))?;
        ensure!(sent.code() == Some(128 + libc::SIGKILL), "{point}: send did not die there: {sent}");
        rx.join().expect("receive thread")?;
        let (on_a, _, on_b, mut runs_b) = whereabouts(&pair, &id, point)?;
        let dst = pair.b.bundles.join(&id);
        if on_a {
            if on_b {
                // Unconfirmed on B, still here on A: B's copy goes.
                pair.b.warren.cmd(&["delete", "--force", &id])?.ok()?;
                pair.b.store_cmd("bundle", &["rm", &dst.to_string_lossy()])?.ok()?;
            }
            if pair.a.warren.state(&id)?["status"] == "paused" {
                pair.a.warren.cmd(&["resume", &id])?.ok()?;
            }
            assert_counts_on(&pair.a, &id, &src)?;
            // And the move can be done again, in full.
            let rx = receive(&pair.b, PORT)?;
            send(&pair.a, &[], &id, &target)?.ok().context("send again")?;
            rx.join().expect("receive thread")?.ok().context("receive again")?;
            runs_b = true;
        }
        // Else deleted on A: B's copy is the one, stopped until the commit that never came.
        // A sender killed after its delete had no time to remove the bundle.
        if src.exists() {
            pair.a.store_cmd("bundle", &["rm", &src.to_string_lossy()])?.ok()?;
        }
        keep_on_b(&pair, &id, guard_a, runs_b, &dst)?;
        assert_host_empty(&pair.a).with_context(|| point.to_string())?;
        drop(pair);
        t.assert_no_leftovers();
    }
    Ok(())
}

/// kill -9 of `migrate receive` (the failpoints build) after each of its steps: never running
/// on both hosts, never lost, and the source says success only when it runs on the target.
/// The next receiver reaps what the dead one left (its spool, and, if the restore was never
/// reported, the stopped copy and its bundle), so the same container can move again at once;
/// a reported copy stays for the operator to let run.
#[test]
fn a_receiver_killed_at_each_step_never_runs_it_twice_nor_loses_it() -> Result<()> {
    let Some(bin) = failpoints_bin()? else {
        return Ok(());
    };
    // With post-copy (`--lazy-pages`) too: killed with its lazy-pages daemon waiting for the
    // restore (the next receiver kills it), and with the daemon filling a restored copy.
    let points = [
        ("migrate-receive.accepted", false),
        ("migrate-receive.parts-received", false),
        ("migrate-receive.restored", false),
        ("migrate-receive.reported", false),
        ("migrate-receive.committed", false),
        ("migrate-receive.resumed", false),
        ("restore.before-criu", true),
        ("migrate-receive.restored", true),
        ("migrate-receive.reported", true),
    ];
    for (n, (point, lazy)) in points.into_iter().enumerate() {
        let Some((t, pair)) = two_hosts(&format!("mig_rfault{n}"), Image::OnBoth)? else {
            return Ok(());
        };
        let (id, src, guard_a) = run_counter(&t, &pair.a)?;
        let rx = receive_as(&pair.b.warren.dying_at(&bin, point), &pair.b, PORT, &[], &[])?;
        let target = format!("{}:{PORT}", pair.b.addr);
        let tls = tls_dir(&pair.a).to_string_lossy().into_owned();
        let flags: &[&str] = if lazy { &["--lazy-pages"] } else { &[] };
        let sent = pair.a.migrate(&[&["send", "--tls-dir", &tls], flags, &[&id, &target]].concat())?;
        let got = rx.join().expect("receive thread")?;
        ensure!(got.code() == Some(128 + libc::SIGKILL), "{point}: receive did not die there: {got}");
        ensure!(!sent.success(), "{point}: send reported success without the target's word: {sent}");
        let (on_a, runs_a, on_b, runs_b) = whereabouts(&pair, &id, point)?;
        eprintln!("{point}: {}; on A {on_a} (runs {runs_a}), on B {on_b} (runs {runs_b})", sent.error_line());
        let spool = pair.b.work.join(&id);
        ensure!(spool.is_dir(), "{point}: the dead receiver left no spool");
        let dst = pair.b.bundles.join(&id);
        if on_a {
            ensure!(runs_a, "{point}: the source rolled back: {sent}");
            assert_counts_on(&pair.a, &id, &src)?;
            // The next receive reaps B's unreported copy and spool, and takes the container.
            let rx = receive(&pair.b, PORT)?;
            send(&pair.a, &[], &id, &target)?.ok().with_context(|| format!("{point}: send again"))?;
            rx.join().expect("receive thread")?.ok().with_context(|| format!("{point}: receive again"))?;
            ensure!(!spool.exists(), "{point}: the spool was not reaped");
            keep_on_b(&pair, &id, guard_a, true, &dst)?;
        } else {
            // A receiver starting up reaps the spool; the copy was reported, so it stays.
            let rx = receive(&pair.b, PORT)?;
            ensure!(!spool.exists(), "{point}: the spool was not reaped");
            raw_exchange(&pair, b"not a migration".to_vec())?;
            ensure!(!rx.join().expect("receive thread")?.success(), "{point}: the receiver took a bad stream");
            keep_on_b(&pair, &id, guard_a, runs_b, &dst)?;
        }
        assert_host_empty(&pair.a).with_context(|| point.to_string())?;
        assert_host_empty(&pair.b).with_context(|| point.to_string())?;
        drop(pair);
        t.assert_no_leftovers();
    }
    Ok(())
}

/// A move from A to B's receiver (started with `receive_flags`) that B must refuse: what each
/// end said, after checking that the container counts on on A and that B has nothing.
fn refused_move(pair: &HostPair, id: &str, src: &Path, receive_flags: &[&str]) -> Result<(String, String)> {
    let rx = receive_with(&pair.b, PORT, &[], receive_flags)?;
    let sent = send(&pair.a, &[], id, &format!("{}:{PORT}", pair.b.addr))?;
    let got = rx.join().expect("receive thread")?;
    let (sent, got) = (sent.failed()?.error_line().to_string(), got.failed()?.error_line().to_string());
    assert_counts_on(&pair.a, id, src)?;
    assert_host_empty(&pair.b)?;
    ensure!(pair.b.warren.cmd(&["state", id])?.failed().is_ok(), "state on B");
    Ok((sent, got))
}

#[test]
fn peers_that_are_not_pinned_are_refused_and_the_container_stays() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_pin", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, src, guard_a) = run_counter(&t, &pair.a)?;
    let (peers_a, peers_b) = (tls_dir(&pair.a).join("peers"), tls_dir(&pair.b).join("peers"));
    let (a_in_b, b_in_a) = (peers_b.join(format!("{}.crt", pair.a.name)), peers_a.join(format!("{}.crt", pair.b.name)));
    // Someone else's certificate, so that neither trust set is empty.
    let other = keygen(&t, &t.dir().join("other"))?;

    // B does not trust A: B turns the handshake down; A hears it before it freezes anything.
    std::fs::rename(&a_in_b, t.dir().join("a.crt"))?;
    trust(&tls_dir(&pair.b), &other, "other")?;
    let (sent, got) = refused_move(&pair, &id, &src, &[])?;
    ensure!(sent.contains("does not trust this host's certificate sha256:"), "send: {sent}");
    ensure!(!sent.contains("running here again"), "A froze the container for a distrustful target: {sent}");
    ensure!(got.contains("is not among the trusted peers"), "receive: {got}");
    std::fs::rename(t.dir().join("a.crt"), &a_in_b)?;

    // A does not pin B's certificate: A stops in the handshake, before any frame.
    std::fs::rename(&b_in_a, t.dir().join("b.crt"))?;
    trust(&tls_dir(&pair.a), &other, "other")?;
    let (sent, got) = refused_move(&pair, &id, &src, &[])?;
    ensure!(
        sent.contains("its certificate sha256:") && sent.contains("is not among the trusted peers"),
        "send: {sent}"
    );
    ensure!(!sent.contains("running here again"), "A froze the container for an unpinned target: {sent}");
    ensure!(got.contains("does not trust this host's certificate"), "receive: {got}");

    // No trusted peers at all: one line, before any connection.
    std::fs::remove_file(peers_a.join("other.crt"))?;
    let out = send(&pair.a, &[], &id, &format!("{}:{PORT}", pair.b.addr))?;
    ensure!(out.failed()?.error_line().contains("no trusted peer certificates"), "{out}");

    remove_counter(&pair.a, guard_a, &src)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn clients_without_a_key_are_refused_with_one_line() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_nokey", Image::Nowhere)? else {
        return Ok(());
    };
    // The stream as it was before TLS: plain TCP.
    let rx = receive(&pair.b, PORT)?;
    let hello = json!({"id": t.id("x"), "rootfs": "Plain", "criu": {}});
    let mut bytes = b"WARREN-MIGRATE/2".to_vec();
    bytes.extend(frame(1, &serde_json::to_vec(&hello)?));
    raw_exchange(&pair, bytes)?;
    let got = rx.join().expect("receive thread")?;
    let line = got.failed()?.error_line();
    ensure!(line.contains("TLS with "), "{got}");
    assert_host_empty(&pair.b)?;

    // TLS 1.3 without a client certificate.
    let rx = receive(&pair.b, PORT)?;
    let connect = format!("{}:{PORT}", pair.b.addr);
    let netns = format!("--net={}", pair.b.netns_path());
    let args = ["-k", "5", "20", "nsenter", &netns, "openssl", "s_client", "-connect", &connect, "-tls1_3", "-quiet"];
    let client = std::process::Command::new("timeout").args(args).stdin(std::process::Stdio::null()).output()?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("no certificates"), "{got}\nopenssl: {client:?}");
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// Forwards A's stream to B's receiver byte for byte, both ways; returns what A sent.
fn recording_proxy(pair: &HostPair, listen_port: u16) -> JoinHandle<Result<Vec<u8>>> {
    proxy(pair, listen_port, move |mut down, mut up| {
        let (mut back, mut down_w) = (up.try_clone()?, down.try_clone()?);
        let back = std::thread::spawn(move || std::io::copy(&mut back, &mut down_w));
        let (mut recorded, mut buf) = (Vec::new(), vec![0u8; 1 << 16]);
        loop {
            let n = down.read(&mut buf)?;
            if n == 0 {
                break;
            }
            recorded.extend_from_slice(&buf[..n]);
            up.write_all(&buf[..n])?;
        }
        let _ = up.shutdown(Shutdown::Write);
        let _ = back.join();
        Ok(recorded)
    })
}

#[test]
fn a_recorded_move_replayed_to_a_receiver_restores_nothing() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_replay", Image::OnBoth)? else {
        return Ok(());
    };
    let (id, _, guard_a) = run_counter(&t, &pair.a)?;
    // A good move, recorded on its way.
    let rx = receive(&pair.b, PORT)?;
    let recorder = recording_proxy(&pair, PORT + 1);
    let sent = send(&pair.a, &[], &id, &format!("{}:{}", pair.b.addr, PORT + 1))?;
    let got = rx.join().expect("receive thread")?;
    let recorded = recorder.join().expect("proxy thread")?;
    sent.ok().context("send")?;
    got.ok().context("receive")?;
    std::mem::forget(guard_a);
    let dst = pair.b.bundles.join(&id);
    remove_counter(&pair.b, pair.b.warren.adopt(&id), &dst)?;
    ensure!(recorded.len() > 16 << 10, "recorded only {} bytes", recorded.len());

    // The same bytes again, to a fresh receiver: new handshake keys, so nothing decrypts.
    let rx = receive(&pair.b, PORT)?;
    raw_exchange(&pair, recorded)?;
    let got = rx.join().expect("receive thread")?;
    ensure!(got.failed()?.error_line().contains("TLS with "), "{got}");
    assert_host_empty(&pair.b)?;
    ensure!(pair.b.warren.cmd(&["state", &id])?.failed().is_ok(), "state on B");
    assert_host_empty(&pair.a)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_host_bind_is_refused_by_policy_unless_the_receiver_allows_its_directory() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_policy", Image::OnBoth)? else {
        return Ok(());
    };
    // The counter with a host directory bound at /shared (both hosts see the same one).
    let shared = t.dir().join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::write(shared.join("marker"), "from the host\n")?;
    let id = t.id("c");
    let src = counter_bundle(&pair.a, &id)?;
    let path = src.join("config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let mounts = cfg["mounts"].as_array_mut().context("mounts")?;
    let index = mounts.len();
    mounts.push(json!({"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind", "rw"]}));
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg)?)?;
    let guard_a = pair.a.warren.adopt(&id);
    pair.a.warren.cmd(&["run", "-d", "--bundle", &src.to_string_lossy(), &id])?.ok()?;
    wait_count_above(&src, 10, Duration::from_secs(10))?;

    let (sent, got) = refused_move(&pair, &id, &src, &[])?;
    let line =
        format!("policy: mounts[{index}] binds host path {}, outside the allowed bind sources", shared.display());
    ensure!(got.ends_with(&line), "receive: {got}");
    ensure!(sent.contains(&line) && sent.contains("is running here again"), "send: {sent}");

    // Allowed by the receiver: it moves, the host's directory bound there too.
    let rx = receive_with(&pair.b, PORT, &[], &["--allow-bind", &shared.to_string_lossy()])?;
    let sent = send(&pair.a, &[], &id, &format!("{}:{PORT}", pair.b.addr))?;
    let got = rx.join().expect("receive thread")?;
    sent.ok().context("send")?;
    got.ok().context("receive")?;
    std::mem::forget(guard_a);
    let guard_b = pair.b.warren.adopt(&id);
    let dst = pair.b.bundles.join(&id);
    assert_counts_on(&pair.b, &id, &dst)?;
    let out = pair.b.warren.cmd(&["exec", &id, "cat", "/shared/marker"])?;
    ensure!(out.ok()?.stdout == "from the host\n", "/shared on B: {out}");
    assert_host_empty(&pair.a)?;
    remove_counter(&pair.b, guard_b, &dst)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// `tenant --store S --host-config C ARGS` on `host`.
fn tenant_on(host: &FakeHost, config: &Path, args: &[&str]) -> Result<Out> {
    let (store, config) = (host.store.to_string_lossy(), config.to_string_lossy());
    let v = [&["tenant", "--store", &store, "--host-config", &config], args].concat();
    host.warren.cmd_for(&v, Duration::from_secs(120))
}

fn tenant_row(host: &FakeHost, config: &Path, name: &str) -> Result<Option<Value>> {
    let out = tenant_on(host, config, &["list", "--format", "json"])?;
    let rows: Vec<Value> = serde_json::from_str(&out.ok()?.stdout)?;
    Ok(rows.into_iter().find(|r| r["name"] == name))
}

fn wait_tenant_row(host: &FakeHost, config: &Path, name: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let row = tenant_row(host, config, name)?;
        if let Some(row) = row.as_ref().filter(|r| ok(r)) {
            return Ok(row.clone());
        }
        ensure!(Instant::now() < end, "{name} on {}: not as expected after 20 s: {row:?}", host.name);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the tenant's httpd at `ip` serves its /count to the host (from its network
/// namespace).
fn serves(host: &FakeHost, ip: &str) -> Result<bool> {
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse()?;
    let got = in_netns(host, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return Ok(String::new()) };
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /count HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    });
    Ok(got.join().expect("client thread")?.starts_with("HTTP/1.1 200 OK"))
}

/// A tenant started on `host` with a disk, on the tenant network (the same on both hosts, each
/// in its own network namespace), serving its files on :8080 and counting on its console and
/// in /count, past 10: (host.toml, its name, its row in `list`).
fn start_tenant(t: &Test, host: &FakeHost) -> Result<(PathBuf, String, Value)> {
    let config = t.dir().join("host.toml");
    std::fs::write(&config, "[network]\nbridge = \"wtmig0\"\nsubnet = \"10.199.7.0/24\"\n")?;
    let name = format!("mt{}", std::process::id() % 100_000);
    let counter = "httpd -p 8080 -h /; i=0; while :; do i=$((i+1)); echo $i >> /log; echo $i > /count.new; mv /count.new /count; echo tick $i; sleep 0.05; done";
    let create = ["create", &name, "--image", IMAGE, "--plan", "nano", "--disk", "32MiB", "--restart", "always"];
    tenant_on(host, &config, &[&create[..], &["--", "sh", "-c", counter]].concat())?.ok()?;
    tenant_on(host, &config, &["start", &name])?.ok()?;
    let count = host.store.join("tenants").join(&name).join("bundle/upper/count");
    wait_counter_above(&count, 10, Duration::from_secs(10))?;
    let row = tenant_row(host, &config, &name)?.context("not listed")?;
    let ip = row["ip"].as_str().context("no address")?;
    ensure!(serves(host, ip)?, "{} does not reach its tenant's httpd at {ip}", host.name);
    Ok((config, name, row))
}

/// A tenant move from A to B's `receive --once` (with `receive_global` flags): the outputs.
fn move_tenant(pair: &HostPair, config: &Path, name: &str, receive_global: &[&str]) -> Result<(Out, Out)> {
    let tls = tls_dir(&pair.a).to_string_lossy().into_owned();
    let flags = ["--host-config", config.to_str().context("path")?];
    let rx = receive_with(&pair.b, PORT, receive_global, &flags)?;
    let target = format!("{}:{PORT}", pair.b.addr);
    let sent = tenant_on(&pair.a, config, &["migrate", name, &target, "--tls-dir", &tls])?;
    let got = rx.join().expect("receive thread")?;
    Ok((sent, got))
}

/// A tenant moves as a whole: its memory, disk, id range, address and MAC, its console and
/// its supervision. On the source nothing of it stays: record, disk, port on the bridge.
#[test]
fn a_tenant_moves_with_its_disk_address_console_and_supervisor() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_tenant", Image::OnSource)? else {
        return Ok(());
    };
    let (config, name, on_a) = start_tenant(&t, &pair.a)?;
    let ip = on_a["ip"].as_str().context("no address on A")?.to_string();
    let upper = |host: &FakeHost| host.store.join("tenants").join(&name).join("bundle/upper");
    let mac_a =
        tenant_on(&pair.a, &config, &["exec", &name, "--", "cat", "/sys/class/net/eth0/address"])?.ok()?.stdout.clone();

    let (sent, got) = move_tenant(&pair, &config, &name, &[])?;
    sent.ok().context("tenant migrate")?;
    ensure!(sent.stdout.contains(&format!("migrated {name}")), "{sent}");
    got.ok().context("receive")?;

    // On B: the same tenant, running from its memory under a supervisor of B's.
    let row = wait_tenant_row(&pair.b, &config, &name, |r| r["state"] == "running" && r["supervised"] == true)?;
    ensure!(row["ip"] == on_a["ip"] && row["ids"] == on_a["ids"] && row["disk"] == on_a["disk"], "{row}\nwas {on_a}");
    let count = upper(&pair.b).join("count");
    let at_arrival = read_counter(&count)?;
    let later = wait_counter_above(&count, at_arrival + 5, Duration::from_secs(10))?;
    assert_log_complete(&std::fs::read_to_string(upper(&pair.b).join("log"))?, later)?;
    ensure!(std::fs::metadata(&count)?.uid() == on_a["ids"].as_u64().context("ids")? as u32, "owner of its files");
    ensure!(serves(&pair.b, &ip)?, "B does not reach the tenant's httpd at {ip} (its listening socket moved)");
    let mac_b =
        tenant_on(&pair.b, &config, &["exec", &name, "--", "cat", "/sys/class/net/eth0/address"])?.ok()?.stdout.clone();
    ensure!(mac_a == mac_b, "its MAC was {mac_a} on A, is {mac_b} on B");
    // Its console is relayed by B's supervisor: what it writes now is in B's log.
    let logs = tenant_on(&pair.b, &config, &["logs", &name])?.ok()?.stdout.clone();
    ensure!(logs.contains(&format!("tick {later}")), "B's console log lacks tick {later}:\n{logs}");
    // B's supervisor keeps its restart policy.
    let pid = row["pid"].as_i64().context("pid")? as i32;
    // SAFETY: kill(2) of the tenant's init on B.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_tenant_row(&pair.b, &config, &name, |r| r["state"] == "running" && r["pid"] != pid && r["restarts"] == 1)?;

    // On A: nothing of it.
    ensure!(tenant_row(&pair.a, &config, &name)?.is_none(), "A still lists it");
    ensure!(!pair.a.store.join("tenants").join(&name).exists(), "A keeps its dir");
    ensure!(!serves(&pair.a, &ip)?, "A still reaches {ip}");
    assert_host_empty(&pair.a)?;

    tenant_on(&pair.b, &config, &["destroy", &name])?.ok()?;
    assert_host_empty(&pair.b)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}

/// Whether `host` lists tenant `name` running under its supervisor, reachable on its
/// address, counting on.
fn assert_tenant_runs_on(host: &FakeHost, config: &Path, name: &str, ip: &str) -> Result<()> {
    wait_tenant_row(host, config, name, |r| r["state"] == "running" && r["supervised"] == true)?;
    ensure!(serves(host, ip)?, "{} does not reach the tenant at {ip} after the failed move", host.name);
    let count = host.store.join("tenants").join(name).join("bundle/upper/count");
    let now = read_counter(&count)?;
    wait_counter_above(&count, now + 5, Duration::from_secs(10))?;
    Ok(())
}

/// A move the target refuses (its id range is another tenant's there) and one whose restore
/// fails there both leave the tenant running on the source, back on its network, and nothing
/// of it on the target: no record, disk, bundle or address.
#[test]
fn a_failed_tenant_move_leaves_it_running_on_the_source_on_its_network() -> Result<()> {
    let Some((t, pair)) = two_hosts("mig_tenant_fail", Image::OnBoth)? else {
        return Ok(());
    };
    let (config, name, on_a) = start_tenant(&t, &pair.a)?;
    let ip = on_a["ip"].as_str().context("no address on A")?.to_string();
    // B's first tenant has the first range of the pool, as A's has.
    let other = format!("{name}x");
    tenant_on(&pair.b, &config, &["create", &other, "--image", IMAGE, "--plan", "nano", "--network", "none"])?.ok()?;

    let (sent, got) = move_tenant(&pair, &config, &name, &[])?;
    let err = sent.failed()?.error_line().to_string();
    ensure!(err.contains(&format!("refused the container: tenant {name}: its id range")), "{err}");
    ensure!(err.contains(&format!("is tenant {other}'s here")), "{err}");
    ensure!(got.failed()?.error_line().contains("refused"), "receive: {got}");
    assert_tenant_runs_on(&pair.a, &config, &name, &ip)?;
    ensure!(tenant_row(&pair.b, &config, &name)?.is_none(), "B lists the refused tenant");

    tenant_on(&pair.b, &config, &["destroy", &other])?.ok()?;
    let fake = failing_criu(t.dir(), "restore")?;
    let (sent, got) = move_tenant(&pair, &config, &name, &["--criu", &fake.to_string_lossy()])?;
    let err = sent.failed()?.error_line().to_string();
    ensure!(err.contains("injected restore failure") && err.contains("running here again"), "send: {err}");
    ensure!(got.failed()?.error_line().contains("injected restore failure"), "receive: {got}");
    assert_tenant_runs_on(&pair.a, &config, &name, &ip)?;
    // B: its claim, disk and bundle undone; only the failed restore's log is kept.
    ensure!(tenant_row(&pair.b, &config, &name)?.is_none(), "B lists the tenant whose restore failed");
    let tenants_b = pair.b.store.join("tenants");
    let left: Vec<_> = std::fs::read_dir(&tenants_b)?.flatten().map(|e| e.file_name()).collect();
    ensure!(left.iter().all(|n| n.to_string_lossy().starts_with('.')), "B's tenants dir keeps {left:?}");
    ensure!(mounts_under(&tenants_b).is_empty(), "B keeps mounts: {:?}", mounts_under(&tenants_b));
    std::fs::remove_file(pair.b.work.join(format!("{name}.restore.log")))?;
    assert_host_empty(&pair.b)?;

    tenant_on(&pair.a, &config, &["destroy", &name])?.ok()?;
    assert_host_empty(&pair.a)?;
    drop(pair);
    t.assert_no_leftovers();
    Ok(())
}
