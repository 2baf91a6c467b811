//! Hosting plans: `warren spec --plan` and `warren plan apply` put a plan's numbers in
//! config.json, and from there in the container's cgroup; bad plan files are refused with a
//! one-line error and change nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// A knob named `v1_file` in `controller`'s v1 hierarchy or `v2_file` in the cgroup2 one.
fn knob(c: &Container, controller: &str, v1_file: &str, v2_file: &str) -> Result<String> {
    read_knob(&knob_path(c.pid()?, controller, v1_file, v2_file)?)
}

/// The swap limit as v1 states it (memory + swap, memsw) from either version's file
/// (cgroup2's memory.swap.max counts the swap alone).
fn memsw_limit(c: &Container) -> Result<u64> {
    let dir = cgroup_dir(c.pid()?, "memory")?;
    if !is_cgroup2(&dir) {
        return Ok(read_knob(&dir.join("memory.memsw.limit_in_bytes"))?.parse()?);
    }
    let (mem, swap): (u64, u64) =
        (read_knob(&dir.join("memory.max"))?.parse()?, read_knob(&dir.join("memory.swap.max"))?.parse()?);
    Ok(mem + swap)
}

/// One I/O throttle of `disk` ("MAJ:MIN"): v1's blkio.throttle.`v1` ("MAJ:MIN N" lines) or
/// the `v2` key of the disk's io.max line ("MAJ:MIN rbps=N wbps=max ...").
fn throttle(c: &Container, disk: &str, v1: &str, v2: &str) -> Result<String> {
    let dir = cgroup_dir(c.pid()?, "blkio")?;
    let (text, key) = if is_cgroup2(&dir) {
        (read_knob(&dir.join("io.max"))?, format!("{v2}="))
    } else {
        (read_knob(&dir.join(format!("blkio.throttle.{v1}")))?, String::new())
    };
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(disk)?.strip_prefix(' '))
        .with_context(|| format!("no {disk} in {text:?}"))?;
    let value =
        line.split(' ').find_map(|w| w.strip_prefix(key.as_str())).with_context(|| format!("no {v2} in {line:?}"))?;
    Ok(value.to_string())
}

/// Flags that keep the host's /etc/warren and environment out of the test: an empty plans
/// dir (only the built-in plans) and host defaults with io.devices = ["auto"].
struct Sources {
    plans_dir: String,
    host_config: String,
}

impl Sources {
    fn new(t: &Test) -> Result<Sources> {
        let plans = t.dir().join("plans");
        std::fs::create_dir_all(&plans)?;
        let host = t.dir().join("host.toml");
        std::fs::write(&host, "[io]\ndevices = [\"auto\"]\n")?;
        Ok(Sources { plans_dir: plans.display().to_string(), host_config: host.display().to_string() })
    }

    fn flags(&self) -> [&str; 4] {
        ["--plans-dir", &self.plans_dir, "--host-config", &self.host_config]
    }

    fn plan_file(&self, name: &str, text: &str) -> Result<()> {
        Ok(std::fs::write(Path::new(&self.plans_dir).join(format!("{name}.toml")), text)?)
    }
}

/// The whole disk that holds `path`, as "MAJ:MIN" (what the throttle files list).
fn disk_of(path: &Path) -> Result<String> {
    let dev = std::fs::metadata(path)?.dev();
    let number = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{number}"))?;
    if !sys.join("partition").exists() {
        return Ok(number);
    }
    Ok(std::fs::read_to_string(sys.parent().context("partition without a disk")?.join("dev"))?.trim().to_string())
}

/// `sleep` in a bundle whose config.json `warren spec --plan PLAN` wrote.
fn planned_bundle(t: &Test, s: &Sources, plan: &str) -> Result<Bundle> {
    let b = t.bundle(&["sleep", "100"])?;
    std::fs::remove_file(b.config_path())?;
    let dir = b.path().display().to_string();
    t.cmd(&[&["spec", "--bundle", &dir, "--plan", plan][..], &s.flags()].concat())?.ok()?;
    b.edit(|c| {
        c["process"]["terminal"] = json!(false);
        c["process"]["args"] = json!(["sleep", "100"]);
    })?;
    Ok(b)
}

#[test]
fn spec_with_a_plan_sets_the_cgroup() -> Result<()> {
    let t = Test::new("plan_spec");
    let s = Sources::new(&t)?;
    let b = planned_bundle(&t, &s, "small")?;
    let c = t.start_new(&t.id("c"), &b)?;
    // small: 0.5 CPU, shares 512, 512MiB + 256MiB swap, 256 pids, 50MB/s and 1000 IOPS read.
    let pid = c.pid()?;
    ensure!(cpu_bandwidth(pid)? == ("50000".into(), "100000".into()), "{:?}", cpu_bandwidth(pid)?);
    let weight = cpu_weight(pid)?;
    ensure!(matches!((weight.0, weight.1.as_str()), ("cpu.shares", "512") | ("cpu.weight", "20")), "{weight:?}");
    ensure!(knob(&c, "memory", "memory.limit_in_bytes", "memory.max")? == (512u64 << 20).to_string());
    ensure!(memsw_limit(&c)? == 768u64 << 20);
    ensure!(knob(&c, "pids", "pids.max", "pids.max")? == "256");
    let disk = disk_of(b.path())?;
    ensure!(throttle(&c, &disk, "read_bps_device", "rbps")? == "50000000");
    ensure!(throttle(&c, &disk, "write_iops_device", "wiops")? == "500");
    // The container sees its own limits through its cgroup namespace.
    // v1 hierarchies by controller, or the cgroup2 root (cpu.max: "QUOTA PERIOD").
    let script = "cd /sys/fs/cgroup; for k in 'memory/memory.limit_in_bytes memory.max' \
        'pids/pids.max pids.max' 'cpu/cpu.cfs_quota_us cpu.max'; do \
        set -- $k; cat $1 2>/dev/null || cut -d' ' -f1 $2; done";
    let out = c.exec(&[], &["sh", "-c", script])?;
    out.ok()?;
    let seen: Vec<&str> = out.stdout.split_whitespace().collect();
    ensure!(seen == ["536870912", "256", "50000"], "inside: {out}");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn plan_apply_rewrites_the_resources_only() -> Result<()> {
    let t = Test::new("plan_apply");
    let s = Sources::new(&t)?;
    let b = t.bundle(&["sleep", "100"])?;
    b.edit(|c| {
        c["linux"]["resources"]["cpu"] = json!({"cpus": "0", "quota": 200000, "period": 200000});
        c["linux"]["resources"]["memory"] = json!({"reservation": 8388608});
        c["annotations"] = json!({"org.example.tenant": "t1"});
    })?;
    let before = b.config()?;
    let dir = b.path().display().to_string();
    t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["nano"]].concat())?.ok()?;
    let after = b.config()?;
    let r = &after["linux"]["resources"];
    ensure!(r["cpu"] == json!({"cpus": "0", "quota": 25000, "period": 100000, "shares": 256}), "{r}");
    ensure!(r["memory"] == json!({"limit": 256u64 << 20, "swap": 256u64 << 20, "reservation": 8388608}), "{r}");
    ensure!(r["pids"] == json!({"limit": 128}) && r["devices"] == before["linux"]["resources"]["devices"], "{r}");
    let without_resources = |mut v: Value| {
        v["linux"].as_object_mut().map(|l| l.remove("resources"));
        v
    };
    ensure!(without_resources(before) == without_resources(after), "apply changed more than linux.resources");
    let leftovers: Vec<_> = std::fs::read_dir(b.path())?.flatten().map(|e| e.file_name()).collect();
    ensure!(leftovers.len() == 2, "temp file left behind: {leftovers:?}");
    let c = t.start_new(&t.id("c"), &b)?;
    ensure!(knob(&c, "pids", "pids.max", "pids.max")? == "128");
    ensure!(cpu_bandwidth(c.pid()?)?.0 == "25000");
    ensure!(knob(&c, "cpuset", "cpuset.cpus", "cpuset.cpus")? == "0");
    drop(c);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn plan_list_and_show() -> Result<()> {
    let t = Test::new("plan_list");
    let s = Sources::new(&t)?;
    s.plan_file("tiny", "[cpu]\ncpus = 0.1\n[memory]\nlimit = \"64MiB\"\nmerge = true\n[pids]\nlimit = 32\n")?;
    let out = t.cmd(&[&["plan"][..], &s.flags(), &["list"]].concat())?;
    out.ok()?;
    let rows: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    ensure!(rows[0] == ["NAME", "CPUS", "MEMORY", "SWAP", "MERGE", "IO", "PIDS"], "{out}");
    ensure!(rows[1] == ["tiny", "0.1", "64MiB", "0B", "yes", "-", "32"], "{out}");
    ensure!(rows[3][..5] == ["small", "0.5", "512MiB", "256MiB", "no"] && rows[3].last() == Some(&"256"), "{out}");
    let out = t.cmd(&[&["plan"][..], &s.flags(), &["list", "--format", "json"]].concat())?;
    let plans: Value = serde_json::from_str(&out.ok()?.stdout)?;
    let names: Vec<&str> = plans.as_array().context("array")?.iter().filter_map(|p| p["name"].as_str()).collect();
    ensure!(names == ["tiny", "nano", "small", "medium", "large"], "{names:?}");
    ensure!(plans[2]["memory"] == json!(512u64 << 20) && plans[2]["io"]["read_iops"] == json!(1000));
    ensure!(plans[0]["merge"] == json!(true) && plans[2]["merge"] == json!(false), "{plans}");
    let out = t.cmd(&[&["plan"][..], &s.flags(), &["show", "small"]].concat())?;
    ensure!(out.ok()?.stdout.contains("quota 50000 us per 100000 us"), "{out}");
    ensure!(out.stdout.contains("\nmerge:       no "), "{out}");
    let out = t.cmd(&[&["plan"][..], &s.flags(), &["show", "tiny"]].concat())?;
    ensure!(out.ok()?.stdout.contains("\nmerge:       yes "), "{out}");
    let out = t.cmd(&[&["plan"][..], &s.flags(), &["show", "huge"]].concat())?;
    ensure!(out.failed()?.error_line().contains("no plan named \"huge\""), "{out}");
    Ok(())
}

const GOOD: &str = "[cpu]\ncpus = 0.5\n[memory]\nlimit = \"128MiB\"\n[pids]\nlimit = 64\n";

/// A plan file `bad.toml` for `plan apply` and `spec --plan`: each fails with one line naming
/// the file and the field, and leaves config.json as it was (or not there).
#[test]
fn bad_plans_change_nothing() -> Result<()> {
    let t = Test::new("plan_bad");
    let b = t.bundle(&["true"])?;
    let dir = b.path().display().to_string();
    let cases = [
        (GOOD.replace("0.5", "-0.5"), "cpu.cpus: -0.5 is negative"),
        (GOOD.replace("limit = 64\n", ""), "pids.limit: missing (required)"),
        (GOOD.replace("[pids]", "[pids]\nmax = 5"), "pids.max: unknown field `max`"),
        (GOOD.replace("128MiB", "128M"), "memory.limit: \"128M\": unit \"M\" is ambiguous"),
        (GOOD.replace("128MiB", "128"), "memory.limit: \"128\" has no unit"),
        (GOOD.replace("0.5", "0.005"), "cpu.cpus: 0.005 is below 0.01"),
        (GOOD.replace("128MiB", "1MiB"), "memory.limit: 1MiB is below the 6MiB floor"),
        (format!("{GOOD}[io]\nread_bps = \"5MB\"\n"), "io.read_bps: \"5MB\" is not a rate"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let s = Sources::new(&t)?;
        s.plan_file("bad", text)?;
        let config = std::fs::read(b.config_path())?;
        let out = t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["bad"]].concat())?;
        check_error(&out, &format!("plans/bad.toml: {want}"))?;
        ensure!(std::fs::read(b.config_path())? == config, "case {i}: config.json changed");
        ensure!(std::fs::read_dir(b.path())?.count() == 2, "case {i}: a file was left in the bundle");
        let fresh = t.dir().join(format!("fresh{i}"));
        std::fs::create_dir(&fresh)?;
        let fresh_dir = fresh.display().to_string();
        let out = t.cmd(&[&["spec", "--bundle", &fresh_dir, "--plan", "bad"][..], &s.flags()].concat())?;
        check_error(&out, want)?;
        ensure!(!fresh.join("config.json").exists(), "case {i}: spec wrote a config.json");
    }
    t.assert_no_leftovers();
    Ok(())
}

/// An unknown plan name, and host defaults naming a device this host does not have.
#[test]
fn unknown_plan_and_device_change_nothing() -> Result<()> {
    let t = Test::new("plan_bad_host");
    let b = t.bundle(&["true"])?;
    let dir = b.path().display().to_string();
    let s = Sources::new(&t)?;
    let config = std::fs::read(b.config_path())?;
    let out = t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["huge"]].concat())?;
    check_error(&out, "no plan named \"huge\" (plans: large, medium, nano, small)")?;
    std::fs::write(&s.host_config, "[io]\ndevices = [\"auto\", \"4095:77\"]\n")?;
    let out = t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["small"]].concat())?;
    check_error(&out, "host.toml: io.devices: \"4095:77\" is no block device of this host")?;
    std::fs::write(&s.host_config, "[io]\ndevice = [\"auto\"]\n")?;
    let out = t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["small"]].concat())?;
    check_error(&out, "host.toml: io.device: unknown field `device`")?;
    ensure!(std::fs::read(b.config_path())? == config, "config.json changed");
    t.assert_no_leftovers();
    Ok(())
}

/// A one-line error that contains `want`.
fn check_error(out: &Out, want: &str) -> Result<()> {
    out.failed()?;
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(lines.len() == 1, "want a one-line error: {out}");
    ensure!(lines[0].contains(want), "error lacks {want:?}: {out}");
    Ok(())
}

/// A 64 MiB loop disk with one partition holding an ext4 filesystem, mounted; all undone on
/// drop (unmount, detach: the kernel drops the partition with the loop device).
struct PartitionedDisk {
    image: PathBuf,
    loop_dev: String,
    mount: PathBuf,
    mounted: bool,
}

impl PartitionedDisk {
    fn new(t: &Test) -> Result<PartitionedDisk> {
        let image = t.dir().join("disk.img");
        std::fs::File::create(&image)?.set_len(64 << 20)?;
        let img = image.display().to_string();
        let out = host(t, "losetup", &["--find", "--show", "--partscan", &img])?;
        let loop_dev = out.ok()?.stdout.trim().to_string();
        let mount = t.dir().join("mnt");
        let mut disk = PartitionedDisk { image, loop_dev, mount, mounted: false };
        // The kernel here parses no partition tables: the partition is declared directly.
        host(t, "addpart", &[&disk.loop_dev, "1", "2048", "129024"])?.ok()?;
        let part = format!("{}p1", disk.loop_dev);
        let start = std::time::Instant::now();
        while !Path::new(&part).exists() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        host(t, "mkfs.ext4", &["-q", "-F", &part])?.ok()?;
        std::fs::create_dir(&disk.mount)?;
        host(t, "mount", &[&part, &disk.mount.display().to_string()])?.ok()?;
        disk.mounted = true;
        Ok(disk)
    }
}

impl Drop for PartitionedDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount").arg(&self.mount).status();
        }
        let _ = std::process::Command::new("losetup").args(["-d", &self.loop_dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// The kernel throttles whole disks only (a partition's number is refused with ENODEV): a
/// rootfs on a partition gets its I/O limits on the disk, and the container starts.
#[test]
fn a_rootfs_on_a_partition_is_throttled_on_its_disk() -> Result<()> {
    let t = Test::new("plan_part");
    let disk = PartitionedDisk::new(&t)?;
    let s = Sources::new(&t)?;
    let b = t.bundle(&["sleep", "100"])?;
    let rootfs = disk.mount.join("rootfs");
    host(&t, "cp", &["-a", &b.rootfs().display().to_string(), &rootfs.display().to_string()])?.ok()?;
    let rootfs_text = rootfs.display().to_string();
    b.edit(|c| c["root"]["path"] = json!(rootfs_text))?;
    let dir = b.path().display().to_string();
    t.cmd(&[&["plan", "apply", "--bundle", &dir][..], &s.flags(), &["small"]].concat())?.ok()?;
    let loop_disk = std::fs::read_to_string(format!("/sys/block/{}/dev", disk.loop_dev.trim_start_matches("/dev/")))?;
    let loop_disk = loop_disk.trim();
    let dev = std::fs::metadata(&rootfs)?.dev();
    let partition = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let is_partition = Path::new(&format!("/sys/dev/block/{partition}/partition")).exists();
    ensure!(is_partition && partition != loop_disk, "the rootfs is not on a partition: {partition}");
    let r = b.config()?["linux"]["resources"]["blockIO"]["throttleReadBpsDevice"].clone();
    let (major, minor) = loop_disk.split_once(':').context("MAJ:MIN")?;
    ensure!(r == json!([{"major": major.parse::<i64>()?, "minor": minor.parse::<i64>()?, "rate": 50000000}]), "{r}");
    let c = t.start_new(&t.id("c"), &b)?;
    ensure!(throttle(&c, loop_disk, "read_bps_device", "rbps")? == "50000000");
    drop(c);
    drop(disk);
    t.assert_no_leftovers();
    Ok(())
}
