//! Reading an image to import: an OCI image layout directory, an
//! `oci-archive` tar (a layout in a tar) or a `docker save` tar. Finds the
//! manifest, reads and verifies the config, and describes each layer blob.

mod docker;
mod files;
mod oci;

use crate::digest::{Digest, HashingReader};
use files::Files;
use oci_spec::image::ImageConfiguration;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest manifest, index or config accepted (they are JSON documents).
const MAX_JSON: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: neither an OCI image layout nor an image archive (no index.json or manifest.json)")]
    NotAnImage { path: PathBuf },
    #[error("{path}: {source}")]
    Tar { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("blob {blob}: missing from the image")]
    BlobMissing { blob: String },
    #[error("blob {blob}: size {actual}, its descriptor says {expected}")]
    SizeMismatch { blob: String, expected: u64, actual: u64 },
    #[error("blob {blob}: content has digest {actual}")]
    DigestMismatch { blob: String, actual: Digest },
    #[error("blob {blob}: larger than {MAX_JSON} bytes for a JSON document")]
    TooLarge { blob: String },
    #[error("blob {blob}: unsupported media type {media_type:?}")]
    UnsupportedMediaType { blob: String, media_type: String },
    #[error("{what}: {digest:?} is not a sha256 digest")]
    BadDigest { what: String, digest: String },
    #[error("{what}: no manifest for {platform}{}", refname.as_ref().map(|r| format!(" named {r:?}")).unwrap_or_default())]
    NoManifest { what: String, platform: String, refname: Option<String> },
    #[error("{what}: {count} manifests match; choose one with --ref (names: {names})")]
    Ambiguous { what: String, count: usize, names: String },
    #[error("config {blob}: {layers} layers but {diff_ids} diff_ids")]
    LayerCount { blob: String, layers: usize, diff_ids: usize },
    #[error("config {blob}: image is for {os}/{arch}, not {want}")]
    WrongPlatform { blob: String, os: String, arch: String, want: String },
    #[error("{what}: nested indexes deeper than 4 levels")]
    TooDeep { what: String },
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    /// Unknown from the metadata (`docker save`): told by the magic bytes.
    Sniff,
}

/// One layer as the image describes it.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// Where the blob is inside the image.
    path: String,
    /// What its descriptor says: digest and size (`docker save` has neither).
    digest: Option<Digest>,
    size: Option<u64>,
    compression: Compression,
    diff_id: Digest,
}

impl LayerBlob {
    /// The name used in messages: the digest, else the path in the archive.
    pub fn name(&self) -> String {
        self.digest.as_ref().map(|d| d.to_string()).unwrap_or_else(|| self.path.clone())
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    pub fn compression(&self) -> Compression {
        self.compression
    }
    /// The digest of the uncompressed tar, from the image config.
    pub fn diff_id(&self) -> &Digest {
        &self.diff_id
    }
}

/// An image found in a source, its small documents verified.
pub struct FoundImage {
    files: Files,
    name: Option<String>,
    /// The manifest's digest (for `docker save`, the config's: the image id).
    digest: Digest,
    config_bytes: Vec<u8>,
    config_digest: Digest,
    config: ImageConfiguration,
    layers: Vec<LayerBlob>,
}

impl FoundImage {
    /// The name the image carries (ref name annotation or repo tag), if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
    pub fn config(&self) -> &ImageConfiguration {
        &self.config
    }
    pub fn config_bytes(&self) -> &[u8] {
        &self.config_bytes
    }
    pub fn config_digest(&self) -> &Digest {
        &self.config_digest
    }
    pub fn layers(&self) -> &[LayerBlob] {
        &self.layers
    }

    /// Opens a layer blob after checking its size; the returned reader hashes
    /// the raw blob. Call [`verify_blob`] once it is read to the end.
    pub fn open_layer(&self, layer: &LayerBlob) -> Result<(HashingReader<Box<dyn Read + Send>>, u64), SourceError> {
        let (reader, size) = self.files.open(&layer.path, &layer.name())?;
        if let Some(expected) = layer.size {
            if expected != size {
                return Err(SourceError::SizeMismatch { blob: layer.name(), expected, actual: size });
            }
        }
        Ok((HashingReader::new(reader), size))
    }

    /// Total bytes of the layer blobs (for progress).
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().filter_map(|l| self.files.size(&l.path)).sum()
    }
}

/// Checks a fully read layer blob against its descriptor.
pub fn verify_blob(layer: &LayerBlob, digest: &Digest) -> Result<(), SourceError> {
    match &layer.digest {
        Some(want) if want != digest => Err(SourceError::DigestMismatch { blob: layer.name(), actual: digest.clone() }),
        _ => Ok(()),
    }
}

/// What to pick from an image with several manifests.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    /// The `org.opencontainers.image.ref.name` (or docker repo tag) wanted.
    pub refname: Option<String>,
}

/// The platform images are picked for: this host's, as OCI names it.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

/// Opens the image at `path` and finds the manifest that `sel` picks.
pub fn find(path: &Path, sel: &Selector) -> Result<FoundImage, SourceError> {
    let files = Files::index(path)?;
    if files.exists("index.json") {
        oci::find(files, sel)
    } else if files.exists("manifest.json") {
        docker::find(files, sel)
    } else {
        Err(SourceError::NotAnImage { path: path.to_path_buf() })
    }
}

/// Parses `text` as a digest, naming `what` on failure.
fn digest(text: &str, what: &str) -> Result<Digest, SourceError> {
    Digest::parse(text).ok_or_else(|| SourceError::BadDigest { what: what.into(), digest: text.into() })
}

/// Reads a whole small file of the image.
fn read_small(files: &Files, path: &str, what: &str) -> Result<Vec<u8>, SourceError> {
    let (mut r, size) = files.open(path, what)?;
    if size > MAX_JSON {
        return Err(SourceError::TooLarge { blob: what.into() });
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.read_to_end(&mut buf).map_err(|source| SourceError::Io { path: files.path().join(path), source })?;
    Ok(buf)
}

/// Reads the blob a descriptor names and checks its size and digest.
fn read_blob(files: &Files, digest: &Digest, size: u64) -> Result<Vec<u8>, SourceError> {
    let blob = digest.to_string();
    if size > MAX_JSON {
        return Err(SourceError::TooLarge { blob });
    }
    let bytes = read_small(files, &format!("blobs/sha256/{}", digest.hex()), &blob)?;
    check_bytes(&bytes, &blob, Some(digest), Some(size))?;
    Ok(bytes)
}

fn check_bytes(bytes: &[u8], blob: &str, digest: Option<&Digest>, size: Option<u64>) -> Result<(), SourceError> {
    if let Some(expected) = size.filter(|s| *s != bytes.len() as u64) {
        return Err(SourceError::SizeMismatch { blob: blob.into(), expected, actual: bytes.len() as u64 });
    }
    let actual = Digest::of(bytes);
    match digest {
        Some(want) if *want != actual => Err(SourceError::DigestMismatch { blob: blob.into(), actual }),
        _ => Ok(()),
    }
}

/// Parses and checks the image config: platform and layer count.
fn parse_config(bytes: &[u8], blob: &str, layers: usize) -> Result<(ImageConfiguration, Vec<Digest>), SourceError> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).map_err(|source| SourceError::Json { what: format!("config {blob}"), source })?;
    let (os, arch) = host_platform();
    let (have_os, have_arch) = (config.os().to_string(), config.architecture().to_string());
    if have_os != os || have_arch != arch {
        let want = format!("{os}/{arch}");
        return Err(SourceError::WrongPlatform { blob: blob.into(), os: have_os, arch: have_arch, want });
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers {
        return Err(SourceError::LayerCount { blob: blob.into(), layers, diff_ids: diff_ids.len() });
    }
    let what = format!("config {blob}: rootfs.diff_ids");
    let diff_ids = diff_ids.iter().map(|d| digest(d, &what)).collect::<Result<_, _>>()?;
    Ok((config, diff_ids))
}
