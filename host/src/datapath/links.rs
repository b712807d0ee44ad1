//! Links, addresses, routes and sysctls in the node's and pods' namespaces.

use ipnet::IpNet;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Which network namespace an operation acts in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Netns {
    /// The namespace the agent runs in (the node's).
    Node,
    /// A pod's namespace, by its path (`/var/run/netns/...`, `/proc/PID/ns/net`).
    Pod(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkState {
    pub name: String,
    pub index: u32,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub kind: String,
    pub master: Option<String>,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteEntry {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Kernel(String),
}

/// Link operations. Implementations act on the kernel (netlink) or record.
pub trait Links: Send + Sync {
    /// Create the bridge in the node namespace if missing, add the gateway addresses, set it up.
    fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateways: &[IpNet],
    ) -> Result<LinkState, LinkError>;
    /// Create a veth pair: `host_name` on `bridge` in the node namespace and
    /// `pod_ifname` in the pod namespace at `pod_netns`; both up.
    fn create_veth(
        &self,
        pod_netns: &Path,
        pod_ifname: &str,
        host_name: &str,
        bridge: &str,
        mtu: u32,
    ) -> Result<(LinkState, LinkState), LinkError>;
    fn add_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError>;
    fn del_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError>;
    fn add_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError>;
    fn del_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError>;
    fn set_sysctl(&self, ns: &Netns, key: &str, value: &str) -> Result<(), LinkError>;
    fn get_link(&self, ns: &Netns, name: &str) -> Result<Option<LinkState>, LinkError>;
    /// Every link in a namespace.
    fn list_links(&self, ns: &Netns) -> Result<Vec<LinkState>, LinkError>;
    fn set_link_up(&self, ns: &Netns, name: &str) -> Result<(), LinkError>;
    fn list_routes(&self, ns: &Netns, device: &str) -> Result<Vec<RouteEntry>, LinkError>;
    /// The default routes (`0.0.0.0/0`, `::/0`) of a namespace, whatever
    /// device holds them.
    fn default_routes(&self, ns: &Netns) -> Result<Vec<RouteEntry>, LinkError>;
    /// Delete a link; `Ok(false)` if it did not exist.
    fn delete_link(&self, ns: &Netns, name: &str) -> Result<bool, LinkError>;
}

/// An in-memory model of the kernel's link table that records every call, for
/// tests of everything above the datapath.
#[derive(Debug, Default)]
pub struct RecordingLinks {
    state: Mutex<RecState>,
}

#[derive(Debug, Default)]
struct RecState {
    links: BTreeMap<(Netns, String), LinkState>,
    routes: BTreeMap<Netns, Vec<RouteEntry>>,
    sysctls: BTreeMap<(Netns, String), String>,
    peers: BTreeMap<(Netns, String), (Netns, String)>,
    calls: Vec<String>,
    next_index: u32,
}

impl RecordingLinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().calls.clone()
    }

    /// Links in a namespace.
    pub fn links(&self, ns: &Netns) -> Vec<LinkState> {
        let s = self.state.lock();
        s.links
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Every namespace with at least one link, route or sysctl.
    pub fn is_empty(&self) -> bool {
        let s = self.state.lock();
        s.links.is_empty() && s.routes.values().all(Vec::is_empty)
    }
}

impl RecState {
    fn new_link(&mut self, name: &str, kind: &str, mtu: u32) -> LinkState {
        self.next_index += 1;
        let i = self.next_index;
        LinkState {
            name: name.to_string(),
            index: i,
            mac: format!("02:00:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff),
            mtu,
            up: true,
            kind: kind.to_string(),
            master: None,
            addresses: vec![],
        }
    }
}

impl Links for RecordingLinks {
    fn ensure_bridge(
        &self,
        name: &str,
        mtu: u32,
        gateways: &[IpNet],
    ) -> Result<LinkState, LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!("ensure-bridge {name} mtu {mtu}"));
        let key = (Netns::Node, name.to_string());
        if let Some(l) = s.links.get(&key)
            && l.kind != "bridge"
        {
            return Err(LinkError::Exists(format!(
                "{name} exists and is a {}",
                l.kind
            )));
        }
        if !s.links.contains_key(&key) {
            let l = s.new_link(name, "bridge", mtu);
            s.links.insert(key.clone(), l);
        }
        let l = s.links.get_mut(&key).expect("ensured above");
        for g in gateways {
            if !l.addresses.contains(g) {
                l.addresses.push(*g);
            }
        }
        Ok(l.clone())
    }

    fn create_veth(
        &self,
        pod_netns: &Path,
        pod_ifname: &str,
        host_name: &str,
        bridge: &str,
        mtu: u32,
    ) -> Result<(LinkState, LinkState), LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!(
            "create-veth {host_name} {} {pod_ifname} on {bridge}",
            pod_netns.display()
        ));
        let pod_ns = Netns::Pod(pod_netns.to_path_buf());
        if !s.links.contains_key(&(Netns::Node, bridge.to_string())) {
            return Err(LinkError::NotFound(format!(
                "bridge {bridge} does not exist"
            )));
        }
        if s.links.contains_key(&(Netns::Node, host_name.to_string())) {
            return Err(LinkError::Exists(format!(
                "{host_name} exists in the node namespace"
            )));
        }
        if s.links
            .contains_key(&(pod_ns.clone(), pod_ifname.to_string()))
        {
            return Err(LinkError::Exists(format!(
                "{pod_ifname} exists in the pod namespace"
            )));
        }
        let mut host = s.new_link(host_name, "veth", mtu);
        host.master = Some(bridge.to_string());
        let pod = s.new_link(pod_ifname, "veth", mtu);
        s.links
            .insert((Netns::Node, host_name.to_string()), host.clone());
        s.links
            .insert((pod_ns.clone(), pod_ifname.to_string()), pod.clone());
        s.peers.insert(
            (Netns::Node, host_name.to_string()),
            (pod_ns.clone(), pod_ifname.to_string()),
        );
        s.peers.insert(
            (pod_ns, pod_ifname.to_string()),
            (Netns::Node, host_name.to_string()),
        );
        Ok((host, pod))
    }

    fn add_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls
            .push(format!("add-address {ns:?} {device} {address}"));
        let l = s
            .links
            .get_mut(&(ns.clone(), device.to_string()))
            .ok_or_else(|| LinkError::NotFound(format!("no link {device}")))?;
        if l.addresses.contains(&address) {
            return Err(LinkError::Exists(format!("{device} already has {address}")));
        }
        l.addresses.push(address);
        Ok(())
    }

    fn del_address(&self, ns: &Netns, device: &str, address: IpNet) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls
            .push(format!("del-address {ns:?} {device} {address}"));
        if let Some(l) = s.links.get_mut(&(ns.clone(), device.to_string())) {
            l.addresses.retain(|a| *a != address);
        }
        Ok(())
    }

    fn add_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!(
            "add-route {ns:?} {} dev {}",
            route.destination, route.device
        ));
        if !s.links.contains_key(&(ns.clone(), route.device.clone())) {
            return Err(LinkError::NotFound(format!("no link {}", route.device)));
        }
        let routes = s.routes.entry(ns.clone()).or_default();
        if routes.iter().any(|r| r.destination == route.destination) {
            return Err(LinkError::Exists(format!(
                "a route to {} exists",
                route.destination
            )));
        }
        routes.push(route.clone());
        Ok(())
    }

    fn del_route(&self, ns: &Netns, route: &RouteEntry) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls
            .push(format!("del-route {ns:?} {}", route.destination));
        if let Some(r) = s.routes.get_mut(ns) {
            r.retain(|r| r.destination != route.destination);
        }
        Ok(())
    }

    fn set_sysctl(&self, ns: &Netns, key: &str, value: &str) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!("set-sysctl {ns:?} {key}={value}"));
        s.sysctls
            .insert((ns.clone(), key.to_string()), value.to_string());
        Ok(())
    }

    fn get_link(&self, ns: &Netns, name: &str) -> Result<Option<LinkState>, LinkError> {
        Ok(self
            .state
            .lock()
            .links
            .get(&(ns.clone(), name.to_string()))
            .cloned())
    }

    fn list_links(&self, ns: &Netns) -> Result<Vec<LinkState>, LinkError> {
        Ok(self.links(ns))
    }

    fn set_link_up(&self, ns: &Netns, name: &str) -> Result<(), LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!("set-link-up {ns:?} {name}"));
        match s.links.get_mut(&(ns.clone(), name.to_string())) {
            Some(l) => {
                l.up = true;
                Ok(())
            }
            None => Err(LinkError::NotFound(format!("no link {name}"))),
        }
    }

    fn list_routes(&self, ns: &Netns, device: &str) -> Result<Vec<RouteEntry>, LinkError> {
        let s = self.state.lock();
        Ok(s.routes
            .get(ns)
            .map(|r| r.iter().filter(|r| r.device == device).cloned().collect())
            .unwrap_or_default())
    }

    fn default_routes(&self, ns: &Netns) -> Result<Vec<RouteEntry>, LinkError> {
        let s = self.state.lock();
        Ok(s.routes
            .get(ns)
            .map(|r| {
                r.iter()
                    .filter(|r| r.destination.prefix_len() == 0)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn delete_link(&self, ns: &Netns, name: &str) -> Result<bool, LinkError> {
        let mut s = self.state.lock();
        s.calls.push(format!("delete-link {ns:?} {name}"));
        let key = (ns.clone(), name.to_string());
        let existed = s.links.remove(&key).is_some();
        if let Some(r) = s.routes.get_mut(ns) {
            r.retain(|r| r.device != name);
        }
        if let Some(peer) = s.peers.remove(&key) {
            s.peers.remove(&peer);
            s.links.remove(&peer);
            if let Some(r) = s.routes.get_mut(&peer.0) {
                r.retain(|r| r.device != peer.1);
            }
        }
        Ok(existed)
    }
}
