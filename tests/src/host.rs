//! Two "hosts" on one machine for migration tests: each has its own network namespace (the
//! two joined by a veth pair), its own cgroup subtree (the host's warren runs inside it, so
//! a container's default cgroup lands under it, as it would on a separate machine), its own
//! state root, image store, bundles and work directories.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use crate::{Out, Test, Warren};

/// One side of a pair.
pub struct FakeHost {
    pub name: String,
    /// Its address on the veth link.
    pub addr: String,
    pub netns: NetNs,
    pub warren: Warren,
    pub store: PathBuf,
    pub bundles: PathBuf,
    pub work: PathBuf,
    /// Its cgroup directory in every hierarchy.
    pub cgroups: Vec<PathBuf>,
}

impl FakeHost {
    /// The host's network namespace as a path `nsenter --net=` takes.
    pub fn netns_path(&self) -> String {
        self.netns.path()
    }

    /// `warren --root R migrate --store S --work W ARGS...` run as this host.
    pub fn migrate(&self, args: &[&str]) -> Result<Out> {
        self.warren.cmd_for(&self.migrate_args(args), std::time::Duration::from_secs(120))
    }

    /// The arguments of [`FakeHost::migrate`] after `--root R`.
    pub fn migrate_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["migrate", "--store", path_str(&self.store), "--work", path_str(&self.work)];
        v.extend_from_slice(args);
        v
    }

    /// A host's view of `warren image|bundle` with its own store.
    pub fn store_cmd(&self, group: &str, args: &[&str]) -> Result<Out> {
        let mut v = vec![group, "--store", path_str(&self.store)];
        v.extend_from_slice(args);
        self.warren.cmd(&v)
    }

    /// Cgroup directories below the host's own: containers left behind.
    pub fn child_cgroups(&self) -> Vec<PathBuf> {
        self.cgroups
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()))
            .collect()
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// Two hosts joined by a veth pair; everything is removed on drop.
pub struct HostPair {
    pub a: FakeHost,
    pub b: FakeHost,
}

static PAIRS: AtomicUsize = AtomicUsize::new(0);

impl HostPair {
    pub fn new(t: &Test) -> Result<HostPair> {
        let n = PAIRS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", std::process::id() % 100_000, n);
        // A /24 per pair, so that pairs of parallel tests do not collide.
        let subnet = format!("10.213.{}", (std::process::id() as usize * 7 + n) % 250 + 1);
        let a = make_host(t, &format!("wa{tag}"), &format!("{subnet}.1"))?;
        let b = make_host(t, &format!("wb{tag}"), &format!("{subnet}.2"))?;
        let pair = HostPair { a, b };
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
        for (host, veth) in [(&pair.a, &va), (&pair.b, &vb)] {
            ip(&["link", "set", veth, "netns", &host.netns.pid().to_string()])?;
            let ns = host.netns_path();
            ip_in(&ns, &["addr", "add", &format!("{}/24", host.addr), "dev", veth])?;
            ip_in(&ns, &["link", "set", veth, "up"])?;
            ip_in(&ns, &["link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for HostPair {
    fn drop(&mut self) {
        // Each namespace goes with its holder (a field), its end of the veth with it, and
        // the other end with that.
        for host in [&self.a, &self.b] {
            for dir in host.cgroups.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// `ip ARGS` inside the network namespace at `ns`.
fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let net = format!("--net={ns}");
    let v: Vec<&str> = [net.as_str(), "--", "ip"].into_iter().chain(args.iter().copied()).collect();
    run("nsenter", &v)
}

fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog).args(args).output().with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!("{prog} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A new network namespace, held by a process that lives until this is dropped (no
/// `ip netns` bind mount under /run/netns to clean up).
pub struct NetNs(std::process::Child);

impl NetNs {
    pub fn new() -> Result<NetNs> {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "infinity"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("run unshare --net")?;
        let ns = NetNs(child);
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let start = std::time::Instant::now();
        while std::fs::read_link(ns.path()).map_or(true, |p| p == ours) {
            if start.elapsed() > std::time::Duration::from_secs(5) {
                bail!("unshare --net made no namespace within 5 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(ns)
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn make_host(t: &Test, name: &str, addr: &str) -> Result<FakeHost> {
    let netns = NetNs::new()?;
    let cgroups = make_cgroups(name)?;
    let dir = t.dir().join(name);
    for sub in ["store", "bundles", "work"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    // The host's warren joins its cgroups and network namespace, then runs.
    let joins: String = cgroups.iter().map(|d| format!(" {}/cgroup.procs", d.display())).collect();
    let script = format!(
        "#!/bin/sh\nfor f in{joins}; do echo $$ > \"$f\" || exit 125; done\nexec nsenter --net=/proc/{pid}/ns/net -- \"$@\"\n",
        pid = netns.pid()
    );
    let wrapper = dir.join("as-host");
    std::fs::write(&wrapper, script)?;
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(FakeHost {
        name: name.to_string(),
        addr: addr.to_string(),
        netns,
        warren: t.warren.via(&wrapper, &dir.join("state")),
        store: dir.join("store"),
        bundles: dir.join("bundles"),
        work: dir.join("work"),
        cgroups,
    })
}

/// `NAME` below this process's own cgroup in every hierarchy, named ones (name=systemd)
/// included: a path shared there would make both hosts' containers one cgroup. A new v1
/// cpuset gets its parent's cpus and mems, which it lacks.
fn make_cgroups(name: &str) -> Result<Vec<PathBuf>> {
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let mut dirs = Vec::new();
    for line in own.lines() {
        // A hierarchy by its first controller ("": the cgroup2 one).
        let ctrls = line.split(':').nth(1).unwrap_or("");
        let dir = crate::cgroup_dir(std::process::id() as i32, ctrls.split(',').next().unwrap_or(""))?.join(name);
        if dirs.contains(&dir) {
            continue; // a hierarchy not mounted here resolves to the cgroup2 one
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        if ctrls.split(',').any(|c| c == "cpuset") {
            for knob in ["cpuset.cpus", "cpuset.mems"] {
                let parent = std::fs::read_to_string(dir.parent().unwrap().join(knob))?;
                std::fs::write(dir.join(knob), parent.trim())?;
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}
