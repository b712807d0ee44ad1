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

/// One entry of the table as the admin API and the lab kubelet serve it.
pub fn entry_json(address: IpAddr, port: u16, h: &EndpointHealth) -> serde_json::Value {
    serde_json::json!({
        "address": address,
        "port": port,
        "ready": h.ready,
        "lastResult": h.last_result,
        "lastLatencyUs": h.last_latency.map(|d| d.as_micros() as u64),
        "consecutiveFailures": h.consecutive_failures,
        "consecutiveSuccesses": h.consecutive_successes,
    })
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
/// Entries are per address and port (a probe's result for the pod's ports),
/// or per address with port 0 (Pod status, which has no ports).
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

    /// The entry at exactly this address and port (port 0: the
    /// address-level entry), without the fallback `health` does.
    pub fn get_exact(&self, address: IpAddr, port: u16) -> Option<EndpointHealth> {
        self.entries.read().get(&(address, port)).cloned()
    }

    /// Every entry, by address and port, sorted (for the admin API).
    pub fn entries(&self) -> Vec<((IpAddr, u16), EndpointHealth)> {
        let mut v: Vec<_> = self
            .entries
            .read()
            .iter()
            .map(|(k, h)| (*k, h.clone()))
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }
}

impl ProbeView for ProbeTable {
    /// The entry for the port if a probe wrote one, else the address-level
    /// entry (port 0) that Pod status gives.
    fn health(&self, address: IpAddr, port: u16) -> Option<EndpointHealth> {
        let e = self.entries.read();
        e.get(&(address, port))
            .or_else(|| e.get(&(address, 0)))
            .cloned()
    }
}
