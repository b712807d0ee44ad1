//! The host-owned part of each role's nftables table: base chains, hooks and
//! the dispatch maps modules add elements to. Modules render per object; they
//! cannot define base chains or redefine these names.

use crate::contract::bindings::imports::switchyard::plugin::types::{NftMapData, NftType};
use crate::model::Role;
use std::fmt::Write as _;

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
    /// What each value of an element stands for, key first, then data
    /// (positions past the end are [`Bind::Free`]): what ties an element
    /// to the object it was rendered for (see [`super::scope`]).
    pub bind: &'static [Bind],
}

/// What one position of a skeleton map's elements must belong to. The host
/// checks it against the scope of the object a fragment was rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// Whatever the type allows: a protocol, a slot number, a policy's
    /// peer (peers are the policy's own business).
    Free,
    /// One of the Service's addresses: a ClusterIP, an external IP or a
    /// LoadBalancer ingress IP.
    ServiceIp,
    /// One of the Service's ports, with the protocol the element's key
    /// names.
    ServicePort,
    /// One of the Service's nodePorts, with the protocol the key names.
    NodePort,
    /// The address of one of the Service's endpoints.
    Endpoint,
    /// One of the endpoints' ports (a DNAT target's port).
    EndpointPort,
    /// A single address of a pod the policy selects on this node.
    Pod,
}

use Bind::{Endpoint, EndpointPort, Free, NodePort, Pod, ServiceIp, ServicePort};
/// `vip . proto . port`.
const VIP_PORT: &[Bind] = &[ServiceIp, Free, ServicePort];
/// `nfproto . proto . nodePort`.
const NODE_PORT: &[Bind] = &[Free, Free, NodePort];
/// `vip . proto . port . slot : endpoint . port`.
const VIP_PORT_SLOT_TO_ENDPOINT: &[Bind] =
    &[ServiceIp, Free, ServicePort, Free, Endpoint, EndpointPort];
/// `proto . nodePort . slot : endpoint . port`.
const NODE_PORT_SLOT_TO_ENDPOINT: &[Bind] = &[Free, NodePort, Free, Endpoint, EndpointPort];
/// `endpoint . endpoint` (hairpin masquerade).
const ENDPOINT_PAIR: &[Bind] = &[Endpoint, Endpoint];
/// `pod` or `pod . peer ...`: the pod position is a selected pod's address.
const POD: &[Bind] = &[Pod];

impl SkeletonMap {
    /// Whether the set is an interval set (its elements may be ranges).
    pub fn interval(&self) -> bool {
        self.declaration.contains("flags interval")
    }

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
    /// The host's own chains (and drop maps) in nft syntax: the hooks that
    /// lead to the module's maps. With the maps above, the whole of what the
    /// host owns in the table, as data beside the maps it reads.
    pub host_chains: fn() -> String,
}

/// The proxy chain a class's chain starts by jumping to (see [`PROXY`]).
pub const RESTORE_MARK: &str = "restore-mark";
/// The verdict map of classes (see [`PROXY`]).
pub const SERVICE_CLASSES: &str = "service-classes";
/// The data maps whose values are classes.
pub const CLASS_DISPATCH: [&str; 3] = ["service-ips", "service-ips6", "service-nodeports"];
/// The packet-mark bit that says the packet's own mark is stashed in its
/// conntrack mark while a class borrows the packet mark.
pub const STASHED_MARK: u32 = 0x8000_0000;
/// The largest class value (the bits below [`STASHED_MARK`]).
pub const CLASS_MAX: u32 = STASHED_MARK - 1;
/// The mark bit the proxy's postrouting chain masquerades (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;

use NftType::{InetProto, InetService, Ipv4Addr, Ipv6Addr, Mark, Nfproto};

/// The proxy table. There is a backend map per family and transport
/// protocol because the maps are declared with `typeof ... tcp dport` (not
/// `th dport`: nftables 1.0.6 refuses a rule added later against a map
/// declared with `th` next to a network header field), which makes a lookup
/// in the map match that protocol only.
///
/// Dispatch is data. A Service port is an element of the *data* map
/// `service-ips` (or `service-ips6`, `service-nodeports`) whose value is a
/// *class*: a packet-mark value naming the chain that picks an endpoint
/// (shared by every Service with the same traffic kind and endpoint
/// count). The base chain writes the class into the packet mark and looks
/// it up in the small verdict map `service-classes`; the slot's endpoint is
/// an element of `backends4-tcp` (or `backends6-udp`,
/// `nodeport-backends4-tcp`, ...). Adding, changing or removing a Service
/// therefore changes data elements only. A `goto` element in a verdict map
/// would make the kernel re-validate every jump of the table at commit
/// (`nft_table_validate` walks all elements of every verdict map), which at
/// 30k Services costs more than the rest of the change (see
/// `bench/REPORT.md`).
///
/// The mark is borrowed: a chain a class goes to must start with `jump
/// restore-mark`, which gives the packet back its own mark (zero, or the
/// one the host stashed in the conntrack mark: a packet that arrives
/// marked is dispatched with bit 31 set). Class values are 1 to
/// `CLASS_MAX`. A packet that arrives with both its mark and its
/// conntrack mark set reaches only Services in the verdict maps.
///
/// Services with chains of their own (kube-proxy's shape: affinity, rr,
/// sh, dh) are elements of the *verdict* maps `service-chains` (or
/// `service-chains6`, `service-nodeport-chains`) that go to their chain.
const PROXY: Skeleton = Skeleton {
    table: "switchyard-proxy",
    chains: &["mark-for-masquerade", RESTORE_MARK],
    maps: &[
        SkeletonMap {
            name: "service-ips",
            bind: VIP_PORT,
            key: &[Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Data(&[Mark]),
            declaration: "type ipv4_addr . inet_proto . inet_service : mark",
            filter: false,
        },
        SkeletonMap {
            name: "service-ips6",
            bind: VIP_PORT,
            key: &[Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Data(&[Mark]),
            declaration: "type ipv6_addr . inet_proto . inet_service : mark",
            filter: false,
        },
        SkeletonMap {
            name: "service-nodeports",
            bind: NODE_PORT,
            key: &[Nfproto, InetProto, InetService],
            data: SkeletonData::Data(&[Mark]),
            declaration: "type nf_proto . inet_proto . inet_service : mark",
            filter: false,
        },
        SkeletonMap {
            name: "service-classes",
            bind: &[],
            key: &[Mark],
            data: SkeletonData::Verdict,
            declaration: "type mark : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "service-chains",
            bind: VIP_PORT,
            key: &[Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv4_addr . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "service-chains6",
            bind: VIP_PORT,
            key: &[Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv6_addr . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "service-nodeport-chains",
            bind: NODE_PORT,
            key: &[Nfproto, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type nf_proto . inet_proto . inet_service : verdict",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-tcp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . tcp dport . numgen inc mod 1 : ip daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-tcp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . tcp dport . numgen inc mod 1 : ip daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-udp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . udp dport . numgen inc mod 1 : ip daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-udp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . udp dport . numgen inc mod 1 : ip daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends4-sctp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv4Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof ip daddr . meta l4proto . sctp dport . numgen inc mod 1 : ip daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends4-sctp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv4Addr, InetService]),
            declaration: "typeof meta l4proto . sctp dport . numgen inc mod 1 : ip daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-tcp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . tcp dport . numgen inc mod 1 : ip6 daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-tcp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . tcp dport . numgen inc mod 1 : ip6 daddr . tcp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-udp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . udp dport . numgen inc mod 1 : ip6 daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-udp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . udp dport . numgen inc mod 1 : ip6 daddr . udp dport",
            filter: false,
        },
        SkeletonMap {
            name: "backends6-sctp",
            bind: VIP_PORT_SLOT_TO_ENDPOINT,
            key: &[Ipv6Addr, InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof ip6 daddr . meta l4proto . sctp dport . numgen inc mod 1 : ip6 daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "nodeport-backends6-sctp",
            bind: NODE_PORT_SLOT_TO_ENDPOINT,
            key: &[InetProto, InetService, Mark],
            data: SkeletonData::Data(&[Ipv6Addr, InetService]),
            declaration: "typeof meta l4proto . sctp dport . numgen inc mod 1 : ip6 daddr . sctp dport",
            filter: false,
        },
        SkeletonMap {
            name: "hairpin4",
            bind: ENDPOINT_PAIR,
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr",
            filter: false,
        },
        SkeletonMap {
            name: "hairpin6",
            bind: ENDPOINT_PAIR,
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr",
            filter: false,
        },
        SkeletonMap {
            name: "no-endpoints",
            bind: VIP_PORT,
            key: &[Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv4_addr . inet_proto . inet_service : verdict",
            filter: true,
        },
        SkeletonMap {
            name: "no-endpoints6",
            bind: VIP_PORT,
            key: &[Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Verdict,
            declaration: "type ipv6_addr . inet_proto . inet_service : verdict",
            filter: true,
        },
        SkeletonMap {
            name: "no-endpoint-nodeports",
            bind: NODE_PORT,
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
        "services-marked",
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
    host_chains: proxy_chains,
};

/// The policy table (see `switchyard_sdk::policy` for the contract and
/// [`policy_chains`] for the base chains). Modules add
/// elements to the isolation sets and boxes to the allow sets; the allow
/// sets are interval sets, which cannot hold overlapping elements, so the
/// host merges every box of a pod (from every policy) into disjoint
/// elements before the kernel sees them ([`crate::policy::merge`]). Boxes
/// of one peer address and one port (a pod peer, the common case) go to
/// the host's exact twin of the set instead, a hash set, where each policy
/// holds its own elements: the kernel commits a change to a pipapo set by
/// copying the whole set, to a hash set in constant time. The
/// drop maps and their chains are the host's: they attribute every drop to
/// the policies that isolate the pod.
const POLICY: Skeleton = Skeleton {
    table: "switchyard-policy",
    chains: &[],
    maps: &[
        SkeletonMap {
            name: "ingress-isolated4",
            bind: POD,
            key: &[Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitored4",
            bind: POD,
            key: &[Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-allow4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-allow-all4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitor-allow4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitor-allow-all4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-isolated6",
            bind: POD,
            key: &[Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitored6",
            bind: POD,
            key: &[Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-allow6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-allow-all6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitor-allow6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "ingress-monitor-allow-all6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-isolated4",
            bind: POD,
            key: &[Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitored4",
            bind: POD,
            key: &[Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr",
            filter: true,
        },
        SkeletonMap {
            name: "egress-allow4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-allow-all4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitor-allow4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitor-allow-all4",
            bind: POD,
            key: &[Ipv4Addr, Ipv4Addr],
            data: SkeletonData::Set,
            declaration: "type ipv4_addr . ipv4_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-isolated6",
            bind: POD,
            key: &[Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitored6",
            bind: POD,
            key: &[Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr",
            filter: true,
        },
        SkeletonMap {
            name: "egress-allow6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-allow-all6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitor-allow6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr, InetProto, InetService],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval",
            filter: true,
        },
        SkeletonMap {
            name: "egress-monitor-allow-all6",
            bind: POD,
            key: &[Ipv6Addr, Ipv6Addr],
            data: SkeletonData::Set,
            declaration: "type ipv6_addr . ipv6_addr; flags interval",
            filter: true,
        },
    ],
    reserved: &[
        "forward",
        "input",
        "ingress",
        "egress",
        "ingress-check4",
        "ingress-check6",
        "egress-check4",
        "egress-check6",
        "ingress-monitor4",
        "ingress-monitor6",
        "egress-monitor4",
        "egress-monitor6",
        "ingress-drops4",
        "ingress-drops6",
        "egress-drops4",
        "egress-drops6",
        "ingress-monitor-drops4",
        "ingress-monitor-drops6",
        "egress-monitor-drops4",
        "egress-monitor-drops6",
        "ingress-allow-exact4",
        "ingress-allow-exact6",
        "egress-allow-exact4",
        "egress-allow-exact6",
        "ingress-monitor-allow-exact4",
        "ingress-monitor-allow-exact6",
        "egress-monitor-allow-exact4",
        "egress-monitor-allow-exact6",
        "ingress-allow-all-exact4",
        "ingress-allow-all-exact6",
        "egress-allow-all-exact4",
        "egress-allow-all-exact6",
        "ingress-monitor-allow-all-exact4",
        "ingress-monitor-allow-all-exact6",
        "egress-monitor-allow-all-exact4",
        "egress-monitor-allow-all-exact6",
    ],
    nat: false,
    host_chains: policy_chains,
};

const NONE: Skeleton = Skeleton {
    table: "",
    chains: &[],
    maps: &[],
    reserved: &[],
    nat: false,
    host_chains: String::new,
};

/// The policy table's base chains and drop maps.
///
/// Policy is judged in the filter hooks, after Service DNAT (so on the
/// backend pod) and on new connections only: return traffic of an allowed
/// connection is established. Traffic between pods of one node is bridged,
/// and reaches these hooks through br_netfilter (the agent turns
/// `bridge-nf-call-ip(6)tables` on in its namespace). The node's own
/// traffic to its pods (kubelet probes) is never judged: Kubernetes always
/// allows it.
///
/// Egress is judged where the packet leaves its pod (forward, or input for
/// the node's own addresses), ingress where it reaches its pod: a packet
/// between two nodes is judged once on each. An isolated pod's packet must
/// match an allow box or is dropped through `<dir>-drops`, whose element
/// for the pod jumps to a chain that counts the drop for every policy
/// isolating the pod, logs it and drops it. Monitored pods (selected by a
/// policy in monitor mode) go through the same test with the monitor boxes
/// added, and what fails is counted and logged but not dropped.
fn policy_chains() -> String {
    let mut t = String::new();
    for d in ["ingress", "egress"] {
        for (f, ty) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
            for m in ["", "monitor-"] {
                let _ = writeln!(t, "  map {d}-{m}drops{f} {{ type {ty} : verdict; }}");
                // The host's exact twins of the allow sets (hash sets):
                // see `crate::policy::merge::exact_set`.
                let _ = writeln!(
                    t,
                    "  set {d}-{m}allow-exact{f} {{ type {ty} . {ty} . inet_proto . inet_service; }}"
                );
                let _ = writeln!(t, "  set {d}-{m}allow-all-exact{f} {{ type {ty} . {ty}; }}");
            }
        }
    }
    for (d, pod, peer) in [("ingress", "daddr", "saddr"), ("egress", "saddr", "daddr")] {
        let _ = writeln!(t, "  chain {d} {{");
        for (f, ip) in [("4", "ip"), ("6", "ip6")] {
            let _ = writeln!(t, "    {ip} {pod} @{d}-isolated{f} jump {d}-check{f}");
        }
        for (f, ip) in [("4", "ip"), ("6", "ip6")] {
            let _ = writeln!(t, "    {ip} {pod} @{d}-monitored{f} jump {d}-monitor{f}");
        }
        t.push_str("  }\n");
        for (f, ip) in [("4", "ip"), ("6", "ip6")] {
            let boxes = |m: &str| {
                format!(
                    "    {ip} {pod} . {ip} {peer} @{d}-{m}allow-all-exact{f} return\n    {ip} {pod} . {ip} {peer} . meta l4proto . th dport @{d}-{m}allow-exact{f} return\n    {ip} {pod} . {ip} {peer} @{d}-{m}allow-all{f} return\n    {ip} {pod} . {ip} {peer} . meta l4proto . th dport @{d}-{m}allow{f} return\n"
                )
            };
            let _ = write!(
                t,
                "  chain {d}-check{f} {{\n{}    {ip} {pod} vmap @{d}-drops{f}\n    drop\n  }}\n",
                boxes("")
            );
            let _ = write!(
                t,
                "  chain {d}-monitor{f} {{\n{}{}    {ip} {pod} vmap @{d}-monitor-drops{f}\n  }}\n",
                boxes(""),
                boxes("monitor-")
            );
        }
    }
    // Neighbour discovery is below policy (as ARP is): between pods of
    // one bridge it crosses these hooks, and an isolated pod must still
    // find its allowed peers.
    let nd = "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept\n";
    let _ = write!(
        t,
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n    ct state established,related accept\n{nd}    jump egress\n    jump ingress\n  }}\n"
    );
    let _ = write!(
        t,
        "  chain input {{\n    type filter hook input priority filter; policy accept;\n    ct state established,related accept\n{nd}    jump egress\n  }}\n"
    );
    t
}

/// The proxy's base chains: dispatch in the NAT hooks, the rejection of
/// Services without endpoints in the filter hooks (reject is not allowed in
/// NAT hooks), and masquerade.
///
/// Dispatch borrows the packet mark for a Service's class (see the
/// skeleton's doc): `meta mark set <key> map @service-ips` then `meta mark
/// vmap @service-classes`, which goes to the class's chain, whose first rule
/// jumps to `restore-mark`. A packet that arrives marked has its mark
/// stashed in the conntrack mark first (when that is free) and the class
/// gets the `STASHED_MARK` bit, so `restore-mark` knows to put it back. A
/// lookup that misses leaves the mark untouched, so other traffic keeps its
/// mark; a class without an entry in `service-classes` (which validation
/// rules out) is cleared at once.
fn proxy_chains() -> String {
    let m = MASQUERADE_MARK;
    let s = STASHED_MARK;
    let c = CLASS_MAX;
    format!(
        r#"  chain mark-for-masquerade {{
    meta mark set meta mark | 0x{m:x}
  }}
  chain restore-mark {{
    meta mark & 0x{s:x} == 0 meta mark set 0 return
    meta mark set ct mark ct mark set 0
  }}
  chain services {{
    meta mark != 0 goto services-marked
    meta mark set ip daddr . meta l4proto . th dport map @service-ips
    meta mark set ip6 daddr . meta l4proto . th dport map @service-ips6
    meta mark vmap @service-classes
    meta mark != 0 meta mark set 0
    ip daddr . meta l4proto . th dport vmap @service-chains
    ip6 daddr . meta l4proto . th dport vmap @service-chains6
    fib daddr type local goto nodeports
  }}
  chain nodeports {{
    meta mark set meta nfproto . meta l4proto . th dport map @service-nodeports
    meta mark vmap @service-classes
    meta mark != 0 meta mark set 0
    meta nfproto . meta l4proto . th dport vmap @service-nodeport-chains
  }}
  chain services-marked {{
    ip daddr . meta l4proto . th dport vmap @service-chains
    ip6 daddr . meta l4proto . th dport vmap @service-chains6
    fib daddr type local meta nfproto . meta l4proto . th dport vmap @service-nodeport-chains
    ct mark != 0 return
    ct mark set meta mark meta mark set 0
    meta mark set ip daddr . meta l4proto . th dport map @service-ips
    meta mark set ip6 daddr . meta l4proto . th dport map @service-ips6
    meta mark 0 fib daddr type local meta mark set meta nfproto . meta l4proto . th dport map @service-nodeports
    meta mark != 0 meta mark set meta mark | 0x{s:x}
    meta mark & 0x{c:x} vmap @service-classes
    meta mark set ct mark ct mark set 0
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    jump services
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    meta mark & 0x{m:x} == 0x{m:x} meta mark set meta mark & 0x{:x} masquerade fully-random
    ct status dnat ip saddr . ip daddr @hairpin4 masquerade
    ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade
  }}
  chain reject-services {{
    ip daddr . meta l4proto . th dport vmap @no-endpoints
    ip6 daddr . meta l4proto . th dport vmap @no-endpoints6
    fib daddr type local meta nfproto . meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain reject-traffic {{
    reject
  }}
  chain filter-input {{
    type filter hook input priority -10; policy accept;
    ct state new jump reject-services
  }}
  chain filter-forward {{
    type filter hook forward priority -10; policy accept;
    ct state new jump reject-services
  }}
  chain filter-output {{
    type filter hook output priority -10; policy accept;
    ct state new jump reject-services
  }}
"#,
        !m
    )
}

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

    /// The key and data types of an element of `name`, for the sets and
    /// maps whose elements are single values (not interval sets): the
    /// skeleton's, and the host's own in the policy table (drop maps and
    /// the allow sets' exact twins, declared in [`policy_chains`]).
    pub fn element_types(&self, name: &str) -> Option<(&'static [NftType], SkeletonData)> {
        if let Some(m) = self.map(name) {
            return (!m.interval()).then_some((m.key, m.data));
        }
        if self.table != POLICY.table {
            return None;
        }
        let (base, family) = name.split_at(name.len().checked_sub(1)?);
        let v6 = match family {
            "4" => false,
            "6" => true,
            _ => return None,
        };
        let (dir, rest) = base.split_once('-')?;
        if dir != "ingress" && dir != "egress" {
            return None;
        }
        let rest = rest.strip_prefix("monitor-").unwrap_or(rest);
        Some(match (rest, v6) {
            ("drops", false) => (&[Ipv4Addr], SkeletonData::Verdict),
            ("drops", true) => (&[Ipv6Addr], SkeletonData::Verdict),
            ("allow-all-exact", false) => (&[Ipv4Addr, Ipv4Addr], SkeletonData::Set),
            ("allow-all-exact", true) => (&[Ipv6Addr, Ipv6Addr], SkeletonData::Set),
            ("allow-exact", false) => (
                &[Ipv4Addr, Ipv4Addr, InetProto, InetService],
                SkeletonData::Set,
            ),
            ("allow-exact", true) => (
                &[Ipv6Addr, Ipv6Addr, InetProto, InetService],
                SkeletonData::Set,
            ),
            _ => return None,
        })
    }

    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved.contains(&name) || self.chains.contains(&name) || self.map(name).is_some()
    }
}
