//! Probe results as a read-only host primitive for modules.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Result of one probe, as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProbeResult {
    Success,
    Failure,
    Unknown,
}

/// What modules may read about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointHealth {
    pub ready: bool,
    pub last_result: ProbeResult,
    pub last_latency: Option<Duration>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
}

/// Read access to probe results, keyed by endpoint address and port.
pub trait ProbeView: Send + Sync {
    fn health(&self, address: IpAddr, port: u16) -> Option<EndpointHealth>;
}

/// The table the prober (or the Pod status reader) writes and modules read.
#[derive(Debug, Default)]
pub struct ProbeTable {
    entries: RwLock<HashMap<(IpAddr, u16), EndpointHealth>>,
}

impl ProbeTable {
    pub fn set(&self, address: IpAddr, port: u16, health: EndpointHealth) {
        self.entries.write().insert((address, port), health);
    }

    pub fn remove(&self, address: IpAddr, port: u16) {
        self.entries.write().remove(&(address, port));
    }
}

impl ProbeView for ProbeTable {
    fn health(&self, address: IpAddr, port: u16) -> Option<EndpointHealth> {
        self.entries.read().get(&(address, port)).cloned()
    }
}
