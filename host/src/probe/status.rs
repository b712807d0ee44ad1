//! Readiness read from Pod status. In a cluster the kubelet probes, and the
//! agent only reads its verdict: each Pod's `Ready` condition goes into the
//! same [`ProbeTable`] the lab's prober fills, so modules cannot tell the
//! two apart. The lab uses it too, for pods its own node does not probe.
//!
//! Pod status says whether a pod is ready, not how its probes went: the
//! entries carry no latency and no counts, and they are keyed by address
//! alone (port 0), which [`ProbeTable`] falls back to for every port.

use crate::datapath::probes::{EndpointHealth, ProbeResult, ProbeTable};
use k8s_openapi::api::core::v1::PodStatus;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// What a Pod's status says of its endpoints: its addresses and its
/// health. `None` for a pod without an address (not yet networked, or
/// finished).
pub fn health_from_status(status: &PodStatus) -> Option<(Vec<IpAddr>, EndpointHealth)> {
    let addresses: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .chain(status.pod_ip.iter().filter_map(|ip| ip.parse().ok()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if addresses.is_empty() || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .map(|c| c.status.as_str())
    };
    let last_result = match condition("Ready") {
        Some("True") => ProbeResult::Success,
        Some("False") => ProbeResult::Failure,
        _ => ProbeResult::Unknown,
    };
    Some((
        addresses,
        EndpointHealth {
            ready: last_result == ProbeResult::Success,
            last_result,
            last_latency: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
        },
    ))
}

/// Keeps the table's status-derived entries equal to a set of pod statuses.
#[derive(Debug, Default)]
pub struct StatusReader {
    /// The addresses this reader wrote, to take back those gone.
    written: BTreeSet<IpAddr>,
}

impl StatusReader {
    /// Make the table's address-level entries what `statuses` say; entries
    /// of addresses no longer listed are removed. Returns how many entries
    /// were written or removed.
    pub fn sync<'a>(
        &mut self,
        table: &ProbeTable,
        statuses: impl IntoIterator<Item = &'a PodStatus>,
    ) -> usize {
        let mut now = BTreeSet::new();
        let mut changes = 0;
        for (addresses, health) in statuses.into_iter().filter_map(health_from_status) {
            for a in addresses {
                if table.get_exact(a, 0).as_ref() != Some(&health) {
                    table.set(a, 0, health.clone());
                    changes += 1;
                }
                now.insert(a);
            }
        }
        for gone in self.written.difference(&now) {
            table.remove(*gone, 0);
            changes += 1;
        }
        self.written = now;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::probes::ProbeView;
    use k8s_openapi::api::core::v1::Pod;

    /// A Pod as the API server returns it (recorded shape, trimmed).
    fn pod(json: &str) -> PodStatus {
        serde_json::from_str::<Pod>(json).unwrap().status.unwrap()
    }

    const READY: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "web-1", "namespace": "default"},
      "status": {
        "phase": "Running",
        "conditions": [
          {"type": "PodReadyToStartContainers", "status": "True"},
          {"type": "Initialized", "status": "True"},
          {"type": "Ready", "status": "True"},
          {"type": "ContainersReady", "status": "True"},
          {"type": "PodScheduled", "status": "True"}
        ],
        "podIP": "10.244.1.7",
        "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00:10:244:1::7"}]
      }
    }"#;

    const UNREADY: &str = r#"{
      "apiVersion": "v1", "kind": "Pod",
      "metadata": {"name": "web-2", "namespace": "default"},
      "status": {
        "phase": "Running",
        "conditions": [
          {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
           "message": "containers with unready status: [web]"}
        ],
        "podIP": "10.244.1.8", "podIPs": [{"ip": "10.244.1.8"}]
      }
    }"#;

    #[test]
    fn ready_condition_becomes_health_for_every_address_and_port() {
        let table = ProbeTable::default();
        let mut r = StatusReader::default();
        let (a, b) = (pod(READY), pod(UNREADY));
        assert_eq!(r.sync(&table, [&a, &b]), 3);
        for ip in ["10.244.1.7", "fd00:10:244:1::7"] {
            let h = table.health(ip.parse().unwrap(), 8080).unwrap();
            assert!(h.ready);
            assert_eq!(h.last_result, ProbeResult::Success);
        }
        let h = table.health("10.244.1.8".parse().unwrap(), 80).unwrap();
        assert!(!h.ready);
        assert_eq!(h.last_result, ProbeResult::Failure);
        // Nothing changed: nothing written.
        assert_eq!(r.sync(&table, [&a, &b]), 0);
        // web-2 goes: its entry goes; web-1 stays.
        assert_eq!(r.sync(&table, [&a]), 1);
        assert!(table.health("10.244.1.8".parse().unwrap(), 80).is_none());
        assert!(table.health("10.244.1.7".parse().unwrap(), 80).is_some());
    }

    #[test]
    fn a_probed_port_wins_over_the_status_entry() {
        let table = ProbeTable::default();
        let mut r = StatusReader::default();
        r.sync(&table, [&pod(UNREADY)]);
        let ip: IpAddr = "10.244.1.8".parse().unwrap();
        let probed = EndpointHealth {
            ready: true,
            last_result: ProbeResult::Success,
            last_latency: Some(std::time::Duration::from_micros(300)),
            consecutive_failures: 0,
            consecutive_successes: 4,
        };
        table.set(ip, 80, probed.clone());
        assert_eq!(table.health(ip, 80), Some(probed));
        assert!(!table.health(ip, 81).unwrap().ready);
    }

    #[test]
    fn finished_and_unaddressed_pods_have_no_entry() {
        let mut done = pod(READY);
        done.phase = Some("Succeeded".into());
        assert!(health_from_status(&done).is_none());
        let mut pending = pod(READY);
        pending.pod_ip = None;
        pending.pod_ips = None;
        assert!(health_from_status(&pending).is_none());
        let mut unknown = pod(UNREADY);
        unknown.conditions = None;
        let (_, h) = health_from_status(&unknown).unwrap();
        assert_eq!(h.last_result, ProbeResult::Unknown);
        assert!(!h.ready);
    }
}
