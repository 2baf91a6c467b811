//! `linux.netDevices` (runtime-spec 1.3): host interfaces moved into the container's network
//! namespace, over rtnetlink. A move (with its rename) is one RTM_NEWLINK; the kernel keeps the
//! MTU and hardware address but drops every address, so the permanent addresses of global
//! scope are read before and added again after, and the link is set up, as the spec asks.
//!
//! Devices are not moved back on `delete`: the spec forbids it (the namespace's owner manages
//! the interface from then on). When the namespace goes, the kernel returns a physical device
//! to the host's initial namespace under its container name and destroys a virtual one. Only a
//! create that fails after a move undoes it, so that a failed create leaves the host as it was.

use crate::sys::netlink as nl;
use oci_spec::runtime::{LinuxNetDevice, Spec};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

// From linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_FLAGS: u16 = 8;
const IFA_F_PERMANENT: u32 = 0x80;
/// The address flags a user may set (nodad, homeaddress, managetempaddr, noprefixroute,
/// mcautojoin); the others are state the kernel keeps.
const IFA_F_SETTABLE: u32 = 0x02 | 0x10 | 0x100 | 0x200 | 0x400;
const RT_SCOPE_UNIVERSE: u8 = 0;
const IFF_UP: u32 = 0x1;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetDevError {
    #[error("linux.netDevices.{key}: no interface {key} in the runtime's network namespace")]
    NotOnHost { key: String },
    #[error("linux.netDevices.{key}: the container already has an interface named {name}")]
    NameTaken { key: String, name: String },
    #[error("linux.netDevices: the container's network namespace is the runtime's own")]
    HostNamespace,
    #[error("linux.netDevices: open network namespace {path}: {source}")]
    Namespace { path: PathBuf, source: io::Error },
    #[error("linux.netDevices.{key}: {step}: {source}")]
    Netlink { key: String, step: &'static str, source: io::Error },
}

/// The devices of a config, if it has any: host name -> wanted container name.
pub fn requested(spec: &Spec) -> BTreeMap<String, String> {
    let devs = spec.linux().as_ref().and_then(|l| l.net_devices().as_ref());
    devs.into_iter().flatten().map(|(key, dev)| (key.clone(), container_name(key, dev).to_string())).collect()
}

/// The name in the container: `name`, or the host's name when it is unset or empty.
pub fn container_name<'a>(key: &'a str, dev: &'a LinuxNetDevice) -> &'a str {
    dev.name().as_deref().filter(|n| !n.is_empty()).unwrap_or(key)
}

/// Whether the kernel takes `name` as an interface name (dev_valid_name): 1 to 15 bytes,
/// not `.` or `..`, without `/`, `:` or white space. A `%` makes it a template the kernel
/// fills in with a free number (allowed for names in the container only).
pub fn valid_name(name: &str, template: bool) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || (b == b'%' && !template))
}

/// A link as the kernel reports it.
#[derive(Debug, Clone)]
struct Link {
    index: i32,
    flags: u32,
    hwaddr: Vec<u8>,
}

/// One interface address, as needed to add it again.
#[derive(Debug, Clone)]
struct Addr {
    family: u8,
    prefix: u8,
    scope: u8,
    flags: u32,
    local: Option<Vec<u8>>,
    address: Option<Vec<u8>>,
    broadcast: Option<Vec<u8>>,
}

/// A device moved into the container, with what it takes to put it back.
#[derive(Debug)]
struct Moved {
    key: String,
    index: i32,
    was_up: bool,
    addrs: Vec<Addr>,
}

/// The container's network namespace (held open, so it outlives a dying init) and the
/// devices moved into it so far.
#[derive(Debug)]
pub struct NetDevices {
    netns: OwnedFd,
    moved: Vec<Moved>,
}

impl NetDevices {
    /// The network namespace of the container process `pid`, which must not be ours.
    pub fn of_pid(pid: i32) -> Result<NetDevices, NetDevError> {
        use std::os::unix::fs::MetadataExt;
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let open_err = |path: &PathBuf| {
            let path = path.clone();
            move |source| NetDevError::Namespace { path, source }
        };
        let file = std::fs::File::open(&path).map_err(open_err(&path))?;
        let theirs = file.metadata().map_err(open_err(&path))?;
        let own = PathBuf::from("/proc/self/ns/net");
        let ours = std::fs::metadata(&own).map_err(open_err(&own))?;
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            return Err(NetDevError::HostNamespace);
        }
        Ok(NetDevices { netns: file.into(), moved: Vec::new() })
    }

    /// Moves every device of `devs` (host name -> container name) into the namespace. What
    /// was moved before an error stays recorded for [`NetDevices::undo`].
    pub fn move_all(&mut self, devs: &BTreeMap<String, String>) -> Result<(), NetDevError> {
        for (key, name) in devs {
            self.move_one(key, name)?;
        }
        Ok(())
    }

    fn move_one(&mut self, key: &str, name: &str) -> Result<(), NetDevError> {
        let err = |step| move |source| NetDevError::Netlink { key: key.into(), step, source };
        let mut host = Route::here().map_err(err("open a netlink socket"))?;
        let mut ctr = Route::in_ns(&self.netns).map_err(err("open a netlink socket in the container"))?;
        let link = match host.link_by_name(key) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Err(NetDevError::NotOnHost { key: key.into() }),
            other => other.map_err(err("look the interface up"))?,
        };
        // A template (`%d`) is always free: the kernel picks a number not taken.
        if !name.contains('%') && ctr.link_by_name(name).is_ok() {
            return Err(NetDevError::NameTaken { key: key.into(), name: name.into() });
        }
        let addrs: Vec<Addr> = host.addrs(link.index).map_err(err("list its addresses"))?;
        let addrs = addrs.into_iter().filter(|a| a.flags & IFA_F_PERMANENT != 0 && a.scope == RT_SCOPE_UNIVERSE);
        let addrs: Vec<Addr> = addrs.collect();
        match host.move_to(link.index, self.netns.as_raw_fd(), name) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(NetDevError::NameTaken { key: key.into(), name: name.into() })
            }
            other => other.map_err(err("move it into the container's network namespace"))?,
        }
        let moved = ctr.find_moved(name, &link).map_err(err("find it in the container"))?;
        self.moved.push(Moved { key: key.into(), index: moved.index, was_up: link.flags & IFF_UP != 0, addrs });
        let last = self.moved.last().expect("just pushed");
        for a in &last.addrs {
            ctr.add_addr(moved.index, a).map_err(err("add its address in the container"))?;
        }
        ctr.set_up(moved.index, true).map_err(err("set it up in the container"))
    }

    /// Puts the moved devices back into our namespace under their host names, with their
    /// addresses and up state: for a create that failed after moving them. Best effort.
    pub fn undo(&mut self) {
        let back = || -> io::Result<(Route, Route, OwnedFd)> {
            Ok((Route::in_ns(&self.netns)?, Route::here()?, std::fs::File::open("/proc/thread-self/ns/net")?.into()))
        };
        let (mut ctr, mut host, own) = match back() {
            Ok(v) => v,
            Err(e) => {
                log::warn!("linux.netDevices: cannot move devices back: {e}");
                return;
            }
        };
        while let Some(m) = self.moved.pop() {
            if let Err(e) = restore(&mut ctr, &mut host, &own, &m) {
                log::warn!("linux.netDevices.{}: cannot move it back to the host: {e}", m.key);
            }
        }
    }
}

fn restore(ctr: &mut Route, host: &mut Route, own: &OwnedFd, m: &Moved) -> io::Result<()> {
    ctr.set_up(m.index, false)?;
    ctr.move_to(m.index, own.as_raw_fd(), &m.key)?;
    let link = host.link_by_name(&m.key)?;
    for a in &m.addrs {
        match host.add_addr(link.index, a) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    if m.was_up {
        host.set_up(link.index, true)?;
    }
    Ok(())
}

/// A NETLINK_ROUTE socket to one network namespace.
struct Route {
    sock: OwnedFd,
    seq: u32,
}

impl Route {
    fn here() -> io::Result<Route> {
        Ok(Route { sock: nl::route_socket()?, seq: 0 })
    }

    fn in_ns(netns: &OwnedFd) -> io::Result<Route> {
        Ok(Route { sock: nl::route_socket_in(netns.as_fd())?, seq: 0 })
    }

    /// Sends one request and returns the payloads of the kernel's answers: a dump's
    /// messages, or the one reply (if any) before the acknowledgement.
    fn request(&mut self, typ: u16, flags: u16, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
        self.seq += 1;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        nl::send(self.sock.as_fd(), &message(typ, flags, self.seq, body))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = nl::recv(self.sock.as_fd(), &mut buf)?;
            for (typ, seq, payload) in messages(&buf[..n]) {
                if seq != self.seq {
                    continue;
                }
                match typ {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = payload.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                        return if code < 0 { Err(io::Error::from_raw_os_error(-code)) } else { Ok(out) };
                    }
                    _ => out.push((typ, payload.to_vec())),
                }
            }
        }
    }

    fn get_link(&mut self, index: i32, name: Option<&str>) -> io::Result<Link> {
        let mut body = ifinfomsg(index, 0, 0);
        if let Some(name) = name {
            attr(&mut body, IFLA_IFNAME, &cstring(name));
        }
        let replies = self.request(RTM_GETLINK, 0, &body)?;
        let (_, payload) = replies.into_iter().find(|(t, _)| *t == RTM_NEWLINK).ok_or(io::ErrorKind::NotFound)?;
        parse_link(&payload).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))
    }

    fn link_by_name(&mut self, name: &str) -> io::Result<Link> {
        self.get_link(0, Some(name))
    }

    /// The device just moved in: by its name, or (for a `%d` template, whose name the
    /// kernel chose) by its index if it kept it, recognised by its hardware address.
    fn find_moved(&mut self, name: &str, before: &Link) -> io::Result<Link> {
        if !name.contains('%') {
            return self.link_by_name(name);
        }
        match self.get_link(before.index, None) {
            Ok(l) if l.hwaddr == before.hwaddr => Ok(l),
            Ok(_) => Err(io::Error::new(io::ErrorKind::NotFound, "its index changed in the move")),
            Err(e) => Err(e),
        }
    }

    fn set_up(&mut self, index: i32, up: bool) -> io::Result<()> {
        let body = ifinfomsg(index, if up { IFF_UP } else { 0 }, IFF_UP);
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    /// Moves link `index` into the namespace `netns` (a descriptor of ours), named `name`.
    fn move_to(&mut self, index: i32, netns: i32, name: &str) -> io::Result<()> {
        let mut body = ifinfomsg(index, 0, 0);
        attr(&mut body, IFLA_NET_NS_FD, &(netns as u32).to_ne_bytes());
        attr(&mut body, IFLA_IFNAME, &cstring(name));
        self.request(RTM_NEWLINK, 0, &body).map(drop)
    }

    fn addrs(&mut self, index: i32) -> io::Result<Vec<Addr>> {
        let body = [0u8; IFADDRMSG_LEN]; // AF_UNSPEC: every family
        let replies = self.request(RTM_GETADDR, NLM_F_DUMP, &body)?;
        let ours = replies.iter().filter(|(t, _)| *t == RTM_NEWADDR).filter_map(|(_, p)| parse_addr(p, index));
        Ok(ours.collect())
    }

    fn add_addr(&mut self, index: i32, a: &Addr) -> io::Result<()> {
        let mut body = vec![a.family, a.prefix, 0, a.scope];
        body.extend_from_slice(&(index as u32).to_ne_bytes());
        for (typ, value) in [(IFA_LOCAL, &a.local), (IFA_ADDRESS, &a.address), (IFA_BROADCAST, &a.broadcast)] {
            if let Some(v) = value {
                attr(&mut body, typ, v);
            }
        }
        attr(&mut body, IFA_FLAGS, &(a.flags & IFA_F_SETTABLE).to_ne_bytes());
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &body).map(drop)
    }
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message: header, then `body` (the family header and its attributes).
fn message(typ: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&typ.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills ours in
    m.extend_from_slice(body);
    m
}

/// Appends one attribute (struct rtattr, then the value, padded to 4 bytes).
fn attr(buf: &mut Vec<u8>, typ: u16, value: &[u8]) {
    buf.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    buf.extend_from_slice(&typ.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4]; // family AF_UNSPEC, pad, type
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The (type, sequence number, payload) of each message in one datagram.
fn messages(mut buf: &[u8]) -> Vec<(u16, u32, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(typ), Some(seq)) = (u32_at(buf, 0), u16_at(buf, 4), u32_at(buf, 8)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push((typ, seq, &buf[NLMSG_HDRLEN..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

/// The (type, value) of each attribute in `buf`.
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(typ)) = (u16_at(buf, 0), u16_at(buf, 2)) {
        let len = len as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((typ, &buf[4..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    out
}

fn parse_link(p: &[u8]) -> Option<Link> {
    let index = u32_at(p, 4)? as i32;
    let flags = u32_at(p, 8)?;
    let rest = p.get(IFINFOMSG_LEN..)?;
    let hwaddr = attrs(rest).into_iter().find(|(t, _)| *t == IFLA_ADDRESS).map(|(_, v)| v.to_vec());
    Some(Link { index, flags, hwaddr: hwaddr.unwrap_or_default() })
}

/// An address of link `index` (None for other links' addresses).
fn parse_addr(p: &[u8], index: i32) -> Option<Addr> {
    let (family, prefix, flags8, scope) = (*p.first()?, *p.get(1)?, *p.get(2)?, *p.get(3)?);
    if u32_at(p, 4)? as i32 != index {
        return None;
    }
    let mut a = Addr { family, prefix, scope, flags: flags8 as u32, local: None, address: None, broadcast: None };
    for (typ, v) in attrs(p.get(IFADDRMSG_LEN..)?) {
        match typ {
            IFA_LOCAL => a.local = Some(v.to_vec()),
            IFA_ADDRESS => a.address = Some(v.to_vec()),
            IFA_BROADCAST => a.broadcast = Some(v.to_vec()),
            // The full 32 bits, when present, replace the 8 of the header.
            IFA_FLAGS => a.flags = u32_at(v, 0)?,
            _ => {}
        }
    }
    Some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["eth0", "a", "ctr_dummy0", "x-1.2", "fifteen_chars_x"] {
            assert!(valid_name(good, false), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:1", "a b", "sixteen_chars_xx", "eth%d"] {
            assert!(!valid_name(bad, false), "{bad}");
        }
        assert!(valid_name("eth%d", true));
    }

    #[test]
    fn message_round_trip() {
        let mut body = ifinfomsg(7, IFF_UP, IFF_UP);
        attr(&mut body, IFLA_IFNAME, &cstring("abc"));
        attr(&mut body, IFLA_ADDRESS, &[1, 2, 3, 4, 5, 6]);
        let m = message(RTM_NEWLINK, NLM_F_REQUEST, 9, &body);
        let msgs = messages(&m);
        assert_eq!(msgs.len(), 1);
        let (typ, seq, payload) = msgs[0];
        assert_eq!((typ, seq), (RTM_NEWLINK, 9));
        let link = parse_link(payload).unwrap();
        assert_eq!((link.index, link.flags, link.hwaddr), (7, IFF_UP, vec![1, 2, 3, 4, 5, 6]));
        assert_eq!(attrs(&payload[IFINFOMSG_LEN..])[0], (IFLA_IFNAME, &b"abc\0"[..]));
    }

    #[test]
    fn address_filtering() {
        let mut p = vec![10, 64, 0, RT_SCOPE_UNIVERSE];
        p.extend_from_slice(&3u32.to_ne_bytes());
        attr(&mut p, IFA_ADDRESS, &[0xfd; 16]);
        attr(&mut p, IFA_FLAGS, &IFA_F_PERMANENT.to_ne_bytes());
        assert!(parse_addr(&p, 4).is_none());
        let a = parse_addr(&p, 3).unwrap();
        assert_eq!((a.family, a.prefix, a.flags, a.address), (10, 64, IFA_F_PERMANENT, Some(vec![0xfd; 16])));
    }
}
