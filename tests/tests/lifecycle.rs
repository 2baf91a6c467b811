//! The container life cycle: creating -> created -> running -> stopped, and
//! what `run`, `create`, `start`, `state`, `kill`, `delete` do along it.

use std::time::Duration;

use anyhow::{ensure, Result};
use warren_tests::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn run_foreground_passes_output_and_exit_code() -> Result<()> {
    let t = Test::new("run_fg");
    let out = t.run_sh("echo hello; echo oops >&2; exit 3", |_| {})?;
    ensure!(out.code() == Some(3), "exit code: {out}");
    ensure!(out.stdout == "hello\n", "stdout: {out}");
    ensure!(out.stderr.contains("oops"), "stderr: {out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn run_exit_zero() -> Result<()> {
    let t = Test::new("run_zero");
    let out = t.run_sh("true", |_| {})?;
    out.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn create_start_kill_delete_states() -> Result<()> {
    let t = Test::new("lifecycle");
    let b = t.bundle(&["sh", "-c", "echo started; exec sleep 100"])?;
    let id = t.id("c");
    let c = t.create(&id, &b)?;
    let st = c.state()?;
    ensure!(st["status"] == "created", "after create: {st}");
    ensure!(st["id"] == id.as_str(), "id: {st}");
    ensure!(st["bundle"] == b.path().to_str().unwrap(), "bundle: {st}");
    ensure!(st["pid"].as_i64().unwrap_or(0) > 0, "pid: {st}");
    ensure!(st["ociVersion"].is_string(), "ociVersion: {st}");
    // runc's extra fields, which tools such as podman read.
    for f in ["rootfs", "created", "owner"] {
        ensure!(st.get(f).is_some(), "no {f}: {st}");
    }
    c.start()?.ok()?;
    c.wait_stdout("started", 5 * SECOND)?;
    ensure!(c.status()? == "running");
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", 5 * SECOND)?;
    c.delete()?.ok()?;
    t.cmd(&["state", &id])?.failed()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn created_container_has_not_run_its_process() -> Result<()> {
    let t = Test::new("created_waits");
    let b = t.bundle(&["sh", "-c", "echo ran; exec sleep 100"])?;
    let c = t.create(&t.id("c"), &b)?;
    std::thread::sleep(Duration::from_millis(300));
    ensure!(c.stdout().is_empty(), "ran before start: {:?}", c.stdout());
    c.start()?.ok()?;
    c.wait_stdout("ran", 5 * SECOND)?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn state_pid_is_the_container_init() -> Result<()> {
    let t = Test::new("state_pid");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    let pid = c.pid()?;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))?;
    ensure!(cmdline.starts_with("sleep\u{0}100"), "pid {pid} is {cmdline:?}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn delete_created_container() -> Result<()> {
    let t = Test::new("delete_created");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.create(&t.id("c"), &b)?;
    let pid = c.pid()?;
    c.delete()?.ok()?;
    ensure!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || zombie_or_gone(pid));
    t.assert_no_leftovers();
    Ok(())
}

fn zombie_or_gone(pid: i32) -> bool {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&s, "State").is_none_or(|st| st.starts_with('Z'))
}

#[test]
fn kill_created_container() -> Result<()> {
    let t = Test::new("kill_created");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.create(&t.id("c"), &b)?;
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", 5 * SECOND)?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn delete_stopped_container() -> Result<()> {
    let t = Test::new("delete_stopped");
    let b = t.bundle(&["true"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.wait_status("stopped", 5 * SECOND)?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn delete_running_needs_force() -> Result<()> {
    let t = Test::new("delete_force");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.delete()?.failed()?;
    ensure!(c.status()? == "running", "delete without --force hurt it");
    t.cmd(&["delete", "--force", &c.id])?.ok()?;
    t.cmd(&["state", &c.id])?.failed()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn start_twice_fails() -> Result<()> {
    let t = Test::new("start_twice");
    let b = t.bundle(&["sleep", "100"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    c.start()?.failed()?;
    ensure!(c.status()? == "running");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn sigterm_stops_container() -> Result<()> {
    let t = Test::new("sigterm");
    // Pid 1 ignores signals it has no handler for: install one.
    let b = t.bundle(&["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    std::thread::sleep(Duration::from_millis(200));
    c.kill("TERM")?.ok()?;
    c.wait_status("stopped", 5 * SECOND)?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn kill_default_signal_is_term() -> Result<()> {
    let t = Test::new("kill_default");
    let b = t.bundle(&["sh", "-c", "trap 'echo got-term; exit 0' TERM; while :; do sleep 0.1; done"])?;
    let c = t.start_new(&t.id("c"), &b)?;
    std::thread::sleep(Duration::from_millis(200));
    t.cmd(&["kill", &c.id])?.ok()?;
    c.wait_stdout("got-term", 5 * SECOND)?;
    c.wait_status("stopped", 5 * SECOND)?;
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// A create that died before its init existed leaves state with pid 0
/// ("creating"): `delete --force` must clean it up without signalling pid 0
/// (our own process group).
#[test]
fn force_delete_of_a_create_that_never_finished() -> Result<()> {
    let t = Test::new("half_created");
    let b = t.bundle(&["true"])?;
    let id = t.id("c");
    let dir = t.warren.root().join(&id);
    std::fs::create_dir_all(&dir)?;
    let state = serde_json::json!({
        "id": id, "pid": 0, "pid_start_time": 0,
        "bundle": b.path(), "rootfs": b.rootfs(), "created": "2026-01-01T00:00:00.000000000Z",
        "owner": "", "cgroup": null, "config": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(b.config_path())?)?
    });
    std::fs::write(dir.join("state.json"), state.to_string())?;
    let st = t.cmd(&["state", &id])?;
    ensure!(st.ok()?.stdout.contains("\"creating\""), "{st}");
    t.cmd(&["delete", "--force", &id])?.ok()?;
    ensure!(!dir.exists(), "state dir left");
    t.assert_no_leftovers();
    Ok(())
}

/// A verb the container's status refuses fails as runc's does (exit 1, one line) and changes
/// nothing: exec into a paused container leaves it paused, delete without --force leaves a
/// running one running, kill of a stopped, unknown or empty id fails.
#[test]
fn refused_verbs_fail_with_one_line_and_change_nothing() -> Result<()> {
    let t = Test::new("refused");
    let b = t.bundle(&["sleep", "30"])?;
    let id = t.id("c");
    let c = t.start_new(&id, &b)?;
    let refused = |out: Out, what: &str| -> Result<()> {
        out.failed()?;
        let lines = out.stderr.lines().filter(|l| !l.trim().is_empty()).count();
        ensure!(out.code() == Some(1) && lines == 1, "{what}: {out}");
        Ok(())
    };
    t.cmd(&["pause", &id])?.ok()?;
    refused(c.exec(&[], &["true"])?, "exec into paused")?;
    ensure!(c.status()? == "paused", "exec changed the status");
    t.cmd(&["resume", &id])?.ok()?;
    refused(c.delete()?, "delete of running")?;
    ensure!(c.status()? == "running", "delete without --force changed it");
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    refused(c.kill("TERM")?, "kill of stopped")?;
    refused(t.cmd(&["kill", "wt-refused-no-such-id", "TERM"])?, "kill of unknown")?;
    refused(t.cmd(&["kill", "", "TERM"])?, "kill of empty id")?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}
