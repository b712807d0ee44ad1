//! The cluster as the console and `lab status` show it: nodes, pods,
//! Services with their endpoints, NetworkPolicies, read from the model (the
//! same [`Manifests`] a source feeds the agent) plus what only the nodes
//! know (their probes' details, their proxies' errors).

use crate::model::snapshot::Manifests;
use crate::probe::ProbeStatus;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;
use std::collections::BTreeMap;

/// The EndpointSlice label naming its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    /// Why not ready (the Ready condition's message).
    pub message: String,
    pub addresses: Vec<String>,
    pub pod_cidrs: Vec<String>,
    pub zone: Option<String>,
    pub pods: usize,
    pub admin_url: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub node: Option<String>,
    pub phase: String,
    pub ready: bool,
    pub ips: Vec<String>,
    pub restarts: i32,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `PROTOCOL/port` the pod serves.
    pub ports: Vec<String>,
    /// The pod's probes, as its node's prober last saw them (when known).
    pub probes: Vec<ProbeStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub cluster_ips: Vec<String>,
    /// `port/PROTOCOL`, with `:nodePort` when there is one.
    pub ports: Vec<String>,
    /// LoadBalancer ingress IPs and externalIPs.
    pub external_ips: Vec<String>,
    /// `ip:port` of every ready endpoint in the Service's EndpointSlices.
    pub endpoints: Vec<String>,
    /// What keeps the Service from working as asked: no endpoints for its
    /// selector, and the node proxies' errors.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub namespace: String,
    pub name: String,
    pub pod_selector: String,
    pub policy_types: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    /// The cluster's name, as the agent was told (`--cluster-name`).
    pub name: String,
    /// The ClusterNetwork's model, and the families of its pod CIDRs
    /// (`ipv4`, `ipv6` or `dual`).
    pub model: String,
    pub ip_family: String,
    /// The lab's outside world (empty in a cluster).
    pub external: Vec<String>,
    pub nodes: Vec<NodeView>,
    pub pods: Vec<PodView>,
    pub services: Vec<ServiceView>,
    pub network_policies: Vec<PolicyView>,
    /// What could not be read.
    pub problems: Vec<String>,
}

/// What the model does not hold: details only nodes know.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// The cluster's name.
    pub cluster_name: String,
    /// Probes of pods, by (namespace, name).
    pub probes: BTreeMap<(String, String), Vec<ProbeStatus>>,
    /// Proxy errors by Service (`namespace/name`), each `node: error`.
    pub service_errors: BTreeMap<String, Vec<String>>,
    /// Each node's admin API, by node name.
    pub admin_urls: BTreeMap<String, String>,
}

fn selector_string(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn pod_view(p: &Pod, facts: &NodeFacts, nodes: &[String]) -> PodView {
    let ns = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = p.metadata.name.clone().unwrap_or_default();
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
    let s = p.status.as_ref();
    let ready = s
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let ips: Vec<String> = s
        .and_then(|s| s.pod_ips.as_ref())
        .map(|v| v.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let mut phase = s
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if p.metadata.deletion_timestamp.is_some() {
        // As kubectl's STATUS column.
        phase = "Terminating".into();
    }
    // As kubectl's STATUS column: the pod's reason, else a container's
    // waiting or terminated reason (CrashLoopBackOff, Completed, Error),
    // else why it is not scheduled.
    let container_reason = s
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref())
        .find_map(|st| {
            st.waiting
                .as_ref()
                .map(|w| (w.reason.clone(), w.message.clone()))
                .or_else(|| {
                    st.terminated
                        .as_ref()
                        .map(|t| (t.reason.clone(), t.message.clone()))
                })
        });
    let unscheduled = s
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| (c.reason.clone(), c.message.clone()));
    let (mut reason, mut message) = match (
        s.and_then(|s| s.reason.clone()),
        container_reason,
        unscheduled,
    ) {
        (Some(r), _, _) => (Some(r), s.and_then(|s| s.message.clone())),
        (None, Some((r, m)), _) => (r, m),
        (None, None, Some((r, m))) => (r, m),
        (None, None, None) => (None, s.and_then(|s| s.message.clone())),
    };
    // Bound to a node that does not exist: no kubelet will ever run it
    // (kube-controller-manager's pod GC deletes it after a while).
    if let Some(n) = &node
        && reason.is_none()
        && !nodes.contains(n)
    {
        reason = Some("NodeNotFound".into());
        message = Some(format!(
            "node {n:?} does not exist: no kubelet will run the pod"
        ));
    }
    let ports = p
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| {
            format!(
                "{}/{}",
                p.protocol.as_deref().unwrap_or("TCP"),
                p.container_port
            )
        })
        .collect();
    PodView {
        probes: facts
            .probes
            .get(&(ns.clone(), name.clone()))
            .cloned()
            .unwrap_or_default(),
        namespace: ns,
        name,
        node,
        phase,
        ready,
        ips,
        // A lab pod's containers share one server process.
        restarts: s
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.iter().map(|c| c.restart_count).max())
            .unwrap_or(0),
        reason,
        message,
        labels: p.metadata.labels.clone().unwrap_or_default(),
        ports,
    }
}

/// The view of `m`, with what the nodes told.
pub fn cluster_view(m: &Manifests, facts: &NodeFacts) -> ClusterView {
    let node_names: Vec<String> = m
        .nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let mut pods: Vec<PodView> = m
        .pods
        .iter()
        .map(|p| pod_view(p, facts, &node_names))
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut nodes: Vec<NodeView> = m
        .nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            let cond = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            let ready = cond.is_some_and(|c| c.status == "True");
            NodeView {
                ready,
                message: if ready {
                    String::new()
                } else {
                    cond.and_then(|c| c.message.clone())
                        .unwrap_or_else(|| "the kubelet has not reported yet".into())
                },
                addresses: n
                    .status
                    .iter()
                    .flat_map(|s| s.addresses.iter().flatten())
                    .filter(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .collect(),
                pod_cidrs: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.clone())
                    .unwrap_or_default(),
                zone: n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(crate::model::ZONE_LABEL).cloned()),
                pods: pods
                    .iter()
                    .filter(|p| p.node.as_deref() == Some(&name))
                    .count(),
                admin_url: facts.admin_urls.get(&name).cloned(),
                name,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let services = m
        .services
        .iter()
        .map(|s| {
            let ns = s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = s.metadata.name.clone().unwrap_or_default();
            let spec = s.spec.clone().unwrap_or_default();
            let mut endpoints = vec![];
            for slice in m.endpoint_slices.iter().filter(|e| {
                e.metadata.namespace.as_deref() == Some(ns.as_str())
                    && e.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME))
                        .is_some_and(|n| *n == name)
            }) {
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for ip in &ep.addresses {
                        for p in slice.ports.iter().flatten() {
                            let Some(port) = p.port else { continue };
                            endpoints.push(if ip.contains(':') {
                                format!("[{ip}]:{port}")
                            } else {
                                format!("{ip}:{port}")
                            });
                        }
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            let mut problems = vec![];
            if let Some(sel) = spec.selector.as_ref().filter(|s| !s.is_empty()) {
                let matches = m.pods.iter().any(|p| {
                    p.metadata.namespace.as_deref() == Some(ns.as_str())
                        && sel.iter().all(|(k, v)| {
                            p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v)
                        })
                });
                if !matches {
                    problems.push(format!(
                        "the selector {} matches no pod in namespace {ns}: the Service has no endpoints",
                        selector_string(sel)
                    ));
                }
            }
            if let Some(errors) = facts.service_errors.get(&format!("{ns}/{name}")) {
                problems.extend(errors.iter().cloned());
            }
            let mut external_ips = spec.external_ips.clone().unwrap_or_default();
            external_ips.extend(
                s.status
                    .iter()
                    .filter_map(|st| st.load_balancer.as_ref())
                    .flat_map(|l| l.ingress.iter().flatten())
                    .filter_map(|i| i.ip.clone()),
            );
            ServiceView {
                namespace: ns,
                name,
                external_ips,
                problems,
                type_: spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
                cluster_ips: spec.cluster_ips.clone().unwrap_or_default(),
                ports: spec
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        let proto = p.protocol.as_deref().unwrap_or("TCP");
                        match p.node_port {
                            Some(np) => format!("{}:{np}/{proto}", p.port),
                            None => format!("{}/{proto}", p.port),
                        }
                    })
                    .collect(),
                endpoints,
            }
        })
        .collect();
    let network_policies = m
        .network_policies
        .iter()
        .map(|p| {
            let spec = p.spec.clone().unwrap_or_default();
            PolicyView {
                namespace: p
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: p.metadata.name.clone().unwrap_or_default(),
                pod_selector: selector_string(
                    &spec
                        .pod_selector
                        .and_then(|s| s.match_labels)
                        .unwrap_or_default(),
                ),
                policy_types: spec.policy_types.unwrap_or_default(),
            }
        })
        .collect();
    let network = m.cluster_network();
    let families: Vec<bool> = network
        .map(|n| n.pod_cidrs.iter().map(|c| !c.contains(':')).collect())
        .unwrap_or_default();
    let ip_family = match (families.contains(&true), families.contains(&false)) {
        (true, true) => "dual",
        (false, true) => "ipv6",
        _ => "ipv4",
    };
    ClusterView {
        name: facts.cluster_name.clone(),
        model: network
            .map(|n| n.model.to_string())
            .unwrap_or_else(|| "flat".into()),
        ip_family: ip_family.into(),
        external: vec![],
        nodes,
        pods,
        services,
        network_policies,
        problems: vec![],
    }
}
