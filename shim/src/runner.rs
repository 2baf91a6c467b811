//! The `warren` binary, run as the runc shim runs runc: `--root R --log B/log.json
//! --log-format json VERB ...`. Process-creating verbs go through the binary (the container's
//! init is exec'd from the runtime's own executable, and a fork in this threaded process must
//! go straight to exec); a failure's reason is read back from the JSON log.
//!
//! The shim reaps every child itself, so a command's exit is awaited through
//! [`crate::tasks::Launch`], never with `Child::wait`.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};

use containerd_shim::protos::shim::oci::CheckpointOptions;

use crate::error::{Result, ShimError};
use crate::stdio::Stdio;
use crate::tasks::{Launch, RuntimeConfig};

/// One container's use of the binary.
pub struct Runner<'a> {
    pub config: &'a RuntimeConfig,
    pub id: &'a str,
    /// The JSON log (in the bundle).
    pub log: PathBuf,
}

/// What `create` and `exec` add to the command line.
pub struct Spawn<'a> {
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub stdio: Option<Stdio>,
}

impl<'a> Runner<'a> {
    pub fn new(config: &'a RuntimeConfig, id: &'a str, bundle: &Path) -> Runner<'a> {
        Runner { config, id, log: bundle.join("log.json") }
    }

    pub fn create(&self, launch: &Launch, bundle: &Path, spawn: Spawn) -> Result<()> {
        let mut args: Vec<OsString> = vec!["--bundle".into(), bundle.into()];
        args.extend(spawn_args(&spawn));
        args.push(self.id.into());
        self.run(launch, "create", args, spawn.stdio)
    }

    pub fn exec(&self, launch: &Launch, process_json: &Path, spawn: Spawn) -> Result<()> {
        let mut args: Vec<OsString> = vec!["--process".into(), process_json.into(), "--detach".into()];
        args.extend(spawn_args(&spawn));
        args.push(self.id.into());
        self.run(launch, "exec", args, spawn.stdio)
    }

    /// `warren restore --detach`: the checkpoint in `images` comes back as this container,
    /// running when the command returns.
    pub fn restore(&self, launch: &Launch, bundle: &Path, images: &Path, work: &Path, spawn: Spawn) -> Result<()> {
        let mut args: Vec<OsString> = vec!["--bundle".into(), bundle.into(), "--detach".into()];
        args.extend(["--image-path".into(), images.into(), "--work-path".into(), work.into()]);
        args.extend(spawn_args(&spawn));
        args.push(self.id.into());
        self.run(launch, "restore", args, spawn.stdio)
    }

    /// `warren checkpoint` with the flags runc's shim derives from containerd's options.
    pub fn checkpoint(&self, launch: &Launch, images: &Path, work: &Path, opts: &CheckpointOptions) -> Result<()> {
        let mut args = checkpoint_args(images, work, opts);
        args.push(self.id.into());
        self.run(launch, "checkpoint", args, None)
    }

    pub fn start(&self, launch: &Launch) -> Result<()> {
        self.run(launch, "start", vec![self.id.into()], None)
    }

    pub fn delete(&self, launch: &Launch, force: bool) -> Result<()> {
        let mut args: Vec<OsString> = if force { vec!["--force".into()] } else { vec![] };
        args.push(self.id.into());
        self.run(launch, "delete", args, None)
    }

    fn run(&self, launch: &Launch, verb: &'static str, args: Vec<OsString>, stdio: Option<Stdio>) -> Result<()> {
        let binary = &self.config.binary;
        let mut cmd = Command::new(binary);
        cmd.arg("--root").arg(&self.config.root).arg("--log").arg(&self.log).args(["--log-format", "json", verb]);
        cmd.args(args);
        match stdio {
            Some(s) => cmd.stdin(s.stdin).stdout(s.stdout).stderr(s.stderr),
            None => cmd.stdin(StdStdio::null()).stdout(StdStdio::null()).stderr(StdStdio::null()),
        };
        let log_start = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let child = cmd.spawn().map_err(|source| ShimError::Spawn { binary: binary.clone(), verb, source })?;
        // The child's stdio copies are closed by now (`cmd` owns and drops them below).
        drop(cmd);
        let exit = launch.wait(child.id() as i32);
        if exit.status == 0 {
            return Ok(());
        }
        let message = last_error(&self.log, log_start).unwrap_or_else(|| format!("exit status {}", exit.status));
        Err(ShimError::Runtime { verb, id: self.id.into(), message })
    }
}

fn spawn_args(spawn: &Spawn) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--pid-file".into(), spawn.pid_file.into()];
    if let Some(s) = spawn.console_socket {
        args.push("--console-socket".into());
        args.push(s.into());
    }
    args
}

/// Flags of `warren checkpoint` for containerd's (runc's) checkpoint options. Not `exit`
/// means the container keeps running.
fn checkpoint_args(images: &Path, work: &Path, opts: &CheckpointOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--image-path".into(), images.into(), "--work-path".into(), work.into()];
    let flags = [
        (!opts.exit, "--leave-running"),
        (opts.open_tcp, "--tcp-established"),
        (opts.external_unix_sockets, "--ext-unix-sk"),
        (opts.terminal, "--shell-job"),
        (opts.file_locks, "--file-locks"),
    ];
    args.extend(flags.iter().filter(|(on, _)| *on).map(|(_, flag)| OsString::from(flag)));
    if !opts.cgroups_mode.is_empty() {
        args.extend(["--manage-cgroups-mode".into(), opts.cgroups_mode.as_str().into()]);
    }
    for ns in &opts.empty_namespaces {
        args.extend(["--empty-ns".into(), ns.as_str().into()]);
    }
    args
}

/// The message of the last error line written to the log after `from`.
fn last_error(log: &Path, from: u64) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    f.seek(SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    f.read_to_string(&mut text).ok()?;
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["level"] == "error" || v["level"] == "fatal")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()
}

/// The pid a `--pid-file` holds.
pub fn read_pid(path: &Path) -> Result<i32> {
    let text = std::fs::read_to_string(path).map_err(ShimError::io(path))?;
    text.trim().parse().map_err(|_| ShimError::Io {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a pid: {:?}", text.trim())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_flags_follow_containerd_options() {
        let words = |opts: &CheckpointOptions| -> Vec<String> {
            checkpoint_args(Path::new("/img"), Path::new("/work"), opts)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        // What `ctr c checkpoint --task` sends: file locks, and the task stays.
        let ctr = CheckpointOptions { file_locks: true, ..Default::default() };
        assert_eq!(words(&ctr), ["--image-path", "/img", "--work-path", "/work", "--leave-running", "--file-locks"]);
        let all = CheckpointOptions {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "strict".into(),
            ..Default::default()
        };
        assert_eq!(
            words(&all)[4..],
            [
                "--tcp-established",
                "--ext-unix-sk",
                "--shell-job",
                "--manage-cgroups-mode",
                "strict",
                "--empty-ns",
                "network"
            ]
        );
    }
}
