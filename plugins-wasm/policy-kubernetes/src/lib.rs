//! `policy-kubernetes`: the built-in NetworkPolicy module. It renders one
//! `networking.k8s.io/v1` NetworkPolicy, with its selectors resolved by the
//! host, into the policy table's sets (see `switchyard_sdk::policy`):
//!
//! - every selected pod of this node is isolated for each direction the
//!   policy governs (policyTypes, with the API's defaults applied by the
//!   host);
//! - every rule becomes boxes `pod . peer range . protocol . port range`:
//!   peers are the rule's peers (pod and namespace selectors resolved to pod
//!   addresses, ipBlocks minus their excepts), or every address when the
//!   rule has none; ports are the rule's ports and endPort ranges, or every
//!   port of every protocol when it has none;
//! - a named port matches only on destinations that have it, with its
//!   number there: the selected pod itself for ingress, the peer pod for
//!   egress (the host resolved the targets);
//! - a rule that allows nothing (a selector matching no pods) renders
//!   nothing, while its policy still isolates.
//!
//! The union of all policies selecting a pod is the union of their boxes,
//! which the host merges. Return traffic of allowed connections is accepted
//! by the host's base chains (conntrack), and policy is judged after Service
//! DNAT, on the backend pod. The annotation `switchyard.dev/policy-mode:
//! monitor` renders into the monitor sets: counted and logged, not dropped.

use switchyard_sdk::network_policy::Guest;
use switchyard_sdk::policy::{self, PolicyPlan, everything, ranges};
use switchyard_sdk::types::{
    IpAddress, IpFamily, ModuleError, ModuleInfo, NodeContext, PlanFragment, Policy,
    PolicyDirection, PolicyRule, Protocol, Role,
};

struct PolicyKubernetes;

impl Guest for PolicyKubernetes {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "policy-kubernetes",
            env!("CARGO_PKG_VERSION"),
            Role::NetworkPolicy,
            "Enforces networking.k8s.io/v1 NetworkPolicy with nftables sets.",
            switchyard_sdk::config::NO_CONFIG_SCHEMA,
        )
    }

    fn render_policy(
        context: NodeContext,
        policy: Policy,
        _config: String,
    ) -> Result<PlanFragment, ModuleError> {
        render(&context, &policy)
    }
}

fn dir_name(d: PolicyDirection) -> &'static str {
    match d {
        PolicyDirection::Ingress => "ingress",
        PolicyDirection::Egress => "egress",
    }
}

/// A peer's rule id, what it is, and its ranges in the pod's family.
type Peer = (String, String, Vec<(IpAddress, IpAddress)>);

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

/// The policy's fragment on this node.
pub fn render(ctx: &NodeContext, policy: &Policy) -> Result<PlanFragment, ModuleError> {
    let mode = policy::mode(&policy.annotations).map_err(|e| {
        ModuleError::InvalidInput(format!(
            "NetworkPolicy {}/{}: {e}",
            policy.namespace, policy.name
        ))
    })?;
    let mut plan = PolicyPlan::new(mode);
    let local: Vec<IpAddress> = policy
        .selected
        .iter()
        .filter(|p| p.node == ctx.node && !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    for &d in &policy.directions {
        let rules = match d {
            PolicyDirection::Ingress => &policy.ingress,
            PolicyDirection::Egress => &policy.egress,
        };
        for &pod in &local {
            plan.isolate(d, pod);
            for (i, rule) in rules.iter().enumerate() {
                render_rule(&mut plan, d, i, rule, pod);
            }
        }
    }
    Ok(plan.build())
}

fn render_rule(
    plan: &mut PolicyPlan,
    d: PolicyDirection,
    index: usize,
    rule: &PolicyRule,
    pod: IpAddress,
) {
    let f: IpFamily = pod.family();
    // (rule id, what the peer is, its ranges in the pod's family)
    let peers: Vec<Peer> = if rule.peers.is_empty() {
        vec![(
            format!("{}/{index}", dir_name(d)),
            "every peer".to_string(),
            vec![everything(f)],
        )]
    } else {
        rule.peers
            .iter()
            .enumerate()
            .map(|(p, peer)| {
                (
                    format!("{}/{index}/peer-{p}", dir_name(d)),
                    peer.description.clone(),
                    ranges(&peer.addresses, f),
                )
            })
            .collect()
    };
    let comment = |peer: &str, ports: &str| -> Option<String> {
        // The host refuses quotes in comments (they end up in nft text).
        let mut c = format!("{} rule {index}: {peer}, {ports}", dir_name(d)).replace('"', "'");
        if c.len() > 120 {
            let mut end = 117;
            while !c.is_char_boundary(end) {
                end -= 1;
            }
            c.truncate(end);
            c.push_str("...");
        }
        Some(c)
    };
    if rule.ports.is_empty() && rule.named_ports.is_empty() {
        for (id, what, rs) in &peers {
            for r in rs {
                plan.allow(id, comment(what, "every port"), d, pod, *r, None);
            }
        }
        return;
    }
    for port in &rule.ports {
        let text = format!("{} {}-{}", proto(port.protocol), port.first, port.last);
        for (id, what, rs) in &peers {
            for r in rs {
                plan.allow(
                    id,
                    comment(what, &text),
                    d,
                    pod,
                    *r,
                    Some((port.protocol, port.first, port.last)),
                );
            }
        }
    }
    for named in &rule.named_ports {
        let text = format!("{} port {}", proto(named.protocol), named.name);
        match d {
            // The destination is the selected pod: its own number for the name.
            PolicyDirection::Ingress => {
                for t in named.targets.iter().filter(|t| t.address == pod) {
                    for (id, what, rs) in &peers {
                        for r in rs {
                            plan.allow(
                                id,
                                comment(what, &text),
                                d,
                                pod,
                                *r,
                                Some((named.protocol, t.port, t.port)),
                            );
                        }
                    }
                }
            }
            // The destination is the peer: each target pod with its number
            // (the host gave only targets inside the rule's peers).
            PolicyDirection::Egress => {
                for t in named.targets.iter().filter(|t| t.address.family() == f) {
                    let id = format!("{}/{index}/named-{}", dir_name(d), named.name);
                    plan.allow(
                        &id,
                        comment("a pod with the named port", &text),
                        d,
                        pod,
                        (t.address, t.address),
                        Some((named.protocol, t.port, t.port)),
                    );
                }
            }
        }
    }
}

switchyard_sdk::export_network_policy!(PolicyKubernetes);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::types::{
        AddressSet, ContainerPort, IpCidr, NamedPort, Pod, PodPhase, PolicyPeer, PortRange,
        PortTarget,
    };

    fn ctx() -> NodeContext {
        NodeContext {
            node: "node-1".into(),
            zone: None,
            node_ips: vec![],
            cluster_cidrs: vec![],
            service_cidrs: vec![],
            families: vec![IpFamily::Ipv4, IpFamily::Ipv6],
            masquerade: false,
            default_scheduler: "random".into(),
        }
    }

    fn pod(name: &str, node: &str, ips: &[&str]) -> Pod {
        Pod {
            namespace: "x".into(),
            name: name.into(),
            uid: name.into(),
            labels: vec![],
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            node: node.into(),
            host_network: false,
            ports: vec![ContainerPort {
                name: Some("http".into()),
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            phase: PodPhase::Running,
            ready: true,
        }
    }

    fn policy(ingress: Vec<PolicyRule>) -> Policy {
        Policy {
            namespace: "x".into(),
            name: "p".into(),
            annotations: vec![],
            selected: vec![
                pod("a", "node-1", &["10.244.1.5", "fd00::5"]),
                pod("b", "node-2", &["10.244.2.5"]),
            ],
            directions: vec![PolicyDirection::Ingress],
            ingress,
            egress: vec![],
        }
    }

    /// The fragment's elements as text (`set key . key`).
    fn keys(f: &PlanFragment) -> Vec<String> {
        switchyard_sdk::testing::elements(f)
    }

    #[test]
    fn deny_all_isolates_local_pods_in_both_families_and_allows_nothing() {
        let f = render(&ctx(), &policy(vec![])).unwrap();
        assert_eq!(
            keys(&f),
            ["ingress-isolated4 10.244.1.5", "ingress-isolated6 fd00::5"]
        );
    }

    #[test]
    fn an_empty_rule_allows_everything_and_peers_and_ports_make_boxes() {
        let f = render(
            &ctx(),
            &policy(vec![PolicyRule {
                peers: vec![],
                ports: vec![],
                named_ports: vec![],
            }]),
        )
        .unwrap();
        assert!(
            keys(&f)
                .contains(&"ingress-allow-all4 10.244.1.5 . 0.0.0.0-255.255.255.255".to_string())
        );
        let peer = PolicyPeer {
            description: "ipBlock".into(),
            addresses: AddressSet {
                cidrs: vec!["10.0.0.0/8".parse::<IpCidr>().unwrap()],
                except: vec!["10.244.0.0/16".parse().unwrap()],
            },
        };
        let f = render(
            &ctx(),
            &policy(vec![PolicyRule {
                peers: vec![peer],
                ports: vec![PortRange {
                    protocol: Protocol::Udp,
                    first: 53,
                    last: 53,
                }],
                named_ports: vec![],
            }]),
        )
        .unwrap();
        let k = keys(&f);
        assert!(
            k.contains(
                &"ingress-allow4 10.244.1.5 . 10.0.0.0-10.243.255.255 . udp . 53".to_string()
            ),
            "{k:?}"
        );
        assert!(
            k.contains(
                &"ingress-allow4 10.244.1.5 . 10.245.0.0-10.255.255.255 . udp . 53".to_string()
            ),
            "{k:?}"
        );
        // The IPv6 address is isolated; an IPv4-only peer allows it nothing.
        assert!(!k.iter().any(|x| x.starts_with("ingress-allow6")), "{k:?}");
        // Comments say which rule and peer an element comes from.
        assert!(
            f.items
                .iter()
                .any(|i| i.comment.as_deref() == Some("ingress rule 0: ipBlock, UDP 53-53"))
        );
    }

    #[test]
    fn named_ports_match_only_their_destination() {
        let named = NamedPort {
            protocol: Protocol::Tcp,
            name: "http".into(),
            targets: vec![
                PortTarget {
                    address: "10.244.1.5".parse().unwrap(),
                    port: 8080,
                },
                PortTarget {
                    address: "10.244.1.9".parse().unwrap(),
                    port: 9090,
                },
            ],
        };
        let rule = PolicyRule {
            peers: vec![],
            ports: vec![],
            named_ports: vec![named],
        };
        let f = render(&ctx(), &policy(vec![rule.clone()])).unwrap();
        let k = keys(&f);
        assert!(
            k.contains(
                &"ingress-allow4 10.244.1.5 . 0.0.0.0-255.255.255.255 . tcp . 8080".to_string()
            ),
            "{k:?}"
        );
        assert!(!k.iter().any(|x| x.contains("9090")), "{k:?}");
        assert!(
            f.items
                .iter()
                .any(|i| i.comment.as_deref() == Some("ingress rule 0: every peer, TCP port http")),
            "{:?}",
            f.items
        );
        // Egress: each target with its own number, nothing else.
        let mut p = policy(vec![]);
        p.directions = vec![PolicyDirection::Egress];
        p.egress = vec![rule];
        let k = keys(&render(&ctx(), &p).unwrap());
        assert!(
            k.contains(&"egress-allow4 10.244.1.5 . 10.244.1.9 . tcp . 9090".to_string()),
            "{k:?}"
        );
        assert!(
            k.contains(&"egress-allow4 10.244.1.5 . 10.244.1.5 . tcp . 8080".to_string()),
            "{k:?}"
        );
        assert_eq!(
            k.iter().filter(|x| x.starts_with("egress-allow")).count(),
            2,
            "{k:?}"
        );
    }

    #[test]
    fn monitor_mode_writes_the_monitor_sets_and_bad_modes_are_refused() {
        let mut p = policy(vec![PolicyRule {
            peers: vec![],
            ports: vec![],
            named_ports: vec![],
        }]);
        p.annotations = vec![(policy::MODE_ANNOTATION.into(), "monitor".into())];
        let k = keys(&render(&ctx(), &p).unwrap());
        assert!(k.iter().all(|x| x.starts_with("ingress-monitor")), "{k:?}");
        p.annotations = vec![(policy::MODE_ANNOTATION.into(), "dry-run".into())];
        let e = render(&ctx(), &p).unwrap_err();
        assert!(format!("{e:?}").contains("NetworkPolicy x/p"), "{e:?}");
    }
}
