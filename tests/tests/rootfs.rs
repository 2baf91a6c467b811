//! The container's filesystem view: pivot into the bundle rootfs, readonly
//! root, mounts and their options, masked and readonly paths, devices, and
//! symlinks that try to point a mount outside the rootfs.

use anyhow::{ensure, Result};
use serde_json::Value;
use warren_tests::*;

fn add_mount(cfg: &mut Value, m: Value) {
    cfg["mounts"].as_array_mut().unwrap().push(m);
}

#[test]
fn root_is_the_bundle_rootfs() -> Result<()> {
    let t = Test::new("rootfs_view");
    let out = t.run_sh("cat /etc/hostname; ls /work 2>&1 || echo no-work", |_| {})?;
    ensure!(out.ok()?.stdout.starts_with("warren\n"), "{out}");
    ensure!(out.stdout.contains("no-work"), "host dirs visible: {out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn readonly_root() -> Result<()> {
    let t = Test::new("ro_root");
    let out = t.run_sh("touch /x 2>&1 && echo wrote-root; touch /dev/shm/y && echo wrote-shm", |c| {
        c["root"]["readonly"] = json!(true);
    })?;
    out.ok()?;
    ensure!(out.stdout.contains("Read-only file system"), "{out}");
    ensure!(!out.stdout.contains("wrote-root") && out.stdout.contains("wrote-shm"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bind_mount_readonly() -> Result<()> {
    let t = Test::new("bind_ro");
    let src = t.dir().join("shared");
    std::fs::create_dir(&src)?;
    std::fs::write(src.join("file"), "from-host\n")?;
    let out = t.run_sh("cat /data/file; touch /data/new 2>&1 || echo ro-ok", |c| {
        add_mount(
            c,
            json!({"destination": "/data", "type": "bind",
            "source": src, "options": ["rbind", "ro"]}),
        );
    })?;
    ensure!(out.ok()?.stdout.starts_with("from-host\n"), "{out}");
    ensure!(out.stdout.contains("ro-ok") && !src.join("new").exists(), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn bind_mount_readwrite() -> Result<()> {
    let t = Test::new("bind_rw");
    let src = t.dir().join("rw");
    std::fs::create_dir(&src)?;
    let out = t.run_sh("echo hi > /data/new", |c| {
        add_mount(
            c,
            json!({"destination": "/data", "type": "bind",
            "source": src, "options": ["rbind", "rw"]}),
        );
    })?;
    out.ok()?;
    ensure!(std::fs::read_to_string(src.join("new"))? == "hi\n");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn tmpfs_size_mode_and_flags() -> Result<()> {
    let t = Test::new("tmpfs");
    let script = "stat -c %a /scratch; grep ' /scratch ' /proc/self/mountinfo; \
        dd if=/dev/zero of=/scratch/big bs=1024 count=5000 2>/dev/null || echo full; rm -f /scratch/big; \
        cp /bin/busybox /scratch/bb && /scratch/bb true 2>/dev/null || echo noexec";
    let out = t.run_sh(script, |c| {
        add_mount(
            c,
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "noexec", "nodev", "size=4m", "mode=710"]}),
        );
    })?;
    out.ok()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines.first() == Some(&"710"), "mode: {out}");
    let mi = lines.get(1).copied().unwrap_or("");
    for opt in ["nosuid", "nodev", "noexec", "size=4096k"] {
        ensure!(mi.contains(opt), "mountinfo lacks {opt}: {out}");
    }
    ensure!(out.stdout.contains("full") && out.stdout.contains("noexec"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn masked_paths_are_empty() -> Result<()> {
    let t = Test::new("masked");
    // Both have content on the host (this kernel has no /proc/kcore).
    let out = t.run_sh("wc -c </proc/timer_list; ls -A /sys/firmware | wc -l", |c| {
        c["linux"]["maskedPaths"] = json!(["/proc/timer_list", "/sys/firmware"]);
    })?;
    let v: Vec<&str> = out.ok()?.stdout.split_whitespace().collect();
    ensure!(v == ["0", "0"], "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn default_config_masks_proc_keys() -> Result<()> {
    let t = Test::new("masked_default");
    let out = t.run_sh("wc -c </proc/keys", |_| {})?;
    ensure!(out.ok()?.stdout.trim() == "0", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn readonly_paths_cannot_be_written() -> Result<()> {
    let t = Test::new("ro_paths");
    // Writable without readonlyPaths: the container has its own UTS namespace.
    let out = t.run_sh("echo x 2>&1 >/proc/sys/kernel/hostname || echo denied", |c| {
        c["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
    })?;
    ensure!(out.ok()?.stdout.contains("denied"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn default_and_custom_devices() -> Result<()> {
    let t = Test::new("devices");
    let script = "echo x >/dev/null && echo null-ok; head -c 4 /dev/zero | wc -c; \
        for d in full random urandom tty; do test -c /dev/$d && echo $d; done; \
        stat -c '%F %t %T %a' /dev/wtnull; echo y >/dev/wtnull && echo custom-ok";
    let out = t.run_sh(script, |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/wtnull", "type": "c",
            "major": 1, "minor": 3, "fileMode": 438, "uid": 0, "gid": 0}]);
        if let Some(rules) = c["linux"]["resources"]["devices"].as_array_mut() {
            rules.push(json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}));
        }
    })?;
    out.ok()?;
    let want = "null-ok\n4\nfull\nrandom\nurandom\ntty\ncharacter special file 1 3 666\ncustom-ok\n";
    ensure!(out.stdout == want, "{out}");
    t.assert_no_leftovers();
    Ok(())
}

/// config-linux.md: a `p` entry of linux.devices is a FIFO; it is made as one, with its mode
/// and owner, and is no device to the cgroup's device rules (create used to fail on it).
#[test]
fn fifo_devices_are_made_as_fifos() -> Result<()> {
    let t = Test::new("devices_fifo");
    let script = "stat -c '%F %a %u:%g' /dev/wtfifo; (echo through-the-fifo >/dev/wtfifo &); cat /dev/wtfifo";
    let out = t.run_sh(script, |c| {
        c["linux"]["devices"] = json!([{"path": "/dev/wtfifo", "type": "p",
            "major": 0, "minor": 0, "fileMode": 432, "uid": 0, "gid": 8}]);
    })?;
    out.ok()?;
    ensure!(out.stdout == "fifo 660 0:8\nthrough-the-fifo\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

/// The recursive atime options of runtime-spec's mount list set the atime mode (mount_setattr
/// wants the whole atime field cleared with it; rnoatime and rstrictatime used to fail with
/// EINVAL), the later option winning.
#[test]
fn recursive_atime_options() -> Result<()> {
    let t = Test::new("ratime");
    let script = "awk '$5==\"/a\"||$5==\"/b\"||$5==\"/c\"||$5==\"/d\"{print $5, $6}' /proc/self/mountinfo";
    let out = t.run_sh(script, |c| {
        for (dest, opts) in [
            ("/a", json!(["rnoatime"])),
            ("/b", json!(["rstrictatime"])),
            ("/c", json!(["rnoatime", "rrelatime"])),
            ("/d", json!(["rro", "rnodiratime", "rnoatime"])),
        ] {
            add_mount(c, json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": opts}));
        }
    })?;
    out.ok()?;
    ensure!(out.stdout == "/a rw,noatime\n/b rw\n/c rw,relatime\n/d ro,noatime,nodiratime\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn dev_pts_shm_and_links() -> Result<()> {
    let t = Test::new("dev_fs");
    let script = "awk '$5==\"/dev/pts\"||$5==\"/dev/shm\"{print $5, $(NF-2)}' /proc/self/mountinfo; \
                for l in /dev/ptmx /dev/fd /dev/stdin; do readlink $l; done";
    let out = t.run_sh(script, |_| {})?;
    out.ok()?;
    let want = "/dev/pts devpts\n/dev/shm tmpfs\npts/ptmx\n/proc/self/fd\n/proc/self/fd/0\n";
    ensure!(out.stdout == want, "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn symlink_cannot_send_a_mount_outside() -> Result<()> {
    let t = Test::new("symlink_escape");
    let host_dir = t.dir().join("victim");
    std::fs::create_dir(&host_dir)?;
    let b = t.bundle(&["sh", "-c", "touch /evil/inside && echo wrote"])?;
    // rootfs/evil -> /tmp/wt-.../victim: resolved on the host it escapes.
    std::os::unix::fs::symlink(&host_dir, b.rootfs().join("evil"))?;
    b.edit(|c| add_mount(c, json!({"destination": "/evil", "type": "tmpfs", "source": "tmpfs"})))?;
    let out = t.run(&t.id("c"), &b)?;
    let entries = std::fs::read_dir(&host_dir)?.count();
    ensure!(entries == 0, "container wrote into the host dir: {out}");
    ensure!(mounts_under(&host_dir).is_empty(), "host dir got a mount");
    ensure!(out.ok()?.stdout.contains("wrote"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}
