//! `linux.netDevices`: a host interface (one end of a veth pair made here; this host's
//! kernel has no `dummy` driver) moved into the container's
//! network namespace, renamed, with its addresses, MTU and hardware address; configs that
//! cannot be honoured fail create with the field named and leave the interface on the host.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use warren_tests::*;

/// A veth interface on the host, up, MTU 1400, with one IPv4 and one IPv6 address; its peer
/// (up, no addresses) stays on the host. Both are deleted on drop, wherever a failing test
/// left them on the host (deleting either end deletes the pair).
struct Veth {
    name: String,
    peer: String,
    v4: String,
    v6: String,
    mac: String,
}

impl Veth {
    fn new(t: &Test) -> Result<Veth> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let (name, peer) = (format!("wnd{tag}"), format!("wnp{tag}"));
        let (v4, v6) = (format!("192.0.2.{}/24", 10 + n), format!("2001:db8::{:x}/64", 10 + n));
        let mut d = Veth { name, peer, v4, v6, mac: String::new() };
        host(t, "ip", &["link", "add", &d.name, "type", "veth", "peer", "name", &d.peer])?.ok()?;
        host(t, "ip", &["link", "set", &d.peer, "up"])?.ok()?;
        host(t, "ip", &["link", "set", &d.name, "mtu", "1400", "up"])?.ok()?;
        host(t, "ip", &["addr", "add", &d.v4, "dev", &d.name])?.ok()?;
        host(t, "ip", &["addr", "add", &d.v6, "dev", &d.name, "nodad"])?.ok()?;
        let mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", d.name))?;
        d.mac = mac.trim().to_string();
        Ok(d)
    }

    /// Whether `ip addr show` output (iproute2 or busybox) shows this interface as `name`,
    /// up, with MTU 1400 and both addresses.
    fn check_listing(&self, listing: &str, name: &str) -> Result<()> {
        let head = listing.lines().next().unwrap_or("");
        // busybox shows a veth as NAME@ifPEER.
        let named = head.contains(&format!(": {name}:")) || head.contains(&format!(": {name}@"));
        ensure!(named, "not {name}: {listing}");
        let flags = head.split('<').nth(1).and_then(|f| f.split('>').next()).unwrap_or("");
        ensure!(flags.split(',').any(|f| f == "UP"), "{name} is not up: {listing}");
        ensure!(head.contains("mtu 1400"), "{name} lost its MTU: {listing}");
        ensure!(listing.contains(&format!("inet {} ", self.v4)), "{name} lacks {}: {listing}", self.v4);
        ensure!(listing.contains(&format!("inet6 {} ", self.v6)), "{name} lacks {}: {listing}", self.v6);
        Ok(())
    }

    /// The host's `ip addr show dev NAME`; None when the host has no such interface.
    fn on_host(t: &Test, name: &str) -> Result<Option<String>> {
        let out = host(t, "ip", &["addr", "show", "dev", name])?;
        Ok(out.success().then_some(out.stdout))
    }

    /// On the host as it was made: same name, up, MTU and addresses.
    fn check_on_host(&self, t: &Test) -> Result<()> {
        let listing = Veth::on_host(t, &self.name)?.with_context(|| format!("{} is gone from the host", self.name))?;
        self.check_listing(&listing, &self.name)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for name in [&self.name, &self.peer] {
            let _ = std::process::Command::new("ip").args(["link", "del", name]).output();
        }
    }
}

fn net_devices(cfg: &mut Value, devs: Value) {
    cfg["linux"]["netDevices"] = devs;
}

#[test]
fn net_device_moved_renamed_with_addresses() -> Result<()> {
    let t = Test::new("netdev_move");
    let d = Veth::new(&t)?;
    let script = "d=/sys/class/net/wnet0; cat $d/mtu $d/address; ip addr show dev wnet0; echo DONE; sleep 1000";
    let b = t.bundle(&["sh", "-c", script])?;
    b.edit(|c| net_devices(c, json!({ &d.name: {"name": "wnet0"} })))?;
    let c = t.start_new(&t.id("c"), &b)?;
    let out = c.wait_stdout("DONE", Duration::from_secs(10))?;
    let mut lines = out.lines();
    ensure!(lines.next() == Some("1400"), "MTU inside: {out}");
    ensure!(lines.next() == Some(d.mac.as_str()), "hardware address inside (want {}): {out}", d.mac);
    d.check_listing(&lines.collect::<Vec<_>>().join("\n"), "wnet0")?;
    ensure!(Veth::on_host(&t, &d.name)?.is_none(), "{} is still on the host", d.name);
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    c.delete()?.ok()?;
    // Not moved back (runtime-spec: the runtime MUST NOT): a virtual device goes with the
    // container's namespace (a veth takes its peer along), under neither name.
    ensure!(Veth::on_host(&t, &d.name)?.is_none(), "{} came back to the host", d.name);
    ensure!(Veth::on_host(&t, "wnet0")?.is_none(), "wnet0 appeared on the host");
    // The kernel tears a dead network namespace down in a work queue, after the last process
    // is gone: the peer goes with it, but not at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Veth::on_host(&t, &d.peer)?.is_some() {
        ensure!(std::time::Instant::now() < deadline, "the peer {} outlived the container's end by 10 s", d.peer);
        std::thread::sleep(Duration::from_millis(20));
    }
    t.assert_no_leftovers();
    Ok(())
}

#[test]
fn net_device_into_joined_namespace_stays_there() -> Result<()> {
    let t = Test::new("netdev_join");
    let d = Veth::new(&t)?;
    let ns = NetNs::new()?;
    let b = t.bundle(&["true"])?;
    b.edit(|c| {
        for n in c["linux"]["namespaces"].as_array_mut().unwrap() {
            if n["type"] == "network" {
                n["path"] = json!(ns.path());
            }
        }
        net_devices(c, json!({ &d.name: {} }));
    })?;
    let c = t.create(&t.id("c"), &b)?;
    let net = format!("--net={}", ns.path());
    let in_ns = |t: &Test| host(t, "nsenter", &[&net, "ip", "addr", "show", "dev", &d.name]);
    d.check_listing(&in_ns(&t)?.ok()?.stdout, &d.name)?;
    ensure!(Veth::on_host(&t, &d.name)?.is_none(), "{} is still on the host", d.name);
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    c.delete()?.ok()?;
    // The namespace is someone else's: the device stays in it, as it was set up.
    d.check_listing(&in_ns(&t)?.ok()?.stdout, &d.name)?;
    t.assert_no_leftovers();
    Ok(())
}

/// A change to config.json.
type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;

/// Each bad config fails create with one line naming the field, and leaves the interface on the
/// host as it was.
#[test]
fn net_device_errors_leave_it_on_host() -> Result<()> {
    let t = Test::new("netdev_errors");
    let d = Veth::new(&t)?;
    let name = d.name.clone();
    let no_netns = |c: &mut Value| {
        c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "network");
        net_devices(c, json!({ &name: {} }));
    };
    let cases: Vec<(&str, Edit, String)> = vec![
        ("missing", Box::new(|c| net_devices(c, json!({"wndmissing0": {}}))), "linux.netDevices.wndmissing0".into()),
        ("taken", Box::new(|c| net_devices(c, json!({ &name: {"name": "lo"} }))), format!("linux.netDevices.{name}")),
        ("invalid", Box::new(|c| net_devices(c, json!({ &name: {"name": "a/b"} }))), format!("{name}.name")),
        ("no netns", Box::new(no_netns), "linux.netDevices".into()),
        // Moved first (keys go in order), then the missing one fails: the first comes back.
        (
            "second missing",
            Box::new(|c| net_devices(c, json!({ &name: {"name": "wnet0"}, "wndzmissing": {} }))),
            "linux.netDevices.wndzmissing".into(),
        ),
        // Moved, then a createRuntime hook fails: create undoes the move.
        (
            "hook fails",
            Box::new(|c| {
                net_devices(c, json!({ &name: {"name": "wnet0"} }));
                c["hooks"] = json!({"createRuntime": [{"path": "/bin/false"}]});
            }),
            String::new(),
        ),
    ];
    for (what, edit, field) in cases {
        let b = t.bundle(&["true"])?;
        b.edit(|c| edit(c))?;
        let out = t.warren.try_create(&t.id(&what.replace(' ', "-")), &b, &[])?;
        out.failed().with_context(|| what.to_string())?;
        ensure!(out.error_line().contains(&field), "{what}: error does not name {field}: {out}");
        d.check_on_host(&t).with_context(|| what.to_string())?;
        t.assert_no_leftovers();
    }
    Ok(())
}

#[test]
fn features_list_net_devices() -> Result<()> {
    let t = Test::new("netdev_features");
    let out = t.cmd(&["features"])?;
    let f: Value = serde_json::from_str(&out.ok()?.stdout)?;
    ensure!(f["linux"]["netDevices"]["enabled"] == json!(true), "{f}");
    Ok(())
}

/// A name with `%d` is a template: the kernel picks the first free number in the container.
#[test]
fn net_device_name_template() -> Result<()> {
    let t = Test::new("netdev_template");
    let d = Veth::new(&t)?;
    let b = t.bundle(&["true"])?;
    b.edit(|c| net_devices(c, json!({ &d.name: {"name": "wnet%d"} })))?;
    let c = t.create(&t.id("c"), &b)?;
    let net = format!("--net=/proc/{}/ns/net", c.pid()?);
    let out = host(&t, "nsenter", &[&net, "ip", "addr", "show", "dev", "wnet0"])?;
    d.check_listing(&out.ok()?.stdout, "wnet0")?;
    c.kill("KILL")?.ok()?;
    c.wait_status("stopped", Duration::from_secs(5))?;
    c.delete()?.ok()?;
    t.assert_no_leftovers();
    Ok(())
}
