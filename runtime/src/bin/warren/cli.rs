//! The command line, flag for flag as runc 1.1's where the verbs overlap.

use clap::{Args, Parser, Subcommand, ValueEnum};
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
}
