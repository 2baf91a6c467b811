//! The reading thread of an import: it reads, hashes and decompresses a
//! layer blob and hands the tar stream over in blocks, so that the
//! unpacking thread only parses and writes.

use super::Meter;
use crate::digest::{Digest, HashingReader};
use crate::source::Compression;
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

/// A layer blob as the source opens it: hashed as it is read.
pub type BlobReader = HashingReader<Box<dyn Read + Send>>;

/// The size of the blocks the reading thread hands over.
pub const BLOCK: usize = 1 << 20;
/// Blocks in flight between the reading thread and the unpacker.
pub const DEPTH: usize = 4;
/// Tar stream bytes unpacked between two background flushes.
const FLUSH_STEP: usize = 32 << 20;

/// A block of the layer's tar stream, or the error that ended it.
pub type Msg = io::Result<(Vec<u8>, usize)>;

/// What the reading thread found.
pub struct Fed {
    /// The tar stream's format: "tar", "gzip" or "zstd" ("read" if not told).
    pub format: &'static str,
    /// The blob's digest, over all of it.
    pub blob: io::Result<Digest>,
    /// The tar stream's digest (None if the stream was not read to its end):
    /// for an uncompressed blob, the blob's, hashed once.
    pub diff: Option<Digest>,
}

/// How far the tar stream was read, and its digest where that is not the blob's.
enum Stream {
    Unfinished,
    /// Uncompressed: the tar stream is the blob.
    Blob,
    Decompressed(Digest),
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

/// Counts the blob bytes read into `n`, for progress on the other thread.
struct Counted<'a, R> {
    inner: R,
    n: &'a AtomicU64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The reading thread: reads, hashes and decompresses the blob, and sends
/// the tar stream on in blocks, so that the unpacker's thread only parses
/// and writes. When the unpacker hangs up (it failed), it stops
/// decompressing but still hashes the rest of the blob: a blob that is not
/// what its descriptor says is the first thing to report.
pub fn feed(mut raw: BlobReader, c: Compression, tx: SyncSender<Msg>, pool: Receiver<Vec<u8>>, n: &AtomicU64) -> Fed {
    let (format, stream) = match decoder(c, Counted { inner: &mut raw, n }) {
        Ok((stream, "tar")) => ("tar", if pump(stream, &tx, &pool) { Stream::Blob } else { Stream::Unfinished }),
        Ok((stream, format)) => {
            let mut hashed = HashingReader::new(stream);
            let whole = pump(&mut hashed, &tx, &pool);
            // At the end already: finish() reads nothing more.
            let digest = if whole { hashed.finish().ok().map(|(d, _)| d) } else { None };
            (format, digest.map_or(Stream::Unfinished, Stream::Decompressed))
        }
        Err(e) => {
            let _ = tx.send(Err(e));
            ("read", Stream::Unfinished)
        }
    };
    let blob = raw.finish().map(|(d, _)| d);
    let diff = match (stream, &blob) {
        (Stream::Blob, Ok(d)) => Some(d.clone()),
        (Stream::Decompressed(d), _) => Some(d),
        _ => None,
    };
    Fed { format, blob, diff }
}

/// Sends `stream` to `tx` in blocks; whether it got to the stream's end.
fn pump(mut stream: impl Read, tx: &SyncSender<Msg>, pool: &Receiver<Vec<u8>>) -> bool {
    loop {
        let mut block = pool.try_recv().unwrap_or_else(|_| vec![0; BLOCK]);
        let (n, eof) = match fill(&mut stream, &mut block) {
            Ok(filled) => filled,
            Err(e) => {
                let _ = tx.send(Err(e));
                return false;
            }
        };
        if n > 0 && tx.send(Ok((block, n))).is_err() {
            return false;
        }
        if eof {
            return true;
        }
    }
}

/// Reads into `buf` until it is full or the stream ends: (bytes, at end).
fn fill(r: &mut impl Read, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok((n, true)),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((n, false))
}

/// The unpacker's end of the reading thread: the tar stream as a reader.
/// An error that came down the pipe is kept, to be reported as what it is
/// (a read or decompression error) rather than as the tar error it causes.
pub struct Pipe<'a, 'b> {
    rx: Receiver<Msg>,
    pool: Sender<Vec<u8>>,
    block: Vec<u8>,
    pos: usize,
    len: usize,
    pub failed: Option<io::Error>,
    read: &'a AtomicU64,
    meter: &'a mut Meter<'b>,
    flush: SyncSender<()>,
    unflushed: usize,
}

impl<'a, 'b> Pipe<'a, 'b> {
    /// `read` counts the blob bytes read so far, for `meter`; every
    /// FLUSH_STEP bytes of tar stream, a ping goes to `flush`.
    pub fn new(
        rx: Receiver<Msg>,
        pool: Sender<Vec<u8>>,
        read: &'a AtomicU64,
        meter: &'a mut Meter<'b>,
        flush: SyncSender<()>,
    ) -> Self {
        Pipe { rx, pool, block: Vec::new(), pos: 0, len: 0, failed: None, read, meter, flush, unflushed: 0 }
    }
}

impl Read for Pipe<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            if let Some(e) = &self.failed {
                return Err(io::Error::new(e.kind(), e.to_string()));
            }
            match self.rx.recv() {
                Ok(Ok((block, len))) => {
                    let used = std::mem::replace(&mut self.block, block);
                    let _ = self.pool.send(used);
                    (self.pos, self.len) = (0, len);
                    self.meter.to(self.read.load(Ordering::Relaxed));
                    self.unflushed += len;
                    if self.unflushed >= FLUSH_STEP {
                        // One flush at a time: a ping while one runs is dropped.
                        let _ = self.flush.try_send(());
                        self.unflushed = 0;
                    }
                }
                Ok(Err(e)) => self.failed = Some(e),
                // The reading thread is done: the stream's end.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{gzip, zstd};
    use std::sync::mpsc;

    /// What came out of a feed: the bytes read through the pipe (the first
    /// `keep` of them, the pipe then dropped), the pipe's error, the
    /// feeder's findings and the last progress reported.
    struct Run {
        got: Vec<u8>,
        failed: Option<io::Error>,
        fed: Fed,
        progress: u64,
    }

    fn run(blob: &[u8], c: Compression, keep: usize) -> Run {
        let raw: BlobReader = HashingReader::new(Box::new(io::Cursor::new(blob.to_vec())));
        let read = AtomicU64::new(0);
        let (tx, rx) = mpsc::sync_channel(DEPTH);
        let (pool, pool_rx) = mpsc::channel();
        let (flush, _pings) = mpsc::sync_channel(1);
        let mut progress = 0;
        let mut report = |p: crate::store::Progress| progress = p.done;
        let mut meter = Meter { done: 0, total: blob.len() as u64, report: &mut report };
        let (got, failed, fed) = std::thread::scope(|s| {
            let feeder = s.spawn(|| feed(raw, c, tx, pool_rx, &read));
            let mut pipe = Pipe::new(rx, pool, &read, &mut meter, flush);
            let mut got = Vec::new();
            let _ = (&mut pipe).take(keep as u64).read_to_end(&mut got);
            let failed = pipe.failed.take();
            drop(pipe);
            (got, failed, feeder.join().unwrap())
        });
        Run { got, failed, fed, progress }
    }

    /// Varied bytes, more blocks than the pipe and the reader hold, so that
    /// a reader hanging up after the first finds the feeder still going.
    fn data() -> Vec<u8> {
        (0..((DEPTH + 2) * BLOCK + 12345) as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    #[test]
    fn compressed_streams_are_passed_on_whole_and_hashed_on_both_sides() {
        let tar = data();
        for (blob, c, format) in [(gzip(&tar), Compression::Gzip, "gzip"), (zstd(&tar), Compression::Sniff, "zstd")] {
            let r = run(&blob, c, usize::MAX);
            assert!(r.got == tar, "{format}: the stream differs");
            assert!(r.failed.is_none(), "{format}: {:?}", r.failed);
            assert_eq!(r.fed.format, format);
            assert_eq!(r.fed.blob.unwrap(), Digest::of(&blob));
            assert_eq!(r.fed.diff, Some(Digest::of(&tar)));
            assert_eq!(r.progress, blob.len() as u64);
        }
    }

    #[test]
    fn an_uncompressed_blob_is_its_own_diff_id() {
        let tar = data();
        let r = run(&tar, Compression::Sniff, usize::MAX);
        assert!(r.got == tar && r.failed.is_none());
        assert_eq!(r.fed.format, "tar");
        assert_eq!(r.fed.blob.unwrap(), Digest::of(&tar));
        assert_eq!(r.fed.diff, Some(Digest::of(&tar)));
    }

    #[test]
    fn a_broken_stream_reaches_the_reader_as_its_own_error() {
        let mut gz = gzip(&data());
        gz.truncate(gz.len() - 100);
        let r = run(&gz, Compression::Gzip, usize::MAX);
        assert!(r.failed.is_some(), "truncated gzip read whole");
        assert_eq!(r.fed.diff, None);
        assert_eq!(r.fed.blob.unwrap(), Digest::of(&gz), "the blob is hashed to its end");
    }

    #[test]
    fn a_reader_that_hangs_up_still_gets_the_whole_blob_hashed() {
        let tar = data();
        let gz = gzip(&tar);
        let r = run(&gz, Compression::Gzip, 1000);
        assert_eq!(r.got, tar[..1000]);
        assert_eq!(r.fed.diff, None, "a stream not read to its end has no diff id");
        assert_eq!(r.fed.blob.unwrap(), Digest::of(&gz));
    }
}
