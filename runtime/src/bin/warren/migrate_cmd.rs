//! `warren migrate keygen|send|receive`: cold migration of a running container to another
//! host, over mutual TLS between pinned identities.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use warren::checkpoint::CriuCommon;
use warren::container::Runtime;
use warren::migrate::tls::{self, Tls};
use warren::migrate::{self, Policy, ReceiveOptions, SendOptions};
use warren_images::store::DEFAULT_STORE;

use crate::cli::OutputFormat;

#[derive(Args, Debug)]
pub struct MigrateCmd {
    /// Directory of the image store (layers the target has are not sent)
    #[arg(long, global = true, default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    /// Where dumps are kept while they travel (default: beside --root, e.g. /run/warren-migrate)
    #[arg(long, global = true)]
    pub work: Option<PathBuf>,
    /// Seconds either end waits for the other before it gives up
    #[arg(long, global = true, default_value_t = migrate::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: MigrateCommand,
}

#[derive(Subcommand, Debug)]
pub enum MigrateCommand {
    /// Make this host's migration key and self-signed certificate (prints its fingerprint)
    Keygen(KeygenArgs),
    /// Move a running container to the host whose `migrate receive` listens at TARGET
    Send(SendArgs),
    /// Take containers that `migrate send` moves here
    Receive(ReceiveArgs),
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Directory for host.key (mode 0600), host.crt and peers/
    #[arg(long, default_value = tls::DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// This host's identity and the peers it trusts.
#[derive(Args, Debug)]
pub struct TlsArgs {
    /// Directory with host.key, host.crt and peers/*.crt (the trusted peers' certificates)
    #[arg(long = "tls-dir", default_value = tls::DEFAULT_DIR)]
    pub tls_dir: PathBuf,
    /// Also trust this peer certificate (repeatable)
    #[arg(long = "peer")]
    pub peers: Vec<PathBuf>,
}

impl TlsArgs {
    pub(crate) fn load(&self) -> Result<Tls> {
        Ok(Tls::load(&self.tls_dir, &self.peers)?)
    }
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Keep established TCP connections across the move
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Allow external unix sockets
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Handle file locks
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// Post-copy: run it on the target before all its memory is back, which the target then
    /// fills from its copy of the dump (shorter freeze for large containers)
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// Print the figures as text or as one JSON object
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    pub id: String,
    /// HOST:PORT of the target's `migrate receive`
    pub target: String,
}

#[derive(Args, Debug)]
pub struct ReceiveArgs {
    /// Address to listen on, HOST:PORT (port 0: any free port, printed); loopback by default
    #[arg(long, default_value = migrate::DEFAULT_LISTEN)]
    pub listen: String,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Let received containers bind host paths under this directory (repeatable)
    #[arg(long = "allow-bind", value_name = "PREFIX")]
    pub allow_bind: Vec<PathBuf>,
    /// Let received containers have this capability beyond the default set (repeatable)
    #[arg(long = "allow-cap", value_name = "CAP")]
    pub allow_cap: Vec<String>,
    /// Let received containers have this device beyond the default ones (repeatable)
    #[arg(long = "allow-device", value_name = "PATH")]
    pub allow_device: Vec<PathBuf>,
    /// Let received containers join namespaces by paths under this prefix (repeatable)
    #[arg(long = "allow-ns-path", value_name = "PREFIX")]
    pub allow_ns_path: Vec<PathBuf>,
    /// Directory the received bundles are made in, one per container id
    #[arg(long, default_value = "/var/lib/warren/containers")]
    pub bundles: PathBuf,
    /// Unix socket that receives the new pty master of a container with a terminal
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Take one migration, then exit with its status
    #[arg(long)]
    pub once: bool,
    /// Host defaults file: the tenant network and id pool of moving tenants
    /// [env: WARREN_HOST_CONFIG; default: /etc/warren/host.toml if it exists, else built in]
    #[arg(long = "host-config")]
    pub host_config: Option<PathBuf>,
}

pub fn migrate(rt: &Runtime, root: &Path, cmd: &MigrateCmd, criu: Option<&Path>) -> Result<i32> {
    let work = cmd.work.clone().unwrap_or_else(|| migrate::default_work_dir(root));
    let timeout = Duration::from_secs(cmd.timeout.max(1));
    match &cmd.command {
        MigrateCommand::Keygen(a) => keygen(a),
        MigrateCommand::Send(a) => send(rt, cmd, a, work, timeout, criu),
        MigrateCommand::Receive(a) => receive(rt, root, cmd, a, work, timeout, criu),
    }
}

fn keygen(a: &KeygenArgs) -> Result<i32> {
    let fingerprint = tls::keygen(&a.dir)?;
    println!("{} {}", a.dir.join(tls::CERT_FILE).display(), fingerprint);
    Ok(0)
}

fn send(
    rt: &Runtime,
    cmd: &MigrateCmd,
    a: &SendArgs,
    work: PathBuf,
    timeout: Duration,
    criu: Option<&Path>,
) -> Result<i32> {
    let opts = SendOptions {
        target: a.target.clone(),
        tls: a.tls.load()?,
        store: cmd.store.clone(),
        work,
        criu: CriuCommon {
            tcp_established: a.tcp_established,
            ext_unix_sk: a.ext_unix_sk,
            file_locks: a.file_locks,
            criu: criu.map(Path::to_path_buf),
            ..Default::default()
        },
        timeout,
        lazy_pages: a.lazy_pages,
        tenant: None,
        progress: std::io::stderr().is_terminal().then(progress_line),
    };
    let shows_progress = opts.progress.is_some();
    let r = rt.migrate_send(&a.id, &opts);
    if shows_progress {
        eprintln!();
    }
    print_report(&a.id, &a.target, a.format, &r?);
    Ok(0)
}

/// A finished move's figures, as text or one JSON object.
pub(crate) fn print_report(id: &str, target: &str, format: OutputFormat, r: &migrate::SendReport) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if format == OutputFormat::Json {
        let json = serde_json::json!({
            "id": id, "target": target, "target_pid": r.target_pid,
            "frozen_ms": ms(r.frozen), "dump_ms": ms(r.dump), "restore_ms": ms(r.restore), "total_ms": ms(r.total),
            "bytes": r.bytes, "wire_bytes": r.wire_bytes,
        });
        println!("{json}");
    } else {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        println!(
            "migrated {} to {}: frozen {:.0} ms (dump {:.0} ms, restore {:.0} ms), total {:.0} ms, {:.1} MiB sent as {:.1} MiB",
            id,
            target,
            ms(r.frozen),
            ms(r.dump),
            ms(r.restore),
            ms(r.total),
            mib(r.bytes),
            mib(r.wire_bytes)
        );
    }
}

/// Bytes sent and their rate, on one stderr line that each call rewrites.
pub(crate) fn progress_line() -> Box<dyn Fn(u64, u64)> {
    let start = std::time::Instant::now();
    Box::new(move |bytes, wire| {
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        eprint!("\rsent {:.1} MiB ({:.1} MiB on the wire), {:.1} MiB/s   ", mib(bytes), mib(wire), mib(bytes) / secs);
    })
}

fn receive(
    rt: &Runtime,
    root: &Path,
    cmd: &MigrateCmd,
    a: &ReceiveArgs,
    work: PathBuf,
    timeout: Duration,
    criu: Option<&Path>,
) -> Result<i32> {
    let tls = a.tls.load()?;
    let store = warren_images::store::Store::open(&cmd.store)?;
    for id in rt.reap_abandoned_receives(&work, &store)? {
        eprintln!("warren migrate receive: removed what a receiver that died left of {id}");
    }
    let listener = migrate::listen(&a.listen)?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let policy = Policy {
        allow_bind: a.allow_bind.clone(),
        allow_cap: a.allow_cap.iter().map(|c| migrate::cap_name(c)).collect(),
        allow_device: a.allow_device.clone(),
        allow_ns_path: a.allow_ns_path.clone(),
    };
    let host = warren_config::HostConfig::discover(a.host_config.as_deref())?;
    let opts = ReceiveOptions {
        tls,
        policy,
        store: cmd.store.clone(),
        bundles: std::path::absolute(&a.bundles)?,
        work,
        console_socket: a.console_socket.clone(),
        criu: criu.map(Path::to_path_buf),
        timeout,
        tenant_network: host.network().clone(),
        id_pool: host.id_pool(),
    };
    for conn in listener.incoming() {
        let result = conn.map_err(anyhow::Error::from).and_then(|s| Ok(rt.migrate_receive(s, &opts)?));
        match result {
            Ok(r) => {
                let filled = match (r.memory_filled, r.not_lazy) {
                    (Some(d), _) => Some(format!(", memory filled {} ms later", d.as_millis())),
                    (None, Some(why)) => Some(format!(", restored whole: no post-copy, {why}")),
                    (None, None) => None,
                };
                println!(
                    "received {} from {}: running as pid {} ({} layers received, restore {} ms{})",
                    r.id,
                    r.from,
                    r.pid,
                    r.layers_received,
                    r.restore.as_millis(),
                    filled.unwrap_or_default()
                );
                std::io::stdout().flush()?;
                if r.tenant {
                    supervise_moved(root, &cmd.store, &r.id, r.console)?;
                }
            }
            Err(e) if a.once => return Err(e),
            Err(e) => eprintln!("warren migrate receive: {}", crate::one_line(&e)),
        }
        if a.once {
            break;
        }
        crate::tenant_cmd::reap_supervisors();
    }
    Ok(0)
}

/// Gives a tenant that moved here a supervisor, which adopts its running container and
/// serves its console. Without one it runs unsupervised until `tenant start` gives it one.
fn supervise_moved(root: &Path, store: &Path, name: &str, console: Option<std::os::fd::OwnedFd>) -> Result<()> {
    let tenants = warren::tenant::Tenants::open(&warren_images::store::Store::open(store)?)?;
    let spawned = crate::tenant_cmd::spawn_supervisor(&tenants, root, store, name, console);
    if let Err(e) = &spawned {
        eprintln!("warren migrate receive: tenant {name} runs without a supervisor: {}", crate::one_line(e));
    }
    Ok(())
}
