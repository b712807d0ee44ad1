//! `proxy-nftables`: renders one Service into the host's `switchyard-proxy`
//! table, the successor of kube-proxy's iptables mode.
//!
//! Per Service port and address family:
//! - an element `VIP . proto . port : goto svc-…` in the host's `service-ips`
//!   (or `service-ips6`) verdict map, so dispatch is one map lookup however
//!   many Services exist;
//! - a chain `svc-…` that marks traffic from outside the pod network for
//!   masquerade, keeps ClientIP affinity, and picks an endpoint with the
//!   Service's scheduler: `random` (numgen random), `rr` (numgen inc), `sh`
//!   (hash of the source address), `dh` (hash of the destination address), each
//!   honouring endpoint weights;
//! - a chain `ep-…` per endpoint that marks hairpin traffic for masquerade and
//!   DNATs to the endpoint.
//!
//! A port with no usable endpoint is sent to `reject`, as kube-proxy does.
//! Names are short hashes (nftables names are bounded); rule ids and comments
//! carry the readable `namespace/name:port` that `explain` shows.

use switchyard_sdk::endpoints::{self, Backend, Traffic};
use switchyard_sdk::plan::{Plan, Rule};
use switchyard_sdk::service_proxy::Guest;
use switchyard_sdk::types::*;

/// Annotation that chooses the scheduler for one Service.
pub const SCHEDULER_ANNOTATION: &str = "switchyard.dev/scheduler";
/// Mark bit the host's postrouting chain masquerades.
pub const MASQUERADE_MARK: u32 = 0x4000;
/// Slots a weighted dispatch spreads over at most.
const MAX_SLOTS: u32 = 4096;

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "additionalProperties": false,
  "properties": {
    "defaultScheduler": {"enum": ["random", "rr", "sh", "dh"],
      "description": "Scheduler for Services without the switchyard.dev/scheduler annotation; defaults to ClusterNetwork's."}
  }
}"#;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    default_scheduler: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheduler {
    Random,
    RoundRobin,
    SourceHash,
    DestinationHash,
}

impl Scheduler {
    fn parse(s: &str) -> Option<Scheduler> {
        Some(match s {
            "random" => Scheduler::Random,
            "rr" => Scheduler::RoundRobin,
            "sh" => Scheduler::SourceHash,
            "dh" => Scheduler::DestinationHash,
            _ => return None,
        })
    }
}

struct ProxyNftables;

impl Guest for ProxyNftables {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "proxy-nftables",
            env!("CARGO_PKG_VERSION"),
            Role::ServiceProxy,
            "Renders Services into nftables verdict maps with random, rr, sh, dh and weighted endpoint selection.",
            SCHEMA,
        )
    }

    fn render_service(
        ctx: NodeContext,
        service: Service,
        endpoints: Vec<Endpoint>,
        config: String,
    ) -> Result<PlanFragment, ModuleError> {
        let config: Config = switchyard_sdk::config::parse(&config)?;
        render(&ctx, &service, &endpoints, &config)
    }
}

switchyard_sdk::export_service_proxy!(ProxyNftables);

/// FNV-1a over byte strings, for short stable names.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in p.iter().chain(&[0u8]) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "ipv4",
        IpFamily::Ipv6 => "ipv6",
    }
}

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn render(
    ctx: &NodeContext,
    svc: &Service,
    endpoints: &[Endpoint],
    config: &Config,
) -> Result<PlanFragment, ModuleError> {
    let mut plan = Plan::new();
    if svc.cluster_ips.is_empty() || svc.service_type == ServiceType::ExternalName {
        // Headless and ExternalName Services have nothing to proxy.
        return Ok(plan.build());
    }
    let sched_name = switchyard_sdk::labels::get(&svc.annotations, SCHEDULER_ANNOTATION)
        .map(str::to_string)
        .or_else(|| config.default_scheduler.clone())
        .unwrap_or_else(|| ctx.default_scheduler.clone());
    let scheduler = Scheduler::parse(&sched_name).ok_or_else(|| {
        ModuleError::InvalidInput(format!(
            "annotation {SCHEDULER_ANNOTATION}: unknown scheduler {sched_name:?} (known: random, rr, sh, dh)"
        ))
    })?;
    let id = format!("{}/{}", svc.namespace, svc.name);
    for port in &svc.ports {
        for vip in &svc.cluster_ips {
            let family = vip.family();
            let backends = endpoints::select(ctx, svc, port, endpoints, family, Traffic::Internal);
            let label = format!(
                "{id}:{}",
                if port.name.is_empty() {
                    port.port.to_string()
                } else {
                    port.name.clone()
                }
            );
            let key = hash(&[
                svc.namespace.as_bytes(),
                svc.name.as_bytes(),
                port.name.as_bytes(),
                proto_name(port.protocol).as_bytes(),
                family_name(family).as_bytes(),
            ]);
            let chain = format!("svc-{key:016x}");
            let vip_map = match family {
                IpFamily::Ipv4 => "service-ips",
                IpFamily::Ipv6 => "service-ips6",
            };
            // The rule id says which Service port and endpoint an item is for;
            // the host adds the object and the module, so no comment is needed.
            let rule_id = format!("svc/{label}/{}", proto_name(port.protocol));
            let verdict = if backends.is_empty() {
                NftVerdict::Reject
            } else {
                render_port(
                    &mut plan, ctx, svc, &chain, &rule_id, family, scheduler, &backends,
                );
                NftVerdict::Goto(chain.clone())
            };
            plan.element(
                format!("{rule_id}/vip"),
                vip_map,
                vec![(*vip).into(), port.protocol.into(), port.port.into()],
                Some(verdict.into()),
            );
        }
    }
    Ok(plan.build())
}

#[allow(clippy::too_many_arguments)]
fn render_port(
    plan: &mut Plan,
    ctx: &NodeContext,
    svc: &Service,
    chain: &str,
    rule_id: &str,
    family: IpFamily,
    scheduler: Scheduler,
    backends: &[Backend<'_>],
) {
    let mut svc_rules = vec![];
    // Traffic from outside the pod network leaves through the node: masquerade
    // it so replies come back through this node.
    let cluster: Vec<NftValue> = ctx
        .cluster_cidrs
        .iter()
        .filter(|c| c.family() == family)
        .map(|c| (*c).into())
        .collect();
    if !cluster.is_empty() {
        svc_rules.push(
            Rule::new()
                .matching(
                    vec![family.saddr()],
                    true,
                    NftOperand::Values(cluster.into_iter().map(|v| vec![v]).collect()),
                )
                .jump("mark-for-masquerade"),
        );
    }
    let mut ep_chains = vec![];
    for b in backends {
        let ep_hash = hash(&[
            chain.as_bytes(),
            &b.address.to_bits().to_be_bytes(),
            &b.port.to_be_bytes(),
        ]);
        let ep_chain = format!("ep-{ep_hash:016x}");
        let mut rules = vec![
            // Hairpin: a pod reaching itself through its Service.
            Rule::new()
                .eq(family.saddr(), b.address)
                .jump("mark-for-masquerade"),
        ];
        if let Some(timeout) = svc.session_affinity_timeout {
            let affinity = format!("aff-{ep_hash:016x}");
            plan.set(
                format!("{rule_id}/affinity/{}", b.address),
                &affinity,
                vec![family.addr_type()],
                NftSetFlags::TIMEOUT,
                Some(timeout),
            );
            rules.push(
                Rule::new()
                    .remember(&affinity, vec![family.saddr()], timeout)
                    .dnat(b.address, Some(b.port)),
            );
            // Clients seen recently go back to the same endpoint.
            svc_rules.push(
                Rule::new()
                    .in_set(vec![family.saddr()], &affinity)
                    .goto(&ep_chain),
            );
        } else {
            rules.push(Rule::new().dnat(b.address, Some(b.port)));
        }
        plan.chain(
            format!("{rule_id}/ep/{}:{}", b.address, b.port),
            &ep_chain,
            rules,
        );
        ep_chains.push((ep_chain, b.weight));
    }
    svc_rules.push(dispatch(family, scheduler, &ep_chains));
    plan.chain(rule_id.to_string(), chain, svc_rules);
}

/// The rule that picks an endpoint chain. Weights become slots: an endpoint
/// with weight 3 gets three entries of the lookup map.
fn dispatch(family: IpFamily, scheduler: Scheduler, chains: &[(String, u32)]) -> NftRule {
    let total: u32 = chains.iter().map(|(_, w)| *w).sum::<u32>().max(1);
    // Scale weights down if they would need too many slots.
    let scale = total.div_ceil(MAX_SLOTS).max(1);
    let mut entries = vec![];
    for (chain, w) in chains {
        for _ in 0..(w / scale).max(1) {
            let slot = entries.len() as u32;
            entries.push(NftMapEntry {
                key: vec![NftValue::Number(slot)],
                value: NftMapValue::Verdict(NftVerdict::Goto(chain.clone())),
            });
        }
    }
    let n = entries.len() as u32;
    let key = match scheduler {
        Scheduler::Random => NftKey::NumgenRandom(n),
        Scheduler::RoundRobin => NftKey::NumgenInc(n),
        Scheduler::SourceHash => NftKey::Jhash(NftHash {
            fields: vec![family.saddr()],
            modulus: n,
            seed: 0x5eed,
        }),
        Scheduler::DestinationHash => NftKey::Jhash(NftHash {
            fields: vec![family.daddr()],
            modulus: n,
            seed: 0x5eed,
        }),
    };
    Rule::new().vmap(key, NftMapRef::Inline(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::testing::{endpoint, node_context, service};

    fn web() -> Service {
        service(
            "default",
            "web",
            "10.96.0.10",
            &[("http", Protocol::Tcp, 80, 8080)],
        )
    }

    fn eps(n: u8) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                let mut e = endpoint(
                    &format!("10.244.1.{}", i + 2),
                    &[("http", Protocol::Tcp, 8080)],
                );
                e.node = Some("node-1".into());
                e
            })
            .collect()
    }

    fn chains(f: &PlanFragment) -> Vec<&NftChain> {
        f.items
            .iter()
            .filter_map(|i| match &i.body {
                PlanBody::NftChain(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    fn dispatch_key(f: &PlanFragment) -> NftKey {
        let svc = chains(f)
            .into_iter()
            .find(|c| c.name.starts_with("svc-"))
            .unwrap();
        match &svc.rules.last().unwrap().statements[0] {
            NftStatement::VerdictMap((k, _)) => k.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renders_a_vip_element_a_service_chain_and_one_chain_per_endpoint() {
        let f = ProxyNftables::render_service(node_context("node-1"), web(), eps(3), String::new())
            .unwrap();
        let c = chains(&f);
        assert_eq!(c.len(), 4);
        let el: Vec<_> = f
            .items
            .iter()
            .filter_map(|i| match &i.body {
                PlanBody::NftElement(e) => Some(e),
                _ => None,
            })
            .collect();
        assert_eq!(el.len(), 1);
        assert_eq!(el[0].set, "service-ips");
        assert_eq!(el[0].key[2], NftValue::Port(80));
        assert_eq!(dispatch_key(&f), NftKey::NumgenRandom(3));
        assert!(
            f.items
                .iter()
                .all(|i| i.rule_id.starts_with("svc/default/web:http/tcp"))
        );
    }

    #[test]
    fn scheduler_comes_from_the_annotation() {
        let mut s = web();
        for (name, want) in [("rr", "inc"), ("sh", "saddr"), ("dh", "daddr")] {
            s.annotations = vec![(SCHEDULER_ANNOTATION.into(), name.into())];
            let f = ProxyNftables::render_service(
                node_context("node-1"),
                s.clone(),
                eps(2),
                String::new(),
            )
            .unwrap();
            let k = format!("{:?}", dispatch_key(&f)).to_lowercase();
            assert!(k.contains(want), "{name}: {k}");
        }
        s.annotations = vec![(SCHEDULER_ANNOTATION.into(), "fastest".into())];
        let e = ProxyNftables::render_service(node_context("node-1"), s, eps(2), String::new())
            .unwrap_err();
        assert!(matches!(e, ModuleError::InvalidInput(m) if m.contains("\"fastest\"")));
    }

    #[test]
    fn weights_become_slots() {
        let mut e = eps(2);
        e[0].weight = 3;
        let f =
            ProxyNftables::render_service(node_context("node-1"), web(), e, String::new()).unwrap();
        assert_eq!(dispatch_key(&f), NftKey::NumgenRandom(4));
    }

    #[test]
    fn no_endpoints_rejects_and_headless_renders_nothing() {
        let f = ProxyNftables::render_service(node_context("node-1"), web(), vec![], String::new())
            .unwrap();
        assert_eq!(f.items.len(), 1);
        assert!(
            matches!(&f.items[0].body, PlanBody::NftElement(e) if e.value == Some(NftMapValue::Verdict(NftVerdict::Reject)))
        );
        let mut headless = web();
        headless.cluster_ips.clear();
        assert!(
            ProxyNftables::render_service(node_context("node-1"), headless, eps(1), String::new())
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[test]
    fn session_affinity_adds_a_timeout_set_per_endpoint() {
        let mut s = web();
        s.session_affinity_timeout = Some(10800);
        let f = ProxyNftables::render_service(node_context("node-1"), s, eps(2), String::new())
            .unwrap();
        let sets = f
            .items
            .iter()
            .filter(|i| matches!(i.body, PlanBody::NftSet(_)))
            .count();
        assert_eq!(sets, 2);
    }

    #[test]
    fn names_are_stable_and_short() {
        let a = ProxyNftables::render_service(node_context("node-1"), web(), eps(3), String::new())
            .unwrap();
        let b = ProxyNftables::render_service(node_context("node-1"), web(), eps(3), String::new())
            .unwrap();
        assert_eq!(a, b);
        assert!(chains(&a).iter().all(|c| c.name.len() <= 20));
    }
}
