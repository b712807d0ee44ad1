//! Which endpoints serve a Service port on this node: the selection rules of
//! kube-proxy, so every proxy module applies them the same way.
//!
//! In order:
//! 1. endpoints of the address family asked for, with a port of the same name
//!    and protocol as the Service port;
//! 2. under a `Local` traffic policy (internal for cluster traffic, external
//!    for NodePort, LoadBalancer and external IPs), only endpoints on this node;
//! 3. under `Cluster`, `trafficDistribution` prefers endpoints on this node
//!    (`PreferSameNode`) or in this zone (`PreferSameZone`) when there are any;
//! 4. ready endpoints; if none is ready, those that are serving and
//!    terminating (KEP-1669), so connections drain instead of failing.
//!
//! ```
//! use switchyard_sdk::endpoints::{select, Traffic};
//! use switchyard_sdk::testing;
//! use switchyard_sdk::types::{IpFamily, Protocol};
//!
//! let ctx = testing::node_context("node-1");
//! let svc = testing::service("default", "web", "10.96.0.10", &[("http", Protocol::Tcp, 80, 8080)]);
//! let mut gone = testing::endpoint("10.244.1.3", &[("http", Protocol::Tcp, 8080)]);
//! gone.ready = false;
//! let eps = vec![testing::endpoint("10.244.1.2", &[("http", Protocol::Tcp, 8080)]), gone];
//! let b = select(&ctx, &svc, &svc.ports[0], &eps, IpFamily::Ipv4, Traffic::Internal);
//! assert_eq!(b.len(), 1);
//! assert_eq!(b[0].port, 8080);
//! ```

use crate::types::*;

/// Where the traffic comes from, which decides the traffic policy that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// To a ClusterIP, from inside the cluster: `internalTrafficPolicy`.
    Internal,
    /// To a NodePort, LoadBalancer IP or external IP: `externalTrafficPolicy`.
    External,
}

/// A chosen endpoint for one Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend<'a> {
    /// The endpoint (node, zone, pod and conditions are there).
    pub endpoint: &'a Endpoint,
    /// The endpoint's address.
    pub address: IpAddress,
    /// The target port on the endpoint.
    pub port: u16,
    /// Relative weight (at least 1).
    pub weight: u32,
    /// True when the endpoint is terminating and used only because no
    /// endpoint is ready.
    pub draining: bool,
}

/// The endpoints that serve `port` of `service` for `traffic` of `family`
/// arriving on this node, sorted by address and port.
pub fn select<'a>(
    ctx: &NodeContext,
    service: &Service,
    port: &ServicePort,
    endpoints: &'a [Endpoint],
    family: IpFamily,
    traffic: Traffic,
) -> Vec<Backend<'a>> {
    let policy = match traffic {
        Traffic::Internal => service.internal_traffic_policy,
        Traffic::External => service.external_traffic_policy,
    };
    let candidates: Vec<(&Endpoint, u16)> = endpoints
        .iter()
        .filter(|e| e.address.family() == family)
        .filter_map(|e| {
            e.ports
                .iter()
                .find(|p| p.name == port.name && p.protocol == port.protocol)
                .map(|p| (e, p.port))
        })
        .collect();

    let on_node = |e: &Endpoint| e.node.as_deref() == Some(ctx.node.as_str());
    let in_zone = |e: &Endpoint| ctx.zone.is_some() && e.zone == ctx.zone;

    let scoped: Vec<(&Endpoint, u16)> = match (policy, service.traffic_distribution) {
        (TrafficPolicy::Local, _) => candidates.into_iter().filter(|(e, _)| on_node(e)).collect(),
        (TrafficPolicy::Cluster, Some(TrafficDistribution::PreferSameNode)) => {
            prefer(candidates, |e| on_node(e))
        }
        (TrafficPolicy::Cluster, Some(TrafficDistribution::PreferSameZone)) => {
            prefer(candidates, |e| in_zone(e))
        }
        (TrafficPolicy::Cluster, None) => candidates,
    };

    let ready: Vec<_> = scoped.iter().filter(|(e, _)| e.ready).collect();
    let chosen: Vec<_> = if ready.is_empty() {
        scoped
            .iter()
            .filter(|(e, _)| e.serving && e.terminating)
            .collect()
    } else {
        ready
    };
    let mut out: Vec<Backend<'_>> = chosen
        .into_iter()
        .map(|(e, p)| Backend {
            endpoint: e,
            address: e.address,
            port: *p,
            weight: e.weight.max(1),
            draining: !e.ready,
        })
        .collect();
    out.sort_by_key(|b| (b.address, b.port));
    out.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    out
}

/// Keep the preferred endpoints if any of them can serve, else all.
fn prefer(
    all: Vec<(&Endpoint, u16)>,
    preferred: impl Fn(&Endpoint) -> bool,
) -> Vec<(&Endpoint, u16)> {
    let usable = |e: &Endpoint| e.ready || (e.serving && e.terminating);
    if all.iter().any(|(e, _)| preferred(e) && usable(e)) {
        all.into_iter().filter(|(e, _)| preferred(e)).collect()
    } else {
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{endpoint, node_context, service};

    fn ep(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        let mut e = endpoint(ip, &[("http", Protocol::Tcp, 8080)]);
        e.node = Some(node.into());
        e.ready = ready;
        e.serving = serving;
        e.terminating = terminating;
        e
    }

    fn addrs(b: &[Backend<'_>]) -> Vec<String> {
        b.iter().map(|b| b.address.to_string()).collect()
    }

    fn web() -> Service {
        service(
            "default",
            "web",
            "10.96.0.10",
            &[("http", Protocol::Tcp, 80, 8080)],
        )
    }

    #[test]
    fn terminating_endpoints_serve_only_when_none_is_ready() {
        let ctx = node_context("node-1");
        let svc = web();
        let eps = vec![
            ep("10.244.1.2", "node-1", true, true, false),
            ep("10.244.1.3", "node-1", false, true, true),
        ];
        let b = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &eps,
            IpFamily::Ipv4,
            Traffic::Internal,
        );
        assert_eq!(addrs(&b), vec!["10.244.1.2"]);
        let b = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &eps[1..],
            IpFamily::Ipv4,
            Traffic::Internal,
        );
        assert_eq!(addrs(&b), vec!["10.244.1.3"]);
        assert!(b[0].draining);
        // Not serving and terminating: never used.
        let gone = vec![ep("10.244.1.4", "node-1", false, false, true)];
        assert!(
            select(
                &ctx,
                &svc,
                &svc.ports[0],
                &gone,
                IpFamily::Ipv4,
                Traffic::Internal
            )
            .is_empty()
        );
    }

    #[test]
    fn local_policy_keeps_node_local_endpoints_only() {
        let ctx = node_context("node-1");
        let mut svc = web();
        svc.external_traffic_policy = TrafficPolicy::Local;
        let eps = vec![
            ep("10.244.1.2", "node-1", true, true, false),
            ep("10.244.2.2", "node-2", true, true, false),
        ];
        let ext = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &eps,
            IpFamily::Ipv4,
            Traffic::External,
        );
        assert_eq!(addrs(&ext), vec!["10.244.1.2"]);
        let int = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &eps,
            IpFamily::Ipv4,
            Traffic::Internal,
        );
        assert_eq!(int.len(), 2, "internal traffic policy is still Cluster");
        let far = node_context("node-3");
        assert!(
            select(
                &far,
                &svc,
                &svc.ports[0],
                &eps,
                IpFamily::Ipv4,
                Traffic::External
            )
            .is_empty()
        );
    }

    #[test]
    fn prefer_same_zone_falls_back_to_all() {
        let mut ctx = node_context("node-1");
        ctx.zone = Some("a".into());
        let mut svc = web();
        svc.traffic_distribution = Some(TrafficDistribution::PreferSameZone);
        let mut a = ep("10.244.1.2", "node-1", true, true, false);
        a.zone = Some("a".into());
        let mut b = ep("10.244.2.2", "node-2", true, true, false);
        b.zone = Some("b".into());
        let both = [a.clone(), b.clone()];
        let got = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &both,
            IpFamily::Ipv4,
            Traffic::Internal,
        );
        assert_eq!(addrs(&got), vec!["10.244.1.2"]);
        a.ready = false;
        a.serving = false;
        let both = [a, b];
        let got = select(
            &ctx,
            &svc,
            &svc.ports[0],
            &both,
            IpFamily::Ipv4,
            Traffic::Internal,
        );
        assert_eq!(addrs(&got), vec!["10.244.2.2"]);
    }

    #[test]
    fn port_name_protocol_and_family_must_match() {
        let ctx = node_context("node-1");
        let svc = web();
        let mut udp = endpoint("10.244.1.2", &[("http", Protocol::Udp, 8080)]);
        udp.node = Some("node-1".into());
        let other = endpoint("10.244.1.3", &[("metrics", Protocol::Tcp, 9090)]);
        let v6 = endpoint("fd00::2", &[("http", Protocol::Tcp, 8080)]);
        assert!(
            select(
                &ctx,
                &svc,
                &svc.ports[0],
                &[udp, other, v6.clone()],
                IpFamily::Ipv4,
                Traffic::Internal
            )
            .is_empty()
        );
        assert_eq!(
            select(
                &ctx,
                &svc,
                &svc.ports[0],
                &[v6],
                IpFamily::Ipv6,
                Traffic::Internal
            )
            .len(),
            1
        );
    }
}
