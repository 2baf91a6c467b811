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
use std::path::{Path, PathBuf};

pub const ANNOTATION: &str = "org.warren.rootfs.overlay";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootfsOverlay {
    /// Top layer first, as overlayfs lists them.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("annotations[\"{ANNOTATION}\"]: {message}")]
    Syntax { message: String },
    #[error("annotations[\"{ANNOTATION}\"]: {key} {path}: {source}")]
    Dir { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("annotations[\"{ANNOTATION}\"]: mount the overlay: {source}")]
    Mount { source: std::io::Error },
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
        for part in text.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| syntax(format!("{part:?} is not KEY=VALUE")))?;
            let slot = match key {
                "lowerdir" => &mut lower,
                "upperdir" => &mut upper,
                "workdir" => &mut work,
                _ => return Err(syntax(format!("unknown key {key:?} (lowerdir, upperdir, workdir)"))),
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
        format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), self.upper.display(), self.work.display())
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

    /// The overlay as a mount that no namespace holds yet (see the module doc).
    pub fn detached_mount(&self) -> Result<std::os::fd::OwnedFd, OverlayError> {
        let lower: Vec<&Path> = self.lower.iter().map(PathBuf::as_path).collect();
        crate::sys::detached_overlay(&lower, &self.upper, &self.work).map_err(|source| OverlayError::Mount { source })
    }
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
    }

    #[test]
    fn refuses_what_overlayfs_would_misread() {
        for bad in [
            "lowerdir=/a,upperdir=/u",
            "lowerdir=/a,upperdir=/u,workdir=/w,index=on",
            "lowerdir=/a,lowerdir=/b,upperdir=/u,workdir=/w",
            "lowerdir=a,upperdir=/u,workdir=/w",
            "lowerdir=/a,upperdir=/u,workdir",
        ] {
            let e = RootfsOverlay::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("annotations[\"org.warren.rootfs.overlay\"]: "), "{bad}: {e}");
        }
    }
}
