//! Probe results from the node's kubelet. Pod status says only whether a
//! pod is ready; a kubelet that serves its probes' results (the lab's does,
//! on its read-only port: `GET /probes` and `GET /pods`) also gives each
//! endpoint port's latency and counts, which scheduler modules read through
//! the `probes` host interface, and each pod's probes for the admin API.
//!
//! The agent polls it (`--kubelet-url`) and keeps the per-port entries of
//! the [`ProbeTable`] equal to what the kubelet last said. When the kubelet
//! does not answer, its entries stay as they were for [`STALE_AFTER`], then
//! go: readiness from Pod status (port 0 entries) remains.

use crate::datapath::probes::{EndpointHealth, ProbeResult, ProbeTable};
use crate::probe::ProbeStatus;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the kubelet is asked.
pub const POLL: Duration = Duration::from_millis(500);
/// How long entries outlive a kubelet that stopped answering.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    address: IpAddr,
    port: u16,
    ready: bool,
    last_result: ProbeResult,
    last_latency_us: Option<u64>,
    consecutive_failures: u32,
    consecutive_successes: u32,
}

#[derive(Debug, Deserialize)]
struct Probes {
    endpoints: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct PodEntry {
    namespace: String,
    name: String,
    #[serde(default)]
    probes: Vec<ProbeStatus>,
}

#[derive(Debug, Deserialize)]
struct Pods {
    pods: Vec<PodEntry>,
}

/// The probes of the pods the kubelet runs, by (namespace, name).
pub type PodProbes = Arc<Mutex<BTreeMap<(String, String), Vec<ProbeStatus>>>>;

fn get<T: serde::de::DeserializeOwned>(agent: &ureq::Agent, url: &str) -> Result<T, String> {
    let mut r = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let text = r
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))
}

/// Poll the kubelet at `base` until the process ends, on a thread of its own.
pub fn spawn(base: String, table: Arc<ProbeTable>) -> PodProbes {
    let pods: PodProbes = Arc::default();
    let out = pods.clone();
    std::thread::Builder::new()
        .name("kubelet-probes".into())
        .spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            let mut written: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
            let mut last_ok = Instant::now();
            let mut warned = false;
            loop {
                match get::<Probes>(&agent, &format!("{base}/probes")) {
                    Ok(p) => {
                        last_ok = Instant::now();
                        warned = false;
                        let mut now = BTreeSet::new();
                        for e in p.endpoints.into_iter().filter(|e| e.port != 0) {
                            table.set(
                                e.address,
                                e.port,
                                EndpointHealth {
                                    ready: e.ready,
                                    last_result: e.last_result,
                                    last_latency: e.last_latency_us.map(Duration::from_micros),
                                    consecutive_failures: e.consecutive_failures,
                                    consecutive_successes: e.consecutive_successes,
                                },
                            );
                            now.insert((e.address, e.port));
                        }
                        for (a, port) in written.difference(&now) {
                            table.remove(*a, *port);
                        }
                        written = now;
                    }
                    Err(e) => {
                        if !warned {
                            tracing::warn!(error = %e, "the kubelet's probe results");
                            warned = true;
                        }
                        if last_ok.elapsed() > STALE_AFTER {
                            for (a, port) in std::mem::take(&mut written) {
                                table.remove(a, port);
                            }
                        }
                    }
                }
                if let Ok(p) = get::<Pods>(&agent, &format!("{base}/pods")) {
                    *pods.lock() = p
                        .pods
                        .into_iter()
                        .map(|p| ((p.namespace, p.name), p.probes))
                        .collect();
                }
                std::thread::sleep(POLL);
            }
        })
        .expect("spawning a thread");
    out
}
