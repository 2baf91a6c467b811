//! Namespaces: each one asked for is new (or joined by path), and its effect
//! is visible from inside the container.

use anyhow::{ensure, Result};
use serde_json::Value;
use warren_tests::*;

/// Adds a namespace unless the default config already has one of that type.
fn add_ns(cfg: &mut Value, ns: Value) {
    let list = cfg["linux"]["namespaces"].as_array_mut().unwrap();
    if !list.iter().any(|n| n["type"] == ns["type"]) {
        list.push(ns);
    }
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

#[test]
fn pid_namespace_makes_process_pid_1() -> Result<()> {
    let t = Test::new("pidns");
    let out = t.run_sh("echo $$; tr '\\0' ' ' </proc/1/cmdline; echo", |_| {})?;
    out.ok()?;
    let mut lines = out.stdout.lines();
    ensure!(lines.next() == Some("1"), "{out}");
    ensure!(lines.next().is_some_and(|l| l.starts_with("sh -c")), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn default_namespaces_differ_from_host() -> Result<()> {
    let t = Test::new("ns_differ");
    let kinds = ["pid", "net", "ipc", "uts", "mnt"];
    let script: String = kinds.iter().map(|k| format!("readlink /proc/self/ns/{k};")).collect();
    let out = t.run_sh(&script, |_| {})?;
    out.ok()?;
    let inside: Vec<&str> = out.stdout.lines().collect();
    ensure!(inside.len() == kinds.len(), "{out}");
    for (k, got) in kinds.iter().zip(inside) {
        ensure!(got != host_ns(k), "{k} namespace is the host's: {got}");
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn namespace_not_listed_is_shared_with_host() -> Result<()> {
    let t = Test::new("ns_shared");
    let out = t.run_sh("readlink /proc/self/ns/net", |c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "network");
    })?;
    ensure!(out.ok()?.stdout.trim() == host_ns("net"), "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn uts_hostname_and_domainname() -> Result<()> {
    let t = Test::new("uts");
    let out = t.run_sh("hostname; cat /proc/sys/kernel/domainname", |c| {
        c["hostname"] = json!("wt-host");
        c["domainname"] = json!("wt-domain");
    })?;
    ensure!(out.ok()?.stdout == "wt-host\nwt-domain\n", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn user_namespace_with_several_ranges() -> Result<()> {
    let t = Test::new("userns");
    let out = t.run_sh("cat /proc/self/uid_map /proc/self/gid_map; id -u; id -g", |c| {
        add_ns(c, json!({"type": "user"}));
        let maps = json!([
            {"containerID": 0, "hostID": 100000, "size": 1000},
            {"containerID": 1000, "hostID": 200000, "size": 10}
        ]);
        c["linux"]["uidMappings"] = maps.clone();
        c["linux"]["gidMappings"] = maps;
    })?;
    out.ok()?;
    let rows: Vec<Vec<&str>> = out.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    let want_map = [vec!["0", "100000", "1000"], vec!["1000", "200000", "10"]];
    ensure!(rows.len() == 6, "{out}");
    ensure!(rows[0..2] == want_map && rows[2..4] == want_map, "maps: {out}");
    ensure!(rows[4] == ["0"] && rows[5] == ["0"], "ids: {out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn network_namespace_has_only_lo() -> Result<()> {
    let t = Test::new("netns");
    // /proc/net/dev: two header lines, then one line per interface.
    // And lo is up, as runc leaves it (IFF_UP is bit 0 of its flags).
    let out = t.run_sh("tail -n +3 /proc/net/dev | cut -d: -f1; cat /sys/class/net/lo/flags", |_| {})?;
    let words: Vec<&str> = out.ok()?.stdout.split_whitespace().collect();
    ensure!(words.len() == 2 && words[0] == "lo", "{out}");
    let flags = u32::from_str_radix(words[1].trim_start_matches("0x"), 16)?;
    ensure!(flags & 1 == 1, "lo is down in the container: flags {}", words[1]);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn ipc_namespace_is_private() -> Result<()> {
    let t = Test::new("ipcns");
    // A private IPC namespace starts with no System V objects at all.
    let out = t.run_sh("readlink /proc/self/ns/ipc; tail -n +2 /proc/sysvipc/shm | wc -l", |_| {})?;
    let lines: Vec<&str> = out.ok()?.stdout.lines().collect();
    ensure!(lines.len() == 2 && lines[0] != host_ns("ipc") && lines[1].trim() == "0", "{out}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn cgroup_namespace_shows_root() -> Result<()> {
    let t = Test::new("cgroupns");
    let out = t.run_sh("cat /proc/self/cgroup", |c| add_ns(c, json!({"type": "cgroup"})))?;
    out.ok()?;
    for line in out.stdout.lines() {
        ensure!(line.ends_with(":/"), "not at the namespace root: {line}\n{out}");
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn time_namespace_offsets() -> Result<()> {
    let t = Test::new("timens");
    let offset: u64 = 10 * 86400;
    let out = t.run_sh("cut -d' ' -f1 /proc/uptime", |c| {
        add_ns(c, json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({
            "boottime": {"secs": offset, "nanosecs": 0},
            "monotonic": {"secs": offset, "nanosecs": 0}
        });
    })?;
    out.ok()?;
    let inside: f64 = out.stdout.trim().parse()?;
    let host: f64 = std::fs::read_to_string("/proc/uptime")?.split_whitespace().next().unwrap_or("0").parse()?;
    let diff = inside - host;
    ensure!((offset as f64 - 60.0..=offset as f64 + 1.0).contains(&diff), "uptime inside {inside}, host {host}");
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn join_another_containers_uts_namespace() -> Result<()> {
    let t = Test::new("join_uts");
    let first = t.bundle(&["sleep", "100"])?;
    first.edit(|c| c["hostname"] = json!("wt-first"))?;
    let a = t.start_new(&t.id("a"), &first)?;
    let ns_path = format!("/proc/{}/ns/uts", a.pid()?);
    let second = t.bundle(&["hostname"])?;
    second.edit(|c| {
        // Joining: the hostname belongs to the namespace owner.
        c.as_object_mut().unwrap().remove("hostname");
        for ns in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "uts" {
                ns["path"] = json!(ns_path);
            }
        }
    })?;
    let out = t.run(&t.id("b"), &second)?;
    ensure!(out.ok()?.stdout.trim() == "wt-first", "{out}");
    drop(a);
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn join_network_namespace_by_path() -> Result<()> {
    let t = Test::new("join_net");
    let ns = NetNs::new()?;
    let path = ns.path();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path)?);
    let out = t.run_sh("readlink /proc/self/ns/net", |c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(path);
            }
        }
    })?;
    ensure!(out.ok()?.stdout.trim() == format!("net:[{ino}]"), "{out}");
    t.assert_no_leftovers();
    drop(ns);
    Ok(())
}
