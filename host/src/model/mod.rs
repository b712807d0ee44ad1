//! The network model: host-side projections of Kubernetes objects and of our
//! CRDs. It knows no kernel and no wasm; sources fill it, modules render it.

pub mod crd;
pub mod node;
pub mod pod;
pub mod service;
pub mod snapshot;

pub use snapshot::Manifests;

/// The well-known label of a Node's (and an endpoint's) zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

use serde::{Deserialize, Serialize};
use std::fmt;

/// The job a module does; each has its own world in `sdk/wit/worlds.wit`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Cni,
    ServiceProxy,
    Scheduler,
    NetworkPolicy,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 4] = [
        Role::Cni,
        Role::ServiceProxy,
        Role::Scheduler,
        Role::NetworkPolicy,
    ];

    /// The name used in CRDs, the CLI and the WIT world.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cni => "cni",
            Role::ServiceProxy => "service-proxy",
            Role::Scheduler => "scheduler",
            Role::NetworkPolicy => "network-policy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: expected one of cni, service-proxy, scheduler, network-policy"))
    }
}

/// What the host installs for an object when its module fails to render it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum FailurePolicy {
    /// Install the role's closed fragment: a Service rejects connections, a
    /// policy's pods are isolated.
    FailClosed,
    /// Withdraw the object's fragment.
    FailOpen,
    /// Keep the object's last good fragment (closed if there never was one).
    #[default]
    KeepLastGood,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::FailClosed => "FailClosed",
            FailurePolicy::FailOpen => "FailOpen",
            FailurePolicy::KeepLastGood => "KeepLastGood",
        })
    }
}

/// The kind of an object a plan fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    WasmNetworkPolicy,
    Namespace,
    Node,
    ClusterNetwork,
}

/// Which object a fragment, an error or an explanation is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: ObjectKind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
