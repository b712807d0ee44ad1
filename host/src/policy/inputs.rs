//! The policy engine's inputs from a cluster's objects.

use crate::runtime::bindings::imports::switchyard::plugin::types as wit;
use crate::source::local::Manifests;
use k8s_openapi::api::core::v1::PodStatus;
use std::collections::BTreeMap;

/// Every NetworkPolicy of `m`, resolved against its pods and namespaces.
/// `statuses` are the pods' statuses by (namespace, name), where they live
/// apart from the pods (the lab's status directory); a pod's own status is
/// used otherwise. Returns the policies and, by `namespace/name`, why a
/// policy could not be resolved (the engine keeps what it installed for it;
/// the agent reports it).
pub fn inputs(
    m: &Manifests,
    statuses: &BTreeMap<(String, String), PodStatus>,
) -> (Vec<wit::Policy>, BTreeMap<String, String>) {
    let pods: Vec<wit::Pod> = m
        .pods
        .iter()
        .map(|p| {
            let key = (
                p.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                p.metadata.name.clone().unwrap_or_default(),
            );
            match statuses.get(&key) {
                Some(s) => {
                    let mut p = p.clone();
                    p.status = Some(s.clone());
                    super::resolve::pod(&p)
                }
                None => super::resolve::pod(p),
            }
        })
        .collect();
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for n in &m.namespaces {
        let name = n.metadata.name.clone().unwrap_or_default();
        let mut labels = n.metadata.labels.clone().unwrap_or_default();
        labels.insert("kubernetes.io/metadata.name".into(), name.clone());
        namespaces.insert(name, labels);
    }
    let mut out = vec![];
    let mut errors = BTreeMap::new();
    for np in &m.network_policies {
        let name = format!(
            "{}/{}",
            np.metadata.namespace.as_deref().unwrap_or("default"),
            np.metadata.name.as_deref().unwrap_or_default()
        );
        match super::resolve::resolve(np, &pods, &namespaces) {
            Ok(p) => out.push(p),
            Err(e) => {
                errors.insert(name, e);
            }
        }
    }
    (out, errors)
}
