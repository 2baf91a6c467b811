//! [`Cgroup::apply_resources`] on the real host's cgroups (v1, hybrid or v2), read back from
//! the kernel's files. They need root and are skipped without it. Every cgroup they make is
//! named warren-res-<pid>..., and a guard removes it (every hierarchy) even when an
//! assertion fails.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    LinuxResourcesBuilder,
};

use super::*;

const MIB: i64 = 1 << 20;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Removes the cgroup's directories (deepest first, every hierarchy) when dropped.
struct Guard(Cgroup);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            eprintln!("cleanup: {e}");
        }
        for dir in self.0.dirs() {
            if dir.exists() {
                eprintln!("cleanup: {dir:?} left behind");
            }
        }
    }
}

/// Makes the cgroup under a guard.
fn make(cgroup: Cgroup) -> Guard {
    let guard = Guard(cgroup);
    guard.0.create().unwrap();
    guard
}

fn read(dir: &Path, file: &str) -> String {
    fs::read_trimmed(&dir.join(file)).unwrap()
}

/// The last word of a file ("default 300" -> "300").
fn last_word(dir: &Path, file: &str) -> String {
    read(dir, file).split_whitespace().last().unwrap_or_default().to_string()
}

/// Where this host serves a controller for the cgroup; None (with a note) when it does not.
fn served<'a>(cgroup: &'a Cgroup, v1_name: &'static str, v2_name: &str) -> Option<Dir<'a>> {
    match locate(cgroup, v1_name, Some(v2_name), "test") {
        Ok(dir) => Some(dir),
        Err(e) => {
            eprintln!("not checked here: {e}");
            None
        }
    }
}

#[test]
fn resources_on_this_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let name = format!("/warren-res-{}", std::process::id());
    let guard = make(Cgroup::resolve(Some(Path::new(&name)), "x").unwrap());
    let cg = &guard.0;
    let mut r = LinuxResourcesBuilder::default();
    let (memory, cpu, pids, cpuset) = (
        served(cg, "memory", "memory"),
        served(cg, "cpu", "cpu"),
        served(cg, "pids", "pids"),
        served(cg, "cpuset", "cpuset"),
    );
    if memory.is_some() {
        r = r.memory(LinuxMemoryBuilder::default().limit(64 * MIB).build().unwrap());
    }
    let mut cpu_builder = LinuxCpuBuilder::default();
    if cpu.is_some() {
        cpu_builder = cpu_builder.quota(50_000).period(100_000u64).shares(512u64);
    }
    if cpuset.is_some() {
        cpu_builder = cpu_builder.cpus("0").mems("0");
    }
    r = r.cpu(cpu_builder.build().unwrap());
    if pids.is_some() {
        r = r.pids(LinuxPidsBuilder::default().limit(32).build().unwrap());
    }
    let weight_files = ["blkio.weight", "blkio.bfq.weight", "io.bfq.weight", "io.weight"];
    let blkio = served(cg, "blkio", "io").filter(|d| weight_files.iter().any(|f| d.has(f)));
    if blkio.is_some() {
        r = r.block_io(LinuxBlockIoBuilder::default().weight(300u16).build().unwrap());
    }
    let hugetlb =
        served(cg, "hugetlb", "hugetlb").filter(|d| d.has("hugetlb.2MB.max") || d.has("hugetlb.2MB.limit_in_bytes"));
    if hugetlb.is_some() {
        let limit = LinuxHugepageLimitBuilder::default().page_size("2MB").limit(4 * MIB).build().unwrap();
        r = r.hugepage_limits(vec![limit]);
    }
    cg.apply_resources(&r.build().unwrap()).unwrap();

    match memory {
        Some(Dir::V1(dir)) => assert_eq!(read(dir, "memory.limit_in_bytes"), "67108864"),
        Some(Dir::V2(dir)) => assert_eq!(read(dir, "memory.max"), "67108864"),
        None => {}
    }
    match cpu {
        Some(Dir::V1(dir)) => {
            assert_eq!(read(dir, "cpu.cfs_quota_us"), "50000");
            assert_eq!(read(dir, "cpu.cfs_period_us"), "100000");
            assert_eq!(read(dir, "cpu.shares"), "512");
        }
        Some(Dir::V2(dir)) => {
            assert_eq!(read(dir, "cpu.max"), "50000 100000");
            assert_eq!(read(dir, "cpu.weight"), "20");
        }
        None => {}
    }
    if let Some(dir) = pids {
        assert_eq!(read(dir.path(), "pids.max"), "32");
    }
    if let Some(dir) = cpuset {
        assert_eq!(read(dir.path(), "cpuset.cpus"), "0");
        assert_eq!(read(dir.path(), "cpuset.mems"), "0");
    }
    if let Some(dir) = blkio {
        let file = weight_files.into_iter().find(|f| dir.has(f)).unwrap();
        let expected = if file == "io.weight" { "2930" } else { "300" };
        assert_eq!(last_word(dir.path(), file), expected, "{file}");
    }
    match hugetlb {
        Some(Dir::V1(dir)) => assert_eq!(read(dir, "hugetlb.2MB.limit_in_bytes"), "4194304"),
        Some(Dir::V2(dir)) => assert_eq!(read(dir, "hugetlb.2MB.max"), "4194304"),
        None => {}
    }
    check_refusal_leaves_values(cg, cpu);
}

/// An invalid value anywhere writes nothing, on the real files too.
fn check_refusal_leaves_values(cg: &Cgroup, cpu: Option<Dir>) {
    let Some(dir) = cpu else { return };
    let bad = LinuxCpuBuilder::default().shares(1024u64).quota(500).build().unwrap();
    let err = cg.apply_resources(&LinuxResourcesBuilder::default().cpu(bad).build().unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "linux.resources.cpu.quota: 500 is below the 1 ms minimum (1000)");
    let weight = if dir.is_v2() { ("cpu.weight", "20") } else { ("cpu.shares", "512") };
    assert_eq!(read(dir.path(), weight.0), weight.1);
}

/// Raising memory past the current memsw limit, then lowering both, in one order each: the
/// kernel refuses the other order.
#[test]
fn v1_memory_and_swap_order_on_this_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let name = format!("/warren-res-{}-memsw", std::process::id());
    let guard = make(Cgroup::resolve(Some(Path::new(&name)), "x").unwrap());
    let Some(Dir::V1(dir)) = served(&guard.0, "memory", "memory") else {
        eprintln!("skipped: no v1 memory hierarchy");
        return;
    };
    if !dir.join("memory.memsw.limit_in_bytes").exists() {
        eprintln!("skipped: no swap accounting");
        return;
    }
    let steps = [(64, 128), (256, 512), (32, 48), (32, -1)];
    for (limit, swap) in steps {
        let swap = if swap < 0 { -1 } else { swap * MIB };
        let memory = LinuxMemoryBuilder::default().limit(limit * MIB).swap(swap).build().unwrap();
        guard.0.apply_resources(&LinuxResourcesBuilder::default().memory(memory).build().unwrap()).unwrap();
        assert_eq!(read(dir, "memory.limit_in_bytes"), (limit * MIB).to_string());
        let memsw: u64 = read(dir, "memory.memsw.limit_in_bytes").parse().unwrap();
        assert_eq!(memsw, u64::try_from(swap).unwrap_or(9_223_372_036_854_771_712), "limit {limit} MiB");
    }
}

/// cgroup2 on its own: on a hybrid host the unified hierarchy, with what it has (hugetlb
/// here); controllers it lacks are refused by name.
#[test]
fn unified_hierarchy_on_this_host() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let name = format!("/warren-res-{}-v2", std::process::id());
    let Cgroup::V1 { unified: Some(path), .. } = Cgroup::resolve(Some(Path::new(&name)), "x").unwrap() else {
        eprintln!("skipped: not a hybrid host");
        return;
    };
    let guard = make(Cgroup::V2 { path });
    let cg = &guard.0;
    let dir = cg.dirs()[0].to_path_buf();
    let controllers = read(&dir, "cgroup.controllers");
    if controllers.split_whitespace().any(|c| c == "hugetlb") && dir.join("hugetlb.2MB.max").exists() {
        let limit = LinuxHugepageLimitBuilder::default().page_size("2MB").limit(8 * MIB).build().unwrap();
        let unified = HashMap::from([("hugetlb.2MB.rsvd.max".to_string(), "2097152".to_string())]);
        let r = LinuxResourcesBuilder::default().hugepage_limits(vec![limit]).unified(unified).build().unwrap();
        cg.apply_resources(&r).unwrap();
        assert_eq!(read(&dir, "hugetlb.2MB.max"), "8388608");
        // unified is applied last, overriding the reservation limit written with the fault one.
        assert_eq!(read(&dir, "hugetlb.2MB.rsvd.max"), "2097152");
    }
    if !controllers.split_whitespace().any(|c| c == "memory") {
        let memory = LinuxMemoryBuilder::default().limit(64 * MIB).build().unwrap();
        let err = cg.apply_resources(&LinuxResourcesBuilder::default().memory(memory).build().unwrap()).unwrap_err();
        assert!(
            matches!(&err, CgroupError::ControllerUnavailable { field: memory::LIMIT, controller: "memory", .. }),
            "{err}"
        );
    }
}
