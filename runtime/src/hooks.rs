//! OCI hooks: each gets the container's state JSON on stdin, runs with its
//! own args/env, and is killed when its timeout expires.

use oci_spec::runtime::Hook;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook {path}: {source}")]
    Spawn { kind: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{kind} hook {path}: exited with {status}{output}")]
    Failed { kind: &'static str, path: PathBuf, status: String, output: String },
    #[error("{kind} hook {path}: timed out after {secs}s")]
    Timeout { kind: &'static str, path: PathBuf, secs: i64 },
}

/// The six hook kinds, named as in config.json.
#[derive(Debug, Clone, Copy)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        }
    }

    pub fn of(self, spec: &oci_spec::runtime::Spec) -> Vec<Hook> {
        let Some(h) = spec.hooks() else {
            return Vec::new();
        };
        #[allow(deprecated)]
        let list = match self {
            HookKind::Prestart => h.prestart(),
            HookKind::CreateRuntime => h.create_runtime(),
            HookKind::CreateContainer => h.create_container(),
            HookKind::StartContainer => h.start_container(),
            HookKind::Poststart => h.poststart(),
            HookKind::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Runs every hook of `kind` in order; stops at the first failure.
pub fn run_all(kind: HookKind, spec: &oci_spec::runtime::Spec, state_json: &str) -> Result<(), HookError> {
    for hook in kind.of(spec) {
        run_one(kind.name(), &hook, state_json)?;
    }
    Ok(())
}

fn run_one(kind: &'static str, hook: &Hook, state_json: &str) -> Result<(), HookError> {
    let path = hook.path().clone();
    let args = hook.args().clone().unwrap_or_default();
    let mut cmd = Command::new(&path);
    if let Some((arg0, rest)) = args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
        cmd.args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { kind, path: path.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let deadline = hook.timeout().filter(|t| *t > 0).map(|t| (t, Instant::now() + Duration::from_secs(t as u64)));
    let mut pause = Duration::from_micros(200);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(source) => return Err(HookError::Spawn { kind, path, source }),
        }
        if let Some((secs, at)) = deadline {
            if Instant::now() >= at {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { kind, path, secs });
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    if status.success() {
        return Ok(());
    }
    let out = child.wait_with_output().map(|o| [o.stdout, o.stderr].concat()).unwrap_or_default();
    let text = String::from_utf8_lossy(&out).trim().replace('\n', " ");
    let output = if text.is_empty() { String::new() } else { format!(": {text}") };
    Err(HookError::Failed { kind, path, status: status.to_string(), output })
}
