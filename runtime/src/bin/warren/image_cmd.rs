//! `warren image ...` and `warren bundle ...`: the image store's verbs
//! (flags here, the work in the warren-images library).

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
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
    /// Pull an image from an OCI distribution registry (HOST[:PORT]/NAME[:TAG|@DIGEST])
    Pull(PullArgs),
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

#[derive(Args, Debug)]
pub struct PullArgs {
    /// Name to store the image under (default: the reference, HOST/NAME:TAG)
    #[arg(long)]
    pub name: Option<String>,
    /// Plain HTTP, not HTTPS (a registry on localhost gets plain HTTP anyway)
    #[arg(long)]
    pub insecure: bool,
    /// USER:PASSWORD for the registry
    #[arg(long, conflicts_with = "authfile")]
    pub creds: Option<String>,
    /// An auth file (podman's auth.json, docker's config.json) to take the registry's entry
    /// from; default: $REGISTRY_AUTH_FILE, /run/containers/0/auth.json, ~/.docker/config.json
    #[arg(long)]
    pub authfile: Option<PathBuf>,
    pub reference: String,
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
    /// Mount the overlay only inside the container's own mount namespace, at each create:
    /// the host's mount table does not grow with tenants (only warren can run such a bundle)
    #[arg(long, conflicts_with = "copy")]
    pub mount_in_container: bool,
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
        ImageCommand::Pull(a) => pull(&store, &a),
        ImageCommand::Rm { names } => {
            for name in &names {
                let layers = store.remove(name)?;
                println!("removed {name} ({layers} layers deleted)");
            }
            Ok(0)
        }
    }
}

/// Into a private temp dir beside the store (same file system, removed whatever happens),
/// then imported from there like any OCI layout.
fn pull(store: &Store, a: &PullArgs) -> Result<i32> {
    use warren_images::pull::{self, Reference};
    let r = Reference::parse(&a.reference)?;
    let parent = store.root().parent().unwrap_or(Path::new("/var/tmp"));
    let dir = TempDir::new(parent, &format!(".warren-pull-{}", std::process::id()))?;
    let mut bar = ProgressBar::new("pulling", std::io::stderr().is_terminal());
    let creds = pull_credentials(a, &r.registry)?;
    let got = pull::pull(&r, &dir.0, a.insecure, creds, &mut |p| bar.update(Progress { done: p.done, total: p.total }));
    bar.finish();
    got?;
    let opts = ImportOptions { name: Some(a.name.clone().unwrap_or_else(|| r.name())), ..Default::default() };
    let record = store.import(&dir.0, &opts, &mut |_| {})?;
    println!("{} {}", record.name(), record.digest());
    Ok(0)
}

/// --creds, else the entry for `registry` in --authfile, else in the first default auth
/// file that has one; None: anonymous.
fn pull_credentials(a: &PullArgs, registry: &str) -> Result<Option<warren_images::pull::Credentials>> {
    use warren_images::pull::{default_auth_files, Credentials};
    if let Some(text) = &a.creds {
        return Ok(Some(Credentials::parse(text).context("--creds: not USER:PASSWORD")?));
    }
    if let Some(path) = &a.authfile {
        return Ok(Credentials::from_auth_file(path, registry)?);
    }
    for path in default_auth_files() {
        if let Some(c) = Credentials::from_auth_file(&path, registry)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// A directory removed with everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path, name: &str) -> Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = parent.join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path).with_context(|| path.display().to_string())?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn import(store: &Store, a: &ImportArgs) -> Result<i32> {
    let mut opts = ImportOptions { name: a.name.clone(), ..Default::default() };
    opts.select.refname = a.refname.clone();
    let mut bar = ProgressBar::new("importing", std::io::stderr().is_terminal());
    let record = store.import(&a.path, &opts, &mut |p| bar.update(p));
    bar.finish();
    let record = record?;
    println!("{} {}", record.name(), record.digest());
    Ok(0)
}

/// Import progress on stderr when it is a terminal (nothing otherwise):
/// redrawn at most every REDRAW, and always at the end.
struct ProgressBar {
    label: &'static str,
    tty: bool,
    start: Instant,
    drawn: Option<Instant>,
}

const REDRAW: Duration = Duration::from_millis(100);

impl ProgressBar {
    fn new(label: &'static str, tty: bool) -> Self {
        ProgressBar { label, tty, start: Instant::now(), drawn: None }
    }

    fn update(&mut self, p: Progress) {
        let now = Instant::now();
        let due = self.drawn.is_none_or(|t| now - t >= REDRAW) || p.done >= p.total;
        if self.tty && due {
            let line = progress_line(self.label, p, now - self.start);
            // \r back to the line's start, \x1b[K clears what a longer line left.
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
            self.drawn = Some(now);
        }
    }

    fn finish(&self) {
        if self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// `importing [#####-----]  50%  12.0/24.0 MiB  8.0 MiB/s` (or `pulling`).
fn progress_line(label: &str, p: Progress, elapsed: Duration) -> String {
    const WIDTH: u64 = 24;
    let frac = if p.total == 0 { 1.0 } else { p.done.min(p.total) as f64 / p.total as f64 };
    let full = (frac * WIDTH as f64) as u64;
    let bar: String = (0..WIDTH).map(|i| if i < full { '#' } else { '-' }).collect();
    let rate = p.done as f64 / elapsed.as_secs_f64().max(1e-3);
    let mib = |b: f64| b / 1048576.0;
    format!(
        "{label} [{bar}] {:3.0}%  {:.1}/{:.1} MiB  {:.1} MiB/s",
        frac * 100.0,
        mib(p.done as f64),
        mib(p.total as f64),
        mib(rate)
    )
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
                mount_in_container: a.mount_in_container,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_bar_bytes_and_rate() {
        let p = Progress { done: 12 << 20, total: 24 << 20 };
        assert_eq!(
            progress_line("importing", p, Duration::from_millis(1500)),
            "importing [############------------]  50%  12.0/24.0 MiB  8.0 MiB/s"
        );
        let end = Progress { done: 5 << 20, total: 5 << 20 };
        assert!(progress_line("importing", end, Duration::from_secs(1))
            .contains("[########################] 100%  5.0/5.0 MiB"));
        let empty = Progress { done: 0, total: 0 };
        assert!(progress_line("importing", empty, Duration::ZERO).contains("100%  0.0/0.0 MiB  0.0 MiB/s"));
    }

    #[test]
    fn progress_is_quiet_off_a_terminal_and_rate_limited_on_one() {
        let mut quiet = ProgressBar::new("importing", false);
        quiet.update(Progress { done: 1, total: 1 });
        assert!(quiet.drawn.is_none());
        let mut bar = ProgressBar::new("importing", true);
        bar.update(Progress { done: 1, total: 10 });
        let first = bar.drawn.expect("drawn");
        bar.update(Progress { done: 2, total: 10 });
        assert_eq!(bar.drawn, Some(first), "redrawn within {REDRAW:?}");
        bar.update(Progress { done: 10, total: 10 });
        assert_ne!(bar.drawn, Some(first), "the end is always drawn");
    }
}
