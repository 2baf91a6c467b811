//! Cgroups: resources are written where the container's processes are, the
//! path follows cgroupsPath, and everything is removed on delete.

use anyhow::{ensure, Result};
use serde_json::Value;
use warren_tests::*;

/// Reads the first existing of `files` in the container's `controller` dir;
/// v1 and v2 name the same knob differently.
fn knob(pid: i32, controller: &str, files: &[&str]) -> Result<String> {
    for ctrl in [controller, ""] {
        let Ok(dir) = cgroup_dir(pid, ctrl) else {
            continue;
        };
        for f in files {
            if let Ok(v) = std::fs::read_to_string(dir.join(f)) {
                return Ok(v.trim().to_string());
            }
        }
    }
    anyhow::bail!("none of {files:?} for {controller}")
}

fn with_resources(t: &Test, res: Value) -> Result<(Bundle, Container)> {
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(|c| {
        for (k, v) in res.as_object().unwrap() {
            c["linux"]["resources"][k] = v.clone();
        }
    })?;
    let c = t.start_new(&t.id("c"), &b)?;
    Ok((b, c))
}

#[test]
fn container_gets_its_own_cgroup() -> Result<()> {
    let t = Test::new("cg_own");
    let b = t.bundle(&["sleep", "100"])?;
    let id = t.id("c");
    let c = t.create(&id, &b)?;
    // Already in the created state: the init is placed before the user process.
    let dir = cgroup_dir(c.pid()?, "pids")?;
    ensure!(dir.ends_with(&id), "pids cgroup {}", dir.display());
    ensure!(!cgroup_dirs(&id).is_empty(), "no cgroup dir for {id}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn memory_limit() -> Result<()> {
    let t = Test::new("cg_memory");
    let (_b, c) = with_resources(&t, json!({"memory": {"limit": 67108864}}))?;
    let v = knob(c.pid()?, "memory", &["memory.limit_in_bytes", "memory.max"])?;
    ensure!(v == "67108864", "memory limit {v}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn pids_limit() -> Result<()> {
    let t = Test::new("cg_pids");
    let (_b, c) = with_resources(&t, json!({"pids": {"limit": 20}}))?;
    let v = knob(c.pid()?, "pids", &["pids.max"])?;
    ensure!(v == "20", "pids.max {v}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn cpu_shares() -> Result<()> {
    let t = Test::new("cg_cpu");
    let (_b, c) = with_resources(&t, json!({"cpu": {"shares": 512}}))?;
    // cgroup2 has a weight instead, derived from the shares as runc does.
    let weight = cpu_weight(c.pid()?)?;
    ensure!(matches!((weight.0, weight.1.as_str()), ("cpu.shares", "512") | ("cpu.weight", "20")), "{weight:?}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn pids_limit_is_enforced() -> Result<()> {
    let t = Test::new("cg_pids_enf");
    let out = t.run_sh("for i in 1 2 3 4 5 6 7 8; do sleep 5 & done 2>&1; echo done", |c| {
        c["linux"]["resources"]["pids"] = json!({"limit": 4});
    })?;
    let all = format!("{}{}", out.stdout, out.stderr);
    ensure!(all.contains("fork") || all.contains("Resource temporarily"), "no fork failure: {out}");
    t.assert_no_leftovers();
    Ok(())
}

/// A second container whose cgroupsPath names a cgroup that already holds the first's
/// processes is refused before it makes anything, and the first goes on untouched.
#[test]
fn a_cgroup_with_processes_in_it_is_refused() -> Result<()> {
    let t = Test::new("cg_taken");
    let (first, second) = (t.id("a"), t.id("b"));
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/{first}")))?;
    let c = t.start_new(&first, &b)?;
    let out = t.cmd(&["create", "--bundle", &b.path().to_string_lossy(), &second])?;
    let line = out.failed()?.error_line().to_string();
    ensure!(line.contains("already holds processes"), "{line}");
    ensure!(c.status()? == "running", "the first container after the refusal");
    ensure!(t.cmd(&["state", &second])?.failed().is_ok(), "state of the refused one");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn absolute_cgroups_path() -> Result<()> {
    let t = Test::new("cg_path");
    let id = t.id("c");
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(|c| c["linux"]["cgroupsPath"] = json!(format!("/{id}")))?;
    let c = t.start_new(&id, &b)?;
    let dir = cgroup_dir(c.pid()?, "pids")?;
    ensure!(dir == hierarchy_root("pids")?.join(&id), "pids cgroup {}", dir.display());
    drop(c);
    ensure!(!dir.exists(), "{} not removed", dir.display());
    t.assert_no_leftovers();
    Ok(())
}
