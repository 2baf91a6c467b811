//! Both ends of moving an image between stores: describing a bundle's image
//! for the receiver, and taking layers and the image record in.
//!
//! What the receiver checks: that every chain id follows from its parent's
//! and its diff id (before any layer comes in); the config blob's digest
//! ([`ImageRef::config`]) and that its `rootfs.diff_ids` are the layers'
//! diff ids (before the image is recorded). The config is thus the root of
//! trust and each layer is stored under the chain id the config implies. What it cannot check: that a layer's content is what its diff id
//! names, since a tar written again from an unpacked layer is not the
//! original blob byte for byte. A received layer is as trustworthy as the
//! sending host; the unpacker still keeps a hostile tar inside its root.
//!
//! A receive in progress is a lease, `STORE/receiving/ID/`, flocked by the
//! receiving process and listing the image's chain ids: garbage collection
//! keeps those layers (the ones already there and the ones received) while
//! the lock is held, and removes the lease of a process that died.

use super::import::{load_tree, sync_fs};
use super::records::{self, ImageRecord, LayerRecord};
use super::{io_err, valid_name, Store, StoreError};
use crate::digest::{chain_ids, Digest};
use crate::transfer::{ImageRef, LayerRef};
use crate::unpack::{self, Tree, UnpackError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::ImageConfiguration;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const RECEIVING: &str = "receiving";
const LEASE_LAYERS: &str = "layers.json";

/// The ids a layer's `layer.json` holds.
#[derive(serde::Deserialize)]
struct LayerIds {
    diff_id: Digest,
}

impl Store {
    /// The image the bundle at `bundle_dir` was made from, as a receiver
    /// needs it, and its config blob. `bundle_dir` as recorded: the absolute
    /// path `bundle::create` returned. None for a bundle this store did not
    /// make or made with `--copy`: its rootfs is plain and travels whole.
    /// An error if its image was removed or replaced since (the bundle still
    /// holds its layers, but the config that vouches for them is gone).
    pub fn bundle_image(&self, bundle_dir: &Path) -> Result<Option<(ImageRef, Vec<u8>)>, StoreError> {
        let _lock = self.lock(false)?;
        let bundle = match self.bundle(bundle_dir)? {
            Some(b) if b.overlay() => b,
            _ => return Ok(None),
        };
        let gone = || StoreError::BundleImageGone { dir: bundle_dir.to_path_buf(), image: bundle.image().into() };
        let path = self.image_path(bundle.image());
        if !path.exists() {
            return Err(gone());
        }
        let record: ImageRecord = records::read(&path)?;
        if record.layers() != bundle.layers() {
            return Err(gone());
        }
        let cpath = self.config_path(record.config());
        let config = std::fs::read(&cpath).map_err(io_err(&cpath))?;
        let mut layers = Vec::new();
        for chain in record.layers() {
            let ids: LayerIds = records::read(&self.layer_dir(chain).join("layer.json"))?;
            layers.push(LayerRef { chain_id: chain.clone(), diff_id: ids.diff_id });
        }
        let (name, digest) = (record.name().to_string(), record.digest().clone());
        Ok(Some((ImageRef { name, digest, config: record.config().clone(), layers }, config)))
    }

    /// The unpacked layer `chain` (overlay form), for `transfer::write_layer_tar`;
    /// None if the store does not have it.
    pub fn layer_fs(&self, chain: &Digest) -> Option<PathBuf> {
        self.has_layer(chain).then(|| self.layer_dir(chain).join("fs"))
    }

    fn has_layer(&self, chain: &Digest) -> bool {
        self.layer_dir(chain).join("layer.json").exists()
    }

    /// The chain ids of `layers` this store lacks, in their order. Under a
    /// [`Receiving`] lease the answer stays true: the present ones are kept.
    pub fn missing_layers(&self, layers: &[LayerRef]) -> Result<Vec<Digest>, StoreError> {
        let _lock = self.lock(false)?;
        Ok(layers.iter().filter(|l| !self.has_layer(&l.chain_id)).map(|l| l.chain_id.clone()).collect())
    }

    /// Whether this store has `image`: true if an image of that name has its
    /// digest, config and layers; false if no image has that name; an
    /// [`StoreError::ImageConflict`] if one of that name is another image.
    pub fn has_image(&self, image: &ImageRef) -> Result<bool, StoreError> {
        let _lock = self.lock(false)?;
        self.same_image(image)
    }

    fn same_image(&self, image: &ImageRef) -> Result<bool, StoreError> {
        let path = self.image_path(&image.name);
        if !path.exists() {
            return Ok(false);
        }
        let record: ImageRecord = records::read(&path)?;
        if record.digest() == &image.digest && record.config() == &image.config && record.layers() == image.chain_ids()
        {
            return Ok(true);
        }
        Err(StoreError::ImageConflict { name: image.name.clone(), have: record.digest().clone() })
    }

    /// Starts receiving `image`: checks its name and chain ids (see the
    /// module doc) and that no other image has its name, then takes a lease
    /// that keeps the image's layers from garbage collection until it is
    /// dropped. Then: [`Receiving::missing_layers`] (to ask the sender for),
    /// one [`Receiving::receive_layer`] each, bottom first,
    /// [`Receiving::receive_image`] with the config blob, `bundle::receive`,
    /// and drop it.
    pub fn begin_receive(&self, image: &ImageRef) -> Result<Receiving<'_>, StoreError> {
        check_chain(image)?;
        let _lock = self.lock(true)?;
        self.same_image(image)?;
        let (dir, lease) = self.new_lease(&image.chain_ids())?;
        Ok(Receiving {
            store: self,
            image: image.clone(),
            dir,
            lease: Some(lease),
            tree: None,
            brought: false,
            added: false,
        })
    }

    /// Records `image` (its layers must all be here) with its config blob
    /// `config_blob`, after the checks of the module doc. Returns false if
    /// this store had it already.
    pub fn receive_image(&self, image: &ImageRef, config_blob: &[u8]) -> Result<bool, StoreError> {
        check_chain(image)?;
        check_config(image, config_blob)?;
        let _lock = self.lock(true)?;
        if self.same_image(image)? {
            return Ok(false);
        }
        if let Some(l) = image.layers.iter().find(|l| !self.has_layer(&l.chain_id)) {
            return Err(StoreError::LayerAbsent { image: image.name.clone(), layer: l.chain_id.clone() });
        }
        records::write_bytes(&self.config_path(&image.config), config_blob)?;
        let record =
            ImageRecord::new(image.name.clone(), image.digest.clone(), image.config.clone(), image.chain_ids());
        records::write(&self.image_path(&image.name), &record)?;
        Ok(true)
    }

    /// Makes a lease directory listing `layers`, flocked (under the store's
    /// exclusive lock, so that no collection sees it unlocked).
    fn new_lease(&self, layers: &[Digest]) -> Result<(PathBuf, Flock<File>), StoreError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = self.root.join(RECEIVING);
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let dir = loop {
            let dir = parent.join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            match std::fs::create_dir(&dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                other => other.map_err(io_err(&dir))?,
            }
            break dir;
        };
        let made = File::open(&dir).map_err(io_err(&dir)).and_then(|f| {
            let lock = Flock::lock(f, FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| StoreError::Io { path: dir.clone(), source: e.into() })?;
            records::write(&dir.join(LEASE_LAYERS), &layers)?;
            Ok(lock)
        });
        match made {
            Ok(lock) => Ok((dir, lock)),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The layers that live receives hold; removes the leases of processes
    /// that died. Call with the exclusive lock held.
    pub(super) fn leased_layers(&self) -> Result<Vec<Digest>, StoreError> {
        let parent = self.root.join(RECEIVING);
        let entries = match std::fs::read_dir(&parent) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(io_err(&parent))?,
        };
        let mut out = Vec::new();
        for e in entries {
            let dir = e.map_err(io_err(&parent))?.path();
            // Its owner may remove it at any time (that needs no store lock).
            let f = match File::open(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other.map_err(io_err(&dir))?,
            };
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(_stale) => remove_any(&dir)?,
                Err((_, Errno::EWOULDBLOCK)) => match records::read::<Vec<Digest>>(&dir.join(LEASE_LAYERS)) {
                    Ok(layers) => out.extend(layers),
                    Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
                Err((_, e)) => return Err(StoreError::Io { path: dir, source: e.into() }),
            }
        }
        Ok(out)
    }
}

fn remove_any(path: &Path) -> Result<(), StoreError> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The image's name, and that each chain id follows from its parent's and
/// its diff id.
fn check_chain(image: &ImageRef) -> Result<(), StoreError> {
    let name = &image.name;
    if !valid_name(name) {
        return Err(StoreError::BadName { name: name.clone() });
    }
    let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
    for (layer, expected) in image.layers.iter().zip(chain_ids(&diff_ids)) {
        if layer.chain_id != expected {
            return Err(StoreError::ChainId { image: name.clone(), layer: layer.chain_id.clone(), expected });
        }
    }
    Ok(())
}

/// The config blob's digest, and that it lists the layers' diff ids.
fn check_config(image: &ImageRef, config_blob: &[u8]) -> Result<(), StoreError> {
    let name = &image.name;
    let actual = Digest::of(config_blob);
    if actual != image.config {
        return Err(StoreError::ConfigDigest { image: name.clone(), expected: image.config.clone(), actual });
    }
    let config: ImageConfiguration =
        serde_json::from_slice(config_blob).map_err(|source| StoreError::BadConfig { image: name.clone(), source })?;
    let listed = config.rootfs().diff_ids();
    let sent = image.layers.iter().map(|l| l.diff_id.as_str());
    if listed.len() != image.layers.len() || !sent.eq(listed.iter().map(String::as_str)) {
        return Err(StoreError::ConfigLayers { image: name.clone() });
    }
    Ok(())
}

/// A receive in progress (from [`Store::begin_receive`]): its lease keeps
/// the image's layers until it is dropped. Dropping it before
/// [`Receiving::receive_image`] collects the layers it brought, unless
/// another process holds the store's lock (then that one's next change does).
pub struct Receiving<'a> {
    store: &'a Store,
    image: ImageRef,
    dir: PathBuf,
    lease: Option<Flock<File>>,
    /// The merged view of the image's first N layers, kept from the last
    /// layer received for the next one above it.
    tree: Option<(usize, Tree)>,
    /// A layer was moved into the store.
    brought: bool,
    /// The image record was written (or was there).
    added: bool,
}

impl Receiving<'_> {
    /// The image being received.
    pub fn image(&self) -> &ImageRef {
        &self.image
    }

    /// The chain ids of the image's layers the store lacks, bottom first.
    pub fn missing_layers(&self) -> Result<Vec<Digest>, StoreError> {
        self.store.missing_layers(&self.image.layers)
    }

    /// Takes in `layer` (one of the image's) from the layer tar `tar`, read
    /// to its end (EOF: give a reader that ends with the layer, e.g. a
    /// `take` of its announced length). The layers below it must be here.
    /// Unpacked into the lease's directory, then moved to
    /// `STORE/layers/CHAIN` under the store's lock, with a `layer.json` as an
    /// import writes. Returns false, reading `tar` to its end all the same,
    /// if the store has the layer already.
    pub fn receive_layer(&mut self, layer: &LayerRef, tar: impl Read) -> Result<bool, StoreError> {
        let Some(i) = self.image.layers.iter().position(|l| l == layer) else {
            let (image, layer) = (self.image.name.clone(), layer.chain_id.clone());
            return Err(StoreError::NotInImage { image, layer });
        };
        if self.store.has_layer(&layer.chain_id) {
            drain(tar, &layer.chain_id)?;
            return Ok(false);
        }
        let mut lowers = Vec::with_capacity(i);
        for l in &self.image.layers[..i] {
            let fs = self.store.layer_fs(&l.chain_id);
            let missing = || StoreError::LayerAbsent { image: self.image.name.clone(), layer: l.chain_id.clone() };
            lowers.push(fs.ok_or_else(missing)?);
        }
        let mut tree = match self.tree.take() {
            Some((n, t)) if n == i => t,
            _ => load_tree(&lowers)?,
        };
        tree.begin_layer(i);
        let staging = self.dir.join(layer.chain_id.hex());
        match self.unpack_into(&staging, layer, &mut tree, &lowers, tar) {
            Ok(added) => {
                // Another receive may have brought its own copy: its tree is not this one.
                self.tree = added.then_some((i + 1, tree));
                self.brought |= added;
                Ok(added)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                Err(e)
            }
        }
    }

    fn unpack_into(
        &self,
        staging: &Path,
        layer: &LayerRef,
        tree: &mut Tree,
        lowers: &[PathBuf],
        tar: impl Read,
    ) -> Result<bool, StoreError> {
        let chain = &layer.chain_id;
        let fs = staging.join("fs");
        std::fs::create_dir_all(&fs).map_err(io_err(&fs))?;
        let (rest, stats) = unpack::unpack_layer(tar, &fs, tree, lowers)
            .map_err(|source| StoreError::Layer { blob: chain.to_string(), source })?;
        drain(rest, chain)?;
        let record = LayerRecord::new(chain.clone(), layer.diff_id.clone(), stats.entries(), stats.bytes());
        records::write(&staging.join("layer.json"), &record)?;
        sync_fs(staging)?;
        let _lock = self.store.lock(true)?;
        if self.store.has_layer(chain) {
            std::fs::remove_dir_all(staging).map_err(io_err(staging))?;
            return Ok(false);
        }
        // A directory there without layer.json is what a crash left half made.
        let to = self.store.layer_dir(chain);
        remove_any(&to)?;
        std::fs::rename(staging, &to).map_err(io_err(&to))?;
        Ok(true)
    }

    /// Records the image with its config blob ([`Store::receive_image`]);
    /// keep the lease until its bundle is made. Returns false if the store
    /// had it already.
    pub fn receive_image(&mut self, config_blob: &[u8]) -> Result<bool, StoreError> {
        let added = self.store.receive_image(&self.image, config_blob)?;
        self.added = true;
        Ok(added)
    }
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            log::warn!("{}: {e}", self.dir.display());
        }
        drop(self.lease.take());
        if self.added || !self.brought {
            return;
        }
        // Never wait here: whoever holds the lock collects when done.
        let path = self.store.root.join("lock");
        let Ok(f) = File::options().append(true).open(&path) else { return };
        if let Ok(_lock) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            if let Err(e) = self.store.collect_garbage() {
                log::warn!("{}: {e}", self.store.root.display());
            }
        }
    }
}

/// Reads what is left of a layer's stream (after the tar's end).
fn drain(mut rest: impl Read, chain: &Digest) -> Result<(), StoreError> {
    io::copy(&mut rest, &mut io::sink())
        .map(drop)
        .map_err(|source| StoreError::Layer { blob: chain.to_string(), source: UnpackError::Tar { source } })
}

#[cfg(test)]
mod tests;
