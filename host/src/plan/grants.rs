//! Grants: what a module's plan and host calls may touch. They follow from the
//! module's role; a NetworkModule can narrow the interface patterns.

use crate::model::Role;
use serde::{Deserialize, Serialize};

/// What one module may do beyond computing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// nftables objects in the role's own table.
    pub nft: bool,
    /// IPVS virtual services.
    pub ipvs: bool,
    /// Routes.
    pub routes: bool,
    /// Addresses on node interfaces (for example IPVS VIPs on a dummy device).
    pub interface_addresses: bool,
    /// Interfaces of the node namespace the module may create, change or
    /// delete: exact names, or prefixes ending in `*`.
    pub node_interfaces: Vec<String>,
    /// Whether the module may set node-wide forwarding sysctls.
    pub node_forwarding: bool,
}

impl Grants {
    /// The grants a role has by default.
    pub fn for_role(role: Role) -> Grants {
        let none = Grants {
            nft: false,
            ipvs: false,
            routes: false,
            interface_addresses: false,
            node_interfaces: vec![],
            node_forwarding: false,
        };
        match role {
            Role::ServiceProxy => Grants {
                nft: true,
                ipvs: true,
                interface_addresses: true,
                node_interfaces: vec!["sy-ipvs0".into()],
                ..none
            },
            Role::NetworkPolicy => Grants { nft: true, ..none },
            Role::Scheduler => none,
            Role::Cni => Grants {
                node_interfaces: vec!["sy*".into()],
                node_forwarding: true,
                ..none
            },
        }
    }

    /// Whether a node interface name is granted.
    pub fn allows_node_interface(&self, name: &str) -> bool {
        self.node_interfaces
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == p,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exactly_or_by_prefix() {
        let g = Grants::for_role(Role::Cni);
        assert!(g.allows_node_interface("sy0"));
        assert!(g.allows_node_interface("syv1234"));
        assert!(!g.allows_node_interface("eth0"));
        let p = Grants::for_role(Role::ServiceProxy);
        assert!(p.allows_node_interface("sy-ipvs0"));
        assert!(!p.allows_node_interface("sy-ipvs01"));
        assert!(Grants::for_role(Role::Scheduler).node_interfaces.is_empty());
    }
}
