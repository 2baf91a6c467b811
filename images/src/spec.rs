//! config.json for a container from an image: the runtime's secure default
//! spec, with the image config's Entrypoint, Cmd, Env, WorkingDir, User,
//! StopSignal, Labels and Volumes applied.

use crate::rootfs::read_in_root;
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Map, Value};
use std::path::Path;

/// The annotation OCI's conversion rules give the image's StopSignal.
pub const STOP_SIGNAL_ANNOTATION: &str = "org.opencontainers.image.stopSignal";
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
pub const DIGEST_ANNOTATION: &str = "dev.warren.image.digest";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image {image}: no Entrypoint or Cmd, and no command given")]
    NoCommand { image: String },
    #[error("image {image}: User {user:?}: {why}")]
    User { image: String, user: String, why: String },
    #[error("image {image}: volume {volume:?} is not an absolute path")]
    Volume { image: String, volume: String },
    #[error("image {image}: reading {file} in its rootfs: {source}")]
    Read { image: String, file: &'static str, source: std::io::Error },
}

/// How the image's Volumes are provided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Volumes {
    /// A fresh tmpfs at each.
    Tmpfs,
    /// A directory of the bundle (`volumes/N`), bind mounted.
    Bind,
}

/// What shapes the spec besides the image config.
pub struct SpecInputs<'a> {
    /// The runtime's default spec (`warren spec`).
    pub base: Value,
    pub image_name: &'a str,
    pub image_digest: &'a str,
    pub config: &'a ImageConfiguration,
    /// The bundle directory: bind volumes go in it.
    pub bundle: &'a Path,
    /// The merged image files as the container will see them (/etc/passwd, /etc/group).
    pub rootfs: &'a Path,
    /// Replaces the image's Cmd when not empty.
    pub args: &'a [String],
    pub terminal: bool,
    pub read_only: bool,
    pub volumes: Volumes,
}

/// Builds the spec; for `Volumes::Bind` also returns the bundle-relative
/// directories the volumes need (the caller makes them).
pub fn generate(inp: &SpecInputs) -> Result<(Value, Vec<String>), SpecError> {
    let mut spec = inp.base.clone();
    let image = inp.image_name.to_string();
    let cfg = inp.config.config().clone().unwrap_or_default();
    let mut args: Vec<String> = cfg.entrypoint().clone().unwrap_or_default();
    if inp.args.is_empty() {
        args.extend(cfg.cmd().clone().unwrap_or_default());
    } else {
        args.extend(inp.args.iter().cloned());
    }
    if args.is_empty() {
        return Err(SpecError::NoCommand { image });
    }
    let process = &mut spec["process"];
    process["args"] = json!(args);
    process["terminal"] = json!(inp.terminal);
    process["env"] = json!(merge_env(process["env"].as_array(), cfg.env().as_deref().unwrap_or_default()));
    let cwd = cfg.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    process["cwd"] = json!(if cwd.starts_with('/') { cwd } else { format!("/{cwd}") });
    let user = cfg.user().clone().unwrap_or_default();
    process["user"] = resolve_user(&user, inp.rootfs).map_err(|why| match why {
        UserError::Read(file, source) => SpecError::Read { image: image.clone(), file, source },
        UserError::Invalid(why) => SpecError::User { image: image.clone(), user: user.clone(), why },
    })?;
    spec["root"] = json!({"path": "rootfs", "readonly": inp.read_only});
    let annotations = annotations(&mut spec);
    for (k, v) in cfg.labels().clone().unwrap_or_default() {
        // An image must not choose the host directories its rootfs is mounted from.
        if k == crate::bundle::OVERLAY_ANNOTATION {
            log::warn!("image {image}: label {k} ignored");
            continue;
        }
        annotations.insert(k, json!(v));
    }
    if let Some(sig) = cfg.stop_signal() {
        annotations.insert(STOP_SIGNAL_ANNOTATION.into(), json!(sig));
    }
    annotations.insert(REF_NAME_ANNOTATION.into(), json!(inp.image_name));
    annotations.insert(DIGEST_ANNOTATION.into(), json!(inp.image_digest));
    let volumes = cfg.volumes().as_deref().unwrap_or_default();
    let dirs = add_volumes(&mut spec, volumes, inp.volumes, inp.bundle, &image)?;
    Ok((spec, dirs))
}

fn annotations(spec: &mut Value) -> &mut Map<String, Value> {
    if !spec["annotations"].is_object() {
        spec["annotations"] = json!({});
    }
    spec["annotations"].as_object_mut().expect("object")
}

/// The base env with the image's on top (same variable: the image wins).
fn merge_env(base: Option<&Vec<Value>>, image: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
    for e in image {
        let key = e.split('=').next().unwrap_or(e);
        out.retain(|o| o.split('=').next() != Some(key));
        out.push(e.clone());
    }
    out
}

/// Mounts for the image's Volumes; returns the bundle-relative directories
/// that bind volumes need.
fn add_volumes(
    spec: &mut Value,
    volumes: &[String],
    how: Volumes,
    bundle: &Path,
    image: &str,
) -> Result<Vec<String>, SpecError> {
    let mut dirs = Vec::new();
    let mut vols: Vec<&String> = volumes.iter().collect();
    vols.sort();
    for (i, v) in vols.into_iter().enumerate() {
        if !v.starts_with('/') {
            return Err(SpecError::Volume { image: image.into(), volume: v.clone() });
        }
        let mounts = spec["mounts"].as_array_mut().expect("the base spec has mounts");
        if mounts.iter().any(|m| m["destination"] == json!(v)) {
            continue;
        }
        let m = match how {
            Volumes::Tmpfs => {
                json!({"destination": v, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]})
            }
            Volumes::Bind => {
                let dir = format!("volumes/{i}");
                let source = bundle.join(&dir);
                let m = json!({"destination": v, "type": "bind", "source": source, "options": ["rbind", "nosuid", "nodev"]});
                dirs.push(dir);
                m
            }
        };
        mounts.push(m);
    }
    Ok(dirs)
}

enum UserError {
    Read(&'static str, std::io::Error),
    Invalid(String),
}

/// One `name:x:id:...` line's name and fields.
fn find_line(file: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<String>> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| pred(f))
        .map(|f| f.iter().map(|s| s.to_string()).collect())
}

fn read_text(root: &Path, file: &'static str) -> Result<String, UserError> {
    let bytes = read_in_root(root, file).map_err(|e| UserError::Read(file, e))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default())
}

/// The image's User (`user`, `uid`, `user:group`, `uid:gid`, ...) as an OCI
/// process.user, names looked up in the rootfs as the container sees it.
fn resolve_user(user: &str, root: &Path) -> Result<Value, UserError> {
    if user.is_empty() {
        return Ok(json!({"uid": 0, "gid": 0}));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = read_text(root, "etc/passwd")?;
    let entry = find_line(&passwd, |f| f.len() >= 4 && (f[0] == u || f[2] == u));
    let uid: u32 = match (u.parse(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| UserError::Invalid(format!("bad uid in /etc/passwd for {u}")))?,
        (Err(_), None) => return Err(UserError::Invalid(format!("no user {u:?} in /etc/passwd"))),
    };
    let group = read_text(root, "etc/group")?;
    let gid: u32 = match g {
        Some(g) => match (g.parse(), find_line(&group, |f| f.len() >= 3 && f[0] == g)) {
            (Ok(n), _) => n,
            (Err(_), Some(f)) => f[2].parse().map_err(|_| UserError::Invalid(format!("bad gid for group {g}")))?,
            (Err(_), None) => return Err(UserError::Invalid(format!("no group {g:?} in /etc/group"))),
        },
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let name = entry.as_ref().map(|f| f[0].clone());
    let mut extra: Vec<u32> = Vec::new();
    if let (Some(name), None) = (&name, g) {
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].split(',').any(|m| m == name) {
                if let Ok(id) = f[2].parse::<u32>() {
                    if id != gid && !extra.contains(&id) {
                        extra.push(id);
                    }
                }
            }
        }
    }
    let mut v = json!({"uid": uid, "gid": gid});
    if !extra.is_empty() {
        v["additionalGids"] = json!(extra);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_env_overrides_base() {
        let base = vec![json!("PATH=/bin"), json!("TERM=xterm")];
        let out = merge_env(Some(&base), &["PATH=/usr/bin".into(), "A=b=c".into()]);
        assert_eq!(out, vec!["TERM=xterm", "PATH=/usr/bin", "A=b=c"]);
    }

    #[test]
    fn users_resolve_in_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\nweb:x:33:34::/:/bin/sh\n").unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nweb:x:34:\nlogs:x:4:web,other\n").unwrap();
        let u = |s: &str| resolve_user(s, root.path()).ok();
        assert_eq!(u("web"), Some(json!({"uid": 33, "gid": 34, "additionalGids": [4]})));
        assert_eq!(u("33:logs"), Some(json!({"uid": 33, "gid": 4})));
        assert_eq!(u("1000:1000"), Some(json!({"uid": 1000, "gid": 1000})));
        assert_eq!(u("1000"), Some(json!({"uid": 1000, "gid": 0})));
        assert!(u("nobody").is_none());
        assert!(u("web:nogroup").is_none());
    }
}
