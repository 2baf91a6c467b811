//! The container process's own attributes, applied in the order the kernel
//! needs them: rlimits, bounding set, ids, capabilities, no_new_privs, then
//! exec of the program found on the container's PATH.

use caps::{CapSet, CapsHashSet};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Process};
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("rlimit {name}: {source}")]
    Rlimit { name: String, source: std::io::Error },
    #[error("capability set {set}: {source}")]
    Capability { set: &'static str, source: caps::errors::CapsError },
    #[error("set user {uid}:{gid} (groups {groups:?}): {source}")]
    User { uid: u32, gid: u32, groups: Vec<u32>, source: std::io::Error },
    #[error("oomScoreAdj {value}: {source}")]
    OomScoreAdj { value: i32, source: std::io::Error },
    #[error("process.cwd {path}: {source}")]
    Cwd { path: PathBuf, source: std::io::Error },
    #[error("exec: {program:?}: executable file not found in $PATH")]
    NotFound { program: String },
    #[error("exec: {program:?}: {source}")]
    Exec { program: String, source: std::io::Error },
    #[error("no_new_privs: {source}")]
    NoNewPrivs { source: std::io::Error },
    #[error("personality: {source}")]
    Personality { source: std::io::Error },
}

fn rlimit_resource(t: PosixRlimitType) -> i32 {
    (match t {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as i32
}

pub fn apply_rlimits(process: &Process) -> Result<(), ProcessError> {
    for r in process.rlimits().iter().flatten() {
        crate::sys::set_rlimit(rlimit_resource(r.typ()), r.soft(), r.hard())
            .map_err(|source| ProcessError::Rlimit { name: r.typ().to_string(), source })?;
    }
    Ok(())
}

pub fn apply_oom_score_adj(process: &Process) -> Result<(), ProcessError> {
    if let Some(value) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", value.to_string())
            .map_err(|source| ProcessError::OomScoreAdj { value, source })?;
    }
    Ok(())
}

fn to_caps(set: &Option<Capabilities>) -> CapsHashSet {
    set.iter().flatten().filter_map(|c| caps::Capability::from_str(&format!("CAP_{c}")).ok()).collect()
}

fn cap_err(set: &'static str) -> impl Fn(caps::errors::CapsError) -> ProcessError {
    move |source| ProcessError::Capability { set, source }
}

/// Drops what the bounding set must not keep; needs CAP_SETPCAP, so it runs
/// before the switch of user.
pub fn drop_bounding(process: &Process) -> Result<(), ProcessError> {
    let Some(c) = process.capabilities() else {
        return Ok(());
    };
    let keep = to_caps(c.bounding());
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(cap_err("bounding"))?;
        }
    }
    Ok(())
}

/// setgroups/setgid/setuid with the permitted set kept across the switch.
pub fn switch_user(process: &Process) -> Result<(), ProcessError> {
    let user = process.user();
    let groups = user.additional_gids().clone().unwrap_or_default();
    let err = |source| ProcessError::User { uid: user.uid(), gid: user.gid(), groups: groups.clone(), source };
    crate::sys::set_keep_caps().map_err(err)?;
    // setgroups is refused in a user namespace whose gid map was written with
    // setgroups denied; an empty list is then what the process has anyway.
    if let Err(e) = crate::sys::set_groups(&groups) {
        if !(groups.is_empty() && e.raw_os_error() == Some(libc::EPERM)) {
            return Err(err(e));
        }
    }
    crate::sys::set_ids(user.uid(), user.gid()).map_err(err)?;
    if let Some(mask) = user.umask() {
        crate::sys::set_umask(mask);
    }
    Ok(())
}

/// The effective, permitted, inheritable and ambient sets of config.json.
pub fn set_capabilities(process: &Process) -> Result<(), ProcessError> {
    let c = process.capabilities().clone().unwrap_or_default();
    // Each capset must stay consistent (effective within permitted), so
    // shrink effective first and permitted last.
    caps::set(None, CapSet::Effective, &to_caps(c.effective())).map_err(cap_err("effective"))?;
    caps::set(None, CapSet::Inheritable, &to_caps(c.inheritable())).map_err(cap_err("inheritable"))?;
    caps::set(None, CapSet::Permitted, &to_caps(c.permitted())).map_err(cap_err("permitted"))?;
    caps::clear(None, CapSet::Ambient).map_err(cap_err("ambient"))?;
    for cap in to_caps(c.ambient()) {
        // Like runc: an ambient capability the kernel refuses is skipped.
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}

pub fn set_no_new_privs(process: &Process) -> Result<(), ProcessError> {
    if process.no_new_privileges().unwrap_or(false) {
        crate::sys::set_no_new_privs().map_err(|source| ProcessError::NoNewPrivs { source })?;
    }
    Ok(())
}

/// chdir into process.cwd, then check that it really lies inside the
/// container's root: a cwd through an inherited host descriptor
/// (/proc/self/fd/N) would otherwise hand the host to the container
/// (the CVE-2024-21626 class). getcwd fails for a directory outside our root.
pub fn change_dir(process: &Process) -> Result<(), ProcessError> {
    let err = |source| ProcessError::Cwd { path: process.cwd().clone(), source };
    std::env::set_current_dir(process.cwd()).map_err(err)?;
    match std::env::current_dir() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(_) | Err(_) => Err(err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "outside the container"))),
    }
}

/// linux.personality: the execution domain (LINUX or LINUX32).
pub fn apply_personality(spec: &oci_spec::runtime::Spec) -> Result<(), ProcessError> {
    use oci_spec::runtime::LinuxPersonalityDomain as D;
    let Some(p) = spec.linux().as_ref().and_then(|l| l.personality().as_ref()) else { return Ok(()) };
    let persona = match p.domain() {
        D::PerLinux => 0x0000,
        D::PerLinux32 => 0x0008,
    };
    crate::sys::set_personality(persona).map_err(|source| ProcessError::Personality { source })
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Finds the program like execvp would, with the container's PATH, so a
/// missing binary is reported by `create` and not as a silent exit later.
pub fn find_program(process: &Process) -> Result<PathBuf, ProcessError> {
    let args = process.args().clone().unwrap_or_default();
    let program = args.first().cloned().unwrap_or_default();
    if program.contains('/') {
        return if is_executable(Path::new(&program)) {
            Ok(PathBuf::from(program))
        } else {
            Err(ProcessError::Exec { program, source: std::io::Error::from(std::io::ErrorKind::NotFound) })
        };
    }
    let env = process.env().clone().unwrap_or_default();
    let path = env_value(&env, "PATH").unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(&program))
        .find(|p| is_executable(p))
        .ok_or(ProcessError::NotFound { program })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn cstrings(items: &[String]) -> Vec<CString> {
    items.iter().filter_map(|s| CString::new(s.as_bytes()).ok()).collect()
}

/// $HOME when the config sets none: the user's home in the container's
/// /etc/passwd (we are inside the rootfs by now), as runc does, else "/".
/// The file is the container's: only a regular one is read (a FIFO there must
/// not hang the process), and at most 1 MiB of it.
fn default_home(uid: u32) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut passwd = String::new();
    if let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/etc/passwd") {
        if f.metadata().is_ok_and(|m| m.is_file()) {
            let _ = f.take(1 << 20).read_to_string(&mut passwd);
        }
    }
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into())
}

/// execve of the container's program; returns only on failure.
pub fn exec(process: &Process, program: &Path) -> ProcessError {
    let args = cstrings(&process.args().clone().unwrap_or_default());
    let mut env = process.env().clone().unwrap_or_default();
    if env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", default_home(process.user().uid())));
    }
    let env = cstrings(&env);
    let name = program.display().to_string();
    let Ok(path) = CString::new(name.as_bytes()) else {
        return ProcessError::Exec { program: name, source: std::io::Error::from(std::io::ErrorKind::InvalidInput) };
    };
    match nix::unistd::execve(&path, &args, &env) {
        Err(e) => ProcessError::Exec { program: name, source: e.into() },
        Ok(never) => match never {},
    }
}
