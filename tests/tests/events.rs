//! `warren events`: runc's JSON lines with the container's real counters, OOM kills reported
//! as they happen, and a watch that ends with the container.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use warren_tests::*;

const MIB: u64 = 1 << 20;

fn with_resources(b: &Bundle, resources: Value) -> Result<()> {
    b.edit(|cfg| cfg["linux"]["resources"] = resources)
}

fn read_u64(path: std::path::PathBuf) -> Result<u64> {
    Ok(std::fs::read_to_string(&path).with_context(|| format!("{path:?}"))?.trim().parse()?)
}

#[test]
fn stats_carry_the_limits_and_the_live_counters() -> Result<()> {
    let t = Test::new("ev_stats");
    let b = t.bundle(&["sh", "-c", "while :; do :; done"])?;
    let resources = json!({
        "memory": {"limit": 64 * MIB, "swap": 64 * MIB},
        "pids": {"limit": 30},
        "cpu": {"quota": 20000, "period": 100000},
    });
    with_resources(&b, resources)?;
    let c = t.start_new(&t.id("c"), &b)?;
    std::thread::sleep(Duration::from_millis(700));
    let acct = cgroup_dir(c.pid()?, "cpuacct")?.join("cpuacct.usage");
    let before = read_u64(acct.clone())?;
    let out = t.cmd(&["events", "--stats", &c.id])?;
    let after = read_u64(acct)?;
    out.ok()?;
    ensure!(out.stdout.lines().count() == 1, "one JSON line: {out}");
    let ev: Value = serde_json::from_str(&out.stdout)?;
    ensure!(ev["type"] == "stats" && ev["id"] == c.id.as_str(), "{ev}");
    let d = &ev["data"];
    let total = d["cpu"]["usage"]["total"].as_u64().context("cpu total")?;
    ensure!((before..=after).contains(&total), "cpu total {total} not within the cgroup's {before}..{after}");
    let ncpu = std::thread::available_parallelism()?.get();
    ensure!(d["cpu"]["usage"]["percpu"].as_array().map(Vec::len) == Some(ncpu), "percpu: {d}");
    ensure!(d["cpu"]["throttling"]["throttledPeriods"].as_u64() > Some(0), "a hog at 0.2 CPU is throttled: {d}");
    ensure!(d["memory"]["usage"]["limit"] == 64 * MIB, "memory limit: {}", d["memory"]);
    ensure!(d["memory"]["usage"]["usage"].as_u64() > Some(0), "memory usage: {}", d["memory"]);
    ensure!(d["memory"]["raw"]["rss"].is_u64(), "memory.stat as raw: {}", d["memory"]);
    ensure!(d["pids"] == json!({"current": 1, "limit": 30}), "pids: {}", d["pids"]);
    let cpus = d["cpuset"]["cpus"].as_array().map(Vec::len);
    ensure!(cpus == Some(ncpu), "cpuset: {}", d["cpuset"]);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// `warren events` running in the background, its lines arriving on a channel.
struct Watch {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(t: &Test, args: &[&str]) -> Result<Watch> {
        let mut child = command(warren_bin())
            .arg("--root")
            .arg(t.warren.root())
            .arg("events")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Watch { child, lines })
    }

    fn next(&self, timeout: Duration) -> Result<Value> {
        let line = self.lines.recv_timeout(timeout).context("no event line in time")?;
        serde_json::from_str(&line).with_context(|| format!("event JSON: {line}"))
    }

    /// Waits for the watch to end by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("events did not end within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_oom_kill_is_reported_as_it_happens() -> Result<()> {
    let t = Test::new("ev_oom");
    // The hog is a child: the init survives it, so the event cannot come from the stop.
    let script = "sleep 1; sh -c 'x=a; while :; do x=$x$x; done'; echo survived; sleep 100";
    let b = t.bundle(&["sh", "-c", script])?;
    with_resources(&b, json!({"memory": {"limit": 24 * MIB, "swap": 24 * MIB}}))?;
    let c = t.start_new(&t.id("c"), &b)?;
    let watch = Watch::start(&t, &["--interval", "30s", &c.id])?;
    let ev = watch.next(Duration::from_secs(15))?;
    ensure!(ev == json!({"type": "oom", "id": c.id}), "first event: {ev}");
    c.wait_stdout("survived", Duration::from_secs(5))?;
    ensure!(c.status()? == "running", "the init lives on");
    drop(watch);
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn the_watch_prints_stats_at_the_interval_and_ends_with_the_container() -> Result<()> {
    let t = Test::new("ev_stream");
    let b = t.bundle(&["sleep", "1"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let mut watch = Watch::start(&t, &["--interval", "200ms", &c.id])?;
    let status = watch.wait_exit(Duration::from_secs(10))?;
    ensure!(status.success(), "events exit: {status}");
    let stats: Vec<Value> = watch.lines.try_iter().map(|l| serde_json::from_str(&l)).collect::<Result<_, _>>()?;
    ensure!(stats.len() >= 3, "about 5 stats lines in 1 s at 200ms: {stats:?}");
    ensure!(stats.iter().all(|e| e["type"] == "stats" && e["data"]["pids"].is_object()), "{stats:?}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn events_on_a_stopped_or_unknown_container_is_a_one_line_error() -> Result<()> {
    let t = Test::new("ev_bad");
    let b = t.bundle(&["true"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    for args in [vec!["events", "--stats", &c.id], vec!["events", "no-such-container"]] {
        let out = t.cmd(&args)?;
        out.failed()?;
        ensure!(out.stderr.trim().lines().count() == 1, "one line: {out}");
    }
    let out = t.cmd(&["events", "--interval", "5x", &c.id])?;
    out.failed()?;
    ensure!(out.stderr.contains("invalid duration \"5x\""), "names the bad interval: {out}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}
