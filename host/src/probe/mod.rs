//! Probes, as the kubelet runs them: the spec of a container's probe with
//! Kubernetes' defaults and validation ([`spec`]), one attempt ([`check`]),
//! and the state that turns attempts into a result ([`worker`]). The lab's
//! kubelet (`lab::kubelet`) runs them for its pods; results reach pod
//! status (and so EndpointSlices) and modules (`datapath::probes`). In a
//! cluster, [`status`] reads the kubelet's verdict from Pod status instead.

pub mod check;
pub mod spec;
pub mod status;
pub mod worker;

pub use spec::{Handler, ProbeKind, ProbeSpec};
pub use worker::{Attempt, ProbeResult, Worker};
