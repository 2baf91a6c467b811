//! One function per verb: turn parsed flags into library calls and print
//! what runc prints. Returns the process exit code.

use crate::cli::{
    Cli, Command, CreateArgs, ExecArgs, KillArgs, ListArgs, OutputFormat, PsArgs, RunArgs, SpecArgs, UpdateArgs,
};
use crate::{checkpoint_cmd, events_cmd};
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use oci_spec::runtime::{Capabilities, Capability, LinuxResources, Process};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use warren::container::{ConsoleTarget, CreateOptions, ExecOptions, Runtime};
use warren::wait::Forwarder;

pub fn dispatch(cli: Cli) -> Result<i32> {
    let rt = Runtime::new(&cli.root);
    let criu = cli.criu.clone();
    match cli.command {
        Command::Create(a) => create(&rt, &a).map(|_| 0),
        Command::Start { id } => rt.start(&id).map(|_| 0).map_err(Into::into),
        Command::Run(a) => run(&rt, &a),
        Command::State { id } => {
            println!("{}", serde_json::to_string_pretty(&rt.state(&id)?)?);
            Ok(0)
        }
        Command::Kill(a) => kill(&rt, &a),
        Command::Delete(a) => delete(&rt, &a.id, a.force),
        Command::List(a) => list(&rt, &a),
        Command::Ps(a) => ps(&rt, &a),
        Command::Exec(a) => exec(&rt, *a),
        Command::Pause { id } => rt.pause(&id).map(|_| 0).map_err(Into::into),
        Command::Resume { id } => rt.resume(&id).map(|_| 0).map_err(Into::into),
        Command::Spec(a) => spec(&a),
        Command::Plan(a) => crate::plan_cmd::run(&a),
        Command::Image(a) => crate::image_cmd::image(a),
        Command::Bundle(a) => crate::image_cmd::bundle(a),
        Command::Tenant(a) => crate::tenant_cmd::tenant(&cli.root, a, criu.as_deref()),
        Command::Completion { shell } => crate::docs_cmd::completion(shell),
        Command::Man { dir } => crate::docs_cmd::man(&dir),
        Command::Update(a) => update(&rt, &a),
        Command::Events(a) => events_cmd::events(&rt, &a),
        Command::Checkpoint(a) => checkpoint_cmd::checkpoint(&rt, &a, criu.as_deref()),
        Command::Restore(a) => checkpoint_cmd::restore(&rt, &a, criu.as_deref()),
        Command::Migrate(a) => crate::migrate_cmd::migrate(&rt, &cli.root, &a, criu.as_deref()),
        Command::Features => {
            println!("{}", serde_json::to_string_pretty(&warren::features::features())?);
            Ok(0)
        }
        Command::Init => bail!("init is started by the runtime only"),
    }
}

fn create_options(a: &CreateArgs, console: Option<ConsoleTarget>) -> CreateOptions {
    CreateOptions {
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console: console.or_else(|| a.console_socket.clone().map(ConsoleTarget::Socket)),
        no_pivot: a.no_pivot,
        no_new_keyring: a.no_new_keyring,
        preserve_fds: a.preserve_fds,
    }
}

fn create(rt: &Runtime, a: &CreateArgs) -> Result<i32> {
    Ok(rt.create(&create_options(a, None))?)
}

/// For a foreground container with a terminal and no --console-socket: a
/// socketpair whose other end receives the pty master, which we relay.
pub(crate) fn own_console() -> Result<(ConsoleTarget, OwnedFd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().context("console socketpair")?;
    Ok((ConsoleTarget::Fd(theirs.into()), ours.into()))
}

/// Waits for `pid`; relays the terminal whose master arrives on `console`.
pub(crate) fn wait_for(fw: &Forwarder, pid: i32, console: Option<OwnedFd>) -> Result<i32> {
    match console {
        Some(sock) => {
            let master = warren::console::receive_master(sock.as_raw_fd())?;
            Ok(fw.wait_with_terminal(pid, master)?)
        }
        None => Ok(fw.wait(pid)?),
    }
}

/// `run`: create + start; in the foreground also wait, forward signals,
/// delete, and exit with the container's code.
fn run(rt: &Runtime, a: &RunArgs) -> Result<i32> {
    let forwarder = if a.detach { None } else { Some(Forwarder::install()?) };
    warren::spec::validate_id(&a.create.id)?;
    let bundle = warren::spec::Bundle::load(&a.create.bundle)?;
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    let relay = !a.detach && a.create.console_socket.is_none() && terminal;
    let (target, ours) = if relay { own_console().map(|(t, o)| (Some(t), Some(o)))? } else { (None, None) };
    let pid = rt.create_from(&create_options(&a.create, target), bundle)?;
    if let Err(e) = rt.start(&a.create.id) {
        let _ = rt.delete(&a.create.id, true);
        return Err(e.into());
    }
    let Some(fw) = forwarder else { return Ok(0) };
    let code = wait_for(&fw, pid, ours)?;
    if !a.keep {
        rt.delete(&a.create.id, true)?;
    }
    Ok(code)
}

/// Signal names as runc takes them: KILL, SIGKILL, or a number.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("invalid signal number {n}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name).map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))
}

fn kill(rt: &Runtime, a: &KillArgs) -> Result<i32> {
    let sig = parse_signal(&a.signal)?;
    rt.kill(&a.id, sig, a.all)?;
    Ok(0)
}

fn delete(rt: &Runtime, id: &str, force: bool) -> Result<i32> {
    match rt.delete(id, force) {
        Ok(()) => Ok(0),
        // runc: `delete --force` of a container that is gone is not an error.
        Err(warren::container::ContainerError::State(warren::state::StateError::NotFound { .. })) if force => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn list(rt: &Runtime, a: &ListArgs) -> Result<i32> {
    let all = rt.list()?;
    if a.quiet {
        all.iter().for_each(|c| println!("{}", c.id));
    } else if a.format == OutputFormat::Json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        println!("{:<12} {:<10} {:<10} {:<40} {:<30} OWNER", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
        for c in &all {
            let owner = if c.owner.is_empty() { "root" } else { &c.owner };
            println!(
                "{:<12} {:<10} {:<10} {:<40} {:<30} {owner}",
                c.id,
                c.pid,
                c.status,
                c.bundle.display(),
                c.created
            );
        }
    }
    Ok(0)
}

/// `ps`: the container's pids as JSON, or ps(1)'s table filtered to them.
fn ps(rt: &Runtime, a: &PsArgs) -> Result<i32> {
    let pids = rt.pids(&a.id)?;
    if a.format == OutputFormat::Json {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(0);
    }
    let args = if a.ps_args.is_empty() { vec!["-ef".to_string()] } else { a.ps_args.clone() };
    let out = std::process::Command::new("ps").args(&args).output().context("run ps")?;
    if !out.status.success() {
        bail!("ps {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header.split_whitespace().position(|h| h == "PID").context("ps output has no PID column")?;
    println!("{header}");
    for line in lines {
        let pid = line.split_whitespace().nth(col).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(0)
}

fn exec(rt: &Runtime, a: ExecArgs) -> Result<i32> {
    let process = exec_process(rt, &a)?;
    let forwarder = if a.detach { None } else { Some(Forwarder::install()?) };
    let relay = !a.detach && a.console_socket.is_none() && process.terminal().unwrap_or(false);
    let (target, ours) = if relay { own_console().map(|(t, o)| (Some(t), Some(o)))? } else { (None, None) };
    let pid = rt.exec(ExecOptions {
        id: a.id.clone(),
        process,
        pid_file: a.pid_file.clone(),
        console: target.or_else(|| a.console_socket.clone().map(ConsoleTarget::Socket)),
        preserve_fds: a.preserve_fds,
    })?;
    match forwarder {
        Some(fw) => wait_for(&fw, pid, ours),
        None => Ok(0),
    }
}

/// The exec'd process: --process FILE as is, or the container's own process
/// with the command line's changes (as runc builds it).
fn exec_process(rt: &Runtime, a: &ExecArgs) -> Result<Process> {
    if a.apparmor.as_deref().is_some_and(|s| !s.is_empty()) || a.process_label.as_deref().is_some_and(|s| !s.is_empty())
    {
        bail!("--apparmor and --process-label are not supported on this host");
    }
    if let Some(path) = &a.process {
        let text = std::fs::read(path).with_context(|| format!("--process {}", path.display()))?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        let p: Process = serde_path_to_error::deserialize(de)
            .map_err(|e| anyhow::anyhow!("--process {}: {}: {}", path.display(), e.path(), e.inner()))?;
        return Ok(p);
    }
    if a.command.is_empty() {
        bail!("exec: no command given (args or --process)");
    }
    let state = rt.open(&a.id)?.state;
    let mut p = state.config.process().clone().context("container has no process")?;
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &a.env {
        let key = kv.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some(user) = &a.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        p.user_mut().set_uid(uid.parse().with_context(|| format!("--user {user}: not a numeric uid"))?);
        p.user_mut().set_gid(gid.parse().with_context(|| format!("--user {user}: not a numeric gid"))?);
    }
    if !a.additional_gids.is_empty() {
        p.user_mut().set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    add_caps(&mut p, &a.cap)?;
    Ok(p)
}

fn add_caps(p: &mut Process, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut caps = p.capabilities().clone().unwrap_or_default();
    for name in names {
        let cap: Capability = serde_json::from_value(serde_json::Value::String(name.clone()))
            .map_err(|_| anyhow::anyhow!("--cap {name}: unknown capability"))?;
        let with = |set: &Option<Capabilities>| {
            let mut s = set.clone().unwrap_or_default();
            s.insert(cap);
            Some(s)
        };
        caps.set_bounding(with(caps.bounding()));
        caps.set_effective(with(caps.effective()));
        caps.set_permitted(with(caps.permitted()));
        caps.set_ambient(with(caps.ambient()));
    }
    p.set_capabilities(Some(caps));
    Ok(())
}

fn spec(a: &SpecArgs) -> Result<i32> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let mut config = warren::features::default_spec(a.rootless);
    if let Some(plan) = &a.plan {
        config = crate::plan_cmd::with_plan(config, plan, &a.plan_sources, &a.bundle)?;
    }
    let text = serde_json::to_string_pretty(&config)?;
    write_new(&path, &text)?;
    Ok(0)
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

fn update(rt: &Runtime, a: &UpdateArgs) -> Result<i32> {
    let resources = update_resources(a)?;
    rt.update(&a.id, &resources)?;
    Ok(0)
}

/// The -r object (or none), with the flags' values written over its fields.
fn update_resources(a: &UpdateArgs) -> Result<LinuxResources> {
    let mut r: LinuxResources = match a.resources.as_deref() {
        None => LinuxResources::default(),
        Some(path) => {
            let text = if path == Path::new("-") {
                std::io::read_to_string(std::io::stdin()).context("reading the resources from stdin")?
            } else {
                std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?
            };
            serde_json::from_str(&text).with_context(|| format!("{path:?}: not an OCI linux.resources object"))?
        }
    };
    let mut cpu = r.cpu().clone().unwrap_or_default();
    if a.cpu_period.is_some() {
        cpu.set_period(a.cpu_period);
    }
    if a.cpu_quota.is_some() {
        cpu.set_quota(a.cpu_quota);
    }
    if a.cpu_shares.is_some() {
        cpu.set_shares(a.cpu_shares);
    }
    if a.cpuset_cpus.is_some() {
        cpu.set_cpus(a.cpuset_cpus.clone());
    }
    if a.cpuset_mems.is_some() {
        cpu.set_mems(a.cpuset_mems.clone());
    }
    let mut memory = r.memory().unwrap_or_default();
    if a.memory.is_some() {
        memory.set_limit(a.memory);
    }
    if a.memory_reservation.is_some() {
        memory.set_reservation(a.memory_reservation);
    }
    if a.memory_swap.is_some() {
        memory.set_swap(a.memory_swap);
    }
    // Left unset rather than empty, so that nothing is written for controllers not asked for.
    if cpu != Default::default() {
        r.set_cpu(Some(cpu));
    }
    if memory != Default::default() {
        r.set_memory(Some(memory));
    }
    if let Some(limit) = a.pids_limit {
        r.set_pids(Some(oci_spec::runtime::LinuxPidsBuilder::default().limit(limit).build()?));
    }
    if let Some(weight) = a.blkio_weight {
        let mut io = r.block_io().clone().unwrap_or_default();
        io.set_weight(Some(weight));
        r.set_block_io(Some(io));
    }
    Ok(r)
}
