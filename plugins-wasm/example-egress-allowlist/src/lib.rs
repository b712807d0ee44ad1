//! `egress-allowlist`: the pods a WasmNetworkPolicy selects may open
//! connections only to an allow-list of CIDRs, and to DNS.
//!
//! An SDK example (see README.md next to this file): a policy that is
//! awkward as a NetworkPolicy (one ipBlock rule per CIDR, repeated in every
//! namespace) and short as a module. The host resolves the policy's
//! `podSelector`; the module isolates the selected pods of its node for
//! egress and allows, per pod, boxes `pod . cidr range [. protocol . ports]`
//! in the policy table's sets (`switchyard_sdk::policy`). Replies to allowed
//! connections and connections *to* the pods are untouched (the host's base
//! chains accept established traffic; ingress is not isolated).
//!
//! The annotation `switchyard.dev/policy-mode: monitor` renders into the
//! monitor sets: would-be drops are counted and logged, nothing is dropped.

use serde::Deserialize;
use switchyard_sdk::network_policy::Guest;
use switchyard_sdk::policy::{self, PolicyPlan, everything, ranges};
use switchyard_sdk::types::{
    AddressSet, IpCidr, ModuleError, ModuleInfo, NodeContext, PlanFragment, Policy,
    PolicyDirection, Protocol, Role,
};

/// A port or port range the allow-list is limited to.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Port {
    #[serde(default = "tcp")]
    protocol: String,
    port: u16,
    end_port: Option<u16>,
}

fn tcp() -> String {
    "TCP".into()
}

/// The module's config, as [`SCHEMA`] describes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    /// Where the pods may connect to (nowhere but DNS when empty).
    #[serde(default)]
    cidrs: Vec<String>,
    /// Parts of `cidrs` they may not connect to.
    #[serde(default)]
    except: Vec<String>,
    /// Only these destination ports (every port of every protocol when empty).
    #[serde(default)]
    ports: Vec<Port>,
    /// Also allow DNS (UDP and TCP port 53) to every address.
    #[serde(default = "yes")]
    allow_dns: bool,
}

fn yes() -> bool {
    true
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "cidrs": {"type": "array", "items": {"type": "string"},
      "description": "CIDRs the selected pods may connect to, IPv4 and IPv6 (none by default)."},
    "except": {"type": "array", "items": {"type": "string"},
      "description": "Parts of those CIDRs they may not connect to."},
    "ports": {"type": "array", "description": "Only these destination ports (every port when absent).",
      "items": {"type": "object", "additionalProperties": false, "required": ["port"],
        "properties": {
          "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
          "port": {"type": "integer", "minimum": 1, "maximum": 65535},
          "endPort": {"type": "integer", "minimum": 1, "maximum": 65535}}}},
    "allowDns": {"type": "boolean", "description": "Also allow UDP and TCP port 53 everywhere (default true)."}
  }
}"#;

struct EgressAllowlist;

impl Guest for EgressAllowlist {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "egress-allowlist",
            env!("CARGO_PKG_VERSION"),
            Role::NetworkPolicy,
            "Selected pods may open connections only to an allow-list of CIDRs, and to DNS.",
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

switchyard_sdk::export_network_policy!(EgressAllowlist);

fn cidrs(list: &[String], field: &str) -> Result<Vec<IpCidr>, ModuleError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse().map_err(|e| {
                ModuleError::InvalidConfig(format!("{field}[{i}]: {c:?} is not a CIDR: {e}"))
            })
        })
        .collect()
}

fn protocol(p: &Port, i: usize) -> Result<(Protocol, u16, u16), ModuleError> {
    let proto = match p.protocol.as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        other => {
            return Err(ModuleError::InvalidConfig(format!(
                "ports[{i}].protocol: {other:?} is not TCP, UDP or SCTP"
            )));
        }
    };
    let last = p.end_port.unwrap_or(p.port);
    if last < p.port {
        return Err(ModuleError::InvalidConfig(format!(
            "ports[{i}].endPort: {last} is below port {}",
            p.port
        )));
    }
    Ok((proto, p.port, last))
}

fn render(
    ctx: &NodeContext,
    policy: &Policy,
    config: &Config,
) -> Result<PlanFragment, ModuleError> {
    let invalid = |e: String| {
        ModuleError::InvalidInput(format!(
            "WasmNetworkPolicy {}/{}: {e}",
            policy.namespace, policy.name
        ))
    };
    let mode = policy::mode(&policy.annotations).map_err(invalid)?;
    if !policy.directions.contains(&PolicyDirection::Egress) {
        return Err(invalid(
            "spec.policyTypes must include Egress: this module governs egress".into(),
        ));
    }
    let allowed = AddressSet {
        cidrs: cidrs(&config.cidrs, "cidrs")?,
        except: cidrs(&config.except, "except")?,
    };
    let ports: Vec<Option<(Protocol, u16, u16)>> = if config.ports.is_empty() {
        vec![None]
    } else {
        config
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| protocol(p, i).map(Some))
            .collect::<Result<_, _>>()?
    };
    let mut plan = PolicyPlan::new(mode);
    let egress = PolicyDirection::Egress;
    for pod in policy
        .selected
        .iter()
        .filter(|p| p.node == ctx.node && !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
    {
        plan.isolate(egress, pod);
        for range in ranges(&allowed, pod.family()) {
            for &p in &ports {
                plan.allow(
                    "egress/allow-list",
                    Some("the allow-list of cidrs".into()),
                    egress,
                    pod,
                    range,
                    p,
                );
            }
        }
        if config.allow_dns {
            for proto in [Protocol::Udp, Protocol::Tcp] {
                plan.allow(
                    "egress/dns",
                    Some("DNS".into()),
                    egress,
                    pod,
                    everything(pod.family()),
                    Some((proto, 53, 53)),
                );
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

    fn restricted() -> Policy {
        policy(
            "shop",
            "egress",
            vec![
                pod(
                    "shop",
                    "a",
                    "node-1",
                    &[("egress", "restricted")],
                    &["10.244.1.5", "fd00::5"],
                ),
                pod(
                    "shop",
                    "b",
                    "node-2",
                    &[("egress", "restricted")],
                    &["10.244.2.5"],
                ),
            ],
            &[PolicyDirection::Egress],
        )
    }

    #[test]
    fn isolates_local_pods_and_allows_the_cidrs_of_their_family_and_dns() {
        let c = config(
            r#"{"cidrs": ["203.0.113.0/24", "2001:db8::/64"], "except": ["203.0.113.128/25"]}"#,
        );
        let f = render(&node_context("node-1"), &restricted(), &c).unwrap();
        assert_eq!(
            elements(&f),
            [
                "egress-isolated4 10.244.1.5",
                "egress-allow-all4 10.244.1.5 . 203.0.113.0-203.0.113.127",
                "egress-allow4 10.244.1.5 . 0.0.0.0-255.255.255.255 . udp . 53",
                "egress-allow4 10.244.1.5 . 0.0.0.0-255.255.255.255 . tcp . 53",
                "egress-isolated6 fd00::5",
                "egress-allow-all6 fd00::5 . 2001:db8::-2001:db8::ffff:ffff:ffff:ffff",
                "egress-allow6 fd00::5 . ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff . udp . 53",
                "egress-allow6 fd00::5 . ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff . tcp . 53",
            ]
        );
    }

    #[test]
    fn ports_limit_the_allow_list_and_dns_can_be_left_out() {
        let c = config(
            r#"{"cidrs": ["10.0.0.0/8"], "ports": [{"port": 443}, {"protocol": "UDP", "port": 5000, "endPort": 5010}], "allowDns": false}"#,
        );
        let f = render(&node_context("node-2"), &restricted(), &c).unwrap();
        assert_eq!(
            elements(&f),
            [
                "egress-isolated4 10.244.2.5",
                "egress-allow4 10.244.2.5 . 10.0.0.0-10.255.255.255 . tcp . 443",
                "egress-allow4 10.244.2.5 . 10.0.0.0-10.255.255.255 . udp . 5000-5010",
            ]
        );
    }

    #[test]
    fn monitor_mode_and_bad_input_are_reported() {
        let mut p = restricted();
        p.annotations = vec![(policy::MODE_ANNOTATION.into(), "monitor".into())];
        let f = render(&node_context("node-2"), &p, &config(r#"{"cidrs": []}"#)).unwrap();
        assert_eq!(elements(&f)[0], "egress-monitored4 10.244.2.5");

        let bad = render(
            &node_context("node-1"),
            &restricted(),
            &config(r#"{"cidrs": ["10.0.0.0/33"]}"#),
        );
        assert!(
            matches!(bad, Err(ModuleError::InvalidConfig(m)) if m.contains("cidrs[0]: \"10.0.0.0/33\""))
        );
        let mut ingress = restricted();
        ingress.directions = vec![PolicyDirection::Ingress];
        let bad = render(
            &node_context("node-1"),
            &ingress,
            &config(r#"{"cidrs": []}"#),
        );
        assert!(
            matches!(bad, Err(ModuleError::InvalidInput(m)) if m.contains("WasmNetworkPolicy shop/egress: spec.policyTypes must include Egress"))
        );
    }
}
