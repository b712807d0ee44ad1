//! Fragments per object, as installed. The store is what makes updates
//! O(change): a render replaces one object's fragment, and the datapath
//! applies only the difference between the old and the new one.
//!
//! It also decides what is installed when a module fails, by the binding's
//! failure policy, and refuses a fragment that claims what another object's
//! fragment already holds (two Services with the same VIP and port, say):
//! the earlier one keeps it and the later one is reported.
//!
//! Items marked `shared` may be held by many objects as long as they render
//! them identically: the datapath gets the item with its first holder and
//! loses it with its last, except shared chains, which stay (retained) once
//! made. A shared chain is a class of objects (the pick chain of "random
//! over 11 endpoints"); there are few of them, an unreferenced chain costs
//! packets nothing, and making one is the expensive part of a change (each
//! of its rules binds its maps, and the kernel walks every element of a map
//! it binds: ~55 ms for the 300k backends of 30k Services). An object
//! moving back to a class it left is then an element change only.

use super::Fragment;
use super::key::ElementKey;
use crate::contract::bindings::imports::switchyard::plugin::types::{PlanBody, PlanItem};
use crate::model::{FailurePolicy, ObjectRef};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Something in a role's datapath a fragment takes for itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// A chain, set, map or counter name.
    Object(String),
    /// An element of a set or map, by set name and key.
    Element(String, ElementKey),
    /// An IPVS service, by address, protocol and port.
    Ipvs(String),
    /// A route, by table and destination.
    Route(String),
    /// An address on an interface.
    Address(String),
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Claim::Object(n) => write!(f, "{n}"),
            Claim::Element(s, k) => write!(f, "element {k} of {s}"),
            Claim::Ipvs(k) => write!(f, "IPVS service {k}"),
            Claim::Route(k) => write!(f, "route {k}"),
            Claim::Address(k) => write!(f, "address {k}"),
        }
    }
}

/// The identity of an item: two items with the same claim are the same thing
/// in the datapath (possibly with different contents).
pub fn claim(item: &PlanItem) -> Claim {
    let ip = crate::contract::wit_to_ip;
    match &item.body {
        PlanBody::NftChain(c) => Claim::Object(format!("chain {}", c.name)),
        PlanBody::NftSet(s) => Claim::Object(format!("set {}", s.name)),
        PlanBody::NftMap(m) => Claim::Object(format!("map {}", m.name)),
        PlanBody::NftCounter(c) => Claim::Object(format!("counter {}", c.name)),
        PlanBody::NftElement(e) => Claim::Element(e.set.clone(), ElementKey::of(&e.key)),
        PlanBody::IpvsService(s) => {
            Claim::Ipvs(format!("{:?} {}:{}", s.protocol, ip(&s.address), s.port))
        }
        PlanBody::Route(r) => Claim::Route(format!(
            "table {} {}/{}",
            r.table.unwrap_or(254),
            ip(&r.destination.address),
            r.destination.prefix_len
        )),
        PlanBody::InterfaceAddress(a) => Claim::Address(format!(
            "{} {}/{}",
            a.device,
            ip(&a.address.address),
            a.address.prefix_len
        )),
    }
}

/// A fragment could not be installed because another object holds part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object} conflicts with {owner}: both want {claim}")]
pub struct Conflict {
    pub object: ObjectRef,
    pub owner: ObjectRef,
    pub claim: Claim,
}

/// Why an object's installed fragment is not a fresh render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: String,
    pub policy: FailurePolicy,
}

/// One object's state.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// What the datapath has for the object.
    pub installed: Option<Arc<Fragment>>,
    /// The last fragment the module rendered successfully.
    pub last_good: Option<Arc<Fragment>>,
    /// The good fragment before `last_good`: where the object goes back to
    /// under KeepLastGood if the kernel refuses `last_good`.
    pub previous_good: Option<Arc<Fragment>>,
    /// Set while the latest render failed.
    pub failure: Option<Failure>,
}

/// What changed for one object: the datapath replaces `old` by `new`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub object: ObjectRef,
    pub old: Option<Arc<Fragment>>,
    pub new: Option<Arc<Fragment>>,
    /// Shared items of `old` other objects still hold: not to be removed.
    pub kept: Vec<Claim>,
    /// Shared items of `new` other objects already hold (or that are
    /// retained): not to be added.
    pub present: Vec<Claim>,
    /// Retained items `new` replaces with a different body: removed first.
    pub evicted: Vec<PlanItem>,
}

impl Change {
    /// Whether the datapath has nothing to do.
    pub fn is_noop(&self) -> bool {
        match (&self.old, &self.new) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.items == b.items,
            _ => false,
        }
    }

    /// The items to remove and to add, comparing by identity and content.
    pub fn delta(&self) -> Delta<'_> {
        let old = self
            .old
            .as_deref()
            .map(|f| f.items.as_slice())
            .unwrap_or(&[]);
        let new = self
            .new
            .as_deref()
            .map(|f| f.items.as_slice())
            .unwrap_or(&[]);
        let new_by: HashMap<Claim, &PlanItem> = new.iter().map(|i| (claim(i), i)).collect();
        let old_by: HashMap<Claim, &PlanItem> = old.iter().map(|i| (claim(i), i)).collect();
        Delta {
            removed: old
                .iter()
                .filter(|i| {
                    let c = claim(i);
                    !self.kept.contains(&c) && new_by.get(&c).is_none_or(|n| n.body != i.body)
                })
                .collect(),
            added: new
                .iter()
                .filter(|i| {
                    let c = claim(i);
                    !self.present.contains(&c) && old_by.get(&c).is_none_or(|o| o.body != i.body)
                })
                .collect(),
        }
    }
}

/// The difference between two fragments of one object. A changed item is
/// removed and added again.
#[derive(Debug, PartialEq)]
pub struct Delta<'a> {
    pub removed: Vec<&'a PlanItem>,
    pub added: Vec<&'a PlanItem>,
}

/// Who holds a claim.
#[derive(Debug, Clone)]
enum Holder {
    One(ObjectRef),
    /// A shared item, with the objects that render it.
    Shared(BTreeSet<ObjectRef>),
}

/// Fragments by object for one role's datapath.
#[derive(Debug, Default)]
pub struct PlanStore {
    entries: BTreeMap<ObjectRef, Entry>,
    owners: HashMap<Claim, Holder>,
    /// The body of each shared item, to check that its holders agree.
    shared: HashMap<Claim, PlanItem>,
    /// Shared chains no object holds any more, still in the datapath.
    retained: BTreeMap<Claim, PlanItem>,
}

impl PlanStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entry(&self, object: &ObjectRef) -> Option<&Entry> {
        self.entries.get(object)
    }

    /// Every installed fragment, by object.
    pub fn installed(&self) -> impl Iterator<Item = &Arc<Fragment>> {
        self.entries.values().filter_map(|e| e.installed.as_ref())
    }

    /// Shared chains no object holds, kept in the datapath (a full sync
    /// installs them with the fragments).
    pub fn retained(&self) -> impl Iterator<Item = &PlanItem> {
        self.retained.values()
    }

    /// Which object holds a claim (the first, for a shared item).
    pub fn owner(&self, claim: &Claim) -> Option<&ObjectRef> {
        match self.owners.get(claim)? {
            Holder::One(o) => Some(o),
            Holder::Shared(s) => s.iter().next(),
        }
    }

    /// How many objects hold a claim.
    pub fn holders(&self, claim: &Claim) -> usize {
        match self.owners.get(claim) {
            None => 0,
            Some(Holder::One(_)) => 1,
            Some(Holder::Shared(s)) => s.len(),
        }
    }

    fn check(&self, fragment: &Fragment) -> Result<(), Conflict> {
        for item in &fragment.items {
            let c = claim(item);
            let conflict = |owner: &ObjectRef| Conflict {
                object: fragment.object.clone(),
                owner: owner.clone(),
                claim: c.clone(),
            };
            match self.owners.get(&c) {
                None => {}
                Some(Holder::One(owner)) if *owner != fragment.object => {
                    return Err(conflict(owner));
                }
                Some(Holder::One(_)) => {}
                Some(Holder::Shared(holders)) => {
                    // Checked first: agreeing is the common case, and it
                    // needs no walk over the (possibly many) holders.
                    let agrees =
                        item.shared && self.shared.get(&c).is_some_and(|s| s.body == item.body);
                    if !agrees && let Some(other) = holders.iter().find(|o| **o != fragment.object)
                    {
                        return Err(conflict(other));
                    }
                }
            }
        }
        Ok(())
    }

    fn install(&mut self, object: &ObjectRef, new: Option<Arc<Fragment>>) -> Change {
        let entry = self.entries.entry(object.clone()).or_default();
        let old = std::mem::replace(&mut entry.installed, new.clone());
        let mut kept = vec![];
        let mut present = vec![];
        let mut evicted = vec![];
        if let Some(o) = &old {
            for item in &o.items {
                let c = claim(item);
                match self.owners.get_mut(&c) {
                    Some(Holder::Shared(holders)) => {
                        holders.remove(object);
                        if holders.is_empty() {
                            self.owners.remove(&c);
                            if let Some(body) = self.shared.remove(&c)
                                && matches!(body.body, PlanBody::NftChain(_))
                            {
                                self.retained.insert(c.clone(), body);
                                kept.push(c);
                            }
                        } else {
                            kept.push(c);
                        }
                    }
                    _ => {
                        self.owners.remove(&c);
                    }
                }
            }
        }
        if let Some(n) = &new {
            for item in &n.items {
                let c = claim(item);
                if item.shared {
                    match self.owners.get_mut(&c) {
                        Some(Holder::Shared(holders)) => {
                            if !holders.is_empty() {
                                present.push(c.clone());
                            }
                            holders.insert(object.clone());
                        }
                        _ => {
                            // A retained chain comes back: as it is, or
                            // replaced if the module now renders it otherwise.
                            if let Some(r) = self.retained.remove(&c) {
                                if r.body == item.body {
                                    present.push(c.clone());
                                } else {
                                    evicted.push(r);
                                }
                            }
                            self.owners.insert(
                                c.clone(),
                                Holder::Shared(BTreeSet::from([object.clone()])),
                            );
                            self.shared.insert(c, item.clone());
                        }
                    }
                } else {
                    // A retained chain of the same name gives way.
                    if let Some(r) = self.retained.remove(&c) {
                        evicted.push(r);
                    }
                    self.owners.insert(c, Holder::One(object.clone()));
                }
            }
        }
        Change {
            object: object.clone(),
            old,
            new,
            kept,
            present,
            evicted,
        }
    }

    /// A module rendered an object. Installed unless it conflicts with another
    /// object's fragment; then nothing changes and the conflict is returned
    /// (treat it as a failure of this object).
    pub fn rendered(&mut self, fragment: Fragment) -> Result<Change, Conflict> {
        self.check(&fragment)?;
        let object = fragment.object.clone();
        let fragment = Arc::new(fragment);
        let change = self.install(&object, Some(fragment.clone()));
        let entry = self.entries.get_mut(&object).expect("installed above");
        entry.previous_good = entry.last_good.replace(fragment);
        entry.failure = None;
        Ok(change)
    }

    /// The kernel refused the object's latest fragment: it was not good
    /// after all. What `policy` says is installed instead, as for a failed
    /// render, with the fragment before it as the last good one.
    pub fn refused(
        &mut self,
        object: &ObjectRef,
        error: String,
        policy: FailurePolicy,
        closed: Option<Fragment>,
    ) -> Change {
        if let Some(e) = self.entries.get_mut(object) {
            e.last_good = e.previous_good.take();
        }
        self.failed(object, error, policy, closed)
    }

    /// Rendering an object failed: install what `policy` says. `closed` is the
    /// role's closed fragment for the object (a Service that rejects, a pod
    /// that is isolated), if the role has one.
    pub fn failed(
        &mut self,
        object: &ObjectRef,
        error: String,
        policy: FailurePolicy,
        closed: Option<Fragment>,
    ) -> Change {
        let entry = self.entries.entry(object.clone()).or_default().clone();
        let closed = closed.filter(|c| self.check(c).is_ok()).map(Arc::new);
        let new = match policy {
            FailurePolicy::FailOpen => None,
            FailurePolicy::FailClosed => closed,
            FailurePolicy::KeepLastGood => match entry.last_good {
                Some(good) => Some(good),
                None => closed,
            },
        };
        let change = if entry.installed.as_ref().map(Arc::as_ptr) == new.as_ref().map(Arc::as_ptr) {
            Change {
                object: object.clone(),
                old: entry.installed.clone(),
                new: entry.installed.clone(),
                kept: vec![],
                present: vec![],
                evicted: vec![],
            }
        } else {
            self.install(object, new)
        };
        self.entries
            .get_mut(object)
            .expect("inserted above")
            .failure = Some(Failure { error, policy });
        change
    }

    /// A fresh store that remembers `from`'s last good fragments (and
    /// installs nothing): when a new module version renders everything
    /// again, an object it fails to render under KeepLastGood keeps the
    /// plan the old version made for it, object by object, with the old
    /// version's provenance.
    pub fn remembering(from: &PlanStore) -> PlanStore {
        let mut s = PlanStore::new();
        for (object, e) in &from.entries {
            if let Some(good) = &e.last_good {
                s.entries.insert(
                    object.clone(),
                    Entry {
                        last_good: Some(good.clone()),
                        ..Entry::default()
                    },
                );
            }
        }
        s
    }

    /// The object is gone: withdraw its fragment.
    pub fn remove(&mut self, object: &ObjectRef) -> Change {
        let change = self.install(object, None);
        self.entries.remove(object);
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::bindings::imports::switchyard::plugin::types::{
        IpAddress, NftChain, NftElement, NftMapValue, NftRule, NftStatement, NftValue, NftVerdict,
        Protocol,
    };
    use crate::model::ObjectKind;

    fn svc(name: &str) -> ObjectRef {
        ObjectRef::new(ObjectKind::Service, "default", name)
    }

    fn element(vip: u8, port: u16, chain: &str) -> PlanItem {
        PlanItem {
            rule_id: "vip".into(),
            comment: None,
            shared: false,
            body: PlanBody::NftElement(NftElement {
                set: "service-chains".into(),
                key: vec![
                    NftValue::Address(IpAddress::Ipv4((10, 96, 0, vip))),
                    NftValue::Protocol(Protocol::Tcp),
                    NftValue::Port(port),
                ],
                value: Some(NftMapValue::Verdict(NftVerdict::Goto(chain.into()))),
            }),
        }
    }

    fn chain(name: &str, rules: usize) -> PlanItem {
        PlanItem {
            rule_id: "svc".into(),
            comment: None,
            shared: false,
            body: PlanBody::NftChain(NftChain {
                name: name.into(),
                rules: vec![
                    NftRule {
                        matches: vec![],
                        statements: vec![NftStatement::Counter]
                    };
                    rules
                ],
            }),
        }
    }

    fn frag(name: &str, items: Vec<PlanItem>) -> Fragment {
        Fragment {
            object: svc(name),
            module: "proxy".into(),
            digest: "d".into(),
            items,
        }
    }

    #[test]
    fn delta_holds_only_what_changed() {
        let mut s = PlanStore::new();
        s.rendered(frag("a", vec![chain("svc-a", 1), element(1, 80, "svc-a")]))
            .unwrap();
        let c = s
            .rendered(frag("a", vec![chain("svc-a", 2), element(1, 80, "svc-a")]))
            .unwrap();
        let d = c.delta();
        assert_eq!(d.removed.len(), 1);
        assert_eq!(d.added.len(), 1);
        assert!(matches!(&d.added[0].body, PlanBody::NftChain(c) if c.rules.len() == 2));
        let same = s
            .rendered(frag("a", vec![chain("svc-a", 2), element(1, 80, "svc-a")]))
            .unwrap();
        assert!(same.is_noop());
    }

    #[test]
    fn a_conflicting_fragment_is_refused_and_names_the_owner() {
        let mut s = PlanStore::new();
        s.rendered(frag("a", vec![chain("svc-a", 1), element(1, 80, "svc-a")]))
            .unwrap();
        let e = s
            .rendered(frag("b", vec![chain("svc-b", 1), element(1, 80, "svc-b")]))
            .unwrap_err();
        assert_eq!(e.owner, svc("a"));
        assert!(
            e.to_string()
                .contains("Service default/b conflicts with Service default/a"),
            "{e}"
        );
        assert!(s.entry(&svc("b")).is_none_or(|e| e.installed.is_none()));
        // Once a lets go, b may have it.
        s.remove(&svc("a"));
        s.rendered(frag("b", vec![chain("svc-b", 1), element(1, 80, "svc-b")]))
            .unwrap();
    }

    #[test]
    fn failure_policies() {
        let good = frag("a", vec![chain("svc-a", 1), element(1, 80, "svc-a")]);
        let closed = || Some(frag("a", vec![element(1, 80, "reject")]));
        for (policy, expect) in [
            (FailurePolicy::KeepLastGood, Some(good.clone())),
            (FailurePolicy::FailOpen, None),
            (FailurePolicy::FailClosed, closed()),
        ] {
            let mut s = PlanStore::new();
            s.rendered(good.clone()).unwrap();
            let c = s.failed(&svc("a"), "boom".into(), policy, closed());
            let e = s.entry(&svc("a")).unwrap();
            assert_eq!(e.installed.as_deref(), expect.as_ref(), "{policy}");
            assert_eq!(e.failure.as_ref().unwrap().error, "boom");
            assert_eq!(
                c.is_noop(),
                policy == FailurePolicy::KeepLastGood,
                "{policy}"
            );
        }
        // KeepLastGood with nothing good yet falls back to closed.
        let mut s = PlanStore::new();
        s.failed(
            &svc("a"),
            "boom".into(),
            FailurePolicy::KeepLastGood,
            closed(),
        );
        assert_eq!(
            s.entry(&svc("a")).unwrap().installed.as_deref(),
            closed().as_ref()
        );
        // A later good render clears the failure.
        s.rendered(good.clone()).unwrap();
        assert!(s.entry(&svc("a")).unwrap().failure.is_none());
    }

    #[test]
    fn shared_items_live_while_any_holder_renders_them() {
        let shared = |rules| {
            let mut c = chain("pick-rr-2", rules);
            c.shared = true;
            c
        };
        let mut s = PlanStore::new();
        let a = s
            .rendered(frag("a", vec![shared(1), element(1, 80, "pick-rr-2")]))
            .unwrap();
        assert_eq!(a.delta().added.len(), 2);
        // b renders the same chain: only its element is new to the datapath.
        let b = s
            .rendered(frag("b", vec![shared(1), element(2, 80, "pick-rr-2")]))
            .unwrap();
        assert_eq!(b.delta().added.len(), 1);
        assert_eq!(s.holders(&claim(&shared(1))), 2);
        // A different body under the same name is a conflict.
        assert!(
            s.rendered(frag("c", vec![shared(2), element(3, 80, "pick-rr-2")]))
                .is_err()
        );
        // a goes: the chain stays for b.
        let gone = s.remove(&svc("a"));
        assert_eq!(gone.delta().removed.len(), 1);
        // b goes: nobody holds the chain, but it is retained (making it
        // again would cost more than keeping it).
        let gone = s.remove(&svc("b"));
        assert_eq!(gone.delta().removed.len(), 1, "only b's element");
        assert_eq!(s.holders(&claim(&shared(1))), 0);
        assert_eq!(s.retained().count(), 1);
        // c comes back to it: only its element is new.
        let c = s
            .rendered(frag("c", vec![shared(1), element(3, 80, "pick-rr-2")]))
            .unwrap();
        assert_eq!(c.delta().added.len(), 1);
        assert!(c.evicted.is_empty());
        assert_eq!(s.retained().count(), 0);
        // A module that now renders the chain otherwise replaces the
        // retained one: evicted, then added.
        s.remove(&svc("c"));
        let d = s
            .rendered(frag("d", vec![shared(2), element(4, 80, "pick-rr-2")]))
            .unwrap();
        assert_eq!(d.evicted.len(), 1);
        assert_eq!(d.delta().added.len(), 2);
        let text = crate::datapath::nft::delta_script("t", std::slice::from_ref(&d)).text();
        assert!(
            text.contains("flush chain inet t pick-rr-2")
                && !text.contains("delete chain")
                && text.contains("add chain inet t pick-rr-2"),
            "{text}"
        );
    }
}
