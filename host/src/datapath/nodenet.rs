//! Node networking for the cluster's network model: how pods on different
//! nodes reach each other, and what pods may reach outside the cluster.
//!
//! - flat, island, isolated: a route per other node's pod CIDR, via that
//!   node's underlay address;
//! - overlay: a VXLAN device, and per other node a permanent neighbour entry
//!   (its VTEP address to its VTEP MAC), an FDB entry (its VTEP MAC to its
//!   underlay address) and an on-link route for its pod CIDR. Every VTEP MAC
//!   is derived from the node's name, so no node needs to publish it and
//!   nothing is flooded;
//! - island and overlay (or `masquerade: true`): traffic from pods to outside
//!   the cluster is masqueraded on the uplink;
//! - isolated: traffic from pods to outside the cluster (anything but pods
//!   and nodes) is dropped.
//!
//! Routes carry our own protocol number, so stale ones are found and removed;
//! the nftables table is replaced whole in one transaction.

use super::netlink::{
    EEXIST, ENODEV, ENOENT, ESRCH, Nl, NlError, family, in_netns, ip_of, route_address,
};
use crate::model::crd::{ClusterNetworkSpec, NetworkModel};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

/// The protocol number our routes carry (`ip route` shows it as `proto 83`).
pub const ROUTE_PROTOCOL: u8 = 83;
/// The VXLAN device of the overlay model.
pub const VXLAN_DEVICE: &str = "sy-vxlan";
/// The nftables table node networking owns.
pub const NFT_TABLE: &str = "switchyard-node";

pub use crate::model::node::NodeInfo;

/// What this node should have, computed from the model alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodePlan {
    /// (destination, gateway, device, on-link)
    pub routes: Vec<(IpNet, IpAddr, String, bool)>,
    pub vxlan: Option<VxlanPlan>,
    pub nft: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPlan {
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Our VTEP addresses (host prefixes).
    pub addresses: Vec<IpNet>,
    /// Per remote node: (VTEP address, VTEP MAC, underlay address).
    pub peers: Vec<(IpAddr, [u8; 6], IpAddr)>,
}

fn cidrs(v: &[String]) -> Vec<IpNet> {
    v.iter().filter_map(|c| c.parse().ok()).collect()
}

/// Compute the plan for node `me` with uplink `uplink` (MTU `uplink_mtu`).
pub fn plan(
    me: &str,
    uplink: &str,
    uplink_mtu: u32,
    nodes: &[NodeInfo],
    net: &ClusterNetworkSpec,
) -> NodePlan {
    let Some(mine) = nodes.iter().find(|n| n.name == me) else {
        return NodePlan::default();
    };
    let mut p = NodePlan::default();
    let others: Vec<&NodeInfo> = nodes.iter().filter(|n| n.name != me).collect();
    if net.model == NetworkModel::Overlay {
        // VXLAN over IPv4 when the node has an IPv4 underlay address.
        if let Some(local) = mine.address(true).or_else(|| mine.address(false)) {
            let v4 = local.is_ipv4();
            let overhead = if v4 { 50 } else { 70 };
            let vx = net.vxlan.clone().unwrap_or_default();
            let mut peers = vec![];
            for o in &others {
                let Some(remote) = o.address(v4) else {
                    continue;
                };
                for c in &o.pod_cidrs {
                    let vtep = NodeInfo::vtep_ip(c);
                    peers.push((vtep, o.vtep_mac(), remote));
                    p.routes.push((*c, vtep, VXLAN_DEVICE.to_string(), true));
                }
            }
            p.vxlan = Some(VxlanPlan {
                vni: vx.vni,
                port: vx.port,
                local,
                mac: mine.vtep_mac(),
                mtu: uplink_mtu.saturating_sub(overhead),
                addresses: mine
                    .pod_cidrs
                    .iter()
                    .map(|c| {
                        IpNet::new(NodeInfo::vtep_ip(c), c.max_prefix_len()).expect("host prefix")
                    })
                    .collect(),
                peers,
            });
        }
    } else {
        for o in &others {
            for c in &o.pod_cidrs {
                if let Some(via) = o.address(c.addr().is_ipv4()) {
                    p.routes.push((*c, via, uplink.to_string(), false));
                }
            }
        }
    }
    p.nft = nft_table(uplink, nodes, net);
    p
}

fn nft_table(uplink: &str, nodes: &[NodeInfo], net: &ClusterNetworkSpec) -> String {
    let cluster = cidrs(&net.pod_cidrs);
    let set = |v4: bool, items: Vec<String>| {
        let ty = if v4 { "ipv4_addr" } else { "ipv6_addr" };
        if items.is_empty() {
            format!("type {ty}; flags interval;")
        } else {
            format!(
                "type {ty}; flags interval; elements = {{ {} }};",
                items.join(", ")
            )
        }
    };
    let of = |v4: bool| -> Vec<String> {
        cluster
            .iter()
            .filter(|c| c.addr().is_ipv4() == v4)
            .map(|c| c.trunc().to_string())
            .collect()
    };
    let node_ips = |v4: bool| -> Vec<String> {
        let mut v: Vec<String> = nodes
            .iter()
            .flat_map(|n| n.addresses.iter())
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| a.to_string())
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let mut t = String::new();
    t.push_str(&format!("table inet {NFT_TABLE} {{\n"));
    t.push_str(&format!("  set cluster4 {{ {} }}\n", set(true, of(true))));
    t.push_str(&format!("  set cluster6 {{ {} }}\n", set(false, of(false))));
    t.push_str(&format!(
        "  set nodes4 {{ {} }}\n",
        set(true, node_ips(true))
    ));
    t.push_str(&format!(
        "  set nodes6 {{ {} }}\n",
        set(false, node_ips(false))
    ));
    if net.masquerades() && net.model != NetworkModel::Isolated {
        t.push_str("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n");
        t.push_str(&format!("    oifname \"{uplink}\" ip saddr @cluster4 ip daddr != @cluster4 masquerade comment \"pods leave the cluster as their node\"\n"));
        t.push_str(&format!(
            "    oifname \"{uplink}\" ip6 saddr @cluster6 ip6 daddr != @cluster6 masquerade\n"
        ));
        t.push_str("  }\n");
    }
    if net.model == NetworkModel::Isolated {
        t.push_str(
            "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
        );
        // Link-local and multicast destinations stay on the pod's own link
        // (neighbour discovery between pods on one bridge); they are not
        // "outside".
        t.push_str("    ip saddr @cluster4 ip daddr != @cluster4 ip daddr != @nodes4 ip daddr != { 224.0.0.0/4, 255.255.255.255 } drop comment \"isolated: pods reach only the cluster\"\n");
        t.push_str("    ip6 saddr @cluster6 ip6 daddr != @cluster6 ip6 daddr != @nodes6 ip6 daddr != { fe80::/10, ff00::/8 } drop\n");
        t.push_str("  }\n");
    }
    t.push_str("}\n");
    t
}

/// Replace the node table in one nftables transaction (in the namespace at
/// `netns`, or the agent's own).
pub fn apply_nft(netns: Option<&PathBuf>, table: &str) -> Result<(), String> {
    // Creating then deleting then adding the table is one atomic replace: no
    // window without rules.
    let script = format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n{table}");
    use super::nft::NftRunner;
    super::nft::Nft::new(netns.cloned())
        .run(&script)
        .map_err(|e| format!("nft rejected the node table: {e}"))
}

fn neighbour(index: u32, family: AddressFamily, dst: IpAddr, mac: [u8; 6]) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m
}

/// Whether the VXLAN device `l` is what `v` asks for: VNI, port, local
/// address and MTU (a device is created with them; a change recreates it).
fn vxlan_matches(l: &LinkMessage, v: &VxlanPlan) -> bool {
    let mut mtu = None;
    let mut info = vec![];
    for a in &l.attributes {
        match a {
            LinkAttribute::Mtu(m) => mtu = Some(*m),
            LinkAttribute::LinkInfo(i) => {
                for x in i {
                    if let LinkInfo::Data(InfoData::Vxlan(d)) = x {
                        info.extend(d.iter().cloned());
                    }
                }
            }
            _ => {}
        }
    }
    let has = |want: &InfoVxlan| info.contains(want);
    let local = match v.local {
        IpAddr::V4(a) => has(&InfoVxlan::Local(a)),
        IpAddr::V6(a) => has(&InfoVxlan::Local6(a)),
    };
    mtu == Some(v.mtu) && has(&InfoVxlan::Id(v.vni)) && has(&InfoVxlan::Port(v.port)) && local
}

/// Remove the VXLAN device (its neighbours, FDB entries and on-link
/// routes go with it), if there is one.
fn remove_vxlan(nl: &mut Nl) -> Result<(), NlError> {
    let Some(l) = nl.link(VXLAN_DEVICE)? else {
        return Ok(());
    };
    let mut m = LinkMessage::default();
    m.header.index = l.header.index;
    match nl.request(
        "removing the VXLAN device",
        RouteNetlinkMessage::DelLink(m),
        NLM_F_ACK,
    ) {
        Err(e) if e.errno == ENODEV => Ok(()),
        r => r.map(|_| ()),
    }
}

fn ensure_vxlan(nl: &mut Nl, uplink: &str, v: &VxlanPlan) -> Result<u32, NlError> {
    if let Some(l) = nl.link(VXLAN_DEVICE)? {
        if vxlan_matches(&l, v) {
            return Ok(l.header.index);
        }
        tracing::info!(vni = v.vni, port = v.port, "recreating the VXLAN device");
        remove_vxlan(nl)?;
    }
    let uplink_index = nl.index(uplink)?;
    let mut info = vec![
        InfoVxlan::Id(v.vni),
        InfoVxlan::Port(v.port),
        InfoVxlan::Learning(false),
        InfoVxlan::Link(uplink_index),
    ];
    match v.local {
        IpAddr::V4(a) => info.push(InfoVxlan::Local(a)),
        IpAddr::V6(a) => info.push(InfoVxlan::Local6(a)),
    }
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes
        .push(LinkAttribute::IfName(VXLAN_DEVICE.into()));
    m.attributes.push(LinkAttribute::Mtu(v.mtu));
    m.attributes.push(LinkAttribute::Address(v.mac.to_vec()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(info)),
    ]));
    nl.request(
        "creating the VXLAN device",
        RouteNetlinkMessage::NewLink(m),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )?;
    nl.index(VXLAN_DEVICE)
}

/// The link that holds one of `addresses` (a node's InternalIPs), with
/// its MTU: where a cluster node's pod traffic leaves it. `None` when no
/// link holds any of them.
pub fn link_holding(
    netns: Option<&PathBuf>,
    addresses: &[IpAddr],
) -> Result<Option<(String, u32)>, String> {
    let body = || -> Result<Option<(String, u32)>, NlError> {
        let mut nl = Nl::new()?;
        // One dump of the addresses, one of the links.
        let Some(index) = nl.holder_of(addresses)? else {
            return Ok(None);
        };
        for l in nl.links()? {
            if l.header.index != index {
                continue;
            }
            let (mut name, mut mtu) = (None, 1500);
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            return Ok(name.map(|n| (n, mtu)));
        }
        Ok(None)
    };
    let r = match netns {
        Some(p) => in_netns(p, || Ok(body())).map_err(|e| e.to_string())?,
        None => body(),
    };
    r.map_err(|e| e.what)
}

/// Apply a plan: VXLAN device and entries, routes (stale ones of ours
/// removed), and the nftables table.
pub fn apply(netns: Option<&PathBuf>, uplink: &str, plan: &NodePlan) -> Result<(), String> {
    let body = || -> Result<(), NlError> {
        let mut nl = Nl::new()?;
        if let Some(v) = &plan.vxlan {
            let index = ensure_vxlan(&mut nl, uplink, v)?;
            nl.set_up(index)?;
            let have = nl.addresses(index)?;
            for a in &v.addresses {
                if !have.contains(a) {
                    match nl.add_address(index, VXLAN_DEVICE, *a) {
                        Err(e) if e.errno == EEXIST => {}
                        r => r?,
                    }
                }
            }
            for (vtep, mac, underlay) in &v.peers {
                let n = neighbour(index, family(vtep), *vtep, *mac);
                nl.request(
                    "adding a VTEP neighbour",
                    RouteNetlinkMessage::NewNeighbour(n),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                )?;
                let mut fdb = neighbour(index, AddressFamily::Bridge, *underlay, *mac);
                fdb.header.flags = NeighbourFlags::Own;
                nl.request(
                    "adding a VXLAN FDB entry",
                    RouteNetlinkMessage::NewNeighbour(fdb),
                    NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                )?;
            }
        } else {
            // Not the overlay (any more): no VXLAN device.
            remove_vxlan(&mut nl)?;
        }
        // Routes: replace the wanted ones, remove ours that are not wanted.
        let mut wanted = BTreeSet::new();
        for (dst, via, dev, onlink) in &plan.routes {
            let index = nl.index(dev)?;
            let mut m = RouteMessage::default();
            m.header = RouteHeader {
                address_family: family(&dst.addr()),
                destination_prefix_length: dst.prefix_len(),
                table: RouteHeader::RT_TABLE_MAIN,
                protocol: RouteProtocol::Other(ROUTE_PROTOCOL),
                scope: RouteScope::Universe,
                kind: RouteType::Unicast,
                ..m.header
            };
            if *onlink {
                m.header.flags = RouteFlags::Onlink;
            }
            m.attributes.push(RouteAttribute::Destination(route_address(
                dst.trunc().addr(),
            )));
            m.attributes
                .push(RouteAttribute::Gateway(route_address(*via)));
            m.attributes.push(RouteAttribute::Oif(index));
            nl.request(
                &format!("routing {dst} via {via}"),
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            )?;
            wanted.insert(dst.trunc());
        }
        let all = nl.request(
            "listing routes",
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            NLM_F_DUMP,
        )?;
        for r in all {
            let RouteNetlinkMessage::NewRoute(m) = r else {
                continue;
            };
            if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            let dst = m.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(d) => ip_of(d),
                _ => None,
            });
            let Some(dst) =
                dst.and_then(|d| IpNet::new(d, m.header.destination_prefix_length).ok())
            else {
                continue;
            };
            if !wanted.contains(&dst) {
                match nl.request(
                    &format!("removing the stale route to {dst}"),
                    RouteNetlinkMessage::DelRoute(m),
                    NLM_F_ACK,
                ) {
                    Err(e) if e.errno == ESRCH || e.errno == ENOENT || e.errno == ENODEV => {}
                    r => {
                        r?;
                    }
                }
            }
        }
        let _ = AddressMessage::default();
        Ok(())
    };
    let r = match netns {
        Some(p) => in_netns(p, || Ok(body())).map_err(|e| e.to_string())?,
        None => body(),
    };
    r.map_err(|e| e.what)?;
    apply_nft(netns, &plan.nft)
}

/// Where the addresses the node serves itself live (the node-local DNS
/// address, the cluster DNS Service's ClusterIPs): the loopback link, as
/// /32 and /128, so packets to them are delivered to the node, where the
/// agent's DNS answers. (A dummy link, NodeLocal DNSCache's choice, needs
/// the `dummy` kernel module, which not every node has.)
pub const LOCAL_DEVICE: &str = "lo";

/// Make the loopback link hold `addresses`, and no longer hold those of
/// `previous` that are not wanted (only addresses this agent added are
/// ever removed).
pub fn local_addresses(
    netns: Option<&PathBuf>,
    addresses: &[IpAddr],
    previous: &[IpAddr],
) -> Result<(), String> {
    let body = || -> Result<(), NlError> {
        let mut nl = Nl::new()?;
        let index = nl.index(LOCAL_DEVICE)?;
        let have = nl.addresses(index)?;
        for a in addresses.iter().map(|a| IpNet::from(*a)) {
            if !have.contains(&a) {
                match nl.add_address(index, LOCAL_DEVICE, a) {
                    Err(e) if e.errno == EEXIST => {}
                    r => r?,
                }
            }
        }
        for a in previous.iter().filter(|a| !addresses.contains(a)) {
            nl.del_address(index, LOCAL_DEVICE, IpNet::from(*a))?;
        }
        Ok(())
    };
    let r = match netns {
        Some(p) => in_netns(p, || Ok(body())).map_err(|e| e.to_string())?,
        None => body(),
    };
    r.map_err(|e| e.what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<NodeInfo> {
        (1..=3)
            .map(|i| NodeInfo {
                name: format!("node-{i}"),
                addresses: vec![
                    format!("198.18.0.{}", 10 + i).parse().unwrap(),
                    format!("fd18::{}", 10 + i).parse().unwrap(),
                ],
                pod_cidrs: vec![
                    format!("10.244.{i}.0/24").parse().unwrap(),
                    format!("fd00:10:244:{i}::/64").parse().unwrap(),
                ],
            })
            .collect()
    }

    fn net(model: NetworkModel) -> ClusterNetworkSpec {
        ClusterNetworkSpec {
            model,
            pod_cidrs: vec!["10.244.0.0/16".into(), "fd00:10:244::/56".into()],
            ..Default::default()
        }
    }

    #[test]
    fn flat_routes_each_other_node_via_its_underlay_address() {
        let p = plan("node-1", "eth0", 1500, &nodes(), &net(NetworkModel::Flat));
        assert_eq!(p.routes.len(), 4);
        assert!(p.routes.contains(&(
            "10.244.2.0/24".parse().unwrap(),
            "198.18.0.12".parse().unwrap(),
            "eth0".into(),
            false
        )));
        assert!(p.routes.contains(&(
            "fd00:10:244:3::/64".parse().unwrap(),
            "fd18::13".parse().unwrap(),
            "eth0".into(),
            false
        )));
        assert!(p.vxlan.is_none());
        assert!(!p.nft.contains("masquerade") && !p.nft.contains("drop"));
    }

    #[test]
    fn overlay_uses_vxlan_with_derived_vtep_macs() {
        let p = plan(
            "node-1",
            "eth0",
            1500,
            &nodes(),
            &net(NetworkModel::Overlay),
        );
        let v = p.vxlan.unwrap();
        assert_eq!(v.mtu, 1450);
        assert_eq!(v.peers.len(), 4);
        assert_eq!(v.peers[0].0.to_string(), "10.244.2.0");
        assert_eq!(v.peers[0].1, nodes()[1].vtep_mac());
        assert!(p.routes.iter().all(|r| r.2 == VXLAN_DEVICE && r.3));
        assert!(
            p.nft.contains("masquerade"),
            "the overlay masquerades by default"
        );
        assert_ne!(nodes()[0].vtep_mac(), nodes()[1].vtep_mac());
    }

    #[test]
    fn island_masquerades_and_isolated_drops() {
        let island = plan("node-1", "eth0", 1500, &nodes(), &net(NetworkModel::Island));
        assert!(island.nft.contains("masquerade") && !island.nft.contains("drop"));
        let iso = plan(
            "node-1",
            "eth0",
            1500,
            &nodes(),
            &net(NetworkModel::Isolated),
        );
        assert!(iso.nft.contains("drop") && !iso.nft.contains("masquerade"));
        assert!(
            iso.nft
                .contains("elements = { 198.18.0.11, 198.18.0.12, 198.18.0.13 }"),
            "{}",
            iso.nft
        );
    }
}
