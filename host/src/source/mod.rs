//! Sources feed the model. The local source reads manifests from a directory
//! (an agent without Kubernetes) or a cluster directory shared by the lab's
//! agents; the kube source watches the API server with reflectors. Both
//! give [`local::Manifests`]: nothing past the source can tell which one
//! fed it.

pub mod cluster_dir;
pub mod kube;
pub mod local;
