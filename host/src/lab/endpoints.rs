//! The lab's EndpointSlice controller: for every Service with a selector,
//! the slices of the pods it selects, with their readiness, as the
//! Kubernetes controller derives them (one slice per address family and
//! per set of resolved ports: a named targetPort may mean a different port
//! on each pod). Slices of Services without a selector are left to whoever
//! wrote them (`lab apply` accepts EndpointSlices).
//!
//! It runs in one agent at a time: the first node (in the lab's order)
//! whose agent reports, so the lab keeps its endpoints when a node is down.
//! It also writes each Service's lab status: how many endpoints are ready,
//! and what is wrong (a selector that matches nothing, a named port no pod
//! has).

use super::kubelet::LabPodStatus;
use super::view::resolve_target;
use crate::source::cluster_dir::ClusterDir;
use crate::source::local::Manifests;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label naming the controller that manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's name in that label.
pub const CONTROLLER: &str = "endpointslice-controller.switchyard.dev";
/// The label tying a slice to its Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The node label with the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the lab records about a Service (`status/Service/<ns>/<name>.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabServiceStatus {
    /// Pods the selector matches.
    pub pods: usize,
    /// Ready endpoint addresses, over all slices.
    pub ready_endpoints: usize,
    /// What keeps the Service from working as asked.
    pub problems: Vec<String>,
}

/// The slices and Service statuses the cluster should have.
#[derive(Debug, Default)]
pub struct Desired {
    pub slices: Vec<EndpointSlice>,
    /// By (namespace, name).
    pub statuses: BTreeMap<(String, String), LabServiceStatus>,
}

fn ns_of(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The slices of one Service.
fn service_slices(
    svc: &Service,
    m: &Manifests,
    pods: &BTreeMap<(String, String), LabPodStatus>,
    out: &mut Desired,
) {
    let ns = ns_of(&svc.metadata);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &svc.spec else { return };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return;
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let mut status = LabServiceStatus::default();
    let selected: Vec<&Pod> = m
        .pods
        .iter()
        .filter(|p| ns_of(&p.metadata) == ns && matches(selector, p))
        .map(|p| &**p)
        .collect();
    status.pods = selected.len();
    if selected.is_empty() {
        let sel: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        status.problems.push(format!(
            "the selector {} matches no pod in namespace {ns}: the Service has no endpoints",
            sel.join(",")
        ));
    }
    let zone_of = |node: &str| {
        m.node(node)
            .and_then(|n| n.metadata.labels.as_ref())
            .and_then(|l| l.get(ZONE_LABEL).cloned())
    };
    let families: Vec<String> = spec
        .ip_families
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into()]);
    let svc_ports = spec.ports.clone().unwrap_or_default();
    for family in &families {
        let v4 = family == "IPv4";
        // Endpoints grouped by their resolved ports.
        let mut groups: BTreeMap<Vec<(String, String, i32)>, Vec<Endpoint>> = BTreeMap::new();
        if selected.is_empty() {
            groups.insert(vec![], vec![]);
        }
        for pod in &selected {
            let pname = pod.metadata.name.clone().unwrap_or_default();
            let Some(st) = pods.get(&(ns.clone(), pname.clone())) else {
                continue;
            };
            let s = &st.status;
            if matches!(s.phase.as_deref(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let Some(ip) = s
                .pod_ips
                .iter()
                .flatten()
                .filter_map(|i| i.ip.parse::<IpAddr>().ok())
                .find(|i| i.is_ipv4() == v4)
            else {
                continue;
            };
            let mut ports = vec![];
            for p in &svc_ports {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                match resolve_target(pod, &target, &proto) {
                    Some(port) => {
                        ports.push((p.name.clone().unwrap_or_default(), proto, port));
                    }
                    None => {
                        let msg = format!(
                            "port {} ({}): targetPort {:?} names no {proto} container port of pod {ns}/{pname}",
                            p.port,
                            p.name.as_deref().unwrap_or("unnamed"),
                            match &target {
                                IntOrString::String(s) => s.clone(),
                                IntOrString::Int(n) => n.to_string(),
                            }
                        );
                        if !status.problems.contains(&msg) {
                            status.problems.push(msg);
                        }
                    }
                }
            }
            if ports.is_empty() {
                continue;
            }
            let ready = s
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let terminating = pod.metadata.deletion_timestamp.is_some();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if ready && !terminating {
                status.ready_endpoints += 1;
            }
            groups.entry(ports).or_default().push(Endpoint {
                addresses: vec![ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                zone: node.as_deref().and_then(zone_of),
                node_name: node,
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: Some(pname.clone()),
                    uid: pod.metadata.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if groups.is_empty() {
            // Pods match but none has an address (yet): an empty slice.
            groups.insert(vec![], vec![]);
        }
        let short = if v4 { "ipv4" } else { "ipv6" };
        for (k, (ports, mut endpoints)) in groups.into_iter().enumerate() {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let slice_name = if k == 0 {
                format!("{name}-{short}")
            } else {
                format!("{name}-{short}-{k}")
            };
            let ports = if ports.is_empty() {
                // No pod resolved them: the Service's ports, as numbers.
                svc_ports
                    .iter()
                    .filter_map(|p| {
                        let port = match p.target_port.as_ref() {
                            None => p.port,
                            Some(IntOrString::Int(n)) => *n,
                            Some(IntOrString::String(_)) => return None,
                        };
                        Some(EndpointPort {
                            name: p.name.clone(),
                            port: Some(port),
                            protocol: p.protocol.clone(),
                            ..Default::default()
                        })
                    })
                    .collect()
            } else {
                ports
                    .into_iter()
                    .map(|(n, proto, port)| EndpointPort {
                        name: Some(n),
                        port: Some(port),
                        protocol: Some(proto),
                        ..Default::default()
                    })
                    .collect()
            };
            out.slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(slice_name),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME.to_string(), name.clone()),
                        (MANAGED_BY.to_string(), CONTROLLER.to_string()),
                    ])),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Service".into(),
                        name: name.clone(),
                        uid: svc.metadata.uid.clone().unwrap_or_default(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]),
                    ..Default::default()
                },
                address_type: family.clone(),
                endpoints,
                ports: Some(ports),
            });
        }
    }
    out.statuses.insert((ns, name), status);
}

/// What the slices and statuses should be, from the objects and the pods'
/// statuses (by namespace and name).
pub fn desired(m: &Manifests, pods: &BTreeMap<(String, String), LabPodStatus>) -> Desired {
    let mut out = Desired::default();
    for svc in &m.services {
        service_slices(svc, m, pods, &mut out);
    }
    out
}

/// Whether this controller manages `slice`.
pub fn managed(slice: &EndpointSlice) -> bool {
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .is_some_and(|v| v == CONTROLLER)
}

/// What one reconcile did.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    pub written: usize,
    pub deleted: usize,
}

/// Make the cluster directory's slices and Service statuses what they
/// should be; writes only what differs.
pub fn reconcile(cluster: &ClusterDir, m: &Manifests) -> std::io::Result<Reconciled> {
    let pods: BTreeMap<(String, String), LabPodStatus> = cluster
        .statuses::<LabPodStatus>("Pod")
        .into_iter()
        .map(|(ns, n, s)| ((ns, n), s))
        .collect();
    let want = desired(m, &pods);
    let mut done = Reconciled::default();
    let key = |s: &EndpointSlice| {
        (
            ns_of(&s.metadata),
            s.metadata.name.clone().unwrap_or_default(),
        )
    };
    let have: BTreeMap<(String, String), &EndpointSlice> = m
        .endpoint_slices
        .iter()
        .filter(|s| managed(s))
        .map(|s| (key(s), s))
        .collect();
    for s in &want.slices {
        let k = key(s);
        let same = have
            .get(&k)
            .is_some_and(|h| serde_json::to_value(h).ok() == serde_json::to_value(s).ok());
        if !same {
            // k8s-openapi writes apiVersion and kind with the object.
            let yaml = serde_yaml::to_string(s).map_err(std::io::Error::other)?;
            cluster.put_object("EndpointSlice", &k.0, &k.1, &yaml)?;
            done.written += 1;
        }
    }
    for k in have.keys() {
        if !want.slices.iter().any(|s| key(s) == *k) {
            cluster.delete_object("EndpointSlice", &k.0, &k.1)?;
            done.deleted += 1;
        }
    }
    let old: BTreeMap<(String, String), LabServiceStatus> = cluster
        .statuses::<LabServiceStatus>("Service")
        .into_iter()
        .map(|(ns, n, s)| ((ns, n), s))
        .collect();
    for (k, s) in &want.statuses {
        if old.get(k) != Some(s) {
            cluster.put_status("Service", &k.0, &k.1, s)?;
        }
    }
    for k in old.keys() {
        if !want.statuses.contains_key(k) {
            cluster.delete_status("Service", &k.0, &k.1)?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodIP, PodStatus};

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/zone: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: default, uid: u1, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: default, uid: u2, labels: {app: web}}
spec:
  nodeName: node-1
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 9090}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, uid: u3, labels: {app: other}}
spec:
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, uid: s1}
spec:
  selector: {app: web}
  ipFamilies: [IPv4, IPv6]
  ports: [{name: http, port: 80, protocol: TCP, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default, uid: s2}
spec:
  selector: {app: nobody}
  ipFamilies: [IPv4]
  ports: [{port: 80, protocol: TCP, targetPort: 8080}]
"#;

    fn status(ips: &[&str], ready: bool) -> LabPodStatus {
        LabPodStatus {
            status: PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(ips.iter().map(|i| PodIP { ip: i.to_string() }).collect()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            netns: None,
            node: Some("node-1".into()),
            probes: vec![],
        }
    }

    #[test]
    fn slices_follow_families_named_ports_and_readiness() {
        let mut m = Manifests::default();
        m.add_text(std::path::Path::new("x.yaml"), OBJECTS).unwrap();
        let pods = BTreeMap::from([
            (
                ("default".to_string(), "web-1".to_string()),
                status(&["10.0.0.1", "fd00::1"], true),
            ),
            (
                ("default".to_string(), "web-2".to_string()),
                status(&["10.0.0.2", "fd00::2"], false),
            ),
        ]);
        let d = desired(&m, &pods);
        let names: Vec<_> = d
            .slices
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        // web: two port sets (8080 and 9090) in two families; nobody: one
        // empty slice.
        assert_eq!(
            names,
            [
                "web-ipv4",
                "web-ipv4-1",
                "web-ipv6",
                "web-ipv6-1",
                "nobody-ipv4"
            ]
        );
        let first = &d.slices[0];
        assert_eq!(first.address_type, "IPv4");
        assert_eq!(first.endpoints[0].addresses, ["10.0.0.1"]);
        assert_eq!(first.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(first.endpoints[0].zone.as_deref(), Some("a"));
        let c = first.endpoints[0].conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(true), Some(true), Some(false))
        );
        let second = &d.slices[1];
        assert_eq!(second.ports.as_ref().unwrap()[0].port, Some(9090));
        assert_eq!(
            second.endpoints[0].conditions.as_ref().unwrap().ready,
            Some(false)
        );
        assert_eq!(d.slices[2].endpoints[0].addresses, ["fd00::1"]);
        assert!(d.slices[4].endpoints.is_empty());
        let web = &d.statuses[&("default".to_string(), "web".to_string())];
        assert_eq!((web.pods, web.ready_endpoints), (2, 2));
        let nobody = &d.statuses[&("default".to_string(), "nobody".to_string())];
        assert!(
            nobody.problems[0]
                .contains("the selector app=nobody matches no pod in namespace default"),
            "{nobody:?}"
        );
    }

    #[test]
    fn reconcile_writes_only_differences_and_removes_stale_slices() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = ClusterDir::open(dir.path()).unwrap();
        for (i, doc) in OBJECTS.split("---").enumerate() {
            cluster
                .put_object("Any", "x", &format!("o{i}"), doc)
                .unwrap();
        }
        cluster
            .put_status("Pod", "default", "web-1", &status(&["10.0.0.1"], true))
            .unwrap();
        let m = cluster.manifests().unwrap();
        let first = reconcile(&cluster, &m).unwrap();
        assert!(first.written > 0);
        let m = cluster.manifests().unwrap();
        assert_eq!(m.endpoint_slices.len(), first.written);
        assert_eq!(reconcile(&cluster, &m).unwrap(), Reconciled::default());
        // The Service goes: so do its slices and status.
        cluster.delete_object("Any", "x", "o4").unwrap();
        let m = cluster.manifests().unwrap();
        let r = reconcile(&cluster, &m).unwrap();
        assert!(r.deleted > 0, "{r:?}");
        let m = cluster.manifests().unwrap();
        assert!(
            m.endpoint_slices
                .iter()
                .all(|s| s.metadata.labels.as_ref().unwrap()[SERVICE_NAME] != "web")
        );
        assert!(
            cluster
                .status::<LabServiceStatus>("Service", "default", "web")
                .is_none()
        );
    }
}
