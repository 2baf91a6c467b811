//! Thin wrappers over the raw syscalls that nix does not cover.
//! Every `unsafe` block of the crate that talks to the kernel lives under here.

pub mod bpf;
pub mod netlink;
pub mod seccomp;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

fn cstr(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// openat2(2) with RESOLVE_IN_ROOT: `path` is resolved as if `root` were `/`,
/// so symlinks and `..` in a container image cannot lead out of it.
pub fn open_in_root(root: RawFd, path: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let p = if path.as_os_str().is_empty() { cstr(Path::new("."))? } else { cstr(path)? };
    // SAFETY: open_how is plain integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 { mode as u64 } else { 0 };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // A rename anywhere on the system during a `..` step makes the kernel
    // give up with EAGAIN (it cannot prove the walk stayed inside) and ask
    // for a retry; a few are enough unless someone keeps renaming on purpose.
    let mut retries = 16;
    let fd = loop {
        // SAFETY: `p` is a valid NUL-terminated string and `how` a fully initialised
        // open_how whose size we pass; the kernel only reads both.
        let r = check(unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                p.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        });
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && retries > 0 => retries -= 1,
            r => break r?,
        }
    };
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// struct mount_attr of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on the mount at `fd` itself (AT_EMPTY_PATH), with `flags` added.
fn mount_setattr(fd: RawFd, flags: libc::c_int, attr: &MountAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live, fully initialised mount_attr whose size we pass.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(|_| ())
}

/// mount_setattr(2) with AT_RECURSIVE on the mount at `fd`: the recursive
/// mount options (rro, rnosuid, ...) that plain mount(2) cannot express.
pub fn mount_setattr_recursive(fd: RawFd, set: u64, clear: u64) -> io::Result<()> {
    mount_setattr(fd, libc::AT_RECURSIVE, &MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 })
}

/// mount_setattr(2) on the mount at `fd` alone: MOUNT_ATTR_* flags set, the atime mode
/// among them (relatime when `set` has none).
pub fn mount_setattr_flags(fd: RawFd, set: u64) -> io::Result<()> {
    const MOUNT_ATTR_ATIME: u64 = 0x70;
    mount_setattr(fd, 0, &MountAttr { attr_set: set, attr_clr: MOUNT_ATTR_ATIME, propagation: 0, userns_fd: 0 })
}

/// close_range(first, ~0, CLOSE_RANGE_CLOEXEC): marks every descriptor from
/// `first` up close-on-exec, so nothing of the runtime leaks into the container.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range only changes descriptor flags of this process.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) }).map(|_| ())
}

/// Clears FD_CLOEXEC on `fd`, so it survives exec (stdio, --preserve-fds).
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory effects.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } as libc::c_long).map(|_| ())
}

/// Sets FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number has no memory effects.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } as libc::c_long).map(|_| ())
}

/// pivot_root(2); nix's wrapper wants paths, we pass "." twice for the
/// fchdir-based dance that needs no temporary directory.
pub fn pivot_root_dot() -> io::Result<()> {
    let dot = c".";
    // SAFETY: both arguments are valid NUL-terminated strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(|_| ())
}

/// A sealed anonymous copy of the file at `path` (used for our own binary):
/// the container can never write through it to the file on the host.
pub fn sealed_memfd_copy(path: &Path, name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    let src = std::fs::File::open(path)?;
    let len = src.metadata()?.len();
    // SAFETY: `name` is a valid C string; memfd_create returns a new fd or -1.
    let fd =
        check(
            unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | libc::MFD_EXEC) }
                as libc::c_long,
        )
        .or_else(|_| {
            // Kernels before 6.3 do not know MFD_EXEC.
            // SAFETY: as above.
            check(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) }
                as libc::c_long)
        })?;
    // SAFETY: memfd_create returned a descriptor nobody else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut copied: u64 = 0;
    while copied < len {
        // SAFETY: both descriptors are open; a null offset uses the file position.
        let n = check(unsafe {
            libc::sendfile(memfd.as_raw_fd(), src.as_raw_fd(), std::ptr::null_mut(), (len - copied) as usize)
        } as libc::c_long)?;
        if n == 0 {
            break;
        }
        copied += n as u64;
    }
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: F_ADD_SEALS on our memfd takes an int argument.
    check(unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)?;
    Ok(memfd)
}

/// In a new mount namespace of the calling (just forked) process, bind
/// `path` read-only over itself. Exec'ing it then gives a /proc/self/exe
/// that no container process can open for writing (EROFS), at the cost of
/// two mounts instead of a copy of the binary. Async-signal-safe: it runs
/// between fork and exec.
pub fn readonly_self_in_new_mount_ns(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings or nulls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
        // Slave: host mounts still reach us, ours never reach the host.
        let rec_slave = libc::MS_REC | libc::MS_SLAVE;
        check(
            libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), rec_slave, std::ptr::null()) as libc::c_long
        )?;
        check(libc::mount(path.as_ptr(), path.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null())
            as libc::c_long)?;
        let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        check(libc::mount(std::ptr::null(), path.as_ptr(), std::ptr::null(), ro, std::ptr::null()) as libc::c_long)?;
    }
    Ok(())
}

/// In a new mount namespace of the calling (just forked) process, with every mount private,
/// bind `path` over itself so that it is a mount point (what criu restore wants as its root).
/// Async-signal-safe: it runs between fork and exec.
pub fn bind_self_in_new_mount_ns(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings or nulls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
        let rec_private = libc::MS_REC | libc::MS_PRIVATE;
        check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), rec_private, std::ptr::null())
            as libc::c_long)?;
        let rec_bind = libc::MS_BIND | libc::MS_REC;
        check(libc::mount(path.as_ptr(), path.as_ptr(), std::ptr::null(), rec_bind, std::ptr::null()) as libc::c_long)?;
    }
    Ok(())
}

/// Attaches the detached mount `fd` at `target` in the caller's mount namespace.
/// Async-signal-safe (one syscall): it also runs between fork and exec.
pub fn attach_mount(fd: RawFd, target: &std::ffi::CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
    // SAFETY: move_mount(2) of a mount fd onto a NUL-terminated path; both stay valid.
    check(unsafe {
        libc::syscall(libc::SYS_move_mount, fd, c"".as_ptr(), libc::AT_FDCWD, target.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH)
    })
    .map(|_| ())
}

/// In a new mount namespace of the calling (just forked) process, with every mount private,
/// attaches the detached mount `fd` at `path` (the rootfs criu restores into).
/// Async-signal-safe: it runs between fork and exec.
pub fn attach_in_new_mount_ns(fd: RawFd, path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings or nulls.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS) as libc::c_long)?;
        let rec_private = libc::MS_REC | libc::MS_PRIVATE;
        check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), rec_private, std::ptr::null())
            as libc::c_long)?;
    }
    attach_mount(fd, path)
}

/// True if the memfd behind `fd` carries the write seal.
pub fn is_sealed(fd: RawFd) -> bool {
    // SAFETY: F_GET_SEALS reads the seals of an open descriptor.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_WRITE != 0
}

/// Sets the loopback interface of the caller's network namespace up (a new namespace has
/// `lo` down; runc and the programs people run expect 127.0.0.1 to work).
pub fn set_loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned right after.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as libc::c_long)?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which lives
    // across both calls; ifru_flags is the union member these requests use.
    unsafe {
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) as libc::c_long)?;
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) as libc::c_long)?;
    }
    Ok(())
}

/// A new network namespace with its loopback up, made on the calling thread, which goes
/// back to its own namespace before this returns.
pub fn new_netns_with_lo_up() -> io::Result<OwnedFd> {
    let own = std::fs::File::open("/proc/thread-self/ns/net")?;
    // SAFETY: unshare(2) with a constant flag; it moves only this thread.
    check(unsafe { libc::unshare(libc::CLONE_NEWNET) } as libc::c_long)?;
    let made = std::fs::File::open("/proc/thread-self/ns/net").and_then(|ns| set_loopback_up().map(|()| ns));
    // SAFETY: setns(2) back to the namespace this thread was in, held open above.
    let back = check(unsafe { libc::setns(own.as_raw_fd(), libc::CLONE_NEWNET) } as libc::c_long);
    back.map_err(|e| io::Error::other(format!("back to the own network namespace: {e}")))?;
    Ok(made?.into())
}

/// setns(2) into the network namespace `fd` refers to. Async-signal-safe.
pub fn join_netns(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) on an fd the caller holds open; it moves only the calling thread.
    check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants (the container's init
/// once its intermediate parent exits) are re-parented to us, so we can wait.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_DUMPABLE, 0): other processes of the container may not
/// ptrace us or open our /proc/PID files (exe, fds, mem) while we set it up.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_NO_NEW_PRIVS, 1).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_MEMORY_MERGE, 1): KSM may merge any anonymous page of this process, not
/// only madvise(MADV_MERGEABLE)'d ones. Linux 6.4+; the flag survives fork, and exec from 6.7.
pub fn set_memory_merge() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_MEMORY_MERGE, 1, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_KEEPCAPS, 1): keep permitted capabilities across setuid.
pub fn set_keep_caps() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// prctl(PR_SET_PDEATHSIG): the intermediate processes die with their parent.
pub fn set_parent_death_signal(sig: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) } as libc::c_long).map(|_| ())
}

/// setrlimit(2) via prlimit on ourselves.
pub fn set_rlimit(resource: i32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `lim` is a valid rlimit64; a null old-limit pointer is allowed.
    check(unsafe { libc::prlimit64(0, resource as _, &lim, std::ptr::null_mut()) } as libc::c_long).map(|_| ())
}

/// setgroups(2) directly: nix's version is fine, but this one also works when
/// the list is empty without allocating.
pub fn set_groups(gids: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live slice of gid_t.
    check(unsafe { libc::setgroups(gids.len(), gids.as_ptr()) } as libc::c_long).map(|_| ())
}

/// Raw setresuid/setresgid: they apply to the calling thread only, which is
/// what we want in the single-threaded init.
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain integer syscalls.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: plain integer syscalls.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(|_| ())
}

/// set_mempolicy(2) for the calling thread (and what it forks and execs).
/// `mode` may carry MPOL_F_* flags; `nodes` is a nodemask of 64-bit words.
pub fn set_mempolicy(mode: i32, nodes: &[u64]) -> io::Result<()> {
    let ptr = if nodes.is_empty() { std::ptr::null() } else { nodes.as_ptr() };
    // The kernel reads maxnode - 1 bits (an off-by-one kept for its ABI).
    let maxnode = nodes.len() as libc::c_ulong * 64 + 1;
    // SAFETY: `ptr` is null or points at `nodes`, which holds the
    // (maxnode - 1) bits the kernel reads; nothing is written.
    check(unsafe { libc::syscall(libc::SYS_set_mempolicy, mode, ptr, if ptr.is_null() { 0 } else { maxnode }) })
        .map(|_| ())
}

/// sched_setaffinity(2) of the calling thread: `cpus` is a cpu_set_t-style
/// mask of 64-bit words (the kernel treats missing high words as zero).
pub fn set_cpu_affinity(cpus: &[u64]) -> io::Result<()> {
    // SAFETY: the pointer and byte length describe the live slice `cpus`; the kernel only reads it.
    check(unsafe { libc::syscall(libc::SYS_sched_setaffinity, 0, std::mem::size_of_val(cpus), cpus.as_ptr()) })
        .map(|_| ())
}

/// umask(2).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL): a new anonymous session
/// keyring, so the container cannot read the host session's keys.
pub fn join_new_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: a null name asks for an anonymous keyring; no memory is passed.
    check(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, std::ptr::null::<libc::c_char>()) })
        .map(|_| ())
}

/// setdomainname(2) (the NIS domain name of the uts namespace).
pub fn set_domainname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live byte slice.
    check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) } as libc::c_long).map(|_| ())
}

/// personality(2) with a domain value.
pub fn set_personality(persona: u64) -> io::Result<()> {
    // SAFETY: integer argument only.
    check(unsafe { libc::personality(persona as libc::c_ulong) } as libc::c_long).map(|_| ())
}

/// Makes `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument; no memory is passed.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } as libc::c_long).map(|_| ())
}

/// A terminal's window size (rows, cols), if `fd` is a terminal.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sets a pty's window size.
pub fn set_window_size(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer we pass.
    check(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } as libc::c_long).map(|_| ())
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH): runs the sealed copy of our
/// binary. Only returns on error.
pub fn exec_fd(fd: RawFd, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: argv/envp are NULL-terminated arrays of valid C strings that
    // outlive the call; execveat only returns on failure.
    unsafe { libc::syscall(libc::SYS_execveat, fd, c"".as_ptr(), a.as_ptr(), e.as_ptr(), libc::AT_EMPTY_PATH) };
    io::Error::last_os_error()
}

/// fork(2). Only ever called from single-threaded processes (the container
/// init stages), so the child may allocate.
pub fn fork() -> io::Result<i32> {
    // SAFETY: the callers are single-threaded (documented at each call site),
    // so the child inherits a consistent heap and no held locks.
    let pid = unsafe { libc::fork() };
    check(pid as libc::c_long).map(|p| p as i32)
}

/// clone3(CLONE_INTO_CGROUP): fork straight into the cgroup2 directory open
/// at `cgroup_fd`; the kernel takes only the read side of its threadgroup
/// lock, where writing cgroup.procs would wait for an RCU grace period.
/// Same rules as [`fork`]: single-threaded callers only.
pub fn fork_into_cgroup(cgroup_fd: RawFd) -> io::Result<i32> {
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup_fd as u64,
    };
    // SAFETY: like fork(2) (no CLONE_VM, no new stack): the child continues
    // on a copy of our memory; callers are single-threaded.
    let pid =
        check(unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) })?;
    Ok(pid as i32)
}

/// USER_HZ, the unit of tick counters such as cpuacct.stat (100 where sysconf has no answer).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// Start time of a process in clock ticks since boot (field 22 of
/// /proc/PID/stat): together with the pid it names one process for good.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&stat).map(|(_, start)| start)
}

/// Process state letter and start time from the text of /proc/PID/stat.
pub fn parse_stat(stat: &str) -> io::Result<(char, u64)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat");
    // The command name may hold spaces and ')': fields start after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().and_then(|s| s.chars().next()).ok_or_else(bad)?;
    let start = fields.get(19).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((state, start))
}

/// pidfd_open(2): a descriptor that polls readable once `pid` has exited.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; no pointers.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// O_NONBLOCK on `fd`, so a drain loop never blocks on a pipe that a stray process holds open.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor with integer arguments only.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) } as libc::c_long)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags as libc::c_int | libc::O_NONBLOCK) } as libc::c_long)
        .map(|_| ())
}

/// A user namespace with the given `uid_map` and `gid_map` texts, held by the returned fd
/// alone: a child unshares it, the maps are written, the namespace opened, and the child
/// exits. What idmapped mounts take (`mount_setattr`'s userns_fd).
pub fn userns_with_maps(uid_map: &str, gid_map: &str) -> io::Result<OwnedFd> {
    let (ready_rd, ready_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_rd, go_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (go_wr_raw, go_rd_raw, ready_wr_raw) = (go_wr.as_raw_fd(), go_rd.as_raw_fd(), ready_wr.as_raw_fd());
    // SAFETY: the child makes only async-signal-safe raw syscalls (close, unshare, write,
    // read, _exit), so this is sound even from a multi-threaded process.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; the fds are the child's copies of the pipes made here.
        unsafe {
            libc::close(go_wr_raw);
            let ok = [u8::from(libc::unshare(libc::CLONE_NEWUSER) == 0)];
            libc::write(ready_wr_raw, ok.as_ptr().cast(), 1);
            let mut b = [0u8; 1];
            libc::read(go_rd_raw, b.as_mut_ptr().cast(), 1);
            libc::_exit(0)
        }
    }
    check(pid as libc::c_long)?;
    drop((ready_wr, go_rd));
    let made = (|| {
        let mut ok = [0u8; 1];
        let n = nix::unistd::read(ready_rd.as_raw_fd(), &mut ok)?;
        if n != 1 || ok[0] != 1 {
            return Err(io::Error::other("the child could not unshare its user namespace"));
        }
        std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
        std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)?;
        std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
    })();
    drop(go_wr);
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    made
}

/// A detached copy (open_tree OPEN_TREE_CLONE) of the mount at `path` whose file ownership
/// is seen through `userns`'s id mapping (MOUNT_ATTR_IDMAP): id 0 on disk shows as the
/// host id the namespace maps 0 to.
pub fn idmapped_clone(path: &Path, userns: RawFd) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let p = cstr(path)?;
    // SAFETY: open_tree(2) with a NUL-terminated path; it returns a new fd or -1.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })?;
    // SAFETY: the fd is new and ours alone.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns as u64 };
    mount_setattr(tree.as_raw_fd(), 0, &attr)?;
    Ok(tree)
}

/// Attaches `file` to a free loop device with LOOP_CONFIGURE and LO_FLAGS_AUTOCLEAR (the
/// device frees itself when its last user, the mount, goes). Returns the device's path and
/// an open fd of it, which keeps it attached until the mount holds it.
pub fn attach_loop(file: &std::fs::File) -> io::Result<(std::path::PathBuf, OwnedFd)> {
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LO_FLAGS_AUTOCLEAR: u32 = 4;
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        sizelimit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }
    let ctl = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control")?;
    // Another process may take the free device first: then ask again.
    for _ in 0..16 {
        // SAFETY: ioctl on the loop-control fd; LOOP_CTL_GET_FREE takes no argument.
        let n = check(unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) } as libc::c_long)?;
        let path = std::path::PathBuf::from(format!("/dev/loop{n}"));
        let dev: OwnedFd = std::fs::OpenOptions::new().read(true).write(true).open(&path)?.into();
        // SAFETY: all-zero is a valid loop_config (plain integers and byte arrays).
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = file.as_raw_fd() as u32;
        cfg.info.flags = LO_FLAGS_AUTOCLEAR;
        // SAFETY: LOOP_CONFIGURE reads one live, initialised loop_config.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if rc == 0 {
            return Ok((path, dev));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EBUSY))
}

/// Makes the loop device `dev` take its backing file's new size (LOOP_SET_CAPACITY).
pub fn loop_set_capacity(dev: &std::path::Path) -> io::Result<()> {
    const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
    let dev = std::fs::OpenOptions::new().read(true).open(dev)?;
    // SAFETY: ioctl on an open loop device; LOOP_SET_CAPACITY takes no argument.
    check(unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0) } as libc::c_long)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let text = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(text).unwrap(), ('S', 98765));
    }

    #[test]
    fn own_start_time_is_stable() {
        let pid = std::process::id() as i32;
        assert_eq!(process_start_time(pid).unwrap(), process_start_time(pid).unwrap());
    }
}
