//! Object scope: what one object's fragment may name.
//!
//! Grants say which *kinds* of thing a module may touch (its role's table,
//! IPVS services, ...). A scope says *which ones*, for the one object the
//! module was called for: a module rendering Service A must not dispatch
//! 8.8.8.8:53, nor send A's traffic to an address that is not one of A's
//! endpoints, and a module rendering a policy must not isolate or open a pod
//! the policy does not select. The caller builds the scope from the same
//! input it gave the module; validation checks every element key and value
//! of the host's maps (by each map's [`Bind`]), every DNAT target and every
//! IPVS service and interface address against it.
//!
//! A scope is a handful of hash sets built once per object, so checking a
//! fragment stays linear in its size (a Service with 1000 endpoints too).

use super::skeleton::Bind;
use crate::contract::wit;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;

type R = Result<(), String>;

/// What one object's fragment may name.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Not bound to an object: only the structural checks apply. For the
    /// host's own fragments and for tests of those checks; every module
    /// call goes through [`Scope::service`] or [`Scope::policy`].
    Unbound,
    Service(ServiceScope),
    Policy(PolicyScope),
}

/// A Service's addresses, ports and endpoints.
#[derive(Debug, Clone, Default)]
pub struct ServiceScope {
    /// ClusterIPs, external IPs and LoadBalancer ingress IPs.
    vips: HashSet<IpAddr>,
    /// (protocol, port) of each Service port.
    ports: HashSet<(u8, u16)>,
    /// (protocol, nodePort) of each Service port that has one.
    node_ports: HashSet<(u8, u16)>,
    endpoints: HashSet<IpAddr>,
    /// (protocol, port) of each endpoint port: where a DNAT may send.
    endpoint_ports: HashSet<(u8, u16)>,
    /// This node's addresses: where an IPVS NodePort service listens.
    node_ips: HashSet<IpAddr>,
}

/// The addresses of the pods a policy selects on this node.
#[derive(Debug, Clone, Default)]
pub struct PolicyScope {
    pods: HashSet<IpAddr>,
}

/// The IP protocol number of `p`.
pub(super) fn proto(p: wit::Protocol) -> u8 {
    match p {
        wit::Protocol::Tcp => 6,
        wit::Protocol::Udp => 17,
        wit::Protocol::Sctp => 132,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "sctp",
    }
}

fn ip(a: &wit::IpAddress) -> IpAddr {
    crate::contract::wit_to_ip(a)
}

/// At most a few of a set's members, sorted, for a message.
fn some<T: Ord + Clone>(set: &HashSet<T>, show: impl Fn(&T) -> String) -> String {
    const SHOWN: usize = 4;
    let mut v: Vec<&T> = set.iter().collect();
    v.sort();
    let mut s = v
        .iter()
        .take(SHOWN)
        .map(|x| show(x))
        .collect::<Vec<_>>()
        .join(", ");
    if v.is_empty() {
        s.push_str("none");
    } else if v.len() > SHOWN {
        let _ = write!(s, " and {} more", v.len() - SHOWN);
    }
    s
}

/// The one address a value names. Only a plain address counts: a prefix
/// or a range, even of one address, would be installed beside the host's
/// own per-address elements of an interval set and could overlap them.
fn single(v: &wit::NftValue) -> Result<IpAddr, String> {
    match v {
        wit::NftValue::Address(a) => Ok(ip(a)),
        wit::NftValue::Prefix(c) => Err(format!(
            "{}/{} is a prefix; this position takes a single address",
            ip(&c.address),
            c.prefix_len
        )),
        wit::NftValue::AddressRange((a, b)) => Err(format!(
            "{}-{} is a range; this position takes a single address",
            ip(a),
            ip(b)
        )),
        _ => Err("this position takes an address".into()),
    }
}

/// `key` (protocol, port) is one of `set`, or an error naming what it is not.
fn one_of(set: &HashSet<(u8, u16)>, key: (u8, u16), what: &str) -> R {
    if set.contains(&key) {
        Ok(())
    } else {
        Err(format!(
            "{}/{} is not a {what} ({})",
            key.1,
            proto_name(key.0),
            some(set, |(p, n)| format!("{n}/{}", proto_name(*p)))
        ))
    }
}

impl Scope {
    /// The scope of Service `svc` with `endpoints`, rendered on the node
    /// `ctx` describes.
    pub fn service(
        ctx: &wit::NodeContext,
        svc: &wit::Service,
        endpoints: &[wit::Endpoint],
    ) -> Scope {
        let vips = svc
            .cluster_ips
            .iter()
            .chain(&svc.external_ips)
            .chain(&svc.load_balancer_ips)
            .map(ip)
            .collect();
        let ports = svc
            .ports
            .iter()
            .map(|p| (proto(p.protocol), p.port))
            .collect();
        let node_ports = svc
            .ports
            .iter()
            .filter_map(|p| p.node_port.map(|n| (proto(p.protocol), n)))
            .collect();
        Scope::Service(ServiceScope {
            vips,
            ports,
            node_ports,
            endpoints: endpoints.iter().map(|e| ip(&e.address)).collect(),
            endpoint_ports: endpoints
                .iter()
                .flat_map(|e| e.ports.iter().map(|p| (proto(p.protocol), p.port)))
                .collect(),
            node_ips: ctx.node_ips.iter().map(ip).collect(),
        })
    }

    /// The scope of `policy` on the node `ctx` describes: the addresses of
    /// the pods it selects there (host-network pods have the node's
    /// addresses, which policy never isolates).
    pub fn policy(ctx: &wit::NodeContext, policy: &wit::Policy) -> Scope {
        Scope::Policy(PolicyScope {
            pods: policy
                .selected
                .iter()
                .filter(|p| p.node == ctx.node && !p.host_network)
                .flat_map(|p| p.ips.iter().map(ip))
                .collect(),
        })
    }

    /// An element of the host's map `set`, whose positions mean `bind`.
    pub fn element(&self, set: &str, bind: &[Bind], e: &wit::NftElement) -> R {
        if matches!(self, Scope::Unbound) {
            return Ok(());
        }
        let data: &[wit::NftValue] = match &e.value {
            Some(wit::NftMapValue::Data(d)) => d,
            _ => &[],
        };
        let protocol = e.key.iter().find_map(|v| match v {
            wit::NftValue::Protocol(p) => Some(proto(*p)),
            _ => None,
        });
        for (v, b) in e.key.iter().chain(data).zip(bind) {
            self.position(*b, v, protocol)
                .map_err(|m| format!("element of {set}: {m}"))?;
        }
        Ok(())
    }

    fn position(&self, b: Bind, v: &wit::NftValue, protocol: Option<u8>) -> R {
        let port = || match v {
            wit::NftValue::Port(p) => Ok((protocol.unwrap_or(0), *p)),
            _ => Err("this position takes one port".to_string()),
        };
        match (self, b) {
            (_, Bind::Free) | (Scope::Unbound, _) => Ok(()),
            (Scope::Service(s), Bind::ServiceIp) => s.vip(single(v)?),
            (Scope::Service(s), Bind::Endpoint) => s.endpoint(single(v)?),
            (Scope::Service(s), Bind::ServicePort) => s.port(port()?),
            (Scope::Service(s), Bind::NodePort) => s.node_port(port()?),
            (Scope::Service(s), Bind::EndpointPort) => {
                let (p, n) = port()?;
                s.endpoint_port(protocol.map(|_| p), n)
            }
            (Scope::Policy(p), Bind::Pod) => p.pod(single(v)?),
            (Scope::Service(_), Bind::Pod) => Err("a Service's fragment names no pods".into()),
            (Scope::Policy(_), _) => Err("a policy's fragment names no Service".into()),
        }
    }

    /// The address data of an element of a map the module defined (a DNAT
    /// map it looks up): every address in it is a DNAT target, and every
    /// port one of an endpoint's ports.
    /// (A policy's own maps are looked up by nothing the host installs.)
    pub fn own_map_data(&self, values: &[wit::NftValue]) -> R {
        if !matches!(self, Scope::Service(_)) {
            return Ok(());
        }
        for v in values {
            match v {
                wit::NftValue::Address(_)
                | wit::NftValue::Prefix(_)
                | wit::NftValue::AddressRange(_) => self.dnat(single(v)?, None)?,
                wit::NftValue::Port(p) => self.dnat_port(None, *p)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A DNAT target: an endpoint, and one of the endpoints' ports if the
    /// target names a port (`protocol` when the rule matches one).
    pub fn dnat(&self, a: IpAddr, port: Option<(Option<u8>, u16)>) -> R {
        match self {
            Scope::Unbound => Ok(()),
            Scope::Service(s) => {
                s.endpoint(a).map_err(|m| format!("DNAT to {a}: {m}"))?;
                match port {
                    Some((p, n)) => s
                        .endpoint_port(p, n)
                        .map_err(|m| format!("DNAT to {a} port {n}: {m}")),
                    None => Ok(()),
                }
            }
            Scope::Policy(_) => Err(format!("DNAT to {a}: a policy's fragment has no DNAT")),
        }
    }

    fn dnat_port(&self, protocol: Option<u8>, port: u16) -> R {
        match self {
            Scope::Service(s) => s
                .endpoint_port(protocol, port)
                .map_err(|m| format!("DNAT to port {port}: {m}")),
            _ => Ok(()),
        }
    }

    /// An IPVS virtual service: on one of the Service's addresses and
    /// ports, or on a node address and one of its nodePorts; its
    /// destinations are endpoints.
    pub fn ipvs(&self, v: &wit::IpvsService) -> R {
        let Scope::Service(s) = self else {
            return match self {
                Scope::Unbound => Ok(()),
                _ => Err("a policy's fragment has no IPVS services".into()),
            };
        };
        let vip = ip(&v.address);
        let key = (proto(v.protocol), v.port);
        if s.node_ips.contains(&vip) {
            s.node_port(key)
                .map_err(|m| format!("IPVS service on node address {vip}: {m}"))?;
        } else {
            s.vip(vip).map_err(|m| format!("IPVS service: {m}"))?;
            s.port(key).map_err(|m| format!("IPVS service: {m}"))?;
        }
        for d in &v.destinations {
            s.endpoint(ip(&d.address))
                .map_err(|m| format!("IPVS destination: {m}"))?;
            s.endpoint_port(Some(key.0), d.port)
                .map_err(|m| format!("IPVS destination {}: {m}", ip(&d.address)))?;
        }
        Ok(())
    }

    /// An address the host is to hold on a node interface: one of the
    /// Service's addresses, as a single address (a shorter prefix would
    /// route a whole network to the node).
    pub fn interface_address(&self, c: &wit::IpCidr) -> R {
        let Scope::Service(s) = self else {
            return match self {
                Scope::Unbound => Ok(()),
                _ => Err("a policy's fragment has no interface addresses".into()),
            };
        };
        let a = ip(&c.address);
        let full = if a.is_ipv4() { 32 } else { 128 };
        if c.prefix_len != full {
            return Err(format!(
                "interface address {a}/{}: a Service address is held as /{full}",
                c.prefix_len
            ));
        }
        s.vip(a).map_err(|m| format!("interface address: {m}"))
    }
}

impl ServiceScope {
    fn vip(&self, a: IpAddr) -> R {
        if self.vips.contains(&a) {
            Ok(())
        } else {
            Err(format!(
                "{a} is not one of this Service's addresses ({})",
                some(&self.vips, ToString::to_string)
            ))
        }
    }

    fn endpoint(&self, a: IpAddr) -> R {
        if self.endpoints.contains(&a) {
            Ok(())
        } else {
            Err(format!(
                "{a} is not an endpoint of this Service ({})",
                some(&self.endpoints, ToString::to_string)
            ))
        }
    }

    fn port(&self, key: (u8, u16)) -> R {
        one_of(&self.ports, key, "port of this Service")
    }

    /// One of the endpoints' ports, under `protocol` when it is known.
    fn endpoint_port(&self, protocol: Option<u8>, port: u16) -> R {
        match protocol {
            Some(p) => one_of(
                &self.endpoint_ports,
                (p, port),
                "port of this Service's endpoints",
            ),
            None if self.endpoint_ports.iter().any(|(_, n)| *n == port) => Ok(()),
            None => Err(format!(
                "{port} is not a port of this Service's endpoints ({})",
                some(&self.endpoint_ports, |(p, n)| format!(
                    "{n}/{}",
                    proto_name(*p)
                ))
            )),
        }
    }

    fn node_port(&self, key: (u8, u16)) -> R {
        one_of(&self.node_ports, key, "nodePort of this Service")
    }
}

impl PolicyScope {
    fn pod(&self, a: IpAddr) -> R {
        if self.pods.contains(&a) {
            Ok(())
        } else {
            Err(format!(
                "{a} is not a pod this policy selects on this node ({})",
                some(&self.pods, ToString::to_string)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;
    use crate::plan::grants::Grants;
    use crate::plan::{PlanLimits, validate};
    use wit::*;

    fn a(s: &str) -> IpAddress {
        crate::contract::wit_ip(s.parse().unwrap())
    }

    fn prefix(s: &str) -> NftValue {
        let (addr, len) = s.split_once('/').unwrap();
        NftValue::Prefix(IpCidr {
            address: a(addr),
            prefix_len: len.parse().unwrap(),
        })
    }

    fn ctx() -> NodeContext {
        NodeContext {
            node: "node-1".into(),
            zone: None,
            node_ips: vec![a("192.168.0.2")],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            families: vec![IpFamily::Ipv4],
            masquerade: false,
            default_scheduler: "random".into(),
        }
    }

    /// `default/web`: ClusterIP 10.96.0.10, external 192.0.2.10, LB
    /// 192.0.2.20, port 80/tcp with nodePort 30080, endpoints 10.244.1.2
    /// and 10.244.2.2.
    fn web() -> (Service, Vec<Endpoint>) {
        let svc = Service {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            labels: vec![],
            annotations: vec![],
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![a("10.96.0.10")],
            external_ips: vec![a("192.0.2.10")],
            load_balancer_ips: vec![a("192.0.2.20")],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: Some(30080),
            }],
            session_affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            traffic_distribution: None,
            ip_families: vec![IpFamily::Ipv4],
            ip_family_policy: IpFamilyPolicy::SingleStack,
            health_check_node_port: None,
        };
        let eps = ["10.244.1.2", "10.244.2.2"]
            .iter()
            .map(|e| Endpoint {
                address: a(e),
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
                ready: true,
                serving: true,
                terminating: false,
                node: None,
                zone: None,
                pod: None,
                weight: 1,
            })
            .collect();
        (svc, eps)
    }

    fn item(body: PlanBody) -> PlanItem {
        PlanItem {
            rule_id: "r".into(),
            comment: None,
            shared: false,
            body,
        }
    }

    fn element(set: &str, key: Vec<NftValue>, value: Option<NftMapValue>) -> PlanItem {
        item(PlanBody::NftElement(NftElement {
            set: set.into(),
            key,
            value,
        }))
    }

    fn check(role: Role, scope: &Scope, items: Vec<PlanItem>) -> Result<(), String> {
        validate(
            PlanFragment { items },
            role,
            &Grants::for_role(role),
            &PlanLimits::default(),
            scope,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    fn service(items: Vec<PlanItem>) -> Result<(), String> {
        let (svc, eps) = web();
        check(
            Role::ServiceProxy,
            &Scope::service(&ctx(), &svc, &eps),
            items,
        )
    }

    fn vip_key(vip: &str, p: Protocol, port: u16) -> Vec<NftValue> {
        vec![
            NftValue::Address(a(vip)),
            NftValue::Protocol(p),
            NftValue::Port(port),
        ]
    }

    fn class(n: u32, chain: &str) -> Vec<PlanItem> {
        vec![
            item(PlanBody::NftChain(NftChain {
                name: chain.into(),
                rules: vec![NftRule {
                    matches: vec![],
                    statements: vec![NftStatement::Verdict(NftVerdict::Jump(
                        "restore-mark".into(),
                    ))],
                }],
            })),
            element(
                "service-classes",
                vec![NftValue::Number(n)],
                Some(NftMapValue::Verdict(NftVerdict::Goto(chain.into()))),
            ),
        ]
    }

    fn dispatch(vip: &str, p: Protocol, port: u16) -> PlanItem {
        element(
            "service-ips",
            vip_key(vip, p, port),
            Some(NftMapValue::Data(vec![NftValue::Number(7)])),
        )
    }

    fn backend(vip: &str, to: &str) -> PlanItem {
        let mut key = vip_key(vip, Protocol::Tcp, 80);
        key.push(NftValue::Number(0));
        element(
            "backends4-tcp",
            key,
            Some(NftMapValue::Data(vec![
                NftValue::Address(a(to)),
                NftValue::Port(8080),
            ])),
        )
    }

    fn dnat_chain(name: &str, to: &str) -> PlanItem {
        item(PlanBody::NftChain(NftChain {
            name: name.into(),
            rules: vec![NftRule {
                // A port mapping needs the transport protocol matched first.
                matches: vec![NftMatch {
                    key: vec![NftField::MetaL4proto],
                    negate: false,
                    operand: NftOperand::Value(NftValue::Protocol(Protocol::Tcp)),
                }],
                statements: vec![NftStatement::Dnat(NftNat {
                    family: IpFamily::Ipv4,
                    target: NftNatTarget::Address((a(to), Some(8080))),
                })],
            }],
        }))
    }

    #[test]
    fn a_service_names_its_own_addresses_ports_and_endpoints() {
        let mut items = class(7, "pick-1");
        for vip in ["10.96.0.10", "192.0.2.10", "192.0.2.20"] {
            items.push(dispatch(vip, Protocol::Tcp, 80));
            items.push(backend(vip, "10.244.1.2"));
            items.push(backend(vip, "10.244.2.2"));
        }
        items.push(element(
            "service-nodeports",
            vec![
                NftValue::Family(IpFamily::Ipv4),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(30080),
            ],
            Some(NftMapValue::Data(vec![NftValue::Number(7)])),
        ));
        items.push(element(
            "nodeport-backends4-tcp",
            vec![
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(30080),
                NftValue::Number(0),
            ],
            Some(NftMapValue::Data(vec![
                NftValue::Address(a("10.244.1.2")),
                NftValue::Port(8080),
            ])),
        ));
        items.push(element(
            "hairpin4",
            vec![
                NftValue::Address(a("10.244.1.2")),
                NftValue::Address(a("10.244.1.2")),
            ],
            None,
        ));
        items.push(dnat_chain("ep-1", "10.244.2.2"));
        items.push(element(
            "service-chains",
            vip_key("10.96.0.10", Protocol::Tcp, 80),
            Some(NftMapValue::Verdict(NftVerdict::Goto("ep-1".into()))),
        ));
        items.push(element(
            "no-endpoints",
            vip_key("192.0.2.10", Protocol::Tcp, 80),
            Some(NftMapValue::Verdict(NftVerdict::Drop)),
        ));
        assert_eq!(service(items), Ok(()));
    }

    #[test]
    fn a_service_cannot_dispatch_another_address_or_port() {
        // The hostile render of issue 18: 8.8.8.8:53 to one of A's endpoints.
        let mut items = class(7, "pick-1");
        items.push(dispatch("8.8.8.8", Protocol::Udp, 53));
        let e = service(items).unwrap_err();
        assert!(
            e.starts_with("item 2 (r): element of service-ips: 8.8.8.8 is not one of this Service's addresses (10.96.0.10, 192.0.2.10, 192.0.2.20)"),
            "{e}"
        );
        let mut items = class(7, "pick-1");
        items.push(dispatch("10.96.0.10", Protocol::Udp, 53));
        let e = service(items).unwrap_err();
        assert!(
            e.contains("53/udp is not a port of this Service (80/tcp)"),
            "{e}"
        );
        // The same port under another protocol is another port.
        let e = service(vec![element(
            "no-endpoints",
            vip_key("10.96.0.10", Protocol::Udp, 80),
            Some(NftMapValue::Verdict(NftVerdict::Reject)),
        )])
        .unwrap_err();
        assert!(e.contains("80/udp is not a port of this Service"), "{e}");
        let e = service(vec![element(
            "no-endpoint-nodeports",
            vec![
                NftValue::Family(IpFamily::Ipv4),
                NftValue::Protocol(Protocol::Tcp),
                NftValue::Port(30081),
            ],
            Some(NftMapValue::Verdict(NftVerdict::Drop)),
        )])
        .unwrap_err();
        assert!(
            e.contains("30081/tcp is not a nodePort of this Service (30080/tcp)"),
            "{e}"
        );
        // Another Service's backends, keyed by its address.
        let e = service(vec![backend("10.96.0.11", "10.244.1.2")]).unwrap_err();
        assert!(
            e.contains(
                "element of backends4-tcp: 10.96.0.11 is not one of this Service's addresses"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_service_sends_traffic_only_to_its_endpoints() {
        let e = service(vec![backend("10.96.0.10", "10.9.9.9")]).unwrap_err();
        assert!(
            e.contains("element of backends4-tcp: 10.9.9.9 is not an endpoint of this Service (10.244.1.2, 10.244.2.2)"),
            "{e}"
        );
        let e = service(vec![dnat_chain("ep-1", "8.8.4.4")]).unwrap_err();
        assert!(
            e.contains("chain ep-1 rule 0: DNAT to 8.8.4.4: 8.8.4.4 is not an endpoint"),
            "{e}"
        );
        // An inline DNAT map, and a DNAT map of the module's own.
        let lookup = |map: NftMapRef| {
            item(PlanBody::NftChain(NftChain {
                name: "svc-1".into(),
                rules: vec![NftRule {
                    matches: vec![],
                    statements: vec![NftStatement::Dnat(NftNat {
                        family: IpFamily::Ipv4,
                        target: NftNatTarget::Lookup((NftKey::NumgenRandom(1), map)),
                    })],
                }],
            }))
        };
        let e = service(vec![lookup(NftMapRef::Inline(vec![NftMapEntry {
            key: vec![NftValue::Number(0)],
            value: NftMapValue::Data(vec![NftValue::Address(a("10.9.9.9"))]),
        }]))])
        .unwrap_err();
        assert!(e.contains("DNAT to 10.9.9.9"), "{e}");
        let own = item(PlanBody::NftMap(NftMap {
            name: "mine".into(),
            key: vec![NftType::Mark],
            data: NftMapData::Data(vec![NftType::Ipv4Addr, NftType::InetService]),
            set_flags: NftSetFlags::empty(),
        }));
        let entry = |to: &str| {
            element(
                "mine",
                vec![NftValue::Number(0)],
                Some(NftMapValue::Data(vec![
                    NftValue::Address(a(to)),
                    NftValue::Port(8080),
                ])),
            )
        };
        let chain = lookup(NftMapRef::Named("mine".into()));
        assert_eq!(
            service(vec![own.clone(), entry("10.244.1.2"), chain.clone()]),
            Ok(())
        );
        let e = service(vec![own, entry("10.9.9.9"), chain]).unwrap_err();
        assert!(
            e.starts_with("item 1 (r): element of mine: DNAT to 10.9.9.9"),
            "{e}"
        );
        // Hairpin masquerade only between endpoints.
        let e = service(vec![element(
            "hairpin4",
            vec![
                NftValue::Address(a("10.244.1.2")),
                NftValue::Address(a("10.0.0.1")),
            ],
            None,
        )])
        .unwrap_err();
        assert!(
            e.contains("element of hairpin4: 10.0.0.1 is not an endpoint"),
            "{e}"
        );
    }

    #[test]
    fn a_service_sends_traffic_only_to_its_endpoints_ports() {
        // An endpoint's address with a port it does not serve (its sshd,
        // say) is outside the Service: in a host map, a DNAT rule and a
        // DNAT map of the module's own.
        let mut e = backend("10.96.0.10", "10.244.1.2");
        if let PlanBody::NftElement(el) = &mut e.body {
            el.value = Some(NftMapValue::Data(vec![
                NftValue::Address(a("10.244.1.2")),
                NftValue::Port(22),
            ]));
        }
        let e = service(vec![e]).unwrap_err();
        assert!(
            e.contains("element of backends4-tcp: 22/tcp is not a port of this Service's endpoints (8080/tcp)"),
            "{e}"
        );
        let mut chain = dnat_chain("ep-1", "10.244.2.2");
        if let PlanBody::NftChain(c) = &mut chain.body
            && let NftStatement::Dnat(n) = &mut c.rules[0].statements[0]
        {
            n.target = NftNatTarget::Address((a("10.244.2.2"), Some(22)));
        }
        let e = service(vec![chain]).unwrap_err();
        assert!(
            e.contains("chain ep-1 rule 0: DNAT to 10.244.2.2 port 22: 22/tcp is not a port of this Service's endpoints"),
            "{e}"
        );
        // The right port under another protocol is another port.
        let mut chain = dnat_chain("ep-1", "10.244.2.2");
        if let PlanBody::NftChain(c) = &mut chain.body {
            c.rules[0].matches[0].operand = NftOperand::Value(NftValue::Protocol(Protocol::Udp));
        }
        let e = service(vec![chain]).unwrap_err();
        assert!(
            e.contains("8080/udp is not a port of this Service's endpoints"),
            "{e}"
        );
        let own = item(PlanBody::NftMap(NftMap {
            name: "mine".into(),
            key: vec![NftType::Mark],
            data: NftMapData::Data(vec![NftType::Ipv4Addr, NftType::InetService]),
            set_flags: NftSetFlags::empty(),
        }));
        let entry = element(
            "mine",
            vec![NftValue::Number(0)],
            Some(NftMapValue::Data(vec![
                NftValue::Address(a("10.244.1.2")),
                NftValue::Port(6443),
            ])),
        );
        let e = service(vec![own, entry]).unwrap_err();
        assert!(
            e.contains(
                "element of mine: DNAT to port 6443: 6443 is not a port of this Service's endpoints"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_health_check_node_port_is_not_a_node_port_to_dispatch() {
        // healthCheckNodePort is where the node answers health checks for
        // a Local Service; a module may not dispatch it to endpoints.
        let (mut svc, eps) = web();
        svc.external_traffic_policy = TrafficPolicy::Local;
        svc.health_check_node_port = Some(30999);
        let scope = Scope::service(&ctx(), &svc, &eps);
        let e = check(
            Role::ServiceProxy,
            &scope,
            vec![element(
                "no-endpoint-nodeports",
                vec![
                    NftValue::Family(IpFamily::Ipv4),
                    NftValue::Protocol(Protocol::Tcp),
                    NftValue::Port(30999),
                ],
                Some(NftMapValue::Verdict(NftVerdict::Drop)),
            )],
        )
        .unwrap_err();
        assert!(
            e.contains("30999/tcp is not a nodePort of this Service (30080/tcp)"),
            "{e}"
        );
    }

    #[test]
    fn ipvs_services_and_interface_addresses_are_the_services_own() {
        let ipvs = |vip: &str, port: u16, dest: &str| {
            item(PlanBody::IpvsService(IpvsService {
                address: a(vip),
                port,
                protocol: Protocol::Tcp,
                scheduler: "rr".into(),
                persistence_timeout: None,
                destinations: vec![IpvsDestination {
                    address: a(dest),
                    port: 8080,
                    weight: 1,
                    forwarding: IpvsForwarding::Masquerade,
                }],
            }))
        };
        assert_eq!(service(vec![ipvs("10.96.0.10", 80, "10.244.1.2")]), Ok(()));
        assert_eq!(
            service(vec![ipvs("192.168.0.2", 30080, "10.244.1.2")]),
            Ok(())
        );
        for (vip, port, dest, want) in [
            (
                "10.96.0.99",
                80,
                "10.244.1.2",
                "IPVS service: 10.96.0.99 is not one",
            ),
            (
                "10.96.0.10",
                81,
                "10.244.1.2",
                "IPVS service: 81/tcp is not a port",
            ),
            ("192.168.0.2", 80, "10.244.1.2", "80/tcp is not a nodePort"),
            (
                "10.96.0.10",
                80,
                "1.1.1.1",
                "IPVS destination: 1.1.1.1 is not an endpoint",
            ),
        ] {
            let e = service(vec![ipvs(vip, port, dest)]).unwrap_err();
            assert!(e.contains(want), "{vip}:{port} -> {dest}: {e}");
        }
        let addr = |c: &str| {
            let (ip, len) = c.split_once('/').unwrap();
            item(PlanBody::InterfaceAddress(InterfaceAddress {
                device: "sy-ipvs0".into(),
                address: IpCidr {
                    address: a(ip),
                    prefix_len: len.parse().unwrap(),
                },
            }))
        };
        assert_eq!(service(vec![addr("10.96.0.10/32")]), Ok(()));
        let e = service(vec![addr("10.96.0.10/16")]).unwrap_err();
        assert!(e.contains("a Service address is held as /32"), "{e}");
        let e = service(vec![addr("10.96.0.11/32")]).unwrap_err();
        assert!(
            e.contains("10.96.0.11 is not one of this Service's addresses"),
            "{e}"
        );
    }

    #[test]
    fn another_tables_map_is_not_there() {
        let e = service(vec![element(
            "ingress-allow-all4",
            vec![NftValue::Address(a("10.244.1.2")), prefix("0.0.0.0/0")],
            None,
        )])
        .unwrap_err();
        assert!(
            e.contains("element for \"ingress-allow-all4\", which is not defined"),
            "{e}"
        );
        let e = policy(vec![dispatch("10.96.0.10", Protocol::Tcp, 80)]).unwrap_err();
        assert!(
            e.contains("element for \"service-ips\", which is not defined"),
            "{e}"
        );
    }

    /// Policy `y/p` selects y/p1 (10.244.1.10, here) and y/p2 (10.244.2.10,
    /// on node-2); x/a is 10.244.1.20.
    fn policy(items: Vec<PlanItem>) -> Result<(), String> {
        let pod = |name: &str, node: &str, addr: &str| Pod {
            namespace: "y".into(),
            name: name.into(),
            uid: name.into(),
            labels: vec![],
            ips: vec![a(addr)],
            node: node.into(),
            host_network: false,
            ports: vec![],
            phase: PodPhase::Running,
            ready: true,
        };
        let mut host = pod("h", "node-1", "192.168.0.2");
        host.host_network = true;
        let p = Policy {
            namespace: "y".into(),
            name: "p".into(),
            annotations: vec![],
            selected: vec![
                pod("p1", "node-1", "10.244.1.10"),
                pod("p2", "node-2", "10.244.2.10"),
                host,
            ],
            directions: vec![PolicyDirection::Ingress],
            ingress: vec![],
            egress: vec![],
        };
        check(Role::NetworkPolicy, &Scope::policy(&ctx(), &p), items)
    }

    fn allow_all(pod: NftValue, peer: NftValue) -> PlanItem {
        element("ingress-allow-all4", vec![pod, peer], None)
    }

    #[test]
    fn a_policy_names_only_the_pods_it_selects_here() {
        let p1 = NftValue::Address(a("10.244.1.10"));
        let ok = vec![
            element("ingress-isolated4", vec![p1.clone()], None),
            element("egress-monitored4", vec![p1.clone()], None),
            // The peer side is the policy's own business.
            allow_all(p1.clone(), prefix("0.0.0.0/0")),
            element(
                "ingress-allow4",
                vec![
                    p1.clone(),
                    NftValue::AddressRange((a("10.0.0.0"), a("10.0.0.9"))),
                    NftValue::Protocol(Protocol::Tcp),
                    NftValue::PortRange((1, 1024)),
                ],
                None,
            ),
        ];
        assert_eq!(policy(ok), Ok(()));
        for (pod, want) in [
            // A pod of another namespace the policy does not select.
            (
                NftValue::Address(a("10.244.1.20")),
                "10.244.1.20 is not a pod this policy selects on this node (10.244.1.10)",
            ),
            // A selected pod, but on another node.
            (
                NftValue::Address(a("10.244.2.10")),
                "10.244.2.10 is not a pod this policy selects",
            ),
            // A host-network pod: the node's own address.
            (
                NftValue::Address(a("192.168.0.2")),
                "192.168.0.2 is not a pod this policy selects",
            ),
            // A prefix as the pod key opens every pod in it.
            (
                prefix("10.0.0.0/8"),
                "10.0.0.0/8 is a prefix; this position takes a single address",
            ),
            // Even a /32 or a one-address range is not the pod's address.
            (prefix("10.244.1.10/32"), "10.244.1.10/32 is a prefix"),
            (
                NftValue::AddressRange((a("10.244.1.10"), a("10.244.1.10"))),
                "10.244.1.10-10.244.1.10 is a range",
            ),
        ] {
            let e = policy(vec![allow_all(pod.clone(), prefix("0.0.0.0/0"))]).unwrap_err();
            assert!(
                e.starts_with("item 0 (r): element of ingress-allow-all4: ") && e.contains(want),
                "{pod:?}: {e}"
            );
        }
        let e = policy(vec![element(
            "egress-isolated4",
            vec![NftValue::Address(a("10.244.1.20"))],
            None,
        )])
        .unwrap_err();
        assert!(
            e.contains("element of egress-isolated4: 10.244.1.20 is not a pod"),
            "{e}"
        );
    }

    #[test]
    fn a_big_service_is_checked_one_lookup_per_element() {
        // Every backend element of a big Service is one hash lookup; with a
        // scan of the endpoint list per element, 50,000 endpoints would be
        // 2.5 billion comparisons.
        let (mut svc, _) = web();
        svc.ports[0].node_port = None;
        let eps: Vec<Endpoint> = (0..50_000u32)
            .map(|i| Endpoint {
                address: crate::contract::wit_ip(std::net::IpAddr::V4((0x0af4_0000 + i).into())),
                ports: vec![EndpointPort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
                ready: true,
                serving: true,
                terminating: false,
                node: None,
                zone: None,
                pod: None,
                weight: 1,
            })
            .collect();
        let mut items = class(7, "pick-1");
        items.push(dispatch("10.96.0.10", Protocol::Tcp, 80));
        for (slot, e) in eps.iter().enumerate() {
            let mut key = vip_key("10.96.0.10", Protocol::Tcp, 80);
            key.push(NftValue::Number(slot as u32));
            items.push(element(
                "backends4-tcp",
                key,
                Some(NftMapValue::Data(vec![
                    NftValue::Address(e.address),
                    NftValue::Port(8080),
                ])),
            ));
        }
        let scope = Scope::service(&ctx(), &svc, &eps);
        let t = std::time::Instant::now();
        assert_eq!(check(Role::ServiceProxy, &scope, items), Ok(()));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t.elapsed()
        );
    }
}
