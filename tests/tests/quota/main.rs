//! Quotas that hold under load (issue 3): each test puts a limit on a
//! container whose process tries to exceed it, and measures the effect
//! from the host through the cgroup's own counters (and, where it shows
//! there, inside the container).

mod bad_input;
mod io;

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// A started container running `sh -c script`, its config changed by `edit`.
fn start_sh(t: &Test, script: &str, edit: impl FnOnce(&mut Value)) -> Result<(Bundle, Container)> {
    let b = t.bundle(&["sh", "-c", script])?;
    b.edit(edit)?;
    let c = t.start_new(&t.id("c"), &b)?;
    Ok((b, c))
}

/// CPU time used by the container's cgroup so far, in nanoseconds
/// (v1 cpuacct.usage, v2 cpu.stat usage_usec).
fn cpu_usage_ns(pid: i32) -> Result<u64> {
    let path = knob_path(pid, "cpuacct", "cpuacct.usage", "cpu.stat")?;
    let text = read_knob(&path)?;
    if path.ends_with("cpu.stat") {
        return keyed(&text, "usage_usec").map(|us| us * 1000).context("no usage_usec in cpu.stat");
    }
    text.parse().with_context(|| format!("{}: {text:?}", path.display()))
}

/// How many CFS periods found the cgroup out of quota so far.
fn nr_throttled(pid: i32) -> Result<u64> {
    let text = read_knob(&knob_path(pid, "cpu", "cpu.stat", "cpu.stat")?)?;
    keyed(&text, "nr_throttled").context("no nr_throttled in cpu.stat")
}

/// CPUs the container used over `window` of wall time, and how many periods
/// it was throttled in meanwhile.
fn cpu_share(pid: i32, window: Duration) -> Result<(f64, u64)> {
    let (used0, throttled0, t0) = (cpu_usage_ns(pid)?, nr_throttled(pid)?, Instant::now());
    sleep(window);
    let (used1, throttled1, wall) = (cpu_usage_ns(pid)?, nr_throttled(pid)?, t0.elapsed());
    Ok(((used1 - used0) as f64 / wall.as_nanos() as f64, throttled1 - throttled0))
}

/// Two busy loops (the shell and a child) could use both of this host's
/// CPUs: the quota, not CPU availability, is what holds them.
const TWO_HOGS: &str = "while :; do :; done & while :; do :; done";

#[test]
fn cpu_quota_holds_a_hog_to_half_a_cpu() -> Result<()> {
    let t = Test::new("quota_cpu");
    // The highest weight makes sure that other work on this shared host
    // does not keep the hogs below their quota: it is the cap under test.
    let (_b, c) = start_sh(&t, TWO_HOGS, |cfg| {
        cfg["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000, "shares": 262144});
    })?;
    let pid = c.pid()?;
    sleep(Duration::from_millis(300));
    // Above the band the quota failed; below it, the host may still have
    // been too busy for the hogs to get their share: measured once more then.
    let mut measured = Vec::new();
    for _ in 0..2 {
        let (share, throttled) = cpu_share(pid, Duration::from_secs(3))?;
        measured.push(share);
        eprintln!("cpu quota 0.5: measured {share:.3} CPU, {throttled} periods throttled");
        ensure!(share <= 0.55, "0.5 CPU quota, measured {share:.3} CPU");
        if share >= 0.45 {
            // 3 s is 30 periods: most of them must have hit the quota.
            ensure!(throttled >= 20, "only {throttled} of 30 periods throttled at {share:.3} CPU");
            drop(c);
            t.assert_no_leftovers();
            return Ok(());
        }
    }
    bail!("0.5 CPU quota, measured {measured:.3?} CPU (below 0.45 twice: host too busy?)")
}

#[test]
fn memory_hog_is_oom_killed_inside() -> Result<()> {
    let t = Test::new("quota_oom");
    // dd's 64 MiB buffer is filled from /dev/zero: twice the limit.
    let script = "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd exit $?; exec sleep 100";
    let (_b, c) = start_sh(&t, script, |cfg| {
        cfg["linux"]["resources"]["memory"] = json!({"limit": 32 << 20});
    })?;
    let out = c.wait_stdout("dd exit", Duration::from_secs(15))?;
    ensure!(out.contains("dd exit 137"), "the hog did not die of SIGKILL: {out:?}");
    ensure!(c.status()? == "running", "the OOM killer took more than the hog");
    let pid = c.pid()?;
    let events = read_knob(&knob_path(pid, "memory", "memory.oom_control", "memory.events")?)?;
    let kills = keyed(&events, "oom_kill").context("no oom_kill counter")?;
    ensure!(kills >= 1, "oom_kill {kills}: {events}");
    let failcnt = match knob_path(pid, "memory", "memory.failcnt", "memory.events")? {
        p if p.ends_with("memory.failcnt") => read_knob(&p)?.parse()?,
        p => keyed(&read_knob(&p)?, "max").context("no max in memory.events")?,
    };
    ensure!(failcnt > 0, "the limit was never hit (failcnt {failcnt})");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

fn pids_current(pid: i32) -> Result<u64> {
    Ok(read_knob(&knob_path(pid, "pids", "pids.current", "pids.current")?)?.parse()?)
}

/// How often the kernel refused a fork for the pids limit.
fn pids_refused(pid: i32) -> Result<u64> {
    keyed(&read_knob(&knob_path(pid, "pids", "pids.events", "pids.events")?)?, "max").context("pids.events")
}

/// The host can still start processes.
fn host_can_fork() -> Result<()> {
    let status = std::process::Command::new("true").status().context("fork on the host")?;
    ensure!(status.success(), "true: {status}");
    Ok(())
}

/// Forking until the kernel refuses: EAGAIN inside, at exactly the limit.
#[test]
fn forking_stops_at_pids_limit() -> Result<()> {
    const LIMIT: u64 = 16;
    let t = Test::new("quota_pids");
    // The inner shell forks sleepers until a fork fails; the outer one (pid
    // 1) and the inner one count against the limit too.
    let script = "exec 2>&1; sh -c 'n=0; while sleep 1000 & do n=$((n+1)); echo $n >/tmp/n; done'; \
                  echo forked $(cat /tmp/n); sleep 1000 & wait";
    let (_b, c) = start_sh(&t, script, |cfg| {
        writable_root(cfg);
        cfg["linux"]["resources"]["pids"] = json!({"limit": LIMIT});
    })?;
    let out = c.wait_stdout("forked", Duration::from_secs(10))?;
    ensure!(out.contains("can't fork: Resource temporarily unavailable"), "no EAGAIN inside: {out:?}");
    ensure!(out.contains(&format!("forked {}", LIMIT - 2)), "stopped elsewhere than the limit: {out:?}");
    let pid = c.pid()?;
    // The last sleeper fills the last slot: the container sits at its limit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids_current(pid)? != LIMIT && Instant::now() < deadline {
        sleep(Duration::from_millis(20));
    }
    ensure!(pids_current(pid)? == LIMIT, "pids.current {} with a limit of {LIMIT}", pids_current(pid)?);
    ensure!(pids_refused(pid)? >= 1, "pids.events shows no refused fork");
    host_can_fork()?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// A real fork bomb: it never gets past the limit, the host goes on
/// forking, and delete stops it.
#[test]
fn fork_bomb_is_contained() -> Result<()> {
    const LIMIT: u64 = 32;
    let t = Test::new("quota_bomb");
    // pid 1 keeps a sleeper and waits, so that the container outlives the bomb.
    let script = "sleep 1000 & bomb() { bomb | bomb & }; bomb 2>/dev/null; wait";
    let (_b, c) = start_sh(&t, script, |cfg| {
        cfg["linux"]["resources"]["pids"] = json!({"limit": LIMIT});
    })?;
    let pid = c.pid()?;
    let (mut peak, start) = (0, Instant::now());
    while start.elapsed() < Duration::from_millis(1500) {
        peak = peak.max(pids_current(pid)?);
        sleep(Duration::from_millis(5));
    }
    ensure!(peak <= LIMIT, "pids.current reached {peak} with a limit of {LIMIT}");
    ensure!(pids_refused(pid)? >= 1, "the bomb never hit the limit (peak {peak})");
    host_can_fork()?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// The highest online CPU: pinning to it differs from the default on any
/// host with more than one.
fn last_online_cpu() -> Result<String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    let last = online.trim().rsplit([',', '-']).next().context("empty online CPU list")?;
    Ok(last.to_string())
}

#[test]
fn cpuset_pinning_shows_in_cpus_allowed_list() -> Result<()> {
    let t = Test::new("quota_cpuset");
    let cpu = last_online_cpu()?;
    let out = t.run_sh("cat /proc/self/status", |cfg| {
        cfg["linux"]["resources"]["cpu"] = json!({"cpus": cpu, "mems": "0"});
    })?;
    out.ok()?;
    ensure!(status_field(&out.stdout, "Cpus_allowed_list") == Some(cpu.as_str()), "{out}");
    ensure!(status_field(&out.stdout, "Mems_allowed_list") == Some("0"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}
