//! A native test harness: unit-test module logic with plain `cargo test`.
//!
//! A module's exports are ordinary Rust functions on the type that implements
//! the world's `Guest` trait, so a test can call them directly. What the host
//! would provide (logs, probe results, IPAM, links) comes from a [`Harness`]
//! installed on the test's thread while it is alive. It keeps simple, honest
//! models (a pool allocator, a link table per namespace) and a journal of every
//! host call, so tests can assert on effects as well as on results.
//!
//! ```
//! use switchyard_sdk::testing::{self, Harness};
//! use switchyard_sdk::host::probes::{self, ProbeResult};
//!
//! let h = Harness::new();
//! let ip = "10.244.1.7".parse().unwrap();
//! h.set_health(ip, 8080, testing::healthy(250));
//! assert_eq!(probes::health(ip, 8080).unwrap().last_result, ProbeResult::Success);
//! switchyard_sdk::info!("rendered {} rules", 3);
//! assert_eq!(h.logs(), vec!["info: rendered 3 rules".to_string()]);
//! ```

use crate::host::ipam::{Allocation, IpamError, Pool};
use crate::host::links::{LinkError, LinkInfo, RouteSpec, Scope};
use crate::host::log::Level;
use crate::host::probes::{EndpointHealth, ProbeResult};
use crate::types::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<FakeHost>>>> = const { RefCell::new(None) };
}

/// Run `f` against the harness installed on this thread.
pub(crate) fn with_host<R>(f: impl FnOnce(&mut FakeHost) -> R) -> R {
    let host = CURRENT.with(|c| c.borrow().clone()).expect(
        "a host function was called outside a module and without a switchyard_sdk::testing::Harness \
         on this thread: create one with `Harness::new()` at the start of the test",
    );
    let mut h = host.borrow_mut();
    f(&mut h)
}

/// The host a module sees in native tests. Dropping it uninstalls it.
pub struct Harness {
    host: Rc<RefCell<FakeHost>>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Install a fresh harness on this thread (replacing any other), with the
    /// attachment `("test-container", "eth0")` and no pools.
    pub fn new() -> Self {
        let host = Rc::new(RefCell::new(FakeHost::default()));
        CURRENT.with(|c| *c.borrow_mut() = Some(host.clone()));
        Harness { host }
    }

    /// Probe results the `probes` import returns.
    pub fn set_health(&self, address: IpAddress, port: u16, health: EndpointHealth) {
        self.host
            .borrow_mut()
            .health
            .insert((address, port), health);
    }

    /// Add an IPAM pool; the first address after the network is the gateway.
    pub fn add_pool(&self, name: &str, subnet: &str) {
        let subnet: IpCidr = subnet.parse().expect("pool subnet");
        self.host.borrow_mut().pools.push(FakePool {
            name: name.to_string(),
            subnet: subnet.network(),
            held: BTreeMap::new(),
        });
    }

    /// The attachment (container id, interface) that `ipam` and pod-scope `links` act for.
    pub fn set_attachment(&self, container_id: &str, ifname: &str) {
        self.host.borrow_mut().attachment = (container_id.to_string(), ifname.to_string());
    }

    /// Log records so far, as `level: message`.
    pub fn logs(&self) -> Vec<String> {
        self.host.borrow().logs.clone()
    }

    /// Every host call so far, in order (`links.create-veth veth1 br0`, ...).
    pub fn journal(&self) -> Vec<String> {
        self.host.borrow().journal.clone()
    }

    /// The links that exist in a namespace.
    pub fn links(&self, scope: Scope) -> Vec<LinkInfo> {
        self.host
            .borrow()
            .ns(scope)
            .links
            .values()
            .cloned()
            .collect()
    }

    /// The routes that exist in a namespace.
    pub fn routes(&self, scope: Scope) -> Vec<RouteSpec> {
        self.host.borrow().ns(scope).routes.clone()
    }

    /// Sysctls set in a namespace.
    pub fn sysctls(&self, scope: Scope) -> BTreeMap<String, String> {
        self.host.borrow().ns(scope).sysctls.clone()
    }

    /// Addresses held per attachment, across pools.
    pub fn held_addresses(&self) -> Vec<(String, String, IpAddress)> {
        let h = self.host.borrow();
        h.pools
            .iter()
            .flat_map(|p| p.held.iter().map(|(a, (c, i))| (c.clone(), i.clone(), *a)))
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            let mut cur = c.borrow_mut();
            if cur.as_ref().is_some_and(|h| Rc::ptr_eq(h, &self.host)) {
                *cur = None;
            }
        });
    }
}

struct FakePool {
    name: String,
    subnet: IpCidr,
    held: BTreeMap<IpAddress, (String, String)>,
}

impl FakePool {
    fn gateway(&self) -> IpAddress {
        self.subnet.nth(1).expect("pool too small for a gateway")
    }

    fn info(&self) -> Pool {
        // Network, gateway and (IPv4) broadcast are never handed out.
        let reserved = if self.subnet.family() == IpFamily::Ipv4 {
            3
        } else {
            2
        };
        Pool {
            name: self.name.clone(),
            family: self.subnet.family(),
            subnet: self.subnet,
            gateway: self.gateway(),
            free: (self.subnet.size().saturating_sub(reserved) as u64)
                .saturating_sub(self.held.len() as u64),
        }
    }

    fn allocation(&self, a: IpAddress) -> Allocation {
        Allocation {
            pool: self.name.clone(),
            address: a.with_prefix(self.subnet.prefix_len),
            gateway: self.gateway(),
        }
    }
}

#[derive(Default)]
struct FakeNs {
    links: BTreeMap<String, LinkInfo>,
    routes: Vec<RouteSpec>,
    sysctls: BTreeMap<String, String>,
}

pub(crate) struct FakeHost {
    logs: Vec<String>,
    journal: Vec<String>,
    health: HashMap<(IpAddress, u16), EndpointHealth>,
    pools: Vec<FakePool>,
    attachment: (String, String),
    node: FakeNs,
    /// Pod namespaces by container id: each attachment has its own.
    pods: BTreeMap<String, FakeNs>,
    /// veth pairs: (scope, container for pod ends, name) both ways.
    peers: BTreeMap<(Scope, String, String), (Scope, String, String)>,
    next_index: u32,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            logs: vec![],
            journal: vec![],
            health: HashMap::new(),
            pools: vec![],
            attachment: ("test-container".into(), "eth0".into()),
            node: FakeNs::default(),
            pods: BTreeMap::new(),
            peers: BTreeMap::new(),
            next_index: 2,
        }
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl FakeHost {
    fn ns(&self, scope: Scope) -> &FakeNs {
        static EMPTY: std::sync::OnceLock<FakeNs> = std::sync::OnceLock::new();
        match scope {
            Scope::Node => &self.node,
            Scope::Pod => self
                .pods
                .get(&self.attachment.0)
                .unwrap_or_else(|| EMPTY.get_or_init(FakeNs::default)),
        }
    }

    fn ns_mut(&mut self, scope: Scope) -> &mut FakeNs {
        match scope {
            Scope::Node => &mut self.node,
            Scope::Pod => self.pods.entry(self.attachment.0.clone()).or_default(),
        }
    }

    /// The key of a link for the peer table: pod ends carry their container.
    fn peer_key(&self, scope: Scope, name: &str) -> (Scope, String, String) {
        let owner = if scope == Scope::Pod {
            self.attachment.0.clone()
        } else {
            String::new()
        };
        (scope, owner, name.to_string())
    }

    fn note(&mut self, s: String) {
        self.journal.push(s);
    }

    /// The host lets a module touch only the attachment's interface (and lo)
    /// inside the pod; the harness holds modules to the same rule.
    fn check_pod_device(&self, scope: Scope, device: &str) {
        if scope == Scope::Pod && device != self.attachment.1 && device != "lo" {
            panic!(
                "module touched interface {device:?} in the pod namespace, but only the request's \
                 interface {:?} (and lo) may be touched; the host fails such a call",
                self.attachment.1
            );
        }
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.logs.push(format!("{}: {message}", level_name(level)));
    }

    pub(crate) fn health(&mut self, address: IpAddress, port: u16) -> Option<EndpointHealth> {
        self.note(format!("probes.health {address} {port}"));
        self.health.get(&(address, port)).cloned()
    }

    pub(crate) fn pools(&mut self) -> Vec<Pool> {
        self.note("ipam.pools".into());
        self.pools.iter().map(FakePool::info).collect()
    }

    pub(crate) fn allocate(
        &mut self,
        pool: &str,
        preferred: Option<IpAddress>,
    ) -> Result<Allocation, IpamError> {
        self.note(format!("ipam.allocate {pool}"));
        let key = self.attachment.clone();
        let p = self
            .pools
            .iter_mut()
            .find(|p| p.name == pool)
            .unwrap_or_else(|| {
                panic!("ipam.allocate: unknown pool {pool:?}; the host fails such a call")
            });
        if let Some((a, _)) = p.held.iter().find(|(_, k)| **k == key) {
            return Ok(p.allocation(*a));
        }
        let candidate = match preferred {
            Some(a) => {
                if !p.subnet.contains(&a) {
                    panic!("ipam.allocate: {a} is outside pool {pool} ({})", p.subnet);
                }
                if p.held.contains_key(&a) {
                    return Err(IpamError::InUse(format!(
                        "{a} is held by another attachment"
                    )));
                }
                a
            }
            None => {
                let gw = p.gateway();
                let last = if p.subnet.family() == IpFamily::Ipv4 {
                    p.subnet.size().saturating_sub(1)
                } else {
                    p.subnet.size()
                };
                (2..last.min(1 << 20))
                    .filter_map(|n| p.subnet.nth(n))
                    .find(|a| *a != gw && !p.held.contains_key(a))
                    .ok_or_else(|| {
                        IpamError::Exhausted(format!("pool {pool} has no free address"))
                    })?
            }
        };
        p.held.insert(candidate, key);
        Ok(p.allocation(candidate))
    }

    pub(crate) fn release(&mut self) -> Result<u32, IpamError> {
        self.note("ipam.release".into());
        let key = self.attachment.clone();
        let mut n = 0;
        for p in &mut self.pools {
            let before = p.held.len();
            p.held.retain(|_, k| *k != key);
            n += (before - p.held.len()) as u32;
        }
        Ok(n)
    }

    pub(crate) fn held(&mut self) -> Vec<Allocation> {
        let key = self.attachment.clone();
        self.pools
            .iter()
            .flat_map(|p| {
                p.held
                    .iter()
                    .filter(|(_, k)| **k == key)
                    .map(|(a, _)| p.allocation(*a))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn new_link(&mut self, name: &str, kind: &str, mtu: u32) -> LinkInfo {
        let index = self.next_index;
        self.next_index += 1;
        LinkInfo {
            name: name.to_string(),
            index,
            mac: format!("02:00:00:00:{:02x}:{:02x}", index >> 8, index & 0xff),
            mtu,
            up: true,
            kind: kind.to_string(),
            master: None,
            addresses: vec![],
        }
    }

    pub(crate) fn ensure_bridge(
        &mut self,
        name: &str,
        mtu: u32,
        gateways: &[IpCidr],
    ) -> Result<LinkInfo, LinkError> {
        self.note(format!("links.ensure-bridge {name}"));
        if let Some(l) = self.node.links.get(name) {
            if l.kind != "bridge" {
                return Err(LinkError::Exists(format!(
                    "{name} exists and is a {}",
                    l.kind
                )));
            }
        } else {
            let l = self.new_link(name, "bridge", mtu);
            self.node.links.insert(name.to_string(), l);
        }
        let l = self.node.links.get_mut(name).expect("just ensured");
        for g in gateways {
            if !l.addresses.contains(g) {
                l.addresses.push(*g);
            }
        }
        Ok(l.clone())
    }

    pub(crate) fn create_veth(
        &mut self,
        host_name: &str,
        bridge: &str,
        mtu: u32,
    ) -> Result<(LinkInfo, LinkInfo), LinkError> {
        self.note(format!("links.create-veth {host_name} {bridge}"));
        let ifname = self.attachment.1.clone();
        if !self.node.links.contains_key(bridge) {
            return Err(LinkError::NotFound(format!(
                "bridge {bridge} does not exist"
            )));
        }
        if self.node.links.contains_key(host_name) {
            return Err(LinkError::Exists(format!(
                "{host_name} exists in the node namespace"
            )));
        }
        if self.ns(Scope::Pod).links.contains_key(&ifname) {
            return Err(LinkError::Exists(format!(
                "{ifname} exists in the pod namespace"
            )));
        }
        let mut host = self.new_link(host_name, "veth", mtu);
        host.master = Some(bridge.to_string());
        let pod = self.new_link(&ifname, "veth", mtu);
        self.node.links.insert(host_name.to_string(), host.clone());
        self.ns_mut(Scope::Pod)
            .links
            .insert(ifname.clone(), pod.clone());
        let (h, p) = (
            self.peer_key(Scope::Node, host_name),
            self.peer_key(Scope::Pod, &ifname),
        );
        self.peers.insert(h.clone(), p.clone());
        self.peers.insert(p, h);
        Ok((host, pod))
    }

    pub(crate) fn add_address(
        &mut self,
        scope: Scope,
        device: &str,
        address: IpCidr,
    ) -> Result<(), LinkError> {
        self.check_pod_device(scope, device);
        self.note(format!("links.add-address {scope:?} {device} {address}"));
        let l = self
            .ns_mut(scope)
            .links
            .get_mut(device)
            .ok_or_else(|| LinkError::NotFound(format!("no link {device}")))?;
        if l.addresses.contains(&address) {
            return Err(LinkError::Exists(format!("{device} already has {address}")));
        }
        l.addresses.push(address);
        Ok(())
    }

    pub(crate) fn add_route(&mut self, scope: Scope, route: &RouteSpec) -> Result<(), LinkError> {
        self.check_pod_device(scope, &route.device);
        self.note(format!(
            "links.add-route {scope:?} {} dev {}",
            route.destination, route.device
        ));
        let ns = self.ns_mut(scope);
        if !ns.links.contains_key(&route.device) {
            return Err(LinkError::NotFound(format!("no link {}", route.device)));
        }
        if ns.routes.iter().any(|r| r.destination == route.destination) {
            return Err(LinkError::Exists(format!(
                "a route to {} exists",
                route.destination
            )));
        }
        ns.routes.push(route.clone());
        Ok(())
    }

    pub(crate) fn set_sysctl(
        &mut self,
        scope: Scope,
        key: &str,
        value: &str,
    ) -> Result<(), LinkError> {
        self.note(format!("links.set-sysctl {scope:?} {key}={value}"));
        self.ns_mut(scope)
            .sysctls
            .insert(key.to_string(), value.to_string());
        Ok(())
    }

    pub(crate) fn get_link(
        &mut self,
        scope: Scope,
        name: &str,
    ) -> Result<Option<LinkInfo>, LinkError> {
        self.check_pod_device(scope, name);
        Ok(self.ns(scope).links.get(name).cloned())
    }

    pub(crate) fn list_links(&mut self, scope: Scope) -> Result<Vec<LinkInfo>, LinkError> {
        let ifname = self.attachment.1.clone();
        Ok(self
            .ns(scope)
            .links
            .values()
            .filter(|l| scope == Scope::Node || l.name == ifname || l.name == "lo")
            .cloned()
            .collect())
    }

    pub(crate) fn set_link_up(&mut self, scope: Scope, name: &str) -> Result<(), LinkError> {
        self.check_pod_device(scope, name);
        self.note(format!("links.set-link-up {scope:?} {name}"));
        match self.ns_mut(scope).links.get_mut(name) {
            Some(l) => {
                l.up = true;
                Ok(())
            }
            // lo always exists in a namespace.
            None if name == "lo" => Ok(()),
            None => Err(LinkError::NotFound(format!("no link {name}"))),
        }
    }

    pub(crate) fn list_routes(
        &mut self,
        scope: Scope,
        device: &str,
    ) -> Result<Vec<RouteSpec>, LinkError> {
        self.check_pod_device(scope, device);
        Ok(self
            .ns(scope)
            .routes
            .iter()
            .filter(|r| r.device == device)
            .cloned()
            .collect())
    }

    pub(crate) fn pod_default_routes(&mut self) -> Result<Vec<RouteSpec>, LinkError> {
        Ok(self
            .ns(Scope::Pod)
            .routes
            .iter()
            .filter(|r| r.destination.prefix_len == 0)
            .cloned()
            .collect())
    }

    pub(crate) fn delete_link(&mut self, scope: Scope, name: &str) -> Result<bool, LinkError> {
        self.check_pod_device(scope, name);
        self.note(format!("links.delete-link {scope:?} {name}"));
        let ns = self.ns_mut(scope);
        let existed = ns.links.remove(name).is_some();
        ns.routes.retain(|r| r.device != name);
        // Deleting one end of a veth pair deletes the other, as in the kernel.
        let key = self.peer_key(scope, name);
        if let Some(peer) = self.peers.remove(&key) {
            self.peers.remove(&peer);
            let (peer_scope, owner, peer_name) = peer;
            let ns = match peer_scope {
                Scope::Node => &mut self.node,
                Scope::Pod => self.pods.entry(owner).or_default(),
            };
            ns.links.remove(&peer_name);
            ns.routes.retain(|r| r.device != peer_name);
        }
        Ok(existed)
    }
}

// ------------------------------------------------------------------ builders

/// A probe result: ready, last probe succeeded in `latency_us`.
pub fn healthy(latency_us: u32) -> EndpointHealth {
    EndpointHealth {
        ready: true,
        last_result: ProbeResult::Success,
        last_latency_us: Some(latency_us),
        consecutive_failures: 0,
        consecutive_successes: 1,
    }
}

/// A probe result: not ready after `failures` failed probes.
pub fn unhealthy(failures: u32) -> EndpointHealth {
    EndpointHealth {
        ready: false,
        last_result: ProbeResult::Failure,
        last_latency_us: None,
        consecutive_failures: failures,
        consecutive_successes: 0,
    }
}

/// A node context for node `node` in an IPv4 cluster with the usual kind CIDRs.
pub fn node_context(node: &str) -> NodeContext {
    NodeContext {
        node: node.to_string(),
        zone: None,
        node_ips: vec!["192.168.0.2".parse().expect("literal")],
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("literal")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("literal")],
        families: vec![IpFamily::Ipv4],
        masquerade: false,
        default_scheduler: "random".to_string(),
    }
}

/// A ClusterIP Service with one address and `(name, protocol, port, target)` ports.
pub fn service(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, Protocol, u16, u16)],
) -> Service {
    let ip: IpAddress = cluster_ip.parse().expect("cluster IP");
    Service {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: format!("uid-{namespace}-{name}"),
        labels: vec![],
        annotations: vec![],
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: ports
            .iter()
            .map(|(n, proto, port, target)| ServicePort {
                name: n.to_string(),
                protocol: *proto,
                port: *port,
                target_port: TargetPort::Number(*target),
                node_port: None,
            })
            .collect(),
        session_affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        traffic_distribution: None,
        ip_families: vec![ip.family()],
        ip_family_policy: IpFamilyPolicy::SingleStack,
        health_check_node_port: None,
    }
}

/// A ready endpoint at `address` with `(name, protocol, port)` ports, on node `node-1`.
pub fn endpoint(address: &str, ports: &[(&str, Protocol, u16)]) -> Endpoint {
    Endpoint {
        address: address.parse().expect("endpoint address"),
        ports: ports
            .iter()
            .map(|(n, proto, port)| EndpointPort {
                name: n.to_string(),
                port: *port,
                protocol: *proto,
            })
            .collect(),
        ready: true,
        serving: true,
        terminating: false,
        node: Some("node-1".to_string()),
        zone: None,
        pod: None,
        weight: 1,
    }
}

/// A CNI request for the harness's attachment, with the runtime's network
/// configuration `config` (JSON text).
pub fn cni_request(container_id: &str, ifname: &str, config: &str) -> crate::cni_types::CniRequest {
    crate::cni_types::CniRequest {
        container_id: container_id.to_string(),
        netns: format!("/var/run/netns/{container_id}"),
        ifname: ifname.to_string(),
        args: vec![],
        network: "switchyard".to_string(),
        cni_version: "1.1.0".to_string(),
        network_config: config.to_string(),
        prev_result: None,
    }
}

/// A running, ready pod with labels `labels` and addresses `ips`, on `node`.
pub fn pod(namespace: &str, name: &str, node: &str, labels: &[(&str, &str)], ips: &[&str]) -> Pod {
    Pod {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: format!("uid-{namespace}-{name}"),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: ips
            .iter()
            .map(|i| i.parse().expect("pod address"))
            .collect(),
        node: node.to_string(),
        host_network: false,
        ports: vec![],
        phase: PodPhase::Running,
        ready: true,
    }
}

/// A policy selecting `selected` for `directions`, without rules: what a
/// WasmNetworkPolicy with only a podSelector resolves to.
pub fn policy(
    namespace: &str,
    name: &str,
    selected: Vec<Pod>,
    directions: &[PolicyDirection],
) -> Policy {
    Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        annotations: vec![],
        selected,
        directions: directions.to_vec(),
        ingress: vec![],
        egress: vec![],
    }
}

/// A fragment's set elements as text, `set key . key`, in order (for
/// example `egress-allow4 10.244.1.5 . 10.0.0.0-10.255.255.255 . udp . 53`).
pub fn elements(f: &PlanFragment) -> Vec<String> {
    f.items
        .iter()
        .filter_map(|i| match &i.body {
            PlanBody::NftElement(e) => Some(format!(
                "{} {}",
                e.set,
                e.key
                    .iter()
                    .map(|v| match v {
                        NftValue::Address(a) => a.to_string(),
                        NftValue::AddressRange((a, b)) => format!("{a}-{b}"),
                        NftValue::Protocol(Protocol::Tcp) => "tcp".into(),
                        NftValue::Protocol(Protocol::Udp) => "udp".into(),
                        NftValue::Protocol(Protocol::Sctp) => "sctp".into(),
                        NftValue::Port(p) => p.to_string(),
                        NftValue::PortRange((a, b)) => format!("{a}-{b}"),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(" . ")
            )),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{ipam, links};

    #[test]
    fn ipam_allocates_distinct_addresses_and_is_idempotent_per_attachment() {
        let h = Harness::new();
        h.add_pool("v4", "10.244.1.0/24");
        h.set_attachment("c1", "eth0");
        let a = ipam::allocate("v4", None).unwrap();
        assert_eq!(a.address.to_string(), "10.244.1.2/24");
        assert_eq!(ipam::allocate("v4", None).unwrap(), a);
        h.set_attachment("c2", "eth0");
        let b = ipam::allocate("v4", None).unwrap();
        assert_ne!(a.address, b.address);
        assert_eq!(ipam::release().unwrap(), 1);
        assert_eq!(ipam::release().unwrap(), 0);
        assert_eq!(h.held_addresses().len(), 1);
    }

    #[test]
    fn ipam_exhaustion_is_an_error_not_a_panic() {
        let h = Harness::new();
        h.add_pool("tiny", "10.0.0.0/30"); // .1 gateway, .2 usable, .3 broadcast
        h.set_attachment("c1", "eth0");
        ipam::allocate("tiny", None).unwrap();
        h.set_attachment("c2", "eth0");
        assert!(matches!(
            ipam::allocate("tiny", None),
            Err(IpamError::Exhausted(_))
        ));
    }

    #[test]
    fn links_model_veth_pairs_and_pod_scope() {
        let h = Harness::new();
        h.set_attachment("c1", "eth0");
        links::ensure_bridge("sy0", 1500, &["10.244.1.1/24".parse().unwrap()]).unwrap();
        let (host, pod) = links::create_veth("syv1", "sy0", 1500).unwrap();
        assert_eq!(host.master.as_deref(), Some("sy0"));
        assert_eq!(pod.name, "eth0");
        assert!(matches!(
            links::create_veth("syv1", "sy0", 1500),
            Err(LinkError::Exists(_))
        ));
        links::add_address(Scope::Pod, "eth0", "10.244.1.2/24".parse().unwrap()).unwrap();
        assert!(links::delete_link(Scope::Node, "syv1").unwrap());
        assert!(
            h.links(Scope::Pod).is_empty(),
            "deleting one end removes the peer"
        );
        assert!(!links::delete_link(Scope::Node, "syv1").unwrap());
    }

    #[test]
    #[should_panic(expected = "only the request's interface")]
    fn touching_another_pod_interface_fails() {
        let _h = Harness::new();
        let _ = links::delete_link(Scope::Pod, "eth1");
    }

    #[test]
    #[should_panic(expected = "Harness::new()")]
    fn host_calls_without_a_harness_say_what_to_do() {
        crate::info!("no harness here");
    }
}
