//! Import: verify every blob, unpack the layers the store lacks into tmp/,
//! then move them in and write the image record. Nothing is registered
//! unless everything succeeded.

use super::records::{self, ImageRecord, LayerRecord};
use super::{io_err, valid_name, Store, StoreError};
use crate::digest::{chain_ids, Digest};
use crate::source::{self, FoundImage, LayerBlob, Selector};
use crate::unpack::{self, Tree};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{self, Receiver};

mod feed;

#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// The name to store the image under (default: the name it carries).
    pub name: Option<String>,
    /// Which manifest, where the image holds several.
    pub select: Selector,
}

/// Import progress: layer blob bytes read so far, of `total`.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

/// How often progress is reported.
const PROGRESS_STEP: u64 = 1 << 20;

impl Store {
    /// Imports the image at `path` (layout dir, oci-archive or docker-save tar).
    pub fn import(
        &self,
        path: &Path,
        opts: &ImportOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageRecord, StoreError> {
        let _lock = self.lock(true)?;
        super::remove_unlisted(&self.root.join("tmp"), &Default::default())?;
        let found = source::find(path, &opts.select)?;
        let name = image_name(opts, &found, path)?;
        let work = self.root.join("tmp").join(format!("import-{}", std::process::id()));
        std::fs::create_dir(&work).map_err(io_err(&work))?;
        let result = self.import_into(&work, &found, name, progress);
        let cleanup = std::fs::remove_dir_all(&work).map_err(io_err(&work));
        let record = result?;
        cleanup?;
        self.collect_garbage()?;
        Ok(record)
    }

    fn import_into(
        &self,
        work: &Path,
        found: &FoundImage,
        name: String,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<ImageRecord, StoreError> {
        let diff_ids: Vec<Digest> = found.layers().iter().map(|l| l.diff_id().clone()).collect();
        let chains = chain_ids(&diff_ids);
        let mut meter = Meter { done: 0, total: found.layer_bytes(), report: progress };
        let mut lowers: Vec<PathBuf> = Vec::new();
        let mut tree: Option<Tree> = None;
        let mut fresh: Vec<&Digest> = Vec::new();
        for (i, (layer, chain)) in found.layers().iter().zip(&chains).enumerate() {
            let stored = self.layer_dir(chain);
            if stored.join("layer.json").exists() {
                verify_only(found, layer, &mut meter)?;
                if let Some(t) = tree.as_mut() {
                    let fs = stored.join("fs");
                    t.load_layer(i, &fs).map_err(io_err(&fs))?;
                }
                lowers.push(stored.join("fs"));
                continue;
            }
            let t = match tree.as_mut() {
                Some(t) => t,
                None => tree.insert(load_tree(&lowers)?),
            };
            t.begin_layer(i);
            let dir = work.join(chain.hex());
            let fs = dir.join("fs");
            std::fs::create_dir_all(&fs).map_err(io_err(&fs))?;
            let stats = unpack_blob(found, layer, &fs, t, &lowers, &mut meter)?;
            let rec = LayerRecord::new(chain.clone(), layer.diff_id().clone(), stats.entries(), stats.bytes());
            records::write(&dir.join("layer.json"), &rec)?;
            lowers.push(fs);
            fresh.push(chain);
        }
        // Layers first, the record last: a crash in between leaves only
        // unreferenced layers, which the next change collects.
        sync_fs(work)?;
        for chain in fresh {
            let (from, to) = (work.join(chain.hex()), self.layer_dir(chain));
            std::fs::rename(&from, &to).map_err(io_err(&to))?;
        }
        records::write_bytes(&self.config_path(found.config_digest()), found.config_bytes())?;
        let record = ImageRecord::new(name, found.digest().clone(), found.config_digest().clone(), chains);
        records::write(&self.image_path(record.name()), &record)?;
        Ok(record)
    }
}

/// The name given, else the image's own (a bare tag gets the file's stem as
/// repository), else `STEM:latest`.
fn image_name(opts: &ImportOptions, found: &FoundImage, path: &Path) -> Result<String, StoreError> {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
    let name = match (&opts.name, found.name()) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) if n.contains([':', '/', '@']) => n.to_string(),
        (None, Some(tag)) => format!("{stem}:{tag}"),
        (None, None) => format!("{stem}:latest"),
    };
    if !valid_name(&name) {
        return Err(StoreError::BadName { name });
    }
    Ok(name)
}

/// The merged view of an image's lower layers, for the unpacker's whiteouts and links.
pub(super) fn load_tree(lowers: &[PathBuf]) -> Result<Tree, StoreError> {
    let mut t = Tree::new();
    for (i, fs) in lowers.iter().enumerate() {
        t.load_layer(i, fs).map_err(io_err(fs))?;
    }
    Ok(t)
}

/// Flushes a layer to disk before it is moved in: after a crash, a layer in `layers/` is
/// whole.
pub(super) fn sync_fs(path: &Path) -> Result<(), StoreError> {
    let f = File::open(path).map_err(io_err(path))?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| io_err(path)(e.into()))
}

/// Writes back the file system of `dir` on each ping, while the unpack goes
/// on: the import's final syncfs then finds little left to do, where an
/// unpack followed by one sync leaves the disk idle during the unpack and
/// the CPU idle during the sync. Errors here are not the import's: the
/// final syncfs reports them.
fn flusher(dir: File, pings: Receiver<()>) {
    while pings.recv().is_ok() {
        let _ = nix::unistd::syncfs(dir.as_raw_fd());
    }
}

/// Counts blob bytes and reports progress every PROGRESS_STEP.
struct Meter<'a> {
    done: u64,
    total: u64,
    report: &'a mut dyn FnMut(Progress),
}

impl Meter<'_> {
    fn add(&mut self, n: u64) {
        self.to(self.done + n);
    }

    /// `done` bytes read in all: reported when it crosses a step or ends.
    fn to(&mut self, done: u64) {
        if done == self.done {
            return;
        }
        let before = self.done / PROGRESS_STEP;
        self.done = done;
        if self.done / PROGRESS_STEP != before || self.done == self.total {
            (self.report)(Progress { done: self.done, total: self.total });
        }
    }
}

/// A reader that feeds a meter.
struct Metered<'a, 'b, R> {
    inner: R,
    meter: &'a mut Meter<'b>,
}

impl<R: Read> Read for Metered<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// Hashes a layer blob the store already has unpacked.
fn verify_only(found: &FoundImage, layer: &LayerBlob, meter: &mut Meter) -> Result<(), StoreError> {
    let (mut raw, _) = found.open_layer(layer)?;
    let mut sink = io::sink();
    io::copy(&mut Metered { inner: &mut raw, meter }, &mut sink).map_err(|e| read_err(layer, e))?;
    let (digest, _) = raw.finish().map_err(|e| read_err(layer, e))?;
    if layer.digest().is_none() {
        // `docker save`: no blob digest; the layer tar's own is the diff_id.
        return check_diff_id(layer, &digest);
    }
    source::verify_blob(layer, &digest)?;
    Ok(())
}

fn read_err(layer: &LayerBlob, source: io::Error) -> StoreError {
    StoreError::Decompress { blob: layer.name(), format: "read", source }
}

fn check_diff_id(layer: &LayerBlob, actual: &Digest) -> Result<(), StoreError> {
    if actual != layer.diff_id() {
        return Err(StoreError::DiffIdMismatch {
            blob: layer.name(),
            expected: layer.diff_id().clone(),
            actual: actual.clone(),
        });
    }
    Ok(())
}

/// Unpacks one layer blob into `fs`, verifying its digest and diff_id. The
/// blob is read, hashed and decompressed on a second thread.
fn unpack_blob(
    found: &FoundImage,
    layer: &LayerBlob,
    fs: &Path,
    tree: &mut Tree,
    lowers: &[PathBuf],
    meter: &mut Meter,
) -> Result<unpack::LayerStats, StoreError> {
    let (raw, _) = found.open_layer(layer)?;
    let read = AtomicU64::new(meter.done);
    let (tx, rx) = mpsc::sync_channel(feed::DEPTH);
    let (pool, pool_rx) = mpsc::channel();
    let compression = layer.compression();
    let dir = File::open(fs).map_err(io_err(fs))?;
    let (flush, pings) = mpsc::sync_channel(1);
    let (unpacked, failed, fed) = std::thread::scope(|s| {
        let feeder = s.spawn(|| feed::feed(raw, compression, tx, pool_rx, &read));
        s.spawn(move || flusher(dir, pings));
        let mut pipe = feed::Pipe::new(rx, pool, &read, meter, flush);
        let mut unpacked = unpack::unpack_layer(&mut pipe, fs, tree, lowers).map(|(_, stats)| stats);
        if unpacked.is_ok() {
            // The tar's end is not the stream's: read the rest, so that the
            // digest covers it and gzip checks its trailer.
            if let Err(source) = io::copy(&mut pipe, &mut io::sink()) {
                unpacked = Err(unpack::UnpackError::Tar { source });
            }
        }
        let failed = pipe.failed.take();
        drop(pipe);
        (unpacked, failed, feeder.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    meter.to(read.into_inner());
    let blob = fed.blob.map_err(|e| read_err(layer, e))?;
    source::verify_blob(layer, &blob)?;
    if let Some(source) = failed {
        return Err(StoreError::Decompress { blob: layer.name(), format: fed.format, source });
    }
    let stats = unpacked.map_err(|source| StoreError::Layer { blob: layer.name(), source })?;
    let Some(diff_id) = fed.diff else {
        let source = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream was not read to its end");
        return Err(StoreError::Decompress { blob: layer.name(), format: fed.format, source });
    };
    check_diff_id(layer, &diff_id)?;
    Ok(stats)
}
