//! Tenants' networking through CNI plugins (the containernetworking-plugins binaries), run as
//! the CNI spec says: the network's plugin list is called in order for ADD with each one's
//! result passed to the next (`prevResult`), and in reverse order for DEL with the ADD's
//! result. The list is written once per tenant at create (`network.json`): a host bridge
//! with the tenant's static address, and portmap for published ports.
//!
//! The supervisor keeps the container's network namespace open from ADD to DEL, so that
//! DEL finds the interfaces even though the init has exited; an ADD's result is kept in
//! `net.json` until its DEL, so that a DEL missed by a killed supervisor is done before the
//! next ADD.
//!
//! Outbound masquerading is one rule for the whole subnet, made by Warren, not the bridge
//! plugin's `ipMasq` (a chain and two rules per container): iptables-legacy rewrites the
//! whole nat table on every change, so per-tenant rules made each start slower the more
//! tenants ran, and a DEL after the namespace was gone could not find its rules.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use warren_config::TenantNetwork;

use super::TenantError;

const CNI_VERSION: &str = "1.0.0";
const IFNAME: &str = "eth0";

/// A published port: HOST_PORT on the host forwarded to CONTAINER_PORT in the tenant.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Publish {
    pub host_port: u16,
    pub container_port: u16,
    pub udp: bool,
}

impl Publish {
    /// `HOST:CONTAINER[/tcp|/udp]`.
    pub fn parse(text: &str) -> Result<Publish, TenantError> {
        let bad = || TenantError::Publish { spec: text.to_string() };
        let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
        let (h, c) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let udp = match proto {
            "tcp" => false,
            "udp" => true,
            _ => return Err(bad()),
        };
        Ok(Publish { host_port: port(h)?, container_port: port(c)?, udp })
    }
}

/// The plugin list of a tenant at `ip` on `net`: the host bridge with `ip` as a static
/// address (Warren allocates addresses at create: the tenants' records are the table, and
/// host-local's lease store, which it reads whole on every ADD, made each start slower the
/// more tenants there were), and portmap only when it publishes ports.
pub fn conflist(net: &TenantNetwork, ip: Ipv4Addr, publishes: bool) -> Value {
    let gateway = Ipv4Addr::from(u32::from(net.subnet.0) + 1);
    let mut plugins = vec![json!({
        "type": "bridge", "bridge": net.bridge, "isGateway": true, "ipMasq": false,
        "hairpinMode": true, "capabilities": { "mac": true },
        "ipam": {
            "type": "static",
            "addresses": [{ "address": format!("{ip}/{}", net.subnet.1), "gateway": gateway.to_string() }],
            "routes": [{ "dst": "0.0.0.0/0" }],
        },
    })];
    if publishes {
        plugins.push(json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }));
    }
    json!({
        "cniVersion": CNI_VERSION,
        "name": "warren",
        "plugins": plugins,
        "cniPath": net.cni_path,
        // Ours, not a plugin's: the subnet whose outbound traffic `masquerade` rewrites.
        "masquerade": net.masquerade.then(|| net.subnet_text()),
    })
}

/// The first host address of `net` after the bridge's own that no tenant in `taken` has.
pub fn free_address(net: &TenantNetwork, taken: &std::collections::HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(net.subnet.0) + 2;
    let size = 1u64 << (32 - u32::from(net.subnet.1));
    let last = (u64::from(u32::from(net.subnet.0)) + size).saturating_sub(2).min(u64::from(u32::MAX)) as u32;
    (first..=last).map(Ipv4Addr::from).find(|ip| !taken.contains(ip))
}

/// The subnet a plugin list masquerades (None: it does not, or it is an old list whose
/// bridge plugin does it per tenant).
pub fn masquerade_of(list: &Value) -> Option<&str> {
    list["masquerade"].as_str()
}

fn masquerade_rule(subnet: &str) -> [&str; 11] {
    ["POSTROUTING", "-s", subnet, "!", "-d", subnet, "-m", "comment", "--comment", "warren tenants", "-j"]
}

fn iptables(op: &str, subnet: &str) -> Result<bool, TenantError> {
    let out = Command::new("iptables")
        .args(["-w", "-t", "nat", op])
        .args(masquerade_rule(subnet))
        .arg("MASQUERADE")
        .output()
        .map_err(|e| TenantError::Network { plugin: "iptables".into(), command: op.into(), message: e.to_string() })?;
    Ok(out.status.success())
}

/// Adds the subnet's masquerade rule unless it is there.
pub fn ensure_masquerade(subnet: &str) -> Result<(), TenantError> {
    if iptables("-C", subnet)? || iptables("-A", subnet)? {
        return Ok(());
    }
    let message = format!("cannot add the masquerade rule for {subnet}");
    Err(TenantError::Network { plugin: "iptables".into(), command: "-A".into(), message })
}

/// Removes the subnet's masquerade rule (every copy: two first starts may both have added it).
pub fn drop_masquerade(subnet: &str) -> Result<(), TenantError> {
    while iptables("-C", subnet)? {
        if !iptables("-D", subnet)? {
            let message = format!("cannot remove the masquerade rule for {subnet}");
            return Err(TenantError::Network { plugin: "iptables".into(), command: "-D".into(), message });
        }
    }
    Ok(())
}

/// One call of a network's plugins.
pub struct Call<'a> {
    pub list: &'a Value,
    /// The CNI container id: stable per tenant.
    pub id: &'a str,
    /// A path to the network namespace ("" for a DEL after it is gone).
    pub netns: &'a str,
    pub ip: Option<Ipv4Addr>,
    /// The interface's MAC address to keep (neighbours' ARP caches stay right across restarts).
    pub mac: Option<&'a str>,
    pub publish: &'a [Publish],
}

impl Call<'_> {
    /// ADD: the final result.
    pub fn add(&self) -> Result<Value, TenantError> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            prev = Some(self.exec("ADD", plugin, prev.as_ref())?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL in reverse order with the ADD's result; every plugin is called even when one fails,
    /// and the first error is returned.
    pub fn del(&self, added: Option<&Value>) -> Result<(), TenantError> {
        let mut first = None;
        for plugin in self.plugins().iter().rev() {
            if let Err(e) = self.exec("DEL", plugin, added) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn plugins(&self) -> Vec<&Value> {
        self.list["plugins"].as_array().map(|a| a.iter().collect()).unwrap_or_default()
    }

    fn exec(&self, command: &str, plugin: &Value, prev: Option<&Value>) -> Result<Value, TenantError> {
        let kind = plugin["type"].as_str().unwrap_or_default();
        let mut conf = plugin.clone();
        conf["cniVersion"] = self.list["cniVersion"].clone();
        conf["name"] = self.list["name"].clone();
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        if plugin["capabilities"]["portMappings"] == true {
            let maps: Vec<Value> = self
                .publish
                .iter()
                .map(|p| {
                    json!({"hostPort": p.host_port, "containerPort": p.container_port,
                                "protocol": if p.udp { "udp" } else { "tcp" }})
                })
                .collect();
            conf["runtimeConfig"]["portMappings"] = json!(maps);
        }
        if let (true, Some(mac)) = (plugin["capabilities"]["mac"] == true, self.mac) {
            conf["runtimeConfig"]["mac"] = json!(mac);
        }
        let cni_path = PathBuf::from(self.list["cniPath"].as_str().unwrap_or("/usr/lib/cni"));
        let mut args = "IgnoreUnknown=1".to_string();
        // Lists made before addresses were static ask host-local for the tenant's address
        // (static takes it from its config, and would add CNI_ARGS' as a second one).
        if let (Some(ip), "host-local") = (self.ip, plugin["ipam"]["type"].as_str().unwrap_or_default()) {
            args.push_str(&format!(";IP={ip}"));
        }
        let fail =
            |message: String| TenantError::Network { plugin: kind.to_string(), command: command.into(), message };
        let mut child = Command::new(cni_path.join(kind))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &cni_path)
            .env("CNI_ARGS", args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", cni_path.join(kind).display())))?;
        let input = serde_json::to_vec(&conf).expect("a plugin config serializes");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg = result["msg"].as_str().map(str::to_string);
            let detail = result["details"].as_str().map(|d| format!(": {d}")).unwrap_or_default();
            let stderr = String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ");
            return Err(fail(msg.map(|m| format!("{m}{detail}")).unwrap_or(stderr)));
        }
        Ok(result)
    }
}

/// The bridge a plugin list puts its tenant on.
pub fn bridge_of(list: &Value) -> Option<&str> {
    let first = &list["plugins"][0];
    (first["type"] == "bridge").then(|| first["bridge"].as_str()).flatten()
}

/// The MAC address of the container's interface in an ADD's result.
pub fn mac(result: &Value) -> Option<String> {
    let ifaces = result["interfaces"].as_array()?;
    let eth0 = ifaces.iter().find(|i| i["name"] == IFNAME && i["sandbox"].is_string())?;
    eth0["mac"].as_str().map(str::to_string)
}

/// The first IPv4 address of an ADD's result.
pub fn address(result: &Value) -> Option<Ipv4Addr> {
    let ips = result["ips"].as_array()?;
    ips.iter().filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok()).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse_and_bad_ones_are_refused() {
        assert_eq!(Publish::parse("8080:80").unwrap(), Publish { host_port: 8080, container_port: 80, udp: false });
        assert!(Publish::parse("53:53/udp").unwrap().udp);
        for bad in ["80", "0:80", "x:80", "80:80/sctp", "70000:80"] {
            assert!(Publish::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn free_addresses_skip_the_network_the_gateway_the_taken_and_the_broadcast() {
        let net = TenantNetwork {
            bridge: "b".into(),
            subnet: (Ipv4Addr::new(10, 9, 0, 0), 30),
            masquerade: true,
            cni_path: "/x".into(),
        };
        let mut taken = std::collections::HashSet::new();
        assert_eq!(free_address(&net, &taken), Some(Ipv4Addr::new(10, 9, 0, 2)));
        taken.insert(Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(free_address(&net, &taken), None, "a /30 holds the gateway and one tenant");
        let list = conflist(&net, Ipv4Addr::new(10, 9, 0, 2), false);
        assert_eq!(list["plugins"][0]["ipam"]["addresses"][0]["address"], "10.9.0.2/30");
        assert_eq!(list["plugins"][0]["ipam"]["addresses"][0]["gateway"], "10.9.0.1");
        assert_eq!(list["plugins"].as_array().unwrap().len(), 1, "no portmap without ports");
        assert_eq!(conflist(&net, Ipv4Addr::new(10, 9, 0, 2), true)["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn the_address_comes_from_the_result() {
        let r = json!({"ips": [{"address": "10.77.0.5/16", "gateway": "10.77.0.1"}]});
        assert_eq!(address(&r), Some(Ipv4Addr::new(10, 77, 0, 5)));
        assert_eq!(address(&json!({})), None);
        let r = json!({"interfaces": [{"name": "br0", "mac": "aa"}, {"name": "eth0", "mac": "bb", "sandbox": "/x"}]});
        assert_eq!(mac(&r).as_deref(), Some("bb"));
    }
}
