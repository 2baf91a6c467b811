//! The target side: accept or refuse, take the parts (each checked against its digest before
//! it is used), make the bundle, restore, report. On any failure everything made here for
//! the container goes again.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use warren_images::digest::Digest;
use warren_images::store::{Receiving, Store};

use super::policy::Policy;
use super::spool::{self, Spool};
use super::tls::{self, Tls};
use super::wire::{Answer, Hello, Incoming, Outcome, Part, Resumed, RootfsOffer};
use super::{io_err, MigrateError};
use crate::checkpoint::{CheckpointError, CriuCommon, LazyPages, PageServer, RestoreOptions};
use crate::container::{ConsoleTarget, ContainerError, Runtime};
use crate::failpoint::failpoint;
use crate::tenant::{Tenant, Tenants};

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
    /// For a container with a terminal: the unix socket its new pty master goes to (a
    /// tenant's goes to its new supervisor, through [`ReceiveReport::console`]).
    pub console_socket: Option<PathBuf>,
    /// The tenant network and id pool a moving tenant gets here (host.toml).
    pub tenant_network: warren_config::TenantNetwork,
    pub id_pool: warren_config::IdPool,
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
    /// It is a tenant's (`tenant migrate`), now wanted running here: it needs a supervisor.
    pub tenant: bool,
    /// A tenant's pty master, for its supervisor.
    pub console: Option<OwnedFd>,
    /// With post-copy (`lazy_pages`): from the restore's end until all its memory was in.
    pub memory_filled: Option<Duration>,
    /// Why post-copy was asked for and not done (the memory was restored whole).
    pub not_lazy: Option<&'static str>,
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
        let tenants = hello.tenant.as_ref().map(|_| Tenants::open(&store)).transpose().map_err(tenant_err)?;
        let bundle_dir = match &tenants {
            Some(tenants) => tenants.bundle(&hello.id),
            None => opts.bundles.join(&hello.id),
        };
        let work_lock = spool::lock_work(&opts.work)?;
        self.reap_locked(&opts.work, &store)?;
        let admitted = self.admit(&hello, &store, &bundle_dir).and_then(|(missing, lease)| {
            let mut spool = Spool::create(&opts.work, &hello.id)?;
            if let (Some(t), Some(tenants)) = (&hello.tenant, &tenants) {
                if t.name != hello.id {
                    let reason = format!(
                        "tenant {} offered as container {}: a tenant's container has its name",
                        t.name, hello.id
                    );
                    return Err(MigrateError::Refused { reason });
                }
                claim_tenant(tenants, t, &mut spool, opts)?;
            }
            Ok((missing, lease, spool))
        });
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
        end.answer(&Answer::Accept { missing_layers: missing.clone(), raw_chunks: true, page_stream: true })?;
        failpoint("migrate-receive.accepted");
        let result = self.take_container(&mut end, &hello, &missing, &mut made, &bundle_dir, opts);
        match result {
            Ok(taken) => self.hand_over(&mut end, hello, &mut made, tenants.as_ref(), taken),
            Err(e) => {
                let _ = end.report(&Outcome::Failed { reason: e.to_string() });
                Err(e)
            }
        }
    }

    /// Reports the restore, waits for the source's commit, then lets the container run here (a
    /// tenant wanted running first).
    fn hand_over(
        &self,
        end: &mut TargetEnd,
        hello: Hello,
        made: &mut Made<'_>,
        tenants: Option<&Tenants>,
        taken: Taken,
    ) -> Result<ReceiveReport, MigrateError> {
        let Taken { pid, restore, layers, console, mut lazy_pages, not_lazy } = taken;
        if let Err(e) = lazy_pages_ok(&mut lazy_pages) {
            // Not reported: the source resumes its own copy, and this one goes.
            let e = MigrateError::from(ContainerError::from(e));
            let _ = end.report(&Outcome::Failed { reason: e.to_string() });
            return Err(e);
        }
        // Restored stopped: unreported, or aborted, it goes (the source resumed its own).
        made.spool.record.reported = true;
        made.spool.save()?;
        end.report(&Outcome::Restored { pid, restore_ms: restore.as_millis() as u64 })?;
        failpoint("migrate-receive.reported");
        let committed = end.wait_for_commit();
        if let Ok(false) = committed {
            // Its memory need not be filled: it goes.
            if let Some((daemon, _)) = lazy_pages {
                daemon.abort();
            }
            return Err(MigrateError::SourceAborted { id: hello.id });
        }
        // Committed, or unknown: either way this copy stays (stopped while unknown).
        made.spool.record = Default::default();
        if let Err(e) = committed {
            return Err(MigrateError::Unconfirmed { id: hello.id, cause: Box::new(e) });
        }
        failpoint("migrate-receive.committed");
        // A post-copy daemon that failed meanwhile: it stays stopped rather than read zeros.
        let filling =
            lazy_pages_ok(&mut lazy_pages).map_err(|e| MigrateError::LazyPages { id: hello.id.clone(), source: e });
        let wanted = filling.and_then(|()| match tenants {
            Some(tenants) => tenants.moved_in(&hello.id).map_err(tenant_err),
            None => Ok(()),
        });
        let cont = |()| self.kill(&hello.id, nix::sys::signal::Signal::SIGCONT, true).map_err(MigrateError::from);
        if let Err(e) = wanted.and_then(cont) {
            let _ = end.confirm(&Resumed::Stopped { reason: e.to_string() });
            return Err(e);
        }
        failpoint("migrate-receive.resumed");
        // It runs here whether or not the source hears so (it then says where to look).
        if let Err(e) = end.confirm(&Resumed::Running) {
            log::warn!("migrate receive {}: telling the source that it runs: {e}", hello.id);
        }
        // Post-copy: the spool holds the memory still to come in until the daemon is done.
        let memory_filled = match lazy_pages {
            Some((daemon, since)) => match daemon.finish() {
                Ok(()) => Some(since.elapsed()),
                Err(e) => return Err(MigrateError::LazyPages { id: hello.id, source: e }),
            },
            None => None,
        };
        let (tenant, from) = (tenants.is_some(), end.peer().into());
        Ok(ReceiveReport {
            id: hello.id,
            pid,
            from,
            layers_received: layers,
            restore,
            tenant,
            console,
            memory_filled,
            not_lazy,
        })
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

    /// Parts, bundle, restore (and a tenant's network).
    fn take_container(
        &self,
        end: &mut TargetEnd,
        hello: &Hello,
        missing: &[Digest],
        made: &mut Made<'_>,
        bundle_dir: &Path,
        opts: &ReceiveOptions,
    ) -> Result<Taken, MigrateError> {
        let got = receive_parts(end, hello, missing, made, opts)?;
        let tenant = match &hello.tenant {
            Some(t) => Some((Tenants::open(made.store).map_err(tenant_err)?, t)),
            None => None,
        };
        failpoint("migrate-receive.parts-received");
        let tenant_ref = tenant.as_ref().map(|(tenants, t)| (tenants, *t));
        let layers = make_bundle(made, hello, got, bundle_dir, tenant_ref, opts)?;
        let (ours, console) = console_target(tenant.is_some(), opts)?;
        let restore = RestoreOptions {
            id: hello.id.clone(),
            image_path: made.staging().join("criu"),
            work_path: Some(made.staging().to_path_buf()),
            pid_file: None,
            console,
            no_pivot: false,
            moved: true,
            leave_stopped: true,
            lazy_pages: hello.criu.lazy_pages,
            consume_images: true,
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
        let mut restored = self.restore(&restore, bundle).map_err(|e| keep_restore_log(e, &opts.work, &hello.id))?;
        let lazy_pages = restored.lazy_pages.take().map(|daemon| (daemon, Instant::now()));
        drop(restore);
        let console = match ours.filter(|_| restored.terminal) {
            Some(ours) => Some(crate::console::receive_master(ours.as_raw_fd()).map_err(ContainerError::from)?),
            None => None,
        };
        if let Some((tenants, _)) = &tenant {
            tenants.attach_moved(&hello.id, restored.pid).map_err(tenant_err)?;
        }
        failpoint("migrate-receive.restored");
        let not_lazy = restored.not_lazy;
        Ok(Taken { pid: restored.pid, restore: t.elapsed(), layers, console, lazy_pages, not_lazy })
    }
}

/// The bundle from the received parts (a tenant's on its own disk, made this host's):
/// listed in the spool's record before it is made. Returns the layers received.
fn make_bundle(
    made: &mut Made<'_>,
    hello: &Hello,
    got: Received,
    bundle_dir: &Path,
    tenant: Option<(&Tenants, &Tenant)>,
    opts: &ReceiveOptions,
) -> Result<usize, MigrateError> {
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
            if let Some((tenants, t)) = tenant {
                tenants.finish_moved_bundle(t).map_err(tenant_err)?;
            }
        }
        RootfsOffer::Plain if tenant.is_some() => return Err(MigrateError::UnwantedPart { part: Part::Rootfs }),
        RootfsOffer::Plain => {
            made.spool.record.bundle = Some((bundle_dir.to_path_buf(), false));
            made.spool.save()?;
            warren_images::bundle::receive_plain(bundle_dir, &config, tar)?;
        }
    }
    let _ = std::fs::remove_file(&rootfs_tar);
    Ok(got.layers)
}

/// Where the restored container's new pty master goes: for a tenant, back to us over a
/// socketpair (our end returned), for its supervisor; else to `--console-socket`.
fn console_target(
    tenant: bool,
    opts: &ReceiveOptions,
) -> Result<(Option<std::os::unix::net::UnixStream>, Option<ConsoleTarget>), MigrateError> {
    if !tenant {
        return Ok((None, opts.console_socket.clone().map(ConsoleTarget::Socket)));
    }
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io_err(Path::new("socketpair")))?;
    Ok((Some(ours), Some(ConsoleTarget::Fd(theirs.into()))))
}

/// Whether a post-copy daemon, if any, has not failed (so far).
fn lazy_pages_ok(lazy: &mut Option<(LazyPages, Instant)>) -> Result<(), CheckpointError> {
    lazy.as_mut().map_or(Ok(()), |(daemon, _)| daemon.check())
}

/// What `take_container` brought: the restored init, the restore's time, the layers received,
/// a tenant's pty master, and with post-copy the daemon filling its memory (since when).
struct Taken {
    pid: i32,
    restore: Duration,
    layers: usize,
    console: Option<OwnedFd>,
    lazy_pages: Option<(LazyPages, Instant)>,
    not_lazy: Option<&'static str>,
}

fn tenant_err(e: crate::tenant::TenantError) -> MigrateError {
    MigrateError::Tenant(Box::new(e))
}

/// Claims the moving tenant's record here (see `Tenants::claim_moved`), then lists it in the
/// spool's record: a receiver that dies in between leaves a stopped tenant, never removes
/// another's.
fn claim_tenant(tenants: &Tenants, t: &Tenant, spool: &mut Spool, opts: &ReceiveOptions) -> Result<(), MigrateError> {
    let refuse = |e: crate::tenant::TenantError| MigrateError::Refused { reason: e.to_string() };
    tenants.claim_moved(t, &opts.tenant_network, opts.id_pool).map_err(refuse)?;
    spool.record.tenant = Some(t.name.clone());
    spool.save()
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
    opts: &ReceiveOptions,
) -> Result<Received, MigrateError> {
    let mut got = Received::default();
    let mut pending: Vec<&Digest> = missing.iter().collect();
    // Started now, outside the source's frozen window (the page stream comes after the freeze);
    // a source that sends no page stream leaves it unused, and it is killed.
    let images = made.staging().join("criu");
    let mut page_server =
        Some(PageServer::start(opts.criu.as_deref(), &images, made.staging()).map_err(ContainerError::from)?);
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
                    if let Err(refused) = check_config(&buf, &opts.policy, hello.tenant.as_ref()) {
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
            Part::Pages => pages_part(end, &part, page_server.take().ok_or_else(unwanted)?)?,
        }
    }
}

/// The received config.json against this host's policy, before anything is made from it.
/// A tenant's must map the id range its record claims, and may have the capabilities a
/// tenant made here has (held over its own user namespace only).
fn check_config(bytes: &[u8], policy: &Policy, tenant: Option<&Tenant>) -> Result<(), MigrateError> {
    let spec = crate::spec::parse(bytes, Path::new("config.json")).map_err(ContainerError::from)?;
    let Some(t) = tenant else { return Ok(policy.check(&spec)?) };
    if !crate::tenant::moved::config_matches(t, &spec) {
        let reason = format!("tenant {}: its config does not map its id range {}", t.name, t.ids);
        return Err(MigrateError::Refused { reason });
    }
    let mut policy = policy.clone();
    policy.allow_cap.extend(crate::tenant::TENANT_CAPS.iter().map(|c| c.to_string()));
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

/// The page stream, fed to a page server writing into the spool's images as it comes. It
/// must have written all before the restore: its failure, not the broken pipe it causes
/// here, is the error (unless the stream failed first), and the source hears it.
fn pages_part(end: &mut TargetEnd, part: &Part, server: PageServer) -> Result<(), MigrateError> {
    let streamed = end.receive_part(part, &mut server.socket());
    let finished = server.finish().map_err(ContainerError::from);
    match (streamed, finished) {
        (Err(e @ (MigrateError::Stream { .. } | MigrateError::Truncated { .. } | MigrateError::Timeout { .. })), _) => {
            Err(e)
        }
        (_, Err(e)) => {
            // The source hears why as the outcome, once it has sent all.
            let _ = end.drain();
            Err(e.into())
        }
        (streamed, Ok(())) => streamed.map(|_| ()),
    }
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
