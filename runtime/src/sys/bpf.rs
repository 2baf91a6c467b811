//! bpf(2) for cgroup v2 device programs.
//!
//! Only what the cgroup device controller needs: the instruction encoding, loading a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attaching it to a cgroup directory. The
//! program itself is built by `cgroups::devices`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

// Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h, linux/bpf.h).
pub const CLASS_LDX: u8 = 0x01;
pub const CLASS_ALU: u8 = 0x04;
pub const CLASS_JMP: u8 = 0x05;
/// Jumps comparing the low 32 bits of registers (Linux 5.1+).
pub const CLASS_JMP32: u8 = 0x06;
pub const SIZE_W: u8 = 0x00;
pub const MODE_MEM: u8 = 0x60;
pub const OP_AND: u8 = 0x50;
pub const OP_RSH: u8 = 0x70;
pub const OP_MOV: u8 = 0xb0;
pub const OP_JEQ: u8 = 0x10;
pub const OP_JNE: u8 = 0x50;
pub const OP_EXIT: u8 = 0x90;
/// Operand is the immediate.
pub const SRC_K: u8 = 0x00;
/// Operand is the source register.
pub const SRC_X: u8 = 0x08;

/// `struct bpf_cgroup_dev_ctx`: `access_type` (device type in the low 16 bits, access in the
/// high 16 bits), `major`, `minor`, all u32.
pub const DEV_CTX_ACCESS_TYPE: i16 = 0;
pub const DEV_CTX_MAJOR: i16 = 4;
pub const DEV_CTX_MINOR: i16 = 8;
pub const DEVCG_DEV_BLOCK: i32 = 1;
pub const DEVCG_DEV_CHAR: i32 = 2;
pub const DEVCG_ACC_MKNOD: u8 = 1;
pub const DEVCG_ACC_READ: u8 = 2;
pub const DEVCG_ACC_WRITE: u8 = 4;

const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_PROG_ATTACH: libc::c_long = 8;
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const ATTACH_TYPE_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs on one cgroup, all of which must allow.
pub const F_ALLOW_MULTI: u32 = 2;

/// One eBPF instruction, laid out as the kernel's `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        // The kernel declares `__u8 dst_reg:4, src_reg:4`; bitfields fill from the low bits
        // on little-endian targets and from the high bits on big-endian ones.
        let regs = if cfg!(target_endian = "little") { (dst & 0x0f) | (src << 4) } else { (dst << 4) | (src & 0x0f) };
        Insn { code, regs, off, imm }
    }

    pub fn dst(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs & 0x0f
        } else {
            self.regs >> 4
        }
    }

    pub fn src(&self) -> u8 {
        if cfg!(target_endian = "little") {
            self.regs >> 4
        } else {
            self.regs & 0x0f
        }
    }
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
/// The kernel zero-fills whatever lies beyond the size we pass.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program. With `log` given, the verifier writes its
/// log there (NUL-terminated); pass one when retrying a failed load to learn why.
pub fn load_cgroup_device_prog(insns: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    const LICENSE: &CStr = c"Apache-2.0";
    let insn_cnt =
        u32::try_from(insns.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many instructions"))?;
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        expected_attach_type: ATTACH_TYPE_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..6].copy_from_slice(b"warren");
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    // SAFETY: `attr` is a properly initialised prefix of `union bpf_attr` for BPF_PROG_LOAD and
    // its size is passed along. The pointers in it (instructions, license string, log buffer)
    // refer to memory that stays borrowed, and so alive, for the whole call; the kernel only
    // reads the first two and writes at most `log_size` bytes into the third.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, CMD_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("bpf returned an invalid fd"))?;
    // SAFETY: on success BPF_PROG_LOAD returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches a loaded cgroup device program to the cgroup whose directory `cgroup_dir` is open.
pub fn attach_cgroup_device_prog(cgroup_dir: BorrowedFd<'_>, prog: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: fd_as_u32(cgroup_dir)?,
        attach_bpf_fd: fd_as_u32(prog)?,
        attach_type: ATTACH_TYPE_CGROUP_DEVICE,
        attach_flags: flags,
        ..Default::default()
    };
    // SAFETY: `attr` is a fully initialised prefix of `union bpf_attr` for BPF_PROG_ATTACH and its
    // size is passed along; the kernel only reads it. Both fds are borrowed, so open, for the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            CMD_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn fd_as_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insn_matches_kernel_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let insn = Insn::new(CLASS_LDX | SIZE_W | MODE_MEM, 2, 1, 4, -7);
        assert_eq!((insn.dst(), insn.src()), (2, 1));
        assert_eq!(insn.off, 4);
        assert_eq!(insn.imm, -7);
    }

    #[test]
    fn attr_sizes_match_kernel_offsets() {
        // expected_attach_type sits at offset 68 of union bpf_attr for BPF_PROG_LOAD.
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 20);
    }
}
