//! Drop logs: every packet a policy drops (or, in monitor mode, would
//! drop) is logged by its drop chain to NFLOG; the agent reads it, names
//! the policies isolating the pod from the chain, writes a log line and
//! keeps the latest drops for `/api/v1/drops`. This answers "which policy
//! dropped my packet?" for a packet, where `explain` answers it for a
//! connection one asks about.

use super::engine::SharedSnapshot;
use crate::datapath::nflog::{Logged, Nflog, POLICY_DROP_GROUP};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Arc;

/// How many drops are kept.
const KEEP: usize = 256;

/// One logged drop, attributed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drop {
    /// Milliseconds since the Unix epoch, when the agent read it.
    pub at_ms: u64,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `enforce` (dropped) or `monitor` (would have been dropped).
    pub mode: String,
    /// `namespace/name` of the policies isolating the pod.
    pub policies: Vec<String>,
    #[serde(flatten)]
    pub packet: Logged,
}

/// The latest drops of this node.
#[derive(Debug, Default)]
pub struct DropLog {
    recent: Mutex<VecDeque<Drop>>,
}

impl DropLog {
    /// The kept drops, oldest first.
    pub fn recent(&self) -> Vec<Drop> {
        self.recent.lock().iter().cloned().collect()
    }

    fn record(&self, snapshot: &SharedSnapshot, packet: Logged) {
        let chain = packet.prefix.trim().to_string();
        let direction = chain.split('-').next().unwrap_or_default().to_string();
        let mode = if chain.contains("-would-drop-") {
            "monitor"
        } else {
            "enforce"
        };
        let policies: Vec<String> = snapshot
            .read()
            .chains
            .get(&chain)
            .into_iter()
            .flatten()
            .map(super::display_name)
            .collect();
        tracing::info!(
            target: "switchyard::policy::drop",
            direction = %direction,
            mode,
            policies = %policies.join(","),
            protocol = packet.protocol,
            "{} {}:{} -> {}:{}",
            if mode == "monitor" { "would drop" } else { "dropped" },
            packet.source,
            packet.source_port,
            packet.destination,
            packet.destination_port
        );
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut r = self.recent.lock();
        if r.len() == KEEP {
            r.pop_front();
        }
        r.push_back(Drop {
            at_ms,
            direction,
            mode: mode.into(),
            policies,
            packet,
        });
    }
}

/// Bind the policy drop group in this network namespace and read it on a
/// thread of its own for the life of the process.
pub fn spawn(snapshot: SharedSnapshot) -> std::io::Result<Arc<DropLog>> {
    let mut nflog = Nflog::bind(POLICY_DROP_GROUP)?;
    let log = Arc::new(DropLog::default());
    let l = log.clone();
    std::thread::Builder::new()
        .name("policy-drops".into())
        .spawn(move || {
            loop {
                match nflog.recv() {
                    Ok(packets) => {
                        for p in packets {
                            l.record(&snapshot, p);
                        }
                    }
                    Err(e) => {
                        // ENOBUFS: the kernel dropped log messages because
                        // we were slow; nothing to do but read on.
                        if e.raw_os_error() != Some(105) {
                            tracing::warn!("reading policy drop logs: {e}");
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                }
            }
        })?;
    Ok(log)
}
