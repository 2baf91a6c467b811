//! memory: limit, reservation, swap, swappiness, the OOM killer and (v1) the kernel TCP limit.
//!
//! OCI's `swap` is the limit of memory and swap together (v1's memsw); v2 limits swap alone,
//! so there it becomes swap - limit.

use std::path::Path;

use oci_spec::runtime::LinuxMemory;

use super::{fs, invalid, nonzero, read_u64, set, CgroupError, Dir, Setting};

pub const LIMIT: &str = "linux.resources.memory.limit";
pub const RESERVATION: &str = "linux.resources.memory.reservation";
pub const SWAP: &str = "linux.resources.memory.swap";
pub const SWAPPINESS: &str = "linux.resources.memory.swappiness";
pub const DISABLE_OOM_KILLER: &str = "linux.resources.memory.disableOOMKiller";
pub const KERNEL: &str = "linux.resources.memory.kernel";
pub const KERNEL_TCP: &str = "linux.resources.memory.kernelTCP";
pub const USE_HIERARCHY: &str = "linux.resources.memory.useHierarchy";

const MEMSW: &str = "memory.memsw.limit_in_bytes";
const KMEM_TCP: &str = "memory.kmem.tcp.limit_in_bytes";

/// The first field the resources set that is written somewhere, if any. `kernel` and
/// `useHierarchy` are never written (see [`warn_ignored`]).
pub fn first_set(mem: &LinuxMemory) -> Option<&'static str> {
    [
        (nonzero(mem.limit()).is_some(), LIMIT),
        (nonzero(mem.reservation()).is_some(), RESERVATION),
        (nonzero(mem.swap()).is_some(), SWAP),
        (mem.swappiness().is_some(), SWAPPINESS),
        (mem.disable_oom_killer() == Some(true), DISABLE_OOM_KILLER),
        (nonzero(mem.kernel_tcp()).is_some(), KERNEL_TCP),
    ]
    .into_iter()
    .find_map(|(is_set, field)| is_set.then_some(field))
}

pub fn validate(mem: &LinuxMemory, dir: Dir) -> Result<(), CgroupError> {
    let limits =
        [(LIMIT, mem.limit()), (RESERVATION, mem.reservation()), (SWAP, mem.swap()), (KERNEL_TCP, mem.kernel_tcp())];
    for (field, value) in limits {
        if let Some(value) = value.filter(|v| *v < -1) {
            return Err(invalid(field, value, "is negative (-1 means unlimited)"));
        }
    }
    if let Some(swappiness) = mem.swappiness().filter(|s| *s > 100) {
        return Err(invalid(SWAPPINESS, swappiness, "is above 100"));
    }
    validate_swap(mem, dir)?;
    if let Some(tcp) = nonzero(mem.kernel_tcp()).filter(|_| !dir.is_v2() && !dir.has(KMEM_TCP)) {
        return Err(invalid(KERNEL_TCP, tcp, "is not supported by this kernel (no memory.kmem.tcp.limit_in_bytes)"));
    }
    if mem.check_before_update() == Some(true) {
        check_usage(mem, dir)
    } else {
        check_held(mem, dir)
    }
}

/// A swap limit (other than unlimited) needs a memory limit no larger, and a kernel that
/// accounts swap; v2 without swap accounting takes "no swap" (swap == limit) as runc does.
fn validate_swap(mem: &LinuxMemory, dir: Dir) -> Result<(), CgroupError> {
    let Some(swap) = nonzero(mem.swap()).filter(|s| *s != -1) else {
        return Ok(());
    };
    let limit = match nonzero(mem.limit()) {
        None | Some(-1) => {
            return Err(invalid(SWAP, swap, "needs a memory limit (swap counts memory and swap together)"))
        }
        Some(limit) if swap < limit => {
            return Err(invalid(SWAP, swap, "is below the memory limit (swap counts memory and swap together)"))
        }
        Some(limit) => limit,
    };
    let file = if dir.is_v2() { "memory.swap.max" } else { MEMSW };
    let no_swap_on_v2 = dir.is_v2() && swap == limit;
    if !dir.has(file) && !no_swap_on_v2 {
        return Err(invalid(SWAP, swap, "cannot be set: the kernel does not account swap"));
    }
    Ok(())
}

/// checkBeforeUpdate: refuses a limit below what the cgroup already uses, which the kernel
/// would meet by reclaiming or OOM-killing.
fn check_usage(mem: &LinuxMemory, dir: Dir) -> Result<(), CgroupError> {
    let Some(limit) = mem.limit().filter(|l| *l > 0) else {
        return Ok(());
    };
    let path = dir.path().join(if dir.is_v2() { "memory.current" } else { "memory.usage_in_bytes" });
    let usage = read_u64(&path)?;
    if limit.unsigned_abs() < usage {
        return Err(CgroupError::BelowUsage { field: LIMIT, limit, usage, path });
    }
    Ok(())
}

/// Without checkBeforeUpdate, a limit may still not go below what the cgroup holds that the
/// kernel cannot reclaim: its usage less its file cache (anonymous memory, tmpfs and kernel
/// memory stay). v1 would fail the write after a reclaim pass, v2 would OOM-kill the
/// container; neither is what an operator lowering a limit means. Swap is not counted on: a
/// tenant's plan is not met by pushing it into swap. Matters for updates: a new cgroup holds
/// (next to) nothing, and a cgroup without the usage file (a fake one) has nothing to check.
fn check_held(mem: &LinuxMemory, dir: Dir) -> Result<(), CgroupError> {
    let Some(limit) = mem.limit().filter(|l| *l > 0) else {
        return Ok(());
    };
    let (usage_file, cache_keys) = if dir.is_v2() {
        ("memory.current", ["active_file", "inactive_file"])
    } else {
        ("memory.usage_in_bytes", ["total_active_file", "total_inactive_file"])
    };
    let path = dir.path().join(usage_file);
    if !path.exists() {
        return Ok(());
    }
    let usage = read_u64(&path)?;
    if limit.unsigned_abs() >= usage {
        return Ok(());
    }
    let stat = fs::read(&dir.path().join("memory.stat"))?;
    let cache: u64 = cache_keys.iter().filter_map(|key| stat_value(&stat, key)).sum();
    let held = usage.saturating_sub(cache);
    if limit.unsigned_abs() < held {
        return Err(CgroupError::BelowHeld { field: LIMIT, limit, held, usage, path });
    }
    Ok(())
}

/// The value of `key` in memory.stat ("key value" lines).
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn apply_v1(mem: &LinuxMemory, dir: &Path) -> Result<(), CgroupError> {
    warn_ignored(mem, false);
    for s in v1_writes(mem, dir)? {
        set(dir, s.file, &s.value, s.field)?;
    }
    Ok(())
}

/// The v1 writes, in order. -1 (unlimited) is written as is: v1 takes it.
pub fn v1_writes(mem: &LinuxMemory, dir: &Path) -> Result<Vec<Setting>, CgroupError> {
    let limit = nonzero(mem.limit());
    // As runc: unlimited memory with no swap setting means unlimited memory+swap too, or the
    // old memsw limit would go on capping memory. Without swap accounting only -1 got past
    // validate: nothing to write then.
    let swap = match nonzero(mem.swap()) {
        None if limit == Some(-1) => Some(-1),
        swap => swap,
    }
    .filter(|_| dir.join(MEMSW).exists());
    let limit_write = limit.map(|l| Setting::new("memory.limit_in_bytes", l, LIMIT));
    let swap_write = swap.map(|s| Setting::new(MEMSW, s, SWAP));
    let mut writes: Vec<Setting> = if memsw_first(dir, limit, swap)? {
        swap_write.into_iter().chain(limit_write).collect()
    } else {
        limit_write.into_iter().chain(swap_write).collect()
    };
    if let Some(reservation) = nonzero(mem.reservation()) {
        writes.push(Setting::new("memory.soft_limit_in_bytes", reservation, RESERVATION));
    }
    if let Some(swappiness) = mem.swappiness() {
        writes.push(Setting::new("memory.swappiness", swappiness, SWAPPINESS));
    }
    if mem.disable_oom_killer() == Some(true) {
        writes.push(Setting::new("memory.oom_control", 1, DISABLE_OOM_KILLER));
    }
    if let Some(tcp) = nonzero(mem.kernel_tcp()) {
        writes.push(Setting::new(KMEM_TCP, tcp, KERNEL_TCP));
    }
    Ok(writes)
}

/// The kernel keeps memory.limit_in_bytes <= memory.memsw.limit_in_bytes after every write:
/// a new limit above the current memsw one has to wait until memsw is raised; otherwise
/// memory goes first, so that memsw may then drop below the old memory limit (as runc does).
fn memsw_first(dir: &Path, limit: Option<i64>, swap: Option<i64>) -> Result<bool, CgroupError> {
    let (Some(limit), Some(_)) = (limit, swap) else {
        return Ok(false);
    };
    let current_memsw = read_u64(&dir.join(MEMSW))?;
    // -1: unlimited, above any current value.
    Ok(u64::try_from(limit).unwrap_or(u64::MAX) > current_memsw)
}

/// v2: memory.swap.max, memory.max, memory.low ("max" for unlimited).
pub fn apply_v2(mem: &LinuxMemory, dir: &Path) -> Result<(), CgroupError> {
    warn_ignored(mem, true);
    if let Some(swap) = swap_v2(mem.limit(), mem.swap()) {
        // Without swap accounting there is no swap to limit: "max" and "0" are moot (runc).
        if dir.join("memory.swap.max").exists() || (swap != "max" && swap != "0") {
            set(dir, "memory.swap.max", &swap, SWAP)?;
        }
    }
    if let Some(limit) = nonzero(mem.limit()) {
        set(dir, "memory.max", &v2_value(limit), LIMIT)?;
    }
    if let Some(reservation) = nonzero(mem.reservation()) {
        set(dir, "memory.low", &v2_value(reservation), RESERVATION)?;
    }
    Ok(())
}

/// memory.swap.max from OCI's memory+swap limit, as runc converts it: swap - limit; "max"
/// for unlimited swap, or for unlimited memory with swap unset (as on v1). None: unset (or
/// refused by [`validate`]).
pub fn swap_v2(limit: Option<i64>, swap: Option<i64>) -> Option<String> {
    match (nonzero(limit), nonzero(swap)) {
        (Some(-1), None) | (_, Some(-1)) => Some("max".to_string()),
        (Some(limit), Some(swap)) if limit > 0 && swap >= limit => Some((swap - limit).to_string()),
        _ => None,
    }
}

fn v2_value(bytes: i64) -> String {
    if bytes < 0 {
        "max".to_string()
    } else {
        bytes.to_string()
    }
}

/// Fields accepted but not written: kernel memory limits are deprecated (gone from v2, no-ops
/// in recent v1 kernels), modern kernels are always hierarchical, and v2 has no swappiness,
/// OOM-killer switch or TCP limit.
fn warn_ignored(mem: &LinuxMemory, v2: bool) {
    let ignored = [
        (nonzero(mem.kernel()).is_some(), KERNEL),
        (mem.use_hierarchy() == Some(false), USE_HIERARCHY),
        (v2 && mem.swappiness().is_some(), SWAPPINESS),
        (v2 && mem.disable_oom_killer() == Some(true), DISABLE_OOM_KILLER),
        (v2 && nonzero(mem.kernel_tcp()).is_some(), KERNEL_TCP),
    ];
    for (_, field) in ignored.iter().filter(|(is_set, _)| *is_set) {
        log::warn!("{field} is ignored: not supported on this cgroup version or kernel");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxMemoryBuilder;
    use std::fs::{read_to_string, write};

    const MIB: i64 = 1 << 20;
    /// What the kernel shows for "unlimited".
    const UNLIMITED: &str = "9223372036854771712\n";

    fn fake_v1(memsw: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for file in ["memory.limit_in_bytes", MEMSW] {
            write(tmp.path().join(file), memsw).unwrap();
        }
        for file in ["memory.soft_limit_in_bytes", "memory.swappiness", "memory.oom_control", KMEM_TCP] {
            write(tmp.path().join(file), "").unwrap();
        }
        write(tmp.path().join("memory.usage_in_bytes"), format!("{}\n", 10 * MIB)).unwrap();
        tmp
    }

    fn order(writes: &[Setting]) -> Vec<(&str, &str)> {
        writes.iter().map(|s| (s.file, s.value.as_str())).collect()
    }

    #[test]
    fn v1_raising_past_memsw_writes_memsw_first() {
        let tmp = fake_v1(&format!("{}\n", 128 * MIB));
        let raise = LinuxMemoryBuilder::default().limit(256 * MIB).swap(512 * MIB).build().unwrap();
        let writes = v1_writes(&raise, tmp.path()).unwrap();
        assert_eq!(order(&writes), [(MEMSW, "536870912"), ("memory.limit_in_bytes", "268435456")]);
        let lower = LinuxMemoryBuilder::default().limit(64 * MIB).swap(96 * MIB).build().unwrap();
        let writes = v1_writes(&lower, tmp.path()).unwrap();
        assert_eq!(order(&writes), [("memory.limit_in_bytes", "67108864"), (MEMSW, "100663296")]);
        // Equal to the current memsw limit: memory first is fine.
        let equal = LinuxMemoryBuilder::default().limit(128 * MIB).swap(-1).build().unwrap();
        assert_eq!(order(&v1_writes(&equal, tmp.path()).unwrap())[0].0, "memory.limit_in_bytes");
    }

    #[test]
    fn v1_unlimited_memory_means_unlimited_swap() {
        let tmp = fake_v1(&format!("{}\n", 128 * MIB));
        let unlimited = LinuxMemoryBuilder::default().limit(-1).build().unwrap();
        let writes = v1_writes(&unlimited, tmp.path()).unwrap();
        assert_eq!(order(&writes), [(MEMSW, "-1"), ("memory.limit_in_bytes", "-1")]);
        // Without swap accounting there is no memsw to write.
        std::fs::remove_file(tmp.path().join(MEMSW)).unwrap();
        assert_eq!(order(&v1_writes(&unlimited, tmp.path()).unwrap()), [("memory.limit_in_bytes", "-1")]);
    }

    #[test]
    fn v1_writes_every_field() {
        let tmp = fake_v1(UNLIMITED);
        let mem = LinuxMemoryBuilder::default()
            .limit(64 * MIB)
            .reservation(32 * MIB)
            .swap(128 * MIB)
            .swappiness(10u64)
            .disable_oom_killer(true)
            .kernel_tcp(16 * MIB)
            .kernel(MIB)
            .build()
            .unwrap();
        validate(&mem, Dir::V1(tmp.path())).unwrap();
        apply_v1(&mem, tmp.path()).unwrap();
        let read = |file: &str| read_to_string(tmp.path().join(file)).unwrap();
        assert_eq!(read("memory.limit_in_bytes"), "67108864\n");
        assert_eq!(read(MEMSW), "134217728\n");
        assert_eq!(read("memory.soft_limit_in_bytes"), "33554432\n");
        assert_eq!(read("memory.swappiness"), "10\n");
        assert_eq!(read("memory.oom_control"), "1\n");
        assert_eq!(read(KMEM_TCP), "16777216\n");
    }

    #[test]
    fn v2_swap_is_derived_from_the_total() {
        assert_eq!(swap_v2(Some(64 * MIB), Some(96 * MIB)).as_deref(), Some("33554432"));
        assert_eq!(swap_v2(Some(64 * MIB), Some(64 * MIB)).as_deref(), Some("0"));
        assert_eq!(swap_v2(Some(64 * MIB), Some(-1)).as_deref(), Some("max"));
        assert_eq!(swap_v2(Some(-1), None).as_deref(), Some("max"));
        assert_eq!(swap_v2(Some(64 * MIB), None), None);
        assert_eq!(swap_v2(None, None), None);
    }

    #[test]
    fn v2_writes_max_low_and_swap() {
        let tmp = tempfile::tempdir().unwrap();
        for file in ["memory.max", "memory.low", "memory.swap.max"] {
            write(tmp.path().join(file), "max\n").unwrap();
        }
        let mem = LinuxMemoryBuilder::default().limit(64 * MIB).reservation(-1).swap(80 * MIB).build().unwrap();
        validate(&mem, Dir::V2(tmp.path())).unwrap();
        apply_v2(&mem, tmp.path()).unwrap();
        let read = |file: &str| read_to_string(tmp.path().join(file)).unwrap();
        assert_eq!(read("memory.max"), "67108864\n");
        assert_eq!(read("memory.low"), "max\n");
        assert_eq!(read("memory.swap.max"), "16777216\n");
        let unlimited = LinuxMemoryBuilder::default().limit(-1).build().unwrap();
        apply_v2(&unlimited, tmp.path()).unwrap();
        assert_eq!(read("memory.max"), "max\n");
        assert_eq!(read("memory.swap.max"), "max\n");
    }

    #[test]
    fn v2_without_swap_accounting_takes_no_swap_only() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path().join("memory.max"), "max\n").unwrap();
        let no_swap = LinuxMemoryBuilder::default().limit(64 * MIB).swap(64 * MIB).build().unwrap();
        validate(&no_swap, Dir::V2(tmp.path())).unwrap();
        apply_v2(&no_swap, tmp.path()).unwrap();
        assert!(!tmp.path().join("memory.swap.max").exists());
        let some_swap = LinuxMemoryBuilder::default().limit(64 * MIB).swap(65 * MIB).build().unwrap();
        let err = validate(&some_swap, Dir::V2(tmp.path())).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.memory.swap: 68157440 cannot be set"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let tmp = fake_v1(UNLIMITED);
        let dir = Dir::V1(tmp.path());
        let cases = [
            (LinuxMemoryBuilder::default().swap(MIB), "linux.resources.memory.swap: 1048576 needs a memory limit"),
            (LinuxMemoryBuilder::default().limit(-1).swap(MIB), "linux.resources.memory.swap: 1048576 needs"),
            (LinuxMemoryBuilder::default().limit(2 * MIB).swap(MIB), "linux.resources.memory.swap: 1048576 is below"),
            (LinuxMemoryBuilder::default().limit(-2), "linux.resources.memory.limit: -2 is negative"),
            (LinuxMemoryBuilder::default().reservation(-7), "linux.resources.memory.reservation: -7"),
            (LinuxMemoryBuilder::default().swappiness(101u64), "linux.resources.memory.swappiness: 101 is above 100"),
            (
                LinuxMemoryBuilder::default().limit(MIB).check_before_update(true),
                "linux.resources.memory.limit: 1048576 is below the current usage of 10485760 bytes",
            ),
        ];
        for (builder, expected) in cases {
            let err = validate(&builder.build().unwrap(), dir).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
        // Swap -1 alone is fine; a limit above the usage passes checkBeforeUpdate.
        validate(&LinuxMemoryBuilder::default().swap(-1).build().unwrap(), dir).unwrap();
        let above = LinuxMemoryBuilder::default().limit(20 * MIB).check_before_update(true).build().unwrap();
        validate(&above, dir).unwrap();
    }

    /// A v1 fake holding 40 MiB of which 24 MiB are file cache (16 MiB cannot be reclaimed).
    fn fake_held(v2: bool) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let (usage, prefix) = if v2 { ("memory.current", "") } else { ("memory.usage_in_bytes", "total_") };
        write(tmp.path().join(usage), format!("{}\n", 40 * MIB)).unwrap();
        let stat = format!(
            "{prefix}anon 1\n{prefix}active_file {}\n{prefix}inactive_file {}\n{prefix}unevictable 0\n",
            16 * MIB,
            8 * MIB
        );
        write(tmp.path().join("memory.stat"), stat).unwrap();
        tmp
    }

    #[test]
    fn limit_below_what_cannot_be_reclaimed_is_refused() {
        for v2 in [false, true] {
            let tmp = fake_held(v2);
            let dir = if v2 { Dir::V2(tmp.path()) } else { Dir::V1(tmp.path()) };
            let limit = |bytes: i64| LinuxMemoryBuilder::default().limit(bytes).build().unwrap();
            let err = validate(&limit(16 * MIB - 1), dir).unwrap_err();
            let expected = format!(
                "linux.resources.memory.limit: {} is below the {} bytes the container holds that the kernel \
                 cannot reclaim (usage {} less file cache",
                16 * MIB - 1,
                16 * MIB,
                40 * MIB
            );
            assert!(err.to_string().starts_with(&expected), "{err}");
            // Down to what cannot be reclaimed, the kernel can make room by dropping cache.
            validate(&limit(16 * MIB), dir).unwrap();
            validate(&limit(-1), dir).unwrap();
            // checkBeforeUpdate: not below the usage, cache included.
            let checked = LinuxMemoryBuilder::default().limit(32 * MIB).check_before_update(true).build().unwrap();
            assert!(matches!(validate(&checked, dir), Err(CgroupError::BelowUsage { usage, .. }) if usage == 40 << 20));
        }
    }
}
