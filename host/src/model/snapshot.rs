//! The model's snapshot of the cluster: every object the agent reads, as a
//! source last saw it. Sources fill it (the local source reads a directory,
//! [`Manifests::load_dir`]; the kube source follows the API server); the
//! node's datapath, the modules' inputs, the admin API's view all read it.

pub use super::crd::WasmNetworkPolicy;
use super::crd::{ClusterNetworkSpec, NetworkModuleSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A NetworkModule from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkModule {
    pub name: String,
    pub generation: i64,
    pub spec: NetworkModuleSpec,
}

/// A ClusterNetwork from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNetwork {
    pub name: String,
    /// `metadata.generation` (1 when a manifest does not say).
    pub generation: i64,
    pub spec: ClusterNetworkSpec,
}

/// Everything a source holds that the agent understands.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    pub nodes: Vec<Node>,
    pub pods: Vec<Arc<Pod>>,
    pub namespaces: Vec<Namespace>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    pub network_policies: Vec<NetworkPolicy>,
    /// ConfigMaps that may hold modules (the kube source watches only the
    /// agents' namespace).
    pub config_maps: Vec<ConfigMap>,
    pub wasm_network_policies: Vec<WasmNetworkPolicy>,
    pub modules: Vec<NetworkModule>,
    pub cluster_networks: Vec<ClusterNetwork>,
    /// Kinds this agent does not read (yet), by `kind/name`.
    pub ignored: Vec<String>,
}

impl Manifests {
    /// The cluster's network settings: the ClusterNetwork named `default`.
    pub fn cluster_network(&self) -> Option<&ClusterNetworkSpec> {
        self.cluster_networks
            .iter()
            .find(|c| c.name == "default")
            .map(|c| &c.spec)
    }

    /// The Node object named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }
}

/// The sticky owner (`namespace/name`) of a pod whose address should survive
/// its re-creation: a StatefulSet's pod, or one annotated
/// `switchyard.dev/sticky-ip: "true"`.
pub fn sticky_owner(pod: &Pod) -> Option<String> {
    let m = &pod.metadata;
    let stateful = m
        .owner_references
        .as_ref()
        .is_some_and(|o| o.iter().any(|r| r.kind == "StatefulSet"));
    let annotated = m
        .annotations
        .as_ref()
        .and_then(|a| a.get("switchyard.dev/sticky-ip"))
        .is_some_and(|v| v == "true");
    (stateful || annotated).then(|| {
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or_default()
        )
    })
}

/// The labels of a node, for NetworkModule node selectors.
pub fn node_labels(node: Option<&Node>) -> BTreeMap<String, String> {
    node.and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default()
}
