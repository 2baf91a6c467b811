//! `warren plan list|show|apply` and `warren spec --plan`: hosting plans (warren-config)
//! written into a bundle's config.json.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use oci_spec::runtime::LinuxResources;
use serde_json::Value;
use warren_config::{Catalog, HostConfig, Plan, Size};

/// Where plans and host defaults come from; both flags default to their environment
/// variable, then to /etc/warren, then to what is built in.
#[derive(Args, Debug, Clone)]
pub struct PlanSources {
    /// Directory of plan files (NAME.toml) that add to or replace the built-in plans
    /// [env: WARREN_PLANS_DIR; default: /etc/warren/plans if it exists]
    #[arg(long = "plans-dir", global = true)]
    pub plans_dir: Option<PathBuf>,
    /// Host defaults file [env: WARREN_HOST_CONFIG; default: /etc/warren/host.toml if it exists,
    /// else built in]
    #[arg(long = "host-config", global = true)]
    pub host_config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub sources: PlanSources,
    #[command(subcommand)]
    pub command: PlanCommand,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum PlanFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// List the plans: name, CPUs, memory, swap, memory merging, I/O limits, pids
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        format: PlanFormat,
    },
    /// Print one plan and where it comes from
    Show {
        name: String,
        #[arg(short, long, value_enum, default_value = "table")]
        format: PlanFormat,
    },
    /// Write a plan's resources (and annotation) into a bundle's config.json (replaced atomically; untouched on error)
    Apply {
        /// Path to the bundle directory
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        name: String,
    },
}

pub fn run(a: &PlanArgs) -> Result<i32> {
    let catalog = Catalog::discover(a.sources.plans_dir.as_deref())?;
    match &a.command {
        PlanCommand::List { format: PlanFormat::Json } => {
            println!("{}", serde_json::to_string_pretty(&catalog.plans().collect::<Vec<_>>())?)
        }
        PlanCommand::List { format: PlanFormat::Table } => print_table(catalog.plans()),
        PlanCommand::Show { name, format: PlanFormat::Json } => {
            println!("{}", serde_json::to_string_pretty(catalog.get(name)?)?)
        }
        PlanCommand::Show { name, format: PlanFormat::Table } => print_plan(catalog.get(name)?),
        PlanCommand::Apply { bundle, name } => {
            let host = HostConfig::discover(a.sources.host_config.as_deref())?;
            apply_to_bundle(bundle, catalog.get(name)?, &host)?;
        }
    }
    Ok(0)
}

/// `warren spec --plan NAME`: the new config (a JSON value) with the plan's resources; the
/// "auto" disk is the one under the bundle directory, the rootfs being usually not there yet.
pub fn with_plan(mut config: Value, name: &str, sources: &PlanSources, bundle: &Path) -> Result<Value> {
    let catalog = Catalog::discover(sources.plans_dir.as_deref())?;
    let host = HostConfig::discover(sources.host_config.as_deref())?;
    set_plan(&mut config, catalog.get(name)?, &host, bundle, Path::new("config.json"))?;
    Ok(config)
}

/// Rewrites BUNDLE/config.json with the plan in: a new file renamed over the old, so that a
/// reader sees the old or the new config, and any error leaves the old one as it was.
fn apply_to_bundle(bundle: &Path, plan: &Plan, host: &HostConfig) -> Result<()> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let mut config: Value = serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let rootfs = rootfs_of(&config, bundle);
    set_plan(&mut config, plan, host, &rootfs, &path)?;
    let mut out = serde_json::to_vec_pretty(&config)?;
    out.push(b'\n');
    replace_file(&path, &out)
}

/// Only linux.resources is read as OCI resources and written back, and the plan's annotation
/// set or removed: the rest of the config stays as it was, fields this runtime does not know
/// included.
pub(crate) fn set_plan(config: &mut Value, plan: &Plan, host: &HostConfig, rootfs: &Path, path: &Path) -> Result<()> {
    let Some(root) = config.as_object_mut() else {
        anyhow::bail!("{}: not a JSON object", path.display());
    };
    let linux = root.entry("linux").or_insert_with(|| Value::Object(Default::default()));
    let Some(linux) = linux.as_object_mut() else {
        anyhow::bail!("{}: linux: not an object", path.display());
    };
    let old = linux.get("resources").cloned().unwrap_or(Value::Object(Default::default()));
    let mut resources: LinuxResources = serde_path_to_error::deserialize(old)
        .map_err(|e| anyhow::anyhow!("{}: linux.resources.{}: {}", path.display(), e.path(), e.inner()))?;
    warren_config::apply_plan_to_resources(&mut resources, plan, host, rootfs)?;
    linux.insert("resources".to_string(), serde_json::to_value(&resources)?);
    set_annotations(root, plan, path)
}

/// The plan's annotation (memory.merge) in, or out when the plan does not set it: the same
/// as the library's apply_plan_to_annotations, on the JSON so that nothing else changes.
fn set_annotations(root: &mut serde_json::Map<String, Value>, plan: &Plan, path: &Path) -> Result<()> {
    let key = warren_config::MEMORY_MERGE_ANNOTATION;
    if !plan.memory_merge() && !root.contains_key("annotations") {
        return Ok(());
    }
    let annotations = root.entry("annotations").or_insert_with(|| Value::Object(Default::default()));
    let Some(annotations) = annotations.as_object_mut() else {
        anyhow::bail!("{}: annotations: not an object", path.display());
    };
    if plan.memory_merge() {
        annotations.insert(key.to_string(), Value::from("true"));
    } else {
        annotations.remove(key);
    }
    Ok(())
}

/// The rootfs the config names (root.path, relative to the bundle), or the bundle itself
/// while that does not exist: the "auto" disk is the one under it.
fn rootfs_of(config: &Value, bundle: &Path) -> PathBuf {
    let named = config.pointer("/root/path").and_then(Value::as_str).map(|p| bundle.join(p));
    named.filter(|p| p.exists()).unwrap_or_else(|| bundle.to_path_buf())
}

fn replace_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mode = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.permissions().mode();
    warren::atomic_file::write_durable(path, contents, mode & 0o7777)
        .with_context(|| format!("write {}", path.display()))
}

fn print_table<'a>(plans: impl Iterator<Item = &'a Plan>) {
    println!("{:<12} {:>6} {:>10} {:>10} {:>5} {:<40} {:>6}", "NAME", "CPUS", "MEMORY", "SWAP", "MERGE", "IO", "PIDS");
    for p in plans {
        let (memory, swap) = (Size::from_bytes(p.memory()), Size::from_bytes(p.swap()));
        let merge = yes_no(p.memory_merge());
        println!(
            "{:<12} {:>6} {memory:>10} {swap:>10} {merge:>5} {:<40} {:>6}",
            p.name(),
            p.cpus(),
            io_summary(p),
            p.pids()
        );
    }
}

/// "r 50MB/s 1000 IOPS, w 25MB/s 500 IOPS", or "-" for none.
fn io_summary(p: &Plan) -> String {
    let io = p.io();
    let side = |tag: &str, bps: Option<u64>, iops: Option<u64>| {
        let mut parts = vec![tag.to_string()];
        parts.extend(bps.map(|b| format!("{}/s", Size::from_bytes(b))));
        parts.extend(iops.map(|n| format!("{n} IOPS")));
        (parts.len() > 1).then(|| parts.join(" "))
    };
    let sides: Vec<String> = [side("r", io.read_bps(), io.read_iops()), side("w", io.write_bps(), io.write_iops())]
        .into_iter()
        .flatten()
        .collect();
    if sides.is_empty() {
        "-".to_string()
    } else {
        sides.join(", ")
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_plan(p: &Plan) {
    let size = Size::from_bytes;
    println!("name:        {}", p.name());
    println!("source:      {}", p.source());
    if let Some(d) = p.description() {
        println!("description: {d}");
    }
    println!("cpus:        {} (quota {} us per {} us)", p.cpus(), p.cpu_quota(), warren_config::CPU_PERIOD_US);
    if let Some(shares) = p.cpu_shares() {
        println!("cpu shares:  {shares}");
    }
    println!("memory:      {}", size(p.memory()));
    println!("swap:        {} (memory + swap: {})", size(p.swap()), size(p.memory() + p.swap()));
    println!("merge:       {} (KSM of anonymous memory)", yes_no(p.memory_merge()));
    println!("io:          {}", io_summary(p));
    println!("pids:        {}", p.pids());
    let disk = p.disk().map_or("not limited".to_string(), |d| format!("{} (a tenant's writable layer)", size(d)));
    println!("disk:        {disk}");
}
