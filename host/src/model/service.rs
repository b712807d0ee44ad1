//! Kubernetes Services and EndpointSlices as the contract's projections.

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::contract::{wit_cidr, wit_ip};
use crate::model::crd::ClusterNetworkSpec;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The label that names the proxy a Service is for (kube-proxy's): Services
/// that name another proxy are left alone.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Service annotation with endpoint weights by pod name:
/// `switchyard.dev/weights: "web-1=3,web-2=1"`. Pods it does not name weigh
/// 1. EndpointSlices have no weight field, so the Service carries them.
pub const WEIGHTS_ANNOTATION: &str = "switchyard.dev/weights";

/// The weights a Service's annotation gives, by pod name.
pub fn weights(svc: &Service) -> Result<BTreeMap<String, u32>, String> {
    let Some(text) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHTS_ANNOTATION))
    else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            format!(
                "annotation {WEIGHTS_ANNOTATION}: {part:?} is not POD=WEIGHT with a weight from 1 to 100"
            )
        };
        let (pod, w) = part.split_once('=').ok_or_else(bad)?;
        let w: u32 = w.trim().parse().map_err(|_| bad())?;
        if !(1..=100).contains(&w) || pod.trim().is_empty() {
            return Err(bad());
        }
        out.insert(pod.trim().to_string(), w);
    }
    Ok(out)
}

fn labels(m: &Option<BTreeMap<String, String>>) -> Vec<(String, String)> {
    m.iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn family(s: &str) -> Option<wit::IpFamily> {
    match s {
        "IPv4" => Some(wit::IpFamily::Ipv4),
        "IPv6" => Some(wit::IpFamily::Ipv6),
        _ => None,
    }
}

fn addr(s: &str, what: &str) -> Result<wit::IpAddress, String> {
    s.parse::<IpAddr>()
        .map(wit_ip)
        .map_err(|_| format!("{what} {s:?} is not an IP address"))
}

/// Whether this proxy handles `svc`.
pub fn is_ours(svc: &Service) -> bool {
    svc.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROXY_NAME_LABEL))
        .is_none()
}

/// A Service as the proxy module sees it.
pub fn service(svc: &Service) -> Result<wit::Service, String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => wit::ServiceType::ClusterIp,
        "NodePort" => wit::ServiceType::NodePort,
        "LoadBalancer" => wit::ServiceType::LoadBalancer,
        "ExternalName" => wit::ServiceType::ExternalName,
        other => return Err(format!("unknown type {other:?}")),
    };
    let cluster_ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter(|c| !c.is_empty() && *c != "None")
        .map(|c| addr(c, "clusterIP"))
        .collect::<Result<Vec<_>, _>>()?;
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .map(|c| addr(c, "externalIP"))
        .collect::<Result<Vec<_>, _>>()?;
    let load_balancer_ips = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref())
        .map(|c| addr(c, "loadBalancer ingress IP"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            Ok(wit::ServicePort {
                name: p.name.clone().unwrap_or_default(),
                protocol: crate::k8s::protocol(p.protocol.as_deref())?,
                port: u16::try_from(p.port)
                    .map_err(|_| format!("port {} is out of range", p.port))?,
                target_port: match &p.target_port {
                    None => wit::TargetPort::Number(p.port as u16),
                    Some(IntOrString::Int(n)) => wit::TargetPort::Number(*n as u16),
                    Some(IntOrString::String(s)) => wit::TargetPort::Name(s.clone()),
                },
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let policy = |p: Option<&str>| match p {
        Some("Local") => wit::TrafficPolicy::Local,
        _ => wit::TrafficPolicy::Cluster,
    };
    Ok(wit::Service {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        labels: labels(&svc.metadata.labels),
        annotations: labels(&svc.metadata.annotations),
        service_type,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        session_affinity_timeout: (spec.session_affinity.as_deref() == Some("ClientIP")).then(
            || {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .map(|t| t.clamp(1, 86400) as u32)
                    .unwrap_or(10800)
            },
        ),
        external_traffic_policy: policy(spec.external_traffic_policy.as_deref()),
        internal_traffic_policy: policy(spec.internal_traffic_policy.as_deref()),
        traffic_distribution: match spec.traffic_distribution.as_deref() {
            Some("PreferSameNode") => Some(wit::TrafficDistribution::PreferSameNode),
            Some("PreferSameZone" | "PreferClose") => {
                Some(wit::TrafficDistribution::PreferSameZone)
            }
            _ => None,
        },
        ip_families: spec
            .ip_families
            .iter()
            .flatten()
            .filter_map(|f| family(f))
            .collect(),
        ip_family_policy: match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => wit::IpFamilyPolicy::PreferDualStack,
            Some("RequireDualStack") => wit::IpFamilyPolicy::RequireDualStack,
            _ => wit::IpFamilyPolicy::SingleStack,
        },
        health_check_node_port: spec
            .health_check_node_port
            .and_then(|n| u16::try_from(n).ok()),
    })
}

/// The endpoints of a Service's slices. Endpoint conditions follow
/// KEP-1672: a missing `ready` is true, a missing `serving` is `ready`, a
/// missing `terminating` is false.
pub fn endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<wit::Endpoint> {
    let mut out = vec![];
    for s in slices {
        let ports: Vec<wit::EndpointPort> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(wit::EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.port?).ok()?,
                    protocol: crate::k8s::protocol(p.protocol.as_deref()).ok()?,
                })
            })
            .collect();
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(wit::Endpoint {
                    address: wit_ip(ip),
                    ports: ports.clone(),
                    ready,
                    serving: c.serving.unwrap_or(ready),
                    terminating: c.terminating.unwrap_or(false),
                    node: e.node_name.clone(),
                    zone: e.zone.clone(),
                    pod: e.target_ref.as_ref().map(|r| {
                        format!(
                            "{}/{}",
                            r.namespace.clone().unwrap_or_default(),
                            r.name.clone().unwrap_or_default()
                        )
                    }),
                    weight: 1,
                });
            }
        }
    }
    out
}

/// The Services this proxy programs, each with the endpoints of its slices,
/// and the Services it cannot read (by `namespace/name`, with why).
#[allow(clippy::type_complexity)]
pub fn inputs(
    m: &crate::model::snapshot::Manifests,
) -> (
    Vec<(wit::Service, Vec<wit::Endpoint>)>,
    BTreeMap<String, String>,
) {
    let mut out = vec![];
    let mut errors = BTreeMap::new();
    for svc in m.services.iter().filter(|s| is_ours(s)) {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        match service(svc).and_then(|s| Ok((s, weights(svc)?))) {
            Ok((mut w, by_pod)) => {
                w.namespace = ns.to_string();
                let slices = m.endpoint_slices.iter().filter(|s| {
                    s.metadata.namespace.as_deref().unwrap_or("default") == ns
                        && s.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            .is_some_and(|n| n == name)
                });
                let mut eps = endpoints(slices);
                for e in &mut eps {
                    let pod = e
                        .pod
                        .as_deref()
                        .and_then(|p| p.split_once('/'))
                        .map(|p| p.1);
                    if let Some(x) = pod.and_then(|p| by_pod.get(p)) {
                        e.weight = *x;
                    }
                }
                out.push((w, eps));
            }
            Err(e) => {
                errors.insert(format!("{ns}/{name}"), format!("Service {ns}/{name}: {e}"));
            }
        }
    }
    (out, errors)
}

/// What every render on this node needs to know.
pub fn node_context(
    node: &str,
    zone: Option<String>,
    node_ips: &[IpAddr],
    net: &ClusterNetworkSpec,
) -> wit::NodeContext {
    let cidrs = |v: &[String]| -> Vec<wit::IpCidr> {
        v.iter()
            .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
            .map(|c| wit_cidr(c.trunc()))
            .collect()
    };
    let cluster_cidrs = cidrs(&net.pod_cidrs);
    let mut families = vec![];
    for c in &cluster_cidrs {
        let f = match c.address {
            wit::IpAddress::Ipv4(_) => wit::IpFamily::Ipv4,
            wit::IpAddress::Ipv6(_) => wit::IpFamily::Ipv6,
        };
        if !families.contains(&f) {
            families.push(f);
        }
    }
    wit::NodeContext {
        node: node.to_string(),
        zone,
        node_ips: node_ips.iter().map(|a| wit_ip(*a)).collect(),
        cluster_cidrs,
        service_cidrs: cidrs(&net.service_cidrs),
        families,
        masquerade: net.masquerades(),
        default_scheduler: net.proxy.default_scheduler.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::snapshot::Manifests;

    const DOCS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x, annotations: {switchyard.dev/weights: "a=3, b=1"}}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: theirs, namespace: x, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: x, annotations: {switchyard.dev/weights: "a=0"}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.2]
  targetRef: {kind: Pod, namespace: x, name: a}
- addresses: [10.244.1.3]
  targetRef: {kind: Pod, namespace: x, name: b}
- addresses: [10.244.1.4]
  conditions: {ready: false}
  targetRef: {kind: Pod, namespace: x, name: c}
"#;

    #[test]
    fn inputs_carry_weights_skip_other_proxies_and_name_bad_services() {
        let mut m = Manifests::default();
        m.add_text(std::path::Path::new("x.yaml"), DOCS).unwrap();
        let (inputs, errors) = inputs(&m);
        let names: Vec<&str> = inputs.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["web"], "another proxy's Service is left alone");
        let eps = &inputs[0].1;
        let w: Vec<(u32, bool)> = eps.iter().map(|e| (e.weight, e.ready)).collect();
        assert_eq!(w, [(3, true), (1, true), (1, false)]);
        assert!(
            errors["x/bad"]
                .contains("annotation switchyard.dev/weights: \"a=0\" is not POD=WEIGHT"),
            "{errors:?}"
        );
    }
}
