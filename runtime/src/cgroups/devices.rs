//! Device access rules: OCI `linux.resources.devices` as v1 `devices.allow`/`devices.deny`
//! writes, or as a v2 `BPF_PROG_TYPE_CGROUP_DEVICE` program.
//!
//! Rules apply in order over a default of "deny everything"; the last rule that matches a
//! device decides, separately for each of read, write and mknod.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{fs, CgroupError};
use crate::sys::bpf::{self, Insn};

const ACCESS_ALL: u8 = bpf::DEVCG_ACC_READ | bpf::DEVCG_ACC_WRITE | bpf::DEVCG_ACC_MKNOD;
/// Size of the verifier log asked for when a program fails to load.
const VERIFIER_LOG_SIZE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    All,
    Char,
    Block,
}

/// One validated rule. `None` major/minor match any number; `access` holds the kernel's
/// `BPF_DEVCG_ACC_*` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    pub kind: DeviceKind,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u8,
}

impl DeviceRule {
    /// Validates an OCI rule for the cgroup `dir`. Type "u" (unbuffered char) counts as "c"; a
    /// missing or empty access means "rwm"; a negative major/minor (runc's -1) is a wildcard.
    pub fn from_oci(rule: &LinuxDeviceCgroup, dir: &Path) -> Result<DeviceRule, CgroupError> {
        let invalid =
            |reason: &'static str| CgroupError::DeviceRule { path: dir.to_path_buf(), rule: rule.to_string(), reason };
        let kind = match rule.typ().unwrap_or_default() {
            LinuxDeviceType::A => DeviceKind::All,
            LinuxDeviceType::C | LinuxDeviceType::U => DeviceKind::Char,
            LinuxDeviceType::B => DeviceKind::Block,
            LinuxDeviceType::P => return Err(invalid("type must be a, b or c")),
        };
        let number = |n: Option<i64>| match n {
            Some(n) if n >= 0 => u32::try_from(n).map(Some).map_err(|_| invalid("device number out of range")),
            _ => Ok(None),
        };
        let access = parse_access(rule.access().as_deref().unwrap_or(""))
            .ok_or_else(|| invalid("access must be made of r, w and m"))?;
        Ok(DeviceRule { allow: rule.allow(), kind, major: number(rule.major())?, minor: number(rule.minor())?, access })
    }

    fn matches_all(&self) -> bool {
        self.kind == DeviceKind::All && self.major.is_none() && self.minor.is_none() && self.access == ACCESS_ALL
    }
}

fn parse_access(text: &str) -> Option<u8> {
    if text.is_empty() {
        return Some(ACCESS_ALL);
    }
    text.chars().try_fold(0, |bits, c| match c {
        'r' => Some(bits | bpf::DEVCG_ACC_READ),
        'w' => Some(bits | bpf::DEVCG_ACC_WRITE),
        'm' => Some(bits | bpf::DEVCG_ACC_MKNOD),
        _ => None,
    })
}

fn access_text(bits: u8) -> String {
    [(bpf::DEVCG_ACC_READ, 'r'), (bpf::DEVCG_ACC_WRITE, 'w'), (bpf::DEVCG_ACC_MKNOD, 'm')]
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The v1 writes, in order, as (file name, line): first "a" to devices.deny, then each rule.
/// A v1 "a" line stands for every device and access whatever follows it, so an "a" rule that
/// names numbers or a partial access is written as a "c" and a "b" line.
pub fn v1_writes(rules: &[DeviceRule]) -> Vec<(&'static str, String)> {
    let mut writes = vec![("devices.deny", "a".to_string())];
    for rule in rules {
        let file = if rule.allow { "devices.allow" } else { "devices.deny" };
        if rule.matches_all() {
            writes.push((file, "a".to_string()));
            continue;
        }
        let number = |n: Option<u32>| n.map_or("*".to_string(), |n| n.to_string());
        let numbers = format!("{}:{}", number(rule.major), number(rule.minor));
        let access = access_text(rule.access);
        let types: &[char] = match rule.kind {
            DeviceKind::All => &['c', 'b'],
            DeviceKind::Char => &['c'],
            DeviceKind::Block => &['b'],
        };
        for t in types {
            writes.push((file, format!("{t} {numbers} {access}")));
        }
    }
    writes
}

/// Applies the rules through the v1 devices controller directory `dir`.
pub fn apply_v1(rules: &[DeviceRule], dir: &Path) -> Result<(), CgroupError> {
    for (file, line) in v1_writes(rules) {
        fs::append(&dir.join(file), &line)?;
    }
    Ok(())
}

/// Loads the rules as a BPF program and attaches it to the cgroup2 directory `dir`, next to
/// any programs already there (BPF_F_ALLOW_MULTI: all of them must allow an access).
pub fn apply_v2(rules: &[DeviceRule], dir: &Path) -> Result<(), CgroupError> {
    let program = bpf_program(rules);
    let bpf_error = |op, source, log| CgroupError::Bpf { path: dir.to_path_buf(), op, source, log };
    let prog = match bpf::load_cgroup_device_prog(&program, None) {
        Ok(fd) => fd,
        Err(source) => {
            let mut log = vec![0u8; VERIFIER_LOG_SIZE];
            // Load again only to get the verifier's explanation.
            let _ = bpf::load_cgroup_device_prog(&program, Some(&mut log));
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().to_string();
            return Err(bpf_error("BPF_PROG_LOAD", source, log));
        }
    };
    let cgroup = File::open(dir).map_err(|source| CgroupError::Read { path: dir.to_path_buf(), source })?;
    bpf::attach_cgroup_device_prog(cgroup.as_fd(), prog.as_fd(), bpf::F_ALLOW_MULTI)
        .map_err(|source| bpf_error("BPF_PROG_ATTACH", source, String::new()))
}

// Registers of the program: R0 return value, R1 context (then scratch), R2 device type,
// R3 requested access, R4 major, R5 minor, R6 requested access bits not decided yet.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const ALU32_MOV_K: u8 = bpf::CLASS_ALU | bpf::OP_MOV | bpf::SRC_K;
const ALU32_MOV_X: u8 = bpf::CLASS_ALU | bpf::OP_MOV | bpf::SRC_X;
const ALU32_AND_K: u8 = bpf::CLASS_ALU | bpf::OP_AND | bpf::SRC_K;
const ALU32_RSH_K: u8 = bpf::CLASS_ALU | bpf::OP_RSH | bpf::SRC_K;
const LDX_W: u8 = bpf::CLASS_LDX | bpf::SIZE_W | bpf::MODE_MEM;
const JMP32_JNE_K: u8 = bpf::CLASS_JMP32 | bpf::OP_JNE | bpf::SRC_K;
const JMP32_JEQ_K: u8 = bpf::CLASS_JMP32 | bpf::OP_JEQ | bpf::SRC_K;
const EXIT: u8 = bpf::CLASS_JMP | bpf::OP_EXIT;

/// Builds the cgroup device program. Rules are checked last to first; R6 starts as the
/// requested access bits. A matching deny rule covering a bit still in R6 denies; a matching
/// allow rule clears its bits from R6 and allows once none are left. Falling off the end denies.
pub fn bpf_program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut insns = vec![
        Insn::new(LDX_W, R2, R1, bpf::DEV_CTX_ACCESS_TYPE, 0),
        Insn::new(ALU32_AND_K, R2, 0, 0, 0xffff),
        Insn::new(LDX_W, R3, R1, bpf::DEV_CTX_ACCESS_TYPE, 0),
        Insn::new(ALU32_RSH_K, R3, 0, 0, 16),
        Insn::new(LDX_W, R4, R1, bpf::DEV_CTX_MAJOR, 0),
        Insn::new(LDX_W, R5, R1, bpf::DEV_CTX_MINOR, 0),
        Insn::new(ALU32_MOV_X, R6, R3, 0, 0),
    ];
    for rule in rules.iter().rev() {
        insns.extend(rule_block(rule));
    }
    insns.push(Insn::new(ALU32_MOV_K, R0, 0, 0, 0));
    insns.push(Insn::new(EXIT, 0, 0, 0, 0));
    insns
}

/// One rule's instructions; every jump in it goes to the first instruction after it.
fn rule_block(rule: &DeviceRule) -> Vec<Insn> {
    let kind = match rule.kind {
        DeviceKind::All => None,
        DeviceKind::Char => Some(bpf::DEVCG_DEV_CHAR),
        DeviceKind::Block => Some(bpf::DEVCG_DEV_BLOCK),
    };
    // Device numbers are compared as u32 by 32-bit jumps, so the cast only reinterprets.
    let checks: Vec<(u8, i32)> = [(R2, kind), (R4, rule.major.map(|n| n as i32)), (R5, rule.minor.map(|n| n as i32))]
        .into_iter()
        .filter_map(|(reg, value)| value.map(|v| (reg, v)))
        .collect();
    let access = i32::from(rule.access);
    let decide = if rule.allow {
        vec![
            Insn::new(ALU32_AND_K, R6, 0, 0, !access & i32::from(ACCESS_ALL)),
            Insn::new(JMP32_JNE_K, R6, 0, 2, 0),
            Insn::new(ALU32_MOV_K, R0, 0, 0, 1),
            Insn::new(EXIT, 0, 0, 0, 0),
        ]
    } else {
        vec![
            Insn::new(ALU32_MOV_X, R1, R6, 0, 0),
            Insn::new(ALU32_AND_K, R1, 0, 0, access),
            Insn::new(JMP32_JEQ_K, R1, 0, 2, 0),
            Insn::new(ALU32_MOV_K, R0, 0, 0, 0),
            Insn::new(EXIT, 0, 0, 0, 0),
        ]
    };
    let len = checks.len() + decide.len();
    let mut block = Vec::with_capacity(len);
    for (i, (reg, value)) in checks.iter().enumerate() {
        let skip = i16::try_from(len - i - 1).expect("rule blocks are short");
        block.push(Insn::new(JMP32_JNE_K, *reg, 0, skip, *value));
    }
    block.extend(decide);
    block
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    const R: u8 = bpf::DEVCG_ACC_READ;
    const W: u8 = bpf::DEVCG_ACC_WRITE;
    const M: u8 = bpf::DEVCG_ACC_MKNOD;

    fn rule(allow: bool, kind: DeviceKind, major: Option<u32>, minor: Option<u32>, access: u8) -> DeviceRule {
        DeviceRule { allow, kind, major, minor, access }
    }

    /// Runs a device program on one request, interpreting just the instructions the builder emits.
    fn run(program: &[Insn], dev_type: u32, access: u8, major: u32, minor: u32) -> u64 {
        let ctx = [dev_type | u32::from(access) << 16, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let insn = program[pc];
            let (dst, src) = (usize::from(insn.dst()), usize::from(insn.src()));
            let imm32 = insn.imm as u32;
            let jump = |taken: bool| if taken { insn.off as isize } else { 0 };
            let mut offset = 0;
            match insn.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    regs[dst] = u64::from(ctx[(insn.off / 4) as usize]);
                }
                ALU32_AND_K => regs[dst] = u64::from(regs[dst] as u32 & imm32),
                ALU32_RSH_K => regs[dst] = u64::from((regs[dst] as u32) >> imm32),
                ALU32_MOV_K => regs[dst] = u64::from(imm32),
                ALU32_MOV_X => regs[dst] = u64::from(regs[src] as u32),
                JMP32_JNE_K => offset = jump(regs[dst] as u32 != imm32),
                JMP32_JEQ_K => offset = jump(regs[dst] as u32 == imm32),
                EXIT => return regs[0],
                code => panic!("unexpected opcode {code:#x} at {pc}"),
            }
            pc = (pc as isize + 1 + offset) as usize;
        }
    }

    /// The intended semantics, written plainly: for each requested access bit, the last rule
    /// matching the device and covering that bit decides; none matching denies.
    fn reference(rules: &[DeviceRule], dev_type: u32, access: u8, major: u32, minor: u32) -> u64 {
        let matches = |r: &DeviceRule| {
            let kind_ok = match r.kind {
                DeviceKind::All => true,
                DeviceKind::Char => dev_type == bpf::DEVCG_DEV_CHAR as u32,
                DeviceKind::Block => dev_type == bpf::DEVCG_DEV_BLOCK as u32,
            };
            kind_ok && r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor)
        };
        let allowed = [R, W, M]
            .iter()
            .filter(|bit| access & **bit != 0)
            .all(|bit| rules.iter().rev().find(|r| matches(r) && r.access & bit != 0).is_some_and(|r| r.allow));
        u64::from(allowed)
    }

    #[test]
    fn program_allows_listed_devices_only() {
        let rules = [
            rule(false, DeviceKind::All, None, None, R | W | M),
            rule(true, DeviceKind::Char, Some(1), Some(3), R | W),
            rule(true, DeviceKind::Char, Some(136), None, R | W),
            rule(true, DeviceKind::All, None, None, M),
        ];
        let p = bpf_program(&rules);
        let c = bpf::DEVCG_DEV_CHAR as u32;
        let b = bpf::DEVCG_DEV_BLOCK as u32;
        assert_eq!(run(&p, c, R | W, 1, 3), 1);
        assert_eq!(run(&p, c, R | W, 1, 5), 0);
        assert_eq!(run(&p, c, W, 136, 7), 1);
        assert_eq!(run(&p, b, R, 8, 0), 0);
        assert_eq!(run(&p, b, M, 8, 0), 1);
        assert_eq!(run(&p, c, R | M, 1, 3), 1);
        assert_eq!(run(&bpf_program(&[]), c, R, 1, 3), 0);
    }

    #[test]
    fn later_deny_overrides_earlier_allow_per_access_bit() {
        let rules =
            [rule(true, DeviceKind::All, None, None, R | W | M), rule(false, DeviceKind::Char, Some(1), Some(3), W)];
        let p = bpf_program(&rules);
        let c = bpf::DEVCG_DEV_CHAR as u32;
        assert_eq!(run(&p, c, R, 1, 3), 1);
        assert_eq!(run(&p, c, R | W, 1, 3), 0);
        assert_eq!(run(&p, c, R | W, 1, 4), 1);
    }

    #[test]
    fn program_agrees_with_reference_on_generated_rules() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let kinds = [DeviceKind::All, DeviceKind::Char, DeviceKind::Block];
        for _ in 0..300 {
            let rules: Vec<DeviceRule> = (0..next(6))
                .map(|_| DeviceRule {
                    allow: next(2) == 1,
                    kind: kinds[next(3) as usize],
                    major: [None, Some(1), Some(2)][next(3) as usize],
                    minor: [None, Some(3), Some(4)][next(3) as usize],
                    access: 1 + next(7) as u8,
                })
                .collect();
            let program = bpf_program(&rules);
            for dev_type in [bpf::DEVCG_DEV_BLOCK as u32, bpf::DEVCG_DEV_CHAR as u32] {
                for access in 1..=7u8 {
                    for (major, minor) in [(1, 3), (1, 4), (2, 3), (5, 5)] {
                        assert_eq!(
                            run(&program, dev_type, access, major, minor),
                            reference(&rules, dev_type, access, major, minor),
                            "rules {rules:?} type {dev_type} access {access} {major}:{minor}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn v1_writes_start_with_deny_all_and_keep_order() {
        let rules = [
            rule(true, DeviceKind::Char, Some(1), Some(3), R | W | M),
            rule(false, DeviceKind::Block, None, Some(0), R),
            rule(true, DeviceKind::All, Some(10), None, M),
            rule(true, DeviceKind::All, None, None, R | W | M),
        ];
        let writes = v1_writes(&rules);
        let expected = [
            ("devices.deny", "a"),
            ("devices.allow", "c 1:3 rwm"),
            ("devices.deny", "b *:0 r"),
            ("devices.allow", "c 10:* m"),
            ("devices.allow", "b 10:* m"),
            ("devices.allow", "a"),
        ];
        let writes: Vec<(&str, &str)> = writes.iter().map(|(f, l)| (*f, l.as_str())).collect();
        assert_eq!(writes, expected);
    }

    #[test]
    fn from_oci_validates_and_defaults() {
        let dir = Path::new("/sys/fs/cgroup/devices/x");
        let oci =
            LinuxDeviceCgroupBuilder::default().allow(true).typ(LinuxDeviceType::U).major(5).minor(-1).build().unwrap();
        assert_eq!(DeviceRule::from_oci(&oci, dir).unwrap(), rule(true, DeviceKind::Char, Some(5), None, R | W | M));
        let bad_access = LinuxDeviceCgroupBuilder::default().access("rx").build().unwrap();
        let err = DeviceRule::from_oci(&bad_access, dir).unwrap_err();
        assert!(matches!(&err, CgroupError::DeviceRule { path, .. } if path == dir));
        let fifo = LinuxDeviceCgroupBuilder::default().typ(LinuxDeviceType::P).build().unwrap();
        assert!(DeviceRule::from_oci(&fifo, dir).is_err());
    }

    #[test]
    fn apply_v1_writes_every_line_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("devices.allow"), "").unwrap();
        std::fs::write(tmp.path().join("devices.deny"), "").unwrap();
        let rules = [
            rule(true, DeviceKind::Char, Some(1), Some(3), R | W),
            rule(true, DeviceKind::Char, Some(1), Some(5), R),
            rule(false, DeviceKind::Char, Some(1), Some(5), W),
        ];
        apply_v1(&rules, tmp.path()).unwrap();
        let read = |f| std::fs::read_to_string(tmp.path().join(f)).unwrap();
        assert_eq!(read("devices.allow"), "c 1:3 rw\nc 1:5 r\n");
        assert_eq!(read("devices.deny"), "a\nc 1:5 w\n");
    }
}
