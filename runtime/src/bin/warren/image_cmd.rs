//! `warren image ...` and `warren bundle ...`: the image store's verbs
//! (flags here, the work in the warren-images library).

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use warren_images::bundle::{self, BundleOptions};
use warren_images::spec::Volumes;
use warren_images::store::{ImportOptions, Progress, Store, DEFAULT_STORE};

#[derive(Args, Debug)]
pub struct ImageCmd {
    /// Directory of the image store
    #[arg(long, global = true, default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout directory, an oci-archive tar or a `docker save` tar
    Import(ImportArgs),
    /// List the images in the store
    #[command(alias = "ls")]
    List(ImageListArgs),
    /// Remove images (their layers stay while other images or bundles use them)
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Name to store the image under (default: the name the image carries)
    #[arg(long)]
    pub name: Option<String>,
    /// Which manifest to import, by ref name or repo tag, when there are several
    #[arg(long = "ref")]
    pub refname: Option<String>,
    pub path: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ImageListArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: ListFormat,
    /// Print only the names
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct BundleCmd {
    /// Directory of the image store
    #[arg(long, global = true, default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum VolumeMode {
    Tmpfs,
    Bind,
}

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Make a bundle (config.json + rootfs) from an image
    Create(Box<BundleCreateArgs>),
    /// Remove a bundle made by `bundle create` (its rootfs mount, upper dir and files)
    Rm { dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct BundleCreateArgs {
    /// Image to make the bundle from
    #[arg(long)]
    pub image: String,
    /// Copy the image's files into rootfs instead of mounting an overlay
    #[arg(long)]
    pub copy: bool,
    /// Give the process a terminal
    #[arg(short, long)]
    pub tty: bool,
    /// Mount the container's root read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// How the image's Volumes are provided
    #[arg(long, value_enum, default_value = "tmpfs")]
    pub volumes: VolumeMode,
    /// Hosting plan whose resources the container gets (`warren plan list`)
    #[arg(long)]
    pub plan: Option<String>,
    #[command(flatten)]
    pub plan_sources: crate::plan_cmd::PlanSources,
    /// Bundle directory to create (must not exist, or be empty)
    pub dir: PathBuf,
    /// Command and arguments replacing the image's Cmd
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn image(cmd: ImageCmd) -> Result<i32> {
    let store = Store::open(&cmd.store)?;
    match cmd.command {
        ImageCommand::Import(a) => import(&store, &a),
        ImageCommand::List(a) => list(&store, &a),
        ImageCommand::Rm { names } => {
            for name in &names {
                let layers = store.remove(name)?;
                println!("removed {name} ({layers} layers deleted)");
            }
            Ok(0)
        }
    }
}

fn import(store: &Store, a: &ImportArgs) -> Result<i32> {
    let mut opts = ImportOptions { name: a.name.clone(), ..Default::default() };
    opts.select.refname = a.refname.clone();
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut show = |p: Progress| {
        if tty {
            let rate = p.done as f64 / start.elapsed().as_secs_f64().max(1e-3) / 1048576.0;
            let (done, total) = (p.done as f64 / 1048576.0, p.total as f64 / 1048576.0);
            eprint!("\rimporting {:.1}/{:.1} MiB, {rate:.1} MiB/s   ", done, total);
            let _ = std::io::stderr().flush();
        }
    };
    let record = store.import(&a.path, &opts, &mut show);
    if tty {
        eprintln!();
    }
    let record = record?;
    println!("{} {}", record.name(), record.digest());
    Ok(0)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn list(store: &Store, a: &ImageListArgs) -> Result<i32> {
    let images = store.list()?;
    if a.format == ListFormat::Json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(0);
    }
    if a.quiet {
        images.iter().for_each(|i| println!("{}", i.name()));
        return Ok(0);
    }
    let w = images.iter().map(|i| i.name().len()).max().unwrap_or(4).max(4);
    println!("{:w$}  {:12}  {:>9}  {:>6}  {:>6}", "NAME", "DIGEST", "SIZE", "LAYERS", "SHARED");
    for i in &images {
        let (name, digest, size) = (i.name(), i.digest().short(), human(i.size()));
        println!("{name:w$}  {digest:12}  {size:>9}  {:>6}  {:>6}", i.layers(), i.shared());
    }
    Ok(0)
}

pub fn bundle(cmd: BundleCmd) -> Result<i32> {
    let store = Store::open(&cmd.store)?;
    match cmd.command {
        BundleCommand::Create(a) => {
            let opts = BundleOptions {
                image: a.image.clone(),
                copy: a.copy,
                args: a.args.clone(),
                terminal: a.tty,
                read_only: a.read_only,
                volumes: match a.volumes {
                    VolumeMode::Tmpfs => Volumes::Tmpfs,
                    VolumeMode::Bind => Volumes::Bind,
                },
            };
            let mut base = warren::features::default_spec(false);
            if let Some(plan) = &a.plan {
                // The plan's "auto" disk is the one the bundle will be on.
                let parent = a.dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                base = crate::plan_cmd::with_plan(base, plan, &a.plan_sources, parent)?;
            }
            let dir = bundle::create(&store, &a.dir, base, &opts)?;
            println!("{}", dir.display());
        }
        BundleCommand::Rm { dir } => bundle::remove(&store, &dir)?,
    }
    Ok(0)
}
