//! `probe` (probe.c): a small static program that tries, from inside a
//! container, what busybox cannot (ptrace, open(2) with chosen flags, holding
//! O_PATH fds), and says what each attempt gave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cmd::{command, run_with_deadline};
use crate::{Bundle, Test};

const SOURCE: &str = include_str!("probe.c");

/// Builds probe with `cc -static` in the test's dir (once per test) and
/// copies it into `b` as /bin/probe.
pub fn install_probe(t: &Test, b: &Bundle) -> Result<()> {
    let bin = build(t.dir())?;
    std::fs::copy(&bin, b.rootfs().join("bin/probe")).context("copy probe into the rootfs")?;
    Ok(())
}

fn build(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("probe");
    if bin.exists() {
        return Ok(bin);
    }
    let src = dir.join("probe.c");
    std::fs::write(&src, SOURCE)?;
    let mut cc = command("cc");
    cc.args(["-static", "-O2", "-o"]).arg(&bin).arg(&src);
    let out = run_with_deadline(cc, &dir.join("probe-cc"), Duration::from_secs(60))?;
    out.ok().context("cc -static probe.c (needs build-essential)")?;
    Ok(bin)
}
