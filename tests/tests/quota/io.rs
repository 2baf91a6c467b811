//! Block I/O throttling, measured on a loop device of the test's own that
//! the container reaches as /dev/qdisk and drives with O_DIRECT (busybox dd
//! oflag=direct / iflag=direct), so that every operation reaches the device.

use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use warren_tests::*;

use super::start_sh;

const MIB: u64 = 1 << 20;
/// Big enough that dd is still going when the measurement ends.
const DISK_SIZE: u64 = 256 * MIB;

/// One of the per-device counters the throttle accounts.
#[derive(Clone, Copy, Debug)]
enum Counter {
    WriteBytes,
    ReadOps,
}

impl Counter {
    /// (v1 file, its column; v2 io.stat key).
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Counter::WriteBytes => ("blkio.throttle.io_service_bytes", "Write", "wbytes"),
            Counter::ReadOps => ("blkio.throttle.io_serviced", "Read", "rios"),
        }
    }

    /// The counter's value for device `dev` ("7:0") in `pid`'s cgroup (0
    /// until the first I/O: the kernel lists a device only once used).
    fn read(self, pid: i32, dev: &str) -> Result<u64> {
        let (v1_file, column, v2_key) = self.names();
        let path = knob_path(pid, "blkio", v1_file, "io.stat")?;
        let text = read_knob(&path)?;
        let mut lines = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>());
        let value = if path.ends_with("io.stat") {
            lines
                .find(|f| f.first() == Some(&dev))
                .and_then(|f| f.iter().find_map(|kv| kv.strip_prefix(v2_key)?.strip_prefix('=')?.parse().ok()))
        } else {
            lines.find(|f| f.len() == 3 && f[0] == dev && f[1] == column).and_then(|f| f[2].parse().ok())
        };
        Ok(value.unwrap_or(0))
    }
}

/// Starts `dd ARGS` on /dev/qdisk (a fresh loop device) in a container
/// whose `field` throttles that device to `limit`, and returns what
/// `counter` measured per second over 3 s once dd is going.
fn throttled_rate(name: &str, field: &str, limit: u64, counter: Counter, dd: &str) -> Result<f64> {
    let t = Test::new(name);
    let disk = LoopDevice::new(&t.dir().join("disk.img"), DISK_SIZE)?;
    let (major, minor) = (disk.major(), disk.minor());
    let (_b, c) = start_sh(&t, &format!("exec dd {dd}"), |cfg| {
        cfg["linux"]["devices"] = json!([{"path": "/dev/qdisk", "type": "b", "major": major, "minor": minor,
                                           "fileMode": 0o660, "uid": 0, "gid": 0}]);
        let rules = cfg["linux"]["resources"]["devices"].as_array_mut().expect("warren spec has device rules");
        rules.push(json!({"allow": true, "type": "b", "major": major, "minor": minor, "access": "rw"}));
        cfg["linux"]["resources"]["blockIO"] = json!({field: [{"major": major, "minor": minor, "rate": limit}]});
    })?;
    let (pid, dev) = (c.pid()?, disk.number());
    let start = Instant::now();
    while counter.read(pid, &dev)? == 0 {
        ensure!(start.elapsed() < Duration::from_secs(5), "dd did no I/O on {dev}: {}", c.stdout());
        sleep(Duration::from_millis(10));
    }
    let (v0, t0) = (counter.read(pid, &dev)?, Instant::now());
    sleep(Duration::from_secs(3));
    let (v1, wall) = (counter.read(pid, &dev)?, t0.elapsed());
    ensure!(c.status()? == "running", "dd stopped early: {}", c.stdout());
    drop(c);
    drop(disk);
    t.assert_no_leftovers();
    Ok((v1 - v0) as f64 / wall.as_secs_f64())
}

#[test]
fn write_bps_throttle_holds_direct_writes() -> Result<()> {
    const LIMIT: u64 = 5 * MIB;
    let field = "throttleWriteBpsDevice";
    let rate = throttled_rate(
        "quota_wbps",
        field,
        LIMIT,
        Counter::WriteBytes,
        "if=/dev/zero of=/dev/qdisk bs=64k oflag=direct",
    )
    .context(field)?;
    let mib_s = rate / MIB as f64;
    eprintln!("{field} 5 MiB/s: measured {mib_s:.3} MiB/s");
    // The upper bound is the point; the lower one shows the writer really
    // ran into the throttle rather than into something slower.
    ensure!(rate <= LIMIT as f64 * 1.1, "{field} 5 MiB/s, measured {mib_s:.2} MiB/s");
    ensure!(rate >= LIMIT as f64 * 0.5, "{field} 5 MiB/s, measured only {mib_s:.2} MiB/s");
    Ok(())
}

#[test]
fn read_iops_throttle_holds_direct_reads() -> Result<()> {
    const LIMIT: u64 = 100;
    let field = "throttleReadIOPSDevice";
    let rate =
        throttled_rate("quota_riops", field, LIMIT, Counter::ReadOps, "if=/dev/qdisk of=/dev/null bs=4k iflag=direct")
            .context(field)?;
    eprintln!("{field} {LIMIT}/s: measured {rate:.1}/s");
    ensure!(rate <= LIMIT as f64 * 1.1, "{field} {LIMIT}/s, measured {rate:.1}/s");
    ensure!(rate >= LIMIT as f64 * 0.5, "{field} {LIMIT}/s, measured only {rate:.1}/s");
    Ok(())
}
