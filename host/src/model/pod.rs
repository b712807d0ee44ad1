//! Pods as the contract sees them: the projection every role's input uses.

use crate::contract::{wit, wit_ip};
use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A pod as the contract sees it. Addresses that do not parse are left out
/// (at most one per family, primary first); so are container ports with an
/// unknown protocol or a number out of range.
pub fn pod(p: &Pod) -> wit::Pod {
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();
    let texts: Vec<&str> = match status.and_then(|s| s.pod_ips.as_ref()) {
        Some(ips) if !ips.is_empty() => ips.iter().map(|i| i.ip.as_str()).collect(),
        _ => status
            .and_then(|s| s.pod_ip.as_deref())
            .into_iter()
            .collect(),
    };
    let mut ips: Vec<IpAddr> = vec![];
    for ip in texts.iter().filter_map(|t| crate::k8s::net::parse_ip(t)) {
        if !ips.iter().any(|i| i.is_ipv4() == ip.is_ipv4()) {
            ips.push(ip);
        }
    }
    // Ports of the containers, then of sidecars (restartable init
    // containers), as named targetPorts are looked up.
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let sidecars = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    let ports = containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some(wit::ContainerPort {
                name: cp.name.clone().filter(|n| !n.is_empty()),
                port: u16::try_from(cp.container_port).ok().filter(|p| *p != 0)?,
                protocol: crate::k8s::protocol(cp.protocol.as_deref()).ok()?,
            })
        })
        .collect();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        None | Some("Pending") => wit::PodPhase::Pending,
        Some("Running") => wit::PodPhase::Running,
        Some("Succeeded") => wit::PodPhase::Succeeded,
        Some("Failed") => wit::PodPhase::Failed,
        Some(_) => wit::PodPhase::Unknown,
    };
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    wit::Pod {
        namespace: p
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        name: p.metadata.name.clone().unwrap_or_default(),
        uid: p.metadata.uid.clone().unwrap_or_default(),
        labels: pairs(p.metadata.labels.as_ref()),
        ips: ips.into_iter().map(wit_ip).collect(),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        ports,
        phase,
        ready,
    }
}

pub fn pairs(m: Option<&BTreeMap<String, String>>) -> Vec<(String, String)> {
    m.into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
