//! Loading and checking a bundle's config.json before anything is created,
//! so bad input fails with a message naming the field and leaves nothing behind.

use crate::rootfs::overlay::RootfsOverlay;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {path}: cannot read config.json: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {field}: {message}")]
    Parse { path: PathBuf, field: String, message: String },
    #[error("config.json: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("config.json: root.path: rootfs {path} does not exist or is not a directory")]
    MissingRootfs { path: PathBuf },
    #[error("config.json: {0}")]
    MemoryPolicy(#[from] crate::mempolicy::MemPolicyError),
    #[error("config.json: {0}")]
    Affinity(#[from] crate::affinity::AffinityError),
    #[error("config.json: {0}")]
    MemoryMerge(#[from] crate::memory_merge::MemoryMergeError),
    #[error("config.json: {0}")]
    IntelRdt(#[from] crate::intel_rdt::IntelRdtError),
    #[error("config.json: {0}")]
    Overlay(#[from] crate::rootfs::overlay::OverlayError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError::Invalid { field: field.into(), message: message.into() }
}

/// A parsed config.json with the bundle it came from and its absolute rootfs.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: Spec,
    /// The overlay the init mounts at `rootfs` in its own namespace (`rootfs::overlay`).
    pub overlay: Option<RootfsOverlay>,
}

impl Bundle {
    /// Reads `<dir>/config.json` and validates what the runtime relies on.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = std::path::absolute(dir).map_err(|source| SpecError::Read { path: dir.into(), source })?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read { path: dir.clone(), source })?;
        let spec = parse(&text, &path)?;
        let root = spec.root().as_ref().ok_or_else(|| invalid("root", "missing"))?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(SpecError::MissingRootfs { path: rootfs });
        }
        validate(&spec)?;
        let overlay = rootfs_overlay(&spec)?;
        if let Some(o) = &overlay {
            o.check_dirs()?;
        }
        Ok(Bundle { dir, rootfs, spec, overlay })
    }
}

/// Parses config.json text; errors name the JSON path of the bad field.
pub fn parse(text: &[u8], path: &Path) -> Result<Spec, SpecError> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        SpecError::Parse { path: path.into(), field, message }
    })
}

/// The checks a runtime must make before it creates anything.
pub fn validate(spec: &Spec) -> Result<(), SpecError> {
    let process = spec.process().as_ref().ok_or_else(|| invalid("process", "missing"))?;
    match process.args() {
        Some(args) if !args.is_empty() => {}
        _ => return Err(invalid("process.args", "must name at least the program to run")),
    }
    if !process.cwd().is_absolute() {
        return Err(invalid("process.cwd", format!("{} is not absolute", process.cwd().display())));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        check_container_path(m.destination(), &format!("mounts[{i}].destination"))?;
    }
    if let Some(linux) = spec.linux() {
        validate_namespaces(spec)?;
        for (i, p) in linux.masked_paths().iter().flatten().enumerate() {
            check_container_path(Path::new(p), &format!("linux.maskedPaths[{i}]"))?;
        }
        for (i, p) in linux.readonly_paths().iter().flatten().enumerate() {
            check_container_path(Path::new(p), &format!("linux.readonlyPaths[{i}]"))?;
        }
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            check_container_path(d.path(), &format!("linux.devices[{i}].path"))?;
        }
        validate_net_devices(spec)?;
    }
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !has_namespace(spec, LinuxNamespaceType::Uts) {
        return Err(invalid("hostname", "setting it needs a new uts namespace"));
    }
    // Checked here too (the init applies them), so that a bad value fails
    // before anything exists.
    crate::mempolicy::MemPolicy::from_spec(spec)?;
    crate::affinity::ExecAffinity::from_process(process)?;
    crate::intel_rdt::check(spec)?;
    if let Some(overlay) = rootfs_overlay(spec)? {
        let field = "annotations[\"org.warren.rootfs.overlay\"]";
        if !has_new_namespace(spec, LinuxNamespaceType::Mount) {
            return Err(invalid(field, "needs a new mount namespace"));
        }
        if overlay.idmap && IdMaps::of_spec(spec).is_none() {
            return Err(invalid(field, "idmap needs a new user namespace (linux.uidMappings, gidMappings)"));
        }
    }
    crate::memory_merge::requested(spec)?;
    Ok(())
}

/// The id maps of a container that makes its own user namespace, as /proc/PID/uid_map and
/// gid_map take them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMaps {
    pub uid_map: String,
    pub gid_map: String,
}

impl IdMaps {
    /// None for a container without a new user namespace.
    pub fn of_spec(spec: &Spec) -> Option<IdMaps> {
        let linux = spec.linux().as_ref()?;
        let new_userns =
            linux.namespaces().iter().flatten().any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_none());
        if !new_userns {
            return None;
        }
        let text = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> String {
            let maps = maps.as_deref().unwrap_or_default();
            maps.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect()
        };
        Some(IdMaps { uid_map: text(linux.uid_mappings()), gid_map: text(linux.gid_mappings()) })
    }
}

/// The overlay the config's annotation asks for (syntax only).
pub fn rootfs_overlay(spec: &Spec) -> Result<Option<RootfsOverlay>, SpecError> {
    let annotations = spec.annotations().iter().flatten();
    Ok(RootfsOverlay::from_annotations(annotations)?)
}

/// Container paths must be absolute and must not climb out with `..`.
fn check_container_path(path: &Path, field: &str) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(invalid(field, format!("{} is not an absolute path", path.display())));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{} leaves the container root through '..'", path.display())));
    }
    Ok(())
}

fn validate_namespaces(spec: &Spec) -> Result<(), SpecError> {
    let linux = spec.linux().as_ref().expect("checked by caller");
    let mut seen = HashSet::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if !seen.insert(ns.typ()) {
            return Err(invalid(format!("linux.namespaces[{i}]"), format!("namespace {} listed twice", ns.typ())));
        }
        if let Some(p) = ns.path() {
            if !p.exists() {
                return Err(invalid(format!("linux.namespaces[{i}].path"), format!("{} does not exist", p.display())));
            }
        }
    }
    let new_userns =
        linux.namespaces().iter().flatten().any(|ns| ns.typ() == LinuxNamespaceType::User && ns.path().is_none());
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if new_userns && !has_maps {
        return Err(invalid("linux.uidMappings", "a new user namespace needs uid and gid mappings"));
    }
    if let Some(offsets) = linux.time_offsets() {
        if !offsets.is_empty() && !has_new_namespace(spec, LinuxNamespaceType::Time) {
            return Err(invalid("linux.timeOffsets", "offsets need a new time namespace"));
        }
        for clock in offsets.keys() {
            if clock != "monotonic" && clock != "boottime" {
                return Err(invalid(format!("linux.timeOffsets.{clock}"), "only monotonic and boottime exist"));
            }
        }
    }
    Ok(())
}

/// `linux.netDevices`: valid interface names, a network namespace to move them into, and no
/// two of them under one name in the container.
fn validate_net_devices(spec: &Spec) -> Result<(), SpecError> {
    let devs = spec.linux().as_ref().and_then(|l| l.net_devices().as_ref());
    let Some(devs) = devs.filter(|d| !d.is_empty()) else { return Ok(()) };
    if !has_namespace(spec, LinuxNamespaceType::Network) {
        return Err(invalid(
            "linux.netDevices",
            "moving interfaces needs a network namespace (linux.namespaces has none)",
        ));
    }
    let mut names = HashSet::new();
    let sorted: std::collections::BTreeMap<_, _> = devs.iter().collect();
    for (key, dev) in sorted {
        let field = format!("linux.netDevices.{key}");
        if !crate::netdev::valid_name(key, false) {
            return Err(invalid(field, format!("{key:?} is not a valid interface name")));
        }
        let name = crate::netdev::container_name(key, dev);
        if !crate::netdev::valid_name(name, true) {
            return Err(invalid(field + ".name", format!("{name:?} is not a valid interface name")));
        }
        if !name.contains('%') && !names.insert(name) {
            return Err(invalid(field + ".name", format!("another device is named {name} in the container too")));
        }
    }
    Ok(())
}

pub fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    namespace(spec, typ).is_some()
}

fn has_new_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    namespace(spec, typ).is_some_and(|ns| ns.path().is_none())
}

pub fn namespace(spec: &Spec, typ: LinuxNamespaceType) -> Option<&oci_spec::runtime::LinuxNamespace> {
    spec.linux().as_ref()?.namespaces().as_ref()?.iter().find(|ns| ns.typ() == typ)
}

/// Container ids become directory and cgroup names: keep them to a safe alphabet.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid("container id", format!("{id:?} is invalid: use letters, digits, '_', '+', '-', '.'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-1.2_x").is_ok());
        for bad in ["", ".", "..", "a/b", "../x", "a b"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_error_names_field() {
        let text = br#"{"ociVersion":"1.2.0","linux":{"namespaces":[{"type":"bogus"}]}}"#;
        let err = parse(text, Path::new("c.json")).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[0].type"), "{err}");
    }

    #[test]
    fn net_devices_checked() {
        let check = |linux: &str| {
            let text = format!(
                r#"{{"ociVersion":"1.3.0","process":{{"args":["sh"],"cwd":"/","user":{{"uid":0,"gid":0}}}},"linux":{linux}}}"#
            );
            validate(&parse(text.as_bytes(), Path::new("c.json")).unwrap()).map_err(|e| e.to_string())
        };
        let netns = r#""namespaces":[{"type":"network"}]"#;
        assert!(check(&format!(r#"{{{netns},"netDevices":{{"d0":{{"name":"eth0"}},"d1":{{}}}}}}"#)).is_ok());
        let err = check(r#"{"netDevices":{"d0":{}}}"#).unwrap_err();
        assert!(err.contains("linux.netDevices:") && err.contains("network namespace"), "{err}");
        let err = check(&format!(r#"{{{netns},"netDevices":{{"d0":{{"name":"bad/name"}}}}}}"#)).unwrap_err();
        assert!(err.contains("linux.netDevices.d0.name"), "{err}");
        let err =
            check(&format!(r#"{{{netns},"netDevices":{{"d0":{{"name":"x"}},"d1":{{"name":"x"}}}}}}"#)).unwrap_err();
        assert!(err.contains("linux.netDevices.d1.name"), "{err}");
    }

    #[test]
    fn mount_outside_root_refused() {
        let text = br#"{"ociVersion":"1.2.0","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},
            "mounts":[{"destination":"/../../etc","type":"tmpfs","source":"tmpfs"}]}"#;
        let spec = parse(text, Path::new("c.json")).unwrap();
        let err = validate(&spec).unwrap_err().to_string();
        assert!(err.contains("mounts[0].destination"), "{err}");
    }
}
