//! Pod networking: the agent side of CNI. The `switchyard-cni` plugin
//! (host/cni-shim) forwards each verb over a unix socket to [`server`], and
//! [`service::CniService`] serves it with the `cni` module, the IPAM ledger
//! and the links datapath, owning and journaling every effect.

pub mod journal;
pub mod result;
pub mod server;
pub mod service;
pub mod store;

pub use service::{CniService, PodDirectory, Reconciled, StickyPods};
