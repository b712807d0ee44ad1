//! The kernel side of [`Links`]: rtnetlink requests, synchronously.
//!
//! A netlink socket belongs to the network namespace of the thread that
//! opened it, so work inside a pod's namespace runs on a short-lived thread
//! that has entered it (`setns`) and never returns to a shared pool in the
//! wrong namespace. Node-scope work runs in the agent's own namespace, or in
//! the one named at construction (tests and the lab run the agent's datapath
//! against namespaces they created, never the machine's own).

use super::links::{LinkError, LinkState, Links, Netns, RouteEntry};
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Move the calling thread into the network namespace `ns` (a name under
/// /var/run/netns, or a path). Called before any other thread exists, it
/// puts the whole process there: every thread made later inherits it.
pub fn enter_netns(ns: &Path) -> io::Result<()> {
    let path = if ns.is_absolute() {
        ns.to_path_buf()
    } else {
        Path::new("/var/run/netns").join(ns)
    };
    let f = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        io::Error::other(format!(
            "entering network namespace {}: {e}",
            path.display()
        ))
    })
}

/// Run `f` on a thread inside the network namespace at `path`.
pub fn in_netns<R: Send>(path: &Path, f: impl FnOnce() -> io::Result<R> + Send) -> io::Result<R> {
    let ns = File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::other(format!(
                    "entering network namespace {}: {e}",
                    path.display()
                ))
            })?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("a netlink worker thread panicked"))?
    })
}

/// Whether `path` is a network namespace (a bind mount of one, or
/// `/proc/PID/ns/net`).
pub fn is_netns(path: &Path) -> bool {
    // A namespace file lives on nsfs; entering it is the definitive check but
    // needs privileges, so compare the filesystem magic instead.
    match nix::sys::statfs::statfs(path) {
        Ok(s) => s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC,
        Err(_) => false,
    }
}

/// A netlink error with the errno the kernel returned.
#[derive(Debug)]
pub(crate) struct NlError {
    pub(crate) errno: i32,
    pub(crate) what: String,
}

impl NlError {
    fn io(what: &str, e: io::Error) -> NlError {
        NlError {
            errno: e.raw_os_error().unwrap_or(libc_eio()),
            what: format!("{what}: {e}"),
        }
    }

    pub(crate) fn into_link_error(self) -> LinkError {
        match self.errno {
            EEXIST => LinkError::Exists(self.what),
            ENODEV | ENOENT | ESRCH => LinkError::NotFound(self.what),
            _ => LinkError::Kernel(self.what),
        }
    }
}

pub(crate) const EEXIST: i32 = 17;
pub(crate) const ENOENT: i32 = 2;
pub(crate) const ESRCH: i32 = 3;
pub(crate) const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

const EIO: i32 = 5;

fn libc_eio() -> i32 {
    EIO
}

/// One rtnetlink socket, in the namespace of the thread that made it.
pub(crate) struct Nl {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nl {
    pub(crate) fn new() -> Result<Nl, NlError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|e| NlError::io("netlink socket", e))?;
        socket
            .bind_auto()
            .map_err(|e| NlError::io("netlink bind", e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| NlError::io("netlink connect", e))?;
        Ok(Nl {
            socket,
            seq: 0,
            buf: vec![0; 1 << 16],
        })
    }

    /// Send one request and collect the replies until the ACK (or the end of
    /// a dump).
    pub(crate) fn request(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|e| NlError::io(what, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = vec![];
        loop {
            let n = {
                let mut b = &mut self.buf[..];
                self.socket
                    .recv(&mut b, 0)
                    .map_err(|e| NlError::io(what, e))?
            };
            let mut offset = 0;
            while offset < n {
                let bytes = &self.buf[offset..n];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NlError {
                            errno: libc_eio(),
                            what: format!("{what}: cannot decode the kernel's reply: {e}"),
                        }
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(NlError {
                                errno: -code.get(),
                                what: format!(
                                    "{what}: {}",
                                    io::Error::from_raw_os_error(-code.get())
                                ),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    pub(crate) fn link(&mut self, name: &str) -> Result<Option<LinkMessage>, NlError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("looking up link {name}"),
            RouteNetlinkMessage::GetLink(m),
            0,
        ) {
            Ok(mut v) => Ok(v.pop().and_then(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.errno == ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn index(&mut self, name: &str) -> Result<u32, NlError> {
        self.link(name)?
            .map(|l| l.header.index)
            .ok_or_else(|| NlError {
                errno: ENODEV,
                what: format!("link {name} does not exist"),
            })
    }

    pub(crate) fn links(&mut self) -> Result<Vec<LinkMessage>, NlError> {
        Ok(self
            .request(
                "listing links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )?
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    fn name_of(&mut self, index: u32) -> Result<Option<String>, NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(
            "looking up a link by index",
            RouteNetlinkMessage::GetLink(m),
            0,
        ) {
            Ok(v) => Ok(v.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => link_name(&l),
                _ => None,
            })),
            Err(e) if e.errno == ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, NlError> {
        let replies = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    })?;
                    IpNet::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            })
            .collect())
    }

    /// The index of the link that holds one of `addresses`, if one does.
    pub(crate) fn holder_of(&mut self, addresses: &[IpAddr]) -> Result<Option<u32>, NlError> {
        let replies = self.request(
            "listing addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies.into_iter().find_map(|r| match r {
            RouteNetlinkMessage::NewAddress(a) => a
                .attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(ip) if addresses.contains(ip)))
                .then_some(a.header.index),
            _ => None,
        }))
    }

    pub(crate) fn state(&mut self, l: LinkMessage) -> Result<LinkState, NlError> {
        let name = link_name(&l).unwrap_or_default();
        let master = match l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        }) {
            Some(i) => self.name_of(i)?,
            None => None,
        };
        let addresses = self.addresses(l.header.index)?;
        Ok(LinkState {
            index: l.header.index,
            mac: l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(m) => Some(
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    ),
                    _ => None,
                })
                .unwrap_or_default(),
            mtu: l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(0),
            up: l.header.flags.contains(LinkFlags::Up),
            kind: l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(kind_name(k)),
                        _ => None,
                    }),
                    _ => None,
                })
                .unwrap_or_else(|| "device".to_string()),
            master,
            addresses,
            name,
        })
    }

    pub(crate) fn set_up(&mut self, index: u32) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(
            "setting a link up",
            RouteNetlinkMessage::SetLink(m),
            NLM_F_ACK,
        )
        .map(|_| ())
    }

    pub(crate) fn add_address(
        &mut self,
        index: u32,
        device: &str,
        addr: IpNet,
    ) -> Result<(), NlError> {
        let mut m = AddressMessage::default();
        m.header.family = family(&addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        if let IpNet::V4(n) = addr {
            if n.prefix_len() < 31 {
                m.attributes
                    .push(AddressAttribute::Broadcast(n.broadcast()));
            }
        } else {
            // Pod and gateway addresses are ours alone: skip duplicate address
            // detection, which would keep them tentative (unusable) for seconds.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            &format!("adding {addr} to {device}"),
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(|_| ())
    }

    pub(crate) fn del_address(
        &mut self,
        index: u32,
        device: &str,
        addr: IpNet,
    ) -> Result<(), NlError> {
        let mut m = AddressMessage::default();
        m.header.family = family(&addr.addr());
        m.header.prefix_len = addr.prefix_len();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.addr()));
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        match self.request(
            &format!("removing {addr} from {device}"),
            RouteNetlinkMessage::DelAddress(m),
            NLM_F_ACK,
        ) {
            Err(e) if e.errno == EADDRNOTAVAIL => Ok(()),
            r => r.map(|_| ()),
        }
    }

    fn route_message(&mut self, r: &RouteEntry) -> Result<RouteMessage, NlError> {
        let index = self.index(&r.device)?;
        let mut m = RouteMessage::default();
        m.header = RouteHeader {
            address_family: family(&r.destination.addr()),
            destination_prefix_length: r.destination.prefix_len(),
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: if r.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..m.header
        };
        if r.destination.prefix_len() > 0 {
            m.attributes.push(RouteAttribute::Destination(route_address(
                r.destination.addr(),
            )));
        }
        if let Some(g) = r.gateway {
            m.attributes.push(RouteAttribute::Gateway(route_address(g)));
        }
        if let Some(s) = r.source {
            m.attributes
                .push(RouteAttribute::PrefSource(route_address(s)));
        }
        if let Some(mtu) = r.mtu {
            m.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        Ok(m)
    }

    fn routes(&mut self, device: &str) -> Result<Vec<RouteEntry>, NlError> {
        let index = self.index(device)?;
        Ok(self
            .main_routes()?
            .into_iter()
            .filter(|(oif, _)| *oif == Some(index))
            .map(|(_, mut r)| {
                r.device = device.to_string();
                r
            })
            .collect())
    }

    /// The default routes of the main table, on whatever device (named;
    /// empty for a route without one, such as a multipath route).
    fn default_routes(&mut self) -> Result<Vec<RouteEntry>, NlError> {
        let names: std::collections::HashMap<u32, String> = self
            .links()?
            .iter()
            .filter_map(|l| Some((l.header.index, link_name(l)?)))
            .collect();
        Ok(self
            .main_routes()?
            .into_iter()
            .filter(|(_, r)| r.destination.prefix_len() == 0)
            .map(|(oif, mut r)| {
                r.device = oif.and_then(|i| names.get(&i).cloned()).unwrap_or_default();
                r
            })
            .collect())
    }

    /// The unicast routes of the main table with their output interface
    /// index; `device` is left empty.
    fn main_routes(&mut self) -> Result<Vec<(Option<u32>, RouteEntry)>, NlError> {
        let replies = self.request(
            "listing routes",
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        let mut out = vec![];
        for r in replies {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            if m.header.table != RouteHeader::RT_TABLE_MAIN || m.header.kind != RouteType::Unicast {
                continue;
            }
            let mut oif = None;
            let mut dst = None;
            let mut gateway = None;
            let mut source = None;
            let mut mtu = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Destination(d) => dst = ip_of(d),
                    RouteAttribute::Gateway(g) => gateway = ip_of(g),
                    RouteAttribute::PrefSource(s) => source = ip_of(s),
                    RouteAttribute::Metrics(ms) => {
                        mtu = ms.iter().find_map(|x| match x {
                            RouteMetric::Mtu(v) => Some(*v),
                            _ => None,
                        })
                    }
                    _ => {}
                }
            }
            let unspecified = if m.header.address_family == AddressFamily::Inet6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            };
            let Ok(destination) = IpNet::new(
                dst.unwrap_or(unspecified),
                m.header.destination_prefix_length,
            ) else {
                continue;
            };
            out.push((
                oif,
                RouteEntry {
                    destination,
                    gateway,
                    device: String::new(),
                    source,
                    mtu,
                },
            ));
        }
        Ok(out)
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Dummy => "dummy".into(),
        InfoKind::Vxlan => "vxlan".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

pub(crate) fn family(a: &IpAddr) -> AddressFamily {
    if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(crate) fn route_address(a: IpAddr) -> RouteAddress {
    match a {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

pub(crate) fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Write a sysctl under /proc/sys in the calling thread's namespace.
pub(crate) fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// [`Links`] on the kernel.
#[derive(Debug, Clone, Default)]
pub struct NetlinkLinks {
    /// The node's namespace; `None` is the agent's own.
    node: Option<PathBuf>,
}

impl NetlinkLinks {
    /// Node-scope operations act in `node` (a namespace path), or in the
    /// agent's own namespace when `None`.
    pub fn new(node: Option<PathBuf>) -> Self {
        NetlinkLinks { node }
    }

    fn run<R: Send>(
        &self,
        ns: &Netns,
        f: impl FnOnce(&mut Nl) -> Result<R, NlError> + Send,
    ) -> Result<R, LinkError> {
        let path = match ns {
            Netns::Node => self.node.as_deref(),
            Netns::Pod(p) => Some(p.as_path()),
        };
        let body = || -> Result<R, NlError> {
            let mut nl = Nl::new()?;
            f(&mut nl)
        };
        match path {
            None => body().map_err(NlError::into_link_error),
            Some(p) => {
                let r =
                    in_netns(p, || Ok(body())).map_err(|e| LinkError::NotFound(e.to_string()))?;
                r.map_err(NlError::into_link_error)
            }
        }
    }

    fn sysctl_in(&self, ns: &Netns, key: &str, value: &str) -> Result<(), LinkError> {
        let path = match ns {
            Netns::Node => self.node.as_deref(),
            Netns::Pod(p) => Some(p.as_path()),
        };
        let r = match path {
            None => write_sysctl(key, value),
            Some(p) => in_netns(p, || write_sysctl(key, value)),
        };
        r.map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LinkError::NotFound(e.to_string()),
            _ => LinkError::Kernel(e.to_string()),
        })
    }
}

impl Links for NetlinkLinks {
    fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateways: &[IpNet],
    ) -> Result<LinkState, LinkError> {
        let created = self.run(&Netns::Node, |nl| {
            match nl.link(name)? {
                Some(l) => {
                    let kind = nl.state(l.clone())?.kind;
                    if kind != "bridge" {
                        return Err(NlError {
                            errno: EEXIST,
                            what: format!("{name} exists and is a {kind}, not a bridge"),
                        });
                    }
                    Ok(false)
                }
                None => {
                    let mut m = LinkMessage::default();
                    m.attributes.push(LinkAttribute::IfName(name.to_string()));
                    m.attributes.push(LinkAttribute::Mtu(mtu));
                    m.attributes
                        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                            InfoKind::Bridge,
                        )]));
                    match nl.request(
                        &format!("creating bridge {name}"),
                        RouteNetlinkMessage::NewLink(m),
                        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                    ) {
                        // Another ADD created it at the same moment.
                        Err(e) if e.errno == EEXIST => Ok(false),
                        r => r.map(|_| true),
                    }
                }
            }
        })?;
        if created && gateways.iter().any(|g| g.addr().is_ipv6()) {
            // Router advertisements and DAD on the gateway are not wanted.
            let _ = self.sysctl_in(
                &Netns::Node,
                &format!("net.ipv6.conf.{name}.accept_dad"),
                "0",
            );
        }
        self.run(&Netns::Node, |nl| {
            let index = nl.index(name)?;
            nl.set_up(index)?;
            let have = nl.addresses(index)?;
            for g in gateways {
                if !have.contains(g) {
                    match nl.add_address(index, name, *g) {
                        Err(e) if e.errno == EEXIST => {}
                        r => r?,
                    }
                }
            }
            let l = nl.link(name)?.ok_or_else(|| NlError {
                errno: ENODEV,
                what: format!("bridge {name} vanished"),
            })?;
            nl.state(l)
        })
    }

    fn create_veth(
        &self,
        pod_netns: &Path,
        pod_ifname: &str,
        host_name: &str,
        bridge: &str,
        mtu: u32,
    ) -> Result<(LinkState, LinkState), LinkError> {
        let ns_file = File::open(pod_netns).map_err(|e| {
            LinkError::NotFound(format!("network namespace {}: {e}", pod_netns.display()))
        })?;
        let fd = ns_file.as_raw_fd();
        let host = self.run(&Netns::Node, |nl| {
            let bridge_index = nl.index(bridge)?;
            if nl.link(host_name)?.is_some() {
                return Err(NlError {
                    errno: EEXIST,
                    what: format!("{host_name} exists in the node namespace"),
                });
            }
            // The peer cannot be set up here: the kernel opens it before its
            // partner exists and refuses (ENOTCONN). It is set up below, inside
            // the pod's namespace.
            let mut peer = LinkMessage::default();
            peer.attributes
                .push(LinkAttribute::IfName(pod_ifname.to_string()));
            peer.attributes.push(LinkAttribute::Mtu(mtu));
            peer.attributes.push(LinkAttribute::NetNsFd(fd));
            let mut m = LinkMessage::default();
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
            m.attributes
                .push(LinkAttribute::IfName(host_name.to_string()));
            m.attributes.push(LinkAttribute::Mtu(mtu));
            m.attributes.push(LinkAttribute::Controller(bridge_index));
            m.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            nl.request(
                &format!(
                    "creating veth {host_name} with {pod_ifname} in {}",
                    pod_netns.display()
                ),
                RouteNetlinkMessage::NewLink(m),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| {
                if e.errno == EEXIST {
                    NlError {
                        errno: EEXIST,
                        what: format!(
                            "{pod_ifname} exists in the pod namespace {}",
                            pod_netns.display()
                        ),
                    }
                } else {
                    e
                }
            })?;
            let index = nl.index(host_name)?;
            // Hairpin: a pod that reaches its own Service gets its packets back
            // through the port they came in on.
            let mut port = LinkMessage::default();
            port.header.index = index;
            port.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]));
            nl.request(
                &format!("setting hairpin on {host_name}"),
                RouteNetlinkMessage::NewLink(port),
                NLM_F_ACK,
            )?;
            let l = nl.link(host_name)?.ok_or_else(|| NlError {
                errno: ENODEV,
                what: format!("{host_name} vanished"),
            })?;
            nl.state(l)
        })?;
        drop(ns_file);
        let pod = self.run(&Netns::Pod(pod_netns.to_path_buf()), |nl| {
            let l = nl.link(pod_ifname)?.ok_or_else(|| NlError {
                errno: ENODEV,
                what: format!("{pod_ifname} did not appear in {}", pod_netns.display()),
            })?;
            nl.set_up(l.header.index)?;
            let l = nl.link(pod_ifname)?.ok_or_else(|| NlError {
                errno: ENODEV,
                what: format!("{pod_ifname} vanished from {}", pod_netns.display()),
            })?;
            nl.state(l)
        });
        match pod {
            Ok(pod) => Ok((host, pod)),
            Err(e) => {
                // Do not leave half a pair behind.
                let _ = self.delete_link(&Netns::Node, host_name);
                Err(e)
            }
        }
    }

    fn add_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError> {
        self.run(ns, |nl| {
            let index = nl.index(device)?;
            nl.add_address(index, device, address)
        })
    }

    fn del_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError> {
        self.run(ns, |nl| match nl.link(device)? {
            Some(l) => nl.del_address(l.header.index, device, address),
            None => Ok(()),
        })
    }

    fn add_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError> {
        self.run(ns, |nl| {
            let m = nl.route_message(route)?;
            nl.request(
                &format!(
                    "adding a route to {} via {}",
                    route.destination, route.device
                ),
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .map(|_| ())
        })
    }

    fn del_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError> {
        self.run(ns, |nl| {
            let m = match nl.route_message(route) {
                Ok(m) => m,
                Err(e) if e.errno == ENODEV => return Ok(()),
                Err(e) => return Err(e),
            };
            match nl.request(
                &format!("removing the route to {}", route.destination),
                RouteNetlinkMessage::DelRoute(m),
                NLM_F_ACK,
            ) {
                Err(e) if e.errno == ESRCH || e.errno == ENOENT => Ok(()),
                r => r.map(|_| ()),
            }
        })
    }

    fn set_sysctl(&self, ns: &Netns, key: &str, value: &str) -> Result<(), LinkError> {
        self.sysctl_in(ns, key, value)
    }

    fn get_link(&self, ns: &Netns, name: &str) -> Result<Option<LinkState>, LinkError> {
        self.run(ns, |nl| match nl.link(name)? {
            Some(l) => nl.state(l).map(Some),
            None => Ok(None),
        })
    }

    fn list_links(&self, ns: &Netns) -> Result<Vec<LinkState>, LinkError> {
        self.run(ns, |nl| {
            let links = nl.links()?;
            links.into_iter().map(|l| nl.state(l)).collect()
        })
    }

    fn set_link_up(&self, ns: &Netns, name: &str) -> Result<(), LinkError> {
        self.run(ns, |nl| {
            let index = nl.index(name)?;
            nl.set_up(index)
        })
    }

    fn list_routes(&self, ns: &Netns, device: &str) -> Result<Vec<RouteEntry>, LinkError> {
        self.run(ns, |nl| nl.routes(device))
    }

    fn default_routes(&self, ns: &Netns) -> Result<Vec<RouteEntry>, LinkError> {
        self.run(ns, |nl| nl.default_routes())
    }

    fn delete_link(&self, ns: &Netns, name: &str) -> Result<bool, LinkError> {
        if let Netns::Pod(p) = ns
            && !p.exists()
        {
            return Ok(false);
        }
        self.run(ns, |nl| {
            let Some(l) = nl.link(name)? else {
                return Ok(false);
            };
            let mut m = LinkMessage::default();
            m.header.index = l.header.index;
            match nl.request(
                &format!("deleting link {name}"),
                RouteNetlinkMessage::DelLink(m),
                NLM_F_ACK,
            ) {
                Err(e) if e.errno == ENODEV => Ok(false),
                r => r.map(|_| true),
            }
        })
    }
}
