//! [`Cgroup::apply_resources`] on fake cgroupfs trees (plain files in a temp dir) shaped like
//! pure v1, hybrid and pure v2 hosts.

use std::collections::{BTreeMap, HashMap};
use std::fs::{create_dir_all, read_to_string, write};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxInterfacePriorityBuilder, LinuxMemoryBuilder,
    LinuxNetworkBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder, LinuxThrottleDeviceBuilder,
};

use super::*;

const MIB: i64 = 1 << 20;
/// What the kernel shows for "unlimited" in v1 byte counters.
const UNLIMITED: &str = "9223372036854771712";

/// Files with their initial values.
type Files = &'static [(&'static str, &'static str)];
/// Hierarchies (controller lists as mounted) with the files of a new cgroup in each.
type Hierarchies = &'static [(&'static str, Files)];

/// The files the kernel would have in a new cgroup, per v1 hierarchy, with their initial values.
const V1_FILES: Hierarchies = &[
    (
        "cpu",
        &[
            ("cpu.shares", "1024"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpu.cfs_burst_us", "0"),
            ("cpu.idle", "0"),
            ("cpu.rt_period_us", "1000000"),
            ("cpu.rt_runtime_us", "0"),
        ],
    ),
    ("cpuacct", &[]),
    ("cpuset", &[("cpuset.cpus", "0-3"), ("cpuset.mems", "0")]),
    (
        "memory",
        &[
            ("memory.limit_in_bytes", UNLIMITED),
            ("memory.memsw.limit_in_bytes", UNLIMITED),
            ("memory.soft_limit_in_bytes", UNLIMITED),
            ("memory.swappiness", "60"),
            ("memory.oom_control", "oom_kill_disable 0"),
            ("memory.usage_in_bytes", "0"),
        ],
    ),
    ("pids", &[("pids.max", "max")]),
    (
        "blkio",
        &[
            ("blkio.bfq.weight", "100"),
            ("blkio.bfq.weight_device", ""),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_bps_device", ""),
            ("blkio.throttle.read_iops_device", ""),
            ("blkio.throttle.write_iops_device", ""),
        ],
    ),
    ("name=systemd", &[]),
];
const NET_FILES: Hierarchies = &[("net_cls,net_prio", &[("net_cls.classid", "0"), ("net_prio.ifpriomap", "")])];
/// The unified dir of a hybrid host like the one this was written on: only hugetlb there.
const HYBRID_UNIFIED_FILES: Files = &[
    ("cgroup.controllers", "hugetlb"),
    ("hugetlb.2MB.max", "max"),
    ("hugetlb.2MB.rsvd.max", "max"),
    ("hugetlb.1GB.max", "max"),
];
const V2_FILES: Files = &[
    ("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma"),
    ("cpu.weight", "100"),
    ("cpu.max", "max 100000"),
    ("cpu.max.burst", "0"),
    ("cpu.idle", "0"),
    ("cpuset.cpus", ""),
    ("cpuset.mems", ""),
    ("memory.max", "max"),
    ("memory.low", "0"),
    ("memory.high", "max"),
    ("memory.swap.max", "max"),
    ("memory.current", "0"),
    ("pids.max", "max"),
    ("io.weight", "default 100"),
    ("io.max", ""),
    ("hugetlb.2MB.max", "max"),
];

fn fake_dir(dir: &Path, files: &[(&str, &str)]) {
    create_dir_all(dir).unwrap();
    for (name, value) in files {
        // As the kernel shows an empty list: no line at all.
        let text = if value.is_empty() { String::new() } else { format!("{value}\n") };
        write(dir.join(name), text).unwrap();
    }
}

/// A v1 cgroup "ctr" in every hierarchy of `hierarchies` (the cpuset parent gets CPUs 0-3 and
/// node 0), with a hybrid host's unified dir if `unified`.
fn v1(root: &Path, hierarchies: &[Hierarchies], unified: bool) -> Cgroup {
    let mut paths = BTreeMap::new();
    for (controllers, files) in hierarchies.iter().flat_map(|h| h.iter()) {
        let mount = root.join(controllers.replace(['=', ','], "_"));
        fake_dir(&mount, &[("cpuset.cpus", "0-3"), ("cpuset.mems", "0")]);
        fake_dir(&mount.join("ctr"), files);
        paths.insert(controllers.to_string(), mount.join("ctr"));
    }
    let unified = unified.then(|| {
        fake_dir(&root.join("unified/ctr"), HYBRID_UNIFIED_FILES);
        root.join("unified/ctr")
    });
    Cgroup::V1 { paths, unified }
}

fn v2(root: &Path) -> Cgroup {
    fake_dir(root, &[("cpuset.cpus", ""), ("cpuset.cpus.effective", "0-3"), ("cpuset.mems.effective", "0")]);
    fake_dir(&root.join("ctr"), V2_FILES);
    Cgroup::V2 { path: root.join("ctr") }
}

fn read(cgroup: &Cgroup, controller: &str, file: &str) -> String {
    let dir = cgroup.controller_dir(controller).unwrap();
    read_to_string(dir.join(file)).unwrap().trim_end().to_string()
}

/// A whole disk of this host ("major:minor"): throttled devices must exist, even with a fake
/// cgroupfs.
fn host_disk() -> String {
    let entries = std::fs::read_dir("/sys/dev/block").expect("/sys/dev/block");
    let mut disks: Vec<String> = entries
        .flatten()
        .filter(|e| !e.path().join("partition").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    disks.sort();
    disks.into_iter().next().expect("no block device on this host")
}

fn throttle(rate: u64) -> oci_spec::runtime::LinuxThrottleDevice {
    let disk = host_disk();
    let (major, minor) = disk.split_once(':').unwrap();
    let (major, minor) = (major.parse::<i64>().unwrap(), minor.parse::<i64>().unwrap());
    LinuxThrottleDeviceBuilder::default().major(major).minor(minor).rate(rate).build().unwrap()
}

/// Resources touching every controller both versions have.
fn common() -> LinuxResourcesBuilder {
    let cpu = LinuxCpuBuilder::default()
        .shares(512u64)
        .quota(50_000)
        .period(100_000u64)
        .burst(1_000u64)
        .cpus("1-2")
        .mems("0")
        .build()
        .unwrap();
    let memory = LinuxMemoryBuilder::default().limit(64 * MIB).reservation(32 * MIB).swap(96 * MIB).build().unwrap();
    let io = LinuxBlockIoBuilder::default().weight(300u16).throttle_read_bps_device(vec![throttle(MIB as u64)]);
    let hugepages = LinuxHugepageLimitBuilder::default().page_size("2MB").limit(4 * MIB).build().unwrap();
    LinuxResourcesBuilder::default()
        .cpu(cpu)
        .memory(memory)
        .pids(LinuxPidsBuilder::default().limit(32).build().unwrap())
        .block_io(io.build().unwrap())
        .hugepage_limits(vec![hugepages])
}

fn network() -> oci_spec::runtime::LinuxNetwork {
    let eth0 = LinuxInterfacePriorityBuilder::default().name("eth0").priority(5u32).build().unwrap();
    LinuxNetworkBuilder::default().class_id(0x10_0001u32).priorities(vec![eth0]).build().unwrap()
}

fn unified(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn hybrid_maps_every_field_to_v1_files_and_hugetlb_to_unified() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES], true);
    let resources = common().unified(unified(&[("hugetlb.1GB.max", "0")])).build().unwrap();
    cg.apply_resources(&resources).unwrap();
    assert_eq!(read(&cg, "cpu", "cpu.shares"), "512");
    assert_eq!(read(&cg, "cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(read(&cg, "cpu", "cpu.cfs_quota_us"), "50000");
    assert_eq!(read(&cg, "cpu", "cpu.cfs_burst_us"), "1000");
    assert_eq!(read(&cg, "cpuset", "cpuset.cpus"), "1-2");
    assert_eq!(read(&cg, "cpuset", "cpuset.mems"), "0");
    assert_eq!(read(&cg, "memory", "memory.limit_in_bytes"), "67108864");
    assert_eq!(read(&cg, "memory", "memory.memsw.limit_in_bytes"), "100663296");
    assert_eq!(read(&cg, "memory", "memory.soft_limit_in_bytes"), "33554432");
    assert_eq!(read(&cg, "pids", "pids.max"), "32");
    assert_eq!(read(&cg, "blkio", "blkio.bfq.weight"), "300");
    assert_eq!(read(&cg, "blkio", "blkio.throttle.read_bps_device"), format!("{} 1048576", host_disk()));
    // hugetlb is not mounted as v1: the unified dir serves it, with v2 file names.
    assert_eq!(read(&cg, "hugetlb", "hugetlb.2MB.max"), "4194304");
    assert_eq!(read(&cg, "hugetlb", "hugetlb.2MB.rsvd.max"), "4194304");
    assert_eq!(read(&cg, "hugetlb", "hugetlb.1GB.max"), "0");
}

#[test]
fn v1_writes_network_rt_and_memory_extras() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES, NET_FILES], false);
    let cpu = LinuxCpuBuilder::default().realtime_period(500_000u64).realtime_runtime(10_000).idle(1).shares(2u64);
    let memory = LinuxMemoryBuilder::default().swappiness(0u64).disable_oom_killer(true).limit(-1);
    let resources = LinuxResourcesBuilder::default()
        .cpu(cpu.build().unwrap())
        .memory(memory.build().unwrap())
        .network(network())
        .pids(LinuxPidsBuilder::default().limit(0).build().unwrap())
        .build()
        .unwrap();
    cg.apply_resources(&resources).unwrap();
    assert_eq!(read(&cg, "cpu", "cpu.rt_period_us"), "500000");
    assert_eq!(read(&cg, "cpu", "cpu.rt_runtime_us"), "10000");
    assert_eq!(read(&cg, "cpu", "cpu.idle"), "1");
    assert_eq!(read(&cg, "cpu", "cpu.shares"), "2");
    assert_eq!(read(&cg, "memory", "memory.swappiness"), "0");
    assert_eq!(read(&cg, "memory", "memory.oom_control"), "1");
    assert_eq!(read(&cg, "memory", "memory.limit_in_bytes"), "-1");
    assert_eq!(read(&cg, "memory", "memory.memsw.limit_in_bytes"), "-1");
    assert_eq!(read(&cg, "net_cls", "net_cls.classid"), "1048577");
    assert_eq!(read(&cg, "net_prio", "net_prio.ifpriomap"), "eth0 5");
    assert_eq!(read(&cg, "pids", "pids.max"), "max");
}

#[test]
fn v2_converts_and_writes_every_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v2(tmp.path());
    let resources = common().unified(unified(&[("memory.high", "50000000")])).build().unwrap();
    cg.apply_resources(&resources).unwrap();
    let read = |file: &str| read(&cg, "memory", file);
    assert_eq!(read("cpu.weight"), "20");
    assert_eq!(read("cpu.max"), "50000 100000");
    assert_eq!(read("cpu.max.burst"), "1000");
    assert_eq!(read("cpuset.cpus"), "1-2");
    assert_eq!(read("cpuset.mems"), "0");
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("memory.low"), "33554432");
    assert_eq!(read("memory.swap.max"), "33554432");
    assert_eq!(read("memory.high"), "50000000");
    assert_eq!(read("pids.max"), "32");
    assert_eq!(read("io.weight"), "default 2930");
    assert_eq!(read("io.max"), format!("{} rbps=1048576", host_disk()));
    assert_eq!(read("hugetlb.2MB.max"), "4194304");
}

#[test]
fn v2_refuses_rt_and_network() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v2(tmp.path());
    let rt = LinuxCpuBuilder::default().realtime_runtime(1000).build().unwrap();
    let err = cg.apply_resources(&LinuxResourcesBuilder::default().cpu(rt).build().unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "linux.resources.cpu.realtimeRuntime: 1000 is not supported on cgroup v2");
    let err = cg.apply_resources(&LinuxResourcesBuilder::default().network(network()).build().unwrap()).unwrap_err();
    assert!(
        matches!(&err, CgroupError::ControllerUnavailable { field: network::CLASS_ID, controller: "net_cls", .. }),
        "{err}"
    );
}

/// Nothing is written when any value is refused, whichever controller it belongs to.
#[test]
fn invalid_input_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES], true);
    let bad_quota = LinuxCpuBuilder::default().quota(500).shares(512u64).build().unwrap();
    let bad_cpus = LinuxCpuBuilder::default().cpus("0-7").build().unwrap();
    let bad_weight = LinuxBlockIoBuilder::default().weight(5u16).build().unwrap();
    let bad_page = LinuxHugepageLimitBuilder::default().page_size("2MB").limit(-1).build().unwrap();
    let cases = [
        (common().cpu(bad_quota), "linux.resources.cpu.quota: 500 is below the 1 ms minimum (1000)"),
        (common().cpu(bad_cpus), "linux.resources.cpu.cpus: \"0-7\" is not within \"0-3\""),
        (common().block_io(bad_weight), "linux.resources.blockIO.weight: 5 is outside the range 10..=1000"),
        (common().hugepage_limits(vec![bad_page]), "linux.resources.hugepageLimits.limit: -1 (pageSize 2MB)"),
        (common().network(network()), "linux.resources.network.classID: the net_cls controller is not available"),
        (common().unified(unified(&[("../x.max", "1")])), "linux.resources.unified: \"../x.max\" must be"),
    ];
    for (resources, expected) in cases {
        let err = cg.apply_resources(&resources.build().unwrap()).unwrap_err();
        assert!(err.to_string().starts_with(expected), "{err} / {expected}");
        assert_eq!(read(&cg, "memory", "memory.limit_in_bytes"), UNLIMITED);
        assert_eq!(read(&cg, "cpu", "cpu.shares"), "1024");
        assert_eq!(read(&cg, "pids", "pids.max"), "max");
        assert_eq!(read(&cg, "hugetlb", "hugetlb.2MB.max"), "max");
    }
}

#[test]
fn unified_is_refused_without_cgroup2() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES], false);
    let resources = common().hugepage_limits(vec![]).unified(unified(&[("memory.high", "1")])).build().unwrap();
    let err = cg.apply_resources(&resources).unwrap_err();
    assert_eq!(
        err.to_string(),
        "linux.resources.unified: \"memory.high\" cannot be set: the host has no cgroup v2 hierarchy"
    );
    assert_eq!(read(&cg, "pids", "pids.max"), "max");
    // Nor can hugetlb go anywhere on this pure v1 host.
    let err = cg.apply_resources(&common().build().unwrap()).unwrap_err();
    assert!(
        matches!(&err, CgroupError::ControllerUnavailable { field: hugetlb::PAGE_SIZE, controller: "hugetlb", .. }),
        "{err}"
    );
}

#[test]
fn controller_not_enabled_on_v2_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v2(tmp.path());
    write(cg.dirs()[0].join("cgroup.controllers"), "cpu pids\n").unwrap();
    let memory = LinuxMemoryBuilder::default().reservation(MIB).build().unwrap();
    let err = cg.apply_resources(&LinuxResourcesBuilder::default().memory(memory).build().unwrap()).unwrap_err();
    let expected = format!(
        "linux.resources.memory.reservation: the memory controller is not available for {:?} \
         (neither mounted as cgroup v1 nor enabled in cgroup v2)",
        cg.dirs()[0]
    );
    assert_eq!(err.to_string(), expected);
}

#[test]
fn empty_or_zero_resources_need_no_controller() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = Cgroup::V2 { path: tmp.path().join("ctr") };
    fake_dir(&tmp.path().join("ctr"), &[("cgroup.controllers", "")]);
    cg.apply_resources(&LinuxResources::default()).unwrap();
    // 0 means "unset" for these, as in runc; empty lists and maps too.
    let zeros = LinuxResourcesBuilder::default()
        .cpu(LinuxCpuBuilder::default().shares(0u64).quota(0).period(0u64).cpus("").build().unwrap())
        .memory(LinuxMemoryBuilder::default().limit(0).swap(0).build().unwrap())
        .block_io(LinuxBlockIoBuilder::default().weight(0u16).build().unwrap())
        .hugepage_limits(vec![])
        .unified(HashMap::new())
        .build()
        .unwrap();
    cg.apply_resources(&zeros).unwrap();
    assert_eq!(std::fs::read_dir(tmp.path().join("ctr")).unwrap().count(), 1);
}

#[test]
fn v1_memsw_order_follows_the_current_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES], false);
    let memory_dir: PathBuf = cg.controller_dir("memory").unwrap();
    write(memory_dir.join("memory.memsw.limit_in_bytes"), format!("{}\n", 128 * MIB)).unwrap();
    let raise = LinuxMemoryBuilder::default().limit(256 * MIB).swap(512 * MIB).build().unwrap();
    let files: Vec<&str> = memory::v1_writes(&raise, &memory_dir).unwrap().iter().map(|s| s.file).collect();
    assert_eq!(files, ["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"]);
    let lower = LinuxMemoryBuilder::default().limit(64 * MIB).swap(64 * MIB).build().unwrap();
    let files: Vec<&str> = memory::v1_writes(&lower, &memory_dir).unwrap().iter().map(|s| s.file).collect();
    assert_eq!(files, ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]);
}

/// An update failing at its last write (a unified file this kernel lacks) gives every file
/// written before it its old content back.
#[test]
fn update_rolls_back_on_a_failing_write() {
    let tmp = tempfile::tempdir().unwrap();
    let cg = v1(tmp.path(), &[V1_FILES], true);
    let resources = common().hugepage_limits(vec![]).unified(unified(&[("memory.nothere", "1")])).build().unwrap();
    let err = cg.update_resources(&resources).unwrap_err();
    assert!(
        matches!(&err, CgroupError::RolledBack { cause, failed, .. }
            if failed.is_empty() && matches!(**cause, CgroupError::Apply { field: unified::FIELD, .. })),
        "{err}"
    );
    assert_eq!(read(&cg, "memory", "memory.limit_in_bytes"), UNLIMITED);
    assert_eq!(read(&cg, "cpu", "cpu.shares"), "1024");
    assert_eq!(read(&cg, "cpuset", "cpuset.cpus"), "0-3");
    assert_eq!(read(&cg, "pids", "pids.max"), "max");
    // The same update without the bad key goes through.
    cg.update_resources(&common().hugepage_limits(vec![]).build().unwrap()).unwrap();
    assert_eq!(read(&cg, "pids", "pids.max"), "32");
}
