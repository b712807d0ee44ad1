//! The node's cluster DNS in the agent ([`crate::dns`]): its zone follows
//! every snapshot of the cluster, and it answers on port 53 of the
//! node-local address and of the cluster DNS Service's ClusterIPs, which the
//! node's loopback link holds ([`crate::datapath::nodenet::local_addresses`]).
//! A pod's query goes to its own node and never crosses the network; the
//! proxy leaves those ClusterIPs alone ([`served_service`]), so no DNAT and
//! no conntrack race sits between a pod and its resolver.

use crate::dns::zone::{DEFAULT_DOMAIN, Zone};
use crate::dns::{Dns, server};
use crate::model::crd::DnsSpec;
use crate::model::snapshot::Manifests;
use crate::source::kube::Snapshot;
use parking_lot::Mutex;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// NodeLocal DNSCache's link-local address.
pub const DEFAULT_LOCAL_ADDRESS: &str = "169.254.20.10";
/// The Service pods' resolv.conf names, by convention.
pub const DEFAULT_SERVICE: (&str, &str) = ("kube-system", "kube-dns");
pub const PORT: u16 = 53;
/// Forwarded answers kept.
const CACHE_ENTRIES: usize = 10_000;

/// What the node's DNS serves, from the ClusterNetwork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub domain: String,
    /// Where it listens: the node-local address and the DNS Service's
    /// ClusterIPs.
    pub listen: Vec<IpAddr>,
    /// Upstreams the ClusterNetwork names (else the node's resolv.conf).
    pub servers: Vec<SocketAddr>,
    pub problems: Vec<String>,
}

fn spec(m: &Manifests) -> DnsSpec {
    m.cluster_network()
        .and_then(|c| c.dns.clone())
        .unwrap_or_default()
}

/// The DNS Service the agents serve on every node, when they serve DNS.
pub fn served_service(m: &Manifests) -> Option<(String, String)> {
    let s = spec(m);
    if s.serve == Some(false) {
        return None;
    }
    Some(match s.service.as_deref().and_then(|s| s.split_once('/')) {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (DEFAULT_SERVICE.0.into(), DEFAULT_SERVICE.1.into()),
    })
}

/// An upstream as `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("DNS server {s:?} is not IP, IP:PORT or [IPv6]:PORT"))
}

/// The node's DNS plan, or `None` when the agents do not serve DNS.
pub fn plan(m: &Manifests) -> Option<Plan> {
    let s = spec(m);
    let (ns, name) = served_service(m)?;
    let mut problems = vec![];
    let domain = s
        .cluster_domain
        .clone()
        .unwrap_or_else(|| DEFAULT_DOMAIN.into());
    let mut listen = vec![];
    let local = s
        .local_address
        .clone()
        .unwrap_or_else(|| DEFAULT_LOCAL_ADDRESS.into());
    if !local.is_empty() {
        match local.parse::<IpAddr>() {
            Ok(ip) => listen.push(ip),
            Err(_) => problems.push(format!(
                "ClusterNetwork default: spec.dns.localAddress {local:?} is not an IP address"
            )),
        }
    }
    let svc = m.services.iter().find(|x| {
        x.metadata.namespace.as_deref() == Some(ns.as_str())
            && x.metadata.name.as_deref() == Some(name.as_str())
    });
    match svc.and_then(|x| x.spec.as_ref()) {
        Some(spec) => {
            let ips = spec
                .cluster_ips
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
                .unwrap_or_default();
            for c in ips.iter().filter(|c| *c != "None") {
                match c.parse::<IpAddr>() {
                    Ok(ip) if !listen.contains(&ip) => listen.push(ip),
                    Ok(_) => {}
                    Err(_) => problems.push(format!("Service {ns}/{name}: clusterIP {c:?} is not an address")),
                }
            }
        }
        None => problems.push(format!(
            "the cluster DNS Service {ns}/{name} does not exist: pods reach this node's DNS only on its node-local address"
        )),
    }
    let mut servers = vec![];
    for u in &s.servers {
        match upstream(u) {
            Ok(a) => servers.push(a),
            Err(e) => problems.push(format!("ClusterNetwork default: spec.dns.servers: {e}")),
        }
    }
    Some(Plan {
        domain,
        listen,
        servers,
        problems,
    })
}

/// The nameservers of a resolv.conf (port 53), loopback ones left out: on
/// a node they are a local stub that pods cannot share.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .map(|ip| SocketAddr::new(ip, PORT))
        .collect()
}

/// The node's resolv.conf: `/etc/netns/NAME/resolv.conf` for an agent in
/// the named network namespace NAME (as `ip netns exec` would give it),
/// else `/etc/resolv.conf`.
pub fn node_resolv_conf(netns: Option<&Path>) -> PathBuf {
    netns
        .and_then(|p| p.file_name())
        .map(|name| Path::new("/etc/netns").join(name).join("resolv.conf"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"))
}

/// The node's DNS, running: what the admin API and `/metrics` read.
pub struct NodeDns {
    pub dns: Arc<Dns>,
    pub problems: Arc<Mutex<Vec<String>>>,
}

/// Serve the node's DNS from the snapshots of `rx` until `stop`.
/// `upstreams`: the agent's `--dns-upstream`, else the ClusterNetwork's,
/// else those of `resolv_conf`.
pub fn spawn(
    mut rx: watch::Receiver<Snapshot>,
    netns: Option<PathBuf>,
    upstreams: Vec<SocketAddr>,
    resolv_conf: PathBuf,
    stop: watch::Receiver<bool>,
) -> NodeDns {
    let dns = Arc::new(Dns::new(Zone::default(), vec![], CACHE_ENTRIES));
    let problems = Arc::new(Mutex::new(vec![]));
    let out = NodeDns {
        dns: dns.clone(),
        problems: problems.clone(),
    };
    tokio::spawn(async move {
        let mut serving: Option<(Vec<IpAddr>, watch::Sender<bool>)> = None;
        let mut last_upstreams = None;
        // The addresses this agent put on the node's loopback.
        let mut held: Vec<IpAddr> = vec![];
        loop {
            let m = rx.borrow_and_update().manifests.clone();
            let plan = plan(&m);
            let mut said = vec![];
            match &plan {
                Some(p) => {
                    // Off the executor: a whole zone is tens of ms at 10k Services.
                    let (mm, domain) = (m.clone(), p.domain.clone());
                    match tokio::task::spawn_blocking(move || Zone::build(&mm, &domain)).await {
                        Ok(z) => dns.set_zone(z),
                        Err(e) => said.push(format!("DNS: building the zone: {e}")),
                    }
                    said.extend(p.problems.iter().cloned());
                    said.extend(
                        dns.zone()
                            .problems
                            .values()
                            .map(|e| format!("DNS: Service {e}")),
                    );
                    let ups = if !upstreams.is_empty() {
                        upstreams.clone()
                    } else if !p.servers.is_empty() {
                        p.servers.clone()
                    } else {
                        std::fs::read_to_string(&resolv_conf)
                            .map(|t| resolv_conf_servers(&t))
                            .unwrap_or_default()
                    };
                    if ups.is_empty() {
                        said.push(
                            "DNS: no upstream resolver: names outside the cluster get SERVFAIL"
                                .into(),
                        );
                    }
                    if last_upstreams.as_ref() != Some(&ups) {
                        said.extend(dns.set_upstreams(ups.clone()));
                        last_upstreams = Some(ups);
                        if serving.is_some() {
                            let d = dns.clone();
                            tokio::spawn(async move { d.check_loop().await });
                        }
                    }
                    if serving.as_ref().map(|s| &s.0) != Some(&p.listen) {
                        if let Some((_, tx)) = serving.take() {
                            let _ = tx.send(true);
                        }
                        match listen(netns.clone(), &p.listen, &held).await {
                            Ok(bound) => {
                                held = p.listen.clone();
                                let (tx, mut srx) = watch::channel(false);
                                tokio::spawn(server::serve(dns.clone(), bound, async move {
                                    let _ = srx.wait_for(|s| *s).await;
                                }));
                                serving = Some((p.listen.clone(), tx));
                                // Once the sockets serve: a forwarding loop
                                // is found now, not at the first query that
                                // would circle.
                                let d = dns.clone();
                                tokio::spawn(async move { d.check_loop().await });
                            }
                            Err(e) => said.push(format!("DNS: {e}")),
                        }
                    }
                }
                None => {
                    if let Some((_, tx)) = serving.take() {
                        let _ = tx.send(true);
                        let ns = netns.clone();
                        let previous = std::mem::take(&mut held);
                        let _ = tokio::task::spawn_blocking(move || {
                            crate::datapath::nodenet::local_addresses(ns.as_ref(), &[], &previous)
                        })
                        .await;
                    }
                }
            }
            for p in &said {
                if !problems.lock().contains(p) {
                    tracing::warn!("{p}");
                }
            }
            *problems.lock() = said;
            let mut stop = stop.clone();
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Some((_, tx)) = serving.take() {
            let _ = tx.send(true);
        }
    });
    out
}

/// Put `addrs` on the node's local link and bind port 53 on each.
async fn listen(
    netns: Option<PathBuf>,
    addrs: &[IpAddr],
    previous: &[IpAddr],
) -> Result<Vec<server::Bound>, String> {
    let (a, p) = (addrs.to_vec(), previous.to_vec());
    tokio::task::spawn_blocking(move || {
        crate::datapath::nodenet::local_addresses(netns.as_ref(), &a, &p)
    })
    .await
    .map_err(|e| e.to_string())??;
    addrs
        .iter()
        .map(|ip| {
            let addr = SocketAddr::new(*ip, PORT);
            server::bind(addr).map_err(|e| format!("binding {addr}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_without_loopback() {
        let t = "# generated\nsearch example.test\nnameserver 127.0.0.53\nnameserver 198.18.0.100\nnameserver fd18::100\nnameserver fe80::1%eth0\noptions ndots:1\n";
        let got: Vec<String> = resolv_conf_servers(t)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(got, ["198.18.0.100:53", "[fd18::100]:53", "[fe80::1]:53"]);
    }

    #[test]
    fn upstreams_in_every_form_and_a_clear_error() {
        assert_eq!(upstream("10.0.0.1").unwrap().to_string(), "10.0.0.1:53");
        assert_eq!(
            upstream("10.0.0.1:5353").unwrap().to_string(),
            "10.0.0.1:5353"
        );
        assert_eq!(upstream("fd00::1").unwrap().to_string(), "[fd00::1]:53");
        assert_eq!(
            upstream("[fd00::1]:54").unwrap().to_string(),
            "[fd00::1]:54"
        );
        assert!(
            upstream("dns.example")
                .unwrap_err()
                .contains("\"dns.example\"")
        );
    }
}
