//! What the agents tell the API server about NetworkModules.
//!
//! - Every agent writes its own entry of `status.nodeResults` (server-side
//!   apply, field manager `switchyard-agent/<node>`: the list is a map keyed
//!   by node, so entries of different managers merge and none overwrites
//!   another), and a Kubernetes Event when a module fails to load on it.
//! - One agent, elected with a Lease ([`lease`]), summarizes the entries
//!   into conditions (`Ready`, `Degraded` with the reason), counts, the
//!   digest and the last error (field manager `switchyard-status-leader`).
//!
//! [`node_result`] and [`summarize`] are the pure parts; [`StatusWriter`]
//! does the I/O. [`objects`] does the same for ClusterNetworks and
//! WasmNetworkPolicies.

pub mod lease;
pub mod objects;

use crate::model::crd::{
    ModuleState, NetworkModule, NetworkModuleStatus, NodeCounts, NodeModuleResult,
};
use crate::model::snapshot::Manifests;
use crate::registry::ModuleStatus;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use std::collections::HashMap;

/// The field manager of the summary the leader writes.
pub const LEADER_MANAGER: &str = "switchyard-status-leader";

/// The field manager of a node's own entry.
pub fn node_manager(node: &str) -> String {
    format!("switchyard-agent/{node}")
}

/// A binding's state on this node as a `nodeResults` entry.
pub fn node_result(node: &str, st: &ModuleStatus) -> NodeModuleResult {
    let c = &st.condition;
    NodeModuleResult {
        node: node.to_string(),
        state: if c.ready {
            ModuleState::Ready
        } else {
            ModuleState::Degraded
        },
        observed_generation: c.observed_generation,
        digest: st.digest.clone(),
        reason: c.reason.clone(),
        message: if c.ready {
            String::new()
        } else {
            c.message.clone()
        },
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
    old: &[Condition],
) -> Condition {
    let status = if ok { "True" } else { "False" };
    // The transition time moves only when the status does.
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// One node's entry, as a summary counts it.
struct NodeEntry<'a> {
    node: &'a str,
    state: ModuleState,
    observed_generation: i64,
    reason: &'a str,
    message: &'a str,
}

/// The words of a summary's `Ready` condition.
struct Wording {
    /// The reason while a node reports a failure.
    failed: &'static str,
    /// The reason while nodes have yet to report this generation.
    pending: &'static str,
    /// `{ready} of {desired} nodes <verb> generation {generation}`.
    verb: &'static str,
}

/// What every summary has: the conditions, the counts and the last error.
struct NodeSummary {
    conditions: Vec<Condition>,
    nodes: NodeCounts,
    last_error: Option<String>,
}

/// `Ready` when each of `desired` nodes reports Ready at `generation`,
/// `Degraded` (with the first failing node's reason and message) when any
/// reports a failure at it; entries of other generations do not count.
fn summarize_nodes(
    generation: i64,
    desired: u32,
    entries: &[NodeEntry<'_>],
    old: &[Condition],
    now: &Time,
    words: &Wording,
) -> NodeSummary {
    let current = || {
        entries
            .iter()
            .filter(|e| e.observed_generation == generation)
    };
    let ready = current().filter(|e| e.state == ModuleState::Ready).count() as u32;
    let first_failed = current().find(|e| e.state == ModuleState::Degraded);
    let degraded = current()
        .filter(|e| e.state == ModuleState::Degraded)
        .count() as u32;
    let all_ready = desired > 0 && ready >= desired;
    let ready_reason = if all_ready {
        "AllNodesReady"
    } else if degraded > 0 {
        words.failed
    } else {
        words.pending
    };
    let ready_message = format!(
        "{ready} of {desired} nodes {} generation {generation}",
        words.verb
    );
    let (degraded_reason, degraded_message, last_error) = match first_failed {
        Some(f) => (
            f.reason,
            format!("node {}: {}", f.node, f.message),
            Some(format!("node {}: {}: {}", f.node, f.reason, f.message)),
        ),
        None => ("AsExpected", String::new(), None),
    };
    NodeSummary {
        conditions: vec![
            condition(
                "Ready",
                all_ready,
                ready_reason,
                ready_message,
                generation,
                now,
                old,
            ),
            condition(
                "Degraded",
                degraded > 0,
                degraded_reason,
                degraded_message,
                generation,
                now,
                old,
            ),
        ],
        nodes: NodeCounts {
            desired,
            ready,
            degraded,
        },
        last_error,
    }
}

/// The leader's summary of every node's entry for a NetworkModule at
/// `generation`, meant for `desired` nodes: `Ready` when every one of them
/// serves this generation, `Degraded` (with the first failing node's reason
/// and message) when any reports a failure. `old` are the conditions in
/// place, whose transition times stay when nothing changed.
pub fn summarize(
    generation: i64,
    desired: u32,
    results: &[NodeModuleResult],
    old: &[Condition],
    now: &Time,
) -> NetworkModuleStatus {
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
        failed: "LoadFailed",
        pending: "Loading",
        verb: "serve",
    };
    let s = summarize_nodes(generation, desired, &entries, old, now, &words);
    let digest = results
        .iter()
        .filter(|r| r.observed_generation == generation && r.state == ModuleState::Ready)
        .find_map(|r| r.digest.clone());
    NetworkModuleStatus {
        observed_generation: Some(generation),
        conditions: s.conditions,
        digest,
        nodes: Some(s.nodes),
        last_error: s.last_error,
        node_results: vec![],
    }
}

/// The status body of a server-side apply of `NetworkModule` `name`.
fn apply_body(name: &str, status: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": NetworkModule::api_version(&()),
        "kind": NetworkModule::kind(&()),
        "metadata": {"name": name},
        "status": status,
    })
}

/// Writes this node's results, and Events on failures.
pub struct StatusWriter {
    api: Api<NetworkModule>,
    node: String,
    recorder: Recorder,
    /// What was last written, by NetworkModule name.
    written: HashMap<String, NodeModuleResult>,
}

impl StatusWriter {
    pub fn new(client: Client, node: &str) -> StatusWriter {
        let reporter = Reporter {
            controller: "switchyard-agent".into(),
            instance: Some(node.to_string()),
        };
        StatusWriter {
            api: Api::all(client.clone()),
            node: node.to_string(),
            recorder: Recorder::new(client, reporter),
            written: HashMap::new(),
        }
    }

    /// Write the entry of every NetworkModule of `m` whose result on this
    /// node changed; post an Event for each new failure. Returns what could
    /// not be written (the next call tries again).
    pub async fn publish(&mut self, m: &Manifests, statuses: &[ModuleStatus]) -> Vec<String> {
        let mut problems = vec![];
        for module in &m.modules {
            let Some(st) = statuses.iter().find(|s| s.name == module.name) else {
                continue;
            };
            let r = node_result(&self.node, st);
            if self.written.get(&module.name) == Some(&r) {
                continue;
            }
            let body = apply_body(&module.name, serde_json::json!({"nodeResults": [r]}));
            let pp = PatchParams::apply(&node_manager(&self.node)).force();
            match self
                .api
                .patch_status(&module.name, &pp, &Patch::Apply(&body))
                .await
            {
                Ok(_) => {
                    let was_failing = self.written.get(&module.name).is_some_and(|w| {
                        w.state == ModuleState::Degraded && w.message == r.message
                    });
                    if r.state == ModuleState::Degraded && !was_failing {
                        self.event(&module.name, &r).await;
                    }
                    self.written.insert(module.name.clone(), r);
                }
                Err(e) => problems.push(format!(
                    "writing NetworkModule {} status for node {}: {e}",
                    module.name, self.node
                )),
            }
        }
        self.written
            .retain(|name, _| m.modules.iter().any(|x| &x.name == name));
        problems
    }

    async fn event(&self, name: &str, r: &NodeModuleResult) {
        let reference = ObjectReference {
            api_version: Some(NetworkModule::api_version(&()).into_owned()),
            kind: Some(NetworkModule::kind(&()).into_owned()),
            name: Some(name.to_string()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: "ModuleLoadFailed".into(),
            note: Some(
                format!("node {}: {}: {}", r.node, r.reason, r.message)
                    .chars()
                    .take(1000)
                    .collect(),
            ),
            action: "Load".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(module = %name, error = %e, "posting an Event");
        }
    }
}

/// A summary as the leader applies it: without `nodeResults`, which the
/// leader does not own (each node owns its entry).
fn leader_status(summary: &impl serde::Serialize) -> serde_json::Value {
    let mut body = serde_json::to_value(summary).expect("a status serializes");
    if let Some(o) = body.as_object_mut() {
        o.remove("nodeResults");
    }
    body
}

/// The leader's pass: summarize every NetworkModule's node entries. `nodes`
/// tells how many nodes each module is for (its node selector).
pub async fn summarize_all(
    client: Client,
    desired: impl Fn(&NetworkModule) -> u32,
) -> Result<usize, kube::Error> {
    let api: Api<NetworkModule> = Api::all(client);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut written = 0;
    for m in api.list(&Default::default()).await? {
        let generation = m.metadata.generation.unwrap_or(1);
        let mut old = m.status.clone().unwrap_or_default();
        let s = summarize(
            generation,
            desired(&m),
            &old.node_results,
            &old.conditions,
            &now,
        );
        // A condition keeps its transition time while its status stays, so
        // an unchanged summary equals what is written: nothing to write.
        old.node_results.clear();
        if old == s {
            continue;
        }
        let body = leader_status(&s);
        let pp = PatchParams::apply(LEADER_MANAGER).force();
        api.patch_status(
            &m.name_any(),
            &pp,
            &Patch::Apply(&apply_body(&m.name_any(), body)),
        )
        .await?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: &str, state: ModuleState, generation: i64, reason: &str) -> NodeModuleResult {
        NodeModuleResult {
            node: node.into(),
            state,
            observed_generation: generation,
            digest: (state == ModuleState::Ready).then(|| "abc".into()),
            reason: reason.into(),
            message: if state == ModuleState::Ready {
                String::new()
            } else {
                "fetching http://x/m.wasm: 404".into()
            },
        }
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn summaries_count_only_the_current_generation_and_name_the_failure() {
        let now = t("2026-11-24T10:00:00Z");
        let results = [
            r("node-1", ModuleState::Ready, 3, "Loaded"),
            r("node-2", ModuleState::Ready, 2, "Loaded"),
        ];
        let s = summarize(3, 2, &results, &[], &now);
        assert_eq!(
            s.nodes,
            Some(NodeCounts {
                desired: 2,
                ready: 1,
                degraded: 0
            })
        );
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[0].reason, "Loading");
        assert_eq!(s.conditions[0].message, "1 of 2 nodes serve generation 3");

        let results = [
            r("node-1", ModuleState::Ready, 3, "Loaded"),
            r("node-2", ModuleState::Degraded, 3, "FetchFailed"),
        ];
        let s = summarize(3, 2, &results, &[], &now);
        assert_eq!(s.conditions[0].reason, "LoadFailed");
        assert_eq!(s.conditions[1].status, "True");
        assert_eq!(s.conditions[1].reason, "FetchFailed");
        assert_eq!(
            s.last_error.as_deref(),
            Some("node node-2: FetchFailed: fetching http://x/m.wasm: 404")
        );
        assert_eq!(s.digest.as_deref(), Some("abc"));

        // All ready; a condition whose status did not change keeps its time.
        let later = t("2026-11-24T11:00:00Z");
        let results = [
            r("node-1", ModuleState::Ready, 3, "Loaded"),
            r("node-2", ModuleState::Ready, 3, "Loaded"),
        ];
        let s2 = summarize(3, 2, &results, &s.conditions, &later);
        assert_eq!(s2.conditions[0].status, "True");
        assert_eq!(s2.conditions[0].last_transition_time, later);
        assert_eq!(s2.conditions[1].status, "False");
        assert_eq!(s2.conditions[1].last_transition_time, later);
        let s3 = summarize(3, 2, &results, &s2.conditions, &t("2026-11-24T12:00:00Z"));
        assert_eq!(s3.conditions[0].last_transition_time, later);
    }
}
