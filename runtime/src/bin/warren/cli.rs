//! The command line, flag for flag as runc 1.1's where the verbs overlap.

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "Warren: an OCI container runtime for dense hosting")]
pub struct Cli {
    /// Directory for the containers' state
    #[arg(long, global = true, default_value = "/run/warren")]
    pub root: PathBuf,
    /// Write log lines to this file instead of stderr
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Format of log lines
    #[arg(long = "log-format", global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug messages too
    #[arg(long, global = true)]
    pub debug: bool,
    /// Use systemd for cgroups (refused where no systemd runs)
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
    /// Path of the criu binary (checkpoint/restore)
    #[arg(long, global = true, hide = true)]
    pub criu: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments as runc's parser does where clap differs: a flag given
    /// twice (`--root A --root B`, as clients and test tools pass them) is taken, the last
    /// one winning, on every verb.
    pub fn parse_runc_style() -> Cli {
        let matches = last_flag_wins(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn last_flag_wins(cmd: clap::Command) -> clap::Command {
    let verbs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    verbs.iter().fold(cmd.args_override_self(true), |cmd, verb| cmd.mut_subcommand(verb, last_flag_wins))
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its process waits for `start`)
    Create(CreateArgs),
    /// Start the process of a created container
    Start { id: String },
    /// Create and start a container
    Run(RunArgs),
    /// Print the state of a container as JSON
    State { id: String },
    /// Send a signal to a container's init (or all its processes)
    Kill(KillArgs),
    /// Delete a container's resources
    Delete(DeleteArgs),
    /// List containers
    List(ListArgs),
    /// List the processes of a container
    Ps(PsArgs),
    /// Run a new process in a container
    Exec(Box<ExecArgs>),
    /// Freeze every process of a container
    Pause { id: String },
    /// Thaw a paused container
    Resume { id: String },
    /// Write a default config.json into the bundle directory
    Spec(SpecArgs),
    /// Change the cgroup resources of a container (all or nothing)
    Update(UpdateArgs),
    /// Print a container's usage statistics and OOM events as JSON lines
    Events(EventsArgs),
    /// Checkpoint a running container with CRIU
    Checkpoint(CheckpointArgs),
    /// Restore a container from a CRIU checkpoint
    Restore(RestoreArgs),
    /// Hosting plans: list them, show one, write one into a bundle's config.json
    Plan(crate::plan_cmd::PlanArgs),
    /// Images in the image store: import, list, rm
    Image(crate::image_cmd::ImageCmd),
    /// Bundles made from images: create, rm
    Bundle(crate::image_cmd::BundleCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per verb) into a directory
    Man { dir: PathBuf },
    /// Tenants: VPS-style containers made from an image with a plan, supervised
    Tenant(crate::tenant_cmd::TenantCmd),
    /// Move a running container to another host (send), or take one (receive)
    Migrate(crate::migrate_cmd::MigrateCmd),
    /// Print the features this runtime implements (runtime-spec features.md)
    Features,
    /// Internal: the container side of create and exec
    #[command(hide = true)]
    Init,
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Path to the bundle directory
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket path that receives the pty master when process.terminal is set
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File to write the container process's pid to
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Use MS_MOVE + chroot instead of pivot_root
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Do not create a new session keyring
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass N extra descriptors (3..3+N) to the container process
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Detach from the container's process
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container's state after it exits
    #[arg(long)]
    pub keep: bool,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// Signal name (KILL, SIGKILL) or number
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kill the container's processes if it is still running
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    /// Print only the container ids
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub format: OutputFormat,
    pub id: String,
    /// Arguments for ps(1) (table format only)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// JSON file with the process (config.json's "process" object)
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub detach: bool,
    /// Allocate a pseudo-TTY
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Set an environment variable (KEY=VALUE)
    #[arg(short, long)]
    pub env: Vec<String>,
    /// Working directory in the container
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// UID[:GID] to run as
    #[arg(short, long)]
    pub user: Option<String>,
    /// Additional group ids
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Add a capability to the process's bounding, effective, permitted and ambient sets
    #[arg(short, long)]
    pub cap: Vec<String>,
    /// Set no_new_privs for the process
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Apparmor profile (not supported here; must be empty)
    #[arg(long)]
    pub apparmor: Option<String>,
    /// SELinux process label (not supported here; must be empty)
    #[arg(long = "process-label")]
    pub process_label: Option<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    /// Command and arguments (when no --process is given)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SpecArgs {
    /// Directory to write config.json into
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for running as an unprivileged user
    #[arg(long)]
    pub rootless: bool,
    /// Give the container this hosting plan's resources (see `warren plan list`)
    #[arg(long)]
    pub plan: Option<String>,
    #[command(flatten)]
    pub plan_sources: crate::plan_cmd::PlanSources,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// JSON file with the resources (an OCI linux.resources object; "-" reads stdin); the
    /// other flags override its fields
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// CFS period in microseconds
    #[arg(long = "cpu-period")]
    pub cpu_period: Option<u64>,
    /// CFS quota in microseconds per period (-1: none)
    #[arg(long = "cpu-quota", allow_negative_numbers = true)]
    pub cpu_quota: Option<i64>,
    /// CPU shares (relative weight); runc spells it --cpu-share
    #[arg(long = "cpu-shares", alias = "cpu-share")]
    pub cpu_shares: Option<u64>,
    /// CPUs to run on (0-3, 0,1)
    #[arg(long = "cpuset-cpus")]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to allocate from (0-3, 0,1)
    #[arg(long = "cpuset-mems")]
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes, or with a k/m/g suffix (-1: none)
    #[arg(long, value_parser = parse_bytes, allow_negative_numbers = true)]
    pub memory: Option<i64>,
    /// Memory soft limit, as --memory
    #[arg(long = "memory-reservation", value_parser = parse_bytes, allow_negative_numbers = true)]
    pub memory_reservation: Option<i64>,
    /// Memory plus swap limit, as --memory (-1: unlimited swap)
    #[arg(long = "memory-swap", value_parser = parse_bytes, allow_negative_numbers = true)]
    pub memory_swap: Option<i64>,
    /// Maximum number of tasks (-1 or 0: none)
    #[arg(long = "pids-limit", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// Block IO weight (10..=1000)
    #[arg(long = "blkio-weight")]
    pub blkio_weight: Option<u16>,
    pub id: String,
}

/// A byte count as runc takes it: plain bytes, or a k/m/g (kb/mb/gb, any case) binary
/// suffix; -1 passes through as "unlimited".
pub fn parse_bytes(text: &str) -> Result<i64, String> {
    if text == "-1" {
        return Ok(-1);
    }
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.strip_suffix('b').filter(|d| d.ends_with(['k', 'm', 'g'])).unwrap_or(&lower);
    let (number, shift) = match digits.char_indices().last() {
        Some((i, 'k')) => (&digits[..i], 10),
        Some((i, 'm')) => (&digits[..i], 20),
        Some((i, 'g')) => (&digits[..i], 30),
        _ => (digits, 0),
    };
    let bad = || format!("{text:?} is not a byte count (bytes, or a number with a k, m or g suffix)");
    let value: i64 = number.parse().map_err(|_| bad())?;
    if value < 0 {
        return Err(bad());
    }
    value.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_counts_take_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2k"), Ok(2048));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("-1"), Ok(-1));
        for bad in ["", "m", "-2", "1x", "1.5m", "99999999999g"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Print the statistics once and exit
    #[arg(long)]
    pub stats: bool,
    /// Time between statistics (Go duration: 500ms, 5s, 1m30s)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: std::time::Duration,
    pub id: String,
}

/// A Go-style duration, as runc takes it: one or more NUMBER UNIT pairs, units ns us ms s m h.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("invalid duration {text:?} (want e.g. 500ms, 5s, 1m30s)");
    let mut rest = text.trim();
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let number: f64 = rest[..split].parse().map_err(|_| bad())?;
        let unit_len = rest[split..].find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len() - split);
        let seconds = match &rest[split..split + unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += number * seconds;
        rest = &rest[split + unit_len..];
    }
    if total <= 0.0 || total > 1e9 {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Flags checkpoint and restore share (runc's names).
#[derive(Args, Debug, Clone)]
pub struct CriuArgs {
    /// Directory of the CRIU images
    #[arg(long = "image-path", default_value = "checkpoint")]
    pub image_path: PathBuf,
    /// Directory for CRIU's logs and work files (default: the image path)
    #[arg(long = "work-path")]
    pub work_path: Option<PathBuf>,
    /// Allow open TCP connections
    #[arg(long = "tcp-established")]
    pub tcp_established: bool,
    /// Allow external unix sockets
    #[arg(long = "ext-unix-sk")]
    pub ext_unix_sk: bool,
    /// Allow shell jobs
    #[arg(long = "shell-job")]
    pub shell_job: bool,
    /// Handle file locks
    #[arg(long = "file-locks")]
    pub file_locks: bool,
    /// Cgroups mode: soft (default), full, strict or ignore
    #[arg(long = "manage-cgroups-mode")]
    pub manage_cgroups_mode: Option<String>,
    /// Create a namespace empty instead of restoring its properties (network)
    #[arg(long = "empty-ns")]
    pub empty_ns: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Images of a previous pre-dump, relative to the image path
    #[arg(long = "parent-path")]
    pub parent_path: Option<PathBuf>,
    /// Leave the container running after the checkpoint
    #[arg(long = "leave-running")]
    pub leave_running: bool,
    /// Dump the memory only, leaving the container running (for a later --parent-path)
    #[arg(long = "pre-dump")]
    pub pre_dump: bool,
    /// Deduplicate the images against the parent's
    #[arg(long = "auto-dedup")]
    pub auto_dedup: bool,
    /// Dump open but unlinked files as links
    #[arg(long = "link-remap")]
    pub link_remap: bool,
    /// Leave out TCP connections still being set up or closed (with --tcp-established)
    #[arg(long = "tcp-skip-in-flight")]
    pub tcp_skip_in_flight: bool,
    pub id: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Path to the bundle directory
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Detach from the container's process
    #[arg(short, long)]
    pub detach: bool,
    /// File to write the container process's pid to
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Unix socket path that receives the pty master of a checkpointed terminal
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// Do not use pivot_root for the restored root
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility (the restorer is always a subreaper in the foreground)
    #[arg(long = "no-subreaper", hide = true)]
    pub no_subreaper: bool,
    pub id: String,
}
