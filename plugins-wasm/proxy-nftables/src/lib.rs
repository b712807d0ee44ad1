//! `proxy-nftables`: renders one Service into the host's `switchyard-proxy`
//! table, the successor of kube-proxy's iptables and nftables modes.
//!
//! The shape is data, not chains, because chains are what make kube-proxy's
//! syncs slow (see `bench/REPORT.md`). For each Service port, address family
//! and kind of destination (ClusterIP, external or LoadBalancer IP, NodePort):
//! - one element in the host's dispatch map (`service-ips`, `service-ips6` or
//!   `service-nodeports`) whose value is the *class* of a *pick chain*: a
//!   packet-mark value the host looks up in `service-classes` to go to the
//!   chain. Dispatch elements are data, never `goto`: adding a verdict
//!   element that jumps makes the kernel re-validate every jump in the
//!   table, which grows with the number of Services;
//! - one element per slot in the host's backend map (`backends4-tcp`, ...): slot
//!   `i` holds the endpoint address and port. An endpoint of weight `w` gets
//!   `w` slots (scaled down to at most 1024 in all).
//! - the pick chain gives the packet its mark back (`jump restore-mark`),
//!   marks traffic for masquerade as the traffic kind needs and DNATs through the backend map keyed by destination, protocol, port
//!   and a slot drawn by `numgen random`. It depends only on the traffic
//!   kind and the slot count, so it is a *shared* item: every Service with
//!   three endpoints uses the same `pick-v4-o-random-3`, and its class
//!   element in `service-classes`. A Service whose endpoints change keeps
//!   its chain and changes only backend elements.
//! - a shared `hairpin4`/`hairpin6` element `endpoint . endpoint` per
//!   endpoint, which makes the host masquerade a pod that reaches itself.
//!
//! Services with ClientIP affinity, and those with the `rr` (numgen inc),
//! `sh` (hash of the source address) or `dh` (hash of the destination
//! address) schedulers, get chains of their own (kube-proxy's shape: a chain
//! per endpoint, which remembers the client in a timeout set under
//! affinity), reached through the host's verdict maps `service-chains`
//! (`service-chains6`, `service-nodeport-chains`): affinity needs per-endpoint state, rr a counter per Service (a
//! shared chain's counter would serve Services in turn: two rr Services
//! whose connections alternate would each always get the same endpoint),
//! and nftables 1.0.6 cannot concatenate a hash with a transport port in one
//! lookup key.
//!
//! A port with no endpoint to use gets an element in `no-endpoints` (or
//! `no-endpoints6`, `no-endpoint-nodeports`) instead: `reject` when the
//! Service has no endpoints, `drop` when a `Local` traffic policy leaves none
//! on this node, as kube-proxy does.
//!
//! Rule ids carry the readable `namespace/name:port/protocol` that `explain`
//! shows.

use switchyard_sdk::endpoints::{self, Backend, Traffic};
use switchyard_sdk::plan::{Plan, Rule};
use switchyard_sdk::service_proxy::Guest;
use switchyard_sdk::types::*;

/// Annotation that chooses the scheduler for one Service.
pub const SCHEDULER_ANNOTATION: &str = "switchyard.dev/scheduler";
/// Slots a weighted dispatch spreads over at most.
const MAX_SLOTS: u32 = 1024;
/// Seed of the sh and dh hashes.
const HASH_SEED: u32 = 0x5eed;

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

/// Which destination of a Service the traffic was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A ClusterIP, external IP or LoadBalancer IP: keyed by address.
    Vip,
    /// A NodePort on any local address: keyed by protocol and port.
    NodePort,
}

/// What the pick chain marks for masquerade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Masq {
    /// Traffic from outside the pod network (to a ClusterIP).
    OffCluster,
    /// All traffic (external traffic under `externalTrafficPolicy: Cluster`,
    /// so replies come back through this node).
    All,
    /// None (`externalTrafficPolicy: Local` keeps the client's address).
    None,
}

struct ProxyNftables;

impl Guest for ProxyNftables {
    fn describe() -> ModuleInfo {
        ModuleInfo::new(
            "proxy-nftables",
            env!("CARGO_PKG_VERSION"),
            Role::ServiceProxy,
            "Renders Services into nftables maps with random, rr, sh, dh and weighted endpoint selection.",
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

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn fam(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "4",
        IpFamily::Ipv6 => "6",
    }
}

/// Everything one Service port renders for one family and one kind.
struct Target<'a> {
    kind: Kind,
    family: IpFamily,
    /// The destination addresses (empty for NodePort).
    vips: Vec<IpAddress>,
    port: u16,
    protocol: Protocol,
    masq: Masq,
    backends: Vec<Backend<'a>>,
    /// Whether some endpoint exists elsewhere (so "none here" is a drop, not
    /// a reject).
    exists_elsewhere: bool,
    rule_id: String,
}

fn render(
    ctx: &NodeContext,
    svc: &Service,
    endpoints: &[Endpoint],
    config: &Config,
) -> Result<PlanFragment, ModuleError> {
    let mut plan = Plan::new();
    if svc.service_type == ServiceType::ExternalName {
        return Ok(plan.build());
    }
    let (sched_name, from) =
        match switchyard_sdk::labels::get(&svc.annotations, SCHEDULER_ANNOTATION) {
            Some(s) => (s.to_string(), format!("annotation {SCHEDULER_ANNOTATION}")),
            None => match &config.default_scheduler {
                Some(s) => (
                    s.clone(),
                    "the module's config defaultScheduler".to_string(),
                ),
                None => (
                    ctx.default_scheduler.clone(),
                    "ClusterNetwork spec.proxy.defaultScheduler".to_string(),
                ),
            },
        };
    let scheduler = Scheduler::parse(&sched_name).ok_or_else(|| {
        ModuleError::InvalidInput(format!(
            "{from}: unknown scheduler {sched_name:?} (known: random, rr, sh, dh)"
        ))
    })?;
    if svc.cluster_ips.is_empty() {
        // Headless: DNS answers with the endpoints; nothing to proxy.
        return Ok(plan.build());
    }
    let id = format!("{}/{}", svc.namespace, svc.name);
    let families: Vec<IpFamily> = {
        let mut f: Vec<IpFamily> = svc.cluster_ips.iter().map(|a| a.family()).collect();
        f.dedup();
        f
    };
    for port in &svc.ports {
        let label = format!(
            "{id}:{}/{}",
            if port.name.is_empty() {
                port.port.to_string()
            } else {
                port.name.clone()
            },
            proto_name(port.protocol)
        );
        for &family in &families {
            let any = |traffic| {
                let mut all = svc.clone();
                all.internal_traffic_policy = TrafficPolicy::Cluster;
                all.external_traffic_policy = TrafficPolicy::Cluster;
                !endpoints::select(ctx, &all, port, endpoints, family, traffic).is_empty()
            };
            let internal = endpoints::select(ctx, svc, port, endpoints, family, Traffic::Internal);
            let external = endpoints::select(ctx, svc, port, endpoints, family, Traffic::External);
            let external_masq = match svc.external_traffic_policy {
                TrafficPolicy::Cluster => Masq::All,
                TrafficPolicy::Local => Masq::None,
            };
            let mut targets = vec![Target {
                kind: Kind::Vip,
                family,
                vips: svc
                    .cluster_ips
                    .iter()
                    .filter(|a| a.family() == family)
                    .copied()
                    .collect(),
                port: port.port,
                protocol: port.protocol,
                masq: Masq::OffCluster,
                exists_elsewhere: any(Traffic::Internal),
                backends: internal,
                rule_id: format!("svc/{label}/cluster-ip{}", fam(family)),
            }];
            let externals: Vec<IpAddress> = svc
                .external_ips
                .iter()
                .chain(&svc.load_balancer_ips)
                .filter(|a| a.family() == family)
                .copied()
                .collect();
            if !externals.is_empty() {
                targets.push(Target {
                    kind: Kind::Vip,
                    family,
                    vips: externals,
                    port: port.port,
                    protocol: port.protocol,
                    masq: external_masq,
                    exists_elsewhere: any(Traffic::External),
                    backends: external.clone(),
                    rule_id: format!("svc/{label}/external{}", fam(family)),
                });
            }
            if let Some(node_port) = port.node_port
                && matches!(
                    svc.service_type,
                    ServiceType::NodePort | ServiceType::LoadBalancer
                )
            {
                targets.push(Target {
                    kind: Kind::NodePort,
                    family,
                    vips: vec![],
                    port: node_port,
                    protocol: port.protocol,
                    masq: external_masq,
                    exists_elsewhere: any(Traffic::External),
                    backends: external,
                    rule_id: format!("svc/{label}/nodeport{}", fam(family)),
                });
            }
            for t in &targets {
                render_target(&mut plan, ctx, svc, scheduler, t);
            }
        }
    }
    Ok(plan.build())
}

/// The dispatch key of a target: `vip . proto . port` or `nfproto . proto . port`.
fn dispatch_keys(t: &Target<'_>) -> Vec<Vec<NftValue>> {
    match t.kind {
        Kind::Vip => t
            .vips
            .iter()
            .map(|v| vec![(*v).into(), t.protocol.into(), t.port.into()])
            .collect(),
        Kind::NodePort => vec![vec![t.family.into(), t.protocol.into(), t.port.into()]],
    }
}

/// Which of the host's dispatch maps a target's elements go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    /// A data element naming a shared class.
    Class,
    /// A verdict element going to the Service's own chain.
    OwnChain,
    /// A verdict element that rejects or drops.
    NoEndpoints,
}

fn dispatch_map(t: &Target<'_>, d: Dispatch) -> &'static str {
    match (t.kind, t.family, d) {
        (Kind::Vip, IpFamily::Ipv4, Dispatch::Class) => "service-ips",
        (Kind::Vip, IpFamily::Ipv6, Dispatch::Class) => "service-ips6",
        (Kind::NodePort, _, Dispatch::Class) => "service-nodeports",
        (Kind::Vip, IpFamily::Ipv4, Dispatch::OwnChain) => "service-chains",
        (Kind::Vip, IpFamily::Ipv6, Dispatch::OwnChain) => "service-chains6",
        (Kind::NodePort, _, Dispatch::OwnChain) => "service-nodeport-chains",
        (Kind::Vip, IpFamily::Ipv4, Dispatch::NoEndpoints) => "no-endpoints",
        (Kind::Vip, IpFamily::Ipv6, Dispatch::NoEndpoints) => "no-endpoints6",
        (Kind::NodePort, _, Dispatch::NoEndpoints) => "no-endpoint-nodeports",
    }
}

fn render_target(
    plan: &mut Plan,
    ctx: &NodeContext,
    svc: &Service,
    scheduler: Scheduler,
    t: &Target<'_>,
) {
    if t.backends.is_empty() {
        let verdict = if t.exists_elsewhere {
            NftVerdict::Drop
        } else {
            NftVerdict::Reject
        };
        for key in dispatch_keys(t) {
            plan.element(
                format!("{}/no-endpoints", t.rule_id),
                dispatch_map(t, Dispatch::NoEndpoints),
                key,
                Some(verdict.clone().into()),
            );
        }
        return;
    }
    for b in &t.backends {
        let key = vec![b.address.into(), b.address.into()];
        plan.shared(
            format!("hairpin/{}", b.address),
            PlanBody::NftElement(NftElement {
                set: format!("hairpin{}", fam(t.family)),
                key,
                value: None,
            }),
        );
    }
    let masq_rules = masq_rules(ctx, t.family, t.masq);
    let shared = svc.session_affinity_timeout.is_none() && scheduler == Scheduler::Random;
    if shared {
        let class = pick_chain(plan, t, masq_rules);
        for key in dispatch_keys(t) {
            plan.element(
                format!("{}/dispatch", t.rule_id),
                dispatch_map(t, Dispatch::Class),
                key,
                Some(NftMapValue::Data(vec![NftValue::Number(class)])),
            );
        }
    } else {
        let chain = own_chain(plan, svc, t, scheduler, masq_rules);
        for key in dispatch_keys(t) {
            plan.element(
                format!("{}/dispatch", t.rule_id),
                dispatch_map(t, Dispatch::OwnChain),
                key,
                Some(NftVerdict::Goto(chain.clone()).into()),
            );
        }
    }
}

/// The class of a shared pick chain: a packet-mark value (1 to
/// 0x7fffffff, the host's range) that encodes the chain's parameters, so
/// every Service that renders the same chain names the same class and no
/// two chains share one.
fn class_mark(kind: Kind, family: IpFamily, masq: Masq, slots: u32) -> u32 {
    let kind = match kind {
        Kind::Vip => 0,
        Kind::NodePort => 1,
    };
    let family = match family {
        IpFamily::Ipv4 => 0,
        IpFamily::Ipv6 => 1,
    };
    let masq = match masq {
        Masq::OffCluster => 0,
        Masq::All => 1,
        Masq::None => 2,
    };
    // slots <= MAX_SLOTS < 2^11.
    kind << 25 | family << 24 | masq << 22 | slots
}

fn masq_rules(ctx: &NodeContext, family: IpFamily, masq: Masq) -> Vec<NftRule> {
    match masq {
        Masq::None => vec![],
        Masq::All => vec![Rule::new().jump("mark-for-masquerade")],
        Masq::OffCluster => {
            let cluster: Vec<Vec<NftValue>> = ctx
                .cluster_cidrs
                .iter()
                .filter(|c| c.family() == family)
                .map(|c| vec![(*c).into()])
                .collect();
            if cluster.is_empty() {
                vec![Rule::new().jump("mark-for-masquerade")]
            } else {
                vec![
                    Rule::new()
                        .matching(vec![family.saddr()], true, NftOperand::Values(cluster))
                        .jump("mark-for-masquerade"),
                ]
            }
        }
    }
}

/// The host's backend map for a kind, family and protocol.
fn backend_map(kind: Kind, family: IpFamily, p: Protocol) -> String {
    format!(
        "{}backends{}-{}",
        if kind == Kind::NodePort {
            "nodeport-"
        } else {
            ""
        },
        fam(family),
        proto_name(p)
    )
}

/// Slots per backend: weights scaled so that the total stays within
/// `MAX_SLOTS`, each backend keeping at least one.
fn slots(backends: &[Backend<'_>]) -> Vec<u32> {
    let total: u32 = backends
        .iter()
        .map(|b| b.weight)
        .fold(0u32, u32::saturating_add)
        .max(1);
    let scale = total.div_ceil(MAX_SLOTS).max(1);
    backends.iter().map(|b| (b.weight / scale).max(1)).collect()
}

/// The shared chain that picks a slot at random, its class, and the
/// target's backend elements. Returns the class.
fn pick_chain(plan: &mut Plan, t: &Target<'_>, masq_rules: Vec<NftRule>) -> u32 {
    // The class borrowed the packet mark to get here: give it back first.
    let mut rules = vec![Rule::new().jump("restore-mark")];
    rules.extend(masq_rules);
    let per = slots(&t.backends);
    let n: u32 = per.iter().sum();
    let (kind, fields) = match (t.kind, t.family) {
        (Kind::Vip, IpFamily::Ipv4) => (
            "v",
            vec![NftField::IpDaddr, NftField::MetaL4proto, NftField::ThDport],
        ),
        (Kind::Vip, IpFamily::Ipv6) => (
            "v",
            vec![NftField::Ip6Daddr, NftField::MetaL4proto, NftField::ThDport],
        ),
        (Kind::NodePort, _) => ("n", vec![NftField::MetaL4proto, NftField::ThDport]),
    };
    let masq = match t.masq {
        Masq::OffCluster => "o",
        Masq::All => "a",
        Masq::None => "x",
    };
    let name = format!("pick-{kind}{}-{masq}-random-{n}", fam(t.family));
    let slot = NftSlot::NumgenRandom(n);
    // One rule per transport protocol: each backend map matches one.
    for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        rules.push(Rule::new().dnat_lookup(
            t.family,
            NftKey::Slotted(NftSlotted {
                fields: fields.clone(),
                slot: slot.clone(),
            }),
            NftMapRef::Named(backend_map(t.kind, t.family, p)),
        ));
    }
    let map = backend_map(t.kind, t.family, t.protocol);
    let class = class_mark(t.kind, t.family, t.masq, n);
    plan.shared(
        format!("pick/{name}"),
        PlanBody::NftChain(NftChain {
            name: name.clone(),
            rules,
        }),
    );
    plan.shared(
        format!("class/{name}"),
        PlanBody::NftElement(NftElement {
            set: "service-classes".into(),
            key: vec![NftValue::Number(class)],
            value: Some(NftVerdict::Goto(name).into()),
        }),
    );
    // Slot i of each dispatch key holds the endpoint it falls to.
    let mut slot = 0u32;
    for (b, count) in t.backends.iter().zip(per) {
        for _ in 0..count {
            for key in dispatch_keys(t) {
                let mut key: Vec<NftValue> = match t.kind {
                    Kind::Vip => key,
                    // The NodePort backend maps are keyed without the family.
                    Kind::NodePort => key[1..].to_vec(),
                };
                key.push(NftValue::Number(slot));
                plan.element(
                    format!("{}/ep/{}:{}", t.rule_id, b.address, b.port),
                    &map,
                    key,
                    Some(NftMapValue::Data(vec![b.address.into(), b.port.into()])),
                );
            }
            slot += 1;
        }
    }
    class
}

/// Kube-proxy's shape, for Services the shared chains cannot serve: a
/// chain for the Service port that (with ClientIP affinity) sends known
/// clients back to their endpoint and spreads the others with the
/// scheduler, and a chain per endpoint that remembers the client and DNATs.
/// sh and dh take this path because nftables (1.0.6) cannot put a hash and
/// a transport port in one concatenated lookup key.
fn own_chain(
    plan: &mut Plan,
    svc: &Service,
    t: &Target<'_>,
    scheduler: Scheduler,
    mut svc_rules: Vec<NftRule>,
) -> String {
    let key = hash(&[
        svc.namespace.as_bytes(),
        svc.name.as_bytes(),
        t.rule_id.as_bytes(),
    ]);
    let chain = format!("svc-{key:016x}");
    let mut ep_chains = vec![];
    for (b, count) in t.backends.iter().zip(slots(&t.backends)) {
        let ep_hash = hash(&[
            chain.as_bytes(),
            &b.address.to_bits().to_be_bytes(),
            &b.port.to_be_bytes(),
        ]);
        let ep_chain = format!("ep-{ep_hash:016x}");
        // A port mapping needs the transport protocol matched first.
        let mut rule = Rule::new().eq(NftField::MetaL4proto, t.protocol);
        if let Some(timeout) = svc.session_affinity_timeout {
            let set = format!("cl-{ep_hash:016x}");
            plan.set(
                format!("{}/affinity/{}", t.rule_id, b.address),
                &set,
                vec![t.family.addr_type()],
                NftSetFlags::TIMEOUT,
                Some(timeout),
            );
            rule = rule.remember(&set, vec![t.family.saddr()], timeout);
            // Clients seen recently go back to the same endpoint.
            svc_rules.push(
                Rule::new()
                    .in_set(vec![t.family.saddr()], &set)
                    .goto(&ep_chain),
            );
        }
        plan.chain(
            format!("{}/ep/{}:{}", t.rule_id, b.address, b.port),
            &ep_chain,
            vec![rule.dnat(b.address, Some(b.port))],
        );
        ep_chains.push((ep_chain, count));
    }
    let mut entries = vec![];
    for (chain, count) in &ep_chains {
        for _ in 0..*count {
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
            fields: vec![t.family.saddr()],
            modulus: n,
            seed: HASH_SEED,
        }),
        Scheduler::DestinationHash => NftKey::Jhash(NftHash {
            fields: vec![t.family.daddr()],
            modulus: n,
            seed: HASH_SEED,
        }),
    };
    svc_rules.push(Rule::new().vmap(key, NftMapRef::Inline(entries)));
    plan.chain(t.rule_id.clone(), &chain, svc_rules);
    chain
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

    fn render(s: Service, e: Vec<Endpoint>) -> PlanFragment {
        ProxyNftables::render_service(node_context("node-1"), s, e, String::new()).unwrap()
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

    fn elements<'a>(f: &'a PlanFragment, set: &str) -> Vec<&'a NftElement> {
        f.items
            .iter()
            .filter_map(|i| match &i.body {
                PlanBody::NftElement(e) if e.set == set => Some(e),
                _ => None,
            })
            .collect()
    }

    fn slot(f: &PlanFragment) -> NftSlot {
        let pick = chains(f)
            .into_iter()
            .find(|c| c.name.starts_with("pick-"))
            .unwrap();
        match &pick.rules[pick.rules.len() - 3].statements[0] {
            NftStatement::Dnat(NftNat {
                target: NftNatTarget::Lookup((NftKey::Slotted(s), _)),
                ..
            }) => s.slot.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ports_with_the_same_endpoint_count_share_one_pick_chain() {
        let s = service(
            "default",
            "dns",
            "10.96.0.10",
            &[
                ("tcp", Protocol::Tcp, 53, 53),
                ("udp", Protocol::Udp, 53, 53),
            ],
        );
        let e: Vec<Endpoint> = (0..2)
            .map(|i| {
                endpoint(
                    &format!("10.244.1.{}", i + 2),
                    &[("tcp", Protocol::Tcp, 53), ("udp", Protocol::Udp, 53)],
                )
            })
            .collect();
        let f = render(s, e);
        let names: Vec<&str> = chains(&f).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["pick-v4-o-random-2"]);
        assert_eq!(elements(&f, "service-ips").len(), 2, "one per port");
        assert_eq!(elements(&f, "backends4-tcp").len(), 2);
        assert_eq!(elements(&f, "backends4-udp").len(), 2);
    }

    #[test]
    fn a_service_is_a_dispatch_element_a_shared_pick_chain_and_backend_elements() {
        let f = render(web(), eps(3));
        let c = chains(&f);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "pick-v4-o-random-3");
        assert_eq!(
            c[0].rules[0],
            Rule::new().jump("restore-mark"),
            "the class's chain gives the mark back first"
        );
        let vip = elements(&f, "service-ips");
        assert_eq!(vip.len(), 1);
        assert_eq!(vip[0].key[2], NftValue::Port(80));
        let class = elements(&f, "service-classes");
        assert_eq!(class.len(), 1);
        assert_eq!(
            vip[0].value,
            Some(NftMapValue::Data(vec![class[0].key[0].clone()]))
        );
        assert_eq!(
            class[0].value,
            Some(NftVerdict::Goto("pick-v4-o-random-3".into()).into())
        );
        let be = elements(&f, "backends4-tcp");
        assert_eq!(be.len(), 3);
        assert_eq!(be[2].key[3], NftValue::Number(2));
        assert_eq!(
            be[2].value,
            Some(NftMapValue::Data(vec![
                "10.244.1.4".parse::<IpAddress>().unwrap().into(),
                NftValue::Port(8080)
            ]))
        );
        assert_eq!(elements(&f, "hairpin4").len(), 3);
        assert_eq!(slot(&f), NftSlot::NumgenRandom(3));
        // The pick chain and the hairpin elements are shared, the rest is the
        // Service's own.
        for i in &f.items {
            let shared = i.rule_id.starts_with("pick/")
                || i.rule_id.starts_with("class/")
                || i.rule_id.starts_with("hairpin/");
            assert_eq!(i.shared, shared, "{}", i.rule_id);
        }
    }

    #[test]
    fn changing_an_endpoint_changes_only_backend_elements() {
        let a = render(web(), eps(3));
        let mut e = eps(3);
        e[1].address = "10.244.1.99".parse().unwrap();
        let b = render(web(), e);
        let diff: Vec<_> = b
            .items
            .iter()
            .filter(|i| !a.items.contains(i))
            .map(|i| match &i.body {
                PlanBody::NftElement(e) => e.set.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        // Slots follow address order, so the endpoints after the changed one
        // move up a slot; no chain and no dispatch element changes.
        assert!(diff.contains(&"hairpin4".to_string()));
        assert!(
            diff.iter().all(|s| s == "hairpin4" || s == "backends4-tcp"),
            "{diff:?}"
        );
    }

    #[test]
    fn scheduler_comes_from_the_annotation() {
        let mut s = web();
        for (name, want) in [("rr", "numgeninc(2)"), ("sh", "saddr"), ("dh", "daddr")] {
            s.annotations = vec![(SCHEDULER_ANNOTATION.into(), name.into())];
            let f = render(s.clone(), eps(2));
            let c = chains(&f);
            let svc = c.iter().find(|c| c.name.starts_with("svc-")).unwrap();
            let k = format!("{:?}", svc.rules.last().unwrap()).to_lowercase();
            assert!(k.contains(want), "{name}: {k}");
            assert!(
                !c.iter().any(|c| c.name.starts_with("pick-")),
                "{name} has a chain of its own: {c:?}"
            );
            // Reached through the verdict map, and never through a class:
            // the chain does not give a borrowed mark back.
            assert_eq!(elements(&f, "service-chains").len(), 1, "{name}");
            assert!(elements(&f, "service-ips").is_empty(), "{name}");
            assert!(elements(&f, "service-classes").is_empty(), "{name}");
        }
        s.annotations = vec![(SCHEDULER_ANNOTATION.into(), "fastest".into())];
        let e = ProxyNftables::render_service(node_context("node-1"), s, eps(2), String::new())
            .unwrap_err();
        assert!(matches!(e, ModuleError::InvalidInput(m) if m.contains("\"fastest\"")));
    }

    #[test]
    fn classes_are_distinct_and_in_the_hosts_range() {
        let mut seen = std::collections::HashSet::new();
        for kind in [Kind::Vip, Kind::NodePort] {
            for family in [IpFamily::Ipv4, IpFamily::Ipv6] {
                for masq in [Masq::OffCluster, Masq::All, Masq::None] {
                    for n in [1, 2, 3, MAX_SLOTS] {
                        let c = class_mark(kind, family, masq, n);
                        assert!((1..0x8000_0000).contains(&c), "{c:#x}");
                        assert!(seen.insert(c), "{kind:?} {family:?} {masq:?} {n}: {c:#x}");
                    }
                }
            }
        }
    }

    #[test]
    fn weights_become_slots() {
        let mut e = eps(2);
        e[0].weight = 3;
        let f = render(web(), e);
        assert_eq!(slot(&f), NftSlot::NumgenRandom(4));
        assert_eq!(elements(&f, "backends4-tcp").len(), 4);
    }

    #[test]
    fn no_endpoints_rejects_and_headless_renders_nothing() {
        let f = render(web(), vec![]);
        assert_eq!(f.items.len(), 1);
        assert_eq!(
            elements(&f, "no-endpoints")[0].value,
            Some(NftMapValue::Verdict(NftVerdict::Reject))
        );
        let mut headless = web();
        headless.cluster_ips.clear();
        assert!(render(headless, eps(1)).items.is_empty());
    }

    #[test]
    fn local_policy_uses_only_local_endpoints_and_drops_when_there_are_none() {
        let mut s = web();
        s.service_type = ServiceType::NodePort;
        s.ports[0].node_port = Some(30080);
        s.external_traffic_policy = TrafficPolicy::Local;
        let mut e = eps(2);
        e[1].node = Some("node-2".into());
        let f = render(s.clone(), e.clone());
        // Cluster traffic uses both, NodePort traffic only the local one, and
        // without masquerade.
        assert_eq!(elements(&f, "backends4-tcp").len(), 2);
        assert_eq!(elements(&f, "nodeport-backends4-tcp").len(), 1);
        assert!(chains(&f).iter().any(|c| c.name == "pick-n4-x-random-1"));
        e[0].node = Some("node-3".into());
        let f = render(s, e);
        assert_eq!(
            elements(&f, "no-endpoint-nodeports")[0].value,
            Some(NftMapValue::Verdict(NftVerdict::Drop))
        );
    }

    #[test]
    fn external_ips_and_load_balancer_ips_are_dispatched_like_cluster_ips() {
        let mut s = web();
        s.service_type = ServiceType::LoadBalancer;
        s.external_ips = vec!["192.0.2.10".parse().unwrap()];
        s.load_balancer_ips = vec!["192.0.2.20".parse().unwrap()];
        s.ports[0].node_port = Some(30080);
        let f = render(s, eps(2));
        assert_eq!(elements(&f, "service-ips").len(), 3);
        assert_eq!(elements(&f, "service-nodeports").len(), 1);
        // Two backends for each of three addresses, and two for the NodePort.
        assert_eq!(elements(&f, "backends4-tcp").len(), 6);
        assert_eq!(elements(&f, "nodeport-backends4-tcp").len(), 2);
        let names: Vec<_> = chains(&f).iter().map(|c| c.name.clone()).collect();
        assert_eq!(
            names,
            vec![
                "pick-v4-o-random-2",
                "pick-v4-a-random-2",
                "pick-n4-a-random-2"
            ]
        );
    }

    #[test]
    fn session_affinity_uses_chains_of_its_own() {
        let mut s = web();
        s.session_affinity_timeout = Some(10800);
        let f = render(s, eps(2));
        let sets = f
            .items
            .iter()
            .filter(|i| matches!(i.body, PlanBody::NftSet(_)))
            .count();
        assert_eq!(sets, 2);
        assert_eq!(chains(&f).len(), 3);
        assert!(
            chains(&f)
                .iter()
                .all(|c| c.name.len() <= 20 && !c.name.starts_with("pick-"))
        );
    }

    #[test]
    fn renders_are_stable() {
        assert_eq!(render(web(), eps(3)), render(web(), eps(3)));
    }
}
