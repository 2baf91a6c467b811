//! A rootfs that is an overlay mounted only inside the container's own mount
//! namespace. The bundle says so with the annotation `org.warren.rootfs.overlay`
//! (overlayfs' own option syntax: `lowerdir=TOP:...:BOTTOM,upperdir=U,workdir=W`),
//! and `root.path` is an empty directory on the host.
//!
//! Why: a rootfs mounted on the host is one more mount in the host's table for
//! every tenant, and every new mount namespace copies that table (and tears
//! the copy down after pivot_root), so each start got slower as the host filled.
//! Here the runtime builds the overlay as a detached mount (fsopen/fsmount:
//! in no table) while it is still privileged on the host, and the init
//! attaches it at `root.path` inside its new namespace.

use serde::{Deserialize, Serialize};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::spec::IdMaps;
pub use warren_images::bundle::OVERLAY_ANNOTATION as ANNOTATION;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsOverlay {
    /// Top layer first, as overlayfs lists them.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// `index=off` (containerd's snapshotter asks for it): no inode index, whatever the
    /// kernel's default, so a later mount of the same upper dir is not refused as in use.
    pub index_off: bool,
    /// `idmap` (Warren's own): each lower dir is mounted through the container's
    /// `linux.uidMappings`/`gidMappings`, so that a shared image layer owned by host root
    /// reads as owned by the container's root without a chowned copy per container.
    pub idmap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("annotations[\"{ANNOTATION}\"]: {message}")]
    Syntax { message: String },
    #[error("annotations[\"{ANNOTATION}\"]: {key} {path}: {source}")]
    Dir { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("annotations[\"{ANNOTATION}\"]: mount the overlay: {source}")]
    Mount { source: std::io::Error },
    #[error("annotations[\"{ANNOTATION}\"]: idmap: {message}")]
    Idmap { message: String },
    #[error("annotations[\"{ANNOTATION}\"]: idmap lowerdir {path}: {source}")]
    IdmapLayer { path: PathBuf, source: std::io::Error },
}

fn syntax(message: impl Into<String>) -> OverlayError {
    OverlayError::Syntax { message: message.into() }
}

impl RootfsOverlay {
    /// The overlay a config asks for, if any; only the syntax is checked here.
    pub fn from_annotations<'a>(
        mut annotations: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Result<Option<RootfsOverlay>, OverlayError> {
        match annotations.find(|(k, _)| k.as_str() == ANNOTATION) {
            Some((_, v)) => RootfsOverlay::parse(v).map(Some),
            None => Ok(None),
        }
    }

    pub fn parse(text: &str) -> Result<RootfsOverlay, OverlayError> {
        let (mut lower, mut upper, mut work) = (None, None, None);
        let (mut index_off, mut idmap) = (false, false);
        for part in text.split(',') {
            if part == "index=off" || part == "idmap" {
                *(if part == "idmap" { &mut idmap } else { &mut index_off }) = true;
                continue;
            }
            let (key, value) = part.split_once('=').ok_or_else(|| syntax(format!("{part:?} is not KEY=VALUE")))?;
            let slot = match key {
                "lowerdir" => &mut lower,
                "upperdir" => &mut upper,
                "workdir" => &mut work,
                _ => {
                    return Err(syntax(format!("unknown key {key:?} (lowerdir, upperdir, workdir, index=off, idmap)")))
                }
            };
            if slot.replace(value).is_some() {
                return Err(syntax(format!("{key} given twice")));
            }
        }
        fn need<'a>(v: Option<&'a str>, key: &str) -> Result<&'a str, OverlayError> {
            v.ok_or_else(|| syntax(format!("{key} is missing")))
        }
        let lower: Vec<PathBuf> = need(lower, "lowerdir")?.split(':').map(PathBuf::from).collect();
        let overlay = RootfsOverlay {
            lower,
            upper: PathBuf::from(need(upper, "upperdir")?),
            work: PathBuf::from(need(work, "workdir")?),
            index_off,
            idmap,
        };
        for p in overlay.lower.iter().chain([&overlay.upper, &overlay.work]) {
            if !p.is_absolute() {
                return Err(syntax(format!("{} is not an absolute path", p.display())));
            }
        }
        Ok(overlay)
    }

    /// The annotation's value for this overlay.
    pub fn to_annotation(&self) -> String {
        let lower: Vec<String> = self.lower.iter().map(|p| p.display().to_string()).collect();
        let index = if self.index_off { ",index=off" } else { "" };
        let idmap = if self.idmap { ",idmap" } else { "" };
        let (upper, work) = (self.upper.display(), self.work.display());
        format!("lowerdir={},upperdir={upper},workdir={work}{index}{idmap}", lower.join(":"))
    }

    /// Every directory must exist before anything of the container is made.
    pub fn check_dirs(&self) -> Result<(), OverlayError> {
        let named =
            self.lower.iter().map(|p| ("lowerdir", p)).chain([("upperdir", &self.upper), ("workdir", &self.work)]);
        for (key, path) in named {
            match std::fs::metadata(path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    let source = std::io::Error::from(std::io::ErrorKind::NotADirectory);
                    return Err(OverlayError::Dir { key, path: path.clone(), source });
                }
                Err(source) => return Err(OverlayError::Dir { key, path: path.clone(), source }),
            }
        }
        Ok(())
    }

    /// The overlay as a mount that no namespace holds yet (see the module doc); with `idmap`,
    /// its lower dirs are idmapped clones through `maps` (the container's user namespace).
    pub fn detached_mount(&self, maps: Option<&IdMaps>) -> Result<std::os::fd::OwnedFd, OverlayError> {
        let clones = match (self.idmap, maps) {
            (false, _) => Vec::new(),
            (true, None) => {
                let message = "needs a new user namespace with linux.uidMappings and gidMappings".to_string();
                return Err(OverlayError::Idmap { message });
            }
            (true, Some(maps)) => self.idmapped_lowers(maps)?,
        };
        // The clones are attached nowhere: overlayfs reaches them through their fds' magic links.
        let clone_paths: Vec<PathBuf> =
            clones.iter().map(|fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))).collect();
        let named = if self.idmap { &clone_paths } else { &self.lower };
        let lower: Vec<&Path> = named.iter().map(PathBuf::as_path).collect();
        warren_images::rootfs::detached_overlay_listed(&lower, &self.upper, &self.work, self.index_off)
            .map_err(|source| OverlayError::Mount { source })
    }

    fn idmapped_lowers(&self, maps: &IdMaps) -> Result<Vec<std::os::fd::OwnedFd>, OverlayError> {
        let userns = crate::sys::userns_with_maps(&maps.uid_map, &maps.gid_map)
            .map_err(|e| OverlayError::Idmap { message: format!("a user namespace with the container's maps: {e}") })?;
        self.lower
            .iter()
            .map(|path| {
                crate::sys::idmapped_clone(path, userns.as_raw_fd())
                    .map_err(|source| OverlayError::IdmapLayer { path: path.clone(), source })
            })
            .collect()
    }
}

/// Removes the empty directories and files criu's restore makes under the host's `rootfs`
/// directory (mount points of the restored mounts, made below the attached overlay rather
/// than in it), so that it stays the empty directory it is: containerd removes a bundle's
/// rootfs with rmdir. Nothing with content is touched, nor anything on another file system.
pub fn remove_stand_ins(rootfs: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(rootfs) else { return };
    fn walk(dir: &Path, dev: u64) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if meta.dev() != dev {
                continue;
            }
            if meta.is_dir() {
                walk(&path, dev);
                let _ = std::fs::remove_dir(&path);
            } else if meta.is_file() && meta.len() == 0 {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    walk(rootfs, top.dev());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_overlay_options() {
        let text = "lowerdir=/s/l2:/s/l1,upperdir=/b/upper,workdir=/b/work";
        let o = RootfsOverlay::parse(text).unwrap();
        assert_eq!(o.lower, vec![PathBuf::from("/s/l2"), PathBuf::from("/s/l1")]);
        assert_eq!(o.upper, PathBuf::from("/b/upper"));
        assert_eq!(o.to_annotation(), text);
        let containerd = "index=off,workdir=/s/9/work,upperdir=/s/9/fs,lowerdir=/s/1/fs";
        let o = RootfsOverlay::parse(containerd).unwrap();
        assert!(o.index_off);
        assert_eq!(o.to_annotation(), "lowerdir=/s/1/fs,upperdir=/s/9/fs,workdir=/s/9/work,index=off");
        let idmapped = "lowerdir=/s/l1,upperdir=/b/upper,workdir=/b/work,idmap";
        let o = RootfsOverlay::parse(idmapped).unwrap();
        assert!(o.idmap && !o.index_off);
        assert_eq!(o.to_annotation(), idmapped);
    }

    #[test]
    fn refuses_what_overlayfs_would_misread() {
        for bad in [
            "lowerdir=/a,upperdir=/u",
            "lowerdir=/a,upperdir=/u,workdir=/w,index=on",
            "lowerdir=/a,upperdir=/u,workdir=/w,metacopy=on",
            "lowerdir=/a,lowerdir=/b,upperdir=/u,workdir=/w",
            "lowerdir=a,upperdir=/u,workdir=/w",
            "lowerdir=/a,upperdir=/u,workdir",
        ] {
            let e = RootfsOverlay::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("annotations[\"org.warren.rootfs.overlay\"]: "), "{bad}: {e}");
        }
    }

    #[test]
    fn stand_ins_go_and_content_stays() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("run/lock")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hosts"), b"").unwrap();
        std::fs::create_dir_all(root.join("kept")).unwrap();
        std::fs::write(root.join("kept/note"), b"mine").unwrap();
        remove_stand_ins(root);
        let left: Vec<_> = std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("kept")]);
        assert_eq!(std::fs::read(root.join("kept/note")).unwrap(), b"mine");
    }
}
