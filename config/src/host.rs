//! Host defaults (host.toml): what a plan needs to know about the machine it lands on.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::device::{self, BlockDevice};
use crate::{toml_file, ConfigError};

/// Where an operator's host defaults live when neither a path nor [`HOST_FILE_ENV`] is given.
pub const DEFAULT_HOST_FILE: &str = "/etc/warren/host.toml";
/// The environment variable that names the host defaults file.
pub const HOST_FILE_ENV: &str = "WARREN_HOST_CONFIG";

const BUILTIN: &str = include_str!("../host.toml");
const BUILTIN_NAME: &str = "built-in host.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    io: Option<IoFile>,
    tenants: Option<TenantsFile>,
    network: Option<NetworkFile>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    bridge: Option<String>,
    subnet: Option<String>,
    masquerade: Option<bool>,
    cni_path: Option<PathBuf>,
}

/// Tenants' network: one host bridge, addresses from one subnet (CNI's bridge and
/// host-local plugins), outbound traffic masqueraded when `masquerade`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantNetwork {
    pub bridge: String,
    /// IPv4 network address and prefix length.
    pub subnet: (std::net::Ipv4Addr, u8),
    pub masquerade: bool,
    /// Where the CNI plugins are (Debian's containernetworking-plugins: /usr/lib/cni).
    pub cni_path: PathBuf,
}

impl TenantNetwork {
    /// Whether `ip` is a host address of the subnet (not its network or broadcast address).
    pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        let (net, len) = self.subnet;
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let (ip, net) = (u32::from(ip), u32::from(net));
        ip & mask == net && ip != net && ip != net | !mask
    }

    pub fn subnet_text(&self) -> String {
        format!("{}/{}", self.subnet.0, self.subnet.1)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    first_id: Option<u32>,
    ranges: Option<u32>,
}

/// How many ids each tenant's user namespace maps (uid and gid alike), as LXC and podman do.
pub const IDS_PER_TENANT: u32 = 65536;
const DEFAULT_FIRST_ID: u32 = 1_000_000;
const DEFAULT_RANGES: u32 = 1024;

/// The host ids tenants' user namespaces are mapped to: `ranges` ranges of
/// [`IDS_PER_TENANT`] from `first_id` on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IdPool {
    pub first_id: u32,
    pub ranges: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IoFile {
    devices: Option<Vec<String>>,
}

/// One entry of io.devices.
#[derive(Clone, Debug, PartialEq)]
enum DeviceEntry {
    /// The disk that holds the bundle's rootfs.
    Auto,
    /// A device node such as /dev/vda.
    Node(PathBuf),
    /// A device number.
    Number(BlockDevice),
}

/// The host defaults, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct HostConfig {
    source: String,
    io_devices: Vec<(String, DeviceEntry)>,
    id_pool: IdPool,
    network: TenantNetwork,
}

impl HostConfig {
    /// The defaults shipped in the binary (config/host.toml).
    pub fn builtin() -> Result<HostConfig, ConfigError> {
        HostConfig::parse(BUILTIN, BUILTIN_NAME)
    }

    pub fn load(path: &Path) -> Result<HostConfig, ConfigError> {
        HostConfig::parse(&toml_file::read(path)?, &path.display().to_string())
    }

    /// `explicit` if given, else $WARREN_HOST_CONFIG if set (both must exist), else
    /// /etc/warren/host.toml if it exists, else the built-in defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<HostConfig, ConfigError> {
        let from_env = std::env::var_os(HOST_FILE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
        match explicit.map(Path::to_path_buf).or(from_env) {
            Some(path) => HostConfig::load(&path),
            None if Path::new(DEFAULT_HOST_FILE).exists() => HostConfig::load(Path::new(DEFAULT_HOST_FILE)),
            None => HostConfig::builtin(),
        }
    }

    pub fn parse(text: &str, source: &str) -> Result<HostConfig, ConfigError> {
        let file: HostFile = toml_file::parse(text, source)?;
        let id_pool = id_pool(file.tenants, source)?;
        let network = network(file.network.unwrap_or_default(), source)?;
        let entries = file.io.and_then(|io| io.devices).unwrap_or_else(|| vec!["auto".to_string()]);
        let io_devices = entries
            .into_iter()
            .map(|text| {
                let entry = parse_entry(&text).map_err(|reason| ConfigError::Device {
                    file: source.to_string(),
                    device: text.clone(),
                    reason: reason.to_string(),
                })?;
                Ok((text, entry))
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(HostConfig { source: source.to_string(), io_devices, id_pool, network })
    }

    /// The tenants' bridge network ([network]).
    pub fn network(&self) -> &TenantNetwork {
        &self.network
    }

    /// The host ids tenants get (tenants.first_id, tenants.ranges).
    pub fn id_pool(&self) -> IdPool {
        self.id_pool
    }

    /// The disks that a plan's I/O limits apply to, for a container whose rootfs is at
    /// `rootfs`: each io.devices entry resolved ("auto": the disk under `rootfs`), mapped to
    /// its whole disk, without repeats.
    pub fn io_devices(&self, rootfs: &Path) -> Result<Vec<BlockDevice>, ConfigError> {
        let mut disks = Vec::new();
        for (text, entry) in &self.io_devices {
            let found = match entry {
                DeviceEntry::Auto => device::backing(rootfs).map_err(|e| format!("has no disk: {e}")),
                DeviceEntry::Node(path) => device::of_node(path),
                DeviceEntry::Number(dev) => Ok(*dev),
            };
            let disk = found.and_then(device::whole_disk).map_err(|reason| ConfigError::Device {
                file: self.source.clone(),
                device: text.clone(),
                reason,
            })?;
            if !disks.contains(&disk) {
                disks.push(disk);
            }
        }
        Ok(disks)
    }
}

fn id_pool(file: Option<TenantsFile>, source: &str) -> Result<IdPool, ConfigError> {
    let (first, ranges) = file.map_or((None, None), |t| (t.first_id, t.ranges));
    let pool = IdPool { first_id: first.unwrap_or(DEFAULT_FIRST_ID), ranges: ranges.unwrap_or(DEFAULT_RANGES) };
    let bad = |field: &'static str, reason: &str| ConfigError::Invalid {
        file: source.to_string(),
        field,
        value: match field {
            "tenants.first_id" => pool.first_id.to_string(),
            _ => pool.ranges.to_string(),
        },
        reason: reason.to_string(),
    };
    if pool.first_id == 0 {
        return Err(bad("tenants.first_id", "is host root, never a tenant's id"));
    }
    if pool.ranges == 0 {
        return Err(bad("tenants.ranges", "leaves no room for a tenant"));
    }
    let end = u64::from(pool.first_id) + u64::from(pool.ranges) * u64::from(IDS_PER_TENANT);
    if end > u64::from(u32::MAX) {
        return Err(bad("tenants.ranges", "run past the largest id, 4294967295"));
    }
    Ok(pool)
}

fn network(file: NetworkFile, source: &str) -> Result<TenantNetwork, ConfigError> {
    let bad = |field: &'static str, value: &str, reason: &str| ConfigError::Invalid {
        file: source.to_string(),
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let bridge = file.bridge.unwrap_or_else(|| "warren0".to_string());
    let name_ok =
        (1..=15).contains(&bridge.len()) && bridge.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(bad("network.bridge", &bridge, "is not an interface name (1-15 letters, digits, '-', '_', '.')"));
    }
    let text = file.subnet.unwrap_or_else(|| "10.77.0.0/16".to_string());
    let parsed = text.split_once('/').and_then(|(a, l)| Some((a.parse().ok()?, l.parse::<u8>().ok()?)));
    let subnet = match parsed {
        Some((addr, len)) if (8..=30).contains(&len) => (addr, len),
        _ => return Err(bad("network.subnet", &text, "is not an IPv4 subnet A.B.C.D/LEN with LEN from 8 to 30")),
    };
    let cni_path = file.cni_path.unwrap_or_else(|| PathBuf::from("/usr/lib/cni"));
    Ok(TenantNetwork { bridge, subnet, masquerade: file.masquerade.unwrap_or(true), cni_path })
}

fn parse_entry(text: &str) -> Result<DeviceEntry, &'static str> {
    if text == "auto" {
        return Ok(DeviceEntry::Auto);
    }
    if text.starts_with('/') {
        return Ok(DeviceEntry::Node(PathBuf::from(text)));
    }
    BlockDevice::parse(text)
        .map(DeviceEntry::Number)
        .ok_or("is not \"auto\", a device path (/dev/vda) or a device number (254:0)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_auto() {
        let host = HostConfig::builtin().unwrap();
        assert_eq!(host.io_devices, vec![("auto".to_string(), DeviceEntry::Auto)]);
    }

    #[test]
    fn entries_parse() {
        let host = HostConfig::parse("[io]\ndevices = [\"auto\", \"/dev/vda\", \"8:16\"]\n", "h.toml").unwrap();
        let entries: Vec<_> = host.io_devices.into_iter().map(|(_, e)| e).collect();
        assert_eq!(
            entries,
            [DeviceEntry::Auto, DeviceEntry::Node("/dev/vda".into()), DeviceEntry::Number(BlockDevice::new(8, 16))]
        );
        assert_eq!(HostConfig::parse("", "h.toml").unwrap().io_devices.len(), 1, "no [io]: auto");
    }

    #[test]
    fn bad_entries_name_the_field() {
        let cases = [
            ("[io]\ndevices = [\"sda\"]\n", "h.toml: io.devices: \"sda\" is not \"auto\", a device path"),
            ("[io]\ndevice = [\"auto\"]\n", "h.toml: io.device: unknown field `device`"),
            ("[io]\ndevices = \"auto\"\n", "h.toml: io.devices: invalid type: string \"auto\", expected a sequence"),
            ("[cpu]\nperiod = 1\n", "h.toml: cpu: unknown field `cpu`"),
        ];
        for (text, want) in cases {
            let err = HostConfig::parse(text, "h.toml").unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn tenant_id_pool_defaults_and_bounds() {
        let pool = HostConfig::parse("", "h.toml").unwrap().id_pool();
        assert_eq!(pool, IdPool { first_id: 1_000_000, ranges: 1024 });
        let pool = HostConfig::parse("[tenants]\nfirst_id = 200000\nranges = 2\n", "h.toml").unwrap().id_pool();
        assert_eq!(pool, IdPool { first_id: 200_000, ranges: 2 });
        for (text, want) in [
            ("[tenants]\nfirst_id = 0\n", "h.toml: tenants.first_id: 0 is host root"),
            ("[tenants]\nranges = 0\n", "h.toml: tenants.ranges: 0 leaves no room"),
            ("[tenants]\nranges = 70000\n", "h.toml: tenants.ranges: 70000 run past the largest id"),
        ] {
            let err = HostConfig::parse(text, "h.toml").unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn tenant_network_defaults_and_checks() {
        let net = HostConfig::parse("", "h.toml").unwrap().network().clone();
        assert_eq!((net.bridge.as_str(), net.subnet_text(), net.masquerade), ("warren0", "10.77.0.0/16".into(), true));
        assert!(net.contains("10.77.3.4".parse().unwrap()));
        assert!(!net.contains("10.77.0.0".parse().unwrap()) && !net.contains("10.77.255.255".parse().unwrap()));
        assert!(!net.contains("10.78.0.1".parse().unwrap()));
        for (text, want) in [
            ("[network]\nsubnet = \"10.1.0.0\"\n", "h.toml: network.subnet: 10.1.0.0 is not an IPv4 subnet"),
            ("[network]\nbridge = \"a-very-long-bridge-name\"\n", "h.toml: network.bridge: a-very-long"),
        ] {
            let err = HostConfig::parse(text, "h.toml").unwrap_err().to_string();
            assert!(err.starts_with(want), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_device_numbers_and_non_devices_are_refused() {
        let host = HostConfig::parse("[io]\ndevices = [\"9999:0\"]\n", "h.toml").unwrap();
        let err = host.io_devices(Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "h.toml: io.devices: \"9999:0\" is no block device of this host (9999:0)");
        let host = HostConfig::parse("[io]\ndevices = [\"/etc/passwd\"]\n", "h.toml").unwrap();
        let err = host.io_devices(Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "h.toml: io.devices: \"/etc/passwd\" is not a block device");
    }
}
