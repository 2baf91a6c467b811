//! Which cgroup hierarchies the host has mounted, where the calling process sits in each, and
//! how an OCI `linux.cgroupsPath` maps onto them.
//!
//! Parsing works on the text of /proc/self/mountinfo and /proc/self/cgroup so that it can be
//! tested without a host; [`Layout::detect`] is the thin wrapper that reads the real files.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::{fs, Cgroup, CgroupError};

pub const MOUNTINFO: &str = "/proc/self/mountinfo";
pub const SELF_CGROUP: &str = "/proc/self/cgroup";

/// One mounted cgroup hierarchy and the calling process's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The controller list as /proc/self/cgroup shows it ("cpu,cpuacct", "name=systemd");
    /// empty for cgroup2.
    pub controllers: String,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// The cgroup of the hierarchy shown at `mount_point` (mountinfo's root field).
    pub mount_root: PathBuf,
    /// The calling process's cgroup, as /proc/self/cgroup shows it.
    pub own_cgroup: PathBuf,
}

/// The host's cgroup hierarchies: v1 ones (possibly none) and the cgroup2 one (if mounted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub v1: Vec<Hierarchy>,
    pub unified: Option<Hierarchy>,
}

/// Where the container's cgroup goes, relative to something in each hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Relative to the hierarchy's mount root.
    FromMount(PathBuf),
    /// Relative to the calling process's own cgroup.
    FromOwn(PathBuf),
}

pub use warren_config::mountinfo::Mount;

impl Layout {
    /// Reads /proc/self/mountinfo and /proc/self/cgroup.
    pub fn detect() -> Result<Layout, CgroupError> {
        let mountinfo = fs::read(Path::new(MOUNTINFO))?;
        let self_cgroup = fs::read(Path::new(SELF_CGROUP))?;
        Layout::from_texts(&mountinfo, &self_cgroup)
    }

    /// Builds the layout from the contents of /proc/self/mountinfo and /proc/self/cgroup.
    /// Hierarchies listed in /proc/self/cgroup but not mounted are left out.
    pub fn from_texts(mountinfo: &str, self_cgroup: &str) -> Result<Layout, CgroupError> {
        let mounts = parse_mountinfo(mountinfo)?;
        let mut layout = Layout { v1: Vec::new(), unified: None };
        for line in self_cgroup.lines().filter(|l| !l.trim().is_empty()) {
            let mut fields = line.splitn(3, ':');
            let (Some(_id), Some(controllers), Some(own)) = (fields.next(), fields.next(), fields.next()) else {
                return Err(CgroupError::Parse { path: PathBuf::from(SELF_CGROUP), line: line.to_string() });
            };
            let own_cgroup = PathBuf::from(own);
            let Some(mount) = pick_mount(&mounts, controllers, &own_cgroup) else {
                continue;
            };
            let hierarchy = Hierarchy {
                controllers: controllers.to_string(),
                mount_point: mount.mount_point.clone(),
                mount_root: mount.root.clone(),
                own_cgroup,
            };
            if controllers.is_empty() {
                layout.unified = Some(hierarchy);
            } else {
                layout.v1.push(hierarchy);
            }
        }
        Ok(layout)
    }

    /// True when some real controller (not just a named hierarchy such as name=systemd) is
    /// mounted as v1: the host is then v1 or hybrid, otherwise v2.
    pub fn is_v1(&self) -> bool {
        self.v1.iter().any(|h| h.controllers.split(',').any(|c| !c.starts_with("name=")))
    }

    /// See [`Cgroup::resolve`].
    pub fn resolve(&self, cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup, CgroupError> {
        let target = parse_target(cgroups_path, id)?;
        if self.is_v1() {
            let mut paths = BTreeMap::new();
            for h in &self.v1 {
                paths.insert(h.controllers.clone(), h.dir_for(&target)?);
            }
            let unified = self.unified.as_ref().map(|h| h.dir_for(&target)).transpose()?;
            Ok(Cgroup::V1 { paths, unified })
        } else if let Some(h) = &self.unified {
            Ok(Cgroup::V2 { path: h.dir_for(&target)? })
        } else {
            Err(CgroupError::NoHierarchy { path: PathBuf::from(MOUNTINFO) })
        }
    }
}

impl Hierarchy {
    fn dir_for(&self, target: &Target) -> Result<PathBuf, CgroupError> {
        match target {
            Target::FromMount(rel) => Ok(self.mount_point.join(rel)),
            Target::FromOwn(rel) => {
                let outside = || CgroupError::OutsideMount {
                    path: self.mount_point.clone(),
                    controllers: self.controllers.clone(),
                    own_cgroup: self.own_cgroup.clone(),
                };
                let below_root = self.own_cgroup.strip_prefix(&self.mount_root).map_err(|_| outside())?;
                if has_parent_component(below_root) {
                    return Err(outside());
                }
                Ok(self.mount_point.join(below_root).join(rel))
            }
        }
    }
}

/// Validates `linux.cgroupsPath` (unset or empty: the id) into a target.
fn parse_target(cgroups_path: Option<&Path>, id: &str) -> Result<Target, CgroupError> {
    let path = match cgroups_path {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new(id),
    };
    if is_systemd_style(path) {
        return Err(CgroupError::SystemdPath { path: path.to_path_buf() });
    }
    if has_parent_component(path) {
        return Err(CgroupError::DotDot { path: path.to_path_buf() });
    }
    let rel: PathBuf = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    if rel.as_os_str().is_empty() {
        return Err(CgroupError::NoLeaf { path: path.to_path_buf() });
    }
    if path.is_absolute() {
        Ok(Target::FromMount(rel))
    } else {
        Ok(Target::FromOwn(rel))
    }
}

/// "slice:prefix:name", the systemd cgroup driver's format.
fn is_systemd_style(path: &Path) -> bool {
    let text = path.to_string_lossy();
    !text.contains('/') && text.split(':').count() == 3
}

fn has_parent_component(path: &Path) -> bool {
    path.components().any(|c| c == Component::ParentDir)
}

/// The mount showing the hierarchy with `controllers` (empty: cgroup2), preferring one whose
/// root contains the process's own cgroup.
fn pick_mount<'a>(mounts: &'a [Mount], controllers: &str, own: &Path) -> Option<&'a Mount> {
    let shows_hierarchy = |m: &&Mount| {
        if controllers.is_empty() {
            m.fs_type == "cgroup2"
        } else {
            m.fs_type == "cgroup" && controllers.split(',').all(|c| m.super_options.iter().any(|o| o == c))
        }
    };
    let mut candidates = mounts.iter().filter(shows_hierarchy).peekable();
    let first = *candidates.peek()?;
    Some(candidates.find(|m| own.starts_with(&m.root)).unwrap_or(first))
}

/// The lines of a mountinfo file (/proc/PID/mountinfo), unescaped.
pub fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, CgroupError> {
    warren_config::mountinfo::parse(text)
        .map_err(|e| CgroupError::Parse { path: PathBuf::from(MOUNTINFO), line: e.line })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hybrid host this was written on (cpu and cpuacct mounted separately).
    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
6:freezer:/
4:memory:/process_api/67df
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    fn v1_path(cg: &Cgroup, key: &str) -> PathBuf {
        match cg {
            Cgroup::V1 { paths, .. } => paths[key].clone(),
            Cgroup::V2 { .. } => panic!("expected v1, got {cg:?}"),
        }
    }

    #[test]
    fn hybrid_layout_keys_and_unified() {
        let layout = Layout::from_texts(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        assert!(layout.is_v1());
        let keys: Vec<&str> = layout.v1.iter().map(|h| h.controllers.as_str()).collect();
        // cpuset is listed in /proc/self/cgroup but not mounted: left out.
        assert_eq!(keys, ["name=systemd", "freezer", "memory", "cpuacct", "cpu"]);
        let unified = layout.unified.as_ref().unwrap();
        assert_eq!(unified.mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn resolve_relative_unset_and_absolute() {
        let layout = Layout::from_texts(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        let unset = layout.resolve(None, "abc").unwrap();
        assert_eq!(v1_path(&unset, "memory"), Path::new("/sys/fs/cgroup/memory/process_api/67df/abc"));
        assert_eq!(v1_path(&unset, "cpu"), Path::new("/sys/fs/cgroup/cpu/abc"));
        let Cgroup::V1 { unified, .. } = &unset else { unreachable!() };
        assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified/abc")));

        let rel = layout.resolve(Some(Path::new("./pod/abc")), "x").unwrap();
        assert_eq!(v1_path(&rel, "memory"), Path::new("/sys/fs/cgroup/memory/process_api/67df/pod/abc"));
        let abs = layout.resolve(Some(Path::new("/pod/abc")), "x").unwrap();
        assert_eq!(v1_path(&abs, "memory"), Path::new("/sys/fs/cgroup/memory/pod/abc"));
        assert_eq!(v1_path(&abs, "name=systemd"), Path::new("/sys/fs/cgroup/systemd/pod/abc"));
        assert_eq!(layout.resolve(Some(Path::new("")), "abc").unwrap(), unset);
    }

    #[test]
    fn resolve_refuses_systemd_dotdot_and_root() {
        let layout = Layout::from_texts(HYBRID_MOUNTINFO, HYBRID_CGROUP).unwrap();
        let err = layout.resolve(Some(Path::new("system.slice:warren:abc")), "abc").unwrap_err();
        assert!(matches!(&err, CgroupError::SystemdPath { path } if path == Path::new("system.slice:warren:abc")));
        assert!(err.to_string().contains("system.slice:warren:abc"));
        let err = layout.resolve(Some(Path::new("/a/../../etc")), "abc").unwrap_err();
        assert!(matches!(&err, CgroupError::DotDot { path } if path == Path::new("/a/../../etc")));
        assert!(matches!(layout.resolve(None, ".."), Err(CgroupError::DotDot { .. })));
        assert!(matches!(layout.resolve(Some(Path::new("/")), "abc"), Err(CgroupError::NoLeaf { .. })));
    }

    #[test]
    fn pure_v2_and_v2_with_named_v1() {
        let mountinfo = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
31 23 0:27 / /run/systemd-v1 rw - cgroup cgroup rw,xattr,name=systemd
";
        let self_cgroup = "1:name=systemd:/\n0::/user.slice/session-1.scope\n";
        let layout = Layout::from_texts(mountinfo, self_cgroup).unwrap();
        assert!(!layout.is_v1());
        assert_eq!(
            layout.resolve(None, "abc").unwrap(),
            Cgroup::V2 { path: PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope/abc") }
        );
        assert_eq!(
            layout.resolve(Some(Path::new("/warren/abc")), "x").unwrap(),
            Cgroup::V2 { path: PathBuf::from("/sys/fs/cgroup/warren/abc") }
        );
    }

    #[test]
    fn comounted_v1_and_bind_mounted_subtree() {
        // Inside a container without a cgroup namespace: mounts show a subtree of each hierarchy.
        let mountinfo = "\
50 40 0:40 /docker/c1 /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct
51 40 0:41 /docker/c1 /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
52 40 0:42 /other /mnt/memory\\040dir rw - cgroup cgroup rw,memory
";
        let self_cgroup = "5:cpu,cpuacct:/docker/c1\n3:pids:/docker/c1/sub\n2:memory:/docker/c1\n";
        let layout = Layout::from_texts(mountinfo, self_cgroup).unwrap();
        let without_memory = Layout { v1: layout.v1[..2].to_vec(), unified: None };
        let cg = without_memory.resolve(None, "abc").unwrap();
        assert_eq!(v1_path(&cg, "cpu,cpuacct"), Path::new("/sys/fs/cgroup/cpu,cpuacct/abc"));
        assert_eq!(v1_path(&cg, "pids"), Path::new("/sys/fs/cgroup/pids/sub/abc"));
        assert_eq!(cg.controller_dir("cpuacct"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/abc")));
        // memory: the process's own cgroup lies outside what the mount shows, so a relative
        // path cannot be placed; an absolute one is relative to the mount and still works.
        assert!(matches!(
            layout.resolve(None, "abc"),
            Err(CgroupError::OutsideMount { controllers, .. }) if controllers == "memory"
        ));
        let abs = layout.resolve(Some(Path::new("/abc")), "x").unwrap();
        assert_eq!(v1_path(&abs, "memory"), Path::new("/mnt/memory dir/abc"));
        assert_eq!(v1_path(&abs, "pids"), Path::new("/sys/fs/cgroup/pids/abc"));
        assert_eq!(layout.v1[2].mount_point, Path::new("/mnt/memory dir"));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_file() {
        let err = Layout::from_texts("1 2 3\n", "").unwrap_err();
        assert!(matches!(&err, CgroupError::Parse { path, .. } if path == Path::new(MOUNTINFO)));
        let err = Layout::from_texts("", "garbage\n").unwrap_err();
        assert!(matches!(&err, CgroupError::Parse { path, .. } if path == Path::new(SELF_CGROUP)));
        assert!(matches!(Layout::from_texts("", "").unwrap().resolve(None, "x"), Err(CgroupError::NoHierarchy { .. })));
    }
}
