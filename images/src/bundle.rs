//! Bundles from images: `DIR/config.json` and `DIR/rootfs`, the rootfs an
//! overlay of the image's shared layers with `DIR/upper` and `DIR/work`, or
//! a copy. Removing one removes only what it made; the layers stay in the
//! store while an image or another bundle uses them.

use crate::rootfs::{self, RootfsError};
use crate::spec::{self, SpecError, SpecInputs, Volumes};
use crate::store::{BundleRecord, Store, StoreError};
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("bundle {dir}: already exists and is not empty")]
    Exists { dir: PathBuf },
    #[error("bundle {dir}: not made by `bundle create` with this store")]
    NotOurs { dir: PathBuf },
    #[error("bundle {dir}: rootfs is still mounted")]
    StillMounted { dir: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// How to make the bundle.
pub struct BundleOptions {
    pub image: String,
    /// A copy of the merged layers instead of an overlay mount.
    pub copy: bool,
    /// Replaces the image's Cmd when not empty.
    pub args: Vec<String>,
    pub terminal: bool,
    pub read_only: bool,
    pub volumes: Volumes,
}

/// The bundle path as recorded: absolute, its parent's symlinks resolved.
fn absolute(dir: &Path) -> Result<PathBuf, BundleError> {
    let name = dir.file_name().ok_or_else(|| BundleError::Exists { dir: dir.to_path_buf() })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(parent.canonicalize().map_err(io_err(parent))?.join(name))
}

/// Makes the bundle at `dir` from image `opts.image`, with `base` (the
/// runtime's default spec, a plan's resources in it) under the image config.
pub fn create(store: &Store, dir: &Path, base: Value, opts: &BundleOptions) -> Result<PathBuf, BundleError> {
    let dir = absolute(dir)?;
    let _lock = store.lock(true)?;
    let image = store.image(&opts.image)?;
    match std::fs::read_dir(&dir).map(|mut rd| rd.next().is_none()) {
        Ok(false) => return Err(BundleError::Exists { dir }),
        Ok(true) => {}
        // 0700: the rootfs holds the image's set-id files, which no host user may run.
        Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&dir, 0o700)?,
        Err(e) => return Err(io_err(&dir)(e)),
    }
    let layers = if opts.copy { Vec::new() } else { image.record().layers().to_vec() };
    // The record first: layers in use are never collected, even after a crash here.
    store.add_bundle(&BundleRecord::new(dir.clone(), opts.image.clone(), layers, !opts.copy))?;
    let made = populate(&dir, &image, base, opts);
    if made.is_err() {
        let _ = remove_contents(&dir);
        let _ = std::fs::remove_dir(&dir);
        store.forget_bundle(&dir)?;
    }
    made.map(|_| dir)
}

fn populate(dir: &Path, image: &crate::store::Image, base: Value, opts: &BundleOptions) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    mkdir(&root, 0o755)?;
    if opts.copy {
        rootfs::copy_layers(image.layer_dirs(), &root)?;
    } else {
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        mkdir(&upper, 0o755)?;
        mkdir(&work, 0o700)?;
        rootfs::mount_overlay(image.layer_dirs(), &upper, &work, &root)?;
    }
    let inputs = SpecInputs {
        base,
        image_name: image.record().name(),
        image_digest: image.record().digest().as_str(),
        config: image.config(),
        bundle: dir,
        args: &opts.args,
        terminal: opts.terminal,
        read_only: opts.read_only,
        volumes: opts.volumes,
    };
    let (spec, volume_dirs) = spec::generate(&inputs)?;
    for v in volume_dirs {
        let p = dir.join(v);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let path = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::write(&path, text).map_err(io_err(&path))
}

fn mkdir(path: &Path, mode: u32) -> Result<(), BundleError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(mode).create(path).map_err(io_err(path))
}

/// Unmounts the rootfs and removes what `create` made inside `dir`.
fn remove_contents(dir: &Path) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    rootfs::unmount(&root)?;
    if rootfs::is_mount_point(&root).map_err(io_err(&root))? {
        return Err(BundleError::StillMounted { dir: dir.to_path_buf() });
    }
    for name in ["rootfs", "upper", "work", "volumes"] {
        let p = dir.join(name);
        match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&p)(e)),
            _ => {}
        }
    }
    let p = dir.join("config.json");
    match std::fs::remove_file(&p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&p)(e)),
        _ => Ok(()),
    }
}

/// Removes a bundle `create` made: its mount, upper dir and files, never the
/// image's layers (unless nothing else uses them any more).
pub fn remove(store: &Store, dir: &Path) -> Result<(), BundleError> {
    let dir = absolute(dir)?;
    let _lock = store.lock(true)?;
    if store.bundle(&dir)?.is_none() {
        return Err(BundleError::NotOurs { dir });
    }
    remove_contents(&dir)?;
    // Anything else the user put there stays.
    let _ = std::fs::remove_dir(&dir);
    store.forget_bundle(&dir)?;
    Ok(())
}
