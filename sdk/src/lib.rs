//! # switchyard-sdk
//!
//! Write Switchyard network modules in Rust. A module is a WebAssembly
//! component (`wasm32-wasip2`) that makes networking *decisions*: it renders a
//! Service into nftables objects, chooses a backend for a connection, renders
//! a network policy, or sets up a pod's interface through the host. The
//! Switchyard agent loads it, sandboxes it (deadline, memory cap, no files, no
//! sockets), checks what it returns, and applies it to the kernel.
//!
//! The contract is the WIT package `switchyard:plugin@0.1.0` in `sdk/wit`;
//! the types in [`types`] and [`cni_types`] are generated from it, as are the
//! host's. One world per role, each behind a cargo feature:
//!
//! | feature | world | a module exports |
//! |---|---|---|
//! | `service-proxy` | [`service_proxy`] | `describe`, `render-service` |
//! | `scheduler` | [`scheduler`] | `describe`, `pick` |
//! | `network-policy` | [`network_policy`] | `describe`, `render-policy` |
//! | `cni` | [`cni`] | `describe`, `add`, `del`, `check`, `gc`, `status` |
//!
//! Enable exactly one: a component must export every function of the worlds
//! linked into it.
//!
//! ## From `cargo new` to a loaded module
//!
//! ```text
//! cargo new --lib least-latency && cd least-latency
//! # Cargo.toml:
//! #   [lib] crate-type = ["cdylib", "rlib"]
//! #   [dependencies] switchyard-sdk = { path = "../switchyard/sdk", features = ["scheduler"] }
//! cargo test                                   # native unit tests with testing::Harness
//! cargo build --target wasm32-wasip2 --release
//! switchyard module inspect target/wasm32-wasip2/release/least_latency.wasm
//! switchyard module validate target/wasm32-wasip2/release/least_latency.wasm \
//!     --role scheduler --config '{"maxLatencyMs": 50}'
//! ```
//!
//! A complete module with tests is `plugins-wasm/example-scheduler`; its
//! README walks through the steps above and binding the module with a
//! `NetworkModule`.
//!
//! ```ignore
//! use switchyard_sdk::scheduler::{Backend, Connection, Guest};
//! use switchyard_sdk::types::{ModuleError, ModuleInfo, Role};
//!
//! struct FirstReady;
//!
//! impl Guest for FirstReady {
//!     fn describe() -> ModuleInfo {
//!         ModuleInfo {
//!             name: "first-ready".into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             role: Role::Scheduler,
//!             description: "Picks the first ready backend.".into(),
//!             config_schema: switchyard_sdk::config::NO_CONFIG_SCHEMA.into(),
//!         }
//!     }
//!     fn pick(_c: Connection, backends: Vec<Backend>, _config: String) -> Result<u32, ModuleError> {
//!         backends.iter().position(|b| b.ready).map(|i| i as u32)
//!             .ok_or_else(|| ModuleError::InvalidInput("no ready backend".into()))
//!     }
//! }
//!
//! switchyard_sdk::export_scheduler!(FirstReady);
//! ```
//!
//! ## What a module may do
//!
//! Modules see only the WIT: no files, no sockets, no environment, no clock
//! beyond WASI's. Each call runs under a deadline (100 ms by default), a
//! memory cap (64 MiB), optional fuel, and bounded log and output sizes. A
//! call that breaks a limit fails; the host keeps the last good plan (or fails
//! open or closed, as the operator chose) and reports the cause.
//!
//! Everything a module returns is checked: addresses and prefixes, names, and
//! the module's *grants* (a service proxy may write its own nftables table and
//! IPVS services, not routes; a CNI module may touch only the pod it serves).

#![warn(missing_docs)]

mod bindings;
pub mod config;
pub mod endpoints;
pub mod host;
pub mod labels;
pub mod net;
pub mod plan;
pub mod policy;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

/// The contract's shared types: addresses, objects, plans, module identity.
pub mod types {
    pub use crate::bindings::switchyard::plugin::types::*;
}

/// Types of the CNI role (requests, results and errors of the CNI spec).
pub mod cni_types {
    pub use crate::bindings::switchyard::plugin::cni_types::*;
}

#[cfg(feature = "service-proxy")]
pub use bindings::service_proxy;
#[cfg(feature = "service-proxy")]
pub use bindings::service_proxy::export_service_proxy;

#[cfg(feature = "scheduler")]
pub use bindings::scheduler;
#[cfg(feature = "scheduler")]
pub use bindings::scheduler::export_scheduler;

#[cfg(feature = "network-policy")]
pub use bindings::network_policy;
#[cfg(feature = "network-policy")]
pub use bindings::network_policy::export_network_policy;

#[cfg(feature = "cni")]
pub use bindings::cni;
#[cfg(feature = "cni")]
pub use bindings::cni::export_cni;

/// Helpers for the `describe()` every module exports.
impl types::ModuleInfo {
    /// Module info with the crate's name and version, for `describe()`.
    pub fn new(
        name: &str,
        version: &str,
        role: types::Role,
        description: &str,
        config_schema: &str,
    ) -> Self {
        types::ModuleInfo {
            name: name.to_string(),
            version: version.to_string(),
            role,
            description: description.to_string(),
            config_schema: config_schema.to_string(),
        }
    }
}
