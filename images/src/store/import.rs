//! Import: verify every blob, unpack the layers the store lacks into tmp/,
//! then move them in and write the image record. Nothing is registered
//! unless everything succeeded.

use super::records::{self, ImageRecord, LayerRecord};
use super::{io_err, valid_name, Store, StoreError};
use crate::digest::{chain_ids, Digest, HashingReader};
use crate::source::{self, Compression, FoundImage, LayerBlob, Selector};
use crate::unpack::{self, Tree};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

fn load_tree(lowers: &[PathBuf]) -> Result<Tree, StoreError> {
    let mut t = Tree::new();
    for (i, fs) in lowers.iter().enumerate() {
        t.load_layer(i, fs).map_err(io_err(fs))?;
    }
    Ok(t)
}

fn sync_fs(path: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(io_err(path))?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| io_err(path)(e.into()))
}

/// Counts blob bytes and reports progress every PROGRESS_STEP.
struct Meter<'a> {
    done: u64,
    total: u64,
    report: &'a mut dyn FnMut(Progress),
}

impl Meter<'_> {
    fn add(&mut self, n: u64) {
        let before = self.done / PROGRESS_STEP;
        self.done += n;
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

/// Where a decompressor's error is kept, to be reported as such rather than
/// as the tar error it causes.
type ErrorSlot = Arc<Mutex<Option<io::Error>>>;

struct Decoder<R> {
    inner: R,
    slot: ErrorSlot,
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            *self.slot.lock().expect("slot") = Some(io::Error::new(e.kind(), e.to_string()));
        })
    }
}

/// The decompressed stream of `raw`, and the name of its format.
fn decoder<'a>(c: Compression, raw: impl Read + 'a) -> io::Result<(Box<dyn Read + 'a>, &'static str)> {
    let mut buffered = BufReader::with_capacity(256 << 10, raw);
    let c = match c {
        Compression::Sniff => match buffered.fill_buf()? {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        },
        other => other,
    };
    Ok(match c {
        Compression::Gzip => (Box::new(flate2::bufread::MultiGzDecoder::new(buffered)), "gzip"),
        Compression::Zstd => (Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?), "zstd"),
        _ => (Box::new(buffered), "tar"),
    })
}

/// Unpacks one layer blob into `fs`, verifying its digest and diff_id.
fn unpack_blob(
    found: &FoundImage,
    layer: &LayerBlob,
    fs: &Path,
    tree: &mut Tree,
    lowers: &[PathBuf],
    meter: &mut Meter,
) -> Result<unpack::LayerStats, StoreError> {
    let (mut raw, _) = found.open_layer(layer)?;
    let slot: ErrorSlot = Arc::default();
    let result = {
        let metered = Metered { inner: &mut raw, meter };
        let (dec, format) = decoder(layer.compression(), metered).map_err(|e| read_err(layer, e))?;
        let mut diff = HashingReader::new(Decoder { inner: dec, slot: slot.clone() });
        let unpacked = unpack::unpack_layer(&mut diff, fs, tree, lowers).map(|(_, stats)| stats);
        // The tar's end is not the stream's: read the rest, so that the
        // digest covers it and gzip checks its trailer.
        let rest = unpacked.and_then(|stats| {
            let hashed = diff.finish().map_err(|source| unpack::UnpackError::Tar { source })?;
            Ok((hashed, stats))
        });
        rest.map_err(|e| (e, format))
    };
    // A blob that is not what its descriptor says is the first thing to report.
    let (digest, _) = raw.finish().map_err(|e| read_err(layer, e))?;
    source::verify_blob(layer, &digest)?;
    match result {
        Ok(((diff_id, _), stats)) => {
            check_diff_id(layer, &diff_id)?;
            Ok(stats)
        }
        Err((e, format)) => match slot.lock().expect("slot").take() {
            Some(source) => Err(StoreError::Decompress { blob: layer.name(), format, source }),
            None => Err(StoreError::Layer { blob: layer.name(), source: e }),
        },
    }
}
