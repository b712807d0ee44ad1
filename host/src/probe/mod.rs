//! Probes, as the kubelet runs them: the spec of a container's probe with
//! Kubernetes' defaults and validation ([`spec`]), one attempt ([`check`]),
//! and the state that turns attempts into a result ([`worker`]). The lab's
//! kubelet runs them for its pods; results reach pod
//! status (and so EndpointSlices) and modules (`datapath::probes`). In a
//! cluster, [`status`] reads the kubelet's verdict from Pod status instead.

pub mod check;
pub mod grpc_health;
pub mod spec;
pub mod status;
pub mod worker;

pub use spec::{Handler, ProbeKind, ProbeSpec};
pub use worker::{Attempt, ProbeResult, Worker};

/// One probe of a pod as its prober last saw it (the lab kubelet serves
/// these; the admin API and the console show them).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatus {
    pub container: String,
    pub kind: ProbeKind,
    pub handler: String,
    pub result: ProbeResult,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    pub last_latency_ms: Option<f64>,
    pub last_message: Option<String>,
    pub attempts: u64,
    pub period_seconds: u64,
    pub failure_threshold: u32,
    pub success_threshold: u32,
}
