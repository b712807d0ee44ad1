//! The host-owned part of each role's nftables table: base chains, hooks and
//! the dispatch maps modules add elements to. Modules render per object; they
//! cannot define base chains or redefine these names.

use crate::model::Role;
use crate::runtime::bindings::imports::switchyard::plugin::types::{NftMapData, NftType};

/// A map or set the host declares in a role's table.
#[derive(Debug)]
pub struct SkeletonMap {
    pub name: &'static str,
    pub key: &'static [NftType],
    /// `None` for a set; `Some(true)` for a verdict map.
    pub verdict_map: Option<bool>,
}

impl SkeletonMap {
    pub fn data(&self) -> Option<NftMapData> {
        match self.verdict_map {
            Some(true) => Some(NftMapData::Verdict),
            Some(false) | None => None,
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
}

const PROXY: Skeleton = Skeleton {
    table: "switchyard-proxy",
    chains: &["mark-for-masquerade"],
    maps: &[
        SkeletonMap {
            name: "service-ips",
            key: &[NftType::Ipv4Addr, NftType::InetProto, NftType::InetService],
            verdict_map: Some(true),
        },
        SkeletonMap {
            name: "service-ips6",
            key: &[NftType::Ipv6Addr, NftType::InetProto, NftType::InetService],
            verdict_map: Some(true),
        },
        SkeletonMap {
            name: "service-nodeports",
            key: &[NftType::InetProto, NftType::InetService],
            verdict_map: Some(true),
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
    ],
};

const POLICY: Skeleton = Skeleton {
    table: "switchyard-policy",
    chains: &[],
    maps: &[],
    reserved: &["forward", "output", "input", "ingress", "egress"],
};

const NONE: Skeleton = Skeleton {
    table: "",
    chains: &[],
    maps: &[],
    reserved: &[],
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
