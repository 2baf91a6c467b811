//! cpu: CFS weight (v1 shares), bandwidth (quota, period, burst), idle, and v1 real-time
//! bandwidth. cpuset.* lives in [`super::cpuset`].

use std::ops::RangeInclusive;
use std::path::Path;

use oci_spec::runtime::LinuxCpu;

use super::{invalid, nonzero, set, set_all_retrying, CgroupError, Dir, Setting};

pub const SHARES: &str = "linux.resources.cpu.shares";
pub const QUOTA: &str = "linux.resources.cpu.quota";
pub const PERIOD: &str = "linux.resources.cpu.period";
pub const BURST: &str = "linux.resources.cpu.burst";
pub const IDLE: &str = "linux.resources.cpu.idle";
pub const RT_RUNTIME: &str = "linux.resources.cpu.realtimeRuntime";
pub const RT_PERIOD: &str = "linux.resources.cpu.realtimePeriod";

/// The kernel's bounds: v1 clamps shares to these (we refuse instead of letting a value
/// silently change), and runc's v2 weight conversion is only defined on them.
const SHARES_RANGE: RangeInclusive<u64> = 2..=262_144;
/// The kernel refuses a CFS quota below 1 ms and a period outside 1 ms..1 s.
const MIN_QUOTA: i64 = 1000;
const PERIOD_RANGE: RangeInclusive<u64> = 1000..=1_000_000;
/// The kernel's default period, for v2 cpu.max when only the quota is given.
const DEFAULT_PERIOD: u64 = 100_000;

/// The first field (cpuset ones aside) the resources set, if any; None: nothing to do.
pub fn first_set(cpu: &LinuxCpu) -> Option<&'static str> {
    [
        (nonzero(cpu.shares()).is_some(), SHARES),
        (nonzero(cpu.quota()).is_some(), QUOTA),
        (nonzero(cpu.period()).is_some(), PERIOD),
        (cpu.burst().is_some(), BURST),
        (cpu.idle().is_some(), IDLE),
        (nonzero(cpu.realtime_runtime()).is_some(), RT_RUNTIME),
        (nonzero(cpu.realtime_period()).is_some(), RT_PERIOD),
    ]
    .into_iter()
    .find_map(|(is_set, field)| is_set.then_some(field))
}

pub fn validate(cpu: &LinuxCpu, dir: Dir) -> Result<(), CgroupError> {
    if let Some(shares) = nonzero(cpu.shares()).filter(|s| !SHARES_RANGE.contains(s)) {
        return Err(invalid(SHARES, shares, "is outside the range 2..=262144"));
    }
    match nonzero(cpu.quota()) {
        Some(quota) if quota < -1 => return Err(invalid(QUOTA, quota, "is negative (-1 means unlimited)")),
        Some(quota) if (1..MIN_QUOTA).contains(&quota) => {
            return Err(invalid(QUOTA, quota, "is below the 1 ms minimum (1000)"))
        }
        _ => {}
    }
    if let Some(period) = nonzero(cpu.period()).filter(|p| !PERIOD_RANGE.contains(p)) {
        return Err(invalid(PERIOD, period, "is outside the range 1000..=1000000 (1 ms to 1 s)"));
    }
    match cpu.idle() {
        Some(idle) if !(0..=1).contains(&idle) => return Err(invalid(IDLE, idle, "must be 0 or 1")),
        Some(1) if !dir.has("cpu.idle") => {
            return Err(invalid(IDLE, 1, "is not supported by this kernel (no cpu.idle)"))
        }
        _ => {}
    }
    let burst_file = if dir.is_v2() { "cpu.max.burst" } else { "cpu.cfs_burst_us" };
    if let Some(burst) = nonzero(cpu.burst()).filter(|_| !dir.has(burst_file)) {
        return Err(invalid(BURST, burst, "is not supported by this kernel (no CFS burst)"));
    }
    validate_realtime(cpu, dir)
}

/// Real-time bandwidth exists only in v1, and only in kernels built with RT_GROUP_SCHED.
fn validate_realtime(cpu: &LinuxCpu, dir: Dir) -> Result<(), CgroupError> {
    let reason = if dir.is_v2() {
        "is not supported on cgroup v2"
    } else if !dir.has("cpu.rt_runtime_us") {
        "is not supported by this kernel (no cpu.rt_runtime_us)"
    } else {
        return Ok(());
    };
    if let Some(runtime) = nonzero(cpu.realtime_runtime()) {
        return Err(invalid(RT_RUNTIME, runtime, reason));
    }
    if let Some(period) = nonzero(cpu.realtime_period()) {
        return Err(invalid(RT_PERIOD, period, reason));
    }
    Ok(())
}

/// v1: cpu.shares, cpu.idle, cpu.cfs_{period,burst,quota}_us, cpu.rt_{period,runtime}_us.
pub fn apply_v1(cpu: &LinuxCpu, dir: &Path) -> Result<(), CgroupError> {
    set_weight_and_idle(dir, "cpu.shares", nonzero(cpu.shares()), cpu.idle())?;
    let mut bandwidth = Vec::new();
    if let Some(period) = nonzero(cpu.period()) {
        bandwidth.push(Setting::new("cpu.cfs_period_us", period, PERIOD));
    }
    if let Some(burst) = burst(cpu, dir, "cpu.cfs_burst_us") {
        bandwidth.push(Setting::new("cpu.cfs_burst_us", burst, BURST));
    }
    if let Some(quota) = nonzero(cpu.quota()) {
        // Any negative quota is "unlimited" to the kernel; -1 is its canonical form.
        bandwidth.push(Setting::new("cpu.cfs_quota_us", quota.max(-1), QUOTA));
    }
    set_all_retrying(dir, &bandwidth)?;
    let mut realtime = Vec::new();
    if let Some(period) = nonzero(cpu.realtime_period()) {
        realtime.push(Setting::new("cpu.rt_period_us", period, RT_PERIOD));
    }
    if let Some(runtime) = nonzero(cpu.realtime_runtime()) {
        realtime.push(Setting::new("cpu.rt_runtime_us", runtime, RT_RUNTIME));
    }
    set_all_retrying(dir, &realtime)
}

/// v2: cpu.weight (converted from shares), cpu.idle, cpu.max.burst, cpu.max.
pub fn apply_v2(cpu: &LinuxCpu, dir: &Path) -> Result<(), CgroupError> {
    set_weight_and_idle(dir, "cpu.weight", nonzero(cpu.shares()).map(shares_to_weight), cpu.idle())?;
    let mut bandwidth = Vec::new();
    if let Some(burst) = burst(cpu, dir, "cpu.max.burst") {
        bandwidth.push(Setting::new("cpu.max.burst", burst, BURST));
    }
    if let Some(max) = cpu_max(cpu) {
        let field = if nonzero(cpu.quota()).is_some() { QUOTA } else { PERIOD };
        bandwidth.push(Setting::new("cpu.max", max, field));
    }
    set_all_retrying(dir, &bandwidth)
}

/// runc's conversion of v1 shares (2..=262144) to a v2 weight (1..=10000).
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + shares.saturating_sub(2) * 9999 / 262_142
}

/// v2 cpu.max, "$quota $period", when quota or period is set: an unset or negative quota is
/// "max", an unset period the kernel's default.
pub fn cpu_max(cpu: &LinuxCpu) -> Option<String> {
    let (quota, period) = (nonzero(cpu.quota()), nonzero(cpu.period()));
    if quota.is_none() && period.is_none() {
        return None;
    }
    let quota = quota.filter(|q| *q > 0).map_or_else(|| "max".to_string(), |q| q.to_string());
    Some(format!("{quota} {}", period.unwrap_or(DEFAULT_PERIOD)))
}

/// The burst to write: a kernel without the file can only have the default, 0, which is then
/// skipped (a non-zero burst there was refused by [`validate`]).
fn burst(cpu: &LinuxCpu, dir: &Path, file: &str) -> Option<u64> {
    cpu.burst().filter(|b| *b != 0 || dir.join(file).exists())
}

/// Writes the weight and cpu.idle. The kernel refuses a weight for an idle group, so leaving
/// idle goes first and entering it last. Without cpu.idle only the default, 0, got past
/// [`validate`]: nothing to write then.
fn set_weight_and_idle(dir: &Path, file: &str, weight: Option<u64>, idle: Option<i64>) -> Result<(), CgroupError> {
    let idle = idle.filter(|_| dir.join("cpu.idle").exists());
    if idle == Some(0) {
        set(dir, "cpu.idle", "0", IDLE)?;
    }
    if let Some(weight) = weight {
        set(dir, file, &weight.to_string(), SHARES)?;
    }
    if let Some(idle) = idle.filter(|i| *i != 0) {
        set(dir, "cpu.idle", &idle.to_string(), IDLE)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxCpuBuilder;
    use std::fs::{read_to_string, write};

    fn fake(files: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for file in files {
            write(tmp.path().join(file), "").unwrap();
        }
        tmp
    }

    fn read(dir: &Path, file: &str) -> String {
        read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn shares_convert_to_weight_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(512), 20);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn cpu_max_defaults_quota_and_period() {
        let max = |quota: Option<i64>, period: Option<u64>| {
            let mut cpu = LinuxCpu::default();
            cpu.set_quota(quota).set_period(period);
            cpu_max(&cpu)
        };
        assert_eq!(max(Some(50_000), Some(200_000)).as_deref(), Some("50000 200000"));
        assert_eq!(max(Some(50_000), None).as_deref(), Some("50000 100000"));
        assert_eq!(max(Some(-1), None).as_deref(), Some("max 100000"));
        assert_eq!(max(None, Some(50_000)).as_deref(), Some("max 50000"));
        assert_eq!(max(Some(0), None), None);
        assert_eq!(max(None, None), None);
    }

    #[test]
    fn v1_writes_every_knob() {
        let (rt_period, rt_runtime) = ("cpu.rt_period_us", "cpu.rt_runtime_us");
        let files = [
            "cpu.shares",
            "cpu.idle",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.cfs_burst_us",
            rt_period,
            rt_runtime,
        ];
        let tmp = fake(&files);
        let cpu = LinuxCpuBuilder::default()
            .shares(512u64)
            .quota(50_000)
            .period(100_000u64)
            .burst(10_000u64)
            .idle(0)
            .realtime_period(1_000_000u64)
            .realtime_runtime(950_000)
            .build()
            .unwrap();
        validate(&cpu, Dir::V1(tmp.path())).unwrap();
        apply_v1(&cpu, tmp.path()).unwrap();
        let dir = tmp.path();
        assert_eq!(read(dir, "cpu.shares"), "512\n");
        assert_eq!(read(dir, "cpu.idle"), "0\n");
        assert_eq!(read(dir, "cpu.cfs_period_us"), "100000\n");
        assert_eq!(read(dir, "cpu.cfs_quota_us"), "50000\n");
        assert_eq!(read(dir, "cpu.cfs_burst_us"), "10000\n");
        assert_eq!(read(dir, rt_period), "1000000\n");
        assert_eq!(read(dir, rt_runtime), "950000\n");
    }

    #[test]
    fn v2_writes_weight_max_burst_and_idle() {
        let tmp = fake(&["cpu.weight", "cpu.max", "cpu.max.burst", "cpu.idle"]);
        let cpu = LinuxCpuBuilder::default().shares(1024u64).quota(-1).burst(0u64).idle(1).build().unwrap();
        validate(&cpu, Dir::V2(tmp.path())).unwrap();
        apply_v2(&cpu, tmp.path()).unwrap();
        assert_eq!(read(tmp.path(), "cpu.weight"), "39\n");
        assert_eq!(read(tmp.path(), "cpu.max"), "max 100000\n");
        assert_eq!(read(tmp.path(), "cpu.max.burst"), "0\n");
        assert_eq!(read(tmp.path(), "cpu.idle"), "1\n");
    }

    #[test]
    fn optional_knobs_need_their_files_unless_default() {
        let tmp = fake(&["cpu.weight", "cpu.max"]);
        let defaults = LinuxCpuBuilder::default().idle(0).burst(0u64).build().unwrap();
        validate(&defaults, Dir::V2(tmp.path())).unwrap();
        apply_v2(&defaults, tmp.path()).unwrap();
        assert!(!tmp.path().join("cpu.idle").exists());
        let idle = LinuxCpuBuilder::default().idle(1).build().unwrap();
        let err = validate(&idle, Dir::V2(tmp.path())).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.cpu.idle: 1 is not supported"), "{err}");
        let burst = LinuxCpuBuilder::default().burst(5u64).build().unwrap();
        assert!(validate(&burst, Dir::V1(tmp.path())).unwrap_err().to_string().contains(BURST));
    }

    #[test]
    fn validation_names_the_field() {
        let tmp = fake(&["cpu.idle", "cpu.max.burst"]);
        let cases: [(LinuxCpuBuilder, Dir, &str); 8] = [
            (
                LinuxCpuBuilder::default().quota(500),
                Dir::V1(tmp.path()),
                "linux.resources.cpu.quota: 500 is below the 1 ms minimum (1000)",
            ),
            (LinuxCpuBuilder::default().quota(-5), Dir::V2(tmp.path()), "linux.resources.cpu.quota: -5"),
            (
                LinuxCpuBuilder::default().period(999u64),
                Dir::V1(tmp.path()),
                "linux.resources.cpu.period: 999 is outside",
            ),
            (
                LinuxCpuBuilder::default().period(1_000_001u64),
                Dir::V2(tmp.path()),
                "linux.resources.cpu.period: 1000001",
            ),
            (LinuxCpuBuilder::default().shares(1u64), Dir::V1(tmp.path()), "linux.resources.cpu.shares: 1 is outside"),
            (LinuxCpuBuilder::default().shares(300_000u64), Dir::V2(tmp.path()), "linux.resources.cpu.shares: 300000"),
            (LinuxCpuBuilder::default().idle(2), Dir::V1(tmp.path()), "linux.resources.cpu.idle: 2 must be 0 or 1"),
            (
                LinuxCpuBuilder::default().realtime_runtime(1000),
                Dir::V2(tmp.path()),
                "linux.resources.cpu.realtimeRuntime: 1000 is not supported on cgroup v2",
            ),
        ];
        for (builder, dir, expected) in cases {
            let err = validate(&builder.build().unwrap(), dir).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
        // 1 ms exactly, the period bounds and shares bounds are fine; rt on v1 where the kernel has it too.
        let fine = LinuxCpuBuilder::default().quota(1000).period(1000u64).shares(2u64).realtime_runtime(5).build();
        let fine = fine.unwrap();
        let err = validate(&fine, Dir::V1(tmp.path())).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.cpu.realtimeRuntime: 5 is not supported by this kernel"));
        write(tmp.path().join("cpu.rt_runtime_us"), "0\n").unwrap();
        validate(&fine, Dir::V1(tmp.path())).unwrap();
        let rt_v2 = LinuxCpuBuilder::default().realtime_period(1_000_000u64).build().unwrap();
        assert!(validate(&rt_v2, Dir::V2(tmp.path())).unwrap_err().to_string().contains(RT_PERIOD));
    }
}
