//! Reading a container's cgroup files from the host, on v1, hybrid and v2
//! hosts alike, without trusting the runtime to say where they are: the
//! path comes from /proc/PID/cgroup and the cgroup mounts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The cgroup dir of `pid` for `controller`: the v1 hierarchy that has it,
/// else (controller "" or a v1 hierarchy lacking it) the cgroup2 one.
pub fn cgroup_dir(pid: i32, controller: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let line_for = |want_v2: bool| {
        text.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
            let hit = if want_v2 { ctrls.is_empty() } else { ctrls.split(',').any(|c| c == controller) };
            hit.then(|| path.trim_start_matches('/').to_string())
        })
    };
    if !controller.is_empty() {
        if let (Some(rel), Some(mount)) = (line_for(false), mount_point(Some(controller))) {
            return Ok(mount.join(rel));
        }
    }
    let rel = line_for(true).with_context(|| format!("no cgroup2 line in /proc/{pid}/cgroup: {text}"))?;
    Ok(mount_point(None).context("no cgroup2 mount")?.join(rel))
}

/// The root of the hierarchy that holds `controller`: its v1 mount, else the
/// cgroup2 one (as in [`cgroup_dir`]).
pub fn hierarchy_root(controller: &str) -> Result<PathBuf> {
    mount_point(Some(controller))
        .or_else(|| mount_point(None))
        .with_context(|| format!("no hierarchy for {controller}"))
}

/// The mount point of the v1 hierarchy holding `controller`, or with None
/// of the cgroup2 hierarchy.
fn mount_point(controller: Option<&str>) -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split(' ');
        let fstype = post.next()?;
        let options = post.nth(1)?;
        let hit = match controller {
            Some(c) => fstype == "cgroup" && options.split(',').any(|o| o == c),
            None => fstype == "cgroup2",
        };
        hit.then(|| PathBuf::from(pre.split(' ').nth(4).unwrap_or("/")))
    })
}

/// The path of a knob named `v1_file` in `controller`'s v1 hierarchy, or
/// `v2_file` in the cgroup2 dir, whichever this host has for `pid`.
pub fn knob_path(pid: i32, controller: &str, v1_file: &str, v2_file: &str) -> Result<PathBuf> {
    let dir = cgroup_dir(pid, controller)?;
    for candidate in [dir.join(v1_file), dir.join(v2_file)] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("neither {v1_file} nor {v2_file} in {}", dir.display())
}

/// A knob's content, trimmed.
pub fn read_knob(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?.trim().to_string())
}

/// The number after `key` in a flat keyed file ("key value" lines, as in
/// memory.stat, cpu.stat, pids.events, memory.oom_control).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Whether `dir` lies in the cgroup2 hierarchy (v1 dirs have no cgroup.controllers).
pub fn is_cgroup2(dir: &Path) -> bool {
    dir.join("cgroup.controllers").exists()
}

/// `pid`'s CFS bandwidth as (quota, period): v1's two cfs files, or v2's
/// cpu.max with its "max" spelled -1 as v1 does.
pub fn cpu_bandwidth(pid: i32) -> Result<(String, String)> {
    let dir = cgroup_dir(pid, "cpu")?;
    if !is_cgroup2(&dir) {
        return Ok((read_knob(&dir.join("cpu.cfs_quota_us"))?, read_knob(&dir.join("cpu.cfs_period_us"))?));
    }
    let max = read_knob(&dir.join("cpu.max"))?;
    let (quota, period) = max.split_once(' ').with_context(|| format!("cpu.max {max:?}"))?;
    Ok((if quota == "max" { "-1" } else { quota }.to_string(), period.to_string()))
}

/// `pid`'s CPU weight as (file, value): v1 cpu.shares, or cgroup2 cpu.weight
/// (which runtimes derive from the shares: 512 shares are weight 20).
pub fn cpu_weight(pid: i32) -> Result<(&'static str, String)> {
    let dir = cgroup_dir(pid, "cpu")?;
    let file = if is_cgroup2(&dir) { "cpu.weight" } else { "cpu.shares" };
    Ok((file, read_knob(&dir.join(file))?))
}
