//! The policy engine of one node: resolved policies in, the policy table out.
//!
//! Per policy, as the proxy does per Service: a changed policy is rendered
//! again by the policy module and only the delta goes to the kernel, in one
//! transaction per sync. Three kinds of fragments live in the store:
//!
//! - each policy's own, minus its allow boxes: the isolation elements of
//!   its pods (shared: many policies isolate one pod);
//! - per pod address of this node, the merged boxes of every policy that
//!   allows something to or from it ([`super::merge`]), recomputed only for
//!   the pods a change touched;
//! - the host's drop fragment: per isolated pod, a drop map element that
//!   jumps to the chain of the pod's *group* (the policies isolating it),
//!   which counts the drop into each of their counters.
//!
//! The boxes each policy rendered stay with their rule ids and comments:
//! they are what `explain` reads.
//!
//! NetworkPolicies are rendered by the active `network-policy` module;
//! each WasmNetworkPolicy by the module it names, with its own config
//! (checked against the module's schema first). Both kinds share the sets,
//! the merge and the drop chains; a WasmNetworkPolicy's counters carry
//! `-wasm` (`egress-wasm.NS.NAME`).

use super::explain::Snapshot;
use super::inputs::PolicyInput;
use super::merge::{self, AllowBox};
use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::datapath::nflog::POLICY_DROP_GROUP;
use crate::datapath::nft::{NftApplier, NftRunner};
use crate::model::{FailurePolicy, ObjectKind, ObjectRef, Role};
use crate::plan::reconcile::{Table, Tracker};
use crate::plan::{Change, Fragment, skeleton};
use crate::registry::Registry;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Policies rendered.
    pub rendered: usize,
    /// Pods whose merged boxes were recomputed.
    pub merged: usize,
    /// Whether the whole table was replaced.
    pub full: bool,
    pub script_bytes: usize,
    pub render: Duration,
    pub apply: Duration,
    /// Why the table could not be loaded, if it could not.
    pub error: Option<String>,
}

/// A box as a policy's module rendered it, for `explain`.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub set: String,
    pub pod: IpAddr,
    pub allow: AllowBox,
    pub rule_id: String,
    pub comment: Option<String>,
}

/// The policy engine of one node.
pub struct PolicyEngine {
    registry: Arc<Registry>,
    runner: Arc<dyn NftRunner>,
    /// Which policies changed since the last sync: a policy's input is the
    /// resolved policy and, for a WasmNetworkPolicy, its module's digest.
    tracker: Tracker<(PolicyInput, Option<String>)>,
    /// The `switchyard-policy` table.
    table: Table,
    ctx: Option<wit::NodeContext>,
    errors: BTreeMap<ObjectRef, String>,
    /// Each policy's boxes, as rendered.
    /// (A persistent map: the snapshot for `explain` shares it.)
    boxes: imbl::OrdMap<ObjectRef, Arc<Vec<Provenance>>>,
    /// Which policies have boxes for a pod address.
    index: BTreeMap<IpAddr, BTreeSet<ObjectRef>>,
    /// The policies as last given, for closed fragments and descriptions.
    policies: BTreeMap<ObjectRef, PolicyInput>,
    /// What `explain` reads, replaced after every sync.
    snapshot: SharedSnapshot,
    /// The groups the drop fragment was last made from: a change that
    /// leaves them alone (most change allowed peers, not who is isolated)
    /// neither rebuilds the drop fragment nor diffs it.
    last_groups: Option<Groups>,
}

/// The engine's last installed state, for `explain` (the admin API holds
/// one end).
pub type SharedSnapshot = Arc<parking_lot::RwLock<Arc<Snapshot>>>;

/// Direction, monitor or not, and family suffix of an isolation set.
type GroupKey = (String, bool, String);

/// Per isolation set, each isolated pod address with the policies
/// isolating it: the groups the drop chains count for.
type Groups = BTreeMap<GroupKey, BTreeMap<IpAddr, (wit::IpAddress, BTreeSet<ObjectRef>)>>;

/// The drop chain of a group of policies isolating pods in a direction
/// and mode; its name is the log prefix of its drops.
pub fn group_chain(direction: &str, monitor: bool, members: &BTreeSet<ObjectRef>) -> String {
    let mut h = DefaultHasher::new();
    (direction, monitor, members).hash(&mut h);
    format!(
        "{direction}-{}-{:012x}",
        if monitor { "would-drop" } else { "drop" },
        h.finish() & 0xffff_ffff_ffff
    )
}

/// The object of a pod address's merged boxes.
fn merged_ref(pod: IpAddr) -> ObjectRef {
    ObjectRef::new(ObjectKind::Pod, "merged", pod.to_string())
}

/// The object of the host's drop fragment.
fn drops_ref() -> ObjectRef {
    ObjectRef::new(ObjectKind::Node, "", "policy-drops")
}

/// The closed fragment of a policy whose module failed, on the node `ctx`
/// describes: its pods there isolated in every direction it governs,
/// allowing nothing.
fn closed(
    ctx: Option<&wit::NodeContext>,
    object: &ObjectRef,
    p: &wit::Policy,
    module: &str,
) -> Fragment {
    let node = ctx.map(|c| c.node.clone()).unwrap_or_default();
    let mut items = vec![];
    for pod in p
        .selected
        .iter()
        .filter(|x| x.node == node && !x.host_network)
    {
        for ip in &pod.ips {
            for d in &p.directions {
                let d = match d {
                    wit::PolicyDirection::Ingress => "ingress",
                    wit::PolicyDirection::Egress => "egress",
                };
                let f = match ip {
                    wit::IpAddress::Ipv4(_) => "4",
                    wit::IpAddress::Ipv6(_) => "6",
                };
                let mut it = element(
                    &format!("{d}-isolated{f}"),
                    vec![wit::NftValue::Address(*ip)],
                    None,
                );
                it.rule_id = format!("{d}/isolate/{}", crate::runtime::wit_to_ip(ip));
                it.comment = Some("the policy module failed; FailClosed".into());
                it.shared = true;
                items.push(it);
            }
        }
    }
    Fragment {
        object: object.clone(),
        module: module.into(),
        digest: String::new(),
        items,
    }
}

pub use crate::datapath::sysctl::enable_bridge_netfilter;

/// One policy's drop counter, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DropCounter {
    /// NetworkPolicy or WasmNetworkPolicy.
    pub kind: ObjectKind,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Whether these are drops a monitor-mode policy would make.
    pub monitor: bool,
    pub namespace: String,
    pub policy: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Read the policy table's drop counters (`nft -j list counters`) in this
/// network namespace.
pub fn read_counters() -> Result<Vec<DropCounter>, String> {
    let table = skeleton::for_role(Role::NetworkPolicy).table;
    // No table yet: no policy has been loaded, so nothing was dropped.
    let Some(v) = crate::datapath::nft::list_counters(table)? else {
        return Ok(vec![]);
    };
    let mut counters = vec![];
    for o in v["nftables"].as_array().into_iter().flatten() {
        let c = &o["counter"];
        let Some(name) = c["name"].as_str() else {
            continue;
        };
        // `<direction>[-monitor][-wasm].<namespace>.<name>` (see `counter_name`).
        let mut parts = name.splitn(3, '.');
        let (Some(kind), Some(namespace), Some(policy)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (kind, wasm) = match kind.strip_suffix("-wasm") {
            Some(k) => (k, true),
            None => (kind, false),
        };
        let (direction, monitor) = match kind.strip_suffix("-monitor") {
            Some(d) => (d, true),
            None => (kind, false),
        };
        counters.push(DropCounter {
            kind: if wasm {
                ObjectKind::WasmNetworkPolicy
            } else {
                ObjectKind::NetworkPolicy
            },
            direction: direction.into(),
            monitor,
            namespace: namespace.into(),
            policy: policy.into(),
            packets: c["packets"].as_u64().unwrap_or(0),
            bytes: c["bytes"].as_u64().unwrap_or(0),
        });
    }
    Ok(counters)
}

/// The counters in Prometheus' text format.
pub fn metrics_text(counters: &[DropCounter]) -> String {
    use std::fmt::Write;
    let mut t = String::new();
    for (metric, help, bytes) in [
        (
            "switchyard_policy_drops_total",
            "Packets dropped (mode=enforce) or that would be dropped (mode=monitor), by the NetworkPolicies isolating the pod.",
            false,
        ),
        (
            "switchyard_policy_drop_bytes_total",
            "Bytes of those packets.",
            true,
        ),
    ] {
        let _ = writeln!(t, "# HELP {metric} {help}");
        let _ = writeln!(t, "# TYPE {metric} counter");
        for c in counters {
            let _ = writeln!(
                t,
                "{metric}{{kind=\"{:?}\",namespace=\"{}\",policy=\"{}\",direction=\"{}\",mode=\"{}\"}} {}",
                c.kind,
                c.namespace,
                c.policy,
                c.direction,
                if c.monitor { "monitor" } else { "enforce" },
                if bytes { c.bytes } else { c.packets }
            );
        }
    }
    t
}

/// The object a NetworkPolicy is.
pub fn policy_ref(p: &wit::Policy) -> ObjectRef {
    ObjectRef::new(ObjectKind::NetworkPolicy, &p.namespace, &p.name)
}

impl From<wit::Policy> for PolicyInput {
    /// A NetworkPolicy, rendered by the policy module.
    fn from(policy: wit::Policy) -> Self {
        PolicyInput {
            object: policy_ref(&policy),
            policy,
            module: None,
        }
    }
}

/// Every installed policy's isolation elements, grouped.
fn groups_of(store: &crate::plan::PlanStore) -> Groups {
    let mut groups = Groups::new();
    for fr in store.installed().filter(|f| is_policy(&f.object)) {
        for (key, a) in isolations(fr) {
            groups
                .entry(key)
                .or_default()
                .entry(crate::contract::wit_to_ip(&a))
                .or_insert((a, BTreeSet::new()))
                .1
                .insert(fr.object.clone());
        }
    }
    groups
}

/// The isolation elements of a fragment: group key and pod address.
fn isolations(fr: &Fragment) -> impl Iterator<Item = (GroupKey, wit::IpAddress)> + '_ {
    fr.items.iter().filter_map(|i| {
        let wit::PlanBody::NftElement(e) = &i.body else {
            return None;
        };
        let (d, rest) = e.set.split_once('-')?;
        let (monitor, f) = if let Some(f) = rest.strip_prefix("isolated") {
            (false, f)
        } else if let Some(f) = rest.strip_prefix("monitored") {
            (true, f)
        } else {
            return None;
        };
        match e.key.first() {
            Some(wit::NftValue::Address(a)) => Some(((d.to_string(), monitor, f.to_string()), *a)),
            _ => None,
        }
    })
}

/// Update `groups` with one change of the store; returns whether who
/// isolates whom changed. Only the changed object's items are read, and
/// most changes (allowed peers) leave its isolation alone.
fn update_groups(groups: &mut Groups, c: &Change) -> bool {
    if !is_policy(&c.object) {
        return false;
    }
    let set = |f: &Option<Arc<Fragment>>| -> BTreeSet<(GroupKey, IpAddr)> {
        f.iter()
            .flat_map(|f| isolations(f))
            .map(|(k, a)| (k, crate::contract::wit_to_ip(&a)))
            .collect()
    };
    let (old, new) = (set(&c.old), set(&c.new));
    if old == new {
        return false;
    }
    for (key, ip) in old.difference(&new) {
        if let Some(pods) = groups.get_mut(key) {
            if let Some((_, members)) = pods.get_mut(ip) {
                members.remove(&c.object);
                if members.is_empty() {
                    pods.remove(ip);
                }
            }
            if pods.is_empty() {
                groups.remove(key);
            }
        }
    }
    for (key, ip) in new.difference(&old) {
        groups
            .entry(key.clone())
            .or_default()
            .entry(*ip)
            .or_insert((crate::contract::wit_ip(*ip), BTreeSet::new()))
            .1
            .insert(c.object.clone());
    }
    true
}

fn is_policy(o: &ObjectRef) -> bool {
    matches!(
        o.kind,
        ObjectKind::NetworkPolicy | ObjectKind::WasmNetworkPolicy
    )
}

/// Whether `set` is one of the allow sets the host merges.
pub fn is_allow_set(set: &str) -> bool {
    skeleton::for_role(Role::NetworkPolicy)
        .map(set)
        .is_some_and(|m| m.interval())
}

/// The counter a policy's drops (or would-be drops) in a direction go to:
/// `<direction>[-monitor][-wasm].<namespace>.<name>`, `-wasm` for a
/// WasmNetworkPolicy.
pub fn counter_name(direction: &str, monitor: bool, object: &ObjectRef) -> String {
    let m = if monitor { "-monitor" } else { "" };
    let w = if object.kind == ObjectKind::WasmNetworkPolicy {
        "-wasm"
    } else {
        ""
    };
    format!("{direction}{m}{w}.{}.{}", object.namespace, object.name)
}

fn element(set: &str, key: Vec<wit::NftValue>, value: Option<wit::NftMapValue>) -> wit::PlanItem {
    wit::PlanItem {
        rule_id: "host".into(),
        comment: None,
        shared: false,
        body: wit::PlanBody::NftElement(wit::NftElement {
            set: set.into(),
            key,
            value,
        }),
    }
}

impl PolicyEngine {
    pub fn new(registry: Arc<Registry>, runner: Arc<dyn NftRunner>) -> Self {
        PolicyEngine {
            registry,
            runner,
            tracker: Tracker::default(),
            table: Table::new(skeleton::for_role(Role::NetworkPolicy)),
            ctx: None,
            errors: BTreeMap::new(),
            boxes: imbl::OrdMap::new(),
            index: BTreeMap::new(),
            policies: BTreeMap::new(),
            snapshot: Default::default(),
            last_groups: None,
        }
    }

    /// Where the engine publishes what it installed, for `explain`.
    pub fn snapshot(&self) -> SharedSnapshot {
        self.snapshot.clone()
    }

    /// The isolation elements of the installed policy fragments, grouped.
    /// A whole pass over the store: after a rebuild or a refusal; a sync
    /// otherwise updates the last groups with its changes
    /// ([`update_groups`]).
    fn groups(&self) -> Groups {
        groups_of(&self.table.store)
    }

    /// Publish the installed state for `explain` and the drop log.
    /// With `same_groups`, who isolates whom is as last published: only
    /// the boxes are new.
    fn publish(&self, groups: &Groups, same_groups: bool) {
        let (isolating, chains) = if same_groups {
            let last = self.snapshot.read().clone();
            (last.isolating.clone(), last.chains.clone())
        } else {
            let mut isolating: BTreeMap<(String, bool, IpAddr), Vec<ObjectRef>> = BTreeMap::new();
            let mut chains: BTreeMap<String, Vec<ObjectRef>> = BTreeMap::new();
            for ((d, monitor, _), pods) in groups {
                for (pod, members) in pods.values() {
                    let list: Vec<ObjectRef> = members.iter().cloned().collect();
                    chains.insert(group_chain(d, *monitor, members), list.clone());
                    isolating.insert((d.clone(), *monitor, crate::runtime::wit_to_ip(pod)), list);
                }
            }
            (Arc::new(isolating), Arc::new(chains))
        };
        let snap = Snapshot {
            chains,
            node: self
                .ctx
                .as_ref()
                .map(|c| c.node.clone())
                .unwrap_or_default(),
            boxes: self.boxes.clone(),
            isolating,
        };
        *self.snapshot.write() = Arc::new(snap);
    }

    fn module_identity(&self) -> Option<String> {
        self.registry
            .active_for(Role::NetworkPolicy)
            .map(|a| format!("{} {}", a.bound.module.digest, a.config))
    }

    pub fn set_context(&mut self, ctx: wit::NodeContext) {
        if self.ctx.as_ref() != Some(&ctx) {
            self.ctx = Some(ctx);
            self.tracker.forget_all();
        }
    }

    /// Every policy in the cluster, resolved. Marks what changed. Policies
    /// in `keep` could not be resolved this time: what is installed for
    /// them stays in force.
    pub fn set_policies(&mut self, all: Vec<PolicyInput>, keep: &BTreeSet<ObjectRef>) {
        if self.ctx.is_none() {
            return;
        }
        if self.table.module_is(self.module_identity()) {
            tracing::info!("the policy module changed: rendering every policy again");
            self.tracker.reset();
        }
        let registry = &self.registry;
        let inputs = all.into_iter().map(|p| {
            let digest = p
                .module
                .as_ref()
                .and_then(|m| registry.binding(&m.name))
                .and_then(|b| b.active())
                .map(|a| a.digest().to_string());
            (p.object.clone(), (p, digest))
        });
        let installed = &self.policies;
        self.tracker.set_all(inputs, |r| keep.contains(r));
        // Policies installed but no longer given (after a context change
        // cleared the inputs) go too, unless kept.
        let gone: Vec<ObjectRef> = installed
            .keys()
            .filter(|r| !self.tracker.knows(r) && !keep.contains(*r))
            .cloned()
            .collect();
        for r in gone {
            self.tracker.gone(r);
        }
    }

    pub fn pending(&self) -> bool {
        self.tracker.pending() || self.table.needs_full()
    }

    /// Policies that could not be rendered or installed, with the reason.
    pub fn errors(&self) -> &BTreeMap<ObjectRef, String> {
        &self.errors
    }

    /// The policies as last given.
    pub fn policies(&self) -> &BTreeMap<ObjectRef, PolicyInput> {
        &self.policies
    }

    /// The closed fragment of a policy whose module failed: its pods of
    /// this node isolated in every direction it governs, allowing nothing.
    fn closed(&self, object: &ObjectRef, p: &wit::Policy, module: &str) -> Fragment {
        closed(self.ctx.as_ref(), object, p, module)
    }

    /// Split a rendered fragment into what the store keeps and the boxes.
    /// Every box is kept for `explain`; an exact box (one peer address,
    /// one port) also stays in the fragment, as an element of its set's
    /// exact twin that other policies may hold too, and only the others
    /// are merged per pod ([`merge::exact_set`]).
    fn split(fragment: Fragment) -> (Fragment, Vec<Provenance>) {
        let mut rest = vec![];
        let mut boxes = vec![];
        let mut exact = HashSet::new();
        for item in fragment.items {
            if let wit::PlanBody::NftElement(e) = &item.body
                && is_allow_set(&e.set)
                && let Some((pod, allow)) = merge::parse(e)
            {
                if allow.is_exact() {
                    let i = merge::exact_element(&e.set, pod, &allow, item.rule_id.clone());
                    // Two rules of one policy may allow the same: the
                    // fragment holds the element once.
                    if exact.insert(crate::plan::store::claim(&i)) {
                        rest.push(i);
                    }
                }
                boxes.push(Provenance {
                    set: e.set.clone(),
                    pod: crate::runtime::wit_to_ip(&pod),
                    allow,
                    rule_id: item.rule_id.clone(),
                    comment: item.comment.clone(),
                });
                continue;
            }
            rest.push(item);
        }
        (
            Fragment {
                items: rest,
                ..fragment
            },
            boxes,
        )
    }

    /// Replace a policy's boxes; returns the pods touched.
    fn set_boxes(
        &mut self,
        object: &ObjectRef,
        boxes: Option<Vec<Provenance>>,
    ) -> BTreeSet<IpAddr> {
        let mut touched = BTreeSet::new();
        // Only boxes that are merged touch their pod: exact ones are
        // installed with the policy's own fragment.
        if let Some(old) = self.boxes.remove(object) {
            for b in old.iter().filter(|b| !b.allow.is_exact()) {
                touched.insert(b.pod);
                if let Some(s) = self.index.get_mut(&b.pod) {
                    s.remove(object);
                    if s.is_empty() {
                        self.index.remove(&b.pod);
                    }
                }
            }
        }
        if let Some(new) = boxes {
            for b in new.iter().filter(|b| !b.allow.is_exact()) {
                touched.insert(b.pod);
                self.index.entry(b.pod).or_default().insert(object.clone());
            }
            self.boxes.insert(object.clone(), Arc::new(new));
        }
        touched
    }

    /// The merged fragment of one pod address, from every policy's boxes.
    fn merged(&self, pod: IpAddr) -> Option<Fragment> {
        let mut by_set: BTreeMap<&str, Vec<AllowBox>> = BTreeMap::new();
        for o in self.index.get(&pod).into_iter().flatten() {
            for b in self.boxes.get(o).into_iter().flat_map(|v| v.iter()) {
                if b.pod == pod && !b.allow.is_exact() {
                    by_set.entry(&b.set).or_default().push(b.allow);
                }
            }
        }
        let wpod = crate::runtime::wit_ip(pod);
        let items: Vec<wit::PlanItem> = by_set
            .iter()
            .flat_map(|(set, bs)| {
                merge::disjoint(bs)
                    .into_iter()
                    .map(move |b| merge::element(set, wpod, &b))
            })
            .collect();
        (!items.is_empty()).then(|| Fragment {
            object: merged_ref(pod),
            module: "host".into(),
            digest: String::new(),
            items,
        })
    }

    /// The host's drop fragment: a chain per group of policies isolating a
    /// pod, the pod's drop map element jumping to it, and a counter per
    /// policy and direction.
    fn drops(groups: &Groups) -> Fragment {
        let mut items = vec![];
        let mut chains = BTreeSet::new();
        let mut counters = BTreeSet::new();
        for ((d, monitor, f), pods) in groups {
            for (pod, members) in pods.values() {
                let chain = group_chain(d, *monitor, members);
                let map = format!("{d}-{}drops{f}", if *monitor { "monitor-" } else { "" });
                items.push(element(
                    &map,
                    vec![wit::NftValue::Address(*pod)],
                    Some(wit::NftMapValue::Verdict(wit::NftVerdict::Jump(
                        chain.clone(),
                    ))),
                ));
                if chains.insert(chain.clone()) {
                    let names: Vec<String> = members
                        .iter()
                        .map(|o| counter_name(d, *monitor, o))
                        .collect();
                    let mut rules: Vec<wit::NftRule> = names
                        .chunks(16)
                        .map(|c| wit::NftRule {
                            matches: vec![],
                            statements: c
                                .iter()
                                .map(|n| wit::NftStatement::NamedCounter(n.clone()))
                                .collect(),
                        })
                        .collect();
                    // The agent reads the log (datapath::nflog) and names
                    // the policies of the chain.
                    rules.push(wit::NftRule {
                        matches: vec![],
                        statements: vec![wit::NftStatement::LogGroup((
                            POLICY_DROP_GROUP,
                            chain.clone(),
                        ))],
                    });
                    if !*monitor {
                        rules.push(wit::NftRule {
                            matches: vec![],
                            statements: vec![wit::NftStatement::Verdict(wit::NftVerdict::Drop)],
                        });
                    }
                    counters.extend(names);
                    items.push(wit::PlanItem {
                        rule_id: "host".into(),
                        comment: None,
                        shared: false,
                        body: wit::PlanBody::NftChain(wit::NftChain { name: chain, rules }),
                    });
                }
            }
        }
        for c in counters {
            items.push(wit::PlanItem {
                rule_id: "host".into(),
                comment: None,
                shared: false,
                body: wit::PlanBody::NftCounter(wit::NftCounter { name: c }),
            });
        }
        Fragment {
            object: drops_ref(),
            module: "host".into(),
            digest: String::new(),
            items,
        }
    }

    /// What a render came to: the policy's fragment and boxes, or its
    /// failure policy's fragment.
    #[allow(clippy::too_many_arguments)]
    fn outcome(
        &mut self,
        object: &ObjectRef,
        p: &PolicyInput,
        r: Result<Fragment, String>,
        failure_policy: FailurePolicy,
        module: &str,
        changes: &mut Vec<Change>,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        match r {
            Ok(fragment) => {
                let (rest, boxes) = Self::split(fragment);
                match self.table.store.rendered(rest) {
                    Ok(c) => {
                        self.errors.remove(object);
                        changes.push(c);
                        touched.extend(self.set_boxes(object, Some(boxes)));
                    }
                    Err(conflict) => {
                        self.errors.insert(object.clone(), conflict.to_string());
                    }
                }
            }
            Err(e) => {
                tracing::warn!(policy = %object, error = %e, "rendering a policy");
                self.errors.insert(object.clone(), e.clone());
                let closed = self.closed(object, &p.policy, module);
                changes.push(
                    self.table
                        .store
                        .failed(object, e, failure_policy, Some(closed)),
                );
                // Keep the last good boxes only when its fragment stays.
                if failure_policy != FailurePolicy::KeepLastGood {
                    touched.extend(self.set_boxes(object, None));
                }
            }
        }
    }

    /// Render WasmNetworkPolicies with the module they name, each with its
    /// config. A module that is missing, of another role, or refuses a
    /// policy's config fails the policy: its module's failure policy (or,
    /// without a module, KeepLastGood: closed if nothing was installed)
    /// decides what stays.
    async fn render_wasm(
        &mut self,
        ctx: &wit::NodeContext,
        name: &str,
        batch: Vec<(ObjectRef, PolicyInput)>,
        changes: &mut Vec<Change>,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        let active = self.registry.binding(name).and_then(|b| b.active());
        let module_error = match &active {
            None => Some(format!(
                "spec.module: NetworkModule {name:?} is not loaded on this node"
            )),
            Some(a) if a.spec.role != Role::NetworkPolicy => Some(format!(
                "spec.module: NetworkModule {name:?} has role {}, not network-policy",
                a.spec.role
            )),
            Some(_) => None,
        };
        let (active, failure_policy) = match (active, module_error) {
            (Some(a), None) => {
                let fp = a.spec.failure_policy;
                (a, fp)
            }
            (_, e) => {
                let e = e.unwrap_or_default();
                for (object, p) in batch {
                    let err = format!("{object}: {e}");
                    self.outcome(
                        &object,
                        &p,
                        Err(err),
                        FailurePolicy::KeepLastGood,
                        name,
                        changes,
                        touched,
                    );
                }
                return;
            }
        };
        let mut calls = vec![];
        let mut objects = vec![];
        for (object, p) in batch {
            let config = match p.module.as_ref().and_then(|m| m.config.as_ref()) {
                None => Ok(None),
                Some(c) => crate::registry::check_config(name, &active.info.config_schema, c)
                    .map(|()| Some(c.to_string()))
                    .map_err(|e| format!("{object}: spec.config: {e}")),
            };
            match config {
                Ok(config) => {
                    calls.push((p.policy.clone(), config));
                    objects.push((object, p));
                }
                Err(e) => self.outcome(&object, &p, Err(e), failure_policy, name, changes, touched),
            }
        }
        if calls.is_empty() {
            return;
        }
        let results = self
            .registry
            .render_policies(name, ctx.clone(), ObjectKind::WasmNetworkPolicy, calls)
            .await;
        match results {
            Ok(results) => {
                for ((object, p), r) in objects.iter().zip(results) {
                    let r = r.map_err(|e| e.to_string());
                    self.outcome(object, p, r, failure_policy, name, changes, touched);
                }
            }
            Err(e) => {
                for (object, p) in objects {
                    let r = Err(e.to_string());
                    self.outcome(&object, &p, r, failure_policy, name, changes, touched);
                }
            }
        }
    }

    /// Render what changed and apply the delta (or the whole table, the
    /// first time and after a failure).
    pub async fn sync(&mut self) -> SyncReport {
        let mut report = SyncReport::default();
        let Some(ctx) = self.ctx.clone() else {
            return report;
        };
        // The module rendering NetworkPolicies; WasmNetworkPolicies name
        // their own.
        let active = self.registry.active_for(Role::NetworkPolicy);
        // What to go back to if a new module cannot be called at all: the
        // store (kept by the table) and the boxes rendered into it.
        let mut previous = None;
        if let Some(active) = &active {
            let identity = format!("{} {}", active.bound.module.digest, active.config);
            if let Some(kept) = self.table.begin(identity) {
                // Every policy is in this batch: render into an empty store,
                // and replace the table in one transaction.
                previous = Some((
                    kept,
                    std::mem::take(&mut self.boxes),
                    std::mem::take(&mut self.index),
                ));
            }
        }
        let dirty = self.tracker.take();
        let mut changes: Vec<Change> = vec![];
        let mut touched: BTreeSet<IpAddr> = BTreeSet::new();
        let mut batch = vec![];
        let mut wasm: BTreeMap<String, Vec<(ObjectRef, PolicyInput)>> = BTreeMap::new();
        let mut digests: BTreeMap<ObjectRef, Option<String>> = BTreeMap::new();
        for (object, input) in dirty {
            match input {
                None => {
                    self.errors.remove(&object);
                    self.policies.remove(&object);
                    changes.push(self.table.store.remove(&object));
                    touched.extend(self.set_boxes(&object, None));
                }
                Some((p, digest)) => {
                    self.policies.insert(object.clone(), p.clone());
                    match (&p.module, &active) {
                        (Some(m), _) => wasm.entry(m.name.clone()).or_default().push((object, p)),
                        (None, Some(_)) => {
                            digests.insert(object.clone(), digest);
                            batch.push((object, p))
                        }
                        // No policy module yet: wait for one.
                        (None, None) => self.tracker.defer(object, Some((p, digest))),
                    }
                }
            }
        }
        report.rendered = batch.len() + wasm.values().map(Vec::len).sum::<usize>();
        let t = Instant::now();
        if let Some(active) = &active
            && !batch.is_empty()
        {
            let binding = active.spec.name.clone();
            let failure_policy = active.spec.failure_policy;
            let inputs: Vec<(wit::Policy, Option<String>)> = batch
                .iter()
                .map(|(_, p)| (p.policy.clone(), None))
                .collect();
            let results = self
                .registry
                .render_policies(&binding, ctx.clone(), ObjectKind::NetworkPolicy, inputs)
                .await;
            match results {
                Ok(results) => {
                    for ((object, p), r) in batch.iter().zip(results) {
                        let r = r.map_err(|e| e.to_string());
                        self.outcome(
                            object,
                            p,
                            r,
                            failure_policy,
                            &binding,
                            &mut changes,
                            &mut touched,
                        );
                    }
                }
                Err(e) => {
                    for (object, p) in batch {
                        self.errors.insert(object.clone(), e.to_string());
                        let digest = digests.remove(&object).flatten();
                        self.tracker.retry(object, (p, digest));
                    }
                    if let Some((kept, boxes, index)) = previous.take() {
                        self.table.restore(kept);
                        self.boxes = boxes;
                        self.index = index;
                        // The WasmNetworkPolicies of this batch wait too.
                        for (object, p) in wasm.into_values().flatten() {
                            self.tracker.retry(object, (p, None));
                        }
                        return report;
                    }
                }
            }
        }
        for (name, items) in wasm {
            self.render_wasm(&ctx, &name, items, &mut changes, &mut touched)
                .await;
        }
        report.render = t.elapsed();
        report.merged = touched.len();
        for pod in touched {
            let c = match self.merged(pod) {
                Some(f) => match self.table.store.rendered(f) {
                    Ok(c) => c,
                    Err(conflict) => {
                        tracing::error!(%conflict, "merged policy boxes conflict");
                        continue;
                    }
                },
                None => self.table.store.remove(&merged_ref(pod)),
            };
            changes.push(c);
        }
        // Who isolates whom: the last groups updated with this sync's
        // changes, or (after a rebuild, or with none kept) the store's.
        let (groups, same_groups) = match self.last_groups.take() {
            Some(mut groups) if previous.is_none() => {
                let mut changed = false;
                for c in &changes {
                    changed |= update_groups(&mut groups, c);
                }
                (groups, !changed)
            }
            last => {
                let groups = self.groups();
                let same = last.as_ref() == Some(&groups);
                (groups, same)
            }
        };
        let drops_installed = self
            .table
            .store
            .entry(&drops_ref())
            .is_some_and(|e| e.installed.is_some());
        if !(same_groups && drops_installed) {
            match self.table.store.rendered(Self::drops(&groups)) {
                Ok(c) => changes.push(c),
                Err(conflict) => tracing::error!(%conflict, "policy drop chains conflict"),
            }
        }
        let t = Instant::now();
        // A policy whose plan the kernel refuses gets what a failed render
        // would under its module's failure policy; the host's own
        // fragments (merged boxes, drops) are withdrawn.
        let (registry, policies, ctx) = (&self.registry, &self.policies, self.ctx.as_ref());
        let fallback = |object: &ObjectRef, module: &str| {
            let policy = registry
                .binding(module)
                .and_then(|b| b.active())
                .map(|a| a.spec.failure_policy);
            match (policies.get(object), policy) {
                (Some(p), Some(fp)) => (fp, Some(closed(ctx, object, &p.policy, module))),
                _ => (FailurePolicy::FailOpen, None),
            }
        };
        let applied = self.table.apply(
            &NftApplier(self.runner.clone()),
            &changes,
            &fallback,
            |_, e| {
                tracing::warn!(error = %e, "the policy delta was refused; loading the whole table");
            },
        );
        // Counted against the module that rendered it, and said per object.
        let registry = &self.registry;
        applied.say("policy", &mut self.errors, |i| {
            if let Some(a) = registry.binding(&i.module).and_then(|b| b.active()) {
                a.stats.record(std::time::Duration::ZERO, Some(&i.error));
            }
        });
        report.full = applied.full;
        report.script_bytes = applied.script_bytes;
        report.error = applied.error;
        report.apply = t.elapsed();
        self.publish(&groups, same_groups);
        // A refusal replaced plans in the store past these changes: the
        // next sync groups from the store.
        self.last_groups = applied.isolated.is_empty().then_some(groups);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn isolation(set: &str, ip: &str) -> wit::PlanItem {
        let ip: IpAddr = ip.parse().unwrap();
        // Isolation elements are shared: every policy selecting a pod
        // renders its element.
        let mut i = element(
            set,
            vec![wit::NftValue::Address(crate::contract::wit_ip(ip))],
            None,
        );
        i.shared = true;
        i
    }

    /// Groups updated change by change are the groups of the whole store.
    #[test]
    fn groups_follow_changes_as_a_whole_pass_would() {
        let mut store = crate::plan::PlanStore::new();
        let mut groups = Groups::new();
        let pol = |n: &str| ObjectRef::new(ObjectKind::NetworkPolicy, "ns", n);
        let frag = |o: ObjectRef, items: Vec<wit::PlanItem>| Fragment {
            object: o,
            module: "m".into(),
            digest: String::new(),
            items,
        };
        let steps: Vec<(ObjectRef, Option<Vec<wit::PlanItem>>, bool)> = vec![
            (
                pol("a"),
                Some(vec![isolation("ingress-isolated4", "10.0.0.1")]),
                true,
            ),
            (
                pol("b"),
                Some(vec![isolation("ingress-isolated4", "10.0.0.1")]),
                true,
            ),
            // Same isolation, new allowed peers: no change of groups.
            (
                pol("b"),
                Some(vec![
                    isolation("ingress-isolated4", "10.0.0.1"),
                    element("ingress-allow-exact4", vec![], None),
                ]),
                false,
            ),
            (
                pol("c"),
                Some(vec![isolation("egress-monitored6", "fd00::1")]),
                true,
            ),
            (
                pol("a"),
                Some(vec![isolation("ingress-isolated4", "10.0.0.2")]),
                true,
            ),
            (pol("b"), None, true),
            (pol("a"), None, true),
            (pol("c"), None, true),
        ];
        for (object, items, changes) in steps {
            let c = match items {
                Some(items) => store.rendered(frag(object, items)).unwrap(),
                None => store.remove(&object),
            };
            assert_eq!(update_groups(&mut groups, &c), changes, "{c:?}");
            assert_eq!(groups, groups_of(&store));
        }
        assert!(groups.is_empty());
    }
}
