//! [`collect`] on fake cgroupfs trees (plain files in a temp dir) holding what the kernel
//! prints, for a v1 (hybrid-like) and a v2 container.

use std::collections::BTreeMap;
use std::fs::{create_dir_all, write};
use std::path::{Path, PathBuf};

use super::*;

fn files(dir: &Path, files: &[(&str, &str)]) {
    create_dir_all(dir).unwrap();
    for (name, content) in files {
        write(dir.join(name), content).unwrap();
    }
}

fn v1_cgroup(root: &Path) -> Cgroup {
    let dirs = ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio"];
    let paths: BTreeMap<String, PathBuf> = dirs.iter().map(|c| (c.to_string(), root.join(c).join("ctr"))).collect();
    files(&paths["cpu"], &[("cpu.stat", "nr_periods 40\nnr_throttled 12\nthrottled_time 987654321\nnr_bursts 0\n")]);
    files(
        &paths["cpuacct"],
        &[
            ("cpuacct.usage", "3000\n"),
            ("cpuacct.usage_percpu", "1000 2000 \n"),
            ("cpuacct.usage_percpu_sys", "100 200 \n"),
            ("cpuacct.usage_percpu_user", "900 1800 \n"),
            ("cpuacct.usage_sys", "300\n"),
            ("cpuacct.usage_user", "2700\n"),
        ],
    );
    files(
        &paths["cpuset"],
        &[("cpuset.cpus", "0-2,5\n"), ("cpuset.mems", "0\n"), ("cpuset.sched_load_balance", "1\n")],
    );
    files(
        &paths["memory"],
        &[
            ("memory.stat", "cache 4096\nrss 8192\n"),
            ("memory.limit_in_bytes", "33554432\n"),
            ("memory.usage_in_bytes", "12288\n"),
            ("memory.max_usage_in_bytes", "65536\n"),
            ("memory.failcnt", "3\n"),
            ("memory.memsw.limit_in_bytes", "67108864\n"),
            ("memory.memsw.usage_in_bytes", "12288\n"),
            ("memory.memsw.max_usage_in_bytes", "65536\n"),
            ("memory.memsw.failcnt", "0\n"),
        ],
    );
    files(&paths["pids"], &[("pids.current", "7\n"), ("pids.max", "max\n")]);
    files(
        &paths["blkio"],
        &[
            ("blkio.bfq.io_service_bytes_recursive", "Total 0\n"),
            ("blkio.bfq.io_serviced_recursive", "Total 0\n"),
            (
                "blkio.throttle.io_service_bytes_recursive",
                "7:0 Read 4096\n7:0 Write 8192\n7:0 Total 12288\nTotal 12288\n",
            ),
            ("blkio.throttle.io_serviced_recursive", "7:0 Read 1\n7:0 Write 2\n7:0 Total 3\nTotal 3\n"),
        ],
    );
    let unified = root.join("unified/ctr");
    files(
        &unified,
        &[
            ("cgroup.controllers", "hugetlb\n"),
            ("hugetlb.2MB.max", "max\n"),
            ("hugetlb.2MB.current", "2097152\n"),
            ("hugetlb.2MB.events", "max 1\n"),
            ("hugetlb.2MB.rsvd.max", "max\n"),
            ("hugetlb.1GB.max", "max\n"),
            ("hugetlb.1GB.current", "0\n"),
        ],
    );
    Cgroup::V1 { paths, unified: Some(unified) }
}

#[test]
fn v1_counters_in_runc_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let stats = collect(&v1_cgroup(tmp.path())).unwrap();
    assert_eq!(
        stats.cpu,
        Cpu {
            usage: CpuUsage {
                total: 3000,
                percpu: vec![1000, 2000],
                percpu_kernel: vec![100, 200],
                percpu_user: vec![900, 1800],
                kernel: 300,
                user: 2700,
            },
            throttling: Throttling { periods: 40, throttled_periods: 12, throttled_time: 987654321 },
        }
    );
    assert_eq!(stats.cpuset.cpus, vec![0, 1, 2, 5]);
    assert_eq!(stats.cpuset.mems, vec![0]);
    assert_eq!(stats.cpuset.sched_load_balance, 1);
    assert_eq!(stats.memory.cache, 4096);
    assert_eq!(stats.memory.usage, MemoryEntry { limit: 33554432, usage: 12288, max: 65536, failcnt: 3 });
    assert_eq!(stats.memory.swap.limit, 67108864);
    assert_eq!(stats.memory.kernel, MemoryEntry::default(), "kmem files absent: zeros");
    assert_eq!(stats.memory.raw.get("rss"), Some(&8192));
    assert_eq!(stats.pids, Pids { current: 7, limit: 0 });
    // bfq counted nothing: the throttle layer's counters are used; "Total N" lines are skipped.
    assert_eq!(stats.blkio.io_service_bytes_recursive.len(), 3);
    assert_eq!(stats.blkio.io_serviced_recursive[1], BlkioEntry { major: 7, minor: 0, op: "Write".into(), value: 2 });
    // On the unified dir of a hybrid host, with v2 file names; reservations are no page size.
    assert_eq!(stats.hugetlb.keys().collect::<Vec<_>>(), ["1GB", "2MB"]);
    assert_eq!(stats.hugetlb["2MB"], Hugetlb { usage: 2097152, max: 0, failcnt: 1 });
}

#[test]
fn v2_counters_in_runc_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ctr");
    files(
        &dir,
        &[
            ("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n"),
            (
                "cpu.stat",
                "usage_usec 5000\nuser_usec 4000\nsystem_usec 1000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250\n",
            ),
            ("cpuset.cpus.effective", "0-1\n"),
            ("cpuset.mems.effective", "0\n"),
            ("memory.stat", "anon 8192\nfile 4096\n"),
            ("memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n"),
            ("memory.max", "max\n"),
            ("memory.current", "12288\n"),
            ("memory.peak", "20480\n"),
            ("memory.swap.current", "4096\n"),
            ("memory.swap.max", "1048576\n"),
            ("pids.current", "3\n"),
            ("pids.max", "100\n"),
            ("io.stat", "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"),
        ],
    );
    let stats = collect(&Cgroup::V2 { path: dir }).unwrap();
    assert_eq!(stats.cpu.usage.total, 5_000_000);
    assert_eq!(stats.cpu.usage.user, 4_000_000);
    assert!(stats.cpu.usage.percpu.is_empty());
    assert_eq!(stats.cpu.throttling, Throttling { periods: 10, throttled_periods: 4, throttled_time: 250_000 });
    assert_eq!(stats.cpuset.cpus, vec![0, 1]);
    assert_eq!(stats.memory.usage, MemoryEntry { limit: u64::MAX, usage: 12288, max: 20480, failcnt: 5 });
    // memory+swap, as v1's memsw: the sum saturates at "max".
    assert_eq!(stats.memory.swap.usage, 16384);
    assert_eq!(stats.memory.swap.limit, u64::MAX);
    assert_eq!(stats.memory.cache, 4096);
    assert_eq!(stats.pids, Pids { current: 3, limit: 100 });
    assert_eq!(stats.blkio.io_service_bytes_recursive.len(), 2);
    assert_eq!(stats.blkio.io_serviced_recursive[0], BlkioEntry { major: 8, minor: 0, op: "Read".into(), value: 1 });
}

#[test]
fn json_has_runc_field_names() {
    let tmp = tempfile::tempdir().unwrap();
    let json = serde_json::to_value(collect(&v1_cgroup(tmp.path())).unwrap()).unwrap();
    assert_eq!(json["cpu"]["throttling"]["throttledPeriods"], 12);
    assert_eq!(json["cpu"]["usage"]["percpu_kernel"][1], 200);
    assert_eq!(json["memory"]["usage"]["failcnt"], 3);
    assert!(json["memory"]["kernelTCP"].is_object());
    assert_eq!(json["blkio"]["ioServiceBytesRecursive"][0]["op"], "Read");
    assert_eq!(json["hugetlb"]["2MB"]["failcnt"], 1);
    assert!(json["network_interfaces"].is_null());
    assert!(json["intel_rdt"].is_object());
}

#[test]
fn a_garbled_counter_names_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cgroup = v1_cgroup(tmp.path());
    let pids_dir = tmp.path().join("pids/ctr");
    write(pids_dir.join("pids.current"), "seven\n").unwrap();
    let err = collect(&cgroup).unwrap_err().to_string();
    assert!(err.contains("pids.current") && err.contains("seven"), "{err}");
}

#[test]
fn v2_oom_watcher_wakes_on_oom_kill_only() {
    use crate::cgroups::oom::OomWatcher;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ctr");
    let events = dir.join("memory.events");
    files(&dir, &[("cgroup.controllers", "memory\n"), ("memory.events", "max 0\noom 0\noom_kill 2\n")]);
    let mut watcher = OomWatcher::new(&Cgroup::V2 { path: dir }).unwrap().expect("memory controller listed");
    assert!(!watcher.take().unwrap(), "kills before the watch started are not news");

    let readable = |w: &OomWatcher| {
        let fd = w.fd();
        poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], PollTimeout::from(1000u16)).unwrap() > 0
    };
    write(&events, "max 3\noom 0\noom_kill 2\n").unwrap();
    assert!(readable(&watcher));
    assert!(!watcher.take().unwrap(), "a limit hit without a kill");
    write(&events, "max 3\noom 1\noom_kill 3\n").unwrap();
    assert!(readable(&watcher));
    assert!(watcher.take().unwrap());
    assert!(!watcher.take().unwrap(), "reported once");
}
