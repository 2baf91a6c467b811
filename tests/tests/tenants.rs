//! `warren tenant`: a tenant's life from the built-in busybox image, its uid isolation on
//! the host, its supervisor's restart policy after kill -9, a simulated reboot brought back
//! by `tenant boot`, and bad input refused whole.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use warren_tests::*;

fn busybox_archive() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new(ws.join("scripts/make-busybox-image.sh")).output().unwrap();
        assert!(out.status.success(), "make-busybox-image.sh: {}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("busybox-oci.tar")
    })
}

/// A store in the test's dir with the busybox image, and the tenant verbs on it. Its
/// host.toml gives it a bridge and subnet of its own (test `k` of this file), removed at drop.
struct Host<'a> {
    t: &'a Test,
    store: String,
    host_config: String,
    bridge: String,
    subnet: String,
}

impl<'a> Host<'a> {
    fn new(t: &'a Test, k: u32, extra: &str) -> Result<Host<'a>> {
        let store = t.dir().join("store").to_string_lossy().into_owned();
        t.cmd(&["image", "--store", &store, "import", "--name", "bb:1", &busybox_archive().to_string_lossy()])?.ok()?;
        let pid = std::process::id();
        let bridge = format!("wtb{}x{k}", pid % 100_000);
        let subnet = format!("10.{}.{}", 200 + k, pid % 250);
        let host_config = t.dir().join("host.toml");
        let text = format!("{extra}\n[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}.0/24\"\n");
        std::fs::write(&host_config, text)?;
        Ok(Host { t, store, host_config: host_config.to_string_lossy().into_owned(), bridge, subnet })
    }

    fn tenant(&self, args: &[&str]) -> Result<Out> {
        let mut v = vec!["tenant", "--store", &self.store, "--host-config", &self.host_config];
        v.extend_from_slice(args);
        self.t.warren.cmd_for(&v, Duration::from_secs(60))
    }

    fn list(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.tenant(&["list", "--format", "json"])?.ok()?.stdout)?)
    }

    fn row(&self, name: &str) -> Result<Value> {
        self.list()?.into_iter().find(|r| r["name"] == name).with_context(|| format!("{name} not listed"))
    }

    /// Polls `list` until `ok` holds for the tenant's row.
    fn wait_row(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Result<Value> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let row = self.row(name)?;
            if ok(&row) {
                return Ok(row);
            }
            ensure!(Instant::now() < end, "{name}: not {what} after 20 s: {row}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tenant's log once it contains `needle` (or as it is after 20 s).
    fn wait_logs(&self, name: &str, needle: &str) -> Result<String> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = self.tenant(&["logs", name])?.ok()?.stdout.clone();
            if logs.contains(needle) || Instant::now() >= end {
                return Ok(logs);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tenants_dir(&self) -> PathBuf {
        Path::new(&self.store).join("tenants")
    }
}

impl Drop for Host<'_> {
    /// The bridge, and whatever NAT rules a failed test's tenants left (their DEL never ran).
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.bridge]).output();
        let _ =
            std::process::Command::new("nft").args(["delete", "table", "bridge", &guard_table(&self.bridge)]).output();
        let subnet = format!("-s {}.0/24", self.subnet);
        let ours = format!("id: \\\"wt-{}-{}-", self.t.name(), std::process::id());
        let script = format!(
            r#"iptables -t nat -S | grep -F -e '{ours}' -e '{subnet} ' | grep '^-A' | while read -r rule; do
                 eval "iptables -t nat -D ${{rule#-A }}"; done
               for c in $(iptables -t nat -S | awk '/^-N CNI-[0-9a-f]{{24}}$/ {{print $2}}'); do
                 [ -z "$(iptables -t nat -S "$c" | grep '^-A')" ] && iptables -t nat -X "$c"; done"#
        );
        let _ = std::process::Command::new("sh").arg("-c").arg(script).output();
    }
}

/// The bridge's anti-spoofing table (runtime/src/tenant/guard.rs).
fn guard_table(bridge: &str) -> String {
    format!("warren_guard_{}", bridge.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

fn nat_rules() -> Result<String> {
    let out = std::process::Command::new("iptables").args(["-t", "nat", "-S"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether portmap's shared chains are in the nat table (it adds them once, never removes them).
fn portmap_chains_present() -> bool {
    std::process::Command::new("iptables")
        .args(["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes portmap's shared chains and the jumps to them: what a test that added them leaves.
fn remove_portmap_chains() {
    let script = r#"
        iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
        iptables -t nat -D OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
        iptables -t nat -D POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
        for c in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
            iptables -t nat -F $c; iptables -t nat -X $c; done"#;
    let _ = std::process::Command::new("sh").arg("-c").arg(script).output();
}

fn running(r: &Value) -> bool {
    r["state"] == "running"
}

#[test]
fn a_tenant_lives_isolated_on_its_own_ids_and_is_restarted_after_kill_9() -> Result<()> {
    let t = Test::new("tenants");
    let h = Host::new(&t, 0, "")?;
    // The store's dirs must be traversable for the tenant's root (its mount point is there).
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let vol = t.dir().join("vol");
    std::fs::create_dir(&vol)?;
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777))?;
    std::fs::write(vol.join("secret"), "host only\n")?;
    std::fs::set_permissions(vol.join("secret"), std::fs::Permissions::from_mode(0o600))?;
    let name = t.id("a");
    let script = "echo started $(hostname) $(id -u); touch /vol/made-by-tenant; \
                  cat /vol/secret 2>/dev/null && echo READ-SECRET; exec sleep 1000";
    let volume = format!("{}:/vol", vol.display());
    let create = ["create", &name, "--image", "bb:1", "--plan", "nano", "--hostname", "shop", "-v", &volume];
    h.tenant(&[&create[..], &["--restart", "always", "--", "sh", "-c", script]].concat())?.ok()?;
    ensure!(h.row(&name)?["state"] == "stopped", "a new tenant is not started");
    h.tenant(&["start", &name])?.ok()?;
    let row = h.wait_row(&name, "running", running)?;
    let base = row["ids"].as_u64().context("ids")? as u32;
    ensure!(base == 1_000_000, "the first tenant gets the pool's first range: {row}");
    // Its root is host id `base`: what it makes in a bind-mounted dir is base's, and a 0600
    // file of host root's stays unreadable.
    let made = vol.join("made-by-tenant");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !made.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let meta = std::fs::metadata(&made).context("the tenant's file")?;
    ensure!((meta.uid(), meta.gid()) == (base, base), "owned by {}:{}", meta.uid(), meta.gid());
    let logs = h.tenant(&["logs", &name])?;
    let logs = &logs.ok()?.stdout;
    ensure!(logs.contains("started shop 0") && !logs.contains("READ-SECRET"), "{logs}");
    // The plan's limit is in its cgroup, and exec reaches it.
    let pid = row["pid"].as_i64().context("pid")? as i32;
    let limit = read_knob(&knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?)?;
    ensure!(limit.trim() == (256u64 << 20).to_string(), "memory limit {limit}");
    let out =
        h.tenant(&["exec", &name, "--", "sh", "-c", "id -u; cat /proc/self/uid_map; grep CapEff /proc/1/status"])?;
    let ids: Vec<String> = out.ok()?.stdout.split_whitespace().map(String::from).collect();
    // Docker's default capabilities (the well-known mask 0xa80425fb), in its own namespaces.
    ensure!(ids == ["0", "0", &base.to_string(), "65536", "CapEff:", "00000000a80425fb"], "{ids:?}");
    // Docker's default seccomp profile: filtered (mode 2), and a nested user namespace, which
    // needs no capability but is a kernel surface Docker keeps closed, is refused.
    let out = h.tenant(&["exec", &name, "--", "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true"])?;
    ensure!(out.stdout.contains("Seccomp:\t2") && out.code() != Some(0), "{out}");
    ensure!(out.stderr.contains("Operation not permitted"), "{out}");
    // kill -9 of its init: the supervisor starts it again.
    // SAFETY: kill(2) of the tenant's init, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let row = h.wait_row(&name, "restarted", |r| running(r) && r["pid"] != pid && r["restarts"] == 1)?;
    ensure!(row["last_exit"] == 137, "{row}");
    h.tenant(&["stop", &name, "--timeout", "1"])?.ok()?;
    let row = h.row(&name)?;
    ensure!(row["state"] == "stopped" && !row["supervised"].as_bool().unwrap_or(true), "{row}");
    h.tenant(&["destroy", &name])?.ok()?;
    ensure!(h.list()?.is_empty(), "destroyed but listed");
    ensure!(!h.tenants_dir().join(&name).exists(), "its directory remains");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn tenant_boot_brings_back_what_should_run_after_a_simulated_reboot() -> Result<()> {
    let t = Test::new("tenboot");
    // Without masquerade: a reboot would take the bridge plugin's rules with it, a simulated one does not.
    let h = Host::new(&t, 1, "")?;
    std::fs::write(&h.host_config, std::fs::read_to_string(&h.host_config)? + "masquerade = false\n")?;
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let names = [t.id("a"), t.id("b"), t.id("c")];
    for n in &names {
        let args = ["create", n, "--image", "bb:1", "--plan", "nano", "--restart", "never", "--", "sleep", "1000"];
        h.tenant(&args)?.ok()?;
    }
    // a and b run, c was never started.
    for n in &names[..2] {
        h.tenant(&["start", n])?.ok()?;
        h.wait_row(n, "running", running)?;
    }
    // The reboot: every supervisor and container process dies, /run's state is gone, the store stays.
    let rows = h.list()?;
    for r in &rows {
        if let Some(pid) = r["pid"].as_i64().filter(|p| *p > 0) {
            // SAFETY: kill(2) of this test's tenants' inits.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
    for (pid, _) in processes(&ProcMatch { paths: &[t.dir().to_path_buf()], roots: &[], ids: &[] }) {
        // SAFETY: kill(2) of this test's supervisors (their command lines name its dir).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(200));
    for n in &names[..2] {
        // What the kernel would have taken with it: the cgroups (empty now).
        for d in cgroup_dirs(n) {
            let _ = std::fs::remove_dir(d);
        }
    }
    std::fs::remove_dir_all(t.warren.root())?;
    // And the mounts: each tenant's disk (its bundle dir).
    for n in &names {
        let b = h.tenants_dir().join(n).join("bundle");
        let path = std::ffi::CString::new(b.to_string_lossy().as_bytes())?;
        // SAFETY: umount2(2) with a NUL-terminated path; MNT_DETACH = 2.
        ensure!(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0, "umount {}", b.display());
        ensure!(!b.join("config.json").exists(), "{n}: disk still mounted");
    }
    let out = h.tenant(&["boot"])?;
    let text = &out.ok()?.stdout;
    ensure!(text.lines().count() == 2 && !text.contains(&names[2]), "{text}");
    for n in &names[..2] {
        h.wait_row(n, "running again", running)?;
    }
    ensure!(h.row(&names[2])?["state"] == "stopped", "c was started");
    // A second boot finds nothing to do.
    ensure!(h.tenant(&["boot"])?.ok()?.stdout.is_empty(), "boot started a supervised tenant again");
    for n in &names {
        h.tenant(&["destroy", n, "--timeout", "1"])?.ok()?;
    }
    t.assert_no_leftovers();
    Ok(())
}

/// `--seccomp unconfined` and a profile of the operator's own, each seen inside; a profile
/// that does not compile is refused at create.
#[test]
fn a_tenants_seccomp_profile_is_the_one_it_was_made_with() -> Result<()> {
    let t = Test::new("tenseccomp");
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let h = Host::new(&t, 6, "")?;
    let own = t.dir().join("no-mkdir.json");
    let deny_mkdir = r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#;
    std::fs::write(&own, deny_mkdir)?;
    let bad = t.dir().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#)?;
    let (free, mine) = (t.id("free"), t.id("mine"));
    let probe = "grep Seccomp: /proc/self/status; unshare -U true && echo NESTED; mkdir /tmp/d && echo MKDIR";
    for (name, profile) in [(&free, "unconfined"), (&mine, &*own.to_string_lossy())] {
        let create = ["create", name, "--image", "bb:1", "--plan", "nano", "--network", "none"];
        h.tenant(&[&create[..], &["--seccomp", profile, "--", "sleep", "1000"]].concat())?.ok()?;
        h.tenant(&["start", name])?.ok()?;
        h.wait_row(name, "running", running)?;
    }
    let out = h.tenant(&["exec", &free, "--", "sh", "-c", probe])?;
    ensure!(
        out.stdout.contains("Seccomp:\t0") && out.stdout.contains("NESTED") && out.stdout.contains("MKDIR"),
        "{out}"
    );
    let out = h.tenant(&["exec", &mine, "--", "sh", "-c", probe])?;
    ensure!(out.stdout.contains("Seccomp:\t2") && out.stdout.contains("NESTED"), "{out}");
    ensure!(!out.stdout.contains("MKDIR") && out.stderr.contains("Permission denied"), "{out}");
    ensure!(h.row(&mine)?["seccomp"] == own.to_string_lossy().as_ref(), "{}", h.row(&mine)?);
    let refused = t.id("refused");
    let out =
        h.tenant(&["create", &refused, "--image", "bb:1", "--plan", "nano", "--seccomp", &bad.to_string_lossy()])?;
    let line = out.failed()?.error_line();
    ensure!(line.contains(&format!("--seccomp {}", bad.display())) && out.stderr.lines().count() == 1, "{out}");
    ensure!(!h.tenants_dir().join(&refused).exists(), "the refused tenant left its dir");
    for name in [&free, &mine] {
        h.tenant(&["destroy", name, "--timeout", "1"])?.ok()?;
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bad_tenant_input_is_one_line_and_leaves_nothing() -> Result<()> {
    let t = Test::new("tenbad");
    let h = Host::new(&t, 2, "[tenants]\nfirst_id = 300000\nranges = 1\n")?;
    let a = t.id("a");
    let b = t.id("b");
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["create", &a, "--image", "bb:1", "--plan", "huge"], "no plan named \"huge\"".into()),
        (vec!["create", &a, "--image", "nope:1", "--plan", "nano"], "nope:1".into()),
        (vec!["create", "Bad_Name", "--image", "bb:1", "--plan", "nano"], "tenant name \"Bad_Name\" is invalid".into()),
        (
            vec!["create", &a, "--image", "bb:1", "--plan", "nano", "-v", "relative:/x"],
            "--volume \"relative:/x\": both paths must be absolute".into(),
        ),
        (vec!["start", &a], format!("tenant {a}: no such tenant")),
    ];
    for (args, want) in &cases {
        let out = h.tenant(args)?;
        let line = out.failed()?.error_line();
        ensure!(line.contains(want.as_str()), "{args:?}: want {want:?}: {out}");
        ensure!(out.stderr.lines().count() == 1, "{out}");
        ensure!(h.list()?.is_empty(), "{args:?} left a tenant");
    }
    // The pool has one range: the first tenant takes it, the second is refused whole, and
    // the range comes back when the first is destroyed.
    h.tenant(&["create", &a, "--image", "bb:1", "--plan", "nano"])?.ok()?;
    let out = h.tenant(&["create", &a, "--image", "bb:1", "--plan", "nano"])?;
    ensure!(out.failed()?.error_line().contains(&format!("tenant {a}: already exists")), "{out}");
    let out = h.tenant(&["create", &b, "--image", "bb:1", "--plan", "nano"])?;
    ensure!(out.failed()?.error_line().contains("the id pool is exhausted"), "{out}");
    ensure!(!h.tenants_dir().join(&b).exists(), "the refused tenant left its dir");
    ensure!(h.row(&a)?["ids"] == 300_000, "ids");
    h.tenant(&["destroy", &a])?.ok()?;
    h.tenant(&["create", &b, "--image", "bb:1", "--plan", "nano"])?.ok()?;
    ensure!(h.row(&b)?["ids"] == 300_000, "the range was not returned");
    h.tenant(&["destroy", &b])?.ok()?;
    let bundles = std::fs::read_dir(Path::new(&h.store).join("bundles"))?.count();
    ensure!(bundles == 0, "{bundles} bundle records left in the store");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn writing_past_the_disk_limit_is_enospc_and_the_neighbour_goes_on() -> Result<()> {
    let t = Test::new("tendisk");
    let h = Host::new(&t, 3, "")?;
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let (a, b) = (t.id("a"), t.id("b"));
    // a fills its disk; b, beside it, writes after a is full.
    let fill = "dd if=/dev/zero of=/fill bs=1M count=32 2>/tmp/dd.err; echo dd=$?; \
                grep -o 'No space left on device' /tmp/dd.err; exec sleep 1000";
    let write = "while [ ! -e /go ]; do sleep 0.1; done; dd if=/dev/zero of=/f bs=1M count=4 2>/dev/null; \
                 echo dd=$?; exec sleep 1000";
    for (n, script) in [(&a, fill), (&b, write)] {
        let args = ["create", n, "--image", "bb:1", "--plan", "nano", "--disk", "16MiB", "--", "sh", "-c", script];
        h.tenant(&args)?.ok()?;
        h.tenant(&["start", n])?.ok()?;
    }
    let logs = h.wait_logs(&a, "dd=")?;
    ensure!(logs.contains("dd=1") && logs.contains("No space left on device"), "{logs}");
    let row = h.row(&a)?;
    // The plan's write limit (nano: 10MB/s) is on the loop device its writes go through first.
    let dev = std::fs::metadata(h.tenants_dir().join(&a).join("bundle"))?.dev();
    let loop_dev = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let pid = row["pid"].as_i64().context("pid")? as i32;
    let throttle = read_knob(&knob_path(pid, "blkio", "blkio.throttle.write_bps_device", "io.max")?)?;
    ensure!(
        loop_dev.starts_with("7:")
            && throttle.lines().any(|l| l.starts_with(&format!("{loop_dev} ")) && l.contains("10000000")),
        "{loop_dev} not throttled: {throttle}"
    );
    let (used, size) =
        (row["disk_used"].as_u64().context("disk_used")?, row["disk_size"].as_u64().context("disk_size")?);
    ensure!(size <= 16 << 20 && used > size * 9 / 10, "a's disk: {used} of {size}");
    h.tenant(&["exec", &b, "--", "touch", "/go"])?.ok()?;
    let logs = h.wait_logs(&b, "dd=")?;
    ensure!(logs.contains("dd=0"), "b could not write: {logs}");
    // The image files hold what was written, not more than their limit.
    for n in [&a, &b] {
        let img = h.tenants_dir().join(n).join("disk.img");
        let m = std::fs::metadata(&img)?;
        ensure!(
            m.len() == 16 << 20 && m.blocks() * 512 <= 17 << 20,
            "{}: {} bytes on disk",
            img.display(),
            m.blocks() * 512
        );
    }
    for n in [&a, &b] {
        h.tenant(&["destroy", n, "--timeout", "1"])?.ok()?;
    }
    ensure!(loop_devices_under(t.dir()).is_empty(), "a loop device is left");
    t.assert_no_leftovers();
    Ok(())
}

/// `GET /` over TCP from the host, the body.
fn http_get(addr: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
}

fn http_get_soon(addr: &str) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match http_get(addr).with_context(|| format!("GET http://{addr}/")) {
            Ok(body) if !body.is_empty() => return Ok(body),
            r if Instant::now() >= end => return r.and_then(|b| Err(anyhow::anyhow!("{addr}: empty reply {b:?}"))),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[test]
fn tenants_on_the_bridge_reach_each_other_the_host_reaches_them_and_ports_are_published() -> Result<()> {
    let t = Test::new("tennet");
    let h = Host::new(&t, 4, "")?;
    let portmap_before = portmap_chains_present();
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let (a, b) = (t.id("a"), t.id("b"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let publish = format!("{port}:80");
    let serve = format!("mkdir -p /www; echo hello-from-{a} > /www/index.html; exec httpd -f -p 80 -h /www");
    let args = ["create", &a, "--image", "bb:1", "--plan", "nano", "-p", &publish, "--", "sh", "-c", &serve];
    h.tenant(&args)?.ok()?;
    h.tenant(&["create", &b, "--image", "bb:1", "--plan", "nano", "--", "sleep", "1000"])?.ok()?;
    // Addresses are given at create, in order after the bridge's own.
    let (ip_a0, ip_b0) = (h.row(&a)?["ip"].clone(), h.row(&b)?["ip"].clone());
    ensure!(
        ip_a0 == format!("{}.2", h.subnet).as_str() && ip_b0 == format!("{}.3", h.subnet).as_str(),
        "{ip_a0} {ip_b0}"
    );
    for n in [&a, &b] {
        h.tenant(&["start", n])?.ok()?;
    }
    let ra = h.wait_row(&a, "running", running)?;
    let rb = h.wait_row(&b, "running", running)?;
    let (ip_a, ip_b) = (ra["ip"].as_str().context("a's ip")?, rb["ip"].as_str().context("b's ip")?);
    ensure!(ip_a != ip_b && ip_a.starts_with(&h.subnet) && ip_b.starts_with(&h.subnet), "{ip_a} {ip_b}");
    let want = format!("hello-from-{a}\n");
    // The host reaches a tenant, a tenant reaches its neighbour, and the published port answers.
    ensure!(http_get_soon(&format!("{ip_a}:80"))? == want, "host to tenant");
    let out = h.tenant(&["exec", &b, "--", "wget", "-qO-", &format!("http://{ip_a}/")])?;
    ensure!(out.ok()?.stdout == want, "tenant to tenant: {out}");
    ensure!(http_get_soon(&format!("127.0.0.1:{port}"))? == want, "published port");
    // Outbound traffic is masqueraded by one rule for the subnet, however many tenants run:
    // no per-tenant chain (portmap's rules are only for the published port).
    let subnet = format!("{}.0/24", h.subnet);
    let nat = nat_rules()?;
    let masq: Vec<&str> = nat.lines().filter(|l| l.contains(&subnet) && l.contains("MASQUERADE")).collect();
    ensure!(masq.len() == 1 && masq[0].contains(&format!("! -d {subnet}")), "{nat}");
    ensure!(!nat.contains(&format!("id: \"{b}\"")), "a per-tenant rule for {b}:\n{nat}");
    // An address that is taken is refused at create, naming its tenant.
    let c = t.id("c");
    let out = h.tenant(&["create", &c, "--image", "bb:1", "--plan", "nano", "--ip", ip_a])?;
    ensure!(out.failed()?.error_line().contains(&format!("--ip {ip_a}: is tenant {a}'s")), "{out}");
    let out = h.tenant(&["create", &c, "--image", "bb:1", "--plan", "nano", "--ip", "192.0.2.9"])?;
    ensure!(out.failed()?.error_line().contains("is not a host address of"), "{out}");
    // Restarted after kill -9, it keeps its address.
    let pid = ra["pid"].as_i64().context("pid")? as i32;
    // SAFETY: kill(2) of the tenant's init, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let again = h.wait_row(&a, "restarted", |r| running(r) && r["restarts"] == 1)?;
    ensure!(again["ip"] == ip_a && again["mac"] == ra["mac"] && ra["mac"].is_string(), "{ra}\n{again}");
    ensure!(http_get_soon(&format!("{ip_a}:80"))? == want, "after the restart");
    for n in [&a, &b] {
        h.tenant(&["destroy", n, "--timeout", "1"])?.ok()?;
    }
    // Nothing of them on the host: no veth on the bridge, no lease, no rule naming them.
    let veths = std::process::Command::new("ip").args(["-o", "link", "show", "master", &h.bridge]).output()?;
    ensure!(veths.stdout.is_empty(), "veths left: {}", String::from_utf8_lossy(&veths.stdout));
    // (No lease store at all: addresses are static, allocated at create.)
    let leases: Vec<String> = std::fs::read_dir(h.tenants_dir().join(".cni/warren"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    ensure!(leases.is_empty(), "leases left: {leases:?}");
    let rules = nat_rules()?;
    ensure!(!rules.contains(&a) && !rules.contains(&b) && !rules.contains(&subnet), "rules left:\n{rules}");
    if !portmap_before {
        remove_portmap_chains();
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn set_changes_a_running_tenants_limits_all_or_nothing_and_for_its_next_start() -> Result<()> {
    let t = Test::new("tenset");
    let h = Host::new(&t, 5, "")?;
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let a = t.id("a");
    // 24 MiB in tmpfs: charged to its memory cgroup and, without swap, not reclaimable.
    let script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=24 2>/dev/null; echo filled; exec sleep 1000";
    let args = ["create", &a, "--image", "bb:1", "--plan", "nano", "--network", "none", "--", "sh", "-c", script];
    h.tenant(&args)?.ok()?;
    h.tenant(&["start", &a])?.ok()?;
    let pid = h.wait_row(&a, "running", running)?["pid"].as_i64().context("pid")? as i32;
    h.wait_logs(&a, "filled")?;
    let memory = || -> Result<String> {
        Ok(read_knob(&knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?)?.trim().to_string())
    };
    let pids =
        || -> Result<String> { Ok(read_knob(&knob_path(pid, "pids", "pids.max", "pids.max")?)?.trim().to_string()) };
    h.tenant(&["set", &a, "--memory", "64MiB", "--pids", "20"])?.ok()?;
    ensure!(memory()? == (64u64 << 20).to_string() && pids()? == "20", "{} {}", memory()?, pids()?);
    // Below what it uses: the kernel refuses the memory limit, and the pids limit written
    // before it is put back; config.json is unchanged.
    let config = h.tenants_dir().join(&a).join("bundle/config.json");
    let before = std::fs::read(&config)?;
    let out = h.tenant(&["set", &a, "--pids", "30", "--memory", "8MiB"])?;
    ensure!(out.failed()?.error_line().contains("memory"), "{out}");
    ensure!(memory()? == (64u64 << 20).to_string() && pids()? == "20", "not all or nothing: {} {}", memory()?, pids()?);
    ensure!(std::fs::read(&config)? == before, "config.json changed");
    // A plan: its limits now and at the next start.
    h.tenant(&["set", &a, "--plan", "small"])?.ok()?;
    ensure!(memory()? == (512u64 << 20).to_string() && pids()? == "256", "{} {}", memory()?, pids()?);
    ensure!(h.row(&a)?["plan"] == "small", "plan not recorded");
    h.tenant(&["restart", &a, "--timeout", "0"])?.ok()?;
    let pid = h.wait_row(&a, "running", running)?["pid"].as_i64().context("pid")? as i32;
    let limit = read_knob(&knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?)?;
    ensure!(limit.trim() == (512u64 << 20).to_string(), "after restart: {limit}");
    h.tenant(&["destroy", &a, "--timeout", "0"])?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

/// `set --disk`: grown while the tenant runs and writes, refused below what it uses or, for a
/// shrink, while it runs (with the other limits of the same `set` put back), shrunk while
/// stopped with its files kept.
#[test]
fn set_disk_grows_live_and_shrinks_stopped_never_below_use() -> Result<()> {
    let t = Test::new("tendisk");
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let h = Host::new(&t, 7, "")?;
    let a = t.id("a");
    let create = ["create", &a, "--image", "bb:1", "--plan", "nano", "--network", "none", "--disk", "32MiB"];
    h.tenant(&[&create[..], &["--", "sleep", "100000"]].concat())?.ok()?;
    h.tenant(&["start", &a])?.ok()?;
    h.wait_row(&a, "running", running)?;
    let write = |file: &str, mib: u32| -> Result<Out> {
        let dd = format!("dd if=/dev/zero of=/{file} bs=1M count={mib} 2>&1 && sync");
        h.tenant(&["exec", &a, "--", "sh", "-c", &dd])
    };
    write("a", 24)?.ok()?;
    let full = write("b", 16)?;
    ensure!(full.code() != Some(0) && full.stdout.contains("No space left on device"), "{full}");
    h.tenant(&["exec", &a, "--", "rm", "/b"])?.ok()?;
    let size = |row: &Value| row["disk_size"].as_u64().unwrap_or(0) >> 20;
    let pids_max = || -> Result<String> {
        let pid = h.row(&a)?["pid"].as_i64().context("pid")? as i32;
        Ok(read_knob(&knob_path(pid, "pids", "pids.max", "pids.max")?)?.trim().into())
    };
    let pids_before = pids_max()?;
    // Growing in place takes ext4's online resize, which needs CAP_SYS_RESOURCE: where this
    // host has none, a grow while it runs is refused like a shrink, else it is done live.
    let live_grow = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        // Bit 24: CAP_SYS_RESOURCE.
        .is_some_and(|caps| caps & (1 << 24) != 0);
    let out = h.tenant(&["set", &a, "--pids", "33", "--disk", "64MiB"])?;
    if live_grow {
        out.ok()?;
        ensure!(pids_max()? == "33", "pids.max {}", pids_max()?);
    } else {
        ensure!(out.failed()?.error_line().contains("grows only while it is stopped on this host"), "{out}");
        ensure!(out.stderr.lines().count() == 1 && pids_max()? == pids_before, "{out} pids.max {}", pids_max()?);
        h.tenant(&["stop", &a, "--timeout", "0"])?.ok()?;
        h.tenant(&["set", &a, "--disk", "64MiB"])?.ok()?;
        h.tenant(&["start", &a])?.ok()?;
        h.wait_row(&a, "running", running)?;
    }
    ensure!((50..=64).contains(&size(&h.row(&a)?)), "grown: {}", h.row(&a)?);
    write("b", 16)?.ok()?;
    // A shrink while it runs is refused, and the pids limit of the same set is put back.
    let pids_before = pids_max()?;
    let out = h.tenant(&["set", &a, "--pids", "34", "--disk", "48MiB"])?;
    ensure!(out.failed()?.error_line().contains("shrinks only while it is stopped"), "{out}");
    ensure!(out.stderr.lines().count() == 1 && pids_max()? == pids_before, "{out} pids.max {}", pids_max()?);
    h.tenant(&["stop", &a, "--timeout", "0"])?.ok()?;
    let out = h.tenant(&["set", &a, "--disk", "32MiB"])?;
    ensure!(out.failed()?.error_line().contains("--disk 32MiB: below the"), "{out}");
    h.tenant(&["set", &a, "--disk", "48MiB"])?.ok()?;
    ensure!((36..=48).contains(&size(&h.row(&a)?)), "shrunk: {}", h.row(&a)?);
    ensure!(h.row(&a)?["disk"] == 48u64 << 20, "record: {}", h.row(&a)?);
    h.tenant(&["start", &a])?.ok()?;
    h.wait_row(&a, "running", running)?;
    let out = h.tenant(&["exec", &a, "--", "sh", "-c", "wc -c /a /b"])?.ok()?.stdout.clone();
    ensure!(out.contains(&format!("{} /a", 24 << 20)) && out.contains(&format!("{} /b", 16 << 20)), "{out}");
    h.tenant(&["destroy", &a, "--timeout", "0"])?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

/// `tenant console NAME` run with `input` on its stdin (a pipe), until its output holds
/// `want`; then Ctrl-] detaches it. Returns its output and whether it ended by itself (0).
fn console(h: &Host, name: &str, input: &str, want: &str) -> Result<(String, bool)> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(warren_bin())
        .arg("--root")
        .arg(h.t.warren.root())
        .args(["tenant", "--store", &h.store, "--host-config", &h.host_config, "console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = child.stdout.take().context("stdout")?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input.as_bytes())?;
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
    let end = Instant::now() + Duration::from_secs(15);
    while !text().contains(want) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    stdin.write_all(&[0x1d])?;
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    Ok((text(), status.is_some_and(|s| s.success())))
}

/// `console`: what is typed reaches the init on its terminal and its answers come back (and
/// go to its log); Ctrl-] detaches and the tenant runs on; after a restart the console is
/// the new init's; a stopped tenant has none (one line).
#[test]
fn console_attaches_to_the_tenants_terminal_and_ctrl_close_bracket_detaches() -> Result<()> {
    let t = Test::new("tencons");
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let h = Host::new(&t, 8, "")?;
    let a = t.id("a");
    let init = "echo console-ready; tty; while read l; do echo \"got: $l\"; done; echo eof; sleep 1000";
    let create = ["create", &a, "--image", "bb:1", "--plan", "nano", "--network", "none", "--restart", "always"];
    h.tenant(&[&create[..], &["--", "sh", "-c", init]].concat())?.ok()?;
    h.tenant(&["start", &a])?.ok()?;
    let pid = h.wait_row(&a, "running", running)?["pid"].as_i64().context("pid")? as i32;
    let (out, detached) = console(&h, &a, "hello console\n", "got: hello console")?;
    ensure!(out.contains("got: hello console") && detached, "{out}");
    let row = h.row(&a)?;
    ensure!(running(&row) && row["pid"] == pid, "after the detach: {row}");
    let logs = h.wait_logs(&a, "got: hello console")?;
    ensure!(
        logs.contains("console-ready") && logs.contains("/dev/pts/0") && logs.contains("got: hello console"),
        "{logs}"
    );
    // SAFETY: kill(2) of the tenant's init, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_row(&a, "restarted", |r| running(r) && r["pid"] != pid)?;
    let (out, detached) = console(&h, &a, "second\n", "got: second")?;
    ensure!(out.contains("got: second") && detached, "{out}");
    // An init that closes its terminal (the pty then has no slave open) leaves its
    // supervisor idle: it polls the master again once a second, not in a busy loop.
    let quiet = t.id("quiet");
    let closes = "exec </dev/null >/dev/null 2>&1; exec sleep 1000";
    let create = ["create", &quiet, "--image", "bb:1", "--plan", "nano", "--network", "none"];
    h.tenant(&[&create[..], &["--", "sh", "-c", closes]].concat())?.ok()?;
    h.tenant(&["start", &quiet])?.ok()?;
    let init = h.wait_row(&quiet, "running", running)?["pid"].as_i64().context("pid")?;
    let supervisor = std::fs::read_to_string(format!("/proc/{init}/stat"))?
        .rsplit(") ")
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1).map(String::from))
        .context("the init's parent")?;
    let cmdline = std::fs::read_to_string(format!("/proc/{supervisor}/cmdline"))?;
    ensure!(cmdline.contains("supervise"), "the init's parent is not its supervisor: {cmdline:?}");
    let cpu_ticks = || -> Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{supervisor}/stat"))?;
        let fields: Vec<&str> = stat.rsplit(") ").next().unwrap_or_default().split_whitespace().collect();
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    let before = cpu_ticks()?;
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks()? - before;
    // A busy loop would take about 200 ticks (100 per second) in these 2 s.
    ensure!(used < 50, "the supervisor used {used} ticks of CPU in 2 s");
    h.tenant(&["destroy", &quiet, "--timeout", "0"])?.ok()?;
    h.tenant(&["stop", &a, "--timeout", "0"])?.ok()?;
    let out = h.tenant(&["console", &a])?;
    ensure!(out.failed()?.error_line().contains("is not running") && out.stderr.lines().count() == 1, "{out}");
    h.tenant(&["destroy", &a])?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

/// What tenant `name` sends with `spoof` from its eth0 to the host (the bridge's address,
/// UDP): the texts that arrived within a second each.
fn spoofed_arrivals(h: &Host, name: &str, sends: &[(&str, &str, &str)]) -> Result<Vec<String>> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(300)))?;
    let port = sock.local_addr()?.port().to_string();
    let gw = format!("{}.1", h.subnet);
    let gw_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", h.bridge))?.trim().to_string();
    let mut got = Vec::new();
    for (mac, ip, text) in sends {
        let out = h.tenant(&["exec", name, "--", "/vol/spoof", "eth0", mac, ip, &gw_mac, &gw, &port, text])?;
        out.ok().with_context(|| format!("spoof {mac} {ip}"))?;
        let end = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            if got.iter().any(|g| g == text) {
                break;
            }
        }
    }
    Ok(got)
}

#[test]
fn a_tenant_cannot_send_with_another_source_address_or_mac() -> Result<()> {
    let t = Test::new("tenspoof");
    let h = Host::new(&t, 9, "")?;
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o711))?;
    let vol = t.dir().join("vol");
    std::fs::create_dir(&vol)?;
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o755))?;
    std::fs::copy(spoof_tool(t.dir())?, vol.join("spoof"))?;
    let a = t.id("a");
    let volume = format!("{}:/vol", vol.display());
    h.tenant(&["create", &a, "--image", "bb:1", "--plan", "nano", "-v", &volume, "--", "sleep", "1000"])?.ok()?;
    h.tenant(&["start", &a])?.ok()?;
    let row = h.wait_row(&a, "running", running)?;
    let ip = row["ip"].as_str().context("ip")?.to_string();
    let mac = h.tenant(&["exec", &a, "--", "cat", "/sys/class/net/eth0/address"])?.ok()?.stdout.trim().to_string();
    let (other_ip, other_mac) = (format!("{}.99", h.subnet), "02:00:00:00:00:99".to_string());
    // With its own MAC and address a datagram arrives (the tool works); with another
    // address, or another MAC, it is dropped at its bridge port.
    let got = spoofed_arrivals(
        &h,
        &a,
        &[
            (&mac, &ip, "own"),
            (&mac, &other_ip, "forged-ip"),
            (&other_mac, &ip, "forged-mac"),
            (&mac, &ip, "own-again"),
        ],
    )?;
    ensure!(got == ["own", "own-again"], "arrived at the host: {got:?}");
    // ARP too: a request as itself is answered; one as a forged sender (which would also
    // poison the host's neighbour table) is not.
    let gw = format!("{}.1", h.subnet);
    let ask = |mac: &str, ip: &str| {
        h.tenant(&["exec", &a, "--", "/vol/spoof", "eth0", mac, ip, "ff:ff:ff:ff:ff:ff", &gw, "arp", "-"])
    };
    let out = ask(&mac, &ip)?;
    ensure!(out.success(), "ARP request as itself: {out}");
    let out = ask(&mac, &other_ip)?;
    ensure!(out.code() == Some(1), "ARP request as {other_ip} was answered: {out}");
    // The guard follows the tenant across a restart (a new veth), and goes with it.
    let pid = row["pid"].as_i64().context("pid")? as i32;
    // SAFETY: kill(2) of the tenant's init, which this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    h.wait_row(&a, "restarted", |r| running(r) && r["restarts"] == 1)?;
    let got = spoofed_arrivals(&h, &a, &[(&mac, &other_ip, "forged-after"), (&mac, &ip, "own-after")])?;
    ensure!(got == ["own-after"], "after the restart, arrived: {got:?}");
    h.tenant(&["destroy", &a, "--timeout", "1"])?.ok()?;
    let table =
        std::process::Command::new("nft").args(["list", "table", "bridge", &guard_table(&h.bridge)]).output()?;
    ensure!(
        !table.status.success(),
        "the guard table outlived its last tenant: {}",
        String::from_utf8_lossy(&table.stdout)
    );
    t.assert_no_leftovers();
    Ok(())
}
