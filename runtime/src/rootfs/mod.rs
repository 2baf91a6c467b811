//! The container's filesystem view: mounts from config.json, devices,
//! pivot_root, then masked and read-only paths. Runs in the init, inside
//! the container's new mount namespace.
//!
//! Every path inside the rootfs is opened with openat2(RESOLVE_IN_ROOT) and
//! mounted onto through /proc/self/fd, so a symlink planted in an image
//! resolves inside the rootfs and can never send a mount to the host.

mod cgroupfs;
mod devices;
pub use devices::DEFAULT_DEVICES;
pub mod options;
pub mod overlay;

use crate::cgroups::Cgroup;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount {what} on {dest}: {source}")]
    Mount { what: String, dest: PathBuf, source: nix::Error },
    #[error("{path}: {source}")]
    Path { path: PathBuf, source: std::io::Error },
    #[error("device {path}: {source}")]
    Device { path: PathBuf, source: nix::Error },
    #[error("pivot_root into {rootfs}: {source}")]
    Pivot { rootfs: PathBuf, source: std::io::Error },
    #[error("sysctl {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
    #[error("mount {dest}: unsupported mount type {typ}")]
    UnsupportedType { dest: PathBuf, typ: String },
}

fn path_err(path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Path { path: path.to_path_buf(), source }
}

/// What the mount set-up needs to know besides config.json.
pub struct RootfsContext<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    /// In a new user namespace devices cannot be made with mknod, only bound.
    pub in_user_ns: bool,
    pub cgroup: Option<&'a Cgroup>,
    /// "/" is recursively slave already (the runtime made this mount
    /// namespace that way before the init ran).
    pub root_is_rslave: bool,
    /// A detached overlay mount (`overlay`) that becomes the rootfs mount.
    pub rootfs_mount: Option<std::os::fd::RawFd>,
}

/// "/proc/self/fd/N": the mount target for an fd opened inside the rootfs.
pub(crate) fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Opens (creating it if needed, as a directory or an empty file) the path
/// `dest` inside the rootfs, never leaving it.
pub(crate) fn open_target(root: &File, dest: &Path, as_file: bool) -> Result<OwnedFd, RootfsError> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    match crate::sys::open_in_root(root.as_raw_fd(), rel, libc::O_PATH, 0) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(RootfsError::Path { path: dest.into(), source: e }),
    }
    // Something is missing: work out where the path really leads inside the
    // rootfs (through the image's symlinks) and create that.
    let rel = resolve_in_root(root, rel)?;
    if let Some(parent) = rel.parent() {
        mkdir_all(root, parent)?;
    }
    if as_file {
        crate::sys::open_in_root(root.as_raw_fd(), &rel, libc::O_CREAT | libc::O_WRONLY, 0o644)
            .map_err(path_err(dest))?;
    } else {
        mkdir_in_root(root, &rel)?;
    }
    crate::sys::open_in_root(root.as_raw_fd(), &rel, libc::O_PATH, 0).map_err(path_err(dest))
}

/// The symlink-free path, relative to the rootfs, that `rel` names when
/// resolved with the rootfs as `/`; a missing tail is kept as written.
pub(crate) fn resolve_in_root(root: &File, rel: &Path) -> Result<PathBuf, RootfsError> {
    use std::path::Component;
    let mut pending: std::collections::VecDeque<PathBuf> =
        rel.components().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut resolved = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.components().next() {
            Some(Component::Normal(name)) => {
                let dir = match crate::sys::open_in_root(
                    root.as_raw_fd(),
                    &Path::new(".").join(&resolved),
                    libc::O_PATH,
                    0,
                ) {
                    Ok(d) => d,
                    // Below a missing directory nothing can be a symlink.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        resolved.push(name);
                        continue;
                    }
                    Err(e) => return Err(RootfsError::Path { path: rel.into(), source: e }),
                };
                match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
                    Ok(target) => {
                        hops += 1;
                        if hops > 40 {
                            return Err(RootfsError::Path { path: rel.into(), source: nix::Error::ELOOP.into() });
                        }
                        if Path::new(&target).is_absolute() {
                            resolved.clear();
                        }
                        for c in Path::new(&target).components().rev() {
                            pending.push_front(PathBuf::from(c.as_os_str()));
                        }
                    }
                    Err(_) => resolved.push(name),
                }
            }
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            _ => {}
        }
    }
    Ok(resolved)
}

fn mkdir_in_root(root: &File, rel: &Path) -> Result<(), RootfsError> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let name = rel.file_name().ok_or_else(|| RootfsError::Path {
        path: rel.into(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let pfd =
        crate::sys::open_in_root(root.as_raw_fd(), &Path::new(".").join(parent), libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(path_err(rel))?;
    match nix::sys::stat::mkdirat(Some(pfd.as_raw_fd()), name, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(RootfsError::Path { path: rel.into(), source: e.into() }),
    }
}

/// mkdir -p inside the rootfs.
pub(crate) fn mkdir_all(root: &File, rel: &Path) -> Result<(), RootfsError> {
    let mut prefix = PathBuf::new();
    for comp in rel.components() {
        prefix.push(comp);
        let exists = crate::sys::open_in_root(root.as_raw_fd(), &prefix, libc::O_PATH, 0).is_ok();
        if !exists {
            mkdir_in_root(root, &prefix)?;
        }
    }
    Ok(())
}

pub(crate) fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    dest: &Path,
) -> Result<(), RootfsError> {
    mount(source, target, fstype, flags, data).map_err(|e| RootfsError::Mount {
        what: fstype.map(str::to_string).unwrap_or_else(|| format!("{}", source.unwrap_or(Path::new("")).display())),
        dest: dest.into(),
        source: e,
    })
}

/// Everything before pivot_root: propagation, the rootfs bind, all mounts,
/// devices and /dev symlinks.
pub fn prepare(ctx: &RootfsContext) -> Result<(), RootfsError> {
    let linux = ctx.spec.linux().as_ref();
    let prop = match linux.and_then(|l| l.rootfs_propagation().as_deref()) {
        Some("shared") => MsFlags::MS_SHARED,
        Some("private") => MsFlags::MS_PRIVATE,
        Some("unbindable") => MsFlags::MS_UNBINDABLE,
        Some("rshared") => MsFlags::MS_SHARED | MsFlags::MS_REC,
        Some("rprivate") => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        Some("runbindable") => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        Some("slave") => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    // Nothing we mount may propagate back to the host.
    if !(ctx.root_is_rslave && prop == MsFlags::MS_SLAVE | MsFlags::MS_REC) {
        do_mount(None, Path::new("/"), None, prop, None, Path::new("/"))?;
    }
    // pivot_root needs the new root to be a mount point.
    match ctx.rootfs_mount {
        Some(fd) => attach_rootfs(fd, ctx.rootfs)?,
        None => do_mount(Some(ctx.rootfs), ctx.rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REC, None, ctx.rootfs)?,
    }
    let root = File::open(ctx.rootfs).map_err(path_err(ctx.rootfs))?;
    let mut dev_bound = false;
    for m in ctx.spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev") && options::parse(m.options().as_deref().unwrap_or(&[])).is_bind() {
            dev_bound = true;
        }
        mount_one(ctx, &root, m)?;
    }
    if !dev_bound {
        devices::create_all(ctx, &root)?;
    }
    // Like runc: a missing working directory is made (even on a read-only root).
    if let Some(p) = ctx.spec.process() {
        open_target(&root, p.cwd(), false)?;
    }
    Ok(())
}

/// Attaches the runtime's detached overlay at `rootfs` (in this, the container's, namespace).
fn attach_rootfs(fd: std::os::fd::RawFd, rootfs: &Path) -> Result<(), RootfsError> {
    use std::os::fd::FromRawFd;
    // SAFETY: the runtime handed us this descriptor for this one use; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = std::ffi::CString::new(rootfs.as_os_str().as_encoded_bytes())
        .map_err(|_| path_err(rootfs)(std::io::ErrorKind::InvalidInput.into()))?;
    crate::sys::attach_mount(fd.as_raw_fd(), &target).map_err(path_err(rootfs))
}

fn mount_one(ctx: &RootfsContext, root: &File, m: &Mount) -> Result<(), RootfsError> {
    let opts = options::parse(m.options().as_deref().unwrap_or(&[]));
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = m.destination();
    if typ == "cgroup" || typ == "cgroup2" {
        return cgroupfs::mount(root, dest, &opts, ctx.cgroup);
    }
    if opts.is_bind() {
        return bind_mount(ctx, root, m, &opts);
    }
    if typ.is_empty() || typ == "none" {
        return Err(RootfsError::UnsupportedType { dest: dest.into(), typ: typ.into() });
    }
    let target = open_target(root, dest, false)?;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    let flags = opts.flags & !MsFlags::MS_REMOUNT;
    let data = opts.data_string();
    match do_mount(Some(&source), &fd_path(&target), Some(typ), flags, data.as_deref(), dest) {
        // sysfs cannot be mounted in a user namespace without its own netns: use the host's, read-only.
        Err(RootfsError::Mount { source: nix::Error::EPERM, .. }) if typ == "sysfs" && ctx.in_user_ns => {
            let f = MsFlags::MS_BIND | MsFlags::MS_REC;
            do_mount(Some(Path::new("/sys")), &fd_path(&target), None, f, None, dest)?;
        }
        other => other?,
    }
    // Re-open: the old fd names the directory under the new mount.
    let target = open_target(root, dest, false)?;
    finish_mount(&target, dest, &opts)
}

fn bind_mount(ctx: &RootfsContext, root: &File, m: &Mount, opts: &options::MountOptions) -> Result<(), RootfsError> {
    let dest = m.destination();
    let source = m.source().clone().unwrap_or_default();
    let source = if source.is_absolute() { source } else { ctx.bundle.join(source) };
    let meta = std::fs::metadata(&source).map_err(path_err(&source))?;
    let target = open_target(root, dest, !meta.is_dir())?;
    let base = opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
    do_mount(Some(&source), &fd_path(&target), None, base, None, dest)?;
    // A bind ignores flags: they take a remount of the new mount.
    let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        let target = open_target(root, dest, !meta.is_dir())?;
        remount_bind(&fd_path(&target), extra, dest)?;
    }
    let target = open_target(root, dest, !meta.is_dir())?;
    finish_mount(&target, dest, opts)
}

/// Whether `m` is a bind mount, as the runtime mounts it (its options say bind or rbind).
pub fn is_bind(m: &Mount) -> bool {
    options::parse(m.options().as_deref().unwrap_or(&[])).is_bind()
}

/// Makes sure every mount point of `spec` exists in the rootfs, as create would make it (a
/// file for a bind of a file), without mounting anything: a restore into a fresh copy of the
/// rootfs needs them before CRIU mounts there. Points under /proc, /sys and /dev lie in file
/// systems CRIU brings back itself.
pub fn create_mount_targets(rootfs: &Path, bundle: &Path, spec: &Spec) -> Result<(), RootfsError> {
    let root = File::open(rootfs).map_err(path_err(rootfs))?;
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination();
        if ["/proc", "/sys", "/dev"].iter().any(|special| dest.starts_with(special)) {
            continue;
        }
        let as_file = is_bind(m)
            && m.source().as_ref().is_some_and(|source| {
                let source = if source.is_absolute() { source.clone() } else { bundle.join(source) };
                std::fs::metadata(source).is_ok_and(|meta| !meta.is_dir())
            });
        open_target(&root, dest, as_file)?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel locked
/// on it (a user namespace may not clear nosuid/nodev/noexec it inherited).
pub(crate) fn remount_bind(target: &Path, flags: MsFlags, dest: &Path) -> Result<(), RootfsError> {
    let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    match do_mount(None, target, None, f, None, dest) {
        Err(RootfsError::Mount { source: nix::Error::EPERM, .. }) => {
            let st = nix::sys::statvfs::statvfs(target).map_err(|e| RootfsError::Mount {
                what: "statvfs".into(),
                dest: dest.into(),
                source: e,
            })?;
            do_mount(None, target, None, f | locked_flags(st.flags()), None, dest)
        }
        other => other,
    }
}

fn locked_flags(st: nix::sys::statvfs::FsFlags) -> MsFlags {
    use nix::sys::statvfs::FsFlags as F;
    let pairs = [
        (F::ST_RDONLY, MsFlags::MS_RDONLY),
        (F::ST_NOSUID, MsFlags::MS_NOSUID),
        (F::ST_NODEV, MsFlags::MS_NODEV),
        (F::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (F::ST_NOATIME, MsFlags::MS_NOATIME),
        (F::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (F::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    pairs.iter().filter(|(s, _)| st.contains(*s)).fold(MsFlags::empty(), |acc, (_, m)| acc | *m)
}

/// Propagation and recursive attributes, after the mount exists.
fn finish_mount(target: &OwnedFd, dest: &Path, opts: &options::MountOptions) -> Result<(), RootfsError> {
    for p in &opts.propagation {
        do_mount(None, &fd_path(target), None, *p, None, dest)?;
    }
    if opts.recursive_set != 0 || opts.recursive_clear != 0 {
        crate::sys::mount_setattr_recursive(target.as_raw_fd(), opts.recursive_set, opts.recursive_clear)
            .map_err(path_err(dest))?;
    }
    Ok(())
}

/// Makes the rootfs `/`, with pivot_root, or with MS_MOVE + chroot for `--no-pivot`.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), RootfsError> {
    let err = |source: std::io::Error| RootfsError::Pivot { rootfs: rootfs.into(), source };
    let nix_err = |e: nix::Error| RootfsError::Pivot { rootfs: rootfs.into(), source: e.into() };
    std::env::set_current_dir(rootfs).map_err(err)?;
    if no_pivot {
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(nix_err)?;
        nix::unistd::chroot(".").map_err(nix_err)?;
    } else {
        let old_root = File::open("/").map_err(err)?;
        crate::sys::pivot_root_dot().map_err(err)?;
        // The old root now sits on top of "."; detach it without letting the
        // unmount propagate to the host.
        nix::unistd::fchdir(old_root.as_raw_fd()).map_err(nix_err)?;
        mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>).map_err(nix_err)?;
        umount2(".", MntFlags::MNT_DETACH).map_err(nix_err)?;
    }
    std::env::set_current_dir("/").map_err(err)
}

/// After pivot_root: sysctls, masked and read-only paths, read-only root.
pub fn finish(spec: &Spec) -> Result<(), RootfsError> {
    let Some(linux) = spec.linux() else {
        return readonly_root(spec);
    };
    for (key, value) in linux.sysctl().iter().flatten() {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|source| RootfsError::Sysctl { key: key.clone(), source })?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        readonly_path(Path::new(p))?;
    }
    for p in linux.masked_paths().iter().flatten() {
        mask_path(Path::new(p))?;
    }
    readonly_root(spec)
}

fn readonly_root(spec: &Spec) -> Result<(), RootfsError> {
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))?;
    }
    Ok(())
}

fn readonly_path(path: &Path) -> Result<(), RootfsError> {
    let f = MsFlags::MS_BIND | MsFlags::MS_REC;
    match mount(Some(path), path, None::<&str>, f, None::<&str>) {
        Err(nix::Error::ENOENT) => return Ok(()),
        other => other.map_err(|e| RootfsError::Mount { what: "bind".into(), dest: path.into(), source: e })?,
    }
    remount_bind(path, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, path)
}

fn mask_path(path: &Path) -> Result<(), RootfsError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(RootfsError::Path { path: path.into(), source: e }),
    };
    if meta.is_dir() {
        do_mount(Some(Path::new("tmpfs")), path, Some("tmpfs"), MsFlags::MS_RDONLY, None, path)
    } else {
        do_mount(Some(Path::new("/dev/null")), path, None, MsFlags::MS_BIND, None, path)
    }
}

/// Binds the terminal's pty over /dev/console, as a container with a terminal expects.
pub fn bind_console(pty_path: &Path) -> Result<(), RootfsError> {
    let root = File::open("/").map_err(path_err(Path::new("/")))?;
    let target = open_target(&root, Path::new("/dev/console"), true)?;
    do_mount(Some(pty_path), &fd_path(&target), None, MsFlags::MS_BIND, None, Path::new("/dev/console"))
}
