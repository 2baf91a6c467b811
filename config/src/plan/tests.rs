use super::*;

const GOOD: &str = r#"
description = "test plan"

[cpu]
cpus = 0.25
shares = 256

[memory]
limit = "256MiB"
swap = "128MiB"

[io]
read_bps = "20MB/s"
write_bps = "10MiB/s"
read_iops = 500
write_iops = 250

[pids]
limit = 64
"#;

fn parse(text: &str) -> Result<Plan, String> {
    Plan::parse("t", text, "t.toml").map_err(|e| e.to_string())
}

/// GOOD with `from` replaced by `to` (which must change something).
fn edited(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn a_full_plan_parses() {
    let plan = parse(GOOD).unwrap();
    assert_eq!(plan.name(), "t");
    assert_eq!(plan.description(), Some("test plan"));
    assert_eq!(plan.cpus(), 0.25);
    assert_eq!(plan.cpu_quota(), 25_000);
    assert_eq!(plan.cpu_shares(), Some(256));
    assert_eq!((plan.memory(), plan.swap()), (256 << 20, 128 << 20));
    let io = plan.io();
    assert_eq!((io.read_bps(), io.write_bps()), (Some(20_000_000), Some(10 << 20)));
    assert_eq!((io.read_iops(), io.write_iops()), (Some(500), Some(250)));
    assert_eq!(plan.pids(), 64);
}

#[test]
fn optional_values_may_be_left_out() {
    let plan = parse("[cpu]\ncpus = 2\n[memory]\nlimit = \"1GiB\"\n[pids]\nlimit = 100\n").unwrap();
    assert_eq!(plan.cpu_quota(), 200_000);
    assert_eq!((plan.cpu_shares(), plan.swap(), plan.description()), (None, 0, None));
    assert!(plan.io().is_empty());
}

#[test]
fn the_smallest_quota_rounds_to_the_microsecond() {
    assert_eq!(parse(&edited("cpus = 0.25", "cpus = 0.01")).unwrap().cpu_quota(), 1_000);
    assert_eq!(parse(&edited("cpus = 0.25", "cpus = 0.333333")).unwrap().cpu_quota(), 33_333);
}

#[test]
fn missing_required_values_are_named() {
    let cases = [
        ("cpus = 0.25\n", "t.toml: cpu.cpus: missing (required)"),
        ("limit = \"256MiB\"\n", "t.toml: memory.limit: missing (required)"),
        ("[pids]\nlimit = 64\n", "t.toml: pids.limit: missing (required)"),
    ];
    for (removed, want) in cases {
        assert_eq!(parse(&edited(removed, "")).unwrap_err(), want);
    }
    assert_eq!(parse("").unwrap_err(), "t.toml: cpu.cpus: missing (required)");
}

#[test]
fn negative_values_are_refused() {
    let cases = [
        ("cpus = 0.25", "cpus = -0.5", "t.toml: cpu.cpus: -0.5 is negative"),
        ("shares = 256", "shares = -2", "t.toml: cpu.shares: -2 is negative"),
        ("limit = \"256MiB\"", "limit = \"-256MiB\"", "t.toml: memory.limit: \"-256MiB\" is negative"),
        ("limit = \"256MiB\"", "limit = -1", "t.toml: memory.limit: -1 is negative"),
        ("swap = \"128MiB\"", "swap = \"-1B\"", "t.toml: memory.swap: \"-1B\" is negative"),
        ("read_bps = \"20MB/s\"", "read_bps = \"-20MB/s\"", "t.toml: io.read_bps: \"-20MB/s\" is negative"),
        ("write_iops = 250", "write_iops = -250", "t.toml: io.write_iops: -250 is negative"),
        ("limit = 64", "limit = -1", "t.toml: pids.limit: -1 is negative"),
    ];
    for (from, to, want) in cases {
        assert_eq!(parse(&edited(from, to)).unwrap_err(), want);
    }
}

#[test]
fn values_out_of_range_are_refused() {
    let cases = [
        ("cpus = 0.25", "cpus = 0", "t.toml: cpu.cpus: 0 is zero: a plan needs some CPU time"),
        ("cpus = 0.25", "cpus = 0.005", "t.toml: cpu.cpus: 0.005 is below 0.01: the kernel refuses a CPU quota"),
        ("cpus = 0.25", "cpus = 0.00999", "t.toml: cpu.cpus: 0.00999 is below 0.01"),
        ("cpus = 0.25", "cpus = nan", "t.toml: cpu.cpus: NaN is not a number of CPUs"),
        ("cpus = 0.25", "cpus = inf", "t.toml: cpu.cpus: inf is not a number of CPUs"),
        ("cpus = 0.25", "cpus = 10000", "t.toml: cpu.cpus: 10000 is more CPUs than Linux supports"),
        ("shares = 256", "shares = 1", "t.toml: cpu.shares: 1 is below 2"),
        ("shares = 256", "shares = 300000", "t.toml: cpu.shares: 300000 is above 262144"),
        ("shares = 256", "shares = 2.5", "t.toml: cpu.shares: 2.5 is not a whole number"),
        ("limit = \"256MiB\"", "limit = \"4MiB\"", "t.toml: memory.limit: 4MiB is below the 6MiB floor"),
        ("limit = \"256MiB\"", "limit = \"0B\"", "t.toml: memory.limit: 0B is below the 6MiB floor"),
        ("swap = \"128MiB\"", "swap = \"8EiB\"", "t.toml: memory.swap: \"8EiB\": unknown unit"),
        (
            "swap = \"128MiB\"",
            "swap = \"8796093021952MiB\"",
            "t.toml: memory.swap: 8796093021952MiB plus memory.limit is too large",
        ),
        ("read_bps = \"20MB/s\"", "read_bps = \"0B/s\"", "t.toml: io.read_bps: 0B/s is zero: leave the key out"),
        ("read_iops = 500", "read_iops = 0", "t.toml: io.read_iops: 0 is zero"),
        ("limit = 64", "limit = 0", "t.toml: pids.limit: 0 is zero"),
        ("limit = 64", "limit = 6.4", "t.toml: pids.limit: 6.4 is not a whole number"),
        ("description = \"test plan\"", "description = \"a\\nb\"", "t.toml: description: (text) spans lines"),
    ];
    for (from, to, want) in cases {
        let err = parse(&edited(from, to)).unwrap_err();
        assert!(err.starts_with(want), "{to}: {err}");
    }
}

#[test]
fn bad_units_are_refused() {
    let cases = [
        ("limit = \"256MiB\"", "limit = \"256\"", "t.toml: memory.limit: \"256\" has no unit"),
        ("limit = \"256MiB\"", "limit = 268435456", "t.toml: memory.limit: 268435456 has no unit"),
        ("limit = \"256MiB\"", "limit = \"256MB\"", ""),
        ("limit = \"256MiB\"", "limit = \"256M\"", "t.toml: memory.limit: \"256M\": unit \"M\" is ambiguous"),
        ("limit = \"256MiB\"", "limit = \"256KB\"", "t.toml: memory.limit: \"256KB\": unit \"KB\" is ambiguous"),
        ("limit = \"256MiB\"", "limit = \"256 furlongs\"", "t.toml: memory.limit: \"256 furlongs\": unknown unit"),
        ("read_bps = \"20MB/s\"", "read_bps = \"20MB\"", "t.toml: io.read_bps: \"20MB\" is not a rate"),
        ("read_bps = \"20MB/s\"", "read_bps = \"20Mb/s\"", "t.toml: io.read_bps: \"20Mb/s\": unit \"Mb\" is ambiguous"),
        ("read_iops = 500", "read_iops = \"500\"", "t.toml: io.read_iops: \"500\" is a string"),
        ("cpus = 0.25", "cpus = \"0.25\"", "t.toml: cpu.cpus: \"0.25\" is a string"),
    ];
    for (from, to, want) in cases {
        let result = parse(&edited(from, to));
        match want {
            "" => assert!(result.is_ok(), "{to}: {result:?}"),
            want => assert!(result.as_ref().unwrap_err().starts_with(want), "{to}: {result:?}"),
        }
    }
}

#[test]
fn unknown_keys_and_bad_syntax_are_refused() {
    let cases = [
        ("shares = 256", "weight = 256", "t.toml: cpu.weight: unknown field `weight`"),
        ("[pids]", "[pid]", "t.toml: pid: unknown field `pid`"),
        ("swap = \"128MiB\"", "swap_limit = \"128MiB\"", "t.toml: memory.swap_limit: unknown field"),
        ("description = \"test plan\"", "name = \"x\"", "t.toml: name: unknown field `name`"),
        ("limit = 64", "limit = 64 64", "t.toml: line 19: "),
        ("[cpu]", "cpu = 1\n[cpu]", "t.toml: line "),
    ];
    for (from, to, want) in cases {
        let err = parse(&edited(from, to)).unwrap_err();
        assert!(err.starts_with(want), "{to}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[test]
fn memory_merge_is_off_unless_asked() {
    assert!(!parse(GOOD).unwrap().memory_merge());
    let merged = edited("swap = \"128MiB\"", "swap = \"128MiB\"\nmerge = true");
    assert!(parse(&merged).unwrap().memory_merge());
    let off = edited("swap = \"128MiB\"", "swap = \"128MiB\"\nmerge = false");
    assert!(!parse(&off).unwrap().memory_merge());
    // A string is not a boolean: "yes" or "true" in quotes would hide a typo's reading.
    let quoted = edited("swap = \"128MiB\"", "swap = \"128MiB\"\nmerge = \"true\"");
    let err = parse(&quoted).unwrap_err();
    assert!(err.starts_with("t.toml: memory.merge: "), "{err}");
}

#[test]
fn a_disk_limit_is_optional_and_has_a_floor() {
    assert_eq!(parse(GOOD).unwrap().disk(), None);
    let with = format!("{GOOD}\n[disk]\nlimit = \"1GiB\"\n");
    assert_eq!(parse(&with).unwrap().disk(), Some(1 << 30));
    let small = format!("{GOOD}\n[disk]\nlimit = \"8MiB\"\n");
    let err = parse(&small).unwrap_err();
    assert!(err.starts_with("t.toml: disk.limit: 8MiB is below the 16MiB floor"), "{err}");
}
