//! Nodes as node networking sees them: their underlay addresses
//! (InternalIPs) and pod CIDRs.

use super::snapshot::Manifests;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use std::net::IpAddr;

/// What node networking needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Underlay addresses (InternalIP), at most one per family.
    pub addresses: Vec<IpAddr>,
    /// Pod CIDRs, at most one per family.
    pub pod_cidrs: Vec<IpNet>,
}

impl NodeInfo {
    /// Its underlay address of a family.
    pub fn address(&self, v4: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv4() == v4)
    }

    /// The VTEP MAC of this node: locally administered, from its name.
    pub fn vtep_mac(&self) -> [u8; 6] {
        let h = self.name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let b = h.to_be_bytes();
        [0x0a, 0x58, b[0], b[1], b[2], b[3]]
    }

    /// The VTEP address of a pod CIDR: its network address.
    pub fn vtep_ip(cidr: &IpNet) -> IpAddr {
        cidr.network()
    }
}

/// Node networking's view of the Node objects.
pub fn node_infos(m: &Manifests) -> Vec<NodeInfo> {
    m.nodes
        .iter()
        .map(|n| NodeInfo {
            name: n.metadata.name.clone().unwrap_or_default(),
            addresses: internal_ips(Some(n)),
            pod_cidrs: n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidrs.clone())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
        })
        .collect()
}

/// A Node's InternalIP addresses.
pub fn internal_ips(n: Option<&Node>) -> Vec<IpAddr> {
    n.and_then(|n| n.status.as_ref())
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}
