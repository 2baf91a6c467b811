//! `warren update`: new resources reach the container's cgroup files, and a
//! refused or failing update leaves them as they were.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// The container's memory limit, pids limit and cpuset, from v1 or cgroup2 files alike.
fn memory_limit(c: &Container) -> Result<String> {
    read_knob(&knob_path(c.pid()?, "memory", "memory.limit_in_bytes", "memory.max")?)
}

fn pids_max(c: &Container) -> Result<String> {
    read_knob(&knob_path(c.pid()?, "pids", "pids.max", "pids.max")?)
}

fn cpuset_cpus(c: &Container) -> Result<String> {
    read_knob(&knob_path(c.pid()?, "cpuset", "cpuset.cpus", "cpuset.cpus")?)
}

fn sleeper(t: &Test) -> Result<(Bundle, Container)> {
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    Ok((b, c))
}

/// The resources stored in the container's state (what later reads see).
fn stored_resources(t: &Test, c: &Container) -> Result<Value> {
    let text = std::fs::read_to_string(t.warren.root().join(&c.id).join("state.json"))?;
    let state: Value = serde_json::from_str(&text)?;
    Ok(state["config"]["linux"]["resources"].clone())
}

#[test]
fn update_flags_reach_the_cgroup() -> Result<()> {
    let t = Test::new("upd_flags");
    let (_b, c) = sleeper(&t)?;
    let args = ["--memory", "64m", "--pids-limit", "42", "--cpu-quota", "50000", "--cpu-period", "100000"];
    t.cmd(&[&["update"], &args[..], &[&c.id]].concat())?.ok()?;
    ensure!(memory_limit(&c)? == "67108864");
    ensure!(pids_max(&c)? == "42");
    let bandwidth = cpu_bandwidth(c.pid()?)?;
    ensure!(bandwidth == ("50000".into(), "100000".into()), "cpu bandwidth {bandwidth:?}");
    let stored = stored_resources(&t, &c)?;
    ensure!(stored["memory"]["limit"] == json!(67108864), "stored {stored}");
    ensure!(stored["pids"]["limit"] == json!(42), "stored {stored}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn update_from_a_resources_file_with_flags_over_it() -> Result<()> {
    let t = Test::new("upd_file");
    let (_b, c) = sleeper(&t)?;
    let file = t.dir().join("resources.json");
    let r = json!({"memory": {"limit": 33554432}, "pids": {"limit": 7}, "cpu": {"shares": 512}});
    std::fs::write(&file, r.to_string())?;
    // --cpu-share is runc's spelling; the flag wins over the file's pids limit.
    let f = file.to_string_lossy();
    t.cmd(&["update", "-r", &f, "--pids-limit", "9", "--cpu-share", "512", &c.id])?.ok()?;
    ensure!(memory_limit(&c)? == "33554432");
    ensure!(pids_max(&c)? == "9");
    let weight = cpu_weight(c.pid()?)?;
    ensure!(matches!((weight.0, weight.1.as_str()), ("cpu.shares", "512") | ("cpu.weight", "20")), "{weight:?}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn update_reads_the_resources_from_stdin() -> Result<()> {
    let t = Test::new("upd_stdin");
    let (_b, c) = sleeper(&t)?;
    let file = t.dir().join("resources.json");
    std::fs::write(&file, json!({"pids": {"limit": 11}}).to_string())?;
    let mut cmd = command(warren_bin());
    cmd.arg("--root").arg(t.warren.root()).args(["update", "-r", "-", &c.id]);
    cmd.stdin(std::fs::File::open(&file)?);
    run_with_deadline(cmd, &t.dir().join("stdin-update"), DEADLINE)?.ok()?;
    ensure!(pids_max(&c)? == "11");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn refused_value_writes_nothing() -> Result<()> {
    let t = Test::new("upd_refused");
    let (_b, c) = sleeper(&t)?;
    let (pids, bandwidth) = (pids_max(&c)?, cpu_bandwidth(c.pid()?)?);
    let out = t.cmd(&["update", "--pids-limit", "5", "--cpu-quota", "500", &c.id])?;
    ensure!(!out.success(), "accepted: {out}");
    let err = out.stderr.trim();
    ensure!(err.lines().count() == 1 && err.contains("linux.resources.cpu.quota"), "error: {out}");
    ensure!(pids_max(&c)? == pids);
    ensure!(cpu_bandwidth(c.pid()?)? == bandwidth);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// cpuset.cpus and the memory limit are written before the cpu controller's
/// files; a real-time runtime above what the parent cgroup has is refused
/// by the kernel (EINVAL) only at write time. Both written files must come
/// back. (A memory limit below what the container holds no longer serves
/// here: it is refused before anything is written.) On cgroup2 the field is
/// refused up front instead.
#[test]
fn failing_write_rolls_back_earlier_ones() -> Result<()> {
    let t = Test::new("upd_rollback");
    let (_b, c) = sleeper(&t)?;
    let (cpus, limit) = (cpuset_cpus(&c)?, memory_limit(&c)?);
    ensure!(cpus != "0", "the container already runs on cpu 0 only");
    let cpu_dir = cgroup_dir(c.pid()?, "cpu")?;
    // cgroup2 has no real-time bandwidth: there the field is refused before
    // anything is written, which must leave the files as they were all the same.
    let v2 = is_cgroup2(&cpu_dir);
    let runtime = if v2 {
        1000
    } else {
        let parent_rt = std::fs::read_to_string(cpu_dir.parent().unwrap().join("cpu.rt_runtime_us"))
            .context("this test needs a kernel with RT_GROUP_SCHED")?;
        parent_rt.trim().parse::<i64>()? + 1000
    };
    let r = json!({"cpu": {"cpus": "0", "realtimeRuntime": runtime}, "memory": {"limit": 67108864}});
    let file = t.dir().join("resources.json");
    std::fs::write(&file, r.to_string())?;
    let out = t.cmd(&["update", "-r", &file.to_string_lossy(), &c.id])?;
    ensure!(!out.success(), "accepted: {out}");
    ensure!(out.stderr.contains("linux.resources.cpu.realtimeRuntime"), "{out}");
    ensure!(v2 || out.stderr.contains("rolled back"), "{out}");
    ensure!(cpuset_cpus(&c)? == cpus, "cpuset.cpus not restored");
    ensure!(memory_limit(&c)? == limit, "memory limit not restored");
    ensure!(stored_resources(&t, &c)?["memory"]["limit"] != json!(67108864), "failed update stored");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// The same through -r: unified files are written last, and one this kernel
/// lacks fails after the memory limit was written.
#[test]
fn failing_unified_write_rolls_back_the_limit() -> Result<()> {
    let t = Test::new("upd_rollback_unified");
    let (_b, c) = sleeper(&t)?;
    let limit = memory_limit(&c)?;
    let r = json!({"memory": {"limit": 67108864}, "unified": {"hugetlb.3MB.max": "0"}});
    let file = t.dir().join("resources.json");
    std::fs::write(&file, r.to_string())?;
    let out = t.cmd(&["update", "-r", &file.to_string_lossy(), &c.id])?;
    ensure!(!out.success(), "accepted: {out}");
    ensure!(out.stderr.contains("linux.resources.unified"), "{out}");
    ensure!(memory_limit(&c)? == limit, "memory limit not restored");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn stopped_or_missing_container_is_refused() -> Result<()> {
    let t = Test::new("upd_stopped");
    let (_b, c) = sleeper(&t)?;
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    let out = t.cmd(&["update", "--pids-limit", "5", &c.id])?;
    ensure!(!out.success() && out.stderr.contains("stopped"), "{out}");
    let out = t.cmd(&["update", "--pids-limit", "5", &t.id("none")])?;
    ensure!(!out.success(), "{out}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
