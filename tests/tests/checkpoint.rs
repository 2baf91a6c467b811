//! `warren checkpoint` / `warren restore` with the real CRIU: the restored container goes on
//! from its memory (a counter kept in a shell variable), keeps its limits, hostname and bind
//! mounts, and `exec` works in it. Skipped (with a note) where no criu is installed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use warren_tests::*;

const MIB: u64 = 1 << 20;

/// Counts in a shell variable, writing each value to /tmp/count (through a rename, so that
/// a reader, or a dump between two writes, never sees it half-written); nothing on stdout.
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; sleep 0.05; done";

fn counter_bundle(t: &Test, edit: impl FnOnce(&mut Value)) -> Result<Bundle> {
    let b = t.bundle(&["sh", "-c", COUNTER])?;
    b.edit(|cfg| {
        writable_root(cfg);
        cfg["hostname"] = json!("moved-box");
        edit(cfg);
    })?;
    Ok(b)
}

fn count(b: &Bundle) -> Result<u64> {
    read_counter(&b.rootfs().join("tmp/count"))
}

/// Waits until the counter passes `above`.
fn wait_count_above(b: &Bundle, above: u64, timeout: Duration) -> Result<u64> {
    wait_counter_above(&b.rootfs().join("tmp/count"), above, timeout)
}

fn images(t: &Test, name: &str) -> PathBuf {
    t.dir().join(name)
}

fn checkpoint(t: &Test, id: &str, dir: &Path, extra: &[&str]) -> Result<()> {
    let d = dir.to_string_lossy();
    let args = [&["checkpoint", "--image-path", &d], extra, &[id]].concat();
    t.cmd(&args)?.ok().context("checkpoint")?;
    Ok(())
}

fn restore(t: &Test, id: &str, b: &Bundle, dir: &Path) -> Result<Container> {
    restore_with(t, id, b, dir, &[])
}

fn restore_with(t: &Test, id: &str, b: &Bundle, dir: &Path, extra: &[&str]) -> Result<Container> {
    let (bundle, d) = (b.path().to_string_lossy(), dir.to_string_lossy());
    let args = [&["restore", "--detach", "--bundle", &bundle, "--image-path", &d], extra, &[id]].concat();
    t.cmd(&args)?.ok().context("restore")?;
    Ok(t.warren.adopt(id))
}

#[test]
fn a_restored_container_goes_on_from_its_memory_with_its_limits() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_counter");
    let b = counter_bundle(&t, |cfg| {
        cfg["linux"]["resources"] = json!({"memory": {"limit": 64 * MIB}, "pids": {"limit": 20}});
    })?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    wait_count_above(&b, 5, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &id, &dir, &[])?;
    // Without --leave-running the container is gone, as with runc.
    ensure!(t.cmd(&["state", &id])?.failed().is_ok(), "state after checkpoint");
    ensure!(cgroup_dirs(&id).is_empty(), "cgroup left after checkpoint: {:?}", cgroup_dirs(&id));
    std::mem::forget(c); // its guard would delete the restored container under the same id
    let at_dump = count(&b)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(count(&b)? == at_dump, "nothing runs between dump and restore");
    // Its network namespace held only a loopback it cannot change (no CAP_NET_ADMIN): CRIU
    // ran in it and did not save it (no netns image at all, no conntrack walk); the restore
    // gives it a new one.
    let info: Value = serde_json::from_slice(&std::fs::read(dir.join("warren-checkpoint.json"))?)?;
    ensure!(info["fresh_netns"] == true, "fresh_netns: {}", info["fresh_netns"]);
    ensure!(info["criu_in_netns"] == true, "criu_in_netns: {}", info["criu_in_netns"]);
    let netns_images: Vec<String> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| ["netns-", "netdev-", "ifaddr-", "route-", "iptables-"].iter().any(|p| n.starts_with(p)))
        .collect();
    ensure!(netns_images.is_empty(), "CRIU saved the network namespace: {netns_images:?}");
    // CRIU did not probe the kernel: it loaded its cache (which Warren keeps where /run is
    // not a tmpfs).
    let log = std::fs::read_to_string(dir.join("dump.log"))?;
    ensure!(log.contains("Loaded kdat cache from /run/criu.kdat"), "the dump probed the kernel again");

    let c = restore(&t, &id, &b, &dir)?;
    ensure!(c.status()? == "running", "status after restore");
    let next = wait_count_above(&b, at_dump, Duration::from_secs(5))?;
    ensure!(next <= at_dump + 40, "the counter went on from {at_dump} (got {next}), not from 0");
    let pid = c.pid()?;
    let limit = read_knob(&knob_path(pid, "memory", "memory.limit_in_bytes", "memory.max")?)?;
    ensure!(limit == (64 * MIB).to_string(), "memory limit after restore: {limit}");
    let pids = read_knob(&knob_path(pid, "pids", "pids.max", "pids.max")?)?;
    ensure!(pids == "20", "pids limit after restore: {pids}");
    let out = c.exec(&[], &["sh", "-c", "hostname; cat /proc/1/cmdline | tr '\\0' ' '"])?;
    out.ok()?;
    ensure!(out.stdout.starts_with("moved-box\nsh -c i=0"), "exec in the restored container: {out}");
    let out = c.exec(&[], &["sh", "-c", "ip -o link; readlink /proc/1/ns/net; readlink /proc/self/ns/net"])?;
    let lines: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(
        lines.len() == 3 && lines[0].contains(": lo: <LOOPBACK,UP,LOWER_UP>") && lines[1] == lines[2],
        "the restored container's network: {out}"
    );
    ensure!(lines[1] != std::fs::read_link("/proc/self/ns/net")?.to_string_lossy(), "not the host's netns");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// Whether this kernel tracks dirty memory (soft-dirty bits), which pre-dump needs.
fn dirty_tracking() -> bool {
    std::process::Command::new("criu")
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn leave_running_then_restore_after_delete() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_leave");
    let b = counter_bundle(&t, |_| {})?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    wait_count_above(&b, 3, Duration::from_secs(5))?;
    let full = images(&t, "full");
    checkpoint(&t, &id, &full, &["--leave-running", "--link-remap", "--tcp-skip-in-flight"])?;
    ensure!(c.status()? == "running", "--leave-running");
    // runc's descriptors.json: where the init's stdio 0, 1, 2 pointed.
    let fds: Vec<String> = serde_json::from_slice(&std::fs::read(full.join("descriptors.json"))?)?;
    ensure!(fds.len() == 3 && fds.iter().all(|f| f.starts_with('/') || f.contains(":[")), "{fds:?}");
    let after = wait_count_above(&b, count(&b)?, Duration::from_secs(5))?;
    t.cmd(&["delete", "--force", &id])?.ok()?;
    std::mem::forget(c);
    let c = restore(&t, &id, &b, &full)?;
    // Back at the dump's value, then on from there.
    wait_count_above(&b, 0, Duration::from_secs(5))?;
    ensure!(count(&b)? < after + 40, "restored from the dump, not a fresh start");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// /dev's entries: name, mode, owner, device number, type (not times: made anew at restore).
const LIST_DEV: &str = "stat -c '%n %A %u %g %t:%T %F' /dev/* /dev/shm";

/// A paused container's tmpfs mounts that hold only metadata (/dev: its nodes and links;
/// an empty /dev/shm) are made anew at the restore instead of going through CRIU's tar; one
/// that holds data (/dev/shm with a file in it) still goes through CRIU, and keeps the file.
#[test]
fn a_paused_containers_dev_is_made_anew_and_shm_data_kept() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_devskel");
    for (k, shm_file) in [(0, false), (1, true)] {
        let b = counter_bundle(&t, |_| {})?;
        let id = t.id(&format!("c{k}"));
        let c = t.start_new(&id, &b)?;
        if shm_file {
            c.exec(&[], &["sh", "-c", "echo kept > /dev/shm/data"])?.ok()?;
        }
        let before = c.exec(&[], &["sh", "-c", LIST_DEV])?.ok()?.stdout.clone();
        t.cmd(&["pause", &id])?.ok()?;
        let dir = images(&t, &format!("img{k}"));
        checkpoint(&t, &id, &dir, &[])?;
        std::mem::forget(c);
        let info: Value = serde_json::from_slice(&std::fs::read(dir.join("warren-checkpoint.json"))?)?;
        let made: Vec<&str> = info["skeleton_tmpfs"]
            .as_array()
            .context("skeleton_tmpfs")?
            .iter()
            .filter_map(|s| s["destination"].as_str())
            .collect();
        ensure!(made.contains(&"/dev") && made.contains(&"/dev/shm") != shm_file, "{k}: made anew: {made:?}");
        let tars = std::fs::read_dir(&dir)?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("tmpfs-"))
            .count();
        ensure!(tars == usize::from(shm_file), "{k}: {tars} tmpfs copies by CRIU");
        let c = restore(&t, &id, &b, &dir)?;
        let after = c.exec(&[], &["sh", "-c", LIST_DEV])?.ok()?.stdout.clone();
        ensure!(before == after, "{k}: /dev before {before}\nafter {after}");
        let out = c.exec(
            &[],
            &["sh", "-c", "echo x > /dev/null && head -c 3 /dev/zero | wc -c; cat /dev/shm/data 2>&1; true"],
        )?;
        let want =
            if shm_file { "3\nkept\n" } else { "3\ncat: can't open '/dev/shm/data': No such file or directory\n" };
        ensure!(out.ok()?.stdout == want, "{k}: {out}");
        wait_count_above(&b, count(&b)?, Duration::from_secs(5))?;
        drop(c);
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn pre_dump_then_dump_against_it() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_pre");
    let b = counter_bundle(&t, |_| {})?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    wait_count_above(&b, 3, Duration::from_secs(5))?;
    let (pre, full) = (images(&t, "pre"), images(&t, "full"));
    let p = pre.to_string_lossy();
    let out = t.cmd(&["checkpoint", "--pre-dump", "--image-path", &p, &id])?;
    ensure!(c.status()? == "running", "pre-dump leaves it running, whatever its outcome");
    if !dirty_tracking() {
        // This kernel has no soft-dirty bits: CRIU cannot pre-dump, and says so in one line.
        out.failed()?;
        ensure!(out.error_line().contains("Tracking memory is not available"), "{out}");
        drop(c);
        t.assert_no_leftovers();
        return Ok(());
    }
    out.ok()?;
    checkpoint(&t, &id, &full, &["--parent-path", "../pre"])?;
    std::mem::forget(c);
    let at_dump = count(&b)?;
    let c = restore(&t, &id, &b, &full)?;
    wait_count_above(&b, at_dump, Duration::from_secs(5))?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_bind_mount_is_there_again_after_restore() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_bind");
    let shared = t.dir().join("shared");
    std::fs::create_dir_all(&shared)?;
    let src = shared.to_string_lossy().to_string();
    let b = counter_bundle(&t, |cfg| {
        let mounts = cfg["mounts"].as_array_mut().expect("mounts");
        mounts.push(json!({"destination": "/shared", "type": "bind", "source": src, "options": ["rbind", "rw"]}));
    })?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    wait_count_above(&b, 2, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &id, &dir, &[])?;
    std::mem::forget(c);
    let c = restore(&t, &id, &b, &dir)?;
    std::fs::write(shared.join("from-host"), "after restore\n")?;
    let out = c.exec(&[], &["sh", "-c", "cat /shared/from-host; echo inside > /shared/from-box"])?;
    out.ok()?;
    ensure!(out.stdout == "after restore\n", "bind mount in the restored container: {out}");
    ensure!(std::fs::read_to_string(shared.join("from-box"))? == "inside\n", "writes reach the host dir");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bad_checkpoint_and_restore_input_is_refused_cleanly() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_bad");
    let b = counter_bundle(&t, |_| {})?;
    let id = t.id("c");
    // Not a checkpoint: nothing of the container is made.
    let empty = images(&t, "empty");
    std::fs::create_dir_all(&empty)?;
    let (bundle, e) = (b.path().to_string_lossy(), empty.to_string_lossy());
    let out = t.cmd(&["restore", "-d", "--bundle", &bundle, "--image-path", &e, &id])?;
    out.failed()?;
    ensure!(out.error_line().contains("not a Warren checkpoint"), "{out}");
    ensure!(t.cmd(&["state", &id])?.failed().is_ok(), "no state after a refused restore");
    // A created (not started) container, and a bad cgroup mode.
    let c = t.create(&id, &b)?;
    let out = t.cmd(&["checkpoint", "--image-path", &e, &id])?;
    out.failed()?;
    ensure!(out.error_line().contains("created"), "{out}");
    let out = t.cmd(&["checkpoint", "--image-path", &e, "--manage-cgroups-mode", "loose", &id])?;
    out.failed()?;
    ensure!(out.error_line().contains("--manage-cgroups-mode"), "{out}");
    ensure!(c.status()? == "created", "left as it was");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_container_with_a_terminal_gets_a_new_pty_at_restore() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_tty");
    let console = ConsoleSocket::new(t.dir())?;
    let sock = console.path.to_string_lossy().to_string();
    let b = counter_bundle(&t, |cfg| cfg["process"]["terminal"] = json!(true))?;
    let id = t.id("c");
    let c = t.warren.create_with(&id, &b, &["--console-socket", &sock])?;
    c.start()?.ok()?;
    let _first = console.masters.recv_timeout(Duration::from_secs(5)).context("pty master at create")?;
    wait_count_above(&b, 2, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &id, &dir, &[])?;
    std::mem::forget(c);
    let at_dump = count(&b)?;
    let (bundle, d) = (b.path().to_string_lossy(), dir.to_string_lossy());
    // Without a console socket a checkpointed terminal cannot be restored detached.
    let out = t.cmd(&["restore", "-d", "--bundle", &bundle, "--image-path", &d, &id])?;
    out.failed()?;
    ensure!(out.error_line().contains("--console-socket"), "{out}");
    let args = ["restore", "-d", "--console-socket", &sock, "--bundle", &bundle, "--image-path", &d, &id];
    t.cmd(&args)?.ok().context("restore")?;
    let c = t.warren.adopt(&id);
    let _second = console.masters.recv_timeout(Duration::from_secs(5)).context("a new pty master at restore")?;
    wait_count_above(&b, at_dump, Duration::from_secs(5))?;
    let out = c.exec(&[], &["sh", "-c", "test -c /dev/console && readlink /proc/1/fd/0"])?;
    ensure!(out.success() && out.stdout.starts_with("/dev/pts/"), "the init's stdin is a pty: {out}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn a_restore_under_another_id_lands_in_that_ids_cgroup_only() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_newid");
    let b = counter_bundle(&t, |_| {})?;
    let (old, new) = (t.id("old"), t.id("new"));
    let c = t.start_new(&old, &b)?;
    wait_count_above(&b, 2, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &old, &dir, &[])?;
    std::mem::forget(c);
    let c = restore(&t, &new, &b, &dir)?;
    // Every hierarchy, cgroup2 included, names the new id; none of the old id's is made again.
    let lines = std::fs::read_to_string(format!("/proc/{}/cgroup", c.pid()?))?;
    ensure!(lines.lines().all(|l| l.ends_with(&new)), "cgroups of the restored init: {lines}");
    ensure!(cgroup_dirs(&old).is_empty(), "old id's cgroups made again: {:?}", cgroup_dirs(&old));
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// Two ends of one TCP connection over 127.0.0.1 in the container's own network namespace: a
/// server that accepts once (busybox `nc -l` closes its listener after the first accept) and
/// writes what it receives to /tmp/recv, and a client that sends a counter line every 100 ms,
/// the count kept in a shell variable. The server's stdin never ends: at its end nc would
/// shut its sending half and the client would take that for the end of the connection. If
/// the connection breaks, the client's nc exits and /tmp/client-gone says so. lo starts down
/// in a new network namespace (Warren leaves it so), hence CAP_NET_ADMIN.
const TCP_PAIR: &str = "ip link set lo up || exit 1
sleep 1000000 | nc -l -p 7000 > /tmp/recv &
until grep -qs ':1B58 0*:0000 0A' /proc/net/tcp /proc/net/tcp6; do sleep 0.05; done
i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done | nc 127.0.0.1 7000
echo $? > /tmp/client-gone";

const PORT_HEX: &str = "1B58";

/// The complete lines the server received, which must be 1, 2, 3, ... without a gap, a
/// repeat or a restart.
fn received(b: &Bundle) -> Result<u64> {
    let text = std::fs::read_to_string(b.rootfs().join("tmp/recv")).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    for (want, line) in (1u64..).zip(complete.lines()) {
        ensure!(line == want.to_string(), "line {want} received is {line:?}: the sequence broke");
    }
    Ok(complete.lines().count() as u64)
}

fn wait_received_above(b: &Bundle, above: u64, timeout: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let n = received(b)?;
        if n > above {
            return Ok(n);
        }
        if start.elapsed() > timeout {
            bail!("the server received {n} lines, not more than {above}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every TCP socket on the port in the network namespace of `pid`, as "local remote state"
/// from /proc/net/tcp{,6} (inodes left out: a restored socket has a new one).
fn sockets_on_port(pid: i32) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))?;
        for fields in text.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()) {
            let [_, local, remote, state, ..] = fields[..] else { continue };
            if [local, remote].iter().any(|a| a.ends_with(&format!(":{PORT_HEX}"))) {
                found.push(format!("{table} {local} {remote} {state}"));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The container's iptables rules, where CRIU locks the network during a dump or restore.
fn netns_rules(t: &Test, pid: i32) -> Result<String> {
    let ns = format!("--net=/proc/{pid}/ns/net");
    let out = host(t, "nsenter", &[&ns, "iptables", "-S"])?;
    out.ok()?;
    Ok(out.stdout.clone())
}

fn tcp_pair_bundle(t: &Test) -> Result<Bundle> {
    let b = t.bundle(&["sh", "-c", TCP_PAIR])?;
    b.edit(|cfg| {
        writable_root(cfg);
        for set in ["bounding", "effective", "permitted"] {
            cfg["process"]["capabilities"][set].as_array_mut().expect("caps").push(json!("CAP_NET_ADMIN"));
        }
    })?;
    let namespaces = b.config()?["linux"]["namespaces"].to_string();
    ensure!(namespaces.contains("\"network\""), "the default config has a network namespace: {namespaces}");
    Ok(b)
}

#[test]
fn an_established_tcp_connection_goes_on_after_restore() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_tcp");
    let b = tcp_pair_bundle(&t)?;
    let (old, new) = (t.id("old"), t.id("new"));
    let c = t.start_new(&old, &b)?;
    wait_received_above(&b, 5, Duration::from_secs(5))?;
    let pid = c.pid()?;
    let connection = sockets_on_port(pid)?;
    ensure!(
        connection.len() == 2 && connection.iter().all(|s| s.ends_with(" 01")),
        "both ends ESTABLISHED, no listener left: {connection:?}"
    );

    // Without --tcp-established criu refuses, in one line that names the connection and
    // the flag; the container runs on, its network unlocked.
    let dir = images(&t, "img");
    let d = dir.to_string_lossy();
    let out = t.cmd(&["checkpoint", "--image-path", &d, &old])?;
    out.failed()?;
    ensure!(out.stderr.trim().lines().count() == 1, "one line: {out}");
    ensure!(out.error_line().contains("Connected TCP socket, consider using --tcp-established"), "{out}");
    ensure!(c.status()? == "running", "a refused checkpoint leaves it running");
    wait_received_above(&b, received(&b)?, Duration::from_secs(5))?;
    ensure!(!netns_rules(&t, pid)?.contains("CRIU"), "network lock left after a refused dump");

    let out = t.cmd(&["checkpoint", "--tcp-established", "--image-path", &d, &old])?;
    if !out.success() && out.error_line().contains("Can't get 1:16 opt") {
        // SO_PASSCRED on an inet socket fails on Linux >= 6.16; CRIU < 4.2 treats that as fatal.
        drop(c);
        t.assert_no_leftovers();
        return skip("this criu cannot dump inet sockets on this kernel (CRIU >= 4.2 can)");
    }
    out.ok().context("checkpoint --tcp-established")?;
    std::mem::forget(c);
    let at_dump = received(&b)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(received(&b)? == at_dump, "nothing runs between dump and restore");

    let c = restore_with(&t, &new, &b, &dir, &["--tcp-established"])?;
    let pid = c.pid()?;
    // Ten more lines, each one after the last: the client's counter went on from its memory
    // over the connection the server accepted before the dump (it accepts no other).
    let after = wait_received_above(&b, at_dump + 10, Duration::from_secs(10))?;
    ensure!(after > at_dump + 10, "{after} lines after restore");
    ensure!(!b.rootfs().join("tmp/client-gone").exists(), "the client's connection ended");
    ensure!(sockets_on_port(pid)? == connection, "the same connection: {:?}", sockets_on_port(pid)?);
    ensure!(!netns_rules(&t, pid)?.contains("CRIU"), "network lock left after restore");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// A container that joined a network namespace by path (as under CNI or in a pod) is
/// restored into that same namespace, with its address in it, not into a new empty one.
#[test]
fn a_joined_network_namespace_is_joined_again_at_restore() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_joined_net");
    let ns = NetNs::new()?;
    let nsenter = |args: &[&str]| -> Result<()> {
        let net = format!("--net={}", ns.path());
        let out = std::process::Command::new("nsenter").arg(&net).arg("--").args(args).output()?;
        ensure!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    nsenter(&["ip", "link", "set", "lo", "up"])?;
    nsenter(&["ip", "addr", "add", "10.215.0.7/32", "dev", "lo"])?;
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(ns.path())?);
    let path = ns.path();
    let b = counter_bundle(&t, |cfg| {
        for n in cfg["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(path);
            }
        }
    })?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    wait_count_above(&b, 3, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &id, &dir, &[])?;
    std::mem::forget(c);
    let c = restore(&t, &id, &b, &dir)?;
    let at = count(&b)?;
    wait_count_above(&b, at + 3, Duration::from_secs(5))?;
    let pid = c.pid()?;
    let inside = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
    ensure!(inside.to_string_lossy() == format!("net:[{ino}]"), "restored into {inside:?}, not net:[{ino}]");
    let out = t.cmd(&["exec", &id, "ip", "-o", "addr", "show", "dev", "lo"])?;
    ensure!(out.ok()?.stdout.contains("10.215.0.7"), "the joined namespace's address: {out}");
    drop(c);
    drop(ns);
    t.assert_no_leftovers();
    Ok(())
}

/// In its own user namespace a container has the host's device nodes bound in (it cannot
/// make them), and its masked paths are binds of the host's /dev/null: CRIU finds no root
/// for those mounts, so they must go to it as external, as runc declares them.
#[test]
fn a_container_in_its_own_user_namespace_checkpoints_and_restores() -> Result<()> {
    if !have_criu()? {
        return Ok(());
    }
    let t = Test::new("cr_userns");
    let b = counter_bundle(&t, |cfg| {
        let ns = cfg["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(json!({"type": "user"}));
        let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        cfg["linux"]["uidMappings"] = map.clone();
        cfg["linux"]["gidMappings"] = map;
    })?;
    std::os::unix::fs::chown(b.rootfs().join("tmp"), Some(100000), Some(100000))?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    // Its stdout and stderr (this harness's files) go to the restore as files CRIU reopens
    // (through /proc/self/fd) as the container's root, with the mode they had at the dump:
    // files it may write, here and at the restore. (The shim's stdio are pipes.)
    for fd in [1, 2] {
        let file = std::fs::read_link(format!("/proc/{}/fd/{fd}", c.pid()?))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666))?;
    }
    wait_count_above(&b, 5, Duration::from_secs(5))?;
    let dir = images(&t, "img");
    checkpoint(&t, &id, &dir, &[])?;
    std::mem::forget(c);
    let at_dump = count(&b)?;
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "the images dir is owner-only: {mode:o}");
    let stdio = t.dir().join("restored.out");
    let file = std::fs::File::create(&stdio)?;
    std::fs::set_permissions(&stdio, std::fs::Permissions::from_mode(0o666))?;
    let mut cmd = command(warren_bin());
    cmd.arg("--root").arg(t.warren.root()).args(["restore", "--detach", "--bundle"]).arg(b.path());
    cmd.arg("--image-path").arg(&dir).arg(&id).stdout(file.try_clone()?).stderr(file);
    let status = cmd.status()?;
    ensure!(status.success(), "restore: {status}: {}", std::fs::read_to_string(&stdio)?);
    let c = t.warren.adopt(&id);
    let next = wait_count_above(&b, at_dump, Duration::from_secs(5))?;
    ensure!(next <= at_dump + 40, "the counter went on from {at_dump} (got {next}), not from 0");
    let out = c.exec(
        &[],
        &["sh", "-c", "cat /proc/self/uid_map; echo x > /dev/null && echo null-ok; cat /proc/timer_list | wc -c"],
    )?;
    out.ok()?;
    let words: Vec<&str> = out.stdout.split_whitespace().collect();
    ensure!(words == ["0", "100000", "65536", "null-ok", "0"], "in the restored container: {out}");
    let meta = std::fs::metadata(&dir)?;
    ensure!(meta.uid() == 0 && meta.permissions().mode() & 0o777 == 0o700, "the images dir's owner is put back");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
