//! Sources feed the model. The local source reads manifests from a directory
//! (an agent without Kubernetes); the kube source watches the API server
//! with reflectors. Both give [`crate::model::snapshot::Manifests`]: nothing past the source
//! can tell which one fed it. The kubelet source adds what Pod status does
//! not say: the node's probes' latencies.

pub mod kube;
pub mod kubelet;
pub mod local;
