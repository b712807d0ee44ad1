//! `explain`: which policies decide a connection on this node, and why.
//!
//! Read from the installed plan's provenance: the boxes each policy's
//! module rendered (with their rule ids and comments) and the isolation
//! elements of the installed fragments, as the engine last synced them. A
//! connection is judged twice: for egress where it leaves its pod, for
//! ingress where it reaches its pod; each node answers for its own pods,
//! and the lab's `explain` asks both nodes.

use super::engine::Provenance;
use super::merge;
use crate::contract::bindings::imports::switchyard::plugin::types::Protocol;
use crate::model::ObjectRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What the engine installed, as `explain` reads it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub node: String,
    /// Each policy's boxes.
    pub boxes: imbl::OrdMap<ObjectRef, Arc<Vec<Provenance>>>,
    /// Which policies isolate a pod address: (direction, monitor, address).
    pub isolating: Arc<BTreeMap<(String, bool, IpAddr), Vec<ObjectRef>>>,
    /// The policies of each drop chain, by the chain's name (the prefix
    /// of its logged drops).
    pub chains: Arc<BTreeMap<String, Vec<ObjectRef>>>,
}

/// A rule that allows the connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// `namespace/name` of the policy.
    pub policy: String,
    pub rule_id: String,
    pub comment: Option<String>,
    /// Whether the policy is in monitor mode.
    pub monitor: bool,
}

/// One direction's verdict on this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Judgement {
    /// `ingress` or `egress`.
    pub direction: String,
    /// The pod address the direction is judged for.
    pub pod: IpAddr,
    /// `allowed`, `denied`, or `not-isolated` (no policy selects the pod
    /// for this direction here: Kubernetes allows).
    pub verdict: String,
    /// Enforcing policies that select the pod for this direction.
    pub isolated_by: Vec<String>,
    /// Rules of those policies that allow the connection.
    pub allowed_by: Vec<Match>,
    /// Monitor-mode policies selecting the pod, and whether they would drop.
    pub monitored_by: Vec<String>,
    pub would_drop: bool,
}

/// The connection and both directions' verdicts on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub node: String,
    pub from: IpAddr,
    pub to: IpAddr,
    pub protocol: String,
    pub port: u16,
    pub egress: Judgement,
    pub ingress: Judgement,
}

fn name(o: &ObjectRef) -> String {
    super::display_name(o)
}

impl Snapshot {
    fn judge(
        &self,
        direction: &str,
        pod: IpAddr,
        peer: IpAddr,
        packet: Option<(Protocol, u16)>,
    ) -> Judgement {
        let fam = if pod.is_ipv4() { "4" } else { "6" };
        let peer_bits = merge::ip_bits(peer);
        let isolated = self
            .isolating
            .get(&(direction.to_string(), false, pod))
            .cloned()
            .unwrap_or_default();
        let monitored = self
            .isolating
            .get(&(direction.to_string(), true, pod))
            .cloned()
            .unwrap_or_default();
        let mut allowed_by = vec![];
        for (o, boxes) in &self.boxes {
            for b in boxes.iter() {
                let Some(rest) = b.set.strip_prefix(direction) else {
                    continue;
                };
                if b.pod != pod
                    || !rest.ends_with(fam)
                    || !merge::matches(&b.allow, peer_bits, packet)
                {
                    continue;
                }
                allowed_by.push(Match {
                    policy: name(o),
                    rule_id: b.rule_id.clone(),
                    comment: b.comment.clone(),
                    monitor: rest.starts_with("-monitor"),
                });
            }
        }
        let enforced = allowed_by.iter().any(|m| !m.monitor);
        let verdict = if isolated.is_empty() {
            "not-isolated"
        } else if enforced {
            "allowed"
        } else {
            "denied"
        };
        Judgement {
            direction: direction.to_string(),
            pod,
            verdict: verdict.into(),
            isolated_by: isolated.iter().map(name).collect(),
            // A monitored pod's packet that no rule, enforcing or monitored,
            // allows is what the monitor chain counts (unless it was dropped).
            would_drop: !monitored.is_empty() && verdict != "denied" && allowed_by.is_empty(),
            allowed_by,
            monitored_by: monitored.iter().map(name).collect(),
        }
    }

    /// Explain a connection from `from` to `to` (`protocol` and `port`, or
    /// `None` for a packet without ports, such as ICMP).
    pub fn explain(
        &self,
        from: IpAddr,
        to: IpAddr,
        packet: Option<(Protocol, u16)>,
    ) -> Explanation {
        Explanation {
            node: self.node.clone(),
            from,
            to,
            protocol: match packet {
                Some((Protocol::Tcp, _)) => "TCP",
                Some((Protocol::Udp, _)) => "UDP",
                Some((Protocol::Sctp, _)) => "SCTP",
                None => "other",
            }
            .into(),
            port: packet.map(|p| p.1).unwrap_or(0),
            egress: self.judge("egress", from, to, packet),
            ingress: self.judge("ingress", to, from, packet),
        }
    }
}
