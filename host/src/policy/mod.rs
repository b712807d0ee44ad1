//! NetworkPolicy: policies and pods in, the policy table out.
//!
//! - [`selector`]: label selectors, as the API server evaluates them;
//! - [`resolve`]: a NetworkPolicy with its selectors resolved to pods and
//!   addresses, named ports resolved on the destination pods: what the
//!   policy module renders;
//! - [`engine`]: per node, policies rendered by the policy module into the
//!   policy table, incrementally;
//! - [`droplog`]: every drop logged with the policies that made it;
//! - [`explain`]: which policies and rules decide a connection, from the
//!   installed plan's provenance;
//! - [`merge`]: every policy's allow boxes of a pod, merged into the
//!   disjoint elements an interval set can hold.

pub mod droplog;
pub mod engine;
pub mod explain;
pub mod inputs;
pub mod merge;
pub mod resolve;

pub use inputs::{PolicyInput, WasmModule, inputs};

use crate::model::{ObjectKind, ObjectRef};

/// How explain, the drop log and the API name a policy: `ns/name` for a
/// NetworkPolicy, `WasmNetworkPolicy ns/name` for the other kind.
pub fn display_name(o: &ObjectRef) -> String {
    match o.kind {
        ObjectKind::NetworkPolicy => format!("{}/{}", o.namespace, o.name),
        _ => o.to_string(),
    }
}
