//! Switchyard: a Kubernetes network controller whose networking decisions are
//! made by sandboxed WebAssembly modules and whose side effects are made only
//! by this host.
//!
//! One way through: Source -> Model -> Module -> Plan -> Apply -> Report.
//! - [`model`]: projections of Kubernetes objects and our CRDs;
//! - [`runtime`]: the wasmtime engine, module sessions, sandbox limits and the
//!   host functions modules import;
//! - [`registry`]: modules by name, loaded from files or URLs, hot-swapped,
//!   with failure policies and per-module status;
//! - [`plan`]: what modules return, validated against grants, kept per object;
//! - [`datapath`]: the kernel side (IPAM ledger, links, node networking,
//!   probes, ...);
//! - [`source`]: where the model comes from (manifest directories, the
//!   Kubernetes API server);
//! - [`agent`]: the node agent's composition: its CNI server and modules,
//!   the node's datapath fed from any source (node networking, the Service
//!   proxies, the policy table), following the API server in a cluster, and
//!   what it writes back (status, Events, the leader Lease);
//! - [`policy`]: NetworkPolicy resolved to pods and addresses, and the
//!   policy table;
//! - [`probe`]: liveness, readiness and startup probes, run as the kubelet
//!   runs them;
//! - [`cni`]: the agent's CNI server; [`api`]: the admin API and console;
//! - [`lab`]: a real Kubernetes cluster on one machine whose nodes are
//!   network namespaces.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cni;
pub mod contract;
pub mod datapath;
pub mod dns;
pub mod k8s;
pub mod lab;
pub mod model;
pub mod plan;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod source;
pub mod util;

/// Paths of the modules built from `plugins-wasm/` by this crate's build script.
pub mod modules {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}
