//! Fault injection: the failpoints build (`target/bin/warren-failpoints`, scripts/build.sh)
//! runs one verb with `WARREN_FAILPOINT` naming a step of it, and dies there by SIGKILL. The
//! container must then be wholly there (`list` and `state` agree on a status from which it
//! can go on: start, exec, delete work) or wholly gone (absent from both, its id free for a
//! new create), and the normal cleanup (`delete --force`, or nothing when it is gone) must
//! leave no mount, cgroup, state entry or process. Skipped (with a note) without the
//! failpoints build; the checkpoint and restore points also without criu.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

const SECOND: Duration = Duration::from_secs(1);

/// Runs `args` through the failpoints build dying at `point`: it must die by SIGKILL.
fn die_at(t: &Test, bin: &Path, point: &str, args: &[&str]) -> Result<()> {
    let out = t.warren.dying_at(bin, point).cmd(args)?;
    ensure!(out.code() == Some(128 + libc::SIGKILL), "{point}: did not die by SIGKILL there: {out}");
    Ok(())
}

/// What `list` and `state` say of `id`: None when it is absent from both, else its status,
/// which both must report alike.
fn fate(t: &Test, id: &str) -> Result<Option<String>> {
    let list = t.cmd(&["list", "--format", "json"])?;
    list.ok()?;
    let all: Vec<Value> = serde_json::from_str(&list.stdout).with_context(|| format!("list: {list}"))?;
    let listed = all.iter().find(|c| c["id"] == id).map(|c| c["status"].as_str().unwrap_or("").to_string());
    let state = t.cmd(&["state", id])?;
    match listed {
        None => {
            ensure!(!state.success(), "{id} is absent from `list` but `state` shows it: {state}");
            Ok(None)
        }
        Some(status) => {
            let st: Value = serde_json::from_str(&state.ok()?.stdout).context("state JSON")?;
            ensure!(st["status"] == status.as_str(), "`list` says {status}, `state` says {st}");
            Ok(Some(status))
        }
    }
}

/// Polls [`fate`] until it is `want` (a process the killed verb released may still be on its
/// way: an init about to exec, a killed one about to be reaped).
fn wait_fate(t: &Test, id: &str, want: Option<&str>, point: &str) -> Result<()> {
    let until = std::time::Instant::now() + 5 * SECOND;
    loop {
        let got = fate(t, id)?;
        if got.as_deref() == want {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            bail!("{point}: {id} is {got:?}, wanted {want:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Goes on from what the kill left, as an operator would, then cleans up: a created
/// container starts and runs, a running one takes an exec, a stopped one is deleted plainly,
/// one still being created is removed with `delete --force`; a gone id can be created again.
fn go_on(t: &Test, id: &str, b: &Bundle, status: Option<&str>) -> Result<()> {
    match status {
        None => {
            let c = t.create(id, b).context("a new create of the same id")?;
            c.start()?.ok()?;
            ensure!(c.status()? == "running", "the new container of a freed id runs");
        }
        Some("created") => {
            t.cmd(&["start", id])?.ok().context("start after the kill")?;
            wait_fate(t, id, Some("running"), "start")?;
            exec_works(t, id)?;
        }
        Some("running") => exec_works(t, id)?,
        Some("stopped") => {
            t.cmd(&["delete", id])?.ok().context("delete of what the kill left stopped")?;
            return Ok(());
        }
        Some(_) => {}
    }
    t.cmd(&["delete", "--force", id])?.ok().context("delete --force")?;
    Ok(())
}

fn exec_works(t: &Test, id: &str) -> Result<()> {
    let out = t.cmd(&["exec", id, "echo", "exec-ok"])?;
    ensure!(out.success() && out.stdout == "exec-ok\n", "exec after the kill: {out}");
    Ok(())
}

/// One point of create: kill there, check the fate, go on, leave nothing.
fn create_at(bin: &Path, n: usize, point: &str, want: Option<&str>, edit: fn(&mut Value)) -> Result<()> {
    let t = Test::new(&format!("fault_create{n}"));
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(edit)?;
    let id = t.id("c");
    let bundle = b.path().to_string_lossy();
    die_at(&t, bin, point, &["create", "--bundle", &bundle, &id])?;
    wait_fate(&t, &id, want, point)?;
    go_on(&t, &id, &b, want)?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn create_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    let points = [
        // Killed before its first state write: the directory alone, which a new create takes.
        ("create.state-dir-claimed", None),
        ("create.state-recorded", Some("creating")),
        ("create.init-spawned", Some("creating")),
        ("create.cgroup-made", Some("creating")),
        ("create.init-ready", Some("creating")),
        ("create.state-written", Some("created")),
    ];
    for (n, (point, want)) in points.into_iter().enumerate() {
        create_at(&bin, n, point, want, |_| {})?;
    }
    Ok(())
}

#[test]
fn create_with_a_user_namespace_killed_after_the_maps() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    create_at(&bin, 9, "spawn.id-maps-written", Some("creating"), |c| {
        c["linux"]["namespaces"].as_array_mut().expect("namespaces").push(json!({"type": "user"}));
        let maps = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["uidMappings"] = maps.clone();
        c["linux"]["gidMappings"] = maps;
    })
}

#[test]
fn an_abandoned_claim_goes_with_delete() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    let t = Test::new("fault_claim");
    let b = t.bundle(&["sleep", "100"])?;
    let id = t.id("c");
    let bundle = b.path().to_string_lossy();
    die_at(&t, &bin, "create.state-dir-claimed", &["create", "--bundle", &bundle, &id])?;
    ensure!(fate(&t, &id)?.is_none(), "a claim without state is no container");
    t.cmd(&["delete", &id])?.ok().context("delete of an abandoned claim")?;
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn start_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    // Killed after the init got its byte, before the fifo went (which no longer makes it
    // look created), and after.
    for (n, point) in ["start.released", "start.fifo-removed"].into_iter().enumerate() {
        let t = Test::new(&format!("fault_start{n}"));
        let b = t.bundle(&["sleep", "100"])?;
        let id = t.id("c");
        let c = t.create(&id, &b)?;
        die_at(&t, &bin, point, &["start", &id])?;
        wait_fate(&t, &id, Some("running"), point)?;
        let again = t.cmd(&["start", &id])?;
        ensure!(!again.success() && again.error_line().contains("running"), "start of a started one: {again}");
        go_on(&t, &id, &b, Some("running"))?;
        drop(c);
        t.assert_no_leftovers();
    }
    Ok(())
}

#[test]
fn exec_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    // (point, whether the exec'd process ran)
    for (n, (point, ran)) in [("exec.init-spawned", false), ("exec.ready", true)].into_iter().enumerate() {
        let t = Test::new(&format!("fault_exec{n}"));
        let b = t.bundle(&["sleep", "100"])?;
        b.edit(writable_root)?;
        let id = t.id("c");
        let c = t.start_new(&id, &b)?;
        die_at(&t, &bin, point, &["exec", "-d", &id, "sh", "-c", "echo ran > /tmp/ran; exec sleep 100"])?;
        wait_fate(&t, &id, Some("running"), point)?;
        std::thread::sleep(SECOND / 2);
        let seen = b.rootfs().join("tmp/ran").exists();
        ensure!(seen == ran, "{point}: the exec'd process ran: {seen}, wanted {ran}");
        no_init_left(&t, &id, point)?;
        go_on(&t, &id, &b, Some("running"))?;
        drop(c);
        t.assert_no_leftovers();
    }
    Ok(())
}

/// No `warren init` of the killed exec lingers in the container (one that never got its pid
/// to the runtime exits; its zombie, if forked, is the container init's to reap, like any
/// orphan there).
fn no_init_left(t: &Test, id: &str, point: &str) -> Result<()> {
    let until = std::time::Instant::now() + 3 * SECOND;
    loop {
        let ps = t.cmd(&["ps", "--format", "json", id])?;
        let pids: Vec<i32> = serde_json::from_str(&ps.ok()?.stdout)?;
        let inits: Vec<i32> = pids
            .into_iter()
            .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"warren\0init")))
            .collect();
        if inits.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > until {
            bail!("{point}: warren init processes left in the container: {inits:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn delete_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    let points = [
        ("delete.processes-killed", Some("stopped")),
        ("delete.cgroup-removed", Some("stopped")),
        ("delete.poststop-run", Some("stopped")),
        ("delete.state-removed", None),
    ];
    for (n, (point, want)) in points.into_iter().enumerate() {
        let t = Test::new(&format!("fault_delete{n}"));
        let b = t.bundle(&["sleep", "100"])?;
        let id = t.id("c");
        let c = t.start_new(&id, &b)?;
        die_at(&t, &bin, point, &["delete", "--force", &id])?;
        wait_fate(&t, &id, want, point)?;
        go_on(&t, &id, &b, want)?;
        drop(c);
        t.assert_no_leftovers();
    }
    Ok(())
}

/// Counts in a shell variable into /tmp/count (see tests/checkpoint.rs).
const COUNTER: &str = "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; sleep 0.05; done";

fn counting(t: &Test, id: &str) -> Result<(Bundle, Container)> {
    let b = t.bundle(&["sh", "-c", COUNTER])?;
    b.edit(writable_root)?;
    let c = t.start_new(id, &b)?;
    wait_counter_above(&b.rootfs().join("tmp/count"), 3, 5 * SECOND)?;
    Ok((b, c))
}

#[test]
fn checkpoint_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    if !have_criu()? {
        return Ok(());
    }
    // Before criu nothing has changed; after it the dump is whole and criu has ended the
    // container, which stays as stopped until deleted (the dump restores as a new one).
    for (n, (point, want)) in
        [("checkpoint.before-criu", "running"), ("checkpoint.after-criu", "stopped")].into_iter().enumerate()
    {
        let t = Test::new(&format!("fault_ckpt{n}"));
        let id = t.id("c");
        let (b, c) = counting(&t, &id)?;
        let images = t.dir().join("img");
        let img = images.to_string_lossy();
        die_at(&t, &bin, point, &["checkpoint", "--image-path", &img, &id])?;
        wait_fate(&t, &id, Some(want), point)?;
        if want == "stopped" {
            let at_dump = read_counter(&b.rootfs().join("tmp/count"))?;
            t.cmd(&["delete", &id])?.ok()?;
            let id2 = t.id("r");
            let bundle = b.path().to_string_lossy();
            t.cmd(&["restore", "--detach", "--bundle", &bundle, "--image-path", &img, &id2])?.ok()?;
            let r = t.warren.adopt(&id2);
            wait_counter_above(&b.rootfs().join("tmp/count"), at_dump, 5 * SECOND)?;
            drop(r);
        } else {
            go_on(&t, &id, &b, Some(want))?;
        }
        drop(c);
        t.assert_no_leftovers();
    }
    Ok(())
}

#[test]
fn restore_killed_at_each_step() -> Result<()> {
    let Some(bin) = failpoints_bin()? else { return Ok(()) };
    if !have_criu()? {
        return Ok(());
    }
    let points = [
        ("restore.cgroup-made", "creating"),
        ("restore.before-criu", "creating"),
        // criu has brought the processes back into the cgroup, whose pid is not recorded yet:
        // `delete --force` ends them with the cgroup.
        ("restore.after-criu", "creating"),
        ("restore.state-written", "running"),
    ];
    for (n, (point, want)) in points.into_iter().enumerate() {
        let t = Test::new(&format!("fault_restore{n}"));
        let id = t.id("c");
        let (b, c) = counting(&t, &id)?;
        let images = t.dir().join("img");
        let img = images.to_string_lossy();
        t.cmd(&["checkpoint", "--image-path", &img, &id])?.ok()?;
        std::mem::forget(c); // the restore takes its id
        let bundle = b.path().to_string_lossy();
        die_at(&t, &bin, point, &["restore", "--detach", "--bundle", &bundle, "--image-path", &img, &id])?;
        wait_fate(&t, &id, Some(want), point)?;
        go_on(&t, &id, &b, Some(want))?;
        t.assert_no_leftovers();
    }
    Ok(())
}
