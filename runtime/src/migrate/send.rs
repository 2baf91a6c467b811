//! The source side: offer, send what the target lacks, freeze, dump, send the rest, and
//! delete here (then commit) only when the target has restored the container; otherwise
//! resume it here.

use std::io::IsTerminal;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_images::store::Store;
use warren_images::transfer::{self, ImageRef};

use super::wire::{Answer, CriuFlags, Hello, Outcome, Part, PartWriter, RootfsOffer, SourceEnd};
use super::{io_err, MigrateError};
use crate::checkpoint::{CheckpointOptions, CriuCommon};
use crate::container::Runtime;
use crate::state::Status;

pub struct SendOptions {
    /// The target's `migrate receive` address, HOST:PORT.
    pub target: String,
    /// The image store the container's bundle was made with.
    pub store: PathBuf,
    /// Where the dump is written before it is sent (see [`super::default_work_dir`]).
    pub work: PathBuf,
    pub criu: CriuCommon,
    pub timeout: Duration,
    /// Print progress on stderr (when it is a terminal).
    pub progress: bool,
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
        let c = self.open(id)?;
        let status = self.status(&c);
        if status != Status::Running {
            return Err(MigrateError::NotRunning { id: id.into(), status });
        }
        let (bundle, rootfs) = (c.state.bundle.clone(), c.state.rootfs.clone());
        drop(c);
        let store = Store::open(&opts.store)?;
        let image = store.bundle_image(&bundle)?;
        let stream = connect(&opts.target, opts.timeout)?;
        let peer = super::wire::peer_name(&stream);
        let mut end = SourceEnd::new(stream, peer)?;
        let hello = Hello {
            id: id.into(),
            rootfs: image.as_ref().map_or(RootfsOffer::Plain, |(i, _)| RootfsOffer::Image(i.clone())),
            criu: CriuFlags {
                tcp_established: opts.criu.tcp_established,
                ext_unix_sk: opts.criu.ext_unix_sk,
                file_locks: opts.criu.file_locks,
            },
        };
        end.send_hello(&hello)?;
        let missing = match end.wait_for_answer()? {
            Answer::Refuse { reason } => return Err(MigrateError::Refused { reason }),
            Answer::Accept { missing_layers } => missing_layers,
        };
        if let Some((image, config)) = &image {
            send_image(&mut end, &store, image, config, &missing)?;
        }
        let what = match &image {
            Some(_) => Rootfs::Upper(bundle.join("upper")),
            None => Rootfs::Plain(rootfs),
        };
        let dump_dir = opts.work.join(id);
        let frozen_at = Instant::now();
        self.pause(id)?;
        let moved = self.send_frozen(id, &mut end, &what, &dump_dir, opts);
        let _ = std::fs::remove_dir_all(&dump_dir);
        let (dump, outcome) = match moved {
            Ok(done) => done,
            Err(cause) => {
                end.abort();
                return Err(self.roll_back(id, cause));
            }
        };
        // The target holds it restored and stopped: the copy here goes, then it may run there.
        let deleted = self.delete(id, true);
        if let Err(cause) = deleted {
            if self.still_here(id) {
                end.abort();
                return Err(self.roll_back(id, cause.into()));
            }
            log::warn!("migrate {id}: after the kill: {cause}");
        }
        end.commit().map_err(|e| MigrateError::CommitLost { id: id.into(), cause: Box::new(e) })?;
        let frozen = frozen_at.elapsed();
        // From here on an error must not resume it here: it runs there.
        if image.is_some() {
            if let Err(cause) = warren_images::bundle::remove(&store, &bundle) {
                let cause = Box::new(cause.into());
                return Err(MigrateError::SourceLeftovers { id: id.into(), target_pid: outcome.0, cause });
            }
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
        id: &str,
        end: &mut SourceEnd<TcpStream>,
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
        self.checkpoint(id, &checkpoint)?;
        let dump = t.elapsed();
        let config = self.open(id)?.state.config.clone();
        let progress = Progress::new(opts.progress);
        end.send_part(Part::Config, |w| write_all(w, &serde_json::to_vec_pretty(&config).expect("spec serializes")))?;
        match rootfs {
            Rootfs::Upper(dir) => end.send_part(Part::Upper, |w| tree(w, dir))?,
            Rootfs::Plain(dir) => end.send_part(Part::Rootfs, |w| tree(w, dir))?,
        }
        for name in criu_files(dump_dir)? {
            let path = dump_dir.join(&name);
            end.send_part(Part::Criu(name), |w| copy_file(w, &path))?;
            progress.show(end.sent);
        }
        end.send_manifest()?;
        progress.done(end.sent);
        match end.wait_for_outcome()? {
            Outcome::Restored { pid, restore_ms } => Ok((dump, (pid, restore_ms))),
            Outcome::Failed { reason } => Err(MigrateError::TargetFailed { reason }),
        }
    }

    /// Whether the container's processes are still here (a delete that failed before its kill).
    fn still_here(&self, id: &str) -> bool {
        self.open(id).is_ok_and(|c| self.status(&c) != Status::Stopped)
    }

    /// Resumes the container here after a failed move.
    fn roll_back(&self, id: &str, cause: MigrateError) -> MigrateError {
        log::warn!("migrate {id}: {cause}: resuming it here");
        let resumed = match self.open(id).map(|c| self.status(&c)) {
            Ok(Status::Paused) => self.resume(id),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
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

/// The layers the target lacks, bottom first, then the image's config.
fn send_image(
    end: &mut SourceEnd<TcpStream>,
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

fn tree(w: &mut PartWriter<'_, TcpStream>, dir: &Path) -> Result<(), MigrateError> {
    match transfer::write_layer_tar(dir, &mut *w) {
        Ok(_) => Ok(()),
        Err(e) => Err(w.take_error().unwrap_or(MigrateError::Transfer(e))),
    }
}

fn write_all(w: &mut PartWriter<'_, TcpStream>, data: &[u8]) -> Result<(), MigrateError> {
    use std::io::Write;
    w.write_all(data).map_err(|_| w.take_error().expect("only the stream fails a part write"))
}

fn copy_file(w: &mut PartWriter<'_, TcpStream>, path: &Path) -> Result<(), MigrateError> {
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

/// Bytes sent and their rate, on one updated stderr line when it is a terminal.
struct Progress {
    on: bool,
    start: Instant,
}

impl Progress {
    fn new(wanted: bool) -> Progress {
        Progress { on: wanted && std::io::stderr().is_terminal(), start: Instant::now() }
    }

    fn show(&self, (bytes, wire): (u64, u64)) {
        if self.on {
            let secs = self.start.elapsed().as_secs_f64().max(1e-3);
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            eprint!(
                "\rsent {:.1} MiB ({:.1} MiB on the wire), {:.1} MiB/s   ",
                mib(bytes),
                mib(wire),
                mib(bytes) / secs
            );
        }
    }

    fn done(&self, sent: (u64, u64)) {
        if self.on {
            self.show(sent);
            eprintln!();
        }
    }
}
