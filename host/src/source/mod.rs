//! Sources feed the model. The local source reads manifests from a directory
//! (an agent without Kubernetes) or a cluster directory shared by the lab's
//! agents; the kube source (reflectors) comes with the Kubernetes issue.
//! Nothing past the source can tell which one fed it.

pub mod cluster_dir;
pub mod local;
