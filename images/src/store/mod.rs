//! The image store: unpacked layers named by chain id (one copy each, shared
//! by every image and container rootfs on top of it), image and bundle
//! records that reference them, and a lock for mutations.
//!
//! ```text
//! STORE/lock                     flock: exclusive for changes, shared for reads
//! STORE/tmp/                     imports in progress (anything here after a crash is garbage)
//! STORE/layers/CHAIN/fs/         an unpacked layer, overlayfs form
//! STORE/layers/CHAIN/layer.json
//! STORE/blobs/sha256/HEX         image configs
//! STORE/images/NAME.json         image records
//! STORE/bundles/HASH.json        bundles made from images (their layers stay)
//! STORE/receiving/ID/            receives in progress: leases on layers (see receive)
//! ```
//! Layers are referenced from the records, never counted in place: a crash
//! cannot leave a wrong count, and unreferenced layers are collected after
//! every change.

mod import;
mod receive;
mod records;

pub use import::{ImportOptions, Progress};
pub use receive::Receiving;
pub use records::{BundleRecord, ImageRecord, LayerRecord};

use crate::digest::Digest;
use crate::source::SourceError;
use crate::unpack::UnpackError;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::ImageConfiguration;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Where the store lives unless told otherwise.
pub const DEFAULT_STORE: &str = "/var/lib/warren";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("layer {blob}: {source}")]
    Layer { blob: String, source: UnpackError },
    #[error("layer {blob}: {format}: {source}")]
    Decompress { blob: String, format: &'static str, source: io::Error },
    #[error("layer {blob}: uncompressed content has digest {actual}, the config's diff_id is {expected}")]
    DiffIdMismatch { blob: String, expected: Digest, actual: Digest },
    #[error("image name {name:?}: use 1-255 characters of A-Z a-z 0-9 . _ - / : @")]
    BadName { name: String },
    #[error("no image named {name:?}")]
    NoImage { name: String },
    #[error("store {path}: a record names layer {layer}, which is missing")]
    MissingLayer { path: PathBuf, layer: Digest },
    #[error("image {image}: config blob has digest {actual}, not {expected}")]
    ConfigDigest { image: String, expected: Digest, actual: Digest },
    #[error("image {image}: config blob: {source}")]
    BadConfig { image: String, source: serde_json::Error },
    #[error("image {image}: the layers' diff ids are not the ones its config lists")]
    ConfigLayers { image: String },
    #[error("image {image}: layer {layer}: its parent's chain id and its diff id make chain id {expected}")]
    ChainId { image: String, layer: Digest, expected: Digest },
    #[error("image {image}: layer {layer} is not in this store yet (layers go bottom first, the image last)")]
    LayerAbsent { image: String, layer: Digest },
    #[error("image {image}: layer {layer} is not one of its layers")]
    NotInImage { image: String, layer: Digest },
    #[error("image {name}: this store has another image of that name ({have})")]
    ImageConflict { name: String, have: Digest },
    #[error("bundle {dir}: image {image:?}, which it was made from, has been removed or replaced since")]
    BundleImageGone { dir: PathBuf, image: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

pub struct Store {
    root: PathBuf,
}

/// Holds the store's flock until dropped.
pub struct StoreLock(#[allow(dead_code)] Flock<File>);

/// An image as `list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageInfo {
    name: String,
    digest: Digest,
    /// Bytes of unpacked file content over all its layers.
    size: u64,
    layers: usize,
    /// How many of its layers other images use too.
    shared: usize,
}

impl ImageInfo {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn layers(&self) -> usize {
        self.layers
    }
    pub fn shared(&self) -> usize {
        self.shared
    }
}

/// An image ready to make rootfs from.
pub struct Image {
    record: ImageRecord,
    config: ImageConfiguration,
    /// Its layers' directories, bottom first.
    layer_dirs: Vec<PathBuf>,
}

impl Image {
    pub fn record(&self) -> &ImageRecord {
        &self.record
    }
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }
    pub fn layer_dirs(&self) -> &[PathBuf] {
        &self.layer_dirs
    }
}

/// Whether `name` may name an image.
pub fn valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
        && !name.starts_with(['.', '/', '-'])
}

/// An image name as a file name: bytes other than A-Z a-z 0-9 . _ - as %XX.
fn file_name(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Store {
    /// Opens (creating if needed) the store at `root`. A new store is 0700:
    /// its layers hold the images' set-id files, which no host user may run.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        if !root.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(root).map_err(io_err(root))?;
        }
        for sub in ["tmp", "layers", "blobs/sha256", "images", "bundles"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Absolute: its layer paths go into bundles' config.json, read from another cwd.
        let root = root.canonicalize().map_err(io_err(root))?;
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store's lock: exclusive to change it, shared to read it.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock, StoreError> {
        let path = self.root.join("lock");
        let f = File::options().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let arg = if exclusive { FlockArg::LockExclusive } else { FlockArg::LockShared };
        let lock = Flock::lock(f, arg).map_err(|(_, e)| StoreError::Io { path, source: e.into() })?;
        Ok(StoreLock(lock))
    }

    fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.root.join("layers").join(chain.hex())
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.root.join("images").join(format!("{}.json", file_name(name)))
    }

    fn bundle_path(&self, dir: &Path) -> PathBuf {
        let key = Digest::of(dir.as_os_str().as_encoded_bytes());
        self.root.join("bundles").join(format!("{}.json", &key.hex()[..32]))
    }

    fn config_path(&self, config: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(config.hex())
    }

    /// Every image record.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        records::read_all(&self.root.join("images"))
    }

    pub fn bundles(&self) -> Result<Vec<BundleRecord>, StoreError> {
        records::read_all(&self.root.join("bundles"))
    }

    fn layer_record(&self, chain: &Digest) -> Result<LayerRecord, StoreError> {
        records::read(&self.layer_dir(chain).join("layer.json"))
    }

    /// The images, with sizes and how many layers each shares with others.
    pub fn list(&self) -> Result<Vec<ImageInfo>, StoreError> {
        let _lock = self.lock(false)?;
        let images = self.images()?;
        let mut users: HashMap<&Digest, usize> = HashMap::new();
        for img in &images {
            for l in img.layers() {
                *users.entry(l).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for img in &images {
            let mut size = 0;
            for l in img.layers() {
                size += self.layer_record(l).map(|r| r.bytes()).unwrap_or(0);
            }
            let shared = img.layers().iter().filter(|l| users[l] > 1).count();
            let (name, digest, layers) = (img.name().to_string(), img.digest().clone(), img.layers().len());
            out.push(ImageInfo { name, digest, size, layers, shared });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The image named `name`, its config and layer directories.
    pub fn image(&self, name: &str) -> Result<Image, StoreError> {
        let path = self.image_path(name);
        if !path.exists() {
            return Err(StoreError::NoImage { name: name.into() });
        }
        let record: ImageRecord = records::read(&path)?;
        let cpath = self.config_path(record.config());
        let bytes = std::fs::read(&cpath).map_err(io_err(&cpath))?;
        let config = serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path: cpath, source })?;
        let mut layer_dirs = Vec::new();
        for l in record.layers() {
            let fs = self.layer_dir(l).join("fs");
            if !fs.is_dir() {
                return Err(StoreError::MissingLayer { path: self.root.clone(), layer: l.clone() });
            }
            layer_dirs.push(fs);
        }
        Ok(Image { record, config, layer_dirs })
    }

    /// Removes image `name`; its layers stay while another image or a bundle
    /// uses them. Returns how many layers were deleted.
    pub fn remove(&self, name: &str) -> Result<usize, StoreError> {
        let _lock = self.lock(true)?;
        let path = self.image_path(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NoImage { name: name.into() }),
            other => other.map_err(io_err(&path))?,
        }
        self.collect_garbage()
    }

    /// Records a bundle made from `image` (under the caller's lock).
    pub fn add_bundle(&self, record: &BundleRecord) -> Result<(), StoreError> {
        records::write(&self.bundle_path(record.dir()), record)
    }

    /// The record of the bundle at `dir`, if the store made it.
    pub fn bundle(&self, dir: &Path) -> Result<Option<BundleRecord>, StoreError> {
        let path = self.bundle_path(dir);
        if !path.exists() {
            return Ok(None);
        }
        records::read(&path).map(Some)
    }

    /// Forgets the bundle at `dir` and collects the layers nothing uses now
    /// (under the caller's lock).
    pub fn forget_bundle(&self, dir: &Path) -> Result<(), StoreError> {
        let record = self.bundle(dir)?;
        let path = self.bundle_path(dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
        // The common case needs no scan: the image still holds every layer.
        let image_path = record.as_ref().map(|r| self.image_path(r.image()));
        let image: Option<ImageRecord> = match image_path.filter(|p| p.exists()) {
            Some(p) => Some(records::read(&p)?),
            None => None,
        };
        let held = match (&record, &image) {
            (Some(b), Some(i)) => b.layers().iter().all(|l| i.layers().contains(l)),
            _ => false,
        };
        if !held {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Deletes layers and configs no record (nor live receive) references,
    /// and what a killed import left in tmp/. Call with the exclusive lock held.
    fn collect_garbage(&self) -> Result<usize, StoreError> {
        let images = self.images()?;
        let mut layers: HashSet<String> = HashSet::new();
        let mut configs: HashSet<String> = HashSet::new();
        for img in &images {
            layers.extend(img.layers().iter().map(|l| l.hex().to_string()));
            configs.insert(img.config().hex().to_string());
        }
        for b in self.bundles()? {
            layers.extend(b.layers().iter().map(|l| l.hex().to_string()));
        }
        layers.extend(self.leased_layers()?.iter().map(|l| l.hex().to_string()));
        let removed = remove_unlisted(&self.root.join("layers"), &layers)?;
        remove_unlisted(&self.root.join("blobs/sha256"), &configs)?;
        remove_unlisted(&self.root.join("tmp"), &HashSet::new())?;
        Ok(removed)
    }
}

/// Removes the entries of `dir` whose names are not in `keep`.
fn remove_unlisted(dir: &Path, keep: &HashSet<String>) -> Result<usize, StoreError> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        if keep.contains(e.file_name().to_string_lossy().as_ref()) {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().map_err(io_err(&p))?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io_err(&p))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
