//! config.json mount options -> mount(2) flags, propagation and fs data.

use nix::mount::MsFlags;

/// What one mount's option list asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    /// Propagation changes, applied after the mount in order.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes (rro, rnosuid, ...) applied with mount_setattr.
    pub recursive_set: u64,
    pub recursive_clear: u64,
    /// Everything the kernel's filesystem gets as its data string.
    pub data: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            recursive_set: 0,
            recursive_clear: 0,
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    pub fn data_string(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "defaults" => (false, MsFlags::empty()),
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "suid" => (true, MsFlags::MS_NOSUID),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "dev" => (true, MsFlags::MS_NODEV),
        "nodev" => (false, MsFlags::MS_NODEV),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        "async" => (true, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (false, MsFlags::MS_DIRSYNC),
        "remount" => (false, MsFlags::MS_REMOUNT),
        "mand" => (false, MsFlags::MS_MANDLOCK),
        "nomand" => (true, MsFlags::MS_MANDLOCK),
        "atime" => (true, MsFlags::MS_NOATIME),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "diratime" => (true, MsFlags::MS_NODIRATIME),
        "nodiratime" => (false, MsFlags::MS_NODIRATIME),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "norelatime" => (true, MsFlags::MS_RELATIME),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (true, MsFlags::MS_STRICTATIME),
        "lazytime" => (false, MsFlags::MS_LAZYTIME),
        "nolazytime" => (true, MsFlags::MS_LAZYTIME),
        "iversion" => (false, MsFlags::MS_I_VERSION),
        "noiversion" => (true, MsFlags::MS_I_VERSION),
        "bind" => (false, MsFlags::MS_BIND),
        "rbind" => (false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
        _ => return None,
    })
}

fn propagation(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// MOUNT_ATTR__ATIME: the atime mode is a field, not a bit. mount_setattr(2) sets a mode only
/// with the whole field in attr_clr (EINVAL otherwise), so every atime option clears it.
const ATIME: u64 = 0x70;

/// MOUNT_ATTR_* bits for the recursive options (set, clear).
fn recursive(opt: &str) -> Option<(u64, u64)> {
    const RDONLY: u64 = 0x1;
    const NOSUID: u64 = 0x2;
    const NODEV: u64 = 0x4;
    const NOEXEC: u64 = 0x8;
    const RELATIME: u64 = 0x0;
    const NOATIME: u64 = 0x10;
    const STRICTATIME: u64 = 0x20;
    const NODIRATIME: u64 = 0x80;
    const NOSYMFOLLOW: u64 = 0x0020_0000;
    Some(match opt {
        "rro" => (RDONLY, 0),
        "rrw" => (0, RDONLY),
        "rnosuid" => (NOSUID, 0),
        "rsuid" => (0, NOSUID),
        "rnodev" => (NODEV, 0),
        "rdev" => (0, NODEV),
        "rnoexec" => (NOEXEC, 0),
        "rexec" => (0, NOEXEC),
        "rnodiratime" => (NODIRATIME, 0),
        "rdiratime" => (0, NODIRATIME),
        "rnoatime" => (NOATIME, ATIME),
        "rstrictatime" => (STRICTATIME, ATIME),
        "rrelatime" => (RELATIME, ATIME),
        // Undoing noatime or strictatime leaves the kernel's default, relatime; undoing
        // relatime means atime on every access, strictatime.
        "ratime" | "rnostrictatime" => (RELATIME, ATIME),
        "rnorelatime" => (STRICTATIME, ATIME),
        "rnosymfollow" => (NOSYMFOLLOW, 0),
        "rsymfollow" => (0, NOSYMFOLLOW),
        _ => return None,
    })
}

pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    for opt in options {
        if let Some((clear, f)) = flag(opt) {
            if clear {
                out.flags.remove(f);
            } else {
                out.flags.insert(f);
            }
        } else if let Some(p) = propagation(opt) {
            out.propagation.push(p);
        } else if let Some((set, clear)) = recursive(opt) {
            // The later option wins: what it sets is no longer cleared, what it clears no
            // longer set; an atime mode replaces the one before.
            out.recursive_set = (out.recursive_set & !clear) | set;
            out.recursive_clear = (out.recursive_clear & !(set & !ATIME)) | clear;
        } else if opt != "tmpcopyup" {
            out.data.push(opt.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(opts: &[&str]) -> MountOptions {
        parse(&opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_and_data() {
        let m = p(&["nosuid", "noexec", "mode=1777", "size=65536k"]);
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(m.data_string().as_deref(), Some("mode=1777,size=65536k"));
    }

    #[test]
    fn later_option_wins() {
        assert!(!p(&["ro", "rw"]).flags.contains(MsFlags::MS_RDONLY));
        assert!(p(&["rw", "ro"]).flags.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn bind_propagation_recursive() {
        let m = p(&["rbind", "rprivate", "rro"]);
        assert!(m.is_bind() && m.flags.contains(MsFlags::MS_REC));
        assert_eq!(m.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(m.recursive_set, 1);
    }

    #[test]
    fn atime_modes_clear_the_whole_atime_field() {
        for (opt, set) in [("rnoatime", 0x10), ("rstrictatime", 0x20), ("rrelatime", 0), ("ratime", 0)] {
            let m = p(&[opt]);
            assert_eq!((m.recursive_set, m.recursive_clear), (set, ATIME), "{opt}");
        }
        let m = p(&["rnoatime", "rstrictatime"]);
        assert_eq!((m.recursive_set, m.recursive_clear), (0x20, ATIME));
        let m = p(&["rnoatime", "rro", "rnodiratime"]);
        assert_eq!((m.recursive_set, m.recursive_clear), (0x10 | 0x1 | 0x80, ATIME));
    }

    #[test]
    fn later_recursive_option_wins() {
        let m = p(&["rrw", "rro"]);
        assert_eq!((m.recursive_set, m.recursive_clear), (1, 0));
        let m = p(&["rro", "rrw"]);
        assert_eq!((m.recursive_set, m.recursive_clear), (0, 1));
    }
}
