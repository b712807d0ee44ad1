//! The lab: a cluster on one machine. Every node is a network namespace
//! running its own agent; an underlay namespace joins the nodes and an
//! "external" host namespace (the outside world of the lab); the machine
//! reaches the lab only through one veth into the underlay router, which has
//! no default route, so no lab packet can leave through the machine's own
//! interfaces.
//!
//! ```text
//!   machine ── syh-<name> ══ host0 ─ [underlay router: ul0 bridge] ─ eth0 [node-1: agent, pods]
//!                                                    ├──────────────── eth0 [node-2: agent, pods]
//!                                                    └──────────────── eth0 [external: servers]
//! ```
//!
//! Cluster state lives in a directory shared by the agents (see
//! `source::cluster_dir`): `lab apply` writes objects, each node's agent runs
//! the pods bound to it (through the real CNI plugin) and writes their status.

pub mod agent;
pub mod apply;
pub mod behaviour;
pub mod cli;
pub mod endpoints;
pub mod explain;
pub mod grpc_health;
pub mod kubelet;
pub mod layout;
pub mod podserver;
pub mod probe;
pub mod prober;
pub mod topology;
pub mod validate;
pub mod view;

pub use layout::{Lab, LabConfig, LabNode};
