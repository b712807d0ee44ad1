//! `namespace-isolation`: deny traffic across namespaces, except DNS.
//!
//! An SDK example (see README.md next to this file). Applied with
//! `podSelector: {}`, a WasmNetworkPolicy selects every pod of its
//! namespace; the module isolates those of its node and allows them to
//! talk to each other only: ingress from, and egress to, the addresses of
//! the selected pods (the host resolved them, on every node). Egress to
//! DNS (UDP and TCP on `dnsPorts`, to `dnsCidrs`) is allowed too, so pods
//! still resolve names through the cluster's DNS in another namespace.
//!
//! The policy's `policyTypes` say which directions it governs: with only
//! `Ingress`, other namespaces cannot connect in but pods may connect out.
//! The annotation `switchyard.dev/policy-mode: monitor` renders into the
//! monitor sets: would-be drops are counted and logged, nothing is dropped.

use serde::Deserialize;
use switchyard_sdk::network_policy::Guest;
use switchyard_sdk::policy::{self, PolicyPlan, everything, ranges};
use switchyard_sdk::types::{
    AddressSet, IpCidr, ModuleError, ModuleInfo, NodeContext, PlanFragment, Policy,
    PolicyDirection, Protocol, Role,
};

/// The module's config, as [`SCHEMA`] describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct Config {
    /// DNS ports, allowed over UDP and TCP.
    dns_ports: Vec<u16>,
    /// Where DNS may go (every address when empty).
    dns_cidrs: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dns_ports: vec![53],
            dns_cidrs: vec![],
        }
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "dnsPorts": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
      "description": "DNS ports, allowed over UDP and TCP (default [53]; [] allows no DNS)."},
    "dnsCidrs": {"type": "array", "items": {"type": "string"},
      "description": "Where DNS may go, for example the cluster DNS pods' CIDR (every address when absent)."}
  }
}"#;

struct NamespaceIsolation;

impl Guest for NamespaceIsolation {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "namespace-isolation",
            env!("CARGO_PKG_VERSION"),
            Role::NetworkPolicy,
            "The selected pods talk only to each other, and to DNS.",
            SCHEMA,
        )
    }

    fn render_policy(
        context: NodeContext,
        policy: Policy,
        config: String,
    ) -> Result<PlanFragment, ModuleError> {
        let config: Config = switchyard_sdk::config::parse(&config)?;
        render(&context, &policy, &config)
    }
}

switchyard_sdk::export_network_policy!(NamespaceIsolation);

fn render(
    ctx: &NodeContext,
    policy: &Policy,
    config: &Config,
) -> Result<PlanFragment, ModuleError> {
    let mode = policy::mode(&policy.annotations).map_err(|e| {
        ModuleError::InvalidInput(format!(
            "WasmNetworkPolicy {}/{}: {e}",
            policy.namespace, policy.name
        ))
    })?;
    let dns_cidrs = config
        .dns_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<IpCidr>().map_err(|e| {
                ModuleError::InvalidConfig(format!("dnsCidrs[{i}]: {c:?} is not a CIDR: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Every address of the selected pods, on every node: the island.
    let members = AddressSet {
        cidrs: policy
            .selected
            .iter()
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().map(|a| a.host_cidr()))
            .collect(),
        except: vec![],
    };
    let mut plan = PolicyPlan::new(mode);
    for pod in policy
        .selected
        .iter()
        .filter(|p| p.node == ctx.node && !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
    {
        let f = pod.family();
        for &d in &policy.directions {
            plan.isolate(d, pod);
            for r in ranges(&members, f) {
                let (id, what) = match d {
                    PolicyDirection::Ingress => ("ingress/namespace", "from this namespace"),
                    PolicyDirection::Egress => ("egress/namespace", "to this namespace"),
                };
                plan.allow(id, Some(what.into()), d, pod, r, None);
            }
            if d == PolicyDirection::Egress {
                let dns: Vec<_> = if dns_cidrs.is_empty() {
                    vec![everything(f)]
                } else {
                    let set = AddressSet {
                        cidrs: dns_cidrs.clone(),
                        except: vec![],
                    };
                    ranges(&set, f)
                };
                for r in dns {
                    for &port in &config.dns_ports {
                        for proto in [Protocol::Udp, Protocol::Tcp] {
                            plan.allow(
                                "egress/dns",
                                Some("DNS".into()),
                                d,
                                pod,
                                r,
                                Some((proto, port, port)),
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(plan.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::{elements, node_context, pod, policy};

    fn config(json: &str) -> Config {
        switchyard_sdk::config::parse(json).unwrap()
    }

    fn shop(directions: &[PolicyDirection]) -> Policy {
        policy(
            "shop",
            "isolation",
            vec![
                pod("shop", "a", "node-1", &[], &["10.244.1.5"]),
                pod("shop", "b", "node-1", &[], &["10.244.1.6"]),
                pod("shop", "c", "node-2", &[], &["10.244.2.9"]),
            ],
            directions,
        )
    }

    #[test]
    fn local_pods_talk_to_the_namespace_and_to_dns() {
        let both = [PolicyDirection::Ingress, PolicyDirection::Egress];
        let f = render(&node_context("node-2"), &shop(&both), &config("")).unwrap();
        assert_eq!(
            elements(&f),
            [
                "ingress-isolated4 10.244.2.9",
                // adjacent pod addresses merge into one range
                "ingress-allow-all4 10.244.2.9 . 10.244.1.5-10.244.1.6",
                "ingress-allow-all4 10.244.2.9 . 10.244.2.9",
                "egress-isolated4 10.244.2.9",
                "egress-allow-all4 10.244.2.9 . 10.244.1.5-10.244.1.6",
                "egress-allow-all4 10.244.2.9 . 10.244.2.9",
                "egress-allow4 10.244.2.9 . 0.0.0.0-255.255.255.255 . udp . 53",
                "egress-allow4 10.244.2.9 . 0.0.0.0-255.255.255.255 . tcp . 53",
            ]
        );
    }

    #[test]
    fn ingress_only_and_dns_limited_to_cidrs() {
        let f = render(
            &node_context("node-1"),
            &shop(&[PolicyDirection::Ingress]),
            &config(""),
        )
        .unwrap();
        assert_eq!(elements(&f).len(), 6, "{:?}", elements(&f));
        assert!(elements(&f).iter().all(|e| e.starts_with("ingress-")));

        let c = config(r#"{"dnsCidrs": ["10.96.0.10/32"], "dnsPorts": [53, 5353]}"#);
        let f = render(
            &node_context("node-2"),
            &shop(&[PolicyDirection::Egress]),
            &c,
        )
        .unwrap();
        let dns: Vec<String> = elements(&f)
            .into_iter()
            .filter(|e| e.contains(" . udp . ") || e.contains(" . tcp . "))
            .collect();
        assert_eq!(
            dns,
            [
                "egress-allow4 10.244.2.9 . 10.96.0.10 . udp . 53",
                "egress-allow4 10.244.2.9 . 10.96.0.10 . tcp . 53",
                "egress-allow4 10.244.2.9 . 10.96.0.10 . udp . 5353",
                "egress-allow4 10.244.2.9 . 10.96.0.10 . tcp . 5353",
            ]
        );
        let bad = render(
            &node_context("node-2"),
            &shop(&[PolicyDirection::Egress]),
            &config(r#"{"dnsCidrs": ["dns"]}"#),
        );
        assert!(
            matches!(bad, Err(ModuleError::InvalidConfig(m)) if m.starts_with("dnsCidrs[0]: \"dns\""))
        );
    }
}
