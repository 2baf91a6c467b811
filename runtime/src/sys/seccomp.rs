//! seccomp(2) filter installation.

use std::io;

use seccompiler::sock_filter;

/// `struct sock_fprog` of `<linux/filter.h>`. seccompiler's `sock_filter` is `repr(C)` with the
/// kernel's layout (u16 code, u8 jt, u8 jf, u32 k), so its slices can be handed over as is.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// `seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)` on the calling thread.
///
/// Returns the raw non-negative result: 0 once installed, or, with
/// `SECCOMP_FILTER_FLAG_TSYNC`, the id of a thread that could not be synchronized (nothing was
/// installed then). The caller must hold CAP_SYS_ADMIN or have set no_new_privs.
pub fn set_mode_filter(filter: &[sock_filter], flags: libc::c_ulong) -> io::Result<libc::c_long> {
    let len = libc::c_ushort::try_from(filter.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let prog = SockFprog { len, filter: filter.as_ptr() };
    // SAFETY: `prog` points at `len` initialized instructions borrowed for the whole call; the
    // kernel only copies them in (copy_from_user) and keeps no pointer to our memory.
    let rc =
        unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, flags, &prog as *const SockFprog) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(test)]
mod tests {
    //! Filters really installed in a forked child, so the test harness itself is never
    //! filtered. These tests live here because fork/prctl/_exit need `unsafe`, which the crate
    //! keeps under `sys`.

    use oci_spec::runtime::LinuxSeccomp;

    use crate::seccomp::{compile, SeccompProgram};

    /// Runs `child` in a forked child and returns its exit status. `child` must only make
    /// async-signal-safe calls (no allocation, no locks): the parent may be multi-threaded.
    fn run_in_child(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `child` (async-signal-safe by contract) and `_exit`s
        // without unwinding or running destructors/atexit handlers of the parent's state.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = child();
            // SAFETY: terminates the child immediately; nothing of the parent is touched.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our own child and `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
        assert!(libc::WIFEXITED(status), "child did not exit: status {status:#x}");
        libc::WEXITSTATUS(status)
    }

    /// Sets no_new_privs (needed without CAP_SYS_ADMIN) and installs `program`.
    fn enter(program: &SeccompProgram) -> bool {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        rc == 0 && program.install().is_ok()
    }

    /// Raw getcwd(2) with a `size` argument of our choice; returns the errno, or 0 on success.
    fn getcwd_errno(size: usize) -> i32 {
        let mut buf = [0u8; 8192];
        let size = size.min(buf.len());
        // SAFETY: `buf` is writable for `size` bytes for the duration of the call.
        let rc = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), size) };
        if rc < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    }

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test spec parses")
    }

    #[test]
    fn errno_rule_with_argument_is_enforced() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO",
                              "args": [{"index": 1, "value": 4242, "op": "SCMP_CMP_EQ"}]}]}"#,
        ))
        .expect("compiles");
        let code = run_in_child(|| {
            if !enter(&program) {
                return 10;
            }
            if getcwd_errno(4242) != libc::EPERM {
                return 11;
            }
            if getcwd_errno(4096) != 0 {
                return 12;
            }
            0
        });
        assert_eq!(code, 0, "child failed at step {code}");
    }

    /// Default deny with an allow list, plus an ERRNO(ENOSYS) rule overlapping an ALLOW rule:
    /// the higher-precedence action wins.
    #[test]
    fn default_errno_with_allow_list_and_precedence() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
                "syscalls": [
                  {"names": ["getcwd", "exit_group", "exit"], "action": "SCMP_ACT_ALLOW"},
                  {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
                   "args": [{"index": 1, "value": 4243, "op": "SCMP_CMP_GE"}]}]}"#,
        ))
        .expect("compiles");
        let code = run_in_child(|| {
            if !enter(&program) {
                return 20;
            }
            if getcwd_errno(4096) != 0 {
                return 21;
            }
            if getcwd_errno(5000) != libc::ENOSYS {
                return 22;
            }
            // SAFETY: getppid(2) takes no arguments.
            let rc = unsafe { libc::syscall(libc::SYS_getppid) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            if rc != -1 || errno != Some(libc::EACCES) {
                return 23;
            }
            0
        });
        assert_eq!(code, 0, "child failed at step {code}");
    }
}
