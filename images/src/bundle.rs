//! Bundles from images: `DIR/config.json` and `DIR/rootfs`, the rootfs an
//! overlay of the image's shared layers with `DIR/upper` and `DIR/work`, or
//! a copy. Removing one removes only what it made; the layers stay in the
//! store while an image or another bundle uses them. A bundle moved from
//! another host is made again here by `receive` (on this store's copy of its
//! image) or `receive_plain` (a rootfs sent whole).

use crate::rootfs::{self, RootfsError};
use crate::spec::{self, SpecError, SpecInputs, Volumes};
use crate::store::{BundleRecord, Image, Store, StoreError};
use crate::unpack::{self, Tree, UnpackError};
use serde_json::Value;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
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
    #[error("bundle {dir}: config.json: {source}")]
    Config { dir: PathBuf, source: serde_json::Error },
    #[error("{dir}: {source}")]
    Unpack { dir: PathBuf, source: UnpackError },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// Where the runtime finds the overlay it mounts inside the container (`mount_in_container`).
pub const OVERLAY_ANNOTATION: &str = "org.warren.rootfs.overlay";

/// How to make the bundle.
pub struct BundleOptions {
    pub image: String,
    /// A copy of the merged layers instead of an overlay mount.
    pub copy: bool,
    /// The overlay is not mounted here but by the runtime, inside the container's mount
    /// namespace, from the annotation `org.warren.rootfs.overlay` (see warren's `rootfs::overlay`).
    pub mount_in_container: bool,
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
    claim_dir(&dir)?;
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

fn populate(dir: &Path, image: &Image, base: Value, opts: &BundleOptions) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    mkdir(&root, 0o755)?;
    if opts.copy {
        rootfs::copy_layers(image.layer_dirs(), &root)?;
    } else {
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        mkdir(&upper, 0o755)?;
        mkdir(&work, 0o700)?;
        if !opts.mount_in_container {
            rootfs::mount_overlay(image.layer_dirs(), &upper, &work, &root)?;
        }
    }
    // With the overlay left to the runtime, the image's files (for the user's ids) are read
    // through a mount that is attached nowhere and goes when `view` is dropped.
    let view = match opts.mount_in_container && !opts.copy {
        true => Some(rootfs::detached_overlay(image.layer_dirs(), &dir.join("upper"), &dir.join("work"))?),
        false => None,
    };
    let rootfs_view =
        view.as_ref().map_or(root.clone(), |fd| PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    let inputs = SpecInputs {
        base,
        image_name: image.record().name(),
        image_digest: image.record().digest().as_str(),
        config: image.config(),
        bundle: dir,
        rootfs: &rootfs_view,
        args: &opts.args,
        terminal: opts.terminal,
        read_only: opts.read_only,
        volumes: opts.volumes,
    };
    let (mut spec, volume_dirs) = spec::generate(&inputs)?;
    if opts.mount_in_container && !opts.copy {
        let options = rootfs::annotation_options(image.layer_dirs(), &dir.join("upper"), &dir.join("work"))?;
        spec["annotations"][OVERLAY_ANNOTATION] = Value::String(options);
    }
    for v in volume_dirs {
        let p = dir.join(v);
        std::fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    let path = dir.join("config.json");
    let text = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::write(&path, text).map_err(io_err(&path))
}

/// Makes `dir` (0700: the rootfs holds set-id files no host user may run)
/// or takes it empty. Returns whether it made it.
fn claim_dir(dir: &Path) -> Result<bool, BundleError> {
    match std::fs::read_dir(dir).map(|mut rd| rd.next().is_none()) {
        Ok(false) => Err(BundleError::Exists { dir: dir.to_path_buf() }),
        Ok(true) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(dir, 0o700).map(|_| true),
        Err(e) => Err(io_err(dir)(e)),
    }
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

/// Makes the bundle at `dir` from a bundle of another host: `config_json`
/// as `DIR/config.json` (with this host's overlay annotation, if it had one), `DIR/upper` unpacked from `upper_tar`
/// (`transfer::write_layer_tar` of the sender's upper dir, read to its end)
/// over the layers of image `image_name` (so its `.wh.` entries white out
/// the image's paths), and the overlay mounted on `DIR/rootfs` (unless the
/// runtime is to mount it); recorded as
/// `create` records, so that [`remove`] removes it. `dir` must be missing or
/// empty. The store's lock is held only to record and to undo: not while
/// the tar comes in. On error, what it made is gone (mount, dirs, record).
pub fn receive(
    store: &Store,
    dir: &Path,
    image_name: &str,
    config_json: &[u8],
    upper_tar: impl Read,
) -> Result<PathBuf, BundleError> {
    let dir = absolute(dir)?;
    check_config(&dir, config_json)?;
    let (image, made) = {
        let _lock = store.lock(true)?;
        let image = store.image(image_name)?;
        let made = claim_dir(&dir)?;
        let layers = image.record().layers().to_vec();
        if let Err(e) = store.add_bundle(&BundleRecord::new(dir.clone(), image_name.into(), layers, true)) {
            undo_dir(&dir, made);
            return Err(e.into());
        }
        (image, made)
    };
    let result = receive_overlay(&dir, &image, config_json, upper_tar);
    if result.is_err() {
        let _lock = store.lock(true);
        let undone = remove_contents(&dir).map_err(|e| e.to_string()).and_then(|_| {
            undo_dir(&dir, made);
            store.forget_bundle(&dir).map_err(|e| e.to_string())
        });
        if let Err(e) = undone {
            log::warn!("undoing bundle {}: {e}", dir.display());
        }
    }
    result.map(|_| dir)
}

fn receive_overlay(dir: &Path, image: &Image, config_json: &[u8], upper_tar: impl Read) -> Result<(), BundleError> {
    let (root, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
    mkdir(&root, 0o755)?;
    mkdir(&upper, 0o755)?;
    mkdir(&work, 0o700)?;
    unpack_tar(&upper, image.layer_dirs(), upper_tar)?;
    // The sender's overlay paths mean nothing here (and must not pick host dirs): a bundle
    // whose runtime mounts the overlay gets this host's, the others are mounted now.
    let mut config = parse_config(dir, config_json)?;
    let in_container = annotations_of(&mut config).remove(OVERLAY_ANNOTATION).is_some();
    if in_container {
        let options = rootfs::annotation_options(image.layer_dirs(), &upper, &work)?;
        annotations_of(&mut config).insert(OVERLAY_ANNOTATION.into(), Value::String(options));
    } else {
        rootfs::mount_overlay(image.layer_dirs(), &upper, &work, &root)?;
    }
    write_config(dir, &config)
}

fn parse_config(dir: &Path, config_json: &[u8]) -> Result<serde_json::Map<String, Value>, BundleError> {
    serde_json::from_slice(config_json).map_err(|source| BundleError::Config { dir: dir.to_path_buf(), source })
}

fn annotations_of(config: &mut serde_json::Map<String, Value>) -> &mut serde_json::Map<String, Value> {
    let a = config.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    if !a.is_object() {
        *a = Value::Object(Default::default());
    }
    a.as_object_mut().expect("made an object above")
}

fn write_config(dir: &Path, config: &serde_json::Map<String, Value>) -> Result<(), BundleError> {
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).expect("JSON serializes")).map_err(io_err(&path))
}

/// Makes a plain bundle at `dir` (missing or empty) from another host's:
/// `config_json` as `DIR/config.json` (without an overlay annotation) and `DIR/rootfs` unpacked
/// from `rootfs_tar` (read to its end; no whiteouts: there is nothing below).
/// No store record: [`remove_plain`] removes it. On error, what it made is gone.
pub fn receive_plain(dir: &Path, config_json: &[u8], rootfs_tar: impl Read) -> Result<PathBuf, BundleError> {
    let dir = absolute(dir)?;
    check_config(&dir, config_json)?;
    let made = claim_dir(&dir)?;
    let result = receive_rootfs(&dir, config_json, rootfs_tar);
    if result.is_err() {
        if let Err(e) = remove_plain_contents(&dir) {
            log::warn!("undoing bundle {}: {e}", dir.display());
        }
        undo_dir(&dir, made);
    }
    result.map(|_| dir)
}

fn receive_rootfs(dir: &Path, config_json: &[u8], rootfs_tar: impl Read) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    mkdir(&root, 0o755)?;
    unpack_tar(&root, &[], rootfs_tar)?;
    // A plain bundle has no overlay: the sender must not pick this host's dirs for one.
    let mut config = parse_config(dir, config_json)?;
    annotations_of(&mut config).remove(OVERLAY_ANNOTATION);
    write_config(dir, &config)
}

/// Removes a bundle [`receive_plain`] made: `DIR/rootfs`, `DIR/config.json`,
/// and `DIR` if nothing else is in it. (A store's bundles go with [`remove`].)
pub fn remove_plain(dir: &Path) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    if rootfs::is_mount_point(&root).map_err(io_err(&root))? {
        return Err(BundleError::StillMounted { dir: dir.to_path_buf() });
    }
    remove_plain_contents(dir)?;
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn remove_plain_contents(dir: &Path) -> Result<(), BundleError> {
    let root = dir.join("rootfs");
    match std::fs::remove_dir_all(&root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&root)(e)),
        _ => {}
    }
    let path = dir.join("config.json");
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
        _ => Ok(()),
    }
}

/// Removes `dir` if this receive made it (it is empty by now).
fn undo_dir(dir: &Path, made: bool) {
    if made {
        if let Err(e) = std::fs::remove_dir(dir) {
            log::warn!("{}: {e}", dir.display());
        }
    }
}

/// A config.json must at least be a JSON object.
fn check_config(dir: &Path, config_json: &[u8]) -> Result<(), BundleError> {
    serde_json::from_slice::<serde_json::Map<String, Value>>(config_json)
        .map(drop)
        .map_err(|source| BundleError::Config { dir: dir.to_path_buf(), source })
}

/// Unpacks a layer tar into the empty directory `out` over `lowers` (bottom
/// first), then reads the stream to its end.
fn unpack_tar(out: &Path, lowers: &[PathBuf], tar: impl Read) -> Result<(), BundleError> {
    let mut tree = Tree::new();
    for (i, fs) in lowers.iter().enumerate() {
        tree.load_layer(i, fs).map_err(io_err(fs))?;
    }
    tree.begin_layer(lowers.len());
    let unpack_err = |source| BundleError::Unpack { dir: out.to_path_buf(), source };
    let (mut rest, _) = unpack::unpack_layer(tar, out, &mut tree, lowers).map_err(unpack_err)?;
    io::copy(&mut rest, &mut io::sink()).map_err(|source| unpack_err(UnpackError::Tar { source }))?;
    Ok(())
}
