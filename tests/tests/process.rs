//! The container process: args, env, cwd, user, umask, capabilities,
//! no_new_privs, rlimits, oom_score_adj, sysctl, seccomp; and the verbs that
//! act on running processes: exec, pause/resume, kill --all.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn args_env_and_cwd() -> Result<()> {
    let t = Test::new("args_env_cwd");
    let out = t.run_sh("echo \"$FOO\"; pwd; echo \"$PATH\"", |c| {
        c["process"]["env"].as_array_mut().unwrap().push(json!("FOO=bar baz"));
        c["process"]["cwd"] = json!("/tmp");
    })?;
    let lines: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(lines[..2] == ["bar baz", "/tmp"], "{out}");
    ensure!(lines.get(2).is_some_and(|p| p.contains("/bin")), "PATH: {out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn cwd_is_created_if_missing() -> Result<()> {
    let t = Test::new("cwd_create");
    let out = t.run_sh("pwd", |c| c["process"]["cwd"] = json!("/work/dir"))?;
    ensure!(out.ok()?.stdout == "/work/dir\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn user_uid_gid_and_additional_gids() -> Result<()> {
    let t = Test::new("user_ids");
    let out = t.run_sh("grep -E '^(Uid|Gid|Groups):' /proc/self/status", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
    })?;
    let s = &out.ok()?.stdout;
    ensure!(status_field(s, "Uid") == Some("1000\t1000\t1000\t1000"), "{out}");
    ensure!(status_field(s, "Gid") == Some("1001\t1001\t1001\t1001"), "{out}");
    ensure!(status_field(s, "Groups") == Some("10 20"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn umask() -> Result<()> {
    let t = Test::new("umask");
    let out = t.run_sh("umask; touch /tmp/f; stat -c %a /tmp/f", |c| {
        writable_root(c);
        c["process"]["user"]["umask"] = json!(0o027);
    })?;
    ensure!(out.ok()?.stdout == "0027\n640\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

fn caps_of(status: &str) -> Result<[u64; 5]> {
    let mut v = [0; 5];
    for (i, f) in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].iter().enumerate() {
        let hex = status_field(status, f).with_context(|| format!("no {f}"))?;
        v[i] = u64::from_str_radix(hex, 16)?;
    }
    Ok(v)
}

#[test]
fn capabilities_match_config() -> Result<()> {
    let t = Test::new("caps");
    let set = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW"]);
    let bnd = json!(["CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SYS_ADMIN"]);
    let out = t.run_sh("grep ^Cap /proc/self/status", |c| {
        c["process"]["capabilities"] = json!({"bounding": bnd, "effective": set,
            "permitted": set, "inheritable": [], "ambient": []});
    })?;
    let got = caps_of(&out.ok()?.stdout)?;
    let want = [0, cap_mask(&set), cap_mask(&set), cap_mask(&bnd), 0];
    ensure!(got == want, "got {got:x?} want {want:x?}\n{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn default_capabilities_match_default_config() -> Result<()> {
    let t = Test::new("caps_default");
    let b = t.bundle(&["grep", "^Cap", "/proc/self/status"])?;
    let caps = b.config()?["process"]["capabilities"].clone();
    let out = t.run(&t.id("c"), &b)?;
    let got = caps_of(&out.ok()?.stdout)?;
    let mask = |k: &str| caps.get(k).map(cap_mask).unwrap_or(0);
    // An ambient cap is raised only if it is permitted and inheritable too.
    let amb = mask("ambient") & mask("inheritable") & mask("permitted");
    let want = [mask("inheritable"), mask("permitted"), mask("effective"), mask("bounding"), amb];
    ensure!(got == want, "got {got:x?} want {want:x?}\n{out}");
    ensure!(got[2] & (1 << 21) == 0, "CAP_SYS_ADMIN by default");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn ambient_capabilities_for_non_root() -> Result<()> {
    let t = Test::new("caps_ambient");
    let set = json!(["CAP_NET_BIND_SERVICE"]);
    let out = t.run_sh("grep ^Cap /proc/self/status", |c| {
        c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
        c["process"]["capabilities"] = json!({"bounding": set, "effective": set,
            "permitted": set, "inheritable": set, "ambient": set});
    })?;
    let got = caps_of(&out.ok()?.stdout)?;
    let m = cap_mask(&set);
    ensure!(got == [m, m, m, m, m], "got {got:x?}\n{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn no_new_privileges() -> Result<()> {
    let t = Test::new("nnp");
    for (flag, want) in [(true, "1"), (false, "0")] {
        let out = t.run_sh("grep NoNewPrivs /proc/self/status", |c| {
            c["process"]["noNewPrivileges"] = json!(flag);
        })?;
        ensure!(status_field(&out.ok()?.stdout, "NoNewPrivs") == Some(want), "{flag}: {out}");
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn rlimits() -> Result<()> {
    let t = Test::new("rlimits");
    // Within the host's hard limit: we lack CAP_SYS_RESOURCE to go above it.
    let out = t.run_sh("grep 'Max open files' /proc/self/limits", |c| {
        c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}]);
    })?;
    let fields: Vec<&str> = out.ok()?.stdout.split_whitespace().collect();
    ensure!(fields[3..5] == ["1024", "2048"], "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn oom_score_adj() -> Result<()> {
    let t = Test::new("oom_adj");
    let out = t.run_sh("cat /proc/self/oom_score_adj", |c| c["process"]["oomScoreAdj"] = json!(500))?;
    ensure!(out.ok()?.stdout.trim() == "500", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn sysctl_in_container_net_namespace() -> Result<()> {
    let t = Test::new("sysctl");
    let before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    let out = t.run_sh("cat /proc/sys/net/ipv4/ip_forward", |c| {
        let want = if before.trim() == "1" { "0" } else { "1" };
        c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": want});
    })?;
    out.ok()?;
    ensure!(out.stdout.trim() != before.trim(), "sysctl not applied: {out}");
    ensure!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")? == before, "host changed");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn seccomp_errno_rule() -> Result<()> {
    let t = Test::new("seccomp");
    let out = t.run_sh("mkdir /tmp/x; echo still-running; grep Seccomp: /proc/self/status", |c| {
        writable_root(c);
        c["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": [seccomp_arch()],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    })?;
    out.ok()?;
    ensure!(out.stderr.contains("Operation not permitted"), "{out}");
    ensure!(out.stdout.contains("still-running"), "{out}");
    ensure!(status_field(&out.stdout, "Seccomp") == Some("2"), "not filtered: {out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn exec_env_cwd_user_and_exit_code() -> Result<()> {
    let t = Test::new("exec");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let out = c.exec(
        &["--env", "FOO=bar", "--cwd", "/tmp", "--user", "1000:1000"],
        &["sh", "-c", "echo $FOO; pwd; id -u; id -g; echo $$; exit 7"],
    )?;
    ensure!(out.code() == Some(7), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure!(lines[..4] == ["bar", "/tmp", "1000", "1000"], "{out}");
    // In the container's pid namespace, with a pid other than init's.
    let pid: i32 = lines.get(4).context("pid")?.parse()?;
    ensure!(pid > 1 && pid < 100, "exec'd pid {pid}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn exec_process_json_detached() -> Result<()> {
    // How the containerd shim and podman exec: --process FILE --detach.
    let t = Test::new("exec_process");
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(writable_root)?;
    let c = t.start_new(&t.id("c"), &b)?;
    let proc_json = t.dir().join("process.json");
    let p = json!({"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["sh", "-c", "echo from-exec > /tmp/mark"], "env": ["PATH=/bin:/usr/bin"]});
    std::fs::write(&proc_json, p.to_string())?;
    let pidfile = t.dir().join("exec.pid");
    c.exec(&["--process", proc_json.to_str().unwrap(), "--detach", "--pid-file", pidfile.to_str().unwrap()], &[])?
        .ok()?;
    let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
    ensure!(pid > 0);
    let mut got = String::new();
    for _ in 0..100 {
        got = c.exec(&[], &["cat", "/tmp/mark"])?.stdout;
        if !got.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ensure!(got == "from-exec\n", "{got:?}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn exec_into_stopped_container_fails() -> Result<()> {
    let t = Test::new("exec_stopped");
    let b = t.bundle(&["true"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.wait_status("stopped", 5 * SECOND)?;
    c.exec(&[], &["true"])?.failed()?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

fn line_count(s: &str) -> usize {
    s.lines().count()
}

#[test]
fn pause_and_resume() -> Result<()> {
    let t = Test::new("pause");
    let b = t.bundle(&["sh", "-c", "while :; do echo tick; sleep 0.05; done"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.wait_stdout("tick", 5 * SECOND)?;
    t.cmd(&["pause", &c.id])?.ok()?;
    ensure!(c.status()? == "paused", "status after pause");
    std::thread::sleep(Duration::from_millis(100));
    let frozen = line_count(&c.stdout());
    std::thread::sleep(Duration::from_millis(400));
    ensure!(line_count(&c.stdout()) == frozen, "output went on while paused");
    t.cmd(&["resume", &c.id])?.ok()?;
    ensure!(c.status()? == "running", "status after resume");
    std::thread::sleep(Duration::from_millis(400));
    ensure!(line_count(&c.stdout()) > frozen, "no output after resume");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn kill_all_reaches_every_process() -> Result<()> {
    let t = Test::new("kill_all");
    // No pid namespace: killing init alone would not take the others along.
    let b = t.bundle(&["sh", "-c", "sleep 100 & sleep 100 & wait"])?;
    b.edit(|c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid");
    })?;
    let c = t.start_new(&t.id("c"), &b)?;
    std::thread::sleep(Duration::from_millis(200));
    let ps: Value = serde_json::from_str(&t.cmd(&["ps", "--format", "json", &c.id])?.ok()?.stdout)?;
    let pids: Vec<i64> = ps.as_array().context("ps array")?.iter().filter_map(Value::as_i64).collect();
    ensure!(pids.len() == 3, "ps: {ps}");
    t.cmd(&["kill", "--all", &c.id, "KILL"])?.ok()?;
    c.wait_status("stopped", 5 * SECOND)?;
    std::thread::sleep(Duration::from_millis(100));
    for pid in pids {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        ensure!(status_field(&st, "State").is_none_or(|s| s.starts_with('Z')), "pid {pid} alive");
    }
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}
