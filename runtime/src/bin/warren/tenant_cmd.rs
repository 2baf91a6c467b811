//! `warren tenant`: VPS-style tenants for a hosting operator (the library's `tenant`).

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use warren::cgroups::stats::Stats;
use warren::container::Runtime;
use warren::state::Status;
use warren::tenant::net::Publish;
use warren::tenant::supervise::{self, SupervisorStatus};
use warren::tenant::{NewTenant, Restart, SeccompProfile, Tenant, Tenants, Volume};
use warren_config::HostConfig;
use warren_images::store::{Store, DEFAULT_STORE};

/// The fd on which a supervisor tells `start` whether its tenant runs.
const READY_FD_ENV: &str = "WARREN_TENANT_READY_FD";
/// The pty master of a running tenant a new supervisor adopts (one that moved here).
const CONSOLE_FD_ENV: &str = "WARREN_TENANT_CONSOLE_FD";

#[derive(Args, Debug)]
pub struct TenantCmd {
    /// Directory of the image store (tenants live in its `tenants/`)
    #[arg(long, global = true, default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    #[command(flatten)]
    pub plan_sources: crate::plan_cmd::PlanSources,
    #[command(subcommand)]
    pub command: TenantCommand,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum RestartArg {
    Never,
    OnFailure,
    Always,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum NetworkArg {
    Bridge,
    None,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum TenantFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Make a tenant from an image with a plan (not started)
    Create(CreateArgs),
    /// Start a tenant under its supervisor
    Start { name: String },
    /// Stop a tenant: SIGTERM, then SIGKILL after the timeout
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Stop and start a tenant
    Restart {
        name: String,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Stop a tenant and remove it, its bundle and its writable layer
    Destroy {
        name: String,
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// List the tenants with their state and usage
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: TenantFormat,
    },
    /// Change a tenant's limits: live when it runs, and for its next start (all or nothing)
    Set(SetArgs),
    /// The list, redrawn every interval until interrupted
    Top {
        /// Seconds between redraws
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
    },
    /// An interactive shell in a running tenant (`exec -t NAME -- sh`)
    Enter { name: String },
    /// Attach to a running tenant's terminal (its init's); detach with Ctrl-]
    Console { name: String },
    /// Print what a tenant wrote on its terminal
    Logs {
        name: String,
        /// Keep printing what it writes
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in a running tenant (`warren exec` on its container)
    Exec {
        name: String,
        /// Allocate a terminal
        #[arg(short, long)]
        tty: bool,
        #[arg(required = true, last = true)]
        args: Vec<String>,
    },
    /// Start every tenant that should run and has no supervisor (after a reboot)
    Boot,
    /// Move a running tenant to the host whose `migrate receive` listens at TARGET
    Migrate(MigrateArgs),
    /// The supervisor of one tenant (run by `start`)
    #[command(hide = true)]
    Supervise { name: String },
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    pub name: String,
    /// HOST:PORT of the target's `warren migrate receive`
    pub target: String,
    #[command(flatten)]
    pub tls: crate::migrate_cmd::TlsArgs,
    /// Where the dump is kept while it travels (default: beside --root, e.g. /run/warren-migrate)
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Seconds either end waits for the other before it gives up
    #[arg(long, default_value_t = warren::migrate::DEFAULT_TIMEOUT.as_secs())]
    pub timeout: u64,
    /// Keep established TCP connections across the move
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Post-copy: run it on the target before all its memory is back, which the target then
    /// fills from its copy of the dump; a tenant's user namespace needs the target's
    /// vm.unprivileged_userfaultfd=1 for it, else its memory is restored whole
    #[arg(long = "lazy-pages")]
    pub lazy_pages: bool,
    /// Print the figures as text or as one JSON object
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::cli::OutputFormat,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    pub name: String,
    /// Another plan: its CPU, memory, I/O and pids limits
    #[arg(long)]
    pub plan: Option<String>,
    /// Memory limit (e.g. 512MiB), its swap allowance kept
    #[arg(long, value_parser = warren_config::Size::parse)]
    pub memory: Option<warren_config::Size>,
    /// CPUs of time per 100 ms period (e.g. 0.5)
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Most tasks
    #[arg(long)]
    pub pids: Option<i64>,
    /// Size of its writable layer's disk: grows while it runs, shrinks while it is stopped
    #[arg(long, value_parser = warren_config::Size::parse)]
    pub disk: Option<warren_config::Size>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// Image in the store
    #[arg(long)]
    pub image: String,
    /// Hosting plan (`warren plan list`)
    #[arg(long)]
    pub plan: String,
    /// Host name inside (default: the tenant's name)
    #[arg(long)]
    pub hostname: Option<String>,
    /// HOST:CONTAINER[:ro] bind mount (repeatable)
    #[arg(long = "volume", short = 'v')]
    pub volumes: Vec<String>,
    /// Size of its writable layer (e.g. 2GiB), instead of the plan's disk.limit
    #[arg(long, value_parser = warren_config::Size::parse)]
    pub disk: Option<warren_config::Size>,
    /// `bridge`: an address on the host's tenant bridge (host.toml [network]); `none`: loopback only
    #[arg(long, value_enum, default_value = "bridge")]
    pub network: NetworkArg,
    /// Its address on the bridge (default: the next free one, kept across restarts)
    #[arg(long)]
    pub ip: Option<std::net::Ipv4Addr>,
    /// HOST_PORT:CONTAINER_PORT[/tcp|/udp] forwarded from the host (repeatable)
    #[arg(long = "publish", short = 'p')]
    pub publish: Vec<String>,
    /// When the supervisor starts it again after its init ends
    #[arg(long, value_enum, default_value = "on-failure")]
    pub restart: RestartArg,
    /// Seccomp profile: `default` (Docker's semantics), `unconfined`, or an OCI linux.seccomp JSON file
    #[arg(long, default_value = "default")]
    pub seccomp: String,
    /// Command instead of the image's
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn tenant(root: &Path, cmd: TenantCmd, criu: Option<&Path>) -> Result<i32> {
    let store = Store::open(&cmd.store)?;
    let tenants = Tenants::open(&store)?;
    let rt = Runtime::new(root);
    let timeout = |s: u64| Duration::from_secs(s);
    match cmd.command {
        TenantCommand::Create(a) => create(&store, &tenants, &cmd.plan_sources, a)?,
        TenantCommand::Start { name } => start(&tenants, root, &cmd.store, &name)?,
        TenantCommand::Stop { name, timeout: t } => stop(&tenants, &rt, &name, timeout(t))?,
        TenantCommand::Restart { name, timeout: t } => {
            stop(&tenants, &rt, &name, timeout(t))?;
            start(&tenants, root, &cmd.store, &name)?
        }
        TenantCommand::Destroy { name, timeout: t } => tenants.destroy(&store, &rt, &name, timeout(t))?,
        TenantCommand::List { format } => list(&tenants, &rt, format, Duration::from_millis(250))?,
        TenantCommand::Top { interval } => top(&tenants, &rt, interval)?,
        TenantCommand::Console { name } => console(&tenants, &name)?,
        TenantCommand::Enter { name } => return exec(&tenants, root, &name, true, &["sh".to_string()]),
        TenantCommand::Set(a) => set(&tenants, &rt, &cmd.plan_sources, store.root(), &a)?,
        TenantCommand::Logs { name, follow } => logs(&tenants, &name, follow)?,
        TenantCommand::Exec { name, tty, args } => return exec(&tenants, root, &name, tty, &args),
        TenantCommand::Boot => return boot(&tenants, root, &cmd.store),
        TenantCommand::Migrate(a) => migrate(&store, &tenants, &rt, root, &a, criu)?,
        TenantCommand::Supervise { name } => supervise_main(&tenants, &rt, &name)?,
    }
    Ok(0)
}

fn create(store: &Store, tenants: &Tenants, sources: &crate::plan_cmd::PlanSources, a: CreateArgs) -> Result<()> {
    warren::tenant::validate_name(&a.name)?;
    let volumes = a.volumes.iter().map(|v| Volume::parse(v)).collect::<Result<Vec<_>, _>>()?;
    let publish = a.publish.iter().map(|p| Publish::parse(p)).collect::<Result<Vec<_>, _>>()?;
    if a.network == NetworkArg::None && (a.ip.is_some() || !publish.is_empty()) {
        anyhow::bail!("--ip and --publish need --network bridge");
    }
    let seccomp = SeccompProfile::from_arg(&a.seccomp)?;
    let host = HostConfig::discover(sources.host_config.as_deref())?;
    // The plan's "auto" disk is the one the store (and so the tenant's upper dir) is on.
    let base = crate::plan_cmd::with_plan(warren::features::default_spec(false), &a.plan, sources, store.root())?;
    let plan = warren_config::Catalog::discover(sources.plans_dir.as_deref())?.get(&a.plan)?.disk();
    let disk = match a.disk.map(|d| d.bytes()) {
        Some(d) if d < warren_config::MIN_DISK => anyhow::bail!("--disk: {d} bytes is below the 16MiB floor"),
        given => given.or(plan),
    };
    let restart = match a.restart {
        RestartArg::Never => Restart::Never,
        RestartArg::OnFailure => Restart::OnFailure,
        RestartArg::Always => Restart::Always,
    };
    let new = NewTenant {
        name: a.name,
        image: a.image,
        plan: a.plan,
        hostname: a.hostname,
        volumes,
        restart,
        args: a.args,
        disk,
        network: (a.network == NetworkArg::Bridge).then(|| host.network().clone()),
        ip: a.ip,
        publish,
        seccomp,
    };
    let t = tenants.create(store, &new, base, host.id_pool())?;
    println!("{}", t.name);
    Ok(())
}

/// Marks it wanted and hands it to a new supervisor, which reports when the container runs.
fn start(tenants: &Tenants, root: &Path, store: &Path, name: &str) -> Result<()> {
    let mut t = tenants.get(name)?;
    t.want_running = true;
    tenants.save(&t)?;
    if supervise::is_supervised(tenants, name)? {
        return Ok(());
    }
    tenants.mount_disk(&t)?;
    let started = spawn_supervisor(tenants, root, store, name, None);
    if started.is_err() {
        t.want_running = false;
        tenants.save(&t)?;
    }
    started
}

/// Starts `name`'s supervisor as a daemon and waits until it says the tenant runs. `console`:
/// the pty master of its running container, when the caller holds it.
pub(crate) fn spawn_supervisor(
    tenants: &Tenants,
    root: &Path,
    store: &Path,
    name: &str,
    console: Option<OwnedFd>,
) -> Result<()> {
    let log = tenants.console_log(name);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .with_context(|| log.display().to_string())?;
    let (rd, wr) = nix::unistd::pipe()?;
    let wr_raw = wr.as_raw_fd();
    let exe = std::env::current_exe().context("the warren binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(root).arg("--log").arg(tenants.dir(name).join("supervisor.log"));
    cmd.args(["tenant", "--store"]).arg(store).args(["supervise", name]);
    cmd.env(READY_FD_ENV, wr_raw.to_string());
    let master_raw = console.as_ref().map(|m| m.as_raw_fd());
    if let Some(fd) = master_raw {
        cmd.env(CONSOLE_FD_ENV, fd.to_string());
    }
    cmd.stdin(std::process::Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
    // SAFETY: setsid and fcntl are async-signal-safe; the fds are the pipe's write end and
    // the pty master, both open here until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid()?;
            if let Some(fd) = master_raw {
                warren::sys::clear_cloexec(fd)?;
            }
            warren::sys::clear_cloexec(wr_raw)
        })
    };
    let mut child = cmd.spawn().context("spawn the tenant's supervisor")?;
    drop((wr, console));
    let mut answer = String::new();
    std::fs::File::from(rd).read_to_string(&mut answer)?;
    if answer == "ok" {
        // It lives on as a daemon; init (or the host's subreaper) reaps it when it ends.
        std::mem::forget(child);
        return Ok(());
    }
    let _ = child.wait();
    let message = if answer.is_empty() { "its supervisor ended before the tenant ran".to_string() } else { answer };
    Err(warren::tenant::TenantError::Supervisor { name: name.to_string(), message }.into())
}

fn supervise_main(tenants: &Tenants, rt: &Runtime, name: &str) -> Result<()> {
    let fd: i32 =
        std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse().ok()).context("run by `tenant start` only")?;
    std::env::remove_var(READY_FD_ENV);
    // SAFETY: `start` passed this fd, open and ours alone; it is closed once written.
    let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
    let _ = warren::sys::set_cloexec(pipe.as_raw_fd());
    let mut pipe = Some(std::fs::File::from(pipe));
    let console_fd = std::env::var(CONSOLE_FD_ENV).ok().and_then(|v| v.parse::<i32>().ok());
    // SAFETY: the spawner passed this fd, open and ours alone.
    let console = console_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    std::env::remove_var(CONSOLE_FD_ENV);
    if let Some(m) = &console {
        let _ = warren::sys::set_cloexec(m.as_raw_fd());
    }
    supervise::supervise(tenants, rt, name, console, |r: Result<(), String>| {
        if let Some(mut p) = pipe.take() {
            let _ = p.write_all(match &r {
                Ok(()) => b"ok",
                Err(e) => e.as_bytes(),
            });
        }
    })?;
    Ok(())
}

/// Reaps the supervisors this process spawned that have ended (a long-lived `migrate
/// receive` spawns one per tenant that moves here).
pub(crate) fn reap_supervisors() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// `tenant migrate`: moves it, then prints the figures.
fn migrate(
    store: &Store,
    tenants: &Tenants,
    rt: &Runtime,
    root: &Path,
    a: &MigrateArgs,
    criu: Option<&Path>,
) -> Result<()> {
    let opts = warren::migrate::SendOptions {
        target: a.target.clone(),
        tls: a.tls.load()?,
        store: store.root().to_path_buf(),
        work: a.work.clone().unwrap_or_else(|| warren::migrate::default_work_dir(root)),
        criu: warren::checkpoint::CriuCommon {
            tcp_established: a.tcp_established,
            criu: criu.map(Path::to_path_buf),
            ..Default::default()
        },
        timeout: Duration::from_secs(a.timeout.max(1)),
        lazy_pages: a.lazy_pages,
        tenant: None,
        progress: None,
    };
    let r = tenants.migrate(store, rt, &a.name, opts)?;
    crate::migrate_cmd::print_report(&a.name, &a.target, a.format, &r);
    Ok(())
}

/// Relays this terminal (raw while attached) to the tenant's console until Ctrl-], the end
/// of stdin, or the supervisor's end.
fn console(tenants: &Tenants, name: &str) -> Result<()> {
    use std::io::IsTerminal;
    use std::os::fd::AsFd;
    use warren::tenant::console::{attach, Ended};
    tenants.get(name)?;
    if !supervise::is_supervised(tenants, name)? {
        anyhow::bail!("tenant {name}: is not running (its supervisor serves its console)");
    }
    if !tenants.has_terminal(name)? {
        anyhow::bail!("tenant {name}: has no terminal (made before tenants had consoles)");
    }
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!("Connected to tenant {name}'s console; detach with Ctrl-]");
    }
    let ended = {
        let _raw = tty.then(warren::wait::RawMode::enter);
        attach(&tenants.console_socket(name), std::io::stdin().as_fd(), std::io::stdout().as_fd())?
    };
    match ended {
        Ended::Detached if tty => eprintln!("\ndetached"),
        Ended::Detached => {}
        Ended::Closed => eprintln!("\nwarren: tenant {name}: its console closed"),
    }
    Ok(())
}

fn stop(tenants: &Tenants, rt: &Runtime, name: &str, timeout: Duration) -> Result<()> {
    Ok(tenants.stop(rt, name, timeout)?)
}

/// The new limits go to the running container first (`update`: all or nothing, put back on
/// any failure), then into its config.json (replaced atomically) and record.
fn set(
    tenants: &Tenants,
    rt: &Runtime,
    sources: &crate::plan_cmd::PlanSources,
    store: &Path,
    a: &SetArgs,
) -> Result<()> {
    tenants.get(&a.name)?;
    if a.plan.is_none() && a.memory.is_none() && a.cpus.is_none() && a.pids.is_none() && a.disk.is_none() {
        anyhow::bail!("tenant {}: set what? (--plan, --memory, --cpus, --pids, --disk)", a.name);
    }
    if let Some(d) = a.disk.filter(|d| d.bytes() < warren_config::MIN_DISK) {
        anyhow::bail!("--disk: {d} is below the 16MiB floor");
    }
    let path = tenants.bundle(&a.name).join("config.json");
    let text = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let mut config: serde_json::Value = serde_json::from_slice(&text)?;
    let before: oci_spec::runtime::LinuxResources =
        serde_json::from_value(config["linux"]["resources"].clone()).context("linux.resources")?;
    if let Some(name) = &a.plan {
        let catalog = warren_config::Catalog::discover(sources.plans_dir.as_deref())?;
        let host = HostConfig::discover(sources.host_config.as_deref())?;
        crate::plan_cmd::set_plan(&mut config, catalog.get(name)?, &host, store, &path)?;
    }
    let mut r: oci_spec::runtime::LinuxResources =
        serde_json::from_value(config["linux"]["resources"].clone()).context("linux.resources")?;
    overrides(&mut r, a)?;
    config["linux"]["resources"] = serde_json::to_value(&r)?;
    let running = rt.state(&a.name).is_ok_and(|s| matches!(s.status, Status::Running | Status::Paused));
    if running {
        rt.update(&a.name, &r)?;
    }
    // The disk last: when it cannot be done, the limits written above are put back.
    if let Some(size) = a.disk {
        if let Err(e) = tenants.resize_disk(rt, &a.name, size.bytes()) {
            if running {
                rt.update(&a.name, &before)?;
            }
            return Err(e.into());
        }
    }
    let out = serde_json::to_vec_pretty(&config)?;
    warren::atomic_file::write_durable(&path, &out, 0o600).with_context(|| path.display().to_string())?;
    if let Some(plan) = &a.plan {
        // Read again: resize_disk may have written it.
        let mut t = tenants.get(&a.name)?;
        t.plan = plan.clone();
        tenants.save(&t)?;
    }
    Ok(())
}

fn overrides(r: &mut oci_spec::runtime::LinuxResources, a: &SetArgs) -> Result<()> {
    if let Some(m) = a.memory {
        let limit = i64::try_from(m.bytes()).context("--memory")?;
        if m.bytes() < warren_config::MIN_MEMORY {
            anyhow::bail!("--memory: {m} is below the 6MiB floor");
        }
        let mut mem = (*r.memory()).unwrap_or_default();
        // The swap allowance on top of the limit stays what it was.
        let extra = match (mem.limit(), mem.swap()) {
            (Some(l), Some(s)) if s >= l => Some(s - l),
            _ => None,
        };
        mem.set_limit(Some(limit));
        mem.set_swap(extra.map(|e| limit + e));
        r.set_memory(Some(mem));
    }
    if let Some(cpus) = a.cpus {
        if !(0.01..=8192.0).contains(&cpus) {
            anyhow::bail!("--cpus: {cpus} is not from 0.01 to 8192");
        }
        let mut cpu = r.cpu().clone().unwrap_or_default();
        cpu.set_period(Some(warren_config::CPU_PERIOD_US));
        cpu.set_quota(Some((cpus * warren_config::CPU_PERIOD_US as f64).round() as i64));
        r.set_cpu(Some(cpu));
    }
    if let Some(p) = a.pids {
        if p < 1 {
            anyhow::bail!("--pids: {p} is not above 0");
        }
        r.set_pids(Some(oci_spec::runtime::LinuxPidsBuilder::default().limit(p).build()?));
    }
    Ok(())
}

fn boot(tenants: &Tenants, root: &Path, store: &Path) -> Result<i32> {
    let mut failed = 0;
    for t in tenants.list()?.into_iter().filter(|t| t.want_running) {
        if supervise::is_supervised(tenants, &t.name)? {
            continue;
        }
        match start(tenants, root, store, &t.name) {
            Ok(()) => println!("{}: started", t.name),
            Err(e) => {
                failed += 1;
                println!("{}: {}", t.name, crate::one_line(&e));
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn exec(tenants: &Tenants, root: &Path, name: &str, tty: bool, args: &[String]) -> Result<i32> {
    tenants.get(name)?;
    let exe = std::env::current_exe().context("the warren binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--root").arg(root).arg("exec");
    if tty {
        cmd.arg("-t");
    }
    cmd.arg(name).args(args);
    let status = cmd.status().context("warren exec")?;
    Ok(status.code().unwrap_or(1))
}

fn logs(tenants: &Tenants, name: &str, follow: bool) -> Result<()> {
    tenants.get(name)?;
    let path = tenants.console_log(name);
    let mut f = match std::fs::File::open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Ok(()),
        r => r.with_context(|| path.display().to_string())?,
    };
    let mut out = std::io::stdout().lock();
    loop {
        std::io::copy(&mut f, &mut out)?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // A log truncated under us starts over.
        if f.stream_position()? > f.metadata()?.len() {
            f.rewind()?;
        }
    }
}

/// One row of `list`: the record, what its supervisor and container say.
#[derive(serde::Serialize)]
struct Row {
    #[serde(flatten)]
    tenant: Tenant,
    state: &'static str,
    supervised: bool,
    #[serde(flatten)]
    status: SupervisorStatus,
    uptime_s: Option<u64>,
    memory_used: Option<u64>,
    memory_limit: Option<u64>,
    pids: Option<u64>,
    disk_used: Option<u64>,
    disk_size: Option<u64>,
    /// Over the sampling interval: CPU time as a percentage of one CPU, bytes read and
    /// written per second (all disks).
    cpu_percent: Option<f64>,
    read_bps: Option<u64>,
    write_bps: Option<u64>,
}

/// Counters of one running tenant at one instant, for rates.
struct Sample {
    cpu_ns: u64,
    read: u64,
    write: u64,
}

fn sample(s: &Stats) -> Sample {
    let bytes = |op: &str| s.blkio.io_service_bytes_recursive.iter().filter(|e| e.op == op).map(|e| e.value).sum();
    Sample { cpu_ns: s.cpu.usage.total, read: bytes("Read"), write: bytes("Write") }
}

/// The row of `t`, its usage from `stats` (read by the caller) while it runs.
fn row(tenants: &Tenants, rt: &Runtime, t: Tenant, stats: Option<&Stats>) -> Result<Row> {
    let supervised = supervise::is_supervised(tenants, &t.name)?;
    let running = rt.state(&t.name).is_ok_and(|s| s.status == Status::Running);
    let state = match (running, supervised) {
        (true, true) => "running",
        (true, false) => "running-unsupervised",
        (false, true) => "restarting",
        (false, false) => "stopped",
    };
    let status = supervise::read_status(tenants, &t.name);
    let stats = stats.filter(|_| running);
    let disk = tenants.disk_usage(&t);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Row {
        uptime_s: running.then(|| now.saturating_sub(status.started)),
        memory_used: stats.map(|s| s.memory.usage.usage),
        memory_limit: stats.map(|s| s.memory.usage.limit),
        pids: stats.map(|s| s.pids.current),
        disk_used: disk.map(|d| d.0),
        disk_size: disk.map(|d| d.1),
        cpu_percent: None,
        read_bps: None,
        write_bps: None,
        tenant: t,
        state,
        supervised,
        status,
    })
}

/// The rows, with rates from two samples `over` apart (one sleep for all tenants).
fn rows(tenants: &Tenants, rt: &Runtime, over: Duration) -> Result<Vec<Row>> {
    let all = tenants.list()?;
    let first: Vec<Option<Stats>> = all.iter().map(|t| rt.stats(&t.name).ok()).collect();
    let start = std::time::Instant::now();
    if first.iter().any(Option::is_some) {
        std::thread::sleep(over);
    }
    let mut out = Vec::new();
    for (t, before) in all.into_iter().zip(first) {
        let after = before.as_ref().and_then(|_| rt.stats(&t.name).ok());
        let secs = start.elapsed().as_secs_f64();
        let mut r = row(tenants, rt, t, after.as_ref())?;
        if let (Some(b), Some(a)) = (before.as_ref().map(sample), after.as_ref().map(sample)) {
            r.cpu_percent = Some(((a.cpu_ns.saturating_sub(b.cpu_ns)) as f64 / 1e9 / secs * 1000.0).round() / 10.0);
            r.read_bps = Some((a.read.saturating_sub(b.read) as f64 / secs) as u64);
            r.write_bps = Some((a.write.saturating_sub(b.write) as f64 / secs) as u64);
        }
        out.push(r);
    }
    Ok(out)
}

fn list(tenants: &Tenants, rt: &Runtime, format: TenantFormat, over: Duration) -> Result<()> {
    let rows = rows(tenants, rt, over)?;
    if format == TenantFormat::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    print!("{}", table(&rows));
    Ok(())
}

fn table(rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let head = ["NAME", "STATE", "PLAN", "IP", "CPU%", "MEMORY", "DISK", "IO R/W /s", "PIDS", "UPTIME", "RESTARTS"];
    let [a, b, c, d, e, f, g, h, i, j, k] = head;
    let _ = writeln!(out, "{a:<16} {b:<12} {c:<7} {d:<15} {e:>5} {f:>15} {g:>15} {h:>15} {i:>5} {j:>8} {k:>8}");
    let mib = |b: u64| format!("{:.1}M", b as f64 / 1048576.0);
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
    for r in rows {
        let uptime = dash(r.uptime_s.map(|s| format!("{s}s")));
        let pids = dash(r.pids.map(|p| p.to_string()));
        let mem = dash(r.memory_used.zip(r.memory_limit).map(|(u, l)| format!("{}/{}", mib(u), mib(l))));
        let disk = dash(r.disk_used.zip(r.disk_size).map(|(u, s)| format!("{}/{}", mib(u), mib(s))));
        let io = dash(r.read_bps.zip(r.write_bps).map(|(rd, wr)| format!("{}/{}", mib(rd), mib(wr))));
        let cpu = dash(r.cpu_percent.map(|c| format!("{c:.1}")));
        let ip = dash(r.tenant.ip.map(|ip| ip.to_string()));
        let (name, state, plan, restarts) = (&r.tenant.name, r.state, &r.tenant.plan, r.status.restarts);
        let state = if state == "running-unsupervised" { "unsupervised" } else { state };
        let _ = writeln!(
            out,
            "{name:<16} {state:<12} {plan:<7} {ip:<15} {cpu:>5} {mem:>15} {disk:>15} {io:>15} {pids:>5} {uptime:>8} {restarts:>8}"
        );
    }
    out
}

/// `list` redrawn in place every `interval` seconds (the rates over that interval).
fn top(tenants: &Tenants, rt: &Runtime, interval: f64) -> Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        anyhow::bail!("--interval: {interval} is not from 0.1 to 3600 seconds");
    }
    let mut out = std::io::stdout();
    loop {
        let text = table(&rows(tenants, rt, Duration::from_secs_f64(interval))?);
        // Home, the table, and clear what a longer earlier table left below it.
        write!(out, "\x1b[H\x1b[2J{text}")?;
        out.flush()?;
    }
}
