//! Our custom resources (group `switchyard.dev`, version `v1alpha1`), as the
//! agent reads them from manifests or the API server.

use super::{FailurePolicy, Role};
use crate::registry::ModuleSpec;
use crate::registry::source::ModuleSource;
use crate::runtime::Limits;
use k8s_openapi::api::networking::v1::{
    NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GROUP: &str = "switchyard.dev";
pub const API_VERSION: &str = "switchyard.dev/v1alpha1";

/// Where a module's bytes come from: exactly one of `builtin`, `url` or `file`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleSourceSpec {
    /// A module compiled into the agent, by name (`cni-bridge`, `proxy-nftables`).
    pub builtin: Option<String>,
    /// An http(s) URL; `sha256` is required with it.
    pub url: Option<String>,
    /// A file on the node.
    pub file: Option<String>,
    /// The module's sha256 (64 hex digits, optionally `sha256:`-prefixed).
    pub sha256: Option<String>,
}

/// `NetworkModule.spec.limits`: each field set replaces the role's default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsSpec {
    pub deadline_ms: Option<u64>,
    pub memory_bytes: Option<usize>,
    pub fuel: Option<u64>,
    pub max_output_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
    pub max_log_records: Option<usize>,
}

impl LimitsSpec {
    /// These limits over `base` (the role's defaults).
    pub fn over(&self, base: Limits) -> Limits {
        Limits {
            deadline: self
                .deadline_ms
                .map(std::time::Duration::from_millis)
                .unwrap_or(base.deadline),
            memory_bytes: self.memory_bytes.unwrap_or(base.memory_bytes),
            fuel: self.fuel.or(base.fuel),
            max_output_bytes: self.max_output_bytes.unwrap_or(base.max_output_bytes),
            max_log_bytes: self.max_log_bytes.unwrap_or(base.max_log_bytes),
            max_log_records: self.max_log_records.unwrap_or(base.max_log_records),
            max_stdio_bytes: base.max_stdio_bytes,
        }
    }
}

/// `NetworkModule.spec`: one module bound to a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkModuleSpec {
    pub role: Role,
    pub source: ModuleSourceSpec,
    /// The module's config, checked against the schema it describes.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Among modules of one role on a node, the highest priority serves.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
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
    /// The registry's view of this NetworkModule.
    pub fn to_module_spec(&self, name: &str, generation: i64) -> Result<ModuleSpec, String> {
        let s = &self.source;
        let source = match (&s.builtin, &s.url, &s.file) {
            (Some(b), None, None) => ModuleSource::Builtin(b.clone()),
            (None, Some(u), None) => ModuleSource::Url(u.clone()),
            (None, None, Some(f)) => ModuleSource::File(f.into()),
            _ => {
                return Err(format!(
                    "NetworkModule {name:?} is invalid: spec.source: exactly one of builtin, url and file must be set"
                ));
            }
        };
        let mut spec = ModuleSpec::new(name, self.role, source);
        spec.sha256 = s.sha256.clone();
        spec.config = self.config.clone().unwrap_or_else(|| serde_json::json!({}));
        spec.failure_policy = self.failure_policy;
        spec.priority = self.priority;
        spec.generation = generation;
        spec.referenced_only = self.referenced_only;
        if let Some(l) = &self.limits {
            spec.limits = l.over(Limits::for_role(self.role));
        }
        Ok(spec)
    }

    /// Whether the module is meant for a node with these labels.
    pub fn selects(&self, node_labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node_labels.get(k) == Some(v))
    }
}

/// The network model of a cluster (`ClusterNetwork.spec.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VxlanSpec {
    #[serde(default = "default_vni")]
    pub vni: u32,
    #[serde(default = "default_vxlan_port")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySpec {
    /// `nftables`, `ipvs` or `userspace`.
    #[serde(default = "default_proxy_mode")]
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

/// DNS settings handed to pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSpec {
    #[serde(default)]
    pub cluster_domain: Option<String>,
    #[serde(default)]
    pub servers: Vec<String>,
}

/// `ClusterNetwork.spec` (the singleton `default`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkSpec {
    #[serde(default)]
    pub model: NetworkModel,
    /// The cluster's pod CIDRs, at most one per family.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// The cluster's Service CIDRs, at most one per family.
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<String>,
    /// Prefix length of each node's pod CIDR, per family (24 and 64 by default).
    #[serde(default)]
    pub node_mask_v4: Option<u8>,
    #[serde(default)]
    pub node_mask_v6: Option<u8>,
    #[serde(default)]
    pub vxlan: Option<VxlanSpec>,
    /// Masquerade traffic leaving the pod network; by default for the
    /// overlay and island models.
    #[serde(default)]
    pub masquerade: Option<bool>,
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WasmNetworkPolicySpec {
    /// The NetworkModule (role `network-policy`) that renders this policy.
    pub module: String,
    /// The module's config for this policy, checked against the schema the
    /// module describes. The NetworkModule's own config when absent.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The pods of the policy's namespace it applies to (all when empty).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    /// Peers and ports, resolved by the host as a NetworkPolicy's are.
    #[serde(default)]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<NetworkPolicyEgressRule>>,
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

#[cfg(test)]
mod tests {
    use crate::source::local::Manifests;

    /// The example resources in `crds/examples` are what the agent reads
    /// and what the lab admits.
    #[test]
    fn the_examples_parse_and_validate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/examples");
        let m = Manifests::load_dir(&dir).unwrap();
        assert!(m.ignored.is_empty(), "{:?}", m.ignored);
        assert_eq!(m.modules.len(), 2);
        for n in &m.modules {
            let spec = n.spec.to_module_spec(&n.name, n.generation).unwrap();
            assert!(spec.referenced_only, "{}", n.name);
        }
        assert_eq!(m.wasm_network_policies.len(), 2);
        for w in &m.wasm_network_policies {
            crate::lab::validate::wasm_network_policy(&w.metadata, &w.spec).unwrap();
            assert!(m.modules.iter().any(|n| n.name == w.spec.module));
        }
    }
}
