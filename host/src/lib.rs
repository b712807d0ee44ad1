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
//! - [`datapath`]: the kernel side (IPAM ledger, links, probes, ...).

pub mod agent;
pub mod cli;
pub mod cni;
pub mod datapath;
pub mod model;
pub mod plan;
pub mod registry;
pub mod runtime;

/// Paths of the modules built from `plugins-wasm/` by this crate's build script.
pub mod modules {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}
