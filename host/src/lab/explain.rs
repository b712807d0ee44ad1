//! `switchyard lab explain`: which NetworkPolicies and rules decide a
//! connection. The source pod's node judges its egress and the destination
//! pod's node its ingress; each answers from its admin API
//! (`/api/v1/explain`), which reads the installed plan's provenance, and
//! the connection is allowed when both are.

use super::layout::{ADMIN_PORT, Lab};
use crate::policy::explain::{Explanation, Judgement};
use anyhow::{Context, bail};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// A GET against a node's admin API; the body, or the API's error.
fn get(lab: &Lab, node: &str, path: &str) -> anyhow::Result<String> {
    let n = lab
        .config
        .node(node)
        .with_context(|| format!("the lab has no node {node:?}"))?;
    let addr = n
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(n.addresses.first())
        .with_context(|| format!("node {node} has no address"))?;
    let url = format!("http://{}{path}", SocketAddr::new(*addr, ADMIN_PORT));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .call()
        .with_context(|| format!("asking node {node}'s admin API ({url})"))?;
    let ok = resp.status() == 200;
    let body = resp.body_mut().read_to_string()?;
    if !ok {
        bail!("node {node}: {}", body.trim());
    }
    Ok(body)
}

fn judgement_text(j: &Judgement, node: &str) -> String {
    let mut s = format!("  {} of {} on {node}: {}", j.direction, j.pod, j.verdict);
    match j.verdict.as_str() {
        "not-isolated" => s.push_str(" (no policy selects the pod for this direction: allowed)"),
        "denied" => s.push_str(&format!(
            " (isolated by {}; no rule allows it)",
            j.isolated_by.join(", ")
        )),
        _ => s.push_str(&format!(" (isolated by {})", j.isolated_by.join(", "))),
    }
    for m in j.allowed_by.iter().filter(|m| !m.monitor) {
        s.push_str(&format!(
            "\n    allowed by {} {}{}",
            m.policy,
            m.rule_id,
            m.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ));
    }
    if !j.monitored_by.is_empty() {
        s.push_str(&format!(
            "\n    monitored by {}: {}",
            j.monitored_by.join(", "),
            if j.would_drop {
                "would drop"
            } else {
                "would allow"
            }
        ));
    }
    s
}

/// A pod's node and addresses, by `NS/POD`.
pub type PodLookup<'a> = &'a dyn Fn(&str) -> anyhow::Result<(String, Vec<IpAddr>)>;

/// What to explain: `from` (NS/POD) to `to` (NS/POD or an IP) on
/// `port`/`protocol`, in the family `v4` says (unless `to` is an address).
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub v4: bool,
    /// Print JSON instead of text.
    pub json: bool,
}

/// Explain a connection. Prints the verdict; returns whether it is allowed.
pub fn run(lab: &Lab, pod: PodLookup<'_>, q: Query<'_>) -> anyhow::Result<bool> {
    let Query {
        from,
        to,
        port,
        protocol,
        v4,
        json,
    } = q;
    let (from_node, from_ips) = pod(from)?;
    let (to_node, to_ips) = match to.parse::<IpAddr>() {
        Ok(ip) => (None, vec![ip]),
        Err(_) => {
            let (n, ips) = pod(to)?;
            (Some(n), ips)
        }
    };
    let v4 = if to.parse::<IpAddr>().is_ok() {
        to_ips[0].is_ipv4()
    } else {
        v4
    };
    let fam = if v4 { "IPv4" } else { "IPv6" };
    let src = *from_ips
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .with_context(|| format!("pod {from} has no {fam} address"))?;
    let dst = *to_ips
        .iter()
        .find(|a| a.is_ipv4() == v4)
        .with_context(|| format!("{to} has no {fam} address"))?;
    let path = format!("/api/v1/explain?from={src}&to={dst}&protocol={protocol}&port={port}");
    let at_src: Explanation = serde_json::from_str(&get(lab, &from_node, &path)?)?;
    let at_dst: Option<Explanation> = match &to_node {
        Some(n) => Some(serde_json::from_str(&get(lab, n, &path)?)?),
        None => None,
    };
    let ok = |j: &Judgement| j.verdict != "denied";
    let allowed = ok(&at_src.egress) && at_dst.as_ref().is_none_or(|e| ok(&e.ingress));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "from": from, "to": to, "protocol": protocol, "port": port,
                "verdict": if allowed { "allowed" } else { "denied" },
                "egress": at_src.egress,
                "ingress": at_dst.as_ref().map(|e| &e.ingress),
            })
        );
        return Ok(allowed);
    }
    println!(
        "{from} ({src}) -> {to} ({dst}) {protocol}/{port}: {}",
        if allowed { "allowed" } else { "denied" }
    );
    println!("{}", judgement_text(&at_src.egress, &from_node));
    match (&at_dst, &to_node) {
        (Some(e), Some(n)) => println!("{}", judgement_text(&e.ingress, n)),
        _ => println!("  ingress: {dst} is not a pod of the lab; not judged"),
    }
    Ok(allowed)
}
