//! The migration stream on one connection (TLS over TCP, see `tls`; the frames work on any
//! byte stream): a magic, then frames (`tag: u8`, `len: u32`
//! big-endian, payload). Control frames carry JSON; a part's content travels as zstd-compressed
//! chunks and ends with its size and sha256, which the target checks before it uses the part.
//! The final manifest lists every part again, so a dropped or added part is noticed too.
//!
//! ```text
//! source                                  target
//!   MAGIC, Hello (id, image, criu flags) ->
//!                                        <- Answer (accept: layers it lacks | refuse)
//!   parts: layers it lacks, image config ->          (before the freeze: immutable)
//!   -- freeze, dump --
//!   parts: config.json, upper/rootfs tar,
//!          criu/* files, Manifest        ->
//!                                        <- Outcome (restored, stopped | failed)
//!   -- delete the copy here --
//!   Commit (or Abort, giving up)         ->
//!                                           -- SIGCONT: it runs there --
//!                                        <- Resumed (running | stopped, why)
//! ```
//!
//! The restored container stays stopped until the commit, so it never runs on both hosts: if
//! the outcome is lost the source resumes its copy (and says Abort if it still can), and a
//! target that hears neither keeps its copy stopped for the operator. The source reports
//! success only on hearing that it runs there; without that word it says where it may be.

use std::borrow::Cow;
use std::io::{BufWriter, Read, Write};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use warren_images::digest::Digest;
use warren_images::transfer::ImageRef;

use super::MigrateError;

pub const MAGIC: &[u8; 16] = b"WARREN-MIGRATE/2";
/// Uncompressed bytes per data frame.
const CHUNK: usize = 1 << 20;
/// No frame is larger: a compressed chunk that grew, or a control message.
const MAX_FRAME: usize = CHUNK + (64 << 10);
/// Fast: the stream crosses a host's own network, and the pages are often already sparse.
const ZSTD_LEVEL: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Hello = 1,
    Answer = 2,
    PartBegin = 3,
    Data = 4,
    PartEnd = 5,
    Manifest = 6,
    Outcome = 7,
    Commit = 8,
    Abort = 9,
    Resumed = 10,
    /// A data chunk sent as it is: it would not compress (only to a target that said it reads them).
    Raw = 11,
}

impl Tag {
    fn from_u8(b: u8) -> Option<Tag> {
        [
            Tag::Hello,
            Tag::Answer,
            Tag::PartBegin,
            Tag::Data,
            Tag::PartEnd,
            Tag::Manifest,
            Tag::Outcome,
            Tag::Commit,
            Tag::Abort,
            Tag::Resumed,
            Tag::Raw,
        ]
        .into_iter()
        .find(|t| *t as u8 == b)
    }
}

/// What the source offers: which container, how its rootfs is made, how CRIU must restore it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub id: String,
    pub rootfs: RootfsOffer,
    pub criu: CriuFlags,
    /// A tenant's record when the container is a tenant's (`tenant migrate`): the target
    /// makes it a tenant there, under a supervisor.
    #[serde(default)]
    pub tenant: Option<crate::tenant::Tenant>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RootfsOffer {
    /// An overlay of an image's layers: the upper dir travels, and the layers the target lacks.
    Image(ImageRef),
    /// A plain directory: it travels whole.
    Plain,
}

/// The CRIU options both ends must agree on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CriuFlags {
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    /// Post-copy on the target: the container runs before its memory is all in place, filled
    /// from the target's copy of the dump (older targets ignore it and restore it all first).
    pub lazy_pages: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Accept {
        missing_layers: Vec<Digest>,
        /// The target reads Raw chunks (older targets do not say so, and get zstd only).
        #[serde(default)]
        raw_chunks: bool,
        /// The target takes the memory as a [`Part::Pages`] stream while the source dumps.
        #[serde(default)]
        page_stream: bool,
    },
    Refuse {
        reason: String,
    },
}

/// The parts of a stream; anything else is refused by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Part {
    /// An image layer the target lacks, as an OCI layer tar, by chain id.
    Layer(Digest),
    /// The image's config blob.
    ImageConfig,
    /// The container's config as it runs (live updates included).
    Config,
    /// The overlay upper dir as an OCI layer tar.
    Upper,
    /// A plain rootfs as a tar.
    Rootfs,
    /// One file of the CRIU images directory, by name (no directories).
    Criu(String),
    /// The memory as the source's CRIU sent it to a page server while it dumped (see
    /// `migrate::pages`): page maps and pages, for the target's page server to write.
    Pages,
}

impl Part {
    /// Refuses a CRIU file name that could land outside its directory.
    pub fn validate(&self) -> Result<(), MigrateError> {
        match self {
            Part::Criu(name) => {
                let ok = !name.is_empty()
                    && !name.starts_with('.')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                ok.then_some(()).ok_or_else(|| MigrateError::BadPartName { name: name.clone() })
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartEnd {
    pub bytes: u64,
    pub sha256: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub part: Part,
    pub bytes: u64,
    pub sha256: Digest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub parts: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    /// Restored with its processes stopped, waiting for Commit or Abort.
    Restored {
        pid: i32,
        restore_ms: u64,
    },
    Failed {
        reason: String,
    },
}

/// After the commit: whether the target let the container run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Resumed {
    Running,
    Stopped { reason: String },
}

/// Frames in both directions on one connection.
struct Framed<S: Read + Write> {
    peer: String,
    /// Writes are buffered (a TLS record per small frame would be wasteful) and flushed
    /// before every wait for the peer; reads go to the stream, whose TLS layer buffers them.
    io: BufWriter<S>,
}

impl<S: Read + Write> Framed<S> {
    fn new(stream: S, peer: String) -> Framed<S> {
        Framed { io: BufWriter::with_capacity(CHUNK, stream), peer }
    }

    fn stream_err(&self) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
        |source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => MigrateError::Truncated { peer: self.peer.clone() },
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                MigrateError::Timeout { peer: self.peer.clone() }
            }
            _ => MigrateError::Stream { peer: self.peer.clone(), source },
        }
    }

    fn write(&mut self, tag: Tag, payload: &[u8]) -> Result<(), MigrateError> {
        let mut head = [0u8; 5];
        head[0] = tag as u8;
        head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
        let r = self.io.write_all(&head).and_then(|_| self.io.write_all(payload));
        r.map_err(self.stream_err())
    }

    fn write_json<T: Serialize>(&mut self, tag: Tag, value: &T) -> Result<(), MigrateError> {
        self.write(tag, &serde_json::to_vec(value).expect("plain data serializes"))
    }

    fn flush(&mut self) -> Result<(), MigrateError> {
        self.io.flush().map_err(self.stream_err())
    }

    fn read(&mut self) -> Result<(Tag, Vec<u8>), MigrateError> {
        let mut head = [0u8; 5];
        self.io.get_mut().read_exact(&mut head).map_err(self.stream_err())?;
        let tag = Tag::from_u8(head[0]).ok_or(MigrateError::BadFrame { peer: self.peer.clone(), tag: head[0] })?;
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(MigrateError::FrameTooLarge { peer: self.peer.clone(), len });
        }
        let mut payload = vec![0; len];
        self.io.get_mut().read_exact(&mut payload).map_err(self.stream_err())?;
        Ok((tag, payload))
    }

    fn read_json<T: DeserializeOwned>(&mut self, want: Tag) -> Result<T, MigrateError> {
        let (tag, payload) = self.read()?;
        if tag != want {
            return Err(self.unexpected(tag, &format!("{want:?}")));
        }
        self.parse(want, &payload)
    }

    /// A frame of type `got` where the protocol wants `want`.
    fn unexpected(&self, got: Tag, want: &str) -> MigrateError {
        MigrateError::Unexpected { peer: self.peer.clone(), got: format!("{got:?}"), want: want.into() }
    }

    fn parse<T: DeserializeOwned>(&self, tag: Tag, payload: &[u8]) -> Result<T, MigrateError> {
        serde_json::from_slice(payload).map_err(|source| MigrateError::BadMessage {
            peer: self.peer.clone(),
            what: format!("{tag:?}"),
            source,
        })
    }
}

/// The source's end: its methods are the protocol, in order.
pub struct SourceEnd<S: Read + Write> {
    framed: Framed<S>,
    manifest: Manifest,
    compressor: zstd::bulk::Compressor<'static>,
    /// Whether the target reads Raw chunks, and how many were sent so.
    raw_chunks: bool,
    raw_sent: u64,
    /// Whether the target takes the memory as a page stream while the source dumps.
    pub page_stream: bool,
    /// Uncompressed and compressed bytes sent in parts, for the report and progress.
    pub sent: (u64, u64),
}

impl<S: Read + Write> SourceEnd<S> {
    /// The source's end of `stream` to `peer` (an address, for errors).
    pub fn new(stream: S, peer: String) -> Result<SourceEnd<S>, MigrateError> {
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|source| MigrateError::Zstd { source })?;
        let framed = Framed::new(stream, peer);
        Ok(SourceEnd {
            framed,
            manifest: Manifest::default(),
            compressor,
            raw_chunks: false,
            raw_sent: 0,
            page_stream: false,
            sent: (0, 0),
        })
    }

    pub fn send_hello(&mut self, hello: &Hello) -> Result<(), MigrateError> {
        self.framed.io.write_all(MAGIC).map_err(self.framed.stream_err())?;
        self.framed.write_json(Tag::Hello, hello)?;
        self.framed.flush()
    }

    pub fn wait_for_answer(&mut self) -> Result<Answer, MigrateError> {
        let answer = self.framed.read_json(Tag::Answer)?;
        self.raw_chunks = matches!(answer, Answer::Accept { raw_chunks: true, .. });
        self.page_stream = matches!(answer, Answer::Accept { page_stream: true, .. });
        Ok(answer)
    }

    /// Sends one part: `fill` writes its content into the given writer.
    pub fn send_part<F>(&mut self, part: Part, fill: F) -> Result<(), MigrateError>
    where
        F: FnOnce(&mut PartWriter<'_, S>) -> Result<(), MigrateError>,
    {
        self.framed.write_json(Tag::PartBegin, &part)?;
        let mut w =
            PartWriter { end: self, buf: Vec::with_capacity(CHUNK), hash: Sha256::new(), bytes: 0, error: None };
        fill(&mut w)?;
        let end = w.finish()?;
        self.framed.write_json(Tag::PartEnd, &end)?;
        self.manifest.parts.push(ManifestEntry { part, bytes: end.bytes, sha256: end.sha256 });
        Ok(())
    }

    fn send_chunk(&mut self, data: &[u8]) -> Result<(), MigrateError> {
        let (tag, payload) = if self.raw_chunks && incompressible(&mut self.compressor, data)? {
            self.raw_sent += 1;
            (Tag::Raw, Cow::Borrowed(data))
        } else {
            let packed = self.compressor.compress(data).map_err(|source| MigrateError::Zstd { source })?;
            (Tag::Data, Cow::Owned(packed))
        };
        self.sent.0 += data.len() as u64;
        self.sent.1 += payload.len() as u64 + 5;
        self.framed.write(tag, &payload)
    }

    /// Ends the stream with the manifest of every part sent.
    pub fn send_manifest(&mut self) -> Result<(), MigrateError> {
        let manifest = std::mem::take(&mut self.manifest);
        self.framed.write_json(Tag::Manifest, &manifest)?;
        self.framed.flush()
    }

    /// Pushes what is buffered: the target starts on a part only when it has it all.
    pub fn flush(&mut self) -> Result<(), MigrateError> {
        self.framed.flush()
    }

    pub fn wait_for_outcome(&mut self) -> Result<Outcome, MigrateError> {
        self.framed.read_json(Tag::Outcome)
    }

    /// The copy here is gone: the target may let its copy run.
    pub fn commit(&mut self) -> Result<(), MigrateError> {
        self.framed.write(Tag::Commit, b"{}")?;
        self.framed.flush()
    }

    /// After the commit: whether the container runs on the target.
    pub fn wait_for_resumed(&mut self) -> Result<Resumed, MigrateError> {
        self.framed.read_json(Tag::Resumed)
    }

    /// The copy here runs again: the target must drop its copy. Best effort (the stream may be
    /// what failed).
    pub fn abort(&mut self) {
        if self.framed.write(Tag::Abort, b"{}").is_ok() {
            let _ = self.framed.flush();
        }
    }
}

/// Whether zstd would save less than a tenth of `data`, judged on samples (8 of 2 KiB,
/// spread over it): compressing what does not shrink (dirty pages of random data, packed
/// files) costs as much time as the transfer of the chunk itself.
fn incompressible(compressor: &mut zstd::bulk::Compressor<'static>, data: &[u8]) -> Result<bool, MigrateError> {
    const SAMPLES: usize = 8;
    const SAMPLE: usize = 2 << 10;
    if data.len() < SAMPLES * SAMPLE * 4 {
        return Ok(false);
    }
    let stride = data.len() / SAMPLES;
    let (mut raw, mut packed) = (0, 0);
    for i in 0..SAMPLES {
        let sample = &data[i * stride..i * stride + SAMPLE];
        raw += sample.len();
        packed += compressor.compress(sample).map_err(|source| MigrateError::Zstd { source })?.len();
    }
    Ok(packed * 10 >= raw * 9)
}

/// Writes one part's content: chunked, hashed, compressed.
pub struct PartWriter<'a, S: Read + Write> {
    end: &'a mut SourceEnd<S>,
    buf: Vec<u8>,
    hash: Sha256,
    bytes: u64,
    /// A stream error seen inside `Write`, returned by `finish` with its own name.
    error: Option<MigrateError>,
}

impl<S: Read + Write> PartWriter<'_, S> {
    fn push(&mut self) -> Result<(), MigrateError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.hash.update(&self.buf);
        self.bytes += self.buf.len() as u64;
        let buf = std::mem::take(&mut self.buf);
        let r = self.end.send_chunk(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// The stream error behind a failed `write`, if that is what failed.
    pub fn take_error(&mut self) -> Option<MigrateError> {
        self.error.take()
    }

    fn finish(mut self) -> Result<PartEnd, MigrateError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.push()?;
        Ok(PartEnd { bytes: self.bytes, sha256: Digest::from_hasher(self.hash) })
    }
}

impl<S: Read + Write> Write for PartWriter<'_, S> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            if let Err(e) = self.push() {
                self.error = Some(e);
                return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "migration stream failed"));
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the target reads next after the answer.
pub enum Incoming {
    Part(Part),
    Manifest(Manifest),
}

/// The target's end.
pub struct TargetEnd<S: Read + Write> {
    framed: Framed<S>,
    decompressor: zstd::bulk::Decompressor<'static>,
    received: Vec<ManifestEntry>,
}

impl<S: Read + Write> TargetEnd<S> {
    /// The target's end of `stream` from `peer` (an address, for errors).
    pub fn new(stream: S, peer: String) -> Result<TargetEnd<S>, MigrateError> {
        let decompressor = zstd::bulk::Decompressor::new().map_err(|source| MigrateError::Zstd { source })?;
        Ok(TargetEnd { framed: Framed::new(stream, peer), decompressor, received: Vec::new() })
    }

    pub fn peer(&self) -> &str {
        &self.framed.peer
    }

    /// The magic and the hello; anything else is not a migration stream.
    pub fn read_hello(&mut self) -> Result<Hello, MigrateError> {
        let mut magic = [0u8; MAGIC.len()];
        let got = self.framed.io.get_mut().read_exact(&mut magic);
        if got.is_err() || &magic != MAGIC {
            return Err(MigrateError::NotMigrationStream { peer: self.framed.peer.clone() });
        }
        self.framed.read_json(Tag::Hello)
    }

    pub fn answer(&mut self, answer: &Answer) -> Result<(), MigrateError> {
        self.framed.write_json(Tag::Answer, answer)?;
        self.framed.flush()
    }

    pub fn next_incoming(&mut self) -> Result<Incoming, MigrateError> {
        let (tag, payload) = self.framed.read()?;
        match tag {
            Tag::PartBegin => {
                let part: Part = self.framed.parse(tag, &payload)?;
                part.validate()?;
                Ok(Incoming::Part(part))
            }
            Tag::Manifest => Ok(Incoming::Manifest(self.framed.parse(tag, &payload)?)),
            other => Err(self.framed.unexpected(other, "PartBegin or Manifest")),
        }
    }

    /// Reads the content of `part` into `out` and checks it against the part's end frame.
    pub fn receive_part(&mut self, part: &Part, out: &mut impl Write) -> Result<PartEnd, MigrateError> {
        let (mut hash, mut bytes) = (Sha256::new(), 0u64);
        // A chunk's content: hashed, counted, spooled.
        let mut take = |data: &[u8]| {
            hash.update(data);
            bytes += data.len() as u64;
            out.write_all(data).map_err(|source| MigrateError::Spool { part: part.clone(), source })
        };
        loop {
            let (tag, payload) = self.framed.read()?;
            match tag {
                Tag::Data => {
                    let data = self
                        .decompressor
                        .decompress(&payload, CHUNK)
                        .map_err(|_| MigrateError::BadChunk { part: part.clone() })?;
                    take(&data)?;
                }
                Tag::Raw if payload.len() <= CHUNK => take(&payload)?,
                Tag::PartEnd => {
                    let end: PartEnd = self.framed.parse(tag, &payload)?;
                    let actual = Digest::from_hasher(hash);
                    if end.bytes != bytes || end.sha256 != actual {
                        return Err(MigrateError::DigestMismatch { part: part.clone(), expected: end.sha256, actual });
                    }
                    self.received.push(ManifestEntry { part: part.clone(), bytes, sha256: actual });
                    return Ok(end);
                }
                other => return Err(self.framed.unexpected(other, "Data, Raw or PartEnd")),
            }
        }
    }

    /// The manifest must list exactly the parts received, with their sizes and digests.
    pub fn check_manifest(&self, manifest: &Manifest) -> Result<(), MigrateError> {
        if let Some(e) = manifest.parts.iter().find(|e| !self.received.contains(e)) {
            return Err(MigrateError::Manifest { part: e.part.clone(), reason: "not received as listed" });
        }
        if let Some(e) = self.received.iter().find(|e| !manifest.parts.contains(e)) {
            return Err(MigrateError::Manifest { part: e.part.clone(), reason: "received but not listed" });
        }
        Ok(())
    }

    /// Reads and drops the rest of the source's stream up to its manifest: refused part-way,
    /// the target still takes what the source sends, so that the source is not left
    /// blocked on a full socket and hears the outcome.
    pub fn drain(&mut self) -> Result<(), MigrateError> {
        while self.framed.read()?.0 != Tag::Manifest {}
        Ok(())
    }

    pub fn report(&mut self, outcome: &Outcome) -> Result<(), MigrateError> {
        self.framed.write_json(Tag::Outcome, outcome)?;
        self.framed.flush()
    }

    /// After the commit: whether the container runs here now.
    pub fn confirm(&mut self, resumed: &Resumed) -> Result<(), MigrateError> {
        self.framed.write_json(Tag::Resumed, resumed)?;
        self.framed.flush()
    }

    /// After a reported restore: whether the source removed its copy (Commit) or resumed it
    /// (Abort). An error leaves it unknown.
    pub fn wait_for_commit(&mut self) -> Result<bool, MigrateError> {
        let (tag, _) = self.framed.read()?;
        match tag {
            Tag::Commit => Ok(true),
            Tag::Abort => Ok(false),
            other => Err(self.framed.unexpected(other, "Commit or Abort")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_part_names_stay_in_their_directory() {
        for bad in ["", "../x", "a/b", ".hidden", "x\0y", "/etc/passwd"] {
            assert!(Part::Criu(bad.into()).validate().is_err(), "{bad:?}");
        }
        for good in ["pages-1.img", "core-12.img", "dump.log", "warren-checkpoint.json"] {
            Part::Criu(good.into()).validate().unwrap();
        }
    }

    /// xorshift output: what zstd cannot shrink.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    }

    /// Sends `content` as one part to a target that answered `raw_chunks`; returns what the
    /// target received and the source's (bytes, wire bytes).
    fn round_trip(content: Vec<u8>, raw_chunks: bool) -> (Vec<u8>, u64) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let target = std::thread::spawn(move || {
            let mut end = TargetEnd::new(b, "source".into()).unwrap();
            end.answer(&Answer::Accept { missing_layers: Vec::new(), raw_chunks, page_stream: false }).unwrap();
            let Incoming::Part(part) = end.next_incoming().unwrap() else { panic!("not a part") };
            let mut got = Vec::new();
            end.receive_part(&part, &mut got).unwrap();
            got
        });
        let mut end = SourceEnd::new(a, "target".into()).unwrap();
        end.wait_for_answer().unwrap();
        end.send_part(Part::Criu("pages-1.img".into()), |w| w.write_all(&content).map_err(|_| w.take_error().unwrap()))
            .unwrap();
        end.flush().unwrap();
        (target.join().unwrap(), end.raw_sent)
    }

    #[test]
    fn chunks_that_do_not_compress_go_raw_to_a_target_that_reads_them() {
        let mut content = noise(3 << 20);
        content.extend(vec![0u8; 2 << 20]);
        // The 3 MiB of noise go as they are, the zeros through zstd.
        let (got, raw) = round_trip(content.clone(), true);
        assert!(got == content, "content changed on the way");
        assert_eq!(raw, 3);
        // An older target: everything through zstd, the same content.
        let (got, raw) = round_trip(content.clone(), false);
        assert!(got == content && raw == 0, "{raw} raw chunks");
    }
}
