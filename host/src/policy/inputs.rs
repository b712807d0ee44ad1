//! The policy engine's inputs from a cluster's objects.

use crate::contract::bindings::imports::switchyard::plugin::types as wit;
use crate::model::snapshot::Manifests;
use crate::model::{ObjectKind, ObjectRef};
use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;

/// One policy for the engine: the object, its resolved form and, for a
/// WasmNetworkPolicy, the module that renders it with its config.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput {
    pub object: ObjectRef,
    pub policy: wit::Policy,
    pub module: Option<WasmModule>,
}

/// The module a WasmNetworkPolicy names, and its config for the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmModule {
    /// The NetworkModule's name.
    pub name: String,
    /// `spec.config`; the NetworkModule's config when `None`.
    pub config: Option<serde_json::Value>,
}

/// Every NetworkPolicy and WasmNetworkPolicy of `m`, resolved against its
/// pods and namespaces. `statuses` are the pods' statuses by (namespace,
/// name), where they live apart from the pods (the lab's status directory);
/// a pod's own status is used otherwise. Returns the policies and why a
/// policy could not be resolved (the engine keeps what it installed for it;
/// the agent reports it).
pub fn inputs(
    m: &Manifests,
    statuses: &BTreeMap<(String, String), PodStatus>,
) -> (Vec<PolicyInput>, BTreeMap<ObjectRef, String>) {
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
                    let mut p = (**p).clone();
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
        let object = ObjectRef::new(
            ObjectKind::NetworkPolicy,
            np.metadata.namespace.as_deref().unwrap_or("default"),
            np.metadata.name.as_deref().unwrap_or_default(),
        );
        match super::resolve::resolve(np, &pods, &namespaces) {
            Ok(policy) => out.push(PolicyInput {
                object,
                policy,
                module: None,
            }),
            Err(e) => {
                errors.insert(object, e);
            }
        }
    }
    for w in &m.wasm_network_policies {
        let object = ObjectRef::new(ObjectKind::WasmNetworkPolicy, w.namespace(), w.name());
        let np = NetworkPolicy {
            metadata: w.metadata.clone(),
            spec: Some(w.spec.network_policy_spec()),
        };
        match super::resolve::resolve(&np, &pods, &namespaces) {
            Ok(policy) => out.push(PolicyInput {
                object,
                policy,
                module: Some(WasmModule {
                    name: w.spec.module.clone(),
                    config: w.spec.config.clone(),
                }),
            }),
            Err(e) => {
                errors.insert(object, e);
            }
        }
    }
    (out, errors)
}
