//! The lab: a real Kubernetes cluster on one machine whose nodes are network
//! namespaces. A control-plane namespace runs etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler (built from pinned Go
//! modules); every node namespace runs the agent exactly as a cluster runs
//! it (`agent --kube`) and the lab's kubelet, which runs the pods the
//! scheduler binds there through the real CNI plugin; an underlay namespace
//! joins them, with an "external" host namespace as the outside world. The
//! machine reaches the lab only through one veth into the underlay router,
//! which has no default route, so no lab packet can leave through the
//! machine's own interfaces.
//!
//! ```text
//!   machine ── syh-<name> ══ host0 ─ [underlay router: ul0 bridge] ─ eth0 [control: etcd, kube-apiserver, ...]
//!                                                    ├──────────────── eth0 [node-1: agent, kubelet, pods]
//!                                                    ├──────────────── eth0 [node-2: agent, kubelet, pods]
//!                                                    └──────────────── eth0 [external: servers]
//! ```
//!
//! Nothing outside `lab/` imports it: the agent runs the same code in a lab
//! and in a cluster.

pub mod apply;
pub mod behaviour;
pub mod cli;
pub mod cloud;
pub mod controlplane;
pub mod explain;
pub mod kubelet;
pub mod layout;
pub mod pki;
pub mod podserver;
pub mod probe;
pub mod prober;
pub mod topology;

pub use layout::{Lab, LabConfig, LabNode};
