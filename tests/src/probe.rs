//! `probe` (probe.c): a small static program that tries, from inside a
//! container, what busybox cannot (ptrace, open(2) with chosen flags, holding
//! O_PATH fds), and says what each attempt gave; and `spoof` (spoof.c), which sends a
//! frame with forged sources through a packet socket; and `pause` (pause.c), a pod's sandbox.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::{command, run_with_deadline};
use crate::{Bundle, Test};

const PROBE: &str = include_str!("probe.c");
const SPOOF: &str = include_str!("spoof.c");
const PAUSE: &str = include_str!("pause.c");

/// Builds probe with `cc -static` in the test's dir (once per test) and
/// copies it into `b` as /bin/probe.
pub fn install_probe(t: &Test, b: &Bundle) -> Result<()> {
    let bin = build(t.dir(), "probe", PROBE)?;
    std::fs::copy(&bin, b.rootfs().join("bin/probe")).context("copy probe into the rootfs")?;
    Ok(())
}

/// Builds `spoof` in `dir` (once): `spoof IFACE SRC_MAC SRC_IP DST_MAC DST_IP PORT TEXT`.
pub fn spoof_tool(dir: &Path) -> Result<PathBuf> {
    build(dir, "spoof", SPOOF)
}

/// Builds `pause` (pause.c) in `dir` (once): a pod sandbox's first process.
pub fn pause_tool(dir: &Path) -> Result<PathBuf> {
    build(dir, "pause", PAUSE)
}

fn build(dir: &Path, name: &str, source: &str) -> Result<PathBuf> {
    let bin = dir.join(name);
    if bin.exists() {
        return Ok(bin);
    }
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source)?;
    let mut cc = command("cc");
    cc.args(["-static", "-O2", "-o"]).arg(&bin).arg(&src);
    let out = run_with_deadline(cc, &dir.join(format!("{name}-cc")), Duration::from_secs(60))?;
    out.ok().with_context(|| format!("cc -static {name}.c (needs build-essential)"))?;
    Ok(bin)
}
