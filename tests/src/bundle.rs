//! OCI bundles built from Debian's busybox-static, like scripts/make-bundle.sh.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cmd::{command, run_with_deadline};
use crate::{mounts_under, warren_bin};

const BUSYBOX: &str = "/bin/busybox";

/// A bundle: DIR/config.json + DIR/rootfs, in its own temp dir.
pub struct Bundle {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Bundle {
    /// A busybox rootfs and the runtime's default config (`warren spec`), with
    /// process.args = `args` and terminal = false.
    pub fn busybox(args: &[&str]) -> Result<Bundle> {
        let dir = tempfile::Builder::new().prefix("wt-bundle-").tempdir_in("/tmp")?;
        let path = dir.path().to_path_buf();
        // tempfile makes it 0700: a user namespace's root (an unprivileged
        // host uid) could not reach the rootfs. Bundles are usually 0755.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        build_rootfs(&path.join("rootfs"))?;
        let bundle = Bundle { dir: Some(dir), path };
        bundle.spec()?;
        bundle.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
        })?;
        Ok(bundle)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }

    pub fn config(&self) -> Result<Value> {
        let text = fs::read_to_string(self.config_path()).context("read config.json")?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Edits config.json as a JSON value.
    pub fn edit(&self, f: impl FnOnce(&mut Value)) -> Result<()> {
        let mut cfg = self.config()?;
        f(&mut cfg);
        fs::write(self.config_path(), serde_json::to_vec_pretty(&cfg)?)?;
        Ok(())
    }

    /// Runs `warren spec` in the bundle dir: the defaults under test are the
    /// runtime's own.
    fn spec(&self) -> Result<()> {
        let mut cmd = command(warren_bin());
        cmd.arg("spec").current_dir(&self.path);
        let out = run_with_deadline(cmd, &self.path.join("spec"), Duration::from_secs(10))?;
        out.ok().context("`warren spec` failed")?;
        let _ = fs::remove_file(self.path.join("spec.stdout"));
        let _ = fs::remove_file(self.path.join("spec.stderr"));
        if !self.config_path().exists() {
            bail!("`warren spec` wrote no config.json in {}", self.path.display());
        }
        Ok(())
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // A mount a buggy runtime left on the host inside this bundle would be
        // followed by remove_dir_all: detach them first, and keep the dir
        // rather than risk deleting through a mount that would not go.
        let stuck = crate::detach_mounts_under(&self.path);
        if stuck || !mounts_under(&self.path).is_empty() {
            eprintln!("warning: keeping {} (mounts remain)", self.path.display());
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// Applet paths relative to /, e.g. "usr/bin/env" (`busybox --list-full`).
fn applets() -> Result<&'static [String]> {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    if let Some(l) = LIST.get() {
        return Ok(l);
    }
    let out = std::process::Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("{BUSYBOX} missing: apt-get install busybox-static"))?;
    let list = String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .map(str::to_string)
        .collect();
    Ok(LIST.get_or_init(|| list))
}

fn build_rootfs(rfs: &Path) -> Result<()> {
    for d in ["bin", "etc", "proc", "sys", "dev", "root", "tmp"] {
        fs::create_dir_all(rfs.join(d))?;
    }
    fs::set_permissions(rfs.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    fs::set_permissions(rfs.join("root"), fs::Permissions::from_mode(0o700))?;
    // A copy, not a hard link: a container that manages to write to its own
    // binary must not change the host's busybox.
    fs::copy(BUSYBOX, rfs.join("bin/busybox"))?;
    for applet in applets()? {
        let link = rfs.join(applet);
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent)?;
        }
        if !link.exists() {
            symlink("/bin/busybox", &link)?;
        }
    }
    fs::write(
        rfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
         user:x:1000:1000:user:/tmp:/bin/sh\n",
    )?;
    fs::write(rfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\nuser:x:1000:\n")?;
    fs::write(rfs.join("etc/hostname"), "warren\n")?;
    Ok(())
}
