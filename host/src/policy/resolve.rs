//! A `networking.k8s.io/v1` NetworkPolicy with its selectors resolved: the
//! `policy` record the network-policy module renders.
//!
//! The semantics are the ones Kubernetes documents:
//!
//! - `spec.podSelector` selects pods of the policy's namespace (empty: all
//!   of them); pods on the host network and finished pods (`Succeeded`,
//!   `Failed`) are never selected and never peers;
//! - `spec.policyTypes` defaults to `Ingress`, plus `Egress` when the policy
//!   has egress rules;
//! - a rule without peers allows every peer and a rule without ports every
//!   port; `ingress: []` (no rules) allows nothing;
//! - a peer is an `ipBlock`, a `podSelector` (pods of the policy's
//!   namespace), a `namespaceSelector` (every pod of those namespaces) or
//!   both selectors (those pods in those namespaces). A selector matching no
//!   pod is a peer with no addresses: it matches nothing;
//! - a named port is resolved on the destination pods: the selected pods for
//!   ingress; for egress, the pods inside the rule's peers (every pod when
//!   the rule has none).
//!
//! Input the API server would reject is an error naming the field, in the
//! API server's words: nothing here panics or silently allows.

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::k8s::net::parse_cidr;
use crate::k8s::selector::Selector;
use crate::model::pod::pairs;
use crate::runtime::{wit_cidr, wit_ip, wit_to_ip};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The label the API server puts on every namespace, with its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

// ----------------------------------------------------------------------- pods

pub use crate::model::pod::pod;

/// Whether a pod takes part in policy at all: not on the host network (its
/// address is the node's) and not finished.
fn is_policy_pod(p: &wit::Pod) -> bool {
    !p.host_network && !matches!(p.phase, wit::PodPhase::Succeeded | wit::PodPhase::Failed)
}

// ----------------------------------------------------------------- addresses

fn host_cidr(a: IpAddr) -> wit::IpCidr {
    wit_cidr(IpNet::from(a))
}

// --------------------------------------------------------------------- ports

/// One entry of a rule's `ports`.
enum PortSpec {
    Range(wit::PortRange),
    Named(wit::Protocol, String),
}

fn port_spec(p: &NetworkPolicyPort, at: &str) -> Result<PortSpec, String> {
    let protocol =
        crate::k8s::protocol(p.protocol.as_deref()).map_err(|e| format!("{at}.protocol: {e}"))?;
    let number = |n: i64, field: &str| -> Result<u16, String> {
        match u16::try_from(n) {
            Ok(n) if n != 0 => Ok(n),
            _ => Err(format!(
                "{at}.{field}: Invalid value: {n}: must be between 1 and 65535, inclusive"
            )),
        }
    };
    let first = match &p.port {
        None => {
            if let Some(e) = p.end_port {
                return Err(format!(
                    "{at}.endPort: Invalid value: {e}: may not be specified when `port` is not specified"
                ));
            }
            return Ok(PortSpec::Range(wit::PortRange {
                protocol,
                first: 0,
                last: 65535,
            }));
        }
        Some(IntOrString::Int(n)) => number(i64::from(*n), "port")?,
        Some(IntOrString::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            number(s.parse::<i64>().unwrap_or(i64::MAX), "port")?
        }
        Some(IntOrString::String(name)) => {
            if let Some(e) = p.end_port {
                return Err(format!(
                    "{at}.endPort: Invalid value: {e}: may not be specified when `port` is non-numeric"
                ));
            }
            if let Err(msg) = crate::k8s::iana_svc_name(name) {
                return Err(format!("{at}.port: Invalid value: {name:?}: {msg}"));
            }
            return Ok(PortSpec::Named(protocol, name.clone()));
        }
    };
    let last = match p.end_port {
        None => first,
        Some(e) => {
            let last = number(i64::from(e), "endPort")?;
            if last < first {
                return Err(format!(
                    "{at}.endPort: Invalid value: {e}: must be greater than or equal to `port`"
                ));
            }
            last
        }
    };
    Ok(PortSpec::Range(wit::PortRange {
        protocol,
        first,
        last,
    }))
}

// --------------------------------------------------------------------- peers

/// The pods and namespaces a policy is resolved against.
struct World<'a> {
    /// The policy's namespace.
    namespace: &'a str,
    /// Pods that take part in policy, sorted by namespace and name.
    pods: Vec<&'a wit::Pod>,
    /// Labels of every namespace known from the map or from pods, with the
    /// name label.
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl<'a> World<'a> {
    fn new(
        namespace: &'a str,
        pods: &'a [wit::Pod],
        namespaces: &'a BTreeMap<String, BTreeMap<String, String>>,
    ) -> World<'a> {
        let mut live: Vec<&wit::Pod> = pods.iter().filter(|p| is_policy_pod(p)).collect();
        live.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut labels: BTreeMap<&str, BTreeMap<String, String>> = namespaces
            .iter()
            .map(|(n, l)| (n.as_str(), l.clone()))
            .collect();
        for p in &live {
            labels.entry(p.namespace.as_str()).or_default();
        }
        for (n, l) in &mut labels {
            l.entry(NAMESPACE_NAME_LABEL.to_string())
                .or_insert_with(|| n.to_string());
        }
        World {
            namespace,
            pods: live,
            namespaces: labels,
        }
    }

    fn namespace_matches(&self, namespace: &str, sel: &Selector) -> bool {
        self.namespaces
            .get(namespace)
            .is_some_and(|l| sel.matches(l))
    }
}

/// A peer, resolved.
struct Peer<'a> {
    wit: wit::PolicyPeer,
    kind: PeerKind<'a>,
}

enum PeerKind<'a> {
    /// The pods a selector peer stands for, by namespace and name.
    Pods(BTreeSet<(&'a str, &'a str)>),
    /// An ipBlock: the cidr minus the excepts.
    Block(IpNet, Vec<IpNet>),
}

impl Peer<'_> {
    /// Whether `addr` of `pod` is inside this peer.
    fn contains(&self, pod: &wit::Pod, addr: IpAddr) -> bool {
        match &self.kind {
            PeerKind::Pods(pods) => pods.contains(&(pod.namespace.as_str(), pod.name.as_str())),
            PeerKind::Block(cidr, except) => {
                cidr.contains(&addr) && !except.iter().any(|e| e.contains(&addr))
            }
        }
    }
}

fn peer<'a>(p: &NetworkPolicyPeer, at: &str, world: &World<'a>) -> Result<Peer<'a>, String> {
    let kinds = [
        p.pod_selector.is_some(),
        p.namespace_selector.is_some(),
        p.ip_block.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds == 0 {
        return Err(format!("{at}: Required value: must specify a peer"));
    }
    if let Some(block) = &p.ip_block {
        if kinds > 1 {
            return Err(format!(
                "{at}: Forbidden: may not specify both ipBlock and another peer"
            ));
        }
        if block.cidr.is_empty() {
            return Err(format!("{at}.ipBlock.cidr: Required value"));
        }
        let cidr = parse_cidr(&block.cidr).ok_or_else(|| {
            format!(
                "{at}.ipBlock.cidr: Invalid value: {:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                block.cidr
            )
        })?;
        let mut except = vec![];
        for (i, e) in block.except.iter().flatten().enumerate() {
            let bad = |msg: &str| format!("{at}.ipBlock.except[{i}]: Invalid value: {e:?}: {msg}");
            let net = parse_cidr(e).ok_or_else(|| {
                bad("must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
            })?;
            if !cidr.contains(&net) || net.prefix_len() <= cidr.prefix_len() {
                return Err(bad("must be a strict subset of `cidr`"));
            }
            except.push(net);
        }
        let mut description = format!("ipBlock {cidr}");
        if !except.is_empty() {
            let list: Vec<String> = except.iter().map(IpNet::to_string).collect();
            description.push_str(&format!(" except {}", list.join(", ")));
        }
        return Ok(Peer {
            wit: wit::PolicyPeer {
                description,
                addresses: wit::AddressSet {
                    cidrs: vec![wit_cidr(cidr)],
                    except: except.iter().copied().map(wit_cidr).collect(),
                },
            },
            kind: PeerKind::Block(cidr, except),
        });
    }
    let pod_sel = p
        .pod_selector
        .as_ref()
        .map(|s| Selector::new(s, &format!("{at}.podSelector")))
        .transpose()?;
    let ns_sel = p
        .namespace_selector
        .as_ref()
        .map(|s| Selector::new(s, &format!("{at}.namespaceSelector")))
        .transpose()?;
    let pods: Vec<&wit::Pod> = world
        .pods
        .iter()
        .copied()
        .filter(|pod| match &ns_sel {
            None => pod.namespace == world.namespace,
            Some(s) => world.namespace_matches(&pod.namespace, s),
        })
        .filter(|pod| {
            pod_sel
                .as_ref()
                .is_none_or(|s| s.matches_pairs(&pod.labels))
        })
        .collect();
    let who = match &pod_sel {
        Some(s) if !s.is_empty() => format!("pods {}", s.describe()),
        _ => "every pod".to_string(),
    };
    let where_ = match &ns_sel {
        None => format!("in namespace {}", world.namespace),
        Some(s) if s.is_empty() => "in every namespace".to_string(),
        Some(s) => format!("in namespaces {}", s.describe()),
    };
    let mut addrs: Vec<IpAddr> = pods
        .iter()
        .flat_map(|p| p.ips.iter().map(wit_to_ip))
        .collect();
    addrs.sort();
    addrs.dedup();
    Ok(Peer {
        wit: wit::PolicyPeer {
            description: format!("{who} {where_}"),
            addresses: wit::AddressSet {
                cidrs: addrs.into_iter().map(host_cidr).collect(),
                except: vec![],
            },
        },
        kind: PeerKind::Pods(
            pods.iter()
                .map(|p| (p.namespace.as_str(), p.name.as_str()))
                .collect(),
        ),
    })
}

// --------------------------------------------------------------------- rules

/// Where a rule's named ports are looked up.
enum Destinations<'p, 'a> {
    /// Ingress: the selected pods.
    Selected(&'p [&'a wit::Pod]),
    /// Egress: the pods inside the rule's peers.
    Peers,
}

fn rule<'a>(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    at: &str,
    peer_field: &str,
    world: &World<'a>,
    destinations: Destinations<'_, 'a>,
) -> Result<wit::PolicyRule, String> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(j, p)| peer(p, &format!("{at}.{peer_field}[{j}]"), world))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ranges: Vec<wit::PortRange> = vec![];
    let mut named: Vec<(wit::Protocol, String)> = vec![];
    for (j, p) in ports.unwrap_or_default().iter().enumerate() {
        match port_spec(p, &format!("{at}.ports[{j}]"))? {
            PortSpec::Range(r) => {
                if !ranges.contains(&r) {
                    ranges.push(r);
                }
            }
            PortSpec::Named(protocol, name) => {
                if !named.contains(&(protocol, name.clone())) {
                    named.push((protocol, name));
                }
            }
        }
    }
    // The destination addresses named ports are looked up on, per pod.
    let dests: Vec<(&wit::Pod, Vec<IpAddr>)> = if named.is_empty() {
        vec![]
    } else {
        match destinations {
            Destinations::Selected(pods) => pods
                .iter()
                .map(|p| (*p, p.ips.iter().map(wit_to_ip).collect()))
                .collect(),
            Destinations::Peers => world
                .pods
                .iter()
                .map(|p| {
                    let addrs = p
                        .ips
                        .iter()
                        .map(wit_to_ip)
                        .filter(|a| {
                            peers.is_empty() || peers.iter().any(|peer| peer.contains(p, *a))
                        })
                        .collect();
                    (*p, addrs)
                })
                .collect(),
        }
    };
    let named_ports = named
        .into_iter()
        .map(|(protocol, name)| {
            let mut targets: Vec<(IpAddr, u16)> = vec![];
            for (pod, addrs) in &dests {
                let Some(cp) = pod.ports.iter().find(|cp| {
                    cp.protocol == protocol && cp.name.as_deref() == Some(name.as_str())
                }) else {
                    continue;
                };
                targets.extend(addrs.iter().map(|a| (*a, cp.port)));
            }
            targets.sort();
            targets.dedup();
            wit::NamedPort {
                protocol,
                name,
                targets: targets
                    .into_iter()
                    .map(|(a, port)| wit::PortTarget {
                        address: wit_ip(a),
                        port,
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(wit::PolicyRule {
        peers: peers.into_iter().map(|p| p.wit).collect(),
        ports: ranges,
        named_ports,
    })
}

// -------------------------------------------------------------------- policy

/// `np` with its selectors resolved against `pods` (every pod of the
/// cluster) and `namespaces` (namespace name -> labels; a namespace missing
/// from the map that has pods gets just the `kubernetes.io/metadata.name`
/// label, which is also added where missing).
///
/// Rules of a direction the policy does not govern (egress rules of a
/// policy with `policyTypes: [Ingress]`) have no effect in Kubernetes: they
/// are checked, then left out.
pub fn resolve(
    np: &NetworkPolicy,
    pods: &[wit::Pod],
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<wit::Policy, String> {
    let namespace = np
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let world = World::new(namespace, pods, namespaces);
    let spec = np.spec.clone().unwrap_or_default();

    let directions = match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            if types.len() > 2 {
                return Err(format!(
                    "spec.policyTypes: Invalid value: {types:?}: may not specify more than two policyTypes"
                ));
            }
            let mut ingress = false;
            let mut egress = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => {
                        return Err(format!(
                            "spec.policyTypes[{i}]: Unsupported value: {other:?}: supported values: \"Ingress\", \"Egress\""
                        ));
                    }
                }
            }
            let mut d = vec![];
            if ingress {
                d.push(wit::PolicyDirection::Ingress);
            }
            if egress {
                d.push(wit::PolicyDirection::Egress);
            }
            d
        }
        _ => {
            let mut d = vec![wit::PolicyDirection::Ingress];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                d.push(wit::PolicyDirection::Egress);
            }
            d
        }
    };

    let selector = spec
        .pod_selector
        .as_ref()
        .map(|s| Selector::new(s, "spec.podSelector"))
        .transpose()?;
    let selected: Vec<&wit::Pod> = world
        .pods
        .iter()
        .copied()
        .filter(|p| p.namespace == namespace)
        .filter(|p| selector.as_ref().is_none_or(|s| s.matches_pairs(&p.labels)))
        .collect();

    let ingress = spec
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.from.as_deref(),
                r.ports.as_deref(),
                &format!("spec.ingress[{i}]"),
                "from",
                &world,
                Destinations::Selected(&selected),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| {
            rule(
                r.to.as_deref(),
                r.ports.as_deref(),
                &format!("spec.egress[{i}]"),
                "to",
                &world,
                Destinations::Peers,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let governs = |d: wit::PolicyDirection| directions.contains(&d);

    Ok(wit::Policy {
        namespace: namespace.to_string(),
        name: np.metadata.name.clone().unwrap_or_default(),
        annotations: pairs(np.metadata.annotations.as_ref()),
        selected: selected.into_iter().cloned().collect(),
        ingress: if governs(wit::PolicyDirection::Ingress) {
            ingress
        } else {
            vec![]
        },
        egress: if governs(wit::PolicyDirection::Egress) {
            egress
        } else {
            vec![]
        },
        directions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::net::parse_ip;
    use serde_json::{Value, json};

    fn k8s_pod(v: Value) -> wit::Pod {
        pod(&serde_json::from_value(v).unwrap())
    }

    /// A running pod with `ips` and named TCP ports (`name: number`).
    fn running(ns: &str, name: &str, labels: Value, ips: &[&str], ports: Value) -> wit::Pod {
        let ports: Vec<Value> = ports
            .as_object()
            .unwrap()
            .iter()
            .map(|(n, p)| json!({"name": n, "containerPort": p}))
            .collect();
        k8s_pod(json!({
            "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": "node-a", "containers": [{"name": "main", "ports": ports}]},
            "status": {
                "phase": "Running",
                "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            },
        }))
    }

    fn cluster() -> Vec<wit::Pod> {
        let mut host = running(
            "prod",
            "host",
            json!({"app": "db"}),
            &["192.168.0.1"],
            json!({"http": 8080}),
        );
        host.host_network = true;
        let mut done = running(
            "prod",
            "done",
            json!({"app": "db"}),
            &["10.0.0.9"],
            json!({"http": 8080}),
        );
        done.phase = wit::PodPhase::Succeeded;
        let mut failed = running(
            "prod",
            "failed",
            json!({"app": "db"}),
            &["10.0.0.8"],
            json!({"http": 8080}),
        );
        failed.phase = wit::PodPhase::Failed;
        vec![
            running(
                "prod",
                "db-2",
                json!({"app": "db"}),
                &["10.0.0.2"],
                json!({"http": 9090}),
            ),
            running(
                "prod",
                "db-1",
                json!({"app": "db"}),
                &["10.0.0.1", "fd00::1"],
                json!({"http": 8080}),
            ),
            running(
                "prod",
                "web",
                json!({"app": "web"}),
                &["10.0.0.3"],
                json!({"http": 80}),
            ),
            running(
                "dev",
                "db",
                json!({"app": "db"}),
                &["10.1.0.1"],
                json!({"http": 7070}),
            ),
            running(
                "other",
                "db",
                json!({"app": "db"}),
                &["10.2.0.1"],
                json!({"web": 7070}),
            ),
            host,
            done,
            failed,
        ]
    }

    fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
        serde_json::from_value(json!({
            "prod": {"team": "x", "kubernetes.io/metadata.name": "prod"},
            "dev": {"team": "y"},
            "empty": {"team": "x"},
        }))
        .unwrap()
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn run(yaml: &str) -> Result<wit::Policy, String> {
        resolve(&policy(yaml), &cluster(), &namespaces())
    }

    fn names(p: &wit::Policy) -> Vec<String> {
        p.selected
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    fn cidrs(s: &[wit::IpCidr]) -> Vec<String> {
        s.iter()
            .map(|c| format!("{}/{}", wit_to_ip(&c.address), c.prefix_len))
            .collect()
    }

    fn targets(n: &wit::NamedPort) -> Vec<String> {
        n.targets
            .iter()
            .map(|t| format!("{} {}", wit_to_ip(&t.address), t.port))
            .collect()
    }

    const HEAD: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  namespace: prod
  name: p
";

    fn run_spec(spec: &str) -> Result<wit::Policy, String> {
        run(&format!("{HEAD}{spec}"))
    }

    #[test]
    fn pod_conversion() {
        let p = k8s_pod(json!({
            "metadata": {"name": "web", "uid": "u1", "labels": {"z": "1", "app": "web"}},
            "spec": {
                "nodeName": "node-b",
                "containers": [
                    {"name": "a", "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"containerPort": 53, "protocol": "UDP"},
                    ]},
                    {"name": "b", "ports": [{"name": "sctp", "containerPort": 9, "protocol": "SCTP"}]},
                ],
                "initContainers": [
                    {"name": "sidecar", "restartPolicy": "Always", "ports": [{"name": "metrics", "containerPort": 9100}]},
                    {"name": "init", "ports": [{"name": "ignored", "containerPort": 1}]},
                ],
            },
            "status": {
                "podIP": "10.0.0.5",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "phase": "Running",
            },
        }));
        assert_eq!(p.namespace, "default");
        assert_eq!(
            (p.name.as_str(), p.uid.as_str(), p.node.as_str()),
            ("web", "u1", "node-b")
        );
        assert_eq!(
            p.labels,
            vec![("app".into(), "web".into()), ("z".into(), "1".into())]
        );
        assert_eq!(
            p.ips.iter().map(wit_to_ip).collect::<Vec<_>>(),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(!p.host_network);
        assert!(p.ready);
        assert_eq!(p.phase, wit::PodPhase::Running);
        assert_eq!(
            p.ports,
            vec![
                wit::ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: wit::Protocol::Tcp
                },
                wit::ContainerPort {
                    name: None,
                    port: 53,
                    protocol: wit::Protocol::Udp
                },
                wit::ContainerPort {
                    name: Some("sctp".into()),
                    port: 9,
                    protocol: wit::Protocol::Sctp
                },
                wit::ContainerPort {
                    name: Some("metrics".into()),
                    port: 9100,
                    protocol: wit::Protocol::Tcp
                },
            ]
        );

        // podIP when podIPs is missing; Pending when there is no phase;
        // not ready without a True Ready condition.
        let p = k8s_pod(json!({
            "metadata": {"namespace": "prod", "name": "new"},
            "spec": {"hostNetwork": true, "containers": []},
            "status": {"podIP": "10.0.0.6", "conditions": [{"type": "Ready", "status": "False"}]},
        }));
        assert_eq!(p.namespace, "prod");
        assert_eq!(
            cidrs(
                &p.ips
                    .iter()
                    .map(|a| host_cidr(wit_to_ip(a)))
                    .collect::<Vec<_>>()
            ),
            ["10.0.0.6/32"]
        );
        assert_eq!(p.phase, wit::PodPhase::Pending);
        assert!(!p.ready && p.host_network);
        assert_eq!(p.node, "");

        let p = k8s_pod(json!({"metadata": {"name": "bare"}}));
        assert!(p.ips.is_empty() && p.ports.is_empty());
        assert_eq!(p.phase, wit::PodPhase::Pending);
    }

    #[test]
    fn default_policy_types() {
        // No rules at all: ingress isolation, nothing allowed.
        let p = run_spec("spec:\n  podSelector: {}\n").unwrap();
        assert_eq!(p.directions, [wit::PolicyDirection::Ingress]);
        assert!(p.ingress.is_empty() && p.egress.is_empty());

        // Egress rules add Egress.
        let p = run_spec("spec:\n  podSelector: {}\n  egress:\n  - {}\n").unwrap();
        assert_eq!(
            p.directions,
            [wit::PolicyDirection::Ingress, wit::PolicyDirection::Egress]
        );
        assert_eq!(p.egress.len(), 1);

        // An empty egress list does not.
        let p = run_spec("spec:\n  podSelector: {}\n  egress: []\n").unwrap();
        assert_eq!(p.directions, [wit::PolicyDirection::Ingress]);

        // Explicit types win; rules of a direction not governed are dropped.
        let p = run_spec("spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  ingress:\n  - {}\n")
            .unwrap();
        assert_eq!(p.directions, [wit::PolicyDirection::Egress]);
        assert!(p.ingress.is_empty() && p.egress.is_empty());

        let p = run_spec(
            "spec:\n  podSelector: {}\n  policyTypes: [Egress, Ingress, Ingress]\n  ingress:\n  - {}\n",
        )
        .unwrap_err();
        assert!(p.contains("more than two"), "{p}");

        let p = run_spec(
            "spec:\n  podSelector: {}\n  policyTypes: [Egress, Ingress]\n  ingress:\n  - {}\n",
        )
        .unwrap();
        assert_eq!(
            p.directions,
            [wit::PolicyDirection::Ingress, wit::PolicyDirection::Egress]
        );
        assert_eq!(p.ingress.len(), 1);

        // An empty list is the default.
        let p = run_spec("spec:\n  podSelector: {}\n  policyTypes: []\n").unwrap();
        assert_eq!(p.directions, [wit::PolicyDirection::Ingress]);
    }

    #[test]
    fn metadata_and_selected_pods() {
        let p = run("
metadata:
  namespace: prod
  name: db
  annotations: {z: '1', a: '2'}
spec:
  podSelector:
    matchLabels: {app: db}
")
        .unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("prod", "db"));
        assert_eq!(
            p.annotations,
            vec![("a".into(), "2".into()), ("z".into(), "1".into())]
        );
        // Sorted; host-network and finished pods are left out; other
        // namespaces too.
        assert_eq!(names(&p), ["prod/db-1", "prod/db-2"]);

        let p = run_spec("spec:\n  podSelector: {}\n").unwrap();
        assert_eq!(names(&p), ["prod/db-1", "prod/db-2", "prod/web"]);

        // A policy without a namespace is in `default`, which has no pods.
        let p = run("metadata: {name: x}\nspec: {podSelector: {}}\n").unwrap();
        assert_eq!(p.namespace, "default");
        assert!(p.selected.is_empty());
    }

    #[test]
    fn empty_rule_allows_all_and_no_rules_deny() {
        let p = run_spec("spec:\n  podSelector: {}\n  ingress: []\n").unwrap();
        assert!(p.ingress.is_empty());
        assert_eq!(p.directions, [wit::PolicyDirection::Ingress]);

        let p =
            run_spec("spec:\n  podSelector: {}\n  ingress:\n  - {}\n  - from: []\n    ports: []\n")
                .unwrap();
        let all = wit::PolicyRule {
            peers: vec![],
            ports: vec![],
            named_ports: vec![],
        };
        assert_eq!(p.ingress, [all.clone(), all]);
    }

    #[test]
    fn selector_peers() {
        let p = run_spec(
            "
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: db}}
    - namespaceSelector: {matchLabels: {team: x}}
    - namespaceSelector: {matchLabels: {team: y}}
      podSelector: {matchLabels: {app: db}}
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: other}}
    - namespaceSelector: {}
    - namespaceSelector: {}
      podSelector: {matchLabels: {app: db}}
    - podSelector: {}
    - podSelector: {matchLabels: {app: nothing}}
",
        )
        .unwrap();
        let peers = &p.ingress[0].peers;
        let got: Vec<(String, Vec<String>)> = peers
            .iter()
            .map(|p| {
                assert!(p.addresses.except.is_empty());
                (p.description.clone(), cidrs(&p.addresses.cidrs))
            })
            .collect();
        let want = |d: &str, c: &[&str]| {
            (
                d.to_string(),
                c.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            got,
            [
                want(
                    "pods app=db in namespace prod",
                    &["10.0.0.1/32", "10.0.0.2/32", "fd00::1/128"]
                ),
                want(
                    "every pod in namespaces team=x",
                    &["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd00::1/128"]
                ),
                // `dev` is in the map without its name label: it is added.
                want("pods app=db in namespaces team=y", &["10.1.0.1/32"]),
                // `other` is not in the map: it has just the name label.
                want(
                    "every pod in namespaces kubernetes.io/metadata.name=other",
                    &["10.2.0.1/32"]
                ),
                want(
                    "every pod in every namespace",
                    &[
                        "10.0.0.1/32",
                        "10.0.0.2/32",
                        "10.0.0.3/32",
                        "10.1.0.1/32",
                        "10.2.0.1/32",
                        "fd00::1/128"
                    ],
                ),
                want(
                    "pods app=db in every namespace",
                    &[
                        "10.0.0.1/32",
                        "10.0.0.2/32",
                        "10.1.0.1/32",
                        "10.2.0.1/32",
                        "fd00::1/128"
                    ],
                ),
                want(
                    "every pod in namespace prod",
                    &["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd00::1/128"]
                ),
                // Matches nothing, and stays: an empty peer list would be everyone.
                want("pods app=nothing in namespace prod", &[]),
            ]
        );
    }

    #[test]
    fn ip_block_peers() {
        let p = run_spec(
            "
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/16
        except: [10.0.1.0/24, 10.0.2.0/24]
    - ipBlock: {cidr: 10.9.8.7/24}
    - ipBlock: {cidr: 'fd00::/64', except: ['fd00::1/128']}
",
        )
        .unwrap();
        let peers = &p.egress[0].peers;
        assert_eq!(
            peers[0].description,
            "ipBlock 10.0.0.0/16 except 10.0.1.0/24, 10.0.2.0/24"
        );
        assert_eq!(cidrs(&peers[0].addresses.cidrs), ["10.0.0.0/16"]);
        assert_eq!(
            cidrs(&peers[0].addresses.except),
            ["10.0.1.0/24", "10.0.2.0/24"]
        );
        // Host bits are cleared, as the API server's parser does.
        assert_eq!(peers[1].description, "ipBlock 10.9.8.0/24");
        assert_eq!(cidrs(&peers[1].addresses.cidrs), ["10.9.8.0/24"]);
        assert!(peers[1].addresses.except.is_empty());
        assert_eq!(cidrs(&peers[2].addresses.except), ["fd00::1/128"]);
    }

    #[test]
    fn ports_and_protocols() {
        let p = run_spec(
            "
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: 80
    - port: 53
      protocol: UDP
    - port: 8000
      endPort: 8100
    - protocol: SCTP
    - {}
    - port: '443'
    - port: 80
",
        )
        .unwrap();
        let r = &p.ingress[0];
        let range = |protocol, first, last| wit::PortRange {
            protocol,
            first,
            last,
        };
        assert_eq!(
            r.ports,
            [
                range(wit::Protocol::Tcp, 80, 80),
                range(wit::Protocol::Udp, 53, 53),
                range(wit::Protocol::Tcp, 8000, 8100),
                range(wit::Protocol::Sctp, 0, 65535),
                range(wit::Protocol::Tcp, 0, 65535),
                range(wit::Protocol::Tcp, 443, 443),
            ]
        );
        assert!(r.named_ports.is_empty() && r.peers.is_empty());
    }

    #[test]
    fn named_ports_for_ingress_resolve_on_selected_pods() {
        let p = run_spec(
            "
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - namespaceSelector: {}
    ports:
    - port: http
    - port: http
      protocol: UDP
    - port: 5432
",
        )
        .unwrap();
        let r = &p.ingress[0];
        assert_eq!(r.ports.len(), 1);
        assert_eq!(r.named_ports.len(), 2);
        assert_eq!(
            (r.named_ports[0].protocol, r.named_ports[0].name.as_str()),
            (wit::Protocol::Tcp, "http")
        );
        // db-1 (dual stack) has http on 8080, db-2 on 9090; the host-network
        // and finished pods are not selected.
        assert_eq!(
            targets(&r.named_ports[0]),
            ["10.0.0.1 8080", "10.0.0.2 9090", "fd00::1 8080"]
        );
        // Nobody has a UDP port named http.
        assert_eq!(r.named_ports[1].protocol, wit::Protocol::Udp);
        assert!(r.named_ports[1].targets.is_empty());
    }

    #[test]
    fn named_ports_for_egress_resolve_on_peer_pods() {
        let p = run_spec(
            "
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {team: y}}
    - ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.2/32]}
    ports:
    - port: http
  - ports:
    - port: http
  - to:
    - podSelector: {matchLabels: {app: db}}
    ports:
    - port: http
  - to:
    - ipBlock: {cidr: 192.168.0.0/16}
    ports:
    - port: http
",
        )
        .unwrap();
        assert_eq!(
            p.directions,
            [wit::PolicyDirection::Ingress, wit::PolicyDirection::Egress]
        );
        assert!(p.ingress.is_empty());
        let t = |i: usize| targets(&p.egress[i].named_ports[0]);
        // dev/db through the namespace selector; prod pods inside the block
        // but not the excepted db-2; only db-1's IPv4 address is in the block.
        assert_eq!(t(0), ["10.0.0.1 8080", "10.0.0.3 80", "10.1.0.1 7070"]);
        // No peers: every pod with the port (other/db names its port `web`).
        assert_eq!(
            t(1),
            [
                "10.0.0.1 8080",
                "10.0.0.2 9090",
                "10.0.0.3 80",
                "10.1.0.1 7070",
                "fd00::1 8080"
            ]
        );
        // A selector peer: both families of a dual-stack pod.
        assert_eq!(t(2), ["10.0.0.1 8080", "10.0.0.2 9090", "fd00::1 8080"]);
        // Host-network pods are never destinations of a named port.
        assert!(t(3).is_empty());
    }

    #[test]
    fn host_network_and_finished_pods_are_not_peers() {
        let p = run_spec(
            "
spec:
  podSelector: {}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: db}}
",
        )
        .unwrap();
        let c = cidrs(&p.ingress[0].peers[0].addresses.cidrs);
        assert!(
            !c.iter()
                .any(|c| c.starts_with("192.168.") || c == "10.0.0.9/32" || c == "10.0.0.8/32"),
            "{c:?}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |spec: &str| run_spec(spec).unwrap_err();
        assert_eq!(
            err("spec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n"),
            "spec.ingress[0].from[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
        );
        assert_eq!(
            err(
                "spec:\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24, 10.1.0.0/24]}\n"
            ),
            "spec.egress[0].to[0].ipBlock.except[1]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`"
        );
        assert!(err("spec:\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}\n").contains("strict subset"));
        assert!(err("spec:\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.0/16, except: ['fd00::/64']}\n").contains("strict subset"));
        assert!(
            err("spec:\n  egress:\n  - to:\n    - ipBlock: {cidr: 'nope'}\n")
                .contains("must be a valid CIDR")
        );
        assert_eq!(
            err("spec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: ''}\n"),
            "spec.ingress[0].from[0].ipBlock.cidr: Required value"
        );
        assert_eq!(
            err("spec:\n  podSelector:\n    matchExpressions: [{key: app, operator: Foo}]\n"),
            "spec.podSelector.matchExpressions[0].operator: Invalid value: \"Foo\": \"Foo\" is not a valid label selector operator"
        );
        assert!(
            err("spec:\n  ingress:\n  - from:\n    - {}\n    - namespaceSelector:\n        matchExpressions: [{key: team, operator: In}]\n")
                .starts_with("spec.ingress[0].from[0]: Required value: must specify a peer")
        );
        assert!(
            err("spec:\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions: [{key: team, operator: In}]\n")
                .starts_with("spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: Required value")
        );
        assert_eq!(
            err(
                "spec:\n  ingress:\n  - {}\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n"
            ),
            "spec.ingress[1].from[0]: Forbidden: may not specify both ipBlock and another peer"
        );
        assert_eq!(
            err("spec:\n  ingress:\n  - ports:\n    - {port: 90, endPort: 80}\n"),
            "spec.ingress[0].ports[0].endPort: Invalid value: 80: must be greater than or equal to `port`"
        );
        assert!(
            err("spec:\n  ingress:\n  - ports:\n    - {port: http, endPort: 80}\n")
                .contains("when `port` is non-numeric")
        );
        assert!(
            err("spec:\n  ingress:\n  - ports:\n    - {endPort: 80}\n")
                .contains("when `port` is not specified")
        );
        assert!(
            err("spec:\n  ingress:\n  - ports:\n    - {port: 80, endPort: 70000}\n")
                .contains("endPort: Invalid value: 70000: must be between 1 and 65535")
        );
        assert_eq!(
            err("spec:\n  egress:\n  - ports:\n    - {port: 0}\n"),
            "spec.egress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert!(
            err("spec:\n  egress:\n  - ports:\n    - {port: '99999'}\n")
                .contains("must be between 1 and 65535")
        );
        assert!(
            err("spec:\n  egress:\n  - ports:\n    - {port: Http}\n")
                .contains("port: Invalid value: \"Http\": must contain only")
        );
        assert_eq!(
            err("spec:\n  egress:\n  - ports:\n    - {port: 53, protocol: ICMP}\n"),
            "spec.egress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\""
        );
        assert_eq!(
            err("spec:\n  policyTypes: [Ingress, Sideways]\n"),
            "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\""
        );
        // Rules of a direction that is not governed are still checked.
        assert!(
            err("spec:\n  policyTypes: [Ingress]\n  egress:\n  - ports: [{port: 0}]\n")
                .starts_with("spec.egress[0].ports[0].port")
        );
    }

    #[test]
    fn sloppy_addresses_parse_like_the_api_server() {
        assert_eq!(
            parse_cidr("010.000.1.0/24"),
            Some("10.0.1.0/24".parse().unwrap())
        );
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("10.0.0.0"), None);
        assert_eq!(parse_cidr("10.0.0.0/-1"), None);
        assert_eq!(parse_cidr("1.2.3.4.5/8"), None);
        assert_eq!(parse_cidr("fd00::1/64"), Some("fd00::/64".parse().unwrap()));
        assert_eq!(parse_ip("256.0.0.1"), None);
    }
}
