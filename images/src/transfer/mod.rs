//! Moving a bundle's filesystem between hosts as OCI layer tars: an image's
//! layers (which the receiver may already have, by chain id) and the
//! container's own changes (its overlay upper dir, or the whole rootfs of a
//! plain bundle).
//!
//! The sender writes each directory with [`write_layer_tar`] and describes
//! the image with [`ImageRef`] (from `Store::bundle_image`). The receiver
//! unpacks with the same unpacker as an import (`Store::begin_receive`,
//! `bundle::receive`), so a hostile stream is held to the same checks.

mod write;

pub use write::{write_layer_tar, LayerTarStats};

use crate::digest::Digest;
use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the layer tar: {source}")]
    Write { source: io::Error },
    #[error("{path}: changed size while it was read (is its container still running?)")]
    Changed { path: PathBuf },
    #[error("{path}: a name starting with \".wh.\" cannot travel in a layer tar (it would be read as a whiteout)")]
    ReservedName { path: PathBuf },
    /// PAX records end at the first `=` of a key and (as the unpacker reads
    /// them) at the first newline of a value.
    #[error("{path}: xattr {name:?} cannot travel in a layer tar ('=' in its name or a newline in its value)")]
    BadXattr { path: PathBuf, name: String },
    #[error("{path}: a name or link target this long cannot travel in a layer tar with a newline in it")]
    LongNewline { path: PathBuf },
    #[error("{path}: has overlayfs xattr {name:?}: its content lives in a lower layer (mount without redirect_dir and metacopy)")]
    OverlayRedirect { path: PathBuf, name: String },
}

/// One layer of an image as it travels: the chain id names the unpacked
/// layer (with everything below it) in both stores; the diff id is the
/// digest of the image's original layer tar, as its config lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    pub chain_id: Digest,
    pub diff_id: Digest,
}

/// An image as it travels: what the receiver needs to check the layers it
/// is sent and to record the image under the same name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRef {
    pub name: String,
    /// The manifest digest as the sender's store recorded it (not checkable
    /// without the manifest, which the store does not keep: an identifier).
    pub digest: Digest,
    /// The digest of the config blob sent along, which is checked.
    pub config: Digest,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
}

impl ImageRef {
    /// The chain ids of its layers, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
}

/// The tree snapshots are shared with the store's receive tests.
#[cfg(test)]
pub(crate) mod tests;
