//! The source side: offer, send what the target lacks, freeze, dump, send the rest, and
//! delete here (then commit) only when the target has restored the container; otherwise
//! resume it here.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_images::store::Store;
use warren_images::transfer::{self, ImageRef};

use super::tls::Tls;
use super::wire::{Answer, CriuFlags, Hello, Outcome, Part, Resumed, RootfsOffer};
use super::{io_err, pages, MigrateError};
use crate::checkpoint::{CheckpointOptions, CriuCommon};
use crate::container::{Locked, Runtime};
use crate::failpoint::failpoint;

/// The source's end of the stream: over TLS to a pinned target.
type SourceEnd = super::wire::SourceEnd<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;
type PartWriter<'a> = super::wire::PartWriter<'a, rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

pub struct SendOptions {
    /// The target's `migrate receive` address, HOST:PORT.
    pub target: String,
    /// This host's identity and the targets it trusts.
    pub tls: Tls,
    /// The image store the container's bundle was made with.
    pub store: PathBuf,
    /// Where the dump is written before it is sent (see [`super::default_work_dir`]).
    pub work: PathBuf,
    pub criu: CriuCommon,
    pub timeout: Duration,
    /// Post-copy on the target (see [`CriuFlags::lazy_pages`]).
    pub lazy_pages: bool,
    /// The tenant whose container this is, its record as it should be on the target.
    pub tenant: Option<crate::tenant::Tenant>,
    /// Told the part bytes sent so far (content, on the wire) after each part of the dump.
    pub progress: Option<Box<dyn Fn(u64, u64)>>,
}

/// What a migration took.
#[derive(Debug)]
pub struct SendReport {
    /// From the freeze here to the commit that lets it run on the target.
    pub frozen: Duration,
    pub dump: Duration,
    /// The target's restore, as it measured it.
    pub restore: Duration,
    pub total: Duration,
    /// Part bytes sent, before and after compression.
    pub bytes: u64,
    pub wire_bytes: u64,
    /// The container's init on the target.
    pub target_pid: i32,
}

impl Runtime {
    /// Moves running container `id` to the target. On error the container runs here again,
    /// unless the error says that resuming it failed too.
    pub fn migrate_send(&self, id: &str, opts: &SendOptions) -> Result<SendReport, MigrateError> {
        let t0 = Instant::now();
        // Held to the end: no other verb acts on the container while it moves.
        let c = self.open(id)?;
        let status = self.status(&c);
        if !status.can_migrate() {
            return Err(MigrateError::NotRunning { id: id.into(), status });
        }
        let (bundle, rootfs) = (c.state.bundle.clone(), c.state.rootfs.clone());
        let store = Store::open(&opts.store)?;
        let image = store.bundle_image(&bundle)?;
        let stream = opts.tls.connect(connect(&opts.target, opts.timeout)?, &opts.target)?;
        let mut end = SourceEnd::new(stream, opts.target.clone())?;
        let hello = Hello {
            id: id.into(),
            rootfs: image.as_ref().map_or(RootfsOffer::Plain, |(i, _)| RootfsOffer::Image(i.clone())),
            criu: CriuFlags {
                tcp_established: opts.criu.tcp_established,
                ext_unix_sk: opts.criu.ext_unix_sk,
                file_locks: opts.criu.file_locks,
                lazy_pages: opts.lazy_pages,
            },
            tenant: opts.tenant.clone(),
        };
        end.send_hello(&hello).map_err(|e| tls_refusal(&opts.tls, e))?;
        let missing = match end.wait_for_answer().map_err(|e| tls_refusal(&opts.tls, e))? {
            Answer::Refuse { reason } => return Err(MigrateError::Refused { reason }),
            Answer::Accept { missing_layers, .. } => missing_layers,
        };
        failpoint("migrate-send.accepted");
        if let Some((image, config)) = &image {
            send_image(&mut end, &store, image, config, &missing)?;
        }
        let what = match &image {
            Some(_) => Rootfs::Upper(bundle.join("upper")),
            None => Rootfs::Plain(rootfs),
        };
        let dump_dir = opts.work.join(id);
        let frozen_at = Instant::now();
        self.pause_locked(&c)?;
        failpoint("migrate-send.frozen");
        let moved = self.send_frozen(&c, &mut end, &what, &dump_dir, opts);
        let _ = std::fs::remove_dir_all(&dump_dir);
        let (dump, outcome) = match moved {
            Ok(done) => done,
            Err(cause) => {
                end.abort();
                return Err(self.roll_back(&c, cause));
            }
        };
        // The target holds it restored and stopped: the copy here goes, then it may run there.
        failpoint("migrate-send.restored-there");
        let deleted = self.delete_locked(&c, true);
        if let Err(cause) = deleted {
            if self.still_here(&c) {
                end.abort();
                return Err(self.roll_back(&c, cause.into()));
            }
            log::warn!("migrate {id}: after the kill: {cause}");
        }
        drop(c);
        failpoint("migrate-send.deleted");
        end.commit().map_err(|e| MigrateError::CommitLost { id: id.into(), cause: Box::new(e) })?;
        failpoint("migrate-send.committed");
        let resumed = end.wait_for_resumed();
        let frozen = frozen_at.elapsed();
        // The copy here is gone for good: so goes its bundle, whatever the target said.
        let leftovers = match &image {
            Some(_) => warren_images::bundle::remove(&store, &bundle).err(),
            None => None,
        };
        match resumed {
            Ok(Resumed::Running) => {}
            Ok(Resumed::Stopped { reason }) => return Err(MigrateError::NotResumed { id: id.into(), reason }),
            Err(e) => return Err(MigrateError::ResumeUnconfirmed { id: id.into(), cause: Box::new(e) }),
        }
        if let Some(cause) = leftovers {
            let cause = Box::new(cause.into());
            return Err(MigrateError::SourceLeftovers { id: id.into(), target_pid: outcome.0, cause });
        }
        Ok(SendReport {
            frozen,
            dump,
            restore: Duration::from_millis(outcome.1),
            total: t0.elapsed(),
            bytes: end.sent.0,
            wire_bytes: end.sent.1,
            target_pid: outcome.0,
        })
    }

    /// Dump (the container stays frozen), send the rest, wait for the target's outcome.
    fn send_frozen(
        &self,
        c: &Locked,
        end: &mut SourceEnd,
        rootfs: &Rootfs,
        dump_dir: &Path,
        opts: &SendOptions,
    ) -> Result<(Duration, (i32, u64)), MigrateError> {
        let t = Instant::now();
        let _ = std::fs::remove_dir_all(dump_dir);
        let checkpoint = CheckpointOptions {
            image_path: dump_dir.to_path_buf(),
            leave_running: true,
            // Frozen already, and without --tcp-established CRIU refuses live connections: a
            // lock would guard only against a connection made during the dump, which the
            // move would lose anyway (the source's copy goes).
            skip_network_lock: !opts.criu.tcp_established,
            common: opts.criu.clone(),
            ..Default::default()
        };
        if end.page_stream {
            self.dump_streaming_pages(c, end, checkpoint)?;
        } else {
            self.checkpoint_locked(c, &checkpoint)?;
        }
        failpoint("migrate-send.dumped");
        let dump = t.elapsed();
        let config = &c.state.config;
        end.send_part(Part::Config, |w| write_all(w, &serde_json::to_vec_pretty(&config).expect("spec serializes")))?;
        match rootfs {
            Rootfs::Upper(dir) => end.send_part(Part::Upper, |w| tree(w, dir))?,
            Rootfs::Plain(dir) => end.send_part(Part::Rootfs, |w| tree(w, dir))?,
        }
        for name in criu_files(dump_dir)? {
            let path = dump_dir.join(&name);
            end.send_part(Part::Criu(name), |w| copy_file(w, &path))?;
            if let Some(progress) = &opts.progress {
                progress(end.sent.0, end.sent.1);
            }
        }
        end.send_manifest()?;
        failpoint("migrate-send.parts-sent");
        match end.wait_for_outcome()? {
            Outcome::Restored { pid, restore_ms } => Ok((dump, (pid, restore_ms))),
            Outcome::Failed { reason } => Err(MigrateError::TargetFailed { reason }),
        }
    }

    /// The dump with its memory sent as it is read (see `pages`): CRIU writes to a page server
    /// socket, whose protocol a thread relays into the stream while CRIU runs here.
    fn dump_streaming_pages(
        &self,
        c: &Locked,
        end: &mut SourceEnd,
        mut checkpoint: CheckpointOptions,
    ) -> Result<(), MigrateError> {
        use std::os::fd::AsRawFd;
        let socketpair = Path::new("socketpair");
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io_err(socketpair))?;
        crate::sys::clear_cloexec(theirs.as_raw_fd()).map_err(io_err(socketpair))?;
        checkpoint.page_socket = Some(theirs.as_raw_fd());
        let (dumped, streamed) = std::thread::scope(|s| {
            let relay = s.spawn(|| {
                end.send_part(Part::Pages, |w| match pages::relay(&ours, &mut *w) {
                    Ok(_) => Ok(()),
                    Err(e) => Err(w.take_error().unwrap_or(e)),
                })
            });
            let dumped = self.checkpoint_locked(c, &checkpoint);
            // CRIU is gone: a relay still waiting for it (CRIU failed) reads the end.
            let _ = ours.shutdown(std::net::Shutdown::Both);
            (dumped, relay.join())
        });
        drop(theirs);
        let streamed = streamed.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (dumped, streamed) {
            (Ok(()), streamed) => streamed,
            // CRIU failed and the stream ended with it: CRIU's error says why.
            (Err(dumped), Ok(()) | Err(MigrateError::PageStream { .. })) => Err(dumped.into()),
            (Err(_), Err(streamed)) => Err(streamed),
        }
    }

    /// Whether the container's processes are still here (a delete that failed before its kill).
    fn still_here(&self, c: &Locked) -> bool {
        !self.status(c).is_stopped()
    }

    /// Resumes the container here after a failed move.
    fn roll_back(&self, c: &Locked, cause: MigrateError) -> MigrateError {
        let id = c.state.id.as_str();
        log::warn!("migrate {id}: {cause}: resuming it here");
        let resumed = match self.status(c) {
            s if s.can_resume() => self.resume_locked(c),
            _ => Ok(()),
        };
        match resumed {
            Ok(()) => MigrateError::RolledBack { id: id.into(), cause: Box::new(cause) },
            Err(e) => MigrateError::RollbackFailed { id: id.into(), cause: Box::new(cause), resume: Box::new(e) },
        }
    }
}

enum Rootfs {
    /// An image bundle's overlay upper dir.
    Upper(PathBuf),
    /// A plain rootfs directory.
    Plain(PathBuf),
}

fn connect(target: &str, timeout: Duration) -> Result<TcpStream, MigrateError> {
    let err = |source| MigrateError::Connect { addr: target.into(), source };
    let addrs: Vec<_> = target.to_socket_addrs().map_err(err)?.collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout)).map_err(err)?;
                s.set_write_timeout(Some(timeout)).map_err(err)?;
                s.set_nodelay(true).map_err(err)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// A target that refuses this host's certificate says so after the client's side of the
/// handshake, on the first read: its alert, as the TLS error it is.
fn tls_refusal(tls: &Tls, e: MigrateError) -> MigrateError {
    match e {
        MigrateError::Stream { peer, source } if Tls::is_tls_error(&source) => {
            MigrateError::Tls(tls.error(&peer, source))
        }
        other => other,
    }
}

/// The layers the target lacks, bottom first, then the image's config.
fn send_image(
    end: &mut SourceEnd,
    store: &Store,
    image: &ImageRef,
    config: &[u8],
    missing: &[warren_images::digest::Digest],
) -> Result<(), MigrateError> {
    for layer in image.layers.iter().filter(|l| missing.contains(&l.chain_id)) {
        let dir = store.layer_fs(&layer.chain_id).ok_or_else(|| {
            MigrateError::Store(warren_images::store::StoreError::LayerAbsent {
                image: image.name.clone(),
                layer: layer.chain_id.clone(),
            })
        })?;
        end.send_part(Part::Layer(layer.chain_id.clone()), |w| tree(w, &dir))?;
    }
    end.send_part(Part::ImageConfig, |w| write_all(w, config))?;
    end.flush()
}

fn tree(w: &mut PartWriter<'_>, dir: &Path) -> Result<(), MigrateError> {
    match transfer::write_layer_tar(dir, &mut *w) {
        Ok(_) => Ok(()),
        Err(e) => Err(w.take_error().unwrap_or(MigrateError::Transfer(e))),
    }
}

fn write_all(w: &mut PartWriter<'_>, data: &[u8]) -> Result<(), MigrateError> {
    use std::io::Write;
    w.write_all(data).map_err(|_| w.take_error().expect("only the stream fails a part write"))
}

fn copy_file(w: &mut PartWriter<'_>, path: &Path) -> Result<(), MigrateError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    match std::io::copy(&mut f, w) {
        Ok(_) => Ok(()),
        Err(e) => Err(w.take_error().unwrap_or_else(|| io_err(path)(e))),
    }
}

/// The dump's files, without criu's log (it stays with the source's diagnostics).
fn criu_files(dir: &Path) -> Result<Vec<String>, MigrateError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().map_err(io_err(dir))?.is_file() && name != "dump.log" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}
