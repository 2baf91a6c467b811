//! blockIO: weights and throttling. v1 blkio.* files; v2 io.weight (or io.bfq.weight) and
//! io.max.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxThrottleDevice};

use super::{add, device, invalid, nonzero, set, CgroupError, Dir};

pub const WEIGHT: &str = "linux.resources.blockIO.weight";
pub const LEAF_WEIGHT: &str = "linux.resources.blockIO.leafWeight";
pub const WEIGHT_DEVICE: &str = "linux.resources.blockIO.weightDevice";

/// The v1 weight range (CFQ's and BFQ's); v2's io.weight range 1..=10000 is converted to.
const WEIGHT_RANGE: RangeInclusive<u16> = 10..=1000;

/// One throttle list with its OCI field, v1 file and v2 io.max key.
struct Throttle<'a> {
    devices: &'a [LinuxThrottleDevice],
    field: &'static str,
    v1_file: &'static str,
    v2_key: &'static str,
}

fn list(devices: &Option<Vec<LinuxThrottleDevice>>) -> &[LinuxThrottleDevice] {
    devices.as_deref().unwrap_or(&[])
}

fn throttles(io: &LinuxBlockIo) -> [Throttle<'_>; 4] {
    [
        Throttle {
            devices: list(io.throttle_read_bps_device()),
            field: "linux.resources.blockIO.throttleReadBpsDevice",
            v1_file: "blkio.throttle.read_bps_device",
            v2_key: "rbps",
        },
        Throttle {
            devices: list(io.throttle_write_bps_device()),
            field: "linux.resources.blockIO.throttleWriteBpsDevice",
            v1_file: "blkio.throttle.write_bps_device",
            v2_key: "wbps",
        },
        Throttle {
            devices: list(io.throttle_read_iops_device()),
            field: "linux.resources.blockIO.throttleReadIOPSDevice",
            v1_file: "blkio.throttle.read_iops_device",
            v2_key: "riops",
        },
        Throttle {
            devices: list(io.throttle_write_iops_device()),
            field: "linux.resources.blockIO.throttleWriteIOPSDevice",
            v1_file: "blkio.throttle.write_iops_device",
            v2_key: "wiops",
        },
    ]
}

pub fn first_set(io: &LinuxBlockIo) -> Option<&'static str> {
    let weights = [
        (nonzero(io.weight()).is_some(), WEIGHT),
        (nonzero(io.leaf_weight()).is_some(), LEAF_WEIGHT),
        (io.weight_device().as_ref().is_some_and(|d| !d.is_empty()), WEIGHT_DEVICE),
    ];
    let throttles = throttles(io).map(|t| (!t.devices.is_empty(), t.field));
    weights.into_iter().chain(throttles).find_map(|(is_set, field)| is_set.then_some(field))
}

/// Where the kernel lists the block devices it has, as "major:minor" directories.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

pub fn validate(io: &LinuxBlockIo, dir: Dir) -> Result<(), CgroupError> {
    validate_with(io, dir, Path::new(SYS_DEV_BLOCK))
}

/// [`validate`], with the host's block devices listed in `sys_dev_block`.
fn validate_with(io: &LinuxBlockIo, dir: Dir, sys_dev_block: &Path) -> Result<(), CgroupError> {
    check_weight(WEIGHT, io.weight())?;
    check_weight(LEAF_WEIGHT, io.leaf_weight())?;
    for wd in io.weight_device().as_deref().unwrap_or(&[]) {
        known_device(wd.major(), wd.minor(), WEIGHT_DEVICE, sys_dev_block)?;
        check_weight(WEIGHT_DEVICE, wd.weight())?;
        check_weight(WEIGHT_DEVICE, wd.leaf_weight())?;
        if let Some(weight) = nonzero(wd.weight()).filter(|_| weight_device_file(dir).is_none()) {
            return Err(invalid(WEIGHT_DEVICE, weight, "cannot be set: no CFQ or BFQ weight file here"));
        }
    }
    for throttle in throttles(io) {
        for d in throttle.devices {
            known_device(d.major(), d.minor(), throttle.field, sys_dev_block)?;
        }
    }
    if let Some(weight) = nonzero(io.weight()).filter(|_| weight_file(dir).is_none()) {
        return Err(invalid(WEIGHT, weight, "cannot be set: no CFQ or BFQ weight file here"));
    }
    Ok(())
}

/// A device the weights and throttles can name: a whole disk of this host. The kernel
/// answers others, partitions included (limits apply to a disk's queue), with ENODEV.
fn known_device(major: i64, minor: i64, field: &'static str, sys_dev_block: &Path) -> Result<(), CgroupError> {
    let dev = device(major, minor, field)?;
    let entry = sys_dev_block.join(&dev);
    if !entry.exists() {
        return Err(invalid(field, dev, "is not a block device of this host (not in /sys/dev/block)"));
    }
    if entry.join("partition").exists() {
        return Err(invalid(field, dev, "is a partition: limits apply to whole disks"));
    }
    Ok(())
}

fn check_weight(field: &'static str, weight: Option<u16>) -> Result<(), CgroupError> {
    match nonzero(weight).filter(|w| !WEIGHT_RANGE.contains(w)) {
        Some(weight) => Err(invalid(field, weight, "is outside the range 10..=1000")),
        None => Ok(()),
    }
}

/// The cgroup-wide weight file: v1 blkio.weight (CFQ, gone since Linux 5.0) else BFQ's; v2
/// BFQ's when the kernel has it (it takes the v1 range as is), else io.weight.
fn weight_file(dir: Dir) -> Option<&'static str> {
    let candidates = if dir.is_v2() { ["io.bfq.weight", "io.weight"] } else { ["blkio.weight", "blkio.bfq.weight"] };
    candidates.into_iter().find(|file| dir.has(file))
}

/// The per-device weight file, in the same order of preference (v2's take "maj:min weight").
fn weight_device_file(dir: Dir) -> Option<&'static str> {
    let candidates =
        if dir.is_v2() { ["io.bfq.weight", "io.weight"] } else { ["blkio.weight_device", "blkio.bfq.weight_device"] };
    candidates.into_iter().find(|file| dir.has(file))
}

/// runc's conversion of a v1 weight (10..=1000) to a v2 io.weight (1..=10000).
pub fn weight_to_io_weight(weight: u16) -> u64 {
    1 + u64::from(weight).saturating_sub(10) * 9999 / 990
}

pub fn apply_v1(io: &LinuxBlockIo, dir: &Path) -> Result<(), CgroupError> {
    let at = Dir::V1(dir);
    if let Some(weight) = nonzero(io.weight()) {
        set(dir, weight_file(at).unwrap_or("blkio.weight"), &weight.to_string(), WEIGHT)?;
    }
    if let Some(weight) = nonzero(io.leaf_weight()) {
        set_leaf(dir, "blkio.leaf_weight", &weight.to_string())?;
    }
    for wd in io.weight_device().as_deref().unwrap_or(&[]) {
        let dev = device(wd.major(), wd.minor(), WEIGHT_DEVICE)?;
        if let Some(weight) = nonzero(wd.weight()) {
            let file = weight_device_file(at).unwrap_or("blkio.weight_device");
            add(dir, file, &format!("{dev} {weight}"), WEIGHT_DEVICE)?;
        }
        if let Some(weight) = nonzero(wd.leaf_weight()) {
            set_leaf(dir, "blkio.leaf_weight_device", &format!("{dev} {weight}"))?;
        }
    }
    for throttle in throttles(io) {
        for d in throttle.devices {
            let line = format!("{} {}", device(d.major(), d.minor(), throttle.field)?, d.rate());
            add(dir, throttle.v1_file, &line, throttle.field)?;
        }
    }
    Ok(())
}

/// Leaf weights are CFQ's, which Linux 5.0 removed: written where the file exists, else
/// ignored with a warning rather than failing containers written for older hosts.
fn set_leaf(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    if dir.join(file).exists() {
        add(dir, file, value, LEAF_WEIGHT)
    } else {
        log::warn!("{LEAF_WEIGHT} is ignored: this kernel has no {file}");
        Ok(())
    }
}

pub fn apply_v2(io: &LinuxBlockIo, dir: &Path) -> Result<(), CgroupError> {
    let bfq = dir.join("io.bfq.weight").exists();
    let weight_text = |weight: u16| if bfq { weight.to_string() } else { weight_to_io_weight(weight).to_string() };
    let weight_file = if bfq { "io.bfq.weight" } else { "io.weight" };
    if let Some(weight) = nonzero(io.weight()) {
        // io.weight wants "default N" for the cgroup-wide weight; BFQ also takes a bare N.
        let value = if bfq { weight_text(weight) } else { format!("default {}", weight_text(weight)) };
        set(dir, weight_file, &value, WEIGHT)?;
    }
    for wd in io.weight_device().as_deref().unwrap_or(&[]) {
        if let Some(weight) = nonzero(wd.weight()) {
            let dev = device(wd.major(), wd.minor(), WEIGHT_DEVICE)?;
            add(dir, weight_file, &format!("{dev} {}", weight_text(weight)), WEIGHT_DEVICE)?;
        }
    }
    let leaf_set = nonzero(io.leaf_weight()).is_some()
        || io.weight_device().as_deref().unwrap_or(&[]).iter().any(|wd| nonzero(wd.leaf_weight()).is_some());
    if leaf_set {
        log::warn!("{LEAF_WEIGHT} is ignored: cgroup v2 has no leaf weights");
    }
    for (line, field) in io_max_lines(io)? {
        add(dir, "io.max", &line, field)?;
    }
    Ok(())
}

/// io.max lines, one per device with every limit set for it ("8:0 rbps=1048576 wiops=100"),
/// each with the first field contributing to it. A rate of 0 means "no limit" in v1; v2
/// refuses 0 and spells that "max".
pub fn io_max_lines(io: &LinuxBlockIo) -> Result<Vec<(String, &'static str)>, CgroupError> {
    let mut by_device: BTreeMap<(i64, i64), (String, &'static str)> = BTreeMap::new();
    for throttle in throttles(io) {
        for d in throttle.devices {
            let dev = device(d.major(), d.minor(), throttle.field)?;
            let rate = if d.rate() == 0 { "max".to_string() } else { d.rate().to_string() };
            let (line, _) = by_device.entry((d.major(), d.minor())).or_insert_with(|| (dev, throttle.field));
            line.push_str(&format!(" {}={rate}", throttle.v2_key));
        }
    }
    Ok(by_device.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBlockIoBuilder, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder};
    use std::fs::{create_dir, read_to_string, write};

    fn throttle(major: i64, minor: i64, rate: u64) -> LinuxThrottleDevice {
        LinuxThrottleDeviceBuilder::default().major(major).minor(minor).rate(rate).build().unwrap()
    }

    fn full() -> LinuxBlockIo {
        let wd = LinuxWeightDeviceBuilder::default().major(8).minor(0).weight(200u16).build().unwrap();
        LinuxBlockIoBuilder::default()
            .weight(500u16)
            .weight_device(vec![wd])
            .throttle_read_bps_device(vec![throttle(8, 0, 1 << 20), throttle(8, 16, 0)])
            .throttle_write_bps_device(vec![throttle(8, 0, 2 << 20)])
            .throttle_read_iops_device(vec![throttle(8, 16, 100)])
            .throttle_write_iops_device(vec![throttle(8, 0, 50)])
            .build()
            .unwrap()
    }

    fn fake(files: &[&str]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for file in files {
            write(tmp.path().join(file), "").unwrap();
        }
        tmp
    }

    /// A /sys/dev/block with the disks 8:0 and 8:16 and the partition 8:1.
    fn fake_sys() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for dev in ["8:0", "8:16", "8:1"] {
            create_dir(tmp.path().join(dev)).unwrap();
        }
        write(tmp.path().join("8:1/partition"), "1\n").unwrap();
        tmp
    }

    #[test]
    fn io_weight_conversion_matches_runc() {
        assert_eq!(weight_to_io_weight(10), 1);
        assert_eq!(weight_to_io_weight(500), 4950);
        assert_eq!(weight_to_io_weight(1000), 10_000);
    }

    #[test]
    fn v1_writes_weights_and_throttles() {
        let throttles = ["read_bps_device", "write_bps_device", "read_iops_device", "write_iops_device"]
            .map(|f| format!("blkio.throttle.{f}"));
        let mut files = vec!["blkio.weight", "blkio.weight_device"];
        files.extend(throttles.iter().map(String::as_str));
        let tmp = fake(&files);
        validate_with(&full(), Dir::V1(tmp.path()), fake_sys().path()).unwrap();
        apply_v1(&full(), tmp.path()).unwrap();
        let read = |file: &str| read_to_string(tmp.path().join(file)).unwrap();
        assert_eq!(read("blkio.weight"), "500\n");
        assert_eq!(read("blkio.weight_device"), "8:0 200\n");
        assert_eq!(read(&throttles[0]), "8:0 1048576\n8:16 0\n");
        assert_eq!(read(&throttles[1]), "8:0 2097152\n");
        assert_eq!(read(&throttles[2]), "8:16 100\n");
        assert_eq!(read(&throttles[3]), "8:0 50\n");
    }

    #[test]
    fn v1_falls_back_to_bfq() {
        let tmp = fake(&["blkio.bfq.weight", "blkio.bfq.weight_device"]);
        let io = LinuxBlockIoBuilder::default().weight(300u16).weight_device(vec![]).build().unwrap();
        validate(&io, Dir::V1(tmp.path())).unwrap();
        apply_v1(&io, tmp.path()).unwrap();
        assert_eq!(read_to_string(tmp.path().join("blkio.bfq.weight")).unwrap(), "300\n");
        assert!(!tmp.path().join("blkio.weight").exists());
        // Neither CFQ nor BFQ: the weight cannot be set.
        let none = fake(&[]);
        let err = validate(&io, Dir::V1(none.path())).unwrap_err();
        assert!(err.to_string().starts_with("linux.resources.blockIO.weight: 300 cannot be set"), "{err}");
    }

    #[test]
    fn v2_converts_weight_and_merges_io_max_per_device() {
        let tmp = fake(&["io.weight", "io.max"]);
        validate_with(&full(), Dir::V2(tmp.path()), fake_sys().path()).unwrap();
        apply_v2(&full(), tmp.path()).unwrap();
        let read = |file: &str| read_to_string(tmp.path().join(file)).unwrap();
        assert_eq!(read("io.weight"), "default 4950\n8:0 1920\n");
        assert_eq!(read("io.max"), "8:0 rbps=1048576 wbps=2097152 wiops=50\n8:16 rbps=max riops=100\n");
        let weight_only = LinuxBlockIoBuilder::default().weight(500u16).build().unwrap();
        apply_v2(&weight_only, tmp.path()).unwrap();
        assert_eq!(read("io.weight"), "default 4950\n");
    }

    #[test]
    fn v2_prefers_bfq_with_the_v1_range() {
        let tmp = fake(&["io.weight", "io.bfq.weight"]);
        let io = LinuxBlockIoBuilder::default().weight(500u16).build().unwrap();
        validate(&io, Dir::V2(tmp.path())).unwrap();
        apply_v2(&io, tmp.path()).unwrap();
        assert_eq!(read_to_string(tmp.path().join("io.bfq.weight")).unwrap(), "500\n");
        assert_eq!(read_to_string(tmp.path().join("io.weight")).unwrap(), "");
    }

    #[test]
    fn validation_names_the_field() {
        let tmp = fake(&["blkio.weight", "blkio.weight_device"]);
        let dir = Dir::V1(tmp.path());
        let wd = |weight: u16| LinuxWeightDeviceBuilder::default().major(8).weight(weight).build().unwrap();
        let cases = [
            (
                LinuxBlockIoBuilder::default().weight(5u16),
                "linux.resources.blockIO.weight: 5 is outside the range 10..=1000",
            ),
            (LinuxBlockIoBuilder::default().weight(1001u16), "linux.resources.blockIO.weight: 1001"),
            (LinuxBlockIoBuilder::default().leaf_weight(2u16), "linux.resources.blockIO.leafWeight: 2"),
            (LinuxBlockIoBuilder::default().weight_device(vec![wd(9)]), "linux.resources.blockIO.weightDevice: 9"),
            (
                LinuxBlockIoBuilder::default().throttle_write_iops_device(vec![throttle(-1, 0, 1)]),
                "linux.resources.blockIO.throttleWriteIOPSDevice: -1:0 is not a device number",
            ),
        ];
        let sys = fake_sys();
        for (builder, expected) in cases {
            let err = validate_with(&builder.build().unwrap(), dir, sys.path()).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
        assert_eq!(first_set(&LinuxBlockIo::default()), None);
        assert_eq!(first_set(&full()), Some(WEIGHT));
    }

    #[test]
    fn devices_must_be_disks_of_this_host() {
        let (tmp, sys) = (fake(&["blkio.weight", "blkio.weight_device"]), fake_sys());
        let dir = Dir::V1(tmp.path());
        let wd = |minor: i64| LinuxWeightDeviceBuilder::default().major(8).minor(minor).weight(200u16).build().unwrap();
        let cases = [
            (
                LinuxBlockIoBuilder::default().throttle_read_bps_device(vec![throttle(8, 0, 1), throttle(259, 3, 1)]),
                "linux.resources.blockIO.throttleReadBpsDevice: 259:3 is not a block device of this host",
            ),
            (
                LinuxBlockIoBuilder::default().throttle_write_bps_device(vec![throttle(8, 32, 1)]),
                "linux.resources.blockIO.throttleWriteBpsDevice: 8:32 is not",
            ),
            (
                LinuxBlockIoBuilder::default().throttle_read_iops_device(vec![throttle(8, 1, 1)]),
                "linux.resources.blockIO.throttleReadIOPSDevice: 8:1 is a partition",
            ),
            (
                LinuxBlockIoBuilder::default().throttle_write_iops_device(vec![throttle(9, 0, 1)]),
                "linux.resources.blockIO.throttleWriteIOPSDevice: 9:0 is not",
            ),
            (
                LinuxBlockIoBuilder::default().weight_device(vec![wd(5)]),
                "linux.resources.blockIO.weightDevice: 8:5 is not",
            ),
        ];
        for (builder, expected) in cases {
            let err = validate_with(&builder.build().unwrap(), dir, sys.path()).unwrap_err();
            assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        }
        let known = LinuxBlockIoBuilder::default()
            .weight_device(vec![wd(16)])
            .throttle_write_bps_device(vec![throttle(8, 0, 1)]);
        validate_with(&known.build().unwrap(), dir, sys.path()).unwrap();
    }
}
