use super::*;
use crate::Catalog;
use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, SpecBuilder};

fn small() -> Plan {
    Catalog::builtin().unwrap().get("small").unwrap().clone()
}

fn throttle(major: i64, minor: i64, rate: u64) -> LinuxThrottleDevice {
    LinuxThrottleDeviceBuilder::default().major(major).minor(minor).rate(rate).build().unwrap()
}

#[test]
fn small_becomes_linux_resources() {
    let r = small().resources(&[BlockDevice::new(254, 0)]);
    let json = serde_json::to_value(&r).unwrap();
    let want = serde_json::json!({
        "cpu": {"quota": 50000, "period": 100000, "shares": 512},
        "memory": {"limit": 512u64 << 20, "swap": 768u64 << 20},
        "pids": {"limit": 256},
        "blockIO": {
            "throttleReadBpsDevice": [{"major": 254, "minor": 0, "rate": 50_000_000}],
            "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 25_000_000}],
            "throttleReadIOPSDevice": [{"major": 254, "minor": 0, "rate": 1000}],
            "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 500}]
        }
    });
    assert_eq!(json, want);
    // No disk: no blockIO at all rather than empty lists.
    assert!(small().resources(&[]).block_io().is_none());
}

#[test]
fn plan_values_win_and_the_rest_stays() {
    let cpu = LinuxCpuBuilder::default().quota(200_000i64).period(200_000u64).cpus("0").build().unwrap();
    let memory = LinuxMemoryBuilder::default().limit(1i64 << 30).reservation(1i64 << 20).build().unwrap();
    let io = LinuxBlockIo::default();
    let mut io = io;
    io.set_throttle_read_bps_device(Some(vec![throttle(254, 0, 1), throttle(8, 0, 7)]));
    let existing = LinuxResourcesBuilder::default().cpu(cpu).memory(memory).block_io(io).build().unwrap();
    let linux = oci_spec::runtime::LinuxBuilder::default().resources(existing).build().unwrap();
    let mut spec = SpecBuilder::default().linux(linux).build().unwrap();
    let host = HostConfig::parse("[io]\ndevices = [\"254:0\"]\n", "h.toml").unwrap();
    apply_plan(&mut spec, &small(), &host, Path::new("/")).unwrap();
    let r = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!((cpu.quota(), cpu.period(), cpu.shares()), (Some(50_000), Some(100_000), Some(512)));
    assert_eq!(cpu.cpus().as_deref(), Some("0"), "cpuset kept");
    let memory = r.memory().unwrap();
    assert_eq!((memory.limit(), memory.swap()), (Some(512 << 20), Some(768 << 20)));
    assert_eq!(memory.reservation(), Some(1 << 20), "reservation kept");
    let read = r.block_io().as_ref().unwrap().throttle_read_bps_device().clone().unwrap();
    assert_eq!(read, [throttle(8, 0, 7), throttle(254, 0, 50_000_000)], "other disks kept, ours replaced");
    assert_eq!(r.pids().unwrap().limit(), 256);
}

#[test]
fn a_spec_without_linux_gets_one() {
    let mut spec = SpecBuilder::default().build().unwrap();
    spec.set_linux(None);
    let host = HostConfig::parse("[io]\ndevices = []\n", "h.toml").unwrap();
    apply_plan(&mut spec, &small(), &host, Path::new("/")).unwrap();
    let r = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
    assert_eq!(r.pids().unwrap().limit(), 256);
    assert!(r.block_io().is_none(), "no devices: no throttles");
}

#[test]
fn a_device_error_leaves_the_spec_alone() {
    let mut spec = SpecBuilder::default().build().unwrap();
    let before = spec.clone();
    let host = HostConfig::parse("[io]\ndevices = [\"9999:9\"]\n", "h.toml").unwrap();
    let err = apply_plan(&mut spec, &small(), &host, Path::new("/")).unwrap_err();
    assert_eq!(err.to_string(), "h.toml: io.devices: \"9999:9\" is no block device of this host (9999:9)");
    assert_eq!(spec, before);
}

#[test]
fn auto_is_the_disk_under_the_rootfs() {
    let host = HostConfig::builtin().unwrap();
    let disks = host.io_devices(Path::new("/")).unwrap();
    let root = crate::device::whole_disk(crate::device::backing(Path::new("/")).unwrap()).unwrap();
    assert_eq!(disks, [root]);
}

#[test]
fn memory_merge_is_an_annotation_set_and_removed_by_the_plan() {
    let merging =
        Plan::parse("m", "[cpu]\ncpus = 1\n[memory]\nlimit = \"64MiB\"\nmerge = true\n[pids]\nlimit = 8\n", "m.toml")
            .unwrap();
    let host = HostConfig::parse("[io]\ndevices = []\n", "h.toml").unwrap();
    let mut spec = SpecBuilder::default().build().unwrap();
    spec.set_annotations(Some([("org.example.tenant".to_string(), "t1".to_string())].into()));
    apply_plan(&mut spec, &merging, &host, Path::new("/")).unwrap();
    let annotations = spec.annotations().clone().unwrap();
    assert_eq!(annotations.get(MEMORY_MERGE_ANNOTATION).map(String::as_str), Some("true"));
    assert_eq!(annotations.get("org.example.tenant").map(String::as_str), Some("t1"), "others kept");
    // Re-applying a plan without merge takes the annotation out again.
    apply_plan(&mut spec, &small(), &host, Path::new("/")).unwrap();
    let annotations = spec.annotations().clone().unwrap();
    assert_eq!(annotations.len(), 1, "{annotations:?}");
    // A config without annotations gets none from a plan that needs none.
    spec.set_annotations(None);
    apply_plan(&mut spec, &small(), &host, Path::new("/")).unwrap();
    assert!(spec.annotations().is_none());
}
