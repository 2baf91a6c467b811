//! OCI `linux.seccomp` compiled with seccompiler.
//!
//! A seccompiler [`SeccompFilter`] has a single match action and a single mismatch action,
//! while every OCI rule carries its own action. The spec is therefore compiled into several
//! filters, relying on the kernel running *all* installed filters and keeping the
//! highest-precedence result (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE >
//! LOG > ALLOW):
//!
//! * the *default* filter returns ALLOW for the syscall+arguments of every rule (whatever its
//!   action) and `defaultAction` for anything else;
//! * one *rules* filter per distinct non-ALLOW rule action (action + errno/trace value) returns
//!   that action for its rules and ALLOW for anything else.
//!
//! Why this is equivalent: a call matching no rule gets `defaultAction` from the default filter
//! and ALLOW (the lowest precedence) from every rules filter, so `defaultAction` wins. A call
//! matching some rules gets ALLOW from the default filter, its rules' actions from their
//! filters and ALLOW from the others, so it gets its rule's action; when it matches rules of
//! different actions, the highest-precedence one. Among equal actions with different values
//! (ERRNO(EPERM) vs ERRNO(ENOSYS)) the kernel keeps the most recently installed filter's: rules
//! filters are installed in reverse spec order so the first-listed rule wins.
//!
//! Like runc (libseccomp refuses such rules), a rule whose action equals the default action is
//! dropped. A default ALLOW needs no default filter; filters without rules are not built.
//!
//! Architectures: filters are built for the host's native ABI only. seccompiler prefixes each
//! filter with an `arch == native` check that kills the process otherwise, so syscalls of the
//! other ABIs a spec may list (SCMP_ARCH_X86 via int 0x80, ...) are killed, not filtered. x32
//! syscalls, however, carry AUDIT_ARCH_X86_64 with bit 30 set in their number and would slip
//! past seccompiler's exact number matching into the mismatch action (ALLOW for rules filters):
//! on x86_64 a small hand-written guard filter kills them, as libseccomp does for an
//! x86_64-only filter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

use crate::sys::seccomp as sys;

/// Where in `linux.seccomp` an error comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecSite {
    /// `defaultAction` / `defaultErrnoRet`.
    DefaultAction,
    /// `syscalls[index]`; the names help find it in the spec.
    Syscall { index: usize, names: Vec<String> },
}

impl fmt::Display for SpecSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultAction => f.write_str("defaultAction"),
            Self::Syscall { index, names } => write!(f, "syscalls[{index}] (names {names:?})"),
        }
    }
}

/// One of the filters a spec compiles to, named in build and install errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterKind {
    /// Kills x32-ABI syscalls (x86_64 only, see the module doc).
    X32Guard,
    /// Allows every rule's syscalls, returns this default action otherwise.
    Default(SeccompAction),
    /// Returns this action for its rules, allows otherwise.
    Rules(SeccompAction),
}

impl fmt::Display for FilterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::X32Guard => f.write_str("x32 ABI guard filter"),
            Self::Default(action) => write!(f, "default filter ({})", ActionName(action)),
            Self::Rules(action) => write!(f, "{} rules filter", ActionName(action)),
        }
    }
}

/// Spells a seccompiler action the way OCI specs do.
struct ActionName<'a>(&'a SeccompAction);

impl fmt::Display for ActionName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SeccompAction::Allow => f.write_str("SCMP_ACT_ALLOW"),
            SeccompAction::Errno(errno) => write!(f, "SCMP_ACT_ERRNO({errno})"),
            SeccompAction::KillThread => f.write_str("SCMP_ACT_KILL_THREAD"),
            SeccompAction::KillProcess => f.write_str("SCMP_ACT_KILL_PROCESS"),
            SeccompAction::Log => f.write_str("SCMP_ACT_LOG"),
            SeccompAction::Trace(value) => write!(f, "SCMP_ACT_TRACE({value})"),
            SeccompAction::Trap => f.write_str("SCMP_ACT_TRAP"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: host architecture {arch} is not supported")]
    UnsupportedHostArch { arch: &'static str },
    #[error("seccomp: architectures {listed:?} do not include the host architecture {host}")]
    HostArchNotListed { host: Arch, listed: Vec<String> },
    #[error("seccomp: flags: unknown flag {flag}")]
    UnknownFlag { flag: String },
    #[error("seccomp: listenerPath {path:?}: SCMP_ACT_NOTIFY is not supported")]
    ListenerPathUnsupported { path: PathBuf },
    #[error("seccomp: {site}: action {action} is not supported")]
    UnsupportedAction { site: SpecSite, action: LinuxSeccompAction },
    #[error("seccomp: {site}: errno/trace value {value} does not fit in 16 bits")]
    ErrnoOutOfRange { site: SpecSite, value: u32 },
    #[error("seccomp: {site}: args[{arg}]: index {index} is not a syscall argument (0..=5)")]
    ArgIndexOutOfRange { site: SpecSite, arg: usize, index: usize },
    #[error("seccomp: {site}: args[{arg}]: {source}")]
    InvalidCondition { site: SpecSite, arg: usize, source: BackendError },
    #[error("seccomp: {site}: args: {source}")]
    InvalidRule { site: SpecSite, source: BackendError },
    #[error("seccomp: building the {filter}: {source}")]
    Build { filter: FilterKind, source: BackendError },
    #[error("seccomp: installing the {filter}: {source}")]
    Install { filter: FilterKind, source: io::Error },
    #[error("seccomp: installing the {filter}: thread {tid} could not be synchronized (TSYNC)")]
    ThreadSync { filter: FilterKind, tid: libc::c_long },
}

/// A compiled `linux.seccomp`, ready to install.
#[derive(Debug)]
pub struct SeccompProgram {
    /// In installation order.
    filters: Vec<(FilterKind, BpfProgram)>,
    /// SECCOMP_FILTER_FLAG_* bits passed with every filter.
    flags: libc::c_ulong,
}

impl SeccompProgram {
    /// Installs every filter on the calling thread (seccomp(2) SECCOMP_SET_MODE_FILTER with the
    /// spec's flags).
    /// Does NOT set no_new_privs itself: the caller decides (it needs NNP or CAP_SYS_ADMIN).
    ///
    /// Allocation-free on success, so it may run between fork and exec. Filters installed
    /// before a failing one stay installed (seccomp filters cannot be removed).
    pub fn install(&self) -> Result<(), SeccompError> {
        for (kind, program) in &self.filters {
            match sys::set_mode_filter(program, self.flags) {
                Ok(0) => {}
                Ok(tid) => return Err(SeccompError::ThreadSync { filter: kind.clone(), tid }),
                Err(source) => return Err(SeccompError::Install { filter: kind.clone(), source }),
            }
        }
        Ok(())
    }

    /// True when the spec needs no filter at all (default ALLOW and no effective rule).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

/// Compiles `spec` for the host architecture.
pub fn compile(spec: &LinuxSeccomp) -> Result<SeccompProgram, SeccompError> {
    let host = HOST.ok_or(SeccompError::UnsupportedHostArch { arch: std::env::consts::ARCH })?;
    check_architectures(spec, host.arch)?;
    let flags = filter_flags(spec)?;
    if let Some(path) = spec.listener_path() {
        return Err(SeccompError::ListenerPathUnsupported { path: path.clone() });
    }
    let default = resolve_action(&SpecSite::DefaultAction, spec.default_action(), spec.default_errno_ret())?;
    let grouped = group_rules(spec, &default)?;
    let filters = build_filters(host.target, default, grouped)?;
    Ok(SeccompProgram { filters, flags })
}

/// The host's seccompiler target and its OCI name.
#[derive(Debug, Clone, Copy)]
struct Host {
    target: TargetArch,
    arch: Arch,
}

#[cfg(target_arch = "x86_64")]
const HOST: Option<Host> = Some(Host { target: TargetArch::x86_64, arch: Arch::ScmpArchX86_64 });
#[cfg(target_arch = "aarch64")]
const HOST: Option<Host> = Some(Host { target: TargetArch::aarch64, arch: Arch::ScmpArchAarch64 });
#[cfg(target_arch = "riscv64")]
const HOST: Option<Host> = Some(Host { target: TargetArch::riscv64, arch: Arch::ScmpArchRiscv64 });
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "riscv64")))]
const HOST: Option<Host> = None;

/// Other listed architectures are accepted but not filtered (see the module doc).
fn check_architectures(spec: &LinuxSeccomp, host: Arch) -> Result<(), SeccompError> {
    let listed = spec.architectures().as_deref().unwrap_or_default();
    let native = |arch: &Arch| *arch == host || *arch == Arch::ScmpArchNative;
    if listed.is_empty() || listed.iter().any(native) {
        return Ok(());
    }
    Err(SeccompError::HostArchNotListed { host, listed: listed.iter().map(ToString::to_string).collect() })
}

fn filter_flags(spec: &LinuxSeccomp) -> Result<libc::c_ulong, SeccompError> {
    let mut bits = 0;
    for flag in spec.flags().iter().flatten() {
        bits |= flag_bits(&flag.to_string())?;
    }
    // Only meaningful with SECCOMP_FILTER_FLAG_NEW_LISTENER (SCMP_ACT_NOTIFY, refused here), and
    // the kernel rejects it with EINVAL without that flag: accepted, not passed on.
    Ok(bits & !libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
}

/// Kernel bit of a runtime-spec flag name. Goes by name because oci-spec's enum lags behind
/// the spec's list.
fn flag_bits(name: &str) -> Result<libc::c_ulong, SeccompError> {
    match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => Ok(libc::SECCOMP_FILTER_FLAG_TSYNC),
        "SECCOMP_FILTER_FLAG_LOG" => Ok(libc::SECCOMP_FILTER_FLAG_LOG),
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => Ok(libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW),
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" => Ok(libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV),
        _ => Err(SeccompError::UnknownFlag { flag: name.to_owned() }),
    }
}

/// OCI action (+ errnoRet) to seccompiler's. ERRNO and TRACE default to EPERM, as in runc.
fn resolve_action(
    site: &SpecSite,
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
) -> Result<SeccompAction, SeccompError> {
    let data = || {
        let value = errno_ret.unwrap_or(libc::EPERM as u32);
        if value > libc::SECCOMP_RET_DATA {
            return Err(SeccompError::ErrnoOutOfRange { site: site.clone(), value });
        }
        Ok(value)
    };
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(data()?),
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(data()?),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        // Needs SECCOMP_FILTER_FLAG_NEW_LISTENER and SECCOMP_RET_USER_NOTIF, which seccompiler
        // cannot emit.
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::UnsupportedAction { site: site.clone(), action })
        }
    })
}

/// Syscall numbers, with the argument rules under which one filter matches them.
#[derive(Debug, Default)]
struct RuleSet {
    /// Matched whatever the arguments.
    always: BTreeSet<i64>,
    /// Matched when any of the rules holds.
    when: BTreeMap<i64, Vec<SeccompRule>>,
}

impl RuleSet {
    /// `rule: None` matches on the syscall number alone.
    fn add(&mut self, nr: i64, rule: Option<&SeccompRule>) {
        match rule {
            None => {
                self.always.insert(nr);
            }
            Some(rule) => self.when.entry(nr).or_default().push(rule.clone()),
        }
    }

    fn is_empty(&self) -> bool {
        self.always.is_empty() && self.when.is_empty()
    }

    fn mentions(&self, nr: i64) -> bool {
        self.always.contains(&nr) || self.when.contains_key(&nr)
    }

    /// seccompiler's form: an empty rule list matches on the number alone (`SeccompRule`s
    /// cannot be empty), which makes that syscall's argument rules moot.
    fn into_map(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        let mut map = self.when;
        for nr in self.always {
            map.insert(nr, Vec::new());
        }
        map
    }
}

/// What one OCI rule's `args` amount to.
enum ArgMatch {
    Any,
    When(SeccompRule),
    /// Can never hold (MASKED_EQ with valueTwo outside the mask): the rule is dropped.
    Never,
}

/// Every rule's syscalls (for the default filter) and, per non-ALLOW action in order of first
/// appearance, the rules carrying it.
#[derive(Default)]
struct Grouped {
    all: RuleSet,
    by_action: Vec<(SeccompAction, RuleSet)>,
}

impl Grouped {
    /// Index of `action`'s rule set in `by_action`, none for ALLOW.
    fn slot(&mut self, action: &SeccompAction) -> Option<usize> {
        if *action == SeccompAction::Allow {
            return None;
        }
        let found = self.by_action.iter().position(|(a, _)| a == action);
        Some(found.unwrap_or_else(|| {
            self.by_action.push((action.clone(), RuleSet::default()));
            self.by_action.len() - 1
        }))
    }
}

fn group_rules(spec: &LinuxSeccomp, default: &SeccompAction) -> Result<Grouped, SeccompError> {
    let mut grouped = Grouped::default();
    for (index, rule) in spec.syscalls().iter().flatten().enumerate() {
        let site = SpecSite::Syscall { index, names: rule.names().clone() };
        // Validated before name resolution so a bad rule fails on every architecture.
        let action = resolve_action(&site, rule.action(), rule.errno_ret())?;
        let args = translate_args(&site, rule.args().as_deref().unwrap_or_default())?;
        // Dropped like runc does (libseccomp refuses them).
        if action == *default {
            continue;
        }
        let condition = match &args {
            ArgMatch::Never => continue,
            ArgMatch::Any => None,
            ArgMatch::When(when) => Some(when),
        };
        let slot = grouped.slot(&action);
        // Names unknown on this architecture are skipped, like libseccomp does: profiles list
        // syscalls of every architecture.
        for nr in rule.names().iter().filter_map(|name| syscall_number(name)) {
            grouped.all.add(nr, condition);
            if let Some(slot) = slot {
                grouped.by_action[slot].1.add(nr, condition);
            }
        }
    }
    Ok(grouped)
}

fn syscall_number(name: &str) -> Option<i64> {
    Sysno::from_str(name).ok().map(|sysno| i64::from(sysno.id()))
}

/// All of a rule's args are AND-ed into one `SeccompRule`.
fn translate_args(site: &SpecSite, args: &[LinuxSeccompArg]) -> Result<ArgMatch, SeccompError> {
    if args.is_empty() {
        return Ok(ArgMatch::Any);
    }
    let mut conditions = Vec::with_capacity(args.len());
    let mut never = false;
    for (pos, arg) in args.iter().enumerate() {
        match condition(site, pos, arg)? {
            Some(condition) => conditions.push(condition),
            None => never = true,
        }
    }
    if never {
        return Ok(ArgMatch::Never);
    }
    SeccompRule::new(conditions)
        .map(ArgMatch::When)
        .map_err(|source| SeccompError::InvalidRule { site: site.clone(), source })
}

/// One OCI arg as a 64-bit comparison (as libseccomp does on 64-bit ABIs); `None` when it can
/// never hold.
fn condition(site: &SpecSite, pos: usize, arg: &LinuxSeccompArg) -> Result<Option<SeccompCondition>, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|index| *index <= 5)
        .ok_or_else(|| SeccompError::ArgIndexOutOfRange { site: site.clone(), arg: pos, index: arg.index() })?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            // libseccomp: (arg & value) == valueTwo, never true if valueTwo has bits outside
            // the mask; seccompiler would mask valueTwo too and match.
            let (mask, wanted) = (arg.value(), arg.value_two().unwrap_or(0));
            if wanted & !mask != 0 {
                return Ok(None);
            }
            (SeccompCmpOp::MaskedEq(mask), wanted)
        }
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map(Some)
        .map_err(|source| SeccompError::InvalidCondition { site: site.clone(), arg: pos, source })
}

/// Filters in installation order (see the module doc).
fn build_filters(
    target: TargetArch,
    default: SeccompAction,
    grouped: Grouped,
) -> Result<Vec<(FilterKind, BpfProgram)>, SeccompError> {
    let seccomp_nr = i64::from(Sysno::seccomp.id());
    // (may refuse seccomp(2), kind, mismatch action, match action, rules)
    let mut planned = Vec::new();
    if default != SeccompAction::Allow {
        let may_refuse = !grouped.all.always.contains(&seccomp_nr);
        let kind = FilterKind::Default(default.clone());
        planned.push((may_refuse, kind, default, SeccompAction::Allow, grouped.all));
    }
    // Reversed: on equal precedence the most recently installed filter's value wins.
    for (action, rules) in grouped.by_action.into_iter().rev() {
        if !rules.is_empty() {
            let may_refuse = rules.mentions(seccomp_nr);
            let kind = FilterKind::Rules(action.clone());
            planned.push((may_refuse, kind, SeccompAction::Allow, action, rules));
        }
    }
    // Installing each next filter is a seccomp(2) call that the installed ones already see:
    // those that may refuse it go last (the sort is stable).
    planned.sort_by_key(|(may_refuse, ..)| *may_refuse);

    let mut filters = Vec::with_capacity(planned.len() + 1);
    if !planned.is_empty() {
        if let Some(guard) = x32_guard() {
            filters.push((FilterKind::X32Guard, guard));
        }
    }
    for (_, kind, mismatch, matched, rules) in planned {
        let program = SeccompFilter::new(rules.into_map(), mismatch, matched, target)
            .and_then(BpfProgram::try_from)
            .map_err(|source| SeccompError::Build { filter: kind.clone(), source })?;
        filters.push((kind, program));
    }
    Ok(filters)
}

/// Kills syscalls numbered with the x32 bit, which seccompiler's arch check lets through.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Option<BpfProgram> {
    use seccompiler::sock_filter;
    // Opcodes of <linux/bpf_common.h>; seccompiler keeps its own copies private.
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    Some(vec![
        insn(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        insn(JGE_K, 0, 2, X32_SYSCALL_BIT),
        // nr -1 is a tracer skipping the syscall, not x32 (libseccomp lets it pass too).
        insn(JEQ_K, 1, 0, u32::MAX),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn x32_guard() -> Option<BpfProgram> {
    None
}

#[cfg(test)]
mod tests {
    //! Compiled programs are checked by running them through a small classic-BPF interpreter
    //! that combines filters as the kernel does. Real installation in a forked child is tested
    //! in `crate::sys::seccomp` (it needs `unsafe`).

    use super::*;
    use seccompiler::sock_filter;

    fn spec(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn nr(sysno: Sysno) -> u32 {
        sysno.id() as u32
    }

    /// Runs one filter on a `struct seccomp_data` (nr, arch, ip, args[6]).
    fn run(filter: &[sock_filter], data: &[u8; 64]) -> u32 {
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let insn = &filter[pc];
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { insn.jt } else { insn.jf });
            match insn.code {
                0x20 => {
                    let at = insn.k as usize;
                    acc = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => acc &= insn.k,
                0x05 => pc += insn.k as usize,
                0x15 => pc += jump(acc == insn.k),
                0x25 => pc += jump(acc > insn.k),
                0x35 => pc += jump(acc >= insn.k),
                0x06 => return insn.k,
                code => panic!("unexpected BPF opcode {code:#x}"),
            }
        }
    }

    /// The kernel's verdict: every filter runs, newest first, and a result replaces the
    /// current one only with a strictly higher precedence (lower signed action).
    fn verdict_for_arch(program: &SeccompProgram, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let precedence = |ret: u32| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32;
        let mut verdict = libc::SECCOMP_RET_ALLOW;
        for (_, filter) in program.filters.iter().rev() {
            let ret = run(filter, &data);
            if precedence(ret) < precedence(verdict) {
                verdict = ret;
            }
        }
        verdict
    }

    /// The OCI value of the native arch is its AUDIT_ARCH_* value.
    fn verdict(program: &SeccompProgram, nr: u32, args: [u64; 6]) -> u32 {
        verdict_for_arch(program, HOST.unwrap().arch as u32, nr, args)
    }

    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    fn errno(errno: i32) -> u32 {
        libc::SECCOMP_RET_ERRNO | errno as u32
    }

    /// Filter kinds, without the arch-specific x32 guard.
    fn kinds(program: &SeccompProgram) -> Vec<FilterKind> {
        let kinds = program.filters.iter().map(|(kind, _)| kind.clone());
        kinds.filter(|kind| *kind != FilterKind::X32Guard).collect()
    }

    const DOCKER_LIKE: &str = r#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                          "SCMP_ARCH_AARCH64", "SCMP_ARCH_RISCV64"],
        "syscalls": [
            {"names": ["read", "write", "getcwd", "exit_group", "socketcall",
                       "arm_fadvise64_64", "seccomp"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }"#;

    #[test]
    fn docker_like_profile() {
        let program = compile(&spec(DOCKER_LIKE)).expect("compiles");
        assert_eq!(
            kinds(&program),
            [FilterKind::Default(SeccompAction::Errno(1)), FilterKind::Rules(SeccompAction::Errno(38)),]
        );
        assert_eq!(verdict(&program, nr(Sysno::read), [0; 6]), ALLOW);
        assert_eq!(verdict(&program, nr(Sysno::mount), [0; 6]), errno(libc::EPERM));
        assert_eq!(verdict(&program, nr(Sysno::clone3), [0; 6]), errno(libc::ENOSYS));
        assert_eq!(verdict(&program, nr(Sysno::personality), [8, 0, 0, 0, 0, 0]), ALLOW);
        let bad_persona = verdict(&program, nr(Sysno::personality), [1, 0, 0, 0, 0, 0]);
        assert_eq!(bad_persona, errno(libc::EPERM));
        // Foreign ABIs hit seccompiler's arch check (0x40000003: AUDIT_ARCH_I386).
        assert_eq!(verdict_for_arch(&program, 0x4000_0003, 3, [0; 6]), KILL_PROCESS);
    }

    /// The profile tenants get: Docker's semantics for Docker's default capabilities.
    #[test]
    fn tenant_profile_keeps_docker_semantics() {
        let program = compile(&spec(warren_config::TENANT_SECCOMP)).expect("compiles");
        for allowed in [Sysno::read, Sysno::openat, Sysno::chroot, Sysno::ptrace] {
            assert_eq!(verdict(&program, nr(allowed), [0; 6]), ALLOW, "{allowed}");
        }
        let denied = [
            Sysno::mount,
            Sysno::umount2,
            Sysno::unshare,
            Sysno::setns,
            Sysno::keyctl,
            Sysno::add_key,
            Sysno::bpf,
            Sysno::reboot,
            Sysno::init_module,
            Sysno::kexec_load,
            Sysno::open_tree,
            Sysno::fsopen,
            Sysno::userfaultfd,
            Sysno::perf_event_open,
            Sysno::settimeofday,
            Sysno::io_uring_setup,
        ];
        for call in denied {
            assert_eq!(verdict(&program, nr(call), [0; 6]), errno(libc::EPERM), "{call}");
        }
        assert_eq!(verdict(&program, nr(Sysno::clone3), [0; 6]), errno(libc::ENOSYS));
        let clone = nr(Sysno::clone);
        let sigchld = libc::SIGCHLD as u64;
        assert_eq!(verdict(&program, clone, [sigchld, 0, 0, 0, 0, 0]), ALLOW);
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(verdict(&program, clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        let newuser = libc::CLONE_NEWUSER as u64 | sigchld;
        assert_eq!(verdict(&program, clone, [newuser, 0, 0, 0, 0, 0]), errno(libc::EPERM));
        let persona = nr(Sysno::personality);
        assert_eq!(verdict(&program, persona, [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(verdict(&program, persona, [0x0040_0000, 0, 0, 0, 0, 0]), errno(libc::EPERM));
    }

    #[test]
    fn masked_eq_compares_masked_argument_with_value_two() {
        let program = compile(&spec(DOCKER_LIKE)).expect("compiles");
        let clone = nr(Sysno::clone);
        let sigchld = libc::SIGCHLD as u64;
        let newns = libc::CLONE_NEWNS as u64;
        assert_eq!(verdict(&program, clone, [sigchld, 0, 0, 0, 0, 0]), ALLOW);
        let denied = verdict(&program, clone, [newns | sigchld, 0, 0, 0, 0, 0]);
        assert_eq!(denied, errno(libc::EPERM));
        // High half of the 64-bit argument is compared too.
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "args": [
                   {"index": 1, "value": 18446744069414584320, "valueTwo": 4294967296,
                    "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .expect("compiles");
        let getcwd = nr(Sysno::getcwd);
        assert_eq!(verdict(&program, getcwd, [0, 1 << 32, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(verdict(&program, getcwd, [0, (1 << 32) | 7, 0, 0, 0, 0]), errno(libc::EPERM));
        assert_eq!(verdict(&program, getcwd, [0, 2 << 32, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn masked_eq_with_value_two_outside_mask_never_matches() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "args": [
                   {"index": 0, "value": 255, "valueTwo": 256, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
        ))
        .expect("compiles");
        assert!(program.is_empty());
    }

    #[test]
    fn conditions_are_64_bit_and_anded() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["getcwd"], "action": "SCMP_ACT_KILL_PROCESS", "args": [
                   {"index": 0, "value": 4294967296, "op": "SCMP_CMP_GE"},
                   {"index": 1, "value": 10, "op": "SCMP_CMP_NE"}]}]}"#,
        ))
        .expect("compiles");
        let getcwd = nr(Sysno::getcwd);
        assert_eq!(verdict(&program, getcwd, [1 << 32, 11, 0, 0, 0, 0]), KILL_PROCESS);
        assert_eq!(verdict(&program, getcwd, [1 << 32, 10, 0, 0, 0, 0]), ALLOW);
        assert_eq!(verdict(&program, getcwd, [u32::MAX as u64, 11, 0, 0, 0, 0]), ALLOW);
    }

    #[test]
    fn default_allow_with_errno_rule() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["mount", "umount2"], "action": "SCMP_ACT_ERRNO"},
                 {"names": ["getcwd"], "action": "SCMP_ACT_ALLOW"}]}"#,
        ))
        .expect("compiles");
        let expected = [FilterKind::Rules(SeccompAction::Errno(libc::EPERM as u32))];
        assert_eq!(kinds(&program), expected);
        assert_eq!(verdict(&program, nr(Sysno::mount), [0; 6]), errno(libc::EPERM));
        assert_eq!(verdict(&program, nr(Sysno::umount2), [0; 6]), errno(libc::EPERM));
        assert_eq!(verdict(&program, nr(Sysno::getcwd), [0; 6]), ALLOW);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_are_killed() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}"#,
        ))
        .expect("compiles");
        let x32_mount = nr(Sysno::mount) | 0x4000_0000;
        assert_eq!(verdict(&program, x32_mount, [0; 6]), KILL_PROCESS);
        assert_eq!(verdict(&program, u32::MAX, [0; 6]), ALLOW);
    }

    #[test]
    fn allow_everything_compiles_to_nothing() {
        let program = compile(&spec(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#)).expect("compiles");
        assert!(program.is_empty());
        // Safe to call in the test process only because there is nothing to install.
        program.install().expect("nothing to install");
    }

    #[test]
    fn unknown_syscall_names_are_skipped() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["no_such_syscall", "socketcall"], "action": "SCMP_ACT_KILL"},
                 {"names": ["no_such_syscall", "getcwd"], "action": "SCMP_ACT_TRAP"}]}"#,
        ))
        .expect("compiles");
        assert_eq!(kinds(&program), [FilterKind::Rules(SeccompAction::Trap)]);
        let trap = libc::SECCOMP_RET_TRAP;
        assert_eq!(verdict(&program, nr(Sysno::getcwd), [0; 6]), trap);
    }

    #[test]
    fn notify_is_refused_naming_the_rule() {
        let err = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                 {"names": ["getcwd"], "action": "SCMP_ACT_ALLOW"},
                 {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
                 {"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"seccomp: syscalls[3] (names ["mount"]): action SCMP_ACT_NOTIFY is not supported"#
        );
        let err = compile(&spec(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#)).unwrap_err();
        assert!(matches!(err, SeccompError::UnsupportedAction { site: SpecSite::DefaultAction, .. }));
        let err =
            compile(&spec(r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#)).unwrap_err();
        assert!(matches!(err, SeccompError::ListenerPathUnsupported { .. }));
    }

    #[test]
    fn flags_map_to_kernel_bits_and_unknown_flags_are_refused() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
        ))
        .expect("compiles");
        assert_eq!(program.flags, 0b111);
        assert_eq!(flag_bits("SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV").unwrap(), 1 << 5);
        let err = flag_bits("SECCOMP_FILTER_FLAG_BOGUS").unwrap_err();
        assert_eq!(err.to_string(), "seccomp: flags: unknown flag SECCOMP_FILTER_FLAG_BOGUS");
        // oci-spec's closed enum already refuses unknown names when the spec is parsed.
        let parsed = serde_json::from_str::<LinuxSeccomp>(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]}"#,
        );
        assert!(parsed.is_err());
    }

    #[test]
    fn invalid_fields_are_refused_naming_them() {
        let err = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
                 "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err();
        let expected = r#"seccomp: syscalls[0] (names ["read"]): args[0]: index 6 is not a syscall argument (0..=5)"#;
        assert_eq!(err.to_string(), expected);
        let err = compile(&spec(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}"#)).unwrap_err();
        assert!(matches!(err, SeccompError::ErrnoOutOfRange { value: 65536, .. }));
        let err = compile(&spec(r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_PPC64LE"]}"#))
            .unwrap_err();
        assert!(matches!(err, SeccompError::HostArchNotListed { .. }), "{err}");
    }

    /// A default filter that refuses seccomp(2) would block installing the filters after it.
    #[test]
    fn filters_that_may_refuse_seccomp_are_installed_last() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                 {"names": ["getcwd"], "action": "SCMP_ACT_ALLOW"},
                 {"names": ["mount"], "action": "SCMP_ACT_KILL_PROCESS"},
                 {"names": ["umount2"], "action": "SCMP_ACT_TRAP"}]}"#,
        ))
        .expect("compiles");
        let expected = [
            FilterKind::Rules(SeccompAction::Trap),
            FilterKind::Rules(SeccompAction::KillProcess),
            FilterKind::Default(SeccompAction::Errno(libc::EPERM as u32)),
        ];
        assert_eq!(kinds(&program), expected);
    }

    /// runc drops rules repeating the default action; and the first-listed of two
    /// equal-precedence actions wins.
    #[test]
    fn default_action_rules_dropped_and_first_listed_errno_wins() {
        let program = compile(&spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                 {"names": ["getcwd"], "action": "SCMP_ACT_ALLOW"},
                 {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                 {"names": ["mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
        ))
        .expect("compiles");
        assert_eq!(kinds(&program).len(), 2);
        assert_eq!(verdict(&program, nr(Sysno::mount), [0; 6]), errno(libc::EACCES));
        assert_eq!(verdict(&program, nr(Sysno::getcwd), [0; 6]), ALLOW);
    }
}
