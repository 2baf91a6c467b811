//! Kernel same-page merging (KSM) of tenants' memory: a plan's `memory.merge` becomes the
//! annotation org.warren.memory.merge, and the kernel then shows the container's processes
//! (the init's program and exec'd ones) as merge-any (/proc/PID/ksm_stat); with ksmd running,
//! identical tenants share pages (/proc/PID/ksm_merging_pages) and others do not.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use warren_tests::*;

const KSM: &str = "/sys/kernel/mm/ksm";
const ANNOTATION: &str = "org.warren.memory.merge";

/// ksmd is the host's: the tests that switch it (or need it stopped) take turns.
static KSMD: Mutex<()> = Mutex::new(());

/// ksmd's knobs as they were, written back on drop (also when a test fails).
struct KsmdGuard {
    saved: Vec<(&'static str, String)>,
}

impl KsmdGuard {
    /// Saves run, pages_to_scan and sleep_millisecs, then writes `settings` in order.
    fn set(settings: &[(&'static str, &str)]) -> Result<KsmdGuard> {
        let mut saved = Vec::new();
        for name in ["pages_to_scan", "sleep_millisecs", "run"] {
            saved.push((name, read_knob(&Path::new(KSM).join(name))?));
        }
        let guard = KsmdGuard { saved };
        for (name, value) in settings {
            std::fs::write(Path::new(KSM).join(name), value).with_context(|| format!("{KSM}/{name}"))?;
        }
        Ok(guard)
    }
}

impl Drop for KsmdGuard {
    fn drop(&mut self) {
        // run last: the scan rate is back before ksmd runs (or stays stopped) at it.
        for (name, value) in &self.saved {
            let _ = std::fs::write(Path::new(KSM).join(name), value);
        }
    }
}

fn ksm_stat(pid: i32, field: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/ksm_stat"))?;
    let value = text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'));
    Ok(value.with_context(|| format!("no {field} in {text:?}"))?.trim().to_string())
}

fn merging_pages(pid: i32) -> Result<u64> {
    Ok(read_knob(Path::new(&format!("/proc/{pid}/ksm_merging_pages")))?.parse()?)
}

/// `len` pseudo-random capital letters, the same every time (a 64-bit LCG's high bits).
fn letters(len: usize) -> Vec<u8> {
    let mut state = 1u64;
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        b'A' + ((state >> 33) % 26) as u8
    };
    (0..len).map(|_| next()).collect()
}

fn with_annotation(b: &Bundle, value: &str) -> Result<()> {
    b.edit(|c| c["annotations"] = json!({ ANNOTATION: value, "org.example.tenant": "t1" }))
}

/// `merge = true` in a plan reaches config.json, and from there the kernel: the container's
/// process and an exec'd one are merge-any; without it neither is. Re-applying a plan
/// without merge takes the annotation out and keeps the others.
#[test]
fn the_merge_flag_reaches_container_and_exec() -> Result<()> {
    let t = Test::new("ksm_flag");
    let plans = t.dir().join("plans");
    std::fs::create_dir(&plans)?;
    let plan = "[cpu]\ncpus = 1\n[memory]\nlimit = \"64MiB\"\nmerge = true\n[pids]\nlimit = 32\n";
    std::fs::write(plans.join("shared.toml"), plan)?;
    std::fs::write(plans.join("own.toml"), plan.replace("merge = true\n", ""))?;
    let plans = plans.display().to_string();
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(|c| c["annotations"] = json!({"org.example.tenant": "t1"}))?;
    let dir = b.path().display().to_string();
    let apply = |plan: &str| t.cmd(&["plan", "--plans-dir", &plans, "apply", "--bundle", &dir, plan]);
    apply("shared")?.ok()?;
    let annotations = b.config()?["annotations"].clone();
    ensure!(annotations == json!({ANNOTATION: "true", "org.example.tenant": "t1"}), "{annotations}");
    let c = t.start_new(&t.id("merged"), &b)?;
    ensure!(ksm_stat(c.pid()?, "ksm_merge_any")? == "yes", "container process not merge-any");
    let out = c.exec(&[], &["cat", "/proc/self/ksm_stat"])?;
    ensure!(out.ok()?.stdout.contains("ksm_merge_any: yes"), "exec'd process: {out}");
    drop(c);
    let fresh = t.dir().join("fresh");
    std::fs::create_dir(&fresh)?;
    let fresh_dir = fresh.display().to_string();
    t.cmd(&["spec", "--bundle", &fresh_dir, "--plan", "shared", "--plans-dir", &plans])?.ok()?;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(fresh.join("config.json"))?)?;
    ensure!(config["annotations"][ANNOTATION] == "true", "spec --plan: {}", config["annotations"]);
    apply("own")?.ok()?;
    let annotations = b.config()?["annotations"].clone();
    ensure!(annotations == json!({"org.example.tenant": "t1"}), "{annotations}");
    let c = t.start_new(&t.id("own"), &b)?;
    ensure!(ksm_stat(c.pid()?, "ksm_merge_any")? == "no", "container process merge-any without the plan");
    let out = c.exec(&[], &["cat", "/proc/self/ksm_stat"])?;
    ensure!(out.ok()?.stdout.contains("ksm_merge_any: no"), "exec'd process: {out}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

/// Anything but "true" or "false" fails create with one line naming the annotation, and
/// leaves nothing behind.
#[test]
fn a_bad_annotation_value_is_refused() -> Result<()> {
    let t = Test::new("ksm_bad");
    let b = t.bundle(&["true"])?;
    for (i, value) in ["yes", "1", "TRUE", ""].iter().enumerate() {
        with_annotation(&b, value)?;
        let out = t.warren.try_create(&t.id(&format!("c{i}")), &b, &[])?;
        out.failed()?;
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        ensure!(lines.len() == 1, "want one line: {out}");
        let want = format!("annotations[{ANNOTATION:?}]: {value:?} is neither \"true\" nor \"false\"");
        ensure!(lines[0].contains(&want), "want {want:?}: {out}");
    }
    t.assert_no_leftovers();
    Ok(())
}

/// With ksmd stopped, create still succeeds and warns (once, on stderr through the log).
#[test]
fn a_stopped_ksmd_is_warned_about() -> Result<()> {
    let _turn = KSMD.lock().unwrap_or_else(|e| e.into_inner());
    let _ksmd = KsmdGuard::set(&[("run", "0")])?;
    let t = Test::new("ksm_warn");
    let b = t.bundle(&["true"])?;
    with_annotation(&b, "true")?;
    let out = t.run(&t.id("c"), &b)?;
    out.ok()?;
    let warnings: Vec<&str> = out.stderr.lines().filter(|l| l.contains("level=warning")).collect();
    ensure!(warnings.len() == 1 && warnings[0].contains("echo 1 > /sys/kernel/mm/ksm/run"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

/// Three tenants hold the same 8 MB in memory (a shell variable: anonymous memory), and three
/// others the same without the annotation. With ksmd running, the first three merge pages
/// and the others none, even after ksmd has scanned everything twice more.
#[test]
fn identical_tenants_share_pages() -> Result<()> {
    let _turn = KSMD.lock().unwrap_or_else(|e| e.into_inner());
    let t = Test::new("ksm_share");
    // Printable (a shell variable holds no NUL), the same for all, and no two pages alike: what
    // merges is what the tenants share, not repeats inside one.
    let data = letters(8_000_000);
    // Not ending in `sleep`: busybox sh would exec it, and the variable would be gone.
    let script = "x=$(cat /data); echo loaded; sleep 1000; echo ${#x}";
    let mut containers = Vec::new();
    for (i, merge) in [true, true, true, false, false, false].into_iter().enumerate() {
        let b = t.bundle(&["sh", "-c", script])?;
        std::fs::write(b.rootfs().join("data"), &data)?;
        with_annotation(&b, if merge { "true" } else { "false" })?;
        let c = t.start_new(&t.id(&format!("c{i}")), &b)?;
        c.wait_stdout("loaded", Duration::from_secs(30))?;
        containers.push((merge, c));
    }
    let _ksmd = KsmdGuard::set(&[("pages_to_scan", "2000"), ("sleep_millisecs", "10"), ("run", "1")])?;
    let full_scans = || -> Result<u64> { Ok(read_knob(&Path::new(KSM).join("full_scans"))?.parse()?) };
    let start = Instant::now();
    loop {
        let mut merged = Vec::new();
        for (merge, c) in containers.iter().filter(|(m, _)| *m) {
            merged.push((*merge, merging_pages(c.pid()?)?));
        }
        if merged.iter().all(|(_, n)| *n > 0) {
            break;
        }
        ensure!(start.elapsed() < Duration::from_secs(120), "no merging after 120 s: {merged:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let scans = full_scans()?;
    while full_scans()? < scans + 2 {
        ensure!(start.elapsed() < Duration::from_secs(240), "ksmd stopped scanning");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (merge, c) in &containers {
        let (pid, pages) = (c.pid()?, merging_pages(c.pid()?)?);
        // 8 MB is about 1950 pages; most of each merged tenant's copy is shared.
        ensure!(if *merge { pages > 1000 } else { pages == 0 }, "{} (merge {merge}, pid {pid}): {pages} pages", c.id);
    }
    drop(containers);
    t.assert_no_leftovers();
    Ok(())
}
