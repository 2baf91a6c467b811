//! What a container could leave behind on the host, found without trusting
//! the runtime: mounts, cgroup directories, processes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One line of /proc/self/mountinfo, the fields we need.
struct MountLine {
    mount_point: String,
    fstype: String,
    line: String,
}

fn mountinfo() -> Vec<MountLine> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountLine {
                mount_point: unescape(fields.get(4)?),
                fstype: fields.get(sep + 1)?.to_string(),
                line: line.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

/// Mountinfo lines (of our own mount namespace) that mention `path`.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let p = path.to_string_lossy();
    mountinfo().into_iter().filter(|m| m.line.contains(p.as_ref())).map(|m| m.line).collect()
}

/// Lazily unmounts every mount point under `path`, deepest first. Returns
/// true if some could not be unmounted.
pub fn detach_mounts_under(path: &Path) -> bool {
    let mut points: Vec<String> =
        mountinfo().into_iter().map(|m| m.mount_point).filter(|mp| Path::new(mp).starts_with(path)).collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut stuck = false;
    for mp in points {
        let Ok(c) = std::ffi::CString::new(mp) else {
            continue;
        };
        // SAFETY: plain umount2 on a NUL-terminated path.
        stuck |= unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0;
    }
    stuck
}

/// Cgroup directories that a container `id` with the default (relative)
/// cgroupsPath could have: `<hierarchy>/<id>` and `<hierarchy>/<our path>/<id>`
/// for every mounted hierarchy.
pub fn cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for mnt in cgroup_mounts() {
        for own in own_cgroup_paths() {
            let d = Path::new(mnt).join(own.trim_start_matches('/')).join(id);
            if d.is_dir() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs
}

fn cgroup_mounts() -> &'static [String] {
    static M: OnceLock<Vec<String>> = OnceLock::new();
    M.get_or_init(|| {
        mountinfo()
            .into_iter()
            .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
            .map(|m| m.mount_point)
            .collect()
    })
}

/// "/" plus every path in /proc/self/cgroup.
fn own_cgroup_paths() -> &'static [String] {
    static P: OnceLock<Vec<String>> = OnceLock::new();
    P.get_or_init(|| {
        let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut v = vec!["/".to_string()];
        for l in text.lines() {
            if let Some(p) = l.splitn(3, ':').nth(2) {
                if !v.iter().any(|x| x == p) {
                    v.push(p.to_string());
                }
            }
        }
        v
    })
}

/// What identifies a test's processes.
pub struct ProcMatch<'a> {
    /// Any process whose cmdline contains one of these (warren --root DIR ...).
    pub paths: &'a [PathBuf],
    /// Any process whose root directory is one of these (dev, ino) rootfs.
    pub roots: &'a [(u64, u64)],
    /// Any process in a cgroup whose last component is one of these ids.
    pub ids: &'a [String],
}

/// Pids (other than ours) of processes matching `m`, with a description.
pub fn processes(m: &ProcMatch) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| why_matches(pid, m).map(|w| (pid, w)))
        .collect()
}

fn why_matches(pid: i32, m: &ProcMatch) -> Option<String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let cmdline = fs::read(proc.join("cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let desc = |why: &str| Some(format!("pid {pid} ({why}): {cmdline}"));
    if m.paths.iter().any(|p| cmdline.contains(&*p.to_string_lossy())) {
        return desc("cmdline names the test dir");
    }
    // stat(/proc/PID/root) reaches the real root dentry even across mount
    // namespaces, where readlink would only say "/".
    if let Ok(md) = fs::metadata(proc.join("root")) {
        if m.roots.contains(&(md.dev(), md.ino())) {
            return desc("root is a test rootfs");
        }
    }
    let cg = fs::read_to_string(proc.join("cgroup")).unwrap_or_default();
    let in_id = cg.lines().any(|l| {
        let path = l.splitn(3, ':').nth(2).unwrap_or("");
        path.split('/').any(|c| m.ids.iter().any(|id| id == c))
    });
    if in_id {
        return desc("in a container cgroup");
    }
    None
}

/// (dev, ino) of a directory, to recognise processes rooted there.
pub fn dev_ino(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}
