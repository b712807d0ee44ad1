//! One change tracker and one table for every role that renders per object
//! (the Service proxy, the policy table; IPVS will be the third), as
//! kube-proxy's change trackers serve every proxier.
//!
//! - A [`Tracker`] is fed each object's input (previous, current) and keeps
//!   what changed: an input equal to the last one is no change at all
//!   (compared by value, not by a printed form). What is marked renders in
//!   the next sync; an object whose render could not be made at all is
//!   marked again.
//! - A [`Table`] owns the role's [`PlanStore`] and applies a sync's changes
//!   to the kernel as one delta, or the whole table the first time and after
//!   a failure. When the role's module changes (an operator swaps it), every
//!   object renders again into a fresh store while the old one is kept, to
//!   go back to if the new module cannot be called at all.
//!
//! The kernel is reached through an [`Applier`] (the datapath implements it
//! for nftables): the plan holds no side effect.

use super::{Change, Fragment, PlanStore, skeleton::Skeleton};
use crate::contract::bindings::imports::switchyard::plugin::types::PlanItem;
use crate::model::{FailurePolicy, ObjectRef};
use std::collections::{BTreeMap, HashMap};

/// What changed since the last sync, per object, by value.
#[derive(Debug)]
pub struct Tracker<I> {
    /// Each object's input as last marked.
    inputs: HashMap<ObjectRef, I>,
    /// Objects to render (`None`: gone).
    dirty: BTreeMap<ObjectRef, Option<I>>,
}

impl<I> Default for Tracker<I> {
    fn default() -> Self {
        Tracker {
            inputs: HashMap::new(),
            dirty: BTreeMap::new(),
        }
    }
}

impl<I: Clone + PartialEq> Tracker<I> {
    /// Every object there is now, each with its input: the ones whose input
    /// differs from the last are marked, and the ones known before and not
    /// given (unless `keep` holds for them) are marked gone.
    pub fn set_all(
        &mut self,
        all: impl IntoIterator<Item = (ObjectRef, I)>,
        keep: impl Fn(&ObjectRef) -> bool,
    ) {
        let mut seen = std::collections::HashSet::new();
        for (object, input) in all {
            seen.insert(object.clone());
            self.set(object, input);
        }
        let gone: Vec<ObjectRef> = self
            .inputs
            .keys()
            .filter(|r| !seen.contains(*r) && !keep(r))
            .cloned()
            .collect();
        for r in gone {
            self.inputs.remove(&r);
            self.dirty.insert(r, None);
        }
    }

    /// One object's input now: marked if it changed.
    pub fn set(&mut self, object: ObjectRef, input: I) {
        if self.inputs.get(&object) != Some(&input) {
            self.inputs.insert(object.clone(), input.clone());
            self.dirty.insert(object, Some(input));
        }
    }

    /// One object changed (or is gone, with `None`), whatever it was.
    pub fn update(&mut self, object: ObjectRef, input: Option<I>) {
        match &input {
            Some(i) => {
                self.inputs.insert(object.clone(), i.clone());
            }
            None => {
                self.inputs.remove(&object);
            }
        }
        self.dirty.insert(object, input);
    }

    /// Mark `object` gone (an installed fragment no input owns any more).
    pub fn gone(&mut self, object: ObjectRef) {
        self.inputs.remove(&object);
        self.dirty.insert(object, None);
    }

    /// Everything renders again with the next inputs (the context they are
    /// rendered in changed).
    pub fn forget_all(&mut self) {
        self.inputs.clear();
    }

    /// Everything renders again, and what was marked so far is dropped (the
    /// module changed: the next `set_all` marks every object).
    pub fn reset(&mut self) {
        self.inputs.clear();
        self.dirty.clear();
    }

    /// What to render now.
    pub fn take(&mut self) -> BTreeMap<ObjectRef, Option<I>> {
        std::mem::take(&mut self.dirty)
    }

    /// `object` could not be rendered at all (the module could not be
    /// called): it renders in the next sync, whatever its input then.
    pub fn retry(&mut self, object: ObjectRef, input: I) {
        self.inputs.remove(&object);
        self.dirty.insert(object, Some(input));
    }

    /// Put `object` back as it was taken, to render later (its module is
    /// not there yet).
    pub fn defer(&mut self, object: ObjectRef, input: Option<I>) {
        self.dirty.insert(object, input);
    }

    pub fn pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Whether `object` has an input.
    pub fn knows(&self, object: &ObjectRef) -> bool {
        self.inputs.contains_key(object)
    }

    /// The object's input as last marked.
    pub fn input(&self, object: &ObjectRef) -> Option<&I> {
        self.inputs.get(object)
    }
}

/// What an object whose plan the kernel refused gets instead, given the
/// object and the binding that rendered the plan: the binding's failure
/// policy and the role's closed fragment for the object, as for a failed
/// render.
pub type Fallback<'a> = &'a dyn Fn(&ObjectRef, &str) -> (FailurePolicy, Option<Fragment>);

/// How a role's changes reach the kernel.
pub trait Applier: Send + Sync {
    /// Apply `changes` to `table` as one transaction; the size of what was
    /// sent. An empty delta sends nothing.
    fn delta(&self, table: &Skeleton, changes: &[Change]) -> Result<usize, String>;
    /// Replace the whole table with what `store` holds, atomically; the size
    /// of what was sent.
    fn full(&self, table: &Skeleton, store: &PlanStore) -> (usize, Result<(), String>);
    /// Whether the kernel would take the whole table with only `fragments`
    /// (and the retained shared items), without applying anything. An
    /// applier that cannot check says so, and nothing is isolated.
    fn check(
        &self,
        table: &Skeleton,
        fragments: &[&Fragment],
        retained: &[&PlanItem],
    ) -> Result<(), String> {
        let _ = (table, fragments, retained);
        Err("this applier cannot check without applying".into())
    }
}

/// An object whose plan the kernel refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolated {
    pub object: ObjectRef,
    /// The binding (NetworkModule) that rendered the plan.
    pub module: String,
    pub error: String,
}

/// The objects whose fragments the kernel refuses among `fragments`, found
/// by halving (a few checks when one object of many is bad), with the
/// kernel's reason.
fn refused(
    applier: &dyn Applier,
    table: &Skeleton,
    fragments: &[&Fragment],
    retained: &[&PlanItem],
    out: &mut Vec<Isolated>,
) {
    if fragments.is_empty() {
        return;
    }
    let Err(e) = applier.check(table, fragments, retained) else {
        return;
    };
    if let [one] = fragments {
        out.push(Isolated {
            object: one.object.clone(),
            module: one.module.clone(),
            error: format!("nftables refused its plan: {e}"),
        });
        return;
    }
    let (a, b) = fragments.split_at(fragments.len() / 2);
    refused(applier, table, a, retained, out);
    refused(applier, table, b, retained, out);
}

/// What applying a sync's changes did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Whether the whole table was replaced.
    pub full: bool,
    pub script_bytes: usize,
    /// The delta the kernel refused (a full load followed).
    pub refused: Option<String>,
    /// Why the table could not be loaded, if it could not.
    pub error: Option<String>,
    /// Objects whose plan the kernel refused in a whole-table load, with
    /// the binding that rendered it and the kernel's reason: withdrawn, so
    /// that every other object's plan loads.
    pub isolated: Vec<Isolated>,
}

impl Applied {
    /// Says what the kernel refused, for the role's `table`: each isolated
    /// object is logged, counted against its module by `count` and kept in
    /// `errors`; a table that could not be loaded is logged. The caller
    /// copies `full`, `script_bytes` and `error` into its report.
    pub fn say(
        &self,
        table: &str,
        errors: &mut BTreeMap<ObjectRef, String>,
        mut count: impl FnMut(&Isolated),
    ) {
        for i in &self.isolated {
            tracing::warn!(object = %i.object, error = %i.error, table, "isolated from the table");
            count(i);
            errors.insert(i.object.clone(), i.error.clone());
        }
        if let Some(e) = &self.error {
            tracing::error!(error = %e, table, "the table could not be loaded");
        }
    }
}

/// The store kept while a new module renders everything again.
#[derive(Debug)]
pub struct Kept {
    store: PlanStore,
    needs_full: bool,
}

/// A role's table: its plan store and what the kernel holds of it.
#[derive(Debug)]
pub struct Table {
    skeleton: &'static Skeleton,
    pub store: PlanStore,
    /// Set until a full load succeeded.
    needs_full: bool,
    /// The module version and config the store was rendered with.
    rendered_by: Option<String>,
    /// Set when the module changed: the next sync renders every object into
    /// a fresh store and replaces the table.
    rebuild: bool,
}

impl Table {
    pub fn new(skeleton: &'static Skeleton) -> Table {
        Table {
            skeleton,
            store: PlanStore::new(),
            needs_full: true,
            rendered_by: None,
            rebuild: false,
        }
    }

    pub fn skeleton(&self) -> &'static Skeleton {
        self.skeleton
    }

    /// The role's module is now `identity` (its digest and config): whether
    /// it differs from the one the store was rendered with (then the next
    /// sync rebuilds).
    pub fn module_is(&mut self, identity: Option<String>) -> bool {
        let changed =
            identity.is_some() && self.rendered_by.is_some() && identity != self.rendered_by;
        if changed {
            self.rebuild = true;
        }
        changed
    }

    /// At the start of a sync by the module `identity`: a rebuild begins
    /// (every object is in this sync) with a fresh store, the old one kept.
    /// The fresh store remembers the old one's last good fragments, so that
    /// under KeepLastGood an object the new version fails to render keeps
    /// its old plan.
    pub fn begin(&mut self, identity: String) -> Option<Kept> {
        self.rendered_by = Some(identity);
        if !self.rebuild {
            return None;
        }
        self.rebuild = false;
        let fresh = PlanStore::remembering(&self.store);
        let kept = Kept {
            store: std::mem::replace(&mut self.store, fresh),
            needs_full: self.needs_full,
        };
        self.needs_full = true;
        Some(kept)
    }

    /// The new module could not be called at all: back to the old store,
    /// and the rebuild is tried again next time.
    pub fn restore(&mut self, kept: Kept) {
        self.store = kept.store;
        self.needs_full = kept.needs_full;
        self.rebuild = true;
    }

    /// Whether a sync has something to do even without changes.
    pub fn needs_full(&self) -> bool {
        self.needs_full
    }

    /// Apply `changes`: a delta, or the whole table when one is due. A
    /// refused delta is said, and the whole table is loaded instead (after
    /// `on_refused`, which may replace the refused objects' plans in the
    /// store). Objects the kernel refuses in a whole-table load get what
    /// `fallback` says: under KeepLastGood their plan before the refused
    /// one.
    pub fn apply(
        &mut self,
        applier: &dyn Applier,
        changes: &[Change],
        fallback: Fallback<'_>,
        on_refused: impl FnOnce(&mut PlanStore, &str),
    ) -> Applied {
        let mut out = Applied::default();
        if !self.needs_full {
            match applier.delta(self.skeleton, changes) {
                Ok(bytes) => out.script_bytes = bytes,
                Err(e) => {
                    on_refused(&mut self.store, &e);
                    out.refused = Some(e);
                    self.needs_full = true;
                }
            }
        }
        if self.needs_full {
            out.full = true;
            let (bytes, mut result) = applier.full(self.skeleton, &self.store);
            out.script_bytes = bytes;
            if result.is_err() {
                // One object's plan must not keep every other's out of the
                // kernel: find what it refuses, withdraw it, load again.
                let fragments: Vec<&Fragment> =
                    self.store.installed().map(|f| f.as_ref()).collect();
                let retained: Vec<&PlanItem> = self.store.retained().collect();
                let mut bad = vec![];
                refused(applier, self.skeleton, &fragments, &retained, &mut bad);
                if !bad.is_empty() {
                    for i in &bad {
                        let (policy, closed) = fallback(&i.object, &i.module);
                        self.store
                            .refused(&i.object, i.error.clone(), policy, closed);
                    }
                    out.isolated = bad;
                    let (bytes, again) = applier.full(self.skeleton, &self.store);
                    out.script_bytes = bytes;
                    result = again;
                }
            }
            match result {
                Ok(()) => self.needs_full = false,
                Err(e) => out.error = Some(e),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectKind;

    fn r(n: &str) -> ObjectRef {
        ObjectRef::new(ObjectKind::Service, "x", n)
    }

    /// A hot swap renders every object again into a fresh store; an object
    /// the new version fails under KeepLastGood keeps the old version's
    /// plan, and one under FailOpen does not.
    #[test]
    fn a_swap_keeps_the_old_plan_of_an_object_the_new_version_fails() {
        use crate::model::Role;
        let mut t = Table::new(crate::plan::skeleton::for_role(Role::ServiceProxy));
        assert!(t.begin("v1".into()).is_none());
        let good = |n: &str| Fragment {
            object: r(n),
            module: "m".into(),
            digest: "v1".into(),
            items: vec![],
        };
        t.store.rendered(good("a")).unwrap();
        t.store.rendered(good("b")).unwrap();
        assert!(t.module_is(Some("v2".into())));
        let _kept = t.begin("v2".into()).expect("a rebuild");
        t.store.failed(
            &r("a"),
            "v2 traps".into(),
            FailurePolicy::KeepLastGood,
            None,
        );
        t.store
            .failed(&r("b"), "v2 traps".into(), FailurePolicy::FailOpen, None);
        let a = t.store.entry(&r("a")).unwrap();
        assert_eq!(
            a.installed.as_deref(),
            Some(&good("a")),
            "the old plan stays"
        );
        assert_eq!(a.failure.as_ref().unwrap().error, "v2 traps");
        assert_eq!(t.store.entry(&r("b")).unwrap().installed, None);
        assert_eq!(t.store.installed().count(), 1);
    }

    /// The kernel refuses a fragment the module rendered well: under
    /// KeepLastGood the one before comes back, whether it was rendered by
    /// this version or (after a swap) by the old one.
    #[test]
    fn a_refused_fragment_falls_back_to_the_one_before() {
        let f = |n: &str, v: &str| Fragment {
            object: r(n),
            module: "m".into(),
            digest: v.into(),
            items: vec![],
        };
        let mut t = Table::new(crate::plan::skeleton::for_role(
            crate::model::Role::ServiceProxy,
        ));
        assert!(t.begin("v1".into()).is_none());
        t.store.rendered(f("a", "v1")).unwrap();
        t.store.rendered(f("a", "v1b")).unwrap();
        t.store
            .refused(&r("a"), "no".into(), FailurePolicy::KeepLastGood, None);
        let a = t.store.entry(&r("a")).unwrap();
        assert_eq!(a.installed.as_deref(), Some(&f("a", "v1")));
        // Refused again (the one before is gone too): nothing good is left.
        t.store
            .refused(&r("a"), "no".into(), FailurePolicy::KeepLastGood, None);
        assert_eq!(t.store.entry(&r("a")).unwrap().installed, None);

        t.store.rendered(f("b", "v1")).unwrap();
        assert!(t.module_is(Some("v2".into())));
        let _kept = t.begin("v2".into()).expect("a rebuild");
        t.store.rendered(f("b", "v2")).unwrap();
        t.store
            .refused(&r("b"), "no".into(), FailurePolicy::KeepLastGood, None);
        assert_eq!(
            t.store.entry(&r("b")).unwrap().installed.as_deref(),
            Some(&f("b", "v1")),
            "the old version's plan"
        );
    }

    #[test]
    fn changes_by_value_and_gone() {
        let mut t: Tracker<u32> = Tracker::default();
        t.set_all([(r("a"), 1), (r("b"), 2)], |_| false);
        assert_eq!(t.take().len(), 2);
        // The same inputs: nothing to do.
        t.set_all([(r("a"), 1), (r("b"), 2)], |_| false);
        assert!(!t.pending());
        // One changed, one gone, one kept although not given.
        t.set_all([(r("a"), 3)], |o| o == &r("c"));
        let d = t.take();
        assert_eq!(d.get(&r("a")), Some(&Some(3)));
        assert_eq!(d.get(&r("b")), Some(&None));
        // A failed render is tried again even with the same input.
        t.retry(r("a"), 3);
        t.set_all([(r("a"), 3)], |_| false);
        assert_eq!(t.take().get(&r("a")), Some(&Some(3)));
    }
}
