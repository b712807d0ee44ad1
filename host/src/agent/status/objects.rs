//! What the agents tell the API server about ClusterNetworks and
//! WasmNetworkPolicies, as [`super`] does for NetworkModules:
//!
//! - Every agent writes its own entry of `status.nodeResults` (server-side
//!   apply, field manager `switchyard-agent/<node>`), and a Warning Event
//!   when the object fails on its node (`NetworkNotApplied`,
//!   `PolicyNotEnforced`).
//! - The leader ([`super::lease`]) summarizes the entries into `Ready` and
//!   `Degraded` conditions, counts and the last error (field manager
//!   `switchyard-status-leader`).
//!
//! [`object_result`] and [`summarize_object`] are the pure parts;
//! [`ObjectStatusWriter`] and [`summarize_objects`] do the I/O.

use super::{LEADER_MANAGER, NodeEntry, Wording, node_manager, summarize_nodes};
use crate::model::crd::{
    API_VERSION, ClusterNetwork, ModuleState, NodeObjectResult, ObjectStatus, WasmNetworkPolicy,
};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use std::collections::HashMap;

/// An object whose status the agents write, by its key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusObject {
    /// Cluster scoped (the singleton `default`).
    ClusterNetwork {
        name: String,
    },
    WasmNetworkPolicy {
        namespace: String,
        name: String,
    },
}

impl std::fmt::Display for StatusObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusObject::ClusterNetwork { name } => write!(f, "ClusterNetwork {name}"),
            StatusObject::WasmNetworkPolicy { namespace, name } => {
                write!(f, "WasmNetworkPolicy {namespace}/{name}")
            }
        }
    }
}

impl StatusObject {
    pub fn kind(&self) -> &'static str {
        match self {
            StatusObject::ClusterNetwork { .. } => "ClusterNetwork",
            StatusObject::WasmNetworkPolicy { .. } => "WasmNetworkPolicy",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            StatusObject::ClusterNetwork { name }
            | StatusObject::WasmNetworkPolicy { name, .. } => name,
        }
    }

    /// `None` for the cluster-scoped ClusterNetwork.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            StatusObject::ClusterNetwork { .. } => None,
            StatusObject::WasmNetworkPolicy { namespace, .. } => Some(namespace),
        }
    }

    /// The reason of a node's entry when the object is in force there.
    fn ready_reason(&self) -> &'static str {
        match self {
            StatusObject::ClusterNetwork { .. } => "Applied",
            StatusObject::WasmNetworkPolicy { .. } => "Enforced",
        }
    }

    /// The reason and action of the Event of a failure.
    fn event_reason_action(&self) -> (&'static str, &'static str) {
        match self {
            StatusObject::ClusterNetwork { .. } => ("NetworkNotApplied", "Apply"),
            StatusObject::WasmNetworkPolicy { .. } => ("PolicyNotEnforced", "Enforce"),
        }
    }

    /// The API of the object's kind (in its namespace).
    fn api(&self, client: Client) -> Api<DynamicObject> {
        match self {
            StatusObject::ClusterNetwork { .. } => {
                Api::all_with(client, &ApiResource::erase::<ClusterNetwork>(&()))
            }
            StatusObject::WasmNetworkPolicy { namespace, .. } => Api::namespaced_with(
                client,
                namespace,
                &ApiResource::erase::<WasmNetworkPolicy>(&()),
            ),
        }
    }
}

/// An object, its generation, and whether it is in force on this node at
/// that generation: `Ok`, or `Err((reason, message))`.
pub type ObjectResult = (StatusObject, i64, Result<(), (String, String)>);

/// A result on this node as a `nodeResults` entry: `Ok` is Ready (reason
/// `Applied` for a ClusterNetwork, `Enforced` for a WasmNetworkPolicy),
/// `Err((reason, message))` is Degraded.
pub fn object_result(
    node: &str,
    object: &StatusObject,
    generation: i64,
    result: &Result<(), (String, String)>,
) -> NodeObjectResult {
    let (state, reason, message) = match result {
        Ok(()) => (
            ModuleState::Ready,
            object.ready_reason().to_string(),
            String::new(),
        ),
        Err((reason, message)) => (ModuleState::Degraded, reason.clone(), message.clone()),
    };
    NodeObjectResult {
        node: node.to_string(),
        state,
        observed_generation: generation,
        reason,
        message,
    }
}

/// Whether `now` is a failure `before` (what was last written) did not
/// already report: an Event is due.
fn is_new_failure(before: Option<&NodeObjectResult>, now: &NodeObjectResult) -> bool {
    now.state == ModuleState::Degraded
        && !before.is_some_and(|b| {
            b.state == ModuleState::Degraded && b.reason == now.reason && b.message == now.message
        })
}

/// The note of the Event of a failure, at most 1000 characters.
fn event_note(r: &NodeObjectResult) -> String {
    format!("node {}: {}: {}", r.node, r.reason, r.message)
        .chars()
        .take(1000)
        .collect()
}

/// The body of a server-side apply of `object`'s status.
fn apply_body(object: &StatusObject, status: serde_json::Value) -> serde_json::Value {
    let mut metadata = serde_json::json!({"name": object.name()});
    if let Some(ns) = object.namespace() {
        metadata["namespace"] = ns.into();
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": object.kind(),
        "metadata": metadata,
        "status": status,
    })
}

/// The leader's summary of every node's entry for an object at
/// `generation`, meant for `desired` nodes: `Ready` when every one of them
/// reports it Ready at this generation, `Degraded` (with the first failing
/// node's reason and message) when any reports a failure at it. `old` are
/// the conditions in place, whose transition times stay while their status
/// does. `nodeResults` is left empty: the nodes own it.
pub fn summarize_object(
    generation: i64,
    desired: u32,
    results: &[NodeObjectResult],
    old: &[Condition],
    now: &Time,
) -> ObjectStatus {
    let entries: Vec<NodeEntry<'_>> = results
        .iter()
        .map(|r| NodeEntry {
            node: &r.node,
            state: r.state,
            observed_generation: r.observed_generation,
            reason: &r.reason,
            message: &r.message,
        })
        .collect();
    let words = Wording {
        failed: "NodesDegraded",
        pending: "Pending",
        verb: "are ready at",
    };
    let s = summarize_nodes(generation, desired, &entries, old, now, &words);
    ObjectStatus {
        observed_generation: Some(generation),
        conditions: s.conditions,
        nodes: Some(s.nodes),
        last_error: s.last_error,
        node_results: vec![],
    }
}

/// Writes this node's results for ClusterNetworks and WasmNetworkPolicies,
/// and Events on failures.
pub struct ObjectStatusWriter {
    client: Client,
    node: String,
    recorder: Recorder,
    /// What was last written, by object.
    written: HashMap<StatusObject, NodeObjectResult>,
    /// Objects the API server answered 404 for (deleted meanwhile), with the
    /// entry that was refused: not tried again until the entry changes or
    /// the object leaves the list.
    gone: HashMap<StatusObject, NodeObjectResult>,
}

impl ObjectStatusWriter {
    pub fn new(client: Client, node: &str) -> ObjectStatusWriter {
        let reporter = Reporter {
            controller: "switchyard-agent".into(),
            instance: Some(node.to_string()),
        };
        ObjectStatusWriter {
            client: client.clone(),
            node: node.to_string(),
            recorder: Recorder::new(client, reporter),
            written: HashMap::new(),
            gone: HashMap::new(),
        }
    }

    /// Write this node's entry of every object of `results` (object, its
    /// generation, `Ok` or `Err((reason, message))`) whose entry changed
    /// since last written; post an Event for each new failure; forget the
    /// objects no longer listed. Returns what could not be written (the
    /// next call tries again); an object that is gone (404) is no problem.
    pub async fn publish(&mut self, results: &[ObjectResult]) -> Vec<String> {
        let mut problems = vec![];
        for (object, generation, result) in results {
            let r = object_result(&self.node, object, *generation, result);
            if self.written.get(object) == Some(&r) || self.gone.get(object) == Some(&r) {
                continue;
            }
            let body = apply_body(object, serde_json::json!({"nodeResults": [r]}));
            let pp = PatchParams::apply(&node_manager(&self.node)).force();
            match object
                .api(self.client.clone())
                .patch_status(object.name(), &pp, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    if is_new_failure(self.written.get(object), &r) {
                        self.event(object, &r).await;
                    }
                    self.gone.remove(object);
                    self.written.insert(object.clone(), r);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    tracing::debug!(object = %object, "not writing the status of a deleted object");
                    self.written.remove(object);
                    self.gone.insert(object.clone(), r);
                }
                Err(e) => problems.push(format!(
                    "writing {object} status for node {}: {e}",
                    self.node
                )),
            }
        }
        let listed = |o: &StatusObject| results.iter().any(|(x, _, _)| x == o);
        self.written.retain(|o, _| listed(o));
        self.gone.retain(|o, _| listed(o));
        problems
    }

    async fn event(&self, object: &StatusObject, r: &NodeObjectResult) {
        let reference = ObjectReference {
            api_version: Some(API_VERSION.into()),
            kind: Some(object.kind().into()),
            name: Some(object.name().into()),
            namespace: object.namespace().map(Into::into),
            ..Default::default()
        };
        let (reason, action) = object.event_reason_action();
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(event_note(r)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(object = %object, error = %e, "posting an Event");
        }
    }
}

/// The leader's pass: summarize every ClusterNetwork's and every
/// WasmNetworkPolicy's (all namespaces) node entries, for `desired_nodes`
/// nodes, and write the summaries that differ from what is in place.
/// Returns how many were written.
pub async fn summarize_objects(client: Client, desired_nodes: u32) -> Result<usize, kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut written = 0;
    let kinds = [
        ApiResource::erase::<ClusterNetwork>(&()),
        ApiResource::erase::<WasmNetworkPolicy>(&()),
    ];
    for ar in &kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        for o in api.list(&Default::default()).await? {
            let name = o.metadata.name.clone().unwrap_or_default();
            let object = if ar.kind == ClusterNetwork::kind(&()) {
                StatusObject::ClusterNetwork { name }
            } else {
                StatusObject::WasmNetworkPolicy {
                    namespace: o.metadata.namespace.clone().unwrap_or_default(),
                    name,
                }
            };
            let generation = o.metadata.generation.unwrap_or(1);
            let mut old: ObjectStatus = match o.data.get("status") {
                None | Some(serde_json::Value::Null) => ObjectStatus::default(),
                Some(s) => serde_json::from_value(s.clone()).unwrap_or_else(|e| {
                    tracing::warn!(object = %object, error = %e, "unreadable status: summarizing anew");
                    ObjectStatus::default()
                }),
            };
            let s = summarize_object(
                generation,
                desired_nodes,
                &old.node_results,
                &old.conditions,
                &now,
            );
            // A condition keeps its transition time while its status stays,
            // so an unchanged summary equals what is written.
            old.node_results.clear();
            if old == s {
                continue;
            }
            let body = super::leader_status(&s);
            let pp = PatchParams::apply(LEADER_MANAGER).force();
            match object
                .api(client.clone())
                .patch_status(
                    object.name(),
                    &pp,
                    &Patch::Apply(&apply_body(&object, body)),
                )
                .await
            {
                Ok(_) => written += 1,
                // Deleted since the list: nothing to summarize.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn cn() -> StatusObject {
        StatusObject::ClusterNetwork {
            name: "default".into(),
        }
    }

    fn wnp() -> StatusObject {
        StatusObject::WasmNetworkPolicy {
            namespace: "x".into(),
            name: "allow-list".into(),
        }
    }

    fn ok(node: &str, generation: i64) -> NodeObjectResult {
        object_result(node, &cn(), generation, &Ok(()))
    }

    fn failed(node: &str, generation: i64, reason: &str, message: &str) -> NodeObjectResult {
        object_result(
            node,
            &cn(),
            generation,
            &Err((reason.into(), message.into())),
        )
    }

    fn cond<'a>(s: &'a ObjectStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn objects_read_as_kind_and_key() {
        assert_eq!(cn().to_string(), "ClusterNetwork default");
        assert_eq!(wnp().to_string(), "WasmNetworkPolicy x/allow-list");
        assert_eq!(
            apply_body(&wnp(), serde_json::json!({"a": 1})),
            serde_json::json!({
                "apiVersion": "switchyard.dev/v1alpha1",
                "kind": "WasmNetworkPolicy",
                "metadata": {"name": "allow-list", "namespace": "x"},
                "status": {"a": 1},
            })
        );
        let body = apply_body(&cn(), serde_json::json!({}));
        assert_eq!(body["kind"], "ClusterNetwork");
        assert_eq!(body["metadata"], serde_json::json!({"name": "default"}));
    }

    #[test]
    fn results_become_entries_and_only_new_failures_are_events() {
        let r = object_result("n1", &wnp(), 4, &Ok(()));
        assert_eq!(
            r,
            NodeObjectResult {
                node: "n1".into(),
                state: ModuleState::Ready,
                observed_generation: 4,
                reason: "Enforced".into(),
                message: String::new(),
            }
        );
        assert_eq!(ok("n1", 1).reason, "Applied");
        // The message stays out of a Ready entry's JSON.
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"node": "n1", "state": "Ready", "observedGeneration": 4, "reason": "Enforced"})
        );
        let f = failed("n2", 3, "NodeNetworkingFailed", "adding a route: EEXIST");
        assert_eq!(f.state, ModuleState::Degraded);
        assert_eq!(f.observed_generation, 3);
        assert_eq!(
            (f.reason.as_str(), f.message.as_str()),
            ("NodeNetworkingFailed", "adding a route: EEXIST")
        );

        assert!(is_new_failure(None, &f));
        assert!(is_new_failure(Some(&ok("n2", 3)), &f));
        assert!(!is_new_failure(Some(&f), &f));
        // The same failure at a later generation is not news...
        assert!(!is_new_failure(
            Some(&f),
            &failed("n2", 4, "NodeNetworkingFailed", "adding a route: EEXIST")
        ));
        // ... another one is.
        assert!(is_new_failure(
            Some(&f),
            &failed("n2", 3, "NodeNetworkingFailed", "VXLAN: EPERM")
        ));
        assert!(is_new_failure(
            Some(&f),
            &failed("n2", 3, "Other", "adding a route: EEXIST")
        ));
        assert!(!is_new_failure(None, &ok("n2", 3)));
        assert!(!is_new_failure(Some(&f), &ok("n2", 3)));

        assert_eq!(
            event_note(&f),
            "node n2: NodeNetworkingFailed: adding a route: EEXIST"
        );
        let long = failed("n2", 3, "R", &"é".repeat(5000));
        let note = event_note(&long);
        assert_eq!(note.chars().count(), 1000);
        assert!(note.starts_with("node n2: R: éé"));
    }

    #[test]
    fn summaries_count_the_current_generation_and_name_the_failure() {
        let now = t("2026-11-24T10:00:00Z");
        // Nobody has reported generation 2 but node-1: pending.
        let s = summarize_object(2, 2, &[ok("node-1", 2), ok("node-2", 1)], &[], &now);
        assert_eq!(s.observed_generation, Some(2));
        assert_eq!(
            s.nodes,
            Some(crate::model::crd::NodeCounts {
                desired: 2,
                ready: 1,
                degraded: 0
            })
        );
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Pending")
        );
        assert_eq!(ready.message, "1 of 2 nodes are ready at generation 2");
        assert_eq!(ready.observed_generation, Some(2));
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(s.last_error, None);
        assert!(s.node_results.is_empty());

        // A failure at an old generation does not count; one at this one
        // does, with the first failing node's words.
        let results = [
            failed("node-3", 1, "Stale", "old"),
            ok("node-1", 2),
            failed("node-2", 2, "NodeNetworkingFailed", "VXLAN: EPERM"),
            failed("node-4", 2, "Other", "second"),
        ];
        let s = summarize_object(2, 3, &results, &[], &now);
        assert_eq!(
            s.nodes,
            Some(crate::model::crd::NodeCounts {
                desired: 3,
                ready: 1,
                degraded: 2
            })
        );
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason, "NodesDegraded");
        let degraded = cond(&s, "Degraded");
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "NodeNetworkingFailed");
        assert_eq!(degraded.message, "node node-2: VXLAN: EPERM");
        assert_eq!(degraded.last_transition_time, now);
        assert_eq!(
            s.last_error.as_deref(),
            Some("node node-2: NodeNetworkingFailed: VXLAN: EPERM")
        );

        // Still degraded an hour later: the transition times stay.
        let later = t("2026-11-24T11:00:00Z");
        let s2 = summarize_object(2, 3, &results, &s.conditions, &later);
        assert_eq!(cond(&s2, "Degraded").last_transition_time, now);
        assert_eq!(cond(&s2, "Ready").last_transition_time, now);
        assert_eq!(s2, s);

        // Recovered: both conditions flip, at `later`.
        let results = [ok("node-1", 2), ok("node-2", 2), ok("node-4", 2)];
        let s3 = summarize_object(2, 3, &results, &s.conditions, &later);
        let ready = cond(&s3, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "AllNodesReady")
        );
        assert_eq!(ready.last_transition_time, later);
        let degraded = cond(&s3, "Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("False", "AsExpected")
        );
        assert_eq!(degraded.message, "");
        assert_eq!(degraded.last_transition_time, later);
        assert_eq!(s3.last_error, None);

        // No node to be on: never Ready.
        let s = summarize_object(1, 0, &[], &[], &now);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason, "Pending");
    }
}
