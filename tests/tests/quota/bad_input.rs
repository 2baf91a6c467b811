//! Resource values the kernel would refuse, clamp or answer by killing: each
//! is refused before anything is written, at create and at update, with a
//! one-line error naming the OCI field, and nothing is half-applied.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// The error is one line and names `field`.
fn check_error(out: &Out, field: &str) -> Result<()> {
    out.failed()?;
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "want a one-line error: {out}");
    ensure!(lines[0].contains(field), "error does not name {field}: {out}");
    Ok(())
}

/// An id above any online one in a sysfs list file such as
/// /sys/devices/system/cpu/online ("0-1" gives "2").
fn past_online(list_file: &str) -> Result<String> {
    let online = std::fs::read_to_string(list_file)?;
    let last: u32 = online.trim().rsplit([',', '-']).next().context("empty list")?.parse()?;
    Ok((last + 1).to_string())
}

/// A block device number the host does not have (a loop minor far past
/// the ones in use).
fn unknown_block_device() -> (u32, u32) {
    let minor = (250..).find(|m| !Path::new(&format!("/sys/dev/block/7:{m}")).exists()).unwrap();
    (7, minor)
}

/// Resources each refused naming their field; every case also sets a valid
/// pids limit, which must not be written either.
fn cases() -> Result<Vec<(String, Value)>> {
    let (major, minor) = unknown_block_device();
    let dev = json!([{"major": major, "minor": minor, "rate": 1048576}]);
    let mut cases: Vec<(String, Value)> = vec![
        ("linux.resources.cpu.quota".into(), json!({"cpu": {"quota": 999, "period": 100000}})),
        ("linux.resources.cpu.period".into(), json!({"cpu": {"quota": 50000, "period": 999}})),
        ("linux.resources.cpu.period".into(), json!({"cpu": {"quota": 50000, "period": 1000001}})),
        ("linux.resources.cpu.cpus".into(), json!({"cpu": {"cpus": past_online("/sys/devices/system/cpu/online")?}})),
        ("linux.resources.cpu.mems".into(), json!({"cpu": {"mems": past_online("/sys/devices/system/node/online")?}})),
        (
            "linux.resources.blockIO.weightDevice".into(),
            json!({"blockIO": {"weightDevice": [
            {"major": major, "minor": minor, "weight": 500}]}}),
        ),
    ];
    for list in ["throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice", "throttleWriteIOPSDevice"]
    {
        cases.push((format!("linux.resources.blockIO.{list}"), json!({"blockIO": {list: dev.clone()}})));
    }
    for (_, resources) in &mut cases {
        resources["pids"] = json!({"limit": 7});
    }
    Ok(cases)
}

#[test]
fn bad_resources_are_refused_at_create() -> Result<()> {
    for (i, (field, resources)) in cases()?.into_iter().enumerate() {
        let t = Test::new(&format!("quota_bad_create{i}"));
        let b = t.bundle(&["sleep", "100"])?;
        b.edit(|cfg| {
            for (key, value) in resources.as_object().unwrap() {
                cfg["linux"]["resources"][key] = value.clone();
            }
        })?;
        let out = t.warren.try_create(&t.id("c"), &b, &[])?;
        check_error(&out, &field).with_context(|| format!("create with {resources}"))?;
        t.assert_no_leftovers();
    }
    Ok(())
}

fn pids_max(c: &Container) -> Result<String> {
    read_knob(&knob_path(c.pid()?, "pids", "pids.max", "pids.max")?)
}

/// `warren update -r FILE` with `resources` as FILE.
fn update(t: &Test, c: &Container, resources: &Value) -> Result<Out> {
    let file = t.dir().join("resources.json");
    std::fs::write(&file, resources.to_string())?;
    t.cmd(&["update", "-r", &file.to_string_lossy(), &c.id])
}

#[test]
fn bad_resources_are_refused_at_update() -> Result<()> {
    let t = Test::new("quota_bad_update");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let quota = knob_path(c.pid()?, "cpu", "cpu.cfs_quota_us", "cpu.max")?;
    let before = (pids_max(&c)?, read_knob(&quota)?);
    for (field, resources) in cases()? {
        let out = update(&t, &c, &resources)?;
        check_error(&out, &field).with_context(|| format!("update with {resources}"))?;
        ensure!((pids_max(&c)?, read_knob(&quota)?) == before, "{resources} was half-applied");
    }
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// A limit below what the container holds and cannot give back (16 MiB in
/// tmpfs, no swap) would make v1 fail the write and v2 OOM-kill the
/// container: refused beforehand, and the container goes on as it was.
#[test]
fn memory_limit_below_usage_is_refused_at_update() -> Result<()> {
    let t = Test::new("quota_bad_memory");
    let script = "dd if=/dev/zero of=/dev/shm/hold bs=1M count=16 2>/dev/null && echo held; exec sleep 100";
    let b = t.bundle(&["sh", "-c", script])?;
    b.edit(|cfg| cfg["linux"]["resources"]["memory"] = json!({"limit": 256 << 20}))?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.wait_stdout("held", Duration::from_secs(10))?;
    let limit = knob_path(c.pid()?, "memory", "memory.limit_in_bytes", "memory.max")?;
    let out = update(&t, &c, &json!({"memory": {"limit": 8 << 20}, "pids": {"limit": 7}}))?;
    check_error(&out, "linux.resources.memory.limit")?;
    ensure!(out.stderr.contains("below"), "{out}");
    ensure!(read_knob(&limit)? == (256u64 << 20).to_string(), "memory limit changed");
    ensure!(pids_max(&c)? == "max", "pids limit half-applied");
    sleep(Duration::from_millis(100));
    ensure!(c.status()? == "running", "the container did not survive");
    // Above what it holds, the same update goes through.
    update(&t, &c, &json!({"memory": {"limit": 64 << 20}}))?.ok()?;
    ensure!(read_knob(&limit)? == (64u64 << 20).to_string(), "memory limit not updated");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
