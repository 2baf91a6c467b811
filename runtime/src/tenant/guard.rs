//! Anti-spoofing on the tenant bridge. Tenants hold CAP_NET_RAW (Docker's default set), so
//! a packet socket could send frames with any source. Each bridge gets an nftables table of
//! the `bridge` family whose prerouting chain passes a frame from a tenant's port only when
//! its Ethernet source is the tenant's MAC and, for IPv4 and ARP, its sender address is the
//! tenant's; any other protocol (IPv6, VLAN tags, ...) from a tenant's port is dropped:
//! tenants are IPv4-only. Frames from other ports (the host's own, other bridges) pass.
//!
//! Ports, MACs and addresses are elements of sets keyed by the host-side veth's name, so a
//! frame costs three hash lookups however many tenants run, and adding one is one element
//! each, not a rule: the cost of a start stays flat in N.
//!
//! Callers hold the tenants' registry lock: the table goes with its last port, and a port
//! admitted at the same time must not go with it.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::TenantError;

/// A tenant's side of the bridge: its host-side veth, MAC and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub veth: String,
    pub mac: String,
    pub ip: Ipv4Addr,
}

impl Port {
    /// From a bridge plugin's ADD result: the interface outside the sandbox that is not the
    /// bridge, and the container interface's MAC and first address.
    pub fn from_result(result: &Value, bridge: &str) -> Option<Port> {
        let ifaces = result["interfaces"].as_array()?;
        let veth = ifaces.iter().find(|i| !i["sandbox"].is_string() && i["name"] != bridge)?;
        let veth = veth["name"].as_str()?.to_string();
        let mac = super::net::mac(result)?;
        let ip = super::net::address(result)?;
        // Only names and values nft can take unquoted are used; the plugin made them.
        let plain = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
        (plain(&veth) && plain(&mac)).then_some(Port { veth, mac, ip })
    }
}

/// The table's name for `bridge` (nft identifiers take letters, digits and `_`).
pub fn table(bridge: &str) -> String {
    let safe: String = bridge.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("warren_guard_{safe}")
}

/// The table with its sets and chain, made if missing and its rules rewritten (in the same
/// transaction, so no frame sees the chain half made; the sets keep their elements).
fn declare(table: &str) -> String {
    format!(
        "add table bridge {table}
add set bridge {table} ports {{ type ifname; }}
add set bridge {table} macs {{ type ifname . ether_addr; }}
add set bridge {table} addrs {{ type ifname . ipv4_addr; }}
add chain bridge {table} guard {{ type filter hook prerouting priority -200; policy accept; }}
flush chain bridge {table} guard
add rule bridge {table} guard iifname != @ports accept
add rule bridge {table} guard iifname . ether saddr != @macs drop
add rule bridge {table} guard ether type arp iifname . arp saddr ip != @addrs drop
add rule bridge {table} guard ether type ip iifname . ip saddr != @addrs drop
add rule bridge {table} guard ether type != {{ ip, arp }} drop
"
    )
}

fn elements(table: &str, op: &str, p: &Port) -> String {
    let Port { veth, mac, ip } = p;
    format!(
        "{op} element bridge {table} ports {{ \"{veth}\" }}
{op} element bridge {table} macs {{ \"{veth}\" . {mac} }}
{op} element bridge {table} addrs {{ \"{veth}\" . {ip} }}
"
    )
}

/// From now on frames from `port` on `bridge` pass only with its MAC and address.
pub fn admit(bridge: &str, port: &Port) -> Result<(), TenantError> {
    let table = table(bridge);
    nft("admit", &format!("{}{}", declare(&table), elements(&table, "add", port)))
}

/// Forgets `port`, and removes the table once it holds no port.
pub fn withdraw(bridge: &str, port: &Port) -> Result<(), TenantError> {
    let table = table(bridge);
    // One transaction; when an element is already gone (a withdraw cut short) or the table
    // is, it fails whole, and each is tried alone.
    if nft("withdraw", &elements(&table, "delete", port)).is_err() {
        for line in elements(&table, "delete", port).lines() {
            let _ = nft("withdraw", line);
        }
    }
    // No table: nothing was admitted on this bridge, or its last port went already.
    let Ok(ports) = run(&["list", "set", "bridge", &table, "ports"], None) else { return Ok(()) };
    if !ports.contains("elements") {
        nft("withdraw", &format!("delete table bridge {table}"))?;
    }
    Ok(())
}

fn nft(what: &str, script: &str) -> Result<(), TenantError> {
    run(&["-f", "-"], Some(script)).map(drop).map_err(|e| match e {
        TenantError::Network { message, .. } => {
            TenantError::Network { plugin: "nft".into(), command: what.into(), message }
        }
        e => e,
    })
}

/// `nft ARGS` with `input` on its stdin: its stdout, or its first error line.
fn run(args: &[&str], input: Option<&str>) -> Result<String, TenantError> {
    let fail = |message: String| TenantError::Network { plugin: "nft".into(), command: args.join(" "), message };
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("nft (package nftables): {e}")))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.lines().find(|l| !l.trim().is_empty()).unwrap_or("failed").trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_port_is_the_host_side_veth_with_the_containers_mac_and_address() {
        let r = json!({
            "interfaces": [
                {"name": "wbr0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1a2b3c4d", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "02:00:00:00:00:05", "sandbox": "/proc/1/ns/net"},
            ],
            "ips": [{"address": "10.7.0.5/24", "gateway": "10.7.0.1", "interface": 2}],
        });
        let p = Port::from_result(&r, "wbr0").unwrap();
        assert_eq!(
            p,
            Port { veth: "veth1a2b3c4d".into(), mac: "02:00:00:00:00:05".into(), ip: "10.7.0.5".parse().unwrap() }
        );
        assert_eq!(Port::from_result(&json!({"interfaces": []}), "wbr0"), None);
        assert_eq!(table("wtb12-3x4"), "warren_guard_wtb12_3x4");
        let rules = declare("t");
        assert!(rules.contains("flush chain bridge t guard"), "rules are rewritten, not appended");
    }
}
