//! Stats as containerd's metrics types: `io.containerd.cgroups.v1.Metrics` on v1 (and hybrid)
//! hosts, `io.containerd.cgroups.v2.Metrics` on cgroup2-only hosts; what `ctr task metrics`
//! and the CRI read.
//!
//! v1 uses the generated message of the protos crate. The crate carries no v2 message, so
//! that one is written field by field here, with the field numbers of containerd's cgroup2
//! stats schema.

use std::collections::BTreeMap;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedOutputStream, Message, MessageField};
use warren::cgroups::stats::{BlkioEntry, Stats};

use crate::error::{Result, ShimError};

pub const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// `stats` packed for containerd; `v2` when the container's cgroup is cgroup2-only.
pub fn to_any(stats: &Stats, v2: bool) -> Result<Any> {
    let value = if v2 {
        encode_v2(stats)
    } else {
        v1_metrics(stats).write_to_bytes().map_err(|source| ShimError::Encode { what: "v1 metrics", source })?
    };
    Ok(Any { type_url: if v2 { V2_TYPE } else { V1_TYPE }.into(), value, ..Default::default() })
}

fn v1_metrics(s: &Stats) -> v1::Metrics {
    let raw = |k: &str| s.memory.raw.get(k).copied().unwrap_or(0);
    let entry = |e: &warren::cgroups::stats::MemoryEntry| {
        MessageField::some(v1::MemoryEntry {
            limit: e.limit,
            usage: e.usage,
            max: e.max,
            failcnt: e.failcnt,
            ..Default::default()
        })
    };
    let memory = v1::MemoryStat {
        cache: s.memory.cache,
        rss: raw("rss"),
        rss_huge: raw("rss_huge"),
        mapped_file: raw("mapped_file"),
        dirty: raw("dirty"),
        writeback: raw("writeback"),
        pg_pg_in: raw("pgpgin"),
        pg_pg_out: raw("pgpgout"),
        pg_fault: raw("pgfault"),
        pg_maj_fault: raw("pgmajfault"),
        inactive_anon: raw("inactive_anon"),
        active_anon: raw("active_anon"),
        inactive_file: raw("inactive_file"),
        active_file: raw("active_file"),
        unevictable: raw("unevictable"),
        hierarchical_memory_limit: raw("hierarchical_memory_limit"),
        hierarchical_swap_limit: raw("hierarchical_memsw_limit"),
        total_cache: raw("total_cache"),
        total_rss: raw("total_rss"),
        total_rss_huge: raw("total_rss_huge"),
        total_mapped_file: raw("total_mapped_file"),
        total_dirty: raw("total_dirty"),
        total_writeback: raw("total_writeback"),
        total_pg_pg_in: raw("total_pgpgin"),
        total_pg_pg_out: raw("total_pgpgout"),
        total_pg_fault: raw("total_pgfault"),
        total_pg_maj_fault: raw("total_pgmajfault"),
        total_inactive_anon: raw("total_inactive_anon"),
        total_active_anon: raw("total_active_anon"),
        total_inactive_file: raw("total_inactive_file"),
        total_active_file: raw("total_active_file"),
        total_unevictable: raw("total_unevictable"),
        usage: entry(&s.memory.usage),
        swap: entry(&s.memory.swap),
        kernel: entry(&s.memory.kernel),
        kernel_tcp: entry(&s.memory.kernel_tcp),
        ..Default::default()
    };
    v1::Metrics {
        hugetlb: s
            .hugetlb
            .iter()
            .map(|(size, h)| v1::HugetlbStat {
                usage: h.usage,
                max: h.max,
                failcnt: h.failcnt,
                pagesize: size.clone(),
                ..Default::default()
            })
            .collect(),
        pids: MessageField::some(v1::PidsStat { current: s.pids.current, limit: s.pids.limit, ..Default::default() }),
        cpu: MessageField::some(v1_cpu(s)),
        memory: MessageField::some(memory),
        blkio: MessageField::some(v1::BlkIOStat {
            io_service_bytes_recursive: blkio_entries(&s.blkio.io_service_bytes_recursive),
            io_serviced_recursive: blkio_entries(&s.blkio.io_serviced_recursive),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v1_cpu(s: &Stats) -> v1::CPUStat {
    let u = &s.cpu.usage;
    let t = &s.cpu.throttling;
    v1::CPUStat {
        usage: MessageField::some(v1::CPUUsage {
            total: u.total,
            kernel: u.kernel,
            user: u.user,
            per_cpu: u.percpu.clone(),
            ..Default::default()
        }),
        throttling: MessageField::some(v1::Throttle {
            periods: t.periods,
            throttled_periods: t.throttled_periods,
            throttled_time: t.throttled_time,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn blkio_entries(entries: &[BlkioEntry]) -> Vec<v1::BlkIOEntry> {
    entries
        .iter()
        .map(|e| v1::BlkIOEntry {
            op: e.op.clone(),
            major: e.major,
            minor: e.minor,
            value: e.value,
            ..Default::default()
        })
        .collect()
}

/// A message under construction: (field number, value) pairs, written in order.
#[derive(Default)]
struct Fields(Vec<u8>);

impl Fields {
    fn u64(mut self, field: u32, value: u64) -> Fields {
        if value != 0 {
            let mut out = CodedOutputStream::vec(&mut self.0);
            let _ = out.write_uint64(field, value);
            let _ = out.flush();
        }
        self
    }

    fn bytes(mut self, field: u32, value: &[u8]) -> Fields {
        let mut out = CodedOutputStream::vec(&mut self.0);
        let _ = out.write_bytes(field, value);
        let _ = out.flush();
        drop(out);
        self
    }

    fn message(self, field: u32, m: Fields) -> Fields {
        self.bytes(field, &m.0)
    }
}

fn encode_v2(s: &Stats) -> Vec<u8> {
    let raw = |k: &str| s.memory.raw.get(k).copied().unwrap_or(0);
    let pids = Fields::default().u64(1, s.pids.current).u64(2, s.pids.limit);
    let ns_to_us = |ns: u64| ns / 1000;
    let cpu = Fields::default()
        .u64(1, ns_to_us(s.cpu.usage.total))
        .u64(2, ns_to_us(s.cpu.usage.user))
        .u64(3, ns_to_us(s.cpu.usage.kernel))
        .u64(4, s.cpu.throttling.periods)
        .u64(5, s.cpu.throttling.throttled_periods)
        .u64(6, ns_to_us(s.cpu.throttling.throttled_time));
    const MEMORY_STAT: [&str; 31] = [
        "anon",
        "file",
        "kernel_stack",
        "slab",
        "sock",
        "shmem",
        "file_mapped",
        "file_dirty",
        "file_writeback",
        "anon_thp",
        "inactive_anon",
        "active_anon",
        "inactive_file",
        "active_file",
        "unevictable",
        "slab_reclaimable",
        "slab_unreclaimable",
        "pgfault",
        "pgmajfault",
        "workingset_refault",
        "workingset_activate",
        "workingset_nodereclaim",
        "pgrefill",
        "pgscan",
        "pgsteal",
        "pgactivate",
        "pgdeactivate",
        "pglazyfree",
        "pglazyfreed",
        "thp_fault_alloc",
        "thp_collapse_alloc",
    ];
    let mut memory = Fields::default();
    for (i, key) in MEMORY_STAT.iter().enumerate() {
        memory = memory.u64(i as u32 + 1, raw(key));
    }
    // Warren counts swap as memory+swap (v1's memsw); v2's fields are swap alone.
    let swap_usage = s.memory.swap.usage.saturating_sub(s.memory.usage.usage);
    let swap_limit = s.memory.swap.limit.saturating_sub(s.memory.usage.limit);
    memory = memory.u64(32, s.memory.usage.usage).u64(33, s.memory.usage.limit).u64(34, swap_usage).u64(35, swap_limit);
    let mut m = Fields::default().message(1, pids).message(2, cpu).message(4, memory).message(6, io_v2(s));
    for (size, h) in &s.hugetlb {
        m = m.message(7, Fields::default().u64(1, h.usage).u64(2, h.max).bytes(3, size.as_bytes()));
    }
    m.0
}

/// v2 io.stat lines: one entry per device with bytes and operations read and written.
fn io_v2(s: &Stats) -> Fields {
    let mut devices: BTreeMap<(u64, u64), [u64; 4]> = BTreeMap::new();
    for (list, base) in [(&s.blkio.io_service_bytes_recursive, 0), (&s.blkio.io_serviced_recursive, 2)] {
        for e in list {
            let slot = match e.op.as_str() {
                "Read" => base,
                "Write" => base + 1,
                _ => continue,
            };
            devices.entry((e.major, e.minor)).or_default()[slot] += e.value;
        }
    }
    let mut io = Fields::default();
    for ((major, minor), [rbytes, wbytes, rios, wios]) in devices {
        let entry =
            Fields::default().u64(1, major).u64(2, minor).u64(3, rbytes).u64(4, wbytes).u64(5, rios).u64(6, wios);
        io = io.message(1, entry);
    }
    io
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::CodedInputStream;

    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        Int(u64),
        Bytes(Vec<u8>),
    }
    use Value::Int;

    /// (field, value) pairs of one message.
    fn fields(bytes: &[u8]) -> Vec<(u32, Value)> {
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut out = Vec::new();
        while let Some(tag) = input.read_raw_tag_or_eof().unwrap() {
            let value = match tag & 7 {
                0 => Int(input.read_uint64().unwrap()),
                _ => Value::Bytes(input.read_bytes().unwrap()),
            };
            out.push((tag >> 3, value));
        }
        out
    }

    fn sub(msg: &[(u32, Value)], field: u32) -> Vec<(u32, Value)> {
        match &msg.iter().find(|(f, _)| *f == field).unwrap().1 {
            Value::Bytes(b) => fields(b),
            Int(_) => panic!("field {field} is no message"),
        }
    }

    #[test]
    fn v2_field_numbers() {
        let mut s = Stats::default();
        s.pids.current = 3;
        s.pids.limit = 10;
        s.cpu.usage.total = 5_000_000;
        s.cpu.usage.user = 3_000_000;
        s.memory.usage.usage = 4096;
        s.memory.usage.limit = 8192;
        s.memory.raw.insert("anon".into(), 1024);
        s.memory.raw.insert("pgfault".into(), 7);
        let m = fields(&encode_v2(&s));
        assert_eq!(sub(&m, 1), vec![(1, Int(3)), (2, Int(10))]);
        assert_eq!(sub(&m, 2), vec![(1, Int(5000)), (2, Int(3000))]);
        let memory = sub(&m, 4);
        for (field, want) in [(1, 1024), (18, 7), (32, 4096), (33, 8192)] {
            assert!(memory.contains(&(field, Int(want))), "memory field {field}: {memory:?}");
        }
    }

    #[test]
    fn v1_type_and_values() {
        let mut s = Stats::default();
        s.pids.current = 2;
        s.memory.usage.usage = 4096;
        let any = to_any(&s, false).unwrap();
        assert_eq!(any.type_url, V1_TYPE);
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.memory.usage.usage, 4096);
    }
}
