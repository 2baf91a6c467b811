//! What a receiver agrees to restore. The source is authenticated, but its config.json is
//! still what the target's root acts on: every field that reaches this host outside the
//! container is refused unless the operator allowed it. The checks:
//!
//! * no hooks (they run as root on this host);
//! * mounts: kernel file systems (proc, sysfs and cgroup read-only, tmpfs, devpts, mqueue) or
//!   binds of host paths that resolve (symlinks followed) under an `--allow-bind` prefix;
//! * capabilities: every set within `warren spec`'s default set plus `--allow-cap`;
//! * devices: the default devices as they are (char, their numbers) plus `--allow-device`
//!   paths; cgroup device rules may allow only those devices;
//! * namespaces: new mount, pid, ipc, uts and network namespaces (sharing the network would
//!   open this host's loopback services to it); any namespace joined by path only under an
//!   `--allow-ns-path` prefix;
//! * the default masked and read-only paths kept (a writable /proc/sys or /proc/sysrq-trigger
//!   is the host's), and sysctls only of the container's own namespaces.
//!
//! What the CRIU images hold is not checked here: the process state is restored inside these
//! namespaces, with these mounts and capabilities.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

/// Kernel file systems a container may mount (no host path behind them).
const KERNEL_FS: [&str; 7] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"];
/// Of those, the ones whose writes reach the host: they must be read-only.
const READ_ONLY_FS: [&str; 3] = ["sysfs", "cgroup", "cgroup2"];
/// Namespaces a moved container must have of its own.
const OWN_NAMESPACES: [LinuxNamespaceType; 5] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Network,
];
/// Sysctls that act on the container's own ipc, uts or network namespace.
const NAMESPACED_SYSCTLS: [&str; 10] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "kernel.hostname",
    "kernel.domainname",
];
const NAMESPACED_SYSCTL_PREFIXES: [&str; 2] = ["fs.mqueue.", "net."];

/// The operator's exceptions (`migrate receive --allow-*`); the default allows none.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Host directories (or files) whose subtrees may be bind-mounted.
    pub allow_bind: Vec<PathBuf>,
    /// Capabilities beyond the default set, as `CAP_NAME`.
    pub allow_cap: Vec<String>,
    /// Device paths beyond the default devices.
    pub allow_device: Vec<PathBuf>,
    /// Prefixes of namespace paths that may be joined.
    pub allow_ns_path: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy: hooks.{kind} is set: hooks run as root on this host")]
    Hook { kind: &'static str },
    #[error("policy: mounts[{index}] binds host path {path}, outside the allowed bind sources", path = .path.display())]
    BindOutside { index: usize, path: PathBuf },
    #[error("policy: mounts[{index}] binds {path}, which does not resolve on this host: {error}", path = .path.display())]
    BindSource { index: usize, path: PathBuf, error: std::io::Error },
    #[error("policy: mounts[{index}] binds {path:?}: a bind source must be an absolute host path", path = .path.display())]
    BindRelative { index: usize, path: PathBuf },
    #[error("policy: mounts[{index}] is of type {typ:?}: only proc, sysfs, tmpfs, devpts, mqueue, cgroup and binds")]
    MountType { index: usize, typ: String },
    #[error("policy: mounts[{index}] mounts {typ} writable: it must be ro")]
    MountWritable { index: usize, typ: String },
    #[error("policy: process.capabilities.{set} has {cap}, beyond the default set and --allow-cap")]
    Capability { set: &'static str, cap: String },
    #[error("policy: linux.devices[{index}] is {path}, not a default device or --allow-device", path = .path.display())]
    Device { index: usize, path: PathBuf },
    #[error("policy: linux.resources.devices[{index}] allows {rule}, not one of the container's devices")]
    DeviceRule { index: usize, rule: String },
    #[error("policy: linux.namespaces has no new {kind} namespace: it would share this host's")]
    SharedNamespace { kind: String },
    #[error("policy: linux.namespaces joins the {kind} namespace at {path}, outside --allow-ns-path", path = .path.display())]
    NamespacePath { kind: String, path: PathBuf },
    #[error("policy: linux.{field} lacks {path}")]
    Unprotected { field: &'static str, path: &'static str },
    #[error("policy: linux.sysctl sets {key}, which is not of the container's namespaces")]
    Sysctl { key: String },
}

impl Policy {
    /// The first field of `spec` this policy refuses, if any.
    pub fn check(&self, spec: &Spec) -> Result<(), PolicyError> {
        check_hooks(spec)?;
        for (index, m) in spec.mounts().iter().flatten().enumerate() {
            self.check_mount(index, m)?;
        }
        self.check_caps(spec)?;
        self.check_devices(spec)?;
        self.check_namespaces(spec)?;
        check_protected(spec)
    }

    fn check_mount(&self, index: usize, m: &Mount) -> Result<(), PolicyError> {
        let typ = m.typ().clone().unwrap_or_default();
        if typ == "bind" || crate::rootfs::is_bind(m) {
            let path = m.source().clone().unwrap_or_default();
            if !path.is_absolute() {
                return Err(PolicyError::BindRelative { index, path });
            }
            // Symlinks followed: what the kernel would bind is what must lie under a prefix.
            let real = std::fs::canonicalize(&path).map_err(|error| PolicyError::BindSource {
                index,
                path: path.clone(),
                error,
            })?;
            let allowed =
                self.allow_bind.iter().any(|p| real.starts_with(std::fs::canonicalize(p).unwrap_or(p.clone())));
            return if allowed { Ok(()) } else { Err(PolicyError::BindOutside { index, path }) };
        }
        if !KERNEL_FS.contains(&typ.as_str()) {
            return Err(PolicyError::MountType { index, typ });
        }
        let last_ro = m.options().iter().flatten().rev().find(|o| *o == "ro" || *o == "rw");
        if READ_ONLY_FS.contains(&typ.as_str()) && last_ro.map(String::as_str) != Some("ro") {
            return Err(PolicyError::MountWritable { index, typ });
        }
        Ok(())
    }

    fn check_caps(&self, spec: &Spec) -> Result<(), PolicyError> {
        let Some(caps) = spec.process().as_ref().and_then(|p| p.capabilities().as_ref()) else {
            return Ok(());
        };
        let sets = [
            ("bounding", caps.bounding()),
            ("effective", caps.effective()),
            ("inheritable", caps.inheritable()),
            ("permitted", caps.permitted()),
            ("ambient", caps.ambient()),
        ];
        for (set, caps) in sets {
            for cap in caps.iter().flatten() {
                let name =
                    serde_json::to_value(cap).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
                let allowed = crate::features::DEFAULT_CAPS.contains(&name.as_str())
                    || self.allow_cap.iter().any(|a| cap_name(a) == name);
                if !allowed {
                    return Err(PolicyError::Capability { set, cap: name });
                }
            }
        }
        Ok(())
    }

    fn check_devices(&self, spec: &Spec) -> Result<(), PolicyError> {
        let Some(linux) = spec.linux() else { return Ok(()) };
        let mut numbers: Vec<(LinuxDeviceType, i64, i64)> = crate::rootfs::DEFAULT_DEVICES
            .iter()
            .map(|(_, ma, mi)| (LinuxDeviceType::C, *ma as i64, *mi as i64))
            .collect();
        for (index, d) in linux.devices().iter().flatten().enumerate() {
            let default = crate::rootfs::DEFAULT_DEVICES.iter().find(|(p, _, _)| d.path() == Path::new(p));
            let ok = match default {
                // A default path must be the default device, not a disk under its name.
                Some((_, ma, mi)) => {
                    d.typ() == LinuxDeviceType::C && (d.major(), d.minor()) == (*ma as i64, *mi as i64)
                }
                None => self.allow_device.iter().any(|p| p == d.path()),
            };
            if !ok {
                return Err(PolicyError::Device { index, path: d.path().clone() });
            }
            numbers.push((d.typ(), d.major(), d.minor()));
        }
        let rules = linux.resources().as_ref().and_then(|r| r.devices().clone()).unwrap_or_default();
        for (index, rule) in rules.iter().enumerate().filter(|(_, r)| r.allow()) {
            let typ = rule.typ().unwrap_or_default();
            let known = numbers.iter().any(|&(t, ma, mi)| {
                let same_type = t == typ || (t == LinuxDeviceType::U && typ == LinuxDeviceType::C);
                same_type && rule.major() == Some(ma) && rule.minor() == Some(mi)
            });
            if !known {
                let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
                let rule = format!("{} {}:{}", typ.as_str(), n(rule.major()), n(rule.minor()));
                return Err(PolicyError::DeviceRule { index, rule });
            }
        }
        Ok(())
    }

    fn check_namespaces(&self, spec: &Spec) -> Result<(), PolicyError> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        let kind = |t: LinuxNamespaceType| serde_json::to_value(t).ok().and_then(|v| v.as_str().map(String::from));
        for required in OWN_NAMESPACES {
            if !namespaces.iter().any(|n| n.typ() == required) {
                return Err(PolicyError::SharedNamespace { kind: kind(required).unwrap_or_default() });
            }
        }
        for ns in &namespaces {
            let Some(path) = ns.path() else { continue };
            let plain = path.is_absolute() && !path.components().any(|c| c == Component::ParentDir);
            if !(plain && self.allow_ns_path.iter().any(|p| path.starts_with(p))) {
                return Err(PolicyError::NamespacePath {
                    kind: kind(ns.typ()).unwrap_or_default(),
                    path: path.clone(),
                });
            }
        }
        Ok(())
    }
}

fn check_hooks(spec: &Spec) -> Result<(), PolicyError> {
    let Some(h) = spec.hooks() else { return Ok(()) };
    #[allow(deprecated)]
    let kinds = [
        ("prestart", h.prestart()),
        ("createRuntime", h.create_runtime()),
        ("createContainer", h.create_container()),
        ("startContainer", h.start_container()),
        ("poststart", h.poststart()),
        ("poststop", h.poststop()),
    ];
    match kinds.into_iter().find(|(_, hooks)| hooks.as_ref().is_some_and(|v| !v.is_empty())) {
        Some((kind, _)) => Err(PolicyError::Hook { kind }),
        None => Ok(()),
    }
}

/// The default masked and read-only paths kept; sysctls only of the container's namespaces.
fn check_protected(spec: &Spec) -> Result<(), PolicyError> {
    let Some(linux) = spec.linux() else { return Ok(()) };
    let lists = [
        ("maskedPaths", &crate::features::MASKED[..], linux.masked_paths()),
        ("readonlyPaths", &crate::features::READONLY[..], linux.readonly_paths()),
    ];
    for (field, required, have) in lists {
        let have = have.as_deref().unwrap_or_default();
        if let Some(path) = required.iter().find(|p| !have.iter().any(|h| h == *p)) {
            return Err(PolicyError::Unprotected { field, path });
        }
    }
    for key in linux.sysctl().iter().flat_map(|s| s.keys()) {
        let ok =
            NAMESPACED_SYSCTLS.contains(&key.as_str()) || NAMESPACED_SYSCTL_PREFIXES.iter().any(|p| key.starts_with(p));
        if !ok {
            return Err(PolicyError::Sysctl { key: key.clone() });
        }
    }
    Ok(())
}

/// `net_admin` or `CAP_NET_ADMIN` as `CAP_NET_ADMIN`.
pub fn cap_name(cap: &str) -> String {
    let upper = cap.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec(edit: impl FnOnce(&mut Value)) -> Spec {
        let mut v = crate::features::default_spec(false);
        edit(&mut v);
        serde_json::from_value(v).unwrap()
    }

    fn refused(policy: &Policy, edit: impl FnOnce(&mut Value)) -> String {
        policy.check(&spec(edit)).unwrap_err().to_string()
    }

    #[test]
    fn the_default_spec_passes() {
        Policy::default().check(&spec(|_| {})).unwrap();
    }

    #[test]
    fn hooks_are_refused() {
        let e = refused(&Policy::default(), |v| v["hooks"] = json!({"createRuntime": [{"path": "/bin/true"}]}));
        assert_eq!(e, "policy: hooks.createRuntime is set: hooks run as root on this host");
    }

    #[test]
    fn binds_only_under_allowed_prefixes_with_symlinks_followed() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink("/etc", shared.join("etc")).unwrap();
        let bind = |src: &Path| {
            let src = src.to_path_buf();
            move |v: &mut Value| {
                v["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/data", "type": "none", "source": src, "options": ["rbind", "rw"]}))
            }
        };
        let e = refused(&Policy::default(), bind(Path::new("/etc")));
        assert_eq!(e, "policy: mounts[7] binds host path /etc, outside the allowed bind sources");
        let allow = Policy { allow_bind: vec![shared.clone()], ..Default::default() };
        allow.check(&spec(bind(&shared))).unwrap();
        // A symlink inside the allowed directory leads out of it.
        let e = refused(&allow, bind(&shared.join("etc")));
        assert!(e.contains("outside the allowed bind sources"), "{e}");
        let e = refused(&allow, bind(Path::new("rootfs/x")));
        assert!(e.contains("must be an absolute host path"), "{e}");
        let e = refused(&allow, bind(&shared.join("none")));
        assert!(e.contains("does not resolve on this host"), "{e}");
    }

    #[test]
    fn only_kernel_file_systems_and_sysfs_read_only() {
        let e = refused(&Policy::default(), |v| {
            v["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/mnt", "type": "ext4", "source": "/dev/sda1"}))
        });
        assert!(e.starts_with("policy: mounts[7] is of type \"ext4\""), "{e}");
        let e = refused(&Policy::default(), |v| v["mounts"][5]["options"] = json!(["nosuid", "rw"]));
        assert_eq!(e, "policy: mounts[5] mounts sysfs writable: it must be ro");
    }

    #[test]
    fn capabilities_within_the_default_set_and_the_allowed() {
        let add = |v: &mut Value| v["process"]["capabilities"]["permitted"] = json!(["CAP_KILL", "CAP_SYS_ADMIN"]);
        let e = refused(&Policy::default(), add);
        assert_eq!(
            e,
            "policy: process.capabilities.permitted has CAP_SYS_ADMIN, beyond the default set and --allow-cap"
        );
        Policy { allow_cap: vec!["sys_admin".into()], ..Default::default() }.check(&spec(add)).unwrap();
    }

    #[test]
    fn devices_only_the_defaults_and_the_allowed() {
        let disk = json!({"path": "/dev/sda", "type": "b", "major": 8, "minor": 0});
        let e = refused(&Policy::default(), |v| v["linux"]["devices"] = json!([disk]));
        assert_eq!(e, "policy: linux.devices[0] is /dev/sda, not a default device or --allow-device");
        // A default device's path with another device's numbers.
        let e = refused(&Policy::default(), |v| {
            v["linux"]["devices"] = json!([{"path": "/dev/null", "type": "b", "major": 8, "minor": 0}])
        });
        assert!(e.contains("linux.devices[0] is /dev/null"), "{e}");
        let allow = Policy { allow_device: vec!["/dev/sda".into()], ..Default::default() };
        allow
            .check(&spec(|v| {
                v["linux"]["devices"] = json!([disk]);
                v["linux"]["resources"]["devices"] =
                    json!([{"allow": false, "access": "rwm"}, {"allow": true, "type": "b", "major": 8, "minor": 0, "access": "rw"}]);
            }))
            .unwrap();
        let e = refused(&Policy::default(), |v| {
            v["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}])
        });
        assert_eq!(e, "policy: linux.resources.devices[0] allows a *:*, not one of the container's devices");
    }

    #[test]
    fn namespaces_of_its_own_and_joins_only_under_allowed_paths() {
        let e = refused(&Policy::default(), |v| {
            v["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid")
        });
        assert_eq!(e, "policy: linux.namespaces has no new pid namespace: it would share this host's");
        let join = |v: &mut Value| v["linux"]["namespaces"][1]["path"] = json!("/run/netns/shared");
        let e = refused(&Policy::default(), join);
        assert_eq!(
            e,
            "policy: linux.namespaces joins the network namespace at /run/netns/shared, outside --allow-ns-path"
        );
        Policy { allow_ns_path: vec!["/run/netns".into()], ..Default::default() }.check(&spec(join)).unwrap();
        let e = refused(&Policy { allow_ns_path: vec!["/run/netns".into()], ..Default::default() }, |v| {
            v["linux"]["namespaces"][1]["path"] = json!("/run/netns/../../proc/1/ns/net")
        });
        assert!(e.contains("outside --allow-ns-path"), "{e}");
    }

    #[test]
    fn protected_paths_and_host_sysctls() {
        let e = refused(&Policy::default(), |v| v["linux"]["readonlyPaths"] = json!(["/proc/bus"]));
        assert_eq!(e, "policy: linux.readonlyPaths lacks /proc/fs");
        let e = refused(&Policy::default(), |v| v["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/x"}));
        assert_eq!(e, "policy: linux.sysctl sets kernel.core_pattern, which is not of the container's namespaces");
        Policy::default()
            .check(&spec(|v| v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmax": "1"})))
            .unwrap();
    }
}
