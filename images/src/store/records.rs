//! The store's JSON records, written atomically (temp file, then rename).

use super::{io_err, StoreError};
use crate::digest::Digest;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    name: String,
    /// The manifest digest (the config digest for a `docker save` image).
    digest: Digest,
    config: Digest,
    /// Chain ids of its layers, bottom first.
    layers: Vec<Digest>,
}

impl ImageRecord {
    pub fn new(name: String, digest: Digest, config: Digest, layers: Vec<Digest>) -> Self {
        ImageRecord { name, digest, config, layers }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn config(&self) -> &Digest {
        &self.config
    }
    pub fn layers(&self) -> &[Digest] {
        &self.layers
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRecord {
    chain_id: Digest,
    diff_id: Digest,
    entries: u64,
    bytes: u64,
}

impl LayerRecord {
    pub fn new(chain_id: Digest, diff_id: Digest, entries: u64, bytes: u64) -> Self {
        LayerRecord { chain_id, diff_id, entries, bytes }
    }
    /// Bytes of regular file content.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A bundle made from an image: its layers stay until the bundle goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BundleRecord {
    dir: PathBuf,
    image: String,
    /// Chain ids of the layers its overlay rootfs stacks (empty for a copy).
    layers: Vec<Digest>,
    overlay: bool,
}

impl BundleRecord {
    pub fn new(dir: PathBuf, image: String, layers: Vec<Digest>, overlay: bool) -> Self {
        BundleRecord { dir, image, layers, overlay }
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn image(&self) -> &str {
        &self.image
    }
    pub fn layers(&self) -> &[Digest] {
        &self.layers
    }
    pub fn overlay(&self) -> bool {
        self.overlay
    }
}

pub fn read<T: DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    serde_json::from_slice(&bytes).map_err(|source| StoreError::Json { path: path.to_path_buf(), source })
}

/// Every `*.json` record in `dir` (a killed writer's `.tmp` files are skipped).
pub fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let p = e.map_err(io_err(dir))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(read(&p)?);
        }
    }
    Ok(out)
}

pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value).expect("records serialize");
    write_bytes(path, &bytes)
}

/// Writes `bytes` to `path` all at once and durably: a reader sees the old file or the new one.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::atomic_file::write_durable(path, bytes, 0o644).map_err(io_err(path))
}
