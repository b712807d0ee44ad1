//! The service proxy: Services and their endpoints in, nftables out.
//!
//! Source -> model -> module -> plan -> apply, per Service: a changed Service
//! (or a change of its endpoints) is rendered again by the proxy module, its
//! fragment replaces the old one in the [`PlanStore`], and only the delta
//! goes to the kernel, in one transaction per sync. Syncs are rate-limited
//! by the caller (see [`MIN_SYNC_INTERVAL`]); the first one, and any repair,
//! replaces the whole table atomically.
//!
//! When the proxy module or its config changes (an operator swaps it), every
//! Service is rendered again into a fresh store and the table is replaced
//! in one transaction: the new version's fragments never mix with the old
//! one's, and nothing is withdrawn in between.
//!
//! When a UDP endpoint goes away, its conntrack entries go too: UDP has no
//! end of connection, so without that a client keeps sending to the dead
//! endpoint (the black hole kube-proxy still suffers from in some versions).
//!
//! Services whose scheduler is a module (role `scheduler`) never reach the
//! nftables module: [`userspace`] carries their connections in the agent.

pub mod conntrack;
pub mod userspace;

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::datapath::nft::{self, NftApplier, NftRunner};
use crate::model::{FailurePolicy, ObjectKind, ObjectRef, Role};
use crate::plan::reconcile::{Fallback, Table, Tracker};
use crate::plan::{Change, Fragment, PlanStore, skeleton};
use crate::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest time between two syncs; changes within it are batched.
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(50);

/// What one sync did.
#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// Services rendered.
    pub rendered: usize,
    /// Whether the whole table was replaced.
    pub full: bool,
    /// nftables commands' size in bytes.
    pub script_bytes: usize,
    /// Time spent in the module.
    pub render: Duration,
    /// Time spent applying.
    pub apply: Duration,
    /// Conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Why the table could not be loaded, if it could not.
    pub error: Option<String>,
}

/// A Service with its endpoints: what the proxy module renders.
pub type ServiceInput = (wit::Service, Vec<wit::Endpoint>);

/// The proxy of one node.
pub struct ServiceProxy {
    registry: Arc<Registry>,
    runner: Arc<dyn NftRunner>,
    conntrack: Arc<dyn conntrack::Conntrack>,
    /// Which Services changed since the last sync.
    tracker: Tracker<ServiceInput>,
    /// The `switchyard-proxy` table.
    table: Table,
    ctx: Option<wit::NodeContext>,
    /// Why a Service is not (fully) programmed, by Service.
    errors: BTreeMap<ObjectRef, String>,
}

/// What a module version renders by: its digest and its config.
fn identity(active: &crate::registry::Active) -> String {
    format!("{} {}", active.bound.module.digest, active.config)
}

/// The object a Service is.
pub fn service_ref(svc: &wit::Service) -> ObjectRef {
    ObjectRef::new(ObjectKind::Service, &svc.namespace, &svc.name)
}

impl ServiceProxy {
    pub fn new(
        registry: Arc<Registry>,
        runner: Arc<dyn NftRunner>,
        conntrack: Arc<dyn conntrack::Conntrack>,
    ) -> Self {
        ServiceProxy {
            registry,
            runner,
            conntrack,
            tracker: Tracker::default(),
            table: Table::new(skeleton::for_role(Role::ServiceProxy)),
            ctx: None,
            errors: BTreeMap::new(),
        }
    }

    /// The active module's identity: its digest and config.
    fn module_identity(&self) -> Option<String> {
        self.registry
            .active_for(Role::ServiceProxy)
            .map(|a| identity(&a))
    }

    /// The node's context changed (node addresses, cluster CIDRs, default
    /// scheduler): every Service renders again.
    pub fn set_context(&mut self, ctx: wit::NodeContext) {
        if self.ctx.as_ref() != Some(&ctx) {
            self.ctx = Some(ctx);
            self.tracker.forget_all();
        }
    }

    /// The whole set of Services this node proxies, with their endpoints.
    /// Marks what changed since the last call; `sync` renders it.
    pub fn set_services(&mut self, all: Vec<ServiceInput>) {
        if self.ctx.is_none() {
            return;
        }
        if self.table.module_is(self.module_identity()) {
            tracing::info!("the proxy module changed: rendering every Service again");
            self.tracker.reset();
        }
        self.tracker
            .set_all(all.into_iter().map(|x| (service_ref(&x.0), x)), |_| false);
        // Fragments of Services that are gone from the inputs but still
        // installed (after a context change cleared the inputs).
        let installed: Vec<ObjectRef> = self
            .table
            .store
            .installed()
            .map(|f| f.object.clone())
            .filter(|r| !self.tracker.knows(r))
            .collect();
        for r in installed {
            self.tracker.gone(r);
        }
    }

    /// One Service changed (or is gone, with `None`).
    pub fn update(&mut self, object: ObjectRef, input: Option<ServiceInput>) {
        self.tracker.update(object, input);
    }

    /// Whether a sync has anything to do.
    pub fn pending(&self) -> bool {
        self.tracker.pending() || self.table.needs_full()
    }

    /// Services that could not be programmed, with the reason.
    pub fn errors(&self) -> &BTreeMap<ObjectRef, String> {
        &self.errors
    }

    /// Installed fragments (for `explain` and the console).
    pub fn store(&self) -> &PlanStore {
        &self.table.store
    }

    /// The role's closed fragment for a Service: its ports reject.
    fn closed(object: &ObjectRef, svc: &wit::Service, module: &str) -> Fragment {
        let mut items = vec![];
        for ip in &svc.cluster_ips {
            for p in &svc.ports {
                let set = match ip {
                    wit::IpAddress::Ipv4(_) => "no-endpoints",
                    wit::IpAddress::Ipv6(_) => "no-endpoints6",
                };
                items.push(wit::PlanItem {
                    rule_id: format!("closed/{}", p.port),
                    comment: Some("the proxy module failed; FailClosed".into()),
                    shared: false,
                    body: wit::PlanBody::NftElement(wit::NftElement {
                        set: set.into(),
                        key: vec![
                            wit::NftValue::Address(*ip),
                            wit::NftValue::Protocol(p.protocol),
                            wit::NftValue::Port(p.port),
                        ],
                        value: Some(wit::NftMapValue::Verdict(wit::NftVerdict::Reject)),
                    }),
                });
            }
        }
        Fragment {
            object: object.clone(),
            module: module.into(),
            digest: String::new(),
            items,
        }
    }

    /// Render what changed and apply the delta (or the whole table, the
    /// first time and after a failure).
    pub async fn sync(&mut self) -> SyncReport {
        let mut report = SyncReport::default();
        let Some(ctx) = self.ctx.clone() else {
            return report;
        };
        let Some(active) = self.registry.active_for(Role::ServiceProxy) else {
            return report;
        };
        let binding = active.spec.name.clone();
        let policy = active.spec.failure_policy;
        // What to go back to if the new module cannot be called at all.
        let mut kept = self.table.begin(identity(&active));
        let dirty = self.tracker.take();
        let mut changes: Vec<Change> = vec![];
        let mut batch = vec![];
        for (object, input) in dirty {
            match input {
                None => {
                    self.errors.remove(&object);
                    changes.push(self.table.store.remove(&object));
                }
                Some(x) => batch.push((object, x)),
            }
        }
        report.rendered = batch.len();
        let t = Instant::now();
        let inputs: Vec<ServiceInput> = batch.iter().map(|(_, x)| x.clone()).collect();
        let results = if inputs.is_empty() {
            Ok(vec![])
        } else {
            self.registry
                .render_services(&binding, ctx.clone(), inputs)
                .await
        };
        report.render = t.elapsed();
        let store = &mut self.table.store;
        match results {
            Ok(results) => {
                for ((object, (svc, _)), r) in batch.iter().zip(results) {
                    let change = match r {
                        Ok(fragment) => match store.rendered(fragment) {
                            Ok(c) => {
                                self.errors.remove(object);
                                c
                            }
                            Err(conflict) => {
                                let e = conflict.to_string();
                                self.errors.insert(object.clone(), e.clone());
                                // The earlier Service keeps the contested
                                // address; this one installs nothing.
                                store.failed(object, e, FailurePolicy::FailOpen, None)
                            }
                        },
                        Err(e) => {
                            let e = e.to_string();
                            self.errors.insert(object.clone(), e.clone());
                            let closed = Self::closed(object, svc, &binding);
                            store.failed(object, e, policy, Some(closed))
                        }
                    };
                    changes.push(change);
                }
            }
            Err(e) => {
                // The module could not be called at all: everything in the
                // batch stays as it is, and is tried again next time.
                for (object, x) in batch {
                    self.errors.insert(object.clone(), e.to_string());
                    self.tracker.retry(object, x);
                }
                // A rebuild keeps the old module's table until the new one
                // renders.
                if let Some(k) = kept.take() {
                    self.table.restore(k);
                    changes.clear();
                }
            }
        }
        let t = Instant::now();
        let applier = NftApplier(self.runner.clone());
        let runner = self.runner.clone();
        let registry = self.registry.clone();
        let errors = &mut self.errors;
        let tracker = &self.tracker;
        // A Service whose plan the kernel refuses gets what a failed render
        // would: under KeepLastGood its plan before, under FailClosed its
        // ports reject.
        let fallback = |object: &ObjectRef, _: &str| match tracker.input(object) {
            Some((svc, _)) => (policy, Some(Self::closed(object, svc, &binding))),
            None => (FailurePolicy::FailOpen, None),
        };
        let applied = self
            .table
            .apply(&applier, &changes, &fallback, |store, first_error| {
                tracing::warn!(error = %first_error, "the proxy's delta was refused; isolating it");
                isolate(
                    &*runner,
                    &registry,
                    store,
                    errors,
                    &changes,
                    first_error,
                    &fallback,
                );
            });
        // Counted against the module, and said per Service.
        applied.say("proxy", &mut self.errors, |i| {
            active.stats.record(Duration::ZERO, Some(&i.error))
        });
        report.full = applied.full;
        report.script_bytes = applied.script_bytes;
        report.error = applied.error;
        report.apply = t.elapsed();
        report.conntrack_deleted = self.clear_conntrack(&changes);
        report
    }

    fn clear_conntrack(&self, changes: &[Change]) -> usize {
        let mut n = 0;
        for c in changes {
            for flow in conntrack::stale_udp(c) {
                match self.conntrack.delete(&flow) {
                    Ok(k) => n += k,
                    Err(e) => tracing::warn!(error = %e, ?flow, "deleting conntrack entries"),
                }
            }
        }
        n
    }
}

/// A delta failed: apply the changes one by one, replace the plans of the
/// Services whose change the kernel refuses by what `fallback` says, and
/// say why. A full load follows.
fn isolate(
    runner: &dyn NftRunner,
    registry: &Registry,
    store: &mut PlanStore,
    errors: &mut BTreeMap<ObjectRef, String>,
    changes: &[Change],
    first_error: &str,
    fallback: Fallback<'_>,
) {
    let table = skeleton::for_role(Role::ServiceProxy).table;
    for c in changes {
        let text = nft::delta_script(table, std::slice::from_ref(c)).text();
        if text.is_empty() {
            continue;
        }
        if let Err(e) = runner.run(&text) {
            let e = if e.is_empty() {
                first_error.to_string()
            } else {
                e
            };
            let e = format!("nftables refused the Service's rules: {e}");
            // Counted against the module, as a failed render is.
            if let Some(a) = registry
                .binding(&c.new.as_ref().map_or(String::new(), |f| f.module.clone()))
                .and_then(|b| b.active())
            {
                a.stats.record(Duration::ZERO, Some(&e));
            }
            errors.insert(c.object.clone(), e.clone());
            let module = c.new.as_ref().map_or("", |f| f.module.as_str());
            let (policy, closed) = fallback(&c.object, module);
            store.refused(&c.object, e, policy, closed);
        }
    }
}
