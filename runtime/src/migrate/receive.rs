//! The target side: accept or refuse, take the parts (each checked against its digest before
//! it is used), make the bundle, restore, report. On any failure everything made here for
//! the container goes again.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_images::digest::Digest;
use warren_images::store::{Receiving, Store};

use super::policy::Policy;
use super::spool::{self, Spool};
use super::tls::{self, Tls};
use super::wire::{Answer, Hello, Incoming, Outcome, Part, Resumed, RootfsOffer};
use super::{io_err, MigrateError};
use crate::checkpoint::{CheckpointError, CriuCommon, RestoreOptions};
use crate::container::{ConsoleTarget, ContainerError, Runtime};
use crate::failpoint::failpoint;

/// The target's end of the stream: over TLS from a pinned source.
type TargetEnd = super::wire::TargetEnd<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>;

pub struct ReceiveOptions {
    /// This host's identity and the sources it trusts.
    pub tls: Tls,
    /// What a received config.json may ask of this host.
    pub policy: Policy,
    /// This host's image store: layers it has are not sent again.
    pub store: PathBuf,
    /// Received bundles are made as BUNDLES/ID.
    pub bundles: PathBuf,
    /// Where parts are spooled until restored (see [`super::default_work_dir`]).
    pub work: PathBuf,
    /// For a container with a terminal: the unix socket its new pty master goes to.
    pub console_socket: Option<PathBuf>,
    pub criu: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug)]
pub struct ReceiveReport {
    pub id: String,
    pub pid: i32,
    /// The source's address and certificate.
    pub from: String,
    pub layers_received: usize,
    pub restore: Duration,
}

/// Binds the listening socket (a port of 0 picks one; `local_addr` tells it).
pub fn listen(addr: &str) -> Result<TcpListener, MigrateError> {
    TcpListener::bind(addr).map_err(|source| MigrateError::Listen { addr: addr.into(), source })
}

/// What this host made for an incoming container (listed in its spool's record), undone unless
/// the restore is reported.
struct Made<'a> {
    rt: &'a Runtime,
    store: &'a Store,
    /// Keeps the image's layers (present and received) from collection until it is recorded.
    lease: Option<Receiving<'a>>,
    spool: Spool,
}

impl Made<'_> {
    fn staging(&self) -> &Path {
        self.spool.dir()
    }
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        self.spool.record.undo(self.rt, self.store, self.lease.take());
    }
}

/// What arrived before the manifest.
#[derive(Default)]
struct Received {
    image_config: Option<Vec<u8>>,
    config: Option<Vec<u8>>,
    rootfs_tar: Option<PathBuf>,
    layers: usize,
}

impl Runtime {
    /// Takes one migration on `stream`; the container runs here when this returns Ok.
    pub fn migrate_receive(&self, stream: TcpStream, opts: &ReceiveOptions) -> Result<ReceiveReport, MigrateError> {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "source".into());
        let err = |source| MigrateError::Stream { peer: peer.clone(), source };
        stream.set_read_timeout(Some(opts.timeout)).map_err(err)?;
        stream.set_write_timeout(Some(opts.timeout)).map_err(err)?;
        let stream = opts.tls.accept(stream, &peer)?;
        let from = match tls::peer_fingerprint(&stream.conn) {
            Some(cert) => format!("{peer} (certificate {cert})"),
            None => peer,
        };
        let mut end = TargetEnd::new(stream, from)?;
        let hello = end.read_hello()?;
        let store = Store::open(&opts.store)?;
        let bundle_dir = opts.bundles.join(&hello.id);
        let work_lock = spool::lock_work(&opts.work)?;
        self.reap_locked(&opts.work, &store)?;
        let admitted = self
            .admit(&hello, &store, &bundle_dir)
            .and_then(|(missing, lease)| Ok((missing, lease, Spool::create(&opts.work, &hello.id)?)));
        drop(work_lock);
        let (missing, lease, spool) = match admitted {
            Ok(admitted) => admitted,
            Err(e) => {
                let reason = match e {
                    MigrateError::Refused { reason } => reason,
                    other => other.to_string(),
                };
                end.answer(&Answer::Refuse { reason: reason.clone() })?;
                return Err(MigrateError::Refused { reason });
            }
        };
        let mut made = Made { rt: self, store: &store, lease, spool };
        end.answer(&Answer::Accept { missing_layers: missing.clone() })?;
        failpoint("migrate-receive.accepted");
        let result = self.take_container(&mut end, &hello, &missing, &mut made, &bundle_dir, opts);
        match result {
            Ok((pid, restore, layers)) => {
                // Restored stopped: unreported, or aborted, it goes (the source resumed its own).
                made.spool.record.reported = true;
                made.spool.save()?;
                end.report(&Outcome::Restored { pid, restore_ms: restore.as_millis() as u64 })?;
                failpoint("migrate-receive.reported");
                let committed = end.wait_for_commit();
                if let Ok(false) = committed {
                    return Err(MigrateError::SourceAborted { id: hello.id });
                }
                // Committed, or unknown: either way this copy stays (stopped while unknown).
                made.spool.record = Default::default();
                if let Err(e) = committed {
                    return Err(MigrateError::Unconfirmed { id: hello.id, cause: Box::new(e) });
                }
                failpoint("migrate-receive.committed");
                if let Err(e) = self.kill(&hello.id, nix::sys::signal::Signal::SIGCONT, true) {
                    let _ = end.confirm(&Resumed::Stopped { reason: e.to_string() });
                    return Err(e.into());
                }
                failpoint("migrate-receive.resumed");
                // It runs here whether or not the source hears so (it then says where to look).
                if let Err(e) = end.confirm(&Resumed::Running) {
                    log::warn!("migrate receive {}: telling the source that it runs: {e}", hello.id);
                }
                Ok(ReceiveReport { id: hello.id, pid, from: end.peer().into(), layers_received: layers, restore })
            }
            Err(e) => {
                let _ = end.report(&Outcome::Failed { reason: e.to_string() });
                Err(e)
            }
        }
    }

    /// Why the container cannot come here, if it cannot; else the layers this host lacks, and
    /// the lease that keeps the image's layers while it comes.
    fn admit<'s>(
        &self,
        hello: &Hello,
        store: &'s Store,
        bundle: &Path,
    ) -> Result<(Vec<Digest>, Option<Receiving<'s>>), MigrateError> {
        let refuse = |reason: String| MigrateError::Refused { reason };
        crate::spec::validate_id(&hello.id).map_err(|e| refuse(e.to_string()))?;
        if self.dir(&hello.id).exists() {
            return Err(refuse(format!("container {} already exists on this host", hello.id)));
        }
        if bundle.exists() {
            return Err(refuse(format!("bundle {} already exists on this host", bundle.display())));
        }
        match &hello.rootfs {
            RootfsOffer::Image(image) => {
                let lease = store.begin_receive(image).map_err(|e| refuse(e.to_string()))?;
                let missing = lease.missing_layers().map_err(|e| refuse(e.to_string()))?;
                Ok((missing, Some(lease)))
            }
            RootfsOffer::Plain => Ok((Vec::new(), None)),
        }
    }

    /// Parts, bundle, restore: (init pid, restore time, layers received).
    fn take_container(
        &self,
        end: &mut TargetEnd,
        hello: &Hello,
        missing: &[Digest],
        made: &mut Made<'_>,
        bundle_dir: &Path,
        opts: &ReceiveOptions,
    ) -> Result<(i32, Duration, usize), MigrateError> {
        let got = receive_parts(end, hello, missing, made, &opts.policy)?;
        failpoint("migrate-receive.parts-received");
        let config = got.config.ok_or(MigrateError::MissingPart { part: Part::Config })?;
        let config = bundle_config(&config)?;
        let rootfs_tar = got.rootfs_tar.ok_or(MigrateError::MissingPart {
            part: if matches!(hello.rootfs, RootfsOffer::Image(_)) { Part::Upper } else { Part::Rootfs },
        })?;
        std::fs::create_dir_all(&opts.bundles).map_err(io_err(&opts.bundles))?;
        let tar = File::open(&rootfs_tar).map_err(io_err(&rootfs_tar))?;
        match &hello.rootfs {
            RootfsOffer::Image(image) => {
                let blob = got.image_config.ok_or(MigrateError::MissingPart { part: Part::ImageConfig })?;
                let lease = made.lease.as_mut().ok_or(MigrateError::UnwantedPart { part: Part::ImageConfig })?;
                if lease.receive_image(&blob)? {
                    made.spool.record.image_added = Some(image.name.clone());
                }
                made.spool.record.bundle = Some((bundle_dir.to_path_buf(), true));
                made.spool.save()?;
                warren_images::bundle::receive(made.store, bundle_dir, &image.name, &config, tar)?;
            }
            RootfsOffer::Plain => {
                made.spool.record.bundle = Some((bundle_dir.to_path_buf(), false));
                made.spool.save()?;
                warren_images::bundle::receive_plain(bundle_dir, &config, tar)?;
            }
        }
        let _ = std::fs::remove_file(&rootfs_tar);
        let restore = RestoreOptions {
            id: hello.id.clone(),
            image_path: made.staging().join("criu"),
            work_path: Some(made.staging().to_path_buf()),
            pid_file: None,
            console: opts.console_socket.clone().map(ConsoleTarget::Socket),
            no_pivot: false,
            moved: true,
            leave_stopped: true,
            common: CriuCommon {
                tcp_established: hello.criu.tcp_established,
                ext_unix_sk: hello.criu.ext_unix_sk,
                file_locks: hello.criu.file_locks,
                criu: opts.criu.clone(),
                ..Default::default()
            },
        };
        let t = Instant::now();
        let bundle = crate::spec::Bundle::load(bundle_dir).map_err(ContainerError::from)?;
        made.spool.record.container = Some(hello.id.clone());
        made.spool.save()?;
        let restored = self.restore(&restore, bundle).map_err(|e| keep_restore_log(e, &opts.work, &hello.id))?;
        failpoint("migrate-receive.restored");
        Ok((restored.pid, t.elapsed(), got.layers))
    }
}

/// A failed restore's criu log lives in the staging dir, which goes with the failure: it is
/// kept as WORK/ID.restore.log (the one thing a failure leaves, for the operator to read).
fn keep_restore_log(e: ContainerError, work: &Path, id: &str) -> ContainerError {
    match e {
        ContainerError::Checkpoint(CheckpointError::Criu { action, status, reason, log }) => {
            let kept = work.join(format!("{id}.restore.log"));
            let log = if std::fs::copy(&log, &kept).is_ok() { kept } else { log };
            ContainerError::Checkpoint(CheckpointError::Criu { action, status, reason, log })
        }
        other => other,
    }
}

/// Reads parts until the manifest, applying layers as they come (each verified first).
fn receive_parts(
    end: &mut TargetEnd,
    hello: &Hello,
    missing: &[Digest],
    made: &mut Made<'_>,
    policy: &Policy,
) -> Result<Received, MigrateError> {
    let mut got = Received::default();
    let mut pending: Vec<&Digest> = missing.iter().collect();
    loop {
        let part = match end.next_incoming()? {
            Incoming::Manifest(m) => {
                end.check_manifest(&m)?;
                if let Some(layer) = pending.first() {
                    return Err(MigrateError::MissingPart { part: Part::Layer((*layer).clone()) });
                }
                return Ok(got);
            }
            Incoming::Part(p) => p,
        };
        let unwanted = || MigrateError::UnwantedPart { part: part.clone() };
        match &part {
            Part::Layer(chain) => {
                let (RootfsOffer::Image(image), Some(lease)) = (&hello.rootfs, made.lease.as_mut()) else {
                    return Err(unwanted());
                };
                // Bottom first, each once: what lies below a layer is already here.
                if pending.first() != Some(&chain) {
                    return Err(unwanted());
                }
                pending.remove(0);
                let path = made.spool.dir().join("layer.tar");
                spool_part(end, &part, &path)?;
                receive_layer(lease, image, chain, &path)?;
                got.layers += 1;
            }
            Part::ImageConfig | Part::Config => {
                let mut buf = Vec::new();
                end.receive_part(&part, &mut buf)?;
                if part == Part::Config {
                    if let Err(refused) = check_config(&buf, policy) {
                        // The source hears the refusal as the outcome once it has sent all.
                        let _ = end.drain();
                        return Err(refused);
                    }
                }
                let slot = if part == Part::Config { &mut got.config } else { &mut got.image_config };
                if slot.replace(buf).is_some() {
                    return Err(unwanted());
                }
            }
            Part::Upper | Part::Rootfs => {
                let image = matches!(hello.rootfs, RootfsOffer::Image(_));
                if got.rootfs_tar.is_some() || image != (part == Part::Upper) {
                    return Err(unwanted());
                }
                let path = made.staging().join("rootfs.tar");
                spool_part(end, &part, &path)?;
                got.rootfs_tar = Some(path);
            }
            Part::Criu(name) => spool_part(end, &part, &made.staging().join("criu").join(name))?,
        }
    }
}

/// The received config.json against this host's policy, before anything is made from it.
fn check_config(bytes: &[u8], policy: &Policy) -> Result<(), MigrateError> {
    let spec = crate::spec::parse(bytes, Path::new("config.json")).map_err(ContainerError::from)?;
    Ok(policy.check(&spec)?)
}

/// Writes a part to a new file (a name that comes twice is refused by `create_new`).
fn spool_part(end: &mut TargetEnd, part: &Part, path: &Path) -> Result<(), MigrateError> {
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            MigrateError::UnwantedPart { part: part.clone() }
        } else {
            MigrateError::Io { path: path.to_path_buf(), source }
        }
    })?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    end.receive_part(part, &mut out)?;
    std::io::Write::flush(&mut out).map_err(io_err(path))
}

fn receive_layer(
    lease: &mut Receiving<'_>,
    image: &warren_images::transfer::ImageRef,
    chain: &Digest,
    tar: &Path,
) -> Result<(), MigrateError> {
    let index = image
        .layers
        .iter()
        .position(|l| &l.chain_id == chain)
        .ok_or_else(|| MigrateError::UnwantedPart { part: Part::Layer(chain.clone()) })?;
    let file = File::open(tar).map_err(io_err(tar))?;
    lease.receive_layer(&image.layers[index], file)?;
    std::fs::remove_file(tar).map_err(io_err(tar))
}

/// The source's config, with the rootfs where the received bundle has it.
fn bundle_config(bytes: &[u8]) -> Result<Vec<u8>, MigrateError> {
    let mut spec: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| MigrateError::BadConfig { part: Part::Config, source })?;
    spec["root"]["path"] = "rootfs".into();
    Ok(serde_json::to_vec_pretty(&spec).expect("JSON serializes"))
}
