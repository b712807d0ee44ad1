//! The host-owned part of each role's nftables table: base chains, hooks and
//! the dispatch maps modules add elements to. Modules render per object; they
//! cannot define base chains or redefine these names.

use crate::model::Role;
use crate::runtime::bindings::imports::switchyard::plugin::types::{NftMapData, NftType};

/// What a skeleton set or map holds besides its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkeletonData {
    /// A set: keys only.
    Set,
    /// A verdict map.
    Verdict,
    /// A data map (for example the address and port a DNAT lookup gives).
    Data(&'static [NftType]),
}

/// A map or set the host declares in a role's table.
#[derive(Debug)]
pub struct SkeletonMap {
    pub name: &'static str,
    pub key: &'static [NftType],
    pub data: SkeletonData,
    /// The declaration's body in nftables syntax (`type ...` or `typeof ...`).
    pub declaration: &'static str,
    /// Whether the map is looked up in filter hooks, where `reject` may be
    /// used; the proxy's other chains run in NAT hooks, where it may not.
    pub filter: bool,
}

impl SkeletonMap {
    pub fn data(&self) -> Option<NftMapData> {
        match self.data {
            SkeletonData::Set => None,
            SkeletonData::Verdict => Some(NftMapData::Verdict),
            SkeletonData::Data(d) => Some(NftMapData::Data(d.to_vec())),
        }
    }
}

/// What the host provides in a role's table.
#[derive(Debug)]
pub struct Skeleton {
    /// The table (family `inet`).
    pub table: &'static str,
    /// Regular chains modules may jump or go to.
    pub chains: &'static [&'static str],
    /// Maps and sets modules may add elements to.
    pub maps: &'static [SkeletonMap],
    /// Names the host uses for its own objects; modules may not define them.
    pub reserved: &'static [&'static str],
    /// Whether the module's chains run in NAT hooks (no `reject` there).
    pub nat: bool,
}

use NftType::{InetProto, InetService, Ipv4Addr, Ipv6Addr, Mark, Nfproto};

/// The proxy table. There is a backend map per family and transport
/// protocol because the maps are declared with `typeof ... tcp dport` (not
/// `th dport`: nftables 1.0.6 refuses a rule added later against a map
/// declared with `th` next to a network header field), which makes a lookup
/// in the map match that protocol only. Dispatch is data: a Service port is an element of
/// `service-ips` (or `service-nodeports`) whose verdict goes to a chain that
/// picks a slot, and the slot's endpoint is an element of `backends4-tcp`
/// (or `backends6-udp`, `nodeport-backends4-tcp`, ...). Adding, changing
/// or removing a Service changes elements only: cheap in the kernel whatever
/// the number of Services (see `bench/REPORT.md`).
const PROXY: Skeleton = Skeleton {
    table: "switchyard-proxy",
    chains: &["mark-for-masquerade"],
    maps: &[
        SkeletonMap {
            name: "service-ips",
            key: &[Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv4_addr . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "service-ips6",
            key: &[Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv6_addr . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "service-nodeports",
            key: &[Nfproto, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type nf_proto . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-tcp",
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . tcp dport . numgen inc mod 1 : ip daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-tcp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . tcp dport . numgen inc mod 1 : ip daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-udp",
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . udp dport . numgen inc mod 1 : ip daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-udp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . udp dport . numgen inc mod 1 : ip daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-sctp",
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . sctp dport . numgen inc mod 1 : ip daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-sctp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . sctp dport . numgen inc mod 1 : ip daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-tcp",
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . tcp dport . numgen inc mod 1 : ip6 daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-tcp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . tcp dport . numgen inc mod 1 : ip6 daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-udp",
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . udp dport . numgen inc mod 1 : ip6 daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-udp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . udp dport . numgen inc mod 1 : ip6 daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-sctp",
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . sctp dport . numgen inc mod 1 : ip6 daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-sctp",
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . sctp dport . numgen inc mod 1 : ip6 daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "hairpin4",
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr",
            filter: false,
        },
        SkeletonMap {
            name: "hairpin6",
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr",
            filter: false,
        },
        SkeletonMap {
            name: "no-endpoints",
            key: &[Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv4_addr . inet_proto . inet_service : verdict",
            filter: true,
        },
        SkeletonMap {
            name: "no-endpoints6",
            key: &[Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv6_addr . inet_proto . inet_service : verdict",
            filter: true,
        },
        SkeletonMap {
            name: "no-endpoint-nodeports",
            key: &[Nfproto, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type nf_proto . inet_proto . inet_service : verdict",
            filter: true,
        },
    ],
    reserved: &[
        "prerouting",
        "output",
        "postrouting",
        "forward",
        "services",
        "nodeports",
        "masquerading",
        "filter-forward",
        "filter-output",
        "filter-input",
        "cluster-cidrs",
        "cluster-cidrs6",
        "reject-services",
        "reject-traffic",
    ],
    nat: true,
};

const POLICY: Skeleton = Skeleton {
    table: "switchyard-policy",
    chains: &[],
    maps: &[],
    reserved: &["forward", "output", "input", "ingress", "egress"],
    nat: false,
};

const NONE: Skeleton = Skeleton {
    table: "",
    chains: &[],
    maps: &[],
    reserved: &[],
    nat: false,
};

/// The skeleton of a role's table.
pub fn for_role(role: Role) -> &'static Skeleton {
    match role {
        Role::ServiceProxy => &PROXY,
        Role::NetworkPolicy => &POLICY,
        Role::Cni | Role::Scheduler => &NONE,
    }
}

impl Skeleton {
    pub fn map(&self, name: &str) -> Option<&SkeletonMap> {
        self.maps.iter().find(|m| m.name == name)
    }

    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(&name) || self.chains.contains(&name) || self.map(name).is_some()
    }
}
