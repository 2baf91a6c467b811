//! Where a container's processes run and allocate: `linux.memoryPolicy`
//! (seen in /proc/PID/numa_maps, one policy per mapping) and
//! `process.execCPUAffinity` (seen in Cpus_allowed_list), for the
//! container's process and for exec'd ones. Written for a host with NUMA
//! node 0 and CPUs 0 and 1 (bad values are in bad_input.rs).

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// The policy column of every mapping in a numa_maps text.
fn policies(numa_maps: &str) -> Vec<&str> {
    numa_maps.lines().filter_map(|l| l.split_whitespace().nth(1)).collect()
}

/// Every mapping of `numa_maps` shows `want`, and there are some.
fn ensure_policy(numa_maps: &str, want: &str, what: &str) -> Result<()> {
    let p = policies(numa_maps);
    ensure!(!p.is_empty() && p.iter().all(|x| *x == want), "{what}: want {want} everywhere, got {p:?}");
    Ok(())
}

fn cpus_allowed(status: &str) -> Option<&str> {
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim)
}

fn online_cpus() -> Result<String> {
    Ok(std::fs::read_to_string("/sys/devices/system/cpu/online")?.trim().to_string())
}

#[test]
fn memory_policy_of_init_and_exec() -> Result<()> {
    let t = Test::new("mempolicy");
    let cases = [
        (json!({"mode": "MPOL_BIND", "nodes": "0"}), "bind:0"),
        (json!({"mode": "MPOL_INTERLEAVE", "nodes": "0"}), "interleave:0"),
        (json!({"mode": "MPOL_PREFERRED", "nodes": "0"}), "prefer:0"),
        (json!({"mode": "MPOL_LOCAL"}), "local"),
        (json!({"mode": "MPOL_DEFAULT"}), "default"),
        (json!({"mode": "MPOL_BIND", "nodes": "0", "flags": ["MPOL_F_STATIC_NODES"]}), "bind=static:0"),
    ];
    for (i, (policy, want)) in cases.into_iter().enumerate() {
        let b = t.bundle(&["sleep", "100"])?;
        b.edit(|c| c["linux"]["memoryPolicy"] = policy.clone())?;
        let c = t.start_new(&t.id(&format!("c{i}")), &b)?;
        // The container's own process (sleep, pid 1), read from inside.
        let init = c.exec(&[], &["cat", "/proc/1/numa_maps"])?;
        ensure_policy(&init.ok()?.stdout, want, &format!("init with {policy}"))?;
        // An exec'd process joins by setns: it must get the policy as well.
        let exec = c.exec(&[], &["cat", "/proc/self/numa_maps"])?;
        ensure_policy(&exec.ok()?.stdout, want, &format!("exec with {policy}"))?;
    }
    t.assert_no_leftovers();
    Ok(())
}

/// The spec: execCPUAffinity "is not applicable to the container's init process"; an exec
/// without `--process` copies the container's process, and with it its execCPUAffinity.
#[test]
fn exec_cpu_affinity_is_for_exec_not_for_the_init() -> Result<()> {
    let t = Test::new("affinity_init");
    let online = online_cpus()?;
    for (affinity, want) in [(json!({"initial": "0", "final": "1"}), "1"), (json!({"initial": "1"}), "1")] {
        let b = t.bundle(&["sleep", "100"])?;
        b.edit(|c| c["process"]["execCPUAffinity"] = affinity.clone())?;
        let id = t.id("c");
        let c = t.start_new(&id, &b)?;
        let pid = t.warren.state(&id)?["pid"].as_i64().context("pid")?;
        let init = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        ensure!(cpus_allowed(&init) == Some(online.as_str()), "{affinity}: the init got {init}");
        let out = c.exec(&[], &["grep", "Cpus_allowed_list", "/proc/self/status"])?;
        ensure!(cpus_allowed(&out.ok()?.stdout) == Some(want), "{affinity}: exec wants {want}: {out}");
        drop(c);
    }
    t.assert_no_leftovers();
    Ok(())
}

/// `exec --process FILE` with `execCPUAffinity`, as the containerd shim passes it.
fn exec_with_affinity(t: &Test, c: &Container, name: &str, affinity: Value) -> Result<Out> {
    let p = json!({"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["grep", "Cpus_allowed_list", "/proc/self/status"], "env": ["PATH=/bin:/usr/bin"],
        "execCPUAffinity": affinity});
    let path = t.dir().join(format!("{name}.json"));
    std::fs::write(&path, p.to_string())?;
    c.exec(&["--process", path.to_str().context("path")?], &[])
}

#[test]
fn exec_cpu_affinity_of_exec() -> Result<()> {
    let t = Test::new("affinity_exec");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    for (i, (affinity, want)) in
        [(json!({"initial": "0", "final": "1"}), "1"), (json!({"initial": "1"}), "1"), (json!({"final": "0"}), "0")]
            .into_iter()
            .enumerate()
    {
        let out = exec_with_affinity(&t, &c, &format!("p{i}"), affinity.clone())?;
        ensure!(cpus_allowed(&out.ok()?.stdout) == Some(want), "{affinity}: want {want}: {out}");
    }
    // A CPU this host does not have: the exec fails naming the field, the container lives on.
    let out = exec_with_affinity(&t, &c, "bad", json!({"final": "7"}))?;
    out.failed()?;
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1 && lines[0].contains("process.execCPUAffinity.final"), "{out}");
    ensure!(c.status()? == "running", "{}", c.status()?);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
