//! What `lab status` prints and the console shows: the lab's nodes, pods,
//! Services with their endpoints, and NetworkPolicies, read from the cluster
//! directory (objects joined with the statuses the agents wrote).

use super::endpoints::{LabServiceStatus, SERVICE_NAME};
use super::kubelet::LabPodStatus;
use super::layout::Lab;
use k8s_openapi::api::core::v1::{NodeStatus, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node's agent reports about its node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNodeStatus {
    pub status: NodeStatus,
    /// The agent's process id.
    pub agent_pid: u32,
    /// Unix time of the agent's last report.
    pub heartbeat: u64,
    /// Problems the agent could not fix (node networking, pods).
    pub problems: Vec<String>,
    /// Why the node's proxy does not (fully) program a Service, by
    /// `namespace/name`.
    #[serde(default)]
    pub service_errors: BTreeMap<String, String>,
}

/// An agent that has not reported for this long is considered down.
pub const HEARTBEAT_TIMEOUT_SECS: u64 = 10;

/// Now, as a Kubernetes timestamp (millisecond precision).
pub fn k8s_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_millisecond(ms).unwrap_or_default(),
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    pub ready: bool,
    /// Why not ready, or the agent's problems.
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
    /// The pod's probes, as its node's prober last saw them.
    pub probes: Vec<super::prober::ProbeStatus>,
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
    /// What keeps the Service from working as asked: the EndpointSlice
    /// controller's findings and the node proxies' errors.
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

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub name: String,
    pub model: String,
    pub ip_family: String,
    pub dir: String,
    pub external: Vec<String>,
    pub nodes: Vec<NodeView>,
    pub pods: Vec<PodView>,
    pub services: Vec<ServiceView>,
    pub network_policies: Vec<PolicyView>,
    /// Objects that could not be read.
    pub problems: Vec<String>,
}

fn selector_string(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The port a Service port's targetPort means on `pod`.
pub fn resolve_target(pod: &Pod, target: &IntOrString, protocol: &str) -> Option<i32> {
    match target {
        IntOrString::Int(p) => Some(*p),
        IntOrString::String(name) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

impl ClusterView {
    pub fn read(lab: &Lab) -> ClusterView {
        let c = &lab.config;
        let mut problems = vec![];
        let cluster = match lab.cluster() {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let manifests = cluster
            .as_ref()
            .map(|cl| cl.manifests())
            .transpose()
            .unwrap_or_else(|e| {
                problems.push(e.to_string());
                None
            })
            .unwrap_or_default();
        let pod_status: BTreeMap<(String, String), LabPodStatus> = cluster
            .as_ref()
            .map(|cl| cl.statuses::<LabPodStatus>("Pod"))
            .unwrap_or_default()
            .into_iter()
            .map(|(ns, n, s)| ((ns, n), s))
            .collect();
        let node_status: BTreeMap<String, LabNodeStatus> = cluster
            .as_ref()
            .map(|cl| cl.statuses::<LabNodeStatus>("Node"))
            .unwrap_or_default()
            .into_iter()
            .map(|(_, n, s)| (n, s))
            .collect();
        let now = unix_now();
        let mut pods = vec![];
        for p in &manifests.pods {
            let ns = p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = p.metadata.name.clone().unwrap_or_default();
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let st = pod_status.get(&(ns.clone(), name.clone()));
            // A status from an agent that is down is stale: say so.
            let agent_up = |n: &str| {
                node_status
                    .get(n)
                    .is_some_and(|s| now.saturating_sub(s.heartbeat) <= HEARTBEAT_TIMEOUT_SECS)
            };
            let s = st.map(|s| &s.status);
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
            // As kubectl's STATUS column: the pod's reason, else a
            // container's waiting or terminated reason (CrashLoopBackOff,
            // Completed, Error).
            let mut reason = s.and_then(|s| s.reason.clone()).or_else(|| {
                s.and_then(|s| s.container_statuses.as_ref())
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c.state.as_ref())
                    .find_map(|st| {
                        st.waiting
                            .as_ref()
                            .and_then(|w| w.reason.clone())
                            .or_else(|| st.terminated.as_ref().and_then(|t| t.reason.clone()))
                    })
            });
            let mut message = s.and_then(|s| s.message.clone());
            if let Some(n) = &node
                && c.node(n).is_some()
                && !agent_up(n)
            {
                phase = if st.is_some() {
                    phase
                } else {
                    "Pending".into()
                };
                reason.get_or_insert_with(|| "NodeAgentDown".into());
                message.get_or_insert_with(|| format!("the agent of {n} is not reporting"));
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
            pods.push(PodView {
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
                probes: st.map(|s| s.probes.clone()).unwrap_or_default(),
            });
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let nodes = c
            .nodes
            .iter()
            .map(|n| {
                let st = node_status.get(&n.name);
                let fresh =
                    st.is_some_and(|s| now.saturating_sub(s.heartbeat) <= HEARTBEAT_TIMEOUT_SECS);
                let cond = st
                    .and_then(|s| s.status.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
                let ready = fresh && cond.is_some_and(|c| c.status == "True");
                let message = match (st, fresh) {
                    (None, _) => "the agent has not reported yet".to_string(),
                    (Some(s), false) => format!(
                        "the agent has not reported for {} s",
                        now.saturating_sub(s.heartbeat)
                    ),
                    (Some(s), true) if !s.problems.is_empty() => s.problems.join("; "),
                    _ => cond.and_then(|c| c.message.clone()).unwrap_or_default(),
                };
                let node_obj = manifests.node(&n.name);
                NodeView {
                    name: n.name.clone(),
                    ready,
                    message,
                    addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
                    pod_cidrs: n.pod_cidrs.iter().map(|c| c.to_string()).collect(),
                    zone: node_obj
                        .and_then(|o| o.metadata.labels.as_ref())
                        .and_then(|l| l.get("topology.kubernetes.io/zone").cloned()),
                    pods: pods
                        .iter()
                        .filter(|p| p.node.as_deref() == Some(&n.name))
                        .count(),
                    admin_url: lab.admin_url(&n.name),
                }
            })
            .collect();
        let service_status: BTreeMap<(String, String), LabServiceStatus> = cluster
            .as_ref()
            .map(|cl| cl.statuses::<LabServiceStatus>("Service"))
            .unwrap_or_default()
            .into_iter()
            .map(|(ns, n, s)| ((ns, n), s))
            .collect();
        let services = manifests
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
                for slice in manifests.endpoint_slices.iter().filter(|e| {
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
                let mut problems = service_status
                    .get(&(ns.clone(), name.clone()))
                    .map(|s| s.problems.clone())
                    .unwrap_or_default();
                let key = format!("{ns}/{name}");
                for (node, st) in &node_status {
                    if let Some(e) = st.service_errors.get(&key) {
                        problems.push(format!("{node}: {e}"));
                    }
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
                            let mut s =
                                format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP"));
                            if let Some(np) = p.node_port {
                                s = format!(
                                    "{}:{np}/{}",
                                    p.port,
                                    p.protocol.as_deref().unwrap_or("TCP")
                                );
                            }
                            s
                        })
                        .collect(),
                    endpoints,
                }
            })
            .collect();
        let network_policies = manifests
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
        ClusterView {
            name: c.name.clone(),
            model: c.model.to_string(),
            ip_family: c.families.to_string(),
            dir: lab.dir.display().to_string(),
            external: c.external.iter().map(|a| a.to_string()).collect(),
            nodes,
            pods,
            services,
            network_policies,
            problems,
        }
    }
}
