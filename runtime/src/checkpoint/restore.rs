//! `restore`: a new container (state, cgroup with the config's limits) whose processes CRIU
//! brings back from a checkpoint.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::criu::{self, LazyPages, RestorePlan};
use super::{external_mounts, CheckpointError, CheckpointInfo, CriuCommon, Stdio};
use crate::cgroups::Cgroup;
use crate::container::{connect_console, prepare_cgroup, write_pid_file, ConsoleTarget, ContainerError, Runtime};
use crate::failpoint::failpoint;
use crate::spec::{Bundle, SpecError};
use crate::state;

pub struct RestoreOptions {
    pub id: String,
    pub image_path: PathBuf,
    pub work_path: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub console: Option<ConsoleTarget>,
    pub no_pivot: bool,
    /// The checkpoint comes from another host, where what the init's stdio was connected to
    /// stayed: pipes, sockets and devices become /dev/null, and an outside regular file a new
    /// file of its size (CRIU checks it) in the container's state directory, where output
    /// goes on.
    pub moved: bool,
    /// Its processes stay stopped (SIGSTOP) after the restore, until someone sends SIGCONT.
    pub leave_stopped: bool,
    /// Post-copy from the images: CRIU restores the tree without its memory, which a
    /// `criu lazy-pages` daemon then fills through userfaultfd (see [`Restored::lazy_pages`]).
    /// Not where the tasks cannot open a userfaultfd (see [`Restored::not_lazy`]).
    pub lazy_pages: bool,
    /// The images go after the restore (a migration's spool): CRIU frees each page of them
    /// once it is restored (`--auto-dedup`), so the memory is needed once, not twice.
    pub consume_images: bool,
    pub common: CriuCommon,
}

/// A restored container's init.
pub struct Restored {
    pub pid: i32,
    /// Whether it has a terminal, whose new master went to the console socket.
    pub terminal: bool,
    /// With [`RestoreOptions::lazy_pages`]: the daemon still filling its memory from the
    /// images, which must stay until it is finished (dropping it waits for it).
    pub lazy_pages: Option<LazyPages>,
    /// Why a restore asked to be lazy restored the memory whole instead.
    pub not_lazy: Option<&'static str>,
}

/// Why the container's tasks could not open a userfaultfd, if so: in a user namespace of its
/// own they lack CAP_SYS_PTRACE over the host's, which userfaultfd(2) wants unless the host
/// allows it to all (vm.unprivileged_userfaultfd, off by default for its attack surface).
fn no_userfaultfd(spec: &oci_spec::runtime::Spec) -> Option<&'static str> {
    let open_to_all = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").is_ok_and(|v| v.trim() == "1");
    (userns_root(spec).is_some() && !open_to_all)
        .then_some("its user namespace cannot open a userfaultfd here (vm.unprivileged_userfaultfd is 0)")
}

/// The file criu writes the restored init's pid to, in the container's state dir.
const CRIU_PID_FILE: &str = "criu-restore.pid";

impl Runtime {
    /// Restores the checkpoint in `opts.image_path` as container `opts.id` of `bundle`, which
    /// must hold the same rootfs. The container is running when this returns.
    pub fn restore(&self, opts: &RestoreOptions, bundle: Bundle) -> Result<Restored, ContainerError> {
        crate::spec::validate_id(&opts.id)?;
        opts.common.validate()?;
        let info = CheckpointInfo::read(&opts.image_path)?;
        if info.has_terminal() && opts.console.is_none() {
            return Err(ContainerError::NoConsoleSocket { id: opts.id.clone() });
        }
        if crate::memory_merge::requested(&bundle.spec)? {
            crate::memory_merge::warn_not_restored(&opts.id);
        }
        let (lock, mut guard, mut st) = self.register(&opts.id, &bundle)?;
        let cgroup = st.cgroup.clone().expect("set by register");
        guard.cgroup = Some(cgroup.clone());
        prepare_cgroup(&cgroup, &bundle.spec)?;
        failpoint("restore.cgroup-made");
        crate::rootfs::create_mount_targets(&bundle.rootfs, &bundle.dir, &bundle.spec)?;
        // Kept open until criu has run: the fds it inherits.
        let stand_in_dir = opts.moved.then(|| self.dir(&opts.id));
        let mut inherited =
            inherit_fds(&info, opts.console.as_ref(), stand_in_dir.as_deref(), userns_root(&bundle.spec))?;
        // Where criu itself runs, when the images hold no network namespace.
        let criu_netns = network_namespace(&info, &bundle.spec, &mut inherited)?;
        let dir = self.dir(&opts.id);
        let pid_path = dir.join(CRIU_PID_FILE);
        let work = opts.work_path.as_deref().unwrap_or(&opts.image_path);
        let skeletons = super::skeleton::make(&info.skeleton_tmpfs, work)?;
        let not_lazy = opts.lazy_pages.then(|| no_userfaultfd(&bundle.spec)).flatten();
        let plan = RestorePlan {
            images: &opts.image_path,
            work,
            root: &bundle.rootfs,
            pid_file: &pid_path,
            binds: external_mounts(&bundle.spec)
                .into_iter()
                .chain(cgroup_binds(&info, &cgroup))
                .chain(info.device_binds.iter().map(|d| (d.destination.clone(), d.source.clone())))
                .chain(inherited.console.clone().map(|slave| (PathBuf::from(super::CONSOLE), slave)))
                .chain(skeletons.binds(&info.skeleton_tmpfs))
                .collect(),
            inherit: inherited.pairs.clone(),
            cgroup_roots: cgroup.hierarchy_paths()?,
            no_pivot: opts.no_pivot,
            leave_stopped: opts.leave_stopped,
            lazy_pages: opts.lazy_pages && not_lazy.is_none(),
            auto_dedup: opts.consume_images && !(opts.lazy_pages && not_lazy.is_none()),
        };
        let args = criu::restore_args(&plan, &opts.common);
        let (pre, _overlay) = criu_mount_ns(&bundle, skeletons.targets(), criu_netns.as_ref().map(|f| f.as_raw_fd()))?;
        let _lent = LentImages::to_root_of(plan.images, &bundle.spec)?;
        let _lent_work = if plan.work == plan.images { None } else { LentImages::to_root_of(plan.work, &bundle.spec)? };
        let criu = criu::binary(opts.common.criu.as_deref())?;
        let lazy = plan.lazy_pages.then(|| LazyPages::start(&criu, plan.images, plan.work)).transpose()?;
        failpoint("restore.before-criu");
        let ran = criu::run(&criu, &args, plan.work.join("restore.log"), "restore", Some(pre));
        if bundle.overlay.is_some() {
            crate::rootfs::overlay::remove_stand_ins(&bundle.rootfs);
        }
        if let Err(e) = ran {
            if let Some(daemon) = lazy {
                daemon.abort();
            }
            return Err(e.into());
        }
        failpoint("restore.after-criu");
        let pid = read_pid(&pid_path)?;
        let _ = std::fs::remove_file(&pid_path);
        st.pid = pid;
        st.pid_start_time = crate::sys::process_start_time(pid)
            .map_err(|source| ContainerError::Io { path: format!("/proc/{pid}").into(), source })?;
        state::write_state(&dir, &st)?;
        failpoint("restore.state-written");
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        guard.armed = false;
        drop(lock);
        Ok(Restored { pid, terminal: info.has_terminal(), lazy_pages: lazy, not_lazy })
    }
}

/// The restored container's network namespace: the one its config joins, or a new one with
/// lo up (for a checkpoint whose namespace held nothing more), given to criu as the external
/// it was dumped as, or returned for criu to run in (`criu_in_netns`).
fn network_namespace(
    info: &CheckpointInfo,
    spec: &oci_spec::runtime::Spec,
    inherited: &mut Inherited,
) -> Result<Option<OwnedFd>, ContainerError> {
    if let Some(path) = super::joined_netns(spec) {
        let netns = std::fs::File::open(&path).map_err(|source| ContainerError::Io { path: path.clone(), source });
        inherited.add(inheritable(netns?, &path)?, super::criu::EXTERNAL_NETNS);
        return Ok(None);
    }
    if !info.fresh_netns {
        return Ok(None);
    }
    let path = Path::new("(new network namespace)");
    let netns =
        crate::sys::new_netns_with_lo_up().map_err(|source| ContainerError::Io { path: path.to_path_buf(), source })?;
    if info.criu_in_netns {
        return Ok(Some(netns));
    }
    inherited.add(inheritable(netns.into(), path)?, super::criu::EXTERNAL_NETNS);
    Ok(None)
}

/// What criu's process does before it runs: into `netns` if given; in a mount namespace of
/// its own (which goes away with it; the container keeps its own references), the root made
/// a mount point, as criu needs (a bind of itself, or the bundle's overlay, made here while
/// privileged), and the skeleton tmpfs mounts attached at their points. The overlay's mount must stay open until
/// criu has run.
fn criu_mount_ns(
    bundle: &Bundle,
    skeletons: Vec<(i32, CString)>,
    netns: Option<RawFd>,
) -> Result<(criu::PreExec, Option<OwnedFd>), ContainerError> {
    let root = CString::new(bundle.rootfs.as_os_str().as_bytes())
        .map_err(|_| CheckpointError::BadImage { path: bundle.rootfs.clone(), reason: "NUL in path".into() })?;
    let overlay = bundle
        .overlay
        .as_ref()
        .map(|o| o.detached_mount(crate::spec::IdMaps::of_spec(&bundle.spec).as_ref()))
        .transpose()
        .map_err(SpecError::from)?;
    let overlay_fd = overlay.as_ref().map(|m| m.as_raw_fd());
    let pre: criu::PreExec = Box::new(move || {
        if let Some(fd) = netns {
            crate::sys::join_netns(fd)?;
        }
        match overlay_fd {
            Some(fd) => crate::sys::attach_in_new_mount_ns(fd, &root)?,
            None => crate::sys::bind_self_in_new_mount_ns(&root)?,
        }
        super::skeleton::attach_all(&skeletons)
    });
    Ok((pre, overlay))
}

/// The images dir (and work dir) opened to the container's root group for the restore. In a
/// new user namespace CRIU's restored tasks open image files by name in them, first as host
/// root with no ids mapped yet (the owner), then as the container's root (its group may
/// enter, not write); the dir's group and mode are put back when the restore is over.
struct LentImages {
    dir: PathBuf,
    gid: u32,
    mode: u32,
}

impl LentImages {
    fn to_root_of(dir: &Path, spec: &oci_spec::runtime::Spec) -> Result<Option<LentImages>, ContainerError> {
        let Some((_, gid)) = userns_root(spec) else { return Ok(None) };
        let io = |source| ContainerError::Io { path: dir.to_path_buf(), source };
        let meta = std::fs::metadata(dir).map_err(io)?;
        let lent = LentImages { dir: dir.to_path_buf(), gid: meta.gid(), mode: meta.mode() & 0o7777 };
        std::os::unix::fs::chown(dir, None, Some(gid)).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(lent.mode | 0o050)).map_err(io)?;
        Ok(Some(lent))
    }
}

impl Drop for LentImages {
    fn drop(&mut self) {
        let back = std::os::unix::fs::chown(&self.dir, None, Some(self.gid))
            .and_then(|()| std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(self.mode)));
        if let Err(e) = back {
            log::warn!("{}: group and mode not put back after the restore: {e}", self.dir.display());
        }
    }
}

/// The host uid and gid of the root of the container's new user namespace, if it has one.
fn userns_root(spec: &oci_spec::runtime::Spec) -> Option<(u32, u32)> {
    crate::spec::IdMaps::of_spec(spec)?;
    let linux = spec.linux().as_ref()?;
    let root = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter().flatten().find(|m| m.container_id() == 0).map(|m| m.host_id())
    };
    Some((root(linux.uid_mappings())?, root(linux.gid_mappings())?))
}

/// What the restored process gets in place of the checkpoint's stdio.
struct Inherited {
    /// `--inherit-fd` pairs: our fd, the criu key of what it replaces.
    pairs: Vec<(i32, String)>,
    /// The fds the pairs name that must stay open until criu has run.
    fds: Vec<OwnedFd>,
    /// The new pty slave, to bind on /dev/console.
    console: Option<PathBuf>,
}

/// What replaces the checkpoint's stdio. Pipes, sockets and outside files become our own fd
/// of the same number, or for a moved container stand-ins (see [`RestoreOptions::moved`]) made
/// in `stand_ins`; a terminal becomes the slave of a new pty whose master goes to the console
/// socket. CRIU reopens a stand-in, and sets a terminal's owner, as the container's root:
/// with a user namespace both are given to `owner`, its root's host ids, first.
fn inherit_fds(
    info: &CheckpointInfo,
    console: Option<&ConsoleTarget>,
    stand_ins: Option<&Path>,
    owner: Option<(u32, u32)>,
) -> Result<Inherited, ContainerError> {
    let give = |fd: &OwnedFd, path: &Path| match owner {
        Some((uid, gid)) => std::os::unix::fs::fchown(fd, Some(uid), Some(gid))
            .map_err(|source| ContainerError::Io { path: path.to_path_buf(), source }),
        None => Ok(()),
    };
    let mut got = Inherited { pairs: Vec::new(), fds: Vec::new(), console: None };
    for (fd, stdio) in (0..).zip(&info.stdio) {
        let seen = got.pairs.iter().any(|(_, k)| Some(k) == stdio.as_ref().map(Stdio::key));
        match (stdio, stand_ins) {
            (Some(Stdio::Inherit(_) | Stdio::File(..)), Some(_)) if seen => {}
            // A device (/dev/null, say) is /dev/null here.
            (Some(Stdio::Inherit(key) | Stdio::File(key, None)), Some(_)) => {
                got.add(open_inheritable(Path::new("/dev/null"), None)?, key);
            }
            (Some(Stdio::File(key, Some(size))), Some(dir)) => {
                let path = dir.join(format!("stdio-{fd}"));
                let file = open_inheritable(&path, Some(*size))?;
                give(&file, &path)?;
                got.add(file, key);
            }
            (Some(Stdio::Inherit(key) | Stdio::File(key, _)), None) => got.pairs.push((fd, key.clone())),
            (Some(Stdio::Tty(key)), _) if !seen => {
                let socket = connect_console(console)?.ok_or(ContainerError::NoConsoleSocket { id: String::new() })?;
                let (slave, path) = crate::console::create(socket.as_raw_fd(), None)?;
                give(&slave, &path)?;
                got.console = Some(path);
                crate::sys::clear_cloexec(slave.as_raw_fd())
                    .map_err(|source| ContainerError::Io { path: "console".into(), source })?;
                got.add(slave, key);
            }
            _ => {}
        }
    }
    Ok(got)
}

impl Inherited {
    /// One more fd for criu to hand over under `key`, kept open until it has run.
    fn add(&mut self, fd: OwnedFd, key: &str) {
        self.pairs.push((fd.as_raw_fd(), key.into()));
        self.fds.push(fd);
    }
}

/// `path` opened read-write across criu's exec; with a size, a new file of that size.
fn open_inheritable(path: &Path, size: Option<u64>) -> Result<OwnedFd, ContainerError> {
    let io = |source| ContainerError::Io { path: path.into(), source };
    let file = std::fs::OpenOptions::new().read(true).write(true).create(size.is_some()).open(path).map_err(io)?;
    if let Some(size) = size {
        file.set_len(size).map_err(io)?;
    }
    inheritable(file, path)
}

/// An open file made to survive criu's exec (no close-on-exec).
fn inheritable(file: std::fs::File, path: &Path) -> Result<OwnedFd, ContainerError> {
    let fd = OwnedFd::from(file);
    crate::sys::clear_cloexec(fd.as_raw_fd()).map_err(|source| ContainerError::Io { path: path.into(), source })?;
    Ok(fd)
}

/// Each cgroup mount declared external at the dump, from the new cgroup's directory.
fn cgroup_binds(info: &CheckpointInfo, cgroup: &Cgroup) -> Vec<(PathBuf, PathBuf)> {
    info.cgroup_mounts
        .iter()
        .filter_map(|m| {
            let source = match (cgroup, m.controllers.is_empty()) {
                (_, true) => cgroup.v2_dir()?.to_path_buf(),
                (Cgroup::V1 { paths, .. }, false) => paths.get(&m.controllers)?.clone(),
                (Cgroup::V2 { .. }, false) => return None,
            };
            Some((m.destination.clone(), source))
        })
        .collect()
}

fn read_pid(path: &Path) -> Result<i32, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io { path: path.into(), source })?;
    text.trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| CheckpointError::BadPid { path: path.into(), value: text.trim().to_string() })
}
