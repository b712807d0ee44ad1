//! Our custom resources (group `switchyard.dev`, version `v1alpha1`), as the
//! agent reads them from manifests or the API server.
//!
//! The CRDs are generated from these types (`switchyard crds`, checked in as
//! `crds/*.yaml`): the OpenAPI schema from the fields and their bounds, and
//! CEL rules (`x_kube(validation)`) where a schema cannot say it (exactly one
//! source, the singleton name, CIDR syntax). The lab's admission evaluates
//! the same CEL rules ([`check_cel`]), so a manifest the lab takes is one
//! the API server takes.

// kube's derive repeats `type_ = ...` across printcolumn(...) entries.
#![allow(clippy::duplicated_attributes)]

use super::{FailurePolicy, Role};
use k8s_openapi::api::networking::v1::{
    NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "switchyard.dev";
pub const API_VERSION: &str = "switchyard.dev/v1alpha1";

/// Where a module's bytes come from: exactly one of `builtin`, `url`, `file` or `oci`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("[has(self.builtin), has(self.url), has(self.file), has(self.oci), has(self.configMap)].filter(x, x).size() == 1").message("exactly one of builtin, url, file, oci and configMap must be set"),
    validation = Rule::new("!has(self.url) || has(self.sha256)").message("sha256 is required with url"),
)]
pub struct ModuleSourceSpec {
    /// A module compiled into the agent, by name (`cni-bridge`, `proxy-nftables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// An http(s) URL; `sha256` is required with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An OCI artifact pulled by digest (`REGISTRY/REPOSITORY@sha256:<hex>`;
    /// a tag alone is refused); its manifest must have exactly one Wasm layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[^@\s]+/[^@\s]+@sha256:[0-9a-f]{64}$"))]
    pub oci: Option<String>,
    /// A key of a ConfigMap's `binaryData`, in the agents' namespace (the
    /// only one they may read ConfigMaps in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapModule>,
    /// The module's sha256 (64 hex digits, optionally `sha256:`-prefixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(sha256:)?[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
}

/// A module kept in a ConfigMap's `binaryData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapModule {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// `NetworkModule.spec.limits`: each field set replaces the role's default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    /// Wall time of one call.
    #[schemars(range(min = 1, max = 600000))]
    pub deadline_ms: Option<u64>,
    /// Linear memory of one instance (the agent caps it further).
    #[schemars(range(min = 65536))]
    pub memory_bytes: Option<usize>,
    /// Instructions per call, when the agent meters fuel.
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
    #[schemars(range(min = 1))]
    pub max_output_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
    pub max_log_records: Option<usize>,
}

/// A config object of any shape: the module's own schema checks it.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// How many nodes report what, in a status written by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes the object is for.
    pub desired: u32,
    /// Nodes where it is in force.
    pub ready: u32,
    /// Nodes that report a failure (see `conditions` and `lastError`).
    pub degraded: u32,
}

/// Where a module stands on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ModuleState {
    /// The NetworkModule's current generation serves.
    Ready,
    /// The current generation could not be loaded; the last good version
    /// (if any) keeps serving.
    Degraded,
}

/// One node's load result for a NetworkModule, written by that node's agent
/// with server-side apply (field manager `switchyard-agent/<node>`): each
/// agent owns its own entry of the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeModuleResult {
    pub node: String,
    pub state: ModuleState,
    /// The generation this result is for.
    pub observed_generation: i64,
    /// The sha256 of the version serving on the node, if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// `Loaded`, or why not (`FetchFailed`, `DigestMismatch`, ...).
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// `NetworkModule.status`: every node's load result (`nodeResults`, one
/// entry per node, written by that node) and their summary (conditions,
/// counts, digest, last error), written by the agents' elected leader.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkModuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`, with the reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The sha256 of the module the nodes run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// The last load error a node reported, with the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub node_results: Vec<NodeModuleResult>,
}

/// One node's result for a ClusterNetwork or a WasmNetworkPolicy, written
/// by that node's agent with server-side apply (field manager
/// `switchyard-agent/<node>`): each agent owns its own entry of the list.
///
/// For a ClusterNetwork, `Ready` means the node networking of its network
/// model (routes, VXLAN, masquerade) is applied on the node; for a
/// WasmNetworkPolicy, that the policy is in force on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeObjectResult {
    pub node: String,
    /// `Ready` when the object is in force on the node at
    /// `observedGeneration`, `Degraded` when it failed there.
    pub state: ModuleState,
    /// The generation this result is for.
    pub observed_generation: i64,
    /// `Applied` or `Enforced`, or why not (`NodeNetworkingFailed`,
    /// `InvalidConfig`, `ModuleNotLoaded`, `NotEnforced`, ...).
    pub reason: String,
    /// What failed, when the node reports a failure.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The status of a ClusterNetwork or a WasmNetworkPolicy: every node's
/// result (`nodeResults`, one entry per node, written by that node) and
/// their summary (conditions, counts, last error), written by the agents'
/// elected leader.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The generation the summary is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every node the object is for reports it applied at this
    /// generation) and `Degraded` (a node reports a failure), with the
    /// reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// The failure a node reported, with the node and the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Each node's result, one entry per node, written by that node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub node_results: Vec<NodeObjectResult>,
}

/// `NetworkModule.spec`: one module bound to a role.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "NetworkModule",
    status = "NetworkModuleStatus",
    shortname = "nmod",
    category = "switchyard",
    derive = "PartialEq",
    doc = "A WebAssembly module bound to a role (cni, service-proxy, scheduler, network-policy) on the nodes it selects.",
    printcolumn(name = "Role", type_ = "string", json_path = ".spec.role"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Nodes",
        type_ = "string",
        json_path = ".status.nodes.ready",
        description = "nodes where it serves"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.digest",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkModuleSpec {
    pub role: Role,
    pub source: ModuleSourceSpec,
    /// The module's config, checked against the schema it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Among modules of one role on a node, the highest priority serves.
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// Nodes the module is for (all when empty).
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Run beside the active module and compare plans without applying.
    #[serde(default)]
    pub shadow: bool,
    /// Serve only the objects that name this module (WasmNetworkPolicies),
    /// never the role itself: a policy written with the SDK must not
    /// replace the NetworkPolicy implementation by outranking it.
    #[serde(default)]
    pub referenced_only: bool,
}

impl NetworkModuleSpec {
    /// Whether the module is meant for a node with these labels.
    pub fn selects(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node_labels.get(k) == Some(v))
    }
}

/// The network model of a cluster (`ClusterNetwork.spec.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkModel {
    /// Pod addresses are routable on the underlay; no masquerade.
    #[default]
    Flat,
    /// VXLAN between nodes; pods are not on the underlay and leave the
    /// cluster masqueraded.
    Overlay,
    /// Nodes route pod CIDRs to each other; the outside cannot reach pods,
    /// and pods reach it only masqueraded.
    Island,
    /// Pods reach only the cluster (pods and nodes); nodes reach anything.
    Isolated,
}

impl std::fmt::Display for NetworkModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkModel::Flat => "flat",
            NetworkModel::Overlay => "overlay",
            NetworkModel::Island => "island",
            NetworkModel::Isolated => "isolated",
        })
    }
}

impl std::str::FromStr for NetworkModel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flat" => Ok(NetworkModel::Flat),
            "overlay" => Ok(NetworkModel::Overlay),
            "island" => Ok(NetworkModel::Island),
            "isolated" => Ok(NetworkModel::Isolated),
            _ => Err(format!(
                "unknown network model {s:?}: expected flat, overlay, island or isolated"
            )),
        }
    }
}

/// VXLAN settings of the overlay model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanSpec {
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16777215))]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1))]
    pub port: u16,
}

fn default_vni() -> u32 {
    4242
}

fn default_vxlan_port() -> u16 {
    4789
}

impl Default for VxlanSpec {
    fn default() -> Self {
        VxlanSpec {
            vni: default_vni(),
            port: default_vxlan_port(),
        }
    }
}

/// How Services are proxied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    /// `nftables`, `ipvs` or `userspace`.
    #[serde(default = "default_proxy_mode")]
    #[x_kube(validation = Rule::new("self in ['nftables', 'ipvs', 'userspace']").message("must be nftables, ipvs or userspace"))]
    pub mode: String,
    /// Scheduler for Services without the `switchyard.dev/scheduler` annotation.
    #[serde(default = "default_scheduler")]
    pub default_scheduler: String,
}

fn default_proxy_mode() -> String {
    "nftables".into()
}

fn default_scheduler() -> String {
    "random".into()
}

impl Default for ProxySpec {
    fn default() -> Self {
        ProxySpec {
            mode: default_proxy_mode(),
            default_scheduler: default_scheduler(),
        }
    }
}

/// Cluster DNS, served by every node's agent (`crate::dns`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSpec {
    /// The cluster domain (`cluster.local` by default).
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub cluster_domain: Option<String>,
    /// Upstream resolvers for names outside the cluster domain (`IP` or
    /// `IP:PORT`, or `[IPv6]:PORT`); by default the node's resolv.conf.
    #[serde(default)]
    #[schemars(length(max = 3))]
    pub servers: Vec<String>,
    /// Whether the agents serve cluster DNS (true by default). When false,
    /// the DNS Service is proxied like any other, to its own endpoints.
    #[serde(default)]
    pub serve: Option<bool>,
    /// The node-local address the agents' DNS also answers on
    /// (`169.254.20.10` by default, NodeLocal DNSCache's).
    #[serde(default)]
    pub local_address: Option<String>,
    /// The Service whose ClusterIPs pods' resolv.conf names (the kubelet's
    /// `--cluster-dns`): `namespace/name`, `kube-system/kube-dns` by default.
    /// The agents answer on its ClusterIPs on every node, and the proxy
    /// leaves them to the node.
    #[serde(default)]
    pub service: Option<String>,
}

/// `ClusterNetwork.spec` (the singleton `default`).
#[derive(
    CustomResource, Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, KubeSchema,
)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ClusterNetwork",
    status = "ObjectStatus",
    shortname = "cnet",
    category = "switchyard",
    derive = "PartialEq",
    derive = "Default",
    doc = "The cluster's pod network: CIDRs, network model, VXLAN, masquerade, MTU, proxy mode and DNS. A singleton named default.",
    validation = Rule::new("self.metadata.name == 'default'").message("the ClusterNetwork is a singleton: its name must be default"),
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model"),
    printcolumn(name = "Pod CIDRs", type_ = "string", json_path = ".spec.podCIDRs"),
    printcolumn(name = "Proxy", type_ = "string", json_path = ".spec.proxy.mode"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkSpec {
    #[serde(default)]
    pub model: NetworkModel,
    /// The cluster's pod CIDRs, at most one per family.
    #[serde(default, rename = "podCIDRs")]
    #[schemars(length(max = 2), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("each must be a valid CIDR (at most two: one per family)"))]
    pub pod_cidrs: Vec<String>,
    /// The cluster's Service CIDRs, at most one per family.
    #[serde(default, rename = "serviceCIDRs")]
    #[schemars(length(max = 2), inner(length(max = 43)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("each must be a valid CIDR (at most two: one per family)"))]
    pub service_cidrs: Vec<String>,
    /// Prefix length of each node's pod CIDR, per family (24 and 64 by default).
    #[serde(default)]
    #[schemars(range(min = 8, max = 30))]
    pub node_mask_v4: Option<u8>,
    #[serde(default)]
    #[schemars(range(min = 48, max = 126))]
    pub node_mask_v6: Option<u8>,
    #[serde(default)]
    pub vxlan: Option<VxlanSpec>,
    /// Masquerade traffic leaving the pod network; by default for the
    /// overlay and island models.
    #[serde(default)]
    pub masquerade: Option<bool>,
    #[serde(default)]
    #[schemars(range(min = 1280, max = 9216))]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub proxy: ProxySpec,
    #[serde(default)]
    pub dns: Option<DnsSpec>,
}

impl ClusterNetworkSpec {
    /// Whether traffic leaving the pod network is masqueraded.
    pub fn masquerades(&self) -> bool {
        self.masquerade.unwrap_or(matches!(
            self.model,
            NetworkModel::Overlay | NetworkModel::Island
        ))
    }
}

/// `WasmNetworkPolicy.spec` (namespaced): a network policy rendered by a
/// module written with the SDK, with its own config.
///
/// The host resolves the same fields a NetworkPolicy has (`podSelector`,
/// `policyTypes`, `ingress`, `egress`: selectors to pods and addresses,
/// named ports to numbers) and hands them to the module with `config`; the
/// module decides what they mean. `policyTypes` is what `FailClosed`
/// isolates when the module fails, and defaults as a NetworkPolicy's does.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "WasmNetworkPolicy",
    namespaced,
    status = "ObjectStatus",
    shortname = "wnp",
    category = "switchyard",
    derive = "PartialEq",
    doc = "A network policy rendered by a module written with the Switchyard SDK, applied to the pods it selects, with its config.",
    printcolumn(name = "Module", type_ = "string", json_path = ".spec.module"),
    printcolumn(
        name = "Pod-Selector",
        type_ = "string",
        json_path = ".spec.podSelector",
        priority = 1
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".metadata.annotations.switchyard\\.dev/policy-mode"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmNetworkPolicySpec {
    /// The NetworkModule (role `network-policy`) that renders this policy.
    #[schemars(length(min = 1, max = 253))]
    pub module: String,
    /// The module's config for this policy, checked against the schema the
    /// module describes. The NetworkModule's own config when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub config: Option<serde_json::Value>,
    /// The pods of the policy's namespace it applies to (all when empty).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2), inner(length(max = 7)))]
    #[x_kube(validation = Rule::new("self.all(t, t in ['Ingress', 'Egress'])").message("at most Ingress and Egress"))]
    pub policy_types: Option<Vec<String>>,
    /// Peers and ports, resolved by the host as a NetworkPolicy's are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
}

impl WasmNetworkPolicy {
    /// The policy's namespace (`default` when unset).
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// The CEL rules of `T`'s CRD (`x-kubernetes-validations`), evaluated on
/// `obj` as the API server does on create; the error is in its words
/// (`NetworkModule "m" is invalid: spec.source: Invalid value: "object":
/// exactly one of builtin, url, file, oci and configMap must be set`).
pub fn check_cel<T>(obj: &T) -> Result<(), String>
where
    T: kube::CustomResourceExt + kube::Resource<DynamicType = ()> + Serialize,
{
    let Err(errors) = kube::core::cel::validate_cel(obj) else {
        return Ok(());
    };
    let list: Vec<String> = errors
        .as_slice()
        .iter()
        .map(|e| {
            let path = if e.field_path.is_empty() {
                "<nil>"
            } else {
                e.field_path.as_str()
            };
            format!("{path}: Invalid value: \"object\": {}", e.message)
        })
        .collect();
    let kind = T::kind(&());
    let name = obj.meta().name.as_deref().unwrap_or_default();
    Err(match list.as_slice() {
        [one] => format!("{kind} {name:?} is invalid: {one}"),
        many => format!("{kind} {name:?} is invalid: [{}]", many.join(", ")),
    })
}

impl WasmNetworkPolicySpec {
    /// The NetworkPolicy fields, for validation and resolution.
    pub fn network_policy_spec(&self) -> NetworkPolicySpec {
        NetworkPolicySpec {
            pod_selector: Some(self.pod_selector.clone()),
            policy_types: self.policy_types.clone(),
            ingress: self.ingress.clone(),
            egress: self.egress.clone(),
        }
    }
}

/// Every CRD of `switchyard.dev`, in a stable order (what `switchyard crds`
/// prints, `crds/` holds and the lab installs).
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![
        NetworkModule::crd(),
        ClusterNetwork::crd(),
        WasmNetworkPolicy::crd(),
    ]
}

#[cfg(test)]
mod tests {
    use crate::model::snapshot::Manifests;

    fn cel<T>(yaml: &str) -> Result<(), String>
    where
        T: kube::CustomResourceExt
            + kube::Resource<DynamicType = ()>
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        super::check_cel(&serde_yaml::from_str::<T>(yaml).unwrap())
    }

    /// The CRDs' CEL rules hold what a schema cannot say, and the lab runs
    /// them as the API server does.
    #[test]
    fn cel_rules_refuse_what_the_schema_cannot() {
        use super::{ClusterNetwork, NetworkModule, WasmNetworkPolicy};
        let module = |source: &str| {
            cel::<NetworkModule>(&format!(
                "apiVersion: switchyard.dev/v1alpha1\nkind: NetworkModule\nmetadata: {{name: m}}\nspec: {{role: cni, source: {source}}}"
            ))
        };
        assert_eq!(module("{builtin: cni-bridge}"), Ok(()));
        let oci = format!("127.0.0.1:5000/m@sha256:{}", "a".repeat(64));
        assert_eq!(module(&format!("{{oci: '{oci}'}}")), Ok(()));
        assert!(module(&format!("{{oci: '{oci}', builtin: cni-bridge}}")).is_err());
        assert_eq!(
            module("{builtin: cni-bridge, file: /m.wasm}").unwrap_err(),
            "NetworkModule \"m\" is invalid: spec.source: Invalid value: \"object\": exactly one of builtin, url, file, oci and configMap must be set"
        );
        assert!(
            module("{url: 'https://example.com/m.wasm'}")
                .unwrap_err()
                .ends_with("sha256 is required with url")
        );
        let network = |name: &str, cidrs: &str| {
            cel::<ClusterNetwork>(&format!(
                "apiVersion: switchyard.dev/v1alpha1\nkind: ClusterNetwork\nmetadata: {{name: {name}}}\nspec: {{podCIDRs: {cidrs}}}"
            ))
        };
        assert_eq!(network("default", "['10.244.0.0/16', 'fd00::/48']"), Ok(()));
        assert_eq!(
            network("other", "[]").unwrap_err(),
            "ClusterNetwork \"other\" is invalid: <nil>: Invalid value: \"object\": the ClusterNetwork is a singleton: its name must be default"
        );
        assert!(
            network("default", "['10.244.0.0/33']")
                .unwrap_err()
                .contains("spec.podCIDRs: Invalid value: \"object\": each must be a valid CIDR")
        );
        let policy = |types: &str| {
            cel::<WasmNetworkPolicy>(&format!(
                "apiVersion: switchyard.dev/v1alpha1\nkind: WasmNetworkPolicy\nmetadata: {{name: w, namespace: x}}\nspec: {{module: m, policyTypes: {types}}}"
            ))
        };
        assert_eq!(policy("[Egress]"), Ok(()));
        assert!(
            policy("[Sideways]")
                .unwrap_err()
                .contains("at most Ingress and Egress")
        );
    }

    /// The example resources in `crds/examples` are what the agent reads
    /// and what the lab admits.
    #[test]
    fn the_examples_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let m = Manifests::load_dir(&dir).unwrap();
        assert!(m.ignored.is_empty(), "{:?}", m.ignored);
        assert_eq!(m.modules.len(), 2);
        for n in &m.modules {
            assert!(n.spec.referenced_only, "{}", n.name);
        }
        assert_eq!(m.wasm_network_policies.len(), 2);
        for w in &m.wasm_network_policies {
            assert!(m.modules.iter().any(|n| n.name == w.spec.module));
        }
    }
}
